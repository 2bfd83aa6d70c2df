"""torchvision's own checks of deform_conv2d and roi_align (test/test_ops.py:
TestDeformConv, TestRoIAlign), run against cudcn.adapters.torch as a user
replacing torchvision would: the same geometry, batch sizes (0 and 33),
non-contiguous inputs, gradcheck settings, op checks and FX checks, in our
own code. Where torchvision's suite builds the expected values with its own
pure-Python loops, torchvision's op is the reference here.
"""

import pytest

torch = pytest.importorskip("torch")
torchvision = pytest.importorskip("torchvision")

import cudcn.adapters.torch as ct  # noqa: E402

DTYPE = torch.float64
# TestDeformConv's geometry: 6 -> 2 channels, 2 weight groups, 3 offset
# groups, kernel (3, 2), stride (2, 1), padding (1, 0), dilation (2, 1), 5 x 4.
GEOMETRY = dict(stride=(2, 1), padding=(1, 0), dilation=(2, 1))


def _permuted(t, order):
    """The same values with other strides: contiguous in ``order``, then
    viewed back in the original axis order."""
    inverse = [order.index(i) for i in range(t.dim())]
    return t.permute(order).contiguous().permute(inverse)


def _conv_args(batch, contiguous, seed=0):
    g = torch.Generator().manual_seed(seed)
    out_h, out_w = 2, 3
    x = torch.rand(batch, 6, 5, 4, generator=g, dtype=DTYPE)
    offset = torch.randn(batch, 3 * 2 * 3 * 2, out_h, out_w, generator=g, dtype=DTYPE)
    mask = torch.randn(batch, 3 * 3 * 2, out_h, out_w, generator=g, dtype=DTYPE)
    weight = torch.randn(2, 3, 3, 2, generator=g, dtype=DTYPE)
    bias = torch.randn(2, generator=g, dtype=DTYPE)
    if not contiguous:  # the strides torchvision's suite uses
        x = _permuted(x, [0, 1, 3, 2])
        offset = _permuted(offset, [1, 3, 0, 2])
        mask = _permuted(mask, [1, 3, 0, 2])
        weight = _permuted(weight, [3, 2, 0, 1])
    return [t.requires_grad_() for t in (x, offset, mask, weight, bias)]


def _layer():
    return ct.DeformConv2d(6, 2, (3, 2), groups=2, **GEOMETRY).to(DTYPE)


# --- TestDeformConv --------------------------------------------------------------

@pytest.mark.parametrize("contiguous", [True, False], ids=["contiguous", "strided"])
@pytest.mark.parametrize("batch", [0, 33])
def test_forward(batch, contiguous):
    x, offset, mask, _, _ = _conv_args(batch, contiguous)
    layer = _layer()
    for m in (mask, None):  # DCN v2, then v1
        expected = torchvision.ops.deform_conv2d(x, offset, layer.weight, layer.bias, mask=m,
                                                 **GEOMETRY)
        torch.testing.assert_close(layer(x, offset, m), expected, rtol=1e-5, atol=1e-5)


def test_wrong_sizes_raise_runtime_errors():
    x, offset, mask, _, _ = _conv_args(10, True)
    layer = _layer()
    with pytest.raises(RuntimeError, match="offset"):
        layer(x, offset[:, :2])
    with pytest.raises(RuntimeError, match="mask"):
        layer(x, offset, mask[:, :2])


@pytest.mark.parametrize("contiguous", [True, False], ids=["contiguous", "strided"])
@pytest.mark.parametrize("batch", [0, 33])
def test_backward_gradcheck(batch, contiguous):
    x, offset, mask, weight, bias = _conv_args(batch, contiguous)

    def modulated(x_, offset_, mask_, weight_, bias_):
        return ct.deform_conv2d(x_, offset_, weight_, bias_, mask=mask_, **GEOMETRY)

    def plain(x_, offset_, weight_, bias_):
        return ct.deform_conv2d(x_, offset_, weight_, bias_, **GEOMETRY)

    assert torch.autograd.gradcheck(modulated, (x, offset, mask, weight, bias), nondet_tol=1e-5,
                                    fast_mode=True)
    assert torch.autograd.gradcheck(plain, (x, offset, weight, bias), nondet_tol=1e-5,
                                    fast_mode=True)


@pytest.mark.parametrize("contiguous", [True, False], ids=["contiguous", "strided"])
@pytest.mark.parametrize("batch", [0, 33])
def test_backward_matches_torchvision(batch, contiguous):
    ours = _conv_args(batch, contiguous)
    theirs = [t.detach().clone().requires_grad_() for t in ours]
    y = ct.deform_conv2d(ours[0], ours[1], ours[3], ours[4], mask=ours[2], **GEOMETRY)
    yt = torchvision.ops.deform_conv2d(theirs[0], theirs[1], theirs[3], theirs[4],
                                       mask=theirs[2], **GEOMETRY)
    grad = torch.randn_like(y)
    y.backward(grad)
    yt.backward(grad)
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("contiguous", [True, False], ids=["contiguous", "strided"])
@pytest.mark.parametrize("batch", [0, 33])
def test_opcheck(batch, contiguous):
    # torchvision runs test_forward/test_backward through
    # optests.generate_opcheck_tests: schema, autograd registration, fake
    # tensors, aot_dispatch_dynamic; torch.library.opcheck runs the same four.
    x, offset, mask, weight, bias = _conv_args(batch, contiguous)
    torch.library.opcheck(torch.ops.cudcn.deform_conv2d.default,
                          (x, offset, weight, bias, mask, [2, 1], [1, 0], [2, 1]))


