"""The public functions as leaves of ``torch.fx`` graphs, as torchvision's ops.

``torch.fx.symbolic_trace`` (and what is built on it: feature extraction, FX
quantization) calls each function with ``Proxy`` objects in place of tensors.
A leaf function then records itself as one ``call_function`` node instead of
running, so the argument checks and the custom op see real tensors only when
the traced graph runs. ``torch.fx.wrap`` in ops.py covers calls through that
module's globals; the check here covers every other reference to the function
(``cudcn.adapters.torch.deform_conv2d``, ``from ... import``).
"""

import functools
import itertools

import torch.fx


def _first_proxy(args, kwargs):
    # Plain loops, not torch.fx helpers: torch.compile traces this function
    # too, and the arguments that can be proxies are all top-level.
    for value in itertools.chain(args, kwargs.values()):
        if isinstance(value, torch.fx.Proxy):
            return value
    return None


def leaf(fn):
    """Decorate ``fn`` so that under FX tracing it becomes one graph node."""

    @functools.wraps(fn)
    def traced_or_run(*args, **kwargs):
        proxy = _first_proxy(args, kwargs)
        if proxy is not None:
            return proxy.tracer.create_proxy("call_function", traced_or_run, args, kwargs)
        return fn(*args, **kwargs)

    return traced_or_run
