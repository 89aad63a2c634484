/* test_server_http.c - ds4cl-server's HTTP core from the outside: raw
 * sockets against the sanitizer build of the server.
 *
 * One server (a small random test model, --port 0, --debug-endpoints, an
 * API key, CORS, a 2 s idle timeout, a 1 MiB body limit, 3 s SSE
 * keep-alives, a 0.5 s stall limit) is started on first use and shared by
 * the tests; it is killed at exit if a test left it running (and dies with
 * a crashed runner), and the last test stops it with SIGTERM and checks the
 * graceful drain.  Startup errors use short-lived
 * servers.  The worker is exercised through POST /v1/debug/echo (a job that
 * waits, then emits N events) and GET /v1/debug/stats (its counters), so
 * queueing, streaming and cancellation are checked by counts, not by time.
 * Every socket has 10 s send/receive timeouts, so no test can hang; waits
 * for the server are bounded polls.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <string.h>
#include <strings.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <cjson/cJSON.h>

#include "../src/testmodel.h"
#include "test.h"
#include "util_server.h"

#define API_KEY "sek-test-key"
#define RAW(s) s, sizeof(s) - 1
#define AUTH "Authorization: Bearer " API_KEY "\r\n"
#define MODEL_ID "ds4cl-random-test-model"
#define N_CTX 64

typedef struct server {
    pid_t pid;
    uint16_t port;
    char model[64];
    char log[512];
    bool keep_log; /* DS4CL_TEST_SERVER_LOG: the log stays */
} server;

static server g_srv;             /* the shared server (pid 0: not running) */
static server *g_target = &g_srv; /* where the request helpers connect */

/* ---------------------------------------------------------------------- */
/* process helpers                                                        */
/* ---------------------------------------------------------------------- */

static int make_model(char *path, size_t cap) {
    snprintf(path, cap, "/tmp/ds4cl-test-srv-XXXXXX");
    int fd = mkstemp(path);
    if (fd < 0) return -1;
    close(fd);
    ds4_testmodel_opts o;
    ds4_testmodel_default_opts(&o);
    ds4_error err = {{0}};
    if (ds4_testmodel_write(&o, path, &err) != 0) {
        fprintf(stderr, "    test model: %s\n", err.msg);
        unlink(path);
        return -1;
    }
    return 0;
}

static void kill_wait(pid_t pid) {
    kill(pid, SIGTERM);
    if (ts_wait_exit(pid, 10) < 0) {
        kill(pid, SIGKILL);
        ts_wait_exit(pid, 10);
    }
}

/* Start the server with args (space separated, no quoting); reads the port
 * from its "listening on" line.  stderr goes to s->log. */
static int server_start(server *s, const char *model, const char *args) {
    memset(s, 0, sizeof(*s));
    snprintf(s->model, sizeof(s->model), "%s", model);
    /* DS4CL_TEST_SERVER_LOG=FILE keeps the server's log there. */
    const char *keep = getenv("DS4CL_TEST_SERVER_LOG");
    int logfd;
    if (keep && *keep) {
        snprintf(s->log, sizeof(s->log), "%s", keep);
        s->keep_log = true;
        logfd = open(keep, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
    } else {
        snprintf(s->log, sizeof(s->log), "/tmp/ds4cl-test-srvlog-XXXXXX");
        logfd = mkstemp(s->log);
    }
    if (logfd < 0) return -1;
    char argbuf[1024];
    snprintf(argbuf, sizeof(argbuf), "-m %s %s", model, args);
    if (ts_spawn_server(argbuf, logfd, &s->pid, &s->port) != 0) {
        if (s->pid > 0) {
            ts_print_log(s->log, 4000);
            kill_wait(s->pid);
        }
        s->pid = 0;
        return -1;
    }
    return 0;
}

static void shared_stop_at_exit(void) {
    if (g_srv.pid > 0) kill_wait(g_srv.pid);
    g_srv.pid = 0;
    if (g_srv.model[0]) unlink(g_srv.model);
    if (g_srv.log[0] && !g_srv.keep_log) unlink(g_srv.log);
}

/* The shared server, started on first use. */
static server *srv(void) {
    static bool tried;
    if (g_srv.pid > 0) return &g_srv;
    if (tried) return NULL;
    tried = true;
    char model[64];
    if (make_model(model, sizeof(model)) != 0) return NULL;
    atexit(shared_stop_at_exit);
    if (server_start(&g_srv, model,
                     "--port 0 --ctx 64 --debug-endpoints --api-key " API_KEY " --cors --timeout 2 "
                     "--max-body-mb 1 --sse-keepalive 3 --stall-timeout 0.5 --max-connections 64") != 0) {
        unlink(model);
        return NULL;
    }
    return &g_srv;
}

/* ---------------------------------------------------------------------- */
/* a tiny HTTP client                                                     */
/* ---------------------------------------------------------------------- */

static int tcp_connect(uint16_t port) {
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) return -1;
    struct timeval tv = {10, 0};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (connect(fd, (struct sockaddr *)&a, sizeof(a)) != 0) {
        close(fd);
        return -1;
    }
    return fd;
}

static int send_all(int fd, const void *buf, size_t n) {
    const char *p = buf;
    while (n > 0) {
        ssize_t k = send(fd, p, n, MSG_NOSIGNAL);
        if (k <= 0) {
            if (k < 0 && errno == EINTR) continue;
            return -1;
        }
        p += k;
        n -= (size_t)k;
    }
    return 0;
}

/* A connection with a read buffer (responses may arrive back to back). */
typedef struct conn {
    int fd;
    char *buf;
    size_t len, cap;
    bool eof;
} conn;

typedef struct resp {
    int status;    /* 0: the connection closed before a status line */
    char *head;    /* status line + headers */
    char *body;    /* de-chunked, NUL terminated */
    size_t body_len;
} resp;

static void resp_free(resp *r) {
    free(r->head);
    free(r->body);
    memset(r, 0, sizeof(*r));
}

static void conn_close(conn *c) {
    if (c->fd >= 0) close(c->fd);
    free(c->buf);
    memset(c, 0, sizeof(*c));
    c->fd = -1;
}

/* Read more bytes; -1 on timeout/error, 0 at EOF, else bytes read. */
static int conn_fill(conn *c) {
    if (c->eof) return 0;
    if (c->len + 65536 + 1 > c->cap) {
        size_t cap = c->cap ? c->cap * 2 : 131072;
        while (cap < c->len + 65536 + 1) cap *= 2;
        char *b = realloc(c->buf, cap);
        if (!b) return -1;
        c->buf = b;
        c->cap = cap;
    }
    ssize_t k = recv(c->fd, c->buf + c->len, 65536, 0);
    if (k == 0 || (k < 0 && (errno == ECONNRESET || errno == EPIPE))) {
        c->eof = true;
        return 0;
    }
    if (k < 0) return -1;
    c->len += (size_t)k;
    c->buf[c->len] = '\0';
    return (int)k;
}

static void conn_consume(conn *c, size_t n) {
    memmove(c->buf, c->buf + n, c->len - n);
    c->len -= n;
}

static char *memfind(const char *h, size_t hn, const char *needle) {
    size_t nn = strlen(needle);
    for (size_t i = 0; i + nn <= hn; i++)
        if (memcmp(h + i, needle, nn) == 0) return (char *)h + i;
    return NULL;
}

/* Value of header name in head (case-insensitive), copied to out. */
static bool head_value(const char *head, const char *name, char *out, size_t cap) {
    size_t nl = strlen(name);
    for (const char *p = strstr(head, "\r\n"); p; p = strstr(p, "\r\n")) {
        p += 2;
        if (strncasecmp(p, name, nl) == 0 && p[nl] == ':') {
            const char *v = p + nl + 1;
            while (*v == ' ') v++;
            const char *e = strstr(v, "\r\n");
            size_t n = e ? (size_t)(e - v) : strlen(v);
            if (n >= cap) n = cap - 1;
            memcpy(out, v, n);
            out[n] = '\0';
            return true;
        }
    }
    return false;
}

/* Read one response (a HEAD response has no body when head_only). -1 on a
 * timeout; a connection closed before a status line gives status 0. */
static int read_response_body(conn *c, resp *r, bool head_only);
static int read_response_ex(conn *c, resp *r, bool head_only) {
    memset(r, 0, sizeof(*r));
    int rc = read_response_body(c, r, head_only);
    if (rc != 0) resp_free(r);
    return rc;
}

