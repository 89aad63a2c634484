/* matvec.cl - weight matrix x f32 activations for every weight type.
 *
 *   matvec_<t>(w, w_off, row_bytes, ncols, nrows, x, x_off, y, y_off)
 *       y[r] = sum_c W[r][c] * x[c]
 *   matmul_<t>(..., ntok)
 *       Y[t][r] = sum_c W[r][c] * X[t][c], X and Y row-major
 *
 * for t in f32, f16, bf16, q8_0, q2_k, q4_k, iq2_xxs.  Row r of W starts at
 * byte w_off + r * row_bytes of w (GGUF layout, blocks in GGML bit order);
 * x_off and y_off count floats.  Accumulation is f32.
 *
 * Design: a row is read as chunks of 32 values, each in MV_W-value parts
 * (MV_W = 8 or 16, the vector width).  Per type there is one decoder
 * dec_<t>(row, chunk, part) returning a part as a floatW, and one shared
 * skeleton, instantiated by MV_KERNELS(t, tail, tables), holds the only
 * matvec and matmul bodies.  A lane's step is MV_VEC consecutive parts of
 * one chunk; lane l of a row takes steps l, l + MV_LANES, ... and the
 * lanes are summed by mv_reduce.  With one lane per row (CPU) a step is a
 * whole chunk as 2 x 16 values, sharing one block header; with cooperating
 * lanes (GPU) a step is 8 values, so neighbouring lanes read neighbouring
 * bytes.  matmul decodes each step once and applies it to MM_TOKENS
 * tokens.
 *
 * Whole groups past the last whole step are taken one at a time; float
 * types accept any ncols, single values (dec1_<t>) finishing the row
 * (tail = 1); quantized types require whole blocks (checked by the host).
 * Rows past nrows and tokens past ntok are clamped for reading and not
 * written, so every work-item reaches the barriers.  Required alignment of
 * w_off and row_bytes: 4 bytes for f32, 2 bytes for everything else.
 */

/* ---- IQ2_XXS grid: __constant, or copied to local memory ---------------
 * (The sign table ksigns_iq2xs is not read: entry i is i with bit 7 set to
 * the parity of i, computed with popcount.) */

#if MV_TABLES_LOCAL
#define IQ2_SPACE __local
/* Declares the grid a kernel's decoders read; `on` (a constant) is 1 in
 * kernels that use it, which copy it in before the first barrier. */
#define MV_TABLES_DECL(on, lid)                                                \
    __local ulong tab_grid[(on) ? 256 : 1];                                    \
    if (on) {                                                                  \
        for (uint i_ = (lid); i_ < 256; i_ += MV_WG) tab_grid[i_] = iq2xxs_grid[i_]; \
        barrier(CLK_LOCAL_MEM_FENCE);                                          \
    }
#else
#define IQ2_SPACE __constant
#define MV_TABLES_DECL(on, lid)                                                \
    __constant ulong *tab_grid = iq2xxs_grid;
#endif

/* Every decoder takes the grid (only IQ2_XXS reads it). */
#define TABLES_PARAMS const IQ2_SPACE ulong *grid

/* ---- per-type decoders ------------------------------------------------
 * dec_<t>(row, c, part) returns values 32*c + MV_W*part .. + MV_W-1 of a
 * row: part `part` of 32-value chunk c.  Every block (32 or 256 values)
 * and scale group (16 or 32) is whole chunks or whole parts, so a part
 * never straddles one, and calls for the parts of one chunk share every
 * header address, which the compiler then loads once. */

inline floatW dec_f32(const __global uchar *row, uint c, uint part, TABLES_PARAMS) {
    return vloadW(0, (const __global float *)row + 32 * (size_t)c + MV_W * part);
}
inline float dec1_f32(const __global uchar *row, uint i) {
    return ((const __global float *)row)[i];
}

inline floatW dec_f16(const __global uchar *row, uint c, uint part, TABLES_PARAMS) {
    return load_f16xW(row + 64 * (size_t)c + 2 * MV_W * part);
}
inline float dec1_f16(const __global uchar *row, uint i) {
    return load_f16(row + 2 * (size_t)i);
}

