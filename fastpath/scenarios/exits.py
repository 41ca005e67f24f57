"""A guest's event stream run by the modelled VMX (`GuestRunner`): the VM exits it makes by
reason, with their qualifications, and the time they cost under the `CostModel`.

What is modelled: one vCPU whose VMCS has HLT exiting, external-interrupt exiting with
acknowledge-on-exit, I/O bitmaps (the serial port 0x3f8-0x3ff and the CMOS ports 0x70-0x71
intercepted; 0x80 and 0x60 pass), an MSR bitmap (reads of APIC_BASE 0x1b and writes of
TSC_DEADLINE 0x6e0 and EFER 0xc0000080 intercepted; TSC 0x10 and FS_BASE 0xc0000100 pass; an
MSR outside the bitmap's ranges, such as KVM's 0x4b564d01, always exits), EPT over 4-level
tables, and with --timer-period the VMX-preemption timer, saved at each exit and re-armed when
it fires. The guest does a shuffled mix of CPUID, port I/O, RDMSR/WRMSR, HLT, VMCALL, mapped
memory accesses (EPT walks, no exit), first touches of unmapped pages (an EPT violation each;
the VMM maps the page and the access runs again) and external interrupts, with --run-cycles of
guest code before each. The VMM's handlers emulate the instructions (GUEST_RIP past them), as
KVM's do. Cycles come from the CostModel: its defaults and their sources are printed, and each
can be set here.

VM exits table:
  reason          the basic exit reason, number and name
  exits           how many the runner counted
  cycles/exit     the hardware exit and the VM entry back, plus the handler's cycles
  cycles, us      exits x cycles/exit, and that at the model's clock
  share           of all modelled time (guest code, transitions, handlers, EPT walks)
Exit qualifications table: what the exits of each reason were about (ports, MSRs, EPT
violation qualifications in words, interrupt vectors) and how many of each.
Modelled time table: CostModel.breakdown, by component.
"""

from __future__ import annotations

import argparse
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence

import numpy as np

from fastpath.errors import InvalidEptp
from fastpath.hv import HostMemory, ept
from fastpath.hv.ept import DEFAULT_CAPS, PAGE_4K, Eptp, EptTables
from fastpath.hv.vmx import (
    BITMAP_SIZE,
    COST_SOURCES,
    CostModel,
    EventFlag,
    EventKind,
    Exit,
    ExitControls,
    ExitReason,
    Field,
    GuestRunner,
    PinBased,
    ProcBased,
    Secondary,
    Vcpu,
    VmxCapabilities,
    event,
    events,
    ready_vcpu,
    set_io_exiting,
    set_msr_exiting,
    skip_instruction,
)
from fastpath.scenarios._costs import (
    add_cost_arguments,
    cost_model,
    model_figures,
    model_rows,
)
from fastpath.scenarios._options import whole_number
from fastpath.scenarios._qualifications import describe_ept_violation, describe_io
from fastpath.scenarios._report import Report, Table

# Where the VMM keeps its pages in host memory (the VMXON region and the VMCS are at 0x1000 and
# 0x2000, where ready_vcpu puts them), and where EPT's tables go.
IO_BITMAP_A, IO_BITMAP_B, MSR_BITMAP = 0x3000, 0x4000, 0x5000
EPT_TABLES = (1 << 20, 2 << 20)
HOST_MEMORY = 2 << 20
# Guest RAM, mapped by EPT at start; the pages the guest first touches later lie above it.
RAM_PAGES = 256
RAM_HPA = 1 << 40           # no host memory needed behind it: the walks read only the tables
UNMAPPED_GPA = 1 << 32
GVA_OFFSET = 0xFFFF_8880_0000_0000  # Linux's direct map: the linear address of each GPA

INTERCEPTED_PORTS = (*range(0x3F8, 0x400), 0x70, 0x71)
# The guest's port accesses, taken in turn: (port, size, IN).
PORT_ACCESSES = ((0x3F8, 1, False), (0x3FD, 1, True), (0x80, 1, False), (0x70, 1, False),
                 (0x71, 1, True), (0x60, 1, True))
INTERCEPTED_MSR_READS = (0x1B,)
INTERCEPTED_MSR_WRITES = (0x6E0, 0xC000_0080)
# The guest's MSR accesses, taken in turn: (MSR, write).
MSR_ACCESSES = ((0x10, False), (0x1B, False), (0x6E0, True), (0xC000_0080, True),
                (0xC000_0100, False), (0xC000_0100, True), (0x4B56_4D01, True))
