/* test_gguf.c - the GGUF reader and writer against independent oracles.
 *
 * - tests/fixtures/pywriter.gguf is written by the Python `gguf` package
 *   (tests/gen_gguf_fixture.py): every key, array, nested array and tensor
 *   it holds is checked here value by value, against a table kept in step
 *   with the generator;
 * - the fixture copied through our writer must come out byte-identical;
 * - our writer round-trips many value types, nested arrays and tensors of
 *   several types at several alignments (memory and file paths agree);
 * - the Python package reads what our writer wrote: its dump must equal the
 *   same dump printed from our parse (skipped with a note when python3 or
 *   the gguf package is missing);
 * - typed getters, gguf_open errors and writer misuse report one-line errors.
 * Corrupt-file handling lives in test_gguf_mutate.c.
 */
#include <inttypes.h>
#include <stdbool.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "../src/gguf.h"
#include "../src/gguf_write.h"
#include "../src/quant.h"
#include "test.h"
#include "util_bbuf.h"

/* ------------------------------------------------------------------ */
/* Helpers                                                             */
/* ------------------------------------------------------------------ */

static const char *fixture_path(char *buf, size_t cap) {
    snprintf(buf, cap, "%s/tests/fixtures/pywriter.gguf", test_root_dir());
    return buf;
}

static bool one_line(const ds4_error *e) { return e->msg[0] && !strchr(e->msg, '\n'); }

static uint8_t *read_whole(const char *path, uint64_t *size) {
    FILE *fp = fopen(path, "rb");
    if (!fp) return NULL;
    fseek(fp, 0, SEEK_END);
    long n = ftell(fp);
    fseek(fp, 0, SEEK_SET);
    uint8_t *p = malloc(n > 0 ? (size_t)n : 1);
    if (p && n > 0 && fread(p, 1, (size_t)n, fp) != (size_t)n) {
        free(p);
        p = NULL;
    }
    fclose(fp);
    *size = (uint64_t)(n > 0 ? n : 0);
    return p;
}

static uint32_t f32_bits(double v) {
    float f = (float)v;
    uint32_t b;
    memcpy(&b, &f, 4);
    return b;
}

static uint64_t f64_bits(double v) {
    uint64_t b;
    memcpy(&b, &v, 8);
    return b;
}


/* ------------------------------------------------------------------ */
/* The Python-written fixture                                          */
/* ------------------------------------------------------------------ */

static const char *const fixture_keys[] = {
    "general.alignment", "general.architecture", "t.u8", "t.i8", "t.u16", "t.i16", "t.u32",
    "t.i32", "t.f32", "t.u64", "t.i64", "t.f64", "t.bool_true", "t.bool_false", "t.str",
    "t.arr_i32", "t.arr_f32", "t.arr_str", "t.arr_bool", "t.arr_u8", "t.arr_u64", "t.arr_f64",
    "t.arr_arr", "t.arr_arr_str",
};
#define N_FIXTURE_KEYS (sizeof(fixture_keys) / sizeof(fixture_keys[0]))

static const gguf_value *kv_of(const gguf_file *f, const char *key, uint32_t type) {
    const gguf_kv *kv = gguf_find_kv(f, key);
    if (!kv || kv->value.type != type) return NULL;
    return &kv->value;
}

static int check_fixture_scalars(const gguf_file *f) {
    const gguf_value *v;
    T_CHECK((v = kv_of(f, "general.alignment", GGUF_VT_UINT32)) && v->u == 64, "alignment key");
    T_CHECK((v = kv_of(f, "general.architecture", GGUF_VT_STRING)) && gguf_str_eq(v->s, "testarch"),
            "architecture");
    T_CHECK((v = kv_of(f, "t.u8", GGUF_VT_UINT8)) && v->u == 200, "u8");
    T_CHECK((v = kv_of(f, "t.i8", GGUF_VT_INT8)) && v->i == -100, "i8");
    T_CHECK((v = kv_of(f, "t.u16", GGUF_VT_UINT16)) && v->u == 60000, "u16");
    T_CHECK((v = kv_of(f, "t.i16", GGUF_VT_INT16)) && v->i == -30000, "i16");
    T_CHECK((v = kv_of(f, "t.u32", GGUF_VT_UINT32)) && v->u == 4000000000u, "u32");
    T_CHECK((v = kv_of(f, "t.i32", GGUF_VT_INT32)) && v->i == -2000000000, "i32");
    T_CHECK((v = kv_of(f, "t.f32", GGUF_VT_FLOAT32)) && v->f == 0.15625, "f32");
    T_CHECK((v = kv_of(f, "t.u64", GGUF_VT_UINT64)) && v->u == 18000000000000000000ull, "u64");
    T_CHECK((v = kv_of(f, "t.i64", GGUF_VT_INT64)) && v->i == -9000000000000000000ll, "i64");
    T_CHECK((v = kv_of(f, "t.f64", GGUF_VT_FLOAT64)) && v->f == -2.718281828459045, "f64");
    T_CHECK((v = kv_of(f, "t.bool_true", GGUF_VT_BOOL)) && v->u == 1, "bool true");
    T_CHECK((v = kv_of(f, "t.bool_false", GGUF_VT_BOOL)) && v->u == 0, "bool false");
    T_CHECK((v = kv_of(f, "t.str", GGUF_VT_STRING)) && v->s.len == 14 &&
                memcmp(v->s.ptr, "hello, gguf \xc3\xa9", 14) == 0, "string");
    return 0;
}

/* Check a flat array's element type and its values as doubles. */
static int check_num_array(const gguf_file *f, const char *key, uint32_t et, const double *want,
                           uint64_t n) {
    const gguf_value *v = kv_of(f, key, GGUF_VT_ARRAY);
    T_CHECK(v && v->arr.elem_type == et && v->arr.count == n, "%s: array of %" PRIu64, key, n);
    for (uint64_t i = 0; i < n; i++) {
        gguf_value e;
        T_CHECK(gguf_array_get(v, i, &e) == 0 && e.type == et, "%s[%" PRIu64 "]", key, i);
        double got = e.type == GGUF_VT_FLOAT32 || e.type == GGUF_VT_FLOAT64 ? e.f
                     : (e.type == GGUF_VT_INT32 || e.type == GGUF_VT_INT64) ? (double)e.i
                                                                             : (double)e.u;
        T_CHECK(got == want[i], "%s[%" PRIu64 "] = %g, want %g", key, i, got, want[i]);
    }
    gguf_value e;
    T_CHECK(gguf_array_get(v, n, &e) == -1, "%s: index past the end", key);
    return 0;
}

