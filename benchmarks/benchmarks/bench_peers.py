"""cudcn against its peers, as ratios measured side by side in one process.

Each track_* records cudcn's time over the peer's (its unit reads "cudcn /
peer"): the median of the ratios of interleaved rounds (see interleave.py).
0.125 means 8x faster than the peer; as for time_* benchmarks, a rise is a
regression. cudcn runs through the torch
adapter on the same float32 tensors as the peer (issue 12's measurement).
Peers: torchvision's deform_conv2d / roi_align / ps_roi_align, a dense
F.conv2d of the same shape (the floor a deformable conv is compared with), and
ONNX Runtime's CPU DeformConv where onnxruntime and onnx are installed.
"""

try:
    import torch  # noqa: F401  (first: cudcn's kernels then share torch's OpenMP runtime)
except ImportError:  # setup skips every benchmark here
    pass

from . import onnxruntime_peer, torch_side, workloads
from .common import BACKENDS, Sampling, array_module, setup_once, synchronize
from .interleave import ratio_samples, unit


class _Contest(Sampling):
    """float32 tensors for cudcn's adapter and the peers, and the calls to time."""

    timeout = 300

    def prepare(self, backend, args):
        torch_side.require(backend, "float32")
        self.torch = torch_side.import_torch()
        self.tv = torch_side.import_torchvision()
        self.ours = torch_side.adapter()
        self.where = torch_side.device(backend)
        self.backend, self.args = backend, args
        names = torch_side.float_tensors(args)
        self.inputs = torch_side.tensors(args, self.where, "float32", grad=names)
        self.leaves = [self.inputs[n] for n in names if self.inputs[n] is not None]

    def timed(self, call):
        """``call`` under no_grad, waiting for the device."""

        def run():
            with self.torch.no_grad():
                call()
            torch_side.synchronize(self.where)

        return run

    def timed_with_backward(self, call):
        """``call`` and a backward pass into every leaf, waiting for the device."""

        def run():
            torch_side.backward(call(), self.leaves)
            torch_side.synchronize(self.where)

        return run


class DeformConv2dVsPeers(_Contest):
    params = (list(workloads.SHAPES), list(BACKENDS))
    param_names = ("shape", "backend")

    @setup_once
    def setup(self, shape, backend):
        self.shape = shape
        self.prepare(backend, workloads.deform_conv2d_args(shape, "float32"))

    def _cudcn(self):
        return self.ours.deform_conv2d(**self.inputs)

    def _torchvision(self):
        t = self.inputs
        return self.tv.ops.deform_conv2d(t["input"], t["offset"], t["weight"], t["bias"],
                                         stride=t["stride"], padding=t["padding"],
                                         dilation=t["dilation"], mask=t["mask"])

    @unit("cudcn / torchvision")
    def track_forward_vs_torchvision(self, shape, backend):
        return ratio_samples(self.timed(self._cudcn), self.timed(self._torchvision))

    @unit("cudcn / torchvision")
    def track_forward_backward_vs_torchvision(self, shape, backend):
        return ratio_samples(self.timed_with_backward(self._cudcn),
                                self.timed_with_backward(self._torchvision))

    @unit("cudcn / F.conv2d")
    def track_forward_vs_conv2d(self, shape, backend):
        t = self.inputs
        conv2d = self.torch.nn.functional.conv2d

        def dense():
            return conv2d(t["input"], t["weight"], t["bias"], stride=t["stride"],
                          padding=t["padding"], dilation=t["dilation"])

        return ratio_samples(self.timed(self._cudcn), self.timed(dense))

    @unit("cudcn / ONNX Runtime")
    def track_forward_vs_onnxruntime(self, shape, backend):
        if backend != "cpu":
            raise NotImplementedError("ONNX Runtime is compared on the CPU")
        session, feed = onnxruntime_peer.deform_conv_session(self.args)
        return ratio_samples(self.timed(self._cudcn), lambda: session.run(None, feed))

    @unit("adapter / NumPy API")
    def track_forward_adapter_vs_numpy_api(self, shape, backend):
        import cudcn

        xp = array_module(backend)
        arrays = workloads.deform_conv2d_args(shape, "float32", xp)

        def array_api():
            cudcn.deform_conv2d(**arrays)
            synchronize(xp)

        return ratio_samples(self.timed(self._cudcn), array_api)


