"""macswap: every frame goes back with its destination and source MAC swapped."""

from numba import njit

from fastpath._numba import NJIT
from fastpath.pmd._mbuf import POOL_DATA, POOL_LENGTH

CODE = 2
GENERATES = False
HELP = "destination and source MAC swapped"
COUNTERS = ()

MAC_BYTES = 6


def configure(options, config) -> list[bytes]:
    """Nothing to set."""
    return []


@njit(**NJIT)
def forward_burst(config, state, pool, mbufs, n):
    """Swap the addresses of mbufs[:n] (frames too short for them are left alone)."""
    data = pool[POOL_DATA]
    length = pool[POOL_LENGTH]
    for k in range(n):
        m = mbufs[k]
        if length[m] < 2 * MAC_BYTES:
            continue
        for b in range(MAC_BYTES):
            t = data[m, b]
            data[m, b] = data[m, MAC_BYTES + b]
            data[m, MAC_BYTES + b] = t
    return n
