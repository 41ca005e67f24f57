"""The vhost-net poller: each queue pair's transmitq back to its receiveq (or dropped), or a
template frame written into every receiveq as fast as it takes it (txonly), in compiled code,
one burst per pair and round; nothing per frame or per burst runs in Python.
"""

from numba import njit

from fastpath._numba import NJIT, carray, i64_pointer, u8_pointer, u32_pointer, u64_pointer
from fastpath.devices.net.kernels import net_receive, net_room, net_transmit
from fastpath.pmd._pcap import capture_burst
from fastpath.pmd._pollers import HOST_SERVICE, POLLER_ARGS, register_poller
from fastpath.vring.kernels import device_set_kicks

# Forwarding modes.
FWD_IO = 0        # frames go back unchanged
FWD_MACSWAP = 1   # destination and source MAC swapped
FWD_DROP = 2      # frames are received, counted and freed
FWD_TXONLY = 3    # the template goes into every receiveq; frames received are freed

# Table columns: one row per queue pair served (uint64).
COL_TX = 0        # NetQueue handle of the transmitq; 0 when not served
COL_RX = 1        # NetQueue handle of the receiveq; 0 when it takes no frames
COL_TX_VQ = 2     # device queue handle of the transmitq, to ask for kicks
COL_PACKED = 3    # 1 for a packed ring
COL_RX_VQ = 4     # device queue handle of the receiveq (0 when none), to ask for kicks
TABLE_COLUMNS = 5

# Statistics columns (uint64), per row.
STAT_NO_ROOM = 0  # frames dropped because the receiveq had no room (or was not there)
STAT_BROKEN = 1   # times a ring broke (the row is then no longer served)
STAT_COLUMNS = 2

MAC_BYTES = 6

KIND = 2

# The poller's row: where the Forwarder's arrays are.
ARG_TABLE = POLLER_ARGS               # uint64 (pairs, TABLE_COLUMNS)
ARG_PAIRS = POLLER_ARGS + 1
ARG_STATS = POLLER_ARGS + 2           # uint64 (pairs, STAT_COLUMNS)
ARG_MODE = POLLER_ARGS + 3            # FWD_*
ARG_FRAMES = POLLER_ARGS + 4          # uint8 (burst, stride): one burst of frames
ARG_BURST = POLLER_ARGS + 5
ARG_STRIDE = POLLER_ARGS + 6
ARG_LENGTHS = POLLER_ARGS + 7         # uint32 (burst,)
ARG_CAPTURE_RING = POLLER_ARGS + 8    # the capture's uint8 (rows, snaplen); 0 rows: none
ARG_CAPTURE_ROWS = POLLER_ARGS + 9
ARG_CAPTURE_SNAPLEN = POLLER_ARGS + 10
ARG_CAPTURE_LENGTHS = POLLER_ARGS + 11   # uint32 (rows,)
ARG_CAPTURE_STAMPS = POLLER_ARGS + 12    # int64 (rows,)
ARG_CAPTURE_STATE = POLLER_ARGS + 13     # uint64 (2,)
ARG_TEMPLATE = POLLER_ARGS + 14          # txonly: uint8 (stride,), the frame sent
ARG_TEMPLATE_SLOTS = POLLER_ARGS + 15    # uint32 (burst,) of zeros: each frame from row 0
ARG_TEMPLATE_LENGTH = POLLER_ARGS + 16   # uint32 (1,): the template's length


@njit(**NJIT)
def swap_macs(frames, lengths, slots, n):
    """Swap the destination and source MAC of n frames (those too short are left alone).

    As in the core's burst convention, the k-th frame is row s = slots[k] of `frames`
    (s = k when `slots` is None) and its length is lengths[s].
    """
    for k in range(n):
        s = k if slots is None else slots[k]
        if lengths[s] >= 2 * MAC_BYTES:
            for b in range(MAC_BYTES):
                t = frames[s, b]
                frames[s, b] = frames[s, MAC_BYTES + b]
                frames[s, MAC_BYTES + b] = t


