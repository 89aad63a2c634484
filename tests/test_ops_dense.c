/* test_ops_dense.c - the dense ops of src/ops.h against tests/ref_dense.c.
 *
 * Every op runs on the test device (PoCL here) on random data of several
 * shapes, mostly odd, with non-zero offsets into its buffers.  Each device
 * array is surrounded by sentinel floats, and after the op the whole buffer
 * is read back: the documented outputs must match the host reference and
 * every other float must be unchanged.  Tolerance is 1e-5 * (|ref| + 1)
 * for the arithmetic ops (data are O(1)); the embedding, the KV store and
 * the FP8 / FP4 simulations must match bit for bit, including crafted
 * ties, clamps and subnormals, and the ml_dtypes fixtures of
 * tests/fixtures/qsim.bin.  Bad calls must fail naming the op.
 */
#include <string.h>

#include "../src/ops.h"
#include "../src/qsim.h"
#include "../src/quant.h"
#include "ref_dense.h"
#include "test.h"

#define SENTINEL (-12345.0f)
#define PAD 5       /* sentinel floats after each array */
#define TOL 1e-5f
#define MAX_MEMS 128

/* One test's device state; everything is released by ctx_close. */
typedef struct {
    ds4_runtime *rt;
    ds4_kernels k;
    ds4_ops ops;
    int have_k, have_ops;
    cl_mem mems[MAX_MEMS];
    int n_mems;
    test_rng rng;
} ctx;

/* A device array: `n` floats at offset `off` floats in `mem`, which holds
 * off + n + PAD floats (`total`), all SENTINEL outside the data. */
typedef struct {
    cl_mem mem;
    uint64_t off, n, total;
} dvec;

/* Build options of the second program variant, the same string as
 * test_kernels.c's so the suite builds it once: GPU-style cooperating
 * lanes and the hardware f16 path (vload_half) on PoCL. */
#define GPU_STYLE_OPTIONS "-DMV_LANES=4 -DMV_ROWS=3 -DMM_TOKENS=3 -DDS4_F16_HW=1 -DMV_TABLES_LOCAL=1"

static int ctx_open_opts(ctx *c, uint64_t seed, const char *options) {
    memset(c, 0, sizeof(*c));
    c->rng.s = seed;
    c->rt = test_runtime();
    T_CHECK(c->rt != NULL, "no OpenCL runtime");
    ds4_error err = {{0}};
    T_CHECK(ds4_kernels_init(&c->k, c->rt, options, &err) == 0, "%s", err.msg);
    c->have_k = 1;
    T_CHECK(ds4_ops_init(&c->ops, &c->k, &err) == 0, "%s", err.msg);
    c->have_ops = 1;
    return 0;
}

static void ctx_close(ctx *c) {
    for (int i = 0; i < c->n_mems; i++) clReleaseMemObject(c->mems[i]);
    if (c->have_ops) ds4_ops_free(&c->ops);
    if (c->have_k) ds4_kernels_free(&c->k);
}

/* Run body(c) with a fresh context (on the program built with `options`),
 * always closing it. */
static int with_ctx_opts(uint64_t seed, const char *options, int (*body)(ctx *)) {
    ctx c;
    int rc = ctx_open_opts(&c, seed, options);
    if (rc == 0) rc = body(&c);
    ctx_close(&c);
    return rc;
}

static int with_ctx(uint64_t seed, int (*body)(ctx *)) {
    ctx c;
    int rc = ctx_open_opts(&c, seed, NULL);
    if (rc == 0) rc = body(&c);
    ctx_close(&c);
    return rc;
}

static int buf_new(ctx *c, uint64_t bytes, cl_mem *out) {
    ds4_error err = {{0}};
    T_CHECK(c->n_mems < MAX_MEMS, "too many buffers");
    T_CHECK(ds4_buffer_new(c->rt, bytes, out, &err) == 0, "%s", err.msg);
    c->mems[c->n_mems++] = *out;
    return 0;
}

/* Upload n floats (data may be NULL: all sentinel) at offset off. */
static int dvec_new(ctx *c, dvec *v, const float *data, uint64_t n, uint64_t off) {
    v->off = off;
    v->n = n;
    v->total = off + n + PAD;
    float *h = malloc(sizeof(float) * v->total);
    T_CHECK(h != NULL, "oom");
    for (uint64_t i = 0; i < v->total; i++) h[i] = SENTINEL;
    if (data) memcpy(h + off, data, sizeof(float) * n);
    ds4_error err = {{0}};
    int rc = buf_new(c, sizeof(float) * v->total, &v->mem);
    if (rc == 0 && ds4_buffer_write(c->rt, v->mem, 0, h, sizeof(float) * v->total, &err) != 0) {
        fprintf(stderr, "    %s\n", err.msg);
        rc = 1;
    }
    free(h);
    return rc;
}

static ds4_aref AR(const dvec *v) { return (ds4_aref){v->mem, v->off}; }
static ds4_wref WF(const dvec *v) { return (ds4_wref){v->mem, v->off * 4, DS4_TYPE_F32}; }

/* Read v back; its data must equal want (tol 0: same bits; else within
 * tol * (|want| + 1)) and the rest must still be sentinels. */
static int dvec_check(ctx *c, const dvec *v, const float *want, float tol, const char *what) {
    float *h = malloc(sizeof(float) * v->total);
    T_CHECK(h != NULL, "oom");
    ds4_error err = {{0}};
    int rc = ds4_buffer_read(c->rt, v->mem, 0, h, sizeof(float) * v->total, &err);
    if (rc != 0) fprintf(stderr, "    %s: %s\n", what, err.msg);
    uint64_t bad = 0;
    double worst = 0;
    for (uint64_t i = 0; rc == 0 && i < v->total; i++) {
        bool in = i >= v->off && i < v->off + v->n;
        float g = h[i], w = in ? want[i - v->off] : SENTINEL;
        bool ok;
        if (!in || tol == 0.0f) {
            ok = memcmp(&g, &w, sizeof(float)) == 0;
        } else {
            double d = fabs((double)g - (double)w);
            ok = d <= tol * (fabs((double)w) + 1.0);
            if (d > worst) worst = d;
        }
        if (!ok && bad++ < 5)
            fprintf(stderr, "    %s[%lld]: got %.9g (%a), want %.9g (%a)\n", what, (long long)i - (long long)v->off,
                    g, g, w, w);
    }
    free(h);
    T_CHECK(rc == 0 && bad == 0, "%s: %llu values differ (largest difference %g)", what, (unsigned long long)bad,
            worst);
    return 0;
}

