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
#include <sys/resource.h>
#include <unistd.h>

static double cpu_seconds(void) {
    struct rusage r;
    getrusage(RUSAGE_THREAD, &r);
    return r.ru_utime.tv_sec + r.ru_utime.tv_usec * 1e-6 + r.ru_stime.tv_sec +
           r.ru_stime.tv_usec * 1e-6;
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
        fprintf(stderr, "usage: %s PATH TOTAL CHUNK plain|keepsz|falloc|reuse\n", argv[0]);
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
    if (!strcmp(mode, "keepsz") && fallocate(fd, FALLOC_FL_KEEP_SIZE, 0, total)) perror("fallocate");
    if (!strcmp(mode, "falloc")) { append = 0; if (fallocate(fd, 0, 0, total)) perror("fallocate"); }
    if (!strcmp(mode, "reuse")) {
        append = 0;
        for (long done = 0; done < total; done += chunk) if (write(fd, buf, chunk) != chunk) { perror("write"); return 1; }
        fdatasync(fd);
    }
    close(fd);
    fd = open(path, O_WRONLY | (append ? O_APPEND : 0));
    double busy_before = busy_seconds();
    double before = cpu_seconds();
    long writes = 0;
    for (long done = 0; done < total; done += chunk, writes++)
        if (write(fd, buf, chunk) != chunk) { perror("write"); return 1; }
    double written = cpu_seconds();
    fdatasync(fd);
    double synced = cpu_seconds();
    double others = busy_seconds() - busy_before - (synced - before);
    printf("%-6s %s: %ld writes of %ld B: write CPU %.3f s (%.2f ns/B), fdatasync CPU %.3f s, "
           "other CPU meanwhile %.2f s\n",
           mode, path, writes, chunk, written - before, (written - before) / total * 1e9,
           synced - written, others);
    close(fd);
    unlink(path);
    return 0;
}
