/* forward.c - the DeepSeek V4 layer graph, enqueued on the device.
 *
 * One function, ds4_forward_chunk, runs a chunk of T tokens through every
 * layer (layer-major: the whole chunk goes through layer 0, then layer 1...)
 * and the output head.  It only enqueues: the first host synchronisation is
 * the read of the logits at the very end.  The steps follow model.md §2:
 *
 *   embed -> X (hc streams)
 *   per layer:
 *     attention:  HC pre -> RMSNorm -> q path (q_a, norm, q_b, head norm,
 *                 RoPE) and kv path (kv, norm, RoPE, FP8 sim) -> raw ring;
 *                 compressor(s) emit rows, then norm / RoPE / sim on the new
 *                 rows; indexer top-k when more rows than top_k are visible;
 *                 attention with sinks -> inverse RoPE -> grouped wo_a ->
 *                 wo_b -> HC post
 *     ffn:        HC pre -> RMSNorm -> router (hash or biased top-k) ->
 *                 routed experts (gate/up, clamped SwiGLU x weight, down,
 *                 sum) + shared expert -> HC post
 *   head: HC collapse -> RMSNorm -> vocab projection.
 *
 * Shapes come from the model binding only (model.h); every op validates its
 * arguments, so a wrong graph fails loudly rather than reading out of bounds.
 * Nothing here allocates: scratch and KV buffers belong to the session.
 */
#include "forward.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "quant.h"

/* ------------------------------------------------------------------------ */
/* RoPE tables                                                              */
/* ------------------------------------------------------------------------ */

/* inv_freq[i] for pair i of n_rot dims: base^(-2i/n_rot), blended with
 * inv_freq/factor by the YaRN ramp when factor > 1 (transformers'
 * _compute_yarn_parameters with attention_factor 1). */
static void rope_table(float *out, uint32_t n_rot, double base, double factor, double orig_ctx,
                       double beta_fast, double beta_slow) {
    const uint32_t half = n_rot / 2;
    double low = 0, high = 0;
    bool yarn = factor > 1.0;
    if (yarn) {
        const double two_pi = 2.0 * M_PI;
        low = floor((double)n_rot * log(orig_ctx / (beta_fast * two_pi)) / (2.0 * log(base)));
        high = ceil((double)n_rot * log(orig_ctx / (beta_slow * two_pi)) / (2.0 * log(base)));
        if (low < 0) low = 0;
        if (high > n_rot - 1) high = n_rot - 1;
        if (low == high) high += 0.001;
    }
    for (uint32_t i = 0; i < half; i++) {
        /* transformers computes base ** (2i/n) in f32; do the same rounding. */
        float expo = (float)(2 * i) / (float)n_rot;
        float pos_freq = powf((float)base, expo);
        float extrap = 1.0f / pos_freq;
        if (!yarn) {
            out[i] = extrap;
            continue;
        }
        float interp = 1.0f / ((float)factor * pos_freq);
        double r = ((double)i - low) / (high - low);
        float ramp = (float)(r < 0 ? 0 : r > 1 ? 1 : r);
        out[i] = interp * ramp + extrap * (1.0f - ramp);
    }
}

int ds4_forward_init(ds4_engine *e, ds4_error *err) {
    const ds4_hparams *hp = &e->model.hp;
    uint32_t half = hp->n_rot / 2;
    float *tab = calloc(half ? half : 1, sizeof(float));
    if (!tab) return ds4_fail(err, "out of memory");
    int rc = 0;
    rope_table(tab, hp->n_rot, hp->rope_base, 1.0, 1.0, 1.0, 1.0);
    rc = ds4_buffer_new(&e->rt, (uint64_t)half * 4, &e->inv_freq_main, err);
    if (rc == 0) rc = ds4_buffer_write(&e->rt, e->inv_freq_main, 0, tab, (uint64_t)half * 4, err);
    if (rc == 0) {
        rope_table(tab, hp->n_rot, hp->rope_compress_base, hp->rope_scale, (double)hp->rope_orig_ctx,
                   hp->yarn_beta_fast, hp->yarn_beta_slow);
        rc = ds4_buffer_new(&e->rt, (uint64_t)half * 4, &e->inv_freq_comp, err);
    }
    if (rc == 0) rc = ds4_buffer_write(&e->rt, e->inv_freq_comp, 0, tab, (uint64_t)half * 4, err);
    free(tab);
    if (rc != 0) return -1;
    cl_int cl_rc = CL_SUCCESS;
    e->k_scale = clCreateKernel(e->kern.program, "scale_f32", &cl_rc);
    if (cl_rc != CL_SUCCESS || !e->k_scale) {
        e->k_scale = NULL;
        return ds4_fail(err, "clCreateKernel(scale_f32) failed: %s", ds4_cl_strerror(cl_rc));
    }
    return 0;
}

