"""The remapping unit's register file: offsets, widths and which bits software may write or
clear (hv.md §3.1). One home for the register layout.

`RegisterFile` stores the registers as bytes and applies a model write (offset, size) bit by
bit: read-only bits keep their value, read-write bits take the written one, write-1-to-clear
bits clear where a 1 is written. The unit reacts to the writes it needs to (commands, doorbells).
"""

from __future__ import annotations

from enum import IntEnum, IntFlag
from typing import NamedTuple

from fastpath.hv._vtd_caps import FAULT_RECORDING_OFFSET, IOTLB_REGISTERS_OFFSET


class Reg(IntEnum):
    """Register offsets (hv.md §3.1; ICS at 0x9C, §8 item 24)."""

    VER = 0x00
    CAP = 0x08
    ECAP = 0x10
    GCMD = 0x18
    GSTS = 0x1C
    RTADDR = 0x20
    CCMD = 0x28
    FSTS = 0x34
    FECTL = 0x38
    FEDATA = 0x3C
    FEADDR = 0x40
    FEUADDR = 0x44
    IQH = 0x80
    IQT = 0x88
    IQA = 0x90
    ICS = 0x9C
    IECTL = 0xA0
    IEDATA = 0xA4
    IEADDR = 0xA8
    IEUADDR = 0xAC
    IQERCD = 0xB0
    IRTA = 0xB8
    IVA = IOTLB_REGISTERS_OFFSET          # the IOTLB block at ECAP.IRO * 16
    IOTLB = IOTLB_REGISTERS_OFFSET + 8
    FRCD = FAULT_RECORDING_OFFSET         # fault recording registers at CAP.FRO * 16


class Gcmd(IntFlag):
    """GCMD commands and their GSTS status bits, which sit at the same positions (hv.md §3.1)."""

    CFI = 1 << 23       # compatibility-format interrupts allowed
    SIRTP = 1 << 24     # set interrupt remap table pointer (one-shot; status IRTPS)
    IRE = 1 << 25       # interrupt remapping enable
    QIE = 1 << 26       # queued invalidation enable
    WBF = 1 << 27       # write-buffer flush
    EAFL = 1 << 28
    SFL = 1 << 29
    SRTP = 1 << 30      # set root table pointer (one-shot; status RTPS)
    TE = 1 << 31        # translation enable


class Fsts(IntFlag):
    """FSTS bits (hv.md §3.1): PFO, IQE, ICE, ITE are write-1-to-clear; PPF and FRI read-only."""

    PFO = 1 << 0
    PPF = 1 << 1
    IQE = 1 << 4
    ICE = 1 << 5
    ITE = 1 << 6


FSTS_FRI_SHIFT = 8                       # FSTS bits 15:8: the first pending record's index
EVENT_IM = 1 << 31                       # FECTL and IECTL: interrupt mask
EVENT_IP = 1 << 30                       # FECTL and IECTL: interrupt pending
ICS_IWC = 1                              # invalidation wait descriptor complete
FRCD_FAULT = 1 << 63                     # a record's F bit (in its hi u64; the record's
                                         # layout: fastpath.errors.DmaFault.record)
VERSION = 0x10                           # 1.0, as QEMU reports

# CCMD (hv.md §3.6): ICC 63, CIRG 62:61, CAIG 60:59, FM 33:32, SID 31:16, DID 15:0.
CCMD_ICC = 1 << 63
CCMD_CIRG_SHIFT = 61
CCMD_CAIG_SHIFT = 59
# IOTLB_REG: IVT 63, IIRG 61:60, IAIG 58:57, DR 49, DW 48, DID 47:32. IVA: ADDR 63:12, IH 6,
# AM 5:0.
IOTLB_IVT = 1 << 63
IOTLB_IIRG_SHIFT = 60
IOTLB_IAIG_SHIFT = 57
IOTLB_DID_SHIFT = 32


class Layout(NamedTuple):
    """A register's width in bytes and the bits software may write and clear."""

    width: int
    writable: int = 0
    write_1_to_clear: int = 0


def _mask(*fields: tuple[int, int]) -> int:
    return sum(((1 << (high - low + 1)) - 1) << low for high, low in fields)


