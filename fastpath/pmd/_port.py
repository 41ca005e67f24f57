"""The port interface: bursts of mbufs in and out of a port's queues.

`n = port.rx_burst(queue, mbufs, max_n)` fills mbufs[:n] with frames received (mbufs taken from
the port's pool); `n = port.tx_burst(queue, mbufs, n)` sends mbufs[:n] and returns how many the
port took, and those go back to the pool; the caller still owns the rest (retry or free them).
The arrays belong to the caller, as with DPDK's burst functions.

A port queue's compiled face is one row of uint64 (`ROW_*`): its kind, the address of its
statistics and up to ROW_COLUMNS - ROW_ARGS arguments of the kind's own. Each kind's module
registers the kind (see `_kinds`). A forwarding loop passes rows to the kernels in `_dispatch`;
the Python methods here call the same kernels, one call per burst.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, fields

import numpy as np

from fastpath.pmd._kinds import burst_kernels
from fastpath.pmd._mbuf import MbufPool

# Row columns.
ROW_KIND = 0
ROW_STATS = 1      # address of the queue's uint64[STAT_COLUMNS] statistics
ROW_ARGS = 2       # the kind's own arguments start here
ROW_COLUMNS = 16

# Statistics columns, per queue (uint64).
STAT_RX_FRAMES = 0
STAT_RX_BYTES = 1
STAT_TX_FRAMES = 2
STAT_TX_BYTES = 3
STAT_TX_DROPPED = 4   # frames a forwarding loop freed because tx_burst took fewer
STAT_RX_NO_MBUF = 5   # receive bursts cut short because the pool ran out of mbufs
STAT_ERRORS = 6       # frames or rings the port gave up on (the kind logs which)
STAT_COLUMNS = 8


@dataclass
class PortCounters:
    """What a port (or one of its queues) moved."""

    rx_frames: int = 0
    rx_bytes: int = 0
    tx_frames: int = 0
    tx_bytes: int = 0
    tx_dropped: int = 0
    rx_no_mbuf: int = 0
    errors: int = 0

    @classmethod
    def from_stats(cls, stats: np.ndarray) -> PortCounters:
        """From a statistics row (or the sum of several)."""
        return cls(*(int(stats[k]) for k in range(len(fields(cls)))))


class Port:
    """A port with `queues` queues whose receive bursts take mbufs from `pool`.

    Subclasses set `kind` (the code their module registers) and fill their rows' arguments.
    `hold()` is held around every burst (and around every forwarding-loop call); `service()`
    runs after, outside the compiled code.
    """

    kind = 0

    def __init__(self, name: str, pool: MbufPool, queues: int = 1):
        if queues < 1:
            raise ValueError("a port has at least one queue")
        self.name = name
        self.pool = pool
        self.queues = queues
        self.stats = np.zeros((queues, STAT_COLUMNS), dtype=np.uint64)
        self.rows = np.zeros((queues, ROW_COLUMNS), dtype=np.uint64)
        self.rows[:, ROW_KIND] = self.kind
        for q in range(queues):
            self.rows[q, ROW_STATS] = self.stats[q].ctypes.data

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r})"

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def rx_burst(self, queue: int, mbufs: np.ndarray, max_n: int) -> int:
        """Receive up to max_n frames on `queue` into mbufs[:n] (taken from the pool);
        returns n."""
        self._check(queue, mbufs, max_n)
        with self.hold():
            n = burst_kernels().rx(self.rows[queue], self.pool.arrays, mbufs, max_n)
        self.service()
        return n

    def tx_burst(self, queue: int, mbufs: np.ndarray, n: int) -> int:
        """Send mbufs[:n] on `queue`; returns how many the port took (they are back in the
        pool). The caller owns the rest."""
        self._check(queue, mbufs, n)
        with self.hold():
            sent = burst_kernels().tx(self.rows[queue], self.pool.arrays, mbufs, n)
        self.service()
        return sent

    def counters(self, queue: int | None = None) -> PortCounters:
        """Totals for one queue, or for all of them."""
        stats = self.stats.sum(axis=0) if queue is None else self.stats[queue]
        return PortCounters.from_stats(stats)

    @property
    def ends(self) -> bool:
        """Whether what the port receives runs out (a replay of so many passes): then `done`
        says when it has."""
        return False

    @property
    def done(self) -> bool:
        """Whether a port that `ends` has received everything it will."""
        return False

    def hold(self) -> contextlib.AbstractContextManager:
        """Held while compiled code uses the rows: they are current and stay valid."""
        return contextlib.nullcontext()

    def service(self) -> None:
        """Work the compiled code leaves to Python (writing a capture out, say)."""

    def close(self) -> None:
        """Release what the port holds."""

    def _check(self, queue: int, mbufs: np.ndarray, n: int) -> None:
        if not 0 <= queue < self.queues:
            raise IndexError(f"{self.name} has queues 0 to {self.queues - 1}, not {queue}")
        if mbufs.dtype != np.uint32 or mbufs.ndim != 1:
            raise TypeError("mbufs is a one-dimensional uint32 array")
        if not 0 <= n <= len(mbufs):
            raise ValueError(f"a burst of {n} does not fit {len(mbufs)} mbufs")
