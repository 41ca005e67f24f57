"""Each VM exit the model makes: its basic reason, qualification and exit-information fields,
bit for bit (SDM Vol. 3C §26, §28.2; spec hv §1.5, §1.6, §2.4)."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fastpath.errors import EptMisconfig, EptViolation
from fastpath.hv.ept import EptTranslation
from fastpath.hv.vmx import (
    INTERRUPTION_INFO_VALID,
    EventFlag,
    EventKind,
    ExitControls,
    ExitReason,
    Field,
    GuestRunner,
    PinBased,
    ProcBased,
    Secondary,
    VmxCapabilities,
    event,
    events,
    ready_vcpu,
    set_io_exiting,
    set_msr_exiting,
    skip_instruction,
)

IO_A, IO_B, MSRS = 0x5000, 0x6000, 0x7000
HOST = ExitControls.HOST_ADDRESS_SPACE_SIZE


def _run(records, memory=None, translate=None, capabilities=None, handlers=None, **fields):
    """Run the events with a handler that records every exit and emulates instruction exits
    by skipping them; returns (exits, runner)."""
    vcpu = ready_vcpu(memory if memory is not None else bytearray(0x10000), capabilities,
                      **fields)
    seen = []

    def record(vcpu, exit_):
        seen.append(exit_)
        if exit_.instruction_length:
            skip_instruction(vcpu, exit_)

    runner = GuestRunner(vcpu, translate, {r: record for r in ExitReason})
    for reason, handler in (handlers or {}).items():
        runner.on(reason, handler)
    runner.run(events(*records))
    return seen, runner


def test_cpuid_and_vmcall_always_exit_with_their_lengths():
    seen, runner = _run([event(EventKind.CPUID), event(EventKind.VMCALL)])
    assert [(e.reason, e.qualification, e.instruction_length, e.event) for e in seen] == [
        (ExitReason.CPUID, 0, 2, 0), (ExitReason.VMCALL, 0, 3, 1)]
    assert runner.vcpu.vmcs[Field.GUEST_RIP] == 5


@pytest.mark.parametrize("controls, exits", [(0, 0), (ProcBased.HLT_EXITING, 1)])
def test_hlt_exits_only_with_hlt_exiting(controls, exits):
    seen, runner = _run([event(EventKind.HLT)], CPU_BASED_VM_EXEC_CONTROL=controls)
    assert [(e.reason, e.instruction_length) for e in seen] == [(ExitReason.HLT, 1)] * exits
    assert runner.vcpu.vmcs[Field.GUEST_RIP] == 1  # retired either way


IO_CASES = [
    # OUT DX, AL to 0x3F8: size 0, OUT, DX operand.
    (event(EventKind.IO, 0x3F8, 1, 0x41), 0x03F8_0000, 1),
    # IN AX, 0x60: 66 E5 60 -> size 1, IN, immediate.
    (event(EventKind.IO, 0x60, 2, flags=EventFlag.IN | EventFlag.IMMEDIATE), 0x0060_0049, 3),
    # OUT DX, EAX to 0xCFC: size 3.
    (event(EventKind.IO, 0xCFC, 4, 0x8000_0000), 0x0CFC_0003, 1),
]


@pytest.mark.parametrize("record, qualification, length", IO_CASES)
def test_io_qualification_bit_for_bit(record, qualification, length):
    seen, _ = _run([record], CPU_BASED_VM_EXEC_CONTROL=ProcBased.UNCONDITIONAL_IO_EXITING)
    (exit_,) = seen
    assert (exit_.reason, exit_.qualification, exit_.instruction_length) == (
        ExitReason.IO_INSTRUCTION, qualification, length)
    assert exit_.guest_linear_address is None and exit_.instruction_info == 0


def test_string_io_writes_the_linear_address_and_instruction_information():
    records = [event(EventKind.IO, 0x1F0, 4, flags=EventFlag.IN | EventFlag.STRING
                     | EventFlag.REP, gla=0x7FFF_0000),  # REP INSD: F3 6D
               event(EventKind.IO, 0x80, 1, flags=EventFlag.STRING, gla=0x1234)]  # OUTSB
    seen, runner = _run(records, CPU_BASED_VM_EXEC_CONTROL=ProcBased.UNCONDITIONAL_IO_EXITING)
    ins, outs = seen
    assert (ins.qualification, ins.instruction_length) == (0x01F0_003B, 2)
    assert (ins.guest_linear_address, ins.instruction_info) == (0x7FFF_0000, 0x100)
    assert (outs.qualification, outs.instruction_length) == (0x0080_0010, 1)
    assert (outs.guest_linear_address, outs.instruction_info) == (0x1234, 0x100 | 3 << 15)
    assert runner.vcpu.vmcs[Field.GUEST_LINEAR_ADDRESS] == 0x1234
    assert runner.vcpu.vmcs[Field.VMX_INSTRUCTION_INFO] == 0x18100


def _io_exits(port, size, ports, controls=ProcBased.USE_IO_BITMAPS):
    memory = bytearray(0x10000)
    view = memoryview(memory)
    for p in ports:
        set_io_exiting(view[IO_A:IO_A + 4096], view[IO_B:IO_B + 4096], p)
    seen, _ = _run([event(EventKind.IO, port, size)], memory,
                   CPU_BASED_VM_EXEC_CONTROL=controls, IO_BITMAP_A=IO_A, IO_BITMAP_B=IO_B)
    return len(seen)


@pytest.mark.parametrize("port, size, ports, exits", [
    (0x7FFF, 1, {0x7FFF}, 1),   # last port of bitmap A
    (0x8000, 1, {0x8000}, 1),   # first port of bitmap B
    (0x7FFF, 1, {0x8000}, 0),
    (0x8000, 1, {0x7FFF}, 0),
    (0x7FFF, 2, {0x8000}, 1),   # an access spanning both bitmaps checks both
    (0x7FFE, 2, {0x8000}, 0),
    (0xFFFC, 4, set(), 0),      # ends at 0xFFFF: the bitmap decides
    (0xFFFD, 4, set(), 1),      # runs past 0xFFFF: always exits
    (0xFFFF, 2, set(), 1),
])
def test_io_bitmap_a_b_boundaries(port, size, ports, exits):
    assert _io_exits(port, size, ports) == exits


def test_io_bitmaps_override_unconditional_io_exiting():
    both = ProcBased.USE_IO_BITMAPS | ProcBased.UNCONDITIONAL_IO_EXITING
    assert _io_exits(0x3F8, 1, set(), both) == 0
    assert _io_exits(0x3F8, 1, set(), 0) == 0
    assert _io_exits(0x3F8, 1, set(), ProcBased.UNCONDITIONAL_IO_EXITING) == 1


def _msr_exits(kind, msr, reads=(), writes=(), controls=ProcBased.USE_MSR_BITMAPS):
    memory = bytearray(0x10000)
    view = memoryview(memory)[MSRS:MSRS + 4096]
    for m in reads:
        set_msr_exiting(view, m, read=True)
    for m in writes:
        set_msr_exiting(view, m, write=True)
    seen, _ = _run([event(kind, msr, value=1)], memory, CPU_BASED_VM_EXEC_CONTROL=controls,
                   MSR_BITMAP=MSRS)
    return [(e.reason, e.qualification, e.instruction_length) for e in seen]


RDMSR, WRMSR = EventKind.RDMSR, EventKind.WRMSR
READ_EXIT, WRITE_EXIT = (ExitReason.MSR_READ, 0, 2), (ExitReason.MSR_WRITE, 0, 2)


@pytest.mark.parametrize("kind, msr, reads, writes, expected", [
    (RDMSR, 0x10, {0x10}, (), [READ_EXIT]),           # read-low
    (WRMSR, 0x10, {0x10}, (), []),                    # a read bit does not trap writes
    (WRMSR, 0x1FFF, (), {0x1FFF}, [WRITE_EXIT]),      # write-low, last bit
    (RDMSR, 0xC000_0080, {0xC000_0080}, (), [READ_EXIT]),    # read-high (EFER)
    (WRMSR, 0xC000_0080, (), {0xC000_0080}, [WRITE_EXIT]),   # write-high
    (RDMSR, 0xC000_0080, (), {0xC000_0080}, []),
    (RDMSR, 0xC000_1FFF, (), (), []),
    (RDMSR, 0x2000, (), (), [READ_EXIT]),             # just past the low range
    (WRMSR, 0xC000_2000, (), (), [WRITE_EXIT]),       # just past the high range
    (RDMSR, 0x4000_0000, (), (), [READ_EXIT]),        # a hypervisor MSR: no bit at all
])
def test_msr_bitmap_low_high_and_out_of_range(kind, msr, reads, writes, expected):
    assert _msr_exits(kind, msr, reads, writes) == expected


def test_without_msr_bitmaps_every_msr_access_exits():
    assert _msr_exits(RDMSR, 0x10, controls=0) == [READ_EXIT]
    assert _msr_exits(WRMSR, 0x10, controls=0) == [WRITE_EXIT]


# -- EPT ------------------------------------------------------------------------------------

EPT = {"CPU_BASED_VM_EXEC_CONTROL": ProcBased.ACTIVATE_SECONDARY_CONTROLS,
       "SECONDARY_VM_EXEC_CONTROL": Secondary.ENABLE_EPT, "EPT_POINTER": 0x10005E}


class FakeWalker:
    """A test double of the EPT walker's contract: an R+X page at GPA 0x3FE01000 (spec hv
    TV2), an MMIO page at 0xFEB00000 (W+X: misconfigured), the RWX pages in `mapped`, and
    nothing else. A successful walk reports 4 references (4-level EPT, 4 KiB page)."""

    def __init__(self):
        self.calls = []
        self.mapped: set[int] = set()

    def __call__(self, eptp, gpa, access):
        self.calls.append((eptp, gpa, access))
        if gpa >> 12 in self.mapped:
            return EptTranslation(gpa, 4096, 4, "rwx")
        if gpa >> 12 == 0xFEB00:
            raise EptMisconfig(gpa)
        if gpa >> 12 == 0x3FE01:
            if access == "w":
                raise EptViolation(0x2 | 0x8 | 0x20, gpa)
            return EptTranslation(0x123456000 | gpa & 0xFFF, 4096, 4, "rwx")
        raise EptViolation({"r": 1, "w": 2, "x": 4}[access], gpa)


def test_ept_violation_qualification_and_addresses():
    walker = FakeWalker()
    records = [event(EventKind.WRITE, 0x3FE0_1ABC, 4, gla=0x7F00_0ABC),  # TV2a
               event(EventKind.READ, 0x8000_1000, 8)]  # not mapped, no linear address
    seen, runner = _run(records, translate=walker, **EPT)
    write, read = seen[0], seen[-1]
    assert (write.reason, write.qualification) == (ExitReason.EPT_VIOLATION, 0x1AA)
    assert write.guest_physical_address == 0x3FE0_1ABC
    assert write.guest_linear_address == 0x7F00_0ABC
    assert (read.qualification, read.guest_physical_address) == (0x1, 0x8000_1000)
    assert read.guest_linear_address is None
    assert walker.calls[0] == (0x10005E, 0x3FE0_1ABC, "w")


def test_an_ept_violation_repeats_until_the_vmm_maps_the_page():
    walker = FakeWalker()
    seen = []

    def remap(vcpu, exit_):
        seen.append(exit_)
        if len(seen) == 2:
            walker.mapped.add(exit_.guest_physical_address >> 12)

    _, runner = _run([event(EventKind.READ, 0x9000, 8)], translate=walker,
                     handlers={ExitReason.EPT_VIOLATION: remap}, **EPT)
    assert len(seen) == 2
    progress = runner.counters.progress
    assert (progress.retired, progress.ept_walks, progress.ept_references) == (1, 1, 4)


def test_walker_qualification_with_a_linear_address_is_kept():
    # A violation during a guest page walk: bit 7 set, bit 8 clear (TV2c); the VMX side
    # does not add bit 8.
    def walker(eptp, gpa, access):
        raise EptViolation(0x81, gpa)

    seen = []

    def skip(vcpu, exit_):
        seen.append(exit_)
        skip_instruction(vcpu, exit_)

    _run([event(EventKind.READ, 0x5000, 8, gla=0x1000)], translate=walker,
         handlers={ExitReason.EPT_VIOLATION: skip}, **EPT)
    assert (seen[0].qualification, seen[0].guest_linear_address) == (0x81, 0x1000)


def test_ept_misconfiguration_is_exit_49_with_qualification_0():
    seen, runner = _run([event(EventKind.WRITE, 0xFEB0_0010, 2, 1)], translate=FakeWalker(),
                        **EPT)
    (exit_,) = seen
    assert (exit_.reason, exit_.qualification, exit_.guest_physical_address,
            exit_.instruction_length) == (ExitReason.EPT_MISCONFIG, 0, 0xFEB0_0010, 3)
    assert runner.vcpu.vmcs[Field.GUEST_PHYSICAL_ADDRESS] == 0xFEB0_0010


def test_without_ept_the_walker_is_not_asked():
    walker = FakeWalker()
    seen, runner = _run([event(EventKind.WRITE, 0xFEB0_0010, 2, 1)], translate=walker)
    assert seen == [] and walker.calls == [] and runner.counters.progress.retired == 1


# -- interrupts ---------------------------------------------------------------------------

@pytest.mark.parametrize("exit_controls, info", [
    (HOST | ExitControls.ACK_INTERRUPT_ON_EXIT, INTERRUPTION_INFO_VALID | 0x31),
    (HOST, 0)])
def test_external_interrupt_exit_and_acknowledge_on_exit(exit_controls, info):
    seen, runner = _run([event(EventKind.EXTINT, 0x31)],
                        PIN_BASED_VM_EXEC_CONTROL=PinBased.EXTERNAL_INTERRUPT_EXITING,
                        VM_EXIT_CONTROLS=exit_controls)
    (exit_,) = seen
    assert (exit_.reason, exit_.interruption_info, exit_.qualification) == (
        ExitReason.EXTERNAL_INTERRUPT, info, 0)
    assert runner.vcpu.vmcs[Field.VM_EXIT_INTR_INFO] == info
    assert runner.counters.progress.retired == 1  # the interrupt went to the host


def test_external_interrupt_without_exiting_goes_to_the_guest():
    seen, runner = _run([event(EventKind.EXTINT, 0x31)])
    assert seen == [] and runner.counters.progress.guest_interrupts == 1


def test_interrupt_window_opens_after_the_instruction_following_sti():
    seen = []

    def close_window(vcpu, exit_):
        seen.append(exit_)
        vcpu.vmwrite(Field.CPU_BASED_VM_EXEC_CONTROL, 0)

    records = [event(EventKind.RUN, value=10), event(EventKind.STI),
               event(EventKind.RUN, value=10), event(EventKind.RUN, value=10)]
    _, runner = _run(records, handlers={ExitReason.INTERRUPT_WINDOW: close_window},
                     CPU_BASED_VM_EXEC_CONTROL=ProcBased.INTERRUPT_WINDOW_EXITING)
    assert [(e.reason, e.event) for e in seen] == [(ExitReason.INTERRUPT_WINDOW, 3)]
    assert runner.vcpu.vmcs[Field.GUEST_RFLAGS] == 0x202


def test_interrupt_window_exits_at_once_when_the_guest_can_take_interrupts():
    seen = []

    def close_window(vcpu, exit_):
        seen.append((exit_.reason, exit_.event))
        vcpu.vmwrite(Field.CPU_BASED_VM_EXEC_CONTROL, 0)

    _run([event(EventKind.CLI), event(EventKind.RUN, value=1)],
         handlers={ExitReason.INTERRUPT_WINDOW: close_window}, GUEST_RFLAGS=0x202,
         CPU_BASED_VM_EXEC_CONTROL=ProcBased.INTERRUPT_WINDOW_EXITING)
    assert seen == [(ExitReason.INTERRUPT_WINDOW, 0)]


def test_interrupt_window_stays_shut_while_if_is_clear():
    seen, _ = _run([event(EventKind.RUN, value=1), event(EventKind.CLI)],
                   CPU_BASED_VM_EXEC_CONTROL=ProcBased.INTERRUPT_WINDOW_EXITING)
    assert seen == []


# -- the VMX-preemption timer ---------------------------------------------------------------

TIMER = {"PIN_BASED_VM_EXEC_CONTROL": PinBased.PREEMPTION_TIMER}
SAVE = {"VM_EXIT_CONTROLS": HOST | ExitControls.SAVE_PREEMPTION_TIMER}


def test_preemption_timer_counts_down_at_the_capability_rate_and_saves():
    rearmed = []

    def rearm(vcpu, exit_):
        rearmed.append((exit_.event, vcpu.tsc, vcpu.vmread(Field.VMX_PREEMPTION_TIMER_VALUE)))
        vcpu.vmwrite(Field.VMX_PREEMPTION_TIMER_VALUE, 100)

    # Rate 5 (IA32_VMX_MISC[4:0]): one tick each 32 TSC cycles. 10 ticks expire at TSC 320.
    _, runner = _run([event(EventKind.RUN, value=1000), event(EventKind.CPUID)],
                     handlers={ExitReason.PREEMPTION_TIMER: rearm},
                     VMX_PREEMPTION_TIMER_VALUE=10, **TIMER, **SAVE)
    assert rearmed == [(0, 320, 0)]
    vcpu = runner.vcpu
    # The rest of the RUN: TSC 320 -> 1000 is 31 - 10 = 21 ticks of the 100 rearmed; the
    # CPUID exit saves the 79 left.
    assert vcpu.tsc == 1000 and runner.counters.progress.guest_cycles == 1000
    assert vcpu.vmcs[Field.VMX_PREEMPTION_TIMER_VALUE] == 79


@pytest.mark.parametrize("rate, expiry", [(0, 10), (3, 80), (5, 320)])
def test_preemption_timer_rate_comes_from_ia32_vmx_misc(rate, expiry):
    stamps = []

    def stop(vcpu, exit_):
        stamps.append(vcpu.tsc)
        vcpu.vmwrite(Field.PIN_BASED_VM_EXEC_CONTROL, 0)

    _, runner = _run([event(EventKind.RUN, value=1000)],
                     capabilities=VmxCapabilities(misc=rate),
                     handlers={ExitReason.PREEMPTION_TIMER: stop},
                     VMX_PREEMPTION_TIMER_VALUE=10, **TIMER)
    assert stamps == [expiry]
    assert runner.vcpu.tsc == 1000
    assert runner.counters.progress.guest_cycles == 1000


def test_without_save_the_timer_reloads_its_field_at_every_entry():
    stamps = []
    _, runner = _run([event(EventKind.RUN, value=100)],
                     handlers={ExitReason.PREEMPTION_TIMER: lambda v, e: stamps.append(v.tsc)},
                     capabilities=VmxCapabilities(misc=0), VMX_PREEMPTION_TIMER_VALUE=30,
                     **TIMER)
    assert stamps == [30, 60, 90]
    assert runner.vcpu.vmcs[Field.VMX_PREEMPTION_TIMER_VALUE] == 30


def test_a_zero_timer_exits_before_the_first_instruction():
    seen = []

    def stop(vcpu, exit_):
        seen.append((exit_.reason, exit_.event, vcpu.vmcs[Field.GUEST_RIP]))
        vcpu.vmwrite(Field.PIN_BASED_VM_EXEC_CONTROL, 0)

    _run([event(EventKind.CPUID)], handlers={ExitReason.PREEMPTION_TIMER: stop},
         VMX_PREEMPTION_TIMER_VALUE=0, **TIMER)
    assert seen == [(ExitReason.PREEMPTION_TIMER, 0, 0)]


@given(st.integers(1, 500), st.integers(0, 6), st.lists(st.integers(0, 3000), min_size=1,
                                                      max_size=8))
@settings(max_examples=60, deadline=None)
def test_the_timer_expires_at_the_same_tsc_however_guest_time_is_split(timer, rate, runs):
    stamps = []

    def stop(vcpu, exit_):
        stamps.append(vcpu.tsc)
        vcpu.vmwrite(Field.PIN_BASED_VM_EXEC_CONTROL, 0)

    _, runner = _run([event(EventKind.RUN, value=n) for n in runs],
                     capabilities=VmxCapabilities(misc=rate),
                     handlers={ExitReason.PREEMPTION_TIMER: stop},
                     VMX_PREEMPTION_TIMER_VALUE=timer, **TIMER)
    expiry = timer << rate  # TSC starts at 0: bit `rate` changes every 2**rate cycles
    assert stamps == ([expiry] if expiry <= sum(runs) else [])
    assert runner.vcpu.tsc == runner.counters.progress.guest_cycles == sum(runs)


def test_an_interrupt_after_sti_does_not_end_the_sti_shadow():
    seen = []

    def close_window(vcpu, exit_):
        seen.append(exit_.event)
        vcpu.vmwrite(Field.CPU_BASED_VM_EXEC_CONTROL, 0)

    records = [event(EventKind.STI), event(EventKind.EXTINT, 0x40),
               event(EventKind.RUN, value=1), event(EventKind.RUN, value=1)]
    _, runner = _run(records, handlers={ExitReason.INTERRUPT_WINDOW: close_window},
                     CPU_BASED_VM_EXEC_CONTROL=ProcBased.INTERRUPT_WINDOW_EXITING)
    assert seen == [3] and runner.counters.progress.guest_interrupts == 1


# Spec hv §2.3 (SDM Appendix C; Linux uapi vmx.h), as written there.
SPEC_EXIT_REASONS = """0 EXCEPTION_NMI · 1 EXTERNAL_INTERRUPT · 2 TRIPLE_FAULT · 3 INIT_SIGNAL ·
7 INTERRUPT_WINDOW · 8 NMI_WINDOW · 9 TASK_SWITCH · 10 CPUID · 12 HLT · 13 INVD · 14 INVLPG ·
15 RDPMC · 16 RDTSC · 18 VMCALL · 19 VMCLEAR · 20 VMLAUNCH · 21 VMPTRLD · 22 VMPTRST ·
23 VMREAD · 24 VMRESUME · 25 VMWRITE · 26 VMOFF · 27 VMON · 28 CR_ACCESS · 29 DR_ACCESS ·
30 IO_INSTRUCTION · 31 MSR_READ · 32 MSR_WRITE · 33 INVALID_STATE · 34 MSR_LOAD_FAIL · 36 MWAIT ·
37 MONITOR_TRAP_FLAG · 39 MONITOR · 40 PAUSE · 41 MCE_DURING_VMENTRY · 43 TPR_BELOW_THRESHOLD ·
44 APIC_ACCESS · 45 EOI_INDUCED · 46 GDTR_IDTR · 47 LDTR_TR · 48 EPT_VIOLATION ·
49 EPT_MISCONFIG · 50 INVEPT · 51 RDTSCP · 52 PREEMPTION_TIMER · 53 INVVPID · 54 WBINVD ·
55 XSETBV · 56 APIC_WRITE · 57 RDRAND · 58 INVPCID · 59 VMFUNC · 60 ENCLS · 61 RDSEED ·
62 PML_FULL · 63 XSAVES · 64 XRSTORS · 67 UMWAIT · 68 TPAUSE · 77 TDCALL"""


def test_basic_exit_reasons_are_the_sdm_numbers():
    pairs = [item.split() for item in SPEC_EXIT_REASONS.replace("\n", " ").split("·")]
    assert {name: int(number) for number, name in pairs} == {r.name: r.value
                                                             for r in ExitReason}