static float *fmalloc(uint64_t n) { return malloc(sizeof(float) * (n ? n : 1)); }

static void fill(test_rng *r, float *x, uint64_t n, float scale) {
    for (uint64_t i = 0; i < n; i++) x[i] = scale * test_rng_f32(r);
}

/* Run an op through `call` (an expression yielding 0 / -1 with err set). */
#define OP(call)                                                                   \
    do {                                                                           \
        ds4_error err = {{0}};                                                     \
        (void)err;                                                                 \
        int op_rc_ = (call);                                                       \
        if (op_rc_ == 0) op_rc_ = ds4_runtime_finish(c->rt, &err);                  \
        T_CHECK(op_rc_ == 0, "%s", err.msg);                                       \
    } while (0)

/* ------------------------------------------------------------- embed -- */

static int embed_case(ctx *c, uint32_t type, uint32_t n_embd, uint32_t T, uint32_t n_hc, uint64_t w_off) {
    const uint32_t n_vocab = 11;
    uint64_t rb = ds4_row_bytes(type, n_embd);
    uint8_t *tab = calloc(1, w_off + rb * n_vocab + 8);
    float *row = fmalloc(n_embd), *want = fmalloc((uint64_t)T * n_hc * n_embd);
    int32_t tok[16];
    T_CHECK(tab && row && want && T <= 16, "oom");
    int rc = 0;
    for (uint32_t v = 0; v < n_vocab && rc == 0; v++) {
        fill(&c->rng, row, n_embd, 2.0f);
        rc = ds4_quantize_row(type, row, tab + w_off + v * rb, n_embd, NULL);
    }
    for (uint32_t t = 0; t < T; t++) tok[t] = (int32_t)(test_rng_u64(&c->rng) % n_vocab);
    tok[T - 1] = n_vocab - 1;
    if (rc == 0) rc = ref_embed(tab + w_off, type, n_embd, tok, T, n_hc, want);
    cl_mem wb = NULL, tb = NULL;
    ds4_error err = {{0}};
    dvec X;
    if (rc == 0) rc = buf_new(c, w_off + rb * n_vocab + 8, &wb) || buf_new(c, 4 * (T + 3), &tb);
    if (rc == 0)
        rc = ds4_buffer_write(c->rt, wb, 0, tab, w_off + rb * n_vocab + 8, &err) ||
             ds4_buffer_write(c->rt, tb, 12, tok, 4 * T, &err);
    if (rc == 0) rc = dvec_new(c, &X, NULL, (uint64_t)T * n_hc * n_embd, 3);
    free(tab);
    free(row);
    if (rc != 0) free(want);
    T_CHECK(rc == 0, "preparing %s: %s", ds4_type_name(type), err.msg);
    ds4_wref W = {wb, w_off, type};
    rc = ds4_op_embed(&c->ops, W, n_embd, tb, 3, T, n_hc, AR(&X), &err);
    if (rc == 0) rc = ds4_runtime_finish(c->rt, &err);
    if (rc != 0) fprintf(stderr, "    %s\n", err.msg);
    if (rc == 0) rc = dvec_check(c, &X, want, 0.0f, ds4_type_name(type));
    free(want);
    return rc;
}

static int body_embed(ctx *c) {
    if (embed_case(c, DS4_TYPE_F32, 37, 5, 4, 12)) return 1;
    if (embed_case(c, DS4_TYPE_F16, 37, 5, 4, 6)) return 1;
    if (embed_case(c, DS4_TYPE_BF16, 37, 3, 1, 2)) return 1;
    if (embed_case(c, DS4_TYPE_Q8_0, 96, 5, 4, 6)) return 1;
    if (embed_case(c, DS4_TYPE_Q8_0, 32, 1, 3, 0)) return 1;
    return 0;
}
static int t_embed(void) {
    if (with_ctx(101, body_embed)) return 1;
    return with_ctx_opts(102, GPU_STYLE_OPTIONS, body_embed);
}

/* ----------------------------------------------------------- rmsnorm -- */

static int rms_case(ctx *c, uint32_t n, uint32_t rows, uint32_t stride, bool weighted, bool in_place) {
    uint64_t len = (uint64_t)(rows - 1) * stride + n;
    float *x = fmalloc(len), *want = fmalloc(len), *w = fmalloc(n);
    T_CHECK(x && want && w, "oom");
    fill(&c->rng, x, len, 3.0f);
    fill(&c->rng, w, n, 1.5f);
    memcpy(want, x, sizeof(float) * len);
    ref_rmsnorm(x, want, n, rows, stride, weighted ? w : NULL, 1e-6f);
    dvec X, Y, Wv;
    int rc = dvec_new(c, &X, x, len, 7) || dvec_new(c, &Wv, w, n, 2);
    if (rc == 0 && !in_place) rc = dvec_new(c, &Y, NULL, len, 1);
    if (rc == 0 && !in_place) {
        /* Y's gaps between rows are not written: expect sentinels there. */
        for (uint32_t r = 0; r + 1 < rows; r++)
            for (uint32_t i = n; i < stride; i++) want[(uint64_t)r * stride + i] = SENTINEL;
    }
    free(x);
    free(w);
    if (rc != 0) free(want);
    T_CHECK(rc == 0, "prepare");
    ds4_wref wr = weighted ? WF(&Wv) : (ds4_wref){NULL, 0, DS4_TYPE_F32};
    const dvec *out = in_place ? &X : &Y;
    ds4_error err = {{0}};
    rc = ds4_op_rmsnorm(&c->ops, AR(&X), AR(out), n, rows, stride, wr, 1e-6f, &err);
    if (rc == 0) rc = ds4_runtime_finish(c->rt, &err);
    if (rc != 0) fprintf(stderr, "    %s\n", err.msg);
    if (rc == 0) rc = dvec_check(c, out, want, TOL, "rmsnorm");
    free(want);
    if (rc) fprintf(stderr, "    (n %u rows %u stride %u)\n", n, rows, stride);
    return rc;
}

