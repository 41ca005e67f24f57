"""Forwarding engines, run burst by burst through `engine_burst` over a real mbuf pool, their
output read back with Scapy (and, for checksums, a pure-Python RFC 1071 model)."""

import struct

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import Dot1Q, Ether
from scapy.packet import Raw

from fastpath.pmd import MbufPool
from fastpath.pmd._traffic import PROFILES, profile_frames
from fastpath.pmd.fwd import ENGINES, Engine, EngineSetup, setup_engine
from fastpath.pmd.fwd._dispatch import engine_burst
from fastpath.pmd.fwd._generate import STATE_NEXT

BURST = 32
# Addresses given, so that Scapy does not look for a destination on the host's network.
MACS = {"src": "02:00:00:00:00:01", "dst": "02:00:00:00:00:02"}


def run_burst(setup: EngineSetup, pool: MbufPool, frames: list[bytes], burst: int = BURST):
    """Put `frames` in mbufs, run one burst; returns (the frames out, their mbufs)."""
    mbufs = pool.burst(max(burst, len(frames)))
    assert pool.alloc(mbufs, len(frames)) == len(frames)
    for k, frame in enumerate(frames):
        pool.put(mbufs[k], frame)
    n = engine_burst(*setup.arrays, pool.arrays, mbufs, len(frames), burst)
    return [pool.frame(m) for m in mbufs[:n]], mbufs[:n].copy()


def forward(setup: EngineSetup, frames: list[bytes], room: int = 2048) -> list[bytes]:
    """The frames a forwarding engine sends on for `frames`, with the pool left as it was."""
    pool = MbufPool(256, room)
    out, mbufs = run_burst(setup, pool, frames)
    pool.release(mbufs, len(mbufs))
    assert pool.in_use == 0
    return out


def generate(setup: EngineSetup, bursts: int, burst: int = BURST, received: int = 0):
    """The frames of `bursts` bursts of a generating engine (`received` frames arriving each
    time), each burst given back to the pool after."""
    pool = MbufPool(256)
    out = []
    for _ in range(bursts):
        frames, mbufs = run_burst(setup, pool, [bytes(60)] * received, burst)
        assert pool.in_use == len(mbufs)
        out += frames
        pool.release(mbufs, len(mbufs))
    return out


def mixed_frames() -> list[bytes]:
    """IPv4/UDP of three sizes, TCP, VLAN-tagged and IPv6 frames."""
    return (profile_frames("imix", count=12) + profile_frames("tcp", count=1)
            + profile_frames("vlan", count=1) + profile_frames("ipv6", count=1))


def scapy_rebuilt(frame: bytes) -> bytes:
    """The frame as Scapy builds it with every checksum computed afresh."""
    packet = Ether(frame)
    for layer in (IP, UDP, TCP):
        if packet.haslayer(layer):
            del packet[layer].chksum
            if layer is not IP:
                packet[layer].decode_payload_as(Raw)
    return bytes(packet)


def five_tuple(frame: bytes) -> tuple:
    packet = Ether(frame)
    ip = packet[IP] if packet.haslayer(IP) else packet[IPv6]
    l4 = packet[UDP] if packet.haslayer(UDP) else packet[TCP]
    return ip.src, ip.dst, ip.proto if packet.haslayer(IP) else ip.nh, l4.sport, l4.dport


# The registry.

def test_every_mode_is_registered_with_a_distinct_code_and_help():
    assert list(ENGINES) == ["io", "mac", "macswap", "rxonly", "txonly", "flowgen", "csum"]
    assert len({e.code for e in ENGINES.values()}) == len(ENGINES)
    assert {n for n, e in ENGINES.items() if e.generates} == {"txonly", "flowgen"}
    assert all(e.help and e.name == n for n, e in ENGINES.items())


