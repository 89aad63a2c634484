/* ops_dense.c - the dense ops of ops.h (embedding, RMSNorm, HC, RoPE, the
 * FP8 / Hadamard+FP4 simulations, the KV ring, the router, SwiGLU, sums),
 * plus ds4_ops_init / ds4_ops_free for the whole ds4_ops.
 *
 * Kernels: cl/norm.cl, hc.cl, rope.cl, qsim.cl, misc.cl, moe_route.cl (see
 * their headers for the work split).  Every op here does the same three
 * things, in order:
 *
 *   1. validate: buffers present, weight types and alignments, sizes within
 *      the kernels' 32-bit indices and their own limits (HC streams <=
 *      HC_MAX, Hadamard widths 32..256, ...), and every array's extent
 *      (offset + the last value touched) inside its cl_mem, queried with
 *      clGetMemObjectInfo.  A failure names the op and the argument; nothing
 *      has been enqueued then.
 *   2. set the kernel's arguments (each call checked);
 *   3. enqueue one NDRange with an explicit work-group size: element-wise
 *      kernels use ELEM_WG work-items per group on a global size rounded up
 *      (the kernels guard the tail); reduction kernels (RMSNorm, HC pre,
 *      router) take one group per row of red_wg() work-items, a power of
 *      two within the kernel's limit.
 *
 * Ops with zero rows / tokens enqueue nothing and succeed.  Optional
 * buffers (a norm weight, a router bias, ...) that are absent are passed
 * as another valid buffer of the call together with a has_* flag = 0, so
 * no driver sees a NULL cl_mem.
 */
#include "ops.h"

#include <math.h>
#include <stddef.h>
#include <string.h>

#include "qsim.h"
#include "quant.h"

/* Largest count the kernels index with 32-bit unsigned integers (kept at
 * 2^31 - 1 so global sizes rounded up to a group still fit). */
#define DIM_MAX 0x7fffffffULL
/* Limits the kernels are compiled with (cl/hc.cl, cl/moe_route.cl). */
#define HC_MAX 16
#define ROUTE_MAX_USED 64
#define HADAMARD_MAX 256
/* Work-items per group of the element-wise kernels. */
#define ELEM_WG 64

#define TRY(x)                                                                     \
    do {                                                                           \
        if ((x) != 0) return -1;                                                   \
    } while (0)

/* ------------------------------------------------------------ kernels -- */

static const struct {
    size_t field; /* offset of the cl_kernel in ds4_ops */
    const char *name;
} dense_kernels[] = {
    {offsetof(ds4_ops, embed), "op_embed"},       {offsetof(ds4_ops, rmsnorm), "op_rmsnorm"},
    {offsetof(ds4_ops, hc_pre), "op_hc_pre"},     {offsetof(ds4_ops, hc_post), "op_hc_post"},
    {offsetof(ds4_ops, hc_head), "op_hc_head"},   {offsetof(ds4_ops, rope_tail), "op_rope_tail"},
    {offsetof(ds4_ops, fp8_sim), "op_fp8_sim"},   {offsetof(ds4_ops, hadamard_fp4), "op_hadamard_fp4"},
    {offsetof(ds4_ops, kv_store), "op_kv_store"}, {offsetof(ds4_ops, router), "op_router"},
    {offsetof(ds4_ops, swiglu), "op_swiglu"},     {offsetof(ds4_ops, moe_sum), "op_moe_sum"},
    {offsetof(ds4_ops, add), "op_add"},
};
#define N_DENSE_KERNELS (sizeof(dense_kernels) / sizeof(dense_kernels[0]))

int ds4_ops_dense_init(ds4_ops *ops, ds4_error *err) {
    for (size_t i = 0; i < N_DENSE_KERNELS; i++) {
        cl_int rc = CL_SUCCESS;
        cl_kernel kern = clCreateKernel(ops->k->program, dense_kernels[i].name, &rc);
        if (rc != CL_SUCCESS || !kern)
            return ds4_fail(err, "clCreateKernel(%s) failed: %s", dense_kernels[i].name, ds4_cl_strerror(rc));
        memcpy((char *)ops + dense_kernels[i].field, &kern, sizeof(kern));
    }
    return 0;
}

int ds4_ops_init(ds4_ops *ops, ds4_kernels *k, ds4_error *err) {
    memset(ops, 0, sizeof(*ops));
    ops->k = k;
    ops->rt = k->rt;
    if (ds4_ops_dense_init(ops, err) != 0 || ds4_ops_attn_init(ops, err) != 0 || ds4_ops_moe_init(ops, err) != 0) {
        ds4_ops_free(ops);
        return -1;
    }
    return 0;
}

static void release(cl_kernel *kern) {
    if (*kern) clReleaseKernel(*kern);
    *kern = NULL;
}

