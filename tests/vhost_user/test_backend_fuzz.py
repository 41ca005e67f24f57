"""Seeded, bounded fuzzing of the back-end engine with a virtio-net device behind it: a valid
DPDK-style message stream, mutated (bytes flipped, sizes changed, messages cut short, dropped
or repeated), goes through a real socket. The engine handles or refuses each message and ends
the connection cleanly; it never raises, and no fd outlives the connection."""

import os
import random
import socket
import threading

import pytest

from fastpath.devices.net._device import NET_FEATURES, VirtioNet
from fastpath.hv import GuestMemory
from fastpath.vhost_user import Channel
from fastpath.vhost_user._gate import Gate
from fastpath.vhost_user.wire import (
    FLAG_NEED_REPLY,
    U64,
    FrontendRequest,
    MemoryRegion,
    MemoryTable,
    ProtocolFeature,
    VringAddress,
    VringFile,
    VringState,
    encode_message,
)
from fastpath.vring import ring_layout

F = FrontendRequest
ITERATIONS = 300


def valid_stream(memory: GuestMemory) -> list[tuple[bytes, int]]:
    """(message bytes, fds it carries) as DPDK's virtio-user sends them for one queue pair."""
    region = memory.regions[0]
    uva = region.user_addr
    ack = FLAG_NEED_REPLY
    stream = [
        (encode_message(F.SET_OWNER), 0),
        (encode_message(F.GET_FEATURES), 0),
        (encode_message(F.GET_PROTOCOL_FEATURES), 0),
        (encode_message(F.SET_PROTOCOL_FEATURES, U64(ProtocolFeature.MQ
                                                     | ProtocolFeature.REPLY_ACK)), 0),
        (encode_message(F.SET_VRING_CALL, VringFile(0)), 1),
        (encode_message(F.SET_VRING_CALL, VringFile(1)), 1),
        (encode_message(F.SET_FEATURES, U64(NET_FEATURES & ~(1 << 34) | 1 << 30)), 0),
        (encode_message(F.SET_MEM_TABLE, MemoryTable((MemoryRegion(
            0, region.size, uva, 0),)), flags=ack), 1),
    ]
    for index in (0, 1):
        rings = ring_layout(256, 0x1000 + index * 0x10000, False)
        stream += [
            (encode_message(F.SET_VRING_NUM, VringState(index, 256)), 0),
            (encode_message(F.SET_VRING_BASE, VringState(index, 0)), 0),
            (encode_message(F.SET_VRING_ADDR, VringAddress(
                index, 0, uva + rings.desc, uva + rings.device, uva + rings.driver, 0)), 0),
            (encode_message(F.SET_VRING_KICK, VringFile(index)), 1),
            (encode_message(F.SET_VRING_ENABLE, VringState(index, 1), flags=ack), 0),
        ]
    stream += [(encode_message(F.GET_VRING_BASE, VringState(i, 0)), 0) for i in (0, 1)]
    return stream


def mutate(stream, rng):
    stream = list(stream)
    for _ in range(rng.randint(1, 4)):
        k = rng.randrange(len(stream))
        data, nfds = stream[k]
        choice = rng.randrange(6)
        if choice == 0:  # flip a byte anywhere
            i = rng.randrange(len(data))
            data = data[:i] + bytes([data[i] ^ (1 << rng.randrange(8))]) + data[i + 1:]
        elif choice == 1:  # a different size in the header
            data = data[:8] + rng.randrange(0, 600).to_bytes(4, "little") + data[12:]
        elif choice == 2:  # cut short
            data = data[: rng.randrange(len(data))]
        elif choice == 3:  # another request id
            data = rng.randrange(0, 60).to_bytes(4, "little") + data[4:]
        elif choice == 4:  # fds added or taken away
            nfds = rng.choice([0, 1, 2, 9])
        else:  # dropped or repeated
            if rng.random() < 0.5:
                del stream[k]
                continue
            stream.insert(k, (data, nfds))
        stream[k] = (data, nfds)
    return stream


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.mark.timeout(300)
def test_mutated_message_streams_never_break_the_engine():
    rng = random.Random(0xF457)
    memory = GuestMemory([(0, 4 << 20)])
    base_stream = valid_stream(memory)
    before = open_fds()
    for _ in range(ITERATIONS):
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        theirs.settimeout(10)
        device = VirtioNet(Gate())
        backend = device.backend(Channel(theirs))
        stream = mutate(base_stream, rng)

        def send_all(stream=stream, sock=ours):
            try:
                for data, nfds in stream:
                    fds = [os.eventfd(0) if i else os.dup(memory.regions[0].fd)
                           for i in range(nfds)]
                    try:
                        if fds:
                            socket.send_fds(sock, [data], fds)
                        else:
                            sock.sendall(data)
                    finally:
                        for fd in fds:
                            os.close(fd)
            except OSError:
                pass  # the back-end closed the connection: what it may do
            finally:
                sock.shutdown(socket.SHUT_WR)

        def drain(sock=ours):
            try:
                while sock.recv(65536):
                    pass
            except OSError:
                pass

        sender = threading.Thread(target=send_all)
        reader = threading.Thread(target=drain)
        sender.start()
        reader.start()
        for _ in range(len(stream) + 2):
            if not backend.handle_request():
                break
        backend.close()
        sender.join(10)
        reader.join(10)
        ours.close()
    memory.close()
    assert open_fds() <= before + 2
