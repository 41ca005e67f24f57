"""Every exception fastpath raises, in one hierarchy.

The compiled core never raises on the data path: it returns negative codes (fastpath._core.chain's
FP_E_* values) and counts them. The Python layer turns a code into the class named here with
`error_for_code`, so `except fastpath.errors.VringError` catches any ring fault. Malformed
vhost-user messages raise subclasses of `ProtocolError`. On the modelled platform, a failed VMX
instruction raises a `VmxError` (`VmFailValid` carries the VM-instruction error number), and an
EPT walk that cannot translate raises `EptViolation` or `EptMisconfig`, which the VMX model
turns into VM exits.
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
    "EptViolation",
    "EptMisconfig",
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


# The modelled platform (fastpath.hv)


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


class EptViolation(FastpathError):
    """A guest-physical access that EPT does not permit (SDM §29.3.3.2; spec hv §1.5).

    `qualification` is the EPT-violation exit qualification as the walk produced it (access
    bits 2:0, the AND of the entries' permissions in bits 5:3, and bits 7 and 8 when the walk
    knew of a guest linear address); `gpa` is the guest-physical address accessed. The VMX
    model turns it into exit 48."""

    def __init__(self, message: str, qualification: int, gpa: int):
        super().__init__(message)
        self.qualification = qualification
        self.gpa = gpa


class EptMisconfig(FastpathError):
    """An EPT paging-structure entry is misconfigured (SDM §29.3.3.1; spec hv §1.6): `gpa` is
    the guest-physical address whose walk met it. The VMX model turns it into exit 49."""

    def __init__(self, message: str, gpa: int):
        super().__init__(message)
        self.gpa = gpa


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
