"""`fastpath fwd`: a testpmd-like forwarding loop over ports named on the command line."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import time

from fastpath.bench import environment, print_table, write_json
from fastpath.pmd import (
    DEFAULT_FLOWS,
    ETH_DST,
    ETH_SRC,
    PROFILES,
    ForwardingLoop,
    MbufPool,
    Port,
    PortCounters,
    open_port,
    paired_streams,
    port_help,
)
from fastpath.pmd.fwd import ENGINES, setup_engine

EPILOG = f"""ports (streams pair port 0 with 1, 2 with 3, ..., both ways; a lone port sends
back out of itself):
{port_help()}

forwarding modes:
""" + "\n".join(f"  {e.name:8} {e.help}" for e in ENGINES.values()) + """

examples:
  fastpath fwd vhost:/tmp/vhost.sock --fwd macswap
  fastpath fwd virtio-user:/tmp/vhost.sock --fwd txonly --profile imix --duration 10
  fastpath fwd ring:link,tx=0 null --fwd rxonly     (and elsewhere: ring:link,rx=0 --fwd txonly)
  fastpath fwd pcap:in.pcap,out=back.pcap virtio-user:/tmp/vhost.sock --fwd io
      (replays in.pcap into a back-end and records what comes back; it ends once the
      replay is over and nothing has moved for a while)
"""

# How long a run whose replays are over goes on while frames still move (coming back
# through a loopback, say), and ends once nothing has moved for this long.
DRAIN_SECONDS = 1.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The command's options."""
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = EPILOG
    parser.add_argument("ports", nargs="+", metavar="PORT", help="a port, as KIND:ARGUMENT "
                        "with ,key=value options (see below)")
    parser.add_argument("--fwd", choices=list(ENGINES), default="io", metavar="MODE",
                        help="the forwarding mode (see below; default io)")
    parser.add_argument("--burst", type=int, default=32, help="frames per burst (default 32)")
    parser.add_argument("--mbufs", type=int, default=16384,
                        help="mbufs in the pool (default 16384)")
    parser.add_argument("--profile", choices=list(PROFILES), default="udp64",
                        help="txonly's traffic (default udp64): " + "; ".join(
                            f"{name}: {text}" for name, text in PROFILES.items()))
    parser.add_argument("--size", type=int, metavar="BYTES",
                        help="txonly/flowgen frame length, without FCS (default: the "
                        "profile's)")
    parser.add_argument("--flows", type=int, default=DEFAULT_FLOWS,
                        help=f"flowgen's flows, and the flows profile's (default "
                        f"{DEFAULT_FLOWS})")
    parser.add_argument("--eth-dst", default=ETH_DST,
                        help=f"mac mode's destination MAC (default {ETH_DST})")
    parser.add_argument("--eth-src", default=ETH_SRC,
                        help=f"mac mode's source MAC (default {ETH_SRC})")
    parser.add_argument("--csum", choices=["verify", "fill"], default="verify",
                        help="csum mode: count bad checksums, or compute them (default verify)")
    parser.add_argument("--cpu", type=int, metavar="N", help="run on this CPU only")
    parser.add_argument("--duration", type=float, default=0.0, metavar="SECONDS",
                        help="stop after this long (default 0: until SIGINT/SIGTERM, or "
                        "until every pcap replay with loops is over)")
    parser.add_argument("--stats-period", type=float, default=1.0, metavar="SECONDS",
                        help="print rates this often (0: only the totals at the end)")
    parser.add_argument("--json", metavar="FILE", help="write the totals here as JSON")
    parser.add_argument("-q", "--quiet", action="store_true", help="print only the totals")


class RateReport:
    """Per-port rates since the last report, printed; every report's counts kept as samples
    (seconds since the start, then per port: frames received, sent and dropped)."""

    def __init__(self, loop: ForwardingLoop, quiet: bool):
        self.loop = loop
        self.quiet = quiet
        self.start = self.last_time = time.monotonic()
        self.last = loop.counters()
        self.samples: list[dict] = [self._sample(self.start, self.last)]

    def _sample(self, now: float, counters: dict[str, PortCounters]) -> dict:
        return {"seconds": now - self.start,
                "ports": {name: [c.rx_frames, c.tx_frames, c.tx_dropped]
                          for name, c in counters.items()}}

    def __call__(self, loop: ForwardingLoop) -> None:
        now = time.monotonic()
        counters = loop.counters()
        self.samples.append(self._sample(now, counters))
        seconds = max(now - self.last_time, 1e-9)
        if not self.quiet:
            for name, c in counters.items():
                before = self.last[name]
                print(f"{now - self.start:7.1f} s  {name}: "
                      f"rx {(c.rx_frames - before.rx_frames) / seconds / 1e6:7.3f} Mpps  "
                      f"tx {(c.tx_frames - before.tx_frames) / seconds / 1e6:7.3f} Mpps  "
                      f"dropped {(c.tx_dropped - before.tx_dropped) / seconds:,.0f}/s",
                      flush=True)
        self.last, self.last_time = counters, now


