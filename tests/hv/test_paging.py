"""Guest IA-32e paging and the 2-D walk (shared/specs/hv.md §1.9, §1.10): TV4, the reference-count
formula (n+1)(m+1)-1, guest page faults with their error codes (SDM Vol. 3A §4.6, §4.7), EPT
exits raised while walking the guest's tables, and A/D flags in both dimensions.

Each case runs on the compiled walker and on the pure-Python reference, which must agree.
"""

from __future__ import annotations

import numpy as np
import pytest

from fastpath.errors import (
    EptMisconfig,
    EptViolation,
    GuestPageFault,
    NonCanonicalAddress,
    PagingStructureOutsideMemory,
)
from fastpath.hv import FrameAllocator, HostMemory, ept, paging
from fastpath.hv.ept import PAGE_1G, PAGE_2M, PAGE_4K, EptCaps, EptTables
from fastpath.hv.paging import DEFAULT_CR0, DEFAULT_CR4, DEFAULT_EFER, ControlBits, GuestPageTables
from fastpath.testing.reference import paging as reference

MIB = 1 << 20
RAM_HPA = 32 * MIB        # guest-physical 0 lives here
RAM_SIZE = 32 * MIB
TABLES_GPA = 16 * MIB     # where the guest keeps its page tables

FIVE_LEVEL_CAPS = EptCaps(ept.DEFAULT_CAPS.word | 1 << ept.CAP_BITS["walk_length_5"])


def both(mem, eptp, cr3, gva, access, **kwargs):
    """The core's and the reference's answer, as (kind, value) pairs that must be equal."""
    caps = kwargs.pop("caps", FIVE_LEVEL_CAPS)
    regs = {"cr0": kwargs.pop("cr0", DEFAULT_CR0), "cr4": kwargs.pop("cr4", DEFAULT_CR4),
            "efer": kwargs.pop("efer", DEFAULT_EFER)}
    answers = []
    for walk in ("core", "reference"):
        try:
            if walk == "core":
                t = paging.walk_2d(mem, eptp, cr3, gva, access, caps=caps, **regs, **kwargs)
                answers.append(("ok", (t.hpa, t.gpa, t.page_size, t.references)))
            else:
                answers.append(("ok", reference.walk_2d(mem, eptp, cr3, gva, access, **regs,
                                                        caps_word=caps.word, **kwargs)))
        except GuestPageFault as e:
            answers.append(("#PF", (e.error_code, e.gva, e.references)))
        except EptViolation as e:
            answers.append(("violation", (e.qualification, e.gpa, e.gla, e.references)))
        except EptMisconfig as e:
            answers.append(("misconfig", (e.gpa, e.references)))
        except NonCanonicalAddress as e:
            answers.append(("#GP", e.gva))
        except PagingStructureOutsideMemory as e:
            answers.append(("outside", (e.hpa, e.references)))
    assert answers[0] == answers[1], f"core {answers[0]} != reference {answers[1]}"
    return answers[0]


class Guest:
    """A guest whose RAM [0, 32 MiB) EPT maps at HPA 32 MiB, with its own page tables."""

    def __init__(self, ept_page=PAGE_2M, ept_levels=4, guest_levels=4, ept_ad=False):
        self.mem = HostMemory(RAM_HPA + RAM_SIZE, table_area=(MIB, 16 * MIB))
        self.ept = EptTables(self.mem, self.mem.frames, ept_levels)
        for gpa in range(0, RAM_SIZE, ept_page):
            self.ept.map(gpa, RAM_HPA + gpa, ept_page)
        self.eptp = self.ept.eptp(accessed_dirty=ept_ad)
        frames = FrameAllocator(TABLES_GPA, TABLES_GPA + 4 * MIB,
                                lambda gpa: self.mem.zero_frame(RAM_HPA + gpa))
        self.tables = GuestPageTables(self.mem, frames, lambda gpa: RAM_HPA + gpa, guest_levels)
        self.cr4 = DEFAULT_CR4 | (ControlBits.CR4_LA57 if guest_levels == 5 else 0)

    def walk(self, gva, access="r", **kwargs):
        kwargs.setdefault("cr4", self.cr4)
        return both(self.mem.array, self.eptp, self.tables.cr3, gva, access, **kwargs)

    def entry(self, gva, level):
        return self.tables.entry_address(gva, level)

    def poke(self, hpa, set_bits=0, clear_bits=0):
        self.mem.write64(hpa, self.mem.read64(hpa) & ~clear_bits | set_bits)


# --- TV4 and the reference count -------------------------------------------------------------

