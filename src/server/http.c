/* http.c - the HTTP core of ds4cl-server on libmicrohttpd (see http.h).
 *
 * MHD runs in thread-per-connection mode with its own polling thread; we
 * bind the listening socket ourselves (so "port in use" is a clear error
 * before the model loads, and port 0 works) and hand it to MHD.  The MHD
 * access handler is called several times per request:
 *
 *   first call    allocate the ds4_http_req, copy method/path/headers, find
 *                 the route, refuse a Content-Length above the body limit
 *                 (413, connection closed without reading the body);
 *   upload calls  append to the body; past the limit (chunked uploads) the
 *                 connection is dropped;
 *   final call    dispatch: OPTIONS, 503 while stopping, auth, 404/405, the
 *                 JSON guard, then the route's handler; then wait for the
 *                 reply and queue it with MHD.
 *
 * The reply lives in the request under its mutex: state PENDING, then
 * COMPLETE (status + body, sent from a buffer) or STREAM (headers now, then
 * a callback response whose reader blocks until bytes, the end, a
 * cancellation or the keep-alive deadline).  Producers (a handler or the
 * worker) append under the mutex and signal; the connection thread drains.
 * The connection thread is the only one that touches MHD objects.
 *
 * MHD measures its idle timeout from the last socket activity, and it checks
 * it right after our callbacks return: after any long wait inside a callback
 * we "touch" the connection (timeout 0, then back), so only a client that
 * really stalls is timed out.
 *
 * Invariants: a request's reply state only moves PENDING -> COMPLETE or
 * PENDING -> STREAM -> ended; a reference is held by whoever may still
 * touch the request (connection until MHD's completion callback, worker
 * while the job is queued or running, the stream response until MHD frees
 * it); when only the connection's reference is left and the reply is still
 * PENDING, nobody will ever answer, so the core answers 500.
 */
#define _GNU_SOURCE /* POLLRDHUP */
#include "http.h"

#include <arpa/inet.h>
#include <errno.h>
#include <microhttpd.h>
#include <netdb.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "json.h"

#define MAX_ROUTES 32
#define POLL_MS 100
#define STREAM_BLOCK (32 * 1024)

typedef struct route {
    char method[8];
    char path[128];
    size_t path_len;
    unsigned flags;
    ds4_http_handler fn;
    void *ctx;
} route;

struct ds4_http {
    ds4_http_opts o;
    char host[256];
    char api_key[512];
    char url[320];
    int listen_fd; /* ours until MHD starts; -1 once MHD owns or closed it */
    int family;
    uint16_t port;
    struct MHD_Daemon *mhd;
    route routes[MAX_ROUTES];
    int n_routes;
    atomic_bool stopping;
    atomic_uint_fast64_t next_id, requests, disconnects;
    atomic_uint active;
};

typedef struct hdr {
    char *name, *value;
} hdr;

enum { R_PENDING, R_COMPLETE, R_STREAM };

struct ds4_http_req {
    ds4_http *h;
    atomic_int refs;
    uint64_t id;
    struct MHD_Connection *conn; /* connection thread only */
    int fd;
    char method[16];
    char *path;
    const char *tail;
    hdr *hdrs;
    size_t n_hdrs;
    char *body;
    size_t body_len, body_cap;
    const route *rt;      /* matching route, else one with the same path, else NULL */
    bool method_ok;
    cJSON *json;
    double t0;
    bool dispatched;
    atomic_bool cancelled, gone;
    /* reply, under mu */
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int state;
    int status;
    char *ctype;
    hdr *rh;
    size_t n_rh;
    char *out;
    size_t out_len, out_off, out_cap;
    bool ended;
    double last_out; /* when the reader last handed bytes to MHD */
    uint64_t sent;
};

/* ---------------------------------------------------------------------- */
/* small helpers                                                          */
/* ---------------------------------------------------------------------- */

