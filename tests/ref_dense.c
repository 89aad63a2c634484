/* ref_dense.c - host references of the dense ops (see ref_dense.h).
 *
 * Written from ops.h and transformers' formulas, not from the kernels:
 * sums run in plain index order in f32, sigmoid is 1 / (1 + exp(-v)),
 * RMSNorm is x * (1 / sqrt(mean + eps)) then * weight.  Values outside the
 * documented outputs are never written.
 */
#include "ref_dense.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "../src/qsim.h"
#include "../src/quant.h"

int ref_embed(const void *embd, uint32_t type, uint32_t n_embd, const int32_t *tokens, uint32_t T,
              uint32_t n_hc, float *X) {
    uint64_t rb = ds4_row_bytes(type, n_embd);
    for (uint32_t t = 0; t < T; t++) {
        float *dst = X + (uint64_t)t * n_hc * n_embd;
        const uint8_t *row = (const uint8_t *)embd + (uint64_t)tokens[t] * rb;
        if (rb == 0 || ds4_dequantize_row(type, row, dst, n_embd) != 0) return -1;
        for (uint32_t s = 1; s < n_hc; s++) memcpy(dst + (uint64_t)s * n_embd, dst, sizeof(float) * n_embd);
    }
    return 0;
}

void ref_rmsnorm(const float *x, float *y, uint32_t n, uint32_t rows, uint32_t stride, const float *w,
                 float eps) {
    for (uint32_t r = 0; r < rows; r++) {
        const float *xr = x + (uint64_t)r * stride;
        float *yr = y + (uint64_t)r * stride;
        float s = 0.0f;
        for (uint32_t i = 0; i < n; i++) s += xr[i] * xr[i];
        float inv = 1.0f / sqrtf(s / (float)n + eps);
        for (uint32_t i = 0; i < n; i++) {
            float v = xr[i] * inv;
            yr[i] = w ? w[i] * v : v;
        }
    }
}

static float sigmoid(float v) { return 1.0f / (1.0f + expf(-v)); }

/* comb (hc x hc, row-major) <- Sinkhorn of the raw logits in place. */
static void sinkhorn(float *c, uint32_t hc, uint32_t iters, float eps) {
    for (uint32_t i = 0; i < hc; i++) {
        float *row = c + (uint64_t)i * hc, mx = -INFINITY, s = 0.0f;
        for (uint32_t j = 0; j < hc; j++) mx = fmaxf(mx, row[j]);
        for (uint32_t j = 0; j < hc; j++) {
            row[j] = expf(row[j] - mx);
            s += row[j];
        }
        for (uint32_t j = 0; j < hc; j++) row[j] = row[j] / s + eps;
    }
    for (uint32_t it = 0; it < iters; it++) {
        if (it > 0)
            for (uint32_t i = 0; i < hc; i++) {
                float s = 0.0f;
                for (uint32_t j = 0; j < hc; j++) s += c[i * hc + j];
                for (uint32_t j = 0; j < hc; j++) c[i * hc + j] /= s + eps;
            }
        for (uint32_t j = 0; j < hc; j++) {
            float s = 0.0f;
            for (uint32_t i = 0; i < hc; i++) s += c[i * hc + j];
            for (uint32_t i = 0; i < hc; i++) c[i * hc + j] /= s + eps;
        }
    }
}

void ref_hc_pre(const float *X, const float *mix, const float *scale, const float *base, uint32_t n_hc,
                uint32_t n_embd, uint32_t T, uint32_t iters, float hc_eps, float *x, float *post, float *comb) {
    uint32_t hc = n_hc, nmix = (2 + hc) * hc;
    float pre[64];
    for (uint32_t t = 0; t < T; t++) {
        const float *m = mix + (uint64_t)t * nmix;
        for (uint32_t i = 0; i < hc; i++) pre[i] = sigmoid(m[i] * scale[0] + base[i]) + hc_eps;
        for (uint32_t j = 0; j < hc; j++)
            post[(uint64_t)t * hc + j] = 2.0f * sigmoid(m[hc + j] * scale[1] + base[hc + j]);
        float *c = comb + (uint64_t)t * hc * hc;
        for (uint32_t k = 0; k < hc * hc; k++) c[k] = m[2 * hc + k] * scale[2] + base[2 * hc + k];
        sinkhorn(c, hc, iters, hc_eps);
        const float *Xt = X + (uint64_t)t * hc * n_embd;
        for (uint32_t d = 0; d < n_embd; d++) {
            float s = 0.0f;
            for (uint32_t i = 0; i < hc; i++) s += pre[i] * Xt[(uint64_t)i * n_embd + d];
            x[(uint64_t)t * n_embd + d] = s;
        }
    }
}

void ref_hc_post(float *X, const float *y, const float *post, const float *comb, uint32_t n_hc, uint32_t n_embd,
                 uint32_t T) {
    uint32_t hc = n_hc;
    float *old = malloc(sizeof(float) * hc * n_embd);
    if (!old) abort();
    for (uint32_t t = 0; t < T; t++) {
        float *Xt = X + (uint64_t)t * hc * n_embd;
        memcpy(old, Xt, sizeof(float) * hc * n_embd);
        for (uint32_t j = 0; j < hc; j++)
            for (uint32_t d = 0; d < n_embd; d++) {
                float s = 0.0f;
                for (uint32_t i = 0; i < hc; i++) s += comb[(uint64_t)t * hc * hc + i * hc + j] * old[i * n_embd + d];
                Xt[(uint64_t)j * n_embd + d] = post[(uint64_t)t * hc + j] * y[(uint64_t)t * n_embd + d] + s;
            }
    }
    free(old);
}

