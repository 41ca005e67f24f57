"""VT-d DMA remapping over raw legacy-mode tables (shared/specs/hv.md §3.2-3.5): the worked
vector TV5, every fault reason of §3.5 the walk can give, 3-, 4- and 5-level tables, large
pages, pass-through, reserved bits, and the context cache and IOTLB reference counts of §3.4.

Each case runs on the compiled walker (fastpath.hv.vtd) and on the pure-Python reference
(fastpath.testing.reference.vtd), which must agree on results, faults and reference counts.
"""

from __future__ import annotations

import numpy as np
import pytest

from fastpath.errors import DmaFault
from fastpath.hv import HostMemory, vtd
from fastpath.hv.vtd import (
    PAGE_1G,
    PAGE_2M,
    PAGE_4K,
    FaultReason,
    RootTable,
    SecondLevelTables,
    TranslationType,
    VtdCaches,
    VtdCaps,
)
from fastpath.testing.reference import vtd as reference

MIB = 1 << 20
TV5_RTADDR = 0x300000
TV5_SID = 0x3B8A            # VF5 of PF 3b:00.0 (3b:11.2)
FIVE_LEVEL = VtdCaps(levels=(3, 4, 5), mgaw=57)


def write64(mem, hpa: int, value: int) -> None:
    mem[hpa : hpa + 8] = value.to_bytes(8, "little")


def read64(mem, hpa: int) -> int:
    return int.from_bytes(bytes(mem[hpa : hpa + 8]), "little")


def outcome(call):
    try:
        return ("ok", tuple(call()))
    except DmaFault as e:
        return ("fault", (e.reason, e.source_id, e.address, e.read, e.references,
                          e.qualified, e.record))


def both(mem, rtaddr, sid, iova, access, caps=vtd.DEFAULT_CAPS, translation_request=False):
    """The core's and the reference's answer, which must be equal."""
    core = outcome(lambda: vtd.translate(mem, rtaddr, sid, iova, access, caps=caps,
                                         translation_request=translation_request))
    oracle = outcome(lambda: reference.translate(
        mem, rtaddr, sid, iova, access, cap=caps.cap, ecap=caps.ecap, haw=caps.haw,
        translation_request=translation_request))
    assert core == oracle, f"core {core} != reference {oracle}"
    return core


def reason_of(mem, rtaddr, sid, iova, access, caps=vtd.DEFAULT_CAPS, **kwargs):
    kind, value = both(mem, rtaddr, sid, iova, access, caps, **kwargs)
    assert kind == "fault", value
    return value[0]


@pytest.fixture
def tv5():
    """TV5's tables, written as the spec lists them (raw bytes, no builder)."""
    mem = bytearray(0x400000)
    write64(mem, 0x3003B0, 0x301001)
    write64(mem, 0x3018A0, 0x302001)
    write64(mem, 0x3018A8, 0x4202)
    write64(mem, 0x302000, 0x303003)
    write64(mem, 0x303018, 0x304003)
    write64(mem, 0x3047A8, 0x305003)
    write64(mem, 0x3056D8, 0x777777003)
    return mem


# --- TV5 -----------------------------------------------------------------------------------------

def test_tv5_vf5_write_translates_in_six_references(tv5):
    assert both(tv5, TV5_RTADDR, TV5_SID, 0xDEADBEEF, "w") == (
        "ok", (0x777777EEF, PAGE_4K, 6, "rw", 0x42))


def test_tv5_read_too(tv5):
    assert vtd.translate(tv5, TV5_RTADDR, TV5_SID, 0xDEADBEEF, "r").hpa == 0x777777EEF


def test_tv5_indices_and_entry_addresses():
    iova = 0xDEADBEEF
    assert [(iova >> (12 + 9 * k)) & 0x1FF for k in (3, 2, 1, 0)] == [0, 3, 0xF5, 0xDB]
    assert vtd.source_id(0x3B, 0x11, 2) == TV5_SID


