"""cudcn.adapters.jax: jit, grad, vjp and vmap against the NumPy API, finite
differences of the float64 reference, trace-time errors, buffers in place, half
types, and the GPU branch on the CuPy double; dcnv3 and dcnv4 also bit for bit
in every dtype."""

import types

import numpy as np
import pytest

jax = pytest.importorskip("jax")
import jax.numpy as jnp  # noqa: E402

import cudcn  # noqa: E402
import cudcn.adapters.jax as cj  # noqa: E402
from cudcn import _kernels, reference  # noqa: E402
from cudcn.adapters.jax import _buffers  # noqa: E402
from cudcn.testing import (  # noqa: E402
    dcnv3_inputs,
    deform_conv2d_inputs,
    deform_psroi_pool_inputs,
    deform_roi_pool_inputs,
    ms_deform_attn_inputs,
)
from conftest import assert_directional_gradients  # noqa: E402

import cupy_double  # noqa: E402
import test_bad_input  # noqa: E402  (the NumPy API's own bad-input cases)
import test_psroi_pool  # noqa: E402
import test_roi_pool  # noqa: E402

EXACT = dict(rtol=1e-10, atol=1e-12)


@pytest.fixture(autouse=True)
def x64():
    with jax.enable_x64(True):
        yield


class Op:
    """One operation in its three forms, and which arguments are arrays."""

    def __init__(self, name, arrays, differentiable, make):
        self.name, self.arrays, self.differentiable, self.make = name, arrays, differentiable, make
        self.numpy = getattr(cudcn, name)
        self.numpy_backward = getattr(cudcn, f"{name}_backward")
        self.reference = getattr(reference, name)
        self.jax = getattr(cj, name)

    def split(self, args):
        """(the present arrays' names, the arrays, the other arguments)."""
        names = tuple(n for n in self.arrays if args.get(n) is not None)
        params = {k: v for k, v in args.items() if k not in self.arrays}
        return names, [args[n] for n in names], params

    def function(self, names, params):
        """f(*arrays) on jax arrays."""
        return lambda *arrays: self.jax(**dict(zip(names, arrays)), **params)


# Every static argument away from its default, pad_h != pad_w included.
DCNV3_GEOMETRY = dict(size=(9, 8), kernel=(3, 5), stride=(2, 1), padding=(2, 1), dilation=(1, 2),
                      offset_scale=0.7)

OPS = {
    "deform_conv2d": Op("deform_conv2d", ("input", "offset", "weight", "bias", "mask"),
                        ("input", "offset", "weight", "bias", "mask"),
                        lambda **kw: deform_conv2d_inputs(
                            in_channels=4, out_channels=4, groups=2, offset_groups=2,
                            stride=(1, 2), padding=(1, 2), dilation=(2, 1), size=(7, 8), **kw)),
    "deform_roi_pool": Op("deform_roi_pool", ("input", "rois", "offset", "mask"),
                          ("input", "offset", "mask"),
                          lambda **kw: deform_roi_pool_inputs(mask=True, output_size=(2, 3), **kw)),
    "deform_psroi_pool": Op("deform_psroi_pool", ("input", "rois", "offset"), ("input", "offset"),
                            lambda **kw: deform_psroi_pool_inputs(**kw)),
    # The level tables are static arguments (the level sizes decide the launches).
    "ms_deform_attn": Op("ms_deform_attn", ("value", "sampling_locations", "attention_weights"),
                         ("value", "sampling_locations", "attention_weights"),
                         lambda **kw: ms_deform_attn_inputs(**kw)),
    "dcnv3": Op("dcnv3", ("input", "offset", "mask"), ("input", "offset", "mask"),
                lambda **kw: dcnv3_inputs(**DCNV3_GEOMETRY, **kw)),
    "dcnv4": Op("dcnv4", ("input", "offset_mask"), ("input", "offset_mask"),
                lambda **kw: dcnv3_inputs(packed=True, **DCNV3_GEOMETRY, **kw)),
}
op_params = pytest.mark.parametrize("op", [pytest.param(op, id=name) for name, op in OPS.items()])


def _floating(v):
    """A floating array argument (the level tables and rois keep their dtype)."""
    return isinstance(v, np.ndarray) and v.dtype.kind == "f"


def _grad_output(op, args, seed=7):
    return np.random.default_rng(seed).standard_normal(op.numpy(**args).shape)


def _jax_grads(op, args, grad_output, jit=True):
    """Gradients of <grad_output, op(...)> in every differentiable argument given."""
    names, arrays, params = op.split(args)
    f = op.function(names, params)
    wrt = tuple(i for i, n in enumerate(names) if n in op.differentiable)
    grad = jax.grad(lambda *a: jnp.sum(f(*a) * grad_output), argnums=wrt)
    grads = (jax.jit(grad) if jit else grad)(*map(jnp.asarray, arrays))
    return {names[i]: np.asarray(g) for i, g in zip(wrt, grads)}