static int read_response_body(conn *c, resp *r, bool head_only) {
    char *end;
    while (!(end = memfind(c->buf ? c->buf : "", c->len, "\r\n\r\n"))) {
        int k = conn_fill(c);
        if (k < 0) return -1;
        if (k == 0) return 0; /* closed without a (complete) response */
    }
    size_t hl = (size_t)(end - c->buf) + 4;
    r->head = malloc(hl + 1);
    memcpy(r->head, c->buf, hl);
    r->head[hl] = '\0';
    conn_consume(c, hl);
    if (sscanf(r->head, "HTTP/1.%*d %d", &r->status) != 1) r->status = -1;
    char v[64];
    size_t cap = 4096, n = 0;
    r->body = malloc(cap);
    if (head_only || r->status == 204 || r->status == 304) {
        /* no body */
    } else if (head_value(r->head, "Transfer-Encoding", v, sizeof(v)) && strstr(v, "chunked")) {
        for (;;) {
            char *le;
            while (!(le = memfind(c->buf ? c->buf : "", c->len, "\r\n")))
                if (conn_fill(c) <= 0) return -1;
            size_t sz = strtoul(c->buf, NULL, 16);
            size_t ll = (size_t)(le - c->buf) + 2;
            while (c->len < ll + sz + 2)
                if (conn_fill(c) <= 0) return -1;
            if (n + sz + 1 > cap) {
                while (n + sz + 1 > cap) cap *= 2;
                r->body = realloc(r->body, cap);
            }
            memcpy(r->body + n, c->buf + ll, sz);
            n += sz;
            conn_consume(c, ll + sz + 2);
            if (sz == 0) break;
        }
    } else if (head_value(r->head, "Content-Length", v, sizeof(v))) {
        size_t want = strtoul(v, NULL, 10);
        while (c->len < want)
            if (conn_fill(c) <= 0) return -1;
        if (want + 1 > cap) r->body = realloc(r->body, cap = want + 1);
        memcpy(r->body, c->buf, want);
        n = want;
        conn_consume(c, want);
    } else {
        for (;;) {
            int k = conn_fill(c);
            if (k < 0) return -1;
            if (k == 0) break;
        }
        if (c->len + 1 > cap) r->body = realloc(r->body, cap = c->len + 1);
        memcpy(r->body, c->buf, c->len);
        n = c->len;
        conn_consume(c, c->len);
    }
    r->body[n] = '\0';
    r->body_len = n;
    return 0;
}

static int read_response(conn *c, resp *r) { return read_response_ex(c, r, false); }

/* Send raw bytes on a fresh connection and read one response; with eof
 * the client then closes its sending side (the server sees the end at once
 * instead of waiting for the idle timeout). */
static int http_raw_ex(const void *req, size_t len, bool eof, resp *r) {
    memset(r, 0, sizeof(*r));
    conn c = {.fd = tcp_connect(g_target->port)};
    if (c.fd < 0) return -1;
    int rc = 0;
    if (send_all(c.fd, req, len) != 0) {
        /* The server may refuse before reading everything: its answer
         * (or the close) is still what counts. */
    }
    if (eof) shutdown(c.fd, SHUT_WR);
    rc = read_response(&c, r);
    conn_close(&c);
    return rc;
}

static int http_raw(const void *req, size_t len, resp *r) { return http_raw_ex(req, len, false, r); }

/* A request with a body of blen bytes; extra holds whole header lines. */
static int http_req(const char *method, const char *path, const char *extra, const char *body, size_t blen,
                    resp *r) {
    size_t cap = blen + 1024 + (extra ? strlen(extra) : 0) + strlen(path);
    char *req = malloc(cap);
    int n = snprintf(req, cap, "%s %s HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n%s", method, path,
                     extra ? extra : "");
    if (body) n += snprintf(req + n, cap - (size_t)n, "Content-Type: application/json\r\nContent-Length: %zu\r\n", blen);
    n += snprintf(req + n, cap - (size_t)n, "\r\n");
    if (body) memcpy(req + n, body, blen);
    int rc = http_raw(req, (size_t)n + (body ? blen : 0), r);
    free(req);
    return rc;
}

static int get_models(resp *r) { return http_req("GET", "/v1/models", AUTH, NULL, 0, r); }

/* GET /v1/models answers 200 with our model: the server still serves. */
static bool models_ok(void) {
    resp r;
    bool ok = get_models(&r) == 0 && r.status == 200 && r.body && strstr(r.body, "\"id\":\"" MODEL_ID "\"");
    if (!ok) fprintf(stderr, "    GET /v1/models: status %d body %.200s\n", r.status, r.body ? r.body : "");
    resp_free(&r);
    return ok;
}

static int echo(const char *json, resp *r) {
    return http_req("POST", "/v1/debug/echo", AUTH, json, strlen(json), r);
}

/* A field of the JSON error body ("error.message" etc.) or NULL. */
static const char *json_error_field(cJSON *root, const char *field) {
    cJSON *e = cJSON_GetObjectItemCaseSensitive(root, "error");
    cJSON *v = cJSON_GetObjectItemCaseSensitive(e, field);
    return cJSON_IsString(v) ? v->valuestring : NULL;
}

typedef struct wstats {
    double submitted, done, cancelled, skipped, queued, disconnects;
    bool running;
} wstats;

static int get_stats(wstats *s) {
    resp r;
    memset(s, 0, sizeof(*s));
    if (http_req("GET", "/v1/debug/stats", AUTH, NULL, 0, &r) != 0 || r.status != 200) {
        resp_free(&r);
        return -1;
    }
    cJSON *j = cJSON_Parse(r.body);
    resp_free(&r);
    if (!j) return -1;
    cJSON *w = cJSON_GetObjectItem(j, "worker"), *h = cJSON_GetObjectItem(j, "http");
    s->submitted = cJSON_GetNumberValue(cJSON_GetObjectItem(w, "submitted"));
    s->done = cJSON_GetNumberValue(cJSON_GetObjectItem(w, "done"));
    s->cancelled = cJSON_GetNumberValue(cJSON_GetObjectItem(w, "cancelled"));
    s->skipped = cJSON_GetNumberValue(cJSON_GetObjectItem(w, "skipped"));
    s->queued = cJSON_GetNumberValue(cJSON_GetObjectItem(w, "queued"));
    s->running = cJSON_IsTrue(cJSON_GetObjectItem(w, "running"));
    s->disconnects = cJSON_GetNumberValue(cJSON_GetObjectItem(h, "disconnects"));
    cJSON_Delete(j);
    return 0;
}

/* Poll the stats until the worker is idle (bounded). */
static int wait_idle(wstats *s) {
    for (int i = 0; i < 300; i++) {
        if (get_stats(s) == 0 && s->queued == 0 && !s->running) return 0;
        ts_sleep_ms(50);
    }
    return -1;
}

/* The SSE events of a body: data payloads in order (comments skipped);
 * counts the comments seen before the first data line. */
typedef struct sse {
    char *data[64];
    int n;
    int comments_before_data;
} sse;

static void sse_parse(const char *body, sse *s) {
    memset(s, 0, sizeof(*s));
    const char *p = body;
    while (*p && s->n < 64) {
        const char *e = strchr(p, '\n');
        size_t n = e ? (size_t)(e - p) : strlen(p);
        if (n > 0 && p[0] == ':' && s->n == 0) s->comments_before_data++;
        if (n >= 6 && strncmp(p, "data: ", 6) == 0) {
            s->data[s->n] = strndup(p + 6, n - 6);
            s->n++;
        }
        if (!e) break;
        p = e + 1;
    }
}

static void sse_free(sse *s) {
    for (int i = 0; i < s->n; i++) free(s->data[i]);
    s->n = 0;
}

/* ---------------------------------------------------------------------- */
/* tests                                                                  */
/* ---------------------------------------------------------------------- */

typedef struct run_result {
    int status;
    char out[8192];
} run_result;