def test_tv5_builders_write_the_same_entries():
    mem = HostMemory(4 * MIB, table_area=(0x300000, 0x400000))
    root = RootTable(mem, mem.frames)
    tables = SecondLevelTables(mem, mem.frames, levels=4)
    tables.map(0xDEADB000, 0x777777000, PAGE_4K, "rw")
    root.attach(TV5_SID, did=0x42, tables=tables)
    assert root.root == TV5_RTADDR
    assert mem.read64(root.context_entry(TV5_SID) + 8) == 0x4202
    assert both(mem, root.root, TV5_SID, 0xDEADBEEF, "w") == (
        "ok", (0x777777EEF, PAGE_4K, 6, "rw", 0x42))


def test_a_numpy_array_is_host_memory_too(tv5):
    array = np.frombuffer(tv5, dtype=np.uint8)
    assert vtd.translate(array, TV5_RTADDR, TV5_SID, 0xDEADBEEF, "w").hpa == 0x777777EEF


# --- Fault reasons (hv.md §3.5) ---------------------------------------------------------------

def test_fr1_root_entry_not_present(tv5):
    assert reason_of(tv5, TV5_RTADDR, 0x3C00, 0x1000, "r") == FaultReason.FR_ROOT_NOT_PRESENT


def test_fr2_context_entry_not_present(tv5):
    assert reason_of(tv5, TV5_RTADDR, 0x3B8B, 0x1000, "r") == FaultReason.FR_CONTEXT_NOT_PRESENT


@pytest.mark.parametrize("hi", [0x4200, 0x4201 | 0, 0x4205, 0x4207])
def test_fr3_address_width_unsupported(tv5, hi):
    # SAGAW names 3- and 4-level tables: AW 0, 4..7 are invalid and AW 1 (3-level) is fine.
    write64(tv5, 0x3018A8, hi)
    if hi & 7 == 1:
        both(tv5, TV5_RTADDR, TV5_SID, 0x1000, "r")   # agree, whatever the 3-level walk finds
    else:
        assert reason_of(tv5, TV5_RTADDR, TV5_SID, 0x1000, "r") == FaultReason.FR_CONTEXT_INVALID


def test_fr3_five_levels_without_sagaw_bit_3(tv5):
    write64(tv5, 0x3018A8, 0x4203)
    assert reason_of(tv5, TV5_RTADDR, TV5_SID, 0x1000, "r") == FaultReason.FR_CONTEXT_INVALID


@pytest.mark.parametrize("tt, caps", [
    (TranslationType.TT_RESERVED, vtd.DEFAULT_CAPS),
    (TranslationType.TT_DEVICE_TLB, VtdCaps(device_tlb=False)),
    (TranslationType.TT_PASS_THROUGH, VtdCaps(pass_through=False)),
])
def test_fr3_translation_type_reserved_or_unsupported(tv5, tt, caps):
    write64(tv5, 0x3018A0, 0x302001 | tt << 2)
    assert reason_of(tv5, TV5_RTADDR, TV5_SID, 0x1000, "r", caps) == (
        FaultReason.FR_CONTEXT_INVALID)


def test_fr4_address_beyond_the_context_width(tv5):
    assert reason_of(tv5, TV5_RTADDR, TV5_SID, 1 << 48, "r") == FaultReason.FR_ADDRESS_BEYOND_MGAW


def test_fr4_mgaw_caps_a_wider_context():
    caps = VtdCaps(levels=(3, 4, 5), mgaw=50)
    mem = HostMemory(2 * MIB, table_area=(0, 2 * MIB))
    root = RootTable(mem, mem.frames)
    root.attach(0x10, 1, SecondLevelTables(mem, mem.frames, 5))
    assert reason_of(mem, root.root, 0x10, 1 << 50, "r", caps) == (
        FaultReason.FR_ADDRESS_BEYOND_MGAW)
    assert reason_of(mem, root.root, 0x10, 1 << 49, "r", caps) == FaultReason.FR_READ


def test_fr5_write_to_a_read_only_page_and_fr6_read_of_a_write_only_page(tv5):
    write64(tv5, 0x3056D8, 0x777777001)
    assert reason_of(tv5, TV5_RTADDR, TV5_SID, 0xDEADBEEF, "w") == FaultReason.FR_WRITE
    write64(tv5, 0x3056D8, 0x777777002)
    assert reason_of(tv5, TV5_RTADDR, TV5_SID, 0xDEADBEEF, "r") == FaultReason.FR_READ


