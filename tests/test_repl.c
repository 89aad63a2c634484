/* test_repl.c - the interactive REPL as a person at a terminal meets it.
 *
 * repl/tmux starts the ds4cl binary next to the test runner (build/san/ds4cl
 * under make test: ASan works under tmux) inside a detached tmux session on
 * a private server socket (-L ds4cl-test-<pid>, never a user's tmux), on the
 * small demo model (gguf/demo.gguf when present, else the embedded one).
 * With --ignore-eos every answer is exactly -n tokens long, so the script
 * is deterministic: a first turn (thinking: grey text), /nothink, a second
 * turn, /n 1000000 and a third turn stopped by Ctrl+C once text is
 * streaming, then /quit.  It asserts on capture-pane: the prompts, the -v
 * per-turn statistics, the grey reasoning, the interruption and the return
 * to the prompt, the exit status (echoed into the pane by the wrapper
 * script) and the history file.  Every wait polls with a deadline; the tmux
 * server is killed whatever happens.
 *
 * repl/piped feeds the same kind of script through a pipe (no terminal: no
 * line editing, no colour): the turns, a continued line, an unknown
 * command, KV reuse across turns and its reset by /ctx, the exit status.
 */
#include <stdarg.h>
#include <stdbool.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "test.h"

#define PANE_CAP (1 << 20)

typedef struct tmux_ctx {
    char sock[64];
    char sock_path[1024]; /* the server's socket file, removed at the end */
    char *pane;           /* last capture */
} tmux_ctx;

