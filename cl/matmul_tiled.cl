/* matmul_tiled.cl - tiled GEMM for prefill: weight matrix x many tokens
 * through local memory, dense and expert-grouped (host: src/matmul_tiled.c).
 *
 *   gemm_<t>(w, w_off, row_bytes, ncols, nrows, x, x_off, x_stride,
 *            y, y_off, y_stride, ntok)
 *       Y[t][r] = sum_c W[r][c] * X[t][c]  (row strides in floats)
 *   gemm_moe_<t>(w, ..., n_expert, x, x_off, x_per_slot, n_used, plan,
 *                n_slots, y, y_off)
 *       y[s][r] = W[e][r] . x[xrow(s)] for the slots of one plan tile,
 *       xrow = s when x_per_slot, else s / n_used (moe_tile_<t>'s contract)
 *   gemm_moe_gu_<t>(wg, wg_off, wu, wu_off, ..., ew, ew_off, clampv, mid, ..)
 *       mid[s][r] = moe_swiglu(Wg[e][r] . x[s/n_used], Wu[e][r] . x[..],
 *                              clampv, ew[s])  (moe_tgu_<t>'s contract);
 *       a group's tile is GT_ROWS/2 gate rows stacked over the same rows
 *       of up, so it runs the one-weight K loop unchanged
 *   gemm_plan(sel, sel_off, n_slots, n_expert, tile, plan)
 *       moe_plan with the tile size as an argument (same layout: [0] tile
 *       count, [1..1+n_slots) slots by expert, then (expert, start, count)
 *       per tile of at most `tile` slots)
 *
 * for t in f32, f16, bf16, q8_0, q2_k, q4_k, iq2_xxs, through matvec.cl's
 * decoders dec_<t>, which return 8-value parts when MV_W == 8 (every GPU
 * build); the whole file is compiled only then.  It needs moe_swiglu from
 * moe_fused.cl, which comes before it in the program.
 *
 * Design.  A work-group of GT_WG work-items owns a tile of GT_ROWS weight
 * rows x GT_TOKS tokens; each work-item owns GT_RPT x GT_TPT outputs of it
 * held in registers: rows tr + i*GT_NR and tokens tt + j*GT_NT, where
 * tr = lid % GT_NR (rows vary fastest, so the output writes of a warp are
 * row-contiguous) and tt = lid / GT_NR.  The K loop walks 32-value chunks:
 *
 *   decode: GT_ROWS x 4 parts of 8 values, one part per unit, units spread
 *           over the work-items (unit u = row u/4, part u%4: four adjacent
 *           work-items read one row's chunk), into ws (row-major, rows
 *           padded to 36 floats); the matching GT_TOKS x 32 activations
 *           as float4 units (8 per token) into xs, the same layout;
 *   barrier, then 8 steps of 4 k: each work-item reads GT_RPT + GT_TPT
 *           float4 from local memory and does 4 * GT_RPT * GT_TPT mads;
 *   barrier.
 *
 * The next chunk is read from global memory into registers before the
 * current chunk's products (one chunk of software pipelining), so the
 * loads are in flight during the arithmetic.  The padding (36 floats per
 * row) keeps both the float4 stores and the strided float4 reads of eight
 * neighbouring work-items on distinct banks.
 *
 * Edges: rows past nrows and tokens past ntok (past the tile's count for
 * the grouped kernels) are clamped for reading and not written.  Token
 * slices j whose tokens all lie past the count are skipped (the test is
 * uniform across the group: no divergence), so short expert tiles cost
 * only the slices they fill.  Float types accept any ncols (the last
 * chunk reads single values and zero-fills); quantized types need whole
 * blocks (the host checks).  Expert ids are clamped into [0, n_expert).
 * Groups past a plan's tile count return before any barrier.
 *
 * Each output is one f32 sum over k in increasing order, whatever tile or
 * position it lands in, so results do not depend on the plan's order.
 *
 * Every helper is forced inline and every loop over a register array
 * unrolled: otherwise the accumulators end up in memory (an out-of-line
 * call or a dynamic index forces that on NVIDIA).
 *
 * Build options (host parses GT_ROWS / GT_TOKS / GT_WG back, see
 * src/matmul_tiled.c): GT_ROWS (64), GT_TOKS (64), GT_WG (256), and
 * optionally GT_TPT (tokens per work-item; the default picks a near
 * square block).  GT_ROWS * GT_TOKS must be a multiple of GT_WG.
 *
 * Compiled for GPU builds (MV_W 8), and on CPU devices only when GT_ROWS
 * is given explicitly (the tests): PoCL would otherwise spend ~45 s on
 * these kernels in every GPU-style test build that never calls them.
 */

