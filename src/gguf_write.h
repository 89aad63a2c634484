/* gguf_write.h - builds GGUF v3 files (test models, converted checkpoints).
 *
 * Keys and tensor descriptions are collected in memory first, tensor data is
 * then streamed in the order the tensors were added; the writer computes the
 * aligned offsets itself, so a file it writes always passes gguf_parse.
 * Used by the test-model generator and the converter; never by inference.
 */
#ifndef DS4_GGUF_WRITE_H
#define DS4_GGUF_WRITE_H

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

#include "error.h"
#include "gguf.h"

typedef struct gguf_writer gguf_writer;

/* alignment: a power of two <= GGUF_MAX_ALIGNMENT, or 0 for the default
 * (32); any other value stores `general.alignment` as the first key.  NULL
 * only when out of memory. */
gguf_writer *gguf_writer_new(uint32_t alignment);
void gguf_writer_free(gguf_writer *w);

/* Metadata (copied).  Keys must be unique; a duplicate is an error at save.
 * Misuse (empty or over-long key, bad element type, NULL data, out of memory)
 * is remembered and reported by the save functions. */
void gguf_w_u32(gguf_writer *w, const char *key, uint32_t v);
void gguf_w_i32(gguf_writer *w, const char *key, int32_t v);
void gguf_w_u64(gguf_writer *w, const char *key, uint64_t v);
void gguf_w_f32(gguf_writer *w, const char *key, float v);
void gguf_w_f64(gguf_writer *w, const char *key, double v);
void gguf_w_bool(gguf_writer *w, const char *key, bool v);
void gguf_w_str(gguf_writer *w, const char *key, const char *v);
/* Arrays of fixed-size elements: elem_type is a gguf_value_type scalar. */
void gguf_w_arr(gguf_writer *w, const char *key, uint32_t elem_type, const void *data,
                uint64_t count);
void gguf_w_arr_str(gguf_writer *w, const char *key, const char *const *strs, uint64_t count);
/* Any value: scalars of every type (bool as 0/1), strings, and arrays whose
 * body (v->arr.data, nbytes: nested arrays included) passes gguf_array_check.
 * Copies values read from another file verbatim. */
void gguf_w_value(gguf_writer *w, const char *key, const gguf_value *v);

/* A tensor: dims fastest first, type a GGML id, data of exactly
 * ds4_row_bytes(type, ne[0]) * ne[1] * ne[2] * ne[3] bytes (copied). */
int gguf_w_tensor(gguf_writer *w, const char *name, uint32_t n_dims, const uint64_t *ne,
                  uint32_t type, const void *data, ds4_error *err);

/* Serialise to a file (written to path.tmp, then renamed) or to memory
 * (*out malloc'd, caller frees). */
int gguf_writer_save(gguf_writer *w, const char *path, ds4_error *err);
int gguf_writer_to_memory(gguf_writer *w, uint8_t **out, uint64_t *size, ds4_error *err);

#endif
