"""A connection's IOTLB under VIRTIO_F_ACCESS_PLATFORM: the IOVA translations the front-end
sends (VHOST_USER_IOTLB_MSG), as sorted intervals and as the region tables the compiled data
path searches, and the misses asked of the front-end that it has not answered yet.

QEMU docs/interop/vhost-user.rst, "IOMMU support"; hv.md §5.3 and §5.4.
"""

from __future__ import annotations

import bisect
import random
import time
from dataclasses import dataclass

import numpy as np

from fastpath._core import memory as _core_memory
from fastpath.errors import GuestMemoryError, RequestRefused
from fastpath.hv import REGION_DTYPE, GuestMemory
from fastpath.vhost_user._payloads import IotlbAccess, IotlbMessage

# The most entries a connection's IOTLB holds (DPDK's IOTLB_CACHE_SIZE): every lookup scans the
# region rows, and a front-end must not choose our memory use. Past it, an update evicts an
# entry at random, as DPDK does (vhost_user_iotlb_cache_random_evict); an evicted translation
# is asked for again when it is needed.
MAX_ENTRIES = 2048

# Misses are kept per page and access, so that the chains of one page ask once: QEMU answers
# with the whole IOMMU page (vhost_device_iotlb_miss), at least 4 KiB.
_MISS_PAGE_SHIFT = 12


class BadIotlbUpdate(RequestRefused):
    """An IOTLB update or invalidation that cannot be taken: an empty range, a range that wraps
    past 2**64, no permission, or a user address range outside the memory table."""


@dataclass(frozen=True)
class IotlbEntry:
    """[iova, iova + size) translates to the front-end's [user_addr, user_addr + size), mapped
    here at host_addr, for the accesses in `perm`."""

    iova: int
    size: int
    user_addr: int
    host_addr: int
    perm: IotlbAccess

    @property
    def end(self) -> int:
        """The first IOVA past the entry."""
        return self.iova + self.size


def _check_range(iova: int, size: int) -> None:
    if size == 0:
        raise BadIotlbUpdate(f"an empty IOTLB range at {iova:#x}")
    if iova + size > 1 << 64:
        raise BadIotlbUpdate(f"IOTLB range {iova:#x}+{size:#x} wraps past 2**64")


