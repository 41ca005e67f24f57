"""`ForwardingLoop`: streams of frames from rx port queues through an engine to tx port
queues, served by one thread in compiled code (an lcore, as testpmd calls it).

The loop adopts its ports' rows into one table and calls the kernel for a bounded number of
rounds at a time, holding every port (so their control planes wait) only while inside it.
Between calls Python services the ports and reports statistics.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from fastpath.pmd._lcore_kernels import STREAM_COLUMNS, STREAM_RX, STREAM_TX, forward_rounds
from fastpath.pmd._mbuf import MbufPool
from fastpath.pmd._port import Port, PortCounters
from fastpath.pmd.fwd import EngineSetup

# Rounds per kernel call: at most a few milliseconds with traffic, so that a control plane
# waiting on a port's gate (a front-end setting rings up) waits little.
ROUNDS_PER_CALL = 1024


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
    for k in range(0, len(ports), 2):
        a = ports[k]
        b = ports[k + 1] if k + 1 < len(ports) else a
        for q in range(min(a.queues, b.queues)):
            streams.append(Stream(a, q, b, q))
            if b is not a:
                streams.append(Stream(b, q, a, q))
    return streams


class ForwardingLoop:
    """Serves `streams` with `engine` in bursts of up to `burst` frames from `pool`.

    Every port of the streams must take its mbufs from `pool`: frames move between ports as
    mbuf numbers.
    """

    def __init__(self, streams: Sequence[Stream], engine: EngineSetup, pool: MbufPool, *,
                 burst: int = 32):
        if not streams:
            raise ValueError("a forwarding loop needs at least one stream")
        if not 1 <= burst <= 1024:
            raise ValueError(f"burst must be 1 to 1024, not {burst}")
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
        self.streams = np.zeros((len(streams), STREAM_COLUMNS), dtype=np.int64)
        for k, s in enumerate(streams):
            self.streams[k, STREAM_RX] = first_row[id(s.rx_port)] + s.rx_queue
            self.streams[k, STREAM_TX] = first_row[id(s.tx_port)] + s.tx_queue
        self.mbufs = pool.burst(burst)
        self.moved = 0
        self._stop = threading.Event()
        # Compile (or load from Numba's cache) now, not in the first timed call.
        forward_rounds(self.rows, self.streams, engine.arrays, pool.arrays, self.mbufs, burst, 0)

    def step(self, rounds: int = ROUNDS_PER_CALL) -> int:
        """One kernel call of up to `rounds` rounds; returns the frames sent on."""
        with contextlib.ExitStack() as held:
            for port in self.ports:
                held.enter_context(port.hold())
            moved = forward_rounds(self.rows, self.streams, self.engine.arrays,
                                   self.pool.arrays, self.mbufs, self.burst, rounds)
        for port in self.ports:
            port.service()
        self.moved += moved
        return moved

    def run(self, duration: float | None = None, *, report_every: float = 1.0,
            on_report: Callable[[ForwardingLoop], None] | None = None,
            until: Callable[[], bool] | None = None) -> None:
        """Serve until `duration` seconds passed, `until()` is true (checked between calls)
        or `stop()` is called; `on_report(self)` runs every `report_every` seconds."""
        start = time.monotonic()
        next_report = start + report_every
        self._stop.clear()
        while not self._stop.is_set():
            self.step()
            now = time.monotonic()
            if on_report and now >= next_report:
                on_report(self)
                next_report += report_every * max(1, int((now - next_report) // report_every
                                                        + 1))
            if duration is not None and now - start >= duration:
                break
            if until is not None and until():
                break

    def stop(self) -> None:
        """Make `run` return after the current call (from another thread or a signal)."""
        self._stop.set()

    def counters(self) -> dict[str, PortCounters]:
        """Per port name, its totals."""
        return {port.name: port.counters() for port in self.ports}