def test_tv4_user_read_through_a_1gib_ept_leaf_takes_14_references():
    # HPAs above 4 GiB: numpy's zeroed pages cost nothing until written.
    mem = np.zeros(0x10AC00000, dtype=np.uint8)
    for hpa, value in [(0x200000, 0x201007), (0x201000, 0x1000000B7),
                       (0x1000017F0, 0x2027), (0x100002240, 0x3027), (0x100003D10, 0x4027),
                       (0x100004B38, 0x800000000ABCD067)]:
        mem[hpa : hpa + 8] = np.frombuffer(value.to_bytes(8, "little"), dtype=np.uint8)
    assert both(mem, 0x20001E, 0x1000, 0x00007F123456789A, "r", user=True) == (
        "ok", (0x10ABCD89A, 0xABCD89A, PAGE_4K, 14))
    # The PTE's XD refuses a fetch: P | U | I/D.
    assert both(mem, 0x20001E, 0x1000, 0x00007F123456789A, "x", user=True) == (
        "#PF", (0x15, 0x00007F123456789A, 12))


@pytest.mark.parametrize("guest_levels,ept_levels,ept_page,references", [
    (4, 4, PAGE_4K, 24),
    (5, 4, PAGE_4K, 29),
    (5, 5, PAGE_4K, 35),
    (4, 5, PAGE_4K, 29),
    (4, 4, PAGE_2M, 19),
    (5, 4, PAGE_2M, 23),
])
def test_worst_case_references_are_n_plus_1_times_m_plus_1_minus_1(guest_levels, ept_levels,
                                                                     ept_page, references):
    g = Guest(ept_page, ept_levels, guest_levels)
    g.tables.map(0x7000, 0x5000)
    kind, (hpa, gpa, size, refs) = g.walk(0x7123)
    assert (kind, hpa, gpa, size, refs) == ("ok", RAM_HPA + 0x5123, 0x5123, PAGE_4K, references)


@pytest.mark.parametrize("size", [PAGE_2M, PAGE_1G])
def test_guest_large_pages_shorten_the_walk(size):
    g = Guest(PAGE_2M)
    g.tables.map(0, 0, size)
    guest_refs = {PAGE_2M: 3, PAGE_1G: 2}[size]
    assert g.walk(0x1234) == ("ok", (RAM_HPA + 0x1234, 0x1234, PAGE_2M,
                                     guest_refs * 4 + 3))


def test_higher_half_addresses_walk_and_non_canonical_ones_raise_gp():
    g = Guest()
    gva = 0xFFFF_8000_0000_1000
    g.tables.map(gva, 0x3000)
    assert g.walk(gva + 8)[1][:2] == (RAM_HPA + 0x3008, 0x3008)
    assert g.walk(0x0000_8000_0000_0000) == ("#GP", 0x0000_8000_0000_0000)
    assert g.walk(0xFFFF_0000_0000_0000) == ("#GP", 0xFFFF_0000_0000_0000)
    # With LA57 the same address is canonical (and unmapped).
    g5 = Guest(guest_levels=5)
    assert g5.walk(0xFFFF_0000_0000_0000)[0] == "#PF"


# --- Guest page faults (SDM Vol. 3A §4.7) ------------------------------------------------------

@pytest.mark.parametrize("level", [4, 3, 2, 1])
@pytest.mark.parametrize("access,user,code", [("r", False, 0), ("w", False, 2), ("r", True, 4),
                                              ("x", True, 0x14)])
def test_not_present_at_any_level(level, access, user, code):
    g = Guest()
    g.tables.map(0x7000, 0x5000, user=True)
    g.poke(g.entry(0x7000, level), clear_bits=1)
    kind, (error_code, gva, refs) = g.walk(0x7000, access, user=user)
    assert (kind, error_code, gva, refs) == ("#PF", code, 0x7000, (5 - level) * 4)


@pytest.mark.parametrize("writable,user_page,access,user,cr0,fault", [
    (False, True, "w", True, DEFAULT_CR0, 0x7),                     # user write, read-only
    (True, False, "r", True, DEFAULT_CR0, 0x5),                     # user read, supervisor page
    (False, False, "w", False, DEFAULT_CR0, 0x3),                   # CR0.WP = 1
    (False, False, "w", False, DEFAULT_CR0 & ~ControlBits.CR0_WP, None),  # CR0.WP = 0
    (False, True, "w", True, DEFAULT_CR0 & ~ControlBits.CR0_WP, 0x7),     # WP spares no user
    (True, True, "w", False, DEFAULT_CR0, None),                    # supervisor on user page
])
def test_user_supervisor_and_write_protection(writable, user_page, access, user, cr0, fault):
    g = Guest()
    g.tables.map(0x7000, 0x5000, writable=writable, user=user_page)
    kind, value = g.walk(0x7000, access, user=user, cr0=cr0)
    assert (kind, value[0]) == (("#PF", fault) if fault else ("ok", RAM_HPA + 0x5000))


