/* moe_route.cl - the expert router (ds4_op_router).
 *
 *   op_router: one work-group per token.  The work-items compute
 *   p[e] = sqrt(softplus(logit[e])) (softplus(v) = v above 20, else
 *   log1p(exp(v)), as torch) and the selection score p[e] + bias[e] into
 *   local memory (`pl`, `sl`: n_expert floats each); after a barrier the
 *   group selects (top-k: one parallel arg-max per slot) and work-item 0
 *   writes the token's n_used slots:
 *     hash (has_hash): sel[k] = tid2eid[token][k]; an id outside
 *       [0, n_expert) (a corrupt table) becomes expert 0 with weight 0, so
 *       the expert kernels never index outside the weights;
 *     top-k: n_used passes, each taking the largest score not yet taken,
 *       the lower id on ties (strict >), so in descending order;
 *   then w[k] = p[sel[k]] / max(sum_k p[sel[k]], 2^-14) * scale.
 * n_used <= ROUTE_MAX_USED (checked by the host).
 */

#define ROUTE_MAX_USED 64
/* Largest work-group (the host asks for at most 256). */
#define ROUTE_MAX_WG 256

__kernel void op_router(__global const float *logits, ulong l_off, uint n_expert, uint n_used,
                        __global const uchar *bias_b, ulong bias_off, uint has_bias,
                        __global const uchar *hash_b, ulong hash_off, uint has_hash, __global const int *tokens,
                        ulong tok_off, float scale, __global int *sel, __global float *w, ulong w_off,
                        __local float *pl, __local float *sl) {
    uint t = get_group_id(0), lid = get_local_id(0), lsz = get_local_size(0);
    __global const float *lt = logits + l_off + (ulong)t * n_expert;
    __global const float *bias = (__global const float *)(bias_b + bias_off);
    for (uint e = lid; e < n_expert; e += lsz) {
        float v = lt[e];
        float p = sqrt(v > 20.0f ? v : log1p(exp(v)));
        pl[e] = p;
        sl[e] = has_bias ? p + bias[e] : p;
    }
    barrier(CLK_LOCAL_MEM_FENCE);
    __local int ids_l[ROUTE_MAX_USED];
    __local float rv[ROUTE_MAX_WG];
    __local int ri[ROUTE_MAX_WG];
    if (!has_hash) {
        /* n_used parallel arg-max passes; a taken expert's score becomes
         * -inf, ties go to the lower id (each work-item scans ascending ids
         * with a strict >, the tree prefers the lower id on equal scores). */
        for (uint k = 0; k < n_used; k++) {
            float bv = 0.0f;
            int bi = -1;
            for (uint e = lid; e < n_expert; e += lsz)
                if (bi < 0 || sl[e] > bv) {
                    bv = sl[e];
                    bi = (int)e;
                }
            rv[lid] = bv;
            ri[lid] = bi;
            barrier(CLK_LOCAL_MEM_FENCE);
            for (uint h = lsz / 2; h > 0; h >>= 1) {
                if (lid < h) {
                    float ov = rv[lid + h];
                    int oi = ri[lid + h];
                    if (oi >= 0 && (ri[lid] < 0 || ov > rv[lid] || (ov == rv[lid] && oi < ri[lid]))) {
                        rv[lid] = ov;
                        ri[lid] = oi;
                    }
                }
                barrier(CLK_LOCAL_MEM_FENCE);
            }
            if (lid == 0) {
                ids_l[k] = ri[0];
                sl[ri[0]] = -INFINITY;
            }
            barrier(CLK_LOCAL_MEM_FENCE);
        }
    }
    if (lid != 0) return;
    int ids[ROUTE_MAX_USED];
    float ps[ROUTE_MAX_USED];
    if (has_hash) {
        __global const int *row =
            (__global const int *)(hash_b + hash_off) + (ulong)(uint)tokens[tok_off + t] * n_used;
        for (uint k = 0; k < n_used; k++) {
            int id = row[k];
            bool ok = id >= 0 && (uint)id < n_expert;
            ids[k] = ok ? id : 0;
            ps[k] = ok ? pl[id] : 0.0f;
        }
    } else {
        for (uint k = 0; k < n_used; k++) {
            ids[k] = ids_l[k];
            ps[k] = pl[ids_l[k]];
        }
    }
    float sum = 0.0f;
    for (uint k = 0; k < n_used; k++) sum += ps[k];
    float den = fmax(sum, 0x1.0p-14f);
    for (uint k = 0; k < n_used; k++) {
        sel[(ulong)t * n_used + k] = ids[k];
        w[w_off + (ulong)t * n_used + k] = ps[k] / den * scale;
    }
}
