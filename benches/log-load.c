/* The durable log's kernel and disk work without evchat (BENCHMARKS.md,
 * "`everysec` at 1:1: the kernel's share measured alone"): writes RATE
 * bytes a second to segment files in DIR, in CHUNK-byte writes as the
 * event loop writes a turn's records, for SECONDS; each 64 MiB segment's
 * blocks reserved first (fallocate KEEP_SIZE), the oldest deleted past
 * eight, and one fdatasync a second from a second thread, as `--fsync
 * everysec` does. Run beside a server without history, on its core, it
 * charges that core what the log's bytes cost the kernel and the host,
 * with none of the history's own instructions: the server's rate then is
 * the most `everysec` could reach at that many bytes a second.
 *
 *   cc -O2 -o /tmp/log-load benches/log-load.c -lpthread
 *   taskset -c 0 /tmp/log-load DIR RATE CHUNK SECONDS
 *
 * Writes are paced every 2 ms (the bytes due since the start), so the
 * process sleeps between bursts; it prints the bytes written and its own
 * CPU seconds (both threads).
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#define SEGMENT (64L << 20)
#define KEEP 8

static atomic_int current_fd = -1;
static atomic_int done;

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

static void *sync_every_second(void *arg) {
    (void)arg;
    while (!atomic_load(&done)) {
        sleep(1);
        int fd = atomic_load(&current_fd);
        if (fd >= 0 && fdatasync(fd)) perror("fdatasync");
    }
    return NULL;
}

static int open_segment(const char *dir, long n) {
    char path[4096];
    snprintf(path, sizeof path, "%s/%020ld.seg", dir, n);
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_APPEND, 0644);
    if (fd < 0) { perror(path); exit(1); }
    if (fallocate(fd, FALLOC_FL_KEEP_SIZE, 0, SEGMENT)) perror("fallocate");
    if (n >= KEEP) {
        snprintf(path, sizeof path, "%s/%020ld.seg", dir, n - KEEP);
        unlink(path);
    }
    return fd;
}

int main(int argc, char **argv) {
    if (argc != 5) {
        fprintf(stderr, "usage: %s DIR RATE CHUNK SECONDS\n", argv[0]);
        return 2;
    }
    const char *dir = argv[1];
    double rate = atof(argv[2]), seconds = atof(argv[4]);
    long chunk = atol(argv[3]);
    char *buf = malloc(chunk);
    memset(buf, 'x', chunk);
    long segment = 0, in_segment = 0, written = 0;
    int previous = -1; /* closed a roll later: the sync thread may hold it */
    atomic_store(&current_fd, open_segment(dir, segment));
    pthread_t syncer;
    pthread_create(&syncer, NULL, sync_every_second, NULL);
    double start = now();
    struct timespec tick = {0, 2000000};
    for (;;) {
        double t = now() - start;
        if (t >= seconds) break;
        long due = (long)(t * rate);
        while (written + chunk <= due) {
            if (in_segment + chunk > SEGMENT) {
                if (previous >= 0) close(previous);
                previous = atomic_exchange(&current_fd, open_segment(dir, ++segment));
                in_segment = 0;
            }
            if (write(atomic_load(&current_fd), buf, chunk) != chunk) { perror("write"); return 1; }
            written += chunk;
            in_segment += chunk;
        }
        nanosleep(&tick, NULL);
    }
    atomic_store(&done, 1);
    pthread_join(syncer, NULL);
    struct rusage r;
    getrusage(RUSAGE_SELF, &r);
    double cpu = r.ru_utime.tv_sec + r.ru_utime.tv_usec * 1e-6 + r.ru_stime.tv_sec +
                 r.ru_stime.tv_usec * 1e-6;
    printf("log-load: %ld bytes in %.2f s (%.1f MB/s), %ld-byte writes, cpu %.3f s\n", written,
           now() - start, written / (now() - start) / 1e6, chunk, cpu);
    return 0;
}
