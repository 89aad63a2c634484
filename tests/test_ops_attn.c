/* test_ops_attn.c - the attention-side ops of src/ops_attn.c against the
 * host references of tests/ref_attn.c, on random data.
 *
 * Every case runs on two builds of the program: the device defaults, and
 * a variant with other work-group shapes (the GPU defaults of attention,
 * 8 teams of 32 lanes, and of top-k; tiny compressor / indexer groups;
 * indexer head chunks that do not divide the heads; cooperating matvec
 * lanes and the hardware f16 path), so PoCL covers the GPU code paths.
 *   - compressor: a stream fed token by token, in chunks of mixed sizes
 *     (with a non-zero out_first) and in one chunk must give bit-identical
 *     rows and frontier, and match the reference (ratio 4 and 128, APE in
 *     F32 / F16 / BF16);
 *   - indexer scores: masked rows exactly -1e30, visible rows within
 *     1e-5 of the sum of |terms|;
 *   - top-k: exactly the reference's indices, with ties (-0 and +0
 *     included), fewer visible rows than k, invisible rows holding the
 *     largest scores, and 2^18 visible rows;
 *   - attention: raw window with wrap-around in the ring, dense and
 *     selected compressed rows (invalid, future and repeated entries),
 *     ratio 128, head width 512, and decode-shaped calls that the
 *     GPU-style build splits over KV ranges; within 2e-5;
 *   - MoE: every weight type with kernels, one input per token and per
 *     slot, ragged rows, non-zero offsets; within 1e-4 * sum|w*x|;
 *   - bad calls fail naming the op before anything is enqueued.
 * Floats around every output are sentinels that must stay untouched.
 */
#include <string.h>

#include "../src/kernels.h"
#include "../src/ops.h"
#include "../src/quant.h"
#include "ref_attn.h"
#include "test.h"

#define VARIANT_OPTIONS                                                            \
    "-DATT_WG=256 -DATT_TEAMS=8 -DTOPK_WG=256 -DCOMP_WG=8 -DIDX_WG=8 " \
    "-DIDX_HC=3 -DMV_LANES=4 -DMV_ROWS=3 -DMM_TOKENS=3 -DDS4_F16_HW=1"
static const char *const variants[2] = {NULL, VARIANT_OPTIONS};

#define SENTINEL (-12345.0f)
#define GUARD 7 /* sentinel floats before and after each output */

/* ------------------------------------------------------------- helpers -- */

/* The kernels and ops of one build. */
typedef struct {
    ds4_kernels k;
    ds4_ops ops;
    bool k_ready;
} env;

static void env_close(env *e) {
    cl_kernel *mine[] = {&e->ops.comp_update, &e->ops.indexer_scores, &e->ops.topk, &e->ops.attention,
                         &e->ops.attention_combine};
    if (e->ops.att_part) clReleaseMemObject(e->ops.att_part);
    for (size_t i = 0; i < sizeof(mine) / sizeof(mine[0]); i++)
        if (*mine[i]) clReleaseKernel(*mine[i]);
    for (int t = 0; t < DS4_TYPE_COUNT; t++)
        if (e->ops.moe_matmul[t]) clReleaseKernel(e->ops.moe_matmul[t]);
    memset(&e->ops, 0, sizeof(e->ops));
    if (e->k_ready) ds4_kernels_free(&e->k);
    e->k_ready = false;
}

static int env_open(env *e, const char *options) {
    memset(e, 0, sizeof(*e));
    ds4_runtime *rt = test_runtime();
    T_CHECK(rt != NULL, "no OpenCL runtime");
    ds4_error err = {{0}};
    T_CHECK(ds4_kernels_init(&e->k, rt, options, &err) == 0, "%s", err.msg);
    e->k_ready = true;
    e->ops.k = &e->k;
    e->ops.rt = rt;
    if (ds4_ops_attn_init(&e->ops, &err) != 0) {
        env_close(e);
        T_CHECK(0, "%s", err.msg);
    }
    return 0;
}

/* Host and device allocations of one case, freed together. */
#define POOL_MAX 48
typedef struct {
    void *host[POOL_MAX];
    cl_mem mem[POOL_MAX];
    int n_host, n_mem;
} pool;

static void pool_free(pool *p) {
    for (int i = 0; i < p->n_host; i++) free(p->host[i]);
    for (int i = 0; i < p->n_mem; i++) clReleaseMemObject(p->mem[i]);
    memset(p, 0, sizeof(*p));
}

static void *pool_alloc(pool *p, size_t bytes) {
    if (p->n_host == POOL_MAX) return NULL;
    void *m = calloc(1, bytes ? bytes : 1);
    if (m) p->host[p->n_host++] = m;
    return m;
}

/* A device buffer of `bytes`, filled from src when src is not NULL. */
static cl_mem pool_buf(pool *p, const void *src, size_t bytes) {
    ds4_runtime *rt = test_runtime();
    ds4_error err = {{0}};
    cl_mem m = NULL;
    if (!rt || p->n_mem == POOL_MAX || ds4_buffer_new(rt, bytes ? bytes : 4, &m, &err) != 0) {
        fprintf(stderr, "    buffer of %zu bytes: %s\n", bytes, err.msg);
        return NULL;
    }
    p->mem[p->n_mem++] = m;
    if (src && ds4_buffer_write(rt, m, 0, src, bytes, &err) != 0) {
        fprintf(stderr, "    writing %zu bytes: %s\n", bytes, err.msg);
        return NULL;
    }
    return m;
}