void ds4_ops_free(ds4_ops *ops) {
    for (size_t i = 0; i < N_DENSE_KERNELS; i++) {
        cl_kernel kern;
        memcpy(&kern, (char *)ops + dense_kernels[i].field, sizeof(kern));
        release(&kern);
    }
    release(&ops->comp_update);
    release(&ops->indexer_scores);
    release(&ops->topk);
    release(&ops->attention);
    release(&ops->attention_combine);
    if (ops->att_part) clReleaseMemObject(ops->att_part);
    ops->att_part = NULL;
    for (size_t t = 0; t < sizeof(ops->moe_matmul) / sizeof(ops->moe_matmul[0]); t++) {
        release(&ops->moe_matmul[t]);
        release(&ops->moe_gu[t]);
        release(&ops->moe_down[t]);
        release(&ops->moe_tile[t]);
        release(&ops->moe_tgu[t]);
        release(&ops->moe_gu8[t]);
        release(&ops->moe_down8[t]);
    }
    release(&ops->moe_plan);
    memset(ops, 0, sizeof(*ops));
}

/* --------------------------------------------------------- validation -- */

/* a * b, or UINT64_MAX when it overflows (then always "too large"). */
static uint64_t mul_sat(uint64_t a, uint64_t b) {
    if (a != 0 && b > UINT64_MAX / a) return UINT64_MAX;
    return a * b;
}

static uint64_t add_sat(uint64_t a, uint64_t b) { return a > UINT64_MAX - b ? UINT64_MAX : a + b; }

/* The byte range [off, off + bytes) must lie inside mem. */
static int check_range(const char *op, const char *what, cl_mem mem, uint64_t off, uint64_t bytes,
                       ds4_error *err) {
    if (!mem) return ds4_fail(err, "%s: %s buffer is NULL", op, what);
    size_t size = 0;
    cl_int rc = clGetMemObjectInfo(mem, CL_MEM_SIZE, sizeof(size), &size, NULL);
    if (rc != CL_SUCCESS)
        return ds4_fail(err, "%s: clGetMemObjectInfo(%s, CL_MEM_SIZE) failed: %s", op, what, ds4_cl_strerror(rc));
    uint64_t end = add_sat(off, bytes);
    if (end > (uint64_t)size)
        return ds4_fail(err, "%s: %s needs bytes [%llu, %llu) but its buffer has %llu", op, what,
                        (unsigned long long)off, (unsigned long long)end, (unsigned long long)size);
    return 0;
}

/* An f32 activation array of `count` floats starting at a.off. */
static int check_aref(const char *op, const char *what, ds4_aref a, uint64_t count, ds4_error *err) {
    return check_range(op, what, a.mem, mul_sat(a.off, 4), mul_sat(count, 4), err);
}

/* `rows` rows of `n` floats, `stride` floats apart. */
static int check_rows(const char *op, const char *what, ds4_aref a, uint64_t rows, uint64_t stride, uint64_t n,
                      ds4_error *err) {
    return check_aref(op, what, a, add_sat(mul_sat(rows - 1, stride), n), err);
}

/* An F32 weight of `count` floats, 4-byte aligned. */
static int check_wf32(const char *op, const char *what, ds4_wref w, uint64_t count, ds4_error *err) {
    if (w.type != DS4_TYPE_F32)
        return ds4_fail(err, "%s: %s must be F32, not %s", op, what, ds4_type_name(w.type));
    if (w.off % 4 != 0)
        return ds4_fail(err, "%s: %s at byte offset %llu is not 4-byte aligned", op, what,
                        (unsigned long long)w.off);
    return check_range(op, what, w.mem, w.off, mul_sat(count, 4), err);
}

/* Every count is positive and within the kernels' 32-bit indices. */
static int check_dim(const char *op, const char *what, uint64_t v, ds4_error *err) {
    if (v == 0 || v > DIM_MAX)
        return ds4_fail(err, "%s: %s = %llu is out of range (1..%llu)", op, what, (unsigned long long)v,
                        (unsigned long long)DIM_MAX);
    return 0;
}

/* --------------------------------------------------------- enqueueing -- */

/* Kernel arguments, set in order; each call checked. */
typedef struct {
    cl_kernel k;
    cl_uint n;
} kargs;

static int a_mem(kargs *a, cl_mem m, ds4_error *err) {
    DS4_CL_CHECK(clSetKernelArg(a->k, a->n++, sizeof(m), &m), err);
    return 0;
}
static int a_u64(kargs *a, uint64_t v, ds4_error *err) {
    cl_ulong x = v;
    DS4_CL_CHECK(clSetKernelArg(a->k, a->n++, sizeof(x), &x), err);
    return 0;
}
static int a_u32(kargs *a, uint64_t v, ds4_error *err) {
    cl_uint x = (cl_uint)v;
    DS4_CL_CHECK(clSetKernelArg(a->k, a->n++, sizeof(x), &x), err);
    return 0;
}
static int a_f32(kargs *a, float v, ds4_error *err) {
    cl_float x = v;
    DS4_CL_CHECK(clSetKernelArg(a->k, a->n++, sizeof(x), &x), err);
    return 0;
}
static int a_local(kargs *a, size_t bytes, ds4_error *err) {
    DS4_CL_CHECK(clSetKernelArg(a->k, a->n++, bytes, NULL), err);
    return 0;
}

