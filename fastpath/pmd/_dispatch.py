"""One entry point per burst direction for every port kind: the kernels a forwarding loop and
the Python methods of `Port` call with a port queue's row.

Each kind's module has `rx(row, pool, mbufs, max_n) -> n` (taking mbufs from the pool with
`take_mbufs`) and `tx(row, pool, mbufs, n) -> sent` (copying frames out; the mbufs taken are
returned to the pool here). Frames and bytes are counted here, once for all kinds.
"""

from numba import njit

from fastpath._numba import NJIT
from fastpath.pmd import _null, _pcap_port, _ring, _tap, _vhost, _virtio_user
from fastpath.pmd._mbuf import POOL_LENGTH, free_burst
from fastpath.pmd._port import (
    KIND_NULL,
    KIND_PCAP,
    KIND_RING,
    KIND_TAP,
    KIND_VHOST,
    KIND_VIRTIO_USER,
    ROW_KIND,
    STAT_RX_BYTES,
    STAT_RX_FRAMES,
    STAT_TX_BYTES,
    STAT_TX_FRAMES,
)
from fastpath.pmd._port_kernels import row_stats


@njit(**NJIT)
def _count(row, pool, mbufs, n, frames_column, bytes_column):
    length = pool[POOL_LENGTH]
    total = 0
    for k in range(n):
        total += length[mbufs[k]]
    stats = row_stats(row)
    stats[frames_column] += n
    stats[bytes_column] += total


@njit(**NJIT)
def port_rx(row, pool, mbufs, max_n):
    """Receive up to max_n frames into mbufs[:n]; returns n."""
    kind = row[ROW_KIND]
    if kind == KIND_VHOST:
        n = _vhost.rx(row, pool, mbufs, max_n)
    elif kind == KIND_VIRTIO_USER:
        n = _virtio_user.rx(row, pool, mbufs, max_n)
    elif kind == KIND_RING:
        n = _ring.rx(row, pool, mbufs, max_n)
    elif kind == KIND_PCAP:
        n = _pcap_port.rx(row, pool, mbufs, max_n)
    elif kind == KIND_TAP:
        n = _tap.rx(row, pool, mbufs, max_n)
    elif kind == KIND_NULL:
        n = _null.rx(row, pool, mbufs, max_n)
    else:
        n = 0
    if n > 0:
        _count(row, pool, mbufs, n, STAT_RX_FRAMES, STAT_RX_BYTES)
    return n


@njit(**NJIT)
def port_tx(row, pool, mbufs, n):
    """Send mbufs[:n]; returns how many were taken, which are back in the pool."""
    if n <= 0:
        return 0
    kind = row[ROW_KIND]
    if kind == KIND_VHOST:
        sent = _vhost.tx(row, pool, mbufs, n)
    elif kind == KIND_VIRTIO_USER:
        sent = _virtio_user.tx(row, pool, mbufs, n)
    elif kind == KIND_RING:
        sent = _ring.tx(row, pool, mbufs, n)
    elif kind == KIND_PCAP:
        sent = _pcap_port.tx(row, pool, mbufs, n)
    elif kind == KIND_TAP:
        sent = _tap.tx(row, pool, mbufs, n)
    elif kind == KIND_NULL:
        sent = _null.tx(row, pool, mbufs, n)
    else:
        sent = 0
    if sent > 0:
        _count(row, pool, mbufs, sent, STAT_TX_FRAMES, STAT_TX_BYTES)
        free_burst(pool, mbufs, 0, sent)
    return sent


@njit(**NJIT)
def port_wants_service(row):
    """Whether the port needs Python's `service()` before the loop goes on (a capture whose
    ring is nearly full)."""
    if row[ROW_KIND] == KIND_PCAP:
        return _pcap_port.wants_service(row)
    return False
