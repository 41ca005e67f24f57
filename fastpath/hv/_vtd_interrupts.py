"""Interrupt remapping (hv.md §3.8): the remappable MSI format, the interrupt remapping table
entry (IRTE, remapped and posted formats), the interrupt entry cache, and posting into a
posted-interrupt descriptor. One home for these layouts.

The posted-interrupt descriptor is the one the CPU's VMX side reads (Intel SDM Vol. 3C,
posted-interrupt processing; hv.md §2.7); it is defined here from the SDM's layout, for the
poster's side.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import TYPE_CHECKING, NamedTuple

from fastpath.errors import InterruptRemappingFault
from fastpath.hv._host_memory import host_buffer
from fastpath.hv._vtd_regs import Gcmd, Reg

if TYPE_CHECKING:
    from fastpath.hv._vtd_unit import RemappingUnit

_U64 = struct.Struct("<Q")


def _mask(*fields: tuple[int, int]) -> int:
    return sum(((1 << (high - low + 1)) - 1) << low for high, low in fields)


def _field(value: int, high: int, low: int) -> int:
    return value >> low & (1 << (high - low + 1)) - 1


# Interrupt-remapping fault reasons (hv.md §3.8).
FR_IR_REQUEST_RESERVED = 0x20
FR_IR_INDEX_OVER = 0x21
FR_IR_ENTRY_NOT_PRESENT = 0x22
FR_IR_ENTRY_READ = 0x23
FR_IR_ENTRY_RESERVED = 0x24
FR_IR_COMPATIBILITY_BLOCKED = 0x25
FR_IR_SID_MISMATCH = 0x26
FR_IR_DESCRIPTOR_READ = 0x27
FR_IR_DESCRIPTOR_RESERVED = 0x28
# The reasons an IRTE's FPD bit suppresses: those found after the entry was read.
IR_QUALIFIED = frozenset({FR_IR_ENTRY_NOT_PRESENT, FR_IR_ENTRY_RESERVED, FR_IR_SID_MISMATCH,
                          FR_IR_DESCRIPTOR_READ, FR_IR_DESCRIPTOR_RESERVED})

# Remappable MSI address (hv.md §3.8): 31:20 0xFEE, 19:5 handle[14:0], 4 format (1 =
# remappable), 3 SHV, 2 handle[15]. Data: 15:0 subhandle, 31:16 reserved with SHV.
MSI_FORMAT_REMAPPABLE = 1 << 4
MSI_SHV = 1 << 3

# IRTE (128 bits), lo and hi. Common: P 0, FPD 1, IM 15 (1 = posted), vector 23:16;
# hi SID 15:0, SQ 17:16, SVT 19:18.
IRTE_PRESENT = 1 << 0
IRTE_FPD = 1 << 1
IRTE_POSTED = 1 << 15
# Remapped: DM 2, RH 3, TM 4, DLM 7:5, AVAIL 11:8, DST 63:32 (xAPIC: APIC ID in 47:40).
IRTE_REMAPPED_RESERVED_LO = _mask((14, 12), (31, 24))
IRTE_XAPIC_RESERVED_LO = _mask((39, 32), (63, 48))
# Posted: URG 14, PDA[31:6] in 63:38; hi PDA[63:32] in 63:32.
IRTE_URGENT = 1 << 14
IRTE_POSTED_RESERVED_LO = _mask((7, 2), (13, 12), (37, 24))
IRTE_RESERVED_HI = _mask((63, 20))
IRTE_POSTED_RESERVED_HI = _mask((31, 20))
SVT_NONE, SVT_SID, SVT_BUS = 0, 1, 2
# SQ: the SID bits left out of an SVT 1 comparison (hv.md §8 item 14: QEMU's masks).
SQ_MASKS = (0xFFFF, 0xFFFB, 0xFFF9, 0xFFF8)

# Posted-interrupt descriptor (SDM Vol. 3C; hv.md §2.7): PIR bits 255:0 in bytes 0-31;
# the control u64 at byte 32: ON 0, SN 1, NV 23:16, NDST 63:32; bits 15:2 and 31:24 reserved.
PID_CONTROL = 32
PID_ON = 1 << 0
PID_SN = 1 << 1
PID_RESERVED = _mask((15, 2), (31, 24))
PID_SIZE = 64


class RemappedInterrupt(NamedTuple):
    """A remapped interrupt as the IRTE says to deliver it: vector, destination (APIC ID, or
    the 32-bit x2APIC ID with IRTA.EIME), destination mode (True = logical), delivery mode,
    trigger mode (True = level), redirection hint, and the IRTE index."""

    vector: int
    destination: int
    logical: bool
    delivery_mode: int
    level: bool
    redirection_hint: bool
    index: int


class PostedInterrupt(NamedTuple):
    """An interrupt posted into a posted-interrupt descriptor: the guest vector, the
    descriptor's HPA, whether the IRTE marked it urgent, whether a notification went out
    (to `notification_destination` with `notification_vector`), and the IRTE index."""

    vector: int
    descriptor: int
    urgent: bool
    notified: bool
    notification_vector: int
    notification_destination: int
    index: int


class CompatibilityInterrupt(NamedTuple):
    """An interrupt request that passes unremapped (remapping off, or a compatibility-format
    request with GSTS.CFIS): its address and data as the device wrote them."""

    address: int
    data: int


def remapped_irte(vector: int, destination: int, *, logical: bool = False,
                  delivery_mode: int = 0, level: bool = False, redirection_hint: bool = False,
                  x2apic: bool = False, sid: int = 0, svt: int = SVT_NONE, sq: int = 0,
                  fpd: bool = False) -> tuple[int, int]:
    """A present remapped-format IRTE as (lo, hi). Without `x2apic` the destination is an
    8-bit APIC ID, placed in DST bits 15:8 (lo 47:40)."""
    dst = destination if x2apic else (destination & 0xFF) << 8
    lo = (IRTE_PRESENT | int(fpd) << 1 | int(logical) << 2 | int(redirection_hint) << 3
          | int(level) << 4 | delivery_mode << 5 | vector << 16 | dst << 32)
    return lo, sid | sq << 16 | svt << 18


def posted_irte(vector: int, descriptor: int, *, urgent: bool = False, sid: int = 0,
                svt: int = SVT_NONE, sq: int = 0, fpd: bool = False) -> tuple[int, int]:
    """A present posted-format IRTE as (lo, hi); `descriptor` is the 64-byte aligned HPA of
    the posted-interrupt descriptor."""
    if descriptor % PID_SIZE:
        raise ValueError("a posted-interrupt descriptor is 64-byte aligned")
    lo = (IRTE_PRESENT | int(fpd) << 1 | int(urgent) << 14 | IRTE_POSTED | vector << 16
          | (descriptor & 0xFFFFFFFF) >> 6 << 38)
    return lo, sid | sq << 16 | svt << 18 | (descriptor >> 32) << 32


def remappable_msi(index: int, subhandle: int | None = None) -> tuple[int, int]:
    """The (address, data) of a remappable-format MSI naming IRTE `index` (its handle), or
    handle + subhandle with SHV."""
    handle = index if subhandle is None else index - subhandle
    address = (0xFEE00000 | (handle & 0x7FFF) << 5 | MSI_FORMAT_REMAPPABLE
               | (MSI_SHV if subhandle is not None else 0) | (handle >> 15 & 1) << 2)
    return address, subhandle or 0


def irta(table: int, entries: int, x2apic: bool = False) -> int:
    """An IRTA value for a table of `entries` (a power of two, 2..65536) at `table`: S 3:0
    gives 2^(S+1) entries, EIME 11 the x2APIC destinations."""
    size = entries.bit_length() - 2
    if entries & (entries - 1) or not 0 <= size <= 15 or table % 4096:
        raise ValueError("an interrupt remapping table has 2^(S+1) entries, 4 KiB-aligned")
    return table | int(x2apic) << 11 | size


def write_irte(mem, table: int, index: int, entry: tuple[int, int]) -> None:
    """Store IRTE `index` of the table at `table` in host memory."""
    buffer = host_buffer(mem)
    _U64.pack_into(buffer, table + 16 * index, entry[0])
    _U64.pack_into(buffer, table + 16 * index + 8, entry[1])


def posted_descriptor(notification_vector: int, notification_destination: int, *,
                      suppress: bool = False) -> int:
    """A posted-interrupt descriptor's control u64: NV, NDST, SN."""
    return notification_vector << 16 | notification_destination << 32 | int(suppress) << 1


