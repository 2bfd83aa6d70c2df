"""``cudcn bench``: cudcn against torchvision's CPU deform_conv2d and a dense
F.conv2d of the same shape, measured side by side in one run.

Times are medians of several repetitions after a warm-up, in one process.
Peak memory and thread scaling run each case in a fresh subprocess, so that
every library starts from the same baseline.
"""

import json
import os
import subprocess
import sys
import time

import numpy as np

SHAPES = ((2, 64, 56), (4, 256, 14), (1, 128, 28))  # (batch, channels, size), 3x3, pad 1
MEMORY_SHAPE = (32, 256, 28)


def _median_ms(fn, repeats):
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1e3 * float(np.median(times))


def _inputs(batch, channels, size, seed=0):
    from ..testing import deform_conv2d_inputs

    return deform_conv2d_inputs(batch=batch, in_channels=channels, out_channels=channels,
                                size=size, dtype=np.float32, offset_scale=1.0, seed=seed)


def _cudcn_fns(args):
    import cudcn

    return (lambda: cudcn.deform_conv2d(**args),
            lambda: cudcn.deform_conv2d_backward(cudcn.deform_conv2d(**args), **args))


def _torch_fns(args):
    import torch
    import torchvision

    t = {k: torch.from_numpy(v) for k, v in args.items() if isinstance(v, np.ndarray)}

    def forward():
        with torch.no_grad():
            return torchvision.ops.deform_conv2d(t["input"], t["offset"], t["weight"], t["bias"],
                                                 padding=1, mask=t["mask"])

    def forward_backward():
        g = {k: v.detach().requires_grad_() for k, v in t.items()}
        y = torchvision.ops.deform_conv2d(g["input"], g["offset"], g["weight"], g["bias"],
                                          padding=1, mask=g["mask"])
        y.backward(y.detach())

    def conv():
        with torch.no_grad():
            return torch.nn.functional.conv2d(t["input"], t["weight"], t["bias"], padding=1)

    return forward, forward_backward, conv


def _peak_rss_mib():
    """This process's peak resident memory. Linux keeps ru_maxrss across exec
    (a child of a large parent starts with the parent's peak), so VmHWM,
    which belongs to the new address space, is read where it exists."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _child(kind, batch, channels, size, workspace_mib=None):
    """Runs in a subprocess: peak RSS growth of one forward+backward, or a time."""
    if workspace_mib is not None:
        import cudcn

        cudcn.set_workspace_limit(int(workspace_mib * 2**20))
    args = _inputs(batch, channels, size)
    if kind == "forward-time":
        fwd, _ = _cudcn_fns(args)
        return {"ms": _median_ms(fwd, 7)}
    if kind == "cudcn-memory":
        _cudcn_fns(_inputs(1, 4, 8))[1]()  # loads the kernels
        fn = _cudcn_fns(args)[1]
    else:
        small = _torch_fns(_inputs(1, 4, 8))[1]
        small()  # loads torch's kernels
        fn = _torch_fns(args)[1]
    before = _peak_rss_mib()
    fn()
    return {"mib": _peak_rss_mib() - before}


def _in_subprocess(kind, shape, threads=None, workspace_mib=None):
    env = dict(os.environ)
    if threads is not None:
        env["OMP_NUM_THREADS"] = str(threads)
    code = (f"import json, cudcn.cli.bench as b; "
            f"print(json.dumps(b._child({kind!r}, *{tuple(shape)!r}, {workspace_mib!r})))")
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                            text=True, check=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


def run(repeats=7, memory=True, threads=True, workspace_mib=None, out=sys.stdout):
    # cudcn's kernels load (and bring in libgomp, set not to spin) before torch.
    _cudcn_fns(_inputs(1, 4, 8))[1]()
    try:
        import torch  # noqa: F401
        import torchvision  # noqa: F401
        have_torch = True
    except ImportError:
        have_torch = False
        print("torchvision is not installed here: cudcn's times only "
              "(pip install torch torchvision to compare).", file=out)
    rows = []
    header = ("op", "shape (N, C, HxW)", "dtype", "cudcn ms", "torchvision ms", "F.conv2d ms",
              "tv / cudcn", "cudcn / conv2d")
    for batch, channels, size in SHAPES:
        args = _inputs(batch, channels, size)
        fwd, fb = _cudcn_fns(args)
        c_fwd, c_fb = _median_ms(fwd, repeats), _median_ms(fb, repeats)
        shape = f"{batch}, {channels}, {size}x{size}"
        if have_torch:
            t_fwd_fn, t_fb_fn, conv_fn = _torch_fns(args)
            t_fwd, t_fb = _median_ms(t_fwd_fn, repeats), _median_ms(t_fb_fn, max(3, repeats // 2))
            conv = _median_ms(conv_fn, repeats)
            rows.append(("forward", shape, "float32", c_fwd, t_fwd, conv, t_fwd / c_fwd,
                         c_fwd / conv))
            rows.append(("forward+backward", shape, "float32", c_fb, t_fb, None, t_fb / c_fb,
                         None))
        else:
            rows.append(("forward", shape, "float32", c_fwd, None, None, None, None))
            rows.append(("forward+backward", shape, "float32", c_fb, None, None, None, None))
    fmt = lambda v: "-" if v is None else (f"{v:.2f}" if isinstance(v, float) else str(v))  # noqa: E731
    table = [header] + [tuple(fmt(v) for v in row) for row in rows]
    widths = [max(len(r[i]) for r in table) for i in range(len(header))]
    for r in table:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)), file=out)
    result = {"rows": rows}
    if memory:
        c_mem = _in_subprocess("cudcn-memory", MEMORY_SHAPE, workspace_mib=workspace_mib)["mib"]
        limit = "default" if workspace_mib is None else f"{workspace_mib:g} MiB"
        line = (f"\npeak memory of forward+backward at N=32, C=256, 28x28 (RSS growth): "
                f"cudcn {c_mem:.0f} MiB (workspace limit {limit})")
        result["cudcn_mib"] = c_mem
        if have_torch:
            t_mem = _in_subprocess("torch-memory", MEMORY_SHAPE)["mib"]
            line += f", torchvision {t_mem:.0f} MiB, ratio cudcn / tv {c_mem / t_mem:.2f}"
            result["torchvision_mib"] = t_mem
        print(line, file=out)
    if threads:
        one = _in_subprocess("forward-time", SHAPES[0], threads=1)["ms"]
        two = _in_subprocess("forward-time", SHAPES[0], threads=2)["ms"]
        print(f"forward at N=2, C=64, 56x56: 1 thread {one:.1f} ms, 2 threads {two:.1f} ms, "
              f"speed-up {one / two:.2f}x", file=out)
        result["thread_speedup"] = one / two
    return result
