/*
 * blkcheck: the guest side of fastpath's vhost-user-blk interoperability test.
 *
 * Runs in the test guest's initramfs (built static by build.py) once the virtio_blk driver has
 * made the disk. Everything goes through the guest's own block layer and virtio-blk driver to
 * the device, never through the page cache (O_DIRECT), so each read is a request the back-end
 * served. Writes fill regions with a pattern that depends only on the disk offset and a seed,
 * so that the host can check the disk's bytes afterwards with the same formula (see
 * pattern_word; tests/integration/test_vhost_blk_qemu.py has its twin):
 *
 *     word k of the disk (bytes 8k to 8k+7, little-endian) =
 *         (k + 1) * 0x9E3779B97F4A7C15 ^ (seed + 1) * 0xC2B2AE3D27D4EB4F   (mod 2^64)
 *
 * It prints one line per check and a last line, and exits 0 when every check passed:
 *     BLKCHECK SIZE OK bytes=67108864
 *     BLKCHECK ZEROS FAIL off=1052672 reason=not-zero
 *     BLKCHECK DONE ok=8 failed=1
 * A writable disk (the default) gets: SIZE (BLKGETSIZE64 is -s), RO (BLKROGET is 0), BLOCK
 * (BLKSSZGET is -b, when given), WRITE (each -w region written with the pattern), READ (each
 * read back equal), FLUSH (fsync), DISCARD (BLKDISCARD of each -D region), ZEROOUT (BLKZEROOUT
 * of each -z region), ZEROS (each -z region reads back as zeros, and every written byte outside
 * the -z and -D regions still holds the pattern). A read-only disk (-r) gets: SIZE, RO
 * (BLKROGET is 1), BLOCK, READ (the -w regions already hold the pattern of -S: the host put it
 * there), FLUSH, WRITE_REFUSED (a write of the first -w region fails: EPERM or EROFS from the
 * guest kernel, EIO from the device), DISCARD_REFUSED and ZEROOUT_REFUSED (the same for BLKDISCARD
 * and BLKZEROOUT of the first -D and -z regions; EOPNOTSUPP too), UNCHANGED (the regions read
 * back as before). A failed check says where and why; SIGALRM after -a seconds ends everything
 * with "BLKCHECK ALARM FAIL".
 *
 * Options: -d DEVICE (/dev/vda)  -s BYTES the disk's expected size (required)
 *          -b BYTES its expected logical block size  -r the disk is read-only
 *          -S SEED of the pattern (0)  -a SECONDS hard time limit (60)
 *          -w OFFSET+LENGTH a region to write (several; at least one)
 *          -D OFFSET+LENGTH a region to discard, -z OFFSET+LENGTH one to zero (several of each)
 *          -W BYTES stream mode: SIZE, RO and BLOCK, then STREAM, the pattern written over the first
 *             BYTES of the disk a page at a time, one write after another ("BLKCHECK
 *             STREAMING acked=N" every 256 acknowledged writes, for a host that acts
 *             mid-stream: it kills the back-end); it checks only that every write succeeds,
 *             the host checks the bytes
 * Offsets and lengths are bytes, multiples of the logical block size (O_DIRECT needs that).
 * Read-only (-r) needs a -D and a -z region too.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/fs.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <unistd.h>

#define MAX_REGIONS 32
#define ALIGN 4096

struct region {
    uint64_t offset, length;
};

struct regions {
    int n;
    struct region r[MAX_REGIONS];
};

static const char *device = "/dev/vda";
static uint64_t want_size;
static int want_block;
static int read_only;
static uint64_t seed;
static int alarm_seconds = 60;
static struct regions writes, discards, zeroes;
static uint64_t stream_bytes;
static int passed, failed;

static void on_alarm(int sig)
{
    static const char line[] = "BLKCHECK ALARM FAIL\n";
    (void)sig;
    if (write(STDOUT_FILENO, line, sizeof line - 1) < 0)
        _exit(3);
    _exit(2);
}

static void verdict(const char *check, int ok, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* One check's line: "BLKCHECK CHECK OK|FAIL details". */
static void verdict(const char *check, int ok, const char *fmt, ...)
{
    char details[256];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(details, sizeof details, fmt, ap);
    va_end(ap);
    printf("BLKCHECK %s %s%s%s\n", check, ok ? "OK" : "FAIL", details[0] ? " " : "", details);
    if (ok)
        passed++;
    else
        failed++;
}

