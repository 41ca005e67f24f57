"""One virtqueue of a virtio-net device as the data plane serves it (virtio 1.2 §5.1.6).

Frames cross as rows of a caller-owned uint8 array (one frame per row, the row length its
stride) with their lengths in a uint32 array: the same arrays a Numba kernel passes to the
core's fp_net_receive / fp_net_transmit through `handle`.
"""

from __future__ import annotations

import numpy as np

from fastpath._core import net as _net
from fastpath.devices.net.kernels import (
    HELD_COLUMNS,
    HELD_COUNT,
    HELD_DROPPED,
    HELD_FRAMES_AT,
    HELD_LENGTHS_AT,
    HELD_NEXT,
    HELD_ROWS,
    HELD_STRIDE,
    take_held,
)
from fastpath.errors import raise_for_code
from fastpath.vring import DeviceQueue


class NetQueue:
    """A receiveq or transmitq over a started device queue.

    `mergeable`: VIRTIO_NET_F_MRG_RXBUF was negotiated, so a frame may span receive buffers.
    `call_fd`: the driver's call eventfd (-1 for none). A burst pops at most `max_burst` chains.
    """

    def __init__(self, queue: DeviceQueue, *, mergeable: bool = False, call_fd: int = -1,
                 max_burst: int = 64):
        self.queue = queue
        self._core = _net.NetQueue(queue.handle, queue.packed, queue, mergeable=mergeable,
                                   call_fd=call_fd, max_chains=max_burst, queue_size=queue.size)

    @property
    def handle(self) -> int:
        """Address of the core state, for kernels calling the fp_net_* functions."""
        return self._core.handle

    @property
    def call_fd(self) -> int:
        """The call eventfd, or -1."""
        return self._core.call_fd

    @call_fd.setter
    def call_fd(self, fd: int) -> None:
        self._core.call_fd = fd

    def set_log(self, bitmap: int, size: int, used_gpa: int = 0, used_len: int = 0) -> None:
        """Log every guest page written, in the dirty bitmap at host address `bitmap` of
        `size` bytes (0 stops logging), and the pages of [used_gpa, + used_len) at every push.
        The caller keeps the bitmap mapped while it is set."""
        self._core.set_log(bitmap, size, used_gpa, used_len)

    @property
    def counters(self) -> dict[str, int]:
        """Frames and bytes moved, frames dropped, calls made, since the queue was made."""
        return self._core.counters

    def receive(self, frames: np.ndarray, lengths: np.ndarray) -> int:
        """Transmitq: copy up to len(lengths) frames the driver sent into the rows of `frames`;
        returns how many. Chains too short for a header or too long for a row are dropped."""
        n = self._core.receive(frames, lengths)
        if n < 0:
            raise_for_code(n)
        return n

    def transmit(self, frames: np.ndarray, lengths: np.ndarray, n: int) -> int:
        """Receiveq: copy the first n frames into the driver's buffers, in order; returns how
        many were taken (placed, or dropped because no buffer could hold them). Fewer than n
        means the driver has too few buffers posted for the rest."""
        taken = self._core.transmit(frames, lengths, n)
        if taken < 0:
            raise_for_code(taken)
        return taken


class HeldFrames:
    """Frames taken off a transmitq as it stopped being served (disabled, or stopped by
    GET_VRING_BASE) and kept, in order, for the next receive on its queue pair: what the driver
    made available while the ring was served reaches whoever serves the pair, even after the
    ring, or the whole connection, is gone.

    Rows of `frames` (lengths in `lengths`; both replaced when the store grows) hold frames of
    up to `frame_size` bytes. The store's `state` (HELD_* columns of `_net_kernels`, at
    `handle`) is what compiled code reads; `take` and the kernel `take_held` hand the frames
    out. Like the queues, it is touched only with the data plane's gate held.
    """

    def __init__(self, frame_size: int = 2048):
        self.frame_size = frame_size
        self.state = np.zeros(HELD_COLUMNS, dtype=np.uint64)
        self._use(np.zeros((0, frame_size), dtype=np.uint8), np.zeros(0, dtype=np.uint32))

    @property
    def handle(self) -> int:
        """Address of `state`, for compiled code."""
        return self.state.ctypes.data

    @property
    def pending(self) -> int:
        """Frames held and not yet given out."""
        return int(self.state[HELD_COUNT] - self.state[HELD_NEXT])

    @property
    def dropped(self) -> int:
        """Frames given up on because they were longer than the row they were to go into."""
        return int(self.state[HELD_DROPPED])

    def drain(self, queue: NetQueue) -> int:
        """Take every frame waiting in the transmitq `queue`, after those held already;
        returns how many. At most a ring's worth: all that the driver had made available
        when the drain began (it cannot make more available than the ring has entries)."""
        room = queue.queue.size
        self._make_room(room)
        start = count = int(self.state[HELD_COUNT])
        end = count + room
        while count < end:
            n = queue.receive(self.frames[count:end], self.lengths[count:end])
            if n == 0:
                break
            count += n
            self.state[HELD_COUNT] = count
        return count - start

    def take(self, frames: np.ndarray, lengths: np.ndarray) -> int:
        """Move up to len(lengths) held frames, oldest first, into the rows of `frames` and
        their lengths into `lengths`; returns how many."""
        if not self.pending:
            return 0
        return take_held(self.state, self.frames, self.lengths, frames, lengths, None,
                         len(lengths))

    def _make_room(self, room: int) -> None:
        count, first = int(self.state[HELD_COUNT]), int(self.state[HELD_NEXT])
        if self.frames.shape[0] - count >= room:
            return
        pending = count - first
        frames = np.zeros((pending + room, self.frame_size), dtype=np.uint8)
        lengths = np.zeros(pending + room, dtype=np.uint32)
        frames[:pending] = self.frames[first:count]
        lengths[:pending] = self.lengths[first:count]
        self._use(frames, lengths)
        self.state[HELD_NEXT], self.state[HELD_COUNT] = 0, pending

    def _use(self, frames: np.ndarray, lengths: np.ndarray) -> None:
        self.frames, self.lengths = frames, lengths
        self.state[HELD_FRAMES_AT] = frames.ctypes.data
        self.state[HELD_LENGTHS_AT] = lengths.ctypes.data
        self.state[HELD_ROWS], self.state[HELD_STRIDE] = frames.shape
