"""A vCPU's VMX state machine: the VMX instructions in root operation, VM entry and VM exit.

States (spec hv §2.5): OFF (outside VMX operation) → VMXON → ROOT; VMLAUNCH/VMRESUME → GUEST;
a VM exit → ROOT; VMXOFF → OFF. VMCS regions and the VMXON region live in host memory (any
writable buffer indexed by host-physical address); the first 4 bytes of each hold the VMCS
revision identifier (SDM Vol. 3C §25.2), which VMXON and VMPTRLD check. A VMCS's contents are
kept by the model, as a processor keeps them in its own format (§25.11.1).

Each instruction follows its SDM pseudocode (§31.3): outside VMX operation every one but
VMXON raises VmxNotEnabled (#UD); a failure raises VmFailInvalid when there is no current
VMCS, else writes the VM-instruction error and raises VmFailValid (§31.2).
"""

from __future__ import annotations

from collections.abc import Callable
from enum import Enum

from fastpath.errors import FastpathError, VmFailInvalid, VmxError, VmxNotEnabled
from fastpath.hv._vmcs import Field, Vmcs, VmInstructionError, fail_valid
from fastpath.hv._vmx_controls import ExitControls, PinBased, VmxCapabilities
from fastpath.hv._vmx_entry import (
    VMX_PAGE,
    controls_valid,
    guest_state_failure,
    host_state_valid,
)
from fastpath.hv._vmx_exits import ENTRY_FAILURE, INTERRUPTION_INFO_VALID, Exit, ExitReason

__all__ = ["VcpuMode", "Vcpu", "NO_CURRENT_VMCS"]

NO_CURRENT_VMCS = (1 << 64) - 1  # VMPTRST's answer when no VMCS is current (§31.3)


class VcpuMode(Enum):
    """Where a vCPU is: outside VMX operation, VMX root operation, or running its guest."""

    OFF = "off"
    ROOT = "root"
    GUEST = "guest"