class Iotlb:
    """IOVA → front-end address translations of one connection, non-overlapping and sorted.

    `readable` and `writable` are the core's region tables (rows keyed by IOVA, see
    fp_access in fastpath/_core/chain.pxd) of the entries the device may read and write;
    queues look buffers up in them. Change the IOTLB only while those queues are quiesced:
    the core reads the tables without a lock.
    """

    def __init__(self) -> None:
        self.entries: list[IotlbEntry] = []
        self.readable = _core_memory.MemoryTable()
        self.writable = _core_memory.MemoryTable()
        # The region rows the core reads, readable and writable (REGION_DTYPE).
        self.tables = (np.zeros(0, dtype=REGION_DTYPE), np.zeros(0, dtype=REGION_DTYPE))
        # (IOVA page, access) → when the miss was sent.
        self._pending: dict[tuple[int, int], float] = {}

    def update(self, message: IotlbMessage, memory: GuestMemory | None) -> None:
        """Insert an UPDATE's translation; it replaces the entries it overlaps. Raises
        BadIotlbUpdate for one that cannot be taken."""
        _check_range(message.iova, message.size)
        if not message.perm:
            raise BadIotlbUpdate(f"an IOTLB update of {message.iova:#x} without access")
        if memory is None:
            raise BadIotlbUpdate("an IOTLB update before any memory table")
        try:
            host = memory.translate_user(message.user_addr, message.size)
        except GuestMemoryError as e:
            # QEMU docs/interop/vhost-user.rst: the range must lie inside the memory table.
            raise BadIotlbUpdate(f"IOTLB update of {message.iova:#x}: {e}") from None
        entry = IotlbEntry(message.iova, message.size, message.user_addr, host,
                           IotlbAccess(message.perm))
        self._remove(entry.iova, entry.size)
        if len(self.entries) >= MAX_ENTRIES:
            del self.entries[random.randrange(len(self.entries))]
        bisect.insort(self.entries, entry, key=lambda e: e.iova)
        self._pending = {(page, perm): t for (page, perm), t in self._pending.items()
                         if not (entry.iova >> _MISS_PAGE_SHIFT <= page
                                 <= (entry.end - 1) >> _MISS_PAGE_SHIFT
                                 and perm & entry.perm == perm)}
        self._refresh()

    def invalidate(self, iova: int, size: int) -> list[IotlbEntry]:
        """Remove every entry overlapping [iova, iova + size) (as DPDK's
        vhost_user_iotlb_cache_remove does); returns them."""
        _check_range(iova, size)
        removed = self._remove(iova, size)
        if removed:
            self._refresh()
        return removed

    def remap(self, memory: GuestMemory | None) -> None:
        """A new memory table: entries move to its mappings; those it no longer holds go."""
        kept = []
        for e in self.entries:
            try:
                host = memory.translate_user(e.user_addr, e.size) if memory else None
            except GuestMemoryError:
                host = None
            if host is not None:
                kept.append(IotlbEntry(e.iova, e.size, e.user_addr, host, e.perm))
        self.entries = kept
        self._refresh()

    def user_address(self, iova: int, length: int, perm: IotlbAccess) -> int | None:
        """The front-end address of [iova, iova + length) for `perm`, or None when entries
        with that access do not cover it contiguously (hv.md §5.4; unlike DPDK, adjacent
        entries extend the range only when their user addresses are contiguous too)."""
        i = bisect.bisect_right(self.entries, iova, key=lambda e: e.iova) - 1
        if i < 0 or not iova < self.entries[i].end:
            return None
        first = self.entries[i]
        at, end = iova, iova + length
        while True:
            e = self.entries[i]
            if e.perm & perm != perm or e.user_addr - first.user_addr != e.iova - first.iova:
                return None
            at = e.end
            i += 1
            if at >= end:
                return first.user_addr + (iova - first.iova)
            if i == len(self.entries) or self.entries[i].iova != at:
                return None

    def first_missing(self, iova: int, length: int, perm: IotlbAccess) -> int:
        """The first IOVA of [iova, iova + length) that no entry with `perm` covers, or the
        end of the range."""
        at, end = iova, iova + length
        for e in self.entries:
            if e.iova <= at < e.end and e.perm & perm == perm:
                at = e.end
            if at >= end:
                break
        return min(at, end)

    def ask(self, iova: int, perm: int, now: float | None = None) -> bool:
        """Whether a miss for (iova, perm) is to be sent now: not while one for its page is
        pending (hv.md §5.3, after DPDK's vhost_user_iotlb_pending_insert). Records it."""
        key = (iova >> _MISS_PAGE_SHIFT, perm)
        if key in self._pending:
            return False
        self._pending[key] = time.monotonic() if now is None else now
        return True

    def waited(self, iova: int, perm: int, now: float | None = None) -> float | None:
        """Seconds the miss for (iova, perm) has waited for an update, None if it is not
        pending (answered, or never asked)."""
        sent = self._pending.get((iova >> _MISS_PAGE_SHIFT, perm))
        if sent is None:
            return None
        return (time.monotonic() if now is None else now) - sent

    def forget_miss(self, iova: int, perm: int) -> None:
        """Stop waiting for (iova, perm): a later miss there is asked again."""
        self._pending.pop((iova >> _MISS_PAGE_SHIFT, perm), None)

    @property
    def pending(self) -> int:
        """How many misses wait for an update."""
        return len(self._pending)

    def _remove(self, iova: int, size: int) -> list[IotlbEntry]:
        end = iova + size
        removed = [e for e in self.entries if e.iova < end and iova < e.end]
        if removed:
            self.entries = [e for e in self.entries if not (e.iova < end and iova < e.end)]
        return removed

    def _refresh(self) -> None:
        readable = _region_rows(e for e in self.entries if e.perm & IotlbAccess.READ)
        writable = _region_rows(e for e in self.entries if e.perm & IotlbAccess.WRITE)
        # The core reads these very arrays; the previous pair stays alive with it until the
        # next update (MemoryTable.update keeps one).
        self.tables = (readable, writable)
        self.readable.update(readable)
        self.writable.update(writable)


def _region_rows(entries) -> np.ndarray:
    # One row per run of entries adjacent both in IOVA and in host address, so that a buffer
    # across such entries is one segment, as it would be without an IOMMU.
    rows: list[list[int]] = []
    for e in entries:
        last = rows[-1] if rows else None
        if last and last[0] + last[1] == e.iova and last[3] + last[1] == e.host_addr:
            last[1] += e.size
        else:
            rows.append([e.iova, e.size, e.user_addr, e.host_addr])
    table = np.zeros(len(rows), dtype=REGION_DTYPE)
    for row, (iova, size, user_addr, host_addr) in zip(table, rows, strict=True):
        row["guest_phys_addr"], row["size"], row["user_addr"], row["host_addr"] = (
            iova, size, user_addr, host_addr)
    table.flags.writeable = False
    return table
