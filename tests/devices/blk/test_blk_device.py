"""The virtio-blk device behind the vhost-user engine: what it offers (virtio 1.2 §5.2.3 and the
vhost-user protocol features a blk front-end needs), its config space (§5.2.4) read and
written through GET_CONFIG and SET_CONFIG, and requests served on the rings a front-end sets
up, split and packed, one queue or several."""

import os
import threading
from contextlib import contextmanager

import numpy as np
import pytest
from blk_guest import RING_TYPES, BlkGuest, data, header

from fastpath.devices.blk import (
    BLOCK_IO,
    CONFIG_DTYPE,
    CONFIG_SIZE,
    IO_FLAG_FUA,
    VIRTIO_BLK_F_BLK_SIZE,
    VIRTIO_BLK_F_CONFIG_WCE,
    VIRTIO_BLK_F_DISCARD,
    VIRTIO_BLK_F_FLUSH,
    VIRTIO_BLK_F_GEOMETRY,
    VIRTIO_BLK_F_MQ,
    VIRTIO_BLK_F_RO,
    VIRTIO_BLK_F_SEG_MAX,
    VIRTIO_BLK_F_SIZE_MAX,
    VIRTIO_BLK_F_TOPOLOGY,
    VIRTIO_BLK_F_WRITE_ZEROES,
    VIRTIO_BLK_S_OK,
    VIRTIO_BLK_T_IN,
    WRITEBACK_OFFSET,
    BlkDisk,
    VirtioBlk,
)
from fastpath.errors import BackendRefused, RequestRefused
from fastpath.hv import GuestMemory
from fastpath.testing.reference.blk import ReferenceExecutor
from fastpath.vhost_user import BackendServer, Frontend, Gate
from fastpath.vhost_user.wire import (
    DeviceConfig,
    FrontendRequest,
    MemoryRegion,
    ProtocolFeature,
)
from fastpath.vring import (
    VIRTIO_F_IN_ORDER,
    VIRTIO_F_RING_PACKED,
    VIRTIO_F_VERSION_1,
    VIRTIO_RING_F_EVENT_IDX,
    VIRTIO_RING_F_INDIRECT_DESC,
)

F = FrontendRequest
DISK = BlkDisk(4 << 20, serial=b"blk-device-test")
BLK_BITS = (VIRTIO_BLK_F_SIZE_MAX, VIRTIO_BLK_F_SEG_MAX, VIRTIO_BLK_F_BLK_SIZE,
            VIRTIO_BLK_F_FLUSH, VIRTIO_BLK_F_TOPOLOGY, VIRTIO_BLK_F_CONFIG_WCE,
            VIRTIO_BLK_F_DISCARD, VIRTIO_BLK_F_WRITE_ZEROES)
RING_BITS = (VIRTIO_F_VERSION_1, VIRTIO_F_RING_PACKED, VIRTIO_RING_F_EVENT_IDX,
             VIRTIO_RING_F_INDIRECT_DESC)
WANTED_PROTOCOL = ProtocolFeature.MQ | ProtocolFeature.REPLY_ACK | ProtocolFeature.CONFIG


def bits(*numbers):
    return sum(1 << n for n in numbers)


# --- what the device offers ---

def test_offers_the_ring_features_and_the_blk_features_it_implements():
    device = VirtioBlk(Gate(), DISK)
    assert device.features == bits(*RING_BITS, *BLK_BITS)
    assert device.max_queue_size == 1024   # every slot owns a request's iovecs
    assert not device.features & bits(VIRTIO_BLK_F_GEOMETRY, VIRTIO_BLK_F_RO, VIRTIO_BLK_F_MQ,
                                      VIRTIO_F_IN_ORDER)


def test_read_only_and_multiqueue_are_offered_only_when_they_apply():
    device = VirtioBlk(Gate(), BlkDisk(1 << 20, read_only=True), num_queues=4)
    assert device.features == bits(*RING_BITS, *BLK_BITS, VIRTIO_BLK_F_RO, VIRTIO_BLK_F_MQ)
    assert device.queues == device.queue_num == 4


