/* ops.h - the OpenCL operations of the DeepSeek V4 forward pass (besides the
 * weight matrix products of kernels.h), one typed enqueue function each.
 *
 * Conventions (shared by every op):
 *   - Every op works on a chunk of T tokens at absolute positions
 *     pos0 .. pos0+T-1 (decode is T = 1).  Activations are f32, row-major
 *     [T][width]; offsets of activation buffers count floats.
 *   - Weights are GGUF tensors given as (cl_mem, byte offset, type): norm
 *     weights, sinks, HC scale/base and router bias are F32; the APE and
 *     other small matrices may be F16/BF16/F32 (the op converts).
 *   - An op enqueues on ops->rt's in-order queue and returns; no host sync,
 *     no allocation, no reads back.  Arguments are validated (sizes fit the
 *     kernels' 32-bit indices, widths are the multiples the kernel needs) and
 *     a bad call fails with a message naming the op, never an enqueue.
 *   - Masked / empty values use -1e30, never -inf (no inf - inf NaNs).
 *   - Every op has a host reference (tests/ref_dense.c, tests/ref_attn.c)
 *     with the same arguments on host arrays; tests/test_ops_*.c compare.
 *
 * The ops are the rooms of model.md §2: embedding, RMSNorm, HC pre/post/head,
 * tail RoPE, the FP8 / Hadamard+FP4 simulations, the raw KV ring, the
 * compressors, the indexer, attention with sinks, the router and the routed
 * experts.  Which layer calls what is forward.c's business.
 */
#ifndef DS4_OPS_H
#define DS4_OPS_H

#include "kernels.h"

/* A weight tensor on the device. */
typedef struct ds4_wref {
    cl_mem mem;
    uint64_t off;  /* bytes */
    uint32_t type; /* GGML type id */
} ds4_wref;

/* An f32 activation array on the device. */
typedef struct ds4_aref {
    cl_mem mem;
    uint64_t off;  /* floats */
} ds4_aref;

typedef struct ds4_ops {
    ds4_kernels *k;   /* the program and the matrix kernels */
    ds4_runtime *rt;
    /* dense ops (src/ops_dense.c) */
    cl_kernel embed, rmsnorm, hc_pre, hc_post, hc_head, rope_tail, fp8_sim, hadamard_fp4;
    cl_kernel kv_store, router, swiglu, moe_sum, add;
    /* attention-side ops (src/ops_attn.c) */
    cl_kernel comp_update, indexer_scores, topk, attention, moe_matmul[40];
    cl_kernel attention_combine; /* split-KV decode (GPU-style builds) */
    cl_mem att_part;             /* its partials; NULL: attention never splits */
    /* fused / expert-grouped expert products (src/ops_moe.c) */
    cl_kernel moe_gu[40], moe_down[40], moe_tile[40], moe_tgu[40], moe_plan;
    cl_kernel moe_gu8[40], moe_down8[40]; /* int8 activations (q8x builds) */
} ds4_ops;

/* Create every op kernel from k's program (ops_dense_init + ops_attn_init). */
int ds4_ops_init(ds4_ops *ops, ds4_kernels *k, ds4_error *err);
int ds4_ops_dense_init(ds4_ops *ops, ds4_error *err);
int ds4_ops_attn_init(ds4_ops *ops, ds4_error *err);
int ds4_ops_moe_init(ds4_ops *ops, ds4_error *err);
void ds4_ops_free(ds4_ops *ops);

/* ---------------------------------------------------------------- dense -- */

/* X[t][s][d] = f32(embd[tokens[t]][d]) for every stream s < n_hc, d < n_embd.
 * embd: [n_embd, n_vocab] F32/F16/BF16/Q8_0 (row per token).  tokens: int32
 * [T] on the device; ids were validated by the caller (< n_vocab). */
int ds4_op_embed(ds4_ops *ops, ds4_wref embd, uint32_t n_embd, cl_mem tokens, uint64_t tok_off,
                 uint32_t T, uint32_t n_hc, ds4_aref X, ds4_error *err);

