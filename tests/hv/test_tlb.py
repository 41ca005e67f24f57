"""The TLB (shared/specs/hv.md §2.6) and every invalidation path of INVEPT and INVVPID (§1.8).

A TLB keeps translations after the tables change, so each test changes a mapping behind a cached
translation and proves which invalidation makes the walker see the change, and which do not.
"""

from __future__ import annotations

import pytest

from fastpath.errors import EptViolation, InvalidInvalidation
from fastpath.hv import FrameAllocator, HostMemory, ept, paging
from fastpath.hv.ept import (
    INVEPT_ALL_CONTEXT,
    INVEPT_SINGLE_CONTEXT,
    INVVPID_ALL_CONTEXT,
    INVVPID_INDIVIDUAL_ADDRESS,
    INVVPID_SINGLE_CONTEXT,
    INVVPID_SINGLE_CONTEXT_RETAINING_GLOBALS,
    PAGE_2M,
    EptCaps,
    EptTables,
    Tlb,
)
from fastpath.hv.paging import DEFAULT_CR4, ControlBits, GuestPageTables

MIB = 1 << 20
RAM_HPA = 16 * MIB


class Rig:
    """Two EPT contexts over the same host memory, and a guest whose tables the first maps."""

    def __init__(self):
        self.mem = HostMemory(32 * MIB, table_area=(MIB, 8 * MIB))
        self.ept_a = EptTables(self.mem, self.mem.frames)
        self.ept_b = EptTables(self.mem, self.mem.frames)
        for gpa in range(0, 8 * MIB, PAGE_2M):
            self.ept_a.map(gpa, RAM_HPA + gpa, PAGE_2M)
        self.ept_b.map(0, RAM_HPA + 4 * MIB, PAGE_2M)
        frames = FrameAllocator(6 * MIB, 8 * MIB, lambda gpa: self.mem.zero_frame(RAM_HPA + gpa))
        self.guest = GuestPageTables(self.mem, frames, lambda gpa: RAM_HPA + gpa)
        self.tlb = Tlb(256)

    def gpa(self, gpa, access="r", eptp=None, **kwargs):
        return ept.walk(self.mem, eptp or self.ept_a.eptp(), gpa, access, tlb=self.tlb, **kwargs)

    def gva(self, gva, access="r", vpid=1, **kwargs):
        return paging.walk_2d(self.mem, self.ept_a.eptp(), kwargs.pop("cr3", self.guest.cr3), gva,
                              access, tlb=self.tlb, vpid=vpid, **kwargs)

    def remap_guest(self, gva, gpa):
        self.mem.write64(self.guest.entry_address(gva, 1),
                         self.mem.read64(self.guest.entry_address(gva, 1)) & 0xFFF | gpa)


@pytest.fixture
def rig():
    return Rig()


# --- Lookups and counters ----------------------------------------------------------------------

def test_a_hit_takes_no_references_and_is_counted(rig):
    first = rig.gpa(0x1234)
    second = rig.gpa(0x1238)
    assert (first.references, second.references) == (3, 0)
    assert second.hpa == RAM_HPA + 0x1238 and second.page_size == PAGE_2M
    assert (rig.tlb.hits, rig.tlb.misses, len(rig.tlb)) == (1, 1, 1)
    rig.tlb.reset_counters()
    assert (rig.tlb.hits, rig.tlb.misses) == (0, 0)


def test_guest_physical_entries_are_tagged_by_eptp(rig):
    rig.gpa(0x1000)
    other = rig.gpa(0x1000, eptp=rig.ept_b.eptp())
    assert (other.hpa, other.references) == (RAM_HPA + 4 * MIB + 0x1000, 3)


def test_a_hit_that_lacks_the_permission_walks_the_tables_again(rig):
    # SDM Vol. 3C §28.3.3: a fault is never taken on a cached translation alone.
    leaf = rig.ept_a.entry_address(0x1000, 2)
    rig.mem.write64(leaf, rig.mem.read64(leaf) & ~0x2)
    rig.gpa(0x1000)
    with pytest.raises(EptViolation) as fault:
        rig.gpa(0x1000, "w")
    assert fault.value.qualification == 0x2 | 0x28
    rig.mem.write64(leaf, rig.mem.read64(leaf) | 0x2)
    assert rig.gpa(0x1000, "w").references == 3
    assert (rig.tlb.hits, rig.tlb.misses) == (0, 3)
    assert rig.gpa(0x1000, "w").references == 0


