/* engine.c - the public engine API (engine.h): load a model onto a device,
 * create sessions, evaluate tokens, read logits.
 *
 * Loading goes file -> model -> runtime -> weights -> kernels -> forward
 * tables, each step's failure naming what failed.  A session allocates all
 * of its device memory up front (kvstate.c) so that evaluation never
 * allocates.  Evaluation validates every token id and the context room
 * before running any chunk.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "forward.h"

/* Default prefill chunk: CPU devices gain nothing from larger chunks; on
 * GPUs the tiled GEMM and the expert tiles fill up with more tokens per
 * expert (H200, 4-layer q2 bench model: 1900 t/s at 256, 6546 at 2048). */
#define DEFAULT_CHUNK_CPU 256
#define DEFAULT_CHUNK_GPU 2048

void ds4_engine_free(ds4_engine *e) {
    if (!e) return;
    ds4_forward_release(e);
    if (e->tiled_ready) ds4_tiled_free(&e->tiled);
    if (e->ops_ready) ds4_ops_free(&e->ops);
    if (e->kern_ready) ds4_kernels_free(&e->kern);
    ds4_weights_free(&e->plan);
    if (e->rt_open) ds4_runtime_close(&e->rt);
    gguf_close(&e->file);
    free(e);
}

int ds4_engine_load(ds4_engine **out, const ds4_engine_opts *o, ds4_error *err) {
    *out = NULL;
    if (!o || !o->model_path) return ds4_fail(err, "no model path given");
    ds4_engine *e = calloc(1, sizeof(*e));
    if (!e) return ds4_fail(err, "out of memory");
    e->quant_sim = !o->no_quant_sim;
    e->chunk = o->prefill_chunk; /* 0: by device type, once the device is open */
    e->verbose = o->verbose;
    int rc = gguf_open(&e->file, o->model_path, err);
    if (rc != 0) ds4_fail_wrap(err, "%s", o->model_path);
    if (rc == 0 && (rc = ds4_model_bind(&e->model, &e->file, err)) != 0) ds4_fail_wrap(err, "%s", o->model_path);
    if (rc == 0) {
        ds4_runtime_opts ro = {.device = o->device, .kernel_dir = o->kernel_dir, .verbose = o->verbose,
                                .profile = o->profile};
        rc = ds4_runtime_open(&e->rt, &ro, err);
        e->rt_open = rc == 0;
    }
    if (rc == 0 && e->chunk == 0)
        e->chunk = (e->rt.dev.type & CL_DEVICE_TYPE_CPU) ? DEFAULT_CHUNK_CPU : DEFAULT_CHUNK_GPU;
    if (rc == 0) {
        const char *mode = o->weights ? o->weights : "auto";
        bool zero_copy = strcmp(mode, "map") == 0 || (strcmp(mode, "auto") == 0 && e->rt.dev.host_unified);
        uint64_t cap = e->rt.dev.max_alloc;
        if (o->max_alloc && o->max_alloc < cap) cap = o->max_alloc;
        rc = ds4_weights_plan(&e->plan, &e->file, cap, zero_copy, err);
        if (rc == 0) rc = ds4_weights_load(&e->plan, &e->rt, &e->file, err);
        if (rc == 0 && o->verbose) ds4_weights_print(&e->plan, stderr);
    }
    if (rc == 0) {
        rc = ds4_kernels_init(&e->kern, &e->rt, NULL, err);
        e->kern_ready = rc == 0;
    }
    if (rc == 0) {
        rc = ds4_ops_init(&e->ops, &e->kern, err);
        e->ops_ready = rc == 0;
    }
    if (rc == 0) {
        /* Tiled GEMM prefill where the program has it (GPU builds);
         * DS4CL_TILED=0 turns it off (A/B measurements). */
        const char *tv = getenv("DS4CL_TILED");
        bool want = !(tv && strcmp(tv, "0") == 0);
        if (want && ds4_tiled_available(&e->kern)) {
            ds4_error terr = {{0}};
            if (ds4_tiled_init(&e->tiled, &e->kern, &terr) == 0) e->tiled_ready = true;
            else if (o->verbose) fprintf(stderr, "ds4cl: tiled prefill off: %s\n", terr.msg);
        }
    }
    if (rc == 0) rc = ds4_forward_init(e, err);
    if (rc != 0) {
        ds4_engine_free(e);
        return -1;
    }
    snprintf(e->device_name, sizeof(e->device_name), "%s / %s", e->rt.dev.platform_name, e->rt.dev.name);
    *out = e;
    return 0;
}

