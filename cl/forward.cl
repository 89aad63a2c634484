/* forward.cl - small glue kernels of the layer graph (src/forward.c). */

/* x[off + i] *= s, i < n. */
__kernel void scale_f32(__global float *x, uint off, uint n, float s) {
    uint i = get_global_id(0);
    if (i < n) x[off + i] *= s;
}
