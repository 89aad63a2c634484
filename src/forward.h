/* forward.h - internal structures shared by engine.c, kvstate.c and
 * forward.c (never included by programs: they use engine.h).
 *
 * ds4_engine holds what is shared by all sessions: the mapped file, the
 * model binding, the device runtime, the built kernels and the weights on the
 * device, plus two RoPE frequency tables (the "main" table of the
 * window-only layers and the YaRN "compress" table of the compressed layers).
 *
 * ds4_session holds one sequence's device state.  Per layer: the raw KV ring
 * (cap rows, row = pos % cap), and for compressed layers the compressed rows
 * (append-only, row w covers positions w*r .. w*r+r-1) with the compressor
 * frontier (state rows of kv and score), and for ratio-4 layers the same for
 * the indexer.  Scratch activation buffers are sized for one chunk of
 * `chunk` tokens at allocation, so the hot path never allocates.
 */
#ifndef DS4_FORWARD_H
#define DS4_FORWARD_H

#include "engine.h"
#include "gguf.h"
#include "ops.h"
#include "runtime.h"
#include "matmul_tiled.h"

struct ds4_engine {
    gguf_file file;
    ds4_model model;
    ds4_runtime rt;
    ds4_kernels kern;
    ds4_ops ops;
    ds4_weight_plan plan;
    ds4_tiled tiled;         /* tiled GEMM for prefill (GPU builds) */
    bool tiled_ready;        /* false: prefill uses ds4_matmul / the ops */
    cl_kernel k_scale;       /* cl/forward.cl: x *= s */
    cl_mem inv_freq_main;    /* f32 [n_rot/2] */
    cl_mem inv_freq_comp;    /* f32 [n_rot/2] (YaRN) */
    bool quant_sim;
    uint32_t chunk;
    bool verbose;
    bool rt_open, kern_ready, ops_ready;
    char device_name[300];
};

typedef struct ds4_layer_kv {
    cl_mem ring;             /* f32 [cap][head_dim] */
    cl_mem comp;             /* f32 [comp_cap][head_dim] (ratio != 0) */
    cl_mem comp_kv, comp_sc; /* f32 [state_rows][coff*head_dim] */
    cl_mem idx;              /* f32 [comp_cap][idx_head_dim] (ratio 4) */
    cl_mem idx_kv, idx_sc;   /* f32 [8][2*idx_head_dim] */
    uint32_t comp_cap;       /* rows allocated for comp / idx */
    uint32_t state_rows;     /* 8 (ratio 4) or 128 (ratio 128) */
} ds4_layer_kv;

/* Scratch activations for one chunk (T <= chunk tokens). */
typedef struct ds4_scratch {
    cl_mem tok;       /* int32 [T] */
    cl_mem X;         /* [T][hc*E] HC state */
    cl_mem flat;      /* [T][hc*E] RMSNorm(X) */
    cl_mem mix;       /* [T][(2+hc)*hc] */
    cl_mem post, comb;/* [T][hc], [T][hc*hc] */
    cl_mem x, xn;     /* [T][E] */
    cl_mem qr, qn;    /* [T][q_lora] */
    cl_mem q;         /* [T][H*D] */
    cl_mem kv;        /* [T][D] */
    cl_mem ckv, csc;  /* [T][2*max(D, ID)] compressor projections */
    cl_mem iq;        /* [T][IH*ID] */
    cl_mem iw;        /* [T][IH] */
    cl_mem scores;    /* [T][comp_cap] */
    cl_mem isel;      /* int32 [T][top_k] */
    cl_mem ao;        /* [T][H*D] */
    cl_mem low;       /* [T][G*O] */
    cl_mem y;         /* [T][E] */
    cl_mem rl;        /* [T][n_expert] router logits */
    cl_mem esel;      /* int32 [T][n_used] */
    cl_mem ew;        /* [T][n_used] */
    cl_mem g;         /* [T][n_used][F]: routed gate/up + SwiGLU (down input) */
    cl_mem yd;        /* [T][n_used][E] */
    cl_mem sg, su;    /* [T][F_shared] */
    cl_mem ys;        /* [T][E] */
    cl_mem hmix;      /* [T][hc] */
    cl_mem logits;    /* [T][n_vocab] */
    cl_mem gidx;      /* int32 [T][o_groups]: g (the output groups as "experts") */
    cl_mem plan;      /* int32: expert-grouped plan of the chunk's routed slots */
    cl_mem gplan;     /* int32: the same for the output groups (per chunk) */
    cl_mem tplan;     /* int32: tiled-GEMM plan of the routed slots (tiled_ready) */
    cl_mem tgplan;    /* int32: tiled-GEMM plan of the output groups (tiled_ready) */
} ds4_scratch;

struct ds4_session {
    ds4_engine *e;
    uint32_t n_ctx;
    uint32_t pos;
    uint32_t chunk;
    uint32_t cap;            /* raw ring rows */
    ds4_layer_kv layers[DS4_MAX_LAYERS];
    ds4_scratch s;
    float *logits;           /* host copy of the last token's logits */
    bool has_logits;
    uint64_t device_bytes;
    /* Routed-expert tap (calib.c: imatrix collection).  When set, the ffn
     * of every layer calls it once per chunk after the SwiGLU, while
     * s.xn (gate/up input), s.esel and s.g (down input) hold the chunk's
     * values; it may only enqueue.  NULL (the default): one branch. */
    int (*moe_tap)(void *ctx, ds4_session *s, uint32_t il, uint32_t T, ds4_error *err);
    void *moe_tap_ctx;
};

/* kvstate.c */
int ds4_kv_alloc(ds4_session *s, ds4_error *err);
void ds4_kv_release(ds4_session *s);
/* Set the compressor frontiers to their empty state (kv 0, score -1e30). */
int ds4_kv_reset(ds4_session *s, ds4_error *err);

/* forward.c: run tokens[0..T) at positions s->pos .. s->pos+T-1 through the
 * model; T <= s->chunk, ids already validated.  Logits of every token are
 * left in s->s.logits ([T][V]) when all_logits, else only the last token's
 * (row 0).  Does not advance s->pos (the caller does after success). */
int ds4_forward_chunk(ds4_session *s, const int32_t *tokens, uint32_t T, bool all_logits, ds4_error *err);

/* Fill the RoPE tables of e (engine.c calls it at load). */
int ds4_forward_init(ds4_engine *e, ds4_error *err);
void ds4_forward_release(ds4_engine *e);

#endif
