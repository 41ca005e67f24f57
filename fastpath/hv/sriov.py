"""SR-IOV and VMDq (shared/specs/hv.md §4): a PF's SR-IOV capability and the VFs it enables,
VMDq-style steering of received frames to pools and queues, and VF DMA through VT-d.

`PhysicalFunction` is the capability as configuration software reads and writes it at its
offsets (`SriovReg`, `SriovControl`), with VF BARs sized by probing (`VfBar`) and First VF
Offset and VF Stride from a device-supplied `geometry` (`constant_geometry` by default);
`enable_vfs` and `disable_vfs` run the host's sequences in model time, and each
`VirtualFunction` has its routing ID (`vf_rid`), identity and BARs. `vf_dma` sends a VF's
DMA through VT-d with its routing ID as source-id, a bad IOVA ending as a recorded fault.
"""

from fastpath.hv._sriov_cap import CAP_ID, CAP_SIZE, SriovControl, SriovReg
from fastpath.hv._sriov_dma import vf_dma
from fastpath.hv._sriov_pf import PhysicalFunction, VfBar, constant_geometry
from fastpath.hv._sriov_vf import VirtualFunction, disable_vfs, enable_vfs, vf_rid

__all__ = [
    "CAP_ID",
    "CAP_SIZE",
    "SriovReg",
    "SriovControl",
    "PhysicalFunction",
    "VfBar",
    "constant_geometry",
    "VirtualFunction",
    "vf_rid",
    "enable_vfs",
    "disable_vfs",
    "vf_dma",
]
