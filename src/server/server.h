/* server.h - what the pieces of ds4cl-server share.
 *
 * server_main.c parses the flags, binds the socket, loads the model, starts
 * the worker and the HTTP core, and registers the routes of each module;
 * each module (routes_core.c: /v1/models and the debug endpoints; the
 * protocol handlers) exposes one ds4_srv_routes_* function that adds its
 * routes with the ds4_srv as their context.  After start the ds4_srv is
 * read-only for every thread, except the engine and session, which only
 * worker jobs touch.
 */
#ifndef DS4_SERVER_SERVER_H
#define DS4_SERVER_SERVER_H

#include <stdbool.h>
#include <stdint.h>

#include "engine.h"
#include "error.h"
#include "http.h"
#include "worker.h"

typedef struct ds4_srv_opts {
    ds4_http_opts http;
    const char *model_path;
    const char *device;      /* NULL: $DS4CL_DEVICE or the default */
    const char *weights;     /* auto, map, copy */
    uint32_t ctx;            /* tokens of the live session */
    bool debug_endpoints;    /* POST /v1/debug/echo, GET /v1/debug/stats */
    bool verbose;
} ds4_srv_opts;

typedef struct ds4_srv {
    ds4_srv_opts opts;
    ds4_engine *engine;
    ds4_session *session;    /* the live session (worker jobs only) */
    char model_id[128];      /* slug of general.name, else the file name */
    char model_name[128];    /* general.name, else the file name */
    uint32_t n_ctx;
    int64_t created;         /* the model file's mtime (Unix seconds) */
    ds4_http *http;
    ds4_worker *worker;
} ds4_srv;

/* "DeepSeek V4 Flash" -> "deepseek-v4-flash" (lowercase ASCII letters and
 * digits, other runs become one '-', trimmed); "model" if nothing is left. */
void ds4_srv_model_slug(const char *name, char *out, size_t cap);

/* GET /v1/models, GET /v1/models/{id}; with debug_endpoints also
 * POST /v1/debug/echo and GET /v1/debug/stats. */
int ds4_srv_routes_core(ds4_srv *s, ds4_error *err);

#endif
