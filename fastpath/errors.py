"""Every exception fastpath raises, in one hierarchy.

The compiled core never raises on the data path: it returns negative codes (fastpath._core.chain's
FP_E_* values) and counts them. The Python layer turns a code into the class named here with
`error_for_code`, so `except fastpath.errors.VringError` catches any ring fault. Malformed
vhost-user messages raise subclasses of `ProtocolError`. On the modelled platform, a failed VMX
instruction raises a `VmxError` (`VmFailValid` carries the VM-instruction error number), and a
walk that cannot translate raises a `TranslationFault` (`EptViolation` and `EptMisconfig` the
VMX model turns into VM exits).
"""

__all__ = [
    "FastpathError",
    "GuestMemoryError",
    "VringError",
    "HeadOutOfRange",
    "NextOutOfRange",
    "ChainLoop",
    "DescriptorOutsideMemory",
    "BadIndirectTable",
    "WriteOrderViolation",
    "TooManySegments",
    "AvailIndexJump",
    "UnknownUsedId",
    "QueueBroken",
    "ChainTooLarge",
    "RingFull",
    "IotlbMiss",
    "error_for_code",
    "raise_for_code",
    "ChannelClosed",
    "PeerTooSlow",
    "RequestRefused",
    "ProtocolError",
    "TruncatedMessage",
    "BadVersion",
    "ReservedBitsSet",
    "UnexpectedReplyFlag",
    "MissingReplyFlag",
    "UnknownRequest",
    "UnsupportedRequest",
    "PayloadTooLarge",
    "PayloadSizeMismatch",
    "WrongFdCount",
    "BadRegionCount",
    "BadMemoryRegion",
    "OverlappingRegions",
    "BadConfigAccess",
    "BadIotlbMessage",
    "NvmeCommandFailed",
    "VmxError",
    "VmxNotEnabled",
    "VmFailInvalid",
    "VmFailValid",
    "TranslationFault",
    "EptViolation",
    "EptMisconfig",
    "GuestPageFault",
    "NonCanonicalAddress",
    "PagingStructureOutsideMemory",
    "InvalidEptp",
    "InvalidInvalidation",
    "DmaFault",
    "InterruptRemappingFault",
]


class FastpathError(Exception):
    """Base of every error fastpath raises."""


class GuestMemoryError(FastpathError):
    """A guest address range is not wholly inside one mapped region, or a region is invalid."""


class VringError(FastpathError):
    """A virtqueue fault. `code` is the core's FP_E_* value (negative)."""

    code = 0


class HeadOutOfRange(VringError):
    """The avail ring names a head descriptor index at or beyond the queue size."""

    code = -1


class NextOutOfRange(VringError):
    """A descriptor's `next` index lies outside its descriptor table."""

    code = -2


class ChainLoop(VringError):
    """A chain visits more descriptors than its table holds: it loops.

    An indirect table may hold more descriptors than the queue size; Linux drivers send such
    tables and QEMU and DPDK accept them, so fastpath does too.
    """

    code = -3


class DescriptorOutsideMemory(VringError):
    """A descriptor's buffer is not inside guest memory."""

    code = -4


class BadIndirectTable(VringError):
    """An indirect table is misplaced, mis-sized, nested, combined with NEXT or not negotiated."""

    code = -5


class WriteOrderViolation(VringError):
    """A device-readable descriptor follows a device-writable one (virtio 1.2 §2.7.4.2)."""

    code = -6


class TooManySegments(VringError):
    """A chain has more segments than the caller's segment array can hold."""

    code = -7


class AvailIndexJump(VringError):
    """The driver moved the avail index by more than the queue size; the queue needs a reset."""

    code = -8


class UnknownUsedId(VringError):
    """A used element names a buffer that is not in flight."""

    code = -9


class QueueBroken(VringError):
    """The queue stopped after an unrecoverable error and serves nothing until it is reset."""

    code = -10


class ChainTooLarge(VringError):
    """A chain's readable or writable bytes do not fit in 32 bits."""

    code = -11


class RingFull(VringError):
    """The driver has too few free descriptors for the chain it is adding."""

    code = -12


class IotlbMiss(VringError):
    """A buffer's IOVA has no translation in the IOTLB yet (VIRTIO_F_ACCESS_PLATFORM). Pops
    never return it: the chain waits in the ring while the front-end is asked for the
    translation."""

    code = -13


# vhost-user messages (fastpath.vhost_user)


class ChannelClosed(FastpathError):
    """The peer closed a vhost-user connection between two messages: an orderly end."""


class PeerTooSlow(FastpathError):
    """A vhost-user peer left a message half-sent, or what was sent to it unread, for longer
    or in larger amounts than a back-end serving other peers can wait for."""