/* For each of `rows` rows of `n` floats (row stride `stride` floats):
 * y = x / sqrt(mean(x^2) + eps) * (w ? w : 1).  Sum of squares accumulated
 * in f32 (as transformers).  w: F32 [n] or mem == NULL.  y may equal x. */
int ds4_op_rmsnorm(ds4_ops *ops, ds4_aref x, ds4_aref y, uint32_t n, uint32_t rows, uint32_t stride,
                   ds4_wref w, float eps, ds4_error *err);

/* HC pre, given mix[t][0..(2+hc)*hc) = hc_fn · RMSNorm(X[t]) (computed by the
 * caller with ds4_op_rmsnorm + ds4_matmul):
 *   pre[i]  = sigmoid(mix[i]*scale[0] + base[i]) + hc_eps
 *   post[j] = 2*sigmoid(mix[hc+j]*scale[1] + base[hc+j])
 *   comb[i][j] = mix[2hc+i*hc+j]*scale[2] + base[2hc+i*hc+j]; softmax over j
 *     per row i, + hc_eps; then divide each column by (col sum + hc_eps);
 *     then (iters-1) times: rows by (row sum + eps), columns by (col sum + eps)
 *   x[t][d] = sum_i pre[i] * X[t][i][d]
 * Outputs: x [T][n_embd], post [T][hc], comb [T][hc*hc] (row-major [i][j]).
 * scale: F32 [3]; base: F32 [(2+hc)*hc]. */
int ds4_op_hc_pre(ds4_ops *ops, ds4_aref X, ds4_aref mix, ds4_wref scale, ds4_wref base, uint32_t n_hc,
                  uint32_t n_embd, uint32_t T, uint32_t iters, float hc_eps, ds4_aref x, ds4_aref post,
                  ds4_aref comb, ds4_error *err);

/* ds4_op_hc_pre, then xn = RMSNorm(x) * norm_w (norm_w.mem NULL: no
 * weight) in the same launch, summed in ds4_op_rmsnorm's order (the same
 * values as the two ops). */
int ds4_op_hc_pre_norm(ds4_ops *ops, ds4_aref X, ds4_aref mix, ds4_wref scale, ds4_wref base, uint32_t n_hc,
                       uint32_t n_embd, uint32_t T, uint32_t iters, float hc_eps, ds4_aref x, ds4_aref post,
                       ds4_aref comb, ds4_wref norm_w, float eps, ds4_aref xn, ds4_error *err);

/* HC post, in place on X: X[t][j][d] = post[t][j]*y[t][d] + sum_i comb[t][i][j]*X[t][i][d]. */
int ds4_op_hc_post(ds4_ops *ops, ds4_aref X, ds4_aref y, ds4_aref post, ds4_aref comb, uint32_t n_hc,
                   uint32_t n_embd, uint32_t T, ds4_error *err);

/* HC head: a_i = sigmoid(mix[t][i]*scale[0] + base[i]) + hc_eps;
 * h[t][d] = sum_i a_i * X[t][i][d].  mix [T][hc] = output_hc_fn · RMSNorm(X). */
int ds4_op_hc_head(ds4_ops *ops, ds4_aref X, ds4_aref mix, ds4_wref scale, ds4_wref base, uint32_t n_hc,
                   uint32_t n_embd, uint32_t T, float hc_eps, ds4_aref h, ds4_error *err);

/* Interleaved RoPE on the last n_rot dims of each of `heads` heads of width
 * head_dim, for T rows (row t = heads*head_dim floats) at position
 * p(t) = pos_base + t*pos_step.  Pair i (dims head_dim-n_rot+2i, +2i+1):
 *   theta = (float)p * inv_freq[i]   (f32 product, as transformers)
 *   x0' = x0*cos - x1*sin, x1' = x0*sin + x1*cos;  inverse: sin -> -sin.
 * inv_freq: f32 [n_rot/2] on the device (built by the caller from the
 * layer's base / YaRN parameters).  In place. */
