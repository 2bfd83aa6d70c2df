"""GPU executor: the kernels as a CuPy RawModule, launched on the current stream.

CuPy passes NumPy scalars with their exact C type, and the launch description
made every scalar argument one; arrays are checked there for dtype and layout.
The launch description plans for the current device: its model and each
kernel's registers come from the driver here.
"""

import cupy

from .. import _device, _gpu_build, _kernels, _launch


@cupy.memoize(for_each_device=True)
def _module(source):
    return cupy.RawModule(
        code=_gpu_build.source_text(source),
        options=_gpu_build.options(),
        name_expressions=_gpu_build.name_expressions(source),
    )


def _function(kernel, scalar, index):
    return _module(kernel.source).get_function(_kernels.instantiation(kernel, scalar, index))


def registers(kernel, scalar, index):
    """Registers per thread of one instantiation on the current device."""
    return _function(kernel, scalar, index).num_regs


@cupy.memoize(for_each_device=True)
def current_target():
    """The current device as the launch description plans for it."""
    props = cupy.cuda.runtime.getDeviceProperties(cupy.cuda.Device().id)
    name = props["name"].decode() if isinstance(props["name"], bytes) else str(props["name"])
    device = _device.Device(
        name=name, sms=props["multiProcessorCount"],
        max_threads_per_sm=props["maxThreadsPerMultiProcessor"],
        max_blocks_per_sm=props["maxBlocksPerMultiProcessor"],
        registers_per_sm=props["regsPerMultiprocessor"],
    )
    return _launch.Target("gpu", device, registers)


def run(launch):
    arrays = [a for a in launch.args if isinstance(a, cupy.ndarray)]
    device = arrays[0].device
    if any(a.device != device for a in arrays):
        raise ValueError("all arrays of one launch must be on one device")
    with device:
        kernel = _function(launch.kernel, launch.scalar, launch.index)
        # No stream argument: CuPy launches on the device's current stream.
        kernel((launch.grid,), (launch.block,), launch.args)