static int check_fixture_arrays(const gguf_file *f) {
    const double i32[] = {1, -2, 3, -4, 5}, f32[] = {0.5, -1.25, 3.0}, bl[] = {1, 0, 1};
    const double u8[] = {1, 2, 255}, f64[] = {1.5, -0.0625};
    if (check_num_array(f, "t.arr_i32", GGUF_VT_INT32, i32, 5)) return 1;
    if (check_num_array(f, "t.arr_f32", GGUF_VT_FLOAT32, f32, 3)) return 1;
    if (check_num_array(f, "t.arr_bool", GGUF_VT_BOOL, bl, 3)) return 1;
    if (check_num_array(f, "t.arr_u8", GGUF_VT_UINT8, u8, 3)) return 1;
    if (check_num_array(f, "t.arr_f64", GGUF_VT_FLOAT64, f64, 2)) return 1;

    const gguf_value *v = kv_of(f, "t.arr_u64", GGUF_VT_ARRAY);
    const uint64_t u64[] = {0, 1ull << 40, UINT64_MAX};
    T_CHECK(v && v->arr.elem_type == GGUF_VT_UINT64 && v->arr.count == 3, "arr_u64");
    for (int i = 0; i < 3; i++) {
        gguf_value e;
        T_CHECK(gguf_array_get(v, (uint64_t)i, &e) == 0 && e.u == u64[i], "arr_u64[%d]", i);
    }

    const char *const strs[] = {"alpha", "", "gamma delta"};
    v = kv_of(f, "t.arr_str", GGUF_VT_ARRAY);
    T_CHECK(v && v->arr.elem_type == GGUF_VT_STRING && v->arr.count == 3, "arr_str");
    gguf_array_iter it;
    gguf_value e;
    gguf_array_iter_init(&it, v);
    for (int i = 0; i < 3; i++) {
        T_CHECK(gguf_array_next(&it, &e) && e.type == GGUF_VT_STRING && gguf_str_eq(e.s, strs[i]),
                "arr_str[%d] by iterator", i);
        gguf_value g;
        T_CHECK(gguf_array_get(v, (uint64_t)i, &g) == 0 && gguf_str_eq(g.s, strs[i]),
                "arr_str[%d] by index", i);
    }
    T_CHECK(!gguf_array_next(&it, &e), "iterator stops after 3");

    /* [[1, 2], [3, 4, 5]] as int32 inner arrays. */
    v = kv_of(f, "t.arr_arr", GGUF_VT_ARRAY);
    T_CHECK(v && v->arr.elem_type == GGUF_VT_ARRAY && v->arr.count == 2, "arr_arr");
    const int64_t want[2][3] = {{1, 2, 0}, {3, 4, 5}};
    for (int i = 0; i < 2; i++) {
        gguf_value in;
        T_CHECK(gguf_array_get(v, (uint64_t)i, &in) == 0 && in.type == GGUF_VT_ARRAY &&
                    in.arr.elem_type == GGUF_VT_INT32 && in.arr.count == (uint64_t)(2 + i),
                "arr_arr[%d]", i);
        for (int k = 0; k < 2 + i; k++) {
            T_CHECK(gguf_array_get(&in, (uint64_t)k, &e) == 0 && e.i == want[i][k],
                    "arr_arr[%d][%d]", i, k);
        }
    }
    /* [["x", "yy"], ["zzz"]] */
    v = kv_of(f, "t.arr_arr_str", GGUF_VT_ARRAY);
    T_CHECK(v && v->arr.elem_type == GGUF_VT_ARRAY && v->arr.count == 2, "arr_arr_str");
    gguf_value in;
    T_CHECK(gguf_array_get(v, 1, &in) == 0 && in.arr.elem_type == GGUF_VT_STRING &&
                in.arr.count == 1 && gguf_array_get(&in, 0, &e) == 0 && gguf_str_eq(e.s, "zzz"),
            "arr_arr_str[1][0]");
    T_CHECK(gguf_array_get(v, 0, &in) == 0 && in.arr.count == 2 && gguf_array_get(&in, 1, &e) == 0 &&
                gguf_str_eq(e.s, "yy"), "arr_arr_str[0][1]");
    return 0;
}

static int check_fixture_tensors(const gguf_file *f) {
    T_CHECK(f->n_tensors == 4, "n_tensors %" PRIu64, f->n_tensors);
    const struct {
        const char *name;
        uint32_t type, n_dims;
        uint64_t ne0, ne1, offset, nbytes;
    } want[4] = {
        {"t_f32", DS4_TYPE_F32, 2, 4, 3, 0, 48},
        {"t_f16", DS4_TYPE_F16, 1, 8, 1, 64, 16},
        {"t_q8_0", DS4_TYPE_Q8_0, 2, 64, 2, 128, 136},
        {"t_i32", DS4_TYPE_I32, 1, 5, 1, 320, 20},
    };
    for (int i = 0; i < 4; i++) {
        const gguf_tensor *t = &f->tensors[i];
        T_CHECK(gguf_str_eq(t->name, want[i].name) && gguf_find_tensor(f, want[i].name) == t,
                "tensor %d name", i);
        T_CHECK(t->type == want[i].type && t->n_dims == want[i].n_dims && t->ne[0] == want[i].ne0 &&
                    t->ne[1] == want[i].ne1 && t->ne[2] == 1 && t->ne[3] == 1,
                "tensor %s type/dims", want[i].name);
        T_CHECK(t->offset == want[i].offset && t->nbytes == want[i].nbytes &&
                    t->file_offset == 1088 + want[i].offset && t->data == f->base + t->file_offset &&
                    t->n_elements == want[i].ne0 * want[i].ne1,
                "tensor %s offset %" PRIu64 " nbytes %" PRIu64, want[i].name, t->offset, t->nbytes);
    }
    const float *a = (const float *)f->tensors[0].data;
    for (int i = 0; i < 12; i++) T_CHECK(a[i] == (float)i * 0.5f - 1.0f, "t_f32[%d] = %g", i, a[i]);
    const uint16_t h_want[8] = {0xBA00, 0xB800, 0xB400, 0x0000, 0x3400, 0x3800, 0x3A00, 0x3C00};
    for (int i = 0; i < 8; i++) {
        uint16_t h;
        memcpy(&h, f->tensors[1].data + 2 * i, 2);
        T_CHECK(h == h_want[i], "t_f16[%d] = 0x%04x", i, h);
    }
    for (int b = 0; b < 4; b++) {
        const uint8_t *blk = f->tensors[2].data + 34 * b;
        T_CHECK(blk[0] == 0x00 && blk[1] == 0x38, "q8_0 block %d scale", b);
        for (int j = 0; j < 32; j++) T_CHECK((int8_t)blk[2 + j] == j - 16, "q8_0 block %d q[%d]", b, j);
    }
    const int32_t i_want[5] = {7, -8, 9, 1 << 30, INT32_MIN};
    for (int i = 0; i < 5; i++) {
        int32_t x;
        memcpy(&x, f->tensors[3].data + 4 * i, 4);
        T_CHECK(x == i_want[i], "t_i32[%d] = %d", i, x);
    }
    return 0;
}

