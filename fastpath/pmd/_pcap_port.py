"""The pcap port: its receive side replays a pcap file, its transmit side records to one.

Replay reads the whole file at construction into one data blob (the file's bytes) with the
offset and length of every frame kept; the receive kernel copies frames from there into mbufs,
in order, `loops` times over (0: for ever), and at `rate` frames per second when a rate is set:
each call releases the frames due by then (the first at once, then one every 1/rate seconds
after the first call), never sleeping.

Capture goes through a capture ring (`fastpath.pmd._pcap`): the transmit kernel copies
frames from their mbufs into it, taking only as many as it has room for, and `wants_service`
asks the loop to come back to Python, whose `service()` writes the ring to the file, before it
cannot take another full burst. So a capture loses nothing, whatever the loop's pace.

The files are classic pcap (what tcpdump and Scapy write): either byte order, microsecond or
nanosecond stamps, Ethernet links. pcapng is refused.
"""

from __future__ import annotations

import logging
import math
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numba import njit

from fastpath._numba import (
    NJIT,
    carray,
    copy_bytes,
    i64_pointer,
    u8_pointer,
    u32_pointer,
    u64_pointer,
)
from fastpath.pmd._kinds import PortKind, register_port_kind
from fastpath.pmd._mbuf import POOL_DATA, POOL_LENGTH, MbufPool, free_burst
from fastpath.pmd._pcap import (
    LINKTYPE_ETHERNET,
    RECORD_HEADER,
    STATE_HELD,
    PcapCapture,
    capture_burst,
    realtime_ns,
)
from fastpath.pmd._port import ROW_ARGS, STAT_ERRORS, Port
from fastpath.pmd._port_kernels import take_mbufs

log = logging.getLogger("fastpath.pmd")

FILE_HEADER = 24
# The largest record any pcap tool writes (tcpdump's and Wireshark's maximum snapshot length):
# a longer one means a corrupt file, not a big frame.
MAX_RECORD = 262144
# The file's first four bytes, read little-endian: (big-endian, nanosecond stamps).
MAGICS = {
    0xA1B2C3D4: (False, False),
    0xA1B23C4D: (False, True),
    0xD4C3B2A1: (True, False),
    0x4D3CB2A1: (True, True),
}
PCAPNG_MAGIC = 0x0A0D0D0A  # the block type of a pcapng section header

KIND = 5

# Row arguments.
ARG_STATE = ROW_ARGS            # address of the port's int64[STATE_COLUMNS] state
ARG_BLOB = ROW_ARGS + 1         # address of the replayed file's bytes (uint8)
ARG_OFFSETS = ROW_ARGS + 2      # address of each replayed frame's offset in the blob (uint64)
ARG_LENGTHS = ROW_ARGS + 3      # address of each replayed frame's length (uint32)
ARG_FRAMES = ROW_ARGS + 4       # frames to replay; 0: the port receives nothing
ARG_RING = ROW_ARGS + 5         # address of the capture ring (uint8, RING_ROWS x SNAPLEN)
ARG_RING_ROWS = ROW_ARGS + 6    # frames the ring holds; 0: the port discards what it is sent
ARG_SNAPLEN = ROW_ARGS + 7      # bytes kept of each frame captured
ARG_RING_LENGTHS = ROW_ARGS + 8  # address of the ring's frame lengths (uint32)
ARG_RING_STAMPS = ROW_ARGS + 9   # address of the ring's stamps (int64)
ARG_RING_STATE = ROW_ARGS + 10   # address of the ring's state (uint64: held, missed)

# State columns (int64).
STATE_NEXT = 0          # the next frame to replay
STATE_PASSES = 1        # passes over the file completed
STATE_LOOPS = 2         # passes to make; 0: for ever
STATE_DONE = 3          # 1 once the last pass is complete
STATE_REPLAYED = 4      # frames replayed
STATE_RATE_MHZ = 5      # replay rate in frames per 1000 s; 0: as fast as asked
STATE_START_NS = 6      # the clock at the first paced receive; 0: not yet
STATE_BURST_MAX = 7     # the largest burst a transmit was asked to take
STATE_COLUMNS = 8

