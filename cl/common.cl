/* common.cl - tuning defaults and helpers shared by every kernel file.
 *
 * This file comes first in the one program the runtime builds from all of
 * cl/ (see CL_FILES in the Makefile).  Kernels are OpenCL C 1.2 and must
 * compile on PoCL 3.1, NVIDIA and ROCm: no half arithmetic (f16 is only read
 * with vload_half or bit moves), no subgroups, no extensions.  The one
 * device-specific instruction, dp4a through inline PTX in
 * cl/matvec_q8x.cl, sits behind DS4_NVIDIA with a portable fallback.
 *
 * Device tuning comes only from build options chosen by src/kernels.c:
 *
 *   MV_LANES   work-items cooperating on one weight row; a power of two.
 *              1 (CPU devices): no local memory, no barrier code at all.
 *   MV_ROWS    rows per work-group; the work-group is one dimension of
 *              MV_LANES * MV_ROWS work-items, lanes of one row adjacent.
 *   MM_TOKENS  tokens per work-group in matmul: each decoded weight group
 *              is reused across this tile of tokens.
 *   MV_W       values per decoded group, the vector width of the dot
 *              products: 16 (default with one lane per row: AVX-512 width)
 *              or 8 (default with cooperating lanes: neighbouring lanes
 *              read neighbouring 8-value pieces of a row).
 *   MV_VEC     groups a lane decodes per step, 1, 2 or 4, at most 32 values
 *              (default 2 with one lane per row, so a CPU step is a whole
 *              32-value chunk; 1 otherwise).
 *   MV_TABLES_LOCAL  1: kernels that look up the IQ2 tables first copy
 *              them into local memory (GPUs: __constant serialises
 *              divergent lookups); 0: read __constant directly (CPU).
 *
 * Weights are addressed as bytes (a GGUF tensor sits at any offset inside a
 * span buffer, and blocks such as Q8_0's 34 bytes break 4-byte alignment),
 * so every typed read goes through vloadn / vload_half, which only need the
 * alignment of their scalar type.
 */

#ifndef MV_LANES
#define MV_LANES 1
#endif
#ifndef MV_ROWS
#define MV_ROWS 4
#endif
#ifndef MM_TOKENS
#define MM_TOKENS 4
#endif
#ifndef MV_W
#if MV_LANES == 1
#define MV_W 16
#else
#define MV_W 8
#endif
#endif
#ifndef MV_VEC
#if MV_LANES == 1
#define MV_VEC 2
#else
#define MV_VEC 1
#endif
#endif
#ifndef MV_TABLES_LOCAL
#ifdef DS4_CPU
#define MV_TABLES_LOCAL 0
#else
#define MV_TABLES_LOCAL 1
#endif
#endif

#if MV_LANES < 1 || (MV_LANES & (MV_LANES - 1)) != 0
#error "MV_LANES must be a power of two"
#endif
#if MV_ROWS < 1 || MM_TOKENS < 1
#error "MV_ROWS and MM_TOKENS must be positive"
#endif
#if MV_W != 8 && MV_W != 16
#error "MV_W must be 8 or 16"
#endif
#if (MV_VEC != 1 && MV_VEC != 2 && MV_VEC != 4) || MV_VEC * MV_W > 32
#error "MV_VEC must be 1, 2 or 4, and MV_VEC * MV_W at most 32"
#endif

/* Work-items per matvec/matmul work-group. */
#define MV_WG (MV_LANES * MV_ROWS)

/* The group vector types and their built-ins, named by width W. */
#if MV_W == 16
#define floatW float16
#define ucharW uchar16
#define uintW uint16
#define vloadW vload16
#define convert_floatW convert_float16
#define convert_uintW convert_uint16
#define as_floatW as_float16
#define as_charW as_char16
#define as_ucharW as_uchar16
#define vloadH vload8
#else
#define floatW float8
#define ucharW uchar8
#define uintW uint8
#define vloadW vload8
#define convert_floatW convert_float8
#define convert_uintW convert_uint8
#define as_floatW as_float8
#define as_charW as_char8
#define as_ucharW as_uchar8
#define vloadH vload4
#endif

