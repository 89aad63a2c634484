/* test_server_sdk.c - ds4cl-server answering real requests end to end.
 *
 * Both tests start the sanitizer build of the server (test_bin_dir()) on
 * port 0 with gguf/demo.gguf: the real DeepSeek V4 tokenizer on a small
 * random model, so the text is noise and the checks are about shapes,
 * token counts and cache reuse, never about what the model says.
 *
 *   server_sdk_live: tests/server/sdk_test.py in live mode (the official
 *     `openai` and `anthropic` Python SDKs): models, chat completions,
 *     completions, responses and messages, each non-streamed and streamed,
 *     thinking on and off, a tool-call round trip per protocol, protocol
 *     errors, and an API key refused and accepted.  It must exit 0.
 *
 *   server_kv_restart: the disk KV cache across a restart.  A first server
 *     prefills a prompt with a long system text (a cold checkpoint is
 *     stored at the chat anchor) and stores its live session on SIGTERM;
 *     a second server on the same directory answers the same prompt with
 *     all but the last user turn taken from disk.  Prefilled tokens are
 *     counted two ways: usage (prompt_tokens - cached_tokens) and the
 *     server log's "prefilled N" line; both must agree.
 */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "test.h"
#include "util_server.h"

#define API_KEY "sdk-test-key"

typedef struct sdk_server {
    pid_t pid;
    uint16_t port;
    char log[64];
} sdk_server;

/* SIGTERM (graceful stop); returns the exit code. */
static int stop_server(sdk_server *s) {
    if (s->pid <= 0) return -1;
    kill(s->pid, SIGTERM);
    int rc = ts_wait_exit(s->pid, 30);
    if (rc < 0) {
        kill(s->pid, SIGKILL);
        ts_wait_exit(s->pid, 10);
    }
    s->pid = 0;
    return rc;
}

static bool have_demo(char *path, size_t cap) {
    snprintf(path, cap, "%s/gguf/demo.gguf", test_root_dir());
    if (access(path, R_OK) == 0) return true;
    fprintf(stderr, "    %s missing (run `make gguf/demo.gguf`)\n", path);
    return false;
}

/* Start the server with extra args (space separated); stderr to s->log. */
static int start_server(sdk_server *s, const char *args) {
    memset(s, 0, sizeof(*s));
    char model[4200];
    if (!have_demo(model, sizeof(model))) return -1;
    snprintf(s->log, sizeof(s->log), "/tmp/ds4cl-test-sdklog-XXXXXX");
    int logfd = mkstemp(s->log);
    if (logfd < 0) return -1;
    char argbuf[8400];
    snprintf(argbuf, sizeof(argbuf), "-m %s --port 0 --ctx 2048 %s", model, args);
    if (ts_spawn_server(argbuf, logfd, &s->pid, &s->port) != 0) {
        if (s->pid > 0) {
            ts_print_log(s->log, 3000);
            stop_server(s);
        }
        return -1;
    }
    return 0;
}

/* Run a shell command; its exit status (or -1). */
static int shell(const char *cmd) {
    int st = system(cmd);
    if (st == -1 || !WIFEXITED(st)) return -1;
    return WEXITSTATUS(st);
}

static int t_sdk_live(void) {
    T_CHECK(shell("python3 -c 'import openai, anthropic' 2>/dev/null") == 0,
            "the openai and anthropic Python SDKs are needed (pip install openai anthropic)");
    sdk_server s;
    T_CHECK(start_server(&s, "--api-key " API_KEY) == 0, "server start");
    char cmd[8400];
    snprintf(cmd, sizeof(cmd),
             "timeout -k 5 240 python3 %s/tests/server/sdk_test.py http://127.0.0.1:%u --api-key %s "
             "--max-tokens 6 >&2",
             test_root_dir(), (unsigned)s.port, API_KEY);
    int rc = shell(cmd);
    int src = stop_server(&s);
    if (rc != 0 || src != 0) ts_print_log(s.log, 3000);
    unlink(s.log);
    T_CHECK(rc == 0, "sdk_test.py exited %d", rc);
    T_CHECK(src == 0, "the server exited %d after SIGTERM", src);
    return 0;
}

/* One chat request through urllib: a long fixed system text, the user
 * line, greedy, thinking off.  Reads back "prompt_tokens cached_tokens". */