int ds4_op_rope_tail(ds4_ops *ops, ds4_aref x, uint32_t T, uint32_t heads, uint32_t head_dim, uint32_t n_rot,
                     uint32_t pos_base, uint32_t pos_step, ds4_aref inv_freq, int inverse, ds4_error *err);

/* FP8 E4M3 round trip (qsim.h rule) of dims [0, n_sim) of each of `rows`
 * rows of `stride` floats, in blocks of 64 (n_sim a multiple of 64). */
int ds4_op_fp8_sim(ds4_ops *ops, ds4_aref x, uint32_t rows, uint32_t stride, uint32_t n_sim, ds4_error *err);

/* Hadamard (n = width, a power of two <= 256) then FP4 E2M1 round trip in
 * blocks of 32 (qsim.h rule), on each of `rows` rows of `width` floats. */
int ds4_op_hadamard_fp4(ds4_ops *ops, ds4_aref x, uint32_t rows, uint32_t width, ds4_error *err);

/* Raw KV ring store: ring[(pos0+t) % cap][d] = kv[t][d] (rounded through f16
 * when round_f16), t < T, d < width.  ring is f32 [cap][width]. */
int ds4_op_kv_store(ds4_ops *ops, ds4_aref kv, ds4_aref ring, uint32_t width, uint32_t cap, uint32_t pos0,
                    uint32_t T, int round_f16, ds4_error *err);

/* Router.  p[e] = sqrt(softplus(logits[t][e])) (softplus(x) = x for x > 20,
 * else log1p(exp(x))).  Selection: hash layers (tid2eid.mem != NULL):
 * sel[t][k] = tid2eid[tokens[t]][k] (I32 [n_used, n_vocab]: row per token);
 * else the n_used largest p[e] + bias[e] (bias F32 [n_expert] or mem NULL =
 * 0), ties to the lower expert id, in descending order.
 * w[t][k] = p[sel] / max(sum_k p[sel_k], 2^-14) * scale  (ds4's floor; the
 * tests use sums far above it).  Outputs sel int32 [T][n_used], w f32
 * [T][n_used]. */
int ds4_op_router(ds4_ops *ops, ds4_aref logits, uint32_t n_expert, uint32_t n_used, uint32_t T,
                  ds4_wref bias, ds4_wref tid2eid, cl_mem tokens, uint64_t tok_off, float scale, cl_mem sel,
                  ds4_aref w, ds4_error *err);

/* Clamped SwiGLU: for `rows` rows of n values,
 * mid = silu(min(g, c)) * clamp(u, -c, c) * (w ? w[row] : 1).
 * w: f32 [rows] or mem NULL.  mid may equal g or u. */
int ds4_op_swiglu(ds4_ops *ops, ds4_aref g, ds4_aref u, ds4_aref w, uint32_t n, uint32_t rows, float clamp,
                  ds4_aref mid, ds4_error *err);

/* out[t][d] = sum_{k < n_used} y[t][k][d] (+ add[t][d] when add.mem). */
int ds4_op_moe_sum(ds4_ops *ops, ds4_aref y, uint32_t n_used, uint32_t n, uint32_t T, ds4_aref add,
                   ds4_aref out, ds4_error *err);

/* out[i] = a[i] + b[i], i < n.  out may equal a or b. */
int ds4_op_add(ds4_ops *ops, ds4_aref a, ds4_aref b, ds4_aref out, uint64_t n, ds4_error *err);

/* ------------------------------------------------------------ attention -- */