/* Run the server binary with args, bounded by `timeout`. */
static int run_server_cmd(run_result *r, const char *env, const char *args) {
    char cmd[8192];
    ts_child_env();
    snprintf(cmd, sizeof(cmd), "%s timeout -k 5 60 %s/ds4cl-server %s 2>&1", env ? env : "", test_bin_dir(), args);
    FILE *p = popen(cmd, "r");
    if (!p) return -1;
    size_t n = fread(r->out, 1, sizeof(r->out) - 1, p);
    r->out[n] = '\0';
    char sink[4096];
    while (fread(sink, 1, sizeof(sink), p) > 0) {}
    int st = pclose(p);
    if (st == -1) return -1;
    r->status = WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
    return 0;
}

static int count_lines(const char *s) {
    int n = 0;
    for (; *s; s++) n += *s == '\n';
    return n;
}

static int t_startup_errors(void) {
    static run_result r;
    const char *usage_cases[] = {"--bogus", "-m", "-m x.gguf --port 70000", "-m x.gguf --ctx 0",
                                 "-m x.gguf --timeout soon", "-m x.gguf --weights sideways",
                                 "-m x.gguf --api-key", "-m x.gguf --sse-keepalive 0", "--port 0"};
    for (size_t i = 0; i < sizeof(usage_cases) / sizeof(usage_cases[0]); i++) {
        T_CHECK(run_server_cmd(&r, "env -u DS4CL_MODEL", usage_cases[i]) == 0, "popen");
        T_CHECK(r.status == 2, "'%s' exited %d:\n%s", usage_cases[i], r.status, r.out);
        T_CHECK(count_lines(r.out) == 1 && strncmp(r.out, "ds4cl-server: ", 14) == 0, "'%s': not one line:\n%s",
                usage_cases[i], r.out);
    }
    T_CHECK(run_server_cmd(&r, NULL, "--help") == 0 && r.status == 0 && strstr(r.out, "usage:"), "--help: %s",
            r.out);
    /* A model that does not exist. */
    T_CHECK(run_server_cmd(&r, NULL, "-m /nonexistent/m.gguf --port 0") == 0, "popen");
    T_CHECK(r.status == 1 && count_lines(r.out) == 1 && strstr(r.out, "/nonexistent/m.gguf"), "missing model: %d %s",
            r.status, r.out);
    /* A port in use: the bind fails before the model is even opened. */
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    T_CHECK(fd >= 0, "socket");
    struct sockaddr_in a = {.sin_family = AF_INET};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t al = sizeof(a);
    T_CHECK(bind(fd, (struct sockaddr *)&a, sizeof(a)) == 0 && listen(fd, 1) == 0 &&
                getsockname(fd, (struct sockaddr *)&a, &al) == 0,
            "bind");
    char args[128];
    snprintf(args, sizeof(args), "-m /nonexistent/m.gguf --port %u", (unsigned)ntohs(a.sin_port));
    int rc = run_server_cmd(&r, NULL, args);
    close(fd);
    T_CHECK(rc == 0, "popen");
    T_CHECK(r.status == 1 && count_lines(r.out) == 1 && strstr(r.out, "cannot listen"), "port in use: %d %s",
            r.status, r.out);
    return 0;
}

static int t_models(void) {
    T_CHECK(srv(), "no server");
    resp r;
    T_CHECK(get_models(&r) == 0 && r.status == 200, "status %d", r.status);
    char ct[64] = "";
    T_CHECK(head_value(r.head, "Content-Type", ct, sizeof(ct)) && strcmp(ct, "application/json") == 0, "type %s", ct);
    cJSON *j = cJSON_Parse(r.body);
    T_CHECK(j, "not JSON: %s", r.body);
    cJSON *m = cJSON_GetArrayItem(cJSON_GetObjectItem(j, "data"), 0);
    T_CHECK(cJSON_GetArraySize(cJSON_GetObjectItem(j, "data")) == 1, "data: %s", r.body);
    T_CHECK(!strcmp(cJSON_GetStringValue(cJSON_GetObjectItem(j, "object")), "list"), "%s", r.body);
    T_CHECK(!strcmp(cJSON_GetStringValue(cJSON_GetObjectItem(m, "id")), MODEL_ID), "%s", r.body);
    T_CHECK(!strcmp(cJSON_GetStringValue(cJSON_GetObjectItem(m, "object")), "model"), "%s", r.body);
    T_CHECK(cJSON_GetNumberValue(cJSON_GetObjectItem(m, "context_length")) == N_CTX, "%s", r.body);
    cJSON_Delete(j);
    resp_free(&r);

    T_CHECK(http_req("GET", "/v1/models/" MODEL_ID, AUTH, NULL, 0, &r) == 0 && r.status == 200, "%d", r.status);
    j = cJSON_Parse(r.body);
    T_CHECK(j && !strcmp(cJSON_GetStringValue(cJSON_GetObjectItem(j, "id")), MODEL_ID), "%s", r.body);
    cJSON_Delete(j);
    resp_free(&r);

    T_CHECK(http_req("GET", "/v1/models/gpt-17", AUTH, NULL, 0, &r) == 0 && r.status == 404, "%d", r.status);
    j = cJSON_Parse(r.body);
    T_CHECK(j && json_error_field(j, "message") && !strcmp(json_error_field(j, "code"), "model_not_found"), "%s",
            r.body);
    cJSON_Delete(j);
    resp_free(&r);

    /* The query string is not part of the path; HEAD is GET without body. */
    T_CHECK(http_req("GET", "/v1/models?limit=5", AUTH, NULL, 0, &r) == 0 && r.status == 200, "%d", r.status);
    resp_free(&r);
    conn c = {.fd = tcp_connect(g_srv.port)};
    const char head[] = "HEAD /v1/models HTTP/1.1\r\nHost: x\r\n" AUTH "\r\n";
    T_CHECK(c.fd >= 0 && send_all(c.fd, head, sizeof(head) - 1) == 0, "send");
    T_CHECK(read_response_ex(&c, &r, true) == 0 && r.status == 200, "HEAD %d", r.status);
    resp_free(&r);
    conn_close(&c);
    return 0;
}

static int t_auth(void) {
    T_CHECK(srv(), "no server");
    const struct {
        const char *hdr;
        int status;
    } cases[] = {
        {"", 401},
        {"Authorization: Bearer wrong\r\n", 401},
        {"Authorization: Bearer " API_KEY "x\r\n", 401},
        {"Authorization: Bearer sek\r\n", 401},
        {"Authorization: Basic " API_KEY "\r\n", 401},
        {"Authorization: " API_KEY "\r\n", 401},
        {"x-api-key: nope\r\n", 401},
        {"x-api-key: \r\n", 401},
        {"Authorization: Bearer " API_KEY "\r\n", 200},
        {"authorization: bearer   " API_KEY "\r\n", 200},
        {"X-Api-Key: " API_KEY "\r\n", 200},
        {"x-api-key: nope\r\nAuthorization: Bearer " API_KEY "\r\n", 200},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        resp r;
        T_CHECK(http_req("GET", "/v1/models", cases[i].hdr, NULL, 0, &r) == 0, "request %zu", i);
        T_CHECK(r.status == cases[i].status, "'%s' -> %d, want %d", cases[i].hdr, r.status, cases[i].status);
        if (r.status == 401) {
            cJSON *j = cJSON_Parse(r.body);
            const char *type = j ? json_error_field(j, "type") : NULL;
            T_CHECK(type && !strcmp(type, "authentication_error"), "401 body: %s", r.body);
            cJSON_Delete(j);
        }
        resp_free(&r);
    }
    /* Every route needs the key, even unknown ones and the worker's. */
    wstats before, after;
    T_CHECK(get_stats(&before) == 0, "stats");
    resp r;
    T_CHECK(http_req("POST", "/v1/debug/echo", "", "{\"payload\":\"x\"}", 15, &r) == 0 && r.status == 401, "%d",
            r.status);
    resp_free(&r);
    T_CHECK(http_req("GET", "/nowhere", "", NULL, 0, &r) == 0 && r.status == 401, "%d", r.status);
    resp_free(&r);
    T_CHECK(get_stats(&after) == 0 && after.submitted == before.submitted, "an unauthorized job was queued");
    return 0;
}