static uint64_t pattern_word(uint64_t k)
{
    return (k + 1) * 0x9E3779B97F4A7C15ull ^ (seed + 1) * 0xC2B2AE3D27D4EB4Full;
}

/* The pattern of disk bytes [offset, offset + length), offset a multiple of 8, into buf. */
static void fill_pattern(unsigned char *buf, uint64_t offset, uint64_t length)
{
    for (uint64_t at = 0; at < length; at += 8) {
        uint64_t w = pattern_word((offset + at) / 8);
        for (int b = 0; b < 8; b++)
            buf[at + b] = (unsigned char)(w >> (8 * b));
    }
}

static int inside(const struct regions *set, uint64_t offset)
{
    for (int k = 0; k < set->n; k++)
        if (offset >= set->r[k].offset && offset < set->r[k].offset + set->r[k].length)
            return 1;
    return 0;
}

static unsigned char *buffer(uint64_t length)
{
    void *p;
    if (posix_memalign(&p, ALIGN, length ? length : ALIGN) != 0) {
        printf("BLKCHECK MEMORY FAIL bytes=%llu\n", (unsigned long long)length);
        exit(1);
    }
    return p;
}

/* The whole region, or -1 with errno (EIO for a short transfer). */
static int transfer(int fd, unsigned char *buf, const struct region *r, int writing)
{
    uint64_t done = 0;
    while (done < r->length) {
        ssize_t n = writing ? pwrite(fd, buf + done, r->length - done, r->offset + done)
                            : pread(fd, buf + done, r->length - done, r->offset + done);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0) {
            if (n == 0)
                errno = EIO;
            return -1;
        }
        done += n;
    }
    return 0;
}

/*
 * Read every -w region back and compare it with what the disk should hold: the pattern, or
 * zeros inside a -z region when `zeroed`; bytes inside a -D region are not compared when
 * `skip_discarded` (after a discard the device may return anything, virtio 1.2 §5.2.6.2).
 * Returns 1 when all match, else 0 with the first difference described in `why`.
 */
static int compare_regions(int fd, int zeroed, int skip_discarded, char *why, size_t why_size)
{
    for (int k = 0; k < writes.n; k++) {
        const struct region *r = &writes.r[k];
        unsigned char *got = buffer(r->length), *want = buffer(r->length);
        int ok = transfer(fd, got, r, 0) == 0;
        if (!ok)
            snprintf(why, why_size, "off=%llu len=%llu reason=read:%s",
                     (unsigned long long)r->offset, (unsigned long long)r->length,
                     strerror(errno));
        fill_pattern(want, r->offset, r->length);
        for (uint64_t at = 0; ok && at < r->length; at += 512) {
            uint64_t offset = r->offset + at;
            if (skip_discarded && inside(&discards, offset))
                continue;
            int zero = zeroed && inside(&zeroes, offset);
            uint64_t piece = r->length - at < 512 ? r->length - at : 512;
            for (uint64_t b = 0; b < piece; b++) {
                unsigned char expected = zero ? 0 : want[at + b];
                if (got[at + b] != expected) {
                    snprintf(why, why_size, "off=%llu got=0x%02x want=0x%02x reason=%s",
                             (unsigned long long)(offset + b), got[at + b], expected,
                             zero ? "not-zero" : "not-pattern");
                    ok = 0;
                    break;
                }
            }
        }
        free(got);
        free(want);
        if (!ok)
            return 0;
    }
    return 1;
}

/* BLKDISCARD or BLKZEROOUT of each region; returns 0, or -1 with errno and the region in why. */
static int range_ioctl(int fd, unsigned long request, const struct regions *set, int count,
                       char *why, size_t why_size)
{
    for (int k = 0; k < count; k++) {
        uint64_t range[2] = {set->r[k].offset, set->r[k].length};
        if (ioctl(fd, request, range) < 0) {
            int saved = errno;
            snprintf(why, why_size, "off=%llu len=%llu errno=%s",
                     (unsigned long long)range[0], (unsigned long long)range[1],
                     strerror(saved));
            errno = saved;
            return -1;
        }
    }
    return 0;
}

