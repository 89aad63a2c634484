/* indexer.cl - lightning-indexer scores and the per-token top-k selection
 * (ops.h ds4_op_indexer_scores, ds4_op_topk).
 *
 *   indexer_scores(q, w, rows, n_head, dim, n_rows, pos0, scores)
 *       one work-item per (compressed row c, token t) holds its row in
 *       registers (dim <= IDX_DMAX, zero-padded to float4s); the token's q
 *       passes through local memory IDX_HC heads at a time, shared by the
 *       IDX_WG rows of the group.  Per head: the f32 dot product (four
 *       interleaved partial sums), ReLU, times w[t][h], summed over heads in
 *       order; -1e30 for rows the token cannot see yet (c >= (pos+1)/4).
 *
 *   topk(scores, n_rows, k, pos0, sel)
 *       one work-group per token.  Scores become order-preserving u32 keys
 *       (negative floats bit-inverted, positive ones with the sign bit set;
 *       -0 is folded onto +0 so equal floats are equal keys).  The k-th
 *       largest key among the n_vis visible rows is found by a radix select:
 *       four passes of 8 bits, most significant first, each a 256-bin local
 *       histogram (atomic increments: the counts, hence the result, do not
 *       depend on their order) of the keys that match the prefix found so
 *       far; one work-item then walks the bins from the top.  Reads are
 *       issued four at a time.  After that, thr = the k-th key and need =
 *       how many keys equal to thr are taken: every key above thr, plus the
 *       `need` lowest-indexed keys equal to thr (ties go to the lower
 *       index).  Compaction keeps index order: work-item i owns a
 *       contiguous slice of the rows (whole float4s but for the last),
 *       counts its keys above / equal to thr, an exclusive scan over the
 *       work-group gives each slice its output position and its number of
 *       earlier equal keys, and a second walk writes the indices.  (On an
 *       H200 the compaction is most of the time: 150 us for 65536 rows, of
 *       which about 120 us are the two slice walks, whose reads are not
 *       coalesced; a block-wise scan would be the next step.)  With
 *       n_vis <= k the passes are skipped (thr = 0, need = all) so every
 *       visible row is taken; the tail of sel[t] is -1.  Every loop around
 *       a barrier has a trip count that is the same for the whole group.
 */

#ifndef IDX_WG
#define IDX_WG 64
#endif
#ifndef IDX_HC
#define IDX_HC 16
#endif
/* Largest row width (src/ops_attn.c checks dim against the same value). */
#define IDX_DMAX 128
#define IDX_D4 (IDX_DMAX / 4)

/* Floats i..i+3 of a row of n floats, zeros past its end. */
inline float4 idx_load4(const __global float *p, uint i, uint n) {
    if (i + 4 <= n) return vload4(0, p + i);
    float4 v = (float4)(0.0f);
    if (i < n) v.x = p[i];
    if (i + 1 < n) v.y = p[i + 1];
    if (i + 2 < n) v.z = p[i + 2];
    return v;
}

#ifndef TOPK_WG
#ifdef DS4_CPU
#define TOPK_WG 16
#else
#define TOPK_WG 256
#endif
#endif
#if TOPK_WG < 1 || (TOPK_WG & (TOPK_WG - 1)) != 0
#error "TOPK_WG must be a power of two"
#endif

