/* test_benchmodel.c - the Flash-shaped benchmark model generator
 * (src/benchmodel.c) and its program, on tiny shapes only:
 *   - the file binds; every tensor has the type of the q2 / q4 mix;
 *   - compress ratios and hash routing follow the default pattern, an
 *     explicit one, and the Flash one; the ds4cl.bench_* keys are there;
 *   - bytes do not depend on the thread count (pieces of 4 KiB so tensors
 *     span many pieces) and do depend on the seed;
 *   - values: every quantized family has mean ~0 and RMS ~1/sqrt(fan_in),
 *     tid2eid rows are distinct valid experts, the tokenizer loads and
 *     round-trips text (also past the 65,536 two-byte tokens);
 *   - the engine evaluates 8 tokens with finite, non-constant logits;
 *   - bad options and bad flags fail with a clear message (exit 2).
 */
#include "test.h"

#include <stdbool.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "../src/benchmodel.h"
#include "../src/engine.h"
#include "../src/gguf.h"
#include "../src/model.h"
#include "../src/quant.h"
#include "../src/tokenizer.h"

/* ---------------------------------------------------------------------- */
/* Helpers                                                                 */
/* ---------------------------------------------------------------------- */

static void tiny_opts(ds4_benchmodel_opts *o) {
    ds4_benchmodel_default_opts(o);
    ds4_benchmodel_tiny_shape(o);
    o->threads = 2;
}

/* Write o to a fresh temp path (in path[64]); 0 or -1 with the message printed. */
static int write_tmp(const ds4_benchmodel_opts *o, char path[64]) {
    snprintf(path, 64, "/tmp/ds4cl-test-bm-XXXXXX");
    int fd = mkstemp(path);
    if (fd < 0) return -1;
    close(fd);
    ds4_error err = {{0}};
    if (ds4_benchmodel_write(o, path, &err) != 0) {
        fprintf(stderr, "    %s\n", err.msg);
        unlink(path);
        return -1;
    }
    return 0;
}

typedef struct opened {
    char path[64];
    gguf_file f;
    ds4_model *m;
} opened;

/* Write, open and bind; the file is unlinked at once (the mapping stays). */
static int open_model(const ds4_benchmodel_opts *o, opened *x) {
    memset(x, 0, sizeof(*x));
    if (write_tmp(o, x->path) != 0) return -1;
    ds4_error err = {{0}};
    int rc = gguf_open(&x->f, x->path, &err);
    unlink(x->path);
    x->m = calloc(1, sizeof(*x->m));
    if (rc == 0 && !x->m) rc = -1;
    if (rc == 0) rc = ds4_model_bind(x->m, &x->f, &err);
    if (rc != 0) {
        fprintf(stderr, "    bind: %s\n", err.msg);
        gguf_close(&x->f);
        free(x->m);
        return -1;
    }
    return 0;
}

static void close_model(opened *x) {
    gguf_close(&x->f);
    free(x->m);
}

static uint8_t *read_all(const char *path, uint64_t *size) {
    FILE *fp = fopen(path, "rb");
    if (!fp) return NULL;
    fseek(fp, 0, SEEK_END);
    long n = ftell(fp);
    fseek(fp, 0, SEEK_SET);
    uint8_t *b = n > 0 ? malloc((size_t)n) : NULL;
    if (b && fread(b, 1, (size_t)n, fp) != (size_t)n) {
        free(b);
        b = NULL;
    }
    fclose(fp);
    *size = b ? (uint64_t)n : 0;
    return b;
}

/* Mean and RMS of a tensor's first `max` values (dequantized). */
static int tensor_stats(const gguf_tensor *t, uint64_t max, double *mean, double *rms) {
    uint64_t n = t->n_elements < max ? t->n_elements : max;
    float *v = malloc(n * sizeof(float));
    if (!v || ds4_dequantize_row(t->type, t->data, v, n) != 0) {
        free(v);
        return -1;
    }
    double s = 0.0, s2 = 0.0;
    for (uint64_t i = 0; i < n; i++) {
        s += v[i];
        s2 += (double)v[i] * v[i];
    }
    free(v);
    *mean = s / (double)n;
    *rms = sqrt(s2 / (double)n);
    return 0;
}

