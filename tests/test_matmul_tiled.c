/* test_matmul_tiled.c - the tiled GEMM kernels of src/matmul_tiled.c
 * against the products they replace: ds4_matmul (dense), and
 * ds4_op_moe_matmul (+ ds4_op_swiglu) for the expert-grouped variants,
 * each run in the same build (test_kernels.c and test_ops_*.c check those
 * against the host references).
 *
 * Two builds with MV_W == 8 (the GPU decoders), on PoCL:
 *   A  64 x 16 tiles, 64 work-items (4 x 4 per work-item), f16 through
 *      the hardware path;
 *   B  24 x 20 tiles, 40 work-items (6 x 2 per work-item): the weight
 *      units do not divide over the group, f16 through the bit moves.
 * Checked, for every weight type:
 *   - dense: 70 rows x 37 tokens (ragged in both), non-zero offsets, float
 *     types also with ncols 83 (a partial last chunk); strided rows leave
 *     the gaps untouched; every value within 1e-5 of sum |w*x| of both
 *     ds4_matmul and a double-precision host product;
 *   - grouped: random routing with a repeated expert, one input per token
 *     and per slot, plans whose experts span several tiles; the plan holds
 *     every slot once in tiles of at most GT_TOKS of one expert;
 *   - fused gate/up + SwiGLU against moe_matmul twice + swiglu, within the
 *     1e-5 bound propagated through the SwiGLU;
 *   - bad calls fail naming the op; a CPU build (MV_W 16) has no tiled
 *     kernels and ds4_tiled_init says so.
 */
#include <math.h>
#include <string.h>

#include "../src/kernels.h"
#include "../src/matmul_tiled.h"
#include "../src/ops.h"
#include "../src/quant.h"
#include "test.h"

#define N_BUILDS 2
static const char *const builds[N_BUILDS] = {
    "-DMV_LANES=8 -DMV_ROWS=4 -DGT_ROWS=64 -DGT_TOKS=16 -DGT_WG=64 -DDS4_F16_HW=1",
    "-DMV_LANES=8 -DMV_ROWS=4 -DGT_ROWS=24 -DGT_TOKS=20 -DGT_WG=40",
};
static const int build_shape[N_BUILDS][3] = {{64, 16, 64}, {24, 20, 40}};

static const uint32_t all_types[] = {DS4_TYPE_F32,  DS4_TYPE_F16,  DS4_TYPE_BF16,   DS4_TYPE_Q8_0,
                                     DS4_TYPE_Q2_K, DS4_TYPE_Q4_K, DS4_TYPE_IQ2_XXS};
#define N_TYPES (sizeof(all_types) / sizeof(all_types[0]))

#define SENTINEL (-12345.0f)

typedef struct {
    ds4_kernels k;
    ds4_ops ops;
    ds4_tiled t;
    bool k_ready, ops_ready, t_ready;
} env;

static void env_close(env *e) {
    if (e->t_ready) ds4_tiled_free(&e->t);
    if (e->ops_ready) ds4_ops_free(&e->ops);
    if (e->k_ready) ds4_kernels_free(&e->k);
    memset(e, 0, sizeof(*e));
}

static int env_open(env *e, const char *options) {
    memset(e, 0, sizeof(*e));
    ds4_runtime *rt = test_runtime();
    T_CHECK(rt != NULL, "no OpenCL runtime");
    ds4_error err = {{0}};
    T_CHECK(ds4_kernels_init(&e->k, rt, options, &err) == 0, "%s", err.msg);
    e->k_ready = true;
    int rc = ds4_ops_init(&e->ops, &e->k, &err);
    e->ops_ready = rc == 0;
    if (rc == 0) {
        rc = ds4_tiled_init(&e->t, &e->k, &err);
        e->t_ready = rc == 0;
    }
    if (rc != 0) {
        env_close(e);
        T_CHECK(0, "%s", err.msg);
    }
    return 0;
}

/* Device buffers of one case, released together. */
#define MAX_BUFS 24
typedef struct {
    cl_mem m[MAX_BUFS];
    int n;
} bufs;

static cl_mem buf(bufs *b, const void *src, size_t bytes) {
    ds4_error err = {{0}};
    cl_mem m = NULL;
    if (b->n == MAX_BUFS || ds4_buffer_new(test_runtime(), bytes ? bytes : 4, &m, &err) != 0) return NULL;
    b->m[b->n++] = m;
    if (src && ds4_buffer_write(test_runtime(), m, 0, src, bytes, &err) != 0) return NULL;
    return m;
}

