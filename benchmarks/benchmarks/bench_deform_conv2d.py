"""deform_conv2d forward and backward at ResNet stage shapes."""

import numpy as np

import cudcn
from cudcn.testing import deform_conv2d_inputs

from .common import BACKENDS, DTYPES, array_module, synchronize

# (batch, channels, size), 3x3 with padding 1: ResNet-50 stages 2-4 at 224, and conv5 at 800.
SHAPES = {"N2-C64-56": (2, 64, 56), "N1-C128-28": (1, 128, 28), "N4-C256-14": (4, 256, 14)}


class DeformConv2d:
    params = (list(SHAPES), BACKENDS, DTYPES)
    param_names = ("shape", "backend", "dtype")

    def setup(self, shape, backend, dtype):
        self.xp = array_module(backend)
        batch, channels, size = SHAPES[shape]
        self.args = deform_conv2d_inputs(batch=batch, in_channels=channels,
                                         out_channels=channels, size=size,
                                         dtype=np.dtype(dtype), offset_scale=1.0, xp=self.xp)
        # Compiles the kernels here, never inside a timed call.
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
