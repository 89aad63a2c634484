/* calib.c - the engine side of ds4cl-imatrix and ds4cl-score (calib.h):
 * windowed evaluation, the device imatrix collector and its session tap,
 * teacher-forced scoring, and reading token inputs.
 *
 * Collector design.  Per layer the device keeps, for every expert, the
 * running token count (u32) and for every input column a Kahan pair (sum of
 * x^2, compensation) for the gate/up input and for the down input.  The
 * session's moe_tap (forward.h) is called by each layer's ffn after the
 * SwiGLU; it enqueues imx_lists (the chunk's slots per expert, in slot
 * order) and two imx_accum passes (cl/imatrix.cl).  Every sum runs in a
 * fixed order, so a collection is deterministic, and nothing is read back
 * until the end: the hot path stays on the device.  Device memory:
 * n_layer x n_expert x (n_embd + n_ff) x 8 bytes (Flash: ~540 MB) plus the
 * lists (n_expert x chunk x n_used x 4 bytes).
 *
 * Scoring evaluates each window in pieces of at most one prefill chunk with
 * all logits kept for the piece only, so host memory is chunk x n_vocab
 * floats whatever the window length.
 */
#include "calib.h"

#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <xxhash.h>

#include "forward.h"

struct ds4_imx_collector {
    ds4_runtime *rt;
    ds4_imatrix_dims dims;
    cl_kernel k_lists, k_accum;
    uint32_t cap;               /* slots per expert the lists hold */
    cl_mem lists;               /* u32 [n_expert][cap] */
    cl_mem chunk_count;         /* u32 [n_expert] */
    cl_mem total[DS4_MAX_LAYERS];   /* u32 [n_expert] */
    cl_mem acc_in[DS4_MAX_LAYERS];  /* f32 [n_expert][n_embd][2] */
    cl_mem acc_mid[DS4_MAX_LAYERS]; /* f32 [n_expert][n_ff][2] */
};

#define TRY(call)                   \
    do {                            \
        if ((call) != 0) return -1; \
    } while (0)

void ds4_imatrix_dims_of(const ds4_model *m, ds4_imatrix_dims *d) {
    const ds4_hparams *hp = &m->hp;
    d->n_layer = hp->n_layer;
    d->n_expert = hp->n_expert;
    d->n_embd = hp->n_embd;
    d->n_ff = hp->n_ff_exp;
    d->n_vocab = hp->n_vocab;
    d->n_expert_used = hp->n_expert_used;
}

/* ------------------------------------------------------------ collector */

void ds4_imx_collector_free(ds4_imx_collector *c) {
    if (!c) return;
    if (c->k_lists) clReleaseKernel(c->k_lists);
    if (c->k_accum) clReleaseKernel(c->k_accum);
    cl_mem *bufs[] = {&c->lists, &c->chunk_count};
    for (size_t i = 0; i < sizeof(bufs) / sizeof(bufs[0]); i++)
        if (*bufs[i]) clReleaseMemObject(*bufs[i]);
    for (uint32_t il = 0; il < DS4_MAX_LAYERS; il++) {
        if (c->total[il]) clReleaseMemObject(c->total[il]);
        if (c->acc_in[il]) clReleaseMemObject(c->acc_in[il]);
        if (c->acc_mid[il]) clReleaseMemObject(c->acc_mid[il]);
    }
    free(c);
}

/* A device buffer of `bytes` zero bytes (zeros: a host buffer of that many). */
static int zero_buf(ds4_runtime *rt, uint64_t bytes, const void *zeros, cl_mem *out, ds4_error *err) {
    TRY(ds4_buffer_new(rt, bytes, out, err));
    return ds4_buffer_write(rt, *out, 0, zeros, bytes, err);
}

