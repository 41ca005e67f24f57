"""The SR-IOV capability (shared/specs/hv.md §4.1-4.4): TV5's routing IDs with the bus
crossing, the read-only and read-write fields and the writes the model refuses, the enable
sequence in model time, and VF BAR sizing and arithmetic."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fastpath.hv.sriov import (
    CAP_ID,
    PhysicalFunction,
    SriovControl,
    SriovReg,
    VfBar,
    constant_geometry,
    disable_vfs,
    enable_vfs,
    vf_rid,
)

TV5_PF = 0x3B00           # 3b:00.0
INTEL, VF_DID = 0x8086, 0x10ED
BAR_BASE = 0xE000_0000
CONTROL_WRITABLE = SriovControl.VFE | SriovControl.VF_MSE | SriovControl.ARI   # no migration


def tv5_pf(**kwargs) -> PhysicalFunction:
    """TV5's PF: First VF Offset 0x80, VF Stride 2, 64 KiB of VFs past one bus."""
    options = dict(vendor_id=INTEL, vf_device_id=VF_DID, total_vfs=65,
                   geometry=constant_geometry(0x80, 2),
                   bars=[VfBar(0x4000), None, None, VfBar(0x4000)])
    options.update(kwargs)
    return PhysicalFunction(TV5_PF, **options)


@pytest.mark.parametrize("k, rid, name", [(0, 0x3B80, "3b:10.0"), (5, 0x3B8A, "3b:11.2"),
                                          (63, 0x3BFE, "3b:1f.6"), (64, 0x3C00, "3c:00.0")])
def test_tv5_vf_routing_ids_cross_to_the_next_bus(k, rid, name):
    assert vf_rid(TV5_PF, 0x80, 2, k) == rid
    vf = enable_vfs(tv5_pf(), 65)[k]
    assert (vf.index, vf.rid, str(vf)) == (k, rid, name)
    assert (vf.bus, vf.devfn) == (rid >> 8, rid & 0xFF)


def test_a_vf_past_bus_255_is_refused():
    with pytest.raises(ValueError, match="beyond bus"):
        vf_rid(0xFF00, 0x80, 2, 64)
    pf = PhysicalFunction(0xFF00, vendor_id=INTEL, vf_device_id=VF_DID, total_vfs=65,
                          geometry=(0x80, 2))
    with pytest.raises(ValueError, match="beyond bus"):
        enable_vfs(pf, 65)
    assert pf.num_vfs == 0 and not pf.control & SriovControl.VFE


def test_header_and_read_only_fields():
    pf = tv5_pf(initial_vfs=8)
    assert pf.read(SriovReg.HEADER, 2) == CAP_ID and pf.read(SriovReg.HEADER + 2, 2) == 1
    fields = {SriovReg.TOTAL_VFS: 65, SriovReg.INITIAL_VFS: 8, SriovReg.VF_DEVICE_ID: VF_DID,
              SriovReg.FIRST_VF_OFFSET: 0x80, SriovReg.VF_STRIDE: 2,
              SriovReg.SUPPORTED_PAGE_SIZES: 0x553}
    for reg, value in fields.items():
        width = 4 if reg == SriovReg.SUPPORTED_PAGE_SIZES else 2
        assert pf.read(reg, width) == value
        pf.write(reg, width, (1 << 8 * width) - 1)
        assert pf.read(reg, width) == value, f"{reg.name} took a write"
    pf.write(SriovReg.STATUS, 2, 0xFFFF)
    assert pf.read(SriovReg.STATUS, 2) == 0


def test_num_vfs_and_control_are_writable_at_every_width():
    pf = tv5_pf()
    pf.write(SriovReg.NUM_VFS, 2, 0x41)
    assert pf.read(SriovReg.NUM_VFS, 2) == 0x41
    pf.write(SriovReg.NUM_VFS, 1, 3)
    assert pf.read(SriovReg.NUM_VFS, 4) == 3       # Function Dependency Link reads 0 above
    pf.write(SriovReg.CONTROL, 4, 0xFFFF_FFFF)       # Status shares the dword: read-only
    assert pf.read(SriovReg.CONTROL, 4) == CONTROL_WRITABLE


def test_num_vfs_beyond_total_vfs_is_refused():
    pf = tv5_pf()
    with pytest.raises(ValueError, match="beyond TotalVFs"):
        pf.write(SriovReg.NUM_VFS, 2, 66)
    assert pf.num_vfs == 0
    with pytest.raises(ValueError, match="TotalVFs"):
        enable_vfs(pf, 66)


def test_num_vfs_and_page_size_are_frozen_while_vf_enable_is_set():
    pf = tv5_pf()
    enable_vfs(pf, 4)
    pf.write(SriovReg.NUM_VFS, 2, 9)
    pf.write(SriovReg.SYSTEM_PAGE_SIZE, 4, 2)
    assert (pf.num_vfs, pf.system_page_size) == (4, 4096)
    assert len(pf.vfs) == 4


