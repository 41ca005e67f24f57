"""The remapping unit as software programs it (shared/specs/hv.md §3.1, §3.5-3.7): registers
and their read-only and write-1-to-clear bits, the GCMD/GSTS handshake, fault recording with
compression, overflow and the fault event, every invalidation path (register-based and queued,
each granularity) dropping a stale cached translation and keeping an unrelated one, the
invalidation queue (TV7's descriptors, IQH/IQT, wait descriptors, IQE), and device TLBs.
"""

from __future__ import annotations

import pytest

from fastpath.errors import DmaFault
from fastpath.hv import HostMemory
from fastpath.hv.vtd import (
    DEFAULT_CAPS,
    PAGE_2M,
    PAGE_4K,
    Descriptor,
    DescriptorType,
    DeviceTlb,
    FaultReason,
    Fsts,
    Gcmd,
    Granularity,
    Invalidation,
    Reg,
    RemappingUnit,
    RootTable,
    SecondLevelTables,
    TranslationType,
    VtdCaps,
    device_tlb_range,
)

MIB = 1 << 20
SID_A, SID_B, SID_C = 0x3B8A, 0x0110, 0x3B8B   # A and C in domain 0x42, B in domain 7
DID_A, DID_B = 0x42, 7
QUEUE = 0x6000_00       # the invalidation queue's page
STATUS = 0x6010_00      # wait descriptors' status words


class Platform:
    """Host memory with two domains' tables and a unit programmed through its registers."""

    def __init__(self, caps: VtdCaps = DEFAULT_CAPS, fpd: bool = False):
        self.mem = HostMemory(8 * MIB, table_area=(4 * MIB, 6 * MIB))
        self.root = RootTable(self.mem, self.mem.frames)
        self.a = SecondLevelTables(self.mem, self.mem.frames, 4)
        self.b = SecondLevelTables(self.mem, self.mem.frames, 3)
        self.a.map(0xDEADB000, 0x1000, PAGE_4K, "rw")
        self.a.map(0xDEA00000 + PAGE_2M * 4, 0x20_0000, PAGE_2M, "rw")
        self.b.map(0xDEADB000, 0x3000, PAGE_4K, "rw")
        self.root.attach(SID_A, DID_A, self.a, tt=TranslationType.TT_DEVICE_TLB, fpd=fpd)
        self.root.attach(SID_C, DID_A, self.a)
        self.root.attach(SID_B, DID_B, self.b)
        self.unit = RemappingUnit(self.mem, caps)
        self.unit.write(Reg.RTADDR, 8, self.root.root)
        self.command(Gcmd.SRTP)
        self.command(Gcmd.TE)

    def command(self, bit: int, on: bool = True) -> None:
        """Software's GCMD write: the current levels with one command changed."""
        status = self.unit.read(Reg.GSTS, 4) & ~(Gcmd.SRTP | Gcmd.SIRTP)
        self.unit.write(Reg.GCMD, 4, status | bit if on else status & ~bit)

    def remap_leaf(self, tables, iova, hpa, size=PAGE_4K):
        """Point a mapped page elsewhere behind the caches' back."""
        level = {PAGE_4K: 1, PAGE_2M: 2}[size]
        slot = tables.entry_address(iova, level)
        self.mem.write64(slot, self.mem.read64(slot) & 0xFFF | hpa)

    def enable_queue(self, qs: int = 0) -> None:
        self.unit.write(Reg.IQA, 8, QUEUE | qs)
        self.command(Gcmd.QIE)

    def submit(self, *descriptors: Descriptor) -> None:
        """Write descriptors at IQT and ring the doorbell."""
        tail = self.unit.read(Reg.IQT, 8) >> 4
        entries = 1 << ((self.unit.read(Reg.IQA, 8) & 7) + 8)
        for d in descriptors:
            self.mem.write64(QUEUE + 16 * tail, d.lo)
            self.mem.write64(QUEUE + 16 * tail + 8, d.hi)
            tail = (tail + 1) % entries
        self.unit.write(Reg.IQT, 8, tail << 4)


@pytest.fixture
def p():
    return Platform()


def hpa(p, sid, iova, access="r"):
    return p.unit.dma(sid, iova, access).hpa


def warm(p):
    """Cache A's and B's translations (and their context entries); return the stale HPA."""
    assert hpa(p, SID_A, 0xDEADB123) == 0x1123
    assert hpa(p, SID_B, 0xDEADB123) == 0x3123
    assert hpa(p, SID_A, 0xDEA00000 + PAGE_2M * 4 + 0x5000) == 0x205000
    p.remap_leaf(p.a, 0xDEADB000, 0x9000)
    p.remap_leaf(p.b, 0xDEADB000, 0xA000)
    assert hpa(p, SID_A, 0xDEADB123) == 0x1123     # stale, from the IOTLB
    assert hpa(p, SID_B, 0xDEADB123) == 0x3123


# --- Registers --------------------------------------------------------------------------------

