/* matvec_bench.c - memory bandwidth of the matvec kernels (ds4cl-matvec-bench).
 *
 *   ds4cl-matvec-bench [--device N|name] [--mb N] [--ncols N] [--reps N]
 *                      [--tokens N] [--types q8_0,f16,...] [--options "-D..."]
 *                      [--csv]
 *
 * For each weight type with kernels it fills a matrix of about --mb MiB
 * (default 256 on GPUs, 64 on CPU devices; ncols columns, default 4096,
 * as many rows as fit) with valid random blocks, runs the
 * matvec twice to warm up, then times --reps calls enqueued back to back
 * in five batches, each closed by clFinish, and reports the weight bytes
 * read per second of the fastest batch.
 * The same program measures two references on the same device: a
 * clEnqueueCopyBuffer of a buffer of the same size (counting bytes read
 * plus bytes written) and the stream_read kernel (bytes read).  Two ratio
 * columns: matvec GB/s over copy GB/s, and over stream-read GB/s.  With --tokens N > 1 it
 * also times ds4_matmul for N tokens (weights read once per token tile).
 *
 * Timing is wall clock around an in-order queue, so launch overhead is
 * included, as it is in the engine.  GB here are 10^9 bytes; MiB sizes.
 */
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "kernels.h"
#include "quant.h"

typedef struct {
    const char *device;
    const char *types;
    const char *options;
    uint64_t mib;
    uint64_t ncols;
    int reps;
    int tokens;
    bool csv;
} bench_args;

typedef struct {
    double copy_gbs;    /* clEnqueueCopyBuffer, read + write bytes */
    double stream_gbs;  /* stream_read kernel, read bytes */
} bench_refs;

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static uint64_t rng_next(uint64_t *s) {
    *s ^= *s >> 12;
    *s ^= *s << 25;
    *s ^= *s >> 27;
    return *s * 2685821657736338717ULL;
}

/* Random value in [-1, 1). */
static float rng_f32(uint64_t *s) {
    return (float)((double)(rng_next(s) >> 11) * (2.0 / 9007199254740992.0) - 1.0);
}

/* Fill n bytes of `type` weights (whole rows) with values the kernels
 * decode into ordinary numbers: random codes, small normal scales, and
 * float values in [-1, 1] with no denormals, NaN or Inf. */
static void fill_weights(uint32_t type, uint8_t *p, uint64_t n, uint64_t *seed) {
    const uint16_t scale = 0x2000; /* f16 2^-7 */
    if (type == DS4_TYPE_F32) {
        for (uint64_t i = 0; i + 4 <= n; i += 4) {
            float v = rng_f32(seed);
            memcpy(p + i, &v, 4);
        }
        return;
    }
    if (type == DS4_TYPE_F16 || type == DS4_TYPE_BF16) {
        for (uint64_t i = 0; i + 2 <= n; i += 2) {
            uint64_t r = rng_next(seed);
            uint16_t h = type == DS4_TYPE_F16
                             ? (uint16_t)((r & 0x83ff) | ((10 + (r >> 16) % 5) << 10))
                             : (uint16_t)((r & 0x807f) | ((120 + (r >> 16) % 7) << 7));
            memcpy(p + i, &h, 2);
        }
        return;
    }
    for (uint64_t i = 0; i < n; i += 8) {
        uint64_t r = rng_next(seed);
        memcpy(p + i, &r, n - i < 8 ? n - i : 8);
    }
    const ds4_type_traits *tr = ds4_type_get(type);
    for (uint64_t b = 0; b + tr->type_size <= n; b += tr->type_size) {
        uint8_t *blk = p + b;
        switch (type) {
        case DS4_TYPE_Q8_0:
        case DS4_TYPE_IQ2_XXS: memcpy(blk, &scale, 2); break;
        case DS4_TYPE_Q4_K: memcpy(blk, &scale, 2); memcpy(blk + 2, &scale, 2); break;
        case DS4_TYPE_Q2_K: memcpy(blk + 80, &scale, 2); memcpy(blk + 82, &scale, 2); break;
        default: break;
        }
    }
}

/* Device buffer of `bytes` filled from a host buffer. */
static int upload(ds4_runtime *rt, const void *src, uint64_t bytes, cl_mem *out, ds4_error *err) {
    if (ds4_buffer_new(rt, bytes, out, err) != 0) return -1;
    if (ds4_buffer_write(rt, *out, 0, src, bytes, err) != 0) {
        clReleaseMemObject(*out);
        *out = NULL;
        return -1;
    }
    return 0;
}

/* One enqueue of the operation being timed. */
typedef int (*bench_op)(void *ctx, ds4_error *err);

/* Seconds per call of op: two warm-up calls, then `reps` calls in up to five
 * batches of back-to-back enqueues closed by clFinish; the fastest batch
 * wins (the machine may be shared, and slow outliers are interference). */
