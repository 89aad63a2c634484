/* gguf.c - the strict GGUF v3 reader (see gguf.h).
 *
 * Design: a cursor walks the image once, front to back.  Every read goes
 * through need(), which compares the bytes wanted against the bytes that
 * remain, so nothing past the end is ever touched.  Counts are bounded
 * before they are used: n_kv and n_tensors by GGUF_MAX_KV/GGUF_MAX_TENSORS
 * and by remaining / minimal entry size (so the two directory allocations
 * are at most a few times the file size and never above ~120 MiB),
 * array counts by remaining / minimal element size, string lengths by
 * remaining, nesting by GGUF_MAX_NESTING, dims by GGUF_MAX_DIMS, dimension
 * products by explicit u64 overflow checks.  Arrays are validated in full at
 * parse time (strings and nested arrays included), so gguf_array_get can
 * walk them later without checks.
 *
 * Duplicate keys, duplicate tensor names and overlapping tensors are found by
 * sorting (O(n log n)), so a hostile directory cannot make the parse
 * quadratic.  Error messages are one line: names taken from the file are
 * escaped (non-printable bytes as \xNN) and shortened before printing.
 *
 * Numbers in the file are little-endian and decoded byte by byte (no
 * unaligned loads).  The parser never writes to the image.
 */
#include "gguf.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "quant.h"

#define GGUF_MAGIC "GGUF"
#define GGUF_HEADER_BYTES 24u  /* magic, version, n_tensors, n_kv */
/* Smallest possible directory entries: a kv with a 1-byte key and a uint8
 * value; a tensor with a 1-byte name and one dim. */
#define GGUF_MIN_KV_BYTES (8u + 1u + 4u + 1u)
#define GGUF_MIN_TENSOR_BYTES (8u + 1u + 4u + 8u + 4u + 8u)
#define GGUF_MIN_ARRAY_BYTES (4u + 8u) /* elem type + count */
#define GGUF_SHOW_MAX 48 /* chars of a file-supplied name shown in messages */

typedef struct cursor {
    const uint8_t *base;
    uint64_t size;
    uint64_t pos;
} cursor;

/* ------------------------------------------------------------------ */
/* Small helpers                                                       */
/* ------------------------------------------------------------------ */

