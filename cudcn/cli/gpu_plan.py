"""``cudcn gpu-plan``: every launch the GPU path makes, counted against a GPU.

The ops run as usual, forward and backward, default and deterministic, with
the launch description planning for a GPU (``_launch.planning_for``): a
reference device's model (A100 or H100) with each kernel's registers from
an NVRTC compile for its architecture, or the current device. Every launch
is recorded as described, the same description the executors take, and
reported: threads, block, registers, the threads the device holds at once,
waves, a thread's serial iterations, estimated DRAM bytes, and the threads
the peer implementation (torchvision, mmcv) launches for the same work.

Without a GPU the CPU executor runs only the launches whose results steer
the plan (the entries the deterministic strategy sorts); the others are
recorded, not run, as their results do not change what is launched.
"""

import dataclasses
import functools
import hashlib
import json

import numpy as np

from .. import _device, _kernels, _launch, _sources
from ..testing import (dcnv3_inputs, deform_conv2d_inputs, deform_psroi_pool_inputs,
                       deform_roi_pool_inputs, ms_deform_attn_inputs)

# The asv suite's shapes: deform_conv2d at ResNet stages (N, C, H = W), 3x3,
# padding 1, with mask; 512 RoIs on a stride-16 map for the poolings.
CONV_SHAPES = ((2, 64, 56), (4, 256, 14), (1, 128, 28), (8, 256, 28))
ROI_MAP = (2, 256, 50, 68)
ROIS = 512
# Deformable DETR at a 512x512 image: four levels of the stride-8 to -64 maps,
# 8 heads of 32 channels, 4 points a level; the encoder's queries are the
# pixels of every level, the decoder's 300 objects.
MSDA_LEVELS = ((64, 64), (32, 32), (16, 16), (8, 8))
MSDA_QUERIES = (("encoder", 5440), ("decoder", 300))
# DCNv3 at InternImage-T's stages (batch 2, 3x3, padding 1, groups of 16
# channels); the last stage's 7x7 map is the smallest launch.
DCNV3_STAGES = ((56, 64, 4), (28, 128, 8), (14, 256, 16), (7, 512, 32))

# Their results steer later launches (what is sorted, how many entries).
STEERING = {_kernels.DEFORM_CONV2D_SCATTER_ENTRIES, _kernels.DEFORM_ROI_POOL_SCATTER_ENTRIES,
            _kernels.DEFORM_PSROI_POOL_SCATTER_ENTRIES, _kernels.MS_DEFORM_ATTN_SCATTER_ENTRIES,
            _kernels.DCNV3_SCATTER_ENTRIES}


@dataclasses.dataclass
class Row:
    op: str
    shape: str
    mode: str  # "default" or "deterministic"
    kernel: str
    threads: int
    block: int
    registers: int
    resident: int  # threads the device holds at once
    serial: int
    dram_bytes: int
    peer_threads: int
    auxiliary: bool

    @property
    def waves(self):
        return self.threads / self.resident

    @property
    def wanted_threads(self):
        """min(WAVES waves, the peer's threads): what a main launch must reach."""
        return min(_launch.WAVES * self.resident, self.peer_threads)

    @property
    def fills(self):
        return self.auxiliary or self.threads >= self.wanted_threads


# --- registers ---------------------------------------------------------------------------

def _cache_file(arch, dtype):
    from .._executors import cpu

    digest = hashlib.sha256(_sources.sources_digest().encode()).hexdigest()[:16]
    return cpu.cache_dir().parent / "registers" / f"{arch}-{dtype}-{digest}.json"


