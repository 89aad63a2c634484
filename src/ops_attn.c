/* ops_attn.c - the attention-side ops of the forward pass (see ops.h):
 * the streaming compressor, the lightning-indexer scores, the per-token
 * top-k, attention with sinks, and the routed expert products.
 *
 * Each op validates its arguments, sets the kernel's arguments and enqueues
 * one kernel on the runtime's in-order queue; nothing here allocates,
 * waits or reads back.  The kernels live in cl/compressor.cl,
 * cl/indexer.cl, cl/attention.cl and cl/moe_matmul.cl; their semantics and
 * work decomposition are documented there.
 *
 * Invariants checked before every enqueue (a bad call fails with a message
 * naming the op and enqueues nothing):
 *   - the kernel exists (ds4_ops_attn_init ran) and sizes are non-zero and
 *     fit the kernels' 32-bit indices (positions included);
 *   - every byte the kernel may touch lies inside its buffer (CL_MEM_SIZE),
 *     counting offsets in floats for ds4_aref, int32 for sel, bytes for
 *     weights;
 *   - weight types are ones the kernels decode, at offsets aligned as the
 *     kernels read them (4 bytes for F32, 2 for the others);
 *   - op-specific sense: compressor ratio 4 or 128 and an out_first not past
 *     the first emitted row; attention head width <= ATT_DMAX, indexer row
 *     width <= IDX_DMAX, and a ring that still holds every raw row the
 *     chunk's tokens need.
 * Work-group sizes are read back from each kernel's reqd_work_group_size
 * (CL_KERNEL_COMPILE_WORK_GROUP_SIZE), so build options may retune them
 * (-DATT_WG, -DATT_TEAMS, -DTOPK_WG, -DIDX_WG, -DIDX_HC, -DCOMP_WG); the
 * MoE kernels use matvec's MV_LANES x MV_ROWS shape from ds4_kernels.
 */
#include "ops.h"
#include "ops_check.h"

#include <string.h>

#include "quant.h"

/* Largest attention head width (cl/attention.cl's ATT_DMAX) and indexer
 * row width (cl/indexer.cl's IDX_DMAX). */
#define ATT_DMAX 512
#define IDX_DMAX 128
/* Split-KV decode: partials scratch (floats) and the most splits; a
 * launch is split until it has about ATT_SPLIT_GROUPS work-groups, each
 * split keeping at least ATT_SPLIT_ROWS candidate rows. */
#define ATT_PART_FLOATS (1u << 20)
#define ATT_MAX_SPLITS 16
#define ATT_SPLIT_GROUPS 512
#define ATT_SPLIT_ROWS 64
/* Largest size or position the kernels index with 32-bit integers. */
#define DIM_MAX 0x7fffffffULL

/* The weight types with MoE kernels, and their kernel-name suffixes. */
static const struct {
    uint32_t type;
    const char *suffix;
} moe_types[] = {
    {DS4_TYPE_F32, "f32"},   {DS4_TYPE_F16, "f16"},   {DS4_TYPE_BF16, "bf16"},
    {DS4_TYPE_Q8_0, "q8_0"}, {DS4_TYPE_Q2_K, "q2_k"}, {DS4_TYPE_Q4_K, "q4_k"},
    {DS4_TYPE_IQ2_XXS, "iq2_xxs"},
};
#define N_MOE_TYPES (sizeof(moe_types) / sizeof(moe_types[0]))

/* ------------------------------------------------------------ helpers -- */

int ds4_ops_set_args(cl_kernel kern, const char *op, const karg *a, int n, ds4_error *err) {
    for (int i = 0; i < n; i++) {
        cl_int rc = clSetKernelArg(kern, (cl_uint)i, a[i].size, a[i].ptr);
        if (rc != CL_SUCCESS)
            return ds4_fail(err, "%s: clSetKernelArg(%d) failed: %s", op, i, ds4_cl_strerror(rc));
    }
    return 0;
}

