"""The inflight area of one connection (INFLIGHT_SHMFD: GET_INFLIGHT_FD, SET_INFLIGHT_FD).

QEMU docs/interop/vhost-user.rst, "Inflight I/O tracking": the back-end allocates the area when
the front-end asks for one (GET_INFLIGHT_FD), the front-end keeps it, and hands it back to the
back-end that follows a crash or restart (SET_INFLIGHT_FD). It is `num_queues` queue regions
of `queue_size` entries each, back to back, as fastpath.vring lays one out; the engine only
maps it and hands each ring its region when the ring starts. Every size, offset and count the
front-end gives is checked against the device and the fd before anything is mapped.
"""

from __future__ import annotations

import os

from fastpath.errors import GuestMemoryError, RequestRefused
from fastpath.hv import PAGE_SIZE, GuestMemory, SharedRegion
from fastpath.vhost_user._payloads import Inflight
from fastpath.vring import InflightRegion, inflight_region_size


class BadInflightArea(RequestRefused):
    """An inflight description the back-end cannot take: no queues or more than the device
    has, queues larger than it serves, or an area that is not in the fd, is smaller than its
    queues need, or larger than any ring could use. A front-end that goes on believing the
    area is in use would lose requests after a crash: the connection closes unless the refusal
    was acknowledged."""

    closes_unless_acked = True


def _check_queues(description: Inflight, max_queues: int, max_queue_size: int) -> None:
    if not 1 <= description.num_queues <= max_queues:
        raise BadInflightArea(f"an inflight area for {description.num_queues} queues; the "
                              f"device has {max_queues}")
    if not 1 <= description.queue_size <= max_queue_size:
        raise BadInflightArea(f"an inflight area for queues of {description.queue_size}; the "
                              f"device serves 1 to {max_queue_size}")


class InflightArea:
    """One connection's inflight area, mapped here: `description` is what the front-end was
    told or told us (its mmap_offset as given), `memory` the mapping, at offset 0."""

    def __init__(self, memory: GuestMemory, description: Inflight):
        self.memory = memory
        self.description = description

    @classmethod
    def allocate(cls, description: Inflight, packed: bool, *, max_queues: int,
                 max_queue_size: int) -> InflightArea:
        """A new, zeroed area for GET_INFLIGHT_FD's `num_queues` and `queue_size`, laid out for
        the ring type negotiated (QEMU sets its features first). Zero is version 0: each ring
        initialises its region when it starts, from where it stands."""
        _check_queues(description, max_queues, max_queue_size)
        size = description.num_queues * inflight_region_size(description.queue_size, packed)
        # A sealed memfd, which the front-end cannot shrink under the rings.
        memory = GuestMemory([(0, -(-size // PAGE_SIZE) * PAGE_SIZE)], name="fastpath-inflight")
        return cls(memory, Inflight(size, 0, description.num_queues, description.queue_size))

    @classmethod
    def from_fd(cls, fds: list[int], description: Inflight, *, max_queues: int,
                max_queue_size: int) -> InflightArea:
        """The area SET_INFLIGHT_FD hands over in the last of `fds`, checked and mapped. The fd
        stays in `fds` (the caller's to close) until it is mapped; then it is taken out, and
        the area owns it (from_shared closes it at once if it cannot be mapped)."""
        _check_queues(description, max_queues, max_queue_size)
        size, offset = description.mmap_size, description.mmap_offset
        need = description.num_queues * inflight_region_size(description.queue_size, False)
        most = description.num_queues * inflight_region_size(description.queue_size, True)
        if not need <= size <= most:
            raise BadInflightArea(f"an inflight area of {size} bytes for {description.num_queues}"
                                  f" queues of {description.queue_size}: {need} to {most} bytes")
        end = os.fstat(fds[-1]).st_size
        if offset + size > end:
            raise BadInflightArea(f"the inflight area ends at {offset + size:#x}, past the end "
                                  f"of its fd at {end:#x}")
        try:
            memory = GuestMemory.from_shared([SharedRegion(fds.pop(), 0, size, 0, offset)],
                                             owns_fds=True)
        except GuestMemoryError as e:
            raise BadInflightArea(f"the inflight area cannot be mapped: {e}") from None
        return cls(memory, description)

    @property
    def fd(self) -> int:
        """The fd the area is mapped from (the area's to close)."""
        return self.memory.regions[0].fd

    @property
    def faulted(self) -> bool:
        """Whether the front-end cut the area's file short and an access faulted."""
        return self.memory.faulted

    def region(self, index: int, packed: bool) -> InflightRegion | None:
        """Vring `index`'s region, laid out for the ring type; None for a vring past the
        area's queues. Raises BadInflightArea if the area is too small for that layout (the
        ring type changed since it was handed over)."""
        if index >= self.description.num_queues:
            return None
        stride = inflight_region_size(self.description.queue_size, packed)
        if (index + 1) * stride > self.description.mmap_size:
            raise BadInflightArea(f"the inflight area holds no {'packed' if packed else 'split'}"
                                  f" region for vring {index}")
        buffer = self.memory.view(index * stride, stride)
        return InflightRegion(buffer, self.description.queue_size, packed)

    def close(self) -> None:
        """Close the fd; rings that still record in the area keep its mapping."""
        self.memory.close()