@pytest.mark.parametrize("kwargs, message", [
    ({"name": "teleport"}, "unknown forwarding mode 'teleport'; choose one of io, mac, "),
    ({"name": "txonly", "profile": "smtp"}, "choose one of udp64, tcp, imix"),
    ({"name": "mac", "eth_dst": "02:00:00:00:02"}, "eth_dst must be a MAC address"),
    ({"name": "csum", "csum": "repair"}, "one of verify, fill"),
    ({"name": "flowgen", "flows": 0}, "flows must be 1 to 65536"),
    ({"name": "txonly", "size": 59}, "60 to 9000 bytes"),
    ({"name": "txonly", "profile": "ipv6", "size": 60}, "at least 62 bytes"),
    ({"name": "txonly", "profile": "imix", "size": 128}, "imix frames have their own sizes"),
    ({"name": "txonly", "size": 4000}, "do not fit 2048-byte mbufs"),
    ({"name": "flowgen", "profile": "tcp"}, "not IPv4/UDP"),
    ({"name": "flowgen", "profile": "ipv6"}, "not IPv4/UDP"),
    ({"name": "flowgen", "profile": "imix"}, "imix is a mix"),
    ({"name": "io", "room": 32}, "64 to 65536 bytes"),
])
def test_impossible_setups_are_refused_with_the_choices(kwargs, message):
    with pytest.raises(ValueError, match=message):
        setup_engine(kwargs.pop("name"), **kwargs)


# Forwarding engines.

def test_io_leaves_every_byte_unchanged():
    frames = mixed_frames()
    assert forward(setup_engine("io"), frames) == frames


def test_macswap_swaps_destination_and_source():
    frames = mixed_frames()
    for before, after in zip(frames, forward(setup_engine("macswap"), frames), strict=True):
        assert (Ether(after).dst, Ether(after).src) == (Ether(before).src, Ether(before).dst)
        assert after[12:] == before[12:]


def test_mac_writes_the_configured_addresses():
    setup = setup_engine("mac", eth_dst="52:54:00:12:34:56", eth_src="0a-0b-0c-0d-0e-0f")
    frames = mixed_frames()
    for before, after in zip(frames, forward(setup, frames), strict=True):
        assert Ether(after).dst == "52:54:00:12:34:56"
        assert Ether(after).src == "0a:0b:0c:0d:0e:0f"
        assert after[12:] == before[12:]


def test_frames_too_short_for_two_addresses_are_left_alone():
    for mode in ("mac", "macswap"):
        assert forward(setup_engine(mode), [bytes(range(11))]) == [bytes(range(11))]


def test_rxonly_frees_everything_and_sends_nothing():
    pool = MbufPool(64)
    out, _ = run_burst(setup_engine("rxonly"), pool, mixed_frames())
    assert out == [] and pool.in_use == 0


def test_an_empty_burst_stays_empty():
    for name, engine in ENGINES.items():
        if not engine.generates:
            assert forward(setup_engine(name), []) == []


def test_an_unknown_code_frees_the_burst():
    setup = setup_engine("io")
    setup.engine = Engine("bogus", 99, False, "", ())
    pool = MbufPool(16)
    out, _ = run_burst(setup, pool, mixed_frames()[:4])
    assert out == [] and pool.in_use == 0


# Generating engines.

EXPECTED_LAYERS = {"udp64": (IP, UDP), "tcp": (IP, TCP), "imix": (IP, UDP),
                   "vlan": (Dot1Q, IP, UDP), "ipv6": (IPv6, UDP), "flows": (IP, UDP)}


@pytest.mark.parametrize("profile", list(PROFILES))
def test_txonly_sends_the_profiles_templates_in_turn(profile):
    setup = setup_engine("txonly", profile=profile, flows=20)
    out = generate(setup, bursts=3, received=5)
    cycle = profile_frames(profile, count=len(out), flows=20)
    assert out == cycle
    for frame in out[:24]:
        packet = Ether(frame)
        assert all(packet.haslayer(layer) for layer in EXPECTED_LAYERS[profile])
        assert scapy_rebuilt(frame) == frame
    assert setup.counters() == {"generated": 3 * BURST, "pool_short": 0,
                                "templates_too_long": 0}


