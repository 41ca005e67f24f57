"""The modelled Intel VMX: VMCS, the vCPU's VMX instructions, VM exits, and a workload driver.

A `Vcpu` over host physical memory runs the VMX instructions (VMXON, VMCLEAR, VMPTRLD,
VMREAD/VMWRITE, VMLAUNCH/VMRESUME, VMXOFF) with the SDM's VM-instruction errors, and a
documented subset of VM-entry checks (`fastpath.hv._vmx_entry`). A `GuestRunner` runs it over
a guest's event stream (an `EVENT_DTYPE` array), making VM exits where the controls say, with
their exit reasons and qualifications, and calling handlers in root operation; with posted
interrupts and virtual-interrupt delivery, interrupts reach the guest without an exit
(`post_interrupt`, `VirtualApic`). `VmxCounters`
counts exits by reason; a `CostModel` turns the counts into modelled time. Memory events go
through an EPT `translate(eptp, gpa, access)` callable with the contract of
`fastpath.hv.ept.walk`, which raises `fastpath.errors.EptViolation` / `EptMisconfig`; with the
walker over host memory `mem` the two plug together as

    runner = GuestRunner(Vcpu(mem, eptp_valid=...),
                         translate=lambda eptp, gpa, access: ept.walk(mem, eptp, gpa, access))

where `eptp_valid` is the EPT side's EPTP check (spec hv §1.1), made at VM entry.

Sources: Intel SDM Vol. 3C chapters 25-31, and the project's spec `hv` §2 (with §1.5-1.6).
"""

from fastpath.hv._vcpu import NO_CURRENT_VMCS, Vcpu, VcpuMode
from fastpath.hv._vmcs import Encoding, Field, FieldType, FieldWidth, Vmcs, VmInstructionError
from fastpath.hv._vmx_bitmaps import (
    BITMAP_SIZE,
    io_exits,
    msr_exits,
    set_io_exiting,
    set_msr_exiting,
)
from fastpath.hv._vmx_controls import (
    EntryControls,
    ExitControls,
    PinBased,
    ProcBased,
    Secondary,
    VmxCapabilities,
)
from fastpath.hv._vmx_cost import COST_SOURCES, DEFAULT_HANDLER_CYCLES, CostModel
from fastpath.hv._vmx_entry import NO_LINK_POINTER
from fastpath.hv._vmx_events import EVENT_DTYPE, EventFlag, EventKind, event, events
from fastpath.hv._vmx_exits import (
    ENTRY_FAILURE,
    EPT_GLA_TRANSLATED,
    EPT_GLA_VALID,
    INTERRUPTION_INFO_VALID,
    CrAccess,
    EntryFailure,
    Exit,
    ExitReason,
    InterruptionType,
    cr_access_qualification,
    interruption_info,
    io_qualification,
    string_io_instruction_info,
)
from fastpath.hv._vmx_nonroot import GuestProgress, Translate
from fastpath.hv._vmx_posted import (
    PI_DESCRIPTOR_DTYPE,
    PI_ON,
    PI_SN,
    X2APIC_EOI_MSR,
    VirtualApic,
    pi_control,
    post_interrupt,
)
from fastpath.hv._vmx_ready import VMCS_REGION, VMXON_REGION, ready_vcpu
from fastpath.hv._vmx_workload import GuestRunner, Handler, VmxCounters, skip_instruction

__all__ = [
    "Vcpu",
    "ready_vcpu",
    "VMXON_REGION",
    "VMCS_REGION",
    "VcpuMode",
    "NO_CURRENT_VMCS",
    "NO_LINK_POINTER",
    "Vmcs",
    "Field",
    "Encoding",
    "FieldType",
    "FieldWidth",
    "VmInstructionError",
    "VmxCapabilities",
    "PinBased",
    "ProcBased",
    "Secondary",
    "ExitControls",
    "EntryControls",
    "ExitReason",
    "Exit",
    "ENTRY_FAILURE",
    "EntryFailure",
    "InterruptionType",
    "INTERRUPTION_INFO_VALID",
    "interruption_info",
    "io_qualification",
    "CrAccess",
    "cr_access_qualification",
    "string_io_instruction_info",
    "EPT_GLA_VALID",
    "EPT_GLA_TRANSLATED",
    "BITMAP_SIZE",
    "io_exits",
    "msr_exits",
    "set_io_exiting",
    "set_msr_exiting",
    "EVENT_DTYPE",
    "EventKind",
    "EventFlag",
    "event",
    "events",
    "GuestRunner",
    "GuestProgress",
    "Handler",
    "Translate",
    "VmxCounters",
    "skip_instruction",
    "PI_DESCRIPTOR_DTYPE",
    "PI_ON",
    "PI_SN",
    "X2APIC_EOI_MSR",
    "pi_control",
    "post_interrupt",
    "VirtualApic",
    "CostModel",
    "DEFAULT_HANDLER_CYCLES",
    "COST_SOURCES",
]
