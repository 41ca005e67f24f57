"""The emulated NIC (8254x manual §3.2, §3.3, §13): reset values, read-to-clear ICR, IMS/IMC
masking, the I/O window, head/tail wrap and ring full/empty, descriptor write-back, DMA
through VT-d with faults that stop a ring, and a property of the rings against a plain model."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fastpath.hv import HostMemory
from fastpath.hv.nic import (
    DESC_SIZE,
    IOADDR,
    IODATA,
    RAH_AV,
    RX_DESC_DTYPE,
    TX_DESC_DTYPE,
    GuestRam,
    Icr,
    MmioWindow,
    Nic,
    NicDriver,
    NicLayout,
    Rctl,
    Reg,
    RemappedDma,
    RxStatus,
    Status,
    Tctl,
    TxCmd,
    TxStatus,
)
from fastpath.hv.vtd import PAGE_4K, RemappingUnit, RootTable, SecondLevelTables
from fastpath.scenarios.vtd import program_unit

MAC = bytes([0x02, 0, 0, 0, 0, 0x42])
RAM = 1 << 20
LAYOUT = NicLayout(ring_size=16)


class Bench:
    """A NIC over 1 MiB of guest RAM, its frames and interrupts collected."""

    def __init__(self, dma=None):
        self.memory = np.zeros(RAM, np.uint8)
        self.ram = GuestRam(self.memory, 0, RAM)
        self.sent, self.interrupts = [], 0
        self.nic = Nic(dma or self.ram, self.sent.append, self._interrupt)

    def _interrupt(self):
        self.interrupts += 1

    def rings(self, size=16, tx_base=0x1000, rx_base=0x2000):
        nic = self.nic
        for reg, value in ((Reg.TDBAL, tx_base), (Reg.TDLEN, size * DESC_SIZE),
                           (Reg.RDBAL, rx_base), (Reg.RDLEN, size * DESC_SIZE),
                           (Reg.TCTL, Tctl.EN), (Reg.RCTL, Rctl.EN | Rctl.BAM)):
            nic.write(reg, 4, int(value))

    def tx_descriptor(self, index, addr, data, cmd=TxCmd.EOP | TxCmd.RS, base=0x1000):
        self.ram.write(addr, data)
        desc = np.zeros(1, TX_DESC_DTYPE)
        desc["addr"], desc["length"], desc["cmd"] = addr, len(data), cmd
        self.ram.write(base + index * DESC_SIZE, desc.tobytes())

    def rx_descriptor(self, index, addr, base=0x2000):
        desc = np.zeros(1, RX_DESC_DTYPE)
        desc["addr"] = addr
        self.ram.write(base + index * DESC_SIZE, desc.tobytes())

    def tx_status(self, index, base=0x1000):
        return self.ram.read(base + index * DESC_SIZE + 12, 1)[0]


def frame(n, size=64, dst=MAC):
    return dst + bytes([2, 0, 0, 0, 0, 1, 0x88, 0xB5]) + bytes((n + i) & 0xFF
                                                               for i in range(size - 14))


def test_reset_values_and_unimplemented_offsets():
    nic = Bench().nic
    status = nic.read(Reg.STATUS)
    assert status & Status.LU and status & Status.FD
    for reg in (Reg.ICR, Reg.IMS, Reg.RCTL, Reg.TCTL, Reg.RDH, Reg.RDT, Reg.TDH, Reg.TDT):
        assert nic.read(reg) == 0
    assert nic.read(0x0F00) == 0
    with pytest.raises(ValueError):
        nic.read(Reg.ICR + 2, 2)


def test_icr_is_read_to_clear_and_ims_imc_mask_the_line():
    bench = Bench()
    nic = bench.nic
    nic.write(Reg.ICS, 4, Icr.TXDW)           # masked: a cause, no interrupt
    assert bench.interrupts == 0 and nic.read(Reg.IMS) == 0
    nic.write(Reg.IMS, 4, Icr.TXDW | Icr.RXT0)  # unmasking a pending cause raises it
    assert bench.interrupts == 1 and nic.read(Reg.IMS) == Icr.TXDW | Icr.RXT0
    nic.write(Reg.ICS, 4, Icr.RXT0)           # outstanding: no second interrupt
    assert bench.interrupts == 1
    assert nic.read(Reg.ICR) == Icr.TXDW | Icr.RXT0
    assert nic.read(Reg.ICR) == 0              # cleared by the read
    nic.write(Reg.IMC, 4, Icr.RXT0)
    assert nic.read(Reg.IMS) == Icr.TXDW
    nic.write(Reg.ICS, 4, Icr.RXT0)           # masked again
    assert bench.interrupts == 1 and nic.read(Reg.ICR) == Icr.RXT0
    nic.write(Reg.ICS, 4, Icr.TXDW)
    assert bench.interrupts == 2


def test_the_io_window_reaches_the_same_registers():
    nic = Bench().nic
    nic.io_write(IOADDR, 4, Reg.IMS)
    nic.io_write(IODATA, 4, Icr.RXT0)
    assert nic.read(Reg.IMS) == Icr.RXT0
    assert nic.io_read(IOADDR, 4) == Reg.IMS
    nic.io_write(IOADDR, 4, Reg.STATUS)
    assert nic.io_read(IODATA, 4) == nic.read(Reg.STATUS)


def test_transmit_writes_back_dd_only_with_rs_and_wraps_the_head():
    bench = Bench()
    bench.rings(size=8)
    nic = bench.nic
    nic.write(Reg.TDH, 4, 6)
    nic.write(Reg.TDT, 4, 6)
    for k, index in enumerate((6, 7, 0)):
        bench.tx_descriptor(index, 0x10000 + k * 2048, frame(k),
                            TxCmd.EOP | (TxCmd.RS if index != 7 else 0))
    nic.write(Reg.TDT, 4, 1)
    assert bench.sent == [frame(0), frame(1), frame(2)]
    assert nic.read(Reg.TDH) == 1                      # wrapped past the end
    assert [bench.tx_status(i) & TxStatus.DD for i in (6, 7, 0)] == [1, 0, 1]
    assert nic.read(Reg.ICR) & Icr.TXDW


def test_a_frame_spans_descriptors_up_to_eop():
    bench = Bench()
    bench.rings()
    whole = frame(9, 300)
    bench.tx_descriptor(0, 0x10000, whole[:100], TxCmd.RS)
    bench.tx_descriptor(1, 0x20000, whole[100:], TxCmd.EOP | TxCmd.RS)
    bench.nic.write(Reg.TDT, 4, 2)
    assert bench.sent == [whole]


def test_tail_beyond_the_ring_is_ignored():
    bench = Bench()
    bench.rings(size=8)
    bench.nic.write(Reg.TDT, 4, 8)
    assert bench.nic.read(Reg.TDT) == 0 and bench.nic.counters.bad_writes == 1


def test_receive_needs_a_posted_descriptor_and_writes_length_and_dd_eop():
    bench = Bench()
    bench.rings(size=8)
    nic = bench.nic
    mac = int.from_bytes(MAC, "little")
    nic.write(Reg.RAL0, 4, mac & 0xFFFF_FFFF)
    nic.write(Reg.RAH0, 4, mac >> 32 | RAH_AV)
    nic.write(Reg.IMS, 4, Icr.RXT0)
    assert nic.receive([frame(0)]) == 0                # RDH == RDT: empty ring
    assert nic.counters.rx_no_descriptor == 1 and nic.read(Reg.MPC) == 1
    for index in range(8):
        bench.rx_descriptor(index, 0x40000 + index * 2048)
    nic.write(Reg.RDT, 4, 7)                           # full: all but one
    other = frame(1, dst=bytes([2, 0, 0, 0, 0, 0x99]))
    landed = nic.receive([frame(k, 60 + k) for k in range(8)] + [other])
    assert landed == 7 and nic.counters.rx_no_descriptor == 2
    assert nic.counters.rx_filtered == 1 and nic.read(Reg.RDH) == 7
    rx = np.frombuffer(bench.ram.read(0x2000, 8 * DESC_SIZE), RX_DESC_DTYPE)
    assert list(rx["length"][:7]) == [60 + k for k in range(7)]
    assert all(rx["status"][:7] == RxStatus.DD | RxStatus.EOP) and rx["status"][7] == 0
    assert bench.ram.read(0x40000 + 2048, 61) == frame(1, 61)
    assert bench.interrupts == 1 and nic.read(Reg.ICR) == Icr.RXT0


def test_the_driver_and_device_round_trip_through_guest_ram():
    bench = Bench()
    driver = NicDriver(bench.ram, MmioWindow(0xFEBC0000), MAC, LAYOUT)
    apply_window(bench.nic, driver.bring_up())
    frames = [frame(k) for k in range(5)]
    apply_window(bench.nic, driver.send(frames))
    assert bench.sent == frames
    bench.nic.receive(bench.sent)
    _, got = driver.reap()
    assert got == frames and driver.tx_clean == driver.tx_next == 5


def apply_window(nic, records, base=0xFEBC0000):
    """The register accesses of an event stream, as the device sees them."""
    for record in records:
        if record["kind"] == 8 and record["address"] >= base:
            nic.write(int(record["address"]) - base, 4, int(record["value"]))


def _remapping(pages):
    mem = HostMemory(8 << 20, table_area=(1 << 20, 4 << 20))
    root = RootTable(mem, mem.frames)
    tables = SecondLevelTables(mem, mem.frames, 4)
    for page in range(pages):
        tables.map(page * PAGE_4K, (4 << 20) + page * PAGE_4K, PAGE_4K)
    sid = 0x0310
    root.attach(sid, 1, tables)
    unit = RemappingUnit(mem)
    program_unit(unit, root, interrupt_faults=False)
    return mem, unit, sid


def test_dma_through_vtd_walks_once_per_page_and_a_fault_stops_the_ring():
    mem, unit, sid = _remapping(pages=0x40)
    dma = RemappedDma(unit, sid)
    bench = Bench(dma)
    bench.ram = GuestRam(mem, 4 << 20, 0x40 * PAGE_4K)  # the same RAM, by GPA
    bench.rings()
    bench.tx_descriptor(0, 0x10000, frame(0))
    bench.tx_descriptor(1, 0x10800, frame(1))           # the same buffer page
    bench.nic.write(Reg.TDT, 4, 2)
    assert bench.sent == [frame(0), frame(1)]
    # Pages: the ring (read, then DD written) and the buffer page: two walks, hits after.
    assert (dma.walks, dma.iotlb_hits) == (2, dma.lookups - 2)
    assert unit.caches.iotlb_misses == 2
    bench.tx_descriptor(2, 0x80000, frame(2))           # outside the domain
    bench.nic.write(Reg.TDT, 4, 3)
    assert len(bench.sent) == 2 and bench.nic.tx_stopped
    assert (bench.nic.counters.dma_faults, dma.faults) == (1, 1)
    assert dma.last_fault.address == 0x80000 and unit.records()[0][1] >> 63
    bench.tx_descriptor(3, 0x10000, frame(3))
    bench.nic.write(Reg.TDT, 4, 4)                       # a stopped ring stays stopped
    assert len(bench.sent) == 2
    mem.close()


class RingModel:
    """The transmit ring as plain Python: what the device should send for each TDT write."""

    def __init__(self, size):
        self.size, self.head, self.tail = size, 0, 0

    def advance(self, tail):
        sent = []
        while self.head != tail:
            sent.append(self.head)
            self.head = (self.head + 1) % self.size
        self.tail = tail
        return sent


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(0, 15), min_size=1, max_size=12))
def test_transmit_ring_matches_a_plain_model(tails):
    bench = Bench()
    bench.rings(size=16)
    model = RingModel(16)
    for index in range(16):
        bench.tx_descriptor(index, 0x10000 + index * 2048, frame(index))
    for tail in tails:
        bench.sent.clear()
        bench.nic.write(Reg.TDT, 4, tail)
        assert bench.sent == [frame(i) for i in model.advance(tail)]
        assert bench.nic.read(Reg.TDH) == model.head == tail


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 15), st.integers(0, 20)), min_size=1, max_size=10))
def test_receive_ring_matches_a_plain_model(steps):
    # Each step: the driver moves RDT, then frames arrive; the device may fill the
    # descriptors from RDH up to RDT (never RDT itself) and drops the rest.
    bench = Bench()
    bench.rings(size=16)
    nic = bench.nic
    nic.write(Reg.RCTL, 4, Rctl.EN | Rctl.UPE)
    for index in range(16):
        bench.rx_descriptor(index, 0x40000 + index * 2048)
    head, dropped = 0, 0
    for tail, arriving in steps:
        nic.write(Reg.RDT, 4, tail)
        room = (tail - head) % 16
        landed = nic.receive([frame(k) for k in range(arriving)])
        assert landed == min(arriving, room)
        head = (head + landed) % 16
        dropped += arriving - landed
        assert nic.read(Reg.RDH) == head
        assert nic.counters.rx_no_descriptor == dropped
