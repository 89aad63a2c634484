/* test_quant.c - tests of src/quant.c: traits, f16/bf16, dequantizers
 * against the gguf package (tests/fixtures/quant_*, made by
 * tests/gen_quant_fixtures.py) and the quantizers' round-trip quality.
 *
 * Fixture format (see the generator): "DS4QFIX1", u32 type, u32 flags,
 * u64 n, u64 nbytes, [n f32 source when flags & 1], nbytes raw, n f32
 * expected.  The quality tests print one "    quant rms <TYPE> <value>" line
 * per format (relative RMS error on Gaussian data, all lengths together).
 */
#include "test.h"

#include <stddef.h>
#include <string.h>

#include "../src/quant.h"

/* ------------------------------------------------------------ helpers */

static uint32_t fbits(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    return u;
}

static float from_bits(uint32_t u) {
    float f;
    memcpy(&f, &u, 4);
    return f;
}

/* Distance in units in the last place between two finite floats. */
static uint32_t ulp_diff(float a, float b) {
    int64_t ia = fbits(a), ib = fbits(b);
    if (ia & 0x80000000) ia = 0x80000000LL - ia;
    if (ib & 0x80000000) ib = 0x80000000LL - ib;
    int64_t d = ia - ib;
    return (uint32_t)(d < 0 ? -d : d);
}

/* Standard normal via Box-Muller on the shared xorshift generator. */
static float gauss(test_rng *r) {
    double u1 = (test_rng_f32(r) + 1.0) * 0.5, u2 = (test_rng_f32(r) + 1.0) * 0.5;
    if (u1 < 1e-300) u1 = 1e-300;
    return (float)(sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2));
}

typedef struct {
    uint32_t type, flags;
    uint64_t n, nbytes;
    float *src;      /* NULL unless flags & 1 */
    uint8_t *raw;
    float *expected;
} fixture;

static void fixture_free(fixture *f) {
    free(f->src);
    free(f->raw);
    free(f->expected);
    memset(f, 0, sizeof(*f));
}

static int read_exact(FILE *fp, void *dst, size_t n) { return fread(dst, 1, n, fp) == n ? 0 : -1; }

/* Loads tests/fixtures/<name>; prints why and returns -1 on failure. */
static int fixture_load(const char *name, fixture *f) {
    memset(f, 0, sizeof(*f));
    char path[4096];
    snprintf(path, sizeof(path), "%s/tests/fixtures/%s", test_root_dir(), name);
    FILE *fp = fopen(path, "rb");
    if (!fp) {
        fprintf(stderr, "    cannot open %s (run `make fixtures`)\n", path);
        return -1;
    }
    uint8_t hdr[32];
    int rc = -1;
    if (read_exact(fp, hdr, sizeof(hdr)) != 0 || memcmp(hdr, "DS4QFIX1", 8) != 0) goto done;
    memcpy(&f->type, hdr + 8, 4);
    memcpy(&f->flags, hdr + 12, 4);
    memcpy(&f->n, hdr + 16, 8);
    memcpy(&f->nbytes, hdr + 24, 8);
    if (f->n == 0 || f->n > (1u << 22) || f->nbytes > (1u << 24)) goto done;
    f->raw = malloc(f->nbytes);
    f->expected = malloc(f->n * sizeof(float));
    if (f->flags & 1) f->src = malloc(f->n * sizeof(float));
    if (!f->raw || !f->expected || ((f->flags & 1) && !f->src)) goto done;
    if ((f->flags & 1) && read_exact(fp, f->src, f->n * sizeof(float)) != 0) goto done;
    if (read_exact(fp, f->raw, f->nbytes) != 0) goto done;
    if (read_exact(fp, f->expected, f->n * sizeof(float)) != 0) goto done;
    if (fgetc(fp) != EOF) goto done;
    if (ds4_row_bytes(f->type, f->n) != f->nbytes) goto done;
    rc = 0;
done:
    fclose(fp);
    if (rc != 0) {
        fprintf(stderr, "    bad fixture %s\n", path);
        fixture_free(f);
    }
    return rc;
}

/* ------------------------------------------------------------ layout */

