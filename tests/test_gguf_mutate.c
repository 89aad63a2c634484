/* test_gguf_mutate.c - the GGUF reader against thousands of corrupt images.
 *
 * A valid image is built with gguf_write (every value type, string arrays,
 * nested arrays three deep, six tensors of six types, alignment 64).  An
 * independent walker (written here, trusting the valid image) records the
 * offset and meaning of every field: header counts, key and string lengths,
 * value and element types, array counts, bools, tensor name lengths, n_dims,
 * each ne, tensor types and offsets, general.alignment.  Mutations are then
 * written at those exact positions, deterministically:
 *
 *   targeted (must be rejected, with a one-line message, often naming the
 *   fault): bad magic and versions, n_kv/n_tensors beyond the bytes left,
 *   string/key/name lengths running past the end, unknown value, element and
 *   tensor types, array counts that cannot fit, bools not 0/1, n_dims outside
 *   1..4, ne of 0 or huge, ne[0] off the block size, tensor offsets past the
 *   end, misaligned or overlapping, bad alignment values and types, duplicate
 *   keys and tensor names, truncation at every byte of the header and
 *   directories and at each boundary of the data section;
 *   random (seeded; may parse): byte flips across the header, keys and tensor
 *   infos, interesting values at random fields, type swaps, counts and
 *   lengths off by a little, other valid alignments.  When such an image
 *   parses, every invariant documented in gguf.h is checked;
 *   benign (must parse): flips in the padding and tensor data.
 *
 * Every image is parsed from a fresh malloc'd copy of exactly its size, so
 * ASan reports any read past the end.  A few images also go through files
 * and gguf_open (the mmap path), which must agree with gguf_parse.
 */
#include <inttypes.h>
#include <stdbool.h>
#include <string.h>
#include <unistd.h>

#include "../src/gguf.h"
#include "../src/gguf_write.h"
#include "../src/quant.h"
#include "test.h"
#include "util_bbuf.h"

#define ALIGN 64
#define MAX_FIELDS 512
#define MAX_KV 32
#define MAX_T 8

enum field_kind {
    FK_KEYLEN, FK_VTYPE, FK_STRLEN, FK_ETYPE, FK_COUNT, FK_BOOL, FK_ALIGN_VTYPE, FK_ALIGN_VALUE,
    FK_NAMELEN, FK_NDIMS, FK_NE, FK_TTYPE, FK_TOFFSET, FK_VERSION, FK_HCOUNT, FK_NKINDS
};

/* Field widths in bytes, by kind. */
static const int fk_width[FK_NKINDS] = {8, 4, 8, 4, 8, 1, 4, 4, 8, 4, 8, 4, 8, 4, 8};

typedef struct field {
    uint64_t off;
    enum field_kind kind;
    uint32_t idx;   /* kv or tensor index */
    uint32_t aux;   /* FK_COUNT: element type; FK_NE: dim */
} field;

/* Where everything sits in the valid image. */
typedef struct layout {
    field f[MAX_FIELDS];
    int n;
    uint64_t size, dir_end, data_offset, max_end;
    uint64_t n_kv, n_tensors;
    uint64_t kv_start[MAX_KV + 1]; /* kv_start[n_kv] = start of the tensor infos */
    uint64_t key_off[MAX_KV], key_len[MAX_KV];
    uint64_t t_start[MAX_T];
    uint64_t name_off[MAX_T], name_len[MAX_T];
    uint64_t t_offset[MAX_T], t_nbytes[MAX_T], t_offset_field[MAX_T];
    uint32_t t_type[MAX_T];
    uint64_t t_ne0[MAX_T], t_ne0_field[MAX_T];
} layout;

/* Counters and the image being mutated. */
typedef struct mctx {
    const uint8_t *base;
    uint64_t size;
    layout L;
    int total, rejected, targeted, truncations, random, random_parsed, benign;
    uint8_t *work; /* scratch copy of base */
} mctx;

/* ------------------------------------------------------------------ */
/* Building the valid image                                            */
/* ------------------------------------------------------------------ */


static void put_arr(gguf_writer *w, const char *key, uint32_t et, uint64_t count, const bbuf *b) {
    gguf_value v = {.type = GGUF_VT_ARRAY};
    v.arr.elem_type = et;
    v.arr.count = count;
    v.arr.data = b->p;
    v.arr.nbytes = b->n;
    gguf_w_value(w, key, &v);
}

static const struct {
    const char *name;
    uint32_t type, n_dims;
    uint64_t ne[4];
} base_tensors[] = {
    {"tns.f32", DS4_TYPE_F32, 2, {8, 2, 1, 1}},
    {"tns.f16", DS4_TYPE_F16, 1, {16, 1, 1, 1}},
    {"tns.q80", DS4_TYPE_Q8_0, 2, {32, 3, 1, 1}},
    {"tns.q4k", DS4_TYPE_Q4_K, 1, {256, 1, 1, 1}},
    {"tns.i32", DS4_TYPE_I32, 3, {4, 2, 2, 1}},
    {"tns.q2k", DS4_TYPE_Q2_K, 4, {256, 1, 1, 2}},
};
#define N_BASE_T (sizeof(base_tensors) / sizeof(base_tensors[0]))