@pytest.mark.parametrize("offset, size", [(1, 2), (2, 4), (0x10, 3), (0x3E, 4), (64, 1),
                                          (-1, 1)])
def test_malformed_accesses_are_refused(offset, size):
    pf = tv5_pf()
    with pytest.raises(ValueError, match="access"):
        pf.read(offset, size)
    with pytest.raises(ValueError, match="access"):
        pf.write(offset, size, 0)
    with pytest.raises(ValueError, match="does not fit"):
        pf.write(SriovReg.NUM_VFS, 2, 0x10000)


def test_offset_and_stride_are_re_read_after_num_vfs():
    # A device whose geometry depends on NumVFs and ARI (SR-IOV 1.1 §3.3.10-11).
    def geometry(num_vfs, ari):
        return (0x10 if ari else 0x80), (1 if num_vfs > 8 else 4)

    pf = tv5_pf(geometry=geometry)
    assert (pf.first_vf_offset, pf.vf_stride) == (0x80, 4)
    pf.write(SriovReg.NUM_VFS, 2, 9)
    assert (pf.read(SriovReg.FIRST_VF_OFFSET, 2), pf.read(SriovReg.VF_STRIDE, 2)) == (0x80, 1)
    pf.write(SriovReg.CONTROL, 2, SriovControl.ARI)
    assert pf.first_vf_offset == 0x10
    pf.write(SriovReg.NUM_VFS, 2, 0)
    assert [vf.rid for vf in enable_vfs(pf, 10)] == [0x3B10 + k for k in range(10)]


@pytest.mark.parametrize("offset, stride, count", [(0, 2, 1), (0x80, 0, 2)])
def test_offset_zero_or_stride_zero_fail_the_enable(offset, stride, count):
    pf = tv5_pf(geometry=constant_geometry(offset, stride))
    with pytest.raises(ValueError, match="cannot place"):
        enable_vfs(pf, count)
    assert pf.num_vfs == 0 and not pf.control & SriovControl.VFE


def test_stride_zero_places_a_single_vf():
    pf = tv5_pf(geometry=constant_geometry(0x80, 0))
    assert [vf.rid for vf in enable_vfs(pf, 1)] == [0x3B80]


def test_enable_sequence_in_model_time():
    pf = tv5_pf()
    pf.write(SriovReg.NUM_VFS, 2, 6)
    pf.write(SriovReg.CONTROL, 2, SriovControl.VFE | SriovControl.VF_MSE)
    assert pf.vfs == []                      # not before the settle time
    pf.step(99)
    assert pf.vfs == []
    pf.step(1)
    assert [vf.rid for vf in pf.vfs] == [0x3B80 + 2 * k for k in range(6)]
    pf.write(SriovReg.CONTROL, 2, SriovControl.VF_MSE)
    assert pf.vfs == []                      # clearing VF Enable removes them
    pf.write(SriovReg.CONTROL, 2, SriovControl.VFE | SriovControl.VF_MSE)
    pf.step(100)
    assert len(pf.vfs) == 6
    disable_vfs(pf)
    assert (pf.vfs, pf.num_vfs, pf.control) == ([], 0, 0)
    with pytest.raises(ValueError, match="forward"):
        pf.step(-1)


def test_vf_identity_is_the_pf_vendor_and_the_vf_device_id():
    vf = enable_vfs(tv5_pf(), 2)[1]
    assert (vf.vendor_id, vf.device_id) == (INTEL, VF_DID)


def probe(pf: PhysicalFunction, slot: int) -> int:
    """The size software reads by writing all ones to a BAR (both halves for 64 bits)."""
    at = SriovReg.VF_BAR0 + 4 * slot
    pf.write(at, 4, 0xFFFF_FFFF)
    low = pf.read(at, 4)
    wide = low & 0x6 == 0x4
    if wide:
        pf.write(at + 4, 4, 0xFFFF_FFFF)
    mask = (pf.read(at + 4, 4) << 32 if wide else 0xFFFF_FFFF_0000_0000) | low & ~0xF
    return (~mask & 0xFFFF_FFFF_FFFF_FFFF) + 1


def test_vf_bar_size_probing_and_type_bits():
    pf = tv5_pf(bars=[VfBar(0x4000), None, VfBar(0x10000, wide=False, prefetchable=False)])
    assert probe(pf, 0) == 0x4000 and pf.read(SriovReg.VF_BAR0, 4) & 0xF == 0xC
    assert probe(pf, 2) == 0x10000 and pf.read(SriovReg.VF_BAR0 + 8, 4) & 0xF == 0
    for slot in (3, 4, 5):
        pf.write(SriovReg.VF_BAR0 + 4 * slot, 4, 0xFFFF_FFFF)
        assert pf.read(SriovReg.VF_BAR0 + 4 * slot, 4) == 0     # unimplemented
    pf.write(SriovReg.VF_BAR0, 4, 0x1234_5678)
    assert pf.read(SriovReg.VF_BAR0, 4) == 0x1234_4000 | 0xC       # below the size reads 0


