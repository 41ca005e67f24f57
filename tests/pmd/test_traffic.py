"""Traffic profiles and `fastpath gen`: the frames each profile makes, as Scapy reads them back
from the pcap file written."""

import argparse
from collections import Counter

import pytest
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import Dot1Q, Ether
from scapy.packet import Raw
from scapy.utils import rdpcap

from fastpath.commands import gen as _gen
from fastpath.pmd._traffic import PROFILES, profile_frames

LAYERS = {"udp64": (Ether, IP, UDP), "tcp": (Ether, IP, TCP), "imix": (Ether, IP, UDP),
          "vlan": (Ether, Dot1Q, IP, UDP), "ipv6": (Ether, IPv6, UDP),
          "flows": (Ether, IP, UDP)}


def gen(*argv) -> int:
    parser = argparse.ArgumentParser(prog="fastpath gen")
    _gen.add_arguments(parser)
    return _gen.run(parser.parse_args(argv))


def checksums_right(frame: bytes) -> bool:
    """Whether Scapy, computing every checksum afresh, builds the same bytes."""
    packet = Ether(frame)
    for layer in (IP, UDP, TCP):
        if packet.haslayer(layer):
            del packet[layer].chksum
    return bytes(packet) == frame


@pytest.mark.parametrize("profile", list(PROFILES))
def test_each_profile_makes_the_layers_it_names_with_checksums_right(profile):
    frames = profile_frames(profile, count=24, flows=8)
    assert len(frames) == 24
    for frame in frames:
        packet = Ether(frame)
        assert all(packet.haslayer(layer) for layer in LAYERS[profile])
        assert packet.src == "02:00:00:00:00:01" and packet.dst == "02:00:00:00:00:02"
        assert packet[Raw].load.startswith(b"fastpath"[:len(packet[Raw].load)])
        assert checksums_right(frame)
    if profile != "imix":
        assert {len(f) for f in frames} == {64}


