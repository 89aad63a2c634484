/* matmul_tiled.h - tiled GEMM for prefill (kernels: cl/matmul_tiled.cl).
 *
 * The same products as ds4_matmul (kernels.h) and the expert-grouped
 * ds4_op_moe_grouped / ds4_op_moe_gate_up with a plan (ops.h), computed by
 * work-groups that each own a GT_ROWS x GT_TOKS output tile and stage
 * 32-value slices of decoded weights and activations through local memory,
 * so each weight value is decoded once per GT_TOKS tokens (the matmul
 * kernels of cl/matvec.cl: once per MM_TOKENS).
 *
 * The kernels exist only in builds with MV_W == 8 (every GPU build; CPU
 * builds default to 16): ds4_tiled_available says whether k's program has
 * them, so a caller can fall back to ds4_matmul / the ops.  The tile shape
 * comes from the build options (-DGT_ROWS=, -DGT_TOKS=, -DGT_WG=, through
 * ds4_kernels_init's extra options or DS4CL_TUNING) and is parsed back by
 * ds4_tiled_init, which checks it against the kernels' compiled work-group
 * size and the device's limits.
 *
 * The grouped variants take a plan in ds4_op_moe_plan's layout but cut
 * into tiles of GT_TOKS slots: build it with ds4_tiled_plan and size it
 * with ds4_tiled_plan_ints (not ds4_moe_plan_ints with MM_TOKENS).
 *
 * Like every op: validated on the host (types, block multiples, alignment,
 * 32-bit indices, buffer extents), one enqueue through ds4_enqueue, no
 * host sync, no allocation.
 */
#ifndef DS4_MATMUL_TILED_H
#define DS4_MATMUL_TILED_H

#include "ops.h"

typedef struct ds4_tiled {
    ds4_kernels *k;
    int rows, toks, wg;        /* GT_ROWS, GT_TOKS, GT_WG of the program */
    cl_kernel gemm[40];        /* by GGML type id; NULL when absent */
    cl_kernel moe[40];
    cl_kernel moe_gu[40];      /* NULL when GT_RPT (rows per work-item) is odd */
    cl_kernel plan;
} ds4_tiled;

/* True when k's program holds the tiled kernels (built with MV_W == 8). */
bool ds4_tiled_available(const ds4_kernels *k);

/* Create the tiled kernels from k->program and read the tile shape back.
 * Fails (nothing held) when unavailable or the shape does not fit the
 * device.  ds4_tiled_free releases the kernels (safe on a zeroed struct). */
int ds4_tiled_init(ds4_tiled *t, ds4_kernels *k, ds4_error *err);
void ds4_tiled_free(ds4_tiled *t);

/* True when the dense / grouped kernels exist for this weight type. */
bool ds4_tiled_has_type(const ds4_tiled *t, uint32_t type);
/* True when the fused gate/up kernel exists for this type (shapes giving
 * each work-item an odd number of rows leave it out). */
bool ds4_tiled_has_gate_up(const ds4_tiled *t, uint32_t type);

/* Y[t][r] = sum_c W[r][c] * X[t][c] for t < ntok; X is ntok x ncols, Y
 * ntok x nrows, row-major (ds4_matmul's contract). */
int ds4_tiled_matmul(ds4_tiled *t, uint32_t type, cl_mem w, uint64_t w_off, uint64_t ncols, uint64_t nrows,
                     cl_mem x, uint64_t x_off, cl_mem y, uint64_t y_off, uint64_t ntok, ds4_error *err);

/* The same with row strides in floats: X[t] at x_off + t * x_stride
 * (x_stride >= ncols), Y[t] at y_off + t * y_stride (y_stride >= nrows);
 * the floats between rows are neither read nor written. */
int ds4_tiled_matmul_strided(ds4_tiled *t, uint32_t type, cl_mem w, uint64_t w_off, uint64_t ncols,
                             uint64_t nrows, cl_mem x, uint64_t x_off, uint64_t x_stride, cl_mem y, uint64_t y_off,
                             uint64_t y_stride, uint64_t ntok, ds4_error *err);

/* Ints of a plan of n_slots slots over n_expert experts in tiles of
 * GT_TOKS slots, and the most tiles it can hold (the grouped grids). */
uint64_t ds4_tiled_plan_ints(const ds4_tiled *t, uint32_t n_slots, uint32_t n_expert);
uint32_t ds4_tiled_plan_max_tiles(const ds4_tiled *t, uint32_t n_slots, uint32_t n_expert);

/* ds4_op_moe_plan with tiles of GT_TOKS slots: sort slots 0..n_slots-1
 * by expert sel[s] (int32 at sel_off) into plan (ds4_tiled_plan_ints
 * int32).  n_expert <= 1024. */
int ds4_tiled_plan(ds4_tiled *t, cl_mem sel, uint64_t sel_off, uint32_t n_slots, uint32_t n_expert, cl_mem plan,
                   ds4_error *err);

/* ds4_op_moe_grouped through a ds4_tiled_plan: y[s][r] = W[e(s)][r] .
 * x[xrow], xrow = s when x_per_slot else s / n_used, for every slot of the
 * plan.  W: 3-D [ncols, nrows, n_expert]. */
int ds4_tiled_moe(ds4_tiled *t, ds4_wref W, uint32_t ncols, uint32_t nrows, uint32_t n_expert, ds4_aref x,
                  int x_per_slot, uint32_t n_used, uint32_t n_slots, cl_mem plan, ds4_aref y, ds4_error *err);

/* ds4_op_moe_gate_up with a plan (prefill), through a ds4_tiled_plan of
 * the T * n_used slots: mid[s][r] = silu(min(g, c)) * clamp(u, -c, c) *
 * w[s], g = Wg[e][r] . x[s / n_used], u = Wu[e][r] . x[s / n_used]. */
int ds4_tiled_moe_gate_up(ds4_tiled *t, ds4_wref Wg, ds4_wref Wu, uint32_t ncols, uint32_t nrows, uint32_t n_expert,
                          ds4_aref x, uint32_t n_used, uint32_t T, ds4_aref w, float clamp, cl_mem plan,
                          ds4_aref mid, ds4_error *err);

#endif