static int collector_alloc(ds4_imx_collector *c, ds4_error *err) {
    const ds4_imatrix_dims *d = &c->dims;
    uint64_t n_in = (uint64_t)d->n_expert * d->n_embd * 2 * 4, n_mid = (uint64_t)d->n_expert * d->n_ff * 2 * 4;
    void *zeros = calloc(1, (size_t)(n_in > n_mid ? n_in : n_mid));
    if (!zeros) return ds4_fail(err, "imatrix collector: out of memory");
    int rc = ds4_buffer_new(c->rt, (uint64_t)d->n_expert * c->cap * 4, &c->lists, err);
    if (rc == 0) rc = zero_buf(c->rt, (uint64_t)d->n_expert * 4, zeros, &c->chunk_count, err);
    for (uint32_t il = 0; rc == 0 && il < d->n_layer; il++) {
        rc = zero_buf(c->rt, (uint64_t)d->n_expert * 4, zeros, &c->total[il], err);
        if (rc == 0) rc = zero_buf(c->rt, n_in, zeros, &c->acc_in[il], err);
        if (rc == 0) rc = zero_buf(c->rt, n_mid, zeros, &c->acc_mid[il], err);
    }
    free(zeros);
    return rc;
}

int ds4_imx_collector_new(ds4_imx_collector **out, ds4_runtime *rt, cl_program program, const ds4_imatrix_dims *d,
                          uint32_t max_slots, ds4_error *err) {
    *out = NULL;
    if (ds4_imatrix_dims_check(d, err) != 0) return -1;
    if (max_slots == 0) return ds4_fail(err, "imatrix collector: no slots per chunk");
    ds4_imx_collector *c = calloc(1, sizeof(*c));
    if (!c) return ds4_fail(err, "imatrix collector: out of memory");
    c->rt = rt;
    c->dims = *d;
    c->cap = max_slots;
    cl_int rc = CL_SUCCESS;
    c->k_lists = clCreateKernel(program, "imx_lists", &rc);
    if (rc == CL_SUCCESS) c->k_accum = clCreateKernel(program, "imx_accum", &rc);
    if (rc != CL_SUCCESS) {
        ds4_imx_collector_free(c);
        return ds4_fail(err, "imatrix collector: clCreateKernel failed: %s (kernels built without cl/imatrix.cl?)",
                        ds4_cl_strerror(rc));
    }
    if (collector_alloc(c, err) != 0) {
        ds4_imx_collector_free(c);
        return ds4_fail_wrap(err, "imatrix collector");
    }
    *out = c;
    return 0;
}

static int accum(ds4_imx_collector *c, cl_mem x, uint32_t ncols, uint32_t per_slot, cl_mem acc, ds4_error *err) {
    cl_uint n_used = c->dims.n_expert_used, cap = c->cap, n_expert = c->dims.n_expert, nc = ncols, ps = per_slot;
    cl_kernel k = c->k_accum;
    DS4_CL_CHECK(clSetKernelArg(k, 0, sizeof(cl_mem), &x), err);
    DS4_CL_CHECK(clSetKernelArg(k, 1, sizeof(cl_uint), &nc), err);
    DS4_CL_CHECK(clSetKernelArg(k, 2, sizeof(cl_uint), &ps), err);
    DS4_CL_CHECK(clSetKernelArg(k, 3, sizeof(cl_uint), &n_used), err);
    DS4_CL_CHECK(clSetKernelArg(k, 4, sizeof(cl_mem), &c->lists), err);
    DS4_CL_CHECK(clSetKernelArg(k, 5, sizeof(cl_mem), &c->chunk_count), err);
    DS4_CL_CHECK(clSetKernelArg(k, 6, sizeof(cl_uint), &cap), err);
    DS4_CL_CHECK(clSetKernelArg(k, 7, sizeof(cl_uint), &n_expert), err);
    DS4_CL_CHECK(clSetKernelArg(k, 8, sizeof(cl_mem), &acc), err);
    size_t global[2] = {ncols, n_expert};
    if (ds4_enqueue(c->rt, k, 2, global, NULL, 0, err) != 0) return -1;
    return 0;
}