static void bufs_free(bufs *b) {
    for (int i = 0; i < b->n; i++) clReleaseMemObject(b->m[i]);
    b->n = 0;
}

static int read_f(cl_mem m, uint64_t off, float *dst, size_t n) {
    ds4_error err = {{0}};
    T_CHECK(ds4_buffer_read(test_runtime(), m, off * sizeof(float), dst, n * sizeof(float), &err) == 0, "%s",
            err.msg);
    return 0;
}

/* `rows` random rows of ncols values quantized to type, placed `off`
 * bytes into the returned buffer; deq (rows * ncols) gets them back
 * dequantized (the values the kernels see). */
static uint8_t *make_w(uint32_t type, uint32_t ncols, uint32_t rows, uint64_t off, test_rng *rng, float *deq) {
    uint64_t rb = ds4_row_bytes(type, ncols);
    uint8_t *w = calloc(1, off + rb * rows);
    float *row = malloc(sizeof(float) * ncols);
    bool ok = w && row;
    for (uint32_t r = 0; ok && r < rows; r++) {
        for (uint32_t i = 0; i < ncols; i++) row[i] = test_rng_f32(rng);
        ok = ds4_quantize_row(type, row, w + off + r * rb, ncols, NULL) == 0 &&
             ds4_dequantize_row(type, w + off + r * rb, deq + (size_t)r * ncols, ncols) == 0;
    }
    free(row);
    if (!ok) {
        free(w);
        return NULL;
    }
    return w;
}

/* sum_c w[c] * x[c] and sum_c |w[c] * x[c]| in double. */
static void dot_ref(const float *w, const float *x, uint32_t n, double *s, double *a) {
    double ss = 0, aa = 0;
    for (uint32_t i = 0; i < n; i++) {
        double p = (double)w[i] * x[i];
        ss += p;
        aa += fabs(p);
    }
    *s = ss;
    *a = aa;
}

/* ------------------------------------------------------------ dense -- */

#define X_OFF 3
#define Y_OFF 5

typedef struct {
    uint32_t type, ncols, nrows, ntok, x_stride, y_stride; /* strides 0: dense */
} dcase;

