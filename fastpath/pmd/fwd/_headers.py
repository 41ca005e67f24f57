"""Where a frame's headers are, and Internet checksums over them, for the kernels.

Checksums are the 16-bit one's complement of the one's complement sum of big-endian 16-bit
words (RFC 1071); updating one after some words changed follows RFC 1624 (eqn. 3). The
TCP and UDP checksums cover a pseudo-header of the IP addresses, protocol and segment length
(RFC 9293 section 3.1, RFC 768, and RFC 8200 section 8.1 for IPv6).
"""

import sys

import numpy as np
from numba import njit

from fastpath._numba import NJIT

ETHERTYPE_IPV4 = 0x0800
ETHERTYPE_IPV6 = 0x86DD
ETHERTYPE_VLAN = 0x8100     # IEEE 802.1Q customer tag
ETHERTYPE_QINQ = 0x88A8     # IEEE 802.1ad service tag
ETHERNET_HEADER = 14
VLAN_TAG = 4
MAX_TAGS = 2

LITTLE_ENDIAN = sys.byteorder == "little"

PROTO_TCP = 6
PROTO_UDP = 17

# What `locate` finds at layer 3.
L3_NONE = 0
L3_IPV4 = 1
L3_IPV6 = 2

IPV4_HEADER = 20            # without options
IPV6_HEADER = 40
UDP_HEADER = 8
TCP_HEADER = 20             # without options
IPV4_CHECKSUM = 10          # the header checksum's offset in the IPv4 header
IPV4_SOURCE = 12
UDP_CHECKSUM = 6            # the checksum's offset in the UDP header
TCP_CHECKSUM = 16           # ... and in the TCP header


@njit(**NJIT)
def get_be16(frame, at):
    """The big-endian 16-bit word at frame[at]."""
    return (np.int64(frame[at]) << 8) | np.int64(frame[at + 1])


@njit(**NJIT)
def put_be16(frame, at, value):
    """Store `value` as a big-endian 16-bit word at frame[at]."""
    frame[at] = (value >> 8) & 0xFF
    frame[at + 1] = value & 0xFF


@njit(**NJIT)
def host_words(data):
    """The frame rows `data` as rows of 16-bit words in the host's byte order, for `ones_sum`
    (rows of no words when a row's length is odd). Made once per burst: a view is cheap per
    burst but not per frame."""
    if data.shape[1] % 2:
        return np.zeros((data.shape[0], 0), dtype=np.uint16)
    return data.view(np.uint16)


@njit(**NJIT)
def ones_sum(frame, words, start, end):
    """The sum (not always folded) of the big-endian words of frame[start:end], `start`
    even; an odd last byte counts as a word with a zero low byte. `words` is the frame's row
    of `host_words`.

    The loops count with unsigned indices: with no negative index to wrap around, they
    vectorize.
    """
    first = np.uint64(start // 2)
    last = np.uint64(end // 2)
    if words.shape[0] > 0:
        word_sum = np.uint64(0)
        for w in range(first, last):
            word_sum += words[w]
        total = fold(np.int64(word_sum))
        if LITTLE_ENDIAN:
            # The one's complement sum of byte-swapped words is the byte-swapped sum
            # (RFC 1071 section 2(B)).
            total = ((total & 0xFF) << 8) | (total >> 8)
    else:
        high = np.uint64(0)
        low = np.uint64(0)
        for w in range(first, last):
            high += frame[2 * w]
            low += frame[2 * w + 1]
        total = (np.int64(high) << 8) + np.int64(low)
    if (end - start) % 2:
        total += np.int64(frame[end - 1]) << 8
    return total


@njit(**NJIT)
def fold(total):
    """A sum folded into 16 bits with end-around carries."""
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return total


@njit(**NJIT)
def checksum_of(total):
    """The checksum to store for a sum taken with the checksum field zero."""
    return ~fold(total) & 0xFFFF


@njit(**NJIT)
def adjust_checksum(checksum, removed, added):
    """A checksum after words summing to `removed` were replaced by words summing to `added`
    (RFC 1624 eqn. 3: HC' = ~(~HC + ~m + m'))."""
    return checksum_of((~checksum & 0xFFFF) + (~fold(removed) & 0xFFFF) + fold(added))


@njit(**NJIT)
def locate(frame, length):
    """(l3, l3_at, l3_length, proto, l4_at, l4_length) of a frame of `length` bytes.

    l3 is L3_IPV4, L3_IPV6 or L3_NONE (nothing whose header fits the frame), behind up to two
    VLAN tags; l3_length is the IPv4 header's length. l4_at is where a whole TCP or UDP segment
    of l4_length bytes starts (the IP header's lengths say how long), or -1 when there is none
    to check: another protocol, a fragment, an IPv6 extension header, a truncated frame.
    """
    none = (L3_NONE, 0, 0, 0, -1, 0)
    if length < ETHERNET_HEADER:
        return none
    ethertype = get_be16(frame, 12)
    at = ETHERNET_HEADER
    for _ in range(MAX_TAGS):
        if (ethertype == ETHERTYPE_VLAN or ethertype == ETHERTYPE_QINQ) \
                and at + VLAN_TAG <= length:
            ethertype = get_be16(frame, at + 2)
            at += VLAN_TAG
    if ethertype == ETHERTYPE_IPV4:
        if at + IPV4_HEADER > length or frame[at] >> 4 != 4:
            return none
        header = np.int64(frame[at] & 0x0F) * 4
        if header < IPV4_HEADER or at + header > length:
            return none
        proto = np.int64(frame[at + 9])
        total = get_be16(frame, at + 2)
        fragment = get_be16(frame, at + 6) & 0x3FFF     # more-fragments flag and offset
        segment = total - header
        if total < header or at + total > length or fragment != 0:
            return (L3_IPV4, at, header, proto, -1, 0)
        return (L3_IPV4, at, header, proto, _segment_at(proto, at + header, segment), segment)
    if ethertype == ETHERTYPE_IPV6:
        if at + IPV6_HEADER > length or frame[at] >> 4 != 6:
            return none
        proto = np.int64(frame[at + 6])
        segment = get_be16(frame, at + 4)
        if at + IPV6_HEADER + segment > length:
            return (L3_IPV6, at, IPV6_HEADER, proto, -1, 0)
        return (L3_IPV6, at, IPV6_HEADER, proto,
                _segment_at(proto, at + IPV6_HEADER, segment), segment)
    return none


@njit(**NJIT)
def _segment_at(proto, at, segment):
    if proto == PROTO_UDP and segment >= UDP_HEADER:
        return at
    if proto == PROTO_TCP and segment >= TCP_HEADER:
        return at
    return -1


@njit(**NJIT)
def pseudo_header_sum(frame, words, l3, l3_at, proto, l4_length):
    """The sum of the pseudo-header words a TCP or UDP checksum covers."""
    if l3 == L3_IPV4:
        addresses = ones_sum(frame, words, l3_at + 12, l3_at + 20)
    else:
        addresses = ones_sum(frame, words, l3_at + 8, l3_at + 40)
    return addresses + proto + (l4_length >> 16) + (l4_length & 0xFFFF)


@njit(**NJIT)
def l4_checksum_at(proto, l4_at):
    """Where the TCP or UDP checksum field is."""
    return l4_at + (UDP_CHECKSUM if proto == PROTO_UDP else TCP_CHECKSUM)