def test_txonly_frames_have_the_size_asked_for():
    out = generate(setup_engine("txonly", profile="tcp", size=1000), bursts=1, burst=4)
    assert [len(f) for f in out] == [1000] * 4
    assert Ether(out[0])[Raw].load.startswith(b"fastpathfastpath")


def test_txonly_writes_a_frame_once_per_mbuf():
    # An mbuf back from the pool with its stamp is sent as it is: bytes changed behind the
    # pool's back (no legitimate writer does that) show that nothing was copied again.
    setup = setup_engine("txonly", size=1518)
    pool = MbufPool(64)
    first, mbufs = run_burst(setup, pool, [], burst=8)
    pool.release(mbufs, 8)
    pool.data[mbufs, 1000] ^= 0xFF
    again, reused = run_burst(setup, pool, [], burst=8)
    assert sorted(reused) == sorted(mbufs)
    assert all(frame[1000] != first[0][1000] for frame in again)
    assert [f[:1000] for f in again] == [f[:1000] for f in first]


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["udp64", "imix", "other-writer"]),
                          st.integers(1, 24)), min_size=1, max_size=12))
def test_txonly_frames_match_the_profile_whoever_used_the_mbufs_between(steps):
    # Two txonly setups and another writer (an rx burst, say) share one small pool: whatever
    # each left in the mbufs, every frame a setup sends is the next of its profile's cycle.
    pool = MbufPool(48)
    setups = {p: setup_engine("txonly", profile=p) for p in ("udp64", "imix")}
    sent = {p: [] for p in setups}
    for who, count in steps:
        if who == "other-writer":
            # As a port's rx kernel does: take mbufs, write frames into their rows.
            mbufs = pool.burst(count)
            assert pool.alloc(mbufs, count) == count
            pool.data[mbufs, :100] = count
            pool.length[mbufs] = 100
        else:
            frames, mbufs = run_burst(setups[who], pool, [], burst=count)
            sent[who] += frames
        pool.release(mbufs, len(mbufs))
    for profile, frames in sent.items():
        if frames:
            assert frames == profile_frames(profile, count=len(frames))
    assert pool.in_use == 0


def test_a_generator_makes_what_the_pool_has_and_counts_the_shortfall():
    setup = setup_engine("txonly")
    pool = MbufPool(10)
    held = pool.burst(6)
    pool.alloc(held, 6)
    out, _ = run_burst(setup, pool, [], burst=BURST)
    assert len(out) == 4 and pool.in_use == 10
    assert setup.counters()["pool_short"] == 1


def test_a_generator_refuses_a_pool_too_small_for_its_templates():
    setup = setup_engine("txonly", profile="imix")
    pool = MbufPool(64, room=1024)
    out, _ = run_burst(setup, pool, mixed_frames()[:3])
    assert out == [] and pool.in_use == 0
    assert setup.counters()["templates_too_long"] == 1


@pytest.mark.parametrize("profile, flows", [("udp64", 50), ("vlan", 7), ("udp64", 1),
                                            ("flows", 300)])
