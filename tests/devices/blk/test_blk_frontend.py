"""BlkFrontend, fastpath's virtio-blk driver over vhost-user, against qemu-storage-daemon's
vhost-user-blk export of a raw file (QEMU 7.2: split rings only) and, for packed rings and a
front-end that listens, against fastpath's own VirtioBlk: the config space as the back-end
was configured (virtio 1.2 §5.2.4), requests framed as §5.2.6 frames them and their status
bytes, many in flight, two request queues, and requests the driver must not send refused
before they reach the ring."""

import errno
import os
import random
import threading
import time
from contextlib import contextmanager

import numpy as np
import pytest
from blk_guest import BlkGuest, Served
from numba import njit

from fastpath._numba import NJIT
from fastpath.devices.blk import (
    BLOCK_IO,
    DRIVER_COMPLETION,
    DRIVER_REQUEST,
    SECTOR_SIZE,
    VIRTIO_BLK_F_DISCARD,
    VIRTIO_BLK_F_FLUSH,
    VIRTIO_BLK_S_OK,
    VIRTIO_BLK_T_DISCARD,
    VIRTIO_BLK_T_FLUSH,
    VIRTIO_BLK_T_GET_ID,
    VIRTIO_BLK_T_IN,
    VIRTIO_BLK_T_OUT,
    VIRTIO_BLK_T_WRITE_ZEROES,
    VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP,
    BlkDisk,
    BlkFrontend,
    VirtioBlk,
    blk_driver_features,
    reap_completions,
    submit_requests,
)
from fastpath.errors import BackendRefused
from fastpath.testing import StorageDaemon, StorageDaemonError
from fastpath.testing.reference.blk import ReferenceExecutor
from fastpath.vhost_user import BackendClient, BackendServer, Gate
from fastpath.vring import VIRTIO_F_RING_PACKED, VIRTIO_RING_F_INDIRECT_DESC

DISK_BYTES = 8 << 20
INDIRECT = 1 << VIRTIO_RING_F_INDIRECT_DESC


@pytest.fixture
def qsd_installed(peer_missing):
    if StorageDaemon.find() is None:
        peer_missing("qemu-storage-daemon is not installed (Debian package qemu-system-common)")


@pytest.fixture
def image(tmp_path):
    """A raw image of DISK_BYTES random bytes."""
    path = tmp_path / "disk.img"
    path.write_bytes(random.Random(7).randbytes(DISK_BYTES))
    return path


@contextmanager
def exported(tmp_path, image, **options):
    """qemu-storage-daemon exporting `image`, and a BlkFrontend connected to it."""
    frontend_options = {k: options.pop(k) for k in ("features", "memory_size", "queue_size")
                        if k in options}
    socket = str(tmp_path / "qsd.sock")
    with StorageDaemon(socket, image=image, **options) as daemon:
        with BlkFrontend(socket, queues=options.get("queues", 1), **frontend_options) as blk:
            yield blk
        assert daemon.running, daemon.output


