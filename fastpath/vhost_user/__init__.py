"""vhost-user back-end and front-end over Unix sockets.

`NetBackend` is a virtio-net back-end on a socket for a program that moves frames itself
(`rx_burst`, `tx_burst`); `fastpath vhost-net` is the same device with a forwarding loop.
`Frontend` drives any back-end from the other side (negotiation, memory table, vrings, kicks);
`NetFrontend` is a virtio-net driver on top of it that sends frames and reads what comes back.

`decode_header` and `decode_payload` (or `decode_message` for a whole message) turn bytes and a
count of received fds into a `Header` and a frozen payload dataclass, raising a `ProtocolError`
subclass (fastpath.errors) for anything malformed; `encode_message` and `encode_reply` are
their inverses. A `Channel` reads and writes whole messages, fds attached, on a Unix socket.
"""

from fastpath.vhost_user._channel import Channel, Received
from fastpath.vhost_user._frontend import Frontend, Vring
from fastpath.vhost_user._net_backend import NetBackend
from fastpath.vhost_user._net_frontend import NetFrontend
from fastpath.vhost_user._net_queue import NET_HDR_SIZE
from fastpath.vhost_user._payloads import (
    MAX_CONFIG_SIZE,
    MAX_FDS,
    MAX_MEM_REGIONS,
    MAX_PAYLOAD_SIZE,
    NO_PAYLOAD,
    U64,
    VRING_F_LOG,
    VRING_INDEX_MASK,
    VRING_NOFD_FLAG,
    ConfigFlag,
    DeviceConfig,
    DeviceStateTransfer,
    Inflight,
    IotlbAccess,
    IotlbMessage,
    IotlbType,
    LogArea,
    MemoryRegion,
    MemoryTable,
    NoPayload,
    SharedObject,
    VringAddress,
    VringArea,
    VringFile,
    VringState,
)
from fastpath.vhost_user._protocol import (
    FLAG_NEED_REPLY,
    FLAG_REPLY,
    HEADER_SIZE,
    VERSION,
    VERSION_MASK,
    VHOST_USER_F_PROTOCOL_FEATURES,
    BackendRequest,
    FrontendRequest,
    Header,
    Message,
    ProtocolFeature,
    decode_header,
    decode_message,
    decode_payload,
    encode_message,
    encode_reply,
)
from fastpath.vhost_user._virtio_net import NetCounters

__all__ = [
    "NetBackend",
    "NetFrontend",
    "Frontend",
    "Vring",
    "NetCounters",
    "NET_HDR_SIZE",
    "Channel",
    "Received",
    # Requests, features, header.
    "FrontendRequest",
    "BackendRequest",
    "ProtocolFeature",
    "VHOST_USER_F_PROTOCOL_FEATURES",
    "HEADER_SIZE",
    "VERSION",
    "VERSION_MASK",
    "FLAG_REPLY",
    "FLAG_NEED_REPLY",
    "MAX_PAYLOAD_SIZE",
    "MAX_MEM_REGIONS",
    "MAX_CONFIG_SIZE",
    "MAX_FDS",
    "VRING_INDEX_MASK",
    "VRING_NOFD_FLAG",
    "VRING_F_LOG",
    "Header",
    "Message",
    # Payloads.
    "NoPayload",
    "NO_PAYLOAD",
    "U64",
    "VringState",
    "VringFile",
    "VringAddress",
    "MemoryRegion",
    "MemoryTable",
    "LogArea",
    "IotlbMessage",
    "IotlbType",
    "IotlbAccess",
    "DeviceConfig",
    "ConfigFlag",
    "VringArea",
    "Inflight",
    "SharedObject",
    "DeviceStateTransfer",
    # Decoding and encoding.
    "decode_header",
    "decode_payload",
    "decode_message",
    "encode_message",
    "encode_reply",
]