inline floatW dec_bf16(const __global uchar *row, uint c, uint part, TABLES_PARAMS) {
    const __global ushort *p = (const __global ushort *)row + 32 * (size_t)c + MV_W * part;
    return as_floatW(convert_uintW(vloadW(0, p)) << (uintW)(16));
}
inline float dec1_bf16(const __global uchar *row, uint i) {
    return as_float((uint)((const __global ushort *)row)[i] << 16);
}

/* Q8_0: 34-byte blocks of 32: f16 d, 32 x int8 q; value = d * q. */
inline floatW dec_q8_0(const __global uchar *row, uint c, uint part, TABLES_PARAMS) {
    const __global uchar *b = row + 34 * (size_t)c;
    return convert_floatW(as_charW(load_bytesW(b + 2 + MV_W * part))) * load_f16(b);
}

/* Q2_K: 84-byte super-blocks of 256: scales[16] (low nibble scale, high
 * nibble min, per 16 values), qs[64], f16 d, f16 dmin.  Value u of the
 * super-block uses the 2 bits at shift 2*((u%128)/32) of
 * qs[32*(u/128) + u%32]. */
inline floatW dec_q2_k(const __global uchar *row, uint c, uint part, TABLES_PARAMS) {
    const __global uchar *b = row + 84 * (size_t)(c >> 3);
    uint sub = c & 7, u = 32 * sub + MV_W * part;
    uint sc = b[u >> 4];
    const __global uchar *q = b + 16 + 32 * (sub >> 2) + MV_W * part;
    ucharW k = (load_bytesW(q) >> (ucharW)(2 * (sub & 3))) & (ucharW)(3);
    return convert_floatW(k) * (load_f16(b + 80) * (float)(sc & 15)) - load_f16(b + 82) * (float)(sc >> 4);
}

/* Q4_K: 144-byte super-blocks of 256: f16 d, f16 dmin, scales[12] (eight
 * 6-bit scale/min pairs), qs[128].  Sub-block s of 32 uses nibble s&1 of
 * qs[32*(s/2) + l]. */
inline floatW dec_q4_k(const __global uchar *row, uint c, uint part, TABLES_PARAMS) {
    const __global uchar *b = row + 144 * (size_t)(c >> 3);
    uint sub = c & 7;
    const __global uchar *s = b + 4;
    uint sc, m;
    if (sub < 4) {
        sc = s[sub] & 63;
        m = s[sub + 4] & 63;
    } else {
        sc = (s[sub + 4] & 15) | ((s[sub - 4] >> 6) << 4);
        m = (s[sub + 4] >> 4) | ((s[sub] >> 6) << 4);
    }
    const __global uchar *q = b + 16 + 32 * (sub >> 1) + MV_W * part;
    ucharW k = (load_bytesW(q) >> (ucharW)(4 * (sub & 1))) & (ucharW)(15);
    return convert_floatW(k) * (load_f16(b) * (float)sc) - load_f16(b + 2) * (float)m;
}

/* IQ2_XXS: 66-byte super-blocks of 256: f16 d, then per chunk of 32 two
 * u32 words: a0 = four grid indices (bytes), a1 = four 7-bit sign indices
 * (bits 0..27) and a 4-bit scale s (bits 28..31).  Value = d * (0.5 + s)
 * / 4 * grid byte * sign.  Grid: iq2xxs_grid.cl. */