@pytest.mark.parametrize("profile", ["udp64", "tcp", "vlan", "ipv6", "flows"])
@pytest.mark.parametrize("size", [65, 128, 1518, 9000])
def test_a_size_sets_every_frames_length(profile, size):
    frames = profile_frames(profile, count=3, size=size, flows=2)
    assert [len(f) for f in frames] == [size] * 3
    packet = Ether(frames[0])
    assert packet[Raw].load == (b"fastpath" * (size // 8 + 1))[:len(packet[Raw].load)]
    assert checksums_right(frames[0])


@pytest.mark.parametrize("profile, size", [("udp64", 60), ("tcp", 60), ("vlan", 60),
                                           ("ipv6", 62)])
def test_the_shortest_frames_are_headers_and_what_ethernet_asks(profile, size):
    frame = profile_frames(profile, count=1, size=size)[0]
    assert len(frame) == size and checksums_right(frame)


def test_imix_holds_its_ratio_of_seven_four_one():
    frames = profile_frames("imix", count=1200)
    assert Counter(len(f) for f in frames) == {64: 700, 570: 400, 1518: 100}
    # Every dozen frames holds the whole mix, so any stretch keeps to it.
    assert Counter(len(f) for f in frames[600:612]) == {64: 7, 570: 4, 1518: 1}


def test_the_flows_profile_has_exactly_its_flows_in_turn():
    frames = profile_frames("flows", count=250, flows=100)
    tuples = []
    for frame in frames:
        packet = Ether(frame)
        tuples.append((packet[IP].src, packet[IP].dst, packet[IP].proto, packet[UDP].sport,
                       packet[UDP].dport))
    assert len(set(tuples)) == 100
    assert tuples[:100] == tuples[100:200]
    assert tuples[5] == ("198.18.0.6", "198.18.0.2", 17, 1029, 1025)
    assert tuples[99] == ("198.18.0.100", "198.18.0.2", 17, 1123, 1025)


def test_repeated_frames_are_one_bytes_object():
    frames = profile_frames("udp64", count=1000)
    assert len({id(f) for f in frames}) == 1


@pytest.mark.parametrize("kwargs, message", [
    ({"profile": "smtp"}, "unknown traffic profile 'smtp'; choose one of udp64, tcp, imix, "
                          "vlan, ipv6, flows"),
    ({"size": 59}, "60 to 9000 bytes"),
    ({"size": 9001}, "60 to 9000 bytes"),
    ({"profile": "ipv6", "size": 61}, "at least 62 bytes"),
    ({"profile": "imix", "size": 100}, "imix frames have their own sizes"),
    ({"profile": "flows", "flows": 0}, "flows must be 1 to 65536"),
    ({"flows": 65537}, "flows must be 1 to 65536"),
    ({"count": 0}, "count must be at least 1"),
])
def test_impossible_profiles_are_refused(kwargs, message):
    kwargs = {"profile": "udp64", "count": 1} | kwargs
    with pytest.raises(ValueError, match=message):
        profile_frames(kwargs.pop("profile"), **kwargs)


# fastpath gen.

@pytest.mark.parametrize("profile", list(PROFILES))
def test_gen_writes_a_pcap_scapy_reads_back(profile, tmp_path, capsys):
    path = tmp_path / f"{profile}.pcap"
    assert gen("--profile", profile, "--count", "120", "--flows", "30", "-o", str(path)) == 0
    packets = rdpcap(str(path))
    assert [bytes(p) for p in packets] == profile_frames(profile, count=120, flows=30)
    assert all(p.haslayer(layer) for p in packets for layer in LAYERS[profile])
    lengths = [len(p) for p in packets]
    summary = capsys.readouterr().out.strip().splitlines()
    assert summary == [f"{path}: 120 {profile} frames, {sum(lengths):,} bytes, "
                       f"{min(lengths)} to {max(lengths)} bytes each"]


def test_gen_sizes_and_flows_reach_the_file(tmp_path):
    path = tmp_path / "flows.pcap"
    assert gen("--profile", "flows", "--count", "1000", "--size", "256", "--flows", "10",
               "-o", str(path)) == 0
    packets = rdpcap(str(path))
    assert {len(p) for p in packets} == {256}
    assert len({(p[IP].src, p[UDP].sport) for p in packets}) == 10


def test_gen_imix_holds_the_ratio_in_the_file(tmp_path):
    path = tmp_path / "imix.pcap"
    assert gen("--profile", "imix", "--count", "2400", "-o", str(path)) == 0
    assert Counter(len(p) for p in rdpcap(str(path))) == {64: 1400, 570: 800, 1518: 200}


@pytest.mark.parametrize("argv, message", [
    (["--count", "0"], "--count must be 1 to 10,000,000"),
    (["--count", "5", "--size", "20"], "60 to 9000 bytes"),
    (["--count", "5", "--size", "10000"], "60 to 9000 bytes"),
    (["--count", "5", "--profile", "imix", "--size", "128"], "imix frames have their own"),
    (["--count", "5", "--profile", "flows", "--flows", "0"], "flows must be 1 to 65536"),
])
def test_gen_refuses_bad_values_with_the_reason(argv, message, tmp_path, capsys):
    path = tmp_path / "out.pcap"
    assert gen(*argv, "-o", str(path)) == 2
    assert message in capsys.readouterr().err
    assert not path.exists()


@pytest.mark.parametrize("argv", [["--count", "5", "--profile", "smtp"],
                                  ["--count", "many"], ["--profile", "tcp"]])
def test_gen_refuses_what_argparse_can_tell(argv, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        gen(*argv, "-o", str(tmp_path / "out.pcap"))
    assert exit_.value.code == 2
    assert "fastpath gen: error:" in capsys.readouterr().err


def test_gen_says_when_it_cannot_write(tmp_path, capsys):
    assert gen("--count", "1", "-o", str(tmp_path / "no" / "such" / "dir.pcap")) == 1
    assert "cannot write" in capsys.readouterr().err


def test_gen_help_describes_every_profile(capsys):
    parser = argparse.ArgumentParser(prog="fastpath gen")
    _gen.add_arguments(parser)
    text = parser.format_help()
    for name, description in PROFILES.items():
        assert f"  {name:6} {description}" in text
    assert "FCS" in text and "examples:" in text
