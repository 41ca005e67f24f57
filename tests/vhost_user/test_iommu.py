"""vhost-user with a vIOMMU (VIRTIO_F_ACCESS_PLATFORM; QEMU docs/interop/vhost-user.rst,
"IOMMU support"; hv.md §5): fastpath's `Frontend` plays the vIOMMU's part against the net
device behind the engine. Rings and buffers sit at IOVAs; the back-end asks for what its IOTLB
lacks and waits for it, invalidations take effect, and bad IOTLB messages are refused on their
own connection."""

import logging
import os
import time

import numpy as np
import pytest

from fastpath.errors import BackendRefused
from fastpath.hv import GuestMemory, SharedRegion
from fastpath.scenarios.viommu import ForwardingBackend
from fastpath.testing.reference.net import NET_HDR_SIZE, header
from fastpath.vhost_user import Frontend
from fastpath.vhost_user._backend import VHOST_F_LOG_ALL
from fastpath.vhost_user._frontend import FRONTEND_PROTOCOL_FEATURES
from fastpath.vhost_user._iotlb import MAX_ENTRIES, Iotlb
from fastpath.vhost_user.wire import (
    FLAG_NEED_REPLY,
    BackendRequest,
    FrontendRequest,
    IotlbAccess,
    IotlbMessage,
    IotlbType,
    LogArea,
    ProtocolFeature,
    encode_message,
)
from fastpath.vring import (
    VIRTIO_F_ACCESS_PLATFORM,
    VIRTIO_F_RING_PACKED,
    VIRTIO_F_VERSION_1,
    PackedDriverQueue,
    RingAddresses,
    SplitDriverQueue,
    ring_layout,
)

PAGE = 4096
IOVA_OFFSET = 0x7_0000_0000   # IOVA = GPA + IOVA_OFFSET: no IOVA is also a guest address
RX_BUFFERS = 0x200000
TX_BUFFERS = 0x300000
BUFFER = 2048
RW = IotlbAccess.READ_WRITE
PROTOCOL = FRONTEND_PROTOCOL_FEATURES | ProtocolFeature.BACKEND_REQ


def iova(gpa: int) -> int:
    return gpa + IOVA_OFFSET


def frame(n, seed):
    dst, src = bytes([2, 0, 0, 0, 0, seed]), bytes([4, 0, 0, 0, 0, seed])
    return dst + src + bytes((seed + i) & 0xFF for i in range(n - 12))


class StaticIommu:
    """An IOMMU whose every page maps IOVA = GPA + IOVA_OFFSET, read-write unless `perms`
    says otherwise; `answers` False leaves every miss unanswered."""

    def __init__(self, memory: GuestMemory):
        self.memory = memory
        self.perms: dict[int, int] = {}
        self.answers = True
        self.misses: list[tuple[int, int]] = []

    def resolve(self, address: int, perm: int):
        self.misses.append((address, perm))
        page = (address - IOVA_OFFSET) & ~(PAGE - 1)
        if not self.answers or not 0 <= page < self.memory.size:
            return None
        return iova(page), PAGE, self.memory.guest_to_user(page), self.perms.get(page, RW)


def served(tmp_path, miss_deadline=5.0):
    """A net back-end (io forwarding) listening in a thread."""
    return ForwardingBackend(str(tmp_path / "vhost.sock"), miss_deadline=miss_deadline)