static float *rand_floats(pool *p, size_t n, float scale, test_rng *rng) {
    float *v = pool_alloc(p, sizeof(float) * n);
    if (v)
        for (size_t i = 0; i < n; i++) v[i] = scale * test_rng_f32(rng);
    return v;
}

/* n values + GUARD sentinels on both sides. */
static float *sentinel_floats(pool *p, size_t n) {
    float *v = pool_alloc(p, sizeof(float) * (n + 2 * GUARD));
    if (v)
        for (size_t i = 0; i < n + 2 * GUARD; i++) v[i] = SENTINEL;
    return v;
}

static int read_floats(cl_mem m, float *dst, size_t n) {
    ds4_error err = {{0}};
    T_CHECK(ds4_buffer_read(test_runtime(), m, 0, dst, sizeof(float) * n, &err) == 0, "%s", err.msg);
    return 0;
}

/* The GUARD floats on each side of [GUARD, GUARD + n) are still sentinels. */
static int check_guards(const float *v, size_t n, const char *what) {
    for (size_t i = 0; i < GUARD; i++) {
        T_CHECK(v[i] == SENTINEL, "%s: float %zu before the output was written", what, GUARD - i);
        T_CHECK(v[GUARD + n + i] == SENTINEL, "%s: float %zu after the output was written", what, i);
    }
    return 0;
}

static ds4_aref A(cl_mem m, uint64_t off) { return (ds4_aref){m, off}; }

/* A small weight vector of n values in `type` (F32/F16/BF16), from f32. */
static void *make_weights(pool *p, const float *v, size_t n, uint32_t type) {
    void *w = pool_alloc(p, ds4_row_bytes(type, n) + 4);
    if (w && ds4_quantize_row(type, v, w, n, NULL) != 0) return NULL;
    return w;
}

/* --------------------------------------------------------- compressor -- */

typedef struct {
    uint32_t D, ratio, n_tok, ape_type;
} comp_case;

/* Feed the stream to the device in chunks (sizes cycle through `sched`),
 * rows into [GUARD ..) of a fresh buffer; read back rows and frontier. */
static int comp_stream(env *e, pool *p, const comp_case *c, const uint32_t *sched, int n_sched, int use_first,
                       cl_mem kvb, cl_mem scb, cl_mem apeb, float *rows, float *skv, float *ssc) {
    const uint32_t W = c->ratio == 4 ? 2 * c->D : c->D, srows = c->ratio == 4 ? 8 : 128;
    const uint32_t n_out = c->n_tok / c->ratio;
    ds4_error err = {{0}};
    float *init_sc = pool_alloc(p, sizeof(float) * srows * W);
    T_CHECK(init_sc != NULL, "alloc");
    for (uint32_t i = 0; i < srows * W; i++) init_sc[i] = -1e30f;
    float *init_rows = sentinel_floats(p, (size_t)n_out * c->D);
    T_CHECK(init_rows != NULL, "alloc");
    cl_mem skvb = pool_buf(p, NULL, sizeof(float) * srows * W), sscb = pool_buf(p, init_sc, sizeof(float) * srows * W);
    cl_mem outb = pool_buf(p, init_rows, sizeof(float) * ((size_t)n_out * c->D + 2 * GUARD));
    T_CHECK(skvb && sscb && outb, "buffers");
    float zero = 0.0f;
    T_CHECK(clEnqueueFillBuffer(e->ops.rt->queue, skvb, &zero, sizeof(zero), 0, sizeof(float) * srows * W, 0, NULL,
                                NULL) == CL_SUCCESS,
            "fill");
    ds4_wref ape = {apeb, 0, c->ape_type};
    uint32_t pos = 0;
    for (int i = 0; pos < c->n_tok; i++) {
        uint32_t T = sched[i % n_sched];
        if (T > c->n_tok - pos) T = c->n_tok - pos;
        /* With use_first, out starts at this chunk's first emitted row. */
        uint32_t first = use_first ? pos / c->ratio : 0;
        int rc = ds4_op_comp_update(&e->ops, A(kvb, (uint64_t)pos * W), A(scb, (uint64_t)pos * W), ape, A(skvb, 0),
                                    A(sscb, 0), c->D, c->ratio, pos, T, A(outb, GUARD + (uint64_t)first * c->D),
                                    first, &err);
        T_CHECK(rc == 0, "%s", err.msg);
        pos += T;
    }
    if (read_floats(outb, rows, (size_t)n_out * c->D + 2 * GUARD) || read_floats(skvb, skv, (size_t)srows * W) ||
        read_floats(sscb, ssc, (size_t)srows * W))
        return 1;
    return check_guards(rows, (size_t)n_out * c->D, "compressor rows");
}

