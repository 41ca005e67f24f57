"""What the generating engines share: their counters, and trading a received burst for fresh
mbufs."""

import numpy as np
from numba import njit

from fastpath._numba import NJIT
from fastpath.pmd._mbuf import POOL_DATA, alloc_burst, alloc_stamped_burst, free_burst

# Running state: the counters first (in COUNTERS order), then where the engine is.
STATE_GENERATED = 0     # frames made
STATE_POOL_SHORT = 1    # bursts the pool could not fill
STATE_TOO_LONG = 2      # bursts not made: the templates are longer than the pool's mbufs
STATE_NEXT = 3          # the next template (txonly) or flow (flowgen)
COUNTERS = ("generated", "pool_short", "templates_too_long")


def templates_of(frames: list[bytes], room: int, what: str) -> list[bytes]:
    """`frames`, once each is known to fit an mbuf of `room` bytes."""
    longest = max(len(f) for f in frames)
    if longest > room:
        raise ValueError(f"{what} makes {longest}-byte frames, which do not fit {room}-byte "
                         f"mbufs")
    return frames


@njit(**NJIT)
def renew_burst(templates, state, pool, mbufs, n, burst, stamped):
    """Free the n frames received and take up to `burst` mbufs into mbufs[:got] for new
    frames, `stamped` ones keeping their frames and stamps (see alloc_stamped_burst); returns
    got."""
    free_burst(pool, mbufs, 0, n)
    if templates.shape[1] > pool[POOL_DATA].shape[1]:
        state[STATE_TOO_LONG] += np.uint64(1)
        return 0
    want = burst if burst < mbufs.shape[0] else mbufs.shape[0]
    got = alloc_stamped_burst(pool, mbufs, want) if stamped else alloc_burst(pool, mbufs, want)
    if got < want:
        state[STATE_POOL_SHORT] += np.uint64(1)
    state[STATE_GENERATED] += np.uint64(got)
    return got