def test_vf_bar_arithmetic_and_aggregate_window():
    pf = tv5_pf()
    pf.write(SriovReg.VF_BAR0, 4, BAR_BASE)
    pf.write(SriovReg.VF_BAR0 + 4, 4, 0x38)
    pf.write(SriovReg.VF_BAR0 + 12, 4, 0xF000_0000)
    assert pf.vf_bar_base(0) == 0x38_E000_0000
    assert pf.vf_bar_window(0) == 0x4000 * 65              # by TotalVFs, not NumVFs
    vfs = enable_vfs(pf, 8)
    assert [vf.bars[0] for vf in vfs] == [(0x38_E000_0000 + k * 0x4000, 0x4000)
                                         for k in range(8)]
    assert vfs[5].bars[3] == (0xF000_0000 + 5 * 0x4000, 0x4000)
    assert vfs[5].bars[1] is None
    with pytest.raises(ValueError, match="not implemented"):
        pf.vf_bar_base(1)


def test_vf_bars_are_absent_without_memory_space_enable():
    pf = tv5_pf()
    pf.write(SriovReg.NUM_VFS, 2, 2)
    pf.write(SriovReg.CONTROL, 2, SriovControl.VFE)
    pf.step(100)
    assert pf.vfs[1].bars == (None,) * 6


def test_system_page_size_is_one_supported_bit_dividing_every_bar():
    pf = tv5_pf(bars=[VfBar(0x10000)])
    pf.write(SriovReg.SYSTEM_PAGE_SIZE, 4, 0x10)             # 64 KiB
    assert pf.system_page_size == 0x10000
    for bad in (0, 0x3, 0x4, 0x20):                          # none, two bits, 16 KiB unsupported
        with pytest.raises(ValueError, match="exactly one supported"):
            pf.write(SriovReg.SYSTEM_PAGE_SIZE, 4, bad)
    with pytest.raises(ValueError, match="not a multiple"):
        pf.write(SriovReg.SYSTEM_PAGE_SIZE, 4, 0x40)         # 256 KiB > the 64 KiB BAR
    assert pf.system_page_size == 0x10000


@pytest.mark.parametrize("bars, match", [
    ([VfBar(0x3000)], "power of two"),
    ([VfBar(0x800)], "power of two"),
    ([VfBar(0x4000), VfBar(0x4000)], "needs slot 1"),
    ([None] * 5 + [VfBar(0x4000)], "needs slot 6"),
    ([VfBar(1 << 32, wide=False)], "32-bit"),
    ([None] * 7, "6 VF BAR slots"),
])
def test_bad_vf_bar_declarations_are_refused(bars, match):
    with pytest.raises(ValueError, match=match):
        tv5_pf(bars=bars)


READ_ONLY = {SriovReg.HEADER: 4, SriovReg.TOTAL_VFS: 2, SriovReg.INITIAL_VFS: 2,
             SriovReg.VF_DEVICE_ID: 2, SriovReg.SUPPORTED_PAGE_SIZES: 4}
accesses = st.lists(st.tuples(st.integers(-2, 66), st.sampled_from([1, 2, 3, 4, 8]),
                              st.integers(0, (1 << 32) - 1)), max_size=40)


@settings(max_examples=200, deadline=None)
@given(writes=accesses)
def test_any_write_sequence_keeps_the_capability_consistent(writes):
    pf = tv5_pf()
    before = {reg: pf.read(reg, width) for reg, width in READ_ONLY.items()}
    for offset, size, value in writes:
        try:
            pf.write(offset, size, value)
        except ValueError:
            pass                                 # refused: a clear error, never a crash
        pf.step(50)
    assert {reg: pf.read(reg, width) for reg, width in READ_ONLY.items()} == before
    assert pf.num_vfs <= pf.total_vfs
    page = pf.read(SriovReg.SYSTEM_PAGE_SIZE, 4)
    assert page & (page - 1) == 0 and page & pf.supported_page_sizes
    assert pf.read(SriovReg.CONTROL, 2) & ~CONTROL_WRITABLE == 0
    vfs = pf.vfs
    assert len(vfs) in (0, pf.num_vfs)
    assert [vf.rid for vf in vfs] == [0x3B80 + 2 * k for k in range(len(vfs))]


@pytest.mark.parametrize("options, match", [
    (dict(total_vfs=0), "TotalVFs"),
    (dict(initial_vfs=66), "InitialVFs"),
    (dict(vf_device_id=0x10000), "16-bit"),
    (dict(supported_page_sizes=0x2), "bit 0"),
    (dict(next_capability=0x1000), "12 bits"),
    (dict(geometry=constant_geometry(0x10000, 1)), "16-bit values"),
])
def test_bad_pf_declarations_are_refused(options, match):
    with pytest.raises(ValueError, match=match):
        tv5_pf(**options)
