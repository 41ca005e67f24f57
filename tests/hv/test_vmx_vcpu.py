"""The vCPU's VMX instructions: every transition and VM-instruction error (SDM Vol. 3C §31.3,
§31.4), and the VM-entry checks the model makes (fastpath.hv._vmx_entry)."""

import pytest

from fastpath.errors import VmFailInvalid, VmFailValid, VmxNotEnabled
from fastpath.hv.vmx import (
    ENTRY_FAILURE,
    NO_CURRENT_VMCS,
    VMCS_REGION,
    VMXON_REGION,
    EntryFailure,
    ExitControls,
    ExitReason,
    Field,
    PinBased,
    ProcBased,
    Secondary,
    Vcpu,
    VcpuMode,
    VmxCapabilities,
    ready_vcpu,
)

OTHER_VMCS = 0x3000


@pytest.fixture
def memory():
    mem = bytearray(0x10000)
    for region in (VMXON_REGION, VMCS_REGION, OTHER_VMCS):
        mem[region:region + 4] = (1).to_bytes(4, "little")
    return mem


def _valid(number, call, *args):
    with pytest.raises(VmFailValid) as raised:
        call(*args)
    assert raised.value.number == number
    return raised.value


def test_vmx_instructions_outside_vmx_operation_are_invalid_opcodes(memory):
    vcpu = Vcpu(memory)
    for call, args in ((vcpu.vmxoff, ()), (vcpu.vmclear, (VMCS_REGION,)),
                       (vcpu.vmptrld, (VMCS_REGION,)), (vcpu.vmptrst, ()),
                       (vcpu.vmread, (Field.GUEST_RIP,)), (vcpu.vmwrite, (Field.GUEST_RIP, 0)),
                       (vcpu.vmlaunch, ()), (vcpu.vmresume, ()), (vcpu.vmcall, ())):
        with pytest.raises(VmxNotEnabled):
            call(*args)


@pytest.mark.parametrize("address", [0x1800, 1 << 46, 0x10000])
def test_vmxon_with_a_bad_region_address_fails_invalid(memory, address):
    with pytest.raises(VmFailInvalid):
        Vcpu(memory).vmxon(address)


def test_vmxon_checks_the_revision_identifier_and_the_shadow_bit(memory):
    memory[0x4000:0x4004] = (2).to_bytes(4, "little")
    memory[0x5000:0x5004] = (1 | 1 << 31).to_bytes(4, "little")
    vcpu = Vcpu(memory)
    for address in (0x4000, 0x5000):
        with pytest.raises(VmFailInvalid):
            vcpu.vmxon(address)
    assert vcpu.mode is VcpuMode.OFF


def test_vmxon_vmxoff_round_trip(memory):
    vcpu = Vcpu(memory)
    vcpu.vmxon(VMXON_REGION)
    assert vcpu.mode is VcpuMode.ROOT and vcpu.vmptrst() == NO_CURRENT_VMCS
    with pytest.raises(VmFailInvalid):  # error 15, but no current VMCS to hold it
        vcpu.vmxon(VMXON_REGION)
    vcpu.vmptrld(VMCS_REGION)
    error = _valid(15, vcpu.vmxon, VMXON_REGION)
    assert "VMXON_IN_VMX_ROOT_OPERATION" in str(error)
    assert vcpu.vmread(Field.VM_INSTRUCTION_ERROR) == 15
    vcpu.vmxoff()
    assert vcpu.mode is VcpuMode.OFF and vcpu.current is None


def test_vmclear_errors_and_clearing_the_current_vmcs(memory):
    vcpu = Vcpu(memory)
    vcpu.vmxon(VMXON_REGION)
    with pytest.raises(VmFailInvalid):
        vcpu.vmclear(0x2001)
    vcpu.vmptrld(VMCS_REGION)
    _valid(2, vcpu.vmclear, 0x2001)
    _valid(2, vcpu.vmclear, 1 << 46)
    _valid(3, vcpu.vmclear, VMXON_REGION)
    vcpu.vmclear(VMCS_REGION)
    assert vcpu.vmptrst() == NO_CURRENT_VMCS


