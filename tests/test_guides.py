"""The documentation guides' examples (docs/guides/*.md) run, in order, as written.

Each guide's Python blocks run one after the other in one namespace, as a
reader runs them in one session; the blocks that use CuPy are left to a
``gpu`` test. Some blocks are run by another test, or cannot run as written:
they are left out here, section by section (``LEFT_OUT``), and fenced as
```` ```py ```` where the runnable ones are ```` ```python ````
(``test_the_left_out_blocks_are_exactly_the_py_blocks`` holds the two together).
"""

import contextvars
import pathlib
import re

import pytest

GUIDES = pathlib.Path(__file__).resolve().parents[1] / "docs" / "guides"

# {guide: {section (its "## " heading, or None for the whole guide): why}}
LEFT_OUT = {
    "jax.md": {"JAX at scale": "tests/test_jax_sharding.py runs them on two host devices, an "
                               "XLA flag set before jax starts (the jax.distributed one is "
                               "tests/test_jax_multiprocess.py's)"},
    "deploy.md": {None: "tests/test_onnx_export.py runs it and compares ONNX Runtime's output"},
    "transformers.md": {"With a checkpoint": "it downloads a checkpoint; the guide's next "
                                             "section makes the same calls on a model built "
                                             "from a config"},
}

_FENCE = re.compile(r"^```(python|py)\n(.*?)^```", re.S | re.M)


def _fenced(guide):
    """Every Python block of the guide, in order: (fence tag, code, section)."""
    text = (GUIDES / guide).read_text()
    blocks = []
    for m in _FENCE.finditer(text):
        headings = re.findall(r"^## (.*)$", text[: m.start()], re.M)
        blocks.append((m.group(1), m.group(2), headings[-1] if headings else None))
    return blocks


def _left_out(guide, section):
    sections = LEFT_OUT.get(guide, {})
    return None in sections or section in sections


def _runnable(guide):
    return [code for _, code, section in _fenced(guide) if not _left_out(guide, section)]


def _run(guide, blocks):
    """The blocks in order in one namespace, in a copy of this context (a
    guide's cudcn.set_workspace_limit holds for the guide only)."""
    namespace = {}

    def run():
        for code in blocks:
            exec(compile(code, str(GUIDES / guide), "exec"), namespace)  # noqa: S102 - our own guide

    contextvars.copy_context().run(run)
    return namespace


def _numpy(ns):
    assert ns["y"].shape == (2, 64, 56, 56)
    assert ns["grads"].offset.shape == (2, 18, 56, 56) and ns["grads"].bias is None
    assert ns["pooled"].shape == (2, 256, 7, 7)
    assert ns["out"].shape == (2, 21, 7, 7)
    assert ns["attended"].shape == (1, 300, 256)
    assert ns["attn_grads"].sampling_locations.shape == (1, 300, 8, 4, 4, 2)
    assert ns["sampled"].shape == (2, 28, 28, 128)
    assert ns["dcn_grads"].mask.shape == (2, 28, 28, 72)


def _pytorch(ns):
    assert ns["y"].shape == (2, 64, 28, 28)
    assert ns["x"].grad is not None and ns["offset"].grad is not None
    assert type(ns["model"].layer4[1].conv2).__name__ == "DeformConv2dPack"


def _jax(ns):
    assert ns["dw"].shape == (16, 16, 3, 3) and ns["doffset"].shape == (2, 18, 28, 28)
    assert abs(ns["doffset"]).max() > 0
    assert ns["batched"].shape == (2, 2, 16, 28, 28)


def _transformers(ns):
    assert ns["same_logits"] and ns["same_boxes"]
    assert ns["loss_default"].item() == pytest.approx(ns["loss_kernelized"].item(), abs=1e-10)
    assert ns["largest_gradient_difference"] < 1e-8
    layers = [m for m in ns["kernelized"].modules()
              if type(m).__name__ == "MultiScaleDeformableAttention"]
    assert layers and all("cudcn" in type(m).forward.__module__ or
                          m.forward.__qualname__.startswith("MultiScaleDeformableAttentionLayer")
                          for m in layers)


# What each guide's blocks computed; a guide with runnable blocks must be here.
CHECKS = {"numpy.md": _numpy, "pytorch.md": _pytorch, "jax.md": _jax,
          "transformers.md": _transformers}
NEEDS = {"pytorch.md": ("torch", "torchvision"), "jax.md": ("jax",),
         "transformers.md": ("torch", "transformers", "kernels")}

RUNNABLE = sorted(p.name for p in GUIDES.glob("*.md") if _runnable(p.name))
WITH_CUPY = [g for g in RUNNABLE if any("cupy" in code for code in _runnable(g))]


def test_the_guides_are_there():
    names = {p.name for p in GUIDES.glob("*.md")}
    assert {"install.md", "numpy.md", "pytorch.md", "transformers.md", "jax.md", "deploy.md",
            "how-it-works.md", "benchmarks.md", "reliability.md", "testing.md",
            "demo.md"} <= names
    for name in names:
        assert (GUIDES / name).read_text().startswith("# "), f"{name} starts with no # title"
    assert set(RUNNABLE) == set(CHECKS)


def test_the_left_out_blocks_are_exactly_the_py_blocks():
    """A ```py block is one another test runs (or that cannot run), a
    ```python block one this file runs; each left-out section holds some."""
    for guide in LEFT_OUT:
        for section in LEFT_OUT[guide]:
            assert any(s == section or section is None for _, _, s in _fenced(guide)), \
                f"{guide}: no block in {section or 'the guide'} to leave out"
    for path in sorted(GUIDES.glob("*.md")):
        for tag, code, section in _fenced(path.name):
            left_out = _left_out(path.name, section)
            assert (tag == "py") == left_out, \
                f"{path.name} ({section}): a ```{tag} block {'' if left_out else 'not '}left out:\n{code}"


@pytest.mark.parametrize("guide", RUNNABLE)
def test_guide_examples_run(guide):
    for module in NEEDS.get(guide, ()):
        pytest.importorskip(module)
    namespace = _run(guide, [code for code in _runnable(guide) if "cupy" not in code])
    CHECKS[guide](namespace)


@pytest.mark.gpu
@pytest.mark.parametrize("guide", WITH_CUPY)
def test_guide_cupy_examples_run(guide):
    CHECKS[guide](_run(guide, _runnable(guide)))
