/* kernels.h - one typed enqueue function per kernel of cl/.
 *
 * ds4_kernels holds the cl_kernel objects of one built program; the enqueue
 * functions set arguments, choose work sizes from the program's tuning
 * options and enqueue on the runtime's queue (no host sync, no allocation).
 * They know nothing about which layer calls them.
 *
 * Weight matrices are GGUF tensors: nrows rows of ncols values, row r at
 * w_off + r * ds4_row_bytes(type, ncols) bytes into buffer w.  Activations
 * and results are f32; x_off and y_off count floats.
 */
#ifndef DS4_KERNELS_H
#define DS4_KERNELS_H

#include "runtime.h"

typedef struct ds4_kernels {
    ds4_runtime *rt;
    cl_program program;
    int mv_lanes;             /* work-items cooperating on one row (MV_LANES) */
    int mv_rows;              /* rows per work-group (MV_ROWS) */
    int mm_tokens;            /* tokens per work-group in matmul (MM_TOKENS) */
    cl_kernel matvec[40];     /* indexed by GGML type id; NULL when absent */
    cl_kernel matmul[40];
    cl_kernel matvec_split[40]; /* split-K matvec for short wide matrices (GPUs) */
    cl_kernel split_sum;
    cl_mem split_buf;         /* partial sums, DS4_SPLIT_FLOATS floats */
    bool q8x;                 /* built with MV_Q8X=1: int8-activation kernels */
    cl_kernel matvec8[40];    /* cl/matvec_q8x.cl, quantized types, when q8x */
} ds4_kernels;

/* Build (or fetch from the cache) the program with the device's default
 * options plus `extra_options` (may be NULL) and create every kernel. */
int ds4_kernels_init(ds4_kernels *k, ds4_runtime *rt, const char *extra_options, ds4_error *err);
void ds4_kernels_free(ds4_kernels *k);

/* True when matvec/matmul exist for this weight type. */
bool ds4_kernels_has_type(const ds4_kernels *k, uint32_t type);

/* Split-K matvec: partial-sum scratch, and the widest split. */
#define DS4_SPLIT_FLOATS 65536
#define DS4_SPLIT_MAX 64

/* Largest ncols of the int8-activation kernels (cl/matvec_q8x.cl). */
#define DS4_Q8X_MAXCOLS 8192

/* True when a matrix of this type and width goes through the
 * int8-activation kernels (q8x build, quantized type, ncols fits). */
bool ds4_kernels_use_q8x(const ds4_kernels *k, uint32_t type, uint64_t ncols);

/* How many column splits ds4_matvec uses for this matrix (1: one plain
 * launch).  GPUs only: a matrix of few rows runs on few work-groups, so
 * its columns are split until the launch has enough groups to fill the
 * device; the splits' partial sums are then added in a second launch. */
uint32_t ds4_matvec_splits(const ds4_kernels *k, uint32_t type, uint64_t ncols, uint64_t nrows);

/* y[r] = sum_c W[r][c] * x[c], r < nrows (int8 activations when
 * ds4_kernels_use_q8x, else f32; split-K per ds4_matvec_splits). */
int ds4_matvec(ds4_kernels *k, uint32_t type, cl_mem w, uint64_t w_off, uint64_t ncols,
               uint64_t nrows, cl_mem x, uint64_t x_off, cl_mem y, uint64_t y_off, ds4_error *err);

/* Y[t][r] = sum_c W[r][c] * X[t][c] for t < ntok: X is ntok x ncols, Y is
 * ntok x nrows, both row-major. */
int ds4_matmul(ds4_kernels *k, uint32_t type, cl_mem w, uint64_t w_off, uint64_t ncols,
               uint64_t nrows, cl_mem x, uint64_t x_off, cl_mem y, uint64_t y_off, uint64_t ntok,
               ds4_error *err);

#endif
