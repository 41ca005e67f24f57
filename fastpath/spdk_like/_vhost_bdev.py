"""The vhost bdev: a disk on a vhost-user-blk back-end (fastpath vhost-blk, qemu-storage-daemon,
SPDK), driven through `BlkFrontend` as SPDK's virtio bdev drives one.

Each channel is one of the device's request queues. A request's data must lie in the memory the
front-end shares with the back-end: `dma_buffer` hands out such memory (an `IoJob` takes its
buffers from it), and a request elsewhere completes with EINVAL rather than being copied.
Requests are staged as the driver's records during a burst and offered to the ring once at its
end (one kick decision per burst); what the ring has no room for is offered again at the next
reap.
"""

from __future__ import annotations

import errno

import numpy as np
from numba import njit

from fastpath._numba import NJIT, carray, u64_pointer, void_pointer
from fastpath.devices.blk import (
    DRIVER_COMPLETION,
    DRIVER_REQUEST,
    IO_DISCARD,
    IO_FLAG_MAY_UNMAP,
    IO_FLUSH,
    IO_READ,
    IO_WRITE,
    IO_WRITE_ZEROES,
    SECTOR_SIZE,
    VIRTIO_BLK_F_DISCARD,
    VIRTIO_BLK_F_FLUSH,
    VIRTIO_BLK_F_WRITE_ZEROES,
    VIRTIO_BLK_S_OK,
    VIRTIO_BLK_S_UNSUPP,
    VIRTIO_BLK_T_DISCARD,
    VIRTIO_BLK_T_FLUSH,
    VIRTIO_BLK_T_IN,
    VIRTIO_BLK_T_OUT,
    VIRTIO_BLK_T_WRITE_ZEROES,
    VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP,
    BlkFrontend,
    reap_completions,
    submit_requests,
)
from fastpath.spdk_like._bdev import (
    CH_ARGS,
    Bdev,
    BdevChannel,
    BdevKind,
    complete_now,
    register_bdev_kind,
)

KIND = 6

ARG_QUEUE = CH_ARGS            # address of the driver queue's state
ARG_QUEUE_WORDS = CH_ARGS + 1  # its length
ARG_STAGED = CH_ARGS + 2       # address of DRIVER_REQUEST (depth,): taken, not yet on the ring
ARG_STAGED_FIRST = CH_ARGS + 3
ARG_STAGED_COUNT = CH_ARGS + 4
ARG_DONE = CH_ARGS + 5         # address of DRIVER_COMPLETION (depth,)
ARG_DEPTH = CH_ARGS + 6
ARG_HOST_BASE = CH_ARGS + 7    # the shared memory's host address, at guest-physical 0
ARG_HOST_END = CH_ARGS + 8

@njit(**NJIT)
def _arrays(channel):
    depth = np.int64(channel[ARG_DEPTH])
    # SAFETY: the VhostBdev's own arrays for this channel, of these lengths, alive with it.
    return (carray(u64_pointer(channel[ARG_QUEUE]), (np.int64(channel[ARG_QUEUE_WORDS]),)),
            carray(void_pointer(channel[ARG_STAGED]), (depth,), DRIVER_REQUEST),
            carray(void_pointer(channel[ARG_DONE]), (depth,), DRIVER_COMPLETION))


@njit(**NJIT)
def start(channel, io):
    """Stage the request as the driver's record (EINVAL at once if its data is not in the
    shared memory, or in more than one piece)."""
    queue, staged, done = _arrays(channel)
    # Staged requests are in flight for the bdev layer, which holds a channel to its depth:
    # there is always room for one more, once what waits is moved to the front (rare: only
    # after the ring ran out of room).
    count = np.int64(channel[ARG_STAGED_COUNT])
    first = np.int64(channel[ARG_STAGED_FIRST])
    if first + count >= staged.shape[0]:
        for k in range(count):
            staged[k] = staged[first + k]
        first = 0
        channel[ARG_STAGED_FIRST] = 0
    operation = io.operation
    data = np.uint64(0)
    if operation == IO_READ or operation == IO_WRITE:
        # SAFETY: the request's iovec array (the bdev layer checked it sums to length).
        iov = carray(u64_pointer(io.iov), (np.int64(io.iovcnt), 2))
        base = iov[0, 0]
        if (io.iovcnt != 1 or base < channel[ARG_HOST_BASE]
                or base + iov[0, 1] > channel[ARG_HOST_END]):
            complete_now(channel, io.tag, -errno.EINVAL)
            return 1
        data = base - channel[ARG_HOST_BASE]
    record = staged[first + count]
    record.tag = io.tag
    record.sector = io.offset // np.uint64(SECTOR_SIZE)
    record.data = data
    record.length = io.length
    record.flags = 0
    if operation == IO_READ:
        record.type = VIRTIO_BLK_T_IN
    elif operation == IO_WRITE:
        record.type = VIRTIO_BLK_T_OUT
    elif operation == IO_FLUSH:
        record.type = VIRTIO_BLK_T_FLUSH
        record.length = 0
    elif operation == IO_DISCARD:
        record.type = VIRTIO_BLK_T_DISCARD
    else:
        record.type = VIRTIO_BLK_T_WRITE_ZEROES
        if io.flags & IO_FLAG_MAY_UNMAP:
            record.flags = VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP
    channel[ARG_STAGED_COUNT] = count + 1
    return 1