/* Work-items per group for a reduction kernel: 64 on CPUs, gpu_want
 * (256 or 1024) on GPUs, at most the kernel's and device's limit, a power
 * of two.  Never dependent on the row count, so a row's sum is formed in
 * the same order whatever the chunk size (decode equals prefill). */
static int red_wg_n(ds4_ops *ops, cl_kernel kern, size_t gpu_want, size_t *wg, ds4_error *err) {
    size_t want = (ops->rt->dev.type & CL_DEVICE_TYPE_CPU) ? 64 : gpu_want, lim = 0;
    DS4_CL_CHECK(clGetKernelWorkGroupInfo(kern, ops->rt->dev.device, CL_KERNEL_WORK_GROUP_SIZE, sizeof(lim), &lim,
                                          NULL),
                 err);
    if (lim > ops->rt->dev.max_wg) lim = ops->rt->dev.max_wg;
    size_t w = 1;
    while (w * 2 <= want && w * 2 <= lim) w *= 2;
    *wg = w;
    return 0;
}

static int red_wg(ds4_ops *ops, cl_kernel kern, size_t *wg, ds4_error *err) {
    return red_wg_n(ops, kern, 256, wg, err);
}

/* Enqueue kern over g[0] x g[1] x g[2] items with groups of (l0, 1, 1);
 * g[0] is rounded up to a multiple of l0. */
static int launch(ds4_ops *ops, cl_kernel kern, cl_uint dims, uint64_t g0, uint64_t g1, uint64_t g2, size_t l0,
                  ds4_error *err) {
    size_t global[3] = {(size_t)((g0 + l0 - 1) / l0 * l0), (size_t)g1, (size_t)g2};
    size_t local[3] = {l0, 1, 1};
    return ds4_enqueue(ops->rt, kern, dims, global, local, 0, err);
}

/* -------------------------------------------------------------- embed -- */

int ds4_op_embed(ds4_ops *ops, ds4_wref embd, uint32_t n_embd, cl_mem tokens, uint64_t tok_off, uint32_t T,
                 uint32_t n_hc, ds4_aref X, ds4_error *err) {
    const char *op = "embed";
    if (T == 0) return 0;
    TRY(check_dim(op, "n_embd", n_embd, err));
    TRY(check_dim(op, "T", T, err));
    TRY(check_dim(op, "n_hc", n_hc, err));
    uint32_t t = embd.type;
    if (t != DS4_TYPE_F32 && t != DS4_TYPE_F16 && t != DS4_TYPE_BF16 && t != DS4_TYPE_Q8_0)
        return ds4_fail(err, "%s: table type %s is not F32/F16/BF16/Q8_0", op, ds4_type_name(t));
    uint64_t rb = ds4_row_bytes(t, n_embd);
    if (rb == 0) return ds4_fail(err, "%s: n_embd %u is not whole %s blocks", op, n_embd, ds4_type_name(t));
    uint64_t align = t == DS4_TYPE_F32 ? 4 : 2;
    if (embd.off % align != 0)
        return ds4_fail(err, "%s: %s table at byte offset %llu is not %llu-byte aligned", op, ds4_type_name(t),
                        (unsigned long long)embd.off, (unsigned long long)align);
    TRY(check_range(op, "embd", embd.mem, embd.off, rb, err));
    TRY(check_range(op, "tokens", tokens, mul_sat(tok_off, 4), (uint64_t)T * 4, err));
    TRY(check_aref(op, "X", X, mul_sat((uint64_t)T * n_hc, n_embd), err));
    kargs a = {ops->embed, 0};
    if (a_mem(&a, embd.mem, err) || a_u64(&a, embd.off, err) || a_u64(&a, rb, err) || a_u32(&a, t, err) ||
        a_u32(&a, n_embd, err) || a_mem(&a, tokens, err) || a_u64(&a, tok_off, err) || a_u32(&a, T, err) ||
        a_u32(&a, n_hc, err) || a_mem(&a, X.mem, err) || a_u64(&a, X.off, err) ||
        launch(ops, a.k, 2, n_embd, T, 1, ELEM_WG, err))
        return ds4_fail_wrap(err, "%s", op);
    return 0;
}

/* ------------------------------------------------------------ rmsnorm -- */

