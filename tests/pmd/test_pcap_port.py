"""The pcap port: a pcap file replayed through rx_burst, tx bursts captured to a pcap file, and
files that are not classic Ethernet pcap refused, each against Scapy or a pure-Python model.

The classic pcap layout (restated where a test writes a file itself): a 24-byte file header
(magic, version major and minor u16, thiszone i32, sigfigs, snaplen and link type u32), then per
frame a 16-byte record header (seconds, microseconds or nanoseconds, included length, original
length, u32 each) and the included bytes, all in the byte order the magic shows.
"""

from __future__ import annotations

import logging
import random
import struct
import time

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from numba import njit
from port_helpers import send_once
from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import Ether
from scapy.packet import Raw
from scapy.utils import rdpcap, wrpcap, wrpcapng

from fastpath._numba import NJIT
from fastpath.errors import FastpathError
from fastpath.pmd import MbufPool, open_port
from fastpath.pmd._dispatch import port_tx, port_wants_service
from fastpath.pmd._lcore import ForwardingLoop, Stream
from fastpath.pmd._mbuf import POOL_DATA, POOL_LENGTH, alloc_burst, free_burst
from fastpath.pmd._pcap_port import PcapPort, read_pcap
from fastpath.pmd.fwd import setup_engine

FILE_HEADER, RECORD_HEADER, MAX_RECORD = 24, 16, 262144
USEC_MAGIC, NSEC_MAGIC = 0xA1B2C3D4, 0xA1B23C4D


def scapy_frames(count: int, seed: int = 1) -> list[bytes]:
    """`count` UDP frames of 60 to 1514 bytes (both ends included), numbered in their payload."""
    rng = random.Random(seed)
    sizes = [60, 1514] + [rng.randint(60, 1514) for _ in range(count - 2)]
    frames = []
    for k, size in enumerate(sizes):
        base = (Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")
                / IP(src="10.0.0.1", dst="10.0.0.2") / UDP(sport=1024 + k, dport=9))
        payload = struct.pack("<I", k) + rng.randbytes(size - len(base) - 4)
        frames.append(bytes(base / Raw(payload)))
    assert [len(f) for f in frames] == sizes
    return frames


def pcap_bytes(frames, *, big_endian=False, nanoseconds=False, link=1, version=(2, 4),
               snaplen=65535) -> bytes:
    """A classic pcap file of `frames`, written by hand."""
    order = ">" if big_endian else "<"
    out = [struct.pack(order + "IHHiIII", NSEC_MAGIC if nanoseconds else USEC_MAGIC,
                       *version, 0, 0, snaplen, link)]
    for k, frame in enumerate(frames):
        fraction = k * (1000 if nanoseconds else 1)
        out.append(struct.pack(order + "IIII", 1_700_000_000 + k, fraction, len(frame),
                               len(frame)) + frame)
    return b"".join(out)


def model_read(data: bytes, room: int) -> tuple[list[bytes], int, int]:
    """What a reader of classic Ethernet pcap must make of `data`: (frames of 1 to `room`
    bytes, records skipped, bytes of a last record cut short); ValueError if it is no such
    file."""
    if data[:4] == b"\x0a\x0d\x0d\x0a":
        raise ValueError("pcapng")
    orders = {USEC_MAGIC.to_bytes(4, "little"): "<", NSEC_MAGIC.to_bytes(4, "little"): "<",
              USEC_MAGIC.to_bytes(4, "big"): ">", NSEC_MAGIC.to_bytes(4, "big"): ">"}
    if len(data) >= 4 and data[:4] not in orders:
        raise ValueError("magic")
    if len(data) < FILE_HEADER:
        raise ValueError("short")
    order = orders[data[:4]]
    major, _, _, _, _, link = struct.unpack(order + "HHiIII", data[4:FILE_HEADER])
    if major != 2 or link & 0xFFFF != 1:
        raise ValueError("version or link type")
    frames, skipped, at = [], 0, FILE_HEADER
    while at < len(data):
        if len(data) - at < RECORD_HEADER:
            return frames, skipped, len(data) - at
        (included,) = struct.unpack(order + "I", data[at + 8:at + 12])
        if included > MAX_RECORD:
            raise ValueError("corrupt")
        if included > len(data) - at - RECORD_HEADER:
            return frames, skipped, len(data) - at
        if 0 < included <= room:
            frames.append(data[at + RECORD_HEADER:at + RECORD_HEADER + included])
        else:
            skipped += 1
        at += RECORD_HEADER + included
    return frames, skipped, 0