/* ---------------------------------------------------------------------- */
/* Tests                                                                   */
/* ---------------------------------------------------------------------- */

static int check_types(const opened *x, uint32_t gate_up, uint32_t down) {
    const ds4_model *m = x->m;
    T_CHECK(m->token_embd->type == DS4_TYPE_F16, "token_embd %s", ds4_type_name(m->token_embd->type));
    T_CHECK(m->output->type == DS4_TYPE_Q8_0, "output %s", ds4_type_name(m->output->type));
    T_CHECK(m->output_hc_fn->type == DS4_TYPE_F16 && m->output_norm->type == DS4_TYPE_F32,
            "output hc/norm types");
    for (uint32_t il = 0; il < m->hp.n_layer; il++) {
        const ds4_layer *l = &m->layers[il];
        const gguf_tensor *q8[] = {l->attn_q_a, l->attn_q_b, l->attn_kv, l->attn_output_a,
                                   l->attn_output_b, l->ffn_gate_shexp, l->ffn_up_shexp,
                                   l->ffn_down_shexp};
        for (size_t i = 0; i < sizeof(q8) / sizeof(q8[0]); i++)
            T_CHECK(q8[i]->type == DS4_TYPE_Q8_0, "layer %u tensor %zu is %s", il, i,
                    ds4_type_name(q8[i]->type));
        const gguf_tensor *f16[] = {l->hc_attn_fn, l->hc_ffn_fn, l->ffn_gate_inp};
        for (size_t i = 0; i < sizeof(f16) / sizeof(f16[0]); i++)
            T_CHECK(f16[i]->type == DS4_TYPE_F16, "layer %u plain tensor %zu", il, i);
        const gguf_tensor *f32[] = {l->attn_norm, l->ffn_norm, l->attn_q_a_norm,
                                    l->attn_kv_a_norm, l->attn_sinks, l->hc_attn_scale,
                                    l->hc_attn_base};
        for (size_t i = 0; i < sizeof(f32) / sizeof(f32[0]); i++)
            T_CHECK(f32[i]->type == DS4_TYPE_F32, "layer %u f32 tensor %zu", il, i);
        T_CHECK(l->ffn_gate_exps->type == gate_up && l->ffn_up_exps->type == gate_up,
                "layer %u gate/up %s", il, ds4_type_name(l->ffn_gate_exps->type));
        T_CHECK(l->ffn_down_exps->type == down, "layer %u down %s", il,
                ds4_type_name(l->ffn_down_exps->type));
        if (l->ratio != 0)
            T_CHECK(l->comp_kv->type == DS4_TYPE_F16 && l->comp_ape->type == DS4_TYPE_F16 &&
                    l->comp_norm->type == DS4_TYPE_F32, "layer %u compressor types", il);
        if (l->ratio == 4)
            T_CHECK(l->idx_q_b->type == DS4_TYPE_F16 && l->idx_proj->type == DS4_TYPE_F16 &&
                    l->idx_comp_gate->type == DS4_TYPE_F16, "layer %u indexer types", il);
        if (l->hash_routed)
            T_CHECK(l->tid2eid && l->tid2eid->type == DS4_TYPE_I32 && !l->exp_probs_b,
                    "layer %u: hash layer needs tid2eid and no bias", il);
        else
            T_CHECK(!l->tid2eid && l->exp_probs_b && l->exp_probs_b->type == DS4_TYPE_F32,
                    "layer %u: score layer needs exp_probs_b", il);
    }
    return 0;
}

static int check_meta(const opened *x, const char *mix) {
    ds4_error err = {{0}};
    bool b = false;
    gguf_str s;
    T_CHECK(gguf_get_bool(&x->f, "ds4cl.bench_model", &b, &err) == 0 && b, "bench_model: %s",
            err.msg);
    T_CHECK(gguf_get_str(&x->f, "ds4cl.bench_mix", &s, &err) == 0 && gguf_str_eq(s, mix),
            "bench_mix: %s", err.msg);
    T_CHECK(strcmp(x->m->arch, "deepseek4") == 0, "arch %s", x->m->arch);
    return 0;
}

