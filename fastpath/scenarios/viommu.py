"""Two VMs' virtio-net devices behind a VT-d vIOMMU, on a real vhost-user back-end (hv.md §5):
every ring and packet buffer sits at an IOVA, the back-end asks for each translation with an
IOTLB miss, and the vIOMMU answers from the modelled remapping unit and withdraws what the
guest invalidates, before the guest's wait descriptor completes.

What is modelled: each VM (`ViommuGuest`) keeps guest RAM in two memfd regions with a hole
between, its VT-d root, context and 4-level second-level tables and its invalidation queue in
its own RAM, as a real guest does, and drives two queue pairs of a virtio-net device through
fastpath's `Frontend` with VIRTIO_F_ACCESS_PLATFORM. `VirtualIommu` plays QEMU's part: a miss
is a DMA translation by the unit (a fault is recorded in its fault registers, as real DMA's
would be, and gets no answer), cut to the memory region that holds it and sent as an IOTLB
update; an invalidation the unit carries out becomes IOTLB invalidations of what it reaches.
The back-end (`ForwardingBackend`) is fastpath's net device with io forwarding, served in this
process. Three steps: the well-behaved VM moves --frames frames per queue pair through and
back; it moves its transmit buffers to other memory under the same IOVAs (unmap, page-
selective invalidation, wait, map) and moves frames again, none of which may be read from the
old memory; the hostile VM posts a receive buffer at an IOVA its tables do not map, so the
back-end's write there is a recorded DMA fault, that ring waits --miss-deadline seconds and is
given up, and its frames are lost, while its other queue pair and the other VM go on.

Tables:
  vIOMMU   per VM: IOTLB misses the back-end sent and those answered, updates and
           invalidations the vIOMMU sent, faults in the unit's fault recording registers,
           frames sent, frames that came back intact, frames lost
"""
from __future__ import annotations

import argparse
import os
import struct
import tempfile
import threading
import time
from collections.abc import Callable

from fastpath.devices.net import NET_HDR_SIZE, VIRTIO_NET_F_MQ, VirtioNet
from fastpath.hv import FrameAllocator, GuestMemory
from fastpath.hv.vtd import (
    PAGE_2M,
    PAGE_4K,
    Descriptor,
    Fsts,
    Gcmd,
    Granularity,
    Reg,
    RemappingUnit,
    RootTable,
    SecondLevelTables,
    source_id,
)
from fastpath.pmd import Forwarder
from fastpath.scenarios._options import positive_int_up_to
from fastpath.scenarios._report import Report, Table
from fastpath.scenarios._virtual_iommu import VirtualIommu
from fastpath.vhost_user import Backend, BackendServer, Frontend, Gate
from fastpath.vhost_user.wire import IotlbType, ProtocolFeature
from fastpath.vring import (
    VIRTIO_F_ACCESS_PLATFORM,
    VIRTIO_F_RING_PACKED,
    VIRTIO_F_VERSION_1,
    PackedDriverQueue,
    RingAddresses,
    SplitDriverQueue,
    ring_bytes,
    ring_layout,
)