# Walk outcomes (the third member of what `index_records` returns).
WALK_COMPLETE = 0       # every byte belongs to a whole record
WALK_PARTIAL = 1        # the file ends inside a record (a header or its data)
WALK_CORRUPT = 2        # a record claims more than MAX_RECORD bytes


@njit(**NJIT)
def _state(row):
    # SAFETY: ARG_STATE is the address of the port's int64[STATE_COLUMNS] state, kept by the
    # port as long as its row.
    return carray(i64_pointer(row[ARG_STATE]), (STATE_COLUMNS,))


@njit(**NJIT)
def _u32(raw, at, big_endian):
    if big_endian:
        return ((np.uint32(raw[at]) << 24) | (np.uint32(raw[at + 1]) << 16)
                | (np.uint32(raw[at + 2]) << 8) | np.uint32(raw[at + 3]))
    return ((np.uint32(raw[at + 3]) << 24) | (np.uint32(raw[at + 2]) << 16)
            | (np.uint32(raw[at + 1]) << 8) | np.uint32(raw[at]))


@njit(**NJIT)
def index_records(raw, big_endian, room, offsets, lengths):
    """Walk the records after a pcap file header: returns (kept, skipped, outcome, at), the
    frames of 1 to `room` bytes, those skipped (longer, or empty), a WALK_* outcome and the
    offset where the walk stopped. With offsets and lengths of `kept` entries (from a first
    walk that passes empty arrays) it fills in each kept frame's data offset and length."""
    end = raw.shape[0]
    fill = offsets.shape[0] > 0
    at = FILE_HEADER
    kept = 0
    skipped = 0
    while at < end:
        if end - at < RECORD_HEADER:
            return kept, skipped, WALK_PARTIAL, at
        included = np.int64(_u32(raw, at + 8, big_endian))
        if included > MAX_RECORD:
            return kept, skipped, WALK_CORRUPT, at
        if included > end - at - RECORD_HEADER:
            return kept, skipped, WALK_PARTIAL, at
        if included == 0 or included > room:
            skipped += 1
        else:
            if fill:
                offsets[kept] = at + RECORD_HEADER
                lengths[kept] = included
            kept += 1
        at += RECORD_HEADER + included
    return kept, skipped, WALK_COMPLETE, at


@dataclass
class PcapFile:
    """A classic pcap file read whole: frame k is blob[offsets[k]:offsets[k] + lengths[k]].

    `skipped` counts records left out (longer than the room asked for, or empty); `truncated`
    is the number of bytes of a last record the file ends inside (0 for a whole file).
    """

    path: str
    blob: np.ndarray
    offsets: np.ndarray
    lengths: np.ndarray
    big_endian: bool
    nanoseconds: bool
    snaplen: int
    skipped: int
    truncated: int

    def __len__(self) -> int:
        return len(self.lengths)

    def frame(self, k: int) -> bytes:
        """Frame k's bytes."""
        start = int(self.offsets[k])
        return self.blob[start:start + int(self.lengths[k])].tobytes()