__kernel __attribute__((reqd_work_group_size(IDX_WG, 1, 1)))
void indexer_scores(const __global float *q, ulong q_off, const __global float *w, ulong w_off,
                    const __global float *rows, ulong rows_off, uint n_head, uint dim, uint n_rows, uint pos0,
                    __global float *scores, ulong s_off) {
    __local float4 qs[IDX_HC * IDX_D4];
    const uint lid = (uint)get_local_id(0), c = (uint)get_global_id(0), t = (uint)get_global_id(1);
    const uint c0 = (uint)get_group_id(0) * IDX_WG;
    const uint n_vis = min((pos0 + t + 1) / 4, n_rows);
    const uint n4 = (dim + 3) / 4;
    const bool vis = c < n_vis;
    const __global float *qt = q + q_off + (size_t)t * n_head * dim;
    const __global float *wt = w + w_off + (size_t)t * n_head;

    /* This work-item's row, zero-padded to whole float4s. */
    float4 row[IDX_D4];
    const __global float *rc = rows + rows_off + (size_t)(vis ? c : 0) * dim;
    for (uint i = 0; i < IDX_D4; i++) row[i] = vis && i < n4 ? idx_load4(rc, 4 * i, dim) : (float4)(0.0f);

    /* Head chunks of q through local memory (skipped by groups whose rows
     * are all invisible: the condition is the same for the whole group). */
    const uint n_chunks = c0 < n_vis ? (n_head + IDX_HC - 1) / IDX_HC : 0;
    float s = 0.0f;
    for (uint ch = 0; ch < n_chunks; ch++) {
        const uint h0 = ch * IDX_HC;
        barrier(CLK_LOCAL_MEM_FENCE); /* the previous chunk is consumed */
        for (uint k = lid; k < IDX_HC * n4; k += IDX_WG) {
            uint hh = k / n4, i = k % n4;
            qs[hh * IDX_D4 + i] = h0 + hh < n_head ? idx_load4(qt + (size_t)(h0 + hh) * dim, 4 * i, dim)
                                                   : (float4)(0.0f);
        }
        barrier(CLK_LOCAL_MEM_FENCE);
        if (vis)
            for (uint hh = 0; hh < IDX_HC && h0 + hh < n_head; hh++) {
                float4 acc = (float4)(0.0f);
                for (uint i = 0; i < IDX_D4; i++)
                    if (i < n4) acc = mad(qs[hh * IDX_D4 + i], row[i], acc);
                float dot = (acc.x + acc.y) + (acc.z + acc.w);
                s = mad(wt[h0 + hh], fmax(dot, 0.0f), s);
            }
    }
    if (c < n_rows) scores[s_off + (size_t)t * n_rows + c] = vis ? s : -1e30f;
}