static int kv_request(uint16_t port, const char *user, unsigned *prompt, unsigned *cached) {
    static const char *script =
        "import json, sys, urllib.request\n"
        "port, user = sys.argv[1], sys.argv[2]\n"
        "system = ' '.join(f'Rule {i}: keep the answer short and exact.' for i in range(40))\n"
        "body = {'messages': [{'role': 'system', 'content': system}, {'role': 'user', 'content': user}],\n"
        "        'max_tokens': 4, 'temperature': 0, 'seed': 1, 'thinking': {'type': 'disabled'}}\n"
        "req = urllib.request.Request(f'http://127.0.0.1:{port}/v1/chat/completions',\n"
        "    data=json.dumps(body).encode(), headers={'Content-Type': 'application/json'})\n"
        "u = json.load(urllib.request.urlopen(req, timeout=120))['usage']\n"
        "print(u['prompt_tokens'], u['prompt_tokens_details']['cached_tokens'])\n";
    char path[] = "/tmp/ds4cl-test-kvreq-XXXXXX";
    int fd = mkstemp(path);
    if (fd < 0) return -1;
    size_t len = strlen(script);
    bool ok = write(fd, script, len) == (ssize_t)len;
    close(fd);
    char cmd[512];
    snprintf(cmd, sizeof(cmd), "python3 %s %u '%s'", path, (unsigned)port, user);
    FILE *p = ok ? popen(cmd, "r") : NULL;
    int n = p ? fscanf(p, "%u %u", prompt, cached) : 0;
    int st = p ? pclose(p) : -1;
    unlink(path);
    return n == 2 && st == 0 ? 0 : -1;
}

/* Sum of the "prefilled N" figures of the log's "gen:" lines. */
static long log_prefilled(const char *log, int *lines) {
    FILE *f = fopen(log, "r");
    if (!f) return -1;
    char line[2048];
    long sum = 0;
    *lines = 0;
    while (fgets(line, sizeof(line), f)) {
        const char *g = strstr(line, " gen: ");
        const char *p = g ? strstr(g, " prefilled ") : NULL;
        if (!p) continue;
        sum += strtol(p + 11, NULL, 10);
        (*lines)++;
    }
    fclose(f);
    return sum;
}

static void rm_dir(const char *dir) {
    char cmd[512];
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
    if (shell(cmd) != 0) fprintf(stderr, "    could not remove %s\n", dir);
}

static int t_kv_restart(void) {
    char dir[] = "/tmp/ds4cl-test-kvdir-XXXXXX";
    T_CHECK(mkdtemp(dir) != NULL, "mkdtemp: %s", strerror(errno));
    char args[256];
    snprintf(args, sizeof(args), "--kv-disk-dir %s --kv-cache-min-tokens 64", dir);

    /* First life: a full prefill, a cold file at the chat anchor, and the
     * live session stored on SIGTERM. */
    sdk_server a;
    if (start_server(&a, args) != 0) {
        rm_dir(dir);
        T_CHECK(0, "first server start");
    }
    unsigned p1 = 0, c1 = 0;
    int r1 = kv_request(a.port, "Hello there", &p1, &c1);
    int ea = stop_server(&a);
    int lines_a = 0;
    long pre_a = log_prefilled(a.log, &lines_a);
    FILE *lf = fopen(a.log, "r");
    bool shutdown_saved = false;
    char line[2048];
    while (lf && fgets(line, sizeof(line), lf))
        if (strstr(line, "(shutdown)")) shutdown_saved = true;
    if (lf) fclose(lf);
    if (r1 != 0 || ea != 0 || !shutdown_saved) ts_print_log(a.log, 3000);
    unlink(a.log);

    /* Second life on the same directory. */
    sdk_server b;
    int sb = start_server(&b, args);
    unsigned p2 = 0, c2 = 0;
    int r2 = sb == 0 ? kv_request(b.port, "Hello there", &p2, &c2) : -1;
    int eb = sb == 0 ? stop_server(&b) : -1;
    int lines_b = 0;
    long pre_b = sb == 0 ? log_prefilled(b.log, &lines_b) : -1;
    if (sb == 0 && (r2 != 0 || eb != 0)) ts_print_log(b.log, 3000);
    if (sb == 0) unlink(b.log);
    rm_dir(dir);

    T_CHECK(r1 == 0 && ea == 0, "first life: request %d, exit %d", r1, ea);
    T_CHECK(shutdown_saved, "no shutdown checkpoint in the first log");
    T_CHECK(p1 > 300 && c1 == 0, "first life: prompt %u cached %u", p1, c1);
    T_CHECK(lines_a == 1 && pre_a == (long)p1, "first life: log prefilled %ld in %d lines", pre_a, lines_a);
    T_CHECK(sb == 0 && r2 == 0 && eb == 0, "second life: start %d request %d exit %d", sb, r2, eb);
    T_CHECK(p2 == p1, "same prompt, %u vs %u tokens", p2, p1);
    /* Everything up to the last user turn comes from disk: only the user
     * line and the assistant prefix are prefilled. */
    T_CHECK(c2 + 16 >= p2 && c2 < p2, "second life: prompt %u cached %u", p2, c2);
    T_CHECK(lines_b == 1 && pre_b == (long)(p2 - c2), "second life: log prefilled %ld in %d lines, usage says %u",
            pre_b, lines_b, p2 - c2);
    fprintf(stderr, "    kv restart: prompt %u tokens; prefilled %u then %u after the restart (%u from disk)\n", p1,
            p1 - c1, p2 - c2, c2);
    return 0;
}

void tests_register_server_sdk(void) {
    test_add("server_sdk_live", t_sdk_live);
    test_add("server_kv_restart", t_kv_restart);
}
