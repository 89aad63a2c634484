/* gguf.h - a strict, read-only reader of GGUF v3 files.
 *
 * The whole file is mapped read-only (or a caller's buffer is parsed in
 * place); nothing is copied but the small key and tensor directories.  Every
 * count, length, offset, dimension product and type id is checked against the
 * bytes that remain and against sane bounds BEFORE it is used, so a truncated,
 * corrupt or hostile file yields a one-line error naming what is wrong, never
 * a crash, a hang or a giant allocation.
 *
 * Invariants after a successful gguf_parse/gguf_open:
 *   - every string and array value lies inside the file (nested arrays too);
 *   - keys are unique, 1..GGUF_MAX_KEY_LEN bytes, without NUL bytes;
 *     tensor names are unique, 1..GGUF_MAX_NAME_LEN bytes, without NUL;
 *   - value types are known, bools are 0 or 1, arrays nest at most
 *     GGUF_MAX_NESTING deep; general.alignment, when present, is a uint32
 *     power of two <= GGUF_MAX_ALIGNMENT;
 *   - every tensor has 1..4 dims, each >= 1, ne[0] a multiple of its type's
 *     block size, a known type, an offset aligned to general.alignment, and
 *     its bytes lie inside the file without overlapping another tensor.
 * Strings point into the mapping and are NOT NUL-terminated.
 *
 * This module knows nothing about DeepSeek or OpenCL.
 */
#ifndef DS4_GGUF_H
#define DS4_GGUF_H

#include <stdbool.h>
#include <stdint.h>

#include "error.h"

enum gguf_value_type {
    GGUF_VT_UINT8 = 0,
    GGUF_VT_INT8 = 1,
    GGUF_VT_UINT16 = 2,
    GGUF_VT_INT16 = 3,
    GGUF_VT_UINT32 = 4,
    GGUF_VT_INT32 = 5,
    GGUF_VT_FLOAT32 = 6,
    GGUF_VT_BOOL = 7,
    GGUF_VT_STRING = 8,
    GGUF_VT_ARRAY = 9,
    GGUF_VT_UINT64 = 10,
    GGUF_VT_INT64 = 11,
    GGUF_VT_FLOAT64 = 12,
    GGUF_VT_COUNT = 13
};

#define GGUF_MAX_DIMS 4
#define GGUF_DEFAULT_ALIGNMENT 32
/* Sanity bounds the reader (and the writer) enforce on top of the format. */
#define GGUF_MAX_ALIGNMENT (1u << 20) /* general.alignment: power of two <= 1 MiB */
#define GGUF_MAX_KEY_LEN 65535        /* keys: 1..65535 bytes, no NUL */
#define GGUF_MAX_NAME_LEN 64          /* tensor names: 1..64 bytes, no NUL */
#define GGUF_MAX_NESTING 8            /* arrays of arrays: at most 8 levels */
#define GGUF_MAX_KV (1u << 20)        /* n_kv (also bounded by the file size) */
#define GGUF_MAX_TENSORS (1u << 20)   /* n_tensors (likewise) */

typedef struct gguf_str {
    const char *ptr; /* into the mapping, not NUL-terminated */
    uint64_t len;
} gguf_str;

/* A metadata value.  Scalars are decoded; strings point into the file;
 * arrays keep their element type, count and the raw bytes of their body
 * (already validated, including nested arrays and strings inside). */
typedef struct gguf_value {
    uint32_t type; /* enum gguf_value_type */
    union {
        uint64_t u;  /* UINT8..UINT64, BOOL (0/1) */
        int64_t i;   /* INT8..INT64 */
        double f;    /* FLOAT32, FLOAT64 */
        gguf_str s;  /* STRING */
        struct {
            uint32_t elem_type;
            uint64_t count;
            const uint8_t *data;  /* first element's bytes */
            uint64_t nbytes;      /* bytes of the whole body */
        } arr;
    };
} gguf_value;

typedef struct gguf_kv {
    gguf_str key;
    gguf_value value;
} gguf_kv;

