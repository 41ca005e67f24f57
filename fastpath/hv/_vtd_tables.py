"""Builders of VT-d remapping structures in legacy mode, byte for byte: the root table, context
tables and second-level paging structures (hv.md §3.2, §3.3).

Entry bits come from the core's .pxd (fastpath/_core/vtd.pxd), the one home of these layouts.
The walker reads only what these write, so tables written by any other means walk the same.
"""

from __future__ import annotations

import struct

from fastpath._core.vtd import TranslationType, VtdEntry
from fastpath.hv._host_memory import FrameAllocator, host_buffer
from fastpath.hv._tables import PAGE_4K, RadixTables

ENTRY_SIZE = 16  # root and context entries are 128 bits, 256 to a 4 KiB table
_U64 = struct.Struct("<Q")
_PERMISSIONS = {"r": VtdEntry.SL_READ, "w": VtdEntry.SL_WRITE}


def source_id(bus: int, device: int, function: int) -> int:
    """The requester's source-id, bus << 8 | device << 3 | function (hv.md §3.2)."""
    if not (0 <= bus < 256 and 0 <= device < 32 and 0 <= function < 8):
        raise ValueError(f"{bus:#x}:{device:#x}.{function} is not a PCI address")
    return bus << 8 | device << 3 | function


class SecondLevelTables(RadixTables):
    """A domain's second-level paging structures (hv.md §3.3): 3, 4 or 5 levels.

    `map()` writes a leaf with the permissions and page size given; non-leaf entries it
    creates allow reads and writes, so the leaf decides. `aw` is the context entries' AW for
    this depth (levels = 2 + AW).
    """

    _TABLE_BITS = VtdEntry.SL_READ | VtdEntry.SL_WRITE
    _PAGE_SIZE_BIT = VtdEntry.SL_PAGE_SIZE
    _LEVELS = (3, 4, 5)

    def __init__(self, mem, frames: FrameAllocator, levels: int = 4):
        super().__init__(mem, frames, levels)

    @property
    def aw(self) -> int:
        """The context entry's address-width field for these tables."""
        return self.levels - 2

    def _present(self, entry: int) -> bool:
        return bool(entry & (VtdEntry.SL_READ | VtdEntry.SL_WRITE))

    def map(self, iova: int, hpa: int, size: int = PAGE_4K, perms: str = "rw", *,
            extra: int = 0) -> int:
        """Map [iova, iova + size) to hpa with `perms` (letters of 'rw'); returns the HPA of
        the leaf entry. `extra` ORs raw bits into the leaf (SNP, TM, or deliberately bad
        values)."""
        if set(perms) - _PERMISSIONS.keys():
            raise ValueError(f"second-level permissions are letters of 'rw', not {perms!r}")
        return self._install(iova, size, hpa | sum(_PERMISSIONS[p] for p in set(perms)) | extra)


class RootTable:
    """A legacy-mode root table and the context tables under it, from `frames`.

    `root` is the table's HPA, the value RTADDR takes (TTM 0). `attach()` writes a device's
    context entry, making its bus's context table and root entry as needed.
    """

    def __init__(self, mem, frames: FrameAllocator):
        self._mem = host_buffer(mem)
        self._frames = frames
        self.root = frames.alloc()

    def _read(self, hpa: int) -> int:
        return _U64.unpack_from(self._mem, hpa)[0]

    def _write(self, hpa: int, value: int) -> None:
        _U64.pack_into(self._mem, hpa, value)

    def context_table(self, bus: int) -> int:
        """The HPA of bus's context table, made (and its root entry written) if absent."""
        slot = self.root + bus * ENTRY_SIZE
        entry = self._read(slot)
        if not entry & VtdEntry.VTD_PRESENT:
            entry = self._frames.alloc() | VtdEntry.VTD_PRESENT
            self._write(slot, entry)
            self._write(slot + 8, 0)
        return entry & ~0xFFF

    def context_entry(self, sid: int) -> int:
        """The HPA of source-id sid's context entry (making its context table if absent)."""
        return self.context_table(sid >> 8) + (sid & 0xFF) * ENTRY_SIZE

    def attach(self, sid: int, did: int, tables: SecondLevelTables | None = None, *,
               tt: int = TranslationType.TT_SECOND_LEVEL, fpd: bool = False,
               aw: int | None = None) -> int:
        """Write source-id sid's context entry: present, domain `did`, translating through
        `tables` (None for pass-through), translation type `tt`, FPD. `aw` defaults to the
        tables' depth (2, 4-level, for pass-through). Returns the entry's HPA."""
        if not 0 <= did < 1 << 16:
            raise ValueError(f"domain ID {did} is not a 16-bit value")
        if tables is None and tt != TranslationType.TT_PASS_THROUGH:
            raise ValueError("only a pass-through context entry has no second-level tables")
        aw = aw if aw is not None else (tables.aw if tables is not None else 2)
        lo = ((tables.root if tables is not None else 0) | tt << VtdEntry.CONTEXT_TT_SHIFT
              | (VtdEntry.CONTEXT_FPD if fpd else 0) | VtdEntry.VTD_PRESENT)
        return self.write_context(sid, lo, aw | did << VtdEntry.CONTEXT_DID_SHIFT)

    def write_context(self, sid: int, lo: int, hi: int) -> int:
        """Write raw values into sid's context entry; returns its HPA."""
        slot = self.context_entry(sid)
        self._write(slot, lo)
        self._write(slot + 8, hi)
        return slot

    def detach(self, sid: int) -> None:
        """Clear sid's context entry (not present)."""
        self.write_context(sid, 0, 0)
