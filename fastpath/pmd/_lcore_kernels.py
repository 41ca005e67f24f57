"""The forwarding poller: every stream of a loop, rx port -> engine -> tx port, a burst each per
round, with nothing in Python between bursts."""

from numba import njit

from fastpath._numba import NJIT, carray, i64_pointer, u8_pointer, u32_pointer, u64_pointer
from fastpath.pmd._dispatch import port_rx, port_tx, port_wants_service
from fastpath.pmd._mbuf import free_burst, pool_rooms
from fastpath.pmd._pollers import HOST_SERVICE, POLLER_ARGS, register_poller
from fastpath.pmd._port import ROW_COLUMNS, STAT_TX_DROPPED
from fastpath.pmd._port_kernels import row_stats
from fastpath.pmd.fwd._dispatch import engine_burst
from fastpath.pmd.fwd._options import SLOTS

KIND = 1

# Stream columns: rows (of the loop's port-queue table) to receive from and send to.
STREAM_RX = 0
STREAM_TX = 1
STREAM_COLUMNS = 2

# The poller's row: where the loop's arrays are (the ForwardingLoop keeps them alive).
ARG_ROWS = POLLER_ARGS               # uint64 (row count, ROW_COLUMNS): the port queues' rows
ARG_ROW_COUNT = POLLER_ARGS + 1
ARG_STREAMS = POLLER_ARGS + 2        # int64 (stream count, STREAM_COLUMNS)
ARG_STREAM_COUNT = POLLER_ARGS + 3
ARG_ENGINE = POLLER_ARGS + 4         # the engine's code
ARG_CONFIG = POLLER_ARGS + 5         # uint64 (SLOTS,)
ARG_TEMPLATES = POLLER_ARGS + 6      # uint8 (template count, template width)
ARG_TEMPLATE_COUNT = POLLER_ARGS + 7
ARG_TEMPLATE_WIDTH = POLLER_ARGS + 8
ARG_TEMPLATE_LENGTHS = POLLER_ARGS + 9   # uint32 (template count,)
ARG_STATE = POLLER_ARGS + 10         # uint64 (SLOTS,)
ARG_POOL_DATA = POLLER_ARGS + 11     # the pool's rows (MbufPool.rows_at), for pool_rooms
ARG_POOL_COUNT = POLLER_ARGS + 12
ARG_POOL_ROOM = POLLER_ARGS + 13
ARG_POOL_LENGTH = POLLER_ARGS + 14   # uint32 (mbuf count,)
ARG_POOL_FREE = POLLER_ARGS + 15     # uint32 (mbuf count,)
ARG_POOL_TOP = POLLER_ARGS + 16      # int64 (1,)
ARG_MBUFS = POLLER_ARGS + 17         # uint32 (burst,): the loop's burst of mbuf numbers
ARG_BURST = POLLER_ARGS + 18
ARG_MOVED = POLLER_ARGS + 19         # frames sent on, in all
ARG_POOL_STAMP = POLLER_ARGS + 20    # uint64 (mbuf count,)


@njit(**NJIT)
def poll(row, host):
    """One round of the loop's streams: each stream's rx port -> engine -> tx port, a burst
    each; returns the frames sent on. Frames a tx port does not take are freed and counted as
    its drops; a port that needs Python's service (a capture to write out) asks the host."""
    # SAFETY: every address in the row is that of an array the ForwardingLoop made or was
    # given (its port rows and streams, the engine's arrays, the pool's, its burst), kept
    # alive by it while it is on a host, with the shapes recorded beside them.
    # One function for the whole round: the arrays passed to a call of its own would cost more
    # than the round where the streams have little to do.
    count, room = int(row[ARG_POOL_COUNT]), int(row[ARG_POOL_ROOM])
    pool = (pool_rooms(row[ARG_POOL_DATA], count, room),
            carray(u32_pointer(row[ARG_POOL_LENGTH]), (count,)),
            carray(u32_pointer(row[ARG_POOL_FREE]), (count,)),
            carray(i64_pointer(row[ARG_POOL_TOP]), (1,)),
            carray(u64_pointer(row[ARG_POOL_STAMP]), (count,)))
    templates = int(row[ARG_TEMPLATE_COUNT])
    code = row[ARG_ENGINE]
    config = carray(u64_pointer(row[ARG_CONFIG]), (SLOTS,))
    template_frames = carray(u8_pointer(row[ARG_TEMPLATES]),
                             (templates, int(row[ARG_TEMPLATE_WIDTH])))
    template_lengths = carray(u32_pointer(row[ARG_TEMPLATE_LENGTHS]), (templates,))
    state = carray(u64_pointer(row[ARG_STATE]), (SLOTS,))
    burst = int(row[ARG_BURST])
    rows = carray(u64_pointer(row[ARG_ROWS]), (int(row[ARG_ROW_COUNT]), ROW_COLUMNS))
    streams = carray(i64_pointer(row[ARG_STREAMS]), (int(row[ARG_STREAM_COUNT]),
                                                     STREAM_COLUMNS))
    mbufs = carray(u32_pointer(row[ARG_MBUFS]), (burst,))
    moved = 0
    for s in range(streams.shape[0]):
        n = port_rx(rows[streams[s, STREAM_RX]], pool, mbufs, burst)
        n = engine_burst(code, config, template_frames, template_lengths, state, pool, mbufs,
                         n, burst)
        if n <= 0:
            continue
        tx_row = rows[streams[s, STREAM_TX]]
        sent = port_tx(tx_row, pool, mbufs, n)
        if sent < n:
            free_burst(pool, mbufs, sent, n)
            row_stats(tx_row)[STAT_TX_DROPPED] += n - sent
        moved += sent
    row[ARG_MOVED] += moved
    for r in range(rows.shape[0]):
        if port_wants_service(rows[r]):
            host[HOST_SERVICE] = 1
            break
    return moved


register_poller(KIND, "forwarding loop", poll)