#if MV_W == 8 && (!defined(DS4_CPU) || defined(GT_ROWS))

#ifndef GT_ROWS
#define GT_ROWS 64
#endif
#ifndef GT_TOKS
#define GT_TOKS 64
#endif
#ifndef GT_WG
#define GT_WG 256
#endif

#if GT_ROWS < 1 || GT_TOKS < 1 || GT_WG < 1 || (GT_ROWS * GT_TOKS) % GT_WG != 0
#error "GT_ROWS * GT_TOKS must be a positive multiple of GT_WG"
#endif

/* Outputs per work-item, and how they split into rows x tokens. */
#define GT_ELEMS (GT_ROWS * GT_TOKS / GT_WG)
#define GT_TPT_OK(p) (GT_ELEMS >= (p) && GT_ELEMS % (p) == 0 && GT_TOKS % (p) == 0 && GT_ROWS % (GT_ELEMS / (p)) == 0)
#ifndef GT_TPT
#if GT_ELEMS >= 64 && GT_TPT_OK(8)
#define GT_TPT 8
#elif GT_ELEMS >= 16 && GT_TPT_OK(4)
#define GT_TPT 4
#elif GT_ELEMS >= 4 && GT_TPT_OK(2)
#define GT_TPT 2
#else
#define GT_TPT 1
#endif
#endif
#if GT_TPT < 1 || !GT_TPT_OK(GT_TPT)
#error "no GT_RPT x GT_TPT block fits GT_ROWS x GT_TOKS / GT_WG (set GT_TPT or change the shape)"
#endif
#define GT_RPT (GT_ELEMS / GT_TPT)
#define GT_NR (GT_ROWS / GT_RPT) /* work-items across rows */
#define GT_NT (GT_TOKS / GT_TPT) /* work-items across tokens */

/* Local rows: 32 values + 4 of padding, in float4 units. */
#define GT_LDK4 9
#define GT_UNITS_W (GT_ROWS * 4) /* 8-value weight parts per chunk */
#define GT_UNITS_X (GT_TOKS * 8) /* float4 activation pieces per chunk */
#define GT_DU ((GT_UNITS_W + GT_WG - 1) / GT_WG)
#define GT_XU ((GT_UNITS_X + GT_WG - 1) / GT_WG)

/* Local memory per group (the IQ2 grid copy included) must stay within
 * the 48 KiB a group gets by default. */
#if (GT_ROWS + GT_TOKS) * GT_LDK4 * 16 + 2048 > 49152
#error "GT_ROWS + GT_TOKS tiles exceed 48 KiB of local memory"
#endif
/* The fused gate/up kernel stacks GT_GU_ROWS gate rows over the same
 * GT_GU_ROWS up rows in one tile, so each work-item holds a row's gate
 * sums in acc[i] and its up sums in acc[i + GT_RPT/2] (needs GT_RPT even;
 * otherwise the kernel is left out and the host reports it absent). */
#define GT_GU_ROWS (GT_ROWS / 2)

/* Helpers must be inlined: the accumulator arrays they take only live in
 * registers inside one function body (a call would put them in memory). */
#define GT_INLINE inline __attribute__((always_inline))
/* The same reason for unrolling every loop over a register array, also
 * inside macros (where #pragma cannot stand). */
#define GT_UNROLL _Pragma("unroll")

#define GT_PLAN_WG 256
#define GT_PLAN_MAX_EXPERTS 1024 /* src/matmul_tiled.c checks n_expert against it */

