"""Interrupt remapping (shared/specs/hv.md §3.8): IRTA, remappable MSIs with handle and
subhandle, remapped and posted IRTEs, source-id verification, every fault reason with its
record, the interrupt entry cache and its invalidation, and posting into a posted-interrupt
descriptor (the SDM's layout: PIR, ON, SN, NV, NDST).
"""

from __future__ import annotations

import hypothesis.strategies as st
import pytest
from hypothesis import given, settings

from fastpath.errors import InterruptRemappingFault
from fastpath.hv import HostMemory
from fastpath.hv.vtd import (
    DEFAULT_CAPS,
    CompatibilityInterrupt,
    Descriptor,
    Gcmd,
    PostedInterrupt,
    Reg,
    RemappedInterrupt,
    RemappingUnit,
    VtdCaps,
    irta,
    posted_descriptor,
    posted_irte,
    remappable_msi,
    remapped_irte,
    write_irte,
)

MIB = 1 << 20
TABLE = 0x10_0000
PID = 0x20_0040
QUEUE = 0x30_0000
SID = 0x3B8A


class Platform:
    def __init__(self, caps=DEFAULT_CAPS, entries=256, x2apic=False):
        self.mem = HostMemory(4 * MIB)
        self.unit = RemappingUnit(self.mem, caps)
        self.unit.write(Reg.FECTL, 4, 0)
        self.unit.write(Reg.IRTA, 8, irta(TABLE, entries, x2apic))
        self.command(Gcmd.SIRTP)
        self.command(Gcmd.IRE)

    def command(self, bit, on=True):
        status = self.unit.read(Reg.GSTS, 4) & ~(Gcmd.SRTP | Gcmd.SIRTP)
        self.unit.write(Reg.GCMD, 4, status | bit if on else status & ~bit)

    def irte(self, index, entry):
        write_irte(self.mem, TABLE, index, entry)

    def msi(self, index, subhandle=None, sid=SID):
        return self.unit.remap_interrupt(sid, *remappable_msi(index, subhandle))

    def fault(self, *args, **kwargs):
        with pytest.raises(InterruptRemappingFault) as fault:
            self.msi(*args, **kwargs)
        return fault.value


def _caps_without_posting():
    return VtdCaps(posted_interrupts=False)


@pytest.fixture
def p():
    return Platform()


# --- Formats -------------------------------------------------------------------------------

def test_remappable_msi_address_layout():
    # 31:20 0xFEE, 19:5 handle[14:0], 4 format, 3 SHV, 2 handle[15].
    assert remappable_msi(5) == (0xFEE00000 | 5 << 5 | 1 << 4, 0)
    assert remappable_msi(0x8001) == (0xFEE00000 | 1 << 5 | 1 << 4 | 1 << 2, 0)
    assert remappable_msi(0x23, subhandle=3) == (0xFEE00000 | 0x20 << 5 | 1 << 4 | 1 << 3, 3)


def test_irte_layouts():
    # Remapped: P, vector 23:16, xAPIC destination in 47:40; posted: IM 15, URG 14, PDA split.
    assert remapped_irte(0x31, 2, level=True) == (1 | 1 << 4 | 0x31 << 16 | 2 << 40, 0)
    lo, hi = posted_irte(0x45, 0x1_2345_6780, urgent=True, sid=SID, svt=1)
    assert lo == 1 | 1 << 14 | 1 << 15 | 0x45 << 16 | (0x2345_6780 >> 6) << 38
    assert hi == SID | 1 << 18 | 1 << 32
    assert irta(TABLE, 256, x2apic=True) == TABLE | 1 << 11 | 7


# --- Remapping ------------------------------------------------------------------------------

def test_remapped_entry_delivers_its_vector_and_destination(p):
    p.irte(5, remapped_irte(0x31, 2, logical=True, delivery_mode=1, redirection_hint=True))
    assert p.msi(5) == RemappedInterrupt(0x31, 2, True, 1, False, True, 5)


def test_subhandle_adds_to_the_handle(p):
    p.irte(0x23, remapped_irte(0x40, 1))
    assert p.msi(0x23, subhandle=3).vector == 0x40


def test_x2apic_destinations_are_32_bits():
    p = Platform(x2apic=True)
    p.irte(1, remapped_irte(0x50, 0x12345, x2apic=True))
    assert p.msi(1).destination == 0x12345


def test_remapping_off_passes_interrupts_through(p):
    p.command(Gcmd.IRE, on=False)
    assert p.unit.remap_interrupt(SID, 0xFEE01000, 0x31) == CompatibilityInterrupt(
        0xFEE01000, 0x31)