static double now_mono(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

void ds4_log(const char *fmt, ...) {
    char line[2048];
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    struct tm tm;
    localtime_r(&ts.tv_sec, &tm);
    int n = (int)strftime(line, sizeof(line), "%Y-%m-%d %H:%M:%S", &tm);
    n += snprintf(line + n, sizeof(line) - (size_t)n, ".%03ld ", ts.tv_nsec / 1000000L);
    va_list ap;
    va_start(ap, fmt);
    int m = vsnprintf(line + n, sizeof(line) - (size_t)n - 1, fmt, ap);
    va_end(ap);
    size_t len = (size_t)n + (m < 0 ? 0 : (size_t)m);
    if (len > sizeof(line) - 2) len = sizeof(line) - 2;
    while (len > 0 && line[len - 1] == '\n') len--;
    line[len++] = '\n';
    fwrite(line, 1, len, stderr);
}

static char *xstrdup(const char *s) {
    size_t n = strlen(s) + 1;
    char *d = malloc(n);
    if (d) memcpy(d, s, n);
    return d;
}

/* Printable copy of s for the log (at most cap-1 bytes). */
static void log_safe(char *dst, size_t cap, const char *s) {
    size_t j = 0;
    for (; s && *s && j + 1 < cap; s++) {
        unsigned char c = (unsigned char)*s;
        dst[j++] = (c < 0x20 || c >= 0x7f) ? '?' : (char)c;
    }
    dst[j] = '\0';
}

static void abs_deadline(struct timespec *ts, double secs) {
    clock_gettime(CLOCK_MONOTONIC, ts);
    double whole = (double)(long)secs;
    ts->tv_sec += (time_t)whole;
    ts->tv_nsec += (long)((secs - whole) * 1e9);
    if (ts->tv_nsec >= 1000000000L) {
        ts->tv_sec++;
        ts->tv_nsec -= 1000000000L;
    }
}

/* Wait on r->cv for at most secs (mutex held). */
static void req_wait(ds4_http_req *r, double secs) {
    struct timespec ts;
    abs_deadline(&ts, secs);
    pthread_cond_timedwait(&r->cv, &r->mu, &ts);
}

/* True when the peer closed or reset the connection. */
static bool peer_closed(int fd) {
    if (fd < 0) return false;
    struct pollfd p = {.fd = fd, .events = POLLIN | POLLRDHUP};
    if (poll(&p, 1, 0) <= 0) return false;
    if (p.revents & (POLLERR | POLLHUP | POLLNVAL | POLLRDHUP)) return true;
    if (p.revents & POLLIN) {
        char c;
        ssize_t n = recv(fd, &c, 1, MSG_PEEK | MSG_DONTWAIT);
        if (n == 0) return true;
        if (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) return true;
    }
    return false;
}

/* Restart MHD's idle clock after a long wait inside one of our callbacks. */
static void touch(ds4_http_req *r) {
    if (!r->conn || r->h->o.timeout_s == 0) return;
    MHD_set_connection_option(r->conn, MHD_CONNECTION_OPTION_TIMEOUT, 0u);
    MHD_set_connection_option(r->conn, MHD_CONNECTION_OPTION_TIMEOUT, (unsigned)r->h->o.timeout_s);
}

/* The client is gone (or stalled): cancel once and count it. */
static void mark_gone(ds4_http_req *r) {
    if (!atomic_exchange(&r->gone, true)) atomic_fetch_add(&r->h->disconnects, 1);
    ds4_http_req_cancel(r);
}

/* ---------------------------------------------------------------------- */
/* options, routes, lifecycle                                             */
/* ---------------------------------------------------------------------- */

void ds4_http_default_opts(ds4_http_opts *o) {
    memset(o, 0, sizeof(*o));
    o->host = "127.0.0.1";
    o->port = 8000;
    o->access_log = true;
    o->max_connections = 64;
    o->timeout_s = 10;
    o->max_header_bytes = 64 * 1024;
    o->max_body_bytes = (size_t)64 << 20;
    o->json_max_depth = DS4_JSON_MAX_DEPTH;
    o->sse_keepalive_s = 5.0;
    o->write_stall_s = 2.0;
    o->sse_buffer_bytes = 1 << 20;
}

static int bind_listen(ds4_http *h, ds4_error *err) {
    const char *host = strcmp(h->host, "localhost") == 0 ? "127.0.0.1" : h->host;
    char port[8];
    snprintf(port, sizeof(port), "%u", (unsigned)h->o.port);
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM,
                             .ai_flags = AI_PASSIVE | AI_NUMERICSERV};
    struct addrinfo *res = NULL;
    int rc = getaddrinfo(host, port, &hints, &res);
    if (rc != 0) return ds4_fail(err, "cannot resolve host '%s': %s", h->host, gai_strerror(rc));
    int last_errno = 0;
    for (struct addrinfo *ai = res; ai; ai = ai->ai_next) {
        int fd = socket(ai->ai_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (fd < 0) {
            last_errno = errno;
            continue;
        }
        int one = 1;
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
        if (ai->ai_family == AF_INET6) setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof(one));
        if (bind(fd, ai->ai_addr, ai->ai_addrlen) == 0 && listen(fd, 128) == 0) {
            h->listen_fd = fd;
            h->family = ai->ai_family;
            break;
        }
        last_errno = errno;
        close(fd);
    }
    freeaddrinfo(res);
    if (h->listen_fd < 0)
        return ds4_fail(err, "cannot listen on %s:%u: %s", h->host, (unsigned)h->o.port, strerror(last_errno));
    struct sockaddr_storage ss;
    socklen_t sl = sizeof(ss);
    char num[INET6_ADDRSTRLEN] = "?";
    if (getsockname(h->listen_fd, (struct sockaddr *)&ss, &sl) == 0) {
        if (ss.ss_family == AF_INET6) {
            struct sockaddr_in6 *a = (struct sockaddr_in6 *)&ss;
            h->port = ntohs(a->sin6_port);
            inet_ntop(AF_INET6, &a->sin6_addr, num, sizeof(num));
        } else {
            struct sockaddr_in *a = (struct sockaddr_in *)&ss;
            h->port = ntohs(a->sin_port);
            inet_ntop(AF_INET, &a->sin_addr, num, sizeof(num));
        }
    }
    snprintf(h->url, sizeof(h->url), h->family == AF_INET6 ? "http://[%s]:%u" : "http://%s:%u", num,
             (unsigned)h->port);
    return 0;
}

int ds4_http_new(ds4_http **out, const ds4_http_opts *o, ds4_error *err) {
    *out = NULL;
    ds4_http *h = calloc(1, sizeof(*h));
    if (!h) return ds4_fail(err, "out of memory");
    h->o = *o;
    h->listen_fd = -1;
    snprintf(h->host, sizeof(h->host), "%s", o->host ? o->host : "127.0.0.1");
    if (o->api_key && strlen(o->api_key) >= sizeof(h->api_key)) {
        free(h);
        return ds4_fail(err, "the API key is longer than %zu bytes", sizeof(h->api_key) - 1);
    }
    snprintf(h->api_key, sizeof(h->api_key), "%s", o->api_key ? o->api_key : "");
    h->o.host = h->host;
    h->o.api_key = h->api_key;
    if (h->o.max_connections == 0) h->o.max_connections = 1;
    if (h->o.json_max_depth == 0) h->o.json_max_depth = DS4_JSON_MAX_DEPTH;
    if (h->o.sse_keepalive_s <= 0) h->o.sse_keepalive_s = 5.0;
    if (h->o.write_stall_s <= 0) h->o.write_stall_s = 2.0;
    if (h->o.sse_buffer_bytes == 0) h->o.sse_buffer_bytes = 1 << 20;
    atomic_init(&h->stopping, false);
    atomic_init(&h->next_id, 1);
    atomic_init(&h->requests, 0);
    atomic_init(&h->disconnects, 0);
    atomic_init(&h->active, 0);
    if (bind_listen(h, err) != 0) {
        free(h);
        return -1;
    }
    *out = h;
    return 0;
}

