"""VMX exit decisions written from the SDM's words, in plain Python: the oracle for the
bitmaps of `fastpath.hv.vmx`.

The model reads 4 KiB bitmaps bit by bit; the reference keeps sets of intercepted ports and
MSRs, decides from those (SDM Vol. 3C §26.1.3), and builds the bitmap pages as single
little-endian integers, one bit per port or MSR (§25.6.4, §25.6.9). `InstructionOutcomes` is
the VMX instructions' state machine from the SDM's pseudocode.
"""

from __future__ import annotations

__all__ = ["io_exits", "msr_exits", "io_bitmaps", "msr_bitmap", "InstructionOutcomes"]

_PAGE = 4096
LOW_MSRS = range(0x0000_0000, 0x0000_2000)
HIGH_MSRS = range(0xC000_0000, 0xC000_2000)


def io_exits(intercepted: set[int], port: int, size: int) -> bool:
    """An I/O access exits if it wraps past port 0xFFFF or touches an intercepted port."""
    touched = range(port, port + size)
    return touched.stop > 0x10000 or not intercepted.isdisjoint(touched)


def msr_exits(reads: set[int], writes: set[int], msr: int, write: bool) -> bool:
    """RDMSR/WRMSR exits outside the two bitmap ranges, or if the MSR is intercepted."""
    if msr not in LOW_MSRS and msr not in HIGH_MSRS:
        return True
    return msr in (writes if write else reads)


def _page(bits: set[int]) -> bytearray:
    return bytearray(sum(1 << b for b in bits).to_bytes(_PAGE, "little"))


def io_bitmaps(intercepted: set[int]) -> tuple[bytearray, bytearray]:
    """I/O bitmaps A (ports 0-0x7FFF) and B (0x8000-0xFFFF) for a set of ports."""
    return (_page({p for p in intercepted if p < 0x8000}),
            _page({p - 0x8000 for p in intercepted if p >= 0x8000}))


def msr_bitmap(reads: set[int], writes: set[int]) -> bytearray:
    """The 4 KiB MSR bitmap: read-low, read-high, write-low, write-high, 8192 bits each."""
    quarter = 0x2000

    def bits(msrs: set[int], base: int) -> set[int]:
        return ({base + m for m in msrs if m in LOW_MSRS}
                | {base + quarter + m - HIGH_MSRS.start for m in msrs if m in HIGH_MSRS})

    return _page(bits(reads, 0) | bits(writes, 2 * quarter))


class InstructionOutcomes:
    """The VMX instructions' outcomes, from the SDM's pseudocode (Vol. 3C §31.3) alone:
    "ok", "#UD", "VMfailInvalid" or ("VMfailValid", error number). It tracks only what the
    outcomes depend on: VMX operation, the VMXON pointer, the current-VMCS pointer, each
    region's launch state, and which launched regions outlived a VMXOFF. `good` is the set
    of region addresses that are aligned, in memory and carry the right revision identifier;
    `aligned` those that are merely aligned and in memory. Entries assume a VMCS whose
    checks pass."""

    def __init__(self, good: set[int], aligned: set[int]):
        self.good, self.aligned = good, aligned
        self.on = False
        self.vmxon_pointer: int | None = None
        self.current: int | None = None
        self.launched: set[int] = set()
        self.stale: set[int] = set()

    def _fail(self, number: int):
        return "VMfailInvalid" if self.current is None else ("VMfailValid", number)

    def vmxon(self, address: int):
        if self.on:
            return self._fail(15)
        if address not in self.good:
            return "VMfailInvalid"
        self.on, self.vmxon_pointer, self.current = True, address, None
        return "ok"

    def vmxoff(self):
        if not self.on:
            return "#UD"
        self.stale |= self.launched
        self.on, self.vmxon_pointer, self.current = False, None, None
        return "ok"

    def vmclear(self, address: int):
        if not self.on:
            return "#UD"
        if address not in self.aligned:
            return self._fail(2)
        if address == self.vmxon_pointer:
            return self._fail(3)
        self.launched.discard(address)
        self.stale.discard(address)
        if address == self.current:
            self.current = None
        return "ok"

    def vmptrld(self, address: int):
        if not self.on:
            return "#UD"
        if address not in self.aligned:
            return self._fail(9)
        if address == self.vmxon_pointer:
            return self._fail(10)
        if address not in self.good:
            return self._fail(11)
        self.current = address
        return "ok"

    def enter(self, launch: bool):
        if not self.on:
            return "#UD"
        if self.current is None:
            return "VMfailInvalid"
        if launch and self.current in self.launched:
            return self._fail(4)
        if not launch and self.current not in self.launched:
            return self._fail(5)
        if not launch and self.current in self.stale:
            return self._fail(6)
        self.launched.add(self.current)
        return "ok"