int ds4_imx_collector_add(ds4_imx_collector *c, uint32_t il, cl_mem xn, cl_mem sel, cl_mem mid, uint32_t T,
                          ds4_error *err) {
    const ds4_imatrix_dims *d = &c->dims;
    if (il >= d->n_layer) return ds4_fail(err, "imatrix collector: layer %u of %u", il, d->n_layer);
    if (T == 0 || (uint64_t)T * d->n_expert_used > c->cap)
        return ds4_fail(err, "imatrix collector: chunk of %u tokens exceeds the %u slots it was made for", T, c->cap);
    cl_uint n_slots = T * d->n_expert_used, n_expert = d->n_expert, cap = c->cap;
    cl_kernel k = c->k_lists;
    DS4_CL_CHECK(clSetKernelArg(k, 0, sizeof(cl_mem), &sel), err);
    DS4_CL_CHECK(clSetKernelArg(k, 1, sizeof(cl_uint), &n_slots), err);
    DS4_CL_CHECK(clSetKernelArg(k, 2, sizeof(cl_uint), &n_expert), err);
    DS4_CL_CHECK(clSetKernelArg(k, 3, sizeof(cl_uint), &cap), err);
    DS4_CL_CHECK(clSetKernelArg(k, 4, sizeof(cl_mem), &c->lists), err);
    DS4_CL_CHECK(clSetKernelArg(k, 5, sizeof(cl_mem), &c->chunk_count), err);
    DS4_CL_CHECK(clSetKernelArg(k, 6, sizeof(cl_mem), &c->total[il]), err);
    size_t global = n_expert;
    if (ds4_enqueue(c->rt, k, 1, &global, NULL, 0, err) != 0) return -1;
    TRY(accum(c, xn, d->n_embd, 0, c->acc_in[il], err));
    return accum(c, mid, d->n_ff, 1, c->acc_mid[il], err);
}

/* Means from the Kahan pairs of one expert: out[i] = (sum - comp) / count. */
static int finish_means(const float *pairs, uint32_t n, uint64_t count, float *out, uint32_t il, uint32_t e,
                        ds4_error *err) {
    for (uint32_t i = 0; i < n; i++) {
        double v = count ? ((double)pairs[2 * i] - (double)pairs[2 * i + 1]) / (double)count : 0.0;
        if (!isfinite(v)) return ds4_fail(err, "imatrix: layer %u expert %u column %u overflowed", il, e, i);
        out[i] = v > 0 ? (float)v : 0.0f;
    }
    return 0;
}

int ds4_imx_collector_read(ds4_imx_collector *c, ds4_imatrix *out, ds4_error *err) {
    const ds4_imatrix_dims *d = &c->dims;
    TRY(ds4_imatrix_init(out, d, err));
    uint64_t n_in = (uint64_t)d->n_expert * d->n_embd * 2, n_mid = (uint64_t)d->n_expert * d->n_ff * 2;
    float *pairs = malloc((size_t)(n_in > n_mid ? n_in : n_mid) * sizeof(float));
    uint32_t *cnt = malloc((size_t)d->n_expert * sizeof(uint32_t));
    int rc = pairs && cnt ? 0 : ds4_fail(err, "imatrix collector: out of memory");
    for (uint32_t il = 0; rc == 0 && il < d->n_layer; il++) {
        uint64_t *count = out->count + (uint64_t)il * d->n_expert;
        rc = ds4_buffer_read(c->rt, c->total[il], 0, cnt, (uint64_t)d->n_expert * 4, err);
        for (uint32_t e = 0; rc == 0 && e < d->n_expert; e++) count[e] = cnt[e];
        if (rc == 0) rc = ds4_buffer_read(c->rt, c->acc_in[il], 0, pairs, n_in * 4, err);
        for (uint32_t e = 0; rc == 0 && e < d->n_expert; e++)
            rc = finish_means(pairs + (uint64_t)e * d->n_embd * 2, d->n_embd, count[e],
                              out->gate_up + ((uint64_t)il * d->n_expert + e) * d->n_embd, il, e, err);
        if (rc == 0) rc = ds4_buffer_read(c->rt, c->acc_mid[il], 0, pairs, n_mid * 4, err);
        for (uint32_t e = 0; rc == 0 && e < d->n_expert; e++)
            rc = finish_means(pairs + (uint64_t)e * d->n_ff * 2, d->n_ff, count[e],
                              out->down + ((uint64_t)il * d->n_expert + e) * d->n_ff, il, e, err);
    }
    free(pairs);
    free(cnt);
    if (rc != 0) ds4_imatrix_free(out);
    return rc;
}

