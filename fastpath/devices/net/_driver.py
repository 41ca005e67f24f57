"""What every virtio-net driver on the front-end side of vhost-user sets up alike: the features
it asks for, where its rings and buffers sit in its own memfd-backed `GuestMemory`, and the
handshake that shares that memory with the back-end and starts every virtqueue.

Virtqueue 2k is queue pair k's receiveq, 2k + 1 its transmitq (virtio 1.2 §5.1.2). Each
virtqueue has `queue_size` buffers of its own at fixed places, so a driver can map a buffer id
to its buffer with one table.
"""

from __future__ import annotations

from dataclasses import dataclass

from fastpath.devices.net._device import VIRTIO_NET_F_MQ, VIRTIO_NET_F_MRG_RXBUF
from fastpath.errors import BackendRefused
from fastpath.hv import GuestMemory, SharedRegion
from fastpath.vhost_user import Frontend, Vring
from fastpath.vring import (
    VIRTIO_F_RING_PACKED,
    VIRTIO_F_VERSION_1,
    VIRTIO_RING_F_EVENT_IDX,
    DriverQueue,
    PackedDriverQueue,
    RingAddresses,
    SplitDriverQueue,
    ring_bytes,
    ring_layout,
)

BUFFER_SIZE = 2048
RING_BASE = 0x1000
# virtio 1.2 §2.1 device status: ACKNOWLEDGE | DRIVER | FEATURES_OK | DRIVER_OK.
STATUS_RUNNING = 0x1 | 0x2 | 0x8 | 0x4
# virtio 1.2 §2.8: a packed ring starts at slot 0 with its wrap counters set (bit 15).
PACKED_RING_START = 0x8000


def net_driver_features(*, packed: bool, mergeable: bool, queue_pairs: int = 1,
                        event_idx: bool = True) -> int:
    """The virtio features a driver asks for: VERSION_1 always, EVENT_IDX unless told not to
    (then only the ring flags suppress notifications), RING_PACKED, MRG_RXBUF and MQ as
    wanted."""
    return (1 << VIRTIO_F_VERSION_1 | (1 << VIRTIO_RING_F_EVENT_IDX if event_idx else 0)
            | (1 << VIRTIO_F_RING_PACKED if packed else 0)
            | (1 << VIRTIO_NET_F_MRG_RXBUF if mergeable else 0)
            | (1 << VIRTIO_NET_F_MQ if queue_pairs > 1 else 0))


@dataclass(frozen=True)
class NetLayout:
    """Guest-physical places of `vrings` rings of `queue_size` (one page-aligned stretch
    each, from RING_BASE), then, from the next MiB, each virtqueue's buffers: `rx_buffer`
    bytes each for a receiveq, `tx_buffer` for a transmitq."""

    vrings: int
    queue_size: int
    packed: bool
    rx_buffer: int = BUFFER_SIZE
    tx_buffer: int = BUFFER_SIZE

    def rings(self, index: int) -> RingAddresses:
        """Where virtqueue `index`'s ring areas are."""
        stride = _round_up(ring_bytes(self.queue_size, self.packed), 4096)
        return ring_layout(self.queue_size, RING_BASE + index * stride, self.packed)

    def buffer_size(self, index: int) -> int:
        """Bytes of each buffer of virtqueue `index`."""
        return self.tx_buffer if index % 2 else self.rx_buffer

    def buffers(self, index: int) -> int:
        """Guest-physical address of virtqueue `index`'s first buffer (the others follow)."""
        pair = self.queue_size * (self.rx_buffer + self.tx_buffer)
        return (self._buffers_base + index // 2 * pair
                + (self.queue_size * self.rx_buffer if index % 2 else 0))

    @property
    def memory_size(self) -> int:
        """Bytes of guest memory the layout needs, from guest-physical 0."""
        return _round_up(self.buffers(self.vrings), 1 << 21)

    @property
    def _buffers_base(self) -> int:
        stride = _round_up(ring_bytes(self.queue_size, self.packed), 4096)
        return _round_up(RING_BASE + self.vrings * stride, 1 << 20)