static int body_rmsnorm(ctx *c) {
    if (rms_case(c, 37, 5, 41, true, false)) return 1;
    if (rms_case(c, 37, 5, 37, false, true)) return 1;
    if (rms_case(c, 1, 3, 1, true, true)) return 1;
    if (rms_case(c, 16384, 2, 16384, false, false)) return 1;
    if (rms_case(c, 515, 9, 515, true, true)) return 1;
    return 0;
}
static int t_rmsnorm(void) { return with_ctx(202, body_rmsnorm); }

/* ---------------------------------------------------------------- HC -- */

static int hc_case(ctx *c, uint32_t hc, uint32_t n_embd, uint32_t T, uint32_t iters) {
    const float eps = 1e-6f;
    uint64_t nX = (uint64_t)T * hc * n_embd, nmix = (uint64_t)(2 + hc) * hc;
    float *X = fmalloc(nX), *mix = fmalloc(T * nmix), *base = fmalloc(nmix), scale[3] = {0.7f, 1.3f, 2.1f};
    float *x = fmalloc((uint64_t)T * n_embd), *post = fmalloc(T * hc), *comb = fmalloc(T * hc * hc);
    float *y = fmalloc((uint64_t)T * n_embd), *Xp = fmalloc(nX), *hmix = fmalloc(T * hc);
    float *h = fmalloc((uint64_t)T * n_embd);
    int rc = !(X && mix && base && x && post && comb && y && Xp && hmix && h);
    if (rc == 0) {
        fill(&c->rng, X, nX, 2.0f);
        fill(&c->rng, mix, T * nmix, 1.5f);
        fill(&c->rng, base, nmix, 1.0f);
        fill(&c->rng, y, (uint64_t)T * n_embd, 2.0f);
        fill(&c->rng, hmix, T * hc, 2.0f);
        ref_hc_pre(X, mix, scale, base, hc, n_embd, T, iters, eps, x, post, comb);
        memcpy(Xp, X, sizeof(float) * nX);
        ref_hc_post(Xp, y, post, comb, hc, n_embd, T);
        ref_hc_head(X, hmix, scale, base, hc, n_embd, T, eps, h);
    }
    dvec dX, dmix, dbase, dscale, dx, dpost, dcomb, dy, dhmix, dh;
    if (rc == 0)
        rc = dvec_new(c, &dX, X, nX, 3) || dvec_new(c, &dmix, mix, T * nmix, 1) || dvec_new(c, &dbase, base, nmix, 2) ||
             dvec_new(c, &dscale, scale, 3, 5) || dvec_new(c, &dx, NULL, (uint64_t)T * n_embd, 4) ||
             dvec_new(c, &dpost, NULL, T * hc, 1) || dvec_new(c, &dcomb, NULL, T * hc * hc, 6) ||
             dvec_new(c, &dy, y, (uint64_t)T * n_embd, 0) || dvec_new(c, &dhmix, hmix, T * hc, 9) ||
             dvec_new(c, &dh, NULL, (uint64_t)T * n_embd, 2);
    ds4_error err = {{0}};
    if (rc == 0) {
        rc = ds4_op_hc_pre(&c->ops, AR(&dX), AR(&dmix), WF(&dscale), WF(&dbase), hc, n_embd, T, iters, eps, AR(&dx),
                           AR(&dpost), AR(&dcomb), &err) ||
             ds4_op_hc_head(&c->ops, AR(&dX), AR(&dhmix), WF(&dscale), WF(&dbase), hc, n_embd, T, eps, AR(&dh), &err) ||
             ds4_runtime_finish(c->rt, &err);
        if (rc) fprintf(stderr, "    %s\n", err.msg);
    }
    if (rc == 0)
        rc = dvec_check(c, &dx, x, TOL, "hc_pre x") || dvec_check(c, &dpost, post, TOL, "hc_pre post") ||
             dvec_check(c, &dcomb, comb, TOL, "hc_pre comb") || dvec_check(c, &dh, h, TOL, "hc_head");
    /* hc_post with the reference's post / comb (already checked above). */
    dvec rpost, rcomb;
    if (rc == 0) rc = dvec_new(c, &rpost, post, T * hc, 0) || dvec_new(c, &rcomb, comb, T * hc * hc, 0);
    if (rc == 0) {
        rc = ds4_op_hc_post(&c->ops, AR(&dX), AR(&dy), AR(&rpost), AR(&rcomb), hc, n_embd, T, &err) ||
             ds4_runtime_finish(c->rt, &err);
        if (rc) fprintf(stderr, "    %s\n", err.msg);
    }
    /* hc_pre_norm (on the X after hc_post): xn bit for bit hc_pre +
     * rmsnorm on the device, with and without a norm weight. */
    float *nwv = malloc(sizeof(float) * n_embd), *xn = malloc(sizeof(float) * (uint64_t)T * n_embd);
    dvec dnw, dxn, dxn2;
    if (!nwv || !xn) rc = 1;
    for (uint32_t d = 0; rc == 0 && d < n_embd; d++) nwv[d] = 1.0f + 0.1f * (float)(d % 7);
    if (rc == 0)
        rc = dvec_new(c, &dnw, nwv, n_embd, 1) || dvec_new(c, &dxn, NULL, (uint64_t)T * n_embd, 3) ||
             dvec_new(c, &dxn2, NULL, (uint64_t)T * n_embd, 2);
    for (int with_w = 0; rc == 0 && with_w < 2; with_w++) {
        ds4_wref nw = with_w ? WF(&dnw) : (ds4_wref){NULL, 0, 0};
        rc = ds4_op_hc_pre(&c->ops, AR(&dX), AR(&dmix), WF(&dscale), WF(&dbase), hc, n_embd, T, iters, eps, AR(&dx),
                           AR(&dpost), AR(&dcomb), &err) ||
             ds4_op_rmsnorm(&c->ops, AR(&dx), AR(&dxn), n_embd, T, n_embd, nw, 1e-6f, &err) ||
             ds4_buffer_read(c->rt, dxn.mem, sizeof(float) * dxn.off, xn, sizeof(float) * (uint64_t)T * n_embd,
                             &err) ||
             ds4_op_hc_pre_norm(&c->ops, AR(&dX), AR(&dmix), WF(&dscale), WF(&dbase), hc, n_embd, T, iters, eps,
                                AR(&dx), AR(&dpost), AR(&dcomb), nw, 1e-6f, AR(&dxn2), &err) ||
             ds4_runtime_finish(c->rt, &err);
        if (rc) fprintf(stderr, "    %s\n", err.msg);
        if (rc == 0) rc = dvec_check(c, &dxn2, xn, 0.0f, "hc_pre_norm xn");
    }
    free(nwv);
    free(xn);
    if (rc == 0) rc = dvec_check(c, &dX, Xp, TOL, "hc_post X");
    free(X); free(mix); free(base); free(x); free(post); free(comb); free(y); free(Xp); free(hmix); free(h);
    T_CHECK(rc == 0, "hc case hc %u n_embd %u T %u iters %u", hc, n_embd, T, iters);
    return 0;
}

