"""``cudcn demo``: what a deformable layer learns, small enough for a CPU.

scikit-learn's bundled 8x8 digits (no download) are upsampled into a 40x40
canvas and randomly scaled, rotated and shifted. The same small CNN is
trained twice per seed with the same data, initialisation, order and steps:
once plain, once with its last three 3x3 convs (conv3, conv4, conv5, all on
the last 10x10 stage) made deformable by convert_to_deformable. It reports
both test accuracies over the seeds and, as in the paper's Table 2 (Dai et
al., ICCV 2017, section 4), the "effective dilation" of each deformable layer
on test digits of small, medium and large scale and on the background. It
draws (1) the 9^3 sampling locations of one top-layer unit through the three
stacked layers, regular against learned, on test digits of different scales,
as in the paper's figure, (2) the learned offsets and (3) the effective
dilation against the digit's scale.

Effective dilation, as defined here and measured by :func:`effective_dilation`:
for one application of a deformable filter (one output position of a layer),
the sampling location of kernel point (i, j) is (i * dilation_h + dy_ij,
j * dilation_w + dx_ij) in the layer's input pixels; the effective dilation
is the mean Euclidean distance between the locations of the kernel points
that are horizontal or vertical neighbours in the kernel grid (12 pairs for a
3x3 kernel). With zero offsets it is the layer's dilation (1.0 here).

Binning, as defined here (:func:`position_bins`): every output position of a
deformable layer (all three are 10x10, stride 1, padding 1, on a map whose
positions are STRIDE = 4 canvas pixels apart) has its receptive-field centre at
canvas pixel ((row + 0.5) * 4 - 0.5, (col + 0.5) * 4 - 0.5). The digit's box
is measured on the transformed image: the axis-aligned extent of the pixels
brighter than INK (0.1 of full ink), each pixel covering +-0.5 around its
centre. A position whose centre lies outside the box is "background";
otherwise it takes the bin of the digit's known scale factor: small, medium
or large for the lower, middle and upper third of the scale range.
"""

import collections
import json
import pathlib
import sys
import time

import numpy as np

CANVAS = 40
SCALES = (0.55, 1.35)  # range of the digits' random scale factor
STRIDE = 4  # canvas pixels between positions of the deformable layers' maps (two 2x2 pools)
INK = 0.1  # a pixel brighter than this belongs to the digit's box
BINS = ("small", "medium", "large", "background")
# The offset convs learn at the network's rate, as in the paper's released MXNet
# code (no lr_mult on its offset convs). The demo used 0.1 (as early mmdetection
# did) before; the offsets then moved less and showed no trend with scale.
OFFSET_LR_MULT = 1.0


def _digits(seed, copies_train=3, copies_test=2, scales=SCALES):
    """Transformed train/test images (N, 1, 40, 40), labels, and each image's scale."""
    import torch
    import torch.nn.functional as F
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = torch.tensor(digits.images, dtype=torch.float32)[:, None] / 16.0
    labels = torch.tensor(digits.target)
    big = F.interpolate(images, size=(24, 24), mode="bilinear", align_corners=False)
    big = F.pad(big, (8, 8, 8, 8))  # centred in the 40x40 canvas
    g = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(labels), generator=g)
    train_idx, test_idx = order[:1400], order[1400:]

    def transformed(index, copies):
        x = big[index].repeat(copies, 1, 1, 1)
        y = labels[index].repeat(copies)
        n = x.shape[0]
        scale = torch.empty(n).uniform_(*scales, generator=g)
        angle = torch.empty(n).uniform_(-0.5, 0.5, generator=g)  # radians, about 30 degrees
        shift = torch.empty(n, 2).uniform_(-0.25, 0.25, generator=g)
        cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
        theta = torch.stack([torch.stack([cos, -sin, shift[:, 0]], 1),
                             torch.stack([sin, cos, shift[:, 1]], 1)], 1)
        grid = F.affine_grid(theta, x.shape, align_corners=False)
        return F.grid_sample(x, grid, align_corners=False), y, scale

    return transformed(train_idx, copies_train), transformed(test_idx, copies_test)