void ds4_forward_release(ds4_engine *e) {
    if (e->k_scale) clReleaseKernel(e->k_scale);
    if (e->inv_freq_main) clReleaseMemObject(e->inv_freq_main);
    if (e->inv_freq_comp) clReleaseMemObject(e->inv_freq_comp);
    e->k_scale = NULL;
    e->inv_freq_main = e->inv_freq_comp = NULL;
}

/* ------------------------------------------------------------------------ */
/* Small helpers                                                            */
/* ------------------------------------------------------------------------ */

static ds4_aref A(cl_mem m, uint64_t off) {
    ds4_aref a = {m, off};
    return a;
}

static const ds4_aref NO_A = {NULL, 0};
static const ds4_wref NO_W = {NULL, 0, 0};

static ds4_wref W(const ds4_engine *e, const gguf_tensor *t) {
    ds4_wref w = {NULL, 0, 0};
    if (!t) return w;
    ds4_tensor_ref r = ds4_weights_ref(&e->plan, &e->file, t);
    w.mem = r.mem;
    w.off = r.offset;
    w.type = t->type;
    return w;
}

/* Chunks of at least this many tokens go through the tiled GEMM. */
#define TILED_MIN_TOKENS 16

static bool use_tiled(const ds4_engine *e, uint32_t type, uint32_t T) {
    return e->tiled_ready && T >= TILED_MIN_TOKENS && ds4_tiled_has_type(&e->tiled, type);
}

/* y[T][nrows] = t · x[T][ncols] for a 2-D weight tensor t. */
static int mm(ds4_engine *e, const gguf_tensor *t, ds4_aref x, ds4_aref y, uint32_t T, ds4_error *err) {
    ds4_tensor_ref r = ds4_weights_ref(&e->plan, &e->file, t);
    if (T == 1)
        return ds4_matvec(&e->kern, t->type, r.mem, r.offset, t->ne[0], t->ne[1], x.mem, x.off, y.mem, y.off, err);
    if (use_tiled(e, t->type, T))
        return ds4_tiled_matmul(&e->tiled, t->type, r.mem, r.offset, t->ne[0], t->ne[1], x.mem, x.off, y.mem, y.off,
                                T, err);
    return ds4_matmul(&e->kern, t->type, r.mem, r.offset, t->ne[0], t->ne[1], x.mem, x.off, y.mem, y.off, T, err);
}

/* x[0..n) *= s */
static int scale(ds4_engine *e, ds4_aref x, uint32_t n, float s, ds4_error *err) {
    cl_uint off = (cl_uint)x.off, cn = n;
    if (x.off > 0xffffffffULL) return ds4_fail(err, "scale: offset too large");
    DS4_CL_CHECK(clSetKernelArg(e->k_scale, 0, sizeof(cl_mem), &x.mem), err);
    DS4_CL_CHECK(clSetKernelArg(e->k_scale, 1, sizeof(cl_uint), &off), err);
    DS4_CL_CHECK(clSetKernelArg(e->k_scale, 2, sizeof(cl_uint), &cn), err);
    DS4_CL_CHECK(clSetKernelArg(e->k_scale, 3, sizeof(float), &s), err);
    size_t local = 64, global = ((size_t)n + 63) / 64 * 64;
    return ds4_enqueue(&e->rt, e->k_scale, 1, &global, &local, (uint64_t)n * 8, err);
}

