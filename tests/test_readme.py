"""The README's quickstart runs, in order, as written (the guides' examples:
tests/test_guides.py)."""

import pathlib
import re

import pytest

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"


def _blocks():
    return re.findall(r"```python\n(.*?)```", README.read_text(), re.S)


def _run(blocks):
    namespace = {}
    for block in blocks:
        exec(compile(block, str(README), "exec"), namespace)  # noqa: S102 - our own README
    return namespace


def test_numpy_and_torch_examples_run():
    pytest.importorskip("torchvision")
    cpu_blocks = [b for b in _blocks() if "cupy" not in b and "import jax" not in b]
    assert len(cpu_blocks) == 2  # NumPy, PyTorch
    namespace = _run(cpu_blocks)
    assert namespace["y"].shape == (2, 64, 56, 56)
    assert namespace["grads"].offset.shape == (2, 18, 56, 56) and namespace["grads"].bias is None
    assert namespace["features"].shape == (2, 64, 28, 28)
    assert namespace["layer"].conv_offset.weight.grad is not None
    assert type(namespace["model"].layer4[1].conv2).__name__ == "DeformConv2dPack"


def test_jax_example_runs():
    pytest.importorskip("jax")
    (block,) = [b for b in _blocks() if "import jax" in b]
    namespace = _run([block])
    assert namespace["dw"].shape == (16, 16, 3, 3) and namespace["doffset"].shape == (2, 18, 28, 28)
    assert abs(namespace["doffset"]).max() > 0
    assert namespace["batched"].shape == (2, 2, 16, 28, 28)


@pytest.mark.gpu
def test_cupy_examples_run():
    namespace = _run(_blocks())
    assert namespace["y_gpu"].shape == (2, 64, 56, 56)
    assert abs(namespace["y_gpu"].get() - namespace["y"]).max() < 1e-3 * abs(namespace["y"]).max()
