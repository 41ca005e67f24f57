"""VMDq steering as a PF driver sets it up for its VFs, shared by the scenarios that steer
received frames to VFs: VF k's receive address in pool k, the PF's in the pool after the VFs
(the default pool unless told otherwise), every pool taking untagged frames and broadcast."""

from __future__ import annotations

from fastpath.hv.sriov import (
    DEFAULT_POOL_SHIFT,
    MRQC,
    VT_CTL,
    VmdqRegisters,
    Vmolr,
    VtCtl,
    vfre,
    vmolr,
)

__all__ = ["VF_MAC_BASE", "PF_MAC", "MRQE_64_POOLS", "MRQE_32_POOLS_RSS", "vmdq_registers"]

VF_MAC_BASE = 0x02_00_00_00_01_00      # VF k's MAC is VF_MAC_BASE + k
PF_MAC = 0x02_00_00_00_00_01
MRQE_64_POOLS, MRQE_32_POOLS_RSS = 0x8, 0xA


def vmdq_registers(vfs: int, rss: bool = False,
                   default_pool: bool = True) -> tuple[VmdqRegisters, int]:
    """The steering registers as the PF driver sets them; returns them and the PF's pool.
    With `rss` the pools hold 4 queues (32 pools), else 2 (64 pools); without `default_pool`
    frames no filter matched are dropped (VT_CTL.DIS_DEFPL)."""
    regs = VmdqRegisters()
    pools = 32 if rss else 64
    pf_pool = vfs
    if pf_pool >= pools:
        raise ValueError(f"{vfs} VFs and the PF need {vfs + 1} pools; this mode has {pools}")
    control = VtCtl.VT_ENABLE | VtCtl.REPLEN | pf_pool << DEFAULT_POOL_SHIFT
    regs.write(VT_CTL, control | (0 if default_pool else VtCtl.DIS_DEFPL))
    regs.write(MRQC, MRQE_32_POOLS_RSS if rss else MRQE_64_POOLS)
    regs.write64(vfre(0), (1 << (pf_pool + 1)) - 1)
    for pool in range(pf_pool + 1):
        regs.write(vmolr(pool), Vmolr.AUPE | Vmolr.BAM)
    for k in range(vfs):
        regs.set_address(k, VF_MAC_BASE + k, 1 << k)
    regs.set_address(vfs, PF_MAC, 1 << pf_pool)
    return regs, pf_pool
