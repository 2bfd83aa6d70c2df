"""The ``cudcn`` command line (also ``python -m cudcn``): one module per command."""

import argparse
import sys


def _compile_check(args):
    from .. import _nvrtc
    from . import compile_check as _compile_check

    installed = _nvrtc.installed_majors()
    majors = sorted({int(v) for v in args.cuda}) if args.cuda else [
        m for m in installed if m in _compile_check.ARCHITECTURES]
    missing = [m for m in majors if m not in installed]
    if not majors or missing:
        wanted = ", ".join(f"CUDA {m}" for m in (missing or _compile_check.ARCHITECTURES))
        print(f"compile-check found no NVRTC and CUDA headers of {wanted}: pip install "
              "nvidia-cuda-nvrtc nvidia-cuda-runtime (CUDA 13) and/or "
              "nvidia-cuda-nvrtc-cu12 nvidia-cuda-runtime-cu12 (CUDA 12)", file=sys.stderr)
        return 1
    archs = set(args.arch) if args.arch else None
    if archs is not None and not _compile_check.matrix(majors, archs):
        print(f"compile-check: none of {sorted(archs)} is checked with CUDA "
              f"{', '.join(map(str, majors))} (architectures per version: "
              f"{_compile_check.ARCHITECTURES})", file=sys.stderr)
        return 2
    rows = _compile_check.compile_check(majors, archs, jobs=args.jobs)
    print(_compile_check.format_table(rows))
    print()
    print(_compile_check.format_summary(rows))
    failed = [r for r in rows if not r.ok]
    spilled = [r for r in rows if r.ok and r.spills > args.max_spill_bytes]
    print()
    for cuda in dict.fromkeys(r.cuda for r in rows):
        mine = [r for r in rows if r.cuda == cuda]
        bad = [r for r in mine if not r.ok]
        over = [r for r in mine if r.ok and r.spills > args.max_spill_bytes]
        print(f"NVRTC {cuda}: {len(mine)} instantiations, {len(mine) - len(bad)} compiled, "
              f"{len(bad)} failed, {len(over)} over {args.max_spill_bytes} spill bytes; "
              f"max registers {max((r.registers for r in mine), default=0)}")
    errors = {}
    for row in failed:
        errors.setdefault((row.cuda, row.arch, row.error), []).append(row)
    for (cuda, arch, error), group in errors.items():
        names = ", ".join(f"{r.kernel} {r.dtype} {r.index}" for r in group[:3])
        more = f" and {len(group) - 3} more" if len(group) > 3 else ""
        print(f"\nCUDA {cuda} {arch}, {names}{more}:\n{error}", file=sys.stderr)
    return 1 if failed or spilled else 0


def _bench(args):
    from . import bench as _bench

    return _bench.run(rounds=args.rounds, memory=not args.no_memory, threads=not args.no_threads,
                      environment=not args.no_environment, profile=not args.no_profile)


def _info(args):
    from . import info as _info

    return _info.show(sys.stdout)


def _check(args):
    from . import check as _check

    return _check.show(sys.stdout)


def _gpu_plan(args):
    from . import gpu_plan

    shapes = tuple(args.shape) if args.shape else gpu_plan.CONV_SHAPES
    rows = gpu_plan.run(arch=args.arch, dtype=args.dtype, conv_shapes=shapes)
    return 0 if all(r.fills for r in rows) else 1


def _demo(args):
    from . import demo

    demo.run(out=args.out, steps=args.steps, batch=args.batch, seed=args.seed,
             seeds=args.seeds, jobs=args.jobs, offset_lr_mult=args.offset_lr_mult,
             device=args.device)
    return 0