/* The IQ2_XXS grid (a kernel-scope declaration, so a macro); the copy
 * strides by GT_WG, and a barrier ends it because the first chunk is
 * decoded before the loop's first barrier. */
#if MV_TABLES_LOCAL
#define GT_TABLES_DECL(on, lid)                                                            \
    __local ulong tab_grid[(on) ? 256 : 1];                                                \
    if (on) {                                                                              \
        for (uint i_ = (lid); i_ < 256; i_ += GT_WG) tab_grid[i_] = iq2xxs_grid[i_];       \
        barrier(CLK_LOCAL_MEM_FENCE);                                                      \
    }
#else
#define GT_TABLES_DECL(on, lid) __constant ulong *tab_grid = iq2xxs_grid;
#endif

/* Part `part` (8 values) of chunk c of a row; past ncols (float types'
 * last chunk) single values, zero-filled. */
#define GT_DEC(T, TAIL)                                                                    \
GT_INLINE float8 gt_dec_##T(const __global uchar *row, uint c, uint part, uint ncols,        \
                         TABLES_PARAMS) {                                                  \
    uint i0 = 32 * c + 8 * part;                                                           \
    if (!(TAIL) || i0 + 8 <= ncols) return dec_##T(row, c, part, grid);                    \
    float v[8];                                                                            \
    GT_UNROLL                                                                              \
    for (uint j = 0; j < 8; j++) v[j] = i0 + j < ncols ? dec1_##T(row, i0 + j) : 0.0f;     \
    return vload8(0, v);                                                                   \
}
GT_DEC(f32, 1)
GT_DEC(f16, 1)
GT_DEC(bf16, 1)
GT_DEC(q8_0, 0)
GT_DEC(q2_k, 0)
GT_DEC(q4_k, 0)
GT_DEC(iq2_xxs, 0)

/* Four activations from column c of row xr, zero past ncols when tail. */
GT_INLINE float4 gt_load_x(const __global float *xr, uint c, uint ncols, int tail) {
    if (!tail || c + 4 <= ncols) return vload4(0, xr + c);
    float4 v = (float4)(0.0f);
    if (c < ncols) v.x = xr[c];
    if (c + 1 < ncols) v.y = xr[c + 1];
    if (c + 2 < ncols) v.z = xr[c + 2];
    if (c + 3 < ncols) v.w = xr[c + 3];
    return v;
}

/* acc += a . b over four k. */
GT_INLINE float gt_dot4(float acc, float4 a, float4 b) {
    return mad(a.w, b.w, mad(a.z, b.z, mad(a.y, b.y, mad(a.x, b.x, acc))));
}

/* One chunk of products from local memory: wr points at this work-item's
 * first row (ws + tr * GT_LDK4), xr at its first token.  Token slices
 * j >= jmax are skipped (jmax is uniform across the group; called with the
 * constant GT_TPT the test folds away). */
GT_INLINE void gt_mma(float acc[GT_RPT][GT_TPT], const __local float4 *wr, const __local float4 *xr,
                   uint jmax) {
#pragma unroll
    for (int k = 0; k < 8; k++) {
        float4 a[GT_RPT], b[GT_TPT];
#pragma unroll
        for (int i = 0; i < GT_RPT; i++) a[i] = wr[i * GT_NR * GT_LDK4 + k];
#pragma unroll
        for (int j = 0; j < GT_TPT; j++) b[j] = xr[j * GT_NT * GT_LDK4 + k];
#pragma unroll
        for (int j = 0; j < GT_TPT; j++) {
            if ((uint)j < jmax) {
#pragma unroll
                for (int i = 0; i < GT_RPT; i++) acc[i][j] = gt_dot4(acc[i][j], a[i], b[j]);
            }
        }
    }
}

/* Unit i of this work-item exists (compile-time true when the units divide
 * evenly over the group). */
#define GT_W_UNIT(i, lid) (GT_UNITS_W % GT_WG == 0 || (lid) + (uint)(i) * GT_WG < GT_UNITS_W)
#define GT_X_UNIT(i, lid) (GT_UNITS_X % GT_WG == 0 || (lid) + (uint)(i) * GT_WG < GT_UNITS_X)

