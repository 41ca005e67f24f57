"""vhost-user over Unix sockets, the protocol only: it knows no device.

`Backend` is the protocol engine for one connection (one message per `handle_request()`); it
serves a `Device`, which a device author implements (fastpath.devices.net has virtio-net). A
device that sets `Device.tracks_inflight` gets vhost-user's inflight I/O tracking
(INFLIGHT_SHMFD): its rings record what is in flight in the area GET/SET_INFLIGHT_FD pass
around, and after a back-end restart pop those requests again first (see `Device`).
`BackendServer` listens and `BackendClient` connects, each driving an engine per connection
without ever waiting on one front-end. `Frontend` drives any back-end from the other side
(negotiation, memory table, vrings, kicks, the back-end channel). A `Channel` reads and writes
whole messages, fds attached, on a Unix socket; `Gate` keeps data-plane threads out of the
rings while the engine changes them. The wire format is in `fastpath.vhost_user.wire`.
"""

from fastpath.vhost_user import wire
from fastpath.vhost_user._backend import VHOST_F_LOG_ALL, Backend, VringSetup
from fastpath.vhost_user._channel import Channel, Received
from fastpath.vhost_user._device import ENGINE_PROTOCOL_FEATURES, Device
from fastpath.vhost_user._frontend import Frontend, Vring
from fastpath.vhost_user._gate import Gate
from fastpath.vhost_user._server import BackendClient, BackendServer

__all__ = [
    "Backend",
    "Device",
    "ENGINE_PROTOCOL_FEATURES",
    "VHOST_F_LOG_ALL",
    "VringSetup",
    "BackendServer",
    "BackendClient",
    "Frontend",
    "Vring",
    "Channel",
    "Received",
    "Gate",
    "wire",
]
