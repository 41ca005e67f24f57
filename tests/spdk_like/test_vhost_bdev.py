"""The vhost bdev: a disk behind a vhost-user-blk back-end (here fastpath's own target, in
this process) used through the bdev API, an IoJob included."""

from __future__ import annotations

import errno
import threading
import time

import numpy as np
import pytest

from fastpath.devices.blk import BLOCK_COMPLETION, BLOCK_IO, IO_READ, IOVEC, BlkDisk, VirtioBlk
from fastpath.pmd import PollHost
from fastpath.spdk_like import BlkTarget, IoJob, MallocBdev, VhostBdev, open_bdev
from fastpath.vhost_user import BackendServer, Gate


@pytest.fixture
def served_disk(tmp_path):
    """A malloc disk served by a running BlkTarget on a socket; yields (socket, disk)."""
    disk = MallocBdev(8 << 20)
    gate = Gate()
    target = BlkTarget(gate, disk)

    def make(channel):
        device = VirtioBlk(gate, BlkDisk(disk.size), num_queues=2)
        target.attach(device)
        return device.backend(channel)

    socket = str(tmp_path / "blk.sock")
    server = BackendServer(socket, make)
    stop = threading.Event()
    thread = threading.Thread(target=lambda: [server.serve_once(0.01)
                                              for _ in iter(stop.is_set, True)], daemon=True)
    thread.start()
    target.start()
    yield socket, disk
    target.stop()
    stop.set()
    thread.join(5)
    server.close()
    disk.close()


def test_a_spec_names_the_socket_and_the_disk_is_the_back_end_s(served_disk):
    socket, disk = served_disk
    with open_bdev(f"vhost:{socket},queues=2,queue_size=64") as bdev:
        assert isinstance(bdev, VhostBdev)
        assert (bdev.size, bdev.block_size) == (disk.size, 512)
        first, second = bdev.open_channel(32), bdev.open_channel(32)
        first.write(1 << 20, b"through vhost-user".ljust(4096, b"!"))
        assert bytes(disk.data[1 << 20:(1 << 20) + 18]) == b"through vhost-user"
        assert second.read(1 << 20, 512)[:18] == b"through vhost-user"
        second.write_zeroes(1 << 20, 4096)
        second.flush()
        assert first.read(1 << 20, 4096) == bytes(4096)
        with pytest.raises(ValueError, match="request queues has a channel"):
            bdev.open_channel(8)


def test_data_outside_the_shared_memory_is_refused_not_copied(served_disk):
    socket, _ = served_disk
    with open_bdev(f"vhost:{socket}") as bdev:
        channel = bdev.open_channel(8)
        private = np.zeros(4096, dtype=np.uint8)
        iov = np.array([(private.ctypes.data, 4096)], dtype=IOVEC)
        ios = np.array([(7, 0, 4096, iov.ctypes.data, 1, IO_READ, 0, 0)], dtype=BLOCK_IO)
        done = channel.run(ios)
        assert done.dtype == BLOCK_COMPLETION
        assert done["status"].tolist() == [-errno.EINVAL] and done["tag"].tolist() == [7]


@pytest.mark.parametrize("workload", ["verify", "randrw"])
def test_an_io_job_runs_over_vhost_user_without_failures(served_disk, workload):
    socket, disk = served_disk
    with open_bdev(f"vhost:{socket},queue_size=64") as bdev:
        job = IoJob(bdev.open_channel(32), workload, queue_depth=32, io_size=4096)
        host = PollHost("vhost-job", rounds=2000)
        host.add(job)
        # The target is another thread of this process: give it time, not rounds.
        deadline = time.monotonic() + 30
        while job.completed < 1000 and time.monotonic() < deadline:
            host.step()
        job.drain()
        while job.in_flight:
            host.step()
        job.service()
        assert job.completed >= 1000 and job.failed == 0 and job.miscompares == 0
        assert disk.statistics().errors == 0
