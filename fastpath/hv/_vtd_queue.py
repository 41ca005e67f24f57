"""Queued invalidation: the descriptors' layouts (hv.md §3.6, §3.7; VT-d spec §6.5.2) and the
unit's walk of the invalidation queue from IQH to IQT. One home for the descriptor layouts.

The queue is a ring of 2^(QS+8) 128-bit descriptors in host memory at IQA (halved, each 256
bits, with IQA.DW); IQH and IQT hold the byte offset (index << 4, or << 5). A descriptor the
unit refuses (an unknown type, reserved bits, a granularity of 0, a PSI mask above CAP.MAMV, a
queue outside memory) stops the queue there with FSTS.IQE, IQH pointing at it.
"""

from __future__ import annotations

from enum import IntEnum
from typing import TYPE_CHECKING, NamedTuple

if TYPE_CHECKING:
    from fastpath.hv._vtd_unit import RemappingUnit


class DescriptorType(IntEnum):
    """Descriptor types, bits 3:0 of the low u64 (bits 11:9 extend it in VT-d 3.x: reserved
    here, since the legacy model has no scalable-mode descriptors)."""

    CONTEXT_CACHE = 1
    IOTLB = 2
    DEVICE_TLB = 3
    INTERRUPT_ENTRY_CACHE = 4
    WAIT = 5


def _mask(*fields: tuple[int, int]) -> int:
    return sum(((1 << (high - low + 1)) - 1) << low for high, low in fields)


_ALL = (1 << 64) - 1
# Reserved bits per type, (lo, hi) (hv.md §3.6, QEMU's masks, except that the device-TLB
# descriptor accepts PFSID, §8 item 13; and the IEC descriptor's, from Linux's QI_IEC_*).
RESERVED = {
    DescriptorType.CONTEXT_CACHE: (_mask((63, 50), (15, 6)), _ALL),
    DescriptorType.IOTLB: (_mask((63, 32), (15, 8)), _mask((11, 7))),
    DescriptorType.DEVICE_TLB: (_mask((51, 48), (31, 21), (11, 4)), _mask((11, 1))),
    DescriptorType.INTERRUPT_ENTRY_CACHE: (_mask((63, 48), (26, 5)), _ALL),
    DescriptorType.WAIT: (_mask((31, 7)), _mask((1, 0))),
}

GRANULARITY_SHIFT = 4          # context-cache and IOTLB G: bits 5:4


class Granularity(IntEnum):
    """What a context-cache or IOTLB invalidation covers: its descriptor's G, its register's
    CIRG or IIRG (hv.md §3.6). DEVICE_OR_PAGE is device-selective for the context cache and
    page-selective for the IOTLB."""

    GLOBAL = 1
    DOMAIN = 2
    DEVICE_OR_PAGE = 3


WAIT_IF, WAIT_SW, WAIT_FN = 1 << 4, 1 << 5, 1 << 6
IEC_INDEX_SELECTIVE = 1 << 4


def field(value: int, high: int, low: int) -> int:
    """Bits high:low of value."""
    return value >> low & (1 << (high - low + 1)) - 1


