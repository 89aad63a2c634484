/* test_kernels.c - matvec / matmul kernels against the host dequantizers.
 *
 * For every weight type with kernels: random weights (quantized from random
 * f32 with ds4_quantize_row, plus for the block types one matrix of random
 * block bytes with sane scales, which reaches code patterns a quantizer may
 * never emit), random activations, and shapes whose rows and tokens are not
 * multiples of the work-group shape, odd ncols for the float types, and
 * non-zero weight / activation / output offsets.  The reference is
 * ds4_dequantize_row with double accumulation; each output must be within
 * 1e-4 * sum|w*x| of it, and the floats around the output range must stay
 * untouched.  The same cases run on the device's default build and on a
 * build with the GPU code paths (LANES_OPTIONS), so PoCL covers those too.
 * Only two local sizes are used (each costs a PoCL compile).
 */
#include <string.h>

#include "../src/kernels.h"
#include "../src/quant.h"
#include "test.h"

/* Extra build options of the second variant: the GPU code paths (lanes
 * cooperating on a row with barriers, 8-value parts, hardware f16
 * conversion, the IQ2 grid in local memory). */
#define LANES_OPTIONS "-DMV_LANES=4 -DMV_ROWS=3 -DMM_TOKENS=3 -DDS4_F16_HW=1 -DMV_TABLES_LOCAL=1"

#define SENTINEL (-12345.0f)

typedef struct {
    uint32_t type;
    uint64_t nrows, ncols, ntok;
    bool raw_blocks;      /* random block bytes instead of quantized floats */
} kcase;

/* Host and device buffers of one case; freed by case_free in every path. */
typedef struct {
    uint8_t *w;           /* w_off padding bytes, then nrows rows */
    float *x, *y;
    double *ref, *refabs; /* reference sum and sum of |w*x| per output */
    cl_mem wb, xb, yb;
} kbufs;

static void case_free(kbufs *b) {
    free(b->w);
    free(b->x);
    free(b->y);
    free(b->ref);
    free(b->refabs);
    if (b->wb) clReleaseMemObject(b->wb);
    if (b->xb) clReleaseMemObject(b->xb);
    if (b->yb) clReleaseMemObject(b->yb);
    memset(b, 0, sizeof(*b));
}

/* Weight offset that is not a multiple of 4 (or of 8 for F32), to exercise
 * the unaligned reads. */
static uint64_t case_w_off(uint32_t type) { return type == DS4_TYPE_F32 ? 12 : 6; }
#define X_OFF 3
#define Y_OFF 5

/* Random block bytes with every scale field a small normal f16. */
static void fill_raw_blocks(uint32_t type, uint8_t *p, uint64_t bytes, test_rng *rng) {
    for (uint64_t i = 0; i < bytes; i++) p[i] = (uint8_t)test_rng_u64(rng);
    const ds4_type_traits *tr = ds4_type_get(type);
    for (uint64_t b = 0; b + tr->type_size <= bytes; b += tr->type_size) {
        uint16_t d = ds4_f32_to_f16(0.001f + 0.02f * (test_rng_f32(rng) + 1.0f));
        uint16_t m = ds4_f32_to_f16(0.001f + 0.02f * (test_rng_f32(rng) + 1.0f));
        uint8_t *blk = p + b;
        if (type == DS4_TYPE_Q8_0 || type == DS4_TYPE_IQ2_XXS) memcpy(blk, &d, 2);
        if (type == DS4_TYPE_Q4_K) { memcpy(blk, &d, 2); memcpy(blk + 2, &m, 2); }
        if (type == DS4_TYPE_Q2_K) { memcpy(blk + 80, &d, 2); memcpy(blk + 82, &m, 2); }
    }
}