/* The work-group size the kernel was compiled for. */
static int kernel_wg(const ds4_ops *ops, cl_kernel kern, const char *op, size_t *wg, ds4_error *err) {
    size_t s[3] = {0, 0, 0};
    cl_int rc = clGetKernelWorkGroupInfo(kern, ops->rt->dev.device, CL_KERNEL_COMPILE_WORK_GROUP_SIZE,
                                         sizeof(s), s, NULL);
    if (rc != CL_SUCCESS)
        return ds4_fail(err, "%s: clGetKernelWorkGroupInfo failed: %s", op, ds4_cl_strerror(rc));
    if (s[0] == 0) return ds4_fail(err, "%s: kernel has no reqd_work_group_size", op);
    *wg = s[0];
    return 0;
}

static size_t round_up(uint64_t n, size_t m) { return (size_t)((n + m - 1) / m * m); }

/* a * b, or UINT64_MAX when it overflows (then always "too large"). */
static uint64_t mul_sat(uint64_t a, uint64_t b) { return a != 0 && b > UINT64_MAX / a ? UINT64_MAX : a * b; }

/* Enqueue through the runtime (profiled when on); bytes: the launch's
 * expected traffic for the profiler, 0 when not estimated. */
static int enqueue_b(const ds4_ops *ops, cl_kernel kern, const char *op, cl_uint dims, const size_t *global,
                     const size_t *local, uint64_t bytes, ds4_error *err) {
    if (ds4_enqueue(ops->rt, kern, dims, global, local, bytes, err) != 0) return ds4_fail_wrap(err, "%s", op);
    return 0;
}

static int enqueue(const ds4_ops *ops, cl_kernel kern, const char *op, cl_uint dims, const size_t *global,
                   const size_t *local, ds4_error *err) {
    return enqueue_b(ops, kern, op, dims, global, local, 0, err);
}

/* Bytes [off, off + bytes) must lie inside buffer m. */
int ds4_ops_check_mem(const char *op, const char *what, cl_mem m, uint64_t off, uint64_t bytes, ds4_error *err) {
    if (!m) return ds4_fail(err, "%s: %s buffer is NULL", op, what);
    size_t size = 0;
    cl_int rc = clGetMemObjectInfo(m, CL_MEM_SIZE, sizeof(size), &size, NULL);
    if (rc != CL_SUCCESS)
        return ds4_fail(err, "%s: clGetMemObjectInfo(%s) failed: %s", op, what, ds4_cl_strerror(rc));
    if (off > (uint64_t)size || bytes > (uint64_t)size - off)
        return ds4_fail(err, "%s: %s needs bytes %llu..%llu but its buffer holds %llu", op, what,
                        (unsigned long long)off, (unsigned long long)(off + bytes), (unsigned long long)size);
    return 0;
}

/* n floats from a.off (counted in floats) must lie inside a.mem. */
int ds4_ops_check_aref(const char *op, const char *what, ds4_aref a, uint64_t n, ds4_error *err) {
    if (a.off > (UINT64_MAX >> 3) || n > (UINT64_MAX >> 3))
        return ds4_fail(err, "%s: %s offset or size out of range", op, what);
    return ds4_ops_check_mem(op, what, a.mem, a.off * sizeof(float), n * sizeof(float), err);
}

/* A small weight vector of F32 / F16 / BF16 with n elements. */
static int check_small_weight(const char *op, const char *what, ds4_wref w, uint64_t n, bool f32_only,
                              ds4_error *err) {
    uint64_t esize;
    if (w.type == DS4_TYPE_F32) esize = 4;
    else if (!f32_only && (w.type == DS4_TYPE_F16 || w.type == DS4_TYPE_BF16)) esize = 2;
    else return ds4_fail(err, "%s: %s has unsupported type %s", op, what, ds4_type_name(w.type));
    if (w.off % esize != 0)
        return ds4_fail(err, "%s: %s at byte offset %llu is not %llu-byte aligned", op, what,
                        (unsigned long long)w.off, (unsigned long long)esize);
    return ds4_ops_check_mem(op, what, w.mem, w.off, n * esize, err);
}

