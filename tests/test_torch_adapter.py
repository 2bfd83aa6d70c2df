"""cudcn.adapters.torch: autograd, zero-copy DLPack, registered ops, autocast, modules."""

import contextlib

import numpy as np
import pytest

torch = pytest.importorskip("torch")
torchvision = pytest.importorskip("torchvision")

import cudcn  # noqa: E402
import cudcn.adapters.torch as ct  # noqa: E402
from cudcn.testing import (  # noqa: E402
    deform_conv2d_inputs,
    deform_psroi_pool_inputs,
    deform_roi_pool_inputs,
)
from cudcn.adapters.torch import _bridge, ops  # noqa: E402
from torch_inputs import as_tensors  # noqa: E402




# --- gradients -------------------------------------------------------------

def test_gradcheck_deform_conv2d():
    args = as_tensors(deform_conv2d_inputs(batch=2, in_channels=4, out_channels=2, size=(5, 4),
                                           groups=2, offset_groups=2, away_from_kinks=True,
                                           stride=(1, 2), padding=1),
                      requires_grad=("input", "offset", "weight", "bias", "mask"))
    names = ("input", "offset", "weight", "bias", "mask")

    def f(*tensors):
        kw = dict(zip(names, tensors))
        return ct.deform_conv2d(kw["input"], kw["offset"], kw["weight"], kw["bias"],
                                stride=(1, 2), padding=1, mask=kw["mask"])

    assert torch.autograd.gradcheck(f, [args[n] for n in names], eps=1e-6, atol=1e-6)


def test_gradcheck_deform_roi_pool():
    args = as_tensors(deform_roi_pool_inputs(mask=True, rois=3, channels=2, seed=1),
                      requires_grad=("input", "offset", "mask"))

    def f(x, offset, mask):
        return ct.deform_roi_pool(x, args["rois"], offset, 3, 0.5, 0, 0.1, mask)

    assert torch.autograd.gradcheck(f, [args["input"], args["offset"], args["mask"]], eps=1e-6,
                                    atol=1e-6)


def test_gradcheck_deform_psroi_pool():
    a = deform_psroi_pool_inputs(rois=3, seed=2)
    args = as_tensors(a, requires_grad=("input", "offset"))

    def f(x, offset):
        return ct.deform_psroi_pool(x, args["rois"], offset, output_dim=4, group_size=2,
                                    pooled_size=3, sample_per_part=2, trans_std=0.1,
                                    spatial_scale=0.5)

    assert torch.autograd.gradcheck(f, [args["input"], args["offset"]], eps=1e-6, atol=1e-6)


@pytest.mark.parametrize("dtype, tol", [(torch.float64, 1e-10), (torch.float32, 1e-4)])
def test_function_matches_torchvision(dtype, tol):
    names = ("input", "offset", "weight", "bias", "mask")
    a = deform_conv2d_inputs(groups=2, offset_groups=2, in_channels=4, out_channels=4,
                             stride=(2, 1), dilation=(1, 2), padding=(1, 2), seed=3)
    ours = as_tensors(a, requires_grad=names, dtype=dtype)
    theirs = as_tensors(a, requires_grad=names, dtype=dtype)
    kw = dict(stride=(2, 1), padding=(1, 2), dilation=(1, 2))
    y = ct.deform_conv2d(*(ours[n] for n in names[:4]), mask=ours["mask"], **kw)
    yt = torchvision.ops.deform_conv2d(*(theirs[n] for n in names[:4]), mask=theirs["mask"], **kw)
    grad = torch.randn_like(y)
    y.backward(grad)
    yt.backward(grad)
    torch.testing.assert_close(y, yt, rtol=tol, atol=tol)
    for n in names:
        torch.testing.assert_close(ours[n].grad, theirs[n].grad, rtol=tol, atol=tol * 10)


