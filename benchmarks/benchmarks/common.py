"""What every cudcn benchmark shares: backends, dtypes, synchronisation."""

import numpy as np

BACKENDS = ["cpu", "gpu"]
DTYPES = ["float32", "float64"]


def array_module(backend):
    """numpy, or cupy when a GPU is there; NotImplementedError makes asv skip."""
    if backend == "cpu":
        return np
    try:
        import cupy

        if cupy.cuda.runtime.getDeviceCount() == 0:
            raise NotImplementedError("no CUDA device")
        return cupy
    except Exception as exc:  # no CuPy, no driver or no device
        raise NotImplementedError(f"GPU backend unavailable: {exc}") from None


def synchronize(xp):
    if xp is not np:
        xp.cuda.get_current_stream().synchronize()
