"""fastpath's own front-end (`NetFrontend` over `Frontend`) against real back-ends: DPDK's vhost
PMD with testpmd forwarding (io) and fastpath vhost-net (io, macswap). Frames go out and come
back byte for byte, on split and packed rings, with and without mergeable buffers."""

import pytest

from fastpath.devices.net import NetFrontend
from fastpath.testing import Testpmd, VhostNetProcess

RING_TYPES = pytest.mark.parametrize("packed", [False, True], ids=["split", "packed"])
MERGEABLE = pytest.mark.parametrize("mergeable", [False, True], ids=["plain", "mergeable"])


def frames(n=300):
    # Sizes from a minimum Ethernet frame to a full one, each with its own pattern.
    out = []
    for k in range(n):
        size = 60 + (k * 97) % (1514 - 60 + 1)
        dst, src = bytes([0x02, 0, 0, 0, k >> 8, k & 0xFF]), bytes([0x04, 0, 0, 0, 0, 1])
        out.append(dst + src + b"\x88\xb5" + bytes((k + i) & 0xFF for i in range(size - 14)))
    return out


def round_trip(fe: NetFrontend, sent: list[bytes], header_apart=False) -> list[bytes]:
    got, offered = [], 0
    while offered < len(sent):
        offered += fe.send(sent[offered:offered + 64], header_apart=header_apart)
        got += fe.receive(offered - len(got), timeout=5)
    return got + fe.receive(len(sent) - len(got), timeout=5)


@pytest.mark.peer("dpdk")
@RING_TYPES
@MERGEABLE
def test_frames_come_back_from_dpdk_vhost(tmp_path, packed, mergeable):
    sock = str(tmp_path / "vhost.sock")
    with Testpmd.vhost(sock, forward="io", cpu=0) as peer:
        with NetFrontend(sock, packed=packed, mergeable=mergeable) as fe:
            assert fe.packed == packed and fe.mergeable == mergeable
            sent = frames()
            assert round_trip(fe, sent, header_apart=packed) == sent
        peer.stop()
        totals = peer.final_totals()
    assert totals["rx_packets"] == totals["tx_packets"] == len(sent)


@RING_TYPES
@pytest.mark.parametrize("fwd", ["io", "macswap"])
def test_frames_come_back_from_fastpath_vhost_net(tmp_path, packed, fwd):
    sock = str(tmp_path / "vhost.sock")
    with VhostNetProcess(sock, fwd=fwd, backoff=100, cpu=None) as backend:
        with NetFrontend(sock, packed=packed) as fe:
            sent = frames()
            got = round_trip(fe, sent, header_apart=not packed)
        result = backend.stop()
    expected = sent if fwd == "io" else [f[6:12] + f[:6] + f[12:] for f in sent]
    assert got == expected
    pair = result["connections"][0]["queue_pairs"][0]
    assert pair["rx_frames"] == pair["tx_frames"] == len(sent)
