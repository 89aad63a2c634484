/* misc.cl - element-wise ops of the forward pass: the embedding lookup, the
 * raw KV ring store, the clamped SwiGLU, the expert sum and the plain add
 * (ds4_op_embed, _kv_store, _swiglu, _moe_sum, _add).
 *
 * One work-item per output value (2-D where there is a row index), guarded
 * against the rounded-up global size.  Offsets of f32 arrays count floats;
 * weights are bytes at a byte offset aligned for their type (checked by the
 * host: 4 bytes for F32, 2 for F16 / BF16 / Q8_0).
 */

/* GGML type ids the embedding reads. */
#define MISC_T_F32 0
#define MISC_T_F16 1
#define MISC_T_Q8_0 8
#define MISC_T_BF16 30

/* X[t][s][d] = embd[tokens[t]][d] for every stream s < n_hc. */
__kernel void op_embed(__global const uchar *embd, ulong e_off, ulong row_bytes, uint type, uint n_embd,
                       __global const int *tokens, ulong tok_off, uint T, uint n_hc, __global float *X,
                       ulong X_off) {
    uint d = get_global_id(0), t = get_global_id(1);
    if (d >= n_embd || t >= T) return;
    __global const uchar *row = embd + e_off + (ulong)(uint)tokens[tok_off + t] * row_bytes;
    float v;
    if (type == MISC_T_F32) {
        v = ((__global const float *)row)[d];
    } else if (type == MISC_T_F16) {
        v = load_f16(row + 2 * (ulong)d);
    } else if (type == MISC_T_BF16) {
        v = as_float((uint)((__global const ushort *)row)[d] << 16);
    } else { /* Q8_0: 34-byte blocks, f16 d then 32 int8 codes */
        __global const uchar *b = row + 34 * (ulong)(d / 32);
        v = (float)((__global const char *)b)[2 + d % 32] * load_f16(b);
    }
    __global float *out = X + X_off + (ulong)t * n_hc * n_embd + d;
    for (uint s = 0; s < n_hc; s++) out[(ulong)s * n_embd] = v;
}

/* v rounded to the nearest f16 value (ties to even), as f32; |v| >= 65520
 * becomes inf, NaN stays NaN.  Bit moves only, exact on every device. */
inline float misc_round_f16(float v) {
    float a = fabs(v);
    if (isnan(v)) return v;
    if (a >= 65520.0f) return copysign(INFINITY, v);
    if (a < 0x1.0p-14f) return copysign(rint(a * 0x1.0p24f) * 0x1.0p-24f, v); /* subnormal step 2^-24 */
    uint u = as_uint(a);
    u = (u + 0xfffu + ((u >> 13) & 1u)) & ~0x1fffu; /* keep 10 mantissa bits */
    return copysign(as_float(u), v);
}

/* ring[(pos0 + t) % cap][d] = kv[t][d]. */
__kernel void op_kv_store(__global const float *kv, ulong kv_off, __global float *ring, ulong ring_off,
                          uint width, uint cap, uint pos0, uint T, uint round_f16) {
    uint d = get_global_id(0), t = get_global_id(1);
    if (d >= width || t >= T) return;
    float v = kv[kv_off + (ulong)t * width + d];
    if (round_f16) v = misc_round_f16(v);
    ulong slot = ((ulong)pos0 + t) % cap;
    ring[ring_off + slot * width + d] = v;
}

/* mid = silu(min(g, c)) * clamp(u, -c, c) * (has_w ? w[row] : 1). */
__kernel void op_swiglu(__global const float *g, ulong g_off, __global const float *u, ulong u_off,
                        __global const float *w, ulong w_off, uint has_w, uint n, uint rows, float c,
                        __global float *mid, ulong mid_off) {
    uint i = get_global_id(0), r = get_global_id(1);
    if (i >= n || r >= rows) return;
    ulong k = (ulong)r * n + i;
    float gv = fmin(g[g_off + k], c);
    float uv = fmin(fmax(u[u_off + k], -c), c);
    float m = gv / (1.0f + exp(-gv)) * uv;
    if (has_w) m *= w[w_off + r];
    mid[mid_off + k] = m;
}

/* out[t][d] = sum_k y[t][k][d] (+ add[t][d]). */
__kernel void op_moe_sum(__global const float *y, ulong y_off, uint n_used, uint n, uint T,
                         __global const float *add, ulong add_off, uint has_add, __global float *out,
                         ulong out_off) {
    uint d = get_global_id(0), t = get_global_id(1);
    if (d >= n || t >= T) return;
    __global const float *yt = y + y_off + (ulong)t * n_used * n + d;
    float s = 0.0f;
    for (uint k = 0; k < n_used; k++) s += yt[(ulong)k * n];
    if (has_add) s += add[add_off + (ulong)t * n + d];
    out[out_off + (ulong)t * n + d] = s;
}

/* out[i] = a[i] + b[i]. */
__kernel void op_add(__global const float *a, ulong a_off, __global const float *b, ulong b_off,
                     __global float *out, ulong out_off, ulong n) {
    ulong i = get_global_id(0);
    if (i >= n) return;
    out[out_off + i] = a[a_off + i] + b[b_off + i];
}