/* The session tap: hand the layer's chunk to the collector. */
static int imx_tap(void *ctx, ds4_session *s, uint32_t il, uint32_t T, ds4_error *err) {
    return ds4_imx_collector_add(ctx, il, s->s.xn, s->s.esel, s->s.g, T, err);
}

/* ------------------------------------------------------------ windows */

static void progress_line(FILE *fp, const char *what, uint64_t w, uint64_t n_win, uint64_t done, uint64_t n) {
    if (fp) fprintf(fp, "%s: window %llu/%llu, %llu/%llu tokens\n", what, (unsigned long long)w + 1,
                    (unsigned long long)n_win, (unsigned long long)done, (unsigned long long)n);
}

static int check_input(uint64_t n, uint64_t min_n, uint32_t ctx, ds4_error *err) {
    if (n < min_n) return ds4_fail(err, "need at least %llu tokens, got %llu", (unsigned long long)min_n,
                                   (unsigned long long)n);
    if (ctx == 0) return ds4_fail(err, "window (context) size must be at least 1");
    return 0;
}

int ds4_collect_imatrix(ds4_engine *e, const int32_t *tokens, uint64_t n, uint32_t ctx, ds4_imatrix *out,
                        FILE *progress, ds4_error *err) {
    memset(out, 0, sizeof(*out));
    TRY(check_input(n, 1, ctx, err));
    ds4_imatrix_dims d;
    ds4_imatrix_dims_of(&e->model, &d);
    uint32_t chunk = e->chunk < ctx ? e->chunk : ctx;
    ds4_imx_collector *c = NULL;
    TRY(ds4_imx_collector_new(&c, &e->rt, e->kern.program, &d, chunk * d.n_expert_used, err));
    const uint64_t n_win = (n + ctx - 1) / ctx;
    int rc = 0;
    for (uint64_t w = 0; rc == 0 && w < n_win; w++) {
        uint64_t first = w * ctx, len = n - first < ctx ? n - first : ctx;
        ds4_session *s = NULL;
        rc = ds4_session_new(e, (uint32_t)len, &s, err);
        if (rc == 0) {
            s->moe_tap = imx_tap;
            s->moe_tap_ctx = c;
            rc = ds4_session_eval(s, tokens + first, (uint32_t)len, NULL, err);
            if (rc != 0) ds4_fail_wrap(err, "window %llu", (unsigned long long)w);
        }
        ds4_session_free(s);
        if (rc == 0) progress_line(progress, "imatrix", w, n_win, first + len, n);
    }
    if (rc == 0) rc = ds4_imx_collector_read(c, out, err);
    ds4_imx_collector_free(c);
    if (rc != 0) return -1;
    out->n_tokens = n;
    out->tokens_hash = XXH64(tokens, (size_t)n * sizeof(int32_t), 0);
    snprintf(out->name, sizeof(out->name), "%.*s", (int)sizeof(out->name) - 1, e->model.name);
    return 0;
}

/* ------------------------------------------------------------ scoring */

/* -log softmax(logits)[tok], in double. */
static double token_nll(const float *logits, uint32_t V, int32_t tok) {
    float mx = logits[0];
    for (uint32_t i = 1; i < V; i++)
        if (logits[i] > mx) mx = logits[i];
    double s = 0;
    for (uint32_t i = 0; i < V; i++) s += exp((double)logits[i] - mx);
    return (double)mx + log(s) - (double)logits[tok];
}

/* Sum of the NLL of one window (positions 1..len-1) into *sum. */
static int score_window(ds4_engine *e, const int32_t *tok, uint32_t len, float *buf, double *sum, ds4_error *err) {
    const uint32_t V = e->model.hp.n_vocab;
    ds4_session *s = NULL;
    TRY(ds4_session_new(e, len, &s, err));
    int rc = 0;
    for (uint32_t q = 0; rc == 0 && q < len; q += s->chunk) {
        uint32_t piece = len - q < s->chunk ? len - q : s->chunk;
        rc = ds4_session_eval(s, tok + q, piece, buf, err);
        for (uint32_t j = 0; rc == 0 && j < piece && q + j + 1 < len; j++)
            *sum += token_nll(buf + (uint64_t)j * V, V, tok[q + j + 1]);
    }
    ds4_session_free(s);
    return rc;
}