def test_compatibility_format_passes_only_with_cfi(p):
    with pytest.raises(InterruptRemappingFault) as fault:
        p.unit.remap_interrupt(SID, 0xFEE01000, 0x31)
    assert fault.value.reason == 0x25
    p.command(Gcmd.CFI)
    assert isinstance(p.unit.remap_interrupt(SID, 0xFEE01000, 0x31), CompatibilityInterrupt)


# --- Faults ------------------------------------------------------------------------------------

def test_fr20_upper_address_bits_or_data_reserved_bits(p):
    p.irte(3, remapped_irte(0x31, 0))
    address, _ = remappable_msi(3)
    with pytest.raises(InterruptRemappingFault) as fault:
        p.unit.remap_interrupt(SID, address | 1 << 32, 0)
    assert fault.value.reason == 0x20
    address, _ = remappable_msi(3, subhandle=0)
    with pytest.raises(InterruptRemappingFault) as fault:
        p.unit.remap_interrupt(0x0100, address, 1 << 16)
    assert fault.value.reason == 0x20


def test_fr21_index_beyond_the_table(p):
    assert p.fault(256).reason == 0x21
    assert p.unit.records()[0] == (256 << 48, 1 << 63 | 0x21 << 32 | SID)


def test_fr22_entry_not_present(p):
    assert p.fault(7).reason == 0x22


def test_fr23_entry_outside_memory():
    p = Platform()
    p.unit.write(Reg.IRTA, 8, irta(4 * MIB - 4096, 1 << 16))
    p.command(Gcmd.SIRTP)
    assert p.fault(0x1000).reason == 0x23


@pytest.mark.parametrize("entry", [
    (remapped_irte(0x31, 0)[0] | 1 << 12, 0),          # lo 14:12
    (remapped_irte(0x31, 0)[0] | 1 << 24, 0),          # lo 31:24
    (remapped_irte(0x31, 0)[0] | 1 << 33, 0),          # xAPIC: DST 39:32
    (remapped_irte(0x31, 0)[0], 1 << 20),              # hi 63:20
    (remapped_irte(0x31, 0)[0], 3 << 18),              # SVT 3
])
def test_fr24_entry_reserved_bits(p, entry):
    p.irte(9, entry)
    assert p.fault(9).reason == 0x24


def test_fr24_posted_entry_without_cap_pi():
    p = Platform(_caps_without_posting())
    p.irte(1, posted_irte(0x45, PID))
    assert p.fault(1).reason == 0x24


@pytest.mark.parametrize("svt, sq, sid, ok", [
    (1, 0, SID, True), (1, 0, SID ^ 1, False),
    (1, 3, SID ^ 7, True), (1, 1, SID ^ 4, True), (1, 1, SID ^ 2, False),
    (2, 0, 0x3C3A, True), (2, 0, 0x3D00, False), (2, 0, 0x3900, False),
])
def test_fr26_source_id_verification(p, svt, sq, sid, ok):
    irte_sid = SID if svt == 1 else 0x3C3A          # SVT 2: buses 0x3A..0x3C
    p.irte(2, remapped_irte(0x31, 0, sid=irte_sid, svt=svt, sq=sq))
    if ok:
        assert p.msi(2, sid=sid).vector == 0x31
    else:
        assert p.fault(2, sid=sid).reason == 0x26


def test_fpd_in_the_irte_suppresses_recording(p):
    p.irte(4, (remapped_irte(0x31, 0, fpd=True)[0] & ~1, 0))
    assert p.fault(4).reason == 0x22
    assert p.unit.records()[0] == (0, 0)


# --- Interrupt entry cache ------------------------------------------------------------------

def test_interrupt_entry_cache_keeps_a_stale_entry_until_invalidated(p):
    p.irte(6, remapped_irte(0x31, 0))
    p.irte(7, remapped_irte(0x41, 0))
    assert p.msi(6).vector == 0x31 and p.msi(7).vector == 0x41
    p.irte(6, remapped_irte(0x32, 0))
    p.irte(7, remapped_irte(0x42, 0))
    assert p.msi(6).vector == 0x31
    cache = p.unit.interrupt_entries
    assert (cache.hits, cache.misses) == (1, 2)
    p.unit.write(Reg.IQA, 8, QUEUE)
    p.command(Gcmd.QIE)
    d = Descriptor.interrupt_entry_cache(6)
    p.mem.write64(QUEUE, d.lo)
    p.mem.write64(QUEUE + 8, d.hi)
    p.unit.write(Reg.IQT, 8, 1 << 4)
    assert p.msi(6).vector == 0x32 and p.msi(7).vector == 0x41     # index-selective
    d = Descriptor.interrupt_entry_cache()
    p.mem.write64(QUEUE + 16, d.lo)
    p.mem.write64(QUEUE + 24, d.hi)
    p.unit.write(Reg.IQT, 8, 2 << 4)
    assert p.msi(7).vector == 0x42