LAYOUT = {
    Reg.VER: Layout(4),
    Reg.CAP: Layout(8),
    Reg.ECAP: Layout(8),
    Reg.GCMD: Layout(4, _mask((31, 23))),                 # the unit clears it: reads 0
    Reg.GSTS: Layout(4),
    Reg.RTADDR: Layout(8, _mask((63, 12))),              # TTM 11:10 reads 0: legacy only
    Reg.CCMD: Layout(8, _mask((63, 61), (33, 0))),
    Reg.FSTS: Layout(4, 0, Fsts.PFO | Fsts.IQE | Fsts.ICE | Fsts.ITE),
    Reg.FECTL: Layout(4, EVENT_IM),
    Reg.FEDATA: Layout(4, _mask((31, 0))),
    Reg.FEADDR: Layout(4, _mask((31, 2))),
    Reg.FEUADDR: Layout(4, _mask((31, 0))),
    Reg.IQH: Layout(8),
    Reg.IQT: Layout(8, _mask((18, 4))),
    Reg.IQA: Layout(8, _mask((63, 12), (11, 11), (2, 0))),
    Reg.ICS: Layout(4, 0, ICS_IWC),
    Reg.IECTL: Layout(4, EVENT_IM),
    Reg.IEDATA: Layout(4, _mask((31, 0))),
    Reg.IEADDR: Layout(4, _mask((31, 2))),
    Reg.IEUADDR: Layout(4, _mask((31, 0))),
    Reg.IQERCD: Layout(8),
    Reg.IRTA: Layout(8, _mask((63, 12), (11, 11), (3, 0))),
    Reg.IVA: Layout(8, _mask((63, 12), (6, 0))),
    Reg.IOTLB: Layout(8, _mask((63, 63), (61, 60), (49, 32))),
}
FRCD_LO = Layout(8)
FRCD_HI = Layout(8, 0, FRCD_FAULT)
SIZE = 0x1000                                             # one 4 KiB MMIO page


class RegisterFile:
    """The registers' bytes and the write rules of LAYOUT; `records` fault recording
    registers follow at Reg.FRCD."""

    def __init__(self, records: int):
        self.records = records
        self._bytes = bytearray(SIZE)
        self.layout = dict(LAYOUT)
        for k in range(records):
            self.layout[Reg.FRCD + 16 * k] = FRCD_LO
            self.layout[Reg.FRCD + 16 * k + 8] = FRCD_HI

    def get(self, offset: int) -> int:
        """The whole register at `offset`."""
        width = self.layout[offset].width
        return int.from_bytes(self._bytes[offset : offset + width], "little")

    def set(self, offset: int, value: int) -> None:
        """Store the whole register at `offset` (the hardware's side: no write rules)."""
        width = self.layout[offset].width
        self._bytes[offset : offset + width] = (value & (1 << 8 * width) - 1).to_bytes(
            width, "little")

    def locate(self, offset: int, size: int) -> tuple[int, int]:
        """(register offset, bit shift) of a `size`-byte access at `offset`, which must lie
        within one register; LookupError otherwise."""
        if size not in (4, 8) or offset % size:
            raise LookupError(f"a {size}-byte access at {offset:#x} is not naturally aligned")
        for start in (offset, offset - 4):
            layout = self.layout.get(start)
            if layout is not None and offset + size <= start + layout.width:
                return start, 8 * (offset - start)
        raise LookupError(f"no register at {offset:#x}")

    def read(self, offset: int, size: int) -> int:
        """A model read; reserved offsets read 0."""
        try:
            start, shift = self.locate(offset, size)
        except LookupError:
            return 0
        return self.get(start) >> shift & (1 << 8 * size) - 1

    def write(self, offset: int, size: int, value: int) -> tuple[int, int, int] | None:
        """Apply a model write; returns (register, old, new) or None for an offset with no
        register (ignored)."""
        try:
            start, shift = self.locate(offset, size)
        except LookupError:
            return None
        layout = self.layout[start]
        written = ((1 << 8 * size) - 1) << shift
        value = (value & (1 << 8 * size) - 1) << shift
        old = self.get(start)
        new = (old & ~(written & layout.writable)) | (value & written & layout.writable)
        new &= ~(value & written & layout.write_1_to_clear)
        self.set(start, new)
        return start, old, new