INTERRUPT_VECTOR = 0xEC     # Linux's local APIC timer vector


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of `fastpath hv exits`."""
    counts = parser.add_argument_group("the event mix (how many of each)")
    counts.add_argument("--cpuid", type=whole_number, help="CPUID instructions (always exit)")
    counts.add_argument("--io", type=whole_number,
                        help="port accesses, through the ports listed above in turn")
    counts.add_argument("--msr", type=whole_number,
                        help="RDMSR/WRMSR, through the MSRs listed above in turn")
    counts.add_argument("--hlt", type=whole_number, help="HLT instructions")
    counts.add_argument("--vmcall", type=whole_number, help="VMCALL instructions")
    counts.add_argument("--memory", type=whole_number,
                        help="reads and writes of mapped guest RAM (EPT walks, no exit)")
    counts.add_argument("--ept-violations", type=whole_number,
                        help="first touches of unmapped pages, each an EPT violation")
    counts.add_argument("--interrupts", type=whole_number, help="external interrupts")
    counts.add_argument("--run-cycles", type=whole_number,
                        help="guest cycles of code that exits on nothing before each event")
    counts.add_argument("--timer-period", type=whole_number,
                        help="VMX-preemption timer period in guest TSC cycles, rounded down "
                        "to the timer's tick (0: timer off)")
    counts.add_argument("--seed", type=whole_number, help="seed of the shuffle of the mix")
    add_cost_arguments(parser)


def _eptp_valid(value: int) -> bool:
    try:
        Eptp.decode(value, DEFAULT_CAPS)
    except InvalidEptp:
        return False
    return True


def guest_stream(cpuid: int, io: int, msr: int, hlt: int, vmcall: int, memory: int,
                 ept_violations: int, interrupts: int, run_cycles: int,
                 seed: int) -> np.ndarray:
    """The event stream: the mix shuffled, each event after a RUN of `run_cycles`."""
    rng = np.random.default_rng(seed)
    mix = [event(EventKind.CPUID)] * cpuid + [event(EventKind.HLT)] * hlt
    mix += [event(EventKind.VMCALL)] * vmcall
    for k in range(io):
        port, size, is_in = PORT_ACCESSES[k % len(PORT_ACCESSES)]
        mix.append(event(EventKind.IO, port, size, 0 if is_in else 0x41,
                         EventFlag.IN if is_in else 0))
    for k in range(msr):
        index, write = MSR_ACCESSES[k % len(MSR_ACCESSES)]
        mix.append(event(EventKind.WRMSR if write else EventKind.RDMSR, index,
                         value=1 if write else 0))
    for k, gpa in enumerate(rng.integers(0, RAM_PAGES * PAGE_4K, size=memory) & ~7):
        kind = EventKind.WRITE if k % 2 else EventKind.READ
        mix.append(event(kind, int(gpa), 8, gla=GVA_OFFSET + int(gpa)))
    for k in range(ept_violations):
        gpa = UNMAPPED_GPA + k * PAGE_4K
        kind = EventKind.WRITE if k % 2 else EventKind.READ
        mix.append(event(kind, gpa, 8, gla=GVA_OFFSET + gpa))
    mix += [event(EventKind.EXTINT, INTERRUPT_VECTOR)] * interrupts
    stream = []
    for k in rng.permutation(len(mix)):
        if run_cycles:
            stream.append(event(EventKind.RUN, value=run_cycles))
        stream.append(mix[k])
    return events(*stream)


class ExitsPlatform:
    """Host memory with the VMM's pages and EPT tables, and a vCPU ready to enter its guest
    with the controls the module docstring lists."""

    def __init__(self, timer_ticks: int):
        self.mem = HostMemory(HOST_MEMORY, table_area=EPT_TABLES)
        self.tables = EptTables(self.mem, self.mem.frames)
        for page in range(RAM_PAGES):
            self.tables.map(page * PAGE_4K, RAM_HPA + page * PAGE_4K)
        host = self.mem.array
        io_a = host[IO_BITMAP_A:IO_BITMAP_A + BITMAP_SIZE]
        io_b = host[IO_BITMAP_B:IO_BITMAP_B + BITMAP_SIZE]
        for port in INTERCEPTED_PORTS:
            set_io_exiting(io_a, io_b, port)
        msrs = host[MSR_BITMAP:MSR_BITMAP + BITMAP_SIZE]
        for index in INTERCEPTED_MSR_READS:
            set_msr_exiting(msrs, index, read=True)
        for index in INTERCEPTED_MSR_WRITES:
            set_msr_exiting(msrs, index, write=True)
        self.timer_ticks = timer_ticks
        timer = bool(timer_ticks)
        self.vcpu: Vcpu = ready_vcpu(
            host,
            PIN_BASED_VM_EXEC_CONTROL=PinBased.EXTERNAL_INTERRUPT_EXITING
            | (PinBased.PREEMPTION_TIMER if timer else 0),
            CPU_BASED_VM_EXEC_CONTROL=ProcBased.HLT_EXITING | ProcBased.USE_IO_BITMAPS
            | ProcBased.USE_MSR_BITMAPS | ProcBased.ACTIVATE_SECONDARY_CONTROLS,
            SECONDARY_VM_EXEC_CONTROL=Secondary.ENABLE_EPT,
            EPT_POINTER=self.tables.eptp(),
            VM_EXIT_CONTROLS=ExitControls.HOST_ADDRESS_SPACE_SIZE
            | ExitControls.ACK_INTERRUPT_ON_EXIT
            | (ExitControls.SAVE_PREEMPTION_TIMER if timer else 0),
            IO_BITMAP_A=IO_BITMAP_A, IO_BITMAP_B=IO_BITMAP_B, MSR_BITMAP=MSR_BITMAP,
            VMX_PREEMPTION_TIMER_VALUE=timer_ticks)
        self.vcpu.eptp_valid = _eptp_valid

    def translate(self, eptp: int, gpa: int, access: str):
        """The EPT walk the runner's memory events take."""
        return ept.walk(self.mem, eptp, gpa, access)

    def map_faulting_page(self, vcpu: Vcpu, exit_: Exit) -> None:
        """The VMM's EPT-violation handler: back the page and let the access run again."""
        gpa = vcpu.vmread(Field.GUEST_PHYSICAL_ADDRESS) & ~(PAGE_4K - 1)
        self.tables.map(gpa, RAM_HPA + gpa)

    def rearm_timer(self, vcpu: Vcpu, exit_: Exit) -> None:
        """The preemption-timer handler: the next period starts now."""
        vcpu.vmwrite(Field.VMX_PREEMPTION_TIMER_VALUE, self.timer_ticks)

    def close(self) -> None:
        """Let go of host memory."""
        self.mem.close()


