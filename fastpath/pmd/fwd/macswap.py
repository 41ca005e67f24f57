"""macswap: every frame goes back with its destination and source MAC swapped."""

from numba import njit

from fastpath._numba import NJIT
from fastpath.pmd._forwarder_kernels import swap_macs
from fastpath.pmd._mbuf import POOL_DATA, POOL_LENGTH

CODE = 2
GENERATES = False
HELP = "destination and source MAC swapped"
COUNTERS = ()


def configure(options, config) -> list[bytes]:
    """Nothing to set."""
    return []


@njit(**NJIT)
def forward_burst(config, state, pool, mbufs, n):
    """Swap the addresses of mbufs[:n] (frames too short for them are left alone)."""
    swap_macs(pool[POOL_DATA], pool[POOL_LENGTH], mbufs, n)
    return n