def pattern(n: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(n)


def records(*requests) -> np.ndarray:
    """DRIVER_REQUEST records of (type, sector, data, length[, flags]), tagged 0, 1, ..."""
    out = np.zeros(len(requests), dtype=DRIVER_REQUEST)
    for tag, (kind, sector, data, length, *flags) in enumerate(requests):
        out[tag] = (tag, sector, data, length, kind, flags[0] if flags else 0, 0)
    return out


def reap_all(queue, count: int, timeout: float = 10.0) -> np.ndarray:
    """The completions of `count` requests in flight on `queue`, as they came."""
    done = np.zeros(count, dtype=DRIVER_COMPLETION)
    got = 0
    deadline = time.monotonic() + timeout
    while got < count:
        n = queue.reap(done[got:])
        got += n
        if not n:
            assert time.monotonic() < deadline, f"{count - got} of {count} never completed"
            time.sleep(0.0002)
    return done


# --- qemu-storage-daemon ---

@pytest.mark.parametrize("block_size", [512, 4096])
def test_capacity_block_size_and_queues_are_what_the_export_was_given(qsd_installed, tmp_path,
                                                                       image, block_size):
    with exported(tmp_path, image, block_size=block_size, queues=2) as blk:
        assert (blk.capacity, blk.size) == (DISK_BYTES // SECTOR_SIZE, DISK_BYTES)
        assert blk.block_size == block_size and not blk.read_only
        assert blk.config.num_queues == 2 and len(blk.queues) == 2
        assert blk.config.flush and blk.config.discard and blk.config.write_zeroes
        assert not blk.packed and blk.features & INDIRECT


def test_patterns_written_at_many_offsets_read_back_and_are_the_files_bytes(
        qsd_installed, tmp_path, image):
    model = bytearray(image.read_bytes())
    extents = random.Random(1).sample(range(DISK_BYTES // 65536), 40)
    with exported(tmp_path, image) as blk:
        for k, slot in enumerate(extents):
            # Sizes from one sector to 64 KiB, at offsets a sector or more into each extent.
            offset = slot * 65536 + (k % 8) * SECTOR_SIZE
            data = pattern(SECTOR_SIZE * (1 + k * 97 % 120), k)
            blk.write(offset, data)
            model[offset:offset + len(data)] = data
        blk.flush()
        for k, slot in enumerate(extents):
            offset = slot * 65536 + (k % 8) * SECTOR_SIZE
            n = SECTOR_SIZE * (1 + k * 97 % 120)
            assert blk.read(offset, n) == model[offset:offset + n]
        assert blk.read(0, DISK_BYTES) == model
    assert image.read_bytes() == model


def test_a_transfer_larger_than_the_pool_goes_in_several_bursts(qsd_installed, tmp_path,
                                                                 image):
    data = pattern(3 << 20, 2)
    with exported(tmp_path, image, memory_size=2 << 20) as blk:
        assert blk.pool(0)[1] == 1 << 20
        blk.write(1 << 20, data)
        assert blk.read(1 << 20, len(data)) == data
    assert image.read_bytes()[1 << 20:(1 << 20) + len(data)] == data


def test_discard_punches_a_hole_that_reads_back_as_zeros(qsd_installed, tmp_path, image):
    with exported(tmp_path, image, discard=True) as blk:
        blocks = os.stat(image).st_blocks
        blk.discard(1 << 20, 1 << 20)
        assert blk.read(1 << 20, 1 << 20) == bytes(1 << 20)
        assert os.stat(image).st_blocks < blocks
    assert image.read_bytes()[1 << 20:2 << 20] == bytes(1 << 20)


@pytest.mark.parametrize("unmap", [False, True], ids=["in place", "unmap"])
def test_write_zeroes_reads_back_as_zeros(qsd_installed, tmp_path, image, unmap):
    before = image.read_bytes()
    with exported(tmp_path, image) as blk:
        blocks = os.stat(image).st_blocks
        blk.write_zeroes(512, 5 << 20, unmap=unmap)
        assert blk.read(0, DISK_BYTES) == before[:512] + bytes(5 << 20) + before[512 + (5 << 20):]
        assert (os.stat(image).st_blocks < blocks) == unmap
    assert image.read_bytes()[512:512 + (5 << 20)] == bytes(5 << 20)


def test_a_read_only_export_fails_writes_with_ioerr(qsd_installed, tmp_path, image):
    before = image.read_bytes()
    with exported(tmp_path, image, writable=False) as blk:
        assert blk.read_only
        for write in (lambda: blk.write(0, pattern(4096, 3)), lambda: blk.discard(0, 4096),
                      lambda: blk.write_zeroes(0, 4096)):
            with pytest.raises(OSError, match="VIRTIO_BLK_S_IOERR") as failed:
                write()
            assert failed.value.errno == errno.EIO
        assert blk.read(0, 4096) == before[:4096]
        blk.flush()
    assert image.read_bytes() == before


def test_get_id_is_the_exports_id_string(qsd_installed, tmp_path, image):
    with exported(tmp_path, image) as blk:
        assert blk.get_id() == b"vhost_user_blk"


@pytest.mark.parametrize("indirect", [True, False], ids=["indirect", "direct"])
def test_a_ring_full_of_requests_in_flight(qsd_installed, tmp_path, image, indirect):
    # With indirect tables a request takes one ring entry, so all 128 go in one burst;
    # without, three (header, data, status), and the ring takes what fits.
    features = blk_driver_features() & ~(0 if indirect else INDIRECT)
    before = image.read_bytes()
    with exported(tmp_path, image, features=features) as blk:
        queue = blk.queues[0]
        pool, _ = blk.pool(0)
        reads = records(*((VIRTIO_BLK_T_IN, 8 * k, pool + 4096 * k, 4096) for k in range(128)))
        taken = queue.submit(reads)
        assert taken == (128 if indirect else 128 // 3) and queue.in_flight == taken
        done = [reap_all(queue, taken)]
        while taken < 128:
            more = queue.submit(reads[taken:])
            done.append(reap_all(queue, more))
            taken += more
        done = np.concatenate(done)
        assert sorted(done["tag"]) == list(range(128)) and queue.in_flight == 0
        assert (done["status"] == VIRTIO_BLK_S_OK).all()
        assert (done["written"] == 4097).all()   # the data and the status byte
        assert blk.memory.read(pool, 128 * 4096) == before[:128 * 4096]


def test_two_queues_carry_requests_at_the_same_time(qsd_installed, tmp_path, image):
    before = image.read_bytes()
    with exported(tmp_path, image, queues=2) as blk:
        (pool0, _), (pool1, _) = blk.pool(0), blk.pool(1)
        data = pattern(64 * 4096, 4)
        blk.memory.write(pool0, data)
        writes = records(*((VIRTIO_BLK_T_OUT, 8 * k, pool0 + 4096 * k, 4096)
                           for k in range(64)))
        reads = records(*((VIRTIO_BLK_T_IN, 8 * (64 + k), pool1 + 4096 * k, 4096)
                          for k in range(64)))
        assert blk.queues[0].submit(writes) == 64
        assert blk.queues[1].submit(reads) == 64
        assert (reap_all(blk.queues[1], 64)["status"] == VIRTIO_BLK_S_OK).all()
        assert (reap_all(blk.queues[0], 64)["status"] == VIRTIO_BLK_S_OK).all()
        assert blk.memory.read(pool1, 64 * 4096) == before[64 * 4096:128 * 4096]
        assert blk.read(0, len(data), queue=1) == data
    assert image.read_bytes()[:len(data)] == data


@njit(**NJIT)
def _drive(state, requests, completions, max_polls):
    # A compiled driver's loop: keep the ring full until every request has completed (or
    # max_polls rounds passed); returns how many completed.
    submitted = 0
    done = 0
    for _ in range(max_polls):
        if submitted < len(requests):
            submitted += submit_requests(state, requests[submitted:], len(requests) - submitted)
        done += reap_completions(state, completions[done:], len(completions) - done)
        if done == len(requests):
            break
    return done


def test_a_compiled_loop_keeps_the_ring_full_without_python(qsd_installed, tmp_path, image):
    with exported(tmp_path, image) as blk:
        queue = blk.queues[0]
        pool, _ = blk.pool(0)
        data = pattern(512 * 4096, 10)
        blk.memory.write(pool, data)
        for kind, buffers in ((VIRTIO_BLK_T_OUT, pool), (VIRTIO_BLK_T_IN, pool + len(data))):
            # Four rings' worth, in an order that is not the disk's.
            order = random.Random(kind).sample(range(512), 512)
            requests = records(*((kind, 8 * k, buffers + 4096 * k, 4096) for k in order))
            completions = np.zeros(512, dtype=DRIVER_COMPLETION)
            assert _drive(queue.state, requests, completions, 50_000_000) == 512
            assert sorted(completions["tag"]) == list(range(512))
            assert (completions["status"] == VIRTIO_BLK_S_OK).all() and queue.in_flight == 0
        assert blk.memory.read(pool + len(data), len(data)) == data
    assert image.read_bytes()[:len(data)] == data


def test_a_packed_ring_asked_of_qemu_storage_daemon_is_refused(qsd_installed, tmp_path, image):
    socket = str(tmp_path / "qsd.sock")
    with StorageDaemon(socket, image=image):
        with pytest.raises(BackendRefused, match="RING_PACKED"):
            BlkFrontend(socket, packed=True)


def test_a_null_disk_in_a_polling_iothread(qsd_installed, tmp_path):
    socket = str(tmp_path / "qsd.sock")
    with StorageDaemon(socket, null_size=1 << 30, iothread=True, poll_max_ns=32768,
                       block_size=4096) as daemon:
        assert "iothread,id=t0,poll-max-ns=32768" in daemon.command
        with BlkFrontend(socket) as blk:
            assert (blk.size, blk.block_size) == (1 << 30, 4096)
            blk.write(1 << 29, pattern(1 << 20, 5))
            assert blk.read(1 << 29, 1 << 20) == bytes(1 << 20)   # read-zeroes=on


# --- requests the driver must not send ---

def test_bad_requests_are_refused_before_they_reach_the_ring(qsd_installed, tmp_path, image):
    before = image.read_bytes()
    with exported(tmp_path, image, block_size=4096) as blk:
        queue = blk.queues[0]
        pool, pool_size = blk.pool(0)
        end = DISK_BYTES // SECTOR_SIZE
        good = (VIRTIO_BLK_T_OUT, 0, pool, 4096)
        refused = {
            "past the end of the disk": [(VIRTIO_BLK_T_IN, end, pool, 4096),
                                         (VIRTIO_BLK_T_OUT, end - 8, pool, 8192),
                                         (VIRTIO_BLK_T_IN, 2**64 - 8, pool, 4096),
                                         (VIRTIO_BLK_T_DISCARD, end - 8, 0, 8192)],
            "not whole logical blocks": [(VIRTIO_BLK_T_IN, 1, pool, 4096),
                                         (VIRTIO_BLK_T_OUT, 0, pool, 512),
                                         (VIRTIO_BLK_T_IN, 0, pool, 0),
                                         (VIRTIO_BLK_T_WRITE_ZEROES, 8, 0, 100)],
            "buffer outside the data area": [(VIRTIO_BLK_T_IN, 0, 0, 4096),
                                             (VIRTIO_BLK_T_OUT, 0, pool - 4096, 8192),
                                             (VIRTIO_BLK_T_IN, 0, pool + pool_size, 4096),
                                             (VIRTIO_BLK_T_IN, 0, 2**64 - 4096, 4096),
                                             (VIRTIO_BLK_T_GET_ID, 0, pool, 19),
                                             (VIRTIO_BLK_T_FLUSH, 0, pool, 512)],
            "no type": [(3, 0, pool, 4096), (2**32 - 1, 0, pool, 4096)],
            "flags other than": [(VIRTIO_BLK_T_OUT, 0, pool, 4096,
                                  VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP),
                                 (VIRTIO_BLK_T_WRITE_ZEROES, 0, 0, 4096, 2)],
        }
        for reason, requests in refused.items():
            for request in requests:
                with pytest.raises(ValueError, match=reason):
                    # A bad request refuses its whole burst: the good one before it too.
                    queue.submit(records(good, request))
        assert queue.queue.avail_idx == 0 and queue.in_flight == 0
        for call, message in ((lambda: blk.read(100, 4096), "offset 100"),
                              (lambda: blk.write(-4096, b"x"), "negative"),
                              (lambda: blk.write(4096, b"x" * 1000), "logical blocks"),
                              (lambda: blk.read(DISK_BYTES, 4096), "end of the disk"),
                              (lambda: blk.discard(4096, 512), "logical blocks")):
            with pytest.raises(ValueError, match=message):
                call()
        assert queue.queue.avail_idx == 0
        with pytest.raises(TypeError):
            queue.submit(np.zeros(1, dtype=BLOCK_IO))
        # The ring is as good as new.
        assert blk.read(0, 4096) == before[:4096]
    assert image.read_bytes() == before


def test_requests_a_feature_was_not_negotiated_for_are_refused(qsd_installed, tmp_path,
                                                               image):
    features = blk_driver_features() & ~(1 << VIRTIO_BLK_F_FLUSH | 1 << VIRTIO_BLK_F_DISCARD)
    with exported(tmp_path, image, features=features) as blk:
        assert not blk.config.flush and not blk.config.discard and blk.config.write_zeroes
        for call in (blk.flush, lambda: blk.discard(0, 4096)):
            with pytest.raises(ValueError, match="feature the device did not offer"):
                call()
        blk.write_zeroes(0, 4096)


def test_the_launcher_says_what_is_missing_or_why_the_daemon_did_not_start(
        qsd_installed, tmp_path, monkeypatch):
    with pytest.raises(StorageDaemonError, match="Could not open"):
        StorageDaemon(str(tmp_path / "qsd.sock"), image=tmp_path / "absent.img")
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(StorageDaemonError, match="not installed .*qemu-system-common"):
        StorageDaemon(str(tmp_path / "qsd.sock"), null_size=1 << 20)


# --- fastpath's own device: packed rings, and a front-end that listens ---

@pytest.fixture(scope="module")
def device_kernels():
    """The device's compiled request path, compiled before a front-end waits on an engine
    whose thread serves the rings too: a first compilation on a busy machine takes longer
    than the front-end waits for a reply."""
    guest = BlkGuest()
    served = Served(guest, BlkDisk(1 << 20))
    guest.read(0, 512)
    assert len(served.run()) == 1


@contextmanager
def fastpath_device(path, disk, *, queues=1, client=False):
    """fastpath's VirtioBlk over `disk` behind vhost-user, listening on `path` (or, as a
    client, connecting to a front-end listening there), its engine and its data plane (the
    reference executor, the disk in memory) served by one thread; yields the executor."""
    device = VirtioBlk(Gate(), disk, num_queues=queues)
    executor = ReferenceExecutor(disk)
    adapter = (BackendClient(path, device.backend, retry_interval=0.01) if client
               else BackendServer(path, device.backend))
    stop, failures = threading.Event(), []
    ios = np.zeros(64, dtype=BLOCK_IO)

    def serve():
        try:
            while not stop.is_set():
                adapter.serve_once(0.001)
                with device.gate.data():
                    for queue in device.served:
                        n = queue.take(ios) if queue is not None else 0
                        if n:
                            queue.complete(executor.execute_records(ios, n))
        except BaseException as e:
            failures.append(e)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield executor
    finally:
        stop.set()
        thread.join(5)
        adapter.close()
    assert not failures, failures


@pytest.mark.parametrize("indirect", [True, False], ids=["indirect", "direct"])
def test_a_packed_ring_against_fastpaths_device(device_kernels, tmp_path, indirect):
    # fastpath's device cuts nothing, but tells the driver size_max 128 KiB: a 1 MiB request
    # goes in eight data descriptors.
    disk = BlkDisk(4 << 20, serial=b"fastpath-blk")
    path = str(tmp_path / "blk.sock")
    features = blk_driver_features(packed=True) & ~(0 if indirect else INDIRECT)
    with fastpath_device(path, disk) as executor:
        with BlkFrontend(path, packed=True, features=features) as blk:
            assert blk.packed and blk.features >> VIRTIO_F_RING_PACKED & 1
            assert blk.config.size_max == 128 << 10
            data = pattern(1 << 20, 6)
            blk.write(4096, data)
            assert blk.read(4096, len(data)) == data
            assert blk.get_id() == b"fastpath-blk"
            blk.write_zeroes(8192, 4096)
            blk.flush()
            assert executor.data[4096:4096 + len(data)] == data[:4096] + bytes(4096) + data[8192:]


def test_a_listening_front_end_takes_a_back_end_that_connects(device_kernels, tmp_path):
    disk = BlkDisk(1 << 20, block_size=4096, read_only=True)
    path = str(tmp_path / "blk.sock")
    with fastpath_device(path, disk, queues=2, client=True) as executor:
        executor.data[:4096] = pattern(4096, 8)
        with BlkFrontend(path, server=True, queues=2) as blk:
            assert (blk.size, blk.block_size, blk.read_only) == (1 << 20, 4096, True)
            assert blk.read(0, 4096, queue=1) == executor.data[:4096]
            with pytest.raises(OSError):
                blk.write(0, bytes(4096))
        assert not os.path.exists(path)


def test_requests_past_the_devices_limits_are_refused_and_the_helpers_cut_to_them(
        device_kernels, tmp_path):
    # Pieces of at most size_max bytes, seg_max of them: 8 KiB a request here.
    disk = BlkDisk(1 << 20, size_max=4096, seg_max=2, max_discard_sectors=8,
                   max_write_zeroes_sectors=16)
    path = str(tmp_path / "blk.sock")
    with fastpath_device(path, disk) as executor:
        with BlkFrontend(path) as blk:
            queue = blk.queues[0]
            pool, _ = blk.pool(0)
            for request in ((VIRTIO_BLK_T_IN, 0, pool, 12288),
                            (VIRTIO_BLK_T_DISCARD, 0, 0, 16 * SECTOR_SIZE),
                            (VIRTIO_BLK_T_WRITE_ZEROES, 0, 0, 32 * SECTOR_SIZE)):
                with pytest.raises(ValueError, match="larger than the device takes"):
                    queue.submit(records(request))
            assert queue.submit(records((VIRTIO_BLK_T_IN, 0, pool, 8192))) == 1
            assert reap_all(queue, 1)["status"][0] == VIRTIO_BLK_S_OK
            data = pattern(64 << 10, 9)
            blk.write(0, data)
            blk.discard(0, 8192)
            blk.write_zeroes(16384, 16384)
            expected = bytes(8192) + data[8192:16384] + bytes(16384) + data[32768:]
            assert blk.read(0, len(data)) == expected == executor.data[:len(data)]