static int build_base(uint8_t **img, uint64_t *size, ds4_error *err) {
    gguf_writer *w = gguf_writer_new(ALIGN);
    gguf_w_str(w, "general.architecture", "mutant");
    gguf_value v = {.type = GGUF_VT_UINT8, .u = 7};
    gguf_w_value(w, "k.u8", &v);
    v = (gguf_value){.type = GGUF_VT_INT8, .i = -7};
    gguf_w_value(w, "k.i8", &v);
    v = (gguf_value){.type = GGUF_VT_UINT16, .u = 777};
    gguf_w_value(w, "k.u16", &v);
    v = (gguf_value){.type = GGUF_VT_INT16, .i = -777};
    gguf_w_value(w, "k.i16", &v);
    gguf_w_u32(w, "k.u32", 77777);
    gguf_w_i32(w, "k.i32", -77777);
    gguf_w_f32(w, "k.f32", 0.75f);
    gguf_w_bool(w, "k.bool", true);
    gguf_w_str(w, "k.str", "hello");
    gguf_w_u64(w, "k.u64", 1ull << 40);
    v = (gguf_value){.type = GGUF_VT_INT64, .i = -(1ll << 40)};
    gguf_w_value(w, "k.i64", &v);
    gguf_w_f64(w, "k.f64", 0.125);
    const uint32_t u[] = {1, 2, 3, 4, 5};
    gguf_w_arr(w, "k.arr_u32", GGUF_VT_UINT32, u, 5);
    const float fl[] = {0.5f, -2.0f};
    gguf_w_arr(w, "k.arr_f32", GGUF_VT_FLOAT32, fl, 2);
    const uint8_t bl[] = {1, 0, 1};
    gguf_w_arr(w, "k.arr_bol", GGUF_VT_BOOL, bl, 3);
    const char *const strs[] = {"a", "bb", "", "dddd"};
    gguf_w_arr_str(w, "k.arr_str", strs, 4);
    bbuf b = {.n = 0};
    for (int i = 0; i < 3; i++) { /* [[0], [0, 1], [0, 1, 2]] of uint16 */
        bb_u32(&b, GGUF_VT_UINT16);
        bb_u64(&b, (uint64_t)i + 1);
        for (int k = 0; k <= i; k++) bb_u16(&b, (uint16_t)k);
    }
    put_arr(w, "k.nest_u16", GGUF_VT_ARRAY, 3, &b);
    b.n = 0; /* [["x", "yz"], ["w"]] of strings */
    bb_u32(&b, GGUF_VT_STRING); bb_u64(&b, 2); bb_str(&b, "x"); bb_str(&b, "yz");
    bb_u32(&b, GGUF_VT_STRING); bb_u64(&b, 1); bb_str(&b, "w");
    put_arr(w, "k.nest_str", GGUF_VT_ARRAY, 2, &b);
    b.n = 0; /* three levels: [[[true, false]], [[true]]] of bool */
    for (int i = 0; i < 2; i++) {
        bb_u32(&b, GGUF_VT_ARRAY); bb_u64(&b, 1);
        bb_u32(&b, GGUF_VT_BOOL); bb_u64(&b, 2 - (uint64_t)i);
        bb_u8(&b, 1);
        if (i == 0) bb_u8(&b, 0);
    }
    put_arr(w, "k.nest_deep", GGUF_VT_ARRAY, 2, &b);
    int rc = 0;
    for (size_t i = 0; i < N_BASE_T && !rc; i++) {
        uint8_t data[1024];
        for (size_t k = 0; k < sizeof(data); k++) data[k] = (uint8_t)(k * 31 + i * 7);
        rc = gguf_w_tensor(w, base_tensors[i].name, base_tensors[i].n_dims, base_tensors[i].ne,
                           base_tensors[i].type, data, err);
    }
    if (!rc) rc = gguf_writer_to_memory(w, img, size, err);
    gguf_writer_free(w);
    return rc;
}

/* ------------------------------------------------------------------ */
/* The independent layout walker                                       */
/* ------------------------------------------------------------------ */

static uint32_t g32(const uint8_t *p, uint64_t off) {
    uint32_t v;
    memcpy(&v, p + off, 4);
    return v;
}
static uint64_t g64(const uint8_t *p, uint64_t off) {
    uint64_t v;
    memcpy(&v, p + off, 8);
    return v;
}
static void p32(uint8_t *p, uint64_t off, uint32_t v) { memcpy(p + off, &v, 4); }
static void p64(uint8_t *p, uint64_t off, uint64_t v) { memcpy(p + off, &v, 8); }

static void rec(layout *L, uint64_t off, enum field_kind k, uint32_t idx, uint32_t aux) {
    if (L->n < MAX_FIELDS) L->f[L->n++] = (field){off, k, idx, aux};
}

static uint64_t elem_bytes(uint32_t t) {
    switch (t) {
    case GGUF_VT_UINT8: case GGUF_VT_INT8: case GGUF_VT_BOOL: return 1;
    case GGUF_VT_UINT16: case GGUF_VT_INT16: return 2;
    case GGUF_VT_UINT32: case GGUF_VT_INT32: case GGUF_VT_FLOAT32: return 4;
    case GGUF_VT_UINT64: case GGUF_VT_INT64: case GGUF_VT_FLOAT64: return 8;
    default: return 0;
    }
}

/* Walk one value of `type` at off; return the offset after it. */
static uint64_t walk_value(layout *L, const uint8_t *p, uint64_t off, uint32_t type, uint32_t kv) {
    if (type == GGUF_VT_STRING) {
        rec(L, off, FK_STRLEN, kv, 0);
        return off + 8 + g64(p, off);
    }
    if (type == GGUF_VT_ARRAY) {
        uint32_t et = g32(p, off);
        uint64_t n = g64(p, off + 4);
        rec(L, off, FK_ETYPE, kv, 0);
        rec(L, off + 4, FK_COUNT, kv, et);
        off += 12;
        for (uint64_t i = 0; i < n; i++) off = walk_value(L, p, off, et, kv);
        return off;
    }
    if (type == GGUF_VT_BOOL) rec(L, off, FK_BOOL, kv, 0);
    return off + elem_bytes(type);
}

static void walk(layout *L, const uint8_t *p, uint64_t size) {
    memset(L, 0, sizeof(*L));
    L->size = size;
    L->n_tensors = g64(p, 8);
    L->n_kv = g64(p, 16);
    uint64_t off = 24;
    for (uint32_t i = 0; i < L->n_kv; i++) {
        L->kv_start[i] = off;
        rec(L, off, FK_KEYLEN, i, 0);
        L->key_len[i] = g64(p, off);
        L->key_off[i] = off + 8;
        off += 8 + L->key_len[i];
        uint32_t type = g32(p, off);
        bool is_align = L->key_len[i] == 17 && memcmp(p + L->key_off[i], "general.alignment", 17) == 0;
        rec(L, off, is_align ? FK_ALIGN_VTYPE : FK_VTYPE, i, 0);
        off += 4;
        if (is_align) rec(L, off, FK_ALIGN_VALUE, i, 0);
        off = walk_value(L, p, off, type, i);
    }
    L->kv_start[L->n_kv] = off;
    for (uint32_t i = 0; i < L->n_tensors; i++) {
        L->t_start[i] = off;
        rec(L, off, FK_NAMELEN, i, 0);
        L->name_len[i] = g64(p, off);
        L->name_off[i] = off + 8;
        off += 8 + L->name_len[i];
        uint32_t nd = g32(p, off);
        rec(L, off, FK_NDIMS, i, 0);
        off += 4;
        uint64_t nel_rest = 1;
        for (uint32_t d = 0; d < nd; d++) {
            rec(L, off, FK_NE, i, d);
            if (d == 0) {
                L->t_ne0[i] = g64(p, off);
                L->t_ne0_field[i] = off;
            } else {
                nel_rest *= g64(p, off);
            }
            off += 8;
        }
        L->t_type[i] = g32(p, off);
        rec(L, off, FK_TTYPE, i, 0);
        off += 4;
        L->t_offset[i] = g64(p, off);
        L->t_offset_field[i] = off;
        rec(L, off, FK_TOFFSET, i, 0);
        off += 8;
        L->t_nbytes[i] = ds4_row_bytes(L->t_type[i], L->t_ne0[i]) * nel_rest;
    }
    L->dir_end = off;
    L->data_offset = (off + ALIGN - 1) / ALIGN * ALIGN;
    for (uint32_t i = 0; i < L->n_tensors; i++) {
        uint64_t end = L->data_offset + L->t_offset[i] + L->t_nbytes[i];
        if (end > L->max_end) L->max_end = end;
    }
}