/* MV_W bytes at a 2-byte aligned address, read as MV_W/2 u16 (vloadn of
 * bytes may become one load per byte on GPUs). */
inline ucharW load_bytesW(const __global uchar *p) {
    return as_ucharW(vloadH(0, (const __global ushort *)p));
}

/* Sum of the lanes of a group vector. */
inline float hsum8(float8 v) {
    float4 b = v.lo + v.hi;
    float2 c = b.lo + b.hi;
    return c.x + c.y;
}
#if MV_W == 16
inline float hsumW(float16 v) { return hsum8(v.lo + v.hi); }
#else
inline float hsumW(float8 v) { return hsum8(v); }
#endif

/* IEEE half to f32.  GPUs convert in hardware through vload_half.  PoCL
 * converts in software, one value at a time, so CPU builds (unless built
 * with -DDS4_F16_HW, which the tests use to cover the GPU path on PoCL)
 * move the bits instead: sign in place, exponent and mantissa shifted into
 * the f32 fields and the exponent bias fixed by a multiplication by 2^112,
 * which also gives zeros and subnormals exactly.  Inf and NaN come out as
 * large finite values; quantization scales never hold them. */
#if defined(DS4_CPU) && !defined(DS4_F16_HW)
inline float load_f16(const __global uchar *p) {
    uint h = *(const __global ushort *)p;
    return as_float(((h & 0x8000u) << 16) | ((h & 0x7fffu) << 13)) * 0x1.0p112f;
}
inline floatW load_f16xW(const __global uchar *p) {
    uintW u = convert_uintW(vloadW(0, (const __global ushort *)p));
    uintW bits = ((u & (uintW)(0x8000u)) << (uintW)(16)) | ((u & (uintW)(0x7fffu)) << (uintW)(13));
    return as_floatW(bits) * 0x1.0p112f;
}
#else
inline float load_f16(const __global uchar *p) {
    return vload_half(0, (const __global half *)p);
}
#if MV_W == 16
inline float16 load_f16xW(const __global uchar *p) { return vload_half16(0, (const __global half *)p); }
#else
inline float8 load_f16xW(const __global uchar *p) { return vload_half8(0, (const __global half *)p); }
#endif
#endif

/* Little-endian u32 at a 2-byte aligned byte address, read as two u16. */
inline uint load_u32_a2(const __global uchar *p) {
    ushort2 h = vload2(0, (const __global ushort *)p);
    return (uint)h.x | ((uint)h.y << 16);
}

/* Local scratch for the cross-lane reductions: declared inside a kernel
 * body (OpenCL 1.2 allows __local variables only at kernel scope) and only
 * when lanes cooperate, so CPU builds carry no local memory. */
#if MV_LANES > 1
#define MV_LOCAL_DECL(n) __local float mv_red[(n) * MV_WG]
#define MV_LOCAL_PTR mv_red
#else
#define MV_LOCAL_DECL(n)
#define MV_LOCAL_PTR ((__local float *)0)
#endif

/* Sum `n` partial values per work-item across the MV_LANES lanes of each
 * row: on return vals[j] holds the row total in every lane.  Every
 * work-item of the group must call it (it contains barriers when
 * MV_LANES > 1); red has n * MV_WG floats. */
inline void mv_reduce(float *vals, int n, __local float *red, uint lid) {
#if MV_LANES > 1
    uint lane = lid % MV_LANES;
    uint base = lid - lane;
    for (int j = 0; j < n; j++) red[j * MV_WG + lid] = vals[j];
    barrier(CLK_LOCAL_MEM_FENCE);
    for (uint s = MV_LANES / 2; s > 0; s >>= 1) {
        if (lane < s)
            for (int j = 0; j < n; j++) red[j * MV_WG + lid] += red[j * MV_WG + lid + s];
        barrier(CLK_LOCAL_MEM_FENCE);
    }
    for (int j = 0; j < n; j++) vals[j] = red[j * MV_WG + base];
#endif
}
