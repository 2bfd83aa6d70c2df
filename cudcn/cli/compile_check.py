"""NVRTC-compile every GPU kernel instantiation, without a GPU.

Each kernel file is compiled once per architecture with the CuPy executor's
own options and name expressions; ptxas' verbose report gives registers and
spill bytes per instantiation.
"""

import dataclasses
import re

from .. import _gpu_build, _kernels

ARCHITECTURES = ("sm_75", "sm_80", "sm_90", "sm_100")


@dataclasses.dataclass
class Row:
    kernel: str
    dtype: str
    index: str
    arch: str
    registers: int = -1
    spill_stores: int = -1
    spill_loads: int = -1
    error: str = ""

    @property
    def ok(self):
        return not self.error and self.registers >= 0


def _check(result, what):
    from cuda.bindings import nvrtc

    err = result[0]
    if err != nvrtc.nvrtcResult.NVRTC_SUCCESS:
        raise RuntimeError(f"{what}: {nvrtc.nvrtcGetErrorString(err)[1].decode()}")
    return result[1:] if len(result) > 2 else (result[1] if len(result) == 2 else None)


def _log(nvrtc, prog):
    size = _check(nvrtc.nvrtcGetProgramLogSize(prog), "log size")
    buf = b" " * size
    _check(nvrtc.nvrtcGetProgramLog(prog, buf), "log")
    return buf.decode(errors="replace").rstrip("\x00 \n")


def parse_ptxas_log(log):
    """{mangled name: (registers, spill stores, spill loads)} from ptxas -v output."""
    found = {}
    current = None
    for line in log.splitlines():
        m = re.search(r"Compiling entry function '([^']+)'", line)
        if m:
            current = m.group(1)
            found[current] = [-1, -1, -1]
            continue
        if current is None:
            continue
        m = re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", line)
        if m:
            found[current][1:] = [int(m.group(1)), int(m.group(2))]
        m = re.search(r"Used (\d+) registers", line)
        if m:
            found[current][0] = int(m.group(1))
    return {name: tuple(v) for name, v in found.items()}


def compile_source(source, arch):
    """Compile one kernel file for one architecture; returns one Row per instantiation."""
    from cuda.bindings import nvrtc

    insts = _kernels.instantiations(source, _kernels.GPU_DTYPES)
    rows = [Row(k.name.rsplit("::", 1)[-1], s.dtype_name, i, arch) for k, s, i in insts]
    prog = _check(nvrtc.nvrtcCreateProgram(_gpu_build.source_text(source).encode(),
                                           source.encode(), 0, [], []), "create program")
    try:
        for expr in _gpu_build.name_expressions(source):
            _check(nvrtc.nvrtcAddNameExpression(prog, expr.encode()), "add name expression")
        opts = [o.encode() for o in (*_gpu_build.options(), *_gpu_build.CUPY_IMPLICIT_OPTIONS,
                                     f"--gpu-architecture={arch}",
                                     "--ptxas-options=-v")]
        (err,) = nvrtc.nvrtcCompileProgram(prog, len(opts), opts)
        log = _log(nvrtc, prog)
        if err != nvrtc.nvrtcResult.NVRTC_SUCCESS:
            for row in rows:
                row.error = f"compile failed: {log}"
            return rows
        usage = parse_ptxas_log(log)
        for row, expr in zip(rows, _gpu_build.name_expressions(source)):
            lowered = _check(nvrtc.nvrtcGetLoweredName(prog, expr.encode()), "lowered name")
            lowered = lowered.decode() if isinstance(lowered, bytes) else str(lowered)
            if lowered not in usage:
                row.error = f"no ptxas report for {expr}"
                continue
            row.registers, row.spill_stores, row.spill_loads = usage[lowered]
    finally:
        nvrtc.nvrtcDestroyProgram(prog)
    return rows


def compile_check(archs=ARCHITECTURES, sources=None):
    rows = []
    for source in sources or _kernels.sources():
        for arch in archs:
            rows += compile_source(source, arch)
    return rows


def nvrtc_version():
    from cuda.bindings import nvrtc

    major, minor = _check(nvrtc.nvrtcVersion(), "version")
    return f"{major}.{minor}"


def format_table(rows):
    header = ("kernel", "dtype", "index", "arch", "registers", "spill stores", "spill loads", "status")
    body = [
        (r.kernel, r.dtype, r.index, r.arch, str(r.registers), str(r.spill_stores),
         str(r.spill_loads), "ok" if r.ok and r.spill_stores == r.spill_loads == 0
         else (r.error.splitlines()[0] if r.error else "SPILLS"))
        for r in rows
    ]
    widths = [max(len(x) for x in col) for col in zip(header, *body)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    return "\n".join(fmt.format(*line) for line in (header, *body))
