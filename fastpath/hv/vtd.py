"""VT-d: DMA remapping (IOVA -> HPA) over raw legacy-mode root, context and second-level tables
in host memory (shared/specs/hv.md §3).

`translate(mem, rtaddr, source_id, iova, access)` translates one request in the compiled core
and raises `fastpath.errors.DmaFault` with the fault reason and the values a fault record would
hold; `translate_burst` translates an array without the GIL. `RootTable` and
`SecondLevelTables` build tables byte for byte, `VtdCaps` says what a unit supports (its CAP and
ECAP words), and `VtdCaches` is a context cache and IOTLB with their invalidations.
"""

from fastpath._core.vtd import FaultReason, TranslationType
from fastpath.hv._tables import PAGE_1G, PAGE_2M, PAGE_4K
from fastpath.hv._vtd_caches import VtdCaches
from fastpath.hv._vtd_caps import DEFAULT_CAPS, VtdCaps
from fastpath.hv._vtd_tables import RootTable, SecondLevelTables, source_id
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
    "FaultReason",
    "TranslationType",
    "QUALIFIED_REASONS",
    "PAGE_4K",
    "PAGE_2M",
    "PAGE_1G",
]
