/* gguf_write.c - the GGUF v3 writer (see gguf_write.h).
 *
 * Design: each key is serialised the moment it is added (value type id and
 * payload, exactly as it will sit in the file), each tensor keeps a copy of
 * its bytes (or none, for a streamed tensor).  Saving lays out the "head"
 * (header, keys, tensor infos, zero padding to the alignment) in one memory
 * buffer, then the tensor data, each tensor starting at an aligned offset and
 * followed by zero padding to the alignment (as the Python gguf writer does,
 * so the file ends aligned).
 *
 * Streaming fixes the same layout once (gguf_writer_layout keeps the head),
 * then appends the caller's bytes tensor by tensor through one FILE; the
 * writer tracks the current tensor and how much of it has arrived, so a
 * misordered or oversized write is an error, never a corrupt file.
 *
 * The add functions return nothing: the first misuse is remembered in the
 * writer and reported by the save functions, which also reject duplicate
 * keys and a `general.alignment` key that disagrees with the writer.  Before
 * returning success both save paths re-read what they produced with the
 * strict reader (gguf_parse on the memory image, gguf_open on path.tmp before
 * the rename), so a file this writer reports as saved always passes it; the
 * stream does the same when it closes.
 *
 * Numbers are written little-endian; the in-memory arrays given to
 * gguf_w_arr are taken as host (little-endian) values.
 */
#include "gguf_write.h"

#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "quant.h"

#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "gguf_write.c copies host arrays as little-endian GGUF data"
#endif

typedef struct wkv {
    char *key;
    uint8_t *val;      /* u32 value type, then the payload */
    uint64_t val_len;
} wkv;

typedef struct wtensor {
    char *name;
    uint32_t n_dims;
    uint64_t ne[GGUF_MAX_DIMS];
    uint32_t type;
    uint8_t *data;     /* NULL: streamed (gguf_w_tensor_info) */
    uint64_t nbytes;
    uint64_t offset; /* relative to the data section, set at save / layout */
} wtensor;

/* A growable byte buffer; `oom` sticks once an allocation fails. */
typedef struct wbuf {
    uint8_t *p;
    uint64_t len, cap;
    bool oom;
} wbuf;

struct gguf_writer {
    uint32_t alignment;
    wkv *kv;
    uint64_t n_kv, cap_kv;
    wtensor *t;
    uint64_t n_t, cap_t;
    bool failed;       /* a misuse happened: `first` says what */
    ds4_error first;
    /* layout and stream */
    bool laid_out;     /* head fixed: no more keys or tensors */
    wbuf head;
    uint64_t total;    /* file size */
    FILE *fp;          /* open stream, or NULL */
    char *path;
    uint64_t cur;      /* tensor being streamed (= complete tensors) */
    uint64_t cur_done; /* its bytes so far */
};

static void wb_put(wbuf *b, const void *src, uint64_t n) {
    if (b->oom || n == 0) return;
    if (n > UINT64_MAX - b->len) {
        b->oom = true;
        return;
    }
    if (b->len + n > b->cap) {
        uint64_t cap = b->cap ? b->cap : 256;
        while (cap < b->len + n) cap = cap > UINT64_MAX / 2 ? b->len + n : cap * 2;
        uint8_t *p = cap <= SIZE_MAX ? realloc(b->p, (size_t)cap) : NULL;
        if (!p) {
            b->oom = true;
            return;
        }
        b->p = p;
        b->cap = cap;
    }
    if (src) memcpy(b->p + b->len, src, (size_t)n);
    else memset(b->p + b->len, 0, (size_t)n);
    b->len += n;
}

static void wb_u32(wbuf *b, uint32_t v) {
    uint8_t x[4] = {(uint8_t)v, (uint8_t)(v >> 8), (uint8_t)(v >> 16), (uint8_t)(v >> 24)};
    wb_put(b, x, 4);
}

static void wb_u64(wbuf *b, uint64_t v) {
    wb_u32(b, (uint32_t)v);
    wb_u32(b, (uint32_t)(v >> 32));
}

static void wb_str(wbuf *b, const char *s, uint64_t len) {
    wb_u64(b, len);
    wb_put(b, s, len);
}

