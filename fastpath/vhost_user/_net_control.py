"""The virtio-net control virtqueue (virtio 1.2 §5.1.6.5), for front-ends that pass it to the
back-end (QEMU and DPDK's virtio-user emulate it themselves). A command is a class byte, a
command byte and its data, device-readable, then one device-writable ack byte.

Commands are rare, so they are handled in Python, once per loop turn, never per frame.
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

CLASS_RX, CLASS_MAC, CLASS_VLAN, CLASS_ANNOUNCE, CLASS_MQ = 0, 1, 2, 3, 4
RX_COMMANDS = range(6)          # PROMISC ALLMULTI ALLUNI NOMULTI NOUNI NOBCAST: on/off byte
MAC_TABLE_SET, MAC_ADDR_SET = 0, 1
VLAN_ADD, VLAN_DEL = 0, 1
ANNOUNCE_ACK = 0
MQ_VQ_PAIRS_SET = 0

MAX_COMMAND = 4096


class ControlQueue:
    """Serves one control virtqueue for a device with `max_pairs` queue pairs.

    The device receives every frame whatever the receive filters say (it does not filter),
    so RX-mode, MAC-table and VLAN commands succeed without changing what is delivered.
    """

    def __init__(self, queue: DeviceQueue, max_pairs: int, mac: bytearray):
        self.queue = queue
        self.max_pairs = max_pairs
        self.mac = mac
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
        if klass == CLASS_RX and cmd in RX_COMMANDS and len(data) == 1:
            return VIRTIO_NET_OK
        if klass == CLASS_MAC and cmd == MAC_ADDR_SET and len(data) == 6:
            self.mac[:] = data
            return VIRTIO_NET_OK
        if klass == CLASS_MAC and cmd == MAC_TABLE_SET:
            return VIRTIO_NET_OK if _mac_tables_fit(data) else VIRTIO_NET_ERR
        if klass == CLASS_VLAN and cmd in (VLAN_ADD, VLAN_DEL) and len(data) == 2:
            return VIRTIO_NET_OK
        if klass == CLASS_ANNOUNCE and cmd == ANNOUNCE_ACK:
            return VIRTIO_NET_OK
        if klass == CLASS_MQ and cmd == MQ_VQ_PAIRS_SET and len(data) == 2:
            (pairs,) = struct.unpack("<H", data)
            if 1 <= pairs <= self.max_pairs:
                self.active_pairs = pairs
                return VIRTIO_NET_OK
        log.info("control command class %d command %d refused", klass, cmd)
        return VIRTIO_NET_ERR


def _mac_tables_fit(data: bytes) -> bool:
    # Two tables (unicast, multicast), each a le32 count and that many 6-byte addresses.
    at = 0
    for _ in range(2):
        if len(data) < at + 4:
            return False
        (entries,) = struct.unpack_from("<I", data, at)
        at += 4 + 6 * entries
    return at == len(data)
