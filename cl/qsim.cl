/* qsim.cl - FP8 E4M3 and Hadamard + FP4 E2M1 round trips (ds4_op_fp8_sim,
 * ds4_op_hadamard_fp4), bit for bit the rules of src/qsim.c.
 *
 * Exactness on any device: only operations OpenCL requires to be exact are
 * used (frexp, ldexp, rint, fabs, fmin, fmax, copysign, + and - of the
 * Hadamard butterflies, products by powers of two), never a division.
 * The block scale 2^k = 2^ceil(log2(amax / M)) of qsim.c rounds the
 * quotient first; for M = 448 or 6 no float amax lies strictly between
 * M * 2^k and the point where amax / M would round down to 2^k (both
 * M * 2^k is a float and the rounding slack M * 2^k * 2^-24 is below one
 * ulp of amax), so k is exactly the smallest k with amax <= M * 2^k,
 * which qsim_scale_exp finds from an approximate quotient and corrects.
 *
 *   op_fp8_sim: one work-group of 64 per 64-value block of a row: the
 *   block's max |x| by a tree in local memory (fmax: exact in any order),
 *   then each work-item rounds its own value.
 *   op_hadamard_fp4: one work-group of width/2 work-items per row (width a
 *   power of two, 32..256): the row goes to local memory, log2(width)
 *   butterfly stages run in qsim.c's order (stride 1, 2, ...), each
 *   work-item one butterfly per stage, then the scale `s` (computed by the
 *   host exactly as qsim.c) and the FP4 round trip, one work-item per
 *   32-value block.
 */

/* Smallest k with amax <= maxval * 2^k (amax > 0 finite, normal). */
inline int qsim_scale_exp(float amax, float maxval) {
    int k = 0;
    frexp(amax / maxval, &k); /* approximate quotient in [2^(k-1), 2^k) */
    while (k > -149 && maxval * ldexp(1.0f, k - 1) >= amax) k--;
    while (maxval * ldexp(1.0f, k) < amax) k++;
    return k;
}

inline float qsim_round_e4m3(float v) {
    float a = fabs(v);
    if (a == 0.0f) return v;
    int e = 0;
    frexp(a, &e);
    int step = max((e - 1) - 3, -9);
    float q = fmin(ldexp(rint(ldexp(a, -step)), step), 448.0f);
    return copysign(q, v);
}

inline float qsim_round_e2m1(float v) {
    float a = fabs(v);
    if (a == 0.0f) return v;
    int e = 0;
    frexp(a, &e);
    int step = max((e - 1) - 1, -1);
    float q = fmin(ldexp(rint(ldexp(a, -step)), step), 6.0f);
    return copysign(q, v);
}

__kernel __attribute__((reqd_work_group_size(64, 1, 1)))
void op_fp8_sim(__global float *x, ulong x_off, uint rows, uint stride, uint n_sim) {
    __local float red[64];
    uint blk = get_group_id(0), row = get_global_id(1), lid = get_local_id(0);
    __global float *v = x + x_off + (ulong)row * stride + 64 * blk;
    float mine = v[lid];
    red[lid] = fabs(mine);
    barrier(CLK_LOCAL_MEM_FENCE);
    for (uint h = 32; h > 0; h >>= 1) {
        if (lid < h) red[lid] = fmax(red[lid], red[lid + h]);
        barrier(CLK_LOCAL_MEM_FENCE);
    }
    int k = qsim_scale_exp(fmax(red[0], 1e-4f), 448.0f);
    float s = fmin(fmax(ldexp(mine, -k), -448.0f), 448.0f);
    v[lid] = ldexp(qsim_round_e4m3(s), k);
}

__kernel void op_hadamard_fp4(__global float *x, ulong x_off, uint width, float s) {
    __local float buf[256];
    uint row = get_group_id(0), lid = get_local_id(0);
    __global float *v = x + x_off + (ulong)row * width;
    buf[lid] = v[lid];
    buf[lid + width / 2] = v[lid + width / 2];
    barrier(CLK_LOCAL_MEM_FENCE);
    for (uint h = 1; h < width; h *= 2) {
        uint j = (lid / h) * 2 * h + lid % h;
        float a = buf[j], b = buf[j + h];
        buf[j] = a + b;
        buf[j + h] = a - b;
        barrier(CLK_LOCAL_MEM_FENCE);
    }
    if (lid < width / 32) {
        __local float *blk = buf + 32 * lid;
        float amax = 6.0f * 0x1.0p-126f;
        for (uint i = 0; i < 32; i++) amax = fmax(amax, fabs(blk[i] * s));
        int k = qsim_scale_exp(amax, 6.0f);
        for (uint i = 0; i < 32; i++) {
            float q = fmin(fmax(ldexp(blk[i] * s, -k), -6.0f), 6.0f);
            v[32 * lid + i] = ldexp(qsim_round_e2m1(q), k);
        }
    }
}