def test_index_selective_invalidation_covers_two_to_the_im_entries(p):
    for index in range(8, 12):
        p.irte(index, remapped_irte(0x31, 0))
        p.msi(index)
    p.unit.invalidate_interrupt_entries(8, 1 << 1)
    assert sorted(p.unit.interrupt_entries.entries) == [10, 11]


# --- Posted interrupts ------------------------------------------------------------------------

def _pid(p, control):
    p.mem.array[PID : PID + 64] = 0
    p.mem.write64(PID + 32, control)


def test_posting_sets_pir_and_on_and_notifies(p):
    _pid(p, posted_descriptor(0xF2, 3))
    p.irte(1, posted_irte(0x45, PID))
    assert p.msi(1) == PostedInterrupt(0x45, PID, False, True, 0xF2, 3, 1)
    assert int.from_bytes(p.mem.array[PID : PID + 32].tobytes(), "little") == 1 << 0x45
    assert p.mem.read64(PID + 32) & 1
    assert p.unit.posted_notifications == [(3, 0xF2)]


def test_a_second_posting_while_on_is_set_sends_no_notification(p):
    _pid(p, posted_descriptor(0xF2, 3))
    p.irte(1, posted_irte(0x45, PID))
    p.irte(2, posted_irte(0x46, PID))
    p.msi(1)
    assert not p.msi(2).notified
    pir = int.from_bytes(p.mem.array[PID : PID + 32].tobytes(), "little")
    assert pir == 1 << 0x45 | 1 << 0x46 and len(p.unit.posted_notifications) == 1


def test_suppressed_notification_unless_urgent(p):
    _pid(p, posted_descriptor(0xF2, 3, suppress=True))
    p.irte(1, posted_irte(0x45, PID))
    p.irte(2, posted_irte(0x46, PID, urgent=True))
    assert not p.msi(1).notified and not p.mem.read64(PID + 32) & 1
    assert p.msi(2).notified and p.mem.read64(PID + 32) & 1


def test_fr27_descriptor_outside_memory_and_fr28_reserved(p):
    p.irte(1, posted_irte(0x45, 8 * MIB))
    assert p.fault(1).reason == 0x27
    _pid(p, posted_descriptor(0xF2, 3) | 1 << 5)
    p.irte(2, posted_irte(0x45, PID))
    assert p.fault(2).reason == 0x28


# --- Round trips ----------------------------------------------------------------------------

@settings(max_examples=80, deadline=None)
@given(index=st.integers(0, 255), subhandle=st.one_of(st.none(), st.integers(0, 255)),
       vector=st.integers(0x10, 0xFF), destination=st.integers(0, (1 << 32) - 1),
       x2apic=st.booleans(), logical=st.booleans(), delivery_mode=st.sampled_from([0, 1, 4, 7]),
       level=st.booleans(), hint=st.booleans())
def test_remapped_entries_round_trip(index, subhandle, vector, destination, x2apic, logical,
                                     delivery_mode, level, hint):
    p = Platform(x2apic=x2apic)
    destination = destination if x2apic else destination & 0xFF
    subhandle = None if subhandle is None or subhandle > index else subhandle
    p.irte(index, remapped_irte(vector, destination, logical=logical,
                                delivery_mode=delivery_mode, level=level,
                                redirection_hint=hint, x2apic=x2apic))
    assert p.msi(index, subhandle) == RemappedInterrupt(vector, destination, logical,
                                                        delivery_mode, level, hint, index)


@settings(max_examples=80, deadline=None)
@given(postings=st.lists(st.tuples(st.integers(0, 255), st.booleans()), min_size=1,
                         max_size=8),
       suppress=st.booleans(), on=st.booleans(), slot=st.integers(0, 1000))
def test_posting_round_trips_through_the_descriptor(postings, suppress, on, slot):
    p = Platform()
    descriptor = 0x20_0000 + 64 * slot
    p.mem.write64(descriptor + 32, posted_descriptor(0xF2, 7, suppress=suppress) | int(on))
    pir, state_on, notified = 0, on, 0
    for k, (vector, urgent) in enumerate(postings):
        p.irte(k, posted_irte(vector, descriptor, urgent=urgent))
        result = p.msi(k)
        notify = not state_on and (urgent or not suppress)
        assert result == PostedInterrupt(vector, descriptor, urgent, notify, 0xF2, 7, k)
        pir |= 1 << vector
        state_on |= notify
        notified += notify
    assert int.from_bytes(p.mem.array[descriptor : descriptor + 32].tobytes(), "little") == pir
    assert p.mem.read64(descriptor + 32) & 1 == int(state_on)
    assert len(p.unit.posted_notifications) == notified
