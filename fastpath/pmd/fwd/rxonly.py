"""rxonly: frames are received and freed; nothing goes out."""

from numba import njit

from fastpath._numba import NJIT
from fastpath.pmd._mbuf import free_burst

CODE = 3
GENERATES = False
HELP = "frames received and freed; nothing sent"
COUNTERS = ()


def configure(options, config) -> list[bytes]:
    """Nothing to set."""
    return []


@njit(**NJIT)
def forward_burst(config, state, pool, mbufs, n):
    """Free mbufs[:n]; returns 0."""
    free_burst(pool, mbufs, 0, n)
    return 0
