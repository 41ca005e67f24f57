"""The vIOMMU's side of vhost-user with the VT-d model behind it: what QEMU does for a vhost
device in front of an intel-iommu (hv.md §5.3, §5.5). A back-end's IOTLB miss is translated by
the remapping unit for the virtio device's source-id, its output (a guest-physical address of
the VM) looked up in the front-end's memory regions, and answered with an UPDATE; every
invalidation the unit carries out withdraws, with INVALIDATE messages, what it had handed out
that the invalidation reaches, before the unit goes on to a wait descriptor behind it.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import NamedTuple

from fastpath.errors import DmaFault, FastpathError
from fastpath.hv import GuestMemory, SharedRegion
from fastpath.hv.vtd import INTERRUPT_RANGE, DmaTranslation, Invalidation, RemappingUnit
from fastpath.vhost_user import Frontend
from fastpath.vhost_user.wire import IotlbAccess, IotlbMessage, IotlbType

log = logging.getLogger("fastpath.scenarios")

_PERMISSIONS = {"r": IotlbAccess.READ, "w": IotlbAccess.WRITE, "rw": IotlbAccess.READ_WRITE}


class IotlbMapping(NamedTuple):
    """What one UPDATE hands out: [iova, iova + size) at the front-end's user_addr with `perm`,
    from a translation in domain `domain_id` (which decides what invalidations reach it)."""

    iova: int
    size: int
    user_addr: int
    perm: IotlbAccess
    domain_id: int

    @property
    def end(self) -> int:
        """The first IOVA past it."""
        return self.iova + self.size


def iotlb_mapping(translation: DmaTranslation, iova: int,
                  regions: Sequence[SharedRegion]) -> IotlbMapping | None:
    """The UPDATE that answers a miss at `iova`, given the remapping unit's `translation` of it
    (its output a guest-physical address) and the front-end's memory `regions`; None when that
    address lies in no region.

    As QEMU's vhost_device_iotlb_miss (hv.md §5.3): the VT-d page that holds iova, cut to the
    region that holds iova's guest address. QEMU looks up the page's first address instead,
    which answers nothing when a super-page starts in a hole, or another region's bytes when
    it starts in the region below: the cut always covers iova and never leaves its region.
    """
    page_size = translation.page_size
    offset = iova % page_size
    gpa = translation.hpa
    page_gpa = gpa - offset
    for region in regions:
        if region.guest_phys_addr <= gpa < region.guest_phys_addr + region.size:
            start = max(page_gpa, region.guest_phys_addr)
            end = min(page_gpa + page_size, region.guest_phys_addr + region.size)
            return IotlbMapping(iova - offset + (start - page_gpa), end - start,
                                region.user_addr + (start - region.guest_phys_addr),
                                _PERMISSIONS[translation.permissions], translation.domain_id)
    return None


class VirtualIommu:
    """The vIOMMU for the virtio device at `source_id` behind `frontend`: answers the
    back-end's IOTLB misses from `unit` (a fastpath.hv.vtd.RemappingUnit, whose output
    addresses are guest-physical addresses of `memory`, the GuestMemory the front-end shares)
    and withdraws what the unit's invalidations reach.

    A miss the unit refuses is a DMA fault: the unit records it in its fault recording
    registers (as for a device's own DMA) and the miss gets no answer, so the back-end gives the
    ring up after its deadline. `mappings` is what the back-end holds from us now; `sent` every
    IOTLB message sent, in order; `faults` the DmaFaults met; `misses` and `answered` count the
    misses and those answered.

    One thread drives the unit and answers misses (as QEMU's big lock orders a vIOMMU's
    invalidations and vhost's misses): a miss answered from another thread while an
    invalidation runs could hand out what it withdraws. `close()` stops listening to the unit.
    """

    def __init__(self, unit: RemappingUnit, source_id: int, memory: GuestMemory,
                 frontend: Frontend):
        if not 0 <= source_id < 1 << 16:
            raise ValueError(f"source-id {source_id:#x} is not a 16-bit bus:devfn")
        if not frontend.iommu:
            raise ValueError("the front-end did not negotiate VIRTIO_F_ACCESS_PLATFORM: its "
                             "addresses are guest-physical, no vIOMMU translates them")
        self.unit = unit
        self.source_id = source_id
        self.memory = memory
        self.frontend = frontend
        self.mappings: list[IotlbMapping] = []
        self.sent: list[IotlbMessage] = []
        self.faults: list[DmaFault] = []
        self.misses = 0
        self.answered = 0
        unit.add_invalidation_listener(self.invalidated)

    def close(self) -> None:
        """Stop hearing the unit's invalidations."""
        self.unit.remove_invalidation_listener(self.invalidated)

    def resolve(self, iova: int, perm: int) -> tuple[int, int, int, int] | None:
        """Answer a miss at `iova` for `perm` (IotlbAccess): (iova, size, user address,
        permissions) for the UPDATE, as Frontend.answer_misses takes it, or None."""
        self.misses += 1
        mapping = self._translate(iova, perm)
        if mapping is None:
            return None
        self.answered += 1
        self._hand_out(mapping)
        return mapping.iova, mapping.size, mapping.user_addr, mapping.perm

    def answer_misses(self, timeout: float) -> int:
        """Answer the back-end's misses until none has come for `timeout` seconds; returns
        how many were answered."""
        return self.frontend.answer_misses(self.resolve, timeout)

    def _translate(self, iova: int, perm: int) -> IotlbMapping | None:
        if perm not in (IotlbAccess.READ, IotlbAccess.WRITE, IotlbAccess.READ_WRITE):
            log.warning("IOTLB miss at %#x with permissions %d: not answered", iova, perm)
            return None
        if iova in INTERRUPT_RANGE:
            # hv.md §3.4: a write there is an interrupt request, never a translation.
            log.warning("IOTLB miss at %#x, an interrupt address: not answered", iova)
            return None
        # As QEMU's vhost_backend_handle_iotlb_msg: a miss for anything but reading asks for
        # a translation good for writes; the leaf's R/W decide what the update grants.
        access = "r" if perm == IotlbAccess.READ else "w"
        try:
            translation = self.unit.dma(self.source_id, iova, access)
        except DmaFault as fault:
            log.warning("IOTLB miss at %#x: %s", iova, fault)
            self.faults.append(fault)
            return None
        mapping = iotlb_mapping(translation, iova, self.memory.regions)
        if mapping is None:
            log.warning("IOTLB miss at %#x: guest address %#x is in no memory region", iova,
                        translation.hpa)
        return mapping

    def _hand_out(self, mapping: IotlbMapping) -> None:
        # Frontend.answer_misses sends the UPDATE when resolve returns it.
        if mapping not in self.mappings:
            self.mappings.append(mapping)
        self.sent.append(IotlbMessage(mapping.iova, mapping.size, mapping.user_addr,
                                      mapping.perm, IotlbType.UPDATE))

    def invalidated(self, invalidation: Invalidation) -> None:
        """The unit's invalidation listener: withdraw every mapping handed out that
        `invalidation` reaches (by device, domain and IOVA range), as QEMU's vhost IOMMU
        notifier does, before the unit runs anything queued behind it."""
        stale = [m for m in self.mappings if invalidation.affects(self.source_id, m.domain_id)
                 and invalidation.overlaps(m.iova, m.size)]
        if not stale:
            return
        self.mappings = [m for m in self.mappings if m not in stale]
        for iova, size in _coalesced(stale):
            self.sent.append(IotlbMessage(iova, size, 0, IotlbAccess.NONE,
                                          IotlbType.INVALIDATE))
            try:
                self.frontend.iotlb_invalidate(iova, size)
            except (FastpathError, OSError) as e:
                # QEMU reports a failed invalidation and goes on: the connection is gone or
                # going, and the guest's wait must not hang on it.
                log.error("IOTLB invalidation of %#x+%#x failed: %s", iova, size, e)


def _coalesced(mappings: list[IotlbMapping]) -> list[tuple[int, int]]:
    # The IOVA ranges the mappings cover, overlapping and adjacent ones joined: one
    # INVALIDATE each.
    ranges: list[list[int]] = []
    for m in sorted(mappings):
        if ranges and m.iova <= ranges[-1][1]:
            ranges[-1][1] = max(ranges[-1][1], m.end)
        else:
            ranges.append([m.iova, m.end])
    return [(start, end - start) for start, end in ranges]
