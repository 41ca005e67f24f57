"""`PollHost`: one thread (an lcore, a reactor) running compiled pollers of any kind.

Every poll-mode worker in fastpath is a host with pollers on it: a forwarding loop's streams
(`ForwardingLoop`), the vhost-net back-end's queue pairs (`Forwarder`), a relay of messages
between hosts (`Relay`), and whatever a program or a later room registers. The host keeps one
row per poller in one table and calls its kernel for a bounded number of rounds at a time,
holding every poller (so their control planes wait) only while inside it; between calls Python
services the pollers. Several hosts run on several cores and exchange messages through
`Mailbox`es, lock-free single-producer rings.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable

import numpy as np

from fastpath.pmd._host_kernels import run_pollers
from fastpath.pmd._pollers import (
    HOST_COLUMNS,
    HOST_KICKS_READ,
    HOST_SLEEPS,
    HOST_WOKEN,
    POLLER_COLUMNS,
    Poller,
)

log = logging.getLogger("fastpath.pmd")

# Rounds per kernel call: at most a few milliseconds with traffic, so that a control plane
# waiting on a poller's gate (a front-end setting rings up) waits little, and enough that the
# return to Python costs nothing.
ROUNDS_PER_CALL = 1024

# How long a host with no pollers waits before looking again.
EMPTY_SLEEP = 0.01


class PollHost:
    """Runs its pollers, in the calling thread (`step`, `run`) or its own (`start`).

    `idle_rounds`: 0 to busy-poll for ever; else after that many rounds without work the host
    sleeps on its pollers' wake fds for up to `sleep_ms`. `cpu`, for a host with its own
    thread: the core that thread runs on.
    """

    def __init__(self, name: str = "fastpath-host", *, idle_rounds: int = 0,
                 sleep_ms: int = 10, rounds: int = ROUNDS_PER_CALL, cpu: int | None = None):
        if idle_rounds < 0 or sleep_ms < 0 or rounds < 1:
            raise ValueError("idle_rounds and sleep_ms are 0 or more, rounds 1 or more")
        self.name = name
        self.idle_rounds = idle_rounds
        self.sleep_ms = sleep_ms
        self.rounds = rounds
        self.cpu = cpu
        self.pollers: list[Poller] = []
        self.table = np.zeros((0, POLLER_COLUMNS), dtype=np.uint64)
        self.state = np.zeros(HOST_COLUMNS, dtype=np.uint64)
        self.work = 0
        self._wake_fds = np.zeros(0, dtype=np.int32)
        # Held around each kernel call and around every change of the table.
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        # Compile (or load from Numba's cache) now, not in the first timed call.
        run_pollers(self.table, self.state, 1, 0, self._wake_fds, 0)

    def __repr__(self) -> str:
        return f"PollHost({self.name!r}, {len(self.pollers)} pollers)"

    def wakes(self) -> dict[str, int]:
        """What woke the host, so far: `sleeps` it took, `woken_by_eventfd` of them (the rest
        timed out), and `kicks_read`, the sum of the eventfd counts it read on waking (each write
        of a kick or call eventfd adds 1; writes while it polled are read at its next sleep)."""
        with self._lock:
            return {"kicks_read": int(self.state[HOST_KICKS_READ]),
                    "sleeps": int(self.state[HOST_SLEEPS]),
                    "woken_by_eventfd": int(self.state[HOST_WOKEN])}

    def add(self, poller: Poller) -> None:
        """Poll `poller` from the next call on."""
        with self._lock:
            if poller.host is not None:
                raise ValueError(f"{poller!r} is on {poller.host!r} already")
            poller.host = self
            self.pollers.append(poller)
            self._rebuild()

    def remove(self, poller: Poller) -> None:
        """Stop polling `poller` (its row is its own again)."""
        with self._lock:
            if poller.host is not self:
                return
            self.pollers.remove(poller)
            poller.row = poller.row.copy()
            poller.host = None
            self._rebuild()

    def wake_fds_changed(self) -> None:
        """A poller's wake fds changed (called with the poller held, between calls)."""
        self._wake_fds = np.array([fd for p in self.pollers for fd in p.wake_fds],
                                  dtype=np.int32)

    def step(self, rounds: int | None = None) -> int:
        """One kernel call of up to `rounds` rounds; returns the work the pollers did."""
        with self._lock, contextlib.ExitStack() as held:
            for poller in self.pollers:
                held.enter_context(poller.hold())
            if len(self.table):
                work = run_pollers(self.table, self.state, rounds or self.rounds,
                                   self.idle_rounds, self._wake_fds, self.sleep_ms)
            else:
                work = 0
            for poller in self.pollers:
                poller.service()
        if not len(self.table):
            time.sleep(EMPTY_SLEEP)
        self.work += work
        return work

    def run(self, duration: float | None = None, *, report_every: float = 1.0,
            on_report: Callable[[], None] | None = None,
            until: Callable[[], bool] | None = None) -> None:
        """Poll until `duration` seconds passed, `until()` is true (checked between calls)
        or `stop()` is called; `on_report()` runs every `report_every` seconds."""
        start = time.monotonic()
        next_report = start + report_every
        self._stop.clear()
        while not self._stop.is_set():
            self.step()
            now = time.monotonic()
            if on_report and now >= next_report:
                on_report()
                next_report += report_every * max(1, int((now - next_report) // report_every
                                                        + 1))
            if duration is not None and now - start >= duration:
                break
            if until is not None and until():
                break

    def start(self) -> None:
        """Run in a thread of the host's own (on `cpu`, when given) until `stop()`."""
        if self._thread is not None:
            raise RuntimeError(f"{self.name} runs already")
        self._stop.clear()
        self._thread = threading.Thread(target=self._serve, name=self.name, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Make `run` return after the current call; a thread of the host's own is waited
        for."""
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join()
            self._thread = None

    def _serve(self) -> None:
        if self.cpu is not None:
            try:
                os.sched_setaffinity(threading.get_native_id(), {self.cpu})
            except OSError as e:
                log.warning("%s: cannot run on CPU %d (%s); running where the system puts it",
                            self.name, self.cpu, e)
        self.run()

    def _rebuild(self) -> None:
        # One table of every poller's row; from now on each poller's row is a view into it, so
        # both see every change.
        rows = [p.row for p in self.pollers]
        self.table = (np.array(rows, dtype=np.uint64) if rows
                      else np.zeros((0, POLLER_COLUMNS), dtype=np.uint64))
        for k, poller in enumerate(self.pollers):
            poller.row = self.table[k]
        self.wake_fds_changed()
