"""Share of kernel source lines the test suite executed, from a coverage build,
per file and per dtype.

usage: python tools/kernel_coverage.py CACHE_CPU_DIR KERNEL_DIR

Reads the gcov data of every coverage build of the CPU executor under
CACHE_CPU_DIR (see `make coverage`) and reports, per file of KERNEL_DIR, the
executable lines and those executed by any instantiation; then, per dtype,
the lines of the functions whose demangled names name that storage type
(``float``, ``double``, ``__half``, ``__nv_bfloat16``: the kernels'
instantiations, the load/store specialisations, the shim's conversions) and
those of them executed. A helper templated on the accumulation type alone
(``float`` for the 16-bit types too) counts under float32; functions that
name no type count under "shared". The host compiler builds every
instantiation the GPU does, so nothing is left out.
"""

import json
import pathlib
import re
import subprocess
import sys

# The storage type a demangled function names (its template arguments, its
# parameters, or the conversion it is), most specific first: __half's
# accumulation type is float, so float means float32 only when no 16-bit type
# is named.
DTYPES = (("bfloat16", r"bfloat16"), ("float16", r"__half\b|2half|half2"),
          ("float64", r"\bdouble\b"), ("float32", r"\bfloat\b"))


def dtype_of(demangled):
    """'float16' for 'void cudcn::deform_conv2d_im2col<__half, int>(...)', etc."""
    for name, pattern in DTYPES:
        if re.search(pattern, demangled):
            return name
    return "shared"


def line_counts(build_dir):
    """{(file, line, function): count} over every .gcda of one build folder,
    and {function: dtype}."""
    counts, dtypes = {}, {}
    for gcda in build_dir.glob("*.gcda"):
        result = subprocess.run(["gcov", "--stdout", "--json-format", gcda.name],
                                cwd=build_dir, capture_output=True, text=True, check=True)
        for document in result.stdout.splitlines():
            for entry in json.loads(document).get("files", []):
                path = str(pathlib.Path(entry["file"]).resolve())
                for function in entry.get("functions", []):
                    dtypes[function["name"]] = dtype_of(function["demangled_name"])
                for line in entry["lines"]:
                    key = (path, line["line_number"], line.get("function_name", ""))
                    counts[key] = max(counts.get(key, 0), line["count"])
    return counts, dtypes


def _cell(hit, total):
    return f"{hit:4d} / {total:4d} {100 * hit / total:5.1f}%" if total else f"{'-':>17s}"


def main(cache_dir, kernel_dir):
    kernel_dir = pathlib.Path(kernel_dir).resolve()
    counts, dtypes = {}, {}
    builds = sorted(pathlib.Path(cache_dir).glob("build-*"))
    for build in builds:
        found, names = line_counts(build)
        dtypes.update(names)
        for key, count in found.items():
            counts[key] = max(counts.get(key, 0), count)
    # per file: {line: max count} over every instantiation, and per dtype.
    any_dtype, by_dtype = {}, {}
    for (path, line, function), count in counts.items():
        if pathlib.Path(path).parent != kernel_dir:
            continue
        name = pathlib.Path(path).name
        lines = any_dtype.setdefault(name, {})
        lines[line] = max(lines.get(line, 0), count)
        per = by_dtype.setdefault((name, dtypes.get(function, "shared")), {})
        per[line] = max(per.get(line, 0), count)
    if not any_dtype:
        print(f"no coverage data for {kernel_dir} under {cache_dir}", file=sys.stderr)
        return 1
    columns = [name for name, _ in DTYPES] + ["shared"]
    print(f"kernel line coverage ({len(builds)} builds): lines executed / executable")
    print(f"  {'file':24s} {'any instantiation':>17s}  " + "  ".join(f"{c:>17s}" for c in columns))
    totals = {c: [0, 0] for c in ["all", *columns]}
    missed_lines = {}
    for name, lines in sorted(any_dtype.items()):
        row = [_cell(sum(c > 0 for c in lines.values()), len(lines))]
        totals["all"][0] += sum(c > 0 for c in lines.values())
        totals["all"][1] += len(lines)
        for column in columns:
            per = by_dtype.get((name, column), {})
            hit = sum(c > 0 for c in per.values())
            totals[column][0] += hit
            totals[column][1] += len(per)
            row.append(_cell(hit, len(per)))
            missed = sorted(line for line, c in per.items() if c == 0)
            if missed:
                missed_lines[(name, column)] = missed
        print(f"  {name:24s} " + "  ".join(row))
    print(f"  {'total':24s} " + "  ".join(_cell(*totals[c]) for c in ["all", *columns]))
    for (name, column), missed in sorted(missed_lines.items()):
        print(f"  not run in {column} instantiations of {name}: lines {missed}")
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