class Guest:
    """A front-end with a driver on each ring of queue pair 0, rings and buffers at IOVAs."""

    def __init__(self, path, packed, *, update_rings=True, log=False):
        self.packed = packed
        self.memory = GuestMemory([(0, 4 << 20)])
        self.iommu = StaticIommu(self.memory)
        self.fe = Frontend(path)
        features = (1 << VIRTIO_F_VERSION_1 | 1 << VIRTIO_F_ACCESS_PLATFORM
                    | (1 << VIRTIO_F_RING_PACKED if packed else 0)
                    | (1 << VHOST_F_LOG_ALL if log else 0))
        acked = self.fe.negotiate(features,
                                  PROTOCOL | (ProtocolFeature.LOG_SHMFD if log else 0))
        assert acked >> VIRTIO_F_ACCESS_PLATFORM & 1 and self.fe.iommu
        self.fe.set_memory(self.memory)
        if log:
            self.log = GuestMemory([(0, PAGE)])
            self.fe.request(FrontendRequest.SET_LOG_BASE, LogArea(PAGE, 0),
                            [self.log.regions[0].fd])
        driver = PackedDriverQueue if packed else SplitDriverQueue
        self.rx, self.tx = (driver(self.memory, 256, ring_layout(256, 0x1000 + i * 0x10000,
                                                                 packed)) for i in (0, 1))
        for index, queue in enumerate((self.rx, self.tx)):
            a = queue.addresses
            if update_rings:
                # As QEMU does for the used ring at start: the rest comes by misses.
                self.fe.iotlb_update(iova(a.desc & ~(PAGE - 1)), 3 * PAGE,
                                     self.memory.guest_to_user(a.desc & ~(PAGE - 1)))
            self.fe.start_vring(index, 256, self.memory,
                                RingAddresses(iova(a.desc), iova(a.driver), iova(a.device)),
                                base=0x8000 if packed else 0)
        self.rx_ids: dict[int, int] = {}

    def post_receive_buffers(self, n):
        for k in range(n):
            gpa = RX_BUFFERS + k * BUFFER
            self.rx_ids[self.rx.add(writable=[(iova(gpa), BUFFER)])] = gpa
        self.fe.vrings[0].kick_backend()

    def send(self, frames, at=TX_BUFFERS):
        for k, f in enumerate(frames):
            data = header(0) + f
            self.memory.write(at + k * BUFFER, data)
            self.tx.add(readable=[(iova(at + k * BUFFER), len(data))])
        self.fe.vrings[1].kick_backend()

    def received(self, expected, timeout=5.0):
        got, deadline = [], time.monotonic() + timeout
        while len(got) < expected and time.monotonic() < deadline:
            self.fe.answer_misses(self.iommu.resolve, 0.01)
            for buffer_id, n in self.rx.collect():
                got.append(self.memory.read(self.rx_ids[buffer_id], n)[NET_HDR_SIZE:])
        return got

    def close(self):
        self.fe.close()
        self.memory.close()


RING_TYPES = pytest.mark.parametrize("packed", [False, True], ids=["split", "packed"])


@RING_TYPES
def test_frames_round_trip_with_rings_and_buffers_at_iovas(tmp_path, packed):
    with served(tmp_path) as server:
        guest = Guest(server.path, packed)
        guest.post_receive_buffers(64)
        sent = [frame(60 + 20 * k, k) for k in range(40)]
        guest.send(sent)
        assert guest.received(40) == sent
        # Every page was asked for once at most: a pending miss is not sent again.
        assert len(guest.iommu.misses) == len(set(guest.iommu.misses))
        (backend,) = server.backends
        assert backend.iotlb.pending == 0
        guest.close()


@RING_TYPES
def test_rings_wait_for_their_translations_before_they_start(tmp_path, packed):
    with served(tmp_path) as server:
        guest = Guest(server.path, packed, update_rings=False)
        (backend,) = server.backends
        assert not backend.vrings[0].started and backend.vrings[0].awaiting_translation
        guest.post_receive_buffers(8)
        sent = [frame(100, k) for k in range(8)]
        guest.send(sent)
        assert guest.received(8) == sent
        assert backend.vrings[0].started and backend.vrings[1].started
        guest.close()


@RING_TYPES
def test_an_invalidated_ring_mapping_stops_the_ring_until_it_is_translated_again(tmp_path,
                                                                                 packed):
    with served(tmp_path) as server:
        guest = Guest(server.path, packed)
        (backend,) = server.backends
        guest.post_receive_buffers(16)
        guest.send([frame(80, 1)])
        assert guest.received(1) == [frame(80, 1)]
        tx = guest.tx.addresses
        guest.fe.iotlb_invalidate(iova(tx.desc), PAGE)
        assert not backend.vrings[1].started and backend.vrings[1].awaiting_translation
        assert not any(e.iova <= iova(tx.desc) < e.end for e in backend.iotlb.entries)
        guest.send([frame(90, 2)], at=TX_BUFFERS + 8 * BUFFER)
        assert guest.received(1) == [frame(90, 2)]
        assert backend.vrings[1].started
        guest.close()


