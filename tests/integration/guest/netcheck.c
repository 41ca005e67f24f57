/*
 * netcheck: the guest side of fastpath's QEMU interoperability test.
 *
 * Runs in the test guest's initramfs (built static by build.py) once the virtio-net driver is
 * loaded and the interface is up. It opens an AF_PACKET raw socket on the interface, sends
 * numbered frames of an experimental ethertype (0x88b5) with sizes from 60 to 1514 bytes and a
 * pattern that depends on the round, the sequence number and the offset, addressed to the
 * guest's own MAC from 02:4e:43:48:4b:01, and checks that every frame comes back byte for byte
 * (the back-end runs `fastpath vhost-net --fwd io`, which puts each frame the guest transmits
 * back into the guest's receive queue; a back-end that swaps MACs fails the check). Frames the
 * socket sees going out (PACKET_OUTGOING) are ignored.
 *
 * One run (default) prints one line and exits 0 or 1:
 *     NETCHECK OK sent=200 received=200 ...
 *     NETCHECK FAIL sent=200 received=12 missing=188 ... reason=timeout
 * (link_down counts the 100 ms waits of a round during which the interface had no carrier.)
 * With -d SECONDS it runs rounds of -n frames until SECONDS have passed and prints a line per
 * round and a last line:
 *     NETCHECK ROUND 7 OK sent=100 received=100 ...
 *     NETCHECK ROUND 8 FAIL sent=100 received=40 missing=60 ... reason=timeout
 *     NETCHECK DONE rounds=30 ok=28 failed=2
 * Frames of an earlier round that arrive late are counted as stale and do not fail a round;
 * frames that arrive twice are counted as duplicates and do not fail it either (a back-end that
 * restarts may legitimately see a transmit buffer again). A frame of the current round whose
 * length or bytes differ fails it. SIGALRM after the whole time limit ends everything with
 * "NETCHECK FAIL reason=alarm".
 *
 * Options: -i IFACE (eth0)  -n FRAMES per round (200)  -w WINDOW frames in flight (32)
 *          -t SECONDS a round may take (20)  -d SECONDS of rounds (0: a single run)
 *          -g MILLISECONDS between rounds (200)  -a SECONDS hard time limit (-d + -t + 30)
 *          -r ROUND the number of the first round (0), so that runs one after the other
 *             (on each CPU, say) tell each other's late frames from their own
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <linux/if_packet.h>
#include <net/ethernet.h>
#include <net/if.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define ETHERTYPE_NETCHECK 0x88b5
#define MIN_FRAME 60
#define MAX_FRAME 1514
#define HEADER 28 /* dst, src, type, "NCHK", round, seq, length */
#define MAX_FRAMES 65536

static const char *iface = "eth0";
static int frames = 200;
static int window = 32;
static double round_seconds = 20.0;
static double duration = 0.0;
static int gap_ms = 200;
static int alarm_seconds = 0;
static int first_round = 0;

static unsigned char mac[6];
/* The source address: not ours, so that a back-end that swaps or rewrites MACs is caught. */
static const unsigned char peer_mac[6] = {0x02, 'N', 'C', 'H', 'K', 0x01};
static unsigned char *seen;

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static void on_alarm(int sig)
{
    static const char line[] = "NETCHECK FAIL reason=alarm\n";
    (void)sig;
    if (write(STDOUT_FILENO, line, sizeof line - 1) < 0)
        _exit(3);
    _exit(2);
}

static int frame_size(uint32_t round, uint32_t seq)
{
    if (seq == 0)
        return MIN_FRAME;
    if (seq == 1)
        return MAX_FRAME;
    return MIN_FRAME + (int)((seq * 1021u + round * 13u) % (MAX_FRAME - MIN_FRAME + 1));
}

static void put32(unsigned char *p, uint32_t v)
{
    p[0] = v >> 24;
    p[1] = v >> 16;
    p[2] = v >> 8;
    p[3] = v;
}

