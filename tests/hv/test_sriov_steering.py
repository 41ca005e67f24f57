"""VMDq steering after shared/specs/hv.md §4.5's model contract (v1): each rule with exact
pools and queues, the register file's offsets, and the burst classifier against the
pure-Python reference (fastpath.testing.reference.vmdq) on random registers and frames."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fastpath.hv.sriov import (
    DEFAULT_POOL_SHIFT,
    MRQC,
    POOLS,
    VLVF_VIEN,
    VT_CTL,
    VmdqRegisters,
    Vmolr,
    VtCtl,
    mpsar,
    rah,
    ral,
    steer,
    vfre,
    vfta,
    vlvf,
    vlvfb,
    vmolr,
)
from fastpath.testing.reference import vmdq as reference

ALL_POOLS = (1 << 64) - 1
MAC_A, MAC_B, UNKNOWN = 0x02_00_00_00_00_0A, 0x02_00_00_00_00_0B, 0x02_00_00_00_00_FF
BROADCAST, MULTICAST = 0xFFFF_FFFF_FFFF, 0x01_00_5E_00_00_01
UNTAGGED = -1


def nic(mrqe: int = 0x8, default_pool: int = 0, flags: int = 0) -> VmdqRegisters:
    """VMDq on, every pool receiving untagged frames and enabled; A -> pool 3, B -> 5 and 9."""
    regs = VmdqRegisters()
    regs.write(VT_CTL, VtCtl.VT_ENABLE | default_pool << DEFAULT_POOL_SHIFT | flags)
    regs.write(MRQC, mrqe)
    regs.write64(vfre(0), ALL_POOLS)
    for pool in range(POOLS):
        regs.write(vmolr(pool), Vmolr.AUPE)
    regs.set_address(0, MAC_A, 1 << 3)
    regs.set_address(1, MAC_B, 1 << 5 | 1 << 9)
    return regs


def pools_of(regs, macs, vlans=None, hashes=None):
    vlans = [UNTAGGED] * len(macs) if vlans is None else vlans
    result = steer(regs, np.array(macs, dtype=np.uint64), np.array(vlans), hashes)
    return [[p for p in range(POOLS) if int(bits) >> p & 1] for bits in result.pools], result


def set_vmolr(regs, pool, bits):
    regs.write(vmolr(pool), regs.read(vmolr(pool)) | bits)


def test_register_offsets_are_ixgbe_s():
    assert (ral(0), rah(0), ral(15), ral(16), ral(127)) == (0x5400, 0x5404, 0x5478, 0xA280,
                                                              0xA5F8)
    assert (mpsar(0), mpsar(127), vfta(127), vlvf(63), vlvfb(127)) == (0xA600, 0xA9F8, 0xA1FC,
                                                                       0xF1FC, 0xF3FC)
    assert (vmolr(63), vfre(1), VT_CTL, MRQC) == (0xF0FC, 0x51E4, 0x51B0, 0x5818)


def test_register_file_refuses_unmodelled_offsets_and_widths():
    regs = VmdqRegisters()
    regs.set_address(16, 0x00_11_22_33_44_55, 0x8000_0000_0000_0001)
    assert regs.read(ral(16)) == 0x3322_1100                     # first byte in RAL 7:0
    assert regs.read(rah(16)) == 0x8000_5544
    assert (regs.read(mpsar(16)), regs.read(mpsar(16) + 4)) == (1, 0x8000_0000)
    for offset in (0x5402, 0x0000, 0x5800):
        with pytest.raises(ValueError, match="not a modelled"):
            regs.read(offset)
    with pytest.raises(ValueError, match="32-bit"):
        regs.write(VT_CTL, 1 << 32)


def test_unicast_exact_match_goes_to_the_mpsar_pools():
    pools, result = pools_of(nic(), [MAC_A, MAC_B])
    assert pools == [[3], [5, 9]]
    assert result.queue.tolist() == [6, 10] and result.queues_per_pool == 2


def test_bytes_and_u64_macs_steer_alike():
    regs = nic()
    as_bytes = np.array([list(MAC_B.to_bytes(6, "big")), list(UNKNOWN.to_bytes(6, "big"))],
                        dtype=np.uint8)
    assert steer(regs, as_bytes, np.array([-1, -1])).pools.tolist() == [1 << 5 | 1 << 9, 1]


def test_an_invalid_address_does_not_match():
    regs = nic(default_pool=7)
    regs.set_address(0, MAC_A, 1 << 3, valid=False)
    assert pools_of(regs, [MAC_A])[0] == [[7]]


def test_unicast_miss_goes_to_promiscuous_pools_else_the_default_pool():
    regs = nic(default_pool=7)
    assert pools_of(regs, [UNKNOWN])[0] == [[7]]
    set_vmolr(regs, 2, Vmolr.UPE)
    set_vmolr(regs, 4, Vmolr.UPE)
    assert pools_of(regs, [UNKNOWN, MAC_A])[0] == [[2, 4], [3]]


def test_dis_defpl_drops_a_unicast_miss():
    pools, result = pools_of(nic(default_pool=7, flags=VtCtl.DIS_DEFPL), [UNKNOWN, MAC_A])
    assert pools == [[], [3]]
    assert result.dropped.tolist() == [True, False] and result.queue.tolist() == [-1, 6]


def test_broadcast_and_multicast_replicate_with_replen():
    regs = nic(default_pool=1, flags=VtCtl.REPLEN)
    for pool in (3, 5):
        set_vmolr(regs, pool, Vmolr.BAM)
    for pool in (5, 8):
        set_vmolr(regs, pool, Vmolr.MPE)
    assert pools_of(regs, [BROADCAST, MULTICAST])[0] == [[3, 5], [5, 8]]


def test_broadcast_and_multicast_without_replen_go_to_the_default_pool():
    regs = nic(default_pool=1)
    set_vmolr(regs, 3, Vmolr.BAM | Vmolr.MPE)
    assert pools_of(regs, [BROADCAST, MULTICAST])[0] == [[1], [1]]
    regs.write(VT_CTL, regs.read(VT_CTL) | VtCtl.DIS_DEFPL)
    assert pools_of(regs, [BROADCAST, MULTICAST])[0] == [[], []]


def test_tagged_frames_follow_vlvf_vfta_and_vpe():
    regs = nic()
    regs.write(vlvf(0), VLVF_VIEN | 100)
    regs.write64(vlvfb(0), 1 << 3)                       # VLAN 100 -> pool 3
    regs.write(vlvf(1), 200)                             # not enabled
    regs.write64(vlvfb(2), 1 << 9)
    regs.write(vfta(100 // 32), 1 << 100 % 32)
    regs.write(vfta(200 // 32), 1 << 200 % 32)
    pools, _ = pools_of(regs, [MAC_A, MAC_B, MAC_B, MAC_A], [100, 100, 200, 300])
    assert pools == [[3], [], [], []]
    set_vmolr(regs, 9, Vmolr.VPE)                        # VLAN promiscuous pool 9
    regs.write(vfta(300 // 32), 1 << 300 % 32)
    pools, _ = pools_of(regs, [MAC_B, MAC_B, MAC_B], [100, 200, 300])
    assert pools == [[9], [9], [9]]
    regs.write(vfta(300 // 32), 0)                       # VFTA drops VLAN 300 first
    assert pools_of(regs, [MAC_B], [300])[0] == [[]]


def test_untagged_frames_need_aupe():
    regs = nic()
    regs.write(vmolr(5), 0)
    assert pools_of(regs, [MAC_B])[0] == [[9]]
    regs.write(vmolr(9), Vmolr.BAM)
    assert pools_of(regs, [MAC_B])[0] == [[]]


def test_vfre_off_drops_a_pool():
    regs = nic()
    regs.write64(vfre(0), ALL_POOLS & ~(1 << 5))
    assert pools_of(regs, [MAC_A, MAC_B])[0] == [[3], [9]]
    regs.write64(vfre(0), 0)
    assert pools_of(regs, [MAC_A, MAC_B])[0] == [[], []]


@pytest.mark.parametrize("mrqe, per_pool, rss", [(0x8, 2, False), (0xA, 4, True),
                                                (0xB, 2, True), (0xC, 8, False),
                                                (0xD, 4, False)])
def test_queue_inside_the_pool_per_mode(mrqe, per_pool, rss):
    regs = nic(mrqe)
    hashes = np.array([0x1234_5677, 0xFFFF_FFFF], dtype=np.uint32)
    _, result = pools_of(regs, [MAC_A, MAC_B], hashes=hashes)
    inside = [h & (per_pool - 1) if rss else 0 for h in hashes.tolist()]
    assert result.queues_per_pool == per_pool
    assert result.queue.tolist() == [3 * per_pool + inside[0], 5 * per_pool + inside[1]]
    assert result.offset.tolist() == inside
    assert pools_of(regs, [MAC_A], hashes=None)[1].queue.tolist() == [3 * per_pool]


def test_pools_beyond_the_mode_do_not_exist():
    regs = nic(0xC)                                      # 16 pools
    regs.set_address(2, UNKNOWN, 1 << 20 | 1 << 4)
    assert pools_of(regs, [UNKNOWN])[0] == [[4]]


def test_steering_needs_vmdq_on_and_good_frames():
    regs = nic()
    with pytest.raises(ValueError, match="VLAN"):
        steer(regs, np.array([MAC_A], dtype=np.uint64), np.array([4096]))
    with pytest.raises(ValueError, match="48 bits"):
        steer(regs, np.array([1 << 48], dtype=np.uint64), np.array([-1]))
    with pytest.raises(ValueError, match="RSS hash"):
        steer(regs, np.array([MAC_A], dtype=np.uint64), np.array([-1]), np.array([1, 2]))
    regs.write(MRQC, 0x2)
    with pytest.raises(ValueError, match="VMDq mode"):
        steer(regs, np.array([MAC_A], dtype=np.uint64), np.array([-1]))


# --- the classifier against the reference ---

MACS = [MAC_A, MAC_B, UNKNOWN, BROADCAST, MULTICAST, 0x33_33_00_00_00_01]
VLANS = [-1, 0, 100, 200, 4095]
pool_bitmaps = st.integers(0, ALL_POOLS)


@st.composite
def registers(draw):
    regs = VmdqRegisters()
    flags = draw(st.sampled_from([0, VtCtl.DIS_DEFPL, VtCtl.REPLEN,
                                  VtCtl.DIS_DEFPL | VtCtl.REPLEN]))
    regs.write(VT_CTL, VtCtl.VT_ENABLE | draw(st.integers(0, 63)) << DEFAULT_POOL_SHIFT | flags)
    regs.write(MRQC, draw(st.sampled_from([0x8, 0xA, 0xB, 0xC, 0xD])))
    regs.write64(vfre(0), draw(pool_bitmaps))
    for pool in draw(st.lists(st.integers(0, 63), max_size=12)):
        regs.write(vmolr(pool), draw(st.sampled_from([0, Vmolr.UPE, Vmolr.VPE, Vmolr.AUPE,
                                                      Vmolr.BAM, Vmolr.MPE, 0x1FC0_0000])))
    for i in draw(st.lists(st.integers(0, 127), max_size=6)):
        regs.set_address(i, draw(st.sampled_from(MACS)), draw(pool_bitmaps), draw(st.booleans()))
    for i in draw(st.lists(st.integers(0, 63), max_size=4)):
        enable = draw(st.sampled_from([0, VLVF_VIEN]))
        regs.write(vlvf(i), enable | draw(st.sampled_from(VLANS[1:])))
        regs.write64(vlvfb(2 * i), draw(pool_bitmaps))
    for vlan in draw(st.lists(st.sampled_from(VLANS[1:]), max_size=4)):
        regs.write(vfta(vlan // 32), regs.read(vfta(vlan // 32)) | 1 << vlan % 32)
    return regs


frames = st.lists(st.tuples(st.sampled_from(MACS) | st.integers(0, BROADCAST),
                            st.sampled_from(VLANS), st.integers(0, (1 << 32) - 1)),
                  min_size=1, max_size=24)


@settings(max_examples=150, deadline=None)
@given(regs=registers(), burst=frames, with_hash=st.booleans())
def test_classifier_matches_the_reference(regs, burst, with_hash):
    macs, vlans, hashes = (np.array(column) for column in zip(*burst, strict=True))
    result = steer(regs, macs.astype(np.uint64), vlans, hashes if with_hash else None)
    for k, (mac, vlan, rss_hash) in enumerate(burst):
        pools, queue = reference.steer_frame(regs, mac, vlan, rss_hash if with_hash else None)
        got = {p for p in range(POOLS) if int(result.pools[k]) >> p & 1}
        assert (got, int(result.queue[k])) == (pools, queue), f"frame {k}"
