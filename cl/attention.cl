/* attention.cl - attention with sinks over the raw window and the compressed
 * rows (ops.h ds4_op_attention).
 *
 *   attention(q, ring, cap, window, comp, ratio, has_comp, sel, n_sel,
 *             has_sel, sinks, H, D, pos0, scale, out)
 *
 * One work-group of ATT_WG work-items per (head h = group 0, token t =
 * group 1), split into ATT_TEAMS teams of ATT_LANES lanes.  Lane l of a
 * team owns dims l, l + ATT_LANES, ... of the head (at most ATT_DMAX /
 * ATT_LANES of them, kept in private arrays: q and the output
 * accumulator).  The candidate rows of the token are numbered: first the
 * raw window (positions lo..pos, ring row p % cap), then the compressed
 * rows (all visible ones, or the sel entries; an entry that is negative or
 * not yet visible is skipped and weighs nothing).  Rows are taken in tiles
 * of ATT_TILE, tile i by team i % ATT_TEAMS, all teams in step: each lane
 * computes its partial dot products for its team's tile, one local-memory
 * tree reduction per team gives the scores, and each team's online softmax
 * (running max m, seeded with the sink, and denominator l, seeded with 1
 * for team 0 = exp(sink - m), 0 for the others) rescales its accumulator
 * and adds the tile's rows.  At the end the teams' (m, l, acc) are
 * combined through local memory: out = sum_s e^(m_s-M) acc_s / sum_s
 * e^(m_s-M) l_s.  Teams give a decode token (H groups in all) more
 * independent loads in flight per group and a shorter serial chain.
 * Loops around barriers have trip counts that are the same for the whole
 * group (they depend only on t and the split).  Masked scores are -1e30,
 * never -inf.
 *
 * Split KV (decode on GPUs, "flash decoding"): with nsplit > 1 the
 * candidates are cut into nsplit ranges of whole rounds, group (h, t, s)
 * runs range s (only split 0 counts the sink in its denominator) and
 * writes (max, denominator, unnormalised numerator) to part; then
 * attention_combine merges the splits.  A decoded token then has H *
 * nsplit groups instead of H, each with a shorter serial chain.
 */

#ifndef ATT_WG
#ifdef DS4_CPU
#define ATT_WG 16
#else
#define ATT_WG 256
#endif
#endif
/* GPU default: 8 teams of 32 lanes (on an H200, decode-shaped calls ran
 * 118 us with 4 x 64 and 81 us with 8 x 32; 256 work-items is the largest
 * group ROCm takes by default). */
#ifndef ATT_TEAMS
#ifdef DS4_CPU
#define ATT_TEAMS 1
#else
#define ATT_TEAMS 8
#endif
#endif
#if ATT_WG < 1 || (ATT_WG & (ATT_WG - 1)) != 0 || ATT_TEAMS < 1 || (ATT_TEAMS & (ATT_TEAMS - 1)) != 0 || \
    ATT_TEAMS > ATT_WG
#error "ATT_WG and ATT_TEAMS must be powers of two, ATT_TEAMS <= ATT_WG"
#endif
/* Largest head width (src/ops_attn.c checks D against the same value). */
#define ATT_DMAX 512
#define ATT_LANES (ATT_WG / ATT_TEAMS)
#define ATT_PL ((ATT_DMAX + ATT_LANES - 1) / ATT_LANES)
#define ATT_TILE 8