static int check_kernel(cl_kernel kern, const char *op, ds4_error *err) {
    if (!kern) return ds4_fail(err, "%s: kernel not created (ds4_ops_attn_init)", op);
    return 0;
}

/* --------------------------------------------------------------- init -- */

static int create(ds4_ops *ops, const char *name, cl_kernel *out, ds4_error *err) {
    cl_int rc = CL_SUCCESS;
    *out = clCreateKernel(ops->k->program, name, &rc);
    if (rc != CL_SUCCESS || !*out) {
        *out = NULL;
        return ds4_fail(err, "clCreateKernel(%s) failed: %s", name, ds4_cl_strerror(rc));
    }
    return 0;
}

int ds4_ops_attn_init(ds4_ops *ops, ds4_error *err) {
    if (!ops->k || !ops->rt || !ops->k->program) return ds4_fail(err, "ds4_ops_attn_init: no kernel program");
    int rc = create(ops, "comp_update", &ops->comp_update, err);
    if (rc == 0) rc = create(ops, "indexer_scores", &ops->indexer_scores, err);
    if (rc == 0) rc = create(ops, "topk", &ops->topk, err);
    if (rc == 0) rc = create(ops, "attention", &ops->attention, err);
    if (rc == 0) rc = create(ops, "attention_combine", &ops->attention_combine, err);
    /* Split-KV decode only in builds with cooperating lanes (GPUs, and the
     * tests' GPU-style variant on PoCL): CPUs have few compute units. */
    if (rc == 0 && ops->k->mv_lanes > 1)
        rc = ds4_buffer_new(ops->rt, (uint64_t)ATT_PART_FLOATS * sizeof(float), &ops->att_part, err);
    for (size_t i = 0; rc == 0 && i < N_MOE_TYPES; i++) {
        char name[64];
        snprintf(name, sizeof(name), "moe_matmul_%s", moe_types[i].suffix);
        rc = create(ops, name, &ops->moe_matmul[moe_types[i].type], err);
    }
    if (rc == 0) return 0;
    /* Release what was created; the caller's ds4_ops_free sees NULLs. */
    cl_kernel *mine[] = {&ops->comp_update, &ops->indexer_scores, &ops->topk, &ops->attention,
                         &ops->attention_combine};
    if (ops->att_part) clReleaseMemObject(ops->att_part);
    ops->att_part = NULL;
    for (size_t i = 0; i < sizeof(mine) / sizeof(mine[0]); i++)
        if (*mine[i]) {
            clReleaseKernel(*mine[i]);
            *mine[i] = NULL;
        }
    for (size_t i = 0; i < N_MOE_TYPES; i++)
        if (ops->moe_matmul[moe_types[i].type]) {
            clReleaseKernel(ops->moe_matmul[moe_types[i].type]);
            ops->moe_matmul[moe_types[i].type] = NULL;
        }
    return -1;
}

/* --------------------------------------------------------- compressor -- */

