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
 * Design: every type is split into chunks of 32 consecutive values of a row
 * (a Q8_0 block, one eighth of a K-quant or IQ2_XXS super-block, 32 plain
 * values).  Per type there is one decoder dec_<t>(row, c, &lo, &hi) that
 * turns chunk c into two float16 vectors, and one shared skeleton,
 * instantiated by MV_KERNELS(t, tail), holds the only matvec and matmul
 * bodies: lane l of a row takes chunks l, l + MV_LANES, ..., multiplies
 * them into a float16 accumulator and the lanes are summed by mv_reduce.
 * matmul decodes each chunk once and applies it to MM_TOKENS tokens.
 *
 * Float types accept any ncols: the values after the last whole chunk are
 * read one by one through dec1_<t> (tail = 1); quantized types require
 * whole blocks (checked by the host).  Rows past nrows and tokens past ntok
 * are clamped for reading and not written, so every work-item reaches the
 * barriers of the reduction.  Required alignment of w_off and row_bytes:
 * 4 bytes for f32, 2 bytes for everything else.
 */

/* ---- per-type chunk decoders ------------------------------------------- */

inline void dec_f32(const __global uchar *row, uint c, float16 *lo, float16 *hi) {
    const __global float *p = (const __global float *)row + 32 * (size_t)c;
    *lo = vload16(0, p);
    *hi = vload16(1, p);
}
inline float dec1_f32(const __global uchar *row, uint i) {
    return ((const __global float *)row)[i];
}

inline void dec_f16(const __global uchar *row, uint c, float16 *lo, float16 *hi) {
    const __global uchar *p = row + 64 * (size_t)c;
    *lo = load_f16x16(p);
    *hi = load_f16x16(p + 32);
}
inline float dec1_f16(const __global uchar *row, uint i) {
    return load_f16(row + 2 * (size_t)i);
}

inline float16 bf16x16(ushort16 b) {
    return as_float16(convert_uint16(b) << (uint16)(16));
}
inline void dec_bf16(const __global uchar *row, uint c, float16 *lo, float16 *hi) {
    const __global ushort *p = (const __global ushort *)row + 32 * (size_t)c;
    *lo = bf16x16(vload16(0, p));
    *hi = bf16x16(vload16(1, p));
}
inline float dec1_bf16(const __global uchar *row, uint i) {
    return as_float((uint)((const __global ushort *)row)[i] << 16);
}

/* Q8_0: 34-byte blocks of 32: f16 d, 32 x int8 q; value = d * q. */
inline void dec_q8_0(const __global uchar *row, uint c, float16 *lo, float16 *hi) {
    const __global uchar *b = row + 34 * (size_t)c;
    float d = load_f16(b);
    const __global char *q = (const __global char *)(b + 2);
    *lo = convert_float16(vload16(0, q)) * d;
    *hi = convert_float16(vload16(1, q)) * d;
}

/* Q2_K: 84-byte super-blocks of 256: scales[16] (low nibble scale, high
 * nibble min, per 16 values), qs[64], f16 d, f16 dmin.  Value j uses the
 * 2 bits at shift 2*((j%128)/32) of qs[32*(j/128) + j%32]. */
inline void dec_q2_k(const __global uchar *row, uint c, float16 *lo, float16 *hi) {
    const __global uchar *b = row + 84 * (size_t)(c >> 3);
    uint sub = c & 7;
    float d = load_f16(b + 80), dmin = load_f16(b + 82);
    uint s0 = b[2 * sub], s1 = b[2 * sub + 1];
    const __global uchar *q = b + 16 + 32 * (sub >> 2);
    uchar16 sh = (uchar16)(2 * (sub & 3));
    float16 q0 = convert_float16((vload16(0, q) >> sh) & (uchar16)(3));
    float16 q1 = convert_float16((vload16(1, q) >> sh) & (uchar16)(3));
    *lo = q0 * (d * (float)(s0 & 15)) - dmin * (float)(s0 >> 4);
    *hi = q1 * (d * (float)(s1 & 15)) - dmin * (float)(s1 >> 4);
}

/* Q4_K: 144-byte super-blocks of 256: f16 d, f16 dmin, scales[12] (eight
 * 6-bit scale/min pairs), qs[128].  Sub-block s of 32 uses nibble s&1 of
 * qs[32*(s/2) + l]. */
inline void dec_q4_k(const __global uchar *row, uint c, float16 *lo, float16 *hi) {
    const __global uchar *b = row + 144 * (size_t)(c >> 3);
    uint sub = c & 7;
    float d = load_f16(b), dmin = load_f16(b + 2);
    const __global uchar *s = b + 4;
    uint sc, m;
    if (sub < 4) {
        sc = s[sub] & 63;
        m = s[sub + 4] & 63;
    } else {
        sc = (s[sub + 4] & 15) | ((s[sub - 4] >> 6) << 4);
        m = (s[sub + 4] >> 4) | ((s[sub] >> 6) << 4);
    }
    const __global uchar *q = b + 16 + 32 * (sub >> 1);
    uchar16 sh = (uchar16)(4 * (sub & 1));
    float scale = d * (float)sc, off = dmin * (float)m;
    *lo = convert_float16((vload16(0, q) >> sh) & (uchar16)(15)) * scale - off;
    *hi = convert_float16((vload16(1, q) >> sh) & (uchar16)(15)) * scale - off;
}