static double mono_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static void sleep_ms(int ms) {
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

/* Run a tmux command on the private server; returns its exit status. */
static int tmux(tmux_ctx *t, const char *fmt, ...) {
    char args[4096], cmd[4300];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(args, sizeof(args), fmt, ap);
    va_end(ap);
    snprintf(cmd, sizeof(cmd), "tmux -L %s %s >/dev/null 2>&1", t->sock, args);
    int st = system(cmd);
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

/* Read a tmux command's stdout into buf. */
static int tmux_read(tmux_ctx *t, char *buf, size_t cap, const char *args) {
    char cmd[1024];
    snprintf(cmd, sizeof(cmd), "tmux -L %s %s 2>/dev/null", t->sock, args);
    FILE *p = popen(cmd, "r");
    if (!p) return -1;
    size_t n = fread(buf, 1, cap - 1, p);
    buf[n] = '\0';
    char sink[4096];
    while (fread(sink, 1, sizeof(sink), p) > 0) {}
    return pclose(p) == 0 ? 0 : -1;
}

/* The whole pane history, wrapped lines joined; with escapes for colours. */
static int capture(tmux_ctx *t, bool escapes) {
    return tmux_read(t, t->pane, PANE_CAP, escapes ? "capture-pane -p -J -e -S - -t t" : "capture-pane -p -J -S - -t t");
}

static int count_of(const char *hay, const char *needle) {
    int n = 0;
    for (const char *p = strstr(hay, needle); p; p = strstr(p + strlen(needle), needle)) n++;
    return n;
}

/* Poll until `needle` occurs at least `times` times; 0 or -1 on timeout. */
static int wait_for(tmux_ctx *t, const char *needle, int times, double timeout_s) {
    double end = mono_s() + timeout_s;
    do {
        if (capture(t, false) == 0 && count_of(t->pane, needle) >= times) return 0;
        sleep_ms(100);
    } while (mono_s() < end);
    return -1;
}

/* Type a line (literally) and press Enter. */
static int type_line(tmux_ctx *t, const char *line) {
    if (tmux(t, "send-keys -t t -l '%s'", line) != 0) return -1;
    return tmux(t, "send-keys -t t Enter");
}

static void model_args(char *buf, size_t cap) {
    char demo[2048];
    snprintf(demo, sizeof(demo), "%s/gguf/demo.gguf", test_root_dir());
    if (access(demo, R_OK) == 0) snprintf(buf, cap, "-m '%s'", demo);
    else snprintf(buf, cap, "--demo");
}

/* The pane runs a shell script that ignores SIGINT itself (ds4cl installs
 * its own handler whatever it inherits), runs ds4cl and prints its exit
 * status into the pane: tmux's own #{pane_dead_status} proved racy (the
 * server sometimes leaves the process a zombie for a long time). */
static int write_script(const char *dir, const char *hist, char *script, size_t cap) {
    char margs[2200];
    model_args(margs, sizeof(margs));
    snprintf(script, cap, "%s/run.sh", dir);
    FILE *fp = fopen(script, "w");
    if (!fp) return -1;
    fprintf(fp, "trap '' INT\nDS4CL_HISTORY='%s' '%s/ds4cl' %s -n 24 --ignore-eos --seed 7 -v\necho \"ds4cl-exit=$?\"\n",
            hist, test_bin_dir(), margs);
    return fclose(fp);
}

/* The script; returns 0 or fails with the pane shown. */
static int drive(tmux_ctx *t, const char *dir, const char *hist) {
    char script[256];
    T_CHECK(write_script(dir, hist, script, sizeof(script)) == 0, "cannot write %s", script);
    T_CHECK(tmux(t, "-f /dev/null new-session -d -s t -x 160 -y 50 sh %s \\; set-option -g remain-on-exit on",
                 script) == 0,
            "tmux new-session failed");
    if (tmux_read(t, t->sock_path, sizeof(t->sock_path), "display-message -p '#{socket_path}'") == 0)
        t->sock_path[strcspn(t->sock_path, "\n")] = '\0';
    const double slow = 180.0; /* a cold OpenCL program cache compiles the kernels */
    T_CHECK(wait_for(t, "ds4cl> ", 1, slow) == 0, "no prompt:\n%s", t->pane);
    T_CHECK(strstr(t->pane, "/help for commands") != NULL, "no banner:\n%s", t->pane);

    T_CHECK(type_line(t, "Hello, who are you?") == 0, "send-keys");
    T_CHECK(wait_for(t, "decode 24 tokens", 1, 60) == 0, "first turn did not finish:\n%s", t->pane);
    T_CHECK(wait_for(t, "ds4cl> ", 2, 30) == 0, "no prompt after the first turn:\n%s", t->pane);
    T_CHECK(capture(t, true) == 0, "capture -e");
    T_CHECK(strstr(t->pane, "\x1b[90m") != NULL, "the reasoning is not grey:\n%s", t->pane);

    T_CHECK(type_line(t, "/nothink") == 0, "send-keys");
    T_CHECK(wait_for(t, "mode: no thinking", 1, 30) == 0, "/nothink not acknowledged:\n%s", t->pane);
    T_CHECK(wait_for(t, "ds4cl> ", 3, 30) == 0, "no prompt after /nothink:\n%s", t->pane);

    T_CHECK(type_line(t, "And a second question.") == 0, "send-keys");
    T_CHECK(wait_for(t, "decode 24 tokens", 2, 60) == 0, "second turn did not finish:\n%s", t->pane);
    T_CHECK(wait_for(t, "ds4cl> ", 4, 30) == 0, "no prompt after the second turn:\n%s", t->pane);
    /* The second turn reused the first one's KV (cached tokens > 0). */
    const char *second = strstr(strstr(t->pane, "And a second question."), "ds4cl: prefill");
    T_CHECK(second && !strstr(second, "(0 cached)"), "second turn did not reuse the KV:\n%s", t->pane);

    T_CHECK(type_line(t, "/n 1000000") == 0, "send-keys");
    T_CHECK(wait_for(t, "ds4cl> ", 5, 30) == 0, "no prompt after /n:\n%s", t->pane);
    T_CHECK(type_line(t, "Now talk for a very long time.") == 0, "send-keys");
    /* Wait until the answer is streaming (the pane grows), then Ctrl+C. */
    T_CHECK(capture(t, false) == 0, "capture");
    size_t before = strlen(t->pane);
    double end = mono_s() + 60;
    while (mono_s() < end && (capture(t, false) != 0 || strlen(t->pane) < before + 200)) sleep_ms(100);
    T_CHECK(strlen(t->pane) >= before + 200, "the long answer is not streaming:\n%s", t->pane);
    T_CHECK(tmux(t, "send-keys -t t C-c") == 0, "send-keys C-c");
    T_CHECK(wait_for(t, "ds4cl: interrupted", 1, 30) == 0, "Ctrl+C did not stop the answer:\n%s", t->pane);
    T_CHECK(wait_for(t, "ds4cl> ", 6, 30) == 0, "no prompt after Ctrl+C:\n%s", t->pane);

    /* Still alive and usable: /help, then /quit. */
    T_CHECK(type_line(t, "/help") == 0, "send-keys");
    T_CHECK(wait_for(t, "/read FILE", 1, 30) == 0, "/help after Ctrl+C:\n%s", t->pane);
    T_CHECK(type_line(t, "/quit") == 0, "send-keys");
    T_CHECK(wait_for(t, "ds4cl-exit=", 1, 60) == 0, "ds4cl did not exit after /quit:\n%s", t->pane);
    T_CHECK(strstr(t->pane, "ds4cl-exit=0") != NULL, "ds4cl failed:\n%s", t->pane);
    /* The history file got the lines typed. */
    FILE *fp = fopen(hist, "r");
    T_CHECK(fp != NULL, "no history file %s", hist);
    char hbuf[4096];
    size_t n = fread(hbuf, 1, sizeof(hbuf) - 1, fp);
    hbuf[n] = '\0';
    fclose(fp);
    T_CHECK(strstr(hbuf, "second") != NULL, "history file:\n%s", hbuf);
    return 0;
}

static int t_tmux(void) {
    if (system("tmux -V >/dev/null 2>&1") != 0) {
        fprintf(stderr, "    tmux is not installed (.ci/deps.sh installs it)\n");
        return 1;
    }
    tmux_ctx t;
    snprintf(t.sock, sizeof(t.sock), "ds4cl-test-%d", (int)getpid());
    t.sock_path[0] = '\0';
    t.pane = malloc(PANE_CAP);
    T_CHECK(t.pane != NULL, "out of memory");
    t.pane[0] = '\0';
    char dir[] = "/tmp/ds4cl-test-repl-XXXXXX", hist[128], script[128];
    int rc = 1;
    if (mkdtemp(dir)) {
        snprintf(hist, sizeof(hist), "%s/history", dir);
        snprintf(script, sizeof(script), "%s/run.sh", dir);
        rc = drive(&t, dir, hist);
        unlink(hist);
        unlink(script);
        rmdir(dir);
    }
    tmux(&t, "kill-server");
    if (t.sock_path[0]) unlink(t.sock_path);
    free(t.pane);
    return rc;
}

static int t_piped(void) {
    char margs[2200], cmd[4096];
    model_args(margs, sizeof(margs));
    snprintf(cmd, sizeof(cmd),
             "printf 'first question\\n/nothink\\n/bogus\\nsecond\\\\\\nline\\n/ctx 2048\\nthird\\n/quit\\n' | "
             "DS4CL_HISTORY= %s/ds4cl %s -n 5 --ignore-eos --seed 3 -v 2>&1",
             test_bin_dir(), margs);
    FILE *p = popen(cmd, "r");
    T_CHECK(p != NULL, "popen");
    static char out[1 << 18];
    size_t n = fread(out, 1, sizeof(out) - 1, p);
    out[n] = '\0';
    char sink[4096];
    while (fread(sink, 1, sizeof(sink), p) > 0) {}
    int st = pclose(p);
    T_CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 0, "exit %d:\n%s", st, out);
    T_CHECK(count_of(out, "decode 5 tokens") == 3, "three turns expected:\n%s", out);
    T_CHECK(strstr(out, "mode: no thinking") && strstr(out, "unknown command '/bogus'") &&
                strstr(out, "context: 2048 tokens"),
            "commands:\n%s", out);
    /* No terminal: the first answer's reasoning is printed between its tags,
     * and after /nothink there is no reasoning. */
    T_CHECK(strstr(out, "<think>\n") != NULL, "no <think> in:\n%s", out);
    T_CHECK(count_of(out, "<think>\n") == 1, "reasoning after /nothink:\n%s", out);
    T_CHECK(strstr(out, "\x1b[") == NULL, "colour on a pipe:\n%s", out);
    /* The second turn reuses the first one's KV... */
    const char *second = strstr(out, "mode: no thinking");
    second = second ? strstr(second, "ds4cl: prefill") : NULL;
    T_CHECK(second && strncmp(strchr(second, '('), "(0 cached)", 10) != 0, "second turn:\n%s", out);
    /* ...and /ctx recreates the session: the third prefills from scratch. */
    const char *third = strstr(out, "context: 2048 tokens");
    T_CHECK(third && strstr(third, "(0 cached)"), "after /ctx:\n%s", out);
    return 0;
}

void tests_register_repl(void) {
    test_add("repl/piped", t_piped);
    test_add("repl/tmux", t_tmux);
}