def test_vmptrld_errors(memory):
    vcpu = Vcpu(memory)
    vcpu.vmxon(VMXON_REGION)
    vcpu.vmptrld(VMCS_REGION)
    assert vcpu.vmptrst() == VMCS_REGION
    _valid(9, vcpu.vmptrld, 0x3004)
    _valid(10, vcpu.vmptrld, VMXON_REGION)
    memory[0x4000:0x4004] = (7).to_bytes(4, "little")
    _valid(11, vcpu.vmptrld, 0x4000)
    assert vcpu.vmptrst() == VMCS_REGION  # a failed VMPTRLD changes nothing
    vcpu.vmptrld(OTHER_VMCS)
    assert vcpu.vmptrst() == OTHER_VMCS


def test_vmread_and_vmwrite_need_a_current_vmcs_and_record_their_errors(memory):
    vcpu = Vcpu(memory)
    vcpu.vmxon(VMXON_REGION)
    with pytest.raises(VmFailInvalid):
        vcpu.vmread(Field.GUEST_RIP)
    with pytest.raises(VmFailInvalid):
        vcpu.vmwrite(Field.GUEST_RIP, 1)
    vcpu.vmptrld(VMCS_REGION)
    _valid(12, vcpu.vmread, 0x6C18)
    assert vcpu.vmread(Field.VM_INSTRUCTION_ERROR) == 12
    _valid(13, vcpu.vmwrite, Field.EXIT_QUALIFICATION, 1)
    assert vcpu.vmread(Field.VM_INSTRUCTION_ERROR) == 13


def test_vmcall_in_root_operation_is_error_1(memory):
    vcpu = Vcpu(memory)
    vcpu.vmxon(VMXON_REGION)
    with pytest.raises(VmFailInvalid):
        vcpu.vmcall()
    vcpu.vmptrld(VMCS_REGION)
    _valid(1, vcpu.vmcall)


def test_launch_state_clear_then_launched(memory):
    vcpu = ready_vcpu(memory)
    _valid(5, vcpu.vmresume)
    assert vcpu.vmlaunch() is None
    assert vcpu.mode is VcpuMode.GUEST and vcpu.vmcs.launched
    vcpu.vm_exit(ExitReason.CPUID)
    assert vcpu.mode is VcpuMode.ROOT
    _valid(4, vcpu.vmlaunch)
    assert vcpu.vmresume() is None
    vcpu.vm_exit(ExitReason.HLT)
    vcpu.vmclear(VMCS_REGION)
    vcpu.vmptrld(VMCS_REGION)
    assert vcpu.vmlaunch() is None


def test_vmlaunch_and_vmresume_without_a_current_vmcs_fail_invalid(memory):
    vcpu = Vcpu(memory)
    vcpu.vmxon(VMXON_REGION)
    for call in (vcpu.vmlaunch, vcpu.vmresume):
        with pytest.raises(VmFailInvalid):
            call()


def test_vmresume_of_a_vmcs_left_launched_across_vmxoff_is_error_6(memory):
    vcpu = ready_vcpu(memory)
    vcpu.vmlaunch()
    vcpu.vm_exit(ExitReason.VMCALL)
    vcpu.vmxoff()
    vcpu.vmxon(VMXON_REGION)
    vcpu.vmptrld(VMCS_REGION)
    _valid(6, vcpu.vmresume)


# -- entry checks -----------------------------------------------------------------------

