"""The emulated NIC: a small register-level device in the manner of the Intel 8254x (e1000),
and the guest driver that runs it.

`Nic` is the device: registers at the 8254x offsets (`Reg`; bits in `Ctrl`, `Status`, `Icr`,
`Rctl`, `Tctl`), read-to-clear ICR with IMS/IMC masking, legacy 16-byte descriptors in guest
memory (`TX_DESC_DTYPE`, `RX_DESC_DTYPE`, with DD/EOP/RS), and the I/O BAR's IOADDR/IODATA
window. Its DMA goes through a `DeviceDma`: `GuestRam` (the VMM's view of guest RAM, for an
emulated device) or `RemappedDma` (a device's requests through a VT-d `RemappingUnit` under its
source-id, for an assigned function), so that one device model serves emulation and
assignment alike.

`NicDriver` is the guest's driver: it writes real descriptors and buffers into guest RAM and
returns the guest's events (`EVENT_DTYPE`) for a vCPU to run, reaching the registers through a
`MmioWindow` or a `PortIoWindow`; `NicLayout` places its rings and buffers.
"""

from fastpath.hv._nic_device import RX_BUFFER_SIZE, Nic, NicCounters
from fastpath.hv._nic_dma import DeviceDma, GuestRam, RemappedDma
from fastpath.hv._nic_driver import MmioWindow, NicDriver, NicLayout, PortIoWindow, RegisterWindow
from fastpath.hv._nic_regs import (
    DESC_SIZE,
    IO_BAR_SIZE,
    IOADDR,
    IODATA,
    MMIO_BAR_SIZE,
    RAH_AV,
    RESET_VALUES,
    RX_DESC_DTYPE,
    TX_DESC_DTYPE,
    Ctrl,
    Icr,
    Rctl,
    Reg,
    RxStatus,
    Status,
    Tctl,
    TxCmd,
    TxStatus,
)

__all__ = [
    "Nic",
    "NicCounters",
    "RX_BUFFER_SIZE",
    "DeviceDma",
    "GuestRam",
    "RemappedDma",
    "NicDriver",
    "NicLayout",
    "RegisterWindow",
    "MmioWindow",
    "PortIoWindow",
    "Reg",
    "Ctrl",
    "Status",
    "Icr",
    "Rctl",
    "Tctl",
    "TxCmd",
    "TxStatus",
    "RxStatus",
    "RAH_AV",
    "RESET_VALUES",
    "IOADDR",
    "IODATA",
    "IO_BAR_SIZE",
    "MMIO_BAR_SIZE",
    "DESC_SIZE",
    "TX_DESC_DTYPE",
    "RX_DESC_DTYPE",
]