/* Read chunk kc into registers: weight parts of rows wp[] into wv[],
 * activation pieces of rows xp[] into xv[]. */
#define GT_LOAD_W(T, TAIL, wp, wv, kc, ncols, lid)                                         \
    GT_UNROLL                                                                              \
    for (int i_ = 0; i_ < GT_DU; i_++)                                                     \
        if (GT_W_UNIT(i_, lid))                                                            \
            wv[i_] = gt_dec_##T(wp[i_], (kc), ((lid) + i_ * GT_WG) % 4, (ncols), tab_grid);
#define GT_LOAD_X(TAIL, xp, xv, kc, ncols, lid)                                            \
    GT_UNROLL                                                                              \
    for (int i_ = 0; i_ < GT_XU; i_++)                                                     \
        if (GT_X_UNIT(i_, lid))                                                            \
            xv[i_] = gt_load_x(xp[i_], 32 * (kc) + 4 * (((lid) + i_ * GT_WG) % 8), (ncols), (TAIL));

/* Registers to local memory (before the barrier). */
#define GT_STORE_W(ws, wv, lid)                                                            \
    GT_UNROLL                                                                              \
    for (int i_ = 0; i_ < GT_DU; i_++)                                                     \
        if (GT_W_UNIT(i_, lid)) {                                                          \
            uint u_ = (lid) + i_ * GT_WG;                                                  \
            __local float4 *d_ = ws + (u_ / 4) * GT_LDK4 + 2 * (u_ % 4);                   \
            d_[0] = wv[i_].lo;                                                             \
            d_[1] = wv[i_].hi;                                                             \
        }
#define GT_STORE_X(xs, xv, lid)                                                            \
    GT_UNROLL                                                                              \
    for (int i_ = 0; i_ < GT_XU; i_++)                                                     \
        if (GT_X_UNIT(i_, lid)) {                                                          \
            uint u_ = (lid) + i_ * GT_WG;                                                  \
            xs[(u_ / 8) * GT_LDK4 + u_ % 8] = xv[i_];                                      \
        }

/* Row pointers of this work-item's weight units: row r0 + u/4 of the slab
 * at `base`, clamped to the last row. */
#define GT_W_ROWS(wp, base, row_bytes, r0, nrows, lid)                                     \
    const __global uchar *wp[GT_DU];                                                       \
    GT_UNROLL                                                                              \
    for (int i_ = 0; i_ < GT_DU; i_++) {                                                   \
        uint r_ = min((r0) + ((lid) + i_ * GT_WG) / 4, (nrows) - 1);                       \
        wp[i_] = (base) + (ulong)r_ * (row_bytes);                                         \
    }

/* The K loop shared by the one-weight kernels: acc = this work-item's
 * block of W[rows] . X[tokens]. */
#define GT_KLOOP(T, TAIL, wp, xp, ncols, jmax, acc)                                        \
    do {                                                                                   \
        uint nch_ = ((ncols) + 31) / 32;                                                   \
        float8 wv_[GT_DU];                                                                 \
        float4 xv_[GT_XU];                                                                 \
        GT_LOAD_W(T, TAIL, wp, wv_, 0, ncols, lid)                                         \
        GT_LOAD_X(TAIL, xp, xv_, 0, ncols, lid)                                            \
        const __local float4 *wr_ = ws + (lid % GT_NR) * GT_LDK4;                          \
        const __local float4 *xr_ = xs + (lid / GT_NR) * GT_LDK4;                          \
        for (uint kc_ = 0; kc_ < nch_; kc_++) {                                            \
            uint kn_ = min(kc_ + 1, nch_ - 1);                                             \
            GT_STORE_W(ws, wv_, lid)                                                       \
            GT_STORE_X(xs, xv_, lid)                                                       \
            barrier(CLK_LOCAL_MEM_FENCE);                                                  \
            if ((jmax) == GT_TPT) {                                                        \
                GT_LOAD_W(T, TAIL, wp, wv_, kn_, ncols, lid)                               \
                GT_LOAD_X(TAIL, xp, xv_, kn_, ncols, lid)                                  \
                gt_mma(acc, wr_, xr_, GT_TPT);                                             \
            } else {                                                                       \
                GT_LOAD_W(T, TAIL, wp, wv_, kn_, ncols, lid)                               \
                GT_LOAD_X(TAIL, xp, xv_, kn_, ncols, lid)                                  \
                gt_mma(acc, wr_, xr_, (jmax));                                             \
            }                                                                              \
            barrier(CLK_LOCAL_MEM_FENCE);                                                  \
        }                                                                                  \
    } while (0)