def test_fr5_permission_is_judged_at_every_level(tv5):
    write64(tv5, 0x303018, 0x304001)     # the SL-PDPE allows reads only
    assert reason_of(tv5, TV5_RTADDR, TV5_SID, 0xDEADBEEF, "w") == FaultReason.FR_WRITE
    kind, value = both(tv5, TV5_RTADDR, TV5_SID, 0xDEADBEEF, "r")
    assert value[3] == "r"


def test_not_present_entry_is_a_permission_fault(tv5):
    # R = W = 0 is "not present" (hv.md §3.3): the walk stops with FR 5/6, 4 references in.
    kind, value = both(tv5, TV5_RTADDR, TV5_SID, 0xDEA00000 + (1 << 21) * 5, "r")
    assert (kind, value[0], value[4]) == ("fault", FaultReason.FR_READ, 5)


def test_fr7_second_level_table_outside_memory(tv5):
    write64(tv5, 0x303018, 0x7FF000003)
    assert reason_of(tv5, TV5_RTADDR, TV5_SID, 0xDEADBEEF, "r") == (
        FaultReason.FR_PAGING_ENTRY_READ)


def test_top_level_table_outside_memory_is_fr3(tv5):
    write64(tv5, 0x3018A0, 0x7FF000001)
    assert reason_of(tv5, TV5_RTADDR, TV5_SID, 0xDEADBEEF, "r") == FaultReason.FR_CONTEXT_INVALID


def test_fr8_root_table_outside_memory(tv5):
    assert reason_of(tv5, 0x7FF000, TV5_SID, 0x1000, "r") == FaultReason.FR_ROOT_TABLE_READ


def test_fr9_context_table_outside_memory(tv5):
    write64(tv5, 0x3003B0, 0x7FF001)
    assert reason_of(tv5, TV5_RTADDR, TV5_SID, 0x1000, "r") == FaultReason.FR_CONTEXT_TABLE_READ


@pytest.mark.parametrize("offset, value", [(0, 0x301003), (0, 0x301801), (8, 1),
                                           (0, 0x301001 | 1 << 46)])
def test_fr10_root_entry_reserved_bits(tv5, offset, value):
    write64(tv5, 0x3003B0 + offset, value)
    assert reason_of(tv5, TV5_RTADDR, TV5_SID, 0x1000, "r") == FaultReason.FR_ROOT_RESERVED


@pytest.mark.parametrize("offset, value", [(0, 0x302011), (0, 0x302801), (8, 0x4282),
                                           (8, 0x1004202), (0, 0x302001 | 1 << 50)])
def test_fr11_context_entry_reserved_bits(tv5, offset, value):
    write64(tv5, 0x3018A0 + offset, value)
    assert reason_of(tv5, TV5_RTADDR, TV5_SID, 0x1000, "r") == FaultReason.FR_CONTEXT_RESERVED


@pytest.mark.parametrize("address, value", [
    (0x302000, 0x303083),                 # PS in the SL-PML4E
    (0x3056D8, 0x777777803),              # SNP without ECAP.SC
    (0x304008 + 0xF5 * 8 - 8, 0x305803),  # SNP in a non-leaf entry
    (0x3056D8, 0x777777003 | 1 << 47),    # an address bit at HAW (46)
    (0x303018, 0x304003 | 1 << 62),       # TM outside a leaf
])
def test_fr12_second_level_reserved_bits(tv5, address, value):
    write64(tv5, address, value)
    assert reason_of(tv5, TV5_RTADDR, TV5_SID, 0xDEADBEEF, "r") == (
        FaultReason.FR_PAGING_ENTRY_RESERVED)


def test_ignored_and_allowed_bits_do_not_fault(tv5):
    # Bits 63 and 61:52 are ignored; TM in a leaf with ECAP.DT; SNP in a leaf with ECAP.SC; X,
    # EMT/IPAT and A/D positions (2, 6:3, 8-10) mean nothing in legacy mode.
    write64(tv5, 0x3056D8, 0x777777003 | 1 << 63 | 0x3FF << 52 | 1 << 62 | 0x77C)
    assert both(tv5, TV5_RTADDR, TV5_SID, 0xDEADBEEF, "w")[0] == "ok"
    write64(tv5, 0x3056D8, 0x777777803)
    assert both(tv5, TV5_RTADDR, TV5_SID, 0xDEADBEEF, "w", VtdCaps(snoop_control=True))[0] == "ok"