int ds4_score_tokens(ds4_engine *e, const int32_t *tokens, uint64_t n, uint32_t ctx, ds4_score_result *out,
                     FILE *progress, ds4_error *err) {
    memset(out, 0, sizeof(*out));
    TRY(check_input(n, 2, ctx, err));
    if (ctx < 2) return ds4_fail(err, "window (context) size must be at least 2 to score anything");
    const uint32_t V = e->model.hp.n_vocab;
    for (uint64_t i = 0; i < n; i++)
        if (tokens[i] < 0 || (uint32_t)tokens[i] >= V)
            return ds4_fail(err, "token %d at index %llu is outside the vocabulary (%u tokens)", tokens[i],
                            (unsigned long long)i, V);
    uint32_t chunk = e->chunk < ctx ? e->chunk : ctx;
    float *buf = malloc((size_t)chunk * V * sizeof(float));
    if (!buf) return ds4_fail(err, "out of memory for %u x %u logits", chunk, V);
    const uint64_t n_win = (n + ctx - 1) / ctx;
    double sum = 0;
    int rc = 0;
    for (uint64_t w = 0; rc == 0 && w < n_win; w++) {
        uint64_t first = w * ctx, len = n - first < ctx ? n - first : ctx;
        rc = score_window(e, tokens + first, (uint32_t)len, buf, &sum, err);
        if (rc != 0) ds4_fail_wrap(err, "window %llu", (unsigned long long)w);
        else {
            out->n_scored += len - 1;
            progress_line(progress, "score", w, n_win, first + len, n);
        }
    }
    free(buf);
    if (rc != 0) return -1;
    out->n_tokens = n;
    out->nll = out->n_scored ? sum / (double)out->n_scored : 0.0;
    out->ppl = exp(out->nll);
    return 0;
}

/* ------------------------------------------------------------ inputs */

static int slurp(const char *path, char **out, size_t *len, ds4_error *err) {
    *out = NULL;
    FILE *fp = fopen(path, "rb");
    if (!fp) return ds4_fail(err, "%s: %s", path, strerror(errno));
    size_t cap = 1 << 16, n = 0;
    char *buf = malloc(cap + 1);
    int rc = buf ? 0 : ds4_fail(err, "out of memory");
    while (rc == 0) {
        if (n == cap) {
            char *p = cap < ((size_t)1 << 34) ? realloc(buf, 2 * cap + 1) : NULL;
            if (!p) {
                rc = ds4_fail(err, "%s: too large", path);
                break;
            }
            buf = p;
            cap *= 2;
        }
        size_t got = fread(buf + n, 1, cap - n, fp);
        n += got;
        if (got == 0) {
            if (ferror(fp)) rc = ds4_fail(err, "%s: read failed", path);
            break;
        }
    }
    fclose(fp);
    if (rc != 0) {
        free(buf);
        return -1;
    }
    buf[n] = '\0';
    *out = buf;
    *len = n;
    return 0;
}

int ds4_read_token_ids(const char *path, ds4_tokens *out, ds4_error *err) {
    memset(out, 0, sizeof(*out));
    char *text = NULL;
    size_t len = 0;
    TRY(slurp(path, &text, &len, err));
    int rc = 0;
    const char *p = text, *end = text + len;
    while (rc == 0 && p < end) {
        if (*p == ',' || *p == ' ' || *p == '\t' || *p == '\n' || *p == '\r') {
            p++;
            continue;
        }
        if (*p < '0' || *p > '9') {
            rc = ds4_fail(err, "%s: byte %ld: expected a token id, found '%c'", path, (long)(p - text),
                          (*p >= 32 && *p < 127) ? *p : '?');
            break;
        }
        uint64_t v = 0;
        for (; p < end && *p >= '0' && *p <= '9'; p++) {
            v = v * 10 + (uint64_t)(*p - '0');
            if (v > INT32_MAX) {
                rc = ds4_fail(err, "%s: token id out of range at byte %ld", path, (long)(p - text));
                break;
            }
        }
        if (rc == 0) rc = ds4_tokens_push(out, (int32_t)v, err);
    }
    free(text);
    if (rc == 0 && out->n == 0) rc = ds4_fail(err, "%s: no token ids", path);
    if (rc != 0) ds4_tokens_free(out);
    return rc;
}