/* Zeroed accumulators. */
#define GT_ACC(acc)                                                                        \
    float acc[GT_RPT][GT_TPT];                                                             \
    GT_UNROLL                                                                              \
    for (int i_ = 0; i_ < GT_RPT; i_++) {                                                  \
        GT_UNROLL                                                                          \
        for (int j_ = 0; j_ < GT_TPT; j_++) acc[i_][j_] = 0.0f;                            \
    }

/* Token slices holding at least one of the first n tokens of the tile. */
GT_INLINE uint gt_jmax(uint n) { return min((uint)GT_TPT, (n + GT_NT - 1) / GT_NT); }

#define GT_KERNELS(T, TAIL, TABLES)                                                        \
__kernel __attribute__((reqd_work_group_size(GT_WG, 1, 1)))                               \
void gemm_##T(const __global uchar *w, ulong w_off, ulong row_bytes, uint ncols,          \
              uint nrows, const __global float *x, ulong x_off, ulong x_stride,           \
              __global float *y, ulong y_off, ulong y_stride, uint ntok) {                \
    __local float4 ws[GT_ROWS * GT_LDK4], xs[GT_TOKS * GT_LDK4];                          \
    uint lid = (uint)get_local_id(0);                                                      \
    GT_TABLES_DECL(TABLES, lid)                                                            \
    uint r0 = (uint)get_group_id(0) * GT_ROWS, t0 = (uint)get_group_id(1) * GT_TOKS;      \
    GT_W_ROWS(wp, w + w_off, row_bytes, r0, nrows, lid)                                    \
    const __global float *xp[GT_XU];                                                       \
    GT_UNROLL                                                                              \
    for (int i = 0; i < GT_XU; i++)                                                        \
        xp[i] = x + x_off + (ulong)min(t0 + (lid + i * GT_WG) / 8, ntok - 1) * x_stride;   \
    uint jmax = gt_jmax(ntok - t0);                                                        \
    GT_ACC(acc)                                                                            \
    GT_KLOOP(T, TAIL, wp, xp, ncols, jmax, acc);                                           \
    uint tr = lid % GT_NR, tt = lid / GT_NR;                                               \
    GT_UNROLL                                                                              \
    for (int j = 0; j < GT_TPT; j++) {                                                     \
        uint t = t0 + tt + j * GT_NT;                                                      \
        if (t < ntok) {                                                                    \
            GT_UNROLL                                                                      \
            for (int i = 0; i < GT_RPT; i++) {                                             \
                uint r = r0 + tr + i * GT_NR;                                              \
                if (r < nrows) y[y_off + (ulong)t * y_stride + r] = acc[i][j];             \
            }                                                                              \
        }                                                                                  \
    }                                                                                      \
}                                                                                          \
                                                                                           \