/* Streaming compressor (model.md §2.4.5), one instance of head width D and
 * ratio r (4: overlapped, W = 2D; 128: W = D).  For each token t in order
 * (pos = pos0 + t):
 *   score = sc[t] + ape[pos % r]   (ape [W, r]: row per position mod r)
 *   r = 4:   state row 4 + pos%4 <- (kv[t], score)
 *   r = 128: state row pos%128   <- (kv[t], score)
 *   when (pos+1) % r == 0, row w = (pos+1)/r - 1 is emitted into
 *   out[w - out_first][d], d < D (before norm/rope/sim, which the caller
 *   applies):
 *     r = 128: softmax over the 128 rows of score[.][d], weights · kv[.][d]
 *     r = 4:   8 candidates: state rows 0..3 at column d (lane A of the
 *              previous window) and rows 4..7 at column D+d (lane B of this
 *              window), softmax over the 8 scores, weights · kv; then rows
 *              4..7 move to rows 0..3.
 * state_kv / state_sc: f32 [8 or 128][W], initialised by the caller to
 * kv = 0 and score = -1e30 (the frontier; saved with snapshots).
 * kv, sc: [T][W] f32 (the projections of the normed input).  out rows are
 * row-major [.][D]; out_first is the index of out's row 0. */
int ds4_op_comp_update(ds4_ops *ops, ds4_aref kv, ds4_aref sc, ds4_wref ape, ds4_aref state_kv,
                       ds4_aref state_sc, uint32_t D, uint32_t ratio, uint32_t pos0, uint32_t T, ds4_aref out,
                       uint32_t out_first, ds4_error *err);

/* Lightning-indexer scores: for token t (pos = pos0 + t) and compressed row
 * c < n_rows, visible when c < (pos+1)/4:
 *   s[t][c] = sum_h w[t][h] * max(0, q[t][h] · rows[c])
 * and -1e30 for rows not visible.  q [T][n_head][dim], w [T][n_head] (the
 * caller applies the 1/sqrt(n_head*dim) scale), rows [n_rows][dim];
 * scores [T][n_rows]. */
int ds4_op_indexer_scores(ds4_ops *ops, ds4_aref q, ds4_aref w, ds4_aref rows, uint32_t n_head, uint32_t dim,
                          uint32_t n_rows, uint32_t pos0, uint32_t T, ds4_aref scores, ds4_error *err);

/* Top-k per token: sel[t][0..k) = indices of the k largest scores among the
 * visible rows c < (pos0+t+1)/4 (ties to the lower index), in ascending index
 * order; when fewer than k rows are visible, all visible rows then -1.
 * scores [T][n_rows] f32, sel int32 [T][k]. */
int ds4_op_topk(ds4_ops *ops, ds4_aref scores, uint32_t n_rows, uint32_t k, uint32_t pos0, uint32_t T,
                cl_mem sel, ds4_error *err);

/* Attention with sinks for T tokens and H heads of width D (K = V = row):
 * visible rows of token t (pos = pos0 + t):
 *   raw: positions max(0, pos-window+1) .. pos, row (p % cap) of ring [cap][D]
 *        (the caller stored the whole chunk first; cap >= window + T - 1);
 *   compressed (comp.mem != NULL, ratio r): if sel == NULL, rows
 *        0 .. (pos+1)/r - 1 of comp [.][D]; else the rows sel[t][0..n_sel)
 *        that are >= 0 and < (pos+1)/r (sel: int32, sel_off counts int32s).
 * s_j = q[t][h]·row_j * scale; m = max(sink[h], max s_j);
 * out[t][h] = sum_j exp(s_j - m) row_j / (exp(sink[h] - m) + sum_j exp(s_j - m)).
 * q, out: [T][H][D]; sinks F32 [H]. */
int ds4_op_attention(ds4_ops *ops, ds4_aref q, ds4_aref ring, uint32_t cap, uint32_t window, ds4_aref comp,
                     uint32_t ratio, cl_mem sel, uint64_t sel_off, uint32_t n_sel, ds4_wref sinks, uint32_t H,
                     uint32_t D, uint32_t pos0, uint32_t T, float scale, ds4_aref out, ds4_error *err);