/* Fill host data and the reference for one case. */
static int case_prepare(const kcase *c, kbufs *b, test_rng *rng) {
    uint64_t rb = ds4_row_bytes(c->type, c->ncols), off = case_w_off(c->type);
    T_CHECK(rb > 0, "row bytes of %s x %llu", ds4_type_name(c->type), (unsigned long long)c->ncols);
    b->w = calloc(1, off + rb * c->nrows);
    b->x = malloc(sizeof(float) * c->ntok * c->ncols);
    b->y = malloc(sizeof(float) * (c->ntok * c->nrows + Y_OFF + 4));
    b->ref = malloc(sizeof(double) * c->ntok * c->nrows);
    b->refabs = malloc(sizeof(double) * c->ntok * c->nrows);
    float *row = malloc(sizeof(float) * c->ncols);
    float *deq = malloc(sizeof(float) * c->ncols * c->nrows);
    int ok = b->w && b->x && b->y && b->ref && b->refabs && row && deq;
    if (ok && c->raw_blocks) fill_raw_blocks(c->type, b->w + off, rb * c->nrows, rng);
    for (uint64_t r = 0; ok && r < c->nrows; r++) {
        if (!c->raw_blocks) {
            for (uint64_t i = 0; i < c->ncols; i++) row[i] = test_rng_f32(rng);
            ok = ds4_quantize_row(c->type, row, b->w + off + r * rb, c->ncols, NULL) == 0;
        }
        ok = ok && ds4_dequantize_row(c->type, b->w + off + r * rb, deq + r * c->ncols, c->ncols) == 0;
    }
    for (uint64_t i = 0; ok && i < c->ntok * c->ncols; i++) b->x[i] = test_rng_f32(rng);
    for (uint64_t t = 0; ok && t < c->ntok; t++)
        for (uint64_t r = 0; r < c->nrows; r++) {
            double s = 0, a = 0;
            for (uint64_t i = 0; i < c->ncols; i++) {
                double p = (double)deq[r * c->ncols + i] * (double)b->x[t * c->ncols + i];
                s += p;
                a += fabs(p);
            }
            b->ref[t * c->nrows + r] = s;
            b->refabs[t * c->nrows + r] = a;
        }
    free(row);
    free(deq);
    T_CHECK(ok, "allocating or quantizing %s data", ds4_type_name(c->type));
    return 0;
}

/* Upload, run matvec (ntok 1 uses only token 0) or matmul, compare. */
static int case_run(ds4_kernels *k, const kcase *c, kbufs *b, bool matmul) {
    ds4_runtime *rt = k->rt;
    ds4_error err = {{0}};
    uint64_t rb = ds4_row_bytes(c->type, c->ncols), off = case_w_off(c->type);
    uint64_t ntok = matmul ? c->ntok : 1;
    uint64_t ylen = ntok * c->nrows + Y_OFF + 4;
    for (uint64_t i = 0; i < ylen; i++) b->y[i] = SENTINEL;
    if (!b->wb) {
        T_CHECK(ds4_buffer_new(rt, off + rb * c->nrows, &b->wb, &err) == 0, "%s", err.msg);
        T_CHECK(ds4_buffer_write(rt, b->wb, 0, b->w, off + rb * c->nrows, &err) == 0, "%s", err.msg);
        T_CHECK(ds4_buffer_new(rt, sizeof(float) * (X_OFF + c->ntok * c->ncols), &b->xb, &err) == 0, "%s",
                err.msg);
        T_CHECK(ds4_buffer_write(rt, b->xb, sizeof(float) * X_OFF, b->x, sizeof(float) * c->ntok * c->ncols,
                                 &err) == 0,
                "%s", err.msg);
        T_CHECK(ds4_buffer_new(rt, sizeof(float) * (c->ntok * c->nrows + Y_OFF + 4), &b->yb, &err) == 0, "%s",
                err.msg);
    }
    T_CHECK(ds4_buffer_write(rt, b->yb, 0, b->y, sizeof(float) * ylen, &err) == 0, "%s", err.msg);
    int rc = matmul ? ds4_matmul(k, c->type, b->wb, off, c->ncols, c->nrows, b->xb, X_OFF, b->yb, Y_OFF, ntok, &err)
                    : ds4_matvec(k, c->type, b->wb, off, c->ncols, c->nrows, b->xb, X_OFF, b->yb, Y_OFF, &err);
    T_CHECK(rc == 0, "%s", err.msg);
    T_CHECK(ds4_buffer_read(rt, b->yb, 0, b->y, sizeof(float) * ylen, &err) == 0, "%s", err.msg);

    const double *ref = b->ref, *refabs = b->refabs;
    const char *what = matmul ? "matmul" : "matvec";
    for (uint64_t i = 0; i < ylen; i++) {
        bool inside = i >= Y_OFF && i < Y_OFF + ntok * c->nrows;
        if (!inside) {
            T_CHECK(b->y[i] == SENTINEL, "%s %s: float %llu outside the output was written", what,
                    ds4_type_name(c->type), (unsigned long long)i);
            continue;
        }
        uint64_t j = i - Y_OFF;
        double tol = 1e-4 * refabs[j] + 1e-30;
        T_CHECK(fabs((double)b->y[i] - ref[j]) <= tol,
                "%s %s %llux%llu ntok %llu%s: token %llu row %llu got %.9g want %.9g (tol %.3g)", what,
                ds4_type_name(c->type), (unsigned long long)c->nrows, (unsigned long long)c->ncols,
                (unsigned long long)ntok, c->raw_blocks ? " raw" : "", (unsigned long long)(j / c->nrows),
                (unsigned long long)(j % c->nrows), b->y[i], ref[j], tol);
    }
    return 0;
}

