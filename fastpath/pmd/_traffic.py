"""Traffic profiles: frames made with Scapy, for `fastpath gen` and the txonly and flowgen
engines' templates.

Every frame is Ethernet from 02:00:00:00:00:01 to 02:00:00:00:00:02, between addresses of the
benchmarking ranges (198.18.0.0/15, RFC 2544; 2001:db8::/32, RFC 3849), with a payload of the
repeated text "fastpath" and every checksum filled in by Scapy. Frame lengths leave out the
Ethernet FCS, as testpmd's --txpkts does.
"""

from __future__ import annotations

import ipaddress
import itertools

from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import Dot1Q, Ether
from scapy.packet import Packet, Raw

PROFILES = {
    "udp64": "Ether/IPv4/UDP, 64-byte frames",
    "tcp": "Ether/IPv4/TCP (ACK), 64-byte frames",
    "imix": "the classic IMIX: Ether/IPv4/UDP of 64, 570 and 1518 bytes, 7:4:1",
    "vlan": "802.1Q-tagged (VLAN 100) Ether/IPv4/UDP, 64-byte frames",
    "ipv6": "Ether/IPv6/UDP, 64-byte frames",
    "flows": "as udp64, over --flows flows: flow f from 198.18.0.1+f, UDP port 1024+f",
}

MIN_SIZE = 60       # the shortest Ethernet frame, without its FCS
MAX_SIZE = 9000     # a jumbo frame
MAX_FLOWS = 65536
DEFAULT_SIZE = 64
DEFAULT_FLOWS = 1024

ETH_SRC = "02:00:00:00:00:01"
ETH_DST = "02:00:00:00:00:02"
IPV4_SRC = "198.18.0.1"
IPV4_DST = "198.18.0.2"
IPV6_SRC = "2001:db8::1"
IPV6_DST = "2001:db8::2"
SOURCE_PORT = 1024
DESTINATION_PORT = 1025
VLAN_ID = 100
PATTERN = b"fastpath"

# One IMIX cycle: seven 64-byte, four 570-byte and one 1518-byte frame, the large ones spread
# out rather than bunched.
IMIX_CYCLE = (64, 570, 64, 64, 570, 64, 1518, 64, 570, 64, 64, 570)


def _headers(profile: str, flow: int = 0) -> Packet:
    if profile == "tcp":
        return (Ether(src=ETH_SRC, dst=ETH_DST) / IP(src=IPV4_SRC, dst=IPV4_DST)
                / TCP(sport=SOURCE_PORT, dport=DESTINATION_PORT, flags="A", seq=1, ack=1))
    if profile == "vlan":
        return (Ether(src=ETH_SRC, dst=ETH_DST) / Dot1Q(vlan=VLAN_ID)
                / IP(src=IPV4_SRC, dst=IPV4_DST) / UDP(sport=SOURCE_PORT, dport=DESTINATION_PORT))
    if profile == "ipv6":
        return (Ether(src=ETH_SRC, dst=ETH_DST) / IPv6(src=IPV6_SRC, dst=IPV6_DST)
                / UDP(sport=SOURCE_PORT, dport=DESTINATION_PORT))
    source = str(ipaddress.IPv4Address(IPV4_SRC) + flow)
    return (Ether(src=ETH_SRC, dst=ETH_DST) / IP(src=source, dst=IPV4_DST)
            / UDP(sport=(SOURCE_PORT + flow) % 65536, dport=DESTINATION_PORT))


def header_length(profile: str) -> int:
    """The bytes of headers in front of the payload of the profile's frames."""
    _check_profile(profile)
    return len(_headers(profile))


def _frame(profile: str, size: int, flow: int = 0) -> bytes:
    headers = _headers(profile, flow)
    room = size - len(headers)
    payload = (PATTERN * (room // len(PATTERN) + 1))[:room]
    return bytes(headers / Raw(payload))


def _check_profile(profile: str) -> None:
    if profile not in PROFILES:
        raise ValueError(f"unknown traffic profile {profile!r}; choose one of "
                         f"{', '.join(PROFILES)}")


def check_options(profile: str, size: int | None = None, flows: int = DEFAULT_FLOWS) -> None:
    """Raise ValueError, saying what is allowed, unless the options make frames."""
    _check_profile(profile)
    if size is not None:
        if profile == "imix":
            raise ValueError("imix frames have their own sizes (64, 570, 1518 bytes); "
                             "a size does not apply")
        if not MIN_SIZE <= size <= MAX_SIZE:
            raise ValueError(f"a frame size is {MIN_SIZE} to {MAX_SIZE} bytes (without the "
                             f"FCS), not {size}")
        least = header_length(profile)
        if size < least:
            raise ValueError(f"{profile} frames are at least {least} bytes (their headers), "
                             f"not {size}")
    if not 1 <= flows <= MAX_FLOWS:
        raise ValueError(f"flows must be 1 to {MAX_FLOWS}, not {flows}")


def cycle_length(profile: str, flows: int = DEFAULT_FLOWS) -> int:
    """After how many frames the profile's frames repeat."""
    _check_profile(profile)
    if profile == "imix":
        return len(IMIX_CYCLE)
    if profile == "flows":
        return flows
    return 1


def profile_frames(profile: str, *, count: int, size: int | None = None,
                   flows: int = DEFAULT_FLOWS) -> list[bytes]:
    """`count` frames of `profile` (see PROFILES), each of `size` bytes without the FCS
    (default 64; imix has its own sizes); the flows profile's frame k belongs to flow
    k mod `flows`. Frames that repeat are the same bytes objects."""
    check_options(profile, size, flows)
    if count < 1:
        raise ValueError(f"count must be at least 1, not {count}")
    length = DEFAULT_SIZE if size is None else size
    distinct = min(count, cycle_length(profile, flows))
    if profile == "imix":
        cycle = [_frame(profile, IMIX_CYCLE[k]) for k in range(distinct)]
    elif profile == "flows":
        cycle = [_frame(profile, length, flow) for flow in range(distinct)]
    else:
        cycle = [_frame(profile, length)]
    return list(itertools.islice(itertools.cycle(cycle), count))
