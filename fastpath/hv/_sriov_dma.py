"""A VF's DMA through VT-d (hv.md §4.2, §3.4): the VF's routing ID is the source-id its
requests carry, so an assigned VF reaches only what its domain maps."""

from __future__ import annotations

from collections.abc import Iterable

from fastpath.errors import DmaFault
from fastpath.hv._sriov_vf import VirtualFunction
from fastpath.hv._vtd_unit import RemappingUnit
from fastpath.hv._vtd_walk import DmaTranslation, translate


def vf_dma(vf: VirtualFunction, iommu, iovas: Iterable[int],
           access: str) -> list[DmaTranslation | DmaFault]:
    """Translate the VF's DMA to each IOVA with its RID as source-id; each answer is the
    translation or the fault. `iommu` is a `RemappingUnit` (faults are recorded in its fault
    recording registers, as hardware records them, and do not stop the other requests) or a
    (mem, rtaddr) pair walked directly (nothing to record in)."""
    if isinstance(iommu, RemappingUnit):
        def one(iova: int) -> DmaTranslation:
            return iommu.dma(vf.rid, iova, access)
    else:
        mem, rtaddr = iommu

        def one(iova: int) -> DmaTranslation:
            return translate(mem, rtaddr, vf.rid, iova, access)
    answers: list[DmaTranslation | DmaFault] = []
    for iova in iovas:
        try:
            answers.append(one(iova))
        except DmaFault as error:
            answers.append(error)
    return answers