/* Dims of a KV row that go through the FP8 round trip: the non-RoPE dims, in
 * whole blocks of 64 (Flash: 448 = 7 blocks; a small test model's partial
 * last block stays exact, as in the official act_quant, which needs whole
 * blocks). */
static uint32_t fp8_dims(uint32_t head_dim, uint32_t n_rot) { return (head_dim - n_rot) / 64 * 64; }

#define TRY(call)                   \
    do {                            \
        if ((call) != 0) return -1; \
    } while (0)

/* ------------------------------------------------------------------------ */
/* Sublayers                                                                */
/* ------------------------------------------------------------------------ */

/* HC pre: x = sum_i pre_i X_i, with post/comb kept for the HC post, and
 * the sublayer's input norm xn = RMSNorm(x) * norm in the same launch. */
static int hc_pre(ds4_session *s, const gguf_tensor *fn, const gguf_tensor *sc, const gguf_tensor *base,
                  const gguf_tensor *norm, uint32_t T, ds4_error *err) {
    ds4_engine *e = s->e;
    const ds4_hparams *hp = &e->model.hp;
    const uint32_t n = hp->n_hc * hp->n_embd;
    TRY(ds4_op_rmsnorm(&e->ops, A(s->s.X, 0), A(s->s.flat, 0), n, T, n, NO_W, hp->rms_eps, err));
    TRY(mm(e, fn, A(s->s.flat, 0), A(s->s.mix, 0), T, err));
    return ds4_op_hc_pre_norm(&e->ops, A(s->s.X, 0), A(s->s.mix, 0), W(e, sc), W(e, base), hp->n_hc, hp->n_embd, T,
                              hp->n_sinkhorn, hp->hc_eps, A(s->s.x, 0), A(s->s.post, 0), A(s->s.comb, 0), W(e, norm),
                              hp->rms_eps, A(s->s.xn, 0), err);
}

/* Emit the compressed rows of one compressor instance for this chunk and
 * finish the new rows (norm, RoPE at w*r, simulation).  Returns the number
 * of rows visible at the end of the chunk in *n_rows. */
static int compress(ds4_session *s, const gguf_tensor *wkv, const gguf_tensor *wgate, const gguf_tensor *ape,
                    const gguf_tensor *norm, cl_mem state_kv, cl_mem state_sc, cl_mem rows, uint32_t D,
                    uint32_t ratio, bool indexer, uint32_t T, uint32_t *n_rows, ds4_error *err) {
    ds4_engine *e = s->e;
    const ds4_hparams *hp = &e->model.hp;
    const uint32_t pos0 = s->pos;
    TRY(mm(e, wkv, A(s->s.xn, 0), A(s->s.ckv, 0), T, err));
    TRY(mm(e, wgate, A(s->s.xn, 0), A(s->s.csc, 0), T, err));
    TRY(ds4_op_comp_update(&e->ops, A(s->s.ckv, 0), A(s->s.csc, 0), W(e, ape), A(state_kv, 0), A(state_sc, 0), D,
                           ratio, pos0, T, A(rows, 0), 0, err));
    uint32_t before = pos0 / ratio, after = (pos0 + T) / ratio;
    *n_rows = after;
    if (after == before) return 0;
    uint32_t n_new = after - before;
    ds4_aref fresh = A(rows, (uint64_t)before * D);
    TRY(ds4_op_rmsnorm(&e->ops, fresh, fresh, D, n_new, D, W(e, norm), hp->rms_eps, err));
    TRY(ds4_op_rope_tail(&e->ops, fresh, n_new, 1, D, hp->n_rot, before * ratio, ratio, A(e->inv_freq_comp, 0), 0,
                         err));
    if (e->quant_sim) {
        if (indexer) TRY(ds4_op_hadamard_fp4(&e->ops, fresh, n_new, D, err));
        else if (fp8_dims(D, hp->n_rot)) TRY(ds4_op_fp8_sim(&e->ops, fresh, n_new, D, fp8_dims(D, hp->n_rot), err));
    }
    return 0;
}