static int case_check(ds4_kernels *k, const kcase *c, uint64_t seed) {
    test_rng rng = {seed};
    kbufs b;
    memset(&b, 0, sizeof(b));
    int rc = case_prepare(c, &b, &rng);
    if (rc == 0) rc = case_run(k, c, &b, false);
    if (rc == 0) rc = case_run(k, c, &b, true);
    case_free(&b);
    return rc;
}

/* Shapes per type: ragged rows (not multiples of MV_ROWS 8 or 3) and
 * tokens (not multiples of MM_TOKENS 4 or 3); odd ncols for float types;
 * a short wide matrix, which GPU builds (the lanes variant) split by
 * columns (ds4_matvec_splits). */
static int type_cases(ds4_kernels *k, uint32_t type) {
    const ds4_type_traits *tr = ds4_type_get(type);
    bool is_float = tr->block_size == 1;
    kcase cases[8];
    int n = 0;
    if (is_float) {
        cases[n++] = (kcase){type, 13, 77, 5, false};
        cases[n++] = (kcase){type, 37, 512, 9, false};
        cases[n++] = (kcase){type, 5, 31, 1, false};
        cases[n++] = (kcase){type, 2, 1, 2, false};
        cases[n++] = (kcase){type, 7, 2305, 3, false}; /* split-K on GPU builds, 1-value last split */
    } else if (tr->block_size == 32) {
        cases[n++] = (kcase){type, 13, 96, 5, false};
        cases[n++] = (kcase){type, 37, 1024, 9, false};
        cases[n++] = (kcase){type, 1, 32, 1, false};
        cases[n++] = (kcase){type, 11, 160, 7, true};
        cases[n++] = (kcase){type, 7, 2560, 3, false}; /* split-K on GPU builds */
    } else {
        cases[n++] = (kcase){type, 13, 256, 5, false};
        cases[n++] = (kcase){type, 21, 768, 7, false};
        cases[n++] = (kcase){type, 11, 512, 4, true};
        cases[n++] = (kcase){type, 5, 2560, 2, false}; /* split-K on GPU builds */
    }
    for (int i = 0; i < n; i++)
        if (case_check(k, &cases[i], 0x1234567ULL * (uint64_t)(i + 1) + type) != 0) return 1;
    return 0;
}

/* Run the cases of one type on the default build and the lanes build. */
static int check_type(uint32_t type) {
    ds4_runtime *rt = test_runtime();
    T_CHECK(rt != NULL, "no OpenCL runtime");
    const char *variants[2] = {NULL, LANES_OPTIONS};
    for (int v = 0; v < 2; v++) {
        ds4_kernels k;
        ds4_error err = {{0}};
        T_CHECK(ds4_kernels_init(&k, rt, variants[v], &err) == 0, "%s", err.msg);
        int rc = type_cases(&k, type);
        ds4_kernels_free(&k);
        if (rc != 0) {
            fprintf(stderr, "    (build options: %s)\n", variants[v] ? variants[v] : "device defaults");
            return rc;
        }
    }
    return 0;
}

