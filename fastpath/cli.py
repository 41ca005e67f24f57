"""The `fastpath` command."""

from __future__ import annotations

import argparse
import importlib
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
        description="A user-space virtualization dataplane: virtqueues, vhost-user, poll-mode "
        "drivers and block I/O over a compiled core.",
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
        benches, "vhost-net", "fastpath.bench.vhost_net",
        help="frames per second from DPDK's virtio-user into fastpath vhost-net, against "
        "DPDK's vhost PMD",
        description=(
            "Point DPDK testpmd's virtio-user front-end (txonly) at fastpath vhost-net "
            "(--fwd drop) and at DPDK's own vhost PMD (rxonly), alternately, one CPU each, and "
            "report the best rate of each and fastpath/DPDK per frame size. Needs dpdk-testpmd "
            "(make peers)."
        ),
    )
    _add_command(
        commands, "vhost-net", "fastpath.vhost_user._vhost_net",
        help="run a virtio-net vhost-user back-end that forwards or drops what it receives",
        description=(
            "Serve virtio-net front-ends (QEMU, DPDK virtio-user, fastpath's own) on a "
            "vhost-user socket. Each queue pair's transmitq is looped back to its receiveq "
            "(--fwd io or macswap) or emptied (--fwd drop) by a compiled poll loop. Front-ends "
            "may come, go and come back; rates print while it runs, totals per queue at exit."
        ),
        epilog="example: fastpath vhost-net --socket /tmp/vhost.sock --fwd macswap --backoff 1000",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
