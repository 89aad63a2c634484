/* worker.h - the one inference worker of ds4cl-server and its FIFO queue.
 *
 * The engine and its live session are used by exactly one thread, the
 * worker: connection threads parse and validate a request, then submit a
 * job; jobs run one at a time in submission order, each with the engine and
 * session (ds4_worker_env).  A job answers through the request's reply API
 * (http.h) and polls ds4_http_req_cancelled between tokens; a job whose
 * client left while it was still queued is skipped without running.
 *
 * After a job the worker calls ds4_http_req_finish (so a job that forgot to
 * answer yields a 500 and an open stream is closed), frees the job data and
 * drops its request reference.
 */
#ifndef DS4_SERVER_WORKER_H
#define DS4_SERVER_WORKER_H

#include <stdbool.h>
#include <stdint.h>

#include "engine.h"
#include "error.h"
#include "http.h"

typedef struct ds4_worker ds4_worker;

typedef struct ds4_worker_env {
    ds4_engine *engine;    /* may be NULL in tests of the core */
    ds4_session *session;  /* the live session, owned by the worker's user */
    void *user;            /* the protocol layer's state (caches, tokenizer) */
    uint64_t job_id;       /* 1, 2, ... : the number of the running job */
} ds4_worker_env;

typedef void (*ds4_job_run)(ds4_worker_env *env, ds4_http_req *req, void *job);
typedef void (*ds4_job_free)(void *job);

/* Start the worker thread (env is copied). */
int ds4_worker_start(ds4_worker **out, const ds4_worker_env *env, ds4_error *err);

/* Queue a job for req (takes a reference to req).  Returns 0 when queued;
 * -1 when the worker no longer takes jobs: req has then been answered with
 * 503 and free_job(job) called. */
int ds4_worker_submit(ds4_worker *w, ds4_http_req *req, ds4_job_run run, void *job, ds4_job_free free_job);

/* Refuse new jobs from now on; queued ones still run. */
void ds4_worker_close(ds4_worker *w);
/* True when nothing is queued or running. */
bool ds4_worker_idle(ds4_worker *w);
/* Close, run what is queued, join the thread, free. */
void ds4_worker_free(ds4_worker *w);

typedef struct ds4_worker_stats {
    uint64_t submitted;
    uint64_t done;       /* ran to the end */
    uint64_t cancelled;  /* ran, but the request was cancelled by its end */
    uint64_t skipped;    /* cancelled while queued: never ran */
    uint32_t queued;
    bool running;
} ds4_worker_stats;
void ds4_worker_get_stats(ds4_worker *w, ds4_worker_stats *s);

#endif
