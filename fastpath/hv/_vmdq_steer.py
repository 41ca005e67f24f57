"""VMDq receive steering of a burst of frames, after hv.md §4.5's model steering contract (v1):
MAC filters choose candidate pools, VLAN filters and VFRE narrow them, and RSS picks the queue
inside a pool. Whole-burst numpy; no Python per frame.

Decisions where the contract is silent (hv.md §8 item 21):
* the model has no UTA or MTA, so ROPE and ROMPE never accept a frame;
* without REPLEN a broadcast or multicast frame goes to the default pool alone, whichever
  pools accept it, and is dropped under DIS_DEFPL;
* a tagged frame whose VLAN is clear in VFTA is dropped before the pool filters; when several
  RARs or VLVF entries match, the lowest-numbered one is used;
* pools beyond the MRQC mode's count do not exist: their bits are ignored.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from fastpath.hv._vmdq_regs import (
    DEFAULT_POOL_MASK,
    DEFAULT_POOL_SHIFT,
    MPSAR,
    MRQC,
    MRQC_MRQE,
    MRQE_MODES,
    POOLS,
    RAH,
    RAH_ADDRESS_HIGH,
    RAH_AV,
    RAL,
    RX_QUEUES,
    VFRE,
    VFTA,
    VLVF,
    VLVF_VIEN,
    VLVF_VLANID,
    VLVFB,
    VMOLR,
    VT_CTL,
    VmdqRegisters,
    Vmolr,
    VtCtl,
)

BROADCAST = 0xFFFF_FFFF_FFFF
_MAC_SHIFTS = np.arange(40, -8, -8, dtype=np.uint64)     # first byte most significant
_POOL_BITS = np.uint64(1) << np.arange(POOLS, dtype=np.uint64)


class Steering(NamedTuple):
    """Where each frame of a burst goes: `pools`, its pool bitmap (0: dropped); `queue`, its
    receive queue in the lowest pool of the set (-1 when dropped); `offset`, the queue inside
    each of its pools (pool p's queue is p * queues_per_pool + offset)."""

    pools: np.ndarray
    queue: np.ndarray
    offset: np.ndarray
    queues_per_pool: int

    @property
    def dropped(self) -> np.ndarray:
        """True for each frame no pool receives."""
        return self.pools == 0


def mac_to_u64(mac) -> np.ndarray:
    """Destination MACs as uint64 (first byte most significant) from a uint64 array or an
    (n, 6) array of bytes."""
    mac = np.asarray(mac)
    if mac.ndim == 2 and mac.shape[1] == 6:
        return np.bitwise_or.reduce(mac.astype(np.uint64) << _MAC_SHIFTS, axis=1)
    if mac.ndim != 1 or not np.issubdtype(mac.dtype, np.integer):
        raise ValueError("destination MACs are a 1-D integer array or an (n, 6) byte array")
    mac = mac.astype(np.uint64)
    if np.any(mac > BROADCAST):
        raise ValueError("a destination MAC has more than 48 bits")
    return mac


def _pairs(words: np.ndarray, low: np.ndarray) -> np.ndarray:
    """64-bit bitmaps from (low, high) register pairs."""
    return words[low].astype(np.uint64) | words[low + 1].astype(np.uint64) << np.uint64(32)


def _pools_with(vmolr: np.ndarray, bit: int) -> np.uint64:
    return np.bitwise_or.reduce(np.where(vmolr & bit != 0, _POOL_BITS, np.uint64(0)))


def _first_match(match: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Per row, the value of the first matching column, or 0 where none matches."""
    return np.where(match.any(axis=1), values[match.argmax(axis=1)], np.uint64(0))


def steer(regs: VmdqRegisters, mac, vlan, rss_hash=None) -> Steering:
    """Steer a burst: `mac` the destination MACs (see mac_to_u64), `vlan` each frame's VLAN
    ID or -1 when untagged, `rss_hash` each frame's RSS hash (used in the RSS modes)."""
    words = regs.words
    vt_ctl = int(words[VT_CTL // 4])
    mode = MRQE_MODES.get(int(words[MRQC // 4]) & MRQC_MRQE)
    if not vt_ctl & VtCtl.VT_ENABLE or mode is None:
        raise ValueError("steering needs VT_CTL.VT_ENABLE and an MRQC VMDq mode")
    pool_count, rss = mode
    mac = mac_to_u64(mac)
    vlan = np.asarray(vlan, dtype=np.int64)
    if vlan.shape != mac.shape or np.any((vlan < -1) | (vlan > VLVF_VLANID)):
        raise ValueError("one VLAN ID in 0..4095, or -1, per frame")
    existing = np.uint64((1 << pool_count) - 1)
    vmolr = words[VMOLR]
    default_pool = vt_ctl >> DEFAULT_POOL_SHIFT & DEFAULT_POOL_MASK
    default = np.uint64(0 if vt_ctl & VtCtl.DIS_DEFPL else 1 << default_pool)

    # Contract 1: unicast exact match, else unicast promiscuous pools, else the default pool.
    rar = (words[RAL].astype(np.uint64)
           | (words[RAH] & RAH_ADDRESS_HIGH).astype(np.uint64) << np.uint64(32))
    rar_mac = np.bitwise_or.reduce(
        (rar[:, None] >> (np.uint64(40) - _MAC_SHIFTS)[None, :] & np.uint64(0xFF))
        << _MAC_SHIFTS[None, :], axis=1)
    match = (mac[:, None] == rar_mac[None, :]) & (words[RAH] & RAH_AV != 0)[None, :]
    upe = _pools_with(vmolr, Vmolr.UPE)
    unicast = np.where(match.any(axis=1), _first_match(match, _pairs(words, MPSAR)),
                       upe if upe else default)
    # Contract 2: broadcast and multicast, replicated only with REPLEN.
    replicate = bool(vt_ctl & VtCtl.REPLEN)
    broadcast_pools = _pools_with(vmolr, Vmolr.BAM) if replicate else default
    multicast_pools = _pools_with(vmolr, Vmolr.MPE) if replicate else default
    group = (mac >> np.uint64(40) & np.uint64(1)) != 0
    mac_pools = np.where(mac == BROADCAST, broadcast_pools,
                         np.where(group, multicast_pools, unicast))

    # Contract 3: VLAN filters; untagged frames go to pools that accept untagged.
    tagged = vlan >= 0
    tag = np.where(tagged, vlan, 0)
    vlvf = words[VLVF]
    vlan_match = ((tag[:, None] == (vlvf & VLVF_VLANID)[None, :])
                  & (vlvf & VLVF_VIEN != 0)[None, :])
    tagged_pools = _first_match(vlan_match, _pairs(words, VLVFB)) | _pools_with(vmolr, Vmolr.VPE)
    in_vfta = (words[VFTA][tag >> 5] >> (tag & 31).astype(np.uint32) & 1) != 0
    vlan_pools = np.where(tagged, np.where(in_vfta, tagged_pools, np.uint64(0)),
                          _pools_with(vmolr, Vmolr.AUPE))
    pools = mac_pools & vlan_pools & _pairs(words, VFRE)[0] & existing

    # Contract 4: the queue inside the pool.
    per_pool = RX_QUEUES // pool_count
    if rss_hash is not None and np.shape(rss_hash) != mac.shape:
        raise ValueError("one RSS hash per frame")
    if rss and rss_hash is not None:
        offset = (np.asarray(rss_hash, dtype=np.uint64) & np.uint64(per_pool - 1)).astype(np.int16)
    else:
        offset = np.zeros(len(mac), dtype=np.int16)
    lowest = pools & (~pools + np.uint64(1))
    first_pool = np.log2(np.where(pools != 0, lowest, 1).astype(np.float64)).astype(np.int16)
    queue = np.where(pools != 0, first_pool * per_pool + offset, -1).astype(np.int16)
    return Steering(pools, queue, offset, per_pool)
