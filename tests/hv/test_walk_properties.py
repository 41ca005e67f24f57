"""Round trips: random mappings are built with the builders, then walked by the compiled core and
by the pure-Python reference, which must agree on every translation, page size, reference count
and fault, with permissions, page sizes, control registers and corrupted entries mixed in.
"""

from __future__ import annotations

import functools

import hypothesis.strategies as st
from hypothesis import HealthCheck, given, settings

from fastpath.errors import TranslationFault
from fastpath.hv import FrameAllocator, HostMemory, ept, paging
from fastpath.hv.ept import PAGE_1G, PAGE_2M, PAGE_4K, EptCaps, EptTables, MemoryType
from fastpath.hv.paging import ControlBits, GuestPageTables
from fastpath.testing.reference import paging as reference

MIB = 1 << 20
SIZES = [PAGE_4K, PAGE_2M, PAGE_1G]
PERMS = ["r", "rw", "rx", "rwx", "x", "w", "wx"]    # the last two misconfigure
ALL_CAPS = EptCaps(ept.DEFAULT_CAPS.word | 1 << ept.CAP_BITS["walk_length_5"])
SETTINGS = settings(max_examples=60, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def outcome(walk):
    """A walk's answer or its fault, as comparable data."""
    try:
        return ("ok", walk())
    except TranslationFault as e:
        return (type(e).__name__, sorted(vars(e).items()))


def core_ept(mem, eptp, gpa, access, caps):
    t = ept.walk(mem, eptp, gpa, access, caps=caps)
    return t.hpa, t.page_size, t.references


def reference_ept(mem, eptp, gpa, access, caps):
    return reference.ept_walk(mem, eptp, gpa, access, caps_word=caps.word,
                              maxphyaddr=caps.maxphyaddr)


mapping = st.tuples(st.integers(0, (1 << 34) - 1), st.integers(0, (1 << 34) - 1),
                    st.sampled_from(SIZES), st.sampled_from(PERMS),
                    st.sampled_from(list(MemoryType) + [2, 3, 7]))


@SETTINGS
@given(levels=st.sampled_from([4, 5]), mappings=st.lists(mapping, min_size=1, max_size=12),
       flips=st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 63)), max_size=3),
       probes=st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, (1 << 30) - 1),
                                 st.sampled_from("rwx")), min_size=1, max_size=8),
       caps_word=st.sampled_from([ALL_CAPS.word, ALL_CAPS.word & ~(1 | 1 << 17)]))
def test_ept_walks_agree_with_the_reference(levels, mappings, flips, probes, caps_word):
    caps = EptCaps(caps_word)
    mem = HostMemory(2 * MIB, table_area=(0, 2 * MIB))
    tables = EptTables(mem, mem.frames, levels)
    placed = []
    for page, frame, size, perms, memory_type in mappings:
        gpa, hpa = page * PAGE_4K // size * size, frame * PAGE_4K // size * size
        try:
            tables.map(gpa, hpa, size, perms.replace("w", "") or "r", memory_type)
        except (ValueError, MemoryError):
            continue
        leaf = tables.entry_address(gpa, {PAGE_4K: 1, PAGE_2M: 2, PAGE_1G: 3}[size])
        # Write-only and write-execute leaves are written raw: map() takes only valid letters.
        mem.write64(leaf, mem.read64(leaf) & ~7 | sum(1 << "rwx".index(c) for c in perms))
        placed.append((gpa, size))
    used = mem.array[: len(mem)].view("<u8").nonzero()[0]
    for pick, bit in flips:
        if len(used):
            at = int(used[pick % len(used)]) * 8
            mem.write64(at, mem.read64(at) ^ 1 << bit)
    eptp = tables.eptp()
    for pick, offset, access in probes:
        gpa, size = placed[pick % len(placed)]
        for probe in (gpa + offset % size, (gpa + offset) % (1 << 46)):
            core, oracle = (functools.partial(walk, mem, eptp, probe, access, caps)
                            for walk in (core_ept, reference_ept))
            assert outcome(core) == outcome(oracle)


guest_mapping = st.tuples(st.integers(0, (1 << 36) - 1), st.integers(0, 8 * MIB // PAGE_4K - 1),
                          st.sampled_from(SIZES), st.booleans(), st.booleans(), st.booleans())


@SETTINGS
@given(guest_levels=st.sampled_from([4, 5]), ept_levels=st.sampled_from([4, 5]),
       ept_size=st.sampled_from([PAGE_4K, PAGE_2M]), ept_ad=st.booleans(),
       read_only_gpa=st.integers(0, 7),
       mappings=st.lists(guest_mapping, min_size=1, max_size=10),
       flips=st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 63)), max_size=3),
       cr=st.tuples(st.booleans(), st.booleans(), st.booleans(), st.booleans()),
       probes=st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, (1 << 30) - 1),
                                 st.sampled_from("rwx"), st.booleans(), st.booleans()),
                       min_size=1, max_size=6))
