"""Bad input raises TypeError/ValueError naming the argument, before any kernel runs."""

import contextlib

import numpy as np
import pytest

import cudcn
from cudcn.testing import deform_conv2d_inputs


def _args():
    return deform_conv2d_inputs(batch=2, in_channels=4, out_channels=6, size=(7, 6))


def _set(**changes):
    def change(args):
        args.update(changes)
    return change


def _reshape(name, shape):
    def change(args):
        args[name] = np.zeros(shape, dtype=args["input"].dtype)
    return change


def _astype(name, dtype):
    def change(args):
        args[name] = args[name].astype(dtype)
    return change


BAD = [
    # (id, change, error, words the message must contain)
    ("input-list", lambda a: a.update(input=a["input"].tolist()), TypeError, ["input", "list"]),
    ("weight-tuple", lambda a: a.update(weight=tuple(a["weight"])), TypeError, ["weight"]),
    ("bias-scalar", _set(bias=1.0), TypeError, ["bias", "float"]),
    ("input-rank-3", _reshape("input", (4, 7, 6)), ValueError, ["input", "4-D", "(4, 7, 6)"]),
    ("offset-rank-5", _reshape("offset", (2, 18, 7, 6, 1)), ValueError, ["offset", "4-D"]),
    ("weight-rank-2", _reshape("weight", (6, 36)), ValueError, ["weight", "4-D"]),
    ("bias-rank-2", _reshape("bias", (6, 1)), ValueError, ["bias", "1-D"]),
    ("mask-rank-3", _reshape("mask", (2, 9, 42)), ValueError, ["mask", "4-D"]),
    ("channels-not-divisible", _reshape("weight", (6, 3, 3, 3)), ValueError,
     ["weight.shape[1] = 3", "C_in = 4"]),
    ("out-channels-not-divisible", _reshape("weight", (5, 2, 3, 3)), ValueError,
     ["weight.shape[0] = 5", "groups = 2"]),
    ("empty-kernel", _reshape("weight", (6, 4, 0, 3)), ValueError, ["weight", "kernel"]),
    ("offset-channels-not-multiple", _reshape("offset", (2, 17, 7, 6)), ValueError,
     ["offset.shape[1]", "2 * kh * kw = 18", "17"]),
    ("offset-groups-not-dividing", _reshape("offset", (2, 54, 7, 6)), ValueError,
     ["offset_groups = 3", "C_in = 4"]),
    ("offset-batch", _reshape("offset", (3, 18, 7, 6)), ValueError, ["offset", "(2, 18, 7, 6)"]),
    ("offset-spatial", _reshape("offset", (2, 18, 6, 6)), ValueError, ["offset", "H_out"]),
    ("mask-channels", _reshape("mask", (2, 18, 7, 6)), ValueError, ["mask", "(2, 9, 7, 6)"]),
    ("bias-length", _reshape("bias", (5,)), ValueError, ["bias", "(6,)"]),
    ("negative-padding", _set(padding=-1), ValueError, ["padding", ">= 0"]),
    ("stride-zero", _set(stride=0), ValueError, ["stride", ">= 1"]),
    ("dilation-zero-pair", _set(dilation=(1, 0)), ValueError, ["dilation", ">= 1"]),
    ("stride-float", _set(stride=1.5), TypeError, ["stride", "int"]),
    ("padding-triple", _set(padding=(1, 1, 1)), TypeError, ["padding", "pair"]),
    ("stride-bool", _set(stride=True), TypeError, ["stride"]),
    ("empty-output", _set(padding=0, dilation=4), ValueError, ["empty output", "(7, 6)"]),
    ("mixed-dtypes", _astype("offset", np.float32), TypeError, ["offset", "float32", "float64"]),
    ("mixed-dtype-bias", _astype("bias", np.float32), TypeError, ["bias", "float32"]),
    ("integer-dtype", lambda a: [a.update({k: a[k].astype(np.int64)}) for k in
                                 ("input", "offset", "weight", "bias", "mask")],
     TypeError, ["input", "int64", "float32, float64, float16, bfloat16"]),
    ("longdouble", lambda a: [a.update({k: a[k].astype(np.longdouble)}) for k in
                              ("input", "offset", "weight", "bias", "mask")],
     TypeError, ["input", "float128", "CPU", "float32, float64, float16, bfloat16"]),
    ("float16-input-float64-offset", lambda a: a.update(input=a["input"].astype(np.float16)),
     TypeError, ["offset has dtype float64 but input has float16"]),
]


@pytest.mark.parametrize("change, error, words", [pytest.param(*b[1:], id=b[0]) for b in BAD])
def test_forward_and_backward_reject(change, error, words, launches):
    args = _args()
    change(args)
    with pytest.raises(error) as info:
        cudcn.deform_conv2d(**args)
    for word in words:
        assert word in str(info.value)
    grad_output = np.zeros((2, 6, 7, 6))
    with pytest.raises((TypeError, ValueError)):
        cudcn.deform_conv2d_backward(grad_output, **args)
    assert launches == []


@pytest.mark.parametrize("shape, dtype, error, words", [
    ((2, 6, 7, 5), np.float64, ValueError, ["grad_output", "(2, 6, 7, 6)"]),
    ((2, 6, 7, 6), np.float32, TypeError, ["grad_output", "float32"]),
    ((2, 6, 7), np.float64, ValueError, ["grad_output", "4-D"]),
])
def test_backward_rejects_bad_grad_output(shape, dtype, error, words, launches):
    with pytest.raises(error) as info:
        cudcn.deform_conv2d_backward(np.zeros(shape, dtype), **_args())
    for word in words:
        assert word in str(info.value)
    assert launches == []


@pytest.mark.parametrize("needs, error", [(("input", "bogus"), ValueError), (3, TypeError)])
def test_backward_rejects_bad_needs(needs, error):
    with pytest.raises(error, match="needs"):
        cudcn.deform_conv2d_backward(np.zeros((2, 6, 7, 6)), needs=needs, **_args())


class _CupyStandIn:
    """Looks like a cupy.ndarray to the backend check (type name and module, device).

    The real mixed NumPy/CuPy case runs in test_gpu.py where a device exists.
    """

    ndim = 4

    def __init__(self, shape, device_id=0):
        self.shape = shape
        # Like cupy.cuda.Device: an id, and a context manager (the ops enter it).
        self.device = type("Device", (contextlib.AbstractContextManager,),
                           {"id": device_id, "__exit__": lambda self, *exc: None})()


_CupyStandIn.__name__ = "ndarray"
_CupyStandIn.__module__ = "cupy._core.core"


def test_mixed_backends_are_rejected():
    args = _args()
    args["offset"] = _CupyStandIn(args["offset"].shape)
    with pytest.raises(ValueError, match="offset is a cupy.ndarray on device 0 but input is a "
                                         "numpy.ndarray"):
        cudcn.deform_conv2d(**args)