/* ------------------------------------------------------------------ */
/* Invariants of a successful parse (gguf.h)                           */
/* ------------------------------------------------------------------ */

static int check_value(const gguf_value *v, const uint8_t *lo, const uint8_t *hi, int depth) {
    T_CHECK(v->type < GGUF_VT_COUNT, "value type %u", v->type);
    if (v->type == GGUF_VT_BOOL) T_CHECK(v->u <= 1, "bool %" PRIu64, v->u);
    if (v->type == GGUF_VT_STRING)
        T_CHECK((const uint8_t *)v->s.ptr >= lo && v->s.len <= (uint64_t)(hi - (const uint8_t *)v->s.ptr),
                "string outside its bounds");
    if (v->type != GGUF_VT_ARRAY) return 0;
    T_CHECK(depth < GGUF_MAX_NESTING, "nesting depth %d", depth);
    T_CHECK(v->arr.elem_type < GGUF_VT_COUNT, "element type %u", v->arr.elem_type);
    T_CHECK(v->arr.data >= lo && v->arr.nbytes <= (uint64_t)(hi - v->arr.data), "array body outside");
    const uint8_t *blo = v->arr.data, *bhi = v->arr.data + v->arr.nbytes;
    gguf_array_iter it;
    gguf_value e;
    uint64_t n = 0;
    gguf_array_iter_init(&it, v);
    while (gguf_array_next(&it, &e)) {
        T_CHECK(e.type == v->arr.elem_type, "element %" PRIu64 " type %u", n, e.type);
        if (check_value(&e, blo, bhi, depth + 1)) return 1;
        n++;
    }
    T_CHECK(n == v->arr.count, "iterated %" PRIu64 " of %" PRIu64 " elements", n, v->arr.count);
    if (n) {
        gguf_value last;
        T_CHECK(gguf_array_get(v, n - 1, &last) == 0, "array_get last");
    }
    return 0;
}

static int check_invariants(const gguf_file *f, const uint8_t *img, uint64_t size) {
    const uint8_t *hi = img + size;
    T_CHECK(f->base == img && f->size == size && f->version == 3, "header");
    T_CHECK(f->alignment && (f->alignment & (f->alignment - 1)) == 0 &&
                f->alignment <= GGUF_MAX_ALIGNMENT, "alignment %u", f->alignment);
    T_CHECK(f->data_offset % f->alignment == 0 && f->data_offset <= size, "data offset");
    for (uint64_t i = 0; i < f->n_kv; i++) {
        gguf_str k = f->kv[i].key;
        T_CHECK((const uint8_t *)k.ptr >= img && k.len >= 1 && k.len <= GGUF_MAX_KEY_LEN &&
                    k.len <= (uint64_t)(hi - (const uint8_t *)k.ptr) && !memchr(k.ptr, 0, (size_t)k.len),
                "key %" PRIu64, i);
        for (uint64_t j = 0; j < i; j++)
            T_CHECK(!(f->kv[j].key.len == k.len && memcmp(f->kv[j].key.ptr, k.ptr, (size_t)k.len) == 0),
                    "keys %" PRIu64 " and %" PRIu64 " equal", j, i);
        if (check_value(&f->kv[i].value, img, hi, 0)) return 1;
    }
    const gguf_kv *al = gguf_find_kv(f, "general.alignment");
    if (al) T_CHECK(al->value.type == GGUF_VT_UINT32 && al->value.u == f->alignment, "alignment key");
    else T_CHECK(f->alignment == GGUF_DEFAULT_ALIGNMENT, "default alignment");
    volatile uint8_t sink = 0;
    for (uint64_t i = 0; i < f->n_tensors; i++) {
        const gguf_tensor *t = &f->tensors[i];
        const ds4_type_traits *tr = ds4_type_get(t->type);
        T_CHECK(tr && t->n_dims >= 1 && t->n_dims <= GGUF_MAX_DIMS, "tensor %" PRIu64 " type/dims", i);
        uint64_t nel = 1;
        for (uint32_t d = 0; d < GGUF_MAX_DIMS; d++) {
            T_CHECK(t->ne[d] >= 1 && (d < t->n_dims || t->ne[d] == 1), "tensor %" PRIu64 " ne[%u]", i, d);
            nel *= t->ne[d];
        }
        T_CHECK(nel == t->n_elements && t->ne[0] % tr->block_size == 0, "tensor %" PRIu64 " elements", i);
        T_CHECK(t->nbytes == ds4_row_bytes(t->type, t->ne[0]) * t->ne[1] * t->ne[2] * t->ne[3],
                "tensor %" PRIu64 " nbytes", i);
        T_CHECK(t->offset % f->alignment == 0 && t->file_offset == f->data_offset + t->offset &&
                    t->file_offset <= size && t->nbytes <= size - t->file_offset &&
                    t->data == img + t->file_offset, "tensor %" PRIu64 " placement", i);
        T_CHECK(t->name.len >= 1 && t->name.len <= GGUF_MAX_NAME_LEN &&
                    (const uint8_t *)t->name.ptr >= img && t->name.len <= (uint64_t)(hi - (const uint8_t *)t->name.ptr),
                "tensor %" PRIu64 " name", i);
        for (uint64_t j = 0; j < i; j++) {
            const gguf_tensor *u = &f->tensors[j];
            T_CHECK(!(u->name.len == t->name.len && memcmp(u->name.ptr, t->name.ptr, (size_t)t->name.len) == 0),
                    "tensors %" PRIu64 " and %" PRIu64 " share a name", j, i);
            T_CHECK(u->file_offset + u->nbytes <= t->file_offset || t->file_offset + t->nbytes <= u->file_offset,
                    "tensors %" PRIu64 " and %" PRIu64 " overlap", j, i);
        }
        /* Touch the first and last byte (ASan checks the bounds). */
        sink ^= t->data[0] ^ t->data[t->nbytes - 1];
        T_CHECK(gguf_find_tensor(f, "no.such.tensor") == NULL, "find");
    }
    (void)sink;
    return 0;
}

