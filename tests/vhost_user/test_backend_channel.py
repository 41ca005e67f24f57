"""The back-end channel (BACKEND_REQ): requests the back-end sends the front-end, acknowledged
when REPLY_ACK is negotiated, against fastpath's own `Frontend` answering them."""

import logging
import threading
import time

import pytest
from scripted_frontend import PlainDevice

from fastpath.errors import BackendRefused
from fastpath.vhost_user import Frontend
from fastpath.vhost_user._backend import Backend
from fastpath.vhost_user._server import BackendServer
from fastpath.vhost_user.wire import (
    BackendRequest,
    ConfigFlag,
    DeviceConfig,
    FrontendRequest,
    ProtocolFeature,
)
from fastpath.vring import VIRTIO_F_VERSION_1

F = FrontendRequest
PROTOCOL = (ProtocolFeature.BACKEND_REQ | ProtocolFeature.REPLY_ACK | ProtocolFeature.CONFIG)
DEADLINE = 0.5


class Served:
    """A listening back-end whose loop runs in a thread until `pause()`."""

    def __init__(self, path):
        self.server = BackendServer(path, lambda ch: Backend(
            ch, PlainDevice(features=1 << VIRTIO_F_VERSION_1, config=b"config-v1")),
            message_deadline=DEADLINE)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def _loop(self):
        while not self._stop.is_set():
            self.server.serve_once(0.01)

    def pause(self):
        """Stop the loop thread: the test turns the loop itself from now on."""
        self._stop.set()
        self._thread.join(5)

    def turn(self, seconds=0.2):
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            self.server.serve_once(0.01)


@pytest.fixture
def served(tmp_path):
    served = Served(str(tmp_path / "vhost.sock"))
    yield served
    served.pause()
    served.server.close()


def connected(served, protocol=PROTOCOL) -> tuple[Frontend, Backend]:
    fe = Frontend(served.server.path)
    fe.negotiate(1 << VIRTIO_F_VERSION_1, protocol)
    served.pause()
    served.turn()  # what no ack waited for (SET_BACKEND_REQ_FD without REPLY_ACK)
    (backend,) = served.server.backends
    return fe, backend


def test_a_config_change_reaches_the_front_end_which_acks_it_and_reads_the_config_again(served):
    fe, backend = connected(served)
    assert backend.backend_channel is not None
    backend.device.config[7:9] = b"v2"
    assert backend.config_changed()
    message = fe.next_backend_request(timeout=5)
    assert message.header.request == BackendRequest.CONFIG_CHANGE_MSG
    assert message.header.need_reply
    served.turn()
    assert backend.waiting_since() is None and backend.must_close is None
    # What a driver does next: read the config space again.
    loop = threading.Thread(target=served.turn, args=(1.0,), daemon=True)
    loop.start()
    reply = fe.request(F.GET_CONFIG, DeviceConfig(0, ConfigFlag(0), bytes(9)))
    loop.join()
    assert reply.data == b"config-v2"
    fe.close()


def test_a_failing_ack_is_logged_and_the_connection_goes_on(served, caplog):
    fe, backend = connected(served)
    with caplog.at_level(logging.ERROR, logger="fastpath.vhost_user"):
        assert backend.config_changed()
        assert fe.next_backend_request(timeout=5, status=1) is not None
        served.turn()
    assert any("failed CONFIG_CHANGE_MSG" in r.getMessage() for r in caplog.records)
    assert served.server.backends == [backend]
    fe.close()


def test_a_front_end_that_never_acks_a_back_end_request_is_closed_at_the_deadline(served):
    fe, backend = connected(served)
    assert backend.config_changed()
    served.turn(DEADLINE + 0.5)
    assert served.server.backends == []
    fe.close()


def test_without_backend_req_nothing_is_sent_and_the_front_end_has_no_channel(served):
    fe, backend = connected(served, ProtocolFeature.REPLY_ACK | ProtocolFeature.CONFIG)
    assert backend.backend_channel is None
    assert not backend.config_changed()
    with pytest.raises(BackendRefused):
        fe.next_backend_request(timeout=0.1)
    fe.close()


def test_without_reply_ack_requests_are_sent_without_asking_for_one(served):
    fe, backend = connected(served, ProtocolFeature.BACKEND_REQ | ProtocolFeature.CONFIG)
    assert backend.config_changed()
    message = fe.next_backend_request(timeout=5)
    assert message.header.request == BackendRequest.CONFIG_CHANGE_MSG
    assert not message.header.need_reply
    assert backend.waiting_since() is None
    fe.close()