/* Remember the first misuse (later ones are dropped). */
static void misuse(gguf_writer *w, const char *fmt, ...) DS4_PRINTF(2, 3);
static void misuse(gguf_writer *w, const char *fmt, ...) {
    if (w->failed) return;
    w->failed = true;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(w->first.msg, sizeof(w->first.msg), fmt, ap);
    va_end(ap);
}

static const char *kname(const char *key) { return key ? key : "(null)"; }

static uint64_t align_up(uint64_t v, uint64_t a) { return (v + a - 1) / a * a; }

/* ------------------------------------------------------------------ */
/* Writer and metadata                                                 */
/* ------------------------------------------------------------------ */

gguf_writer *gguf_writer_new(uint32_t alignment) {
    gguf_writer *w = calloc(1, sizeof(*w));
    if (!w) return NULL;
    w->alignment = alignment ? alignment : GGUF_DEFAULT_ALIGNMENT;
    if (!(alignment == 0 || ((alignment & (alignment - 1)) == 0 && alignment <= GGUF_MAX_ALIGNMENT))) {
        misuse(w, "alignment %" PRIu32 " is not a power of two in 1..%u", alignment,
               GGUF_MAX_ALIGNMENT);
        w->alignment = GGUF_DEFAULT_ALIGNMENT;
    } else if (w->alignment != GGUF_DEFAULT_ALIGNMENT) {
        gguf_w_u32(w, "general.alignment", w->alignment);
    }
    return w;
}

void gguf_writer_free(gguf_writer *w) {
    if (!w) return;
    for (uint64_t i = 0; i < w->n_kv; i++) {
        free(w->kv[i].key);
        free(w->kv[i].val);
    }
    for (uint64_t i = 0; i < w->n_t; i++) {
        free(w->t[i].name);
        free(w->t[i].data);
    }
    if (w->fp) fclose(w->fp); /* an abandoned stream: the partial file stays */
    free(w->path);
    free(w->head.p);
    free(w->kv);
    free(w->t);
    free(w);
}

static bool grow(void **arr, uint64_t *cap, uint64_t n, size_t elem) {
    if (n < *cap) return true;
    uint64_t c = *cap ? *cap * 2 : 16;
    if (c > SIZE_MAX / elem) return false;
    void *p = realloc(*arr, (size_t)c * elem);
    if (!p) return false;
    *arr = p;
    *cap = c;
    return true;
}

/* Append a key whose serialised value (type id + payload) is in b. */
static void add_kv(gguf_writer *w, const char *key, wbuf *b) {
    if (w->failed) goto out;
    if (w->laid_out) {
        misuse(w, "key '%s' added after the layout was fixed", kname(key));
        goto out;
    }
    if (!key || !*key) {
        misuse(w, "empty key");
        goto out;
    }
    if (strlen(key) > GGUF_MAX_KEY_LEN) {
        misuse(w, "key '%.64s...' is longer than 65535 bytes", kname(key));
        goto out;
    }
    if (b->oom || !grow((void **)&w->kv, &w->cap_kv, w->n_kv, sizeof(*w->kv))) {
        misuse(w, "out of memory adding key '%s'", kname(key));
        goto out;
    }
    char *k = strdup(key);
    if (!k) {
        misuse(w, "out of memory adding key '%s'", kname(key));
        goto out;
    }
    w->kv[w->n_kv++] = (wkv){k, b->p, b->len};
    return;
out:
    free(b->p);
}

