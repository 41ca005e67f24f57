"""VMX non-root operation: what one guest event does under the current VMCS's controls.

`step` runs one event of an `EVENT_DTYPE` stream on a vCPU in guest mode. It either retires
the event (the guest did it without the VMM) or makes the VM exit it causes, with its exit
reason and qualification (SDM Vol. 3C §26.1-26.2, §28.2; spec hv §2.4). Before each event it
looks for the exits that come at an instruction boundary, in the SDM's priority (§26.2, §26.7):
the VMX-preemption timer at zero, then an open interrupt window.

An event that exits has not retired: after the VMM handles the exit the guest runs it again,
unless the VMM emulated it and moved GUEST_RIP past it (as KVM's
`kvm_skip_emulated_instruction` does). An external interrupt is consumed by its exit, and a
RUN interrupted by the preemption timer keeps the cycles it has not run yet. With
"virtual-interrupt delivery", a recognised virtual interrupt is delivered at the boundary
before an event (`_vmx_posted`); the model evaluates recognition there, which delivers the
same interrupts as the SDM's evaluation points since nothing else in the model moves RVI,
VPPR or the interrupt-window control while the guest runs. Guest time (the TSC, which the
preemption timer counts) passes in RUN events only. HLT without "HLT exiting" retires at
once: the model has no activity states.

Memory accesses (READ, WRITE, FETCH) are translated through EPT when "enable EPT" is in force
and the vCPU was given a `translate(eptp, gpa, access)` callable with the contract of
`fastpath.hv.ept.walk` (access 'r', 'w' or 'x'; returns an `EptTranslation`, whose
`references` are counted; raises `EptViolation` or `EptMisconfig` from `fastpath.errors`), such
as `lambda eptp, gpa, access: ept.walk(mem, eptp, gpa, access)`. The EPT-violation qualification is
the walker's; when the walker knew of no guest linear address (bit 7 clear) and the event
carries one, the access is to that linear address's final translation, so bits 7 and 8 are
added (spec hv §1.5, TV2a). Both EPT exits report the instruction's length, as processors do
and KVM's fast MMIO path relies on, though the SDM leaves it undefined for them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from fastpath.errors import EptMisconfig, EptViolation
from fastpath.hv._vcpu import Vcpu
from fastpath.hv._vmcs import Field, Vmcs
from fastpath.hv._vmx_bitmaps import BITMAP_SIZE, io_exits, msr_exits
from fastpath.hv._vmx_controls import ExitControls, PinBased, ProcBased, Secondary
from fastpath.hv._vmx_cr import cr_access_exits, write_cr
from fastpath.hv._vmx_entry import (
    BLOCKING_BY_MOV_SS,
    BLOCKING_BY_STI,
    RFLAGS_IF,
    secondary_controls,
)
from fastpath.hv._vmx_events import EventFlag, EventKind
from fastpath.hv._vmx_exits import (
    EPT_GLA_TRANSLATED,
    EPT_GLA_VALID,
    CrAccess,
    Exit,
    ExitReason,
    InterruptionType,
    cr_access_qualification,
    interruption_info,
    io_qualification,
    string_io_instruction_info,
)
from fastpath.hv._vmx_posted import (
    PI_DESCRIPTOR_DTYPE,
    X2APIC_EOI_MSR,
    VirtualApic,
    post_interrupt,
)
from fastpath.hv._walk import EptTranslation

__all__ = ["Translate", "GuestProgress", "step"]

Translate = Callable[[int, int, str], EptTranslation]
_ACCESS = {EventKind.READ: "r", EventKind.WRITE: "w", EventKind.FETCH: "x"}
_ALWAYS_EXIT = {EventKind.CPUID: ExitReason.CPUID, EventKind.VMCALL: ExitReason.VMCALL}
# Exits caused by executing the event's instruction: the guest runs it again unless the VMM
# advances GUEST_RIP past it.
INSTRUCTION_EXITS = frozenset({
    ExitReason.CPUID, ExitReason.HLT, ExitReason.VMCALL, ExitReason.CR_ACCESS,
    ExitReason.MSR_READ,
    ExitReason.MSR_WRITE, ExitReason.IO_INSTRUCTION, ExitReason.EPT_VIOLATION,
    ExitReason.EPT_MISCONFIG})


@dataclass
class GuestProgress:
    """What the guest has done so far beyond its exits: events retired, external interrupts
    delivered straight to it, events the VMM injected at VM entry, posted-interrupt
    notifications processed and virtual interrupts delivered without an exit, TSC cycles
    run, EPT walks made and their memory references, and the cycles left of a RUN the
    preemption timer cut short."""

    retired: int = 0
    guest_interrupts: int = 0
    injected: int = 0
    posted_notifications: int = 0
    virtual_interrupts: int = 0
    guest_cycles: int = 0
    ept_walks: int = 0
    ept_references: int = 0
    run_left: int | None = field(default=None, repr=False)


def _bitmap(vcpu: Vcpu, address: int):
    return vcpu.memory[address:address + BITMAP_SIZE]


def _interruptible(vmcs: Vmcs) -> bool:
    return bool(vmcs[Field.GUEST_RFLAGS] & RFLAGS_IF
                and not vmcs[Field.GUEST_INTERRUPTIBILITY_INFO] & (BLOCKING_BY_STI
                                                                   | BLOCKING_BY_MOV_SS))


def _boundary_exit(vcpu: Vcpu) -> ExitReason | None:
    # Exits at an instruction boundary, highest priority first (§26.2; §26.7.4, §26.7.5).
    if vcpu.preemption_timer == 0:
        return ExitReason.PREEMPTION_TIMER
    vmcs = vcpu.vmcs
    if (vmcs[Field.CPU_BASED_VM_EXEC_CONTROL] & ProcBased.INTERRUPT_WINDOW_EXITING
            and _interruptible(vmcs)):
        return ExitReason.INTERRUPT_WINDOW
    return None


def _deliver_virtual_interrupt(vcpu: Vcpu, progress: GuestProgress) -> None:
    # §30.2.2: at a boundary where the guest takes interrupts and no window exit is asked for
    # (an open window with interrupt-window exiting has just exited above).
    vmcs = vcpu.vmcs
    if not secondary_controls(vmcs) & Secondary.VIRTUAL_INTERRUPT_DELIVERY:
        return
    window = bool(vmcs[Field.CPU_BASED_VM_EXEC_CONTROL] & ProcBased.INTERRUPT_WINDOW_EXITING)
    apic = VirtualApic(vmcs, vcpu.memory)
    if _interruptible(vmcs) and apic.recognised(window):
        apic.deliver()
        progress.virtual_interrupts += 1


def _posted_descriptor(vcpu: Vcpu):
    address = vcpu.vmcs[Field.POSTED_INTR_DESC_ADDR]
    return vcpu.memory[address:address + PI_DESCRIPTOR_DTYPE.itemsize]


def _run(vcpu: Vcpu, cycles: int, progress: GuestProgress, index: int) -> Exit | None:
    # Guest code for `cycles` TSC cycles; the preemption timer counts down each time TSC bit
    # X changes, X from IA32_VMX_MISC bits 4:0 (§26.5.1).
    timer, start = vcpu.preemption_timer, vcpu.tsc
    if timer is not None:
        rate = vcpu.capabilities.preemption_timer_rate
        ticks = ((start + cycles) >> rate) - (start >> rate)
        if ticks >= timer:
            expiry = ((start >> rate) + timer) << rate
            progress.guest_cycles += expiry - start
            progress.run_left = start + cycles - expiry
            vcpu.tsc, vcpu.preemption_timer = expiry, 0
            return vcpu.vm_exit(ExitReason.PREEMPTION_TIMER, event=index)
        vcpu.preemption_timer = timer - ticks
    vcpu.tsc += cycles
    progress.guest_cycles += cycles
    return None


def _io_exit(vcpu: Vcpu, event, index: int) -> Exit | None:
    vmcs, flags = vcpu.vmcs, EventFlag(int(event["flags"]))
    port, size = int(event["address"]), int(event["size"])
    proc = vmcs[Field.CPU_BASED_VM_EXEC_CONTROL]
    if proc & ProcBased.USE_IO_BITMAPS:  # the bitmaps decide; unconditional exiting is ignored
        exits = io_exits(_bitmap(vcpu, vmcs[Field.IO_BITMAP_A]),
                         _bitmap(vcpu, vmcs[Field.IO_BITMAP_B]), port, size)
    else:
        exits = bool(proc & ProcBased.UNCONDITIONAL_IO_EXITING)
    if not exits:
        return None
    is_in, string = bool(flags & EventFlag.IN), bool(flags & EventFlag.STRING)
    qualification = io_qualification(port, size, is_in, string, bool(flags & EventFlag.REP),
                                     bool(flags & EventFlag.IMMEDIATE))
    return vcpu.vm_exit(ExitReason.IO_INSTRUCTION, qualification, int(event["ilen"]),
                        instruction_info=string_io_instruction_info(is_in) if string else 0,
                        guest_linear_address=int(event["gla"]) if string else None,
                        event=index)


_VIRTUAL_EOI = Secondary.VIRTUALIZE_X2APIC_MODE | Secondary.VIRTUAL_INTERRUPT_DELIVERY


def _msr_exit(vcpu: Vcpu, event, index: int, write: bool) -> Exit | None:
    vmcs, msr = vcpu.vmcs, int(event["address"])
    if (vmcs[Field.CPU_BASED_VM_EXEC_CONTROL] & ProcBased.USE_MSR_BITMAPS
            and not msr_exits(_bitmap(vcpu, vmcs[Field.MSR_BITMAP]), msr, write)):
        if (write and msr == X2APIC_EOI_MSR
                and secondary_controls(vmcs) & _VIRTUAL_EOI == _VIRTUAL_EOI):
            # §30.5: a WRMSR of the x2APIC EOI register is EOI virtualization.
            VirtualApic(vmcs, vcpu.memory).virtualize_eoi()
        return None
    return vcpu.vm_exit(ExitReason.MSR_WRITE if write else ExitReason.MSR_READ,
                        instruction_length=int(event["ilen"]), event=index)


_CR_ACCESS_OF = {EventKind.MOV_TO_CR: CrAccess.MOV_TO_CR, EventKind.MOV_FROM_CR:
              CrAccess.MOV_FROM_CR, EventKind.CLTS: CrAccess.CLTS, EventKind.LMSW: CrAccess.LMSW}


def _cr_exit(vcpu: Vcpu, event, kind: EventKind, index: int) -> Exit | None:
    vmcs, access = vcpu.vmcs, _CR_ACCESS_OF[kind]
    cr = 0 if access in (CrAccess.CLTS, CrAccess.LMSW) else int(event["address"])
    value = int(event["value"])
    if not cr_access_exits(vmcs, cr, access, value):
        write_cr(vmcs, cr, access, value)
        return None
    memory_operand = access == CrAccess.LMSW and bool(event["flags"] & EventFlag.GLA)
    qualification = cr_access_qualification(
        cr, access, int(event["reg"]), memory_operand,
        value if access == CrAccess.LMSW else 0)
    return vcpu.vm_exit(ExitReason.CR_ACCESS, qualification, int(event["ilen"]),
                        guest_linear_address=int(event["gla"]) if memory_operand else None,
                        event=index)


def _memory_exit(vcpu: Vcpu, event, index: int, translate: Translate | None,
                 progress: GuestProgress) -> Exit | None:
    if translate is None or not secondary_controls(vcpu.vmcs) & Secondary.ENABLE_EPT:
        return None
    gpa, ilen = int(event["address"]), int(event["ilen"])
    has_gla = bool(event["flags"] & EventFlag.GLA)
    try:
        references = translate(vcpu.vmcs[Field.EPT_POINTER], gpa,
                               _ACCESS[EventKind(int(event["kind"]))]).references
    except EptViolation as violation:
        qualification = violation.qualification
        if has_gla and not qualification & EPT_GLA_VALID:
            qualification |= EPT_GLA_VALID | EPT_GLA_TRANSLATED
        gla = int(event["gla"]) if qualification & EPT_GLA_VALID else None
        return vcpu.vm_exit(ExitReason.EPT_VIOLATION, qualification, ilen,
                            guest_physical_address=violation.gpa, guest_linear_address=gla,
                            event=index)
    except EptMisconfig as misconfig:
        return vcpu.vm_exit(ExitReason.EPT_MISCONFIG, 0, ilen,
                            guest_physical_address=misconfig.gpa, event=index)
    progress.ept_walks += 1
    progress.ept_references += references
    return None


def _external_interrupt(vcpu: Vcpu, vector: int, index: int,
                        progress: GuestProgress) -> Exit | None:
    vmcs = vcpu.vmcs
    pin = vmcs[Field.PIN_BASED_VM_EXEC_CONTROL]
    if (pin & PinBased.PROCESS_POSTED_INTERRUPTS
            and vector == vmcs[Field.POSTED_INTR_NV] & 0xFF):
        # §30.6: the notification vector is acknowledged and processed without an exit.
        VirtualApic(vmcs, vcpu.memory).process_posted_interrupts(_posted_descriptor(vcpu))
        progress.posted_notifications += 1
        return None
    if not pin & PinBased.EXTERNAL_INTERRUPT_EXITING:
        # Without exiting the interrupt goes to the guest through its IDT (§26.2); the model
        # counts it and does not model the guest's RFLAGS.IF for it.
        progress.guest_interrupts += 1
        return None
    # With "acknowledge interrupt on exit" the processor takes the vector from the
    # interrupt controller and reports it; otherwise the interrupt stays pending for the
    # host and the information field is invalid (§28.2.2).
    info = (interruption_info(vector, InterruptionType.EXTERNAL_INTERRUPT)
            if vmcs[Field.VM_EXIT_CONTROLS] & ExitControls.ACK_INTERRUPT_ON_EXIT else 0)
    return vcpu.vm_exit(ExitReason.EXTERNAL_INTERRUPT, interruption_info=info, event=index)


def _set_interrupt_flag(vcpu: Vcpu, on: bool) -> None:
    vmcs = vcpu.vmcs
    rflags = vmcs[Field.GUEST_RFLAGS]
    if on and not rflags & RFLAGS_IF:
        # STI that sets IF blocks interrupts until the next instruction retires (§25.4.2).
        vmcs.store(Field.GUEST_INTERRUPTIBILITY_INFO,
                   vmcs[Field.GUEST_INTERRUPTIBILITY_INFO] | BLOCKING_BY_STI)
    vmcs.store(Field.GUEST_RFLAGS, rflags | RFLAGS_IF if on else rflags & ~RFLAGS_IF)


def step(vcpu: Vcpu, events: np.ndarray, index: int, translate: Translate | None,
         progress: GuestProgress) -> Exit | None:
    """Run event `index` of `events` on a vCPU in guest mode: the exit it makes, or None if it
    retired (GUEST_RIP advanced by its length, STI blocking from an earlier STI lifted)."""
    boundary = _boundary_exit(vcpu)
    if boundary is not None:
        return vcpu.vm_exit(boundary, event=index)
    _deliver_virtual_interrupt(vcpu, progress)
    event = events[index]
    kind, vmcs = EventKind(int(event["kind"])), vcpu.vmcs
    sti_blocked = vmcs[Field.GUEST_INTERRUPTIBILITY_INFO] & BLOCKING_BY_STI
    exit_: Exit | None = None
    if kind == EventKind.RUN:
        left = progress.run_left
        exit_ = _run(vcpu, int(event["value"]) if left is None else left, progress, index)
    elif kind in _ALWAYS_EXIT:
        exit_ = vcpu.vm_exit(_ALWAYS_EXIT[kind], instruction_length=int(event["ilen"]),
                             event=index)
    elif kind == EventKind.HLT:
        if vmcs[Field.CPU_BASED_VM_EXEC_CONTROL] & ProcBased.HLT_EXITING:
            exit_ = vcpu.vm_exit(ExitReason.HLT, instruction_length=int(event["ilen"]),
                                 event=index)
    elif kind == EventKind.IO:
        exit_ = _io_exit(vcpu, event, index)
    elif kind in (EventKind.RDMSR, EventKind.WRMSR):
        exit_ = _msr_exit(vcpu, event, index, write=kind == EventKind.WRMSR)
    elif kind in _ACCESS:
        exit_ = _memory_exit(vcpu, event, index, translate, progress)
    elif kind in _CR_ACCESS_OF:
        exit_ = _cr_exit(vcpu, event, kind, index)
    elif kind == EventKind.EXTINT:
        exit_ = _external_interrupt(vcpu, int(event["address"]), index, progress)
    elif kind == EventKind.POST:
        # The poster writes the descriptor; its notification, if it sends one, is an
        # external interrupt of vector NV arriving now.
        if post_interrupt(_posted_descriptor(vcpu), int(event["address"])):
            exit_ = _external_interrupt(vcpu, vmcs[Field.POSTED_INTR_NV] & 0xFF, index,
                                        progress)
    else:
        _set_interrupt_flag(vcpu, kind == EventKind.STI)
    if exit_ is not None:
        return exit_
    # An interrupt is not the instruction after STI: the shadow outlasts it.
    interrupt = kind in (EventKind.EXTINT, EventKind.POST)
    retire(vcpu, int(event["ilen"]), bool(sti_blocked) and not interrupt, progress)
    return None


def retire(vcpu: Vcpu, length: int, lift_sti_blocking: bool, progress: GuestProgress) -> None:
    """The bookkeeping of a retired event: RIP moves on, a pending STI shadow ends."""
    vmcs = vcpu.vmcs
    vmcs.store(Field.GUEST_RIP, vmcs[Field.GUEST_RIP] + length)
    if lift_sti_blocking:
        vmcs.store(Field.GUEST_INTERRUPTIBILITY_INFO,
                   vmcs[Field.GUEST_INTERRUPTIBILITY_INFO] & ~BLOCKING_BY_STI)
    progress.retired += 1
    progress.run_left = None
