"""A physical function's SR-IOV capability as configuration software sees it (hv.md §4.1-4.4):
the 64 bytes read and written with widths at their offsets, VF BAR sizing, and the VFs that
appear, at their routing IDs, a settle time after VF Enable is set.

Time is model time: `step(ms)` advances it; nothing sleeps.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import NamedTuple

from fastpath.hv._sriov_cap import (
    BAR_64BIT,
    BAR_FLAGS,
    BAR_PREFETCH,
    BAR_SLOT,
    CAP_ID,
    CAP_SIZE,
    CAP_VERSION,
    PAGE_SIZE_UNIT,
    VF_BARS,
    VF_SETTLE_MS,
    WRITABLE,
    SriovControl,
    SriovReg,
)
from fastpath.hv._sriov_vf import VirtualFunction, vf_rid

Geometry = Callable[[int, bool], tuple[int, int]]


class VfBar(NamedTuple):
    """One VF BAR the device implements: the size each VF gets (a power of two, at least
    the System Page Size), 64-bit (taking this slot and the next) and prefetchable."""

    size: int
    wide: bool = True
    prefetchable: bool = True


def constant_geometry(offset: int, stride: int) -> Geometry:
    """First VF Offset and VF Stride that do not depend on NumVFs or ARI."""
    return lambda _num_vfs, _ari: (offset, stride)


class PhysicalFunction:
    """A PF at routing ID `rid` (bus << 8 | devfn) with an SR-IOV capability.

    `geometry(num_vfs, ari)` gives (First VF Offset, VF Stride), re-evaluated on each NumVFs
    or ARI change (SR-IOV 1.1 §3.3.10-11, hv.md §8 item 18); an (offset, stride) pair is a
    geometry that never changes. `bars` lists the VF BARs by
    their first slot (None for an unimplemented slot; a 64-bit BAR's second slot must be
    None). `supported_page_sizes` is the Supported Page Sizes bitmap (bit n: 4 KiB << n).
    """

    def __init__(self, rid: int, *, vendor_id: int, vf_device_id: int, total_vfs: int,
                 geometry: Geometry | tuple[int, int], initial_vfs: int | None = None,
                 bars: Sequence[VfBar | None] = (), supported_page_sizes: int = 0x553,
                 next_capability: int = 0):
        if not 0 <= rid < 1 << 16:
            raise ValueError(f"routing ID {rid:#x} is not 16 bits")
        if not 0 < total_vfs < 1 << 16:
            raise ValueError(f"TotalVFs {total_vfs} is not in 1..65535")
        initial_vfs = total_vfs if initial_vfs is None else initial_vfs
        if not 0 <= initial_vfs <= total_vfs:
            raise ValueError(f"InitialVFs {initial_vfs} is not in 0..TotalVFs")
        if not (0 <= vendor_id < 1 << 16 and 0 <= vf_device_id < 1 << 16):
            raise ValueError("vendor and VF device IDs are 16-bit values")
        if not 0 <= next_capability < 1 << 12:
            raise ValueError(f"next capability offset {next_capability:#x} is not 12 bits")
        if not 0 < supported_page_sizes < 1 << 32 or not supported_page_sizes & 1:
            raise ValueError("Supported Page Sizes is 32 bits with bit 0 (4 KiB) set")
        self.rid = rid
        self.vendor_id = vendor_id
        self.geometry = constant_geometry(*geometry) if isinstance(geometry, tuple) else geometry
        self.bars = self._check_bars(list(bars) + [None] * (VF_BARS - len(bars)))
        self.now_ms = 0
        self._enabled_at: int | None = None
        self._space = bytearray(CAP_SIZE)
        self._bar_values = [0] * VF_BARS
        self._set(SriovReg.HEADER, 4, CAP_ID | CAP_VERSION << 16 | next_capability << 20)
        self._set(SriovReg.TOTAL_VFS, 2, total_vfs)
        self._set(SriovReg.INITIAL_VFS, 2, initial_vfs)
        self._set(SriovReg.VF_DEVICE_ID, 2, vf_device_id)
        self._set(SriovReg.SUPPORTED_PAGE_SIZES, 4, supported_page_sizes)
        self._set(SriovReg.SYSTEM_PAGE_SIZE, 4, 1)
        self._update_geometry()

    @staticmethod
    def _check_bars(bars: list[VfBar | None]) -> list[VfBar | None]:
        if len(bars) > VF_BARS:
            raise ValueError(f"a PF has {VF_BARS} VF BAR slots, not {len(bars)}")
        for slot, bar in enumerate(bars):
            if bar is None:
                continue
            if bar.size < PAGE_SIZE_UNIT or bar.size & (bar.size - 1):
                raise ValueError(f"VF BAR{slot} size {bar.size:#x} is not a power of two "
                                 "of at least 4 KiB")
            if bar.wide and (slot + 1 == VF_BARS or bars[slot + 1] is not None):
                raise ValueError(f"64-bit VF BAR{slot} needs slot {slot + 1} free")
            if not bar.wide and bar.size > 1 << 31:
                raise ValueError(f"32-bit VF BAR{slot} cannot be {bar.size:#x} bytes")
        return bars

    # --- raw storage ---

    def _get(self, reg: int, width: int) -> int:
        return int.from_bytes(self._space[reg:reg + width], "little")

    def _set(self, reg: int, width: int, value: int) -> None:
        self._space[reg:reg + width] = value.to_bytes(width, "little")

    # --- configuration accesses ---

    @staticmethod
    def _check_access(offset: int, size: int) -> None:
        if size not in (1, 2, 4) or offset % size or not 0 <= offset <= CAP_SIZE - size:
            raise ValueError(f"a {size}-byte access at {offset:#x} is not an aligned access "
                             f"of 1, 2 or 4 bytes inside the {CAP_SIZE}-byte capability")

    def read(self, offset: int, size: int) -> int:
        """A configuration read of `size` bytes at `offset` from the capability's start."""
        self._check_access(offset, size)
        dword = offset & ~3
        shift = (offset & 3) * 8
        return self._dword(dword) >> shift & ((1 << 8 * size) - 1)

    def _dword(self, dword: int) -> int:
        slot = self._bar_slot(dword)
        if slot is None:
            return self._get(dword, 4)
        return self._bar_register(slot)

    def write(self, offset: int, size: int, value: int) -> None:
        """A configuration write: read-only fields keep their value; NumVFs, System Page
        Size, Control and the VF BARs follow the rules of hv.md §4.1-4.4. A write whose result
        the specification leaves undefined (NumVFs beyond TotalVFs, a page size the device
        does not support) raises ValueError; NumVFs and System Page Size written while VF
        Enable is set keep their value."""
        self._check_access(offset, size)
        if not 0 <= value < 1 << 8 * size:
            raise ValueError(f"{value:#x} does not fit a {size}-byte write")
        dword = offset & ~3
        shift = (offset & 3) * 8
        mask = ((1 << 8 * size) - 1) << shift
        merged = self._dword(dword) & ~mask | value << shift
        slot = self._bar_slot(dword)
        if slot is not None:
            self._write_bar(slot, merged)
            return
        for reg, (width, writable) in WRITABLE.items():
            reg_shift = (reg - dword) * 8
            if reg & ~3 == dword and mask >> reg_shift & ((1 << 8 * width) - 1):
                self._write_field(reg, merged >> reg_shift & writable)

    def _write_field(self, reg: int, value: int) -> None:
        enabled = self.control & SriovControl.VFE
        if reg == SriovReg.CONTROL:
            self._write_control(value)
        elif enabled:
            # SR-IOV 1.1 §3.3.7, §3.3.13: NumVFs and System Page Size may change only while
            # VF Enable is clear; the model keeps the old value.
            return
        elif reg == SriovReg.NUM_VFS:
            if value > self.total_vfs:
                raise ValueError(f"NumVFs {value} is beyond TotalVFs {self.total_vfs}")
            self._set(SriovReg.NUM_VFS, 2, value)
            self._update_geometry()
        else:
            self._write_page_size(value)

    def _write_control(self, value: int) -> None:
        old = self.control
        self._set(SriovReg.CONTROL, 2, value)
        if (old ^ value) & SriovControl.ARI:
            self._update_geometry()
        if value & SriovControl.VFE and not old & SriovControl.VFE:
            self._enabled_at = self.now_ms
        elif old & SriovControl.VFE and not value & SriovControl.VFE:
            self._enabled_at = None     # hv.md §4.4: clearing VF Enable removes the VFs

    def _write_page_size(self, value: int) -> None:
        if value == 0 or value & (value - 1) or not value & self.supported_page_sizes:
            raise ValueError(f"System Page Size {value:#x} is not exactly one supported size "
                             f"(supported {self.supported_page_sizes:#x})")
        page = PAGE_SIZE_UNIT * value
        for slot, bar in enumerate(self.bars):
            if bar is not None and bar.size % page:
                raise ValueError(f"VF BAR{slot} size {bar.size:#x} is not a multiple of the "
                                 f"system page size {page:#x} (hv.md §4.3)")
        self._set(SriovReg.SYSTEM_PAGE_SIZE, 4, value)

    def _update_geometry(self) -> None:
        offset, stride = self.geometry(self.num_vfs, bool(self.control & SriovControl.ARI))
        if not (0 <= offset < 1 << 16 and 0 <= stride < 1 << 16):
            raise ValueError(f"the device's geometry gave offset {offset} and stride {stride}, "
                             "not two 16-bit values")
        self._set(SriovReg.FIRST_VF_OFFSET, 2, offset)
        self._set(SriovReg.VF_STRIDE, 2, stride)

    # --- VF BARs ---

    def _bar_slot(self, dword: int) -> int | None:
        slot = (dword - SriovReg.VF_BAR0) // BAR_SLOT
        return slot if 0 <= slot < VF_BARS else None

    def _bar_of(self, slot: int) -> tuple[int, VfBar | None, bool]:
        """(the BAR's first slot, its declaration, whether `slot` is its upper half)."""
        below = self.bars[slot - 1] if slot else None
        if self.bars[slot] is None and below is not None and below.wide:
            return slot - 1, below, True
        return slot, self.bars[slot], False

    def _bar_register(self, slot: int) -> int:
        first, bar, upper = self._bar_of(slot)
        if bar is None:
            return 0
        flags = (BAR_64BIT if bar.wide else 0) | (BAR_PREFETCH if bar.prefetchable else 0)
        value = self._bar_values[first] | flags
        return value >> 32 if upper else value & 0xFFFF_FFFF

    def _write_bar(self, slot: int, dword: int) -> None:
        # PCI 3.0 §6.2.5.1: address bits below the size read back 0, so writing all ones
        # and reading back gives the size; the type bits are read-only.
        first, bar, upper = self._bar_of(slot)
        if bar is None:
            return
        old = self._bar_values[first]
        raw = (old & 0xFFFF_FFFF | dword << 32) if upper else (old & ~0xFFFF_FFFF | dword)
        width = 64 if bar.wide else 32
        self._bar_values[first] = raw & ~(bar.size - 1) & ~BAR_FLAGS & ((1 << width) - 1)

    def vf_bar_base(self, index: int) -> int:
        """The programmed base of the aggregate window of VF BAR`index`."""
        if self.bars[index] is None:
            raise ValueError(f"VF BAR{index} is not implemented")
        return self._bar_values[index]

    def vf_bar_window(self, index: int) -> int:
        """The size of VF BAR`index`'s aggregate window: one VF's size times TotalVFs (Linux
        sizes by TotalVFs, hv.md §4.3, §8 item 18)."""
        if self.bars[index] is None:
            raise ValueError(f"VF BAR{index} is not implemented")
        return self.bars[index].size * self.total_vfs

    # --- fields by name ---

    @property
    def control(self) -> int:
        """SR-IOV Control."""
        return self._get(SriovReg.CONTROL, 2)

    @property
    def total_vfs(self) -> int:
        """TotalVFs."""
        return self._get(SriovReg.TOTAL_VFS, 2)

    @property
    def num_vfs(self) -> int:
        """NumVFs."""
        return self._get(SriovReg.NUM_VFS, 2)

    @property
    def first_vf_offset(self) -> int:
        """First VF Offset, for the current NumVFs and ARI."""
        return self._get(SriovReg.FIRST_VF_OFFSET, 2)

    @property
    def vf_stride(self) -> int:
        """VF Stride, for the current NumVFs and ARI."""
        return self._get(SriovReg.VF_STRIDE, 2)

    @property
    def vf_device_id(self) -> int:
        """VF Device ID."""
        return self._get(SriovReg.VF_DEVICE_ID, 2)

    @property
    def supported_page_sizes(self) -> int:
        """Supported Page Sizes."""
        return self._get(SriovReg.SUPPORTED_PAGE_SIZES, 4)

    @property
    def system_page_size(self) -> int:
        """The system page size in bytes."""
        return PAGE_SIZE_UNIT * self._get(SriovReg.SYSTEM_PAGE_SIZE, 4)

    # --- model time and the VFs ---

    def step(self, ms: int) -> None:
        """Advance model time by `ms` milliseconds."""
        if ms < 0:
            raise ValueError("model time only moves forward")
        self.now_ms += ms

    @property
    def vfs(self) -> list[VirtualFunction]:
        """The VFs present: NumVFs of them once VF Enable has been set for VF_SETTLE_MS,
        none otherwise."""
        if self._enabled_at is None or self.now_ms - self._enabled_at < VF_SETTLE_MS:
            return []
        memory = bool(self.control & SriovControl.VF_MSE)
        return [VirtualFunction(
            index=k, rid=vf_rid(self.rid, self.first_vf_offset, self.vf_stride, k),
            vendor_id=self.vendor_id, device_id=self.vf_device_id,
            bars=tuple((self._bar_values[i] + k * bar.size, bar.size)
                       if bar is not None and memory else None
                       for i, bar in enumerate(self.bars)))
            for k in range(self.num_vfs)]