@op_params
@pytest.mark.parametrize("jit", [True, False], ids=["jit", "eager"])
def test_forward_matches_numpy_api(op, jit):
    args = op.make()
    names, arrays, params = op.split(args)
    f = jax.jit(op.function(names, params)) if jit else op.function(names, params)
    out = f(*map(jnp.asarray, arrays))
    assert out.dtype == jnp.float64
    np.testing.assert_allclose(np.asarray(out), op.numpy(**args), **EXACT)


@op_params
def test_gradients_under_jit_match_numpy_api(op):
    args = op.make()
    grad_output = _grad_output(op, args)
    grads = _jax_grads(op, args, grad_output)
    expected = op.numpy_backward(grad_output, **args)
    assert set(grads) == set(op.differentiable)
    for name, g in grads.items():
        np.testing.assert_allclose(g, getattr(expected, name), **EXACT, err_msg=name)


@op_params
def test_vjp_matches_numpy_api_and_rois_get_zero(op):
    args = op.make()
    names, arrays, params = op.split(args)
    grad_output = _grad_output(op, args)
    _, vjp = jax.vjp(op.function(names, params), *map(jnp.asarray, arrays))
    cotangents = dict(zip(names, vjp(jnp.asarray(grad_output))))
    expected = op.numpy_backward(grad_output, **args)
    for name in names:
        if name == "rois":
            assert not np.asarray(cotangents[name]).any()
        else:
            np.testing.assert_allclose(cotangents[name], getattr(expected, name), **EXACT)


FD_CASES = [
    pytest.param(OPS["deform_conv2d"], dict(away_from_kinks=True, seed=1), id="deform_conv2d"),
    pytest.param(OPS["deform_roi_pool"], dict(seed=3), id="deform_roi_pool"),
    pytest.param(OPS["deform_psroi_pool"], dict(seed=3), id="deform_psroi_pool"),
    pytest.param(OPS["dcnv3"], dict(away_from_kinks=True, seed=5), id="dcnv3"),
    pytest.param(OPS["dcnv4"], dict(away_from_kinks=True, seed=5), id="dcnv4"),
]


@pytest.mark.parametrize("op, case", FD_CASES)
def test_gradients_match_finite_differences_of_the_reference(op, case):
    args = op.make(**case)
    rng = np.random.default_rng(4)
    grad_output = _grad_output(op, args)
    grads = types.SimpleNamespace(**_jax_grads(op, args, grad_output, jit=False))
    assert_directional_gradients(op.reference, args, grads, grad_output, rng, rel=1e-6,
                                 abs=1e-8, names=op.differentiable)


@pytest.fixture
def backward_needs(monkeypatch):
    """The ``needs`` of every cudcn backward call."""
    seen = []
    for op in OPS.values():
        real = op.numpy_backward

        def spy(*args, real=real, **kwargs):
            seen.append(tuple(kwargs["needs"]))
            return real(*args, **kwargs)

        monkeypatch.setattr(cudcn, f"{op.name}_backward", spy)
    return seen


@pytest.mark.parametrize("op, wrt", [
    (OPS["deform_conv2d"], ("weight",)),
    (OPS["deform_conv2d"], ("offset", "mask")),
    (OPS["deform_roi_pool"], ("offset",)),
    (OPS["deform_psroi_pool"], ("input",)),
    (OPS["dcnv3"], ("input",)),
    (OPS["dcnv3"], ("offset", "mask")),
    (OPS["dcnv4"], ("offset_mask",)),
], ids=lambda v: v.name if isinstance(v, Op) else "-".join(v))
def test_only_the_gradients_asked_for_are_computed(op, wrt, backward_needs):
    args = op.make()
    names, arrays, params = op.split(args)
    f = op.function(names, params)
    positions = tuple(names.index(n) for n in wrt)
    grads = jax.grad(lambda *a: jnp.sum(f(*a) ** 2), argnums=positions)(*map(jnp.asarray, arrays))
    assert backward_needs == [wrt]
    out = op.numpy(**args)
    expected = op.numpy_backward(2 * out, **args)
    for name, g in zip(wrt, grads):
        np.testing.assert_allclose(g, getattr(expected, name), **EXACT)


@pytest.fixture
def forward_calls(monkeypatch):
    """How many times cudcn.deform_conv2d runs."""
    calls = []
    real = cudcn.deform_conv2d

    def spy(*args, **kwargs):
        calls.append((args[0] if args else kwargs["input"]).shape)
        return real(*args, **kwargs)

    monkeypatch.setattr(cudcn, "deform_conv2d", spy)
    return calls