static int attention(ds4_session *s, uint32_t il, const int32_t *tokens, uint32_t T, ds4_error *err) {
    (void)tokens;
    ds4_engine *e = s->e;
    const ds4_hparams *hp = &e->model.hp;
    const ds4_layer *L = &e->model.layers[il];
    ds4_layer_kv *kv = &s->layers[il];
    const uint32_t E = hp->n_embd, H = hp->n_head, D = hp->head_dim, R = hp->n_rot;
    const uint32_t pos0 = s->pos;
    cl_mem inv_freq = L->ratio ? e->inv_freq_comp : e->inv_freq_main;

    TRY(hc_pre(s, L->hc_attn_fn, L->hc_attn_scale, L->hc_attn_base, L->attn_norm, T, err));

    /* q path */
    TRY(mm(e, L->attn_q_a, A(s->s.xn, 0), A(s->s.qr, 0), T, err));
    TRY(ds4_op_rmsnorm(&e->ops, A(s->s.qr, 0), A(s->s.qn, 0), hp->q_lora, T, hp->q_lora, W(e, L->attn_q_a_norm),
                       hp->rms_eps, err));
    TRY(mm(e, L->attn_q_b, A(s->s.qn, 0), A(s->s.q, 0), T, err));
    TRY(ds4_op_rmsnorm(&e->ops, A(s->s.q, 0), A(s->s.q, 0), D, T * H, D, NO_W, hp->rms_eps, err));
    TRY(ds4_op_rope_tail(&e->ops, A(s->s.q, 0), T, H, D, R, pos0, 1, A(inv_freq, 0), 0, err));

    /* kv path -> raw ring */
    TRY(mm(e, L->attn_kv, A(s->s.xn, 0), A(s->s.kv, 0), T, err));
    TRY(ds4_op_rmsnorm(&e->ops, A(s->s.kv, 0), A(s->s.kv, 0), D, T, D, W(e, L->attn_kv_a_norm), hp->rms_eps, err));
    TRY(ds4_op_rope_tail(&e->ops, A(s->s.kv, 0), T, 1, D, R, pos0, 1, A(inv_freq, 0), 0, err));
    if (e->quant_sim && fp8_dims(D, R)) TRY(ds4_op_fp8_sim(&e->ops, A(s->s.kv, 0), T, D, fp8_dims(D, R), err));
    TRY(ds4_op_kv_store(&e->ops, A(s->s.kv, 0), A(kv->ring, 0), D, s->cap, pos0, T, e->quant_sim, err));

    /* compressed rows and the indexer */
    ds4_aref comp = NO_A;
    cl_mem sel = NULL;
    uint32_t n_sel = 0;
    if (L->ratio) {
        uint32_t n_comp = 0;
        TRY(compress(s, L->comp_kv, L->comp_gate, L->comp_ape, L->comp_norm, kv->comp_kv, kv->comp_sc, kv->comp, D,
                     L->ratio, false, T, &n_comp, err));
        comp = A(kv->comp, 0);
        if (L->ratio == 4) {
            const uint32_t IH = hp->n_idx_head, ID = hp->idx_head_dim;
            uint32_t n_idx = 0;
            TRY(compress(s, L->idx_comp_kv, L->idx_comp_gate, L->idx_comp_ape, L->idx_comp_norm, kv->idx_kv,
                         kv->idx_sc, kv->idx, ID, 4, true, T, &n_idx, err));
            if (n_idx > hp->idx_top_k) {
                TRY(mm(e, L->idx_q_b, A(s->s.qn, 0), A(s->s.iq, 0), T, err));
                TRY(ds4_op_rope_tail(&e->ops, A(s->s.iq, 0), T, IH, ID, R, pos0, 1, A(e->inv_freq_comp, 0), 0,
                                     err));
                if (e->quant_sim) TRY(ds4_op_hadamard_fp4(&e->ops, A(s->s.iq, 0), T * IH, ID, err));
                TRY(mm(e, L->idx_proj, A(s->s.xn, 0), A(s->s.iw, 0), T, err));
                TRY(scale(e, A(s->s.iw, 0), T * IH, (float)(1.0 / sqrt((double)IH * ID)), err));
                TRY(ds4_op_indexer_scores(&e->ops, A(s->s.iq, 0), A(s->s.iw, 0), A(kv->idx, 0), IH, ID, n_idx, pos0,
                                          T, A(s->s.scores, 0), err));
                TRY(ds4_op_topk(&e->ops, A(s->s.scores, 0), n_idx, hp->idx_top_k, pos0, T, s->s.isel, err));
                sel = s->s.isel;
                n_sel = hp->idx_top_k;
            }
        }
    }
    TRY(ds4_op_attention(&e->ops, A(s->s.q, 0), A(kv->ring, 0), s->cap, hp->n_swa, comp, L->ratio, sel, 0, n_sel,
                         W(e, L->attn_sinks), H, D, pos0, T, (float)(1.0 / sqrt((double)D)), A(s->s.ao, 0), err));
    TRY(ds4_op_rope_tail(&e->ops, A(s->s.ao, 0), T, H, D, R, pos0, 1, A(inv_freq, 0), 1, err));

    /* grouped low-rank output: group g reads heads g*H/G.. and writes rows
     * g*O..: the groups are "experts" of one slab each (slot t*G + g), one
     * launch per chunk (the group plan is made once per chunk). */
    const uint32_t G = hp->o_groups, O = hp->o_lora, in_g = H * D / G;
    if (T == 1)
        TRY(ds4_op_moe_matmul(&e->ops, W(e, L->attn_output_a), in_g, O, G, A(s->s.ao, 0), 1, s->s.gidx, G, 1,
                              A(s->s.low, 0), err));
    else if (use_tiled(e, L->attn_output_a->type, T))
        TRY(ds4_tiled_moe(&e->tiled, W(e, L->attn_output_a), in_g, O, G, A(s->s.ao, 0), 1, G, T * G, s->s.tgplan,
                          A(s->s.low, 0), err));
    else
        TRY(ds4_op_moe_grouped(&e->ops, W(e, L->attn_output_a), in_g, O, G, A(s->s.ao, 0), 1, G, T * G, s->s.gplan,
                               A(s->s.low, 0), err));
    TRY(mm(e, L->attn_output_b, A(s->s.low, 0), A(s->s.y, 0), T, err));
    return ds4_op_hc_post(&e->ops, A(s->s.X, 0), A(s->s.y, 0), A(s->s.post, 0), A(s->s.comb, 0), hp->n_hc, E, T,
                          err);
}