static int test_pywriter_fixture(void) {
    char path[4096];
    gguf_file f;
    ds4_error err = {{0}};
    T_CHECK(gguf_open(&f, fixture_path(path, sizeof(path)), &err) == 0, "%s", err.msg);
    int rc = 1;
    if (f.version != 3 || f.alignment != 64 || f.data_offset != 1088 || f.size != 1472 ||
        f.map_size != 1472 || f.n_kv != N_FIXTURE_KEYS) {
        fprintf(stderr, "    header: version %u alignment %u data_offset %" PRIu64 " size %" PRIu64
                " n_kv %" PRIu64 "\n", f.version, f.alignment, f.data_offset, f.size, f.n_kv);
        goto out;
    }
    for (size_t i = 0; i < N_FIXTURE_KEYS; i++) {
        if (!gguf_str_eq(f.kv[i].key, fixture_keys[i])) {
            fprintf(stderr, "    key %zu is not %s\n", i, fixture_keys[i]);
            goto out;
        }
    }
    if (gguf_find_kv(&f, "t.missing") || gguf_find_tensor(&f, "t_missing")) goto out;
    if (check_fixture_scalars(&f) || check_fixture_arrays(&f) || check_fixture_tensors(&f)) goto out;
    rc = 0;
out:
    gguf_close(&f);
    gguf_close(&f); /* closing twice is safe */
    return rc;
}

/* Copying the fixture through our writer reproduces it byte for byte. */
static int test_writer_matches_pywriter(void) {
    char path[4096];
    uint64_t size;
    uint8_t *want = read_whole(fixture_path(path, sizeof(path)), &size);
    T_CHECK(want, "cannot read %s", path);
    gguf_file f;
    ds4_error err = {{0}};
    int rc = gguf_parse(&f, want, size, &err);
    if (rc) {
        free(want);
        T_CHECK(0, "%s", err.msg);
    }
    gguf_writer *w = gguf_writer_new(f.alignment);
    for (uint64_t i = 0; i < f.n_kv; i++) {
        char key[256];
        gguf_str_copy(f.kv[i].key, key, sizeof(key));
        if (strcmp(key, "general.alignment") != 0) gguf_w_value(w, key, &f.kv[i].value);
    }
    for (uint64_t i = 0; i < f.n_tensors && !rc; i++) {
        const gguf_tensor *t = &f.tensors[i];
        char name[GGUF_MAX_NAME_LEN + 1];
        gguf_str_copy(t->name, name, sizeof(name));
        rc = gguf_w_tensor(w, name, t->n_dims, t->ne, t->type, t->data, &err);
    }
    uint8_t *got = NULL;
    uint64_t got_size = 0;
    if (!rc) rc = gguf_writer_to_memory(w, &got, &got_size, &err);
    uint64_t first_diff = 0;
    while (!rc && first_diff < size && first_diff < got_size && got[first_diff] == want[first_diff])
        first_diff++;
    gguf_writer_free(w);
    gguf_close(&f);
    free(want);
    free(got);
    T_CHECK(rc == 0, "%s", err.msg);
    T_CHECK(got_size == size && first_diff == size,
            "our copy is %" PRIu64 " bytes (python %" PRIu64 "), first difference at %" PRIu64,
            got_size, size, first_diff);
    return 0;
}

/* ------------------------------------------------------------------ */
/* Round trip through our writer                                       */
/* ------------------------------------------------------------------ */

typedef struct rt_tensor {
    const char *name;
    uint32_t type, n_dims;
    uint64_t ne[4];
} rt_tensor;

static const rt_tensor rt_tensors[] = {
    {"rt.f32", DS4_TYPE_F32, 2, {8, 3, 1, 1}},
    {"rt.f16", DS4_TYPE_F16, 1, {20, 1, 1, 1}},
    {"rt.q8_0", DS4_TYPE_Q8_0, 3, {64, 2, 2, 1}},
    {"rt.q4_k", DS4_TYPE_Q4_K, 2, {256, 2, 1, 1}},
    {"rt.q2_k", DS4_TYPE_Q2_K, 1, {256, 1, 1, 1}},
    {"rt.iq2_xxs", DS4_TYPE_IQ2_XXS, 4, {256, 1, 2, 1}},
    {"rt.i32", DS4_TYPE_I32, 4, {3, 2, 2, 2}},
    {"rt.bf16", DS4_TYPE_BF16, 1, {7, 1, 1, 1}},
};
#define N_RT_TENSORS (sizeof(rt_tensors) / sizeof(rt_tensors[0]))

static uint64_t rt_nbytes(const rt_tensor *t) {
    return ds4_row_bytes(t->type, t->ne[0]) * t->ne[1] * t->ne[2] * t->ne[3];
}

static void rt_fill(uint8_t *p, uint64_t n, uint64_t seed) {
    test_rng r = {seed * 0x9E3779B97F4A7C15ull + 1};
    for (uint64_t i = 0; i < n; i++) p[i] = (uint8_t)(test_rng_u64(&r) >> 56);
}

/* A nested array body: [[1,2,3],[],[65535]] of uint16. */
static void nested_u16(bbuf *b) {
    b->n = 0;
    bb_u32(b, GGUF_VT_UINT16); bb_u64(b, 3);
    bb_u16(b, 1); bb_u16(b, 2); bb_u16(b, 3);
    bb_u32(b, GGUF_VT_UINT16); bb_u64(b, 0);
    bb_u32(b, GGUF_VT_UINT16); bb_u64(b, 1);
    bb_u16(b, 65535);
}

/* Three levels: [[["a"], ["bc", "d"]], [[]]] of strings. */
static void nested_str3(bbuf *b) {
    b->n = 0;
    bb_u32(b, GGUF_VT_ARRAY); bb_u64(b, 2);
    bb_u32(b, GGUF_VT_STRING); bb_u64(b, 1); bb_str(b, "a");
    bb_u32(b, GGUF_VT_STRING); bb_u64(b, 2); bb_str(b, "bc"); bb_str(b, "d");
    bb_u32(b, GGUF_VT_ARRAY); bb_u64(b, 1);
    bb_u32(b, GGUF_VT_STRING); bb_u64(b, 0);
}

