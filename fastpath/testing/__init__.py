"""Mocks and real peers that tests, benchmarks and fuzzers import: a guest driver for rings,
DPDK testpmd as a vhost-user front-end or back-end, QEMU with a Linux guest, qemu-storage-daemon
as a vhost-user-blk back-end, and `fastpath vhost-net` and `vhost-blk` in child processes."""

from fastpath.testing._guest_driver import GuestDriver
from fastpath.testing._processes import (
    FastpathProcess,
    VhostBlkProcess,
    VhostNetProcess,
    loaded_checkouts,
    received_frames,
    sent_frames,
    source_python,
)
from fastpath.testing._qemu import QemuError, QemuGuest
from fastpath.testing._storage_daemon import StorageDaemon, StorageDaemonError
from fastpath.testing._testpmd import PeerError, Testpmd, ensure_hugepages

__all__ = ["GuestDriver", "PeerError", "Testpmd", "ensure_hugepages", "QemuGuest", "QemuError",
           "StorageDaemon", "StorageDaemonError", "FastpathProcess", "VhostBlkProcess",
           "VhostNetProcess", "loaded_checkouts",
           "received_frames", "sent_frames", "source_python"]
