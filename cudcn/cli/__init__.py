"""The ``cudcn`` command line (also ``python -m cudcn``): one module per command."""

import argparse
import sys


def _compile_check(args):
    from . import compile_check as _compile_check

    try:
        rows = _compile_check.compile_check(archs=args.arch)
    except ImportError as exc:
        print(f"compile-check needs NVRTC through cuda-bindings: {exc}\n"
              "pip install cuda-bindings nvidia-cuda-nvrtc nvidia-cuda-runtime", file=sys.stderr)
        return 1
    print(_compile_check.format_table(rows))
    failed = [r for r in rows if not r.ok]
    spilled = [r for r in rows if r.ok and r.spill_stores + r.spill_loads > args.max_spill_bytes]
    print(f"\nNVRTC {_compile_check.nvrtc_version()}: {len(rows)} instantiations, "
          f"{len(rows) - len(failed)} compiled, {len(failed)} failed, "
          f"{len(spilled)} over {args.max_spill_bytes} spill bytes; "
          f"max registers {max((r.registers for r in rows), default=0)}")
    for row in failed:
        print(f"\n{row.kernel} {row.dtype} {row.index} {row.arch}:\n{row.error}", file=sys.stderr)
    return 1 if failed or spilled else 0


def _bench(args):
    from . import bench as _bench

    _bench.run(repeats=args.repeats, memory=not args.no_memory, threads=not args.no_threads,
               workspace_mib=args.workspace_mib)
    return 0


def _info(args):
    from . import info as _info

    return _info.show(sys.stdout)


def _check(args):
    from . import check as _check

    return _check.show(sys.stdout)


def _demo(args):
    from . import demo

    demo.run(out=args.out, steps=args.steps, batch=args.batch, seed=args.seed,
             device=args.device)
    return 0


def build_parser():
    from .compile_check import ARCHITECTURES

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
                    "deformable. Prints both test accuracies and writes PNG figures of the "
                    "learned sampling locations and offsets. Needs torch, scikit-learn and "
                    "matplotlib.")
    demo.add_argument("--out", default="cudcn-demo", help="folder for the figures")
    demo.add_argument("--steps", type=int, default=500, help="training steps per model")
    demo.add_argument("--batch", type=int, default=32, help="batch size")
    demo.add_argument("--seed", type=int, default=0, help="seed of data, init and order")
    demo.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                      help="where to train (cuda: the GPU backend)")
    demo.set_defaults(run=_demo)

    check = commands.add_parser(
        "compile-check",
        help="NVRTC-compile every GPU kernel instantiation; report registers and spills",
        description="Compile every kernel instantiation the GPU executor can launch, with its "
                    "own options, for each architecture (no GPU needed). Exits 1 on any "
                    "failure or spill.",
    )
    check.add_argument("--arch", action="append", choices=ARCHITECTURES,
                       help="architecture to compile for (repeatable; default all)")
    check.add_argument("--max-spill-bytes", type=int, default=0,
                       help="spill stores + loads allowed per instantiation (default 0)")
    check.set_defaults(run=_compile_check)

    bench = commands.add_parser(
        "bench", help="time cudcn against torchvision and F.conv2d on the CPU, side by side",
        description="Forward and forward+backward of deform_conv2d at three ResNet shapes "
                    "(float32, 3x3, with mask), against torchvision's CPU op and a dense "
                    "F.conv2d, medians in one run; then peak memory and thread scaling.")
    bench.add_argument("--repeats", type=int, default=7, help="timed repetitions (default 7)")
    bench.add_argument("--no-memory", action="store_true", help="skip the peak-memory line")
    bench.add_argument("--no-threads", action="store_true", help="skip the thread-scaling line")
    bench.add_argument("--workspace-mib", type=float, default=None,
                       help="workspace limit for the peak-memory line (default: cudcn's)")
    bench.set_defaults(run=_bench)
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    if getattr(args, "arch", None) is None and args.command == "compile-check":
        from .compile_check import ARCHITECTURES

        args.arch = ARCHITECTURES
    return args.run(args)

