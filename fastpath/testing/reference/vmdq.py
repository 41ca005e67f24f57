"""VMDq receive steering written from hv.md §4.5's model steering contract (v1), one frame at a
time in plain Python: the oracle for `fastpath.hv.sriov.steer`.

It reads the registers one by one at their offsets and follows the contract's four rules in
order, with the decisions `fastpath.hv.sriov` documents for where the contract is silent.
"""

from __future__ import annotations

from fastpath.hv.sriov import (
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

__all__ = ["steer_frame"]


def _bitmap(regs: VmdqRegisters, offset: int) -> int:
    return regs.read(offset) | regs.read(offset + 4) << 32


def _pools_with(regs: VmdqRegisters, bit: int) -> set[int]:
    return {p for p in range(POOLS) if regs.read(vmolr(p)) & bit}


def _receive_address(regs: VmdqRegisters, i: int) -> int | None:
    """Receive address i as a MAC (first byte most significant), None unless valid."""
    high = regs.read(rah(i))
    if not high & RAH_AV:
        return None
    wire = (regs.read(ral(i)) | (high & 0xFFFF) << 32).to_bytes(6, "little")
    return int.from_bytes(wire, "big")


def steer_frame(regs: VmdqRegisters, mac: int, vlan: int,
                rss_hash: int | None = None) -> tuple[set[int], int]:
    """One frame's pools and its queue in the lowest of them (-1 when no pool takes it)."""
    vt_ctl = regs.read(VT_CTL)
    pool_count, rss = MRQE_MODES[regs.read(MRQC) & MRQC_MRQE]
    default_pool = vt_ctl >> DEFAULT_POOL_SHIFT & DEFAULT_POOL_MASK
    default = set() if vt_ctl & VtCtl.DIS_DEFPL else {default_pool}
    replicate = vt_ctl & VtCtl.REPLEN
    if mac == 0xFFFF_FFFF_FFFF:
        pools = _pools_with(regs, Vmolr.BAM) if replicate else default
    elif mac >> 40 & 1:
        pools = _pools_with(regs, Vmolr.MPE) if replicate else default
    else:
        hits = [i for i in range(RAR_ENTRIES) if _receive_address(regs, i) == mac]
        if hits:
            bitmap = _bitmap(regs, mpsar(hits[0]))
            pools = {p for p in range(POOLS) if bitmap >> p & 1}
        else:
            pools = _pools_with(regs, Vmolr.UPE) or default
    if vlan < 0:
        pools &= _pools_with(regs, Vmolr.AUPE)
    elif not regs.read(vfta(vlan // 32)) >> vlan % 32 & 1:
        pools = set()
    else:
        allowed = _pools_with(regs, Vmolr.VPE)
        for i in range(VLVF_ENTRIES):
            entry = regs.read(vlvf(i))
            if entry & VLVF_VIEN and entry & VLVF_VLANID == vlan:
                bitmap = _bitmap(regs, vlvfb(2 * i))
                allowed |= {p for p in range(POOLS) if bitmap >> p & 1}
                break
        pools &= allowed
    enabled = _bitmap(regs, vfre(0))
    pools = {p for p in pools if enabled >> p & 1 and p < pool_count}
    if not pools:
        return pools, -1
    per_pool = RX_QUEUES // pool_count
    inside = rss_hash % per_pool if rss and rss_hash is not None else 0
    return pools, min(pools) * per_pool + inside
