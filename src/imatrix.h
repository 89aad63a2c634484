/* imatrix.h - the importance matrix of the routed experts: what it holds,
 * its file format, and how the quantizers use it.
 *
 * For every layer and every routed expert the file records how many tokens
 * were routed to the expert during calibration and, per input column, the
 * mean of the squared input the expert's matrices saw:
 *   gate/up input: xn, the FFN-normalised hidden state (n_embd columns);
 *   down input:    mid, the clamped SwiGLU output after the route weight
 *                  (n_ff columns), exactly what the down matrix multiplies.
 * A matrix row quantized with error d[c] changes the output by sum_c d[c]x[c],
 * whose expected square is ~ sum_c d[c]^2 E[x[c]^2] when the columns are
 * uncorrelated: the per-column mean of x^2 is the weight of column c in the
 * quantizer's squared-error objective (ds4_quantize_row's `importance`).
 *
 * File format, version 1, all integers and floats little-endian:
 *
 *   offset size  field
 *        0    8  magic "DS4CLIMX"
 *        8    4  u32 version = 1
 *       12    4  u32 n_layer
 *       16    4  u32 n_expert
 *       20    4  u32 n_embd        (columns of the gate/up input)
 *       24    4  u32 n_ff          (columns of the down input)
 *       28    4  u32 n_vocab
 *       32    4  u32 n_expert_used
 *       36    4  u32 reserved = 0
 *       40    8  u64 fingerprint   XXH64 (seed 0) of the 24 bytes at 12..35:
 *                                  the model shape the statistics belong to
 *                                  (the same for every quantization of one
 *                                  checkpoint, so an imatrix collected with
 *                                  a q2 file applies to converting the
 *                                  original checkpoint)
 *       48    8  u64 n_tokens      calibration tokens evaluated
 *       56    8  u64 tokens_hash   XXH64 (seed 0) of those token ids as i32
 *       64   64  model name        general.name of the collecting file,
 *                                  NUL-padded (informational)
 *      128       body: for layer il < n_layer, for expert e < n_expert:
 *                  u64 count              tokens routed to e in layer il
 *                  u32 n_cols = n_embd,   f32 gate_up[n_embd]
 *                  u32 n_cols = n_ff,     f32 down[n_ff]
 *                (values: mean over the routed tokens of x[c]^2; all 0 when
 *                count is 0)
 *      end    8  u64 XXH64 (seed 0) of every byte before it
 *
 * The reader is strict: exact size, known version, sane dims, the stored
 * fingerprint and checksum must match, every value finite and >= 0, and a
 * zero count must come with zero values.
 *
 * This module is host-only (no OpenCL): the converter links it.  Collection
 * on the device lives in calib.c.
 */
#ifndef DS4_IMATRIX_H
#define DS4_IMATRIX_H

#include <stdbool.h>
#include <stdint.h>

#include "error.h"
#include "gguf_write.h"

#define DS4_IMATRIX_MAGIC "DS4CLIMX"
#define DS4_IMATRIX_VERSION 1
#define DS4_IMATRIX_HEADER_BYTES 128
#define DS4_IMATRIX_NAME_BYTES 64

/* Which input of an expert: gate and up share xn, down reads mid. */
enum ds4_imatrix_input { DS4_IMX_GATE_UP = 0, DS4_IMX_DOWN = 1 };

typedef struct ds4_imatrix_dims {
    uint32_t n_layer, n_expert, n_embd, n_ff, n_vocab, n_expert_used;
} ds4_imatrix_dims;

typedef struct ds4_imatrix {
    ds4_imatrix_dims dims;
    uint64_t fingerprint;   /* ds4_imatrix_fingerprint(&dims) */
    uint64_t n_tokens;      /* calibration tokens evaluated */
    uint64_t tokens_hash;   /* XXH64 of their ids */
    char name[DS4_IMATRIX_NAME_BYTES]; /* NUL-terminated */
    uint64_t *count;        /* [n_layer][n_expert] */
    float *gate_up;         /* [n_layer][n_expert][n_embd] */
    float *down;            /* [n_layer][n_expert][n_ff] */
} ds4_imatrix;