uint16_t ds4_http_port(const ds4_http *h) { return h->port; }
const char *ds4_http_url(const ds4_http *h) { return h->url; }

int ds4_http_route(ds4_http *h, const char *method, const char *path, unsigned flags, ds4_http_handler fn,
                   void *ctx, ds4_error *err) {
    if (h->mhd) return ds4_fail(err, "routes must be added before the server starts");
    if (h->n_routes == MAX_ROUTES) return ds4_fail(err, "too many routes");
    route *rt = &h->routes[h->n_routes];
    if (strlen(method) >= sizeof(rt->method) || strlen(path) >= sizeof(rt->path) || path[0] != '/')
        return ds4_fail(err, "bad route %s %s", method, path);
    if ((flags & DS4_ROUTE_PREFIX) && path[strlen(path) - 1] != '/')
        return ds4_fail(err, "prefix route %s must end in '/'", path);
    snprintf(rt->method, sizeof(rt->method), "%s", method);
    snprintf(rt->path, sizeof(rt->path), "%s", path);
    rt->path_len = strlen(path);
    rt->flags = flags;
    rt->fn = fn;
    rt->ctx = ctx;
    h->n_routes++;
    return 0;
}

uint32_t ds4_http_active(ds4_http *h) { return atomic_load(&h->active); }

void ds4_http_get_stats(ds4_http *h, ds4_http_stats *s) {
    s->requests = atomic_load(&h->requests);
    s->disconnects = atomic_load(&h->disconnects);
    s->active = atomic_load(&h->active);
}

/* ---------------------------------------------------------------------- */
/* request objects                                                        */
/* ---------------------------------------------------------------------- */

static void free_hdrs(hdr *v, size_t n) {
    for (size_t i = 0; i < n; i++) {
        free(v[i].name);
        free(v[i].value);
    }
    free(v);
}

static void req_free(ds4_http_req *r) {
    free(r->path);
    free_hdrs(r->hdrs, r->n_hdrs);
    free(r->body);
    cJSON_Delete(r->json);
    free(r->ctype);
    free_hdrs(r->rh, r->n_rh);
    free(r->out);
    pthread_mutex_destroy(&r->mu);
    pthread_cond_destroy(&r->cv);
    free(r);
}

void ds4_http_req_ref(ds4_http_req *r) { atomic_fetch_add(&r->refs, 1); }

void ds4_http_req_unref(ds4_http_req *r) {
    if (r && atomic_fetch_sub(&r->refs, 1) == 1) req_free(r);
}

typedef struct hdr_collect {
    ds4_http_req *r;
    bool oom;
} hdr_collect;

static enum MHD_Result collect_header(void *cls, enum MHD_ValueKind kind, const char *key, const char *value) {
    hdr_collect *hc = cls;
    ds4_http_req *r = hc->r;
    hdr *v = realloc(r->hdrs, (r->n_hdrs + 1) * sizeof(*v));
    if (!v) {
        hc->oom = true;
        return MHD_NO;
    }
    r->hdrs = v;
    v[r->n_hdrs].name = xstrdup(key ? key : "");
    v[r->n_hdrs].value = xstrdup(value ? value : "");
    if (!v[r->n_hdrs].name || !v[r->n_hdrs].value) {
        free(v[r->n_hdrs].name);
        free(v[r->n_hdrs].value);
        hc->oom = true;
        return MHD_NO;
    }
    r->n_hdrs++;
    return MHD_YES;
}

/* The route for r's path and method (r->rt, r->method_ok, r->tail). */
static void find_route(ds4_http *h, ds4_http_req *r) {
    const char *m = strcmp(r->method, "HEAD") == 0 ? "GET" : r->method;
    for (int i = 0; i < h->n_routes; i++) {
        const route *rt = &h->routes[i];
        bool path_ok = (rt->flags & DS4_ROUTE_PREFIX) ? strncmp(r->path, rt->path, rt->path_len) == 0
                                                      : strcmp(r->path, rt->path) == 0;
        if (!path_ok) continue;
        bool mok = strcmp(rt->method, m) == 0;
        if (!r->rt || (mok && !r->method_ok)) {
            r->rt = rt;
            r->method_ok = mok;
            r->tail = (rt->flags & DS4_ROUTE_PREFIX) ? r->path + rt->path_len : "";
        }
    }
}

static ds4_http_req *req_new(ds4_http *h, struct MHD_Connection *c, const char *url, const char *method) {
    ds4_http_req *r = calloc(1, sizeof(*r));
    if (!r) return NULL;
    r->h = h;
    atomic_init(&r->refs, 1);
    atomic_init(&r->cancelled, false);
    atomic_init(&r->gone, false);
    r->id = atomic_fetch_add(&h->next_id, 1);
    r->conn = c;
    const union MHD_ConnectionInfo *ci = MHD_get_connection_info(c, MHD_CONNECTION_INFO_CONNECTION_FD);
    r->fd = ci ? ci->connect_fd : -1;
    snprintf(r->method, sizeof(r->method), "%s", method ? method : "");
    r->path = xstrdup(url ? url : "");
    r->tail = "";
    r->t0 = now_mono();
    r->last_out = r->t0;
    pthread_mutex_init(&r->mu, NULL);
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&r->cv, &ca);
    pthread_condattr_destroy(&ca);
    hdr_collect hc = {.r = r};
    MHD_get_connection_values(c, MHD_HEADER_KIND, collect_header, &hc);
    if (!r->path || hc.oom) {
        req_free(r);
        return NULL;
    }
    find_route(h, r);
    return r;
}

