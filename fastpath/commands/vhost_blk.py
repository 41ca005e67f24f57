"""`fastpath vhost-blk`: a vhost-user-blk back-end over a bdev, served by a reactor."""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import threading
import time

from fastpath.devices.blk import MAX_QUEUES, BlkDisk, VirtioBlk
from fastpath.spdk_like import BDEV_KINDS, BlkTarget, Reactors, open_bdev
from fastpath.vhost_user import BackendClient, BackendServer, Gate

log = logging.getLogger("fastpath.vhost_user")

# What --print-capabilities prints (the vhost-user back-end program convention).
CAPABILITIES = {"type": "block"}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The command's options."""
    kinds = ", ".join(f"{k.name}:{k.argument}" for k in BDEV_KINDS.values())
    parser.add_argument("--socket-path", "--socket", dest="socket", metavar="PATH",
                        help="the vhost-user Unix socket: listened on, or with --client "
                        "connected to (required unless --print-capabilities)")
    parser.add_argument("--bdev", default="malloc:64M",
                        help=f"the disk: {kinds} (options as ,block_size=4096)")
    parser.add_argument("--readonly", action="store_true",
                        help="offer a read-only disk (VIRTIO_BLK_F_RO); writes, discards and "
                        "write-zeroes fail")
    parser.add_argument("--queues", type=int, default=1, metavar="N",
                        help=f"request queues offered (1 to {MAX_QUEUES}; more than one "
                        "offers VIRTIO_BLK_F_MQ)")
    parser.add_argument("--client", action="store_true",
                        help="connect to a front-end listening on PATH (QEMU server=on) and "
                        "reconnect whenever it goes away")
    parser.add_argument("--cpu", type=int, default=None,
                        help="the CPU the reactor runs on (default: where the system puts it)")
    parser.add_argument("--serial", default="fastpath",
                        help="the disk's ID string (GET_ID, up to 20 ASCII characters)")
    parser.add_argument("--print-capabilities", action="store_true",
                        help="print the back-end's capabilities as JSON and exit")
    parser.add_argument("--stats-period", type=float, default=1.0, metavar="SECONDS",
                        help="print the bdev's rates this often (0: only at exit)")
    parser.add_argument("--duration", type=float, default=0.0, metavar="SECONDS",
                        help="exit after this long (0: run until SIGINT or SIGTERM)")
    parser.add_argument("--json", metavar="FILE", help="write the final statistics here")
    parser.add_argument("-v", "--verbose", action="store_true", help="log each connection")


def run(args: argparse.Namespace) -> int:
    """Serve front-ends until a signal or --duration; returns the exit status (0 after SIGINT
    or SIGTERM too)."""
    if args.print_capabilities:
        print(json.dumps(CAPABILITIES))
        return 0
    if not args.socket:
        raise SystemExit("fastpath vhost-blk: --socket-path PATH is required")
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(message)s", stream=sys.stderr)
    if not 1 <= args.queues <= MAX_QUEUES:
        raise SystemExit(f"fastpath vhost-blk: --queues must be 1 to {MAX_QUEUES}")
    try:
        bdev = open_bdev(args.bdev, read_only=args.readonly)
        disk = BlkDisk(capacity=bdev.size, block_size=bdev.block_size,
                       read_only=args.readonly, serial=args.serial.encode())
        reactors = Reactors([args.cpu])
    except (ValueError, OSError) as e:
        raise SystemExit(f"fastpath vhost-blk: {e}") from e
    gate = Gate()
    target = BlkTarget(gate, bdev, host=reactors[0])
    connections = 0

    def make_backend(channel):
        nonlocal connections
        connections += 1
        device = VirtioBlk(gate, disk, num_queues=args.queues)
        target.attach(device)
        return device.backend(channel)

    adapter_class = BackendClient if args.client else BackendServer
    adapter = adapter_class(args.socket, make_backend)
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    reactors.start()
    print(f"fastpath vhost-blk: {'connecting to' if args.client else 'listening on'} "
          f"{args.socket}, {bdev!r}, {args.queues} queue(s)", file=sys.stderr, flush=True)
    started = time.monotonic()
    last_report, last = started, bdev.statistics()
    try:
        while not stop.is_set():
            adapter.serve_once(0.1)
            now = time.monotonic()
            if args.duration and now - started >= args.duration:
                break
            if args.stats_period and now - last_report >= args.stats_period:
                stats = bdev.statistics()
                _print_rates(stats, last, now - last_report)
                last_report, last = now, stats
    finally:
        adapter.close()
        reactors.stop()
        stats = bdev.statistics()
        bdev.close()
    print(f"fastpath vhost-blk: {connections} connection(s); {_format(stats)}",
          file=sys.stderr, flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"bdev": args.bdev, "queues": args.queues, "connections": connections,
                       "statistics": vars(stats)}, f, indent=2)
    return 0


def _format(stats) -> str:
    return (f"read {stats.read_ops} ({stats.read_bytes} bytes), write {stats.write_ops} "
            f"({stats.write_bytes} bytes), flush {stats.flush_ops}, discard "
            f"{stats.discard_ops}, write-zeroes {stats.write_zeroes_ops}, errors "
            f"{stats.errors}")


def _print_rates(now, before, seconds: float) -> None:
    ops = (now.read_ops + now.write_ops) - (before.read_ops + before.write_ops)
    if seconds <= 0 or ops == 0:
        return
    moved = (now.read_bytes + now.write_bytes) - (before.read_bytes + before.write_bytes)
    print(f"{ops / seconds / 1e3:10.1f} K IOPS {moved / seconds / (1 << 20):10.1f} MiB/s   "
          f"({_format(now)})", file=sys.stderr, flush=True)
