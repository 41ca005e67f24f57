"""A remapping unit's context cache and IOTLB, and their invalidations (hv.md §3.6).

The core looks them up and fills them (fastpath/_core/vtd.pxd, fp_vtd_caches); the
invalidations drop entries here, over the same arrays, with the granularities both the
register-based and the queued interfaces name.
"""

from __future__ import annotations

import numpy as np

from fastpath._core import vtd as _core

# The core's fp_iotlb_entry and fp_context_cache_entry, field for field.
IOTLB_ENTRY_DTYPE = np.dtype([
    ("page", "<u8"),
    ("out_page", "<u8"),
    ("sid", "<u2"),
    ("did", "<u2"),
    ("valid", "u1"),
    ("level", "u1"),
    ("perms", "u1"),
    ("pad", "u1"),
])
CONTEXT_CACHE_ENTRY_DTYPE = np.dtype([
    ("lo", "<u8"),
    ("hi", "<u8"),
    ("sid", "<u2"),
    ("did", "<u2"),
    ("valid", "u1"),
    ("pad", "u1", 3),
])
assert IOTLB_ENTRY_DTYPE.itemsize == _core.IOTLB_ENTRY_SIZE
assert CONTEXT_CACHE_ENTRY_DTYPE.itemsize == _core.CONTEXT_CACHE_ENTRY_SIZE

# hv.md §3.6: a device-selective invalidation's function mask FM leaves out SID bits 2:0 of
# the function number: 0 none, 1 bit 2, 2 bits 2:1, 3 bits 2:0.
FUNCTION_MASKS = {0: 0xFFFF, 1: 0xFFFB, 2: 0xFFF9, 3: 0xFFF8}


class VtdCaches:
    """A direct-mapped context cache (by source-id) and IOTLB (4 KiB pages by source-id and
    IOVA, tagged with the domain ID), each a power-of-two number of entries.

    The walk (fastpath.hv.vtd.translate with `caches=`, or a RemappingUnit) consults and fills
    them in the core and counts hits and misses; the `invalidate_*` methods drop what the
    invalidation commands and descriptors drop and return how many entries went.
    """

    def __init__(self, iotlb_entries: int = 1024, context_entries: int = 256):
        for n in (iotlb_entries, context_entries):
            if n < 1 or n & (n - 1):
                raise ValueError("caches have power-of-two numbers of entries")
        self.iotlb = np.zeros(iotlb_entries, dtype=IOTLB_ENTRY_DTYPE)
        self.contexts = np.zeros(context_entries, dtype=CONTEXT_CACHE_ENTRY_DTYPE)
        self.iotlb_raw = self.iotlb.view(np.uint8)  # the same bytes, as the core takes them
        self.context_raw = self.contexts.view(np.uint8)
        self.counters = np.zeros(len(_core.VTD_STATS), dtype=np.uint64)

    def _counter(self, name: str) -> int:
        return int(self.counters[_core.VTD_STATS.index(name)])

    @property
    def iotlb_hits(self) -> int:
        """Translations answered from the IOTLB."""
        return self._counter("iotlb_hits")

    @property
    def iotlb_misses(self) -> int:
        """IOTLB lookups that walked."""
        return self._counter("iotlb_misses")

    @property
    def context_hits(self) -> int:
        """Walks that took their context entry from the context cache."""
        return self._counter("context_hits")

    @property
    def context_misses(self) -> int:
        """Walks that read the root and context tables."""
        return self._counter("context_misses")

    def reset_counters(self) -> None:
        """Zero the hit and miss counters."""
        self.counters[:] = 0

    @property
    def iotlb_size(self) -> int:
        """Valid IOTLB entries."""
        return int(np.count_nonzero(self.iotlb["valid"]))

    @property
    def context_size(self) -> int:
        """Valid context-cache entries."""
        return int(np.count_nonzero(self.contexts["valid"]))

    # --- context cache (CCMD.CIRG, context-cache descriptor G) ---

    def invalidate_contexts(self) -> int:
        """Global context-cache invalidation."""
        return _drop(self.contexts, self.contexts["valid"] != 0)

    def invalidate_contexts_of_domain(self, did: int) -> int:
        """Domain-selective: every cached context entry of domain `did` (hv.md §8 item 12)."""
        c = self.contexts
        return _drop(c, (c["valid"] != 0) & (c["did"] == did))

    def invalidate_context_of_device(self, sid: int, function_mask: int = 0) -> int:
        """Device-selective: the entries of `sid`, with SID bits left out under the function
        mask FM (0..3)."""
        mask = FUNCTION_MASKS[function_mask]
        c = self.contexts
        return _drop(c, (c["valid"] != 0) & (c["sid"] & mask == sid & mask))

    # --- IOTLB (IOTLB_REG.IIRG, IOTLB descriptor G) ---

    def invalidate_iotlb(self) -> int:
        """Global IOTLB invalidation."""
        return _drop(self.iotlb, self.iotlb["valid"] != 0)

    def invalidate_iotlb_of_domain(self, did: int) -> int:
        """Domain-selective: every translation of domain `did`."""
        t = self.iotlb
        return _drop(t, (t["valid"] != 0) & (t["did"] == did))

    def invalidate_iotlb_pages(self, did: int, address: int, address_mask: int) -> int:
        """Page-selective: domain `did`'s translations of the 2^AM pages at `address`, and any
        from a large page that covers them (QEMU's vtd_hash_remove_by_page, hv.md §3.6)."""
        t = self.iotlb
        # Compare at the coarser of the range's and the entry's own page size.
        shift = np.maximum(np.uint64(address_mask),
                           9 * (t["level"].astype(np.uint64).clip(1) - np.uint64(1)))
        same = (t["page"] >> shift) == (np.uint64(address >> 12) >> shift)
        return _drop(t, (t["valid"] != 0) & (t["did"] == did) & same)


def _drop(table: np.ndarray, mask: np.ndarray) -> int:
    table["valid"][mask] = 0
    return int(np.count_nonzero(mask))