int ds4_op_rmsnorm(ds4_ops *ops, ds4_aref x, ds4_aref y, uint32_t n, uint32_t rows, uint32_t stride, ds4_wref w,
                   float eps, ds4_error *err) {
    const char *op = "rmsnorm";
    if (rows == 0) return 0;
    TRY(check_dim(op, "n", n, err));
    TRY(check_dim(op, "rows", rows, err));
    if (stride < n) return ds4_fail(err, "%s: stride %u is below the row width %u", op, stride, n);
    if (!(eps >= 0.0f) || !isfinite(eps)) return ds4_fail(err, "%s: bad eps %g", op, (double)eps);
    TRY(check_rows(op, "x", x, rows, stride, n, err));
    TRY(check_rows(op, "y", y, rows, stride, n, err));
    if (w.mem) TRY(check_wf32(op, "weight", w, n, err));
    size_t wg = 0;
    /* (1024-wide groups were no faster on an H200: a decoded token's norm
     * costs ~11 us either way, launch and latency.) */
    if (red_wg_n(ops, ops->rmsnorm, 256, &wg, err) != 0) return ds4_fail_wrap(err, "%s", op);
    kargs a = {ops->rmsnorm, 0};
    if (a_mem(&a, x.mem, err) || a_u64(&a, x.off, err) || a_mem(&a, y.mem, err) || a_u64(&a, y.off, err) ||
        a_u32(&a, n, err) || a_u32(&a, stride, err) || a_mem(&a, w.mem ? w.mem : x.mem, err) ||
        a_u64(&a, w.mem ? w.off : 0, err) || a_u32(&a, w.mem != NULL, err) || a_f32(&a, eps, err) ||
        a_local(&a, wg * sizeof(float), err) || launch(ops, a.k, 1, (uint64_t)rows * wg, 1, 1, wg, err))
        return ds4_fail_wrap(err, "%s", op);
    return 0;
}

/* ----------------------------------------------------------------- HC -- */

static int check_hc(const char *op, uint32_t n_hc, uint32_t n_embd, uint32_t T, ds4_error *err) {
    if (n_hc == 0 || n_hc > HC_MAX) return ds4_fail(err, "%s: n_hc %u is not in 1..%d", op, n_hc, HC_MAX);
    TRY(check_dim(op, "n_embd", n_embd, err));
    TRY(check_dim(op, "T", T, err));
    return check_dim(op, "T*n_hc*n_embd", (uint64_t)T * n_hc * n_embd, err);
}

/* HC pre with or without the fused RMSNorm (nw: F32 weight or mem NULL;
 * xn.mem NULL: no norm). */
static int hc_pre_impl(ds4_ops *ops, const char *op, ds4_aref X, ds4_aref mix, ds4_wref scale, ds4_wref base,
                       uint32_t n_hc, uint32_t n_embd, uint32_t T, uint32_t iters, float hc_eps, ds4_aref x,
                       ds4_aref post, ds4_aref comb, ds4_wref nw, float eps, ds4_aref xn, ds4_error *err) {
    if (T == 0) return 0;
    TRY(check_hc(op, n_hc, n_embd, T, err));
    if (iters == 0 || iters > 1000) return ds4_fail(err, "%s: sinkhorn iterations %u not in 1..1000", op, iters);
    uint64_t nmix = (uint64_t)(2 + n_hc) * n_hc;
    TRY(check_aref(op, "X", X, (uint64_t)T * n_hc * n_embd, err));
    TRY(check_aref(op, "mix", mix, T * nmix, err));
    TRY(check_wf32(op, "scale", scale, 3, err));
    TRY(check_wf32(op, "base", base, nmix, err));
    TRY(check_aref(op, "x", x, (uint64_t)T * n_embd, err));
    TRY(check_aref(op, "post", post, (uint64_t)T * n_hc, err));
    TRY(check_aref(op, "comb", comb, (uint64_t)T * n_hc * n_hc, err));
    const bool norm = xn.mem != NULL;
    if (norm) {
        if (!(eps >= 0.0f) || !isfinite(eps)) return ds4_fail(err, "%s: bad eps %g", op, (double)eps);
        TRY(check_aref(op, "xn", xn, (uint64_t)T * n_embd, err));
        if (nw.mem) TRY(check_wf32(op, "norm weight", nw, n_embd, err));
    }
    /* The rmsnorm group size, so the fused norm sums in op_rmsnorm's order. */
    size_t wg = 0;
    if (red_wg_n(ops, ops->hc_pre, 256, &wg, err) != 0) return ds4_fail_wrap(err, "%s", op);
    cl_mem nwm = nw.mem ? nw.mem : x.mem, xnm = norm ? xn.mem : x.mem; /* unread when unused */
    kargs a = {ops->hc_pre, 0};
    if (a_mem(&a, X.mem, err) || a_u64(&a, X.off, err) || a_mem(&a, mix.mem, err) || a_u64(&a, mix.off, err) ||
        a_mem(&a, scale.mem, err) || a_u64(&a, scale.off, err) || a_mem(&a, base.mem, err) ||
        a_u64(&a, base.off, err) || a_u32(&a, n_hc, err) || a_u32(&a, n_embd, err) || a_u32(&a, iters, err) ||
        a_f32(&a, hc_eps, err) || a_mem(&a, x.mem, err) || a_u64(&a, x.off, err) || a_mem(&a, post.mem, err) ||
        a_u64(&a, post.off, err) || a_mem(&a, comb.mem, err) || a_u64(&a, comb.off, err) ||
        a_u32(&a, norm, err) || a_mem(&a, nwm, err) || a_u64(&a, nw.off, err) || a_u32(&a, nw.mem != NULL, err) ||
        a_f32(&a, eps, err) || a_mem(&a, xnm, err) || a_u64(&a, xn.off, err) ||
        launch(ops, a.k, 1, (uint64_t)T * wg, 1, 1, wg, err))
        return ds4_fail_wrap(err, "%s", op);
    return 0;
}