int ds4_op_comp_update(ds4_ops *ops, ds4_aref kv, ds4_aref sc, ds4_wref ape, ds4_aref state_kv,
                       ds4_aref state_sc, uint32_t D, uint32_t ratio, uint32_t pos0, uint32_t T, ds4_aref out,
                       uint32_t out_first, ds4_error *err) {
    const char *op = "comp_update";
    if (check_kernel(ops->comp_update, op, err) != 0) return -1;
    if (ratio != 4 && ratio != 128) return ds4_fail(err, "%s: ratio %u is not 4 or 128", op, ratio);
    if (D == 0 || T == 0) return ds4_fail(err, "%s: empty call (D %u, T %u)", op, D, T);
    const uint64_t W = ratio == 4 ? 2ULL * D : D, rows = ratio == 4 ? 8 : 128;
    if ((uint64_t)T * W > DIM_MAX || rows * W > DIM_MAX || (uint64_t)pos0 + T > DIM_MAX)
        return ds4_fail(err, "%s: D %u, T %u, pos0 %u exceed the kernel's 32-bit indices", op, D, T, pos0);
    if (check_small_weight(op, "ape", ape, (uint64_t)ratio * W, false, err) != 0) return -1;
    if (ds4_ops_check_aref(op, "kv", kv, (uint64_t)T * W, err) != 0 || ds4_ops_check_aref(op, "sc", sc, (uint64_t)T * W, err) != 0 ||
        ds4_ops_check_aref(op, "state_kv", state_kv, rows * W, err) != 0 ||
        ds4_ops_check_aref(op, "state_sc", state_sc, rows * W, err) != 0)
        return -1;
    /* Rows w_lo .. w_hi-1 are emitted by this chunk. */
    const uint32_t w_lo = pos0 / ratio, w_hi = (pos0 + T) / ratio;
    if (w_hi > w_lo) {
        if (out_first > w_lo)
            return ds4_fail(err, "%s: out_first %u is past the first emitted row %u", op, out_first, w_lo);
        if (ds4_ops_check_aref(op, "out", out, (uint64_t)(w_hi - out_first) * D, err) != 0) return -1;
    }

    size_t wg;
    if (kernel_wg(ops, ops->comp_update, op, &wg, err) != 0) return -1;
    cl_ulong kv_off = kv.off, sc_off = sc.off, ape_off = ape.off, skv_off = state_kv.off,
             ssc_off = state_sc.off, out_off = out.off;
    cl_uint a_type = ape.type, a_D = D, a_ratio = ratio, a_pos0 = pos0, a_T = T, a_first = out_first;
    const karg args[] = {KA(kv.mem),    KA(kv_off),       KA(sc.mem),   KA(sc_off),  KA(ape.mem),
                         KA(ape_off),   KA(a_type),       KA(state_kv.mem), KA(skv_off), KA(state_sc.mem),
                         KA(ssc_off),   KA(a_D),          KA(a_ratio),  KA(a_pos0),  KA(a_T),
                         KA(out.mem),   KA(out_off),      KA(a_first)};
    if (ds4_ops_set_args(ops->comp_update, op, args, (int)(sizeof(args) / sizeof(args[0])), err) != 0) return -1;
    size_t global = round_up(D, wg);
    return enqueue(ops, ops->comp_update, op, 1, &global, &wg, err);
}

/* ------------------------------------------------------------ indexer -- */

int ds4_op_indexer_scores(ds4_ops *ops, ds4_aref q, ds4_aref w, ds4_aref rows, uint32_t n_head, uint32_t dim,
                          uint32_t n_rows, uint32_t pos0, uint32_t T, ds4_aref scores, ds4_error *err) {
    const char *op = "indexer_scores";
    if (check_kernel(ops->indexer_scores, op, err) != 0) return -1;
    if (n_head == 0 || dim == 0 || T == 0)
        return ds4_fail(err, "%s: empty call (n_head %u, dim %u, T %u)", op, n_head, dim, T);
    if (dim > IDX_DMAX) return ds4_fail(err, "%s: row width %u exceeds %u", op, dim, IDX_DMAX);
    if ((uint64_t)n_head * dim > DIM_MAX || n_rows > DIM_MAX || (uint64_t)pos0 + T > DIM_MAX)
        return ds4_fail(err, "%s: sizes exceed the kernel's 32-bit indices", op);
    if (n_rows == 0) return 0; /* nothing to write */
    uint64_t n_vis = ((uint64_t)pos0 + T) / 4;
    if (n_vis > n_rows) n_vis = n_rows;
    if (ds4_ops_check_aref(op, "q", q, (uint64_t)T * n_head * dim, err) != 0 ||
        ds4_ops_check_aref(op, "w", w, (uint64_t)T * n_head, err) != 0 ||
        (n_vis > 0 && ds4_ops_check_aref(op, "rows", rows, n_vis * dim, err) != 0) ||
        ds4_ops_check_aref(op, "scores", scores, (uint64_t)T * n_rows, err) != 0)
        return -1;

    size_t wg;
    if (kernel_wg(ops, ops->indexer_scores, op, &wg, err) != 0) return -1;
    cl_ulong q_off = q.off, w_off = w.off, r_off = rows.off, s_off = scores.off;
    cl_uint a_nh = n_head, a_dim = dim, a_nr = n_rows, a_pos0 = pos0;
    const karg args[] = {KA(q.mem),  KA(q_off), KA(w.mem), KA(w_off),  KA(rows.mem),   KA(r_off),
                         KA(a_nh),   KA(a_dim), KA(a_nr),  KA(a_pos0), KA(scores.mem), KA(s_off)};
    if (ds4_ops_set_args(ops->indexer_scores, op, args, (int)(sizeof(args) / sizeof(args[0])), err) != 0) return -1;
    size_t global[2] = {round_up(n_rows, wg), T}, local[2] = {wg, 1};
    return enqueue(ops, ops->indexer_scores, op, 2, global, local, err);
}