def test_combined_entries_are_tagged_by_vpid_and_pcid(rig):
    rig.guest.map(0x7000, 0x5000)
    assert rig.gva(0x7000).references == 19
    assert rig.gva(0x7008).references == 0
    assert rig.gva(0x7008, vpid=2).references == 19
    pcid_on = DEFAULT_CR4 | ControlBits.CR4_PCIDE
    assert rig.gva(0x7008, cr4=pcid_on, cr3=rig.guest.cr3 | 5).references == 19
    assert rig.gva(0x7008, cr4=pcid_on, cr3=rig.guest.cr3 | 5).references == 0


def test_a_combined_hit_still_applies_the_guest_rights(rig):
    rig.guest.map(0x7000, 0x5000, writable=False)
    rig.gva(0x7000)
    with pytest.raises(Exception, match="#PF"):
        rig.gva(0x7000, "w")
    assert rig.gva(0x7000, "r", user=False).references == 0
    with pytest.raises(Exception, match="#PF"):
        rig.gva(0x7000, "r", user=True)


def test_a_write_hit_on_an_entry_a_read_filled_walks_again_to_set_dirty(rig):
    leaf = rig.guest.map(0x7000, 0x5000)
    rig.gva(0x7000, set_ad=True)
    assert rig.mem.read64(leaf) & 0x40 == 0
    assert rig.gva(0x7000, "w", set_ad=True).references == 19
    assert rig.mem.read64(leaf) & 0x40 == 0x40
    assert rig.gva(0x7000, "w", set_ad=True).references == 0


def test_burst_walks_fill_and_hit_the_tlb(rig):
    burst = ept.walk_burst(rig.mem, rig.ept_a.eptp(), [0x1000, 0x1000, 0x2000], "r",
                           tlb=rig.tlb)
    assert burst.translated == 3 and (rig.tlb.hits, rig.tlb.misses) == (1, 2)
    assert burst.references == 3 + 0 + 3


# --- INVEPT ------------------------------------------------------------------------------------

def test_stale_until_invept_single_context_of_that_eptp(rig):
    rig.gpa(0x1000)
    rig.ept_b.map(PAGE_2M, RAM_HPA, PAGE_2M)
    rig.gpa(0x1000, eptp=rig.ept_b.eptp())
    pde = rig.ept_a.entry_address(0x1000, 2)
    rig.mem.write64(pde, rig.mem.read64(pde) + 2 * MIB)
    assert rig.gpa(0x1000).hpa == RAM_HPA + 0x1000                # stale
    assert rig.tlb.invept(INVEPT_SINGLE_CONTEXT, rig.ept_b.eptp()) == 1
    assert rig.gpa(0x1000).hpa == RAM_HPA + 0x1000                # still stale
    assert rig.tlb.invept(INVEPT_SINGLE_CONTEXT, rig.ept_a.eptp()) == 1
    assert rig.gpa(0x1000).hpa == RAM_HPA + 2 * MIB + 0x1000


def test_invept_single_context_drops_combined_entries_of_that_eptp(rig):
    rig.guest.map(0x7000, 0x5000)
    rig.gva(0x7000)
    rig.gpa(0x1000, eptp=rig.ept_b.eptp())
    assert rig.tlb.invept(INVEPT_SINGLE_CONTEXT, rig.ept_a.eptp()) == 1
    assert rig.gva(0x7000).references == 19
    assert rig.gpa(0x1000, eptp=rig.ept_b.eptp()).references == 0


def test_invept_all_context_drops_every_context(rig):
    rig.guest.map(0x7000, 0x5000)
    rig.gva(0x7000)
    rig.gpa(0x1000)
    rig.gpa(0x1000, eptp=rig.ept_b.eptp())
    assert rig.tlb.invept(INVEPT_ALL_CONTEXT) == 3
    assert len(rig.tlb) == 0 and rig.gpa(0x1000).references == 3


# --- INVVPID -----------------------------------------------------------------------------------

def test_invvpid_individual_address_drops_that_page_of_that_vpid(rig):
    rig.guest.map(0x7000, 0x5000)
    rig.guest.map(0x8000, 0x6000)
    for vpid in (1, 2):
        rig.gva(0x7000, vpid=vpid)
        rig.gva(0x8000, vpid=vpid)
    rig.remap_guest(0x7000, 0x9000)
    assert rig.tlb.invvpid(INVVPID_INDIVIDUAL_ADDRESS, 1, 0x7FFF) == 1
    assert rig.gva(0x7000, vpid=1).gpa == 0x9000
    assert rig.gva(0x7000, vpid=2).gpa == 0x5000                  # other VPID: stale
    assert rig.gva(0x8000, vpid=1).references == 0                # other page: kept


def test_invvpid_individual_address_drops_every_piece_of_a_large_page(rig):
    rig.guest.map(PAGE_2M, 0, PAGE_2M)
    rig.gva(PAGE_2M + 0x1000)
    rig.gva(PAGE_2M + 0x1FF000)
    assert rig.tlb.invvpid(INVVPID_INDIVIDUAL_ADDRESS, 1, PAGE_2M + 0x123) == 2


