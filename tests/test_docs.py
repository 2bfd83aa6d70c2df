"""The API reference covers the public API, and its docstrings hold what a
reader needs: every public name of cudcn, cudcn.adapters.torch,
cudcn.adapters.jax, cudcn.reference and cudcn.testing has a docstring and
exactly one entry in docs/api/*.rst; each function's and class's docstring
documents every argument, what raises and an example, and the examples run as
written (doctest, each importing what it uses).

`make docs` builds the site itself (warnings as errors); the guides' code
blocks run in test_guides.py.
"""

import doctest
import importlib
import inspect
import pathlib
import re

import pytest

DOCS = pathlib.Path(__file__).resolve().parents[1] / "docs"
API = DOCS / "api"

MODULES = ["cudcn", "cudcn.reference", "cudcn.testing", "cudcn.adapters.torch", "cudcn.adapters.jax"]
# Module-level constants: documented by a `.. data::` entry with its own text
# (an int carries no docstring of its own).
CONSTANTS = {"cudcn.DEFAULT_WORKSPACE_LIMIT", "cudcn.DEFAULT_CPU_WORKSPACE_LIMIT"}
SECTION = re.compile(r"^(Args|Arguments|Returns|Raises|Example|Examples|Attributes|Note|Notes|Yields):\s*$")


def _module(name):
    if name.startswith("cudcn.adapters.torch"):
        pytest.importorskip("torch")
    if name.startswith("cudcn.adapters.jax"):
        pytest.importorskip("jax")
    return importlib.import_module(name)


def _public_names():
    names = []
    for module_name in MODULES:
        module = importlib.import_module(module_name) if "adapters" not in module_name else None
        if module is None:
            # The adapters' __all__ is read from their source, so that the list of
            # cases does not depend on torch or jax being importable.
            source = (pathlib.Path(__file__).resolve().parents[1] / "adapters"
                      / module_name.rsplit(".", 1)[1] / "__init__.py").read_text()
            block = re.search(r"__all__ = \[(.*?)\]", source, re.S).group(1)
            public = re.findall(r"\"(\w+)\"", block)
        else:
            assert hasattr(module, "__all__"), f"{module_name} has no __all__"
            public = module.__all__
        names += [f"{module_name}.{name}" for name in public]
    return names


PUBLIC = _public_names()


def _object(qualified):
    module_name, name = qualified.rsplit(".", 1)
    return getattr(_module(module_name), name)


def _reference_entries():
    """Qualified name -> number of entries in docs/api/*.rst: explicit
    auto*/data directives under the page's `.. module::`, and the __all__ of
    each `.. automodule::` with :members: (autodoc documents exactly that)."""
    entries = {}
    for page in sorted(API.glob("*.rst")):
        current = None
        lines = page.read_text().splitlines()
        for i, line in enumerate(lines):
            if m := re.match(r"\.\. (?:py:)?module:: (\S+)", line):
                current = m.group(1)
            elif m := re.match(r"\.\. automodule:: (\S+)", line):
                options = "\n".join(lines[i + 1:i + 4])
                assert ":members:" in options, f"{page.name}: automodule {m.group(1)} without :members:"
                module = importlib.import_module(m.group(1))
                for name in module.__all__:
                    key = f"{m.group(1)}.{name}"
                    entries[key] = entries.get(key, 0) + 1
            elif m := re.match(r"\.\. (?:auto)?(?:function|class|exception|data):: (\S+)", line):
                name = m.group(1)
                key = name if "." in name else f"{current}.{name}"
                entries[key] = entries.get(key, 0) + 1
    return entries


def test_every_reference_entry_is_public():
    stale = sorted(set(_reference_entries()) - set(PUBLIC))
    assert not stale, f"docs/api entries that are not public names: {stale}"


@pytest.mark.parametrize("qualified", PUBLIC)
def test_public_name_is_in_the_reference_once(qualified):
    assert _reference_entries().get(qualified, 0) == 1, f"{qualified}: not exactly one entry in docs/api/*.rst"


def _sections(doc):
    """Section name -> its lines (napoleon's Google style)."""
    sections, name = {"": []}, ""
    for line in inspect.cleandoc(doc).splitlines():
        if m := SECTION.match(line.strip()):
            name = m.group(1).rstrip("s") if m.group(1) in ("Examples",) else m.group(1)
            name = "Args" if name == "Arguments" else name
            sections[name] = []
        elif line.strip() and not line[0].isspace():
            name = ""  # an unindented paragraph ends the section (napoleon's rule)
            sections[name].append(line)
        else:
            sections[name].append(line)
    return sections


