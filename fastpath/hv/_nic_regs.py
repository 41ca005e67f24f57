"""The emulated NIC's wire layouts: its registers at the Intel 8254x (e1000) offsets, their
bits, and the legacy 16-byte transmit and receive descriptors (PCI/PCI-X Family of Gigabit
Ethernet Controllers Software Developer's Manual, 8254x, §13 registers, §3.2.3 receive and
§3.3.3 transmit descriptors). Only what the model implements is named here."""

from __future__ import annotations

from enum import IntEnum, IntFlag

import numpy as np

__all__ = ["Reg", "Ctrl", "Status", "Icr", "Rctl", "Tctl", "TxCmd", "TxStatus", "RxStatus",
           "RAH_AV", "IOADDR", "IODATA", "IO_BAR_SIZE", "MMIO_BAR_SIZE", "TX_DESC_DTYPE",
           "RX_DESC_DTYPE", "DESC_SIZE", "RING_ALIGN", "RESET_VALUES"]


class Reg(IntEnum):
    """Register offsets in the memory BAR (8254x manual Table 13-2); all 32 bits wide."""

    CTRL = 0x0000
    STATUS = 0x0008
    ICR = 0x00C0     # interrupt cause read: read to clear, write 1 to clear
    ITR = 0x00C4     # interrupt throttling: stored, not modelled (no timers)
    ICS = 0x00C8     # interrupt cause set: write only
    IMS = 0x00D0     # interrupt mask set: writes set mask bits, reads return the mask
    IMC = 0x00D8     # interrupt mask clear: write only
    RCTL = 0x0100
    TCTL = 0x0400
    RDBAL = 0x2800
    RDBAH = 0x2804
    RDLEN = 0x2808
    RDH = 0x2810
    RDT = 0x2818
    TDBAL = 0x3800
    TDBAH = 0x3804
    TDLEN = 0x3808
    TDH = 0x3810
    TDT = 0x3818
    MPC = 0x4010     # missed packets count: frames dropped for want of a descriptor; R/clr
    RAL0 = 0x5400
    RAH0 = 0x5404


class Ctrl(IntFlag):
    """Device control bits (§13.4.1)."""

    FD = 1 << 0       # full duplex
    SLU = 1 << 6      # set link up
    SPEED_1000 = 2 << 8
    RST = 1 << 26     # device reset, self-clearing


class Status(IntFlag):
    """Device status bits (§13.4.2)."""

    FD = 1 << 0
    LU = 1 << 1       # link up
    SPEED_1000 = 2 << 6


class Icr(IntFlag):
    """Interrupt causes, the same bits in ICR, ICS, IMS and IMC (§13.4.17)."""

    TXDW = 1 << 0     # a transmit descriptor was written back
    TXQE = 1 << 1     # the transmit queue ran empty
    LSC = 1 << 2      # link status change
    RXDMT0 = 1 << 4   # receive descriptors below the minimum threshold
    RXO = 1 << 6      # receiver overrun
    RXT0 = 1 << 7     # receiver timer: a frame was received (RDTR = 0: at once)


class Rctl(IntFlag):
    """Receive control bits (§13.4.22); BSIZE 00 without BSEX is 2048-byte buffers."""

    EN = 1 << 1
    UPE = 1 << 3      # unicast promiscuous
    MPE = 1 << 4      # multicast promiscuous
    BAM = 1 << 15     # accept broadcast
    SECRC = 1 << 26   # strip the CRC (the model never appends one)


class Tctl(IntFlag):
    """Transmit control bits (§13.4.33)."""

    EN = 1 << 1
    PSP = 1 << 3      # pad short packets


class TxCmd(IntFlag):
    """A legacy transmit descriptor's CMD byte (§3.3.3.1)."""

    EOP = 1 << 0      # end of packet: the last descriptor of a frame
    IFCS = 1 << 1     # insert the FCS
    RS = 1 << 3       # report status: write DD back when done
    DEXT = 1 << 5     # extended descriptor: the model refuses these


class TxStatus(IntFlag):
    """A legacy transmit descriptor's STA bits (§3.3.3.2)."""

    DD = 1 << 0       # descriptor done


class RxStatus(IntFlag):
    """A receive descriptor's STATUS byte (§3.2.3.1)."""

    DD = 1 << 0
    EOP = 1 << 1


RAH_AV = 1 << 31      # receive address high: address valid (§13.4.28)

# The I/O BAR (§13.3): IOADDR selects a register by its memory-BAR offset, IODATA reads or
# writes it.
IOADDR, IODATA = 0x00, 0x04
IO_BAR_SIZE = 8
MMIO_BAR_SIZE = 128 << 10

# §3.3.3: buffer address, length, CSO, CMD, STA (bits 3:0; 7:4 reserved), CSS, special.
TX_DESC_DTYPE = np.dtype([("addr", "<u8"), ("length", "<u2"), ("cso", "u1"), ("cmd", "u1"),
                          ("status", "u1"), ("css", "u1"), ("special", "<u2")])
# §3.2.3: buffer address, length, packet checksum, status, errors, special.
RX_DESC_DTYPE = np.dtype([("addr", "<u8"), ("length", "<u2"), ("csum", "<u2"), ("status", "u1"),
                          ("errors", "u1"), ("special", "<u2")])
DESC_SIZE = 16
assert TX_DESC_DTYPE.itemsize == RX_DESC_DTYPE.itemsize == DESC_SIZE
# §13.4.27, §13.4.38: RDLEN and TDLEN are multiples of 128 bytes (eight descriptors).
RING_ALIGN = 128

# The model's reset values: link up at 1000 Mb/s full duplex (what QEMU's e1000 also shows a
# guest); every other register implemented resets to 0.
RESET_VALUES = {Reg.CTRL: Ctrl.SLU | Ctrl.SPEED_1000 | Ctrl.FD,
                Reg.STATUS: Status.FD | Status.LU | Status.SPEED_1000}
