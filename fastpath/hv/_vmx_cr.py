"""Control-register accesses in VMX non-root operation (SDM Vol. 3C §26.1.3; spec hv §2.4).

CR0 and CR4 writes exit when they would change a host-owned bit (one set in the guest/host
mask) from what the read shadow shows; CLTS when TS is host-owned and set in the shadow;
LMSW, which cannot clear PE, when it would set a host-owned PE the shadow has clear or change
a host-owned MP, EM or TS. CR3 and CR8 loads and stores exit by their controls (the model has
no CR3-target values: CR3_TARGET_COUNT is 0). Reads of CR0 and CR4, and every access to CR2,
never exit. An access that does not exit changes only the guest-owned bits of CR0 and CR4,
and a CR3 load loads CR3; CR8 is the TPR, which the model does not keep.
"""

from __future__ import annotations

from fastpath.hv._vmcs import Field, Vmcs
from fastpath.hv._vmx_controls import ProcBased
from fastpath.hv._vmx_exits import CrAccess

__all__ = ["cr_access_exits", "write_cr"]

_CR_FIELDS = {0: (Field.GUEST_CR0, Field.CR0_GUEST_HOST_MASK, Field.CR0_READ_SHADOW),
              4: (Field.GUEST_CR4, Field.CR4_GUEST_HOST_MASK, Field.CR4_READ_SHADOW)}
_CR_EXITING = {(3, CrAccess.MOV_TO_CR): ProcBased.CR3_LOAD_EXITING,
               (3, CrAccess.MOV_FROM_CR): ProcBased.CR3_STORE_EXITING,
               (8, CrAccess.MOV_TO_CR): ProcBased.CR8_LOAD_EXITING,
               (8, CrAccess.MOV_FROM_CR): ProcBased.CR8_STORE_EXITING}
_CR0_TS, _LMSW_BITS = 1 << 3, 0xF  # LMSW loads CR0 bits 3:0 (PE, MP, EM, TS)


def cr_access_exits(vmcs: Vmcs, cr: int, access: CrAccess, value: int) -> bool:
    """Whether an access to CR`cr` (for CLTS and LMSW, 0) with source `value` exits."""
    if (cr, access) in _CR_EXITING:
        return bool(vmcs[Field.CPU_BASED_VM_EXEC_CONTROL] & _CR_EXITING[cr, access])
    if access == CrAccess.MOV_FROM_CR or cr not in _CR_FIELDS:
        return False
    _, mask_field, shadow_field = _CR_FIELDS[cr]
    mask, shadow = vmcs[mask_field], vmcs[shadow_field]
    if access == CrAccess.CLTS:
        return bool(mask & shadow & _CR0_TS)
    if access == CrAccess.LMSW:
        # LMSW cannot clear PE: it exits on setting an owned PE the shadow has clear, or on
        # changing an owned MP, EM or TS.
        return bool(mask & 1 and not shadow & 1 and value & 1
                    or (value ^ shadow) & mask & 0xE)
    return bool((value ^ shadow) & mask)


def write_cr(vmcs: Vmcs, cr: int, access: CrAccess, value: int) -> None:
    """Carry out an access that did not exit on the guest state."""
    if access == CrAccess.MOV_FROM_CR:
        return
    if cr == 3:
        vmcs.store(Field.GUEST_CR3, value)
    if cr not in _CR_FIELDS:
        return
    field, mask_field, _ = _CR_FIELDS[cr]
    old, owned = vmcs[field], vmcs[mask_field]
    if access == CrAccess.CLTS:
        new = old & ~_CR0_TS
    elif access == CrAccess.LMSW:
        new = old & ~(_LMSW_BITS & ~1) | value & _LMSW_BITS | old & 1
    else:
        new = value
    vmcs.store(field, old & owned | new & ~owned)