def test_fr12_permission_is_checked_before_reserved_bits(tv5):
    # hv.md §8 item 9: an entry with both problems reports the permission.
    write64(tv5, 0x3056D8, 0x777777801)
    assert reason_of(tv5, TV5_RTADDR, TV5_SID, 0xDEADBEEF, "w") == FaultReason.FR_WRITE


def test_fr13_translation_request_blocked_unless_device_tlb(tv5):
    assert reason_of(tv5, TV5_RTADDR, TV5_SID, 0xDEADBEEF, "r", translation_request=True) == (
        FaultReason.FR_TRANSLATION_BLOCKED)
    write64(tv5, 0x3018A0, 0x302005)   # TT 1
    assert both(tv5, TV5_RTADDR, TV5_SID, 0xDEADBEEF, "r", translation_request=True)[0] == "ok"


def test_fault_record_values(tv5):
    write64(tv5, 0x3056D8, 0x777777001)
    with pytest.raises(DmaFault) as fault:
        vtd.translate(tv5, TV5_RTADDR, TV5_SID, 0xDEADBEEF, "w")
    e = fault.value
    assert (e.reason, e.source_id, e.address, e.read, e.references) == (5, TV5_SID, 0xDEADB000,
                                                                        False, 6)
    assert e.record == (0xDEADB000, 1 << 63 | 5 << 32 | TV5_SID)
    with pytest.raises(DmaFault) as fault:
        vtd.translate(tv5, TV5_RTADDR, 0x3C00, 0x1234, "r")
    assert fault.value.record == (0x1000, 1 << 63 | 1 << 62 | 1 << 32 | 0x3C00)
    assert not fault.value.qualified


# --- Page sizes, depths, pass-through ----------------------------------------------------------

@pytest.fixture
def host():
    return HostMemory(4 * MIB, table_area=(0, 4 * MIB))


@pytest.mark.parametrize("levels", [3, 4, 5])
@pytest.mark.parametrize("size", [PAGE_4K, PAGE_2M, PAGE_1G])
def test_every_depth_and_page_size(host, levels, size):
    root = RootTable(host, host.frames)
    tables = SecondLevelTables(host, host.frames, levels)
    iova = 0x40000000 * 3 + size * 5 if size < PAGE_1G else PAGE_1G * 7
    tables.map(iova, 0x3_0000_0000, size, "r")
    root.attach(0x0100, 7, tables)
    result = both(host, root.root, 0x0100, iova + 0x123, "r", FIVE_LEVEL)
    refs = 2 + levels - {PAGE_4K: 0, PAGE_2M: 1, PAGE_1G: 2}[size]
    assert result[0] == "ok" and result[1][1:3] == (size, refs)
    assert reason_of(host, root.root, 0x0100, iova, "w", FIVE_LEVEL) == FaultReason.FR_WRITE


@pytest.mark.parametrize("caps, size", [(VtdCaps(page_2m=False), PAGE_2M),
                                        (VtdCaps(page_1g=False), PAGE_1G)])
def test_large_pages_the_unit_lacks_are_reserved(host, caps, size):
    root = RootTable(host, host.frames)
    tables = SecondLevelTables(host, host.frames, 4)
    tables.map(size * 3, size * 4, size)
    root.attach(0x0100, 7, tables)
    assert reason_of(host, root.root, 0x0100, size * 3, "r", caps) == (
        FaultReason.FR_PAGING_ENTRY_RESERVED)


def test_large_leaf_with_frame_bits_below_its_alignment_is_reserved(host):
    root = RootTable(host, host.frames)
    tables = SecondLevelTables(host, host.frames, 4)
    leaf = tables.map(PAGE_2M * 3, PAGE_2M * 4, PAGE_2M)
    host.write64(leaf, host.read64(leaf) | 0x1000)
    root.attach(0x0100, 7, tables)
    assert reason_of(host, root.root, 0x0100, PAGE_2M * 3, "r") == (
        FaultReason.FR_PAGING_ENTRY_RESERVED)