class RequestRefused(FastpathError):
    """A well-formed vhost-user request the back-end or its device cannot carry out (a bad
    vring index, a config write the device does not take): answered with a failing REPLY_ACK
    where one was asked for."""

    # Whether the connection must close when the refusal cannot be acked: the front-end
    # would go on believing the request was carried out, and it is not one to ignore.
    closes_unless_acked = False


class BackendRefused(FastpathError):
    """A vhost-user back-end failed a request (a non-zero REPLY_ACK) or answered out of turn."""


class ProtocolError(FastpathError):
    """A vhost-user message breaks the protocol; the connection should be closed."""


class TruncatedMessage(ProtocolError):
    """Fewer bytes arrived than a header (12 bytes) or the size the header announces."""


class BadVersion(ProtocolError):
    """The header's version bits (flags bits 0-1) are not 1."""


class ReservedBitsSet(ProtocolError):
    """A bit the protocol reserves is set: header flags bits 4-31, vring-fd payload bits 9-63,
    or vring address flags other than VHOST_VRING_F_LOG."""


class UnexpectedReplyFlag(ProtocolError):
    """A request carries the REPLY flag (bit 2), which only replies may set."""


class MissingReplyFlag(ProtocolError):
    """A reply lacks the REPLY flag (bit 2)."""


class UnknownRequest(ProtocolError):
    """The request id is not one the protocol defines for this direction."""


class UnsupportedRequest(ProtocolError):
    """A request the protocol defines but whose payload fastpath does not decode (crypto
    sessions, VIRTIO shared memory mappings)."""


class PayloadTooLarge(ProtocolError):
    """The payload is larger than MAX_PAYLOAD_SIZE."""


class PayloadSizeMismatch(ProtocolError):
    """The payload size is not one the request type allows."""


class WrongFdCount(ProtocolError):
    """The message carries a number of file descriptors its request type does not allow."""


class BadRegionCount(ProtocolError):
    """A memory table names no regions, or more than MAX_MEM_REGIONS."""


class BadMemoryRegion(ProtocolError):
    """A memory region is empty, or one of its ranges wraps past 2**64."""


class OverlappingRegions(ProtocolError):
    """Two regions of one memory table overlap in guest-physical or user address space."""


class BadConfigAccess(ProtocolError):
    """A config-space access reaches past MAX_CONFIG_SIZE or has unknown flags."""


class BadIotlbMessage(ProtocolError):
    """An IOTLB message has an unknown type or permission value."""


# NVMe (fastpath.spdk_like)


class NvmeCommandFailed(FastpathError):
    """An NVMe command completed with an error: `status` is its completion's status field
    without the phase tag (status code in bits 7:0, type in bits 10:8, Do Not Retry in bit
    14)."""

    def __init__(self, message: str, status: int):
        super().__init__(message)
        self.status = status


# The modelled platform (fastpath.hv): its VMX instructions (fastpath.hv.vmx).


class VmxError(FastpathError):
    """A VMX instruction of the modelled vCPU failed (Intel SDM Vol. 3C §31.2)."""


class VmxNotEnabled(VmxError):
    """A VMX instruction other than VMXON ran outside VMX operation: on a real CPU it raises
    #UD (invalid opcode)."""


class VmFailInvalid(VmxError):
    """VMfailInvalid (CF = 1): the instruction failed with no current VMCS, or VMXON failed on
    its operand, so there is no VM-instruction error field to write."""


class VmFailValid(VmxError):
    """VMfailValid (ZF = 1): the instruction failed and wrote `number`, the VM-instruction
    error as the SDM numbers them (Vol. 3C §31.4; `fastpath.hv.vmx.VmInstructionError`), into
    the current VMCS's VM_INSTRUCTION_ERROR field."""

    def __init__(self, message: str, number: int):
        super().__init__(message)
        self.number = number


# The modelled platform's address translation (fastpath.hv.ept, fastpath.hv.paging). The walkers
# return codes; the Python layer raises these, each carrying what the architecture reports.


class TranslationFault(FastpathError):
    """A translation the model's walkers refused. `references` counts the paging-structure
    reads made before the walk stopped (shared/specs/hv.md §0.1)."""

    def __init__(self, message: str, references: int = 0):
        super().__init__(message)
        self.references = references


class EptViolation(TranslationFault):
    """An EPT violation (VM exit reason 48, hv.md §1.5): `qualification` is the exit
    qualification bit for bit, `gpa` the faulting guest-physical address (the VMCS's
    GUEST_PHYSICAL_ADDRESS), `gla` the guest linear address when qualification bit 7 says it is
    valid, else None."""

    exit_reason = 48

    def __init__(self, qualification: int, gpa: int, gla: int | None = None,
                 references: int = 0):
        super().__init__(f"EPT violation at GPA {gpa:#x}, qualification {qualification:#x}",
                         references)
        self.qualification = qualification
        self.gpa = gpa
        self.gla = gla


