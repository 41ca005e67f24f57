"""Scenarios that run the modelled platform (`fastpath.hv`), alone or together with the
dataplane above it: `walk` (EPT and 2-D walks with the TLB), `exits` (a guest's VM exits and
their modelled cost), `vtd` (DMA remapping, fault recording, invalidation, interrupt
remapping), `sriov` (VFs, VMDq steering, VF DMA), and the joins with the dataplane, such as a
vIOMMU answering a real back-end's IOTLB misses or a guest whose kicks are VM exits that reach
a running back-end. `hv` imports nothing above it, so the joins live here, one module each.

Each module's `run(**options)` returns a `Report` (figures under stable names, and tables),
which `fastpath hv` prints and saves; its `add_arguments(parser)` declares those options
(their destinations are `run`'s parameters, their defaults `run`'s defaults) and its
docstring is the scenario's --help page."""

from fastpath.scenarios._report import Report, Table
from fastpath.scenarios._virtual_iommu import IotlbMapping, VirtualIommu, iotlb_mapping
from fastpath.scenarios.kick import KICK_MODES, KickMode, notify_address

__all__ = ["Report", "Table", "VirtualIommu", "IotlbMapping", "iotlb_mapping", "KICK_MODES",
           "KickMode", "notify_address"]
