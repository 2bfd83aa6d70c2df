"""cudcn.adapters.jax in multi-process training: 2 processes joined by
``jax.distributed.initialize`` on the CPU (JAX's CPU collectives, gloo, on
127.0.0.1), one device each, train a small cudcn model data-parallel, each on
its half of every batch, and end with the parameters of one process training
on the whole batch, as tests/test_ddp.py does for torch. Twice: the step a
``jax.jit`` over the 2-process mesh (XLA divides the batch, cudcn's calls
divide with it), and a ``jax.shard_map`` with the gradients' ``pmean``.

Run as ``python test_jax_multiprocess.py RANK WORLD PORT OUT_FILE`` this file
is one rank (pytest's own process cannot join: jax is started there).
"""

import os
import pathlib
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

HERE = pathlib.Path(__file__).resolve()
WORLD = 2
STEPS = 3
BATCH = 4  # images a step, BATCH // WORLD a process
TIMEOUT = 120  # seconds for both ranks; they take about 10 on two busy cores
LEARNING_RATE = 0.05


def initial_params():
    """A DCN v2 layer whose offsets and mask a plain conv predicts from the
    image (not zero, so that the offset path trains), a ReLU, a mean pool and
    a linear head."""
    rng = np.random.default_rng(0)
    return {
        "predict_w": 0.1 * rng.standard_normal((27, 3, 3, 3)),  # 18 offsets, 9 mask logits
        "predict_b": 0.5 * rng.standard_normal(27),
        "deform_w": rng.standard_normal((8, 3, 3, 3)) / 5,
        "deform_b": np.zeros(8),
        "head_w": rng.standard_normal((8, 4)) / 3,
        "head_b": np.zeros(4),
    }


def batch(step):
    """The whole batch of a step: (BATCH, 3, 10, 9) images, (BATCH, 4) targets."""
    rng = np.random.default_rng(100 + step)
    return rng.standard_normal((BATCH, 3, 10, 9)), rng.standard_normal((BATCH, 4))


def loss(params, images, targets):
    """Mean squared error of the model on a batch (or, under shard_map, on a
    process's half of it)."""
    import jax
    import jax.numpy as jnp

    import cudcn.adapters.jax as cj

    predicted = jax.lax.conv_general_dilated(images, params["predict_w"], (1, 1),
                                             ((1, 1), (1, 1)))
    predicted = predicted + params["predict_b"][:, None, None]
    offset, mask = predicted[:, :18], jax.nn.sigmoid(predicted[:, 18:])
    features = cj.deform_conv2d(images, offset, params["deform_w"], params["deform_b"],
                                padding=1, mask=mask)
    pooled = jnp.mean(jax.nn.relu(features), axis=(2, 3))
    return jnp.mean((pooled @ params["head_w"] + params["head_b"] - targets) ** 2)


def sgd_step(params, images, targets, grad_fn):
    value, grads = grad_fn(params, images, targets)
    return {k: p - LEARNING_RATE * grads[k] for k, p in params.items()}, value


def train(step_fn, place_params, place_batch):
    """STEPS of SGD; returns the final parameters (as NumPy) and the losses."""
    params, losses = place_params(initial_params()), []
    for step in range(STEPS):
        images, targets = batch(step)
        params, value = step_fn(params, *place_batch(images, targets))
        losses.append(value)
    return params, losses


# --- a rank ------------------------------------------------------------------


