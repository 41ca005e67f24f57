"""The virtio-net device (virtio 1.2 §5.1) behind a vhost-user back-end: what it offers, its
config space, and the queue pairs its data plane serves.

Virtqueue 2k is queue pair k's receiveq (the device writes frames for the driver), 2k + 1 its
transmitq (the driver's frames for the device). A receiveq takes frames only when started and
enabled (vhost-user "Ring states"). A started transmitq is, in turn:

* waiting until it is first enabled: left alone, as DPDK's vhost does, so that a front-end
  that sends before the back-end has read its last set-up messages finds its frames served;
* served while enabled: the host (a forwarding loop, `NetBackend`'s program) receives from it;
* discarding once disabled after that: "Ring states" has a disabled ring processed without
  side effects, a net device's transmitq emptied and its frames dropped. `service()` does it.

Frames the driver made available while the transmitq was served are not lost when it stops
being served, whether disabled (SET_VRING_ENABLE 0) or stopped (GET_VRING_BASE, which DPDK's
virtio-user sends right after disabling its rings on exit): the device drains the ring at that
moment, through the host's `on_drain` when it has one (the forwarder sends them on), otherwise
into the pair's `HeldFrames` for the host's next receive.
"""

from __future__ import annotations

import logging
import struct
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from fastpath.devices.net._control import ControlQueue
from fastpath.devices.net._queue import HeldFrames, NetQueue
from fastpath.errors import RequestRefused, VringError
from fastpath.vhost_user import ENGINE_PROTOCOL_FEATURES, VHOST_F_LOG_ALL, Backend, Device, Gate
from fastpath.vhost_user.wire import VRING_F_LOG, FrontendRequest, ProtocolFeature
from fastpath.vring import (
    VIRTIO_F_ACCESS_PLATFORM,
    VIRTIO_F_IN_ORDER,
    VIRTIO_F_RING_PACKED,
    VIRTIO_F_VERSION_1,
    VIRTIO_RING_F_EVENT_IDX,
    VIRTIO_RING_F_INDIRECT_DESC,
    DeviceQueue,
)

log = logging.getLogger("fastpath.vhost_user")

# virtio 1.2 §5.1.3 feature bits (numbers).
VIRTIO_NET_F_MTU = 3
VIRTIO_NET_F_MAC = 5
VIRTIO_NET_F_MRG_RXBUF = 15
VIRTIO_NET_F_STATUS = 16
VIRTIO_NET_F_CTRL_VQ = 17
VIRTIO_NET_F_MQ = 22

VIRTIO_NET_S_LINK_UP = 1
MAX_QUEUE_PAIRS = 8
DEFAULT_MAC = bytes.fromhex("525400123456")
ETHERNET_OVERHEAD = 18   # a frame's MAC addresses, one VLAN tag and EtherType beyond its MTU

NET_FEATURES = sum(1 << bit for bit in (
    VIRTIO_F_VERSION_1, VIRTIO_NET_F_MRG_RXBUF, VIRTIO_RING_F_EVENT_IDX,
    VIRTIO_RING_F_INDIRECT_DESC, VIRTIO_NET_F_MQ, VIRTIO_F_RING_PACKED, VIRTIO_F_IN_ORDER,
    VIRTIO_NET_F_STATUS, VIRTIO_NET_F_MAC, VHOST_F_LOG_ALL, VIRTIO_NET_F_CTRL_VQ,
    VIRTIO_F_ACCESS_PLATFORM,
))
"""What the device offers (MTU is added when one is set). No receive filtering (CTRL_RX,
CTRL_VLAN, CTRL_MAC_ADDR): the device delivers every frame, so it offers none of them. Every
buffer it touches comes from a pop, so ACCESS_PLATFORM (a vIOMMU) works end to end: the
engine translates ring IOVAs, the pops buffer IOVAs."""


def net_config(mac: bytes, queue_pairs: int, mtu: int) -> bytes:
    """The config space (§5.1.4): mac, status, max_virtqueue_pairs, mtu."""
    return mac + struct.pack("<HHH", VIRTIO_NET_S_LINK_UP, queue_pairs, mtu)


def frame_size(mtu: int) -> int:
    """Bytes a row needs for the largest frame a driver sends under `mtu` (0: none set)."""
    return max(2048, mtu + ETHERNET_OVERHEAD)