inline float8 iq2_octet(uint gi, uint si, TABLES_PARAMS) {
    float8 m = convert_float8(as_uchar8(grid[gi]));
    uint sm = si | ((popcount(si) & 1) << 7); /* = ksigns_iq2xs[si] */
    uint8 bits = (uint8)(sm) & (uint8)(1, 2, 4, 8, 16, 32, 64, 128);
    return select(m, -m, bits != (uint8)(0));
}
inline floatW dec_iq2_xxs(const __global uchar *row, uint c, uint part, TABLES_PARAMS) {
    const __global uchar *b = row + 66 * (size_t)(c >> 3);
    const __global uchar *w = b + 2 + 8 * (c & 7);
    uint a1 = load_u32_a2(w + 4), k = MV_W / 8 * part; /* first grid entry */
    float db = load_f16(b) * (0.5f + (float)(a1 >> 28)) * 0.25f;
#if MV_W == 16
    return (float16)(iq2_octet(w[k], (a1 >> (7 * k)) & 127, grid),
                     iq2_octet(w[k + 1], (a1 >> (7 * k + 7)) & 127, grid)) * db;
#else
    return iq2_octet(w[k], (a1 >> (7 * k)) & 127, grid) * db;
#endif
}

/* Quantized types have no tail (whole blocks only). */
inline float dec1_none(const __global uchar *row, uint i) { return 0.0f; }
#define dec1_q8_0 dec1_none
#define dec1_q2_k dec1_none
#define dec1_q4_k dec1_none
#define dec1_iq2_xxs dec1_none

/* ---- the shared skeleton ----------------------------------------------- */

/* Row index of this work-item (may be >= nrows: clamp before reading). */
inline uint mv_row(uint lid) { return (uint)get_group_id(0) * MV_ROWS + lid / MV_LANES; }

/* One lane step: MV_VEC consecutive parts of one chunk (step s covers
 * chunk s / MV_SPC, parts from (s % MV_SPC) * MV_VEC), decoded into w0_ ..
 * w3_, and their dot product with activation row xp; written out per
 * MV_VEC so no loop has to be unrolled by the compiler. */
#define MV_PARTS (32 / MV_W)          /* parts per chunk */
#define MV_SPC (MV_PARTS / MV_VEC)    /* steps per chunk */
#define MV_DEC(T, row, c, p) dec_##T(row, c, p, tab_grid)
#define MV_STEP_CP(s) uint c_ = (s) / MV_SPC, p_ = ((s) % MV_SPC) * MV_VEC;
#if MV_VEC == 4
#define MV_STEP_DECODE(T, row, s)                                                         \
    MV_STEP_CP(s)                                                                         \
    floatW w0_ = MV_DEC(T, row, c_, p_), w1_ = MV_DEC(T, row, c_, p_ + 1);               \
    floatW w2_ = MV_DEC(T, row, c_, p_ + 2), w3_ = MV_DEC(T, row, c_, p_ + 3);
#define MV_STEP_DOT(xp, s)                                                                \
    mad(w3_, vloadW(4 * (s) + 3, xp), mad(w2_, vloadW(4 * (s) + 2, xp),                  \
        mad(w1_, vloadW(4 * (s) + 1, xp), w0_ * vloadW(4 * (s), xp))))
#elif MV_VEC == 2
#define MV_STEP_DECODE(T, row, s)                                                         \
    MV_STEP_CP(s)                                                                         \
    floatW w0_ = MV_DEC(T, row, c_, p_), w1_ = MV_DEC(T, row, c_, p_ + 1);
#define MV_STEP_DOT(xp, s) mad(w1_, vloadW(2 * (s) + 1, xp), w0_ * vloadW(2 * (s), xp))
#else
#define MV_STEP_DECODE(T, row, s) MV_STEP_CP(s) floatW w0_ = MV_DEC(T, row, c_, p_);
#define MV_STEP_DOT(xp, s) (w0_ * vloadW(s, xp))
#endif

/* Dot products of one lane over its part of a row, for NT tokens whose
 * activation rows start at xt[0..NT-1]; sum[t] receives the lane's partial
 * sums.  One macro body serves matvec (NT = 1) and matmul (MM_TOKENS). */
