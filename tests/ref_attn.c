/* ref_attn.c - plain C references of the attention-side ops (ref_attn.h).
 *
 * Straight transcriptions of the definitions in src/ops.h: the compressor
 * walks the tokens one by one over the same frontier layout, the indexer
 * and attention sum in double, top-k sorts the visible rows by (score
 * descending, index ascending) and returns the first k in index order, and
 * the MoE product dequantizes each expert row.  Stored scores (score + ape)
 * are f32 sums as on the device, so a frontier can be compared.
 */
#include "ref_attn.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "../src/quant.h"

int ref_comp_update(const float *kv, const float *sc, const void *ape, uint32_t ape_type, float *state_kv,
                    float *state_sc, uint32_t D, uint32_t ratio, uint32_t pos0, uint32_t T, float *out,
                    uint32_t out_first) {
    const int overlap = ratio == 4;
    const uint32_t W = overlap ? 2 * D : D, n_cand = overlap ? 2 * ratio : ratio;
    float *bias = malloc(sizeof(float) * (size_t)ratio * W);
    if (!bias || ds4_dequantize_row(ape_type, ape, bias, (uint64_t)ratio * W) != 0) {
        free(bias);
        return -1;
    }
    for (uint32_t t = 0; t < T; t++) {
        uint32_t pos = pos0 + t, p = pos % ratio, srow = overlap ? ratio + p : p;
        for (uint32_t c = 0; c < W; c++) {
            state_kv[(size_t)srow * W + c] = kv[(size_t)t * W + c];
            state_sc[(size_t)srow * W + c] = sc[(size_t)t * W + c] + bias[(size_t)p * W + c];
        }
        if ((pos + 1) % ratio != 0) continue;
        uint32_t w = (pos + 1) / ratio - 1;
        for (uint32_t d = 0; d < D; d++) {
            double m = -1e30;
            for (uint32_t i = 0; i < n_cand; i++) {
                uint32_t c = overlap && i >= ratio ? D + d : d;
                m = fmax(m, state_sc[(size_t)i * W + c]);
            }
            double num = 0, den = 0;
            for (uint32_t i = 0; i < n_cand; i++) {
                uint32_t c = overlap && i >= ratio ? D + d : d;
                double e = exp(state_sc[(size_t)i * W + c] - m);
                den += e;
                num += e * state_kv[(size_t)i * W + c];
            }
            out[(size_t)(w - out_first) * D + d] = (float)(num / den);
        }
        if (overlap) {
            memcpy(state_kv, state_kv + (size_t)ratio * W, sizeof(float) * (size_t)ratio * W);
            memcpy(state_sc, state_sc + (size_t)ratio * W, sizeof(float) * (size_t)ratio * W);
        }
    }
    free(bias);
    return 0;
}

void ref_indexer_scores(const float *q, const float *w, const float *rows, uint32_t n_head, uint32_t dim,
                        uint32_t n_rows, uint32_t pos0, uint32_t T, float *scores) {
    for (uint32_t t = 0; t < T; t++) {
        uint32_t n_vis = (pos0 + t + 1) / 4;
        for (uint32_t c = 0; c < n_rows; c++) {
            if (c >= n_vis) {
                scores[(size_t)t * n_rows + c] = -1e30f;
                continue;
            }
            double s = 0;
            for (uint32_t h = 0; h < n_head; h++) {
                const float *qh = q + ((size_t)t * n_head + h) * dim;
                double dot = 0;
                for (uint32_t i = 0; i < dim; i++) dot += (double)qh[i] * rows[(size_t)c * dim + i];
                s += (double)w[(size_t)t * n_head + h] * (dot > 0 ? dot : 0);
            }
            scores[(size_t)t * n_rows + c] = (float)s;
        }
    }
}

/* qsort context-free comparators: pairs of (score, index). */
typedef struct {
    float s;
    int32_t i;
} ref_pair;

static int by_score_desc(const void *a, const void *b) {
    const ref_pair *x = a, *y = b;
    if (x->s > y->s) return -1;
    if (x->s < y->s) return 1;
    return (x->i > y->i) - (x->i < y->i);
}

static int by_index(const void *a, const void *b) {
    int32_t x = *(const int32_t *)a, y = *(const int32_t *)b;
    return (x > y) - (x < y);
}