__kernel __attribute__((reqd_work_group_size(GT_WG, 1, 1)))                               \
void gemm_moe_##T(const __global uchar *w, ulong w_off, ulong row_bytes, uint ncols,      \
                  uint nrows, uint n_expert, const __global float *x, ulong x_off,        \
                  uint x_per_slot, uint n_used, const __global int *plan, uint n_slots,   \
                  __global float *y, ulong y_off) {                                        \
    uint tile = (uint)get_group_id(1);                                                     \
    if (tile >= (uint)plan[0]) return;                                                     \
    __local float4 ws[GT_ROWS * GT_LDK4], xs[GT_TOKS * GT_LDK4];                          \
    uint lid = (uint)get_local_id(0);                                                      \
    GT_TABLES_DECL(TABLES, lid)                                                            \
    const __global int *tp = plan + 1 + n_slots + 3 * (ulong)tile;                         \
    uint e = (uint)clamp(tp[0], 0, (int)n_expert - 1);                                     \
    uint cnt = (uint)clamp(tp[2], 1, GT_TOKS);                                             \
    const __global int *order = plan + 1 + tp[1];                                          \
    uint r0 = (uint)get_group_id(0) * GT_ROWS;                                             \
    GT_W_ROWS(wp, w + w_off + (ulong)e * nrows * row_bytes, row_bytes, r0, nrows, lid)     \
    const __global float *xp[GT_XU];                                                       \
    GT_UNROLL                                                                              \
    for (int i = 0; i < GT_XU; i++) {                                                      \
        uint s = (uint)order[min((lid + i * GT_WG) / 8, cnt - 1)];                         \
        xp[i] = x + x_off + (ulong)(x_per_slot ? s : s / n_used) * ncols;                  \
    }                                                                                      \
    uint jmax = gt_jmax(cnt);                                                              \
    GT_ACC(acc)                                                                            \
    GT_KLOOP(T, TAIL, wp, xp, ncols, jmax, acc);                                           \
    uint tr = lid % GT_NR, tt = lid / GT_NR;                                               \
    GT_UNROLL                                                                              \
    for (int j = 0; j < GT_TPT; j++) {                                                     \
        uint jj = tt + j * GT_NT;                                                          \
        if (jj < cnt) {                                                                    \
            ulong yrow = y_off + (ulong)(uint)order[jj] * nrows;                           \
            GT_UNROLL                                                                      \
            for (int i = 0; i < GT_RPT; i++) {                                             \
                uint r = r0 + tr + i * GT_NR;                                              \
                if (r < nrows) y[yrow + r] = acc[i][j];                                    \
            }                                                                              \
        }                                                                                  \
    }                                                                                      \
}

GT_KERNELS(f32, 1, 0)
GT_KERNELS(f16, 1, 0)
GT_KERNELS(bf16, 1, 0)
GT_KERNELS(q8_0, 0, 0)
GT_KERNELS(q2_k, 0, 0)
GT_KERNELS(q4_k, 0, 0)
GT_KERNELS(iq2_xxs, 0, 1)

#if GT_RPT % 2 == 0
#define GT_GU_KERNEL(T, TAIL, TABLES)                                                      \
__kernel __attribute__((reqd_work_group_size(GT_WG, 1, 1)))                               \
void gemm_moe_gu_##T(const __global uchar *wg, ulong wg_off, const __global uchar *wu,    \
                     ulong wu_off, ulong row_bytes, uint ncols, uint nrows, uint n_expert, \
                     const __global float *x, ulong x_off, uint n_used,                   \
                     const __global int *plan, uint n_slots, const __global float *ew,    \
                     ulong ew_off, float clampv, __global float *mid, ulong mid_off) {    \
    uint tile = (uint)get_group_id(1);                                                     \
    if (tile >= (uint)plan[0]) return;                                                     \
    __local float4 ws[GT_ROWS * GT_LDK4], xs[GT_TOKS * GT_LDK4];                          \
    uint lid = (uint)get_local_id(0);                                                      \
    GT_TABLES_DECL(TABLES, lid)                                                            \
    const __global int *tp = plan + 1 + n_slots + 3 * (ulong)tile;                         \
    uint e = (uint)clamp(tp[0], 0, (int)n_expert - 1);                                     \
    uint cnt = (uint)clamp(tp[2], 1, GT_TOKS);                                             \
    const __global int *order = plan + 1 + tp[1];                                          \
    uint r0 = (uint)get_group_id(0) * GT_GU_ROWS;                                          \
    ulong slab = (ulong)e * nrows * row_bytes;                                             \
    const __global uchar *wp[GT_DU];                                                       \
    GT_UNROLL                                                                              \
    for (int i = 0; i < GT_DU; i++) {                                                      \
        uint row = (lid + i * GT_WG) / 4, up = row >= GT_GU_ROWS;                          \
        uint r = min(r0 + row - (up ? GT_GU_ROWS : 0), nrows - 1);                         \
        wp[i] = (up ? wu + wu_off : wg + wg_off) + slab + (ulong)r * row_bytes;            \
    }                                                                                      \
    const __global float *xp[GT_XU];                                                       \
    GT_UNROLL                                                                              \
    for (int i = 0; i < GT_XU; i++)                                                        \
        xp[i] = x + x_off + (ulong)((uint)order[min((lid + i * GT_WG) / 8, cnt - 1)] / n_used) * ncols; \
    uint jmax = gt_jmax(cnt);                                                              \
    GT_ACC(acc)                                                                            \
    GT_KLOOP(T, TAIL, wp, xp, ncols, jmax, acc);                                           \
    uint tr = lid % GT_NR, tt = lid / GT_NR;                                               \
    GT_UNROLL                                                                              \
    for (int j = 0; j < GT_TPT; j++) {                                                     \
        uint jj = tt + j * GT_NT;                                                          \
        if (jj < cnt) {                                                                    \
            uint s = (uint)order[jj];                                                      \
            float sw = ew[ew_off + s];                                                     \
            ulong mrow = mid_off + (ulong)s * nrows;                                       \
            GT_UNROLL                                                                      \
            for (int i = 0; i < GT_RPT / 2; i++) {                                         \
                uint r = r0 + tr + i * GT_NR;                                              \
                if (r < nrows)                                                             \
                    mid[mrow + r] = moe_swiglu(acc[i][j], acc[i + GT_RPT / 2][j], clampv, sw); \
            }                                                                              \
        }                                                                                  \
    }                                                                                      \
}