def _loop(fn, batched, unbatched, count):
    return np.stack([fn(**{k: v[i] for k, v in batched.items()}, **unbatched)
                     for i in range(count)])


def test_vmap_over_images_folds_into_one_call(forward_calls):
    op = OPS["deform_conv2d"]
    stacks = [op.make(seed=s) for s in range(3)]
    per_image = ("input", "offset", "mask")
    batched = {n: np.stack([a[n] for a in stacks]) for n in per_image}
    shared = {k: v for k, v in stacks[0].items() if k not in per_image}
    # input batched along axis 1: vmap moves it to the front first.
    f = jax.vmap(lambda x, o, m: cj.deform_conv2d(x, o, mask=m, **shared), in_axes=(1, 0, 0))
    out = jax.jit(f)(jnp.asarray(np.moveaxis(batched["input"], 0, 1)),
                     jnp.asarray(batched["offset"]), jnp.asarray(batched["mask"]))
    assert forward_calls == [(6, 4, 7, 8)]  # 3 batches of 2 images, one call
    expected = _loop(cudcn.deform_conv2d, batched, shared, 3)
    np.testing.assert_allclose(np.asarray(out), expected, **EXACT)


def test_vmap_over_weights_runs_once_per_element(forward_calls):
    op = OPS["deform_conv2d"]
    args = op.make()
    weights = np.stack([args["weight"] * (i + 1) for i in range(3)])
    rest = {k: v for k, v in args.items() if k != "weight"}
    out = jax.vmap(lambda w: cj.deform_conv2d(weight=w, **rest))(jnp.asarray(weights))
    assert len(forward_calls) == 3
    np.testing.assert_allclose(np.asarray(out),
                               _loop(cudcn.deform_conv2d, dict(weight=weights), rest, 3), **EXACT)


def test_nested_vmap_of_per_example_gradients():
    """vmap(vmap(grad)): a (2, 3) batch of per-example weight gradients."""
    op = OPS["deform_conv2d"]
    args = op.make()
    inputs = np.random.default_rng(5).standard_normal((2, 3) + args["input"].shape)
    rest = {k: v for k, v in args.items() if k not in ("input", "weight")}

    def loss(x, w):
        return jnp.sum(cj.deform_conv2d(x, weight=w, **rest) ** 2)

    grads = jax.jit(jax.vmap(jax.vmap(jax.grad(loss, argnums=1), (0, None)), (0, None)))(
        jnp.asarray(inputs), jnp.asarray(args["weight"]))
    for i, j in np.ndindex(2, 3):
        one = dict(args, input=inputs[i, j])
        expected = cudcn.deform_conv2d_backward(2 * cudcn.deform_conv2d(**one), **one).weight
        np.testing.assert_allclose(np.asarray(grads[i, j]), expected, **EXACT)


def test_jacrev_batches_the_cotangents():
    """jax.jacrev vmaps the backward over one-hot cotangents: each row is the
    NumPy API's backward of that cotangent."""
    args = deform_conv2d_inputs(batch=1, in_channels=2, out_channels=2, size=(3, 4), seed=9)
    rest = {k: v for k, v in args.items() if k not in ("input", "offset")}
    jac = jax.jacrev(lambda x, o: cj.deform_conv2d(x, o, **rest), argnums=(0, 1))(
        jnp.asarray(args["input"]), jnp.asarray(args["offset"]))
    out_shape = cudcn.deform_conv2d(**args).shape
    for index in np.ndindex(*out_shape):
        one_hot = np.zeros(out_shape)
        one_hot[index] = 1
        expected = cudcn.deform_conv2d_backward(one_hot, **args)
        np.testing.assert_allclose(np.asarray(jac[0][index]), expected.input, **EXACT)
        np.testing.assert_allclose(np.asarray(jac[1][index]), expected.offset, **EXACT)


@pytest.mark.parametrize("op", [pytest.param(OPS[n], id=n) for n in
                                ("deform_roi_pool", "deform_psroi_pool")])
def test_vmap_of_pooling_equals_a_loop(op):
    stacks = [op.make(seed=s) for s in range(3)]
    names, _, params = op.split(stacks[0])
    batched = {n: np.stack([a[n] for a in stacks]) for n in names}
    out = jax.jit(jax.vmap(op.function(names, params)))(*(jnp.asarray(batched[n]) for n in names))
    np.testing.assert_allclose(np.asarray(out), _loop(op.numpy, batched, params, 3), **EXACT)
    grads = jax.vmap(jax.grad(lambda *a: jnp.sum(op.function(names, params)(*a) ** 2)))(
        *(jnp.asarray(batched[n]) for n in names))
    for i in range(3):
        expected = op.numpy_backward(2 * op.numpy(**stacks[i]), **stacks[i]).input
        np.testing.assert_allclose(np.asarray(grads[i]), expected, **EXACT)