def replay_all(port, pool, burst=32, limit=100_000) -> list[bytes]:
    """Every frame the port replays, through rx_burst; the mbufs go back."""
    mbufs = pool.burst(burst)
    frames = []
    while not port.done and len(frames) < limit:
        n = port.rx_burst(0, mbufs, burst)
        frames += [pool.frame(m) for m in mbufs[:n]]
        pool.release(mbufs, n)
    return frames


@pytest.fixture(scope="module")
def frames() -> list[bytes]:
    return scapy_frames(300)


@pytest.fixture(scope="module")
def scapy_pcap(tmp_path_factory, frames):
    path = tmp_path_factory.mktemp("pcap") / "frames.pcap"
    wrpcap(str(path), [Ether(f) for f in frames])
    return path


# Replay


def test_a_scapy_pcap_replays_byte_for_byte_in_order(scapy_pcap, frames):
    pool = MbufPool(256)
    with PcapPort(pool, replay=scapy_pcap) as port:
        assert not port.done
        assert replay_all(port, pool) == frames
        assert port.done and port.replayed == len(frames)
        mbufs = pool.burst(32)
        assert port.rx_burst(0, mbufs, 32) == 0
        counters = port.counters()
        assert counters.rx_frames == len(frames)
        assert counters.rx_bytes == sum(map(len, frames))
        assert counters.errors == 0 and port.skipped == 0 and port.truncated == 0
    assert pool.in_use == 0


def test_loops_replays_the_file_that_many_times(scapy_pcap, frames):
    pool = MbufPool(256)
    with PcapPort(pool, replay=scapy_pcap, loops=3) as port:
        assert replay_all(port, pool, burst=64) == frames * 3
        assert port.done and port.replayed == 3 * len(frames)


