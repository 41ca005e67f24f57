"""Port kinds: each registers once, from its own module, with `register_port_kind`.

A kind's record says how a command line names and makes its ports (`open_port`), and which
compiled kernels serve a port queue's row of its kind (column 0 of the row is the kind's code):

- `rx(row, pool, mbufs, max_n) -> n` receives into mbufs[:n], taking them with `take_mbufs`;
- `tx(row, pool, mbufs, n) -> sent` copies mbufs[:sent] out (`_dispatch` frees them);
- `wants_service(row) -> bool`, for a kind with work for Python between bursts.

`_dispatch` calls them through the dispatches here, whose switch on the kind is built from the
registry when a kernel calling them is compiled: a kind registers before that, when its module
is imported (`_dispatch` imports the built-in kinds). This module imports no kind, and no port:
ports import it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from numba import njit

from fastpath._numba import NJIT, KindDispatch


@dataclass(frozen=True, kw_only=True)
class PortKind:
    """One kind of port: its code, how a command line names it (`NAME:ARGUMENT` with
    `,key=value` options) and makes it, and its compiled kernels (see the module's doc)."""

    code: int
    name: str
    argument: str                             # the part after the colon ("" for none)
    options: dict[str, Callable[[str], Any]]  # key=value options, each with its parser
    help: str
    make: Callable[..., Any]                  # (argument, pool, **those options) -> Port
    rx: Callable[..., int]
    tx: Callable[..., int]
    wants_service: Callable[..., bool] | None = None
    argument_optional: bool = False


# The kinds by name, in the order of their codes: the order `--help` lists them in.
PORT_KINDS: dict[str, PortKind] = {}


@njit(**NJIT)
def _receives_nothing(row, pool, mbufs, max_n):
    # A row of no registered kind (a bare Port's) receives nothing...
    return 0


@njit(**NJIT)
def _takes_nothing(row, pool, mbufs, n):
    # ...and takes nothing: the caller still owns mbufs[:n].
    return 0


@njit(**NJIT)
def _needs_no_service(row):
    return False


_rx = KindDispatch("port_rx_kind", 4, _receives_nothing)
_tx = KindDispatch("port_tx_kind", 4, _takes_nothing)
_wants_service = KindDispatch("port_wants_service_kind", 1, _needs_no_service)
rx_by_kind = _rx.function
tx_by_kind = _tx.function
wants_service_by_kind = _wants_service.function


def register_port_kind(kind: PortKind) -> PortKind:
    """Register `kind` (before any kernel calling the dispatch is compiled); returns it.

    ValueError if its code or name is another kind's already.
    """
    for other in PORT_KINDS.values():
        if kind.code == other.code or kind.name == other.name:
            raise ValueError(f"port kind {kind.name!r} (code {kind.code}): {other.name!r} "
                             f"(code {other.code}) is registered already")
    _rx.register(kind.code, kind.name, kind.rx)
    _tx.register(kind.code, kind.name, kind.tx)
    if kind.wants_service is not None:
        _wants_service.register(kind.code, kind.name, kind.wants_service)
    kinds = sorted([*PORT_KINDS.values(), kind], key=lambda k: k.code)
    PORT_KINDS.clear()
    PORT_KINDS.update((k.name, k) for k in kinds)
    return kind


def flag(text: str) -> bool:
    """A yes/no option's value."""
    if text in ("1", "yes", "on", "true"):
        return True
    if text in ("0", "no", "off", "false"):
        return False
    raise ValueError(f"{text!r} is not a yes/no value (1/0, yes/no, on/off)")


# Port's Python methods cross into compiled code through `_dispatch`'s port_rx and port_tx,
# one call per burst; that module, which imports every built-in kind, hands them over here so
# that the port layer below it need not import it.
@dataclass(frozen=True)
class BurstKernels:
    """The compiled entry points of every kind: `rx(row, pool, mbufs, max_n) -> n` and
    `tx(row, pool, mbufs, n) -> sent`, counting frames and freeing what was sent."""

    rx: Callable[..., int]
    tx: Callable[..., int]


_burst_kernels: BurstKernels | None = None


def set_burst_kernels(kernels: BurstKernels) -> None:
    """What `burst_kernels` returns from now on."""
    global _burst_kernels
    _burst_kernels = kernels


def burst_kernels() -> BurstKernels:
    """`_dispatch`'s port_rx and port_tx, for Python callers."""
    if _burst_kernels is None:
        raise RuntimeError("fastpath.pmd._dispatch is not imported: import fastpath.pmd")
    return _burst_kernels
