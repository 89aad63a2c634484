/* safetensors.h - a strict, read-only reader of Hugging Face safetensors.
 *
 * A checkpoint folder is one `model.safetensors`, or shards listed by
 * `model.safetensors.index.json` (its "weight_map"), or, without an index,
 * every `*.safetensors` file in the folder (taken in name order).  Each file
 * is mapped read-only; only the tensor directory is copied.
 *
 * The JSON header of every file is checked before anything is used: its
 * length lies inside the file, it is one JSON object whose entries are
 * `{"dtype", "shape", "data_offsets"}` (plus an optional `__metadata__`
 * object of strings), the dtype is known, every shape entry and offset is a
 * non-negative integer, shape product x dtype size equals the offset span,
 * the span lies inside the data section, spans do not overlap, and names are
 * unique across all files.  A failure is one line naming the file (and the
 * tensor when there is one).
 *
 * Shapes are kept in PyTorch order (slowest first).  Tensors are read as f32
 * (from F32, F16, BF16, F64) or int64 (from any integer dtype) by element
 * range, so a caller can convert one slice of a huge tensor at a time.
 * Data need not be aligned in the file: reads copy element by element.
 *
 * Block-scaled matrices (FP8 / FP4 checkpoints) are a weight tensor of small
 * float codes plus a scale tensor with one scale per block of values; an
 * st_scaled pairs the two after checking their dtypes and shapes, and reads
 * back exact f32 values (code x scale: both are short binary floats, so the
 * product is exact in f32 unless it overflows, which is an error).
 *
 * Memory: mapped pages that have been read stay resident (and count in the
 * process's RSS) until unmapped; st_release drops the pages of a range once
 * a streaming caller is done with it, so a checkpoint far larger than RAM can
 * be read with a resident set of one working slice.
 * This module knows nothing about DeepSeek or GGUF.
 */
#ifndef DS4_SAFETENSORS_H
#define DS4_SAFETENSORS_H

#include <stdint.h>

#include "error.h"

#define ST_MAX_DIMS 8
#define ST_MAX_HEADER (100u * 1000u * 1000u) /* bytes of JSON header, as the format caps it */

enum st_dtype {
    ST_BOOL, ST_U8, ST_I8, ST_U16, ST_I16, ST_U32, ST_I32, ST_U64, ST_I64,
    ST_F16, ST_BF16, ST_F32, ST_F64, ST_C64,
    ST_F8_E4M3, ST_F8_E5M2, ST_F8_E8M0, ST_F6_E2M3, ST_F6_E3M2, ST_F4,
    ST_DTYPE_COUNT
};

typedef struct st_tensor {
    const char *name;             /* NUL-terminated, owned by the set */
    uint32_t dtype;               /* enum st_dtype */
    uint32_t n_dims;              /* 0 for a scalar */
    uint64_t shape[ST_MAX_DIMS];  /* slowest first; unused entries are 1 */
    uint64_t n_elements;
    uint64_t nbytes;
    const uint8_t *data;          /* into the shard's mapping */
    uint32_t shard;               /* index into st_set.shards */
} st_tensor;

typedef struct st_shard {
    char *path;
    const uint8_t *base;  /* the mapping */
    uint64_t size;
} st_shard;

typedef struct st_set {
    st_shard *shards;
    uint32_t n_shards;
    st_tensor *tensors;   /* sorted by name */
    uint64_t n_tensors;
} st_set;

/* Open every safetensors file of a checkpoint folder (see above).  On
 * failure s is left closed. */
int st_open_dir(st_set *s, const char *dir, ds4_error *err);
/* Open the given files as one set (names must be unique across them). */
int st_open_files(st_set *s, const char *const *paths, uint32_t n, ds4_error *err);
/* Unmap and free (safe on a zeroed or closed set). */
void st_close(st_set *s);

/* The tensor with that exact name, or NULL. */
const st_tensor *st_find(const st_set *s, const char *name);
/* Path of the file that holds t. */
const char *st_path(const st_set *s, const st_tensor *t);

/* "F32", "BF16", ... ("?" when out of range) and the size in bits. */
const char *st_dtype_name(uint32_t dtype);
uint32_t st_dtype_bits(uint32_t dtype);

/* Elements [first, first+count) of t (flat, row-major) as f32 (t must be
 * F32, F16, BF16 or F64) or as int64 (any integer dtype; U64 values above
 * INT64_MAX fail).  Fails with a message naming the file and tensor when the
 * dtype does not convert or the range is outside the tensor. */
int st_read_f32(const st_set *s, const st_tensor *t, uint64_t first, uint64_t count, float *dst,
                ds4_error *err);
int st_read_i64(const st_set *s, const st_tensor *t, uint64_t first, uint64_t count,
                int64_t *dst, ds4_error *err);

/* Let the kernel drop the mapped pages holding elements [first, first+count)
 * of t (rounded out to whole pages; touching them again reads the file).
 * Only advice: it cannot fail and never changes what a read returns. */
void st_release(const st_set *s, const st_tensor *t, uint64_t first, uint64_t count);

/* --- block-scaled matrices --- */

enum st_code {
    ST_CODE_E4M3, /* F8_E4M3 (OCP "fn": bias 7, no inf, 0x7f/0xff NaN), one per byte */
    ST_CODE_E2M1, /* FP4 E2M1 (0, .5, 1, 1.5, 2, 3, 4, 6 and sign), two per byte,
                     low nibble first: an I8/U8 tensor [rows, cols/2] or F4 [rows, cols] */
};

/* Logical matrix [rows, cols] = code x scale of its block.  Scales: F8_E8M0
 * or U8 (2^(b-127), b = 255 is NaN), F32, BF16 or F16, shaped
 * [ceil(rows/block_rows), ceil(cols/block_cols)]. */
typedef struct st_scaled {
    const st_tensor *w, *scale;
    uint32_t code;                     /* enum st_code */
    uint64_t rows, cols;               /* logical, values */
    uint64_t block_rows, block_cols;
} st_scaled;

/* The code format a weight dtype carries when it has a scale tensor:
 * F8_E4M3 -> E4M3; I8, U8, F4 -> packed E2M1; -1 for any other dtype. */
int st_scaled_code(uint32_t weight_dtype);
/* Logical [rows, cols] of a 2-D weight of that code (cols doubled for a
 * packed I8/U8 tensor); -1 when w is not a 2-D tensor of a code dtype. */
int st_scaled_dims(const st_tensor *w, uint64_t *rows, uint64_t *cols);
/* Pair weight and scale for blocks of block_rows x block_cols values.
 * Fails, naming both tensors, on a dtype that is not a code / scale type, a
 * weight that is not 2-D, or a scale of the wrong shape. */
int st_scaled_init(st_scaled *q, const st_set *s, const st_tensor *w, const st_tensor *scale,
                   uint64_t block_rows, uint64_t block_cols, ds4_error *err);
/* Logical elements [first, first+count) (flat, row-major) as exact f32.
 * Fails on a NaN code, a NaN or non-finite scale, or a product that
 * overflows f32, naming the tensor and the element. */
int st_read_scaled_f32(const st_set *s, const st_scaled *q, uint64_t first, uint64_t count,
                       float *dst, ds4_error *err);

#endif