/* IQ2_XXS: 66-byte super-blocks of 256: f16 d, then per group of 32 two
 * u32 words: a0 = four grid indices, a1 = four 7-bit sign indices (bits
 * 0..27) and a 4-bit scale (bits 28..31).  Value = d * (0.5 + s) / 4 *
 * grid byte * sign.  Tables iq2xxs_grid / ksigns_iq2xs: iq2xxs_grid.cl. */
inline float8 iq2_octet(uint gi, uint si, float db) {
    float8 m = convert_float8(as_uchar8(iq2xxs_grid[gi]));
    uint8 bits = (uint8)(ksigns_iq2xs[si]) & (uint8)(1, 2, 4, 8, 16, 32, 64, 128);
    return select(m, -m, bits != (uint8)(0)) * db;
}
inline void dec_iq2_xxs(const __global uchar *row, uint c, float16 *lo, float16 *hi) {
    const __global uchar *b = row + 66 * (size_t)(c >> 3);
    const __global uchar *g = b + 2 + 8 * (c & 7);
    uint a0 = load_u32_a2(g), a1 = load_u32_a2(g + 4);
    float db = load_f16(b) * (0.5f + (float)(a1 >> 28)) * 0.25f;
    *lo = (float16)(iq2_octet(a0 & 255, a1 & 127, db), iq2_octet((a0 >> 8) & 255, (a1 >> 7) & 127, db));
    *hi = (float16)(iq2_octet((a0 >> 16) & 255, (a1 >> 14) & 127, db), iq2_octet(a0 >> 24, (a1 >> 21) & 127, db));
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

#define MV_KERNELS(T, TAIL)                                                               \
__kernel __attribute__((reqd_work_group_size(MV_WG, 1, 1)))                              \
void matvec_##T(const __global uchar *w, ulong w_off, ulong row_bytes, uint ncols,       \
                uint nrows, const __global float *x, ulong x_off, __global float *y,     \
                ulong y_off) {                                                            \
    MV_LOCAL_DECL(1);                                                                     \
    uint lid = (uint)get_local_id(0), lane = lid % MV_LANES;                              \
    uint r = mv_row(lid);                                                                 \
    const __global uchar *row = w + w_off + (ulong)min(r, nrows - 1) * row_bytes;        \
    const __global float *xr = x + x_off;                                                 \
    uint nch = ncols / 32;                                                                \
    float16 acc = (float16)(0.0f);                                                        \
    for (uint c = lane; c < nch; c += MV_LANES) {                                         \
        float16 lo, hi;                                                                   \
        dec_##T(row, c, &lo, &hi);                                                        \
        acc += mad(hi, vload16(0, xr + 32 * (size_t)c + 16), lo * vload16(0, xr + 32 * (size_t)c)); \
    }                                                                                     \
    float sum[1] = {hsum16(acc)};                                                         \
    if (TAIL)                                                                             \
        for (uint i = nch * 32 + lane; i < ncols; i += MV_LANES)                          \
            sum[0] = mad(dec1_##T(row, i), xr[i], sum[0]);                                \
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
    uint r = mv_row(lid);                                                                 \
    uint t0 = (uint)get_group_id(1) * MM_TOKENS;                                          \
    const __global uchar *row = w + w_off + (ulong)min(r, nrows - 1) * row_bytes;        \
    const __global float *xt[MM_TOKENS];                                                  \
    for (int t = 0; t < MM_TOKENS; t++)                                                   \
        xt[t] = x + x_off + (ulong)min(t0 + t, ntok - 1) * ncols;                         \
    uint nch = ncols / 32;                                                                \
    float16 acc[MM_TOKENS];                                                               \
    for (int t = 0; t < MM_TOKENS; t++) acc[t] = (float16)(0.0f);                         \
    for (uint c = lane; c < nch; c += MV_LANES) {                                         \
        float16 lo, hi;                                                                   \
        dec_##T(row, c, &lo, &hi);                                                        \
        for (int t = 0; t < MM_TOKENS; t++) {                                             \
            acc[t] += mad(hi, vload16(0, xt[t] + 32 * (size_t)c + 16),                    \
                          lo * vload16(0, xt[t] + 32 * (size_t)c));                       \
        }                                                                                 \
    }                                                                                     \
    float sum[MM_TOKENS];                                                                 \
    for (int t = 0; t < MM_TOKENS; t++) sum[t] = hsum16(acc[t]);                          \
    if (TAIL)                                                                             \
        for (uint i = nch * 32 + lane; i < ncols; i += MV_LANES) {                        \
            float wv = dec1_##T(row, i);                                                  \
            for (int t = 0; t < MM_TOKENS; t++) sum[t] = mad(wv, xt[t][i], sum[t]);       \
        }                                                                                 \
    mv_reduce(sum, MM_TOKENS, MV_LOCAL_PTR, lid);                                         \
    if (r < nrows)                                                                        \
        for (uint t = lane; t < MM_TOKENS; t += MV_LANES)                                 \
            if (t0 + t < ntok) y[y_off + (ulong)(t0 + t) * nrows + r] = sum[t];           \
}

MV_KERNELS(f32, 1)
MV_KERNELS(f16, 1)
MV_KERNELS(bf16, 1)
MV_KERNELS(q8_0, 0)
MV_KERNELS(q2_k, 0)
MV_KERNELS(q4_k, 0)
MV_KERNELS(iq2_xxs, 0)

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