static gguf_writer *rt_writer(uint32_t alignment, ds4_error *err) {
    gguf_writer *w = gguf_writer_new(alignment);
    if (!w) return NULL;
    gguf_w_str(w, "general.architecture", "roundtrip");
    gguf_w_u32(w, "rt.u32", 4294967295u);
    gguf_w_i32(w, "rt.i32", INT32_MIN);
    gguf_w_u64(w, "rt.u64", UINT64_MAX);
    gguf_w_f32(w, "rt.f32", 1e-6f);
    gguf_w_f64(w, "rt.f64", 1.0 / 3.0);
    gguf_w_bool(w, "rt.bool", true);
    gguf_w_str(w, "rt.str", "");
    gguf_w_str(w, "rt.str2", "with\nnewline and \"quotes\"");
    gguf_value v = {.type = GGUF_VT_UINT8, .u = 255};
    gguf_w_value(w, "rt.u8", &v);
    v = (gguf_value){.type = GGUF_VT_INT8, .i = -128};
    gguf_w_value(w, "rt.i8", &v);
    v = (gguf_value){.type = GGUF_VT_UINT16, .u = 65535};
    gguf_w_value(w, "rt.u16", &v);
    v = (gguf_value){.type = GGUF_VT_INT16, .i = -32768};
    gguf_w_value(w, "rt.i16", &v);
    v = (gguf_value){.type = GGUF_VT_INT64, .i = INT64_MIN};
    gguf_w_value(w, "rt.i64", &v);
    v = (gguf_value){.type = GGUF_VT_BOOL, .u = 0};
    gguf_w_value(w, "rt.bool0", &v);
    const int32_t ratios[] = {0, 0, 4, 128, 4, 128};
    gguf_w_arr(w, "rt.arr_i32", GGUF_VT_INT32, ratios, 6);
    const float clamp[] = {10.0f, -0.5f, 3.25f};
    gguf_w_arr(w, "rt.arr_f32", GGUF_VT_FLOAT32, clamp, 3);
    const double d[] = {1e300, -1e-300};
    gguf_w_arr(w, "rt.arr_f64", GGUF_VT_FLOAT64, d, 2);
    const uint8_t bools[] = {1, 0, 0, 1};
    gguf_w_arr(w, "rt.arr_bool", GGUF_VT_BOOL, bools, 4);
    gguf_w_arr(w, "rt.arr_empty", GGUF_VT_UINT32, NULL, 0);
    const char *const toks[] = {"<s>", "", "hello", "\xc3\xa9t\xc3\xa9", "a b"};
    gguf_w_arr_str(w, "rt.arr_str", toks, 5);
    bbuf b;
    nested_u16(&b);
    v = (gguf_value){.type = GGUF_VT_ARRAY};
    v.arr.elem_type = GGUF_VT_ARRAY;
    v.arr.count = 3;
    v.arr.data = b.p;
    v.arr.nbytes = b.n;
    gguf_w_value(w, "rt.nested_u16", &v);
    nested_str3(&b);
    v.arr.count = 2;
    v.arr.nbytes = b.n;
    gguf_w_value(w, "rt.nested_str3", &v);
    for (size_t i = 0; i < N_RT_TENSORS; i++) {
        const rt_tensor *t = &rt_tensors[i];
        uint64_t n = rt_nbytes(t);
        uint8_t *data = malloc((size_t)n);
        rt_fill(data, n, i);
        int rc = gguf_w_tensor(w, t->name, t->n_dims, t->ne, t->type, data, err);
        free(data);
        if (rc) {
            gguf_writer_free(w);
            return NULL;
        }
    }
    return w;
}

/* Check a parse of rt_writer's output value by value. */
static int rt_check(const gguf_file *f, uint32_t alignment) {
    uint32_t a = alignment ? alignment : 32;
    T_CHECK(f->version == 3 && f->alignment == a && f->data_offset % a == 0, "header, alignment %u", a);
    T_CHECK(f->n_kv == 23 + (a != 32), "n_kv %" PRIu64, f->n_kv);
    if (a != 32) T_CHECK(gguf_str_eq(f->kv[0].key, "general.alignment") && f->kv[0].value.u == a,
                         "general.alignment first");
    const gguf_value *v;
    T_CHECK((v = kv_of(f, "general.architecture", GGUF_VT_STRING)) && gguf_str_eq(v->s, "roundtrip"), "arch");
    T_CHECK((v = kv_of(f, "rt.u32", GGUF_VT_UINT32)) && v->u == 4294967295u, "u32");
    T_CHECK((v = kv_of(f, "rt.i32", GGUF_VT_INT32)) && v->i == INT32_MIN, "i32");
    T_CHECK((v = kv_of(f, "rt.u64", GGUF_VT_UINT64)) && v->u == UINT64_MAX, "u64");
    T_CHECK((v = kv_of(f, "rt.f32", GGUF_VT_FLOAT32)) && f32_bits(v->f) == f32_bits(1e-6f), "f32");
    T_CHECK((v = kv_of(f, "rt.f64", GGUF_VT_FLOAT64)) && f64_bits(v->f) == f64_bits(1.0 / 3.0), "f64");
    T_CHECK((v = kv_of(f, "rt.bool", GGUF_VT_BOOL)) && v->u == 1, "bool");
    T_CHECK((v = kv_of(f, "rt.bool0", GGUF_VT_BOOL)) && v->u == 0, "bool0");
    T_CHECK((v = kv_of(f, "rt.str", GGUF_VT_STRING)) && v->s.len == 0, "empty string");
    T_CHECK((v = kv_of(f, "rt.str2", GGUF_VT_STRING)) && gguf_str_eq(v->s, "with\nnewline and \"quotes\""),
            "str2");
    T_CHECK((v = kv_of(f, "rt.u8", GGUF_VT_UINT8)) && v->u == 255, "u8");
    T_CHECK((v = kv_of(f, "rt.i8", GGUF_VT_INT8)) && v->i == -128, "i8");
    T_CHECK((v = kv_of(f, "rt.u16", GGUF_VT_UINT16)) && v->u == 65535, "u16");
    T_CHECK((v = kv_of(f, "rt.i16", GGUF_VT_INT16)) && v->i == -32768, "i16");
    T_CHECK((v = kv_of(f, "rt.i64", GGUF_VT_INT64)) && v->i == INT64_MIN, "i64");
    const double r[] = {0, 0, 4, 128, 4, 128}, c[] = {10.0, -0.5, 3.25}, dd[] = {1e300, -1e-300};
    const double bl[] = {1, 0, 0, 1};
    if (check_num_array(f, "rt.arr_i32", GGUF_VT_INT32, r, 6)) return 1;
    if (check_num_array(f, "rt.arr_f32", GGUF_VT_FLOAT32, c, 3)) return 1;
    if (check_num_array(f, "rt.arr_f64", GGUF_VT_FLOAT64, dd, 2)) return 1;
    if (check_num_array(f, "rt.arr_bool", GGUF_VT_BOOL, bl, 4)) return 1;
    if (check_num_array(f, "rt.arr_empty", GGUF_VT_UINT32, NULL, 0)) return 1;
    const char *const toks[] = {"<s>", "", "hello", "\xc3\xa9t\xc3\xa9", "a b"};
    T_CHECK((v = kv_of(f, "rt.arr_str", GGUF_VT_ARRAY)) && v->arr.elem_type == GGUF_VT_STRING &&
                v->arr.count == 5, "arr_str");
    gguf_array_iter it;
    gguf_value e, in;
    gguf_array_iter_init(&it, v);
    for (int i = 0; i < 5; i++)
        T_CHECK(gguf_array_next(&it, &e) && gguf_str_eq(e.s, toks[i]), "arr_str[%d]", i);
    /* Nested arrays come back byte for byte. */
    bbuf b;
    nested_u16(&b);
    T_CHECK((v = kv_of(f, "rt.nested_u16", GGUF_VT_ARRAY)) && v->arr.elem_type == GGUF_VT_ARRAY &&
                v->arr.count == 3 && v->arr.nbytes == b.n && memcmp(v->arr.data, b.p, b.n) == 0,
            "nested_u16 body");
    T_CHECK(gguf_array_get(v, 2, &in) == 0 && in.arr.count == 1 && gguf_array_get(&in, 0, &e) == 0 &&
                e.type == GGUF_VT_UINT16 && e.u == 65535, "nested_u16[2][0]");
    T_CHECK(gguf_array_get(v, 1, &in) == 0 && in.arr.count == 0, "nested_u16[1] empty");
    nested_str3(&b);
    T_CHECK((v = kv_of(f, "rt.nested_str3", GGUF_VT_ARRAY)) && v->arr.count == 2 &&
                v->arr.nbytes == b.n && memcmp(v->arr.data, b.p, b.n) == 0, "nested_str3 body");
    gguf_value in2;
    T_CHECK(gguf_array_get(v, 0, &in) == 0 && gguf_array_get(&in, 1, &in2) == 0 &&
                gguf_array_get(&in2, 0, &e) == 0 && gguf_str_eq(e.s, "bc"), "nested_str3[0][1][0]");
    /* Tensors: order, metadata, aligned offsets, bytes. */
    T_CHECK(f->n_tensors == N_RT_TENSORS, "n_tensors");
    uint64_t expect_off = 0;
    for (size_t i = 0; i < N_RT_TENSORS; i++) {
        const rt_tensor *w = &rt_tensors[i];
        const gguf_tensor *t = &f->tensors[i];
        uint64_t n = rt_nbytes(w);
        T_CHECK(gguf_str_eq(t->name, w->name) && t->type == w->type && t->n_dims == w->n_dims,
                "tensor %zu", i);
        for (int d = 0; d < 4; d++) T_CHECK(t->ne[d] == w->ne[d], "tensor %s ne[%d]", w->name, d);
        T_CHECK(t->offset == expect_off && t->nbytes == n && t->file_offset == f->data_offset + t->offset,
                "tensor %s offset %" PRIu64 " want %" PRIu64, w->name, t->offset, expect_off);
        uint8_t *data = malloc((size_t)n);
        rt_fill(data, n, i);
        int same = memcmp(data, t->data, (size_t)n) == 0;
        free(data);
        T_CHECK(same, "tensor %s bytes", w->name);
        expect_off += (n + a - 1) / a * a;
    }
    T_CHECK(f->size == f->data_offset + expect_off, "file ends aligned after the last tensor");
    return 0;
}

