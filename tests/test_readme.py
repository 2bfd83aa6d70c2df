"""The README's examples run, in order, as written."""

import pathlib
import re

import pytest

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"


def _blocks():
    return re.findall(r"```python\n(.*?)```", README.read_text(), re.S)


def test_numpy_examples_run():
    cpu_blocks = [b for b in _blocks() if "cupy" not in b and "import jax" not in b]
    assert len(cpu_blocks) >= 4
    namespace = {}
    for block in cpu_blocks:
        exec(compile(block, str(README), "exec"), namespace)  # noqa: S102 - our own README
    assert namespace["pooled"].shape == (2, 256, 7, 7)
    assert namespace["out"].shape == (2, 21, 7, 7)


def test_jax_example_runs():
    pytest.importorskip("jax")
    (block,) = [b for b in _blocks() if "import jax" in b]
    namespace = {}
    exec(compile(block, str(README), "exec"), namespace)  # noqa: S102 - our own README
    assert namespace["dw"].shape == (16, 16, 3, 3) and namespace["doffset"].shape == (2, 18, 28, 28)
    assert abs(namespace["doffset"]).max() > 0
    assert namespace["batched"].shape == (2, 2, 16, 28, 28)


@pytest.mark.gpu
def test_cupy_examples_run():
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)
    namespace = {}
    for block in blocks:
        exec(compile(block, str(README), "exec"), namespace)  # noqa: S102 - our own README