def test_2d_walks_agree_with_the_reference(guest_levels, ept_levels, ept_size, ept_ad,
                                           read_only_gpa, mappings, flips, cr, probes):
    wp, nxe, smep, smap = cr
    ram_hpa = 4 * MIB
    mem = HostMemory(12 * MIB, table_area=(0, 4 * MIB))
    ept_tables = EptTables(mem, mem.frames, ept_levels)
    for gpa in range(0, 8 * MIB, ept_size):
        # One MiB of guest RAM is read-only in EPT, so some walks meet EPT violations.
        perms = "rx" if gpa >> 20 == read_only_gpa else "rwx"
        ept_tables.map(gpa, ram_hpa + gpa, ept_size, perms)
    frames = FrameAllocator(6 * MIB, 8 * MIB, lambda gpa: mem.zero_frame(ram_hpa + gpa))
    guest = GuestPageTables(mem, frames, lambda gpa: ram_hpa + gpa, guest_levels)
    placed = []
    for page, frame, size, writable, user, executable in mappings:
        gva = page * PAGE_4K // size * size
        gpa = frame * PAGE_4K // size * size
        try:
            guest.map(gva, gpa, size, writable=writable, user=user, executable=executable)
        except (ValueError, MemoryError):
            continue
        placed.append((gva, size))
    if not placed:
        return
    # Flip bits in the guest's tables and in EPT's, so that walks meet reserved bits, absent
    # entries and misconfigurations in both dimensions.
    for (pick, bit), base in zip(flips, (ram_hpa + 6 * MIB, 0, ram_hpa + 6 * MIB), strict=False):
        area = mem.array[base : base + 2 * MIB].view("<u8").nonzero()[0]
        at = base + int(area[pick % len(area)]) * 8
        mem.write64(at, mem.read64(at) ^ 1 << bit)
    regs = {
        "cr0": 1 | 1 << ControlBits.CR0_PG_SHIFT | (ControlBits.CR0_WP if wp else 0),
        "cr4": (ControlBits.CR4_PAE | (ControlBits.CR4_LA57 if guest_levels == 5 else 0)
                | (ControlBits.CR4_SMEP if smep else 0) | (ControlBits.CR4_SMAP if smap else 0)),
        "efer": ControlBits.EFER_LME | ControlBits.EFER_LMA | (ControlBits.EFER_NXE if nxe else 0),
    }
    eptp = ept_tables.eptp(accessed_dirty=ept_ad)
    for pick, offset, access, user, ac in probes:
        gva, size = placed[pick % len(placed)]
        gva += offset % size
        if gva >> (11 + 9 * guest_levels):    # the upper half: sign-extend
            gva |= (1 << 64) - (1 << (12 + 9 * guest_levels))

        def core(gva=gva, access=access, user=user, ac=ac):
            t = paging.walk_2d(mem, eptp, guest.cr3, gva, access, user=user, smap_ac=ac,
                               caps=ALL_CAPS, **regs)
            return t.hpa, t.gpa, t.page_size, t.references

        def oracle(gva=gva, access=access, user=user, ac=ac):
            return reference.walk_2d(mem, eptp, guest.cr3, gva, access, user=user, smap_ac=ac,
                                     caps_word=ALL_CAPS.word, **regs)

        assert outcome(core) == outcome(oracle)


@SETTINGS
@given(mappings=st.lists(guest_mapping, min_size=1, max_size=8),
       probes=st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, (1 << 30) - 1),
                                 st.sampled_from("rwx"), st.booleans(), st.booleans(),
                                 st.integers(1, 3), st.booleans()),
                       min_size=1, max_size=24),
       tlb_entries=st.sampled_from([1, 8, 1024]))
def test_the_tlb_never_changes_an_answer_while_the_tables_stand(mappings, probes, tlb_entries):
    """Cached or walked, a translation is the same, and so is every fault (a hit that does not
    allow the access walks); only the references differ."""
    ram_hpa = 4 * MIB
    mem = HostMemory(12 * MIB, table_area=(0, 4 * MIB))
    ept_tables = EptTables(mem, mem.frames)
    for gpa in range(0, 8 * MIB, PAGE_2M):
        ept_tables.map(gpa, ram_hpa + gpa, PAGE_2M, "rx" if gpa == 2 * MIB else "rwx")
    frames = FrameAllocator(6 * MIB, 8 * MIB, lambda gpa: mem.zero_frame(ram_hpa + gpa))
    guest = GuestPageTables(mem, frames, lambda gpa: ram_hpa + gpa)
    placed = []
    for page, frame, size, writable, user, executable in mappings:
        gva, gpa = page * PAGE_4K // size * size, frame * PAGE_4K // size * size
        try:
            guest.map(gva, gpa, size, writable=writable, user=user, executable=executable)
        except (ValueError, MemoryError):
            continue
        placed.append((gva, size))
    if not placed:
        return
    tlb = ept.Tlb(tlb_entries)
    eptp = ept_tables.eptp()
    cr4_choices = {1: ControlBits.CR4_PAE, 2: ControlBits.CR4_PAE | ControlBits.CR4_SMEP,
                   3: ControlBits.CR4_PAE | ControlBits.CR4_SMAP}
    for pick, offset, access, user, ac, cr4, wp in probes:
        gva, size = placed[pick % len(placed)]
        gva += offset % size
        regs = {"cr4": cr4_choices[cr4],
                "cr0": paging.DEFAULT_CR0 & ~(0 if wp else ControlBits.CR0_WP)}

        def walk(tlb, gva=gva, access=access, user=user, ac=ac, regs=regs):
            t = paging.walk_2d(mem, eptp, guest.cr3, gva, access, user=user, smap_ac=ac,
                               tlb=tlb, **regs)
            return t.hpa, t.gpa, t.page_size

        def gpa_walk(tlb, gva=gva, access=access):
            return ept.walk(mem, eptp, gva % (8 * MIB), access, tlb=tlb)[:2]

        assert outcome(functools.partial(walk, tlb)) == outcome(functools.partial(walk, None))
        assert (outcome(functools.partial(gpa_walk, tlb))
                == outcome(functools.partial(gpa_walk, None)))
    assert tlb.hits + tlb.misses == 2 * len(probes)