class Vcpu:
    """One logical processor with VMX, over host physical memory `memory`.

    `eptp_valid`, if given, is the EPTP check VM entry makes when "enable EPT" is 1 (check C5
    of `fastpath.hv._vmx_entry`; the EPT walker provides it). `tsc` is the guest's time-stamp
    counter, which advances while the guest runs; the VMX-preemption timer counts it down.
    """

    def __init__(self, memory, capabilities: VmxCapabilities | None = None,
                 eptp_valid: Callable[[int], bool] | None = None):
        self.memory = memoryview(memory).cast("B")
        self.capabilities = capabilities or VmxCapabilities()
        self.eptp_valid = eptp_valid
        self.mode = VcpuMode.OFF
        self.vmxon_pointer: int | None = None
        self.current: int | None = None
        self.tsc = 0
        # The VMX-preemption timer while the guest runs (loaded at entry, §26.7.4); None
        # when the control is off.
        self.preemption_timer: int | None = None
        self._regions: dict[int, Vmcs] = {}

    # -- helpers -------------------------------------------------------------------------

    @property
    def vmcs(self) -> Vmcs:
        """The current VMCS; VmFailInvalid if there is none."""
        if self.current is None:
            raise VmFailInvalid("no current VMCS")
        return self._regions[self.current]

    def _in_vmx_operation(self, instruction: str) -> None:
        if self.mode is VcpuMode.OFF:
            raise VmxNotEnabled(f"{instruction} outside VMX operation (#UD)")
        if self.mode is VcpuMode.GUEST:
            # In VMX non-root operation the VMX instructions exit unconditionally (§26.1.2);
            # a guest's event stream does not run them, so reaching here is a caller's bug.
            raise VmxError(f"{instruction} called while the guest runs")

    def _fail(self, number: VmInstructionError) -> FastpathError:
        # VMfail (§31.2): VMfailValid with a current VMCS to hold the error, else VMfailInvalid.
        if self.current is None:
            return VmFailInvalid(f"{number.name} with no current VMCS")
        self.vmcs.store(Field.VM_INSTRUCTION_ERROR, number)
        return fail_valid(number)

    def _valid_region(self, address: int) -> bool:
        # §31.3 VMXON/VMCLEAR/VMPTRLD: 4 KiB-aligned, within MAXPHYADDR; the model also
        # needs the page to be in `memory`.
        return (address % VMX_PAGE == 0 and 0 <= address
                and address >> self.capabilities.physical_address_width == 0
                and address + VMX_PAGE <= len(self.memory))

    def _revision_matches(self, address: int) -> bool:
        revision = int.from_bytes(self.memory[address:address + 4], "little")
        return revision == self.capabilities.revision_id  # bit 31 clear: not a shadow VMCS

    # -- VMX instructions ----------------------------------------------------------------

    def vmxon(self, address: int) -> None:
        """VMXON: enter VMX root operation with the VMXON region at `address`.

        VmFailInvalid if the region is misaligned, beyond MAXPHYADDR or outside memory, or
        its revision identifier is wrong; in root operation, error 15.
        """
        if self.mode is VcpuMode.GUEST:
            self._in_vmx_operation("VMXON")
        if self.mode is VcpuMode.ROOT:
            raise self._fail(VmInstructionError.VMXON_IN_VMX_ROOT_OPERATION)
        if not self._valid_region(address) or not self._revision_matches(address):
            raise VmFailInvalid(f"VMXON region at {address:#x} is not valid")
        self.mode, self.vmxon_pointer, self.current = VcpuMode.ROOT, address, None

    def vmxoff(self) -> None:
        """VMXOFF: leave VMX operation.

        The model forgets the current VMCS and marks every VMCS still launched as stale: a
        later VMRESUME of one fails with error 6 (software should VMCLEAR before VMXOFF).
        """
        self._in_vmx_operation("VMXOFF")
        for vmcs in self._regions.values():
            vmcs.stale = vmcs.launched
        self.mode, self.vmxon_pointer, self.current = VcpuMode.OFF, None, None

    def vmclear(self, address: int) -> None:
        """VMCLEAR: set the launch state of the VMCS at `address` to clear.

        Errors 2 (invalid address) and 3 (the VMXON pointer). Clearing the current VMCS
        leaves no current VMCS.
        """
        self._in_vmx_operation("VMCLEAR")
        if not self._valid_region(address):
            raise self._fail(VmInstructionError.VMCLEAR_INVALID_ADDRESS)
        if address == self.vmxon_pointer:
            raise self._fail(VmInstructionError.VMCLEAR_VMXON_POINTER)
        vmcs = self._regions.setdefault(address, Vmcs())
        vmcs.launched = vmcs.stale = vmcs.checked = False
        if address == self.current:
            self.current = None

    def vmptrld(self, address: int) -> None:
        """VMPTRLD: make the VMCS at `address` current.

        Errors 9 (invalid address), 10 (the VMXON pointer), 11 (wrong revision identifier,
        or the shadow-VMCS indicator set). A region never VMCLEARed starts clear.
        """
        self._in_vmx_operation("VMPTRLD")
        if not self._valid_region(address):
            raise self._fail(VmInstructionError.VMPTRLD_INVALID_ADDRESS)
        if address == self.vmxon_pointer:
            raise self._fail(VmInstructionError.VMPTRLD_VMXON_POINTER)
        if not self._revision_matches(address):
            raise self._fail(VmInstructionError.VMPTRLD_INCORRECT_VMCS_REVISION_ID)
        self._regions.setdefault(address, Vmcs())
        self.current = address

    def vmptrst(self) -> int:
        """VMPTRST: the current-VMCS pointer, all ones if there is none."""
        self._in_vmx_operation("VMPTRST")
        return NO_CURRENT_VMCS if self.current is None else self.current

    def vmread(self, encoding: int) -> int:
        """VMREAD of the current VMCS (errors 12; `Vmcs.read` gives the width rules)."""
        self._in_vmx_operation("VMREAD")
        try:
            return self.vmcs.read(encoding)
        except VmxError as error:
            raise self._recorded(error) from None

    def vmwrite(self, encoding: int, value: int) -> None:
        """VMWRITE to the current VMCS (errors 12 and 13; `Vmcs.write` gives the rules)."""
        self._in_vmx_operation("VMWRITE")
        try:
            self.vmcs.write(encoding, value)
        except VmxError as error:
            raise self._recorded(error) from None

    def _recorded(self, error: VmxError) -> VmxError:
        number = getattr(error, "number", None)
        return error if number is None else self._fail(VmInstructionError(number))

    def vmcall(self) -> None:
        """VMCALL in root operation: error 1 (the model has no dual-monitor treatment)."""
        self._in_vmx_operation("VMCALL")
        raise self._fail(VmInstructionError.VMCALL_IN_VMX_ROOT_OPERATION)

    def vmlaunch(self) -> Exit | None:
        """VMLAUNCH: enter the guest with a clear VMCS (error 4 otherwise).

        Returns None once the guest runs, or the VM-entry failure exit if guest state fails
        its checks (the launch state stays clear). Errors 7 and 8: see `_vmx_entry`. An event
        in VM_ENTRY_INTR_INFO_FIELD is injected: delivered through the guest's IDT as the
        entry completes (§27.6), which the model counts and does not otherwise run.
        """
        return self._enter(launch=True)

    def vmresume(self) -> Exit | None:
        """VMRESUME: enter the guest with a launched VMCS (error 5 otherwise, 6 if stale)."""
        return self._enter(launch=False)

    def _enter(self, launch: bool) -> Exit | None:
        self._in_vmx_operation("VMLAUNCH" if launch else "VMRESUME")
        vmcs = self.vmcs
        if launch and vmcs.launched:
            raise self._fail(VmInstructionError.VMLAUNCH_NONCLEAR_VMCS)
        if not launch and not vmcs.launched:
            raise self._fail(VmInstructionError.VMRESUME_NONLAUNCHED_VMCS)
        if not launch and vmcs.stale:
            raise self._fail(VmInstructionError.VMRESUME_AFTER_VMXOFF)
        failure = self._check_entry(vmcs)
        if failure is not None:
            return failure
        vmcs.launched = True
        self.mode = VcpuMode.GUEST
        pin = vmcs[Field.PIN_BASED_VM_EXEC_CONTROL]
        self.preemption_timer = (vmcs[Field.VMX_PREEMPTION_TIMER_VALUE]
                                 if pin & PinBased.PREEMPTION_TIMER else None)
        return None

    def _check_entry(self, vmcs: Vmcs) -> Exit | None:
        # The checks of `_vmx_entry`, in the SDM's order: controls, host state, guest state.
        if not vmcs.checked:
            if not controls_valid(vmcs, self.capabilities, self.eptp_valid):
                raise self._fail(VmInstructionError.ENTRY_INVALID_CONTROL_FIELD)
            if not host_state_valid(vmcs, self.capabilities):
                raise self._fail(VmInstructionError.ENTRY_INVALID_HOST_STATE_FIELD)
            vmcs.checked = True
        failure = guest_state_failure(vmcs)
        if failure is None:
            return None
        # §27.8: the failure is reported as a VM exit; the host state is loaded and the
        # processor stays in root operation.
        self.mode = VcpuMode.GUEST
        return self.vm_exit(ExitReason.INVALID_STATE, qualification=failure,
                            entry_failure=True)

    # -- VM exits ------------------------------------------------------------------------

    def vm_exit(self, reason: ExitReason, qualification: int = 0, instruction_length: int = 0,
                interruption_info: int = 0, instruction_info: int = 0,
                guest_physical_address: int | None = None,
                guest_linear_address: int | None = None, entry_failure: bool = False,
                event: int = -1) -> Exit:
        """Leave the guest for the VMM: write the exit-information fields and return them.

        Every exit writes VM_EXIT_REASON, EXIT_QUALIFICATION, VM_EXIT_INTR_INFO (bit 31 clear
        unless an event caused it) and VM_EXIT_INSTRUCTION_LEN (0 unless an instruction
        caused it, §28.2.4); GUEST_PHYSICAL_ADDRESS, GUEST_LINEAR_ADDRESS and
        VMX_INSTRUCTION_INFO only when given (§28.2.1-28.2.5). With "save VMX-preemption
        timer value" the timer's value is saved (§28.3.4). The valid bit of the VM-entry
        interruption information is cleared (§28.2.5), unless the entry failed: then the
        event was never delivered.
        """
        if self.mode is not VcpuMode.GUEST:
            raise VmxError("a VM exit needs a running guest")
        vmcs = self.vmcs
        vmcs.store(Field.VM_EXIT_REASON, reason | (ENTRY_FAILURE if entry_failure else 0))
        vmcs.store(Field.EXIT_QUALIFICATION, qualification)
        vmcs.store(Field.VM_EXIT_INTR_INFO, interruption_info)
        vmcs.store(Field.VM_EXIT_INSTRUCTION_LEN, instruction_length)
        for field, value in ((Field.GUEST_PHYSICAL_ADDRESS, guest_physical_address),
                             (Field.GUEST_LINEAR_ADDRESS, guest_linear_address)):
            if value is not None:
                vmcs.store(field, value)
        if instruction_info:
            vmcs.store(Field.VMX_INSTRUCTION_INFO, instruction_info)
        if not entry_failure:
            vmcs.store(Field.VM_ENTRY_INTR_INFO_FIELD,
                       vmcs[Field.VM_ENTRY_INTR_INFO_FIELD] & ~INTERRUPTION_INFO_VALID)
        if (self.preemption_timer is not None
                and vmcs[Field.VM_EXIT_CONTROLS] & ExitControls.SAVE_PREEMPTION_TIMER):
            vmcs.store(Field.VMX_PREEMPTION_TIMER_VALUE, self.preemption_timer)
        self.preemption_timer = None
        self.mode = VcpuMode.ROOT
        return Exit(ExitReason(reason), qualification, instruction_length, interruption_info,
                    instruction_info, guest_physical_address, guest_linear_address,
                    entry_failure, event)