uint64_t ds4_http_req_id(const ds4_http_req *r) { return r->id; }
const char *ds4_http_req_method(const ds4_http_req *r) { return r->method; }
const char *ds4_http_req_path(const ds4_http_req *r) { return r->path; }
const char *ds4_http_req_tail(const ds4_http_req *r) { return r->tail; }
const cJSON *ds4_http_req_json(const ds4_http_req *r) { return r->json; }
bool ds4_http_req_cancelled(const ds4_http_req *r) { return atomic_load(&r->cancelled); }
double ds4_http_req_age(const ds4_http_req *r) { return now_mono() - r->t0; }

const char *ds4_http_req_header(const ds4_http_req *r, const char *name) {
    for (size_t i = 0; i < r->n_hdrs; i++)
        if (strcasecmp(r->hdrs[i].name, name) == 0) return r->hdrs[i].value;
    return NULL;
}

const char *ds4_http_req_body(const ds4_http_req *r, size_t *len) {
    *len = r->body_len;
    return r->body ? r->body : "";
}

void ds4_http_req_cancel(ds4_http_req *r) {
    pthread_mutex_lock(&r->mu);
    atomic_store(&r->cancelled, true);
    pthread_cond_broadcast(&r->cv);
    pthread_mutex_unlock(&r->mu);
}

/* Append n body bytes, keeping a NUL after them; -1 past the limit. */
static int body_append(ds4_http_req *r, const char *data, size_t n) {
    size_t max = r->h->o.max_body_bytes;
    if (n > max - r->body_len) return -1;
    size_t need = r->body_len + n + 1;
    if (need > r->body_cap) {
        size_t cap = r->body_cap ? r->body_cap : 4096;
        while (cap < need) cap = cap > max / 2 ? max + 1 : cap * 2;
        char *b = realloc(r->body, cap);
        if (!b) return -1;
        r->body = b;
        r->body_cap = cap;
    }
    memcpy(r->body + r->body_len, data, n);
    r->body_len += n;
    r->body[r->body_len] = '\0';
    return 0;
}

/* ---------------------------------------------------------------------- */
/* replies                                                                */
/* ---------------------------------------------------------------------- */

bool ds4_http_replied(ds4_http_req *r) {
    pthread_mutex_lock(&r->mu);
    bool done = r->state != R_PENDING;
    pthread_mutex_unlock(&r->mu);
    return done;
}

static bool header_value_ok(const char *s) {
    for (; *s; s++)
        if (*s == '\r' || *s == '\n') return false;
    return true;
}

int ds4_http_add_header(ds4_http_req *r, const char *name, const char *value) {
    if (!header_value_ok(name) || !header_value_ok(value)) return -1;
    pthread_mutex_lock(&r->mu);
    int rc = -1;
    if (r->state == R_PENDING) {
        hdr *v = realloc(r->rh, (r->n_rh + 1) * sizeof(*v));
        if (v) {
            r->rh = v;
            v[r->n_rh].name = xstrdup(name);
            v[r->n_rh].value = xstrdup(value);
            if (v[r->n_rh].name && v[r->n_rh].value) {
                r->n_rh++;
                rc = 0;
            } else {
                free(v[r->n_rh].name);
                free(v[r->n_rh].value);
            }
        }
    }
    pthread_mutex_unlock(&r->mu);
    return rc;
}

/* Make room for n more output bytes (mutex held). */
static int out_reserve(ds4_http_req *r, size_t n) {
    if (r->out_off > 0 && r->out_off == r->out_len) r->out_off = r->out_len = 0;
    if (r->out_off > 0 && r->out_len + n > r->out_cap) {
        memmove(r->out, r->out + r->out_off, r->out_len - r->out_off);
        r->out_len -= r->out_off;
        r->out_off = 0;
    }
    if (r->out_len + n <= r->out_cap) return 0;
    size_t cap = r->out_cap ? r->out_cap : 4096;
    while (cap < r->out_len + n) cap *= 2;
    char *b = realloc(r->out, cap);
    if (!b) return -1;
    r->out = b;
    r->out_cap = cap;
    return 0;
}

int ds4_http_reply(ds4_http_req *r, int status, const char *content_type, const void *body, size_t len) {
    pthread_mutex_lock(&r->mu);
    int rc = -1;
    char *ct = xstrdup(content_type ? content_type : "application/json");
    if (r->state == R_PENDING && !atomic_load(&r->cancelled) && ct && out_reserve(r, len + 1) == 0) {
        if (len) memcpy(r->out, body, len);
        r->out_len = len;
        r->status = status;
        r->ctype = ct;
        ct = NULL;
        r->state = R_COMPLETE;
        pthread_cond_broadcast(&r->cv);
        rc = 0;
    }
    pthread_mutex_unlock(&r->mu);
    free(ct);
    return rc;
}

int ds4_http_reply_json(ds4_http_req *r, int status, const cJSON *json) {
    char *s = cJSON_PrintUnformatted(json);
    if (!s) return -1;
    int rc = ds4_http_reply(r, status, "application/json", s, strlen(s));
    cJSON_free(s);
    return rc;
}

static bool anthropic_style(const ds4_http_req *r) { return r->rt && (r->rt->flags & DS4_ROUTE_ANTHROPIC); }

