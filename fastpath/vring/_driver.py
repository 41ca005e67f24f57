"""Driver side of split and packed virtqueues: add buffers, decide on kicks, collect used ones."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from fastpath._core import packed as _packed
from fastpath._core import split as _split
from fastpath.errors import RingFull
from fastpath.hv import GuestMemory
from fastpath.vring._layout import (
    RingAddresses,
    packed_area_sizes,
    split_area_sizes,
)
from fastpath.vring._queue import RingArea, named_errors, options
from fastpath.vring._records import (
    DRIVER_CHAIN_DTYPE,
    SEG_WRITE,
    SEGMENT_DTYPE,
    USED_ELEM_DTYPE,
    as_bytes,
)


class DriverQueue:
    """Common face of SplitDriverQueue and PackedDriverQueue.

    Creating one clears the ring areas in guest memory: the driver owns them (§3.1.1).
    """

    packed = False
    _core_class = None
    _area_sizes = None

    def __init__(self, memory: GuestMemory, size: int, addresses: RingAddresses, *,
                 event_idx: bool = False, indirect: bool = False):
        self._area = RingArea(memory, size, addresses, packed=self.packed)
        for gpa, nbytes in zip(
            (addresses.desc, addresses.driver, addresses.device), self._area_sizes(size),
            strict=True,
        ):
            memory.view(gpa, nbytes)[:] = 0
        self._core = self._core_class(memory.core, size, *self._area.host,
                                      options(event_idx, indirect), self._area)
        self.size = size
        self.addresses = addresses
        self.indirect = indirect
        self._one_chain = np.zeros(1, dtype=DRIVER_CHAIN_DTYPE)
        self._used = np.zeros(256, dtype=USED_ELEM_DTYPE)

    def add(self, readable: Iterable[tuple[int, int]] = (),
            writable: Iterable[tuple[int, int]] = (), *, indirect_table: int = 0) -> int:
        """Offer one buffer: (guest address, length) pieces, readable first; returns its id.

        With indirect_table (a guest address with room for 16 bytes per piece) the pieces go
        into an indirect table and the buffer takes one ring slot. Raises RingFull.
        """
        pieces = [(a, n, 0, 0) for a, n in readable] + [
            (a, n, SEG_WRITE, 0) for a, n in writable
        ]
        if not pieces:
            raise ValueError("a buffer needs at least one piece")
        if indirect_table:
            if not self.indirect:
                raise ValueError("indirect tables need VIRTIO_F_INDIRECT_DESC (indirect=True)")
            self._area.memory.translate(indirect_table, 16 * len(pieces))
        segs = np.array(pieces, dtype=SEGMENT_DTYPE)
        self._one_chain[0] = (indirect_table, 0, len(pieces), 0)
        if self._core.add_burst(as_bytes(self._one_chain), 1, as_bytes(segs)) != 1:
            raise RingFull(f"no room for a {len(pieces)}-piece buffer ({self.num_free} free)")
        return int(self._one_chain["id"][0])

    def add_burst(self, chains: np.ndarray, n: int, segments: np.ndarray) -> int:
        """Offer chains[:n] (DRIVER_CHAIN_DTYPE) over segments; sets their ids, returns count."""
        return self._core.add_burst(as_bytes(chains), n, as_bytes(segments))

    def should_kick(self) -> bool:
        """Whether the device wants a kick for what was added since the last call."""
        return self._core.should_kick()

    def collect(self, max_n: int = 256) -> list[tuple[int, int]]:
        """Used buffers as (id, bytes written), oldest first."""
        if len(self._used) < max_n:
            self._used = np.zeros(max_n, dtype=USED_ELEM_DTYPE)
        n = self._core.collect_burst(as_bytes(self._used[:max_n]))
        return [(int(i), int(n_)) for i, n_ in self._used[:n]]

    def collect_burst(self, out: np.ndarray) -> int:
        """Fill out (USED_ELEM_DTYPE) with used buffers; returns how many."""
        return self._core.collect_burst(as_bytes(out))

    def enable_calls(self) -> int:
        """Ask the device for used-buffer notifications; returns non-zero if some are waiting.

        Non-zero means buffers were used before the device could see the request: collect
        again before sleeping on the call eventfd.
        """
        return self._core.set_calls(True)

    def disable_calls(self) -> None:
        """Tell the device not to notify (this side is polling)."""
        self._core.set_calls(False)

    @property
    def num_free(self) -> int:
        """Descriptors (split) or ring slots (packed) free for new buffers."""
        return self._core.num_free

    @property
    def errors(self) -> dict[str, int]:
        """Counts of every error seen (UnknownUsedId from a confused device), by name."""
        return named_errors(self._core.errors())

    @property
    def handle(self) -> int:
        """Address of the core state, for compiled kernels calling the fp_* functions."""
        return self._core.handle


class SplitDriverQueue(DriverQueue):
    """Driver side of a split virtqueue (virtio 1.2 §2.7)."""

    _core_class = _split.SplitDriver
    _area_sizes = staticmethod(split_area_sizes)

    @property
    def avail_idx(self) -> int:
        """The avail index published so far."""
        return self._core.avail_idx


class PackedDriverQueue(DriverQueue):
    """Driver side of a packed virtqueue (virtio 1.2 §2.8)."""

    packed = True
    _core_class = _packed.PackedDriver
    _area_sizes = staticmethod(packed_area_sizes)

    @property
    def avail_state(self) -> tuple[int, int]:
        """(next slot to fill, avail wrap counter)."""
        return self._core.avail_state
