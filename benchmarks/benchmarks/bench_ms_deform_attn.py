"""ms_deform_attn through the NumPy/CuPy API: forward, backward and peak
memory of a 512x512 Deformable DETR's encoder and decoder attention, per
backend and dtype."""

import cudcn

from . import workloads
from .common import (BACKENDS, DTYPES, Sampling, array_module, numpy_dtype, require,
                     setup_once, synchronize)


class MSDeformAttn(Sampling):
    params = (list(BACKENDS), list(DTYPES), list(workloads.MSDA_QUERIES))
    param_names = ("backend", "dtype", "queries")
    timeout = 180

    @setup_once
    def setup(self, backend, dtype, queries):
        require(backend, dtype)
        if not hasattr(cudcn, "ms_deform_attn"):
            raise NotImplementedError("this build has no ms_deform_attn")
        self.xp = array_module(backend)
        self.args = workloads.ms_deform_attn_args(queries, numpy_dtype(dtype), self.xp)
        self.out = cudcn.ms_deform_attn(**self.args)
        cudcn.ms_deform_attn_backward(self.out, **self.args)
        synchronize(self.xp)

    def time_forward(self, backend, dtype, queries):
        cudcn.ms_deform_attn(**self.args)
        synchronize(self.xp)

    def time_backward(self, backend, dtype, queries):
        cudcn.ms_deform_attn_backward(self.out, **self.args)
        synchronize(self.xp)

    def peakmem_forward_backward(self, backend, dtype, queries):
        cudcn.ms_deform_attn_backward(cudcn.ms_deform_attn(**self.args), **self.args)
