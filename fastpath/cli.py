"""The `fastpath` command."""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from fastpath import __version__


def _add_command(commands, name: str, module_name: str, **texts) -> None:
    # Each command lives in a module with add_arguments(parser) and run(args) -> exit status.
    module = importlib.import_module(module_name)
    command = commands.add_parser(name, formatter_class=argparse.ArgumentDefaultsHelpFormatter,
                                  **texts)
    module.add_arguments(command)
    command.set_defaults(func=module.run)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fastpath",
        description="A user-space virtualization dataplane: virtio virtqueues, a vhost-user "
        "virtio-net back-end and front-end, poll-mode drivers with testpmd-style forwarding, "
        "and packet benchmarks, over a compiled core.",
        epilog="Run 'fastpath COMMAND --help' for a command's options.",
    )
    parser.add_argument("--version", action="version", version=f"fastpath {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    bench = commands.add_parser("bench", help="run a benchmark", description="Run a benchmark.")
    benches = bench.add_subparsers(dest="bench", metavar="BENCHMARK", required=True)
    _add_command(
        benches, "vring", "fastpath.bench.vring",
        help="virtqueue chains per second, compiled core against the pure-Python reference",
        description=(
            "Measure how many descriptor chains per second a driver and a device move through "
            "one virtqueue: the driver offers single-descriptor buffers, the device pops them, "
            "copies their first bytes out and pushes them back, the driver collects them. "
            "Runs split and packed rings at several burst sizes, in one process and across two "
            "processes pinned to two cores, beside the pure-Python reference."
        ),
    )
    _add_command(
        benches, "walk", "fastpath.bench.walk",
        help="address translations per second (EPT and 2-D walks), compiled core against the "
        "pure-Python reference, TLB off and on",
        description=(
            "Translate bursts of random addresses through 4-level EPT (GPA to HPA) and through "
            "4-level guest paging over 4-level EPT (GVA to GPA to HPA), 4 KiB pages everywhere, "
            "on one core without the GIL, with the TLB off and on, beside the pure-Python "
            "reference walker in the same run."
        ),
    )
    _add_command(
        benches, "vhost-net", "fastpath.bench.vhost_net",
        help="fastpath vhost-net's rate with DPDK's virtio-user as the traffic, against DPDK's "
        "vhost PMD or another checkout's back-end",
        description=(
            "Point DPDK testpmd's virtio-user front-end at fastpath vhost-net and at a second "
            "back-end (DPDK's vhost PMD, or with --baseline another checkout's vhost-net), in "
            "pairs of runs alternated in order, one CPU each: rx (testpmd txonly into --fwd "
            "drop), tx (--fwd txonly into testpmd rxonly) and loop (testpmd flowgen into --fwd "
            "io and back, so the back-end also enqueues), over split or packed rings, with "
            "mergeable receive buffers or without. Reports each side's rate and the median "
            "ratio of the pairs per measurement; --fail-below turns that into a pass or a "
            "failure. Every run also says where the two CPUs sat (near, far, or moved during "
            "the run: a cache line's trip between them, timed before and after), and 'same "
            "placement' is the median ratio of the pairs that kept one placement: the host "
            "moves the CPUs every few seconds, and a pair across a move measures the move. "
            "Needs dpdk-testpmd (make peers)."
        ),
    )
    _add_command(
        benches, "pvp", "fastpath.bench.pvp",
        help="frames through a vhost-user back-end and back, per frame size, against DPDK, "
        "each figure with its bottleneck",
        description=(
            "PVP: a traffic process on one CPU sends frames into a vhost-user back-end on the "
            "other, which sends every frame back (fastpath vhost-net --fwd io; --peer dpdk "
            "adds DPDK testpmd's vhost PMD doing the same, --baseline another checkout's "
            "back-end). --traffic picks the traffic process: fastpath (fastpath fwd's "
            "virtio-user port, txonly, counting what comes back) or dpdk (DPDK testpmd's "
            "virtio-user in io mode after start tx_first: half a ring of frames circulates, "
            "each sent back as it returns), so that a figure can be checked against a "
            "generator that is not fastpath's. In every round the traffic process also runs "
            "alone (txonly) into two sinks, DPDK's vhost PMD rxonly and fastpath vhost-net "
            "--fwd drop; the faster of the two is the traffic's ceiling (a slower sink would "
            "pass its own limit off as the generator's). "
            "Reading the table, per size (best run of each): Mpps and Gbit/s of frames back; "
            "loss, frames that did not come back; refused, frames the ring had no room for; "
            "of ceiling, the rate over the ceiling; bottleneck, 'generator' when the rate is "
            "within 10 % of the ceiling (the figure then measures the traffic process, not "
            "the back-end) and 'back-end' below; ceiling Mpps and 'into', the ceiling and the "
            "sink it came from; fastpath/X, the ratio of the best runs. The JSON has the same "
            "per size and back-end (rate, ceiling_mpps, ceiling_share, bottleneck) and every "
            "run; the plot draws the ceiling across each size and hatches generator-bound bars."
        ),
        epilog="examples: fastpath bench pvp --peer dpdk --sizes 64,1518,imix --plot pvp.png; "
        "fastpath bench pvp --peer dpdk --traffic dpdk --sizes 64,1518 --json pvp.json",
    )
    _add_command(
        benches, "txgen", "fastpath.bench.txgen",
        help="fastpath's traffic generator against DPDK testpmd's, into the same sinks",
        description=(
            "Run fastpath fwd's virtio-user txonly (sending from a shared mbuf pool without "
            "copying) and DPDK testpmd's virtio-user txonly on one CPU, alternated run by run, "
            "into a sink on the other: DPDK's vhost PMD rxonly and fastpath vhost-net --fwd "
            "drop. Prints each generator's best second per size and sink, and fastpath/DPDK "
            "as the ratio of the best runs, the median of the pairs, and the median of the "
            "pairs whose runs kept the CPUs in one placement (same placement; each run's is "
            "printed with it). Into a sink slower "
            "than both generators the two meet at the sink's ceiling: both sinks are run so "
            "that it shows. Needs dpdk-testpmd (make peers)."
        ),
        epilog="example: fastpath bench txgen --sizes 64,1518 --rounds 3 --json txgen.json",
    )
    _add_command(
        benches, "iops", "fastpath.bench.iops",
        help="IOPS, MiB/s and latency of a workload on a bdev, bdevperf-style, against fio",
        description=(
            "Keep a queue depth of one workload (bdevperf's: read, write, randread, "
            "randwrite, randrw, verify, flush, unmap) in flight on a bdev from a compiled "
            "poller on one CPU, and report IOPS, MiB/s and latency (mean, min, max, p50, "
            "p99, p99.9) from an HdrHistogram. --peer fio runs the same job through fio on "
            "the same CPU, alternated, and prints the ratio."
        ),
        epilog="example: fastpath bench iops --bdev null:1G --workload randread --qd 32 "
        "--peer fio --json iops.json --plot iops.png",
    )
    _add_command(
        commands, "hv", "fastpath.commands.hv",
        help="run a scenario of the modelled platform (walk, ...) and print its counters",
        description=(
            "Run a scenario of the modelled Intel platform (EPT and guest paging, VMX, VT-d, "
            "SR-IOV) and print what its counters say as tables; --json saves the figures. "
            "Every figure is counted by the model as it runs, nothing is measured on this "
            "machine."
        ),
        epilog="example: fastpath hv walk --page-size 2m --unmapped 0.2 --json walk.json",
    )
    _add_command(
        commands, "fwd", "fastpath.commands.fwd",
        help="forward frames between ports, testpmd-style (io, mac, macswap, txonly, rxonly, "
        "flowgen, csum)",
        description=(
            "Open the ports named, pair them (0 with 1, 2 with 3, ...) and run a forwarding "
            "mode over every pair in a compiled loop on one thread: frames received on a "
            "port go through the mode and out of its partner. Rates per port print while it "
            "runs, totals at the end (--json for a file)."
        ),
    )
    _add_command(
        commands, "gen", "fastpath.commands.gen",
        help="write a pcap file of generated traffic (udp64, tcp, imix, vlan, ipv6, flows)",
        description=(
            "Make frames of a traffic profile with Scapy and write them to a pcap file, for "
            "replaying through a pcap port (fastpath fwd pcap:FILE ...) or any other tool. "
            "txonly sends the same profiles."
        ),
    )
    _add_command(
        commands, "vhost-net", "fastpath.commands.vhost_net",
        help="run a virtio-net vhost-user back-end that forwards, drops or generates frames",
        description=(
            "Serve virtio-net front-ends (QEMU, DPDK virtio-user, fastpath's own) on a "
            "vhost-user socket. Each queue pair's transmitq is looped back to its receiveq "
            "(--fwd io or macswap) or emptied (--fwd drop) by a compiled poll loop, or every "
            "receiveq filled with frames of a size (--fwd txonly). Front-ends "
            "may come, go and come back; rates print while it runs, totals per queue at exit."
        ),
        epilog="example: fastpath vhost-net --socket /tmp/vhost.sock --fwd macswap --backoff 1000",
    )
    _add_command(
        commands, "vhost-blk", "fastpath.commands.vhost_blk",
        help="run a virtio-blk vhost-user back-end over a bdev (null, malloc, file)",
        description=(
            "Serve virtio-blk front-ends (QEMU's vhost-user-blk-pci, qemu-storage-daemon's "
            "peers, fastpath's BlkFrontend) on a vhost-user socket, with a bdev as the disk. "
            "A reactor on one CPU takes each queue's requests, submits them to the bdev and "
            "completes them, with no Python per request. Front-ends may come, go and come "
            "back; rates print while it runs."
        ),
        epilog="example: fastpath vhost-blk --socket-path /tmp/blk.sock --bdev malloc:1G "
        "--queues 2",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return args.func(args)
    except BrokenPipeError:
        # The reader of standard output left (`fastpath hv walk | head`): end quietly, as a
        # shell tool does, with standard output pointed at /dev/null so that the flush at exit
        # does not fail again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1


if __name__ == "__main__":
    sys.exit(main())
