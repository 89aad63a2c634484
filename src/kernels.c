/* kernels.c - builds the kernel program and enqueues matvec / matmul.
 *
 * Tuning.  The kernels of cl/matvec.cl take their work-group shape from
 * three build options (see cl/common.cl): MV_LANES work-items per weight
 * row, MV_ROWS rows per work-group and MM_TOKENS tokens per matmul
 * work-group.  ds4_kernels_init takes the device class's defaults from
 * src/tuning.c (CPU: one work-item per row, no barriers; GPUs: teams of
 * lanes per row), then $DS4CL_TUNING, then extra_options ("-DMV_LANES=64");
 * the values actually compiled in are parsed back so the host's work sizes
 * always match the reqd_work_group_size the kernels were built with.
 * GPU builds also get the split-K matvec (short wide matrices, see
 * ds4_matvec_splits) and, with -DMV_Q8X=1, the int8-activation matvecs.  Kernel-internal knobs
 * (MV_W, MV_VEC, MV_TABLES_LOCAL, see cl/common.cl) need nothing from the
 * host and simply pass through extra_options.
 *
 * Enqueue.  matvec runs one 1-D NDRange of ceil(nrows / MV_ROWS) groups of
 * MV_LANES * MV_ROWS work-items; matmul adds a second dimension of
 * ceil(ntok / MM_TOKENS) groups.  The kernels clamp and guard the ragged
 * edges themselves.  Nothing here allocates, waits or reads back.
 *
 * Invariants checked before every enqueue: the type has kernels, ncols is
 * whole blocks of the type, ncols / nrows / ntok fit the kernels' 32-bit
 * indices, and w_off / row bytes are aligned as the kernels read them
 * (4 bytes for F32, 2 for every other type).
 */
#include "kernels.h"

#include <stdlib.h>
#include <string.h>

#include "quant.h"
#include "tuning.h"

/* The weight types with kernels, and their kernel-name suffixes. */
static const struct {
    uint32_t type;
    const char *suffix;
} kernel_types[] = {
    {DS4_TYPE_F32, "f32"},   {DS4_TYPE_F16, "f16"},   {DS4_TYPE_BF16, "bf16"},
    {DS4_TYPE_Q8_0, "q8_0"}, {DS4_TYPE_Q2_K, "q2_k"}, {DS4_TYPE_Q4_K, "q4_k"},
    {DS4_TYPE_IQ2_XXS, "iq2_xxs"},
};
#define N_KERNEL_TYPES (sizeof(kernel_types) / sizeof(kernel_types[0]))

/* Largest dimension the kernels index with 32-bit integers. */
#define KERNEL_DIM_MAX 0x7fffffffULL

static int split_init(ds4_kernels *k, ds4_error *err);

static int is_pow2(int v) { return v > 0 && (v & (v - 1)) == 0; }