static int test_writer_roundtrip(void) {
    const uint32_t aligns[] = {0, 1, 8, 32, 64, 4096};
    for (size_t k = 0; k < sizeof(aligns) / sizeof(aligns[0]); k++) {
        ds4_error err = {{0}};
        gguf_writer *w = rt_writer(aligns[k], &err);
        T_CHECK(w, "building: %s", err.msg);
        uint8_t *img = NULL;
        uint64_t size = 0;
        int rc = gguf_writer_to_memory(w, &img, &size, &err);
        char path[256];
        snprintf(path, sizeof(path), "/tmp/ds4cl-test-gguf-%d-%u.gguf", (int)getpid(), aligns[k]);
        if (!rc) rc = gguf_writer_save(w, path, &err);
        gguf_writer_free(w);
        T_CHECK(rc == 0, "alignment %u: %s", aligns[k], err.msg);
        gguf_file f;
        rc = gguf_parse(&f, img, size, &err);
        T_CHECK(rc == 0, "parse: %s", err.msg);
        rc = rt_check(&f, aligns[k]);
        gguf_close(&f);
        /* The file equals the memory image, and gguf_open reads it. */
        uint64_t fsize = 0;
        uint8_t *fbytes = read_whole(path, &fsize);
        int same = fbytes && fsize == size && memcmp(fbytes, img, (size_t)size) == 0;
        free(fbytes);
        int orc = gguf_open(&f, path, &err);
        if (!orc) orc = rt_check(&f, aligns[k]);
        gguf_close(&f);
        char tmp[300];
        snprintf(tmp, sizeof(tmp), "%s.tmp", path);
        int tmp_left = access(tmp, F_OK) == 0;
        unlink(path);
        free(img);
        T_CHECK(rc == 0, "alignment %u: memory image", aligns[k]);
        T_CHECK(same, "alignment %u: file differs from memory image", aligns[k]);
        T_CHECK(orc == 0, "alignment %u: gguf_open: %s", aligns[k], err.msg);
        T_CHECK(!tmp_left, "%s left behind", tmp);
    }
    return 0;
}

/* An empty writer still produces a valid file. */
static int test_writer_empty(void) {
    gguf_writer *w = gguf_writer_new(0);
    uint8_t *img;
    uint64_t size;
    ds4_error err = {{0}};
    int rc = gguf_writer_to_memory(w, &img, &size, &err);
    gguf_writer_free(w);
    T_CHECK(rc == 0 && size == 32, "empty image: rc %d size %" PRIu64 " %s", rc, size, err.msg);
    gguf_file f;
    rc = gguf_parse(&f, img, size, &err);
    T_CHECK(rc == 0 && f.n_kv == 0 && f.n_tensors == 0 && f.data_offset == 32, "%s", err.msg);
    gguf_close(&f);
    free(img);
    return 0;
}

/* ------------------------------------------------------------------ */
/* The Python package reads our writer's output                        */
/* ------------------------------------------------------------------ */

static void dump_leaves(FILE *o, const gguf_value *v, uint64_t *n) {
    if (v->type == GGUF_VT_ARRAY) {
        gguf_array_iter it;
        gguf_value e;
        gguf_array_iter_init(&it, v);
        while (gguf_array_next(&it, &e)) dump_leaves(o, &e, n);
        return;
    }
    (*n)++;
    switch (v->type) {
    case GGUF_VT_FLOAT32: fprintf(o, " %08x", f32_bits(v->f)); break;
    case GGUF_VT_FLOAT64: fprintf(o, " %016" PRIx64, f64_bits(v->f)); break;
    case GGUF_VT_INT8: case GGUF_VT_INT16: case GGUF_VT_INT32: case GGUF_VT_INT64:
        fprintf(o, " %" PRId64, v->i);
        break;
    case GGUF_VT_STRING:
        fputs(" s", o);
        for (uint64_t i = 0; i < v->s.len; i++) fprintf(o, "%02x", (unsigned char)v->s.ptr[i]);
        break;
    default: fprintf(o, " %" PRIu64, v->u); break;
    }
}

static uint64_t fnv1a64(const uint8_t *p, uint64_t n) {
    uint64_t h = 0xcbf29ce484222325ull;
    for (uint64_t i = 0; i < n; i++) h = (h ^ p[i]) * 0x100000001b3ull;
    return h;
}