@op_params
def test_float32_matches_numpy_api(op):
    with jax.enable_x64(False):
        args = {k: v.astype(np.float32) if isinstance(v, np.ndarray) and v.dtype.kind == "f"
                else v
                for k, v in op.make().items()}
        grad_output = _grad_output(op, args).astype(np.float32)
        names, arrays, params = op.split(args)
        out = jax.jit(op.function(names, params))(*map(jnp.asarray, arrays))
        grads = _jax_grads(op, args, grad_output)
    assert out.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(out), op.numpy(**args), rtol=1e-6, atol=1e-6)
    expected = op.numpy_backward(grad_output, **args)
    for name, g in grads.items():
        assert g.dtype == np.float32
        np.testing.assert_allclose(g, getattr(expected, name), rtol=1e-6, atol=1e-6)


@op_params
@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_half_types_equal_numpy_api(op, dtype):
    """The NumPy API's own results, bit for bit: the same kernels on XLA's buffers."""
    with jax.enable_x64(False):
        args = {k: v.astype(jnp.dtype(dtype)) if _floating(v) and k != "rois" else v
                for k, v in op.make().items()}
        grad_output = _grad_output(op, args).astype(jnp.dtype(dtype))
        names, arrays, params = op.split(args)
        out, vjp = jax.vjp(jax.jit(op.function(names, params)), *map(jnp.asarray, arrays))
        grads = dict(zip(names, vjp(jnp.asarray(grad_output))))
    assert out.dtype == jnp.dtype(dtype)
    np.testing.assert_array_equal(np.asarray(out), op.numpy(**args))
    expected = op.numpy_backward(grad_output, **args)
    for name in op.differentiable:
        assert grads[name].dtype == jnp.dtype(dtype)
        np.testing.assert_array_equal(np.asarray(grads[name]), getattr(expected, name))


def _bad_cases():
    conv = [(OPS["deform_conv2d"], case) for case in test_bad_input.BAD]
    pools = [(OPS["deform_roi_pool"], case) for case in test_roi_pool.BAD]
    pools += [(OPS["deform_psroi_pool"], case) for case in test_psroi_pool.BAD]
    dcn = [(OPS["dcnv3"], case) for case in DCNV3_BAD + DCNV3_AND_DCNV4_BAD]
    dcn += [(OPS["dcnv4"], case) for case in DCNV4_BAD + DCNV3_AND_DCNV4_BAD]
    return [pytest.param(op, case[1], case[2], id=f"{op.name}-{case[0]}") for op, case in
            conv + pools + dcn]


# (id, changed arguments, error) on dcnv3_inputs(): the NumPy API's error is
# the one expected, word for word.
DCNV3_AND_DCNV4_BAD = [
    ("input-3d", dict(input=np.zeros((2, 7, 6))), ValueError),
    ("input-list", dict(input=[[1.0]]), TypeError),
    ("input-int", dict(input=np.zeros((2, 7, 6, 6), np.int64)), TypeError),
    ("groups-not-dividing", dict(groups=4), ValueError),
    ("groups-0", dict(groups=0), ValueError),
    ("groups-float", dict(groups=2.0), TypeError),
    ("remove-center-rect", dict(remove_center=True, kernel_size=(3, 5)), ValueError),
    ("remove-center-even", dict(remove_center=True, kernel_size=4), ValueError),
    ("remove-center-int", dict(remove_center=1), TypeError),
    ("kernel-0", dict(kernel_size=(3, 0)), ValueError),
    ("stride-float", dict(stride=1.5), TypeError),
    ("padding-negative", dict(padding=-1), ValueError),
    ("dilation-triple", dict(dilation=(1, 1, 1)), TypeError),
    ("offset-scale-nan", dict(offset_scale=np.nan), ValueError),
    ("offset-scale-str", dict(offset_scale="1"), TypeError),
    ("empty-output", dict(kernel_size=9, padding=0), ValueError),
]
DCNV3_BAD = [
    ("offset-shape", dict(offset=np.zeros((2, 7, 6, 35))), ValueError),
    ("mask-shape", dict(mask=np.zeros((2, 7, 6, 9))), ValueError),
    ("mask-float32", dict(mask=np.zeros((2, 7, 6, 18), np.float32)), TypeError),
    ("offset-none", dict(offset=None), TypeError),
]
DCNV4_BAD = [
    ("offset-mask-narrow", dict(offset_mask=np.zeros((2, 7, 6, 53))), ValueError),
    ("offset-mask-rows", dict(offset_mask=np.zeros((2, 6, 6, 56))), ValueError),
    ("offset-mask-float32", dict(offset_mask=np.zeros((2, 7, 6, 56), np.float32)), TypeError),
    ("offset-mask-none", dict(offset_mask=None), TypeError),
]

