/* ops_moe.c - the fused and expert-grouped expert products (ops.h, kernels
 * in cl/moe_fused.cl).
 *
 * Decode (one token) wants few launches: the gate and up products of the
 * six routed experts and their SwiGLU are one launch (ds4_op_moe_gate_up
 * without a plan), the down products and their sum plus the shared
 * expert's output are another (ds4_op_moe_down_sum).  The shared expert's
 * gate/up uses the same kernel with `shared` set.
 *
 * Prefill (a chunk of T tokens) wants each expert's rows decoded once for
 * all the tokens routed to it: ds4_op_moe_plan sorts the T*n_used slots by
 * expert on the device and cuts them into tiles of MM_TOKENS slots; the
 * grouped kernels run one tile per work-group column, so a weight row is
 * read once per tile instead of once per slot.  The grid is sized for the
 * most tiles a plan can hold; columns past the plan's count return at once.
 * The attention output's grouped projection uses the same machinery with
 * the groups as "experts" (forward.c).
 *
 * Every op validates what it can on the host (types, sizes, 32-bit
 * indices, alignment, buffer extents) and enqueues one kernel; nothing
 * here waits or allocates.
 */
#include <string.h>

#include "ops.h"
#include "ops_check.h"
#include "quant.h"

#define DIM_MAX 0x7fffffffULL
#define PLAN_MAX_EXPERTS 1024 /* cl/moe_fused.cl */
#define PLAN_WG 256

static const struct {
    uint32_t type;
    const char *suffix;
} fused_types[] = {
    {DS4_TYPE_F32, "f32"},   {DS4_TYPE_F16, "f16"},   {DS4_TYPE_BF16, "bf16"},
    {DS4_TYPE_Q8_0, "q8_0"}, {DS4_TYPE_Q2_K, "q2_k"}, {DS4_TYPE_Q4_K, "q4_k"},
    {DS4_TYPE_IQ2_XXS, "iq2_xxs"},
};
#define N_FUSED_TYPES (sizeof(fused_types) / sizeof(fused_types[0]))

static int create(ds4_ops *ops, const char *name, cl_kernel *out, ds4_error *err) {
    cl_int rc = CL_SUCCESS;
    *out = clCreateKernel(ops->k->program, name, &rc);
    if (rc != CL_SUCCESS || !*out) {
        *out = NULL;
        return ds4_fail(err, "clCreateKernel(%s) failed: %s", name, ds4_cl_strerror(rc));
    }
    return 0;
}

int ds4_ops_moe_init(ds4_ops *ops, ds4_error *err) {
    if (!ops->k || !ops->k->program) return ds4_fail(err, "ds4_ops_moe_init: no kernel program");
    int rc = create(ops, "moe_plan", &ops->moe_plan, err);
    static const char *const prefix[4] = {"moe_gu", "moe_down", "moe_tile", "moe_tgu"};
    for (size_t i = 0; rc == 0 && i < N_FUSED_TYPES; i++) {
        uint32_t t = fused_types[i].type;
        cl_kernel *slot[4] = {&ops->moe_gu[t], &ops->moe_down[t], &ops->moe_tile[t], &ops->moe_tgu[t]};
        for (int j = 0; rc == 0 && j < 4; j++) {
            char name[64];
            snprintf(name, sizeof(name), "%s_%s", prefix[j], fused_types[i].suffix);
            rc = create(ops, name, slot[j], err);
        }
    }
    for (size_t i = 0; rc == 0 && ops->k->q8x && i < N_FUSED_TYPES; i++) {
        uint32_t t = fused_types[i].type;
        if (ds4_type_get(t)->block_size < 32) continue;
        char name[64];
        snprintf(name, sizeof(name), "moe_gu8_%s", fused_types[i].suffix);
        rc = create(ops, name, &ops->moe_gu8[t], err);
        snprintf(name, sizeof(name), "moe_down8_%s", fused_types[i].suffix);
        if (rc == 0) rc = create(ops, name, &ops->moe_down8[t], err);
    }
    return rc; /* on failure the caller's ds4_ops_free releases what exists */
}

/* ------------------------------------------------------------ checks -- */

/* Weight type has fused kernels, ncols whole blocks, aligned offset; gives
 * the row stride. */