static int ffn(ds4_session *s, uint32_t il, uint32_t T, ds4_error *err) {
    ds4_engine *e = s->e;
    const ds4_hparams *hp = &e->model.hp;
    const ds4_layer *L = &e->model.layers[il];
    const uint32_t E = hp->n_embd, K = hp->n_expert_used;
    const uint32_t F = (uint32_t)L->ffn_gate_exps->ne[1];
    const float clampv = hp->swiglu_clamp[il];

    TRY(hc_pre(s, L->hc_ffn_fn, L->hc_ffn_scale, L->hc_ffn_base, L->ffn_norm, T, err));

    TRY(mm(e, L->ffn_gate_inp, A(s->s.xn, 0), A(s->s.rl, 0), T, err));
    ds4_wref bias = L->hash_routed ? NO_W : W(e, L->exp_probs_b);
    ds4_wref hash = L->hash_routed ? W(e, L->tid2eid) : NO_W;
    TRY(ds4_op_router(&e->ops, A(s->s.rl, 0), hp->n_expert, K, T, bias, hash, s->s.tok, 0, hp->expert_weights_scale,
                      s->s.esel, A(s->s.ew, 0), err));

    const uint32_t FS = (uint32_t)L->ffn_gate_shexp->ne[1];
    if (T == 1) {
        /* decode: gate/up+SwiGLU of the routed and of the shared expert,
         * the shared down, then the routed downs summed onto it. */
        TRY(ds4_op_moe_gate_up(&e->ops, W(e, L->ffn_gate_exps), W(e, L->ffn_up_exps), E, F, hp->n_expert,
                               A(s->s.xn, 0), s->s.esel, K, 1, A(s->s.ew, 0), clampv, NULL, A(s->s.g, 0), err));
        if (s->moe_tap) TRY(s->moe_tap(s->moe_tap_ctx, s, il, T, err)); /* imatrix collection (calib.c) */
        TRY(ds4_op_moe_gate_up(&e->ops, W(e, L->ffn_gate_shexp), W(e, L->ffn_up_shexp), E, FS, 1, A(s->s.xn, 0),
                               NULL, 1, 1, NO_A, clampv, NULL, A(s->s.sg, 0), err));
        TRY(mm(e, L->ffn_down_shexp, A(s->s.sg, 0), A(s->s.ys, 0), T, err));
        TRY(ds4_op_moe_down_sum(&e->ops, W(e, L->ffn_down_exps), F, E, hp->n_expert, A(s->s.g, 0), s->s.esel, K, 1,
                                A(s->s.ys, 0), A(s->s.y, 0), err));
    } else if (use_tiled(e, L->ffn_gate_exps->type, T) && ds4_tiled_has_gate_up(&e->tiled, L->ffn_gate_exps->type) &&
               ds4_tiled_has_type(&e->tiled, L->ffn_down_exps->type)) {
        /* prefill on the tiled GEMM: slots sorted by expert into tiles of
         * GT_TOKS, each expert's rows decoded once per tile. */
        TRY(ds4_tiled_plan(&e->tiled, s->s.esel, 0, T * K, hp->n_expert, s->s.tplan, err));
        TRY(ds4_tiled_moe_gate_up(&e->tiled, W(e, L->ffn_gate_exps), W(e, L->ffn_up_exps), E, F, hp->n_expert,
                                  A(s->s.xn, 0), K, T, A(s->s.ew, 0), clampv, s->s.tplan, A(s->s.g, 0), err));
        if (s->moe_tap) TRY(s->moe_tap(s->moe_tap_ctx, s, il, T, err)); /* imatrix collection (calib.c) */
        TRY(ds4_tiled_moe(&e->tiled, W(e, L->ffn_down_exps), F, E, hp->n_expert, A(s->s.g, 0), 1, K, T * K,
                          s->s.tplan, A(s->s.yd, 0), err));
        TRY(mm(e, L->ffn_gate_shexp, A(s->s.xn, 0), A(s->s.sg, 0), T, err));
        TRY(mm(e, L->ffn_up_shexp, A(s->s.xn, 0), A(s->s.su, 0), T, err));
        TRY(ds4_op_swiglu(&e->ops, A(s->s.sg, 0), A(s->s.su, 0), NO_A, FS, T, clampv, A(s->s.sg, 0), err));
        TRY(mm(e, L->ffn_down_shexp, A(s->s.sg, 0), A(s->s.ys, 0), T, err));
        TRY(ds4_op_moe_sum(&e->ops, A(s->s.yd, 0), K, E, T, A(s->s.ys, 0), A(s->s.y, 0), err));
    } else {
        /* prefill: slots sorted by expert, each expert's rows read once per
         * tile of slots. */
        TRY(ds4_op_moe_plan(&e->ops, s->s.esel, 0, T * K, hp->n_expert, s->s.plan, err));
        TRY(ds4_op_moe_gate_up(&e->ops, W(e, L->ffn_gate_exps), W(e, L->ffn_up_exps), E, F, hp->n_expert,
                               A(s->s.xn, 0), s->s.esel, K, T, A(s->s.ew, 0), clampv, s->s.plan, A(s->s.g, 0), err));
        if (s->moe_tap) TRY(s->moe_tap(s->moe_tap_ctx, s, il, T, err)); /* imatrix collection (calib.c) */
        TRY(ds4_op_moe_grouped(&e->ops, W(e, L->ffn_down_exps), F, E, hp->n_expert, A(s->s.g, 0), 1, K, T * K,
                               s->s.plan, A(s->s.yd, 0), err));
        TRY(mm(e, L->ffn_gate_shexp, A(s->s.xn, 0), A(s->s.sg, 0), T, err));
        TRY(mm(e, L->ffn_up_shexp, A(s->s.xn, 0), A(s->s.su, 0), T, err));
        TRY(ds4_op_swiglu(&e->ops, A(s->s.sg, 0), A(s->s.su, 0), NO_A, FS, T, clampv, A(s->s.sg, 0), err));
        TRY(mm(e, L->ffn_down_shexp, A(s->s.sg, 0), A(s->s.ys, 0), T, err));
        TRY(ds4_op_moe_sum(&e->ops, A(s->s.yd, 0), K, E, T, A(s->s.ys, 0), A(s->s.y, 0), err));
    }
    return ds4_op_hc_post(&e->ops, A(s->s.X, 0), A(s->s.y, 0), A(s->s.post, 0), A(s->s.comb, 0), hp->n_hc, E, T,
                          err);
}

