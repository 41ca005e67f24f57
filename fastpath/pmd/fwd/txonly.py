"""txonly: received frames are freed; every burst is filled with frames of a traffic profile,
its templates taken in turn."""

import numpy as np
from numba import njit

from fastpath._numba import NJIT, copy_bytes
from fastpath.pmd._mbuf import POOL_DATA, POOL_LENGTH
from fastpath.pmd._traffic import cycle_length, profile_frames
from fastpath.pmd.fwd import _generate
from fastpath.pmd.fwd._generate import STATE_NEXT, renew_burst, templates_of

CODE = 4
GENERATES = True
HELP = "received frames freed; bursts of --profile frames sent (--size sets their length)"
COUNTERS = _generate.COUNTERS


def configure(options, config) -> list[bytes]:
    """One cycle of the profile's frames, the templates."""
    frames = profile_frames(options.profile, count=cycle_length(options.profile, options.flows),
                            size=options.size, flows=options.flows)
    return templates_of(frames, options.room, f"profile {options.profile}")


@njit(**NJIT)
def generate_burst(config, templates, template_lengths, state, pool, mbufs, n, burst):
    """Free mbufs[:n], then fill up to `burst` fresh mbufs from the templates, round robin;
    returns how many."""
    got = renew_burst(templates, state, pool, mbufs, n, burst)
    data = pool[POOL_DATA]
    length = pool[POOL_LENGTH]
    count = templates.shape[0]
    t = np.int64(state[STATE_NEXT])
    stride = data.shape[1]
    at = data.ctypes.data
    template_stride = templates.shape[1]
    template_at = templates.ctypes.data
    for k in range(got):
        m = mbufs[k]
        size = template_lengths[t]
        # renew_burst checked that a template row fits an mbuf's row.
        copy_bytes(at + np.uint64(m) * stride, template_at + t * template_stride, size)
        length[m] = size
        t += 1
        if t == count:
            t = 0
    state[STATE_NEXT] = t
    return got
