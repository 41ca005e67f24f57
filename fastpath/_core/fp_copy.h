/*
 * Copies of packet-sized buffers. Most copies on the data path are a header or a small frame;
 * a call into the C library's memcpy costs more than the copy itself at those sizes, so up to
 * 64 bytes are moved with fixed-size (inlined) moves, overlapping at the tail.
 */
#ifndef FP_COPY_H
#define FP_COPY_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

static inline void fp_copy(void *dst, const void *src, size_t n)
{
    uint8_t *d = (uint8_t *)dst;
    const uint8_t *s = (const uint8_t *)src;
    if (n > 64) {
        memcpy(d, s, n);
    } else if (n >= 16) {
        size_t i;
        for (i = 0; i + 16 <= n; i += 16)
            memcpy(d + i, s + i, 16);
        if (i < n)
            memcpy(d + n - 16, s + n - 16, 16);
    } else if (n >= 8) {
        memcpy(d, s, 8);
        memcpy(d + n - 8, s + n - 8, 8);
    } else if (n >= 4) {
        memcpy(d, s, 4);
        memcpy(d + n - 4, s + n - 4, 4);
    } else {
        for (size_t i = 0; i < n; i++)
            d[i] = s[i];
    }
}

/*
 * One 8-byte store of a record's word: a record built from a few such words takes a few wide
 * stores, where field by field it takes one store per field. Records are little-endian, as
 * virtio's own layouts are and as every host fastpath builds for is.
 */
static inline void fp_store_u64(void *p, uint64_t v)
{
    memcpy(p, &v, 8);
}

/*
 * A hint that the line at p is read soon: a burst asks for the next chain's descriptor and
 * buffer while it works on this one, so that the loads that would stall overlap the work.
 * A prefetch never faults, so any address may be named.
 */
#define fp_prefetch(p) __builtin_prefetch((p), 0, 3)

#endif
