/* quant.c - type traits, f16/bf16 conversion, reference dequantizers and the
 * quantizers for the block formats ds4cl computes with (see quant.h).
 *
 * Dequantizers are the ground truth the kernels are tested against, so they
 * follow GGML's arithmetic literally: every product is computed in f32 in the
 * same order as GGML (and the gguf Python package) do, one operation per
 * statement so no compiler contracts a multiply-add into an FMA.  Blocks are
 * read with memcpy, so source rows need no alignment.  The host is assumed to
 * be little-endian, like the GGUF files.
 *
 * Quantizers (own algorithms, all deterministic, no global state):
 *   - Q8_0: without importance, GGML's reference rule (d = amax/127, codes
 *     rounded half away from zero), byte for byte; with importance, a few
 *     candidate scales refitted by weighted least squares, judged with the
 *     f16-rounded scale.
 *   - Q2_K / Q4_K: per sub-block a continuous fit x ~ a*q - b (a, b >= 0)
 *     by alternating rounding and weighted least squares from several
 *     starting ranges; then the super-block d/dmin are chosen, every
 *     sub-block picks the best integer (scale, min) among the neighbours of
 *     its ideal, and d/dmin are refitted by least squares over the whole
 *     super-block (kept only when the error drops).
 *   - IQ2_XXS: per 8-value chunk and grid entry the weighted sums that make
 *     the error a quadratic in the group scale are tabulated once; the group
 *     scale t is then searched (with a least-squares refit), the super-block
 *     d is chosen among a few candidates around 4*max(t)/15.5 plus a refit,
 *     and each group takes the best of the 4-bit scales next to its ideal.
 *     Signs come from the values; when a chunk has an odd number of negative
 *     values the element whose flip costs least is flipped (the format only
 *     stores sign patterns of even parity).
 * Weights: importance[i] (negative or NaN treated as 0) plus a tiny floor so
 * an all-zero region stays well posed; without importance all weights are 1.
 * Errors are judged with the scales as stored (rounded to f16).  Blocks are
 * independent: a row quantized in pieces gives the same bytes.  Cost on one
 * core: ~1 us per value for the K-quants, ~3-4 us for IQ2_XXS, whose call
 * allocates one ~76 KB scratch (the only way ds4_quantize_row can fail on
 * valid arguments).  Non-finite inputs give defined but meaningless codes.
 */
#include "quant.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "iq2xxs_tables.h"

/* ---------------------------------------------------------------- traits */

static const ds4_type_traits g_traits[DS4_TYPE_COUNT] = {
    [DS4_TYPE_F32] = {"F32", 1, 4, true, true},
    [DS4_TYPE_F16] = {"F16", 1, 2, true, true},
    [DS4_TYPE_Q4_0] = {"Q4_0", 32, 18, false, false},
    [DS4_TYPE_Q4_1] = {"Q4_1", 32, 20, false, false},
    [DS4_TYPE_Q5_0] = {"Q5_0", 32, 22, false, false},
    [DS4_TYPE_Q5_1] = {"Q5_1", 32, 24, false, false},
    [DS4_TYPE_Q8_0] = {"Q8_0", 32, 34, true, true},
    [DS4_TYPE_Q8_1] = {"Q8_1", 32, 40, false, false},
    [DS4_TYPE_Q2_K] = {"Q2_K", 256, 84, true, true},
    [DS4_TYPE_Q3_K] = {"Q3_K", 256, 110, false, false},
    [DS4_TYPE_Q4_K] = {"Q4_K", 256, 144, true, true},
    [DS4_TYPE_Q5_K] = {"Q5_K", 256, 176, false, false},
    [DS4_TYPE_Q6_K] = {"Q6_K", 256, 210, false, false},
    [DS4_TYPE_Q8_K] = {"Q8_K", 256, 292, false, false},
    [DS4_TYPE_IQ2_XXS] = {"IQ2_XXS", 256, 66, true, true},
    [DS4_TYPE_IQ2_XS] = {"IQ2_XS", 256, 74, false, false},
    [DS4_TYPE_IQ3_XXS] = {"IQ3_XXS", 256, 98, false, false},
    [DS4_TYPE_IQ1_S] = {"IQ1_S", 256, 50, false, false},
    [DS4_TYPE_IQ4_NL] = {"IQ4_NL", 32, 18, false, false},
    [DS4_TYPE_IQ3_S] = {"IQ3_S", 256, 110, false, false},
    [DS4_TYPE_IQ2_S] = {"IQ2_S", 256, 82, false, false},
    [DS4_TYPE_IQ4_XS] = {"IQ4_XS", 256, 136, false, false},
    [DS4_TYPE_I8] = {"I8", 1, 1, false, false},
    [DS4_TYPE_I16] = {"I16", 1, 2, false, false},
    [DS4_TYPE_I32] = {"I32", 1, 4, true, false},
    [DS4_TYPE_I64] = {"I64", 1, 8, false, false},
    [DS4_TYPE_F64] = {"F64", 1, 8, false, false},
    [DS4_TYPE_IQ1_M] = {"IQ1_M", 256, 56, false, false},
    [DS4_TYPE_BF16] = {"BF16", 1, 2, true, true},
    [DS4_TYPE_TQ1_0] = {"TQ1_0", 256, 54, false, false},
    [DS4_TYPE_TQ2_0] = {"TQ2_0", 256, 66, false, false},
    [DS4_TYPE_MXFP4] = {"MXFP4", 32, 17, false, false},
};

