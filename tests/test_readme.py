"""The README's NumPy examples run, in order, as written."""

import pathlib
import re

import pytest

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"


def test_numpy_examples_run():
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)
    cpu_blocks = [b for b in blocks if "cupy" not in b]
    assert len(cpu_blocks) >= 4
    namespace = {}
    for block in cpu_blocks:
        exec(compile(block, str(README), "exec"), namespace)  # noqa: S102 - our own README
    assert namespace["pooled"].shape == (2, 256, 7, 7)
    assert namespace["out"].shape == (2, 21, 7, 7)


@pytest.mark.gpu
def test_cupy_examples_run():
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)
    namespace = {}
    for block in blocks:
        exec(compile(block, str(README), "exec"), namespace)  # noqa: S102 - our own README