static int dense_run(env *e, const dcase *c, uint64_t seed) {
    test_rng rng = {seed};
    bufs b = {{0}, 0};
    ds4_error err = {{0}};
    const uint64_t woff = c->type == DS4_TYPE_F32 ? 12 : 6, rb = ds4_row_bytes(c->type, c->ncols);
    const uint32_t xs = c->x_stride ? c->x_stride : c->ncols, ys = c->y_stride ? c->y_stride : c->nrows;
    const size_t xn = X_OFF + (size_t)c->ntok * xs, yn = Y_OFF + (size_t)c->ntok * ys + 4;
    const size_t dn = (size_t)c->ntok * c->nrows;
    float *deq = malloc(sizeof(float) * c->nrows * c->ncols), *x = malloc(sizeof(float) * xn);
    float *got = malloc(sizeof(float) * yn), *mm = malloc(sizeof(float) * (Y_OFF + dn)), *xt = NULL;
    uint8_t *w = deq ? make_w(c->type, c->ncols, c->nrows, woff, &rng, deq) : NULL;
    int rc = 1;
    if (!deq || !x || !got || !mm || !w) goto done;
    for (size_t i = 0; i < xn; i++) x[i] = 2.0f * test_rng_f32(&rng);
    for (size_t i = 0; i < yn; i++) got[i] = SENTINEL;
    cl_mem mw = buf(&b, w, woff + rb * c->nrows), mx = buf(&b, x, sizeof(float) * xn);
    cl_mem my = buf(&b, got, sizeof(float) * yn), mref = buf(&b, NULL, sizeof(float) * (Y_OFF + dn));
    cl_mem mxd = buf(&b, NULL, sizeof(float) * (X_OFF + (size_t)c->ntok * c->ncols));
    if (!mw || !mx || !my || !mref || !mxd) goto done;
    /* ds4_matmul reads dense rows: pack the same activations */
    xt = malloc(sizeof(float) * (size_t)c->ntok * c->ncols);
    if (!xt) goto done;
    for (uint32_t t = 0; t < c->ntok; t++) memcpy(xt + (size_t)t * c->ncols, x + X_OFF + (size_t)t * xs, 4 * c->ncols);
    if (ds4_buffer_write(test_runtime(), mxd, 4 * X_OFF, xt, sizeof(float) * c->ntok * c->ncols, &err) != 0 ||
        ds4_matmul(&e->k, c->type, mw, woff, c->ncols, c->nrows, mxd, X_OFF, mref, Y_OFF, c->ntok, &err) != 0 ||
        ds4_tiled_matmul_strided(&e->t, c->type, mw, woff, c->ncols, c->nrows, mx, X_OFF, xs, my, Y_OFF, ys, c->ntok,
                                 &err) != 0) {
        fprintf(stderr, "    %s\n", err.msg);
        goto done;
    }
    if (read_f(my, 0, got, yn) || read_f(mref, Y_OFF, mm, dn)) goto done;
    for (size_t i = 0; i < yn; i++) {
        size_t j = i - Y_OFF;
        bool inside = i >= Y_OFF && j / ys < c->ntok && j % ys < c->nrows;
        if (!inside) {
            if (got[i] != SENTINEL) {
                fprintf(stderr, "    float %zu outside the output was written\n", i);
                goto done;
            }
            continue;
        }
        uint32_t t = (uint32_t)(j / ys), r = (uint32_t)(j % ys);
        double s, a;
        dot_ref(deq + (size_t)r * c->ncols, xt + (size_t)t * c->ncols, c->ncols, &s, &a);
        double tol = 1e-5 * a + 1e-30, v = got[i], m = mm[(size_t)t * c->nrows + r];
        if (fabs(v - s) > tol || fabs(v - m) > tol) {
            fprintf(stderr, "    token %u row %u: tiled %.9g matmul %.9g host %.9g (tol %.3g)\n", t, r, v, m, s, tol);
            goto done;
        }
    }
    rc = 0;
done:
    if (rc)
        fprintf(stderr, "    (dense %s %ux%u ntok %u strides %u/%u)\n", ds4_type_name(c->type), c->nrows, c->ncols,
                c->ntok, c->x_stride, c->y_stride);
    bufs_free(&b);
    free(deq);
    free(x);
    free(xt);
    free(got);
    free(mm);
    free(w);
    return rc;
}

static int run_dense(env *e) {
    for (size_t i = 0; i < N_TYPES; i++) {
        uint32_t t = all_types[i], bs = ds4_type_get(t)->block_size;
        uint32_t nc = bs >= 256 ? 256 : 96;
        const dcase cases[] = {
            {t, nc, 70, 37, 0, 0},
            {t, bs >= 256 ? 512 : 83 + (bs == 32 ? 13 : 0), 70, 37, nc + 517, 77}, /* strided; floats: tail */
            {t, nc, 5, 1, 0, 0},                                                    /* one token, few rows */
        };
        for (size_t j = 0; j < sizeof(cases) / sizeof(cases[0]); j++)
            if (dense_run(e, &cases[j], 0x7e0 + 31 * i + j) != 0) return 1;
    }
    return 0;
}

/* ------------------------------------------------------------ grouped -- */

/* The plan (ds4_tiled_plan layout): every slot once, tiles of 1..tile slots
 * all routed to the tile's expert, tile count within the maximum. */