static int t_cors(void) {
    T_CHECK(srv(), "no server");
    resp r;
    T_CHECK(http_req("OPTIONS", "/v1/chat/completions",
                     "Origin: http://example.test\r\nAccess-Control-Request-Method: POST\r\n"
                     "Access-Control-Request-Headers: authorization, content-type\r\n",
                     NULL, 0, &r) == 0,
            "request");
    T_CHECK(r.status == 204 && r.body_len == 0, "preflight %d (%zu bytes)", r.status, r.body_len);
    char v[256];
    T_CHECK(head_value(r.head, "Access-Control-Allow-Origin", v, sizeof(v)) && !strcmp(v, "*"), "%s", r.head);
    T_CHECK(head_value(r.head, "Access-Control-Allow-Methods", v, sizeof(v)) && strstr(v, "POST"), "%s", r.head);
    T_CHECK(head_value(r.head, "Access-Control-Allow-Headers", v, sizeof(v)) && strstr(v, "authorization"), "%s",
            r.head);
    resp_free(&r);
    /* Real responses, errors included, carry the origin header too. */
    T_CHECK(get_models(&r) == 0 && r.status == 200, "%d", r.status);
    T_CHECK(head_value(r.head, "Access-Control-Allow-Origin", v, sizeof(v)), "%s", r.head);
    resp_free(&r);
    T_CHECK(http_req("GET", "/v1/models", "", NULL, 0, &r) == 0 && r.status == 401, "%d", r.status);
    T_CHECK(head_value(r.head, "Access-Control-Allow-Origin", v, sizeof(v)), "%s", r.head);
    resp_free(&r);
    /* A header list that is not a plain token list is not echoed. */
    T_CHECK(http_req("OPTIONS", "/v1/models", "Access-Control-Request-Headers: a\"b<c>\r\n", NULL, 0, &r) == 0 &&
                r.status == 204,
            "%d", r.status);
    T_CHECK(head_value(r.head, "Access-Control-Allow-Headers", v, sizeof(v)) && !strcmp(v, "*"), "%s", r.head);
    resp_free(&r);
    return 0;
}

static int t_routing(void) {
    T_CHECK(srv(), "no server");
    const struct {
        const char *method, *path;
        int status;
        const char *code;
    } cases[] = {
        {"GET", "/", 404, "unknown_endpoint"},
        {"GET", "/v1/chat/completions", 405, "method_not_allowed"}, /* a POST route (gen.c) */
        {"GET", "/v1/models%00junk", 404, "unknown_endpoint"},
        {"GET", "/v1/models/../models", 404, "model_not_found"},
        {"GET", "/../../etc/passwd", 404, "unknown_endpoint"},
        {"POST", "/v1/models", 405, "method_not_allowed"},
        {"DELETE", "/v1/models", 405, "method_not_allowed"},
        {"GET", "/v1/debug/echo", 405, "method_not_allowed"},
        {"PUT", "/v1/debug/echo", 405, "method_not_allowed"},
        {"BREW", "/v1/models", 405, "method_not_allowed"},
        {"GET", "http://elsewhere.test/v1/models", 404, "unknown_endpoint"},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        resp r;
        T_CHECK(http_req(cases[i].method, cases[i].path, AUTH, NULL, 0, &r) == 0, "request %zu", i);
        T_CHECK(r.status == cases[i].status, "%s %s -> %d, want %d: %s", cases[i].method, cases[i].path, r.status,
                cases[i].status, r.body ? r.body : "");
        cJSON *j = cJSON_Parse(r.body);
        const char *code = j ? json_error_field(j, "code") : NULL;
        T_CHECK(code && !strcmp(code, cases[i].code), "%s %s: %s", cases[i].method, cases[i].path, r.body);
        T_CHECK(json_error_field(j, "message") && !strcmp(json_error_field(j, "type"), "invalid_request_error"),
                "%s", r.body);
        cJSON_Delete(j);
        char allow[128];
        if (r.status == 405)
            T_CHECK(head_value(r.head, "Allow", allow, sizeof(allow)) && strstr(allow, "OPTIONS"), "%s", r.head);
        resp_free(&r);
    }
    return 0;
}

/* Raw bytes that are not a (valid) request: each gets a 4xx or a closed
 * connection, and the server keeps serving. */
static int t_malformed(void) {
    T_CHECK(srv(), "no server");
    static char long_uri[160 * 1024];
    int n = snprintf(long_uri, sizeof(long_uri), "GET /v1/models/");
    memset(long_uri + n, 'a', 140 * 1024);
    snprintf(long_uri + n + 140 * 1024, sizeof(long_uri) - (size_t)n - 140 * 1024, " HTTP/1.1\r\nHost: x\r\n\r\n");
    const struct {
        const char *name;
        const char *bytes;
        size_t len;
    } cases[] = {
        {"garbage line", RAW("garbage\r\n\r\n")},
        {"method only", RAW("GET\r\n\r\n")},
        {"no version", RAW("GET /v1/models\r\n\r\n")},
        {"binary", RAW("\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\xff\xfe\r\n\r\n")},
        {"NUL in line", RAW("GET /v1/mo\0dels HTTP/1.1\r\nHost: x\r\n\r\n")},
        {"header without colon", RAW("GET /v1/models HTTP/1.1\r\nHost: x\r\nNoColonHere\r\n" AUTH "\r\n")},
        {"bad content-length", RAW("POST /v1/debug/echo HTTP/1.1\r\nHost: x\r\n" AUTH "Content-Length: abc\r\n\r\n{}")},
        {"negative content-length", RAW("POST /v1/debug/echo HTTP/1.1\r\nHost: x\r\n" AUTH "Content-Length: -5\r\n\r\n{}")},
        {"huge content-length", RAW("POST /v1/debug/echo HTTP/1.1\r\nHost: x\r\n" AUTH
                                "Content-Length: 99999999999999999999999\r\n\r\n{}")},
        {"two content-lengths", RAW("POST /v1/debug/echo HTTP/1.1\r\nHost: x\r\n" AUTH
                                "Content-Length: 2\r\nContent-Length: 40\r\n\r\n{}")},
        {"length and chunked", RAW("POST /v1/debug/echo HTTP/1.1\r\nHost: x\r\n" AUTH
                               "Content-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nGET / HTTP/1.1\r\n\r\n")},
        {"bad chunk size", RAW("POST /v1/debug/echo HTTP/1.1\r\nHost: x\r\n" AUTH
                           "Transfer-Encoding: chunked\r\n\r\nzz\r\n{}\r\n0\r\n\r\n")},
        {"bare CR lines", RAW("GET /v1/models HTTP/1.1\rHost: x\r\r")},
        {"folded header", RAW("GET /v1/models HTTP/1.1\r\nHost: x\r\n continued\r\n" AUTH "\r\n")},
        {"HTTP/0.9 style", RAW("GET /\r\n")},
        {"empty lines", RAW("\r\n\r\n\r\n\r\n")},
    };
    for (size_t i = 0; i <= sizeof(cases) / sizeof(cases[0]); i++) {
        bool last = i == sizeof(cases) / sizeof(cases[0]);
        const char *name = last ? "very long URI" : cases[i].name;
        const char *bytes = last ? long_uri : cases[i].bytes;
        size_t len = last ? strlen(long_uri) : cases[i].len;
        resp r;
        int rc = http_raw_ex(bytes, len, true, &r);
        /* A request MHD cannot parse is refused (4xx or close); one it
         * accepts despite oddities must still get a non-2xx or a correct
         * answer, never a 5xx. */
        T_CHECK(rc == 0, "%s: no answer and no close (timeout)", name);
        T_CHECK(r.status == 0 || (r.status >= 400 && r.status < 500) || (r.status == 200 && strstr(name, "folded")),
                "%s -> %d", name, r.status);
        resp_free(&r);
        T_CHECK(models_ok(), "server unhealthy after '%s'", name);
    }
    /* An unsupported HTTP version is answered 505 by MHD (the one 5xx). */
    resp r;
    T_CHECK(http_raw(RAW("GET /v1/models HTTP/9.9\r\nHost: x\r\n\r\n"), &r) == 0, "version");
    T_CHECK(r.status == 0 || r.status == 505 || (r.status >= 400 && r.status < 500), "HTTP/9.9 -> %d", r.status);
    resp_free(&r);
    T_CHECK(models_ok(), "after HTTP/9.9");
    return 0;
}

