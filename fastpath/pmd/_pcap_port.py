"""(being written)"""

from numba import njit

from fastpath._numba import NJIT


@njit(**NJIT)
def rx(row, pool, mbufs, max_n):
    return 0


@njit(**NJIT)
def tx(row, pool, mbufs, n):
    return 0


@njit(**NJIT)
def wants_service(row):
    return False