static int t_q2_default(void) {
    ds4_benchmodel_opts o;
    tiny_opts(&o);
    opened x;
    T_CHECK(open_model(&o, &x) == 0, "write/bind");
    const ds4_hparams *hp = &x.m->hp;
    static const uint32_t want[4] = {0, 4, 128, 4};
    int rc = 0;
    if (hp->n_layer != 4 || hp->n_hash_layers != 2) rc = 1;
    for (uint32_t il = 0; il < 4 && rc == 0; il++)
        if (hp->compress_ratio[il] != want[il] || x.m->layers[il].hash_routed != (il < 2)) rc = 1;
    if (rc) fprintf(stderr, "    layers %u hash %u\n", hp->n_layer, hp->n_hash_layers);
    if (rc == 0) rc = check_types(&x, DS4_TYPE_IQ2_XXS, DS4_TYPE_Q2_K);
    if (rc == 0) rc = check_meta(&x, "q2");
    close_model(&x);
    return rc;
}

static int t_q4_types(void) {
    ds4_benchmodel_opts o;
    tiny_opts(&o);
    o.mix = DS4_BENCH_MIX_Q4;
    opened x;
    T_CHECK(open_model(&o, &x) == 0, "write/bind");
    int rc = check_types(&x, DS4_TYPE_Q4_K, DS4_TYPE_Q4_K);
    if (rc == 0) rc = check_meta(&x, "q4");
    close_model(&x);
    return rc;
}

/* Ratios and hash flags of a written file against want[0..n). */
static int check_layers(const ds4_benchmodel_opts *o, const uint32_t *want, uint32_t n,
                        uint32_t n_hash) {
    opened x;
    T_CHECK(open_model(o, &x) == 0, "write/bind");
    const ds4_hparams *hp = &x.m->hp;
    bool ok = hp->n_layer == n && hp->n_hash_layers == n_hash;
    for (uint32_t il = 0; ok && il < n; il++)
        ok = hp->compress_ratio[il] == want[il] && x.m->layers[il].hash_routed == (il < n_hash);
    uint32_t got_n = hp->n_layer, got_h = hp->n_hash_layers;
    close_model(&x);
    T_CHECK(ok, "layers %u (want %u), hash %u (want %u), or a ratio differs", got_n, n, got_h,
            n_hash);
    return 0;
}

static int t_patterns(void) {
    ds4_benchmodel_opts o;
    tiny_opts(&o);
    o.n_layer = 5; /* default for N != 4: 0, then 4, 128 alternating; hash min(2, N) */
    static const uint32_t w5[5] = {0, 4, 128, 4, 128};
    if (check_layers(&o, w5, 5, 2)) return 1;
    tiny_opts(&o);
    o.n_layer = 1;
    static const uint32_t w1[1] = {0};
    if (check_layers(&o, w1, 1, 1)) return 1;
    tiny_opts(&o); /* explicit pattern and hash count */
    o.n_layer = o.n_pattern = 3;
    o.pattern[0] = 128;
    o.pattern[1] = 0;
    o.pattern[2] = 4;
    o.n_hash_layers = 0;
    static const uint32_t w3[3] = {128, 0, 4};
    if (check_layers(&o, w3, 3, 0)) return 1;
    tiny_opts(&o); /* the published pattern */
    o.n_layer = 6;
    ds4_benchmodel_flash_pattern(&o);
    static const uint32_t w6[6] = {0, 0, 4, 128, 4, 128};
    return check_layers(&o, w6, 6, 3);
}