class Descriptor(NamedTuple):
    """A 128-bit descriptor as two little-endian u64 (hv.md §0.1)."""

    lo: int
    hi: int

    @property
    def type(self) -> int:
        """Bits 3:0."""
        return self.lo & 0xF

    @classmethod
    def context_cache(cls, granularity: int, did: int = 0, sid: int = 0,
                      function_mask: int = 0) -> Descriptor:
        """Context-cache invalidation: G 5:4, DID 31:16, SID 47:32, FM 49:48."""
        return cls(DescriptorType.CONTEXT_CACHE | granularity << GRANULARITY_SHIFT | did << 16
                   | sid << 32 | function_mask << 48, 0)

    @classmethod
    def iotlb(cls, granularity: int, did: int = 0, address: int = 0, address_mask: int = 0,
              drain_reads: bool = False, drain_writes: bool = False,
              invalidation_hint: bool = False) -> Descriptor:
        """IOTLB invalidation: G 5:4, DW 6, DR 7, DID 31:16; hi ADDR 63:12, IH 6, AM 5:0."""
        return cls(DescriptorType.IOTLB | granularity << GRANULARITY_SHIFT
                   | int(drain_writes) << 6 | int(drain_reads) << 7 | did << 16,
                   address & ~0xFFF | int(invalidation_hint) << 6 | address_mask)

    @classmethod
    def device_tlb(cls, sid: int, address: int, size_bit: bool = False, pfsid: int = 0,
                   queue_depth: int = 0) -> Descriptor:
        """Device-TLB invalidation: PFSID[3:0] 15:12, MIP 20:16, SID 47:32, PFSID[15:4] 63:52;
        hi ADDR 63:12, S 0."""
        return cls(DescriptorType.DEVICE_TLB | (pfsid & 0xF) << 12 | queue_depth << 16
                   | sid << 32 | (pfsid >> 4) << 52, address & ~0xFFF | int(size_bit))

    @classmethod
    def interrupt_entry_cache(cls, index: int | None = None, index_mask: int = 0) -> Descriptor:
        """Interrupt-entry-cache invalidation: global (index None) or the 2^IM entries from
        IIDX (G bit 4, IM 31:27, IIDX 47:32)."""
        if index is None:
            return cls(DescriptorType.INTERRUPT_ENTRY_CACHE, 0)
        return cls(DescriptorType.INTERRUPT_ENTRY_CACHE | IEC_INDEX_SELECTIVE
                   | index_mask << 27 | index << 32, 0)

    @classmethod
    def wait(cls, status_address: int | None = None, status_data: int = 0,
             interrupt: bool = False, fence: bool = False) -> Descriptor:
        """Invalidation wait: IF 4, SW 5 (write status_data at status_address), FN 6, status
        data 63:32; hi the status address (bits 63:2)."""
        sw = status_address is not None
        return cls(DescriptorType.WAIT | int(interrupt) << 4 | int(sw) << 5 | int(fence) << 6
                   | status_data << 32, status_address if sw else 0)


def device_tlb_range(hi: int) -> tuple[int, int]:
    """(base, size) a device-TLB descriptor's address names (hv.md §3.7, the PCIe ATS size
    encoding): S = 0 is the 4 KiB page at ADDR; S = 1 is 8 KiB << (trailing ones of
    ADDR[63:12]), the base aligned down to it."""
    address = hi & ~0xFFF
    if not hi & 1:
        return address, 1 << 12
    ones = 0
    while address >> (12 + ones) & 1:
        ones += 1
    size = 1 << (13 + ones)
    return address & ~(size - 1), size


def run(unit: RemappingUnit) -> None:
    """Carry out the descriptors from IQH to IQT (the IQT doorbell, with QIE on)."""
    base, descriptor_size, entries = unit.queue_geometry()
    head, tail = unit.queue_head(), unit.queue_tail()
    if head >= entries or tail >= entries:
        # IQT (or IQH, after IQA shrank the queue) beyond the queue: nothing can run.
        unit.queue_error(head)
        return
    while head != tail:
        lo = unit.read_memory(base + head * descriptor_size, 8)
        hi = unit.read_memory(base + head * descriptor_size + 8, 8)
        upper = (0 if descriptor_size == 16
                 else unit.read_memory(base + head * descriptor_size + 16, 16))
        if lo is None or hi is None or upper is None or upper or not _execute(
                unit, Descriptor(lo, hi)):
            unit.queue_error(head)
            return
        head = (head + 1) % entries
        unit.set_queue_head(head)


def _execute(unit: RemappingUnit, d: Descriptor) -> bool:
    # False for a descriptor the unit refuses.
    reserved = RESERVED.get(d.type)
    if reserved is None or d.lo & reserved[0] or d.hi & reserved[1]:
        return False
    if d.type == DescriptorType.CONTEXT_CACHE:
        return unit.invalidate_context_cache(field(d.lo, 5, 4), field(d.lo, 31, 16),
                                             field(d.lo, 47, 32), field(d.lo, 49, 48))
    if d.type == DescriptorType.IOTLB:
        return unit.invalidate_iotlb(field(d.lo, 5, 4), field(d.lo, 31, 16), d.hi & ~0xFFF,
                                     field(d.hi, 5, 0))
    if d.type == DescriptorType.DEVICE_TLB:
        base, size = device_tlb_range(d.hi)
        unit.invalidate_device_tlb(field(d.lo, 47, 32), base, size)
        return True
    if d.type == DescriptorType.INTERRUPT_ENTRY_CACHE:
        if d.lo & IEC_INDEX_SELECTIVE:
            unit.invalidate_interrupt_entries(field(d.lo, 47, 32), 1 << field(d.lo, 31, 27))
        else:
            unit.invalidate_interrupt_entries()
        return True
    status_address = d.hi & ~3 if d.lo & WAIT_SW else None
    return unit.complete_wait(status_address, field(d.lo, 63, 32), bool(d.lo & WAIT_IF))
