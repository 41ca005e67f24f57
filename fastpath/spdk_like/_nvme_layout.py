"""The one home of NVMe's wire layouts, as the model's host driver and controller use them.

Sources: NVM Express Base Specification 2.0 ("Base") and the NVM Command Set Specification 1.0
("NVM"). Each layout is a numpy dtype (for Python and tests) with its size asserted; kernels
see the same entries as arrays of little-endian dwords, as the spec numbers them (Command
Dword 0 to 15, Completion Dword 0 to 3), through the dword indices and bit fields below, each
held to its dtype's field offset.

Status values here are the 15-bit Status Field of a completion without its phase tag: Status
Code in bits 7:0, Status Code Type in bits 10:8 and Do Not Retry in bit 14 (Base §3.3.3.2.1,
Figure 92, moved down one bit); a completion's dword 3 carries it in bits 31:17.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from fastpath._numba import NJIT

# --- Memory pages, PRP entries (Base §4.1.1) ---

# The model's memory page size (CC.MPS = 0): PRP entries and lists are laid out in 4 KiB pages.
PAGE_SIZE = 4096
PAGE_SHIFT = 12
PRP_ENTRY_SIZE = 8
assert 1 << PAGE_SHIFT == PAGE_SIZE

# --- Submission queue entry: the common command format (Base §3.3.3.1, Figures 86 and 87) ---

SQE = np.dtype({
    "names": ["opcode", "flags", "cid", "nsid", "cdw2", "cdw3", "mptr", "prp1", "prp2",
              "cdw10", "cdw11", "cdw12", "cdw13", "cdw14", "cdw15"],
    "formats": ["u1", "u1", "<u2", "<u4", "<u4", "<u4", "<u8", "<u8", "<u8",
                "<u4", "<u4", "<u4", "<u4", "<u4", "<u4"],
    "offsets": [0, 1, 2, 4, 8, 12, 16, 24, 32, 40, 44, 48, 52, 56, 60],
})
assert SQE.itemsize == 64
SQE_DWORDS = 16

# Dword indices of an entry seen as 16 dwords. The data pointer (DPTR, dwords 6-9) holds PRP
# entry 1 and 2 or one SGL descriptor (then `SGL_DESCRIPTOR` laid over its 16 bytes).
SQ_CDW0 = 0
SQ_NSID = 1
SQ_PRP1 = 6           # dwords 6-7
SQ_PRP2 = 8           # dwords 8-9
SQ_CDW10 = 10
SQ_CDW11 = 11
SQ_CDW12 = 12
for _name, _dword in (("flags", SQ_CDW0), ("nsid", SQ_NSID), ("prp1", SQ_PRP1),
                      ("prp2", SQ_PRP2), ("cdw10", SQ_CDW10), ("cdw11", SQ_CDW11),
                      ("cdw12", SQ_CDW12)):
    assert SQE.fields[_name][1] // 4 == _dword, _name



@njit(**NJIT)
def qword(entry, dword):
    """The little-endian qword field at `dword` of an entry seen as dwords (PRP1, a starting
    LBA)."""
    return np.uint64(entry[dword]) | np.uint64(entry[dword + 1]) << np.uint64(32)


@njit(**NJIT)
def set_qword(entry, dword, value):
    """Write the qword field at `dword` of an entry seen as dwords."""
    word = np.uint64(value)
    entry[dword] = np.uint32(word & np.uint64(0xFFFFFFFF))
    entry[dword + 1] = np.uint32(word >> np.uint64(32))


# Command dword 0 (Figure 86): opcode 7:0, fused operation 9:8, PRP or SGL 15:14, command id.
CDW0_OPCODE_MASK = 0xFF
CDW0_FUSE_SHIFT = 8
CDW0_FUSE_MASK = 0x3
CDW0_PSDT_SHIFT = 14
CDW0_PSDT_MASK = 0x3
CDW0_CID_SHIFT = 16
assert SQE.fields["cid"][1] * 8 == CDW0_CID_SHIFT
assert SQE.fields["flags"][1] * 8 + 6 == CDW0_PSDT_SHIFT

# PSDT: the data pointer is PRPs (0), or an SGL with MPTR a buffer (1) or a segment (2): no
# namespace here has metadata, so 1 and 2 are the same to the model; 3 is reserved.
PSDT_PRP = 0
PSDT_SGL_MPTR_BUFFER = 1

# --- Completion queue entry (Base §3.3.3.2, Figures 89 to 91) ---

CQE = np.dtype([
    ("dw0", "<u4"),       # command specific
    ("dw1", "<u4"),
    ("sq_head", "<u2"),   # SQHD: the submission queue's head when the entry was made
    ("sq_id", "<u2"),     # SQID
    ("cid", "<u2"),       # the command's identifier
    ("status", "<u2"),    # bit 0 the phase tag, bits 15:1 the status field
])
assert CQE.itemsize == 16
CQE_DWORDS = 4

CQ_DW0 = 0
CQ_DW2 = 2            # SQHD 15:0, SQID 31:16
CQ_DW3 = 3            # CID 15:0, phase tag 16, status 31:17
CQ_SQID_SHIFT = 16
CQ_PHASE_SHIFT = 16
CQ_STATUS_SHIFT = 17
assert CQE.fields["sq_head"][1] == 4 * CQ_DW2
assert CQE.fields["sq_id"][1] * 8 - 32 * CQ_DW2 == CQ_SQID_SHIFT
assert CQE.fields["cid"][1] == 4 * CQ_DW3
assert CQE.fields["status"][1] * 8 - 32 * CQ_DW3 == CQ_PHASE_SHIFT == CQ_STATUS_SHIFT - 1

# --- SGL descriptor (Base §4.1.2, the generic SGL descriptor format) ---

SGL_DESCRIPTOR = np.dtype({
    "names": ["address", "length", "identifier"],
    "formats": ["<u8", "<u4", "u1"],
    "offsets": [0, 8, 15],
    "itemsize": 16,
})
assert SGL_DESCRIPTOR.itemsize == 16
assert SGL_DESCRIPTOR.itemsize == (SQE.fields["cdw10"][1] - SQE.fields["prp1"][1])

# The identifier byte: descriptor type in bits 7:4, sub type in bits 3:0. Seen as two qwords,
# the length is the low half of the second and the identifier its top byte.
SGL_TYPE_SHIFT = 60
SGL_SUBTYPE_SHIFT = 56
SGL_LENGTH_MASK = 0xFFFFFFFF
assert SGL_DESCRIPTOR.fields["identifier"][1] * 8 - 64 + 4 == SGL_TYPE_SHIFT

SGL_TYPE_DATA_BLOCK = 0x0
SGL_TYPE_BIT_BUCKET = 0x1
SGL_TYPE_SEGMENT = 0x2
SGL_TYPE_LAST_SEGMENT = 0x3
SGL_SUBTYPE_ADDRESS = 0x0

# --- Dataset Management range (NVM §3.2.3, the range definition) ---

DSM_RANGE = np.dtype([
    ("attributes", "<u4"),   # context attributes: hints, which the model ignores
    ("blocks", "<u4"),       # length in logical blocks (not 0's based)
    ("slba", "<u8"),
])
assert DSM_RANGE.itemsize == 16
DSM_MAX_RANGES = 256
# Seen as two qwords: the length in the high half of the first, the starting LBA the second.
DSM_BLOCKS_SHIFT = 32
DSM_SLBA_QWORD = 1
assert DSM_RANGE.fields["blocks"][1] * 8 == DSM_BLOCKS_SHIFT
assert DSM_RANGE.fields["slba"][1] == 8 * DSM_SLBA_QWORD

# --- Opcodes ---

# Admin command set (Base §5, Figure 138): what the model's controller serves.
ADMIN_DELETE_IO_SQ = 0x00
ADMIN_CREATE_IO_SQ = 0x01
ADMIN_DELETE_IO_CQ = 0x04
ADMIN_CREATE_IO_CQ = 0x05
ADMIN_IDENTIFY = 0x06
ADMIN_SET_FEATURES = 0x09
ADMIN_GET_FEATURES = 0x0A

# NVM command set I/O commands (Flush: Base §7.1; the rest NVM §3.2).
NVM_FLUSH = 0x00
NVM_WRITE = 0x01
NVM_READ = 0x02
NVM_WRITE_ZEROES = 0x08
NVM_DATASET_MANAGEMENT = 0x09

# Read, Write, Write Zeroes: the starting LBA in dwords 10-11, the number of logical blocks
# (0's based) in dword 12 bits 15:0 (NVM §3.2.4, §3.2.6); Write Zeroes' Deallocate bit (NVM
# §3.2.8).
CDW12_NLB_MASK = 0xFFFF
CDW12_DEAC = 1 << 25
# Write and Write Zeroes: Force Unit Access, the data stable before the command completes.
CDW12_FUA = 1 << 30
# Dataset Management: number of ranges (0's based) in dword 10 bits 7:0, the Attribute -
# Deallocate bit in dword 11 (NVM §3.2.3).
CDW10_NR_MASK = 0xFF
CDW11_AD = 1 << 2

# Identify (Base §5.17): CNS in dword 10 bits 7:0.
CNS_NAMESPACE = 0x00
CNS_CONTROLLER = 0x01
# Flush may name every namespace at once (Base §7.1).
NSID_ALL = 0xFFFFFFFF

# Create I/O Completion/Submission Queue (Base §5.4, §5.5): queue id in dword 10 bits 15:0,
# size (0's based) in bits 31:16; dword 11 bit 0 physically contiguous; the submission queue's
# completion queue in dword 11 bits 31:16. Delete (Base §5.6, §5.7): the id in dword 10.
CDW10_QID_MASK = 0xFFFF
CDW10_QSIZE_SHIFT = 16
CDW11_PC = 1
CDW11_CQID_SHIFT = 16

# Features (Base §5.27.1): Number of Queues, requested and allocated (0's based) as
# submission queues in bits 15:0, completion queues in bits 31:16 of dword 11 and of the
# completion's dword 0.
FEATURE_NUMBER_OF_QUEUES = 0x07
CDW10_FID_MASK = 0xFF

# --- Status (Base §3.3.3.2.1, Figures 92 to 96) ---

SCT_GENERIC = 0x0
SCT_COMMAND_SPECIFIC = 0x1
SCT_MEDIA = 0x2
SCT_SHIFT = 8
DNR_BIT = 1 << 14


def status_value(sct: int, sc: int, dnr: bool = True) -> int:
    """A status field (without the phase tag): status code `sc` of type `sct`, Do Not Retry
    set for errors that would fail again as they stand."""
    return sc | sct << SCT_SHIFT | (DNR_BIT if dnr and (sct or sc) else 0)


STATUS_SUCCESS = 0
STATUS_INVALID_OPCODE = status_value(SCT_GENERIC, 0x01)
STATUS_INVALID_FIELD = status_value(SCT_GENERIC, 0x02)
STATUS_DATA_TRANSFER_ERROR = status_value(SCT_GENERIC, 0x04)
STATUS_INTERNAL_ERROR = status_value(SCT_GENERIC, 0x06, dnr=False)
STATUS_INVALID_NAMESPACE = status_value(SCT_GENERIC, 0x0B)
STATUS_INVALID_SGL_SEGMENT = status_value(SCT_GENERIC, 0x0D)
STATUS_INVALID_SGL_COUNT = status_value(SCT_GENERIC, 0x0E)
STATUS_DATA_SGL_LENGTH_INVALID = status_value(SCT_GENERIC, 0x0F)
STATUS_SGL_TYPE_INVALID = status_value(SCT_GENERIC, 0x11)
STATUS_PRP_OFFSET_INVALID = status_value(SCT_GENERIC, 0x13)
STATUS_WRITE_PROTECTED = status_value(SCT_GENERIC, 0x20)
# NVM command set values of the generic type (0x80 and up: NVM §3.2, Figure 39).
STATUS_LBA_OUT_OF_RANGE = status_value(SCT_GENERIC, 0x80)
STATUS_CAPACITY_EXCEEDED = status_value(SCT_GENERIC, 0x81)
# Command specific, of the queue commands (Base §5.4 to §5.7).
STATUS_INVALID_CQ = status_value(SCT_COMMAND_SPECIFIC, 0x00)
STATUS_INVALID_QUEUE_ID = status_value(SCT_COMMAND_SPECIFIC, 0x01)
STATUS_INVALID_QUEUE_SIZE = status_value(SCT_COMMAND_SPECIFIC, 0x02)
STATUS_INVALID_QUEUE_DELETION = status_value(SCT_COMMAND_SPECIFIC, 0x0C)
# Media and data integrity errors: the backing device failed (worth a retry).
STATUS_WRITE_FAULT = status_value(SCT_MEDIA, 0x80, dnr=False)
STATUS_UNRECOVERED_READ_ERROR = status_value(SCT_MEDIA, 0x81, dnr=False)

STATUS_NAMES = {value: name[len("STATUS_"):].lower() for name, value in dict(globals()).items()
                if name.startswith("STATUS_")}

# --- Doorbells (Base §3.1.3, SQyTDBL and CQyHDBL) ---
# With a doorbell stride of 0 the doorbells are consecutive dwords from offset 1000h: queue
# y's submission tail at 2y, its completion head at 2y + 1. The model keeps them as one array
# of uint32 words, indexed so.


@njit(**NJIT)
def sq_tail_doorbell(qid):
    """The doorbell word of submission queue `qid`'s tail."""
    return 2 * qid