static int body_hc(ctx *c) {
    if (hc_case(c, 4, 37, 3, 20)) return 1;
    if (hc_case(c, 3, 70, 2, 1)) return 1;
    if (hc_case(c, 1, 5, 1, 2)) return 1;
    if (hc_case(c, 4, 300, 5, 20)) return 1;
    return 0;
}
static int t_hc(void) { return with_ctx(303, body_hc); }

/* -------------------------------------------------------------- RoPE -- */

static int rope_case(ctx *c, uint32_t T, uint32_t heads, uint32_t head_dim, uint32_t n_rot, uint32_t pos_base,
                     uint32_t pos_step, int inverse) {
    uint64_t n = (uint64_t)T * heads * head_dim;
    float *x = fmalloc(n), *want = fmalloc(n), inv[128];
    T_CHECK(x && want && n_rot / 2 <= 128, "oom");
    for (uint32_t i = 0; i < n_rot / 2; i++) inv[i] = powf(10000.0f, -2.0f * (float)i / (float)n_rot);
    fill(&c->rng, x, n, 2.0f);
    memcpy(want, x, sizeof(float) * n);
    ref_rope_tail(want, T, heads, head_dim, n_rot, pos_base, pos_step, inv, inverse);
    dvec dx, dinv;
    int rc = dvec_new(c, &dx, x, n, 5) || dvec_new(c, &dinv, inv, n_rot / 2, 3);
    ds4_error err = {{0}};
    if (rc == 0) {
        rc = ds4_op_rope_tail(&c->ops, AR(&dx), T, heads, head_dim, n_rot, pos_base, pos_step, AR(&dinv), inverse,
                              &err) ||
             ds4_runtime_finish(c->rt, &err);
        if (rc) fprintf(stderr, "    %s\n", err.msg);
    }
    if (rc == 0) rc = dvec_check(c, &dx, want, TOL, "rope");
    /* The inverse undoes the rotation. */
    if (rc == 0) {
        rc = ds4_op_rope_tail(&c->ops, AR(&dx), T, heads, head_dim, n_rot, pos_base, pos_step, AR(&dinv), !inverse,
                              &err) ||
             ds4_runtime_finish(c->rt, &err);
        if (rc) fprintf(stderr, "    %s\n", err.msg);
    }
    if (rc == 0) rc = dvec_check(c, &dx, x, 2 * TOL, "rope round trip");
    free(x);
    free(want);
    T_CHECK(rc == 0, "rope T %u heads %u head_dim %u n_rot %u pos %u+%u*t inverse %d", T, heads, head_dim, n_rot,
            pos_base, pos_step, inverse);
    return 0;
}

static int body_rope(ctx *c) {
    if (rope_case(c, 3, 5, 24, 8, 7, 1, 0)) return 1;
    if (rope_case(c, 4, 1, 64, 64, 4096, 128, 1)) return 1;
    if (rope_case(c, 2, 3, 10, 10, 0, 0, 0)) return 1;
    if (rope_case(c, 5, 7, 512, 64, 1000, 1, 0)) return 1;
    return 0;
}
static int t_rope(void) { return with_ctx(404, body_rope); }

/* ---------------------------------------------------- FP8 / FP4 sims -- */

/* Random values with a random binade per block (2^-30 .. 2^30). */
static void fill_binades(test_rng *r, float *x, uint64_t n, uint32_t block) {
    for (uint64_t b = 0; b < n; b += block) {
        float s = ldexpf(1.0f, (int)(test_rng_u64(r) % 61) - 30);
        for (uint64_t i = b; i < b + block && i < n; i++) x[i] = s * test_rng_f32(r);
    }
}

