/* gguf_write.h - builds GGUF v3 files (test models, converted checkpoints).
 *
 * Keys and tensor descriptions are collected in memory first, tensor data is
 * then streamed in the order the tensors were added; the writer computes the
 * aligned offsets itself, so a file it writes always passes gguf_parse.
 * Used by the test-model generator and the converter; never by inference.
 *
 * Two ways to give tensor data:
 *   - gguf_w_tensor copies the bytes; gguf_writer_save / _to_memory write
 *     everything at the end (memory ~ the file size: small files);
 *   - gguf_w_tensor_info describes a tensor without data; after the last
 *     one the layout (head + offsets) is fixed, gguf_writer_stream_open
 *     writes the head and gguf_writer_stream_write appends each tensor's
 *     bytes, in order, in pieces of any size (memory ~ one piece: files
 *     larger than RAM).  A stream can be reopened past its first `skip`
 *     complete tensors to resume an interrupted write.
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
 * (*out malloc'd, caller frees).  Every tensor must have been given with
 * gguf_w_tensor (data). */
int gguf_writer_save(gguf_writer *w, const char *path, ds4_error *err);
int gguf_writer_to_memory(gguf_writer *w, uint8_t **out, uint64_t *size, ds4_error *err);

/* --- streaming --- */

/* A tensor whose bytes will come through gguf_writer_stream_write (same
 * checks as gguf_w_tensor). */
int gguf_w_tensor_info(gguf_writer *w, const char *name, uint32_t n_dims, const uint64_t *ne,
                       uint32_t type, ds4_error *err);
/* Fix the layout: header, keys, tensor infos and offsets.  Adding a key or
 * a tensor afterwards is a misuse.  Idempotent. */
int gguf_writer_layout(gguf_writer *w, ds4_error *err);
/* After the layout: the head bytes (header, keys, tensor infos and the
 * padding up to the data section), the tensor count, and tensor i's
 * absolute file offset, byte size and padded end (the next tensor's offset,
 * or the file size for the last one).  0 / NULL / -1 before the layout. */
const uint8_t *gguf_writer_head(const gguf_writer *w, uint64_t *len);
uint64_t gguf_writer_n_tensors(const gguf_writer *w);
int gguf_writer_tensor_span(const gguf_writer *w, uint64_t i, uint64_t *offset,
                            uint64_t *nbytes, uint64_t *end);
/* Open path for streaming (fixing the layout first).  skip == 0 creates or
 * truncates it and writes the head.  skip > 0 resumes: path must start with
 * this writer's exact head and hold at least tensors 0..skip-1 (the caller
 * vouches for their bytes); it is cut after tensor skip-1's padding and
 * writing continues with tensor `skip`.  Every tensor must be info-only. */
int gguf_writer_stream_open(gguf_writer *w, const char *path, uint64_t skip, ds4_error *err);
/* Append n bytes of the current tensor (never more than it has left); its
 * alignment padding follows its last byte.  The number of complete tensors
 * is gguf_writer_stream_done. */
int gguf_writer_stream_write(gguf_writer *w, const void *data, uint64_t n, ds4_error *err);
uint64_t gguf_writer_stream_done(const gguf_writer *w);
/* Flush the file buffers to the file (after a complete tensor: a crash
 * after this loses nothing before it). */
int gguf_writer_stream_flush(gguf_writer *w, ds4_error *err);
/* Every tensor complete: flush, fsync, close, and re-read the file with the
 * strict reader.  The file stays at path (the caller renames it). */
int gguf_writer_stream_close(gguf_writer *w, ds4_error *err);

#endif
