"""``cudcn demo``: what a deformable layer learns, small enough for a CPU.

scikit-learn's bundled 8x8 digits (no download) are upsampled into a 40x40
canvas and randomly scaled, rotated and shifted. The same small CNN is
trained twice with the same seed, data order and steps: once plain, once with
its last three 3x3 convs made deformable by convert_to_deformable. It prints
both test accuracies and draws (1) the 9^3 sampling locations of one top-layer
unit through the three stacked layers, regular against learned, on test digits
of different scales, as in the paper's figure, and (2) the learned offsets.
"""

import copy
import json
import pathlib
import sys
import time

import numpy as np

CANVAS = 40


def _digits(seed, copies_train=3, copies_test=2):
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
        scale = torch.empty(n).uniform_(0.55, 1.35, generator=g)
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

    def block(c_in, c_out):
        return [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU()]

    return nn.Sequential(
        *block(1, 16), nn.MaxPool2d(2),
        *block(16, 32), nn.MaxPool2d(2),
        *block(32, 32), *block(32, 32), *block(32, 32),  # the last three: made deformable
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10),
    )


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


def run(out="cudcn-demo", steps=500, batch=32, seed=0, device="cpu", log=sys.stdout):
    import torch

    from ..adapters.torch import convert_to_deformable

    out = pathlib.Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("cudcn demo: --device cuda, but torch sees no CUDA device")
    start = time.perf_counter()
    train, test = _digits(seed)
    print(f"digits: {train[0].shape[0]} training and {test[0].shape[0]} test images "
          f"({CANVAS}x{CANVAS}, scale 0.55-1.35, rotation +-29 deg, shift +-5 px)", file=log)
    torch.manual_seed(seed)
    plain = _model()
    deform = copy.deepcopy(plain)
    replaced = convert_to_deformable(deform, offset_lr_mult=0.1)
    print(f"deformable: {', '.join(replaced)} -> DeformConv2dPack", file=log)
    plain = _train("plain", plain, train, steps, batch, seed, device, log).cpu()
    deform = _train("deformable", deform, train, steps, batch, seed, device, log).cpu()
    results = {"plain": _accuracy(plain, test, "cpu"), "deformable": _accuracy(deform, test, "cpu"),
               "steps": steps, "batch": batch, "seed": seed}
    _figures(plain, deform, test, out)
    results["seconds"] = round(time.perf_counter() - start, 1)
    (out / "results.json").write_text(json.dumps(results, indent=2))
    print(f"\n| model | test accuracy |\n| --- | --- |\n| plain CNN | {results['plain']:.1%} |\n"
          f"| last three 3x3 convs deformable | {results['deformable']:.1%} |", file=log)
    print(f"\nfigures in {out}/: sampling_locations.png, offset_field.png "
          f"({results['seconds']} s)", file=log)
    return results