void gguf_w_value(gguf_writer *w, const char *key, const gguf_value *v) {
    wbuf b = {0};
    if (!w) return;
    if (!v) {
        misuse(w, "key '%s': NULL value", kname(key));
        return;
    }
    wb_u32(&b, v->type);
    switch (v->type) {
    case GGUF_VT_UINT8: case GGUF_VT_UINT16: case GGUF_VT_UINT32: case GGUF_VT_UINT64:
    case GGUF_VT_BOOL: {
        uint64_t lim = v->type == GGUF_VT_UINT8    ? UINT8_MAX
                       : v->type == GGUF_VT_BOOL   ? 1
                       : v->type == GGUF_VT_UINT16 ? UINT16_MAX
                       : v->type == GGUF_VT_UINT32 ? UINT32_MAX
                                                   : UINT64_MAX;
        if (v->u > lim) {
            misuse(w, "key '%s': value out of range of its type", kname(key));
            free(b.p);
            return;
        }
        uint64_t n = v->type == GGUF_VT_UINT8 || v->type == GGUF_VT_BOOL ? 1
                     : v->type == GGUF_VT_UINT16 ? 2 : v->type == GGUF_VT_UINT32 ? 4 : 8;
        uint8_t x[8];
        for (int i = 0; i < 8; i++) x[i] = (uint8_t)(v->u >> (8 * i));
        wb_put(&b, x, n);
        break;
    }
    case GGUF_VT_INT8: case GGUF_VT_INT16: case GGUF_VT_INT32: case GGUF_VT_INT64: {
        int64_t lo = v->type == GGUF_VT_INT8 ? INT8_MIN : v->type == GGUF_VT_INT16 ? INT16_MIN
                     : v->type == GGUF_VT_INT32 ? INT32_MIN : INT64_MIN;
        int64_t hi = v->type == GGUF_VT_INT8 ? INT8_MAX : v->type == GGUF_VT_INT16 ? INT16_MAX
                     : v->type == GGUF_VT_INT32 ? INT32_MAX : INT64_MAX;
        if (v->i < lo || v->i > hi) {
            misuse(w, "key '%s': value out of range of its type", kname(key));
            free(b.p);
            return;
        }
        uint64_t n = v->type == GGUF_VT_INT8 ? 1 : v->type == GGUF_VT_INT16 ? 2
                     : v->type == GGUF_VT_INT32 ? 4 : 8;
        uint64_t u = (uint64_t)v->i;
        uint8_t x[8];
        for (int i = 0; i < 8; i++) x[i] = (uint8_t)(u >> (8 * i));
        wb_put(&b, x, n);
        break;
    }
    case GGUF_VT_FLOAT32: {
        float f = (float)v->f;
        uint32_t bits;
        memcpy(&bits, &f, 4);
        wb_u32(&b, bits);
        break;
    }
    case GGUF_VT_FLOAT64: {
        uint64_t bits;
        memcpy(&bits, &v->f, 8);
        wb_u64(&b, bits);
        break;
    }
    case GGUF_VT_STRING:
        if (!v->s.ptr && v->s.len) {
            misuse(w, "key '%s': NULL string", kname(key));
            free(b.p);
            return;
        }
        wb_str(&b, v->s.ptr, v->s.len);
        break;
    case GGUF_VT_ARRAY: {
        ds4_error e;
        if (gguf_array_check(v->arr.elem_type, v->arr.count, v->arr.data, v->arr.nbytes, &e)) {
            misuse(w, "key '%s': %s", kname(key), e.msg);
            free(b.p);
            return;
        }
        wb_u32(&b, v->arr.elem_type);
        wb_u64(&b, v->arr.count);
        wb_put(&b, v->arr.data, v->arr.nbytes);
        break;
    }
    default:
        misuse(w, "key '%s': unknown value type", kname(key));
        free(b.p);
        return;
    }
    add_kv(w, key, &b);
}

void gguf_w_u32(gguf_writer *w, const char *key, uint32_t v) {
    gguf_value x = {.type = GGUF_VT_UINT32, .u = v};
    gguf_w_value(w, key, &x);
}

void gguf_w_i32(gguf_writer *w, const char *key, int32_t v) {
    gguf_value x = {.type = GGUF_VT_INT32, .i = v};
    gguf_w_value(w, key, &x);
}

void gguf_w_u64(gguf_writer *w, const char *key, uint64_t v) {
    gguf_value x = {.type = GGUF_VT_UINT64, .u = v};
    gguf_w_value(w, key, &x);
}

void gguf_w_f32(gguf_writer *w, const char *key, float v) {
    gguf_value x = {.type = GGUF_VT_FLOAT32, .f = v};
    gguf_w_value(w, key, &x);
}

void gguf_w_f64(gguf_writer *w, const char *key, double v) {
    gguf_value x = {.type = GGUF_VT_FLOAT64, .f = v};
    gguf_w_value(w, key, &x);
}

void gguf_w_bool(gguf_writer *w, const char *key, bool v) {
    gguf_value x = {.type = GGUF_VT_BOOL, .u = v ? 1 : 0};
    gguf_w_value(w, key, &x);
}

void gguf_w_str(gguf_writer *w, const char *key, const char *v) {
    if (!w) return;
    if (!v) {
        misuse(w, "key '%s': NULL string", kname(key));
        return;
    }
    gguf_value x = {.type = GGUF_VT_STRING, .s = {v, strlen(v)}};
    gguf_w_value(w, key, &x);
}