def test_offers_config_mq_and_inflight_tracking_but_not_dirty_logging():
    # QEMU's vhost-user-blk will not start without CONFIG; requests complete out of order, so
    # a restarted back-end needs the inflight region to resubmit what was in flight.
    device = VirtioBlk(Gate(), DISK)
    offered = device.protocol_features
    assert offered & ProtocolFeature.CONFIG and offered & ProtocolFeature.MQ
    assert offered & ProtocolFeature.INFLIGHT_SHMFD and device.tracks_inflight
    assert not offered & (ProtocolFeature.LOG_SHMFD | ProtocolFeature.MTU)


def test_writes_to_the_config_space_other_than_writeback_are_refused():
    device = VirtioBlk(Gate(), DISK)
    with pytest.raises(RequestRefused):   # CONFIG_WCE not negotiated
        device.write_config(WRITEBACK_OFFSET, b"\0")
    device._acked = bits(VIRTIO_BLK_F_CONFIG_WCE)
    for offset, value in ((0, b"\0"), (WRITEBACK_OFFSET, b"\2"), (WRITEBACK_OFFSET, b"\0\0"),
                          (WRITEBACK_OFFSET + 1, b"\0"), (WRITEBACK_OFFSET - 1, b"\0\0")):
        with pytest.raises(RequestRefused):
            device.write_config(offset, value)
    device.write_config(WRITEBACK_OFFSET, b"\0")
    assert device.read_config(WRITEBACK_OFFSET, 1) == b"\0"


# --- through the engine ---

@contextmanager
def connected(device, tmp_path, features=None, protocol=WANTED_PROTOCOL, packed=False):
    """A front-end connected to `device` behind a listening back-end serving in a thread,
    having negotiated `features` (all the device offers) on split or packed rings."""
    path = str(tmp_path / "blk.sock")
    server = BackendServer(path, device.backend)
    stop, failures = threading.Event(), []

    def loop():
        try:
            while not stop.is_set():
                server.serve_once(0.01)
        except BaseException as e:
            failures.append(e)

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    frontend = Frontend(path)
    try:
        features = device.features if features is None else features
        if not packed:
            features &= ~bits(VIRTIO_F_RING_PACKED)
        frontend.negotiate(features, protocol)
        yield frontend
    finally:
        frontend.close()
        stop.set()
        thread.join(5)
        server.close()
    assert not failures, failures


def config_of(frontend) -> np.void:
    reply = frontend.request(F.GET_CONFIG, DeviceConfig(0, 0, bytes(CONFIG_SIZE + 4)))
    assert reply.data[CONFIG_SIZE:] == bytes(4)   # past the end: zeros
    return np.frombuffer(reply.data[:CONFIG_SIZE], dtype=CONFIG_DTYPE)[0]


def test_the_front_end_reads_the_config_space_and_queue_count(tmp_path):
    device = VirtioBlk(Gate(), BlkDisk(8 << 20, block_size=4096, seg_max=64), num_queues=3)
    with connected(device, tmp_path) as frontend:
        config = config_of(frontend)
        assert frontend.queue_num() == 3
    assert (config["capacity"], config["blk_size"], config["seg_max"],
            config["num_queues"]) == (16384, 4096, 64, 3)
    assert (config["max_discard_seg"], config["max_write_zeroes_seg"]) == (1, 1)
    assert config["discard_sector_alignment"] == 8 and config["writeback"] == 1