static int test_quant_struct_sizes(void) {
    T_CHECK(sizeof(ds4_block_q8_0) == 34, "%zu", sizeof(ds4_block_q8_0));
    T_CHECK(sizeof(ds4_block_q2_K) == 84, "%zu", sizeof(ds4_block_q2_K));
    T_CHECK(sizeof(ds4_block_q4_K) == 144, "%zu", sizeof(ds4_block_q4_K));
    T_CHECK(sizeof(ds4_block_iq2_xxs) == 66, "%zu", sizeof(ds4_block_iq2_xxs));
    T_CHECK(offsetof(ds4_block_q8_0, qs) == 2, "q8_0 qs");
    T_CHECK(offsetof(ds4_block_q2_K, qs) == 16, "q2_K qs");
    T_CHECK(offsetof(ds4_block_q2_K, d) == 80, "q2_K d");
    T_CHECK(offsetof(ds4_block_q2_K, dmin) == 82, "q2_K dmin");
    T_CHECK(offsetof(ds4_block_q4_K, dmin) == 2, "q4_K dmin");
    T_CHECK(offsetof(ds4_block_q4_K, scales) == 4, "q4_K scales");
    T_CHECK(offsetof(ds4_block_q4_K, qs) == 16, "q4_K qs");
    T_CHECK(offsetof(ds4_block_iq2_xxs, qs) == 2, "iq2_xxs qs");
    return 0;
}

static int test_quant_traits(void) {
    /* Every GGML type the gguf package knows below DS4_TYPE_COUNT, with its
     * geometry; everything else in range is unknown. */
    char path[4096];
    snprintf(path, sizeof(path), "%s/tests/fixtures/quant_traits.txt", test_root_dir());
    FILE *fp = fopen(path, "r");
    T_CHECK(fp != NULL, "cannot open %s", path);
    bool listed[DS4_TYPE_COUNT] = {false};
    struct { unsigned id, bs, ts; char name[32]; } row[64];
    int lines = 0;
    while (lines < 64 && fscanf(fp, "%u %31s %u %u", &row[lines].id, row[lines].name, &row[lines].bs,
                                &row[lines].ts) == 4)
        lines++;
    fclose(fp);
    for (int i = 0; i < lines; i++) {
        if (row[i].id >= DS4_TYPE_COUNT) continue; /* newer GGML types we do not list */
        listed[row[i].id] = true;
        const ds4_type_traits *t = ds4_type_get(row[i].id);
        T_CHECK(t != NULL, "type %u (%s) unknown", row[i].id, row[i].name);
        T_CHECK(strcmp(t->name, row[i].name) == 0 && t->block_size == row[i].bs &&
                    t->type_size == row[i].ts,
                "type %u: got %s %u %u, want %s %u %u", row[i].id, t->name, t->block_size,
                t->type_size, row[i].name, row[i].bs, row[i].ts);
        T_CHECK(ds4_type_from_name(row[i].name) == (int)row[i].id, "from_name(%s)", row[i].name);
    }
    T_CHECK(lines >= 30, "only %d lines in %s", lines, path);
    for (uint32_t t = 0; t < DS4_TYPE_COUNT; t++)
        T_CHECK((ds4_type_get(t) != NULL) == listed[t], "type %u listed=%d", t, listed[t]);
    T_CHECK(ds4_type_get(DS4_TYPE_COUNT) == NULL, "past the table");
    T_CHECK(ds4_type_get(UINT32_MAX) == NULL, "huge id");

    static const uint32_t supported[] = {DS4_TYPE_F32, DS4_TYPE_F16, DS4_TYPE_BF16, DS4_TYPE_I32,
                                         DS4_TYPE_Q8_0, DS4_TYPE_Q2_K, DS4_TYPE_Q4_K,
                                         DS4_TYPE_IQ2_XXS};
    for (uint32_t t = 0; t < DS4_TYPE_COUNT; t++) {
        const ds4_type_traits *tr = ds4_type_get(t);
        if (!tr) continue;
        bool sup = false;
        for (size_t i = 0; i < sizeof(supported) / sizeof(supported[0]); i++) sup |= supported[i] == t;
        T_CHECK(tr->supported == sup, "%s supported=%d", tr->name, tr->supported);
        T_CHECK(tr->quantizable == (sup && t != DS4_TYPE_I32), "%s quantizable=%d", tr->name,
                tr->quantizable);
    }

    T_CHECK(strcmp(ds4_type_name(DS4_TYPE_IQ2_XXS), "IQ2_XXS") == 0, "name");
    T_CHECK(strcmp(ds4_type_name(4), "?") == 0, "gap id name");
    T_CHECK(strcmp(ds4_type_name(12345), "?") == 0, "unknown name");
    T_CHECK(ds4_type_from_name("q8_0") == DS4_TYPE_Q8_0, "lower case");
    T_CHECK(ds4_type_from_name("iq2_XxS") == DS4_TYPE_IQ2_XXS, "mixed case");
    T_CHECK(ds4_type_from_name("Q8_") == -1, "prefix");
    T_CHECK(ds4_type_from_name("Q8_00") == -1, "longer");
    T_CHECK(ds4_type_from_name("") == -1, "empty");
    T_CHECK(ds4_type_from_name(NULL) == -1, "NULL");

    T_CHECK(ds4_row_bytes(DS4_TYPE_Q4_K, 512) == 288, "q4_K row");
    T_CHECK(ds4_row_bytes(DS4_TYPE_Q8_0, 4096) == 4352, "q8_0 row");
    T_CHECK(ds4_row_bytes(DS4_TYPE_IQ2_XXS, 4096) == 1056, "iq2 row");
    T_CHECK(ds4_row_bytes(DS4_TYPE_F16, 3) == 6, "f16 row");
    T_CHECK(ds4_row_bytes(DS4_TYPE_Q2_K, 128) == 0, "partial block");
    T_CHECK(ds4_row_bytes(5, 32) == 0, "unknown type");
    T_CHECK(ds4_row_bytes(DS4_TYPE_F32, UINT64_MAX) == 0, "overflow");
    T_CHECK(ds4_row_bytes(DS4_TYPE_Q8_0, 0) == 0, "empty row");
    return 0;
}

