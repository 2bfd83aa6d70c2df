"""One rank of the DistributedDataParallel test (tests/test_ddp.py), and the
model, data and training loop that the single-process reference shares.

Run as ``python ddp_worker.py RANK WORLD PORT OUT_FILE``: joins a gloo
group on 127.0.0.1:PORT and trains twice, a DDP model and the same DDP model
under torch.compile, each on its contiguous share of every batch; saves each
run's per-step (all-reduced) gradients and final parameters.
"""

import datetime
import os
import sys

import torch
from torch import nn

from cudcn.adapters.torch import DeformConv2dPack, ModulatedDeformConv2dPack

STEPS = 3
BATCH = 4
TIMEOUT = datetime.timedelta(seconds=60)
# aot_eager: Dynamo's capture of the DDP model (split at DDP's buckets) and
# AOTAutograd through cudcn's registered ops, without Inductor's C++ build,
# which takes a minute on two busy cores and is covered by
# test_torch_adapter's fullgraph test. CUDCN_DDP_COMPILE_BACKEND=inductor
# runs it all.
COMPILE_BACKEND = os.environ.get("CUDCN_DDP_COMPILE_BACKEND", "aot_eager")


def make_model():
    """Both cudcn conv modules, with offset predictors that are not zero (a
    fresh Pack layer's are, which would leave the offset path untested)."""
    torch.manual_seed(0)
    model = nn.Sequential(
        DeformConv2dPack(3, 8, 3, padding=1),
        nn.ReLU(),
        ModulatedDeformConv2dPack(8, 8, 3, stride=2, padding=1, deform_groups=2),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 4),
    )
    for layer in (model[0], model[2]):
        nn.init.normal_(layer.conv_offset.weight, std=0.1)
        nn.init.normal_(layer.conv_offset.bias, std=0.5)
    return model.double()


def batch(step):
    """The whole batch of a step: (BATCH, 3, 10, 9) images and (BATCH, 4) targets."""
    g = torch.Generator().manual_seed(100 + step)
    return (torch.randn(BATCH, 3, 10, 9, generator=g, dtype=torch.float64),
            torch.randn(BATCH, 4, generator=g, dtype=torch.float64))


def train(model, parameters, shard=slice(None)):
    """STEPS of SGD with momentum on ``shard`` of each batch; returns each
    step's gradients (as the optimizer saw them) and the final parameters."""
    optimizer = torch.optim.SGD(parameters, lr=0.1, momentum=0.9)
    grads = []
    for step in range(STEPS):
        x, y = batch(step)
        optimizer.zero_grad()
        loss = nn.functional.mse_loss(model(x[shard]), y[shard])
        loss.backward()
        grads.append([p.grad.detach().clone() for p in parameters])
        optimizer.step()
    return grads, [p.detach().clone() for p in parameters]


def main(rank, world, port, out_file):
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    torch.distributed.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}",
                                         rank=rank, world_size=world, timeout=TIMEOUT)
    share = BATCH // world
    results = {}
    try:
        for run in ("eager", "compiled"):
            model = make_model()
            parameters = list(model.parameters())
            ddp = nn.parallel.DistributedDataParallel(model)
            if run == "compiled":
                ddp = torch.compile(ddp, backend=COMPILE_BACKEND)
            grads, params = train(ddp, parameters, slice(rank * share, (rank + 1) * share))
            results[run] = {"grads": grads, "params": params}
        torch.save(results, out_file)
    finally:
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    rank, world, port = (int(a) for a in sys.argv[1:4])
    main(rank, world, port, sys.argv[4])
