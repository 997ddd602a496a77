/* The floor of the SDK bench: how long CPython itself takes, on this machine, from a wake-up by
 * another process to a line of Python code running, against native code woken the same way.
 * No edgeplex: a writer process sends its CLOCK_REALTIME through a FIFO every PERIOD_US, after
 * filling FILL_BYTES of memory (as a frame writer would); the reader takes the time when the
 * read returns. `python/bench/latency.py` builds this with cc and runs it as the writer and as
 * the native reader; the Python reader is os.read() in latency.py.
 *
 *   floor write FIFO COUNT PERIOD_US FILL_BYTES
 *   floor read FIFO COUNT          (prints {"p50_us": ...})
 *   floor cold KIB SLEEP_US        (prints {"warm_ns_per_line": ..., "idle_ns_per_line": ...})
 *
 * `cold` is why: it walks a KIB working set as a chain of dependent loads (as an interpreter's
 * pointer chasing does), once right after the previous walk and once after sleeping SLEEP_US,
 * and prints the median cost per 64-byte line of each. An idle CPU that comes back with cold
 * caches makes every line touched between a wake-up and the frame in hand cost latency.
 */
#include <fcntl.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static uint64_t realtime_ns(void) {
    struct timespec t;
    clock_gettime(CLOCK_REALTIME, &t);
    return (uint64_t)t.tv_sec * 1000000000u + (uint64_t)t.tv_nsec;
}

static int by_value(const void *a, const void *b) {
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return (x > y) - (x < y);
}

static uint64_t monotonic_ns(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (uint64_t)t.tv_sec * 1000000000u + (uint64_t)t.tv_nsec;
}

static void **volatile sink;

/* Median ns per line of walking `lines` lines linked in a random cycle, after sleeping sleep_us
 * before each of 31 walks (0: no sleep, the caches stay warm). */
static double walk(void **chain, size_t lines, long sleep_us) {
    enum { RUNS = 31 };
    uint64_t t[RUNS];
    void **p = chain;
    for (int r = 0; r < RUNS; r++) {
        if (sleep_us > 0) {
            struct timespec s = {sleep_us / 1000000, (sleep_us % 1000000) * 1000};
            nanosleep(&s, NULL);
        }
        uint64_t a = monotonic_ns();
        for (size_t i = 0; i < lines; i++)
            p = (void **)*p;
        t[r] = monotonic_ns() - a;
    }
    qsort(t, RUNS, sizeof t[0], by_value);
    sink = p; /* keeps the walk */
    return (double)t[RUNS / 2] / (double)lines;
}

static int cold(long kib, long sleep_us) {
    if (kib < 1 || kib > 1048576 || sleep_us < 1) {
        fprintf(stderr, "floor cold: KIB from 1 to 1048576 and SLEEP_US >= 1\n");
        return 64;
    }
    size_t lines = (size_t)kib * 1024 / 64;
    void **mem = aligned_alloc(64, lines * 64);
    size_t *order = malloc(lines * sizeof *order);
    if (!mem || !order) {
        fprintf(stderr, "floor cold: out of memory\n");
        return 70;
    }
    for (size_t i = 0; i < lines; i++)
        order[i] = i;
    srand(1);
    for (size_t i = lines - 1; i > 0; i--) {
        size_t j = (size_t)rand() % (i + 1), x = order[i];
        order[i] = order[j];
        order[j] = x;
    }
    for (size_t i = 0; i < lines; i++)
        mem[order[i] * 8] = &mem[order[(i + 1) % lines] * 8];
    double warm = walk(mem, lines, 0), idle = walk(mem, lines, sleep_us);
    printf("{\"kib\":%ld,\"sleep_us\":%ld,\"warm_ns_per_line\":%.1f,\"idle_ns_per_line\":%.1f}\n",
           kib, sleep_us, warm, idle);
    free(order);
    free(mem);
    return 0;
}

int main(int argc, char **argv) {
    if (argc == 6 && strcmp(argv[1], "write") == 0) {
        long count = atol(argv[3]), period_us = atol(argv[4]), fill = atol(argv[5]);
        if (count <= 0 || period_us <= 0 || fill < 1 || fill > (1L << 30)) {
            fprintf(stderr, "floor write: COUNT and PERIOD_US >= 1, FILL_BYTES from 1 to 2^30\n");
            return 64;
        }
        volatile char *buf = malloc((size_t)fill);
        int fd = open(argv[2], O_WRONLY); /* blocks until the reader opens it */
        if (fd < 0 || !buf) {
            fprintf(stderr, "floor write: cannot open %s or allocate\n", argv[2]);
            return 66;
        }
        signal(SIGPIPE, SIG_IGN); /* a reader gone early ends the run (EPIPE), not a signal */
        for (long i = 0; i < count; i++) {
            /* The frame: a byte into each 64-byte line, through a volatile pointer so that no
             * compiler drops it (a memset of memory never read may be dropped). */
            for (long b = 0; b < fill; b += 64)
                buf[b] = (char)i;
            uint64_t now = realtime_ns();
            if (write(fd, &now, sizeof now) != sizeof now)
                return 0; /* the reader is gone */
            struct timespec s = {period_us / 1000000, (period_us % 1000000) * 1000};
            nanosleep(&s, NULL);
        }
        return 0;
    }
    if (argc == 4 && strcmp(argv[1], "read") == 0) {
        long count = atol(argv[3]);
        if (count <= 0 || count > 10000000) {
            fprintf(stderr, "floor read: COUNT from 1 to 10^7\n");
            return 64;
        }
        uint64_t *lat = calloc((size_t)count, sizeof *lat);
        int fd = open(argv[2], O_RDONLY); /* blocks until the writer opens it */
        if (fd < 0 || !lat) {
            fprintf(stderr, "floor read: cannot open %s or allocate\n", argv[2]);
            return 66;
        }
        long n = 0;
        uint64_t sent;
        while (n < count && read(fd, &sent, sizeof sent) == sizeof sent)
            lat[n++] = realtime_ns() - sent;
        qsort(lat, (size_t)n, sizeof *lat, by_value);
        printf("{\"frames\":%ld,\"p50_us\":%.1f}\n", n, n ? lat[(n - 1) / 2] / 1e3 : 0.0);
        return 0;
    }
    if (argc == 4 && strcmp(argv[1], "cold") == 0)
        return cold(atol(argv[2]), atol(argv[3]));
    fprintf(stderr, "usage: floor write FIFO COUNT PERIOD_US FILL_BYTES | floor read FIFO COUNT"
                    " | floor cold KIB SLEEP_US\n");
    return 64;
}
