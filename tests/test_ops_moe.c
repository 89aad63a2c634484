/* test_ops_moe.c - the fused and expert-grouped expert ops of src/ops_moe.c
 * against the plain ops they replace (ds4_op_moe_matmul, ds4_op_swiglu,
 * ds4_op_moe_sum, which test_ops_attn.c / test_ops_dense.c check against
 * the host references).
 *
 * Every case runs on the device defaults, on a variant with cooperating
 * lanes, 3 rows per group and 3-slot tiles (ragged tiles; the GPU code
 * paths on PoCL) and on that variant with int8 activations (MV_Q8X: the
 * decode kernels then quantize x, so they are held to 2% + 0.5).  Weight types: F32, Q8_0, Q2_K, IQ2_XXS
 * (a float, a 32-block and both 256-block decoders).  Checked:
 *   - gate/up + SwiGLU per slot (decode) and through a plan (prefill),
 *     routed and shared: within 1e-5 of the unfused result, relative to
 *     the magnitude of the terms;
 *   - down + sum (+ shared output) per token: within 1e-5 relative;
 *   - grouped matmul through a plan, one input per token and per slot;
 *   - the plan itself: tile count, every slot exactly once, each tile's
 *     slots routed to its expert, tiles of at most MM_TOKENS;
 *   - bad calls fail naming the op.
 */
#include <math.h>
#include <string.h>

#include "../src/kernels.h"
#include "../src/ops.h"
#include "../src/quant.h"
#include "test.h"

/* The third build runs the int8-activation kernels (cl/matvec_q8x.cl). */
#define N_VARIANTS 3
static const char *const variants[N_VARIANTS] = {NULL, "-DMV_LANES=4 -DMV_ROWS=3 -DMM_TOKENS=3 -DDS4_F16_HW=1",
                                                  "-DMV_Q8X=1 -DMV_LANES=4 -DMV_ROWS=3 -DMM_TOKENS=3"};

typedef struct {
    ds4_kernels k;
    ds4_ops ops;
    bool k_ready, ops_ready;
} env;

