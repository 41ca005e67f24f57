"""The subset of VM-entry checks the model makes (SDM Vol. 3C §27.2-27.3; spec hv §2.5).

VMLAUNCH and VMRESUME check, in this order, and fail as shown:

Controls (§27.2.1), VMfailValid error 7:
  C1 the pin-based, primary processor-based, VM-exit and VM-entry controls keep to their
     capability MSRs, and so do the secondary controls when "activate secondary controls"
     is 1 (otherwise they are taken as 0);
  C2 "use I/O bitmaps": IO_BITMAP_A and IO_BITMAP_B are 4 KiB-aligned and below 2**MAXPHYADDR;
  C3 "use MSR bitmaps": MSR_BITMAP likewise;
  C4 "enable VPID": VIRTUAL_PROCESSOR_ID is not 0 (VPID 0 is the host's, spec hv §2.6);
  C5 "enable EPT": the EPTP passes the vCPU's EPTP check, when it was given one (the EPTP's
     layout and rules, spec hv §1.1, belong to the EPT walker);
  C6 "unrestricted guest" requires "enable EPT";
  C7 "save VMX-preemption timer value" requires "activate VMX-preemption timer";
  C8 "use TPR shadow": VIRTUAL_APIC_PAGE_ADDR is 4 KiB-aligned and below 2**MAXPHYADDR;
  C9 "virtualize x2APIC mode" and "virtual-interrupt delivery" require "use TPR shadow",
     and "virtual-interrupt delivery" requires "external-interrupt exiting";
  C10 "process posted interrupts" requires "virtual-interrupt delivery" and "acknowledge
     interrupt on exit", a notification vector with bits 15:8 clear, and a descriptor
     address 64-byte aligned and below 2**MAXPHYADDR;
  C11 an event to inject (VM_ENTRY_INTR_INFO_FIELD bit 31, §27.2.1.3): bits 30:12 clear, a
     type that is not 1 (reserved) or 7 (the model has no monitor trap flag), vector 2 for
     an NMI and at most 31 for a hardware exception, an error code delivered exactly for
     the hardware exceptions that push one (8, 10-14, 17) unless an unrestricted guest runs
     with CR0.PE = 0, with bits 31:16 of that error code clear, and an instruction length of
     1 to 15 for software interrupts and exceptions.
Host state (§27.2.2-27.2.4), VMfailValid error 8:
  H1 "host address-space size" is 1 (the modelled VMM runs in IA-32e mode);
  H2 HOST_CR0 has PE, NE and PG set, HOST_CR4 VMXE and PAE (IA32_VMX_CR0/CR4_FIXED0);
  H3 HOST_CR3 has no bit set at or above MAXPHYADDR;
  H4 HOST_RIP is canonical (48-bit linear addresses).
Guest state (§27.3.1), a VM-entry failure: VM exit 33 with bit 31 set (spec hv §2.5):
  G1 GUEST_RFLAGS has bit 1 set and bits 63:22, 15, 5 and 3 clear;
  G2 GUEST_INTERRUPTIBILITY_INFO has bits 31:5 clear, not both STI and MOV-SS blocking, and
     STI blocking only with RFLAGS.IF = 1;
  G3 GUEST_CR0 has PE, NE and PG set (only NE with "unrestricted guest"), GUEST_CR4 VMXE,
     and an IA-32e-mode guest has CR0.PG and CR4.PAE set;
  G4 the VMCS link pointer is all ones (the model has no VMCS shadowing): qualification 4,
     every other guest-state failure qualification 0.
"""

from __future__ import annotations

from collections.abc import Callable

from fastpath.hv._vmcs import Field, Vmcs
from fastpath.hv._vmx_controls import (
    EntryControls,
    ExitControls,
    PinBased,
    ProcBased,
    Secondary,
    VmxCapabilities,
)
from fastpath.hv._vmx_exits import INTERRUPTION_INFO_VALID, EntryFailure, InterruptionType

