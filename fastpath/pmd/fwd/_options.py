"""The settings an engine is set up from, checked once for all engines."""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from fastpath.pmd import _traffic

CSUM_MODES = ("verify", "fill")
DEFAULT_ETH_SRC = _traffic.ETH_SRC
DEFAULT_ETH_DST = _traffic.ETH_DST

# Engines' settings and running state are one uint64 array each of this many entries.
SLOTS = 16

_MAC = re.compile(r"[0-9a-fA-F]{1,2}([:-][0-9a-fA-F]{1,2}){5}")


@dataclass(frozen=True)
class Options:
    """Everything `setup_engine` was told; each engine takes what it needs."""

    room: int
    profile: str
    size: int | None
    flows: int
    eth_src: bytes
    eth_dst: bytes
    csum: str


def parse_mac(text: str, option: str) -> bytes:
    """The six bytes of a MAC address written as 02:00:00:00:00:01 (or with dashes)."""
    if not isinstance(text, str) or not _MAC.fullmatch(text):
        raise ValueError(f"{option} must be a MAC address like 02:00:00:00:00:01, not {text!r}")
    return bytes(int(part, 16) for part in re.split("[:-]", text))


def check_options(*, room: int, profile: str, size: int | None, flows: int, eth_src: str,
                  eth_dst: str, csum: str) -> Options:
    """The options, checked; ValueError says what is allowed."""
    if not 64 <= room <= 65536:
        raise ValueError(f"an mbuf's room is 64 to 65536 bytes, not {room}")
    _traffic.check_options(profile, size, flows)
    if csum not in CSUM_MODES:
        raise ValueError(f"csum mode must be one of {', '.join(CSUM_MODES)}, not {csum!r}")
    return Options(room, profile, size, flows, parse_mac(eth_src, "eth_src"),
                   parse_mac(eth_dst, "eth_dst"), csum)


def frame_array(frame: bytes) -> np.ndarray:
    """A frame as a writable uint8 array, as kernels take one."""
    return np.frombuffer(frame, dtype=np.uint8).copy()