@njit(**NJIT)
def kick(channel):
    """Offer what is staged to the ring, in one burst."""
    count = np.int64(channel[ARG_STAGED_COUNT])
    if count == 0:
        return 0
    queue, staged, done = _arrays(channel)
    first = np.int64(channel[ARG_STAGED_FIRST])
    taken = submit_requests(queue, staged[first:first + count], count)
    if taken == count:
        channel[ARG_STAGED_FIRST] = 0
        channel[ARG_STAGED_COUNT] = 0
    else:
        channel[ARG_STAGED_FIRST] = first + taken
        channel[ARG_STAGED_COUNT] = count - taken
    return taken


@njit(**NJIT)
def reap(channel, completions, first, max_n):
    """What the device used, as completions; first offers the ring what still waits."""
    kick(channel)
    queue, staged, done = _arrays(channel)
    n = reap_completions(queue, done, min(max_n, done.shape[0]))
    for k in range(n):
        completions[first + k].tag = done[k].tag
        status = done[k].status
        if status == VIRTIO_BLK_S_OK:
            completions[first + k].status = 0
        elif status == VIRTIO_BLK_S_UNSUPP:
            completions[first + k].status = -errno.EOPNOTSUPP
        else:
            completions[first + k].status = -errno.EIO
    return n


class VhostBdev(Bdev):
    """The disk of the vhost-user-blk back-end at `socket` (see the module's doc), with up to
    `queues` channels (one request queue each) of `queue_size` entries."""

    kind = KIND

    def __init__(self, socket: str, *, name: str = "vhost", queues: int = 1,
                 queue_size: int = 256, packed: bool = False, memory_size: int = 64 << 20,
                 read_only: bool = False):
        self.frontend = BlkFrontend(socket, queues=queues, queue_size=queue_size,
                                    packed=packed, memory_size=memory_size)
        try:
            super().__init__(name, self.frontend.size, block_size=self.frontend.block_size,
                             read_only=read_only or self.frontend.read_only)
        except ValueError:
            self.frontend.close()
            raise
        features = self.frontend.features
        self.operations = frozenset(
            op for op, bit in ((IO_READ, None), (IO_WRITE, None),
                               (IO_FLUSH, VIRTIO_BLK_F_FLUSH),
                               (IO_DISCARD, VIRTIO_BLK_F_DISCARD),
                               (IO_WRITE_ZEROES, VIRTIO_BLK_F_WRITE_ZEROES))
            if bit is None or features >> bit & 1)
        self._memory = self.frontend.memory.view(0, self.frontend.memory.size)
        self._free_queues = list(range(queues))
        self._allocated = [0] * queues

    def _open_channel(self, channel: BdevChannel) -> None:
        if not self._free_queues:
            raise ValueError(f"{self.name}: every one of its {len(self.frontend.queues)} "
                             "request queues has a channel already")
        index = self._free_queues.pop(0)
        queue = self.frontend.queues[index]
        if channel.depth > queue.queue.size:
            self._free_queues.insert(0, index)
            raise ValueError(f"{self.name}: a channel of depth {channel.depth} on a ring of "
                             f"{queue.queue.size} entries")
        channel.queue_index = index
        channel.staged = np.zeros(channel.depth, dtype=DRIVER_REQUEST)
        channel.used = np.zeros(channel.depth, dtype=DRIVER_COMPLETION)
        row = channel.row
        row[ARG_QUEUE] = queue.state.ctypes.data
        row[ARG_QUEUE_WORDS] = len(queue.state)
        row[ARG_STAGED] = channel.staged.ctypes.data
        row[ARG_DONE] = channel.used.ctypes.data
        row[ARG_DEPTH] = channel.depth
        row[ARG_HOST_BASE] = self._memory.ctypes.data
        row[ARG_HOST_END] = self._memory.ctypes.data + len(self._memory)

    def _close_channel(self, channel: BdevChannel) -> None:
        self._free_queues.append(channel.queue_index)

    def dma_buffer(self, channel: BdevChannel, size: int) -> np.ndarray:
        """`size` bytes (4 KiB aligned) of the channel's queue's data pool, which requests may
        name without a copy."""
        index = channel.queue_index
        gpa, pool = self.frontend.pool(index)
        start = self._allocated[index]
        if start + size > pool:
            raise ValueError(f"{self.name}: queue {index}'s data pool holds {pool} bytes, "
                             f"{pool - start} of them free; {size} asked (give memory_size)")
        self._allocated[index] = start + (size + 4095) // 4096 * 4096
        return self._memory[gpa + start:gpa + start + size]

    def close(self) -> None:
        super().close()
        self.frontend.close()


def _flag(text: str) -> bool:
    if text not in ("0", "1"):
        raise ValueError(f"{text!r}: 0 or 1")
    return text == "1"


register_bdev_kind(BdevKind(
    code=KIND, name="vhost", argument="SOCKET",
    options={"queues": int, "queue_size": int, "packed": _flag, "memory_size": int},
    help="the disk of a vhost-user-blk back-end listening on SOCKET",
    make=lambda argument, **options: VhostBdev(argument, **options),
    start=start, kick=kick, reap=reap))