static int t_deterministic(void) {
    ds4_benchmodel_opts o;
    tiny_opts(&o);
    o.chunk_bytes = 4096; /* every large tensor spans many pieces */
    char p1[64], p3[64], ps[64];
    o.threads = 1;
    T_CHECK(write_tmp(&o, p1) == 0, "threads 1");
    o.threads = 3;
    T_CHECK(write_tmp(&o, p3) == 0, "threads 3");
    o.seed = 2;
    T_CHECK(write_tmp(&o, ps) == 0, "seed 2");
    uint64_t n1, n3, ns;
    uint8_t *b1 = read_all(p1, &n1), *b3 = read_all(p3, &n3), *bs = read_all(ps, &ns);
    unlink(p1);
    unlink(p3);
    unlink(ps);
    int rc = 0;
    if (!b1 || !b3 || !bs) rc = 1;
    if (rc == 0 && (n1 != n3 || memcmp(b1, b3, n1) != 0)) {
        fprintf(stderr, "    1 and 3 threads wrote different bytes\n");
        rc = 1;
    }
    /* same size, but the data of e.g. the experts differs */
    gguf_file f1 = {0}, fs = {0};
    ds4_error err = {{0}};
    if (rc == 0 && (n1 != ns || gguf_parse(&f1, b1, n1, &err) || gguf_parse(&fs, bs, ns, &err)))
        rc = 1;
    uint64_t differ = 0, tensors = 0;
    for (uint64_t i = 0; rc == 0 && i < f1.n_tensors; i++) {
        const gguf_tensor *a = &f1.tensors[i];
        char name[GGUF_MAX_NAME_LEN + 1];
        const gguf_tensor *b = gguf_find_tensor(&fs, gguf_str_copy(a->name, name, sizeof(name)));
        if (!b || a->nbytes != b->nbytes) rc = 1;
        else {
            tensors++;
            differ += memcmp(a->data, b->data, a->nbytes) != 0;
        }
    }
    gguf_close(&f1);
    gguf_close(&fs);
    free(b1);
    free(b3);
    free(bs);
    T_CHECK(rc == 0, "files unreadable or layouts differ: %s", err.msg);
    T_CHECK(differ == tensors, "seed 2 changed %llu of %llu tensors", (unsigned long long)differ,
            (unsigned long long)tensors);
    return 0;
}

/* Mean ~0 and RMS ~want for a tensor. */
static int check_scale(const gguf_tensor *t, double want, const char *what) {
    double mean = 0, rms = 0;
    T_CHECK(tensor_stats(t, 1u << 20, &mean, &rms) == 0, "%s: cannot decode", what);
    T_CHECK(fabs(rms - want) < 0.1 * want, "%s (%s): RMS %g, want %g", what,
            ds4_type_name(t->type), rms, want);
    T_CHECK(fabs(mean) < 0.05 * want, "%s (%s): mean %g for RMS %g", what, ds4_type_name(t->type),
            mean, rms);
    return 0;
}

static int check_values(const ds4_model *m) {
    const ds4_layer *l = &m->layers[3];
    double e = m->hp.n_embd, ff = m->hp.n_ff_exp;
    if (check_scale(m->token_embd, 1.0, "token_embd") ||
        check_scale(m->output, 1.0 / sqrt(e), "output") ||
        check_scale(l->attn_q_a, 1.0 / sqrt(e), "attn_q_a") ||
        check_scale(l->ffn_gate_inp, 1.0 / sqrt(e), "ffn_gate_inp") ||
        check_scale(l->ffn_gate_exps, 1.0 / sqrt(e), "ffn_gate_exps") ||
        check_scale(l->ffn_down_exps, 1.0 / sqrt(ff), "ffn_down_exps"))
        return 1;
    float v[16];
    T_CHECK(ds4_dequantize_row(DS4_TYPE_F32, l->attn_norm->data, v, 16) == 0, "norm");
    for (int i = 0; i < 16; i++) T_CHECK(fabsf(v[i] - 1.0f) < 0.6f, "attn_norm[%d] = %g", i, v[i]);
    /* tid2eid: distinct ids < n_expert on every row */
    const gguf_tensor *t = m->layers[0].tid2eid;
    uint32_t k = m->hp.n_expert_used, hist[64] = {0};
    for (uint64_t row = 0; row < t->ne[1]; row++) {
        int32_t ids[64];
        memcpy(ids, t->data + row * k * 4, k * 4);
        for (uint32_t a = 0; a < k; a++) {
            T_CHECK(ids[a] >= 0 && (uint32_t)ids[a] < m->hp.n_expert, "row %llu id %d",
                    (unsigned long long)row, ids[a]);
            hist[ids[a] % 64]++;
            for (uint32_t b = 0; b < a; b++) T_CHECK(ids[a] != ids[b], "row %llu repeats %d",
                                                     (unsigned long long)row, ids[a]);
        }
    }
    for (uint32_t x = 0; x < m->hp.n_expert; x++) T_CHECK(hist[x] > 0, "expert %u never used", x);
    return 0;
}

