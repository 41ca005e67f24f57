"""Plain-Python virtio 1.2 split (§2.7) and packed (§2.8) virtqueues: the oracle for the core.

Each class works on a ring in a `GuestMemory`, laid out exactly as the compiled queues of
`fastpath.vring` lay it out, so a reference driver can feed a compiled device and a compiled
driver a reference device. They are written from the spec for readability, not speed; tests
compare the core against them, and `run_reference_loop` is the pure-Python baseline that
benchmarks quote the core's speed against. `blk` is the virtio-blk request path's oracle: its
request parser, a queue serving a reference ring with it, and an executor over a disk in memory.
`nvme` is the modelled NVMe controller's: its I/O commands carried out one at a time, with the
statuses the spec gives them. `inflight` is vhost-user's inflight I/O tracking as its spec
section writes it: reference devices that record their pops and pushes in a queue region step
by step (and can die between any two steps), and the reconnection steps that say what was in
flight. `paging` is the platform's EPT and guest IA-32e walks (GPA -> HPA, GVA -> GPA -> HPA)
over raw tables, written from the SDM apart from the compiled walkers they check; `vtd` is
VT-d DMA remapping (IOVA -> HPA through root, context and second-level tables), likewise.
`vmx` is the modelled VMX's exit decisions for I/O and MSR bitmaps, from the SDM's words.
`vmdq` is the SR-IOV NIC's receive steering, one frame at a time, from the spec's contract.
"""

from __future__ import annotations

import time

from fastpath.hv import PAGE_SIZE, GuestMemory
from fastpath.testing.reference import blk, inflight, nvme, paging, vmdq, vmx, vtd
from fastpath.testing.reference._common import Chain, Piece
from fastpath.testing.reference.packed import PackedDevice, PackedDriver
from fastpath.testing.reference.split import SplitDevice, SplitDriver
from fastpath.vring import ring_bytes, ring_layout

__all__ = [
    "Chain",
    "Piece",
    "SplitDevice",
    "SplitDriver",
    "PackedDevice",
    "PackedDriver",
    "run_reference_loop",
    "blk",
    "nvme",
    "inflight",
    "paging",
    "vmx",
    "vmdq",
    "vtd",
]

_RING_BASE = 0x1000


def run_reference_loop(packed: bool, size: int, burst: int, chains: int,
                       copy_bytes: int = 64) -> float:
    """Run `chains` buffers through a reference driver and device; returns chains per second.

    The job `fastpath bench vring` times on the core: the driver offers up to `burst`
    single-descriptor device-readable buffers of copy_bytes; the device pops up to `burst`,
    copies each one's bytes out and pushes it back used; the driver collects. One ring in its
    own memory, nothing else (no kick or notification decisions, as in the compiled loop).
    """
    if min(size, burst, chains, copy_bytes) < 1:
        raise ValueError("size, burst, chains and copy_bytes must be positive")
    addresses = ring_layout(size, _RING_BASE, packed)
    pool = -(-(_RING_BASE + ring_bytes(size, packed)) // 64) * 64
    memory = GuestMemory([(0, -(-(pool + size * copy_bytes) // PAGE_SIZE) * PAGE_SIZE)])
    driver_class, device_class = (PackedDriver, PackedDevice) if packed else (SplitDriver,
                                                                              SplitDevice)
    driver = driver_class(memory, size, addresses)
    device = device_class(memory, size, addresses)
    free_buffers = [pool + k * copy_bytes for k in range(size)]
    for address in free_buffers:
        memory.write(address, bytes(k & 0xFF for k in range(copy_bytes)))
    buffer_of: dict[int, int] = {}
    copied = bytearray()
    offered = done = 0
    start = time.perf_counter()
    while done < chains:
        for _ in range(min(burst, driver.num_free, chains - offered)):
            address = free_buffers.pop()
            buffer_of[driver.add(readable=[(address, copy_bytes)])] = address
            offered += 1
        popped = device.pop(burst)
        for chain in popped:
            copied[:] = device.readable(chain)
        device.push([(chain, 0) for chain in popped])
        for chain_id, _ in driver.collect(burst):
            free_buffers.append(buffer_of.pop(chain_id))
            done += 1
    elapsed = time.perf_counter() - start
    if len(copied) != copy_bytes:
        raise AssertionError(f"the device copied {len(copied)} bytes, not {copy_bytes}")
    memory.close()
    return chains / elapsed
