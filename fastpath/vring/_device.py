"""Device side of split and packed virtqueues: pop available chains, push them back used, and
(for vhost-user back-ends that must survive a restart) record what is in flight."""

from __future__ import annotations

import numpy as np

from fastpath._core import chain as _chain
from fastpath._core import packed as _packed
from fastpath._core import split as _split
from fastpath.errors import error_for_code, raise_for_code
from fastpath.hv import GuestMemory
from fastpath.vring._inflight import (
    InflightRegion,
    recover_packed,
    recover_split,
    start_packed,
    start_split,
)
from fastpath.vring._layout import PACKED_DESC_DTYPE, RingAddresses
from fastpath.vring._queue import RingArea, named_errors, options
from fastpath.vring._records import CHAIN_DTYPE, SEGMENT_DTYPE, as_bytes

# The most pieces a chain may have and still be served whatever burst it lands in; QEMU
# serves at most 1024 (VIRTQUEUE_MAX_SIZE).
MAX_CHAIN_SEGMENTS = 1024


class Burst:
    """Caller-owned arrays that a pop fills and a push reads back.

    `chains[:count]` are the popped buffers (CHAIN_DTYPE); their pieces are in `segments`
    (SEGMENT_DTYPE, host addresses). A chain whose `error` is non-zero failed validation: it has
    no segments and is pushed back with nothing written. Treat the arrays as read-only but for
    `chains["written"]`: the core trusts what it wrote there.
    """

    def __init__(self, max_chains: int = 32, max_segments: int | None = None):
        if max_chains < 1:
            raise ValueError("a burst holds at least one chain")
        self.chains = np.zeros(max_chains, dtype=CHAIN_DTYPE)
        self.segments = np.zeros(max_segments or 4 * max_chains, dtype=SEGMENT_DTYPE)
        self.count = 0
        # The regions mapped when the burst was popped: its host addresses stay valid.
        self.keepalive: tuple = ()
        self._chain_bytes = as_bytes(self.chains)
        self._segment_bytes = as_bytes(self.segments)

    def __len__(self) -> int:
        return self.count

    def _check(self, i: int) -> None:
        # Records past `count` are left from an earlier pop; their host addresses may point
        # into a region that has been unmapped since.
        if not 0 <= i < self.count:
            raise IndexError(f"chain {i} is not among the {self.count} of the last pop")

    def error(self, i: int) -> type[Exception] | None:
        """The exception class for chain i's validation failure, or None."""
        self._check(i)
        code = int(self.chains["error"][i])
        return error_for_code(code) if code else None

    def readable(self, i: int, limit: int = 1 << 24) -> bytes:
        """A copy of chain i's device-readable bytes, at most `limit` of them.

        The guest chooses the length (up to 4 GiB); the limit keeps it from choosing our
        memory use.
        """
        self._check(i)
        out = np.empty(min(int(self.chains["readable_len"][i]), limit), dtype=np.uint8)
        n = _chain.chain_gather(self._chain_bytes, i, self._segment_bytes, out)
        return out[:n].tobytes()

    def write(self, i: int, data: bytes) -> int:
        """Copy data into chain i's device-writable segments; records and returns the count."""
        self._check(i)
        src = np.frombuffer(data, dtype=np.uint8)
        n = _chain.chain_scatter(self._chain_bytes, i, self._segment_bytes, src)
        self.chains["written"][i] = n
        return n