static int summed(const struct regions *set)
{
    uint64_t bytes = 0;
    for (int k = 0; k < set->n; k++)
        bytes += set->r[k].length;
    return (int)(bytes >> 10);
}

static void check_flush(int fd)
{
    int ok = fsync(fd) == 0;
    verdict("FLUSH", ok, "%s", ok ? "" : strerror(errno));
}

static void check_writable(int fd)
{
    char why[192] = "";
    int ok = 1;
    for (int k = 0; ok && k < writes.n; k++) {
        unsigned char *buf = buffer(writes.r[k].length);
        fill_pattern(buf, writes.r[k].offset, writes.r[k].length);
        if (transfer(fd, buf, &writes.r[k], 1) < 0) {
            snprintf(why, sizeof why, "off=%llu len=%llu reason=write:%s",
                     (unsigned long long)writes.r[k].offset,
                     (unsigned long long)writes.r[k].length, strerror(errno));
            ok = 0;
        }
        free(buf);
    }
    verdict("WRITE", ok, "regions=%d kib=%d %s", writes.n, summed(&writes), why);

    why[0] = 0;
    ok = compare_regions(fd, 0, 0, why, sizeof why);
    verdict("READ", ok, "%s", why);
    check_flush(fd);

    why[0] = 0;
    ok = range_ioctl(fd, BLKDISCARD, &discards, discards.n, why, sizeof why) == 0;
    verdict("DISCARD", ok, "regions=%d kib=%d %s", discards.n, summed(&discards), why);
    why[0] = 0;
    ok = range_ioctl(fd, BLKZEROOUT, &zeroes, zeroes.n, why, sizeof why) == 0;
    verdict("ZEROOUT", ok, "regions=%d kib=%d %s", zeroes.n, summed(&zeroes), why);
    why[0] = 0;
    ok = compare_regions(fd, 1, 1, why, sizeof why);
    verdict("ZEROS", ok, "%s", why);
}

/* A refusal a read-only disk may give: the guest kernel's own (EPERM, EROFS), the device's
 * (EIO: VIRTIO_BLK_S_IOERR), or no such operation on the disk at all (EOPNOTSUPP). */
static int refused(int error)
{
    return error == EPERM || error == EROFS || error == EIO || error == EOPNOTSUPP;
}

/* `why` says where it failed and why, or is empty: then the errno says it. */
static void check_refused(const char *check, int result, int error, const char *why)
{
    if (result == 0)
        verdict(check, 0, "reason=succeeded");
    else if (why[0])
        verdict(check, refused(error), "%s", why);
    else
        verdict(check, refused(error), "errno=%s", strerror(error));
}

static void check_read_only(int fd)
{
    char why[192] = "";
    int ok = compare_regions(fd, 0, 0, why, sizeof why);
    verdict("READ", ok, "%s", why);
    check_flush(fd);

    unsigned char *buf = buffer(writes.r[0].length);
    memset(buf, 0xA5, writes.r[0].length); /* not the pattern: UNCHANGED would see it land */
    int result = transfer(fd, buf, &writes.r[0], 1);
    check_refused("WRITE_REFUSED", result, errno, "");
    free(buf);

    why[0] = 0;
    result = range_ioctl(fd, BLKDISCARD, &discards, 1, why, sizeof why);
    check_refused("DISCARD_REFUSED", result, errno, why);
    why[0] = 0;
    result = range_ioctl(fd, BLKZEROOUT, &zeroes, 1, why, sizeof why);
    check_refused("ZEROOUT_REFUSED", result, errno, why);

    why[0] = 0;
    ok = compare_regions(fd, 0, 0, why, sizeof why);
    verdict("UNCHANGED", ok, "%s", why);
}

/* Write after write, each acknowledged before the next: every page the guest was told was
 * written must be on the disk, whatever happened to the back-end meanwhile. */
