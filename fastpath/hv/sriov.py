"""SR-IOV and VMDq (shared/specs/hv.md §4): a PF's SR-IOV capability and the VFs it enables,
VMDq-style steering of received frames to pools and queues, and VF DMA through VT-d.

`PhysicalFunction` is the capability as configuration software reads and writes it at its
offsets (`SriovReg`, `SriovControl`), with VF BARs sized by probing (`VfBar`) and First VF
Offset and VF Stride from a device-supplied `geometry` (`constant_geometry` by default);
`enable_vfs` and `disable_vfs` run the host's sequences in model time, and each
`VirtualFunction` has its routing ID (`vf_rid`), identity and BARs. `vf_dma` sends a VF's
DMA through VT-d with its routing ID as source-id, a bad IOVA ending as a recorded fault.

`VmdqRegisters` holds an 82599-class NIC's steering registers at their offsets (`ral`, `rah`,
`mpsar`, `vfta`, `vlvf`, `vlvfb`, `vmolr`, `vfre`, `VT_CTL`, `MRQC`; bits in `VtCtl`,
`Vmolr`); `steer` classifies a burst of frames to pools and queues (`Steering`).
"""

from fastpath.hv._sriov_cap import CAP_ID, CAP_SIZE, SriovControl, SriovReg
from fastpath.hv._sriov_dma import vf_dma
from fastpath.hv._sriov_pf import PhysicalFunction, VfBar, constant_geometry
from fastpath.hv._sriov_vf import VirtualFunction, disable_vfs, enable_vfs, vf_rid
from fastpath.hv._vmdq_regs import (
    DEFAULT_POOL_MASK,
    DEFAULT_POOL_SHIFT,
    MRQC,
    MRQC_MRQE,
    MRQE_MODES,
    POOLS,
    RAH_AV,
    RAR_ENTRIES,
    RX_QUEUES,
    VLVF_ENTRIES,
    VLVF_VIEN,
    VLVF_VLANID,
    VT_CTL,
    VmdqRegisters,
    Vmolr,
    VtCtl,
    mpsar,
    rah,
    ral,
    vfre,
    vfta,
    vlvf,
    vlvfb,
    vmolr,
)
from fastpath.hv._vmdq_steer import Steering, mac_to_u64, steer

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
    "VmdqRegisters",
    "ral",
    "rah",
    "mpsar",
    "vfta",
    "vlvf",
    "vlvfb",
    "vmolr",
    "vfre",
    "VT_CTL",
    "MRQC",
    "MRQE_MODES",
    "MRQC_MRQE",
    "DEFAULT_POOL_SHIFT",
    "DEFAULT_POOL_MASK",
    "RAH_AV",
    "VLVF_VIEN",
    "VLVF_VLANID",
    "VtCtl",
    "Vmolr",
    "POOLS",
    "RAR_ENTRIES",
    "VLVF_ENTRIES",
    "RX_QUEUES",
    "Steering",
    "steer",
    "mac_to_u64",
]