def test_pages_written_through_iovas_are_logged_by_guest_address(tmp_path):
    # hv.md §5.4: dirty logging still logs guest-physical pages (DPDK translate_log_addr).
    with served(tmp_path) as server:
        guest = Guest(server.path, False, log=True)
        guest.post_receive_buffers(8)
        guest.send([frame(1000, k) for k in range(3)])
        assert len(guest.received(3)) == 3
        bits = np.unpackbits(guest.log.view(0, PAGE), bitorder="little")
        pages = {int(p) for p in np.flatnonzero(bits)}
        # Three 2 KiB receive buffers written: the first two guest pages of the pool.
        assert pages == {RX_BUFFERS // PAGE, RX_BUFFERS // PAGE + 1}
        guest.close()
        guest.log.close()


def test_a_buffer_mapped_read_only_is_not_written(tmp_path, caplog):
    with served(tmp_path) as server:
        guest = Guest(server.path, False)
        (backend,) = server.backends
        for k in range(2):
            page = (RX_BUFFERS + k * BUFFER) & ~(PAGE - 1)
            guest.iommu.perms[page] = IotlbAccess.READ
        guest.post_receive_buffers(2)
        guest.send([frame(70, 3)])
        # The receive buffer's only mapping is read-only: the device refuses the chain
        # (it is used with nothing written) instead of writing through it.
        deadline = time.monotonic() + 5
        used = []
        while not used and time.monotonic() < deadline:
            guest.fe.answer_misses(guest.iommu.resolve, 0.01)
            used = guest.rx.collect()
        assert used and all(n == 0 for _, n in used)
        assert guest.memory.read(RX_BUFFERS, 64) == bytes(64)
        assert backend.vrings[0].queue.errors
        guest.close()


def test_a_front_end_that_never_answers_a_miss_gets_the_ring_given_up(tmp_path, caplog):
    with served(tmp_path, miss_deadline=0.3) as server:
        with caplog.at_level(logging.ERROR, logger="fastpath.vhost_user"):
            guest = Guest(server.path, False)
            (backend,) = server.backends
            guest.iommu.answers = False
            guest.post_receive_buffers(4)
            guest.send([frame(64, 4)])
            assert guest.received(1, timeout=1.0) == []
            assert not backend.vrings[0].started  # the receiveq waited for its buffer
        assert any("no IOTLB update" in r.getMessage() for r in caplog.records)
        # The connection itself goes on: it still answers requests.
        guest.fe.iotlb_update(iova(0x380000), PAGE, guest.memory.guest_to_user(0x380000))
        guest.close()


HOSTILE = {
    "size zero": (0x1000, 0, 0),
    "iova + size overflows": ((1 << 64) - PAGE, 2 * PAGE, 0),
    "user address outside the memory table": (0x1000, PAGE, 1 << 46),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_a_bad_iotlb_update_is_refused_on_its_connection_alone(tmp_path, case):
    with served(tmp_path) as server:
        good = Guest(server.path, False)
        bad = Guest(server.path, False)
        address, size, user = HOSTILE[case]
        with pytest.raises(BackendRefused):
            bad.fe.iotlb_update(address, size, user or bad.memory.guest_to_user(0))
        good.post_receive_buffers(8)
        good.send([frame(64, 5)])
        assert good.received(1) == [frame(64, 5)]
        # The refused connection still serves.
        bad.post_receive_buffers(8)
        bad.send([frame(64, 6)])
        assert bad.received(1) == [frame(64, 6)]
        good.close()
        bad.close()


def test_an_iotlb_message_of_unknown_type_ends_only_its_connection(tmp_path):
    with served(tmp_path) as server:
        good = Guest(server.path, False)
        bad = Guest(server.path, False)
        payload = (0x1000).to_bytes(8, "little") + PAGE.to_bytes(8, "little") + bytes(8) + bytes(
            [3, 9]) + bytes(6)
        bad.fe.channel.sock.sendall((22).to_bytes(4, "little") + (1).to_bytes(4, "little")
                                    + (32).to_bytes(4, "little") + payload)
        deadline = time.monotonic() + 5
        while len(server.backends) > 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert len(server.backends) == 1
        good.post_receive_buffers(8)
        good.send([frame(64, 7)])
        assert good.received(1) == [frame(64, 7)]
        good.close()
        bad.close()


def test_access_platform_needs_reply_ack_and_backend_req(tmp_path):
    # As QEMU requires of a back-end before it uses a vIOMMU with it.
    with served(tmp_path) as server:
        fe = Frontend(server.path)
        with pytest.raises(BackendRefused):
            fe.negotiate(1 << VIRTIO_F_VERSION_1 | 1 << VIRTIO_F_ACCESS_PLATFORM,
                         FRONTEND_PROTOCOL_FEATURES)
        fe.close()


def test_tv9_iotlb_messages_bytes():
    # hv.md §7, TV9: an UPDATE the front-end sends and a MISS the back-end sends, byte for
    # byte, and the translation the UPDATE gives.
    update = IotlbMessage(0xDEAD0000, 0x10000, 0x7F0000200000, RW, IotlbType.UPDATE)
    assert encode_message(FrontendRequest.IOTLB_MSG, update, flags=FLAG_NEED_REPLY).hex() == (
        "1600000009000000200000000000adde00000000000001000000000000002000007f00000302000000000000")
    miss = IotlbMessage(0xDEAD1234, 0, 0, IotlbAccess.READ, IotlbType.MISS)
    assert encode_message(BackendRequest.IOTLB_MSG, miss).hex() == (
        "0100000001000000200000003412adde00000000000000000000000000000000000000000101000000000000")
    fd = os.memfd_create("tv9")
    os.ftruncate(fd, 0x200000)
    with GuestMemory.from_shared([SharedRegion(fd, 0, 0x200000, 0x7F0000100000, 0)]) as memory:
        iotlb = Iotlb()
        iotlb.update(update, memory)
        assert iotlb.user_address(0xDEAD5678, 1, IotlbAccess.READ) == 0x7F0000205678
        assert iotlb.user_address(0xDEAD5678, 0x10000, IotlbAccess.READ) is None  # past the end


def test_the_iotlb_keeps_sorted_entries_and_invalidates_every_overlap():
    with GuestMemory([(0, 1 << 20)]) as memory:
        user = memory.guest_to_user(0)
        iotlb = Iotlb()
        for k, perm in enumerate((IotlbAccess.READ, IotlbAccess.WRITE, RW)):
            iotlb.update(IotlbMessage(0x10000 + k * PAGE, PAGE, user + k * PAGE, perm,
                                      IotlbType.UPDATE), memory)
        assert [e.iova for e in iotlb.entries] == [0x10000, 0x11000, 0x12000]
        # Contiguous in IOVA and in user address: one range for reading and writing alike.
        assert iotlb.user_address(0x10800, 2 * PAGE, IotlbAccess.READ) is None  # 0x11000 is WO
        assert iotlb.user_address(0x11800, PAGE, IotlbAccess.WRITE) == user + 0x1800
        readable, writable = iotlb.tables
        assert len(readable) == 2 and len(writable) == 1  # RO, RW apart; WO+RW one run
        removed = iotlb.invalidate(0x10fff, 2)
        assert [e.iova for e in removed] == [0x10000, 0x11000]
        assert [e.iova for e in iotlb.entries] == [0x12000]
        assert iotlb.ask(0x20010, IotlbAccess.READ) and not iotlb.ask(0x20ff0, IotlbAccess.READ)
        assert iotlb.ask(0x20010, IotlbAccess.WRITE)
        iotlb.update(IotlbMessage(0x20000, PAGE, user, RW, IotlbType.UPDATE), memory)
        assert iotlb.pending == 0


def test_a_front_end_cannot_grow_the_iotlb_without_bound():
    with GuestMemory([(0, 1 << 20)]) as memory:
        user = memory.guest_to_user(0)
        iotlb = Iotlb()
        for k in range(MAX_ENTRIES + 100):
            iotlb.update(IotlbMessage(k * 2 * PAGE, PAGE, user, RW, IotlbType.UPDATE), memory)
        assert len(iotlb.entries) == MAX_ENTRIES
        assert [e.iova for e in iotlb.entries] == sorted(e.iova for e in iotlb.entries)
        assert len(iotlb.tables[0]) == MAX_ENTRIES