int ds4_kernels_init(ds4_kernels *k, ds4_runtime *rt, const char *extra_options, ds4_error *err) {
    memset(k, 0, sizeof(*k));
    k->rt = rt;
    /* Device class defaults (src/tuning.c), then $DS4CL_TUNING, then the
     * caller's options; the merged string defines each macro once and the
     * shape the kernels are compiled with is the one the host uses. */
    ds4_tuning tu;
    char opts[1024];
    if (ds4_tuning_for_device(&rt->dev, &tu, err) != 0) return -1;
    if (ds4_tuning_merge(&tu, extra_options, opts, sizeof(opts), err) != 0) return -1;
    if (tu.note[0] && rt->verbose)
        fprintf(stderr, "ds4cl: kernel tuning (%s): %s\n", ds4_tuning_class_name(tu.cls), tu.note);
    int lanes = tu.lanes, rows = tu.rows, tokens = tu.tokens;
    if (!is_pow2(lanes) || rows < 1 || tokens < 1)
        return ds4_fail(err, "bad kernel tuning MV_LANES=%d MV_ROWS=%d MM_TOKENS=%d", lanes, rows, tokens);
    if ((uint64_t)lanes * (uint64_t)rows > rt->dev.max_wg)
        return ds4_fail(err, "MV_LANES*MV_ROWS=%d exceeds the device's work-group limit %zu", lanes * rows,
                        rt->dev.max_wg);
    /* Local memory of the largest kernel: the matmul reduction (only when
     * lanes cooperate) plus the IQ2 grid copy (2 KiB, GPU builds). */
    uint64_t local_need = (lanes > 1 ? (uint64_t)lanes * rows * tokens * sizeof(float) : 0) + 2048;
    if (local_need > rt->dev.local_mem)
        return ds4_fail(err, "matmul kernels need %llu bytes of local memory, device has %llu",
                        (unsigned long long)local_need, (unsigned long long)rt->dev.local_mem);

    if (ds4_runtime_program(rt, opts, &k->program, err) != 0)
        return ds4_fail_wrap(err, "building kernels with \"%s\"", opts);
    k->q8x = strstr(opts, "-DMV_Q8X=1") != NULL;
    k->mv_lanes = lanes;
    k->mv_rows = rows;
    k->mm_tokens = tokens;

    for (size_t i = 0; i < N_KERNEL_TYPES; i++) {
        uint32_t t = kernel_types[i].type;
        for (int mm = 0; mm < 2; mm++) {
            char name[64];
            snprintf(name, sizeof(name), "%s_%s", mm ? "matmul" : "matvec", kernel_types[i].suffix);
            cl_int rc = CL_SUCCESS;
            cl_kernel kern = clCreateKernel(k->program, name, &rc);
            if (rc != CL_SUCCESS || !kern) {
                ds4_kernels_free(k);
                return ds4_fail(err, "clCreateKernel(%s) failed: %s", name, ds4_cl_strerror(rc));
            }
            if (mm) k->matmul[t] = kern;
            else k->matvec[t] = kern;
        }
        if (k->q8x && ds4_type_get(t)->block_size >= 32) {
            char name[64];
            snprintf(name, sizeof(name), "matvec8_%s", kernel_types[i].suffix);
            cl_int rc = CL_SUCCESS;
            k->matvec8[t] = clCreateKernel(k->program, name, &rc);
            if (rc != CL_SUCCESS || !k->matvec8[t]) {
                k->matvec8[t] = NULL;
                ds4_kernels_free(k);
                return ds4_fail(err, "clCreateKernel(%s) failed: %s", name, ds4_cl_strerror(rc));
            }
        }
    }
    if (lanes > 1 && split_init(k, err) != 0) {
        ds4_kernels_free(k);
        return -1;
    }
    return 0;
}

/* Create the split-K kernels and their scratch (GPU builds). */
static int split_init(ds4_kernels *k, ds4_error *err) {
    for (size_t i = 0; i < N_KERNEL_TYPES; i++) {
        char name[64];
        snprintf(name, sizeof(name), "matvec_split_%s", kernel_types[i].suffix);
        cl_int rc = CL_SUCCESS;
        k->matvec_split[kernel_types[i].type] = clCreateKernel(k->program, name, &rc);
        if (rc != CL_SUCCESS || !k->matvec_split[kernel_types[i].type]) {
            k->matvec_split[kernel_types[i].type] = NULL;
            return ds4_fail(err, "clCreateKernel(%s) failed: %s", name, ds4_cl_strerror(rc));
        }
    }
    cl_int rc = CL_SUCCESS;
    k->split_sum = clCreateKernel(k->program, "matvec_split_sum", &rc);
    if (rc != CL_SUCCESS || !k->split_sum) {
        k->split_sum = NULL;
        return ds4_fail(err, "clCreateKernel(matvec_split_sum) failed: %s", ds4_cl_strerror(rc));
    }
    return ds4_buffer_new(k->rt, DS4_SPLIT_FLOATS * sizeof(float), &k->split_buf, err);
}

bool ds4_kernels_use_q8x(const ds4_kernels *k, uint32_t type, uint64_t ncols) {
    return k->q8x && type < DS4_TYPE_COUNT && k->matvec8[type] && ncols <= DS4_Q8X_MAXCOLS && ncols % 32 == 0;
}

