"""How the emulated NIC reaches guest memory: a `DeviceDma` with two implementations.

`GuestRam` is the VMM's own view of guest RAM, as an emulating VMM has it (QEMU's device
models read and write guest RAM by guest-physical address through its mapping of that RAM):
nothing translates, an address outside RAM is refused. `RemappedDma` is a device's DMA on the
bus, through a VT-d `RemappingUnit` under the device's source-id: every page an access touches
is translated, counting the walks and the IOTLB hits; a fault is recorded by the unit and the
access refused."""

from __future__ import annotations

from typing import Protocol

from fastpath.errors import DmaFault
from fastpath.hv._host_memory import host_buffer
from fastpath.hv._tables import PAGE_4K
from fastpath.hv._vtd_unit import RemappingUnit

__all__ = ["DeviceDma", "GuestRam", "RemappedDma"]


class DeviceDma(Protocol):
    """A device's reads and writes of memory at the addresses its descriptors hold: `read`
    returns the bytes or None when refused; `write` returns whether it was done."""

    def read(self, address: int, length: int) -> bytes | None: ...

    def write(self, address: int, data: bytes) -> bool: ...


class GuestRam:
    """Guest RAM [0, size) as the VMM maps it: GPA g is byte `base + g` of host memory `mem`.
    The guest's own stores (its driver's) land in the same bytes through it."""

    def __init__(self, mem, base: int, size: int):
        self.memory = host_buffer(mem)
        self.base, self.size = base, size
        if base + size > len(self.memory):
            raise ValueError("guest RAM lies outside host memory")
        self.refused = 0

    def _inside(self, address: int, length: int) -> bool:
        if 0 <= address and address + length <= self.size:
            return True
        self.refused += 1
        return False

    def read(self, address: int, length: int) -> bytes | None:
        """`length` bytes at GPA `address`, or None outside RAM."""
        if not self._inside(address, length):
            return None
        start = self.base + address
        return self.memory[start:start + length].tobytes()

    def write(self, address: int, data: bytes) -> bool:
        """Store `data` at GPA `address`; False (nothing stored) outside RAM."""
        if not self._inside(address, len(data)):
            return False
        start = self.base + address
        self.memory[start:start + len(data)] = memoryview(data)
        return True


class RemappedDma:
    """DMA of source-id `source_id` through `unit`, landing in the unit's host memory.

    Counts: `lookups` (page translations asked of the unit), `walks` (those that walked the
    tables) and `iotlb_hits` (those the IOTLB answered), `faults` (accesses refused), and
    `last_fault` (the unit's DmaFault for the latest)."""

    def __init__(self, unit: RemappingUnit, source_id: int):
        self.unit, self.source_id = unit, source_id
        self.lookups = self.walks = self.iotlb_hits = self.faults = 0
        self.last_fault: DmaFault | None = None

    def _pieces(self, address: int, length: int, access: str) -> list[tuple[int, int]] | None:
        # Each 4 KiB page of the access translated on its own, as a device's requests are.
        pieces, end = [], address + length
        while address < end:
            chunk = min(end, (address // PAGE_4K + 1) * PAGE_4K) - address
            try:
                translation = self.unit.dma(self.source_id, address, access)
            except DmaFault as fault:
                self.faults += 1
                self.last_fault = fault
                return None
            self.lookups += 1
            if translation.references:
                self.walks += 1
            else:
                self.iotlb_hits += 1
            offset = address & (translation.page_size - 1)
            pieces.append((translation.hpa | offset, chunk))
            address += chunk
        return pieces

    def read(self, address: int, length: int) -> bytes | None:
        """`length` bytes at IOVA `address`, or None if a page faulted."""
        pieces = self._pieces(address, length, "r")
        if pieces is None:
            return None
        memory = self.unit.mem
        return b"".join(memory[hpa:hpa + n].tobytes() for hpa, n in pieces)

    def write(self, address: int, data: bytes) -> bool:
        """Store `data` at IOVA `address`; False (nothing stored) if a page faulted."""
        pieces = self._pieces(address, len(data), "w")
        if pieces is None:
            return False
        memory, view, at = self.unit.mem, memoryview(data), 0
        for hpa, n in pieces:
            memory[hpa:hpa + n] = view[at:at + n]
            at += n
        return True
