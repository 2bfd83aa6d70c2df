"""deform_conv2d forward and backward at ResNet stage shapes (asv)."""

import numpy as np

import cudcn
from cudcn.testing import deform_conv2d_inputs

# (batch, channels, size): ResNet-50 stages 2 to 4 at a 224 input, and a small one.
SHAPES = {"N2-C64-56": (2, 64, 56), "N4-C256-14": (4, 256, 14), "N1-C128-28": (1, 128, 28)}


class DeformConv2dCPU:
    params = (list(SHAPES), ["float32", "float64"])
    param_names = ("shape", "dtype")

    def setup(self, shape, dtype):
        batch, channels, size = SHAPES[shape]
        self.args = deform_conv2d_inputs(batch=batch, in_channels=channels,
                                         out_channels=channels, size=size,
                                         dtype=np.dtype(dtype), offset_scale=1.0)
        # Compiles the CPU kernels here, never inside a timed call.
        self.out = cudcn.deform_conv2d(**self.args)

    def time_forward(self, shape, dtype):
        cudcn.deform_conv2d(**self.args)

    def time_backward(self, shape, dtype):
        cudcn.deform_conv2d_backward(self.out, **self.args)

    def peakmem_forward_backward(self, shape, dtype):
        cudcn.deform_conv2d_backward(cudcn.deform_conv2d(**self.args), **self.args)