/* Bytes of one fixed-size element type, 0 for others. */
static uint64_t elem_size(uint32_t t) {
    switch (t) {
    case GGUF_VT_UINT8: case GGUF_VT_INT8: case GGUF_VT_BOOL: return 1;
    case GGUF_VT_UINT16: case GGUF_VT_INT16: return 2;
    case GGUF_VT_UINT32: case GGUF_VT_INT32: case GGUF_VT_FLOAT32: return 4;
    case GGUF_VT_UINT64: case GGUF_VT_INT64: case GGUF_VT_FLOAT64: return 8;
    default: return 0;
    }
}

void gguf_w_arr(gguf_writer *w, const char *key, uint32_t elem_type, const void *data,
                uint64_t count) {
    if (!w) return;
    uint64_t esz = elem_size(elem_type);
    if (!esz) {
        misuse(w, "key '%s': gguf_w_arr takes fixed-size element types only", kname(key));
        return;
    }
    if (count > UINT64_MAX / esz || (count && !data)) {
        misuse(w, "key '%s': bad array data", kname(key));
        return;
    }
    gguf_value x = {.type = GGUF_VT_ARRAY};
    x.arr.elem_type = elem_type;
    x.arr.count = count;
    x.arr.data = data;
    x.arr.nbytes = count * esz;
    gguf_w_value(w, key, &x);
}

void gguf_w_arr_str(gguf_writer *w, const char *key, const char *const *strs, uint64_t count) {
    if (!w) return;
    wbuf b = {0};
    wb_u32(&b, GGUF_VT_ARRAY);
    wb_u32(&b, GGUF_VT_STRING);
    wb_u64(&b, count);
    for (uint64_t i = 0; i < count; i++) {
        if (!strs || !strs[i]) {
            misuse(w, "key '%s': NULL string in array", kname(key));
            free(b.p);
            return;
        }
        wb_str(&b, strs[i], strlen(strs[i]));
    }
    add_kv(w, key, &b);
}

/* ------------------------------------------------------------------ */
/* Tensors                                                             */
/* ------------------------------------------------------------------ */

/* Checks shared by gguf_w_tensor and gguf_w_tensor_info; *nbytes gets the
 * tensor's size. */
static int check_tensor(gguf_writer *w, const char *name, uint32_t n_dims, const uint64_t *ne,
                        uint32_t type, uint64_t *nbytes, ds4_error *err) {
    if (!name || !*name || strlen(name) > GGUF_MAX_NAME_LEN)
        return ds4_fail(err, "tensor name '%s' is empty or longer than %d bytes",
                        name ? name : "(null)", GGUF_MAX_NAME_LEN);
    if (w->laid_out) return ds4_fail(err, "tensor '%s' added after the layout was fixed", name);
    if (n_dims < 1 || n_dims > GGUF_MAX_DIMS || !ne)
        return ds4_fail(err, "tensor '%s': n_dims %" PRIu32 " is not in 1..%d", name, n_dims,
                        GGUF_MAX_DIMS);
    const ds4_type_traits *tr = ds4_type_get(type);
    if (!tr) return ds4_fail(err, "tensor '%s': unknown type %" PRIu32, name, type);
    uint64_t n_el = 1;
    for (uint32_t d = 0; d < n_dims; d++) {
        if (ne[d] == 0 || n_el > (uint64_t)INT64_MAX / ne[d])
            return ds4_fail(err, "tensor '%s': bad ne[%" PRIu32 "] = %" PRIu64, name, d, ne[d]);
        n_el *= ne[d];
    }
    *nbytes = ds4_row_bytes(type, ne[0]);
    if (!*nbytes)
        return ds4_fail(err, "tensor '%s': ne[0] = %" PRIu64 " is not a multiple of the %s block size %" PRIu32,
                        name, ne[0], tr->name, tr->block_size);
    for (uint32_t d = 1; d < n_dims; d++) {
        if (*nbytes > UINT64_MAX / ne[d] || *nbytes * ne[d] > SIZE_MAX)
            return ds4_fail(err, "tensor '%s': byte size overflows", name);
        *nbytes *= ne[d];
    }
    for (uint64_t i = 0; i < w->n_t; i++)
        if (strcmp(w->t[i].name, name) == 0)
            return ds4_fail(err, "tensor '%s' added twice", name);
    if (!grow((void **)&w->t, &w->cap_t, w->n_t, sizeof(*w->t)))
        return ds4_fail(err, "tensor '%s': out of memory", name);
    return 0;
}