void ds4_kernels_free(ds4_kernels *k) {
    for (int t = 0; t < DS4_TYPE_COUNT; t++) {
        if (k->matvec[t]) clReleaseKernel(k->matvec[t]);
        if (k->matmul[t]) clReleaseKernel(k->matmul[t]);
        if (k->matvec8[t]) clReleaseKernel(k->matvec8[t]);
        if (k->matvec_split[t]) clReleaseKernel(k->matvec_split[t]);
        k->matvec[t] = k->matmul[t] = k->matvec8[t] = k->matvec_split[t] = NULL;
    }
    if (k->split_sum) clReleaseKernel(k->split_sum);
    if (k->split_buf) clReleaseMemObject(k->split_buf);
    k->split_sum = NULL;
    k->split_buf = NULL;
    /* The program belongs to the runtime's program table. */
    k->program = NULL;
}

bool ds4_kernels_has_type(const ds4_kernels *k, uint32_t type) {
    return type < DS4_TYPE_COUNT && k->matvec[type] != NULL && k->matmul[type] != NULL;
}

/* Validate a weight matrix for the kernels; on success *row_bytes is the
 * byte stride between rows. */
static int check_matrix(const ds4_kernels *k, const char *what, uint32_t type, uint64_t w_off,
                        uint64_t ncols, uint64_t nrows, uint64_t *row_bytes, ds4_error *err) {
    if (!ds4_kernels_has_type(k, type))
        return ds4_fail(err, "%s: no kernel for weight type %s", what, ds4_type_name(type));
    const ds4_type_traits *tr = ds4_type_get(type);
    if (ncols == 0 || nrows == 0) return ds4_fail(err, "%s: empty %llux%llu matrix", what,
                                                  (unsigned long long)nrows, (unsigned long long)ncols);
    if (ncols % tr->block_size != 0)
        return ds4_fail(err, "%s: ncols %llu is not a multiple of the %s block size %u", what,
                        (unsigned long long)ncols, tr->name, tr->block_size);
    if (ncols > KERNEL_DIM_MAX || nrows > KERNEL_DIM_MAX)
        return ds4_fail(err, "%s: %llux%llu matrix exceeds the kernels' 32-bit indices", what,
                        (unsigned long long)nrows, (unsigned long long)ncols);
    *row_bytes = ds4_row_bytes(type, ncols);
    uint64_t align = type == DS4_TYPE_F32 ? 4 : 2;
    if (w_off % align != 0 || *row_bytes % align != 0)
        return ds4_fail(err, "%s: %s weights at byte offset %llu are not %llu-byte aligned", what, tr->name,
                        (unsigned long long)w_off, (unsigned long long)align);
    return 0;
}

/* Set the arguments common to matvec and matmul (indices 0..8). */
static int set_common_args(cl_kernel kern, cl_mem w, uint64_t w_off, uint64_t row_bytes, uint64_t ncols,
                           uint64_t nrows, cl_mem x, uint64_t x_off, cl_mem y, uint64_t y_off,
                           ds4_error *err) {
    cl_ulong a_woff = w_off, a_rb = row_bytes, a_xoff = x_off, a_yoff = y_off;
    cl_uint a_nc = (cl_uint)ncols, a_nr = (cl_uint)nrows;
    DS4_CL_CHECK(clSetKernelArg(kern, 0, sizeof(cl_mem), &w), err);
    DS4_CL_CHECK(clSetKernelArg(kern, 1, sizeof(a_woff), &a_woff), err);
    DS4_CL_CHECK(clSetKernelArg(kern, 2, sizeof(a_rb), &a_rb), err);
    DS4_CL_CHECK(clSetKernelArg(kern, 3, sizeof(a_nc), &a_nc), err);
    DS4_CL_CHECK(clSetKernelArg(kern, 4, sizeof(a_nr), &a_nr), err);
    DS4_CL_CHECK(clSetKernelArg(kern, 5, sizeof(cl_mem), &x), err);
    DS4_CL_CHECK(clSetKernelArg(kern, 6, sizeof(a_xoff), &a_xoff), err);
    DS4_CL_CHECK(clSetKernelArg(kern, 7, sizeof(cl_mem), &y), err);
    DS4_CL_CHECK(clSetKernelArg(kern, 8, sizeof(a_yoff), &a_yoff), err);
    return 0;
}