static int t_f32(void) { return check_type(DS4_TYPE_F32); }
static int t_f16(void) { return check_type(DS4_TYPE_F16); }
static int t_bf16(void) { return check_type(DS4_TYPE_BF16); }
static int t_q8_0(void) { return check_type(DS4_TYPE_Q8_0); }
static int t_q2_k(void) { return check_type(DS4_TYPE_Q2_K); }
static int t_q4_k(void) { return check_type(DS4_TYPE_Q4_K); }
static int t_iq2_xxs(void) { return check_type(DS4_TYPE_IQ2_XXS); }

/* Tuning is parsed back from the options; bad tunings and bad calls fail
 * with messages naming the problem, before anything is enqueued. */
static int t_init_and_errors(void) {
    ds4_runtime *rt = test_runtime();
    T_CHECK(rt != NULL, "no OpenCL runtime");
    ds4_error err = {{0}};
    ds4_kernels k;
    T_CHECK(ds4_kernels_init(&k, rt, LANES_OPTIONS, &err) == 0, "%s", err.msg);
    T_CHECK(k.mv_lanes == 4 && k.mv_rows == 3 && k.mm_tokens == 3, "tuning %d/%d/%d", k.mv_lanes, k.mv_rows,
            k.mm_tokens);
    const uint32_t with[] = {DS4_TYPE_F32,  DS4_TYPE_F16,  DS4_TYPE_BF16,   DS4_TYPE_Q8_0,
                             DS4_TYPE_Q2_K, DS4_TYPE_Q4_K, DS4_TYPE_IQ2_XXS};
    for (size_t i = 0; i < sizeof(with) / sizeof(with[0]); i++)
        T_CHECK(ds4_kernels_has_type(&k, with[i]), "no kernels for %s", ds4_type_name(with[i]));
    T_CHECK(!ds4_kernels_has_type(&k, DS4_TYPE_Q4_0), "Q4_0 claims kernels");
    T_CHECK(!ds4_kernels_has_type(&k, 1000), "type 1000 claims kernels");

    cl_mem buf = NULL;
    T_CHECK(ds4_buffer_new(rt, 4096, &buf, &err) == 0, "%s", err.msg);
    int rc = 0;
    if (ds4_matvec(&k, DS4_TYPE_Q4_0, buf, 0, 32, 4, buf, 0, buf, 0, &err) == 0 || !strstr(err.msg, "Q4_0")) rc = 1;
    if (!rc && (ds4_matvec(&k, DS4_TYPE_Q8_0, buf, 0, 48, 4, buf, 0, buf, 0, &err) == 0 ||
                !strstr(err.msg, "multiple")))
        rc = 2;
    if (!rc && (ds4_matvec(&k, DS4_TYPE_F16, buf, 1, 8, 4, buf, 0, buf, 0, &err) == 0 ||
                !strstr(err.msg, "aligned")))
        rc = 3;
    if (!rc && (ds4_matvec(&k, DS4_TYPE_F32, buf, 0, 1ULL << 32, 1, buf, 0, buf, 0, &err) == 0 ||
                !strstr(err.msg, "32-bit")))
        rc = 4;
    if (!rc && (ds4_matmul(&k, DS4_TYPE_F32, buf, 0, 8, 4, buf, 0, buf, 0, 0, &err) == 0 ||
                !strstr(err.msg, "token")))
        rc = 5;
    clReleaseMemObject(buf);
    ds4_kernels_free(&k);
    T_CHECK(rc == 0, "bad call %d accepted or wrong message: %s", rc, err.msg);

    T_CHECK(ds4_kernels_init(&k, rt, "-DMV_LANES=3", &err) != 0, "MV_LANES=3 accepted");
    T_CHECK(strstr(err.msg, "MV_LANES=3") != NULL, "message: %s", err.msg);
    return 0;
}

void tests_register_kernels(void) {
    test_add("kernels/init_and_errors", t_init_and_errors);
    test_add("kernels/f32", t_f32);
    test_add("kernels/f16", t_f16);
    test_add("kernels/bf16", t_bf16);
    test_add("kernels/q8_0", t_q8_0);
    test_add("kernels/q2_k", t_q2_k);
    test_add("kernels/q4_k", t_q4_k);
    test_add("kernels/iq2_xxs", t_iq2_xxs);
}