static int time_op(ds4_runtime *rt, bench_op op, void *ctx, int reps, double *best, ds4_error *err) {
    for (int i = 0; i < 2; i++)
        if (op(ctx, err) != 0) return -1;
    if (ds4_runtime_finish(rt, err) != 0) return -1;
    int batch = reps >= 5 ? reps / 5 : 1;
    *best = 1e30;
    for (int done = 0; done < reps; done += batch) {
        double t0 = now_s();
        for (int i = 0; i < batch; i++)
            if (op(ctx, err) != 0) return -1;
        if (ds4_runtime_finish(rt, err) != 0) return -1;
        double per = (now_s() - t0) / batch;
        if (per < *best) *best = per;
    }
    return 0;
}

typedef struct {
    ds4_runtime *rt;
    cl_mem a, b;
    uint64_t bytes;
    cl_kernel kern;
    size_t global, local;
} refs_ctx;

static int op_copy(void *vctx, ds4_error *err) {
    refs_ctx *c = vctx;
    DS4_CL_CHECK(clEnqueueCopyBuffer(c->rt->queue, c->a, c->b, 0, 0, (size_t)c->bytes, 0, NULL, NULL), err);
    return 0;
}

static int op_stream(void *vctx, ds4_error *err) {
    refs_ctx *c = vctx;
    DS4_CL_CHECK(clEnqueueNDRangeKernel(c->rt->queue, c->kern, 1, NULL, &c->global, &c->local, 0, NULL, NULL),
                 err);
    return 0;
}

/* Copy bandwidth and stream-read bandwidth over buffers of `bytes`. */
static int measure_refs(ds4_kernels *k, uint64_t bytes, int reps, bench_refs *refs, ds4_error *err) {
    ds4_runtime *rt = k->rt;
    int rc = -1;
    cl_mem out = NULL;
    refs_ctx c = {rt, NULL, NULL, bytes, NULL, 0, 0};
    double sec = 0;
    uint8_t *host = calloc(1, bytes);
    if (!host) return ds4_fail(err, "out of memory (%llu bytes)", (unsigned long long)bytes);
    if (upload(rt, host, bytes, &c.a, err) != 0 || ds4_buffer_new(rt, bytes, &c.b, err) != 0) goto done;
    if (time_op(rt, op_copy, &c, reps, &sec, err) != 0) goto done;
    refs->copy_gbs = 2.0 * (double)bytes / sec / 1e9;

    bool cpu = (rt->dev.type & CL_DEVICE_TYPE_CPU) != 0;
    c.local = cpu ? 64 : 256;
    c.global = (size_t)rt->dev.compute_units * (cpu ? 256 : 2048);
    c.global = (c.global + c.local - 1) / c.local * c.local;
    cl_ulong n4 = bytes / 16;
    cl_int crc = CL_SUCCESS;
    c.kern = clCreateKernel(k->program, "stream_read", &crc);
    if (crc != CL_SUCCESS) {
        ds4_fail(err, "clCreateKernel(stream_read) failed: %s", ds4_cl_strerror(crc));
        goto done;
    }
    if (ds4_buffer_new(rt, c.global * sizeof(float), &out, err) != 0) goto done;
    if ((crc = clSetKernelArg(c.kern, 0, sizeof(cl_mem), &c.a)) != CL_SUCCESS ||
        (crc = clSetKernelArg(c.kern, 1, sizeof(n4), &n4)) != CL_SUCCESS ||
        (crc = clSetKernelArg(c.kern, 2, sizeof(cl_mem), &out)) != CL_SUCCESS) {
        ds4_fail(err, "clSetKernelArg(stream_read) failed: %s", ds4_cl_strerror(crc));
        goto done;
    }
    if (time_op(rt, op_stream, &c, reps, &sec, err) != 0) goto done;
    refs->stream_gbs = (double)n4 * 16.0 / sec / 1e9;
    rc = 0;
done:
    if (c.kern) clReleaseKernel(c.kern);
    if (out) clReleaseMemObject(out);
    if (c.a) clReleaseMemObject(c.a);
    if (c.b) clReleaseMemObject(c.b);
    free(host);
    return rc;
}

typedef struct {
    uint64_t bytes, nrows;
    double mv_us, mm_us; /* per call; mm_us 0 when not measured */
} type_result;

typedef struct {
    ds4_kernels *k;
    uint32_t type;
    cl_mem w, x, y;
    uint64_t ncols, nrows, ntok; /* ntok 1: matvec */
} mv_ctx;

static int op_mv(void *vctx, ds4_error *err) {
    mv_ctx *c = vctx;
    if (c->ntok == 1) return ds4_matvec(c->k, c->type, c->w, 0, c->ncols, c->nrows, c->x, 0, c->y, 0, err);
    return ds4_matmul(c->k, c->type, c->w, 0, c->ncols, c->nrows, c->x, 0, c->y, 0, c->ntok, err);
}