static int echo_expect_400(const char *body, size_t len, const char *what, const char *needle) {
    resp r;
    T_CHECK(http_req("POST", "/v1/debug/echo", AUTH, body, len, &r) == 0, "%s: request", what);
    T_CHECK(r.status == 400, "%s -> %d: %.300s", what, r.status, r.body ? r.body : "");
    cJSON *j = cJSON_Parse(r.body);
    const char *msg = j ? json_error_field(j, "message") : NULL;
    T_CHECK(msg, "%s: no JSON error: %.300s", what, r.body);
    T_CHECK(!needle || strstr(msg, needle), "%s: message '%s' lacks '%s'", what, msg, needle);
    cJSON_Delete(j);
    resp_free(&r);
    return 0;
}

static int t_bad_json(void) {
    T_CHECK(srv(), "no server");
    const struct {
        const char *what, *body, *needle;
        size_t len;
    } cases[] = {
        {"empty body", "", "empty", 0},
        {"spaces only", "  \n ", "empty", 0},
        {"open brace", "{", "invalid JSON", 0},
        {"open array", "[1,2", "invalid JSON", 0},
        {"bad literal", "nul", "invalid JSON", 0},
        {"trailing data", "{\"payload\":\"x\"} {}", "after the JSON", 0},
        {"single quotes", "{'payload':'x'}", "invalid JSON", 0},
        {"invalid byte", "{\"payload\":\"a\xff" "b\"}", "UTF-8", 0},
        {"overlong slash", "{\"payload\":\"\xc0\xaf\"}", "UTF-8", 0},
        {"UTF-16 surrogate", "{\"payload\":\"\xed\xa0\x80\"}", "UTF-8", 0},
        {"above U+10FFFF", "{\"payload\":\"\xf4\x90\x80\x80\"}", "UTF-8", 0},
        {"five-byte form", "{\"payload\":\"\xf8\x88\x80\x80\x80\"}", "UTF-8", 0},
        {"truncated sequence", "{\"payload\":\"\xe2\x82\"}", "UTF-8", 0},
        {"invalid byte in a key", "{\"pay\xfe\":\"x\"}", "UTF-8", 0},
        {"lone surrogate escape", "{\"payload\":\"\\ud800\"}", "invalid JSON", 0},
        {"raw control char", "{\"payload\":\"a\x01" "b\"}", "control", 0},
        {"raw newline in string", "{\"payload\":\"a\nb\"}", "control", 0},
        {"NUL byte", "{\"payload\":\"x\"}\0garbage", "NUL", sizeof("{\"payload\":\"x\"}\0garbage") - 1},
        {"not an object", "[\"payload\"]", "object", 0},
        {"payload not a string", "{\"payload\":5}", "payload", 0},
        {"events out of range", "{\"payload\":\"x\",\"events\":0}", "events", 0},
        {"events not integer", "{\"payload\":\"x\",\"events\":1.5}", "events", 0},
        {"stream not bool", "{\"payload\":\"x\",\"stream\":\"yes\"}", "stream", 0},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++)
        if (echo_expect_400(cases[i].body, cases[i].len ? cases[i].len : strlen(cases[i].body), cases[i].what,
                            cases[i].needle))
            return 1;
    /* Deep nesting is refused before any recursive parsing. */
    static char deep[40000];
    memset(deep, '[', 10000);
    T_CHECK(echo_expect_400(deep, 10000, "10k '['", "nested") == 0, "10k [");
    size_t n = 0;
    for (int i = 0; i < 5000; i++) n += (size_t)sprintf(deep + n, "{\"a\":");
    T_CHECK(echo_expect_400(deep, n, "5k objects", "nested") == 0, "5k {");
    /* 300 levels, well formed: over the 256 limit. */
    n = (size_t)sprintf(deep, "{\"payload\":\"x\",\"deep\":");
    for (int i = 0; i < 300; i++) deep[n++] = '[';
    for (int i = 0; i < 300; i++) deep[n++] = ']';
    deep[n++] = '}';
    T_CHECK(echo_expect_400(deep, n, "300 levels", "nested") == 0, "300");
    /* 200 levels and brackets inside strings are fine. */
    n = (size_t)sprintf(deep, "{\"payload\":\"[[[{{{\\\"]]\",\"deep\":");
    for (int i = 0; i < 200; i++) deep[n++] = '[';
    for (int i = 0; i < 200; i++) deep[n++] = ']';
    deep[n++] = '}';
    resp r;
    T_CHECK(http_req("POST", "/v1/debug/echo", AUTH, deep, n, &r) == 0 && r.status == 200, "200 levels -> %d %s",
            r.status, r.body ? r.body : "");
    cJSON *j = cJSON_Parse(r.body);
    T_CHECK(j && !strcmp(cJSON_GetStringValue(cJSON_GetObjectItem(j, "payload")), "[[[{{{\"]]"), "%s", r.body);
    cJSON_Delete(j);
    resp_free(&r);
    /* Valid multilingual text and escapes come back intact. */
    const char *body = "{\"payload\":\"h\xc3\xa9llo \xe4\xb8\x96 \xf0\x9f\x98\x80 \\\"q\\\" \\\\ \\n \\u00e9 "
                       "\\ud83d\\ude00\"}";
    const char *want = "h\xc3\xa9llo \xe4\xb8\x96 \xf0\x9f\x98\x80 \"q\" \\ \n \xc3\xa9 \xf0\x9f\x98\x80";
    T_CHECK(echo(body, &r) == 0 && r.status == 200, "unicode -> %d %s", r.status, r.body ? r.body : "");
    j = cJSON_Parse(r.body);
    T_CHECK(j && !strcmp(cJSON_GetStringValue(cJSON_GetObjectItem(j, "payload")), want), "%s", r.body);
    cJSON_Delete(j);
    resp_free(&r);
    T_CHECK(models_ok(), "after bad JSON");
    return 0;
}

static int t_limits(void) {
    T_CHECK(srv(), "no server");
    resp r;
    /* One 100 KiB header, and 200 headers of 1 KiB: refused (431 or close). */
    size_t cap = 300 * 1024;
    char *req = malloc(cap);
    int n = snprintf(req, cap, "GET /v1/models HTTP/1.1\r\nHost: x\r\n" AUTH "X-Big: ");
    memset(req + n, 'b', 100 * 1024);
    n += 100 * 1024;
    n += snprintf(req + n, cap - (size_t)n, "\r\n\r\n");
    T_CHECK(http_raw(req, (size_t)n, &r) == 0, "big header: timeout");
    T_CHECK(r.status == 0 || r.status == 431 || r.status == 413 || r.status == 400, "big header -> %d", r.status);
    resp_free(&r);
    n = snprintf(req, cap, "GET /v1/models HTTP/1.1\r\nHost: x\r\n" AUTH);
    for (int i = 0; i < 200; i++) {
        n += snprintf(req + n, cap - (size_t)n, "X-H%d: ", i);
        memset(req + n, 'h', 1024);
        n += 1024;
        n += snprintf(req + n, cap - (size_t)n, "\r\n");
    }
    n += snprintf(req + n, cap - (size_t)n, "\r\n");
    T_CHECK(http_raw(req, (size_t)n, &r) == 0, "many headers: timeout");
    T_CHECK(r.status == 0 || r.status == 431 || r.status == 413 || r.status == 400, "many headers -> %d", r.status);
    resp_free(&r);
    T_CHECK(models_ok(), "after big headers");
    /* A 16 KiB header is fine. */
    n = snprintf(req, cap, "GET /v1/models HTTP/1.1\r\nHost: x\r\nConnection: close\r\n" AUTH "X-Mid: ");
    memset(req + n, 'm', 16 * 1024);
    n += 16 * 1024;
    n += snprintf(req + n, cap - (size_t)n, "\r\n\r\n");
    T_CHECK(http_raw(req, (size_t)n, &r) == 0 && r.status == 200, "16 KiB header -> %d", r.status);
    resp_free(&r);

    /* A body announced over the 1 MiB limit: 413 before it is sent. */
    const char big_cl[] = "POST /v1/debug/echo HTTP/1.1\r\nHost: x\r\n" AUTH "Content-Length: 2097152\r\n\r\n";
    T_CHECK(http_raw(big_cl, sizeof(big_cl) - 1, &r) == 0 && r.status == 413, "2 MiB announced -> %d", r.status);
    cJSON *j = cJSON_Parse(r.body);
    T_CHECK(j && json_error_field(j, "message"), "413 body: %s", r.body);
    cJSON_Delete(j);
    resp_free(&r);
    free(req);

    /* A chunked body that grows past the limit: 413 or a closed connection. */
    conn c = {.fd = tcp_connect(g_srv.port)};
    T_CHECK(c.fd >= 0, "connect");
    const char chead[] = "POST /v1/debug/echo HTTP/1.1\r\nHost: x\r\n" AUTH "Transfer-Encoding: chunked\r\n\r\n";
    T_CHECK(send_all(c.fd, chead, sizeof(chead) - 1) == 0, "send");
    static char chunk[64 * 1024 + 16];
    int hl = sprintf(chunk, "10000\r\n");
    memset(chunk + hl, ' ', 65536);
    memcpy(chunk + hl + 65536, "\r\n", 2);
    for (int i = 0; i < 40; i++)
        if (send_all(c.fd, chunk, (size_t)hl + 65538) != 0) break;
    T_CHECK(read_response(&c, &r) == 0, "chunked overflow: timeout");
    T_CHECK(r.status == 0 || r.status == 413, "chunked overflow -> %d", r.status);
    resp_free(&r);
    conn_close(&c);
    T_CHECK(models_ok(), "after big bodies");

    /* Just under the limit (900 KiB of payload) round-trips intact. */
    size_t plen = 900 * 1024;
    char *body = malloc(plen + 64);
    int bn = sprintf(body, "{\"payload\":\"");
    for (size_t i = 0; i < plen; i++) body[bn + (int)i] = (char)('a' + (i * 7) % 26);
    bn += (int)plen;
    bn += sprintf(body + bn, "\"}");
    int rc = http_req("POST", "/v1/debug/echo", AUTH, body, (size_t)bn, &r);
    T_CHECK(rc == 0 && r.status == 200, "900 KiB -> %d", r.status);
    j = cJSON_Parse(r.body);
    const char *got = cJSON_GetStringValue(cJSON_GetObjectItem(j, "payload"));
    T_CHECK(got && strlen(got) == plen && memcmp(got, body + 12, plen) == 0, "900 KiB payload changed");
    cJSON_Delete(j);
    resp_free(&r);
    free(body);
    return 0;
}

