/* http.h - the HTTP core of ds4cl-server, on libmicrohttpd.
 *
 * libmicrohttpd (MHD) parses HTTP and owns the sockets; this layer adds what
 * every endpoint shares: a route table, API-key auth, CORS, size limits, a
 * guarded JSON body, the error shapes, and a reply object that a handler can
 * fill from any thread: either one complete response, or an SSE stream
 * whose events go out as they are written.
 *
 * Threads.  MHD runs one thread per connection (bounded by
 * max_connections).  A handler is called on that thread with the whole
 * request read; handlers of different requests run concurrently, so what
 * they share must be read-only or locked.  A handler either answers at once
 * (ds4_http_reply*, ds4_http_error) or hands the request to the inference
 * worker (worker.h), which answers later from its own thread.  Meanwhile
 * the connection thread waits for the reply and, every 100 ms, looks
 * whether the client went away (closed, reset, or half-closed its sending
 * side); if so the request is marked cancelled (ds4_http_req_cancelled),
 * which a worker job checks between tokens.  During an SSE stream the
 * connection thread sends what the worker wrote, and a ": keep-alive"
 * comment whenever nothing was written for sse_keepalive_s.  A handler may
 * call ds4_http_sse_begin before submitting the job, so the headers and the
 * keep-alives flow while the job still waits in the queue.  A stream whose
 * client does not read (more than sse_buffer_bytes pending for
 * write_stall_s) is cancelled rather than stalling the worker.
 *
 * Lifetime.  A request is reference counted: the connection holds one
 * reference until MHD is done with it, a worker job takes another
 * (ds4_http_req_ref) while it is queued or running.  Every reply function
 * may be called after the client is gone: it then does nothing and returns
 * -1.  A request gets exactly one reply: the first reply or ds4_http_sse_begin
 * wins, later ones return -1.
 *
 * Routes are registered before ds4_http_start and never change afterwards.
 * Errors produced here (401, 404, 405, 413, 400 for bad JSON, 503 while
 * stopping) use the OpenAI shape {"error":{"message","type","param","code"}},
 * or the Anthropic shape {"type":"error","error":{"type","message"}} on
 * routes registered with DS4_ROUTE_ANTHROPIC.
 */
#ifndef DS4_SERVER_HTTP_H
#define DS4_SERVER_HTTP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <cjson/cJSON.h>

#include "error.h"

typedef struct ds4_http ds4_http;
typedef struct ds4_http_req ds4_http_req;

typedef struct ds4_http_opts {
    const char *host;          /* IPv4/IPv6 literal or name; "localhost" = 127.0.0.1 */
    uint16_t port;             /* 0: the kernel picks a free port (ds4_http_port) */
    const char *api_key;       /* NULL or "": no auth */
    bool cors;                 /* Access-Control-* headers on every response */
    bool access_log;           /* one stderr line per request */
    uint32_t max_connections;  /* open connections at once (threads) */
    uint32_t timeout_s;        /* idle time before MHD drops a connection */
    size_t max_header_bytes;   /* request line + headers, roughly (MHD's pool) */
    size_t max_body_bytes;
    uint32_t json_max_depth;
    double sse_keepalive_s;    /* comment after this long without an event */
    double write_stall_s;      /* a full stream buffer may wait this long */
    size_t sse_buffer_bytes;   /* stream bytes the worker may run ahead */
} ds4_http_opts;

/* 127.0.0.1:8000, 64 connections, 10 s idle, 64 KiB headers, 64 MiB
 * bodies, JSON depth 256, keep-alive every 5 s, 2 s write stall, 1 MiB. */
void ds4_http_default_opts(ds4_http_opts *o);

/* Route flags. */
enum {
    DS4_ROUTE_PREFIX = 1u << 0,    /* path is a prefix ending in '/'; the rest is ds4_http_req_tail */
    DS4_ROUTE_JSON = 1u << 1,      /* the body must be a JSON value (ds4_http_req_json); 400 otherwise */
    DS4_ROUTE_ANTHROPIC = 1u << 2, /* errors in the Anthropic shape */
    DS4_ROUTE_PUBLIC = 1u << 3,    /* no API key needed */
};

/* Called on the connection thread with the complete request. */
typedef void (*ds4_http_handler)(ds4_http_req *req, void *ctx);

/* Create the server and bind its listening socket (a port in use fails
 * here, before any model is loaded).  Nothing is served before start. */
int ds4_http_new(ds4_http **out, const ds4_http_opts *o, ds4_error *err);
/* The bound port (the real one when opts.port was 0). */
uint16_t ds4_http_port(const ds4_http *h);
/* "http://127.0.0.1:8000" */
const char *ds4_http_url(const ds4_http *h);
/* Register a handler for method ("GET", "POST") and path before start.
 * GET routes also answer HEAD. */