static int t_values(void) {
    ds4_benchmodel_opts o;
    tiny_opts(&o);
    int rc = 0;
    for (int mix = 0; mix < 2 && rc == 0; mix++) {
        o.mix = mix ? DS4_BENCH_MIX_Q4 : DS4_BENCH_MIX_Q2;
        opened x;
        T_CHECK(open_model(&o, &x) == 0, "write/bind");
        rc = check_values(x.m);
        close_model(&x);
    }
    return rc;
}

/* Text -> ids -> bytes gives the text back. */
static int round_trip(const ds4_tokenizer *tok, const char *text, uint32_t *n_ids) {
    ds4_tokens ids = {0};
    ds4_error err = {{0}};
    T_CHECK(ds4_tokenize(tok, text, strlen(text), false, &ids, &err) == 0, "%s", err.msg);
    char back[256];
    size_t len = 0;
    for (uint32_t i = 0; i < ids.n; i++) {
        size_t n = 0;
        const char *b = ds4_token_bytes(tok, ids.ids[i], &n);
        if (b && len + n < sizeof(back)) {
            memcpy(back + len, b, n);
            len += n;
        }
    }
    back[len] = '\0';
    *n_ids = ids.n;
    ds4_tokens_free(&ids);
    T_CHECK(strcmp(back, text) == 0, "round trip '%s' -> '%s'", text, back);
    return 0;
}

static int t_tokenizer(void) {
    ds4_benchmodel_opts o;
    tiny_opts(&o);
    o.n_layer = 1;
    o.n_vocab = 263 + 65536 + 300; /* pairs and some triples */
    opened x;
    T_CHECK(open_model(&o, &x) == 0, "write/bind");
    ds4_tokenizer *tok = NULL;
    ds4_error err = {{0}};
    int rc = ds4_tokenizer_load(&tok, &x.f, &err);
    uint32_t n = 0;
    if (rc == 0) rc = round_trip(tok, "the quick brown fox, 42 times \xc3\xa9t\xc3\xa9", &n);
    /* "  e" (space space e) is triple 1: pair "  " (rank 0) + byte "e" */
    int32_t three = rc == 0 ? ds4_token_find(tok, "\xc4\xa0\xc4\xa0" "e", 5) : -1;
    uint32_t nv = rc == 0 ? ds4_tokenizer_n_vocab(tok) : 0;
    int32_t bos = rc == 0 ? ds4_tokenizer_special(tok, DS4_TOK_BOS) : -1;
    int32_t eos = rc == 0 ? ds4_tokenizer_special(tok, DS4_TOK_EOS) : -1;
    if (tok) ds4_tokenizer_free(tok);
    close_model(&x);
    T_CHECK(rc == 0, "tokenizer: %s", err.msg);
    T_CHECK(nv == o.n_vocab && bos == 0 && eos == 1, "vocab %u bos %d eos %d", nv, bos, eos);
    T_CHECK(three >= 263 + 65536, "the triple '  e' is token %d", three);
    return 0;
}