/* Half-sent requests do not stop others and are timed out (--timeout 2). */
static int t_stalled(void) {
    T_CHECK(srv(), "no server");
    const char *partial[] = {
        "",                                                                       /* connect, send nothing */
        "GET /v1/models HTTP/1.1\r\nHo",                                          /* half a header */
        "POST /v1/debug/echo HTTP/1.1\r\nHost: x\r\n" AUTH "Content-Length: 100\r\n\r\n{\"pay", /* half a body */
    };
    int fds[3];
    for (int i = 0; i < 3; i++) {
        fds[i] = tcp_connect(g_srv.port);
        T_CHECK(fds[i] >= 0, "connect");
        T_CHECK(send_all(fds[i], partial[i], strlen(partial[i])) == 0, "send");
    }
    T_CHECK(models_ok(), "server blocked by stalled clients");
    resp r;
    T_CHECK(echo("{\"payload\":\"while stalled\"}", &r) == 0 && r.status == 200 && strstr(r.body, "while stalled"),
            "echo -> %d", r.status);
    resp_free(&r);
    /* Each stalled connection is closed by the server (recv gives EOF, or a
     * 408 followed by EOF) well before our 10 s receive timeout. */
    for (int i = 0; i < 3; i++) {
        char buf[4096];
        ssize_t k;
        do k = recv(fds[i], buf, sizeof(buf), 0);
        while (k > 0 && strncmp(buf, "HTTP/1.1 408", 12) == 0 && (k = recv(fds[i], buf, sizeof(buf), 0)) > 0);
        T_CHECK(k == 0 || (k < 0 && errno == ECONNRESET), "stalled connection %d not closed (k=%zd errno=%d)", i, k,
                errno);
        close(fds[i]);
    }
    wstats s;
    T_CHECK(wait_idle(&s) == 0, "worker not idle");
    return 0;
}

/* Back-to-back requests on one connection, then garbage. */
static int t_pipelined(void) {
    T_CHECK(srv(), "no server");
    conn c = {.fd = tcp_connect(g_srv.port)};
    T_CHECK(c.fd >= 0, "connect");
    const char two[] = "GET /v1/models HTTP/1.1\r\nHost: x\r\n" AUTH "\r\n"
                       "POST /v1/debug/echo HTTP/1.1\r\nHost: x\r\n" AUTH "Content-Length: 18\r\n\r\n{\"payload\":\"pipe\"}"
                       "GET /v1/models/" MODEL_ID " HTTP/1.1\r\nHost: x\r\n" AUTH "\r\n"
                       "\x01\x02 THIS IS NOT HTTP\r\n\r\n";
    T_CHECK(send_all(c.fd, two, sizeof(two) - 1) == 0, "send");
    resp r;
    T_CHECK(read_response(&c, &r) == 0 && r.status == 200 && strstr(r.body, "\"object\":\"list\""), "1st: %d", r.status);
    resp_free(&r);
    T_CHECK(read_response(&c, &r) == 0 && r.status == 200 && strstr(r.body, "\"payload\":\"pipe\""), "2nd: %d %s",
            r.status, r.body ? r.body : "");
    resp_free(&r);
    T_CHECK(read_response(&c, &r) == 0 && r.status == 200 && strstr(r.body, "\"id\":\"" MODEL_ID "\""), "3rd: %d",
            r.status);
    resp_free(&r);
    T_CHECK(read_response(&c, &r) == 0, "garbage: timeout");
    T_CHECK(r.status == 0 || (r.status >= 400 && r.status < 500), "garbage -> %d", r.status);
    resp_free(&r);
    conn_close(&c);
    T_CHECK(models_ok(), "after pipelined garbage");
    return 0;
}

/* ---- concurrency -------------------------------------------------------- */

#define N_CLIENTS 20
#define N_EVENTS 4

typedef struct client {
    int idx;
    bool stream;
    char payload[1200];
    pthread_barrier_t *start;
    /* results */
    int status;
    double job;
    char err[256];
} client;

static void *client_main(void *arg) {
    client *cl = arg;
    char body[1600];
    snprintf(body, sizeof(body), "{\"payload\":\"%s\",\"stream\":%s,\"events\":%d,\"delay_ms\":5}", cl->payload,
             cl->stream ? "true" : "false", N_EVENTS);
    pthread_barrier_wait(cl->start);
    resp r;
    if (http_req("POST", "/v1/debug/echo", AUTH, body, strlen(body), &r) != 0) {
        snprintf(cl->err, sizeof(cl->err), "no response");
        resp_free(&r);
        return NULL;
    }
    cl->status = r.status;
    cl->job = -1;
    if (r.status != 200) {
        snprintf(cl->err, sizeof(cl->err), "status %d: %.100s", r.status, r.body ? r.body : "");
    } else if (!cl->stream) {
        cJSON *j = cJSON_Parse(r.body);
        const char *p = cJSON_GetStringValue(cJSON_GetObjectItem(j, "payload"));
        if (!p || strcmp(p, cl->payload) != 0) snprintf(cl->err, sizeof(cl->err), "payload differs: %.100s", r.body);
        else cl->job = cJSON_GetNumberValue(cJSON_GetObjectItem(j, "job"));
        cJSON_Delete(j);
    } else {
        sse s;
        sse_parse(r.body, &s);
        if (s.n != N_EVENTS + 1 || strcmp(s.data[N_EVENTS], "[DONE]") != 0)
            snprintf(cl->err, sizeof(cl->err), "%d events: %.100s", s.n, r.body);
        for (int i = 0; i < N_EVENTS && !cl->err[0] && i < s.n; i++) {
            cJSON *j = cJSON_Parse(s.data[i]);
            const char *p = cJSON_GetStringValue(cJSON_GetObjectItem(j, "payload"));
            double job = cJSON_GetNumberValue(cJSON_GetObjectItem(j, "job"));
            if (!p || strcmp(p, cl->payload) != 0 || cJSON_GetNumberValue(cJSON_GetObjectItem(j, "i")) != i ||
                (i > 0 && job != cl->job))
                snprintf(cl->err, sizeof(cl->err), "event %d wrong: %.100s", i, s.data[i]);
            cl->job = job;
            cJSON_Delete(j);
        }
        sse_free(&s);
    }
    resp_free(&r);
    return NULL;
}

