/* util_server.c - process helpers shared by the server tests; see
 * util_server.h.  Moved here from test_server_http.c and
 * test_server_sdk.c so both start the server with one copy.
 */
#include "util_server.h"

#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "test.h"

double ts_now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

void ts_sleep_ms(int ms) {
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

int ts_wait_exit(pid_t pid, double secs) {
    double end = ts_now_s() + secs;
    for (;;) {
        int st;
        pid_t r = waitpid(pid, &st, WNOHANG);
        if (r == pid) return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
        if (r < 0 || ts_now_s() > end) return -1;
        ts_sleep_ms(20);
    }
}

void ts_print_log(const char *path, long tail) {
    FILE *f = fopen(path, "r");
    if (!f) return;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, n > tail ? n - tail : 0, SEEK_SET);
    char *buf = malloc((size_t)tail + 1);
    if (buf) {
        size_t k = fread(buf, 1, (size_t)tail, f);
        buf[k] = '\0';
        fprintf(stderr, "    --- server log (tail) ---\n%s    ---\n", buf);
        free(buf);
    }
    fclose(f);
}

void ts_child_env(void) {
    char sup[4200];
    snprintf(sup, sizeof(sup), "suppressions=%s/tests/lsan.supp:print_suppressions=0",
             test_root_dir());
    setenv("LSAN_OPTIONS", sup, 0);
}

/* The first stdout line of the child (60 s at most), NUL-terminated. */
static void read_line(int fd, char *line, size_t cap) {
    size_t n = 0;
    double end = ts_now_s() + 60;
    while (n + 1 < cap && ts_now_s() < end) {
        struct pollfd p = {.fd = fd, .events = POLLIN};
        if (poll(&p, 1, 200) <= 0) continue;
        ssize_t k = read(fd, line + n, 1);
        if (k <= 0 || line[n] == '\n') break;
        n += (size_t)k;
    }
    line[n] = '\0';
}

int ts_spawn_server(const char *args, int logfd, pid_t *pid, uint16_t *port) {
    *pid = 0;
    *port = 0;
    char bin[4200], argbuf[8400];
    snprintf(bin, sizeof(bin), "%s/ds4cl-server", test_bin_dir());
    snprintf(argbuf, sizeof(argbuf), "%s", args);
    char *argv[64];
    int argc = 0;
    argv[argc++] = bin;
    for (char *t = strtok(argbuf, " "); t && argc < 63; t = strtok(NULL, " ")) argv[argc++] = t;
    argv[argc] = NULL;
    int pfd[2];
    if (pipe(pfd) != 0) {
        close(logfd);
        return -1;
    }
    ts_child_env();
    pid_t child = fork();
    if (child < 0) {
        close(pfd[0]);
        close(pfd[1]);
        close(logfd);
        return -1;
    }
    if (child == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL); /* never outlive a crashed runner */
        dup2(pfd[1], 1);
        dup2(logfd, 2);
        close(pfd[0]);
        close(pfd[1]);
        close(logfd);
        execv(bin, argv);
        _exit(127);
    }
    close(pfd[1]);
    close(logfd);
    *pid = child;
    char line[512];
    read_line(pfd[0], line, sizeof(line));
    close(pfd[0]);
    const char *colon = strrchr(line, ':');
    if (!strstr(line, "listening on http://") || !colon) {
        fprintf(stderr, "    server did not start (stdout: '%s')\n", line);
        return -1;
    }
    *port = (uint16_t)atoi(colon + 1);
    return 0;
}
