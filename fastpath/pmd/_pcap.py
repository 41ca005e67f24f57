"""Recording frames to a pcap file (the classic format: microsecond stamps, Ethernet links).

A compiled loop copies the frames it receives or sends into a capture ring (`capture_burst`, one
call per burst, stamped once per burst; the frames may be rows of a burst array or the scattered
rows of an mbuf pool); between loop calls `PcapCapture.flush` packs what the ring holds into
pcap records with another kernel and writes them in one go. Frames that find the ring full are
counted, not recorded.
"""

from __future__ import annotations

import struct

import numpy as np
from numba import njit, types

from fastpath._numba import NJIT, copy_bytes, core_function

PCAP_MAGIC = 0xA1B2C3D4
LINKTYPE_ETHERNET = 1
RECORD_HEADER = 16

realtime_ns = core_function("clock", "fp_realtime_ns", types.int64())

# Capture state (uint64): frames held in the ring, frames that found it full.
STATE_HELD = 0
STATE_MISSED = 1


@njit(**NJIT)
def capture_burst(frames, lengths, slots, n, ring, ring_lengths, ring_stamps, state):
    """Copy n frames (at most the ring's row length of each) into the capture ring, as many as
    it has room for; the rest are counted as missed. Returns how many it took.

    As in the core's burst convention, the k-th frame is the row s = slots[k] of `frames` (a
    2-D uint8 array, rows contiguous), s = k when `slots` is None, and its length is lengths[s].
    """
    held = state[STATE_HELD]
    room = ring.shape[0] - held
    take = n if n < room else room
    state[STATE_MISSED] += n - take
    if take == 0:
        return 0
    now = realtime_ns()
    snap = ring.shape[1]
    room = frames.shape[1]
    stride = frames.strides[0]
    ring_at = ring.ctypes.data
    frames_at = frames.ctypes.data
    for k in range(take):
        if slots is None:
            s = np.uint64(k)
        else:
            s = np.uint64(slots[k])
        length = lengths[s]
        keep = length if length < snap else snap
        if keep > room:
            keep = room
        # Both rows are inside their arrays (s is a row of frames, held + k one of the ring)
        # and keep fits either row.
        copy_bytes(ring_at + np.uint64(held + k) * snap, frames_at + s * stride, keep)
        ring_lengths[held + k] = length
        ring_stamps[held + k] = now
    state[STATE_HELD] = held + take
    return take


@njit(**NJIT)
def _put_u32(out, at, value):
    for b in range(4):
        out[at + b] = (value >> (8 * b)) & 0xFF


@njit(**NJIT)
def pack_records(ring, ring_lengths, ring_stamps, n, out):
    """pcap records of the first n captured frames into out; returns the bytes used."""
    snap = ring.shape[1]
    at = 0
    for k in range(n):
        length = ring_lengths[k]
        kept = length if length < snap else snap
        stamp = ring_stamps[k]
        _put_u32(out, at, stamp // 1_000_000_000)
        _put_u32(out, at + 4, (stamp // 1000) % 1_000_000)
        _put_u32(out, at + 8, kept)
        _put_u32(out, at + 12, length)
        at += RECORD_HEADER
        out[at:at + kept] = ring[k, :kept]
        at += kept
    return at


# What a loop that captures nothing passes: a ring of no rows.
NO_CAPTURE = (np.zeros((0, 1), dtype=np.uint8), np.zeros(0, dtype=np.uint32),
              np.zeros(0, dtype=np.int64), np.zeros(2, dtype=np.uint64))


class PcapCapture:
    """A pcap file being written from a capture ring of `frames` rows of `snaplen` bytes."""

    def __init__(self, path: str, *, snaplen: int = 2048, frames: int = 4096):
        self.path = path
        self.snaplen = snaplen
        self.ring = np.zeros((frames, snaplen), dtype=np.uint8)
        self.lengths = np.zeros(frames, dtype=np.uint32)
        self.stamps = np.zeros(frames, dtype=np.int64)
        self.state = np.zeros(2, dtype=np.uint64)
        self._out = np.zeros(frames * (snaplen + RECORD_HEADER), dtype=np.uint8)
        self.written = 0
        self._file = open(path, "wb")  # noqa: SIM115 - open for the capture's lifetime
        self._file.write(struct.pack("<IHHiIII", PCAP_MAGIC, 2, 4, 0, 0, snaplen,
                                     LINKTYPE_ETHERNET))
        # Compile (or load) the packing kernel now, not while frames wait in the ring.
        pack_records(self.ring, self.lengths, self.stamps, 0, self._out)

    @property
    def arrays(self) -> tuple:
        """(ring, lengths, stamps, state), as the capturing kernels take them."""
        return self.ring, self.lengths, self.stamps, self.state

    @property
    def missed(self) -> int:
        """Frames that found the capture ring full."""
        return int(self.state[STATE_MISSED])

    def flush(self) -> None:
        """Write what the ring holds (call while no loop is capturing into it)."""
        held = int(self.state[STATE_HELD])
        if held:
            used = pack_records(self.ring, self.lengths, self.stamps, held, self._out)
            self._file.write(self._out[:used].tobytes())
            self.written += held
            self.state[STATE_HELD] = 0

    def close(self) -> None:
        """Write the rest and close the file."""
        self.flush()
        self._file.close()