def test_module_loads_torchvision_state_dict_and_matches():
    torch.manual_seed(0)
    theirs = torchvision.ops.DeformConv2d(4, 6, 3, stride=1, padding=1, groups=2).double()
    torch.manual_seed(0)
    ours = ct.DeformConv2d(4, 6, 3, stride=1, padding=1, groups=2).double()
    # Same constructor, names and initialisation: equal weights from one seed.
    assert ours.state_dict().keys() == theirs.state_dict().keys()
    for k in ours.state_dict():
        torch.testing.assert_close(ours.state_dict()[k], theirs.state_dict()[k])
    ours.load_state_dict(theirs.state_dict(), strict=True)
    x = torch.randn(2, 4, 7, 7, dtype=torch.float64, requires_grad=True)
    offset = torch.randn(2, 18, 7, 7, dtype=torch.float64)
    mask = torch.rand(2, 9, 7, 7, dtype=torch.float64)
    y, yt = ours(x, offset, mask), theirs(x, offset, mask)
    torch.testing.assert_close(y, yt, rtol=1e-10, atol=1e-10)
    (gx,) = torch.autograd.grad(y.sum(), x)
    (gxt,) = torch.autograd.grad(yt.sum(), x)
    torch.testing.assert_close(gx, gxt, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("sampling_ratio", [0, 2])
def test_roi_pool_without_offset_matches_roi_align(sampling_ratio):
    a = deform_roi_pool_inputs(offset=False, rois=6, sampling_ratio=sampling_ratio, seed=4)
    x1 = torch.from_numpy(a["input"]).requires_grad_()
    x2 = torch.from_numpy(a["input"].copy()).requires_grad_()
    rois = torch.from_numpy(a["rois"])
    y = ct.DeformRoIPool(3, spatial_scale=0.5, sampling_ratio=sampling_ratio)(x1, rois)
    yt = torchvision.ops.roi_align(x2, rois, 3, 0.5, sampling_ratio, aligned=True)
    torch.testing.assert_close(y, yt, rtol=1e-10, atol=1e-10)
    y.sum().backward()
    yt.sum().backward()
    torch.testing.assert_close(x1.grad, x2.grad, rtol=1e-10, atol=1e-10)


def test_double_backward_is_a_clear_error():
    a = as_tensors(deform_conv2d_inputs(seed=5), requires_grad=("input", "offset", "weight"))
    y = ct.deform_conv2d(a["input"], a["offset"], a["weight"], padding=1)
    (g,) = torch.autograd.grad(y.square().sum(), a["offset"], create_graph=True)
    with pytest.raises(RuntimeError, match="no double backward"):
        g.sum().backward()


# --- zero copy -------------------------------------------------------------

@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16], ids=["float64", "bfloat16"])
def test_arrays_and_results_share_memory_with_tensors(monkeypatch, dtype):
    """bfloat16, which NumPy's DLPack import lacks, crosses as its int16 bits;
    a channels-last input with its strides. The arrays are read-only: cudcn
    never writes its arguments."""
    seen = {}
    real = cudcn.deform_conv2d

    def spy(input, offset, weight, bias, stride, padding, dilation, mask):
        seen.update(input=input, offset=offset, weight=weight)
        seen["output"] = real(input, offset, weight, bias, stride, padding, dilation, mask)
        return seen["output"]

    monkeypatch.setattr(cudcn, "deform_conv2d", spy)
    a = as_tensors(deform_conv2d_inputs(seed=6), dtype=dtype)
    a["input"] = a["input"].contiguous(memory_format=torch.channels_last)
    y = ct.deform_conv2d(a["input"], a["offset"], a["weight"], padding=1)
    for name in ("input", "offset", "weight"):
        assert isinstance(seen[name], np.ndarray) and seen[name].dtype.name == str(dtype)[6:]
        assert seen[name].ctypes.data == a[name].data_ptr()
        assert seen[name].strides == tuple(s * a[name].element_size() for s in a[name].stride())
        assert not seen[name].flags.writeable
    assert y.dtype == dtype and y.data_ptr() == seen["output"].ctypes.data


def test_a_channels_last_input_is_read_where_it_lies(launches):
    """A channels_last tensor crosses as its memory, which the CPU's gather
    reads as it is (no NCHW copy), forward and backward: the contiguous
    tensor's bits."""
    a = as_tensors(deform_conv2d_inputs(in_channels=5, seed=11), dtype=torch.float32)

    def run(x):
        leaves = [t.detach().clone().requires_grad_(True) for t in (a["offset"], a["weight"])]
        x = x.detach().requires_grad_(True)
        y = ct.deform_conv2d(x, *leaves, padding=1)
        y.backward(torch.ones_like(y))
        return [y, x.grad] + [t.grad for t in leaves], x

    del launches[:]
    last, x = run(a["input"].contiguous(memory_format=torch.channels_last))
    assert not x.is_contiguous()
    fills = [dict(zip(launch.kernel.param_names, launch.args)) for launch in launches
             if launch.kernel.name.endswith("deform_conv2d_fill_pixels")]
    assert [(f["input"].ctypes.data, f["channels_last"]) for f in fills] == [(x.data_ptr(), 1)] * 2
    for got, want in zip(last, run(a["input"].contiguous())[0]):
        assert torch.equal(got, want)


