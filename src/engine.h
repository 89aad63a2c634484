/* engine.h - the one door the programs (cli, server, bench) use.
 *
 * An engine is a loaded model on one OpenCL device: the mapped GGUF, its
 * deepseek4 binding, the weights placed per the memory plan, the built
 * kernels.  A session is one sequence being evaluated on it: the KV state on
 * the device (raw window ring, compressed rows, indexer rows, compressor
 * frontiers), the position, and the logits of the last evaluated token.
 * Several sessions may share an engine (each owns its device state); calls on
 * one engine are not thread-safe.
 *
 * Evaluation is teacher-forced: ds4_session_eval appends tokens, running them
 * through the layers in chunks of at most `prefill_chunk` tokens (a chunk is
 * mathematically the same as decoding its tokens one at a time; decode is a
 * chunk of 1).  Routing, top-k and the indexer stay on the device: there is no
 * host round trip inside a chunk.
 *
 * This header has no OpenCL types: programs never touch OpenCL.
 */
#ifndef DS4_ENGINE_H
#define DS4_ENGINE_H

#include <stdbool.h>
#include <stdint.h>

#include "error.h"
#include "model.h"
#include "prof.h"

typedef struct ds4_engine ds4_engine;
typedef struct ds4_session ds4_session;

typedef struct ds4_engine_opts {
    const char *model_path;   /* GGUF file (required) */
    const char *device;       /* index or name substring; NULL: $DS4CL_DEVICE or default */
    const char *kernel_dir;   /* NULL: embedded kernels (or $DS4CL_KERNEL_DIR) */
    const char *weights;      /* "auto" (default), "map" or "copy" */
    uint64_t max_alloc;       /* cap per weight buffer in bytes; 0 = the device's */
    bool no_quant_sim;        /* turn off the FP8 KV / FP4 indexer simulations and
                                 the f16 rounding of the raw KV (exact f32 path) */
    uint32_t prefill_chunk;   /* tokens per prefill pass; 0 = default (256 on
                                 CPU devices, 2048 on GPUs) */
    bool verbose;
    bool profile;             /* allow ds4_engine_profile_* (profiling queue) */
} ds4_engine_opts;

int ds4_engine_load(ds4_engine **out, const ds4_engine_opts *opts, ds4_error *err);
void ds4_engine_free(ds4_engine *e);
const ds4_model *ds4_engine_model(const ds4_engine *e);
/* Tokens per prefill pass (opts.prefill_chunk or the device's default). */
uint32_t ds4_engine_prefill_chunk(const ds4_engine *e);
/* "platform / device" of the engine's device. */
const char *ds4_engine_device_name(const ds4_engine *e);

/* A session with room for n_ctx tokens. */
int ds4_session_new(ds4_engine *e, uint32_t n_ctx, ds4_session **out, ds4_error *err);
void ds4_session_free(ds4_session *s);
uint32_t ds4_session_pos(const ds4_session *s);
uint32_t ds4_session_ctx(const ds4_session *s);
/* Bytes of device memory the session's KV state and scratch hold. */
uint64_t ds4_session_device_bytes(const ds4_session *s);

/* Evaluate n tokens at positions pos .. pos+n-1.  When all_logits is not
 * NULL it receives the logits of every token, [n][n_vocab] row-major.  The
 * last token's logits are always kept (ds4_session_logits).  Token ids must
 * be < n_vocab and pos + n <= n_ctx; a failure leaves the session at its old
 * position only if it happened before any chunk ran, else the session must
 * be discarded (ds4_session_pos tells how far it got). */
int ds4_session_eval(ds4_session *s, const int32_t *tokens, uint32_t n, float *all_logits, ds4_error *err);
/* Logits of the last evaluated token (n_vocab floats), NULL before any. */
const float *ds4_session_logits(const ds4_session *s);

/* Snapshot: everything needed to continue the sequence (position, last
 * logits, the KV state) as one self-describing byte blob (*buf malloc'd).
 * Restoring needs a session of the same engine model with n_ctx >= pos. */
int ds4_session_save(ds4_session *s, uint8_t **buf, uint64_t *size, ds4_error *err);
int ds4_session_restore(ds4_session *s, const uint8_t *buf, uint64_t size, ds4_error *err);

/* Kernel profiling (engine loaded with opts.profile).  start: record every
 * launch from now on (dropping older records); take: wait for the device,
 * hand over the launches recorded since start/the last take, in launch
 * order, tagged with their layer (*out malloc'd, *n entries); stop: end
 * recording.  Profiling slows evaluation down a little (one event per
 * launch): time with it off, attribute with it on. */
int ds4_engine_profile_start(ds4_engine *e, ds4_error *err);
int ds4_engine_profile_take(ds4_engine *e, ds4_prof_record **out, uint64_t *n, ds4_error *err);
void ds4_engine_profile_stop(ds4_engine *e);

#endif