class NetDriver:
    """A virtio-net device on the back-end at `path`, set up from the driver's side.

    Connects (waiting up to `connect_timeout` seconds for the socket), negotiates
    `net_driver_features(...)` (EVENT_IDX unless `event_idx` is False; raising BackendRefused
    when a feature in `require` is refused, or the back-end serves fewer than `queue_pairs`
    pairs), makes the memory of a `NetLayout`, shares it and starts every virtqueue:
    `queues[i]` is virtqueue i's `DriverQueue` and `vrings[i]` its `Vring` (the kick
    eventfd). Nothing is posted yet. Regions in `shared` (another memory's, left open by
    this driver) join the memory table, so that buffers there can be posted as they are.
    """

    def __init__(self, path: str, *, queue_pairs: int = 1, queue_size: int = 256,
                 packed: bool = False, mergeable: bool = False, rx_buffer: int = BUFFER_SIZE,
                 tx_buffer: int = BUFFER_SIZE, connect_timeout: float = 10.0, require: int = 0,
                 event_idx: bool = True, shared: tuple[SharedRegion, ...] = ()):
        if queue_pairs < 1:
            raise ValueError("a virtio-net device has at least one queue pair")
        self.memory: GuestMemory | None = None
        self.queues: list[DriverQueue] = []
        self.vrings: list[Vring] = []
        self.frontend = Frontend(path, connect_timeout=connect_timeout)
        try:
            wanted = net_driver_features(packed=packed, mergeable=mergeable,
                                         queue_pairs=queue_pairs, event_idx=event_idx)
            self.features = self.frontend.negotiate(wanted)
            refused = require & ~self.features
            if refused:
                raise BackendRefused(f"the back-end at {path} refused virtio features "
                                     f"{_bits(refused)} (it acked {self.features:#x})")
            if queue_pairs > 1:
                served = self.frontend.queue_num()
                if served is not None and served < queue_pairs:
                    raise BackendRefused(f"the back-end at {path} serves {served} queue pairs, "
                                         f"not {queue_pairs}")
            self.packed = bool(self.features >> VIRTIO_F_RING_PACKED & 1)
            self.mergeable = bool(self.features >> VIRTIO_NET_F_MRG_RXBUF & 1)
            event_idx = bool(self.features >> VIRTIO_RING_F_EVENT_IDX & 1)
            self.layout = NetLayout(2 * queue_pairs, queue_size, self.packed, rx_buffer,
                                    tx_buffer)
            self.memory = GuestMemory([(0, self.layout.memory_size)])
            for region in shared:
                self.memory.add_region(region, owns_fd=False)
            self.frontend.set_memory(self.memory)
            driver = PackedDriverQueue if self.packed else SplitDriverQueue
            base = PACKED_RING_START if self.packed else 0
            for index in range(self.layout.vrings):
                rings = self.layout.rings(index)
                self.queues.append(driver(self.memory, queue_size, rings, event_idx=event_idx))
                self.vrings.append(self.frontend.start_vring(index, queue_size, self.memory,
                                                             rings, base=base))
            self.frontend.set_status(STATUS_RUNNING)
        except BaseException:
            self.close()
            raise

    def stop(self) -> None:
        """Stop every virtqueue (the back-end serves what is left first, then lets go)."""
        for index in range(len(self.vrings)):
            self.frontend.stop_vring(index)
        self.vrings = []

    def close(self) -> None:
        """Close the connection and the memory."""
        self.frontend.close()
        if self.memory is not None:
            self.memory.close()


def _bits(mask: int) -> str:
    return ", ".join(str(bit) for bit in range(mask.bit_length()) if mask >> bit & 1)


def _round_up(n: int, to: int) -> int:
    return (n + to - 1) // to * to