/* Time `reps` matvecs (and matmuls when tokens > 1) of one weight type. */
static int bench_type(ds4_kernels *k, uint32_t type, const bench_args *a, type_result *res, ds4_error *err) {
    ds4_runtime *rt = k->rt;
    uint64_t row_bytes = ds4_row_bytes(type, a->ncols);
    if (row_bytes == 0)
        return ds4_fail(err, "ncols %llu is not whole %s blocks", (unsigned long long)a->ncols,
                        ds4_type_name(type));
    uint64_t want = a->mib << 20;
    if (want > rt->dev.max_alloc) want = rt->dev.max_alloc;
    res->nrows = want / row_bytes ? want / row_bytes : 1;
    res->bytes = res->nrows * row_bytes;
    res->mm_us = 0;

    int ntok = a->tokens > 1 ? a->tokens : 1;
    int rc = -1;
    cl_mem w = NULL, x = NULL, y = NULL;
    uint64_t seed = 0x9e3779b97f4a7c15ULL ^ type;
    uint8_t *wh = malloc(res->bytes);
    float *xh = malloc(sizeof(float) * a->ncols * (uint64_t)ntok);
    if (!wh || !xh) {
        ds4_fail(err, "out of memory");
        goto done;
    }
    fill_weights(type, wh, res->bytes, &seed);
    for (uint64_t i = 0; i < a->ncols * (uint64_t)ntok; i++) xh[i] = rng_f32(&seed);
    if (upload(rt, wh, res->bytes, &w, err) != 0) goto done;
    if (upload(rt, xh, sizeof(float) * a->ncols * (uint64_t)ntok, &x, err) != 0) goto done;
    if (ds4_buffer_new(rt, sizeof(float) * res->nrows * (uint64_t)ntok, &y, err) != 0) goto done;

    mv_ctx c = {k, type, w, x, y, a->ncols, res->nrows, 1};
    double sec = 0;
    if (time_op(rt, op_mv, &c, a->reps, &sec, err) != 0) goto done;
    res->mv_us = sec * 1e6;
    if (ntok > 1) {
        c.ntok = (uint64_t)ntok;
        if (time_op(rt, op_mv, &c, a->reps, &sec, err) != 0) goto done;
        res->mm_us = sec * 1e6;
    }
    rc = 0;
done:
    if (w) clReleaseMemObject(w);
    if (x) clReleaseMemObject(x);
    if (y) clReleaseMemObject(y);
    free(wh);
    free(xh);
    return rc;
}

/* Is `name` in the comma-separated list (case-insensitive)?  NULL: all. */
static bool type_selected(const char *list, const char *name) {
    if (!list) return true;
    size_t nl = strlen(name);
    for (const char *p = list; *p;) {
        const char *e = strchr(p, ',');
        size_t len = e ? (size_t)(e - p) : strlen(p);
        if (len == nl && strncasecmp(p, name, nl) == 0) return true;
        p += len + (e ? 1 : 0);
    }
    return false;
}

static void usage(FILE *fp) {
    fprintf(fp, "usage: ds4cl-matvec-bench [--device N|name] [--mb N] [--ncols N] [--reps N]\n"
                "                          [--tokens N] [--types t1,t2] [--options \"-DMV_LANES=..\"] [--csv]\n");
}

static int parse_args(int argc, char **argv, bench_args *a) {
    memset(a, 0, sizeof(*a));
    a->ncols = 4096;
    a->reps = 20;
    for (int i = 1; i < argc; i++) {
        const char *arg = argv[i];
        const char *val = i + 1 < argc ? argv[i + 1] : NULL;
        if (strcmp(arg, "--csv") == 0) { a->csv = true; continue; }
        if (strcmp(arg, "-h") == 0 || strcmp(arg, "--help") == 0) { usage(stdout); exit(0); }
        if (!val) { usage(stderr); return -1; }
        i++;
        if (strcmp(arg, "--device") == 0) a->device = val;
        else if (strcmp(arg, "--types") == 0) a->types = val;
        else if (strcmp(arg, "--options") == 0) a->options = val;
        else if (strcmp(arg, "--mb") == 0) a->mib = strtoull(val, NULL, 10);
        else if (strcmp(arg, "--ncols") == 0) a->ncols = strtoull(val, NULL, 10);
        else if (strcmp(arg, "--reps") == 0) a->reps = atoi(val);
        else if (strcmp(arg, "--tokens") == 0) a->tokens = atoi(val);
        else { usage(stderr); return -1; }
    }
    if (a->ncols == 0 || a->reps < 1) { usage(stderr); return -1; }
    return 0;
}

