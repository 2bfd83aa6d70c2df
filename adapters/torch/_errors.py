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
    """A wrong shape, value or device: a ``ValueError`` and a ``RuntimeError``.

    Raised by the functions of ``cudcn.adapters.torch`` (and by the
    modules' forwards, which call them) before any kernel runs: for shapes
    that disagree, a size or scale out of range, an empty output, tensors
    that are not on the CPU or CUDA or not all on one device. The message is
    cudcn's, naming the argument, what was expected and what came. Being a
    ``RuntimeError`` too, it is caught where torchvision's errors are.

    Example:
        >>> import torch
        >>> import cudcn.adapters.torch as ct
        >>> x = torch.zeros(1, 1, 4, 4)
        >>> try:
        ...     ct.deform_conv2d(x, torch.zeros(1, 5, 2, 2), torch.zeros(1, 1, 3, 3))
        ... except RuntimeError as error:
        ...     print(type(error).__name__, isinstance(error, ValueError))
        ArgumentValueError True
    """


class ArgumentTypeError(TypeError, RuntimeError):
    """A wrong type or dtype: a ``TypeError`` and a ``RuntimeError``.

    Raised by the functions of ``cudcn.adapters.torch`` (and by the
    modules' forwards, which call them) before any kernel runs: for an
    argument that is not a tensor, a dtype other than float32, float64,
    float16 or bfloat16, floating tensors of different dtypes, a size that
    is not an int or a pair of ints. Being a ``RuntimeError`` too, it is
    caught where torchvision's errors are.

    Example:
        >>> import torch
        >>> import cudcn.adapters.torch as ct
        >>> x = torch.zeros(1, 1, 4, 4)
        >>> try:
        ...     ct.deform_conv2d(x, torch.zeros(1, 18, 2, 2).double(), torch.zeros(1, 1, 3, 3))
        ... except RuntimeError as error:
        ...     print(type(error).__name__, isinstance(error, TypeError))
        ArgumentTypeError True
    """


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
