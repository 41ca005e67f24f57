"""The one format of a guest's instruction and access stream: a numpy record array of events.

Every workload that runs a modelled guest (this model's tests, an emulated NIC, virtio kicks)
describes what the guest does as an array of `EVENT_DTYPE`, one record per instruction or
event, in program order. Fields (little-endian, 32 bytes a record):

  address  u8  the I/O port (IO), MSR index (RDMSR, WRMSR), guest-physical address (READ,
               WRITE, FETCH), interrupt vector (EXTINT, POST) or control register number
               (MOV_TO_CR, MOV_FROM_CR); 0 otherwise
  value    u8  the data written (IO out, WRMSR, WRITE, MOV_TO_CR, LMSW's source); guest
               cycles for RUN; 0 otherwise
  gla      u8  the guest linear address, where flag GLA is set (memory accesses, INS/OUTS,
               LMSW with a memory operand)
  kind     u1  an `EventKind`
  flags    u1  `EventFlag` bits
  size     u1  bytes accessed: 1, 2 or 4 for IO; 1 to 8 for READ, WRITE, FETCH
  ilen     u1  the instruction's length in bytes (what VM_EXIT_INSTRUCTION_LEN reports); 0
               for RUN, EXTINT and POST, which are not one instruction
  reg      u1  the general-purpose register of MOV_TO_CR / MOV_FROM_CR (0 RAX ... 15 R15)
  _pad     3 bytes, zero

`event()` builds one record with the usual instruction lengths filled in.
"""

from __future__ import annotations

from enum import IntEnum, IntFlag

import numpy as np

__all__ = ["EVENT_DTYPE", "EventKind", "EventFlag", "event", "events"]

EVENT_DTYPE = np.dtype([
    ("address", "<u8"),
    ("value", "<u8"),
    ("gla", "<u8"),
    ("kind", "u1"),
    ("flags", "u1"),
    ("size", "u1"),
    ("ilen", "u1"),
    ("reg", "u1"),
    ("_pad", "V3"),
])
assert EVENT_DTYPE.itemsize == 32


class EventKind(IntEnum):
    """What one event is."""

    RUN = 0  # guest code that exits on nothing, for `value` TSC cycles
    IO = 1  # IN/OUT/INS/OUTS (flags IN, STRING, REP, IMMEDIATE)
    CPUID = 2
    HLT = 3
    RDMSR = 4
    WRMSR = 5
    VMCALL = 6
    READ = 7  # a data read of guest-physical memory
    WRITE = 8  # a data write (an MMIO doorbell, a kick, is one)
    FETCH = 9  # an instruction fetch
    EXTINT = 10  # an external interrupt arrives, vector in `address`
    STI = 11
    CLI = 12
    POST = 13  # a poster posts vector `address` to the vCPU's posted-interrupt descriptor
    MOV_TO_CR = 14  # MOV CRn, reg: n in `address`, the register in `reg`, its value in `value`
    MOV_FROM_CR = 15  # MOV reg, CRn
    CLTS = 16
    LMSW = 17  # source in `value`; a memory operand if flag GLA gives its address


class EventFlag(IntFlag):
    """Event modifiers."""

    IN = 1 << 0  # IO: IN or INS (else OUT or OUTS)
    STRING = 1 << 1  # IO: INS or OUTS
    REP = 1 << 2  # IO: with a REP prefix
    IMMEDIATE = 1 << 3  # IO: the port is an immediate operand (IN/OUT imm8)
    GLA = 1 << 4  # `gla` holds the access's guest linear address


# Instruction lengths in bytes (Intel SDM Vol. 2 opcode tables): CPUID 0F A2, HLT F4, RDMSR
# 0F 32, WRMSR 0F 30, VMCALL 0F 01 C1, STI FB, CLI FA. A plain memory access is counted as a
# 3-byte MOV (opcode, ModRM, displacement8).
_LENGTHS = {EventKind.CPUID: 2, EventKind.HLT: 1, EventKind.RDMSR: 2, EventKind.WRMSR: 2,
            EventKind.VMCALL: 3, EventKind.STI: 1, EventKind.CLI: 1, EventKind.READ: 3,
            EventKind.WRITE: 3, EventKind.FETCH: 3, EventKind.RUN: 0, EventKind.EXTINT: 0,
            EventKind.POST: 0, EventKind.CLTS: 2, EventKind.LMSW: 3}


def _mov_cr_length(cr: int, reg: int) -> int:
    # MOV to/from CRn: 0F 22/20 /r; a REX prefix for CR8 (REX.R) or R8-R15 (REX.B).
    return 3 + (cr >= 8 or reg >= 8)


def _io_length(size: int, flags: EventFlag) -> int:
    # IN/OUT with DX or INS/OUTS: one opcode byte; imm8 adds one; a 16-bit operand adds the
    # 0x66 prefix; REP adds 0xF3.
    return (1 + bool(flags & EventFlag.IMMEDIATE) + (size == 2)
            + bool(flags & EventFlag.REP))


def event(kind: EventKind, address: int = 0, size: int = 0, value: int = 0,
          flags: EventFlag | int = 0, gla: int | None = None, ilen: int | None = None,
          reg: int = 0) -> tuple:
    """One event as a tuple for `np.array(..., dtype=EVENT_DTYPE)` (or `events`).

    `gla`, when given, sets flag GLA; `ilen` defaults to the instruction's usual length.
    """
    flags = EventFlag(flags) | (EventFlag.GLA if gla is not None else 0)
    if ilen is None:
        if kind == EventKind.IO:
            ilen = _io_length(size, flags)
        elif kind in (EventKind.MOV_TO_CR, EventKind.MOV_FROM_CR):
            ilen = _mov_cr_length(address, reg)
        else:
            ilen = _LENGTHS[EventKind(kind)]
    return (address, value, gla or 0, int(kind), int(flags), size, ilen, reg, b"")


def events(*records: tuple) -> np.ndarray:
    """An event array from `event()` tuples."""
    return np.array(list(records), dtype=EVENT_DTYPE)
