"""Builders of raw paging structures: EPT tables and guest IA-32e tables, byte for byte.

Both are radix trees of 4 KiB tables of 512 little-endian u64 entries (SDM Vol. 3A §4.5,
Vol. 3C §28.2.2); the builders differ only in their entry formats, which come from the core's
.pxd (fastpath/_core/paging.pxd), the one home of those layouts. Walkers only read what these
write, so tables written by any other means walk the same.
"""

from __future__ import annotations

import struct

from fastpath._core.paging import EptEntry, GuestEntry
from fastpath.hv._eptp import Eptp, MemoryType
from fastpath.hv._host_memory import FrameAllocator, host_buffer

PAGE_4K = 1 << 12
PAGE_2M = 1 << 21
PAGE_1G = 1 << 30
LEVEL_OF_SIZE = {PAGE_4K: 1, PAGE_2M: 2, PAGE_1G: 3}
_FRAME = (1 << 52) - 1 & ~0xFFF  # bits 51:12, the widest an entry's address can be
_U64 = struct.Struct("<Q")


class RadixTables:
    """Insertion into a radix tree of tables whose addresses `hpa_of` turns into HPAs."""

    _TABLE_BITS = 0   # what a non-leaf entry this builder creates holds besides the address
    _PAGE_SIZE_BIT = 0
    _LEVELS = (4, 5)  # the depths the format allows

    def __init__(self, mem, frames: FrameAllocator, levels: int, hpa_of=None):
        if levels not in self._LEVELS:
            raise ValueError(f"these paging structures have {' or '.join(map(str, self._LEVELS))}"
                             " levels")
        self._mem = host_buffer(mem)
        self._frames = frames
        self._hpa_of = hpa_of or (lambda address: address)
        self.levels = levels
        self.root = frames.alloc()

    def _read(self, hpa: int) -> int:
        return _U64.unpack_from(self._mem, hpa)[0]

    def _write(self, hpa: int, value: int) -> None:
        _U64.pack_into(self._mem, hpa, value)

    def _present(self, entry: int) -> bool:
        raise NotImplementedError

    def entry_address(self, address: int, level: int) -> int:
        """HPA of the level-`level` entry that translates `address` (its tables must exist)."""
        table = self.root
        for at in range(self.levels, level, -1):
            entry = self._read(self._slot(table, address, at))
            if not self._present(entry) or (at <= 3 and entry & self._PAGE_SIZE_BIT):
                raise LookupError(f"{address:#x} has no level-{at - 1} table")
            table = entry & _FRAME
        return self._slot(table, address, level)

    def _slot(self, table: int, address: int, level: int) -> int:
        return self._hpa_of(table) + ((address >> (12 + 9 * (level - 1))) & 0x1FF) * 8

    def unmap(self, address: int, size: int = PAGE_4K) -> int:
        """Clear the leaf that maps the `size`-byte page at `address` (the tables above it
        stay); returns the HPA of the cleared entry. LookupError when no table leads to it."""
        slot = self.entry_address(address, _page_level(address, size))
        self._write(slot, 0)
        return slot

    def _install(self, address: int, size: int, leaf: int) -> int:
        # Write a leaf for [address, address + size), making the tables above it as needed;
        # returns the HPA of the leaf entry.
        level = _page_level(address, size)
        if leaf & _FRAME & (size - 1):
            raise ValueError(f"a {size:#x}-byte page maps to an address aligned to it, not "
                             f"{leaf & _FRAME:#x}")
        table = self.root
        for at in range(self.levels, level, -1):
            slot = self._slot(table, address, at)
            entry = self._read(slot)
            if not self._present(entry):
                entry = self._frames.alloc() | self._TABLE_BITS
                self._write(slot, entry)
            elif at <= 3 and entry & self._PAGE_SIZE_BIT:
                raise ValueError(f"{address:#x} is already mapped by a larger page")
            table = entry & _FRAME
        slot = self._slot(table, address, level)
        self._write(slot, leaf | (self._PAGE_SIZE_BIT if level > 1 else 0))
        return slot


