"""EPT walks over raw tables (shared/specs/hv.md §1.1-1.7): the worked vectors TV1 and TV2, every
violation and misconfiguration case of §1.4-1.6, A/D flags, EPTP and capability decoding.

Each case runs on the compiled walker (fastpath.hv.ept) and on the pure-Python reference
(fastpath.testing.reference.paging), which must agree on results, faults and reference counts.
"""

from __future__ import annotations

import mmap

import numpy as np
import pytest

from fastpath.errors import EptMisconfig, EptViolation, InvalidEptp, PagingStructureOutsideMemory
from fastpath.hv import FrameAllocator, HostMemory, ept
from fastpath.hv.ept import PAGE_1G, PAGE_2M, PAGE_4K, EptCaps, Eptp, EptTables, MemoryType
from fastpath.testing.reference import paging as reference

MIB = 1 << 20
TV1_EPTP = 0x10005E  # PML4 at 0x100000, WB, 4-level, A/D on


def write64(mem, hpa: int, value: int) -> None:
    mem[hpa : hpa + 8] = value.to_bytes(8, "little")


def read64(mem, hpa: int) -> int:
    return int.from_bytes(bytes(mem[hpa : hpa + 8]), "little")


def both(mem, eptp, gpa, access, caps=ept.DEFAULT_CAPS, **kwargs):
    """The core's and the reference's answer, as (kind, value) pairs that must be equal."""
    answers = []
    for walk in (_core_walk, _reference_walk):
        try:
            answers.append(("ok", walk(mem, eptp, gpa, access, caps, **kwargs)))
        except EptViolation as e:
            answers.append(("violation", (e.qualification, e.gpa, e.gla, e.references)))
        except EptMisconfig as e:
            answers.append(("misconfig", (e.gpa, e.references)))
        except PagingStructureOutsideMemory as e:
            answers.append(("outside", (e.hpa, e.references)))
    assert answers[0] == answers[1], f"core {answers[0]} != reference {answers[1]}"
    return answers[0]


def _core_walk(mem, eptp, gpa, access, caps, **kwargs):
    t = ept.walk(mem, eptp, gpa, access, caps=caps, **kwargs)
    return t.hpa, t.page_size, t.references


def _reference_walk(mem, eptp, gpa, access, caps, **kwargs):
    return reference.ept_walk(mem, eptp, gpa, access, caps_word=caps.word,
                              maxphyaddr=caps.maxphyaddr, **kwargs)


@pytest.fixture
def tv():
    """TV1 and TV2's tables, written as the spec lists them (raw bytes, no builder)."""
    mem = bytearray(8 * MIB)
    write64(mem, 0x100000, 0x101007)
    write64(mem, 0x101000, 0x102007)
    write64(mem, 0x102488, 0x42A4000B7)
    write64(mem, 0x102FF8, 0x103007)
    write64(mem, 0x103008, 0x123456035)
    return mem


# --- Worked vectors ----------------------------------------------------------------------------

def test_tv1_2mib_leaf_translates_in_three_references(tv):
    assert both(tv, TV1_EPTP, 0x12345678, "r") == ("ok", (0x42A545678, PAGE_2M, 3))
    assert ept.walk(tv, TV1_EPTP, 0x12345678, "r").permissions == "rwx"


def test_tv1_walks_are_pure_unless_asked(tv):
    before = bytes(tv)
    ept.walk(tv, TV1_EPTP, 0x12345678, "w")
    assert bytes(tv) == before


def test_tv1_write_with_ad_sets_accessed_everywhere_and_dirty_in_the_leaf(tv):
    ept.walk(tv, TV1_EPTP, 0x12345678, "w", set_ad=True)
    assert [read64(tv, a) for a in (0x100000, 0x101000, 0x102488)] == [
        0x101107, 0x102107, 0x42A4003B7]


def test_ad_read_sets_accessed_only(tv):
    ept.walk(tv, TV1_EPTP, 0x12345678, "r", set_ad=True)
    assert read64(tv, 0x102488) == 0x42A4001B7


def test_ad_flags_are_left_alone_when_eptp_bit_6_is_clear(tv):
    before = bytes(tv)
    ept.walk(tv, TV1_EPTP & ~0x40, 0x12345678, "w", set_ad=True)
    assert bytes(tv) == before


