"""VM exits: basic exit reasons, the layouts of the exit-information fields, and the record a
VM exit hands to the VMM (SDM Vol. 3C §25.9, §28.2, Appendix C; spec hv §2.3, §2.4)."""

from __future__ import annotations

from enum import IntEnum
from typing import NamedTuple

from fastpath._core.paging import WalkFlags

__all__ = ["ExitReason", "ENTRY_FAILURE", "EntryFailure", "InterruptionType",
           "INTERRUPTION_INFO_VALID", "interruption_info", "io_qualification", "CrAccess",
           "cr_access_qualification",
           "string_io_instruction_info", "EPT_GLA_VALID", "EPT_GLA_TRANSLATED", "Exit"]


class ExitReason(IntEnum):
    """Basic exit reasons: bits 15:0 of VM_EXIT_REASON (SDM Appendix C; Linux uapi vmx.h)."""

    EXCEPTION_NMI = 0
    EXTERNAL_INTERRUPT = 1
    TRIPLE_FAULT = 2
    INIT_SIGNAL = 3
    INTERRUPT_WINDOW = 7
    NMI_WINDOW = 8
    TASK_SWITCH = 9
    CPUID = 10
    HLT = 12
    INVD = 13
    INVLPG = 14
    RDPMC = 15
    RDTSC = 16
    VMCALL = 18
    VMCLEAR = 19
    VMLAUNCH = 20
    VMPTRLD = 21
    VMPTRST = 22
    VMREAD = 23
    VMRESUME = 24
    VMWRITE = 25
    VMOFF = 26
    VMON = 27
    CR_ACCESS = 28
    DR_ACCESS = 29
    IO_INSTRUCTION = 30
    MSR_READ = 31
    MSR_WRITE = 32
    INVALID_STATE = 33
    MSR_LOAD_FAIL = 34
    MWAIT = 36
    MONITOR_TRAP_FLAG = 37
    MONITOR = 39
    PAUSE = 40
    MCE_DURING_VMENTRY = 41
    TPR_BELOW_THRESHOLD = 43
    APIC_ACCESS = 44
    EOI_INDUCED = 45
    GDTR_IDTR = 46
    LDTR_TR = 47
    EPT_VIOLATION = 48
    EPT_MISCONFIG = 49
    INVEPT = 50
    RDTSCP = 51
    PREEMPTION_TIMER = 52
    INVVPID = 53
    WBINVD = 54
    XSETBV = 55
    APIC_WRITE = 56
    RDRAND = 57
    INVPCID = 58
    VMFUNC = 59
    ENCLS = 60
    RDSEED = 61
    PML_FULL = 62
    XSAVES = 63
    XRSTORS = 64
    UMWAIT = 67
    TPAUSE = 68
    TDCALL = 77


# VM_EXIT_REASON bit 31: the exit is a VM-entry failure (§28.8; VMX_EXIT_REASONS_FAILED_VMENTRY).
ENTRY_FAILURE = 1 << 31


class EntryFailure(IntEnum):
    """The exit qualification of a VM-entry failure on guest state (§28.8; spec hv §2.5)."""

    DEFAULT = 0
    PDPTE = 2
    VMCS_LINK_POINTER = 4


class InterruptionType(IntEnum):
    """VM-exit interruption information bits 10:8 (§25.9.2, Table 25-19)."""

    EXTERNAL_INTERRUPT = 0
    NMI = 2
    HARDWARE_EXCEPTION = 3
    SOFTWARE_INTERRUPT = 4
    PRIVILEGED_SOFTWARE_EXCEPTION = 5
    SOFTWARE_EXCEPTION = 6


INTERRUPTION_INFO_VALID = 1 << 31
_ERROR_CODE_VALID = 1 << 11


def interruption_info(vector: int, kind: InterruptionType, error_code_valid: bool = False) -> int:
    """VM_EXIT_INTR_INFO for an event, or VM_ENTRY_INTR_INFO_FIELD for one to inject (the
    same layout, §25.8.3, §25.9.2; Linux INTR_INFO_*): vector in bits 7:0, type in 10:8,
    error code valid (or to deliver) in bit 11, valid in bit 31."""
    if not 0 <= vector <= 0xFF:
        raise ValueError(f"vector {vector} does not fit in 8 bits")
    return (vector | int(kind) << 8 | (_ERROR_CODE_VALID if error_code_valid else 0)
            | INTERRUPTION_INFO_VALID)


