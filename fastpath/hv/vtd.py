"""VT-d: DMA remapping (IOVA -> HPA) over raw legacy-mode root, context and second-level tables
in host memory, with fault recording, caches and their invalidation, device TLBs and interrupt
remapping (shared/specs/hv.md §3).

`translate(mem, rtaddr, source_id, iova, access)` translates one request in the compiled core
and raises `fastpath.errors.DmaFault` with the fault reason and the values a fault record would
hold; `translate_burst` translates an array without the GIL. `RootTable` and
`SecondLevelTables` build tables byte for byte, `VtdCaps` says what a unit supports (its CAP and
ECAP words), and `VtdCaches` is a context cache and IOTLB with their invalidations;
`IommuCost` prices their work (cycles per page walk and per IOTLB hit, sourced defaults).

`RemappingUnit` is the whole unit as software programs it: registers at their MMIO offsets
(`Reg`, `Gcmd`, `Fsts`), fault recording and the fault event, register-based and queued
invalidation (`Descriptor`), DMA and ATS requests from devices (`DeviceTlb`), and interrupt
remapping of remapped and posted IRTEs (`remapped_irte`, `posted_irte`, `remappable_msi`).
Its invalidation listeners hear of each `Invalidation` as it is carried out, before a wait
descriptor behind it completes: the hook a vIOMMU's copies of translations hang on (hv.md §5.5).
"""

from fastpath._core.vtd import FaultReason, TranslationType
from fastpath.hv._tables import PAGE_1G, PAGE_2M, PAGE_4K
from fastpath.hv._vtd_caches import VtdCaches
from fastpath.hv._vtd_caps import DEFAULT_CAPS, VtdCaps
from fastpath.hv._vtd_cost import IOMMU_COST_SOURCES, IommuCost
from fastpath.hv._vtd_device_tlb import DeviceTlb
from fastpath.hv._vtd_interrupts import (
    CompatibilityInterrupt,
    InterruptEntryCache,
    PostedInterrupt,
    RemappedInterrupt,
    irta,
    posted_descriptor,
    posted_irte,
    remappable_msi,
    remapped_irte,
    write_irte,
)
from fastpath.hv._vtd_invalidation import Invalidation, InvalidationListener
from fastpath.hv._vtd_queue import Descriptor, DescriptorType, Granularity, device_tlb_range
from fastpath.hv._vtd_regs import Fsts, Gcmd, Reg
from fastpath.hv._vtd_tables import RootTable, SecondLevelTables, source_id
from fastpath.hv._vtd_unit import INTERRUPT_RANGE, RemappingUnit
from fastpath.hv._vtd_walk import (
    QUALIFIED_REASONS,
    DmaBurst,
    DmaTranslation,
    translate,
    translate_burst,
)

__all__ = [
    "translate",
    "translate_burst",
    "DmaTranslation",
    "DmaBurst",
    "RootTable",
    "SecondLevelTables",
    "source_id",
    "VtdCaps",
    "DEFAULT_CAPS",
    "VtdCaches",
    "IommuCost",
    "IOMMU_COST_SOURCES",
    "FaultReason",
    "TranslationType",
    "QUALIFIED_REASONS",
    "RemappingUnit",
    "INTERRUPT_RANGE",
    "Invalidation",
    "InvalidationListener",
    "Granularity",
    "Reg",
    "Gcmd",
    "Fsts",
    "Descriptor",
    "DescriptorType",
    "device_tlb_range",
    "DeviceTlb",
    "InterruptEntryCache",
    "RemappedInterrupt",
    "PostedInterrupt",
    "CompatibilityInterrupt",
    "remapped_irte",
    "posted_irte",
    "remappable_msi",
    "irta",
    "write_irte",
    "posted_descriptor",
    "PAGE_4K",
    "PAGE_2M",
    "PAGE_1G",
]