def test_identity_registers_are_read_only(p):
    caps = p.unit.caps
    assert p.unit.read(Reg.VER, 4) == 0x10
    assert p.unit.read(Reg.CAP, 8) == caps.cap and p.unit.read(Reg.ECAP, 8) == caps.ecap
    p.unit.write(Reg.CAP, 8, 0)
    p.unit.write(Reg.GSTS, 4, 0)
    assert p.unit.read(Reg.CAP, 8) == caps.cap
    assert p.unit.read(Reg.GSTS, 4) & Gcmd.TE
    # 32-bit halves of a 64-bit register.
    assert p.unit.read(Reg.CAP + 4, 4) == caps.cap >> 32


def test_cap_fields_locate_the_iotlb_and_fault_recording_registers(p):
    cap, ecap = p.unit.caps.cap, p.unit.caps.ecap
    assert (ecap >> 8 & 0x3FF) * 16 == Reg.IVA and (cap >> 24 & 0x3FF) * 16 == Reg.FRCD
    assert (cap >> 8 & 0x1F) == 0b0110 and (cap >> 16 & 0x3F) == 47   # SAGAW 39+48, MGAW 48
    assert (cap >> 34 & 3) == 3 and (cap >> 40 & 0xFF) == 7           # SLLPS, NFR - 1


def test_gcmd_reads_zero_and_gsts_follows_the_handshake(p):
    assert p.unit.read(Reg.GCMD, 4) == 0
    assert p.unit.read(Reg.GSTS, 4) == Gcmd.TE | Gcmd.SRTP
    p.command(Gcmd.TE, on=False)
    assert not p.unit.enabled
    assert p.unit.dma(SID_A, 0xDEADB123, "r").hpa == 0xDEADB123   # no remapping
    p.command(Gcmd.TE)
    assert hpa(p, SID_A, 0xDEADB123) == 0x1123


def test_srtp_latches_rtaddr(p):
    other = RootTable(p.mem, p.mem.frames)
    p.unit.write(Reg.RTADDR, 8, other.root)
    assert hpa(p, SID_A, 0xDEADB123) == 0x1123        # not latched yet
    p.command(Gcmd.SRTP)
    p.unit.write(Reg.CCMD, 8, 1 << 63 | 1 << 61)      # global context invalidation
    p.unit.write(Reg.IOTLB, 8, 1 << 63 | 1 << 60)     # global IOTLB invalidation
    with pytest.raises(DmaFault) as fault:
        p.unit.dma(SID_A, 0xDEADB123, "r")
    assert fault.value.reason == FaultReason.FR_ROOT_NOT_PRESENT


def test_unknown_offsets_read_zero_and_ignore_writes(p):
    p.unit.write(0x300, 4, 0xFFFFFFFF)
    assert p.unit.read(0x300, 4) == 0
    with pytest.raises(LookupError):
        p.unit.regs.locate(Reg.CAP + 2, 4)


# --- Fault recording (hv.md §3.5) ---------------------------------------------------------------

def test_a_fault_is_recorded_and_the_fault_event_sent_when_unmasked(p):
    p.unit.write(Reg.FEDATA, 4, 0x4041)
    p.unit.write(Reg.FEADDR, 4, 0xFEE00000)
    p.unit.write(Reg.FECTL, 4, 0)                     # unmask
    with pytest.raises(DmaFault) as fault:
        p.unit.dma(SID_A, 0xBAD000, "w")
    assert fault.value.reason == FaultReason.FR_WRITE
    assert p.unit.records()[0] == (0xBAD000, 1 << 63 | 5 << 32 | SID_A)
    fsts = p.unit.read(Reg.FSTS, 4)
    assert fsts & Fsts.PPF and fsts >> 8 & 0xFF == 0
    assert p.unit.interrupts == [(0xFEE00000, 0x4041)]
    assert not p.unit.read(Reg.FECTL, 4) & 1 << 30


def test_a_masked_fault_event_stays_pending_until_unmasked(p):
    p.unit.write(Reg.FEDATA, 4, 0x55)
    with pytest.raises(DmaFault):
        p.unit.dma(SID_A, 0xBAD000, "r")
    assert p.unit.read(Reg.FECTL, 4) == 1 << 31 | 1 << 30     # IM, IP
    assert p.unit.interrupts == []
    p.unit.write(Reg.FECTL, 4, 0)
    assert p.unit.interrupts == [(0, 0x55)] and p.unit.read(Reg.FECTL, 4) == 0


def test_fault_record_f_bit_is_write_1_to_clear_and_ppf_follows(p):
    with pytest.raises(DmaFault):
        p.unit.dma(SID_A, 0xBAD000, "r")
    p.unit.write(Reg.FRCD + 8, 8, 0)                  # writing 0 clears nothing
    assert p.unit.read(Reg.FSTS, 4) & Fsts.PPF
    p.unit.write(Reg.FRCD + 12, 4, 1 << 31)           # F is bit 127: the top dword's bit 31
    assert not p.unit.read(Reg.FSTS, 4) & Fsts.PPF
    assert p.unit.records()[0][1] == 6 << 32 | 1 << 62 | SID_A   # the rest stays
    assert not p.unit.read(Reg.FECTL, 4) & 1 << 30               # IP cleared with PPF


