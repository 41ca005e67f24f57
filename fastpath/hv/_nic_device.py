"""The emulated NIC: an 8254x-style register file over descriptor rings in guest memory.

`Nic` is the device side only. Software reaches its registers with `read` / `write` at their
memory-BAR offsets (or `io_read` / `io_write` through the I/O BAR's IOADDR/IODATA window);
it reaches memory through a `DeviceDma` (`_nic_dma`); frames it transmits go to `wire`, frames
from the wire come in through `receive`; its interrupt line is `interrupt()`, called when a
cause is set that IMS lets through and no interrupt is outstanding (ICR not yet read).

Semantics (8254x manual §3.2, §3.3, §13):
* transmit: a write of TDT with TCTL.EN set processes descriptors from TDH up to TDT; the
  buffers of descriptors up to one with EOP make a frame, sent to `wire`; a descriptor with
  RS gets DD written back; TDH advances past each. TXDW is raised once something was written
  back, TXQE when the ring is empty.
* receive: a frame is accepted when RCTL.EN is set and its destination is RAL0/RAH0 (with AV),
  broadcast with BAM, or anything with UPE; it needs a descriptor between RDH and RDT (RDH ==
  RDT: none, the frame is dropped and counted in MPC) and fits one buffer (2048 bytes, BSIZE
  00); it is written, the descriptor gets its length and DD | EOP, RDH advances, RXT0 is raised.
* a ring is empty when head == tail; the driver leaves one descriptor unused so that a full
  ring is tail one behind head. RDLEN/TDLEN are multiples of 128 bytes; a head or tail write
  beyond the ring is a guest error, ignored and counted in `bad_writes`.
* DMA refused (an address outside guest RAM, a VT-d fault) stops that ring as hardware does on
  a bus error: nothing more is processed on it until reset (CTRL.RST), counted in
  `dma_faults`.

Decisions: no checksum or TCP segmentation offload (DEXT descriptors are skipped with DD set),
no interrupt timers (ITR, RDTR stored, not applied), no multicast table: a deliberately
small device.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from fastpath.hv._nic_dma import DeviceDma
from fastpath.hv._nic_regs import (
    DESC_SIZE,
    IOADDR,
    IODATA,
    RAH_AV,
    RESET_VALUES,
    RING_ALIGN,
    RX_DESC_DTYPE,
    TX_DESC_DTYPE,
    Ctrl,
    Icr,
    Rctl,
    Reg,
    RxStatus,
    Tctl,
    TxCmd,
    TxStatus,
)

__all__ = ["Nic", "NicCounters", "RX_BUFFER_SIZE"]

RX_BUFFER_SIZE = 2048
BROADCAST = b"\xff" * 6
_STATUS_OFFSET = TX_DESC_DTYPE.fields["status"][1]
_RX_WRITE_BACK = RX_DESC_DTYPE.fields["length"][1]   # length, csum, status, errors, special
# Registers a write stores as written (the rest: read-only, write-1-to-clear, or actions).
_PLAIN = frozenset({Reg.ITR, Reg.RCTL, Reg.TCTL, Reg.RDBAL, Reg.RDBAH, Reg.TDBAL, Reg.TDBAH,
                    Reg.RAL0, Reg.RAH0})


@dataclass
class NicCounters:
    """What the device did: frames sent to the wire and received into the ring, frames
    dropped (no descriptor; not accepted by the filters; too long for a buffer), descriptors
    written back, DMA accesses refused and rings stopped by them, interrupts raised, and head
    or tail writes outside a ring."""

    tx_frames: int = 0
    rx_frames: int = 0
    rx_no_descriptor: int = 0
    rx_filtered: int = 0
    rx_too_long: int = 0
    write_backs: int = 0
    dma_faults: int = 0
    rings_stopped: int = 0
    interrupts: int = 0
    bad_writes: int = 0


class Nic:
    """One NIC function over `dma`; `wire(frame)` takes each transmitted frame and
    `interrupt()` is its interrupt line (an MSI or the INTx assertion, as the platform wires
    it). Starts in its reset state."""

    def __init__(self, dma: DeviceDma, wire: Callable[[bytes], None],
                 interrupt: Callable[[], None]):
        self.dma, self.wire, self.interrupt = dma, wire, interrupt
        self.counters = NicCounters()
        self.reset()

    def reset(self) -> None:
        """The reset state: registers at their reset values, rings idle, nothing pending."""
        self.regs = {reg: int(RESET_VALUES.get(reg, 0)) for reg in Reg}
        self.io_address = 0
        self.asserted = False
        self.tx_stopped = self.rx_stopped = False
        self._partial = b""

    # --- the register interface ---

    def read(self, offset: int, size: int = 4) -> int:
        """A 32-bit register read at its memory-BAR offset; unimplemented offsets read 0."""
        self._check(offset, size)
        if offset not in Reg._value2member_map_:
            return 0
        reg = Reg(offset)
        value = self.regs[reg]
        if reg in (Reg.ICR, Reg.MPC):
            self.regs[reg] = 0      # read to clear (§13.4.17, §13.5.1)
            if reg == Reg.ICR:
                self.asserted = False
        elif reg in (Reg.ICS, Reg.IMC):
            value = 0               # write only
        return value

    def write(self, offset: int, size: int, value: int) -> None:
        """A 32-bit register write; unimplemented offsets ignore it."""
        self._check(offset, size)
        if offset not in Reg._value2member_map_:
            return
        reg, value = Reg(offset), value & 0xFFFF_FFFF
        if reg in _PLAIN:
            self.regs[reg] = value
        elif reg == Reg.CTRL:
            if value & Ctrl.RST:
                self.reset()
            else:
                self.regs[reg] = value
        elif reg == Reg.ICR:
            self.regs[reg] &= ~value
        elif reg == Reg.ICS:
            self._cause(value)
        elif reg == Reg.IMS:
            self.regs[reg] |= value
            self._cause(0)          # unmasking a pending cause raises it
        elif reg == Reg.IMC:
            self.regs[Reg.IMS] &= ~value
        elif reg in (Reg.RDLEN, Reg.TDLEN):
            self.regs[reg] = value & ~(RING_ALIGN - 1) & 0xF_FFFF
        elif reg in (Reg.RDH, Reg.RDT, Reg.TDH, Reg.TDT):
            self._index_write(reg, value & 0xFFFF)

    def io_write(self, port_offset: int, size: int, value: int) -> None:
        """An OUT to the I/O BAR: IOADDR selects a register, IODATA writes it."""
        if port_offset == IOADDR:
            self.io_address = value & 0x1_FFFF
        elif port_offset == IODATA:
            self.write(self.io_address & ~3, 4, value)

    def io_read(self, port_offset: int, size: int) -> int:
        """An IN from the I/O BAR: IOADDR reads back, IODATA reads the selected register."""
        if port_offset == IOADDR:
            return self.io_address
        if port_offset == IODATA:
            return self.read(self.io_address & ~3, 4)
        return 0

    @staticmethod
    def _check(offset: int, size: int) -> None:
        # §13: registers are accessed as aligned 32-bit words.
        if size != 4 or offset % 4:
            raise ValueError(f"an 8254x register access is 4 aligned bytes, not {size} at "
                             f"{offset:#x}")

    def _ring_size(self, length: Reg) -> int:
        return self.regs[length] // DESC_SIZE

    def _index_write(self, reg: Reg, index: int) -> None:
        length = Reg.RDLEN if reg in (Reg.RDH, Reg.RDT) else Reg.TDLEN
        if index >= max(self._ring_size(length), 1):
            self.counters.bad_writes += 1
            return
        self.regs[reg] = index
        if reg == Reg.TDT:
            self._transmit()

    def _cause(self, causes: int) -> None:
        self.regs[Reg.ICR] |= causes
        if self.regs[Reg.ICR] & self.regs[Reg.IMS] and not self.asserted:
            self.asserted = True
            self.counters.interrupts += 1
            self.interrupt()

    def _descriptor_address(self, low: Reg, high: Reg, index: int) -> int:
        return (self.regs[high] << 32 | self.regs[low]) + index * DESC_SIZE

    def _stop(self, transmit: bool) -> None:
        self.counters.dma_faults += 1
        self.counters.rings_stopped += 1
        if transmit:
            self.tx_stopped = True
        else:
            self.rx_stopped = True

    # --- transmit ---

    def _transmit(self) -> None:
        if not self.regs[Reg.TCTL] & Tctl.EN or self.tx_stopped:
            return
        size, wrote_back = self._ring_size(Reg.TDLEN), False
        while self.regs[Reg.TDH] != self.regs[Reg.TDT]:
            head = self.regs[Reg.TDH]
            at = self._descriptor_address(Reg.TDBAL, Reg.TDBAH, head)
            raw = self.dma.read(at, DESC_SIZE)
            if raw is None:
                self._stop(transmit=True)
                return
            desc = np.frombuffer(raw, TX_DESC_DTYPE)[0]
            cmd = int(desc["cmd"])
            if not cmd & TxCmd.DEXT:
                data = self.dma.read(int(desc["addr"]), int(desc["length"]))
                if data is None:
                    self._stop(transmit=True)
                    return
                self._partial += data
                if cmd & TxCmd.EOP:
                    frame, self._partial = self._partial, b""
                    self.counters.tx_frames += 1
                    self.wire(frame)
            if cmd & TxCmd.RS or cmd & TxCmd.DEXT:
                if not self.dma.write(at + _STATUS_OFFSET, bytes([TxStatus.DD])):
                    self._stop(transmit=True)
                    return
                self.counters.write_backs += 1
                wrote_back = True
            self.regs[Reg.TDH] = (head + 1) % size
        self._cause((Icr.TXDW if wrote_back else 0) | Icr.TXQE)

    # --- receive ---

    def _accepts(self, frame: bytes) -> bool:
        rctl, destination = self.regs[Reg.RCTL], frame[:6]
        if rctl & Rctl.UPE:
            return True
        if destination == BROADCAST:
            return bool(rctl & Rctl.BAM)
        rah = self.regs[Reg.RAH0]
        ours = (self.regs[Reg.RAL0] | (rah & 0xFFFF) << 32).to_bytes(6, "little")
        return bool(rah & RAH_AV) and destination == ours

    def receive(self, frames) -> int:
        """Frames from the wire, in order: each accepted one lands in the next posted receive
        descriptor; returns how many landed."""
        landed = 0
        for frame in frames:
            landed += self._receive_one(bytes(frame))
        if landed:
            self._cause(Icr.RXT0)
        return landed

    def _receive_one(self, frame: bytes) -> int:
        if not self.regs[Reg.RCTL] & Rctl.EN or self.rx_stopped:
            return 0
        if not self._accepts(frame):
            self.counters.rx_filtered += 1
            return 0
        if len(frame) > RX_BUFFER_SIZE:
            self.counters.rx_too_long += 1
            return 0
        head = self.regs[Reg.RDH]
        if head == self.regs[Reg.RDT]:
            self.counters.rx_no_descriptor += 1
            self.regs[Reg.MPC] += 1
            return 0
        at = self._descriptor_address(Reg.RDBAL, Reg.RDBAH, head)
        raw = self.dma.read(at, DESC_SIZE)
        if raw is None or not self.dma.write(int(np.frombuffer(raw, RX_DESC_DTYPE)[0]["addr"]),
                                             frame):
            self._stop(transmit=False)
            return 0
        back = np.zeros(1, RX_DESC_DTYPE)
        back["length"], back["status"] = len(frame), RxStatus.DD | RxStatus.EOP
        if not self.dma.write(at + _RX_WRITE_BACK, back.tobytes()[_RX_WRITE_BACK:]):
            self._stop(transmit=False)
            return 0
        self.counters.rx_frames += 1
        self.counters.write_backs += 1
        self.regs[Reg.RDH] = (head + 1) % self._ring_size(Reg.RDLEN)
        return 1