_BAD_BASE = {"deform_roi_pool": deform_roi_pool_inputs,
             "deform_psroi_pool": deform_psroi_pool_inputs,
             "dcnv3": dcnv3_inputs,
             "dcnv4": lambda: dcnv3_inputs(packed=True)}


def _bad_args(op, change):
    """The arguments the NumPy API's test of this case builds."""
    if op.name == "deform_conv2d":
        args = test_bad_input._args()
        change(args)
        return args
    return dict(_BAD_BASE[op.name](), **change)


@pytest.mark.parametrize("op, change, error", _bad_cases())
def test_bad_input_raises_the_numpy_api_error_at_trace_time(op, change, error):
    """Shapes only (jax.eval_shape runs nothing): the same error as the NumPy API."""
    args = _bad_args(op, change)
    with pytest.raises(error) as numpy_error:
        op.numpy(**args)
    traced = {k: v for k, v in args.items() if k in op.arrays and isinstance(v, np.ndarray)}
    rest = {k: v for k, v in args.items() if k not in traced}

    def f(arrays):
        return op.jax(**arrays, **rest)

    with pytest.raises(error) as jax_error:
        jax.eval_shape(f, {k: jax.ShapeDtypeStruct(v.shape, v.dtype) for k, v in traced.items()})
    if "numpy.ndarray or cupy.ndarray" in str(numpy_error.value):
        # Not an array at all: the adapter names what it takes instead.
        assert str(jax_error.value).startswith(str(numpy_error.value).split(" must ")[0])
        assert "must be a jax.Array or numpy.ndarray" in str(jax_error.value)
    else:
        assert str(jax_error.value) == str(numpy_error.value)


def test_cpu_buffers_are_used_in_place(monkeypatch):
    """cudcn reads XLA's input buffers and its result goes into XLA's output
    buffer: pointers inside the custom call equal the jax arrays' own."""
    op = OPS["deform_roi_pool"]
    names, arrays, params = op.split(op.make())
    seen = {}
    real_run = _buffers.Call._run

    def spy(self, args, outs):
        seen["args"] = [a.__array_interface__["data"][0] for a in args]
        seen["outs"] = [o.__array_interface__["data"][0] for o in outs]
        return real_run(self, args, outs)

    monkeypatch.setattr(_buffers.Call, "_run", spy)
    jax_arrays = [jnp.asarray(a) for a in arrays]
    out = jax.jit(op.function(names, params))(*jax_arrays)
    assert seen["args"] == [a.unsafe_buffer_pointer() for a in jax_arrays]
    assert seen["outs"] == [out.unsafe_buffer_pointer()]


def test_workspace_limit_where_traced_applies_where_run(monkeypatch):
    """cudcn.workspace_limit around the tracing holds when XLA runs the call."""
    seen = []
    real = cudcn._workspace.images_per_chunk

    def spy(batch, bytes_per_image, xp):
        seen.append(cudcn.get_workspace_limit())
        return real(batch, bytes_per_image, xp)

    monkeypatch.setattr(cudcn._workspace, "images_per_chunk", spy)
    names, arrays, params = OPS["deform_conv2d"].split(OPS["deform_conv2d"].make())
    with cudcn.workspace_limit(12345):
        f = jax.jit(OPS["deform_conv2d"].function(names, params)).lower(*arrays).compile()
    f(*arrays).block_until_ready()
    assert seen == [12345]


@op_params
def test_empty_batch_or_no_rois(op):
    args = op.make()
    if op.name == "deform_conv2d":
        args = {k: v[:0] if k in ("input", "offset", "mask") else v for k, v in args.items()}
    elif op.name in ("ms_deform_attn", "dcnv3", "dcnv4"):
        args = {k: v[:0] if k in op.arrays else v for k, v in args.items()}
    else:
        args = {k: v[:0] if k in ("rois", "offset", "mask") and v is not None else v
                for k, v in args.items()}
    names, arrays, params = op.split(args)
    f = op.function(names, params)
    out = jax.jit(f)(*map(jnp.asarray, arrays))
    assert out.shape == op.numpy(**args).shape and out.size == 0
    grads = jax.grad(lambda *a: jnp.sum(f(*a)))(*map(jnp.asarray, arrays))
    assert grads.shape == arrays[0].shape and not np.asarray(grads).any()


