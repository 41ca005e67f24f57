"""The testpmd launcher on its own: DPDK's vhost PMD and DPDK's virtio-user, no fastpath back-end.

Proves that `fastpath.testing.Testpmd` starts, connects, counts and stops a real pair before other
tests rely on it as a peer. Each test runs a few seconds; testpmd takes up to a second to stop.
"""

import os
import time

import pytest

from fastpath.testing import PeerError, Testpmd

RUN_SECONDS = 2.0
QUEUE_SIZE = 1024

pytestmark = pytest.mark.timeout(20)


pytestmark = [pytestmark, pytest.mark.peer("dpdk")]


@pytest.fixture
def sock(tmp_path):
    """A fresh vhost-user socket path."""
    return tmp_path / "vhost.sock"


def _quiesce(front, vhost):
    """Stop the sender's forwarding, then wait until the receiver has taken every packet."""
    front.stop_forwarding()
    sent = front.final_stats()[0]["tx_packets"]
    vhost.wait_until(lambda: vhost.stats()["ipackets"] == sent, 5.0,
                     f"the vhost PMD to receive all {sent} packets")
    return sent


def test_virtio_user_txonly_reaches_vhost_rxonly_with_exact_counts(sock):
    with Testpmd.vhost(sock, forward="rxonly", cpu=0) as vhost:
        with Testpmd.virtio_user(sock, forward="txonly", txpkts=64, cpu=1,
                                 interactive=True) as front:
            front.wait_link_up()
            vhost.wait_link_up()
            time.sleep(RUN_SECONDS)
            assert front.stats()["opackets"] > 0
            sent = _quiesce(front, vhost)
        assert front.final_stats()[0]["tx_packets"] == sent
        live = vhost.stats()
        runtime_dir = vhost.runtime_dir
    received = vhost.final_stats()[0]
    assert received["rx_packets"] > 0
    assert received["rx_packets"] == sent
    assert live["ibytes"] == 64 * sent
    assert received["rx_dropped"] == 0
    assert not runtime_dir.exists()
    assert not front.runtime_dir.exists()


def test_listening_virtio_user_and_connecting_vhost(sock):
    with Testpmd.virtio_user(sock, server=True, interactive=True) as front:
        assert not front.link_up()
        with Testpmd.vhost(sock, client=True) as vhost:
            front.wait_link_up()
            vhost.wait_link_up()
            time.sleep(RUN_SECONDS / 2)
            sent = _quiesce(front, vhost)
            front.stop()
        received = vhost.final_stats()[0]["rx_packets"]
    assert received > 0
    assert received == sent


def test_stopping_the_sender_outright_loses_at_most_a_ring(sock):
    # SIGINT tears the device down at once. On an idle machine the receiver has taken
    # everything by then; when its CPU is busy, what is still in the ring is never received.
    with Testpmd.vhost(sock) as vhost:
        with Testpmd.virtio_user(sock, queue_size=QUEUE_SIZE) as front:
            front.wait_link_up()
            vhost.wait_link_up()
            time.sleep(RUN_SECONDS / 2)
        sent = front.final_stats()[0]["tx_packets"]
    received = vhost.final_stats()[0]["rx_packets"]
    assert received > 0
    assert 0 <= sent - received <= QUEUE_SIZE


def test_a_testpmd_that_exits_at_start_raises_with_its_output(sock):
    with pytest.raises(PeerError, match="exited with status") as caught:
        Testpmd(f"net_no_such_driver0,iface={sock}", ["--forward-mode=rxonly"])
    assert "net_no_such_driver0" in str(caught.value)


def test_a_client_without_a_socket_fails_fast(sock):
    with pytest.raises(PeerError, match="no vhost-user socket"):
        Testpmd.virtio_user(sock, socket_timeout=0.2)
    assert not os.path.exists(sock)
