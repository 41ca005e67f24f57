"""One entry point per burst direction for every port kind: the kernels a forwarding loop and
the Python methods of `Port` call with a port queue's row.

Each calls the kernel the row's kind registered (see `_kinds`). Frames and bytes are counted
here, once for all kinds, and the mbufs a kind's `tx` took go back to the pool here.
"""

from numba import njit

from fastpath._numba import NJIT

# The built-in port kinds. Each module registers its kind when imported, which must be before
# a kernel calling the dispatch is compiled: a new kind is a module of its own, named here.
from fastpath.pmd import _null, _pcap_port, _ring, _tap, _vhost, _virtio_user  # noqa: F401
from fastpath.pmd._kinds import (
    BurstKernels,
    rx_by_kind,
    set_burst_kernels,
    tx_by_kind,
    wants_service_by_kind,
)
from fastpath.pmd._mbuf import POOL_LENGTH, free_burst
from fastpath.pmd._port import (
    ROW_KIND,
    STAT_RX_BYTES,
    STAT_RX_FRAMES,
    STAT_TX_BYTES,
    STAT_TX_FRAMES,
)
from fastpath.pmd._port_kernels import row_stats

# KindDispatch reads a row's kind from its column 0.
assert ROW_KIND == 0


@njit(**NJIT)
def _bytes(pool, mbufs, start, end):
    length = pool[POOL_LENGTH]
    total = 0
    for k in range(start, end):
        total += length[mbufs[k]]
    return total


@njit(**NJIT)
def port_rx(row, pool, mbufs, max_n):
    """Receive up to max_n frames into mbufs[:n]; returns n."""
    n = rx_by_kind(row, pool, mbufs, max_n)
    if n > 0:
        stats = row_stats(row)
        stats[STAT_RX_FRAMES] += n
        stats[STAT_RX_BYTES] += _bytes(pool, mbufs, 0, n)
    return n


@njit(**NJIT)
def port_tx(row, pool, mbufs, n):
    """Send mbufs[:n]; returns how many were taken, which are back in the pool."""
    if n <= 0:
        return 0
    # Bytes are counted before the kind's tx: a zero-copy port keeps the mbufs it sends and
    # leaves spares in their places in mbufs[:sent] (mbufs[sent:] it leaves alone).
    offered = _bytes(pool, mbufs, 0, n)
    sent = tx_by_kind(row, pool, mbufs, n)
    if sent > 0:
        stats = row_stats(row)
        stats[STAT_TX_FRAMES] += sent
        stats[STAT_TX_BYTES] += offered - _bytes(pool, mbufs, sent, n)
        free_burst(pool, mbufs, 0, sent)
    return sent


@njit(**NJIT)
def port_wants_service(row):
    """Whether the port needs Python's `service()` before the loop goes on (a capture whose
    ring is nearly full)."""
    return wants_service_by_kind(row)


set_burst_kernels(BurstKernels(rx=port_rx, tx=port_tx))