def test_faults_of_a_source_id_with_a_pending_record_are_compressed(p):
    for iova in (0xBAD000, 0xBAE000):
        with pytest.raises(DmaFault):
            p.unit.dma(SID_A, iova, "r")
    assert sum(hi >> 63 for _, hi in p.unit.records()) == 1


def test_primary_fault_overflow_when_the_next_record_is_pending():
    p = Platform(VtdCaps(fault_records=2))
    p.unit.write(Reg.FECTL, 4, 0)
    sids = [0x0120, 0x0121, 0x0122, 0x0123]
    for sid in sids[:2]:
        with pytest.raises(DmaFault):
            p.unit.dma(sid, 0x1000, "r")              # context not present
    assert [hi & 0xFFFF for _, hi in p.unit.records()] == sids[:2]
    with pytest.raises(DmaFault):
        p.unit.dma(sids[2], 0x1000, "r")
    fsts = p.unit.read(Reg.FSTS, 4)
    assert fsts & Fsts.PFO and fsts & Fsts.PPF
    assert len(p.unit.interrupts) == 1                # only the first fault raised the event
    # While PFO is set nothing is recorded, even with a free record.
    p.unit.write(Reg.FRCD + 8, 8, 1 << 63)
    with pytest.raises(DmaFault):
        p.unit.dma(sids[3], 0x1000, "r")
    assert p.unit.records()[0][1] >> 63 == 0
    p.unit.write(Reg.FSTS, 4, Fsts.PFO)               # write 1 to clear
    assert not p.unit.read(Reg.FSTS, 4) & Fsts.PFO
    with pytest.raises(DmaFault):
        p.unit.dma(sids[3], 0x1000, "r")
    assert p.unit.records()[0][1] & 0xFFFF == sids[3]


def test_records_are_used_round_robin(p):
    for k, sid in enumerate([0x0120, 0x0121, 0x0122]):
        with pytest.raises(DmaFault):
            p.unit.dma(sid, 0x1000, "r")
        p.unit.write(Reg.FRCD + 16 * k + 8, 8, 1 << 63)
    assert [hi & 0xFFFF for _, hi in p.unit.records()[:3]] == [0x0120, 0x0121, 0x0122]


def test_fpd_suppresses_qualified_faults_only():
    p = Platform(fpd=True)
    with pytest.raises(DmaFault) as fault:
        p.unit.dma(SID_A, 0xBAD000, "r")
    assert fault.value.qualified and p.unit.records()[0][1] == 0
    p.root.write_context(SID_A, 1 | 2 | 0xF0, 0x4202)  # reserved bits: FR 0xB, not qualified
    p.unit.write(Reg.CCMD, 8, 1 << 63 | 1 << 61)
    with pytest.raises(DmaFault) as fault:
        p.unit.dma(SID_A, 0xBAD000, "r")
    assert fault.value.reason == FaultReason.FR_CONTEXT_RESERVED
    assert p.unit.records()[0][1] & 0xFF_0000_0000 == 0xB << 32


def test_burst_faults_are_recorded_in_order(p):
    p.unit.write(Reg.FECTL, 4, 0)
    burst = p.unit.dma_burst(SID_B, [0xDEADB000, 0x5000, 1 << 40], "r")
    assert list(burst.reasons) == [0, FaultReason.FR_READ, FaultReason.FR_ADDRESS_BEYOND_MGAW]
    # Compression: the second fault of SID_B is dropped while the first is pending.
    assert [hi >> 32 & 0xFF for _, hi in p.unit.records()[:2]] == [FaultReason.FR_READ, 0]


def test_interrupt_addresses_are_not_dma(p):
    with pytest.raises(ValueError):
        p.unit.dma(SID_A, 0xFEE00000, "w")


# --- Register-based invalidation (hv.md §3.6) -----------------------------------------------

def test_iotlb_register_global(p):
    warm(p)
    p.unit.write(Reg.IOTLB, 8, 1 << 63 | 1 << 60)
    assert p.unit.read(Reg.IOTLB, 8) == 1 << 60 | 1 << 57       # IVT clear, IAIG global
    assert hpa(p, SID_A, 0xDEADB123) == 0x9123
    assert hpa(p, SID_B, 0xDEADB123) == 0xA123


def test_iotlb_register_domain_selective(p):
    warm(p)
    p.unit.write(Reg.IOTLB, 8, 1 << 63 | 2 << 60 | DID_A << 32)
    assert p.unit.read(Reg.IOTLB, 8) >> 57 & 3 == 2
    assert hpa(p, SID_A, 0xDEADB123) == 0x9123
    assert hpa(p, SID_B, 0xDEADB123) == 0x3123                 # another domain: kept