/* ------------------------------------------------------------------ */
/* Running one mutation                                                */
/* ------------------------------------------------------------------ */

enum expect { MUST_REJECT, MAY_PARSE, MUST_PARSE };

/* sub: NULL, or alternatives separated by '|', one of which the message
 * must contain. */
static bool msg_has(const char *msg, const char *sub) {
    if (!sub) return true;
    char alt[128];
    while (*sub) {
        size_t n = strcspn(sub, "|");
        snprintf(alt, sizeof(alt), "%.*s", (int)n, sub);
        if (strstr(msg, alt)) return true;
        sub += n + (sub[n] == '|');
    }
    return false;
}

static int try_image(mctx *m, const uint8_t *img, uint64_t size, enum expect ex, const char *sub,
                     const char *what, uint64_t a, uint64_t b) {
    uint8_t *copy = malloc(size ? (size_t)size : 1);
    T_CHECK(copy, "out of memory");
    if (size) memcpy(copy, img, (size_t)size);
    /* A size-0 image gets a pointer to nothing readable. */
    gguf_file f;
    ds4_error err;
    memset(&err, 0, sizeof(err));
    int rc = gguf_parse(&f, size ? copy : NULL, size, &err);
    m->total++;
    int bad = 0;
    if (rc) {
        m->rejected++;
        if (!err.msg[0] || strchr(err.msg, '\n')) {
            fprintf(stderr, "    %s (%" PRIu64 ", %" PRIu64 "): message not one non-empty line: '%s'\n",
                    what, a, b, err.msg);
            bad = 1;
        } else if (ex == MUST_PARSE) {
            fprintf(stderr, "    %s (%" PRIu64 ", %" PRIu64 "): should parse, got '%s'\n", what, a, b, err.msg);
            bad = 1;
        } else if (ex == MUST_REJECT && !msg_has(err.msg, sub)) {
            fprintf(stderr, "    %s (%" PRIu64 ", %" PRIu64 "): message '%s' lacks '%s'\n", what, a, b,
                    err.msg, sub);
            bad = 1;
        }
        T_CHECK(f.kv == NULL && f.tensors == NULL && f.n_kv == 0, "%s: f not closed on failure", what);
    } else {
        if (ex == MUST_REJECT) {
            fprintf(stderr, "    %s (%" PRIu64 ", %" PRIu64 "): parsed but must be rejected\n", what, a, b);
            bad = 1;
        } else if (check_invariants(&f, copy, size)) {
            fprintf(stderr, "    %s (%" PRIu64 ", %" PRIu64 "): parsed with a broken invariant\n", what, a, b);
            bad = 1;
        }
        if (ex == MAY_PARSE) m->random_parsed++;
        gguf_close(&f);
    }
    free(copy);
    return bad;
}

/* Write a field value of the field's width into the scratch image and try
 * it; the scratch image is restored afterwards. */
static int try_field(mctx *m, const field *fl, uint64_t v, enum expect ex, const char *sub,
                     const char *what) {
    memcpy(m->work, m->base, (size_t)m->size);
    int w = fk_width[fl->kind];
    if (w == 8) p64(m->work, fl->off, v);
    else if (w == 4) p32(m->work, fl->off, (uint32_t)v);
    else m->work[fl->off] = (uint8_t)v;
    if (ex == MUST_REJECT) m->targeted++;
    else m->random++;
    return try_image(m, m->work, m->size, ex, sub, what, fl->off, v);
}

static int setup(mctx *m) {
    memset(m, 0, sizeof(*m));
    uint8_t *img;
    uint64_t size;
    ds4_error err = {{0}};
    T_CHECK(build_base(&img, &size, &err) == 0, "building the base image: %s", err.msg);
    m->base = img;
    m->size = size;
    m->work = malloc((size_t)size);
    T_CHECK(m->work, "out of memory");
    walk(&m->L, img, size);
    /* The walker and the parser agree on the valid image. */
    gguf_file f;
    T_CHECK(gguf_parse(&f, img, size, &err) == 0, "%s", err.msg);
    int ok = f.n_kv == m->L.n_kv && f.n_tensors == N_BASE_T && f.data_offset == m->L.data_offset &&
             f.alignment == ALIGN && m->L.max_end <= size && m->L.n < MAX_FIELDS;
    for (uint64_t i = 0; ok && i < f.n_tensors; i++)
        ok = f.tensors[i].offset == m->L.t_offset[i] && f.tensors[i].nbytes == m->L.t_nbytes[i];
    gguf_close(&f);
    T_CHECK(ok, "walker disagrees with the parser on the base image");
    return 0;
}

static void teardown(mctx *m) {
    free((void *)m->base);
    free(m->work);
}

static void report(const mctx *m, const char *name) {
    printf("    %s: %d images, %d rejected (%d targeted, %d truncations, %d random of which %d parsed, "
           "%d benign)\n", name, m->total, m->rejected, m->targeted, m->truncations, m->random,
           m->random_parsed, m->benign);
}

/* ------------------------------------------------------------------ */
/* Targeted mutations                                                  */
/* ------------------------------------------------------------------ */

static int mutate_header(mctx *m) {
    const uint8_t *p = m->base;
    for (int i = 0; i < 4; i++) { /* each magic byte */
        memcpy(m->work, p, (size_t)m->size);
        m->work[i] ^= 0x20;
        m->targeted++;
        if (try_image(m, m->work, m->size, MUST_REJECT, "magic", "magic byte", (uint64_t)i, 0)) return 1;
    }
    const uint32_t versions[] = {0, 1, 2, 4, 0x03000000u, 0xffffffffu};
    const char *vsub[] = {"version 0", "version 1 is not", "version 2 is not", "version 4", "big-endian",
                          "version 4294967295"};
    field vf = {4, FK_VERSION, 0, 0};
    for (int i = 0; i < 6; i++)
        if (try_field(m, &vf, versions[i], MUST_REJECT, vsub[i], "version")) return 1;
    uint64_t rem = m->size - 24;
    const uint64_t huge[] = {rem / 14 + 1, 1ull << 32, 1ull << 63, UINT64_MAX};
    field nt = {8, FK_HCOUNT, 0, 0}, nk = {16, FK_HCOUNT, 0, 0};
    for (int i = 0; i < 4; i++) {
        if (try_field(m, &nk, huge[i], MUST_REJECT, "n_kv", "n_kv")) return 1;
        if (try_field(m, &nt, huge[i], MUST_REJECT, "n_tensors", "n_tensors")) return 1;
    }
    if (try_field(m, &nt, rem / 33 + 1, MUST_REJECT, "n_tensors", "n_tensors")) return 1;
    /* Both fit alone but not together. */
    memcpy(m->work, p, (size_t)m->size);
    p64(m->work, 16, rem / 14);
    p64(m->work, 8, rem / 33);
    m->targeted++;
    return try_image(m, m->work, m->size, MUST_REJECT, "cannot both fit", "n_kv+n_tensors", 0, 0);
}