MIB = 1 << 20
QUEUE_SIZE = 256
BUFFER_SIZE = 2048
MAX_QUEUE_PAIRS = 4
POOL_SIZE = QUEUE_SIZE * BUFFER_SIZE          # one virtqueue's buffers
# Guest-physical layout. The low region holds the rings (virtqueue k's at RING_GPA + k *
# RING_STRIDE), the invalidation queue with the wait descriptors' status word, and (from
# 2 MiB) the VT-d tables: the unit reads it as its memory.
LOW_REGION = (0, 4 * MIB)
RING_GPA = 0x10000
RING_STRIDE = 0x10000
INVALIDATION_QUEUE = 0x100000
WAIT_STATUS = 0x101000
TABLE_AREA = (2 * MIB, 4 * MIB)
# The high region, above a hole: receive buffers in 4 KiB pages, each pair's transmit
# buffers a quarter of one 2 MiB super-page, and a second 2 MiB page the guest may move them
# to.
HIGH_REGION = (8 * MIB, 6 * MIB)
RX_GPA = 8 * MIB
TX_GPAS = (10 * MIB, 12 * MIB)
assert RING_GPA + 2 * MAX_QUEUE_PAIRS * RING_STRIDE <= INVALIDATION_QUEUE
assert MAX_QUEUE_PAIRS * POOL_SIZE <= min(PAGE_2M, TX_GPAS[0] - RX_GPA)
# IOVAs: rings at RING_IOVA + their guest address, buffers at their own bases.
RING_IOVA = 0x1_0000_0000
RX_IOVA = 0x2_0000_0000
TX_IOVA = 0x3_0000_0000
UNMAPPED_IOVA = 0x5_0000_0000                 # what the hostile guest points its device at
# The completion event's MSI (hv.md §3.1: IEADDR, IEDATA).
COMPLETION_MSI = (0xFEE00000, 0x31)
# What ACCESS_PLATFORM needs of the protocol (hv.md §5.1): acks, and misses on the back-end
# channel; and MQ, for a second queue pair.
VIOMMU_PROTOCOL = ProtocolFeature.REPLY_ACK | ProtocolFeature.BACKEND_REQ | ProtocolFeature.MQ


class ForwardingBackend:
    """fastpath's virtio-net back-end on the socket `path`, served by a thread of this process,
    each connection's transmitq looped back to its receiveq (io forwarding). A ring waiting
    `miss_deadline` seconds for an IOTLB update is given up. Each device has `queue_pairs`
    queue pairs. `backends` are the connections' engines; use it as a context manager, or
    `close()` it."""

    def __init__(self, path: str, *, miss_deadline: float = 1.0, queue_pairs: int = 1):
        self._forwarder = Forwarder(Gate(), "io", idle_rounds=100, sleep_ms=1)
        self._forwarder.start()

        def make_backend(channel):
            device = VirtioNet(self._forwarder.gate, queue_pairs=queue_pairs)
            self._forwarder.attach(device)
            return Backend(channel, device, iotlb_miss_deadline=miss_deadline)

        self.server = BackendServer(path, make_backend)
        self.path = path
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="fastpath-viommu-backend",
                                        daemon=True)
        self._thread.start()

    @property
    def backends(self) -> list[Backend]:
        """The engines of the connected front-ends."""
        return self.server.backends

    def _serve(self) -> None:
        while not self._stop.is_set():
            self.server.serve_once(0.005)

    def close(self) -> None:
        """Stop serving; every connection ends."""
        self._stop.set()
        self._thread.join()
        self.server.close()
        self._forwarder.stop()

    def __enter__(self) -> ForwardingBackend:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class QueuePairDriver:
    """A driver of one queue pair of the guest's device: its receiveq and transmitq, and the
    buffers of each (receive: 4 KiB pages of their own, transmit: a share of the 2 MiB page),
    addressed by IOVA."""

    def __init__(self, guest: ViommuGuest, index: int):
        self.guest = guest
        self.index = index
        driver = PackedDriverQueue if guest.packed else SplitDriverQueue
        self.rx, self.tx = (driver(guest.memory, QUEUE_SIZE, ring_layout(
            QUEUE_SIZE, RING_GPA + vq * RING_STRIDE, guest.packed))
            for vq in (2 * index, 2 * index + 1))
        self.rx_iova = RX_IOVA + index * POOL_SIZE
        self.rx_gpa = RX_GPA + index * POOL_SIZE
        self.tx_iova = TX_IOVA + index * POOL_SIZE
        self._free_rx = list(range(QUEUE_SIZE - 1, -1, -1))
        self._free_tx = list(range(QUEUE_SIZE - 1, -1, -1))
        self._rx_slots: dict[int, int | None] = {}    # buffer id -> slot (None: not ours)
        self._tx_slots: dict[int, int | None] = {}
        self.sent = 0
        self.received: list[bytes] = []

    def post_receive_buffers(self, n: int) -> int:
        """Offer up to n more receive buffers; returns how many."""
        posted = 0
        while posted < n and self._free_rx:
            slot = self._free_rx.pop()
            self._rx_slots[self.rx.add(writable=[(self.rx_iova + slot * BUFFER_SIZE,
                                                  BUFFER_SIZE)])] = slot
            posted += 1
        self.guest.frontend.vrings[2 * self.index].kick_backend()
        return posted

    def post_receive_buffer_at(self, iova: int) -> None:
        """Offer one receive buffer at any IOVA (one the tables may not map)."""
        self._rx_slots[self.rx.add(writable=[(iova, BUFFER_SIZE)])] = None
        self.guest.frontend.vrings[2 * self.index].kick_backend()

    def post_transmit_buffer_at(self, iova: int, length: int) -> None:
        """Offer one transmit buffer of `length` bytes at any IOVA (one the tables may not
        map)."""
        self._tx_slots[self.tx.add(readable=[(iova, length)])] = None
        self.guest.frontend.vrings[2 * self.index + 1].kick_backend()

    def send(self, frames: list[bytes]) -> int:
        """Transmit frames from the transmit buffers; returns how many fitted."""
        self._reclaim_transmitted()
        n = 0
        for frame in frames:
            if not self._free_tx or len(frame) + NET_HDR_SIZE > BUFFER_SIZE:
                break
            slot = self._free_tx.pop()
            gpa = self.guest.tx_gpa + self.index * POOL_SIZE + slot * BUFFER_SIZE
            self.guest.memory.write(gpa, bytes(NET_HDR_SIZE) + frame)
            self._tx_slots[self.tx.add(readable=[(self.tx_iova + slot * BUFFER_SIZE,
                                                  NET_HDR_SIZE + len(frame))])] = slot
            n += 1
        self.guest.frontend.vrings[2 * self.index + 1].kick_backend()
        self.sent += n
        return n

    def collect(self) -> list[bytes]:
        """The frames the device delivered since the last call (headers stripped; `received`
        keeps them all); takes back the transmit buffers it is done with."""
        frames = []
        for buffer_id, n in self.rx.collect():
            slot = self._rx_slots.pop(buffer_id)
            if slot is None:
                continue
            frames.append(self.guest.memory.read(self.rx_gpa + slot * BUFFER_SIZE,
                                                 n)[NET_HDR_SIZE:])
            self._free_rx.append(slot)
        self._reclaim_transmitted()
        self.received += frames
        return frames

    def _reclaim_transmitted(self) -> None:
        for buffer_id, _ in self.tx.collect():
            slot = self._tx_slots.pop(buffer_id)
            if slot is not None:
                self._free_tx.append(slot)

    @property
    def transmit_outstanding(self) -> int:
        """Transmit buffers the device has not used yet."""
        return len(self._tx_slots)


