"""`ForwardingLoop`: streams of frames from rx port queues through an engine to tx port
queues, a poller of a poll host (an lcore, as testpmd calls it).

The loop adopts its ports' rows into one table that its poller row names; the host holds every
port (so their control planes wait) only while inside its kernel, and services them between
calls.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from fastpath.pmd import _lcore_kernels as k
from fastpath.pmd._host import PollHost
from fastpath.pmd._mbuf import MbufPool
from fastpath.pmd._pollers import Poller
from fastpath.pmd._port import Port, PortCounters
from fastpath.pmd.fwd import EngineSetup


@dataclass(frozen=True)
class Stream:
    """Frames from queue `rx_queue` of `rx_port` to queue `tx_queue` of `tx_port`."""

    rx_port: Port
    rx_queue: int
    tx_port: Port
    tx_queue: int


def paired_streams(ports: Sequence[Port]) -> list[Stream]:
    """testpmd's default pairing: port 0 with 1, 2 with 3 and so on, both ways, queue q to
    queue q; an odd port out (or a single port) sends back out of itself."""
    streams = []
    for first in range(0, len(ports), 2):
        a = ports[first]
        b = ports[first + 1] if first + 1 < len(ports) else a
        for q in range(min(a.queues, b.queues)):
            streams.append(Stream(a, q, b, q))
            if b is not a:
                streams.append(Stream(b, q, a, q))
    return streams


class ForwardingLoop(Poller):
    """Serves `streams` with `engine` in bursts of up to `burst` frames from `pool`.

    Every port of the streams must take its mbufs from `pool`: frames move between ports as
    mbuf numbers. The loop runs on `host` (added to it), or on a host of its own that `step`,
    `run` and `stop` drive.
    """

    kind = k.KIND

    def __init__(self, streams: Sequence[Stream], engine: EngineSetup, pool: MbufPool, *,
                 burst: int = 32, host: PollHost | None = None):
        if not streams:
            raise ValueError("a forwarding loop needs at least one stream")
        if not 1 <= burst <= 1024:
            raise ValueError(f"burst must be 1 to 1024, not {burst}")
        super().__init__()
        self.engine = engine
        self.pool = pool
        self.burst = burst
        self.ports: list[Port] = []
        for s in streams:
            for port, queue in ((s.rx_port, s.rx_queue), (s.tx_port, s.tx_queue)):
                if port.pool is not pool:
                    raise ValueError(f"{port.name} takes its mbufs from another pool")
                if not 0 <= queue < port.queues:
                    raise ValueError(f"{port.name} has no queue {queue}")
                if port not in self.ports:
                    self.ports.append(port)
        self.rows = np.concatenate([p.rows for p in self.ports])
        first_row = {}
        at = 0
        for port in self.ports:
            first_row[id(port)] = at
            # From now on the port's rows are the loop's: both see every change.
            port.rows = self.rows[at:at + port.queues]
            at += port.queues
        self.streams = np.zeros((len(streams), k.STREAM_COLUMNS), dtype=np.int64)
        for n, s in enumerate(streams):
            self.streams[n, k.STREAM_RX] = first_row[id(s.rx_port)] + s.rx_queue
            self.streams[n, k.STREAM_TX] = first_row[id(s.tx_port)] + s.tx_queue
        self.mbufs = pool.burst(burst)
        self._describe()
        (host or PollHost("fastpath-fwd")).add(self)

    def _describe(self) -> None:
        # The row names every array by address; they live as long as the loop.
        code, config, templates, template_lengths, state = self.engine.arrays
        data, length, free, top, stamp = self.pool.arrays
        for column, value in (
                (k.ARG_ROWS, self.rows.ctypes.data), (k.ARG_ROW_COUNT, len(self.rows)),
                (k.ARG_STREAMS, self.streams.ctypes.data),
                (k.ARG_STREAM_COUNT, len(self.streams)),
                (k.ARG_ENGINE, code), (k.ARG_CONFIG, config.ctypes.data),
                (k.ARG_TEMPLATES, templates.ctypes.data),
                (k.ARG_TEMPLATE_COUNT, templates.shape[0]),
                (k.ARG_TEMPLATE_WIDTH, templates.shape[1]),
                (k.ARG_TEMPLATE_LENGTHS, template_lengths.ctypes.data),
                (k.ARG_STATE, state.ctypes.data), (k.ARG_POOL_DATA, self.pool.rows_at),
                (k.ARG_POOL_COUNT, data.shape[0]), (k.ARG_POOL_ROOM, data.shape[1]),
                (k.ARG_POOL_LENGTH, length.ctypes.data), (k.ARG_POOL_FREE, free.ctypes.data),
                (k.ARG_POOL_TOP, top.ctypes.data), (k.ARG_POOL_STAMP, stamp.ctypes.data),
                (k.ARG_MBUFS, self.mbufs.ctypes.data),
                (k.ARG_BURST, self.burst)):
            self.row[column] = value
        for array, dtype in ((self.rows, np.uint64), (self.streams, np.int64),
                             (config, np.uint64), (templates, np.uint8),
                             (template_lengths, np.uint32), (state, np.uint64),
                             (data, np.uint8), (length, np.uint32), (free, np.uint32),
                             (top, np.int64), (stamp, np.uint64), (self.mbufs, np.uint32)):
            # The pool's frames are rows of a C-contiguous block (see MbufPool).
            contiguous = array.flags.c_contiguous or array is data and array.strides[1] == 1
            if array.dtype != dtype or not contiguous:
                raise TypeError(f"a forwarding loop's arrays are C-contiguous {dtype}")

    @property
    def moved(self) -> int:
        """Frames the loop sent on so far."""
        return int(self.row[k.ARG_MOVED])

    def hold(self) -> contextlib.AbstractContextManager:
        """Every port held."""
        held = contextlib.ExitStack()
        for port in self.ports:
            held.enter_context(port.hold())
        return held

    def service(self) -> None:
        """Every port serviced."""
        for port in self.ports:
            port.service()

    def step(self, rounds: int | None = None) -> int:
        """One call of the loop's host; returns the frames its pollers sent on."""
        return self.host.step(rounds)

    def run(self, duration: float | None = None, *, report_every: float = 1.0,
            on_report: Callable[[ForwardingLoop], None] | None = None,
            until: Callable[[], bool] | None = None) -> None:
        """Run the loop's host until `duration` seconds passed, `until()` is true (checked
        between calls) or `stop()` is called; `on_report(self)` runs every `report_every`
        seconds."""
        self.host.run(duration, report_every=report_every,
                      on_report=(lambda: on_report(self)) if on_report else None, until=until)

    def stop(self) -> None:
        """Make `run` return after the current call (from another thread or a signal)."""
        self.host.stop()

    def counters(self) -> dict[str, PortCounters]:
        """Per port name, its totals."""
        return {port.name: port.counters() for port in self.ports}
