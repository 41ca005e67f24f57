"""Guest IA-32e paging and the two-dimensional walk GVA -> GPA -> HPA (shared/specs/hv.md §1.9,
§1.10).

`walk_2d(mem, eptp, cr3, gva, access)` walks the guest's tables with every paging-structure
read translated through EPT, counting the references, and raises the guest's #PF
(`fastpath.errors.GuestPageFault`) or the EPT exits; `walk_2d_burst` translates an array without
the GIL. `GuestPageTables` builds the guest's tables byte for byte. The model CPU has 1 GiB
pages (CPUID.80000001H:EDX.Page1GB) and no protection keys (PKE off: bits 62:59 ignored).
"""

from fastpath._core.paging import ControlBits
from fastpath.hv._tables import GuestPageTables
from fastpath.hv._walk import (
    DEFAULT_CR0,
    DEFAULT_CR4,
    DEFAULT_EFER,
    Burst,
    Translation,
    walk_2d,
    walk_2d_burst,
)

__all__ = [
    "walk_2d",
    "walk_2d_burst",
    "Translation",
    "Burst",
    "GuestPageTables",
    "ControlBits",
    "DEFAULT_CR0",
    "DEFAULT_CR4",
    "DEFAULT_EFER",
]