def _no_action(vcpu: Vcpu, exit_: Exit) -> None:
    """An exit the host handles on its own (an interrupt for the host): just resume."""


def _nothing_to_say(exit_: Exit) -> str:
    """The qualification of an exit whose reason says it all."""
    return "-"


def _run_guest(platform: ExitsPlatform, stream: np.ndarray):
    """Run the stream with recording handlers; (counters, qualifications by reason)."""
    described: dict[ExitReason, Counter[str]] = defaultdict(Counter)

    def msr(exit_: Exit) -> str:
        return f"MSR {int(stream[exit_.event]['address']):#x}"

    handlers: dict[ExitReason, tuple[Callable[[Exit], str], Callable[[Vcpu, Exit], None]]] = {
        ExitReason.CPUID: (_nothing_to_say, skip_instruction),
        ExitReason.HLT: (_nothing_to_say, skip_instruction),
        ExitReason.VMCALL: (_nothing_to_say, skip_instruction),
        ExitReason.IO_INSTRUCTION: (lambda e: describe_io(e.qualification), skip_instruction),
        ExitReason.MSR_READ: (msr, skip_instruction),
        ExitReason.MSR_WRITE: (msr, skip_instruction),
        ExitReason.EPT_VIOLATION: (lambda e: describe_ept_violation(e.qualification),
                                   platform.map_faulting_page),
        ExitReason.EXTERNAL_INTERRUPT: (lambda e: f"vector {e.interruption_info & 0xFF:#x}",
                                        _no_action),
        ExitReason.PREEMPTION_TIMER: (_nothing_to_say, platform.rearm_timer),
    }

    def recording(describe, act):
        def handler(vcpu: Vcpu, exit_: Exit) -> None:
            described[exit_.reason][describe(exit_)] += 1
            act(vcpu, exit_)
        return handler

    runner = GuestRunner(platform.vcpu, platform.translate,
                         {reason: recording(*pair) for reason, pair in handlers.items()})
    return runner.run(stream), described


