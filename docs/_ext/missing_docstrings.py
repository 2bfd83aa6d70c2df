"""Warn (an error under `make docs`' -W) when autodoc documents an object
whose docstring is empty, so a public name cannot enter the reference bare."""

from sphinx.util import logging

logger = logging.getLogger(__name__)


def _check(app, what, name, obj, options, lines):
    if what in ("function", "class", "method", "exception") and not any(line.strip() for line in lines):
        logger.warning("%s %s has no docstring", what, name, type="cudcn", subtype="missing-docstring")


def setup(app):
    app.connect("autodoc-process-docstring", _check)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
