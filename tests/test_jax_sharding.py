"""cudcn.adapters.jax on 2 host devices: jax.shard_map's gradients against
the full batch's, for every op, layout and check_vma; a wrong out_specs;
jax.jit over a mesh (each device runs its own images, no all-gather, results
equal the unsharded call's); the JAX guide's "JAX at scale" recipes.

The devices are XLA's ``--xla_force_host_platform_device_count=2``, which
counts only if set before jax starts its CPU backend; pytest's process may
have started it already (every JAX test module shares it). So the cases run
in a child process, this file run as a script (``python
test_jax_sharding.py OUT.json``): it runs every case, each caught on its own,
and writes what each found; the tests below assert on that.
"""

import json
import os
import pathlib
import re
import subprocess
import sys
import threading

import numpy as np
import pytest

HERE = pathlib.Path(__file__).resolve()
JAX_GUIDE = HERE.parents[1] / "docs" / "guides" / "jax.md"
TIMEOUT = 240  # seconds for the whole child; it takes about 20 on two busy cores
DEVICES = 2
EXACT = dict(rtol=1e-9, atol=1e-11)

# The arrays of each op, and those JAX differentiates.
ARRAYS = {
    "deform_conv2d": ("input", "offset", "weight", "bias", "mask"),
    "deform_roi_pool": ("input", "rois", "offset", "mask"),
    "deform_psroi_pool": ("input", "rois", "offset"),
    "ms_deform_attn": ("value", "sampling_locations", "attention_weights"),
    "dcnv3": ("input", "offset", "mask"),
    "dcnv4": ("input", "offset_mask"),
}
NOT_DIFFERENTIABLE = {"rois"}

# shard_map layouts: {array: the axis divided over the devices} (the others
# are replicated) and the output's divided axis. "replicated": every array
# whole on each device, the output too, and each device weights it by a
# cotangent of its own (so the gradient is the sum of the devices').
LAYOUTS = {
    ("deform_conv2d", "images"): ({"input": 0, "offset": 0, "mask": 0}, 0),
    ("deform_conv2d", "replicated"): ({}, None),
    ("deform_roi_pool", "rois"): ({"rois": 0, "offset": 0, "mask": 0}, 0),
    ("deform_roi_pool", "replicated"): ({}, None),
    ("deform_psroi_pool", "rois"): ({"rois": 0, "offset": 0}, 0),
    ("deform_psroi_pool", "replicated"): ({}, None),
    ("ms_deform_attn", "images"): (
        {"value": 0, "sampling_locations": 0, "attention_weights": 0}, 0),
    ("ms_deform_attn", "queries"): ({"sampling_locations": 1, "attention_weights": 1}, 1),
    ("ms_deform_attn", "replicated"): ({}, None),
    ("dcnv3", "images"): ({"input": 0, "offset": 0, "mask": 0}, 0),
    ("dcnv3", "replicated"): ({}, None),
    ("dcnv4", "images"): ({"input": 0, "offset_mask": 0}, 0),
    ("dcnv4", "replicated"): ({}, None),
}
# The ops whose every per-image array has the image axis N first: under a
# sharded jax.jit each device runs its own images.
DIVIDED_OPS = ("deform_conv2d", "ms_deform_attn", "dcnv3", "dcnv4")
PER_IMAGE = {"input", "offset", "mask", "offset_mask", "value", "sampling_locations",
             "attention_weights"}
SHARD_MAP_CASES = [f"shard_map/{op}/{layout}/check_vma={check}"
                   for op, layout in LAYOUTS for check in (True, False)]
JIT_CASES = [f"jit/{op}/auto" for op in DIVIDED_OPS] + ["jit/deform_conv2d/explicit"]


