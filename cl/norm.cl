/* norm.cl - RMSNorm over rows (ds4_op_rmsnorm).
 *
 *   op_rmsnorm: one work-group per row; each work-item sums the squares of
 *   the values lid, lid + lsz, ... in f32, a tree in local memory (`red`,
 *   one float per work-item, the local size a power of two) gives the row
 *   total, then every work-item writes its own values
 *       y = (x * (1 / sqrt(sum / n + eps))) * w
 *   which is transformers' x * rsqrt(mean(x^2) + eps), then weight * x.
 *   A work-item only rewrites the values it read itself, so y may equal x.
 *   The weight is F32 at a 4-byte aligned byte offset of a byte buffer;
 *   has_w = 0 means no weight (the buffer is then any valid one).
 */

__kernel void op_rmsnorm(__global const float *x, ulong x_off, __global float *y, ulong y_off, uint n,
                         uint stride, __global const uchar *w, ulong w_off, uint has_w, float eps,
                         __local float *red) {
    uint row = get_group_id(0), lid = get_local_id(0), lsz = get_local_size(0);
    __global const float *xr = x + x_off + (ulong)row * stride;
    __global float *yr = y + y_off + (ulong)row * stride;
    float s = 0.0f;
    for (uint i = lid; i < n; i += lsz) {
        float v = xr[i];
        s += v * v;
    }
    red[lid] = s;
    barrier(CLK_LOCAL_MEM_FENCE);
    for (uint h = lsz / 2; h > 0; h >>= 1) {
        if (lid < h) red[lid] += red[lid + h];
        barrier(CLK_LOCAL_MEM_FENCE);
    }
    float r = 1.0f / sqrt(red[0] / (float)n + eps);
    __global const float *wr = (__global const float *)(w + w_off);
    for (uint i = lid; i < n; i += lsz) {
        float v = xr[i] * r;
        yr[i] = has_w ? wr[i] * v : v;
    }
}