static int add_tensor(gguf_writer *w, const char *name, uint32_t n_dims, const uint64_t *ne,
                      uint32_t type, const void *data, bool streamed, ds4_error *err) {
    uint64_t nbytes = 0;
    if (check_tensor(w, name, n_dims, ne, type, &nbytes, err)) return -1;
    if (!streamed && !data) return ds4_fail(err, "tensor '%s': NULL data", name);
    wtensor t = {0};
    t.name = strdup(name);
    t.data = streamed ? NULL : malloc((size_t)nbytes);
    if (!t.name || (!streamed && !t.data)) {
        free(t.name);
        free(t.data);
        return ds4_fail(err, "tensor '%s': out of memory for %" PRIu64 " bytes", name, nbytes);
    }
    if (!streamed) memcpy(t.data, data, (size_t)nbytes);
    t.n_dims = n_dims;
    for (uint32_t d = 0; d < GGUF_MAX_DIMS; d++) t.ne[d] = d < n_dims ? ne[d] : 1;
    t.type = type;
    t.nbytes = nbytes;
    w->t[w->n_t++] = t;
    return 0;
}

int gguf_w_tensor(gguf_writer *w, const char *name, uint32_t n_dims, const uint64_t *ne,
                  uint32_t type, const void *data, ds4_error *err) {
    return add_tensor(w, name, n_dims, ne, type, data, false, err);
}

int gguf_w_tensor_info(gguf_writer *w, const char *name, uint32_t n_dims, const uint64_t *ne,
                       uint32_t type, ds4_error *err) {
    return add_tensor(w, name, n_dims, ne, type, NULL, true, err);
}

/* ------------------------------------------------------------------ */
/* Serialisation                                                       */
/* ------------------------------------------------------------------ */

static int cmp_key(const void *a, const void *b) {
    return strcmp((*(const wkv *const *)a)->key, (*(const wkv *const *)b)->key);
}

/* Everything that must hold before bytes are laid out. */
static int check_writer(gguf_writer *w, ds4_error *err) {
    if (w->failed) return ds4_fail(err, "%s", w->first.msg);
    if (w->n_kv > 1) {
        const wkv **s = malloc((size_t)w->n_kv * sizeof(*s));
        if (!s) return ds4_fail(err, "out of memory");
        for (uint64_t i = 0; i < w->n_kv; i++) s[i] = &w->kv[i];
        qsort(s, (size_t)w->n_kv, sizeof(*s), cmp_key);
        for (uint64_t i = 1; i < w->n_kv; i++) {
            if (strcmp(s[i]->key, s[i - 1]->key)) continue;
            int rc = ds4_fail(err, "duplicate key '%s'", s[i]->key);
            free(s);
            return rc;
        }
        free(s);
    }
    for (uint64_t i = 0; i < w->n_kv; i++) {
        const wkv *kv = &w->kv[i];
        if (strcmp(kv->key, "general.alignment")) continue;
        uint32_t type = (uint32_t)kv->val[0] | (uint32_t)kv->val[1] << 8 |
                        (uint32_t)kv->val[2] << 16 | (uint32_t)kv->val[3] << 24;
        uint32_t v = 0;
        if (type == GGUF_VT_UINT32)
            v = (uint32_t)kv->val[4] | (uint32_t)kv->val[5] << 8 | (uint32_t)kv->val[6] << 16 |
                (uint32_t)kv->val[7] << 24;
        if (type != GGUF_VT_UINT32 || v != w->alignment)
            return ds4_fail(err, "key 'general.alignment' disagrees with the writer's alignment %" PRIu32,
                            w->alignment);
    }
    return 0;
}

/* Lay out the head (header, keys, tensor infos, padding) in *b; tensor
 * offsets are assigned; *total gets the size of the whole file. */