static int body_fp8(ctx *c) {
    const uint32_t rows = 6, stride = 515, n_sim = 448;
    uint64_t n = (uint64_t)rows * stride;
    float *x = fmalloc(n), *want = fmalloc(n);
    T_CHECK(x && want, "oom");
    fill_binades(&c->rng, x, n, 64);
    /* Row 0 block 0: zeros (amax floor).  Block 1: amax exactly 448 with
     * E4M3 ties (1 + 1/16 -> 1, 1 + 3/16 -> 1.25, 3 * 2^-10 -> 2^-8) and
     * the clamp.  Block 2: amax just above 448 * 2^-20.  Block 3: amax
     * exactly 448 * 2^5. */
    memset(x, 0, 64 * sizeof(float));
    float *b1 = x + 64, *b2 = x + 128, *b3 = x + 192;
    b1[0] = 448.0f; b1[1] = 1.0625f; b1[2] = -1.1875f; b1[3] = 3 * 0x1p-10f; b1[4] = 0x1p-10f;
    b1[5] = -240.0f; b1[6] = 232.0f; b1[7] = 0x1.8p-10f;
    b2[0] = nextafterf(448.0f * 0x1p-20f, 1.0f);
    b3[10] = -448.0f * 32.0f; b3[11] = 1.0625f * 32.0f;
    memcpy(want, x, sizeof(float) * n);
    ref_fp8_sim(want, rows, stride, n_sim);
    dvec dx;
    int rc = dvec_new(c, &dx, x, n, 3);
    ds4_error err = {{0}};
    if (rc == 0) {
        rc = ds4_op_fp8_sim(&c->ops, AR(&dx), rows, stride, n_sim, &err) || ds4_runtime_finish(c->rt, &err);
        if (rc) fprintf(stderr, "    %s\n", err.msg);
    }
    if (rc == 0) rc = dvec_check(c, &dx, want, 0.0f, "fp8_sim");
    free(x);
    free(want);
    return rc;
}
static int t_fp8_sim(void) { return with_ctx(505, body_fp8); }

static int fp4_case(ctx *c, uint32_t rows, uint32_t width, const float *data) {
    uint64_t n = (uint64_t)rows * width;
    float *x = fmalloc(n), *want = fmalloc(n);
    T_CHECK(x && want, "oom");
    if (data) memcpy(x, data, sizeof(float) * n);
    else fill_binades(&c->rng, x, n, width);
    memcpy(want, x, sizeof(float) * n);
    ref_hadamard_fp4(want, rows, width);
    dvec dx;
    int rc = dvec_new(c, &dx, x, n, 1);
    ds4_error err = {{0}};
    if (rc == 0) {
        rc = ds4_op_hadamard_fp4(&c->ops, AR(&dx), rows, width, &err) || ds4_runtime_finish(c->rt, &err);
        if (rc) fprintf(stderr, "    %s\n", err.msg);
    }
    if (rc == 0) rc = dvec_check(c, &dx, want, 0.0f, "hadamard_fp4");
    free(x);
    free(want);
    T_CHECK(rc == 0, "rows %u width %u", rows, width);
    return 0;
}

static int body_fp4(ctx *c) {
    for (uint32_t w = 32; w <= 256; w *= 2)
        if (fp4_case(c, 5, w, NULL)) return 1;
    /* Width 64 (1/sqrt(64) = 1/8 exactly): an input whose transform is
     * exactly y, with E2M1 ties, the clamp and a zero block; plus a zero
     * row. */
    float y[64] = {6.0f, 0.25f, 0.75f, 1.25f, 1.75f, 2.5f, 3.5f, 5.0f, -5.5f, -0.75f, 4.5f};
    for (int i = 32; i < 64; i++) y[i] = 0.0f;
    float in[128];
    for (int i = 0; i < 64; i++) {
        double s = 0;
        for (int j = 0; j < 64; j++) s += (__builtin_popcount(i & j) & 1 ? -1.0 : 1.0) * y[j];
        in[i] = (float)(s / 8.0);
        in[64 + i] = 0.0f;
    }
    float check[64];
    memcpy(check, in, sizeof(check));
    ds4_hadamard(check, 64);
    for (int i = 0; i < 64; i++) T_CHECK(check[i] == y[i], "crafted transform [%d] %g", i, check[i]);
    return fp4_case(c, 2, 64, in);
}
static int t_hadamard_fp4(void) { return with_ctx(606, body_fp4); }

/* The ml_dtypes fixtures of test_qsim through the kernels (FP8 section and
 * the Hadamard-128 + FP4 section). */
static int body_qsim_fixtures(ctx *c) {
    char path[1200];
    snprintf(path, sizeof(path), "%s/tests/fixtures/qsim.bin", test_root_dir());
    FILE *fp = fopen(path, "rb");
    T_CHECK(fp != NULL, "cannot open %s", path);
    char magic[8];
    uint32_t n_sections = 0;
    int rc = !(fread(magic, 1, 8, fp) == 8 && memcmp(magic, "DS4QSIM1", 8) == 0 && fread(&n_sections, 4, 1, fp) == 1);
    int tested = 0;
    for (uint32_t s = 0; s < n_sections && rc == 0; s++) {
        uint32_t hdr[2];
        if (fread(hdr, 4, 2, fp) != 2 || hdr[1] == 0 || hdr[1] > (1u << 20)) { rc = 1; break; }
        uint32_t kind = hdr[0], n = hdr[1];
        float *x = fmalloc(n), *want = fmalloc(n);
        if (!x || !want || fread(x, 4, n, fp) != n || fread(want, 4, n, fp) != n) rc = 1;
        dvec dx;
        ds4_error err = {{0}};
        if (rc == 0 && ((kind == 0 && n % 64 == 0) || (kind == 2 && n % 128 == 0))) {
            rc = dvec_new(c, &dx, x, n, 2);
            if (rc == 0) {
                rc = (kind == 0 ? ds4_op_fp8_sim(&c->ops, AR(&dx), n / 64, 64, 64, &err)
                                : ds4_op_hadamard_fp4(&c->ops, AR(&dx), n / 128, 128, &err)) ||
                     ds4_runtime_finish(c->rt, &err);
                if (rc) fprintf(stderr, "    %s\n", err.msg);
            }
            if (rc == 0) rc = dvec_check(c, &dx, want, 0.0f, kind == 0 ? "fixture fp8" : "fixture hadamard_fp4");
            tested++;
        }
        free(x);
        free(want);
    }
    fclose(fp);
    T_CHECK(rc == 0 && tested == 2, "fixture sections: rc %d, %d tested", rc, tested);
    return 0;
}
static int t_qsim_fixtures(void) { return with_ctx(607, body_qsim_fixtures); }

/* ---------------------------------------------------------- KV store -- */

