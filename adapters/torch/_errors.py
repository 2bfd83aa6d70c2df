"""The torch adapter's argument errors, catchable as torchvision's too.

cudcn raises ``ValueError`` for a wrong shape or value and ``TypeError`` for a
wrong type or dtype. torchvision raises ``RuntimeError`` for the same mistakes
(a wrong offset or mask shape), so code written against torchvision catches
``RuntimeError``. Through the torch adapter every such error is raised as a
class deriving from both, so either ``except`` catches it; the NumPy API keeps
raising plain ``ValueError``/``TypeError``.
"""

import functools


class ArgumentValueError(ValueError, RuntimeError):
    """A wrong shape, value or device: a ``ValueError`` and a ``RuntimeError``."""


class ArgumentTypeError(TypeError, RuntimeError):
    """A wrong type or dtype: a ``TypeError`` and a ``RuntimeError``."""


def as_torch_error(error):
    """The same error as one of the classes above (unchanged if it already is
    one, or is neither a ValueError nor a TypeError)."""
    if isinstance(error, (ArgumentValueError, ArgumentTypeError)):
        return error
    for plain, dual in ((ValueError, ArgumentValueError), (TypeError, ArgumentTypeError)):
        if isinstance(error, plain):
            return dual(*error.args).with_traceback(error.__traceback__)
    return error


def torch_errors(fn):
    """Decorate ``fn`` so that its ValueError/TypeError come out as above."""

    @functools.wraps(fn)
    def checked(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except (ValueError, TypeError) as error:
            raise as_torch_error(error) from None

    return checked