@pytest.mark.parametrize("flush", [True, False], ids=["flush", "no flush"])
def test_writeback_starts_as_flush_negotiation_says(tmp_path, flush):
    # §5.2.5/§5.2.6.2: a driver without FLUSH cannot make writes stable itself, so the device
    # reports (and is) writethrough; with CONFIG_WCE the driver may switch.
    device = VirtioBlk(Gate(), DISK)
    features = device.features & ~(0 if flush else bits(VIRTIO_BLK_F_FLUSH))
    with connected(device, tmp_path, features) as frontend:
        assert config_of(frontend)["writeback"] == int(flush)
        frontend.request(F.SET_CONFIG, DeviceConfig(WRITEBACK_OFFSET, 0, bytes([not flush])))
        assert config_of(frontend)["writeback"] == int(not flush)
        with pytest.raises(BackendRefused):
            frontend.request(F.SET_CONFIG, DeviceConfig(0, 0, bytes(8)))


def start(frontend, guest, index=0):
    return frontend.start_vring(index, guest.guest.size, guest.memory, guest.guest.addresses,
                                base=0x8000 if guest.guest.packed else 0)


def serve(device, index, executor, ios=None):
    """One round of a data plane on queue `index`: take, execute, complete; returns the
    requests the executor carried out."""
    ios = np.zeros(64, dtype=BLOCK_IO) if ios is None else ios
    with device.gate.data():
        queue = device.served[index]
        n = queue.take(ios)
        queue.complete(executor.execute_records(ios, n))
    return n


@pytest.mark.parametrize("ring", RING_TYPES)
def test_requests_are_served_on_the_rings_the_front_end_starts(tmp_path, ring):
    device = VirtioBlk(Gate(), DISK)
    guest = BlkGuest(ring == "packed", event_idx=True)
    executor = ReferenceExecutor(DISK)
    with connected(device, tmp_path, packed=ring == "packed") as frontend:
        frontend.set_memory(guest.memory)
        vring = start(frontend, guest)
        assert device.served[0] is not None
        w = guest.write(16, data(4096))
        r = guest.read(16, 4096)
        g = guest.get_id()
        assert serve(device, 0, executor) == 2
        assert guest.collect() == {g.id: 21, w.id: 1, r.id: 4097}
        assert guest.written(r) == data(4096) and guest.status(r) == VIRTIO_BLK_S_OK
        assert os.eventfd_read(vring.call) >= 1
        frontend.stop_vring(0)
        assert device.served[0] is None
    counters = device.counters()[0]
    assert (counters["in"], counters["out"], counters["get_id"]) == (1, 1, 1)


def test_the_driver_switching_to_writethrough_makes_writes_stable(tmp_path):
    device = VirtioBlk(Gate(), DISK)
    guest = BlkGuest()
    ios = np.zeros(4, dtype=BLOCK_IO)
    with connected(device, tmp_path) as frontend:
        frontend.set_memory(guest.memory)
        start(frontend, guest)
        frontend.request(F.SET_CONFIG, DeviceConfig(WRITEBACK_OFFSET, 0, b"\0"))
        guest.write(0, data(512))
        serve(device, 0, ReferenceExecutor(DISK), ios)
    assert ios[0]["flags"] == IO_FLAG_FUA


@pytest.mark.parametrize("mq", [True, False], ids=["mq", "no mq"])
def test_every_queue_is_served_with_mq_and_only_the_first_without(tmp_path, mq):
    # §5.2.2: N = 1 unless VIRTIO_BLK_F_MQ is negotiated.
    device = VirtioBlk(Gate(), DISK, num_queues=2)
    guest = BlkGuest()
    second, addresses = guest.another_queue(0x80000)
    features = device.features & ~(0 if mq else bits(VIRTIO_BLK_F_MQ))
    with connected(device, tmp_path, features) as frontend:
        frontend.set_memory(guest.memory)
        start(frontend, guest, 0)
        frontend.start_vring(1, guest.guest.size, guest.memory, addresses)
        assert device.served[0] is not None
        assert (device.served[1] is not None) == mq
        if mq:
            r = guest.add([header(VIRTIO_BLK_T_IN, 0)], [512, 1], queue=second)
            assert serve(device, 1, ReferenceExecutor(DISK)) == 1
            assert second.collect() == [(r.id, 513)]