/* The same canonical dump as gen_gguf_fixture.py --dump. */
static void dump_file(FILE *o, const gguf_file *f) {
    fprintf(o, "version %u\nalignment %u\ndata_offset %" PRIu64 "\n", f->version, f->alignment,
            f->data_offset);
    for (uint64_t i = 0; i < f->n_kv; i++) {
        char key[256];
        const gguf_value *v = &f->kv[i].value;
        fprintf(o, "kv %s %s", gguf_str_copy(f->kv[i].key, key, sizeof(key)),
                gguf_value_type_name(v->type));
        if (v->type != GGUF_VT_ARRAY) {
            uint64_t n = 0;
            dump_leaves(o, v, &n);
            fputc('\n', o);
            continue;
        }
        /* Type chain along the first elements, then the flattened leaves. */
        gguf_value e = *v;
        while (e.type == GGUF_VT_ARRAY && e.arr.count > 0) {
            fprintf(o, ",%s", gguf_value_type_name(e.arr.elem_type));
            if (e.arr.elem_type != GGUF_VT_ARRAY || gguf_array_get(&e, 0, &e)) break;
        }
        char *body = NULL;
        size_t body_len = 0;
        FILE *m = open_memstream(&body, &body_len);
        uint64_t n = 0;
        dump_leaves(m, v, &n);
        fclose(m);
        fprintf(o, " %" PRIu64 "%s\n", n, body);
        free(body);
    }
    for (uint64_t i = 0; i < f->n_tensors; i++) {
        const gguf_tensor *t = &f->tensors[i];
        char name[GGUF_MAX_NAME_LEN + 1];
        fprintf(o, "tensor %s %u ", gguf_str_copy(t->name, name, sizeof(name)), t->type);
        for (uint32_t d = 0; d < t->n_dims; d++) fprintf(o, "%s%" PRIu64, d ? "," : "", t->ne[d]);
        fprintf(o, " %" PRIu64 " %" PRIu64 " %016" PRIx64 "\n", t->file_offset, t->nbytes,
                fnv1a64(t->data, t->nbytes));
    }
}

/* Python prints one dump of `path`; compare it with ours.  1 = mismatch,
 * 0 = equal, -1 = oracle unavailable. */
static int compare_with_python(const char *path, const gguf_file *f, char *why, size_t cap) {
    char cmd[8192];
    snprintf(cmd, sizeof(cmd), "python3 '%s/tests/gen_gguf_fixture.py' --dump '%s' 2>/dev/null",
             test_root_dir(), path);
    FILE *p = popen(cmd, "r");
    if (!p) return -1;
    char *py = NULL, *ours = NULL;
    size_t py_len = 0, ours_len = 0, cap_py = 0;
    char buf[4096];
    size_t n;
    while ((n = fread(buf, 1, sizeof(buf), p)) > 0) {
        if (py_len + n + 1 > cap_py) {
            cap_py = (py_len + n + 1) * 2;
            py = realloc(py, cap_py);
        }
        memcpy(py + py_len, buf, n);
        py_len += n;
    }
    int status = pclose(p);
    if (status != 0 || !py) {
        free(py);
        return -1;
    }
    py[py_len] = '\0';
    FILE *m = open_memstream(&ours, &ours_len);
    dump_file(m, f);
    fclose(m);
    int rc = strcmp(py, ours) != 0;
    if (rc) {
        size_t k = 0;
        while (py[k] && py[k] == ours[k]) k++;
        while (k > 0 && py[k - 1] != '\n') k--;
        int lp = (int)strcspn(py + k, "\n"), lo = (int)strcspn(ours + k, "\n");
        snprintf(why, cap, "python: '%.*s' ours: '%.*s'", lp < 200 ? lp : 200, py + k,
                 lo < 200 ? lo : 200, ours + k);
    }
    free(py);
    free(ours);
    return rc;
}

static int test_python_reads_writer(void) {
    ds4_error err = {{0}};
    char why[512] = "";
    char path[256];
    snprintf(path, sizeof(path), "/tmp/ds4cl-test-gguf-py-%d.gguf", (int)getpid());
    /* Our dump of the Python fixture must equal Python's (checks the dump). */
    char fx[4096];
    gguf_file f;
    T_CHECK(gguf_open(&f, fixture_path(fx, sizeof(fx)), &err) == 0, "%s", err.msg);
    int rc = compare_with_python(fx, &f, why, sizeof(why));
    gguf_close(&f);
    if (rc < 0) {
        printf("    note: python3 with the gguf package not available, oracle skipped\n");
        return 0;
    }
    T_CHECK(rc == 0, "fixture dumps differ: %s", why);
    const uint32_t aligns[] = {0, 64};
    for (int k = 0; k < 2; k++) {
        gguf_writer *w = rt_writer(aligns[k], &err);
        T_CHECK(w, "%s", err.msg);
        rc = gguf_writer_save(w, path, &err);
        gguf_writer_free(w);
        T_CHECK(rc == 0, "%s", err.msg);
        rc = gguf_open(&f, path, &err);
        T_CHECK(rc == 0, "%s", err.msg);
        rc = compare_with_python(path, &f, why, sizeof(why));
        gguf_close(&f);
        unlink(path);
        T_CHECK(rc == 0, "alignment %u: python reads it differently (rc %d): %s", aligns[k], rc, why);
    }
    return 0;
}

/* ------------------------------------------------------------------ */
/* Getters, open errors, writer misuse                                 */
/* ------------------------------------------------------------------ */