static int body_kv_store(ctx *c) {
    const uint32_t width = 37, cap = 7;
    float kv[7 * 37];
    fill(&c->rng, kv, 7 * 37, 3.0f);
    /* f16 rounding edges: ties, subnormals, overflow. */
    const float edge[] = {1.0f + 0x1p-11f, 1.0f + 3 * 0x1p-11f, 0x1p-25f, 3 * 0x1p-25f, 65519.0f, 65520.0f,
                          -70000.0f,       1e-8f,               -0.0f,    0x1.ffcp-15f, 0x1p-14f, -2049.0f};
    memcpy(kv, edge, sizeof(edge));
    for (int rnd = 0; rnd < 2; rnd++) {
        const uint32_t cases[3][2] = {{5, 4}, {0, 7}, {13, 1}}; /* pos0, T */
        for (int k = 0; k < 3; k++) {
            uint32_t pos0 = cases[k][0], T = cases[k][1];
            float ring[7 * 37];
            for (int i = 0; i < 7 * 37; i++) ring[i] = (float)i;
            dvec dkv, dring;
            int rc = dvec_new(c, &dkv, kv, (uint64_t)T * width, 2) || dvec_new(c, &dring, ring, cap * width, 4);
            T_CHECK(rc == 0, "prepare");
            ref_kv_store(kv, ring, width, cap, pos0, T, rnd);
            OP(ds4_op_kv_store(&c->ops, AR(&dkv), AR(&dring), width, cap, pos0, T, rnd, &err));
            T_CHECK(dvec_check(c, &dring, ring, 0.0f, "kv ring") == 0, "pos0 %u T %u round %d", pos0, T, rnd);
            clReleaseMemObject(dkv.mem);
            clReleaseMemObject(dring.mem);
            c->n_mems -= 2;
        }
    }
    return 0;
}
static int t_kv_store(void) { return with_ctx(707, body_kv_store); }

/* ------------------------------------------------------------ router -- */

static int router_case(ctx *c, uint32_t n_expert, uint32_t n_used, uint32_t T, bool with_bias, bool hash) {
    const uint32_t n_vocab = 9;
    float *logits = fmalloc((uint64_t)T * n_expert), *bias = fmalloc(n_expert), *w = fmalloc((uint64_t)T * n_used);
    int32_t *sel = malloc(4 * (uint64_t)T * n_used), *tab = malloc(4 * (uint64_t)n_vocab * n_used), tok[16];
    T_CHECK(logits && bias && w && sel && tab && T <= 16, "oom");
    fill(&c->rng, logits, (uint64_t)T * n_expert, 4.0f);
    fill(&c->rng, bias, n_expert, 0.5f);
    /* Token 0: experts 3 and 7 tie on top (lower id first); token 1: two
     * logits past softplus's linear threshold. */
    logits[3] = logits[7] = 9.0f;
    if (with_bias) bias[3] = bias[7] = 0.25f;
    if (T > 1) {
        logits[n_expert + 1] = 25.0f;
        logits[n_expert + 2] = 30.0f;
    }
    for (uint32_t i = 0; i < n_vocab * n_used; i++) tab[i] = (int32_t)(test_rng_u64(&c->rng) % n_expert);
    tab[1 * n_used + 0] = tab[1 * n_used + 1]; /* a duplicate */
    tab[2 * n_used + 1] = (int32_t)n_expert;   /* corrupt ids */
    tab[2 * n_used + 0] = -1;
    for (uint32_t t = 0; t < T; t++) tok[t] = (int32_t)(t % n_vocab);
    ref_router(logits, n_expert, n_used, T, with_bias ? bias : NULL, hash ? tab : NULL, tok, 1.5f, sel, w);
    if (!hash) T_CHECK(sel[0] == 3 && sel[1] == 7, "reference tie order %d %d", sel[0], sel[1]);
    dvec dl, db, dw;
    cl_mem dsel = NULL, dtab = NULL, dtok = NULL;
    int rc = dvec_new(c, &dl, logits, (uint64_t)T * n_expert, 3) || dvec_new(c, &db, bias, n_expert, 1) ||
             dvec_new(c, &dw, NULL, (uint64_t)T * n_used, 2) || buf_new(c, 4 * ((uint64_t)T * n_used + PAD), &dsel) ||
             buf_new(c, 4 * ((uint64_t)n_vocab * n_used + 2), &dtab) || buf_new(c, 4 * (T + 1), &dtok);
    ds4_error err = {{0}};
    if (rc == 0) {
        int32_t minus[16 * 64 + PAD];
        for (uint32_t i = 0; i < T * n_used + PAD; i++) minus[i] = -7;
        rc = ds4_buffer_write(c->rt, dsel, 0, minus, 4 * ((uint64_t)T * n_used + PAD), &err) ||
             ds4_buffer_write(c->rt, dtab, 8, tab, 4 * (uint64_t)n_vocab * n_used, &err) ||
             ds4_buffer_write(c->rt, dtok, 4, tok, 4 * T, &err);
    }
    if (rc == 0) {
        ds4_wref B = with_bias ? WF(&db) : (ds4_wref){NULL, 0, DS4_TYPE_F32};
        ds4_wref H = hash ? (ds4_wref){dtab, 8, DS4_TYPE_I32} : (ds4_wref){NULL, 0, DS4_TYPE_I32};
        rc = ds4_op_router(&c->ops, AR(&dl), n_expert, n_used, T, B, H, dtok, 1, 1.5f, dsel, AR(&dw), &err) ||
             ds4_runtime_finish(c->rt, &err);
        if (rc) fprintf(stderr, "    %s\n", err.msg);
    }
    if (rc == 0) rc = dvec_check(c, &dw, w, TOL, "router w");
    if (rc == 0) {
        int32_t got[16 * 64 + PAD];
        rc = ds4_buffer_read(c->rt, dsel, 0, got, 4 * ((uint64_t)T * n_used + PAD), &err);
        for (uint32_t i = 0; rc == 0 && i < T * n_used + PAD; i++) {
            int32_t want = i < T * n_used ? sel[i] : -7;
            if (got[i] != want) {
                fprintf(stderr, "    sel[%u] = %d, want %d\n", i, got[i], want);
                rc = 1;
            }
        }
    }
    free(logits); free(bias); free(w); free(sel); free(tab);
    T_CHECK(rc == 0, "router n_expert %u n_used %u T %u bias %d hash %d", n_expert, n_used, T, with_bias, hash);
    return 0;
}