static int build_head(gguf_writer *w, wbuf *b, uint64_t *total, ds4_error *err) {
    if (check_writer(w, err)) return -1;
    uint64_t a = w->alignment, off = 0;
    for (uint64_t i = 0; i < w->n_t; i++) {
        w->t[i].offset = off;
        uint64_t padded = align_up(w->t[i].nbytes, a);
        if (padded < w->t[i].nbytes || off > UINT64_MAX - padded)
            return ds4_fail(err, "tensor data exceeds 2^64 bytes");
        off += padded;
    }
    wb_put(b, "GGUF", 4);
    wb_u32(b, 3);
    wb_u64(b, w->n_t);
    wb_u64(b, w->n_kv);
    for (uint64_t i = 0; i < w->n_kv; i++) {
        wb_str(b, w->kv[i].key, strlen(w->kv[i].key));
        wb_put(b, w->kv[i].val, w->kv[i].val_len);
    }
    for (uint64_t i = 0; i < w->n_t; i++) {
        const wtensor *t = &w->t[i];
        wb_str(b, t->name, strlen(t->name));
        wb_u32(b, t->n_dims);
        for (uint32_t d = 0; d < t->n_dims; d++) wb_u64(b, t->ne[d]);
        wb_u32(b, t->type);
        wb_u64(b, t->offset);
    }
    wb_put(b, NULL, align_up(b->len, a) - b->len);
    if (b->oom) return ds4_fail(err, "out of memory laying out the GGUF directory");
    if (off > UINT64_MAX - b->len) return ds4_fail(err, "file exceeds 2^64 bytes");
    *total = b->len + off;
    return 0;
}

/* The whole-file paths need every tensor's bytes in memory. */
static int check_all_data(const gguf_writer *w, ds4_error *err) {
    for (uint64_t i = 0; i < w->n_t; i++)
        if (!w->t[i].data)
            return ds4_fail(err, "tensor '%s' has no data (added with gguf_w_tensor_info: "
                            "write it with the stream functions)", w->t[i].name);
    return 0;
}

int gguf_writer_to_memory(gguf_writer *w, uint8_t **out, uint64_t *size, ds4_error *err) {
    *out = NULL;
    *size = 0;
    wbuf b = {0};
    uint64_t total;
    if (check_all_data(w, err)) return -1;
    if (build_head(w, &b, &total, err)) {
        free(b.p);
        return -1;
    }
    uint8_t *img = total <= SIZE_MAX ? malloc((size_t)total) : NULL;
    if (!img) {
        free(b.p);
        return ds4_fail(err, "out of memory for a %" PRIu64 "-byte GGUF image", total);
    }
    memcpy(img, b.p, (size_t)b.len);
    uint64_t pos = b.len;
    free(b.p);
    for (uint64_t i = 0; i < w->n_t; i++) {
        const wtensor *t = &w->t[i];
        uint64_t padded = align_up(t->nbytes, w->alignment);
        memcpy(img + pos, t->data, (size_t)t->nbytes);
        memset(img + pos + t->nbytes, 0, (size_t)(padded - t->nbytes));
        pos += padded;
    }
    gguf_file f;
    if (gguf_parse(&f, img, total, err)) {
        free(img);
        return ds4_fail_wrap(err, "writer produced an unreadable image (bug)");
    }
    gguf_close(&f);
    *out = img;
    *size = total;
    return 0;
}

static int write_all(FILE *fp, const void *p, uint64_t n, const char *path, ds4_error *err) {
    if (n && fwrite(p, 1, (size_t)n, fp) != (size_t)n)
        return ds4_fail(err, "%s: write failed: %s", path, strerror(errno));
    return 0;
}

static int write_file(gguf_writer *w, const wbuf *head, const char *tmp, ds4_error *err) {
    static const uint8_t zeros[GGUF_MAX_ALIGNMENT > 4096 ? 4096 : GGUF_MAX_ALIGNMENT] = {0};
    FILE *fp = fopen(tmp, "wb");
    if (!fp) return ds4_fail(err, "%s: cannot create: %s", tmp, strerror(errno));
    int rc = write_all(fp, head->p, head->len, tmp, err);
    for (uint64_t i = 0; i < w->n_t && !rc; i++) {
        const wtensor *t = &w->t[i];
        rc = write_all(fp, t->data, t->nbytes, tmp, err);
        uint64_t pad = align_up(t->nbytes, w->alignment) - t->nbytes;
        while (!rc && pad) {
            uint64_t n = pad < sizeof(zeros) ? pad : sizeof(zeros);
            rc = write_all(fp, zeros, n, tmp, err);
            pad -= n;
        }
    }
    if (!rc && fflush(fp) != 0) rc = ds4_fail(err, "%s: write failed: %s", tmp, strerror(errno));
    if (!rc && fsync(fileno(fp)) != 0) rc = ds4_fail(err, "%s: fsync failed: %s", tmp, strerror(errno));
    if (fclose(fp) != 0 && !rc) rc = ds4_fail(err, "%s: close failed: %s", tmp, strerror(errno));
    return rc;
}

