"""What a remapping unit's translations cost, beside the VMX `CostModel`: cycles per IOMMU
page walk (an IOTLB miss) and per IOTLB hit, at the same clock.

modelled IOMMU cycles = walks × walk_cycles + IOTLB hits × iotlb_hit_cycles

The defaults, and where they come from (both are estimates: no figure here was measured on
this machine):

* `walk_cycles` 1,000: a DMA read that misses the IOTLB took about 330 ns longer than one that
  hits, as pcie-bench measured on a Xeon E5 (Neugebauer et al., "Understanding PCIe
  performance for end host networking", SIGCOMM 2018, the IOMMU section), about 1,000 cycles
  at the 3 GHz the VMX model assumes. It agrees with the walk's own shape: four reads of
  second-level paging entries (hv.md §3) at a DRAM latency of 80-90 ns each. It is latency
  the DMA waits, not CPU work; a path's modelled time per frame adds it as if the frame
  waited for every walk, an upper bound where a device overlaps its DMAs.
* `iotlb_hit_cycles` 0: the same study found DMA to buffers the IOTLB covers no slower than
  with the IOMMU off; set it to price the lookup itself.

`IOMMU_COST_SOURCES` names each default's source in a line, for reports that print the model.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

__all__ = ["IommuCost", "IOMMU_COST_SOURCES"]

IOMMU_COST_SOURCES: Mapping[str, str] = {
    "walk_cycles": "pcie-bench (SIGCOMM 2018): ~330 ns more per IOTLB miss, Xeon E5; an "
                   "estimate",
    "iotlb_hit_cycles": "pcie-bench: no added latency within the IOTLB's reach; an estimate",
}


@dataclass(frozen=True)
class IommuCost:
    """Cycles per IOMMU page walk and per IOTLB hit (defaults and sources: module
    docstring)."""

    walk_cycles: int = 1000
    iotlb_hit_cycles: int = 0

    def cycles(self, walks: int, iotlb_hits: int) -> float:
        """The modelled cycles of `walks` page walks and `iotlb_hits` IOTLB hits."""
        return float(walks * self.walk_cycles + iotlb_hits * self.iotlb_hit_cycles)
