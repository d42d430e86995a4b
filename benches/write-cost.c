/* What a log's write() costs the writing thread, by file system and by how
 * the file's blocks were got (BENCHMARKS.md, "Ninth round (log)"): TOTAL
 * bytes written in CHUNK-byte writes to PATH, the way the event loop writes
 * a turn's records, then one fdatasync, as the sync thread does.
 *
 *   cc -O2 -o /tmp/write-cost benches/write-cost.c
 *   /tmp/write-cost PATH TOTAL CHUNK MODE
 *
 * MODE: plain   append to a new file (what evchat did before)
 *       keepsz  fallocate(FALLOC_FL_KEEP_SIZE) the whole file first, then
 *               append (what evchat does now: the length stays as written)
 *       falloc  fallocate the whole file (length TOTAL), then overwrite it
 *       reuse   write the whole file and sync it, then overwrite it (a
 *               recycled segment whose pages are still cached)
 *       mmap    fallocate the whole file, map it MAP_SHARED, memcpy each
 *               chunk into the mapping in turn (no write(); the first
 *               store to each page faults: page_mkwrite)
 *       mmappop mmap with MAP_POPULATE (on a shared mapping it maps the
 *               pages for reading: the first store still faults)
 *       mmapwill mmap, then madvise(MADV_WILLNEED) on the whole file
 *       mmappw  mmap, then madvise(MADV_POPULATE_WRITE) on the whole file
 *               before the clock starts (the write faults paid up front)
 *       mmapahead mmap, and a second thread MADV_POPULATE_WRITEs each
 *               1 MiB ahead of the writer (the faults paid off its thread)
 *       split   keepsz, each chunk written as two writes split at the next
 *               page boundary, so the second starts page-aligned
 *       sfr     keepsz, and a second thread starts writeback of each 16 MiB
 *               written (sync_file_range SYNC_FILE_RANGE_WRITE): the sync
 *               thread writing back early so that its fdatasync waits less
 *       drop    sfr, and the thread then waits for the 16 MiB before and
 *               drops its pages (POSIX_FADV_DONTNEED), so later writes
 *               reuse pages just freed
 * (BENCHMARKS.md, "`everysec` at 1:1: where the server's extra time goes".)
 * Prints the CPU time (user + system) of the writes and of the fdatasync,
 * both in this thread, and the CPU every other task used meanwhile (the
 * kernel's writeback among them: a hint on a shared machine). Not a Rust
 * bench: it measures the kernel alone.
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <pthread.h>
#include <stdatomic.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <unistd.h>

#ifndef MADV_POPULATE_WRITE
#define MADV_POPULATE_WRITE 23
#endif

static long minor_faults;

static double cpu_seconds(void) {
    struct rusage r;
    getrusage(RUSAGE_THREAD, &r);
    minor_faults = r.ru_minflt;
    return r.ru_utime.tv_sec + r.ru_utime.tv_usec * 1e-6 + r.ru_stime.tv_sec +
           r.ru_stime.tv_usec * 1e-6;
}

/* mmapahead: how far the writer has got, and the helper's own CPU. */
static _Atomic long written_upto;
static char *ahead_map;
static long ahead_total;
static double ahead_cpu;
#define AHEAD (1L << 20)

static void *populate_ahead(void *unused) {
    (void)unused;
    double before = cpu_seconds();
    for (long done = 0; done < ahead_total; done += AHEAD) {
        while (done > atomic_load(&written_upto) + 4 * AHEAD) usleep(50);
        long len = ahead_total - done < AHEAD ? ahead_total - done : AHEAD;
        if (madvise(ahead_map + done, len, MADV_POPULATE_WRITE)) { perror("madvise"); break; }
    }
    ahead_cpu = cpu_seconds() - before;
    return NULL;
}

/* sfr and drop: the second thread, every STEP bytes the writer passes. */
#define STEP (16L << 20)
static _Atomic int writer_done;
static int helper_fd, helper_drops;

static void *write_back_early(void *unused) {
    (void)unused;
    double before = cpu_seconds();
    long started = 0, dropped = 0;
    while (!atomic_load(&writer_done)) {
        long upto = atomic_load(&written_upto) & ~4095L;
        if (upto - started < STEP) { usleep(1000); continue; }
        sync_file_range(helper_fd, started, upto - started, SYNC_FILE_RANGE_WRITE);
        if (helper_drops && started > dropped) {
            sync_file_range(helper_fd, dropped, started - dropped,
                            SYNC_FILE_RANGE_WAIT_BEFORE | SYNC_FILE_RANGE_WRITE |
                                SYNC_FILE_RANGE_WAIT_AFTER);
            posix_fadvise(helper_fd, dropped, started - dropped, POSIX_FADV_DONTNEED);
            dropped = started;
        }
        started = upto;
    }
    ahead_cpu = cpu_seconds() - before;
    return NULL;
}

/* CPU seconds every CPU has spent busy (not idle or waiting for I/O), from
 * /proc/stat: with this thread's own taken off, what the kernel's writeback
 * workers and interrupts spent meanwhile (and whatever else ran). */