class EptMisconfig(TranslationFault):
    """An EPT misconfiguration (VM exit reason 49, hv.md §1.6): a present entry on the walk of
    `gpa` has reserved settings. Its exit qualification is 0."""

    exit_reason = 49
    qualification = 0

    def __init__(self, gpa: int, references: int = 0):
        super().__init__(f"EPT misconfiguration at GPA {gpa:#x}", references)
        self.gpa = gpa


class GuestPageFault(TranslationFault):
    """A page fault the guest takes (vector 14, no VM exit): `error_code` as the CPU pushes it
    (hv.md §1.9: P 0, W 1, U 2, RSVD 3, I/D 4) and `gva`, the linear address (CR2)."""

    vector = 14

    def __init__(self, error_code: int, gva: int, references: int = 0):
        super().__init__(f"#PF at {gva:#x}, error code {error_code:#x}", references)
        self.error_code = error_code
        self.gva = gva


class NonCanonicalAddress(TranslationFault):
    """A linear access to a non-canonical address: the guest takes #GP(0) (vector 13) before any
    paging-structure read (SDM Vol. 3A §3.3.7.1)."""

    vector = 13

    def __init__(self, gva: int):
        super().__init__(f"{gva:#x} is not canonical", 0)
        self.gva = gva


class PagingStructureOutsideMemory(TranslationFault):
    """A paging-structure entry would be read at `hpa`, outside host memory: the model's abort
    (hv.md §6, "out-of-range reads are read errors")."""

    def __init__(self, hpa: int, references: int = 0):
        super().__init__(f"paging-structure read at HPA {hpa:#x} is outside host memory",
                         references)
        self.hpa = hpa


class InvalidEptp(FastpathError):
    """An EPTP that fails the VM-entry checks of hv.md §1.1 for the capabilities given (VM entry
    would fail with VM-instruction error 7); the message names the field."""


class InvalidInvalidation(FastpathError):
    """An INVEPT or INVVPID the model refuses as the CPU does, with VM-instruction error 28
    (invalid operand): an unsupported type, VPID 0 where a VPID is needed, a non-canonical
    address."""

    vm_instruction_error = 28


class DmaFault(TranslationFault):
    """A DMA request that VT-d remapping refused (shared/specs/hv.md §3.4, §3.5).

    `reason` is the fault reason (FR: 1 root entry not present ... 0xD translation blocked),
    `source_id` the requester's bus:devfn, `address` the faulting page (FRCD.FI), `read` the
    record's T bit (True for a read, hv.md §8 item 11), `qualified` whether the context entry's
    FPD bit could suppress it. `record` is the 128-bit fault recording register the unit
    writes for it, as (lo, hi).
    """

    def __init__(self, reason: int, source_id: int, address: int, read: bool,
                 references: int = 0, qualified: bool = False):
        super().__init__(f"DMA fault reason {reason:#x} from {source_id:#06x} at {address:#x}",
                         references)
        self.reason = reason
        self.source_id = source_id
        self.address = address
        self.read = read
        self.qualified = qualified

    @property
    def record(self) -> tuple[int, int]:
        """The fault recording register (hv.md §3.5): lo = FI, hi = SID | FR << 32 | T << 62
        | F << 63."""
        return self.address, (self.source_id | self.reason << 32 | int(self.read) << 62
                              | 1 << 63)


class InterruptRemappingFault(DmaFault):
    """An interrupt request that VT-d interrupt remapping refused (hv.md §3.8): `reason` is
    0x20-0x28, `index` the interrupt index computed for it (None when the request had none).
    Its record's FI carries the index in bits 63:48 (the VT-d spec's fault recording register)."""

    def __init__(self, reason: int, source_id: int, index: int | None = None,
                 qualified: bool = False):
        super().__init__(reason, source_id, (index or 0) << 48, False, 0, qualified)
        self.args = (f"interrupt remapping fault reason {reason:#x} from {source_id:#06x}"
                     + ("" if index is None else f", index {index}"),)
        self.index = index


_BY_CODE = {cls.code: cls for cls in VringError.__subclasses__()}


def error_for_code(code: int) -> type[VringError]:
    """The VringError subclass for a core error code (negative, as the core returns it)."""
    try:
        return _BY_CODE[code]
    except KeyError:
        raise ValueError(f"{code} is not a fastpath core error code") from None


def raise_for_code(code: int):
    """Raise the VringError subclass for a negative core return."""
    cls = error_for_code(code)
    raise cls(f"queue error {cls.__name__} ({code})")