/* ------------------------------------------------------------ f16 / bf16 */

static int test_quant_f16_bf16_roundtrip(void) {
    for (uint32_t h = 0; h < 65536; h++) {
        float f = ds4_f16_to_f32((uint16_t)h);
        uint16_t back = ds4_f32_to_f16(f);
        bool nan = (h & 0x7c00) == 0x7c00 && (h & 0x3ff);
        if (nan) {
            T_CHECK(isnan(f), "f16 %04x not nan", h);
            T_CHECK(back == (h | 0x200), "f16 nan %04x -> %04x", h, back); /* made quiet */
        } else {
            T_CHECK(back == h, "f16 %04x -> %g -> %04x", h, f, back);
        }
        float b = ds4_bf16_to_f32((uint16_t)h);
        T_CHECK(fbits(b) == h << 16, "bf16 %04x", h);
        uint16_t bback = ds4_f32_to_bf16(b);
        nan = (h & 0x7f80) == 0x7f80 && (h & 0x7f);
        T_CHECK(bback == (nan ? (h | 0x40) : h), "bf16 %04x -> %04x", h, bback);
    }
    /* Edge cases of f32 -> f16. */
    struct { float f; uint16_t h; } f16_cases[] = {
        {0.0f, 0x0000}, {-0.0f, 0x8000}, {1.0f, 0x3c00}, {-2.0f, 0xc000},
        {65504.0f, 0x7bff}, {65519.99f, 0x7bff}, {65520.0f, 0x7c00}, {-1e30f, 0xfc00},
        {INFINITY, 0x7c00}, {-INFINITY, 0xfc00},
        {0x1p-24f, 0x0001}, {0x1p-25f, 0x0000}, {0x1.0002p-25f, 0x0001}, {0x1.8p-24f, 0x0002},
        {0x1.4p-23f, 0x0002}, {0x1p-14f, 0x0400}, {0x1.ff8p-15f, 0x03ff}, {0x1.ffbp-15f, 0x03ff}, {0x1.ffcp-15f, 0x0400},
        {1e-45f, 0x0000}, {-0x1p-24f, 0x8001},
        {1.0f + 0x1p-11f, 0x3c00}, {1.0f + 0x1.8p-10f, 0x3c02}, {1.0f + 0x1p-11f + 0x1p-23f, 0x3c01},
    };
    for (size_t i = 0; i < sizeof(f16_cases) / sizeof(f16_cases[0]); i++) {
        uint16_t h = ds4_f32_to_f16(f16_cases[i].f);
        T_CHECK(h == f16_cases[i].h, "f16(%a) = %04x, want %04x", f16_cases[i].f, h, f16_cases[i].h);
    }
    T_CHECK((ds4_f32_to_f16(NAN) & 0x7e00) == 0x7e00, "f16 nan");
    T_CHECK(ds4_f16_to_f32(0x0001) == 0x1p-24f, "smallest subnormal");
    T_CHECK(ds4_f16_to_f32(0x03ff) == 0x1.ff8p-15f, "largest subnormal");
    T_CHECK(ds4_f16_to_f32(0xfbff) == -65504.0f, "-max");
    /* Edge cases of f32 -> bf16. */
    struct { float f; uint16_t h; } bf_cases[] = {
        {1.0f + 0x1p-8f, 0x3f80}, {1.0f + 0x1.8p-7f, 0x3f82}, {1.0f + 0x1p-8f + 0x1p-23f, 0x3f81},
        {3.4028235e38f, 0x7f80}, {-0.0f, 0x8000}, {0x1p-133f, 0x0001}, {INFINITY, 0x7f80},
    };
    for (size_t i = 0; i < sizeof(bf_cases) / sizeof(bf_cases[0]); i++) {
        uint16_t h = ds4_f32_to_bf16(bf_cases[i].f);
        T_CHECK(h == bf_cases[i].h, "bf16(%a) = %04x, want %04x", bf_cases[i].f, h, bf_cases[i].h);
    }
    uint16_t bn = ds4_f32_to_bf16(from_bits(0xff800001u)); /* signalling NaN, low payload */
    T_CHECK(bn == 0xffc0, "bf16 nan %04x", bn);
    return 0;
}

