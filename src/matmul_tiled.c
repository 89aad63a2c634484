/* matmul_tiled.c - host side of the tiled GEMM kernels (matmul_tiled.h,
 * cl/matmul_tiled.cl).
 *
 * Shape.  The kernels are compiled with a tile of GT_ROWS rows x GT_TOKS
 * tokens per work-group of GT_WG work-items (defaults 64, 64, 256 in the
 * .cl file).  The host needs the same numbers for its grids, so
 * ds4_tiled_init reads them back from the build options the runtime kept
 * with k's program (the last -DGT_ROWS=... wins, as in the compiler) and
 * checks GT_WG against the kernels' reqd_work_group_size and every
 * kernel's own work-group and local-memory limits on the device.
 *
 * Grids.  Dense: dimension 0 is ceil(nrows / GT_ROWS) groups of GT_WG,
 * dimension 1 ceil(ntok / GT_TOKS) groups, so consecutive groups share one
 * token tile (its activations stay in cache) and stream the weights.
 * Grouped: dimension 1 is the most tiles the plan can hold; groups past
 * the plan's count return at once (the plan is built on the device).  The
 * fused gate/up groups each cover GT_ROWS / 2 rows of both tensors.
 *
 * Invariants checked before every enqueue (nothing is enqueued on a
 * failure, and the message names the op): the kernel exists for the type,
 * ncols is whole blocks, sizes fit the kernels' 32-bit indices, weights
 * are aligned as the decoders read them (4 bytes for F32, else 2), every
 * buffer range lies inside its cl_mem, and the plan buffer holds
 * ds4_tiled_plan_ints ints.
 */
#include "matmul_tiled.h"

#include <stdlib.h>
#include <string.h>

#include "ops_check.h"
#include "quant.h"

#define DIM_MAX 0x7fffffffULL
#define STRIDE_MAX 0xffffffffULL
#define PLAN_MAX_EXPERTS 1024 /* GT_PLAN_MAX_EXPERTS in cl/matmul_tiled.cl */
#define PLAN_WG 256           /* GT_PLAN_WG */

static const struct {
    uint32_t type;
    const char *suffix;
} tiled_types[] = {
    {DS4_TYPE_F32, "f32"},   {DS4_TYPE_F16, "f16"},   {DS4_TYPE_BF16, "bf16"},
    {DS4_TYPE_Q8_0, "q8_0"}, {DS4_TYPE_Q2_K, "q2_k"}, {DS4_TYPE_Q4_K, "q4_k"},
    {DS4_TYPE_IQ2_XXS, "iq2_xxs"},
};
#define N_TILED_TYPES (sizeof(tiled_types) / sizeof(tiled_types[0]))

/* ------------------------------------------------------------- init -- */

bool ds4_tiled_available(const ds4_kernels *k) {
    if (!k || !k->program) return false;
    cl_int rc = CL_SUCCESS;
    cl_kernel probe = clCreateKernel(k->program, "gemm_f32", &rc);
    if (rc != CL_SUCCESS || !probe) return false;
    clReleaseKernel(probe);
    return true;
}

/* Value of the last "-DNAME=<decimal>" in opts, or def; -1 when a value
 * is malformed or out of 1..4096. */
static int option_int(const char *opts, const char *name, int def) {
    char key[64];
    snprintf(key, sizeof(key), "-D%s=", name);
    size_t klen = strlen(key);
    int val = def;
    for (const char *p = strstr(opts, key); p; p = strstr(p + klen, key)) {
        if (p != opts && p[-1] != ' ' && p[-1] != '\t') continue;
        char *end = NULL;
        long v = strtol(p + klen, &end, 10);
        if (end == p + klen || (*end && *end != ' ' && *end != '\t') || v < 1 || v > 4096) return -1;
        val = (int)v;
    }
    return val;
}

/* The build options the runtime kept for k's program. */
static const char *program_options(const ds4_kernels *k) {
    for (int i = 0; i < k->rt->n_programs; i++)
        if (k->rt->programs[i].program == k->program) return k->rt->programs[i].options;
    return NULL;
}

