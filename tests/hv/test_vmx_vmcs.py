"""VMCS field encodings (SDM Vol. 3C §25.11.2, Appendix B) and VMREAD/VMWRITE width rules."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fastpath.errors import VmFailValid
from fastpath.hv.vmx import Encoding, Field, FieldType, FieldWidth, Vmcs, VmInstructionError

# SDM Appendix B encodings of the fields the model uses, with their width and type as the
# appendix's tables group them.
SDM_FIELDS = {
    "VIRTUAL_PROCESSOR_ID": (0x0000, FieldWidth.BITS16, FieldType.CONTROL),
    "POSTED_INTR_NV": (0x0002, FieldWidth.BITS16, FieldType.CONTROL),
    "GUEST_INTR_STATUS": (0x0810, FieldWidth.BITS16, FieldType.GUEST_STATE),
    "IO_BITMAP_A": (0x2000, FieldWidth.BITS64, FieldType.CONTROL),
    "IO_BITMAP_B": (0x2002, FieldWidth.BITS64, FieldType.CONTROL),
    "MSR_BITMAP": (0x2004, FieldWidth.BITS64, FieldType.CONTROL),
    "VIRTUAL_APIC_PAGE_ADDR": (0x2012, FieldWidth.BITS64, FieldType.CONTROL),
    "POSTED_INTR_DESC_ADDR": (0x2016, FieldWidth.BITS64, FieldType.CONTROL),
    "EPT_POINTER": (0x201A, FieldWidth.BITS64, FieldType.CONTROL),
    "GUEST_PHYSICAL_ADDRESS": (0x2400, FieldWidth.BITS64, FieldType.EXIT_INFORMATION),
    "VMCS_LINK_POINTER": (0x2800, FieldWidth.BITS64, FieldType.GUEST_STATE),
    "PIN_BASED_VM_EXEC_CONTROL": (0x4000, FieldWidth.BITS32, FieldType.CONTROL),
    "CPU_BASED_VM_EXEC_CONTROL": (0x4002, FieldWidth.BITS32, FieldType.CONTROL),
    "VM_EXIT_CONTROLS": (0x400C, FieldWidth.BITS32, FieldType.CONTROL),
    "VM_ENTRY_CONTROLS": (0x4012, FieldWidth.BITS32, FieldType.CONTROL),
    "VM_ENTRY_INTR_INFO_FIELD": (0x4016, FieldWidth.BITS32, FieldType.CONTROL),
    "VM_ENTRY_EXCEPTION_ERROR_CODE": (0x4018, FieldWidth.BITS32, FieldType.CONTROL),
    "VM_ENTRY_INSTRUCTION_LEN": (0x401A, FieldWidth.BITS32, FieldType.CONTROL),
    "SECONDARY_VM_EXEC_CONTROL": (0x401E, FieldWidth.BITS32, FieldType.CONTROL),
    "VM_INSTRUCTION_ERROR": (0x4400, FieldWidth.BITS32, FieldType.EXIT_INFORMATION),
    "VM_EXIT_REASON": (0x4402, FieldWidth.BITS32, FieldType.EXIT_INFORMATION),
    "VM_EXIT_INTR_INFO": (0x4404, FieldWidth.BITS32, FieldType.EXIT_INFORMATION),
    "VM_EXIT_INSTRUCTION_LEN": (0x440C, FieldWidth.BITS32, FieldType.EXIT_INFORMATION),
    "VMX_INSTRUCTION_INFO": (0x440E, FieldWidth.BITS32, FieldType.EXIT_INFORMATION),
    "GUEST_INTERRUPTIBILITY_INFO": (0x4824, FieldWidth.BITS32, FieldType.GUEST_STATE),
    "VMX_PREEMPTION_TIMER_VALUE": (0x482E, FieldWidth.BITS32, FieldType.GUEST_STATE),
    "CR0_GUEST_HOST_MASK": (0x6000, FieldWidth.NATURAL, FieldType.CONTROL),
    "CR4_GUEST_HOST_MASK": (0x6002, FieldWidth.NATURAL, FieldType.CONTROL),
    "CR0_READ_SHADOW": (0x6004, FieldWidth.NATURAL, FieldType.CONTROL),
    "CR4_READ_SHADOW": (0x6006, FieldWidth.NATURAL, FieldType.CONTROL),
    "EXIT_QUALIFICATION": (0x6400, FieldWidth.NATURAL, FieldType.EXIT_INFORMATION),
    "GUEST_LINEAR_ADDRESS": (0x640A, FieldWidth.NATURAL, FieldType.EXIT_INFORMATION),
    "GUEST_CR0": (0x6800, FieldWidth.NATURAL, FieldType.GUEST_STATE),
    "GUEST_CR3": (0x6802, FieldWidth.NATURAL, FieldType.GUEST_STATE),
    "GUEST_CR4": (0x6804, FieldWidth.NATURAL, FieldType.GUEST_STATE),
    "GUEST_RSP": (0x681C, FieldWidth.NATURAL, FieldType.GUEST_STATE),
    "GUEST_RIP": (0x681E, FieldWidth.NATURAL, FieldType.GUEST_STATE),
    "GUEST_RFLAGS": (0x6820, FieldWidth.NATURAL, FieldType.GUEST_STATE),
    "HOST_CR0": (0x6C00, FieldWidth.NATURAL, FieldType.HOST_STATE),
    "HOST_CR3": (0x6C02, FieldWidth.NATURAL, FieldType.HOST_STATE),
    "HOST_CR4": (0x6C04, FieldWidth.NATURAL, FieldType.HOST_STATE),
    "HOST_RSP": (0x6C14, FieldWidth.NATURAL, FieldType.HOST_STATE),
    "HOST_RIP": (0x6C16, FieldWidth.NATURAL, FieldType.HOST_STATE),
}


def test_every_model_field_has_its_sdm_encoding_width_and_type():
    assert {f.name for f in Field} == set(SDM_FIELDS)
    for name, (encoding, width, kind) in SDM_FIELDS.items():
        field = Field[name]
        assert field == encoding
        assert field.encoding == Encoding(False, field.encoding.index, kind, width)


def test_encoding_bits_decode_as_table_25_21_lays_them_out():
    # GUEST_INTERRUPTIBILITY_INFO 0x4824: width 2 (32-bit), type 2 (guest), index 0x12.
    assert Encoding.decode(0x4824) == Encoding(False, 0x12, FieldType.GUEST_STATE,
                                               FieldWidth.BITS32)
    # The high half of EPT_POINTER: access type 1.
    assert Encoding.decode(0x201B) == Encoding(True, 0xD, FieldType.CONTROL, FieldWidth.BITS64)
    assert Encoding(True, 0xD, FieldType.CONTROL, FieldWidth.BITS64).encode() == 0x201B


@pytest.mark.parametrize("value", [1 << 12, 1 << 15, 1 << 31, 1 << 32, -1])
def test_reserved_encoding_bits_are_refused(value):
    with pytest.raises(ValueError):
        Encoding.decode(0x4002 | value if value > 0 else value)


@given(st.integers(0, 0x7FFF).filter(lambda v: not v & 0x1000))
def test_decode_and_encode_round_trip(value):
    assert Encoding.decode(value).encode() == value


def _fails(number, call, *args):
    with pytest.raises(VmFailValid) as raised:
        call(*args)
    assert raised.value.number == number


def test_writes_keep_the_bits_the_field_holds():
    vmcs = Vmcs()
    vmcs.write(Field.VIRTUAL_PROCESSOR_ID, 0x1_2345)
    assert vmcs.read(Field.VIRTUAL_PROCESSOR_ID) == 0x2345
    vmcs.write(Field.PIN_BASED_VM_EXEC_CONTROL, 0xAB_CDEF_0123)
    assert vmcs.read(Field.PIN_BASED_VM_EXEC_CONTROL) == 0xCDEF_0123
    vmcs.write(Field.EPT_POINTER, 0xFEDC_BA98_7654_3210)
    assert vmcs.read(Field.EPT_POINTER) == 0xFEDC_BA98_7654_3210
    vmcs.write(Field.GUEST_RIP, 0xFFFF_FFFF_FFFF_FFF0)
    assert vmcs.read(Field.GUEST_RIP) == 0xFFFF_FFFF_FFFF_FFF0


def test_high_access_reads_and_writes_bits_63_32_of_a_64_bit_field():
    vmcs = Vmcs()
    vmcs.write(Field.IO_BITMAP_A, 0x1111_2222_3333_4444)
    assert vmcs.read(Field.IO_BITMAP_A + 1) == 0x1111_2222
    vmcs.write(Field.IO_BITMAP_A + 1, 0xFFFF_FFFF_AAAA_BBBB)  # only the low 32 bits are used
    assert vmcs.read(Field.IO_BITMAP_A) == 0xAAAA_BBBB_3333_4444


@pytest.mark.parametrize("field", [Field.VIRTUAL_PROCESSOR_ID, Field.VM_EXIT_CONTROLS,
                                   Field.GUEST_RIP])
def test_high_access_to_a_field_that_is_not_64_bit_is_unsupported(field):
    _fails(12, Vmcs().read, field + 1)
    _fails(12, Vmcs().write, field + 1, 0)


@pytest.mark.parametrize("encoding", [0x0004, 0x2006, 0x4826, 0x6C18, 0x1_4002, 0x5002])
def test_fields_the_model_does_not_have_are_unsupported(encoding):
    _fails(VmInstructionError.UNSUPPORTED_VMCS_COMPONENT, Vmcs().read, encoding)
    _fails(VmInstructionError.UNSUPPORTED_VMCS_COMPONENT, Vmcs().write, encoding, 0)


@pytest.mark.parametrize("field", [f for f in Field
                                   if f.encoding.type == FieldType.EXIT_INFORMATION])
def test_exit_information_fields_are_read_only_to_vmwrite(field):
    vmcs = Vmcs()
    _fails(VmInstructionError.VMWRITE_READ_ONLY_VMCS_COMPONENT, vmcs.write, field, 5)
    vmcs.store(field, 5)  # the processor writes them
    assert vmcs.read(field) == 5