def test_loops_zero_replays_for_ever(scapy_pcap, frames):
    pool = MbufPool(256)
    with PcapPort(pool, replay=scapy_pcap, loops=0) as port:
        got = replay_all(port, pool, limit=5 * len(frames) // 2)
        assert not port.done
        assert got[:5 * len(frames) // 2] == (frames * 3)[:5 * len(frames) // 2]


def test_a_rate_releases_only_the_frames_due(scapy_pcap):
    pool = MbufPool(256)
    rate = 2000
    with PcapPort(pool, replay=scapy_pcap, rate=rate, loops=0) as port:
        mbufs = pool.burst(32)
        got = 0
        start = time.monotonic()
        while time.monotonic() - start < 0.5:
            n = port.rx_burst(0, mbufs, 32)
            pool.release(mbufs, n)
            got += n
        elapsed = time.monotonic() - start
        due = 1 + rate * elapsed
        assert 0.6 * due <= got <= due + 2, (got, elapsed)
        assert port.replayed == got


def test_a_pool_running_dry_delays_frames_and_loses_none(scapy_pcap, frames):
    pool = MbufPool(40)
    with PcapPort(pool, replay=scapy_pcap) as port:
        first, second = pool.burst(32), pool.burst(32)
        assert port.rx_burst(0, first, 32) == 32
        assert port.rx_burst(0, second, 32) == 8
        assert port.counters().rx_no_mbuf == 1
        got = [pool.frame(m) for m in first] + [pool.frame(m) for m in second[:8]]
        pool.release(first, 32)
        pool.release(second, 8)
        assert got + replay_all(port, pool) == frames


@pytest.mark.parametrize("big_endian", [False, True], ids=["little-endian", "big-endian"])
@pytest.mark.parametrize("nanoseconds", [False, True], ids=["usec", "nsec"])
def test_either_byte_order_and_either_stamp_resolution_replay(tmp_path, frames, big_endian,
                                                               nanoseconds):
    path = tmp_path / "hand.pcap"
    path.write_bytes(pcap_bytes(frames[:50], big_endian=big_endian, nanoseconds=nanoseconds))
    assert [bytes(p) for p in rdpcap(str(path))] == frames[:50]  # the file is what Scapy reads
    pool = MbufPool(256)
    with PcapPort(pool, replay=path) as port:
        assert port.replay_file.big_endian == big_endian
        assert port.replay_file.nanoseconds == nanoseconds
        assert replay_all(port, pool) == frames[:50]


def test_frames_longer_than_the_room_are_skipped_and_counted(scapy_pcap, frames, caplog):
    pool = MbufPool(256, room=1024)
    with caplog.at_level(logging.WARNING, logger="fastpath.pmd"):
        port = PcapPort(pool, replay=scapy_pcap)
    long = sum(len(f) > 1024 for f in frames)
    assert long > 10
    assert port.skipped == long and port.counters().errors == long
    assert f"{long} frames skipped" in caplog.text
    assert replay_all(port, pool) == [f for f in frames if len(f) <= 1024]


def test_empty_records_are_skipped(tmp_path, frames):
    path = tmp_path / "empty-records.pcap"
    path.write_bytes(pcap_bytes([b"", frames[0], b"", frames[1]]))
    pool = MbufPool(64)
    with PcapPort(pool, replay=path) as port:
        assert port.skipped == 2
        assert replay_all(port, pool) == frames[:2]


def test_a_file_with_no_frames_is_done_at_once(tmp_path):
    path = tmp_path / "none.pcap"
    path.write_bytes(pcap_bytes([]))
    pool = MbufPool(64)
    with PcapPort(pool, replay=path, loops=0) as port:
        assert port.done and replay_all(port, pool) == []


def test_no_replay_receives_nothing_and_no_capture_discards():
    pool = MbufPool(64)
    with PcapPort(pool) as port:
        assert port.done
        assert replay_all(port, pool) == []
        mbufs = pool.burst(8)
        assert port.rx_burst(0, mbufs, 8) == 0
        assert send_once(port, pool, [b"\x01" * 60] * 8) == 8
        assert port.captured == 0 and port.counters().tx_frames == 8
    assert pool.in_use == 0


# Files refused


def test_pcapng_is_refused_clearly(tmp_path, frames):
    path = tmp_path / "frames.pcapng"
    wrpcapng(str(path), [Ether(f) for f in frames[:5]])
    with pytest.raises(ValueError, match="pcapng file; only classic pcap"):
        PcapPort(MbufPool(64), replay=path)


def test_a_wrong_link_type_is_refused(tmp_path, frames):
    path = tmp_path / "raw-ip.pcap"
    path.write_bytes(pcap_bytes(frames[:3], link=101))
    with pytest.raises(ValueError, match="link type 101, not Ethernet"):
        PcapPort(MbufPool(64), replay=path)


def test_link_type_fcs_bits_do_not_change_the_link_type(tmp_path, frames):
    path = tmp_path / "fcs-bits.pcap"
    path.write_bytes(pcap_bytes(frames[:3], link=1 | 0x10000000))
    assert len(read_pcap(path)) == 3


@pytest.mark.parametrize("data, message", [
    (b"", "shorter than a pcap file header"),
    (USEC_MAGIC.to_bytes(4, "little") + b"\0" * 10, "shorter than a pcap file header"),
    (b"GIF89a" + b"\0" * 40, "not a pcap file"),
    (pcap_bytes([b"x" * 60], version=(1, 0)), "pcap version 1.0"),
], ids=["empty", "short-header", "not-pcap", "version-1"])
def test_files_that_are_not_classic_pcap_are_refused(tmp_path, data, message):
    path = tmp_path / "bad.pcap"
    path.write_bytes(data)
    with pytest.raises(ValueError, match=message):
        PcapPort(MbufPool(64), replay=path)


@pytest.mark.parametrize("cut", [7, RECORD_HEADER + 100], ids=["in-header", "in-data"])
def test_a_file_cut_inside_its_last_record_replays_the_rest_and_says_so(tmp_path, frames,
                                                                        caplog, cut):
    whole = pcap_bytes(frames[:10])
    ninth_end = len(pcap_bytes(frames[:9]))
    path = tmp_path / "cut.pcap"
    path.write_bytes(whole[:ninth_end + cut])
    pool = MbufPool(64)
    with caplog.at_level(logging.WARNING, logger="fastpath.pmd"):
        port = PcapPort(pool, replay=path)
    assert port.truncated == cut
    assert "ends inside its last record" in caplog.text
    assert replay_all(port, pool) == frames[:9]


def test_a_record_longer_than_any_pcap_record_is_corrupt(tmp_path, frames):
    data = bytearray(pcap_bytes(frames[:3]))
    second = FILE_HEADER + RECORD_HEADER + len(frames[0])
    data[second + 8:second + 12] = struct.pack("<I", MAX_RECORD + 1)
    path = tmp_path / "corrupt.pcap"
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="claims 262145 bytes.*corrupt"):
        read_pcap(path)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.binary(max_size=1600), max_size=30), st.booleans(), st.booleans(),
       st.integers(64, 2048))