def _inputs(op):
    """The op's arguments: N = 4 images (2 a device), RoI pooling 6 rois."""
    from cudcn import testing

    if op == "deform_conv2d":
        return testing.deform_conv2d_inputs(batch=4, in_channels=4, out_channels=4, groups=2,
                                            offset_groups=2, size=(6, 7))
    if op == "deform_roi_pool":
        return testing.deform_roi_pool_inputs(rois=6, mask=True, output_size=(2, 3))
    if op == "deform_psroi_pool":
        return testing.deform_psroi_pool_inputs(rois=6)
    if op == "ms_deform_attn":
        return testing.ms_deform_attn_inputs(batch=4, queries=6)
    return testing.dcnv3_inputs(batch=4, size=(6, 5), packed=op == "dcnv4")


# --- the child ---------------------------------------------------------------


class _Child:
    """The cases, on 2 host devices, float64."""

    def __init__(self):
        import jax
        from jax.sharding import PartitionSpec

        import cudcn.adapters.jax as cj
        from cudcn.adapters.jax import _buffers

        jax.config.update("jax_enable_x64", True)
        self.jax, self.P, self.cj = jax, PartitionSpec, cj
        self.mesh = jax.make_mesh((DEVICES,), ("d",), axis_types=(jax.sharding.AxisType.Auto,))
        self.calls, self.lock = [], threading.Lock()
        real_run = _buffers.Call._run

        def recording_run(call, args, outs):
            with self.lock:
                self.calls.append({"fn": call.fn.__name__,
                                   "shapes": {n: list(a.shape) for n, a in zip(call.names, args)}})
            return real_run(call, args, outs)

        _buffers.Call._run = recording_run

    def function(self, op):
        """(names of the arrays given, the arrays, f(*arrays))."""
        args = _inputs(op)
        names = tuple(n for n in ARRAYS[op] if args.get(n) is not None)
        params = {k: v for k, v in args.items() if k not in ARRAYS[op]}
        fn = getattr(self.cj, op)
        return names, [args[n] for n in names], lambda *a: fn(**dict(zip(names, a)), **params)

    def spec(self, axis):
        return self.P() if axis is None else self.P(*([None] * axis), "d")

    def shard_map_gradients(self, op, layout, check_vma):
        """Each differentiable array's gradient of the psum of the devices'
        losses, against the full batch's: [max |error|, max |full|]."""
        jax, jnp = self.jax, self.jax.numpy
        names, arrays, f = self.function(op)
        divided, out_axis = LAYOUTS[op, layout]
        out_shape = np.shape(f(*arrays))
        rng = np.random.default_rng(3)
        if out_axis is None:  # one cotangent a device, of the whole output
            cotangent = rng.standard_normal((DEVICES, *out_shape))
            full_cotangent = cotangent.sum(0)
        else:
            cotangent = full_cotangent = rng.standard_normal(out_shape)
        wrt = tuple(i for i, n in enumerate(names) if n not in NOT_DIFFERENTIABLE)
        full = jax.grad(lambda *a: jnp.sum(f(*a) * full_cotangent), argnums=wrt)(*arrays)

        def device_loss(*a):
            *a, g = a
            return jax.lax.psum(jnp.sum(f(*a) * (g[0] if out_axis is None else g)), "d")

        specs = tuple(self.spec(divided.get(n)) for n in names)
        loss = jax.shard_map(device_loss, mesh=self.mesh, out_specs=self.P(),
                             in_specs=(*specs, self.spec(0 if out_axis is None else out_axis)),
                             check_vma=check_vma)
        grads = jax.jit(jax.grad(loss, argnums=wrt))(*arrays, cotangent)
        return {names[i]: [float(np.abs(np.asarray(g) - np.asarray(e)).max()),
                           float(np.abs(np.asarray(e)).max())]
                for i, g, e in zip(wrt, grads, full)}

    def wrong_out_specs(self, op, layout):
        """The error of out_specs=P() for a result that differs by device."""
        jax = self.jax
        names, arrays, f = self.function(op)
        divided, _ = LAYOUTS[op, layout]
        mapped = jax.shard_map(f, mesh=self.mesh, out_specs=self.P(),
                               in_specs=tuple(self.spec(divided.get(n)) for n in names))
        try:
            jax.jit(mapped).trace(*arrays)
        except Exception as e:  # noqa: BLE001 - reported to the test
            return f"{type(e).__name__}: {e}"
        return None

    def sharded_jit(self, op, mesh_kind):
        """jax.jit over a mesh with the images divided: what each call saw,
        the results' errors against the unsharded call's, and whether the
        compiled programs gather or reduce."""
        jax, jnp = self.jax, self.jax.numpy
        from jax.sharding import NamedSharding

        names, arrays, f = self.function(op)
        mesh = self.mesh
        if mesh_kind == "explicit":
            mesh = jax.make_mesh((DEVICES,), ("d",), axis_types=(jax.sharding.AxisType.Explicit,))
        rng = np.random.default_rng(5)
        cotangent = rng.standard_normal(np.shape(f(*arrays)))
        wrt = tuple(range(len(names)))

        def loss(*a):
            return jnp.sum(f(*a) * cotangent)

        expected_out = np.asarray(f(*arrays))
        expected_grads = jax.grad(loss, argnums=wrt)(*arrays)
        with jax.set_mesh(mesh):
            sharded = [jax.device_put(a, NamedSharding(mesh, self.P("d") if n in PER_IMAGE
                                                       else self.P()))
                       for n, a in zip(names, arrays)]
            forward, gradient = jax.jit(f), jax.jit(jax.grad(loss, argnums=wrt))
            self.calls.clear()
            out = jax.block_until_ready(forward(*sharded))  # the calls have run
            forward_calls = list(self.calls)
            self.calls.clear()
            grads = jax.block_until_ready(gradient(*sharded))
            backward_calls = list(self.calls)
            forward_hlo = forward.lower(*sharded).compile().as_text()
            gradient_hlo = gradient.lower(*sharded).compile().as_text()
        return {
            "forward_calls": forward_calls, "backward_calls": backward_calls,
            "full_shapes": {n: list(a.shape) for n, a in zip(names, arrays)},
            "out_spec": str(out.sharding.spec),
            "forward_error": float(np.abs(np.asarray(out) - expected_out).max()),
            "gradient_errors": {n: [float(np.abs(np.asarray(g) - np.asarray(e)).max()),
                                    float(np.abs(np.asarray(e)).max())]
                                for n, g, e in zip(names, grads, expected_grads)},
            "forward_gathers": "all-gather" in forward_hlo,
            "gradient_gathers": "all-gather" in gradient_hlo,
            "gradient_reduces": "all-reduce" in gradient_hlo,
        }

    def whole_on_each_device(self, op, batch_sharded_arrays, transform=None):
        """An op jax.jit runs whole on each device (its arrays do not divide
        over the images): the errors of its result and of the gradients."""
        jax, jnp = self.jax, self.jax.numpy
        from jax.sharding import NamedSharding

        names, arrays, f = self.function(op)
        if transform is not None:
            names, arrays, f = transform(names, arrays, f)
        cotangent = np.random.default_rng(6).standard_normal(np.shape(f(*arrays)))
        wrt = tuple(i for i, n in enumerate(names) if n not in NOT_DIFFERENTIABLE)

        def loss(*a):
            return jnp.sum(f(*a) * cotangent)

        expected_out, expected_grads = f(*arrays), jax.grad(loss, argnums=wrt)(*arrays)
        sharded = [jax.device_put(a, NamedSharding(self.mesh, self.P("d")
                                                   if n in batch_sharded_arrays else self.P()))
                   for n, a in zip(names, arrays)]
        self.calls.clear()
        out = jax.block_until_ready(jax.jit(f)(*sharded))
        grads = jax.block_until_ready(jax.jit(jax.grad(loss, argnums=wrt))(*sharded))
        errors = [float(np.abs(np.asarray(out) - np.asarray(expected_out)).max())]
        errors += [float(np.abs(np.asarray(g) - np.asarray(e)).max())
                   for g, e in zip(grads, expected_grads)]
        return {"errors": errors, "calls": list(self.calls),
                "full_shapes": {n: list(np.shape(a)) for n, a in zip(names, arrays)}}

    def vmap_under_sharded_jit(self):
        """jax.vmap over a divided axis: each device runs its own elements."""
        def stack(names, arrays, f):
            batched = [np.stack([a, 2 * a]) if n in PER_IMAGE else a
                       for n, a in zip(names, arrays)]
            in_axes = tuple(0 if n in PER_IMAGE else None for n in names)
            return names, batched, self.jax.vmap(f, in_axes=in_axes)

        return self.whole_on_each_device("deform_conv2d", PER_IMAGE, stack)

    def uneven_batch(self):
        """3 of the 4 images of a divided batch (XLA pads the shards): run
        whole (a padded shard would add its padding to the weight's gradient)."""
        def three(names, arrays, f):
            def first_three(*a):
                return f(*(x[:3] if n in PER_IMAGE else x for n, x in zip(names, a)))

            return names, arrays, first_three

        return self.whole_on_each_device("deform_conv2d", PER_IMAGE, three)

    def readme_recipes(self):
        """The ```py blocks of the JAX guide's "JAX at scale" section that run
        in one process (the multi-process one is tests/test_jax_multiprocess.py's;
        tests/test_guides.py leaves these blocks to this one)."""
        section = JAX_GUIDE.read_text().split("\n## JAX at scale\n", 1)[1].split("\n## ", 1)[0]
        blocks = [b for b in re.findall(r"```py\n(.*?)```", section, re.S)
                  if "jax.distributed" not in b]
        namespace = {}
        for block in blocks:  # in order, as a reader runs them
            exec(compile(block, str(JAX_GUIDE), "exec"), namespace)  # noqa: S102 - our own guide
        sharded, mapped = (np.asarray(namespace[n]) for n in ("dweight", "dweight_mapped"))
        return {"blocks": len(blocks), "difference": float(np.abs(sharded - mapped).max()),
                "scale": float(np.abs(sharded).max())}