int ds4_read_text_tokens(ds4_engine *e, const char *path, ds4_tokens *out, ds4_error *err) {
    memset(out, 0, sizeof(*out));
    char *text = NULL;
    size_t len = 0;
    TRY(slurp(path, &text, &len, err));
    ds4_tokenizer *tok = NULL;
    int rc = ds4_tokenizer_load(&tok, &e->file, err);
    if (rc == 0) rc = ds4_tokens_push(out, ds4_tokenizer_special(tok, DS4_TOK_BOS), err);
    if (rc == 0) rc = ds4_tokenize(tok, text, len, false, out, err);
    ds4_tokenizer_free(tok);
    free(text);
    if (rc != 0) {
        ds4_tokens_free(out);
        return ds4_fail_wrap(err, "%s", path);
    }
    return 0;
}

/* ------------------------------------------------------------ programs */

static int parse_u32(const char *flag, const char *v, uint32_t min, uint32_t *out, ds4_error *err) {
    char *end = NULL;
    errno = 0;
    unsigned long long x = v ? strtoull(v, &end, 10) : 0;
    if (!v || !*v || *end || errno || v[0] == '-' || x < min || x > (1u << 30))
        return ds4_fail(err, "%s: expected an integer in [%u, %u], got '%s'", flag, min, 1u << 30, v ? v : "");
    *out = (uint32_t)x;
    return 0;
}

int ds4_calib_parse_args(int argc, char **argv, bool want_out, ds4_calib_args *a, ds4_error *err) {
    memset(a, 0, sizeof(*a));
    a->ctx = DS4_CALIB_DEFAULT_CTX;
    for (int i = 1; i < argc; i++) {
        const char *f = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        bool takes = true;
        if (strcmp(f, "-m") == 0 || strcmp(f, "--model") == 0) a->model = v;
        else if (strcmp(f, "-f") == 0 || strcmp(f, "--file") == 0) a->text = v;
        else if (strcmp(f, "--tokens-file") == 0) a->tokens_file = v;
        else if (want_out && (strcmp(f, "-o") == 0 || strcmp(f, "--output") == 0)) a->out = v;
        else if (strcmp(f, "--device") == 0) a->device = v;
        else if (strcmp(f, "--ctx") == 0) TRY(parse_u32(f, v, 1, &a->ctx, err));
        else if (strcmp(f, "--chunk") == 0) TRY(parse_u32(f, v, 1, &a->chunk, err));
        else if (strcmp(f, "--no-quant-sim") == 0) a->no_quant_sim = true, takes = false;
        else if (strcmp(f, "-q") == 0 || strcmp(f, "--quiet") == 0) a->quiet = true, takes = false;
        else return ds4_fail(err, "unknown argument '%s'", f);
        if (takes && !v) return ds4_fail(err, "%s needs a value", f);
        if (takes) i++;
    }
    if (!a->model) return ds4_fail(err, "no model: -m MODEL is required");
    if (!a->text == !a->tokens_file) return ds4_fail(err, "give exactly one of -f TEXT and --tokens-file IDS");
    if (want_out && !a->out) return ds4_fail(err, "no output: -o OUT is required");
    return 0;
}

int ds4_calib_open(const ds4_calib_args *a, ds4_engine **e, ds4_tokens *tokens, ds4_error *err) {
    memset(tokens, 0, sizeof(*tokens));
    ds4_engine_opts o = {.model_path = a->model, .device = a->device, .no_quant_sim = a->no_quant_sim,
                         .prefill_chunk = a->chunk};
    TRY(ds4_engine_load(e, &o, err));
    int rc = a->tokens_file ? ds4_read_token_ids(a->tokens_file, tokens, err)
                            : ds4_read_text_tokens(*e, a->text, tokens, err);
    if (rc != 0) {
        ds4_engine_free(*e);
        *e = NULL;
    }
    return rc;
}