static int t_concurrency(void) {
    T_CHECK(srv(), "no server");
    wstats before, after;
    T_CHECK(wait_idle(&before) == 0, "stats");
    static client cls[N_CLIENTS];
    pthread_t th[N_CLIENTS];
    pthread_barrier_t start;
    pthread_barrier_init(&start, NULL, N_CLIENTS);
    test_rng rng = {0x5eedULL};
    static const char *const pieces[] = {"a", "Z", "7", "\xc3\xa9", "\xe4\xb8\x96", "\xf0\x9f\x98\x80", " ", "-"};
    for (int i = 0; i < N_CLIENTS; i++) {
        client *cl = &cls[i];
        memset(cl, 0, sizeof(*cl));
        cl->idx = i;
        cl->stream = i % 2 == 0;
        cl->start = &start;
        size_t n = (size_t)snprintf(cl->payload, sizeof(cl->payload), "client-%02d:", i);
        while (n + 5 < 1000) {
            const char *p = pieces[test_rng_u64(&rng) % 8];
            memcpy(cl->payload + n, p, strlen(p));
            n += strlen(p);
        }
        cl->payload[n] = '\0';
    }
    for (int i = 0; i < N_CLIENTS; i++) T_CHECK(pthread_create(&th[i], NULL, client_main, &cls[i]) == 0, "thread");
    for (int i = 0; i < N_CLIENTS; i++) pthread_join(th[i], NULL);
    pthread_barrier_destroy(&start);
    for (int i = 0; i < N_CLIENTS; i++) T_CHECK(!cls[i].err[0], "client %d (%s): %s", i, cls[i].stream ? "SSE" : "JSON", cls[i].err);
    /* Every answer came from its own job: 20 distinct job numbers. */
    for (int i = 0; i < N_CLIENTS; i++)
        for (int k = i + 1; k < N_CLIENTS; k++)
            T_CHECK(cls[i].job != cls[k].job, "clients %d and %d share job %.0f", i, k, cls[i].job);
    T_CHECK(wait_idle(&after) == 0, "stats");
    T_CHECK(after.submitted - before.submitted == N_CLIENTS && after.done - before.done == N_CLIENTS,
            "submitted %.0f done %.0f", after.submitted - before.submitted, after.done - before.done);
    return 0;
}

/* ---- disconnects -------------------------------------------------------- */

/* Send an echo request; with wait_headers, read up to the end of the
 * response headers. */
static int start_stream_headers(conn *c, const char *json, bool wait_headers) {
    *c = (conn){.fd = tcp_connect(g_srv.port)};
    if (c->fd < 0) return -1;
    char head[256];
    int n = snprintf(head, sizeof(head), "POST /v1/debug/echo HTTP/1.1\r\nHost: x\r\n" AUTH "Content-Length: %zu\r\n\r\n",
                     strlen(json));
    if (send_all(c->fd, head, (size_t)n) != 0 || send_all(c->fd, json, strlen(json)) != 0) return -1;
    while (wait_headers && !memfind(c->buf ? c->buf : "", c->len, "\r\n\r\n"))
        if (conn_fill(c) <= 0) return -1;
    return 0;
}

/* Start a streamed echo on a fresh connection and read up to its first event. */
static int start_stream(conn *c, const char *json) {
    if (start_stream_headers(c, json, false) != 0) return -1;
    while (!memfind(c->buf ? c->buf : "", c->len, "data: "))
        if (conn_fill(c) <= 0) return -1;
    return 0;
}

static bool log_contains(const char *path, const char *needle) {
    FILE *f = fopen(path, "r");
    if (!f) return false;
    char line[2048];
    bool found = false;
    while (!found && fgets(line, sizeof(line), f)) found = strstr(line, needle) != NULL;
    fclose(f);
    return found;
}

static int poll_stats(wstats *s, int (*cond)(const wstats *, const wstats *), const wstats *base) {
    for (int i = 0; i < 200; i++) {
        if (get_stats(s) == 0 && cond(s, base)) return 0;
        ts_sleep_ms(50);
    }
    return -1;
}

static int one_queued(const wstats *s, const wstats *b) { return s->queued == 1 && s->running; }
static int one_disconnect(const wstats *s, const wstats *b) { return s->disconnects >= b->disconnects + 1; }
static int one_cancelled(const wstats *s, const wstats *b) {
    return s->cancelled >= b->cancelled + 1 && s->queued == 0 && !s->running;
}

static int t_disconnect(void) {
    T_CHECK(srv(), "no server");
    wstats base, s;
    T_CHECK(wait_idle(&base) == 0, "stats");
    /* A: a 20 s stream, read up to its first event. */
    conn a;
    T_CHECK(start_stream(&a, "{\"payload\":\"A\",\"stream\":true,\"events\":1000,\"delay_ms\":20}") == 0, "stream A");
    /* B: queued behind A, then abandoned. */
    int b = tcp_connect(g_srv.port);
    const char breq[] = "POST /v1/debug/echo HTTP/1.1\r\nHost: x\r\n" AUTH "Content-Length: 15\r\n\r\n{\"payload\":\"B\"}";
    T_CHECK(b >= 0 && send_all(b, breq, sizeof(breq) - 1) == 0, "B");
    T_CHECK(poll_stats(&s, one_queued, &base) == 0, "B never queued (queued %.0f running %d)", s.queued, s.running);
    close(b);
    T_CHECK(poll_stats(&s, one_disconnect, &base) == 0, "B's disconnect not seen (%.0f)", s.disconnects);
    /* Closing A cancels the running job; B is skipped, never run. */
    conn_close(&a);
    T_CHECK(poll_stats(&s, one_cancelled, &base) == 0, "A not cancelled (cancelled %.0f running %d)", s.cancelled,
            s.running);
    T_CHECK(s.skipped == base.skipped + 1, "B not skipped (skipped %.0f -> %.0f)", base.skipped, s.skipped);
    T_CHECK(s.done == base.done, "a job ran to the end (%.0f -> %.0f)", base.done, s.done);
    resp r;
    T_CHECK(echo("{\"payload\":\"after\"}", &r) == 0 && r.status == 200 && strstr(r.body, "after"), "echo -> %d",
            r.status);
    resp_free(&r);

    /* A client that stops reading a large stream: the worker gives it up
     * (stall) instead of waiting forever. */
    T_CHECK(wait_idle(&base) == 0, "stats");
    static char big[9000];
    int n = sprintf(big, "{\"payload\":\"");
    memset(big + n, 'x', 8000);
    n += 8000;
    sprintf(big + n, "\",\"stream\":true,\"events\":10000}");
    conn slow;
    T_CHECK(start_stream(&slow, big) == 0, "slow stream");
    T_CHECK(poll_stats(&s, one_cancelled, &base) == 0, "stalled stream not dropped (cancelled %.0f running %d)",
            s.cancelled, s.running);
    conn_close(&slow);
    /* The worker gave up (0.5 s stall), not MHD's 2 s idle timeout. */
    T_CHECK(log_contains(g_srv.log, "client stalled"), "no stall line in the server log");
    T_CHECK(models_ok(), "after disconnects");
    return 0;
}

static int t_keepalive(void) {
    T_CHECK(srv(), "no server");
    resp r;
    /* 3.8 s of "prefill" before the first event, a keep-alive after 3 s of
     * silence: longer than the 2 s idle timeout, which must not cut it. */
    T_CHECK(echo("{\"payload\":\"ka\",\"stream\":true,\"wait_ms\":3800,\"events\":2}", &r) == 0 && r.status == 200,
            "%d", r.status);
    char ct[64] = "";
    T_CHECK(head_value(r.head, "Content-Type", ct, sizeof(ct)) && !strcmp(ct, "text/event-stream"), "%s", r.head);
    sse s;
    sse_parse(r.body, &s);
    T_CHECK(s.comments_before_data >= 1, "no keep-alive comment before the first event:\n%s", r.body);
    T_CHECK(strstr(r.body, ": keep-alive\n\n") != NULL, "%s", r.body);
    T_CHECK(s.n == 3 && !strcmp(s.data[2], "[DONE]"), "%d events", s.n);
    sse_free(&s);
    resp_free(&r);
    /* A plain response that waits longer than the 2 s idle timeout (as a
     * request does behind a long queue) still arrives. */
    T_CHECK(echo("{\"payload\":\"late\",\"wait_ms\":2500}", &r) == 0 && r.status == 200 && strstr(r.body, "late"),
            "late answer: %d", r.status);
    resp_free(&r);
    return 0;
}