int ds4_op_hc_pre(ds4_ops *ops, ds4_aref X, ds4_aref mix, ds4_wref scale, ds4_wref base, uint32_t n_hc,
                  uint32_t n_embd, uint32_t T, uint32_t iters, float hc_eps, ds4_aref x, ds4_aref post,
                  ds4_aref comb, ds4_error *err) {
    ds4_wref no_w = {NULL, 0, 0};
    ds4_aref no_a = {NULL, 0};
    return hc_pre_impl(ops, "hc_pre", X, mix, scale, base, n_hc, n_embd, T, iters, hc_eps, x, post, comb, no_w, 0.0f,
                       no_a, err);
}

int ds4_op_hc_pre_norm(ds4_ops *ops, ds4_aref X, ds4_aref mix, ds4_wref scale, ds4_wref base, uint32_t n_hc,
                       uint32_t n_embd, uint32_t T, uint32_t iters, float hc_eps, ds4_aref x, ds4_aref post,
                       ds4_aref comb, ds4_wref norm_w, float eps, ds4_aref xn, ds4_error *err) {
    if (!xn.mem) return ds4_fail(err, "hc_pre_norm: xn buffer is NULL");
    return hc_pre_impl(ops, "hc_pre_norm", X, mix, scale, base, n_hc, n_embd, T, iters, hc_eps, x, post, comb, norm_w,
                       eps, xn, err);
}

int ds4_op_hc_post(ds4_ops *ops, ds4_aref X, ds4_aref y, ds4_aref post, ds4_aref comb, uint32_t n_hc,
                   uint32_t n_embd, uint32_t T, ds4_error *err) {
    const char *op = "hc_post";
    if (T == 0) return 0;
    TRY(check_hc(op, n_hc, n_embd, T, err));
    TRY(check_aref(op, "X", X, (uint64_t)T * n_hc * n_embd, err));
    TRY(check_aref(op, "y", y, (uint64_t)T * n_embd, err));
    TRY(check_aref(op, "post", post, (uint64_t)T * n_hc, err));
    TRY(check_aref(op, "comb", comb, (uint64_t)T * n_hc * n_hc, err));
    kargs a = {ops->hc_post, 0};
    if (a_mem(&a, X.mem, err) || a_u64(&a, X.off, err) || a_mem(&a, y.mem, err) || a_u64(&a, y.off, err) ||
        a_mem(&a, post.mem, err) || a_u64(&a, post.off, err) || a_mem(&a, comb.mem, err) ||
        a_u64(&a, comb.off, err) || a_u32(&a, n_hc, err) || a_u32(&a, n_embd, err) || a_u32(&a, T, err) ||
        launch(ops, a.k, 2, n_embd, T, 1, ELEM_WG, err))
        return ds4_fail_wrap(err, "%s", op);
    return 0;
}

int ds4_op_hc_head(ds4_ops *ops, ds4_aref X, ds4_aref mix, ds4_wref scale, ds4_wref base, uint32_t n_hc,
                   uint32_t n_embd, uint32_t T, float hc_eps, ds4_aref h, ds4_error *err) {
    const char *op = "hc_head";
    if (T == 0) return 0;
    TRY(check_hc(op, n_hc, n_embd, T, err));
    TRY(check_aref(op, "X", X, (uint64_t)T * n_hc * n_embd, err));
    TRY(check_aref(op, "mix", mix, (uint64_t)T * n_hc, err));
    TRY(check_wf32(op, "scale", scale, 1, err));
    TRY(check_wf32(op, "base", base, n_hc, err));
    TRY(check_aref(op, "h", h, (uint64_t)T * n_embd, err));
    kargs a = {ops->hc_head, 0};
    if (a_mem(&a, X.mem, err) || a_u64(&a, X.off, err) || a_mem(&a, mix.mem, err) || a_u64(&a, mix.off, err) ||
        a_mem(&a, scale.mem, err) || a_u64(&a, scale.off, err) || a_mem(&a, base.mem, err) ||
        a_u64(&a, base.off, err) || a_u32(&a, n_hc, err) || a_u32(&a, n_embd, err) || a_u32(&a, T, err) ||
        a_f32(&a, hc_eps, err) || a_mem(&a, h.mem, err) || a_u64(&a, h.off, err) ||
        launch(ops, a.k, 2, n_embd, T, 1, ELEM_WG, err))
        return ds4_fail_wrap(err, "%s", op);
    return 0;
}

