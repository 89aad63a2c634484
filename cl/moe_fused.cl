/* moe_fused.cl - fused and expert-grouped expert products (ops.h:
 * ds4_op_moe_gate_up, ds4_op_moe_down_sum, ds4_op_moe_plan,
 * ds4_op_moe_grouped).
 *
 * All of them are matvec.cl's skeleton (the per-type decoders, MV_LANES
 * lanes per row, MV_ROWS rows per group, MV_LANE_DOT, mv_reduce) with a
 * different choice of weight slab and activation rows per work-group.
 *
 *   moe_gu_<t>     decode path, one slot s = t*n_used + k per group column:
 *                  g = Wg[e]·x[t] and u = Wu[e]·x[t] in one pass over the
 *                  activation row, then mid[s][r] = silu(min(g, c)) *
 *                  clamp(u, -c, c) * w[s].  The shared expert is the same
 *                  kernel with `shared` set: e = 0 and no weight.
 *   moe_down_<t>   decode path, one token per group column: y[t][r] =
 *                  sum_k Wd[sel[t][k]][r]·mid[t*n_used+k] (+ add[t][r]):
 *                  the routed down products and their sum (plus the shared
 *                  expert's output) in one launch, no per-slot buffer.
 *   moe_plan       one work-group: sorts the slots by expert (counting
 *                  sort with local atomics) and cuts each expert's slots
 *                  into tiles of at most MM_TOKENS.  Plan layout (int32):
 *                  [0] number of tiles, [1 .. 1+n_slots) slots ordered by
 *                  expert, then 3 ints per tile: expert, start (index into
 *                  the order), count.  The order of slots inside one expert
 *                  depends on atomics, but each slot's value is computed by
 *                  the same lane loop in whichever tile it lands, so the
 *                  results do not depend on it.
 *   moe_tile_<t>   prefill path, one tile per group column: the expert's
 *                  rows are decoded once for up to MM_TOKENS slots:
 *                  y[s][r] = W[e][r]·x[xrow(s)] (xrow = s when x_per_slot,
 *                  else s / n_used).
 *   moe_tgu_<t>    the same with the gate/up pair and the SwiGLU fused.
 *
 * Expert ids are clamped into [0, n_expert) so a bad selection never reads
 * outside the tensor.  Groups past the plan's tile count return before any
 * barrier (the whole group takes the same branch).
 */

#ifndef PLAN_WG
#define PLAN_WG 256
#endif
/* Largest expert (or group) count the plan kernel handles (local arrays). */
#define PLAN_MAX_EXPERTS 1024

inline float moe_swiglu(float g, float u, float c, float w) {
    float gv = fmin(g, c);
    float uv = fmin(fmax(u, -c), c);
    return gv / (1.0f + exp(-gv)) * uv * w;
}

#define MOE_FUSED_KERNELS(T, TAIL, TABLES)                                                   \
__kernel __attribute__((reqd_work_group_size(MV_WG, 1, 1)))                                 \
void moe_gu_##T(const __global uchar *wg, ulong wg_off, const __global uchar *wu,          \
                ulong wu_off, ulong row_bytes, uint ncols, uint nrows, uint n_expert,       \
                const __global float *x, ulong x_off, const __global int *sel, uint n_used, \
                uint shared, const __global float *ew, ulong ew_off, float clampv,          \
                __global float *mid, ulong mid_off) {                                        \
    MV_LOCAL_DECL(2);                                                                        \
    uint lid = (uint)get_local_id(0), lane = lid % MV_LANES;                                 \
    MV_TABLES_DECL(TABLES, lid)                                                              \
    uint r = mv_row(lid);                                                                    \
    uint slot = (uint)get_group_id(1);                                                       \
    uint e = shared ? 0u : (uint)clamp(sel[slot], 0, (int)n_expert - 1);                     \
    ulong roff = ((ulong)e * nrows + min(r, nrows - 1)) * row_bytes;                        \
    const __global uchar *rg = wg + wg_off + roff, *ru = wu + wu_off + roff;                \
    const __global float *xt[1] = {x + x_off + (ulong)(slot / n_used) * ncols};              \
    float sg[1], su[1], s2[2];                                                               \
    MV_LANE_DOT(T, TAIL, 1, rg, xt, ncols, lane, sg);                                        \
    MV_LANE_DOT(T, TAIL, 1, ru, xt, ncols, lane, su);                                        \
    s2[0] = sg[0];                                                                           \
    s2[1] = su[0];                                                                           \
    mv_reduce(s2, 2, MV_LOCAL_PTR, lid);                                                     \
    if (lane == 0 && r < nrows)                                                              \
        mid[mid_off + (ulong)slot * nrows + r] =                                             \
            moe_swiglu(s2[0], s2[1], clampv, shared ? 1.0f : ew[ew_off + slot]);             \
}                                                                                            \
                                                                                             \
