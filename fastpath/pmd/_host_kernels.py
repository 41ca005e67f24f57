"""The poll host's kernel: every poller of a host, round after round, in compiled code.

Poller kinds register (see `_pollers`) when their module is imported, which must be before a
host kernel is compiled: the modules of the built-in kinds are imported here.
"""

import importlib

from numba import njit

from fastpath._numba import NJIT, carray, u64_pointer
from fastpath.pmd._pollers import (
    HOST_COLUMNS,
    HOST_IDLE,
    HOST_KICKS_READ,
    HOST_SERVICE,
    HOST_SLEEPS,
    HOST_WOKEN,
    POLLER_COLUMNS,
    arm_by_kind,
    poll_by_kind,
)
from fastpath.vring.kernels import eventfd_wait


@njit(**NJIT)
def run_pollers(table, host, rounds, idle_rounds, wake_fds, sleep_ms):
    """Poll every row of `table` for up to `rounds` rounds; returns the work done.

    Returns early when a poller sets host[HOST_SERVICE] (cleared here). With idle_rounds > 0,
    after that many rounds in a row with no work (counted in host[HOST_IDLE], across calls) it
    arms every poller, sleeps on `wake_fds` (int32 eventfds) for up to sleep_ms unless one had
    work pending, disarms them and returns; each sleep is counted in host[HOST_SLEEPS], those an
    eventfd ended in host[HOST_WOKEN], and the counts read from the eventfds in
    host[HOST_KICKS_READ].
    """
    # SAFETY: views of the caller's own arrays, which outlive the call. Views without an
    # owner spare each poller call a pair of atomic reference counts (a third of a round's
    # cost where the pollers have little to do).
    pollers = table.shape[0]
    table = carray(u64_pointer(table.ctypes.data), (pollers, POLLER_COLUMNS))
    host = carray(u64_pointer(host.ctypes.data), (HOST_COLUMNS,))
    done = 0
    for _ in range(rounds):
        work = 0
        for p in range(pollers):
            work += poll_by_kind(table[p], host)
        done += work
        if host[HOST_SERVICE] != 0:
            host[HOST_SERVICE] = 0
            return done
        if work:
            host[HOST_IDLE] = 0
            continue
        if idle_rounds <= 0:
            continue
        host[HOST_IDLE] += 1
        if host[HOST_IDLE] < idle_rounds:
            continue
        host[HOST_IDLE] = 0
        pending = 0
        for p in range(table.shape[0]):
            pending += arm_by_kind(table[p], 1)
        if pending == 0:
            fired = eventfd_wait(wake_fds.ctypes.data, wake_fds.shape[0], sleep_ms,
                                 host[HOST_KICKS_READ:].ctypes.data)
            host[HOST_SLEEPS] += 1
            if fired > 0:
                host[HOST_WOKEN] += 1
        for p in range(table.shape[0]):
            arm_by_kind(table[p], 0)
        return done
    return done


# The built-in poller kinds, each registering itself on import.
for _module in ("fastpath.pmd._lcore_kernels", "fastpath.pmd._forwarder_kernels",
                "fastpath.pmd._relay"):
    importlib.import_module(_module)
