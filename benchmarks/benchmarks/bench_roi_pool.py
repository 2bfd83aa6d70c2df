"""deform_roi_pool and deform_psroi_pool through the NumPy/CuPy API: forward,
backward and peak memory of 512 RoIs on a stride-16 map, per backend and dtype."""

import cudcn

from . import workloads
from .common import (BACKENDS, DTYPES, Sampling, array_module, numpy_dtype, require,
                     setup_once, synchronize)


class DeformRoIPool(Sampling):
    params = (list(BACKENDS), list(DTYPES), list(workloads.ROI_VARIANTS))
    param_names = ("backend", "dtype", "variant")
    timeout = 180

    @setup_once
    def setup(self, backend, dtype, variant):
        require(backend, dtype)
        self.xp = array_module(backend)
        self.args = workloads.deform_roi_pool_args(variant, numpy_dtype(dtype), self.xp)
        self.out = cudcn.deform_roi_pool(**self.args)
        cudcn.deform_roi_pool_backward(self.out, **self.args)
        synchronize(self.xp)

    def time_forward(self, backend, dtype, variant):
        cudcn.deform_roi_pool(**self.args)
        synchronize(self.xp)

    def time_backward(self, backend, dtype, variant):
        cudcn.deform_roi_pool_backward(self.out, **self.args)
        synchronize(self.xp)

    def peakmem_forward_backward(self, backend, dtype, variant):
        cudcn.deform_roi_pool_backward(cudcn.deform_roi_pool(**self.args), **self.args)


class DeformPSRoIPool(Sampling):
    params = (list(BACKENDS), list(DTYPES))
    param_names = ("backend", "dtype")
    timeout = 180

    @setup_once
    def setup(self, backend, dtype):
        require(backend, dtype)
        self.xp = array_module(backend)
        self.args = workloads.deform_psroi_pool_args(numpy_dtype(dtype), self.xp)
        self.out = cudcn.deform_psroi_pool(**self.args)
        cudcn.deform_psroi_pool_backward(self.out, **self.args)
        synchronize(self.xp)

    def time_forward(self, backend, dtype):
        cudcn.deform_psroi_pool(**self.args)
        synchronize(self.xp)

    def time_backward(self, backend, dtype):
        cudcn.deform_psroi_pool_backward(self.out, **self.args)
        synchronize(self.xp)

    def peakmem_forward_backward(self, backend, dtype):
        cudcn.deform_psroi_pool_backward(cudcn.deform_psroi_pool(**self.args), **self.args)