/* ------------------------------------------------------------ fixtures */

/* Our dequantizer against the gguf package on one fixture: exact (at most
 * 1 ulp); NaNs must be NaN on both sides. */
static int check_dequant_fixture(const char *name, uint32_t want_type) {
    fixture f;
    T_CHECK(fixture_load(name, &f) == 0, "%s", name);
    float *y = malloc(f.n * sizeof(float));
    if (!y) fixture_free(&f);
    T_CHECK(y != NULL, "oom");
    int rc = ds4_dequantize_row(f.type, f.raw, y, f.n);
    uint32_t worst = 0;
    uint64_t bad = UINT64_MAX;
    for (uint64_t i = 0; rc == 0 && i < f.n; i++) {
        float e = f.expected[i];
        if (isnan(e) || isnan(y[i])) {
            if (!(isnan(e) && isnan(y[i]))) bad = i;
        } else if (isinf(e) || isinf(y[i])) {
            if (e != y[i]) bad = i;
        } else {
            uint32_t u = ulp_diff(e, y[i]);
            if (u > worst) worst = u;
            if (u > 1) bad = i;
        }
        if (bad != UINT64_MAX) break;
    }
    uint32_t type = f.type;
    float got = bad != UINT64_MAX ? y[bad] : 0, want = bad != UINT64_MAX ? f.expected[bad] : 0;
    free(y);
    fixture_free(&f);
    T_CHECK(type == want_type, "%s has type %u", name, type);
    T_CHECK(rc == 0, "%s: dequantize failed", name);
    T_CHECK(bad == UINT64_MAX, "%s: value %llu: got %.9g want %.9g", name, (unsigned long long)bad,
            got, want);
    T_CHECK(worst <= 1, "%s: %u ulp", name, worst);
    return 0;
}

static int test_quant_dequant_fixtures(void) {
    if (check_dequant_fixture("quant_q8_0.bin", DS4_TYPE_Q8_0)) return 1;
    if (check_dequant_fixture("quant_q2_k.bin", DS4_TYPE_Q2_K)) return 1;
    if (check_dequant_fixture("quant_q4_k.bin", DS4_TYPE_Q4_K)) return 1;
    if (check_dequant_fixture("quant_iq2_xxs.bin", DS4_TYPE_IQ2_XXS)) return 1;
    if (check_dequant_fixture("quant_f16.bin", DS4_TYPE_F16)) return 1;
    if (check_dequant_fixture("quant_bf16.bin", DS4_TYPE_BF16)) return 1;
    if (check_dequant_fixture("quant_q8_0_from_f32.bin", DS4_TYPE_Q8_0)) return 1;
    if (check_dequant_fixture("quant_f16_from_f32.bin", DS4_TYPE_F16)) return 1;
    if (check_dequant_fixture("quant_bf16_from_f32.bin", DS4_TYPE_BF16)) return 1;
    return 0;
}

/* Our quantizer (no importance) against the gguf package's bytes: Q8_0
 * uses GGML's reference rule (amax/127, round half away from zero), F16 and
 * BF16 round to nearest even, so all three must match byte for byte. */