def test_a_negated_view_crosses_with_its_values():
    """z.conj().imag is a real tensor whose memory holds the values
    un-negated (torch's neg bit), and DLPack exports the memory as it is."""
    a = as_tensors(deform_conv2d_inputs(seed=7), dtype=torch.float64)
    negated = torch.complex(torch.zeros_like(a["offset"]), -a["offset"]).conj().imag
    assert negated.is_neg() and torch.equal(negated, a["offset"])
    want = ct.deform_conv2d(a["input"], a["offset"], a["weight"], padding=1)
    torch.testing.assert_close(ct.deform_conv2d(a["input"], negated, a["weight"], padding=1),
                               want, rtol=0, atol=0)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16],
                         ids=["float64", "float32", "bfloat16"])
@pytest.mark.parametrize("groups", [1, 2])
def test_the_adapter_computes_the_numpy_apis_bits(dtype, groups):
    """Through the adapter, the output and every gradient are the NumPy API's
    on the tensors' own memory, bit for bit: the same kernels and the same
    BLAS (NumPy's, on the kernels' threads) for every product."""
    names = ("input", "offset", "weight", "bias", "mask")
    arrays = deform_conv2d_inputs(batch=3, in_channels=4, out_channels=6, size=(7, 6),
                                  groups=groups, offset_groups=2, seed=12)
    a = as_tensors(arrays, requires_grad=names, dtype=dtype)
    y = ct.deform_conv2d(*(a[n] for n in names[:4]), padding=1, mask=a["mask"])
    y.backward(torch.ones_like(y))

    native = {k: _bridge.to_array(a[k]) if isinstance(a[k], torch.Tensor) else v
              for k, v in arrays.items()}  # the tensors' own memory, bfloat16 as ml_dtypes'
    want = cudcn.deform_conv2d(**native)
    grads = cudcn.deform_conv2d_backward(np.ones_like(want), **native)
    np.testing.assert_array_equal(_bridge.to_array(y), want)
    for n, g in zip(names, grads):
        np.testing.assert_array_equal(_bridge.to_array(a[n].grad), g, err_msg=n)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["float16", "bfloat16"])
def test_16_bit_tensors_run_in_their_own_dtype(dtype):
    """Outputs and every gradient in the input's dtype, close to float64."""
    a64 = as_tensors(deform_conv2d_inputs(seed=7), requires_grad=("input", "offset", "weight",
                                                                  "bias", "mask"))
    a = {k: v.detach().to(dtype).requires_grad_() if isinstance(v, torch.Tensor) else v
         for k, v in a64.items()}
    names = ("input", "offset", "weight", "bias", "mask")
    y = ct.deform_conv2d(*(a[n] for n in ("input", "offset", "weight", "bias")), padding=1,
                         mask=a["mask"])
    assert y.dtype == dtype
    y.backward(torch.ones_like(y))
    exact = {k: v.detach().double().requires_grad_() if isinstance(v, torch.Tensor) else v
             for k, v in a.items()}
    y64 = torchvision.ops.deform_conv2d(*(exact[n] for n in ("input", "offset", "weight", "bias")),
                                        padding=1, mask=exact["mask"])
    y64.backward(torch.ones_like(y64))
    u = {torch.float16: 2.0**-11, torch.bfloat16: 2.0**-8}[dtype]
    torch.testing.assert_close(y.double(), y64, rtol=4 * u, atol=4 * u * y64.abs().max().item())
    for n in names:
        assert a[n].grad.dtype == dtype, n
        scale = exact[n].grad.abs().max().item()
        torch.testing.assert_close(a[n].grad.double(), exact[n].grad, rtol=8 * u,
                                   atol=8 * u * scale, msg=n)


# --- registered ops, compile ------------------------------------------------