def test_invvpid_single_context_drops_one_vpid(rig):
    rig.guest.map(0x7000, 0x5000)
    rig.gva(0x7000, vpid=1)
    rig.gva(0x7000, vpid=2)
    rig.gpa(0x1000)
    assert rig.tlb.invvpid(INVVPID_SINGLE_CONTEXT, 2) == 1
    assert rig.gva(0x7000, vpid=1).references == 0
    assert rig.gva(0x7000, vpid=2).references == 19
    assert rig.gpa(0x1000).references == 0                        # guest-physical: untouched


def test_invvpid_all_context_spares_vpid_0(rig):
    rig.guest.map(0x7000, 0x5000)
    for vpid in (0, 1, 2):
        rig.gva(0x7000, vpid=vpid)
    assert rig.tlb.invvpid(INVVPID_ALL_CONTEXT) == 2
    assert rig.gva(0x7000, vpid=0).references == 0


def test_invvpid_single_context_retaining_globals(rig):
    rig.guest.map(0x7000, 0x5000, global_page=True)
    rig.guest.map(0x8000, 0x6000)
    rig.gva(0x7000)
    rig.gva(0x8000)
    assert rig.tlb.invvpid(INVVPID_SINGLE_CONTEXT_RETAINING_GLOBALS, 1) == 1
    assert rig.gva(0x7000).references == 0
    assert rig.gva(0x8000).references == 19


def test_flush_linear_by_vpid_and_pcid_keeping_globals(rig):
    pcid_on = DEFAULT_CR4 | ControlBits.CR4_PCIDE
    rig.guest.map(0x7000, 0x5000, global_page=True)
    rig.guest.map(0x8000, 0x6000)
    for pcid in (1, 2):
        for gva in (0x7000, 0x8000):
            rig.gva(gva, vpid=0, cr4=pcid_on, cr3=rig.guest.cr3 | pcid)
    rig.gva(0x8000, vpid=3)
    # MOV to CR3 of PCID 1: its non-global entries go.
    assert rig.tlb.flush_linear(0, pcid=1, keep_global=True) == 1
    # VM entry with VPID off: everything of VPID 0 goes, VPID 3 stays.
    assert rig.tlb.flush_linear(0) == 3
    assert rig.gva(0x8000, vpid=3).references == 0
    assert len(rig.tlb) == 1


@pytest.mark.parametrize("call", [
    lambda t: t.invept(3),
    lambda t: t.invept(INVEPT_SINGLE_CONTEXT, 0x100000 | 0x18 | 1),  # WC: an invalid EPTP
    lambda t: t.invept(0),
    lambda t: t.invvpid(4, 1),
    lambda t: t.invvpid(INVVPID_SINGLE_CONTEXT, 0),
    lambda t: t.invvpid(INVVPID_INDIVIDUAL_ADDRESS, 0, 0x1000),
    lambda t: t.invvpid(INVVPID_INDIVIDUAL_ADDRESS, 1, 0x0100_0000_0000_0000),
    lambda t: t.invvpid(INVVPID_SINGLE_CONTEXT, 1 << 16),
])
def test_bad_operands_fail_as_vm_instruction_error_28(call):
    with pytest.raises(InvalidInvalidation) as error:
        call(Tlb(16))
    assert error.value.vm_instruction_error == 28


def test_types_the_capabilities_lack_are_refused():
    tlb = Tlb(16, EptCaps.with_features("invept", "invept_all_context", "invvpid",
                                        "invvpid_all_context"))
    assert tlb.invept(INVEPT_ALL_CONTEXT) == 0 and tlb.invvpid(INVVPID_ALL_CONTEXT) == 0
    with pytest.raises(InvalidInvalidation):
        tlb.invept(INVEPT_SINGLE_CONTEXT, 0x10001E)
    with pytest.raises(InvalidInvalidation):
        tlb.invvpid(INVVPID_SINGLE_CONTEXT, 1)
    with pytest.raises(InvalidInvalidation):
        Tlb(16, EptCaps.with_features("invept_all_context")).invept(INVEPT_ALL_CONTEXT)


def test_tlb_size_is_a_power_of_two():
    with pytest.raises(ValueError):
        Tlb(100)
    assert len(Tlb(4)) == 0


def test_a_tlb_full_of_colliding_entries_stays_correct(rig):
    tlb = Tlb(1)
    for gpa in (0x1000, 0x2000, 0x1000, 0x200000):
        t = ept.walk(rig.mem, rig.ept_a.eptp(), gpa, "r", tlb=tlb)
        assert t.hpa == RAM_HPA + gpa
    assert (tlb.hits, tlb.misses) == (0, 4)