static uint32_t get32(const unsigned char *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

/* The frame `seq` of `round`, into buf; returns its length. */
static int make_frame(unsigned char *buf, uint32_t round, uint32_t seq)
{
    int len = frame_size(round, seq);
    memcpy(buf, mac, 6);     /* to ourselves: it comes back as PACKET_HOST */
    memcpy(buf + 6, peer_mac, 6);
    buf[12] = ETHERTYPE_NETCHECK >> 8;
    buf[13] = ETHERTYPE_NETCHECK & 0xff;
    memcpy(buf + 14, "NCHK", 4);
    put32(buf + 18, round);
    put32(buf + 22, seq);
    buf[26] = len >> 8;
    buf[27] = len & 0xff;
    for (int i = HEADER; i < len; i++)
        buf[i] = (unsigned char)(seq * 31u + round * 7u + (unsigned)i);
    return len;
}

/* 1 while the interface has carrier (the device reports link up), 0 without, -1 unknown. */
static int carrier(void)
{
    char path[96], c = '?';
    snprintf(path, sizeof path, "/sys/class/net/%s/carrier", iface);
    FILE *f = fopen(path, "r");
    if (f == NULL)
        return -1;
    if (fread(&c, 1, 1, f) != 1)
        c = '?';
    fclose(f);
    return c == '1' ? 1 : c == '0' ? 0 : -1;
}

struct result {
    int sent, received, corrupt, duplicate, stale, foreign, send_errors;
    int link_down; /* idle waits of the round during which the interface had no carrier */
    double seconds;
    const char *reason;
    char detail[160];
};

static void print_result(const char *prefix, const struct result *r, int ok)
{
    printf("%s%s sent=%d received=%d missing=%d corrupt=%d duplicate=%d stale=%d foreign=%d "
           "send_errors=%d link_down=%d ms=%d%s%s%s%s\n",
           prefix, ok ? "OK" : "FAIL", r->sent, r->received, frames - r->received, r->corrupt,
           r->duplicate, r->stale, r->foreign, r->send_errors, r->link_down,
           (int)(r->seconds * 1000),
           r->reason ? " reason=" : "", r->reason ? r->reason : "",
           r->detail[0] ? " " : "", r->detail);
    fflush(stdout);
}

/* Check one received frame against what `round` sent; updates r. */
static void check_frame(const unsigned char *got, int len, uint32_t round, struct result *r)
{
    static unsigned char want[MAX_FRAME];
    if (len < HEADER || memcmp(got + 14, "NCHK", 4) != 0) {
        r->foreign++;
        return;
    }
    uint32_t got_round = get32(got + 18), seq = get32(got + 22);
    if (got_round != round) {
        r->stale++;
        return;
    }
    if (seq >= (uint32_t)frames) {
        r->corrupt++;
        if (!r->detail[0])
            snprintf(r->detail, sizeof r->detail, "first_bad=seq:%u", seq);
        return;
    }
    int want_len = make_frame(want, round, seq);
    if (len != want_len || memcmp(got, want, len) != 0) {
        r->corrupt++;
        if (!r->detail[0]) {
            int at = 0;
            while (at < len && at < want_len && got[at] == want[at])
                at++;
            snprintf(r->detail, sizeof r->detail, "first_bad=seq:%u,len:%d,want_len:%d,at:%d",
                     seq, len, want_len, at);
        }
        return;
    }
    if (seen[seq]) {
        r->duplicate++;
        return;
    }
    seen[seq] = 1;
    r->received++;
}

/* One round: send `frames` frames with at most `window` in flight, wait for them all. */
static int run_round(int fd, int ifindex, uint32_t round, struct result *r)
{
    static unsigned char buf[MAX_FRAME], in[2048];
    struct sockaddr_ll to = {
        .sll_family = AF_PACKET,
        .sll_protocol = htons(ETHERTYPE_NETCHECK),
        .sll_ifindex = ifindex,
        .sll_halen = 6,
    };
    memcpy(to.sll_addr, mac, 6);
    memset(r, 0, sizeof *r);
    memset(seen, 0, frames);
    double start = now(), deadline = start + round_seconds;
    int slack = 0; /* extra sends allowed after an idle wait: a lost frame must not stall us */

    while (r->received < frames) {
        double left = deadline - now();
        if (left <= 0) {
            r->reason = "timeout";
            break;
        }
        int in_flight = r->sent - r->received - r->corrupt;
        if (r->sent < frames && in_flight < window + slack) {
            int len = make_frame(buf, round, r->sent);
            if (sendto(fd, buf, len, 0, (struct sockaddr *)&to, sizeof to) == len) {
                r->sent++;
                continue;
            }
            r->send_errors++; /* ENOBUFS and the like: wait a little, then try again */
        }
        struct pollfd p = {.fd = fd, .events = POLLIN};
        int wait_ms = left < 0.1 ? (int)(left * 1000) + 1 : 100;
        int n = poll(&p, 1, wait_ms);
        if (n < 0 && errno != EINTR) {
            r->reason = "poll";
            break;
        }
        if (n == 0) {
            slack += window;
            r->link_down += carrier() == 0;
            continue;
        }
        for (;;) {
            struct sockaddr_ll from;
            socklen_t fromlen = sizeof from;
            ssize_t got = recvfrom(fd, in, sizeof in, MSG_DONTWAIT, (struct sockaddr *)&from,
                                   &fromlen);
            if (got < 0)
                break;
            if (from.sll_pkttype == PACKET_OUTGOING)
                continue;
            check_frame(in, (int)got, round, r);
        }
    }
    r->seconds = now() - start;
    if (r->corrupt && !r->reason)
        r->reason = "corrupt";
    return r->received == frames && r->corrupt == 0;
}

static void usage(void)
{
    fprintf(stderr, "usage: netcheck [-i IFACE] [-n FRAMES] [-w WINDOW] [-t SECONDS] "
                    "[-d SECONDS] [-g MS] [-a SECONDS] [-r ROUND]\n");
    exit(64);
}

int main(int argc, char **argv)
{
    int opt;
    while ((opt = getopt(argc, argv, "i:n:w:t:d:g:a:r:")) != -1) {
        switch (opt) {
        case 'i': iface = optarg; break;
        case 'n': frames = atoi(optarg); break;
        case 'w': window = atoi(optarg); break;
        case 't': round_seconds = atof(optarg); break;
        case 'd': duration = atof(optarg); break;
        case 'g': gap_ms = atoi(optarg); break;
        case 'a': alarm_seconds = atoi(optarg); break;
        case 'r': first_round = atoi(optarg); break;
        default: usage();
        }
    }
    if (frames < 2 || frames > MAX_FRAMES || window < 1 || round_seconds <= 0 || first_round < 0)
        usage();
    setvbuf(stdout, NULL, _IOLBF, 0);
    signal(SIGALRM, on_alarm);
    alarm(alarm_seconds > 0 ? (unsigned)alarm_seconds : (unsigned)(duration + round_seconds + 30));
    seen = calloc(frames, 1);

    int fd = socket(AF_PACKET, SOCK_RAW, htons(ETHERTYPE_NETCHECK));
    if (fd < 0) {
        printf("NETCHECK FAIL reason=socket:%s\n", strerror(errno));
        return 1;
    }
    struct ifreq ifr;
    memset(&ifr, 0, sizeof ifr);
    snprintf(ifr.ifr_name, sizeof ifr.ifr_name, "%s", iface);
    if (ioctl(fd, SIOCGIFINDEX, &ifr) < 0) {
        printf("NETCHECK FAIL reason=no-interface:%s:%s\n", iface, strerror(errno));
        return 1;
    }
    int ifindex = ifr.ifr_ifindex;
    if (ioctl(fd, SIOCGIFHWADDR, &ifr) < 0) {
        printf("NETCHECK FAIL reason=no-mac:%s\n", strerror(errno));
        return 1;
    }
    memcpy(mac, ifr.ifr_hwaddr.sa_data, 6);
    struct sockaddr_ll bind_to = {
        .sll_family = AF_PACKET,
        .sll_protocol = htons(ETHERTYPE_NETCHECK),
        .sll_ifindex = ifindex,
    };
    if (bind(fd, (struct sockaddr *)&bind_to, sizeof bind_to) < 0) {
        printf("NETCHECK FAIL reason=bind:%s\n", strerror(errno));
        return 1;
    }
    int one = 1, rcvbuf = 4 << 20;
    setsockopt(fd, SOL_PACKET, PACKET_IGNORE_OUTGOING, &one, sizeof one);
    if (setsockopt(fd, SOL_SOCKET, SO_RCVBUFFORCE, &rcvbuf, sizeof rcvbuf) < 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &rcvbuf, sizeof rcvbuf);
    printf("NETCHECK START iface=%s mac=%02x:%02x:%02x:%02x:%02x:%02x frames=%d window=%d "
           "rounds=%s\n", iface, mac[0], mac[1], mac[2], mac[3], mac[4], mac[5], frames, window,
           duration > 0 ? "timed" : "one");

    struct result r;
    if (duration <= 0) {
        int ok = run_round(fd, ifindex, first_round, &r);
        print_result("NETCHECK ", &r, ok);
        return ok ? 0 : 1;
    }
    double end = now() + duration;
    int rounds = first_round, passed = 0;
    char prefix[48];
    while (now() < end) {
        int ok = run_round(fd, ifindex, rounds, &r);
        snprintf(prefix, sizeof prefix, "NETCHECK ROUND %d ", rounds);
        print_result(prefix, &r, ok);
        rounds++;
        passed += ok;
        usleep(gap_ms * 1000);
    }
    rounds -= first_round;
    printf("NETCHECK DONE rounds=%d ok=%d failed=%d\n", rounds, passed, rounds - passed);
    return passed == rounds ? 0 : 1;
}
