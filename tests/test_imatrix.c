/* test_imatrix.c - the importance matrix (src/imatrix.c), its collection on
 * the device and the scorer (src/calib.c), and the programs ds4cl-imatrix /
 * ds4cl-score.
 *
 *   - format: a filled imatrix round-trips through memory and a file byte
 *     for byte; truncation, a flipped byte, a wrong magic / version /
 *     fingerprint, a NaN and values under a zero count are refused; the
 *     tensor-name parser, the per-row lookup and the weight-energy fallback
 *     give the expected numbers;
 *   - device collector: random inputs and routing over two chunks against a
 *     host computation in double (counts exact, means within 1e-5);
 *   - engine collection on a test model: the counts add up to tokens x
 *     n_used per layer and equal the tid2eid histogram on the hash layer;
 *     since xn = RMSNorm(x) * w, mean_c(gate_up[c] / w[c]^2) is 1 for every
 *     expert; prefill chunk sizes agree; a repeat gives identical bytes;
 *   - acceptance (issue 7): a model whose routed-expert inputs are skewed
 *     (a few FFN-norm dims and up-projection rows scaled up) is quantized
 *     to q2 (IQ2_XXS gate/up, Q2_K down) with and without an imatrix
 *     collected on sampled text; the imatrix model must score a lower NLL
 *     on held-out sampled text; the NLLs are printed;
 *   - the programs: ds4cl-imatrix writes what the library collects, and
 *     ds4cl-score prints the library's NLL; bad command lines exit 2.
 */
#include <pthread.h>
#include <stdarg.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>
#include <xxhash.h>

#include "../src/calib.h"
#include "../src/gguf.h"
#include "../src/gguf_write.h"
#include "../src/imatrix.h"
#include "../src/kernels.h"
#include "../src/quant.h"
#include "../src/testmodel.h"
#include "test.h"

/* ------------------------------------------------------------ helpers */

static void tmp_path(char *buf, size_t cap, const char *tag) {
    snprintf(buf, cap, "/tmp/ds4cl-imatrix-%d-%s", (int)getpid(), tag);
}

/* A small imatrix with distinct values; expert 1 of layer 0 saw no token. */
static int fill_small(ds4_imatrix *m, ds4_error *err) {
    ds4_imatrix_dims d = {2, 3, 8, 4, 100, 2};
    if (ds4_imatrix_init(m, &d, err) != 0) return -1;
    m->n_tokens = 42;
    m->tokens_hash = 0x1234567890abcdefULL;
    snprintf(m->name, sizeof(m->name), "small");
    for (uint32_t le = 0; le < 6; le++) {
        m->count[le] = le == 1 ? 0 : 10 + le;
        for (uint32_t c = 0; c < 8; c++) m->gate_up[le * 8 + c] = le == 1 ? 0.0f : 0.5f * (float)(le + 1) + c;
        for (uint32_t c = 0; c < 4; c++) m->down[le * 4 + c] = le == 1 ? 0.0f : 0.25f * (float)c + le;
    }
    return 0;
}

static bool imatrix_equal(const ds4_imatrix *a, const ds4_imatrix *b) {
    const ds4_imatrix_dims *d = &a->dims;
    uint64_t le = (uint64_t)d->n_layer * d->n_expert;
    return memcmp(&a->dims, &b->dims, sizeof(a->dims)) == 0 && a->fingerprint == b->fingerprint &&
           a->n_tokens == b->n_tokens && a->tokens_hash == b->tokens_hash && strcmp(a->name, b->name) == 0 &&
           memcmp(a->count, b->count, le * 8) == 0 && memcmp(a->gate_up, b->gate_up, le * d->n_embd * 4) == 0 &&
           memcmp(a->down, b->down, le * d->n_ff * 4) == 0;
}

/* Parse a mutated copy of a serialised file; returns 0 when it was refused
 * with a message containing `want`. */
static int refused(const uint8_t *buf, uint64_t size, uint64_t at, uint8_t xor_mask, uint64_t new_size,
                   const char *want) {
    uint8_t *c = malloc(size);
    if (!c) return -1;
    memcpy(c, buf, size);
    if (at < size) c[at] ^= xor_mask;
    ds4_imatrix m;
    ds4_error err = {{0}};
    int rc = ds4_imatrix_parse(&m, c, new_size, &err);
    free(c);
    if (rc == 0) {
        fprintf(stderr, "    mutation at %llu accepted\n", (unsigned long long)at);
        ds4_imatrix_free(&m);
        return -1;
    }
    if (!strstr(err.msg, want)) {
        fprintf(stderr, "    mutation at %llu: '%s' lacks '%s'\n", (unsigned long long)at, err.msg, want);
        return -1;
    }
    return 0;
}

/* Re-seal a buffer's checksum after editing it. */
static void reseal(uint8_t *buf, uint64_t size) {
    uint64_t h = XXH64(buf, (size_t)(size - 8), 0);
    for (int i = 0; i < 8; i++) buf[size - 8 + i] = (uint8_t)(h >> (8 * i));
}

/* ------------------------------------------------------------ format */