static int check_quant_fixture(const char *name) {
    fixture f;
    T_CHECK(fixture_load(name, &f) == 0, "%s", name);
    uint8_t *q = f.src ? malloc(f.nbytes) : NULL;
    int rc = q ? ds4_quantize_row(f.type, f.src, q, f.n, NULL) : -1;
    uint64_t bad = UINT64_MAX;
    for (uint64_t i = 0; rc == 0 && i < f.nbytes; i++)
        if (q[i] != f.raw[i]) {
            bad = i;
            break;
        }
    uint8_t got = bad != UINT64_MAX ? q[bad] : 0, want = bad != UINT64_MAX ? f.raw[bad] : 0;
    free(q);
    fixture_free(&f);
    T_CHECK(rc == 0, "%s: quantize failed", name);
    T_CHECK(bad == UINT64_MAX, "%s: byte %llu: got %02x want %02x", name, (unsigned long long)bad,
            got, want);
    return 0;
}

static int test_quant_quantize_fixtures(void) {
    if (check_quant_fixture("quant_q8_0_from_f32.bin")) return 1;
    if (check_quant_fixture("quant_f16_from_f32.bin")) return 1;
    if (check_quant_fixture("quant_bf16_from_f32.bin")) return 1;
    return 0;
}

/* Hand-built blocks: the bit layouts spelled out independently of the
 * fixtures. */
static int test_quant_dequant_handmade(void) {
    float y[DS4_QK_K];

    ds4_block_iq2_xxs iq;
    memset(&iq, 0, sizeof(iq));
    iq.d = ds4_f32_to_f16(1.0f);
    uint8_t raw[8] = {1, 0, 0, 0}; /* group 0: chunk 0 grid 1, others grid 0 */
    uint32_t w1 = 1u | (15u << 28); /* chunk 0 sign index 1 (elements 0 and 7 negative), s = 15 */
    memcpy(raw + 4, &w1, 4);
    memcpy(iq.qs, raw, 8);
    T_CHECK(ds4_dequantize_row(DS4_TYPE_IQ2_XXS, &iq, y, DS4_QK_K) == 0, "iq2 dequant");
    /* db = 1 * 15.5 * 0.25; grid 1 = {43, 8, 8, 8, 8, 8, 8, 8} */
    T_CHECK(y[0] == -43.0f * 3.875f, "y0 %g", y[0]);
    T_CHECK(y[1] == 8.0f * 3.875f && y[7] == -8.0f * 3.875f, "y1 %g y7 %g", y[1], y[7]);
    T_CHECK(y[8] == 8.0f * 3.875f, "y8 %g", y[8]);
    T_CHECK(y[32] == 8.0f * 0.125f, "group 1 (s=0): %g", y[32]);

    ds4_block_q4_K q4;
    memset(&q4, 0, sizeof(q4));
    q4.d = ds4_f32_to_f16(0.5f);
    q4.dmin = ds4_f32_to_f16(0.25f);
    /* sub-block 5: scale 42 = 0b101010, min 21 = 0b010101 */
    q4.scales[9] = (uint8_t)((42 & 0xf) | ((21 & 0xf) << 4));
    q4.scales[1] = (uint8_t)((42 >> 4) << 6);
    q4.scales[5] = (uint8_t)((21 >> 4) << 6);
    q4.qs[2 * 32 + 3] = 0x70; /* chunk 2 high nibble (value 2*64+32+3 = 163) = 7 */
    T_CHECK(ds4_dequantize_row(DS4_TYPE_Q4_K, &q4, y, DS4_QK_K) == 0, "q4_K dequant");
    T_CHECK(y[163] == 0.5f * 42 * 7 - 0.25f * 21, "y163 %g", y[163]);
    T_CHECK(y[162] == -0.25f * 21, "y162 %g", y[162]);
    T_CHECK(y[0] == 0.0f && y[131] == 0.0f, "other sub-blocks %g %g", y[0], y[131]);

    ds4_block_q2_K q2;
    memset(&q2, 0, sizeof(q2));
    q2.d = ds4_f32_to_f16(2.0f);
    q2.dmin = ds4_f32_to_f16(1.0f);
    q2.scales[13] = 0x35;            /* values 208..223: scale 5, min 3 */
    q2.qs[32 + 17] = (uint8_t)(2 << 4); /* half 1, shift 4: value 128+64+17 = 209 */
    T_CHECK(ds4_dequantize_row(DS4_TYPE_Q2_K, &q2, y, DS4_QK_K) == 0, "q2_K dequant");
    T_CHECK(y[209] == 2.0f * 5 * 2 - 3.0f, "y209 %g", y[209]);
    T_CHECK(y[208] == -3.0f, "y208 %g", y[208]);

    int32_t iv[3] = {-7, 0, 1 << 24};
    T_CHECK(ds4_dequantize_row(DS4_TYPE_I32, iv, y, 3) == 0, "i32");
    T_CHECK(y[0] == -7.0f && y[1] == 0.0f && y[2] == 16777216.0f, "i32 values");
    return 0;
}