def test_iotlb_register_page_selective_with_address_mask(p):
    warm(p)
    p.remap_leaf(p.a, 0xDEA00000 + PAGE_2M * 4, 0x40_0000, PAGE_2M)
    p.unit.write(Reg.IVA, 8, 0xDEADB000)
    p.unit.write(Reg.IOTLB, 8, 1 << 63 | 3 << 60 | DID_A << 32)
    assert hpa(p, SID_A, 0xDEADB123) == 0x9123
    assert hpa(p, SID_A, 0xDEA00000 + PAGE_2M * 4 + 0x5000) == 0x205000   # another page
    # AM 9 covers the 2 MiB page, whichever 4 KiB of it was cached.
    p.unit.write(Reg.IVA, 8, 0xDEA00000 + PAGE_2M * 4 | 9)
    p.unit.write(Reg.IOTLB, 8, 1 << 63 | 3 << 60 | DID_A << 32)
    assert hpa(p, SID_A, 0xDEA00000 + PAGE_2M * 4 + 0x5000) == 0x405000
    assert hpa(p, SID_B, 0xDEADB123) == 0x3123


def test_page_selective_of_one_4k_page_drops_the_large_page_covering_it(p):
    warm(p)
    p.remap_leaf(p.a, 0xDEA00000 + PAGE_2M * 4, 0x40_0000, PAGE_2M)
    p.unit.write(Reg.IVA, 8, 0xDEA00000 + PAGE_2M * 4 + 0x7000)
    p.unit.write(Reg.IOTLB, 8, 1 << 63 | 3 << 60 | DID_A << 32)
    assert hpa(p, SID_A, 0xDEA00000 + PAGE_2M * 4 + 0x5000) == 0x405000


def test_iotlb_register_psi_above_mamv_is_not_done():
    p = Platform(VtdCaps(mamv=4))
    warm(p)
    p.unit.write(Reg.IVA, 8, 0xDEA00000 | 9)
    p.unit.write(Reg.IOTLB, 8, 1 << 63 | 3 << 60 | DID_A << 32)
    assert p.unit.read(Reg.IOTLB, 8) >> 57 & 3 == 0
    assert hpa(p, SID_A, 0xDEADB123) == 0x1123


def _detach_a_and_c(p):
    # A's and C's context entries change behind the context cache; the IOTLB is emptied so
    # the walks reach the context cache.
    hpa(p, SID_C, 0xDEADB123)
    p.root.detach(SID_A)
    p.root.detach(SID_C)
    p.root.detach(SID_B)
    p.unit.caches.invalidate_iotlb()


@pytest.mark.parametrize("granularity, dropped", [
    (1, {SID_A, SID_B, SID_C}),
    (2, {SID_A, SID_C}),
    (3, {SID_A}),
])
def test_context_register_invalidation(p, granularity, dropped):
    warm(p)
    _detach_a_and_c(p)
    p.unit.write(Reg.CCMD, 8, 1 << 63 | granularity << 61 | SID_A << 16 | DID_A)
    assert p.unit.read(Reg.CCMD, 8) >> 59 & 3 == granularity and not p.unit.read(
        Reg.CCMD, 8) >> 63
    for sid in (SID_A, SID_B, SID_C):
        if sid in dropped:
            with pytest.raises(DmaFault) as fault:
                p.unit.dma(sid, 0xDEADB123, "r")
            assert fault.value.reason == FaultReason.FR_CONTEXT_NOT_PRESENT
        else:
            p.unit.dma(sid, 0xDEADB123, "r")          # the cached context entry still serves


def test_context_device_invalidation_with_function_mask(p):
    warm(p)
    _detach_a_and_c(p)
    # SID_A = 3b:11.2 and SID_C = 3b:11.3 differ in function bit 0: FM 3 leaves out SID bits
    # 2:0 and so reaches both.
    p.unit.write(Reg.CCMD, 8, 1 << 63 | 3 << 61 | 3 << 32 | SID_A << 16)
    for sid in (SID_A, SID_C):
        with pytest.raises(DmaFault):
            p.unit.dma(sid, 0xDEADB123, "r")
    p.unit.dma(SID_B, 0xDEADB123, "r")


def test_register_invalidation_is_refused_while_queued_invalidation_is_on(p):
    warm(p)
    p.enable_queue()
    p.unit.write(Reg.IOTLB, 8, 1 << 63 | 1 << 60)
    assert p.unit.read(Reg.IOTLB, 8) >> 57 & 3 == 0
    assert hpa(p, SID_A, 0xDEADB123) == 0x1123


# --- Queued invalidation (hv.md §3.6, TV7) ------------------------------------------------------

def test_tv7_descriptors():
    assert Descriptor.iotlb(3, 0x42, 0xDEADB000) == (0x420032, 0xDEADB000)
    assert Descriptor.iotlb(3, 0x42, 0xDEA00000, 9) == (0x420032, 0xDEA00009)
    assert Descriptor.context_cache(3, 0x42, 0x3B8A) == (0x3B8A00420031, 0)
    assert Descriptor.device_tlb(0x3B8A, 0xDEADB000, True, pfsid=0x3B00) == (
        0x3B003B8A00000003, 0xDEADB001)
    assert Descriptor.wait(0x306000, 1) == (0x100000025, 0x306000)


