"""The forwarding poll loop: each queue pair's transmitq back to its receiveq, in compiled code.

One call serves every row of a table for a bounded number of rounds and returns, so that the
control plane can step in between calls; nothing per frame or per burst runs in Python.
"""

from numba import njit

from fastpath._numba import NJIT
from fastpath.devices.net.kernels import eventfd_wait, net_receive, net_transmit
from fastpath.pmd._pcap import capture_burst
from fastpath.vring.kernels import device_set_kicks

# Forwarding modes.
FWD_IO = 0        # frames go back unchanged
FWD_MACSWAP = 1   # destination and source MAC swapped
FWD_DROP = 2      # frames are received, counted and freed

# Table columns: one row per queue pair served (uint64).
COL_TX = 0        # NetQueue handle of the transmitq; 0 when not served
COL_RX = 1        # NetQueue handle of the receiveq; 0 when it takes no frames
COL_TX_VQ = 2     # device queue handle of the transmitq, to ask for kicks
COL_PACKED = 3    # 1 for a packed ring
TABLE_COLUMNS = 4

# Statistics columns (uint64), per row.
STAT_NO_ROOM = 0  # frames dropped because the receiveq had no room (or was not there)
STAT_BROKEN = 1   # times a ring broke (the row is then no longer served)
STAT_COLUMNS = 2

MAC_BYTES = 6


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
def forward(table, stats, mode, frames, lengths, burst, rounds, idle_rounds, kick_fds,
            sleep_ms, capture):
    """Serve every row for up to `rounds` rounds; returns the frames received.

    `capture` is (ring, lengths, stamps, state) of a pcap capture ring that records every
    frame received, or a ring of no rows.

    With idle_rounds > 0, after that many rounds in a row with nothing received it asks the
    drivers for kicks, sleeps on kick_fds (int32, -1 for none) for up to sleep_ms, asks them to
    stop kicking and returns.
    """
    stride = frames.shape[1]
    frames_at = frames.ctypes.data
    lengths_at = lengths.ctypes.data
    received = 0
    idle = 0
    for _ in range(rounds):
        moved = 0
        for p in range(table.shape[0]):
            tx = table[p, COL_TX]
            if tx == 0:
                continue
            got = net_receive(tx, frames_at, stride, 0, lengths_at, burst)
            if got < 0:
                stats[p, STAT_BROKEN] += 1
                table[p, COL_TX] = 0
                continue
            if got == 0:
                continue
            moved += got
            if capture[0].shape[0]:
                capture_burst(frames, lengths, None, got, capture[0], capture[1], capture[2],
                              capture[3])
            if mode == FWD_DROP:
                continue
            if mode == FWD_MACSWAP:
                swap_macs(frames, lengths, None, got)
            sent = 0
            rx = table[p, COL_RX]
            if rx != 0:
                sent = net_transmit(rx, frames_at, stride, 0, lengths_at, got)
                if sent < 0:
                    stats[p, STAT_BROKEN] += 1
                    table[p, COL_RX] = 0
                    sent = 0
            stats[p, STAT_NO_ROOM] += got - sent
        received += moved
        if capture[0].shape[0] and (capture[3][0] + burst * table.shape[0]
                                    > capture[0].shape[0]):
            return received  # for the caller to write the capture out before it overflows
        if moved:
            idle = 0
            continue
        if idle_rounds <= 0:
            continue
        idle += 1
        if idle < idle_rounds:
            continue
        pending = 0
        for p in range(table.shape[0]):
            if table[p, COL_TX] != 0:
                pending += device_set_kicks(table[p, COL_PACKED] != 0, table[p, COL_TX_VQ], 1)
        if pending == 0:
            eventfd_wait(kick_fds.ctypes.data, kick_fds.shape[0], sleep_ms)
        for p in range(table.shape[0]):
            if table[p, COL_TX] != 0:
                device_set_kicks(table[p, COL_PACKED] != 0, table[p, COL_TX_VQ], 0)
        return received
    return received