static int create(ds4_tiled *t, const char *name, cl_kernel *out, ds4_error *err) {
    cl_int rc = CL_SUCCESS;
    *out = clCreateKernel(t->k->program, name, &rc);
    if (rc != CL_SUCCESS || !*out) {
        *out = NULL;
        return ds4_fail(err, "clCreateKernel(%s) failed: %s", name, ds4_cl_strerror(rc));
    }
    return 0;
}

/* The kernel runs with GT_WG work-items on this device: compiled for that
 * size, within its register-bound limit and the device's local memory. */
static int check_kernel_fits(const ds4_tiled *t, cl_kernel kern, const char *name, ds4_error *err) {
    cl_device_id dev = t->k->rt->dev.device;
    size_t compiled[3] = {0, 0, 0}, max_wg = 0;
    cl_ulong local = 0;
    DS4_CL_CHECK(clGetKernelWorkGroupInfo(kern, dev, CL_KERNEL_COMPILE_WORK_GROUP_SIZE, sizeof(compiled), compiled,
                                          NULL), err);
    DS4_CL_CHECK(clGetKernelWorkGroupInfo(kern, dev, CL_KERNEL_WORK_GROUP_SIZE, sizeof(max_wg), &max_wg, NULL), err);
    DS4_CL_CHECK(clGetKernelWorkGroupInfo(kern, dev, CL_KERNEL_LOCAL_MEM_SIZE, sizeof(local), &local, NULL), err);
    if (compiled[0] != (size_t)t->wg)
        return ds4_fail(err, "%s was compiled for %zu work-items, the build options say GT_WG=%d", name, compiled[0],
                        t->wg);
    if (max_wg < (size_t)t->wg)
        return ds4_fail(err, "%s: GT_WG=%d exceeds the kernel's work-group limit %zu on this device", name, t->wg,
                        max_wg);
    if (local > t->k->rt->dev.local_mem)
        return ds4_fail(err, "%s needs %llu bytes of local memory, the device has %llu", name,
                        (unsigned long long)local, (unsigned long long)t->k->rt->dev.local_mem);
    return 0;
}

static int tiled_init(ds4_tiled *t, ds4_kernels *k, ds4_error *err) {
    t->k = k;
    if (!k || !k->program || !k->rt) return ds4_fail(err, "tiled gemm: no kernel program");
    if (!ds4_tiled_available(k))
        return ds4_fail(err, "tiled gemm: the program has no tiled kernels (they need MV_W == 8, a GPU build)");
    const char *opts = program_options(k);
    if (!opts) return ds4_fail(err, "tiled gemm: the program's build options are unknown");
    t->rows = option_int(opts, "GT_ROWS", 64);
    t->toks = option_int(opts, "GT_TOKS", 64);
    t->wg = option_int(opts, "GT_WG", 256);
    if (t->rows < 0 || t->toks < 0 || t->wg < 0)
        return ds4_fail(err, "tiled gemm: GT_ROWS / GT_TOKS / GT_WG in \"%s\" must be integers in 1..4096", opts);
    if ((size_t)t->wg > k->rt->dev.max_wg)
        return ds4_fail(err, "tiled gemm: GT_WG=%d exceeds the device's work-group limit %zu", t->wg,
                        k->rt->dev.max_wg);
    if (create(t, "gemm_plan", &t->plan, err) != 0) return -1;
    for (size_t i = 0; i < N_TILED_TYPES; i++) {
        uint32_t ty = tiled_types[i].type;
        char name[64];
        snprintf(name, sizeof(name), "gemm_%s", tiled_types[i].suffix);
        if (create(t, name, &t->gemm[ty], err) != 0 || check_kernel_fits(t, t->gemm[ty], name, err) != 0) return -1;
        snprintf(name, sizeof(name), "gemm_moe_%s", tiled_types[i].suffix);
        if (create(t, name, &t->moe[ty], err) != 0 || check_kernel_fits(t, t->moe[ty], name, err) != 0) return -1;
        /* absent when the work-item's row count is odd (cl file) */
        snprintf(name, sizeof(name), "gemm_moe_gu_%s", tiled_types[i].suffix);
        cl_int rc = CL_SUCCESS;
        t->moe_gu[ty] = clCreateKernel(k->program, name, &rc);
        if (rc == CL_INVALID_KERNEL_NAME) {
            t->moe_gu[ty] = NULL;
            continue;
        }
        if (rc != CL_SUCCESS || !t->moe_gu[ty]) {
            t->moe_gu[ty] = NULL;
            return ds4_fail(err, "clCreateKernel(%s) failed: %s", name, ds4_cl_strerror(rc));
        }
        if (check_kernel_fits(t, t->moe_gu[ty], name, err) != 0) return -1;
    }
    return 0;
}

