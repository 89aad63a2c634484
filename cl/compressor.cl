/* compressor.cl - the streaming KV compressor (ops.h ds4_op_comp_update).
 *
 *   comp_update(kv, sc, ape, state_kv, state_sc, D, ratio, pos0, T, out, out_first)
 *
 * Design: the compressor is independent per column.  Column d of an emitted
 * row reads only state column d (ratio 128), or columns d (lane A) and D+d
 * (lane B) (ratio 4, overlapped), and the token writes and the lane shift
 * touch the same columns.  So work-item d owns those one or two columns of
 * the frontier and walks the chunk's tokens in order, exactly as the
 * token-by-token definition: write the token's state row, and when the
 * window closes, pool and (ratio 4) shift rows 4..7 to 0..3.  No local
 * memory, no barriers, no atomics; the order of every float operation is
 * fixed, so any split of a stream into chunks gives bit-identical rows and
 * frontier.
 *
 * Pooling is a per-column softmax over the candidates' scores (max first,
 * then exp(s - max)), then sum(e * kv) / sum(e); masked candidates hold
 * -1e30 and weigh exactly zero.
 *
 * The position bias `ape` is a small GGUF tensor (F32, F16 or BF16; the
 * GGML type id comes as an argument) of `ratio` rows of W values.
 */

#ifndef COMP_WG
#define COMP_WG 64
#endif

/* Element i of a F32 (0), F16 (1) or BF16 (30) vector at byte address p. */
inline float comp_weight_elem(const __global uchar *p, uint type, uint i) {
    if (type == 1) return load_f16(p + 2 * (size_t)i);
    if (type == 30) return as_float((uint)((const __global ushort *)p)[i] << 16);
    return ((const __global float *)p)[i];
}

__kernel __attribute__((reqd_work_group_size(COMP_WG, 1, 1)))
void comp_update(const __global float *kv, ulong kv_off, const __global float *sc, ulong sc_off,
                 const __global uchar *ape, ulong ape_off, uint ape_type, __global float *skv,
                 ulong skv_off, __global float *ssc, ulong ssc_off, uint D, uint ratio, uint pos0, uint T,
                 __global float *out, ulong out_off, uint out_first) {
    uint d = (uint)get_global_id(0);
    if (d >= D) return; /* no barriers in this kernel */
    const uint overlap = ratio == 4;
    const uint W = overlap ? 2 * D : D;
    const uint lanes = overlap ? 2 : 1;      /* state columns of this work-item */
    const uint n_cand = overlap ? 2 * ratio : ratio;
    kv += kv_off;
    sc += sc_off;
    skv += skv_off;
    ssc += ssc_off;
    out += out_off;
    const __global uchar *ap = ape + ape_off;

    for (uint t = 0; t < T; t++) {
        uint pos = pos0 + t, p = pos % ratio;
        uint srow = overlap ? ratio + p : p;
        for (uint l = 0; l < lanes; l++) {
            uint c = d + l * D;
            skv[(size_t)srow * W + c] = kv[(size_t)t * W + c];
            ssc[(size_t)srow * W + c] = sc[(size_t)t * W + c] + comp_weight_elem(ap, ape_type, p * W + c);
        }
        if ((pos + 1) % ratio != 0) continue;

        /* Candidate i: state row i, column d (ratio 128 and lane A rows
         * 0..3) or column D+d (lane B rows 4..7). */
        float m = -1e30f;
        for (uint i = 0; i < n_cand; i++) {
            uint c = overlap && i >= ratio ? D + d : d;
            m = fmax(m, ssc[(size_t)i * W + c]);
        }
        float num = 0.0f, den = 0.0f;
        for (uint i = 0; i < n_cand; i++) {
            uint c = overlap && i >= ratio ? D + d : d;
            float e = exp(ssc[(size_t)i * W + c] - m);
            den += e;
            num = mad(e, skv[(size_t)i * W + c], num);
        }
        uint w = (pos + 1) / ratio - 1;
        out[(size_t)(w - out_first) * D + d] = num / den;

        if (overlap)
            for (uint i = 0; i < ratio; i++)
                for (uint l = 0; l < lanes; l++) {
                    uint c = d + l * D;
                    skv[(size_t)i * W + c] = skv[(size_t)(ratio + i) * W + c];
                    ssc[(size_t)i * W + c] = ssc[(size_t)(ratio + i) * W + c];
                }
    }
}