/* Output head for rows [first, first+n) of the chunk, logits into rows 0..n. */
static int head(ds4_session *s, uint32_t first, uint32_t n, ds4_error *err) {
    ds4_engine *e = s->e;
    const ds4_model *m = &e->model;
    const ds4_hparams *hp = &m->hp;
    const uint32_t HE = hp->n_hc * hp->n_embd;
    ds4_aref X = A(s->s.X, (uint64_t)first * HE);
    TRY(ds4_op_rmsnorm(&e->ops, X, A(s->s.flat, 0), HE, n, HE, NO_W, hp->rms_eps, err));
    TRY(mm(e, m->output_hc_fn, A(s->s.flat, 0), A(s->s.hmix, 0), n, err));
    TRY(ds4_op_hc_head(&e->ops, X, A(s->s.hmix, 0), W(e, m->output_hc_scale), W(e, m->output_hc_base), hp->n_hc,
                       hp->n_embd, n, hp->hc_eps, A(s->s.x, 0), err));
    TRY(ds4_op_rmsnorm(&e->ops, A(s->s.x, 0), A(s->s.x, 0), hp->n_embd, n, hp->n_embd, W(e, m->output_norm),
                       hp->rms_eps, err));
    return mm(e, m->output, A(s->s.x, 0), A(s->s.logits, 0), n, err);
}