/* XXH64 of the shape words as stored at offsets 12..35. */
uint64_t ds4_imatrix_fingerprint(const ds4_imatrix_dims *d);

/* Fail unless the dims are within the bounds below (and n_expert_used is
 * 1..n_expert). */
int ds4_imatrix_dims_check(const ds4_imatrix_dims *d, ds4_error *err);
/* Allocate a zeroed imatrix for a model of these dims (bounded: at most
 * DS4_MAX_LAYERS layers, 65536 experts, 2^20 columns). */
int ds4_imatrix_init(ds4_imatrix *m, const ds4_imatrix_dims *d, ds4_error *err);
/* Free the arrays (safe on a zeroed m). */
void ds4_imatrix_free(ds4_imatrix *m);

/* Bytes of the file of m (header, body and checksum). */
uint64_t ds4_imatrix_file_bytes(const ds4_imatrix_dims *d);
/* Write m to path (through path.tmp, renamed when complete). */
int ds4_imatrix_save(const ds4_imatrix *m, const char *path, ds4_error *err);
/* Serialise to memory (*out malloc'd). */
int ds4_imatrix_to_memory(const ds4_imatrix *m, uint8_t **out, uint64_t *size, ds4_error *err);
/* Read and validate; on failure m is left zeroed. */
int ds4_imatrix_load(ds4_imatrix *m, const char *path, ds4_error *err);
int ds4_imatrix_parse(ds4_imatrix *m, const void *buf, uint64_t size, ds4_error *err);

/* Fail (naming the first difference) unless m was collected on a model of
 * dims d. */
int ds4_imatrix_check_dims(const ds4_imatrix *m, const ds4_imatrix_dims *d, ds4_error *err);

/* For the converter: load path and check it was collected on a model of
 * dims d (both failures name the file). */
int ds4_imatrix_load_for(ds4_imatrix *m, const char *path, const ds4_imatrix_dims *d, ds4_error *err);
/* Record in a GGUF being written which imatrix quantized it (so a resumed
 * conversion with another imatrix does not match the journal's key):
 * quantize.imatrix.file (base name), .n_tokens, .tokens_hash, .hash (XXH64
 * of the counts and values), .entries_count (layer/expert pairs with
 * tokens). */
void ds4_imatrix_put_meta(gguf_writer *w, const ds4_imatrix *m, const char *path);

/* The mean-square values of one expert's input (*n_cols set to their
 * count), or NULL when m is NULL, an index is out of range, or no token was
 * routed to that expert (count 0). */
const float *ds4_imatrix_values(const ds4_imatrix *m, uint32_t layer, int input, uint32_t expert,
                                uint32_t *n_cols);

/* Parse a routed-expert GGUF tensor name, "blk.N.ffn_gate_exps.weight",
 * "blk.N.ffn_up_exps.weight" or "blk.N.ffn_down_exps.weight" (".weight"
 * optional); false for any other name. */
bool ds4_imatrix_tensor_input(const char *name, uint32_t *layer, int *input);

/* For the converter, one call per row: the importance weights of row `row`
 * (counting over all experts' rows stacked, so expert = row / rows of one
 * expert) of routed tensor `tensor_name` with ncols values.  NULL (quantize
 * without importance) when m is NULL, the name is not a routed-expert
 * tensor, ncols is not that input's width, or the expert saw no tokens.
 * Check the dims once with ds4_imatrix_check_dims first. */
const float *ds4_imatrix_lookup(const ds4_imatrix *m, const char *tensor_name, uint64_t row, uint64_t ncols);

/* Importance of the cols columns of one expert matrix w [rows][cols]
 * (row-major, the rows that share the weights): the imatrix values when m
 * has them for (layer, input, expert), else the weight-energy fallback
 * out[c] = mean over the rows of w[r][c]^2 (w may be NULL only when m has
 * the values).  Returns 1 when the imatrix was used, 0 for the fallback,
 * -1 on error (cols not the input's width, w missing). */
int ds4_imatrix_importance(const ds4_imatrix *m, uint32_t layer, int input, uint32_t expert, const float *w,
                           uint64_t rows, uint64_t cols, float *out, ds4_error *err);

#endif
