"""deform_conv2d through the NumPy/CuPy API: forward, backward (every
gradient) and peak memory, at issue 12's shapes, per backend and dtype."""

import cudcn

from . import workloads
from .common import (BACKENDS, DTYPES, Sampling, array_module, numpy_dtype, require,
                     setup_once, synchronize)


class DeformConv2d(Sampling):
    params = (list(workloads.SHAPES), list(BACKENDS), list(DTYPES))
    param_names = ("shape", "backend", "dtype")
    timeout = 180

    @setup_once
    def setup(self, shape, backend, dtype):
        require(backend, dtype)
        self.xp = array_module(backend)
        self.args = workloads.deform_conv2d_args(shape, numpy_dtype(dtype), self.xp)
        # Loads (or compiles) the kernels here, never inside a timed call.
        self.out = cudcn.deform_conv2d(**self.args)
        cudcn.deform_conv2d_backward(self.out, **self.args)
        synchronize(self.xp)

    def time_forward(self, shape, backend, dtype):
        cudcn.deform_conv2d(**self.args)
        synchronize(self.xp)

    def time_backward(self, shape, backend, dtype):
        cudcn.deform_conv2d_backward(self.out, **self.args)
        synchronize(self.xp)

    def peakmem_forward_backward(self, shape, backend, dtype):
        cudcn.deform_conv2d_backward(cudcn.deform_conv2d(**self.args), **self.args)