CONTROL_FAILURES = {
    "C1 a pin-based control the model lacks": {"PIN_BASED_VM_EXEC_CONTROL": 1 << 3},
    "C1 a secondary control the model lacks": {
        "CPU_BASED_VM_EXEC_CONTROL": ProcBased.ACTIVATE_SECONDARY_CONTROLS,
        "SECONDARY_VM_EXEC_CONTROL": 1 << 0},
    "C2 I/O bitmap B unaligned": {"CPU_BASED_VM_EXEC_CONTROL": ProcBased.USE_IO_BITMAPS,
                                  "IO_BITMAP_A": 0x5000, "IO_BITMAP_B": 0x6008},
    "C2 I/O bitmap A beyond MAXPHYADDR": {"CPU_BASED_VM_EXEC_CONTROL": ProcBased.USE_IO_BITMAPS,
                                          "IO_BITMAP_A": 1 << 46, "IO_BITMAP_B": 0x6000},
    "C3 MSR bitmap unaligned": {"CPU_BASED_VM_EXEC_CONTROL": ProcBased.USE_MSR_BITMAPS,
                                "MSR_BITMAP": 0x7800},
    "C4 VPID 0": {"CPU_BASED_VM_EXEC_CONTROL": ProcBased.ACTIVATE_SECONDARY_CONTROLS,
                  "SECONDARY_VM_EXEC_CONTROL": Secondary.ENABLE_VPID},
    "C6 unrestricted guest without EPT": {
        "CPU_BASED_VM_EXEC_CONTROL": ProcBased.ACTIVATE_SECONDARY_CONTROLS,
        "SECONDARY_VM_EXEC_CONTROL": Secondary.UNRESTRICTED_GUEST},
    "C7 saving a timer that is off": {
        "VM_EXIT_CONTROLS": ExitControls.HOST_ADDRESS_SPACE_SIZE
        | ExitControls.SAVE_PREEMPTION_TIMER},
}


@pytest.mark.parametrize("fields", CONTROL_FAILURES.values(), ids=CONTROL_FAILURES.keys())
def test_bad_controls_fail_entry_with_error_7(memory, fields):
    vcpu = ready_vcpu(memory, **fields)
    _valid(7, vcpu.vmlaunch)
    assert vcpu.mode is VcpuMode.ROOT and not vcpu.vmcs.launched


def test_secondary_controls_are_ignored_unless_activated(memory):
    vcpu = ready_vcpu(memory, SECONDARY_VM_EXEC_CONTROL=Secondary.ENABLE_VPID)
    assert vcpu.vmlaunch() is None


def test_the_eptp_check_is_the_ept_walkers(memory):
    secondary = {"CPU_BASED_VM_EXEC_CONTROL": ProcBased.ACTIVATE_SECONDARY_CONTROLS,
                 "SECONDARY_VM_EXEC_CONTROL": Secondary.ENABLE_EPT, "EPT_POINTER": 0x10005E}
    vcpu = ready_vcpu(memory, **secondary)
    vcpu.eptp_valid = lambda eptp: eptp & 7 == 6
    assert vcpu.vmlaunch() is None
    vcpu.vm_exit(ExitReason.HLT)
    vcpu.vmwrite(Field.EPT_POINTER, 0x100019)
    _valid(7, vcpu.vmresume)


HOST_FAILURES = {
    "H1 32-bit host": {"VM_EXIT_CONTROLS": 0},
    "H2 host CR0 without PG": {"HOST_CR0": 0x21},
    "H2 host CR4 without VMXE": {"HOST_CR4": 0x20},
    "H3 host CR3 beyond MAXPHYADDR": {"HOST_CR3": 1 << 46},
    "H4 host RIP not canonical": {"HOST_RIP": 0x0000_8000_0000_0000},
}


@pytest.mark.parametrize("fields", HOST_FAILURES.values(), ids=HOST_FAILURES.keys())
def test_bad_host_state_fails_entry_with_error_8(memory, fields):
    _valid(8, ready_vcpu(memory, **fields).vmlaunch)


