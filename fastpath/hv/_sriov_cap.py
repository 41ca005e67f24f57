"""The SR-IOV extended capability's layout (ID 0x10, 64 bytes; hv.md §4.1) and its register
rules: which bytes software may write, and what a write of each field does.

This module is the one home of the capability's offsets and bits.
"""

from __future__ import annotations

from enum import IntEnum, IntFlag

CAP_ID = 0x10            # PCI_EXT_CAP_ID_SRIOV
CAP_SIZE = 64            # PCI_EXT_CAP_SRIOV_SIZEOF
CAP_VERSION = 1
VF_BARS = 6
BAR_SLOT = 4
PAGE_SIZE_UNIT = 4096    # Supported/System Page Size bit n means 4 KiB << n (hv.md §4.1)
# hv.md §4.4: Linux waits 100 ms after setting VF Enable before it touches a VF, and 1 s
# after clearing it.
VF_SETTLE_MS = 100
VF_DISABLE_MS = 1000


class SriovReg(IntEnum):
    """Offsets of the capability's fields from the capability's start (hv.md §4.1)."""

    HEADER = 0x00
    CAPABILITIES = 0x04
    CONTROL = 0x08
    STATUS = 0x0A
    INITIAL_VFS = 0x0C
    TOTAL_VFS = 0x0E
    NUM_VFS = 0x10
    FUNCTION_LINK = 0x12
    FIRST_VF_OFFSET = 0x14
    VF_STRIDE = 0x16
    VF_DEVICE_ID = 0x1A
    SUPPORTED_PAGE_SIZES = 0x1C
    SYSTEM_PAGE_SIZE = 0x20
    VF_BAR0 = 0x24
    MIGRATION_STATE = 0x3C


class SriovControl(IntFlag):
    """SR-IOV Control bits (hv.md §4.1)."""

    VFE = 0x01               # VF Enable
    VFM = 0x02               # VF Migration Enable
    VF_MIGRATION_INTR = 0x04
    VF_MSE = 0x08            # VF Memory Space Enable
    ARI = 0x10               # ARI Capable Hierarchy


# The fields software may change, as (width, writable bits); everything else is read-only
# (SR-IOV 1.1 §3.3). The model's PFs are not VF Migration Capable, so the two migration
# bits of Control stay 0 (§3.3.3.2-3). The VF BARs have their own rule.
WRITABLE = {SriovReg.CONTROL: (2, SriovControl.VFE | SriovControl.VF_MSE | SriovControl.ARI),
            SriovReg.NUM_VFS: (2, 0xFFFF),
            SriovReg.SYSTEM_PAGE_SIZE: (4, 0xFFFF_FFFF)}

# PCI memory BAR type bits (PCI 3.0 §6.2.5.1): bits 2:1 = 0b10 for a 64-bit BAR, bit 3
# prefetchable; bits 3:0 are read-only and not part of the address.
BAR_64BIT = 0x4
BAR_PREFETCH = 0x8
BAR_FLAGS = 0xF