/* ------------------------------------------------------------ quantizers */

typedef struct {
    uint32_t type;
    double bound; /* asserted bound on relative RMS error, Gaussian data */
} quality_case;

static const quality_case k_quality[] = {
    /* measured (n = 256 / 1024 / 4096): F16 0.0002, BF16 0.0017, Q8_0 0.0053,
     * Q4_K 0.073 / 0.071 / 0.070, Q2_K 0.26, IQ2_XXS 0.340 / 0.327 / 0.324 */
    {DS4_TYPE_F16, 0.0003}, {DS4_TYPE_BF16, 0.0025}, {DS4_TYPE_Q8_0, 0.0065},
    {DS4_TYPE_Q4_K, 0.08},  {DS4_TYPE_Q2_K, 0.29},   {DS4_TYPE_IQ2_XXS, 0.36},
};

/* Quantize x, dequantize into y; returns 0 or -1. */
static int round_trip(uint32_t type, const float *x, float *y, uint64_t n, const float *imp) {
    uint64_t bytes = ds4_row_bytes(type, n);
    uint8_t *q = malloc(bytes ? bytes : 1);
    if (!q) return -1;
    int rc = ds4_quantize_row(type, x, q, n, imp);
    if (rc == 0) rc = ds4_dequantize_row(type, q, y, n);
    free(q);
    return rc;
}

static int test_quant_rms(void) {
    static const uint64_t lengths[] = {256, 1024, 4096};
    enum { MAXN = 4096 };
    float *x = malloc(MAXN * sizeof(float)), *y = malloc(MAXN * sizeof(float));
    T_CHECK(x && y, "oom");
    int fail = 0;
    for (size_t c = 0; c < sizeof(k_quality) / sizeof(k_quality[0]) && !fail; c++) {
        double err = 0, ref = 0;
        for (size_t li = 0; li < sizeof(lengths) / sizeof(lengths[0]) && !fail; li++) {
            uint64_t n = lengths[li];
            test_rng r = {0x9e3779b97f4a7c15ULL ^ (n * 31 + c)};
            float sigma = (float)(0.02 * (1 + li)); /* weights-like magnitudes */
            for (uint64_t i = 0; i < n; i++) x[i] = sigma * gauss(&r);
            if (round_trip(k_quality[c].type, x, y, n, NULL) != 0) {
                fprintf(stderr, "    round trip %s n=%llu failed\n",
                        ds4_type_name(k_quality[c].type), (unsigned long long)n);
                fail = 1;
                break;
            }
            double e = 0, s = 0;
            for (uint64_t i = 0; i < n; i++) {
                double dlt = (double)y[i] - x[i];
                e += dlt * dlt;
                s += (double)x[i] * x[i];
            }
            double rel = sqrt(e / s);
            if (!(rel <= k_quality[c].bound)) {
                fprintf(stderr, "    %s n=%llu: relative rms %.4f > %.4f\n",
                        ds4_type_name(k_quality[c].type), (unsigned long long)n, rel,
                        k_quality[c].bound);
                fail = 1;
            }
            err += e;
            ref += s;
        }
        if (!fail) printf("    quant rms %s %.4f\n", ds4_type_name(k_quality[c].type), sqrt(err / ref));
    }
    free(x);
    free(y);
    T_CHECK(!fail, "round-trip quality");
    return 0;
}

/* Heavy-tailed importance: a quantizer that honours it must give a lower
 * importance-weighted error than the same quantizer without it. */
