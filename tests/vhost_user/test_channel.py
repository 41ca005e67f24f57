"""A vhost-user connection over a real Unix socket pair: whole messages, fds passed by
SCM_RIGHTS, and every way a peer can send too little, too much or the wrong fds."""

import os
import random
import socket
import struct

import pytest

from fastpath.errors import (
    ChannelClosed,
    FastpathError,
    PayloadTooLarge,
    TruncatedMessage,
    UnknownRequest,
    WrongFdCount,
)
from fastpath.hv import GuestMemory, SharedRegion
from fastpath.vhost_user import Channel
from fastpath.vhost_user.wire import (
    U64,
    FrontendRequest,
    MemoryRegion,
    MemoryTable,
    VringFile,
    encode_message,
)

F = FrontendRequest


@pytest.fixture
def pair():
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    channel = Channel(ours)
    yield channel, theirs
    channel.close()
    theirs.close()


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_set_mem_table_brings_an_fd_that_maps_the_front_ends_memory(pair):
    channel, peer = pair
    guest = GuestMemory([(0, 1 << 20)])
    guest.write(0x1234, b"shared")
    region = guest.regions[0]
    table = MemoryTable((MemoryRegion(0, region.size, region.user_addr, 0),))
    socket.send_fds(peer, [encode_message(F.SET_MEM_TABLE, table)], [region.fd])
    received = channel.receive()
    assert received.message.header.request is F.SET_MEM_TABLE
    assert received.message.payload == table
    [fd] = received.fds
    mapped = GuestMemory.from_shared(
        [SharedRegion(fd, 0, region.size, region.user_addr, 0)], owns_fds=True
    )
    assert mapped.read(0x1234, 6) == b"shared"
    mapped.close()
    guest.close()


def test_a_message_sent_in_pieces_arrives_whole(pair):
    channel, peer = pair
    data = encode_message(F.SET_FEATURES, U64(1 << 32 | 1 << 30))
    for piece in (data[:5], data[5:13], data[13:]):
        peer.send(piece)
    received = channel.receive()
    assert received.message.payload == U64(1 << 32 | 1 << 30)
    assert received.fds == []


def test_a_close_between_messages_is_an_orderly_end(pair):
    channel, peer = pair
    peer.send(encode_message(F.GET_FEATURES))
    peer.close()
    assert channel.receive().message.header.request is F.GET_FEATURES
    with pytest.raises(ChannelClosed):
        channel.receive()


@pytest.mark.parametrize("cut", [3, 12, 15])
def test_a_peer_that_closes_mid_message_is_a_truncated_message(pair, cut):
    channel, peer = pair
    data = encode_message(F.SET_FEATURES, U64(1))
    peer.send(data[:cut])
    peer.close()
    with pytest.raises(TruncatedMessage):
        channel.receive()


def test_fds_of_a_message_that_ends_early_are_closed(pair):
    channel, peer = pair
    memfd = os.memfd_create("kick")
    data = encode_message(F.SET_VRING_KICK, VringFile(0))
    before = open_fds()
    socket.send_fds(peer, [data[:8]], [memfd])
    peer.shutdown(socket.SHUT_WR)  # end of stream, and the fd count stays comparable
    with pytest.raises(TruncatedMessage):
        channel.receive()
    assert open_fds() == before
    os.close(memfd)


def test_an_fd_where_none_belongs_is_refused_and_closed(pair):
    channel, peer = pair
    memfd = os.memfd_create("stray")
    before = open_fds()
    socket.send_fds(peer, [encode_message(F.GET_FEATURES)], [memfd])
    with pytest.raises(WrongFdCount):
        channel.receive()
    assert open_fds() == before
    os.close(memfd)


def test_a_kick_without_its_fd_is_refused(pair):
    channel, peer = pair
    peer.send(encode_message(F.SET_VRING_KICK, VringFile(0)))
    with pytest.raises(WrongFdCount):
        channel.receive()


def test_more_fds_than_a_message_may_carry_are_refused_and_closed(pair):
    channel, peer = pair
    fds = [os.memfd_create(f"fd{i}") for i in range(12)]
    before = open_fds()
    socket.send_fds(peer, [encode_message(F.GET_FEATURES)], fds)
    with pytest.raises(WrongFdCount):
        channel.receive()
    assert open_fds() == before
    for fd in fds:
        os.close(fd)


def test_an_oversized_payload_is_refused_before_it_is_read(pair):
    channel, peer = pair
    peer.send(struct.pack("<III", F.SET_FEATURES, 1, 1 << 20))
    with pytest.raises(PayloadTooLarge):
        channel.receive()


def test_an_unknown_request_is_refused(pair):
    channel, peer = pair
    peer.send(struct.pack("<III", 999, 1, 0))
    with pytest.raises(UnknownRequest):
        channel.receive()


def test_fuzzed_streams_raise_only_named_errors_and_leak_no_fds():
    rng = random.Random(20261125)
    valid = [encode_message(F.GET_FEATURES), encode_message(F.SET_FEATURES, U64(3)),
             encode_message(F.SET_VRING_KICK, VringFile(1, no_fd=True))]
    before = open_fds()
    for _ in range(400):
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        data = bytearray(rng.choice(valid) * rng.randint(1, 3))
        for _ in range(rng.randint(0, 4)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        if rng.random() < 0.3:
            data = data[: rng.randrange(len(data))]
        fds = [os.memfd_create("f") for _ in range(rng.randint(0, 2))]
        socket.send_fds(theirs, [bytes(data) or b"\0"], fds) if fds else theirs.send(bytes(data))
        for fd in fds:
            os.close(fd)
        theirs.close()
        channel = Channel(ours)
        while True:
            try:
                for fd in channel.receive().fds:
                    os.close(fd)
            except FastpathError:
                break
        channel.close()
    assert open_fds() == before
