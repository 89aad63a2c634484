/* server_main.c - the `ds4cl-server` program: flags, startup, shutdown.
 *
 * Startup order: parse the flags (a bad command line prints one line and
 * exits 2); bind the socket (a port in use fails here, in milliseconds);
 * load the model and allocate the live session; set up the generation
 * state (tokenizer, prefix reuse, the disk KV cache of --kv-disk-dir, gen.h)
 * as the worker's user data; start the worker; register the routes (core,
 * then the four POST endpoints); start serving; print "ds4cl-server: listening on URL" on
 * stdout (with --port 0 this is how a caller learns the port).  Any
 * startup failure prints one line "ds4cl-server: <what>" and exits 1.
 *
 * Signals: SIGINT and SIGTERM are blocked in every thread and taken by the
 * main thread with sigwait, so no handler and no global state are needed.
 * The first one stops gracefully: stop accepting, refuse new jobs with 503,
 * let the queued and running jobs finish and their replies go out, close
 * the connections, store the live session in the disk KV cache (a
 * `shutdown` checkpoint), free everything, exit 0.  A second signal during that
 * exits 1 at once.  SIGPIPE is ignored (a client that hangs up is an error
 * return, not a signal).
 */
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "gen.h"
#include "kvcache.h"
#include "server.h"

#define DEFAULT_CTX 32768
#define MAX_CTX (1u << 24)

static void usage(FILE *fp) {
    fprintf(fp,
            "usage: ds4cl-server -m MODEL.gguf [options]\n"
            "\n"
            "An OpenAI / Anthropic compatible HTTP server for ds4cl.\n"
            "\n"
            "  -m, --model FILE         GGUF model (default: $DS4CL_MODEL)\n"
            "  -c, --ctx N              context of the live session in tokens (default %u)\n"
            "      --device NAME        OpenCL device: index or name substring (default: $DS4CL_DEVICE)\n"
            "      --weights MODE       auto, map or copy (default auto)\n"
            "      --host HOST          address to listen on (default 127.0.0.1; 0.0.0.0 for all)\n"
            "      --port N             port (default 8000; 0 picks a free port, printed at start)\n"
            "      --api-key KEY        require 'Authorization: Bearer KEY' or 'x-api-key: KEY'\n"
            "                           (default: $DS4CL_API_KEY; none when unset)\n"
            "      --cors               send Access-Control-* headers (browser clients)\n"
            "      --max-connections N  open connections at once (default 64)\n"
            "      --timeout SECS       drop a connection idle this long (default 10)\n"
            "      --max-body-mb N      largest request body in MiB (default 64)\n"
            "      --sse-keepalive SECS keep-alive comment on a quiet stream (default 5)\n"
            "      --stall-timeout SECS drop a streaming client that reads nothing this long (default 2)\n"
            "      --debug-endpoints    enable POST /v1/debug/echo and GET /v1/debug/stats\n"
            "  -q, --quiet              no access log\n"
            "  -v, --verbose            engine details on stderr\n"
            "  -h, --help               this text\n"
            "\n"
            "Disk KV cache (off unless --kv-disk-dir is given):\n"
            "%s",
            DEFAULT_CTX, ds4_kvcache_usage());
}

static int bad(const char *fmt, ...) DS4_PRINTF(1, 2);
static int bad(const char *fmt, ...) {
    fprintf(stderr, "ds4cl-server: ");
    va_list ap;
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
    return 2;
}

/* An integer in [lo, hi]. */
static int parse_uint(const char *s, unsigned long long lo, unsigned long long hi, unsigned long long *out) {
    if (!s || !*s || s[0] == '-' || s[0] == '+') return -1;
    char *end = NULL;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno || *end || v < lo || v > hi) return -1;
    *out = v;
    return 0;
}

static int parse_secs(const char *s, double lo, double hi, double *out) {
    if (!s || !*s) return -1;
    char *end = NULL;
    errno = 0;
    double v = strtod(s, &end);
    if (errno || *end || !(v >= lo && v <= hi)) return -1;
    *out = v;
    return 0;
}

static bool takes_value(const char *a) {
    static const char *const with_value[] = {"-m",     "--model",   "-c",        "--ctx",
                                             "--device", "--weights", "--host",   "--port",
                                             "--api-key", "--max-connections", "--timeout", "--max-body-mb",
                                             "--sse-keepalive", "--stall-timeout"};
    for (size_t i = 0; i < sizeof(with_value) / sizeof(with_value[0]); i++)
        if (strcmp(a, with_value[i]) == 0) return true;
    return false;
}