/* Routed expert products: y[t][k][r] = sum_c W[sel[t][k]][r][c] * x[xrow][c]
 * for r < nrows, with xrow = t when x_per_slot == 0 (gate/up: one input per
 * token) and xrow = t*n_used + k when x_per_slot == 1 (down: one input per
 * slot).  W: 3-D GGUF tensor [ncols, nrows, n_expert] of any matrix type
 * (expert e's slab starts at e*nrows*row_bytes).  sel int32 [T][n_used];
 * entries outside [0, n_expert) are a caller bug (validated by the router). */
int ds4_op_moe_matmul(ds4_ops *ops, ds4_wref W, uint32_t ncols, uint32_t nrows, uint32_t n_expert,
                      ds4_aref x, int x_per_slot, cl_mem sel, uint32_t n_used, uint32_t T, ds4_aref y,
                      ds4_error *err);

/* ------------------------------------------------- fused experts (moe) -- */

/* Ints of an expert-grouped plan for n_slots slots over n_expert experts
 * (or groups) in tiles of `tile` slots (the program's MM_TOKENS). */
uint64_t ds4_moe_plan_ints(uint32_t n_slots, uint32_t n_expert, uint32_t tile);
/* Most tiles such a plan can hold (the grid of the grouped kernels). */
uint32_t ds4_moe_plan_max_tiles(uint32_t n_slots, uint32_t n_expert, uint32_t tile);

/* Sort slots 0..n_slots-1 by expert sel[s] (int32 at sel_off) into `plan`
 * (int32, ds4_moe_plan_ints entries): [0] tile count, [1..1+n_slots) the
 * slots ordered by expert, then (expert, start, count) per tile of at most
 * MM_TOKENS slots.  n_expert <= 1024. */
int ds4_op_moe_plan(ds4_ops *ops, cl_mem sel, uint64_t sel_off, uint32_t n_slots, uint32_t n_expert, cl_mem plan,
                    ds4_error *err);

/* Routed (or shared) expert gate/up with the clamped SwiGLU fused:
 *   mid[s][r] = silu(min(g, c)) * clamp(u, -c, c) * w[s],
 *   g = Wg[e][r]·x[t], u = Wu[e][r]·x[t], slot s = t*n_used + k, e = sel[s].
 * Wg, Wu: 3-D [ncols, nrows, n_expert] of one type.  sel == NULL: the shared
 * expert (2-D weights, e = 0, no weight w, n_used must be 1).  plan == NULL:
 * one slot per work-group column (decode); else the expert-grouped plan of
 * these T*n_used slots (ds4_op_moe_plan; prefill).  Same values as
 * ds4_op_moe_matmul twice + ds4_op_swiglu. */
int ds4_op_moe_gate_up(ds4_ops *ops, ds4_wref Wg, ds4_wref Wu, uint32_t ncols, uint32_t nrows, uint32_t n_expert,
                       ds4_aref x, cl_mem sel, uint32_t n_used, uint32_t T, ds4_aref w, float clamp, cl_mem plan,
                       ds4_aref mid, ds4_error *err);

/* Routed down products summed per token (decode path):
 *   y[t][r] = sum_k W[sel[t][k]][r]·mid[t*n_used+k] (+ add[t][r] when add.mem). */
int ds4_op_moe_down_sum(ds4_ops *ops, ds4_wref W, uint32_t ncols, uint32_t nrows, uint32_t n_expert, ds4_aref mid,
                        cl_mem sel, uint32_t n_used, uint32_t T, ds4_aref add, ds4_aref y, ds4_error *err);

/* ds4_op_moe_matmul through a plan (prefill): y[s][r] = W[e(s)][r]·x[xrow],
 * xrow = s when x_per_slot else s / n_used, for the n_slots slots of plan. */
int ds4_op_moe_grouped(ds4_ops *ops, ds4_wref W, uint32_t ncols, uint32_t nrows, uint32_t n_expert, ds4_aref x,
                       int x_per_slot, uint32_t n_used, uint32_t n_slots, cl_mem plan, ds4_aref y, ds4_error *err);

#endif
