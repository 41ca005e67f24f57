"""Poller kinds: what the poll host runs, registered by the module of each kind.

A poller is one row of uint64 (`POLLER_*`): its kind, then up to POLLER_COLUMNS - 1 arguments
of the kind's own (addresses of the arrays the poller object keeps alive, counts, settings). A
kind registers its compiled `poll(row, host) -> work` (and, if it can sleep, `arm(row, on) ->
pending`) with `register_poller`; the host calls each row's through a dispatch built from this
registry, so there is no Python between pollers, whatever their kinds.
"""

from __future__ import annotations

import contextlib

import numpy as np
from numba import njit

from fastpath._numba import NJIT, KindDispatch

# Poller row columns (uint64).
POLLER_KIND = 0
POLLER_ARGS = 1       # the kind's own arguments start here
POLLER_COLUMNS = 24

# Host state columns (uint64): what a poller tells the host during a call, and what the host
# keeps across calls.
HOST_SERVICE = 0      # nonzero: return to Python after this round (a poller needs service)
HOST_IDLE = 1         # rounds in a row without work, carried from call to call
HOST_SLEEPS = 2       # sleeps on the wake fds
HOST_WOKEN = 3        # of those, sleeps an eventfd ended (the others timed out)
HOST_KICKS_READ = 4   # sum of the eventfd counts read while asleep: the kicks that woke it
HOST_COLUMNS = 5


@njit(**NJIT)
def _no_such_poller(row, host):
    # A row of no registered kind (or an emptied one) does nothing.
    return 0


@njit(**NJIT)
def _never_sleeps(row, on):
    # A kind that cannot be woken by a kick has nothing to arm; it keeps nothing pending.
    return 0


_poll = KindDispatch("poll_by_kind", 2, _no_such_poller)
_arm = KindDispatch("arm_by_kind", 2, _never_sleeps)
poll_by_kind = _poll.function
arm_by_kind = _arm.function


def register_poller(code: int, name: str, poll, arm=None) -> None:
    """Register poller kind `code` (named `name`): `poll(row, host)` does one round of the
    poller's work and returns how much it did (frames, messages: 0 when idle); it may set
    host[HOST_SERVICE]. `arm(row, on)`, for a kind whose work arrives with a kick, asks for
    kicks (on=1) or stops asking (on=0) and returns the work already pending."""
    _poll.register(code, name, poll)
    if arm is not None:
        _arm.register(code, name, arm)


class Poller:
    """Something a host polls: one row of its kind (`row`, a view into the host's table from
    the moment it is added) and the Python work around it.

    Subclasses set `kind` and write their arguments into `row`; they keep alive every array
    the row names by address for as long as they are on a host.
    """

    kind = 0

    def __init__(self) -> None:
        self.row = np.zeros(POLLER_COLUMNS, dtype=np.uint64)
        self.row[0] = self.kind
        self.host = None   # the PollHost polling it, once added

    def hold(self) -> contextlib.AbstractContextManager:
        """Held while the host's kernel runs: what the row names is current and stays
        valid."""
        return contextlib.nullcontext()

    def service(self) -> None:
        """Work the compiled code leaves to Python, run after each kernel call with the
        poller still held."""

    @property
    def wake_fds(self) -> list[int]:
        """Eventfds that, signalled, have work for this poller (a sleeping host wakes)."""
        return []