__kernel __attribute__((reqd_work_group_size(MV_WG, 1, 1)))                                 \
void moe_down_##T(const __global uchar *w, ulong w_off, ulong row_bytes, uint ncols,        \
                  uint nrows, uint n_expert, const __global float *mid, ulong mid_off,      \
                  const __global int *sel, uint n_used, const __global float *add,          \
                  ulong add_off, uint has_add, __global float *y, ulong y_off) {             \
    MV_LOCAL_DECL(1);                                                                        \
    uint lid = (uint)get_local_id(0), lane = lid % MV_LANES;                                 \
    MV_TABLES_DECL(TABLES, lid)                                                              \
    uint r = mv_row(lid);                                                                    \
    uint t = (uint)get_group_id(1);                                                          \
    float total[1] = {0.0f};                                                                 \
    for (uint k = 0; k < n_used; k++) {                                                      \
        uint slot = t * n_used + k;                                                          \
        uint e = (uint)clamp(sel[slot], 0, (int)n_expert - 1);                               \
        const __global uchar *row =                                                          \
            w + w_off + ((ulong)e * nrows + min(r, nrows - 1)) * row_bytes;                 \
        const __global float *xt[1] = {mid + mid_off + (ulong)slot * ncols};                 \
        float part[1];                                                                       \
        MV_LANE_DOT(T, TAIL, 1, row, xt, ncols, lane, part);                                 \
        total[0] += part[0];                                                                 \
    }                                                                                        \
    mv_reduce(total, 1, MV_LOCAL_PTR, lid);                                                  \
    if (lane == 0 && r < nrows) {                                                            \
        float v = total[0];                                                                  \
        if (has_add) v += add[add_off + (ulong)t * nrows + r];                               \
        y[y_off + (ulong)t * nrows + r] = v;                                                 \
    }                                                                                        \
}                                                                                            \
                                                                                             \
__kernel __attribute__((reqd_work_group_size(MV_WG, 1, 1)))                                 \
void moe_tile_##T(const __global uchar *w, ulong w_off, ulong row_bytes, uint ncols,        \
                  uint nrows, uint n_expert, const __global float *x, ulong x_off,          \
                  uint x_per_slot, uint n_used, const __global int *plan, uint n_slots,     \
                  __global float *y, ulong y_off) {                                          \
    uint tile = (uint)get_group_id(1);                                                       \
    if (tile >= (uint)plan[0]) return;                                                       \
    MV_LOCAL_DECL(MM_TOKENS);                                                                \
    uint lid = (uint)get_local_id(0), lane = lid % MV_LANES;                                 \
    MV_TABLES_DECL(TABLES, lid)                                                              \
    uint r = mv_row(lid);                                                                    \
    const __global int *tp = plan + 1 + n_slots + 3 * (ulong)tile;                           \
    uint e = (uint)clamp(tp[0], 0, (int)n_expert - 1), start = (uint)tp[1], cnt = (uint)tp[2]; \
    const __global int *order = plan + 1 + start;                                            \
    const __global uchar *row =                                                              \
        w + w_off + ((ulong)e * nrows + min(r, nrows - 1)) * row_bytes;                     \
    const __global float *xt[MM_TOKENS];                                                     \
    for (uint j = 0; j < MM_TOKENS; j++) {                                                   \
        uint s = (uint)order[min(j, cnt - 1)];                                               \
        xt[j] = x + x_off + (ulong)(x_per_slot ? s : s / n_used) * ncols;                    \
    }                                                                                        \
    float sum[MM_TOKENS];                                                                    \
    MV_LANE_DOT(T, TAIL, MM_TOKENS, row, xt, ncols, lane, sum);                              \
    mv_reduce(sum, MM_TOKENS, MV_LOCAL_PTR, lid);                                            \
    if (r < nrows)                                                                           \
        for (uint j = lane; j < MM_TOKENS; j += MV_LANES)                                    \
            if (j < cnt) y[y_off + (ulong)order[j] * nrows + r] = sum[j];                    \
}                                                                                            \
                                                                                             \