#define MV_LANE_DOT(T, TAIL, NT, row, xt, ncols, lane, sum)                               \
    do {                                                                                  \
        uint ng_ = (ncols) / MV_W, ns_ = ng_ / MV_VEC;                                    \
        floatW acc_[NT];                                                                  \
        for (int t_ = 0; t_ < (NT); t_++) acc_[t_] = (floatW)(0.0f);                      \
        for (uint s_ = (lane); s_ < ns_; s_ += MV_LANES) {                                \
            MV_STEP_DECODE(T, row, s_)                                                    \
            for (int t_ = 0; t_ < (NT); t_++) acc_[t_] += MV_STEP_DOT(xt[t_], s_);        \
        }                                                                                 \
        for (uint g_ = ns_ * MV_VEC + (lane); g_ < ng_; g_ += MV_LANES) {                 \
            floatW wv_ = MV_DEC(T, row, g_ / MV_PARTS, g_ % MV_PARTS);                    \
            for (int t_ = 0; t_ < (NT); t_++) acc_[t_] = mad(wv_, vloadW(g_, xt[t_]), acc_[t_]); \
        }                                                                                 \
        for (int t_ = 0; t_ < (NT); t_++) sum[t_] = hsumW(acc_[t_]);                      \
        if (TAIL)                                                                         \
            for (uint i_ = ng_ * MV_W + (lane); i_ < (ncols); i_ += MV_LANES) {           \
                float wv_ = dec1_##T(row, i_);                                            \
                for (int t_ = 0; t_ < (NT); t_++) sum[t_] = mad(wv_, xt[t_][i_], sum[t_]); \
            }                                                                             \
    } while (0)

#define MV_KERNELS(T, TAIL, TABLES)                                                       \
__kernel __attribute__((reqd_work_group_size(MV_WG, 1, 1)))                              \
void matvec_##T(const __global uchar *w, ulong w_off, ulong row_bytes, uint ncols,       \
                uint nrows, const __global float *x, ulong x_off, __global float *y,     \
                ulong y_off) {                                                            \
    MV_LOCAL_DECL(1);                                                                     \
    uint lid = (uint)get_local_id(0), lane = lid % MV_LANES;                              \
    MV_TABLES_DECL(TABLES, lid)                                                           \
    uint r = mv_row(lid);                                                                 \
    const __global uchar *row = w + w_off + (ulong)min(r, nrows - 1) * row_bytes;        \
    const __global float *xt[1] = {x + x_off};                                            \
    float sum[1];                                                                         \
    MV_LANE_DOT(T, TAIL, 1, row, xt, ncols, lane, sum);                                   \
    mv_reduce(sum, 1, MV_LOCAL_PTR, lid);                                                 \
    if (lane == 0 && r < nrows) y[y_off + r] = sum[0];                                    \
}                                                                                         \
                                                                                          \
__kernel __attribute__((reqd_work_group_size(MV_WG, 1, 1)))                              \
void matmul_##T(const __global uchar *w, ulong w_off, ulong row_bytes, uint ncols,       \
                uint nrows, const __global float *x, ulong x_off, __global float *y,     \
                ulong y_off, uint ntok) {                                                 \
    MV_LOCAL_DECL(MM_TOKENS);                                                             \
    uint lid = (uint)get_local_id(0), lane = lid % MV_LANES;                              \
    MV_TABLES_DECL(TABLES, lid)                                                           \
    uint r = mv_row(lid);                                                                 \
    uint t0 = (uint)get_group_id(1) * MM_TOKENS;                                          \
    const __global uchar *row = w + w_off + (ulong)min(r, nrows - 1) * row_bytes;        \
    const __global float *xt[MM_TOKENS];                                                  \
    for (int t = 0; t < MM_TOKENS; t++)                                                   \
        xt[t] = x + x_off + (ulong)min(t0 + t, ntok - 1) * ncols;                         \
    float sum[MM_TOKENS];                                                                 \
    MV_LANE_DOT(T, TAIL, MM_TOKENS, row, xt, ncols, lane, sum);                           \
    mv_reduce(sum, MM_TOKENS, MV_LOCAL_PTR, lid);                                         \
    if (r < nrows)                                                                        \
        for (uint t = lane; t < MM_TOKENS; t += MV_LANES)                                 \
            if (t0 + t < ntok) y[y_off + (ulong)(t0 + t) * nrows + r] = sum[t];           \
}