GT_GU_KERNEL(f32, 1, 0)
GT_GU_KERNEL(f16, 1, 0)
GT_GU_KERNEL(bf16, 1, 0)
GT_GU_KERNEL(q8_0, 0, 0)
GT_GU_KERNEL(q2_k, 0, 0)
GT_GU_KERNEL(q4_k, 0, 0)
GT_GU_KERNEL(iq2_xxs, 0, 1)
#endif

/* The expert-grouped plan in tiles of `tile` slots (layout above; sel:
 * int32 [n_slots] at sel_off).  Counting sort with local atomics; one
 * work-item cuts the tiles. */
__kernel __attribute__((reqd_work_group_size(GT_PLAN_WG, 1, 1)))
void gemm_plan(const __global int *sel, ulong sel_off, uint n_slots, uint n_expert, uint tile,
               __global int *plan) {
    __local int count[GT_PLAN_MAX_EXPERTS], base[GT_PLAN_MAX_EXPERTS];
    uint lid = (uint)get_local_id(0);
    for (uint e = lid; e < n_expert; e += GT_PLAN_WG) count[e] = 0;
    barrier(CLK_LOCAL_MEM_FENCE);
    for (uint s = lid; s < n_slots; s += GT_PLAN_WG)
        atomic_inc(&count[clamp(sel[sel_off + s], 0, (int)n_expert - 1)]);
    barrier(CLK_LOCAL_MEM_FENCE);
    if (lid == 0) {
        int start = 0, n_tiles = 0;
        __global int *tiles = plan + 1 + n_slots;
        for (uint e = 0; e < n_expert; e++) {
            int c = count[e];
            base[e] = start;
            for (int j = 0; j < c; j += (int)tile) {
                tiles[3 * n_tiles] = (int)e;
                tiles[3 * n_tiles + 1] = start + j;
                tiles[3 * n_tiles + 2] = min(c - j, (int)tile);
                n_tiles++;
            }
            start += c;
            count[e] = 0;
        }
        plan[0] = n_tiles;
    }
    barrier(CLK_LOCAL_MEM_FENCE);
    for (uint s = lid; s < n_slots; s += GT_PLAN_WG) {
        int e = clamp(sel[sel_off + s], 0, (int)n_expert - 1);
        plan[1 + base[e] + atomic_inc(&count[e])] = (int)s;
    }
}

#endif /* MV_W == 8 */