/* Every recorded field gets the values that must be refused. */
static int mutate_fields(mctx *m) {
    const layout *L = &m->L;
    for (int i = 0; i < L->n; i++) {
        const field *fl = &L->f[i];
        uint64_t rem = m->size - (fl->off + (uint64_t)fk_width[fl->kind]);
        switch (fl->kind) {
        case FK_KEYLEN: case FK_STRLEN: case FK_NAMELEN: {
            const uint64_t past[] = {rem + 1, rem + 1000, 1ull << 32, 1ull << 63, UINT64_MAX};
            for (int k = 0; k < 5; k++)
                if (try_field(m, fl, past[k], MUST_REJECT, "runs past end", "length")) return 1;
            if (try_field(m, fl, rem, MUST_REJECT, NULL, "length = rest of file")) return 1;
            break;
        }
        case FK_VTYPE: {
            const uint32_t bad[] = {GGUF_VT_COUNT, 14, 255, 0x10000, UINT32_MAX};
            for (int k = 0; k < 5; k++)
                if (try_field(m, fl, bad[k], MUST_REJECT, "unknown value type", "value type")) return 1;
            break;
        }
        case FK_ETYPE: {
            const uint32_t bad[] = {GGUF_VT_COUNT, 200, UINT32_MAX};
            for (int k = 0; k < 3; k++)
                if (try_field(m, fl, bad[k], MUST_REJECT, "unknown element type", "element type")) return 1;
            break;
        }
        case FK_COUNT: {
            uint64_t min = elem_bytes(fl->aux);
            if (!min) min = fl->aux == GGUF_VT_STRING ? 8 : 12;
            const uint64_t bad[] = {rem / min + 1, rem + 1, 1ull << 32, 1ull << 63, UINT64_MAX};
            for (int k = 0; k < 5; k++)
                if (try_field(m, fl, bad[k], MUST_REJECT, "cannot fit", "array count")) return 1;
            break;
        }
        case FK_BOOL: {
            const uint8_t bad[] = {2, 0x80, 0xff};
            for (int k = 0; k < 3; k++)
                if (try_field(m, fl, bad[k], MUST_REJECT, "not 0 or 1", "bool")) return 1;
            break;
        }
        case FK_ALIGN_VALUE: {
            const uint32_t bad[] = {0, 3, 6, 48, 100, 1u << 21, 1u << 31, UINT32_MAX};
            for (int k = 0; k < 8; k++)
                if (try_field(m, fl, bad[k], MUST_REJECT, "'general.alignment': ", "alignment")) return 1;
            break;
        }
        case FK_ALIGN_VTYPE: /* any type but uint32 must be refused */
            for (uint32_t t = 0; t < GGUF_VT_COUNT; t++) {
                if (t == GGUF_VT_UINT32) continue;
                if (try_field(m, fl, t, MUST_REJECT, NULL, "alignment type")) return 1;
            }
            if (try_field(m, fl, GGUF_VT_INT32, MUST_REJECT, "expected uint32, got int32", "alignment int32"))
                return 1;
            break;
        case FK_NDIMS: {
            const uint32_t bad[] = {0, 5, 8, 1000, UINT32_MAX};
            for (int k = 0; k < 5; k++)
                if (try_field(m, fl, bad[k], MUST_REJECT, "n_dims", "n_dims")) return 1;
            break;
        }
        case FK_NE: {
            if (try_field(m, fl, 0, MUST_REJECT, "is not in 1..", "ne = 0")) return 1;
            const uint64_t big[] = {1ull << 32, 1ull << 40, 1ull << 62, 1ull << 63, UINT64_MAX};
            for (int k = 0; k < 5; k++)
                if (try_field(m, fl, big[k], MUST_REJECT, "runs past end|overflows|is not in 1..|block size",
                              "huge ne")) return 1;
            uint32_t bs = ds4_type_get(L->t_type[fl->idx])->block_size;
            if (fl->aux == 0 && bs > 1) {
                uint64_t ne0 = L->t_ne0[fl->idx];
                if (try_field(m, fl, ne0 + 1, MUST_REJECT, "block size", "ne0+1")) return 1;
                if (try_field(m, fl, ne0 - 1, MUST_REJECT, "block size", "ne0-1")) return 1;
                if (try_field(m, fl, ne0 + bs / 2, MUST_REJECT, "block size", "ne0+bs/2")) return 1;
            }
            break;
        }
        case FK_TTYPE: {
            const uint32_t bad[] = {4, 5, 31, 32, 33, 36, 37, 38, DS4_TYPE_COUNT, 41, 1000, UINT32_MAX};
            for (int k = 0; k < 12; k++)
                if (try_field(m, fl, bad[k], MUST_REJECT, "unknown tensor type", "tensor type")) return 1;
            break;
        }
        case FK_TOFFSET: {
            uint64_t room = m->size - L->data_offset, off = L->t_offset[fl->idx];
            const uint64_t past[] = {room, room + ALIGN, (room + 4096) & ~(uint64_t)(ALIGN - 1),
                                     UINT64_MAX & ~(uint64_t)(ALIGN - 1), 1ull << 63};
            for (int k = 0; k < 5; k++)
                if (try_field(m, fl, past[k], MUST_REJECT, "runs past end of file", "offset past end"))
                    return 1;
            const uint64_t mis[] = {off + 1, off + ALIGN / 2, off + ALIGN - 1, off + 4, UINT64_MAX};
            for (int k = 0; k < 5; k++)
                if (try_field(m, fl, mis[k], MUST_REJECT, "not a multiple of the alignment", "misaligned"))
                    return 1;
            break;
        }
        default: break;
        }
    }
    return 0;
}