typedef struct gguf_tensor {
    gguf_str name;
    uint32_t n_dims;
    uint64_t ne[GGUF_MAX_DIMS]; /* fastest first; unused dims are 1 */
    uint32_t type;              /* GGML type id (quant.h) */
    uint64_t offset;            /* relative to the data section */
    uint64_t file_offset;       /* absolute offset in the file */
    uint64_t nbytes;
    uint64_t n_elements;
    const uint8_t *data;        /* into the mapping */
} gguf_tensor;

typedef struct gguf_file {
    const uint8_t *base;  /* the mapping or the caller's buffer */
    uint64_t size;        /* bytes of the file */
    uint64_t map_size;    /* bytes mapped (0 when the caller owns base) */
    uint32_t version;
    uint32_t alignment;
    uint64_t data_offset; /* absolute start of the tensor data section */
    uint64_t n_kv;
    gguf_kv *kv;
    uint64_t n_tensors;
    gguf_tensor *tensors;
} gguf_file;

/* Map `path` read-only and parse it.  On failure f is left closed. */
int gguf_open(gguf_file *f, const char *path, ds4_error *err);
/* Parse a GGUF image in memory; f->base points at buf (not copied, not freed). */
int gguf_parse(gguf_file *f, const void *buf, uint64_t size, ds4_error *err);
/* Release the directories and the mapping (safe on a zeroed or closed f). */
void gguf_close(gguf_file *f);

const gguf_kv *gguf_find_kv(const gguf_file *f, const char *key);
const gguf_tensor *gguf_find_tensor(const gguf_file *f, const char *name);

/* True when s equals the NUL-terminated c. */
bool gguf_str_eq(gguf_str s, const char *c);
/* Copy s into buf (always NUL-terminated, truncated to cap-1 bytes). */
const char *gguf_str_copy(gguf_str s, char *buf, uint64_t cap);
/* Name of a value type ("uint32", "array", ...). */
const char *gguf_value_type_name(uint32_t type);

/* Element i of an array value (bounds already checked by the parser; O(1)
 * for fixed-size elements, O(i) for strings and nested arrays).
 * Returns 0, or -1 when i is out of range or v is not an array. */
int gguf_array_get(const gguf_value *v, uint64_t i, gguf_value *out);

/* Sequential walk over an array's elements, O(1) per step for every element
 * type (use it for long string arrays such as a vocabulary):
 *     gguf_array_iter it; gguf_value e;
 *     gguf_array_iter_init(&it, v);
 *     while (gguf_array_next(&it, &e)) ...
 * The iterator points into v, which must outlive it. */
typedef struct gguf_array_iter {
    const gguf_value *arr;
    uint64_t index; /* of the next element */
    uint64_t pos;   /* byte offset of the next element in arr->arr.data */
} gguf_array_iter;
void gguf_array_iter_init(gguf_array_iter *it, const gguf_value *v);
bool gguf_array_next(gguf_array_iter *it, gguf_value *out);

/* Typed getters: convert any integer type, or any numeric type for floats,
 * and fail with a message naming the key when it is missing, of a type that
 * does not convert, or (for integers) out of the destination's range. */
int gguf_get_u64(const gguf_file *f, const char *key, uint64_t *out, ds4_error *err);
int gguf_get_u32(const gguf_file *f, const char *key, uint32_t *out, ds4_error *err);
int gguf_get_f64(const gguf_file *f, const char *key, double *out, ds4_error *err);
int gguf_get_bool(const gguf_file *f, const char *key, bool *out, ds4_error *err);
int gguf_get_str(const gguf_file *f, const char *key, gguf_str *out, ds4_error *err);
/* Numeric array into out[0..cap): fails when the key is missing, not a
 * numeric array (any integer or float element type), or shorter than cap;
 * a longer array succeeds with its first cap values.  *count (may be NULL)
 * gets the array's length whenever the key is a numeric array, so a caller
 * that needs an exact length compares it. */
int gguf_get_arr_f64(const gguf_file *f, const char *key, double *out, uint64_t cap,
                     uint64_t *count, ds4_error *err);

/* Check that data[0..nbytes) is exactly the body of an array of `count`
 * elements of `elem_type` (strings and nested arrays included, nesting below
 * GGUF_MAX_NESTING, bools 0/1).  The writer uses it on caller-built values. */
int gguf_array_check(uint32_t elem_type, uint64_t count, const void *data, uint64_t nbytes,
                     ds4_error *err);

#endif