static int t_format(void) {
    ds4_error err = {{0}};
    ds4_imatrix m, back;
    T_CHECK(fill_small(&m, &err) == 0, "%s", err.msg);
    uint8_t *buf = NULL;
    uint64_t size = 0;
    T_CHECK(ds4_imatrix_to_memory(&m, &buf, &size, &err) == 0, "%s", err.msg);
    T_CHECK(size == ds4_imatrix_file_bytes(&m.dims) && size == 128 + 6 * (8 + 4 + 32 + 4 + 16) + 8,
            "size %llu", (unsigned long long)size);
    T_CHECK(memcmp(buf, "DS4CLIMX", 8) == 0 && buf[8] == 1 && buf[12] == 2 && buf[16] == 3 && buf[20] == 8 &&
                buf[24] == 4 && buf[28] == 100 && buf[32] == 2 && buf[48] == 42,
            "header bytes");
    T_CHECK(buf[128] == 10 && buf[136] == 8, "first record: count 10, 8 columns");
    T_CHECK(ds4_imatrix_parse(&back, buf, size, &err) == 0, "%s", err.msg);
    T_CHECK(imatrix_equal(&m, &back), "memory round trip differs");
    ds4_imatrix_free(&back);

    char path[256];
    tmp_path(path, sizeof(path), "fmt.imx");
    T_CHECK(ds4_imatrix_save(&m, path, &err) == 0, "%s", err.msg);
    T_CHECK(ds4_imatrix_load(&back, path, &err) == 0, "%s", err.msg);
    T_CHECK(imatrix_equal(&m, &back), "file round trip differs");
    ds4_imatrix_free(&back);
    FILE *fp = fopen(path, "r+b");
    T_CHECK(fp && ftruncate(fileno(fp), (off_t)size - 1) == 0, "truncate");
    fclose(fp);
    T_CHECK(ds4_imatrix_load(&back, path, &err) != 0 && strstr(err.msg, "truncated") && strstr(err.msg, path),
            "truncated file: %s", err.msg);
    unlink(path);
    T_CHECK(ds4_imatrix_load(&back, path, &err) != 0 && back.count == NULL, "missing file loaded");

    /* Mutations: truncation, a flipped body byte, magic, version, shape. */
    T_CHECK(refused(buf, size, size, 0, size - 4, "truncated") == 0, "short");
    T_CHECK(refused(buf, size, 300, 0x01, size, "checksum") == 0, "body byte");
    T_CHECK(refused(buf, size, 0, 0x20, size, "magic") == 0, "magic");
    T_CHECK(refused(buf, size, 8, 0x02, size, "version") == 0, "version");
    T_CHECK(refused(buf, size, 28, 0x01, size, "fingerprint") == 0, "shape word");
    T_CHECK(refused(buf, size, 12, 0x01, size, "fingerprint") == 0, "layer count");
    T_CHECK(refused(buf, size, 12, 0x02, size, "0 layers") == 0, "zero layers");
    T_CHECK(refused(buf, size, 0, 0, 10, "too short") == 0, "tiny");

    /* Semantic errors behind a valid checksum: NaN, a value under count 0. */
    uint8_t *c = malloc(size);
    T_CHECK(c != NULL, "oom");
    memcpy(c, buf, size);
    const float nan_v = NAN;
    memcpy(c + 128 + 12 + 4, &nan_v, 4); /* layer 0 expert 0 gate/up column 1 */
    reseal(c, size);
    T_CHECK(refused(c, size, size, 0, size, "column 1") == 0, "NaN");
    memcpy(c, buf, size);
    const uint64_t rec = 8 + 4 + 32 + 4 + 16;
    const float one = 1.0f;
    memcpy(c + 128 + rec + 12, &one, 4); /* expert 1 (count 0) */
    reseal(c, size);
    T_CHECK(refused(c, size, size, 0, size, "zero count") == 0, "value under count 0");
    free(c);
    free(buf);

    /* Dims check against a model, and loading for one. */
    ds4_imatrix_dims d = m.dims;
    T_CHECK(ds4_imatrix_check_dims(&m, &d, &err) == 0, "%s", err.msg);
    T_CHECK(ds4_imatrix_save(&m, path, &err) == 0, "%s", err.msg);
    T_CHECK(ds4_imatrix_load_for(&back, path, &d, &err) == 0 && imatrix_equal(&m, &back), "%s", err.msg);
    ds4_imatrix_free(&back);
    d.n_ff = 8;
    T_CHECK(ds4_imatrix_check_dims(&m, &d, &err) != 0 && strstr(err.msg, "expert width"), "%s", err.msg);
    T_CHECK(ds4_imatrix_load_for(&back, path, &d, &err) != 0 && strstr(err.msg, path) && back.count == NULL,
            "%s", err.msg);
    unlink(path);

    /* The GGUF metadata of a conversion that used it. */
    gguf_writer *w = gguf_writer_new(0);
    T_CHECK(w != NULL, "oom");
    ds4_imatrix_put_meta(w, &m, "/some/dir/cal.imx");
    uint8_t *g = NULL;
    uint64_t gsize = 0;
    gguf_file f = {0};
    int rc = gguf_writer_to_memory(w, &g, &gsize, &err);
    gguf_writer_free(w);
    if (rc == 0) rc = gguf_parse(&f, g, gsize, &err);
    T_CHECK(rc == 0, "%s", err.msg);
    uint64_t v = 0;
    const gguf_kv *kv = gguf_find_kv(&f, "quantize.imatrix.file");
    rc = kv && kv->value.type == GGUF_VT_STRING && gguf_str_eq(kv->value.s, "cal.imx") ? 0 : -1;
    if (rc == 0) rc = gguf_get_u64(&f, "quantize.imatrix.n_tokens", &v, &err) == 0 && v == 42 ? 0 : -1;
    if (rc == 0) rc = gguf_get_u64(&f, "quantize.imatrix.entries_count", &v, &err) == 0 && v == 5 ? 0 : -1;
    if (rc == 0) rc = gguf_get_u64(&f, "quantize.imatrix.tokens_hash", &v, &err) == 0 && v == m.tokens_hash ? 0 : -1;
    if (rc == 0) rc = gguf_get_u64(&f, "quantize.imatrix.hash", &v, &err) == 0 && v != 0 ? 0 : -1;
    gguf_close(&f);
    free(g);
    ds4_imatrix_free(&m);
    T_CHECK(rc == 0, "quantize.imatrix.* metadata");
    return 0;
}

