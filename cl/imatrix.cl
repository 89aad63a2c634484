/* imatrix.cl - routed-expert input statistics for the importance matrix
 * (src/calib.c), deterministic: no atomics, every sum in a fixed order.
 *
 *   imx_lists: one work-item per expert e scans the chunk's routing table
 *     sel [n_slots] (slot = t*n_used + k) in slot order and writes the slots
 *     routed to e into lists[e*cap ..], their number into chunk_count[e],
 *     and adds it to total[e] (the running token count of e).
 *   imx_accum: one work-item per (column c, expert e) sums x^2 of column c
 *     over e's slots in list order (x row = slot when per_slot, the token
 *     slot / n_used otherwise) and adds the chunk's sum to the running sum
 *     acc[(e*ncols + c)*2] with Kahan compensation in acc[... + 1] (the
 *     total is sum - comp), so long calibration runs keep f32 precision.
 * The host runs imx_lists once per layer and chunk, then imx_accum for the
 * gate/up input (xn, per token) and the down input (mid, per slot).
 */

__kernel void imx_lists(__global const int *sel, uint n_slots, uint n_expert, uint cap,
                        __global uint *lists, __global uint *chunk_count, __global uint *total) {
    uint e = get_global_id(0);
    if (e >= n_expert) return;
    uint n = 0;
    for (uint s = 0; s < n_slots; s++)
        if (sel[s] == (int)e && n < cap) lists[(ulong)e * cap + n++] = s;
    chunk_count[e] = n;
    total[e] += n;
}

__kernel void imx_accum(__global const float *x, uint ncols, uint per_slot, uint n_used,
                        __global const uint *lists, __global const uint *chunk_count, uint cap, uint n_expert,
                        __global float *acc) {
    uint c = get_global_id(0), e = get_global_id(1);
    if (c >= ncols || e >= n_expert) return;
    uint n = chunk_count[e];
    float s = 0.0f;
    for (uint j = 0; j < n; j++) {
        uint slot = lists[(ulong)e * cap + j];
        uint row = per_slot ? slot : slot / n_used;
        float v = x[(ulong)row * ncols + c];
        s += v * v;
    }
    if (n == 0) return;
    ulong i = ((ulong)e * ncols + c) * 2;
    float sum = acc[i], comp = acc[i + 1];
    float y = s - comp;
    float t = sum + y;
    acc[i + 1] = (t - sum) - y;
    acc[i] = t;
}