@njit(**NJIT)
def _arrays(row):
    # SAFETY: every address in the row is that of an array the Forwarder owns (its table and
    # statistics, rebuilt only with the gate held, when no kernel runs; its frame buffers; the
    # capture's ring, which the capture keeps as long as the Forwarder), with the shapes
    # recorded beside them.
    pairs, burst = int(row[ARG_PAIRS]), int(row[ARG_BURST])
    table = carray(u64_pointer(row[ARG_TABLE]), (pairs, TABLE_COLUMNS))
    stats = carray(u64_pointer(row[ARG_STATS]), (pairs, STAT_COLUMNS))
    frames = carray(u8_pointer(row[ARG_FRAMES]), (burst, int(row[ARG_STRIDE])))
    lengths = carray(u32_pointer(row[ARG_LENGTHS]), (burst,))
    rows = int(row[ARG_CAPTURE_ROWS])
    capture = (carray(u8_pointer(row[ARG_CAPTURE_RING]), (rows, int(row[ARG_CAPTURE_SNAPLEN]))),
               carray(u32_pointer(row[ARG_CAPTURE_LENGTHS]), (rows,)),
               carray(i64_pointer(row[ARG_CAPTURE_STAMPS]), (rows,)),
               carray(u64_pointer(row[ARG_CAPTURE_STATE]), (2,)))
    return table, stats, frames, lengths, capture


@njit(**NJIT)
def poll(row, host):
    """Serve every queue pair of the row's table once; returns the frames moved. Asks the
    host for service when the capture (with `capture`, every frame received is recorded) needs
    writing out before the next round."""
    # One function for the whole round: the arrays passed to a call of its own cost more than
    # the round itself where the pairs have little to do.
    table, stats, frames, lengths, capture = _arrays(row)
    mode, burst = row[ARG_MODE], int(row[ARG_BURST])
    forwarding = mode == FWD_IO or mode == FWD_MACSWAP
    stride = frames.shape[1]
    frames_at = frames.ctypes.data
    lengths_at = lengths.ctypes.data
    capturing = capture[0].shape[0] > 0
    moved = 0
    for p in range(table.shape[0]):
        tx = table[p, COL_TX]
        rx = table[p, COL_RX]
        if mode == FWD_TXONLY and rx != 0:
            # Every frame is the one template row (the slots are all 0), which stays in the
            # cache: the cost is the copy into the guest's buffers, as for a generator's mbufs.
            sent = net_transmit(rx, row[ARG_TEMPLATE], stride, row[ARG_TEMPLATE_SLOTS],
                                row[ARG_TEMPLATE_LENGTH], burst)
            if sent < 0:
                stats[p, STAT_BROKEN] += 1
                table[p, COL_RX] = 0
            else:
                moved += sent
        if tx == 0:
            continue
        room = burst
        if rx != 0 and forwarding:
            # Under a vIOMMU, a receive buffer may wait for its translation: frames stay in
            # the transmitq meanwhile instead of being taken and lost (a broken receiveq is
            # found by the transmit below).
            room = net_room(rx, burst)
            if room == 0:
                continue
            if room < 0:
                room = burst
        got = net_receive(tx, frames_at, stride, stride, 0, lengths_at, room)
        if got < 0:
            stats[p, STAT_BROKEN] += 1
            table[p, COL_TX] = 0
            continue
        if got == 0:
            continue
        moved += got
        if capturing:
            capture_burst(frames, lengths, None, got, capture[0], capture[1], capture[2],
                          capture[3])
        if not forwarding:
            continue
        if mode == FWD_MACSWAP:
            swap_macs(frames, lengths, None, got)
        sent = 0
        if rx != 0:
            sent = net_transmit(rx, frames_at, stride, 0, lengths_at, got)
            if sent < 0:
                stats[p, STAT_BROKEN] += 1
                table[p, COL_RX] = 0
                sent = 0
        stats[p, STAT_NO_ROOM] += got - sent
    if capturing and capture[3][0] + burst * table.shape[0] > capture[0].shape[0]:
        host[HOST_SERVICE] = 1
    return moved


@njit(**NJIT)
def arm(row, on):
    """Ask the drivers of every served ring that brings work for kicks (on=1) or not to kick
    (on=0); returns the work already pending, for which no kick will come.

    A transmitq's kick brings frames. A receiveq's brings room: for txonly, work; for io and
    macswap, work only when frames wait in the transmitq (so with none posted, the host
    sleeps until the driver posts some). Asking first and looking at the rings after is what
    makes a sleep safe: whatever the driver adds later, it kicks for.
    """
    table = _arrays(row)[0]
    mode = row[ARG_MODE]
    pending = 0
    for p in range(table.shape[0]):
        packed = table[p, COL_PACKED] != 0
        frames = 0
        if table[p, COL_TX] != 0:
            frames = device_set_kicks(packed, table[p, COL_TX_VQ], on)
        if table[p, COL_RX] == 0 or mode == FWD_DROP:
            pending += frames
            continue
        room = device_set_kicks(packed, table[p, COL_RX_VQ], on)
        if mode == FWD_TXONLY:
            pending += frames + room
        elif room != 0:
            pending += frames
    return pending


register_poller(KIND, "vhost-net queue pairs", poll, arm)
