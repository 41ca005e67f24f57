"""One virtqueue of a virtio-net device as the data plane serves it (virtio 1.2 §5.1.6).

Frames cross as rows of a caller-owned uint8 array (one frame per row, the row length its
stride) with their lengths in a uint32 array: the same arrays a Numba kernel passes to the
core's fp_net_receive / fp_net_transmit through `handle`.
"""

from __future__ import annotations

import numpy as np

from fastpath._core import net as _net
from fastpath.vring import DeviceQueue
from fastpath.vring._queue import raise_queue_error

NET_HDR_SIZE = _net.HDR_SIZE
"""Bytes of the virtio-net header before every frame (VERSION_1)."""


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
            raise_queue_error(n)
        return n

    def transmit(self, frames: np.ndarray, lengths: np.ndarray, n: int) -> int:
        """Receiveq: copy the first n frames into the driver's buffers, in order; returns how
        many were taken (placed, or dropped because no buffer could hold them). Fewer than n
        means the driver has too few buffers posted for the rest."""
        taken = self._core.transmit(frames, lengths, n)
        if taken < 0:
            raise_queue_error(taken)
        return taken
