"""What every port kind's kernels share: the queue's statistics, and taking mbufs for a
receive burst."""

from numba import njit

from fastpath._numba import NJIT, carray, u64_pointer
from fastpath.pmd._mbuf import alloc_burst
from fastpath.pmd._port import ROW_STATS, STAT_COLUMNS, STAT_RX_NO_MBUF


@njit(**NJIT)
def row_stats(row):
    """The queue's statistics array (STAT_* columns)."""
    # SAFETY: ROW_STATS is the address of the port's own uint64[STAT_COLUMNS] row, written by
    # Port.__init__ from the statistics array the port keeps for its lifetime.
    return carray(u64_pointer(row[ROW_STATS]), (STAT_COLUMNS,))


@njit(**NJIT)
def take_mbufs(row, pool, mbufs, n):
    """Take up to n mbufs for a receive burst, counting a shortfall; returns how many."""
    got = alloc_burst(pool, mbufs, n)
    if got < n:
        row_stats(row)[STAT_RX_NO_MBUF] += 1
    return got
