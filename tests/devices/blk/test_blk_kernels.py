"""The kernel API a poller calls (fastpath.devices.blk.kernels): take_requests and
complete_requests compose in compiled code, a burst each, with no Python between them."""

import errno

import numpy as np
import pytest
from blk_guest import PATTERN, RING_TYPES, BlkGuest, data
from numba import njit

from fastpath._numba import NJIT
from fastpath.devices.blk import (
    BLOCK_COMPLETION,
    BLOCK_IO,
    IO_FLUSH,
    VIRTIO_BLK_S_IOERR,
    VIRTIO_BLK_S_OK,
    BlkDisk,
    BlkQueue,
)
from fastpath.devices.blk.kernels import complete_requests, take_requests
from fastpath.errors import AvailIndexJump, QueueBroken

EIO = -errno.EIO


@njit(**NJIT)
def _poll(queue, ios, completions, max_n):
    # A poller's round with an executor that finishes flushes and fails everything else.
    n = take_requests(queue, ios, max_n)
    if n <= 0:
        return n, 0
    for k in range(n):
        completions[k].tag = ios[k].tag
        completions[k].status = 0 if ios[k].operation == IO_FLUSH else EIO
    return n, complete_requests(queue, completions, n)


@pytest.mark.parametrize("ring", RING_TYPES)
def test_a_compiled_poller_takes_and_completes_requests(ring):
    guest = BlkGuest(ring == "packed")
    queue = BlkQueue(guest.guest.device(), BlkDisk(1 << 20), keepalive=guest.memory.mappings)
    flushes = [guest.flush() for _ in range(3)]
    write = guest.write(0, data(512))
    ios, completions = np.zeros(8, dtype=BLOCK_IO), np.zeros(8, dtype=BLOCK_COMPLETION)
    assert _poll(queue.arrays, ios, completions, 8) == (4, 4)
    assert all(guest.status(f) == VIRTIO_BLK_S_OK for f in flushes)
    assert guest.status(write) == VIRTIO_BLK_S_IOERR
    assert _poll(queue.arrays, ios, completions, 8) == (0, 0)
    assert queue.in_flight == 0 and len(guest.collect()) == 4


def test_a_broken_ring_is_reported_and_counted():
    guest = BlkGuest()
    queue = BlkQueue(guest.guest.device(), BlkDisk(1 << 20))
    guest.flush()
    guest.guest.avail_ring()[1] += 1000   # §2.7.13.3: more than the queue size made available
    ios = np.zeros(8, dtype=BLOCK_IO)
    with pytest.raises(AvailIndexJump):
        queue.take(ios)
    with pytest.raises(QueueBroken):
        queue.take(ios)
    assert queue.counters["broken"] == 2


def test_a_detached_queue_takes_nothing_and_writes_nothing():
    guest = BlkGuest()
    queue = BlkQueue(guest.guest.device(), BlkDisk(1 << 20), keepalive=guest.memory.mappings)
    ios, completions = np.zeros(8, dtype=BLOCK_IO), np.zeros(8, dtype=BLOCK_COMPLETION)
    sent = [guest.flush(), guest.flush()]
    assert queue.take(ios, 1) == 1
    queue.detach()
    before = guest.snapshot()
    assert queue.take(ios) == 0
    completions["tag"][0] = ios["tag"][0]
    assert queue.complete(completions, 1) == 0
    assert guest.changed(before) == set() and guest.collect() == {}
    assert queue.in_flight == 0 and queue.counters["abandoned"] == 1
    assert guest.status(sent[1]) == PATTERN
