"""The adapters' limits, as clear errors: a second derivative through a cudcn
op (JAX's grad of grad, torch's create_graph=True), and ``jax.export``; and
how XLA_FLAGS is read for deterministic mode."""

import numpy as np
import pytest

jax = pytest.importorskip("jax")
import jax.numpy as jnp  # noqa: E402

import cudcn.adapters.jax as cj  # noqa: E402
from cudcn.adapters.jax import ops as jax_ops  # noqa: E402
from cudcn.testing import dcnv3_inputs, deform_conv2d_inputs  # noqa: E402

from test_jax_adapter import OPS, op_params  # noqa: E402

FIRST_ONLY = "cudcn's operations have first derivatives only"


@pytest.fixture(autouse=True)
def x64():
    with jax.enable_x64(True):
        yield


@op_params
@pytest.mark.parametrize("jit", [False, True], ids=["eager", "jit"])
def test_jax_grad_of_grad_names_cudcn_and_first_derivatives(op, jit):
    names, arrays, params = op.split(op.make())
    f = op.function(names, params)
    first = jax.grad(lambda *a: jnp.sum(f(*a) ** 2))  # in names[0], differentiable for all
    second = jax.grad(lambda *a: jnp.sum(first(*a)))
    with pytest.raises(cj.SecondDerivativeError, match=FIRST_ONLY) as error:
        (jax.jit(second) if jit else second)(*map(jnp.asarray, arrays))
    assert f"cudcn.adapters.jax.{op.name}" in str(error.value)


@pytest.mark.parametrize("op", [OPS["deform_conv2d"], OPS["deform_roi_pool"]],
                         ids=lambda op: op.name)
def test_jax_export_is_a_clear_error_with_the_alternative(op):
    names, arrays, params = op.split(op.make())
    with pytest.raises(cj.ExportError) as error:
        jax.export.export(jax.jit(op.function(names, params)))(*map(jnp.asarray, arrays))
    message = str(error.value)
    assert f"cudcn.adapters.jax.{op.name} cannot be exported with jax.export" in message
    assert "jax.jit" in message and "ONNX" in message


@pytest.mark.torchvision
@pytest.mark.parametrize("op", ["deform_conv2d", "dcnv3"])
def test_torch_create_graph_then_backward_names_cudcn_and_first_derivatives(op):
    torch = pytest.importorskip("torch")
    import cudcn.adapters.torch as ct

    if op == "deform_conv2d":
        a = {k: torch.from_numpy(v).requires_grad_() if isinstance(v, np.ndarray) else v
             for k, v in deform_conv2d_inputs(seed=5).items()}
        y = ct.deform_conv2d(a["input"], a["offset"], a["weight"], a["bias"], padding=1,
                             mask=a["mask"])
    else:
        a = {k: torch.from_numpy(v).requires_grad_() if isinstance(v, np.ndarray) else v
             for k, v in dcnv3_inputs().items()}
        y = ct.dcnv3(**a)
    (g,) = torch.autograd.grad(y.square().sum(), a["offset"], create_graph=True)
    with pytest.raises(RuntimeError, match=FIRST_ONLY) as error:
        g.sum().backward()
    assert f"cudcn::{op}_backward" in str(error.value)


@pytest.mark.parametrize("flags, deterministic", [
    ("", False),
    ("--xla_gpu_deterministic_ops=true", True),
    ("--xla_gpu_deterministic_ops", True),  # a bare boolean flag is true
    ("--xla_gpu_deterministic_ops=1", True),
    ("-xla_gpu_deterministic_ops=TRUE", True),
    ("--xla_gpu_deterministic_ops=false", False),
    ("--xla_gpu_deterministic_ops=true --xla_gpu_deterministic_ops=false", False),  # last wins
    ("--xla_force_host_platform_device_count=2 --xla_gpu_deterministic_ops=true", True),
    ("--xla_gpu_exclude_nondeterministic_ops=true", True),
    ("--xla_gpu_deterministic_ops_x=true", False),
    ("--xla_gpu_deterministic_ops=maybe", False),  # not a boolean: XLA refuses it too
])
def test_xla_flags_read_as_xla_reads_them(monkeypatch, flags, deterministic):
    monkeypatch.setenv("XLA_FLAGS", flags)
    assert jax_ops._deterministic() is deterministic