@dataclass
class QueuePair:
    """What the data plane serves of one queue pair: NetQueues for the rings it may use."""

    index: int
    tx: NetQueue | None = None          # the driver's transmitq, while served (see above)
    rx: NetQueue | None = None          # the driver's receiveq, when started and enabled
    tx_kick: int = -1                   # the transmitq's kick eventfd, for a loop that sleeps
    rx_kick: int = -1                   # the receiveq's, for a loop that sleeps waiting for room


@dataclass
class NetCounters:
    """Frames through one queue pair since the device was made."""

    rx_frames: int = 0   # frames the driver transmitted (received by the device)
    rx_bytes: int = 0
    rx_dropped: int = 0  # transmitq chains that held no valid frame
    tx_frames: int = 0   # frames delivered to the driver's receive buffers
    tx_bytes: int = 0
    tx_dropped: int = 0  # frames the receiveq could not take
    calls: int = 0
    rx_discarded: int = 0  # of rx_frames, those of a disabled transmitq, dropped unserved

    def add(self, other: NetCounters) -> None:
        """Add another set of counters into this one."""
        for name in self.__dataclass_fields__:
            setattr(self, name, getattr(self, name) + getattr(other, name))


def _queue_counters(rx: NetQueue | None, tx: NetQueue | None) -> NetCounters:
    c = NetCounters()
    if tx is not None:
        t = tx.counters
        c.rx_frames, c.rx_bytes, c.rx_dropped, c.calls = (t["frames"], t["bytes"], t["dropped"],
                                                          t["calls"])
    if rx is not None:
        r = rx.counters
        c.tx_frames, c.tx_bytes, c.tx_dropped = r["frames"], r["bytes"], r["dropped"]
        c.calls += r["calls"]
    return c


def _fd(fd: int | None) -> int:
    # The core takes -1 for "no fd" (a ring polled without eventfds).
    return -1 if fd is None else fd


def _set_log(queue: NetQueue, backend: Backend, setup) -> None:
    # While the front-end asks for it (VHOST_F_LOG_ALL with a log mapped), log every page
    # written; a ring with VHOST_VRING_F_LOG also logs the area its pushes write.
    if not (backend.acked >> VHOST_F_LOG_ALL & 1) or backend.log is None:
        queue.set_log(0, 0)
        return
    log = backend.log.regions[0]
    used_gpa = used_len = 0
    address = setup.address
    if address is not None and address.flags & VRING_F_LOG:
        if queue.queue.packed:
            # Packed rings write used descriptors over the descriptor ring.
            used_gpa, used_len = backend.memory.user_to_guest(address.desc), 16 * setup.num
        else:
            used_gpa, used_len = address.log, 6 + 8 * setup.num
    queue.set_log(backend.log.translate(0, log.size), log.size, used_gpa, used_len)