class ViommuGuest:
    """A VM whose virtio-net device, at PCI `bus`:`device`.0 in VT-d domain `domain_id`,
    reaches its memory only through the vIOMMU; connected to the back-end at `path`, with
    `queue_pairs` (1 to 4) queue pairs, `pairs` their drivers.

    The guest maps its rings (4 KiB pages) and buffers (receive: 4 KiB pages, transmit: one
    2 MiB page, read-only) in 4-level second-level tables, turns remapping and queued
    invalidation on through the unit's registers, and has `viommu` (a VirtualIommu) answer the
    back-end. `unmap`, `map` and `invalidate` change the mappings as a guest's DMA API does.
    """

    def __init__(self, path: str, *, packed: bool = False, queue_pairs: int = 1, bus: int = 0,
                 device: int = 3, domain_id: int = 1):
        if not 1 <= queue_pairs <= MAX_QUEUE_PAIRS:
            raise ValueError(f"a guest has 1 to {MAX_QUEUE_PAIRS} queue pairs, not "
                             f"{queue_pairs}")
        self.packed = packed
        self.memory = GuestMemory([LOW_REGION, HIGH_REGION])
        self.ram = self.memory.view(*LOW_REGION)
        self.source_id = source_id(bus, device, 0)
        self.domain_id = domain_id
        frames = FrameAllocator(*TABLE_AREA, self._zero)
        self.root = RootTable(self.ram, frames)
        self.tables = SecondLevelTables(self.ram, frames, 4)
        self.root.attach(self.source_id, domain_id, self.tables)
        self.unit = RemappingUnit(self.ram)
        self._program_unit()
        self.pairs = [QueuePairDriver(self, k) for k in range(queue_pairs)]
        for pair in self.pairs:
            for queue in (pair.rx, pair.tx):
                self._map_rings(queue.addresses)
            for k in range(POOL_SIZE // PAGE_4K):
                self.map(pair.rx_iova + k * PAGE_4K, pair.rx_gpa + k * PAGE_4K)
        self.tx_gpa = TX_GPAS[0]
        self.map(TX_IOVA, self.tx_gpa, PAGE_2M, "r")
        self._next_wait = 1
        self.frontend: Frontend | None = None
        self.viommu: VirtualIommu | None = None
        try:
            self.frontend = Frontend(path)
            self.frontend.negotiate(1 << VIRTIO_F_VERSION_1 | 1 << VIRTIO_F_ACCESS_PLATFORM
                                    | (1 << VIRTIO_F_RING_PACKED if packed else 0)
                                    | (1 << VIRTIO_NET_F_MQ if queue_pairs > 1 else 0),
                                    VIOMMU_PROTOCOL)
            self.frontend.set_memory(self.memory)
            self.viommu = VirtualIommu(self.unit, self.source_id, self.memory, self.frontend)
            for pair in self.pairs:
                for index, queue in ((2 * pair.index, pair.rx), (2 * pair.index + 1, pair.tx)):
                    a = queue.addresses
                    self.frontend.start_vring(index, QUEUE_SIZE, self.memory, RingAddresses(
                        *(RING_IOVA + gpa for gpa in (a.desc, a.driver, a.device))),
                        base=0x8000 if packed else 0)
        except BaseException:
            self.close()
            raise

    # --- the platform ---

    def _zero(self, gpa: int) -> None:
        self.ram[gpa : gpa + PAGE_4K] = 0

    def _command(self, bit: int) -> None:
        # Software's GCMD write: the levels GSTS shows, with one command added.
        status = self.unit.read(Reg.GSTS, 4) & ~(Gcmd.SRTP | Gcmd.SIRTP)
        self.unit.write(Reg.GCMD, 4, status | bit)

    def _program_unit(self) -> None:
        self.unit.write(Reg.RTADDR, 8, self.root.root)
        self._command(Gcmd.SRTP)
        self._command(Gcmd.TE)
        self.unit.write(Reg.IQA, 8, INVALIDATION_QUEUE)       # QS 0: 256 descriptors
        self._command(Gcmd.QIE)
        address, data = COMPLETION_MSI
        self.unit.write(Reg.IEADDR, 4, address)
        self.unit.write(Reg.IEDATA, 4, data)
        self.unit.write(Reg.IECTL, 4, 0)

    def _map_rings(self, addresses: RingAddresses) -> None:
        end = addresses.desc + ring_bytes(QUEUE_SIZE, self.packed)
        for gpa in range(addresses.desc & ~(PAGE_4K - 1), end, PAGE_4K):
            self.map(RING_IOVA + gpa, gpa)

    def map(self, iova: int, gpa: int, size: int = PAGE_4K, perms: str = "rw") -> None:
        """Map [iova, iova + size) to guest-physical gpa in the device's tables."""
        self.tables.map(iova, gpa, size, perms)

    def unmap(self, iova: int, size: int = PAGE_4K) -> None:
        """Clear the mapping of the page at iova; the unit and the back-end may go on using it
        until `invalidate` says otherwise."""
        self.tables.unmap(iova, size)

    def invalidate(self, *descriptors: Descriptor) -> int:
        """Queue `descriptors` and a wait descriptor (status write, completion event) behind
        them and ring the doorbell; returns the wait's status value, which WAIT_STATUS holds
        once it completed. RuntimeError if the unit refused a descriptor (FSTS.IQE)."""
        status = self._next_wait
        self._next_wait += 1
        base, descriptor_size, entries = self.unit.queue_geometry()
        tail = self.unit.queue_tail()
        for d in (*descriptors, Descriptor.wait(WAIT_STATUS, status, interrupt=True)):
            struct.pack_into("<QQ", self.ram, base + descriptor_size * tail, d.lo, d.hi)
            tail = (tail + 1) % entries
        self.unit.write(Reg.IQT, 8, tail * descriptor_size)
        if self.unit.read(Reg.FSTS, 4) & Fsts.IQE:
            raise RuntimeError(f"the remapping unit refused descriptor {self.unit.queue_head()}")
        return status

    @property
    def wait_status(self) -> int:
        """The status word the wait descriptors write."""
        return int(self.ram[WAIT_STATUS : WAIT_STATUS + 4].view("<u4")[0])

    def move_transmit_buffers(self) -> None:
        """Map the transmit buffers' IOVAs to the other 2 MiB page, as a guest that reuses the
        IOVAs for other memory does: unmap, invalidate the page (with a wait), map again."""
        self.unmap(TX_IOVA, PAGE_2M)
        self.invalidate(Descriptor.iotlb(Granularity.DEVICE_OR_PAGE, self.domain_id, TX_IOVA,
                                         9))
        self.tx_gpa = TX_GPAS[1] if self.tx_gpa == TX_GPAS[0] else TX_GPAS[0]
        self.map(TX_IOVA, self.tx_gpa, PAGE_2M, "r")

    def poll(self, timeout: float = 0.01) -> None:
        """Answer the back-end's misses until none has come for `timeout` seconds, then
        collect what every pair's rings hold."""
        assert self.viommu is not None
        self.viommu.answer_misses(timeout)
        for pair in self.pairs:
            pair.collect()

    @property
    def sent(self) -> int:
        """Frames sent on every pair."""
        return sum(p.sent for p in self.pairs)

    @property
    def received(self) -> list[bytes]:
        """Frames received on every pair, pair by pair."""
        return [f for p in self.pairs for f in p.received]

    def close(self) -> None:
        """Close the connection and the guest's memory."""
        if self.viommu is not None:
            self.viommu.close()
        if self.frontend is not None:
            self.frontend.close()
        self.memory.close()


def frame(number: int, size: int = 64) -> bytes:
    """An Ethernet frame of `size` (at least 18) bytes whose bytes say which it is: locally
    administered addresses, the local experimental EtherType, the number, then a pattern
    from it."""
    header = bytes.fromhex("020000000002" "020000000001" "88b5") + number.to_bytes(4, "big")
    return header + bytes((number + k) & 0xFF for k in range(size - len(header)))


def exchange(flows: dict[QueuePairDriver, list[bytes]], timeout: float = 5.0,
             until: Callable[[], bool] | None = None) -> None:
    """Send each queue pair its frames (receive buffers posted for them) and poll every guest
    in turn until each pair got as many frames back, or `until()` holds, or `timeout`
    seconds passed."""
    goal = {pair: len(pair.received) + len(frames) for pair, frames in flows.items()}
    for pair, frames in flows.items():
        pair.post_receive_buffers(len(frames))
        pair.send(frames)
    guests = list(dict.fromkeys(pair.guest for pair in flows))
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for guest in guests:
            guest.poll()
        if until is not None and until():
            break
        if all(len(pair.received) >= n for pair, n in goal.items()):
            break


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of `fastpath hv viommu`."""
    parser.add_argument("--frames", type=positive_int_up_to(QUEUE_SIZE),
                        help="frames each step moves per queue pair (at most a ring's buffers)")
    parser.add_argument("--packed", action="store_true", help="packed rings instead of split")
    parser.add_argument("--miss-deadline", type=_seconds,
                        help="seconds the back-end lets a ring wait for a translation before "
                        "it gives the ring up")
    parser.add_argument("--timeout", type=_seconds, help="seconds a step may take")


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected seconds, not {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a positive number of seconds, not {text!r}")
    return value


def run(*, frames: int = 64, packed: bool = False, miss_deadline: float = 1.0,
        timeout: float = 5.0) -> Report:
    """The vIOMMU scenario (hv.md §5.5): two VMs with two queue pairs each on one back-end in
    this process; `frames` frames per step and queue pair; a ring waits `miss_deadline`
    seconds for a translation; a step gives up after `timeout` seconds.

    1. A well-behaved guest moves frames through its device and back, every translation
       coming from its VT-d unit by IOTLB misses.
    2. It moves its transmit buffers to other memory under the same IOVAs (unmap, page-
       selective invalidation, wait, map) and moves frames again: none may be read from the
       old memory.
    3. A hostile guest posts a receive buffer at an IOVA its tables do not map: the back-end's
       write there is a DMA fault its unit records, that receiveq waits for a translation
       that never comes (the back-end gives it up after `miss_deadline`) and the frames for
       it are lost, while its other queue pair and the well-behaved guest go on.

    Figures: misses and those answered, updates and invalidations sent, faults recorded in
    the fault recording registers, frames sent, received intact and lost, per guest and in
    all (in `figures["guests"]`).
    """
    if not 1 <= frames <= QUEUE_SIZE:
        raise ValueError(f"a step moves 1 to {QUEUE_SIZE} frames a queue pair (one ring's "
                         f"buffers), not {frames}")
    guests: list[ViommuGuest] = []
    expected: dict[QueuePairDriver, list[bytes]] = {}

    def step(flows: dict[QueuePairDriver, list[bytes]], seconds: float, until=None) -> None:
        for pair, sent in flows.items():
            expected.setdefault(pair, []).extend(sent)
        exchange(flows, seconds, until)

    with tempfile.TemporaryDirectory(prefix="fastpath-viommu-") as directory:
        with ForwardingBackend(os.path.join(directory, "vhost.sock"), queue_pairs=2,
                               miss_deadline=miss_deadline) as backend:
            try:
                good = ViommuGuest(backend.path, packed=packed, queue_pairs=2, domain_id=1)
                guests.append(good)
                step({p: [frame(k, 60 + 16 * (k % 64)) for k in range(frames)]
                      for p in good.pairs}, timeout)
                good.move_transmit_buffers()
                step({p: [frame(frames + k, 1000) for k in range(frames)]
                      for p in good.pairs}, timeout)
                hostile = ViommuGuest(backend.path, packed=packed, queue_pairs=2, bus=1,
                                      domain_id=2)
                guests.append(hostile)
                bad_pair = hostile.pairs[0]
                bad_pair.post_receive_buffer_at(UNMAPPED_IOVA)
                step({**{p: [frame(2 * frames + k) for k in range(frames)] for p in good.pairs},
                      **{p: [frame(3 * frames + k) for k in range(frames)]
                         for p in hostile.pairs}},
                     timeout + miss_deadline,
                     # The hostile pair's frames are lost: done once its fault is in and
                     # the rest came back.
                     until=lambda: hostile.viommu.faults and all(
                         len(p.received) >= len(expected[p])
                         for p in expected if p is not bad_pair))
                expected[bad_pair] = []
                return _report(guests, expected)
            finally:
                for g in guests:
                    g.close()


def _report(guests: list[ViommuGuest], expected: dict[QueuePairDriver, list[bytes]]) -> Report:
    rows = []
    for name, g in zip(["well-behaved", "hostile"], guests, strict=False):
        v = g.viommu
        intact = sum(a == b for p in g.pairs
                     for a, b in zip(p.received, expected[p], strict=False))
        rows.append([name, v.misses, v.answered,
                     sum(m.type == IotlbType.UPDATE for m in v.sent),
                     sum(m.type == IotlbType.INVALIDATE for m in v.sent),
                     sum(hi >> 63 for _, hi in g.unit.records()),
                     g.sent, intact, g.sent - intact])
    headers = ["guest", "misses", "answered", "updates", "invalidations", "faults recorded",
               "frames sent", "frames intact", "frames lost"]
    keys = ["misses", "misses_answered", "updates_sent", "invalidations_sent",
            "faults_recorded", "frames_sent", "frames_moved", "frames_lost"]
    figures: dict = {key: sum(row[k + 1] for row in rows) for k, key in enumerate(keys)}
    figures["guests"] = {row[0]: dict(zip(keys, row[1:], strict=True)) for row in rows}
    return Report("viommu", figures, [Table("vIOMMU: VT-d behind vhost-user", headers, rows)])
