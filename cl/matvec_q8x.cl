/* matvec_q8x.cl - quantized weights x int8 activations (build option
 * MV_Q8X=1; compiled only then).
 *
 *   matvec8_<t>   same contract as matvec_<t>
 *   moe_gu8_<t>   same contract as moe_gu_<t>   (cl/moe_fused.cl)
 *   moe_down8_<t> same contract as moe_down_<t>
 *
 * for t in q8_0, q2_k, q4_k, iq2_xxs.  A 2-bit weight carries four values
 * per byte, so at GPU bandwidths the f32 path (decode to float, one FMA
 * per value) runs out of instructions long before it runs out of bytes.
 * Here the work-group first quantizes its activation row into local
 * memory, per 32-value block: d = max|x| / 127, q = round(x / d) (int8;
 * the row is read from cache, once per group).  A lane step then covers 8
 * values: the weights' integer codes meet the int8 activations in 4-byte
 * dot products (dot4: one dp4a instruction on NVIDIA through inline PTX,
 * four multiply-adds elsewhere), and the float scales are applied once
 * per 8 values:
 *   Q8_0     d_w * sum q_w q_x
 *   Q2_K     d * sc * sum q_w q_x - dmin * m * sum q_x
 *   Q4_K     the same with 4-bit codes and 6-bit scales
 *   IQ2_XXS  db * (sum g q_x - 2 sum g (q_x & neg)), g the grid bytes and
 *            neg the 0xff bytes of the negative elements (sign table in
 *            local memory next to the grid)
 * and the block's activation scale multiplies each step's sum.  The
 * results differ from the f32 path by the activation rounding (relative
 * error around 1e-3 of sum |w x|); the f32 path stays the reference.
 *
 * Limits: ncols <= Q8X_MAXCOLS (local memory), a multiple of 32 (every
 * quantized type is); the host falls back to the f32 kernels otherwise.
 */

#ifndef MV_Q8X
#define MV_Q8X 0
#endif

#if MV_Q8X

#define Q8X_MAXCOLS 8192

/* c + the dot product of the four signed bytes of a and b. */
inline int dot4(int a, int b, int c) {
#if defined(DS4_NVIDIA) && !defined(DS4_NO_PTX)
    int r;
    asm("dp4a.s32.s32 %0, %1, %2, %3;" : "=r"(r) : "r"(a), "r"(b), "r"(c));
    return r;
#else
    int4 x = convert_int4(as_char4(a)), y = convert_int4(as_char4(b));
    return c + x.s0 * y.s0 + x.s1 * y.s1 + x.s2 * y.s2 + x.s3 * y.s3;
#endif
}

/* Quantize x[0..ncols) into xq (four int8 per int) and xd (one scale per
 * 32 values); ends with a barrier.  Every work-item must call it. */
inline void q8x_load(const __global float *x, uint ncols, __local int *xq, __local float *xd, uint lid) {
    for (uint blk = lid; blk < ncols / 32; blk += MV_WG) {
        const __global float *p = x + 32 * (size_t)blk;
        float4 m4 = (float4)(0.0f);
        for (int j = 0; j < 8; j++) m4 = fmax(m4, fabs(vload4(j, p)));
        float amax = fmax(fmax(m4.x, m4.y), fmax(m4.z, m4.w));
        float d = amax / 127.0f, id = amax > 0.0f ? 127.0f / amax : 0.0f;
        for (int j = 0; j < 8; j++) xq[8 * blk + j] = as_int(convert_char4_sat_rte(vload4(j, p) * id));
        xd[blk] = d;
    }
    barrier(CLK_LOCAL_MEM_FENCE);
}

/* 8 bytes at a 2-byte aligned address as two ints. */
inline int2 load8_a2(const __global uchar *p) {
    ushort4 h = vload4(0, (const __global ushort *)p);
    return (int2)((int)((uint)h.x | ((uint)h.y << 16)), (int)((uint)h.z | ((uint)h.w << 16)));
}

#define Q8X_TABLES_PARAMS const __local ulong *grid, const __local ulong *negm

/* Part p (8 values) of 32-value chunk c against activations xv. */
inline float dot8_q8_0(const __global uchar *row, uint c, uint p, int2 xv, Q8X_TABLES_PARAMS) {
    const __global uchar *b = row + 34 * (size_t)c;
    int2 w = load8_a2(b + 2 + 8 * p);
    return load_f16(b) * (float)dot4(w.x, xv.x, dot4(w.y, xv.y, 0));
}

