"""The NIC paths' wire: fastpath ring ports carry what a NIC transmits to a far side that sends
every frame back, as the virtio path's back-end does, so that real ports carry the frames."""

from __future__ import annotations

import itertools
import os

from fastpath.pmd import MbufPool, RingPort

__all__ = ["EchoWire"]

_names = itertools.count()


class EchoWire:
    """Two shared-memory rings, out and back: `carry(frames)` sends a burst on the near
    port, the far side takes it off the out ring and puts it on the back ring, and the near
    side receives it; the frames that came back are returned in order. `slots` bounds a
    burst. Close it when done (the ring files go)."""

    def __init__(self, slots: int = 256, room: int = 2048):
        prefix = f"nic-{os.getpid()}-{next(_names)}"
        self.pool = MbufPool(4 * slots, room)
        self.slots = slots
        self._ports: list[RingPort] = []
        try:
            self.near_out = self._port(f"{prefix}-out", receive=False, create=True)
            self.far_in = self._port(f"{prefix}-out", send=False, create=False)
            self.far_out = self._port(f"{prefix}-back", receive=False, create=True)
            self.near_in = self._port(f"{prefix}-back", send=False, create=False)
        except BaseException:
            self.close()
            raise
        self._mbufs = self.pool.burst(slots)
        self.carried = 0

    def _port(self, name: str, **options) -> RingPort:
        port = RingPort(name, self.pool, slots=self.slots, **options)
        self._ports.append(port)
        return port

    def carry(self, frames: list[bytes]) -> list[bytes]:
        """Send `frames` (at most `slots`) out and take back what the far side returned."""
        if len(frames) > self.slots:
            raise ValueError(f"{len(frames)} frames; a burst on the wire is at most "
                             f"{self.slots}")
        mbufs, n = self._mbufs, len(frames)
        got = self.pool.alloc(mbufs, n)
        if got < n:
            raise RuntimeError("the wire's mbuf pool ran dry")
        for k, frame in enumerate(frames):
            self.pool.put(int(mbufs[k]), frame)
        self._send(self.near_out, n)
        # The far side: every frame it receives goes straight back.
        arrived = self.far_in.rx_burst(0, mbufs, self.slots)
        self._send(self.far_out, arrived)
        back = self.near_in.rx_burst(0, mbufs, self.slots)
        returned = [self.pool.frame(int(m)) for m in mbufs[:back]]
        self.pool.release(mbufs, back)
        self.carried += back
        return returned

    def _send(self, port: RingPort, n: int) -> None:
        sent = port.tx_burst(0, self._mbufs, n)
        if sent < n:
            self.pool.release(self._mbufs[sent:], n - sent)
            raise RuntimeError(f"{port.name} took {sent} of {n} frames")

    def close(self) -> None:
        """Close the ports; the last one on each ring removes its file."""
        for port in self._ports:
            port.close()
        self._ports.clear()
