"""Sphinx configuration of cudcn's documentation site (`make docs`).

The API reference is generated from the docstrings (autodoc + napoleon, Google
style); the guides are Markdown (MyST). `make docs` builds with warnings as
errors and nitpicky references, so a broken cross-reference, a malformed
docstring or a documented object without a docstring fails the build.
"""

import os
import pathlib
import shutil
import sys

DOCS = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(DOCS / "_ext"))

import cudcn  # noqa: E402 - the version comes from the package being documented

project = "cudcn"
author = "the cudcn developers"
copyright = "the cudcn developers"
release = cudcn.__version__
version = release

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx.ext.viewcode",
    "myst_parser",
    "missing_docstrings",
]

source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build", "_ext", "screenshots/README.md"]

# Every reference must resolve (make docs passes -n -W). Names of other
# libraries are not linked (no network for intersphinx inventories): they are
# written as literals in the docstrings, so nothing here needs ignoring.
nitpicky = True

autodoc_member_order = "bysource"
autodoc_typehints = "none"
autodoc_default_options = {"undoc-members": False}
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_rtype = False
napoleon_use_ivar = True

myst_heading_anchors = 3
myst_enable_extensions = ["colon_fence"]

html_theme = "furo"
html_title = f"cudcn {release}"
html_static_path = []
html_show_sourcelink = False

# The asv history pages, where `make bench-history` has published them
# (.asv/html) and CUDCN_DOCS_ASV is set, are copied into the site as asv/
# (the benchmarks guide links there). Copied after the build: Sphinx's
# html_extra_path would put asv's index.html over the site's own.
ASV_HTML = DOCS.parent / ".asv" / "html"


def _copy_asv_history(app, exception):
    if exception is None and os.environ.get("CUDCN_DOCS_ASV") and ASV_HTML.is_dir():
        shutil.copytree(ASV_HTML, pathlib.Path(app.outdir) / "asv", dirs_exist_ok=True)


def setup(app):
    app.connect("build-finished", _copy_asv_history)