__kernel __attribute__((reqd_work_group_size(MV_WG, 1, 1)))                                 \
void moe_tgu_##T(const __global uchar *wg, ulong wg_off, const __global uchar *wu,         \
                 ulong wu_off, ulong row_bytes, uint ncols, uint nrows, uint n_expert,      \
                 const __global float *x, ulong x_off, uint n_used,                         \
                 const __global int *plan, uint n_slots, const __global float *ew,          \
                 ulong ew_off, float clampv, __global float *mid, ulong mid_off) {           \
    uint tile = (uint)get_group_id(1);                                                       \
    if (tile >= (uint)plan[0]) return;                                                       \
    MV_LOCAL_DECL(2 * MM_TOKENS);                                                            \
    uint lid = (uint)get_local_id(0), lane = lid % MV_LANES;                                 \
    MV_TABLES_DECL(TABLES, lid)                                                              \
    uint r = mv_row(lid);                                                                    \
    const __global int *tp = plan + 1 + n_slots + 3 * (ulong)tile;                           \
    uint e = (uint)clamp(tp[0], 0, (int)n_expert - 1), start = (uint)tp[1], cnt = (uint)tp[2]; \
    const __global int *order = plan + 1 + start;                                            \
    ulong roff = ((ulong)e * nrows + min(r, nrows - 1)) * row_bytes;                        \
    const __global uchar *rg = wg + wg_off + roff, *ru = wu + wu_off + roff;                \
    const __global float *xt[MM_TOKENS];                                                     \
    for (uint j = 0; j < MM_TOKENS; j++)                                                     \
        xt[j] = x + x_off + (ulong)((uint)order[min(j, cnt - 1)] / n_used) * ncols;          \
    float sum[2 * MM_TOKENS];                                                                \
    MV_LANE_DOT(T, TAIL, MM_TOKENS, rg, xt, ncols, lane, sum);                               \
    MV_LANE_DOT(T, TAIL, MM_TOKENS, ru, xt, ncols, lane, (sum + MM_TOKENS));                 \
    mv_reduce(sum, 2 * MM_TOKENS, MV_LOCAL_PTR, lid);                                        \
    if (r < nrows)                                                                           \
        for (uint j = lane; j < MM_TOKENS; j += MV_LANES)                                    \
            if (j < cnt) {                                                                   \
                uint s = (uint)order[j];                                                     \
                mid[mid_off + (ulong)s * nrows + r] =                                        \
                    moe_swiglu(sum[j], sum[MM_TOKENS + j], clampv, ew[ew_off + s]);          \
            }                                                                                \
}

MOE_FUSED_KERNELS(f32, 1, 0)
MOE_FUSED_KERNELS(f16, 1, 0)
MOE_FUSED_KERNELS(bf16, 1, 0)
MOE_FUSED_KERNELS(q8_0, 0, 0)
MOE_FUSED_KERNELS(q2_k, 0, 0)
MOE_FUSED_KERNELS(q4_k, 0, 0)
MOE_FUSED_KERNELS(iq2_xxs, 0, 1)

/* The expert-grouped plan (layout above).  sel: int32 [n_slots]. */
__kernel __attribute__((reqd_work_group_size(PLAN_WG, 1, 1)))
void moe_plan(const __global int *sel, ulong sel_off, uint n_slots, uint n_expert, __global int *plan) {
    __local int count[PLAN_MAX_EXPERTS], base[PLAN_MAX_EXPERTS];
    uint lid = (uint)get_local_id(0);
    for (uint e = lid; e < n_expert; e += PLAN_WG) count[e] = 0;
    barrier(CLK_LOCAL_MEM_FENCE);
    for (uint s = lid; s < n_slots; s += PLAN_WG)
        atomic_inc(&count[clamp(sel[sel_off + s], 0, (int)n_expert - 1)]);
    barrier(CLK_LOCAL_MEM_FENCE);
    if (lid == 0) {
        int start = 0, n_tiles = 0;
        __global int *tiles = plan + 1 + n_slots;
        for (uint e = 0; e < n_expert; e++) {
            int c = count[e];
            base[e] = start;
            for (int j = 0; j < c; j += MM_TOKENS) {
                tiles[3 * n_tiles] = (int)e;
                tiles[3 * n_tiles + 1] = start + j;
                tiles[3 * n_tiles + 2] = min(c - j, MM_TOKENS);
                n_tiles++;
            }
            start += c;
            count[e] = 0;
        }
        plan[0] = n_tiles;
    }
    barrier(CLK_LOCAL_MEM_FENCE);
    for (uint s = lid; s < n_slots; s += PLAN_WG) {
        int e = clamp(sel[sel_off + s], 0, (int)n_expert - 1);
        plan[1 + base[e] + atomic_inc(&count[e])] = (int)s;
    }
}