/* 0: run, 1: exit 0 (help), 2: usage error (message printed). */
static int parse_args(int argc, char **argv, ds4_srv_opts *o, ds4_kvcache_opts *kv) {
    memset(o, 0, sizeof(*o));
    ds4_http_default_opts(&o->http);
    ds4_kvcache_default_opts(kv);
    o->ctx = DEFAULT_CTX;
    o->weights = "auto";
    o->model_path = getenv("DS4CL_MODEL");
    const char *env_key = getenv("DS4CL_API_KEY");
    if (env_key && *env_key) o->http.api_key = env_key;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = NULL;
        unsigned long long n;
        if (strcmp(a, "-h") == 0 || strcmp(a, "--help") == 0) {
            usage(stdout);
            return 1;
        }
        ds4_error kerr = {{0}};
        int kr = ds4_kvcache_parse_flag(kv, argc, argv, &i, &kerr);
        if (kr < 0) return bad("%s", kerr.msg);
        if (kr > 0) continue;
        if (takes_value(a)) {
            if (i + 1 >= argc) return bad("%s needs a value", a);
            v = argv[++i];
        }
        if (!strcmp(a, "-m") || !strcmp(a, "--model")) o->model_path = v;
        else if (!strcmp(a, "-c") || !strcmp(a, "--ctx")) {
            if (parse_uint(v, 1, MAX_CTX, &n) != 0) return bad("--ctx takes a number of tokens in [1, 16M], not '%s'", v);
            o->ctx = (uint32_t)n;
        } else if (!strcmp(a, "--device")) o->device = v;
        else if (!strcmp(a, "--weights")) {
            if (strcmp(v, "auto") && strcmp(v, "map") && strcmp(v, "copy"))
                return bad("--weights takes auto, map or copy, not '%s'", v);
            o->weights = v;
        } else if (!strcmp(a, "--host")) {
            if (!*v) return bad("--host needs an address");
            o->http.host = v;
        } else if (!strcmp(a, "--port")) {
            if (parse_uint(v, 0, 65535, &n) != 0) return bad("--port takes 0..65535, not '%s'", v);
            o->http.port = (uint16_t)n;
        } else if (!strcmp(a, "--api-key")) {
            if (!*v) return bad("--api-key needs a non-empty key");
            o->http.api_key = v;
        } else if (!strcmp(a, "--max-connections")) {
            if (parse_uint(v, 1, 4096, &n) != 0) return bad("--max-connections takes 1..4096, not '%s'", v);
            o->http.max_connections = (uint32_t)n;
        } else if (!strcmp(a, "--timeout")) {
            if (parse_uint(v, 1, 86400, &n) != 0) return bad("--timeout takes 1..86400 seconds, not '%s'", v);
            o->http.timeout_s = (uint32_t)n;
        } else if (!strcmp(a, "--max-body-mb")) {
            if (parse_uint(v, 1, 4096, &n) != 0) return bad("--max-body-mb takes 1..4096, not '%s'", v);
            o->http.max_body_bytes = (size_t)n << 20;
        } else if (!strcmp(a, "--sse-keepalive")) {
            if (parse_secs(v, 0.05, 3600, &o->http.sse_keepalive_s) != 0)
                return bad("--sse-keepalive takes 0.05..3600 seconds, not '%s'", v);
        } else if (!strcmp(a, "--stall-timeout")) {
            if (parse_secs(v, 0.05, 3600, &o->http.write_stall_s) != 0)
                return bad("--stall-timeout takes 0.05..3600 seconds, not '%s'", v);
        } else if (!strcmp(a, "--cors")) o->http.cors = true;
        else if (!strcmp(a, "--debug-endpoints")) o->debug_endpoints = true;
        else if (!strcmp(a, "-q") || !strcmp(a, "--quiet")) o->http.access_log = false;
        else if (!strcmp(a, "-v") || !strcmp(a, "--verbose")) o->verbose = true;
        else {
            fprintf(stderr, "ds4cl-server: unknown option '%s' (see --help)\n", a);
            return 2;
        }
    }
    if (!o->model_path || !*o->model_path) return bad("no model: give -m FILE.gguf (or set DS4CL_MODEL)");
    return 0;
}

