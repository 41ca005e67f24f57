"""mac: every frame's destination and source MAC set to configured addresses."""

from numba import njit

from fastpath._numba import NJIT
from fastpath.pmd._mbuf import POOL_DATA, POOL_LENGTH

CODE = 1
GENERATES = False
HELP = "destination and source MAC set to --eth-dst and --eth-src"
COUNTERS = ()

MAC_BYTES = 6
# Settings: the destination MAC's bytes, then the source MAC's.
CONFIG_DST = 0
CONFIG_SRC = CONFIG_DST + MAC_BYTES


def configure(options, config) -> list[bytes]:
    """Store the two addresses."""
    config[CONFIG_DST:CONFIG_DST + MAC_BYTES] = list(options.eth_dst)
    config[CONFIG_SRC:CONFIG_SRC + MAC_BYTES] = list(options.eth_src)
    return []


@njit(**NJIT)
def forward_burst(config, state, pool, mbufs, n):
    """Rewrite the addresses of mbufs[:n] (frames too short for them are left alone)."""
    data = pool[POOL_DATA]
    length = pool[POOL_LENGTH]
    for k in range(n):
        m = mbufs[k]
        if length[m] < 2 * MAC_BYTES:
            continue
        for b in range(2 * MAC_BYTES):
            data[m, b] = config[CONFIG_DST + b]
    return n