/* Split-K matvec for short, wide matrices (few rows: a plain matvec would
 * run on a handful of work-groups).  Group (row group, split s) covers
 * columns [s*cps, s*cps + cps) (cps whole blocks; the last split takes the
 * rest) and writes its partial sums to part[s][r]; matvec_split_sum adds
 * the splits in order, so the result does not depend on scheduling. */
#define MV_SPLIT_KERNEL(T, TAIL, TABLES)                                                  \
__kernel __attribute__((reqd_work_group_size(MV_WG, 1, 1)))                              \
void matvec_split_##T(const __global uchar *w, ulong w_off, ulong row_bytes, uint ncols, \
                      uint nrows, const __global float *x, ulong x_off,                  \
                      __global float *part, uint cps, ulong split_bytes) {               \
    MV_LOCAL_DECL(1);                                                                     \
    uint lid = (uint)get_local_id(0), lane = lid % MV_LANES;                              \
    MV_TABLES_DECL(TABLES, lid)                                                           \
    uint r = mv_row(lid), sp = (uint)get_group_id(1);                                     \
    uint c0 = sp * cps, nc = min(cps, ncols - c0);                                        \
    const __global uchar *row =                                                           \
        w + w_off + (ulong)min(r, nrows - 1) * row_bytes + (ulong)sp * split_bytes;      \
    const __global float *xt[1] = {x + x_off + c0};                                       \
    float sum[1];                                                                         \
    MV_LANE_DOT(T, TAIL, 1, row, xt, nc, lane, sum);                                      \
    mv_reduce(sum, 1, MV_LOCAL_PTR, lid);                                                 \
    if (lane == 0 && r < nrows) part[(ulong)sp * nrows + r] = sum[0];                     \
}

__kernel void matvec_split_sum(const __global float *part, uint nsplit, uint nrows, __global float *y,
                               ulong y_off) {
    uint r = (uint)get_global_id(0);
    if (r >= nrows) return;
    float s = 0.0f;
    for (uint i = 0; i < nsplit; i++) s += part[(ulong)i * nrows + r];
    y[y_off + r] = s;
}

MV_KERNELS(f32, 1, 0)
MV_SPLIT_KERNEL(f32, 1, 0)
MV_KERNELS(f16, 1, 0)
MV_SPLIT_KERNEL(f16, 1, 0)
MV_KERNELS(bf16, 1, 0)
MV_SPLIT_KERNEL(bf16, 1, 0)
MV_KERNELS(q8_0, 0, 0)
MV_SPLIT_KERNEL(q8_0, 0, 0)
MV_KERNELS(q2_k, 0, 0)
MV_SPLIT_KERNEL(q2_k, 0, 0)
MV_KERNELS(q4_k, 0, 0)
MV_SPLIT_KERNEL(q4_k, 0, 0)
MV_KERNELS(iq2_xxs, 0, 1)
MV_SPLIT_KERNEL(iq2_xxs, 0, 1)

/* ---- bandwidth reference for bench/matvec_bench.c ---------------------- */

/* Read n4 float4 and write one sum per work-item (so the reads cannot be
 * dropped): the device's plain streaming read rate.  GPUs read grid-stride
 * (coalesced); CPU work-items each read one contiguous slice. */
__kernel void stream_read(const __global float4 *src, ulong n4, __global float *out) {
    ulong gid = get_global_id(0), gs = get_global_size(0);
    float4 acc = (float4)(0.0f);
#ifdef DS4_CPU
    ulong per = (n4 + gs - 1) / gs, end = min(n4, (gid + 1) * per);
    for (ulong i = gid * per; i < end; i++) acc += src[i];
#else
    for (ulong i = gid; i < n4; i += gs) acc += src[i];
#endif
    out[gid] = acc.x + acc.y + acc.z + acc.w;
}
