"""dcnv3 through the NumPy/CuPy API: forward, backward and peak memory at
InternImage-T's stages, per backend and dtype."""

import cudcn

from . import workloads
from .common import (BACKENDS, DTYPES, Sampling, array_module, numpy_dtype, require,
                     setup_once, synchronize)


class DCNv3(Sampling):
    params = (list(BACKENDS), list(DTYPES), list(workloads.DCNV3_STAGES))
    param_names = ("backend", "dtype", "stage")
    timeout = 180

    @setup_once
    def setup(self, backend, dtype, stage):
        require(backend, dtype)
        if not hasattr(cudcn, "dcnv3"):
            raise NotImplementedError("this build has no dcnv3")
        self.xp = array_module(backend)
        self.args = workloads.dcnv3_args(stage, numpy_dtype(dtype), self.xp)
        self.out = cudcn.dcnv3(**self.args)
        cudcn.dcnv3_backward(self.out, **self.args)
        synchronize(self.xp)

    def time_forward(self, backend, dtype, stage):
        cudcn.dcnv3(**self.args)
        synchronize(self.xp)

    def time_backward(self, backend, dtype, stage):
        cudcn.dcnv3_backward(self.out, **self.args)
        synchronize(self.xp)

    def peakmem_forward_backward(self, backend, dtype, stage):
        cudcn.dcnv3_backward(cudcn.dcnv3(**self.args), **self.args)