static const uint32_t bench_types[] = {DS4_TYPE_F32,  DS4_TYPE_F16,  DS4_TYPE_BF16,   DS4_TYPE_Q8_0,
                                       DS4_TYPE_Q2_K, DS4_TYPE_Q4_K, DS4_TYPE_IQ2_XXS};

static int run(const bench_args *a, ds4_error *err) {
    ds4_runtime rt;
    ds4_runtime_opts ro = {0};
    ro.device = a->device;
    if (ds4_runtime_open(&rt, &ro, err) != 0) return -1;
    ds4_kernels k;
    if (ds4_kernels_init(&k, &rt, a->options, err) != 0) {
        ds4_runtime_close(&rt);
        return -1;
    }
    bench_args eff = *a;
    if (eff.mib == 0) eff.mib = (rt.dev.type & CL_DEVICE_TYPE_CPU) ? 64 : 256;
    int rc = -1;
    bench_refs refs = {0, 0};
    uint64_t ref_bytes = eff.mib << 20;
    if (ref_bytes > rt.dev.max_alloc) ref_bytes = rt.dev.max_alloc;
    if (measure_refs(&k, ref_bytes, eff.reps, &refs, err) != 0) goto done;

    if (eff.csv) {
        printf("device,type,ncols,nrows,bytes,us_per_matvec,gbs,copy_gbs,stream_gbs,ratio_copy,ratio_stream,tokens,"
               "us_per_matmul,"
               "matmul_gbs\n");
    } else {
        printf("device: %s / %s (MV_LANES=%d MV_ROWS=%d MM_TOKENS=%d)\n", rt.dev.platform_name, rt.dev.name,
               k.mv_lanes, k.mv_rows, k.mm_tokens);
        printf("copy %.2f GB/s (read+write), stream read %.2f GB/s; ncols %llu, %d reps\n", refs.copy_gbs,
               refs.stream_gbs, (unsigned long long)eff.ncols, eff.reps);
        printf("%-8s %10s %12s %9s %9s %9s %7s %8s", "type", "MiB", "us/matvec", "GB/s", "copy", "stream", "x copy",
               "x stream");
        if (eff.tokens > 1) printf(" %12s %9s", "us/matmul", "mm GB/s");
        printf("\n");
    }
    for (size_t i = 0; i < sizeof(bench_types) / sizeof(bench_types[0]); i++) {
        uint32_t t = bench_types[i];
        if (!ds4_kernels_has_type(&k, t) || !type_selected(eff.types, ds4_type_name(t))) continue;
        if (ds4_row_bytes(t, eff.ncols) == 0) {
            fprintf(stderr, "skipping %s: ncols %llu is not whole blocks\n", ds4_type_name(t),
                    (unsigned long long)eff.ncols);
            continue;
        }
        type_result r = {0, 0, 0, 0};
        if (bench_type(&k, t, &eff, &r, err) != 0) {
            ds4_fail_wrap(err, "%s", ds4_type_name(t));
            goto done;
        }
        double gbs = (double)r.bytes / (r.mv_us * 1e-6) / 1e9;
        double mm_gbs = r.mm_us > 0 ? (double)r.bytes / (r.mm_us * 1e-6) / 1e9 : 0;
        if (eff.csv) {
            printf("\"%s\",%s,%llu,%llu,%llu,%.2f,%.3f,%.3f,%.3f,%.3f,%.3f,%d,%.2f,%.3f\n", rt.dev.name,
                   ds4_type_name(t), (unsigned long long)eff.ncols, (unsigned long long)r.nrows,
                   (unsigned long long)r.bytes, r.mv_us, gbs, refs.copy_gbs, refs.stream_gbs, gbs / refs.copy_gbs,
                   gbs / refs.stream_gbs, eff.tokens > 1 ? eff.tokens : 1, r.mm_us, mm_gbs);
        } else {
            printf("%-8s %10.1f %12.1f %9.2f %9.2f %9.2f %7.2f %8.2f", ds4_type_name(t),
                   (double)r.bytes / 1048576.0, r.mv_us, gbs, refs.copy_gbs, refs.stream_gbs, gbs / refs.copy_gbs,
                   gbs / refs.stream_gbs);
            if (eff.tokens > 1) printf(" %12.1f %9.2f", r.mm_us, mm_gbs);
            printf("\n");
        }
    }
    rc = 0;
done:
    ds4_kernels_free(&k);
    ds4_runtime_close(&rt);
    return rc;
}

int main(int argc, char **argv) {
    bench_args a;
    if (parse_args(argc, argv, &a) != 0) return 2;
    ds4_error err = {{0}};
    if (run(&a, &err) != 0) {
        fprintf(stderr, "ds4cl-matvec-bench: %s\n", err.msg);
        return 1;
    }
    return 0;
}