def test_queue_enable_and_head_follows_tail(p):
    p.enable_queue()
    assert p.unit.read(Reg.GSTS, 4) & Gcmd.QIE and p.unit.read(Reg.IQH, 8) == 0
    p.submit(Descriptor.wait(STATUS, 7), Descriptor.wait(STATUS + 4, 8))
    assert p.unit.read(Reg.IQH, 8) == p.unit.read(Reg.IQT, 8) == 0x20
    assert p.mem.read64(STATUS) == 8 << 32 | 7


def test_queue_wraps_around(p):
    p.enable_queue(qs=0)                   # 256 descriptors
    p.submit(*(Descriptor.wait(STATUS, k) for k in range(200)))
    p.submit(*(Descriptor.wait(STATUS, k) for k in range(200, 300)))
    assert p.unit.read(Reg.IQH, 8) == p.unit.read(Reg.IQT, 8) == (300 % 256) << 4
    assert p.mem.read64(STATUS) & 0xFFFFFFFF == 299
    assert not p.unit.read(Reg.FSTS, 4) & Fsts.IQE


def test_an_empty_slot_is_an_invalid_descriptor(p):
    p.enable_queue()
    p.unit.write(Reg.IQT, 8, 1 << 4)       # a zero descriptor: type 0
    assert p.unit.read(Reg.FSTS, 4) & Fsts.IQE and p.unit.read(Reg.IQH, 8) == 0


def test_queued_iotlb_psi_tv7(p):
    warm(p)
    p.enable_queue()
    p.submit(Descriptor(0x420032, 0xDEADB000))
    assert hpa(p, SID_A, 0xDEADB123) == 0x9123
    assert hpa(p, SID_B, 0xDEADB123) == 0x3123


def test_queued_iotlb_psi_2mib(p):
    warm(p)
    p.remap_leaf(p.a, 0xDEA00000 + PAGE_2M * 4, 0x40_0000, PAGE_2M)
    p.enable_queue()
    p.submit(Descriptor.iotlb(3, DID_A, 0xDEA00000 + PAGE_2M * 4, 9))
    assert hpa(p, SID_A, 0xDEA00000 + PAGE_2M * 4 + 0x5000) == 0x405000
    assert hpa(p, SID_A, 0xDEADB123) == 0x1123


@pytest.mark.parametrize("granularity, stale_a, stale_b", [(1, False, False), (2, False, True)])
def test_queued_iotlb_global_and_domain(p, granularity, stale_a, stale_b):
    warm(p)
    p.enable_queue()
    p.submit(Descriptor.iotlb(granularity, DID_A))
    assert hpa(p, SID_A, 0xDEADB123) == (0x1123 if stale_a else 0x9123)
    assert hpa(p, SID_B, 0xDEADB123) == (0x3123 if stale_b else 0xA123)


@pytest.mark.parametrize("granularity, dropped", [
    (1, {SID_A, SID_B, SID_C}),
    (2, {SID_A, SID_C}),
    (3, {SID_A}),
])
def test_queued_context_cache_invalidation(p, granularity, dropped):
    warm(p)
    _detach_a_and_c(p)
    p.enable_queue()
    p.submit(Descriptor.context_cache(granularity, DID_A, SID_A))
    for sid in (SID_A, SID_B, SID_C):
        if sid in dropped:
            with pytest.raises(DmaFault):
                p.unit.dma(sid, 0xDEADB123, "r")
        else:
            p.unit.dma(sid, 0xDEADB123, "r")


def test_wait_descriptor_interrupt_and_ics(p):
    p.enable_queue()
    p.unit.write(Reg.IEDATA, 4, 0x99)
    p.unit.write(Reg.IEADDR, 4, 0xFEE01000)
    p.submit(Descriptor.wait(interrupt=True))
    assert p.unit.read(Reg.ICS, 4) == 1
    assert p.unit.read(Reg.IECTL, 4) == 1 << 31 | 1 << 30          # masked: pending
    assert p.unit.interrupts == []
    p.unit.write(Reg.IECTL, 4, 0)
    assert p.unit.interrupts == [(0xFEE01000, 0x99)]
    p.unit.write(Reg.ICS, 4, 1)
    assert p.unit.read(Reg.ICS, 4) == 0
    p.submit(Descriptor.wait(interrupt=True))
    assert p.unit.interrupts == [(0xFEE01000, 0x99)] * 2


def test_wait_descriptor_orders_after_the_invalidations_before_it(p):
    warm(p)
    p.enable_queue()
    p.submit(Descriptor.iotlb(1), Descriptor.wait(STATUS, 1))
    assert p.mem.read64(STATUS) & 0xFFFFFFFF == 1
    assert hpa(p, SID_A, 0xDEADB123) == 0x9123