def test_the_reader_agrees_with_the_model(tmp_path_factory, records, big_endian, nanoseconds,
                                          room):
    path = tmp_path_factory.mktemp("model") / "hand.pcap"
    data = pcap_bytes(records, big_endian=big_endian, nanoseconds=nanoseconds)
    path.write_bytes(data)
    read = read_pcap(path, room)
    expected, skipped, truncated = model_read(data, room)
    assert [read.frame(k) for k in range(len(read))] == expected
    assert (read.skipped, read.truncated) == (skipped, truncated)


def test_a_seeded_fuzz_of_the_reader_gives_the_model_or_a_clean_error(tmp_path, frames):
    rng = random.Random(20240607)
    valid = pcap_bytes(frames[:40], big_endian=False)
    path = tmp_path / "fuzz.pcap"
    pool = MbufPool(128, room=1024)
    outcomes = {"read": 0, "refused": 0}
    for case in range(400):
        data = bytearray(valid if case % 2 else pcap_bytes(frames[:40], big_endian=True))
        for _ in range(rng.randint(1, 4)):
            action = rng.randrange(4)
            if action == 0 and data:
                del data[rng.randrange(len(data) + 1):]
            elif action == 1 and data:
                at = rng.randrange(min(len(data), 64))
                data[at] = rng.randrange(256)
            elif action == 2 and data:
                data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
            elif len(data) > FILE_HEADER + 12:
                # A length field where a record header may be.
                at = rng.randrange(FILE_HEADER, len(data) - 4)
                data[at:at + 4] = struct.pack("<I", rng.choice(
                    [0, 1, 1023, 1024, 1025, MAX_RECORD, MAX_RECORD + 1, 2**32 - 1,
                     rng.getrandbits(32)]))
        path.write_bytes(bytes(data))
        try:
            expected = model_read(bytes(data), 1024)
        except ValueError:
            expected = None
        try:
            port = PcapPort(pool, replay=path, loops=2)
        except (ValueError, FastpathError):
            assert expected is None, f"case {case}: refused a file the model reads"
            outcomes["refused"] += 1
            continue
        assert expected is not None, f"case {case}: read a file the model refuses"
        got = replay_all(port, pool, burst=16)
        assert got == expected[0] * 2
        assert (port.skipped, port.truncated) == expected[1:]
        outcomes["read"] += 1
    assert outcomes["read"] > 50 and outcomes["refused"] > 50, outcomes
    assert pool.in_use == 0


# Capture


def test_tx_bursts_are_captured_as_scapy_reads_them(tmp_path, frames):
    path = tmp_path / "out.pcap"
    pool = MbufPool(256)
    sent = frames * 2  # 600 frames through a ring of 100: written out between bursts
    with PcapPort(pool, capture=path, capture_frames=100) as port:
        for first in range(0, len(sent), 32):
            assert send_once(port, pool, sent[first:first + 32]) == len(sent[first:first + 32])
        assert port.captured == len(sent)
        counters = port.counters()
        assert counters.tx_frames == len(sent) and counters.tx_bytes == sum(map(len, sent))
    assert port.written == len(sent)
    assert [bytes(p) for p in rdpcap(str(path))] == sent
    assert pool.in_use == 0


def test_a_full_capture_ring_takes_fewer_and_the_caller_keeps_the_rest(tmp_path, frames):
    path = tmp_path / "out.pcap"
    pool = MbufPool(64)
    with PcapPort(pool, capture=path, capture_frames=10) as port:
        assert send_once(port, pool, frames[:16]) == 10
        assert send_once(port, pool, frames[10:16]) == 6
    assert [bytes(p) for p in rdpcap(str(path))] == frames[:16]


def test_snaplen_keeps_the_head_of_each_frame_and_its_length(tmp_path, frames):
    path = tmp_path / "snap.pcap"
    pool = MbufPool(64)
    with PcapPort(pool, capture=path, snaplen=100) as port:
        assert send_once(port, pool, frames[:20]) == 20
    packets = rdpcap(str(path))
    assert [bytes(p) for p in packets] == [f[:100] for f in frames[:20]]
    assert [p.wirelen for p in packets] == [len(f) for f in frames[:20]]


