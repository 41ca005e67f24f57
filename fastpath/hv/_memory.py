"""Guest RAM: memfd-backed regions that another process can map, and address translation."""

from __future__ import annotations

import fcntl
import mmap
import os
from dataclasses import dataclass

import numpy as np

from fastpath._core import guard as _core_guard
from fastpath._core import memory as _core_memory
from fastpath.errors import GuestMemoryError

# One row per region, the same bytes the core reads (fp_region in fastpath/_core/memory.pxd).
REGION_DTYPE = np.dtype(
    [
        ("guest_phys_addr", "<u8"),
        ("size", "<u8"),
        ("user_addr", "<u8"),
        ("host_addr", "<u8"),
    ]
)
assert REGION_DTYPE.itemsize == _core_memory.REGION_SIZE

ADDRESS_LIMIT = 1 << 64
PAGE_SIZE = mmap.PAGESIZE
HUGE_PAGE_SIZE = 2 << 20
# Linux's MFD_HUGETLB (include/uapi/linux/memfd.h); the os module names it on 3.8+.
_MFD_HUGETLB = getattr(os, "MFD_HUGETLB", 4)


@dataclass(frozen=True)
class SharedRegion:
    """A region as it travels between processes: an fd and where its bytes sit.

    `user_addr` is the address the owner of the memory (the front-end) maps it at; a vhost-user
    back-end translates ring addresses through it. `mmap_offset` is where the region starts in fd.
    """

    fd: int
    guest_phys_addr: int
    size: int
    user_addr: int
    mmap_offset: int = 0


