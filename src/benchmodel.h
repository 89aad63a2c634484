/* benchmodel.h - DeepSeek-V4-Flash-shaped benchmark GGUFs with random weights.
 *
 * A benchmark model has the real Flash widths (model.md §1) and the real
 * per-tensor types of the published ds4 files (§3.4, q2 or q4 mix) but only
 * a few layers, so it fits where the 81 GB file does not and takes seconds
 * to write.  Per-layer timings measured on it project to the 43-layer model:
 * programs recognise it by `ds4cl.bench_model` = true and label what they
 * derive from it "projected"; `ds4cl.bench_mix` says "q2" or "q4".
 *
 * Layers: n_layer (default 4) with compress ratios from `pattern` (default:
 * 0 for layer 0, then 4, 128, 4, ...) and the first n_hash_layers (default
 * min(2, n_layer)) routed through tid2eid, the others by score + bias.  The
 * default 4-layer model therefore has every layer kind of Flash: sliding +
 * hash, ratio-4 + hash, ratio-128 + score, ratio-4 + score.
 *
 * Every value is random but valid and scaled so activations stay sane (see
 * benchmodel.c); the file is deterministic: same options and seed, same
 * bytes, whatever the thread count.  A small GPT-2 style tokenizer makes the
 * file usable by the chat paths too (its text output is noise).
 */
#ifndef DS4_BENCHMODEL_H
#define DS4_BENCHMODEL_H

#include <stdbool.h>
#include <stdint.h>

#include "error.h"
#include "model.h"

typedef enum ds4_bench_mix {
    DS4_BENCH_MIX_Q2 = 0, /* IQ2_XXS routed gate/up, Q2_K routed down */
    DS4_BENCH_MIX_Q4 = 1, /* Q4_K routed gate/up/down */
} ds4_bench_mix;

#define DS4_BENCH_MAX_THREADS 256

typedef struct ds4_benchmodel_opts {
    /* Layers. */
    uint32_t n_layer;                  /* 1..DS4_MAX_LAYERS */
    uint32_t n_pattern;                /* 0: default pattern; else == n_layer */
    uint32_t pattern[DS4_MAX_LAYERS];  /* compress ratio of each layer: 0, 4, 128 */
    int32_t n_hash_layers;             /* -1: min(2, n_layer) */
    ds4_bench_mix mix;
    uint64_t seed;
    uint32_t threads;                  /* worker threads; 0: online CPUs */
    uint32_t chunk_bytes;              /* piece size, 0: 4 MiB (>= 4096); pieces
                                          are the unit of randomness, so this is
                                          part of the file's identity (tests) */
    /* Shape: Flash by default (ds4_benchmodel_default_opts). */
    uint32_t n_embd, n_vocab, n_head, head_dim, n_rot;
    uint32_t q_lora, o_lora, o_groups;
    uint32_t n_expert, n_expert_used, n_ff_exp;
    uint32_t n_swa, n_idx_head, idx_head_dim, idx_top_k;
    /* Progress: called from the writing thread after each piece written
     * (done and total bytes of tensor data); NULL for none. */
    void (*progress)(void *ctx, uint64_t done, uint64_t total);
    void *progress_ctx;
} ds4_benchmodel_opts;

/* Flash widths, q2 mix, 4 layers of the default pattern, seed 1. */
void ds4_benchmodel_default_opts(ds4_benchmodel_opts *o);
/* Scale the shape of o down to a tiny model of the same structure (256
 * wide, 16 experts of 256, 512 tokens; layers, mix and seed untouched):
 * what the tests use. */
void ds4_benchmodel_tiny_shape(ds4_benchmodel_opts *o);

/* Compress ratio of layer il and the number of hash-routed layers, with the
 * defaults resolved (o must be valid). */
uint32_t ds4_benchmodel_ratio(const ds4_benchmodel_opts *o, uint32_t il);
uint32_t ds4_benchmodel_hash_layers(const ds4_benchmodel_opts *o);
/* Set o's pattern to the published Flash one for its n_layer (0, 0, then 4
 * on even and 128 on odd layers) and its hash layers to min(3, n_layer). */
void ds4_benchmodel_flash_pattern(ds4_benchmodel_opts *o);

/* "q2" / "q4"; the parser returns -1 for anything else. */
const char *ds4_benchmodel_mix_name(ds4_bench_mix mix);
int ds4_benchmodel_mix_from_name(const char *name, ds4_bench_mix *out);

/* Check the options (one error line naming the bad one). */
int ds4_benchmodel_check(const ds4_benchmodel_opts *o, ds4_error *err);
/* Bytes of tensor data the options produce (o must be valid). */
uint64_t ds4_benchmodel_data_bytes(const ds4_benchmodel_opts *o);

/* Write the model to path (through path.tmp, renamed once complete, re-read
 * by the strict GGUF reader and bound by ds4_model_bind; removed on a
 * failure).  Memory stays bounded whatever the model size: at most
 * min(2 * threads + 2, 48) pieces of chunk_bytes in flight (~34 MB RSS for
 * the Flash model on 2 threads). */
int ds4_benchmodel_write(const ds4_benchmodel_opts *o, const char *path, ds4_error *err);

#endif
