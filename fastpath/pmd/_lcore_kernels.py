"""The forwarding loop's kernel: every stream, rx port -> engine -> tx port, burst after burst,
with nothing in Python between bursts."""

from numba import njit

from fastpath._numba import NJIT
from fastpath.pmd._dispatch import port_rx, port_tx, port_wants_service
from fastpath.pmd._mbuf import free_burst
from fastpath.pmd._port import STAT_TX_DROPPED
from fastpath.pmd._port_kernels import row_stats
from fastpath.pmd.fwd._dispatch import engine_burst

# Stream columns: rows (of the loop's port-queue table) to receive from and send to.
STREAM_RX = 0
STREAM_TX = 1
STREAM_COLUMNS = 2


@njit(**NJIT)
def forward_rounds(rows, streams, engine, pool, mbufs, burst, rounds):
    """Run every stream up to `rounds` times; returns the frames sent on.

    `engine` is (code, config, templates, template_lengths, state) as `EngineSetup.arrays`
    gives it. Returns early when a port asks for Python's service (a capture to write out).
    Frames a tx port does not take are freed and counted as its drops.
    """
    code, config, templates, template_lengths, state = engine
    moved = 0
    for _ in range(rounds):
        for s in range(streams.shape[0]):
            n = port_rx(rows[streams[s, STREAM_RX]], pool, mbufs, burst)
            n = engine_burst(code, config, templates, template_lengths, state, pool, mbufs, n,
                             burst)
            if n <= 0:
                continue
            tx_row = rows[streams[s, STREAM_TX]]
            sent = port_tx(tx_row, pool, mbufs, n)
            if sent < n:
                free_burst(pool, mbufs, sent, n)
                row_stats(tx_row)[STAT_TX_DROPPED] += n - sent
            moved += sent
        for r in range(rows.shape[0]):
            if port_wants_service(rows[r]):
                return moved
    return moved
