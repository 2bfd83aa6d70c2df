"""cudcn's asv suite (see benchmarks/README.md).

Every benchmark process imports this package first. Under asv, this machine's
OpenBLAS overrides are dropped here, before NumPy loads its BLAS: issue 12
measures without them, and current NumPy builds pick the right kernel
themselves. The modules that time torch code import torch before anything
imports cudcn, as in a PyTorch user's process; the NumPy-API modules leave
torch out, as in a NumPy user's.
"""

import os

if os.environ.get("ASV") == "true":  # set by asv in the processes it starts, never in pytest
    for _name in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE"):
        os.environ.pop(_name, None)