const ds4_model *ds4_engine_model(const ds4_engine *e) { return &e->model; }
const char *ds4_engine_device_name(const ds4_engine *e) { return e->device_name; }
uint32_t ds4_engine_prefill_chunk(const ds4_engine *e) { return e->chunk; }

int ds4_session_new(ds4_engine *e, uint32_t n_ctx, ds4_session **out, ds4_error *err) {
    *out = NULL;
    if (n_ctx == 0) return ds4_fail(err, "context size must be at least 1");
    if (n_ctx > (1u << 30)) return ds4_fail(err, "context size %u is too large", n_ctx);
    ds4_session *s = calloc(1, sizeof(*s));
    if (!s) return ds4_fail(err, "out of memory");
    s->e = e;
    s->n_ctx = n_ctx;
    s->chunk = e->chunk < n_ctx ? e->chunk : n_ctx;
    if (ds4_kv_alloc(s, err) != 0 || ds4_kv_reset(s, err) != 0) {
        ds4_fail_wrap(err, "session of %u tokens", n_ctx);
        ds4_session_free(s);
        return -1;
    }
    *out = s;
    return 0;
}

void ds4_session_free(ds4_session *s) {
    if (!s) return;
    ds4_kv_release(s);
    free(s);
}

uint32_t ds4_session_pos(const ds4_session *s) { return s->pos; }
uint32_t ds4_session_ctx(const ds4_session *s) { return s->n_ctx; }
uint64_t ds4_session_device_bytes(const ds4_session *s) { return s->device_bytes; }
const float *ds4_session_logits(const ds4_session *s) { return s->has_logits ? s->logits : NULL; }

int ds4_session_eval(ds4_session *s, const int32_t *tokens, uint32_t n, float *all_logits, ds4_error *err) {
    const ds4_hparams *hp = &s->e->model.hp;
    if (n == 0) return 0;
    if ((uint64_t)s->pos + n > s->n_ctx)
        return ds4_fail(err, "context overflow: %u tokens at position %u exceed the context of %u", n, s->pos,
                        s->n_ctx);
    for (uint32_t i = 0; i < n; i++)
        if (tokens[i] < 0 || (uint32_t)tokens[i] >= hp->n_vocab)
            return ds4_fail(err, "token %d at index %u is outside the vocabulary (%u tokens)", tokens[i], i,
                            hp->n_vocab);
    const uint64_t V = hp->n_vocab;
    for (uint32_t done = 0; done < n;) {
        uint32_t T = n - done < s->chunk ? n - done : s->chunk;
        if (ds4_forward_chunk(s, tokens + done, T, all_logits != NULL, err) != 0) return -1;
        if (all_logits) {
            if (ds4_buffer_read(&s->e->rt, s->s.logits, 0, all_logits + (uint64_t)done * V, (uint64_t)T * V * 4,
                                err) != 0)
                return -1;
            memcpy(s->logits, all_logits + (uint64_t)(done + T - 1) * V, V * 4);
        } else if (ds4_buffer_read(&s->e->rt, s->s.logits, 0, s->logits, V * 4, err) != 0) {
            return -1;
        }
        s->has_logits = true;
        s->pos += T;
        done += T;
    }
    return 0;
}

int ds4_engine_profile_start(ds4_engine *e, ds4_error *err) { return ds4_profile_start(&e->rt, err); }

int ds4_engine_profile_take(ds4_engine *e, ds4_prof_record **out, uint64_t *n, ds4_error *err) {
    return ds4_profile_collect(&e->rt, out, n, err);
}

void ds4_engine_profile_stop(ds4_engine *e) { ds4_profile_stop(&e->rt); }
