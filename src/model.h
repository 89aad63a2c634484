/* model.h - DeepSeek V4 ("deepseek4") hyperparameters and tensor binding.
 *
 * ds4_model_bind reads the shape of the model from the GGUF metadata (never
 * hard-coded: the 43-layer Flash files and small test models of the same
 * architecture both bind), then looks up every tensor the forward pass uses,
 * checking its dims against the shape and its type against the types that
 * tensor may have.  The first key or tensor that does not match is named in
 * the error.  After a successful bind every pointer the layer needs is
 * non-NULL (optional tensors are NULL when absent) and every shape is what
 * the forward pass assumes: the forward code never re-checks.
 *
 * Layer kinds: ratio 0 = sliding window only, 4 = overlapped compressor plus
 * lightning indexer, 128 = plain compressor.  Layers < n_hash_layers route
 * experts through the tid2eid table.  This module knows nothing of OpenCL.
 */
#ifndef DS4_MODEL_H
#define DS4_MODEL_H

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

#include "error.h"
#include "gguf.h"
#include "gguf_write.h"

#define DS4_MAX_LAYERS 128

typedef struct ds4_hparams {
    uint32_t n_layer;         /* deepseek4.block_count */
    uint32_t n_embd;          /* embedding_length */
    uint32_t n_vocab;         /* vocab_size (or the token list length) */
    uint32_t n_head;          /* attention.head_count */
    uint32_t n_head_kv;       /* attention.head_count_kv (must be 1) */
    uint32_t head_dim;        /* attention.key_length == value_length */
    uint32_t n_rot;           /* rope.dimension_count (tail dims of a head) */
    uint32_t q_lora;          /* attention.q_lora_rank */
    uint32_t o_lora;          /* attention.output_lora_rank */
    uint32_t o_groups;        /* attention.output_group_count */
    uint32_t n_expert;        /* expert_count */
    uint32_t n_expert_used;   /* expert_used_count */
    uint32_t n_ff_exp;        /* expert_feed_forward_length */
    uint32_t n_expert_shared; /* expert_shared_count */
    uint32_t n_hash_layers;   /* hash_layer_count */
    uint32_t n_swa;           /* attention.sliding_window */
    uint32_t n_idx_head;      /* attention.indexer.head_count */
    uint32_t idx_head_dim;    /* attention.indexer.key_length */
    uint32_t idx_top_k;       /* attention.indexer.top_k */
    uint32_t n_hc;            /* hyper_connection.count */
    uint32_t n_sinkhorn;      /* hyper_connection.sinkhorn_iterations */
    float hc_eps;             /* hyper_connection.epsilon */
    float rms_eps;            /* attention.layer_norm_rms_epsilon */
    float rope_base;          /* rope.freq_base (layers without compression) */
    float rope_compress_base; /* attention.compress_rope_freq_base */
    float rope_scale;         /* rope.scaling.factor (YaRN, compressed layers) */
    float yarn_beta_fast;
    float yarn_beta_slow;
    uint64_t rope_orig_ctx;   /* rope.scaling.original_context_length */
    uint64_t n_ctx_train;     /* context_length (display only; 0 if absent) */
    float expert_weights_scale;
    bool expert_weights_norm;
    uint32_t compress_ratio[DS4_MAX_LAYERS]; /* 0, 4 or 128 */
    float swiglu_clamp[DS4_MAX_LAYERS];
} ds4_hparams;

typedef struct ds4_layer {
    uint32_t ratio;           /* 0, 4 or 128 */
    bool hash_routed;         /* il < n_hash_layers */
    /* hyper-connections */
    const gguf_tensor *hc_attn_fn, *hc_attn_scale, *hc_attn_base;
    const gguf_tensor *hc_ffn_fn, *hc_ffn_scale, *hc_ffn_base;
    /* attention */
    const gguf_tensor *attn_norm, *attn_q_a, *attn_q_a_norm, *attn_q_b;
    const gguf_tensor *attn_kv, *attn_kv_a_norm, *attn_sinks;
    const gguf_tensor *attn_output_a, *attn_output_b;
    /* compressor (ratio != 0) */
    const gguf_tensor *comp_ape, *comp_kv, *comp_gate, *comp_norm;
    /* indexer (ratio == 4) */
    const gguf_tensor *idx_q_b, *idx_proj;
    const gguf_tensor *idx_comp_ape, *idx_comp_kv, *idx_comp_gate, *idx_comp_norm;
    /* feed-forward */
    const gguf_tensor *ffn_norm, *ffn_gate_inp, *exp_probs_b /* optional */, *tid2eid /* hash layers */;
    const gguf_tensor *ffn_gate_shexp, *ffn_up_shexp, *ffn_down_shexp;
    const gguf_tensor *ffn_gate_exps, *ffn_up_exps, *ffn_down_exps;
} ds4_layer;

typedef struct ds4_model {
    const gguf_file *file;
    char name[128];           /* general.name, or "" */
    char arch[64];            /* general.architecture */
    ds4_hparams hp;
    const gguf_tensor *token_embd, *output, *output_norm;
    const gguf_tensor *output_hc_fn, *output_hc_base, *output_hc_scale;
    ds4_layer layers[DS4_MAX_LAYERS];
} ds4_model;

/* Read the hyperparameters from f's metadata and bind every tensor. */
int ds4_model_bind(ds4_model *m, const gguf_file *f, ds4_error *err);

/* Print architecture, hyperparameters, tensor count and bytes per type. */
void ds4_model_print_info(const ds4_model *m, FILE *fp);

/* Write every deepseek4 hyperparameter key of hp (plus general.architecture
 * and general.name) to w, in one fixed order: the one writer of these keys
 * used by the converter and the random test models.  The group-routing keys
 * are written as 0 and rope.scaling.original_context_length as u32 when it
 * fits.  Errors are sticky in w (see gguf_write.h). */
void ds4_model_write_hparams(gguf_writer *w, const ds4_hparams *hp, const char *name);

#endif