class DeviceQueue:
    """Common face of SplitDeviceQueue and PackedDeviceQueue.

    Inflight tracking (vhost-user's INFLIGHT_SHMFD, for devices that complete out of order):
    `track_inflight(region)` makes the queue record every chain it pops, and every chain it
    pushes back, in a region the front-end keeps across back-end restarts. A queue started over
    a region that already holds a ring's state goes on from it: the chains that were in flight
    (popped, never used where the driver could see it) come back first from `pop` and from the
    kernels' `pop_burst`, oldest first, before anything new; `resubmit_pending` and
    `resubmit_ids()` say which are still to come. The device executes them again as if new:
    nothing of them reached the driver. A device that lets a queue go with chains in flight
    must not complete those into the ring afterwards: the next queue over the same region
    returns them again. `inflight` is the region recorded in, None until there is one.
    """

    packed = False

    def __init__(self, core, area: RingArea, size: int):
        self._core = core
        self._area = area
        self.size = size
        self.inflight: InflightRegion | None = None
        self._resubmit_ids = np.zeros(0, dtype=np.uint16)

    def track_inflight(self, region: InflightRegion) -> int:
        """Record pops and pushes in `region` from now on; returns how many chains were in
        flight before (popped first from now on).

        A region nobody has initialised is initialised for the ring as it stands. One that
        holds a ring's state is recovered as the spec says, and the ring goes on from it: a
        split ring from its used ring's idx, with the chains in flight counted as taken; a
        packed ring from the positions the region records, whatever the front-end gave
        (QEMU cannot restore a packed ring's position after a back-end crash). Raises
        BadInflightRegion for a region the ring cannot start from.
        """
        region.check(self.size)
        if region.packed != self.packed:
            raise ValueError("a region laid out for the other ring type")
        return self._track(region)

    def _track(self, region: InflightRegion) -> int:
        raise NotImplementedError

    @property
    def resubmit_pending(self) -> int:
        """Chains in flight before the restart that pops have not returned yet."""
        return self._core.resubmit_pending

    def resubmit_ids(self) -> list[int]:
        """The ids (split: heads; packed: buffer ids) of the chains in flight before the
        restart that pops have not returned yet, in the order they were first popped."""
        pending = self.resubmit_pending
        return [int(i) for i in self._resubmit_ids[len(self._resubmit_ids) - pending:]]

    def new_burst(self, max_chains: int = 32) -> Burst:
        """A Burst with room for `max_chains` chains of up to MAX_CHAIN_SEGMENTS pieces.

        A longer chain (possible only through a large indirect table) fails TooManySegments.
        """
        return Burst(max_chains, 4 * max_chains + max(self.size, MAX_CHAIN_SEGMENTS))

    def pop(self, burst: Burst) -> int:
        """Fill burst with up to len(burst.chains) available chains; returns how many.

        Chains still in the burst from an earlier pop are overwritten: push them first.
        Raises AvailIndexJump (split) or ChainLoop (packed, a chain with no end) when the ring
        cannot be parsed any further, then QueueBroken until the queue is reset.
        """
        burst.keepalive = self._area.memory.mappings
        n = self._core.pop_burst(burst._chain_bytes, burst._segment_bytes)
        if n < 0:
            burst.count = 0
            raise_for_code(n)
        burst.count = n
        return n

    def push(self, burst: Burst, order: np.ndarray | None = None) -> int:
        """Return burst's chains as used, in pop order or in the order of the indices given."""
        if order is None:
            return self._core.push_burst(burst._chain_bytes, burst.count)
        return self.push_chains(burst.chains[np.asarray(order, dtype=np.intp)])

    def push_chains(self, chains: np.ndarray) -> int:
        """Return the given CHAIN_DTYPE records as used; returns how many were accepted."""
        chains = np.ascontiguousarray(chains, dtype=CHAIN_DTYPE)
        return self._core.push_burst(as_bytes(chains), len(chains))

    def reset(self) -> None:
        """Forget all progress, errors and a broken state: the device was reset (§2.1). An
        inflight region starts afresh too: what was in flight is the driver's to recover."""
        self._core.reset()
        if self.inflight is not None:
            self.inflight.header["version"] = 0
            self._track(self.inflight)

    def should_notify(self) -> bool:
        """Whether the driver wants a used-buffer notification for what was pushed since."""
        return self._core.should_notify()

    def enable_kicks(self) -> int:
        """Ask the driver to kick again; returns the chains (split) or 1/0 (packed) pending.

        Non-zero means chains arrived before the driver could see the request and no kick will
        come for them, or a restart left chains in flight to pop again: pop again before
        sleeping on the kick eventfd.
        """
        return self._core.set_kicks(True)

    def disable_kicks(self) -> None:
        """Tell the driver not to kick (a poll loop is watching)."""
        self._core.set_kicks(False)

    @property
    def errors(self) -> dict[str, int]:
        """Counts of every error seen, by exception name."""
        return named_errors(self._core.errors())

    @property
    def broken(self) -> bool:
        """Whether the queue stopped after an unrecoverable ring error (reset() restarts it)."""
        return self._core.broken

    @property
    def popped(self) -> int:
        """Chains popped since creation or reset, failed ones included."""
        return self._core.popped

    @property
    def pushed(self) -> int:
        """Chains pushed back as used since creation or reset."""
        return self._core.pushed

    def use_iotlb(self, readable, writable, miss_fd: int = -1) -> None:
        """Look buffers up by IOVA from now on (VIRTIO_F_ACCESS_PLATFORM), in the core region
        tables of an IOTLB's readable and writable entries (`fastpath.vhost_user`'s IOTLB
        keeps them). A chain with an address not in the table for its access stops the pop
        before it and stays in the ring; `take_miss()` says which, and a new miss signals
        the eventfd `miss_fd` (-1: none), so that whoever sends misses need not poll."""
        self._core.use_iotlb(readable, writable, miss_fd)

    def take_miss(self) -> tuple[int, int] | None:
        """(iova, access: 1 read, 2 write) of the translation a pop last stopped for, once;
        None while none is missing."""
        return self._core.take_miss()

    @property
    def handle(self) -> int:
        """Address of the core state, for compiled kernels calling the fp_* functions."""
        return self._core.handle