def _model():
    from torch import nn

    layers = []
    for k, (c_in, c_out) in enumerate(((1, 16), (16, 32), (32, 32), (32, 32), (32, 32)), 1):
        layers += [(f"conv{k}", nn.Conv2d(c_in, c_out, 3, padding=1, bias=False)),
                   (f"bn{k}", nn.BatchNorm2d(c_out)), (f"relu{k}", nn.ReLU())]
        if k <= 2:
            layers.append((f"pool{k}", nn.MaxPool2d(2)))
    # conv3, conv4 and conv5 (on the 10x10 stage) are the ones made deformable.
    layers += [("gap", nn.AdaptiveAvgPool2d(1)), ("flatten", nn.Flatten()),
               ("fc", nn.Linear(32, 10))]
    return nn.Sequential(collections.OrderedDict(layers))


def effective_dilation(offset, kernel_size=(3, 3), dilation=(1, 1)):
    """The paper's effective dilation of every application of a deformable filter.

    ``offset`` (N, 2 * G * kh * kw, H, W) as a deformable conv takes it (per
    deform group, per kernel point k = i * kw + j, the pair (dy, dx)). Returns
    (N, G, H, W) float64: per output position and deform group, the mean
    distance between the sampling locations (i * dilation_h + dy, j *
    dilation_w + dx) of kernel points adjacent in the kernel grid (kh * (kw - 1)
    horizontal and (kh - 1) * kw vertical pairs), in the layer's input pixels.
    """
    offset = np.asarray(offset, dtype=np.float64)
    kh, kw = kernel_size
    dh, dw = dilation
    n, c, h, w = offset.shape
    pairs = kh * (kw - 1) + (kh - 1) * kw
    if pairs == 0 or c % (2 * kh * kw):
        raise ValueError(f"offset with {c} channels for a {kh}x{kw} kernel")
    off = offset.reshape(n, c // (2 * kh * kw), kh, kw, 2, h, w)
    y = off[:, :, :, :, 0] + (np.arange(kh) * dh)[:, None, None, None]
    x = off[:, :, :, :, 1] + (np.arange(kw) * dw)[:, None, None]
    across = np.hypot(np.diff(y, axis=3), np.diff(x, axis=3)).sum(axis=(2, 3))
    down = np.hypot(np.diff(y, axis=2), np.diff(x, axis=2)).sum(axis=(2, 3))
    return (across + down) / pairs


def ink_boxes(images, threshold=INK):
    """(N, 4) boxes (top, bottom, left, right) in canvas pixel coordinates of the
    pixels brighter than ``threshold`` in images (N, 1, H, W), each pixel
    covering +-0.5 around its index; an image without ink gets an empty box."""
    ink = np.asarray(images)[:, 0] > threshold
    boxes = np.full((ink.shape[0], 4), np.nan)
    for k, mask in enumerate(ink):
        rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
        if rows.size:
            boxes[k] = rows[0] - 0.5, rows[-1] + 0.5, cols[0] - 0.5, cols[-1] + 0.5
    return boxes


def position_bins(boxes, scale, size, stride=STRIDE, scales=SCALES):
    """(N, H, W) bin of every output position of an (H, W) = ``size`` map whose
    positions are ``stride`` canvas pixels apart: 0, 1, 2 (small, medium, large:
    the thirds of ``scales`` the image's scale falls in) where the position's
    centre ((row + 0.5) * stride - 0.5, (col + 0.5) * stride - 0.5) lies inside
    the image's box (closed), 3 (background) where it lies outside."""
    h, w = size
    cy = (np.arange(h) + 0.5) * stride - 0.5
    cx = (np.arange(w) + 0.5) * stride - 0.5
    boxes = np.asarray(boxes, dtype=np.float64)
    inside = ((cy[None, :, None] >= boxes[:, 0, None, None])
              & (cy[None, :, None] <= boxes[:, 1, None, None])
              & (cx[None, None, :] >= boxes[:, 2, None, None])
              & (cx[None, None, :] <= boxes[:, 3, None, None]))
    lo, hi = scales
    third = np.clip(((np.asarray(scale, dtype=np.float64) - lo) / (hi - lo) * 3).astype(int), 0, 2)
    return np.where(inside, third[:, None, None], 3)


def _layer_offsets(model, images, batch=256):
    """{name: (N, 2 * G * kh * kw, H, W) offsets} of every DeformConv2dPack of
    ``model`` on ``images``, bottom to top, and the layers themselves."""
    import torch

    from ..adapters.torch import DeformConv2dPack

    layers = {name: m for name, m in model.named_modules() if isinstance(m, DeformConv2dPack)}
    found = {name: [] for name in layers}
    hooks = [m.conv_offset.register_forward_hook(
        lambda mod, i, o, name=name: found[name].append(o.detach().cpu().numpy()))
        for name, m in layers.items()]
    try:
        with torch.no_grad():
            for i in range(0, images.shape[0], batch):
                model(images[i:i + batch])
    finally:
        for h in hooks:
            h.remove()
    return {name: np.concatenate(found[name]) for name in layers}, layers


def _dilation_stats(model, test, scales=SCALES, curve_bins=8):
    """Per deformable layer: each bin's mean, std (over positions) and count of
    effective dilation, and the mean over in-box positions in ``curve_bins``
    equal slices of the scale range (for the figure)."""
    x, _, scale = test
    offsets, layers = _layer_offsets(model, x)
    boxes = ink_boxes(x.numpy())
    scale = scale.numpy()
    lo, hi = scales
    slices = np.clip(((scale - lo) / (hi - lo) * curve_bins).astype(int), 0, curve_bins - 1)
    stats = {}
    for name, off in offsets.items():
        layer = layers[name]
        ed = effective_dilation(off, layer.kernel_size, layer.dilation).mean(1)  # over groups
        bins = position_bins(boxes, scale, ed.shape[1:], STRIDE, scales)
        row = {b: {"mean": float(ed[bins == k].mean()), "std": float(ed[bins == k].std()),
                   "count": int((bins == k).sum())} for k, b in enumerate(BINS)}
        inside = bins < 3
        row["curve"] = [float(ed[inside & (slices == s)[:, None, None]].mean())
                        for s in range(curve_bins)]
        stats[name] = row
    return stats


def _train(name, model, train, steps, batch, seed, device, log):
    import torch
    import torch.nn.functional as F

    from ..adapters.torch import param_groups

    x, y, _ = train
    g = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.Adam(param_groups(model, lr=3e-3))
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=[p["lr"] for p in
                                                                      optimizer.param_groups],
                                                   total_steps=steps)
    model.to(device).train()
    start = time.perf_counter()
    for step in range(1, steps + 1):
        idx = torch.randint(0, x.shape[0], (batch,), generator=g)
        loss = F.cross_entropy(model(x[idx].to(device)), y[idx].to(device))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
        if step % max(1, steps // 10) == 0 or step == steps:
            print(f"[{name}] step {step:4d}/{steps}  loss {loss.item():.3f}  "
                  f"{time.perf_counter() - start:5.1f} s", file=log, flush=True)
    return model.eval()


def _accuracy(model, test, device):
    import torch

    x, y, _ = test
    with torch.no_grad():
        pred = torch.cat([model(x[i:i + 256].to(device)).argmax(1).cpu()
                          for i in range(0, x.shape[0], 256)])
    return float((pred == y).float().mean())


def _sampling_points(model, image, unit):
    """Image coordinates of the 9^3 points a top unit samples through the three
    deformable layers (regular grid for plain convs)."""
    import torch

    from ..adapters.torch import DeformConv2dPack

    layers = [m for m in model if isinstance(m, (DeformConv2dPack, torch.nn.Conv2d))][-3:]
    inputs = {}
    hooks = [layer.register_forward_hook(lambda m, i, o, k=k: inputs.__setitem__(k, i[0]))
             for k, layer in enumerate(layers)]
    with torch.no_grad():
        model(image[None])
    for h in hooks:
        h.remove()
    offsets = []
    for k, layer in enumerate(layers):
        if isinstance(layer, DeformConv2dPack):
            with torch.no_grad():
                offsets.append(layer.conv_offset(inputs[k])[0].numpy())
        else:
            size = inputs[k].shape[-2:]
            offsets.append(np.zeros((18, *size)))
    points = np.array([unit], dtype=np.float64)
    for off in reversed(offsets):  # from the top layer down
        h, w = off.shape[1:]
        nxt = []
        for py, px in points:
            oy, ox = int(np.clip(round(py), 0, h - 1)), int(np.clip(round(px), 0, w - 1))
            for i in range(3):
                for j in range(3):
                    k = i * 3 + j
                    nxt.append((oy - 1 + i + off[2 * k, oy, ox], ox - 1 + j + off[2 * k + 1, oy, ox]))
        points = np.array(nxt)
    stride = 4  # two 2x2 max pools below the deformable layers
    return (points + 0.5) * stride - 0.5, offsets


def _figures(plain, deform, test, out):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x, y, scale = test
    picks = [int(np.argmin(np.abs(scale.numpy() - s))) for s in (0.6, 0.95, 1.3)]
    unit = (5.0, 5.0)  # the centre of the 10x10 top map
    fig, axes = plt.subplots(2, 3, figsize=(9, 6.2))
    for col, idx in enumerate(picks):
        for row, (model, title) in enumerate(((plain, "regular conv"), (deform, "deformable"))):
            pts, _ = _sampling_points(model, x[idx], unit)
            ax = axes[row, col]
            ax.imshow(x[idx, 0].numpy(), cmap="gray", vmin=0, vmax=1)
            ax.scatter(pts[:, 1], pts[:, 0], s=4, c="tab:red", alpha=0.6, linewidths=0)
            ax.scatter([(unit[1] + 0.5) * 4 - 0.5], [(unit[0] + 0.5) * 4 - 0.5], s=40,
                       c="tab:green", marker="x")
            ax.set_xlim(-0.5, CANVAS - 0.5)
            ax.set_ylim(CANVAS - 0.5, -0.5)
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(f"{title}, digit {int(y[idx])}, scale {float(scale[idx]):.2f}",
                         fontsize=9)
    fig.suptitle("Sampling locations (9^3 points) of one top-layer unit through three "
                 "stacked 3x3 layers", fontsize=10)
    fig.tight_layout()
    fig.savefig(out / "sampling_locations.png", dpi=110)
    plt.close(fig)

    fig, axes = plt.subplots(1, 3, figsize=(9, 3.4))
    for ax, idx in zip(axes, picks):
        _, offsets = _sampling_points(deform, x[idx], unit)
        off = offsets[-1]  # the top deformable layer, (18, 10, 10)
        dy, dx = off[0::2].mean(0), off[1::2].mean(0)
        gy, gx = np.mgrid[0:dy.shape[0], 0:dy.shape[1]]
        # Image pixel p sits at feature coordinate (p + 0.5) / 4 - 0.5.
        ax.imshow(x[idx, 0].numpy(), cmap="gray", vmin=0, vmax=1,
                  extent=(-0.5, dy.shape[1] - 0.5, dy.shape[0] - 0.5, -0.5))
        ax.quiver(gx, gy, dx, -dy, color="tab:orange", angles="xy", scale_units="xy", scale=1)
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_title(f"digit {int(y[idx])}, scale {float(scale[idx]):.2f}", fontsize=9)
    fig.suptitle("Mean learned offset (over the 9 kernel points) of the top deformable layer",
                 fontsize=10)
    fig.tight_layout()
    fig.savefig(out / "offset_field.png", dpi=110)
    plt.close(fig)



def _dilation_figure(per_seed, layers, scales, out):
    """Effective dilation against the digit's scale, one line per deformable
    layer (mean over seeds, band +-1 std over seeds), background dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lo, hi = scales
    slices = len(per_seed[0][layers[0]]["curve"])
    centres = lo + (np.arange(slices) + 0.5) * (hi - lo) / slices
    fig, ax = plt.subplots(figsize=(9, 4.2))
    colours = ("tab:blue", "tab:orange", "tab:red")
    for name, colour in zip(layers, colours):
        curves = np.array([stats[name]["curve"] for stats in per_seed])
        mean = curves.mean(0)
        std = curves.std(0, ddof=1) if len(curves) > 1 else np.zeros_like(mean)
        ax.plot(centres, mean, "o-", color=colour, label=f"{name}: on the digit")
        ax.fill_between(centres, mean - std, mean + std, color=colour, alpha=0.2, linewidth=0)
        background = np.mean([stats[name]["background"]["mean"] for stats in per_seed])
        ax.axhline(background, color=colour, linestyle="--", linewidth=1,
                   label=f"{name}: background")
    ax.axhline(1.0, color="gray", linestyle=":", linewidth=1, label="regular 3x3 conv")
    for edge in (lo + (hi - lo) / 3, lo + 2 * (hi - lo) / 3):
        ax.axvline(edge, color="gray", linewidth=0.8)
    top = ax.get_ylim()[1]
    for k, b in enumerate(BINS[:3]):
        ax.text(lo + (k + 0.5) * (hi - lo) / 3, top, b, ha="center", va="bottom", fontsize=9)
    ax.set_xlim(lo, hi)
    ax.set_xlabel("digit scale factor")
    ax.set_ylabel("effective dilation (layer input pixels)")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    ax.set_title(f"Effective dilation of the deformable layers against the digit's scale\n"
                 f"(mean over {len(per_seed)} seed{'s' * (len(per_seed) > 1)}, band: \u00b11 std "
                 f"over seeds)", fontsize=10,
                 pad=16)
    fig.tight_layout()
    fig.savefig(out / "effective_dilation.png", dpi=110)
    plt.close(fig)


def _task(seed, kind, steps, batch, offset_lr_mult, device, keep, log):
    """Train one model ("plain" or "deformable") for ``seed`` (its data split and
    transforms, initialisation and order); its test accuracy, the effective
    dilation statistics of a deformable one, and its weights if ``keep``."""
    import torch

    from ..adapters.torch import convert_to_deformable

    train, test = _digits(seed)
    torch.manual_seed(seed)
    model = _model()
    layers = []
    if kind == "deformable":
        layers = convert_to_deformable(model, offset_lr_mult=offset_lr_mult)
    model = _train(f"seed {seed} {kind}", model, train, steps, batch, seed, device, log).cpu()
    result = {"seed": seed, "kind": kind, "accuracy": _accuracy(model, test, "cpu"),
              "layers": layers}
    if layers:
        result["stats"] = _dilation_stats(model, test)
    if keep:
        result["state"] = model.state_dict()
    print(f"[seed {seed} {kind}] test accuracy {result['accuracy']:.1%}", file=log, flush=True)
    return result


class _QueueLog:
    """A log (file-like) that sends what is written to the parent process."""

    def __init__(self, queue):
        self.queue = queue

    def write(self, text):
        self.queue.put(text)

    def flush(self):
        pass


_worker_log = None


def _worker_init(queue):
    import torch

    global _worker_log
    _worker_log = _QueueLog(queue)
    torch.set_num_threads(1)


def _worker_task(*args):
    return _task(*args, _worker_log)


def _run_tasks(tasks, jobs, log):
    """``_task(*task, log)`` for each task, in ``jobs`` worker processes of one
    thread each (spawned; their log lines go to ``log``), or in this process
    with torch's threads as they are if ``jobs`` is 1. Results in task order."""
    if jobs <= 1:
        return [_task(*task, log) for task in tasks]
    import concurrent.futures
    import multiprocessing
    import queue as queues

    ctx = multiprocessing.get_context("spawn")
    lines = ctx.Queue()

    def drain(timeout):
        try:
            while True:
                log.write(lines.get(timeout=timeout))
                timeout = 0
        except queues.Empty:
            log.flush()

    with concurrent.futures.ProcessPoolExecutor(jobs, mp_context=ctx, initializer=_worker_init,
                                                initargs=(lines,)) as pool:
        futures = [pool.submit(_worker_task, *task) for task in tasks]
        while not all(f.done() for f in futures):
            drain(0.5)
        results = [f.result() for f in futures]
    drain(0.1)
    return results


def _std(values):
    """Standard deviation over seeds (ddof=1; 0 for one seed)."""
    return float(np.std(values, ddof=1)) if len(values) > 1 else 0.0


def run(out="cudcn-demo", steps=1000, batch=32, seed=0, seeds=3, jobs=None,
        offset_lr_mult=OFFSET_LR_MULT, device="cpu", log=sys.stdout):
    """Train plain and deformable for seeds ``seed`` .. ``seed + seeds - 1``
    (each seed: its own data split and transforms, initialisation and order;
    the offset convs at ``offset_lr_mult`` times the learning rate), in
    ``jobs`` processes (default: one per CPU core, at most one per model),
    write the figures (those of the models of the first seed) and
    results.json to ``out``, print the tables; returns the results."""
    import os

    import torch

    from ..adapters.torch import convert_to_deformable

    if seeds < 1:
        raise ValueError(f"seeds must be >= 1, got {seeds}")
    out = pathlib.Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("cudcn demo: --device cuda, but torch sees no CUDA device")
    start = time.perf_counter()
    seed_list = [seed + k for k in range(seeds)]
    if jobs is None:
        jobs = min(len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
                   else os.cpu_count() or 1, 2 * seeds)
    train, test = _digits(seed)
    print(f"digits: {train[0].shape[0]} training and {test[0].shape[0]} test images "
          f"({CANVAS}x{CANVAS}, scale {SCALES[0]}-{SCALES[1]}, rotation +-29 deg, "
          f"shift +-5 px); seeds {', '.join(map(str, seed_list))}; {steps} steps; offsets "
          f"at {offset_lr_mult:g} x the learning rate; "
          f"{jobs} process{'es' * (jobs > 1)}", file=log, flush=True)
    # The deformable models (the longer tasks) first.
    tasks = [(s, kind, steps, batch, offset_lr_mult, device, s == seed)
             for kind in ("deformable", "plain") for s in seed_list]
    done = {(r["seed"], r["kind"]): r for r in _run_tasks(tasks, jobs, log)}
    layers = done[seed, "deformable"]["layers"]
    accuracy = {kind: [done[s, kind]["accuracy"] for s in seed_list]
                for kind in ("plain", "deformable")}
    per_seed = [done[s, "deformable"]["stats"] for s in seed_list]

    def over_seeds(key, reduce):
        return {name: {b: round(reduce([stats[name][b][key] for stats in per_seed]), 4)
                       for b in BINS} for name in layers}

    lo, hi = SCALES
    edges = [lo, lo + (hi - lo) / 3, lo + 2 * (hi - lo) / 3, hi]
    slices = len(per_seed[0][layers[0]]["curve"])
    results = {
        "seeds": seed_list, "steps": steps, "batch": batch, "offset_lr_mult": offset_lr_mult,
        "scales": list(SCALES),
        "accuracy": accuracy,
        "accuracy_mean": {m: float(np.mean(v)) for m, v in accuracy.items()},
        "accuracy_std": {m: _std(v) for m, v in accuracy.items()},
        "layers": layers,
        "bins": {b: [round(edges[k], 4), round(edges[k + 1], 4)] for k, b in enumerate(BINS[:3])},
        "effective_dilation": over_seeds("mean", lambda v: float(np.mean(v))),
        # The paper's +-: std over the bin's positions (within one seed), averaged over seeds.
        "effective_dilation_std": over_seeds("std", lambda v: float(np.mean(v))),
        # The spread of the bin's mean from seed to seed (ddof=1).
        "effective_dilation_seed_std": over_seeds("mean", _std),
        "effective_dilation_per_seed": {
            name: {b: [round(stats[name][b]["mean"], 4) for stats in per_seed] for b in BINS}
            for name in layers},
        "positions_per_seed": {b: [stats[layers[0]][b]["count"] for stats in per_seed]
                               for b in BINS},
        "effective_dilation_by_scale": {
            "scale_edges": [round(lo + j * (hi - lo) / slices, 4) for j in range(slices + 1)],
            **{name: [round(float(np.mean([stats[name]["curve"][j] for stats in per_seed])), 4)
                      for j in range(slices)] for name in layers}},
    }
    plain = _model()
    plain.load_state_dict(done[seed, "plain"]["state"])
    deform = _model()
    convert_to_deformable(deform, offset_lr_mult=offset_lr_mult)
    deform.load_state_dict(done[seed, "deformable"]["state"])
    _figures(plain.eval(), deform.eval(), test, out)
    _dilation_figure(per_seed, layers, SCALES, out)
    results["seconds"] = round(time.perf_counter() - start, 1)
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    n = len(seed_list)
    print(f"\n| model | test accuracy, mean +- std over {n} seed{'s' * (n > 1)} | per seed |\n"
          f"| --- | --- | --- |", file=log)
    for m, label in (("plain", "plain CNN"), ("deformable", "last three 3x3 convs deformable")):
        print(f"| {label} | {results['accuracy_mean'][m]:.1%} +- {results['accuracy_std'][m]:.1%} "
              f"| {', '.join(f'{a:.1%}' for a in accuracy[m])} |", file=log)
    print(f"\n| effective dilation (mean +- std over positions) | {' | '.join(BINS)} |\n"
          f"| --- | --- | --- | --- | --- |", file=log)
    for name in layers:
        cells = [f"{results['effective_dilation'][name][b]:.2f} +- "
                 f"{results['effective_dilation_std'][name][b]:.2f}" for b in BINS]
        print(f"| {name} | {' | '.join(cells)} |", file=log)
    print(f"\nfigures in {out}/: sampling_locations.png, offset_field.png, "
          f"effective_dilation.png ({results['seconds']} s)", file=log)
    return results