int gguf_writer_save(gguf_writer *w, const char *path, ds4_error *err) {
    wbuf head = {0};
    uint64_t total;
    if (check_all_data(w, err)) return -1;
    if (build_head(w, &head, &total, err)) {
        free(head.p);
        return -1;
    }
    size_t n = strlen(path) + 5;
    char *tmp = malloc(n);
    if (!tmp) {
        free(head.p);
        return ds4_fail(err, "out of memory");
    }
    snprintf(tmp, n, "%s.tmp", path);
    int rc = write_file(w, &head, tmp, err);
    free(head.p);
    if (!rc) {
        gguf_file f;
        if (gguf_open(&f, tmp, err)) rc = ds4_fail_wrap(err, "writer produced an unreadable file (bug)");
        else if (f.size != total) rc = ds4_fail(err, "%s: size %" PRIu64 ", expected %" PRIu64, tmp, f.size, total);
        gguf_close(&f);
    }
    if (!rc && rename(tmp, path) != 0)
        rc = ds4_fail(err, "%s: cannot rename to %s: %s", tmp, path, strerror(errno));
    if (rc) unlink(tmp);
    free(tmp);
    return rc;
}

/* ------------------------------------------------------------------ */
/* Layout and streaming                                                */
/* ------------------------------------------------------------------ */

int gguf_writer_layout(gguf_writer *w, ds4_error *err) {
    if (w->laid_out) return 0;
    wbuf b = {0};
    if (build_head(w, &b, &w->total, err)) {
        free(b.p);
        return -1;
    }
    w->head = b;
    w->laid_out = true;
    return 0;
}

const uint8_t *gguf_writer_head(const gguf_writer *w, uint64_t *len) {
    *len = w->laid_out ? w->head.len : 0;
    return w->laid_out ? w->head.p : NULL;
}

uint64_t gguf_writer_n_tensors(const gguf_writer *w) { return w->n_t; }

int gguf_writer_tensor_span(const gguf_writer *w, uint64_t i, uint64_t *offset,
                            uint64_t *nbytes, uint64_t *end) {
    if (!w->laid_out || i >= w->n_t) return -1;
    const wtensor *t = &w->t[i];
    *offset = w->head.len + t->offset;
    *nbytes = t->nbytes;
    *end = *offset + align_up(t->nbytes, w->alignment);
    return 0;
}

uint64_t gguf_writer_stream_done(const gguf_writer *w) { return w->cur; }

/* Cut an existing file after tensor skip-1 and position the stream there;
 * its head must be this writer's. */
static int stream_resume(gguf_writer *w, uint64_t skip, ds4_error *err) {
    const char *path = w->path;
    uint64_t off = 0, nb = 0, end = 0;
    gguf_writer_tensor_span(w, skip - 1, &off, &nb, &end);
    uint8_t *buf = malloc(w->head.len ? (size_t)w->head.len : 1);
    if (!buf) return ds4_fail(err, "out of memory");
    bool same = fread(buf, 1, (size_t)w->head.len, w->fp) == (size_t)w->head.len &&
                memcmp(buf, w->head.p, (size_t)w->head.len) == 0;
    free(buf);
    if (!same)
        return ds4_fail(err, "%s: cannot resume: its head differs from this file's", path);
    if (fseeko(w->fp, 0, SEEK_END) != 0)
        return ds4_fail(err, "%s: seek failed: %s", path, strerror(errno));
    off_t size = ftello(w->fp);
    if (size < 0 || (uint64_t)size < end)
        return ds4_fail(err, "%s: cannot resume after tensor %" PRIu64 ": the file has %lld of "
                        "its %" PRIu64 " bytes", path, skip - 1, (long long)size, end);
    if (fflush(w->fp) != 0 || ftruncate(fileno(w->fp), (off_t)end) != 0 ||
        fseeko(w->fp, (off_t)end, SEEK_SET) != 0)
        return ds4_fail(err, "%s: cannot cut at byte %" PRIu64 ": %s", path, end,
                        strerror(errno));
    return 0;
}