@njit(**NJIT)
def cq_head_doorbell(qid):
    """The doorbell word of completion queue `qid`'s head."""
    return 2 * qid + 1


# --- Identify data (Base §5.17.2.1; NVM §4.1.5.1), the fields the model fills ---

IDENTIFY_SIZE = 4096

IDENTIFY_CONTROLLER = np.dtype({
    "names": ["vid", "ssvid", "sn", "mn", "fr", "rab", "mdts", "cntlid", "ver", "cntrltype",
              "sqes", "cqes", "maxcmd", "nn", "oncs", "vwc", "sgls"],
    "formats": ["<u2", "<u2", "S20", "S40", "S8", "u1", "u1", "<u2", "<u4", "u1",
                "u1", "u1", "<u2", "<u4", "<u2", "u1", "<u4"],
    "offsets": [0, 2, 4, 24, 64, 72, 77, 78, 80, 111, 512, 513, 514, 516, 520, 525, 536],
    "itemsize": IDENTIFY_SIZE,
})
assert IDENTIFY_CONTROLLER.itemsize == IDENTIFY_SIZE

CNTRLTYPE_IO = 1
ONCS_DATASET_MANAGEMENT = 1 << 2
ONCS_WRITE_ZEROES = 1 << 3
VWC_PRESENT = 1
SGLS_SUPPORTED = 0x1          # bits 1:0 = 01b: SGLs, byte aligned and granular
VERSION_2_0 = 0x00020000      # VER: major 31:16, minor 15:8

IDENTIFY_NAMESPACE = np.dtype({
    "names": ["nsze", "ncap", "nuse", "nsfeat", "nlbaf", "flbas", "lbaf0"],
    "formats": ["<u8", "<u8", "<u8", "u1", "u1", "u1", "<u4"],
    "offsets": [0, 8, 16, 24, 25, 26, 128],
    "itemsize": IDENTIFY_SIZE,
})
assert IDENTIFY_NAMESPACE.itemsize == IDENTIFY_SIZE

# LBA format (NVM §4.1.5.1, LBA Format Data Structure): metadata bytes 15:0, LBA data size as
# a power of two in 23:16.
LBAF_LBADS_SHIFT = 16
