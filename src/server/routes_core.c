/* routes_core.c - the endpoints that need no tokenizer: the model list and,
 * behind --debug-endpoints, a worker echo and counters for tests.
 *
 * GET /v1/models and /v1/models/{id} are answered on the connection thread
 * from data fixed at startup, so they work while the worker is busy.
 *
 * POST /v1/debug/echo {"payload": STRING, "stream": BOOL, "events": N,
 * "delay_ms": MS, "wait_ms": MS, "early": BOOL} goes through the worker
 * queue like a generation: it waits wait_ms (a stand-in for a prefill),
 * then produces N events delay_ms apart (stand-ins for tokens), checking
 * for cancellation every 10 ms.  Streamed, each event is
 * data: {"job","i","payload"} and the stream ends with data: [DONE]
 * ("early": the stream is begun before the job is queued, as a handler
 * does to keep a queued client alive); otherwise one JSON object
 * {"object":"debug.echo","job","payload","events"} answers.  "job" is the
 * worker's job number, so a client can tell its answer was produced once.
 * GET /v1/debug/stats returns the worker and HTTP counters.
 */
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "server.h"

void ds4_srv_model_slug(const char *name, char *out, size_t cap) {
    size_t n = 0;
    bool dash = false;
    for (const char *p = name; *p && n + 1 < cap; p++) {
        char c = *p;
        if (c >= 'A' && c <= 'Z') c = (char)(c - 'A' + 'a');
        bool keep = (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '.' || c == '_';
        if (!keep) {
            dash = n > 0;
            continue;
        }
        if (dash && n + 2 < cap) out[n++] = '-';
        dash = false;
        out[n++] = c;
    }
    out[n] = '\0';
    if (n == 0) snprintf(out, cap, "model");
}

static cJSON *model_object(const ds4_srv *s) {
    cJSON *m = cJSON_CreateObject();
    if (!m) return NULL;
    cJSON_AddStringToObject(m, "id", s->model_id);
    cJSON_AddStringToObject(m, "object", "model");
    cJSON_AddNumberToObject(m, "created", (double)s->created);
    cJSON_AddStringToObject(m, "owned_by", "ds4cl");
    cJSON_AddStringToObject(m, "name", s->model_name);
    cJSON_AddNumberToObject(m, "context_length", s->n_ctx);
    cJSON *tp = cJSON_AddObjectToObject(m, "top_provider");
    if (tp) {
        cJSON_AddNumberToObject(tp, "context_length", s->n_ctx);
        cJSON_AddNumberToObject(tp, "max_completion_tokens", s->n_ctx);
        cJSON_AddBoolToObject(tp, "is_moderated", 0);
    }
    static const char *const params[] = {"tools",  "tool_choice", "max_tokens", "temperature",
                                         "top_p",  "top_k",       "min_p",      "stop",
                                         "seed",   "stream",      "reasoning_effort"};
    cJSON *sp = cJSON_CreateStringArray(params, (int)(sizeof(params) / sizeof(params[0])));
    if (sp) cJSON_AddItemToObject(m, "supported_parameters", sp);
    return m;
}

static void on_models(ds4_http_req *req, void *ctx) {
    const ds4_srv *s = ctx;
    cJSON *root = cJSON_CreateObject();
    cJSON *data = cJSON_AddArrayToObject(root, "data");
    cJSON *m = model_object(s);
    if (!root || !data || !m) {
        cJSON_Delete(root);
        cJSON_Delete(m);
        ds4_http_error(req, 500, NULL, "out of memory");
        return;
    }
    cJSON_AddStringToObject(root, "object", "list");
    cJSON_AddItemToArray(data, m);
    ds4_http_reply_json(req, 200, root);
    cJSON_Delete(root);
}

static void on_model(ds4_http_req *req, void *ctx) {
    const ds4_srv *s = ctx;
    const char *id = ds4_http_req_tail(req);
    if (!*id) {
        on_models(req, ctx);
        return;
    }
    if (strcmp(id, s->model_id) != 0) {
        ds4_http_error(req, 404, "model_not_found", "model '%.200s' does not exist (this server has '%s')", id,
                       s->model_id);
        return;
    }
    cJSON *m = model_object(s);
    if (!m) {
        ds4_http_error(req, 500, NULL, "out of memory");
        return;
    }
    ds4_http_reply_json(req, 200, m);
    cJSON_Delete(m);
}

/* ---- debug endpoints ---------------------------------------------------- */

typedef struct echo_job {
    char *payload;
    bool stream, early;
    uint32_t events, delay_ms, wait_ms;
} echo_job;

static void echo_free(void *p) {
    echo_job *j = p;
    if (!j) return;
    free(j->payload);
    free(j);
}

/* Sleep ms in 10 ms steps; false once the request is cancelled. */
static bool nap(ds4_http_req *req, uint32_t ms) {
    while (ms > 0 && !ds4_http_req_cancelled(req)) {
        uint32_t step = ms < 10 ? ms : 10;
        struct timespec ts = {0, (long)step * 1000000L};
        nanosleep(&ts, NULL);
        ms -= step;
    }
    return !ds4_http_req_cancelled(req);
}

static void echo_run(ds4_worker_env *env, ds4_http_req *req, void *p) {
    const echo_job *j = p;
    if (!j->stream) {
        if (!nap(req, j->wait_ms)) return;
        for (uint32_t i = 1; i < j->events; i++)
            if (!nap(req, j->delay_ms)) return;
        cJSON *o = cJSON_CreateObject();
        if (!o) return;
        cJSON_AddStringToObject(o, "object", "debug.echo");
        cJSON_AddNumberToObject(o, "job", (double)env->job_id);
        cJSON_AddStringToObject(o, "payload", j->payload);
        cJSON_AddNumberToObject(o, "events", j->events);
        ds4_http_reply_json(req, 200, o);
        cJSON_Delete(o);
        return;
    }
    if ((!j->early && ds4_http_sse_begin(req) != 0) || !nap(req, j->wait_ms)) return;
    for (uint32_t i = 0; i < j->events; i++) {
        if (i > 0 && !nap(req, j->delay_ms)) return;
        cJSON *o = cJSON_CreateObject();
        if (!o) return;
        cJSON_AddNumberToObject(o, "job", (double)env->job_id);
        cJSON_AddNumberToObject(o, "i", i);
        cJSON_AddStringToObject(o, "payload", j->payload);
        int rc = ds4_http_sse_json(req, NULL, o);
        cJSON_Delete(o);
        if (rc != 0) return;
    }
    if (ds4_http_sse_event(req, NULL, "[DONE]", 6) == 0) ds4_http_sse_end(req);
}

/* An optional integer field in [lo, hi]; -1 (and a 400) when bad. */
static int get_uint(ds4_http_req *req, const cJSON *root, const char *key, uint32_t lo, uint32_t hi, uint32_t def,
                    uint32_t *out) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(root, key);
    if (!v || cJSON_IsNull(v)) {
        *out = def;
        return 0;
    }
    if (!cJSON_IsNumber(v) || v->valuedouble < lo || v->valuedouble > hi || v->valuedouble != (double)(long)v->valuedouble) {
        ds4_http_error(req, 400, "invalid_value", "'%s' must be an integer in [%u, %u]", key, lo, hi);
        return -1;
    }
    *out = (uint32_t)v->valuedouble;
    return 0;
}

