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
from numba import njit, types
from numba.core import caching
from numba.core.extending import get_cython_function_address, overload

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

# Per dispatch by kind, its kinds (code, owner): part of the cache stamp of every kernel that
# may call a dispatch, since the kinds registered are compiled into it.
_REGISTRIES: dict[str, list[tuple[int, str]]] = {}

# The links of a dispatch chain are compiled into the kernel calling it, never alone.
_LINK_JIT = {"nogil": True}

_PACKAGE = Path(__file__).resolve().parent
# Rooms below pmd, the lowest that dispatches by kind: by the layer order none of their kernels
# can call a dispatch, so their cache stays valid whichever kinds a process registered.
_BELOW_DISPATCH = tuple(_PACKAGE / room for room in ("_core", "hv", "vring", "vhost_user",
                                                       "devices"))
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
        path = Path(self._py_file).resolve()
        if any(path.is_relative_to(room) for room in _BELOW_DISPATCH):
            return _package_stamp()
        registries = repr(sorted(_REGISTRIES.items()))
        if path.is_relative_to(_PACKAGE):
            return (_package_stamp(), registries)
        return (super().get_source_stamp(), _package_stamp(), registries)

    @classmethod
    def from_function(cls, py_func, py_file):
        path = Path(py_file).resolve()
        if os.environ.get("NUMBA_CACHE_DIR") or not any(
                path.is_relative_to(d) for d in (_PACKAGE, *_CHECKOUT_KERNEL_DIRS)):
            return None
        return super().from_function(py_func, py_file)


caching.CacheImpl._locator_classes.insert(0, _PackageStampedLocator)


# --- dispatch by kind, from a registry ---

def _link(arity: int, code: int, function, rest):
    # One link of a dispatch chain: call `function` when the kind in the first argument's
    # column 0 is `code`, else the rest of the chain. Numba's overload takes a plain function
    # of a fixed arity, hence one form per arity.
    if arity == 1:
        def link(row):
            return function(row) if row[0] == code else rest(row)
    elif arity == 2:
        def link(row, a):
            return function(row, a) if row[0] == code else rest(row, a)
    elif arity == 4:
        def link(row, a, b, c):
            return function(row, a, b, c) if row[0] == code else rest(row, a, b, c)
    else:
        raise ValueError(f"no dispatch of arity {arity}")
    return link


class KindDispatch:
    """A function for @njit code that calls, for a row whose column 0 holds a kind's code, the
    function registered for that kind (`miss` for a code none registered).

    Kinds register before any kernel calling the dispatch is compiled: the chain of `if`s is
    built from the registry when that kernel is typed, so a kernel compiled earlier (or loaded
    from Numba's cache, keyed on the package and on every registry) would not see a later kind.
    Calls are direct and inline, as a hand-written `if`/`elif` would be.
    """

    def __init__(self, name: str, arity: int, miss):
        self.name = name
        self.arity = arity
        self.kinds: dict[int, tuple[str, object]] = {}
        self._miss = miss
        self._typed = False
        parameters = ", ".join(["row", "a", "b", "c"][:arity])
        namespace: dict = {"chain": self._chain}
        # The stub names the function for @njit code; the typer (of the same parameters, as
        # Numba requires) hands Numba the chain to compile in its place.
        exec(f"def {name}({parameters}):\n"
             f"    raise TypeError('{name} is called from @njit code only')\n"
             f"def typer({parameters}):\n"
             f"    return chain()\n", namespace)
        self.function = namespace[name]
        overload(self.function, jit_options=_LINK_JIT)(namespace["typer"])

    def register(self, code: int, owner: str, function) -> None:
        """Dispatch rows of kind `code` (named `owner`, for messages) to `function`."""
        if self._typed:
            raise RuntimeError(f"{owner}: register {self.name} kinds before a kernel using "
                               "them is compiled")
        if code <= 0:
            raise ValueError(f"{owner}: a kind code is positive, not {code}")
        if code in self.kinds and self.kinds[code][0] != owner:
            raise ValueError(f"{owner}: kind code {code} is {self.kinds[code][0]}'s already")
        self.kinds[code] = (owner, function)
        _REGISTRIES[self.name] = sorted((c, o) for c, (o, _) in self.kinds.items())

    def _chain(self):
        self._typed = True
        chain = self._miss.py_func if hasattr(self._miss, "py_func") else self._miss
        for code, (_, function) in sorted(self.kinds.items(), reverse=True):
            chain = _link(self.arity, code, function, njit(**_LINK_JIT)(chain))
        return chain