/* A stream begun before its job is queued: the headers arrive while the
 * job still waits behind another, then the events follow. */
static int t_early_stream(void) {
    T_CHECK(srv(), "no server");
    wstats base, s;
    T_CHECK(wait_idle(&base) == 0, "stats");
    conn a;
    T_CHECK(start_stream_headers(&a, "{\"payload\":\"A\",\"wait_ms\":1500}", false) == 0, "A");
    for (int i = 0; i < 200 && !(get_stats(&s) == 0 && s.running); i++) ts_sleep_ms(20);
    T_CHECK(s.running, "A never ran");
    conn b;
    T_CHECK(start_stream_headers(&b, "{\"payload\":\"B\",\"stream\":true,\"early\":true,\"events\":2}", true) == 0,
            "B's headers did not arrive");
    T_CHECK(get_stats(&s) == 0 && s.queued == 1 && s.running, "B's headers came after B left the queue");
    T_CHECK(strstr(b.buf, "HTTP/1.1 200") == b.buf && strstr(b.buf, "text/event-stream"), "%s", b.buf);
    resp r;
    T_CHECK(read_response(&a, &r) == 0 && r.status == 200 && strstr(r.body, "\"A\""), "A: %d", r.status);
    resp_free(&r);
    conn_close(&a);
    while (!memfind(b.buf, b.len, "data: [DONE]") && conn_fill(&b) > 0) {}
    int events = 0;
    for (const char *p = b.buf; (p = strstr(p, "\"payload\":\"B\"")); p++) events++;
    bool done = memfind(b.buf, b.len, "data: [DONE]") != NULL;
    conn_close(&b);
    T_CHECK(events == 2 && done, "B: %d events, done %d", events, done);
    return 0;
}

/* SIGTERM: the running stream finishes, the process exits 0 (no leaks). */
static int t_graceful_stop(void) {
    T_CHECK(srv(), "no server");
    conn c;
    T_CHECK(start_stream(&c, "{\"payload\":\"last\",\"stream\":true,\"events\":5,\"delay_ms\":150}") == 0, "stream");
    T_CHECK(kill(g_srv.pid, SIGTERM) == 0, "kill");
    while (!memfind(c.buf, c.len, "data: [DONE]") && conn_fill(&c) > 0) {}
    int events = 0;
    for (const char *p = c.buf; p && (p = strstr(p, "\"payload\":\"last\"")); p++) events++;
    bool done = c.buf && strstr(c.buf, "data: [DONE]");
    conn_close(&c);
    T_CHECK(events == 5 && done, "stream cut at %d events", events);
    int st = ts_wait_exit(g_srv.pid, 30);
    if (st < 0) {
        kill(g_srv.pid, SIGKILL);
        ts_wait_exit(g_srv.pid, 10);
    }
    pid_t pid = g_srv.pid;
    g_srv.pid = 0;
    if (st != 0) ts_print_log(g_srv.log, 4000);
    T_CHECK(st == 0, "server %d exited %d", (int)pid, st);
    /* Nobody listens any more. */
    int fd = tcp_connect(g_srv.port);
    if (fd >= 0) close(fd);
    T_CHECK(fd < 0, "still accepting after exit");
    return 0;
}

/* http_req, retried while the connection is closed unanswered (a server
 * at its connection cap frees slots a moment after clients leave). */
static int http_req_retry(const char *method, const char *path, const char *body, resp *r) {
    for (int i = 0; i < 100; i++) {
        if (http_req(method, path, NULL, body, body ? strlen(body) : 0, r) != 0) return -1;
        if (r->status != 0) return 0;
        resp_free(r);
        ts_sleep_ms(50);
    }
    return 0;
}

/* A second server without debug endpoints or key, two connections at
 * most: 404 for the debug routes, the connection cap, and a second SIGINT
 * during the drain exiting at once. */
static int t_second_server(void) {
    char model[64];
    T_CHECK(make_model(model, sizeof(model)) == 0, "model");
    server s2;
    int rc = server_start(&s2, model, "--port 0 --ctx 16 --max-connections 2 --timeout 30 -q");
    unlink(model);
    T_CHECK(rc == 0, "second server did not start");
    g_target = &s2;
    resp r;
    int fail = 0;
#define S2_CHECK(cond, ...)                          \
    do {                                             \
        if (!(cond)) {                               \
            fprintf(stderr, "    second server: ");  \
            fprintf(stderr, __VA_ARGS__);            \
            fputc('\n', stderr);                     \
            fail = 1;                                \
            goto out;                                \
        }                                            \
    } while (0)
    S2_CHECK(http_req_retry("GET", "/v1/models", NULL, &r) == 0 && r.status == 200, "no key: %d", r.status);
    resp_free(&r);
    S2_CHECK(http_req_retry("POST", "/v1/debug/echo", "{\"payload\":\"x\"}", &r) == 0 && r.status == 404,
             "debug echo without --debug-endpoints: %d", r.status);
    resp_free(&r);
    S2_CHECK(http_req_retry("GET", "/v1/debug/stats", NULL, &r) == 0 && r.status == 404, "stats: %d", r.status);
    resp_free(&r);
    ts_sleep_ms(200); /* let the server release those connections */
    /* Two idle connections fill the cap: a third is closed unanswered. */
    int c1 = tcp_connect(s2.port), c2 = tcp_connect(s2.port);
    S2_CHECK(c1 >= 0 && c2 >= 0, "connect");
    ts_sleep_ms(100);
    int c3 = tcp_connect(s2.port);
    char b;
    ssize_t k = c3 >= 0 ? recv(c3, &b, 1, 0) : 0;
    int e = errno;
    if (c3 >= 0) close(c3);
    S2_CHECK(k == 0 || (k < 0 && e == ECONNRESET), "third connection not refused (k=%zd errno=%d)", k, e);
    close(c1);
    S2_CHECK(http_req_retry("GET", "/v1/models", NULL, &r) == 0 && r.status == 200, "not served after a slot freed");
    resp_free(&r);
    /* A request whose body never comes keeps the drain waiting; a second
     * SIGINT ends the process at once with status 1. */
    const char half[] = "POST /v1/models HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\n{";
    int c4 = -1;
    for (int i = 0; i < 100 && c4 < 0; i++) { /* until the server keeps it open */
        c4 = tcp_connect(s2.port);
        struct pollfd p = {.fd = c4, .events = POLLIN};
        if (c4 >= 0 && (send_all(c4, half, sizeof(half) - 1) != 0 || poll(&p, 1, 200) != 0)) {
            close(c4);
            c4 = -1;
            ts_sleep_ms(50);
        }
    }
    S2_CHECK(c4 >= 0, "half request");
    S2_CHECK(kill(s2.pid, SIGINT) == 0, "kill");
    ts_sleep_ms(300);
    S2_CHECK(kill(s2.pid, SIGINT) == 0, "kill 2");
    int st = ts_wait_exit(s2.pid, 10);
    close(c4);
    close(c2);
    if (st >= 0) s2.pid = 0;
    S2_CHECK(st == 1, "second SIGINT: exit %d", st);
out:
#undef S2_CHECK
    g_target = &g_srv;
    if (s2.pid > 0) {
        kill(s2.pid, SIGKILL);
        ts_wait_exit(s2.pid, 10);
    }
    if (fail) ts_print_log(s2.log, 4000);
    if (!s2.keep_log) unlink(s2.log);
    return fail;
}

void tests_register_server_http(void) {
    test_add("server_http/startup_errors", t_startup_errors);
    test_add("server_http/models", t_models);
    test_add("server_http/auth", t_auth);
    test_add("server_http/cors", t_cors);
    test_add("server_http/routing", t_routing);
    test_add("server_http/malformed", t_malformed);
    test_add("server_http/bad_json", t_bad_json);
    test_add("server_http/limits", t_limits);
    test_add("server_http/stalled", t_stalled);
    test_add("server_http/pipelined", t_pipelined);
    test_add("server_http/concurrency", t_concurrency);
    test_add("server_http/disconnect", t_disconnect);
    test_add("server_http/keepalive", t_keepalive);
    test_add("server_http/early_stream", t_early_stream);
    test_add("server_http/graceful_stop", t_graceful_stop);
    test_add("server_http/second_server", t_second_server);
}
