/* hc.cl - the hyper-connection mixes (ds4_op_hc_pre / _post / _head).
 *
 *   op_hc_pre: one work-group per token.  Work-item 0 turns the token's mix
 *   row into pre (local), post and comb (written out), running the
 *   Sinkhorn normalisation on a local hc x hc matrix; after a barrier the
 *   whole group collapses the streams, x[d] = sum_i pre[i] * X[i][d], and
 *   with do_norm also writes xn = RMSNorm(x) * w (ds4_op_hc_pre_norm: the
 *   sublayer's input norm fused in, one launch less per sublayer).
 *   op_hc_post: one work-item per (d, t): it reads the hc values of
 *   column d before writing any, so the update is in place.
 *   op_hc_head: one work-item per (d, t), each computing the hc sigmoid
 *   weights of its token itself (hc is small: no barrier needed).
 *
 * hc <= HC_MAX (checked by the host).  Scale and base are F32 at 4-byte
 * aligned byte offsets.  sigmoid(v) = 1 / (1 + exp(-v)), as torch.
 */

#define HC_MAX 16
/* Largest op_hc_pre work-group (the host asks for at most 1024). */
#define HC_MAX_WG 1024

inline float hc_sigmoid(float v) { return 1.0f / (1.0f + exp(-v)); }

/* The hc == 4 case (Flash) of op_hc_pre's serial part with the matrix in
 * registers: one work-item runs the 20 Sinkhorn rounds on four float4
 * rows instead of walking local memory.  Same operations in the same
 * order as the general loop (sums left to right, divisions by sum + eps),
 * so the results are identical. */
inline float hc_row_sum4(float4 r) { return ((r.x + r.y) + r.z) + r.w; }

inline void hc_pre_sinkhorn4(__global const float *m, __global const float *sc, __global const float *b,
                             uint iters, float hc_eps, __local float *pre_l, __global float *post,
                             __global float *comb) {
    for (uint i = 0; i < 4; i++) pre_l[i] = hc_sigmoid(m[i] * sc[0] + b[i]) + hc_eps;
    for (uint j = 0; j < 4; j++) post[j] = 2.0f * hc_sigmoid(m[4 + j] * sc[1] + b[4 + j]);
    float4 r[4];
    for (uint i = 0; i < 4; i++) {
        float4 v = vload4(0, m + 8 + 4 * i) * sc[2] + vload4(0, b + 8 + 4 * i);
        float mx = fmax(fmax(fmax(fmax(-INFINITY, v.x), v.y), v.z), v.w);
        float4 e = (float4)(exp(v.x - mx), exp(v.y - mx), exp(v.z - mx), exp(v.w - mx));
        r[i] = e / hc_row_sum4(e) + hc_eps;
    }
    for (uint it = 0; it < iters; it++) {
        if (it > 0)
            for (uint i = 0; i < 4; i++) r[i] = r[i] / (hc_row_sum4(r[i]) + hc_eps);
        float4 cs = ((r[0] + r[1]) + r[2]) + r[3];
        for (uint i = 0; i < 4; i++) r[i] = r[i] / (cs + hc_eps);
    }
    for (uint i = 0; i < 4; i++) vstore4(r[i], i, comb);
}