static int test_quant_importance(void) {
    static const uint32_t types[] = {DS4_TYPE_Q8_0, DS4_TYPE_Q4_K, DS4_TYPE_Q2_K, DS4_TYPE_IQ2_XXS};
    enum { N = 2048 };
    float *x = malloc(N * sizeof(float)), *imp = malloc(N * sizeof(float));
    float *y0 = malloc(N * sizeof(float)), *y1 = malloc(N * sizeof(float));
    int ok = x && imp && y0 && y1;
    test_rng r = {12345};
    for (int i = 0; ok && i < N; i++) {
        x[i] = 0.05f * gauss(&r);
        float u = test_rng_f32(&r);
        imp[i] = u > 0.8f ? 50.0f * (1.0f + u) : (float)exp(u); /* 10% very important */
    }
    double ratio[4] = {0};
    for (size_t t = 0; ok && t < sizeof(types) / sizeof(types[0]); t++) {
        ok = round_trip(types[t], x, y0, N, NULL) == 0 && round_trip(types[t], x, y1, N, imp) == 0;
        double e0 = 0, e1 = 0;
        for (int i = 0; ok && i < N; i++) {
            e0 += imp[i] * ((double)y0[i] - x[i]) * ((double)y0[i] - x[i]);
            e1 += imp[i] * ((double)y1[i] - x[i]) * ((double)y1[i] - x[i]);
        }
        ratio[t] = e1 / e0;
        printf("    quant importance %s weighted error ratio %.3f\n", ds4_type_name(types[t]), ratio[t]);
    }
    free(x);
    free(imp);
    free(y0);
    free(y1);
    T_CHECK(ok, "round trips failed");
    T_CHECK(ratio[0] <= 1.0, "Q8_0 ratio %.3f", ratio[0]);
    for (int t = 1; t < 4; t++) T_CHECK(ratio[t] < 0.9, "%s ratio %.3f", ds4_type_name(types[t]), ratio[t]);
    return 0;
}

/* Same input, same bytes, whatever was in the destination before; and the
 * output of one block does not depend on its neighbours. */
static int test_quant_deterministic(void) {
    static const uint32_t types[] = {DS4_TYPE_F16, DS4_TYPE_BF16, DS4_TYPE_Q8_0,
                                     DS4_TYPE_Q4_K, DS4_TYPE_Q2_K, DS4_TYPE_IQ2_XXS};
    enum { N = 1024 };
    float x[N], imp[N];
    test_rng r = {777};
    for (int i = 0; i < N; i++) {
        x[i] = 0.1f * gauss(&r);
        imp[i] = 1.0f + test_rng_f32(&r);
    }
    static uint8_t a[N * 4], b[N * 4];
    for (size_t t = 0; t < sizeof(types) / sizeof(types[0]); t++) {
        uint64_t bytes = ds4_row_bytes(types[t], N);
        for (int pass = 0; pass < 2; pass++) {
            const float *im = pass ? imp : NULL;
            memset(a, 0xAA, sizeof(a));
            memset(b, 0x55, sizeof(b));
            T_CHECK(ds4_quantize_row(types[t], x, a, N, im) == 0, "quantize");
            T_CHECK(ds4_quantize_row(types[t], x, b, N, im) == 0, "quantize");
            T_CHECK(memcmp(a, b, bytes) == 0, "%s differs between runs", ds4_type_name(types[t]));
            T_CHECK(a[bytes] == 0xAA && b[bytes] == 0x55, "%s wrote past the row",
                    ds4_type_name(types[t]));
            /* The second half quantized alone gives the same bytes. */
            memset(b, 0x55, sizeof(b));
            T_CHECK(ds4_quantize_row(types[t], x + N / 2, b, N / 2, im ? im + N / 2 : NULL) == 0, "half");
            T_CHECK(memcmp(a + bytes / 2, b, bytes / 2) == 0, "%s blocks depend on neighbours",
                    ds4_type_name(types[t]));
        }
    }
    return 0;
}

static int test_quant_reject(void) {
    float x[512] = {0}, y[512];
    uint8_t q[4096];
    T_CHECK(ds4_quantize_row(DS4_TYPE_Q4_0, x, q, 32, NULL) == -1, "Q4_0 not quantizable");
    T_CHECK(ds4_quantize_row(DS4_TYPE_I32, x, q, 4, NULL) == -1, "I32 not quantizable");
    T_CHECK(ds4_quantize_row(DS4_TYPE_Q6_K, x, q, 256, NULL) == -1, "Q6_K not quantizable");
    T_CHECK(ds4_quantize_row(5, x, q, 32, NULL) == -1, "unknown id");
    T_CHECK(ds4_quantize_row(9999, x, q, 32, NULL) == -1, "huge id");
    T_CHECK(ds4_quantize_row(DS4_TYPE_Q8_0, x, q, 33, NULL) == -1, "Q8_0 partial block");
    T_CHECK(ds4_quantize_row(DS4_TYPE_Q2_K, x, q, 128, NULL) == -1, "Q2_K partial block");
    T_CHECK(ds4_quantize_row(DS4_TYPE_Q4_K, x, q, 257, NULL) == -1, "Q4_K partial block");
    T_CHECK(ds4_quantize_row(DS4_TYPE_IQ2_XXS, x, q, 32, NULL) == -1, "IQ2_XXS partial block");
    T_CHECK(ds4_dequantize_row(DS4_TYPE_Q4_0, q, y, 32) == -1, "Q4_0 unsupported");
    T_CHECK(ds4_dequantize_row(DS4_TYPE_Q6_K, q, y, 256) == -1, "Q6_K unsupported");
    T_CHECK(ds4_dequantize_row(5, q, y, 32) == -1, "unknown id");
    T_CHECK(ds4_dequantize_row(DS4_TYPE_Q8_0, q, y, 31) == -1, "Q8_0 partial block");
    T_CHECK(ds4_dequantize_row(DS4_TYPE_IQ2_XXS, q, y, 300) == -1, "IQ2_XXS partial block");
    T_CHECK(ds4_quantize_row(DS4_TYPE_F32, x, q, 3, NULL) == 0, "F32 any length");
    T_CHECK(ds4_quantize_row(DS4_TYPE_Q8_0, x, q, 0, NULL) == 0, "empty row");
    return 0;
}

