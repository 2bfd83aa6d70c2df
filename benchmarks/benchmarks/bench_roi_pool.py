"""deform_roi_pool and deform_psroi_pool: 512 RoIs on a stride-16 feature map."""

import numpy as np

import cudcn
from cudcn.testing import deform_psroi_pool_inputs, deform_roi_pool_inputs

from .common import BACKENDS, DTYPES, array_module, synchronize

# A 800x1088 image at stride 16.
MAP = (50, 68)


class DeformRoIPool:
    params = (BACKENDS, DTYPES)
    param_names = ("backend", "dtype")

    def setup(self, backend, dtype):
        self.xp = array_module(backend)
        self.args = deform_roi_pool_inputs(batch=2, channels=256, size=MAP, rois=512,
                                           output_size=7, spatial_scale=1 / 16,
                                           sampling_ratio=2, mask=True, dtype=np.dtype(dtype),
                                           xp=self.xp)
        self.out = cudcn.deform_roi_pool(**self.args)
        cudcn.deform_roi_pool_backward(self.out, **self.args)
        synchronize(self.xp)

    def time_forward(self, backend, dtype):
        cudcn.deform_roi_pool(**self.args)
        synchronize(self.xp)

    def time_backward(self, backend, dtype):
        cudcn.deform_roi_pool_backward(self.out, **self.args)
        synchronize(self.xp)

    def peakmem_forward_backward(self, backend, dtype):
        cudcn.deform_roi_pool_backward(cudcn.deform_roi_pool(**self.args), **self.args)


class DeformPSRoIPool:
    params = (BACKENDS, DTYPES)
    param_names = ("backend", "dtype")

    def setup(self, backend, dtype):
        self.xp = array_module(backend)
        # R-FCN: 21 classes' scores on a 7x7 position-sensitive grid.
        self.args = deform_psroi_pool_inputs(batch=2, output_dim=21, group_size=7,
                                             pooled_size=7, num_classes=1, size=MAP, rois=512,
                                             spatial_scale=1 / 16, sample_per_part=4,
                                             trans_std=0.1, dtype=np.dtype(dtype), xp=self.xp)
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