def run(cpuid: int = 100, io: int = 300, msr: int = 140, hlt: int = 20, vmcall: int = 20,
        memory: int = 500, ept_violations: int = 40, interrupts: int = 50,
        run_cycles: int = 2000, timer_period: int = 250_000, seed: int = 1,
        exit_cycles: int = CostModel.exit_cycles, entry_cycles: int = CostModel.entry_cycles,
        handler_cycles: Sequence[tuple[ExitReason, int]] | None = None,
        default_handler_cycles: int = CostModel.default_handler_cycles,
        ept_reference_cycles: int = CostModel.ept_reference_cycles,
        frequency_ghz: float = CostModel.frequency_hz / 1e9) -> Report:
    """Run the event mix on the modelled vCPU and cost its exits; see the module docstring."""
    model = cost_model(exit_cycles, entry_cycles, handler_cycles, default_handler_cycles,
                       ept_reference_cycles, frequency_ghz)
    stream = guest_stream(cpuid, io, msr, hlt, vmcall, memory, ept_violations, interrupts,
                          run_cycles, seed)
    rate = VmxCapabilities().preemption_timer_rate  # ready_vcpu's capabilities
    timer_ticks = timer_period >> rate
    if timer_period and not timer_ticks:
        raise ValueError(f"a timer period of {timer_period} cycles is under one tick "
                         f"({1 << rate} cycles)")
    platform = ExitsPlatform(timer_ticks)
    try:
        counters, described = _run_guest(platform, stream)
    finally:
        platform.close()
    return _report(stream, counters, described, model, timer_ticks << rate)


def _report(stream, counters, described, model: CostModel, timer_period: int) -> Report:
    breakdown = model.breakdown(counters)
    total = sum(breakdown.values())
    handler = model.handler_vector()
    by_reason = {}
    for reason, exits in counters.by_reason().items():
        per_exit = model.exit_cycles + model.entry_cycles + handler[reason]
        by_reason[reason.name] = {"reason": int(reason), "exits": exits,
                                  "cycles_per_exit": float(per_exit),
                                  "cycles": exits * float(per_exit)}
    progress = counters.progress
    kinds = Counter(EventKind(int(k)).name for k in stream["kind"])
    figures = {
        "events": dict(kinds),
        "timer_period_cycles": timer_period,
        "exits_by_reason": {name: r["exits"] for name, r in by_reason.items()},
        "total_exits": counters.total_exits,
        "entries": counters.entries,
        "entry_failures": counters.entry_failures,
        "retired": progress.retired,
        "guest_cycles": progress.guest_cycles,
        "guest_interrupts": progress.guest_interrupts,
        "ept_walks": progress.ept_walks,
        "ept_references": progress.ept_references,
        "qualifications": {reason.name: dict(counts) for reason, counts in described.items()},
        "cost": {
            "model": model_figures(model),
            "sources": dict(COST_SOURCES),
            "breakdown_cycles": breakdown,
            "total_cycles": total,
            "seconds": model.seconds(counters),
            "by_reason": by_reason,
        },
    }
    us = 1e6 / model.frequency_hz
    exits_table = Table("VM exits by reason", ["reason", "exits", "cycles/exit", "cycles",
                                               "us", "share"])
    for name, r in sorted(by_reason.items(), key=lambda item: -item[1]["cycles"]):
        exits_table.rows.append([f"{r['reason']} {name}", r["exits"],
                                 f"{r['cycles_per_exit']:.0f}", f"{r['cycles']:.0f}",
                                 f"{r['cycles'] * us:.1f}", _share(r["cycles"], total)])
    qualifications = Table("Exit qualifications", ["reason", "about", "exits"])
    for reason, counts in sorted(described.items()):
        for about, n in sorted(counts.items()):
            qualifications.rows.append([reason.name, about, n])
    run_table = Table("The run", ["what", "count"], [
        ["VM entries", counters.entries], ["VM exits", counters.total_exits],
        ["events retired", progress.retired], ["guest cycles", progress.guest_cycles],
        ["EPT walks (no exit)", progress.ept_walks],
        ["EPT references", progress.ept_references]])
    time_table = Table("Modelled time (CostModel)", ["component", "cycles", "us", "share"], [
        [part, f"{cycles:.0f}", f"{cycles * us:.1f}", _share(cycles, total)]
        for part, cycles in breakdown.items()] + [["total", f"{total:.0f}",
                                                   f"{total * us:.1f}", "100.0%"]])
    model_table = Table("Cost model", ["parameter", "value", "default", "source of the default"],
                        model_rows(model))
    return Report("exits", figures,
                  [exits_table, qualifications, run_table, time_table, model_table])


def _share(part: float, total: float) -> str:
    # Every cost set to 0 leaves nothing to share.
    return f"{part / total:.1%}" if total else "-"