int ds4_op_topk(ds4_ops *ops, ds4_aref scores, uint32_t n_rows, uint32_t k, uint32_t pos0, uint32_t T,
                cl_mem sel, ds4_error *err) {
    const char *op = "topk";
    if (check_kernel(ops->topk, op, err) != 0) return -1;
    if (k == 0 || T == 0) return ds4_fail(err, "%s: empty call (k %u, T %u)", op, k, T);
    if (n_rows > DIM_MAX || k > DIM_MAX || (uint64_t)pos0 + T > DIM_MAX)
        return ds4_fail(err, "%s: sizes exceed the kernel's 32-bit indices", op);
    if (ds4_ops_check_aref(op, "scores", scores, (uint64_t)T * n_rows, err) != 0 ||
        ds4_ops_check_mem(op, "sel", sel, 0, (uint64_t)T * k * sizeof(int32_t), err) != 0)
        return -1;

    size_t wg;
    if (kernel_wg(ops, ops->topk, op, &wg, err) != 0) return -1;
    cl_ulong s_off = scores.off, sel_off = 0;
    cl_uint a_nr = n_rows, a_k = k, a_pos0 = pos0;
    const karg args[] = {KA(scores.mem), KA(s_off), KA(a_nr), KA(a_k), KA(a_pos0), KA(sel), KA(sel_off)};
    if (ds4_ops_set_args(ops->topk, op, args, (int)(sizeof(args) / sizeof(args[0])), err) != 0) return -1;
    size_t global = (size_t)T * wg;
    return enqueue(ops, ops->topk, op, 1, &global, &wg, err);
}

/* ---------------------------------------------------------- attention -- */