@pytest.mark.parametrize("bad", [
    Descriptor(0, 0),                                   # type 0
    Descriptor(6, 0),                                   # PASID-IOTLB: scalable mode only
    Descriptor(0x420002, 0),                            # IOTLB with G = 0
    Descriptor(0x420032 | 1 << 40, 0xDEADB000),         # IOTLB reserved bit
    Descriptor.iotlb(3, 0x42, 0xDEA00000, 19),          # AM above MAMV (18)
    Descriptor(0x01, 0),                                # context-cache with G = 0
    Descriptor.wait(0x7FFF_F000_0000, 1),               # status address outside memory
    Descriptor(0x25 | 1 << 8, STATUS),                  # wait reserved bit
])
def test_invalid_descriptor_stops_the_queue_with_iqe(p, bad):
    p.unit.write(Reg.FECTL, 4, 0)
    p.enable_queue()
    p.submit(Descriptor.wait(STATUS, 1), bad, Descriptor.wait(STATUS, 2))
    assert p.unit.read(Reg.FSTS, 4) & Fsts.IQE
    assert p.unit.read(Reg.IQH, 8) == 0x10                      # at the bad descriptor
    assert p.mem.read64(STATUS) & 0xFFFFFFFF == 1               # the one after did not run
    assert len(p.unit.interrupts) == 1                          # the fault event
    # Software fixes the descriptor, clears IQE and rings again.
    p.mem.write64(QUEUE + 16, Descriptor.wait(STATUS + 8, 3).lo)
    p.mem.write64(QUEUE + 24, STATUS + 8)
    p.unit.write(Reg.FSTS, 4, Fsts.IQE)
    p.unit.write(Reg.IQT, 8, p.unit.read(Reg.IQT, 8))
    assert p.unit.read(Reg.IQH, 8) == 0x30
    assert p.mem.read64(STATUS) & 0xFFFFFFFF == 2


def test_wide_descriptors_with_iqa_dw(p):
    p.unit.write(Reg.IQA, 8, QUEUE | 1 << 11)
    p.command(Gcmd.QIE)
    d = Descriptor.wait(STATUS, 5)
    p.mem.write64(QUEUE, d.lo)
    p.mem.write64(QUEUE + 8, d.hi)
    p.unit.write(Reg.IQT, 8, 1 << 5)
    assert p.mem.read64(STATUS) & 0xFFFFFFFF == 5 and p.unit.read(Reg.IQH, 8) == 0x20


def test_queue_disable_waits_for_an_empty_queue(p):
    p.enable_queue()
    p.command(Gcmd.QIE, on=False)
    assert not p.unit.queued


# --- Device TLB (hv.md §3.7) ------------------------------------------------------------------

def test_ats_request_fills_the_device_tlb_and_its_invalidation_reaches_it(p):
    dtlb = DeviceTlb(p.unit, SID_A)
    assert dtlb.translate(0xDEADB123, "w") == 0x1123
    assert dtlb.translate(0xDEADB456, "r") == 0x1456
    assert (dtlb.hits, dtlb.misses) == (1, 1)
    assert dtlb.translate(0xDEA00000 + PAGE_2M * 4 + 0x3000, "r") == 0x203000
    p.remap_leaf(p.a, 0xDEADB000, 0x9000)
    p.remap_leaf(p.a, 0xDEA00000 + PAGE_2M * 4, 0x40_0000, PAGE_2M)
    p.enable_queue()
    # IOMMU first, then the device (hv.md §3.7), then a wait.
    p.submit(Descriptor.iotlb(3, DID_A, 0xDEADB000),
             Descriptor.device_tlb(SID_A, 0xDEADB000, True, pfsid=0x3B00),
             Descriptor.wait(STATUS, 1))
    assert len(dtlb) == 1                                      # the 2 MiB page is elsewhere
    assert dtlb.translate(0xDEADB123, "r") == 0x9123
    assert dtlb.translate(0xDEA00000 + PAGE_2M * 4 + 0x3000, "r") == 0x203000   # kept


def test_device_tlb_invalidation_of_another_device_leaves_it(p):
    dtlb = DeviceTlb(p.unit, SID_A)
    dtlb.translate(0xDEADB123, "r")
    p.enable_queue()
    p.submit(Descriptor.device_tlb(SID_C, 0xDEADB000))
    assert len(dtlb) == 1


def test_ats_is_blocked_without_a_device_tlb_context(p):
    with pytest.raises(DmaFault) as fault:
        DeviceTlb(p.unit, SID_B).translate(0xDEADB123, "r")
    assert fault.value.reason == FaultReason.FR_TRANSLATION_BLOCKED


def test_ats_sees_the_iotlb_only_for_device_tlb_contexts(p):
    hpa(p, SID_C, 0xDEADB123)                     # C's context is TT 0: cached without ATS
    with pytest.raises(DmaFault):
        p.unit.translation_request(SID_C, 0xDEADB123, "r")


def test_counters_count_hits_and_misses(p):
    warm(p)
    caches = p.unit.caches
    assert caches.iotlb_hits == 2 and caches.iotlb_misses == 3
    assert caches.context_misses == 2 and caches.context_hits == 1


def test_rtaddr_ttm_reads_zero_in_a_legacy_unit(p):
    p.unit.write(Reg.RTADDR, 8, 0x123000 | 0xC00 | 0x3FF)
    assert p.unit.read(Reg.RTADDR, 8) == 0x123000