@dataclass
class VirtioNet(Device):
    """One front-end's virtio-net device: hooks for its `Backend` and the queue pairs a data
    plane serves. `on_change(device)` runs (quiesced) whenever the served pairs change."""

    uses_buffers_in_order = True   # frames go out in the order they came, none held back

    gate: Gate
    queue_pairs: int = 1
    mac: bytes = DEFAULT_MAC
    mtu: int = 0
    max_burst: int = 64
    on_change: Callable[[VirtioNet], None] | None = None
    # on_drain(device, pair): pair's transmitq stops being served (gate held); the host
    # serves what is left in it. Without one, the device drains it into held[pair].
    on_drain: Callable[[VirtioNet, int], None] | None = None
    # Per pair, where frames drained without on_drain wait for the host (a host that outlives
    # connections passes its own, so that they outlive the device too).
    held: list[HeldFrames] | None = None
    pairs: list[QueuePair] = field(default_factory=list)
    closed_down: bool = False   # the connection ended; the device serves nothing more
    # Counters of queues already let go; `counters()` adds the live ones.
    retired: list[NetCounters] = field(default_factory=list)
    _queues: dict[int, tuple[DeviceQueue, bool, NetQueue]] = field(default_factory=dict)
    _enabled_once: set[int] = field(default_factory=set)
    _discarding: set[int] = field(default_factory=set)   # transmitqs disabled after serving
    _discarded: list[int] = field(default_factory=list)  # per pair
    _scratch: tuple[np.ndarray, np.ndarray] | None = None
    control: ControlQueue | None = None   # when the front-end passes the control queue on
    # The MTU the front-end reported (NET_SET_MTU, with VIRTIO_NET_F_MTU negotiated), or 0.
    front_end_mtu: int = 0
    _backend: Backend | None = None

    def __post_init__(self):
        if not 1 <= self.queue_pairs <= MAX_QUEUE_PAIRS:
            raise ValueError(f"queue pairs must be 1 to {MAX_QUEUE_PAIRS}")
        if len(self.mac) != 6:
            raise ValueError("a MAC address has 6 bytes")
        if self.held is None:
            self.held = [HeldFrames(frame_size(self.mtu)) for _ in range(self.queue_pairs)]
        if len(self.held) != self.queue_pairs:
            raise ValueError("held frames: one store per queue pair")
        self.retired = [NetCounters() for _ in range(self.queue_pairs)]
        self._discarded = [0] * self.queue_pairs

    @property
    def features(self) -> int:
        """The virtio features the device offers."""
        return NET_FEATURES | (1 << VIRTIO_NET_F_MTU if self.mtu else 0)

    @property
    def queues(self) -> int:
        """Virtqueues: a receiveq and a transmitq per pair, then the control queue."""
        return 2 * self.queue_pairs + 1

    @property
    def queue_num(self) -> int:
        """GET_QUEUE_NUM: queue pairs."""
        return self.queue_pairs

    @property
    def protocol_features(self) -> int:
        """The vhost-user protocol features the device offers."""
        # No CONFIG: QEMU and DPDK keep a net device's config space themselves (QEMU warns
        # about a net back-end that offers it).
        return ENGINE_PROTOCOL_FEATURES & ~ProtocolFeature.CONFIG

    def backend(self, channel) -> Backend:
        """A back-end engine for this device on a new connection."""
        return Backend(channel, self)

    # --- Device ---

    def read_config(self, offset: int, size: int) -> bytes:
        """The config space (§5.1.4): mac, status, max_virtqueue_pairs, mtu."""
        return net_config(self.mac, self.queue_pairs, self.mtu)[offset:offset + size]

    def requests(self):
        """NET_SET_MTU, the one vhost-user request of the net device's own."""
        return {FrontendRequest.NET_SET_MTU: self._set_front_end_mtu}

    def _set_front_end_mtu(self, payload) -> None:
        if not 68 <= payload.value <= 65535:
            raise RequestRefused(f"MTU {payload.value} is outside 68..65535")
        self.front_end_mtu = payload.value

    def quiesced(self):
        """Hold the data plane's gate."""
        return self.gate.control()

    def rings_changed(self, backend: Backend) -> None:
        """Pick up started, stopped, enabled and disabled rings and new call fds."""
        self._backend = backend
        mergeable = bool(backend.acked >> VIRTIO_NET_F_MRG_RXBUF & 1)
        # §5.1.2: the control queue follows the last pair the driver may use: pair 0 alone
        # without MQ, every pair with it.
        usable = self.queue_pairs if backend.acked >> VIRTIO_NET_F_MQ & 1 else 1
        self._control_changed(backend, 2 * usable)
        served = min(usable, self.control.active_pairs if self.control else usable)
        for old in self.pairs:
            setup = backend.vrings[2 * old.index + 1]
            if old.tx is not None and old.tx.queue is setup.queue and not setup.enabled:
                self._drain(old)   # disabled: what it held was sent while it was served
        pairs = []
        self._discarding.clear()
        for k in range(self.queue_pairs):
            if k >= served:
                for index in (2 * k, 2 * k + 1):
                    if index in self._queues:
                        self._retire(index)
                continue
            rx_setup, tx_setup = backend.vrings[2 * k], backend.vrings[2 * k + 1]
            rx = self._net_queue(2 * k, rx_setup.queue, mergeable, _fd(rx_setup.call))
            tx = self._net_queue(2 * k + 1, tx_setup.queue, mergeable, _fd(tx_setup.call))
            for queue, setup in ((rx, rx_setup), (tx, tx_setup)):
                if queue is not None:
                    _set_log(queue, backend, setup)
            if tx is not None and tx_setup.enabled:
                self._enabled_once.add(2 * k + 1)
            elif tx is not None and 2 * k + 1 in self._enabled_once:
                self._discarding.add(2 * k + 1)
            pairs.append(QueuePair(k, tx=tx if tx_setup.enabled else None,
                                   rx=rx if rx_setup.enabled else None,
                                   tx_kick=_fd(tx_setup.kick), rx_kick=_fd(rx_setup.kick)))
        self.pairs = pairs
        if self.on_change:
            self.on_change(self)

    def _control_changed(self, backend: Backend, index: int) -> None:
        setup = backend.vrings[index]
        if not (backend.acked >> VIRTIO_NET_F_CTRL_VQ & 1) or setup.queue is None:
            self.control = None
            return
        if self.control is None or self.control.queue is not setup.queue:
            self.control = ControlQueue(setup.queue, self.queue_pairs)
        self.control.multiqueue = bool(backend.acked >> VIRTIO_NET_F_MQ & 1)
        self.control.call_fd = _fd(setup.call)
        self.control.kick_fd = _fd(setup.kick)

    @property
    def wants_service(self) -> bool:
        """Whether `service()` has anything to do: a control queue, or a transmitq to empty."""
        return self.control is not None or bool(self._discarding)

    def service(self) -> int:
        """The device's own work between data-plane calls (call it often, with the data
        plane's gate held): empty the transmitqs disabled after they were served, and handle
        the control commands waiting, a change of active queue pairs taking effect at once.
        Returns the control commands handled."""
        for index in sorted(self._discarding):
            self._discard(index)
        control = self.control
        if control is None:
            return 0
        before = control.active_pairs
        n = control.serve()
        if control.active_pairs != before and self._backend is not None:
            self.rings_changed(self._backend)
        return n

    def stopping(self, backend: Backend, index: int) -> None:
        """GET_VRING_BASE: what a served transmitq still holds is drained first, what a
        disabled one holds is discarded, so that the base reported covers it."""
        if not index % 2:
            return
        pair = next((p for p in self.pairs if p.index == index // 2), None)
        if pair is not None and pair.tx is not None:
            self._drain(pair)
        elif index in self._discarding:
            self._discard(index)

    def _drain(self, pair: QueuePair) -> None:
        if self.on_drain is not None:
            self.on_drain(self, pair.index)
            return
        try:
            self.held[pair.index].drain(pair.tx)
        except VringError as e:
            log.error("queue pair %d: transmitq broken while drained: %s", pair.index, e)

    def _discard(self, index: int) -> None:
        # Bounded to a ring's worth per call: a driver could go on adding for ever.
        queue = self._queues[index][2]
        if self._scratch is None:
            self._scratch = (np.zeros((self.max_burst, frame_size(self.mtu)), dtype=np.uint8),
                             np.zeros(self.max_burst, dtype=np.uint32))
        frames, lengths = self._scratch
        done = 0
        try:
            while done < queue.queue.size:
                n = queue.receive(frames, lengths)
                if n == 0:
                    break
                done += n
        except VringError as e:
            # Left alone from now on, like a ring never enabled, until it is set up again.
            log.error("vring %d: transmitq broken while discarded: %s", index, e)
            self._enabled_once.discard(index)
            self._discarding.discard(index)
        self._discarded[index // 2] += done

    def closed(self, backend: Backend) -> None:
        """Let go of every queue."""
        for index in list(self._queues):
            self._retire(index)
        self.pairs = []
        self.control = None
        self._backend = None
        self.closed_down = True
        if self.on_change:
            self.on_change(self)

    # --- counters ---

    def counters(self) -> list[NetCounters]:
        """Per queue pair, everything moved so far."""
        totals = []
        for k in range(self.queue_pairs):
            c = NetCounters()
            c.add(self.retired[k])
            rx, tx = self._queues.get(2 * k), self._queues.get(2 * k + 1)
            c.add(_queue_counters(rx[2] if rx else None, tx[2] if tx else None))
            c.rx_discarded += self._discarded[k]
            totals.append(c)
        return totals

    def _net_queue(self, index: int, queue: DeviceQueue | None, mergeable: bool,
                   call: int) -> NetQueue | None:
        held = self._queues.get(index)
        if held is not None and (held[0] is not queue or held[1] != mergeable):
            self._retire(index)
            held = None
        if queue is None:
            return None
        if held is None:
            held = (queue, mergeable, NetQueue(queue, mergeable=mergeable,
                                               max_burst=self.max_burst))
            self._queues[index] = held
        held[2].call_fd = call
        return held[2]

    def _retire(self, index: int) -> None:
        self._enabled_once.discard(index)
        self._discarding.discard(index)
        _, _, q = self._queues.pop(index)
        pair = self.retired[index // 2]
        pair.add(_queue_counters(q, None) if index % 2 == 0 else _queue_counters(None, q))
