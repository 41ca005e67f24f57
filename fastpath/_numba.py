"""Numba settings shared by every kernel, and the compiled core's entry points for kernels.

Kernels call the core's exported `fp_*` functions by symbol name (an ExternalFunction), not
through a ctypes pointer baked into the code, so Numba's on-disk cache stays valid across
processes: each process registers the symbols' addresses when it imports this module.
"""

import os

from llvmlite import binding
from numba import types
from numba.core.extending import get_cython_function_address

DEBUG = os.environ.get("FASTPATH_DEBUG", "") not in ("", "0")

# One set of options for every @njit kernel: no GIL, cached, bounds checks only in debug runs.
# Numba's cache key ignores these options, so a debug run must not load release kernels.
NJIT = {"nogil": True, "cache": not DEBUG, "boundscheck": DEBUG}

# Pointers cross as integers: the same register on x86-64, and Numba passes ints freely.
POINTER = types.uintp


def core_function(module: str, name: str, signature) -> types.ExternalFunction:
    """The `fp_*` function `name` of fastpath._core.<module>, callable from @njit code."""
    binding.add_symbol(name, get_cython_function_address(f"fastpath._core.{module}", name))
    return types.ExternalFunction(name, signature)
