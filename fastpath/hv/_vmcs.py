"""The VMCS: its field encodings and widths, and what VMREAD and VMWRITE do to it.

A field encoding is a 32-bit value (Intel SDM Vol. 3C §25.11.2, Table 25-21; spec hv §2.1):
bit 0 is the access type (1 = the high 32 bits of a 64-bit field), bits 9:1 the index, bits
11:10 the type (control, read-only exit information, guest state, host state), bit 12 is
reserved, bits 14:13 the width (16-bit, 64-bit, 32-bit, natural) and bits 31:15 are reserved.
`Field` names the fields the model uses, with their encodings from SDM Appendix B (Linux
`enum vmcs_field`); a VMCS supports exactly those and the high halves of its 64-bit ones.
"""

from __future__ import annotations

from enum import IntEnum
from typing import NamedTuple

from fastpath.errors import VmFailValid

__all__ = ["FieldWidth", "FieldType", "Encoding", "Field", "VmInstructionError", "Vmcs"]


class FieldWidth(IntEnum):
    """Encoding bits 14:13. The model is a 64-bit processor: natural-width fields hold 64 bits."""

    BITS16 = 0
    BITS64 = 1
    BITS32 = 2
    NATURAL = 3

    @property
    def bits(self) -> int:
        """How many bits a field of this width holds."""
        return (16, 64, 32, 64)[self]


class FieldType(IntEnum):
    """Encoding bits 11:10: which area of the VMCS a field is in."""

    CONTROL = 0
    EXIT_INFORMATION = 1  # "VM-exit information", read-only to VMWRITE (§25.9)
    GUEST_STATE = 2
    HOST_STATE = 3


_ACCESS_HIGH = 0x1
_INDEX_SHIFT, _INDEX_MASK = 1, 0x1FF
_TYPE_SHIFT, _WIDTH_SHIFT = 10, 13
_RESERVED = 0xFFFF_FFFF_FFFF_8000 | 1 << 12  # bits 63:15 and 12 (a 64-bit register operand)


class Encoding(NamedTuple):
    """A field encoding taken apart (§25.11.2)."""

    high: bool
    index: int
    type: FieldType
    width: FieldWidth

    @classmethod
    def decode(cls, value: int) -> Encoding:
        """Split an encoding into its parts; ValueError if a reserved bit is set."""
        if value < 0 or value & _RESERVED:
            raise ValueError(f"{value:#x} sets reserved bits of a VMCS field encoding")
        return cls(bool(value & _ACCESS_HIGH), value >> _INDEX_SHIFT & _INDEX_MASK,
                   FieldType(value >> _TYPE_SHIFT & 3), FieldWidth(value >> _WIDTH_SHIFT & 3))

    def encode(self) -> int:
        """The 32-bit encoding of these parts."""
        if not 0 <= self.index <= _INDEX_MASK:
            raise ValueError(f"index {self.index} does not fit in 9 bits")
        return (int(self.high) | self.index << _INDEX_SHIFT | self.type << _TYPE_SHIFT
                | self.width << _WIDTH_SHIFT)