static int check_weights(const ds4_ops *ops, const char *op, ds4_wref W, uint32_t ncols, uint32_t nrows,
                         uint32_t n_expert, uint64_t *row_bytes, ds4_error *err) {
    const ds4_type_traits *tr = ds4_type_get(W.type);
    if (W.type >= DS4_TYPE_COUNT || !tr || !ops->moe_gu[W.type])
        return ds4_fail(err, "%s: no kernel for weight type %s", op, ds4_type_name(W.type));
    if (ncols == 0 || nrows == 0 || n_expert == 0)
        return ds4_fail(err, "%s: empty weights (ncols %u, nrows %u, n_expert %u)", op, ncols, nrows, n_expert);
    if (ncols % tr->block_size != 0)
        return ds4_fail(err, "%s: ncols %u is not a multiple of the %s block size %u", op, ncols, tr->name,
                        tr->block_size);
    if (ncols > DIM_MAX || nrows > DIM_MAX || n_expert > DIM_MAX)
        return ds4_fail(err, "%s: sizes exceed the kernels' 32-bit indices", op);
    *row_bytes = ds4_row_bytes(W.type, ncols);
    uint64_t align = W.type == DS4_TYPE_F32 ? 4 : 2;
    if (W.off % align != 0 || *row_bytes % align != 0)
        return ds4_fail(err, "%s: %s weights at byte offset %llu are not %llu-byte aligned", op, tr->name,
                        (unsigned long long)W.off, (unsigned long long)align);
    return ds4_ops_check_mem(op, "W", W.mem, W.off, (uint64_t)n_expert * nrows * *row_bytes, err);
}

uint32_t ds4_moe_plan_max_tiles(uint32_t n_slots, uint32_t n_expert, uint32_t tile) {
    uint32_t per = tile ? tile : 1;
    return (n_slots + per - 1) / per + (n_expert < n_slots ? n_expert : n_slots);
}

uint64_t ds4_moe_plan_ints(uint32_t n_slots, uint32_t n_expert, uint32_t tile) {
    return 1 + (uint64_t)n_slots + 3 * (uint64_t)ds4_moe_plan_max_tiles(n_slots, n_expert, tile);
}

static size_t mv_local(const ds4_ops *ops) { return (size_t)ops->k->mv_lanes * (size_t)ops->k->mv_rows; }

static size_t mv_row_groups(const ds4_ops *ops, uint32_t nrows) {
    return ((size_t)nrows + (size_t)ops->k->mv_rows - 1) / (size_t)ops->k->mv_rows;
}

static int enqueue(const ds4_ops *ops, cl_kernel kern, const char *op, const size_t *global, const size_t *local,
                   uint64_t bytes, ds4_error *err) {
    if (ds4_enqueue(ops->rt, kern, 2, global, local, bytes, err) != 0) return ds4_fail_wrap(err, "%s", op);
    return 0;
}

/* -------------------------------------------------------------- plan -- */

int ds4_op_moe_plan(ds4_ops *ops, cl_mem sel, uint64_t sel_off, uint32_t n_slots, uint32_t n_expert, cl_mem plan,
                    ds4_error *err) {
    const char *op = "moe_plan";
    if (!ops->moe_plan) return ds4_fail(err, "%s: kernel not created", op);
    if (n_slots == 0 || n_expert == 0 || n_expert > PLAN_MAX_EXPERTS || n_slots > DIM_MAX / 4)
        return ds4_fail(err, "%s: %u slots over %u experts (1..%u experts)", op, n_slots, n_expert,
                        PLAN_MAX_EXPERTS);
    if (ds4_ops_check_mem(op, "sel", sel, sel_off * 4, (uint64_t)n_slots * 4, err) != 0 ||
        ds4_ops_check_mem(op, "plan", plan, 0,
                          ds4_moe_plan_ints(n_slots, n_expert, (uint32_t)ops->k->mm_tokens) * 4, err) != 0)
        return -1;
    cl_ulong a_off = sel_off;
    cl_uint a_ns = n_slots, a_ne = n_expert;
    const karg args[] = {KA(sel), KA(a_off), KA(a_ns), KA(a_ne), KA(plan)};
    if (ds4_ops_set_args(ops->moe_plan, op, args, 5, err) != 0) return -1;
    size_t global = PLAN_WG, local = PLAN_WG;
    if (ds4_enqueue(ops->rt, ops->moe_plan, 1, &global, &local, (uint64_t)n_slots * 12, err) != 0)
        return ds4_fail_wrap(err, "%s", op);
    return 0;
}

/* ----------------------------------------------------------- gate/up -- */

