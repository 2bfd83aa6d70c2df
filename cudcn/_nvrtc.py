"""A ctypes binding of the few NVRTC C functions cudcn's compile check calls.

Python bindings of NVRTC (cuda-bindings) load one major version per process;
through ctypes each ``libnvrtc.so.<major>`` is its own library object, so
NVRTC 12 and NVRTC 13 compile side by side in one environment.
"""

import ctypes
import dataclasses
import functools
import pathlib
import re

from . import _cuda_install

_SUCCESS = 0
_BUILTINS = re.compile(r"libnvrtc-builtins\.so\.\d+\.\d+$")
_program = ctypes.c_void_p
_strings = ctypes.POINTER(ctypes.c_char_p)


class NVRTCError(RuntimeError):
    """An NVRTC call failed (other than the compile itself, which returns its log)."""


@dataclasses.dataclass(frozen=True)
class Compiled:
    ok: bool
    log: str
    lowered: dict  # {name expression: mangled name}, empty when not ok


_SIGNATURES = {
    "nvrtcVersion": (ctypes.POINTER(ctypes.c_int), ctypes.POINTER(ctypes.c_int)),
    "nvrtcCreateProgram": (ctypes.POINTER(_program), ctypes.c_char_p, ctypes.c_char_p,
                           ctypes.c_int, _strings, _strings),
    "nvrtcAddNameExpression": (_program, ctypes.c_char_p),
    "nvrtcCompileProgram": (_program, ctypes.c_int, _strings),
    "nvrtcGetProgramLogSize": (_program, ctypes.POINTER(ctypes.c_size_t)),
    "nvrtcGetProgramLog": (_program, ctypes.c_char_p),
    "nvrtcGetLoweredName": (_program, ctypes.c_char_p, ctypes.POINTER(ctypes.c_char_p)),
    "nvrtcDestroyProgram": (ctypes.POINTER(_program),),
}


class NVRTC:
    """One loaded libnvrtc; ``path`` is the shared library's file."""

    def __init__(self, path):
        self.path = str(path)
        # NVRTC opens its builtins library by soname at compile time; some
        # wheels (13.0) carry no RUNPATH to find it beside libnvrtc, and a
        # library already loaded under that soname is the one it gets.
        for builtins in sorted(pathlib.Path(path).parent.glob("libnvrtc-builtins.so.*")):
            if _BUILTINS.match(builtins.name):
                ctypes.CDLL(str(builtins))
        self._lib = ctypes.CDLL(self.path)
        for name, argtypes in _SIGNATURES.items():
            fn = getattr(self._lib, name)
            fn.argtypes, fn.restype = argtypes, ctypes.c_int
        self._lib.nvrtcGetErrorString.argtypes = (ctypes.c_int,)
        self._lib.nvrtcGetErrorString.restype = ctypes.c_char_p

    def _call(self, name, *args):
        result = getattr(self._lib, name)(*args)
        if result != _SUCCESS:
            message = self._lib.nvrtcGetErrorString(result).decode(errors="replace")
            raise NVRTCError(f"{name} ({self.path}): {message}")

    @functools.cached_property
    def version(self):
        """(major, minor)."""
        major, minor = ctypes.c_int(), ctypes.c_int()
        self._call("nvrtcVersion", ctypes.byref(major), ctypes.byref(minor))
        return major.value, minor.value

    def compile(self, source, name, options, name_expressions=()):
        """Compile ``source`` (text) with ``options`` (strings); the mangled name
        of each of ``name_expressions`` when the compile succeeds."""
        program = _program()
        self._call("nvrtcCreateProgram", ctypes.byref(program), source.encode(), name.encode(),
                   0, None, None)
        try:
            for expression in name_expressions:
                self._call("nvrtcAddNameExpression", program, expression.encode())
            encoded = [o.encode() for o in options]
            argv = (ctypes.c_char_p * len(encoded))(*encoded)
            status = self._lib.nvrtcCompileProgram(program, len(encoded), argv)
            size = ctypes.c_size_t()
            self._call("nvrtcGetProgramLogSize", program, ctypes.byref(size))
            buffer = ctypes.create_string_buffer(size.value)
            self._call("nvrtcGetProgramLog", program, buffer)
            log = buffer.value.decode(errors="replace").rstrip()
            if status != _SUCCESS:
                return Compiled(False, log, {})
            lowered = {}
            for expression in name_expressions:
                mangled = ctypes.c_char_p()
                self._call("nvrtcGetLoweredName", program, expression.encode(),
                           ctypes.byref(mangled))
                lowered[expression] = mangled.value.decode()
            return Compiled(True, log, lowered)
        finally:
            self._lib.nvrtcDestroyProgram(ctypes.byref(program))


@functools.cache
def load(major):
    """The installed NVRTC of CUDA ``major`` (12, 13, ...); LookupError when absent."""
    path = _cuda_install.nvrtc_libraries().get(int(major))
    if path is None:
        raise LookupError(f"no libnvrtc.so.{major} found (pip install "
                          f"{_wheel_hint(int(major))})")
    return NVRTC(path)


def _wheel_hint(major):
    return ("nvidia-cuda-nvrtc nvidia-cuda-runtime" if major >= 13
            else f"nvidia-cuda-nvrtc-cu{major} nvidia-cuda-runtime-cu{major}")


def installed_majors():
    """The CUDA major versions with both an NVRTC library and runtime headers here."""
    return tuple(sorted(set(_cuda_install.nvrtc_libraries()) & set(_cuda_install.header_dirs())))