@pytest.mark.parametrize("branch", ["cpu-branch", "gpu-branch"])
def test_xla_deterministic_flag_selects_deterministic_gpu_kernels(monkeypatch, request, branch):
    """XLA's GPU switch selects cudcn's deterministic kernels on a GPU (its
    branch on the CuPy double); the CPU backward is deterministic already."""
    if branch == "gpu-branch":  # (a parameter named "gpu" would mark the test gpu-only)
        request.getfixturevalue("gpu_branch")
    seen = []
    real = cudcn.deform_conv2d_backward

    def spy(*args, **kwargs):
        seen.append(kwargs["deterministic"])
        return real(*args, **kwargs)

    monkeypatch.setattr(cudcn, "deform_conv2d_backward", spy)
    args = OPS["deform_conv2d"].make()
    names, arrays, params = OPS["deform_conv2d"].split(args)
    f = OPS["deform_conv2d"].function(names, params)
    for flags in ("", "--xla_gpu_deterministic_ops=true"):
        monkeypatch.setenv("XLA_FLAGS", flags)
        jax.grad(lambda *a: jnp.sum(f(*a)))(*map(jnp.asarray, arrays))
    assert seen == [False, branch == "gpu-branch"]


# --- the GPU branch, without a GPU ---------------------------------------
# No machine of this project has one. The GPU branch of _buffers runs on the
# CuPy double (tests/cupy_double.py): CPU buffers are sent down it, XLA's
# stream is a fixed pointer, and the double's arrays view XLA's memory. What
# it does not cover: a real device buffer's pointer, which cupy_view turns
# into a CuPy array (checked below against the installed CuPy), and CuPy's
# kernels and cuBLAS on XLA's stream (the gpu-marked test).

GPU_DEVICE = 1  # not CuPy's default device, so that a missed switch shows
XLA_STREAM = 0x7000


@pytest.fixture
def gpu_branch(monkeypatch):
    from cudcn import _gpu_build

    _gpu_build.cuda_include_dirs.cache_clear()
    double = cupy_double.install(monkeypatch)
    monkeypatch.setattr(_buffers, "gpu_device", lambda buffer: GPU_DEVICE)
    monkeypatch.setattr(_buffers, "xla_stream", lambda ctx: XLA_STREAM)
    monkeypatch.setattr(_buffers, "cupy_view",
                        lambda cupy, buffer, device: cupy.ndarray(np.asarray(buffer), device))
    yield double
    _gpu_build.cuda_include_dirs.cache_clear()


@op_params
@pytest.mark.parametrize("dtype", ["float64", "bfloat16"])
def test_gpu_branch_on_a_cupy_double(op, dtype, gpu_branch):
    args = {k: v.astype(jnp.dtype(dtype)) if _floating(v) and k != "rois" else v
            for k, v in op.make().items()}
    grad_output = _grad_output(op, args).astype(jnp.dtype(dtype))
    names, arrays, params = op.split(args)
    f = op.function(names, params)
    wrt = tuple(i for i, n in enumerate(names) if n in op.differentiable)
    out, vjp = jax.vjp(f, *map(jnp.asarray, arrays))
    grads = vjp(jnp.asarray(grad_output))
    launches = gpu_branch.state().launches
    assert launches and {(r.device, r.stream) for r in launches} == {(GPU_DEVICE, XLA_STREAM)}
    expected = op.numpy_backward(grad_output, **args)
    tol = dict(rtol=1e-10, atol=1e-12) if dtype == "float64" else dict(rtol=2**-7, atol=2**-7)
    np.testing.assert_allclose(np.asarray(out, np.float64),
                               np.asarray(op.numpy(**args), np.float64), **tol)
    for i in wrt:
        np.testing.assert_allclose(np.asarray(grads[i], np.float64),
                                   np.asarray(getattr(expected, names[i]), np.float64), **tol)


def test_gpu_branch_vmap_folds_and_loops_on_a_cupy_double(gpu_branch):
    op = OPS["deform_conv2d"]
    args = op.make()
    rest = {k: v for k, v in args.items() if k not in ("input", "weight")}
    inputs = np.stack([args["input"] + i for i in range(2)])
    weights = np.stack([args["weight"] * (i + 1) for i in range(2)])
    out = jax.vmap(lambda x, w: cj.deform_conv2d(x, weight=w, **rest))(
        jnp.asarray(inputs), jnp.asarray(weights))
    folded = jax.vmap(lambda x: cj.deform_conv2d(x, weight=args["weight"], **rest))(
        jnp.asarray(inputs))
    for i in range(2):
        one = dict(args, input=inputs[i])
        np.testing.assert_allclose(np.asarray(folded[i]), cudcn.deform_conv2d(**one), **EXACT)
        np.testing.assert_allclose(np.asarray(out[i]),
                                   cudcn.deform_conv2d(**dict(one, weight=weights[i])), **EXACT)


