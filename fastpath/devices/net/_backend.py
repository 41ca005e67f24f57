"""`NetBackend`: a virtio-net vhost-user back-end for a program that moves the frames itself.

The control plane (accepting or connecting, one message per request) runs in a background
thread; the program calls `rx_burst` and `tx_burst` from its own loop. Each call crosses into
the compiled core once per burst and releases the GIL while it copies.
"""

from __future__ import annotations

import logging
import threading
from contextlib import AbstractContextManager

import numpy as np

from fastpath.devices.net._device import DEFAULT_MAC, NetCounters, VirtioNet, frame_size
from fastpath.devices.net._queue import HeldFrames, NetQueue
from fastpath.errors import VringError
from fastpath.vhost_user import BackendClient, BackendServer, Gate

log = logging.getLogger("fastpath.vhost_user")


class NetBackend:
    """Serve one virtio-net front-end at a time on the vhost-user socket `path`.

    With `client=True` it connects to a front-end listening on `path` and reconnects after it
    goes away; otherwise it listens there (a second front-end is refused while one is
    connected). Frames cross as rows of a uint8 array, one frame per row, with their lengths
    in a uint32 array; queue pair k is polled by at most one thread at a time.

    Frames the driver sent are not lost when it stops a transmitq (disables it, or stops it
    with GET_VRING_BASE, as DPDK's virtio-user does on exit) before the program took them:
    the device drains them into the pair's `held` store, and `rx_burst` gives them out first,
    after the front-end has gone too.
    """

    def __init__(self, path: str, *, client: bool = False, queue_pairs: int = 1,
                 mac: bytes = DEFAULT_MAC, mtu: int = 0, max_burst: int = 64):
        self.path = path
        self.queue_pairs = queue_pairs
        self._gate = Gate()
        self._settings = {"queue_pairs": queue_pairs, "mac": mac, "mtu": mtu,
                          "max_burst": max_burst}
        VirtioNet(self._gate, **self._settings)  # reject bad settings here, not per connection
        self._held = [HeldFrames(frame_size(mtu)) for _ in range(queue_pairs)]
        self._device: VirtioNet | None = None
        self._finished = [NetCounters() for _ in range(queue_pairs)]
        self._changed = threading.Condition()
        self._stop = threading.Event()
        adapter = BackendClient if client else BackendServer
        kwargs = {} if client else {"max_connections": 1}
        self._adapter = adapter(path, self._make_backend, **kwargs)
        self._thread = threading.Thread(target=self._serve, name="fastpath-vhost-user",
                                        daemon=True)
        self._thread.start()

    def __enter__(self) -> NetBackend:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """End the connection and stop serving the socket."""
        self._stop.set()
        self._thread.join()
        self._adapter.close()

    def ready(self, pair: int = 0) -> bool:
        """Whether a front-end has started queue pair `pair`'s transmitq and receiveq."""
        device = self._device
        return bool(device and pair < len(device.pairs) and device.pairs[pair].tx
                    and device.pairs[pair].rx)

    def wait_ready(self, timeout: float | None = None, pair: int = 0) -> bool:
        """Wait until `ready(pair)`; returns False if `timeout` seconds pass first."""
        with self._changed:
            return self._changed.wait_for(lambda: self.ready(pair), timeout)

    def rx_burst(self, pair: int, frames: np.ndarray, lengths: np.ndarray) -> int:
        """Take up to len(lengths) frames the driver transmitted on queue pair `pair` into the
        rows of `frames` (header stripped); returns how many. Frames held from a transmitq
        that stopped come first (see `held`); then 0 while no transmitq is served."""
        with self._gate.data():
            n = self._held[pair].take(frames, lengths) if 0 <= pair < self.queue_pairs else 0
            queue = self._queue(pair, "tx")
            if queue is not None and n < len(lengths):
                n += self._burst(queue.receive, frames[n:], lengths[n:])
            return n

    def tx_burst(self, pair: int, frames: np.ndarray, lengths: np.ndarray, n: int) -> int:
        """Give the first n frames to the driver's receive buffers on queue pair `pair`;
        returns how many it took. The rest did not fit the buffers posted: retry or drop."""
        with self._gate.data():
            queue = self._queue(pair, "rx")
            return self._burst(queue.transmit, frames, lengths, n) if queue else 0

    def queues(self, pair: int) -> tuple[NetQueue | None, NetQueue | None]:
        """Queue pair `pair`'s (transmitq, receiveq) while the connected front-end has them
        served (None for one it has not set up, or has disabled), for compiled code that
        serves them by handle. Call it, and use the handles, only inside `data_plane()`;
        take what `held(pair)` keeps before the transmitq."""
        return self._queue(pair, "tx"), self._queue(pair, "rx")

    def kick_fd(self, pair: int) -> int:
        """Queue pair `pair`'s transmitq kick eventfd while the connected front-end has it
        served, else -1: for a loop that sleeps until the driver kicks, with its kicks asked
        for (`queues(pair)[0].queue.enable_kicks()`)."""
        device = self._device
        if device is None or not 0 <= pair < len(device.pairs) or device.pairs[pair].tx is None:
            return -1
        return device.pairs[pair].tx_kick

    def held(self, pair: int) -> HeldFrames:
        """Where frames of pair `pair`'s transmitq wait after it stopped being served, for
        compiled code that serves the queues by handle (`take_held` gives them out; use it,
        like the handles, only inside `data_plane()`)."""
        return self._held[pair]

    def data_plane(self) -> AbstractContextManager:
        """Held around data-plane work on the queues: the control plane changes none of them
        meanwhile (hold it for a bounded stretch, a few milliseconds)."""
        return self._gate.data()

    def counters(self) -> list[NetCounters]:
        """Per queue pair, everything moved since the back-end was made."""
        with self._gate.control():
            live = self._device.counters() if self._device else []
        totals = []
        for k, done in enumerate(self._finished):
            total = NetCounters()
            total.add(done)
            if live:
                total.add(live[k])
            totals.append(total)
        return totals

    # --- inside ---

    def _queue(self, pair: int, side: str):
        device = self._device
        if device is None or not 0 <= pair < len(device.pairs):
            return None
        return getattr(device.pairs[pair], side)

    def _burst(self, operation, *args) -> int:
        try:
            return operation(*args)
        except VringError as e:
            # The driver broke its ring; it stays out of service until it is set up again.
            log.error("queue broken: %s", e)
            return 0

    def _make_backend(self, channel):
        device = VirtioNet(self._gate, on_change=self._on_change, held=self._held,
                           **self._settings)
        return device.backend(channel)

    def _on_change(self, device: VirtioNet) -> None:
        # With the gate held: no burst is running.
        if device.closed_down:
            if self._device is device:
                for total, c in zip(self._finished, device.counters(), strict=True):
                    total.add(c)
                self._device = None
        else:
            self._device = device
        with self._changed:
            self._changed.notify_all()

    def _serve(self) -> None:
        while not self._stop.is_set():
            self._adapter.serve_once(0.05)
            device = self._device
            if device is not None and device.wants_service:
                with self._gate.control():
                    device.service()