def test_a_ring_stopped_with_requests_in_flight_asks_the_host_to_finish_them(tmp_path):
    stops = []
    executor = ReferenceExecutor(DISK)
    ios = np.zeros(8, dtype=BLOCK_IO)

    def on_stop(device, index, queue):
        # The host completes what the executor holds (the engine has the gate); the ring was
        # disabled first, so the queue is no longer served.
        assert device.served[index] is None and device.draining == [(index, queue)]
        stops.append((index, queue.in_flight))
        queue.complete(executor.execute_records(ios, queue.in_flight))

    device = VirtioBlk(Gate(), DISK, on_stop=on_stop)
    guest = BlkGuest()
    with connected(device, tmp_path) as frontend:
        frontend.set_memory(guest.memory)
        start(frontend, guest)
        r = guest.read(0, 512)
        guest.read(8, 512)
        with device.gate.data():
            assert device.served[0].take(ios) == 2
        frontend.stop_vring(0)
    assert stops == [(0, 2)]
    assert guest.status(r) == VIRTIO_BLK_S_OK and len(guest.collect()) == 2
    assert device.counters()[0]["status_ok"] == 2 and not device.draining


def test_a_queue_let_go_with_requests_in_flight_stays_until_they_complete(tmp_path):
    device = VirtioBlk(Gate(), DISK)
    guest = BlkGuest()
    ios = np.zeros(8, dtype=BLOCK_IO)
    with connected(device, tmp_path) as frontend:
        frontend.set_memory(guest.memory)
        start(frontend, guest)
        r = guest.read(0, 512)
        with device.gate.data():
            queue = device.served[0]
            assert queue.take(ios) == 1
        frontend.stop_vring(0)
        assert device.draining == [(0, queue)] and device.served[0] is None
        assert queue.detached
        # The executor still holds the request: its iovecs and guest memory stay valid, but
        # the stopped ring is no longer the device's to write.
        before = guest.snapshot()
        assert queue.complete(ReferenceExecutor(DISK).execute_records(ios, 1)) == 0
        assert guest.changed(before) <= set(range(r.writable[0][0], r.writable[0][0] + 512))
        assert guest.collect() == {}
    counters = device.counters()[0]
    assert (counters["abandoned"], counters["status_ok"]) == (1, 0) and not device.draining


def test_requests_in_flight_keep_a_removed_region_mapped_until_they_complete(tmp_path):
    # A front-end may take a region away (REM_MEM_REG) while the executor still writes a
    # read's data into it: the queue keeps the mapping until the request completes.
    device = VirtioBlk(Gate(), DISK)
    guest = BlkGuest()
    extra = GuestMemory([(1 << 30, 1 << 20)])
    region = extra.regions[0]
    table = MemoryRegion(region.guest_phys_addr, region.size, region.user_addr, 0)
    executor = ReferenceExecutor(DISK)
    executor.data[:4096] = data(4096)
    ios = np.zeros(8, dtype=BLOCK_IO)
    protocol = WANTED_PROTOCOL | ProtocolFeature.CONFIGURE_MEM_SLOTS
    with connected(device, tmp_path, protocol=protocol) as frontend:
        frontend.set_memory(guest.memory)
        frontend.request(F.ADD_MEM_REG, table, [region.fd])
        start(frontend, guest)
        head, status = guest.place(16), guest.place(1)
        guest.memory.write(head, header(VIRTIO_BLK_T_IN, 0))
        guest.queue.add([(head, 16)], [(region.guest_phys_addr, 4096), (status, 1)])
        with device.gate.data():
            queue = device.served[0]
            assert queue.take(ios) == 1
        frontend.request(F.REM_MEM_REG, table)
        with device.gate.data():
            assert queue.complete(executor.execute_records(ios, 1)) == 1
        assert extra.read(region.guest_phys_addr, 4096) == data(4096)
        assert guest.memory.read(status, 1) == bytes([VIRTIO_BLK_S_OK])
    extra.close()