/* --------------------------------------------------------------- RoPE -- */

int ds4_op_rope_tail(ds4_ops *ops, ds4_aref x, uint32_t T, uint32_t heads, uint32_t head_dim, uint32_t n_rot,
                     uint32_t pos_base, uint32_t pos_step, ds4_aref inv_freq, int inverse, ds4_error *err) {
    const char *op = "rope_tail";
    if (T == 0) return 0;
    TRY(check_dim(op, "T", T, err));
    TRY(check_dim(op, "heads", heads, err));
    TRY(check_dim(op, "head_dim", head_dim, err));
    if (n_rot == 0 || n_rot % 2 != 0 || n_rot > head_dim)
        return ds4_fail(err, "%s: n_rot %u must be even, positive and at most head_dim %u", op, n_rot, head_dim);
    TRY(check_aref(op, "x", x, mul_sat((uint64_t)T * heads, head_dim), err));
    TRY(check_aref(op, "inv_freq", inv_freq, n_rot / 2, err));
    kargs a = {ops->rope_tail, 0};
    if (a_mem(&a, x.mem, err) || a_u64(&a, x.off, err) || a_u32(&a, T, err) || a_u32(&a, heads, err) ||
        a_u32(&a, head_dim, err) || a_u32(&a, n_rot, err) || a_u32(&a, pos_base, err) ||
        a_u32(&a, pos_step, err) || a_mem(&a, inv_freq.mem, err) || a_u64(&a, inv_freq.off, err) ||
        a_u32(&a, inverse != 0, err) || launch(ops, a.k, 3, n_rot / 2, heads, T, 32, err))
        return ds4_fail_wrap(err, "%s", op);
    return 0;
}

/* ---------------------------------------------------- FP8 / FP4 sims -- */

int ds4_op_fp8_sim(ds4_ops *ops, ds4_aref x, uint32_t rows, uint32_t stride, uint32_t n_sim, ds4_error *err) {
    const char *op = "fp8_sim";
    if (rows == 0) return 0;
    TRY(check_dim(op, "rows", rows, err));
    if (n_sim == 0 || n_sim % DS4_FP8_BLOCK != 0 || n_sim > stride)
        return ds4_fail(err, "%s: n_sim %u must be a positive multiple of %d, at most the stride %u", op, n_sim,
                        DS4_FP8_BLOCK, stride);
    TRY(check_rows(op, "x", x, rows, stride, n_sim, err));
    kargs a = {ops->fp8_sim, 0};
    if (a_mem(&a, x.mem, err) || a_u64(&a, x.off, err) || a_u32(&a, rows, err) || a_u32(&a, stride, err) ||
        a_u32(&a, n_sim, err) || launch(ops, a.k, 2, n_sim, rows, 1, DS4_FP8_BLOCK, err))
        return ds4_fail_wrap(err, "%s", op);
    return 0;
}

int ds4_op_hadamard_fp4(ds4_ops *ops, ds4_aref x, uint32_t rows, uint32_t width, ds4_error *err) {
    const char *op = "hadamard_fp4";
    if (rows == 0) return 0;
    TRY(check_dim(op, "rows", rows, err));
    if (width < DS4_FP4_BLOCK || width > HADAMARD_MAX || (width & (width - 1)) != 0)
        return ds4_fail(err, "%s: width %u is not a power of two in %d..%d", op, width, DS4_FP4_BLOCK,
                        HADAMARD_MAX);
    TRY(check_aref(op, "x", x, (uint64_t)rows * width, err));
    size_t lim = 0;
    DS4_CL_CHECK(clGetKernelWorkGroupInfo(ops->hadamard_fp4, ops->rt->dev.device, CL_KERNEL_WORK_GROUP_SIZE,
                                          sizeof(lim), &lim, NULL),
                 err);
    if (lim < width / 2 || ops->rt->dev.max_wg < width / 2)
        return ds4_fail(err, "%s: width %u needs work-groups of %u, the kernel allows %zu", op, width, width / 2,
                        lim);
    /* The normalisation exactly as ds4_hadamard computes it. */
    const float s = (float)(1.0 / sqrt((double)width));
    kargs a = {ops->hadamard_fp4, 0};
    if (a_mem(&a, x.mem, err) || a_u64(&a, x.off, err) || a_u32(&a, width, err) || a_f32(&a, s, err) ||
        launch(ops, a.k, 1, (uint64_t)rows * (width / 2), 1, 1, width / 2, err))
        return ds4_fail_wrap(err, "%s", op);
    return 0;
}

