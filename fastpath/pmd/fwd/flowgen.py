"""flowgen: received frames are freed; every burst is filled with one IPv4/UDP frame whose
source address and source port step through a number of flows, round robin.

Flow f of the template's source address A and port P comes from A + f and P + f (mod 2^16);
both checksums are updated for the change rather than recomputed.
"""

import numpy as np
from numba import njit

from fastpath._numba import NJIT, copy_bytes
from fastpath.pmd._mbuf import POOL_DATA, POOL_LENGTH
from fastpath.pmd._traffic import profile_frames
from fastpath.pmd.fwd import _generate
from fastpath.pmd.fwd._generate import STATE_NEXT, renew_burst, templates_of
from fastpath.pmd.fwd._headers import (
    IPV4_CHECKSUM,
    IPV4_SOURCE,
    L3_IPV4,
    PROTO_UDP,
    UDP_CHECKSUM,
    adjust_checksum,
    get_be16,
    locate,
    put_be16,
)
from fastpath.pmd.fwd._options import frame_array

CODE = 5
GENERATES = True
HELP = ("one --profile frame over --flows flows: IPv4 source address and UDP source port "
        "step by one per flow, checksums kept right")
COUNTERS = _generate.COUNTERS

# Settings.
CONFIG_FLOWS = 0
CONFIG_IP_AT = 1        # where the IPv4 header starts
CONFIG_UDP_AT = 2       # where the UDP header starts


def configure(options, config) -> list[bytes]:
    """The profile's first frame, the template, and where its headers are."""
    if options.profile == "imix":
        raise ValueError("flowgen sends frames of one size; imix is a mix (use udp64, vlan "
                         "or flows with a size)")
    frame = profile_frames(options.profile, count=1, size=options.size, flows=options.flows)[0]
    l3, l3_at, _, proto, l4_at, _ = locate(frame_array(frame), len(frame))
    if l3 != L3_IPV4 or proto != PROTO_UDP or l4_at < 0:
        raise ValueError(f"flowgen varies IPv4 addresses and UDP ports, and {options.profile} "
                         f"frames are not IPv4/UDP (use udp64, vlan or flows)")
    config[CONFIG_FLOWS] = options.flows
    config[CONFIG_IP_AT] = l3_at
    config[CONFIG_UDP_AT] = l4_at
    return templates_of([frame], options.room, f"profile {options.profile}")


@njit(**NJIT)
def generate_burst(config, templates, template_lengths, state, pool, mbufs, n, burst):
    """Free mbufs[:n], then fill up to `burst` fresh mbufs with the template, each of the next
    flow; returns how many."""
    got = renew_burst(templates, state, pool, mbufs, n, burst, False)
    if got == 0:
        return 0
    data = pool[POOL_DATA]
    length = pool[POOL_LENGTH]
    flows = np.int64(config[CONFIG_FLOWS])
    ip_at = np.int64(config[CONFIG_IP_AT])
    udp_at = np.int64(config[CONFIG_UDP_AT])
    template = templates[0]
    size = template_lengths[0]
    address = (get_be16(template, ip_at + IPV4_SOURCE) << 16) \
        | get_be16(template, ip_at + IPV4_SOURCE + 2)
    port = get_be16(template, udp_at)
    ip_checksum = get_be16(template, ip_at + IPV4_CHECKSUM)
    udp_checksum = get_be16(template, udp_at + UDP_CHECKSUM)
    old_address = (address >> 16) + (address & 0xFFFF)
    f = np.int64(state[STATE_NEXT])
    stride = data.strides[0]
    for k in range(got):
        m = mbufs[k]
        frame = data[m]
        # renew_burst checked that a template row fits an mbuf's row.
        copy_bytes(data.ctypes.data + np.uint64(m) * stride, templates.ctypes.data, size)
        length[m] = size
        flow_address = (address + f) & 0xFFFFFFFF
        flow_port = (port + f) & 0xFFFF
        put_be16(frame, ip_at + IPV4_SOURCE, flow_address >> 16)
        put_be16(frame, ip_at + IPV4_SOURCE + 2, flow_address & 0xFFFF)
        put_be16(frame, udp_at, flow_port)
        new_address = (flow_address >> 16) + (flow_address & 0xFFFF)
        put_be16(frame, ip_at + IPV4_CHECKSUM,
                 adjust_checksum(ip_checksum, old_address, new_address))
        # A zero UDP checksum over IPv4 means none was computed (RFC 768): it stays so.
        if udp_checksum != 0:
            checksum = adjust_checksum(udp_checksum, old_address + port, new_address + flow_port)
            put_be16(frame, udp_at + UDP_CHECKSUM, checksum if checksum != 0 else 0xFFFF)
        f += 1
        if f == flows:
            f = 0
    state[STATE_NEXT] = f
    return got
