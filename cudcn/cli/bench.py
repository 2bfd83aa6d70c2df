"""``cudcn bench``: cudcn's CPU speed and memory against its peers, measured
the way users meet it.

- torch is imported before cudcn, and cudcn runs both through
  ``cudcn.adapters.torch`` and through the NumPy API;
- the contenders of a row run in interleaved rounds, each round calling each
  once in a fresh random order (seeded), at least 9 rounds and as many more
  (up to 45) as fit in about 5 s, and a time is the median of its
  rounds, so that whatever else loads the machine meets every contender
  alike; ratios are of those medians, in one process. Not a rotating order:
  there each contender always follows the same one, and the NumPy call,
  following the adapter's call on the same arrays, found them in cache
  (at N=1, C=128, 28x28 the adapter measured 1.41x the NumPy API's time in
  rotating rounds, 1.16-1.19x in shuffled ones);
- a forward+backward through torch starts with the leaves' gradients set
  to None, as ``optimizer.zero_grad()`` leaves them in a training step;
- the measuring process runs without ``OPENBLAS_CORETYPE`` and
  ``OPENBLAS_L2_SIZE`` (set on some build machines, they slow NumPy's BLAS;
  users do not have them).

Peers: torchvision's ``deform_conv2d``, ``roi_align(aligned=True)`` and
``ps_roi_align``, a dense ``F.conv2d`` of the same shape (the floor), and
ONNX Runtime's ``DeformConv`` where onnxruntime is installed (CPU provider,
2 intra-op threads, spinning off). Memory, thread scaling and the
environment rows run each case in a fresh process; the thread and
environment cases three times each, round by round.
"""

import json
import os
import random
import statistics
import subprocess
import sys
import time

import numpy as np

# deform_conv2d: (N, C_in = C_out, H = W), 3x3, padding 1, with mask and bias.
CONV_SHAPES = ((2, 64, 56), (4, 256, 14), (1, 128, 28), (8, 256, 28))
MEMORY_SHAPE = (32, 256, 28)
SCALING_SHAPE = (2, 64, 56)
ROI_MAP = (2, 256, 50, 68)  # a stride-16 map of an 800x1088 image
ROIS = 512
# Deformable DETR at a 512x512 image (the levels of strides 8 to 64), 8
# heads of 32 channels, 4 points a level: the encoder's queries are every
# level's pixels, the decoder's 300 objects (gpu-plan's shapes too).
MSDA_LEVELS = ((64, 64), (32, 32), (16, 16), (8, 8))
MSDA_QUERIES = (("encoder", 5440), ("decoder", 300))
DETR_SIZE = 512  # the image of the end-to-end row
# DCNv3 at InternImage-T's stages: (H = W, C, G) at batch 2, 3x3, padding 1,
# groups of 16 channels (gpu-plan's shapes too); the block row and the
# memory row at the first stage.
DCNV3_STAGES = ((56, 64, 4), (28, 128, 8), (14, 256, 16))
CLEANED = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")


def _clean_env(extra=None):
    env = {k: v for k, v in os.environ.items() if k not in CLEANED}
    env.update(extra or {})
    return env


# A row runs more rounds than asked where its rounds are short: as many as
# fit in ROW_SECONDS, at most MAX_ROUNDS. With 10 rounds, the adapter's
# forward measured 0.82-1.19x the NumPy API's at N=2, C=64, 56x56 from one
# run to the next (0.92-1.12x at N=1, C=128, 28x28; same code, one
# process): a contender's time depends on which one ran before it, and 10
# random orders give each a different mix.
ROW_SECONDS = 5.0
MAX_ROUNDS = 45


class Medians(dict):
    """{name: median milliseconds}, and ``rounds``: how many rounds they are
    the medians of."""

    rounds = 0