/* Awkward blocks: zeros, constants, one spike, all negative, a huge dynamic
 * range, tiny values.  Output must be finite and sensible. */
static int test_quant_edge_blocks(void) {
    static const uint32_t types[] = {DS4_TYPE_Q8_0, DS4_TYPE_Q4_K, DS4_TYPE_Q2_K, DS4_TYPE_IQ2_XXS};
    float x[256], y[256];
    for (size_t t = 0; t < sizeof(types) / sizeof(types[0]); t++) {
        const char *tn = ds4_type_name(types[t]);
        for (int kind = 0; kind < 6; kind++) {
            test_rng r = {99 + (uint64_t)kind};
            for (int i = 0; i < 256; i++) {
                switch (kind) {
                case 0: x[i] = 0.0f; break;
                case 1: x[i] = 0.75f; break;
                case 2: x[i] = i == 77 ? 3.0f : 0.0f; break;
                case 3: x[i] = -0.5f - 0.5f * (test_rng_f32(&r) + 1.0f); break;
                case 4: x[i] = gauss(&r) * (i % 64 == 5 ? 1000.0f : 0.001f); break;
                default: x[i] = 1e-3f * gauss(&r); break;
                }
            }
            T_CHECK(round_trip(types[t], x, y, 256, NULL) == 0, "%s kind %d", tn, kind);
            double e = 0, s = 0;
            for (int i = 0; i < 256; i++) {
                T_CHECK(isfinite(y[i]), "%s kind %d: y[%d] = %g", tn, kind, i, y[i]);
                e += ((double)y[i] - x[i]) * ((double)y[i] - x[i]);
                s += (double)x[i] * x[i];
            }
            if (kind == 0) T_CHECK(e == 0.0, "%s: zeros not exact", tn);
            /* IQ2_XXS cannot store zeros (grid magnitudes >= 8): next to a
             * lone spike (kinds 2, 4) the 31 near-zeros of its group must move
             * too, and the best possible error is about 0.72 of the spike. */
            double lim = kind == 4 || kind == 5 ? 0.5 : 0.2;
            if ((kind == 2 || kind == 4) && types[t] == DS4_TYPE_IQ2_XXS) lim = 0.75;
            /* Uniform magnitudes in [0.5, 1.5]: the best any IQ2_XXS encoding
             * can do (exhaustive grid, free group scale) is about 0.27. */
            if (kind == 3 && types[t] == DS4_TYPE_IQ2_XXS) lim = 0.3;
            /* A constant is exact up to the f16 scales (the grid has 8,8,...,8). */
            if (kind == 1) lim = 0.01;
            if (kind != 0) T_CHECK(sqrt(e / s) < lim, "%s kind %d: rel rms %.3f", tn, kind, sqrt(e / s));
        }
    }
    return 0;
}

void tests_register_quant(void) {
    test_add("quant_struct_sizes", test_quant_struct_sizes);
    test_add("quant_traits", test_quant_traits);
    test_add("quant_f16_bf16_roundtrip", test_quant_f16_bf16_roundtrip);
    test_add("quant_dequant_fixtures", test_quant_dequant_fixtures);
    test_add("quant_quantize_fixtures", test_quant_quantize_fixtures);
    test_add("quant_dequant_handmade", test_quant_dequant_handmade);
    test_add("quant_rms", test_quant_rms);
    test_add("quant_importance", test_quant_importance);
    test_add("quant_deterministic", test_quant_deterministic);
    test_add("quant_reject", test_quant_reject);
    test_add("quant_edge_blocks", test_quant_edge_blocks);
}
