"""The workload driver over an event stream, with exact counts, and the cost model's
arithmetic."""

import numpy as np
import pytest

from fastpath.errors import EptMisconfig, EptViolation, VmxError
from fastpath.hv import HostMemory, ept
from fastpath.hv.ept import PAGE_4K, EptTables, EptTranslation
from fastpath.hv.vmx import (
    DEFAULT_HANDLER_CYCLES,
    EVENT_DTYPE,
    CostModel,
    EventFlag,
    EventKind,
    ExitControls,
    ExitReason,
    Field,
    GuestRunner,
    PinBased,
    ProcBased,
    Secondary,
    VcpuMode,
    event,
    events,
    ready_vcpu,
    set_io_exiting,
    set_msr_exiting,
)

IO_A, IO_B, MSRS = 0x5000, 0x6000, 0x7000
MMIO_PAGE = 0xFEB00


def _walk(eptp, gpa, access):
    # A test double of the EPT walker: the MMIO page is misconfigured (KVM's MMIO trap, spec
    # hv §1.6), everything else is mapped 1:1 by a 4-level walk of 4 references.
    if gpa >> 12 == MMIO_PAGE:
        raise EptMisconfig(gpa)
    return EptTranslation(gpa, 4096, 4, "rwx")


def _vcpu():
    memory = bytearray(0x10000)
    view = memoryview(memory)
    set_io_exiting(view[IO_A:IO_A + 4096], view[IO_B:IO_B + 4096], 0x3F8)
    set_msr_exiting(view[MSRS:MSRS + 4096], 0xC000_0080, write=True)
    return ready_vcpu(
        memory,
        PIN_BASED_VM_EXEC_CONTROL=PinBased.EXTERNAL_INTERRUPT_EXITING,
        CPU_BASED_VM_EXEC_CONTROL=ProcBased.HLT_EXITING | ProcBased.USE_IO_BITMAPS
        | ProcBased.USE_MSR_BITMAPS | ProcBased.ACTIVATE_SECONDARY_CONTROLS,
        SECONDARY_VM_EXEC_CONTROL=Secondary.ENABLE_EPT, EPT_POINTER=0x10005E,
        VM_EXIT_CONTROLS=ExitControls.HOST_ADDRESS_SPACE_SIZE
        | ExitControls.ACK_INTERRUPT_ON_EXIT,
        IO_BITMAP_A=IO_A, IO_BITMAP_B=IO_B, MSR_BITMAP=MSRS)


STREAM = events(
    event(EventKind.RUN, value=5000),
    event(EventKind.IO, 0x3F8, 1, ord("x")),          # intercepted port: exit 30
    event(EventKind.IO, 0x80, 1, 0),                  # POST code port: passes through
    event(EventKind.CPUID),                           # exit 10
    event(EventKind.RDMSR, 0x10),                     # TSC read: passes
    event(EventKind.WRMSR, 0xC000_0080, value=0xD01),  # EFER write: exit 32
    event(EventKind.READ, 0x1000, 8),                 # one EPT walk
    event(EventKind.WRITE, MMIO_PAGE << 12 | 0x10, 2, 1),  # a doorbell: exit 49
    event(EventKind.EXTINT, 0x20),                    # exit 1
    event(EventKind.HLT),                             # exit 12
    event(EventKind.VMCALL),                          # exit 18
    event(EventKind.RUN, value=1000),
)


def test_the_event_record_is_32_bytes_with_the_documented_fields():
    assert EVENT_DTYPE.itemsize == 32
    assert EVENT_DTYPE.names == ("address", "value", "gla", "kind", "flags", "size", "ilen",
                                 "reg", "_pad")
    record = np.array([event(EventKind.IO, 0x60, 2, flags=EventFlag.IN | EventFlag.IMMEDIATE
                             | EventFlag.REP, gla=5)], EVENT_DTYPE)[0]
    assert (record["flags"], record["ilen"]) == (EventFlag.IN | EventFlag.IMMEDIATE
                                                 | EventFlag.REP | EventFlag.GLA, 4)


def test_the_driver_counts_every_exit_entry_and_retired_event():
    runner = GuestRunner(_vcpu(), _walk)
    counters = runner.run(STREAM)
    assert counters.by_reason() == {
        ExitReason.EXTERNAL_INTERRUPT: 1, ExitReason.CPUID: 1, ExitReason.HLT: 1,
        ExitReason.VMCALL: 1, ExitReason.IO_INSTRUCTION: 1, ExitReason.MSR_WRITE: 1,
        ExitReason.EPT_MISCONFIG: 1}
    assert (counters.total_exits, counters.entries, counters.entry_failures) == (7, 8, 0)
    progress = counters.progress
    assert (progress.retired, progress.guest_cycles, progress.ept_walks,
            progress.ept_references, progress.guest_interrupts) == (12, 6000, 1, 4, 0)
    # Every instruction retired, by the guest or emulated by the default handlers:
    # 1 + 1 + 2 + 2 + 2 + 3 + 3 + 1 + 3 bytes.
    assert runner.vcpu.vmcs[Field.GUEST_RIP] == 18
    assert runner.vcpu.mode is VcpuMode.GUEST  # the guest runs on after its stream