static int comp_check(env *e, const comp_case *c, uint64_t seed) {
    pool p = {0};
    test_rng rng = {seed};
    const uint32_t W = c->ratio == 4 ? 2 * c->D : c->D, srows = c->ratio == 4 ? 8 : 128;
    const uint32_t n_out = c->n_tok / c->ratio;
    const size_t n_rows_f = (size_t)n_out * c->D + 2 * GUARD, n_state = (size_t)srows * W;
    int rc = 1;
    float *kv = rand_floats(&p, (size_t)c->n_tok * W, 1.0f, &rng);
    float *sc = rand_floats(&p, (size_t)c->n_tok * W, 3.0f, &rng);
    float *apef = rand_floats(&p, (size_t)c->ratio * W, 2.0f, &rng);
    void *ape = apef ? make_weights(&p, apef, (size_t)c->ratio * W, c->ape_type) : NULL;
    float *rows[3], *skv[3], *ssc[3];
    for (int i = 0; i < 3; i++) {
        rows[i] = pool_alloc(&p, sizeof(float) * n_rows_f);
        skv[i] = pool_alloc(&p, sizeof(float) * n_state);
        ssc[i] = pool_alloc(&p, sizeof(float) * n_state);
    }
    float *ref_rows = pool_alloc(&p, sizeof(float) * n_rows_f), *ref_kv = pool_alloc(&p, sizeof(float) * n_state),
          *ref_sc = pool_alloc(&p, sizeof(float) * n_state);
    if (!kv || !sc || !ape || !rows[2] || !ssc[2] || !ref_sc) goto done;
    for (size_t i = 0; i < n_state; i++) ref_sc[i] = -1e30f;
    if (ref_comp_update(kv, sc, ape, c->ape_type, ref_kv, ref_sc, c->D, c->ratio, 0, c->n_tok, ref_rows, 0) != 0)
        goto done;

    cl_mem kvb = pool_buf(&p, kv, sizeof(float) * c->n_tok * W), scb = pool_buf(&p, sc, sizeof(float) * c->n_tok * W);
    cl_mem apeb = pool_buf(&p, ape, ds4_row_bytes(c->ape_type, (size_t)c->ratio * W));
    if (!kvb || !scb || !apeb) goto done;
    static const uint32_t one[] = {1}, mixed[] = {3, 1, 7, 2, 5, 11, 4, 130, 6};
    const uint32_t all[] = {c->n_tok};
    if (comp_stream(e, &p, c, one, 1, 0, kvb, scb, apeb, rows[0], skv[0], ssc[0]) ||
        comp_stream(e, &p, c, mixed, 9, 1, kvb, scb, apeb, rows[1], skv[1], ssc[1]) ||
        comp_stream(e, &p, c, all, 1, 0, kvb, scb, apeb, rows[2], skv[2], ssc[2]))
        goto done;
    for (int i = 1; i < 3; i++) {
        if (memcmp(rows[i], rows[0], sizeof(float) * n_rows_f) || memcmp(skv[i], skv[0], sizeof(float) * n_state) ||
            memcmp(ssc[i], ssc[0], sizeof(float) * n_state)) {
            fprintf(stderr, "    compressor r%u D%u: schedule %d differs from token by token\n", c->ratio, c->D, i);
            goto done;
        }
    }
    for (size_t i = 0; i < (size_t)n_out * c->D; i++) {
        float got = rows[0][GUARD + i], want = ref_rows[i];
        if (!(fabsf(got - want) <= 2e-6f)) {
            fprintf(stderr, "    compressor r%u D%u: row %zu dim %zu got %.9g want %.9g\n", c->ratio, c->D,
                    i / c->D, i % c->D, got, want);
            goto done;
        }
    }
    if (memcmp(skv[0], ref_kv, sizeof(float) * n_state) || memcmp(ssc[0], ref_sc, sizeof(float) * n_state)) {
        fprintf(stderr, "    compressor r%u D%u: frontier differs from the reference\n", c->ratio, c->D);
        goto done;
    }
    rc = 0;
done:
    if (rc) fprintf(stderr, "    (compressor case r%u D%u n_tok %u)\n", c->ratio, c->D, c->n_tok);
    pool_free(&p);
    return rc;
}

/* ------------------------------------------------------------ indexer -- */

typedef struct {
    uint32_t n_head, dim, n_rows, pos0, T;
} idx_case;

