"""A remapping unit's capabilities: the CAP and ECAP registers, built from named features."""

from __future__ import annotations

from dataclasses import dataclass

# hv.md §3.1: the CAP and ECAP fields the model reports, as
# (low bit, width).
CAP_FIELDS = {
    "nd": (0, 3), "rwbf": (4, 1), "cm": (7, 1), "sagaw": (8, 5), "mgaw": (16, 6), "zlr": (22, 1),
    "fro": (24, 10), "sllps": (34, 4), "psi": (39, 1), "nfr": (40, 8), "mamv": (48, 6),
    "dwd": (54, 1), "drd": (55, 1), "pi": (59, 1),
}
ECAP_FIELDS = {
    "c": (0, 1), "qi": (1, 1), "dt": (2, 1), "ir": (3, 1), "eim": (4, 1), "pt": (6, 1),
    "sc": (7, 1), "iro": (8, 10), "mhmv": (20, 4),
}

FAULT_RECORDING_OFFSET = 0x220   # QEMU's (hv.md §3.1): CAP.FRO = 0x22
IOTLB_REGISTERS_OFFSET = 0xF0    # QEMU's: ECAP.IRO = 0xF


def field(word: int, fields: dict[str, tuple[int, int]], name: str) -> int:
    """The named field of a CAP or ECAP word."""
    low, width = fields[name]
    return word >> low & (1 << width) - 1


@dataclass(frozen=True)
class VtdCaps:
    """What a modelled remapping unit supports, and the CAP/ECAP words that say so.

    The defaults are a server-class unit as the spec's vectors assume (hv.md §8 item 8): 3-
    and 4-level tables (SAGAW 39 and 48 bits), MGAW 48, 2 MiB and 1 GiB pages, 256 domains,
    8 fault recording registers, page-selective invalidation up to 2^18 pages, queued
    invalidation, device TLBs, pass-through, interrupt remapping with x2APIC destinations and
    posted interrupts; no snoop control (as QEMU), no write-buffer flushing. `haw` is the host
    address width (the platform's MAXPHYADDR).
    """

    levels: tuple[int, ...] = (3, 4)
    mgaw: int = 48
    haw: int = 46
    page_2m: bool = True
    page_1g: bool = True
    domain_bits: int = 8
    fault_records: int = 8
    mamv: int = 18
    queued_invalidation: bool = True
    device_tlb: bool = True
    pass_through: bool = True
    snoop_control: bool = False
    interrupt_remapping: bool = True
    x2apic: bool = True
    posted_interrupts: bool = True

    def __post_init__(self):
        if not self.levels or set(self.levels) - {3, 4, 5}:
            raise ValueError("SAGAW names 3-, 4- and 5-level tables only")
        if (self.domain_bits - 4) % 2 or not 4 <= self.domain_bits <= 16:
            raise ValueError("a unit has 2^(4 + 2 ND) domains: 4, 6, ..., 16 bits")
        if not 1 <= self.fault_records <= 256:
            raise ValueError("a unit has 1 to 256 fault recording registers")
        if not 36 <= self.haw <= 52 or not 30 <= self.mgaw <= 64:
            raise ValueError("HAW is 36..52 bits and MGAW 30..64")

    @property
    def cap(self) -> int:
        """The CAP register."""
        values = {
            "nd": (self.domain_bits - 4) // 2,
            "sagaw": sum(1 << (levels - 2) for levels in self.levels),
            "mgaw": self.mgaw - 1,
            "fro": FAULT_RECORDING_OFFSET // 16,
            "sllps": int(self.page_2m) | int(self.page_1g) << 1,
            "psi": 1,
            "nfr": self.fault_records - 1,
            "mamv": self.mamv,
            "dwd": 1,
            "drd": 1,
            "pi": int(self.posted_interrupts),
        }
        return _word(CAP_FIELDS, values)

    @property
    def ecap(self) -> int:
        """The ECAP register."""
        values = {
            "qi": int(self.queued_invalidation),
            "dt": int(self.device_tlb),
            "ir": int(self.interrupt_remapping),
            "eim": int(self.x2apic),
            "pt": int(self.pass_through),
            "sc": int(self.snoop_control),
            "iro": IOTLB_REGISTERS_OFFSET // 16,
            "mhmv": 0xF,
        }
        return _word(ECAP_FIELDS, values)


def _word(fields: dict[str, tuple[int, int]], values: dict[str, int]) -> int:
    word = 0
    for name, value in values.items():
        low, width = fields[name]
        if value >> width:
            raise ValueError(f"{name} = {value} does not fit {width} bits")
        word |= value << low
    return word


DEFAULT_CAPS = VtdCaps()
