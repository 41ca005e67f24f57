"""The virtio-net device (virtio 1.2 §5.1) behind vhost-user, and its drivers.

`VirtioNet` is the device a `fastpath.vhost_user.Backend` serves: what it offers, its config
space, its queue pairs (`NetQueue`: a burst of frames in or out of one ring, in the compiled
core), the control queue, and the drain of a transmitq that stops being served (`HeldFrames`).
`NetBackend` is the same device on a socket for a program that moves frames itself;
`NetFrontend` and `NetDriver` are the other side, a virtio-net driver over
`fastpath.vhost_user.Frontend`. `fastpath.devices.net.kernels` has the functions Numba loops
call by handle.
"""

from fastpath.devices.net import kernels
from fastpath.devices.net._backend import NetBackend
from fastpath.devices.net._device import (
    DEFAULT_MAC,
    MAX_QUEUE_PAIRS,
    NET_FEATURES,
    VIRTIO_NET_F_CTRL_VQ,
    VIRTIO_NET_F_MAC,
    VIRTIO_NET_F_MQ,
    VIRTIO_NET_F_MRG_RXBUF,
    VIRTIO_NET_F_MTU,
    VIRTIO_NET_F_STATUS,
    NetCounters,
    QueuePair,
    VirtioNet,
    frame_size,
)
from fastpath.devices.net._driver import BUFFER_SIZE, NetDriver, net_driver_features
from fastpath.devices.net._frontend import NetFrontend
from fastpath.devices.net._header import NET_HDR_DTYPE, NET_HDR_SIZE, NUM_BUFFERS_OFFSET
from fastpath.devices.net._queue import HeldFrames, NetQueue

__all__ = [
    "VirtioNet",
    "QueuePair",
    "NetQueue",
    "HeldFrames",
    "NetCounters",
    "NetBackend",
    "NetFrontend",
    "NetDriver",
    "net_driver_features",
    "kernels",
    "frame_size",
    "BUFFER_SIZE",
    "DEFAULT_MAC",
    "MAX_QUEUE_PAIRS",
    "NET_FEATURES",
    "NET_HDR_DTYPE",
    "NET_HDR_SIZE",
    "NUM_BUFFERS_OFFSET",
    # Feature bits (virtio 1.2 §5.1.3).
    "VIRTIO_NET_F_MTU",
    "VIRTIO_NET_F_MAC",
    "VIRTIO_NET_F_MRG_RXBUF",
    "VIRTIO_NET_F_STATUS",
    "VIRTIO_NET_F_CTRL_VQ",
    "VIRTIO_NET_F_MQ",
]