static int body_router(ctx *c) {
    if (router_case(c, 19, 4, 6, false, false)) return 1;
    if (router_case(c, 19, 4, 6, true, false)) return 1;
    if (router_case(c, 19, 4, 6, false, true)) return 1;
    if (router_case(c, 256, 6, 5, true, false)) return 1;
    if (router_case(c, 8, 8, 2, true, false)) return 1;
    return 0;
}
static int t_router(void) { return with_ctx(808, body_router); }

/* ------------------------------------------------- SwiGLU, sums, add -- */

static int body_swiglu(ctx *c) {
    const uint32_t n = 37, rows = 5;
    float g[5 * 37], u[5 * 37], w[5], want[5 * 37];
    fill(&c->rng, g, n * rows, 15.0f);
    fill(&c->rng, u, n * rows, 15.0f);
    fill(&c->rng, w, rows, 1.0f);
    for (int weighted = 0; weighted < 2; weighted++) {
        ref_swiglu(g, u, weighted ? w : NULL, n, rows, 10.0f, want);
        dvec dg, du, dw, dm;
        T_CHECK(dvec_new(c, &dg, g, n * rows, 3) == 0 && dvec_new(c, &du, u, n * rows, 0) == 0 &&
                    dvec_new(c, &dw, w, rows, 1) == 0 && dvec_new(c, &dm, NULL, n * rows, 2) == 0,
                "prepare");
        ds4_aref W = weighted ? AR(&dw) : (ds4_aref){NULL, 0};
        OP(ds4_op_swiglu(&c->ops, AR(&dg), AR(&du), W, n, rows, 10.0f, AR(&dm), &err));
        T_CHECK(dvec_check(c, &dm, want, TOL, "swiglu") == 0, "weighted %d", weighted);
        /* In place over g. */
        OP(ds4_op_swiglu(&c->ops, AR(&dg), AR(&du), W, n, rows, 10.0f, AR(&dg), &err));
        T_CHECK(dvec_check(c, &dg, want, TOL, "swiglu in place") == 0, "weighted %d", weighted);
    }
    return 0;
}
static int t_swiglu(void) { return with_ctx(909, body_swiglu); }

static int body_sums(ctx *c) {
    const uint32_t n_used = 3, n = 37, T = 4;
    float y[4 * 3 * 37], add[4 * 37], want[4 * 37];
    fill(&c->rng, y, T * n_used * n, 2.0f);
    fill(&c->rng, add, T * n, 2.0f);
    for (int with_add = 0; with_add < 2; with_add++) {
        ref_moe_sum(y, n_used, n, T, with_add ? add : NULL, want);
        dvec dy, da, dout;
        T_CHECK(dvec_new(c, &dy, y, T * n_used * n, 1) == 0 && dvec_new(c, &da, add, T * n, 2) == 0 &&
                    dvec_new(c, &dout, NULL, T * n, 3) == 0,
                "prepare");
        OP(ds4_op_moe_sum(&c->ops, AR(&dy), n_used, n, T, with_add ? AR(&da) : (ds4_aref){NULL, 0}, AR(&dout), &err));
        T_CHECK(dvec_check(c, &dout, want, TOL, "moe_sum") == 0, "add %d", with_add);
    }
    /* add: separate output, then in place over a. */
    const uint64_t na = 1001;
    float *a = fmalloc(na), *b = fmalloc(na), *s = fmalloc(na);
    T_CHECK(a && b && s, "oom");
    fill(&c->rng, a, na, 3.0f);
    fill(&c->rng, b, na, 3.0f);
    ref_add(a, b, s, na);
    dvec da, db, dout;
    int rc = dvec_new(c, &da, a, na, 1) || dvec_new(c, &db, b, na, 0) || dvec_new(c, &dout, NULL, na, 5);
    ds4_error err = {{0}};
    if (rc == 0)
        rc = ds4_op_add(&c->ops, AR(&da), AR(&db), AR(&dout), na, &err) ||
             ds4_op_add(&c->ops, AR(&da), AR(&db), AR(&da), na, &err) || ds4_runtime_finish(c->rt, &err);
    if (rc) fprintf(stderr, "    %s\n", err.msg);
    if (rc == 0) rc = dvec_check(c, &dout, s, 0.0f, "add") || dvec_check(c, &da, s, 0.0f, "add in place");
    free(a); free(b); free(s);
    return rc;
}
static int t_sums(void) { return with_ctx(1010, body_sums); }

/* ------------------------------------------------------------ errors -- */