void ref_hc_head(const float *X, const float *mix, const float *scale, const float *base, uint32_t n_hc,
                 uint32_t n_embd, uint32_t T, float hc_eps, float *h) {
    float a[64];
    for (uint32_t t = 0; t < T; t++) {
        for (uint32_t i = 0; i < n_hc; i++) a[i] = sigmoid(mix[(uint64_t)t * n_hc + i] * scale[0] + base[i]) + hc_eps;
        const float *Xt = X + (uint64_t)t * n_hc * n_embd;
        for (uint32_t d = 0; d < n_embd; d++) {
            float s = 0.0f;
            for (uint32_t i = 0; i < n_hc; i++) s += a[i] * Xt[(uint64_t)i * n_embd + d];
            h[(uint64_t)t * n_embd + d] = s;
        }
    }
}

void ref_rope_tail(float *x, uint32_t T, uint32_t heads, uint32_t head_dim, uint32_t n_rot, uint32_t pos_base,
                   uint32_t pos_step, const float *inv_freq, int inverse) {
    for (uint32_t t = 0; t < T; t++) {
        uint32_t p = pos_base + t * pos_step;
        for (uint32_t h = 0; h < heads; h++) {
            float *v = x + ((uint64_t)t * heads + h) * head_dim + (head_dim - n_rot);
            for (uint32_t i = 0; i < n_rot / 2; i++) {
                float theta = (float)p * inv_freq[i];
                float c = cosf(theta), s = inverse ? -sinf(theta) : sinf(theta);
                float x0 = v[2 * i], x1 = v[2 * i + 1];
                v[2 * i] = x0 * c - x1 * s;
                v[2 * i + 1] = x0 * s + x1 * c;
            }
        }
    }
}

void ref_fp8_sim(float *x, uint32_t rows, uint32_t stride, uint32_t n_sim) {
    for (uint32_t r = 0; r < rows; r++) ds4_fp8_sim(x + (uint64_t)r * stride, n_sim);
}

void ref_hadamard_fp4(float *x, uint32_t rows, uint32_t width) {
    for (uint32_t r = 0; r < rows; r++) {
        ds4_hadamard(x + (uint64_t)r * width, width);
        ds4_fp4_sim(x + (uint64_t)r * width, width);
    }
}

void ref_kv_store(const float *kv, float *ring, uint32_t width, uint32_t cap, uint32_t pos0, uint32_t T,
                  int round_f16) {
    for (uint32_t t = 0; t < T; t++) {
        uint64_t slot = ((uint64_t)pos0 + t) % cap;
        for (uint32_t d = 0; d < width; d++) {
            float v = kv[(uint64_t)t * width + d];
            ring[slot * width + d] = round_f16 ? ds4_f16_to_f32(ds4_f32_to_f16(v)) : v;
        }
    }
}

void ref_router(const float *logits, uint32_t n_expert, uint32_t n_used, uint32_t T, const float *bias,
                const int32_t *tid2eid, const int32_t *tokens, float scale, int32_t *sel, float *w) {
    float *p = malloc(sizeof(float) * n_expert);
    if (!p) abort();
    for (uint32_t t = 0; t < T; t++) {
        for (uint32_t e = 0; e < n_expert; e++) {
            float v = logits[(uint64_t)t * n_expert + e];
            p[e] = sqrtf(v > 20.0f ? v : log1pf(expf(v)));
        }
        int32_t *st = sel + (uint64_t)t * n_used;
        float ps[64];
        for (uint32_t k = 0; k < n_used; k++) {
            if (tid2eid) { /* an id outside the experts: expert 0, weight 0 */
                int32_t id = tid2eid[(uint64_t)tokens[t] * n_used + k];
                int ok = id >= 0 && (uint32_t)id < n_expert;
                st[k] = ok ? id : 0;
                ps[k] = ok ? p[id] : 0.0f;
                continue;
            }
            int32_t best = -1;
            float bs = 0.0f;
            for (uint32_t e = 0; e < n_expert; e++) {
                int taken = 0;
                for (uint32_t j = 0; j < k; j++) taken |= st[j] == (int32_t)e;
                float s = p[e] + (bias ? bias[e] : 0.0f);
                if (!taken && (best < 0 || s > bs)) {
                    best = (int32_t)e;
                    bs = s;
                }
            }
            st[k] = best;
            ps[k] = p[best];
        }
        float sum = 0.0f;
        for (uint32_t k = 0; k < n_used; k++) sum += ps[k];
        float den = fmaxf(sum, 0x1p-14f);
        for (uint32_t k = 0; k < n_used; k++) w[(uint64_t)t * n_used + k] = ps[k] / den * scale;
    }
    free(p);
}

void ref_swiglu(const float *g, const float *u, const float *w, uint32_t n, uint32_t rows, float clamp,
                float *mid) {
    for (uint32_t r = 0; r < rows; r++)
        for (uint32_t i = 0; i < n; i++) {
            uint64_t k = (uint64_t)r * n + i;
            float gv = fminf(g[k], clamp), uv = fminf(fmaxf(u[k], -clamp), clamp);
            float m = gv / (1.0f + expf(-gv)) * uv;
            mid[k] = w ? m * w[r] : m;
        }
}

void ref_moe_sum(const float *y, uint32_t n_used, uint32_t n, uint32_t T, const float *add, float *out) {
    for (uint32_t t = 0; t < T; t++)
        for (uint32_t d = 0; d < n; d++) {
            float s = 0.0f;
            for (uint32_t k = 0; k < n_used; k++) s += y[((uint64_t)t * n_used + k) * n + d];
            out[(uint64_t)t * n + d] = add ? s + add[(uint64_t)t * n + d] : s;
        }
}

void ref_add(const float *a, const float *b, float *out, uint64_t n) {
    for (uint64_t i = 0; i < n; i++) out[i] = a[i] + b[i];
}
