"""`fastpath gen`: a pcap file of frames of one traffic profile, made with Scapy."""

from __future__ import annotations

import argparse
import sys

from scapy.utils import wrpcap

from fastpath.commands._help import ProseHelpFormatter
from fastpath.pmd import (
    DEFAULT_FLOWS,
    MAX_FLOWS,
    MAX_SIZE,
    MIN_SIZE,
    PROFILES,
    profile_frames,
)

LINKTYPE_ETHERNET = 1
MAX_COUNT = 10_000_000

EPILOG = "profiles:\n" + "\n".join(f"  {name:6} {text}" for name, text in PROFILES.items()) + """

Frame lengths leave out the 4-byte FCS, as testpmd's --txpkts does. Every frame goes from
02:00:00:00:00:01 to 02:00:00:00:00:02, carries the repeated text "fastpath" as its payload
and has every checksum right.

examples:
  fastpath gen --profile imix --count 1200 -o imix.pcap
  fastpath gen --profile flows --flows 256 --count 100000 --size 128 -o flows.pcap
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The command's options."""
    parser.formatter_class = ProseHelpFormatter
    parser.epilog = EPILOG
    parser.add_argument("--profile", choices=list(PROFILES), default="udp64",
                        help="what the frames are (see below; default udp64)")
    parser.add_argument("--count", type=int, required=True, metavar="N",
                        help=f"how many frames to write (1 to {MAX_COUNT:,})")
    parser.add_argument("--size", type=int, metavar="BYTES",
                        help=f"every frame's length, {MIN_SIZE} to {MAX_SIZE} bytes without the "
                        "FCS (default 64; not for imix, whose sizes are its own)")
    parser.add_argument("--flows", type=int, default=DEFAULT_FLOWS, metavar="F",
                        help=f"the flows profile's distinct 5-tuples, 1 to {MAX_FLOWS} "
                        f"(default {DEFAULT_FLOWS}); frame k belongs to flow k mod F")
    parser.add_argument("-o", "--output", required=True, metavar="FILE.pcap",
                        help="the pcap file to write (replaced if it exists)")


def run(args: argparse.Namespace) -> int:
    """Write the frames; returns the exit status (2 for options that make no frames, 1 when
    the file cannot be written)."""
    if not 1 <= args.count <= MAX_COUNT:
        print(f"fastpath gen: --count must be 1 to {MAX_COUNT:,}, not {args.count}",
              file=sys.stderr)
        return 2
    try:
        frames = profile_frames(args.profile, count=args.count, size=args.size,
                                flows=args.flows)
    except ValueError as e:
        print(f"fastpath gen: {e}", file=sys.stderr)
        return 2
    try:
        wrpcap(args.output, frames, linktype=LINKTYPE_ETHERNET)
    except OSError as e:
        print(f"fastpath gen: cannot write {args.output}: {e.strerror or e}", file=sys.stderr)
        return 1
    lengths = [len(f) for f in frames]
    print(f"{args.output}: {len(frames):,} {args.profile} frames, {sum(lengths):,} bytes, "
          f"{min(lengths)} to {max(lengths)} bytes each")
    return 0