__kernel __attribute__((reqd_work_group_size(ATT_WG, 1, 1)))
void attention(const __global float *q, ulong q_off, const __global float *ring, ulong ring_off, uint cap,
               uint window, const __global float *comp, ulong comp_off, uint ratio, uint has_comp,
               const __global int *sel, ulong sel_off, uint n_sel, uint has_sel, const __global uchar *sinks,
               ulong sinks_off, uint H, uint D, uint pos0, float scale, __global float *out, ulong out_off,
               uint nsplit, __global float *part) {
    __local float red[ATT_TEAMS * ATT_TILE * ATT_LANES];
    __local float team_acc[ATT_TEAMS * ATT_DMAX];
    __local float team_m[ATT_TEAMS], team_l[ATT_TEAMS];
    const uint lid = (uint)get_local_id(0), h = (uint)get_group_id(0), t = (uint)get_group_id(1);
    const uint sp = (uint)get_group_id(2);
    const uint team = lid / ATT_LANES, lane = lid % ATT_LANES;
    const uint pos = pos0 + t;
    const uint lo = pos + 1 > window ? pos + 1 - window : 0;
    const uint n_raw = pos + 1 - lo;
    const uint n_vis_c = has_comp ? (pos + 1) / ratio : 0;
    const uint n_cand = n_raw + (has_comp ? (has_sel ? n_sel : n_vis_c) : 0);
    /* Split sp of nsplit takes candidates [c0, c1), whole rounds each. */
    const uint per_round = ATT_TILE * ATT_TEAMS;
    const uint per_split = (n_cand + nsplit * per_round - 1) / (nsplit * per_round) * per_round;
    const uint c0 = min(sp * per_split, n_cand), c1 = min(c0 + per_split, n_cand);
    const uint n_rounds = (c1 - c0 + per_round - 1) / per_round;
    ring += ring_off;
    comp += comp_off;
    const __global int *selt = sel + sel_off + (size_t)t * n_sel;
    __local float *tred = red + team * ATT_TILE * ATT_LANES;

    const __global float *qh = q + q_off + ((size_t)t * H + h) * D;
    float qv[ATT_PL], acc[ATT_PL];
    for (uint i = 0; i < ATT_PL; i++) {
        uint d = lane + i * ATT_LANES;
        qv[i] = d < D ? qh[d] : 0.0f;
        acc[i] = 0.0f;
    }
    /* Every team measures from the sink; only team 0 counts it. */
    float m = ((const __global float *)(sinks + sinks_off))[h];
    float l = team == 0 && sp == 0 ? 1.0f : 0.0f;

    for (uint r = 0; r < n_rounds; r++) {
        const uint j0 = c0 + (r * ATT_TEAMS + team) * ATT_TILE;
        const __global float *rp[ATT_TILE];
        bool ok[ATT_TILE];
        for (uint jj = 0; jj < ATT_TILE; jj++) {
            uint j = j0 + jj;
            ok[jj] = j < c1;
            rp[jj] = ring;
            if (j < n_raw) {
                rp[jj] = ring + (size_t)((lo + j) % cap) * D;
            } else if (ok[jj]) {
                uint c = j - n_raw;
                if (has_sel) {
                    int e = selt[c];
                    ok[jj] = e >= 0 && (uint)e < n_vis_c;
                    c = ok[jj] ? (uint)e : 0;
                }
                rp[jj] = comp + (size_t)c * D;
            }
            float part = 0.0f;
            if (ok[jj])
                for (uint i = 0; i < ATT_PL; i++) {
                    uint d = lane + i * ATT_LANES;
                    if (d < D) part = mad(qv[i], rp[jj][d], part);
                }
            tred[jj * ATT_LANES + lane] = part;
        }
        barrier(CLK_LOCAL_MEM_FENCE);
        for (uint s = ATT_LANES / 2; s > 0; s >>= 1) {
            if (lane < s)
                for (uint jj = 0; jj < ATT_TILE; jj++) tred[jj * ATT_LANES + lane] += tred[jj * ATT_LANES + lane + s];
            barrier(CLK_LOCAL_MEM_FENCE);
        }
        float sc[ATT_TILE];
        float mt = m;
        for (uint jj = 0; jj < ATT_TILE; jj++) {
            sc[jj] = ok[jj] ? tred[jj * ATT_LANES] * scale : -1e30f;
            mt = fmax(mt, sc[jj]);
        }
        barrier(CLK_LOCAL_MEM_FENCE); /* red is rewritten by the next round */

        float corr = exp(m - mt);
        l *= corr;
        for (uint i = 0; i < ATT_PL; i++) acc[i] *= corr;
        for (uint jj = 0; jj < ATT_TILE; jj++) {
            if (!ok[jj]) continue;
            float e = exp(sc[jj] - mt);
            l += e;
            for (uint i = 0; i < ATT_PL; i++) {
                uint d = lane + i * ATT_LANES;
                if (d < D) acc[i] = mad(e, rp[jj][d], acc[i]);
            }
        }
        m = mt;
    }

    /* Combine the teams' (m, l, acc) and write the head's output. */
    for (uint i = 0; i < ATT_PL; i++) {
        uint d = lane + i * ATT_LANES;
        if (d < D) team_acc[team * ATT_DMAX + d] = acc[i];
    }
    if (lane == 0) {
        team_m[team] = m;
        team_l[team] = l;
    }
    barrier(CLK_LOCAL_MEM_FENCE);
    float mx = team_m[0];
    for (uint s = 1; s < ATT_TEAMS; s++) mx = fmax(mx, team_m[s]);
    float den = 0.0f, wts[ATT_TEAMS];
    for (uint s = 0; s < ATT_TEAMS; s++) {
        wts[s] = exp(team_m[s] - mx);
        den = mad(wts[s], team_l[s], den);
    }
    if (nsplit == 1) {
        __global float *oh = out + out_off + ((size_t)t * H + h) * D;
        for (uint d = lid; d < D; d += ATT_WG) {
            float num = 0.0f;
            for (uint s = 0; s < ATT_TEAMS; s++) num = mad(wts[s], team_acc[s * ATT_DMAX + d], num);
            oh[d] = num / den;
        }
        return;
    }
    /* Split: this part's (max, denominator, unnormalised numerator). */
    __global float *pp = part + (((size_t)t * H + h) * nsplit + sp) * (D + 2);
    if (lid == 0) {
        pp[0] = mx;
        pp[1] = den;
    }
    for (uint d = lid; d < D; d += ATT_WG) {
        float num = 0.0f;
        for (uint s = 0; s < ATT_TEAMS; s++) num = mad(wts[s], team_acc[s * ATT_DMAX + d], num);
        pp[2 + d] = num;
    }
}

/* Combine the nsplit parts of each (head, token): one work-group per pair,
 * out = sum_s e^(m_s - M) num_s / sum_s e^(m_s - M) l_s. */
__kernel void attention_combine(const __global float *part, uint nsplit, uint H, uint D, __global float *out,
                                ulong out_off) {
    const uint h = (uint)get_group_id(0), t = (uint)get_group_id(1), lid = (uint)get_local_id(0);
    const uint lsz = (uint)get_local_size(0);
    const __global float *pp = part + ((size_t)t * H + h) * nsplit * (D + 2);
    float mx = pp[0];
    for (uint s = 1; s < nsplit; s++) mx = fmax(mx, pp[(size_t)s * (D + 2)]);
    float den = 0.0f;
    for (uint s = 0; s < nsplit; s++) den = mad(exp(pp[(size_t)s * (D + 2)] - mx), pp[(size_t)s * (D + 2) + 1], den);
    __global float *oh = out + out_off + ((size_t)t * H + h) * D;
    for (uint d = lid; d < D; d += lsz) {
        float num = 0.0f;
        for (uint s = 0; s < nsplit; s++)
            num = mad(exp(pp[(size_t)s * (D + 2)] - mx), pp[(size_t)s * (D + 2) + 2 + d], num);
        oh[d] = num / den;
    }
}