/* ----------------------------------------------------------- KV store -- */

int ds4_op_kv_store(ds4_ops *ops, ds4_aref kv, ds4_aref ring, uint32_t width, uint32_t cap, uint32_t pos0,
                    uint32_t T, int round_f16, ds4_error *err) {
    const char *op = "kv_store";
    if (T == 0) return 0;
    TRY(check_dim(op, "width", width, err));
    TRY(check_dim(op, "cap", cap, err));
    if (T > cap) return ds4_fail(err, "%s: %u tokens overrun a ring of %u rows", op, T, cap);
    TRY(check_aref(op, "kv", kv, (uint64_t)T * width, err));
    TRY(check_aref(op, "ring", ring, (uint64_t)cap * width, err));
    kargs a = {ops->kv_store, 0};
    if (a_mem(&a, kv.mem, err) || a_u64(&a, kv.off, err) || a_mem(&a, ring.mem, err) ||
        a_u64(&a, ring.off, err) || a_u32(&a, width, err) || a_u32(&a, cap, err) || a_u32(&a, pos0, err) ||
        a_u32(&a, T, err) || a_u32(&a, round_f16 != 0, err) || launch(ops, a.k, 2, width, T, 1, ELEM_WG, err))
        return ds4_fail_wrap(err, "%s", op);
    return 0;
}

/* ------------------------------------------------------------- router -- */

int ds4_op_router(ds4_ops *ops, ds4_aref logits, uint32_t n_expert, uint32_t n_used, uint32_t T, ds4_wref bias,
                  ds4_wref tid2eid, cl_mem tokens, uint64_t tok_off, float scale, cl_mem sel, ds4_aref w,
                  ds4_error *err) {
    const char *op = "router";
    if (T == 0) return 0;
    TRY(check_dim(op, "n_expert", n_expert, err));
    TRY(check_dim(op, "T", T, err));
    if (n_used == 0 || n_used > n_expert || n_used > ROUTE_MAX_USED)
        return ds4_fail(err, "%s: n_used %u is not in 1..min(n_expert %u, %d)", op, n_used, n_expert,
                        ROUTE_MAX_USED);
    TRY(check_aref(op, "logits", logits, (uint64_t)T * n_expert, err));
    if (bias.mem) TRY(check_wf32(op, "bias", bias, n_expert, err));
    if (tid2eid.mem) {
        if (tid2eid.type != DS4_TYPE_I32)
            return ds4_fail(err, "%s: tid2eid must be I32, not %s", op, ds4_type_name(tid2eid.type));
        if (tid2eid.off % 4 != 0)
            return ds4_fail(err, "%s: tid2eid at byte offset %llu is not 4-byte aligned", op,
                            (unsigned long long)tid2eid.off);
        TRY(check_range(op, "tid2eid", tid2eid.mem, tid2eid.off, (uint64_t)n_used * 4, err));
        TRY(check_range(op, "tokens", tokens, mul_sat(tok_off, 4), (uint64_t)T * 4, err));
    }
    TRY(check_range(op, "sel", sel, 0, (uint64_t)T * n_used * 4, err));
    TRY(check_aref(op, "w", w, (uint64_t)T * n_used, err));
    size_t wg = 0;
    if (red_wg(ops, ops->router, &wg, err) != 0) return ds4_fail_wrap(err, "%s", op);
    uint64_t lbytes = (uint64_t)n_expert * 2 * sizeof(float);
    if (lbytes + 1024 > ops->rt->dev.local_mem)
        return ds4_fail(err, "%s: %u experts need %llu bytes of local memory, the device has %llu", op, n_expert,
                        (unsigned long long)lbytes, (unsigned long long)ops->rt->dev.local_mem);
    cl_mem hash_mem = tid2eid.mem ? tid2eid.mem : logits.mem;
    kargs a = {ops->router, 0};
    if (a_mem(&a, logits.mem, err) || a_u64(&a, logits.off, err) || a_u32(&a, n_expert, err) ||
        a_u32(&a, n_used, err) || a_mem(&a, bias.mem ? bias.mem : logits.mem, err) ||
        a_u64(&a, bias.mem ? bias.off : 0, err) || a_u32(&a, bias.mem != NULL, err) || a_mem(&a, hash_mem, err) ||
        a_u64(&a, tid2eid.mem ? tid2eid.off : 0, err) || a_u32(&a, tid2eid.mem != NULL, err) ||
        a_mem(&a, tid2eid.mem ? tokens : logits.mem, err) || a_u64(&a, tid2eid.mem ? tok_off : 0, err) ||
        a_f32(&a, scale, err) || a_mem(&a, sel, err) || a_mem(&a, w.mem, err) || a_u64(&a, w.off, err) ||
        a_local(&a, (size_t)n_expert * sizeof(float), err) || a_local(&a, (size_t)n_expert * sizeof(float), err) ||
        launch(ops, a.k, 1, (uint64_t)T * wg, 1, 1, wg, err))
        return ds4_fail_wrap(err, "%s", op);
    return 0;
}

