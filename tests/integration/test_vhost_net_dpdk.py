"""`fastpath vhost-net` with DPDK testpmd's virtio-user front-end as the real peer: every frame
testpmd sends is counted exactly, frames go round through --fwd io and macswap, on split and
packed rings, with and without mergeable buffers, in order, with two queue pairs, with either
side listening, --fwd txonly fills testpmd's receive buffers, and a front-end that dies
mid-traffic and comes back is served again."""

import os
import signal
import time

import pytest

from fastpath.testing import Testpmd, VhostNetProcess, received_frames, sent_frames

pytestmark = pytest.mark.peer("dpdk")

TRAFFIC_SECONDS = 2.0


def run_txonly(sock, *, backend_args=None, **frontend):
    """testpmd txonly into fastpath (fwd drop) for a while; both sides' counts."""
    with VhostNetProcess(sock, fwd="drop", **(backend_args or {})) as backend:
        with Testpmd.virtio_user(sock, forward="txonly", **frontend) as peer:
            time.sleep(TRAFFIC_SECONDS)
            peer.stop()
            sent = peer.final_totals()["tx_packets"]
        result = backend.stop()
    return sent, result


@pytest.mark.parametrize("options", [
    {},
    {"packed": True},
    {"mrg_rxbuf": False},
    {"mrg_rxbuf": True},
    {"in_order": True},
    {"packed": True, "in_order": True, "mrg_rxbuf": True},
], ids=["split", "packed", "mrg_rxbuf=0", "mrg_rxbuf=1", "in_order", "packed-in_order-mrg"])
def test_every_frame_testpmd_sends_is_received(tmp_path, options):
    sent, result = run_txonly(str(tmp_path / "vhost.sock"), **options)
    assert sent > 10_000
    assert received_frames(result) == sent
    pair = result["connections"][0]["queue_pairs"][0]
    assert pair["rx_bytes"] == 64 * sent and pair["rx_dropped"] == 0


def test_large_frames_are_received_whole(tmp_path):
    sent, result = run_txonly(str(tmp_path / "vhost.sock"), txpkts=1518)
    assert sent > 1000 and received_frames(result) == sent
    assert result["connections"][0]["queue_pairs"][0]["rx_bytes"] == 1518 * sent


def test_two_queue_pairs_are_both_served(tmp_path):
    sent, result = run_txonly(str(tmp_path / "vhost.sock"), queues=2,
                              backend_args={"queues": 2})
    pairs = result["connections"][0]["queue_pairs"]
    assert received_frames(result) == sent
    assert all(p["rx_frames"] > 1000 for p in pairs)


def test_fastpath_connects_to_a_listening_front_end(tmp_path):
    sock = str(tmp_path / "vhost.sock")
    with Testpmd.virtio_user(sock, forward="txonly", server=True) as peer:
        with VhostNetProcess(sock, fwd="drop", client=True) as backend:
            peer.wait_forwarding()
            time.sleep(TRAFFIC_SECONDS)
            peer.stop()
            sent = peer.final_totals()["tx_packets"]
            time.sleep(0.5)
            result = backend.stop()
    assert sent > 10_000 and received_frames(result) == sent


@pytest.mark.parametrize("fwd", ["io", "macswap"])
@pytest.mark.parametrize("packed", [False, True], ids=["split", "packed"])
def test_frames_come_back_through_the_forwarding_loop(tmp_path, fwd, packed):
    # testpmd sends one burst first, then forwards whatever comes back: the frames go round
    # between the two for as long as the test runs.
    sock = str(tmp_path / "vhost.sock")
    with VhostNetProcess(sock, fwd=fwd) as backend:
        with Testpmd.virtio_user(sock, forward="io", packed=packed, extra=["--tx-first"]) as peer:
            time.sleep(TRAFFIC_SECONDS)
            peer.stop()
            totals = peer.final_totals()
        result = backend.stop()
    assert totals["rx_packets"] > 10_000
    # Every frame testpmd received came from fastpath, and fastpath received all it sent.
    assert sent_frames(result) >= totals["rx_packets"]
    assert received_frames(result) == totals["tx_packets"]


