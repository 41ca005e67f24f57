"""Numba settings shared by every kernel, and the compiled core's entry points for kernels.

Kernels call the core's exported `fp_*` functions by symbol name (an ExternalFunction), not
through a ctypes pointer baked into the code, so Numba's on-disk cache stays valid across
processes: each process registers the symbols' addresses when it imports this module.
"""

import functools
import hashlib
import os
from pathlib import Path

from llvmlite import binding, ir
from numba import carray as carray  # re-exported for kernels, beside the pointers
from numba import types
from numba.core import caching, cgutils
from numba.core.extending import get_cython_function_address, intrinsic

DEBUG = os.environ.get("FASTPATH_DEBUG", "") not in ("", "0")

# One set of options for every @njit kernel: no GIL, cached, bounds checks only in debug runs.
# Numba's cache key ignores these options, so a debug run must not load release kernels.
NJIT = {"nogil": True, "cache": not DEBUG, "boundscheck": DEBUG}

# Pointers cross as integers: the same register on x86-64, and Numba passes ints freely.
POINTER = types.uintp



def _pointer_to(element):
    @intrinsic
    def pointer(typingctx, address):
        signature = types.CPointer(element)(address)

        def codegen(context, builder, sig, args):
            return builder.inttoptr(args[0], context.get_value_type(sig.return_type))
        return signature, codegen
    return pointer


# Arrays at raw addresses, for kernels whose state reaches them as integers in a row (a port's,
# a poller's, a bdev channel's): `carray(u64_pointer(address), shape)`. The Python object that
# made the arrays keeps them alive while the row is in use.
u8_pointer = _pointer_to(types.uint8)
u32_pointer = _pointer_to(types.uint32)
u64_pointer = _pointer_to(types.uint64)
i64_pointer = _pointer_to(types.int64)


@intrinsic
def void_pointer(typingctx, address):
    """An address as a void pointer, for arrays of records: `carray(void_pointer(address),
    shape, RECORD_DTYPE)`."""
    # SAFETY: a cast only; each kernel that makes an array of it says why its address holds
    # what the array claims.
    def codegen(context, builder, signature, args):
        return builder.inttoptr(args[0], context.get_value_type(types.voidptr))
    return types.voidptr(address), codegen


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

# Nanoseconds of the monotonic clock, for kernels that time what they do.
monotonic_ns = core_function("clock", "fp_monotonic_ns", types.int64())

# Per dispatch by kind, its kinds (code, owner): part of the cache key of every kernel that
# may call a dispatch, since the kinds registered are compiled into it.
_REGISTRIES: dict[str, list[tuple[int, str]]] = {}

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
        if Path(self._py_file).resolve().is_relative_to(_PACKAGE):
            return _package_stamp()
        return (super().get_source_stamp(), _package_stamp())

    def may_dispatch(self) -> bool:
        """Whether the kernel may call a dispatch by kind (by the layer order)."""
        path = Path(self._py_file).resolve()
        return not any(path.is_relative_to(room) for room in _BELOW_DISPATCH)

    @classmethod
    def from_function(cls, py_func, py_file):
        path = Path(py_file).resolve()
        if os.environ.get("NUMBA_CACHE_DIR") or not any(
                path.is_relative_to(d) for d in (_PACKAGE, *_CHECKOUT_KERNEL_DIRS)):
            return None
        return super().from_function(py_func, py_file)


def registered_kinds() -> str:
    """Every dispatch's kinds as registered now: what a kernel that may dispatch compiles in."""
    return repr(sorted(_REGISTRIES.items()))


_index_key_of_numba = caching.FunctionCache._index_key


def _index_key(self, sig, codegen):
    # The kinds a kernel that may dispatch was compiled with are part of its key among the
    # entries of its cache file, taken when the kernel is loaded or compiled (once every kind
    # registered), not when it was decorated: a process that registers more kinds (one that
    # imports spdk_like, say) then finds or adds its own entry beside the others' instead of
    # loading a kernel that lacks its kinds or replacing theirs.
    key = _index_key_of_numba(self, sig, codegen)
    locator = self._impl.locator
    if isinstance(locator, _PackageStampedLocator) and locator.may_dispatch():
        return (*key, registered_kinds())
    return key


caching.CacheImpl._locator_classes.insert(0, _PackageStampedLocator)
caching.FunctionCache._index_key = _index_key


# --- dispatch by kind, from a registry ---

class KindDispatch:
    """A function for @njit code that calls, for a row whose column 0 holds a kind's code, the
    function registered for that kind (`miss` for a code none registered).

    The call compiles to one switch on the code with a direct call of each kind's function in
    its arm, as a hand-written `if`/`elif` chain would (a chain of helper functions, one per
    kind, costs a call and reference counting per kind tried: up to 5x per burst). Kinds
    register before any kernel calling the dispatch is compiled: the switch is built from the
    registry when that kernel is typed, and a kernel compiled earlier would not see a later
    kind (the registries are part of the cache key of the kernels that may call them).
    """

    def __init__(self, name: str, arity: int, miss):
        self.name = name
        self.arity = arity
        self.kinds: dict[int, tuple[str, object]] = {}
        self._miss = miss
        self._typed = False
        parameters = ", ".join(["row", "a", "b", "c", "d", "e"][:arity])
        # Numba's intrinsic takes a function of fixed parameters after the typing context.
        namespace: dict = {"typer": self._typer}
        exec(f"def {name}(typingctx, {parameters}):\n"
             f"    return typer(typingctx, ({parameters},))\n", namespace)
        self.function = intrinsic(namespace[name])

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

    def _typer(self, typingctx, argument_types):
        self._typed = True
        arms = [(code, function) for code, (_, function) in sorted(self.kinds.items())]
        arms.append((None, self._miss))
        calls = []
        for code, function in arms:
            function_type = typingctx.resolve_value_type(function)
            calls.append((code, function_type,
                          typingctx.resolve_function_type(function_type, argument_types, {})))
        returns = typingctx.unify_types(*[signature.return_type for _, _, signature in calls])
        if returns is None:
            raise TypeError(f"{self.name}: the kinds' functions return types that do not "
                            "unify")

        def codegen(context, builder, signature, arguments):
            row = context.make_array(signature.args[0])(context, builder, arguments[0])
            kind = builder.load(row.data)
            result = cgutils.alloca_once(builder, context.get_value_type(returns))
            end = builder.append_basic_block(f"{self.name}.end")
            miss = builder.append_basic_block(f"{self.name}.miss")
            switch = builder.switch(kind, miss)
            for code, function_type, call in calls:
                if code is None:
                    block = miss
                else:
                    block = builder.append_basic_block(f"{self.name}.{code}")
                    switch.add_case(ir.Constant(kind.type, code), block)
                builder.position_at_end(block)
                value = context.get_function(function_type, call)(builder, arguments)
                builder.store(context.cast(builder, value, call.return_type, returns), result)
                builder.branch(end)
            builder.position_at_end(end)
            return builder.load(result)

        return returns(*argument_types), codegen