/* call must fail with a message containing both words. */
#define BAD(call, w1, w2)                                                          \
    do {                                                                           \
        ds4_error err = {{0}};                                                     \
        int bad_rc_ = (call);                                                      \
        T_CHECK(bad_rc_ != 0, "accepted: %s", #call);                              \
        T_CHECK(strstr(err.msg, w1) && strstr(err.msg, w2), "message \"%s\" lacks %s / %s", err.msg, w1, w2); \
    } while (0)

static int body_errors(ctx *c) {
    dvec v;
    T_CHECK(dvec_new(c, &v, NULL, 1024, 0) == 0, "prepare");
    float sent[1024 + PAD];
    for (int i = 0; i < 1024 + PAD; i++) sent[i] = SENTINEL;
    ds4_aref A = AR(&v), none = {NULL, 0};
    ds4_wref nw = {NULL, 0, DS4_TYPE_F32}, wf = {v.mem, 0, DS4_TYPE_F32};
    ds4_wref wq4 = {v.mem, 0, DS4_TYPE_Q4_K}, wodd = {v.mem, 2, DS4_TYPE_F32};
    BAD(ds4_op_embed(&c->ops, wq4, 256, v.mem, 0, 1, 4, A, &err), "embed", "Q4_K");
    BAD(ds4_op_embed(&c->ops, (ds4_wref){v.mem, 0, DS4_TYPE_Q8_0}, 48, v.mem, 0, 1, 4, A, &err), "embed", "blocks");
    BAD(ds4_op_rmsnorm(&c->ops, A, A, 600, 2, 600, nw, 1e-6f, &err), "rmsnorm", "buffer");
    BAD(ds4_op_rmsnorm(&c->ops, A, A, 8, 2, 4, nw, 1e-6f, &err), "rmsnorm", "stride");
    BAD(ds4_op_rmsnorm(&c->ops, A, A, 8, 2, 8, wodd, 1e-6f, &err), "rmsnorm", "aligned");
    BAD(ds4_op_rmsnorm(&c->ops, none, A, 8, 2, 8, nw, 1e-6f, &err), "rmsnorm", "NULL");
    BAD(ds4_op_hc_pre(&c->ops, A, A, wf, wf, 17, 4, 1, 20, 1e-6f, A, A, A, &err), "hc_pre", "n_hc");
    BAD(ds4_op_hc_pre(&c->ops, A, A, wf, wf, 4, 4, 1, 0, 1e-6f, A, A, A, &err), "hc_pre", "iterations");
    BAD(ds4_op_hc_head(&c->ops, A, A, wq4, wf, 4, 4, 1, 1e-6f, A, &err), "hc_head", "F32");
    BAD(ds4_op_hc_post(&c->ops, A, A, A, A, 4, 300, 1, &err), "hc_post", "buffer");
    BAD(ds4_op_rope_tail(&c->ops, A, 1, 2, 16, 7, 0, 1, A, 0, &err), "rope_tail", "n_rot");
    BAD(ds4_op_rope_tail(&c->ops, A, 1, 2, 16, 18, 0, 1, A, 0, &err), "rope_tail", "n_rot");
    BAD(ds4_op_fp8_sim(&c->ops, A, 2, 128, 65, &err), "fp8_sim", "multiple");
    BAD(ds4_op_fp8_sim(&c->ops, A, 2, 64, 128, &err), "fp8_sim", "stride");
    BAD(ds4_op_hadamard_fp4(&c->ops, A, 2, 48, &err), "hadamard_fp4", "power of two");
    BAD(ds4_op_hadamard_fp4(&c->ops, A, 2, 512, &err), "hadamard_fp4", "power of two");
    BAD(ds4_op_kv_store(&c->ops, A, A, 8, 4, 0, 5, 0, &err), "kv_store", "ring");
    BAD(ds4_op_router(&c->ops, A, 8, 9, 1, nw, nw, NULL, 0, 1.5f, v.mem, A, &err), "router", "n_used");
    BAD(ds4_op_router(&c->ops, A, 8, 2, 1, nw, wf, v.mem, 0, 1.5f, v.mem, A, &err), "router", "I32");
    BAD(ds4_op_router(&c->ops, A, 8, 2, 1, nw, (ds4_wref){v.mem, 0, DS4_TYPE_I32}, NULL, 0, 1.5f, v.mem, A, &err),
        "router", "tokens");
    BAD(ds4_op_swiglu(&c->ops, A, A, none, 8, 2, 0.0f, A, &err), "swiglu", "clamp");
    BAD(ds4_op_swiglu(&c->ops, A, A, none, 1000, 2, 10.0f, A, &err), "swiglu", "buffer");
    BAD(ds4_op_moe_sum(&c->ops, A, 0, 8, 1, none, A, &err), "moe_sum", "n_used");
    BAD(ds4_op_add(&c->ops, A, A, (ds4_aref){v.mem, 1000}, 100, &err), "add", "out");
    /* Nothing was enqueued: the buffer is untouched. */
    ds4_error err = {{0}};
    T_CHECK(ds4_runtime_finish(c->rt, &err) == 0, "%s", err.msg);
    T_CHECK(dvec_check(c, &v, sent, 0.0f, "untouched") == 0, "a failed call wrote");
    /* Zero-sized calls are no-ops. */
    T_CHECK(ds4_op_rmsnorm(&c->ops, A, A, 8, 0, 8, nw, 1e-6f, &err) == 0, "%s", err.msg);
    T_CHECK(ds4_op_add(&c->ops, A, A, A, 0, &err) == 0, "%s", err.msg);
    return 0;
}
static int t_errors(void) { return with_ctx(1111, body_errors); }

/* ds4_ops_init creates every dense kernel; ds4_ops_free clears all. */
static int body_init(ctx *c) {
    const cl_kernel ks[] = {c->ops.embed,  c->ops.rmsnorm, c->ops.hc_pre,   c->ops.hc_post, c->ops.hc_head,
                            c->ops.rope_tail, c->ops.fp8_sim, c->ops.hadamard_fp4, c->ops.kv_store,
                            c->ops.router, c->ops.swiglu, c->ops.moe_sum, c->ops.add};
    for (size_t i = 0; i < sizeof(ks) / sizeof(ks[0]); i++) T_CHECK(ks[i] != NULL, "kernel %zu missing", i);
    ds4_ops_free(&c->ops);
    c->have_ops = 0;
    T_CHECK(c->ops.embed == NULL && c->ops.add == NULL && c->ops.rt == NULL, "ds4_ops_free left state");
    return 0;
}
static int t_init(void) { return with_ctx(1212, body_init); }

void tests_register_ops_dense(void) {
    test_add("ops_dense_init", t_init);
    test_add("ops_dense_embed", t_embed);
    test_add("ops_dense_rmsnorm", t_rmsnorm);
    test_add("ops_dense_hc", t_hc);
    test_add("ops_dense_rope", t_rope);
    test_add("ops_dense_fp8_sim", t_fp8_sim);
    test_add("ops_dense_hadamard_fp4", t_hadamard_fp4);
    test_add("ops_dense_qsim_fixtures", t_qsim_fixtures);
    test_add("ops_dense_kv_store", t_kv_store);
    test_add("ops_dense_router", t_router);
    test_add("ops_dense_swiglu", t_swiglu);
    test_add("ops_dense_sums", t_sums);
    test_add("ops_dense_errors", t_errors);
}