def interleaved_ms(calls, rounds, seed=0, before=None, seconds=None, most=MAX_ROUNDS):
    """Medians of ``calls`` ({name: callable}) over ``rounds`` rounds after
    one warm-up round, each round in a random order. ``before``, if given,
    runs untimed before every call, the warm-up's too. With ``seconds``, as
    many more rounds, up to ``most``, as the warm-up round's time says fit
    in ``seconds``."""
    names = list(calls)
    start = time.perf_counter()
    for name in names:
        if before is not None:
            before()
        calls[name]()
    if seconds is not None:
        per_round = time.perf_counter() - start
        rounds = max(rounds, min(most, int(seconds / max(per_round, 1e-9))))
    times = {name: [] for name in names}
    order = random.Random(seed)
    for _ in range(rounds):
        for name in order.sample(names, len(names)):
            if before is not None:
                before()
            start = time.perf_counter()
            calls[name]()
            times[name].append(time.perf_counter() - start)
    medians = Medians((name, 1e3 * statistics.median(t)) for name, t in times.items())
    medians.rounds = rounds
    return medians


# --- contenders ---------------------------------------------------------------------

def _conv_inputs(batch, channels, size):
    from ..testing import deform_conv2d_inputs

    return deform_conv2d_inputs(batch=batch, in_channels=channels, out_channels=channels,
                                size=size, dtype=np.float32, offset_scale=1.0)


def _tensors(args, grad=False):
    import torch

    return {k: torch.from_numpy(v).requires_grad_(grad) for k, v in args.items()
            if isinstance(v, np.ndarray)}


def _conv_calls(shape):
    """The NumPy arrays, their tensors, and the keyword arguments of the torch
    calls: without gradients (ours) and with them (leaves)."""
    args = _conv_inputs(*shape)
    t, g = _tensors(args), _tensors(args, grad=True)
    ours, leaves = ({**{k: a[k] for k in ("input", "offset", "weight", "bias", "mask")},
                     "padding": 1} for a in (t, g))
    return args, t, ours, leaves


def _backward(y):
    y.backward(y.detach())


def _grads_to_none(tensors):
    """What ``optimizer.zero_grad()`` does before a training step (its
    default since torch 2.0): the backward then hands each leaf its gradient
    instead of adding it into the last one. Runs untimed before each call."""
    leaves = [t for t in tensors if getattr(t, "requires_grad", False)]

    def clear():
        for t in leaves:
            t.grad = None

    return clear


def ort_deform_conv(args):
    """An ONNX Runtime session computing the same deform_conv2d, or None
    without onnx and onnxruntime."""
    try:
        import onnxruntime
        from onnx import TensorProto, helper
    except ImportError:
        return None
    weight, offset = args["weight"], args["offset"]
    kh, kw = weight.shape[2:]
    feed = {"X": args["input"], "W": weight, "offset": offset, "B": args["bias"],
            "mask": args["mask"]}
    pad = args["padding"]
    node = helper.make_node("DeformConv", list(feed), ["Y"], kernel_shape=[kh, kw],
                            pads=[pad] * 4, strides=[1, 1], dilations=[1, 1], group=1,
                            offset_group=offset.shape[1] // (2 * kh * kw))
    values = [helper.make_tensor_value_info(n, TensorProto.FLOAT, list(a.shape))
              for n, a in feed.items()]
    graph = helper.make_graph([node], "deform_conv2d", values,
                              [helper.make_tensor_value_info("Y", TensorProto.FLOAT, None)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19)], ir_version=9)
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = 2
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = onnxruntime.InferenceSession(model.SerializeToString(), options,
                                           providers=["CPUExecutionProvider"])
    return lambda: session.run(None, feed)


def conv_rows(shape, rounds, seconds=None):
    import torch
    import torchvision

    import cudcn
    import cudcn.adapters.torch as ct

    args, t, ours, leaves = _conv_calls(shape)
    forward = {
        "cudcn (torch)": lambda: ct.deform_conv2d(**ours),
        "cudcn (NumPy)": lambda: cudcn.deform_conv2d(**args),
        "torchvision": lambda: torchvision.ops.deform_conv2d(**ours),
        "F.conv2d": lambda: torch.nn.functional.conv2d(t["input"], t["weight"], t["bias"],
                                                       padding=1),
    }
    ort = ort_deform_conv(args)
    if ort is not None:
        forward["ONNX Runtime"] = ort
    with torch.no_grad():
        fwd = interleaved_ms(forward, rounds, seconds=seconds)

    def numpy_both():
        cudcn.deform_conv2d_backward(cudcn.deform_conv2d(**args), **args)

    both = interleaved_ms({
        "cudcn (torch)": lambda: _backward(ct.deform_conv2d(**leaves)),
        "cudcn (NumPy)": numpy_both,
        "torchvision": lambda: _backward(torchvision.ops.deform_conv2d(**leaves)),
    }, rounds, before=_grads_to_none(leaves.values()),  # at least the forward's: 4 was noise
       seconds=seconds)
    return fwd, both


