"""Numba settings shared by every kernel, and the compiled core's entry points for kernels.

Kernels call the core's exported `fp_*` functions by symbol name (an ExternalFunction), not
through a ctypes pointer baked into the code, so Numba's on-disk cache stays valid across
processes: each process registers the symbols' addresses when it imports this module.
"""

import functools
import hashlib
import os
from pathlib import Path

from llvmlite import binding
from numba import types
from numba.core import caching
from numba.core.extending import get_cython_function_address

DEBUG = os.environ.get("FASTPATH_DEBUG", "") not in ("", "0")

# One set of options for every @njit kernel: no GIL, cached, bounds checks only in debug runs.
# Numba's cache key ignores these options, so a debug run must not load release kernels.
NJIT = {"nogil": True, "cache": not DEBUG, "boundscheck": DEBUG}

# Pointers cross as integers: the same register on x86-64, and Numba passes ints freely.
POINTER = types.uintp


# Every core function declared for kernels: (module, name, signature), so that a repository
# test can hold each signature to the function's declaration in the module's .pxd.
CORE_FUNCTIONS: list[tuple[str, str, object]] = []


def core_function(module: str, name: str, signature) -> types.ExternalFunction:
    """The `fp_*` function `name` of fastpath._core.<module>, callable from @njit code."""
    binding.add_symbol(name, get_cython_function_address(f"fastpath._core.{module}", name))
    CORE_FUNCTIONS.append((module, name, signature))
    return types.ExternalFunction(name, signature)


# (destination, source, bytes): one frame's copy between a kernel's own buffers, for a fraction
# of what a Numba slice assignment costs (an element loop: 20x slower at 1518 bytes).
copy_bytes = core_function("chain", "fp_copy_bytes", types.void(POINTER, POINTER, types.uint64))

_PACKAGE = Path(__file__).resolve().parent
# In a checkout, the tests' and benchmarks' own kernels call package kernels too.
_CHECKOUT_KERNEL_DIRS = (_PACKAGE.parent / "tests", _PACKAGE.parent / "bench")


@functools.cache
def _package_stamp() -> str:
    # Every module of the package, and the core's declarations, as they are now.
    digest = hashlib.sha256()
    for path in sorted(_PACKAGE.rglob("*.p[yx]*")):
        if path.suffix in (".py", ".pxd", ".pyx"):
            stat = path.stat()
            digest.update(f"{path.relative_to(_PACKAGE)}:{stat.st_mtime_ns}:{stat.st_size};"
                          .encode())
    return digest.hexdigest()


class _PackageStampedLocator(caching.InTreeCacheLocator):
    # Numba keys a cached kernel on its own source file alone, so a kernel that calls kernels
    # of other modules (a port dispatcher, a forwarding loop) would go on running their old
    # code after they changed, and crash where a row layout moved. Kernels of this package
    # are keyed on the whole package; those of the checkout's tests and benchmarks on their
    # own file and the whole package.

    def get_source_stamp(self):
        if Path(self._py_file).resolve().is_relative_to(_PACKAGE):
            return _package_stamp()
        return (super().get_source_stamp(), _package_stamp())

    @classmethod
    def from_function(cls, py_func, py_file):
        path = Path(py_file).resolve()
        if os.environ.get("NUMBA_CACHE_DIR") or not any(
                path.is_relative_to(d) for d in (_PACKAGE, *_CHECKOUT_KERNEL_DIRS)):
            return None
        return super().from_function(py_func, py_file)


caching.CacheImpl._locator_classes.insert(0, _PackageStampedLocator)
