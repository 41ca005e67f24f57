"""What a virtio-net device does with frames (virtio 1.2 §5.1.6), in plain Python: the oracle
for fastpath's net queues. Buffers are given by their writable sizes, in the order the driver
posted them; a frame is the packet without its header."""

from __future__ import annotations

import struct

NET_HDR_SIZE = 12


def header(num_buffers: int) -> bytes:
    """A receive header with no offloads: all zero but num_buffers (§5.1.6.4)."""
    return struct.pack("<BBHHHHH", 0, 0, 0, 0, 0, 0, num_buffers)


def received_frames(chains: list[bytes], stride: int) -> list[bytes]:
    """The frames a device takes from transmitq chains of these readable bytes: each without
    its header; a chain shorter than a header or with a frame longer than `stride` is dropped."""
    return [c[NET_HDR_SIZE:] for c in chains
            if len(c) >= NET_HDR_SIZE and len(c) - NET_HDR_SIZE <= stride]


def placed_frames(frames: list[bytes], buffers: list[int], *, mergeable: bool,
                  stride: int) -> tuple[int, list[bytes]]:
    """Deliver frames into receive buffers of these sizes, in order.

    Returns (frames taken, the bytes each used buffer holds, in used order). A frame longer
    than `stride` is dropped; without mergeable buffers a frame too big for the next buffer is
    dropped and the buffer kept; delivery stops at the first frame the buffers left cannot hold.
    With mergeable buffers one smaller than a header is handed back empty.
    """
    used: list[bytes] = []
    next_buffer = taken = 0
    for frame in frames:
        if len(frame) > stride:
            taken += 1
            continue
        need = len(frame) + NET_HDR_SIZE
        if not mergeable:
            if next_buffer == len(buffers):
                break
            if buffers[next_buffer] >= need:
                used.append(header(1) + frame)
                next_buffer += 1
            taken += 1
            continue
        while next_buffer < len(buffers) and buffers[next_buffer] < NET_HDR_SIZE:
            used.append(b"")
            next_buffer += 1
        end, room, dropped = next_buffer, 0, False
        while room < need and end < len(buffers):
            if buffers[end] < NET_HDR_SIZE:
                dropped = True
                end += 1
                break
            room += buffers[end]
            end += 1
        if dropped:
            used.extend(b"" for _ in range(next_buffer, end))
            next_buffer = end
            taken += 1
            continue
        if room < need:
            break
        data = header(end - next_buffer) + frame
        for size in buffers[next_buffer:end]:
            used.append(data[:size])
            data = data[size:]
        next_buffer = end
        taken += 1
    return taken, used
