"""`fastpath bench vring`: virtqueue chains per second, compiled core beside the pure-Python
reference, in one process and across two processes pinned to two cores.

The job measured: a driver offers single-descriptor buffers, a device pops them in bursts,
copies each one's first `copy_bytes` bytes out and pushes it back used, the driver collects it.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import sys
import time
from dataclasses import asdict, dataclass, field

import numpy as np

from fastpath.bench._report import environment, print_table, write_json
from fastpath.hv import GuestMemory
from fastpath.vring import (
    DRIVER_CHAIN_DTYPE,
    SEGMENT_DTYPE,
    USED_ELEM_DTYPE,
    PackedDeviceQueue,
    PackedDriverQueue,
    SplitDeviceQueue,
    SplitDriverQueue,
    ring_layout,
)

RING_BASE = 0x1000
BUFFER_BASE = 1 << 20
BUFFER_SIZE = 2048


class Rig:
    """One ring in fresh guest memory with both sides and the arrays the loops need."""

    def __init__(self, packed: bool, size: int, burst: int, copy_bytes: int):
        self.packed = packed
        self.burst = burst
        self.copy_bytes = copy_bytes
        self.memory = GuestMemory([(0, BUFFER_BASE + size * BUFFER_SIZE)])
        addresses = ring_layout(size, RING_BASE, packed)
        if packed:
            self.driver = PackedDriverQueue(self.memory, size, addresses)
            self.device = PackedDeviceQueue(self.memory, size, addresses)
        else:
            self.driver = SplitDriverQueue(self.memory, size, addresses)
            self.device = SplitDeviceQueue(self.memory, size, addresses)
        # The driver offers `burst` buffers at a time, each one `copy_bytes` long.
        self.driver_chains = np.zeros(burst, dtype=DRIVER_CHAIN_DTYPE)
        self.driver_chains["first_seg"] = np.arange(burst)
        self.driver_chains["nseg"] = 1
        self.driver_segments = np.zeros(burst, dtype=SEGMENT_DTYPE)
        self.driver_segments["addr"] = BUFFER_BASE + np.arange(burst) * BUFFER_SIZE
        self.driver_segments["len"] = copy_bytes
        self.used = np.zeros(burst, dtype=USED_ELEM_DTYPE)
        self.popped = self.device.new_burst(burst)
        self.copy_to = np.zeros(burst * copy_bytes, dtype=np.uint8)
        # A flag in shared memory that tells forked loops to give up.
        self.stop = self.memory.view(0, 8).view(np.uint64)

    def driver_args(self, total: int) -> tuple:
        return (self.packed, self.driver.handle, self.driver_chains.ctypes.data,
                self.driver_segments.ctypes.data, self.used.ctypes.data, self.burst, total,
                self.stop)

    def device_args(self, total: int) -> tuple:
        b = self.popped
        return (self.packed, self.device.handle, b.chains.ctypes.data, b.segments.ctypes.data,
                len(b.segments), self.copy_to.ctypes.data, self.burst, self.copy_bytes, total,
                self.stop)

    def one_process(self, total: int) -> float:
        """Chains per second with driver and device in this thread."""
        from fastpath.bench._vring_kernels import one_process_loop

        b = self.popped
        args = (self.packed, self.driver.handle, self.device.handle,
                self.driver_chains.ctypes.data, self.driver_segments.ctypes.data,
                self.used.ctypes.data, b.chains.ctypes.data, b.segments.ctypes.data,
                len(b.segments), self.copy_to.ctypes.data, self.burst, self.copy_bytes)
        start = time.perf_counter()
        moved = one_process_loop(*args, total)
        elapsed = time.perf_counter() - start
        if moved < 0:
            raise RuntimeError(f"device loop failed with core error {moved}")
        return moved / elapsed


def _pinned(cpu: int | None, loop_name: str, rig: Rig, total: int, barrier, results) -> None:
    from fastpath.bench import _vring_kernels

    if cpu is not None:
        os.sched_setaffinity(0, {cpu})
    loop = getattr(_vring_kernels, loop_name)
    args = rig.driver_args(total) if loop_name == "driver_loop" else rig.device_args(total)
    barrier.wait()
    start = time.perf_counter()
    moved = loop(*args)
    elapsed = time.perf_counter() - start
    queue = rig.driver if loop_name == "driver_loop" else rig.device
    results.send((moved, elapsed, queue.errors))


def two_process(packed: bool, size: int, burst: int, copy_bytes: int, total: int,
                timeout: float) -> float:
    """Chains per second with the driver and the device in two processes on two cores.

    Each run gets a fresh ring: the parent never sees the state the children leave behind.
    """
    from fastpath.bench import _vring_kernels

    rig = Rig(packed, size, burst, copy_bytes)
    # Compile (or load) both loops here, so that the forked children time only the work.
    _vring_kernels.driver_loop(*rig.driver_args(0))
    _vring_kernels.device_loop(*rig.device_args(0))
    cpus = sorted(os.sched_getaffinity(0))
    driver_cpu, device_cpu = (cpus[0], cpus[1]) if len(cpus) > 1 else (None, None)
    context = multiprocessing.get_context("fork")
    barrier = context.Barrier(2)
    ends = {}
    children = []
    for role, cpu in (("driver_loop", driver_cpu), ("device_loop", device_cpu)):
        ends[role], child_end = context.Pipe(duplex=False)
        children.append(context.Process(target=_pinned,
                                         args=(cpu, role, rig, total, barrier, child_end)))
    for child in children:
        child.start()
    try:
        reports = {}
        deadline = time.monotonic() + timeout
        for role, end in ends.items():
            if not end.poll(max(0.0, deadline - time.monotonic())):
                raise TimeoutError(f"two-process run did not move {total} chains in {timeout} s")
            reports[role] = end.recv()
        moved, elapsed, device_errors = reports["device_loop"]
        driver_errors = reports["driver_loop"][2]
        if moved < 0 or device_errors or driver_errors:
            raise RuntimeError(f"two-process run failed: moved {moved}, device errors "
                               f"{device_errors}, driver errors {driver_errors}")
        return moved / elapsed
    finally:
        rig.stop[0] = 1
        for child in children:
            child.join(5)
            if child.is_alive():
                child.kill()
                child.join()
        rig.memory.close()


@dataclass
class Row:
    """One line of the result table."""

    ring: str
    burst: int
    one_process: float
    two_process: float | None
    reference: float
    runs: dict = field(default_factory=dict)

    @property
    def ratio(self) -> float:
        return self.one_process / self.reference


def _reference(packed: bool, size: int, burst: int, chains: int, copy_bytes: int) -> float:
    from fastpath.testing.reference import run_reference_loop

    return run_reference_loop(packed, size, burst, chains, copy_bytes)


def measure(args: argparse.Namespace, progress) -> list[Row]:
    """Run every (ring, burst) case, alternating the sides; one Row per case."""
    rows = []
    cases = [(ring, burst) for ring in args.rings for burst in args.bursts]
    for n, (ring, burst) in enumerate(cases, 1):
        packed = ring == "packed"
        progress(f"[{n}/{len(cases)}] {ring} ring, burst {burst}")
        rig = Rig(packed, args.queue_size, burst, args.copy_bytes)
        rig.one_process(min(args.chains, 10_000))  # compile, warm caches
        runs = {"one_process": [], "two_process": [], "reference": []}
        # Alternate the sides of the comparison so that drift on this machine hits both.
        for _ in range(args.repeat):
            runs["one_process"].append(rig.one_process(args.chains))
            runs["reference"].append(
                _reference(packed, args.queue_size, burst, args.reference_chains,
                           args.copy_bytes)
            )
            if args.two_process:
                runs["two_process"].append(two_process(packed, args.queue_size, burst,
                                                       args.copy_bytes, args.chains,
                                                       args.timeout))
        rows.append(Row(ring, burst, max(runs["one_process"]),
                        max(runs["two_process"]) if args.two_process else None,
                        max(runs["reference"]), runs))
        rig.memory.close()
    return rows


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of `fastpath bench vring`."""
    parser.add_argument("--rings", type=_list_of(str, {"split", "packed"}),
                        default="split,packed", help="ring types, comma-separated")
    parser.add_argument("--bursts", type=_list_of(int), default="1,32,256",
                        help="burst sizes, comma-separated")
    parser.add_argument("--queue-size", type=int, default=256, help="descriptors per ring")
    parser.add_argument("--copy-bytes", type=int, default=64,
                        help="bytes the device copies out of each chain")
    parser.add_argument("--chains", type=int, default=5_000_000,
                        help="chains per compiled run")
    parser.add_argument("--reference-chains", type=int, default=20_000,
                        help="chains per pure-Python reference run")
    parser.add_argument("--repeat", type=int, default=3,
                        help="alternated runs of each side; the best of each is reported")
    parser.add_argument("--no-two-process", dest="two_process", action="store_false",
                        help="skip the runs with driver and device in two pinned processes")
    parser.add_argument("--timeout", type=float, default=60.0,
                        help="seconds a two-process run may take before it is stopped")
    parser.add_argument("--json", metavar="FILE", help="also write the results as JSON")