int gguf_writer_stream_open(gguf_writer *w, const char *path, uint64_t skip, ds4_error *err) {
    if (w->fp) return ds4_fail(err, "%s: a stream is already open", path);
    if (gguf_writer_layout(w, err)) return -1;
    for (uint64_t i = 0; i < w->n_t; i++)
        if (w->t[i].data)
            return ds4_fail(err, "tensor '%s' holds data: a stream takes every tensor's bytes "
                            "from gguf_writer_stream_write", w->t[i].name);
    if (skip > w->n_t)
        return ds4_fail(err, "%s: cannot skip %" PRIu64 " of %" PRIu64 " tensors", path, skip,
                        w->n_t);
    free(w->path);
    if (!(w->path = strdup(path))) return ds4_fail(err, "out of memory");
    w->fp = fopen(path, skip ? "r+b" : "wb");
    if (!w->fp) return ds4_fail(err, "%s: cannot %s: %s", path, skip ? "open" : "create",
                                strerror(errno));
    int rc = skip ? stream_resume(w, skip, err)
                  : write_all(w->fp, w->head.p, w->head.len, path, err);
    if (rc) {
        fclose(w->fp);
        w->fp = NULL;
        return -1;
    }
    w->cur = skip;
    w->cur_done = 0;
    return 0;
}

int gguf_writer_stream_write(gguf_writer *w, const void *data, uint64_t n, ds4_error *err) {
    static const uint8_t zeros[256] = {0};
    if (!w->fp) return ds4_fail(err, "no open stream");
    if (w->cur >= w->n_t)
        return ds4_fail(err, "%s: %" PRIu64 " bytes written past the last tensor", w->path, n);
    const wtensor *t = &w->t[w->cur];
    if (n > t->nbytes - w->cur_done)
        return ds4_fail(err, "%s: tensor '%s': %" PRIu64 " bytes written, %" PRIu64 " left",
                        w->path, t->name, n, t->nbytes - w->cur_done);
    if (n && !data) return ds4_fail(err, "tensor '%s': NULL data", t->name);
    if (write_all(w->fp, data, n, w->path, err)) return -1;
    w->cur_done += n;
    if (w->cur_done < t->nbytes) return 0;
    uint64_t pad = align_up(t->nbytes, w->alignment) - t->nbytes;
    while (pad) {
        uint64_t k = pad < sizeof(zeros) ? pad : sizeof(zeros);
        if (write_all(w->fp, zeros, k, w->path, err)) return -1;
        pad -= k;
    }
    w->cur++;
    w->cur_done = 0;
    return 0;
}

int gguf_writer_stream_flush(gguf_writer *w, ds4_error *err) {
    if (!w->fp) return ds4_fail(err, "no open stream");
    if (fflush(w->fp) != 0) return ds4_fail(err, "%s: write failed: %s", w->path, strerror(errno));
    return 0;
}

int gguf_writer_stream_close(gguf_writer *w, ds4_error *err) {
    if (!w->fp) return ds4_fail(err, "no open stream");
    if (w->cur != w->n_t)
        return ds4_fail(err, "%s: stream closed after %" PRIu64 " of %" PRIu64 " tensors",
                        w->path, w->cur, w->n_t);
    int rc = 0;
    if (fflush(w->fp) != 0) rc = ds4_fail(err, "%s: write failed: %s", w->path, strerror(errno));
    if (!rc && fsync(fileno(w->fp)) != 0)
        rc = ds4_fail(err, "%s: fsync failed: %s", w->path, strerror(errno));
    if (fclose(w->fp) != 0 && !rc)
        rc = ds4_fail(err, "%s: close failed: %s", w->path, strerror(errno));
    w->fp = NULL;
    if (rc) return rc;
    gguf_file f;
    if (gguf_open(&f, w->path, err))
        return ds4_fail_wrap(err, "writer produced an unreadable file (bug)");
    if (f.size != w->total)
        rc = ds4_fail(err, "%s: size %" PRIu64 ", expected %" PRIu64, w->path, f.size, w->total);
    gguf_close(&f);
    return rc;
}
