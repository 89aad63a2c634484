/* rope.cl - interleaved RoPE on the tail dims of each head (ds4_op_rope_tail).
 *
 *   op_rope_tail: one work-item per (pair i, head h, row t).  The pair is
 *   dims head_dim - n_rot + 2i and + 1 of head h of row t, at position
 *   p = pos_base + t * pos_step; theta = (float)p * inv_freq[i] (an f32
 *   product, as transformers), then the rotation by theta (or -theta when
 *   inverse).  Full-precision cos / sin (never native_), in place.
 */

__kernel void op_rope_tail(__global float *x, ulong x_off, uint T, uint heads, uint head_dim, uint n_rot,
                           uint pos_base, uint pos_step, __global const float *inv_freq, ulong if_off,
                           uint inverse) {
    uint i = get_global_id(0), h = get_global_id(1), t = get_global_id(2);
    if (i >= n_rot / 2 || h >= heads || t >= T) return;
    uint p = pos_base + t * pos_step;
    float theta = (float)p * inv_freq[if_off + i];
    float c = cos(theta), s = sin(theta);
    if (inverse) s = -s;
    __global float *v = x + x_off + ((ulong)t * heads + h) * head_dim + (head_dim - n_rot) + 2 * i;
    float x0 = v[0], x1 = v[1];
    v[0] = x0 * c - x1 * s;
    v[1] = x0 * s + x1 * c;
}