def _list_of(kind, allowed=None):
    def parse(text: str):
        items = [kind(x) for x in text.split(",") if x]
        bad = [x for x in items if allowed is not None and x not in allowed]
        if bad or not items:
            choices = f" of {'/'.join(sorted(allowed))}" if allowed else ""
            raise argparse.ArgumentTypeError(f"expected a comma-separated list{choices}")
        return items

    return parse


def run(args: argparse.Namespace) -> int:
    """`fastpath bench vring`: measure, print the table, write JSON if asked."""
    env = environment()
    print(f"fastpath bench vring  ({env['fastpath']}, git {env['git']}, {env['build']} build, "
          f"{env['cpus']} CPUs, queue {args.queue_size}, {args.copy_bytes}-byte copy)",
          flush=True)
    if env["build"] == "debug":
        print("warning: the core is a FASTPATH_DEBUG build; figures are not representative "
              "(rebuild with `make build`)", file=sys.stderr)

    def progress(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    rows = measure(args, progress)
    print_table(
        ["ring", "burst", "1 process (M/s)", "2 processes (M/s)", "reference (k/s)",
         "core/reference"],
        [[r.ring, r.burst, f"{r.one_process / 1e6:.1f}",
          "-" if r.two_process is None else f"{r.two_process / 1e6:.1f}",
          f"{r.reference / 1e3:.0f}", f"{r.ratio:.0f}x"] for r in rows],
    )
    if args.json:
        write_json(args.json, {"benchmark": "vring", "environment": env, "arguments": vars(args)
                               | {"func": None}, "results": [asdict(r) | {"ratio": r.ratio}
                                                             for r in rows]})
        print(f"results written to {args.json}")
    return 0