def test_closing_writes_the_rest_and_then_discards(tmp_path, frames):
    path = tmp_path / "out.pcap"
    pool = MbufPool(64)
    port = PcapPort(pool, capture=path)
    mbufs = pool.burst(4)
    pool.alloc(mbufs, 4)
    for mbuf, frame in zip(mbufs, frames, strict=False):
        pool.put(mbuf, frame)
    # The compiled transmit alone: the frames wait in the ring until close.
    assert port_tx(port.rows[0], pool.arrays, mbufs, 4) == 4
    assert (port.captured, port.written) == (4, 0)
    port.close()
    assert [bytes(p) for p in rdpcap(str(path))] == frames[:4]
    assert send_once(port, pool, frames[:3]) == 3
    port.close()
    assert len(rdpcap(str(path))) == 4 and port.captured == 4


@njit(**NJIT)
def send_until_service(row, pool, mbufs, frames, lengths, first, burst, short):
    """Send frames[first:] in bursts until the port asks for service; returns the next frame
    to send. Counts in short[0] the frames the port did not take."""
    data = pool[POOL_DATA]
    pool_lengths = pool[POOL_LENGTH]
    k = first
    while k < frames.shape[0]:
        want = min(burst, frames.shape[0] - k)
        got = alloc_burst(pool, mbufs, want)
        for j in range(got):
            m = mbufs[j]
            data[m, :lengths[k + j]] = frames[k + j, :lengths[k + j]]
            pool_lengths[m] = lengths[k + j]
        sent = port_tx(row, pool, mbufs, got)
        short[0] += got - sent
        free_burst(pool, mbufs, sent, got)
        k += sent
        if port_wants_service(row):
            return k
    return k


def test_a_compiled_loop_is_told_to_return_before_the_capture_ring_overflows(tmp_path,
                                                                             frames):
    path = tmp_path / "out.pcap"
    pool = MbufPool(64)
    sent = frames * 3
    table = np.zeros((len(sent), 1514), dtype=np.uint8)
    lengths = np.array([len(f) for f in sent], dtype=np.uint32)
    for k, f in enumerate(sent):
        table[k, :len(f)] = np.frombuffer(f, dtype=np.uint8)
    short = np.zeros(1, dtype=np.int64)
    mbufs = pool.burst(32)
    with PcapPort(pool, capture=path, capture_frames=100) as port:
        k = returns = 0
        while k < len(sent):
            with port.hold():
                k = send_until_service(port.rows[0], pool.arrays, mbufs, table, lengths, k,
                                       32, short)
            port.service()
            returns += 1
        assert short[0] == 0
        # Three bursts of 32 fill 96 of the ring's 100 rows: no room for a fourth.
        assert returns == -(-len(sent) // 96)
    assert [bytes(p) for p in rdpcap(str(path))] == sent
    assert pool.in_use == 0


def test_a_forwarding_loop_replays_into_a_capture_losing_nothing(tmp_path, scapy_pcap, frames):
    path = tmp_path / "forwarded.pcap"
    pool = MbufPool(256)
    with PcapPort(pool, replay=scapy_pcap, loops=2) as source, \
            PcapPort(pool, capture=path, capture_frames=100) as sink:
        loop = ForwardingLoop([Stream(source, 0, sink, 0)], setup_engine("io"), pool, burst=32)
        loop.run(duration=30, until=lambda: source.done)
        assert source.done
        assert sink.counters().tx_dropped == 0 and sink.captured == 2 * len(frames)
    assert [bytes(p) for p in rdpcap(str(path))] == frames * 2
    assert pool.in_use == 0


@pytest.mark.parametrize("options, message", [
    ({"rate": -1.0}, "rate is 0"),
    ({"rate": float("nan")}, "rate is 0"),
    ({"loops": -1}, "loops is 0"),
    ({"snaplen": 0}, "snaplen is 1"),
    ({"capture_frames": 0}, "at least one frame"),
])
def test_impossible_options_are_refused(options, message):
    with pytest.raises(ValueError, match=message):
        PcapPort(MbufPool(64), **options)


def test_a_port_s_default_name_is_the_spec_that_opens_it(scapy_pcap, tmp_path):
    pool = MbufPool(64)
    with PcapPort(pool, replay=scapy_pcap, capture=tmp_path / "out.pcap") as port:
        name = port.name
    with open_port(name, pool) as again:
        assert again.replay_file.path == str(scapy_pcap) and again.written == 0
