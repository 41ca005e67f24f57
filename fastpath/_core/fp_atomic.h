/*
 * Memory ordering for rings shared between processes on different cores.
 *
 * A ring index is published with a release store after the entries it covers are written, and
 * read with an acquire load before those entries are read (virtio 1.2 §2.7.13 and §2.8.21 put
 * a write barrier between filling entries and exposing them, and a read barrier after reading
 * an index). On x86 both compile to plain moves; they still stop the compiler from reordering.
 * Notification decisions compare an index this side just published with an event index the
 * other side wrote, a store followed by a load, which x86 may reorder: that needs a full fence.
 */
#ifndef FP_ATOMIC_H
#define FP_ATOMIC_H

#include <stdint.h>

#if __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
/* virtio 1.x rings are little-endian; the core reads them natively. */
#error "fastpath's core needs a little-endian host"
#endif

#define fp_load_acquire_u16(p) __atomic_load_n((p), __ATOMIC_ACQUIRE)
#define fp_store_release_u16(p, v) __atomic_store_n((p), (v), __ATOMIC_RELEASE)
#define fp_load_relaxed_u16(p) __atomic_load_n((p), __ATOMIC_RELAXED)
#define fp_store_relaxed_u16(p, v) __atomic_store_n((p), (v), __ATOMIC_RELAXED)
/* fastpath's own shared-memory rings (ring.pxd) count with 32-bit indices. */
#define fp_load_acquire_u32(p) __atomic_load_n((p), __ATOMIC_ACQUIRE)
#define fp_store_release_u32(p, v) __atomic_store_n((p), (v), __ATOMIC_RELEASE)
#define fp_load_relaxed_u32(p) __atomic_load_n((p), __ATOMIC_RELAXED)
/*
 * A packed ring's descriptor ends in len, id and flags: one 8-byte word, read or written at
 * once, so that the flags that hand a slot over travel with the fields they cover.
 */
#define fp_load_acquire_u64(p) __atomic_load_n((const uint64_t *)(p), __ATOMIC_ACQUIRE)
#define fp_store_release_u64(p, v) __atomic_store_n((uint64_t *)(p), (v), __ATOMIC_RELEASE)
#if defined(__x86_64__)
/*
 * A locked add of zero to the stack orders every earlier load and store before every later one
 * for ordinary (write-back) memory, which is all the rings are, and costs a fraction of an
 * mfence (which also waits for non-temporal and write-combining stores, none of them here):
 * the fence is paid on every burst that decides on a kick. Linux's smp_mb and DPDK's
 * rte_smp_mb do the same. The red zone below the stack pointer keeps it off recent stores.
 */
#define fp_full_fence() __asm__ __volatile__("lock; addl $0,-128(%%rsp)" ::: "memory", "cc")
#else
#define fp_full_fence() __atomic_thread_fence(__ATOMIC_SEQ_CST)
#endif
#define fp_release_fence() __atomic_thread_fence(__ATOMIC_RELEASE)
/* Dirty-log bits: other threads and the front-end set bits in the same bytes. */
#define fp_atomic_or_u8(p, v) __atomic_fetch_or((p), (v), __ATOMIC_RELAXED)
/*
 * vhost-user's inflight region: a back-end may die between any two stores, and the front-end
 * keeps the region for the next one. Each step's last store is a release store, so that what
 * the step wrote before it is in the region first, whatever the compiler would reorder.
 */
#define fp_store_release_u8(p, v) __atomic_store_n((p), (v), __ATOMIC_RELEASE)

/*
 * A guest may rewrite ring memory while we read it. Reading each word exactly once, through an
 * atomic load, stops the compiler from reading a field again after it was validated.
 */
#define fp_read_once_u64(p) __atomic_load_n((const uint64_t *)(p), __ATOMIC_RELAXED)
#define fp_read_once_u16(p) __atomic_load_n((const uint16_t *)(p), __ATOMIC_RELAXED)
#define fp_read_once_u32(p) __atomic_load_n((const uint32_t *)(p), __ATOMIC_RELAXED)

#endif