int ds4_tiled_init(ds4_tiled *t, ds4_kernels *k, ds4_error *err) {
    memset(t, 0, sizeof(*t));
    if (tiled_init(t, k, err) != 0) {
        ds4_tiled_free(t);
        return -1;
    }
    return 0;
}

static void release(cl_kernel *kern) {
    if (*kern) clReleaseKernel(*kern);
    *kern = NULL;
}

void ds4_tiled_free(ds4_tiled *t) {
    for (int i = 0; i < DS4_TYPE_COUNT; i++) {
        release(&t->gemm[i]);
        release(&t->moe[i]);
        release(&t->moe_gu[i]);
    }
    release(&t->plan);
    t->k = NULL;
}

bool ds4_tiled_has_type(const ds4_tiled *t, uint32_t type) {
    return type < DS4_TYPE_COUNT && t->gemm[type] != NULL && t->moe[type] != NULL;
}

bool ds4_tiled_has_gate_up(const ds4_tiled *t, uint32_t type) {
    return type < DS4_TYPE_COUNT && t->moe_gu[type] != NULL;
}

/* ----------------------------------------------------------- checks -- */

/* A weight type with kernels, ncols whole blocks, sizes within 32-bit
 * indices, aligned offset, n_slabs * nrows rows inside W's buffer; gives
 * the row stride. */
static int check_weights(const ds4_tiled *t, const char *op, ds4_wref W, uint64_t ncols, uint64_t nrows,
                         uint64_t n_slabs, uint64_t *row_bytes, ds4_error *err) {
    const ds4_type_traits *tr = ds4_type_get(W.type);
    if (!tr || !ds4_tiled_has_type(t, W.type))
        return ds4_fail(err, "%s: no kernel for weight type %s", op, ds4_type_name(W.type));
    if (ncols == 0 || nrows == 0 || n_slabs == 0)
        return ds4_fail(err, "%s: empty weights (ncols %llu, nrows %llu, n_expert %llu)", op,
                        (unsigned long long)ncols, (unsigned long long)nrows, (unsigned long long)n_slabs);
    if (ncols % tr->block_size != 0)
        return ds4_fail(err, "%s: ncols %llu is not a multiple of the %s block size %u", op,
                        (unsigned long long)ncols, tr->name, tr->block_size);
    if (ncols > DIM_MAX || nrows > DIM_MAX || n_slabs > DIM_MAX)
        return ds4_fail(err, "%s: sizes exceed the kernels' 32-bit indices", op);
    *row_bytes = ds4_row_bytes(W.type, ncols);
    uint64_t align = W.type == DS4_TYPE_F32 ? 4 : 2;
    if (W.off % align != 0 || *row_bytes % align != 0)
        return ds4_fail(err, "%s: %s weights at byte offset %llu are not %llu-byte aligned", op, tr->name,
                        (unsigned long long)W.off, (unsigned long long)align);
    return ds4_ops_check_mem(op, "W", W.mem, W.off, n_slabs * nrows * *row_bytes, err);
}

static size_t row_groups(const ds4_tiled *t, uint64_t nrows) {
    return (size_t)((nrows + (uint64_t)t->rows - 1) / (uint64_t)t->rows);
}