@functools.cache
def nvrtc_registers(arch, dtype):
    """{(kernel name, index type): registers} of every instantiation of
    ``dtype`` for ``arch``, from an NVRTC compile (cached on disk)."""
    from .. import _nvrtc
    from . import compile_check

    path = _cache_file(arch, dtype)
    if path.exists():
        return {tuple(k.split("|")): v for k, v in json.loads(path.read_text()).items()}
    majors = [m for m in sorted(_nvrtc.installed_majors(), reverse=True)
              if arch in compile_check.ARCHITECTURES[m]]
    if not majors:
        raise RuntimeError(f"no installed NVRTC compiles for {arch}: pip install "
                           "nvidia-cuda-nvrtc (CUDA 13) or nvidia-cuda-nvrtc-cu12")
    found = {}
    for source in _kernels.sources():
        for row in compile_check.compile_source(source, arch, majors[0], dtypes=(dtype,)):
            if not row.ok:
                raise RuntimeError(f"{row.kernel} {row.dtype} {row.index} {arch}: {row.error}")
            found[(row.kernel, row.index)] = row.registers
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"|".join(k): v for k, v in found.items()}))
    return found


def reference_target(arch, dtype="float32"):
    """A reference device of ``arch`` with its kernels' registers from NVRTC."""
    table = nvrtc_registers(arch, dtype)

    def registers(kernel, scalar, index):
        return table[(kernel.name.rsplit("::", 1)[-1], index)]

    return _launch.Target("gpu", _device.REFERENCE[arch], registers)


# --- the ops --------------------------------------------------------------------------------

