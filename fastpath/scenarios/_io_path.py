"""What every way of doing guest I/O is measured on, and what it reports: one workload
(`IoWorkload`) run through each path (emulated NIC, virtio-net, an assigned VF, SR-IOV VFs),
each run ending as a `PathResult` built from the model's own counters, so that `fastpath hv
compare` can lay the paths side by side per frame."""

from __future__ import annotations

from dataclasses import dataclass, field

from fastpath.hv.vmx import CostModel, VmxCounters
from fastpath.hv.vtd import IommuCost

COMPLETIONS = ("interrupt", "poll")
# What a path's modelled time is made of, in the order a breakdown lists it.
COST_COMPONENTS = ("guest", "exits+entries", "handlers", "ept", "iommu")


@dataclass(frozen=True)
class IoWorkload:
    """The guest's job, the same on every path: send `frames` frames of `size` bytes in bursts
    of `burst` and take every one back (the far side returns what it gets), learning of
    completions by interrupt or by polling the rings (`completion`)."""

    frames: int = 256
    size: int = 64
    burst: int = 32
    completion: str = "interrupt"

    def __post_init__(self) -> None:
        if self.completion not in COMPLETIONS:
            raise ValueError(f"completion must be one of {COMPLETIONS}, not {self.completion!r}")
        if self.frames < 1 or self.burst < 1 or self.size < 60:
            raise ValueError("frames and burst must be positive and size at least 60 bytes")

    @property
    def bursts(self) -> int:
        """Bursts the workload sends (the last may be short)."""
        return -(-self.frames // self.burst)


@dataclass
class PathResult:
    """One path's run of a workload, from the model's counters.

    `path` is the path ("emulated", "virtio", "assigned", "sriov") and `variant` what sets
    this run apart within it (a kick mode, remapped or posted interrupts, a guest count).
    `counters` are the guest vCPUs' exits by reason, entries and guest progress, summed over
    the vCPUs; `iommu_walks` counts the remapping unit's page walks and `iotlb_hits` /
    `iotlb_lookups` its IOTLB; `interrupts` counts interrupts that reached the guest, however
    delivered; `host_rate_pps` is the measured rate of a real back-end, where one ran, and
    `backend_kicks_read` the kick eventfd counts it read as it slept, by its own count."""

    path: str
    variant: str
    workload: IoWorkload
    frames_intact: int
    counters: VmxCounters = field(default_factory=VmxCounters)
    iommu_walks: int = 0
    iotlb_hits: int = 0
    iotlb_lookups: int = 0
    interrupts: int = 0
    host_rate_pps: float | None = None
    backend_kicks_read: int | None = None

    def modelled_breakdown(self, costs: CostModel, iommu: IommuCost) -> dict[str, float]:
        """The run's modelled cycles by component (`COST_COMPONENTS`): the guest's own
        cycles, the hardware exits and entries, the VMM's handlers and the EPT references
        from the cost model over the vCPU counters, and the remapping unit's walks and IOTLB
        hits from `iommu`."""
        vmx = costs.breakdown(self.counters)
        return {"guest": vmx["guest"], "exits+entries": vmx["exits"] + vmx["entries"],
                "handlers": vmx["handlers"], "ept": vmx["ept"],
                "iommu": iommu.cycles(self.iommu_walks, self.iotlb_hits)}

    def modelled_cycles(self, costs: CostModel, iommu: IommuCost) -> float:
        """All the run's modelled cycles (the sum of `modelled_breakdown`)."""
        return sum(self.modelled_breakdown(costs, iommu).values())