GUEST_FAILURES = {
    "G1 RFLAGS bit 1 clear": ({"GUEST_RFLAGS": 0}, EntryFailure.DEFAULT),
    "G1 RFLAGS reserved bit 15": ({"GUEST_RFLAGS": 2 | 1 << 15}, EntryFailure.DEFAULT),
    "G2 STI blocking with IF clear": ({"GUEST_INTERRUPTIBILITY_INFO": 1}, EntryFailure.DEFAULT),
    "G2 STI and MOV-SS blocking": ({"GUEST_RFLAGS": 0x202, "GUEST_INTERRUPTIBILITY_INFO": 3},
                                   EntryFailure.DEFAULT),
    "G3 guest CR0 without PE": ({"GUEST_CR0": 0x8000_0020}, EntryFailure.DEFAULT),
    "G3 guest CR4 without VMXE": ({"GUEST_CR4": 0x20}, EntryFailure.DEFAULT),
    "G4 a VMCS link pointer": ({"VMCS_LINK_POINTER": 0}, EntryFailure.VMCS_LINK_POINTER),
}


@pytest.mark.parametrize("fields, qualification", GUEST_FAILURES.values(),
                         ids=GUEST_FAILURES.keys())
def test_bad_guest_state_is_a_vm_entry_failure_exit(memory, fields, qualification):
    vcpu = ready_vcpu(memory, **fields)
    exit_ = vcpu.vmlaunch()
    assert exit_.reason == ExitReason.INVALID_STATE and exit_.entry_failure
    assert vcpu.vmread(Field.VM_EXIT_REASON) == ENTRY_FAILURE | 33
    assert vcpu.vmread(Field.EXIT_QUALIFICATION) == qualification
    assert vcpu.mode is VcpuMode.ROOT and not vcpu.vmcs.launched


def test_unrestricted_guest_may_run_unpaged(memory):
    vcpu = ready_vcpu(memory, GUEST_CR0=0x20,
                      CPU_BASED_VM_EXEC_CONTROL=ProcBased.ACTIVATE_SECONDARY_CONTROLS,
                      SECONDARY_VM_EXEC_CONTROL=Secondary.ENABLE_EPT
                      | Secondary.UNRESTRICTED_GUEST)
    assert vcpu.vmlaunch() is None


def test_entry_loads_the_preemption_timer(memory):
    vcpu = ready_vcpu(memory, PIN_BASED_VM_EXEC_CONTROL=PinBased.PREEMPTION_TIMER,
                      VMX_PREEMPTION_TIMER_VALUE=1234)
    vcpu.vmlaunch()
    assert vcpu.preemption_timer == 1234


def test_controls_a_capability_msr_forces_on_must_be_set(memory):
    # Pin-based default-1 bits 1, 2 and 4 (a non-TRUE IA32_VMX_PINBASED_CTLS, Appendix A.3.1).
    default1 = 0x16
    caps = VmxCapabilities(pinbased=default1 | (default1 | PinBased.EXTERNAL_INTERRUPT_EXITING)
                           << 32)
    vcpu = ready_vcpu(memory, caps, PIN_BASED_VM_EXEC_CONTROL=PinBased.EXTERNAL_INTERRUPT_EXITING)
    _valid(7, vcpu.vmlaunch)
    vcpu.vmwrite(Field.PIN_BASED_VM_EXEC_CONTROL, default1 | PinBased.EXTERNAL_INTERRUPT_EXITING)
    assert vcpu.vmlaunch() is None


def test_the_default_capabilities_report_what_the_model_implements():
    caps = VmxCapabilities()
    assert caps.revision_id == 1 and caps.preemption_timer_rate == 5
    assert caps.basic >> 32 & 0x1FFF == 0x1000 and caps.basic >> 50 & 0xF == 6
    assert caps.pinbased == (PinBased.EXTERNAL_INTERRUPT_EXITING | PinBased.PREEMPTION_TIMER
                             | PinBased.PROCESS_POSTED_INTERRUPTS) << 32
