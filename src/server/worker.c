/* worker.c - the inference worker thread and its FIFO (see worker.h).
 *
 * A singly linked queue under one mutex; the worker sleeps on a condition
 * variable until a job arrives or the worker is closed.  `open` gates
 * submissions; the thread exits once closed and the queue is empty, so
 * every accepted job runs (or is skipped, if cancelled) exactly once.
 * Statistics are kept under the same mutex.
 */
#include "worker.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>

typedef struct job {
    struct job *next;
    ds4_http_req *req;
    ds4_job_run run;
    void *data;
    ds4_job_free free_data;
} job;

struct ds4_worker {
    ds4_worker_env env;
    pthread_t th;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    job *head, *tail;
    bool open;
    bool busy;    /* a job was taken and is not released yet */
    bool running; /* ... and it is running (not skipped) */
    uint32_t queued;
    uint64_t submitted, done, cancelled, skipped;
};

static void job_release(job *j) {
    ds4_http_req_finish(j->req);
    if (j->free_data) j->free_data(j->data);
    ds4_http_req_unref(j->req);
    free(j);
}

static void *worker_main(void *arg) {
    ds4_worker *w = arg;
    for (;;) {
        pthread_mutex_lock(&w->mu);
        while (!w->head && w->open) pthread_cond_wait(&w->cv, &w->mu);
        job *j = w->head;
        if (!j) {
            pthread_mutex_unlock(&w->mu);
            break;
        }
        w->head = j->next;
        if (!w->head) w->tail = NULL;
        w->queued--;
        bool skip = ds4_http_req_cancelled(j->req);
        w->busy = true;
        w->running = !skip;
        if (skip) w->skipped++;
        pthread_mutex_unlock(&w->mu);

        if (!skip) {
            w->env.job_id++;
            j->run(&w->env, j->req, j->data);
        }
        bool cancelled = ds4_http_req_cancelled(j->req);
        job_release(j);

        pthread_mutex_lock(&w->mu);
        if (!skip) {
            if (cancelled) w->cancelled++;
            else w->done++;
        }
        w->busy = w->running = false;
        pthread_cond_broadcast(&w->cv);
        pthread_mutex_unlock(&w->mu);
    }
    return NULL;
}

int ds4_worker_start(ds4_worker **out, const ds4_worker_env *env, ds4_error *err) {
    *out = NULL;
    ds4_worker *w = calloc(1, sizeof(*w));
    if (!w) return ds4_fail(err, "out of memory");
    w->env = *env;
    w->env.job_id = 0;
    w->open = true;
    pthread_mutex_init(&w->mu, NULL);
    pthread_cond_init(&w->cv, NULL);
    if (pthread_create(&w->th, NULL, worker_main, w) != 0) {
        pthread_mutex_destroy(&w->mu);
        pthread_cond_destroy(&w->cv);
        free(w);
        return ds4_fail(err, "cannot start the worker thread");
    }
    *out = w;
    return 0;
}

int ds4_worker_submit(ds4_worker *w, ds4_http_req *req, ds4_job_run run, void *data, ds4_job_free free_job) {
    job *j = calloc(1, sizeof(*j));
    pthread_mutex_lock(&w->mu);
    bool ok = w->open && j;
    if (ok) {
        ds4_http_req_ref(req);
        j->req = req;
        j->run = run;
        j->data = data;
        j->free_data = free_job;
        if (w->tail) w->tail->next = j;
        else w->head = j;
        w->tail = j;
        w->queued++;
        w->submitted++;
        pthread_cond_broadcast(&w->cv);
    }
    bool open = w->open;
    pthread_mutex_unlock(&w->mu);
    if (ok) return 0;
    free(j);
    if (free_job) free_job(data);
    if (open) ds4_http_error(req, 500, NULL, "out of memory");
    else ds4_http_error(req, 503, NULL, "the server is shutting down");
    return -1;
}

void ds4_worker_close(ds4_worker *w) {
    pthread_mutex_lock(&w->mu);
    w->open = false;
    pthread_cond_broadcast(&w->cv);
    pthread_mutex_unlock(&w->mu);
}

bool ds4_worker_idle(ds4_worker *w) {
    pthread_mutex_lock(&w->mu);
    bool idle = !w->head && !w->busy;
    pthread_mutex_unlock(&w->mu);
    return idle;
}

void ds4_worker_free(ds4_worker *w) {
    if (!w) return;
    ds4_worker_close(w);
    pthread_join(w->th, NULL);
    pthread_mutex_destroy(&w->mu);
    pthread_cond_destroy(&w->cv);
    free(w);
}

void ds4_worker_get_stats(ds4_worker *w, ds4_worker_stats *s) {
    pthread_mutex_lock(&w->mu);
    s->submitted = w->submitted;
    s->done = w->done;
    s->cancelled = w->cancelled;
    s->skipped = w->skipped;
    s->queued = w->queued;
    s->running = w->running;
    pthread_mutex_unlock(&w->mu);
}
