"""One ring, two processes: a driver and a device move a million buffers through shared memory.

virtio 1.2 §2.7 (split) and §2.8 (packed) across address spaces, as a front-end and a back-end
use them: the driver process creates memfd guest memory and two eventfds and sends the fds over
a Unix socket (SCM_RIGHTS); the device process maps them with `GuestMemory.from_shared`. The two
run pinned to CPUs 0 and 1 and check every byte that crosses:

- driver to device: each buffer's readable bytes are a function of its sequence number (a header
  with the number and the length, then a pattern derived from the number), and the device checks
  them in pop order, so a stale descriptor, a torn index or an early read shows up as a mismatch;
- device to driver: about half the buffers also carry a writable piece, which the device fills
  with the bitwise complement of the payload it read; the driver checks the used length and every
  byte on collect, then reuses the buffer slots.

Kicks and calls are real eventfds. A side that is busy turns the other side's notifications off;
a side that finds nothing to do turns them back on, looks once more (§2.7.10, §2.8.10: what the
other side published before seeing the request gets no notification) and sleeps on its eventfd.
A lost wakeup therefore stalls one side, and the stall is reported as a failure after
WAIT_TIMEOUT seconds.

The file is also the children's entry point: the test runs it with `python this_file.py ROLE
CONFIG`, passing only the socket and the result pipe (`pass_fds`), so nothing else is inherited.
"""

from __future__ import annotations

import json
import os
import select
import signal
import socket
import subprocess
import sys
import time
import traceback
from typing import NamedTuple

import numpy as np
import pytest
from numpy.lib.stride_tricks import sliding_window_view

from fastpath.hv import GuestMemory, SharedRegion
from fastpath.vring import (
    DRIVER_CHAIN_DTYPE,
    SEG_WRITE,
    SEGMENT_DTYPE,
    USED_ELEM_DTYPE,
    PackedDeviceQueue,
    PackedDriverQueue,
    RingAddresses,
    SplitDeviceQueue,
    SplitDriverQueue,
    ring_bytes,
    ring_layout,
)

# The largest queue a case uses; packed queues need not be a power of two (§2.8).
MAX_QUEUE_SIZE = 1024
DEVICE_BURST = 256
RING_BASE = 0x1000
# Every piece of a buffer sits at the start of its own slot; no payload is longer than a slot.
SLOT = 256
MIN_PAYLOAD, MAX_PAYLOAD = 64, SLOT
HEADER = 10  # sequence number (u64) and payload length (u16), little-endian
# Slots per sequence number: up to 3 readable pieces, then up to 2 writable ones.
READABLE_COLUMNS, PIECE_COLUMNS = 3, 5
# Buffers are placed by sequence number modulo GROUPS. Completions come back in order and no
# more than a queue's size are in flight, so a group is free again when its next user comes.
GROUPS = 2 * MAX_QUEUE_SIZE
POOL_BASE = 0x10000
POOL_BYTES = GROUPS * PIECE_COLUMNS * SLOT
MEMORY_SIZE = 4 << 20
assert RING_BASE + ring_bytes(MAX_QUEUE_SIZE, packed=False) <= POOL_BASE
assert RING_BASE + ring_bytes(MAX_QUEUE_SIZE, packed=True) <= POOL_BASE
assert POOL_BASE + POOL_BYTES <= MEMORY_SIZE

# How long a side polls with nothing to do before it turns notifications on and sleeps. Waking
# a sleeping process takes milliseconds on this VM at worst, so a side only sleeps when the
# other one really stopped; the pauses below make sure that happens regularly.
SPIN_SECONDS = 200e-6
# Every PAUSE_EVERY buffers the driver waits until all are back and then sits still for
# PAUSE_SECONDS, so that the device runs dry, asks for kicks and sleeps; halfway between, the
# device sits on a burst for as long, so that the driver fills the ring, asks for calls and
# sleeps. Either way the sleeper depends on a notification crossing the processes.
PAUSE_EVERY = 16384
PAUSE_SECONDS = 0.003
# Longest a side sleeps on its eventfd before the other side is declared stuck (lost wakeup).
WAIT_TIMEOUT = 10.0
# Longest one parametrization may run before both children are killed.
CASE_TIMEOUT = 150.0
MISMATCH_SAMPLES = 5