def test_flowgen_spreads_frames_over_exactly_its_flows_round_robin(profile, flows):
    setup = setup_engine("flowgen", profile=profile, flows=flows, size=100)
    out = generate(setup, bursts=(2 * flows) // BURST + 2, received=3)
    tuples = [five_tuple(f) for f in out]
    assert len(set(tuples)) == flows
    for k, t in enumerate(tuples):
        f = k % flows
        assert t == (f"198.18.{(1 + f) >> 8}.{(1 + f) & 0xFF}", "198.18.0.2", 17, 1024 + f, 1025)
    for frame in out[:flows + 3]:
        assert len(frame) == 100
        assert scapy_rebuilt(frame) == frame


def test_flowgen_over_udp64_makes_the_flows_profile():
    out = generate(setup_engine("flowgen", flows=40), bursts=4)
    assert out == profile_frames("flows", count=len(out), flows=40)


def test_flowgen_keeps_flows_beyond_the_port_range_distinct_and_checksummed():
    setup = setup_engine("flowgen", flows=65536)
    setup.state[STATE_NEXT] = 64510     # start near where the source port wraps
    out = generate(setup, bursts=1)
    assert [five_tuple(f)[3] for f in out[:4]] == [65534, 65535, 0, 1]
    assert all(scapy_rebuilt(f) == f for f in out)


# csum.

def corrupted(frame: bytes, layer) -> bytes:
    packet = Ether(frame)
    if layer is not IP:
        packet[layer].decode_payload_as(Raw)
    packet[layer].chksum ^= 0x1234
    return bytes(packet)


def checksum_frames() -> list[bytes]:
    """Every kind csum handles: IPv4/UDP, IPv4/TCP, IPv6/UDP and IPv6/TCP, VLAN-tagged too,
    with IP options and Ethernet padding."""
    payload = Raw(b"fastpath" * 5 + b"!")
    frames = []
    for tag in ([], [Dot1Q(vlan=7)], [Dot1Q(vlan=1), Dot1Q(vlan=2)]):
        for l3 in (IP(src="10.0.0.1", dst="10.0.0.2"), IPv6(src="fe80::1", dst="fe80::2"),
                   IP(src="10.1.1.1", dst="10.2.2.2", options=b"\x01\x01\x01\x00")):
            for l4 in (UDP(sport=4000, dport=4001), TCP(sport=5000, dport=5001, flags="S")):
                packet = Ether(**MACS)
                for t in tag:
                    packet = packet / t
                frames.append(bytes(packet / l3 / l4 / payload))
    short = Ether(**MACS) / IP(src="10.0.0.8", dst="10.0.0.9") / UDP(sport=4000, dport=4001)
    frames.append(bytes(short / Raw(b"x")) + bytes(17))     # padded to 60 bytes and beyond
    return frames


def test_csum_fill_writes_the_checksums_scapy_computes():
    good = checksum_frames()
    broken = []
    for frame in good:
        packet = Ether(frame)
        for layer in (IP, UDP, TCP):
            if packet.haslayer(layer):
                packet[layer].chksum = 0xBEEF
        broken.append(bytes(packet))
    setup = setup_engine("csum", csum="fill")
    out = forward(setup, broken)
    assert out == good
    assert [scapy_rebuilt(f) for f in out] == out
    ipv4 = sum(Ether(f).haslayer(IP) for f in good)
    assert setup.counters() == {"bad_ip_checksum": 0, "bad_l4_checksum": 0,
                                "ip_checksums_filled": ipv4, "l4_checksums_filled": len(good)}


def test_csum_verify_counts_exactly_the_frames_corrupted():
    frames = checksum_frames()
    bad_ip = [0, 5, 13, 18]
    bad_l4 = [1, 2, 3, 13, 16, 17]
    sent = list(frames)
    for k in bad_ip:
        sent[k] = corrupted(sent[k], IP)
    for k in bad_l4:
        packet = Ether(sent[k])
        sent[k] = corrupted(sent[k], UDP if packet.haslayer(UDP) else TCP)
    assert all(Ether(frames[k]).haslayer(IP) for k in bad_ip)
    setup = setup_engine("csum")
    assert forward(setup, sent) == sent
    assert setup.counters() == {"bad_ip_checksum": len(bad_ip), "bad_l4_checksum": len(bad_l4),
                                "ip_checksums_filled": 0, "l4_checksums_filled": 0}
    assert forward(setup, frames) == frames
    assert setup.counters()["bad_ip_checksum"] == len(bad_ip)


def test_a_zero_udp_checksum_means_none_over_ipv4_and_bad_over_ipv6():
    v4 = Ether(profile_frames("udp64", count=1)[0])
    v4[UDP].chksum = 0
    v6 = Ether(profile_frames("ipv6", count=1)[0])
    v6[UDP].chksum = 0
    setup = setup_engine("csum")
    forward(setup, [bytes(v4), bytes(v6)])
    assert setup.counters()["bad_l4_checksum"] == 1


def test_csum_leaves_frames_it_cannot_parse_alone():
    ip = IP(src="10.0.0.1", dst="10.0.0.2")
    odd = [bytes(10),                                                       # a runt
           bytes(Ether(**MACS) / IP(src="10.0.0.1", dst="10.0.0.2", flags="MF") / UDP()
                 / Raw(b"part")),                                           # a fragment
           bytes(Ether(type=0x0806, **MACS) / Raw(bytes(28))),              # ARP
           bytes(Ether(**MACS) / ip / UDP() / Raw(bytes(30)))[:40]]         # truncated
    setup = setup_engine("csum", csum="fill")
    assert forward(setup, odd) == odd
    assert setup.counters()["ip_checksums_filled"] == 2
    assert setup.counters()["l4_checksums_filled"] == 0


# csum against a pure-Python model (RFC 1071).

def model_sum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return total


def model_checksum(data: bytes) -> int:
    return ~model_sum(data) & 0xFFFF


def model_fill(frame: bytes, ip_at: int, header_length: int, proto: int, l4_length: int):
    """(the IPv4 header checksum, the TCP/UDP checksum) RFC 1071 gives the frame."""
    header = bytearray(frame[ip_at:ip_at + header_length])
    header[10:12] = bytes(2)
    l4_at = ip_at + header_length
    segment = bytearray(frame[l4_at:l4_at + l4_length])
    field = 6 if proto == 17 else 16
    segment[field:field + 2] = bytes(2)
    pseudo = frame[ip_at + 12:ip_at + 20] + struct.pack("!BBH", 0, proto, l4_length)
    l4_checksum = model_checksum(pseudo + segment)
    if proto == 17 and l4_checksum == 0:
        l4_checksum = 0xFFFF
    return model_checksum(bytes(header)), l4_checksum


def model_verify(frame: bytes, ip_at: int, header_length: int, proto: int, l4_length: int):
    """(whether the IPv4 header checksum is bad, whether the TCP/UDP one is)."""
    l4_at = ip_at + header_length
    segment = frame[l4_at:l4_at + l4_length]
    pseudo = frame[ip_at + 12:ip_at + 20] + struct.pack("!BBH", 0, proto, l4_length)
    no_checksum = proto == 17 and segment[6:8] == bytes(2)
    return (model_sum(frame[ip_at:l4_at]) != 0xFFFF,
            not no_checksum and model_sum(pseudo + segment) != 0xFFFF)


@st.composite
def ipv4_frames(draw):
    """A random IPv4 frame with a TCP or UDP segment, maybe VLAN-tagged, with IP options,
    padding, and whatever is in the checksum fields; and where its parts are."""
    proto = draw(st.sampled_from([6, 17]))
    tags = b"".join(struct.pack("!HH", 0x8100, draw(st.integers(0, 0xFFFF)))
                    for _ in range(draw(st.integers(0, 2))))
    options = draw(st.binary(max_size=40))
    options += bytes(-len(options) % 4)
    payload = draw(st.binary(max_size=300))
    checksum = draw(st.integers(0, 0xFFFF))
    if proto == 17 and draw(st.booleans()):
        checksum = 0            # sent without a checksum
    ports = draw(st.binary(min_size=4, max_size=4))
    if proto == 17:
        l4 = ports + struct.pack("!HH", 8 + len(payload), checksum) + payload
    else:
        tcp_options = draw(st.binary(max_size=40))
        tcp_options += bytes(-len(tcp_options) % 4)
        offset = (20 + len(tcp_options)) // 4
        l4 = (ports + draw(st.binary(min_size=8, max_size=8))
              + struct.pack("!BBHHH", offset << 4, draw(st.integers(0, 255)),
                            draw(st.integers(0, 0xFFFF)), checksum, 0)
              + tcp_options + payload)
    header_length = 20 + len(options)
    addresses = draw(st.binary(min_size=8, max_size=8))
    ip = (struct.pack("!BBHHHBBH", 0x40 | header_length // 4, draw(st.integers(0, 255)),
                      header_length + len(l4), draw(st.integers(0, 0xFFFF)),
                      draw(st.sampled_from([0, 0x4000])), draw(st.integers(1, 255)), proto,
                      draw(st.integers(0, 0xFFFF)))
          + addresses + options)
    padding = draw(st.binary(max_size=20))
    frame = bytes(6) + bytes.fromhex("020000000001") + tags + b"\x08\x00" + ip + l4 + padding
    ip_at = 14 + len(tags)
    case = (frame, ip_at, header_length, proto, len(l4))
    right_ip, right_l4 = draw(st.booleans()), draw(st.booleans())
    if right_ip or right_l4:
        frame = bytearray(frame)
        ip_checksum, l4_checksum = model_fill(*case)
        if right_ip:
            struct.pack_into("!H", frame, ip_at + 10, ip_checksum)
        if right_l4:
            struct.pack_into("!H", frame, ip_at + header_length + (6 if proto == 17 else 16),
                             l4_checksum)
        case = (bytes(frame),) + case[1:]
    return case


@settings(max_examples=150, deadline=None)
@given(st.lists(ipv4_frames(), min_size=1, max_size=BURST), st.sampled_from([2048, 2047]))
def test_csum_fill_agrees_with_rfc1071(cases, room):
    """In mbufs of an even length (summed as words) and an odd one (summed as bytes)."""
    out = forward(setup_engine("csum", csum="fill", room=room), [c[0] for c in cases], room)
    for (frame, ip_at, header_length, proto, l4_length), after in zip(cases, out, strict=True):
        ip_checksum, l4_checksum = model_fill(frame, ip_at, header_length, proto, l4_length)
        field = ip_at + header_length + (6 if proto == 17 else 16)
        assert struct.unpack_from("!H", after, ip_at + 10)[0] == ip_checksum
        assert struct.unpack_from("!H", after, field)[0] == l4_checksum
        rest = bytearray(after)
        rest[ip_at + 10:ip_at + 12] = frame[ip_at + 10:ip_at + 12]
        rest[field:field + 2] = frame[field:field + 2]
        assert bytes(rest) == frame


@settings(max_examples=150, deadline=None)
@given(st.lists(ipv4_frames(), min_size=1, max_size=BURST), st.sampled_from([2048, 2047]))
def test_csum_verify_agrees_with_rfc1071(cases, room):
    """Frames with checksums right and wrong, and UDP ones without (zero)."""
    setup = setup_engine("csum", room=room)
    assert forward(setup, [c[0] for c in cases], room) == [c[0] for c in cases]
    verdicts = [model_verify(*c) for c in cases]
    counters = setup.counters()
    assert counters["bad_ip_checksum"] == sum(v[0] for v in verdicts)
    assert counters["bad_l4_checksum"] == sum(v[1] for v in verdicts)


def test_the_setup_arrays_are_what_the_dispatcher_takes():
    setup = setup_engine("txonly", profile="imix")
    code, config, templates, lengths, state = setup.arrays
    assert code == ENGINES["txonly"].code
    assert config.dtype == state.dtype == np.uint64 and config.shape == state.shape == (16,)
    assert templates.dtype == np.uint8 and templates.shape == (12, 1518)
    assert list(lengths) == [64, 570, 64, 64, 570, 64, 1518, 64, 570, 64, 64, 570]
    generate(setup, bursts=1)
    setup.reset()
    assert not state.any()
