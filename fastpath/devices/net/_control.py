"""The virtio-net control virtqueue (virtio 1.2 §5.1.6.5), for front-ends that pass it to the
back-end (QEMU and DPDK's virtio-user emulate it themselves). A command is a class byte, a
command byte and its data, device-readable, then one device-writable ack byte.

Commands are rare, so they are handled in Python, once per loop turn, never per frame.

Only the multiqueue class is implemented: the device offers none of the features that the other
classes depend on (CTRL_RX for the receive mode and MAC table, CTRL_MAC_ADDR, CTRL_VLAN,
GUEST_ANNOUNCE), since it filters nothing, so §5.1.6.5 has a driver send none of them and the
device refuses any it gets (VIRTIO_NET_ERR) rather than ack a filter it would not apply.
"""

from __future__ import annotations

import logging
import os
import struct

from fastpath.errors import VringError
from fastpath.vring import DeviceQueue

log = logging.getLogger("fastpath.vhost_user")

VIRTIO_NET_OK = 0
VIRTIO_NET_ERR = 1

# §5.1.6.5 command classes: RX (0), MAC (1), VLAN (2) and ANNOUNCE (3) are refused.
CLASS_MQ = 4
MQ_VQ_PAIRS_SET = 0

MAX_COMMAND = 4096


class ControlQueue:
    """Serves one control virtqueue for a device with `max_pairs` queue pairs. With
    `multiqueue` (VIRTIO_NET_F_MQ negotiated) VQ_PAIRS_SET sets `active_pairs`; every other
    command is refused."""

    def __init__(self, queue: DeviceQueue, max_pairs: int, *, multiqueue: bool = True):
        self.queue = queue
        self.max_pairs = max_pairs
        self.multiqueue = multiqueue
        self.active_pairs = max_pairs
        self.call_fd = -1
        self.kick_fd = -1
        self.commands = 0
        self._burst = queue.new_burst(8)

    def serve(self) -> int:
        """Handle every command waiting; returns how many."""
        try:
            n = self.queue.pop(self._burst)
        except VringError as e:
            log.error("control queue broken: %s", e)
            return 0
        for i in range(n):
            if self._burst.error(i) is None:
                ack = self.handle(self._burst.readable(i, MAX_COMMAND))
                self._burst.write(i, bytes([ack]))
        if n:
            self.queue.push(self._burst)
            self.commands += n
            if self.queue.should_notify() and self.call_fd >= 0:
                os.eventfd_write(self.call_fd, 1)
        return n

    def handle(self, command: bytes) -> int:
        """The ack for one command's readable bytes."""
        if len(command) < 2:
            return VIRTIO_NET_ERR
        klass, cmd, data = command[0], command[1], command[2:]
        if self.multiqueue and klass == CLASS_MQ and cmd == MQ_VQ_PAIRS_SET and len(data) == 2:
            (pairs,) = struct.unpack("<H", data)
            if 1 <= pairs <= self.max_pairs:
                self.active_pairs = pairs
                return VIRTIO_NET_OK
        log.info("control command class %d command %d refused", klass, cmd)
        return VIRTIO_NET_ERR

