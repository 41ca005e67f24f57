"""Event injection at VM entry (SDM Vol. 3C §27.2.1.3, §27.6): the checks on the VM-entry
interruption information, delivery, and the valid bit a VM exit clears; with the interrupt
window, the flow a VMM uses to hand a guest an interrupt it could not take at once."""

import pytest

from fastpath.errors import VmFailValid
from fastpath.hv.vmx import (
    INTERRUPTION_INFO_VALID,
    EventKind,
    ExitReason,
    Field,
    GuestRunner,
    InterruptionType,
    ProcBased,
    Secondary,
    event,
    events,
    interruption_info,
    ready_vcpu,
)

EXTERNAL, NMI = InterruptionType.EXTERNAL_INTERRUPT, InterruptionType.NMI
HARDWARE, SOFTWARE = InterruptionType.HARDWARE_EXCEPTION, InterruptionType.SOFTWARE_INTERRUPT
ERROR_CODE = 1 << 11


def _entry(**fields):
    try:
        return ready_vcpu(bytearray(0x10000), **fields).vmlaunch()
    except VmFailValid as error:
        return error.number


@pytest.mark.parametrize("fields", [
    {"VM_ENTRY_INTR_INFO_FIELD": interruption_info(0x30, EXTERNAL)},
    {"VM_ENTRY_INTR_INFO_FIELD": interruption_info(2, NMI)},
    {"VM_ENTRY_INTR_INFO_FIELD": interruption_info(13, HARDWARE, True),
     "VM_ENTRY_EXCEPTION_ERROR_CODE": 0xFFFF},
    {"VM_ENTRY_INTR_INFO_FIELD": interruption_info(6, HARDWARE)},  # #UD pushes no error code
    {"VM_ENTRY_INTR_INFO_FIELD": interruption_info(0x80, SOFTWARE),
     "VM_ENTRY_INSTRUCTION_LEN": 2},
    # An unrestricted guest in real mode: exceptions push no error code.
    {"VM_ENTRY_INTR_INFO_FIELD": interruption_info(13, HARDWARE), "GUEST_CR0": 0x20,
     "CPU_BASED_VM_EXEC_CONTROL": ProcBased.ACTIVATE_SECONDARY_CONTROLS,
     "SECONDARY_VM_EXEC_CONTROL": Secondary.ENABLE_EPT | Secondary.UNRESTRICTED_GUEST},
    {"VM_ENTRY_INTR_INFO_FIELD": 0x7FFF_FFFF},  # not valid: nothing is checked
])
def test_injections_that_pass_the_entry_checks(fields):
    assert _entry(**fields) is None


@pytest.mark.parametrize("info, extra", [
    (interruption_info(3, NMI), {}),                        # an NMI is vector 2
    (interruption_info(32, HARDWARE), {}),                  # exceptions are vectors 0-31
    (interruption_info(13, HARDWARE), {}),                  # #GP needs its error code
    (interruption_info(6, HARDWARE, True), {}),             # #UD has none
    (interruption_info(14, HARDWARE, True), {"VM_ENTRY_EXCEPTION_ERROR_CODE": 0x1_0000}),
    (interruption_info(0x80, SOFTWARE), {}),                # INT n needs its length
    (interruption_info(0x80, SOFTWARE), {"VM_ENTRY_INSTRUCTION_LEN": 16}),
    (INTERRUPTION_INFO_VALID | 1 << 8 | 0x30, {}),          # type 1 is reserved
    (INTERRUPTION_INFO_VALID | 7 << 8, {}),                 # type 7 needs MTF
    (interruption_info(0x30, EXTERNAL) | 1 << 12, {}),      # reserved bits 30:12
])
def test_bad_injections_fail_entry_with_error_7(info, extra):
    assert _entry(VM_ENTRY_INTR_INFO_FIELD=info, **extra) == 7


def test_the_interrupt_window_then_injection():
    # The guest runs with interrupts off; the VMM has an interrupt for it, so it asks for
    # the window; when the guest opens it, the VMM injects the interrupt and closes it.
    vcpu = ready_vcpu(bytearray(0x10000),
                      CPU_BASED_VM_EXEC_CONTROL=ProcBased.INTERRUPT_WINDOW_EXITING)
    seen = []

    def inject(vcpu, exit_):
        seen.append((exit_.reason, exit_.event))
        vcpu.vmwrite(Field.CPU_BASED_VM_EXEC_CONTROL, 0)
        vcpu.vmwrite(Field.VM_ENTRY_INTR_INFO_FIELD, interruption_info(0x30, EXTERNAL))

    runner = GuestRunner(vcpu, handlers={ExitReason.INTERRUPT_WINDOW: inject})
    counters = runner.run(events(event(EventKind.RUN, value=5), event(EventKind.STI),
                                 event(EventKind.RUN, value=5), event(EventKind.RUN, value=5),
                                 event(EventKind.CPUID)))
    assert seen == [(ExitReason.INTERRUPT_WINDOW, 3)]
    assert (counters.entries, counters.progress.injected) == (3, 1)
    # The CPUID exit after the injection cleared the valid bit; the vector stays.
    assert vcpu.vmcs[Field.VM_ENTRY_INTR_INFO_FIELD] == 0x30