class ReplaysOver:
    """True once every port whose input ends (a pcap replay of so many loops) has received
    all of it and the loop has then moved nothing for DRAIN_SECONDS; never without such a
    port."""

    def __init__(self, loop: ForwardingLoop, ports: list[Port]):
        self.loop = loop
        self.ending = [p for p in ports if p.ends]
        self.moved = -1
        self.quiet_since = 0.0

    def __call__(self) -> bool:
        if not self.ending or not all(p.done for p in self.ending):
            return False
        now = time.monotonic()
        if self.loop.moved != self.moved:
            self.moved, self.quiet_since = self.loop.moved, now
            return False
        return now - self.quiet_since >= DRAIN_SECONDS


def _totals(counters: dict[str, PortCounters], seconds: float) -> list[dict]:
    return [{"port": name, **vars(c), "rx_pps": c.rx_frames / seconds,
             "tx_pps": c.tx_frames / seconds} for name, c in counters.items()]


def run(args: argparse.Namespace) -> int:
    """Open the ports, forward until told to stop, print (and save) the totals."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if not 1 <= args.burst <= 1024:
        print("fastpath fwd: --burst must be 1 to 1024", file=sys.stderr)
        return 2
    if args.cpu is not None:
        try:
            os.sched_setaffinity(0, {args.cpu})
        except (OSError, ValueError) as e:
            print(f"fastpath fwd: --cpu {args.cpu}: {e}", file=sys.stderr)
            return 2
    ports: list[Port] = []
    try:
        # Shared: a virtio-user port then sends frames from their mbufs instead of copying
        # them; every other port kind sees an ordinary pool.
        pool = MbufPool(args.mbufs, shared=True)
        engine = setup_engine(args.fwd, room=pool.room, profile=args.profile, size=args.size,
                              flows=args.flows, eth_dst=args.eth_dst, eth_src=args.eth_src,
                              csum=args.csum)
        for spec in args.ports:
            ports.append(open_port(spec, pool))
        loop = ForwardingLoop(paired_streams(ports), engine, pool, burst=args.burst)
    except (ValueError, OSError) as e:
        for port in ports:
            port.close()
        print(f"fastpath fwd: {e}", file=sys.stderr)
        return 2
    signal.signal(signal.SIGINT, lambda *_: loop.stop())
    signal.signal(signal.SIGTERM, lambda *_: loop.stop())
    report = RateReport(loop, args.quiet)
    if not args.quiet:
        print(f"fastpath fwd: {args.fwd} over {', '.join(p.name for p in ports)}, "
              f"burst {args.burst}", flush=True)
    started = time.monotonic()
    try:
        loop.run(args.duration or None, report_every=args.stats_period or 3600.0,
                 on_report=report if args.stats_period else None,
                 until=ReplaysOver(loop, ports))
    finally:
        seconds = max(time.monotonic() - started, 1e-9)
        counters = loop.counters()
        for port in ports:
            port.close()
        pool.close()
    rows = [[name, f"{c.rx_frames:,}", f"{c.tx_frames:,}", f"{c.tx_dropped:,}",
             f"{c.rx_no_mbuf + c.errors:,}", f"{c.rx_frames / seconds / 1e6:.3f}",
             f"{c.tx_frames / seconds / 1e6:.3f}"] for name, c in counters.items()]
    print_table(["port", "rx frames", "tx frames", "tx dropped", "errors", "rx Mpps",
                 "tx Mpps"], rows)
    engine_counters = engine.counters()
    if any(engine_counters.values()):
        print("engine: " + ", ".join(f"{k} {v:,}" for k, v in engine_counters.items()))
    if args.json:
        write_json(args.json, {"command": "fwd", "fwd": args.fwd, "burst": args.burst,
                               "seconds": seconds, "ports": _totals(counters, seconds),
                               "engine": engine_counters, "samples": report.samples,
                               "environment": environment()})
    return 0