class Field(IntEnum):
    """The VMCS fields the model uses, by their full encodings (SDM Appendix B)."""

    # 16-bit control
    VIRTUAL_PROCESSOR_ID = 0x0000
    POSTED_INTR_NV = 0x0002
    # 16-bit guest state
    GUEST_INTR_STATUS = 0x0810
    # 64-bit control
    IO_BITMAP_A = 0x2000
    IO_BITMAP_B = 0x2002
    MSR_BITMAP = 0x2004
    VIRTUAL_APIC_PAGE_ADDR = 0x2012
    POSTED_INTR_DESC_ADDR = 0x2016
    EPT_POINTER = 0x201A
    # 64-bit read-only data
    GUEST_PHYSICAL_ADDRESS = 0x2400
    # 64-bit guest state
    VMCS_LINK_POINTER = 0x2800
    # 32-bit control
    PIN_BASED_VM_EXEC_CONTROL = 0x4000
    CPU_BASED_VM_EXEC_CONTROL = 0x4002
    VM_EXIT_CONTROLS = 0x400C
    VM_ENTRY_CONTROLS = 0x4012
    VM_ENTRY_INTR_INFO_FIELD = 0x4016
    VM_ENTRY_EXCEPTION_ERROR_CODE = 0x4018
    VM_ENTRY_INSTRUCTION_LEN = 0x401A
    SECONDARY_VM_EXEC_CONTROL = 0x401E
    # 32-bit read-only data
    VM_INSTRUCTION_ERROR = 0x4400
    VM_EXIT_REASON = 0x4402
    VM_EXIT_INTR_INFO = 0x4404
    VM_EXIT_INSTRUCTION_LEN = 0x440C
    VMX_INSTRUCTION_INFO = 0x440E
    # 32-bit guest state
    GUEST_INTERRUPTIBILITY_INFO = 0x4824
    VMX_PREEMPTION_TIMER_VALUE = 0x482E
    # natural-width control
    CR0_GUEST_HOST_MASK = 0x6000
    CR4_GUEST_HOST_MASK = 0x6002
    CR0_READ_SHADOW = 0x6004
    CR4_READ_SHADOW = 0x6006
    # natural-width read-only data
    EXIT_QUALIFICATION = 0x6400
    GUEST_LINEAR_ADDRESS = 0x640A
    # natural-width guest state
    GUEST_CR0 = 0x6800
    GUEST_CR3 = 0x6802
    GUEST_CR4 = 0x6804
    GUEST_RSP = 0x681C
    GUEST_RIP = 0x681E
    GUEST_RFLAGS = 0x6820
    # natural-width host state
    HOST_CR0 = 0x6C00
    HOST_CR3 = 0x6C02
    HOST_CR4 = 0x6C04
    HOST_RSP = 0x6C14
    HOST_RIP = 0x6C16

    @property
    def encoding(self) -> Encoding:
        """This field's encoding, decoded."""
        return Encoding.decode(self.value)


class VmInstructionError(IntEnum):
    """VM-instruction error numbers (SDM Vol. 3C §31.4, Table 31-1; Linux
    `enum vm_instruction_error_number`). The model raises those its docstrings name."""

    VMCALL_IN_VMX_ROOT_OPERATION = 1
    VMCLEAR_INVALID_ADDRESS = 2
    VMCLEAR_VMXON_POINTER = 3
    VMLAUNCH_NONCLEAR_VMCS = 4
    VMRESUME_NONLAUNCHED_VMCS = 5
    VMRESUME_AFTER_VMXOFF = 6
    ENTRY_INVALID_CONTROL_FIELD = 7
    ENTRY_INVALID_HOST_STATE_FIELD = 8
    VMPTRLD_INVALID_ADDRESS = 9
    VMPTRLD_VMXON_POINTER = 10
    VMPTRLD_INCORRECT_VMCS_REVISION_ID = 11
    UNSUPPORTED_VMCS_COMPONENT = 12
    VMWRITE_READ_ONLY_VMCS_COMPONENT = 13
    VMXON_IN_VMX_ROOT_OPERATION = 15
    ENTRY_INVALID_EXECUTIVE_VMCS_POINTER = 16
    ENTRY_NONLAUNCHED_EXECUTIVE_VMCS = 17
    ENTRY_EXECUTIVE_VMCS_POINTER_NOT_VMXON_POINTER = 18
    VMCALL_NONCLEAR_VMCS = 19
    VMCALL_INVALID_VM_EXIT_CONTROL_FIELDS = 20
    VMCALL_INCORRECT_MSEG_REVISION_ID = 22
    VMXOFF_UNDER_DUAL_MONITOR_TREATMENT_OF_SMIS_AND_SMM = 23
    VMCALL_INVALID_SMM_MONITOR_FEATURES = 24
    ENTRY_INVALID_VM_EXECUTION_CONTROL_FIELDS_IN_EXECUTIVE_VMCS = 25
    ENTRY_EVENTS_BLOCKED_BY_MOV_SS = 26
    INVALID_OPERAND_TO_INVEPT_INVVPID = 28