def test_ad_flags_are_not_set_by_a_failing_walk(tv):
    before = bytes(tv)
    with pytest.raises(EptViolation):
        ept.walk(tv, TV1_EPTP, 0x3FE01ABC, "w", set_ad=True)
    assert bytes(tv) == before


def test_tv2_read_and_fetch_of_a_read_execute_page(tv):
    assert both(tv, TV1_EPTP, 0x3FE01ABC, "r") == ("ok", (0x123456ABC, PAGE_4K, 4))
    assert both(tv, TV1_EPTP, 0x3FE01ABC, "x") == ("ok", (0x123456ABC, PAGE_4K, 4))


def test_tv2a_write_to_read_execute_page_final_access(tv):
    assert both(tv, TV1_EPTP, 0x3FE01ABC, "w", guest_access="final", gla=0x7000) == (
        "violation", (0x1AA, 0x3FE01ABC, 0x7000, 4))
    with pytest.raises(EptViolation) as exit_:
        ept.walk(tv, TV1_EPTP, 0x3FE01ABC, "w")
    assert exit_.value.exit_reason == 48


def test_shared_host_memory_is_the_same_bytes_through_its_fd():
    mem = HostMemory(4 * MIB, shared=True, table_area=(MIB, 2 * MIB))
    tables = EptTables(mem, mem.frames)
    leaf = tables.map(0x5000, 0x3000, PAGE_4K, "rw")
    with mmap.mmap(mem.fd, len(mem)) as other:
        assert int.from_bytes(other[leaf : leaf + 8], "little") == 0x3000 | 0x33
        other[leaf : leaf + 8] = (0x9000 | 0x37).to_bytes(8, "little")
    assert ept.walk(mem, tables.eptp(), 0x5004, "x").hpa == 0x9004
    mem.close()


def test_tv2b_not_present_pdpte_final_access(tv):
    assert both(tv, TV1_EPTP, 0x80001000, "r", guest_access="final", gla=0x1000) == (
        "violation", (0x181, 0x80001000, 0x1000, 2))


def test_tv2c_not_present_pdpte_during_a_guest_page_walk(tv):
    assert both(tv, TV1_EPTP, 0x80001000, "r", guest_access="paging", gla=0x1000) == (
        "violation", (0x81, 0x80001000, 0x1000, 2))


def test_tv2d_not_present_pdpte_without_a_linear_address(tv):
    assert both(tv, TV1_EPTP, 0x80001000, "r") == ("violation", (0x1, 0x80001000, None, 2))


def test_builder_writes_tv1_byte_for_byte():
    mem = HostMemory(8 * MIB, table_area=(0x100000, 0x200000))
    tables = EptTables(mem, mem.frames)
    leaf = tables.map(0x12200000, 0x42A400000, PAGE_2M, "rwx")
    assert leaf == 0x102488
    assert [mem.read64(a) for a in (0x100000, 0x101000, 0x102488)] == [
        0x101007, 0x102007, 0x42A4000B7]
    assert tables.eptp(accessed_dirty=True) == TV1_EPTP


# --- Violations: permissions are judged on the AND of every level (§1.4, §1.5) ---------------

@pytest.mark.parametrize("perms,access,qualification", [
    ("r", "w", 0x2 | 0x08),
    ("r", "x", 0x4 | 0x08),
    ("rw", "x", 0x4 | 0x18),
    ("x", "r", 0x1 | 0x20),
    ("x", "w", 0x2 | 0x20),
    ("rx", "w", 0x2 | 0x28),
])
def test_leaf_permissions_refuse_the_access(perms, access, qualification):
    mem = HostMemory(4 * MIB, table_area=(MIB, 2 * MIB))
    tables = EptTables(mem, mem.frames)
    tables.map(0x5000, 0x3000, PAGE_4K, perms)
    assert both(mem.array, tables.eptp(), 0x5123, access) == (
        "violation", (qualification, 0x5123, None, 4))


def test_a_read_only_upper_level_refuses_a_write_the_leaf_allows():
    mem = HostMemory(4 * MIB, table_area=(MIB, 2 * MIB))
    tables = EptTables(mem, mem.frames)
    tables.map(0x5000, 0x3000, PAGE_4K, "rwx")
    pdpte = tables.entry_address(0x5000, 3)
    mem.write64(pdpte, mem.read64(pdpte) & ~0x2)
    assert both(mem.array, tables.eptp(), 0x5000, "w") == (
        "violation", (0x2 | 0x28, 0x5000, None, 4))
    assert both(mem.array, tables.eptp(), 0x5000, "r")[0] == "ok"