static void env_close(env *e) {
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
    if (ds4_ops_init(&e->ops, &e->k, &err) != 0) {
        env_close(e);
        T_CHECK(0, "%s", err.msg);
    }
    e->ops_ready = true;
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

static ds4_aref A(cl_mem m, uint64_t off) { return (ds4_aref){m, off}; }
static const ds4_aref NO_A = {NULL, 0};

static int read_f(cl_mem m, float *dst, size_t n) {
    ds4_error err = {{0}};
    T_CHECK(ds4_buffer_read(test_runtime(), m, 0, dst, n * sizeof(float), &err) == 0, "%s", err.msg);
    return 0;
}

/* The int8-activation build: results differ from the f32 path by the
 * activation rounding (values here are sums of 96..256 terms of size ~1,
 * sum |w x| ~ 100: 0.5 absolute is 0.5%, a broken kernel is off by ~10). */
static bool g_loose;

/* |a - b| <= 1e-5 * (|a| + |b|) + abs_tol, for n values. */
static int close_all(const float *got, const float *want, size_t n, float abs_tol, const char *what) {
    for (size_t i = 0; i < n; i++) {
        double d = fabs((double)got[i] - want[i]), lim = 1e-5 * (fabs(got[i]) + fabs(want[i])) + abs_tol;
        if (g_loose) lim = 2e-2 * (fabs(got[i]) + fabs(want[i])) + 0.5;
        T_CHECK(d <= lim, "%s: value %zu got %.9g want %.9g", what, i, got[i], want[i]);
    }
    return 0;
}

typedef struct {
    uint32_t type, ncols, nrows, n_expert, n_used, T;
} moe_case;

/* Random weights of n_expert * nrows rows in c->type. */
static uint8_t *make_w(const moe_case *c, uint32_t ncols, uint32_t rows, test_rng *rng, uint64_t *bytes) {
    uint64_t rb = ds4_row_bytes(c->type, ncols);
    uint8_t *w = malloc(rb * rows);
    float *row = malloc(sizeof(float) * ncols);
    if (w && row)
        for (uint32_t r = 0; r < rows; r++) {
            for (uint32_t i = 0; i < ncols; i++) row[i] = test_rng_f32(rng);
            if (ds4_quantize_row(c->type, row, w + r * rb, ncols, NULL) != 0) {
                free(w);
                w = NULL;
                break;
            }
        }
    free(row);
    *bytes = rb * rows;
    return w;
}

/* The plan read back: every slot once, tiles routed to their expert. */
static int check_plan(env *e, cl_mem plan, const int32_t *sel, uint32_t n_slots, uint32_t n_expert) {
    uint32_t tile = (uint32_t)e->k.mm_tokens;
    uint64_t n = ds4_moe_plan_ints(n_slots, n_expert, tile);
    int32_t *p = malloc(n * 4);
    uint8_t *seen = calloc(n_slots, 1);
    ds4_error err = {{0}};
    int rc = 1;
    if (!p || !seen || ds4_buffer_read(test_runtime(), plan, 0, p, n * 4, &err) != 0) goto done;
    int32_t n_tiles = p[0];
    if (n_tiles < 1 || (uint32_t)n_tiles > ds4_moe_plan_max_tiles(n_slots, n_expert, tile)) {
        fprintf(stderr, "    plan: %d tiles\n", n_tiles);
        goto done;
    }
    uint32_t covered = 0;
    for (int32_t t = 0; t < n_tiles; t++) {
        const int32_t *tp = p + 1 + n_slots + 3 * t;
        if (tp[2] < 1 || (uint32_t)tp[2] > tile || tp[1] < 0 || (uint32_t)(tp[1] + tp[2]) > n_slots) {
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

static int moe_case_run(env *e, const moe_case *c, uint64_t seed) {
    test_rng rng = {seed};
    bufs b = {{0}, 0};
    ds4_error err = {{0}};
    const uint32_t slots = c->T * c->n_used, E = c->ncols, F = c->nrows;
    uint64_t bg = 0, bu = 0, bd = 0;
    uint8_t *wg = make_w(c, E, c->n_expert * F, &rng, &bg), *wu = make_w(c, E, c->n_expert * F, &rng, &bu);
    uint8_t *wd = make_w(c, F, c->n_expert * E, &rng, &bd);
    float *x = malloc(sizeof(float) * c->T * E), *ew = malloc(sizeof(float) * slots);
    int32_t *sel = malloc(sizeof(int32_t) * slots);
    size_t big = (size_t)slots * (E > F ? E : F);
    float *got = malloc(sizeof(float) * big), *want = malloc(sizeof(float) * big);
    int rc = 1;
    if (!wg || !wu || !wd || !x || !ew || !sel || !got || !want) goto done;
    for (size_t i = 0; i < (size_t)c->T * E; i++) x[i] = 2.0f * test_rng_f32(&rng);
    for (uint32_t s = 0; s < slots; s++) {
        sel[s] = (int32_t)(test_rng_u64(&rng) % c->n_expert);
        ew[s] = 0.5f + test_rng_f32(&rng);
    }
    if (slots > 2) sel[2] = sel[0];
    cl_mem mg = buf(&b, wg, bg), mu = buf(&b, wu, bu), md = buf(&b, wd, bd), mx = buf(&b, x, sizeof(float) * c->T * E);
    cl_mem ms = buf(&b, sel, 4 * slots), mw = buf(&b, ew, 4 * slots);
    cl_mem g = buf(&b, NULL, 4 * slots * F), u = buf(&b, NULL, 4 * slots * F), mid = buf(&b, NULL, 4 * slots * F);
    cl_mem yd = buf(&b, NULL, 4 * big), y = buf(&b, NULL, 4 * c->T * E), y2 = buf(&b, NULL, 4 * c->T * E);
    cl_mem add = buf(&b, x, sizeof(float) * c->T * E);
    cl_mem plan = buf(&b, NULL, 4 * ds4_moe_plan_ints(slots, c->n_expert, (uint32_t)e->k.mm_tokens));
    if (!mg || !mu || !md || !mx || !ms || !mw || !g || !u || !mid || !yd || !y || !y2 || !add || !plan) goto done;
    ds4_wref WG = {mg, 0, c->type}, WU = {mu, 0, c->type}, WD = {md, 0, c->type};
    ds4_ops *o = &e->ops;
    const float clampv = 1.5f;
#define RUN(call)                                  \
    if ((call) != 0) {                             \
        fprintf(stderr, "    %s\n", err.msg);      \
        goto done;                                 \
    }
    /* plain matvec (int8 activations in the q8x build) against the host */
    RUN(ds4_matvec(&e->k, c->type, mg, 0, E, F, mx, 0, g, 0, &err));
    if (read_f(g, got, F)) goto done;
    for (uint32_t r = 0; r < F; r++) {
        float *row = want; /* F <= slots * F floats of scratch */
        if (ds4_dequantize_row(c->type, wg + r * ds4_row_bytes(c->type, E), row, E) != 0) goto done;
        double a = 0;
        for (uint32_t i = 0; i < E; i++) a += (double)row[i] * x[i];
        float v = (float)a;
        if (close_all(&got[r], &v, 1, 1e-4f, "matvec")) goto done;
    }
    /* unfused reference: gate, up, swiglu */
    RUN(ds4_op_moe_matmul(o, WG, E, F, c->n_expert, A(mx, 0), 0, ms, c->n_used, c->T, A(g, 0), &err));
    RUN(ds4_op_moe_matmul(o, WU, E, F, c->n_expert, A(mx, 0), 0, ms, c->n_used, c->T, A(u, 0), &err));
    RUN(ds4_op_swiglu(o, A(g, 0), A(u, 0), A(mw, 0), F, slots, clampv, A(g, 0), &err));
    if (read_f(g, want, (size_t)slots * F)) goto done;
    /* fused per slot */
    RUN(ds4_op_moe_gate_up(o, WG, WU, E, F, c->n_expert, A(mx, 0), ms, c->n_used, c->T, A(mw, 0), clampv, NULL,
                           A(mid, 0), &err));
    if (read_f(mid, got, (size_t)slots * F) || close_all(got, want, (size_t)slots * F, 1e-6f, "gate_up per slot"))
        goto done;
    /* fused through a plan */
    RUN(ds4_op_moe_plan(o, ms, 0, slots, c->n_expert, plan, &err));
    if (check_plan(e, plan, sel, slots, c->n_expert)) goto done;
    RUN(ds4_op_moe_gate_up(o, WG, WU, E, F, c->n_expert, A(mx, 0), ms, c->n_used, c->T, A(mw, 0), clampv, plan,
                           A(mid, 0), &err));
    if (read_f(mid, got, (size_t)slots * F) || close_all(got, want, (size_t)slots * F, 1e-6f, "gate_up planned"))
        goto done;
    /* down + sum (+ add) against moe_matmul + moe_sum */
    RUN(ds4_op_moe_matmul(o, WD, F, E, c->n_expert, A(g, 0), 1, ms, c->n_used, c->T, A(yd, 0), &err));
    RUN(ds4_op_moe_sum(o, A(yd, 0), c->n_used, E, c->T, A(add, 0), A(y, 0), &err));
    if (read_f(y, want, (size_t)c->T * E)) goto done;
    RUN(ds4_op_moe_down_sum(o, WD, F, E, c->n_expert, A(g, 0), ms, c->n_used, c->T, A(add, 0), A(y2, 0), &err));
    if (read_f(y2, got, (size_t)c->T * E) || close_all(got, want, (size_t)c->T * E, 1e-5f, "down_sum")) goto done;
    /* grouped down (one input per slot) against moe_matmul */
    if (read_f(yd, want, (size_t)slots * E)) goto done;
    RUN(ds4_op_moe_grouped(o, WD, F, E, c->n_expert, A(g, 0), 1, c->n_used, slots, plan, A(yd, 0), &err));
    if (read_f(yd, got, (size_t)slots * E) || close_all(got, want, (size_t)slots * E, 1e-6f, "grouped per slot"))
        goto done;
    /* grouped gate (one input per token) against moe_matmul */
    RUN(ds4_op_moe_matmul(o, WG, E, F, c->n_expert, A(mx, 0), 0, ms, c->n_used, c->T, A(g, 0), &err));
    if (read_f(g, want, (size_t)slots * F)) goto done;
    RUN(ds4_op_moe_grouped(o, WG, E, F, c->n_expert, A(mx, 0), 0, c->n_used, slots, plan, A(u, 0), &err));
    if (read_f(u, got, (size_t)slots * F) || close_all(got, want, (size_t)slots * F, 1e-6f, "grouped per token"))
        goto done;
    rc = 0;
done:
    if (rc)
        fprintf(stderr, "    (case %s %ux%u experts %u used %u T %u)\n", ds4_type_name(c->type), c->nrows, c->ncols,
                c->n_expert, c->n_used, c->T);
    bufs_free(&b);
    free(wg);
    free(wu);
    free(wd);
    free(x);
    free(ew);
    free(sel);
    free(got);
    free(want);
    return rc;
}

/* Shared expert (sel NULL) = the routed kernel with every slot on expert 0
 * and weight 1. */
static int shared_case(env *e, uint32_t type) {
    test_rng rng = {0x5ea + type};
    bufs b = {{0}, 0};
    ds4_error err = {{0}};
    moe_case c = {type, 256, 40, 1, 1, 1};
    uint64_t bg = 0, bu = 0;
    uint8_t *wg = make_w(&c, 256, 40, &rng, &bg), *wu = make_w(&c, 256, 40, &rng, &bu);
    float x[256], ones[1] = {1.0f}, got[40], want[40];
    int32_t zero[1] = {0};
    int rc = 1;
    for (int i = 0; i < 256; i++) x[i] = test_rng_f32(&rng);
    cl_mem mg = buf(&b, wg, bg), mu = buf(&b, wu, bu), mx = buf(&b, x, sizeof(x)), ms = buf(&b, zero, 4);
    cl_mem mw = buf(&b, ones, 4), m1 = buf(&b, NULL, sizeof(got)), m2 = buf(&b, NULL, sizeof(got));
    if (!wg || !wu || !mg || !mu || !mx || !ms || !mw || !m1 || !m2) goto done;
    ds4_wref WG = {mg, 0, type}, WU = {mu, 0, type};
    if (ds4_op_moe_gate_up(&e->ops, WG, WU, 256, 40, 1, A(mx, 0), ms, 1, 1, A(mw, 0), 2.0f, NULL, A(m1, 0), &err) ||
        ds4_op_moe_gate_up(&e->ops, WG, WU, 256, 40, 1, A(mx, 0), NULL, 1, 1, NO_A, 2.0f, NULL, A(m2, 0), &err)) {
        fprintf(stderr, "    %s\n", err.msg);
        goto done;
    }
    if (read_f(m1, want, 40) || read_f(m2, got, 40)) goto done;
    for (int i = 0; i < 40; i++)
        if (got[i] != want[i]) {
            fprintf(stderr, "    shared %s row %d: %.9g vs %.9g\n", ds4_type_name(type), i, got[i], want[i]);
            goto done;
        }
    rc = 0;
done:
    bufs_free(&b);
    free(wg);
    free(wu);
    return rc;
}

static int run_cases(env *e) {
    static const uint32_t types[] = {DS4_TYPE_F32, DS4_TYPE_Q8_0, DS4_TYPE_Q2_K, DS4_TYPE_IQ2_XXS};
    for (size_t i = 0; i < sizeof(types) / sizeof(types[0]); i++) {
        /* down's rows are F values: whole blocks of the type */
        uint32_t t = types[i], nc = t == DS4_TYPE_Q8_0 || t == DS4_TYPE_F32 ? 96 : 256;
        uint32_t f1 = t == DS4_TYPE_F32 ? 37 : t == DS4_TYPE_Q8_0 ? 64 : 256, f2 = t == DS4_TYPE_F32 ? 19 : f1;
        const moe_case cases[] = {
            {t, nc, f1, 5, 3, 1},  /* decode */
            {t, nc, f2, 6, 3, 11}, /* prefill: ragged tiles, repeated experts */
            {t, nc, f2, 2, 2, 9},  /* few experts: long tiles */
        };
        for (size_t j = 0; j < sizeof(cases) / sizeof(cases[0]); j++)
            if (moe_case_run(e, &cases[j], 0x3e0 + 31 * i + j) != 0) return 1;
        if (shared_case(e, t) != 0) return 1;
    }
    return 0;
}

static int run_errors(env *e) {
    bufs b = {{0}, 0};
    ds4_error err = {{0}};
    cl_mem m = buf(&b, NULL, 4096);
    int rc = m ? 0 : 100;
    ds4_ops *o = &e->ops;
    ds4_wref q4 = {m, 0, DS4_TYPE_Q4_0}, q8 = {m, 0, DS4_TYPE_Q8_0}, f32 = {m, 0, DS4_TYPE_F32};
#define EXPECT_FAIL(id, call, text)                                                 \
    if (rc == 0 && ((call) == 0 || !strstr(err.msg, text))) {                        \
        fprintf(stderr, "    case %d: accepted or wrong message: %s\n", id, err.msg); \
        rc = id;                                                                     \
    }
    EXPECT_FAIL(1, ds4_op_moe_plan(o, m, 0, 4, 2000, m, &err), "moe_plan: 4 slots over 2000 experts");
    EXPECT_FAIL(2, ds4_op_moe_plan(o, m, 0, 4000, 8, m, &err), "moe_plan: sel");
    EXPECT_FAIL(3, ds4_op_moe_gate_up(o, q4, q4, 32, 4, 2, A(m, 0), m, 1, 1, A(m, 0), 1.0f, NULL, A(m, 0), &err),
                "moe_gate_up: no kernel for weight type Q4_0");
    EXPECT_FAIL(4, ds4_op_moe_gate_up(o, q8, f32, 32, 4, 2, A(m, 0), m, 1, 1, A(m, 0), 1.0f, NULL, A(m, 0), &err),
                "gate and up types differ");
    EXPECT_FAIL(5, ds4_op_moe_gate_up(o, f32, f32, 8, 4, 1, A(m, 0), NULL, 2, 1, NO_A, 1.0f, NULL, A(m, 0), &err),
                "shared expert takes n_used 1");
    EXPECT_FAIL(6, ds4_op_moe_down_sum(o, q8, 48, 4, 2, A(m, 0), m, 1, 1, NO_A, A(m, 0), &err), "multiple");
    EXPECT_FAIL(7, ds4_op_moe_down_sum(o, f32, 8, 8, 2, A(m, 0), m, 2, 200, NO_A, A(m, 0), &err),
                "moe_down_sum: mid");
    EXPECT_FAIL(8, ds4_op_moe_grouped(o, f32, 8, 4, 2, A(m, 0), 0, 3, 7, m, A(m, 0), &err), "bad slot count");
    EXPECT_FAIL(9, ds4_op_moe_grouped(o, f32, 8, 4, 2, A(m, 0), 2, 1, 4, m, A(m, 0), &err), "x_per_slot 2");
    bufs_free(&b);
    return rc;
}

static int each_variant(int (*fn)(env *e)) {
    for (int v = 0; v < N_VARIANTS; v++) {
        env e;
        if (env_open(&e, variants[v]) != 0) return 1;
        g_loose = e.k.q8x;
        int rc = fn(&e);
        g_loose = false;
        env_close(&e);
        if (rc != 0) {
            fprintf(stderr, "    (build options: %s)\n", variants[v] ? variants[v] : "device defaults");
            return rc;
        }
    }
    return 0;
}

static int test_fused(void) { return each_variant(run_cases); }
static int test_errors(void) { return each_variant(run_errors); }

void tests_register_ops_moe(void) {
    test_add("ops_moe/fused_and_grouped", test_fused);
    test_add("ops_moe/errors", test_errors);
}
