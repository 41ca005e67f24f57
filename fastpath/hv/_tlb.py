"""The TLB the walkers consult: tagged by VPID, PCID and EPTP, with INVEPT and INVVPID."""

from __future__ import annotations

import numpy as np

from fastpath._core import paging as _core
from fastpath.errors import InvalidEptp, InvalidInvalidation
from fastpath.hv._eptp import DEFAULT_CAPS, EptCaps, Eptp

# The core's fp_tlb_entry (fastpath/_core/paging.pxd), field for field.
TLB_ENTRY_DTYPE = np.dtype([
    ("page", "<u8"),
    ("ep4ta", "<u8"),
    ("out_page", "<u8"),
    ("gpa_page", "<u8"),
    ("vpid", "<u2"),
    ("pcid", "<u2"),
    ("kind", "u1"),
    ("level", "u1"),
    ("perms", "u1"),
    ("pad", "u1"),
])
assert TLB_ENTRY_DTYPE.itemsize == _core.TLB_ENTRY_SIZE

GUEST_PHYSICAL = 1   # hv.md §2.6: (EP4TA, GPA page) -> HPA
COMBINED = 2         # (VPID, PCID, EP4TA, GVA page) -> HPA

# hv.md §1.8.
INVEPT_SINGLE_CONTEXT = 1
INVEPT_ALL_CONTEXT = 2
INVVPID_INDIVIDUAL_ADDRESS = 0
INVVPID_SINGLE_CONTEXT = 1
INVVPID_ALL_CONTEXT = 2
INVVPID_SINGLE_CONTEXT_RETAINING_GLOBALS = 3

_INVEPT_CAPS = {INVEPT_SINGLE_CONTEXT: "invept_single_context",
                INVEPT_ALL_CONTEXT: "invept_all_context"}
_INVVPID_CAPS = {
    INVVPID_INDIVIDUAL_ADDRESS: "invvpid_individual_address",
    INVVPID_SINGLE_CONTEXT: "invvpid_single_context",
    INVVPID_ALL_CONTEXT: "invvpid_all_context",
    INVVPID_SINGLE_CONTEXT_RETAINING_GLOBALS: "invvpid_single_context_retaining_globals",
}


class Tlb:
    """A direct-mapped TLB of `entries` 4 KiB translations (a power of two) for one CPU.

    Guest-physical entries are tagged by the EPTP's EP4TA, combined ones by VPID, PCID and
    EP4TA (hv.md §2.6). The walkers look up and fill it in the core; `hits` and `misses` count
    their lookups; `invept` and `invvpid` drop what the instructions drop (§1.8).
    """

    def __init__(self, entries: int = 1024, caps: EptCaps = DEFAULT_CAPS):
        if entries < 1 or entries & (entries - 1):
            raise ValueError("a TLB has a power-of-two number of entries")
        self.caps = caps
        self.table = np.zeros(entries, dtype=TLB_ENTRY_DTYPE)
        self.raw = self.table.view(np.uint8)  # the same bytes, as the core takes them
        self.counters = np.zeros(len(_core.TLB_STATS), dtype=np.uint64)

    @property
    def hits(self) -> int:
        """Lookups answered from the TLB."""
        return int(self.counters[_core.TLB_STATS.index("hits")])

    @property
    def misses(self) -> int:
        """Lookups that walked the tables."""
        return int(self.counters[_core.TLB_STATS.index("misses")])

    def __len__(self) -> int:
        return int(np.count_nonzero(self.table["kind"]))

    def reset_counters(self) -> None:
        """Zero hits and misses."""
        self.counters[:] = 0

    def flush(self) -> None:
        """Drop every entry (a model convenience: what VMXON or a reset would do)."""
        self.table["kind"] = 0

    def invept(self, kind: int, eptp: int = 0) -> int:
        """INVEPT: single-context (1) drops everything tagged with eptp's EP4TA, all-context (2)
        every guest-physical and combined entry. Returns the entries dropped."""
        if not self.caps.has("invept") or kind not in _INVEPT_CAPS or not self.caps.has(
                _INVEPT_CAPS[kind]):
            raise InvalidInvalidation(f"INVEPT type {kind} is not supported")
        t = self.table
        drop = t["kind"] != 0
        if kind == INVEPT_SINGLE_CONTEXT:
            # SDM Vol. 3C §30.3 (INVEPT): a single-context descriptor's EPTP must pass the
            # VM-entry checks.
            try:
                Eptp.decode(eptp, self.caps)
            except InvalidEptp as error:
                raise InvalidInvalidation(f"INVEPT of an invalid EPTP: {error}") from None
            drop &= t["ep4ta"] == eptp & self.caps.ep4ta_mask
        return self._drop(drop)

    def invvpid(self, kind: int, vpid: int = 0, gla: int = 0) -> int:
        """INVVPID: individual-address (0) drops vpid's translations of gla, single-context (1)
        all of vpid's, all-context (2) those of every VPID but 0, single-context retaining
        globals (3) vpid's non-global ones. Returns the entries dropped."""
        if not self.caps.has("invvpid") or kind not in _INVVPID_CAPS or not self.caps.has(
                _INVVPID_CAPS[kind]):
            raise InvalidInvalidation(f"INVVPID type {kind} is not supported")
        if kind != INVVPID_ALL_CONTEXT and vpid == 0:
            raise InvalidInvalidation("INVVPID needs a VPID other than 0 for this type")
        if not 0 <= vpid < 1 << 16:
            raise InvalidInvalidation(f"VPID {vpid} is not a 16-bit value")
        t = self.table
        if kind == INVVPID_ALL_CONTEXT:
            return self._drop((t["kind"] == COMBINED) & (t["vpid"] != 0))
        if kind != INVVPID_INDIVIDUAL_ADDRESS:
            return self.flush_linear(
                vpid, keep_global=kind == INVVPID_SINGLE_CONTEXT_RETAINING_GLOBALS)
        # Canonical for the widest linear address the model has (57 bits, LA57).
        if (gla >> 56) not in (0, (1 << 8) - 1):
            raise InvalidInvalidation(f"INVVPID address {gla:#x} is not canonical")
        # Every entry of vpid whose page (of its translation's size) holds gla.
        shift = 12 + 9 * (t["level"].astype(np.uint64).clip(1) - np.uint64(1))
        drop = (t["kind"] == COMBINED) & (t["vpid"] == vpid)
        return self._drop(drop & ((t["page"] << np.uint64(12)) >> shift
                                  == np.uint64(gla) >> shift))

    def flush_linear(self, vpid: int, pcid: int | None = None,
                     keep_global: bool = False) -> int:
        """Drop vpid's combined translations, only those of `pcid` if given, global ones kept
        if asked. It is what a VM entry or exit does to VPID 0's when "enable VPID" is off
        (hv.md §2.6), and what MOV to CR3 does to the current PCID's non-global ones (SDM
        Vol. 3A §4.10.4.1). Returns the entries dropped."""
        t = self.table
        drop = (t["kind"] == COMBINED) & (t["vpid"] == vpid)
        if pcid is not None:
            drop &= t["pcid"] == pcid
        if keep_global:
            drop &= (t["perms"] & _core.TlbPerm.TLB_PERM_GLOBAL) == 0
        return self._drop(drop)

    def _drop(self, mask: np.ndarray) -> int:
        self.table["kind"][mask] = 0
        return int(np.count_nonzero(mask))