/* Tensors moved onto each other, duplicate keys, duplicate names. */
static int mutate_overlaps_and_dups(mctx *m) {
    const layout *L = &m->L;
    for (uint32_t i = 0; i < L->n_tensors; i++) {
        for (uint32_t j = 0; j < L->n_tensors; j++) {
            if (i == j) continue;
            field fl = {L->t_offset_field[i], FK_TOFFSET, i, 0};
            if (try_field(m, &fl, L->t_offset[j], MUST_REJECT, "overlaps|runs past end", "same offset"))
                return 1;
            if (L->t_nbytes[j] > ALIGN &&
                try_field(m, &fl, L->t_offset[j] + ALIGN, MUST_REJECT, "overlaps|runs past end", "partial overlap"))
                return 1;
        }
    }
    for (uint32_t i = 0; i < L->n_kv; i++) {
        for (uint32_t j = i + 1; j < L->n_kv; j++) {
            if (L->key_len[i] != L->key_len[j]) continue;
            memcpy(m->work, m->base, (size_t)m->size);
            memcpy(m->work + L->key_off[j], m->base + L->key_off[i], (size_t)L->key_len[i]);
            m->targeted++;
            if (try_image(m, m->work, m->size, MUST_REJECT, "duplicate of key|'general.alignment'",
                          "duplicate key", i, j))
                return 1;
        }
    }
    for (uint32_t i = 0; i < L->n_tensors; i++) {
        for (uint32_t j = i + 1; j < L->n_tensors; j++) {
            if (L->name_len[i] != L->name_len[j]) continue;
            memcpy(m->work, m->base, (size_t)m->size);
            memcpy(m->work + L->name_off[j], m->base + L->name_off[i], (size_t)L->name_len[i]);
            m->targeted++;
            if (try_image(m, m->work, m->size, MUST_REJECT, "duplicate name", "duplicate tensor", i, j))
                return 1;
        }
    }
    /* A NUL inside a key and inside a tensor name. */
    memcpy(m->work, m->base, (size_t)m->size);
    m->work[L->key_off[3] + 1] = 0;
    m->targeted++;
    if (try_image(m, m->work, m->size, MUST_REJECT, "NUL", "NUL in key", 3, 0)) return 1;
    memcpy(m->work, m->base, (size_t)m->size);
    m->work[L->name_off[2] + 2] = 0;
    m->targeted++;
    return try_image(m, m->work, m->size, MUST_REJECT, "NUL", "NUL in name", 2, 0);
}

static int test_mutate_targeted(void) {
    mctx m;
    if (setup(&m)) return 1;
    int rc = mutate_header(&m) || mutate_fields(&m) || mutate_overlaps_and_dups(&m);
    report(&m, "targeted");
    teardown(&m);
    T_CHECK(!rc, "a targeted mutation was mishandled");
    T_CHECK(m.targeted > 500 && m.rejected == m.total, "%d targeted, %d rejected of %d", m.targeted,
            m.rejected, m.total);
    return 0;
}

/* ------------------------------------------------------------------ */
/* Truncation                                                          */
/* ------------------------------------------------------------------ */

static int test_mutate_truncate(void) {
    mctx m;
    if (setup(&m)) return 1;
    const layout *L = &m.L;
    int rc = 0;
    /* Every byte of the header, keys, tensor infos and padding. */
    for (uint64_t n = 0; n <= L->data_offset && !rc; n++) {
        m.truncations++;
        rc = try_image(&m, m.base, n, MUST_REJECT, NULL, "truncated", n, 0);
    }
    /* The boundaries of every tensor's data. */
    for (uint32_t i = 0; i < L->n_tensors && !rc; i++) {
        uint64_t s = L->data_offset + L->t_offset[i], e = s + L->t_nbytes[i];
        const uint64_t cut[] = {s, s + 1, e - 1, e, e + 1};
        for (int k = 0; k < 5 && !rc; k++) {
            if (cut[k] > m.size) continue;
            m.truncations++;
            rc = try_image(&m, m.base, cut[k], cut[k] < L->max_end ? MUST_REJECT : MUST_PARSE,
                           cut[k] < L->max_end ? "runs past end of file" : NULL, "truncated data", cut[k], i);
        }
    }
    /* Trailing padding may go; the whole file parses. */
    for (uint64_t n = L->max_end; n <= m.size && !rc; n++) {
        m.truncations++;
        rc = try_image(&m, m.base, n, MUST_PARSE, NULL, "truncated padding", n, 0);
    }
    report(&m, "truncate");
    teardown(&m);
    T_CHECK(!rc, "a truncation was mishandled");
    T_CHECK(m.truncations > 1000, "%d truncations", m.truncations);
    return 0;
}

/* ------------------------------------------------------------------ */
/* Random mutations                                                    */
/* ------------------------------------------------------------------ */

static uint64_t interesting(test_rng *r, const mctx *m) {
    const uint64_t v[] = {0, 1, 2, 3, 4, 7, 8, 12, 13, 31, 32, 33, 63, 64, 65, 255, 256, 4096,
                          65535, 65536, 0x7fffffff, 0x80000000u, 0xffffffffu, 1ull << 32,
                          (1ull << 63) - 1, 1ull << 63, UINT64_MAX, m->size, m->size - 1};
    return v[test_rng_u64(r) % (sizeof(v) / sizeof(v[0]))];
}

