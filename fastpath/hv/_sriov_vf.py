"""Virtual functions: their routing IDs (hv.md §4.2), identity and BARs (§4.3), and the enable
and disable sequences configuration software runs (§4.4)."""

from __future__ import annotations

from typing import TYPE_CHECKING, NamedTuple

from fastpath.hv._sriov_cap import VF_DISABLE_MS, VF_SETTLE_MS, SriovControl, SriovReg

if TYPE_CHECKING:
    from fastpath.hv._sriov_pf import PhysicalFunction


def vf_rid(pf_rid: int, offset: int, stride: int, k: int) -> int:
    """RID(VF k) = PF RID + First VF Offset + k * VF Stride (hv.md §4.2); a carry out of the
    devfn byte moves the VF to a following bus. ValueError past bus 255."""
    rid = pf_rid + offset + k * stride
    if rid >= 1 << 16:
        raise ValueError(f"VF{k} at {rid:#x} lies beyond bus 0xff")
    return rid


class VirtualFunction(NamedTuple):
    """A VF as the host enumerates it: its index, routing ID (its VT-d source-id), the PF's
    vendor ID with the VF Device ID (hv.md §4.3), and per BAR (address, size), or None where
    the PF implements no VF BAR or VF Memory Space is off."""

    index: int
    rid: int
    vendor_id: int
    device_id: int
    bars: tuple[tuple[int, int] | None, ...]

    @property
    def bus(self) -> int:
        """The VF's bus number."""
        return self.rid >> 8

    @property
    def devfn(self) -> int:
        """The VF's device << 3 | function."""
        return self.rid & 0xFF

    def __str__(self) -> str:
        return f"{self.bus:02x}:{self.devfn >> 3:02x}.{self.devfn & 7}"


def enable_vfs(pf: PhysicalFunction, num_vfs: int) -> list[VirtualFunction]:
    """Linux's enable sequence (hv.md §4.4, `sriov_enable`): write NumVFs, re-read the
    offset and stride it may have changed, check them, set VF Enable and VF Memory Space
    Enable, let the VFs settle, and return them. ValueError (Linux: -EINVAL, -EIO) for a count
    beyond TotalVFs, First VF Offset 0, VF Stride 0 with more than one VF, or VFs that would
    need a bus past 0xff."""
    if pf.control & SriovControl.VFE:
        raise ValueError("VFs are already enabled")
    if not 0 < num_vfs <= pf.total_vfs:
        raise ValueError(f"{num_vfs} VFs asked for; TotalVFs is {pf.total_vfs}")
    pf.write(SriovReg.NUM_VFS, 2, num_vfs)
    offset = pf.read(SriovReg.FIRST_VF_OFFSET, 2)
    stride = pf.read(SriovReg.VF_STRIDE, 2)
    if offset == 0 or (stride == 0 and num_vfs > 1):
        pf.write(SriovReg.NUM_VFS, 2, 0)
        raise ValueError(f"First VF Offset {offset:#x} / VF Stride {stride} cannot place "
                         f"{num_vfs} VFs (hv.md §4.2)")
    try:
        vf_rid(pf.rid, offset, stride, num_vfs - 1)
    except ValueError:
        pf.write(SriovReg.NUM_VFS, 2, 0)
        raise
    control = pf.read(SriovReg.CONTROL, 2)
    pf.write(SriovReg.CONTROL, 2, control | SriovControl.VFE | SriovControl.VF_MSE)
    pf.step(VF_SETTLE_MS)
    return pf.vfs


def disable_vfs(pf: PhysicalFunction) -> None:
    """Linux's disable sequence: clear VF Enable and VF Memory Space Enable, wait, and set
    NumVFs back to 0."""
    control = pf.read(SriovReg.CONTROL, 2)
    pf.write(SriovReg.CONTROL, 2, control & ~(SriovControl.VFE | SriovControl.VF_MSE))
    pf.step(VF_DISABLE_MS)
    pf.write(SriovReg.NUM_VFS, 2, 0)