int ds4_op_attention(ds4_ops *ops, ds4_aref q, ds4_aref ring, uint32_t cap, uint32_t window, ds4_aref comp,
                     uint32_t ratio, cl_mem sel, uint64_t sel_off, uint32_t n_sel, ds4_wref sinks, uint32_t H,
                     uint32_t D, uint32_t pos0, uint32_t T, float scale, ds4_aref out, ds4_error *err) {
    const char *op = "attention";
    if (check_kernel(ops->attention, op, err) != 0) return -1;
    if (H == 0 || D == 0 || T == 0 || window == 0 || cap == 0)
        return ds4_fail(err, "%s: empty call (H %u, D %u, T %u, window %u, cap %u)", op, H, D, T, window, cap);
    if (D > ATT_DMAX) return ds4_fail(err, "%s: head width %u exceeds %u", op, D, ATT_DMAX);
    if ((uint64_t)pos0 + T > DIM_MAX || (uint64_t)cap * D > DIM_MAX || (uint64_t)H * D > DIM_MAX)
        return ds4_fail(err, "%s: sizes exceed the kernel's 32-bit indices", op);
    /* Token 0 needs positions from max(0, pos0-window+1); the chunk's stores
     * must not have overwritten them. */
    uint64_t need_cap = (uint64_t)window + T - 1;
    if ((uint64_t)pos0 + T < need_cap) need_cap = (uint64_t)pos0 + T;
    if (cap < need_cap)
        return ds4_fail(err, "%s: ring of %u rows cannot hold window %u for a chunk of %u tokens at %u", op, cap,
                        window, T, pos0);
    bool has_comp = comp.mem != NULL, has_sel = sel != NULL;
    if (has_sel && !has_comp) return ds4_fail(err, "%s: a selection without compressed rows", op);
    if (has_comp && ratio == 0) return ds4_fail(err, "%s: compressed rows with ratio 0", op);
    if (has_sel && n_sel == 0) return ds4_fail(err, "%s: a selection of 0 rows", op);
    if (has_sel && (n_sel > DIM_MAX || sel_off > (UINT64_MAX >> 3)))
        return ds4_fail(err, "%s: selection size out of range", op);
    if (ds4_ops_check_aref(op, "q", q, (uint64_t)T * H * D, err) != 0 ||
        ds4_ops_check_aref(op, "out", out, (uint64_t)T * H * D, err) != 0 ||
        ds4_ops_check_aref(op, "ring", ring, (uint64_t)cap * D, err) != 0 ||
        check_small_weight(op, "sinks", sinks, H, true, err) != 0)
        return -1;
    uint64_t n_comp = has_comp ? ((uint64_t)pos0 + T) / ratio : 0;
    if (n_comp > 0 && ds4_ops_check_aref(op, "comp", comp, n_comp * D, err) != 0) return -1;
    if (has_sel && ds4_ops_check_mem(op, "sel", sel, sel_off * sizeof(int32_t), (uint64_t)T * n_sel * sizeof(int32_t), err))
        return -1;

    size_t wg;
    if (kernel_wg(ops, ops->attention, op, &wg, err) != 0) return -1;
    /* Split KV when the launch has few groups (decode) and rows enough. */
    uint64_t max_cand = (uint64_t)window + (has_sel ? n_sel : n_comp);
    uint32_t nsplit = 1;
    if (ops->att_part && ops->attention_combine) {
        uint64_t groups = (uint64_t)H * T;
        while (nsplit < ATT_MAX_SPLITS && groups * nsplit * 2 <= ATT_SPLIT_GROUPS &&
               max_cand / (nsplit * 2) >= ATT_SPLIT_ROWS && groups * nsplit * 2 * (D + 2) <= ATT_PART_FLOATS)
            nsplit *= 2;
    }
    cl_mem comp_mem = comp.mem, sel_mem = sel;
    cl_ulong q_off = q.off, ring_off = ring.off, comp_off = has_comp ? comp.off : 0, a_sel_off = has_sel ? sel_off : 0,
             sinks_off = sinks.off, out_off = out.off;
    cl_uint a_cap = cap, a_window = window, a_ratio = has_comp ? ratio : 1, a_has_comp = has_comp,
            a_n_sel = has_sel ? n_sel : 0, a_has_sel = has_sel, a_H = H, a_D = D, a_pos0 = pos0;
    cl_float a_scale = scale;
    cl_mem part_mem = ops->att_part ? ops->att_part : out.mem; /* unread when nsplit is 1 */
    const karg args[] = {KA(q.mem),     KA(q_off),     KA(ring.mem),  KA(ring_off),   KA(a_cap),
                         KA(a_window),  KA(comp_mem),  KA(comp_off),  KA(a_ratio),    KA(a_has_comp),
                         KA(sel_mem),   KA(a_sel_off), KA(a_n_sel),   KA(a_has_sel),  KA(sinks.mem),
                         KA(sinks_off), KA(a_H),       KA(a_D),       KA(a_pos0),     KA(a_scale),
                         KA(out.mem),   KA(out_off),   KA(nsplit),    KA(part_mem)};
    if (ds4_ops_set_args(ops->attention, op, args, (int)(sizeof(args) / sizeof(args[0])), err) != 0) return -1;
    size_t global[3] = {(size_t)H * wg, T, nsplit}, local[3] = {wg, 1, 1};
    if (enqueue(ops, ops->attention, op, 3, global, local, err) != 0) return -1;
    if (nsplit == 1) return 0;
    const karg cargs[] = {KA(part_mem), KA(nsplit), KA(a_H), KA(a_D), KA(out.mem), KA(out_off)};
    if (ds4_ops_set_args(ops->attention_combine, op, cargs, 6, err) != 0) return -1;
    size_t cl = 64, cglobal[2] = {(size_t)H * cl, T}, clocal[2] = {cl, 1};
    return enqueue(ops, ops->attention_combine, op, 2, cglobal, clocal, err);
}

