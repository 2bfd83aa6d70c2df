"""float16 and bfloat16 on the CPU backend: the same instantiations the GPU runs.

The shim's conversions are checked bit for bit against NumPy and ml_dtypes.
Every op, forward and every gradient, under both strategies, is compared with
float64 computed on the same (already rounded) inputs, within element-wise
bounds derived from the unit roundoff u of the dtype (2^-11 for float16,
2^-8 for bfloat16):

- a result is rounded at most twice in 16 bits: once in an intermediate
  buffer (deform_conv2d's columns or grad columns: every entry, so every
  term, within a factor 1 +- u) and once when stored; everything else runs
  in float32, whose chains of n <= 1024 products and sums err by at most
  g = n * 2^-24 <= 2^-14 of the sum of the terms' magnitudes;
- so |result - exact| <= (u + g)(1 + u) * sum|terms| + u * |exact|, which is
  at most (u + 2g) * sum|terms| + u * |exact| for both dtypes (u^2 <= g/4),
  plus 2^-25 absolute below half's normal range; without an intermediate
  16-bit buffer (the RoI poolings) the first u drops out.

With non-negative inputs, weights, masks and output gradients every term of
the outputs and of the input, weight, bias and mask gradients is >= 0, so
sum|terms| = |exact| and the bound is relative. Offset gradients are sums of
differences of input values; their sum|terms| is bounded from the float64
inputs below. Offsets are multiples of 1/64 and RoIs sit on a dyadic grid, so
that every sampling position is exact in float32 as in float64: only values
are rounded.
"""

import ctypes
import pathlib
import subprocess

import ml_dtypes
import numpy as np
import pytest

import cudcn
from cudcn import _sources
from cudcn._executors import cpu

DTYPES = {"float16": np.dtype(np.float16), "bfloat16": np.dtype(ml_dtypes.bfloat16)}
UNIT_ROUNDOFF = {"float16": 2.0**-11, "bfloat16": 2.0**-8}
FLOAT32_CHAINS = 2.0**-14
SUBNORMAL = 2.0**-25


def assert_within(actual, exact, bound, what):
    actual = np.asarray(actual, dtype=np.float64)
    assert actual.shape == exact.shape, what
    excess = np.abs(actual - exact) - bound
    worst = np.unravel_index(np.argmax(excess), excess.shape) if excess.size else ()
    assert excess.size == 0 or excess.max() <= 0, (
        f"{what}: |error| {abs(actual - exact)[worst]:.3g} exceeds its bound "
        f"{bound[worst]:.3g} at {worst} (exact {exact[worst]:.6g})")


def _in_dtype(args, dtype):
    """The array arguments rounded to ``dtype`` (offsets to multiples of 1/64
    first), and the same values in float64."""
    args = dict(args, offset=None if args["offset"] is None else np.round(args["offset"] * 64) / 64)
    low = {k: v.astype(dtype) if isinstance(v, np.ndarray) else v for k, v in args.items()}
    exact = {k: v.astype(np.float64) if isinstance(v, np.ndarray) else v for k, v in low.items()}
    return low, exact


# --- the shim's conversions ---------------------------------------------------------------

@pytest.fixture(scope="module")
def shim(tmp_path_factory):
    """tests/shim_conversions.cpp, built like the kernels (compiler, flags, cpu_shim.h)."""
    library = tmp_path_factory.mktemp("shim") / "conversions.so"
    source = pathlib.Path(__file__).with_name("shim_conversions.cpp")
    subprocess.run([*cpu.compiler(), *cpu.CXXFLAGS, *cpu.extra_flags(),
                    f"-I{_sources.kernel_dir()}", str(source), "-o", str(library)],
                   check=True, env=cpu._compiler_env())
    return ctypes.CDLL(str(library))


def _convert(shim, name, values, out_dtype):
    values = np.ascontiguousarray(values)
    out = np.empty(values.shape, out_dtype)
    getattr(shim, name)(ctypes.c_void_p(values.ctypes.data), ctypes.c_void_p(out.ctypes.data),
                        ctypes.c_longlong(values.size))
    return out


@pytest.mark.parametrize("dtype_name, to_float", [("float16", "half_to_float"),
                                                  ("bfloat16", "bfloat16_to_float")])
def test_every_16_bit_pattern_widens_exactly(shim, dtype_name, to_float):
    bits = np.arange(2**16, dtype=np.uint16)
    ours = _convert(shim, to_float, bits, np.float32)
    expected = bits.view(DTYPES[dtype_name]).astype(np.float32)
    np.testing.assert_array_equal(ours.view(np.uint32), expected.view(np.uint32))


def _floats_to_round(dtype):
    """A dense sweep of float32 bit patterns, and around every finite value of
    ``dtype``: the midpoints to both neighbours (ties, exact in float32) and
    the floats just either side of them; subnormals, overflow, inf, NaN."""
    sweep = np.arange(0, 2**32, 1021, dtype=np.uint64).astype(np.uint32).view(np.float32)
    finite = np.arange(2**16, dtype=np.uint16).view(dtype).astype(np.float64)
    finite = np.unique(finite[np.isfinite(finite)])
    mids = ((finite[:-1] + finite[1:]) / 2).astype(np.float32)
    assert np.array_equal(mids.astype(np.float64), (finite[:-1] + finite[1:]) / 2)  # exact ties
    around = [mids, np.nextafter(mids, np.float32(np.inf)), np.nextafter(mids, np.float32(-np.inf))]
    tiny = np.arange(1, 4096, dtype=np.uint32).view(np.float32)  # float32 subnormals
    special = np.array([0.0, -0.0, 65504.0, 65519.996, 65520.0, -65520.0, 65536.0, 3.0e38,
                        np.inf, -np.inf, np.nan, -np.nan], dtype=np.float32)
    payload_nans = np.array([0x7f800001, 0xffc00123, 0x7fbfffff], dtype=np.uint32).view(np.float32)
    return np.concatenate([sweep, *around, tiny, -tiny, special, payload_nans])


@pytest.mark.parametrize("dtype_name, from_float", [("float16", "float_to_half"),
                                                    ("bfloat16", "float_to_bfloat16")])
def test_rounding_from_float_matches_numpy_and_ml_dtypes(shim, dtype_name, from_float):
    values = _floats_to_round(DTYPES[dtype_name])
    ours = _convert(shim, from_float, values, np.uint16)
    expected = values.astype(DTYPES[dtype_name]).view(np.uint16)
    nan = np.isnan(values)
    np.testing.assert_array_equal(ours[~nan], expected[~nan])
    # CUDA's conversions give the canonical NaN whatever the input NaN's bits.
    assert nan.sum() >= 4 and np.all(ours[nan] == 0x7fff)
