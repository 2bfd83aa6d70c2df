"""``cudcn check``: every op, forward and backward, on every backend and dtype
available here, against the float64 references.

Forward: the largest absolute difference from the reference, relative to the
reference's largest magnitude. Backward: for each gradient, the derivative
along a random direction against central finite differences of the float64
reference, relative to its magnitude. Inputs keep sampling points away from
the kinks of the bilinear weights, where finite differences do not apply.
"""

import dataclasses

import numpy as np

from .. import _kernels, reference
from ..testing import (dcnv3_inputs, deform_conv2d_inputs, deform_psroi_pool_inputs,
                       deform_roi_pool_inputs, ms_deform_attn_inputs)

TOLERANCE = {"float64": 1e-7, "float32": 2e-3, "float16": 3e-2, "bfloat16": 1e-1}


@dataclasses.dataclass
class Row:
    op: str
    what: str
    backend: str
    dtype: str
    error: float
    tolerance: float

    @property
    def ok(self):
        return bool(np.isfinite(self.error) and self.error <= self.tolerance)


def _cases():
    conv = deform_conv2d_inputs(batch=2, in_channels=4, out_channels=4, groups=2,
                                offset_groups=2, size=(7, 6), away_from_kinks=True, seed=1)
    roi = deform_roi_pool_inputs(rois=4, mask=True, seed=2)
    ps = deform_psroi_pool_inputs(rois=4, seed=3)
    msda = ms_deform_attn_inputs(outside=0, away_from_kinks=True, seed=4)
    dcn = dict(size=(7, 6), kernel=(3, 3), padding=(1, 2), groups=2, group_channels=3,
               offset_scale=0.8, away_from_kinks=True)
    import cudcn

    return [
        ("deform_conv2d", cudcn.deform_conv2d, cudcn.deform_conv2d_backward,
         reference.deform_conv2d, conv, ("input", "offset", "weight", "bias", "mask")),
        ("deform_roi_pool", cudcn.deform_roi_pool, cudcn.deform_roi_pool_backward,
         reference.deform_roi_pool, roi, ("input", "offset", "mask")),
        ("deform_psroi_pool", cudcn.deform_psroi_pool, cudcn.deform_psroi_pool_backward,
         reference.deform_psroi_pool, ps, ("input", "offset")),
        ("ms_deform_attn", cudcn.ms_deform_attn, cudcn.ms_deform_attn_backward,
         reference.ms_deform_attn, msda, ("value", "sampling_locations", "attention_weights")),
        ("dcnv3", cudcn.dcnv3, cudcn.dcnv3_backward, reference.dcnv3,
         dcnv3_inputs(**dcn, seed=5), ("input", "offset", "mask")),
        ("dcnv4", cudcn.dcnv4, cudcn.dcnv4_backward, reference.dcnv4,
         dcnv3_inputs(**dcn, packed=True, seed=6), ("input", "offset_mask")),
    ]


def _backends():
    found = [("cpu", np, _kernels.CPU_DTYPES)]
    try:
        import cupy

        if cupy.cuda.runtime.getDeviceCount() > 0:
            dtypes = ["float32", "float64", "float16"]
            try:
                import ml_dtypes

                cupy.zeros(1, ml_dtypes.bfloat16)
                dtypes.append("bfloat16")
            except Exception:  # no bfloat16 arrays in this CuPy
                pass
            found.append(("gpu", cupy, tuple(dtypes)))
    except Exception:  # no CuPy, driver or device
        pass
    return found


def _is_float_operand(name, value):
    """The arrays an op computes in the call's dtype: floats but RoIs
    (integer tables, such as ms_deform_attn's level sizes, stay as they are)."""
    return isinstance(value, np.ndarray) and value.dtype.kind == "f" and name != "rois"


def _convert(args, xp, dtype):
    out = {}
    for k, v in args.items():
        if isinstance(v, np.ndarray):
            out[k] = xp.asarray(v).astype(dtype) if _is_float_operand(k, v) else xp.asarray(v)
        else:
            out[k] = v
    return out


def _host(a):
    a = a.get() if hasattr(a, "get") else a
    return np.asarray(a, dtype=np.float64)


def _directional_derivatives(ref, args, grad_output, directions, eps=1e-6):
    """<grad_output, ref(args)> differentiated along each direction, by
    central finite differences in float64."""
    def loss(a):
        return float(np.sum(ref(**a) * grad_output))

    return {g: (loss(dict(args, **{g: args[g] + eps * d}))
                - loss(dict(args, **{g: args[g] - eps * d}))) / (2 * eps)
            for g, d in directions.items()}


def run():
    rows = []
    rng = np.random.default_rng(0)
    for name, forward, backward, ref, args, grads in _cases():
        grad_output = rng.standard_normal(ref(**args).shape)
        directions = {g: rng.standard_normal(args[g].shape) for g in grads}
        numeric_by_dtype = {}
        for backend, xp, dtypes in _backends():
            for dtype_name in dtypes:
                dtype = np.dtype(dtype_name) if dtype_name != "bfloat16" else __import__(
                    "ml_dtypes").bfloat16
                tol = TOLERANCE[dtype_name]
                a = _convert(args, xp, dtype)
                g_out = xp.asarray(grad_output).astype(dtype)
                # The reference of the rounded inputs: the op is judged, not the rounding.
                rounded = {k: _host(v) if _is_float_operand(k, args[k]) else args[k]
                           for k, v in a.items()}
                if dtype_name not in numeric_by_dtype:
                    numeric_by_dtype[dtype_name] = _directional_derivatives(
                        ref, rounded, _host(g_out), directions)
                numeric = numeric_by_dtype[dtype_name]
                want = ref(**rounded)
                try:
                    got = _host(forward(**a))
                    error = float(np.abs(got - want).max() / max(1.0, np.abs(want).max()))
                except Exception as exc:  # a failing op is a failing row, not a crash
                    error = float("inf")
                    print(f"{name} forward on {backend}/{dtype_name}: {exc!r}")
                rows.append(Row(name, "forward", backend, dtype_name, error, tol))
                try:
                    result = backward(g_out, **a)
                except Exception as exc:
                    print(f"{name} backward on {backend}/{dtype_name}: {exc!r}")
                    result = None
                for g in grads:
                    if result is None:
                        error = float("inf")
                    else:
                        analytic = float(np.sum(_host(getattr(result, g)) * directions[g]))
                        error = abs(analytic - numeric[g]) / max(1.0, abs(numeric[g]))
                    rows.append(Row(name, f"grad {g}", backend, dtype_name, error, tol))
    return rows


def show(out):
    rows = run()
    header = ("op", "pass", "backend", "dtype", "max error", "tolerance", "ok")
    body = [(r.op, r.what, r.backend, r.dtype, f"{r.error:.2e}", f"{r.tolerance:.0e}",
             "ok" if r.ok else "FAIL") for r in rows]
    widths = [max(len(x) for x in col) for col in zip(header, *body)]
    for line in (header, *body):
        print("  ".join(c.ljust(w) for c, w in zip(line, widths)), file=out)
    failed = [r for r in rows if not r.ok]
    print(f"\n{len(rows)} checks, {len(rows) - len(failed)} ok, {len(failed)} failed", file=out)
    return 1 if failed else 0