static int test_mutate_random(void) {
    mctx m;
    if (setup(&m)) return 1;
    const layout *L = &m.L;
    test_rng r = {0x6775676675ull};
    int rc = 0;
    /* Byte flips across the header, keys and tensor infos. */
    for (int it = 0; it < 800 && !rc; it++) {
        memcpy(m.work, m.base, (size_t)m.size);
        int nflip = 1 + (int)(test_rng_u64(&r) % 4);
        for (int k = 0; k < nflip; k++) {
            uint64_t at = test_rng_u64(&r) % L->dir_end;
            m.work[at] ^= (uint8_t)(1 + test_rng_u64(&r) % 255);
        }
        m.random++;
        rc = try_image(&m, m.work, m.size, MAY_PARSE, NULL, "random flips", (uint64_t)it, 0);
    }
    /* Interesting values and small nudges at random fields. */
    for (int it = 0; it < 600 && !rc; it++) {
        const field *fl = &L->f[test_rng_u64(&r) % (uint64_t)L->n];
        uint64_t old = fk_width[fl->kind] == 8 ? g64(m.base, fl->off)
                       : fk_width[fl->kind] == 4 ? g32(m.base, fl->off) : m.base[fl->off];
        uint64_t v = it % 2 ? interesting(&r, &m) : old + (test_rng_u64(&r) % 7) - 3;
        rc = try_field(&m, fl, v, MAY_PARSE, NULL, "random field value");
    }
    /* Every value and tensor type swapped for every known one, every other
     * valid alignment, header counts off by one. */
    for (int i = 0; i < L->n && !rc; i++) {
        const field *fl = &L->f[i];
        if (fl->kind == FK_VTYPE || fl->kind == FK_ETYPE) {
            for (uint32_t t = 0; t < GGUF_VT_COUNT && !rc; t++)
                rc = try_field(&m, fl, t, MAY_PARSE, NULL, "value type swap");
        } else if (fl->kind == FK_TTYPE) {
            for (uint32_t t = 0; t < DS4_TYPE_COUNT && !rc; t++)
                if (ds4_type_get(t)) rc = try_field(&m, fl, t, MAY_PARSE, NULL, "tensor type swap");
        } else if (fl->kind == FK_ALIGN_VALUE) {
            for (uint32_t a = 1; a <= GGUF_MAX_ALIGNMENT && !rc; a *= 2)
                rc = try_field(&m, fl, a, MAY_PARSE, NULL, "other alignment");
        }
    }
    field nt = {8, FK_HCOUNT, 0, 0}, nk = {16, FK_HCOUNT, 0, 0};
    for (int d = -2; d <= 2 && !rc; d++) {
        if (!d) continue;
        rc = try_field(&m, &nk, L->n_kv + (uint64_t)d, MAY_PARSE, NULL, "n_kv nudge") ||
             try_field(&m, &nt, L->n_tensors + (uint64_t)d, MAY_PARSE, NULL, "n_tensors nudge");
    }
    /* Padding and tensor data are not interpreted: flips there must parse
     * and show up in the tensor bytes. */
    for (int it = 0; it < 100 && !rc; it++) {
        memcpy(m.work, m.base, (size_t)m.size);
        uint64_t at = L->dir_end + test_rng_u64(&r) % (m.size - L->dir_end);
        m.work[at] ^= 0x5a;
        m.benign++;
        rc = try_image(&m, m.work, m.size, MUST_PARSE, NULL, "data flip", at, 0);
    }
    report(&m, "random");
    teardown(&m);
    T_CHECK(!rc, "a random mutation was mishandled");
    T_CHECK(m.random > 1000 && m.random_parsed > 0 && m.rejected > 0, "%d random, %d parsed", m.random,
            m.random_parsed);
    return 0;
}

/* ------------------------------------------------------------------ */
/* Hand-built images                                                   */
/* ------------------------------------------------------------------ */

/* A header, then the caller's kv bytes, then padding to 32. */
static void hb_begin(bbuf *b, uint64_t n_tensors, uint64_t n_kv) {
    b->n = 0;
    bb_put(b, "GGUF", 4);
    bb_u32(b, 3);
    bb_u64(b, n_tensors);
    bb_u64(b, n_kv);
}

static void hb_pad(bbuf *b) {
    while (b->n % 32) bb_u8(b, 0);
}

/* An array nested `levels` deep around one uint8. */
static void hb_nested(bbuf *b, int levels) {
    for (int i = 0; i < levels - 1; i++) {
        bb_u32(b, GGUF_VT_ARRAY);
        bb_u64(b, 1);
    }
    bb_u32(b, GGUF_VT_UINT8);
    bb_u64(b, 1);
    bb_u8(b, 9);
}

static void hb_tensor_info(bbuf *b, const char *name, uint64_t name_len, uint64_t ne0, uint64_t off) {
    bb_u64(b, name_len);
    bb_put(b, name, name_len);
    bb_u32(b, 1);
    bb_u64(b, ne0);
    bb_u32(b, DS4_TYPE_F32);
    bb_u64(b, off);
}

