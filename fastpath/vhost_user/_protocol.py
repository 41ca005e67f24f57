"""vhost-user messages: request ids, feature bits, header rules, and what each request carries.

Follows QEMU docs/interop/vhost-user.rst ("Message Specification", "Communication", "Protocol
features", "Front-end message types", "Back-end message types"). This layer is stateless: it
checks what a message can be checked for on its own (sizes, fd counts, reserved bits, region
sanity); whether a request is allowed by the negotiated features is the protocol engine's job.
File descriptors are only counted here; the caller owns them, and must close them when a decoder
raises.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import IntEnum, IntFlag
from typing import Any, NamedTuple

from fastpath.errors import (
    BadVersion,
    MissingReplyFlag,
    PayloadSizeMismatch,
    PayloadTooLarge,
    ReservedBitsSet,
    TruncatedMessage,
    UnexpectedReplyFlag,
    UnknownRequest,
    UnsupportedRequest,
    WrongFdCount,
)
from fastpath.vhost_user import _payloads as p
from fastpath.vhost_user._payloads import request_name

HEADER_SIZE = p.HEADER_LAYOUT.size
"""Bytes of a message header: request, flags, size (u32 each)."""
VERSION = 0x1
"""The protocol version, carried in header flags bits 0-1."""
VERSION_MASK = 0x3
"""Header flags bits holding the version."""
FLAG_REPLY = 0x4
"""Header flag bit 2: the message is a reply."""
FLAG_NEED_REPLY = 0x8
"""Header flag bit 3: the sender wants a u64 reply (REPLY_ACK)."""
VHOST_USER_F_PROTOCOL_FEATURES = 30
"""The virtio feature bit (number, not mask) by which a back-end offers protocol features."""


class FrontendRequest(IntEnum):
    """Requests a front-end sends a back-end ("Front-end message types")."""

    GET_FEATURES = 1
    SET_FEATURES = 2
    SET_OWNER = 3
    RESET_OWNER = 4
    SET_MEM_TABLE = 5
    SET_LOG_BASE = 6
    SET_LOG_FD = 7
    SET_VRING_NUM = 8
    SET_VRING_ADDR = 9
    SET_VRING_BASE = 10
    GET_VRING_BASE = 11
    SET_VRING_KICK = 12
    SET_VRING_CALL = 13
    SET_VRING_ERR = 14
    GET_PROTOCOL_FEATURES = 15
    SET_PROTOCOL_FEATURES = 16
    GET_QUEUE_NUM = 17
    SET_VRING_ENABLE = 18
    SEND_RARP = 19
    NET_SET_MTU = 20
    SET_BACKEND_REQ_FD = 21
    IOTLB_MSG = 22
    SET_VRING_ENDIAN = 23
    GET_CONFIG = 24
    SET_CONFIG = 25
    CREATE_CRYPTO_SESSION = 26
    CLOSE_CRYPTO_SESSION = 27
    POSTCOPY_ADVISE = 28
    POSTCOPY_LISTEN = 29
    POSTCOPY_END = 30
    GET_INFLIGHT_FD = 31
    SET_INFLIGHT_FD = 32
    GPU_SET_SOCKET = 33
    RESET_DEVICE = 34
    VRING_KICK = 35
    GET_MAX_MEM_SLOTS = 36
    ADD_MEM_REG = 37
    REM_MEM_REG = 38
    SET_STATUS = 39
    GET_STATUS = 40
    GET_SHARED_OBJECT = 41
    SET_DEVICE_STATE_FD = 42
    CHECK_DEVICE_STATE = 43
    GET_SHMEM_CONFIG = 44
    GET_VRING_BASE_SKIP_DRAIN = 45


class BackendRequest(IntEnum):
    """Requests a back-end sends a front-end on the SET_BACKEND_REQ_FD socket ("Back-end message
    types")."""

    IOTLB_MSG = 1
    CONFIG_CHANGE_MSG = 2
    VRING_HOST_NOTIFIER_MSG = 3
    VRING_CALL = 4
    VRING_ERR = 5
    SHARED_OBJECT_ADD = 6
    SHARED_OBJECT_REMOVE = 7
    SHARED_OBJECT_LOOKUP = 8
    SHMEM_MAP = 9
    SHMEM_UNMAP = 10


class ProtocolFeature(IntFlag):
    """Protocol feature bits ("Protocol features"). Bits 20 and up are left out: their numbering
    differs between the spec, rust-vmm and QEMU patch series."""

    MQ = 1 << 0
    LOG_SHMFD = 1 << 1
    RARP = 1 << 2
    REPLY_ACK = 1 << 3
    MTU = 1 << 4
    BACKEND_REQ = 1 << 5
    CROSS_ENDIAN = 1 << 6
    CRYPTO_SESSION = 1 << 7
    PAGEFAULT = 1 << 8
    CONFIG = 1 << 9
    BACKEND_SEND_FD = 1 << 10
    HOST_NOTIFIER = 1 << 11
    INFLIGHT_SHMFD = 1 << 12
    RESET_DEVICE = 1 << 13
    INBAND_NOTIFICATIONS = 1 << 14
    CONFIGURE_MEM_SLOTS = 1 << 15
    STATUS = 1 << 16
    XEN_MMAP = 1 << 17
    SHARED_OBJECT = 1 << 18
    DEVICE_STATE = 1 << 19


Request = FrontendRequest | BackendRequest

ALWAYS_REPLY = frozenset({
    FrontendRequest.GET_FEATURES, FrontendRequest.GET_PROTOCOL_FEATURES,
    FrontendRequest.SET_LOG_BASE,
    FrontendRequest.GET_VRING_BASE, FrontendRequest.GET_QUEUE_NUM, FrontendRequest.GET_CONFIG,
    FrontendRequest.GET_INFLIGHT_FD, FrontendRequest.GET_MAX_MEM_SLOTS,
    FrontendRequest.GET_STATUS,
})
"""Requests whose reply carries the answer (never a REPLY_ACK)."""


@dataclass(frozen=True)
class Header:
    """A decoded message header."""

    request: Request
    flags: int
    size: int

    @property
    def reply(self) -> bool:
        """Whether the REPLY flag is set."""
        return bool(self.flags & FLAG_REPLY)

    @property
    def need_reply(self) -> bool:
        """Whether the NEED_REPLY flag is set: the peer wants a u64 reply (REPLY_ACK)."""
        return bool(self.flags & FLAG_NEED_REPLY)


@dataclass(frozen=True)
class Message:
    """A decoded message: its header and its payload dataclass."""

    header: Header
    payload: Any


# --- What each request carries -------------------------------------------------------------------

FdRule = Callable[[Any], Sequence[int]]


def _exactly(n: int) -> FdRule:
    return lambda payload: (n,)


def _zero_or_one(payload: Any) -> Sequence[int]:
    return (0, 1)


def _one_per_region(payload: p.MemoryTable) -> Sequence[int]:
    # SET_MEM_TABLE: "The size and ordering of the fds matches the number and ordering of memory
    # regions."
    return (len(payload.regions),)


def _one_unless_no_fd(payload: p.VringFile | p.VringArea) -> Sequence[int]:
    # Vring-fd messages: bit 8 "is set when there is no file descriptor in the ancillary data".
    return (0,) if payload.no_fd else (1,)


def _one_unless_empty(payload: p.Inflight) -> Sequence[int]:
    # GET_INFLIGHT_FD's reply: a back-end with no area to give (libvhost-user when it cannot
    # allocate one) answers mmap_size 0 and no fd, and QEMU then goes on without one.
    return (0,) if payload.mmap_size == 0 else (1,)


class _Rule(NamedTuple):
    codec: p.Codec
    fds: FdRule = _exactly(0)


_ONE = _exactly(1)
_F = FrontendRequest
_B = BackendRequest

# None: the protocol defines the request, fastpath does not decode its payload.
_FRONTEND_REQUESTS: dict[FrontendRequest, _Rule | None] = {
    _F.GET_FEATURES: _Rule(p.EMPTY),
    _F.SET_FEATURES: _Rule(p.U64_CODEC),
    _F.SET_OWNER: _Rule(p.EMPTY),
    _F.RESET_OWNER: _Rule(p.EMPTY),
    _F.SET_MEM_TABLE: _Rule(p.MEMORY_TABLE, _one_per_region),
    # The spec's table says u64, but QEMU sends a log description (with LOG_SHMFD's fd).
    _F.SET_LOG_BASE: _Rule(p.LOG, _ONE),
    _F.SET_LOG_FD: _Rule(p.EMPTY, _ONE),
    _F.SET_VRING_NUM: _Rule(p.VRING_STATE),
    _F.SET_VRING_ADDR: _Rule(p.VRING_ADDRESS),
    _F.SET_VRING_BASE: _Rule(p.VRING_STATE),
    _F.GET_VRING_BASE: _Rule(p.VRING_STATE),
    _F.SET_VRING_KICK: _Rule(p.VRING_FILE, _one_unless_no_fd),
    _F.SET_VRING_CALL: _Rule(p.VRING_FILE, _one_unless_no_fd),
    _F.SET_VRING_ERR: _Rule(p.VRING_FILE, _one_unless_no_fd),
    _F.GET_PROTOCOL_FEATURES: _Rule(p.EMPTY),
    _F.SET_PROTOCOL_FEATURES: _Rule(p.U64_CODEC),
    _F.GET_QUEUE_NUM: _Rule(p.EMPTY),
    _F.SET_VRING_ENABLE: _Rule(p.VRING_STATE),
    _F.SEND_RARP: _Rule(p.U64_CODEC),
    _F.NET_SET_MTU: _Rule(p.U64_CODEC),
    _F.SET_BACKEND_REQ_FD: _Rule(p.EMPTY, _ONE),
    _F.IOTLB_MSG: _Rule(p.IOTLB),
    _F.SET_VRING_ENDIAN: _Rule(p.VRING_STATE),
    _F.GET_CONFIG: _Rule(p.CONFIG),
    _F.SET_CONFIG: _Rule(p.CONFIG),
    _F.CREATE_CRYPTO_SESSION: None,
    _F.CLOSE_CRYPTO_SESSION: _Rule(p.U64_CODEC),
    _F.POSTCOPY_ADVISE: _Rule(p.EMPTY),
    _F.POSTCOPY_LISTEN: _Rule(p.EMPTY),
    _F.POSTCOPY_END: _Rule(p.EMPTY),
    _F.GET_INFLIGHT_FD: _Rule(p.INFLIGHT),
    _F.SET_INFLIGHT_FD: _Rule(p.INFLIGHT, _ONE),
    _F.GPU_SET_SOCKET: _Rule(p.EMPTY, _ONE),
    _F.RESET_DEVICE: _Rule(p.EMPTY),
    _F.VRING_KICK: _Rule(p.VRING_STATE),
    _F.GET_MAX_MEM_SLOTS: _Rule(p.EMPTY),
    _F.ADD_MEM_REG: _Rule(p.SINGLE_REGION, _ONE),
    # REM_MEM_REG: no fd SHOULD be sent, but back-ends MAY accept (and must close) one.
    _F.REM_MEM_REG: _Rule(p.SINGLE_REGION, _zero_or_one),
    _F.SET_STATUS: _Rule(p.U64_CODEC),
    _F.GET_STATUS: _Rule(p.EMPTY),
    _F.GET_SHARED_OBJECT: _Rule(p.SHARED_OBJECT),
    _F.SET_DEVICE_STATE_FD: _Rule(p.DEVICE_STATE, _ONE),
    _F.CHECK_DEVICE_STATE: _Rule(p.EMPTY),
    _F.GET_SHMEM_CONFIG: _Rule(p.EMPTY),
    _F.GET_VRING_BASE_SKIP_DRAIN: _Rule(p.VRING_STATE),
}

_BACKEND_REQUESTS: dict[BackendRequest, _Rule | None] = {
    _B.IOTLB_MSG: _Rule(p.IOTLB),
    _B.CONFIG_CHANGE_MSG: _Rule(p.EMPTY),
    _B.VRING_HOST_NOTIFIER_MSG: _Rule(p.VRING_AREA, _one_unless_no_fd),
    _B.VRING_CALL: _Rule(p.VRING_STATE),
    _B.VRING_ERR: _Rule(p.VRING_STATE),
    _B.SHARED_OBJECT_ADD: _Rule(p.SHARED_OBJECT),
    _B.SHARED_OBJECT_REMOVE: _Rule(p.SHARED_OBJECT),
    _B.SHARED_OBJECT_LOOKUP: _Rule(p.SHARED_OBJECT),
    _B.SHMEM_MAP: None,
    _B.SHMEM_UNMAP: None,
}

# Replies. Any request may get a u64 reply (REPLY_ACK: 0 ok, non-0 failure) unless listed here
# with an explicit reply body.
_ACK = _Rule(p.U64_CODEC)
_FRONTEND_REPLIES: dict[FrontendRequest, _Rule | None] = {
    _F.GET_VRING_BASE: _Rule(p.VRING_STATE),
    _F.GET_VRING_BASE_SKIP_DRAIN: _Rule(p.VRING_STATE),
    # Postcopy: the region bases; otherwise a REPLY_ACK u64.
    _F.SET_MEM_TABLE: _Rule(p.EitherCodec(p.U64_CODEC, p.MEMORY_TABLE)),
    # DPDK acknowledges SET_LOG_BASE with an empty reply, rust-vmm with a u64.
    _F.SET_LOG_BASE: _Rule(p.EitherCodec(p.U64_CODEC, p.EMPTY)),
    # "vhost-user back-end uses zero length of payload to indicate an error".
    _F.GET_CONFIG: _Rule(p.EitherCodec(p.EMPTY, p.CONFIG)),
    _F.GET_INFLIGHT_FD: _Rule(p.INFLIGHT, _one_unless_empty),
    _F.POSTCOPY_ADVISE: _Rule(p.EMPTY, _ONE),
    _F.GET_SHARED_OBJECT: _Rule(p.U64_CODEC, _zero_or_one),
    _F.SET_DEVICE_STATE_FD: _Rule(p.U64_CODEC, _zero_or_one),
    _F.CREATE_CRYPTO_SESSION: None,
    _F.GET_SHMEM_CONFIG: None,
}
_BACKEND_REPLIES: dict[BackendRequest, _Rule | None] = {
    _B.SHARED_OBJECT_LOOKUP: _Rule(p.U64_CODEC, _zero_or_one),
}


def _rule_for(request: Any, reply: bool) -> _Rule:
    if isinstance(request, FrontendRequest):
        rule = _FRONTEND_REPLIES.get(request, _ACK) if reply else _FRONTEND_REQUESTS[request]
    elif isinstance(request, BackendRequest):
        rule = _BACKEND_REPLIES.get(request, _ACK) if reply else _BACKEND_REQUESTS[request]
    else:
        raise UnknownRequest(f"{request!r} is not a FrontendRequest or BackendRequest")
    if rule is None:
        raise UnsupportedRequest(f"fastpath does not decode {request_name(request)} payloads")
    return rule


# --- Decoding and encoding -----------------------------------------------------------------------


def decode_header(
    data: bytes, *, requests: type[Request] = FrontendRequest, reply: bool = False
) -> Header:
    """Decode the first 12 bytes of data as a header of a request (or, with reply=True, a reply)
    in the `requests` id space.

    Raises TruncatedMessage, BadVersion, ReservedBitsSet, UnexpectedReplyFlag, MissingReplyFlag,
    PayloadTooLarge or UnknownRequest.
    """
    if len(data) < HEADER_SIZE:
        raise TruncatedMessage(f"a header is {HEADER_SIZE} bytes, not {len(data)}")
    request, flags, size = p.HEADER_LAYOUT.unpack_from(data)
    if flags & VERSION_MASK != VERSION:
        raise BadVersion(f"header version {flags & VERSION_MASK}, expected {VERSION}")
    if flags & ~(VERSION_MASK | FLAG_REPLY | FLAG_NEED_REPLY):
        raise ReservedBitsSet(f"header flags {flags:#x} set reserved bits")
    if flags & FLAG_REPLY and not reply:
        raise UnexpectedReplyFlag(f"request {request} carries the REPLY flag")
    if reply and not flags & FLAG_REPLY:
        raise MissingReplyFlag(f"reply to {request} lacks the REPLY flag")
    if size > p.MAX_PAYLOAD_SIZE:
        raise PayloadTooLarge(f"payload of {size} bytes exceeds {p.MAX_PAYLOAD_SIZE}")
    try:
        kind = requests(request)
    except ValueError:
        raise UnknownRequest(f"unknown {requests.__name__} id {request}") from None
    return Header(kind, flags, size)


def decode_payload(
    request: Request, payload: bytes, fds: Sequence[int] = (), *, reply: bool = False
) -> Any:
    """Decode a request's payload (or, with reply=True, its reply's) to a frozen dataclass, and
    check that `fds` holds as many descriptors as the message type carries.

    Raises only ProtocolError subclasses.
    """
    rule = _rule_for(request, reply)
    if len(payload) > p.MAX_PAYLOAD_SIZE:
        raise PayloadTooLarge(f"payload of {len(payload)} bytes exceeds {p.MAX_PAYLOAD_SIZE}")
    decoded = rule.codec.decode(request, bytes(payload))
    allowed = rule.fds(decoded)
    if len(fds) not in allowed:
        expected = " or ".join(map(str, allowed))
        raise WrongFdCount(f"{request_name(request)} carries {len(fds)} fds, not {expected}")
    return decoded


def decode_message(
    data: bytes,
    fds: Sequence[int] = (),
    *,
    requests: type[Request] = FrontendRequest,
    reply: bool = False,
) -> Message:
    """Decode one whole message (header and exactly header.size payload bytes).

    Raises only ProtocolError subclasses.
    """
    header = decode_header(data, requests=requests, reply=reply)
    body, name = data[HEADER_SIZE:], request_name(header.request)
    if len(body) < header.size:
        raise TruncatedMessage(f"{name} announces {header.size} bytes, got {len(body)}")
    if len(body) > header.size:
        raise PayloadSizeMismatch(f"{len(body) - header.size} bytes follow {name}")
    return Message(header, decode_payload(header.request, body, fds, reply=reply))


def encode_message(request: Request, payload: Any = p.NO_PAYLOAD, *, flags: int = 0) -> bytes:
    """A message's bytes: the header (version 1 plus `flags`, FLAG_REPLY and/or FLAG_NEED_REPLY)
    and the payload. With FLAG_REPLY the payload must be one the request's reply carries.

    Raises TypeError if the payload is the wrong dataclass, ValueError if a field does not fit its
    wire layout, UnsupportedRequest for requests fastpath does not encode.
    """
    if flags & ~(FLAG_REPLY | FLAG_NEED_REPLY):
        raise ValueError(f"flags {flags:#x}: only FLAG_REPLY and FLAG_NEED_REPLY may be given")
    body = _rule_for(request, bool(flags & FLAG_REPLY)).codec.encode(payload)
    return p.HEADER_LAYOUT.pack(request, VERSION | flags, len(body)) + body


def encode_reply(request: Request, payload: Any = p.NO_PAYLOAD) -> bytes:
    """A reply's bytes: a u64 (`U64(0)` for a REPLY_ACK success), a vring state for
    GET_VRING_BASE, a memory table for a postcopy SET_MEM_TABLE, and so on."""
    return encode_message(request, payload, flags=FLAG_REPLY)