static uint32_t le32(const uint8_t *p) {
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static uint64_t le64(const uint8_t *p) {
    return (uint64_t)le32(p) | (uint64_t)le32(p + 4) << 32;
}

static uint64_t remaining(const cursor *c) { return c->size - c->pos; }

/* Fail unless n bytes remain at the cursor. */
static int need(const cursor *c, uint64_t n, const char *what, ds4_error *err) {
    if (n <= remaining(c)) return 0;
    return ds4_fail(err,
                    "%s at offset 0x%" PRIx64 " needs %" PRIu64 " bytes, only %" PRIu64
                    " remain (file size %" PRIu64 ")",
                    what, c->pos, n, remaining(c), c->size);
}

static int rd_u32(cursor *c, uint32_t *v, const char *what, ds4_error *err) {
    if (need(c, 4, what, err)) return -1;
    *v = le32(c->base + c->pos);
    c->pos += 4;
    return 0;
}

static int rd_u64(cursor *c, uint64_t *v, const char *what, ds4_error *err) {
    if (need(c, 8, what, err)) return -1;
    *v = le64(c->base + c->pos);
    c->pos += 8;
    return 0;
}

/* A u64-length-prefixed string whose bytes lie inside the image. */
static int rd_str(cursor *c, gguf_str *s, const char *what, ds4_error *err) {
    uint64_t at = c->pos;
    uint64_t len;
    if (rd_u64(c, &len, what, err)) return -1;
    if (len > remaining(c))
        return ds4_fail(err,
                        "%s at offset 0x%" PRIx64 ": length %" PRIu64
                        " runs past end of file (%" PRIu64 " bytes remain, file size %" PRIu64 ")",
                        what, at, len, remaining(c), c->size);
    s->ptr = (const char *)c->base + c->pos;
    s->len = len;
    c->pos += len;
    return 0;
}

/* Escape a file-supplied name for a one-line message. */
static const char *show(gguf_str s, char *buf, size_t cap) {
    static const char hex[] = "0123456789abcdef";
    size_t o = 0;
    uint64_t i;
    for (i = 0; i < s.len && o + 5 < cap && o < GGUF_SHOW_MAX; i++) {
        unsigned char ch = (unsigned char)s.ptr[i];
        if (ch >= 0x20 && ch < 0x7f && ch != '\\' && ch != '\'') {
            buf[o++] = (char)ch;
        } else {
            buf[o++] = '\\';
            buf[o++] = 'x';
            buf[o++] = hex[ch >> 4];
            buf[o++] = hex[ch & 15];
        }
    }
    if (i < s.len && o + 4 < cap) {
        memcpy(buf + o, "...", 3);
        o += 3;
    }
    buf[o] = '\0';
    return buf;
}

static bool is_pow2(uint64_t v) { return v && (v & (v - 1)) == 0; }

/* Bytes of one element of a fixed-size value type, 0 for string/array. */
static uint64_t fixed_size(uint32_t type) {
    switch (type) {
    case GGUF_VT_UINT8: case GGUF_VT_INT8: case GGUF_VT_BOOL: return 1;
    case GGUF_VT_UINT16: case GGUF_VT_INT16: return 2;
    case GGUF_VT_UINT32: case GGUF_VT_INT32: case GGUF_VT_FLOAT32: return 4;
    case GGUF_VT_UINT64: case GGUF_VT_INT64: case GGUF_VT_FLOAT64: return 8;
    default: return 0;
    }
}

const char *gguf_value_type_name(uint32_t type) {
    static const char *const names[GGUF_VT_COUNT] = {
        "uint8", "int8",    "uint16", "int16", "uint32", "int32",  "float32",
        "bool",  "string",  "array",  "uint64", "int64", "float64",
    };
    return type < GGUF_VT_COUNT ? names[type] : "unknown";
}

/* Decode a fixed-size scalar at p (validated type) into v. */
static void decode_scalar(uint32_t type, const uint8_t *p, gguf_value *v) {
    memset(v, 0, sizeof(*v));
    v->type = type;
    switch (type) {
    case GGUF_VT_UINT8: case GGUF_VT_BOOL: v->u = p[0]; break;
    case GGUF_VT_INT8: v->i = (int8_t)p[0]; break;
    case GGUF_VT_UINT16: v->u = (uint16_t)(p[0] | p[1] << 8); break;
    case GGUF_VT_INT16: v->i = (int16_t)(uint16_t)(p[0] | p[1] << 8); break;
    case GGUF_VT_UINT32: v->u = le32(p); break;
    case GGUF_VT_INT32: v->i = (int32_t)le32(p); break;
    case GGUF_VT_UINT64: v->u = le64(p); break;
    case GGUF_VT_INT64: v->i = (int64_t)le64(p); break;
    case GGUF_VT_FLOAT32: {
        uint32_t bits = le32(p);
        float x;
        memcpy(&x, &bits, sizeof(x));
        v->f = x;
        break;
    }
    case GGUF_VT_FLOAT64: {
        uint64_t bits = le64(p);
        memcpy(&v->f, &bits, sizeof(v->f));
        break;
    }
    default: break;
    }
}

/* ------------------------------------------------------------------ */
/* Values                                                              */
/* ------------------------------------------------------------------ */

static int parse_array_body(cursor *c, uint32_t elem_type, uint64_t count, int depth,
                            ds4_error *err);

/* The header of an array (elem type, count) followed by its body. */
static int parse_array(cursor *c, int depth, gguf_value *v, ds4_error *err) {
    uint64_t at = c->pos;
    uint32_t elem_type;
    uint64_t count;
    if (rd_u32(c, &elem_type, "array element type", err)) return -1;
    if (rd_u64(c, &count, "array count", err)) return -1;
    if (elem_type >= GGUF_VT_COUNT)
        return ds4_fail(err, "array at offset 0x%" PRIx64 ": unknown element type %" PRIu32, at,
                        elem_type);
    if (elem_type == GGUF_VT_ARRAY && depth + 1 >= GGUF_MAX_NESTING)
        return ds4_fail(err, "array at offset 0x%" PRIx64 ": arrays nested deeper than %d levels",
                        at, GGUF_MAX_NESTING);
    uint64_t start = c->pos;
    if (parse_array_body(c, elem_type, count, depth, err)) return -1;
    memset(v, 0, sizeof(*v));
    v->type = GGUF_VT_ARRAY;
    v->arr.elem_type = elem_type;
    v->arr.count = count;
    v->arr.data = c->base + start;
    v->arr.nbytes = c->pos - start;
    return 0;
}

static int parse_array_body(cursor *c, uint32_t elem_type, uint64_t count, int depth,
                            ds4_error *err) {
    uint64_t esz = fixed_size(elem_type);
    uint64_t min = esz ? esz : elem_type == GGUF_VT_STRING ? 8 : GGUF_MIN_ARRAY_BYTES;
    if (count > remaining(c) / min)
        return ds4_fail(err,
                        "array of %" PRIu64 " %s at offset 0x%" PRIx64
                        " cannot fit in the %" PRIu64 " bytes that remain (file size %" PRIu64 ")",
                        count, gguf_value_type_name(elem_type), c->pos, remaining(c), c->size);
    if (esz) {
        if (elem_type == GGUF_VT_BOOL) {
            for (uint64_t i = 0; i < count; i++) {
                uint8_t b = c->base[c->pos + i];
                if (b > 1)
                    return ds4_fail(err, "bool element %" PRIu64 " at offset 0x%" PRIx64
                                    " is %u, not 0 or 1", i, c->pos + i, b);
            }
        }
        c->pos += count * esz;
        return 0;
    }
    for (uint64_t i = 0; i < count; i++) {
        gguf_value sub;
        gguf_str s;
        int rc = elem_type == GGUF_VT_STRING ? rd_str(c, &s, "string", err)
                                             : parse_array(c, depth + 1, &sub, err);
        if (rc) return ds4_fail_wrap(err, "element %" PRIu64, i);
    }
    return 0;
}

/* One value of `type` at the cursor (the type id itself already read). */
static int parse_value(cursor *c, uint32_t type, gguf_value *v, ds4_error *err) {
    if (type >= GGUF_VT_COUNT)
        return ds4_fail(err, "unknown value type %" PRIu32, type);
    if (type == GGUF_VT_STRING) {
        memset(v, 0, sizeof(*v));
        v->type = type;
        return rd_str(c, &v->s, "string value", err);
    }
    if (type == GGUF_VT_ARRAY) return parse_array(c, 0, v, err);
    uint64_t n = fixed_size(type);
    if (need(c, n, gguf_value_type_name(type), err)) return -1;
    if (type == GGUF_VT_BOOL && c->base[c->pos] > 1)
        return ds4_fail(err, "bool at offset 0x%" PRIx64 " is %u, not 0 or 1", c->pos,
                        c->base[c->pos]);
    decode_scalar(type, c->base + c->pos, v);
    c->pos += n;
    return 0;
}

int gguf_array_check(uint32_t elem_type, uint64_t count, const void *data, uint64_t nbytes,
                     ds4_error *err) {
    if (!data && nbytes) return ds4_fail(err, "array body is NULL");
    if (elem_type >= GGUF_VT_COUNT)
        return ds4_fail(err, "unknown array element type %" PRIu32, elem_type);
    cursor c = {data, nbytes, 0};
    if (parse_array_body(&c, elem_type, count, 0, err)) return -1;
    if (c.pos != nbytes)
        return ds4_fail(err, "array body is %" PRIu64 " bytes, its %" PRIu64 " elements use %" PRIu64,
                        nbytes, count, c.pos);
    return 0;
}

/* Identifier rules shared by keys and tensor names. */
static int check_ident(gguf_str s, uint64_t max, const char *what, ds4_error *err) {
    if (s.len == 0) return ds4_fail(err, "empty %s", what);
    if (s.len > max)
        return ds4_fail(err, "%s is %" PRIu64 " bytes (at most %" PRIu64 ")", what, s.len, max);
    if (memchr(s.ptr, '\0', (size_t)s.len)) return ds4_fail(err, "%s contains a NUL byte", what);
    return 0;
}

/* ------------------------------------------------------------------ */
/* Directory sections                                                  */
/* ------------------------------------------------------------------ */

static int parse_header(gguf_file *f, cursor *c, ds4_error *err) {
    if (c->size < GGUF_HEADER_BYTES)
        return ds4_fail(err, "file is %" PRIu64 " bytes, too small for a GGUF header (%u)",
                        c->size, GGUF_HEADER_BYTES);
    if (memcmp(c->base, GGUF_MAGIC, 4) != 0)
        return ds4_fail(err, "bad magic %02x %02x %02x %02x (expected \"GGUF\")", c->base[0],
                        c->base[1], c->base[2], c->base[3]);
    c->pos = 4;
    uint32_t version = le32(c->base + 4);
    c->pos = 8;
    if (version == 1 || version == 2)
        return ds4_fail(err, "GGUF version %" PRIu32 " is not supported (only version 3)", version);
    if (version == 0x03000000u)
        return ds4_fail(err, "big-endian GGUF is not supported (version field 0x%08" PRIx32 ")",
                        version);
    if (version != 3)
        return ds4_fail(err, "unknown GGUF version %" PRIu32 " (only version 3)", version);
    f->version = version;
    f->n_tensors = le64(c->base + 8);
    f->n_kv = le64(c->base + 16);
    c->pos = GGUF_HEADER_BYTES;
    uint64_t rem = remaining(c);
    if (f->n_kv > GGUF_MAX_KV)
        return ds4_fail(err, "header: n_kv %" PRIu64 " exceeds the limit of %u", f->n_kv, GGUF_MAX_KV);
    if (f->n_tensors > GGUF_MAX_TENSORS)
        return ds4_fail(err, "header: n_tensors %" PRIu64 " exceeds the limit of %u", f->n_tensors,
                        GGUF_MAX_TENSORS);
    if (f->n_kv > rem / GGUF_MIN_KV_BYTES)
        return ds4_fail(err, "header: n_kv %" PRIu64 " cannot fit in the %" PRIu64
                        " bytes after the header", f->n_kv, rem);
    if (f->n_tensors > rem / GGUF_MIN_TENSOR_BYTES)
        return ds4_fail(err, "header: n_tensors %" PRIu64 " cannot fit in the %" PRIu64
                        " bytes after the header", f->n_tensors, rem);
    if (f->n_kv * GGUF_MIN_KV_BYTES + f->n_tensors * GGUF_MIN_TENSOR_BYTES > rem)
        return ds4_fail(err, "header: n_kv %" PRIu64 " and n_tensors %" PRIu64
                        " cannot both fit in the %" PRIu64 " bytes after the header",
                        f->n_kv, f->n_tensors, rem);
    return 0;
}

static int parse_kvs(gguf_file *f, cursor *c, ds4_error *err) {
    if (f->n_kv) {
        f->kv = calloc((size_t)f->n_kv, sizeof(*f->kv));
        if (!f->kv) return ds4_fail(err, "out of memory for %" PRIu64 " keys", f->n_kv);
    }
    for (uint64_t i = 0; i < f->n_kv; i++) {
        gguf_kv *kv = &f->kv[i];
        char name[GGUF_SHOW_MAX * 4 + 8];
        if (rd_str(c, &kv->key, "key", err)) return ds4_fail_wrap(err, "key %" PRIu64, i);
        if (check_ident(kv->key, GGUF_MAX_KEY_LEN, "key", err))
            return ds4_fail_wrap(err, "key %" PRIu64 " '%s'", i, show(kv->key, name, sizeof(name)));
        uint32_t type;
        if (rd_u32(c, &type, "value type", err) || parse_value(c, type, &kv->value, err))
            return ds4_fail_wrap(err, "key %" PRIu64 " '%s'", i, show(kv->key, name, sizeof(name)));
    }
    return 0;
}

/* general.alignment: optional, uint32, power of two, bounded. */
static int read_alignment(gguf_file *f, ds4_error *err) {
    f->alignment = GGUF_DEFAULT_ALIGNMENT;
    for (uint64_t i = 0; i < f->n_kv; i++) {
        const gguf_kv *kv = &f->kv[i];
        if (!gguf_str_eq(kv->key, "general.alignment")) continue;
        if (kv->value.type != GGUF_VT_UINT32)
            return ds4_fail(err, "key %" PRIu64 " 'general.alignment': expected uint32, got %s", i,
                            gguf_value_type_name(kv->value.type));
        if (!is_pow2(kv->value.u) || kv->value.u > GGUF_MAX_ALIGNMENT)
            return ds4_fail(err, "key %" PRIu64 " 'general.alignment': %" PRIu64
                            " is not a power of two in 1..%u", i, kv->value.u, GGUF_MAX_ALIGNMENT);
        f->alignment = (uint32_t)kv->value.u;
        return 0;
    }
    return 0;
}

/* One tensor info: name, dims, type, offset; sizes computed and checked. */
static int parse_tensor_info(cursor *c, gguf_tensor *t, ds4_error *err) {
    if (rd_str(c, &t->name, "name", err)) return -1;
    if (check_ident(t->name, GGUF_MAX_NAME_LEN, "name", err)) return -1;
    uint64_t at = c->pos;
    if (rd_u32(c, &t->n_dims, "n_dims", err)) return -1;
    if (t->n_dims < 1 || t->n_dims > GGUF_MAX_DIMS)
        return ds4_fail(err, "n_dims %" PRIu32 " at offset 0x%" PRIx64 " is not in 1..%d",
                        t->n_dims, at, GGUF_MAX_DIMS);
    t->n_elements = 1;
    for (uint32_t d = 0; d < GGUF_MAX_DIMS; d++) {
        t->ne[d] = 1;
        if (d >= t->n_dims) continue;
        at = c->pos;
        if (rd_u64(c, &t->ne[d], "dimension", err)) return -1;
        if (t->ne[d] == 0 || t->ne[d] > (uint64_t)INT64_MAX)
            return ds4_fail(err, "ne[%" PRIu32 "] = %" PRIu64 " at offset 0x%" PRIx64
                            " is not in 1..2^63-1", d, t->ne[d], at);
        if (t->n_elements > (uint64_t)INT64_MAX / t->ne[d])
            return ds4_fail(err, "element count overflows at ne[%" PRIu32 "] = %" PRIu64, d,
                            t->ne[d]);
        t->n_elements *= t->ne[d];
    }
    at = c->pos;
    if (rd_u32(c, &t->type, "type", err)) return -1;
    const ds4_type_traits *tr = ds4_type_get(t->type);
    if (!tr || tr->block_size == 0 || tr->type_size == 0)
        return ds4_fail(err, "unknown tensor type %" PRIu32 " at offset 0x%" PRIx64, t->type, at);
    if (t->ne[0] % tr->block_size)
        return ds4_fail(err, "ne[0] = %" PRIu64 " is not a multiple of the %s block size %" PRIu32,
                        t->ne[0], tr->name, tr->block_size);
    uint64_t nb = t->ne[0] / tr->block_size;
    if (nb > UINT64_MAX / tr->type_size)
        return ds4_fail(err, "byte size overflows (ne[0] = %" PRIu64 ", type %s)", t->ne[0], tr->name);
    nb *= tr->type_size;
    for (uint32_t d = 1; d < t->n_dims; d++) {
        if (nb > UINT64_MAX / t->ne[d])
            return ds4_fail(err, "byte size overflows at ne[%" PRIu32 "] = %" PRIu64, d, t->ne[d]);
        nb *= t->ne[d];
    }
    t->nbytes = nb;
    return rd_u64(c, &t->offset, "offset", err);
}

static int parse_tensor_infos(gguf_file *f, cursor *c, ds4_error *err) {
    if (f->n_tensors) {
        f->tensors = calloc((size_t)f->n_tensors, sizeof(*f->tensors));
        if (!f->tensors) return ds4_fail(err, "out of memory for %" PRIu64 " tensors", f->n_tensors);
    }
    char name[GGUF_SHOW_MAX * 4 + 8];
    for (uint64_t i = 0; i < f->n_tensors; i++) {
        gguf_tensor *t = &f->tensors[i];
        if (parse_tensor_info(c, t, err)) {
            if (t->name.ptr) /* the name was read: say which tensor */
                return ds4_fail_wrap(err, "tensor %" PRIu64 " '%s'", i,
                                     show(t->name, name, sizeof(name)));
            return ds4_fail_wrap(err, "tensor %" PRIu64, i);
        }
    }
    return 0;
}

/* Place the data section and every tensor inside the file. */
static int place_tensors(gguf_file *f, uint64_t dir_end, ds4_error *err) {
    uint64_t a = f->alignment;
    uint64_t pad = (a - dir_end % a) % a;
    if (pad > f->size - dir_end)
        return ds4_fail(err, "data section starts at 0x%" PRIx64 " (directory end 0x%" PRIx64
                        " padded to %" PRIu64 "), past end of file (size %" PRIu64 ")",
                        dir_end + pad, dir_end, a, f->size);
    f->data_offset = dir_end + pad;
    uint64_t room = f->size - f->data_offset;
    char name[GGUF_SHOW_MAX * 4 + 8];
    for (uint64_t i = 0; i < f->n_tensors; i++) {
        gguf_tensor *t = &f->tensors[i];
        if (t->offset % a)
            return ds4_fail(err, "tensor %" PRIu64 " '%s': offset 0x%" PRIx64
                            " is not a multiple of the alignment %" PRIu64, i,
                            show(t->name, name, sizeof(name)), t->offset, a);
        if (t->offset > room || t->nbytes > room - t->offset)
            return ds4_fail(err, "tensor %" PRIu64 " '%s': data [offset 0x%" PRIx64 "+%" PRIu64
                            ") runs past end of file (size %" PRIu64 ", data section at 0x%" PRIx64 ")",
                            i, show(t->name, name, sizeof(name)), t->offset, t->nbytes, f->size,
                            f->data_offset);
        t->file_offset = f->data_offset + t->offset;
        t->data = f->base + t->file_offset;
    }
    return 0;
}

/* Sorting helpers for the duplicate and overlap checks. */
typedef struct sort_ent {
    const char *ptr;
    uint64_t len;
    uint64_t key; /* file offset for the overlap check */
    uint64_t idx;
} sort_ent;

static int cmp_name(const void *pa, const void *pb) {
    const sort_ent *a = pa, *b = pb;
    uint64_t n = a->len < b->len ? a->len : b->len;
    int r = memcmp(a->ptr, b->ptr, (size_t)n);
    if (r) return r;
    if (a->len != b->len) return a->len < b->len ? -1 : 1;
    return a->idx < b->idx ? -1 : a->idx > b->idx;
}

static int cmp_offset(const void *pa, const void *pb) {
    const sort_ent *a = pa, *b = pb;
    if (a->key != b->key) return a->key < b->key ? -1 : 1;
    return a->idx < b->idx ? -1 : a->idx > b->idx;
}

static int check_unique_keys(const gguf_file *f, ds4_error *err) {
    if (f->n_kv < 2) return 0;
    sort_ent *e = malloc((size_t)f->n_kv * sizeof(*e));
    if (!e) return ds4_fail(err, "out of memory checking %" PRIu64 " keys", f->n_kv);
    for (uint64_t i = 0; i < f->n_kv; i++)
        e[i] = (sort_ent){f->kv[i].key.ptr, f->kv[i].key.len, 0, i};
    qsort(e, (size_t)f->n_kv, sizeof(*e), cmp_name);
    int rc = 0;
    for (uint64_t i = 1; i < f->n_kv && !rc; i++) {
        if (e[i].len != e[i - 1].len || memcmp(e[i].ptr, e[i - 1].ptr, (size_t)e[i].len)) continue;
        char name[GGUF_SHOW_MAX * 4 + 8];
        rc = ds4_fail(err, "key %" PRIu64 " '%s': duplicate of key %" PRIu64, e[i].idx,
                      show(f->kv[e[i].idx].key, name, sizeof(name)), e[i - 1].idx);
    }
    free(e);
    return rc;
}

static int check_tensor_layout(const gguf_file *f, ds4_error *err) {
    if (f->n_tensors < 2) return 0;
    uint64_t n = f->n_tensors;
    sort_ent *e = malloc((size_t)n * sizeof(*e));
    if (!e) return ds4_fail(err, "out of memory checking %" PRIu64 " tensors", n);
    for (uint64_t i = 0; i < n; i++) {
        const gguf_tensor *t = &f->tensors[i];
        e[i] = (sort_ent){t->name.ptr, t->name.len, t->file_offset, i};
    }
    char a[GGUF_SHOW_MAX * 4 + 8], b[GGUF_SHOW_MAX * 4 + 8];
    int rc = 0;
    qsort(e, (size_t)n, sizeof(*e), cmp_name);
    for (uint64_t i = 1; i < n && !rc; i++) {
        if (e[i].len != e[i - 1].len || memcmp(e[i].ptr, e[i - 1].ptr, (size_t)e[i].len)) continue;
        rc = ds4_fail(err, "tensor %" PRIu64 " '%s': duplicate name of tensor %" PRIu64, e[i].idx,
                      show(f->tensors[e[i].idx].name, a, sizeof(a)), e[i - 1].idx);
    }
    if (!rc) qsort(e, (size_t)n, sizeof(*e), cmp_offset);
    for (uint64_t i = 1; i < n && !rc; i++) {
        const gguf_tensor *p = &f->tensors[e[i - 1].idx], *t = &f->tensors[e[i].idx];
        if (p->file_offset + p->nbytes <= t->file_offset) continue;
        rc = ds4_fail(err, "tensor %" PRIu64 " '%s': data [offset 0x%" PRIx64 "+%" PRIu64
                      ") overlaps tensor %" PRIu64 " '%s' [offset 0x%" PRIx64 "+%" PRIu64 ")",
                      e[i].idx, show(t->name, a, sizeof(a)), t->offset, t->nbytes, e[i - 1].idx,
                      show(p->name, b, sizeof(b)), p->offset, p->nbytes);
    }
    free(e);
    return rc;
}

/* ------------------------------------------------------------------ */
/* Public entry points                                                 */
/* ------------------------------------------------------------------ */

int gguf_parse(gguf_file *f, const void *buf, uint64_t size, ds4_error *err) {
    memset(f, 0, sizeof(*f));
    if (!buf && size) return ds4_fail(err, "NULL buffer of %" PRIu64 " bytes", size);
    f->base = buf;
    f->size = size;
    cursor c = {buf, size, 0};
    int rc = parse_header(f, &c, err);
    if (!rc) rc = parse_kvs(f, &c, err);
    if (!rc) rc = read_alignment(f, err);
    if (!rc) rc = parse_tensor_infos(f, &c, err);
    if (!rc) rc = place_tensors(f, c.pos, err);
    if (!rc) rc = check_unique_keys(f, err);
    if (!rc) rc = check_tensor_layout(f, err);
    if (rc) gguf_close(f);
    return rc;
}

int gguf_open(gguf_file *f, const char *path, ds4_error *err) {
    memset(f, 0, sizeof(*f));
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return ds4_fail(err, "%s: cannot open: %s", path, strerror(errno));
    struct stat st;
    if (fstat(fd, &st) != 0) {
        int e = errno;
        close(fd);
        return ds4_fail(err, "%s: cannot stat: %s", path, strerror(e));
    }
    if (!S_ISREG(st.st_mode)) {
        close(fd);
        return ds4_fail(err, "%s: not a regular file%s", path,
                        S_ISDIR(st.st_mode) ? " (a directory)" : "");
    }
    uint64_t size = (uint64_t)st.st_size;
    if (size < GGUF_HEADER_BYTES) {
        close(fd);
        return ds4_fail(err, "%s: file is %" PRIu64 " bytes, too small for a GGUF header (%u)",
                        path, size, GGUF_HEADER_BYTES);
    }
    if (size > (uint64_t)SIZE_MAX) {
        close(fd);
        return ds4_fail(err, "%s: file of %" PRIu64 " bytes cannot be mapped", path, size);
    }
    void *map = mmap(NULL, (size_t)size, PROT_READ, MAP_SHARED, fd, 0);
    int e = errno;
    close(fd);
    if (map == MAP_FAILED) return ds4_fail(err, "%s: cannot map %" PRIu64 " bytes: %s", path, size,
                                           strerror(e));
    if (gguf_parse(f, map, size, err)) {
        munmap(map, (size_t)size);
        return ds4_fail_wrap(err, "%s", path);
    }
    f->map_size = size;
    return 0;
}

void gguf_close(gguf_file *f) {
    if (!f) return;
    free(f->kv);
    free(f->tensors);
    if (f->map_size) munmap((void *)f->base, (size_t)f->map_size);
    memset(f, 0, sizeof(*f));
}

bool gguf_str_eq(gguf_str s, const char *c) {
    size_t n = strlen(c);
    return s.len == n && (n == 0 || memcmp(s.ptr, c, n) == 0);
}

const char *gguf_str_copy(gguf_str s, char *buf, uint64_t cap) {
    if (!cap) return buf;
    uint64_t n = s.len < cap - 1 ? s.len : cap - 1;
    if (n) memcpy(buf, s.ptr, (size_t)n);
    buf[n] = '\0';
    return buf;
}

const gguf_kv *gguf_find_kv(const gguf_file *f, const char *key) {
    for (uint64_t i = 0; i < f->n_kv; i++)
        if (gguf_str_eq(f->kv[i].key, key)) return &f->kv[i];
    return NULL;
}

const gguf_tensor *gguf_find_tensor(const gguf_file *f, const char *name) {
    for (uint64_t i = 0; i < f->n_tensors; i++)
        if (gguf_str_eq(f->tensors[i].name, name)) return &f->tensors[i];
    return NULL;
}

void gguf_array_iter_init(gguf_array_iter *it, const gguf_value *v) {
    it->arr = v;
    it->index = 0;
    it->pos = 0;
}

bool gguf_array_next(gguf_array_iter *it, gguf_value *out) {
    const gguf_value *v = it->arr;
    if (v->type != GGUF_VT_ARRAY || it->index >= v->arr.count) return false;
    uint32_t et = v->arr.elem_type;
    uint64_t esz = fixed_size(et);
    if (esz) {
        decode_scalar(et, v->arr.data + it->index * esz, out);
        it->index++;
        return true;
    }
    /* Strings and nested arrays: step over one element (the body was
     * validated at parse, the cursor still bounds every read). */
    cursor c = {v->arr.data, v->arr.nbytes, it->pos};
    int rc = et == GGUF_VT_STRING ? parse_value(&c, GGUF_VT_STRING, out, NULL)
                                  : parse_array(&c, 0, out, NULL);
    if (rc) return false;
    it->pos = c.pos;
    it->index++;
    return true;
}

int gguf_array_get(const gguf_value *v, uint64_t i, gguf_value *out) {
    if (v->type != GGUF_VT_ARRAY || i >= v->arr.count) return -1;
    uint64_t esz = fixed_size(v->arr.elem_type);
    if (esz) {
        decode_scalar(v->arr.elem_type, v->arr.data + i * esz, out);
        return 0;
    }
    gguf_array_iter it;
    gguf_array_iter_init(&it, v);
    gguf_value tmp;
    for (uint64_t k = 0; k <= i; k++)
        if (!gguf_array_next(&it, &tmp)) return -1;
    *out = tmp;
    return 0;
}

/* ------------------------------------------------------------------ */
/* Typed getters                                                       */
/* ------------------------------------------------------------------ */

static bool is_unsigned(uint32_t t) {
    return t == GGUF_VT_UINT8 || t == GGUF_VT_UINT16 || t == GGUF_VT_UINT32 || t == GGUF_VT_UINT64;
}
static bool is_signed(uint32_t t) {
    return t == GGUF_VT_INT8 || t == GGUF_VT_INT16 || t == GGUF_VT_INT32 || t == GGUF_VT_INT64;
}
static bool is_float(uint32_t t) { return t == GGUF_VT_FLOAT32 || t == GGUF_VT_FLOAT64; }

static const gguf_kv *find_or_fail(const gguf_file *f, const char *key, ds4_error *err) {
    const gguf_kv *kv = gguf_find_kv(f, key);
    if (!kv) ds4_fail(err, "key '%s' is missing", key);
    return kv;
}

static int type_fail(const char *key, const char *want, uint32_t got, ds4_error *err) {
    return ds4_fail(err, "key '%s': expected %s, got %s", key, want, gguf_value_type_name(got));
}

int gguf_get_u64(const gguf_file *f, const char *key, uint64_t *out, ds4_error *err) {
    const gguf_kv *kv = find_or_fail(f, key, err);
    if (!kv) return -1;
    const gguf_value *v = &kv->value;
    if (is_unsigned(v->type)) {
        *out = v->u;
        return 0;
    }
    if (is_signed(v->type)) {
        if (v->i < 0)
            return ds4_fail(err, "key '%s': %" PRId64 " is negative, expected an unsigned value",
                            key, v->i);
        *out = (uint64_t)v->i;
        return 0;
    }
    return type_fail(key, "an integer", v->type, err);
}

int gguf_get_u32(const gguf_file *f, const char *key, uint32_t *out, ds4_error *err) {
    uint64_t v;
    if (gguf_get_u64(f, key, &v, err)) return -1;
    if (v > UINT32_MAX)
        return ds4_fail(err, "key '%s': %" PRIu64 " does not fit in uint32", key, v);
    *out = (uint32_t)v;
    return 0;
}

static double num_value(const gguf_value *v) {
    if (is_unsigned(v->type)) return (double)v->u;
    if (is_signed(v->type)) return (double)v->i;
    return v->f;
}

int gguf_get_f64(const gguf_file *f, const char *key, double *out, ds4_error *err) {
    const gguf_kv *kv = find_or_fail(f, key, err);
    if (!kv) return -1;
    uint32_t t = kv->value.type;
    if (!is_unsigned(t) && !is_signed(t) && !is_float(t))
        return type_fail(key, "a number", t, err);
    *out = num_value(&kv->value);
    return 0;
}

int gguf_get_bool(const gguf_file *f, const char *key, bool *out, ds4_error *err) {
    const gguf_kv *kv = find_or_fail(f, key, err);
    if (!kv) return -1;
    if (kv->value.type != GGUF_VT_BOOL) return type_fail(key, "bool", kv->value.type, err);
    *out = kv->value.u != 0;
    return 0;
}

int gguf_get_str(const gguf_file *f, const char *key, gguf_str *out, ds4_error *err) {
    const gguf_kv *kv = find_or_fail(f, key, err);
    if (!kv) return -1;
    if (kv->value.type != GGUF_VT_STRING) return type_fail(key, "string", kv->value.type, err);
    *out = kv->value.s;
    return 0;
}

int gguf_get_arr_f64(const gguf_file *f, const char *key, double *out, uint64_t cap,
                     uint64_t *count, ds4_error *err) {
    const gguf_kv *kv = find_or_fail(f, key, err);
    if (!kv) return -1;
    const gguf_value *v = &kv->value;
    if (v->type != GGUF_VT_ARRAY) return type_fail(key, "a numeric array", v->type, err);
    uint32_t et = v->arr.elem_type;
    if (!is_unsigned(et) && !is_signed(et) && !is_float(et))
        return ds4_fail(err, "key '%s': expected a numeric array, got an array of %s", key,
                        gguf_value_type_name(et));
    if (count) *count = v->arr.count;
    if (v->arr.count < cap)
        return ds4_fail(err, "key '%s': array has %" PRIu64 " elements, %" PRIu64 " needed", key,
                        v->arr.count, cap);
    for (uint64_t i = 0; i < cap; i++) {
        gguf_value e;
        gguf_array_get(v, i, &e);
        out[i] = num_value(&e);
    }
    return 0;
}
