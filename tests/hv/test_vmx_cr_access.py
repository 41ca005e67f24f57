"""Control-register access exits (SDM Vol. 3C §26.1.3, §28.2.1 Table 28-3; spec hv §2.4 and
§8 item 6): when MOV to/from CR, CLTS and LMSW exit, and their qualification bit for bit."""

import pytest

from fastpath.hv.vmx import (
    CrAccess,
    EventKind,
    ExitReason,
    Field,
    GuestRunner,
    ProcBased,
    cr_access_qualification,
    event,
    events,
    ready_vcpu,
    skip_instruction,
)

RBX, R15 = 3, 15
CR0, CR4 = 0x8000_0021, 0x2020  # ready_vcpu's guest: PG NE PE; VMXE PAE


def _run(record, **fields):
    vcpu = ready_vcpu(bytearray(0x10000), **fields)
    seen = []

    def emulate(vcpu, exit_):
        seen.append(exit_)
        skip_instruction(vcpu, exit_)

    GuestRunner(vcpu, handlers={ExitReason.CR_ACCESS: emulate}).run(events(record))
    return seen, vcpu


def test_qualification_layout():
    assert cr_access_qualification(8, CrAccess.MOV_FROM_CR, R15) == 0x0F18
    assert cr_access_qualification(0, CrAccess.LMSW, lmsw_memory=True,
                                   lmsw_source=0xFFFF_000F) == 0x000F_0070


@pytest.mark.parametrize("record, fields, qualification, length", [
    # MOV CR0, RBX clearing a host-owned PE that the shadow shows set.
    (event(EventKind.MOV_TO_CR, 0, value=CR0 & ~1, reg=RBX),
     {"CR0_GUEST_HOST_MASK": 1, "CR0_READ_SHADOW": 1}, 0x300, 3),
    # MOV CR4, RBX setting VMXE, host-owned and clear in the shadow.
    (event(EventKind.MOV_TO_CR, 4, value=0x2020, reg=RBX),
     {"CR4_GUEST_HOST_MASK": 0x2000}, 0x304, 3),
    (event(EventKind.MOV_TO_CR, 3, value=0x5000, reg=RBX),
     {"CPU_BASED_VM_EXEC_CONTROL": ProcBased.CR3_LOAD_EXITING}, 0x303, 3),
    (event(EventKind.MOV_FROM_CR, 3, reg=RBX),
     {"CPU_BASED_VM_EXEC_CONTROL": ProcBased.CR3_STORE_EXITING}, 0x313, 3),
    # CR8 is CR number 8 in bits 3:0 (spec hv §8 item 6); REX makes the instruction 4 bytes.
    (event(EventKind.MOV_TO_CR, 8, value=2, reg=0),
     {"CPU_BASED_VM_EXEC_CONTROL": ProcBased.CR8_LOAD_EXITING}, 0x008, 4),
    (event(EventKind.MOV_FROM_CR, 8, reg=R15),
     {"CPU_BASED_VM_EXEC_CONTROL": ProcBased.CR8_STORE_EXITING}, 0xF18, 4),
    (event(EventKind.CLTS), {"CR0_GUEST_HOST_MASK": 8, "CR0_READ_SHADOW": 8}, 0x20, 2),
    # LMSW setting PE, owned and clear in the shadow; then changing an owned TS.
    (event(EventKind.LMSW, value=0x1), {"CR0_GUEST_HOST_MASK": 1}, 0x0001_0030, 3),
    (event(EventKind.LMSW, value=0x9, gla=0x7000), {"CR0_GUEST_HOST_MASK": 8},
     0x0009_0070, 3),
])
def test_cr_access_exits_and_qualifications(record, fields, qualification, length):
    seen, vcpu = _run(record, **fields)
    (exit_,) = seen
    assert (exit_.reason, exit_.qualification, exit_.instruction_length) == (
        ExitReason.CR_ACCESS, qualification, length)
    assert vcpu.vmcs[Field.EXIT_QUALIFICATION] == qualification


def test_lmsw_with_a_memory_operand_reports_its_linear_address():
    seen, _ = _run(event(EventKind.LMSW, value=0x9, gla=0x7000), CR0_GUEST_HOST_MASK=8)
    assert seen[0].guest_linear_address == 0x7000


@pytest.mark.parametrize("record, fields, field, value", [
    # Guest-owned bits change; the host-owned PE keeps its value.
    (event(EventKind.MOV_TO_CR, 0, value=0x8000_0030), {"CR0_GUEST_HOST_MASK": 1,
                                                         "CR0_READ_SHADOW": 0},
     Field.GUEST_CR0, 0x8000_0031),
    (event(EventKind.MOV_TO_CR, 4, value=0x20A0), {"CR4_GUEST_HOST_MASK": 0x2000,
                                                   "CR4_READ_SHADOW": 0x2000},
     Field.GUEST_CR4, 0x20A0),
    (event(EventKind.MOV_TO_CR, 3, value=0x5000), {}, Field.GUEST_CR3, 0x5000),
    (event(EventKind.MOV_FROM_CR, 0), {"CR0_GUEST_HOST_MASK": 0xFFFF_FFFF},
     Field.GUEST_CR0, CR0),
    (event(EventKind.MOV_FROM_CR, 3), {}, Field.GUEST_CR3, 0),
    (event(EventKind.CLTS), {"GUEST_CR0": CR0 | 8}, Field.GUEST_CR0, CR0),
    (event(EventKind.CLTS), {"GUEST_CR0": CR0 | 8, "CR0_GUEST_HOST_MASK": 8},
     Field.GUEST_CR0, CR0 | 8),  # owned, shadow clear: no exit, and TS stays
    (event(EventKind.LMSW, value=0x0), {}, Field.GUEST_CR0, CR0),  # LMSW cannot clear PE
    (event(EventKind.LMSW, value=0xF), {"CR0_GUEST_HOST_MASK": 0xE, "CR0_READ_SHADOW": 0xE},
     Field.GUEST_CR0, CR0),
])
def test_cr_accesses_that_do_not_exit(record, fields, field, value):
    seen, vcpu = _run(record, **fields)
    assert seen == []
    assert vcpu.vmcs[field] == value
