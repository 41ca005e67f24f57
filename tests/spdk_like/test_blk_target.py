"""The vhost-user-blk target: a virtio-blk device's queues served by a reactor over a bdev,
through the real engine and a front-end on a socket."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import pytest

from fastpath.devices.blk import VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_OK, BlkDisk, VirtioBlk
from fastpath.spdk_like import BlkTarget, MallocBdev
from fastpath.vhost_user import BackendServer, Frontend, Gate
from fastpath.vhost_user.wire import ProtocolFeature
from fastpath.vring import VIRTIO_F_RING_PACKED

# The blk device tests' guest-side driver (requests laid out in memfd guest memory).
sys.path.insert(0, str(Path(__file__).parents[1] / "devices" / "blk"))
from blk_guest import RING_TYPES, BlkGuest, data  # noqa: E402

PROTOCOL = ProtocolFeature.MQ | ProtocolFeature.REPLY_ACK | ProtocolFeature.CONFIG


@contextmanager
def target_on(tmp_path, bdev, *, read_only=False, queues=1):
    """A listening back-end whose devices a running BlkTarget serves; yields (connect,
    devices, target), connect(packed) giving a negotiated Frontend."""
    gate = Gate()
    disk = BlkDisk(bdev.size, read_only=read_only, serial=b"target-test")
    target = BlkTarget(gate, bdev)
    devices: list[VirtioBlk] = []

    def make(channel):
        device = VirtioBlk(gate, disk, num_queues=queues)
        devices.append(device)
        target.attach(device)
        return device.backend(channel)

    path = str(tmp_path / "blk.sock")
    server = BackendServer(path, make)
    stop = threading.Event()
    thread = threading.Thread(target=lambda: [server.serve_once(0.01)
                                              for _ in iter(stop.is_set, True)], daemon=True)
    thread.start()
    target.start()
    frontends = []

    def connect(packed: bool) -> Frontend:
        frontend = Frontend(path)
        frontends.append(frontend)
        features = VirtioBlk(gate, disk, num_queues=queues).features
        if not packed:
            features &= ~(1 << VIRTIO_F_RING_PACKED)
        frontend.negotiate(features, PROTOCOL)
        return frontend

    try:
        yield connect, devices, target
    finally:
        for frontend in frontends:
            frontend.close()
        time.sleep(0.05)
        target.stop()
        stop.set()
        thread.join(5)
        server.close()


def _start(frontend, guest, index=0):
    frontend.set_memory(guest.memory)
    return frontend.start_vring(index, guest.guest.size, guest.memory,
                                guest.guest.addresses, base=0x8000 if guest.guest.packed else 0)


def _collect(guest, count, timeout=5.0):
    used: dict = {}
    deadline = time.monotonic() + timeout
    while len(used) < count:
        used |= guest.collect()
        assert time.monotonic() < deadline, f"{len(used)} of {count} requests used"
        time.sleep(0.001)
    return used


@pytest.mark.parametrize("ring", RING_TYPES)
def test_writes_reach_the_bdev_and_read_back_through_the_ring(tmp_path, ring):
    with MallocBdev(4 << 20) as bdev, target_on(tmp_path, bdev) as (connect, devices, _):
        frontend = connect(ring == "packed")
        guest = BlkGuest(ring == "packed", event_idx=True)
        _start(frontend, guest)
        writes = [guest.write(8 * k, data(4096, seed=k)) for k in range(8)]
        used = _collect(guest, 8)
        assert all(used[w.id] == 1 and guest.status(w) == VIRTIO_BLK_S_OK for w in writes)
        reads = [guest.read(8 * k, 4096) for k in range(8)]
        used = _collect(guest, 8)
        for k, r in enumerate(reads):
            assert used[r.id] == 4097 and guest.written(r) == data(4096, seed=k)
        assert bytes(bdev.data[8 * 512:8 * 512 + 4096]) == data(4096, seed=1)
        stats = bdev.statistics()
        assert (stats.write_ops, stats.read_ops, stats.errors) == (8, 8, 0)


def test_a_read_only_disk_refuses_writes_and_serves_reads(tmp_path):
    with MallocBdev(1 << 20, read_only=True) as bdev, \
            target_on(tmp_path, bdev, read_only=True) as (connect, _, _):
        frontend = connect(False)
        guest = BlkGuest(False, event_idx=True)
        _start(frontend, guest)
        w = guest.write(0, data(512))
        r = guest.read(0, 512)
        _collect(guest, 2)
        assert guest.status(w) == VIRTIO_BLK_S_IOERR and guest.status(r) == VIRTIO_BLK_S_OK
        assert bdev.statistics().write_ops == 0


def test_a_stopped_ring_has_every_request_completed_before_its_base_is_read(tmp_path):
    with MallocBdev(4 << 20) as bdev, target_on(tmp_path, bdev) as (connect, devices, _):
        frontend = connect(False)
        guest = BlkGuest(False, event_idx=True)
        _start(frontend, guest)
        sent = [guest.write(8 * k, data(4096, seed=k)) for k in range(16)]
        frontend.stop_vring(0)
        used = guest.collect()
        # Whatever the target took was completed before GET_VRING_BASE answered.
        assert devices[0].counters()[0]["out"] == len(used) <= len(sent)
        assert bdev.statistics().write_ops == len(used)


def test_a_device_whose_front_end_went_away_is_let_go_once_its_requests_completed(tmp_path):
    with MallocBdev(4 << 20) as bdev, target_on(tmp_path, bdev) as (connect, devices, target):
        frontends = [connect(False) for _ in range(2)]
        guests = [BlkGuest(False, event_idx=True) for _ in frontends]
        for frontend, guest in zip(frontends, guests, strict=True):
            _start(frontend, guest)
            guest.write(0, data(4096))
            _collect(guest, 1)
        assert target.devices == devices
        frontends[0].close()
        deadline = time.monotonic() + 5
        while devices[0] in target.devices:
            assert time.monotonic() < deadline, "the closed connection's device is kept"
            time.sleep(0.01)
        # The other connection is served as before.
        w = guests[1].write(8, data(4096, seed=1))
        _collect(guests[1], 1)
        assert guests[1].status(w) == VIRTIO_BLK_S_OK and target.devices == [devices[1]]


def test_the_command_prints_its_capabilities_and_refuses_a_bad_bdev():
    run = [sys.executable, "-m", "fastpath.cli", "vhost-blk"]
    out = subprocess.run([*run, "--print-capabilities"], capture_output=True, text=True,
                         timeout=60)
    assert json.loads(out.stdout) == {"type": "block"}
    bad = subprocess.run([*run, "--socket-path", "/tmp/unused.sock", "--bdev", "tape:1G"],
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode != 0 and "no bdev kind 'tape'" in bad.stderr
    assert not os.path.exists("/tmp/unused.sock")