def read_pcap(path: str | Path, room: int = MAX_RECORD) -> PcapFile:
    """Read the classic pcap file at `path`, keeping its frames of up to `room` bytes.

    ValueError, saying why, for a file that is not classic pcap (pcapng included), whose link
    type is not Ethernet, whose header is cut short or whose records are impossible. A file
    that ends inside its last record keeps the frames before it (see `PcapFile.truncated`).
    """
    path = str(path)
    raw = np.fromfile(path, dtype=np.uint8)
    if len(raw) >= 4:
        magic = int.from_bytes(raw[:4].tobytes(), "little")
        if magic == PCAPNG_MAGIC:
            raise ValueError(f"{path} is a pcapng file; only classic pcap is replayed "
                             f"(convert it with: editcap -F pcap {path} out.pcap)")
        if magic not in MAGICS:
            raise ValueError(f"{path} is not a pcap file (it starts {raw[:4].tobytes()!r})")
    if len(raw) < FILE_HEADER:
        raise ValueError(f"{path} is {len(raw)} bytes long, shorter than a pcap file header "
                         f"({FILE_HEADER} bytes)")
    big_endian, nanoseconds = MAGICS[magic]
    major, minor, _, _, snaplen, link = struct.unpack_from(
        (">" if big_endian else "<") + "HHiIII", raw[4:FILE_HEADER].tobytes())
    if major != 2:
        raise ValueError(f"{path} is pcap version {major}.{minor}; only version 2 is read")
    # The link type is the field's low 16 bits; the high ones may carry FCS information.
    if link & 0xFFFF != LINKTYPE_ETHERNET:
        raise ValueError(f"{path} has link type {link & 0xFFFF}, not Ethernet "
                         f"({LINKTYPE_ETHERNET}): only Ethernet frames are replayed")
    no_index = np.zeros(0, dtype=np.uint64)
    kept, skipped, outcome, at = index_records(raw, big_endian, room, no_index,
                                               np.zeros(0, dtype=np.uint32))
    if outcome == WALK_CORRUPT:
        included = _u32(raw, at + 8, big_endian)
        raise ValueError(f"{path}: the record after {kept + skipped} others (at byte {at}) "
                         f"claims {included} bytes, more than a pcap record holds "
                         f"({MAX_RECORD}): the file is corrupt")
    offsets = np.zeros(kept, dtype=np.uint64)
    lengths = np.zeros(kept, dtype=np.uint32)
    if kept:
        index_records(raw, big_endian, room, offsets, lengths)
    return PcapFile(path, raw, offsets, lengths, big_endian, nanoseconds, snaplen, skipped,
                    int(len(raw) - at) if outcome == WALK_PARTIAL else 0)


@njit(**NJIT)
def rx(row, pool, mbufs, max_n):
    """The file's next frames, in order: those due at the rate set, none once the last pass
    is complete."""
    frames = row[ARG_FRAMES]
    if frames == 0:
        return 0
    state = _state(row)
    if state[STATE_DONE]:
        return 0
    want = np.int64(max_n)
    rate = state[STATE_RATE_MHZ]
    if rate:
        now = realtime_ns()
        if state[STATE_START_NS] == 0:
            state[STATE_START_NS] = now
        elapsed = now - state[STATE_START_NS]
        if elapsed < 0:
            return 0  # the wall clock was set back: wait until it passes the start again
        due = 1 + np.int64(float(elapsed) * float(rate) * 1e-12) - state[STATE_REPLAYED]
        if due <= 0:
            return 0
        if due < want:
            want = due
    got = take_mbufs(row, pool, mbufs, want)
    # SAFETY: the offsets and lengths arrays hold one entry per frame of the file (`frames`),
    # made by the port when it read the file; every offset and length was checked against
    # the blob then.
    offsets = carray(u64_pointer(row[ARG_OFFSETS]), (frames,))
    lengths = carray(u32_pointer(row[ARG_LENGTHS]), (frames,))
    blob_at = row[ARG_BLOB]
    data = pool[POOL_DATA]
    pool_lengths = pool[POOL_LENGTH]
    stride = data.strides[0]
    data_at = data.ctypes.data
    at = state[STATE_NEXT]
    n = 0
    while n < got:
        mbuf = mbufs[n]
        length = lengths[at]
        # The reader kept only frames of at most the pool's room, each inside the blob.
        copy_bytes(data_at + np.uint64(mbuf) * stride, blob_at + offsets[at], length)
        pool_lengths[mbuf] = length
        n += 1
        at += 1
        if at == frames:
            at = 0
            state[STATE_PASSES] += 1
            if state[STATE_LOOPS] and state[STATE_PASSES] >= state[STATE_LOOPS]:
                state[STATE_DONE] = 1
                break
    state[STATE_NEXT] = at
    state[STATE_REPLAYED] += n
    free_burst(pool, mbufs, n, got)
    return n