def fail_valid(number: VmInstructionError) -> VmFailValid:
    """The VmFailValid exception for a VM-instruction error."""
    return VmFailValid(f"VM-instruction error {int(number)} ({number.name})", int(number))


_MASK64 = (1 << 64) - 1
_LOW32 = 0xFFFF_FFFF
# Each field's value mask, decoded once: stores happen on every VM exit.
_VALUE_MASK = {field: (1 << field.encoding.width.bits) - 1 for field in Field}


class Vmcs:
    """One VMCS's contents, as the processor keeps them, and its launch state.

    `read` and `write` are VMREAD and VMWRITE once the instruction has found a current VMCS
    (the vCPU checks that, §31.3): an encoding with reserved bits set or naming a field the
    model does not support fails with error 12, a VMWRITE to a read-only exit-information
    field with error 13 (the model does not report "VMWRITE to any supported field" in
    IA32_VMX_MISC bit 29). A VMWRITE keeps the low bits of the value that the field holds
    (16 or 32); a high access (bit 0 = 1) reads or writes bits 63:32 of a 64-bit field only,
    and is unsupported for every other width. `store` is the processor's own write, which
    VM exits use to fill the read-only fields.
    """

    def __init__(self):
        self._values = dict.fromkeys(Field, 0)
        # §25.11.3: "clear" after VMCLEAR, "launched" after a successful VMLAUNCH.
        self.launched = False
        # The model's reading of error 6: a VMCS left launched (not VMCLEARed) across VMXOFF
        # and VMXON is no longer one VMRESUME can trust (§31.4, "VMRESUME after VMXOFF").
        self.stale = False
        # Whether the controls and host state passed VM entry's checks and no VMWRITE to a
        # control or host-state field came since: like processors that cache the VMCS,
        # entry skips those checks then (Linux commit 804939ea200d: they "skip consistency
        # checks if the relevant fields have not changed since the last successful
        # VM-Entry"). Guest state is checked at every entry.
        self.checked = False

    def __getitem__(self, field: Field) -> int:
        return self._values[field]

    @staticmethod
    def _field(encoding: int) -> tuple[Field, bool]:
        try:
            parts = Encoding.decode(encoding)
            field = Field(encoding & ~_ACCESS_HIGH)
        except ValueError:
            raise fail_valid(VmInstructionError.UNSUPPORTED_VMCS_COMPONENT) from None
        if parts.high and parts.width != FieldWidth.BITS64:
            raise fail_valid(VmInstructionError.UNSUPPORTED_VMCS_COMPONENT)
        return field, parts.high

    def read(self, encoding: int) -> int:
        """VMREAD: the field's value, zero-extended to 64 bits."""
        field, high = self._field(encoding)
        value = self._values[field]
        return value >> 32 if high else value

    def write(self, encoding: int, value: int) -> None:
        """VMWRITE of a 64-bit register value."""
        if not 0 <= value <= _MASK64:
            raise ValueError(f"{value:#x} is not a 64-bit register value")
        field, high = self._field(encoding)
        if field.encoding.type == FieldType.EXIT_INFORMATION:
            raise fail_valid(VmInstructionError.VMWRITE_READ_ONLY_VMCS_COMPONENT)
        if high:
            value = (value & _LOW32) << 32 | self._values[field] & _LOW32
        self.store(field, value)
        if field.encoding.type in (FieldType.CONTROL, FieldType.HOST_STATE):
            self.checked = False

    def store(self, field: Field, value: int) -> None:
        """The processor's write of a field, any type, truncated to its width."""
        self._values[field] = value & _VALUE_MASK[field]