def test_execute_only_page_with_the_capability():
    mem = HostMemory(4 * MIB, table_area=(MIB, 2 * MIB))
    tables = EptTables(mem, mem.frames)
    tables.map(0x5000, 0x3000, PAGE_4K, "x")
    assert both(mem.array, tables.eptp(), 0x5000, "x") == ("ok", (0x3000, PAGE_4K, 4))


# --- Misconfigurations (§1.6) ------------------------------------------------------------------

def _one_page(perms="rwx", size=PAGE_4K, **kwargs):
    mem = HostMemory(4 * MIB, table_area=(MIB, 2 * MIB))
    tables = EptTables(mem, mem.frames)
    leaf = tables.map(0, 0x200000 if size == PAGE_2M else 0, size, perms, **kwargs)
    return mem, tables, leaf


@pytest.mark.parametrize("xwr", [0b010, 0b110])
def test_write_without_read_is_a_misconfiguration_at_any_level(xwr):
    for level in (1, 2, 3, 4):
        mem, tables, _ = _one_page()
        at = tables.entry_address(0, level)
        mem.write64(at, mem.read64(at) & ~7 | xwr)
        kind, (gpa, refs) = both(mem.array, tables.eptp(), 0x10, "r")
        assert (kind, gpa, refs) == ("misconfig", 0x10, 5 - level)


def test_kvm_mmio_trap_pattern_is_a_misconfiguration():
    # hv.md §1.6: XWR = 110 is KVM's deliberate MMIO trap.
    mem, tables, leaf = _one_page()
    mem.write64(leaf, mem.read64(leaf) & ~7 | 0b110)
    with pytest.raises(EptMisconfig) as fault:
        ept.walk(mem, tables.eptp(), 0x40, "w")
    assert (fault.value.gpa, fault.value.qualification, fault.value.exit_reason) == (0x40, 0, 49)


def test_execute_only_without_the_capability_is_a_misconfiguration():
    mem, tables, _ = _one_page("x")
    caps = EptCaps(ept.DEFAULT_CAPS.word & ~1)
    assert both(mem.array, tables.eptp(), 0, "x", caps)[0] == "misconfig"


@pytest.mark.parametrize("memory_type", [2, 3, 7])
def test_reserved_leaf_memory_types(memory_type):
    mem, tables, _ = _one_page(memory_type=memory_type)
    assert both(mem.array, tables.eptp(), 0, "r")[0] == "misconfig"


@pytest.mark.parametrize("memory_type", list(MemoryType))
def test_every_defined_leaf_memory_type_walks(memory_type):
    mem, tables, _ = _one_page(memory_type=memory_type)
    assert both(mem.array, tables.eptp(), 0, "r")[0] == "ok"


def test_memory_type_bits_of_a_non_leaf_entry_are_reserved():
    mem, tables, _ = _one_page()
    pde = tables.entry_address(0, 2)
    mem.write64(pde, mem.read64(pde) | 6 << 3)
    assert both(mem.array, tables.eptp(), 0, "r") == ("misconfig", (0, 3))


@pytest.mark.parametrize("level", [4, 5])
def test_page_size_bit_is_reserved_in_pml4e_and_pml5e(level):
    mem = HostMemory(4 * MIB, table_area=(MIB, 2 * MIB))
    tables = EptTables(mem, mem.frames, levels=5)
    tables.map(0, 0, PAGE_4K)
    at = tables.entry_address(0, level)
    mem.write64(at, mem.read64(at) | 0x80)
    caps = EptCaps.with_features("walk_length_4", "walk_length_5", "eptp_wb", "page_2m",
                                 "page_1g", "execute_only")
    assert both(mem.array, tables.eptp(), 0, "r", caps) == ("misconfig", (0, 6 - level))


def test_address_bits_beyond_maxphyaddr_are_reserved():
    mem, tables, leaf = _one_page()
    mem.write64(leaf, mem.read64(leaf) | 1 << 46)
    assert both(mem.array, tables.eptp(), 0, "r")[0] == "misconfig"
    # With MAXPHYADDR 52 the same bit is an address bit.
    caps = EptCaps(ept.DEFAULT_CAPS.word, maxphyaddr=52)
    assert both(mem.array, tables.eptp(), 0, "r", caps) == ("ok", (1 << 46, PAGE_4K, 4))