static const char *error_type(int status, bool anthropic) {
    switch (status) {
    case 401: return "authentication_error";
    case 403: return "permission_error";
    case 404: return anthropic ? "not_found_error" : "invalid_request_error";
    case 413: return anthropic ? "request_too_large" : "invalid_request_error";
    case 429: return "rate_limit_error";
    case 503: return anthropic ? "overloaded_error" : "server_error";
    default: break;
    }
    if (status >= 500) return anthropic ? "api_error" : "server_error";
    return "invalid_request_error";
}

cJSON *ds4_http_error_object(const ds4_http_req *r, int status, const char *code, const char *msg) {
    bool anth = anthropic_style(r);
    cJSON *root = cJSON_CreateObject();
    cJSON *e = cJSON_CreateObject();
    if (!root || !e) {
        cJSON_Delete(root);
        cJSON_Delete(e);
        return NULL;
    }
    if (anth) cJSON_AddStringToObject(root, "type", "error");
    cJSON_AddItemToObject(root, "error", e);
    if (anth) cJSON_AddStringToObject(e, "type", error_type(status, true));
    cJSON_AddStringToObject(e, "message", msg);
    if (!anth) {
        cJSON_AddStringToObject(e, "type", error_type(status, false));
        cJSON_AddNullToObject(e, "param");
        if (code) cJSON_AddStringToObject(e, "code", code);
        else cJSON_AddNullToObject(e, "code");
    }
    return root;
}

int ds4_http_error(ds4_http_req *r, int status, const char *code, const char *fmt, ...) {
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    /* Messages may quote client bytes: keep the JSON valid UTF-8. */
    if (!ds4_utf8_valid(msg, strlen(msg)))
        for (char *p = msg; *p; p++)
            if ((unsigned char)*p >= 0x80) *p = '?';
    cJSON *j = ds4_http_error_object(r, status, code, msg);
    if (!j) return -1;
    int rc = ds4_http_reply_json(r, status, j);
    cJSON_Delete(j);
    return rc;
}

int ds4_http_sse_begin(ds4_http_req *r) {
    pthread_mutex_lock(&r->mu);
    int rc = -1;
    char *ct = xstrdup("text/event-stream");
    if (r->state == R_PENDING && !atomic_load(&r->cancelled) && ct) {
        r->status = 200;
        r->ctype = ct;
        ct = NULL;
        r->state = R_STREAM;
        pthread_cond_broadcast(&r->cv);
        rc = 0;
    }
    pthread_mutex_unlock(&r->mu);
    free(ct);
    return rc;
}

/* Append parts to the stream; waits while the client lags more than the
 * buffer allows, and gives the client up after write_stall_s. */
static int stream_write(ds4_http_req *r, const char *const *parts, const size_t *lens, int n) {
    size_t total = 0;
    for (int i = 0; i < n; i++) total += lens[i];
    ds4_http *h = r->h;
    pthread_mutex_lock(&r->mu);
    int rc = -1;
    double deadline = now_mono() + h->o.write_stall_s;
    bool stalled = false;
    for (;;) {
        if (r->state != R_STREAM || r->ended || atomic_load(&r->cancelled)) goto out;
        size_t pending = r->out_len - r->out_off;
        if (pending == 0 || pending + total <= h->o.sse_buffer_bytes) break;
        double left = deadline - now_mono();
        if (left <= 0) {
            stalled = true;
            goto out;
        }
        req_wait(r, left < 0.1 ? left : 0.1);
    }
    if (out_reserve(r, total) != 0) goto out;
    for (int i = 0; i < n; i++) {
        memcpy(r->out + r->out_len, parts[i], lens[i]);
        r->out_len += lens[i];
    }
    pthread_cond_broadcast(&r->cv);
    rc = 0;
out:
    pthread_mutex_unlock(&r->mu);
    if (stalled) {
        ds4_log("#%llu client stalled for %.1f s: stream dropped", (unsigned long long)r->id, h->o.write_stall_s);
        mark_gone(r);
    }
    return rc;
}

int ds4_http_sse_event(ds4_http_req *r, const char *event, const char *data, size_t len) {
    /* Worst case every byte is a newline that becomes "\ndata: ". */
    size_t cap = (event ? strlen(event) + 8 : 0) + len * 7 + 16;
    char *buf = malloc(cap);
    if (!buf) return -1;
    size_t n = 0;
    if (event) n += (size_t)snprintf(buf, cap, "event: %s\n", event);
    memcpy(buf + n, "data: ", 6);
    n += 6;
    for (size_t i = 0; i < len; i++) {
        if (data[i] == '\r' && i + 1 < len && data[i + 1] == '\n') continue;
        if (data[i] == '\n' || data[i] == '\r') {
            memcpy(buf + n, "\ndata: ", 7);
            n += 7;
        } else {
            buf[n++] = data[i];
        }
    }
    buf[n++] = '\n';
    buf[n++] = '\n';
    const char *parts[1] = {buf};
    size_t lens[1] = {n};
    int rc = stream_write(r, parts, lens, 1);
    free(buf);
    return rc;
}

int ds4_http_sse_json(ds4_http_req *r, const char *event, const cJSON *json) {
    char *s = cJSON_PrintUnformatted(json);
    if (!s) return -1;
    int rc = ds4_http_sse_event(r, event, s, strlen(s));
    cJSON_free(s);
    return rc;
}

int ds4_http_sse_comment(ds4_http_req *r, const char *text) {
    if (!header_value_ok(text)) return -1;
    const char *parts[3] = {": ", text, "\n\n"};
    size_t lens[3] = {2, strlen(text), 2};
    return stream_write(r, parts, lens, 3);
}