static int enqueue(const ds4_tiled *t, cl_kernel kern, const char *op, const size_t *global, uint64_t bytes,
                   ds4_error *err) {
    size_t local[2] = {(size_t)t->wg, 1};
    if (ds4_enqueue(t->k->rt, kern, 2, global, local, bytes, err) != 0) return ds4_fail_wrap(err, "%s", op);
    return 0;
}

static int check_ready(const ds4_tiled *t, const char *op, ds4_error *err) {
    if (!t->k || !t->plan) return ds4_fail(err, "%s: tiled kernels not created (ds4_tiled_init)", op);
    return 0;
}

/* ------------------------------------------------------------ dense -- */

int ds4_tiled_matmul_strided(ds4_tiled *t, uint32_t type, cl_mem w, uint64_t w_off, uint64_t ncols,
                             uint64_t nrows, cl_mem x, uint64_t x_off, uint64_t x_stride, cl_mem y, uint64_t y_off,
                             uint64_t y_stride, uint64_t ntok, ds4_error *err) {
    const char *op = "tiled_matmul";
    uint64_t rb = 0;
    if (check_ready(t, op, err) != 0) return -1;
    ds4_wref W = {w, w_off, type};
    if (check_weights(t, op, W, ncols, nrows, 1, &rb, err) != 0) return -1;
    if (ntok == 0 || ntok > DIM_MAX)
        return ds4_fail(err, "%s: token count %llu out of range", op, (unsigned long long)ntok);
    if (x_stride < ncols || y_stride < nrows || x_stride > STRIDE_MAX || y_stride > STRIDE_MAX)
        return ds4_fail(err, "%s: strides x %llu, y %llu must be at least ncols %llu, nrows %llu (and below 2^32)",
                        op, (unsigned long long)x_stride, (unsigned long long)y_stride, (unsigned long long)ncols,
                        (unsigned long long)nrows);
    ds4_aref X = {x, x_off}, Y = {y, y_off};
    if (ds4_ops_check_aref(op, "x", X, (ntok - 1) * x_stride + ncols, err) != 0 ||
        ds4_ops_check_aref(op, "y", Y, (ntok - 1) * y_stride + nrows, err) != 0)
        return -1;
    cl_kernel kern = t->gemm[type];
    cl_ulong a_w = w_off, a_rb = rb, a_x = x_off, a_xs = x_stride, a_y = y_off, a_ys = y_stride;
    cl_uint a_nc = (cl_uint)ncols, a_nr = (cl_uint)nrows, a_nt = (cl_uint)ntok;
    const karg args[] = {KA(w), KA(a_w), KA(a_rb), KA(a_nc), KA(a_nr), KA(x),
                         KA(a_x), KA(a_xs), KA(y), KA(a_y), KA(a_ys), KA(a_nt)};
    if (ds4_ops_set_args(kern, op, args, (int)(sizeof(args) / sizeof(args[0])), err) != 0) return -1;
    size_t global[2] = {row_groups(t, nrows) * (size_t)t->wg,
                        (size_t)((ntok + (uint64_t)t->toks - 1) / (uint64_t)t->toks)};
    return enqueue(t, kern, op, global, rb * nrows + (ncols + nrows) * 4 * ntok, err);
}

int ds4_tiled_matmul(ds4_tiled *t, uint32_t type, cl_mem w, uint64_t w_off, uint64_t ncols, uint64_t nrows,
                     cl_mem x, uint64_t x_off, cl_mem y, uint64_t y_off, uint64_t ntok, ds4_error *err) {
    return ds4_tiled_matmul_strided(t, type, w, w_off, ncols, nrows, x, x_off, ncols, y, y_off, nrows, ntok, err);
}

/* ------------------------------------------------------------- plan -- */

uint64_t ds4_tiled_plan_ints(const ds4_tiled *t, uint32_t n_slots, uint32_t n_expert) {
    return ds4_moe_plan_ints(n_slots, n_expert, (uint32_t)t->toks);
}