inline float dot8_q2_k(const __global uchar *row, uint c, uint p, int2 xv, Q8X_TABLES_PARAMS) {
    const __global uchar *b = row + 84 * (size_t)(c >> 3);
    uint sub = c & 7, sc = b[(32 * sub + 8 * p) >> 4];
    int2 w = load8_a2(b + 16 + 32 * (sub >> 2) + 8 * p);
    uint sh = 2 * (sub & 3);
    int w0 = (int)(((uint)w.x >> sh) & 0x03030303u), w1 = (int)(((uint)w.y >> sh) & 0x03030303u);
    int sq = dot4(w0, xv.x, dot4(w1, xv.y, 0));
    int sx = dot4(0x01010101, xv.x, dot4(0x01010101, xv.y, 0));
    return load_f16(b + 80) * (float)(sc & 15) * (float)sq - load_f16(b + 82) * (float)(sc >> 4) * (float)sx;
}

inline float dot8_q4_k(const __global uchar *row, uint c, uint p, int2 xv, Q8X_TABLES_PARAMS) {
    const __global uchar *b = row + 144 * (size_t)(c >> 3);
    uint sub = c & 7, sc, m;
    const __global uchar *s = b + 4;
    if (sub < 4) {
        sc = s[sub] & 63;
        m = s[sub + 4] & 63;
    } else {
        sc = (s[sub + 4] & 15) | ((s[sub - 4] >> 6) << 4);
        m = (s[sub + 4] >> 4) | ((s[sub] >> 6) << 4);
    }
    int2 w = load8_a2(b + 16 + 32 * (sub >> 1) + 8 * p);
    uint sh = 4 * (sub & 1);
    int w0 = (int)(((uint)w.x >> sh) & 0x0f0f0f0fu), w1 = (int)(((uint)w.y >> sh) & 0x0f0f0f0fu);
    int sq = dot4(w0, xv.x, dot4(w1, xv.y, 0));
    int sx = dot4(0x01010101, xv.x, dot4(0x01010101, xv.y, 0));
    return load_f16(b) * (float)sc * (float)sq - load_f16(b + 2) * (float)m * (float)sx;
}

inline float dot8_iq2_xxs(const __global uchar *row, uint c, uint p, int2 xv, Q8X_TABLES_PARAMS) {
    const __global uchar *b = row + 66 * (size_t)(c >> 3);
    const __global uchar *w = b + 2 + 8 * (c & 7);
    uint a1 = load_u32_a2(w + 4);
    float db = load_f16(b) * (0.5f + (float)(a1 >> 28)) * 0.25f;
    ulong g = grid[w[p]], n = negm[(a1 >> (7 * p)) & 127];
    int g0 = (int)(uint)g, g1 = (int)(uint)(g >> 32);
    int n0 = (int)(uint)n, n1 = (int)(uint)(n >> 32);
    int all = dot4(g0, xv.x, dot4(g1, xv.y, 0));
    int neg = dot4(g0, xv.x & n0, dot4(g1, xv.y & n1, 0));
    return db * (float)(all - 2 * neg);
}

/* Local tables: the IQ2 grid, and per 7-bit sign index the 0xff byte
 * mask of the negative elements (bit 7 = parity), built by the group. */
#define Q8X_TABLES_DECL(lid)                                                   \
    __local ulong q8x_grid[256], q8x_negm[128];                                \
    for (uint i_ = (lid); i_ < 256; i_ += MV_WG) q8x_grid[i_] = iq2xxs_grid[i_]; \
    for (uint i_ = (lid); i_ < 128; i_ += MV_WG) {                             \
        uint sm_ = i_ | ((popcount(i_) & 1) << 7);                             \
        ulong m_ = 0;                                                          \
        for (int j_ = 0; j_ < 8; j_++)                                         \
            if (sm_ & (1u << j_)) m_ |= 0xffUL << (8 * j_);                    \
        q8x_negm[i_] = m_;                                                     \
    }

/* One lane's partial sum over a row: parts g = lane, lane + MV_LANES, ...
 * of 8 values each (part g: chunk g / 4, piece g % 4). */
#define Q8X_LANE_DOT(T, row, ncols, lane, xq, xd, out)                         \
    do {                                                                       \
        float acc_ = 0.0f;                                                     \
        for (uint g_ = (lane); g_ < (ncols) / 8; g_ += MV_LANES) {             \
            int2 xv_ = (int2)(xq[2 * g_], xq[2 * g_ + 1]);                     \
            acc_ = mad(xd[g_ >> 2], dot8_##T(row, g_ >> 2, g_ & 3, xv_, q8x_grid, q8x_negm), acc_); \
        }                                                                      \
        out = acc_;                                                            \
    } while (0)

#define Q8X_KERNELS(T)                                                                      \
__kernel __attribute__((reqd_work_group_size(MV_WG, 1, 1)))                               \
void matvec8_##T(const __global uchar *w, ulong w_off, ulong row_bytes, uint ncols,        \
                 uint nrows, const __global float *x, ulong x_off, __global float *y,      \
                 ulong y_off) {                                                             \
    MV_LOCAL_DECL(1);                                                                       \
    __local int xq[Q8X_MAXCOLS / 4];                                                        \
    __local float xd[Q8X_MAXCOLS / 32];                                                     \
    uint lid = (uint)get_local_id(0), lane = lid % MV_LANES;                                \
    Q8X_TABLES_DECL(lid)                                                                    \
    q8x_load(x + x_off, ncols, xq, xd, lid);                                                \
    uint r = mv_row(lid);                                                                   \
    const __global uchar *row = w + w_off + (ulong)min(r, nrows - 1) * row_bytes;          \
    float sum[1];                                                                           \
    Q8X_LANE_DOT(T, row, ncols, lane, xq, xd, sum[0]);                                      \
    mv_reduce(sum, 1, MV_LOCAL_PTR, lid);                                                   \
    if (lane == 0 && r < nrows) y[y_off + r] = sum[0];                                      \
}                                                                                           \
                                                                                            \
