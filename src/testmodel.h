/* testmodel.h - small random deepseek4 GGUFs with the real Flash structure.
 *
 * Used by the tests, by `ds4cl` as the embedded demo model when no real model
 * is present, and by the benches.  The layer pattern follows Flash: layers
 * 0-1 sliding-window only, then ratio 4 on even and ratio 128 on odd layers;
 * the first n_hash_layers route through a random valid tid2eid table.  Every
 * parameter is random and non-trivial (seeded: same options, same bytes).
 * Matrices are written in `dense_type`, routed experts in `exp_gate_up_type`
 * / `exp_down_type`, norms/biases/sinks in F32, HC/router/compressor/indexer
 * weights and the embedding in F16 (F32 when dense_type is F32), so the file
 * has the layout and metadata of the published ds4 GGUFs at any width.
 * F32/F16/BF16/Q8_0 tensors hold quantized N(0, 1/fan_in) values; Q2_K,
 * Q4_K and IQ2_XXS blocks hold random codes with d/dmin fitted to the same
 * mean and RMS (their quantizers are far too slow for a model per test).
 */
#ifndef DS4_TESTMODEL_H
#define DS4_TESTMODEL_H

#include <stdint.h>

#include "error.h"

typedef struct ds4_testmodel_opts {
    uint32_t n_layer, n_embd, n_vocab, n_head, head_dim, n_rot;
    uint32_t q_lora, o_lora, o_groups;
    uint32_t n_expert, n_expert_used, n_ff_exp, n_hash_layers;
    uint32_t n_swa, n_idx_head, idx_head_dim, idx_top_k;
    uint32_t dense_type;        /* GGML id: F32, F16, Q8_0 */
    uint32_t exp_gate_up_type;  /* F32, F16, Q8_0, IQ2_XXS, Q2_K, Q4_K */
    uint32_t exp_down_type;
    uint64_t seed;
} ds4_testmodel_opts;

/* A tiny model (256-wide, 4 layers: window, window, ratio 4, ratio 128) in
 * the q2 layout: Q8_0 dense, IQ2_XXS gate/up, Q2_K down. */
void ds4_testmodel_default_opts(ds4_testmodel_opts *o);

/* Build the GGUF image in memory (*buf malloc'd) or write it to path. */
int ds4_testmodel_build(const ds4_testmodel_opts *o, uint8_t **buf, uint64_t *size, ds4_error *err);
int ds4_testmodel_write(const ds4_testmodel_opts *o, const char *path, ds4_error *err);

#endif