static int t_engine(void) {
    if (!test_runtime()) return 1;
    ds4_benchmodel_opts o;
    tiny_opts(&o);
    char path[64];
    T_CHECK(write_tmp(&o, path) == 0, "write");
    ds4_engine_opts eo = {.model_path = path, .prefill_chunk = 4};
    ds4_engine *e = NULL;
    ds4_session *s = NULL;
    ds4_error err = {{0}};
    int rc = ds4_engine_load(&e, &eo, &err);
    unlink(path);
    if (rc == 0) rc = ds4_session_new(e, 64, &s, &err);
    enum { N = 8 };
    const int32_t toks[N] = {0, 17, 300, 5, 511, 42, 263, 100};
    uint32_t V = o.n_vocab;
    float *logits = malloc(sizeof(float) * N * V);
    if (rc == 0 && !logits) rc = ds4_fail(&err, "out of memory");
    if (rc == 0) rc = ds4_session_eval(s, toks, N, logits, &err);
    ds4_session_free(s);
    ds4_engine_free(e);
    if (rc != 0) {
        free(logits);
        T_CHECK(rc == 0, "engine: %s", err.msg);
    }
    uint64_t bad = 0;
    bool varied = true;
    for (int t = 0; t < N; t++) {
        float lo = INFINITY, hi = -INFINITY;
        for (uint32_t v = 0; v < V; v++) {
            float x = logits[(size_t)t * V + v];
            bad += !isfinite(x);
            if (x < lo) lo = x;
            if (x > hi) hi = x;
        }
        varied &= hi - lo > 0.5f;
    }
    bool rows_differ = memcmp(logits, logits + (size_t)(N - 1) * V, V * sizeof(float)) != 0;
    free(logits);
    T_CHECK(bad == 0, "%llu non-finite logits", (unsigned long long)bad);
    T_CHECK(varied, "a token's logits are (nearly) all equal");
    T_CHECK(rows_differ, "first and last token have the same logits");
    return 0;
}

/* Set one bad option on tiny defaults, expect a failure naming `want`. */
typedef void (*mutate_fn)(ds4_benchmodel_opts *o);
static void m_layers0(ds4_benchmodel_opts *o) { o->n_layer = 0; }
static void m_ratio(ds4_benchmodel_opts *o) {
    o->n_pattern = o->n_layer;
    o->pattern[1] = 5;
}
static void m_plen(ds4_benchmodel_opts *o) { o->n_pattern = 2; }
static void m_hash(ds4_benchmodel_opts *o) { o->n_hash_layers = 5; }
static void m_mix(ds4_benchmodel_opts *o) { o->mix = (ds4_bench_mix)7; }
static void m_embd(ds4_benchmodel_opts *o) { o->n_embd = 320; }
static void m_rot(ds4_benchmodel_opts *o) { o->n_rot = 63; }
static void m_used(ds4_benchmodel_opts *o) { o->n_expert_used = 17; }
static void m_vocab(ds4_benchmodel_opts *o) { o->n_vocab = 100; }
static void m_threads(ds4_benchmodel_opts *o) { o->threads = 1000; }
static void m_groups(ds4_benchmodel_opts *o) { o->o_groups = 3; }

static int t_bad_options(void) {
    const struct {
        mutate_fn f;
        const char *want;
    } cases[] = {
        {m_layers0, "layers 0"},   {m_ratio, "ratio 5"},        {m_plen, "2 entries"},
        {m_hash, "hash layers 5"}, {m_mix, "unknown mix"},      {m_embd, "n_embd 320"},
        {m_rot, "n_rot 63"},       {m_used, "n_expert_used 17"}, {m_vocab, "n_vocab 100"},
        {m_threads, "threads 1000"}, {m_groups, "o_groups 3"},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        ds4_benchmodel_opts o;
        tiny_opts(&o);
        cases[i].f(&o);
        ds4_error err = {{0}};
        const char *path = "/tmp/ds4cl-test-bm-never.gguf";
        T_CHECK(ds4_benchmodel_write(&o, path, &err) != 0, "case %zu accepted", i);
        T_CHECK(strstr(err.msg, cases[i].want) != NULL, "case %zu: '%s' lacks '%s'", i, err.msg,
                cases[i].want);
        T_CHECK(access(path, F_OK) != 0, "case %zu left a file", i);
    }
    return 0;
}