static int idx_check(env *e, const idx_case *c, uint64_t seed) {
    pool p = {0};
    test_rng rng = {seed};
    int rc = 1;
    ds4_error err = {{0}};
    const size_t nq = (size_t)c->T * c->n_head * c->dim, ns = (size_t)c->T * c->n_rows;
    float *q = rand_floats(&p, nq, 1.0f, &rng), *w = rand_floats(&p, (size_t)c->T * c->n_head, 1.0f, &rng);
    float *rows = rand_floats(&p, (size_t)c->n_rows * c->dim, 1.0f, &rng);
    float *got = sentinel_floats(&p, ns), *want = pool_alloc(&p, sizeof(float) * ns);
    if (!q || !w || !rows || !got || !want) goto done;
    ref_indexer_scores(q, w, rows, c->n_head, c->dim, c->n_rows, c->pos0, c->T, want);
    cl_mem qb = pool_buf(&p, q, sizeof(float) * nq), wb = pool_buf(&p, w, sizeof(float) * c->T * c->n_head);
    cl_mem rb = pool_buf(&p, rows, sizeof(float) * c->n_rows * c->dim);
    cl_mem sb = pool_buf(&p, got, sizeof(float) * (ns + 2 * GUARD));
    if (!qb || !wb || !rb || !sb) goto done;
    if (ds4_op_indexer_scores(&e->ops, A(qb, 0), A(wb, 0), A(rb, 0), c->n_head, c->dim, c->n_rows, c->pos0, c->T,
                              A(sb, GUARD), &err) != 0) {
        fprintf(stderr, "    %s\n", err.msg);
        goto done;
    }
    if (read_floats(sb, got, ns + 2 * GUARD) || check_guards(got, ns, "indexer scores")) goto done;
    for (uint32_t t = 0; t < c->T; t++)
        for (uint32_t r = 0; r < c->n_rows; r++) {
            float g = got[GUARD + (size_t)t * c->n_rows + r], v = want[(size_t)t * c->n_rows + r];
            double tol = 1e-6;
            if (r < (c->pos0 + t + 1) / 4) {
                for (uint32_t h = 0; h < c->n_head; h++) {
                    double a = 0;
                    for (uint32_t i = 0; i < c->dim; i++)
                        a += fabs((double)q[((size_t)t * c->n_head + h) * c->dim + i] * rows[(size_t)r * c->dim + i]);
                    tol += 1e-5 * fabs(w[(size_t)t * c->n_head + h]) * a;
                }
            } else if (g != -1e30f) {
                fprintf(stderr, "    token %u row %u is not visible but scored %.9g\n", t, r, g);
                goto done;
            }
            if (!(fabs((double)g - v) <= tol)) {
                fprintf(stderr, "    token %u row %u got %.9g want %.9g (tol %.3g)\n", t, r, g, v, tol);
                goto done;
            }
        }
    rc = 0;
done:
    if (rc) fprintf(stderr, "    (indexer case heads %u dim %u rows %u pos0 %u T %u)\n", c->n_head, c->dim, c->n_rows,
                    c->pos0, c->T);
    pool_free(&p);
    return rc;
}

/* -------------------------------------------------------------- top-k -- */

typedef struct {
    uint32_t n_rows, k, pos0, T;
    int kind; /* 0 random, 1 few values with ties (+-0 included), 2 all equal, 3 fine steps */
} topk_case;

static float topk_value(int kind, test_rng *rng) {
    static const float few[] = {0.0f, -0.0f, 1.0f, -1.0f, 2.5f, -1e30f};
    switch (kind) {
    case 1: return few[test_rng_u64(rng) % 6];
    case 2: return 0.75f;
    case 3: return (float)(int)(test_rng_f32(rng) * 4096.0f) / 1024.0f;
    default: return 100.0f * test_rng_f32(rng);
    }
}

static int topk_check(env *e, const topk_case *c, uint64_t seed) {
    pool p = {0};
    test_rng rng = {seed};
    int rc = 1;
    ds4_error err = {{0}};
    const size_t ns = (size_t)c->T * c->n_rows, nk = (size_t)c->T * c->k;
    float *s = pool_alloc(&p, sizeof(float) * (ns + 3));
    int32_t *got = pool_alloc(&p, sizeof(int32_t) * (nk + GUARD)), *want = pool_alloc(&p, sizeof(int32_t) * nk);
    if (!s || !got || !want) goto done;
    for (uint32_t t = 0; t < c->T; t++)
        for (uint32_t r = 0; r < c->n_rows; r++) {
            /* Rows the token cannot see get the largest scores. */
            bool vis = r < (c->pos0 + t + 1) / 4;
            s[3 + (size_t)t * c->n_rows + r] = vis ? topk_value(c->kind, &rng) : 1e9f;
        }
    if (ref_topk(s + 3, c->n_rows, c->k, c->pos0, c->T, want) != 0) goto done;
    for (size_t i = 0; i < nk + GUARD; i++) got[i] = -7;
    cl_mem sb = pool_buf(&p, s, sizeof(float) * (ns + 3)), selb = pool_buf(&p, got, sizeof(int32_t) * (nk + GUARD));
    if (!sb || !selb) goto done;
    if (ds4_op_topk(&e->ops, A(sb, 3), c->n_rows, c->k, c->pos0, c->T, selb, &err) != 0) {
        fprintf(stderr, "    %s\n", err.msg);
        goto done;
    }
    if (ds4_buffer_read(e->ops.rt, selb, 0, got, sizeof(int32_t) * (nk + GUARD), &err) != 0) {
        fprintf(stderr, "    %s\n", err.msg);
        goto done;
    }
    for (size_t i = nk; i < nk + GUARD; i++)
        if (got[i] != -7) {
            fprintf(stderr, "    int %zu after the selection was written\n", i - nk);
            goto done;
        }
    for (size_t i = 0; i < nk; i++)
        if (got[i] != want[i]) {
            fprintf(stderr, "    token %zu slot %zu got %d want %d\n", i / c->k, i % c->k, got[i], want[i]);
            goto done;
        }
    rc = 0;
done:
    if (rc) fprintf(stderr, "    (top-k case rows %u k %u pos0 %u T %u kind %d)\n", c->n_rows, c->k, c->pos0, c->T,
                    c->kind);
    pool_free(&p);
    return rc;
}