@pytest.mark.parametrize("size,bit", [(PAGE_2M, 12), (PAGE_2M, 20), (PAGE_1G, 12),
                                      (PAGE_1G, 29)])
def test_large_leaf_frame_bits_below_its_alignment_are_reserved(size, bit):
    mem = HostMemory(4 * MIB, table_area=(MIB, 2 * MIB))
    tables = EptTables(mem, mem.frames)
    leaf = tables.map(0, 0, size)
    mem.write64(leaf, mem.read64(leaf) | 1 << bit)
    assert both(mem.array, tables.eptp(), 0, "r")[0] == "misconfig"


@pytest.mark.parametrize("size,cap", [(PAGE_2M, "page_2m"), (PAGE_1G, "page_1g")])
def test_large_pages_need_their_capability(size, cap):
    mem = HostMemory(4 * MIB, table_area=(MIB, 2 * MIB))
    tables = EptTables(mem, mem.frames)
    tables.map(0, 0, size)
    references = {PAGE_2M: 3, PAGE_1G: 2}[size]
    assert both(mem.array, tables.eptp(), 0x1234, "r") == ("ok", (0x1234, size, references))
    word = ept.DEFAULT_CAPS.word & ~(1 << ept.CAP_BITS[cap])
    assert both(mem.array, tables.eptp(), 0x1234, "r", EptCaps(word))[0] == "misconfig"


def test_ignored_bits_do_not_misconfigure():
    # Bits 11:10, 52:62 and 63 (suppress #VE) are ignored without their features (§1.3).
    mem, tables, leaf = _one_page()
    mem.write64(leaf, mem.read64(leaf) | 0xC00 | 0x7FF << 52 | 1 << 63)
    assert both(mem.array, tables.eptp(), 0, "r") == ("ok", (0, PAGE_4K, 4))


def test_a_not_present_entry_wins_over_reserved_bits_in_it():
    mem, tables, leaf = _one_page()
    mem.write64(leaf, 0xF8 | 1 << 50)
    assert both(mem.array, tables.eptp(), 0, "r") == ("violation", (1, 0, None, 4))


# --- 5-level walks and bad input ---------------------------------------------------------------

def test_five_level_walk_takes_five_references():
    caps = EptCaps.with_features("walk_length_5", "eptp_wb", "page_2m", "page_1g",
                                 maxphyaddr=52)
    mem = HostMemory(4 * MIB, table_area=(MIB, 2 * MIB))
    tables = EptTables(mem, mem.frames, levels=5)
    gpa = 1 << 50 | 0x7000
    tables.map(gpa, 0x3000, PAGE_4K)
    assert both(mem.array, tables.eptp(), gpa + 5, "r", caps) == ("ok", (0x3005, PAGE_4K, 5))
    # Without the capability, a 5-level EPTP is refused; beyond MAXPHYADDR, a GPA is.
    with pytest.raises(InvalidEptp, match="walk length"):
        ept.walk(mem, tables.eptp(), 0, "r")
    with pytest.raises(ValueError, match="MAXPHYADDR"):
        ept.walk(mem, tables.eptp(), gpa, "r", caps=EptCaps(caps.word))


def test_a_table_outside_host_memory_is_reported_not_read():
    mem = bytearray(2 * MIB)
    write64(mem, 0x100000, 0x7FFFF000 | 7)
    assert both(mem, 0x10001E, 0, "r") == ("outside", (0x7FFFF000, 1))


@pytest.mark.parametrize("kind", [bytearray, "numpy", "host"])
def test_every_kind_of_host_buffer_walks_the_same(tv, kind):
    if kind == "numpy":
        mem = np.frombuffer(tv, dtype=np.uint8)
    elif kind == "host":
        mem = HostMemory(len(tv), shared=True)
        mem.array[:] = np.frombuffer(tv, dtype=np.uint8)
    else:
        mem = tv
    assert ept.walk(mem, TV1_EPTP, 0x12345678, "r").hpa == 0x42A545678


def test_read_only_buffers_and_bad_access_letters_are_refused(tv):
    with pytest.raises(TypeError):
        ept.walk(bytes(tv), TV1_EPTP, 0, "r")
    with pytest.raises(ValueError):
        ept.walk(tv, TV1_EPTP, 0, "rw")
    with pytest.raises(ValueError):
        ept.walk(tv, TV1_EPTP, 1 << 46, "r")