def _op_samples():
    conv = as_tensors(deform_conv2d_inputs(away_from_kinks=True, seed=7),
                      requires_grad=("input", "offset", "weight", "bias", "mask"))
    roi = as_tensors(deform_roi_pool_inputs(mask=True, seed=8), requires_grad=("input", "offset",
                                                                                 "mask"))
    ps = as_tensors(deform_psroi_pool_inputs(seed=9), requires_grad=("input", "offset"))
    grad = lambda shape: torch.randn(shape, dtype=torch.float64)  # noqa: E731
    c_args = (conv["input"], conv["offset"], conv["weight"], conv["bias"], conv["mask"], [1, 1],
              [1, 1], [1, 1])
    r_args = (roi["input"], roi["rois"], roi["offset"], roi["mask"], [3, 3], 0.5, 0, 0.1)
    p_args = (ps["input"], ps["rois"], ps["offset"], 4, 2, 3, 3, 2, 0.1, 0.5)
    return [
        (torch.ops.cudcn.deform_conv2d.default, c_args),
        (torch.ops.cudcn.deform_conv2d_backward.default,
         (grad((2, 6, 7, 6)), *(t.detach() for t in c_args[:5]), *c_args[5:], [True] * 5, False)),
        (torch.ops.cudcn.deform_roi_pool.default, r_args),
        (torch.ops.cudcn.deform_roi_pool_backward.default,
         (grad((5, 3, 3, 3)), *(t.detach() for t in r_args[:4]), *r_args[4:], [True] * 3, True)),
        (torch.ops.cudcn.deform_psroi_pool.default, p_args),
        (torch.ops.cudcn.deform_psroi_pool_backward.default,
         (grad((5, 4, 3, 3)), *(t.detach() for t in p_args[:3]), *p_args[3:], [True, True], False)),
    ]


@pytest.mark.parametrize("index", range(6), ids=["conv", "conv_bwd", "roi", "roi_bwd", "psroi",
                                                 "psroi_bwd"])
def test_opcheck(index):
    op, args = _op_samples()[index]
    torch.library.opcheck(op, args)