class SplitDeviceQueue(DeviceQueue):
    """Device side of a split virtqueue (virtio 1.2 §2.7) at guest-physical `addresses`."""

    def __init__(self, memory: GuestMemory, size: int, addresses: RingAddresses, *,
                 event_idx: bool = False, indirect: bool = False):
        area = RingArea(memory, size, addresses, packed=False)
        core = _split.SplitDevice(memory.core, size, *area.host, options(event_idx, indirect),
                                  area)
        super().__init__(core, area, size)
        # §2.7.8: the used ring's idx, the ring's own record of how far the device got.
        self._ring_used_idx = memory.view(addresses.device + 2, 2).view("<u2")

    def _track(self, region: InflightRegion) -> int:
        used_idx = int(self._ring_used_idx[0])
        if region.holds_state:
            record = recover_split(region, self.size, used_idx)
            # Every avail entry before the next one to pop was used or is in flight.
            self.used_idx = used_idx
            self.last_avail_idx = used_idx + len(record.resubmit)
        else:
            record = start_split(region, used_idx)
        self._core.track_inflight(region.address, region.desc_num, record.counter,
                                  record.last_batch_head, record.resubmit, region)
        self.inflight = region
        self._resubmit_ids = record.resubmit
        return len(record.resubmit)

    @property
    def last_avail_idx(self) -> int:
        """The next avail ring index to pop (what vhost-user's VRING_BASE carries)."""
        return self._core.last_avail_idx

    @last_avail_idx.setter
    def last_avail_idx(self, value: int) -> None:
        self._core.last_avail_idx = value

    @property
    def used_idx(self) -> int:
        """The next used ring index to write (the driver's view once pushed)."""
        return self._core.used_idx

    @used_idx.setter
    def used_idx(self, value: int) -> None:
        self._core.used_idx = value


class PackedDeviceQueue(DeviceQueue):
    """Device side of a packed virtqueue (virtio 1.2 §2.8) at guest-physical `addresses`."""

    packed = True

    def __init__(self, memory: GuestMemory, size: int, addresses: RingAddresses, *,
                 event_idx: bool = False, indirect: bool = False):
        area = RingArea(memory, size, addresses, packed=True)
        core = _packed.PackedDevice(memory.core, size, *area.host, options(event_idx, indirect),
                                    area)
        super().__init__(core, area, size)
        self._ring_desc = memory.view(addresses.desc, 16 * size).view(PACKED_DESC_DTYPE)

    def _track(self, region: InflightRegion) -> int:
        if region.holds_state:
            record = recover_packed(region, self.size,
                                    lambda slot: int(self._ring_desc["flags"][slot]))
            self.used_state = record.used
            self.avail_state = record.avail
        else:
            record = start_packed(region, self.used_state)
        self._core.track_inflight(region.address, region.desc_num, record.counter,
                                  record.free_head, record.free_count, record.next,
                                  record.last, record.num, record.saved.view(np.uint8),
                                  record.resubmit, region)
        self.inflight = region
        self._resubmit_ids = record.saved["id"][record.last[record.resubmit]]
        return len(record.resubmit)

    @property
    def inflight_untracked(self) -> int:
        """Chains popped that the region had no free entries left for (only a driver making
        more slots available than the ring has gets there): a restart would not return them."""
        return self._core.inflight_untracked

    @property
    def avail_state(self) -> tuple[int, int]:
        """(next descriptor slot to pop, avail wrap counter)."""
        return self._core.avail_state

    @avail_state.setter
    def avail_state(self, value: tuple[int, int]) -> None:
        self._core.avail_state = value

    @property
    def used_state(self) -> tuple[int, int]:
        """(next slot for a used descriptor, used wrap counter)."""
        return self._core.used_state

    @used_state.setter
    def used_state(self, value: tuple[int, int]) -> None:
        self._core.used_state = value