/* ---------------------------------------------------------- attention -- */

typedef struct {
    uint32_t H, D, window, cap, pos0, T;
    uint32_t ratio; /* 0: no compressed rows */
    uint32_t n_sel; /* 0: dense */
} att_case;

static int att_check(env *e, const att_case *c, uint64_t seed) {
    pool p = {0};
    test_rng rng = {seed};
    int rc = 1;
    ds4_error err = {{0}};
    const uint32_t end = c->pos0 + c->T, n_comp = c->ratio ? end / c->ratio : 0;
    const size_t nq = (size_t)c->T * c->H * c->D, sel_off = 3;
    float *q = rand_floats(&p, nq, 3.0f, &rng);
    float *ring = rand_floats(&p, (size_t)c->cap * c->D, 1.0f, &rng);
    float *comp = rand_floats(&p, (size_t)(n_comp + 1) * c->D, 1.0f, &rng);
    float *sinks = rand_floats(&p, c->H, 2.0f, &rng);
    int32_t *sel = pool_alloc(&p, sizeof(int32_t) * (sel_off + (size_t)c->T * (c->n_sel + 1)));
    float *got = sentinel_floats(&p, nq), *want = pool_alloc(&p, sizeof(float) * nq);
    if (!q || !ring || !comp || !sinks || !sel || !got || !want) goto done;
    /* Selections: mostly visible rows, plus -1, rows not yet visible and
     * repeats. */
    for (uint32_t t = 0; t < c->T; t++)
        for (uint32_t i = 0; i < c->n_sel; i++) {
            uint32_t n_vis = (c->pos0 + t + 1) / (c->ratio ? c->ratio : 1);
            uint64_t u = test_rng_u64(&rng);
            int32_t v = (int32_t)(u % (n_vis + 2)) - 1; /* -1 .. n_vis */
            if (i == 1 && c->n_sel > 2) v = sel[sel_off + (size_t)t * c->n_sel];
            sel[sel_off + (size_t)t * c->n_sel + i] = v;
        }
    if (ref_attention(q, ring, c->cap, c->window, c->ratio ? comp : NULL, c->ratio, c->n_sel ? sel + sel_off : NULL,
                      c->n_sel, sinks, c->H, c->D, c->pos0, c->T, 1.0f / sqrtf((float)c->D), want) != 0)
        goto done;
    cl_mem qb = pool_buf(&p, q, sizeof(float) * nq), rb = pool_buf(&p, ring, sizeof(float) * c->cap * c->D);
    cl_mem cb = pool_buf(&p, comp, sizeof(float) * (n_comp + 1) * c->D), hb = pool_buf(&p, sinks, sizeof(float) * c->H);
    cl_mem sb = pool_buf(&p, sel, sizeof(int32_t) * (sel_off + (size_t)c->T * (c->n_sel + 1)));
    cl_mem ob = pool_buf(&p, got, sizeof(float) * (nq + 2 * GUARD));
    if (!qb || !rb || !cb || !hb || !sb || !ob) goto done;
    ds4_wref sinkw = {hb, 0, DS4_TYPE_F32};
    if (ds4_op_attention(&e->ops, A(qb, 0), A(rb, 0), c->cap, c->window, A(c->ratio ? cb : NULL, 0), c->ratio,
                         c->n_sel ? sb : NULL, sel_off, c->n_sel, sinkw, c->H, c->D, c->pos0, c->T,
                         1.0f / sqrtf((float)c->D), A(ob, GUARD), &err) != 0) {
        fprintf(stderr, "    %s\n", err.msg);
        goto done;
    }
    if (read_floats(ob, got, nq + 2 * GUARD) || check_guards(got, nq, "attention")) goto done;
    for (size_t i = 0; i < nq; i++)
        if (!(fabsf(got[GUARD + i] - want[i]) <= 2e-5f)) {
            fprintf(stderr, "    token %zu head %zu dim %zu got %.9g want %.9g\n", i / ((size_t)c->H * c->D),
                    i / c->D % c->H, i % c->D, got[GUARD + i], want[i]);
            goto done;
        }
    rc = 0;
done:
    if (rc)
        fprintf(stderr, "    (attention case H %u D %u window %u cap %u pos0 %u T %u ratio %u n_sel %u)\n", c->H,
                c->D, c->window, c->cap, c->pos0, c->T, c->ratio, c->n_sel);
    pool_free(&p);
    return rc;
}

/* ---------------------------------------------------------------- MoE -- */

typedef struct {
    uint32_t type, ncols, nrows, n_expert, n_used, T;
    int x_per_slot;
} moe_case;