@njit(**NJIT)
def tx(row, pool, mbufs, n):
    """Frames into the capture ring, fewer when it is full (none is lost: the rest stay the
    caller's); all of them, discarded, when the port captures nothing."""
    rows = row[ARG_RING_ROWS]
    if rows == 0:
        return n
    state = _state(row)
    if n > state[STATE_BURST_MAX]:
        state[STATE_BURST_MAX] = n
    # SAFETY: the capture ring's arrays were allocated by the port with `rows` rows of
    # ARG_SNAPLEN bytes (and one length and stamp per row) and live as long as its row.
    ring = carray(u8_pointer(row[ARG_RING]), (rows, row[ARG_SNAPLEN]))
    ring_lengths = carray(u32_pointer(row[ARG_RING_LENGTHS]), (rows,))
    ring_stamps = carray(i64_pointer(row[ARG_RING_STAMPS]), (rows,))
    ring_state = carray(u64_pointer(row[ARG_RING_STATE]), (2,))
    room = np.int64(rows - ring_state[STATE_HELD])
    take = n if n < room else room
    return capture_burst(pool[POOL_DATA], pool[POOL_LENGTH], mbufs, take, ring, ring_lengths,
                         ring_stamps, ring_state)


@njit(**NJIT)
def wants_service(row):
    """Whether the capture ring has no room left for a burst as large as the largest it was
    sent: the loop should return, so that `service()` writes the ring out."""
    rows = row[ARG_RING_ROWS]
    if rows == 0:
        return False
    state = _state(row)
    # SAFETY: the capture ring's uint64[2] state, allocated by the port with its ring.
    held = np.int64(carray(u64_pointer(row[ARG_RING_STATE]), (2,))[STATE_HELD])
    burst = state[STATE_BURST_MAX]
    return rows - held < (burst if burst > 1 else 1)