static int check_plan(env *e, cl_mem plan, const int32_t *sel, uint32_t n_slots, uint32_t n_expert) {
    uint64_t n = ds4_tiled_plan_ints(&e->t, n_slots, n_expert);
    int32_t *p = malloc(4 * n);
    uint8_t *seen = calloc(n_slots, 1);
    ds4_error err = {{0}};
    int rc = 1;
    uint32_t covered = 0;
    if (!p || !seen || ds4_buffer_read(test_runtime(), plan, 0, p, 4 * n, &err) != 0) goto done;
    if (p[0] < 1 || (uint32_t)p[0] > ds4_tiled_plan_max_tiles(&e->t, n_slots, n_expert)) {
        fprintf(stderr, "    plan: %d tiles\n", p[0]);
        goto done;
    }
    for (int32_t t = 0; t < p[0]; t++) {
        const int32_t *tp = p + 1 + n_slots + 3 * t;
        if (tp[2] < 1 || tp[2] > e->t.toks || tp[1] < 0 || (uint32_t)(tp[1] + tp[2]) > n_slots) {
            fprintf(stderr, "    plan: tile %d = (%d, %d, %d)\n", t, tp[0], tp[1], tp[2]);
            goto done;
        }
        for (int32_t j = 0; j < tp[2]; j++) {
            int32_t s = p[1 + tp[1] + j];
            if (s < 0 || (uint32_t)s >= n_slots || seen[s] || sel[s] != tp[0]) {
                fprintf(stderr, "    plan: tile %d holds slot %d (expert %d)\n", t, s, tp[0]);
                goto done;
            }
            seen[s] = 1;
            covered++;
        }
    }
    if (covered != n_slots) {
        fprintf(stderr, "    plan: %u of %u slots\n", covered, n_slots);
        goto done;
    }
    rc = 0;
done:
    free(p);
    free(seen);
    return rc;
}

typedef struct {
    uint32_t type, ncols, nrows, n_expert, n_used, T;
} mcase;

/* Offsets (floats for activations, bytes for weights) of the grouped case. */
#define MX_OFF 7
#define MY_OFF 9
#define MW_OFF 2

