/* moe_matmul.cl - routed expert products (ops.h ds4_op_moe_matmul).
 *
 *   moe_matmul_<t>(w, w_off, row_bytes, ncols, nrows, n_expert, x, x_off,
 *                  x_per_slot, sel, n_used, y, y_off)
 *       for slot s = t*n_used + k (NDRange dimension 1) and row r:
 *       y[s][r] = sum_c W[sel[s]][r][c] * x[xrow][c],
 *       xrow = s when x_per_slot, else t
 *
 * for t in f32, f16, bf16, q8_0, q2_k, q4_k, iq2_xxs.  This is matvec.cl's
 * skeleton with the expert's slab (sel[s] * nrows rows into the 3-D
 * tensor) and the slot's activation row chosen per work-group: the same
 * decoders, lane layout (MV_LANES lanes per row, MV_ROWS rows per group),
 * MV_LANE_DOT body and mv_reduce.  The expert id is clamped into
 * [0, n_expert) so a bad selection cannot read outside the tensor.
 * Each slot reads its expert's rows on its own (no grouping of the slots
 * that share an expert).
 */

#define MOE_KERNEL(T, TAIL, TABLES)                                                          \
__kernel __attribute__((reqd_work_group_size(MV_WG, 1, 1)))                                 \
void moe_matmul_##T(const __global uchar *w, ulong w_off, ulong row_bytes, uint ncols,      \
                    uint nrows, uint n_expert, const __global float *x, ulong x_off,        \
                    uint x_per_slot, const __global int *sel, uint n_used,                  \
                    __global float *y, ulong y_off) {                                        \
    MV_LOCAL_DECL(1);                                                                        \
    uint lid = (uint)get_local_id(0), lane = lid % MV_LANES;                                 \
    MV_TABLES_DECL(TABLES, lid)                                                              \
    uint r = mv_row(lid);                                                                    \
    uint slot = (uint)get_group_id(1);                                                       \
    uint e = (uint)clamp(sel[slot], 0, (int)n_expert - 1);                                   \
    const __global uchar *row =                                                              \
        w + w_off + ((ulong)e * nrows + min(r, nrows - 1)) * row_bytes;                     \
    uint xrow = x_per_slot ? slot : slot / n_used;                                           \
    const __global float *xt[1] = {x + x_off + (ulong)xrow * ncols};                         \
    float sum[1];                                                                            \
    MV_LANE_DOT(T, TAIL, 1, row, xt, ncols, lane, sum);                                      \
    mv_reduce(sum, 1, MV_LOCAL_PTR, lid);                                                    \
    if (lane == 0 && r < nrows) y[y_off + (ulong)slot * nrows + r] = sum[0];                 \
}

MOE_KERNEL(f32, 1, 0)
MOE_KERNEL(f16, 1, 0)
MOE_KERNEL(bf16, 1, 0)
MOE_KERNEL(q8_0, 0, 0)
MOE_KERNEL(q2_k, 0, 0)
MOE_KERNEL(q4_k, 0, 0)
MOE_KERNEL(iq2_xxs, 0, 1)