_OFFSETS = np.arange(SLOT, dtype=np.intp)
_OFFSETS_U8 = _OFFSETS.astype(np.uint8)
_PIECE_IS_WRITABLE = np.arange(PIECE_COLUMNS) >= READABLE_COLUMNS


class StallError(RuntimeError):
    """A side slept for WAIT_TIMEOUT without the notification it had asked for."""


class ProtocolError(RuntimeError):
    """The ring handed over something other than what the peer put on it."""


# What both sides agree on: each buffer's shape and bytes, as functions of its sequence number.


def _mix(values: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser: well-spread 64-bit values from consecutive numbers."""
    z = values.astype(np.uint64) + np.uint64(0x9E3779B97F4A7C15)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def _payload_length(h: np.ndarray) -> np.ndarray:
    return (MIN_PAYLOAD + h % np.uint64(MAX_PAYLOAD - MIN_PAYLOAD + 1)).astype(np.int64)


def _has_reply(h: np.ndarray) -> np.ndarray:
    return ((h >> np.uint64(40)) & np.uint64(1)).astype(bool)


class Plan(NamedTuple):
    """The buffers for a run of sequence numbers: per chain, then per piece in ring order."""

    length: np.ndarray  # payload bytes of each chain
    written: np.ndarray  # bytes the device writes back (0 if the chain has no writable piece)
    nseg: np.ndarray
    nreadable: np.ndarray
    first_seg: np.ndarray  # each chain's first piece in the arrays below
    chain: np.ndarray  # the chain each piece belongs to
    offset: np.ndarray  # where the piece starts in the payload (readable) or the reply (writable)
    size: np.ndarray
    writable: np.ndarray
    slot: np.ndarray  # the pool slot the piece occupies


def plan(seqs: np.ndarray, multi: bool) -> Plan:
    """Lay out the buffers for seqs: 64..256-byte payloads, split over 1-3 readable pieces when
    multi (the first at least 16 bytes, so it holds the header), and for about half of them a
    writable piece of the same length (split in two when multi, for about half of those)."""
    h = _mix(seqs)
    cuts = _mix(h)
    n = len(seqs)
    length = _payload_length(h)
    reply = _has_reply(h)
    if multi:
        nread = 1 + ((h >> np.uint64(32)) & np.uint64(0xFF)).astype(np.int64) % 3
        split_reply = reply & ((h >> np.uint64(41)) & np.uint64(1)).astype(bool)
    else:
        nread = np.ones(n, dtype=np.int64)
        split_reply = np.zeros(n, dtype=bool)
    x = (cuts & np.uint64(0xFFFF)).astype(np.int64)
    y = ((cuts >> np.uint64(16)) & np.uint64(0xFFFF)).astype(np.int64)
    z = ((cuts >> np.uint64(32)) & np.uint64(0xFFFF)).astype(np.int64)
    two_cut = 16 + x % (length - 31)
    three_cut1 = 16 + x % (length // 2 - 16)
    three_cut2 = three_cut1 + 1 + y % (length - three_cut1 - 1)
    r1 = np.where(nread == 1, length, np.where(nread == 2, two_cut, three_cut1))
    r2 = np.where(nread == 3, three_cut2, length)
    w1 = np.where(split_reply, 1 + z % (length - 1), length)
    zero = np.zeros(n, dtype=np.int64)
    sizes = np.stack([r1, r2 - r1, length - r2, w1 * reply, (length - w1) * reply], axis=1)
    offsets = np.stack([zero, r1, r2, zero, w1], axis=1)
    present = sizes > 0
    keep = present.ravel()
    nseg = present.sum(axis=1)
    slots = (seqs.astype(np.int64) % GROUPS * PIECE_COLUMNS)[:, None] + np.arange(PIECE_COLUMNS)
    return Plan(
        length=length,
        written=length * reply,
        nseg=nseg,
        nreadable=present[:, :READABLE_COLUMNS].sum(axis=1),
        first_seg=np.cumsum(nseg) - nseg,
        chain=np.repeat(np.arange(n), PIECE_COLUMNS)[keep],
        offset=offsets.ravel()[keep],
        size=sizes.ravel()[keep],
        writable=np.broadcast_to(_PIECE_IS_WRITABLE, (n, PIECE_COLUMNS)).ravel()[keep],
        slot=slots.ravel()[keep],
    )


class Schedule:
    """plan() for sequence numbers 0..total-1, worked out once, so that a burst only slices it."""

    _CHUNK = 1 << 16

    def __init__(self, total: int, multi: bool):
        starts = range(0, total, self._CHUNK)
        parts = [plan(np.arange(a, min(total, a + self._CHUNK)), multi) for a in starts]
        self.length = np.concatenate([p.length for p in parts])
        self.written = np.concatenate([p.written for p in parts])
        self.nseg = np.concatenate([p.nseg for p in parts])
        self.nreadable = np.concatenate([p.nreadable for p in parts])
        # Where each chain's pieces start, with the end of the last one appended.
        self.piece_start = np.concatenate([[0], np.cumsum(self.nseg)])
        self.chain = np.concatenate([p.chain + a for p, a in zip(parts, starts, strict=True)])
        self.offset = np.concatenate([p.offset for p in parts])
        self.size = np.concatenate([p.size for p in parts])
        self.writable = np.concatenate([p.writable for p in parts])
        self.slot = np.concatenate([p.slot for p in parts])

    def window(self, start: int, stop: int) -> Plan:
        """The plan for start..stop-1, as plan(np.arange(start, stop)) would give it."""
        first, last = self.piece_start[start], self.piece_start[stop]
        return Plan(
            length=self.length[start:stop],
            written=self.written[start:stop],
            nseg=self.nseg[start:stop],
            nreadable=self.nreadable[start:stop],
            first_seg=self.piece_start[start:stop] - first,
            chain=self.chain[first:last] - start,
            offset=self.offset[first:last],
            size=self.size[first:last],
            writable=self.writable[first:last],
            slot=self.slot[first:last],
        )

    def chains_fitting(self, start: int, limit: int, descriptors: int) -> int:
        """How many chains from start on (at most limit) fit in that many descriptors."""
        need = self.piece_start[start + 1 : start + limit + 1] - self.piece_start[start]
        return int(np.searchsorted(need, descriptors, side="right"))


def payload_rows(seqs: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """Payload bytes [offset, offset + SLOT) of each seq, one row each (uint8, wraps mod 256).

    Byte k is a + k * b (mod 256) with a and b (odd) taken from the seq's hash, so no two bytes
    of one payload repeat; the first HEADER bytes are the header instead.
    """
    h = _mix(seqs)
    a = (h >> np.uint64(16)).astype(np.uint8)
    b = (h >> np.uint64(24)).astype(np.uint8) | np.uint8(1)
    position = offsets.astype(np.uint8)[:, None] + _OFFSETS_U8
    rows = a[:, None] + position * b[:, None]
    early = np.flatnonzero(offsets < HEADER)
    if len(early):
        header = np.empty((len(early), HEADER), dtype=np.uint8)
        header[:, :8] = seqs[early].astype("<u8").view(np.uint8).reshape(-1, 8)
        header[:, 8:] = _payload_length(h[early]).astype("<u2").view(np.uint8).reshape(-1, 2)
        start = offsets[early].astype(np.intp)
        row, col = np.nonzero(np.arange(HEADER) < (HEADER - start)[:, None])
        rows[early[row], col] = header[row, start[row] + col]
    return rows


def expected_totals(total: int) -> tuple[int, int]:
    """(payload bytes, reply bytes) of sequence numbers 0..total-1."""
    payload = reply = 0
    for start in range(0, total, 1 << 18):
        h = _mix(np.arange(start, min(total, start + (1 << 18)), dtype=np.uint64))
        length = _payload_length(h)
        payload += int(length.sum())
        reply += int((length * _has_reply(h)).sum())
    return payload, reply


def _count_mismatches(got: np.ndarray, want: np.ndarray, valid: np.ndarray, seqs: np.ndarray,
                      offsets: np.ndarray, stats: dict, what: str) -> None:
    """Count the valid bytes where got differs from want; keep a few samples."""
    bad = (got != want) & valid
    count = int(np.count_nonzero(bad))
    if count:
        stats["mismatches"] += count
        for row, col in zip(*np.nonzero(bad), strict=True):
            if len(stats["samples"]) >= MISMATCH_SAMPLES:
                break
            stats["samples"].append(
                f"{what}: seq {int(seqs[row])} byte {int(offsets[row]) + int(col)}: "
                f"got {int(got[row, col]):#04x}, want {int(want[row, col]):#04x}"
            )


# The two sides. Each runs in its own process, started by the test below.


def _new_stats(role: str) -> dict:
    return {
        "role": role,
        "moved": 0,
        "bytes_checked": 0,
        "mismatches": 0,
        "samples": [],
        "errors": {},
        "notifications_sent": 0,
        "notifications_suppressed": 0,
        "sleeps": 0,
        "wakeups": 0,
        "rechecks": 0,
        "pauses": 0,
        "seconds": 0.0,
        "cpu_seconds": 0.0,
        "failure": None,
    }


class Idler:
    """What a side does when it finds nothing to do.

    It polls for SPIN_SECONDS, then asks the peer for notifications (`enable`) and looks once
    more, because what the peer published before it could see the request gets no notification
    (§2.7.10, §2.8.10); only if that finds nothing does it sleep on its eventfd. Back at work it
    turns notifications off again (`disable`). A sleep of WAIT_TIMEOUT is a lost notification.
    """

    def __init__(self, fd: int, enable, disable, stats: dict, describe):
        self._fd = fd
        self._enable = enable
        self._disable = disable
        self._stats = stats
        self._describe = describe
        self._poller = select.poll()
        self._poller.register(fd, select.POLLIN)
        self._since: float | None = None

    def busy(self) -> None:
        self._since = None

    def idle(self) -> None:
        now = time.perf_counter()
        if self._since is None:
            self._since = now
            return
        if now - self._since < SPIN_SECONDS:
            return
        self._since = None
        if self._enable():
            self._stats["rechecks"] += 1
        else:
            self._stats["sleeps"] += 1
            if not self._poller.poll(int(WAIT_TIMEOUT * 1000)):
                raise StallError(f"{self._describe()}: lost notification")
            os.eventfd_read(self._fd)
            self._stats["wakeups"] += 1
        self._disable()


def run_driver(config: dict, sock: socket.socket, stats: dict) -> None:
    """Own the guest memory: offer buffers, kick when asked, collect and check replies."""
    packed, size, total = config["packed"], config["size"], config["total"]
    schedule = Schedule(total, config["multi"])
    memory = GuestMemory([(0, MEMORY_SIZE)], name="fastpath-two-process")
    addresses = ring_layout(size, RING_BASE, packed)
    queue_class = PackedDriverQueue if packed else SplitDriverQueue
    queue = queue_class(memory, size, addresses, event_idx=config["event_idx"])
    kick_fd = os.eventfd(0, os.EFD_CLOEXEC)
    call_fd = os.eventfd(0, os.EFD_CLOEXEC)
    regions = memory.regions
    message = {
        "regions": [
            {"guest_phys_addr": r.guest_phys_addr, "size": r.size, "user_addr": r.user_addr,
             "mmap_offset": r.mmap_offset}
            for r in regions
        ],
        "addresses": [addresses.desc, addresses.driver, addresses.device],
    }
    fds = [r.fd for r in regions] + [kick_fd, call_fd]
    socket.send_fds(sock, [json.dumps(message).encode()], fds)
    if sock.recv(16) != b"ready":
        raise ProtocolError("the device did not confirm that it mapped the memory")

    pool = memory.view(POOL_BASE, POOL_BYTES).reshape(-1, SLOT)
    chains = np.zeros(size, dtype=DRIVER_CHAIN_DTYPE)
    segments = np.zeros(size * PIECE_COLUMNS, dtype=SEGMENT_DTYPE)
    used = np.zeros(size, dtype=USED_ELEM_DTYPE)
    seq_of_id = np.full(size, -1, dtype=np.int64)
    next_seq = done = 0
    pause_at = PAUSE_EVERY
    idler = Idler(
        call_fd, queue.enable_calls, queue.disable_calls, stats,
        lambda: (f"driver: no call for {WAIT_TIMEOUT:.0f} s with {next_seq - done} buffers in "
                 f"flight ({done} of {total} collected; calls enabled, none pending then)"),
    )
    start = time.perf_counter()
    # Busy from the start: the device need not call until we run dry.
    queue.disable_calls()
    while done < total:
        n = queue.collect_burst(used)
        if n:
            _check_replies(used[:n], seq_of_id, done, schedule, pool, stats)
            done += n
            stats["moved"] = done
        if done == next_seq == pause_at:
            time.sleep(PAUSE_SECONDS)
            stats["pauses"] += 1
            pause_at += PAUSE_EVERY
        added = 0
        limit = min(total, pause_at) - next_seq
        fits = schedule.chains_fitting(next_seq, limit, queue.num_free) if limit else 0
        if fits:
            layout = schedule.window(next_seq, next_seq + fits)
            added = _offer(queue, layout, next_seq, pool, chains, segments, seq_of_id)
            next_seq += added
            if queue.should_kick():
                os.eventfd_write(kick_fd, 1)
                stats["notifications_sent"] += 1
            else:
                stats["notifications_suppressed"] += 1
        if n or added:
            idler.busy()
        else:
            idler.idle()
    stats["seconds"] = time.perf_counter() - start
    stats["cpu_seconds"] = time.process_time()
    stats["errors"] = queue.errors
    if queue.num_free != size or (seq_of_id != -1).any():
        raise ProtocolError(f"driver: {size - queue.num_free} descriptors still in use")


def _offer(queue, layout: Plan, first_seq: int, pool: np.ndarray, chains: np.ndarray,
           segments: np.ndarray, seq_of_id: np.ndarray) -> int:
    """Write the payloads of layout's chains (from first_seq on) into their slots and add them."""
    fits = len(layout.length)
    seqs = np.arange(first_seq, first_seq + fits, dtype=np.int64)
    npieces = len(layout.chain)
    chain, offset, slot, writable = layout.chain, layout.offset, layout.slot, layout.writable
    readable = ~writable
    pool[slot[readable]] = payload_rows(seqs[chain[readable]], offset[readable])
    # Clear the reply slots, so that a reply the device never wrote cannot pass for one.
    pool[slot[writable]] = 0
    segs = segments[:npieces]
    segs["addr"] = POOL_BASE + slot * SLOT
    segs["len"] = layout.size
    segs["flags"] = np.where(writable, SEG_WRITE, 0)
    chains["indirect_table"][:fits] = 0
    chains["first_seg"][:fits] = layout.first_seg[:fits]
    chains["nseg"][:fits] = layout.nseg[:fits]
    added = queue.add_burst(chains, fits, segments)
    if added != fits:
        raise ProtocolError(f"driver: add_burst took {added} of {fits} chains that fit")
    ids = chains["id"][:fits].astype(np.int64)
    if (seq_of_id[ids] != -1).any():
        raise ProtocolError(f"driver: add_burst reused ids still in flight: {ids.tolist()}")
    seq_of_id[ids] = seqs
    return added


def _check_replies(used: np.ndarray, seq_of_id: np.ndarray, done: int, schedule: Schedule,
                   pool: np.ndarray, stats: dict) -> None:
    """Check that used buffers come back in order with the device's reply in every byte."""
    ids = used["id"].astype(np.int64)
    if (ids >= len(seq_of_id)).any():
        raise ProtocolError(f"driver: used ids out of range: {ids.tolist()}")
    seqs = seq_of_id[ids]
    expected = np.arange(done, done + len(used))
    if not np.array_equal(seqs, expected):
        raise ProtocolError(
            f"driver: used buffers out of order or unknown: seqs {seqs.tolist()}, "
            f"expected {done}..{done + len(used) - 1}"
        )
    seq_of_id[ids] = -1
    layout = schedule.window(done, done + len(used))
    wrong_len = np.flatnonzero(used["len"] != layout.written)
    if len(wrong_len):
        i = int(wrong_len[0])
        raise ProtocolError(
            f"driver: seq {int(seqs[i])} came back with used len {int(used['len'][i])}, "
            f"want {int(layout.written[i])}"
        )
    w = layout.writable
    offset, size = layout.offset[w], layout.size[w]
    piece_seqs = seqs[layout.chain[w]]
    want = ~payload_rows(piece_seqs, offset)
    _count_mismatches(pool[layout.slot[w]], want, _OFFSETS < size[:, None], piece_seqs, offset,
                      stats, "reply")
    stats["bytes_checked"] += int(size.sum())


def run_device(config: dict, sock: socket.socket, stats: dict) -> None:
    """Map the driver's memory, pop in bursts, check every payload byte, reply, push, call."""
    packed, size, total = config["packed"], config["size"], config["total"]
    schedule = Schedule(total, config["multi"])
    raw, fds, _flags, _addr = socket.recv_fds(sock, 1 << 16, 8)
    message = json.loads(raw)
    regions = message["regions"]
    if len(fds) != len(regions) + 2:
        raise ProtocolError(f"device: got {len(fds)} fds for {len(regions)} regions + 2 eventfds")
    memory = GuestMemory.from_shared(
        [SharedRegion(fd, **r) for fd, r in zip(fds[: len(regions)], regions, strict=True)]
    )
    kick_fd, call_fd = fds[-2:]
    addresses = RingAddresses(*message["addresses"])
    queue_class = PackedDeviceQueue if packed else SplitDeviceQueue
    queue = queue_class(memory, size, addresses, event_idx=config["event_idx"])
    sock.sendall(b"ready")

    guest = memory.view(0, MEMORY_SIZE)
    host_base = guest.ctypes.data
    windows = sliding_window_view(guest, SLOT)
    burst = queue.new_burst(DEVICE_BURST)
    popped = 0
    pause_at = PAUSE_EVERY // 2
    idler = Idler(
        kick_fd, queue.enable_kicks, queue.disable_kicks, stats,
        lambda: (f"device: no kick for {WAIT_TIMEOUT:.0f} s after {popped} of {total} buffers "
                 f"(kicks enabled, none available then)"),
    )
    start = time.perf_counter()
    # Busy from the start: we poll, so the driver need not kick until we run dry.
    queue.disable_kicks()
    while popped < total:
        n = queue.pop(burst)
        if n == 0:
            idler.idle()
            continue
        idler.busy()
        if popped + n > total:
            raise ProtocolError(f"device: popped {popped + n} buffers, only {total} were sent")
        _serve(burst, popped, schedule.window(popped, popped + n), guest, windows, host_base,
               stats)
        if popped + n > pause_at:
            time.sleep(PAUSE_SECONDS)
            stats["pauses"] += 1
            pause_at += PAUSE_EVERY
        pushed = queue.push(burst)
        if pushed != n:
            raise ProtocolError(f"device: push accepted {pushed} of {n} chains")
        popped += n
        stats["moved"] = popped
        if queue.should_notify():
            os.eventfd_write(call_fd, 1)
            stats["notifications_sent"] += 1
        else:
            stats["notifications_suppressed"] += 1
    stats["seconds"] = time.perf_counter() - start
    stats["cpu_seconds"] = time.process_time()
    stats["errors"] = queue.errors


def _serve(burst, first_seq: int, layout: Plan, guest: np.ndarray, windows: np.ndarray,
           host_base: int, stats: dict) -> None:
    """Check a popped burst against the plan from first_seq on, then write each reply."""
    n = len(layout.length)
    seqs = np.arange(first_seq, first_seq + n, dtype=np.int64)
    chains = burst.chains[:n]
    segs = burst.segments[: len(layout.chain)]
    for field, want in (
        ("error", 0),
        ("nseg", layout.nseg),
        ("nreadable", layout.nreadable),
        ("first_seg", layout.first_seg),
        ("readable_len", layout.length),
        ("writable_len", layout.written),
    ):
        got = chains[field]
        if not np.array_equal(got, np.broadcast_to(want, got.shape)):
            i = int(np.flatnonzero(got != want)[0])
            raise ProtocolError(
                f"device: seq {int(seqs[i])}: chain {field} is {int(got[i])}, want "
                f"{int(np.broadcast_to(want, got.shape)[i])} ({chains[i]})"
            )
    offset = segs["addr"].astype(np.int64) - host_base
    if not (
        np.array_equal(offset, POOL_BASE + layout.slot * SLOT)
        and np.array_equal(segs["len"], layout.size)
        and np.array_equal((segs["flags"] & SEG_WRITE) != 0, layout.writable)
    ):
        raise ProtocolError(
            f"device: segments of seqs {int(seqs[0])}..{int(seqs[-1])} differ from what the "
            f"driver offered: got {segs}, want slots {layout.slot} sizes {layout.size}"
        )
    readable = ~layout.writable
    r_offset, r_size = layout.offset[readable], layout.size[readable]
    got = windows[offset[readable]]
    r_valid = _OFFSETS < r_size[:, None]
    piece_seqs = seqs[layout.chain[readable]]
    _count_mismatches(got, payload_rows(piece_seqs, r_offset), r_valid, piece_seqs, r_offset,
                      stats, "payload")
    stats["bytes_checked"] += int(r_size.sum())
    # Readable bytes in ring order are the payloads one after another, writable bytes the
    # replies; a reply is the complement of the payload as read, not as planned.
    replies = ~got[r_valid][np.repeat(layout.written > 0, layout.length)]
    w = layout.writable
    w_at = offset[w][:, None] + _OFFSETS
    guest[w_at[_OFFSETS < layout.size[w][:, None]]] = replies
    chains["written"] = layout.written


# The test: start both sides, collect their reports, kill them on a timeout.

# (packed, event_idx, multi, queue size). The last packed ring is not a power of two in size,
# so its wrap counters flip at slot 1000 and EVENT_IDX offsets must be taken modulo 1000.
CASES = [
    pytest.param(False, False, False, 1024, id="split"),
    pytest.param(False, True, False, 1024, id="split-event_idx"),
    pytest.param(True, False, False, 1024, id="packed"),
    pytest.param(True, True, False, 1024, id="packed-event_idx"),
    pytest.param(False, False, True, 1024, id="split-multi"),
    pytest.param(True, True, True, 1000, id="packed-event_idx-multi-size1000"),
]
BUFFERS = 1_000_000


def _cpus() -> tuple[int | None, int | None]:
    """CPUs for the driver and the device: 0 and 1 when this process may use both."""
    if {0, 1} <= os.sched_getaffinity(0):
        return 0, 1
    return None, None


def _start(role: str, config: dict, sock: socket.socket) -> tuple[subprocess.Popen, int]:
    """Run this file as `role` with sock and a fresh result pipe; returns (process, read end)."""
    read_end, write_end = os.pipe()
    config = config | {"sock_fd": sock.fileno(), "result_fd": write_end}
    try:
        process = subprocess.Popen(
            [sys.executable, os.path.abspath(__file__), role, json.dumps(config)],
            pass_fds=(sock.fileno(), write_end),
        )
    finally:
        os.close(write_end)
    return process, read_end


def _collect_reports(children: dict[str, tuple[subprocess.Popen, int]],
                     deadline: float) -> dict[str, dict]:
    """Read each child's JSON report to EOF; stops at the deadline or when one side fails."""
    buffers = {role: b"" for role in children}
    open_ends = {read_end: role for role, (_, read_end) in children.items()}
    reports: dict[str, dict] = {}
    # poll, not select: the suite may already hold more than 1024 fds by the time this runs.
    poller = select.poll()
    for read_end in open_ends:
        poller.register(read_end, select.POLLIN)
    while open_ends:
        left = deadline - time.monotonic()
        if left <= 0:
            break
        for read_end, _ in poller.poll(left * 1000):
            chunk = os.read(read_end, 1 << 16)
            role = open_ends[read_end]
            if chunk:
                buffers[role] += chunk
                continue
            del open_ends[read_end]
            poller.unregister(read_end)
            if buffers[role]:
                reports[role] = json.loads(buffers[role])
            else:
                status = children[role][0].poll()
                reports[role] = _new_stats(role) | {
                    "failure": f"{role} ended without a report (exit status {status})"
                }
            if reports[role]["failure"]:
                # The other side is now waiting for a peer that is gone; no need to sit out
                # its stall timeout.
                return reports
    return reports


@pytest.mark.timeout(CASE_TIMEOUT + 60)
@pytest.mark.parametrize(("packed", "event_idx", "multi", "size"), CASES)
def test_two_processes_move_every_byte(packed, event_idx, multi, size, total=BUFFERS):
    """§2.7/§2.8 across processes: every buffer arrives intact, in order, each reply too, and
    no notification is lost with suppression and EVENT_IDX in play (§2.7.10, §2.8.10)."""
    driver_cpu, device_cpu = _cpus()
    config = {"packed": packed, "event_idx": event_idx, "multi": multi, "size": size,
              "total": total}
    driver_sock, device_sock = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    children: dict[str, tuple[subprocess.Popen, int]] = {}
    try:
        with driver_sock, device_sock:
            children["device"] = _start("device", config | {"cpu": device_cpu}, device_sock)
            children["driver"] = _start("driver", config | {"cpu": driver_cpu}, driver_sock)
        started = time.monotonic()
        reports = _collect_reports(children, started + CASE_TIMEOUT)
        elapsed = time.monotonic() - started
    finally:
        for process, read_end in children.values():
            if process.poll() is None:
                os.kill(process.pid, signal.SIGKILL)
            process.wait()
            os.close(read_end)

    failures = [r["failure"] for r in reports.values() if r["failure"]]
    assert not failures, "\n\n".join(failures)
    missing = set(children) - set(reports)
    assert not missing, (
        f"{', '.join(sorted(missing))} did not finish within {CASE_TIMEOUT:.0f} s and was killed"
        f"; reports so far: {reports}"
    )
    driver, device = reports["driver"], reports["device"]
    payload_bytes, reply_bytes = expected_totals(total)
    print(
        f"\n{total} buffers in {elapsed:.1f} s (driver {driver['seconds']:.1f} s, "
        f"{driver['cpu_seconds']:.1f} s CPU; device {device['seconds']:.1f} s, "
        f"{device['cpu_seconds']:.1f} s CPU); checked {device['bytes_checked']} payload and "
        f"{driver['bytes_checked']} reply bytes\n"
        f"  driver: kicks {driver['notifications_sent']} sent, "
        f"{driver['notifications_suppressed']} suppressed; slept {driver['sleeps']}, "
        f"rechecked {driver['rechecks']}, paused {driver['pauses']}\n"
        f"  device: calls {device['notifications_sent']} sent, "
        f"{device['notifications_suppressed']} suppressed; slept {device['sleeps']}, "
        f"rechecked {device['rechecks']}, paused {device['pauses']}"
    )
    problems = []
    for report in (driver, device):
        role = report["role"]
        if report["mismatches"]:
            problems.append(f"{role}: {report['mismatches']} bytes differ, e.g. "
                            + "; ".join(report["samples"]))
        if report["errors"]:
            problems.append(f"{role}: the queue counted errors {report['errors']}")
        if report["moved"] != total:
            problems.append(f"{role}: moved {report['moved']} of {total} buffers")
        if not report["wakeups"]:
            problems.append(f"{role}: never slept and was woken, so notifications went untested")
    if device["bytes_checked"] != payload_bytes:
        problems.append(f"device: checked {device['bytes_checked']} of {payload_bytes} bytes")
    if driver["bytes_checked"] != reply_bytes:
        problems.append(f"driver: checked {driver['bytes_checked']} of {reply_bytes} bytes")
    assert not problems, "\n".join(problems)


def _child_main(role: str, config_json: str) -> int:
    """Entry point of a child: run one side and write its report to the result fd."""
    config = json.loads(config_json)
    stats = _new_stats(role)
    sock = socket.socket(fileno=config["sock_fd"])
    try:
        if config["cpu"] is not None:
            os.sched_setaffinity(0, {config["cpu"]})
        sock.settimeout(WAIT_TIMEOUT)
        {"driver": run_driver, "device": run_device}[role](config, sock, stats)
    except BaseException:
        stats["failure"] = f"{role} failed:\n{traceback.format_exc()}"
    with os.fdopen(config["result_fd"], "w") as out:
        json.dump(stats, out)
    return 1 if stats["failure"] else 0


if __name__ == "__main__":
    sys.exit(_child_main(sys.argv[1], sys.argv[2]))