/* ------------------------------------------------------ SwiGLU / sums -- */

int ds4_op_swiglu(ds4_ops *ops, ds4_aref g, ds4_aref u, ds4_aref w, uint32_t n, uint32_t rows, float clamp,
                  ds4_aref mid, ds4_error *err) {
    const char *op = "swiglu";
    if (rows == 0) return 0;
    TRY(check_dim(op, "n", n, err));
    TRY(check_dim(op, "rows", rows, err));
    if (!(clamp > 0.0f)) return ds4_fail(err, "%s: clamp %g must be positive", op, (double)clamp);
    uint64_t count = (uint64_t)rows * n;
    TRY(check_aref(op, "g", g, count, err));
    TRY(check_aref(op, "u", u, count, err));
    TRY(check_aref(op, "mid", mid, count, err));
    if (w.mem) TRY(check_aref(op, "w", w, rows, err));
    kargs a = {ops->swiglu, 0};
    if (a_mem(&a, g.mem, err) || a_u64(&a, g.off, err) || a_mem(&a, u.mem, err) || a_u64(&a, u.off, err) ||
        a_mem(&a, w.mem ? w.mem : g.mem, err) || a_u64(&a, w.mem ? w.off : 0, err) ||
        a_u32(&a, w.mem != NULL, err) || a_u32(&a, n, err) || a_u32(&a, rows, err) || a_f32(&a, clamp, err) ||
        a_mem(&a, mid.mem, err) || a_u64(&a, mid.off, err) || launch(ops, a.k, 2, n, rows, 1, ELEM_WG, err))
        return ds4_fail_wrap(err, "%s", op);
    return 0;
}

int ds4_op_moe_sum(ds4_ops *ops, ds4_aref y, uint32_t n_used, uint32_t n, uint32_t T, ds4_aref add, ds4_aref out,
                   ds4_error *err) {
    const char *op = "moe_sum";
    if (T == 0) return 0;
    TRY(check_dim(op, "n_used", n_used, err));
    TRY(check_dim(op, "n", n, err));
    TRY(check_dim(op, "T", T, err));
    TRY(check_aref(op, "y", y, mul_sat((uint64_t)T * n_used, n), err));
    TRY(check_aref(op, "out", out, (uint64_t)T * n, err));
    if (add.mem) TRY(check_aref(op, "add", add, (uint64_t)T * n, err));
    kargs a = {ops->moe_sum, 0};
    if (a_mem(&a, y.mem, err) || a_u64(&a, y.off, err) || a_u32(&a, n_used, err) || a_u32(&a, n, err) ||
        a_u32(&a, T, err) || a_mem(&a, add.mem ? add.mem : y.mem, err) || a_u64(&a, add.mem ? add.off : 0, err) ||
        a_u32(&a, add.mem != NULL, err) || a_mem(&a, out.mem, err) || a_u64(&a, out.off, err) ||
        launch(ops, a.k, 2, n, T, 1, ELEM_WG, err))
        return ds4_fail_wrap(err, "%s", op);
    return 0;
}

int ds4_op_add(ds4_ops *ops, ds4_aref a, ds4_aref b, ds4_aref out, uint64_t n, ds4_error *err) {
    const char *op = "add";
    if (n == 0) return 0;
    if (n > (1ULL << 40)) return ds4_fail(err, "%s: n = %llu is too large", op, (unsigned long long)n);
    TRY(check_aref(op, "a", a, n, err));
    TRY(check_aref(op, "b", b, n, err));
    TRY(check_aref(op, "out", out, n, err));
    kargs ka = {ops->add, 0};
    if (a_mem(&ka, a.mem, err) || a_u64(&ka, a.off, err) || a_mem(&ka, b.mem, err) || a_u64(&ka, b.off, err) ||
        a_mem(&ka, out.mem, err) || a_u64(&ka, out.off, err) || a_u64(&ka, n, err) ||
        launch(ops, ka.k, 1, n, 1, 1, ELEM_WG, err))
        return ds4_fail_wrap(err, "%s", op);
    return 0;
}
