"""The JAX adapter on 2 host devices: deform_conv2d at (N=8, C=32, 28x28, 3x3,
pad 1, with mask and bias, float32), one device against a sharded jax.jit
(the batch sharded over a mesh of both devices, weights replicated) and
against jax.shard_map.

Interleaved medians (cudcn.cli.bench.interleaved_ms: shuffled rounds, one
warm-up), forward and forward+backward (the gradients of every argument),
in one process, printed as rows. The 2 host devices are XLA's
``--xla_force_host_platform_device_count=2``, set here before jax starts.
Run on a quiet machine:

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE .venv/bin/python tools/jax_sharding_bench.py
"""

import os
import sys

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                           + " --xla_force_host_platform_device_count=2").strip()
os.environ["JAX_PLATFORMS"] = "cpu"  # host devices, on a machine with a GPU too

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from jax.sharding import NamedSharding  # noqa: E402
from jax.sharding import PartitionSpec as P  # noqa: E402

import cudcn.adapters.jax as cj  # noqa: E402
from cudcn.cli.bench import interleaved_ms  # noqa: E402
from cudcn.testing import deform_conv2d_inputs  # noqa: E402

SHAPE = (8, 32, 28)  # N, C_in = C_out, H = W
NAMES = ("input", "offset", "weight", "bias", "mask")
PER_IMAGE = ("input", "offset", "mask")
ROUNDS = 15
SECONDS = 8.0


def _conv(input, offset, weight, bias, mask):
    return cj.deform_conv2d(input, offset, weight, bias, padding=1, mask=mask)


def _loss(*arrays):
    return 0.5 * jnp.sum(_conv(*arrays) ** 2)


_grads = jax.grad(_loss, argnums=tuple(range(len(NAMES))))


def _contenders(args, mesh):
    one = [jax.device_put(args[n], jax.devices()[0]) for n in NAMES]
    sharded = [jax.device_put(args[n], NamedSharding(mesh, P("d") if n in PER_IMAGE else P()))
               for n in NAMES]
    specs = tuple(P("d") if n in PER_IMAGE else P() for n in NAMES)
    mapped_forward = jax.shard_map(_conv, mesh=mesh, in_specs=specs, out_specs=P("d"))

    def mapped_loss(*arrays):
        return jax.lax.psum(_loss(*arrays), "d")

    mapped_grads = jax.grad(jax.shard_map(mapped_loss, mesh=mesh, in_specs=specs,
                                          out_specs=P()), argnums=tuple(range(len(NAMES))))
    forward, both = jax.jit(_conv), jax.jit(_grads)
    mapped_forward, mapped_both = jax.jit(mapped_forward), jax.jit(mapped_grads)

    def timed(fn, arrays):
        return lambda: jax.block_until_ready(fn(*arrays))

    return {
        "forward": {"one device": timed(forward, one), "sharded jit": timed(forward, sharded),
                    "shard_map": timed(mapped_forward, sharded)},
        "forward+backward": {"one device": timed(both, one), "sharded jit": timed(both, sharded),
                             "shard_map": timed(mapped_both, sharded)},
    }


def main(out=sys.stdout):
    if len(jax.devices()) < 2:
        raise SystemExit("needs 2 host devices (jax started before XLA_FLAGS was set?)")
    batch, channels, size = SHAPE
    args = deform_conv2d_inputs(batch=batch, in_channels=channels, out_channels=channels,
                                size=size, dtype=np.float32, offset_scale=1.0, seed=0)
    mesh = jax.make_mesh((2,), ("d",), devices=jax.devices()[:2])
    print(f"deform_conv2d N={batch}, C={channels}, {size}x{size}, 2 host devices (ms, median)",
          file=out)
    for name, calls in _contenders(args, mesh).items():
        medians = interleaved_ms(calls, ROUNDS, seconds=SECONDS)
        one = medians["one device"]
        cells = ", ".join(f"{k} {v:.2f}" + ("" if k == "one device" else f" ({v / one:.2f}x)")
                          for k, v in medians.items())
        print(f"  {name:<17} {cells}  [{medians.rounds} rounds]", file=out)


if __name__ == "__main__":
    main()