def _child_main(out_file):
    child = _Child()
    report = {}

    def case(name, fn, *args):
        try:
            report[name] = {"ok": fn(*args)}
        except Exception as e:  # noqa: BLE001 - each case on its own, reported
            report[name] = {"error": f"{type(e).__name__}: {e}"}

    for (op, layout) in LAYOUTS:
        for check in (True, False):
            case(f"shard_map/{op}/{layout}/check_vma={check}", child.shard_map_gradients, op,
                 layout, check)
        if layout != "replicated":
            case(f"out_specs/{op}/{layout}", child.wrong_out_specs, op, layout)
    for op in DIVIDED_OPS:
        case(f"jit/{op}/auto", child.sharded_jit, op, "auto")
    case("jit/deform_conv2d/explicit", child.sharded_jit, "deform_conv2d", "explicit")
    for op in ("deform_roi_pool", "deform_psroi_pool"):
        case(f"jit-whole/{op}", child.whole_on_each_device, op, ("input",))
    case("jit-vmap", child.vmap_under_sharded_jit)
    case("jit-uneven", child.uneven_batch)
    case("readme", child.readme_recipes)
    pathlib.Path(out_file).write_text(json.dumps(report))


if __name__ == "__main__":
    _child_main(sys.argv[1])


# --- the tests ---------------------------------------------------------------