/* ---------------------------------------------------------------- MoE -- */

int ds4_op_moe_matmul(ds4_ops *ops, ds4_wref W, uint32_t ncols, uint32_t nrows, uint32_t n_expert, ds4_aref x,
                      int x_per_slot, cl_mem sel, uint32_t n_used, uint32_t T, ds4_aref y, ds4_error *err) {
    const char *op = "moe_matmul";
    const ds4_type_traits *tr = ds4_type_get(W.type);
    if (W.type >= DS4_TYPE_COUNT || !tr || !ops->moe_matmul[W.type])
        return ds4_fail(err, "%s: no kernel for weight type %s", op, ds4_type_name(W.type));
    if (ncols == 0 || nrows == 0 || n_expert == 0 || n_used == 0 || T == 0)
        return ds4_fail(err, "%s: empty call (ncols %u, nrows %u, n_expert %u, n_used %u, T %u)", op, ncols, nrows,
                        n_expert, n_used, T);
    if (ncols % tr->block_size != 0)
        return ds4_fail(err, "%s: ncols %u is not a multiple of the %s block size %u", op, ncols, tr->name,
                        tr->block_size);
    if (ncols > DIM_MAX || nrows > DIM_MAX || n_expert > DIM_MAX || (uint64_t)T * n_used > DIM_MAX)
        return ds4_fail(err, "%s: sizes exceed the kernel's 32-bit indices", op);
    if (x_per_slot != 0 && x_per_slot != 1) return ds4_fail(err, "%s: x_per_slot %d is not 0 or 1", op, x_per_slot);
    uint64_t row_bytes = ds4_row_bytes(W.type, ncols), align = W.type == DS4_TYPE_F32 ? 4 : 2;
    if (W.off % align != 0 || row_bytes % align != 0)
        return ds4_fail(err, "%s: %s weights at byte offset %llu are not %llu-byte aligned", op, tr->name,
                        (unsigned long long)W.off, (unsigned long long)align);
    const uint64_t slots = (uint64_t)T * n_used;
    if (ds4_ops_check_mem(op, "W", W.mem, W.off, mul_sat(mul_sat(n_expert, nrows), row_bytes), err) != 0 ||
        ds4_ops_check_aref(op, "x", x, (x_per_slot ? slots : T) * (uint64_t)ncols, err) != 0 ||
        ds4_ops_check_mem(op, "sel", sel, 0, slots * sizeof(int32_t), err) != 0 ||
        ds4_ops_check_aref(op, "y", y, slots * nrows, err) != 0)
        return -1;

    cl_kernel kern = ops->moe_matmul[W.type];
    cl_ulong w_off = W.off, a_rb = row_bytes, x_off = x.off, y_off = y.off;
    cl_uint a_nc = ncols, a_nr = nrows, a_ne = n_expert, a_xps = (cl_uint)x_per_slot, a_nu = n_used;
    const karg args[] = {KA(W.mem), KA(w_off), KA(a_rb),  KA(a_nc), KA(a_nr),  KA(a_ne),   KA(x.mem),
                         KA(x_off), KA(a_xps), KA(sel),   KA(a_nu), KA(y.mem), KA(y_off)};
    if (ds4_ops_set_args(kern, op, args, (int)(sizeof(args) / sizeof(args[0])), err) != 0) return -1;
    size_t local[2] = {(size_t)ops->k->mv_lanes * (size_t)ops->k->mv_rows, 1};
    size_t global[2] = {round_up(nrows, (size_t)ops->k->mv_rows) / (size_t)ops->k->mv_rows * local[0],
                        (size_t)slots};
    /* Traffic: each distinct expert's slab once (at most all of them). */
    uint64_t experts = slots < n_expert ? slots : n_expert;
    uint64_t bytes = experts * nrows * row_bytes + slots * ((uint64_t)ncols + nrows) * 4;
    return enqueue_b(ops, kern, op, 2, global, local, bytes, err);
}