int ref_topk(const float *scores, uint32_t n_rows, uint32_t k, uint32_t pos0, uint32_t T, int32_t *sel) {
    ref_pair *p = malloc(sizeof(ref_pair) * (n_rows ? n_rows : 1));
    if (!p) return -1;
    for (uint32_t t = 0; t < T; t++) {
        uint32_t n_vis = (pos0 + t + 1) / 4;
        if (n_vis > n_rows) n_vis = n_rows;
        for (uint32_t c = 0; c < n_vis; c++) p[c] = (ref_pair){scores[(size_t)t * n_rows + c], (int32_t)c};
        qsort(p, n_vis, sizeof(*p), by_score_desc);
        uint32_t n = n_vis < k ? n_vis : k;
        int32_t *out = sel + (size_t)t * k;
        for (uint32_t i = 0; i < n; i++) out[i] = p[i].i;
        qsort(out, n, sizeof(*out), by_index);
        for (uint32_t i = n; i < k; i++) out[i] = -1;
    }
    free(p);
    return 0;
}

int ref_attention(const float *q, const float *ring, uint32_t cap, uint32_t window, const float *comp,
                  uint32_t ratio, const int32_t *sel, uint32_t n_sel, const float *sinks, uint32_t H, uint32_t D,
                  uint32_t pos0, uint32_t T, float scale, float *out) {
    for (uint32_t t = 0; t < T; t++) {
        uint32_t pos = pos0 + t;
        uint32_t lo = pos + 1 > window ? pos + 1 - window : 0;
        uint32_t n_c = comp ? (pos + 1) / ratio : 0;
        /* The visible rows in order: raw window, then compressed. */
        uint32_t n_max = (pos - lo + 1) + (comp ? (sel ? n_sel : n_c) : 0), n = 0;
        const float **rows = malloc(sizeof(*rows) * n_max);
        double *s = malloc(sizeof(double) * n_max);
        if (!rows || !s) {
            free(rows);
            free(s);
            return -1;
        }
        for (uint32_t p = lo; p <= pos; p++) rows[n++] = ring + (size_t)(p % cap) * D;
        if (comp && !sel)
            for (uint32_t c = 0; c < n_c; c++) rows[n++] = comp + (size_t)c * D;
        if (comp && sel)
            for (uint32_t i = 0; i < n_sel; i++) {
                int32_t c = sel[(size_t)t * n_sel + i];
                if (c >= 0 && (uint32_t)c < n_c) rows[n++] = comp + (size_t)c * D;
            }
        for (uint32_t h = 0; h < H; h++) {
            const float *qh = q + ((size_t)t * H + h) * D;
            double m = sinks[h];
            for (uint32_t j = 0; j < n; j++) {
                double dot = 0;
                for (uint32_t d = 0; d < D; d++) dot += (double)qh[d] * rows[j][d];
                s[j] = dot * scale;
                if (s[j] > m) m = s[j];
            }
            double den = exp(sinks[h] - m);
            for (uint32_t j = 0; j < n; j++) den += exp(s[j] - m);
            for (uint32_t d = 0; d < D; d++) {
                double acc = 0;
                for (uint32_t j = 0; j < n; j++) acc += exp(s[j] - m) * rows[j][d];
                out[((size_t)t * H + h) * D + d] = (float)(acc / den);
            }
        }
        free(rows);
        free(s);
    }
    return 0;
}

int ref_moe_matmul(uint32_t type, const void *W, uint32_t ncols, uint32_t nrows, uint32_t n_expert,
                   const float *x, int x_per_slot, const int32_t *sel, uint32_t n_used, uint32_t T, float *y) {
    uint64_t rb = ds4_row_bytes(type, ncols);
    float *row = malloc(sizeof(float) * ncols);
    if (!row || rb == 0) {
        free(row);
        return -1;
    }
    for (uint32_t s = 0; s < T * n_used; s++) {
        int32_t e = sel[s];
        if (e < 0 || (uint32_t)e >= n_expert) {
            free(row);
            return -1;
        }
        const float *xr = x + (size_t)(x_per_slot ? s : s / n_used) * ncols;
        for (uint32_t r = 0; r < nrows; r++) {
            const uint8_t *wr = (const uint8_t *)W + ((uint64_t)e * nrows + r) * rb;
            if (ds4_dequantize_row(type, wr, row, ncols) != 0) {
                free(row);
                return -1;
            }
            double acc = 0;
            for (uint32_t c = 0; c < ncols; c++) acc += (double)row[c] * xr[c];
            y[(size_t)s * nrows + r] = (float)acc;
        }
    }
    free(row);
    return 0;
}
