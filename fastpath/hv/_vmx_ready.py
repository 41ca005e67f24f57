"""A vCPU ready to enter a guest: what every program and test that runs a guest on the VMX
model sets up first."""

from __future__ import annotations

from fastpath.hv._vcpu import Vcpu
from fastpath.hv._vmcs import Field
from fastpath.hv._vmx_controls import ExitControls, VmxCapabilities
from fastpath.hv._vmx_entry import NO_LINK_POINTER

# Where ready_vcpu puts its VMXON region and its VMCS in host memory.
VMXON_REGION, VMCS_REGION = 0x1000, 0x2000


def ready_vcpu(memory, capabilities: VmxCapabilities | None = None, **fields: int) -> Vcpu:
    """A vCPU in VMX root operation over `memory` (VMXON region at VMXON_REGION, current VMCS
    at VMCS_REGION, both with the right revision identifier), its VMCS set to pass every
    entry check: a 64-bit host and a 64-bit paged guest with RFLAGS = 2. `fields` (by `Field`
    name) are written after those."""
    vcpu = Vcpu(memory, capabilities)
    revision = vcpu.capabilities.revision_id.to_bytes(4, "little")
    for region in (VMXON_REGION, VMCS_REGION):
        vcpu.memory[region:region + 4] = revision
    vcpu.vmxon(VMXON_REGION)
    vcpu.vmclear(VMCS_REGION)
    vcpu.vmptrld(VMCS_REGION)
    cr0, cr4 = 0x8000_0021, 0x2020  # PG | NE | PE; VMXE | PAE
    setup = {"VM_EXIT_CONTROLS": ExitControls.HOST_ADDRESS_SPACE_SIZE, "HOST_CR0": cr0,
             "HOST_CR4": cr4, "HOST_RIP": 0xFFFF_FFFF_8100_0000, "GUEST_CR0": cr0,
             "GUEST_CR4": cr4, "GUEST_RFLAGS": 2, "VMCS_LINK_POINTER": NO_LINK_POINTER}
    for name, value in {**setup, **fields}.items():
        vcpu.vmwrite(Field[name], int(value))
    return vcpu