__kernel void op_hc_pre(__global const float *X, ulong X_off, __global const float *mix, ulong mix_off,
                        __global const uchar *scale_b, ulong scale_off, __global const uchar *base_b,
                        ulong base_off, uint hc, uint n_embd, uint iters, float hc_eps, __global float *x,
                        ulong x_off, __global float *post, ulong post_off, __global float *comb,
                        ulong comb_off, uint do_norm, __global const uchar *nw, ulong nw_off, uint has_nw,
                        float eps, __global float *xn, ulong xn_off) {
    __local float pre_l[HC_MAX];
    __local float red[HC_MAX_WG];
    __local float cm[HC_MAX * HC_MAX];
    uint t = get_group_id(0), lid = get_local_id(0), lsz = get_local_size(0);
    if (lid == 0 && hc == 4) {
        hc_pre_sinkhorn4(mix + mix_off + (ulong)t * 24, (__global const float *)(scale_b + scale_off),
                         (__global const float *)(base_b + base_off), iters, hc_eps, pre_l,
                         post + post_off + (ulong)t * 4, comb + comb_off + (ulong)t * 16);
    } else if (lid == 0) {
        __global const float *m = mix + mix_off + (ulong)t * (2 + hc) * hc;
        __global const float *sc = (__global const float *)(scale_b + scale_off);
        __global const float *b = (__global const float *)(base_b + base_off);
        for (uint i = 0; i < hc; i++) pre_l[i] = hc_sigmoid(m[i] * sc[0] + b[i]) + hc_eps;
        for (uint j = 0; j < hc; j++)
            post[post_off + (ulong)t * hc + j] = 2.0f * hc_sigmoid(m[hc + j] * sc[1] + b[hc + j]);
        /* Row softmax, + eps. */
        for (uint i = 0; i < hc; i++) {
            float mx = -INFINITY;
            for (uint j = 0; j < hc; j++) {
                float v = m[2 * hc + i * hc + j] * sc[2] + b[2 * hc + i * hc + j];
                cm[i * hc + j] = v;
                mx = fmax(mx, v);
            }
            float s = 0.0f;
            for (uint j = 0; j < hc; j++) {
                float e = exp(cm[i * hc + j] - mx);
                cm[i * hc + j] = e;
                s += e;
            }
            for (uint j = 0; j < hc; j++) cm[i * hc + j] = cm[i * hc + j] / s + hc_eps;
        }
        /* Column normalisation, then (iters - 1) row + column rounds. */
        for (uint it = 0; it < iters; it++) {
            if (it > 0)
                for (uint i = 0; i < hc; i++) {
                    float s = 0.0f;
                    for (uint j = 0; j < hc; j++) s += cm[i * hc + j];
                    for (uint j = 0; j < hc; j++) cm[i * hc + j] /= s + hc_eps;
                }
            for (uint j = 0; j < hc; j++) {
                float s = 0.0f;
                for (uint i = 0; i < hc; i++) s += cm[i * hc + j];
                for (uint i = 0; i < hc; i++) cm[i * hc + j] /= s + hc_eps;
            }
        }
        for (uint k = 0; k < hc * hc; k++) comb[comb_off + (ulong)t * hc * hc + k] = cm[k];
    }
    barrier(CLK_LOCAL_MEM_FENCE);
    __global const float *Xt = X + X_off + (ulong)t * hc * n_embd;
    __global float *xt = x + x_off + (ulong)t * n_embd;
    float ss = 0.0f;
    for (uint d = lid; d < n_embd; d += lsz) {
        float s = 0.0f;
        for (uint i = 0; i < hc; i++) s += pre_l[i] * Xt[(ulong)i * n_embd + d];
        xt[d] = s;
        ss += s * s;
    }
    /* The following RMSNorm, as op_rmsnorm computes it with this group
     * size: each work-item's strided squares, the same tree, the same
     * scaling; each work-item rescales the values it wrote.  (A block
     * under a uniform condition rather than an early return: PoCL 3.1
     * mis-runs the loop after the barriers when the kernel returns early.) */
    if (do_norm) {
        red[lid] = ss;
        barrier(CLK_LOCAL_MEM_FENCE);
        for (uint h = lsz / 2; h > 0; h >>= 1) {
            if (lid < h) red[lid] += red[lid + h];
            barrier(CLK_LOCAL_MEM_FENCE);
        }
        float r = 1.0f / sqrt(red[0] / (float)n_embd + eps);
        __global const float *wr = (__global const float *)(nw + nw_off);
        __global float *xnt = xn + xn_off + (ulong)t * n_embd;
        for (uint k = 0; k < (n_embd + lsz - 1) / lsz; k++) {
            uint e = lid + k * lsz;
            if (e < n_embd) {
                float v = xt[e] * r;
                xnt[e] = has_nw ? wr[e] * v : v;
            }
        }
    }
}

__kernel void op_hc_post(__global float *X, ulong X_off, __global const float *y, ulong y_off,
                         __global const float *post, ulong post_off, __global const float *comb,
                         ulong comb_off, uint hc, uint n_embd, uint T) {
    uint d = get_global_id(0), t = get_global_id(1);
    if (d >= n_embd || t >= T) return;
    __global float *Xt = X + X_off + (ulong)t * hc * n_embd;
    __global const float *pt = post + post_off + (ulong)t * hc;
    __global const float *ct = comb + comb_off + (ulong)t * hc * hc;
    float xs[HC_MAX];
    for (uint i = 0; i < hc; i++) xs[i] = Xt[(ulong)i * n_embd + d];
    float yd = y[y_off + (ulong)t * n_embd + d];
    for (uint j = 0; j < hc; j++) {
        float s = 0.0f;
        for (uint i = 0; i < hc; i++) s += ct[i * hc + j] * xs[i];
        Xt[(ulong)j * n_embd + d] = pt[j] * yd + s;
    }
}

__kernel void op_hc_head(__global const float *X, ulong X_off, __global const float *mix, ulong mix_off,
                         __global const uchar *scale_b, ulong scale_off, __global const uchar *base_b,
                         ulong base_off, uint hc, uint n_embd, uint T, float hc_eps, __global float *h,
                         ulong h_off) {
    uint d = get_global_id(0), t = get_global_id(1);
    if (d >= n_embd || t >= T) return;
    __global const float *m = mix + mix_off + (ulong)t * hc;
    __global const float *sc = (__global const float *)(scale_b + scale_off);
    __global const float *b = (__global const float *)(base_b + base_off);
    __global const float *Xt = X + X_off + (ulong)t * hc * n_embd;
    float s = 0.0f;
    for (uint i = 0; i < hc; i++) s += (hc_sigmoid(m[i] * sc[0] + b[i]) + hc_eps) * Xt[(ulong)i * n_embd + d];
    h[h_off + (ulong)t * n_embd + d] = s;
}
