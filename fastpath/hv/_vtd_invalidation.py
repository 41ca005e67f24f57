"""What a remapping unit tells its invalidation listeners: each context-cache, IOTLB and
device-TLB invalidation as it is carried out, register-based or queued (hv.md §3.6, §3.7).

A listener is whatever keeps copies of the unit's translations outside it, as QEMU's vIOMMU
notifiers do for vhost (hv.md §5.5): the unit calls it in the middle of the invalidation, after
its own caches dropped the entries and before the next descriptor runs, so that a wait
descriptor queued behind the invalidation completes (status write, completion event) only
once every listener has returned.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

from fastpath.hv._vtd_caches import FUNCTION_MASKS
from fastpath.hv._vtd_queue import DescriptorType, Granularity


class Invalidation(NamedTuple):
    """One invalidation the unit carried out.

    `cache` names the cache by the descriptor type that invalidates it (CONTEXT_CACHE, IOTLB,
    DEVICE_TLB), however the invalidation came. `granularity`: GLOBAL, DOMAIN or
    DEVICE_OR_PAGE (a device-TLB invalidation is always one device's range). `domain_id` for
    domain- and page-selective ones; `source_id` (and for the context cache `function_mask`)
    for device-selective and device-TLB ones; `address` and `size` the IOVA range of a
    page-selective IOTLB invalidation (2^AM pages) or a device-TLB one (the ATS size
    encoding), size 0 for the rest, which cover every address.
    """

    cache: DescriptorType
    granularity: Granularity
    domain_id: int = 0
    source_id: int = 0
    function_mask: int = 0
    address: int = 0
    size: int = 0

    def affects(self, source_id: int, domain_id: int) -> bool:
        """Whether it reaches translations of the device at `source_id`, in domain
        `domain_id` (whatever their addresses: see `overlaps`)."""
        if self.cache == DescriptorType.DEVICE_TLB:
            return source_id == self.source_id
        if self.granularity == Granularity.GLOBAL:
            return True
        if self.cache == DescriptorType.CONTEXT_CACHE and (
                self.granularity == Granularity.DEVICE_OR_PAGE):
            mask = FUNCTION_MASKS[self.function_mask]
            return source_id & mask == self.source_id & mask
        return domain_id == self.domain_id

    def overlaps(self, iova: int, size: int) -> bool:
        """Whether [iova, iova + size) meets its address range (always, for one without)."""
        return not self.size or (iova < self.address + self.size and self.address < iova + size)


InvalidationListener = Callable[[Invalidation], None]
"""Told of every invalidation the unit carries out, in order. It must not raise (a failure of
its own is its to report): an exception leaves through the register write that started the
invalidation, with IQH still on its descriptor."""