/* Load the model, allocate the session, fill the model identity. */
static int load_model(ds4_srv *s, ds4_error *err) {
    ds4_engine_opts eo = {.model_path = s->opts.model_path, .device = s->opts.device, .weights = s->opts.weights,
                          .verbose = s->opts.verbose};
    if (ds4_engine_load(&s->engine, &eo, err) != 0) return -1;
    if (ds4_session_new(s->engine, s->opts.ctx, &s->session, err) != 0)
        return ds4_fail_wrap(err, "allocating a %u-token session", s->opts.ctx);
    s->n_ctx = ds4_session_ctx(s->session);
    const ds4_model *m = ds4_engine_model(s->engine);
    const char *base = strrchr(s->opts.model_path, '/');
    base = base ? base + 1 : s->opts.model_path;
    char file[128];
    snprintf(file, sizeof(file), "%s", base);
    char *dot = strrchr(file, '.');
    if (dot && strcmp(dot, ".gguf") == 0) *dot = '\0';
    snprintf(s->model_name, sizeof(s->model_name), "%s", m->name[0] ? m->name : file);
    ds4_srv_model_slug(s->model_name, s->model_id, sizeof(s->model_id));
    struct stat st;
    s->created = stat(s->opts.model_path, &st) == 0 ? (int64_t)st.st_mtime : 0;
    return 0;
}

/* Wait up to secs for a signal; returns it, or 0. */
static int wait_signal(const sigset_t *set, double secs) {
    struct timespec ts = {(time_t)secs, (long)((secs - (double)(time_t)secs) * 1e9)};
    int sig = sigtimedwait(set, NULL, &ts);
    return sig > 0 ? sig : 0;
}

/* Graceful stop after the first signal; exits 1 on a second one. */
static void drain(ds4_srv *s, const sigset_t *set) {
    ds4_http_quiesce(s->http);
    ds4_worker_close(s->worker);
    if (!ds4_worker_idle(s->worker)) ds4_log("waiting for the running and queued jobs (signal again to quit now)");
    while (!ds4_worker_idle(s->worker)) {
        int sig = wait_signal(set, 0.1);
        if (sig) {
            ds4_log("%s again: exiting now", strsignal(sig));
            _exit(1);
        }
    }
    /* Let the last replies reach their clients (bounded: a stalled client
     * is dropped by the idle timeout anyway). */
    double waited = 0, limit = s->opts.http.timeout_s + 1.0;
    while (ds4_http_active(s->http) > 0 && waited < limit) {
        int sig = wait_signal(set, 0.05);
        if (sig) {
            ds4_log("%s again: exiting now", strsignal(sig));
            _exit(1);
        }
        waited += 0.05;
    }
}

int main(int argc, char **argv) {
    setvbuf(stdout, NULL, _IOLBF, 0);
    ds4_srv s;
    memset(&s, 0, sizeof(s));
    ds4_kvcache_opts kv;
    ds4_gen *gen = NULL;
    int rc = parse_args(argc, argv, &s.opts, &kv);
    if (rc) return rc == 1 ? 0 : 2;

    /* Before any thread exists: every thread inherits this mask. */
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGTERM);
    pthread_sigmask(SIG_BLOCK, &set, NULL);
    signal(SIGPIPE, SIG_IGN);

    ds4_error err = {{0}};
    if (ds4_http_new(&s.http, &s.opts.http, &err) != 0 || load_model(&s, &err) != 0) goto fail;
    if (ds4_gen_new(&gen, &s, &kv, &err) != 0) goto fail;
    ds4_worker_env env = {.engine = s.engine, .session = s.session, .user = gen};
    if (ds4_worker_start(&s.worker, &env, &err) != 0 || ds4_srv_routes_core(&s, &err) != 0 ||
        ds4_srv_routes_gen(&s, gen, &err) != 0 || ds4_http_start(s.http, &err) != 0)
        goto fail;
    ds4_log("model %s (id %s) on %s, ctx %u tokens%s%s", s.model_name, s.model_id, ds4_engine_device_name(s.engine),
            s.n_ctx, s.opts.http.api_key ? ", API key required" : "", s.opts.http.cors ? ", CORS on" : "");
    printf("ds4cl-server: listening on %s\n", ds4_http_url(s.http));
    fflush(stdout);

    int sig = 0;
    while (sigwait(&set, &sig) != 0) {}
    ds4_log("%s: stopping", strsignal(sig));
    drain(&s, &set);
    ds4_http_stop(s.http);
    ds4_worker_free(s.worker);
    ds4_gen_shutdown(gen); /* the worker is gone: the live session is ours */
    ds4_gen_free(gen);
    ds4_http_free(s.http);
    ds4_session_free(s.session);
    ds4_engine_free(s.engine);
    ds4_log("stopped");
    return 0;

fail:
    fprintf(stderr, "ds4cl-server: %s\n", err.msg);
    if (s.worker) ds4_worker_free(s.worker);
    ds4_gen_free(gen);
    ds4_http_free(s.http);
    if (s.session) ds4_session_free(s.session);
    ds4_engine_free(s.engine);
    return 1;
}