def test_burst_walks_every_address_as_single_walks_do(tv):
    gpas = [0x12345678, 0x3FE01ABC, 0x80001000, 0x12200000]
    burst = ept.walk_burst(tv, TV1_EPTP, gpas, "r")
    assert list(burst.hpas) == [0x42A545678, 0x123456ABC, 0, 0x42A400000]
    assert list(burst.codes) == [0, 0, 1, 0] and burst.translated == 3
    assert burst.references == 3 + 4 + 2 + 3
    with pytest.raises(ValueError, match="MAXPHYADDR"):
        ept.walk_burst(tv, TV1_EPTP, [0, 1 << 46], "r")


# --- EPTP and capabilities (§1.1, §1.2) --------------------------------------------------------

def test_tv1_eptp_decodes():
    assert Eptp.decode(TV1_EPTP, ept.DEFAULT_CAPS) == Eptp(0x100000, 4, MemoryType.WB, True)


@pytest.mark.parametrize("value,why", [
    (0x100018 | 1, "memory type"),             # WC: not UC or WB
    (0x100006 | 1 << 3, "walk length"),         # page-walk length 2
    (0x10001E | 0x80, "reserved"),              # SSS without the capability
    (0x10001E | 0x100, "reserved"),
    (0x10001E | 1 << 46, "MAXPHYADDR"),
])
def test_invalid_eptps_are_refused_with_the_field_named(value, why):
    with pytest.raises(InvalidEptp, match=why):
        Eptp.decode(value, ept.DEFAULT_CAPS)


def test_eptp_features_follow_the_capability_word():
    no_uc = EptCaps.with_features("walk_length_4", "eptp_wb")
    with pytest.raises(InvalidEptp, match="memory type"):
        Eptp.decode(0x100018, no_uc)
    with pytest.raises(InvalidEptp, match="accessed and dirty"):
        Eptp.decode(0x10005E, no_uc)
    with pytest.raises(InvalidEptp, match="walk length"):
        Eptp.decode(0x100026, no_uc)
    assert Eptp.decode(0x10001E | 0x80, ept.DEFAULT_CAPS, shadow_stack=True).supervisor_shadow_stack


def test_capability_word_bit_numbers():
    # hv.md §1.2, checked bit by bit against the MSR layout.
    caps = EptCaps.with_features("execute_only", "walk_length_4", "eptp_wb", "page_2m",
                                 "page_1g", "accessed_dirty", "invvpid")
    assert caps.word == 1 | 1 << 6 | 1 << 14 | 1 << 16 | 1 << 17 | 1 << 21 | 1 << 32
    assert ept.IA32_VMX_EPT_VPID_CAP == 0x48C
    with pytest.raises(ValueError):
        EptCaps.with_features("teleport")


def test_builder_refuses_misaligned_and_overlapping_pages():
    mem = HostMemory(4 * MIB, table_area=(MIB, 2 * MIB))
    tables = EptTables(mem, mem.frames)
    with pytest.raises(ValueError):
        tables.map(0x1000, 0, PAGE_2M)
    tables.map(0, 0, PAGE_2M)
    with pytest.raises(ValueError, match="larger page"):
        tables.map(0x1000, 0, PAGE_4K)


def test_frame_allocator_runs_out_cleanly_and_reuses_freed_frames():
    zeroed = []
    frames = FrameAllocator(0x1000, 0x3000, zeroed.append)
    a, b = frames.alloc(), frames.alloc()
    with pytest.raises(MemoryError):
        frames.alloc()
    frames.free(a)
    assert frames.alloc() == a and zeroed == [a, b, a]


@pytest.mark.parametrize("size", [0, 4, 7])
def test_tiny_host_memory_is_a_read_error_not_a_crash(size):
    with pytest.raises(PagingStructureOutsideMemory) as fault:
        ept.walk(bytearray(size), 0x1E, 0x1000, "r")
    assert (fault.value.hpa, fault.value.references) == (0, 0)


def test_strided_or_wide_arrays_are_refused_as_host_memory():
    with pytest.raises(TypeError):
        ept.walk(np.zeros(8192, dtype=np.uint8)[::2], 0x1E, 0, "r")
    with pytest.raises(TypeError):
        ept.walk(np.zeros(1024, dtype=np.uint64), 0x1E, 0, "r")
