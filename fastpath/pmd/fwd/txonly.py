"""txonly: received frames are freed; every burst is filled with frames of a traffic profile,
its templates taken in turn.

A frame is written once per mbuf, not once per send: the engine stamps each mbuf with the
template it wrote there (a number unique to this setup and template), and an mbuf that comes
back from the pool with that stamp still holds those bytes (any other taker clears the stamp,
see alloc_burst), so only its length is set again. With a pool of a few hundred mbufs in
turn, a generator of 1518-byte frames then writes no payload at all once warm, as testpmd's
txonly does not.
"""

import itertools

import numpy as np
from numba import njit

from fastpath._numba import NJIT, copy_bytes
from fastpath.pmd._mbuf import POOL_DATA, POOL_LENGTH, POOL_STAMP
from fastpath.pmd._traffic import cycle_length, profile_frames
from fastpath.pmd.fwd import _generate
from fastpath.pmd.fwd._generate import STATE_NEXT, renew_burst, templates_of

CODE = 4
GENERATES = True
HELP = "received frames freed; bursts of --profile frames sent (--size sets their length)"
COUNTERS = _generate.COUNTERS

CONFIG_STAMP = 0    # this setup's stamp base: template t's frames are stamped base + t
# Bases a template index cannot reach, so that no two setups' stamps meet.
_STAMP_BASES = itertools.count(1 << 32, 1 << 32)


def configure(options, config) -> list[bytes]:
    """One cycle of the profile's frames, the templates; a stamp base of the setup's own."""
    config[CONFIG_STAMP] = next(_STAMP_BASES)
    frames = profile_frames(options.profile, count=cycle_length(options.profile, options.flows),
                            size=options.size, flows=options.flows)
    return templates_of(frames, options.room, f"profile {options.profile}")


@njit(**NJIT)
def generate_burst(config, templates, template_lengths, state, pool, mbufs, n, burst):
    """Free mbufs[:n], then fill up to `burst` fresh mbufs from the templates, round robin;
    returns how many."""
    got = renew_burst(templates, state, pool, mbufs, n, burst, True)
    data = pool[POOL_DATA]
    length = pool[POOL_LENGTH]
    stamps = pool[POOL_STAMP]
    base = config[CONFIG_STAMP]
    count = templates.shape[0]
    t = np.int64(state[STATE_NEXT])
    stride = data.strides[0]
    at = data.ctypes.data
    template_stride = templates.shape[1]
    template_at = templates.ctypes.data
    for k in range(got):
        m = mbufs[k]
        size = template_lengths[t]
        stamp = base + np.uint64(t)
        if stamps[m] != stamp:
            # renew_burst checked that a template row fits an mbuf's row.
            copy_bytes(at + np.uint64(m) * stride, template_at + t * template_stride, size)
            stamps[m] = stamp
        length[m] = size
        t += 1
        if t == count:
            t = 0
    state[STATE_NEXT] = t
    return got