static double busy_seconds(void) {
    unsigned long long v[10] = {0};
    FILE *f = fopen("/proc/stat", "r");
    if (!f || fscanf(f, "cpu %llu %llu %llu %llu %llu %llu %llu %llu", &v[0], &v[1], &v[2], &v[3],
                     &v[4], &v[5], &v[6], &v[7]) != 8) return 0;
    fclose(f);
    double ticks = sysconf(_SC_CLK_TCK);
    return (v[0] + v[1] + v[2] + v[5] + v[6] + v[7]) / ticks;
}

int main(int argc, char **argv) {
    if (argc != 5) {
        fprintf(stderr,
                "usage: %s PATH TOTAL CHUNK plain|keepsz|falloc|reuse|mmap|mmappop|mmapwill|mmappw|"
                "mmapahead|split|sfr|drop\n",
                argv[0]);
        return 2;
    }
    const char *path = argv[1], *mode = argv[4];
    long total = atol(argv[2]), chunk = atol(argv[3]);
    char *buf = malloc(chunk);
    memset(buf, 'x', chunk);
    unlink(path);
    int fd = open(path, O_CREAT | O_WRONLY | O_TRUNC, 0644);
    if (fd < 0) { perror("open"); return 1; }
    int append = 1;
    int split = !strcmp(mode, "split"), early = !strcmp(mode, "sfr") || !strcmp(mode, "drop");
    if ((!strcmp(mode, "keepsz") || split || early) && fallocate(fd, FALLOC_FL_KEEP_SIZE, 0, total))
        perror("fallocate");
    if (!strcmp(mode, "falloc")) { append = 0; if (fallocate(fd, 0, 0, total)) perror("fallocate"); }
    if (!strcmp(mode, "reuse")) {
        append = 0;
        for (long done = 0; done < total; done += chunk) if (write(fd, buf, chunk) != chunk) { perror("write"); return 1; }
        fdatasync(fd);
    }
    if (!strncmp(mode, "mmap", 4)) {
        if (fallocate(fd, 0, 0, total)) perror("fallocate");
        close(fd);
        fd = open(path, O_RDWR);
        double setup_before = cpu_seconds();
        int flags = MAP_SHARED | (!strcmp(mode, "mmappop") ? MAP_POPULATE : 0);
        char *map = mmap(NULL, total, PROT_READ | PROT_WRITE, flags, fd, 0);
        if (map == MAP_FAILED) { perror("mmap"); return 1; }
        if (!strcmp(mode, "mmapwill") && madvise(map, total, MADV_WILLNEED)) perror("madvise");
        if (!strcmp(mode, "mmappw") && madvise(map, total, MADV_POPULATE_WRITE)) perror("madvise");
        double setup = cpu_seconds() - setup_before;
        pthread_t helper;
        ahead_map = map;
        ahead_total = total;
        if (!strcmp(mode, "mmapahead")) pthread_create(&helper, NULL, populate_ahead, NULL);
        double busy_before = busy_seconds();
        double before = cpu_seconds();
        long faults_before = minor_faults, copies = 0;
        for (long done = 0; done < total; done += chunk, copies++) {
            long len = total - done < chunk ? total - done : chunk;
            memcpy(map + done, buf, len);
            atomic_store(&written_upto, done + len);
        }
        double written = cpu_seconds();
        long faults = minor_faults - faults_before;
        if (!strcmp(mode, "mmapahead")) pthread_join(helper, NULL);
        if (msync(map, total, MS_SYNC)) perror("msync");
        double synced = cpu_seconds();
        double others = busy_seconds() - busy_before - (synced - before);
        printf("%-9s %s: %ld copies of %ld B: copy CPU %.3f s (%.2f ns/B, %ld faults), msync CPU "
               "%.3f s, map+madvise CPU %.3f s, helper CPU %.3f s, other CPU meanwhile %.2f s\n",
               mode, path, copies, chunk, written - before, (written - before) / total * 1e9,
               faults, synced - written, setup, ahead_cpu, others);
        munmap(map, total);
        close(fd);
        unlink(path);
        return 0;
    }
    close(fd);
    fd = open(path, O_WRONLY | (append ? O_APPEND : 0));
    pthread_t helper;
    helper_fd = fd;
    helper_drops = !strcmp(mode, "drop");
    if (early) pthread_create(&helper, NULL, write_back_early, NULL);
    double busy_before = busy_seconds();
    double before = cpu_seconds();
    long writes = 0;
    for (long done = 0; done < total; done += chunk, writes++) {
        long head = split ? (4096 - done % 4096) % 4096 : 0;
        if (head > chunk) head = chunk;
        if (head && write(fd, buf, head) != head) { perror("write"); return 1; }
        if (write(fd, buf + head, chunk - head) != chunk - head) { perror("write"); return 1; }
        atomic_store(&written_upto, done + chunk);
    }
    double written = cpu_seconds();
    atomic_store(&writer_done, 1);
    if (early) pthread_join(helper, NULL);
    fdatasync(fd);
    double synced = cpu_seconds();
    double others = busy_seconds() - busy_before - (synced - before);
    printf("%-6s %s: %ld writes of %ld B: write CPU %.3f s (%.2f ns/B), fdatasync CPU %.3f s, "
           "helper CPU %.3f s, other CPU meanwhile %.2f s\n",
           mode, path, writes, chunk, written - before, (written - before) / total * 1e9,
           synced - written, ahead_cpu, others);
    close(fd);
    unlink(path);
    return 0;
}