int ds4_http_route(ds4_http *h, const char *method, const char *path, unsigned flags, ds4_http_handler fn,
                   void *ctx, ds4_error *err);
int ds4_http_start(ds4_http *h, ds4_error *err);
/* Stop accepting connections; requests that still arrive on open
 * connections get 503.  Requests in flight go on. */
void ds4_http_quiesce(ds4_http *h);
/* Requests between their first byte and their last reply byte. */
uint32_t ds4_http_active(ds4_http *h);
/* Close every connection and join the threads (after quiesce and drain). */
void ds4_http_stop(ds4_http *h);
void ds4_http_free(ds4_http *h);

typedef struct ds4_http_stats {
    uint64_t requests;     /* dispatched to a handler or answered by the core */
    uint64_t disconnects;  /* requests whose client went away before the end */
    uint32_t active;
} ds4_http_stats;
void ds4_http_get_stats(ds4_http *h, ds4_http_stats *s);

/* ---- the request (valid while a reference is held) ---------------------- */

void ds4_http_req_ref(ds4_http_req *r);
void ds4_http_req_unref(ds4_http_req *r);
/* Per-process sequence number (also in the access log). */
uint64_t ds4_http_req_id(const ds4_http_req *r);
const char *ds4_http_req_method(const ds4_http_req *r);
/* The decoded path, without the query string. */
const char *ds4_http_req_path(const ds4_http_req *r);
/* For a DS4_ROUTE_PREFIX route: the path after the prefix ("" if none). */
const char *ds4_http_req_tail(const ds4_http_req *r);
/* Value of a request header (case-insensitive name), or NULL. */
const char *ds4_http_req_header(const ds4_http_req *r, const char *name);
/* The raw body; always followed by a NUL byte not counted in *len. */
const char *ds4_http_req_body(const ds4_http_req *r, size_t *len);
/* The parsed body of a DS4_ROUTE_JSON route (owned by the request). */
const cJSON *ds4_http_req_json(const ds4_http_req *r);
/* True once the client went away, the stream stalled, or ds4_http_req_cancel
 * was called.  Worker jobs poll it between tokens. */
bool ds4_http_req_cancelled(const ds4_http_req *r);
void ds4_http_req_cancel(ds4_http_req *r);
/* Seconds since the request's headers arrived. */
double ds4_http_req_age(const ds4_http_req *r);

/* ---- the reply (any thread; all return 0, or -1 if not delivered) ------- */

/* Add a response header (before the reply or the SSE start). */
int ds4_http_add_header(ds4_http_req *r, const char *name, const char *value);
/* One complete response. */
int ds4_http_reply(ds4_http_req *r, int status, const char *content_type, const void *body, size_t len);
int ds4_http_reply_json(ds4_http_req *r, int status, const cJSON *json);
/* An error in the route's shape; type is chosen from the status
 * (invalid_request_error, authentication_error, not_found_error, ...);
 * code may be NULL. */
int ds4_http_error(ds4_http_req *r, int status, const char *code, const char *fmt, ...) DS4_PRINTF(4, 5);
/* The same error body as a cJSON object, for a caller that adds fields
 * (e.g. n_prompt_tokens) before ds4_http_reply_json, or sends it as an SSE
 * error event. */
cJSON *ds4_http_error_object(const ds4_http_req *r, int status, const char *code, const char *msg);

/* Start a 200 text/event-stream response: headers go out now. */
int ds4_http_sse_begin(ds4_http_req *r);
/* "event: <event>\n" (if event) + "data: <line>\n" per line of data + "\n". */
int ds4_http_sse_event(ds4_http_req *r, const char *event, const char *data, size_t len);
int ds4_http_sse_json(ds4_http_req *r, const char *event, const cJSON *json);
/* ": <text>\n\n" (text must not hold a newline). */
int ds4_http_sse_comment(ds4_http_req *r, const char *text);
/* The end of the stream (the connection thread finishes the chunked body). */
int ds4_http_sse_end(ds4_http_req *r);
/* True once a reply or a stream was started. */
bool ds4_http_replied(ds4_http_req *r);
/* Called by the worker after a job: ends a stream, or answers 500 when the
 * job gave no reply (nothing is sent to a cancelled request). */
void ds4_http_req_finish(ds4_http_req *r);

/* A timestamped line on stderr ("2026-01-02 10:11:12.345 ..."). */
void ds4_log(const char *fmt, ...) DS4_PRINTF(1, 2);

#endif