def _cases(dtype, conv_shapes):
    import cudcn

    for n, c, size in conv_shapes:
        args = deform_conv2d_inputs(batch=n, in_channels=c, out_channels=c, size=size,
                                    dtype=dtype, offset_scale=1.0, seed=0)
        yield ("deform_conv2d", f"N={n} C={c} {size}x{size}", args, cudcn.deform_conv2d,
               cudcn.deform_conv2d_backward)
    batch, channels, h, w = ROI_MAP
    roi = deform_roi_pool_inputs(batch=batch, channels=channels, size=(h, w), rois=ROIS,
                                 output_size=7, spatial_scale=1 / 16, sampling_ratio=2,
                                 mask=True, dtype=dtype, seed=0)
    yield ("deform_roi_pool", f"K={ROIS} C={channels} {h}x{w} 7x7", roi, cudcn.deform_roi_pool,
           cudcn.deform_roi_pool_backward)
    ps = deform_psroi_pool_inputs(batch=batch, output_dim=21, group_size=7, pooled_size=7,
                                  num_classes=1, size=(h, w), rois=ROIS, spatial_scale=1 / 16,
                                  sample_per_part=4, trans_std=0.1, dtype=dtype, seed=0)
    yield ("deform_psroi_pool", f"K={ROIS} 21x7x7 {h}x{w} 7x7", ps, cudcn.deform_psroi_pool,
           cudcn.deform_psroi_pool_backward)
    for name, queries in MSDA_QUERIES:
        msda = ms_deform_attn_inputs(batch=1, queries=queries, heads=8, channels=32,
                                     shapes=MSDA_LEVELS, points=4, dtype=dtype, seed=0)
        yield ("ms_deform_attn", f"{name} Lq={queries} 8x32 L=4 P=4", msda,
               cudcn.ms_deform_attn, cudcn.ms_deform_attn_backward)
    for size, channels, groups in DCNV3_STAGES:
        dcn = dcnv3_inputs(batch=2, size=(size, size), groups=groups,
                           group_channels=channels // groups, dtype=dtype, seed=0)
        yield ("dcnv3", f"N=2 C={channels} G={groups} {size}x{size} 3x3", dcn, cudcn.dcnv3,
               cudcn.dcnv3_backward)


def plan(target, dtype="float32", conv_shapes=CONV_SHAPES, on_device=False):
    """Rows for every launch of every op, forward and backward, default and
    deterministic, as planned for ``target``. ``on_device``: the target is the
    current GPU and the ops run there on CuPy arrays."""
    rows = []
    real_run = _launch.run
    recorded = []

    def record(launch):
        recorded.append(launch)
        if on_device or launch.kernel in STEERING:
            real_run(launch)

    dtype = np.dtype(dtype)
    _launch.run = record
    try:
        # The GEMMs multiply the buffers of launches not run: any values.
        with _launch.planning_for(target), np.errstate(all="ignore"):
            for op, shape, args, forward, backward in _cases(dtype, conv_shapes):
                if on_device:
                    import cupy

                    args = {k: cupy.asarray(v) if isinstance(v, np.ndarray) else v
                            for k, v in args.items()}
                for mode in ("default", "deterministic"):
                    recorded.clear()
                    out = forward(**args)
                    backward(out, deterministic=mode == "deterministic", **args)
                    for launch in recorded:
                        rows.append(_row(op, shape, mode, launch, target))
    finally:
        _launch.run = real_run
    return rows


def _row(op, shape, mode, launch, target):
    n = launch.items
    work = launch.work or _launch.Work(0, 0, 0)
    return Row(op, shape, mode, launch.kernel.name.rsplit("::", 1)[-1], n, launch.block,
               target.registers(launch.kernel, launch.scalar, launch.index),
               target.resident_threads(launch.kernel, launch.scalar, launch.index),
               work.serial, work.dram_bytes, work.peer_threads, work.auxiliary)


# --- the report -----------------------------------------------------------------------------

def auxiliary_share(rows):
    """{(op, shape, mode): the auxiliary launches' share of the DRAM bytes}."""
    totals, aux = {}, {}
    for r in rows:
        key = (r.op, r.shape, r.mode)
        totals[key] = totals.get(key, 0) + r.dram_bytes
        aux[key] = aux.get(key, 0) + (r.dram_bytes if r.auxiliary else 0)
    return {k: aux[k] / totals[k] if totals[k] else 0.0 for k in totals}


def format_table(rows, device):
    header = ("op", "shape", "mode", "kernel", "threads", "block", "regs", "resident", "waves",
              "serial", "DRAM MB", "peer threads", "target", "status")
    body = []
    for r in rows:
        status = "aux" if r.auxiliary else ("ok" if r.fills else "UNDER")
        body.append((r.op, r.shape, r.mode, r.kernel, f"{r.threads:,}", str(r.block),
                     str(r.registers), f"{r.resident:,}", f"{r.waves:.2f}", str(r.serial),
                     f"{r.dram_bytes / 1e6:.1f}", f"{r.peer_threads:,}",
                     f"{r.wanted_threads:,}", status))
    widths = [max(len(x) for x in col) for col in zip(header, *body)]
    lines = [f"gpu-plan for {device}: every launch, forward then backward; target = "
             f"min({_launch.WAVES} waves, peer threads); aux = a precomputation or final "
             "reduction, not held to it", ""]
    lines += ["  ".join(c.ljust(w) for c, w in zip(line, widths)) for line in (header, *body)]
    under = [r for r in rows if not r.fills]
    too_serial = [r for r in rows if r.serial > _launch.MAX_SERIAL]
    shares = auxiliary_share(rows)
    lines.append("")
    lines.append(f"{len(rows)} launches: {len(under)} under their thread target, "
                 f"{len(too_serial)} over {_launch.MAX_SERIAL} serial iterations; auxiliary "
                 f"launches at most {100 * max(shares.values(), default=0):.1f}% of an op's "
                 "DRAM bytes")
    return "\n".join(lines)


def run(arch="sm_90", dtype="float32", conv_shapes=CONV_SHAPES, out=None):
    import sys

    out = out or sys.stdout
    if arch == "current":
        from .._executors import cupy as executor

        target = executor.current_target()
        rows = plan(target, dtype, conv_shapes, on_device=True)
        name = target.device.name
    else:
        target = reference_target(arch, dtype)
        rows = plan(target, dtype, conv_shapes)
        name = target.device.name
    print(format_table(rows, name), file=out)
    return rows


def parse_shape(text):
    """'N,C,S' -> (N, C, S) for a deform_conv2d shape (3x3, padding 1)."""
    parts = text.split(",")
    if len(parts) != 3 or not all(p.strip().isdigit() and int(p) > 0 for p in parts):
        raise ValueError(f"a shape is N,C,S with positive integers, got {text!r}")
    return tuple(int(p) for p in parts)