static int test_mutate_handbuilt(void) {
    mctx m;
    memset(&m, 0, sizeof(m));
    bbuf b;
    int rc = 0;
    /* Nesting: GGUF_MAX_NESTING levels parse, one more does not. */
    for (int lv = 1; lv <= GGUF_MAX_NESTING + 2 && !rc; lv++) {
        hb_begin(&b, 0, 1);
        bb_str(&b, "deep");
        bb_u32(&b, GGUF_VT_ARRAY);
        hb_nested(&b, lv);
        hb_pad(&b);
        rc = try_image(&m, b.p, b.n, lv <= GGUF_MAX_NESTING ? MUST_PARSE : MUST_REJECT, "nested deeper",
                       "nesting", (uint64_t)lv, 0);
    }
    /* Empty key, a key at the length limit. */
    hb_begin(&b, 0, 1);
    bb_str(&b, "");
    bb_u32(&b, GGUF_VT_UINT8);
    bb_u8(&b, 1);
    hb_pad(&b);
    rc = rc || try_image(&m, b.p, b.n, MUST_REJECT, "empty key", "empty key", 0, 0);
    /* Tensor names of 64 and 65 bytes, an empty one. */
    char name[80];
    memset(name, 'n', sizeof(name));
    for (uint64_t len = 0; len <= 66 && !rc; len += (len == 0 ? 63 : 1)) {
        hb_begin(&b, 1, 0);
        hb_tensor_info(&b, name, len, 4, 0);
        hb_pad(&b);
        for (int k = 0; k < 16; k++) bb_u8(&b, (uint8_t)k);
        enum expect ex = len >= 1 && len <= GGUF_MAX_NAME_LEN ? MUST_PARSE : MUST_REJECT;
        rc = try_image(&m, b.p, b.n, ex, len ? "name is" : "empty name", "name length", len, 0);
    }
    /* No keys, no tensors: 32 bytes parse; the bare 24-byte header lacks the
     * padding before the (empty) data section. */
    hb_begin(&b, 0, 0);
    rc = rc || try_image(&m, b.p, b.n, MUST_REJECT, "past end of file", "bare header", 0, 0);
    hb_pad(&b);
    rc = rc || try_image(&m, b.p, b.n, MUST_PARSE, NULL, "empty file", 0, 0);
    for (int k = 0; k < 40; k++) bb_u8(&b, 0xee); /* trailing bytes are allowed */
    rc = rc || try_image(&m, b.p, b.n, MUST_PARSE, NULL, "trailing bytes", 0, 0);
    /* A tensor ending exactly at the end of the file, and one byte short. */
    hb_begin(&b, 2, 0);
    hb_tensor_info(&b, "a", 1, 4, 0);
    hb_tensor_info(&b, "b", 1, 2, 32);
    hb_pad(&b);
    for (int k = 0; k < 40; k++) bb_u8(&b, (uint8_t)k);
    rc = rc || try_image(&m, b.p, b.n, MUST_PARSE, NULL, "exact end", 0, 0);
    rc = rc || try_image(&m, b.p, b.n - 1, MUST_REJECT, "tensor 1 'b': data [offset 0x20+8) runs past end",
                         "one byte short", 0, 0);
    /* A huge ne product that overflows u64 without any single ne being huge. */
    hb_begin(&b, 1, 0);
    bb_str(&b, "big");
    bb_u32(&b, 4);
    for (int d = 0; d < 4; d++) bb_u64(&b, 1ull << 20);
    bb_u32(&b, DS4_TYPE_F32);
    bb_u64(&b, 0);
    hb_pad(&b);
    rc = rc || try_image(&m, b.p, b.n, MUST_REJECT, "overflows", "ne product overflow", 0, 0);
    /* A name with control bytes: the message stays on one line. */
    hb_begin(&b, 1, 0);
    hb_tensor_info(&b, "x\ny\r'", 5, 4, 3);
    hb_pad(&b);
    for (int k = 0; k < 16; k++) bb_u8(&b, 0);
    rc = rc || try_image(&m, b.p, b.n, MUST_REJECT, "'x\\x0ay\\x0d\\x27'", "escaped name", 0, 0);
    /* Counts that the bytes would allow but the sanity limits do not. */
    uint64_t big_size = 24 + (uint64_t)(GGUF_MAX_KV + 1) * 33;
    uint8_t *big = calloc(1, (size_t)big_size);
    T_CHECK(big, "out of memory");
    memcpy(big, "GGUF\3\0\0\0", 8);
    p64(big, 16, (uint64_t)GGUF_MAX_KV + 1);
    rc = rc || try_image(&m, big, big_size, MUST_REJECT, "n_kv 1048577 exceeds", "n_kv limit", 0, 0);
    p64(big, 16, 0);
    p64(big, 8, (uint64_t)GGUF_MAX_TENSORS + 1);
    rc = rc || try_image(&m, big, big_size, MUST_REJECT, "n_tensors 1048577 exceeds", "n_tensors limit", 0, 0);
    free(big);
    /* gguf_array_check on caller-built bodies. */
    ds4_error err;
    b.n = 0;
    hb_nested(&b, 2);
    T_CHECK(gguf_array_check(GGUF_VT_ARRAY, 1, b.p, b.n, &err) == 0, "%s", err.msg);
    T_CHECK(gguf_array_check(GGUF_VT_ARRAY, 2, b.p, b.n, &err) == -1, "count too big");
    T_CHECK(gguf_array_check(GGUF_VT_ARRAY, 1, b.p, b.n - 1, &err) == -1, "body short");
    T_CHECK(gguf_array_check(GGUF_VT_COUNT, 0, NULL, 0, &err) == -1, "unknown type");
    report(&m, "handbuilt");
    T_CHECK(!rc, "a hand-built image was mishandled");
    return 0;
}

/* ------------------------------------------------------------------ */
/* The mmap path                                                       */
/* ------------------------------------------------------------------ */

static int test_mutate_mmap(void) {
    mctx m;
    if (setup(&m)) return 1;
    const layout *L = &m.L;
    test_rng r = {77};
    int fails = 0, opened = 0, refused = 0;
    for (int c = 0; c < 6; c++) {
        uint64_t size = m.size;
        memcpy(m.work, m.base, (size_t)m.size);
        switch (c) {
        case 0: break; /* the valid image */
        case 1: size = L->kv_start[4] + 5; break;
        case 2: p64(m.work, 16, UINT64_MAX); break;
        case 3: p64(m.work, L->t_offset_field[2], m.size); break;
        case 4: p32(m.work, L->t_offset_field[0] - 4, 3); break; /* tensor 0 type Q4_1 */
        case 5: /* random flips until an image that still parses */
            for (int it = 0; it < 1000; it++) {
                memcpy(m.work, m.base, (size_t)m.size);
                m.work[test_rng_u64(&r) % L->dir_end] ^= (uint8_t)(1 + test_rng_u64(&r) % 255);
                gguf_file g;
                if (gguf_parse(&g, m.work, m.size, NULL) == 0) {
                    gguf_close(&g);
                    if (memcmp(m.work, m.base, (size_t)m.size)) break;
                }
            }
            break;
        }
        char path[256];
        snprintf(path, sizeof(path), "/tmp/ds4cl-gguf-mutate-%d-%d.gguf", (int)getpid(), c);
        FILE *fp = fopen(path, "wb");
        if (!fp || fwrite(m.work, 1, (size_t)size, fp) != (size_t)size) {
            if (fp) fclose(fp);
            fprintf(stderr, "    cannot write %s\n", path);
            fails++;
            continue;
        }
        fclose(fp);
        gguf_file fo, fp2;
        ds4_error eo, ep;
        memset(&eo, 0, sizeof(eo));
        memset(&ep, 0, sizeof(ep));
        int ro = gguf_open(&fo, path, &eo);
        int rp = gguf_parse(&fp2, m.work, size, &ep);
        unlink(path);
        size_t lo = strlen(eo.msg), lp = strlen(ep.msg);
        if (ro != rp || (ro && (lo < lp || strcmp(eo.msg + lo - lp, ep.msg) || !strstr(eo.msg, path)))) {
            fprintf(stderr, "    case %d: gguf_open %d '%s' vs gguf_parse %d '%s'\n", c, ro, eo.msg, rp, ep.msg);
            fails++;
        }
        if (!ro) {
            opened++;
            if (fo.map_size != size || check_invariants(&fo, fo.base, fo.size)) fails++;
            if (!rp && memcmp(fo.base, m.work, (size_t)size)) fails++;
        } else {
            refused++;
        }
        gguf_close(&fo);
        if (!rp) gguf_close(&fp2);
    }
    teardown(&m);
    printf("    mmap: 6 files, %d opened, %d refused\n", opened, refused);
    T_CHECK(fails == 0 && opened == 2 && refused == 4, "%d mismatches, %d opened", fails, opened);
    return 0;
}

void tests_register_gguf_mutate(void) {
    test_add("gguf_mutate_targeted", test_mutate_targeted);
    test_add("gguf_mutate_truncate", test_mutate_truncate);
    test_add("gguf_mutate_random", test_mutate_random);
    test_add("gguf_mutate_handbuilt", test_mutate_handbuilt);
    test_add("gguf_mutate_mmap", test_mutate_mmap);
}
