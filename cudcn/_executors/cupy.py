"""GPU executor: the kernels as a CuPy RawModule, launched on the current stream.

CuPy passes NumPy scalars with their exact C type, and the launch description
made every scalar argument one; arrays are checked there for dtype and layout.
"""

import cupy

from .. import _gpu_build, _kernels


@cupy.memoize(for_each_device=True)
def _module(source):
    return cupy.RawModule(
        code=_gpu_build.source_text(source),
        options=_gpu_build.options(),
        name_expressions=_gpu_build.name_expressions(source),
    )


def run(launch):
    arrays = [a for a in launch.args if isinstance(a, cupy.ndarray)]
    device = arrays[0].device
    if any(a.device != device for a in arrays):
        raise ValueError("all arrays of one launch must be on one device")
    with device:
        kernel = _module(launch.kernel.source).get_function(
            _kernels.instantiation(launch.kernel, launch.scalar, launch.index)
        )
        # No stream argument: CuPy launches on the device's current stream.
        kernel((launch.grid,), (launch.block,), launch.args)