uint32_t ds4_tiled_plan_max_tiles(const ds4_tiled *t, uint32_t n_slots, uint32_t n_expert) {
    return ds4_moe_plan_max_tiles(n_slots, n_expert, (uint32_t)t->toks);
}

int ds4_tiled_plan(ds4_tiled *t, cl_mem sel, uint64_t sel_off, uint32_t n_slots, uint32_t n_expert, cl_mem plan,
                   ds4_error *err) {
    const char *op = "tiled_plan";
    if (check_ready(t, op, err) != 0) return -1;
    if (n_slots == 0 || n_expert == 0 || n_expert > PLAN_MAX_EXPERTS || n_slots > DIM_MAX / 4)
        return ds4_fail(err, "%s: %u slots over %u experts (1..%u experts)", op, n_slots, n_expert,
                        PLAN_MAX_EXPERTS);
    if (sel_off > (UINT64_MAX >> 3)) return ds4_fail(err, "%s: sel offset out of range", op);
    if (ds4_ops_check_mem(op, "sel", sel, sel_off * 4, (uint64_t)n_slots * 4, err) != 0 ||
        ds4_ops_check_mem(op, "plan", plan, 0, ds4_tiled_plan_ints(t, n_slots, n_expert) * 4, err) != 0)
        return -1;
    cl_ulong a_off = sel_off;
    cl_uint a_ns = n_slots, a_ne = n_expert, a_tile = (cl_uint)t->toks;
    const karg args[] = {KA(sel), KA(a_off), KA(a_ns), KA(a_ne), KA(a_tile), KA(plan)};
    if (ds4_ops_set_args(t->plan, op, args, 6, err) != 0) return -1;
    size_t global = PLAN_WG, local = PLAN_WG;
    if (ds4_enqueue(t->k->rt, t->plan, 1, &global, &local, (uint64_t)n_slots * 12, err) != 0)
        return ds4_fail_wrap(err, "%s", op);
    return 0;
}

/* ---------------------------------------------------------- grouped -- */

int ds4_tiled_moe(ds4_tiled *t, ds4_wref W, uint32_t ncols, uint32_t nrows, uint32_t n_expert, ds4_aref x,
                  int x_per_slot, uint32_t n_used, uint32_t n_slots, cl_mem plan, ds4_aref y, ds4_error *err) {
    const char *op = "tiled_moe";
    uint64_t rb = 0;
    if (check_ready(t, op, err) != 0 || check_weights(t, op, W, ncols, nrows, n_expert, &rb, err) != 0) return -1;
    if (n_used == 0 || n_slots == 0 || n_slots % n_used != 0 || n_slots > DIM_MAX / 4)
        return ds4_fail(err, "%s: bad slot count (%u slots, n_used %u)", op, n_slots, n_used);
    if (x_per_slot != 0 && x_per_slot != 1) return ds4_fail(err, "%s: x_per_slot %d is not 0 or 1", op, x_per_slot);
    uint64_t x_rows = x_per_slot ? n_slots : n_slots / n_used;
    if (ds4_ops_check_aref(op, "x", x, x_rows * ncols, err) != 0 ||
        ds4_ops_check_aref(op, "y", y, (uint64_t)n_slots * nrows, err) != 0 ||
        ds4_ops_check_mem(op, "plan", plan, 0, ds4_tiled_plan_ints(t, n_slots, n_expert) * 4, err) != 0)
        return -1;
    cl_ulong a_w = W.off, a_rb = rb, a_x = x.off, a_y = y.off;
    cl_uint a_nc = ncols, a_nr = nrows, a_ne = n_expert, a_xps = (cl_uint)x_per_slot, a_nu = n_used, a_ns = n_slots;
    const karg args[] = {KA(W.mem), KA(a_w),   KA(a_rb), KA(a_nc), KA(a_nr), KA(a_ne),  KA(x.mem),
                         KA(a_x),   KA(a_xps), KA(a_nu), KA(plan), KA(a_ns), KA(y.mem), KA(a_y)};
    cl_kernel kern = t->moe[W.type];
    if (ds4_ops_set_args(kern, op, args, (int)(sizeof(args) / sizeof(args[0])), err) != 0) return -1;
    size_t global[2] = {row_groups(t, nrows) * (size_t)t->wg, (size_t)ds4_tiled_plan_max_tiles(t, n_slots, n_expert)};
    uint64_t experts = n_slots < n_expert ? n_slots : n_expert;
    uint64_t bytes = experts * nrows * rb + (x_rows * ncols + (uint64_t)n_slots * nrows) * 4;
    return enqueue(t, kern, op, global, bytes, err);
}