class _AllModules(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.pack = ct.DeformConv2dPack(3, 8, 3, padding=1)
        self.modulated = ct.ModulatedDeformConv2dPack(8, 8, 3, padding=1, deform_groups=2)
        self.plain = ct.DeformConv2d(8, 8, 3, padding=1)
        self.roi_pack = ct.DeformRoIPoolPack(3, 8, deform_fc_channels=16, spatial_scale=0.5)
        self.roi_mod = ct.ModulatedDeformRoIPoolPack(3, 8, deform_fc_channels=16,
                                                     spatial_scale=0.5)
        self.roi = ct.DeformRoIPool(3, spatial_scale=0.5, sampling_ratio=2)
        self.psroi = ct.DeformPSRoIPool(0.5, output_dim=2, group_size=2, pooled_size=3,
                                        sample_per_part=2, trans_std=0.1)
        for head in (self.roi_pack.offset_fc[-1], self.roi_mod.mask_fc[-2]):
            torch.nn.init.normal_(head.weight, std=0.05)  # so that offsets are not all zero

    def forward(self, x, rois, offset):
        h = self.modulated(torch.relu(self.pack(x)))
        h = self.plain(h, offset)
        return torch.cat([self.roi_pack(h, rois).flatten(1), self.roi_mod(h, rois).flatten(1),
                          self.roi(h, rois).flatten(1), self.psroi(h, rois).flatten(1)], dim=1)


def test_torch_compile_fullgraph_matches_eager():
    torch.manual_seed(10)
    model = _AllModules().double()
    torch.nn.init.normal_(model.pack.conv_offset.weight, std=0.1)
    x = torch.randn(2, 3, 12, 10, dtype=torch.float64)
    rois = torch.from_numpy(deform_roi_pool_inputs(rois=4, seed=11)["rois"])
    offset = torch.randn(2, 18, 12, 10, dtype=torch.float64)
    eager = model(x, rois, offset)
    eager.square().sum().backward()
    eager_grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    torch._dynamo.reset()
    # Hermetic: torch's on-disk compile caches do not key on custom-op schemas.
    from torch._inductor.utils import fresh_inductor_cache

    with fresh_inductor_cache():
        compiled = torch.compile(model, fullgraph=True)
        out = compiled(x, rois, offset)
        out.square().sum().backward()
    torch.testing.assert_close(out, eager, rtol=1e-10, atol=1e-10)
    for p, g in zip(model.parameters(), eager_grads):
        torch.testing.assert_close(p.grad, g, rtol=1e-9, atol=1e-9)


# --- eager calls and torch's dispatcher ----------------------------------------

_OPS = {"deform_conv2d": ops._deform_conv2d_op, "deform_roi_pool": ops._deform_roi_pool_op,
        "deform_psroi_pool": ops._deform_psroi_pool_op}


@pytest.fixture
def dispatched(monkeypatch):
    """The names of the public functions whose calls went through their
    custom op (torch's dispatcher), in call order."""
    names = []
    for name, op in _OPS.items():
        def counted(*args, name=name, real=op.op):
            names.append(name)
            return real(*args)

        monkeypatch.setattr(op, "op", counted)
    return names


def _public_calls(requires_grad, input_as=None):
    """{name: call} of each public function on small float64 CPU tensors
    (the input passed through ``input_as``, if given), and the tensors that
    take gradients."""
    conv = as_tensors(deform_conv2d_inputs(away_from_kinks=True, seed=21),
                      requires_grad=("input", "offset", "weight", "bias", "mask")
                      if requires_grad else ())
    roi = as_tensors(deform_roi_pool_inputs(mask=True, rois=3, seed=22),
                     requires_grad=("input", "offset", "mask") if requires_grad else ())
    ps = as_tensors(deform_psroi_pool_inputs(rois=3, seed=23),
                    requires_grad=("input", "offset") if requires_grad else ())
    if input_as is not None:
        for tensors in (conv, roi, ps):
            tensors["input"] = input_as(tensors["input"])
    calls = {
        "deform_conv2d": lambda: ct.deform_conv2d(conv["input"], conv["offset"], conv["weight"],
                                                  conv["bias"], padding=1, mask=conv["mask"]),
        "deform_roi_pool": lambda: ct.deform_roi_pool(roi["input"], roi["rois"], roi["offset"],
                                                      3, 0.5, 0, 0.1, roi["mask"]),
        "deform_psroi_pool": lambda: ct.deform_psroi_pool(
            ps["input"], ps["rois"], ps["offset"], output_dim=4, group_size=2, pooled_size=3,
            sample_per_part=2, trans_std=0.1, spatial_scale=0.5),
    }
    leaves = {"deform_conv2d": [conv[n] for n in ("input", "offset", "weight", "bias", "mask")],
              "deform_roi_pool": [roi[n] for n in ("input", "offset", "mask")],
              "deform_psroi_pool": [ps[n] for n in ("input", "offset")]}
    return calls, leaves


class _Watching(torch.overrides.TorchFunctionMode):
    """A mode that changes nothing but, as any mode, must see every op."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        return func(*args, **(kwargs or {}))


def _value_and_grads(call, leaves):
    out = call()
    grads = torch.autograd.grad(out, leaves, torch.ones_like(out)) if leaves else ()
    return out.detach(), grads


@pytest.mark.parametrize("requires_grad", [False, True], ids=["forward", "backward"])
def test_eager_cpu_calls_skip_the_dispatcher_with_the_ops_results(dispatched, requires_grad):
    """Plain CPU tensors in eager mode run without the custom op (and its
    backward op), to the values and gradients of the calls through it."""
    calls, leaves = _public_calls(requires_grad)
    for name, call in calls.items():
        wanted = leaves[name] if requires_grad else []
        direct = _value_and_grads(call, wanted)
        assert dispatched == []
        with _Watching():
            through_op = _value_and_grads(call, wanted)
        assert dispatched == [name]
        dispatched.clear()
        for mine, theirs in zip((direct[0], *direct[1]), (through_op[0], *through_op[1])):
            torch.testing.assert_close(mine, theirs, rtol=1e-12, atol=1e-12)
        assert direct[0].requires_grad is False


def test_eager_backward_runs_no_op(monkeypatch):
    """The backward of an eager call computes its gradients directly too."""
    calls, leaves = _public_calls(True)
    for name, op in _OPS.items():
        def refuse(*args, name=name):
            raise AssertionError(f"cudcn::{name}_backward was dispatched")

        monkeypatch.setattr(op, "backward_op", refuse)
    for name, call in calls.items():
        out = call()
        out.sum().backward()
        assert all(t.grad is not None for t in leaves[name])


def _dispatch_mode_names(seen):
    class Recording(torch.utils._python_dispatch.TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            seen.append(str(func))
            return func(*args, **(kwargs or {}))

    return Recording()


class _Subclass(torch.Tensor):
    pass


@pytest.mark.parametrize("watcher", ["function mode", "dispatch mode", "profiler",
                                     "forward AD level", "subclass"])
def test_what_watches_a_call_sees_the_op(dispatched, watcher):
    """Modes, the profiler, forward AD and tensor subclasses see the custom op
    (torch.compile, export and FX tracing have tests of their own), and its
    results are the eager ones."""
    import torch.autograd.forward_ad as forward_ad

    eager = {name: call() for name, call in _public_calls(False)[0].items()}
    calls, _ = _public_calls(False, (lambda t: t.as_subclass(_Subclass))
                             if watcher == "subclass" else None)
    seen = []
    watching = {"function mode": _Watching, "dispatch mode": lambda: _dispatch_mode_names(seen),
                "profiler": torch.profiler.profile, "forward AD level": forward_ad.dual_level,
                "subclass": contextlib.nullcontext}[watcher]
    with watching() as context:
        results = {name: call() for name, call in calls.items()}
    assert dispatched == list(calls)
    for name, out in results.items():
        torch.testing.assert_close(out.as_subclass(torch.Tensor), eager[name], rtol=1e-12,
                                   atol=1e-12)
    if watcher == "dispatch mode":
        assert [s for s in seen if s.startswith("cudcn.")] == [f"cudcn.{n}.default"
                                                                for n in calls]
    if watcher == "profiler":
        events = {e.name for e in context.events()}
        assert {f"cudcn::{n}" for n in calls} <= events


@pytest.mark.parametrize("reentrant", [True, False], ids=["reentrant", "non-reentrant"])
def test_activation_checkpointing_keeps_values_and_gradients(reentrant):
    """torch.utils.checkpoint (mmdet's with_cp) recomputes the eager forward
    in the backward, through either of its two mechanisms."""
    import torch.utils.checkpoint as checkpoint

    torch.manual_seed(26)
    layer = ct.DeformConv2dPack(4, 6, 3, padding=1).double()
    torch.nn.init.normal_(layer.conv_offset.weight, std=0.1)
    x = torch.randn(2, 4, 9, 8, dtype=torch.float64, requires_grad=True)

    def run(f):
        layer.zero_grad()
        x.grad = None
        y = f(x)
        y.square().sum().backward()
        return [y.detach(), x.grad] + [p.grad for p in layer.parameters()]

    plain = run(layer)
    again = run(lambda t: checkpoint.checkpoint(layer, t, use_reentrant=reentrant))
    for mine, theirs in zip(again, plain):
        torch.testing.assert_close(mine, theirs, rtol=1e-12, atol=1e-12)


def test_vmap_sees_the_op(dispatched):
    """Under torch.func's transforms the tensors are wrappers without storage:
    only the op (torch's fallback, one call per element) can run them."""
    a = as_tensors(deform_conv2d_inputs(seed=25))
    offset, weight = a["offset"][:1], a["weight"]
    per_image = torch.vmap(lambda x: ct.deform_conv2d(x[None], offset, weight, padding=1)[0])
    got = per_image(a["input"])
    assert set(dispatched) == {"deform_conv2d"}
    want = ct.deform_conv2d(a["input"], offset.expand(len(a["input"]), -1, -1, -1), weight,
                            padding=1)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated")
def test_forward_mode_derivatives_are_a_clear_error():
    """torch gives a custom op without a forward-mode rule no tangent (a
    silent zero under torch.func.jvp); cudcn's functions raise instead."""
    import torch.autograd.forward_ad as forward_ad

    with forward_ad.dual_level():
        calls, _ = _public_calls(False, lambda t: forward_ad.make_dual(t, torch.ones_like(t)))
        for name, call in calls.items():
            with pytest.raises(NotImplementedError, match=f"cudcn::{name} has no forward-mode"):
                call()
    a = as_tensors(deform_conv2d_inputs(seed=27))

    def conv(x):
        return ct.deform_conv2d(x, a["offset"], a["weight"], padding=1)

    with pytest.raises(NotImplementedError, match="no forward-mode derivative"):
        torch.func.jvp(conv, (a["input"],), (torch.ones_like(a["input"]),))
    with pytest.raises(NotImplementedError, match="no forward-mode derivative"):
        torch.func.jacfwd(lambda x: conv(x).sum())(a["input"])


@pytest.mark.filterwarnings("ignore:`torch.jit.trace` is deprecated")
def test_jit_trace_records_the_op(dispatched):
    a = as_tensors(deform_conv2d_inputs(seed=24))
    traced = torch.jit.trace(lambda x: ct.deform_conv2d(x, a["offset"], a["weight"], padding=1),
                             (a["input"],), check_trace=False)
    assert "cudcn::deform_conv2d" in str(traced.graph)
    assert dispatched == ["deform_conv2d"]
    torch.testing.assert_close(traced(a["input"]),
                               ct.deform_conv2d(a["input"], a["offset"], a["weight"], padding=1),
                               rtol=1e-12, atol=1e-12)


# --- autocast ----------------------------------------------------------------

@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bfloat16", "float16"])
def test_cpu_autocast_runs_the_16_bit_kernels(monkeypatch, dtype):
    seen = []
    real = cudcn.deform_conv2d
    monkeypatch.setattr(cudcn, "deform_conv2d",
                        lambda input, *rest: seen.append(input.dtype.name) or real(input, *rest))
    a = as_tensors(deform_conv2d_inputs(dtype=np.float32, seed=12))
    layer = ct.DeformConv2d(4, 6, 3, padding=1)
    expected = layer(a["input"], a["offset"], a["mask"])
    with torch.autocast("cpu", dtype=dtype):
        x = torch.nn.functional.conv2d(a["input"], torch.eye(4).reshape(4, 4, 1, 1))
        assert x.dtype == dtype
        y = layer(x, a["offset"], a["mask"])
    assert y.dtype == dtype and seen[-1] == str(dtype)[6:]
    torch.testing.assert_close(y.float(), expected, rtol=2e-2, atol=5e-2)
    y.float().sum().backward()
    assert layer.weight.grad.dtype == torch.float32  # autograd casts back to the parameter's


# --- modules -------------------------------------------------------------------

def test_fresh_pack_layers_start_undeformed():
    torch.manual_seed(13)
    x = torch.randn(2, 4, 9, 8, dtype=torch.float64)
    pack = ct.DeformConv2dPack(4, 6, 3, padding=1, stride=2, bias=True).double()
    conv = torch.nn.Conv2d(4, 6, 3, padding=1, stride=2).double()
    conv.load_state_dict({k: v for k, v in pack.state_dict().items() if "offset" not in k})
    torch.testing.assert_close(pack(x), conv(x), rtol=1e-10, atol=1e-10)
    modulated = ct.ModulatedDeformConv2dPack(4, 6, 3, padding=1, bias=False).double()
    conv = torch.nn.Conv2d(4, 6, 3, padding=1, bias=False).double()
    conv.weight.data.copy_(modulated.weight.data)
    torch.testing.assert_close(modulated(x), 0.5 * conv(x), rtol=1e-10, atol=1e-10)
    assert modulated.conv_offset.out_channels == 27


def test_fresh_roi_pool_packs_start_as_plain_pooling():
    a = deform_roi_pool_inputs(offset=False, channels=4, seed=14)
    x, rois = torch.from_numpy(a["input"]), torch.from_numpy(a["rois"])
    plain = ct.DeformRoIPool(3, spatial_scale=0.5)(x, rois)
    pack = ct.DeformRoIPoolPack(3, 4, deform_fc_channels=8, spatial_scale=0.5).double()
    modulated = ct.ModulatedDeformRoIPoolPack(3, 4, deform_fc_channels=8, spatial_scale=0.5).double()
    torch.testing.assert_close(pack(x, rois), plain)
    torch.testing.assert_close(modulated(x, rois), 0.5 * plain)
    assert [type(m).__name__ for m in pack.offset_fc] == ["Linear", "ReLU", "Linear", "ReLU", "Linear"]


def _smooth_images(n, size, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 1, size, size, generator=g)
    box = torch.ones(1, 1, 5, 5) / 25
    for _ in range(3):
        x = torch.nn.functional.conv2d(x, box, padding=2)
    return x / x.std()


def test_pack_layer_learns_offsets_on_a_toy_task():
    """Only the offsets can fit a one-pixel shift of the input: the weight of
    the 1x1 deformable conv is frozen at 1."""
    torch.manual_seed(15)
    x = _smooth_images(8, 20, seed=16)
    target = torch.roll(x, shifts=1, dims=-1)
    layer = ct.DeformConv2dPack(1, 1, 1, bias=False)
    layer.weight.data.fill_(1.0)
    layer.weight.requires_grad_(False)
    opt = torch.optim.Adam(layer.conv_offset.parameters(), lr=0.05)
    losses = []
    for _ in range(60):
        opt.zero_grad()
        loss = torch.nn.functional.mse_loss(layer(x)[..., 2:-2, 2:-2], target[..., 2:-2, 2:-2])
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.2 * losses[0]
    dx = layer.conv_offset(x)[:, 1]  # x offset of the single kernel point
    assert dx.mean().item() == pytest.approx(-1.0, abs=0.25)


def test_convert_resnet18_keeps_its_output():
    torch.manual_seed(17)
    model = torchvision.models.resnet18(weights=None).eval()
    x = torch.randn(2, 3, 64, 64)
    before = model(x)
    replaced = ct.convert_to_deformable(model)
    assert replaced == ["layer4.0.conv2", "layer4.1.conv1", "layer4.1.conv2"]
    assert isinstance(model.layer4[1].conv2, ct.DeformConv2dPack)
    torch.testing.assert_close(model(x), before, rtol=1e-4, atol=1e-4)
    model.train()
    model(x).sum().backward()
    assert model.layer4[1].conv2.conv_offset.weight.grad.abs().sum() > 0


def test_convert_by_name_or_predicate_and_unknown_names():
    model = torchvision.models.resnet18(weights=None)
    names = ct.convert_to_deformable(model, layers=lambda name, conv: name == "layer3.0.conv1",
                                     modulated=True, deform_groups=2)
    assert names == ["layer3.0.conv1"]
    layer = model.layer3[0].conv1
    assert isinstance(layer, ct.ModulatedDeformConv2dPack) and layer.stride == (2, 2)
    with pytest.raises(ValueError, match="layer9"):
        ct.convert_to_deformable(model, layers=["layer9.conv"])
    # One name as a str is that name, not the set of its letters.
    assert ct.convert_to_deformable(model, layers="layer4.1.conv2") == ["layer4.1.conv2"]
    assert isinstance(model.layer4[1].conv2, ct.DeformConv2dPack)


def test_convert_is_all_or_nothing_and_leaves_pack_layers_alone():
    model = torchvision.models.resnet18(weights=None)
    before = {name: type(m) for name, m in model.named_modules()}
    # deform_groups=3 divides conv1's 3 input channels, not layer1.0.conv1's 64:
    # conv1 (first in named_modules order) converts, then layer1.0.conv1 fails.
    with pytest.raises(ValueError, match="deform_groups"):
        ct.convert_to_deformable(model, layers=["conv1", "layer1.0.conv1"], deform_groups=3)
    assert {name: type(m) for name, m in model.named_modules()} == before
    # Converted twice with the default choice: the second time takes the next
    # three plain 3x3 convs, not the Pack layers' own conv_offset.
    first = ct.convert_to_deformable(model)
    second = ct.convert_to_deformable(model)
    assert not set(first) & set(second)
    assert all("conv_offset" not in name for name in first + second)
    assert all(isinstance(model.get_submodule(name), ct.DeformConv2dPack) for name in first + second)


def test_param_groups_apply_the_offset_lr_multiplier():
    model = torch.nn.Sequential(ct.DeformConv2dPack(2, 2, 3, padding=1, bias=True, offset_lr_mult=0.1),
                                torch.nn.Conv2d(2, 2, 1))
    groups = ct.param_groups(model, lr=0.5, momentum=0.0)
    by_lr = {g["lr"]: {id(p) for p in g["params"]} for g in groups}
    assert by_lr[0.5 * 0.1] == {id(p) for p in model[0].conv_offset.parameters()}
    assert len(by_lr[0.5]) == 4  # weight, bias of the pack and of the 1x1 conv
    torch.optim.SGD(groups, lr=0.5)


# --- bad input -------------------------------------------------------------------

def test_bad_inputs_raise_clear_errors():
    a = as_tensors(deform_conv2d_inputs(seed=18))
    with pytest.raises(TypeError, match="offset must be a torch.Tensor, got ndarray"):
        ct.deform_conv2d(a["input"], a["offset"].numpy(), a["weight"])
    with pytest.raises(TypeError, match="weight must be a torch.Tensor, got NoneType"):
        ct.deform_conv2d(a["input"], a["offset"], None)  # only bias and mask may be None
    with pytest.raises(TypeError, match="input has dtype int64"):
        ct.deform_conv2d(a["input"].long(), a["offset"].long(), a["weight"].long(), padding=1)
    with pytest.raises(TypeError, match="offset has dtype float64 but input has bfloat16"):
        ct.deform_conv2d(a["input"].bfloat16(), a["offset"], a["weight"], padding=1)
    with pytest.raises(ValueError, match="weight is on meta"):
        ct.deform_conv2d(a["input"], a["offset"], a["weight"].to("meta"), padding=1)
    with pytest.raises(TypeError, match="offset has dtype float32"):
        ct.deform_conv2d(a["input"], a["offset"].float(), a["weight"], padding=1)
    with pytest.raises(ValueError, match="stride must be >= 1"):
        ct.deform_conv2d(a["input"], a["offset"], a["weight"], stride=0)
    with pytest.raises(TypeError, match="rois must be a torch.Tensor"):
        ct.deform_roi_pool(a["input"], [[0, 1, 1, 4, 4]])