def _page_level(address: int, size: int) -> int:
    # The level whose leaf maps a page of `size` bytes at `address`.
    level = LEVEL_OF_SIZE.get(size)
    if level is None or address % size:
        raise ValueError(f"a {size:#x}-byte page needs a size of 4 KiB, 2 MiB or 1 GiB and an "
                         "address aligned to it")
    return level


def _ept_permissions(perms: str) -> int:
    bits = {"r": EptEntry.EPT_READ, "w": EptEntry.EPT_WRITE, "x": EptEntry.EPT_EXECUTE}
    if set(perms) - bits.keys():
        raise ValueError(f"EPT permissions are letters of 'rwx', not {perms!r}")
    return sum(bits[p] for p in set(perms))


class EptTables(RadixTables):
    """EPT paging structures in host memory (hv.md §1.3), tables taken from `frames`.

    `map()` writes a leaf with the permissions, memory type and page size given; non-leaf
    entries it creates allow everything (R/W/X), so the leaf decides.
    """

    _TABLE_BITS = EptEntry.EPT_READ | EptEntry.EPT_WRITE | EptEntry.EPT_EXECUTE
    _PAGE_SIZE_BIT = EptEntry.EPT_PAGE_SIZE

    def __init__(self, mem, frames: FrameAllocator, levels: int = 4):
        super().__init__(mem, frames, levels)

    def _present(self, entry: int) -> bool:
        return bool(entry & 7)

    def map(self, gpa: int, hpa: int, size: int = PAGE_4K, perms: str = "rwx",
            memory_type: int = MemoryType.WB, *, ignore_pat: bool = False,
            extra: int = 0) -> int:
        """Map [gpa, gpa + size) to hpa; returns the HPA of the leaf entry.

        `extra` ORs raw bits into the leaf (A/D, suppress-#VE, or deliberately bad values).
        """
        leaf = (hpa | _ept_permissions(perms) | memory_type << EptEntry.EPT_MEMORY_TYPE_SHIFT
                | (EptEntry.EPT_IGNORE_PAT if ignore_pat else 0) | extra)
        return self._install(gpa, size, leaf)

    def eptp(self, memory_type: MemoryType = MemoryType.WB, accessed_dirty: bool = False) -> int:
        """An EPTP naming these tables."""
        return Eptp(self.root, self.levels, memory_type, accessed_dirty).value


class GuestPageTables(RadixTables):
    """Guest IA-32e paging structures (hv.md §1.9), in guest-physical memory.

    `frames` hands out guest-physical table addresses and `hpa_of(gpa)` says where host memory
    holds them (the guest's RAM as EPT maps it). Non-leaf entries it creates are present,
    writable and user-accessible, so the leaf decides; `cr3` is the root's address.
    """

    _TABLE_BITS = GuestEntry.PTE_PRESENT | GuestEntry.PTE_WRITABLE | GuestEntry.PTE_USER
    _PAGE_SIZE_BIT = GuestEntry.PTE_PAGE_SIZE

    def __init__(self, mem, frames: FrameAllocator, hpa_of, levels: int = 4):
        super().__init__(mem, frames, levels, hpa_of)

    @property
    def cr3(self) -> int:
        """A CR3 value naming these tables (PCID 0, PWT = PCD = 0)."""
        return self.root

    def _present(self, entry: int) -> bool:
        return bool(entry & GuestEntry.PTE_PRESENT)

    def map(self, gva: int, gpa: int, size: int = PAGE_4K, *, writable: bool = True,
            user: bool = False, executable: bool = True, global_page: bool = False,
            extra: int = 0) -> int:
        """Map [gva, gva + size) to gpa; returns the HPA of the leaf entry."""
        leaf = (gpa | GuestEntry.PTE_PRESENT | extra
                | (GuestEntry.PTE_WRITABLE if writable else 0)
                | (GuestEntry.PTE_USER if user else 0)
                | (GuestEntry.PTE_GLOBAL if global_page else 0)
                | (0 if executable else 1 << GuestEntry.PTE_EXECUTE_DISABLE_SHIFT))
        return self._install(gva & (1 << (12 + 9 * self.levels)) - 1, size, leaf)