int ds4_op_moe_gate_up(ds4_ops *ops, ds4_wref Wg, ds4_wref Wu, uint32_t ncols, uint32_t nrows, uint32_t n_expert,
                       ds4_aref x, cl_mem sel, uint32_t n_used, uint32_t T, ds4_aref w, float clamp, cl_mem plan,
                       ds4_aref mid, ds4_error *err) {
    const char *op = "moe_gate_up";
    uint64_t rb = 0, rb_u = 0;
    if (check_weights(ops, op, Wg, ncols, nrows, n_expert, &rb, err) != 0 ||
        check_weights(ops, op, Wu, ncols, nrows, n_expert, &rb_u, err) != 0)
        return -1;
    if (Wg.type != Wu.type) return ds4_fail(err, "%s: gate and up types differ", op);
    if (n_used == 0 || T == 0 || (uint64_t)T * n_used > DIM_MAX / 4)
        return ds4_fail(err, "%s: bad slot count (T %u, n_used %u)", op, T, n_used);
    bool shared = sel == NULL;
    if (shared && (n_used != 1 || plan)) return ds4_fail(err, "%s: the shared expert takes n_used 1, no plan", op);
    const uint64_t slots = (uint64_t)T * n_used;
    if (ds4_ops_check_aref(op, "x", x, (uint64_t)T * ncols, err) != 0 ||
        ds4_ops_check_aref(op, "mid", mid, slots * nrows, err) != 0 ||
        (!shared && ds4_ops_check_mem(op, "sel", sel, 0, slots * 4, err) != 0) ||
        (!shared && ds4_ops_check_aref(op, "w", w, slots, err) != 0))
        return -1;
    cl_ulong a_wg = Wg.off, a_wu = Wu.off, a_rb = rb, a_x = x.off, a_ew = w.off, a_mid = mid.off;
    cl_uint a_nc = ncols, a_nr = nrows, a_ne = n_expert, a_nu = n_used, a_sh = shared;
    cl_mem m_sel = shared ? mid.mem : sel, m_ew = shared ? mid.mem : w.mem; /* unread when shared */
    size_t local[2] = {mv_local(ops), 1};
    uint64_t experts = shared ? 1 : (slots < n_expert ? slots : n_expert);
    uint64_t bytes = 2 * experts * nrows * rb + slots * ((uint64_t)ncols + nrows) * 4;
    if (!plan) {
        const karg args[] = {KA(Wg.mem), KA(a_wg), KA(Wu.mem), KA(a_wu), KA(a_rb), KA(a_nc), KA(a_nr), KA(a_ne),
                             KA(x.mem),  KA(a_x),  KA(m_sel),  KA(a_nu), KA(a_sh), KA(m_ew), KA(a_ew), KA(clamp),
                             KA(mid.mem), KA(a_mid)};
        cl_kernel kern = ds4_kernels_use_q8x(ops->k, Wg.type, ncols) ? ops->moe_gu8[Wg.type] : ops->moe_gu[Wg.type];
        if (ds4_ops_set_args(kern, op, args, (int)(sizeof(args) / sizeof(args[0])), err) != 0) return -1;
        size_t global[2] = {mv_row_groups(ops, nrows) * local[0], (size_t)slots};
        return enqueue(ops, kern, op, global, local, bytes, err);
    }
    uint32_t tiles = ds4_moe_plan_max_tiles((uint32_t)slots, n_expert, (uint32_t)ops->k->mm_tokens);
    if (ds4_ops_check_mem(op, "plan", plan, 0,
                          ds4_moe_plan_ints((uint32_t)slots, n_expert, (uint32_t)ops->k->mm_tokens) * 4, err) != 0)
        return -1;
    cl_uint a_ns = (cl_uint)slots;
    const karg args[] = {KA(Wg.mem), KA(a_wg), KA(Wu.mem), KA(a_wu),  KA(a_rb),  KA(a_nc),  KA(a_nr),
                         KA(a_ne),   KA(x.mem), KA(a_x),   KA(a_nu),  KA(plan),  KA(a_ns),  KA(w.mem),
                         KA(a_ew),   KA(clamp), KA(mid.mem), KA(a_mid)};
    if (ds4_ops_set_args(ops->moe_tgu[Wg.type], op, args, (int)(sizeof(args) / sizeof(args[0])), err) != 0)
        return -1;
    size_t global[2] = {mv_row_groups(ops, nrows) * local[0], (size_t)tiles};
    return enqueue(ops, ops->moe_tgu[Wg.type], op, global, local, bytes, err);
}

/* -------------------------------------------------------------- down -- */