class _DeviceBuffer:
    """What cupy_view reads of an XLA GPU buffer, over host memory."""

    def __init__(self, host):
        self.host, self.shape, self.dtype = host, host.shape, host.dtype
        self.__cuda_array_interface__ = dict(shape=host.shape, version=2,
                                             data=(host.__array_interface__["data"][0], False))


@pytest.mark.parametrize("dtype", list(_kernels.GPU_DTYPES))
def test_cupy_view_is_a_cupy_array_over_the_buffer(dtype, monkeypatch):
    """Against the installed CuPy (an array over a pointer needs no device)."""
    cupy = pytest.importorskip("cupy")
    buffer = _DeviceBuffer(np.zeros((2, 3, 4, 5), jnp.dtype(dtype)))
    view = _buffers.cupy_view(cupy, buffer, GPU_DEVICE)
    assert isinstance(view, cupy.ndarray) and view.flags.c_contiguous
    assert (view.shape, view.dtype, view.device.id) == (buffer.shape, buffer.dtype, GPU_DEVICE)
    assert view.data.ptr == buffer.__cuda_array_interface__["data"][0]
    assert view.nbytes == buffer.host.nbytes


@pytest.mark.gpu
def test_gpu_matches_numpy_api():
    """On a GPU: device buffers and XLA's stream through CuPy."""
    try:
        device = jax.devices("gpu")[0]
    except RuntimeError:
        pytest.skip("jax has no GPU backend here (install jax[cuda13])")
    for op in OPS.values():
        args = op.make()
        names, arrays, params = op.split(args)
        f = op.function(names, params)
        on_gpu = [jax.device_put(a, device) for a in arrays]
        out = jax.jit(f)(*on_gpu)
        assert out.devices() == {device}
        np.testing.assert_allclose(np.asarray(out), op.numpy(**args), **EXACT)
        grad_output = _grad_output(op, args)
        wrt = tuple(i for i, n in enumerate(names) if n in op.differentiable)
        grads = jax.jit(jax.grad(lambda *a: jnp.sum(f(*a) * grad_output), argnums=wrt))(*on_gpu)
        expected = op.numpy_backward(grad_output, **args)
        for i, g in zip(wrt, grads):
            np.testing.assert_allclose(np.asarray(g), getattr(expected, names[i]), rtol=1e-9,
                                       atol=1e-11)


def test_ms_deform_attn_level_tables_must_be_static():
    """The level sizes decide the launches: a traced table is refused with a
    message that says what to pass; a concrete jax array is taken."""
    args = ms_deform_attn_inputs(seed=31)
    value, loc, weights = (jnp.asarray(args[k]) for k in
                           ("value", "sampling_locations", "attention_weights"))

    @jax.jit
    def traced(shapes):
        return cj.ms_deform_attn(value, shapes, args["level_start_index"], loc, weights)

    with pytest.raises(TypeError, match="spatial_shapes must be static"):
        traced(jnp.asarray(args["spatial_shapes"]))
    out = cj.ms_deform_attn(value, jnp.asarray(args["spatial_shapes"]),
                            jnp.asarray(args["level_start_index"]), loc, weights)
    np.testing.assert_array_equal(np.asarray(out), cudcn.ms_deform_attn(**args))
    with pytest.raises(TypeError, match="level_start_index must have an integer dtype"):
        cj.ms_deform_attn(value, args["spatial_shapes"], np.array([0.0, 30.0]), loc, weights)


# --- dcnv3 / dcnv4 ---------------------------------------------------------

DCNV3_CASES = {
    "rect-stride-dilation": DCNV3_GEOMETRY,
    "remove-center": dict(remove_center=True, offset_scale=1.3),
    "mostly-outside": dict(groups=1, group_channels=5, outside=0.8),
}


