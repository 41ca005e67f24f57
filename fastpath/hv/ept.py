"""EPT: GPA -> HPA translation over raw EPT tables in host memory (shared/specs/hv.md §1.1-1.8).

`walk(mem, eptp, gpa, access)` translates one address in the compiled core and raises the
architecture's faults (`fastpath.errors.EptViolation`, `EptMisconfig`); `walk_burst` translates
an array without the GIL. `EptTables` builds tables byte for byte, `Eptp` and `EptCaps` decode
the pointer and the capability word, and `Tlb` caches translations with INVEPT and INVVPID.
"""

from fastpath.hv._eptp import (
    CAP_BITS,
    DEFAULT_CAPS,
    IA32_VMX_EPT_VPID_CAP,
    EptCaps,
    Eptp,
    MemoryType,
)
from fastpath.hv._tables import PAGE_1G, PAGE_2M, PAGE_4K, EptTables
from fastpath.hv._tlb import (
    INVEPT_ALL_CONTEXT,
    INVEPT_SINGLE_CONTEXT,
    INVVPID_ALL_CONTEXT,
    INVVPID_INDIVIDUAL_ADDRESS,
    INVVPID_SINGLE_CONTEXT,
    INVVPID_SINGLE_CONTEXT_RETAINING_GLOBALS,
    Tlb,
)
from fastpath.hv._walk import Burst, EptTranslation
from fastpath.hv._walk import ept_walk as walk
from fastpath.hv._walk import ept_walk_burst as walk_burst

__all__ = [
    "walk",
    "walk_burst",
    "EptTranslation",
    "Burst",
    "EptTables",
    "Eptp",
    "EptCaps",
    "MemoryType",
    "CAP_BITS",
    "DEFAULT_CAPS",
    "IA32_VMX_EPT_VPID_CAP",
    "Tlb",
    "INVEPT_SINGLE_CONTEXT",
    "INVEPT_ALL_CONTEXT",
    "INVVPID_INDIVIDUAL_ADDRESS",
    "INVVPID_SINGLE_CONTEXT",
    "INVVPID_ALL_CONTEXT",
    "INVVPID_SINGLE_CONTEXT_RETAINING_GLOBALS",
    "PAGE_4K",
    "PAGE_2M",
    "PAGE_1G",
]