int ds4_forward_chunk(ds4_session *s, const int32_t *tokens, uint32_t T, bool all_logits, ds4_error *err) {
    ds4_engine *e = s->e;
    const ds4_model *m = &e->model;
    const ds4_hparams *hp = &m->hp;
    if (T == 0 || T > s->chunk) return ds4_fail(err, "forward: chunk of %u tokens (max %u)", T, s->chunk);
    e->rt.prof.tag = -1;
    TRY(ds4_buffer_write(&e->rt, s->s.tok, 0, tokens, (uint64_t)T * sizeof(int32_t), err));
    TRY(ds4_op_embed(&e->ops, W(e, m->token_embd), hp->n_embd, s->s.tok, 0, T, hp->n_hc, A(s->s.X, 0), err));
    if (T > 1) TRY(ds4_op_moe_plan(&e->ops, s->s.gidx, 0, T * hp->o_groups, hp->o_groups, s->s.gplan, err));
    if (T > 1 && e->tiled_ready)
        TRY(ds4_tiled_plan(&e->tiled, s->s.gidx, 0, T * hp->o_groups, hp->o_groups, s->s.tgplan, err));
    for (uint32_t il = 0; il < hp->n_layer; il++) {
        e->rt.prof.tag = (int32_t)il;
        if (attention(s, il, tokens, T, err) != 0) return ds4_fail_wrap(err, "layer %u attention", il);
        if (ffn(s, il, T, err) != 0) return ds4_fail_wrap(err, "layer %u ffn", il);
    }
    e->rt.prof.tag = -1;
    if (all_logits) TRY(head(s, 0, T, err));
    else TRY(head(s, T - 1, 1, err));
    return 0;
}