const ds4_type_traits *ds4_type_get(uint32_t type) {
    if (type >= DS4_TYPE_COUNT || g_traits[type].name == NULL) return NULL;
    return &g_traits[type];
}

const char *ds4_type_name(uint32_t type) {
    const ds4_type_traits *t = ds4_type_get(type);
    return t ? t->name : "?";
}

static int ascii_lower(int c) { return (c >= 'A' && c <= 'Z') ? c - 'A' + 'a' : c; }

static bool name_equal_nocase(const char *a, const char *b) {
    for (; *a && *b; a++, b++)
        if (ascii_lower((unsigned char)*a) != ascii_lower((unsigned char)*b)) return false;
    return *a == '\0' && *b == '\0';
}

int ds4_type_from_name(const char *name) {
    if (!name) return -1;
    for (uint32_t t = 0; t < DS4_TYPE_COUNT; t++)
        if (g_traits[t].name && name_equal_nocase(name, g_traits[t].name)) return (int)t;
    return -1;
}

uint64_t ds4_row_bytes(uint32_t type, uint64_t n) {
    const ds4_type_traits *t = ds4_type_get(type);
    if (!t || n % t->block_size != 0) return 0;
    uint64_t blocks = n / t->block_size;
    if (blocks > UINT64_MAX / t->type_size) return 0;
    return blocks * t->type_size;
}

/* ------------------------------------------------------ f16 / bf16 */

static uint32_t f32_bits(float f) {
    uint32_t u;
    memcpy(&u, &f, sizeof(u));
    return u;
}

static float bits_f32(uint32_t u) {
    float f;
    memcpy(&f, &u, sizeof(f));
    return f;
}

float ds4_f16_to_f32(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    uint32_t exp = (h >> 10) & 0x1fu;
    uint32_t man = h & 0x3ffu;
    if (exp == 0x1f) return bits_f32(sign | 0x7f800000u | (man << 13)); /* inf, nan */
    if (exp != 0) return bits_f32(sign | ((exp + 112u) << 23) | (man << 13));
    if (man == 0) return bits_f32(sign);
    /* Subnormal: man * 2^-24; normalise so bit 10 is the implicit one. */
    uint32_t e = 113;
    while (!(man & 0x400u)) {
        man <<= 1;
        e--;
    }
    return bits_f32(sign | (e << 23) | ((man & 0x3ffu) << 13));
}

uint16_t ds4_f32_to_f16(float f) {
    uint32_t x = f32_bits(f);
    uint16_t sign = (uint16_t)((x >> 16) & 0x8000u);
    uint32_t ax = x & 0x7fffffffu;
    if (ax > 0x7f800000u) /* NaN: keep the top payload bits, make it quiet */
        return (uint16_t)(sign | 0x7e00u | ((ax >> 13) & 0x3ffu));
    if (ax >= 0x477ff000u) return (uint16_t)(sign | 0x7c00u); /* >= 65520: inf */
    if (ax >= 0x38800000u) {                                   /* normal half */
        uint32_t h = (ax - 0x38000000u) >> 13;
        uint32_t rem = ax & 0x1fffu;
        if (rem > 0x1000u || (rem == 0x1000u && (h & 1u))) h++;
        return (uint16_t)(sign | h);
    }
    /* Subnormal half (or zero): units of 2^-24. */
    uint32_t e = ax >> 23;
    if (e < 102) return sign; /* below 2^-25: rounds to zero */
    uint32_t m = (ax & 0x7fffffu) | 0x800000u;
    uint32_t shift = 126 - e; /* 14..24 */
    uint32_t h = m >> shift;
    uint32_t rem = m & ((1u << shift) - 1u);
    uint32_t half = 1u << (shift - 1);
    if (rem > half || (rem == half && (h & 1u))) h++;
    return (uint16_t)(sign | h);
}

float ds4_bf16_to_f32(uint16_t h) { return bits_f32((uint32_t)h << 16); }