static int test_getters(void) {
    char path[4096];
    gguf_file f;
    ds4_error err = {{0}};
    T_CHECK(gguf_open(&f, fixture_path(path, sizeof(path)), &err) == 0, "%s", err.msg);
    uint64_t u64 = 0;
    uint32_t u32 = 0;
    double d = 0, arr[8];
    bool b = false;
    gguf_str s;
    uint64_t cnt = 0;
    int bad = 0;
#define EXPECT(cond) do { if (!(cond)) { fprintf(stderr, "    line %d: %s (%s)\n", __LINE__, #cond, err.msg); bad = 1; } } while (0)
#define EXPECT_ERR(call, sub) do { err.msg[0] = 0; \
        if ((call) != -1 || !strstr(err.msg, sub) || !one_line(&err)) { \
            fprintf(stderr, "    line %d: %s should fail with '%s', got '%s'\n", __LINE__, #call, sub, err.msg); bad = 1; } } while (0)
    EXPECT(gguf_get_u64(&f, "t.u8", &u64, &err) == 0 && u64 == 200);
    EXPECT(gguf_get_u64(&f, "t.u64", &u64, &err) == 0 && u64 == 18000000000000000000ull);
    EXPECT(gguf_get_u64(&f, "t.u16", &u64, &err) == 0 && u64 == 60000);
    EXPECT(gguf_get_u32(&f, "t.u32", &u32, &err) == 0 && u32 == 4000000000u);
    EXPECT(gguf_get_u32(&f, "general.alignment", &u32, &err) == 0 && u32 == 64);
    EXPECT_ERR(gguf_get_u32(&f, "t.u64", &u32, &err), "does not fit in uint32");
    EXPECT_ERR(gguf_get_u64(&f, "t.i8", &u64, &err), "negative");
    EXPECT_ERR(gguf_get_u32(&f, "t.i32", &u32, &err), "negative");
    EXPECT_ERR(gguf_get_u64(&f, "t.f32", &u64, &err), "expected an integer, got float32");
    EXPECT_ERR(gguf_get_u64(&f, "t.bool_true", &u64, &err), "got bool");
    EXPECT_ERR(gguf_get_u64(&f, "t.nope", &u64, &err), "'t.nope' is missing");
    EXPECT(gguf_get_f64(&f, "t.f32", &d, &err) == 0 && d == 0.15625);
    EXPECT(gguf_get_f64(&f, "t.f64", &d, &err) == 0 && d == -2.718281828459045);
    EXPECT(gguf_get_f64(&f, "t.i32", &d, &err) == 0 && d == -2000000000.0);
    EXPECT(gguf_get_f64(&f, "t.u8", &d, &err) == 0 && d == 200.0);
    EXPECT_ERR(gguf_get_f64(&f, "t.str", &d, &err), "expected a number, got string");
    EXPECT_ERR(gguf_get_f64(&f, "t.arr_f32", &d, &err), "got array");
    EXPECT(gguf_get_bool(&f, "t.bool_true", &b, &err) == 0 && b);
    EXPECT(gguf_get_bool(&f, "t.bool_false", &b, &err) == 0 && !b);
    EXPECT_ERR(gguf_get_bool(&f, "t.u8", &b, &err), "expected bool, got uint8");
    EXPECT(gguf_get_str(&f, "general.architecture", &s, &err) == 0 && gguf_str_eq(s, "testarch"));
    EXPECT_ERR(gguf_get_str(&f, "t.u32", &s, &err), "expected string, got uint32");
    EXPECT(gguf_get_arr_f64(&f, "t.arr_i32", arr, 5, &cnt, &err) == 0 && cnt == 5 && arr[1] == -2 &&
           arr[4] == 5);
    EXPECT(gguf_get_arr_f64(&f, "t.arr_f32", arr, 2, &cnt, &err) == 0 && cnt == 3 && arr[1] == -1.25);
    EXPECT(gguf_get_arr_f64(&f, "t.arr_u64", arr, 3, NULL, &err) == 0 && arr[2] == 18446744073709551615.0);
    cnt = 0;
    EXPECT_ERR(gguf_get_arr_f64(&f, "t.arr_i32", arr, 6, &cnt, &err), "5 elements, 6 needed");
    EXPECT(cnt == 5);
    EXPECT_ERR(gguf_get_arr_f64(&f, "t.arr_str", arr, 1, &cnt, &err), "array of string");
    EXPECT_ERR(gguf_get_arr_f64(&f, "t.arr_bool", arr, 1, &cnt, &err), "array of bool");
    EXPECT_ERR(gguf_get_arr_f64(&f, "t.arr_arr", arr, 1, &cnt, &err), "array of array");
    EXPECT_ERR(gguf_get_arr_f64(&f, "t.u32", arr, 1, &cnt, &err), "expected a numeric array, got uint32");
    EXPECT_ERR(gguf_get_arr_f64(&f, "t.none", arr, 1, &cnt, &err), "missing");
#undef EXPECT
#undef EXPECT_ERR
    gguf_value v = f.kv[2].value, e;
    T_CHECK(gguf_array_get(&v, 0, &e) == -1, "array_get on a scalar fails");
    char small[4];
    T_CHECK(strcmp(gguf_str_copy(f.kv[1].key, small, sizeof(small)), "gen") == 0, "str_copy truncates");
    T_CHECK(strcmp(gguf_value_type_name(GGUF_VT_FLOAT64), "float64") == 0 &&
                strcmp(gguf_value_type_name(99), "unknown") == 0, "type names");
    gguf_close(&f);
    T_CHECK(!bad, "getter checks failed");
    return 0;
}

static int test_open_errors(void) {
    ds4_error err;
    gguf_file f;
    char path[256];
    const int pid = (int)getpid();
    struct {
        const char *what;
        const char *bytes;
        size_t n;
        const char *sub;
    } cases[] = {
        {"empty", "", 0, "too small"},
        {"tiny", "GGUF\3\0\0", 7, "too small"},
        {"bad magic", "GGML\3\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0", 24, "magic"},
        {"version 2", "GGUF\2\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0", 24, "version 2"},
        {"version 1", "GGUF\1\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0", 24, "version 1"},
        {"big endian", "GGUF\0\0\0\3\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0", 24, "big-endian"},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        snprintf(path, sizeof(path), "/tmp/ds4cl-test-gguf-open-%d.gguf", pid);
        FILE *fp = fopen(path, "wb");
        T_CHECK(fp, "cannot write %s", path);
        if (cases[i].n) fwrite(cases[i].bytes, 1, cases[i].n, fp);
        fclose(fp);
        memset(&err, 0, sizeof(err));
        int rc = gguf_open(&f, path, &err);
        unlink(path);
        T_CHECK(rc == -1 && strstr(err.msg, cases[i].sub) && strstr(err.msg, path) && one_line(&err),
                "%s: got '%s'", cases[i].what, err.msg);
        T_CHECK(f.base == NULL && f.kv == NULL && f.n_kv == 0, "%s: f left closed", cases[i].what);
    }
    T_CHECK(gguf_open(&f, "/tmp/ds4cl-no-such-dir/x.gguf", &err) == -1 &&
                strstr(err.msg, "cannot open") && one_line(&err), "missing file: %s", err.msg);
    T_CHECK(gguf_open(&f, "/tmp", &err) == -1 && strstr(err.msg, "directory") && one_line(&err),
            "directory: %s", err.msg);
    if (geteuid() != 0) { /* root reads anything */
        snprintf(path, sizeof(path), "/tmp/ds4cl-test-gguf-perm-%d.gguf", pid);
        FILE *fp = fopen(path, "wb");
        T_CHECK(fp, "cannot write %s", path);
        fclose(fp);
        chmod(path, 0);
        int rc = gguf_open(&f, path, &err);
        unlink(path);
        T_CHECK(rc == -1 && strstr(err.msg, "cannot open"), "unreadable: %s", err.msg);
    }
    /* gguf_parse on NULL or short buffers. */
    T_CHECK(gguf_parse(&f, NULL, 0, &err) == -1 && strstr(err.msg, "too small"), "%s", err.msg);
    T_CHECK(gguf_parse(&f, "GGUF", 4, NULL) == -1, "NULL err is allowed");
    gguf_close(NULL);
    return 0;
}

static int expect_save_error(gguf_writer *w, const char *sub) {
    ds4_error err = {{0}};
    uint8_t *img = (uint8_t *)1;
    uint64_t size = 1;
    int rc = gguf_writer_to_memory(w, &img, &size, &err);
    gguf_writer_free(w);
    T_CHECK(rc == -1 && img == NULL && size == 0, "save should fail (%s)", sub);
    T_CHECK(strstr(err.msg, sub) && one_line(&err), "want '%s', got '%s'", sub, err.msg);
    return 0;
}

static int test_writer_misuse(void) {
    gguf_writer *w = gguf_writer_new(0);
    gguf_w_u32(w, "a.b", 1);
    gguf_w_u32(w, "a.c", 2);
    gguf_w_str(w, "a.b", "again");
    if (expect_save_error(w, "duplicate key 'a.b'")) return 1;

    w = gguf_writer_new(48);
    if (expect_save_error(w, "alignment 48")) return 1;
    w = gguf_writer_new(64);
    gguf_w_u32(w, "general.alignment", 64);
    if (expect_save_error(w, "duplicate key 'general.alignment'")) return 1;
    w = gguf_writer_new(0);
    gguf_w_u32(w, "general.alignment", 64);
    if (expect_save_error(w, "disagrees")) return 1;
    w = gguf_writer_new(0);
    gguf_w_i32(w, "general.alignment", 32);
    if (expect_save_error(w, "disagrees")) return 1;

    w = gguf_writer_new(0);
    gguf_w_u32(w, "", 1);
    if (expect_save_error(w, "empty key")) return 1;
    w = gguf_writer_new(0);
    gguf_w_str(w, "k", NULL);
    if (expect_save_error(w, "NULL string")) return 1;
    w = gguf_writer_new(0);
    gguf_w_arr(w, "k", GGUF_VT_STRING, "x", 1);
    if (expect_save_error(w, "fixed-size")) return 1;
    w = gguf_writer_new(0);
    const uint8_t two[] = {0, 2};
    gguf_w_arr(w, "k", GGUF_VT_BOOL, two, 2);
    if (expect_save_error(w, "not 0 or 1")) return 1;
    w = gguf_writer_new(0);
    gguf_value v = {.type = GGUF_VT_UINT8, .u = 256};
    gguf_w_value(w, "k", &v);
    if (expect_save_error(w, "out of range")) return 1;
    w = gguf_writer_new(0);
    v = (gguf_value){.type = GGUF_VT_COUNT};
    gguf_w_value(w, "k", &v);
    if (expect_save_error(w, "unknown value type")) return 1;
    /* A caller-built nested body that lies about its size. */
    bbuf b;
    nested_u16(&b);
    v = (gguf_value){.type = GGUF_VT_ARRAY};
    v.arr.elem_type = GGUF_VT_ARRAY;
    v.arr.count = 3;
    v.arr.data = b.p;
    v.arr.nbytes = b.n - 1;
    w = gguf_writer_new(0);
    gguf_w_value(w, "k", &v);
    if (expect_save_error(w, "key 'k'")) return 1;
    v.arr.nbytes = b.n + 2;
    w = gguf_writer_new(0);
    gguf_w_value(w, "k", &v);
    if (expect_save_error(w, "elements use")) return 1;

    /* Tensor errors are reported at once. */
    ds4_error err = {{0}};
    w = gguf_writer_new(0);
    uint8_t data[4096] = {0};
    const uint64_t ne_ok[4] = {32, 2, 1, 1}, ne_bad0[1] = {33}, ne_zero[2] = {32, 0};
    T_CHECK(gguf_w_tensor(w, "q", 2, ne_ok, DS4_TYPE_Q8_0, data, &err) == 0, "%s", err.msg);
    T_CHECK(gguf_w_tensor(w, "q", 2, ne_ok, DS4_TYPE_Q8_0, data, &err) == -1 &&
                strstr(err.msg, "added twice"), "%s", err.msg);
    T_CHECK(gguf_w_tensor(w, "r", 1, ne_bad0, DS4_TYPE_Q8_0, data, &err) == -1 &&
                strstr(err.msg, "block size"), "%s", err.msg);
    T_CHECK(gguf_w_tensor(w, "r", 2, ne_zero, DS4_TYPE_F32, data, &err) == -1 &&
                strstr(err.msg, "ne[1]"), "%s", err.msg);
    T_CHECK(gguf_w_tensor(w, "r", 0, ne_ok, DS4_TYPE_F32, data, &err) == -1 &&
                strstr(err.msg, "n_dims"), "%s", err.msg);
    T_CHECK(gguf_w_tensor(w, "r", 5, ne_ok, DS4_TYPE_F32, data, &err) == -1 &&
                strstr(err.msg, "n_dims"), "%s", err.msg);
    T_CHECK(gguf_w_tensor(w, "r", 2, ne_ok, 4, data, &err) == -1 &&
                strstr(err.msg, "unknown type"), "%s", err.msg);
    T_CHECK(gguf_w_tensor(w, "", 2, ne_ok, DS4_TYPE_F32, data, &err) == -1, "empty name");
    T_CHECK(gguf_w_tensor(w, "r", 2, ne_ok, DS4_TYPE_F32, NULL, &err) == -1, "NULL data");
    char long_name[GGUF_MAX_NAME_LEN + 2];
    memset(long_name, 'n', sizeof(long_name) - 1);
    long_name[sizeof(long_name) - 1] = '\0';
    T_CHECK(gguf_w_tensor(w, long_name, 2, ne_ok, DS4_TYPE_F32, data, &err) == -1, "65-byte name");
    long_name[GGUF_MAX_NAME_LEN] = '\0';
    T_CHECK(gguf_w_tensor(w, long_name, 2, ne_ok, DS4_TYPE_F32, data, &err) == 0, "64-byte name: %s",
            err.msg);
    /* The good tensors still save. */
    uint8_t *img;
    uint64_t size;
    T_CHECK(gguf_writer_to_memory(w, &img, &size, &err) == 0, "%s", err.msg);
    gguf_writer_free(w);
    free(img);
    /* Saving into a missing directory fails cleanly. */
    w = gguf_writer_new(0);
    int rc = gguf_writer_save(w, "/tmp/ds4cl-no-such-dir/x.gguf", &err);
    gguf_writer_free(w);
    T_CHECK(rc == -1 && strstr(err.msg, "cannot create") && one_line(&err), "%s", err.msg);
    return 0;
}

void tests_register_gguf(void) {
    test_add("gguf_pywriter_fixture", test_pywriter_fixture);
    test_add("gguf_writer_matches_pywriter", test_writer_matches_pywriter);
    test_add("gguf_writer_roundtrip", test_writer_roundtrip);
    test_add("gguf_writer_empty", test_writer_empty);
    test_add("gguf_python_reads_writer", test_python_reads_writer);
    test_add("gguf_getters", test_getters);
    test_add("gguf_open_errors", test_open_errors);
    test_add("gguf_writer_misuse", test_writer_misuse);
}