static int moe_run(env *e, const mcase *c, uint64_t seed) {
    test_rng rng = {seed};
    bufs b = {{0}, 0};
    ds4_error err = {{0}};
    const uint32_t slots = c->T * c->n_used, E = c->ncols, F = c->nrows, rows = c->n_expert * F;
    const uint64_t woff = c->type == DS4_TYPE_F32 ? 8 : 6, rb = ds4_row_bytes(c->type, E);
    const size_t yn = (size_t)slots * F;
    float *dg = malloc(sizeof(float) * rows * E), *du = malloc(sizeof(float) * rows * E);
    float *x = malloc(sizeof(float) * (MX_OFF + (size_t)slots * E)), *ew = malloc(sizeof(float) * (MW_OFF + slots));
    float *got = malloc(sizeof(float) * yn), *want = malloc(sizeof(float) * yn);
    float *g = malloc(sizeof(float) * yn), *u = malloc(sizeof(float) * yn);
    int32_t *sel = malloc(sizeof(int32_t) * slots);
    uint8_t *wg = dg ? make_w(c->type, E, rows, woff, &rng, dg) : NULL;
    uint8_t *wu = du ? make_w(c->type, E, rows, woff, &rng, du) : NULL;
    int rc = 1;
    if (!dg || !du || !x || !ew || !got || !want || !g || !u || !sel || !wg || !wu) goto done;
    for (size_t i = 0; i < MX_OFF + (size_t)slots * E; i++) x[i] = 2.0f * test_rng_f32(&rng);
    for (uint32_t s = 0; s < MW_OFF + slots; s++) ew[s] = 0.5f + test_rng_f32(&rng);
    for (uint32_t s = 0; s < slots; s++) sel[s] = (int32_t)(test_rng_u64(&rng) % c->n_expert);
    if (slots > 2) sel[2] = sel[0];
    cl_mem mg = buf(&b, wg, woff + rb * rows), mu = buf(&b, wu, woff + rb * rows);
    cl_mem mx = buf(&b, x, sizeof(float) * (MX_OFF + (size_t)slots * E)), ms = buf(&b, sel, 4 * slots);
    cl_mem mw = buf(&b, ew, sizeof(float) * (MW_OFF + slots));
    cl_mem ya = buf(&b, NULL, sizeof(float) * yn), yb = buf(&b, NULL, sizeof(float) * (MY_OFF + yn));
    cl_mem plan = buf(&b, NULL, 4 * ds4_tiled_plan_ints(&e->t, slots, c->n_expert));
    if (!mg || !mu || !mx || !ms || !mw || !ya || !yb || !plan) goto done;
    ds4_wref WG = {mg, woff, c->type}, WU = {mu, woff, c->type};
    ds4_aref X = {mx, MX_OFF}, YA = {ya, 0}, YB = {yb, MY_OFF}, EW = {mw, MW_OFF};
    ds4_ops *o = &e->ops;
    const float clampv = 1.5f;
#define RUN(call)                              \
    if ((call) != 0) {                         \
        fprintf(stderr, "    %s\n", err.msg);  \
        goto done;                             \
    }
    RUN(ds4_tiled_plan(&e->t, ms, 0, slots, c->n_expert, plan, &err));
    if (check_plan(e, plan, sel, slots, c->n_expert)) goto done;
    /* one input per token, then one per slot */
    for (int per_slot = 0; per_slot < 2; per_slot++) {
        RUN(ds4_op_moe_matmul(o, WG, E, F, c->n_expert, X, per_slot, ms, c->n_used, c->T, YA, &err));
        RUN(ds4_tiled_moe(&e->t, WG, E, F, c->n_expert, X, per_slot, c->n_used, slots, plan, YB, &err));
        if (read_f(ya, 0, want, yn) || read_f(yb, MY_OFF, got, yn)) goto done;
        for (uint32_t s = 0; s < slots; s++)
            for (uint32_t r = 0; r < F; r++) {
                size_t xrow = per_slot ? s : s / c->n_used;
                double ref, a;
                dot_ref(dg + ((size_t)sel[s] * F + r) * E, x + MX_OFF + xrow * E, E, &ref, &a);
                double tol = 1e-5 * a + 1e-30, v = got[(size_t)s * F + r], m = want[(size_t)s * F + r];
                if (fabs(v - m) > tol || fabs(v - ref) > tol) {
                    fprintf(stderr, "    grouped (per slot %d) slot %u row %u: tiled %.9g moe_matmul %.9g (tol %.3g)\n",
                            per_slot, s, r, v, m, tol);
                    goto done;
                }
            }
    }
    /* fused gate/up + SwiGLU against moe_matmul twice + swiglu */
    RUN(ds4_op_moe_matmul(o, WG, E, F, c->n_expert, X, 0, ms, c->n_used, c->T, YA, &err));
    if (read_f(ya, 0, g, yn)) goto done;
    RUN(ds4_op_moe_matmul(o, WU, E, F, c->n_expert, X, 0, ms, c->n_used, c->T, YA, &err));
    if (read_f(ya, 0, u, yn)) goto done;
    {
        cl_mem gm = buf(&b, g, sizeof(float) * yn), um = buf(&b, u, sizeof(float) * yn);
        if (!gm || !um) goto done;
        RUN(ds4_op_swiglu(o, (ds4_aref){gm, 0}, (ds4_aref){um, 0}, EW, F, slots, clampv, YA, &err));
    }
    RUN(ds4_tiled_moe_gate_up(&e->t, WG, WU, E, F, c->n_expert, X, c->n_used, c->T, EW, clampv, plan, YB, &err));
    if (read_f(ya, 0, want, yn) || read_f(yb, MY_OFF, got, yn)) goto done;
    for (uint32_t s = 0; s < slots; s++)
        for (uint32_t r = 0; r < F; r++) {
            const float *xr = x + MX_OFF + (size_t)(s / c->n_used) * E;
            double sg, ag, su, au;
            dot_ref(dg + ((size_t)sel[s] * F + r) * E, xr, E, &sg, &ag);
            dot_ref(du + ((size_t)sel[s] * F + r) * E, xr, E, &su, &au);
            /* |d silu| <= 1.1; clamping only shrinks differences */
            double eg = 1e-5 * ag, eu = 1e-5 * au, gc = fmin(g[(size_t)s * F + r], clampv);
            double uc = fmin(fmax(u[(size_t)s * F + r], -clampv), clampv), sil = gc / (1.0 + exp(-gc));
            double tol = fabs(ew[MW_OFF + s]) * (1.1 * eg * fabs(uc) + fabs(sil) * eu + 1.1 * eg * eu);
            double v = got[(size_t)s * F + r], m = want[(size_t)s * F + r];
            tol += 1e-6 * fabs(m) + 1e-30;
            if (fabs(v - m) > tol) {
                fprintf(stderr, "    gate_up slot %u row %u: tiled %.9g unfused %.9g (tol %.3g)\n", s, r, v, m, tol);
                goto done;
            }
        }
    rc = 0;
done:
    if (rc)
        fprintf(stderr, "    (grouped %s %ux%u experts %u used %u T %u)\n", ds4_type_name(c->type), c->nrows,
                c->ncols, c->n_expert, c->n_used, c->T);
    bufs_free(&b);
    free(dg);
    free(du);
    free(x);
    free(ew);
    free(got);
    free(want);
    free(g);
    free(u);
    free(sel);
    free(wg);
    free(wu);
    return rc;
}