/* The program: bad flags exit 2 with usage; a tiny model writes and binds. */
static int run_prog(const char *bin, const char *args, char *out, size_t cap) {
    char cmd[1024];
    snprintf(cmd, sizeof(cmd), "%s %s 2>&1", bin, args);
    FILE *p = popen(cmd, "r");
    if (!p) return -1;
    size_t n = fread(out, 1, cap - 1, p);
    out[n] = '\0';
    int st = pclose(p);
    return WIFEXITED(st) ? WEXITSTATUS(st) : 128;
}

static int t_program(void) {
    char bin[4200];
    snprintf(bin, sizeof(bin), "%s/ds4cl-benchmodel", test_bin_dir());
    if (access(bin, X_OK) != 0) snprintf(bin, sizeof(bin), "%s/build/ds4cl-benchmodel", test_root_dir());
    if (access(bin, X_OK) != 0) {
        fprintf(stderr, "    %s not built (make build/ds4cl-benchmodel): skipped\n", bin);
        return 0;
    }
    static const struct {
        const char *args, *want;
    } bad[] = {
        {"--tiny", "no output file"},
        {"--bogus -o /tmp/ds4cl-bm-x.gguf", "unknown argument"},
        {"--mix q3 -o /tmp/ds4cl-bm-x.gguf", "--mix"},
        {"--layers 0 -o /tmp/ds4cl-bm-x.gguf", "out of range"},
        {"--layers x -o /tmp/ds4cl-bm-x.gguf", "not a number"},
        {"--pattern 0,5 -o /tmp/ds4cl-bm-x.gguf", "--pattern"},
        {"--layers 3 --pattern 0,4 -o /tmp/ds4cl-bm-x.gguf", "2 entries"},
        {"--hash-layers 9 -o /tmp/ds4cl-bm-x.gguf", "hash layers 9"},
        {"--threads 0 -o /tmp/ds4cl-bm-x.gguf", "out of range"},
        {"--seed", "needs a value"},
    };
    char out[8192];
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        int st = run_prog(bin, bad[i].args, out, sizeof(out));
        T_CHECK(st == 2, "'%s' exit %d", bad[i].args, st);
        T_CHECK(strstr(out, bad[i].want) && strstr(out, "usage:"), "'%s' said: %s", bad[i].args,
                out);
    }
    const char *path = "/tmp/ds4cl-test-bm-prog.gguf";
    char args[256];
    snprintf(args, sizeof(args), "--tiny --mix q4 --pattern 0,128 --hash-layers 1 --seed 9 -q -o %s",
             path);
    int st = run_prog(bin, args, out, sizeof(out));
    T_CHECK(st == 0 && strstr(out, "wrote ") && strstr(out, "MB/s"), "exit %d: %s", st, out);
    gguf_file f = {0};
    ds4_model *m = calloc(1, sizeof(*m));
    ds4_error err = {{0}};
    int rc = m ? gguf_open(&f, path, &err) : -1;
    unlink(path);
    if (rc == 0) rc = ds4_model_bind(m, &f, &err);
    bool ok = rc == 0 && m->hp.n_layer == 2 && m->hp.compress_ratio[1] == 128 &&
              m->hp.n_hash_layers == 1 && m->layers[0].ffn_down_exps->type == DS4_TYPE_Q4_K;
    gguf_close(&f);
    free(m);
    T_CHECK(ok, "program output: %s", err.msg);
    return 0;
}

void tests_register_benchmodel(void) {
    test_add("benchmodel_q2_default", t_q2_default);
    test_add("benchmodel_q4_types", t_q4_types);
    test_add("benchmodel_patterns", t_patterns);
    test_add("benchmodel_deterministic", t_deterministic);
    test_add("benchmodel_values", t_values);
    test_add("benchmodel_tokenizer", t_tokenizer);
    test_add("benchmodel_engine", t_engine);
    test_add("benchmodel_bad_options", t_bad_options);
    test_add("benchmodel_program", t_program);
}