/* Order-preserving key of a float (see above). */
inline uint topk_key(float f) {
    uint u = as_uint(f);
    if ((u << 1) == 0) u = 0;
    return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

/* Keys of scores i..i+3 (those at or past `end` are 0 and must be
 * ignored by the caller). */
inline uint4 topk_keys4(const __global float *s, uint i, uint end) {
    if (i + 4 <= end) {
        float4 v = vload4(0, s + i);
        return (uint4)(topk_key(v.x), topk_key(v.y), topk_key(v.z), topk_key(v.w));
    }
    return (uint4)(topk_key(s[i]), i + 1 < end ? topk_key(s[i + 1]) : 0, i + 2 < end ? topk_key(s[i + 2]) : 0, 0);
}

/* In-place inclusive scan of a[0..TOPK_WG) and b[0..TOPK_WG); called by
 * every work-item of the group. */
inline void topk_scan2(__local uint *a, __local uint *b, uint lid) {
    for (uint off = 1; off < TOPK_WG; off <<= 1) {
        uint va = lid >= off ? a[lid - off] : 0;
        uint vb = lid >= off ? b[lid - off] : 0;
        barrier(CLK_LOCAL_MEM_FENCE);
        a[lid] += va;
        b[lid] += vb;
        barrier(CLK_LOCAL_MEM_FENCE);
    }
}

__kernel __attribute__((reqd_work_group_size(TOPK_WG, 1, 1)))
void topk(const __global float *scores, ulong s_off, uint n_rows, uint k, uint pos0, __global int *sel,
          ulong sel_off) {
    __local uint hist[256];
    __local uint pick[2];
    __local uint cnt_gt[TOPK_WG], cnt_eq[TOPK_WG];
    uint lid = (uint)get_local_id(0), t = (uint)get_group_id(0);
    uint n_vis = min(n_rows, (pos0 + t + 1) / 4);
    const __global float *s = scores + s_off + (size_t)t * n_rows;
    __global int *out = sel + sel_off + (size_t)t * k;

    /* Radix select of the k-th largest key: prefix/mask grow by 8 bits a
     * pass; remaining = how many keys with the prefix are still wanted. */
    uint prefix = 0, mask = 0, remaining = k;
    uint n_pass = n_vis > k ? 4 : 0;
    for (uint pass = 0; pass < n_pass; pass++) {
        uint shift = 24 - 8 * pass;
        for (uint b = lid; b < 256; b += TOPK_WG) hist[b] = 0;
        barrier(CLK_LOCAL_MEM_FENCE);
        uint i = lid;
        for (; i + 3 * TOPK_WG < n_vis; i += 4 * TOPK_WG) {
            uint4 key = (uint4)(topk_key(s[i]), topk_key(s[i + TOPK_WG]), topk_key(s[i + 2 * TOPK_WG]),
                                topk_key(s[i + 3 * TOPK_WG]));
            if ((key.x & mask) == prefix) atomic_inc(&hist[(key.x >> shift) & 255]);
            if ((key.y & mask) == prefix) atomic_inc(&hist[(key.y >> shift) & 255]);
            if ((key.z & mask) == prefix) atomic_inc(&hist[(key.z >> shift) & 255]);
            if ((key.w & mask) == prefix) atomic_inc(&hist[(key.w >> shift) & 255]);
        }
        for (; i < n_vis; i += TOPK_WG) {
            uint key = topk_key(s[i]);
            if ((key & mask) == prefix) atomic_inc(&hist[(key >> shift) & 255]);
        }
        barrier(CLK_LOCAL_MEM_FENCE);
        if (lid == 0) {
            /* The prefix matches at least `remaining` keys, so this stops
             * at the bin holding the wanted one. */
            uint b = 255, above = 0;
            while (b > 0 && above + hist[b] < remaining) above += hist[b--];
            pick[0] = b;
            pick[1] = above;
        }
        barrier(CLK_LOCAL_MEM_FENCE);
        prefix |= pick[0] << shift;
        mask |= 255u << shift;
        remaining -= pick[1];
        barrier(CLK_LOCAL_MEM_FENCE); /* pick and hist are rewritten next pass */
    }
    uint thr = prefix, need = n_pass ? remaining : 0xffffffffu;

    /* Compaction in index order over contiguous slices. */
    uint per = ((n_vis + TOPK_WG - 1) / TOPK_WG + 3) & ~3u;
    uint i0 = min(lid * per, n_vis), i1 = min(i0 + per, n_vis);
    uint gt = 0, eq = 0;
    for (uint i = i0; i < i1; i += 4) {
        uint4 key = topk_keys4(s, i, i1);
        uint n = min(4u, i1 - i);
        gt += (key.x > thr) + (n > 1 && key.y > thr) + (n > 2 && key.z > thr) + (n > 3 && key.w > thr);
        eq += (key.x == thr) + (n > 1 && key.y == thr) + (n > 2 && key.z == thr) + (n > 3 && key.w == thr);
    }
    cnt_gt[lid] = gt;
    cnt_eq[lid] = eq;
    barrier(CLK_LOCAL_MEM_FENCE);
    topk_scan2(cnt_gt, cnt_eq, lid);
    uint gt_before = cnt_gt[lid] - gt, eq_before = cnt_eq[lid] - eq;
    uint n_taken = cnt_gt[TOPK_WG - 1] + min(cnt_eq[TOPK_WG - 1], need);
    for (uint i = i0; i < i1; i += 4) {
        uint4 k4 = topk_keys4(s, i, i1);
        uint kk[4] = {k4.x, k4.y, k4.z, k4.w};
        for (uint j = 0; j < 4 && i + j < i1; j++) {
            if (kk[j] > thr) {
                out[gt_before + min(eq_before, need)] = (int)(i + j);
                gt_before++;
            } else if (kk[j] == thr) {
                if (eq_before < need) out[gt_before + eq_before] = (int)(i + j);
                eq_before++;
            }
        }
    }
    for (uint i = n_taken + lid; i < k; i += TOPK_WG) out[i] = -1;
}