static int run_moe(env *e) {
    for (size_t i = 0; i < N_TYPES; i++) {
        uint32_t t = all_types[i], nc = ds4_type_get(t)->block_size >= 256 ? 256 : 96;
        const mcase cases[] = {
            {t, nc, 40, 5, 3, 11}, /* short tiles, a repeated expert */
            {t, nc, 29, 3, 2, 37}, /* experts span several tiles; ragged rows */
        };
        for (size_t j = 0; j < sizeof(cases) / sizeof(cases[0]); j++)
            if (moe_run(e, &cases[j], 0x3f0 + 17 * i + j) != 0) return 1;
    }
    return 0;
}

/* ------------------------------------------------------------- errors -- */

static int run_errors(env *e) {
    bufs b = {{0}, 0};
    ds4_error err = {{0}};
    cl_mem m = buf(&b, NULL, 4096);
    int rc = m ? 0 : 100;
    ds4_tiled *t = &e->t;
    ds4_wref q4 = {m, 0, DS4_TYPE_Q4_0}, q8 = {m, 0, DS4_TYPE_Q8_0}, f32 = {m, 0, DS4_TYPE_F32};
    ds4_aref A = {m, 0};
#define EXPECT_FAIL(id, call, text)                                                  \
    if (rc == 0 && ((call) == 0 || !strstr(err.msg, text))) {                        \
        fprintf(stderr, "    case %d: accepted or wrong message: %s\n", id, err.msg); \
        rc = id;                                                                     \
    }
    EXPECT_FAIL(1, ds4_tiled_matmul(t, DS4_TYPE_Q4_0, m, 0, 32, 4, m, 0, m, 0, 2, &err),
                "tiled_matmul: no kernel for weight type Q4_0");
    EXPECT_FAIL(2, ds4_tiled_matmul(t, DS4_TYPE_Q8_0, m, 0, 48, 4, m, 0, m, 0, 2, &err), "not a multiple");
    EXPECT_FAIL(3, ds4_tiled_matmul(t, DS4_TYPE_F32, m, 2, 8, 4, m, 0, m, 0, 2, &err), "not 4-byte aligned");
    EXPECT_FAIL(4, ds4_tiled_matmul(t, DS4_TYPE_F32, m, 0, 8, 4, m, 0, m, 0, 0, &err), "token count 0");
    EXPECT_FAIL(5, ds4_tiled_matmul(t, DS4_TYPE_F32, m, 0, 8, 4, m, 0, m, 0, 200, &err), "tiled_matmul: x needs");
    EXPECT_FAIL(6, ds4_tiled_matmul(t, DS4_TYPE_F32, m, 0, 8, 4, m, 0, m, 1020, 2, &err), "tiled_matmul: y needs");
    EXPECT_FAIL(7, ds4_tiled_matmul(t, DS4_TYPE_F32, m, 0, 64, 64, m, 0, m, 0, 1, &err), "tiled_matmul: W needs");
    EXPECT_FAIL(8, ds4_tiled_matmul_strided(t, DS4_TYPE_F32, m, 0, 8, 4, m, 0, 7, m, 0, 4, 2, &err), "strides");
    EXPECT_FAIL(9, ds4_tiled_matmul(t, DS4_TYPE_F32, m, 0, 0x80000000ULL, 1, m, 0, m, 0, 1, &err), "32-bit");
    EXPECT_FAIL(10, ds4_tiled_plan(t, m, 0, 4, 2000, m, &err), "tiled_plan: 4 slots over 2000 experts");
    EXPECT_FAIL(11, ds4_tiled_plan(t, m, 0, 4000, 8, m, &err), "tiled_plan: sel");
    EXPECT_FAIL(12, ds4_tiled_moe(t, q4, 32, 4, 2, A, 0, 1, 4, m, A, &err), "no kernel for weight type Q4_0");
    EXPECT_FAIL(13, ds4_tiled_moe(t, f32, 8, 4, 2, A, 0, 3, 7, m, A, &err), "bad slot count");
    EXPECT_FAIL(14, ds4_tiled_moe(t, f32, 8, 4, 2, A, 2, 1, 4, m, A, &err), "x_per_slot 2");
    EXPECT_FAIL(15, ds4_tiled_moe(t, f32, 8, 4, 2, A, 1, 1, 200, m, A, &err), "tiled_moe: x");
    EXPECT_FAIL(16, ds4_tiled_moe_gate_up(t, q8, f32, 32, 4, 2, A, 1, 1, A, 1.0f, m, A, &err),
                "gate and up types differ");
    EXPECT_FAIL(17, ds4_tiled_moe_gate_up(t, f32, f32, 8, 4, 2, A, 0, 1, A, 1.0f, m, A, &err), "bad slot count");
    EXPECT_FAIL(18, ds4_tiled_moe_gate_up(t, f32, f32, 8, 4, 2, A, 2, 200, A, 1.0f, m, A, &err),
                "tiled_moe_gate_up: x");
    /* a plan buffer too small for 4000 slots over 8 experts */
    cl_mem big = buf(&b, NULL, 4 * 4000 * 8);
    if (rc == 0 && !big) rc = 101;
    ds4_aref BIG = {big, 0};
    EXPECT_FAIL(19, ds4_tiled_moe(t, f32, 8, 4, 8, BIG, 1, 1, 4000, m, (ds4_aref){big, 0}, &err),
                "tiled_moe: plan");
    /* a shape without the fused kernel (odd rows per work-item) */
    if (rc == 0 && (!ds4_tiled_has_gate_up(t, DS4_TYPE_F32) || !ds4_tiled_has_type(t, DS4_TYPE_IQ2_XXS)))
        rc = 102;
    cl_kernel keep = t->moe_gu[DS4_TYPE_F32];
    t->moe_gu[DS4_TYPE_F32] = NULL;
    EXPECT_FAIL(20, ds4_tiled_moe_gate_up(t, f32, f32, 8, 4, 2, A, 1, 1, A, 1.0f, m, A, &err),
                "no fused gate/up kernel");
    t->moe_gu[DS4_TYPE_F32] = keep;
    bufs_free(&b);
    return rc;
}