/* Column width of one split: whole 256-value pieces, so every type's
 * blocks (and the float types' vector groups) stay whole. */
#define SPLIT_QUANTUM 256
/* Work-groups a launch should have to fill a large GPU.  Measured on an
 * H200 with ds4cl-bench (4-layer q2 bench model, 8 x 32 groups, int8
 * activations): splitting every matrix of fewer than 256 groups gave a
 * projected 37.5 t/s decode; splitting only below 16384 work-items (the
 * 4096-row matrices then ran unsplit on 128 groups) gave 34.0. */
#define SPLIT_TARGET_GROUPS 512

uint32_t ds4_matvec_splits(const ds4_kernels *k, uint32_t type, uint64_t ncols, uint64_t nrows) {
    if (!k->split_buf || type >= DS4_TYPE_COUNT || !k->matvec_split[type] || ncols < 2 * 1024) return 1;
    uint64_t groups = (nrows + (uint64_t)k->mv_rows - 1) / (uint64_t)k->mv_rows;
    if (groups >= SPLIT_TARGET_GROUPS / 2) return 1;
    uint64_t want = (SPLIT_TARGET_GROUPS + groups - 1) / groups;
    uint64_t most = ncols / 512;
    if (want > most) want = most;
    if (want > DS4_SPLIT_MAX) want = DS4_SPLIT_MAX;
    while (want > 1 && want * nrows > DS4_SPLIT_FLOATS) want--;
    if (want < 2) return 1;
    uint64_t cps = (ncols + want - 1) / want;
    cps = (cps + SPLIT_QUANTUM - 1) / SPLIT_QUANTUM * SPLIT_QUANTUM;
    return (uint32_t)((ncols + cps - 1) / cps);
}

static int matvec_split(ds4_kernels *k, uint32_t type, cl_mem w, uint64_t w_off, uint64_t row_bytes, uint64_t ncols,
                        uint64_t nrows, cl_mem x, uint64_t x_off, cl_mem y, uint64_t y_off, uint32_t nsplit,
                        ds4_error *err) {
    uint64_t cps = (ncols + nsplit - 1) / nsplit;
    cps = (cps + SPLIT_QUANTUM - 1) / SPLIT_QUANTUM * SPLIT_QUANTUM;
    cl_kernel kern = k->matvec_split[type];
    cl_ulong a_woff = w_off, a_rb = row_bytes, a_xoff = x_off, a_sb = ds4_row_bytes(type, cps), a_yoff = y_off;
    cl_uint a_nc = (cl_uint)ncols, a_nr = (cl_uint)nrows, a_cps = (cl_uint)cps, a_ns = nsplit;
    DS4_CL_CHECK(clSetKernelArg(kern, 0, sizeof(cl_mem), &w), err);
    DS4_CL_CHECK(clSetKernelArg(kern, 1, sizeof(a_woff), &a_woff), err);
    DS4_CL_CHECK(clSetKernelArg(kern, 2, sizeof(a_rb), &a_rb), err);
    DS4_CL_CHECK(clSetKernelArg(kern, 3, sizeof(a_nc), &a_nc), err);
    DS4_CL_CHECK(clSetKernelArg(kern, 4, sizeof(a_nr), &a_nr), err);
    DS4_CL_CHECK(clSetKernelArg(kern, 5, sizeof(cl_mem), &x), err);
    DS4_CL_CHECK(clSetKernelArg(kern, 6, sizeof(a_xoff), &a_xoff), err);
    DS4_CL_CHECK(clSetKernelArg(kern, 7, sizeof(cl_mem), &k->split_buf), err);
    DS4_CL_CHECK(clSetKernelArg(kern, 8, sizeof(a_cps), &a_cps), err);
    DS4_CL_CHECK(clSetKernelArg(kern, 9, sizeof(a_sb), &a_sb), err);
    uint64_t groups = (nrows + (uint64_t)k->mv_rows - 1) / (uint64_t)k->mv_rows;
    size_t local[2] = {(size_t)k->mv_lanes * (size_t)k->mv_rows, 1};
    size_t global[2] = {(size_t)groups * local[0], nsplit};
    if (ds4_enqueue(k->rt, kern, 2, global, local, row_bytes * nrows + (ncols + nsplit * nrows) * 4, err) != 0)
        return -1;
    DS4_CL_CHECK(clSetKernelArg(k->split_sum, 0, sizeof(cl_mem), &k->split_buf), err);
    DS4_CL_CHECK(clSetKernelArg(k->split_sum, 1, sizeof(a_ns), &a_ns), err);
    DS4_CL_CHECK(clSetKernelArg(k->split_sum, 2, sizeof(a_nr), &a_nr), err);
    DS4_CL_CHECK(clSetKernelArg(k->split_sum, 3, sizeof(cl_mem), &y), err);
    DS4_CL_CHECK(clSetKernelArg(k->split_sum, 4, sizeof(a_yoff), &a_yoff), err);
    size_t l1 = 64, g1 = (size_t)(nrows + 63) / 64 * 64;
    return ds4_enqueue(k->rt, k->split_sum, 1, &g1, &l1, (nsplit + 1) * nrows * 4, err);
}