def test_pass_through_returns_the_iova(host):
    root = RootTable(host, host.frames)
    root.attach(0x0200, 9, None, tt=TranslationType.TT_PASS_THROUGH)
    assert both(host, root.root, 0x0200, 0x1234_5678_9ABC, "w") == (
        "ok", (0x1234_5678_9ABC, PAGE_4K, 2, "rw", 9))


# --- Caches (hv.md §3.4 reference counts) -----------------------------------------------------

def test_context_cache_hit_costs_the_levels_and_iotlb_hit_nothing(tv5):
    caches = VtdCaches()
    first = vtd.translate(tv5, TV5_RTADDR, TV5_SID, 0xDEADBEEF, "w", caches=caches)
    again = vtd.translate(tv5, TV5_RTADDR, TV5_SID, 0xDEADB000, "r", caches=caches)
    other_page = vtd.translate(tv5, TV5_RTADDR, TV5_SID, 0xDEADC000 - 0x1000, "r",
                               caches=caches)
    assert (first.references, again.references, other_page.references) == (6, 0, 0)
    write64(tv5, 0x3056E0, 0x888888003)    # the next page
    assert vtd.translate(tv5, TV5_RTADDR, TV5_SID, 0xDEADC000, "r", caches=caches) == (
        0x888888000, PAGE_4K, 4, "rw", 0x42)
    assert (caches.iotlb_hits, caches.iotlb_misses) == (2, 2)
    assert (caches.context_hits, caches.context_misses) == (1, 1)
    assert caches.iotlb_size == 2 and caches.context_size == 1


def test_a_refused_iotlb_hit_walks_and_faults(tv5):
    caches = VtdCaches()
    write64(tv5, 0x3056D8, 0x777777001)
    vtd.translate(tv5, TV5_RTADDR, TV5_SID, 0xDEADBEEF, "r", caches=caches)
    with pytest.raises(DmaFault) as fault:
        vtd.translate(tv5, TV5_RTADDR, TV5_SID, 0xDEADBEEF, "w", caches=caches)
    assert fault.value.reason == FaultReason.FR_WRITE and fault.value.references == 4


def test_faults_and_pass_through_are_not_cached(host):
    caches = VtdCaches()
    root = RootTable(host, host.frames)
    root.attach(0x0200, 9, None, tt=TranslationType.TT_PASS_THROUGH)
    vtd.translate(host, root.root, 0x0200, 0x5000, "r", caches=caches)
    with pytest.raises(DmaFault):
        vtd.translate(host, root.root, 0x0300, 0x5000, "r", caches=caches)
    assert caches.iotlb_size == 0 and caches.context_size == 1


# --- Bursts ------------------------------------------------------------------------------------

def test_burst_matches_single_translations(tv5):
    write64(tv5, 0x3056E0, 0x888888001)
    iovas = [0xDEADBEEF, 0xDEADC010, 0xDEADD000, 1 << 48]
    burst = vtd.translate_burst(tv5, TV5_RTADDR, TV5_SID, iovas, "r")
    assert list(burst.hpas) == [0x777777EEF, 0x888888010, 0, 0]
    assert list(burst.reasons) == [0, 0, FaultReason.FR_READ, FaultReason.FR_ADDRESS_BEYOND_MGAW]
    assert burst.translated == 2 and burst.references == 6 + 6 + 6 + 2
    write = vtd.translate_burst(tv5, TV5_RTADDR, TV5_SID, iovas[:2], "w", caches=VtdCaches())
    assert list(write.reasons) == [0, FaultReason.FR_WRITE]


def test_bad_arguments_are_refused(tv5):
    with pytest.raises(ValueError):
        vtd.translate(tv5, TV5_RTADDR, 1 << 16, 0, "r")
    with pytest.raises(ValueError):
        vtd.translate(tv5, TV5_RTADDR, 0, 0, "x")
    with pytest.raises(ValueError):
        vtd.translate(tv5, TV5_RTADDR | 0x400, 0, 0, "r")   # scalable-mode root table
    assert read64(tv5, 0x3056D8) == 0x777777003