class DeformRoIPoolVsRoIAlign(_Contest):
    """Without offsets deform_roi_pool computes torchvision's roi_align(aligned=True);
    with offsets and mask it does more, and the ratio says what that costs."""

    params = (list(BACKENDS), ["no-offset", "offset-mask"])
    param_names = ("backend", "variant")

    @setup_once
    def setup(self, backend, variant):
        self.prepare(backend, workloads.deform_roi_pool_args(variant, "float32"))

    def _cudcn(self):
        return self.ours.deform_roi_pool(**self.inputs)

    def _roi_align(self):
        t = self.inputs
        return self.tv.ops.roi_align(t["input"], t["rois"], output_size=t["output_size"],
                                     spatial_scale=t["spatial_scale"],
                                     sampling_ratio=t["sampling_ratio"], aligned=True)

    @unit("cudcn / roi_align")
    def track_forward_vs_roi_align(self, backend, variant):
        return ratio_samples(self.timed(self._cudcn), self.timed(self._roi_align))

    @unit("cudcn / roi_align")
    def track_forward_backward_vs_roi_align(self, backend, variant):
        return ratio_samples(self.timed_with_backward(self._cudcn),
                                self.timed_with_backward(self._roi_align))


class DeformPSRoIPoolVsPSRoIAlign(_Contest):
    """deform_psroi_pool without offsets against torchvision's ps_roi_align with
    the same 4x4 samples per bin (R-FCN's position-sensitive pooling)."""

    params = (list(BACKENDS),)
    param_names = ("backend",)

    @setup_once
    def setup(self, backend):
        self.prepare(backend, workloads.deform_psroi_pool_args("float32", offset=False))

    def _cudcn(self):
        return self.ours.deform_psroi_pool(**self.inputs)

    def _ps_roi_align(self):
        t = self.inputs
        return self.tv.ops.ps_roi_align(t["input"], t["rois"], output_size=t["pooled_size"],
                                        spatial_scale=t["spatial_scale"],
                                        sampling_ratio=t["sample_per_part"])

    @unit("cudcn / ps_roi_align")
    def track_forward_vs_ps_roi_align(self, backend):
        return ratio_samples(self.timed(self._cudcn), self.timed(self._ps_roi_align))

    @unit("cudcn / ps_roi_align")
    def track_forward_backward_vs_ps_roi_align(self, backend):
        return ratio_samples(self.timed_with_backward(self._cudcn),
                                self.timed_with_backward(self._ps_roi_align))


class MSDeformAttnVsGridSample(_Contest):
    """ms_deform_attn against the grid_sample path that mmcv, transformers and
    InternImage run without a kernel (cudcn.testing.grid_sample_ms_deform_attn)."""

    params = (list(workloads.MSDA_QUERIES), list(BACKENDS))
    param_names = ("queries", "backend")

    @setup_once
    def setup(self, queries, backend):
        try:
            from cudcn.testing import grid_sample_ms_deform_attn
        except ImportError:
            raise NotImplementedError("this build has no ms_deform_attn") from None
        self.grid_sample = grid_sample_ms_deform_attn
        self.prepare(backend, workloads.ms_deform_attn_args(queries, "float32"))

    def _cudcn(self):
        t = self.inputs
        return self.ours.ms_deform_attn(t["value"], t["spatial_shapes"], t["level_start_index"],
                                        t["sampling_locations"], t["attention_weights"])

    def _grid_sample(self):
        t = self.inputs
        return self.grid_sample(t["value"], t["spatial_shapes"], t["sampling_locations"],
                                t["attention_weights"])

    @unit("cudcn / grid_sample")
    def track_forward_vs_grid_sample(self, queries, backend):
        return ratio_samples(self.timed(self._cudcn), self.timed(self._grid_sample))

    @unit("cudcn / grid_sample")
    def track_forward_backward_vs_grid_sample(self, queries, backend):
        return ratio_samples(self.timed_with_backward(self._cudcn),
                             self.timed_with_backward(self._grid_sample))


class DCNv3VsGridSample(_Contest):
    """dcnv3 against the grid_sample path InternImage runs without its kernel
    (dcnv3_core_pytorch; cudcn.testing.grid_sample_dcnv3)."""

    params = (list(workloads.DCNV3_STAGES), list(BACKENDS))
    param_names = ("stage", "backend")

    @setup_once
    def setup(self, stage, backend):
        try:
            from cudcn.testing import grid_sample_dcnv3
        except ImportError:
            raise NotImplementedError("this build has no dcnv3") from None
        self.grid_sample = grid_sample_dcnv3
        self.prepare(backend, workloads.dcnv3_args(stage, "float32"))

    def _cudcn(self):
        return self.ours.dcnv3(**self.inputs)

    def _grid_sample(self):
        return self.grid_sample(**self.inputs)

    @unit("cudcn / grid_sample")
    def track_forward_vs_grid_sample(self, stage, backend):
        return ratio_samples(self.timed(self._cudcn), self.timed(self._grid_sample))

    @unit("cudcn / grid_sample")
    def track_forward_backward_vs_grid_sample(self, stage, backend):
        return ratio_samples(self.timed_with_backward(self._cudcn),
                             self.timed_with_backward(self._grid_sample))