def _documented_arguments(lines):
    """The names that start entries of an Args section (`a, b (shape): ...`)."""
    lines = [line for line in lines if line.strip()]
    if not lines:
        return set()
    indent = min(len(line) - len(line.lstrip()) for line in lines)
    names = set()
    for line in lines:
        if len(line) - len(line.lstrip()) == indent and ":" in line:
            head = line.split(":", 1)[0]
            head = re.sub(r"\(.*", "", head)
            names |= {part.strip().lstrip("*") for part in head.split(",") if part.strip()}
    return names


def _kind(obj):
    if isinstance(obj, type) and issubclass(obj, BaseException):
        return "exception"
    if isinstance(obj, type) and issubclass(obj, tuple) and hasattr(obj, "_fields"):
        return "namedtuple"
    if isinstance(obj, type):
        return "class"
    if callable(obj):
        return "function"
    return "constant"


def _parameters(obj):
    try:
        signature = inspect.signature(obj)
    except (TypeError, ValueError):
        return []
    return [p.name for p in signature.parameters.values() if p.name != "self"]


@pytest.mark.parametrize("qualified", PUBLIC)
def test_docstring_documents_arguments_errors_and_an_example(qualified):
    if qualified in CONSTANTS:
        text = "\n".join(page.read_text() for page in API.glob("*.rst"))
        entry = re.search(rf"\.\. data:: {qualified.rsplit('.', 1)[1]}\n\n(   \S.*\n)+", text)
        assert entry, f"{qualified}: no `.. data::` entry with a description"
        return
    obj = _object(qualified)
    kind = _kind(obj)
    doc = obj.__doc__ if kind != "function" else inspect.getdoc(obj)
    if kind in ("class", "exception", "namedtuple"):
        doc = obj.__dict__.get("__doc__")
    assert doc and doc.strip(), f"{qualified} has no docstring"
    sections = _sections(doc)
    if kind == "namedtuple":
        documented = _documented_arguments(sections.get("Attributes", []))
        missing = [field for field in obj._fields if field not in documented]
        assert not missing, f"{qualified}: fields without an Attributes entry: {missing}"
        return
    if kind == "exception":
        return
    parameters = _parameters(obj)
    if parameters:
        documented = _documented_arguments(sections.get("Args", []))
        missing = [p for p in parameters if p not in documented]
        assert not missing, f"{qualified}: arguments missing from Args: {missing}"
        raises = "\n".join(sections.get("Raises", []))
        assert re.search(r"\w+Error", raises), f"{qualified}: no Raises section naming an error"
    assert ">>>" in "\n".join(sections.get("Example", [])), f"{qualified}: no Example with >>> lines"


@pytest.mark.parametrize("qualified", [name for name in PUBLIC if name not in CONSTANTS])
def test_docstring_examples_run(qualified):
    obj = _object(qualified)
    # Each example imports what it uses (globs={}), as a reader copying it would.
    tests = doctest.DocTestFinder(recurse=False).find(obj, qualified, globs={})
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    for test in tests:
        runner.run(test)
    result = runner.summarize(verbose=False)
    assert result.failed == 0, f"{qualified}: {result.failed} of {result.attempted} example lines failed"
    if _kind(obj) in ("function", "class"):
        assert result.attempted > 0, f"{qualified}: no example ran"


@pytest.mark.parametrize("module_name", MODULES)
def test_every_public_callable_is_in_all(module_name):
    """A function or class of the module's own (a package's: of its
    submodules) reachable without an underscore is in __all__, and so in the
    reference; names a plain module imports from elsewhere are not its API."""
    module = _module(module_name)
    package = hasattr(module, "__path__")

    def own(value):
        defined_in = getattr(value, "__module__", "") or ""
        return defined_in == module_name or (package and defined_in.startswith(module_name + "."))

    unlisted = [name for name, value in vars(module).items()
                if not name.startswith("_") and name not in module.__all__
                and (inspect.isfunction(value) or inspect.isclass(value)) and own(value)]
    assert not unlisted, f"{module_name}: public callables not in __all__: {unlisted}"
