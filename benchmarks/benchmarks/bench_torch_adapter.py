"""The ops as a PyTorch user calls them: ``cudcn.adapters.torch`` on torch
tensors (torch imported first; see __init__), forward under no_grad and
forward+backward through autograd, per backend and dtype."""

try:
    import torch  # noqa: F401  (first: cudcn's kernels then share torch's OpenMP runtime)
except ImportError:  # setup skips every benchmark here
    pass

from . import torch_side, workloads
from .common import BACKENDS, DTYPES, Sampling, setup_once


class _AdapterBenchmark(Sampling):
    """Builds the op's tensors and the two timed calls; subclasses name the op."""

    timeout = 180

    def prepare(self, backend, dtype, function_name, args):
        torch_side.require(backend, dtype)
        torch = torch_side.import_torch()
        function = getattr(torch_side.adapter(), function_name)
        self.where = torch_side.device(backend)
        self.grad_names = torch_side.float_tensors(args)
        self.inputs = torch_side.tensors(args, self.where, dtype, grad=self.grad_names)
        self.leaves = [self.inputs[n] for n in self.grad_names if self.inputs[n] is not None]
        self.no_grad = torch.no_grad

        def forward():
            with self.no_grad():
                return function(**self.inputs)

        self.function, self.call = function, forward
        torch_side.skip_unsupported_dtype(self.forward_backward, dtype)
        torch_side.synchronize(self.where)

    def forward_backward(self):
        torch_side.backward(self.function(**self.inputs), self.leaves)

    def time_forward(self, *params):
        self.call()
        torch_side.synchronize(self.where)

    def time_forward_backward(self, *params):
        self.forward_backward()
        torch_side.synchronize(self.where)


class TorchDeformConv2d(_AdapterBenchmark):
    params = (list(workloads.SHAPES), list(BACKENDS), list(DTYPES))
    param_names = ("shape", "backend", "dtype")

    @setup_once
    def setup(self, shape, backend, dtype):
        self.prepare(backend, dtype, "deform_conv2d",
                     workloads.deform_conv2d_args(shape, "float32"))


class TorchDeformRoIPool(_AdapterBenchmark):
    params = (list(BACKENDS), list(DTYPES), list(workloads.ROI_VARIANTS))
    param_names = ("backend", "dtype", "variant")

    @setup_once
    def setup(self, backend, dtype, variant):
        self.prepare(backend, dtype, "deform_roi_pool",
                     workloads.deform_roi_pool_args(variant, "float32"))


class TorchDeformPSRoIPool(_AdapterBenchmark):
    params = (list(BACKENDS), list(DTYPES))
    param_names = ("backend", "dtype")

    @setup_once
    def setup(self, backend, dtype):
        self.prepare(backend, dtype, "deform_psroi_pool",
                     workloads.deform_psroi_pool_args("float32"))