# VMX structures (VMXON region, VMCS, bitmaps, virtual-APIC page) are 4 KiB, whatever the
# host's page size.
VMX_PAGE = 0x1000
CR0_PE, CR0_NE, CR0_PG = 1 << 0, 1 << 5, 1 << 31
CR4_PAE, CR4_VMXE = 1 << 5, 1 << 13
RFLAGS_FIXED1, RFLAGS_IF = 1 << 1, 1 << 9
_RFLAGS_RESERVED = ~((1 << 22) - 1) & (1 << 64) - 1 | 1 << 15 | 1 << 5 | 1 << 3
BLOCKING_BY_STI, BLOCKING_BY_MOV_SS = 1 << 0, 1 << 1
_INTERRUPTIBILITY_RESERVED = 0xFFFF_FFE0
NO_LINK_POINTER = (1 << 64) - 1


def secondary_controls(vmcs: Vmcs) -> int:
    """The secondary controls in force: 0 unless "activate secondary controls" (§25.6.2)."""
    if vmcs[Field.CPU_BASED_VM_EXEC_CONTROL] & ProcBased.ACTIVATE_SECONDARY_CONTROLS:
        return vmcs[Field.SECONDARY_VM_EXEC_CONTROL]
    return 0


def canonical(address: int) -> bool:
    """Whether a 64-bit linear address is canonical with 48-bit linear addresses."""
    top = address >> 47
    return top in (0, (1 << 17) - 1)


def _aligned_address(address: int, caps: VmxCapabilities, alignment: int = VMX_PAGE) -> bool:
    return address % alignment == 0 and address >> caps.physical_address_width == 0


def controls_valid(vmcs: Vmcs, caps: VmxCapabilities,
                   eptp_valid: Callable[[int], bool] | None) -> bool:
    """Checks C1-C7."""
    pin, proc = vmcs[Field.PIN_BASED_VM_EXEC_CONTROL], vmcs[Field.CPU_BASED_VM_EXEC_CONTROL]
    exit_, entry = vmcs[Field.VM_EXIT_CONTROLS], vmcs[Field.VM_ENTRY_CONTROLS]
    secondary = secondary_controls(vmcs)
    if not all(caps.allows(cap, value) for cap, value in (
            (caps.pinbased, pin), (caps.procbased, proc), (caps.procbased2, secondary),
            (caps.exit, exit_), (caps.entry, entry))):
        return False
    if proc & ProcBased.USE_IO_BITMAPS and not (
            _aligned_address(vmcs[Field.IO_BITMAP_A], caps)
            and _aligned_address(vmcs[Field.IO_BITMAP_B], caps)):
        return False
    if proc & ProcBased.USE_MSR_BITMAPS and not _aligned_address(vmcs[Field.MSR_BITMAP], caps):
        return False
    if secondary & Secondary.ENABLE_VPID and vmcs[Field.VIRTUAL_PROCESSOR_ID] == 0:
        return False
    if (secondary & Secondary.ENABLE_EPT and eptp_valid is not None
            and not eptp_valid(vmcs[Field.EPT_POINTER])):
        return False
    if secondary & Secondary.UNRESTRICTED_GUEST and not secondary & Secondary.ENABLE_EPT:
        return False
    if exit_ & ExitControls.SAVE_PREEMPTION_TIMER and not pin & PinBased.PREEMPTION_TIMER:
        return False
    return (_apic_controls_valid(vmcs, caps, pin, proc, exit_, secondary)
            and _injection_valid(vmcs, secondary))


_ERROR_CODE_VECTORS = frozenset({8, 10, 11, 12, 13, 14, 17})  # #DF #TS #NP #SS #GP #PF #AC
_SOFTWARE_TYPES = frozenset({InterruptionType.SOFTWARE_INTERRUPT,
                             InterruptionType.PRIVILEGED_SOFTWARE_EXCEPTION,
                             InterruptionType.SOFTWARE_EXCEPTION})
_TYPES = frozenset(InterruptionType)  # 1 is reserved; 7, other event, needs MTF
_INJECTION_RESERVED = 0x7FFF_F000
_DELIVER_ERROR_CODE = 1 << 11


