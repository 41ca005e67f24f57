"""The EPT capability word (IA32_VMX_EPT_VPID_CAP) and the EPT pointer: decode and validate."""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum

from fastpath._core.paging import EptPointer
from fastpath.errors import InvalidEptp


class MemoryType(IntEnum):
    """EPT memory types (SDM Vol. 3C §28.2.6; hv.md §1.3). 2, 3 and 7 are reserved."""

    UC = 0
    WC = 1
    WT = 4
    WP = 5
    WB = 6


# hv.md §1.2: bit numbers of IA32_VMX_EPT_VPID_CAP (MSR 0x48C), after Linux's VMX_EPT_*_BIT and
# VMX_VPID_*_BIT.
CAP_BITS = {
    "execute_only": 0,
    "walk_length_4": 6,
    "walk_length_5": 7,
    "eptp_uc": 8,
    "eptp_wb": 14,
    "page_2m": 16,
    "page_1g": 17,
    "invept": 20,
    "accessed_dirty": 21,
    "invept_single_context": 25,
    "invept_all_context": 26,
    "invvpid": 32,
    "invvpid_individual_address": 40,
    "invvpid_single_context": 41,
    "invvpid_all_context": 42,
    "invvpid_single_context_retaining_globals": 43,
}
IA32_VMX_EPT_VPID_CAP = 0x48C


@dataclass(frozen=True)
class EptCaps:
    """The model CPU's EPT/VPID capabilities: the MSR word and MAXPHYADDR.

    `EptCaps.with_features(...)` builds a word from feature names (CAP_BITS); the default
    instance has every feature of hv.md §1.2 except 5-level walks, as a recent server part.
    """

    word: int
    maxphyaddr: int = 46

    @classmethod
    def with_features(cls, *names: str, maxphyaddr: int = 46) -> EptCaps:
        """Capabilities with exactly the named features."""
        unknown = set(names) - CAP_BITS.keys()
        if unknown:
            raise ValueError(f"unknown EPT capabilities: {sorted(unknown)}")
        return cls(sum(1 << CAP_BITS[n] for n in set(names)), maxphyaddr)

    def has(self, name: str) -> bool:
        """Whether the named feature (a CAP_BITS key) is reported."""
        return bool(self.word >> CAP_BITS[name] & 1)

    @property
    def ep4ta_mask(self) -> int:
        """EPTP bits M-1:12, the part that names the EPT tables (hv.md §2.6)."""
        return (1 << self.maxphyaddr) - 1 & ~0xFFF


DEFAULT_CAPS = EptCaps.with_features(*(n for n in CAP_BITS if n != "walk_length_5"))


@dataclass(frozen=True)
class Eptp:
    """An EPT pointer's fields (hv.md §1.1)."""

    root: int
    levels: int = 4
    memory_type: MemoryType = MemoryType.WB
    accessed_dirty: bool = False
    supervisor_shadow_stack: bool = False

    @property
    def value(self) -> int:
        """The 64-bit EPTP."""
        walk_length = (self.levels - 1) << EptPointer.EPTP_WALK_LENGTH_SHIFT
        return (self.root | self.memory_type | walk_length
                | (EptPointer.EPTP_AD_ENABLE if self.accessed_dirty else 0)
                | (EptPointer.EPTP_SUPERVISOR_SHADOW_STACK if self.supervisor_shadow_stack
                   else 0))

    @classmethod
    def decode(cls, value: int, caps: EptCaps, *, shadow_stack: bool = False) -> Eptp:
        """The fields of `value`, or InvalidEptp when VM entry would refuse it (hv.md §1.1).

        `shadow_stack` says the CPU supports the supervisor-shadow-stack control, without
        which EPTP bit 7 is reserved (§8 item 4).
        """
        if not 0 <= value < 1 << 64:
            raise InvalidEptp(f"EPTP {value:#x} is not a 64-bit value")
        memory_type = value & EptPointer.EPTP_MEMORY_TYPE_MASK
        if not ((memory_type == MemoryType.UC and caps.has("eptp_uc"))
                or (memory_type == MemoryType.WB and caps.has("eptp_wb"))):
            raise InvalidEptp(f"EPTP memory type {memory_type} is not supported")
        levels = ((value & EptPointer.EPTP_WALK_LENGTH_MASK)
                  >> EptPointer.EPTP_WALK_LENGTH_SHIFT) + 1
        if levels not in (4, 5) or not caps.has(f"walk_length_{levels}"):
            raise InvalidEptp(f"an EPT page-walk length of {levels} is not supported")
        ad = bool(value & EptPointer.EPTP_AD_ENABLE)
        if ad and not caps.has("accessed_dirty"):
            raise InvalidEptp("EPT accessed and dirty flags are not supported")
        sss = bool(value & EptPointer.EPTP_SUPERVISOR_SHADOW_STACK)
        reserved = value & 0xF00 | (0 if shadow_stack else value & 0x80)
        if reserved:
            raise InvalidEptp(f"EPTP reserved bits {reserved:#x} are set")
        if value >> caps.maxphyaddr:
            raise InvalidEptp(f"EPTP bits above MAXPHYADDR ({caps.maxphyaddr}) are set")
        return cls(value & caps.ep4ta_mask, levels, MemoryType(memory_type), ad, sss)
