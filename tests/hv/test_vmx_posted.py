"""Posted interrupts, CPU side, and virtual-interrupt delivery (SDM Vol. 3C §30.1-30.2, §30.6;
spec hv §2.7): the descriptor bit for bit, notification processing without a VM exit,
delivery by priority, EOI virtualization, and the entry checks that guard them."""

import pytest

from fastpath.errors import VmFailValid
from fastpath.hv.vmx import (
    PI_DESCRIPTOR_DTYPE,
    PI_ON,
    PI_SN,
    X2APIC_EOI_MSR,
    EventKind,
    ExitControls,
    ExitReason,
    Field,
    GuestRunner,
    PinBased,
    ProcBased,
    Secondary,
    VirtualApic,
    event,
    events,
    pi_control,
    post_interrupt,
    ready_vcpu,
    set_msr_exiting,
)

MSRS, VAPIC, DESCRIPTOR, NV = 0x7000, 0x8000, 0x9000, 0xF2

POSTED = {
    "PIN_BASED_VM_EXEC_CONTROL": PinBased.EXTERNAL_INTERRUPT_EXITING
    | PinBased.PROCESS_POSTED_INTERRUPTS,
    "CPU_BASED_VM_EXEC_CONTROL": ProcBased.USE_TPR_SHADOW | ProcBased.USE_MSR_BITMAPS
    | ProcBased.ACTIVATE_SECONDARY_CONTROLS,
    "SECONDARY_VM_EXEC_CONTROL": Secondary.VIRTUAL_INTERRUPT_DELIVERY
    | Secondary.VIRTUALIZE_X2APIC_MODE,
    "VM_EXIT_CONTROLS": ExitControls.HOST_ADDRESS_SPACE_SIZE | ExitControls.ACK_INTERRUPT_ON_EXIT,
    "MSR_BITMAP": MSRS, "VIRTUAL_APIC_PAGE_ADDR": VAPIC, "POSTED_INTR_DESC_ADDR": DESCRIPTOR,
    "POSTED_INTR_NV": NV, "GUEST_RFLAGS": 0x202,
}


def _runner(memory=None, **fields):
    memory = memory if memory is not None else bytearray(0x10000)
    memory[DESCRIPTOR + 32:DESCRIPTOR + 40] = pi_control(NV, 1).to_bytes(8, "little")
    vcpu = ready_vcpu(memory, **{**POSTED, **fields})
    return GuestRunner(vcpu), memory


def _apic(runner):
    return VirtualApic(runner.vcpu.vmcs, runner.vcpu.memory)