static void check_stream(int fd)
{
    static unsigned char buf[ALIGN] __attribute__((aligned(ALIGN)));
    uint64_t acked = 0;
    const char *why = "";
    for (uint64_t at = 0; at < stream_bytes; at += ALIGN) {
        fill_pattern(buf, at, ALIGN);
        if (pwrite(fd, buf, ALIGN, (off_t)at) != ALIGN) {
            why = strerror(errno);
            break;
        }
        if (++acked % 256 == 0)
            printf("BLKCHECK STREAMING acked=%llu\n", (unsigned long long)acked);
    }
    verdict("STREAM", acked * ALIGN >= stream_bytes, "acked=%llu%s%s",
            (unsigned long long)acked, why[0] ? " error=" : "", why);
}

static void usage(void)
{
    fprintf(stderr, "usage: blkcheck -s BYTES [-d DEVICE] [-b BYTES] [-r] [-S SEED] "
                    "[-a SECONDS] (-W BYTES | -w OFF+LEN... [-D OFF+LEN]... [-z OFF+LEN]...)\n");
    exit(64);
}

static void add_region(struct regions *set, const char *text)
{
    char *end;
    unsigned long long offset = strtoull(text, &end, 0), length;
    if (*end != '+' || set->n == MAX_REGIONS)
        usage();
    length = strtoull(end + 1, &end, 0);
    if (*end || length == 0)
        usage();
    set->r[set->n++] = (struct region){offset, length};
}

int main(int argc, char **argv)
{
    int opt;
    while ((opt = getopt(argc, argv, "d:s:b:rS:a:w:D:z:W:")) != -1) {
        switch (opt) {
        case 'd': device = optarg; break;
        case 's': want_size = strtoull(optarg, NULL, 0); break;
        case 'b': want_block = atoi(optarg); break;
        case 'r': read_only = 1; break;
        case 'S': seed = strtoull(optarg, NULL, 0); break;
        case 'a': alarm_seconds = atoi(optarg); break;
        case 'w': add_region(&writes, optarg); break;
        case 'D': add_region(&discards, optarg); break;
        case 'z': add_region(&zeroes, optarg); break;
        case 'W': stream_bytes = strtoull(optarg, NULL, 0); break;
        default: usage();
        }
    }
    /* A read-only disk is checked with the first region of each kind. */
    if (want_size == 0 || (writes.n == 0) == (stream_bytes == 0) || alarm_seconds <= 0
        || stream_bytes % ALIGN || stream_bytes > want_size
        || (read_only && (stream_bytes || discards.n == 0 || zeroes.n == 0)))
        usage();
    setvbuf(stdout, NULL, _IOLBF, 0);
    signal(SIGALRM, on_alarm);
    alarm((unsigned)alarm_seconds);

    /* Opening a read-only disk for writing is allowed (Linux 6.1 refuses the writes, not the
     * open); a kernel that refuses it gets the checks that can run read-only. */
    int fd = open(device, O_RDWR | O_DIRECT);
    if (fd < 0 && read_only && (errno == EROFS || errno == EACCES))
        fd = open(device, O_RDONLY | O_DIRECT);
    if (fd < 0) {
        verdict("OPEN", 0, "device=%s errno=%s", device, strerror(errno));
        printf("BLKCHECK DONE ok=%d failed=%d\n", passed, failed);
        return 1;
    }
    printf("BLKCHECK START device=%s seed=%llu read_only=%d\n", device,
           (unsigned long long)seed, read_only);

    uint64_t size = 0;
    int ro = -1, block = 0;
    int ok = ioctl(fd, BLKGETSIZE64, &size) == 0 && size == want_size;
    verdict("SIZE", ok, "bytes=%llu want=%llu", (unsigned long long)size,
            (unsigned long long)want_size);
    ok = ioctl(fd, BLKROGET, &ro) == 0 && ro == read_only;
    verdict("RO", ok, "ro=%d want=%d", ro, read_only);
    if (want_block) {
        ok = ioctl(fd, BLKSSZGET, &block) == 0 && block == want_block;
        verdict("BLOCK", ok, "bytes=%d want=%d", block, want_block);
    }
    if (stream_bytes)
        check_stream(fd);
    else if (read_only)
        check_read_only(fd);
    else
        check_writable(fd);
    close(fd);
    printf("BLKCHECK DONE ok=%d failed=%d\n", passed, failed);
    return failed ? 1 : 0;
}