def _rank_main(rank, world, port, out_file):
    import jax
    import jax.numpy as jnp
    from jax.sharding import NamedSharding
    from jax.sharding import PartitionSpec as P

    from cudcn.adapters.jax import _buffers

    jax.config.update("jax_enable_x64", True)
    jax.distributed.initialize(f"127.0.0.1:{port}", num_processes=world, process_id=rank,
                               initialization_timeout=60)
    seen = []
    real_run = _buffers.Call._run

    def recording_run(call, args, outs):
        seen.append(args[0].shape[0])
        return real_run(call, args, outs)

    _buffers.Call._run = recording_run
    # As the JAX guide's recipe: jax.make_mesh's default (Explicit) axes, set as
    # the mesh in use.
    mesh = jax.make_mesh((world,), ("d",))
    jax.set_mesh(mesh)
    share = BATCH // world
    replicated, divided = NamedSharding(mesh, P()), NamedSharding(mesh, P("d"))

    def place_params(params):
        return {k: jax.make_array_from_process_local_data(replicated, v)
                for k, v in params.items()}

    def place_batch(images, targets):  # this process's half only
        mine = slice(rank * share, (rank + 1) * share)
        return [jax.make_array_from_process_local_data(divided, a[mine])
                for a in (images, targets)]

    # A sharded jax.jit: XLA divides the batch over the mesh, the replicated
    # parameters' gradients are summed across the processes.
    jit_step = jax.jit(lambda p, x, y: sgd_step(p, x, y, jax.value_and_grad(loss)))

    # shard_map: each process's loss of its half, averaged over the
    # processes; the replicated parameters' gradients come out summed over
    # them (the transpose of their implicit cast to varying is a psum).
    def mean_loss(p, x, y):
        return jax.lax.pmean(loss(p, x, y), "d")

    def local_step(p, x, y):
        return sgd_step(p, x, y, jax.value_and_grad(mean_loss))

    map_step = jax.jit(jax.shard_map(local_step, mesh=mesh, in_specs=(P(), P("d"), P("d")),
                                     out_specs=(P(), P())))
    results = {}
    for name, step_fn in (("jit", jit_step), ("shard_map", map_step)):
        params, losses = train(step_fn, place_params, place_batch)
        for k, v in params.items():
            results[f"{name}/{k}"] = np.asarray(v.addressable_data(0))
        results[f"{name}/losses"] = np.array([float(jnp.asarray(v.addressable_data(0)))
                                              for v in losses])
    results["images_per_call"] = np.array(seen)
    np.savez(out_file, **results)
    jax.distributed.shutdown()


if __name__ == "__main__":
    rank, world, port = (int(a) for a in sys.argv[1:4])
    _rank_main(rank, world, port, sys.argv[4])


# --- the test ----------------------------------------------------------------

jax = pytest.importorskip("jax")


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    """What each rank saved: both run as subprocesses, killed after TIMEOUT seconds."""
    tmp = tmp_path_factory.mktemp("jax_multiprocess")
    # One CPU device a process, whatever the caller's XLA_FLAGS ask for.
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="")
    port = _free_port()
    files = [tmp / f"rank{r}.npz" for r in range(WORLD)]
    procs = [subprocess.Popen([sys.executable, str(HERE), str(r), str(WORLD), str(port),
                               str(files[r])], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True)
             for r in range(WORLD)]
    deadline = time.monotonic() + TIMEOUT
    try:
        for r, p in enumerate(procs):
            try:
                output, _ = p.communicate(timeout=max(deadline - time.monotonic(), 1))
            except subprocess.TimeoutExpired:
                pytest.fail(f"rank {r} ran over {TIMEOUT} s")
            assert p.returncode == 0, f"rank {r} failed:\n{output}"
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    return [dict(np.load(f)) for f in files]


@pytest.fixture(scope="module")
def single_process():
    """The same training in this process, on one device, on the whole batch."""
    with jax.enable_x64(True):
        params, losses = train(jax.jit(lambda p, x, y: sgd_step(p, x, y,
                                                                jax.value_and_grad(loss))),
                               lambda p: p, lambda x, y: (x, y))
        return ({k: np.asarray(v) for k, v in params.items()},
                np.array([float(v) for v in losses]))


@pytest.mark.parametrize("step", ["jit", "shard_map"])
def test_data_parallel_training_equals_single_process(ranks, single_process, step):
    params, losses = single_process
    start = initial_params()
    for rank in ranks:
        np.testing.assert_allclose(rank[f"{step}/losses"], losses, rtol=1e-10)
        for name, expected in params.items():
            assert np.abs(expected - start[name]).max() > 1e-4, f"{name} did not train"
            np.testing.assert_allclose(rank[f"{step}/{name}"], expected, rtol=1e-10,
                                       atol=1e-12, err_msg=name)
    # Every process holds the same parameters, bit for bit.
    for name in params:
        assert np.array_equal(ranks[0][f"{step}/{name}"], ranks[1][f"{step}/{name}"])


def test_each_process_runs_cudcn_on_its_half_of_the_batch(ranks):
    for rank in ranks:
        assert rank["images_per_call"].size and set(rank["images_per_call"]) == {BATCH // WORLD}