#define MOE_X_OFF 3
#define MOE_W_OFF(type) ((type) == DS4_TYPE_F32 ? 12u : 6u)

static int moe_check(env *e, const moe_case *c, uint64_t seed) {
    pool p = {0};
    test_rng rng = {seed};
    int rc = 1;
    ds4_error err = {{0}};
    const uint64_t rb = ds4_row_bytes(c->type, c->ncols), woff = MOE_W_OFF(c->type);
    const uint32_t slots = c->T * c->n_used, n_x = c->x_per_slot ? slots : c->T;
    const size_t ny = (size_t)slots * c->nrows;
    uint8_t *w = pool_alloc(&p, woff + rb * c->n_expert * c->nrows);
    float *row = pool_alloc(&p, sizeof(float) * c->ncols);
    float *x = pool_alloc(&p, sizeof(float) * (MOE_X_OFF + (size_t)n_x * c->ncols));
    int32_t *sel = pool_alloc(&p, sizeof(int32_t) * slots);
    float *got = sentinel_floats(&p, ny), *want = pool_alloc(&p, sizeof(float) * ny);
    if (!w || !row || !x || !sel || !got || !want) goto done;
    for (uint32_t r = 0; r < c->n_expert * c->nrows; r++) {
        for (uint32_t i = 0; i < c->ncols; i++) row[i] = test_rng_f32(&rng);
        if (ds4_quantize_row(c->type, row, w + woff + r * rb, c->ncols, NULL) != 0) goto done;
    }
    for (size_t i = 0; i < (size_t)n_x * c->ncols; i++) x[MOE_X_OFF + i] = test_rng_f32(&rng);
    for (uint32_t s = 0; s < slots; s++) sel[s] = (int32_t)(test_rng_u64(&rng) % c->n_expert);
    if (slots > 1) sel[1] = sel[0]; /* a repeated expert */
    if (ref_moe_matmul(c->type, w + woff, c->ncols, c->nrows, c->n_expert, x + MOE_X_OFF, c->x_per_slot, sel,
                       c->n_used, c->T, want) != 0)
        goto done;
    cl_mem wb = pool_buf(&p, w, woff + rb * c->n_expert * c->nrows);
    cl_mem xb = pool_buf(&p, x, sizeof(float) * (MOE_X_OFF + (size_t)n_x * c->ncols));
    cl_mem sb = pool_buf(&p, sel, sizeof(int32_t) * slots), yb = pool_buf(&p, got, sizeof(float) * (ny + 2 * GUARD));
    if (!wb || !xb || !sb || !yb) goto done;
    ds4_wref W = {wb, woff, c->type};
    if (ds4_op_moe_matmul(&e->ops, W, c->ncols, c->nrows, c->n_expert, A(xb, MOE_X_OFF), c->x_per_slot, sb,
                          c->n_used, c->T, A(yb, GUARD), &err) != 0) {
        fprintf(stderr, "    %s\n", err.msg);
        goto done;
    }
    if (read_floats(yb, got, ny + 2 * GUARD) || check_guards(got, ny, "moe")) goto done;
    for (uint32_t s = 0; s < slots; s++) {
        const float *xr = x + MOE_X_OFF + (size_t)(c->x_per_slot ? s : s / c->n_used) * c->ncols;
        for (uint32_t r = 0; r < c->nrows; r++) {
            const uint8_t *wr = w + woff + ((uint64_t)sel[s] * c->nrows + r) * rb;
            if (ds4_dequantize_row(c->type, wr, row, c->ncols) != 0) goto done;
            double a = 0;
            for (uint32_t i = 0; i < c->ncols; i++) a += fabs((double)row[i] * xr[i]);
            float g = got[GUARD + (size_t)s * c->nrows + r], v = want[(size_t)s * c->nrows + r];
            if (!(fabs((double)g - v) <= 1e-4 * a + 1e-30)) {
                fprintf(stderr, "    slot %u row %u got %.9g want %.9g\n", s, r, g, v);
                goto done;
            }
        }
    }
    rc = 0;
done:
    if (rc)
        fprintf(stderr, "    (moe case %s %ux%u experts %u used %u T %u per_slot %d)\n", ds4_type_name(c->type),
                c->nrows, c->ncols, c->n_expert, c->n_used, c->T, c->x_per_slot);
    pool_free(&p);
    return rc;
}

/* -------------------------------------------------------------- tests -- */

/* Run fn over both builds. */
static int each_variant(int (*fn)(env *e)) {
    for (int v = 0; v < 2; v++) {
        env e;
        if (env_open(&e, variants[v]) != 0) return 1;
        int rc = fn(&e);
        env_close(&e);
        if (rc != 0) {
            fprintf(stderr, "    (build options: %s)\n", variants[v] ? variants[v] : "device defaults");
            return rc;
        }
    }
    return 0;
}

static int run_comp(env *e) {
    static const comp_case cases[] = {
        {24, 4, 45, DS4_TYPE_F16},  {5, 4, 23, DS4_TYPE_BF16}, {3, 4, 8, DS4_TYPE_F32},
        {20, 128, 300, DS4_TYPE_F32}, {3, 128, 260, DS4_TYPE_F16},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++)
        if (comp_check(e, &cases[i], 0xc0ffee + i) != 0) return 1;
    return 0;
}