def _pooling_row(ours, peer, peer_name, rounds, leaves, seconds=None):
    """(forward ms, forward+backward ms, peer_name) of a pooling against its peer."""
    import torch

    with torch.no_grad():
        fwd = interleaved_ms({"cudcn": ours, peer_name: peer}, rounds, seconds=seconds)
    both = interleaved_ms({"cudcn": lambda: _backward(ours()),
                           peer_name: lambda: _backward(peer())}, max(3, rounds // 2),
                          before=_grads_to_none(leaves), seconds=seconds)
    return fwd, both, peer_name


def roi_rows(rounds, seconds=None):
    import torch
    import torchvision

    import cudcn.adapters.torch as ct
    from ..testing import deform_psroi_pool_inputs, deform_roi_pool_inputs

    batch, channels, h, w = ROI_MAP
    rows = {}
    for variant in ("no offset", "offset + mask"):
        args = deform_roi_pool_inputs(batch=batch, channels=channels, size=(h, w), rois=ROIS,
                                      output_size=7, spatial_scale=1 / 16, sampling_ratio=2,
                                      offset=variant != "no offset", mask=variant != "no offset",
                                      dtype=np.float32)
        x = torch.from_numpy(args["input"]).requires_grad_()
        rois = torch.from_numpy(args["rois"]).float()
        # Learned, as in mmdet's DeformRoIPoolPack: their gradients are part
        # of the backward (roi_align, without them, computes the input's only).
        offset, mask = (None if args[n] is None else torch.from_numpy(args[n]).requires_grad_()
                        for n in ("offset", "mask"))
        ours = lambda: ct.deform_roi_pool(x, rois, offset, 7, 1 / 16, 2, 0.1, mask)  # noqa: E731
        peer = lambda: torchvision.ops.roi_align(x, rois, 7, 1 / 16, 2, aligned=True)  # noqa: E731
        leaves = tuple(t for t in (x, offset, mask) if t is not None)
        rows[f"deform_roi_pool ({variant})"] = _pooling_row(ours, peer, "roi_align", rounds,
                                                            leaves, seconds)
    args = deform_psroi_pool_inputs(batch=batch, output_dim=21, group_size=7, pooled_size=7,
                                    num_classes=1, size=(h, w), rois=ROIS, spatial_scale=1 / 16,
                                    sample_per_part=4, trans_std=0.0, offset=False,
                                    dtype=np.float32)
    x = torch.from_numpy(args["input"]).requires_grad_()
    rois = torch.from_numpy(args["rois"]).float()
    ours = lambda: ct.deform_psroi_pool(x, rois, None, output_dim=21, group_size=7,  # noqa: E731
                                        pooled_size=7, sample_per_part=4, spatial_scale=1 / 16)
    peer = lambda: torchvision.ops.ps_roi_align(x, rois, 7, 1 / 16, 4)  # noqa: E731
    rows["deform_psroi_pool (R-FCN)"] = _pooling_row(ours, peer, "ps_roi_align", rounds,
                                                    (x,), seconds)
    return rows


def _msda_tensors(queries, grad):
    import torch

    from ..testing import ms_deform_attn_inputs

    args = ms_deform_attn_inputs(batch=1, queries=queries, heads=8, channels=32,
                                 shapes=MSDA_LEVELS, points=4, dtype=np.float32, seed=0)
    t = {k: torch.from_numpy(v) for k, v in args.items() if isinstance(v, np.ndarray)}
    for name in ("value", "sampling_locations", "attention_weights"):
        t[name].requires_grad_(grad)
    return t


def _msda_calls(t):
    """(cudcn through the adapter, the grid_sample path) on tensors ``t``."""
    import cudcn.adapters.torch as ct
    from ..testing import grid_sample_ms_deform_attn

    ours = lambda: ct.ms_deform_attn(t["value"], t["spatial_shapes"],  # noqa: E731
                                     t["level_start_index"], t["sampling_locations"],
                                     t["attention_weights"])
    peer = lambda: grid_sample_ms_deform_attn(t["value"], t["spatial_shapes"],  # noqa: E731
                                              t["sampling_locations"], t["attention_weights"])
    return ours, peer


def msda_rows(rounds, seconds=None):
    """{name: (forward, forward+backward, peer name)} of ms_deform_attn
    against the grid_sample path, at the encoder's and the decoder's shape."""
    rows = {}
    for name, queries in MSDA_QUERIES:
        t = _msda_tensors(queries, grad=True)
        ours, peer = _msda_calls(t)
        leaves = (t["value"], t["sampling_locations"], t["attention_weights"])
        rows[f"{name} (Lq={queries})"] = _pooling_row(ours, peer, "grid_sample", rounds, leaves,
                                                      seconds)
    return rows


def small_deformable_detr(d_model=128):
    """A small transformers Deformable DETR from a config (no download): a
    four-stage ResNet of 16-64 channels, 2 encoder and 2 decoder layers of
    ``d_model`` channels and 8 heads, 4 levels, 4 points, 100 queries."""
    import transformers

    backbone = transformers.ResNetConfig(embedding_size=16, hidden_sizes=[16, 32, 64, 64],
                                         depths=[1, 1, 1, 1],
                                         out_features=["stage2", "stage3", "stage4"])
    config = transformers.DeformableDetrConfig(
        backbone_config=backbone, use_timm_backbone=False, use_pretrained_backbone=False,
        d_model=d_model, encoder_layers=2, decoder_layers=2, encoder_attention_heads=8,
        decoder_attention_heads=8, encoder_ffn_dim=2 * d_model, decoder_ffn_dim=2 * d_model,
        num_queries=100, num_feature_levels=4, encoder_n_points=4, decoder_n_points=4,
        num_labels=91, dropout=0.0, attention_dropout=0.0, activation_dropout=0.0)
    return transformers.DeformableDetrForObjectDetection(config)


def detr_rows(rounds, seconds=None):
    """(forward, training step) of a small Deformable DETR at a DETR_SIZE image,
    default (grid_sample) against kernelized, or None without transformers
    and kernels."""
    if not (_importable("transformers") and _importable("kernels")):
        return None
    import copy

    import torch

    import cudcn.adapters.torch as ct

    torch.manual_seed(0)
    default = small_deformable_detr()
    kernelized = ct.kernelize(copy.deepcopy(default))
    pixels = torch.randn(1, 3, DETR_SIZE, DETR_SIZE)

    def forward(model):
        def run():
            with torch.no_grad():
                model.eval()(pixel_values=pixels)
        return run

    def step(model):
        def run():
            out = model.train()(pixel_values=pixels)
            (out.logits.sum() + out.pred_boxes.sum()).backward()
        return run

    def zero_grad():
        for model in (default, kernelized):
            model.zero_grad(set_to_none=True)

    fwd = interleaved_ms({"cudcn": forward(kernelized), "grid_sample": forward(default)},
                         rounds, seconds=seconds)
    both = interleaved_ms({"cudcn": step(kernelized), "grid_sample": step(default)},
                          max(3, rounds // 2), before=zero_grad, seconds=seconds)
    return fwd, both


# --- fresh processes ----------------------------------------------------------------------

def _dcnv3_tensors(size, channels, groups, grad):
    import torch

    from ..testing import dcnv3_inputs

    args = dcnv3_inputs(batch=2, size=(size, size), groups=groups,
                        group_channels=channels // groups, dtype=np.float32, seed=0)
    return {k: torch.from_numpy(v).requires_grad_(grad) if isinstance(v, np.ndarray) else v
            for k, v in args.items()}


def _dcnv3_calls(t):
    """(cudcn through the adapter, InternImage's grid_sample path) on ``t``."""
    import cudcn.adapters.torch as ct
    from ..testing import grid_sample_dcnv3

    return lambda: ct.dcnv3(**t), lambda: grid_sample_dcnv3(**t)


def dcnv3_rows(rounds, seconds=None):
    """{name: (forward, forward+backward, peer name)} of dcnv3 against the
    grid_sample path at InternImage-T's stages."""
    rows = {}
    for size, channels, groups in DCNV3_STAGES:
        t = _dcnv3_tensors(size, channels, groups, grad=True)
        ours, peer = _dcnv3_calls(t)
        leaves = (t["input"], t["offset"], t["mask"])
        rows[f"2, {channels}, {size}x{size}, G={groups}"] = _pooling_row(
            ours, peer, "grid_sample", rounds, leaves, seconds)
    return rows


def _dcnv3_blocks(channels, groups):
    """(cudcn's DCNv3 module, the same module with the grid_sample core, as
    InternImage's DCNv3_pytorch), with the same parameters."""
    import torch

    import cudcn.adapters.torch as ct
    from ..testing import grid_sample_dcnv3

    class GridSampleDCNv3(ct.DCNv3):
        def sample(self, x, offset, mask):
            return grid_sample_dcnv3(x, offset, mask, self.kernel_size, self.stride, self.pad,
                                     self.dilation, self.group, self.offset_scale,
                                     bool(self.remove_center))

    torch.manual_seed(0)
    ours = ct.DCNv3(channels=channels, group=groups)
    theirs = GridSampleDCNv3(channels=channels, group=groups)
    with torch.no_grad():  # offsets off their zero start, as after training
        ours.offset.weight.normal_(0, 0.1)
        ours.mask.weight.normal_(0, 0.1)
    theirs.load_state_dict(ours.state_dict())
    return ours, theirs


def dcnv3_block_rows(rounds, seconds=None):
    """Forward and forward+backward (input and every parameter) of an
    InternImage-T-sized DCNv3 layer, projections included, cudcn's module
    against the pure-PyTorch one, at the first stage."""
    import torch

    size, channels, groups = DCNV3_STAGES[0]
    ours, theirs = _dcnv3_blocks(channels, groups)
    x = torch.randn(2, size, size, channels, generator=torch.Generator().manual_seed(0))
    x.requires_grad_(True)
    leaves = (x, *ours.parameters(), *theirs.parameters())
    return _pooling_row(lambda: ours(x), lambda: theirs(x), "grid_sample", rounds, leaves,
                        seconds)


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


def child(kind, batch, channels, size, workspace_mib=None):
    """Runs in a fresh process: one measurement, as a dict."""
    if kind in ("msda-memory", "msda-peer-memory"):
        return _msda_memory(kind == "msda-peer-memory")
    if kind in ("dcnv3-memory", "dcnv3-peer-memory"):
        return _dcnv3_memory(kind == "dcnv3-peer-memory")
    if kind.startswith("env-torch-first"):
        import torch  # noqa: F401
    import cudcn

    if kind == "env-cudcn-first":
        import torch  # noqa: F401
    if workspace_mib is not None:
        cudcn.set_workspace_limit(int(workspace_mib * 2**20))
    args = _conv_inputs(batch, channels, size)
    if kind in ("cudcn-memory", "torch-memory"):
        if kind == "cudcn-memory":
            small = _conv_inputs(1, 4, 8)
            cudcn.deform_conv2d_backward(cudcn.deform_conv2d(**small), **small)
            before = _peak_rss_mib()
            cudcn.deform_conv2d_backward(cudcn.deform_conv2d(**args), **args)
        else:
            import torchvision

            def fb(a):
                g = _tensors(a, grad=True)
                _backward(torchvision.ops.deform_conv2d(g["input"], g["offset"], g["weight"],
                                                        g["bias"], padding=1, mask=g["mask"]))

            fb(_conv_inputs(1, 4, 8))
            before = _peak_rss_mib()
            fb(args)
        return {"mib": _peak_rss_mib() - before}
    calls = {"forward": lambda: cudcn.deform_conv2d(**args),
             "forward+backward": lambda: cudcn.deform_conv2d_backward(
                 cudcn.deform_conv2d(**args), **args)}
    if kind == "env-ort-session":
        session = ort_deform_conv(args)
        if session is not None:
            session()
    before = None
    if kind == "env-numpy-blas":
        a = np.random.default_rng(0).random((512, 512), dtype=np.float32)

        def before():  # wakes OpenBLAS's threads; the GEMM's own time is not cudcn's
            a @ a
    return interleaved_ms(calls, 9, before=before)


def _msda_memory(peer):
    """Peak memory growth of the encoder's forward+backward (cudcn through
    the adapter, or the grid_sample path), after a small warm-up call."""
    small = _msda_tensors(10, grad=True)
    _backward(_msda_calls(small)[peer]())
    t = _msda_tensors(MSDA_QUERIES[0][1], grad=True)
    before = _peak_rss_mib()
    _backward(_msda_calls(t)[peer]())
    return {"mib": _peak_rss_mib() - before}


def _dcnv3_memory(peer):
    """Peak memory growth of dcnv3's forward+backward at the first stage
    (cudcn through the adapter, or the grid_sample path), after a small
    warm-up call."""
    _backward(_dcnv3_calls(_dcnv3_tensors(8, 16, 1, grad=True))[peer]())
    t = _dcnv3_tensors(*DCNV3_STAGES[0], grad=True)
    before = _peak_rss_mib()
    _backward(_dcnv3_calls(t)[peer]())
    return {"mib": _peak_rss_mib() - before}


def _in_subprocess(kind, shape, threads=None, workspace_mib=None):
    extra = {} if threads is None else {"OMP_NUM_THREADS": str(threads)}
    code = (f"import json, cudcn.cli.bench as b; "
            f"print(json.dumps(b.child({kind!r}, *{tuple(shape)!r}, {workspace_mib!r})))")
    result = subprocess.run([sys.executable, "-c", code], env=_clean_env(extra),
                            capture_output=True, text=True, check=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


def processes_interleaved(cases, repeats=3):
    """{name: {field: median}} of fresh-process measurements, each case
    ({name: (kind, threads)}) run ``repeats`` times, round by round, so that
    the machine's drift over the minute they take meets every case alike
    (one process each, in sequence, read the ORT-session case at 1.23x and
    then 0.97x of the same baseline in two runs)."""
    runs = {name: [] for name in cases}
    for _ in range(repeats):
        for name, (kind, threads) in cases.items():
            runs[name].append(_in_subprocess(kind, SCALING_SHAPE, threads=threads))
    return {name: {field: statistics.median(r[field] for r in results)
                   for field in results[0]}
            for name, results in runs.items()}


# --- the report ---------------------------------------------------------------------------

def _table(header, rows):
    text = [header] + [tuple("-" if v is None else (f"{v:.2f}" if isinstance(v, float) else str(v))
                             for v in row) for row in rows]
    widths = [max(len(r[i]) for r in text) for i in range(len(header))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in text)


def profile_columns(shape, rounds):
    """{"forward": phases, "backward": phases} of deform_conv2d through the
    torch adapter, calls back to back (cudcn.cli.profile)."""
    import torch

    import cudcn.adapters.torch as ct

    from . import profile

    _, _, ours, leaves = _conv_calls(shape)
    with torch.no_grad():
        forward = profile.phases(lambda: ct.deform_conv2d(**ours), rounds)
    clear = _grads_to_none(leaves.values())

    def output():  # untimed: the backward's argument
        clear()
        return (ct.deform_conv2d(**leaves),)

    backward = profile.phases(_backward, rounds, before=output)
    return {"forward": forward, "backward": backward}


def _peer_rows(measured, record):
    """Table rows of {name: (forward, forward+backward, peer name)}, two a
    name, each recorded in ``record``."""
    rows = []
    for name, (fwd, both, peer) in measured.items():
        record[name] = {"forward": fwd, "forward+backward": both}
        for label, times in (("forward", fwd), ("forward+backward", both)):
            rows.append((name, label, times["cudcn"], peer, times[peer],
                         times[peer] / times["cudcn"], times.rounds))
    return rows


def measure(rounds=9, conv_shapes=CONV_SHAPES, memory=True, threads=True, environment=True,
            rois=True, msda=True, dcnv3=True, profile_shape=SCALING_SHAPE, seconds=ROW_SECONDS,
            out=sys.stdout):
    """Every row, printed as they come; returns them as a dict. A row runs
    at least ``rounds`` rounds, more where they fit in ``seconds`` (None:
    exactly ``rounds``)."""
    import torch  # noqa: F401 - first, as users import it

    result = {"conv": {}, "roi": {}, "msda": {}, "dcnv3": {}}
    header = ("op", "shape (N, C, HxW)", "cudcn torch ms", "cudcn NumPy ms", "torchvision ms",
              "F.conv2d ms", "ORT ms", "tv / cudcn", "cudcn / conv2d", "cudcn / ORT",
              "torch / NumPy", "rounds")
    rows = []
    for shape in conv_shapes:
        fwd, both = conv_rows(shape, rounds, seconds)
        result["conv"][shape] = {"forward": fwd, "forward+backward": both}
        name = f"{shape[0]}, {shape[1]}, {shape[2]}x{shape[2]}"
        ours = fwd["cudcn (torch)"]
        rows.append(("forward", name, ours, fwd["cudcn (NumPy)"], fwd["torchvision"],
                     fwd["F.conv2d"], fwd.get("ONNX Runtime"), fwd["torchvision"] / ours,
                     ours / fwd["F.conv2d"],
                     ours / fwd["ONNX Runtime"] if "ONNX Runtime" in fwd else None,
                     ours / fwd["cudcn (NumPy)"], fwd.rounds))
        ours = both["cudcn (torch)"]
        rows.append(("forward+backward", name, ours, both["cudcn (NumPy)"], both["torchvision"],
                     None, None, both["torchvision"] / ours, None, None,
                     ours / both["cudcn (NumPy)"], both.rounds))
    print("deform_conv2d, float32, 3x3, padding 1, with mask and bias (medians of "
          "interleaved rounds, as many as the last column says)", file=out)
    print(_table(header, rows), file=out)
    if profile_shape:
        from . import profile

        columns = profile_columns(profile_shape, 3 * rounds)
        result["profile"] = columns
        n, c, size = profile_shape
        print(f"\nwhere the time goes at N={n}, C={c}, {size}x{size}, through the torch adapter "
              f"(calls back to back, medians of {3 * rounds}; the parts' medians need not add "
              "up to the total's)", file=out)
        print(_table(("phase", "forward ms", "backward ms"), profile.table(columns)), file=out)
    if rois:
        rows = _peer_rows(roi_rows(rounds, seconds), result["roi"])
        print(f"\nRoI pooling, float32, {ROIS} RoIs on {ROI_MAP}, 7x7, through the torch adapter",
              file=out)
        print(_table(("op", "pass", "cudcn ms", "peer", "peer ms", "peer / cudcn", "rounds"),
                     rows), file=out)
    if msda:
        rows = _peer_rows(msda_rows(rounds, seconds), result["msda"])
        print("\nms_deform_attn, float32, Deformable DETR at 512x512 (levels 64x64 .. 8x8, 8 "
              "heads of 32 channels, 4 points a level), through the torch adapter, against the "
              "grid_sample path", file=out)
        print(_table(("queries", "pass", "cudcn ms", "peer", "peer ms", "peer / cudcn", "rounds"),
                     rows), file=out)
        detr = detr_rows(rounds, seconds)
        if detr is not None:
            fwd, both = detr
            result["msda"]["deformable_detr"] = {"forward": fwd, "training step": both}
            print(_table(("model", "pass", "kernelized ms", "default ms", "default / kernelized",
                          "rounds"),
                         [("small Deformable DETR, 512x512", "forward", fwd["cudcn"],
                           fwd["grid_sample"], fwd["grid_sample"] / fwd["cudcn"], fwd.rounds),
                          ("small Deformable DETR, 512x512", "training step", both["cudcn"],
                           both["grid_sample"], both["grid_sample"] / both["cudcn"],
                           both.rounds)]), file=out)
        if memory:
            ours = _in_subprocess("msda-memory", MEMORY_SHAPE)["mib"]
            theirs = _in_subprocess("msda-peer-memory", MEMORY_SHAPE)["mib"]
            result["msda"]["memory"] = {"cudcn": ours, "grid_sample": theirs}
            print(f"peak memory growth of the encoder's forward+backward: cudcn {ours:.0f} MiB, "
                  f"grid_sample {theirs:.0f} MiB, ratio {ours / max(theirs, 1e-9):.2f}", file=out)
    if dcnv3:
        rows = _peer_rows(dcnv3_rows(rounds, seconds), result["dcnv3"])
        rows += _peer_rows({"DCNv3 layer, 2, 64, 56x56, G=4": dcnv3_block_rows(rounds, seconds)},
                           result["dcnv3"])
        print("\ndcnv3, float32, InternImage-T's stages (N, C, HxW, groups of 16 channels; "
              "3x3, padding 1), through the torch adapter, against the grid_sample path "
              "(InternImage's dcnv3_core_pytorch); the layer with its projections, depthwise "
              "conv and softmax, cudcn's module against the same module on the grid_sample "
              "path", file=out)
        print(_table(("shape", "pass", "cudcn ms", "peer", "peer ms", "peer / cudcn", "rounds"),
                     rows), file=out)
        if memory:
            ours = _in_subprocess("dcnv3-memory", MEMORY_SHAPE)["mib"]
            theirs = _in_subprocess("dcnv3-peer-memory", MEMORY_SHAPE)["mib"]
            result["dcnv3"]["memory"] = {"cudcn": ours, "grid_sample": theirs}
            print(f"peak memory growth of forward+backward at 2, 64, 56x56: cudcn {ours:.0f} "
                  f"MiB, grid_sample {theirs:.0f} MiB, ratio {ours / max(theirs, 1e-9):.2f}",
                  file=out)
    if memory:
        ours = _in_subprocess("cudcn-memory", MEMORY_SHAPE)["mib"]
        theirs = _in_subprocess("torch-memory", MEMORY_SHAPE)["mib"]
        result["memory"] = {"cudcn": ours, "torchvision": theirs}
        print(f"\npeak memory growth of forward+backward at N={MEMORY_SHAPE[0]}, "
              f"C={MEMORY_SHAPE[1]}, {MEMORY_SHAPE[2]}x{MEMORY_SHAPE[2]}: cudcn {ours:.0f} MiB "
              f"(default workspace), torchvision {theirs:.0f} MiB, ratio {ours / theirs:.2f}",
              file=out)
    if threads:
        timed = processes_interleaved({"1": ("time", 1), "2": ("time", 2)})
        one, two = timed["1"], timed["2"]
        result["threads"] = timed
        print(f"1 -> 2 threads at N=2, C=64, 56x56 (NumPy API; medians of 3 fresh processes "
              f"each, interleaved): forward "
              f"{one['forward']:.1f} -> {two['forward']:.1f} ms ({one['forward'] / two['forward']:.2f}x), "
              f"forward+backward {one['forward+backward']:.1f} -> {two['forward+backward']:.1f} ms "
              f"({one['forward+backward'] / two['forward+backward']:.2f}x)", file=out)
    if environment:
        kinds = ("time", "env-torch-first", "env-cudcn-first", "env-ort-session", "env-numpy-blas")
        times = processes_interleaved({k: (k, None) for k in kinds})
        result["environment"] = times
        base = times["time"]
        print("\nthe NumPy API at N=2, C=64, 56x56 in fresh processes (medians of 3 each, "
              "interleaved), as a share of its time alone (forward / forward+backward):",
              file=out)
        labels = {"env-torch-first": "torch imported first", "env-cudcn-first":
                  "cudcn imported first, then torch", "env-ort-session":
                  "an ONNX Runtime session alive", "env-numpy-blas":
                  "a NumPy GEMM before each call"}
        for kind, label in labels.items():
            t = times[kind]
            print(f"  {label:34s} {t['forward'] / base['forward']:.2f} / "
                  f"{t['forward+backward'] / base['forward+backward']:.2f}", file=out)
    return result


def run(rounds=9, memory=True, threads=True, environment=True, profile=True, out=sys.stdout):
    """Measure in a fresh process without the OpenBLAS variables (as users run)."""
    missing = [m for m in ("torch", "torchvision") if _importable(m) is False]
    if missing:
        print(f"cudcn bench compares with torchvision: pip install torch torchvision "
              f"({', '.join(missing)} missing)", file=out)
        return 1
    code = (f"import sys, cudcn.cli.bench as b; b.measure(rounds={rounds}, memory={memory}, "
            f"threads={threads}, environment={environment}, "
            f"profile_shape={SCALING_SHAPE if profile else None})")
    result = subprocess.run([sys.executable, "-c", code], env=_clean_env(), text=True,
                            capture_output=True)
    print(result.stdout, end="", file=out)
    if result.returncode:
        print(result.stderr, file=sys.stderr)
    return result.returncode


def _importable(name):
    import importlib.util

    return importlib.util.find_spec(name) is not None