int ds4_op_moe_down_sum(ds4_ops *ops, ds4_wref W, uint32_t ncols, uint32_t nrows, uint32_t n_expert, ds4_aref mid,
                        cl_mem sel, uint32_t n_used, uint32_t T, ds4_aref add, ds4_aref y, ds4_error *err) {
    const char *op = "moe_down_sum";
    uint64_t rb = 0;
    if (check_weights(ops, op, W, ncols, nrows, n_expert, &rb, err) != 0) return -1;
    if (n_used == 0 || T == 0 || (uint64_t)T * n_used > DIM_MAX / 4)
        return ds4_fail(err, "%s: bad slot count (T %u, n_used %u)", op, T, n_used);
    const uint64_t slots = (uint64_t)T * n_used;
    if (ds4_ops_check_aref(op, "mid", mid, slots * ncols, err) != 0 ||
        ds4_ops_check_mem(op, "sel", sel, 0, slots * 4, err) != 0 ||
        ds4_ops_check_aref(op, "y", y, (uint64_t)T * nrows, err) != 0 ||
        (add.mem && ds4_ops_check_aref(op, "add", add, (uint64_t)T * nrows, err) != 0))
        return -1;
    cl_ulong a_rb = rb, a_w = W.off, a_mid = mid.off, a_add = add.off, a_y = y.off;
    cl_uint a_nc = ncols, a_nr = nrows, a_ne = n_expert, a_nu = n_used, a_has = add.mem != NULL;
    cl_mem m_add = add.mem ? add.mem : y.mem; /* unread without add */
    const karg args[] = {KA(W.mem), KA(a_w), KA(a_rb),  KA(a_nc),  KA(a_nr), KA(a_ne),   KA(mid.mem), KA(a_mid),
                         KA(sel),   KA(a_nu), KA(m_add), KA(a_add), KA(a_has), KA(y.mem), KA(a_y)};
    cl_kernel kern = ds4_kernels_use_q8x(ops->k, W.type, ncols) ? ops->moe_down8[W.type] : ops->moe_down[W.type];
    if (ds4_ops_set_args(kern, op, args, (int)(sizeof(args) / sizeof(args[0])), err) != 0) return -1;
    size_t local[2] = {mv_local(ops), 1};
    size_t global[2] = {mv_row_groups(ops, nrows) * local[0], (size_t)T};
    uint64_t experts = slots < n_expert ? slots : n_expert;
    uint64_t bytes = experts * nrows * rb + (slots * ncols + 2ull * T * nrows) * 4;
    return enqueue(ops, kern, op, global, local, bytes, err);
}

/* ----------------------------------------------------------- grouped -- */

int ds4_op_moe_grouped(ds4_ops *ops, ds4_wref W, uint32_t ncols, uint32_t nrows, uint32_t n_expert, ds4_aref x,
                       int x_per_slot, uint32_t n_used, uint32_t n_slots, cl_mem plan, ds4_aref y, ds4_error *err) {
    const char *op = "moe_grouped";
    uint64_t rb = 0;
    if (check_weights(ops, op, W, ncols, nrows, n_expert, &rb, err) != 0) return -1;
    if (n_used == 0 || n_slots == 0 || n_slots % n_used != 0 || n_slots > DIM_MAX / 4)
        return ds4_fail(err, "%s: bad slot count (%u slots, n_used %u)", op, n_slots, n_used);
    if (x_per_slot != 0 && x_per_slot != 1) return ds4_fail(err, "%s: x_per_slot %d is not 0 or 1", op, x_per_slot);
    uint32_t tiles = ds4_moe_plan_max_tiles(n_slots, n_expert, (uint32_t)ops->k->mm_tokens);
    uint64_t x_rows = x_per_slot ? n_slots : n_slots / n_used;
    if (ds4_ops_check_aref(op, "x", x, x_rows * ncols, err) != 0 ||
        ds4_ops_check_aref(op, "y", y, (uint64_t)n_slots * nrows, err) != 0 ||
        ds4_ops_check_mem(op, "plan", plan, 0, ds4_moe_plan_ints(n_slots, n_expert, (uint32_t)ops->k->mm_tokens) * 4,
                          err) != 0)
        return -1;
    cl_ulong a_w = W.off, a_rb = rb, a_x = x.off, a_y = y.off;
    cl_uint a_nc = ncols, a_nr = nrows, a_ne = n_expert, a_xps = (cl_uint)x_per_slot, a_nu = n_used, a_ns = n_slots;
    const karg args[] = {KA(W.mem), KA(a_w),  KA(a_rb),  KA(a_nc), KA(a_nr),  KA(a_ne),   KA(x.mem),
                         KA(a_x),   KA(a_xps), KA(a_nu), KA(plan), KA(a_ns), KA(y.mem), KA(a_y)};
    cl_kernel kern = ops->moe_tile[W.type];
    if (ds4_ops_set_args(kern, op, args, (int)(sizeof(args) / sizeof(args[0])), err) != 0) return -1;
    size_t local[2] = {mv_local(ops), 1};
    size_t global[2] = {mv_row_groups(ops, nrows) * local[0], (size_t)tiles};
    uint64_t experts = n_slots < n_expert ? n_slots : n_expert;
    uint64_t bytes = experts * nrows * rb + (x_rows * ncols + (uint64_t)n_slots * nrows) * 4;
    return enqueue(ops, kern, op, global, local, bytes, err);
}