static int run_idx(env *e) {
    static const idx_case cases[] = {
        {3, 20, 9, 17, 5}, {16, 64, 70, 250, 33}, {1, 7, 3, 0, 4}, {8, 128, 300, 1100, 3},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++)
        if (idx_check(e, &cases[i], 0x1dec5 + i) != 0) return 1;
    return 0;
}

static int run_topk(env *e) {
    static const topk_case cases[] = {
        {100, 16, 300, 4, 0}, {500, 37, 1990, 3, 1}, {50, 64, 10, 6, 0}, {50, 3, 0, 6, 1},
        {40, 7, 400, 2, 2},   {3000, 512, 12000, 2, 3}, {1000, 1, 3999, 2, 1}, {600, 300, 2400, 3, 1},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++)
        if (topk_check(e, &cases[i], 0x70bc + i) != 0) return 1;
    return 0;
}

/* 2^18 visible rows (separate test: the largest data). */
static int run_topk_large(env *e) {
    static const topk_case cases[] = {
        {1u << 18, 512, 4u << 18, 1, 3},
        {(1u << 18) + 5, 512, (4u << 18) - 5, 2, 0},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++)
        if (topk_check(e, &cases[i], 0xb16 + i) != 0) return 1;
    return 0;
}

static int run_att(env *e) {
    static const att_case cases[] = {
        {3, 40, 8, 13, 37, 6, 0, 0},    /* window only, ring wraps */
        {2, 64, 8, 16, 45, 9, 4, 0},    /* dense ratio 4 */
        {3, 40, 6, 20, 60, 5, 4, 7},    /* selected rows */
        {2, 24, 4, 8, 300, 3, 128, 0},  /* ratio 128 */
        {2, 512, 16, 16, 5, 1, 4, 0},   /* widest head, window not full */
        {1, 17, 3, 7, 0, 5, 4, 2},      /* from position 0, wrap inside the chunk */
        {2, 8, 128, 140, 10, 13, 4, 600}, /* more selections than rows */
        {4, 64, 128, 129, 700, 1, 4, 0},  /* decode: split KV in GPU-style builds */
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++)
        if (att_check(e, &cases[i], 0xa77 + i) != 0) return 1;
    return 0;
}

static int moe_type(env *e, uint32_t type) {
    const ds4_type_traits *tr = ds4_type_get(type);
    uint32_t nc = tr->block_size == 1 ? 37 : tr->block_size == 32 ? 96 : 256;
    const moe_case cases[] = {
        {type, nc, 13, 5, 2, 3, 0},
        {type, nc, 13, 5, 2, 3, 1},
        {type, tr->block_size == 1 ? 64 : 2 * nc, 7, 3, 6, 1, 1},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++)
        if (moe_check(e, &cases[i], 0x30e + 17 * type + i) != 0) return 1;
    return 0;
}

static int moe_f32(env *e) { return moe_type(e, DS4_TYPE_F32); }
static int moe_f16(env *e) { return moe_type(e, DS4_TYPE_F16); }
static int moe_bf16(env *e) { return moe_type(e, DS4_TYPE_BF16); }
static int moe_q8_0(env *e) { return moe_type(e, DS4_TYPE_Q8_0); }
static int moe_q2_k(env *e) { return moe_type(e, DS4_TYPE_Q2_K); }
static int moe_q4_k(env *e) { return moe_type(e, DS4_TYPE_Q4_K); }
static int moe_iq2_xxs(env *e) { return moe_type(e, DS4_TYPE_IQ2_XXS); }