@pytest.mark.parametrize("packed, mrg_rxbuf, size", [
    (False, True, 64), (False, False, 1518), (True, True, 1518), (True, False, 64),
], ids=["split-mrg-64", "split-1518", "packed-mrg-1518", "packed-64"])
def test_txonly_fills_testpmd_s_receive_buffers(tmp_path, packed, mrg_rxbuf, size):
    sock = str(tmp_path / "vhost.sock")
    with VhostNetProcess(sock, fwd="txonly", extra=["--size", str(size)]) as backend:
        with Testpmd.virtio_user(sock, forward="rxonly", packed=packed,
                                 mrg_rxbuf=mrg_rxbuf) as peer:
            time.sleep(TRAFFIC_SECONDS)
            peer.stop()
            received = peer.final_totals()["rx_packets"]
        result = backend.stop()
    pair = result["connections"][0]["queue_pairs"][0]
    assert received > 10_000
    # Every frame delivered reached testpmd, but those left in its ring (1024 entries) when
    # it stopped; each was a whole frame of the size.
    assert received <= pair["tx_frames"] <= received + 1024
    assert pair["tx_bytes"] == size * pair["tx_frames"] and pair["fwd_dropped"] == 0


def test_a_front_end_killed_mid_traffic_and_started_again_is_served_again(tmp_path):
    sock = str(tmp_path / "vhost.sock")
    with VhostNetProcess(sock, fwd="drop") as backend:
        first = Testpmd.virtio_user(sock, forward="txonly")
        time.sleep(1.0)
        os.kill(first.pid, signal.SIGKILL)
        first.stop()
        with Testpmd.virtio_user(sock, forward="txonly") as second:
            time.sleep(TRAFFIC_SECONDS)
            second.stop()
            sent = second.final_totals()["tx_packets"]
        time.sleep(0.3)
        result = backend.stop()
    connections = result["connections"]
    assert len(connections) == 2
    assert sum(p["rx_frames"] for p in connections[0]["queue_pairs"]) > 1000
    assert sum(p["rx_frames"] for p in connections[1]["queue_pairs"]) == sent


def test_received_frames_are_recorded_in_a_pcap_file(tmp_path):
    from scapy.all import UDP, rdpcap

    sock, pcap = str(tmp_path / "vhost.sock"), str(tmp_path / "rx.pcap")
    with VhostNetProcess(sock, fwd="drop", extra=["--pcap", pcap]) as backend:
        with Testpmd.virtio_user(sock, forward="txonly", txpkts=100) as peer:
            time.sleep(1.0)
            peer.stop()
            sent = peer.final_totals()["tx_packets"]
        result = backend.stop()
    assert result["pcap"] == {"file": pcap, "frames": sent, "missed": 0}
    packets = rdpcap(pcap, count=1000)
    assert len(packets) == min(sent, 1000)
    assert all(len(p) == 100 and UDP in p for p in packets)


def test_fastpath_killed_and_restarted_as_a_client_is_served_again(tmp_path):
    # DPDK's virtio-user in server mode keeps listening when its back-end dies, and sets the
    # device up again when a back-end connects anew.
    sock = str(tmp_path / "vhost.sock")
    with Testpmd.virtio_user(sock, forward="txonly", server=True) as peer:
        first = VhostNetProcess(sock, fwd="drop", client=True)
        peer.wait_forwarding()
        time.sleep(1.0)
        os.kill(first.pid, signal.SIGKILL)
        first.kill()
        with VhostNetProcess(sock, fwd="drop", client=True) as second:
            time.sleep(TRAFFIC_SECONDS)
            result = second.stop()
        peer.stop()
    assert received_frames(result) > 10_000
