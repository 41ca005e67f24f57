"""The guest's driver for the emulated NIC: guest software on the platform, so it lives here.

`NicDriver` does what a guest's e1000-style driver does, writing real descriptors and buffers
into guest RAM, and returns what it did as `EVENT_DTYPE` streams for a vCPU to run: its RAM
stores and loads (one event per buffer copy, per descriptor store, per status load) and its
register accesses through a `RegisterWindow` (`MmioWindow`: a load or store at the memory
BAR; `PortIoWindow`: OUT IOADDR then OUT or IN IODATA). Whether an access exits is the vCPU's
business (EPT, I/O exiting), not the driver's.

The driver learns what its register reads returned through `note_icr`, and what the device
wrote back by reading its rings in RAM when it runs `reap` (a load the guest makes returns
what RAM holds when the event runs; the driver reads the same bytes when it builds `reap`'s
events, after the device has run).

Rings hold `ring_size` descriptors, each with a buffer of its own (`NicLayout`); every frame is
one descriptor with EOP | IFCS | RS. The receive ring is kept full but for the one descriptor
that tells full from empty (RDT one behind RDH).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fastpath.hv._nic_device import RX_BUFFER_SIZE
from fastpath.hv._nic_dma import GuestRam
from fastpath.hv._nic_regs import (
    DESC_SIZE,
    IOADDR,
    IODATA,
    RAH_AV,
    RX_DESC_DTYPE,
    TX_DESC_DTYPE,
    Icr,
    Rctl,
    Reg,
    RxStatus,
    Tctl,
    TxCmd,
    TxStatus,
)
from fastpath.hv._vmx_events import EVENT_DTYPE, EventFlag, EventKind, event, events
from fastpath.hv._vmx_posted import X2APIC_EOI_MSR

__all__ = ["NicLayout", "RegisterWindow", "MmioWindow", "PortIoWindow", "NicDriver"]

_PAGE = 4096
_TX_STATUS = TX_DESC_DTYPE.fields["status"][1]
_RX_STATUS = RX_DESC_DTYPE.fields["status"][1]


@dataclass(frozen=True)
class NicLayout:
    """Where the driver keeps its rings and buffers in guest-physical memory: the transmit
    ring at `base`, the receive ring on the page after it, then a buffer of RX_BUFFER_SIZE
    bytes per descriptor, transmit buffers first."""

    ring_size: int = 256
    base: int = 0x1000

    def __post_init__(self) -> None:
        if self.ring_size < 8 or self.ring_size % 8 or self.ring_size * DESC_SIZE > _PAGE:
            raise ValueError("a ring holds a multiple of 8 descriptors, up to a page of them")

    @property
    def tx_ring(self) -> int:
        """GPA of the transmit ring."""
        return self.base

    @property
    def rx_ring(self) -> int:
        """GPA of the receive ring."""
        return self.base + _PAGE

    def tx_buffer(self, index: int) -> int:
        """GPA of transmit descriptor `index`'s buffer."""
        return self.base + 2 * _PAGE + index * RX_BUFFER_SIZE

    def rx_buffer(self, index: int) -> int:
        """GPA of receive descriptor `index`'s buffer."""
        return self.tx_buffer(self.ring_size + index)

    @property
    def end(self) -> int:
        """The first GPA past the last buffer."""
        return self.rx_buffer(self.ring_size)


class RegisterWindow:
    """How the driver reaches a register: the events of one write or read."""

    def write(self, reg: Reg, value: int) -> list[tuple]:
        """The events of writing `value` to `reg`."""
        raise NotImplementedError

    def read(self, reg: Reg) -> list[tuple]:
        """The events of reading `reg` (its value is the last read's)."""
        raise NotImplementedError


class MmioWindow(RegisterWindow):
    """Registers as 32-bit loads and stores at the memory BAR at GPA `base`."""

    def __init__(self, base: int):
        self.base = base

    def write(self, reg: Reg, value: int) -> list[tuple]:
        return [event(EventKind.WRITE, self.base + reg, 4, value)]

    def read(self, reg: Reg) -> list[tuple]:
        return [event(EventKind.READ, self.base + reg, 4)]


class PortIoWindow(RegisterWindow):
    """Registers through the I/O BAR at port `base`: OUT the offset to IOADDR, then OUT or
    IN the data at IODATA (8254x manual §13.3), 32-bit OUT/IN with the port in DX."""

    def __init__(self, base: int):
        self.base = base

    def _select(self, reg: Reg) -> tuple:
        return event(EventKind.IO, self.base + IOADDR, 4, int(reg))

    def write(self, reg: Reg, value: int) -> list[tuple]:
        return [self._select(reg), event(EventKind.IO, self.base + IODATA, 4, value)]

    def read(self, reg: Reg) -> list[tuple]:
        return [self._select(reg), event(EventKind.IO, self.base + IODATA, 4,
                                         flags=EventFlag.IN)]