int ds4_tiled_moe_gate_up(ds4_tiled *t, ds4_wref Wg, ds4_wref Wu, uint32_t ncols, uint32_t nrows, uint32_t n_expert,
                          ds4_aref x, uint32_t n_used, uint32_t T, ds4_aref w, float clamp, cl_mem plan,
                          ds4_aref mid, ds4_error *err) {
    const char *op = "tiled_moe_gate_up";
    uint64_t rb = 0, rb_u = 0;
    if (check_ready(t, op, err) != 0 || check_weights(t, op, Wg, ncols, nrows, n_expert, &rb, err) != 0 ||
        check_weights(t, op, Wu, ncols, nrows, n_expert, &rb_u, err) != 0)
        return -1;
    if (Wg.type != Wu.type) return ds4_fail(err, "%s: gate and up types differ", op);
    if (!ds4_tiled_has_gate_up(t, Wg.type))
        return ds4_fail(err, "%s: no fused gate/up kernel in this build (GT_ROWS=%d GT_TOKS=%d GT_WG=%d give each "
                        "work-item an odd number of rows)", op, t->rows, t->toks, t->wg);
    if (n_used == 0 || T == 0 || (uint64_t)T * n_used > DIM_MAX / 4)
        return ds4_fail(err, "%s: bad slot count (T %u, n_used %u)", op, T, n_used);
    const uint32_t slots = T * n_used;
    if (ds4_ops_check_aref(op, "x", x, (uint64_t)T * ncols, err) != 0 ||
        ds4_ops_check_aref(op, "w", w, slots, err) != 0 ||
        ds4_ops_check_aref(op, "mid", mid, (uint64_t)slots * nrows, err) != 0 ||
        ds4_ops_check_mem(op, "plan", plan, 0, ds4_tiled_plan_ints(t, slots, n_expert) * 4, err) != 0)
        return -1;
    cl_ulong a_wg = Wg.off, a_wu = Wu.off, a_rb = rb, a_x = x.off, a_ew = w.off, a_mid = mid.off;
    cl_uint a_nc = ncols, a_nr = nrows, a_ne = n_expert, a_nu = n_used, a_ns = slots;
    const karg args[] = {KA(Wg.mem), KA(a_wg),  KA(Wu.mem), KA(a_wu), KA(a_rb),  KA(a_nc),    KA(a_nr),
                         KA(a_ne),   KA(x.mem), KA(a_x),    KA(a_nu), KA(plan),  KA(a_ns),    KA(w.mem),
                         KA(a_ew),   KA(clamp), KA(mid.mem), KA(a_mid)};
    cl_kernel kern = t->moe_gu[Wg.type];
    if (ds4_ops_set_args(kern, op, args, (int)(sizeof(args) / sizeof(args[0])), err) != 0) return -1;
    /* a group covers GT_ROWS / 2 rows of gate and the same rows of up */
    size_t gu_groups = (size_t)((nrows + (uint64_t)(t->rows / 2) - 1) / (uint64_t)(t->rows / 2));
    size_t global[2] = {gu_groups * (size_t)t->wg, (size_t)ds4_tiled_plan_max_tiles(t, slots, n_expert)};
    uint64_t experts = slots < n_expert ? slots : n_expert;
    uint64_t bytes = 2 * experts * nrows * rb + (uint64_t)slots * ((uint64_t)ncols + nrows) * 4;
    return enqueue(t, kern, op, global, bytes, err);
}
