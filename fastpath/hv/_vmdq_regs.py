"""The VMDq receive-steering registers of an 82599-class NIC at their offsets, with their bits
(hv.md §4.5, after ixgbe_type.h), and the register file that holds them.

This module is the one home of these offsets and bits; the classifier and the reference read
the registers through it.
"""

from __future__ import annotations

from enum import IntFlag

import numpy as np

RAR_ENTRIES = 128        # receive address registers
VLVF_ENTRIES = 64        # VLAN pool filters
POOLS = 64
RX_QUEUES = 128
VFTA_WORDS = 4096 // 32
REGISTER_SPACE = 0x10000

RAH_AV = 1 << 31         # address valid
RAH_ADDRESS_HIGH = 0xFFFF
VLVF_VIEN = 1 << 31      # VLAN pool filter entry enabled
VLVF_VLANID = 0xFFF

VT_CTL = 0x051B0
MRQC = 0x05818
MRQC_MRQE = 0xF

# MRQC.MRQE -> (pools, RSS inside the pool) for the VMDq modes (hv.md §4.5); each pool owns
# RX_QUEUES // pools consecutive queues.
MRQE_MODES = {0x8: (64, False), 0xA: (32, True), 0xB: (64, True), 0xC: (16, False),
              0xD: (32, False)}


class VtCtl(IntFlag):
    """VT_CTL bits; the default pool is the field at DEFAULT_POOL_SHIFT."""

    VT_ENABLE = 1 << 0
    DIS_DEFPL = 1 << 29      # no default pool: frames that would go there are dropped
    REPLEN = 1 << 30         # replicate broadcast and multicast to every accepting pool


DEFAULT_POOL_SHIFT = 7
DEFAULT_POOL_MASK = 0x3F


class Vmolr(IntFlag):
    """Per-pool VM offload register bits that steering reads."""

    UPE = 1 << 22        # unicast promiscuous
    VPE = 1 << 23        # VLAN promiscuous
    AUPE = 1 << 24       # accept untagged
    ROMPE = 1 << 25      # accept multicast hashing to the MTA (not modelled: no MTA)
    ROPE = 1 << 26       # accept unicast hashing to the UTA (not modelled: no UTA)
    BAM = 1 << 27        # accept broadcast
    MPE = 1 << 28        # multicast promiscuous


def ral(i: int) -> int:
    """RAL(i): the low 32 bits of receive address i (its first four bytes)."""
    return (0x05400 if i < 16 else 0x0A200) + 8 * i


def rah(i: int) -> int:
    """RAH(i): the last two bytes of receive address i and AV."""
    return ral(i) + 4


def mpsar(i: int) -> int:
    """MPSAR_LO(i); MPSAR_HI(i) follows it: receive address i's 64-bit pool bitmap."""
    return 0x0A600 + 8 * i


def vfta(i: int) -> int:
    """VFTA(i): bits 32i..32i+31 of the 4096-bit VLAN filter table."""
    return 0x0A000 + 4 * i


def vlvf(i: int) -> int:
    """VLVF(i): VLAN pool filter i (VLAN ID, VIEN)."""
    return 0x0F100 + 4 * i


def vlvfb(i: int) -> int:
    """VLVFB(2i), VLVFB(2i+1): VLAN pool filter i's 64-bit pool bitmap, low word first."""
    return 0x0F200 + 4 * i


def vmolr(pool: int) -> int:
    """VMOLR(pool)."""
    return 0x0F000 + 4 * pool


def vfre(i: int) -> int:
    """VFRE(i), i = 0, 1: receive enable for pools 32i..32i+31."""
    return 0x051E0 + 4 * i


def _words(offsets) -> np.ndarray:
    return np.array(list(offsets), dtype=np.intp) // 4


RAL = _words(ral(i) for i in range(RAR_ENTRIES))
RAH = RAL + 1
MPSAR = _words(mpsar(i) for i in range(RAR_ENTRIES))
VFTA = _words(vfta(i) for i in range(VFTA_WORDS))
VLVF = _words(vlvf(i) for i in range(VLVF_ENTRIES))
VLVFB = _words(vlvfb(2 * i) for i in range(VLVF_ENTRIES))
VMOLR = _words(vmolr(p) for p in range(POOLS))
VFRE = _words(vfre(i) for i in range(2))
_MODELLED = frozenset(np.concatenate([RAL, RAH, MPSAR, MPSAR + 1, VFTA, VLVF, VLVFB, VLVFB + 1,
                                      VMOLR, VFRE, _words([VT_CTL, MRQC])]).tolist())


class VmdqRegisters:
    """The steering registers as 32-bit MMIO words; `words` is the whole space as a numpy
    uint32 array that the classifier gathers from. Every register is read-write; accesses
    are 4 bytes, aligned, to a modelled register (ValueError otherwise)."""

    def __init__(self):
        self.words = np.zeros(REGISTER_SPACE // 4, dtype=np.uint32)

    @staticmethod
    def _word(offset: int) -> int:
        if offset % 4 or offset // 4 not in _MODELLED:
            raise ValueError(f"{offset:#07x} is not a modelled VMDq register")
        return offset // 4

    def read(self, offset: int) -> int:
        """The 32-bit register at `offset`."""
        return int(self.words[self._word(offset)])

    def write(self, offset: int, value: int) -> None:
        """Write the 32-bit register at `offset`."""
        if not 0 <= value < 1 << 32:
            raise ValueError(f"{value:#x} is not a 32-bit value")
        self.words[self._word(offset)] = value

    def write64(self, offset: int, value: int) -> None:
        """Write a 64-bit pool bitmap held in two registers, low word at `offset`."""
        if not 0 <= value < 1 << 64:
            raise ValueError(f"{value:#x} is not a 64-bit bitmap")
        self.write(offset, value & 0xFFFF_FFFF)
        self.write(offset + 4, value >> 32)

    def set_address(self, i: int, mac: int, pools: int, valid: bool = True) -> None:
        """Program receive address i with `mac` (48 bits, first byte most significant) and
        its pool bitmap, as a driver does (ixgbe_set_rar)."""
        wire = int.from_bytes(mac.to_bytes(6, "big"), "little")   # first byte in RAL 7:0
        self.write(ral(i), wire & 0xFFFF_FFFF)
        self.write(rah(i), wire >> 32 | (RAH_AV if valid else 0))
        self.write64(mpsar(i), pools)
