"""`fastpath vhost-net`: a virtio-net vhost-user back-end that loops each queue pair's
transmitq back to its receiveq (io, macswap), drops what it receives, or sends frames of a size
into every receiveq (txonly), with statistics."""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time

import fastpath
from fastpath.devices.net import MAX_QUEUE_PAIRS, NetCounters, VirtioNet
from fastpath.pmd import FORWARDER_MODES, MIN_SIZE, Forwarder, PcapCapture
from fastpath.vhost_user import BackendClient, BackendServer, Gate

log = logging.getLogger("fastpath.vhost_user")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The command's options."""
    parser.add_argument("--socket-path", "--socket", dest="socket", metavar="PATH",
                        help="the vhost-user Unix socket: listened on, or with --client "
                        "connected to (required unless --print-capabilities)")
    parser.add_argument("--print-capabilities", action="store_true",
                        help="print the back-end's capabilities as JSON (the vhost-user "
                        "back-end program convention) and exit")
    parser.add_argument("--client", action="store_true",
                        help="connect to a front-end listening on PATH (QEMU server=on, "
                        "DPDK server=1) and reconnect whenever it goes away")
    parser.add_argument("--queues", type=int, default=1, metavar="N",
                        help=f"queue pairs offered (1 to {MAX_QUEUE_PAIRS})")
    parser.add_argument("--fwd", choices=sorted(FORWARDER_MODES), default="io",
                        help="io: frames back unchanged; macswap: MACs swapped; drop: "
                        "count and free; txonly: send --size frames into every receiveq as "
                        "fast as the driver posts buffers (and free what it transmits)")
    parser.add_argument("--size", type=int, default=64, metavar="BYTES",
                        help="with --fwd txonly, the length of each frame sent (a UDP frame, "
                        f"without FCS; {MIN_SIZE} to the largest frame, 2048 or MTU + 64)")
    parser.add_argument("--burst", type=int, default=32, help="frames per receive")
    parser.add_argument("--mtu", type=int, default=0,
                        help="offer VIRTIO_NET_F_MTU with this MTU (0: do not)")
    parser.add_argument("--mac", default="52:54:00:12:34:56", help="the device's MAC address")
    parser.add_argument("--backoff", type=int, default=0, metavar="ROUNDS",
                        help="sleep on the kick eventfds after this many idle polls of every "
                        "queue (0: busy-poll, the fastest, one core at 100%%)")
    parser.add_argument("--stats-period", type=float, default=1.0, metavar="SECONDS",
                        help="print rates this often while running (0: only at exit)")
    parser.add_argument("--duration", type=float, default=0.0, metavar="SECONDS",
                        help="exit after this long (0: run until SIGINT or SIGTERM)")
    parser.add_argument("--pcap", metavar="FILE",
                        help="record every frame received (from every transmitq) here")
    parser.add_argument("--json", metavar="FILE",
                        help="write the final statistics here (with --backoff, also what woke "
                        "the poll thread: kicks_read, the sum of the kick eventfd counts it "
                        "read; sleeps; woken_by_eventfd, the sleeps a kick ended)")
    parser.add_argument("-v", "--verbose", action="store_true", help="log each connection")


class Connections:
    """Each front-end's device while connected, and the totals of those that left."""

    def __init__(self):
        self.live: dict[int, VirtioNet] = {}    # connection number -> device
        self._since: dict[int, float] = {}      # connection number -> when it came
        self.finished: list[dict] = []
        self.finished_totals = NetCounters()
        self.count = 0

    def add(self, device: VirtioNet) -> None:
        """A front-end connected."""
        self.count += 1
        self.live[self.count] = device
        self._since[self.count] = time.monotonic()

    def finish(self, device: VirtioNet, drops: list[tuple[int, int]]) -> dict:
        """A front-end left: its summary, kept for the end."""
        number = next(n for n, d in self.live.items() if d is device)
        del self.live[number]
        for c in device.counters():
            self.finished_totals.add(c)
        pairs = [{"queue_pair": k, **vars(c), "fwd_dropped": no_room, "rings_broken": broken}
                 for k, (c, (no_room, broken)) in enumerate(zip(device.counters(), drops,
                                                                strict=True))]
        # How long it was connected: what a rate of its counters is taken over.
        seconds = time.monotonic() - self._since.pop(number)
        summary = {"connection": number, "seconds": seconds, "queue_pairs": pairs}
        self.finished.append(summary)
        return summary

    def snapshot(self) -> dict:
        """{(connection, pair): counters} of the live pairs, and {"all": totals}."""
        snap: dict = {}
        total = NetCounters()
        total.add(self.finished_totals)
        for number, device in self.live.items():
            for k, c in enumerate(device.counters()):
                snap[number, k] = c
                total.add(c)
        snap["all"] = total
        return snap


def _parse_mac(text: str) -> bytes:
    try:
        mac = bytes.fromhex(text.replace(":", ""))
    except ValueError:
        mac = b""
    if len(mac) != 6:
        raise SystemExit(f"fastpath vhost-net: --mac {text!r} is not a MAC address")
    return mac


# What --print-capabilities prints: the vhost-user back-end program convention's JSON, for
# a program (libvirt, say) that looks for back-ends of a device type.
CAPABILITIES = {"type": "net"}


