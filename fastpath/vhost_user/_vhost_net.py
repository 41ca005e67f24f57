"""`fastpath vhost-net`: a virtio-net vhost-user back-end that loops each queue pair's
transmitq back to its receiveq (io, macswap) or drops what it receives, with statistics."""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import threading
import time

from fastpath.vhost_user._forwarder import MODES, Forwarder
from fastpath.vhost_user._gate import Gate
from fastpath.vhost_user._pcap import PcapCapture
from fastpath.vhost_user._server import BackendClient, BackendServer
from fastpath.vhost_user._virtio_net import MAX_QUEUE_PAIRS, NetCounters, VirtioNet

log = logging.getLogger("fastpath.vhost_user")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The command's options."""
    parser.add_argument("--socket", required=True, metavar="PATH",
                        help="the vhost-user Unix socket: listened on, or with --client "
                        "connected to")
    parser.add_argument("--client", action="store_true",
                        help="connect to a front-end listening on PATH (QEMU server=on, "
                        "DPDK server=1) and reconnect whenever it goes away")
    parser.add_argument("--queues", type=int, default=1, metavar="N",
                        help=f"queue pairs offered (1 to {MAX_QUEUE_PAIRS})")
    parser.add_argument("--fwd", choices=sorted(MODES), default="io",
                        help="io: frames back unchanged; macswap: MACs swapped; drop: "
                        "count and free")
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
    parser.add_argument("--json", metavar="FILE", help="write the final statistics here")
    parser.add_argument("-v", "--verbose", action="store_true", help="log each connection")


class Connections:
    """Each front-end's device while connected, and the totals of those that left."""

    def __init__(self):
        self.live: list[VirtioNet] = []
        self.finished: list[dict] = []
        self.finished_totals = NetCounters()
        self.count = 0

    def totals(self) -> NetCounters:
        """Everything moved so far, by every connection."""
        total = NetCounters()
        total.add(self.finished_totals)
        for device in self.live:
            for c in device.counters():
                total.add(c)
        return total

    def summary(self, device: VirtioNet, number: int, drops: list[tuple[int, int]]) -> dict:
        pairs = []
        for k, (c, (no_room, broken)) in enumerate(zip(device.counters(), drops, strict=True)):
            pairs.append({"queue_pair": k, **vars(c), "fwd_dropped": no_room,
                          "rings_broken": broken})
        return {"connection": number, "queue_pairs": pairs}


def _parse_mac(text: str) -> bytes:
    try:
        mac = bytes.fromhex(text.replace(":", ""))
    except ValueError:
        mac = b""
    if len(mac) != 6:
        raise SystemExit(f"fastpath vhost-net: --mac {text!r} is not a MAC address")
    return mac


def run(args: argparse.Namespace) -> int:
    """Run the back-end until a signal or --duration; returns the exit status."""
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(message)s", stream=sys.stderr)
    if not 1 <= args.queues <= MAX_QUEUE_PAIRS:
        raise SystemExit(f"fastpath vhost-net: --queues must be 1 to {MAX_QUEUE_PAIRS}")
    mac = _parse_mac(args.mac)
    frame_size = max(2048, args.mtu + 64)
    gate = Gate()
    connections = Connections()
    numbers: dict[int, int] = {}

    def finished(device: VirtioNet, drops: list[tuple[int, int]]) -> None:
        connections.live.remove(device)
        for c in device.counters():
            connections.finished_totals.add(c)
        summary = connections.summary(device, numbers.pop(id(device)), drops)
        connections.finished.append(summary)
        print(_format_summary(summary, "front-end left"), file=sys.stderr, flush=True)

    capture = PcapCapture(args.pcap, snaplen=frame_size) if args.pcap else None
    forwarder = Forwarder(gate, args.fwd, burst=args.burst, frame_size=frame_size,
                          idle_rounds=args.backoff, on_finished=finished, capture=capture)

    def make_backend(channel):
        device = VirtioNet(gate, queue_pairs=args.queues, mac=mac, mtu=args.mtu)
        connections.count += 1
        numbers[id(device)] = connections.count
        connections.live.append(device)
        forwarder.attach(device)
        return device.backend(channel)

    adapter_class = BackendClient if args.client else BackendServer
    adapter = adapter_class(args.socket, make_backend)
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    forwarder.start()
    print(f"fastpath vhost-net: {'connecting to' if args.client else 'listening on'} "
          f"{args.socket}, {args.queues} queue pair(s), fwd {args.fwd}", file=sys.stderr,
          flush=True)
    started = time.monotonic()
    last_report, last_totals = started, connections.totals()
    try:
        while not stop.is_set():
            adapter.serve_once(0.1)
            now = time.monotonic()
            if args.duration and now - started >= args.duration:
                break
            if args.stats_period and now - last_report >= args.stats_period:
                with gate.control():
                    totals = connections.totals()
                _print_rates(totals, last_totals, now - last_report)
                last_report, last_totals = now, totals
    finally:
        adapter.close()  # every connection ends: its device reports through `finished`
        forwarder.stop()
        if capture:
            capture.close()
    result = {"fwd": args.fwd, "queues": args.queues, "connections": connections.finished}
    if capture:
        result["pcap"] = {"file": args.pcap, "frames": capture.written, "missed": capture.missed}
        print(f"fastpath vhost-net: {capture.written} frames recorded in {args.pcap}"
              f"{f', {capture.missed} missed' if capture.missed else ''}", file=sys.stderr)
    print(_format_totals(connections.finished), file=sys.stderr, flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    return 0


def _print_rates(now: NetCounters, before: NetCounters, seconds: float) -> None:
    if seconds <= 0:
        return
    rx = (now.rx_frames - before.rx_frames) / seconds
    tx = (now.tx_frames - before.tx_frames) / seconds
    gbps = (now.rx_bytes - before.rx_bytes) * 8 / seconds / 1e9
    print(f"rx {rx / 1e6:8.3f} Mpps {gbps:7.3f} Gbit/s   tx {tx / 1e6:8.3f} Mpps   "
          f"rx total {now.rx_frames}  tx total {now.tx_frames}", file=sys.stderr, flush=True)


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
