"""`Device`: what a virtio device implements to sit behind the protocol engine (`Backend`).

The engine speaks the protocol: it negotiates what the device offers, maps the front-end's
memory, keeps each vring's setup and turns started rings into queues. Everything of the device
itself stays in the device: its config space, its own requests (NET_SET_MTU for net), the
queues it serves and how. Every hook has a default, so a device implements what it needs.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager, nullcontext
from typing import TYPE_CHECKING, Any

from fastpath.errors import RequestRefused
from fastpath.vhost_user._protocol import FrontendRequest, ProtocolFeature
from fastpath.vring import MAX_QUEUE_SIZE, VIRTIO_F_VERSION_1

if TYPE_CHECKING:
    from fastpath.vhost_user._backend import Backend

# What the engine implements of the protocol (bits 0-19 only; see ProtocolFeature): a device
# offers these or fewer. INFLIGHT_SHMFD goes out only for a device that tracks what is in
# flight (Device.tracks_inflight).
ENGINE_PROTOCOL_FEATURES = (
    ProtocolFeature.MQ
    | ProtocolFeature.LOG_SHMFD
    | ProtocolFeature.REPLY_ACK
    | ProtocolFeature.BACKEND_REQ
    | ProtocolFeature.MTU
    | ProtocolFeature.CONFIG
    | ProtocolFeature.INFLIGHT_SHMFD
    | ProtocolFeature.RESET_DEVICE
    | ProtocolFeature.CONFIGURE_MEM_SLOTS
    | ProtocolFeature.STATUS
)


class Device:
    """A virtio device behind a vhost-user back-end (subclass it; override what applies).

    What it offers is read when a connection starts: `features` (virtio feature bits: VERSION_1
    and the ring features it serves, and its own), `protocol_features` (some of
    ENGINE_PROTOCOL_FEATURES), `queues` (virtqueues), `queue_num` (what GET_QUEUE_NUM reports:
    queue pairs for net) and `max_queue_size`.

    Data-plane threads may poll the rings while the engine runs. Before a request changes what
    they touch (ring state, fds, memory), the engine enters `quiesced()`, which returns once no
    data-plane thread is inside the rings and keeps them out until it exits; `rings_changed`
    runs inside it, after the change, for the device to pick up the new state.

    `tracks_inflight`: a device that completes requests out of order (blk) sets it to survive
    a back-end restart (vhost-user's "Inflight I/O tracking"). The engine then offers
    INFLIGHT_SHMFD (if `protocol_features` has it), answers GET_INFLIGHT_FD with a new area,
    keeps the area SET_INFLIGHT_FD hands back, and gives each started ring its queue region:
    the ring's queue (`VringSetup.queue`, seen in `rings_changed`) records every chain it pops
    and pushes there (see fastpath.vring's `DeviceQueue`). A queue started after a restart
    pops the chains that were in flight first, oldest first, before new ones, and goes on
    from the ring position they leave (for packed rings the region's, whatever the front-end
    says: QEMU cannot restore it after a crash); `queue.resubmit_pending` and
    `queue.resubmit_ids()` say which are still to come. The device executes them as new.
    Every new queue over a ring does this, a ring moved to a new memory table or given a new
    kick fd included (libvhost-user recovers at every SET_VRING_KICK too): a device must not
    complete into the ring the requests it took from a queue it let go of (it detaches them),
    since the new queue hands them out again, and should let those finish before it executes
    the new queue's (a block device would otherwise let an old write land after a new one).
    """

    features: int = 1 << VIRTIO_F_VERSION_1
    protocol_features: int = ENGINE_PROTOCOL_FEATURES
    queues: int = 1
    max_queue_size: int = MAX_QUEUE_SIZE
    # True for a device that uses every buffer in the order it took it, with none in flight
    # once a ring stops (net): a ring can then be resumed from its used index.
    uses_buffers_in_order: bool = False
    # True for a device whose rings record what is in flight for a restarted back-end to pop
    # again (INFLIGHT_SHMFD; see above).
    tracks_inflight: bool = False

    @property
    def queue_num(self) -> int:
        """What GET_QUEUE_NUM reports: the virtqueues, unless the device counts otherwise."""
        return self.queues

    def read_config(self, offset: int, size: int) -> bytes:
        """`size` bytes of the config space from `offset` (GET_CONFIG); bytes past its end
        read as zeros. Raise RequestRefused where there is none."""
        raise RequestRefused("the device has no config space")

    def write_config(self, offset: int, data: bytes) -> None:
        """Write the config space (SET_CONFIG); raise RequestRefused for a write the device
        does not take."""
        raise RequestRefused("the device's config space is read-only")

    def requests(self) -> Mapping[FrontendRequest, Callable[[Any], Any]]:
        """Device-specific requests and their handlers (payload in, reply payload or None out;
        RequestRefused for one the device cannot carry out)."""
        return {}

    def quiesced(self) -> AbstractContextManager:
        """A context in which no data-plane thread touches this device's rings or memory."""
        return nullcontext()

    def rings_changed(self, backend: Backend) -> None:
        """Rings were started, stopped, enabled or disabled, or their fds, the memory table or
        the features changed (the device is quiesced)."""

    def stopping(self, backend: Backend, index: int) -> None:
        """GET_VRING_BASE is about to stop vring `index` (quiesced): finish what is in it."""

    def closed(self, backend: Backend) -> None:
        """The connection is closing: let go of every ring (the device is quiesced)."""
