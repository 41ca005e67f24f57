"""Path (a), the emulated NIC: every register access is a VM exit of the right kind (an EPT
misconfiguration at the register's GPA for MMIO, I/O-instruction exits with the SDM's
qualification for port I/O), and the counts are what the workload implies."""

from fastpath.hv import HostMemory
from fastpath.hv.nic import IODATA, MmioWindow, NicDriver, PortIoWindow, Reg
from fastpath.hv.vmx import ExitReason, Field, ProcBased, io_qualification
from fastpath.scenarios._io_path import IoWorkload
from fastpath.scenarios._nic_guest import IO_BAR, LAYOUT, MMIO_BAR, SLOT, NicGuest, workload_frames
from fastpath.scenarios._nic_wire import EchoWire
from fastpath.scenarios._path_emulated import _EmulatingVmm, run_emulated

MISCONFIG, IO = ExitReason.EPT_MISCONFIG, ExitReason.IO_INSTRUCTION


def _bench(port_io: bool):
    host = HostMemory(SLOT)
    wire = EchoWire()
    guest = NicGuest(host, 0, bar_perms="wx", CPU_BASED_VM_EXEC_CONTROL=(
        ProcBased.UNCONDITIONAL_IO_EXITING if port_io else 0))
    vmm = _EmulatingVmm(guest, wire)
    window = PortIoWindow(IO_BAR) if port_io else MmioWindow(MMIO_BAR)
    driver = NicDriver(guest.ram, window, guest.mac, LAYOUT, interrupts=False)
    vmm.execute(driver.bring_up())
    guest.restart_counters()
    return host, wire, guest, vmm, driver


def test_an_emulated_transmit_of_one_frame_exits_on_the_tdt_write():
    host, wire, guest, vmm, driver = _bench(port_io=False)
    try:
        frame = workload_frames(IoWorkload(frames=1), guest.mac)[0]
        vmm.execute(driver.send([frame]))
        vcpu = guest.runner.vcpu
        assert guest.runner.counters.by_reason() == {MISCONFIG: 1}
        assert vcpu.vmcs[Field.VM_EXIT_REASON] == MISCONFIG
        assert vcpu.vmcs[Field.GUEST_PHYSICAL_ADDRESS] == MMIO_BAR + Reg.TDT
        assert wire.carried == 1 and vmm.nic.counters.rx_frames == 1   # the frame came back
        _, got = driver.reap()
        assert got == [frame]
    finally:
        wire.close()
        host.close()


def test_port_io_is_two_exits_per_register_with_the_sdm_qualification():
    host, wire, guest, vmm, driver = _bench(port_io=True)
    try:
        vmm.execute(driver.send(workload_frames(IoWorkload(frames=2), guest.mac)))
        vcpu = guest.runner.vcpu
        assert guest.runner.counters.by_reason() == {IO: 2}   # OUT IOADDR, OUT IODATA
        assert vcpu.vmcs[Field.EXIT_QUALIFICATION] == io_qualification(IO_BAR + IODATA, 4,
                                                                         is_in=False)
        assert vmm.nic.read(Reg.TDT) == 2 and vmm.nic.counters.tx_frames == 2
    finally:
        wire.close()
        host.close()


def test_interrupts_cost_an_icr_read_exit_each_and_frames_come_back_intact():
    workload = IoWorkload(frames=48, size=128, burst=16, completion="interrupt")
    mmio, port_io = run_emulated(workload)
    bursts = workload.bursts
    for result in (mmio, port_io):
        assert result.frames_intact == workload.frames
        assert result.interrupts == bursts          # one per burst: TXDW and RXT0 together
        assert result.counters.exits[ExitReason.MSR_WRITE] == bursts   # the EOI
    # Per burst: the TDT write, the handler's ICR read, the RDT write.
    assert mmio.counters.by_reason() == {MISCONFIG: 3 * bursts, ExitReason.MSR_WRITE: bursts}
    assert port_io.counters.exits[IO] == 2 * 3 * bursts


def test_polling_reads_dd_bits_without_exits():
    workload = IoWorkload(frames=40, burst=8, completion="poll")
    mmio, port_io = run_emulated(workload)
    assert mmio.frames_intact == port_io.frames_intact == workload.frames
    assert mmio.interrupts == 0
    assert mmio.counters.by_reason() == {MISCONFIG: 2 * workload.bursts}   # TDT and RDT
    assert port_io.counters.by_reason() == {IO: 4 * workload.bursts}