int ds4_matvec(ds4_kernels *k, uint32_t type, cl_mem w, uint64_t w_off, uint64_t ncols, uint64_t nrows,
               cl_mem x, uint64_t x_off, cl_mem y, uint64_t y_off, ds4_error *err) {
    uint64_t row_bytes = 0;
    if (check_matrix(k, "matvec", type, w_off, ncols, nrows, &row_bytes, err) != 0) return -1;
    /* Short wide matrices split by columns (f32 activations); the rest go
     * through the int8-activation kernels when the build has them. */
    uint32_t nsplit = ds4_matvec_splits(k, type, ncols, nrows);
    if (nsplit > 1) return matvec_split(k, type, w, w_off, row_bytes, ncols, nrows, x, x_off, y, y_off, nsplit, err);
    cl_kernel kern = ds4_kernels_use_q8x(k, type, ncols) ? k->matvec8[type] : k->matvec[type];
    if (set_common_args(kern, w, w_off, row_bytes, ncols, nrows, x, x_off, y, y_off, err) != 0) return -1;
    uint64_t groups = (nrows + (uint64_t)k->mv_rows - 1) / (uint64_t)k->mv_rows;
    size_t local = (size_t)k->mv_lanes * (size_t)k->mv_rows;
    size_t global = (size_t)groups * local;
    return ds4_enqueue(k->rt, kern, 1, &global, &local, row_bytes * nrows + (ncols + nrows) * 4, err);
}

int ds4_matmul(ds4_kernels *k, uint32_t type, cl_mem w, uint64_t w_off, uint64_t ncols, uint64_t nrows,
               cl_mem x, uint64_t x_off, cl_mem y, uint64_t y_off, uint64_t ntok, ds4_error *err) {
    uint64_t row_bytes = 0;
    if (check_matrix(k, "matmul", type, w_off, ncols, nrows, &row_bytes, err) != 0) return -1;
    if (ntok == 0 || ntok > KERNEL_DIM_MAX)
        return ds4_fail(err, "matmul: token count %llu out of range", (unsigned long long)ntok);
    cl_kernel kern = k->matmul[type];
    if (set_common_args(kern, w, w_off, row_bytes, ncols, nrows, x, x_off, y, y_off, err) != 0) return -1;
    cl_uint a_ntok = (cl_uint)ntok;
    DS4_CL_CHECK(clSetKernelArg(kern, 9, sizeof(a_ntok), &a_ntok), err);
    uint64_t row_groups = (nrows + (uint64_t)k->mv_rows - 1) / (uint64_t)k->mv_rows;
    uint64_t tok_groups = (ntok + (uint64_t)k->mm_tokens - 1) / (uint64_t)k->mm_tokens;
    size_t local[2] = {(size_t)k->mv_lanes * (size_t)k->mv_rows, 1};
    size_t global[2] = {(size_t)row_groups * local[0], (size_t)tok_groups};
    return ds4_enqueue(k->rt, kern, 2, global, local, row_bytes * nrows + (ncols + nrows) * 4 * ntok, err);
}