def _injection_valid(vmcs: Vmcs, secondary: int) -> bool:
    # Check C11 (§27.2.1.3).
    info = vmcs[Field.VM_ENTRY_INTR_INFO_FIELD]
    if not info & INTERRUPTION_INFO_VALID:
        return True
    vector, kind = info & 0xFF, info >> 8 & 7
    if info & _INJECTION_RESERVED or kind not in _TYPES:
        return False
    if (kind == InterruptionType.NMI and vector != 2
            or kind == InterruptionType.HARDWARE_EXCEPTION and vector > 31):
        return False
    protected = (not secondary & Secondary.UNRESTRICTED_GUEST
                 or vmcs[Field.GUEST_CR0] & CR0_PE)
    pushes = bool(protected and kind == InterruptionType.HARDWARE_EXCEPTION
                  and vector in _ERROR_CODE_VECTORS)
    if bool(info & _DELIVER_ERROR_CODE) != pushes:
        return False
    if pushes and vmcs[Field.VM_ENTRY_EXCEPTION_ERROR_CODE] >> 16:
        return False
    return kind not in _SOFTWARE_TYPES or 1 <= vmcs[Field.VM_ENTRY_INSTRUCTION_LEN] <= 15


def _apic_controls_valid(vmcs: Vmcs, caps: VmxCapabilities, pin: int, proc: int, exit_: int,
                         secondary: int) -> bool:
    # Checks C8-C10 (§27.2.1.1).
    tpr_shadow = proc & ProcBased.USE_TPR_SHADOW
    delivery = secondary & Secondary.VIRTUAL_INTERRUPT_DELIVERY
    if tpr_shadow and not _aligned_address(vmcs[Field.VIRTUAL_APIC_PAGE_ADDR], caps):
        return False
    if not tpr_shadow and secondary & (Secondary.VIRTUALIZE_X2APIC_MODE
                                       | Secondary.VIRTUAL_INTERRUPT_DELIVERY):
        return False
    if delivery and not pin & PinBased.EXTERNAL_INTERRUPT_EXITING:
        return False
    return not pin & PinBased.PROCESS_POSTED_INTERRUPTS or bool(
        delivery and exit_ & ExitControls.ACK_INTERRUPT_ON_EXIT
        and vmcs[Field.POSTED_INTR_NV] >> 8 == 0
        and _aligned_address(vmcs[Field.POSTED_INTR_DESC_ADDR], caps, 64))


def host_state_valid(vmcs: Vmcs, caps: VmxCapabilities) -> bool:
    """Checks H1-H4."""
    required_cr0, required_cr4 = CR0_PE | CR0_NE | CR0_PG, CR4_VMXE | CR4_PAE
    return bool(vmcs[Field.VM_EXIT_CONTROLS] & ExitControls.HOST_ADDRESS_SPACE_SIZE
                and vmcs[Field.HOST_CR0] & required_cr0 == required_cr0
                and vmcs[Field.HOST_CR4] & required_cr4 == required_cr4
                and vmcs[Field.HOST_CR3] >> caps.physical_address_width == 0
                and canonical(vmcs[Field.HOST_RIP]))


def guest_state_failure(vmcs: Vmcs) -> EntryFailure | None:
    """Checks G1-G4: None if the guest state passes, else the failure's qualification."""
    rflags = vmcs[Field.GUEST_RFLAGS]
    interruptibility = vmcs[Field.GUEST_INTERRUPTIBILITY_INFO]
    cr0, cr4 = vmcs[Field.GUEST_CR0], vmcs[Field.GUEST_CR4]
    unrestricted = secondary_controls(vmcs) & Secondary.UNRESTRICTED_GUEST
    required_cr0 = CR0_NE if unrestricted else CR0_PE | CR0_NE | CR0_PG
    ia32e = vmcs[Field.VM_ENTRY_CONTROLS] & EntryControls.IA32E_MODE_GUEST
    both = BLOCKING_BY_STI | BLOCKING_BY_MOV_SS
    if (not rflags & RFLAGS_FIXED1 or rflags & _RFLAGS_RESERVED
            or interruptibility & _INTERRUPTIBILITY_RESERVED
            or interruptibility & both == both
            or interruptibility & BLOCKING_BY_STI and not rflags & RFLAGS_IF
            or cr0 & required_cr0 != required_cr0 or not cr4 & CR4_VMXE
            or ia32e and not (cr0 & CR0_PG and cr4 & CR4_PAE)):
        return EntryFailure.DEFAULT
    if vmcs[Field.VMCS_LINK_POINTER] != NO_LINK_POINTER:
        return EntryFailure.VMCS_LINK_POINTER
    return None