@pytest.mark.parametrize("jit", [True, False], ids=["jit", "eager"])
@pytest.mark.parametrize("dtype", ["float64", "float32", "float16", "bfloat16"])
@pytest.mark.parametrize("case", DCNV3_CASES)
@pytest.mark.parametrize("packed", [False, True], ids=["dcnv3", "dcnv4"])
def test_dcnv3_and_dcnv4_equal_the_numpy_api_bit_for_bit(packed, case, dtype, jit):
    """The forward and jax.grad against cudcn.dcnv3 / dcnv3_backward (dcnv4 /
    dcnv4_backward): the same kernels on XLA's buffers give the same bits."""
    op = OPS["dcnv4" if packed else "dcnv3"]
    args = {k: v.astype(jnp.dtype(dtype)) if _floating(v) else v
            for k, v in dcnv3_inputs(packed=packed, **DCNV3_CASES[case], seed=21).items()}
    grad_output = _grad_output(op, args).astype(jnp.dtype(dtype))
    names, arrays, params = op.split(args)
    f = op.function(names, params)
    grad = jax.grad(lambda *a: jnp.sum(f(*a) * grad_output), argnums=tuple(range(len(names))))
    if jit:
        f, grad = jax.jit(f), jax.jit(grad)
    with jax.enable_x64(dtype == "float64"):
        out = f(*map(jnp.asarray, arrays))
        grads = grad(*map(jnp.asarray, arrays))
    assert out.dtype == jnp.dtype(dtype)
    np.testing.assert_array_equal(np.asarray(out), op.numpy(**args))
    expected = op.numpy_backward(grad_output, **args)
    for name, g in zip(names, grads):
        assert g.dtype == jnp.dtype(dtype), name
        np.testing.assert_array_equal(np.asarray(g), getattr(expected, name), err_msg=name)


@pytest.mark.parametrize("packed", [False, True], ids=["dcnv3", "dcnv4"])
def test_vmap_of_dcnv3_folds_into_one_call_and_equals_a_loop(packed, monkeypatch):
    """Nothing is shared between images: a vmapped forward or backward runs
    once, on the batch folded into N, with a loop's bits."""
    op = OPS["dcnv4" if packed else "dcnv3"]
    calls = []
    for fn in (op.numpy, op.numpy_backward):
        def spy(*args, real=fn, **kwargs):
            calls.append((real.__name__, (args[1] if "backward" in real.__name__ else
                                          args[0]).shape))
            return real(*args, **kwargs)

        monkeypatch.setattr(cudcn, fn.__name__, spy)
    stacks = [op.make(seed=s) for s in range(3)]
    names, _, params = op.split(stacks[0])
    batched = [jnp.asarray(np.stack([a[n] for a in stacks])) for n in names]
    f = op.function(names, params)
    out = jax.jit(jax.vmap(f))(*batched)
    everything = tuple(range(len(names)))
    grads = jax.jit(jax.vmap(jax.grad(lambda *a: jnp.sum(f(*a) ** 2), argnums=everything)))(
        *batched)
    folded = (6, *stacks[0]["input"].shape[1:])  # 3 batches of 2 images
    # The vmapped forward, then jax.grad's forward and backward: one call each.
    assert calls == [(op.name, folded), (op.name, folded), (f"{op.name}_backward", folded)]
    monkeypatch.undo()
    for i, one in enumerate(stacks):
        expected_out = op.numpy(**one)
        np.testing.assert_array_equal(np.asarray(out[i]), expected_out)
        expected = op.numpy_backward(2 * expected_out, **one)
        for name, g in zip(names, grads):
            np.testing.assert_array_equal(np.asarray(g[i]), getattr(expected, name),
                                          err_msg=name)


def test_dcnv3_static_arguments_are_python_values():
    """Every non-array argument decides the launch: a traced one is refused
    by cudcn's own check; int and pair spellings compile one program."""
    args = dcnv3_inputs(seed=22)
    arrays = [jnp.asarray(args[k]) for k in ("input", "offset", "mask")]

    @jax.jit
    def traced_scale(scale):
        return cj.dcnv3(*arrays, 3, padding=1, groups=2, offset_scale=scale)

    with pytest.raises(TypeError, match="offset_scale must be a real number"):
        traced_scale(1.0)

    @jax.jit
    def traced_center(flag):
        return cj.dcnv3(*arrays, 3, padding=1, groups=2, remove_center=flag)

    with pytest.raises(TypeError, match="remove_center must be a bool"):
        traced_center(False)
    spellings = [cj.dcnv3(*arrays, kernel_size=k, stride=s, padding=p, dilation=d, groups=2)
                 for k, s, p, d in ((3, 1, 1, 1), ((3, 3), (1, 1), [1, 1], (1, 1)))]
    np.testing.assert_array_equal(np.asarray(spellings[0]), np.asarray(spellings[1]))
    np.testing.assert_array_equal(np.asarray(spellings[0]), cudcn.dcnv3(**args))


def test_dcnv4_padding_channels_get_a_zero_gradient():
    args = dcnv3_inputs(packed=True, seed=23)
    used = args["groups"] * 3 * 9
    assert args["offset_mask"].shape[-1] > used  # padded to a multiple of 8
    names, arrays, params = OPS["dcnv4"].split(args)
    f = OPS["dcnv4"].function(names, params)
    grad = jax.grad(lambda x, om: jnp.sum(f(x, om) ** 2), argnums=1)(*map(jnp.asarray, arrays))
    assert not np.asarray(grad)[..., used:].any()
    assert np.asarray(grad)[..., :used].any()