/* ------------------------------------------------------------- driver -- */

static int each_build(int (*fn)(env *e)) {
    for (int v = 0; v < N_BUILDS; v++) {
        env e;
        if (env_open(&e, builds[v]) != 0) return 1;
        int rc = 0;
        if (e.t.rows != build_shape[v][0] || e.t.toks != build_shape[v][1] || e.t.wg != build_shape[v][2]) {
            fprintf(stderr, "    shape read back as %d x %d / %d\n", e.t.rows, e.t.toks, e.t.wg);
            rc = 1;
        }
        if (rc == 0) rc = fn(&e);
        env_close(&e);
        if (rc != 0) {
            fprintf(stderr, "    (build options: %s)\n", builds[v]);
            return rc;
        }
    }
    return 0;
}

static int test_dense(void) { return each_build(run_dense); }
static int test_moe(void) { return each_build(run_moe); }
static int test_errors(void) { return each_build(run_errors); }

/* A build with 16-value decoders (the CPU default) has no tiled kernels. */
static int test_unavailable(void) {
    ds4_runtime *rt = test_runtime();
    T_CHECK(rt != NULL, "no OpenCL runtime");
    ds4_kernels k;
    ds4_error err = {{0}};
    /* CPU devices: the default build (shared with the other tests) */
    const char *opts = (rt->dev.type & CL_DEVICE_TYPE_CPU) ? NULL : "-DMV_W=16";
    T_CHECK(ds4_kernels_init(&k, rt, opts, &err) == 0, "%s", err.msg);
    ds4_tiled t;
    bool avail = ds4_tiled_available(&k);
    int rc = ds4_tiled_init(&t, &k, &err);
    ds4_tiled_free(&t);
    ds4_kernels_free(&k);
    T_CHECK(!avail, "tiled kernels reported in an MV_W=16 build");
    T_CHECK(rc != 0 && strstr(err.msg, "MV_W == 8"), "init: rc %d, message: %s", rc, err.msg);
    return 0;
}

void tests_register_matmul_tiled(void) {
    test_add("matmul_tiled/dense", test_dense);
    test_add("matmul_tiled/grouped", test_moe);
    test_add("matmul_tiled/errors", test_errors);
    test_add("matmul_tiled/unavailable", test_unavailable);
}