int ds4_http_sse_end(ds4_http_req *r) {
    pthread_mutex_lock(&r->mu);
    int rc = -1;
    if (r->state == R_STREAM && !r->ended) {
        r->ended = true;
        pthread_cond_broadcast(&r->cv);
        rc = atomic_load(&r->cancelled) ? -1 : 0;
    }
    pthread_mutex_unlock(&r->mu);
    return rc;
}

void ds4_http_req_finish(ds4_http_req *r) {
    pthread_mutex_lock(&r->mu);
    int state = r->state;
    if (state == R_STREAM && !r->ended) {
        r->ended = true;
        pthread_cond_broadcast(&r->cv);
    }
    pthread_mutex_unlock(&r->mu);
    if (state == R_PENDING && !ds4_http_req_cancelled(r))
        ds4_http_error(r, 500, NULL, "the request ended without a response");
}

/* ---------------------------------------------------------------------- */
/* MHD side: delivering replies                                           */
/* ---------------------------------------------------------------------- */

/* Header characters we echo back from Access-Control-Request-Headers. */
static bool token_list_ok(const char *s) {
    if (!*s || strlen(s) > 1024) return false;
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        if (!(c == ',' || c == ' ' || c == '-' || c == '_' || c == '.' || (c >= '0' && c <= '9') ||
              (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z')))
            return false;
    }
    return true;
}

static void add_common_headers(ds4_http_req *r, struct MHD_Response *resp) {
    for (size_t i = 0; i < r->n_rh; i++) MHD_add_response_header(resp, r->rh[i].name, r->rh[i].value);
    if (!r->h->o.cors) return;
    MHD_add_response_header(resp, "Access-Control-Allow-Origin", "*");
    MHD_add_response_header(resp, "Access-Control-Allow-Methods", "GET, POST, OPTIONS");
    const char *want = ds4_http_req_header(r, "Access-Control-Request-Headers");
    MHD_add_response_header(resp, "Access-Control-Allow-Headers", want && token_list_ok(want) ? want : "*");
    if (strcmp(r->method, "OPTIONS") == 0) MHD_add_response_header(resp, "Access-Control-Max-Age", "86400");
}

static ssize_t stream_read(void *cls, uint64_t pos, char *buf, size_t max) {
    ds4_http_req *r = cls;
    ds4_http *h = r->h;
    ssize_t ret;
    bool waited = false;
    pthread_mutex_lock(&r->mu);
    for (;;) {
        if (r->out_len > r->out_off) {
            size_t n = r->out_len - r->out_off;
            if (n > max) n = max;
            memcpy(buf, r->out + r->out_off, n);
            r->out_off += n;
            if (r->out_off == r->out_len) r->out_off = r->out_len = 0;
            pthread_cond_broadcast(&r->cv);
            ret = (ssize_t)n;
            break;
        }
        if (atomic_load(&r->cancelled)) {
            ret = MHD_CONTENT_READER_END_WITH_ERROR;
            break;
        }
        if (r->ended) {
            ret = MHD_CONTENT_READER_END_OF_STREAM;
            break;
        }
        double idle = now_mono() - r->last_out;
        static const char ka[] = ": keep-alive\n\n";
        if (idle >= h->o.sse_keepalive_s && max >= sizeof(ka) - 1) {
            memcpy(buf, ka, sizeof(ka) - 1);
            ret = (ssize_t)(sizeof(ka) - 1);
            break;
        }
        double left = h->o.sse_keepalive_s - idle;
        req_wait(r, left < POLL_MS / 1000.0 ? left : POLL_MS / 1000.0);
        waited = true;
        if (r->out_len == r->out_off && !r->ended && !atomic_load(&r->cancelled)) {
            pthread_mutex_unlock(&r->mu);
            if (peer_closed(r->fd)) mark_gone(r);
            pthread_mutex_lock(&r->mu);
        }
    }
    if (ret > 0) {
        r->sent += (uint64_t)ret;
        r->last_out = now_mono();
    }
    pthread_mutex_unlock(&r->mu);
    if (waited) touch(r);
    return ret;
}

static void stream_free(void *cls) { ds4_http_req_unref(cls); }

/* Wait for the reply to r (final call) and queue it with MHD. */
static enum MHD_Result deliver(ds4_http_req *r, struct MHD_Connection *c) {
    bool waited = false;
    pthread_mutex_lock(&r->mu);
    while (r->state == R_PENDING) {
        if (atomic_load(&r->cancelled)) {
            pthread_mutex_unlock(&r->mu);
            return MHD_NO; /* the client is gone: drop the connection */
        }
        if (atomic_load(&r->refs) == 1) {
            /* Nobody else holds the request: nobody will answer it. */
            pthread_mutex_unlock(&r->mu);
            ds4_log("#%llu %s %s: the handler gave no response", (unsigned long long)r->id, r->method,
                    r->rt ? r->rt->path : "?");
            ds4_http_error(r, 500, NULL, "the request ended without a response");
            pthread_mutex_lock(&r->mu);
            continue;
        }
        req_wait(r, POLL_MS / 1000.0);
        waited = true;
        if (r->state == R_PENDING) {
            pthread_mutex_unlock(&r->mu);
            if (peer_closed(r->fd)) mark_gone(r);
            pthread_mutex_lock(&r->mu);
        }
    }
    if (r->state == R_STREAM && !r->ended && atomic_load(&r->refs) == 1) {
        /* A handler began a stream and kept no reference: nobody can end it. */
        ds4_log("#%llu: a stream was begun but nobody holds it: ended", (unsigned long long)r->id);
        r->ended = true;
    }
    struct MHD_Response *resp;
    if (r->state == R_COMPLETE) {
        resp = MHD_create_response_from_buffer(r->out_len, r->out, MHD_RESPMEM_MUST_COPY);
        r->sent = r->out_len;
    } else {
        resp = MHD_create_response_from_callback(MHD_SIZE_UNKNOWN, STREAM_BLOCK, stream_read, r, stream_free);
        if (resp) {
            ds4_http_req_ref(r);
            MHD_add_response_header(resp, "Cache-Control", "no-cache");
            MHD_add_response_header(resp, "X-Accel-Buffering", "no");
        }
        r->last_out = now_mono();
    }
    if (resp) {
        if (r->status != 204) MHD_add_response_header(resp, "Content-Type", r->ctype ? r->ctype : "application/json");
        add_common_headers(r, resp);
    }
    int status = r->status;
    pthread_mutex_unlock(&r->mu);
    if (waited) touch(r);
    if (!resp) return MHD_NO;
    enum MHD_Result rc = MHD_queue_response(c, (unsigned)status, resp);
    MHD_destroy_response(resp);
    return rc;
}

/* ---------------------------------------------------------------------- */
/* MHD side: dispatch                                                     */
/* ---------------------------------------------------------------------- */

/* Constant-time equality of a presented key and the configured one. */
static bool key_equal(const char *given, const char *want) {
    size_t a = strlen(given), b = strlen(want);
    unsigned char diff = (unsigned char)(a != b);
    for (size_t i = 0; i < b; i++) diff |= (unsigned char)(given[i < a ? i : 0] ^ want[i]);
    return diff == 0 && a > 0;
}

static bool auth_ok(ds4_http *h, const ds4_http_req *r) {
    if (!h->api_key[0]) return true;
    const char *x = ds4_http_req_header(r, "x-api-key");
    if (x && key_equal(x, h->api_key)) return true;
    const char *a = ds4_http_req_header(r, "Authorization");
    if (a && strncasecmp(a, "Bearer", 6) == 0 && (a[6] == ' ' || a[6] == '\t')) {
        a += 6;
        while (*a == ' ' || *a == '\t') a++;
        size_t n = strlen(a);
        while (n > 0 && (a[n - 1] == ' ' || a[n - 1] == '\t')) n--;
        char key[sizeof(h->api_key)];
        if (n < sizeof(key)) {
            memcpy(key, a, n);
            key[n] = '\0';
            return key_equal(key, h->api_key);
        }
    }
    return false;
}

static void allow_header(ds4_http *h, ds4_http_req *r) {
    char allow[128] = "";
    size_t n = 0;
    for (int i = 0; i < h->n_routes; i++) {
        const route *rt = &h->routes[i];
        bool same = (rt->flags & DS4_ROUTE_PREFIX) ? strncmp(r->path, rt->path, rt->path_len) == 0
                                                   : strcmp(r->path, rt->path) == 0;
        if (!same || strstr(allow, rt->method) || n + strlen(rt->method) + 3 >= sizeof(allow) - 9) continue;
        n += (size_t)snprintf(allow + n, sizeof(allow) - n, "%s, ", rt->method);
    }
    snprintf(allow + n, sizeof(allow) - n, "OPTIONS");
    ds4_http_add_header(r, "Allow", allow);
}

static void dispatch(ds4_http *h, ds4_http_req *r) {
    atomic_fetch_add(&h->requests, 1);
    char path[256];
    log_safe(path, sizeof(path), r->path);
    if (strcmp(r->method, "OPTIONS") == 0) {
        ds4_http_reply(r, 204, NULL, "", 0);
        return;
    }
    if (atomic_load(&h->stopping)) {
        ds4_http_add_header(r, "Connection", "close");
        ds4_http_error(r, 503, NULL, "the server is shutting down");
        return;
    }
    if (!(r->rt && (r->rt->flags & DS4_ROUTE_PUBLIC)) && !auth_ok(h, r)) {
        ds4_http_add_header(r, "WWW-Authenticate", "Bearer");
        ds4_http_error(r, 401, "invalid_api_key",
                       "missing or invalid API key (send 'Authorization: Bearer KEY' or 'x-api-key: KEY')");
        return;
    }
    if (!r->rt) {
        ds4_http_error(r, 404, "unknown_endpoint", "unknown endpoint: %s %s", r->method, path);
        return;
    }
    if (!r->method_ok) {
        allow_header(h, r);
        ds4_http_error(r, 405, "method_not_allowed", "method %s is not allowed on %s", r->method, path);
        return;
    }
    if (r->rt->flags & DS4_ROUTE_JSON) {
        ds4_error err = {{0}};
        if (ds4_json_parse(r->body ? r->body : "", r->body_len, h->o.json_max_depth, &r->json, &err) != 0) {
            ds4_http_error(r, 400, "invalid_json", "invalid JSON body: %s", err.msg);
            return;
        }
    }
    r->rt->fn(r, r->rt->ctx);
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *c, const char *url, const char *method,
                                  const char *version, const char *upload, size_t *upload_size, void **req_cls) {
    ds4_http *h = cls;
    ds4_http_req *r = *req_cls;
    if (!r) {
        r = req_new(h, c, url, method);
        if (!r) return MHD_NO;
        *req_cls = r;
        atomic_fetch_add(&h->active, 1);
        const char *cl = MHD_lookup_connection_value(c, MHD_HEADER_KIND, MHD_HTTP_HEADER_CONTENT_LENGTH);
        size_t n_cl = 0;
        for (size_t i = 0; i < r->n_hdrs; i++) n_cl += strcasecmp(r->hdrs[i].name, "Content-Length") == 0;
        if (n_cl > 1) { /* MHD uses the first: refuse what a proxy might read differently */
            atomic_fetch_add(&h->requests, 1);
            ds4_http_add_header(r, "Connection", "close");
            ds4_http_error(r, 400, "bad_request", "more than one Content-Length header");
            return deliver(r, c);
        }
        if (cl) {
            char *end = NULL;
            errno = 0;
            unsigned long long v = strtoull(cl, &end, 10);
            if (errno || end == cl || v > h->o.max_body_bytes) {
                atomic_fetch_add(&h->requests, 1);
                ds4_http_add_header(r, "Connection", "close");
                ds4_http_error(r, 413, "request_too_large", "request body larger than %zu bytes",
                               h->o.max_body_bytes);
                return deliver(r, c);
            }
            /* Room for the announced body up front (a wrong length only
             * costs a realloc: MHD enforces the real one). */
            char *b = v > 0 ? malloc((size_t)v + 1) : NULL;
            if (b) {
                b[0] = '\0';
                r->body = b;
                r->body_cap = (size_t)v + 1;
            }
        }
        return MHD_YES;
    }
    if (*upload_size) {
        if (r->state != R_PENDING) { /* already refused: discard */
            *upload_size = 0;
            return MHD_YES;
        }
        if (body_append(r, upload, *upload_size) != 0) {
            char path[256];
            log_safe(path, sizeof(path), r->path);
            ds4_log("#%llu %s %s: body over %zu bytes, connection dropped", (unsigned long long)r->id, r->method,
                    path, h->o.max_body_bytes);
            return MHD_NO;
        }
        *upload_size = 0;
        return MHD_YES;
    }
    if (!r->dispatched) {
        r->dispatched = true;
        dispatch(h, r);
    }
    return deliver(r, c);
}

static void on_completed(void *cls, struct MHD_Connection *c, void **req_cls, enum MHD_RequestTerminationCode toe) {
    ds4_http *h = cls;
    ds4_http_req *r = *req_cls;
    if (!r) return;
    *req_cls = NULL;
    pthread_mutex_lock(&r->mu);
    bool finished = r->state == R_COMPLETE || (r->state == R_STREAM && r->ended && r->out_len == r->out_off);
    r->conn = NULL;
    int status = r->status;
    uint64_t sent = r->sent;
    pthread_mutex_unlock(&r->mu);
    if (toe != MHD_REQUEST_TERMINATED_COMPLETED_OK && !(finished && toe == MHD_REQUEST_TERMINATED_DAEMON_SHUTDOWN))
        mark_gone(r);
    if (h->o.access_log) {
        char path[256];
        log_safe(path, sizeof(path), r->path);
        char st[8] = "-";
        if (status) snprintf(st, sizeof(st), "%d", status);
        ds4_log("#%llu %s %s %s %llu B %.1f ms%s", (unsigned long long)r->id, r->method, path, st,
                (unsigned long long)sent, ds4_http_req_age(r) * 1e3,
                atomic_load(&r->gone) ? " (client gone)" : "");
    }
    atomic_fetch_sub(&h->active, 1);
    ds4_http_req_unref(r);
}

static int hexval(char c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

/* Percent-decoding of the path and query, in place, except that %00 stays
 * as written: a decoded NUL would silently cut the path short
 * ("/v1/models%00junk" must not reach the /v1/models handler). */
static size_t unescape_no_nul(void *cls, struct MHD_Connection *c, char *s) {
    char *w = s;
    const char *p = s;
    while (*p) {
        if (p[0] == '%' && hexval(p[1]) >= 0 && hexval(p[2]) >= 0) {
            int v = hexval(p[1]) * 16 + hexval(p[2]);
            if (v != 0) {
                *w++ = (char)v;
                p += 3;
                continue;
            }
        }
        *w++ = *p++;
    }
    *w = '\0';
    return (size_t)(w - s);
}

static void mhd_logger(void *cls, const char *fmt, va_list ap) {
    char buf[512];
    vsnprintf(buf, sizeof(buf), fmt, ap);
    ds4_log("mhd: %s", buf);
}

int ds4_http_start(ds4_http *h, ds4_error *err) {
    if (h->mhd) return ds4_fail(err, "server already started");
    unsigned flags = MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_THREAD_PER_CONNECTION | MHD_USE_POLL |
                     MHD_USE_ITC | MHD_USE_ERROR_LOG;
    if (h->family == AF_INET6) flags |= MHD_USE_IPv6;
    h->mhd = MHD_start_daemon(
        flags, 0, NULL, NULL, on_request, h,
        MHD_OPTION_EXTERNAL_LOGGER, mhd_logger, h,
        MHD_OPTION_LISTEN_SOCKET, h->listen_fd,
        MHD_OPTION_CONNECTION_LIMIT, (unsigned)h->o.max_connections,
        MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)h->o.timeout_s,
        MHD_OPTION_CONNECTION_MEMORY_LIMIT, (size_t)h->o.max_header_bytes + 8192,
        MHD_OPTION_NOTIFY_COMPLETED, on_completed, h,
        MHD_OPTION_UNESCAPE_CALLBACK, unescape_no_nul, h,
        MHD_OPTION_END);
    if (!h->mhd) return ds4_fail(err, "libmicrohttpd failed to start on %s", h->url);
    h->listen_fd = -1; /* MHD closes it at stop */
    return 0;
}

void ds4_http_quiesce(ds4_http *h) {
    atomic_store(&h->stopping, true);
    if (!h->mhd) return;
    MHD_socket fd = MHD_quiesce_daemon(h->mhd);
    if (fd != MHD_INVALID_SOCKET) close(fd);
}

void ds4_http_stop(ds4_http *h) {
    atomic_store(&h->stopping, true);
    if (h->mhd) MHD_stop_daemon(h->mhd);
    h->mhd = NULL;
}

void ds4_http_free(ds4_http *h) {
    if (!h) return;
    ds4_http_stop(h);
    if (h->listen_fd >= 0) close(h->listen_fd);
    free(h);
}