uint16_t ds4_f32_to_bf16(float f) {
    uint32_t x = f32_bits(f);
    if ((x & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((x >> 16) | 0x40u); /* quiet NaN */
    return (uint16_t)((x + 0x7fffu + ((x >> 16) & 1u)) >> 16);
}

/* The f32 value a positive scale will have once stored as f16 (finite). */
static float f16_round(float v) {
    if (!(v < 65504.0f)) v = 65504.0f;
    return ds4_f16_to_f32(ds4_f32_to_f16(v));
}

/* ------------------------------------------------------ dequantizers */

static void dequant_q8_0(const uint8_t *src, float *dst, uint64_t nb) {
    for (uint64_t i = 0; i < nb; i++) {
        ds4_block_q8_0 b;
        memcpy(&b, src + i * sizeof(b), sizeof(b));
        float d = ds4_f16_to_f32(b.d);
        for (int j = 0; j < DS4_QK8_0; j++) dst[i * DS4_QK8_0 + (uint64_t)j] = (float)b.qs[j] * d;
    }
}

static void dequant_q2_K(const uint8_t *src, float *dst, uint64_t nb) {
    for (uint64_t i = 0; i < nb; i++) {
        ds4_block_q2_K b;
        memcpy(&b, src + i * sizeof(b), sizeof(b));
        float d = ds4_f16_to_f32(b.d);
        float dmin = ds4_f16_to_f32(b.dmin);
        float *y = dst + i * DS4_QK_K;
        /* Two halves of 128 values; byte l of a half holds values l, l+32,
         * l+64, l+96 of that half in bit pairs 0-1, 2-3, 4-5, 6-7. */
        for (int half = 0; half < 2; half++) {
            for (int s = 0; s < 4; s++) {
                for (int l = 0; l < 32; l++) {
                    int k = half * 128 + s * 32 + l;
                    uint8_t sc = b.scales[k / 16];
                    float dl = d * (float)(sc & 0xf);
                    float ml = dmin * (float)(sc >> 4);
                    float q = (float)((b.qs[half * 32 + l] >> (2 * s)) & 3);
                    float v = dl * q;
                    y[k] = v - ml;
                }
            }
        }
    }
}

/* Q4_K scale/min j (0..7) from the 12 packed bytes: j < 4 in the low 6 bits
 * of bytes j and j+4; j >= 4 in the nibbles of byte j+4 plus the top two
 * bits of bytes j-4 (scale) and j (min). */
static void q4_K_scale_min(const uint8_t *s, int j, uint8_t *sc, uint8_t *mn) {
    if (j < 4) {
        *sc = s[j] & 63;
        *mn = s[j + 4] & 63;
    } else {
        *sc = (uint8_t)((s[j + 4] & 0xf) | ((s[j - 4] >> 6) << 4));
        *mn = (uint8_t)((s[j + 4] >> 4) | ((s[j] >> 6) << 4));
    }
}

static void dequant_q4_K(const uint8_t *src, float *dst, uint64_t nb) {
    for (uint64_t i = 0; i < nb; i++) {
        ds4_block_q4_K b;
        memcpy(&b, src + i * sizeof(b), sizeof(b));
        float d = ds4_f16_to_f32(b.d);
        float dmin = ds4_f16_to_f32(b.dmin);
        float *y = dst + i * DS4_QK_K;
        /* Four chunks of 64 values over 32 bytes each: low nibbles are the
         * first 32 values (sub-block 2c), high nibbles the next 32 (2c+1). */
        for (int c = 0; c < 4; c++) {
            for (int hi = 0; hi < 2; hi++) {
                uint8_t sc, mn;
                q4_K_scale_min(b.scales, 2 * c + hi, &sc, &mn);
                float dl = d * (float)sc;
                float ml = dmin * (float)mn;
                for (int l = 0; l < 32; l++) {
                    float q = (float)((b.qs[c * 32 + l] >> (4 * hi)) & 0xf);
                    float v = dl * q;
                    y[c * 64 + hi * 32 + l] = v - ml;
                }
            }
        }
    }
}

/* The two little-endian words of IQ2_XXS group ib (0..7) of a block. */
static void iq2xxs_group_words(const ds4_block_iq2_xxs *b, int ib, uint32_t *w0, uint32_t *w1) {
    uint8_t raw[8];
    memcpy(raw, &b->qs[4 * ib], sizeof(raw));
    *w0 = (uint32_t)raw[0] | ((uint32_t)raw[1] << 8) | ((uint32_t)raw[2] << 16) | ((uint32_t)raw[3] << 24);
    *w1 = (uint32_t)raw[4] | ((uint32_t)raw[5] << 8) | ((uint32_t)raw[6] << 16) | ((uint32_t)raw[7] << 24);
}

static void dequant_iq2_xxs(const uint8_t *src, float *dst, uint64_t nb) {
    for (uint64_t i = 0; i < nb; i++) {
        ds4_block_iq2_xxs b;
        memcpy(&b, src + i * sizeof(b), sizeof(b));
        float d = ds4_f16_to_f32(b.d);
        float *y = dst + i * DS4_QK_K;
        for (int ib = 0; ib < 8; ib++) {
            uint32_t w0, w1;
            iq2xxs_group_words(&b, ib, &w0, &w1);
            float db = d * (0.5f + (float)(w1 >> 28));
            db = db * 0.25f;
            for (int l = 0; l < 4; l++) {
                uint64_t grid = ds4_iq2xxs_grid[(w0 >> (8 * l)) & 0xff];
                uint8_t signs = ds4_ksigns_iq2xs[(w1 >> (7 * l)) & 127];
                for (int j = 0; j < 8; j++) {
                    float v = db * (float)((grid >> (8 * j)) & 0xff);
                    y[ib * 32 + l * 8 + j] = (signs >> j) & 1 ? -v : v;
                }
            }
        }
    }
}

int ds4_dequantize_row(uint32_t type, const void *src, float *dst, uint64_t n) {
    const ds4_type_traits *t = ds4_type_get(type);
    if (!t || !t->supported || n % t->block_size != 0) return -1;
    const uint8_t *s = src;
    uint64_t nb = n / t->block_size;
    switch (type) {
    case DS4_TYPE_F32:
        memcpy(dst, s, n * sizeof(float));
        return 0;
    case DS4_TYPE_F16:
    case DS4_TYPE_BF16:
        for (uint64_t i = 0; i < n; i++) {
            uint16_t h;
            memcpy(&h, s + 2 * i, 2);
            dst[i] = type == DS4_TYPE_F16 ? ds4_f16_to_f32(h) : ds4_bf16_to_f32(h);
        }
        return 0;
    case DS4_TYPE_I32:
        for (uint64_t i = 0; i < n; i++) {
            int32_t v;
            memcpy(&v, s + 4 * i, 4);
            dst[i] = (float)v;
        }
        return 0;
    case DS4_TYPE_Q8_0: dequant_q8_0(s, dst, nb); return 0;
    case DS4_TYPE_Q2_K: dequant_q2_K(s, dst, nb); return 0;
    case DS4_TYPE_Q4_K: dequant_q4_K(s, dst, nb); return 0;
    case DS4_TYPE_IQ2_XXS: dequant_iq2_xxs(s, dst, nb); return 0;
    default: return -1;
    }
}

/* ------------------------------------------------------ quantizer helpers */

/* Round to nearest (half away from zero) and clamp to [lo, hi]; NaN -> 0
 * clamped.  Never converts an out-of-range float to int. */
static int round_clamp(float v, int lo, int hi) {
    if (!(v == v)) v = 0.0f;
    if (v <= (float)lo) return lo;
    if (v >= (float)hi) return hi;
    return (int)roundf(v);
}

/* Fill w[0..n) with the weights of one block: importance (bad entries as
 * 0) plus a floor of 1e-6 of their mean, or all ones without importance. */
static void block_weights(const float *importance, float *w, int n) {
    if (!importance) {
        for (int i = 0; i < n; i++) w[i] = 1.0f;
        return;
    }
    double sum = 0;
    for (int i = 0; i < n; i++) {
        float v = importance[i];
        w[i] = (v > 0.0f && v < INFINITY) ? v : 0.0f;
        sum += w[i];
    }
    float floor_w = sum > 0 ? (float)(sum / n * 1e-6) : 1.0f;
    if (!(floor_w > 0.0f)) floor_w = 1e-30f; /* mean underflowed */
    for (int i = 0; i < n; i++) w[i] += floor_w;
}

/* ------------------------------------------------------ Q8_0 */

static double q8_0_error(const float *x, const float *w, const int8_t *q, float d) {
    double e = 0;
    for (int j = 0; j < DS4_QK8_0; j++) {
        double r = (double)((float)q[j] * d) - x[j];
        e += w[j] * r * r;
    }
    return e;
}

static void q8_0_codes(const float *x, float inv, int8_t *q) {
    for (int j = 0; j < DS4_QK8_0; j++) q[j] = (int8_t)round_clamp(x[j] * inv, -127, 127);
}

/* GGML's reference rule: d = amax/127, codes rounded half away from zero
 * against the f32 d (not its f16 rounding). */
static void q8_0_plain(const float *x, ds4_block_q8_0 *b, float *d_out) {
    float amax = 0.0f;
    for (int j = 0; j < DS4_QK8_0; j++) amax = fmaxf(amax, fabsf(x[j]));
    float d = amax / 127.0f;
    float id = d != 0.0f ? 1.0f / d : 0.0f;
    q8_0_codes(x, id, b->qs);
    b->d = ds4_f32_to_f16(d);
    *d_out = ds4_f16_to_f32(b->d);
}

/* With weights: start from the plain rule, try slightly smaller scales
 * (clipping the largest values), refit each by weighted least squares, and
 * keep the lowest weighted error under the stored f16 scale. */
static void q8_0_weighted(const float *x, const float *w, ds4_block_q8_0 *b) {
    float d_plain;
    q8_0_plain(x, b, &d_plain);
    double best = q8_0_error(x, w, b->qs, d_plain);
    float amax = 0.0f;
    for (int j = 0; j < DS4_QK8_0; j++) amax = fmaxf(amax, fabsf(x[j]));
    if (amax == 0.0f) return;
    for (int k = -4; k <= 8; k++) {
        float d = f16_round(amax / (127.0f + 0.25f * (float)k));
        if (d == 0.0f) continue;
        int8_t q[DS4_QK8_0];
        for (int it = 0; it < 2; it++) {
            q8_0_codes(x, 1.0f / d, q);
            double e = q8_0_error(x, w, q, d);
            if (e < best) {
                best = e;
                memcpy(b->qs, q, sizeof(q));
                b->d = ds4_f32_to_f16(d);
            }
            double sxq = 0, sqq = 0;
            for (int j = 0; j < DS4_QK8_0; j++) {
                sxq += (double)w[j] * x[j] * q[j];
                sqq += (double)w[j] * q[j] * q[j];
            }
            if (!(sqq > 0) || !(sxq > 0)) break;
            d = f16_round((float)(sxq / sqq));
            if (d == 0.0f) break;
        }
    }
}

static void quant_q8_0(const float *x, uint8_t *dst, uint64_t nb, const float *imp) {
    for (uint64_t i = 0; i < nb; i++) {
        const float *xb = x + i * DS4_QK8_0;
        ds4_block_q8_0 b;
        if (imp) {
            float w[DS4_QK8_0];
            block_weights(imp + i * DS4_QK8_0, w, DS4_QK8_0);
            q8_0_weighted(xb, w, &b);
        } else {
            float d;
            q8_0_plain(xb, &b, &d);
        }
        memcpy(dst + i * sizeof(b), &b, sizeof(b));
    }
}

/* ------------------------------------------------------ K-quants */

/* Geometry shared by Q2_K and Q4_K: value = (d*sc)*q - (dmin*m). */
typedef struct {
    int sub_len; /* values per sub-block */
    int n_sub;   /* sub-blocks per super-block */
    int qmax;    /* largest code */
    int smax;    /* largest scale / min code */
} kq_geom;

static const kq_geom KQ_Q2 = {16, 16, 3, 15};
static const kq_geom KQ_Q4 = {32, 8, 15, 63};

typedef struct {
    float d, dmin;         /* f16-representable */
    uint8_t sc[16], mn[16];
    uint8_t q[DS4_QK_K];
} kq_enc;

/* Codes for x ~ a*q - b (a as the dequantizer computes it). */
static int kq_code(float x, float a, float b, int qmax) {
    if (!(a > 0.0f)) return 0;
    return round_clamp((x + b) / a, 0, qmax);
}

static double kq_sub_error(const float *x, const float *w, int n, float a, float b, int qmax,
                           uint8_t *q_out) {
    double e = 0;
    for (int i = 0; i < n; i++) {
        int q = kq_code(x[i], a, b, qmax);
        float v = a * (float)q;
        double r = (double)(v - b) - x[i];
        e += w[i] * r * r;
        if (q_out) q_out[i] = (uint8_t)q;
    }
    return e;
}

/* Weighted least-squares (a, b) for fixed codes, with a, b >= 0.  Returns
 * false (a, b untouched) when the codes do not determine them. */
static bool kq_lsq(const float *x, const float *w, const uint8_t *q, int n, float *a, float *b) {
    double sw = 0, sq = 0, sqq = 0, sx = 0, sqx = 0;
    for (int i = 0; i < n; i++) {
        double wi = w[i], qi = q[i];
        sw += wi;
        sq += wi * qi;
        sqq += wi * qi * qi;
        sx += wi * x[i];
        sqx += wi * qi * x[i];
    }
    double det = sqq * sw - sq * sq;
    if (!(det > 1e-12 * sqq * sw)) return false;
    double na = (sqx * sw - sq * sx) / det;
    double nb = (sq * sqx - sqq * sx) / det;
    if (nb < 0) {
        nb = 0;
        na = sqx / sqq;
    }
    if (!(na > 0)) return false;
    *a = (float)na;
    *b = (float)nb;
    return true;
}

/* Continuous fit of one sub-block: best (a, b) over a few starting ranges,
 * each improved by alternating code assignment and least squares. */
static void kq_fit_sub(const float *x, const float *w, int n, int qmax, float *a_out, float *b_out) {
    float lo = 0.0f, hi = -INFINITY;
    for (int i = 0; i < n; i++) {
        lo = fminf(lo, x[i]);
        hi = fmaxf(hi, x[i]);
    }
    *a_out = 0.0f;
    *b_out = -lo;
    if (!(hi > lo)) return; /* constant non-positive block: b alone */
    double best = kq_sub_error(x, w, n, 0.0f, -lo, qmax, NULL);
    uint8_t q[32], prev[32];
    for (int k = 0; k <= 10; k++) { /* ranges from 0.6 to 1.1 times the span */
        float a = (hi - lo) / (float)qmax * (0.6f + 0.05f * (float)k);
        float b = -lo;
        for (int it = 0; it < 6; it++) {
            double e = kq_sub_error(x, w, n, a, b, qmax, q);
            if (e < best) {
                best = e;
                *a_out = a;
                *b_out = b;
            }
            if (it > 0 && memcmp(q, prev, (size_t)n) == 0) break; /* converged */
            memcpy(prev, q, (size_t)n);
            if (!kq_lsq(x, w, q, n, &a, &b)) break;
        }
    }
}

/* With d and dmin fixed, every sub-block picks its (scale, min) among the
 * neighbours of its ideal (a/d, b/dmin) and the codes that go with them.
 * Returns the weighted squared error of the whole super-block. */
static double kq_encode_fixed(const kq_geom *g, const float *x, const float *w, const float *a,
                              const float *b, float d, float dmin, kq_enc *r) {
    double total = 0;
    r->d = d;
    r->dmin = dmin;
    for (int s = 0; s < g->n_sub; s++) {
        const float *xs = x + s * g->sub_len;
        const float *ws = w + s * g->sub_len;
        int sc0 = d > 0.0f ? round_clamp(floorf(a[s] / d), 0, g->smax) : 0;
        int m0 = dmin > 0.0f ? round_clamp(floorf(b[s] / dmin), 0, g->smax) : 0;
        double best = INFINITY;
        for (int sc = sc0; sc <= sc0 + 1 && sc <= g->smax; sc++) {
            for (int m = m0; m <= m0 + 1 && m <= g->smax; m++) {
                float av = d * (float)sc;
                float bv = dmin * (float)m;
                double e = kq_sub_error(xs, ws, g->sub_len, av, bv, g->qmax, NULL);
                if (e < best) {
                    best = e;
                    r->sc[s] = (uint8_t)sc;
                    r->mn[s] = (uint8_t)m;
                }
            }
        }
        float av = d * (float)r->sc[s];
        float bv = dmin * (float)r->mn[s];
        total += kq_sub_error(xs, ws, g->sub_len, av, bv, g->qmax, r->q + s * g->sub_len);
    }
    return total;
}

/* Least-squares d, dmin over the super-block for the integer scales, mins
 * and codes in r: x ~ d*(sc*q) - dmin*m.  False when undetermined. */
static bool kq_refit(const kq_geom *g, const float *x, const float *w, const kq_enc *r, float *d,
                     float *dmin) {
    double suu = 0, suv = 0, svv = 0, sux = 0, svx = 0;
    for (int s = 0; s < g->n_sub; s++) {
        for (int i = 0; i < g->sub_len; i++) {
            int k = s * g->sub_len + i;
            double u = (double)r->sc[s] * r->q[k], v = r->mn[s], wi = w[k];
            suu += wi * u * u;
            suv += wi * u * v;
            svv += wi * v * v;
            sux += wi * u * x[k];
            svx += wi * v * x[k];
        }
    }
    /* minimise sum w (D u - M v - x)^2 over D, M */
    double det = suu * svv - suv * suv;
    double nd, nm;
    if (det > 1e-12 * suu * svv) {
        nd = (sux * svv - svx * suv) / det;
        nm = (sux * suv - svx * suu) / det;
    } else if (suu > 0) {
        nd = sux / suu;
        nm = 0;
    } else {
        return false;
    }
    if (nm < 0) {
        nm = 0;
        if (!(suu > 0)) return false;
        nd = sux / suu;
    }
    if (nd < 0) nd = 0;
    *d = f16_round((float)nd);
    *dmin = f16_round((float)nm);
    return true;
}

/* Quantize one super-block into r (the best encoding found). */
static void kq_quantize_block(const kq_geom *g, const float *x, const float *w, kq_enc *r) {
    float a[16], b[16];
    float amax = 0.0f, bmax = 0.0f;
    for (int s = 0; s < g->n_sub; s++) {
        kq_fit_sub(x + s * g->sub_len, w + s * g->sub_len, g->sub_len, g->qmax, &a[s], &b[s]);
        amax = fmaxf(amax, a[s]);
        bmax = fmaxf(bmax, b[s]);
    }
    static const float dscale[] = {1.0f, 0.94f, 0.88f};
    double best = INFINITY;
    kq_enc cur;
    for (size_t k = 0; k < sizeof(dscale) / sizeof(dscale[0]); k++) {
        float d = f16_round(amax / (float)g->smax * dscale[k]);
        float dmin = f16_round(bmax / (float)g->smax * dscale[k]);
        double e = kq_encode_fixed(g, x, w, a, b, d, dmin, &cur);
        for (int it = 0; it < 3; it++) {
            if (e < best) {
                best = e;
                *r = cur;
            }
            if (!kq_refit(g, x, w, &cur, &d, &dmin)) break;
            e = kq_encode_fixed(g, x, w, a, b, d, dmin, &cur);
        }
        if (e < best) {
            best = e;
            *r = cur;
        }
    }
}

static void quant_q2_K(const float *x, uint8_t *dst, uint64_t nb, const float *imp) {
    for (uint64_t i = 0; i < nb; i++) {
        float w[DS4_QK_K];
        block_weights(imp ? imp + i * DS4_QK_K : NULL, w, DS4_QK_K);
        kq_enc r;
        kq_quantize_block(&KQ_Q2, x + i * DS4_QK_K, w, &r);
        ds4_block_q2_K b;
        memset(&b, 0, sizeof(b));
        for (int s = 0; s < 16; s++) b.scales[s] = (uint8_t)(r.sc[s] | (r.mn[s] << 4));
        for (int k = 0; k < DS4_QK_K; k++) {
            int half = k / 128, sh = (k % 128) / 32, l = k % 32;
            b.qs[half * 32 + l] |= (uint8_t)(r.q[k] << (2 * sh));
        }
        b.d = ds4_f32_to_f16(r.d);
        b.dmin = ds4_f32_to_f16(r.dmin);
        memcpy(dst + i * sizeof(b), &b, sizeof(b));
    }
}

static void quant_q4_K(const float *x, uint8_t *dst, uint64_t nb, const float *imp) {
    for (uint64_t i = 0; i < nb; i++) {
        float w[DS4_QK_K];
        block_weights(imp ? imp + i * DS4_QK_K : NULL, w, DS4_QK_K);
        kq_enc r;
        kq_quantize_block(&KQ_Q4, x + i * DS4_QK_K, w, &r);
        ds4_block_q4_K b;
        memset(&b, 0, sizeof(b));
        for (int j = 0; j < 4; j++) {
            b.scales[j] = (uint8_t)(r.sc[j] | ((r.sc[j + 4] >> 4) << 6));
            b.scales[j + 4] = (uint8_t)(r.mn[j] | ((r.mn[j + 4] >> 4) << 6));
            b.scales[j + 8] = (uint8_t)((r.sc[j + 4] & 0xf) | ((r.mn[j + 4] & 0xf) << 4));
        }
        for (int c = 0; c < 4; c++)
            for (int l = 0; l < 32; l++)
                b.qs[c * 32 + l] = (uint8_t)(r.q[c * 64 + l] | (r.q[c * 64 + 32 + l] << 4));
        b.d = ds4_f32_to_f16(r.d);
        b.dmin = ds4_f32_to_f16(r.dmin);
        memcpy(dst + i * sizeof(b), &b, sizeof(b));
    }
}

/* ------------------------------------------------------ IQ2_XXS */

/* Per chunk of 8 values and grid entry g, with ax = |x| and magnitudes m:
 *   B[g] = sum w*m^2,  S[g] = sum w*ax*m  less 2*min_j w*ax*m when the chunk
 * has an odd number of negatives (the cheapest flip), so the error at group
 * scale t, less the constant sum w*ax^2, is t^2*B - 2t*S. */
typedef struct {
    float S[256], B[256];
    float ax[8], w[8];
    uint8_t neg; /* bit j: x[j] < 0 */
    bool odd;
} iq_chunk;

typedef struct {
    float mag[256][8]; /* grid magnitudes as floats */
    iq_chunk ch[32];   /* the 32 chunks of the super-block */
} iq_ctx;

static void iq_ctx_init_grid(iq_ctx *c) {
    for (int g = 0; g < 256; g++)
        for (int j = 0; j < 8; j++) c->mag[g][j] = (float)((ds4_iq2xxs_grid[g] >> (8 * j)) & 0xff);
}

static void iq_chunk_prepare(const iq_ctx *c, iq_chunk *ch, const float *x, const float *w) {
    ch->neg = 0;
    for (int j = 0; j < 8; j++) {
        ch->ax[j] = fabsf(x[j]);
        ch->w[j] = w[j];
        if (x[j] < 0.0f) ch->neg |= (uint8_t)(1u << j);
    }
    ch->odd = __builtin_popcount(ch->neg) & 1;
    for (int g = 0; g < 256; g++) {
        float A = 0, B = 0, F = INFINITY;
        for (int j = 0; j < 8; j++) {
            float m = c->mag[g][j];
            float wam = ch->w[j] * ch->ax[j] * m;
            A += wam;
            B += ch->w[j] * m * m;
            F = fminf(F, wam);
        }
        ch->S[g] = ch->odd ? A - 2.0f * F : A;
        ch->B[g] = B;
    }
}

/* Best grid entry of a chunk at scale t > 0 (entry 0 at t = 0); *err gets
 * its error less the constant. */
static int iq_chunk_best(const iq_chunk *ch, float t, float *err) {
    int best = 0;
    float be = INFINITY;
    for (int g = 0; g < 256; g++) {
        float e = t * ch->B[g] - 2.0f * ch->S[g]; /* error / t */
        if (e < be) {
            be = e;
            best = g;
        }
    }
    *err = t > 0.0f ? t * be : 0.0f;
    return best;
}

/* Error of group ib at scale t (sum of its 4 chunks); fills the chosen
 * entries and the least-squares sums for a refit when asked. */
static double iq_group_error(const iq_ctx *c, int ib, float t, uint8_t *idx, double *sa, double *sb) {
    double e = 0, a = 0, b = 0;
    for (int l = 0; l < 4; l++) {
        const iq_chunk *ch = &c->ch[ib * 4 + l];
        float ce;
        int g = iq_chunk_best(ch, t, &ce);
        e += ce;
        a += ch->S[g];
        b += ch->B[g];
        if (idx) idx[l] = (uint8_t)g;
    }
    if (sa) *sa = a;
    if (sb) *sb = b;
    return e;
}

/* The continuous scale that suits group ib best. */
static float iq_group_scale(const iq_ctx *c, int ib) {
    float amax = 0.0f;
    for (int l = 0; l < 4; l++)
        for (int j = 0; j < 8; j++) amax = fmaxf(amax, c->ch[ib * 4 + l].ax[j]);
    if (amax == 0.0f) return 0.0f;
    double best = INFINITY;
    float best_t = amax / 43.0f;
    /* Mostly the largest value sits near a 43 of the grid; flat groups
     * want it on a 25 or an 8. */
    static const float div[] = {71.7f, 61.4f, 53.8f, 47.8f, 43.0f, 39.1f, 35.8f, 33.1f, 25.0f, 8.0f};
    for (size_t k = 0; k < sizeof(div) / sizeof(div[0]); k++) {
        float t = amax / div[k];
        double sa, sb;
        double e = iq_group_error(c, ib, t, NULL, &sa, &sb);
        if (e < best) {
            best = e;
            best_t = t;
        }
        if (sb > 0 && sa > 0) {
            float t2 = (float)(sa / sb);
            e = iq_group_error(c, ib, t2, NULL, NULL, NULL);
            if (e < best) {
                best = e;
                best_t = t2;
            }
        }
    }
    return best_t;
}

/* Group scale of code s under super-block scale d, as the dequantizer has it. */
static float iq_scale_of(float d, int s) {
    float db = d * (0.5f + (float)s);
    return db * 0.25f;
}

/* With d fixed, each group picks the 4-bit scale next to its ideal that
 * gives the lowest error.  Returns the block error (less constants) and,
 * when asked, the least-squares sums for refitting d. */
static double iq_encode_fixed(const iq_ctx *c, const float *tg, float d, uint8_t *s_out, double *sa,
                              double *sb) {
    double total = 0, a = 0, b = 0;
    for (int ib = 0; ib < 8; ib++) {
        int s0 = d > 0.0f ? round_clamp(4.0f * tg[ib] / d - 0.5f, 0, 15) : 0;
        double best = INFINITY, ba = 0, bb = 0;
        int bs = s0;
        for (int s = s0 - 1; s <= s0 + 1; s++) {
            if (s < 0 || s > 15) continue;
            double ga, gb;
            double e = iq_group_error(c, ib, iq_scale_of(d, s), NULL, &ga, &gb);
            if (e < best) {
                best = e;
                bs = s;
                ba = ga;
                bb = gb;
            }
        }
        s_out[ib] = (uint8_t)bs;
        total += best;
        double f = (0.5 + bs) * 0.25;
        a += f * ba;
        b += f * f * bb;
    }
    if (sa) *sa = a;
    if (sb) *sb = b;
    return total;
}

static void iq_write_block(const iq_ctx *c, float d, const uint8_t *scales, ds4_block_iq2_xxs *out) {
    uint8_t raw[64];
    for (int ib = 0; ib < 8; ib++) {
        uint8_t idx[4];
        iq_group_error(c, ib, iq_scale_of(d, scales[ib]), idx, NULL, NULL);
        uint32_t w1 = (uint32_t)scales[ib] << 28;
        for (int l = 0; l < 4; l++) {
            const iq_chunk *ch = &c->ch[ib * 4 + l];
            uint8_t mask = ch->neg;
            if (ch->odd) { /* flip the element that costs least */
                int jmin = 0;
                float fmin = INFINITY;
                for (int j = 0; j < 8; j++) {
                    float f = ch->w[j] * ch->ax[j] * c->mag[idx[l]][j];
                    if (f < fmin) {
                        fmin = f;
                        jmin = j;
                    }
                }
                mask ^= (uint8_t)(1u << jmin);
            }
            w1 |= (uint32_t)(mask & 127) << (7 * l);
            raw[ib * 8 + l] = idx[l];
        }
        for (int k = 0; k < 4; k++) raw[ib * 8 + 4 + k] = (uint8_t)(w1 >> (8 * k));
    }
    out->d = ds4_f32_to_f16(d);
    memcpy(out->qs, raw, sizeof(raw));
}

static void iq_quantize_block(iq_ctx *c, const float *x, const float *w, ds4_block_iq2_xxs *out) {
    for (int k = 0; k < 32; k++) iq_chunk_prepare(c, &c->ch[k], x + 8 * k, w + 8 * k);
    float tg[8], tmax = 0.0f;
    for (int ib = 0; ib < 8; ib++) {
        tg[ib] = iq_group_scale(c, ib);
        tmax = fmaxf(tmax, tg[ib]);
    }
    uint8_t best_s[8] = {0}, s[8];
    float best_d = 0.0f;
    if (tmax > 0.0f) {
        double best = INFINITY;
        static const float dscale[] = {1.0f, 0.95f, 0.9f};
        for (size_t k = 0; k < sizeof(dscale) / sizeof(dscale[0]); k++) {
            float d = f16_round(4.0f * tmax / 15.5f * dscale[k]);
            for (int it = 0; it < 2 && d > 0.0f; it++) {
                double sa, sb;
                double e = iq_encode_fixed(c, tg, d, s, &sa, &sb);
                if (e < best) {
                    best = e;
                    best_d = d;
                    memcpy(best_s, s, sizeof(s));
                }
                if (!(sa > 0 && sb > 0)) break;
                d = f16_round((float)(sa / sb)); /* least-squares d for these choices */
            }
        }
    }
    iq_write_block(c, best_d, best_s, out);
}

static int quant_iq2_xxs(const float *x, uint8_t *dst, uint64_t nb, const float *imp) {
    iq_ctx *c = malloc(sizeof(*c));
    if (!c) return -1;
    iq_ctx_init_grid(c);
    for (uint64_t i = 0; i < nb; i++) {
        float w[DS4_QK_K];
        block_weights(imp ? imp + i * DS4_QK_K : NULL, w, DS4_QK_K);
        ds4_block_iq2_xxs b;
        iq_quantize_block(c, x + i * DS4_QK_K, w, &b);
        memcpy(dst + i * sizeof(b), &b, sizeof(b));
    }
    free(c);
    return 0;
}

/* ------------------------------------------------------ entry point */

int ds4_quantize_row(uint32_t type, const float *src, void *dst, uint64_t n, const float *importance) {
    const ds4_type_traits *t = ds4_type_get(type);
    if (!t || !t->quantizable || n % t->block_size != 0) return -1;
    uint8_t *d = dst;
    uint64_t nb = n / t->block_size;
    switch (type) {
    case DS4_TYPE_F32:
        memcpy(d, src, n * sizeof(float));
        return 0;
    case DS4_TYPE_F16:
    case DS4_TYPE_BF16:
        for (uint64_t i = 0; i < n; i++) {
            uint16_t h = type == DS4_TYPE_F16 ? ds4_f32_to_f16(src[i]) : ds4_f32_to_bf16(src[i]);
            memcpy(d + 2 * i, &h, 2);
        }
        return 0;
    case DS4_TYPE_Q8_0: quant_q8_0(src, d, nb, importance); return 0;
    case DS4_TYPE_Q2_K: quant_q2_K(src, d, nb, importance); return 0;
    case DS4_TYPE_Q4_K: quant_q4_K(src, d, nb, importance); return 0;
    case DS4_TYPE_IQ2_XXS: return quant_iq2_xxs(src, d, nb, importance);
    default: return -1;
    }
}