class NicDriver:
    """The guest driver of one NIC: its rings in `ram` at `layout`, its MAC (six bytes),
    its registers through `window`; with `interrupts` it unmasks TXDW and RXT0 and runs an
    interrupt handler, else it polls."""

    def __init__(self, ram: GuestRam, window: RegisterWindow, mac: bytes,
                 layout: NicLayout = NicLayout(), interrupts: bool = True):
        if len(mac) != 6:
            raise ValueError("a MAC is six bytes")
        self.ram, self.window, self.mac = ram, window, mac
        self.layout, self.interrupts = layout, interrupts
        self.tx_next = 0      # the next transmit descriptor to fill (TDT)
        self.tx_clean = 0     # the oldest transmit descriptor not yet reclaimed
        self.rx_next = 0      # the next receive descriptor the device fills
        self.rx_tail = 0      # RDT
        self.causes_seen = 0  # every ICR value read, OR'd

    @property
    def tx_free(self) -> int:
        """Transmit descriptors the driver may fill (one stays unused: full != empty)."""
        return self.layout.ring_size - 1 - (self.tx_next - self.tx_clean) % self.layout.ring_size

    def bring_up(self) -> np.ndarray:
        """Program the device (§14: address, rings, controls, interrupt mask) and post every
        receive buffer but one."""
        layout, records = self.layout, []
        size = layout.ring_size
        for index in range(size):
            records += self._store_rx_descriptor(index)
        mac = int.from_bytes(self.mac, "little")
        for reg, value in ((Reg.RAL0, mac & 0xFFFF_FFFF), (Reg.RAH0, mac >> 32 | RAH_AV),
                           (Reg.TDBAL, layout.tx_ring), (Reg.TDBAH, 0),
                           (Reg.TDLEN, size * DESC_SIZE), (Reg.TDH, 0), (Reg.TDT, 0),
                           (Reg.RDBAL, layout.rx_ring), (Reg.RDBAH, 0),
                           (Reg.RDLEN, size * DESC_SIZE), (Reg.RDH, 0), (Reg.RDT, 0),
                           (Reg.TCTL, Tctl.EN | Tctl.PSP),
                           (Reg.RCTL, Rctl.EN | Rctl.BAM | Rctl.SECRC)):
            records += self.window.write(reg, int(value))
        if self.interrupts:
            records += self.window.write(Reg.IMS, int(Icr.TXDW | Icr.RXT0))
        self.rx_tail = size - 1
        records += self.window.write(Reg.RDT, self.rx_tail)
        return events(*records)

    def _store_rx_descriptor(self, index: int) -> list[tuple]:
        desc = np.zeros(1, RX_DESC_DTYPE)
        desc["addr"] = self.layout.rx_buffer(index)
        at = self.layout.rx_ring + index * DESC_SIZE
        self.ram.write(at, desc.tobytes())
        return [event(EventKind.WRITE, at, 8, int(desc["addr"][0]))]

    def send(self, frames) -> np.ndarray:
        """Copy `frames` into transmit buffers, fill a descriptor for each, and write TDT
        once: the events of that. ValueError when the ring has no room for them all."""
        if len(frames) > self.tx_free:
            raise ValueError(f"{len(frames)} frames; the transmit ring has room for "
                             f"{self.tx_free}")
        layout, records = self.layout, []
        for frame in frames:
            if len(frame) > RX_BUFFER_SIZE:
                raise ValueError(f"a {len(frame)}-byte frame is longer than a buffer")
            index = self.tx_next
            buffer = layout.tx_buffer(index)
            self.ram.write(buffer, bytes(frame))
            records.append(event(EventKind.WRITE, buffer, 8,
                                 int.from_bytes(bytes(frame[:8]), "little")))
            desc = np.zeros(1, TX_DESC_DTYPE)
            desc["addr"], desc["length"] = buffer, len(frame)
            desc["cmd"] = TxCmd.EOP | TxCmd.IFCS | TxCmd.RS
            at = layout.tx_ring + index * DESC_SIZE
            self.ram.write(at, desc.tobytes())
            records.append(event(EventKind.WRITE, at, 8, buffer))
            self.tx_next = (index + 1) % layout.ring_size
        records += self.window.write(Reg.TDT, self.tx_next)
        return events(*records)

    def acknowledge(self) -> np.ndarray:
        """The interrupt handler's first step: read ICR (which clears it); give the value
        read to `note_icr`."""
        return events(*self.window.read(Reg.ICR))

    def note_icr(self, value: int) -> None:
        """What the handler's ICR read returned."""
        self.causes_seen |= value

    def reap(self) -> tuple[np.ndarray, list[bytes]]:
        """Collect what the device finished: load each receive descriptor's status until one
        without DD, copying each frame out; load each sent descriptor's status until one
        without DD, reclaiming it; hand the emptied receive descriptors back (a write of
        RDT); after an interrupt, end it with an EOI. Returns the events and the frames."""
        layout, size = self.layout, self.layout.ring_size
        records, frames = [], []
        while True:
            at = layout.rx_ring + self.rx_next * DESC_SIZE
            records.append(event(EventKind.READ, at + _RX_STATUS, 1))
            desc = np.frombuffer(self.ram.read(at, DESC_SIZE), RX_DESC_DTYPE)[0]
            if not desc["status"] & RxStatus.DD:
                break
            buffer = int(desc["addr"])
            frames.append(self.ram.read(buffer, int(desc["length"])))
            records.append(event(EventKind.READ, buffer, 8))
            records += self._store_rx_descriptor(self.rx_next)
            self.rx_next = (self.rx_next + 1) % size
        while self.tx_clean != self.tx_next:
            at = layout.tx_ring + self.tx_clean * DESC_SIZE + _TX_STATUS
            records.append(event(EventKind.READ, at, 1))
            if not self.ram.read(at, 1)[0] & TxStatus.DD:
                break
            self.tx_clean = (self.tx_clean + 1) % size
        if frames:
            self.rx_tail = (self.rx_next - 1) % size
            records += self.window.write(Reg.RDT, self.rx_tail)
        if self.interrupts:
            records.append(event(EventKind.WRMSR, X2APIC_EOI_MSR))
        return np.array(records, dtype=EVENT_DTYPE), frames