pytest.importorskip("jax")


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    out = tmp_path_factory.mktemp("jax_sharding") / "report.json"
    flags = f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count={DEVICES}"
    env = dict(os.environ, XLA_FLAGS=flags.strip(), JAX_PLATFORMS="cpu")  # host devices
    try:
        done = subprocess.run([sys.executable, str(HERE), str(out)], env=env, timeout=TIMEOUT,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    except subprocess.TimeoutExpired as e:  # run() killed it
        pytest.fail(f"the 2-device child ran over {TIMEOUT} s:\n{e.output}")
    assert done.returncode == 0, f"the 2-device child failed:\n{done.stdout}"
    return json.loads(out.read_text())


def _ok(report, name):
    result = report[name]
    assert "error" not in result, result.get("error")
    return result["ok"]


def _assert_close(errors, what):
    for name, (error, scale) in errors.items():
        assert scale > 0, f"{what}: {name}'s gradient is zero"
        assert error <= EXACT["rtol"] * scale + EXACT["atol"], f"{what}: {name} off by {error}"


@pytest.mark.parametrize("case", SHARD_MAP_CASES)
def test_shard_map_gradients_equal_the_full_batch_gradients(report, case):
    _, op, _, _ = case.split("/")
    errors = _ok(report, case)
    assert set(errors) == set(ARRAYS[op]) - NOT_DIFFERENTIABLE
    _assert_close(errors, case)


@pytest.mark.parametrize("case", sorted({f"out_specs/{op}/{layout}" for op, layout in LAYOUTS
                                         if layout != "replicated"}))
def test_shard_map_refuses_a_replicated_out_specs_for_a_varying_result(report, case):
    error = _ok(report, case)
    assert error is not None, "out_specs=P() accepted a result that differs by device"
    assert error.startswith("ValueError") and "out_specs" in error


def _assert_divided(calls, full_shapes, fn_suffix):
    """Two calls (one a device), each with half of every per-image array and
    the whole of every other."""
    assert len(calls) == DEVICES, calls
    for call in calls:
        assert call["fn"].endswith(fn_suffix)
        for name, shape in call["shapes"].items():
            if name == "grad_output":
                continue
            full = full_shapes[name]
            expected = [full[0] // DEVICES, *full[1:]] if name in PER_IMAGE else full
            assert shape == expected, (call["fn"], name, shape)


@pytest.mark.parametrize("case", JIT_CASES)
def test_sharded_jit_runs_each_devices_images_on_that_device(report, case):
    result = _ok(report, case)
    _assert_divided(result["forward_calls"], result["full_shapes"], "_forward")
    _assert_divided(result["backward_calls"], result["full_shapes"], "_backward")
    assert result["out_spec"].startswith("P('d'")


@pytest.mark.parametrize("case", JIT_CASES)
def test_sharded_jit_equals_the_unsharded_call(report, case):
    result = _ok(report, case)
    assert result["forward_error"] <= EXACT["atol"]
    _assert_close(result["gradient_errors"], case)


@pytest.mark.parametrize("case", JIT_CASES)
def test_sharded_jit_gathers_no_batch_and_reduces_shared_gradients(report, case):
    result = _ok(report, case)
    assert not result["forward_gathers"] and not result["gradient_gathers"]
    # deform_conv2d's weight and bias are replicated: their gradients are
    # the sum of the devices' (the other ops have no shared array).
    assert result["gradient_reduces"] == case.startswith("jit/deform_conv2d")


@pytest.mark.parametrize("op", ["deform_roi_pool", "deform_psroi_pool"])
def test_roi_pooling_under_sharded_jit_runs_whole_and_is_right(report, op):
    result = _ok(report, f"jit-whole/{op}")
    assert max(result["errors"]) <= EXACT["atol"]
    assert all(call["shapes"]["input"] == result["full_shapes"]["input"]
               for call in result["calls"])


def test_vmap_under_sharded_jit_divides_the_vmapped_axis(report):
    result = _ok(report, "jit-vmap")
    assert max(result["errors"]) <= 1e-10
    assert result["calls"]
    stacked, images = result["full_shapes"]["input"][:2]
    for call in result["calls"]:  # a device's share of the stack, folded into N
        assert call["shapes"]["input"][0] == stacked // DEVICES * images


def test_uneven_batch_runs_whole_on_each_device(report):
    result = _ok(report, "jit-uneven")
    assert max(result["errors"]) <= 1e-10
    assert all(call["shapes"]["input"][0] == 3 for call in result["calls"])


def test_readme_jax_at_scale_recipes_run(report):
    result = _ok(report, "readme")
    assert result["blocks"] == 2
    assert result["difference"] <= 1e-6 * result["scale"]  # float32, the same gradient