/* Bad calls fail with the op's name and a reason, enqueueing nothing. */
static int run_errors(env *e) {
    pool p = {0};
    ds4_error err = {{0}};
    cl_mem b = pool_buf(&p, NULL, 4096), s = pool_buf(&p, NULL, 64);
    int rc = 0;
    if (!b || !s) rc = 100;
    ds4_wref f32w = {b, 0, DS4_TYPE_F32}, f16w = {b, 0, DS4_TYPE_F16};
    ds4_ops *o = &e->ops;
#define EXPECT_FAIL(id, call, text)                                               \
    if (rc == 0 && ((call) == 0 || !strstr(err.msg, text))) {                      \
        fprintf(stderr, "    case %d: accepted or wrong message: %s\n", id, err.msg); \
        rc = id;                                                                   \
    }
    EXPECT_FAIL(1, ds4_op_comp_update(o, A(b, 0), A(b, 0), f32w, A(b, 0), A(b, 0), 4, 3, 0, 1, A(b, 0), 0, &err),
                "comp_update: ratio 3");
    EXPECT_FAIL(2, ds4_op_comp_update(o, A(b, 0), A(b, 0), f32w, A(b, 0), A(b, 0), 4, 4, 4, 4, A(b, 0), 2, &err),
                "out_first 2");
    EXPECT_FAIL(3, ds4_op_comp_update(o, A(b, 0), A(b, 0), f32w, A(s, 0), A(b, 0), 4, 4, 0, 1, A(b, 0), 0, &err),
                "state_kv");
    ds4_wref q4 = {b, 0, DS4_TYPE_Q4_0};
    EXPECT_FAIL(4, ds4_op_comp_update(o, A(b, 0), A(b, 0), q4, A(b, 0), A(b, 0), 4, 4, 0, 1, A(b, 0), 0, &err),
                "ape has unsupported type");
    EXPECT_FAIL(5, ds4_op_indexer_scores(o, A(b, 0), A(b, 0), A(b, 0), 2, 8, 20, 100, 2, A(s, 0), &err),
                "indexer_scores: scores");
    EXPECT_FAIL(16, ds4_op_indexer_scores(o, A(b, 0), A(b, 0), A(b, 0), 1, 129, 1, 4, 1, A(b, 0), &err),
                "row width 129");
    EXPECT_FAIL(6, ds4_op_topk(o, A(b, 0), 10, 0, 0, 1, b, &err), "topk: empty");
    EXPECT_FAIL(7, ds4_op_topk(o, A(b, 0), 10, 40, 0, 1, s, &err), "topk: sel");
    EXPECT_FAIL(8, ds4_op_attention(o, A(b, 0), A(b, 0), 4, 4, A(NULL, 0), 0, NULL, 0, 0, f32w, 1, 600, 0, 1, 1.0f,
                                    A(b, 0), &err),
                "attention: head width 600");
    EXPECT_FAIL(9, ds4_op_attention(o, A(b, 0), A(b, 0), 4, 4, A(NULL, 0), 0, NULL, 0, 0, f32w, 1, 8, 10, 2, 1.0f,
                                    A(b, 0), &err),
                "attention: ring of 4 rows");
    EXPECT_FAIL(10, ds4_op_attention(o, A(b, 0), A(b, 0), 8, 4, A(NULL, 0), 0, NULL, 0, 0, f16w, 1, 8, 10, 2, 1.0f,
                                     A(b, 0), &err),
                "sinks has unsupported type F16");
    EXPECT_FAIL(11, ds4_op_attention(o, A(b, 0), A(b, 0), 8, 4, A(NULL, 0), 0, b, 0, 4, f32w, 1, 8, 10, 2, 1.0f,
                                     A(b, 0), &err),
                "selection without compressed rows");
    EXPECT_FAIL(12, ds4_op_moe_matmul(o, q4, 32, 4, 2, A(b, 0), 0, b, 1, 1, A(b, 0), &err),
                "moe_matmul: no kernel for weight type Q4_0");
    ds4_wref q8 = {b, 0, DS4_TYPE_Q8_0};
    EXPECT_FAIL(13, ds4_op_moe_matmul(o, q8, 48, 4, 2, A(b, 0), 0, b, 1, 1, A(b, 0), &err), "multiple");
    EXPECT_FAIL(14, ds4_op_moe_matmul(o, q8, 32, 64, 2, A(b, 0), 0, b, 1, 1, A(b, 0), &err), "moe_matmul: W needs");
    EXPECT_FAIL(15, ds4_op_moe_matmul(o, q8, 32, 4, 2, A(b, 0), 2, b, 1, 1, A(b, 0), &err), "x_per_slot 2");
#undef EXPECT_FAIL
    pool_free(&p);
    T_CHECK(rc == 0, "bad call %d", rc);
    return 0;
}

static int t_compressor(void) { return each_variant(run_comp); }
static int t_indexer(void) { return each_variant(run_idx); }
static int t_topk(void) { return each_variant(run_topk); }
static int t_topk_large(void) { return each_variant(run_topk_large); }
static int t_attention(void) { return each_variant(run_att); }
static int t_moe_f32(void) { return each_variant(moe_f32); }
static int t_moe_f16(void) { return each_variant(moe_f16); }
static int t_moe_bf16(void) { return each_variant(moe_bf16); }
static int t_moe_q8_0(void) { return each_variant(moe_q8_0); }
static int t_moe_q2_k(void) { return each_variant(moe_q2_k); }
static int t_moe_q4_k(void) { return each_variant(moe_q4_k); }
static int t_moe_iq2_xxs(void) { return each_variant(moe_iq2_xxs); }
static int t_errors(void) { return each_variant(run_errors); }

void tests_register_ops_attn(void) {
    test_add("ops_attn/compressor", t_compressor);
    test_add("ops_attn/indexer_scores", t_indexer);
    test_add("ops_attn/topk", t_topk);
    test_add("ops_attn/topk_large", t_topk_large);
    test_add("ops_attn/attention", t_attention);
    test_add("ops_attn/moe_f32", t_moe_f32);
    test_add("ops_attn/moe_f16", t_moe_f16);
    test_add("ops_attn/moe_bf16", t_moe_bf16);
    test_add("ops_attn/moe_q8_0", t_moe_q8_0);
    test_add("ops_attn/moe_q2_k", t_moe_q2_k);
    test_add("ops_attn/moe_q4_k", t_moe_q4_k);
    test_add("ops_attn/moe_iq2_xxs", t_moe_iq2_xxs);
    test_add("ops_attn/errors", t_errors);
}