def test_torch_compile_matches_eager():
    layer = _layer()
    compiled = torch.compile(layer, fullgraph=True, dynamic=True)
    for batch in (33, 5):
        x, offset, mask, _, _ = _conv_args(batch, False, seed=batch)
        torch.testing.assert_close(compiled(x, offset, mask), layer(x, offset, mask),
                                   rtol=0, atol=0)
    torch._dynamo.reset()


def test_is_leaf_node():
    from torchvision.models.feature_extraction import get_graph_node_names

    class Wrapper(torch.nn.Module):
        def __init__(self, layer):
            super().__init__()
            self.layer = layer

        def forward(self, a, b, c):
            self.layer(a, b, c)

    # torchvision's feature extraction keeps its own ops' modules whole; a
    # cudcn module is kept whole the same way by naming it a leaf module.
    names = get_graph_node_names(Wrapper(_layer()),
                                 tracer_kwargs={"leaf_modules": [ct.DeformConv2d]})
    assert names[0] == names[1] == ["a", "b", "c", "layer"]
    # Traced through, the op itself is one node next to the parameters.
    names = get_graph_node_names(Wrapper(_layer()))
    assert [n for n in names[0] if "deform_conv2d" in n] == ["layer.deform_conv2d"]


@pytest.mark.xfail(strict=True, raises=RuntimeError,
                   reason="cudcn's modules are not TorchScript-able; torch.compile and "
                          "torch.export cover graph capture")
def test_forward_scriptability():
    torch.jit.script(ct.DeformConv2d(in_channels=8, out_channels=8, kernel_size=3))


# --- TestRoIAlign (aligned=True, the semantics of mmcv's DeformRoIPool) -------------

ROIS_10x10 = [[0, 0, 0, 9, 9], [0, 0, 5, 4, 9], [0, 5, 5, 9, 9], [1, 0, 0, 9, 9]]
ROIS_5x5 = [[0, 0, 0, 4, 4], [0, 0, 2, 3, 4], [0, 2, 2, 4, 4]]


@pytest.fixture(params=[False, True], ids=["default", "deterministic"])
def deterministic(request):
    previous = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(request.param)
    yield request.param
    torch.use_deterministic_algorithms(previous)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("contiguous", [True, False], ids=["contiguous", "strided"])
def test_roi_align_forward(contiguous, dtype, deterministic):
    g = torch.Generator().manual_seed(1)
    x = torch.rand(2, 50, 10, 10, generator=g, dtype=dtype)
    if not contiguous:
        x = x.permute(0, 1, 3, 2)
    rois = torch.tensor(ROIS_10x10, dtype=dtype)
    # torchvision's adaptive sampling_ratio is -1; mmcv's (and cudcn's) is 0.
    y = ct.deform_roi_pool(x, rois, None, 5, 1.0, 0)
    assert y.dtype == x.dtype
    expected = torchvision.ops.roi_align(x, rois, 5, 1.0, -1, aligned=True)
    torch.testing.assert_close(y, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("seed", range(10))
@pytest.mark.parametrize("contiguous", [True, False], ids=["contiguous", "strided"])
def test_roi_align_backward(seed, contiguous):
    torch.manual_seed(seed)
    x = torch.rand(1, 8, 5, 5, dtype=DTYPE, requires_grad=True)
    if not contiguous:
        x = x.permute(0, 1, 3, 2)
    rois = torch.tensor(ROIS_5x5, dtype=DTYPE)

    def pool(z):
        return ct.deform_roi_pool(z, rois, None, 2, 1.0, 1)

    # torchvision checks the full Jacobian; the fast (projected) check plus
    # the exact comparison with torchvision's gradient below keep this cheap.
    assert torch.autograd.gradcheck(pool, (x,), atol=1e-5, fast_mode=True)
    (expected,) = torch.autograd.grad(
        torchvision.ops.roi_align(x, rois, 2, 1.0, 1, aligned=True).sum(), x)
    previous = torch.are_deterministic_algorithms_enabled()
    try:
        for deterministic in (False, True):
            torch.use_deterministic_algorithms(deterministic)
            (g,) = torch.autograd.grad(pool(x).sum(), x)
            torch.testing.assert_close(g, expected, rtol=1e-12, atol=1e-12)
    finally:
        torch.use_deterministic_algorithms(previous)


def test_roi_align_fx_trace():
    pool = ct.DeformRoIPool(5, spatial_scale=1.0)
    traced = torch.fx.symbolic_trace(pool)
    x = torch.rand(2, 50, 5, 5)
    rois = torch.tensor(ROIS_10x10, dtype=torch.float32)  # boxes past the 5 x 5 map
    y = pool(x, rois)
    assert y.dtype == x.dtype
    torch.testing.assert_close(traced(x, rois), y, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(y, torchvision.ops.roi_align(x, rois, 5, 1.0, -1, aligned=True),
                               rtol=1e-5, atol=1e-5)


def test_roi_align_opcheck():
    x = torch.rand(2, 8, 10, 10, dtype=DTYPE, requires_grad=True)
    rois = torch.tensor(ROIS_10x10, dtype=DTYPE)
    torch.library.opcheck(torch.ops.cudcn.deform_roi_pool.default,
                          (x, rois, None, None, [5, 5], 1.0, 0, 0.1))


def test_roi_align_boxes_shape():
    # torchvision asserts (AssertionError); cudcn raises its argument error,
    # which is also a RuntimeError.
    a = torch.linspace(1, 8 * 8, 8 * 8).reshape(1, 1, 8, 8)
    with pytest.raises(ValueError, match="rois"):
        ct.deform_roi_pool(a, torch.tensor([[0, 0, 3, 3]], dtype=a.dtype), output_size=(2, 2))