def test_commands_the_unit_lacks_do_not_take():
    p = Platform(VtdCaps(queued_invalidation=False, interrupt_remapping=False))
    p.command(Gcmd.QIE)
    p.command(Gcmd.IRE)
    assert p.unit.read(Reg.GSTS, 4) & (Gcmd.QIE | Gcmd.IRE) == 0


def test_a_tail_beyond_the_queue_is_an_error_not_a_hang(p):
    p.enable_queue(qs=0)                     # 256 descriptors: IQT 0x1000 is one too far
    p.unit.write(Reg.IQT, 8, 256 << 4)
    assert p.unit.read(Reg.FSTS, 4) & Fsts.IQE and p.unit.read(Reg.IQH, 8) == 0


def test_a_queue_outside_host_memory_is_an_error(p):
    p.unit.write(Reg.IQA, 8, 0x7FFF_0000_0000)
    p.command(Gcmd.QIE)
    p.unit.write(Reg.IQT, 8, 1 << 4)
    assert p.unit.read(Reg.FSTS, 4) & Fsts.IQE


def test_a_burst_with_an_interrupt_address_is_refused(p):
    with pytest.raises(ValueError):
        p.unit.dma_burst(SID_A, [0xDEADB000, 0xFEE00010], "w")


@pytest.mark.parametrize("hi, expected", [
    (0xDEADB000, (0xDEADB000, 0x1000)),            # S = 0: one page
    (0xDEADB001, (0xDEAD8000, 0x8000)),            # TV7: two trailing ones, 32 KiB
    (0xDEADA001, (0xDEADA000, 0x2000)),            # no trailing one: 8 KiB
    (0x7FFFF001, (0x0, 1 << 32)),                  # 19 trailing ones: 8 KiB << 19 = 4 GiB
])
def test_device_tlb_size_encoding(hi, expected):
    assert device_tlb_range(hi) == expected


def test_the_fault_event_uses_the_upper_address_too(p):
    p.unit.write(Reg.FEADDR, 4, 0xFEE00000)
    p.unit.write(Reg.FEUADDR, 4, 0x1)
    p.unit.write(Reg.FEDATA, 4, 0x31)
    p.unit.write(Reg.FECTL, 4, 0)
    with pytest.raises(DmaFault):
        p.unit.dma(SID_B, 0x5000, "r")
    assert p.unit.interrupts == [(0x1_FEE00000, 0x31)]


# --- Invalidation listeners (hv.md §5.5) ------------------------------------------------------

class Heard:
    """An invalidation listener that notes what it heard and what the wait's status word and
    the completion events were at that moment."""

    def __init__(self, p):
        self.p = p
        self.heard: list[tuple[Invalidation, int, int]] = []
        p.unit.add_invalidation_listener(self)

    def __call__(self, invalidation):
        self.heard.append((invalidation, self.p.mem.read64(STATUS) & 0xFFFFFFFF,
                           len(self.p.unit.interrupts)))

    @property
    def invalidations(self):
        return [i for i, _, _ in self.heard]


IOTLB, CONTEXT, DEVICE_TLB = (DescriptorType.IOTLB, DescriptorType.CONTEXT_CACHE,
                              DescriptorType.DEVICE_TLB)
G, D, P = Granularity.GLOBAL, Granularity.DOMAIN, Granularity.DEVICE_OR_PAGE


@pytest.mark.parametrize(("descriptor", "expected"), [
    (Descriptor.iotlb(1), Invalidation(IOTLB, G)),
    (Descriptor.iotlb(2, DID_B), Invalidation(IOTLB, D, DID_B)),
    # TV7's PSI of the 2 MiB page; an address inside the 2^AM pages names them all.
    (Descriptor.iotlb(3, DID_A, 0xDEA00000 + 0x3000, 9),
     Invalidation(IOTLB, P, DID_A, address=0xDEA00000, size=PAGE_2M)),
    (Descriptor.context_cache(1), Invalidation(CONTEXT, G)),
    (Descriptor.context_cache(2, DID_A), Invalidation(CONTEXT, D, DID_A)),
    (Descriptor.context_cache(3, DID_A, SID_A, 2),
     Invalidation(CONTEXT, P, DID_A, SID_A, 2)),
    # TV7's device-TLB row: S = 1, 32 KiB from 0xDEAD8000.
    (Descriptor.device_tlb(SID_A, 0xDEADB000, True, pfsid=0x3B00),
     Invalidation(DEVICE_TLB, P, source_id=SID_A, address=0xDEAD8000, size=0x8000)),
])
def test_a_listener_hears_each_queued_invalidation_before_the_wait_behind_it(p, descriptor,
                                                                              expected):
    heard = Heard(p)
    p.unit.write(Reg.IECTL, 4, 0)
    p.enable_queue()
    p.submit(descriptor, Descriptor.wait(STATUS, 1, interrupt=True))
    # Heard with the status word still 0 and no completion event yet; both came after.
    assert heard.heard == [(expected, 0, 0)]
    assert p.mem.read64(STATUS) & 0xFFFFFFFF == 1 and len(p.unit.interrupts) == 1