def run(args: argparse.Namespace) -> int:
    """Run the back-end until a signal or --duration; returns the exit status (0 after
    SIGINT or SIGTERM too)."""
    if args.print_capabilities:
        print(json.dumps(CAPABILITIES))
        return 0
    if not args.socket:
        raise SystemExit("fastpath vhost-net: --socket-path PATH is required")
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(message)s", stream=sys.stderr)
    if not 1 <= args.queues <= MAX_QUEUE_PAIRS:
        raise SystemExit(f"fastpath vhost-net: --queues must be 1 to {MAX_QUEUE_PAIRS}")
    mac = _parse_mac(args.mac)
    frame_size = max(2048, args.mtu + 64)
    gate = Gate()
    connections = Connections()

    def finished(device: VirtioNet, drops: list[tuple[int, int]]) -> None:
        summary = connections.finish(device, drops)
        print(_format_summary(summary, "front-end left"), file=sys.stderr, flush=True)

    capture = PcapCapture(args.pcap, snaplen=frame_size) if args.pcap else None
    if not MIN_SIZE <= args.size <= frame_size:
        raise SystemExit(f"fastpath vhost-net: --size must be {MIN_SIZE} to {frame_size}")
    forwarder = Forwarder(gate, args.fwd, burst=args.burst, frame_size=frame_size,
                          size=args.size, idle_rounds=args.backoff, on_finished=finished,
                          capture=capture)

    def make_backend(channel):
        device = VirtioNet(gate, queue_pairs=args.queues, mac=mac, mtu=args.mtu)
        connections.add(device)
        forwarder.attach(device)
        return device.backend(channel)

    adapter_class = BackendClient if args.client else BackendServer
    adapter = adapter_class(args.socket, make_backend)
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    forwarder.start()
    origin = _which_fastpath()
    print(f"fastpath vhost-net: {'connecting to' if args.client else 'listening on'} "
          f"{args.socket}, {args.queues} queue pair(s), fwd {args.fwd}; fastpath "
          f"{origin['file']} revision {origin['revision'] or 'unknown'}", file=sys.stderr,
          flush=True)
    started = time.monotonic()
    last_report, last_snapshot = started, connections.snapshot()
    try:
        while not stop.is_set():
            adapter.serve_once(0.1)
            now = time.monotonic()
            if args.duration and now - started >= args.duration:
                break
            if args.stats_period and now - last_report >= args.stats_period:
                with gate.control():
                    snapshot = connections.snapshot()
                _print_rates(snapshot, last_snapshot, now - last_report)
                last_report, last_snapshot = now, snapshot
    finally:
        adapter.close()  # every connection ends: its device reports through `finished`
        forwarder.stop()
        if capture:
            capture.close()
    result = {"fwd": args.fwd, "queues": args.queues, "fastpath": origin,
              "connections": connections.finished, **forwarder.host.wakes()}
    if capture:
        result["pcap"] = {"file": args.pcap, "frames": capture.written, "missed": capture.missed}
        print(f"fastpath vhost-net: {capture.written} frames recorded in {args.pcap}"
              f"{f', {capture.missed} missed' if capture.missed else ''}", file=sys.stderr)
    print(_format_totals(connections.finished), file=sys.stderr, flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    return 0


def _which_fastpath() -> dict:
    # Which checkout ran, so that a benchmark comparing two of them can prove it: the package's
    # file and the revision of its checkout (git's, or the one an export recorded in .revision).
    root = os.path.dirname(os.path.dirname(os.path.abspath(fastpath.__file__)))
    revision = None
    try:
        if os.path.exists(os.path.join(root, ".git")):
            revision = subprocess.run(["git", "-C", root, "rev-parse", "HEAD"],
                                      capture_output=True, text=True, timeout=5).stdout.strip()
        elif os.path.exists(os.path.join(root, ".revision")):
            with open(os.path.join(root, ".revision")) as f:
                revision = f.read().strip()
    except (OSError, subprocess.SubprocessError):
        pass
    return {"file": fastpath.__file__, "revision": revision or None}


def _print_rates(now: dict, before: dict, seconds: float) -> None:
    # One line per live queue pair that moved anything, then the total.
    if seconds <= 0:
        return
    for key, c in now.items():
        b = before.get(key, NetCounters())
        if key != "all" and c.rx_frames == b.rx_frames and c.tx_frames == b.tx_frames:
            continue
        name = "total" if key == "all" else f"connection {key[0]} queue pair {key[1]}"
        rx = (c.rx_frames - b.rx_frames) / seconds
        tx = (c.tx_frames - b.tx_frames) / seconds
        gbps = (c.rx_bytes - b.rx_bytes) * 8 / seconds / 1e9
        print(f"{name:>28}: rx {rx / 1e6:8.3f} Mpps {gbps:7.3f} Gbit/s   tx {tx / 1e6:8.3f} "
              f"Mpps   ({c.rx_frames} received, {c.tx_frames} sent)", file=sys.stderr,
              flush=True)


def _format_summary(summary: dict, what: str) -> str:
    lines = [f"connection {summary['connection']}: {what}"]
    for p in summary["queue_pairs"]:
        lines.append(
            f"  queue pair {p['queue_pair']}: rx {p['rx_frames']} frames {p['rx_bytes']} bytes "
            f"({p['rx_dropped']} bad), tx {p['tx_frames']} frames {p['tx_bytes']} bytes, "
            f"dropped {p['fwd_dropped'] + p['tx_dropped']}, calls {p['calls']}")
    return "\n".join(lines)


def _format_totals(finished: list[dict]) -> str:
    rx = sum(p["rx_frames"] for s in finished for p in s["queue_pairs"])
    tx = sum(p["tx_frames"] for s in finished for p in s["queue_pairs"])
    return f"fastpath vhost-net: {len(finished)} connection(s), rx {rx} frames, tx {tx} frames"