def test_descriptor_layout_and_posting_bit_for_bit():
    assert PI_DESCRIPTOR_DTYPE.itemsize == 64
    descriptor = bytearray(64)
    descriptor[32:40] = pi_control(NV, 0x0300).to_bytes(8, "little")
    assert post_interrupt(descriptor, 0x51) is True
    assert descriptor[0x51 // 8] == 1 << (0x51 % 8)
    assert int.from_bytes(descriptor[32:40], "little") == 0x0000_0300_00F2_0001  # ON, NV, NDST
    assert post_interrupt(descriptor, 0xFF) is False  # a notification is outstanding
    assert descriptor[31] == 0x80
    suppressed = bytearray(64)
    suppressed[32:40] = pi_control(NV, 0, suppress=True).to_bytes(8, "little")
    assert post_interrupt(suppressed, 0x20) is False
    assert int.from_bytes(suppressed[32:40], "little") & (PI_ON | PI_SN) == PI_SN


def test_a_posted_interrupt_reaches_the_guest_without_an_exit():
    runner, memory = _runner()
    counters = runner.run(events(event(EventKind.POST, 0x51), event(EventKind.RUN, value=1)))
    apic = _apic(runner)
    assert counters.total_exits == 0
    assert (counters.progress.posted_notifications, counters.progress.virtual_interrupts) == (1, 1)
    assert (apic.isr, apic.irr, apic.svi, apic.rvi, apic.vppr) == (1 << 0x51, 0, 0x51, 0, 0x50)
    assert memory[DESCRIPTOR:DESCRIPTOR + 32] == bytes(32)  # PIR moved out
    assert int.from_bytes(memory[DESCRIPTOR + 32:DESCRIPTOR + 40], "little") & PI_ON == 0
    # The guest's EOI, a WRMSR of the x2APIC EOI register, is virtualized: no exit either.
    counters = runner.run(events(event(EventKind.WRMSR, X2APIC_EOI_MSR)))
    assert counters.total_exits == 0
    assert (apic.isr, apic.svi, apic.vppr) == (0, 0, 0)


def test_virtual_interrupts_are_delivered_by_priority_class():
    runner, memory = _runner()
    descriptor = memoryview(memory)[DESCRIPTOR:DESCRIPTOR + 64]
    assert post_interrupt(descriptor, 0x31) is True
    assert post_interrupt(descriptor, 0x51) is False  # rides on the same notification
    counters = runner.run(events(event(EventKind.EXTINT, NV), event(EventKind.RUN, value=1)))
    apic = _apic(runner)
    assert counters.progress.virtual_interrupts == 1
    assert (apic.svi, apic.rvi, apic.vppr) == (0x51, 0x31, 0x50)
    counters = runner.run(events(event(EventKind.RUN, value=1)))  # class 3 waits under 5
    assert counters.progress.virtual_interrupts == 1
    counters = runner.run(events(event(EventKind.WRMSR, X2APIC_EOI_MSR),
                                 event(EventKind.RUN, value=1)))
    assert counters.progress.virtual_interrupts == 2
    assert (apic.isr, apic.svi, apic.rvi, apic.vppr) == (1 << 0x31, 0x31, 0, 0x30)
    assert counters.total_exits == 0


def test_no_delivery_while_the_guest_blocks_interrupts():
    runner, _ = _runner(GUEST_RFLAGS=0x2)
    counters = runner.run(events(event(EventKind.POST, 0x51), event(EventKind.RUN, value=1),
                                 event(EventKind.STI), event(EventKind.RUN, value=1)))
    assert counters.progress.virtual_interrupts == 0  # the STI shadow covers the next RUN
    counters = runner.run(events(event(EventKind.RUN, value=1)))
    assert counters.progress.virtual_interrupts == 1


def test_other_vectors_still_exit_and_an_intercepted_eoi_exits():
    memory = bytearray(0x10000)
    set_msr_exiting(memoryview(memory)[MSRS:MSRS + 4096], X2APIC_EOI_MSR, write=True)
    runner, _ = _runner(memory)
    counters = runner.run(events(event(EventKind.EXTINT, 0x20),
                                 event(EventKind.WRMSR, X2APIC_EOI_MSR)))
    assert counters.by_reason() == {ExitReason.EXTERNAL_INTERRUPT: 1, ExitReason.MSR_WRITE: 1}
    assert runner.vcpu.vmcs[Field.VM_EXIT_INTR_INFO] == 0  # the MSR exit came last


def test_without_posted_interrupt_processing_the_notification_is_an_exit():
    runner, _ = _runner(PIN_BASED_VM_EXEC_CONTROL=PinBased.EXTERNAL_INTERRUPT_EXITING)
    seen = []
    runner.on(ExitReason.EXTERNAL_INTERRUPT, lambda vcpu, exit_: seen.append(exit_))
    runner.run(events(event(EventKind.POST, 0x51)))
    assert [(e.reason, e.interruption_info & 0xFF) for e in seen] == [
        (ExitReason.EXTERNAL_INTERRUPT, NV)]


ENTRY_FAILURES = {
    "C8 virtual-APIC page unaligned": {"VIRTUAL_APIC_PAGE_ADDR": VAPIC + 8},
    "C9 delivery without a TPR shadow": {
        "CPU_BASED_VM_EXEC_CONTROL": ProcBased.ACTIVATE_SECONDARY_CONTROLS},
    "C9 delivery without external-interrupt exiting": {
        "PIN_BASED_VM_EXEC_CONTROL": PinBased.PROCESS_POSTED_INTERRUPTS},
    "C10 posted interrupts without delivery": {
        "SECONDARY_VM_EXEC_CONTROL": Secondary.VIRTUALIZE_X2APIC_MODE},
    "C10 posted interrupts without acknowledge": {
        "VM_EXIT_CONTROLS": ExitControls.HOST_ADDRESS_SPACE_SIZE},
    "C10 a notification vector above 0xFF": {"POSTED_INTR_NV": 0x1F2},
    "C10 a descriptor not 64-byte aligned": {"POSTED_INTR_DESC_ADDR": DESCRIPTOR + 0x20},
}


@pytest.mark.parametrize("fields", ENTRY_FAILURES.values(), ids=ENTRY_FAILURES.keys())
def test_apic_virtualization_entry_checks(fields):
    vcpu = ready_vcpu(bytearray(0x10000), **{**POSTED, **fields})
    with pytest.raises(VmFailValid) as raised:
        vcpu.vmlaunch()
    assert raised.value.number == 7


def test_the_posted_configuration_enters():
    assert ready_vcpu(bytearray(0x10000), **POSTED).vmlaunch() is None