__kernel __attribute__((reqd_work_group_size(MV_WG, 1, 1)))                               \
void moe_gu8_##T(const __global uchar *wg, ulong wg_off, const __global uchar *wu,        \
                 ulong wu_off, ulong row_bytes, uint ncols, uint nrows, uint n_expert,     \
                 const __global float *x, ulong x_off, const __global int *sel,            \
                 uint n_used, uint shared, const __global float *ew, ulong ew_off,         \
                 float clampv, __global float *mid, ulong mid_off) {                        \
    MV_LOCAL_DECL(2);                                                                       \
    __local int xq[Q8X_MAXCOLS / 4];                                                        \
    __local float xd[Q8X_MAXCOLS / 32];                                                     \
    uint lid = (uint)get_local_id(0), lane = lid % MV_LANES;                                \
    Q8X_TABLES_DECL(lid)                                                                    \
    uint slot = (uint)get_group_id(1);                                                      \
    q8x_load(x + x_off + (ulong)(slot / n_used) * ncols, ncols, xq, xd, lid);               \
    uint r = mv_row(lid);                                                                   \
    uint e = shared ? 0u : (uint)clamp(sel[slot], 0, (int)n_expert - 1);                    \
    ulong roff = ((ulong)e * nrows + min(r, nrows - 1)) * row_bytes;                       \
    float s2[2];                                                                            \
    Q8X_LANE_DOT(T, wg + wg_off + roff, ncols, lane, xq, xd, s2[0]);                        \
    Q8X_LANE_DOT(T, wu + wu_off + roff, ncols, lane, xq, xd, s2[1]);                        \
    mv_reduce(s2, 2, MV_LOCAL_PTR, lid);                                                    \
    if (lane == 0 && r < nrows)                                                             \
        mid[mid_off + (ulong)slot * nrows + r] =                                            \
            moe_swiglu(s2[0], s2[1], clampv, shared ? 1.0f : ew[ew_off + slot]);            \
}                                                                                           \
                                                                                            \
__kernel __attribute__((reqd_work_group_size(MV_WG, 1, 1)))                               \
void moe_down8_##T(const __global uchar *w, ulong w_off, ulong row_bytes, uint ncols,     \
                   uint nrows, uint n_expert, const __global float *mid, ulong mid_off,    \
                   const __global int *sel, uint n_used, const __global float *add,        \
                   ulong add_off, uint has_add, __global float *y, ulong y_off) {           \
    MV_LOCAL_DECL(1);                                                                       \
    __local int xq[Q8X_MAXCOLS / 4];                                                        \
    __local float xd[Q8X_MAXCOLS / 32];                                                     \
    uint lid = (uint)get_local_id(0), lane = lid % MV_LANES;                                \
    Q8X_TABLES_DECL(lid)                                                                    \
    uint r = mv_row(lid);                                                                   \
    uint t = (uint)get_group_id(1);                                                         \
    float total[1] = {0.0f};                                                                \
    for (uint k = 0; k < n_used; k++) {                                                     \
        uint slot = t * n_used + k;                                                         \
        barrier(CLK_LOCAL_MEM_FENCE); /* the previous slot's readers are done */            \
        q8x_load(mid + mid_off + (ulong)slot * ncols, ncols, xq, xd, lid);                  \
        uint e = (uint)clamp(sel[slot], 0, (int)n_expert - 1);                              \
        const __global uchar *row =                                                         \
            w + w_off + ((ulong)e * nrows + min(r, nrows - 1)) * row_bytes;                \
        float part;                                                                         \
        Q8X_LANE_DOT(T, row, ncols, lane, xq, xd, part);                                    \
        total[0] += part;                                                                   \
    }                                                                                       \
    mv_reduce(total, 1, MV_LOCAL_PTR, lid);                                                 \
    if (lane == 0 && r < nrows) {                                                           \
        float v = total[0];                                                                 \
        if (has_add) v += add[add_off + (ulong)t * nrows + r];                              \
        y[y_off + (ulong)t * nrows + r] = v;                                                \
    }                                                                                       \
}

Q8X_KERNELS(q8_0)
Q8X_KERNELS(q2_k)
Q8X_KERNELS(q4_k)
Q8X_KERNELS(iq2_xxs)

#endif /* MV_Q8X */