class _Mapping:
    """One mapped region: the mmap, a byte view of it, and the fd it came from."""

    # Set only once the mapping exists: a failed one must not close an fd it never took.
    owns_fd = False
    guard_slot: int | None = None

    def __init__(self, shared: SharedRegion, owns_fd: bool):
        self.shared = shared
        if os.fstat(shared.fd).st_size < shared.mmap_offset + shared.size:
            # Touching pages past the end of the file would kill us with SIGBUS.
            raise ValueError("the file is smaller than the region")
        self.map = mmap.mmap(
            shared.fd,
            shared.size,
            flags=mmap.MAP_SHARED,
            prot=mmap.PROT_READ | mmap.PROT_WRITE,
            offset=shared.mmap_offset,
        )
        self.bytes = np.frombuffer(self.map, dtype=np.uint8)
        self.host_addr = self.bytes.ctypes.data
        self.owns_fd = owns_fd
        if not _sealed_against_shrinking(shared.fd):
            # The peer can cut the file short under us (DPDK's memory is not sealed): an
            # access past its new end then reads zeros instead of killing the process, and
            # `faulted` tells the control plane to close that peer.
            length = -(-shared.size // PAGE_SIZE) * PAGE_SIZE
            self.guard_slot = _core_guard.guard(self.host_addr, length)

    @property
    def faulted(self) -> bool:
        """Whether the file under this mapping shrank and an access past its end faulted."""
        return self.guard_slot is not None and _core_guard.faulted(self.guard_slot)

    def close_fd(self) -> None:
        """Close the fd if this mapping owns it; the mapping itself stays until unreferenced."""
        if self.owns_fd:
            self.owns_fd = False
            os.close(self.shared.fd)

    def __del__(self) -> None:
        # A memory nobody closed still gives its fds back when its last mapping goes. Its
        # range is unmapped with it: another mapping may take its place unguarded.
        self.close_fd()
        if self.guard_slot is not None:
            _core_guard.unguard(self.guard_slot)

    @classmethod
    def create(cls, name: str, gpa: int, size: int, hugetlb: bool) -> _Mapping:
        """A new memfd of `size` bytes for guest-physical `gpa`, mapped here."""
        flags = os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING | (_MFD_HUGETLB if hugetlb else 0)
        try:
            fd = os.memfd_create(name, flags)
        except OSError as e:
            raise GuestMemoryError(f"cannot create guest memory: {e}") from e
        try:
            os.ftruncate(fd, size)
            # A peer we share it with can then never shrink it under our mappings (SIGBUS).
            fcntl.fcntl(fd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW)
            mapping = cls(SharedRegion(fd, gpa, size, user_addr=0), owns_fd=True)
        except (OSError, ValueError) as e:
            os.close(fd)
            raise GuestMemoryError(f"cannot map {size:#x} bytes of guest memory: {e}") from e
        # Our own mapping address is the "user address" we show peers, as QEMU does.
        mapping.shared = SharedRegion(fd, gpa, size, user_addr=mapping.host_addr)
        return mapping


class GuestMemory:
    """Guest-physical memory made of memfd regions, with holes between them if asked.

    Create the memory of a guest with `GuestMemory([(gpa, size), ...])`; map a peer's memory
    from the fds it sent with `GuestMemory.from_shared([SharedRegion, ...])`. Every translation
    checks that the whole range lies inside one region. `table` is the region table as a numpy
    array (REGION_DTYPE) that the compiled core and Numba kernels read directly.

    Add or remove regions only while no data-plane thread is popping from a queue over this
    memory: the core reads the region table without a lock (vhost-user stops rings first).
    """

    def __init__(self, layout: list[tuple[int, int]] | None = None, *, hugetlb: bool = False,
                 name: str = "fastpath-guest"):
        # A tuple, replaced on every change: a burst keeps the one it was popped under, so its
        # host addresses stay mapped however the memory changes afterwards.
        self._mappings: tuple[_Mapping, ...] = ()
        self._core = _core_memory.MemoryTable()
        self.table = np.zeros(0, dtype=REGION_DTYPE)
        granule = HUGE_PAGE_SIZE if hugetlb else PAGE_SIZE
        try:
            for gpa, size in layout or []:
                if size <= 0 or size % granule or gpa % granule:
                    raise GuestMemoryError(
                        f"region at {gpa:#x} of {size:#x} bytes is not a whole number of "
                        f"{granule:#x}-byte pages at a page boundary"
                    )
                self._check_placement(gpa, size, user_addr=0)
                self._add(_Mapping.create(name, gpa, size, hugetlb))
        except BaseException:
            self.close()
            raise

    @classmethod
    def from_shared(cls, regions: list[SharedRegion], *, owns_fds: bool = True) -> GuestMemory:
        """Map regions another process shared (fds received over a socket, say).

        With owns_fds, every fd is closed when the memory is, or at once if mapping fails.
        """
        memory = cls()
        try:
            for region in regions:
                memory.add_region(region, owns_fd=owns_fds)
        except BaseException:
            mapped = {m.shared.fd for m in memory.mappings}
            memory.close()
            if owns_fds:
                for region in regions:
                    if region.fd not in mapped:
                        os.close(region.fd)
            raise
        return memory

    def add_region(self, region: SharedRegion, *, owns_fd: bool = True) -> None:
        """Map one more shared region; it may not overlap a mapped one."""
        if region.mmap_offset % mmap.ALLOCATIONGRANULARITY or region.mmap_offset < 0:
            raise GuestMemoryError(f"mmap offset {region.mmap_offset:#x} is not page-aligned")
        self._check_placement(region.guest_phys_addr, region.size, region.user_addr)
        try:
            mapping = _Mapping(region, owns_fd)
        except (OSError, ValueError, OverflowError) as e:
            raise GuestMemoryError(f"cannot map region at {region.guest_phys_addr:#x}: {e}") from e
        self._add(mapping)

    def _check_placement(self, gpa: int, size: int, user_addr: int) -> None:
        """Refuse an empty region, one past the 64-bit space, or one overlapping another."""
        if size <= 0:
            raise GuestMemoryError(f"region at {gpa:#x} is empty")
        for base, kind in ((gpa, "guest-physical"), (user_addr, "front-end virtual")):
            if base < 0 or base + size > ADDRESS_LIMIT:
                raise GuestMemoryError(
                    f"region at {kind} {base:#x} of {size:#x} bytes is outside 64-bit space"
                )
        for m in self._mappings:
            s = m.shared
            if _overlaps(s.guest_phys_addr, s.size, gpa, size):
                raise GuestMemoryError(
                    f"region at {gpa:#x} overlaps the one at {s.guest_phys_addr:#x} in "
                    f"guest-physical space"
                )
            if user_addr and s.user_addr and _overlaps(s.user_addr, s.size, user_addr, size):
                raise GuestMemoryError(f"region at user address {user_addr:#x} overlaps another")

    def remove_region(self, guest_phys_addr: int) -> None:
        """Unmap the region that starts at guest_phys_addr."""
        for m in self._mappings:
            if m.shared.guest_phys_addr == guest_phys_addr:
                self._mappings = tuple(x for x in self._mappings if x is not m)
                self._refresh()
                m.close_fd()
                return
        raise GuestMemoryError(f"no region starts at {guest_phys_addr:#x}")

    def _add(self, mapping: _Mapping) -> None:
        self._mappings = tuple(
            sorted(self._mappings + (mapping,), key=lambda m: m.shared.guest_phys_addr)
        )
        self._refresh()

    def _refresh(self) -> None:
        table = np.zeros(len(self._mappings), dtype=REGION_DTYPE)
        for row, m in zip(table, self._mappings, strict=True):
            row["guest_phys_addr"] = m.shared.guest_phys_addr
            row["size"] = m.shared.size
            row["user_addr"] = m.shared.user_addr
            row["host_addr"] = m.host_addr
        # The core reads this very array: nobody may change it behind its back.
        table.flags.writeable = False
        self.table = table
        self._core.update(table)

    @property
    def mappings(self) -> tuple:
        """Opaque handles that keep every current region mapped while they are referenced."""
        return self._mappings

    @property
    def core(self) -> _core_memory.MemoryTable:
        """The compiled core's view of this memory (for fastpath's own modules)."""
        return self._core

    @property
    def regions(self) -> list[SharedRegion]:
        """The regions, in guest-physical order, as they would be shared with a peer."""
        return [m.shared for m in self._mappings]

    @property
    def size(self) -> int:
        """Total bytes mapped."""
        return sum(m.shared.size for m in self._mappings)

    @property
    def faulted(self) -> bool:
        """Whether a peer cut a region's file short under its mapping and an access faulted:
        that region now reads zeros, and whoever shared it should be cut off."""
        return any(m.faulted for m in self._mappings)

    def translate(self, gpa: int, length: int = 1) -> int:
        """Host address of the guest-physical range [gpa, gpa + length)."""
        hva = self._core.gpa_to_hva(gpa, length) if _in_u64(gpa, length) else 0
        if not hva:
            raise GuestMemoryError(
                f"guest range {gpa:#x}+{length:#x} is not inside one region of guest memory"
            )
        return hva

    def translate_user(self, uva: int, length: int = 1) -> int:
        """Host address of a range given in the front-end's virtual addresses."""
        hva = self._core.uva_to_hva(uva, length) if _in_u64(uva, length) else 0
        if not hva:
            raise GuestMemoryError(
                f"front-end range {uva:#x}+{length:#x} is not inside one region of guest memory"
            )
        return hva

    def user_to_guest(self, uva: int) -> int:
        """The guest-physical address of a front-end virtual address."""
        for m in self._mappings:
            s = m.shared
            if s.user_addr <= uva < s.user_addr + s.size:
                return s.guest_phys_addr + (uva - s.user_addr)
        raise GuestMemoryError(f"front-end address {uva:#x} is in no region")

    def guest_to_user(self, gpa: int) -> int:
        """The front-end virtual address of a guest-physical address."""
        for m in self._mappings:
            s = m.shared
            if s.guest_phys_addr <= gpa < s.guest_phys_addr + s.size:
                return s.user_addr + (gpa - s.guest_phys_addr)
        raise GuestMemoryError(f"guest address {gpa:#x} is in no region")

    def mapping_at(self, gpa: int) -> object:
        """An opaque handle that keeps the region holding gpa mapped while it is referenced.

        Queues hold one for each ring area, so that closing the memory or removing a region
        never leaves compiled code pointing at unmapped pages.
        """
        for m in self._mappings:
            if 0 <= gpa - m.shared.guest_phys_addr < m.shared.size:
                return m
        raise GuestMemoryError(f"guest address {gpa:#x} is in no region")

    def view(self, gpa: int, length: int) -> np.ndarray:
        """A writable uint8 numpy view of [gpa, gpa + length), without copying."""
        self.translate(gpa, length)
        m = self.mapping_at(gpa)
        offset = gpa - m.shared.guest_phys_addr
        return m.bytes[offset : offset + length]

    def read(self, gpa: int, length: int) -> bytes:
        """A copy of the bytes at [gpa, gpa + length)."""
        return self.view(gpa, length).tobytes()

    def write(self, gpa: int, data: bytes) -> None:
        """Copy data to guest memory at gpa."""
        self.view(gpa, len(data))[:] = np.frombuffer(data, dtype=np.uint8)

    def close(self) -> None:
        """Close the fds this object owns and drop its mappings.

        A mapping stays valid while a queue or a view made from it is alive.
        """
        mappings, self._mappings = self._mappings, ()
        self._refresh()
        for m in mappings:
            m.close_fd()

    def __enter__(self) -> GuestMemory:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        parts = ", ".join(f"{s.guest_phys_addr:#x}+{s.size:#x}" for s in self.regions)
        return f"GuestMemory([{parts}])"


def _sealed_against_shrinking(fd: int) -> bool:
    try:
        return bool(fcntl.fcntl(fd, fcntl.F_GET_SEALS) & fcntl.F_SEAL_SHRINK)
    except OSError:  # not a memfd (a hugetlbfs file, say): never sealed
        return False


def _in_u64(addr: int, length: int) -> bool:
    return 0 <= addr < ADDRESS_LIMIT and 0 <= length < ADDRESS_LIMIT


def _overlaps(a: int, a_size: int, b: int, b_size: int) -> bool:
    return a < b + b_size and b < a + a_size