class PcapPort(Port):
    """A one-queue port that replays the pcap file `replay` on receive and records what it is
    sent to the pcap file `capture`.

    `replay` is read whole now (see `read_pcap` for what is refused); frames longer than the
    pool's room are skipped, counted in `skipped` (and in the queue's errors). It is replayed
    `loops` times (0: for ever) at `rate` frames per second (0: as fast as the loop asks);
    `done` is true once the last pass was received. Without `replay` the port receives nothing.

    `capture` is written (truncating a file there) with a capture ring of `capture_frames`
    frames of `snaplen` bytes (by default the pool's room: frames whole); `service()` writes
    what the ring holds, `close()` the rest, then closes the file. Without `capture` the port
    takes every frame and discards it. A forwarding loop never loses a frame to the capture as
    long as its burst is at most `capture_frames`.
    """

    kind = KIND

    def __init__(self, pool: MbufPool, *, replay: str | Path | None = None,
                 capture: str | Path | None = None, rate: float = 0.0, loops: int = 1,
                 snaplen: int | None = None, capture_frames: int = 4096,
                 name: str | None = None):
        if not (math.isfinite(rate) and (rate == 0 or rate >= 0.001)):
            raise ValueError(f"rate is 0 (as fast as asked) or at least 0.001 frames per "
                             f"second, not {rate}")
        if loops < 0:
            raise ValueError(f"loops is 0 (for ever) or a number of passes, not {loops}")
        snaplen = pool.room if snaplen is None else snaplen
        if not 1 <= snaplen <= MAX_RECORD:
            raise ValueError(f"snaplen is 1 to {MAX_RECORD} bytes, not {snaplen}")
        if capture_frames < 1:
            raise ValueError(f"a capture ring holds at least one frame, not {capture_frames}")
        if name is None:
            # The spec that names this port: pcap:FILE,out=FILE (either part may be missing).
            parts = [str(replay)] * (replay is not None) + [f"out={capture}"] * (
                capture is not None)
            name = "pcap:" + ",".join(parts)
        super().__init__(name, pool, 1)
        self.rate = rate
        self.loops = loops
        self._state = np.zeros(STATE_COLUMNS, dtype=np.int64)
        self._state[STATE_LOOPS] = loops
        self._state[STATE_RATE_MHZ] = round(rate * 1000)
        self._replay = None
        self._capture = None
        self._closed = False
        row = self.rows[0]
        row[ARG_STATE] = self._state.ctypes.data
        if replay is not None:
            self._replay = read_pcap(replay, pool.room)
            row[ARG_BLOB] = self._replay.blob.ctypes.data
            row[ARG_OFFSETS] = self._replay.offsets.ctypes.data
            row[ARG_LENGTHS] = self._replay.lengths.ctypes.data
            row[ARG_FRAMES] = len(self._replay)
            if self._replay.skipped:
                self.stats[0, STAT_ERRORS] += self._replay.skipped
                log.warning("%s: %d frames skipped (empty, or longer than an mbuf's %d "
                            "bytes)", self.name, self._replay.skipped, pool.room)
            if self._replay.truncated:
                log.warning("%s: the file ends inside its last record (%d bytes of it); "
                            "that record is not replayed", self.name, self._replay.truncated)
        if self._replay is None or len(self._replay) == 0:
            self._state[STATE_DONE] = 1
        if capture is not None:
            self._capture = PcapCapture(str(capture), snaplen=snaplen, frames=capture_frames)
            ring, lengths, stamps, ring_state = self._capture.arrays
            row[ARG_RING] = ring.ctypes.data
            row[ARG_RING_ROWS] = capture_frames
            row[ARG_SNAPLEN] = snaplen
            row[ARG_RING_LENGTHS] = lengths.ctypes.data
            row[ARG_RING_STAMPS] = stamps.ctypes.data
            row[ARG_RING_STATE] = ring_state.ctypes.data

    @property
    def replay_file(self) -> PcapFile | None:
        """The file being replayed, as read."""
        return self._replay

    @property
    def skipped(self) -> int:
        """Records of the replayed file left out: longer than the pool's room, or empty."""
        return self._replay.skipped if self._replay is not None else 0

    @property
    def truncated(self) -> int:
        """Bytes of a last record the replayed file ends inside (not replayed); 0 if none."""
        return self._replay.truncated if self._replay is not None else 0

    @property
    def replayed(self) -> int:
        """Frames received from the replayed file so far (over every pass)."""
        return int(self._state[STATE_REPLAYED])

    @property
    def ends(self) -> bool:
        """Whether the replay ends: a file replayed a set number of times."""
        return self._replay is not None and self.loops > 0

    @property
    def done(self) -> bool:
        """Whether every pass of the replay was received (true with nothing to replay)."""
        return bool(self._state[STATE_DONE])

    @property
    def captured(self) -> int:
        """Frames taken for the capture file (written, or held in the ring to be)."""
        if self._capture is None:
            return 0
        return self._capture.written + int(self._capture.state[STATE_HELD])

    @property
    def written(self) -> int:
        """Frames written to the capture file so far."""
        return self._capture.written if self._capture is not None else 0

    def service(self) -> None:
        """Write what the capture ring holds to the file."""
        if self._capture is not None and not self._closed:
            self._capture.flush()

    def close(self) -> None:
        """Write the rest of the capture and close its file; from now on the port discards
        what it is sent."""
        if self._capture is None or self._closed:
            return
        self.rows[:, ARG_RING_ROWS] = 0
        self._capture.close()
        self._closed = True


def _from_spec(replay: str, pool: MbufPool, *, out: str | None = None,
               **options) -> PcapPort:
    # `pcap:FILE` replays FILE; `out=FILE` is the port's capture.
    if not replay and out is None:
        raise ValueError("give a FILE to replay, an out=FILE to capture to, or both")
    return PcapPort(pool, replay=replay or None, capture=out, **options)


register_port_kind(PortKind(
    code=KIND, name="pcap", argument="FILE",
    options={"out": str, "rate": float, "loops": int, "snaplen": int},
    help="replays the pcap file FILE (loops=N passes, 0: for ever; rate=N frames per second, "
         "default as fast as asked) and records what it is sent to out=FILE (snaplen=N bytes "
         "of each frame); either side may be left out",
    make=_from_spec, rx=rx, tx=tx, wants_service=wants_service, argument_optional=True))
