/* The floor of the SDK bench: how long CPython itself takes, on this machine, from a wake-up by
 * another process to a line of Python code running, against native code woken the same way.
 * No edgeplex: a writer process sends its CLOCK_REALTIME through a FIFO every PERIOD_US, after
 * filling FILL_BYTES of memory (as a frame writer would); the reader takes the time when the
 * read returns. `python/bench/latency.py` builds this with cc and runs it as the writer and as
 * the native reader; the Python reader is os.read() in latency.py.
 *
 *   floor write FIFO COUNT PERIOD_US FILL_BYTES
 *   floor read FIFO COUNT          (prints {"p50_us": ...})
 */
#include <fcntl.h>
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

int main(int argc, char **argv) {
    if (argc >= 4 && strcmp(argv[1], "write") == 0 && argc == 6) {
        int fd = open(argv[2], O_WRONLY);
        long count = atol(argv[3]), period_us = atol(argv[4]);
        size_t fill = (size_t)atol(argv[5]);
        char *buf = malloc(fill ? fill : 1);
        if (fd < 0 || !buf || count <= 0 || period_us <= 0) {
            fprintf(stderr, "floor write: bad arguments or FIFO\n");
            return 64;
        }
        for (long i = 0; i < count; i++) {
            memset(buf, (int)i, fill);
            uint64_t now = realtime_ns();
            if (write(fd, &now, sizeof now) != sizeof now)
                return 0; /* the reader is gone */
            struct timespec s = {period_us / 1000000, (period_us % 1000000) * 1000};
            nanosleep(&s, NULL);
        }
        return 0;
    }
    if (argc == 4 && strcmp(argv[1], "read") == 0) {
        int fd = open(argv[2], O_RDONLY);
        long count = atol(argv[3]);
        uint64_t *lat = calloc(count > 0 ? (size_t)count : 1, sizeof *lat);
        if (fd < 0 || !lat || count <= 0) {
            fprintf(stderr, "floor read: bad arguments or FIFO\n");
            return 64;
        }
        long n = 0;
        uint64_t sent;
        while (n < count && read(fd, &sent, sizeof sent) == sizeof sent)
            lat[n++] = realtime_ns() - sent;
        qsort(lat, (size_t)n, sizeof *lat, by_value);
        printf("{\"frames\":%ld,\"p50_us\":%.1f}\n", n, n ? lat[(n - 1) / 2] / 1e3 : 0.0);
        return 0;
    }
    fprintf(stderr, "usage: floor write FIFO COUNT PERIOD_US FILL_BYTES | floor read FIFO COUNT\n");
    return 64;
}
