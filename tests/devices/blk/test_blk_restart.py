"""A vhost-user-blk back-end killed mid-writes and restarted loses nothing (QEMU
docs/interop/vhost-user.rst, "Inflight I/O tracking"): `fastpath vhost-blk` on a file, in a
child process, SIGKILLed with a ring full of writes in flight and started again on the same
socket; BlkFrontend reconnects as QEMU's vhost-user-blk does, every request completes, and
every write reads back from the file as it was sent."""

from __future__ import annotations

import time

import numpy as np
import pytest

from fastpath.devices.blk import (
    DRIVER_COMPLETION,
    DRIVER_REQUEST,
    VIRTIO_BLK_S_OK,
    VIRTIO_BLK_T_OUT,
    BlkFrontend,
)
from fastpath.testing import VhostBlkProcess

BLOCK = 4096
WRITES = 6000
QUEUE_SIZE = 128
# Killed once this many writes were acknowledged: a ring full behind them.
KILL_AFTER = 1500


def block_pattern(number: int) -> bytes:
    # Each 8 bytes name the write and their place in it: a torn or misplaced write shows.
    words = np.arange(BLOCK // 8, dtype=np.uint64) | np.uint64(number) << np.uint64(32)
    return words.tobytes()


@pytest.mark.release_pass
def test_writes_in_flight_when_the_back_end_is_killed_complete_after_its_restart(tmp_path,
                                                                                   packed):
    disk = tmp_path / "disk.img"
    with open(disk, "wb") as f:
        f.truncate(WRITES * BLOCK)
    socket = tmp_path / "blk.sock"
    bdev = f"file:{disk}"
    backend = VhostBlkProcess(socket, bdev, time_limit=120.0)
    restarted = None
    try:
        with BlkFrontend(str(socket), packed=packed, queue_size=QUEUE_SIZE,
                         timeout=30.0) as blk:
            driver = blk.queues[0]
            pool, pool_size = blk.pool()
            buffers = list(range(pool, pool + min(pool_size, 2 * QUEUE_SIZE * BLOCK), BLOCK))
            buffer_of = {}
            acknowledged = []
            completions = np.zeros(QUEUE_SIZE, dtype=DRIVER_COMPLETION)
            request = np.zeros(1, dtype=DRIVER_REQUEST)
            submitted = 0
            in_flight_at_kill = None
            deadline = time.monotonic() + 90
            while len(acknowledged) < WRITES:
                assert time.monotonic() < deadline, (
                    f"{len(acknowledged)} of {WRITES} writes completed; {driver.in_flight} "
                    f"in flight:\n{backend.output}\n{restarted and restarted.output}")
                while submitted < WRITES and buffers and driver.in_flight < QUEUE_SIZE:
                    buffer = buffers.pop()
                    blk.memory.write(buffer, block_pattern(submitted))
                    request[0] = (submitted, submitted * BLOCK // 512, buffer, BLOCK,
                                  VIRTIO_BLK_T_OUT, 0, 0)
                    if not driver.submit(request):
                        buffers.append(buffer)
                        break
                    buffer_of[submitted] = buffer
                    submitted += 1
                if in_flight_at_kill is None and len(acknowledged) >= KILL_AFTER:
                    # Right after a burst went in, before any of it is reaped.
                    backend.kill()
                    in_flight_at_kill = driver.in_flight
                    restarted = VhostBlkProcess(socket, bdev, time_limit=120.0)
                    blk.reconnect()
                n = driver.reap(completions)
                for done in completions[:n]:
                    tag = int(done["tag"])
                    assert done["status"] == VIRTIO_BLK_S_OK, f"write {tag}: {done}"
                    buffers.append(buffer_of.pop(tag))
                    acknowledged.append(tag)
        assert in_flight_at_kill, "the back-end was killed with nothing in flight"
        assert sorted(acknowledged) == list(range(WRITES))
        data = disk.read_bytes()
        torn = [k for k in range(WRITES)
                if data[k * BLOCK:(k + 1) * BLOCK] != block_pattern(k)]
        assert not torn, f"{len(torn)} writes do not read back, the first {torn[:8]}"
    finally:
        backend.kill()
        if restarted is not None:
            restarted.kill()


@pytest.fixture(params=[False, True], ids=["split", "packed"])
def packed(request):
    return request.param
