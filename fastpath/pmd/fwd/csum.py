"""csum: IPv4 header, TCP and UDP checksums of every frame verified and counted, or computed
and written; every frame goes on.

Frames may be IPv4 or IPv6, behind up to two VLAN tags. A UDP checksum of zero over IPv4 says
none was computed (RFC 768) and is not counted bad; over IPv6 it is (RFC 8200 section 8.1).
A computed UDP checksum of zero is written as 0xFFFF.
"""

import numpy as np
from numba import njit

from fastpath._numba import NJIT
from fastpath.pmd._mbuf import POOL_DATA, POOL_LENGTH
from fastpath.pmd.fwd._headers import (
    IPV4_CHECKSUM,
    L3_IPV4,
    PROTO_UDP,
    checksum_of,
    fold,
    get_be16,
    host_words,
    l4_checksum_at,
    locate,
    ones_sum,
    pseudo_header_sum,
    put_be16,
)
from fastpath.pmd.fwd._options import CSUM_MODES

CODE = 6
GENERATES = False
HELP = ("--csum verify: frames with a bad IPv4, TCP or UDP checksum counted; --csum fill: "
        "the checksums computed and written; all frames go on")

# Settings.
CONFIG_MODE = 0         # MODE_VERIFY or MODE_FILL
MODE_VERIFY = 0
MODE_FILL = 1

# Running state: the counters, in COUNTERS order.
STATE_BAD_IP = 0
STATE_BAD_L4 = 1
STATE_IP_FILLED = 2
STATE_L4_FILLED = 3
COUNTERS = ("bad_ip_checksum", "bad_l4_checksum", "ip_checksums_filled",
            "l4_checksums_filled")

SUM_OK = 0xFFFF         # what the folded sum of words holding a right checksum comes to


def configure(options, config) -> list[bytes]:
    """Store the mode."""
    config[CONFIG_MODE] = CSUM_MODES.index(options.csum)
    return []


@njit(**NJIT)
def forward_burst(config, state, pool, mbufs, n):
    """Verify or fill the checksums of mbufs[:n]; returns n."""
    data = pool[POOL_DATA]
    length = pool[POOL_LENGTH]
    all_words = host_words(data)
    fill = config[CONFIG_MODE] == MODE_FILL
    bad_ip = 0
    bad_l4 = 0
    filled_ip = 0
    filled_l4 = 0
    for k in range(n):
        m = mbufs[k]
        frame = data[m]
        words = all_words[m]
        l3, l3_at, l3_length, proto, l4_at, l4_length = locate(frame, np.int64(length[m]))
        if l3 == L3_IPV4:
            if fill:
                put_be16(frame, l3_at + IPV4_CHECKSUM, 0)
                put_be16(frame, l3_at + IPV4_CHECKSUM,
                         checksum_of(ones_sum(frame, words, l3_at, l3_at + l3_length)))
                filled_ip += 1
            elif fold(ones_sum(frame, words, l3_at, l3_at + l3_length)) != SUM_OK:
                bad_ip += 1
        if l4_at < 0:
            continue
        field = l4_checksum_at(proto, l4_at)
        if fill:
            put_be16(frame, field, 0)
            checksum = checksum_of(pseudo_header_sum(frame, words, l3, l3_at, proto, l4_length)
                                   + ones_sum(frame, words, l4_at, l4_at + l4_length))
            if checksum == 0 and proto == PROTO_UDP:
                checksum = 0xFFFF
            put_be16(frame, field, checksum)
            filled_l4 += 1
        elif proto == PROTO_UDP and l3 == L3_IPV4 and get_be16(frame, field) == 0:
            continue
        elif fold(pseudo_header_sum(frame, words, l3, l3_at, proto, l4_length)
                  + ones_sum(frame, words, l4_at, l4_at + l4_length)) != SUM_OK:
            bad_l4 += 1
    state[STATE_BAD_IP] += np.uint64(bad_ip)
    state[STATE_BAD_L4] += np.uint64(bad_l4)
    state[STATE_IP_FILLED] += np.uint64(filled_ip)
    state[STATE_L4_FILLED] += np.uint64(filled_l4)
    return n