static int t_lookup(void) {
    uint32_t il = 99;
    int in = -1;
    T_CHECK(ds4_imatrix_tensor_input("blk.12.ffn_down_exps.weight", &il, &in) && il == 12 && in == DS4_IMX_DOWN,
            "down");
    T_CHECK(ds4_imatrix_tensor_input("blk.0.ffn_gate_exps", &il, &in) && il == 0 && in == DS4_IMX_GATE_UP, "gate");
    T_CHECK(ds4_imatrix_tensor_input("blk.3.ffn_up_exps.weight", &il, &in) && il == 3 && in == DS4_IMX_GATE_UP, "up");
    const char *bad[] = {"blk.3.ffn_up_shexp.weight", "blk..ffn_up_exps.weight", "blk.01.ffn_up_exps.weight",
                         "blk.3.ffn_up_exps.weightx", "output.weight", "blk.3.ffn_down_exps.bias"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        T_CHECK(!ds4_imatrix_tensor_input(bad[i], &il, &in), "%s accepted", bad[i]);

    ds4_error err = {{0}};
    ds4_imatrix m;
    T_CHECK(fill_small(&m, &err) == 0, "%s", err.msg);
    /* gate/up of layer 1: 4 rows (n_ff) per expert, 8 columns. */
    T_CHECK(ds4_imatrix_lookup(&m, "blk.1.ffn_up_exps.weight", 9, 8) == m.gate_up + (3 + 2) * 8, "row 9 -> expert 2");
    /* down of layer 0: 8 rows (n_embd) per expert, 4 columns; expert 1 saw nothing. */
    T_CHECK(ds4_imatrix_lookup(&m, "blk.0.ffn_down_exps.weight", 7, 4) == m.down, "row 7 -> expert 0");
    T_CHECK(ds4_imatrix_lookup(&m, "blk.0.ffn_down_exps.weight", 8, 4) == NULL, "expert 1 has no tokens");
    T_CHECK(ds4_imatrix_lookup(&m, "blk.0.ffn_down_exps.weight", 16, 8) == NULL, "wrong width");
    T_CHECK(ds4_imatrix_lookup(&m, "blk.2.ffn_down_exps.weight", 0, 4) == NULL, "layer out of range");
    T_CHECK(ds4_imatrix_lookup(&m, "blk.0.ffn_down_exps.weight", 24, 4) == NULL, "expert out of range");
    T_CHECK(ds4_imatrix_lookup(NULL, "blk.0.ffn_down_exps.weight", 0, 4) == NULL, "no imatrix");

    /* Importance: the values, or the column energy of the weights. */
    float w[3 * 4] = {1, 2, 0, -1, 3, 0, 0, 1, -2, 2, 0, 1}, out[8];
    T_CHECK(ds4_imatrix_importance(&m, 0, DS4_IMX_DOWN, 2, w, 3, 4, out, &err) == 1, "%s", err.msg);
    T_CHECK(memcmp(out, m.down + 2 * 4, 16) == 0, "imatrix values");
    T_CHECK(ds4_imatrix_importance(&m, 0, DS4_IMX_DOWN, 1, w, 3, 4, out, &err) == 0, "%s", err.msg);
    const float want[4] = {14.0f / 3, 8.0f / 3, 0.0f, 1.0f};
    for (int i = 0; i < 4; i++) T_CHECK(fabsf(out[i] - want[i]) < 1e-6f, "fallback[%d] %g want %g", i, out[i], want[i]);
    T_CHECK(ds4_imatrix_importance(NULL, 0, DS4_IMX_DOWN, 0, w, 3, 4, out, &err) == 0, "no imatrix");
    T_CHECK(ds4_imatrix_importance(&m, 0, DS4_IMX_DOWN, 0, w, 3, 3, out, &err) == -1, "width mismatch");
    T_CHECK(ds4_imatrix_importance(&m, 0, DS4_IMX_DOWN, 1, NULL, 3, 4, out, &err) == -1, "no weights");
    ds4_imatrix_free(&m);
    return 0;
}

/* ------------------------------------------------------------ device collector */

static int t_collector(void) {
    ds4_runtime *rt = test_runtime();
    T_CHECK(rt != NULL, "no device");
    ds4_error err = {{0}};
    ds4_kernels k;
    T_CHECK(ds4_kernels_init(&k, rt, NULL, &err) == 0, "%s", err.msg);
    enum { L = 2, NE = 5, K = 2, E = 40, F = 24, TMAX = 9 };
    const ds4_imatrix_dims d = {L, NE, E, F, 50, K};
    ds4_imx_collector *c = NULL;
    int rc = ds4_imx_collector_new(&c, rt, k.program, &d, TMAX * K, &err);
    if (rc != 0) {
        ds4_kernels_free(&k);
        T_CHECK(0, "%s", err.msg);
    }
    static float xn[TMAX * E], mid[TMAX * K * F];
    static int32_t sel[TMAX * K];
    static double ref_in[L][NE][E], ref_mid[L][NE][F];
    static uint64_t ref_cnt[L][NE];
    memset(ref_in, 0, sizeof(ref_in));
    memset(ref_mid, 0, sizeof(ref_mid));
    memset(ref_cnt, 0, sizeof(ref_cnt));
    cl_mem bx = NULL, bs = NULL, bm = NULL;
    if (rc == 0) rc = ds4_buffer_new(rt, sizeof(xn), &bx, &err);
    if (rc == 0) rc = ds4_buffer_new(rt, sizeof(sel), &bs, &err);
    if (rc == 0) rc = ds4_buffer_new(rt, sizeof(mid), &bm, &err);
    test_rng rng = {2024};
    const uint32_t chunks[] = {TMAX, 4, 7};
    for (size_t ci = 0; rc == 0 && ci < 3; ci++) {
        uint32_t T = chunks[ci];
        for (uint32_t il = 0; rc == 0 && il < L; il++) {
            for (uint32_t i = 0; i < T * E; i++) xn[i] = test_rng_f32(&rng) * (1.0f + (float)(i % E));
            for (uint32_t i = 0; i < T * K * F; i++) mid[i] = test_rng_f32(&rng) * 3.0f;
            for (uint32_t t = 0; t < T; t++) {
                /* experts 0..3 only: expert 4 stays unseen; two distinct per token */
                uint32_t a = (uint32_t)(test_rng_u64(&rng) % 4), b = (a + 1 + (uint32_t)(test_rng_u64(&rng) % 3)) % 4;
                sel[t * K] = (int32_t)a;
                sel[t * K + 1] = (int32_t)b;
                for (uint32_t kk = 0; kk < K; kk++) {
                    uint32_t e = (uint32_t)sel[t * K + kk];
                    ref_cnt[il][e]++;
                    for (uint32_t col = 0; col < E; col++) ref_in[il][e][col] += (double)xn[t * E + col] * xn[t * E + col];
                    for (uint32_t col = 0; col < F; col++) {
                        double v = mid[(t * K + kk) * F + col];
                        ref_mid[il][e][col] += v * v;
                    }
                }
            }
            rc = ds4_buffer_write(rt, bx, 0, xn, sizeof(xn), &err);
            if (rc == 0) rc = ds4_buffer_write(rt, bs, 0, sel, sizeof(sel), &err);
            if (rc == 0) rc = ds4_buffer_write(rt, bm, 0, mid, sizeof(mid), &err);
            if (rc == 0) rc = ds4_imx_collector_add(c, il, bx, bs, bm, T, &err);
        }
    }
    /* Too many tokens for the lists, and a layer out of range, are refused. */
    if (rc == 0 && ds4_imx_collector_add(c, 0, bx, bs, bm, TMAX + 1, &err) == 0) rc = ds4_fail(&err, "big chunk");
    if (rc == 0 && ds4_imx_collector_add(c, L, bx, bs, bm, 1, &err) == 0) rc = ds4_fail(&err, "layer L");
    ds4_imatrix m = {0};
    if (rc == 0) rc = ds4_imx_collector_read(c, &m, &err);
    double worst = 0;
    for (uint32_t il = 0; rc == 0 && il < L; il++) {
        for (uint32_t e = 0; rc == 0 && e < NE; e++) {
            uint64_t cnt = m.count[il * NE + e];
            if (cnt != ref_cnt[il][e]) rc = ds4_fail(&err, "layer %u expert %u count %llu want %llu", il, e,
                                                      (unsigned long long)cnt, (unsigned long long)ref_cnt[il][e]);
            for (uint32_t col = 0; rc == 0 && col < E + F; col++) {
                double want = col < E ? ref_in[il][e][col] : ref_mid[il][e][col - E];
                want = cnt ? want / (double)cnt : 0.0;
                double got = col < E ? m.gate_up[(il * NE + e) * E + col] : m.down[(il * NE + e) * F + col - E];
                double rel = fabs(got - want) / (want > 1e-30 ? want : 1.0);
                if (rel > worst) worst = rel;
                if (rel > 1e-5) rc = ds4_fail(&err, "layer %u expert %u col %u: %g want %g", il, e, col, got, want);
            }
        }
    }
    if (rc == 0 && (m.count[4] != 0 || m.gate_up[4 * E] != 0.0f)) rc = ds4_fail(&err, "unseen expert has values");
    if (rc == 0) printf("    collector vs host: max rel %.2e over %d layers x %d experts\n", worst, L, NE);
    if (rc != 0) fprintf(stderr, "    %s\n", err.msg);
    ds4_imatrix_free(&m);
    if (bx) clReleaseMemObject(bx);
    if (bs) clReleaseMemObject(bs);
    if (bm) clReleaseMemObject(bm);
    ds4_imx_collector_free(c);
    ds4_kernels_free(&k);
    return rc;
}

/* ------------------------------------------------------------ test models */

/* A small all-F32 model (2 layers: hash-routed, then biased top-k). */
static void small_opts(ds4_testmodel_opts *o) {
    ds4_testmodel_default_opts(o);
    o->n_layer = 2;
    o->n_expert = 4;
    o->n_expert_used = 2;
    o->n_hash_layers = 1;
    o->dense_type = DS4_TYPE_F32;
    o->exp_gate_up_type = DS4_TYPE_F32;
    o->exp_down_type = DS4_TYPE_F32;
    o->seed = 7;
}

/* Rewrites one tensor: set *type and *data (malloc'd, exact bytes) to
 * replace it, or leave *data NULL to copy it. */
typedef int (*tensor_fn)(void *ctx, const char *name, const gguf_tensor *t, uint32_t *type, void **data,
                         ds4_error *err);

/* Copy every key and tensor of f to path, through fn. */
static int copy_gguf(const gguf_file *f, const char *path, tensor_fn fn, void *ctx, ds4_error *err) {
    gguf_writer *w = gguf_writer_new(f->alignment == GGUF_DEFAULT_ALIGNMENT ? 0 : f->alignment);
    if (!w) return ds4_fail(err, "oom");
    char key[512];
    for (uint64_t i = 0; i < f->n_kv; i++) {
        gguf_str_copy(f->kv[i].key, key, sizeof(key));
        if (strcmp(key, "general.alignment") != 0) gguf_w_value(w, key, &f->kv[i].value);
    }
    int rc = 0;
    for (uint64_t i = 0; rc == 0 && i < f->n_tensors; i++) {
        const gguf_tensor *t = &f->tensors[i];
        char name[GGUF_MAX_NAME_LEN + 1];
        gguf_str_copy(t->name, name, sizeof(name));
        uint32_t type = t->type;
        void *data = NULL;
        rc = fn ? fn(ctx, name, t, &type, &data, err) : 0;
        if (rc == 0) rc = gguf_w_tensor(w, name, t->n_dims, t->ne, type, data ? data : t->data, err);
        free(data);
    }
    if (rc == 0) rc = gguf_writer_save(w, path, err);
    gguf_writer_free(w);
    return rc;
}

static void *dup_bytes(const void *p, uint64_t n) {
    void *q = malloc(n);
    if (q) memcpy(q, p, n);
    return q;
}

/* The skew: HOT_N evenly spread FFN-norm dims are scaled by HOT_NORM and
 * HOT_N rows (ff units) of every expert's up projection by HOT_UP, so a few
 * input columns of gate/up and of down carry most of the energy. */
#define HOT_N 8
#define HOT_NORM 6.0f
#define HOT_UP 5.0f

static bool is_hot(uint64_t i, uint64_t n) { return i % (n / HOT_N) == 3; }

static int skew_fn(void *ctx, const char *name, const gguf_tensor *t, uint32_t *type, void **data, ds4_error *err) {
    (void)ctx;
    (void)type;
    bool norm = strstr(name, "ffn_norm") != NULL, up = strstr(name, "ffn_up_exps") != NULL;
    if (!norm && !up) return 0;
    if (t->type != DS4_TYPE_F32) return ds4_fail(err, "%s is not F32", name);
    float *v = dup_bytes(t->data, t->nbytes);
    if (!v) return ds4_fail(err, "oom");
    if (norm) {
        for (uint64_t c = 0; c < t->ne[0]; c++)
            if (is_hot(c, t->ne[0])) v[c] *= HOT_NORM;
    } else {
        for (uint64_t r = 0; r < t->ne[1] * t->ne[2]; r++)
            if (is_hot(r % t->ne[1], t->ne[1]))
                for (uint64_t c = 0; c < t->ne[0]; c++) v[r * t->ne[0] + c] *= HOT_UP;
    }
    *data = v;
    return 0;
}

/* q2 recipe for the routed experts: gate/up IQ2_XXS, down Q2_K. */
enum imp_mode { IMP_NONE, IMP_IMATRIX };

typedef struct {
    const ds4_imatrix *imx;
    int mode;
} q2_ctx;

typedef struct {
    uint32_t type;
    const float *src;
    uint8_t *dst;
    uint64_t ncols, rows_per_expert, row0, row1, row_bytes;
    const float *const *imp; /* per expert, or NULL */
    int rc;
} q2_job;

static void *q2_worker(void *arg) {
    q2_job *j = arg;
    for (uint64_t r = j->row0; r < j->row1 && j->rc == 0; r++) {
        const float *imp = j->imp ? j->imp[r / j->rows_per_expert] : NULL;
        j->rc = ds4_quantize_row(j->type, j->src + r * j->ncols, j->dst + r * j->row_bytes, j->ncols, imp);
    }
    return NULL;
}

static int q2_fn(void *ctx, const char *name, const gguf_tensor *t, uint32_t *type, void **data, ds4_error *err) {
    const q2_ctx *q = ctx;
    uint32_t il;
    int input;
    if (!ds4_imatrix_tensor_input(name, &il, &input)) return 0;
    if (t->type != DS4_TYPE_F32) return ds4_fail(err, "%s is not F32", name);
    const uint64_t ncols = t->ne[0], rpe = t->ne[1], n_exp = t->ne[2];
    *type = strstr(name, "down") ? DS4_TYPE_Q2_K : DS4_TYPE_IQ2_XXS;
    const uint64_t rb = ds4_row_bytes(*type, ncols);
    uint8_t *out = malloc(rb * rpe * n_exp);
    const float **imp = calloc(n_exp, sizeof(*imp));
    if (!out || !imp) {
        free(out), free(imp);
        return ds4_fail(err, "oom");
    }
    const float *src = (const float *)t->data;
    int rc = 0;
    for (uint64_t e = 0; e < n_exp && rc == 0; e++) {
        if (q->mode == IMP_IMATRIX) {
            /* The converter's per-row call, checked against the per-expert one. */
            imp[e] = ds4_imatrix_lookup(q->imx, name, e * rpe, ncols);
            if (!imp[e]) rc = ds4_fail(err, "%s expert %llu: no imatrix values", name, (unsigned long long)e);
        }
    }
    /* Two workers over the rows (the bytes do not depend on the split). */
    q2_job jobs[2];
    pthread_t th[2];
    bool started[2] = {false, false};
    const uint64_t rows = rpe * n_exp;
    for (int i = 0; i < 2 && rc == 0; i++) {
        jobs[i] = (q2_job){*type, src, out, ncols, rpe, rows * i / 2, rows * (i + 1) / 2, rb,
                           q->mode == IMP_NONE ? NULL : imp, 0};
        started[i] = pthread_create(&th[i], NULL, q2_worker, &jobs[i]) == 0;
        if (!started[i]) q2_worker(&jobs[i]); /* no thread: do it here */
    }
    for (int i = 0; i < 2; i++) {
        if (started[i]) pthread_join(th[i], NULL);
        if (rc == 0 && jobs[i].rc != 0) rc = ds4_fail(err, "%s: quantization failed", name);
    }
    free(imp);
    if (rc != 0) {
        free(out);
        return -1;
    }
    *data = out;
    return 0;
}

static int load_engine(const char *path, uint32_t chunk, ds4_engine **e, ds4_error *err) {
    ds4_engine_opts eo = {.model_path = path, .prefill_chunk = chunk};
    return ds4_engine_load(e, &eo, err);
}

/* n tokens sampled from the model (temperature 1), starting with BOS (0). */
static int sample_tokens(ds4_engine *e, uint64_t seed, uint32_t n, int32_t *out, ds4_error *err) {
    const uint32_t V = ds4_engine_model(e)->hp.n_vocab;
    ds4_session *s = NULL;
    if (ds4_session_new(e, n, &s, err) != 0) return -1;
    test_rng rng = {seed};
    int rc = 0;
    out[0] = 0;
    double *p = malloc(V * sizeof(double));
    if (!p) rc = ds4_fail(err, "oom");
    for (uint32_t i = 0; rc == 0 && i + 1 < n; i++) {
        rc = ds4_session_eval(s, out + i, 1, NULL, err);
        if (rc != 0) break;
        const float *l = ds4_session_logits(s);
        float mx = l[0];
        for (uint32_t v = 1; v < V; v++) mx = l[v] > mx ? l[v] : mx;
        double sum = 0;
        for (uint32_t v = 0; v < V; v++) sum += p[v] = exp((double)l[v] - mx);
        double u = (double)(test_rng_u64(&rng) >> 11) / 9007199254740992.0 * sum;
        uint32_t pick = V - 1;
        for (uint32_t v = 0; v < V; v++) {
            if (u < p[v]) {
                pick = v;
                break;
            }
            u -= p[v];
        }
        out[i + 1] = (int32_t)pick;
    }
    free(p);
    ds4_session_free(s);
    return rc;
}

/* ------------------------------------------------------------ engine collection */

static int t_engine_collect(void) {
    ds4_error err = {{0}};
    ds4_testmodel_opts o;
    small_opts(&o);
    char path[256];
    tmp_path(path, sizeof(path), "collect.gguf");
    T_CHECK(ds4_testmodel_write(&o, path, &err) == 0, "%s", err.msg);
    gguf_file f = {0};
    T_CHECK(gguf_open(&f, path, &err) == 0, "%s", err.msg);
    enum { N = 90, CTX = 40 };
    int32_t toks[N];
    test_rng rng = {31};
    for (int i = 0; i < N; i++) toks[i] = (int32_t)(test_rng_u64(&rng) % o.n_vocab);
    ds4_engine *e = NULL;
    ds4_imatrix a = {0}, b = {0}, c = {0};
    int rc = load_engine(path, 0, &e, &err);
    if (rc == 0) rc = ds4_collect_imatrix(e, toks, N, CTX, &a, NULL, &err);
    if (rc == 0) rc = ds4_collect_imatrix(e, toks, N, CTX, &b, NULL, &err);
    ds4_engine_free(e);
    e = NULL;
    if (rc == 0) rc = load_engine(path, 7, &e, &err);
    if (rc == 0) rc = ds4_collect_imatrix(e, toks, N, CTX, &c, NULL, &err);
    ds4_engine_free(e);
    unlink(path);
    if (rc != 0) {
        gguf_close(&f);
        T_CHECK(0, "%s", err.msg);
    }
    const uint32_t NE = o.n_expert, E = o.n_embd, F = o.n_ff_exp, K = o.n_expert_used;
    T_CHECK(imatrix_equal(&a, &b), "two collections differ");
    T_CHECK(a.n_tokens == N && a.tokens_hash == XXH64(toks, sizeof(toks), 0), "token count / hash");
    T_CHECK(a.dims.n_layer == o.n_layer && a.dims.n_expert == NE && a.dims.n_vocab == o.n_vocab, "dims");
    /* Counts: tokens x n_used per layer; the hash layer follows tid2eid. */
    const gguf_tensor *tid = gguf_find_tensor(&f, "blk.0.ffn_gate_tid2eid.weight");
    T_CHECK(tid && tid->type == DS4_TYPE_I32, "tid2eid");
    uint64_t hist[64] = {0};
    for (int i = 0; i < N; i++)
        for (uint32_t k = 0; k < K; k++) {
            int32_t v;
            memcpy(&v, tid->data + ((uint64_t)toks[i] * K + k) * 4, 4);
            hist[v]++;
        }
    for (uint32_t il = 0; il < o.n_layer; il++) {
        uint64_t sum = 0;
        for (uint32_t e2 = 0; e2 < NE; e2++) sum += a.count[il * NE + e2];
        T_CHECK(sum == (uint64_t)N * K, "layer %u: %llu slots", il, (unsigned long long)sum);
    }
    for (uint32_t e2 = 0; e2 < NE; e2++)
        T_CHECK(a.count[e2] == hist[e2], "hash layer expert %u: %llu want %llu", e2, (unsigned long long)a.count[e2],
                (unsigned long long)hist[e2]);
    /* RMSNorm: mean_c(gate_up[c] / w[c]^2) = mean over tokens of ms/(ms+eps) = 1. */
    double worst_norm = 0, worst_chunk = 0;
    for (uint32_t il = 0; il < o.n_layer; il++) {
        char name[64];
        snprintf(name, sizeof(name), "blk.%u.ffn_norm.weight", il);
        const gguf_tensor *nw = gguf_find_tensor(&f, name);
        T_CHECK(nw && nw->type == DS4_TYPE_F32, "%s", name);
        for (uint32_t e2 = 0; e2 < NE; e2++) {
            uint64_t le = il * NE + e2;
            if (!a.count[le]) continue;
            double s = 0;
            for (uint32_t col = 0; col < E; col++) {
                float w;
                memcpy(&w, nw->data + col * 4, 4);
                s += a.gate_up[le * E + col] / ((double)w * w);
            }
            double dev = fabs(s / E - 1.0);
            worst_norm = dev > worst_norm ? dev : worst_norm;
            bool any = false;
            for (uint32_t col = 0; col < F; col++) any |= a.down[le * F + col] > 0;
            T_CHECK(any, "layer %u expert %u: down input all zero", il, e2);
            T_CHECK(a.count[le] == c.count[le], "chunk 7 changes the counts");
            for (uint32_t col = 0; col < E + F; col++) {
                double x = col < E ? a.gate_up[le * E + col] : a.down[le * F + col - E];
                double y = col < E ? c.gate_up[le * E + col] : c.down[le * F + col - E];
                double rel = fabs(x - y) / (fabs(x) > 1e-20 ? fabs(x) : 1.0);
                worst_chunk = rel > worst_chunk ? rel : worst_chunk;
            }
        }
    }
    gguf_close(&f);
    printf("    engine imatrix: |mean(gate_up/w^2) - 1| <= %.2e, chunk 7 vs 256: max rel %.2e\n", worst_norm,
           worst_chunk);
    T_CHECK(worst_norm < 1e-4, "RMSNorm invariant off by %g", worst_norm);
    T_CHECK(worst_chunk < 1e-4, "prefill chunk changes the imatrix by %g", worst_chunk);
    ds4_imatrix_free(&a);
    ds4_imatrix_free(&b);
    ds4_imatrix_free(&c);
    return 0;
}

/* ------------------------------------------------------------ acceptance */

static int score_path(const char *path, const int32_t *toks, uint32_t n, uint32_t win, ds4_score_result *r,
                      ds4_error *err) {
    ds4_engine *e = NULL;
    if (load_engine(path, 0, &e, err) != 0) return -1;
    int rc = ds4_score_tokens(e, toks, n, win, r, NULL, err);
    ds4_engine_free(e);
    return rc;
}

static int t_q2_nll(void) {
    ds4_error err = {{0}};
    ds4_testmodel_opts o;
    small_opts(&o);
    uint8_t *img = NULL;
    uint64_t img_size = 0;
    T_CHECK(ds4_testmodel_build(&o, &img, &img_size, &err) == 0, "%s", err.msg);
    char ref[256], plain[256], imx_path[256];
    tmp_path(ref, sizeof(ref), "ref.gguf");
    tmp_path(plain, sizeof(plain), "q2-plain.gguf");
    tmp_path(imx_path, sizeof(imx_path), "q2-imatrix.gguf");
    gguf_file base = {0}, rf = {0};
    int rc = gguf_parse(&base, img, img_size, &err);
    if (rc == 0) rc = copy_gguf(&base, ref, skew_fn, NULL, &err);
    gguf_close(&base);
    free(img);
    T_CHECK(rc == 0, "%s", err.msg);

    /* Sequences of WIN tokens sampled from the f32 model, each from BOS:
     * calibration and held-out sets never share a sequence. */
    enum { WIN = 64, N_CAL = 2 * WIN, N_HELD = 4 * WIN };
    int32_t cal[N_CAL], held[N_HELD];
    ds4_engine *e = NULL;
    ds4_imatrix m = {0};
    ds4_score_result s_ref = {0}, s_plain = {0}, s_imx = {0};
    rc = load_engine(ref, 0, &e, &err);
    for (uint32_t i = 0; rc == 0 && i < N_CAL / WIN; i++) rc = sample_tokens(e, 1000 + i, WIN, cal + i * WIN, &err);
    for (uint32_t i = 0; rc == 0 && i < N_HELD / WIN; i++)
        rc = sample_tokens(e, 2000 + i, WIN, held + i * WIN, &err);
    if (rc == 0) rc = ds4_collect_imatrix(e, cal, N_CAL, WIN, &m, NULL, &err);
    if (rc == 0) rc = ds4_score_tokens(e, held, N_HELD, WIN, &s_ref, NULL, &err);
    ds4_engine_free(e);
    if (rc == 0) rc = gguf_open(&rf, ref, &err);
    q2_ctx qn = {NULL, IMP_NONE}, qi = {&m, IMP_IMATRIX};
    if (rc == 0) rc = copy_gguf(&rf, plain, q2_fn, &qn, &err);
    if (rc == 0) rc = copy_gguf(&rf, imx_path, q2_fn, &qi, &err);
    gguf_close(&rf);
    if (rc == 0) rc = score_path(plain, held, N_HELD, WIN, &s_plain, &err);
    if (rc == 0) rc = score_path(imx_path, held, N_HELD, WIN, &s_imx, &err);
    /* How skewed the collected statistics are: energy share of the hot columns. */
    double hot_in = 0, all_in = 0, hot_mid = 0, all_mid = 0;
    for (uint64_t le = 0; rc == 0 && le < (uint64_t)o.n_layer * o.n_expert; le++) {
        for (uint32_t c = 0; c < o.n_embd; c++) {
            all_in += m.gate_up[le * o.n_embd + c];
            if (is_hot(c, o.n_embd)) hot_in += m.gate_up[le * o.n_embd + c];
        }
        for (uint32_t c = 0; c < o.n_ff_exp; c++) {
            all_mid += m.down[le * o.n_ff_exp + c];
            if (is_hot(c, o.n_ff_exp)) hot_mid += m.down[le * o.n_ff_exp + c];
        }
    }
    ds4_imatrix_free(&m);
    unlink(ref);
    unlink(plain);
    unlink(imx_path);
    T_CHECK(rc == 0, "%s", err.msg);
    printf("    skew: %d of %u gate/up columns carry %.0f%% of the energy, %d of %u down columns %.0f%%\n", HOT_N,
           o.n_embd, 100 * hot_in / all_in, HOT_N, o.n_ff_exp, 100 * hot_mid / all_mid);
    printf("    held-out NLL (%d sampled sequences of %d tokens): f32 %.4f, q2 plain %.4f, q2 imatrix %.4f\n",
           N_HELD / WIN, WIN, s_ref.nll, s_plain.nll, s_imx.nll);
    T_CHECK(s_imx.nll < s_plain.nll, "imatrix q2 NLL %.4f is not below plain q2 %.4f", s_imx.nll, s_plain.nll);
    T_CHECK(s_ref.nll < s_imx.nll, "f32 NLL %.4f is not below the q2 ones", s_ref.nll);
    return 0;
}

/* ------------------------------------------------------------ programs */

typedef struct {
    int status;
    char out[16384];
} run_result;

static int run_prog(run_result *r, const char *fmt, ...) DS4_PRINTF(2, 3);
static int run_prog(run_result *r, const char *fmt, ...) {
    char cmd[4096];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(cmd, sizeof(cmd), fmt, ap);
    va_end(ap);
    FILE *p = popen(cmd, "r");
    if (!p) return -1;
    size_t n = fread(r->out, 1, sizeof(r->out) - 1, p);
    r->out[n] = '\0';
    char sink[4096];
    while (fread(sink, 1, sizeof(sink), p) > 0) {}
    int st = pclose(p);
    if (st == -1) return -1;
    r->status = WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
    return 0;
}

static int t_programs(void) {
    const char *bin = test_bin_dir();
    char imx_bin[1200], score_bin[1200];
    snprintf(imx_bin, sizeof(imx_bin), "%s/ds4cl-imatrix", bin);
    snprintf(score_bin, sizeof(score_bin), "%s/ds4cl-score", bin);
    T_CHECK(access(imx_bin, X_OK) == 0 && access(score_bin, X_OK) == 0, "%s and %s must be built", imx_bin,
            score_bin);
    ds4_error err = {{0}};
    ds4_testmodel_opts o;
    small_opts(&o);
    char model[256], ids[256], out[256];
    tmp_path(model, sizeof(model), "prog.gguf");
    tmp_path(ids, sizeof(ids), "prog.ids");
    tmp_path(out, sizeof(out), "prog.imx");
    T_CHECK(ds4_testmodel_write(&o, model, &err) == 0, "%s", err.msg);
    enum { N = 50 };
    int32_t toks[N];
    test_rng rng = {5};
    FILE *fp = fopen(ids, "w");
    T_CHECK(fp != NULL, "%s", ids);
    for (int i = 0; i < N; i++) {
        toks[i] = (int32_t)(test_rng_u64(&rng) % o.n_vocab);
        fprintf(fp, "%d%s", toks[i], i % 10 == 9 ? "\n" : ", ");
    }
    fclose(fp);

    static run_result r;
    int rc = 0;
    ds4_engine *e = NULL;
    ds4_imatrix lib = {0}, prog = {0};
    ds4_score_result sr = {0};
    rc = load_engine(model, 0, &e, &err);
    if (rc == 0) rc = ds4_collect_imatrix(e, toks, N, 32, &lib, NULL, &err);
    if (rc == 0) rc = ds4_score_tokens(e, toks, N, 32, &sr, NULL, &err);
    ds4_engine_free(e);
    if (rc == 0 && run_prog(&r, "'%s' -m '%s' --tokens-file '%s' -o '%s' --ctx 32 -q 2>&1", imx_bin, model, ids,
                            out) != 0)
        rc = ds4_fail(&err, "popen");
    if (rc == 0 && (r.status != 0 || !strstr(r.out, "8 of 8 experts reached")))
        rc = ds4_fail(&err, "ds4cl-imatrix exit %d: %s", r.status, r.out);
    if (rc == 0) rc = ds4_imatrix_load(&prog, out, &err);
    if (rc == 0 && !imatrix_equal(&lib, &prog)) rc = ds4_fail(&err, "program and library imatrix differ");
    if (rc == 0 &&
        run_prog(&r, "'%s' -m '%s' --tokens-file '%s' --ctx 32 -q 2>&1", score_bin, model, ids) != 0)
        rc = ds4_fail(&err, "popen");
    double nll = 0;
    unsigned long long nt = 0, ns = 0;
    if (rc == 0 && (r.status != 0 || sscanf(r.out, "nll %lf ppl %*f tokens %llu scored %llu", &nll, &nt, &ns) != 3))
        rc = ds4_fail(&err, "ds4cl-score exit %d: %s", r.status, r.out);
    if (rc == 0 && (fabs(nll - sr.nll) > 1e-6 || nt != N || ns != N - 2))
        rc = ds4_fail(&err, "ds4cl-score printed '%s', library nll %.6f", r.out, sr.nll);
    /* Bad command lines: usage and exit 2; a bad input file: exit 1. */
    const char *bad[] = {"", "-m x.gguf", "-m x.gguf -f a --tokens-file b", "-m x.gguf -f a --ctx 0",
                         "-m x.gguf -f a --bogus"};
    for (size_t i = 0; rc == 0 && i < sizeof(bad) / sizeof(bad[0]); i++) {
        if (run_prog(&r, "'%s' %s 2>&1", score_bin, bad[i]) != 0) rc = ds4_fail(&err, "popen");
        else if (r.status != 2 || !strstr(r.out, "usage")) rc = ds4_fail(&err, "'%s': exit %d: %s", bad[i], r.status, r.out);
    }
    if (rc == 0 && (run_prog(&r, "'%s' -m '%s' --tokens-file '%s' 2>&1", imx_bin, model, ids) != 0 || r.status != 2))
        rc = ds4_fail(&err, "ds4cl-imatrix without -o: exit %d", r.status);
    fp = fopen(ids, "w");
    if (fp) {
        fputs("1, 2, x", fp);
        fclose(fp);
    }
    if (rc == 0 && (run_prog(&r, "'%s' -m '%s' --tokens-file '%s' 2>&1", score_bin, model, ids) != 0 ||
                    r.status != 1 || !strstr(r.out, "expected a token id")))
        rc = ds4_fail(&err, "bad tokens file: exit %d: %s", r.status, r.out);
    ds4_imatrix_free(&lib);
    ds4_imatrix_free(&prog);
    unlink(model);
    unlink(ids);
    unlink(out);
    T_CHECK(rc == 0, "%s", err.msg);
    return 0;
}

void tests_register_imatrix(void) {
    test_add("imatrix/format", t_format);
    test_add("imatrix/lookup", t_lookup);
    test_add("imatrix/collector", t_collector);
    test_add("imatrix/engine_collect", t_engine_collect);
    test_add("imatrix/q2_nll", t_q2_nll);
    test_add("imatrix/programs", t_programs);
}