def test_a_listener_hears_after_the_units_own_caches_dropped_the_entries(p):
    # So that a listener may translate again at once and see the new tables.
    warm(p)
    seen = []
    p.unit.add_invalidation_listener(lambda _: seen.append(hpa(p, SID_A, 0xDEADB123)))
    p.enable_queue()
    p.submit(Descriptor.iotlb(3, DID_A, 0xDEADB000))
    assert seen == [0x9123]


@pytest.mark.parametrize(("command", "iva", "expected"), [
    (Reg.IOTLB, 0, (1 << 63 | 1 << 60, Invalidation(IOTLB, G))),
    (Reg.IOTLB, 0, (1 << 63 | 2 << 60 | DID_A << 32, Invalidation(IOTLB, D, DID_A))),
    (Reg.IOTLB, 0xDEADB000 | 1, (1 << 63 | 3 << 60 | DID_A << 32,
                                 Invalidation(IOTLB, P, DID_A, address=0xDEADA000,
                                              size=2 * PAGE_4K))),
    (Reg.CCMD, 0, (1 << 63 | 1 << 61, Invalidation(CONTEXT, G))),
    (Reg.CCMD, 0, (1 << 63 | 3 << 61 | 1 << 32 | SID_B << 16 | DID_B,
                   Invalidation(CONTEXT, P, DID_B, SID_B, 1))),
])
def test_a_listener_hears_register_based_invalidations(p, command, iva, expected):
    value, invalidation = expected
    heard = Heard(p)
    p.unit.write(Reg.IVA, 8, iva)
    p.unit.write(command, 8, value)
    assert heard.invalidations == [invalidation]


def test_refused_invalidations_are_not_heard():
    p = Platform(VtdCaps(mamv=4))
    heard = Heard(p)
    p.unit.write(Reg.IVA, 8, 0xDEA00000 | 9)                       # AM above MAMV
    p.unit.write(Reg.IOTLB, 8, 1 << 63 | 3 << 60 | DID_A << 32)
    p.enable_queue()
    p.unit.write(Reg.IOTLB, 8, 1 << 63 | 1 << 60)                  # registers while QI is on
    p.submit(Descriptor(0x420002, 0))                              # G = 0: IQE
    assert heard.heard == []


def test_a_removed_listener_hears_nothing_more(p):
    heard = Heard(p)
    p.enable_queue()
    p.submit(Descriptor.iotlb(1))
    p.unit.remove_invalidation_listener(heard)
    p.submit(Descriptor.iotlb(1))
    assert len(heard.heard) == 1
    with pytest.raises(ValueError):
        p.unit.remove_invalidation_listener(heard)


@pytest.mark.parametrize(("invalidation", "reached"), [
    (Invalidation(IOTLB, G), {SID_A, SID_B, SID_C}),
    (Invalidation(IOTLB, D, DID_A), {SID_A, SID_C}),
    (Invalidation(IOTLB, P, DID_B, address=0xDEADB000, size=PAGE_4K), {SID_B}),
    (Invalidation(CONTEXT, D, DID_B), {SID_B}),
    # FM 0 is the one function; FM 1 leaves bit 2 out: 3b:11.2 (A) and 3b:11.6 alike.
    (Invalidation(CONTEXT, P, 0, SID_A, 0), {SID_A}),
    (Invalidation(CONTEXT, P, 0, SID_A | 4, 1), {SID_A}),
    (Invalidation(DEVICE_TLB, P, source_id=SID_C, address=0, size=PAGE_4K), {SID_C}),
])
def test_which_devices_an_invalidation_reaches(invalidation, reached):
    domains = {SID_A: DID_A, SID_B: DID_B, SID_C: DID_A}
    assert {sid for sid, did in domains.items() if invalidation.affects(sid, did)} == reached


def test_an_invalidation_with_a_range_overlaps_only_what_meets_it():
    psi = Invalidation(IOTLB, P, DID_A, address=0xDEA00000, size=PAGE_2M)
    assert psi.overlaps(0xDEA00000 + PAGE_2M - 1, 1) and psi.overlaps(0xDE9FF000, 0x2000)
    assert not psi.overlaps(0xDEA00000 + PAGE_2M, PAGE_4K)
    assert not psi.overlaps(0xDE9FF000, 0x1000)
    assert Invalidation(IOTLB, G).overlaps(1 << 60, PAGE_4K)


def test_unmap_clears_a_leaf_and_a_psi_makes_the_unit_see_it(p):
    warm(p)
    slot = p.a.unmap(0xDEA00000 + PAGE_2M * 4, PAGE_2M)
    assert p.mem.read64(slot) == 0
    p.enable_queue()
    p.submit(Descriptor.iotlb(3, DID_A, 0xDEA00000 + PAGE_2M * 4, 9))
    with pytest.raises(DmaFault) as fault:
        p.unit.dma(SID_C, 0xDEA00000 + PAGE_2M * 4 + 0x5000, "r")
    assert fault.value.reason == FaultReason.FR_READ
    with pytest.raises(ValueError):
        p.a.unmap(0xDEADB800)                                     # not page-aligned
    with pytest.raises(LookupError):
        p.a.unmap(0x7000_0000_0000)                               # no tables lead there
