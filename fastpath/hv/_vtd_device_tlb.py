"""A device's translation cache under ATS (hv.md §3.7): filled by translation requests to the
remapping unit, emptied by the device-TLB invalidation descriptors that reach it."""

from __future__ import annotations

from typing import TYPE_CHECKING

from fastpath.hv._vtd_walk import DmaTranslation

if TYPE_CHECKING:
    from fastpath.hv._vtd_unit import RemappingUnit


class DeviceTlb:
    """The ATS cache of the device at `source_id`, attached to `unit` (whose device-TLB
    invalidations it then receives).

    `translate()` answers from the cache or sends a translation request; an entry covers the
    whole page the IOMMU returned, with the permissions it granted. The model device caches
    what it asked for: a write request caches a translation good for writes.
    """

    def __init__(self, unit: RemappingUnit, source_id: int):
        self.unit = unit
        self.source_id = source_id
        self.entries: dict[int, DmaTranslation] = {}   # by page base
        self.hits = 0
        self.misses = 0
        unit.device_tlbs[source_id] = self

    def __len__(self) -> int:
        return len(self.entries)

    def _find(self, iova: int) -> DmaTranslation | None:
        for size in (1 << 12, 1 << 21, 1 << 30):
            entry = self.entries.get(iova - iova % size)
            if entry is not None and entry.page_size == size:
                return entry
        return None

    def translate(self, iova: int, access: str) -> int:
        """The HPA for a DMA to iova: from the cache when it holds a translation allowing
        `access`, else from a translation request (which may raise DmaFault)."""
        entry = self._find(iova)
        if entry is not None and access in entry.permissions:
            self.hits += 1
            return entry.hpa + iova % entry.page_size
        self.misses += 1
        result = self.unit.translation_request(self.source_id, iova, access)
        base = iova - iova % result.page_size
        self.entries[base] = result._replace(hpa=result.hpa - iova % result.page_size)
        return result.hpa

    def invalidate(self, address: int, size: int) -> int:
        """Drop every cached page overlapping [address, address + size); returns how many."""
        stale = [base for base, entry in self.entries.items()
                 if base < address + size and address < base + entry.page_size]
        for base in stale:
            del self.entries[base]
        return len(stale)