def _positive_int(text):
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid int value: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _conv_shape(text):
    from .gpu_plan import parse_shape

    try:
        return parse_shape(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def build_parser():
    from .compile_check import ALL_ARCHITECTURES, ARCHITECTURES

    parser = argparse.ArgumentParser(prog="cudcn", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True, metavar="command")
    info = commands.add_parser(
        "info", help="version, backends available here, kernel caches",
        description="Print cudcn's version, the backends available here (host compiler, "
                    "CUDA devices, CuPy and NVRTC versions), and the kernel cache folders.")
    info.set_defaults(run=_info)

    verify = commands.add_parser(
        "check", help="every op, forward and backward, on every backend and dtype vs float64",
        description="Run every op forward and backward on every available backend and dtype "
                    "on random inputs against the float64 references; exit 1 if any row fails.")
    verify.set_defaults(run=_check)

    demo = commands.add_parser(
        "demo", help="train a small CNN plain and deformable on transformed digits; figures",
        description="Train the same small CNN twice on scikit-learn's digits with random "
                    "scale, rotation and shift: plain, and with its last three 3x3 convs "
                    "deformable, for several seeds. Prints both test accuracies and the "
                    "deformable layers' effective dilation on small, medium and large digits "
                    "and the background (the paper's Table 2), and writes PNG figures of the "
                    "learned sampling locations, offsets and effective dilation. Needs torch, "
                    "scikit-learn and matplotlib.")
    demo.add_argument("--out", default="cudcn-demo", help="folder for the figures")
    demo.add_argument("--steps", type=int, default=1000, help="training steps per model")
    demo.add_argument("--batch", type=int, default=32, help="batch size")
    demo.add_argument("--seed", type=int, default=0,
                      help="first seed of data, init and order")
    demo.add_argument("--seeds", type=_positive_int, default=3,
                      help="how many seeds (--seed, --seed + 1, ...) to train both models for")
    demo.add_argument("--jobs", type=_positive_int, default=None,
                      help="processes (one thread each) that train the models; 1: in this "
                           "process, on torch's threads (default: one per core)")
    demo.add_argument("--offset-lr-mult", type=float, default=1.0,
                      help="learning rate of the offset convs, times the others' (default 1, "
                           "as in the paper's code)")
    demo.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                      help="where to train (cuda: the GPU backend)")
    demo.set_defaults(run=_demo)

    check = commands.add_parser(
        "compile-check",
        help="NVRTC-compile every GPU kernel instantiation; report registers and spills",
        description="Compile every kernel instantiation the GPU executor can launch, with its "
                    "own options, with the NVRTC and CUDA headers of each installed CUDA "
                    "version, for that version's architectures (no GPU needed). Prints "
                    "registers and spill bytes per instantiation and a summary per CUDA "
                    "version and architecture. Exits 1 on any failure or spill.",
    )
    check.add_argument("--cuda", action="append", choices=[str(m) for m in ARCHITECTURES],
                       help="CUDA version whose NVRTC and headers to compile with (repeatable; "
                            "default every one installed)")
    check.add_argument("--arch", action="append", choices=ALL_ARCHITECTURES,
                       help="architecture to compile for (repeatable; default each CUDA "
                            "version's own: " + "; ".join(
                                f"{m}: {' '.join(a)}" for m, a in ARCHITECTURES.items()) + ")")
    check.add_argument("--max-spill-bytes", type=int, default=0,
                       help="spill stores + loads allowed per instantiation (default 0)")
    check.add_argument("--jobs", type=int, default=None,
                       help="compiles run in parallel (default one per core)")
    check.set_defaults(run=_compile_check)

    plan = commands.add_parser(
        "gpu-plan", help="every launch of every op counted against a GPU: threads, waves, "
                         "serial work, DRAM bytes",
        description="Describe every launch of every op, forward and backward, default and "
                    "deterministic, as planned for a GPU (a reference A100 or H100 with "
                    "registers from NVRTC, or the current device), from the same launch "
                    "descriptions the executors run: threads, block, registers, resident "
                    "threads, waves, serial iterations per thread, estimated DRAM bytes, and "
                    "the peer's threads for the same work. Exits 1 if a main launch has "
                    "fewer threads than min(2 waves, the peer's).")
    plan.add_argument("--arch", choices=("sm_80", "sm_90", "current"), default="sm_90",
                      help="sm_80: A100 (108 SMs), sm_90: H100 (132 SMs), current: this "
                           "machine's GPU (default sm_90)")
    plan.add_argument("--shape", action="append", type=_conv_shape,
                      help="deform_conv2d shape N,C,S (3x3, padding 1; repeatable; default "
                           "the asv shapes)")
    plan.add_argument("--dtype", choices=("float32", "float16", "bfloat16", "float64"),
                      default="float32", help="dtype of every op (default float32)")
    plan.set_defaults(run=_gpu_plan)

    bench = commands.add_parser(
        "bench", help="CPU speed and memory against torchvision, F.conv2d and ONNX Runtime",
        description="Time cudcn on the CPU as a PyTorch user meets it (torch imported first, "
                    "through cudcn.adapters.torch and the NumPy API) against torchvision's "
                    "deform_conv2d, roi_align and ps_roi_align, a dense F.conv2d and ONNX "
                    "Runtime's DeformConv, in interleaved rounds (medians, ratios in one "
                    "process, OpenBLAS's build-machine variables unset); then where the "
                    "time goes at N=2, C=64, 56x56 (each kernel, the matrix products, the "
                    "rest), peak memory, "
                    "1 -> 2 thread scaling, and cudcn's time with torch, ONNX Runtime or NumPy's "
                    "BLAS in the process, each in a fresh process.")
    bench.add_argument("--rounds", type=int, default=9,
                       help="the fewest interleaved rounds of a row (default 9); rows of short "
                            "calls run more, up to 45, within about 5 s")
    bench.add_argument("--no-memory", action="store_true", help="skip the peak-memory line")
    bench.add_argument("--no-threads", action="store_true", help="skip the thread-scaling line")
    bench.add_argument("--no-environment", action="store_true",
                       help="skip the rows of cudcn's time beside other libraries")
    bench.add_argument("--no-profile", action="store_true",
                       help="skip where the time goes at N=2, C=64, 56x56")
    bench.set_defaults(run=_bench)
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    return args.run(args)