def test_rights_and_over_levels_and_xd_ors():
    g = Guest()
    g.tables.map(0x7000, 0x5000, user=True)
    g.poke(g.entry(0x7000, 3), clear_bits=0x2)                    # PDPTE read-only
    assert g.walk(0x7000, "w", user=True)[1][0] == 0x7
    g.poke(g.entry(0x7000, 4), set_bits=1 << 63)                  # PML4E XD
    assert g.walk(0x7000, "x", user=True)[1][0] == 0x15
    assert g.walk(0x7000, "r", user=True)[0] == "ok"


def test_xd_without_efer_nxe_is_a_reserved_bit():
    g = Guest()
    g.tables.map(0x7000, 0x5000, executable=False)
    efer = DEFAULT_EFER & ~ControlBits.EFER_NXE
    # P | RSVD; no I/D for a fetch without NXE or SMEP.
    assert g.walk(0x7000, "r", efer=efer)[1][0] == 0x9
    assert g.walk(0x7000, "x", efer=efer)[1][0] == 0x9
    assert g.walk(0x7000, "x", efer=efer, cr4=DEFAULT_CR4 | ControlBits.CR4_SMEP)[1][0] == 0x19


@pytest.mark.parametrize("level,bits", [(4, 0x80), (1, 1 << 46), (3, 1 << 51)])
def test_reserved_bits_in_guest_entries(level, bits):
    g = Guest()
    g.tables.map(0x7000, 0x5000)
    g.poke(g.entry(0x7000, level), set_bits=bits)
    assert g.walk(0x7000, "w")[1][0] == 0xB      # P | W | RSVD


@pytest.mark.parametrize("size,bit", [(PAGE_2M, 13), (PAGE_2M, 20), (PAGE_1G, 13),
                                      (PAGE_1G, 29)])
def test_large_guest_leaf_bits_below_alignment_are_reserved(size, bit):
    g = Guest()
    leaf = g.tables.map(0, 0, size)
    g.poke(leaf, set_bits=1 << bit)
    assert g.walk(0x10)[1][0] == 0x9
    # Bit 12 is the large page's PAT bit, not reserved.
    g.poke(leaf, clear_bits=1 << bit, set_bits=1 << 12)
    assert g.walk(0x10)[0] == "ok"


def test_smep_refuses_supervisor_fetches_from_user_pages():
    g = Guest()
    g.tables.map(0x7000, 0x5000, user=True)
    cr4 = DEFAULT_CR4 | ControlBits.CR4_SMEP
    assert g.walk(0x7000, "x")[0] == "ok"
    assert g.walk(0x7000, "x", cr4=cr4)[1][0] == 0x11
    assert g.walk(0x7000, "x", cr4=cr4, user=True)[0] == "ok"


def test_smap_refuses_supervisor_data_accesses_to_user_pages_unless_ac():
    g = Guest()
    g.tables.map(0x7000, 0x5000, user=True)
    cr4 = DEFAULT_CR4 | ControlBits.CR4_SMAP
    assert g.walk(0x7000, "r", cr4=cr4)[1][0] == 0x1
    assert g.walk(0x7000, "w", cr4=cr4)[1][0] == 0x3
    assert g.walk(0x7000, "w", cr4=cr4, smap_ac=True)[0] == "ok"
    assert g.walk(0x7000, "x", cr4=cr4)[0] == "ok"


# --- EPT exits inside the 2-D walk -------------------------------------------------------------

def test_ept_violation_on_a_guest_table_read_says_paging_access():
    g = Guest(PAGE_4K)
    g.tables.map(0x7000, 0x5000)
    pd_gpa = g.mem.read64(g.entry(0x7000, 3)) & ~0xFFF
    g.poke(g.ept.entry_address(pd_gpa, 1), clear_bits=7)        # the guest PD's page is gone
    kind, (qualification, gpa, gla, refs) = g.walk(0x7000, "w")
    assert (kind, qualification, gpa, gla) == ("violation", 0x81, pd_gpa + 0, 0x7000)
    assert refs == 2 * 5 + 4


def test_with_ept_ad_guest_table_reads_are_writes():
    # SDM Vol. 3C §28.2.3.2 and the footnote to Table 27-7: a guest paging-structure access
    # with EPT A/D on is treated as a write, and its violation sets both access bits.
    g = Guest(PAGE_4K, ept_ad=True)
    g.tables.map(0x7000, 0x5000)
    pd_gpa = g.mem.read64(g.entry(0x7000, 3)) & ~0xFFF
    g.poke(g.ept.entry_address(pd_gpa, 1), clear_bits=2)        # read-only, not writable
    kind, (qualification, gpa, _, _) = g.walk(0x7000, "r")
    assert (kind, qualification, gpa) == ("violation", 0x3 | 0x28 | 0x80, pd_gpa)
    g_off = Guest(PAGE_4K, ept_ad=False)
    g_off.tables.map(0x7000, 0x5000)
    g_off.poke(g_off.ept.entry_address(pd_gpa, 1), clear_bits=2)
    assert g_off.walk(0x7000, "r")[0] == "ok"