class InterruptEntryCache:
    """Cached IRTEs by index (hv.md §3.8), filled by remapping and dropped by the interrupt
    entry cache invalidation; hits and misses counted."""

    def __init__(self):
        self.entries: dict[int, tuple[int, int]] = {}
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self.entries)

    def invalidate(self, index: int | None = None, count: int = 1) -> None:
        """Drop every entry, or the `count` entries from `index`."""
        if index is None:
            self.entries.clear()
            return
        for k in range(index, index + count):
            self.entries.pop(k, None)


def remap_interrupt(unit: RemappingUnit, source_id: int, address: int, data: int):
    """Remap an MSI of `source_id` through the unit's interrupt remapping table, in QEMU's
    order of checks (vtd_interrupt_remap_msi, vtd_irte_get); returns a RemappedInterrupt,
    PostedInterrupt or CompatibilityInterrupt, or records and raises InterruptRemappingFault."""
    status = unit.regs.get(Reg.GSTS)
    if not status & Gcmd.IRE or unit.interrupt_table is None:
        return CompatibilityInterrupt(address, data)

    def fail(reason: int, index: int | None = None, fpd: bool = False):
        error = InterruptRemappingFault(reason, source_id, index, reason in IR_QUALIFIED)
        if not (fpd and error.qualified):
            unit.record(error)
        return error

    if address >> 32:
        raise fail(FR_IR_REQUEST_RESERVED)
    if not address & MSI_FORMAT_REMAPPABLE:
        if status & Gcmd.CFI:
            return CompatibilityInterrupt(address, data)
        raise fail(FR_IR_COMPATIBILITY_BLOCKED)
    index = _field(address, 19, 5) | (address >> 2 & 1) << 15
    if address & MSI_SHV:
        if data >> 16:
            raise fail(FR_IR_REQUEST_RESERVED)
        index = index + (data & 0xFFFF)
    table = unit.interrupt_table
    if index >= 1 << ((table & 0xF) + 1):
        raise fail(FR_IR_INDEX_OVER, index)
    cache = unit.interrupt_entries
    entry = cache.entries.get(index)
    if entry is None:
        cache.misses += 1
        at = (table & ~0xFFF) + 16 * index
        lo, hi = unit.read_memory(at, 8), unit.read_memory(at + 8, 8)
        if lo is None or hi is None:
            raise fail(FR_IR_ENTRY_READ, index)
    else:
        cache.hits += 1
        lo, hi = entry
    fpd = bool(lo & IRTE_FPD)
    if not lo & IRTE_PRESENT:
        raise fail(FR_IR_ENTRY_NOT_PRESENT, index, fpd)
    posted = bool(lo & IRTE_POSTED)
    x2apic = bool(table >> 11 & 1)
    if posted:
        reserved = (not unit.caps.posted_interrupts or lo & IRTE_POSTED_RESERVED_LO
                    or hi & IRTE_POSTED_RESERVED_HI)
    else:
        reserved = (lo & IRTE_REMAPPED_RESERVED_LO or hi & IRTE_RESERVED_HI
                    or (not x2apic and lo & IRTE_XAPIC_RESERVED_LO))
    svt, sq, sid = _field(hi, 19, 18), _field(hi, 17, 16), hi & 0xFFFF
    if reserved or svt == 3:
        raise fail(FR_IR_ENTRY_RESERVED, index, fpd)
    cache.entries[index] = (lo, hi)
    if svt == SVT_SID and source_id & SQ_MASKS[sq] != sid & SQ_MASKS[sq]:
        raise fail(FR_IR_SID_MISMATCH, index, fpd)
    # SVT 2: the requester's bus within [SID 7:0, SID 15:8] (QEMU's reading, hv.md §3.8).
    if svt == SVT_BUS and not sid & 0xFF <= source_id >> 8 <= sid >> 8:
        raise fail(FR_IR_SID_MISMATCH, index, fpd)
    vector = _field(lo, 23, 16)
    if not posted:
        destination = _field(lo, 63, 32) if x2apic else _field(lo, 47, 40)
        return RemappedInterrupt(vector, destination, bool(lo >> 2 & 1), _field(lo, 7, 5),
                                 bool(lo >> 4 & 1), bool(lo >> 3 & 1), index)
    descriptor = _field(lo, 63, 38) << 6 | (hi >> 32) << 32
    return _post(unit, descriptor, vector, bool(lo & IRTE_URGENT), index, fail, fpd)


def _post(unit: RemappingUnit, descriptor: int, vector: int, urgent: bool, index: int,
          fail: Callable[..., InterruptRemappingFault], fpd: bool) -> PostedInterrupt:
    # hv.md §2.7, the poster's side: set PIR[vector]; if ON was clear and SN is clear (or the
    # interrupt is urgent), set ON and send the notification (NV to NDST).
    control = unit.read_memory(descriptor + PID_CONTROL, 8)
    if control is None or unit.read_memory(descriptor, PID_SIZE) is None:
        raise fail(FR_IR_DESCRIPTOR_READ, index, fpd)
    if control & PID_RESERVED:
        raise fail(FR_IR_DESCRIPTOR_RESERVED, index, fpd)
    byte = descriptor + vector // 8
    unit.write_memory(byte, 1, unit.read_memory(byte, 1) | 1 << vector % 8)
    nv, ndst = _field(control, 23, 16), control >> 32
    notify = not control & PID_ON and (urgent or not control & PID_SN)
    if notify:
        unit.write_memory(descriptor + PID_CONTROL, 8, control | PID_ON)
        unit.posted_notifications.append((ndst, nv))
    return PostedInterrupt(vector, descriptor, urgent, notify, nv, ndst, index)
