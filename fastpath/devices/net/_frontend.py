"""`NetFrontend`: a virtio-net driver on the front-end side of vhost-user, for tests and tools
that send frames through any back-end and read what comes back. Its rings and buffers live in
its own memfd-backed `GuestMemory`, shared with the back-end."""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np

from fastpath.devices.net._driver import BUFFER_SIZE, NetDriver
from fastpath.devices.net._header import NET_HDR_DTYPE, NET_HDR_SIZE
from fastpath.vring import DriverQueue


class NetFrontend:
    """Queue pair 0 of a virtio-net device on the back-end at `path`.

    `packed` and `mergeable` ask for RING_PACKED and MRG_RXBUF, `event_idx` for EVENT_IDX (the
    back-end may refuse them; `features` says what was acked). Every receive buffer is
    BUFFER_SIZE bytes, so a frame longer than BUFFER_SIZE - 12 needs mergeable buffers to come
    back.

    When a ring asks for a kick, `notify(virtqueue index)` delivers it: by default a write to
    the vring's kick eventfd, as virtio-user does; a modelled guest passes its doorbell, the
    MMIO write to the notify area that the VMM turns into that same eventfd write.
    """

    def __init__(self, path: str, *, queue_size: int = 256, packed: bool = False,
                 mergeable: bool = True, event_idx: bool = True, connect_timeout: float = 10.0,
                 notify: Callable[[int], None] | None = None):
        self.size = queue_size
        self.driver = NetDriver(path, queue_size=queue_size, packed=packed, mergeable=mergeable,
                                connect_timeout=connect_timeout, event_idx=event_idx)
        self.frontend = self.driver.frontend
        self.memory = self.driver.memory
        self.features = self.driver.features
        self.packed = self.driver.packed
        self.mergeable = self.driver.mergeable
        self.rx: DriverQueue = self.driver.queues[0]
        self.tx: DriverQueue = self.driver.queues[1]
        self.rx_vring, self.tx_vring = self.driver.vrings
        self._notify = notify or self._kick_eventfd
        self.rx_pool = self.driver.layout.buffers(0)
        self.tx_pool = self.driver.layout.buffers(1)
        self._rx_slot: dict[int, int] = {}
        self._tx_slot: dict[int, int] = {}
        self._free_tx = list(range(queue_size - 1, -1, -1))
        self._partial: list[bytes] = []   # buffers of a mergeable frame still arriving
        self._partial_left = 0
        for slot in range(queue_size):
            self._post(slot)
        self._kick(self.rx, self.rx_vring)

    def send(self, frames: list[bytes], *, header_apart: bool = False) -> int:
        """Transmit frames (header and frame in one descriptor, or two with `header_apart`);
        returns how many fit the transmitq now."""
        self._reclaim()
        sent = 0
        for frame in frames:
            if not self._free_tx or len(frame) + NET_HDR_SIZE > BUFFER_SIZE:
                break
            slot = self._free_tx.pop()
            address = self.tx_pool + slot * BUFFER_SIZE
            self.memory.write(address, bytes(NET_HDR_SIZE) + frame)
            pieces = ([(address, NET_HDR_SIZE), (address + NET_HDR_SIZE, len(frame))]
                      if header_apart and frame else [(address, NET_HDR_SIZE + len(frame))])
            self._tx_slot[self.tx.add(readable=pieces)] = slot
            sent += 1
        self._kick(self.tx, self.tx_vring)
        return sent

    def receive(self, count: int, timeout: float = 5.0) -> list[bytes]:
        """Frames that came back on the receiveq (headers checked and stripped), until `count`
        arrived or `timeout` seconds passed."""
        frames: list[bytes] = []
        deadline = time.monotonic() + timeout
        while len(frames) < count and time.monotonic() < deadline:
            used = self.rx.collect()
            if not used:
                time.sleep(0.0005)
                continue
            # Collecting freed every id in the batch: map them all to their slots before any
            # slot is posted again and takes one of those ids.
            slots = [(self._rx_slot.pop(buffer_id), written) for buffer_id, written in used]
            for slot, written in slots:
                frame = self._assemble(self.memory.read(self.rx_pool + slot * BUFFER_SIZE,
                                                        written))
                if frame is not None:
                    frames.append(frame)
            for slot, _ in slots:
                self._post(slot)
            self._kick(self.rx, self.rx_vring)
        return frames

    def close(self) -> None:
        """Close the connection and the memory."""
        self.driver.close()

    def __enter__(self) -> NetFrontend:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _assemble(self, data: bytes) -> bytes | None:
        if self._partial_left:
            self._partial.append(data)
            self._partial_left -= 1
        else:
            if len(data) < NET_HDR_SIZE:
                raise ValueError(f"a receive buffer came back with {len(data)} bytes, less "
                                 "than a header")
            num_buffers = int(np.frombuffer(data, NET_HDR_DTYPE, count=1)[0]["num_buffers"])
            self._partial = [data[NET_HDR_SIZE:]]
            self._partial_left = (num_buffers if self.mergeable else 1) - 1
        if self._partial_left:
            return None
        return b"".join(self._partial)

    def _post(self, slot: int) -> None:
        address = self.rx_pool + slot * BUFFER_SIZE
        self._rx_slot[self.rx.add(writable=[(address, BUFFER_SIZE)])] = slot

    def _reclaim(self) -> None:
        for buffer_id, _ in self.tx.collect():
            self._free_tx.append(self._tx_slot.pop(buffer_id))

    def _kick(self, queue: DriverQueue, vring) -> None:
        if queue.should_kick():
            self._notify(vring.index)

    def _kick_eventfd(self, index: int) -> None:
        self.driver.vrings[index].kick_backend()