def test_ept_violation_on_the_final_access_says_translated():
    g = Guest(PAGE_4K)
    g.tables.map(0x7000, 0x5000)
    g.poke(g.ept.entry_address(0x5000, 1), clear_bits=2)
    assert g.walk(0x7010, "w") == ("violation", (0x2 | 0x28 | 0x180, 0x5010, 0x7010, 24))


def test_ept_misconfiguration_on_a_guest_table_page():
    g = Guest(PAGE_4K)
    g.tables.map(0x7000, 0x5000)
    g.poke(g.ept.entry_address(g.tables.cr3, 1), clear_bits=1)  # XWR = 110
    assert g.walk(0x7000) == ("misconfig", (g.tables.cr3 + 0, 4))


def test_guest_table_pointing_outside_host_memory():
    g = Guest(PAGE_2M)
    g.tables.map(0x7000, 0x5000)
    # EPT maps the 2 MiB page of guest tables to an HPA beyond host memory: the first guest
    # read (the PML4E, after its 3-reference EPT walk) is the one that cannot be made.
    g.poke(g.ept.entry_address(g.tables.cr3, 2), set_bits=1 << 40)
    kind, (hpa, refs) = g.walk(0x7000)
    assert kind == "outside" and hpa == (1 << 40) + RAM_HPA + g.tables.cr3 + 0 and refs == 3


# --- A/D flags (SDM Vol. 3A §4.8; hv.md §1.7) -------------------------------------------------

def test_guest_and_ept_ad_flags_are_set_only_when_asked():
    g = Guest(PAGE_4K, ept_ad=True)
    leaf = g.tables.map(0x7000, 0x5000)
    before = g.mem.array.copy()
    paging.walk_2d(g.mem, g.eptp, g.tables.cr3, 0x7000, "w", caps=FIVE_LEVEL_CAPS)
    assert np.array_equal(before, g.mem.array)
    paging.walk_2d(g.mem, g.eptp, g.tables.cr3, 0x7000, "w", caps=FIVE_LEVEL_CAPS, set_ad=True)
    assert g.mem.read64(leaf) & 0x60 == 0x60                      # guest PTE: A and D
    for level in (4, 3, 2):
        assert g.mem.read64(g.entry(0x7000, level)) & 0x60 == 0x20   # A only
    # EPT: the data page dirty, and the guest table pages dirty too (reads count as writes).
    assert g.mem.read64(g.ept.entry_address(0x5000, 1)) & 0x300 == 0x300
    pt_gpa = g.mem.read64(g.entry(0x7000, 2)) & ~0xFFF
    assert g.mem.read64(g.ept.entry_address(pt_gpa, 1)) & 0x300 == 0x300


def test_a_read_sets_no_dirty_flag():
    g = Guest(PAGE_4K)
    leaf = g.tables.map(0x7000, 0x5000)
    paging.walk_2d(g.mem, g.eptp, g.tables.cr3, 0x7000, "r", caps=FIVE_LEVEL_CAPS, set_ad=True)
    assert g.mem.read64(leaf) & 0x60 == 0x20
    # EPTP without A/D: the EPT entries stay as built.
    assert g.mem.read64(g.ept.entry_address(0x5000, 1)) & 0x300 == 0


def test_2d_burst_matches_single_walks():
    g = Guest()
    g.tables.map(0x7000, 0x5000)
    g.tables.map(0x8000, 0x6000, writable=False)
    burst = paging.walk_2d_burst(g.mem, g.eptp, g.tables.cr3,
                                 [0x7004, 0x8008, 0x9000, 1 << 63], "w", caps=FIVE_LEVEL_CAPS)
    assert list(burst.hpas) == [RAM_HPA + 0x5004, 0, 0, 0]
    assert list(burst.codes) == [0, 3, 3, 6] and burst.translated == 1
    # 19 for the walk; 16 for the write refused at the leaf; 16 for 0x9000's absent PTE.
    assert burst.references == 19 + 16 + 16


def test_control_registers_must_select_ia32e_paging():
    g = Guest()
    with pytest.raises(ValueError, match="IA-32e"):
        paging.walk_2d(g.mem, g.eptp, g.tables.cr3, 0, "r", efer=0)