_IO_SIZES = {1: 0, 2: 1, 4: 3}


def io_qualification(port: int, size: int, is_in: bool, string: bool = False, rep: bool = False,
                     immediate: bool = False) -> int:
    """The exit qualification of an I/O instruction (§28.2.1, Table 28-5; spec hv §2.4):
    bits 2:0 size - 1 (0, 1 or 3), bit 3 direction (1 = IN), bit 4 string (INS/OUTS), bit 5
    REP prefix, bit 6 operand encoding (1 = immediate port), bits 31:16 the port."""
    if size not in _IO_SIZES or not 0 <= port <= 0xFFFF:
        raise ValueError(f"no I/O instruction accesses {size} bytes at port {port:#x}")
    return (_IO_SIZES[size] | is_in << 3 | string << 4 | rep << 5 | immediate << 6
            | port << 16)


class CrAccess(IntEnum):
    """Control-register access types: CR-access exit qualification bits 5:4 (§28.2.1,
    Table 28-3)."""

    MOV_TO_CR = 0
    MOV_FROM_CR = 1
    CLTS = 2
    LMSW = 3


def cr_access_qualification(cr: int, access: CrAccess, reg: int = 0,
                            lmsw_memory: bool = False, lmsw_source: int = 0) -> int:
    """The exit qualification of a control-register access (§28.2.1, Table 28-3; spec hv
    §2.4): bits 3:0 the CR number (4 bits, for CR8: spec hv §8 item 6), bits 5:4 the access
    type, bit 6 LMSW's operand type (1 = memory), bits 11:8 the general-purpose register,
    bits 31:16 LMSW's source data."""
    if not 0 <= cr <= 15 or not 0 <= reg <= 15:
        raise ValueError(f"CR{cr} and register {reg} must fit in 4 bits")
    return (cr | int(access) << 4 | lmsw_memory << 6 | reg << 8
            | (lmsw_source & 0xFFFF) << 16)


# VMX_INSTRUCTION_INFO for INS and OUTS (§28.2.5, Table 28-8): address size in bits 9:7 (2 =
# 64-bit, the model's guests run in IA-32e mode) and segment register in bits 17:15; INS
# always writes through ES (0), OUTS reads through DS (3) unless overridden.
_ADDRESS_SIZE_64 = 2 << 7
_SEGMENT_ES, _SEGMENT_DS = 0 << 15, 3 << 15


def string_io_instruction_info(is_in: bool) -> int:
    """VMX_INSTRUCTION_INFO for an INS (is_in) or OUTS with a 64-bit address and no override."""
    return _ADDRESS_SIZE_64 | (_SEGMENT_ES if is_in else _SEGMENT_DS)


# EPT-violation qualification bits the VMX side supplies (§28.2.1, Table 28-7; spec hv §1.5):
# bit 7, a guest linear address was involved (GUEST_LINEAR_ADDRESS is valid), and bit 8, the
# access was to the translated address rather than to a guest paging-structure entry. The
# walker's flags asking for them are those same bits (fastpath/_core/paging.pxd).
EPT_GLA_VALID = int(WalkFlags.WALK_GLA_VALID)
EPT_GLA_TRANSLATED = int(WalkFlags.WALK_GLA_TRANSLATED)


class Exit(NamedTuple):
    """A VM exit as the VMM sees it: the exit-information fields the processor wrote.

    `reason` is the basic exit reason and `entry_failure` bit 31 of VM_EXIT_REASON;
    `qualification`, `instruction_length`, `interruption_info` and `instruction_info` are
    EXIT_QUALIFICATION, VM_EXIT_INSTRUCTION_LEN, VM_EXIT_INTR_INFO and VMX_INSTRUCTION_INFO;
    `guest_physical_address` and `guest_linear_address` are None where the exit did not
    write those fields. `event` is the index in the workload's event stream of the event that
    caused it (-1 for an exit outside a workload, such as a VM-entry failure).
    """

    reason: ExitReason
    qualification: int = 0
    instruction_length: int = 0
    interruption_info: int = 0
    instruction_info: int = 0
    guest_physical_address: int | None = None
    guest_linear_address: int | None = None
    entry_failure: bool = False
    event: int = -1
