"""Seeded, bounded fuzzing of request parsing: headers and discard/write-zeroes ranges of random
and mutated bytes, cut anywhere over descriptors of random sizes, served by the compiled path
and by the reference side by side; they must agree on every request, byte for byte."""

import errno

import numpy as np
import pytest
from blk_guest import RING_TYPES, Twins, blk_range, header

from fastpath.devices.blk import (
    VIRTIO_BLK_T_DISCARD,
    VIRTIO_BLK_T_FLUSH,
    VIRTIO_BLK_T_GET_ID,
    VIRTIO_BLK_T_IN,
    VIRTIO_BLK_T_OUT,
    VIRTIO_BLK_T_WRITE_ZEROES,
    BlkDisk,
)

SEEDS = [1, 2, 3]
BATCHES = 40
BATCH = 12
KINDS = [VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT, VIRTIO_BLK_T_FLUSH, VIRTIO_BLK_T_GET_ID,
         VIRTIO_BLK_T_DISCARD, VIRTIO_BLK_T_WRITE_ZEROES]
DISK = BlkDisk(1 << 20, block_size=4096, seg_max=3, max_discard_sectors=64,
               max_write_zeroes_sectors=128, serial=b"fuzz")


def pick(rng, values: list[int]) -> int:
    """One of values, as a Python int (numpy's choice would make them int64)."""
    return values[int(rng.integers(0, len(values)))]


def request_bytes(rng) -> tuple[bytes, int]:
    """A request's device-readable bytes and its device-writable byte count."""
    kind = int(rng.choice(KINDS)) if rng.random() < 0.8 else int(rng.integers(0, 1 << 32))
    sector = pick(rng, [int(rng.integers(0, 300)), int(rng.integers(0, 1 << 63)) * 2 + 1,
                        2048 - int(rng.integers(0, 16))])
    readable = header(kind, sector, int(rng.integers(0, 1 << 32)))
    writable = 1
    if kind == VIRTIO_BLK_T_OUT:
        readable += rng.bytes(512 * int(rng.integers(0, 4)))
    elif kind in (VIRTIO_BLK_T_IN, VIRTIO_BLK_T_GET_ID):
        writable += int(rng.choice([0, 20, 512, 4096, 8192]))
    elif kind in (VIRTIO_BLK_T_DISCARD, VIRTIO_BLK_T_WRITE_ZEROES):
        for _ in range(int(rng.choice([1, 1, 1, 2, 0]))):
            readable += blk_range(int(rng.integers(0, 300)) * 8 + int(rng.integers(0, 2)),
                                  pick(rng, [0, 8, 64, 72, 128, int(rng.integers(0, 1 << 32))]),
                                  pick(rng, [0, 0, 1, 2, int(rng.integers(0, 1 << 32))]))
    if rng.random() < 0.3:
        # Mutate: flip bytes, cut the end off, or append bytes the type does not expect.
        data = bytearray(readable)
        for _ in range(int(rng.integers(1, 4))):
            data[int(rng.integers(0, len(data)))] ^= 1 << int(rng.integers(0, 8))
        choice = rng.random()
        if choice < 0.3:
            data = data[:int(rng.integers(0, len(data)))]
        elif choice < 0.5:
            data += rng.bytes(int(rng.choice([1, 16, 512])))
        readable = bytes(data)
    if rng.random() < 0.1:
        writable = int(rng.choice([0, 2, 21]))
    return readable, writable


def cut(rng, total: int) -> list[int]:
    """Random descriptor sizes adding up to `total` (zero-length ones now and then)."""
    points = sorted(int(p) for p in rng.integers(0, total + 1, size=int(rng.integers(0, 4))))
    bounds = [0, *points, total]
    return [b - a for a, b in zip(bounds, bounds[1:], strict=False) if b > a or rng.random() < 0.1]


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("ring", RING_TYPES)
def test_parsing_random_requests_agrees_with_the_reference(ring, seed):
    rng = np.random.default_rng(seed)
    twins = Twins(ring == "packed", DISK, size=128, max_burst=8,
                  event_idx=bool(seed % 2), writethrough=seed == 3)
    for _ in range(BATCHES):
        for _ in range(BATCH):
            readable, writable = request_bytes(rng)
            sizes = cut(rng, len(readable))
            pieces, at = [], 0
            for size in sizes:
                pieces.append(readable[at:at + size])
                at += size
            twins.add([p for p in pieces if p] if rng.random() < 0.9 else pieces,
                      cut(rng, writable), indirect=rng.random() < 0.3)
        while twins.take(int(rng.integers(1, 9))):
            pass
        picks = [int(p) for p in rng.integers(0, 64, size=len(twins.pending))]
        twins.complete(picks, [0, 0, -errno.EIO, -errno.EOPNOTSUPP])
        twins.check()
    counters = twins.served.queue.counters
    # The fuzz reaches every way a request can end.
    assert all(counters[name] for name in ("in", "out", "flush", "get_id", "discard",
                                           "write_zeroes", "unknown", "bad_header",
                                           "direction", "length", "alignment", "range",
                                           "unsupported", "no_status", "status_ok",
                                           "status_ioerr", "status_unsupp", "submitted"))