def test_handlers_run_in_root_operation_and_counts_accumulate_over_runs():
    runner = GuestRunner(_vcpu(), _walk)
    kicks = []

    def doorbell(vcpu, exit_):
        assert vcpu.mode is VcpuMode.ROOT
        kicks.append((exit_.event, vcpu.vmread(Field.GUEST_PHYSICAL_ADDRESS)))
        vcpu.vmwrite(Field.GUEST_RIP,
                     vcpu.vmread(Field.GUEST_RIP) + vcpu.vmread(Field.VM_EXIT_INSTRUCTION_LEN))

    runner.on(ExitReason.EPT_MISCONFIG, doorbell)
    runner.run(STREAM)
    counters = runner.run(events(event(EventKind.WRITE, MMIO_PAGE << 12 | 0x10, 2, 2)))
    assert kicks == [(7, 0xFEB0_0010), (0, 0xFEB0_0010)]
    assert (counters.exits[ExitReason.EPT_MISCONFIG], counters.entries) == (2, 9)


def test_an_exit_the_vmm_never_resolves_is_reported():
    def never_mapped(eptp, gpa, access):
        raise EptViolation(1, gpa)

    runner = GuestRunner(_vcpu(), never_mapped, max_exits_per_event=5)
    with pytest.raises(VmxError, match="event 0 exited 5 times"):
        runner.run(events(event(EventKind.READ, 0x2000, 8)))
    assert runner.counters.exits[ExitReason.EPT_VIOLATION] == 5


def test_the_runner_walks_real_ept_tables_and_exits_with_the_walker_s_qualification():
    mem = HostMemory(4 << 20, table_area=(1 << 20, 2 << 20))
    tables = EptTables(mem, mem.frames)
    tables.map(0x2000, 0x30_0000, PAGE_4K, "r")
    vcpu = _vcpu()
    vcpu.vmwrite(Field.EPT_POINTER, tables.eptp())
    runner = GuestRunner(vcpu, lambda eptp, gpa, access: ept.walk(mem, eptp, gpa, access))
    seen = []

    def emulate(vcpu, exit_):
        seen.append((vcpu.vmread(Field.EXIT_QUALIFICATION),
                     vcpu.vmread(Field.GUEST_PHYSICAL_ADDRESS)))
        vcpu.vmwrite(Field.GUEST_RIP,
                     vcpu.vmread(Field.GUEST_RIP) + vcpu.vmread(Field.VM_EXIT_INSTRUCTION_LEN))

    runner.on(ExitReason.EPT_VIOLATION, emulate)
    counters = runner.run(events(event(EventKind.READ, 0x2010, 8),
                                 event(EventKind.WRITE, 0x2010, 8, 1)))
    with pytest.raises(EptViolation) as refused:
        ept.walk(mem, tables.eptp(), 0x2010, "w")
    # The write exits with exactly what the walker reports; the read went through, one 4-level
    # walk of 4 references.
    assert seen == [(refused.value.qualification, 0x2010)]
    assert counters.exits[ExitReason.EPT_VIOLATION] == 1
    assert (counters.progress.ept_walks, counters.progress.ept_references) == (1, 4)


def test_a_failed_entry_without_a_handler_stops_the_run():
    vcpu = _vcpu()
    vcpu.vmwrite(Field.VMCS_LINK_POINTER, 0)
    runner = GuestRunner(vcpu, _walk)
    with pytest.raises(VmxError, match="guest state"):
        runner.run(STREAM)
    assert (runner.counters.entry_failures, runner.counters.exits[ExitReason.INVALID_STATE]) \
        == (1, 1)


def test_a_failed_entry_can_be_repaired_by_its_handler():
    vcpu = _vcpu()
    vcpu.vmwrite(Field.VMCS_LINK_POINTER, 0)
    runner = GuestRunner(vcpu, _walk)
    runner.on(ExitReason.INVALID_STATE,
              lambda v, e: v.vmwrite(Field.VMCS_LINK_POINTER, (1 << 64) - 1))
    counters = runner.run(events(event(EventKind.RUN, value=1)))
    assert (counters.entries, counters.entry_failures, counters.progress.retired) == (2, 1, 1)


def test_events_must_be_event_records_of_known_kinds():
    with pytest.raises(ValueError):
        GuestRunner(_vcpu()).run(np.zeros(3, np.uint64))
    stream = events(event(EventKind.CPUID), event(EventKind.CPUID))
    stream["kind"][1] = 99
    runner = GuestRunner(_vcpu())
    with pytest.raises(ValueError, match="99"):
        runner.run(stream)
    assert runner.vcpu.mode is VcpuMode.ROOT and runner.counters.entries == 0


def test_cost_model_arithmetic():
    counters = GuestRunner(_vcpu(), _walk).run(STREAM)
    model = CostModel(exit_cycles=100, entry_cycles=50,
                      handler_cycles={ExitReason.IO_INSTRUCTION: 1000},
                      default_handler_cycles=10, ept_reference_cycles=2, frequency_hz=1e6)
    assert model.breakdown(counters) == {"guest": 6000, "entries": 8 * 50, "exits": 7 * 100,
                                         "handlers": 1000 + 6 * 10, "ept": 4 * 2}
    assert model.cycles(counters) == 8168
    assert model.seconds(counters) == pytest.approx(8.168e-3)


def test_default_costs():
    model = CostModel()
    assert (model.exit_cycles, model.entry_cycles, model.ept_reference_cycles,
            model.frequency_hz) == (700, 500, 5, 3.0e9)
    vector = model.handler_vector()
    for reason, cycles in DEFAULT_HANDLER_CYCLES.items():
        assert vector[reason] == cycles
    assert vector[ExitReason.CPUID] == 0
    counters = GuestRunner(_vcpu(), _walk).run(STREAM)
    handlers = sum(DEFAULT_HANDLER_CYCLES.get(r, 0) for r in counters.by_reason())
    assert model.cycles(counters) == 6000 + 8 * 500 + 7 * 700 + handlers + 4 * 5
