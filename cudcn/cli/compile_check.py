"""NVRTC-compile every GPU kernel instantiation, without a GPU.

Each kernel file is compiled once per CUDA version and architecture, with the
CuPy executor's own options and name expressions and the CUDA headers of that
version; ptxas' verbose report gives registers and spill bytes per
instantiation. Every installed NVRTC runs in this one process (see
``cudcn._nvrtc``); the compiles are spread over worker processes.
"""

import concurrent.futures
import dataclasses
import os
import re

from .. import _gpu_build, _kernels, _nvrtc

# The architectures each CUDA major version is checked for: CUDA 12 is the
# last with Volta (sm_70); CUDA 13 adds Blackwell (sm_100, sm_120).
ARCHITECTURES = {
    12: ("sm_70", "sm_75", "sm_80", "sm_86", "sm_89", "sm_90"),
    13: ("sm_75", "sm_80", "sm_86", "sm_89", "sm_90", "sm_100", "sm_120"),
}
ALL_ARCHITECTURES = tuple(sorted({a for archs in ARCHITECTURES.values() for a in archs},
                                 key=lambda a: int(a[3:])))


@dataclasses.dataclass
class Row:
    kernel: str
    dtype: str
    index: str
    arch: str
    cuda: str = ""  # NVRTC version, e.g. "12.9"
    registers: int = -1
    spill_stores: int = -1
    spill_loads: int = -1
    error: str = ""

    @property
    def ok(self):
        return not self.error and self.registers >= 0

    @property
    def spills(self):
        return self.spill_stores + self.spill_loads


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


def compile_options(cuda_major, arch):
    """Exactly what CuPy hands NVRTC for one architecture, plus ptxas' report."""
    return (*_gpu_build.options(cuda_major), *_gpu_build.CUPY_IMPLICIT_OPTIONS,
            f"--gpu-architecture={arch}", "--ptxas-options=-v")


def compile_source(source, arch, cuda_major, dtypes=_kernels.GPU_DTYPES):
    """Compile one kernel file for one architecture with the NVRTC of CUDA
    ``cuda_major``; returns one Row per instantiation (of ``dtypes`` only:
    the executor's module has them all, gpu-plan needs one)."""
    nvrtc = _nvrtc.load(cuda_major)
    version = "{}.{}".format(*nvrtc.version)
    insts = _kernels.instantiations(source, dtypes)
    rows = [Row(k.name.rsplit("::", 1)[-1], s.dtype_name, i, arch, version) for k, s, i in insts]
    expressions = tuple(_kernels.instantiation(k, s, i) for k, s, i in insts)
    result = nvrtc.compile(_gpu_build.source_text(source), source,
                           compile_options(cuda_major, arch), expressions)
    if not result.ok:
        for row in rows:
            row.error = f"compile failed: {result.log}"
        return rows
    usage = parse_ptxas_log(result.log)
    for row, expr in zip(rows, expressions):
        lowered = result.lowered[expr]
        if lowered not in usage:
            row.error = f"no ptxas report for {expr}"
            continue
        row.registers, row.spill_stores, row.spill_loads = usage[lowered]
    return rows


def _compile_task(task):
    return compile_source(*task)


def matrix(cuda_majors, archs=None):
    """Every (kernel file, architecture, CUDA major) to compile: each version's
    own architectures, narrowed to ``archs`` when given."""
    return [
        (source, arch, major)
        for major in cuda_majors
        for arch in ARCHITECTURES[major] if archs is None or arch in archs
        for source in _kernels.sources()
    ]


def compile_check(cuda_majors, archs=None, jobs=None):
    """Rows for every instantiation of the matrix; ``jobs`` worker processes
    (default: one per core; 1 compiles in this process)."""
    tasks = matrix(cuda_majors, archs)
    jobs = min(jobs or os.cpu_count() or 1, len(tasks))
    if jobs <= 1:
        results = map(_compile_task, tasks)
    else:
        with concurrent.futures.ProcessPoolExecutor(jobs) as pool:
            results = list(pool.map(_compile_task, tasks))
    order = {major: i for i, major in enumerate(cuda_majors)}
    rows = [row for chunk in results for row in chunk]
    # Group by CUDA version, then architecture, kernel file order within.
    return sorted(rows, key=lambda r: (order[int(r.cuda.split(".")[0])], int(r.arch[3:])))


def _status(row):
    if not row.ok:
        return row.error.splitlines()[0] if row.error else "failed"
    return "ok" if row.spills == 0 else "SPILLS"


def format_table(rows):
    header = ("cuda", "arch", "kernel", "dtype", "index", "registers", "spill stores",
              "spill loads", "status")
    body = [
        (r.cuda, r.arch, r.kernel, r.dtype, r.index, str(r.registers),
         str(r.spill_stores), str(r.spill_loads), _status(r))
        for r in rows
    ]
    return _columns(header, body)


def format_summary(rows):
    """One line per (CUDA version, architecture): the largest register count
    and where it is, and the spill bytes of all its instantiations."""
    groups = {}
    for r in rows:
        groups.setdefault((r.cuda, r.arch), []).append(r)
    header = ("cuda", "arch", "instantiations", "failed", "max registers", "in", "spill bytes")
    body = []
    for (cuda, arch), group in groups.items():
        compiled = [r for r in group if r.ok]
        top = max(compiled, key=lambda r: r.registers, default=None)
        body.append((cuda, arch, str(len(group)), str(len(group) - len(compiled)),
                     str(top.registers) if top else "-",
                     f"{top.kernel} {top.dtype} {top.index}" if top else "-",
                     str(sum(r.spills for r in compiled))))
    return _columns(header, body)


def _columns(header, body):
    widths = [max(len(x) for x in col) for col in zip(header, *body)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    return "\n".join(fmt.format(*line).rstrip() for line in (header, *body))