static void on_echo(ds4_http_req *req, void *ctx) {
    ds4_srv *s = ctx;
    const cJSON *root = ds4_http_req_json(req);
    if (!cJSON_IsObject(root)) {
        ds4_http_error(req, 400, "invalid_value", "the body must be a JSON object");
        return;
    }
    const cJSON *pl = cJSON_GetObjectItemCaseSensitive(root, "payload");
    if (!cJSON_IsString(pl)) {
        ds4_http_error(req, 400, "invalid_value", "'payload' must be a string");
        return;
    }
    const cJSON *st = cJSON_GetObjectItemCaseSensitive(root, "stream");
    if (st && !cJSON_IsBool(st) && !cJSON_IsNull(st)) {
        ds4_http_error(req, 400, "invalid_value", "'stream' must be a boolean");
        return;
    }
    echo_job *j = calloc(1, sizeof(*j));
    if (!j || !(j->payload = strdup(pl->valuestring))) {
        echo_free(j);
        ds4_http_error(req, 500, NULL, "out of memory");
        return;
    }
    j->stream = cJSON_IsTrue(st);
    if (get_uint(req, root, "events", 1, 10000, 1, &j->events) != 0 ||
        get_uint(req, root, "delay_ms", 0, 10000, 0, &j->delay_ms) != 0 ||
        get_uint(req, root, "wait_ms", 0, 60000, 0, &j->wait_ms) != 0) {
        echo_free(j);
        return;
    }
    /* "early": the stream starts on this thread, before the job is queued
     * (headers and keep-alives flow while it waits). */
    const cJSON *early = cJSON_GetObjectItemCaseSensitive(root, "early");
    j->early = j->stream && cJSON_IsTrue(early);
    if (j->early && ds4_http_sse_begin(req) != 0) {
        echo_free(j);
        return;
    }
    ds4_worker_submit(s->worker, req, echo_run, j, echo_free);
}

static void on_stats(ds4_http_req *req, void *ctx) {
    ds4_srv *s = ctx;
    ds4_worker_stats ws;
    ds4_http_stats hs;
    ds4_worker_get_stats(s->worker, &ws);
    ds4_http_get_stats(s->http, &hs);
    cJSON *o = cJSON_CreateObject();
    cJSON *w = cJSON_AddObjectToObject(o, "worker");
    cJSON *h = cJSON_AddObjectToObject(o, "http");
    if (!o || !w || !h) {
        cJSON_Delete(o);
        ds4_http_error(req, 500, NULL, "out of memory");
        return;
    }
    cJSON_AddNumberToObject(w, "submitted", (double)ws.submitted);
    cJSON_AddNumberToObject(w, "done", (double)ws.done);
    cJSON_AddNumberToObject(w, "cancelled", (double)ws.cancelled);
    cJSON_AddNumberToObject(w, "skipped", (double)ws.skipped);
    cJSON_AddNumberToObject(w, "queued", ws.queued);
    cJSON_AddBoolToObject(w, "running", ws.running);
    cJSON_AddNumberToObject(h, "requests", (double)hs.requests);
    cJSON_AddNumberToObject(h, "disconnects", (double)hs.disconnects);
    cJSON_AddNumberToObject(h, "active", hs.active);
    ds4_http_reply_json(req, 200, o);
    cJSON_Delete(o);
}

int ds4_srv_routes_core(ds4_srv *s, ds4_error *err) {
    if (ds4_http_route(s->http, "GET", "/v1/models", 0, on_models, s, err) != 0 ||
        ds4_http_route(s->http, "GET", "/v1/models/", DS4_ROUTE_PREFIX, on_model, s, err) != 0)
        return -1;
    if (!s->opts.debug_endpoints) return 0;
    if (ds4_http_route(s->http, "POST", "/v1/debug/echo", DS4_ROUTE_JSON, on_echo, s, err) != 0 ||
        ds4_http_route(s->http, "GET", "/v1/debug/stats", 0, on_stats, s, err) != 0)
        return -1;
    return 0;
}
