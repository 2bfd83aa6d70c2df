"""Share of kernel source lines the test suite executed, from a coverage build.

usage: python tools/kernel_coverage.py CACHE_CPU_DIR KERNEL_DIR

Reads the gcov data of every coverage build of the CPU executor under
CACHE_CPU_DIR (see `make coverage`) and reports, per file of KERNEL_DIR,
the executable lines and those executed by any instantiation. Lines the host
compiler never builds (the GPU-only half-type code) are not counted.
"""

import json
import pathlib
import subprocess
import sys


def line_counts(build_dir):
    """{(file, line): count} over every .gcda of one build folder."""
    counts = {}
    for gcda in build_dir.glob("*.gcda"):
        result = subprocess.run(["gcov", "--stdout", "--json-format", gcda.name],
                                cwd=build_dir, capture_output=True, text=True, check=True)
        for document in result.stdout.splitlines():
            for entry in json.loads(document).get("files", []):
                path = str(pathlib.Path(entry["file"]).resolve())
                for line in entry["lines"]:
                    key = (path, line["line_number"])
                    counts[key] = max(counts.get(key, 0), line["count"])
    return counts


def main(cache_dir, kernel_dir):
    kernel_dir = pathlib.Path(kernel_dir).resolve()
    counts = {}
    builds = sorted(pathlib.Path(cache_dir).glob("build-*"))
    for build in builds:
        for key, count in line_counts(build).items():
            counts[key] = max(counts.get(key, 0), count)
    per_file = {}
    for (path, line), count in counts.items():
        if pathlib.Path(path).parent == kernel_dir:
            per_file.setdefault(pathlib.Path(path).name, {})[line] = count
    if not per_file:
        print(f"no coverage data for {kernel_dir} under {cache_dir}", file=sys.stderr)
        return 1
    total = executed = 0
    print(f"kernel line coverage ({len(builds)} builds)")
    for name, lines in sorted(per_file.items()):
        hit = sum(1 for c in lines.values() if c > 0)
        missed = sorted(line for line, c in lines.items() if c == 0)
        total += len(lines)
        executed += hit
        print(f"  {name:28s} {hit:4d} / {len(lines):4d}  {100 * hit / len(lines):5.1f}%"
              + (f"   not run: {missed}" if missed else ""))
    print(f"  {'total':28s} {executed:4d} / {total:4d}  {100 * executed / total:5.1f}%")
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
