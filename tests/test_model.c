/* test_model.c - the deepseek4 binding (model.c) and the test-model
 * generator (testmodel.c).
 *
 * Positive tests build models with the generator, bind them and read back
 * every hyperparameter, tensor type, dims and a sample of values.  Negative
 * tests take a small generated model and change one thing: either in the
 * parsed directory (dims, type, tid2eid bytes) or by rewriting the file with
 * gguf_w_value / gguf_w_tensor while dropping or replacing one key or
 * tensor.  Each must be refused with an error that names the key or tensor.
 */
#include "test.h"

#include <string.h>
#include <unistd.h>

#include "../src/gguf.h"
#include "../src/gguf_write.h"
#include "../src/model.h"
#include "../src/quant.h"
#include "../src/testmodel.h"

/* A generated model held in memory, parsed and (maybe) bound. */
typedef struct tm_ctx {
    uint8_t *buf;
    uint64_t size;
    gguf_file f;
    ds4_model *m;
    ds4_error err;
} tm_ctx;

static void tm_free(tm_ctx *c) {
    gguf_close(&c->f);
    free(c->buf);
    free(c->m);
    memset(c, 0, sizeof(*c));
}

/* Small and fast: Q8_0 everywhere, still 4 layers (window, window, 4, 128). */
static void small_opts(ds4_testmodel_opts *o) {
    ds4_testmodel_default_opts(o);
    o->n_embd = 64;
    o->n_vocab = 300;
    o->n_head = 2;
    o->head_dim = 32;
    o->n_rot = 8;
    o->q_lora = 32;
    o->o_lora = 32;
    o->o_groups = 2;
    o->n_expert = 4;
    o->n_expert_used = 2;
    o->n_ff_exp = 32;
    o->n_idx_head = 2;
    o->idx_head_dim = 16;
    o->exp_gate_up_type = DS4_TYPE_Q8_0;
    o->exp_down_type = DS4_TYPE_Q8_0;
}

/* Adopt buf (malloc'd GGUF image), parse it.  0 or -1 (err set). */
static int tm_parse(tm_ctx *c, uint8_t *buf, uint64_t size) {
    c->buf = buf;
    c->size = size;
    c->m = calloc(1, sizeof(ds4_model));
    if (!c->m) return ds4_fail(&c->err, "out of memory");
    return gguf_parse(&c->f, c->buf, c->size, &c->err);
}

static int tm_build(tm_ctx *c, const ds4_testmodel_opts *o) {
    memset(c, 0, sizeof(*c));
    uint8_t *buf;
    uint64_t size;
    if (ds4_testmodel_build(o, &buf, &size, &c->err) != 0) return -1;
    return tm_parse(c, buf, size);
}

static int tm_bind(tm_ctx *c) { return ds4_model_bind(c->m, &c->f, &c->err); }

/* Rewrite c's file into a new context: every key but drop_key (a name, or
 * NULL) and every tensor but drop_tensor (NULL keeps all, "*" drops all),
 * then the caller's extra keys/tensors via add(w, src) before saving. */
typedef int (*tm_add_fn)(gguf_writer *w, const gguf_file *src, ds4_error *err);

static int tm_rewrite(tm_ctx *out, const tm_ctx *c, const char *drop_key,
                      const char *drop_tensor, tm_add_fn add) {
    memset(out, 0, sizeof(*out));
    gguf_writer *w = gguf_writer_new(0);
    if (!w) return ds4_fail(&out->err, "out of memory");
    for (uint64_t i = 0; i < c->f.n_kv; i++) {
        const gguf_kv *kv = &c->f.kv[i];
        char key[256];
        gguf_str_copy(kv->key, key, sizeof(key));
        if (drop_key && strcmp(key, drop_key) == 0) continue;
        if (strcmp(key, "general.alignment") == 0) continue;
        gguf_w_value(w, key, &kv->value);
    }
    int rc = 0;
    for (uint64_t i = 0; i < c->f.n_tensors && rc == 0; i++) {
        const gguf_tensor *t = &c->f.tensors[i];
        char name[256];
        gguf_str_copy(t->name, name, sizeof(name));
        if (drop_tensor && (strcmp(drop_tensor, "*") == 0 || strcmp(name, drop_tensor) == 0))
            continue;
        rc = gguf_w_tensor(w, name, t->n_dims, t->ne, t->type, t->data, &out->err);
    }
    if (rc == 0 && add) rc = add(w, &c->f, &out->err);
    uint8_t *buf = NULL;
    uint64_t size = 0;
    if (rc == 0) rc = gguf_writer_to_memory(w, &buf, &size, &out->err);
    gguf_writer_free(w);
    if (rc != 0) return -1;
    return tm_parse(out, buf, size);
}

/* A zero-filled tensor of the given shape and type. */
static int add_zero_tensor(gguf_writer *w, const char *name, uint32_t n_dims, uint64_t a,
                           uint64_t b, uint64_t c3, uint32_t type, ds4_error *err) {
    uint64_t ne[4] = {a, b, c3, 1};
    uint64_t n = ds4_row_bytes(type, a) * b * c3;
    void *data = calloc(1, n ? n : 1);
    if (!data) return ds4_fail(err, "out of memory");
    int rc = gguf_w_tensor(w, name, n_dims, ne, type, data, err);
    free(data);
    return rc;
}

/* Build the small model, rewrite it with one change, bind: must fail with
 * an error containing want (and want2 when non-NULL). */
static int expect_rewrite_fail(const char *drop_key, const char *drop_tensor, tm_add_fn add,
                               const char *want, const char *want2) {
    ds4_testmodel_opts o;
    small_opts(&o);
    tm_ctx c, r;
    int rc = tm_build(&c, &o);
    T_CHECK(rc == 0, "%s", c.err.msg);
    rc = tm_rewrite(&r, &c, drop_key, drop_tensor, add);
    tm_free(&c);
    if (rc != 0) {
        fprintf(stderr, "    rewrite: %s\n", r.err.msg);
        tm_free(&r);
        return 1;
    }
    rc = tm_bind(&r);
    char msg[sizeof(r.err.msg)];
    memcpy(msg, r.err.msg, sizeof(msg));
    tm_free(&r);
    T_CHECK(rc != 0, "bind succeeded, expected an error containing '%s'", want);
    T_CHECK(strstr(msg, want) != NULL, "error '%s' lacks '%s'", msg, want);
    T_CHECK(!want2 || strstr(msg, want2) != NULL, "error '%s' lacks '%s'", msg, want2);
    return 0;
}

static int expect_rewrite_ok(const char *drop_key, const char *drop_tensor, tm_add_fn add,
                             tm_ctx *out) {
    ds4_testmodel_opts o;
    small_opts(&o);
    tm_ctx c;
    int rc = tm_build(&c, &o);
    T_CHECK(rc == 0, "%s", c.err.msg);
    rc = tm_rewrite(out, &c, drop_key, drop_tensor, add);
    tm_free(&c);
    T_CHECK(rc == 0, "rewrite: %s", out->err.msg);
    rc = tm_bind(out);
    T_CHECK(rc == 0, "bind: %s", out->err.msg);
    return 0;
}

/* ---------------------------------------------------------------------- */
/* Positive tests                                                          */
/* ---------------------------------------------------------------------- */

static int near(double a, double b) { return fabs(a - b) <= 1e-6 * fmax(1.0, fabs(b)); }

static int check_default_hparams(const ds4_hparams *hp) {
    const uint32_t want_u[][2] = {
        {hp->n_layer, 4},      {hp->n_embd, 256},     {hp->n_vocab, 512},
        {hp->n_head, 4},       {hp->n_head_kv, 1},    {hp->head_dim, 64},
        {hp->n_rot, 16},       {hp->q_lora, 64},      {hp->o_lora, 32},
        {hp->o_groups, 2},     {hp->n_expert, 8},     {hp->n_expert_used, 2},
        {hp->n_ff_exp, 256},   {hp->n_expert_shared, 1}, {hp->n_hash_layers, 3},
        {hp->n_swa, 8},        {hp->n_idx_head, 2},   {hp->idx_head_dim, 32},
        {hp->idx_top_k, 4},    {hp->n_hc, 4},         {hp->n_sinkhorn, 20},
    };
    for (size_t i = 0; i < sizeof(want_u) / sizeof(want_u[0]); i++)
        T_CHECK(want_u[i][0] == want_u[i][1], "hparam #%zu: %u expected %u", i, want_u[i][0],
                want_u[i][1]);
    T_CHECK(near(hp->hc_eps, 1e-6) && near(hp->rms_eps, 1e-6), "eps %g %g", (double)hp->hc_eps,
            (double)hp->rms_eps);
    T_CHECK(hp->rope_base == 10000.0f && hp->rope_compress_base == 160000.0f,
            "rope bases %g %g", (double)hp->rope_base, (double)hp->rope_compress_base);
    T_CHECK(hp->rope_scale == 16.0f && hp->yarn_beta_fast == 32.0f && hp->yarn_beta_slow == 1.0f,
            "yarn %g %g %g", (double)hp->rope_scale, (double)hp->yarn_beta_fast,
            (double)hp->yarn_beta_slow);
    T_CHECK(hp->rope_orig_ctx == 65536 && hp->n_ctx_train == 1048576, "ctx %llu %llu",
            (unsigned long long)hp->rope_orig_ctx, (unsigned long long)hp->n_ctx_train);
    T_CHECK(hp->expert_weights_scale == 1.5f && hp->expert_weights_norm, "expert weights");
    const uint32_t ratios[4] = {0, 0, 4, 128};
    for (int il = 0; il < 4; il++) {
        T_CHECK(hp->compress_ratio[il] == ratios[il], "layer %d ratio %u", il,
                hp->compress_ratio[il]);
        T_CHECK(hp->swiglu_clamp[il] == 10.0f, "layer %d clamp %g", il,
                (double)hp->swiglu_clamp[il]);
    }
    return 0;
}

static int check_dims(const gguf_tensor *t, uint64_t a, uint64_t b, uint64_t c) {
    T_CHECK(t != NULL, "tensor missing");
    T_CHECK(t->ne[0] == a && t->ne[1] == b && t->ne[2] == c && t->ne[3] == 1,
            "dims [%llu, %llu, %llu] expected [%llu, %llu, %llu]", (unsigned long long)t->ne[0],
            (unsigned long long)t->ne[1], (unsigned long long)t->ne[2], (unsigned long long)a,
            (unsigned long long)b, (unsigned long long)c);
    return 0;
}

static int check_default_layers(const ds4_model *m) {
    for (uint32_t il = 0; il < 4; il++) {
        const ds4_layer *l = &m->layers[il];
        T_CHECK(l->ratio == m->hp.compress_ratio[il], "layer %u ratio", il);
        T_CHECK(l->hash_routed == (il < 3), "layer %u hash", il);
        T_CHECK((l->tid2eid != NULL) == (il < 3), "layer %u tid2eid", il);
        T_CHECK((l->exp_probs_b != NULL) == (il >= 3), "layer %u exp_probs_b", il);
        T_CHECK((l->comp_kv != NULL) == (il >= 2), "layer %u compressor", il);
        T_CHECK((l->idx_q_b != NULL) == (il == 2), "layer %u indexer", il);
        T_CHECK(l->attn_q_a->type == DS4_TYPE_Q8_0, "attn_q_a type");
        T_CHECK(l->ffn_gate_exps->type == DS4_TYPE_IQ2_XXS, "gate type");
        T_CHECK(l->ffn_up_exps->type == DS4_TYPE_IQ2_XXS, "up type");
        T_CHECK(l->ffn_down_exps->type == DS4_TYPE_Q2_K, "down type");
        T_CHECK(l->hc_attn_fn->type == DS4_TYPE_F16, "hc fn type");
        T_CHECK(l->attn_norm->type == DS4_TYPE_F32, "norm type");
        if (check_dims(l->hc_attn_fn, 1024, 24, 1) || check_dims(l->attn_q_b, 64, 256, 1) ||
            check_dims(l->attn_output_a, 128, 64, 1) || check_dims(l->attn_output_b, 64, 256, 1) ||
            check_dims(l->ffn_gate_exps, 256, 256, 8) || check_dims(l->ffn_down_exps, 256, 256, 8))
            return 1;
    }
    const ds4_layer *l2 = &m->layers[2], *l3 = &m->layers[3];
    if (check_dims(l2->comp_ape, 128, 4, 1) || check_dims(l2->comp_kv, 256, 128, 1) ||
        check_dims(l3->comp_ape, 64, 128, 1) || check_dims(l3->comp_gate, 256, 64, 1) ||
        check_dims(l2->idx_q_b, 64, 64, 1) || check_dims(l2->idx_comp_ape, 64, 4, 1) ||
        check_dims(l2->idx_comp_norm, 32, 1, 1) || check_dims(m->layers[0].tid2eid, 2, 512, 1))
        return 1;
    T_CHECK(m->token_embd->type == DS4_TYPE_F16 && m->output->type == DS4_TYPE_Q8_0,
            "embd/output types");
    if (check_dims(m->output_hc_fn, 1024, 4, 1) || check_dims(m->output_hc_scale, 1, 1, 1) ||
        check_dims(m->token_embd, 256, 512, 1))
        return 1;
    return 0;
}

/* Mean and RMS of a tensor's first rows, dequantized. */
static int tensor_stats(const gguf_tensor *t, uint64_t rows, double *mean, double *rms) {
    float *v = malloc(t->ne[0] * sizeof(float));
    T_CHECK(v != NULL, "oom");
    uint64_t rb = ds4_row_bytes(t->type, t->ne[0]);
    double s = 0, s2 = 0;
    for (uint64_t r = 0; r < rows; r++) {
        int rc = ds4_dequantize_row(t->type, t->data + r * rb, v, t->ne[0]);
        if (rc != 0) {
            free(v);
            T_CHECK(rc == 0, "dequantize %s", ds4_type_name(t->type));
        }
        for (uint64_t i = 0; i < t->ne[0]; i++) {
            s += v[i];
            s2 += (double)v[i] * v[i];
        }
    }
    free(v);
    double n = (double)(rows * t->ne[0]);
    *mean = s / n;
    *rms = sqrt(s2 / n);
    return 0;
}

static int test_model_default_binds(void) {
    ds4_testmodel_opts o;
    ds4_testmodel_default_opts(&o);
    tm_ctx c;
    int rc = tm_build(&c, &o);
    T_CHECK(rc == 0, "%s", c.err.msg);
    rc = tm_bind(&c);
    T_CHECK(rc == 0, "%s", c.err.msg);
    if (check_default_hparams(&c.m->hp) || check_default_layers(c.m)) return 1;
    T_CHECK(strcmp(c.m->arch, "deepseek4") == 0 &&
                strcmp(c.m->name, "ds4cl random test model") == 0,
            "names '%s' '%s'", c.m->arch, c.m->name);
    T_CHECK(c.f.n_tensors == 116, "n_tensors %llu", (unsigned long long)c.f.n_tensors);

    /* Values are random and scaled: matrices ~ 1/sqrt(fan_in), norms ~ 1. */
    double mean, rms;
    if (tensor_stats(c.m->layers[1].attn_q_a, 64, &mean, &rms)) return 1;
    T_CHECK(fabs(mean) < 0.01 && fabs(rms - 1.0 / 16.0) < 0.01, "attn_q_a mean %g rms %g", mean,
            rms);
    /* Super-block formats: random codes fitted to mean 0, RMS 1/sqrt(fan_in). */
    if (tensor_stats(c.m->layers[1].ffn_down_exps, 256 * 8, &mean, &rms)) return 1;
    T_CHECK(fabs(mean) < 0.001 && fabs(rms - 1.0 / 16.0) < 0.0005, "down_exps mean %g rms %g",
            mean, rms);
    if (tensor_stats(c.m->layers[1].ffn_gate_exps, 256 * 8, &mean, &rms)) return 1;
    T_CHECK(fabs(mean) < 0.001 && fabs(rms - 1.0 / 16.0) < 0.0005, "gate_exps mean %g rms %g",
            mean, rms);
    if (tensor_stats(c.m->output_norm, 1, &mean, &rms)) return 1;
    T_CHECK(fabs(mean - 1.0) < 0.03 && rms > 0.95 && rms < 1.05, "norm mean %g rms %g", mean, rms);
    if (tensor_stats(c.m->token_embd, 512, &mean, &rms)) return 1;
    T_CHECK(fabs(mean) < 0.01 && fabs(rms - 1.0) < 0.02, "embd mean %g rms %g", mean, rms);

    /* tid2eid: n_expert_used distinct experts per token, all in range. */
    const gguf_tensor *t = c.m->layers[0].tid2eid;
    int distinct_ok = 1, used[8] = {0};
    for (uint64_t tok = 0; tok < 512; tok++) {
        int32_t a, b;
        memcpy(&a, t->data + tok * 8, 4);
        memcpy(&b, t->data + tok * 8 + 4, 4);
        distinct_ok &= a != b && a >= 0 && a < 8 && b >= 0 && b < 8;
        if (a >= 0 && a < 8) used[a]++;
    }
    T_CHECK(distinct_ok, "tid2eid ids not distinct/in range");
    for (int e = 0; e < 8; e++) T_CHECK(used[e] > 20, "expert %d chosen %d times", e, used[e]);
    tm_free(&c);
    return 0;
}

static int test_model_deterministic(void) {
    ds4_testmodel_opts o;
    small_opts(&o);
    ds4_error err = {{0}};
    uint8_t *a = NULL, *b = NULL, *d = NULL;
    uint64_t na = 0, nb = 0, nd = 0;
    int rc = ds4_testmodel_build(&o, &a, &na, &err);
    if (rc == 0) rc = ds4_testmodel_build(&o, &b, &nb, &err);
    o.seed = 2;
    if (rc == 0) rc = ds4_testmodel_build(&o, &d, &nd, &err);
    int same = rc == 0 && na == nb && memcmp(a, b, na) == 0;
    int differs = rc == 0 && nd == na && memcmp(a, d, na) != 0;
    free(a);
    free(b);
    free(d);
    T_CHECK(rc == 0, "%s", err.msg);
    T_CHECK(same, "same options gave different bytes");
    T_CHECK(differs, "another seed gave the same bytes");
    return 0;
}

/* Build opts, bind, check the types of a few tensors. */
static int bind_variant(const ds4_testmodel_opts *o, uint32_t plain) {
    tm_ctx c;
    int rc = tm_build(&c, o);
    if (rc == 0) rc = tm_bind(&c);
    if (rc != 0) {
        fprintf(stderr, "    %s\n", c.err.msg);
        tm_free(&c);
        return 1;
    }
    const ds4_model *m = c.m;
    double mean = 1, rms = 0, want = 1.0 / sqrt((double)o->n_ff_exp);
    const gguf_tensor *down = m->layers[3].ffn_down_exps;
    if (tensor_stats(down, down->ne[1] * down->ne[2], &mean, &rms)) return 1;
    T_CHECK(fabs(mean) < 0.02 * want && fabs(rms - want) < 0.03 * want,
            "%s down_exps mean %g rms %g, expected 0 and %g", ds4_type_name(down->type), mean,
            rms, want);
    int ok = m->token_embd->type == plain && m->output->type == o->dense_type &&
             m->layers[2].comp_kv->type == plain && m->layers[2].idx_proj->type == plain &&
             m->layers[3].ffn_gate_shexp->type == o->dense_type &&
             m->layers[3].ffn_gate_exps->type == o->exp_gate_up_type &&
             m->layers[3].ffn_up_exps->type == o->exp_gate_up_type &&
             m->layers[3].ffn_down_exps->type == o->exp_down_type &&
             m->layers[0].attn_sinks->type == DS4_TYPE_F32;
    tm_free(&c);
    T_CHECK(ok, "tensor types of the %s/%s/%s variant", ds4_type_name(o->dense_type),
            ds4_type_name(o->exp_gate_up_type), ds4_type_name(o->exp_down_type));
    return 0;
}

static int test_model_variants_bind(void) {
    ds4_testmodel_opts o;
    small_opts(&o);
    o.dense_type = o.exp_gate_up_type = o.exp_down_type = DS4_TYPE_F32;
    if (bind_variant(&o, DS4_TYPE_F32)) return 1;
    o.dense_type = o.exp_gate_up_type = o.exp_down_type = DS4_TYPE_F16;
    if (bind_variant(&o, DS4_TYPE_F16)) return 1;
    o.dense_type = o.exp_gate_up_type = o.exp_down_type = DS4_TYPE_BF16;
    if (bind_variant(&o, DS4_TYPE_F16)) return 1;
    /* q4 layout: Q8_0 dense, Q4_K experts (256-wide rows needed). */
    small_opts(&o);
    o.n_embd = 256;
    o.n_ff_exp = 256;
    o.exp_gate_up_type = o.exp_down_type = DS4_TYPE_Q4_K;
    if (bind_variant(&o, DS4_TYPE_F16)) return 1;
    /* More layers: the Flash pattern continues 4, 128, 4 ... and 1 layer works. */
    small_opts(&o);
    o.n_layer = 7;
    o.n_hash_layers = 0;
    tm_ctx c;
    int rc = tm_build(&c, &o);
    if (rc == 0) rc = tm_bind(&c);
    T_CHECK(rc == 0 || (tm_free(&c), 0), "7 layers: %s", c.err.msg);
    const uint32_t want[7] = {0, 0, 4, 128, 4, 128, 4};
    for (int il = 0; il < 7; il++)
        T_CHECK(c.m->hp.compress_ratio[il] == want[il] && !c.m->layers[il].hash_routed &&
                    c.m->layers[il].exp_probs_b != NULL,
                "layer %d", il);
    tm_free(&c);
    o.n_layer = 1;
    rc = tm_build(&c, &o);
    if (rc == 0) rc = tm_bind(&c);
    tm_free(&c);
    T_CHECK(rc == 0, "1 layer: %s", c.err.msg);
    return 0;
}

static int test_model_write_file(void) {
    ds4_testmodel_opts o;
    small_opts(&o);
    char path[64];
    snprintf(path, sizeof(path), "/tmp/ds4cl-test-model-%d.gguf", (int)getpid());
    ds4_error err = {{0}};
    int rc = ds4_testmodel_write(&o, path, &err);
    T_CHECK(rc == 0, "%s", err.msg);
    gguf_file f = {0};
    rc = gguf_open(&f, path, &err);
    unlink(path);
    T_CHECK(rc == 0, "%s", err.msg);
    ds4_model *m = calloc(1, sizeof(*m));
    rc = m ? ds4_model_bind(m, &f, &err) : -1;
    int ok = rc == 0 && m->hp.n_embd == 64 && m->hp.n_vocab == 300 && m->layers[2].idx_q_b;
    free(m);
    gguf_close(&f);
    T_CHECK(ok, "bind from file: %s", err.msg);
    return 0;
}

static int test_model_tokenizer(void) {
    ds4_testmodel_opts o;
    small_opts(&o);
    tm_ctx c;
    int rc = tm_build(&c, &o);
    T_CHECK(rc == 0, "%s", c.err.msg);
    const gguf_kv *tok = gguf_find_kv(&c.f, "tokenizer.ggml.tokens");
    const gguf_kv *mer = gguf_find_kv(&c.f, "tokenizer.ggml.merges");
    gguf_str model;
    rc = gguf_get_str(&c.f, "tokenizer.ggml.model", &model, &c.err);
    int ok = rc == 0 && gguf_str_eq(model, "gpt2") && tok && mer &&
             tok->value.arr.count == 300 && mer->value.arr.count == 300 - 263;
    gguf_value e[6];
    ok = ok && gguf_array_get(&tok->value, 0, &e[0]) == 0 &&
         gguf_array_get(&tok->value, 1, &e[1]) == 0 &&
         gguf_array_get(&tok->value, 7 + 'a', &e[2]) == 0 &&
         gguf_array_get(&tok->value, 7 + ' ', &e[3]) == 0 &&
         gguf_array_get(&tok->value, 263, &e[4]) == 0 &&
         gguf_array_get(&mer->value, 0, &e[5]) == 0;
    const char *bos = "<\xef\xbd\x9c" "begin\xe2\x96\x81of\xe2\x96\x81sentence\xef\xbd\x9c>";
    const char *eos = "<\xef\xbd\x9c" "end\xe2\x96\x81of\xe2\x96\x81sentence\xef\xbd\x9c>";
    ok = ok && gguf_str_eq(e[0].s, bos) && gguf_str_eq(e[1].s, eos) &&
         gguf_str_eq(e[2].s, "a") && gguf_str_eq(e[3].s, "\xc4\xa0") && /* U+0120 */
         gguf_str_eq(e[4].s, "\xc4\xa0\xc4\xa0") && gguf_str_eq(e[5].s, "\xc4\xa0 \xc4\xa0");
    tm_free(&c);
    T_CHECK(ok, "tokenizer contents");
    return 0;
}

static int test_model_opts_rejected(void) {
    const struct {
        int field;
        uint32_t v;
        const char *want;
    } cases[] = {
        {0, 100, "n_embd 100 is not a multiple of 32"},
        {1, 128, "n_ff_exp 128 is not a multiple of 256"},
        {2, DS4_TYPE_Q4_K, "dense_type Q4_K"},
        {3, 15, "n_rot 15"},
        {4, 3, "o_groups 3"},
        {5, 200, "n_vocab 200"},
        {6, 0, "n_layer 0"},
        {7, 9, "n_expert_used 9"},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        ds4_testmodel_opts o;
        ds4_testmodel_default_opts(&o);
        switch (cases[i].field) {
        case 0: o.n_embd = cases[i].v; break;
        case 1: o.n_ff_exp = cases[i].v; break;
        case 2: o.dense_type = cases[i].v; break;
        case 3: o.n_rot = cases[i].v; break;
        case 4: o.o_groups = cases[i].v; break;
        case 5: o.n_vocab = cases[i].v; break;
        case 6: o.n_layer = cases[i].v; break;
        default: o.n_expert_used = cases[i].v; break;
        }
        ds4_error err = {{0}};
        uint8_t *buf = NULL;
        uint64_t size = 0;
        int rc = ds4_testmodel_build(&o, &buf, &size, &err);
        free(buf);
        T_CHECK(rc != 0, "case %zu accepted", i);
        T_CHECK(strstr(err.msg, cases[i].want) != NULL, "error '%s' lacks '%s'", err.msg,
                cases[i].want);
    }
    return 0;
}

/* ---------------------------------------------------------------------- */
/* Negative tests by changing the parsed directory or the tensor bytes     */
/* ---------------------------------------------------------------------- */

static gguf_tensor *mut_tensor(tm_ctx *c, const char *name) {
    const gguf_tensor *t = gguf_find_tensor(&c->f, name);
    return t ? &c->f.tensors[t - c->f.tensors] : NULL;
}

static int test_model_bad_dims_type(void) {
    ds4_testmodel_opts o;
    small_opts(&o);
    tm_ctx c;
    T_CHECK(tm_build(&c, &o) == 0, "%s", c.err.msg);
    T_CHECK(tm_bind(&c) == 0, "%s", c.err.msg);
    const struct {
        const char *name;
        int what; /* 0: ne[1] doubled, 1: type F16, 2: type Q8_0 */
        const char *want;
    } cases[] = {
        {"blk.3.attn_q_b.weight", 0,
         "tensor 'blk.3.attn_q_b.weight': dims [32, 128] expected [32, 64]"},
        {"blk.1.ffn_gate_exps.weight", 0,
         "tensor 'blk.1.ffn_gate_exps.weight': dims [64, 64, 4] expected [64, 32, 4]"},
        {"output_hc_fn.weight", 0, "tensor 'output_hc_fn.weight': dims [256, 8] expected [256, 4]"},
        {"blk.2.indexer.attn_q_b.weight", 0, "tensor 'blk.2.indexer.attn_q_b.weight': dims"},
        {"blk.1.attn_norm.weight", 1, "tensor 'blk.1.attn_norm.weight': type F16 expected F32"},
        {"blk.0.hc_ffn_fn.weight", 2,
         "tensor 'blk.0.hc_ffn_fn.weight': type Q8_0 expected F16, BF16 or F32"},
        {"blk.0.ffn_gate_tid2eid.weight", 1,
         "tensor 'blk.0.ffn_gate_tid2eid.weight': type F16 expected I32"},
        {"blk.3.exp_probs_b.bias", 0, "tensor 'blk.3.exp_probs_b.bias': dims"},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        gguf_tensor *t = mut_tensor(&c, cases[i].name);
        T_CHECK(t != NULL || (tm_free(&c), 0), "no %s", cases[i].name);
        gguf_tensor saved = *t;
        if (cases[i].what == 0) t->ne[1] *= 2;
        else t->type = cases[i].what == 1 ? DS4_TYPE_F16 : DS4_TYPE_Q8_0;
        int rc = tm_bind(&c);
        *t = saved;
        int hit = rc != 0 && strstr(c.err.msg, cases[i].want) != NULL;
        if (!hit) fprintf(stderr, "    got '%s'\n", rc ? c.err.msg : "success");
        T_CHECK(hit || (tm_free(&c), 0), "expected '%s'", cases[i].want);
    }
    T_CHECK(tm_bind(&c) == 0 || (tm_free(&c), 0), "restored model: %s", c.err.msg);
    tm_free(&c);
    return 0;
}

static int test_model_tid2eid_range(void) {
    ds4_testmodel_opts o;
    small_opts(&o);
    tm_ctx c;
    T_CHECK(tm_build(&c, &o) == 0, "%s", c.err.msg);
    const gguf_tensor *t = gguf_find_tensor(&c.f, "blk.1.ffn_gate_tid2eid.weight");
    T_CHECK(t != NULL || (tm_free(&c), 0), "no tid2eid");
    uint8_t *p = c.buf + (t->data - c.f.base) + 5 * 4; /* token 2, slot 1 */
    const int32_t bad[2] = {4, -1};
    const char *want[2] = {"routes to expert 4 (expected 0..3)", "routes to expert -1"};
    for (int k = 0; k < 2; k++) {
        int32_t saved;
        memcpy(&saved, p, 4);
        memcpy(p, &bad[k], 4);
        int rc = tm_bind(&c);
        memcpy(p, &saved, 4);
        int hit = rc != 0 &&
                  strstr(c.err.msg, "tensor 'blk.1.ffn_gate_tid2eid.weight': token 2 slot 1") &&
                  strstr(c.err.msg, want[k]);
        if (!hit) fprintf(stderr, "    got '%s'\n", rc ? c.err.msg : "success");
        T_CHECK(hit || (tm_free(&c), 0), "expected '%s'", want[k]);
    }
    tm_free(&c);
    return 0;
}

/* ---------------------------------------------------------------------- */
/* Negative tests by rewriting the file                                     */
/* ---------------------------------------------------------------------- */

static int add_ratios_bad(gguf_writer *w, const gguf_file *src, ds4_error *err) {
    const int32_t r[4] = {0, 0, 5, 128};
    gguf_w_arr(w, "deepseek4.attention.compress_ratios", GGUF_VT_INT32, r, 4);
    return 0;
}
static int add_ratios_short(gguf_writer *w, const gguf_file *src, ds4_error *err) {
    const int32_t r[3] = {0, 0, 4};
    gguf_w_arr(w, "deepseek4.attention.compress_ratios", GGUF_VT_INT32, r, 3);
    return 0;
}
static int add_ratios_long_u32(gguf_writer *w, const gguf_file *src, ds4_error *err) {
    const uint32_t r[6] = {0, 0, 4, 128, 7, 7}; /* entries past n_layer are ignored */
    gguf_w_arr(w, "deepseek4.attention.compress_ratios", GGUF_VT_UINT32, r, 6);
    return 0;
}
static int add_ratios_float(gguf_writer *w, const gguf_file *src, ds4_error *err) {
    const float r[4] = {0, 0, 4, 128};
    gguf_w_arr(w, "deepseek4.attention.compress_ratios", GGUF_VT_FLOAT32, r, 4);
    return 0;
}
static int add_clamp_short(gguf_writer *w, const gguf_file *src, ds4_error *err) {
    const float v[2] = {10, 10};
    gguf_w_arr(w, "deepseek4.swiglu_clamp_exp", GGUF_VT_FLOAT32, v, 2);
    return 0;
}
static int add_clamp_f64_long(gguf_writer *w, const gguf_file *src, ds4_error *err) {
    const double v[5] = {10, 9, 8, 7, 6};
    gguf_w_arr(w, "deepseek4.swiglu_clamp_exp", GGUF_VT_FLOAT64, v, 5);
    return 0;
}
static int add_kv2(gguf_writer *w, const gguf_file *src, ds4_error *err) {
    gguf_w_u32(w, "deepseek4.attention.head_count_kv", 2);
    return 0;
}
static int add_vlen(gguf_writer *w, const gguf_file *src, ds4_error *err) {
    gguf_w_u32(w, "deepseek4.attention.value_length", 16);
    return 0;
}
static int add_rot_odd(gguf_writer *w, const gguf_file *src, ds4_error *err) {
    gguf_w_u32(w, "deepseek4.rope.dimension_count", 7);
    return 0;
}
static int add_used_big(gguf_writer *w, const gguf_file *src, ds4_error *err) {
    gguf_w_u32(w, "deepseek4.expert_used_count", 5);
    return 0;
}
static int add_groups(gguf_writer *w, const gguf_file *src, ds4_error *err) {
    gguf_w_u32(w, "deepseek4.expert_group_count", 2);
    return 0;
}
static int add_hash5(gguf_writer *w, const gguf_file *src, ds4_error *err) {
    gguf_w_u32(w, "deepseek4.hash_layer_count", 5);
    return 0;
}
static int add_hash4(gguf_writer *w, const gguf_file *src, ds4_error *err) {
    gguf_w_u32(w, "deepseek4.hash_layer_count", 4);
    return 0;
}
static int add_eps0(gguf_writer *w, const gguf_file *src, ds4_error *err) {
    gguf_w_f32(w, "deepseek4.attention.layer_norm_rms_epsilon", 0.0f);
    return 0;
}
static int add_rope_f64(gguf_writer *w, const gguf_file *src, ds4_error *err) {
    gguf_w_f64(w, "deepseek4.rope.freq_base", 12345.0); /* values are not Flash-checked */
    return 0;
}
static int add_vocab_bad(gguf_writer *w, const gguf_file *src, ds4_error *err) {
    gguf_w_u32(w, "deepseek4.vocab_size", 301);
    return 0;
}
static int add_arch(gguf_writer *w, const gguf_file *src, ds4_error *err) {
    gguf_w_str(w, "general.architecture", "llama");
    return 0;
}
static int add_sinks_wrong(gguf_writer *w, const gguf_file *src, ds4_error *err) {
    return add_zero_tensor(w, "blk.0.attn_sinks.weight", 1, 3, 1, 1, DS4_TYPE_F32, err);
}
static int add_comp_kv_q8(gguf_writer *w, const gguf_file *src, ds4_error *err) {
    return add_zero_tensor(w, "blk.2.attn_compressor_kv.weight", 2, 64, 64, 1, DS4_TYPE_Q8_0,
                           err);
}
static int add_up_f16(gguf_writer *w, const gguf_file *src, ds4_error *err) {
    return add_zero_tensor(w, "blk.3.ffn_up_exps.weight", 3, 64, 32, 4, DS4_TYPE_F16, err);
}
static int add_down_q4_0(gguf_writer *w, const gguf_file *src, ds4_error *err) {
    return add_zero_tensor(w, "blk.3.ffn_down_exps.weight", 3, 32, 64, 4, DS4_TYPE_Q4_0, err);
}
static int add_shexp_q5_0(gguf_writer *w, const gguf_file *src, ds4_error *err) {
    return add_zero_tensor(w, "blk.1.ffn_up_shexp.weight", 2, 64, 32, 1, DS4_TYPE_Q5_0, err);
}

static int test_model_bad_keys(void) {
    const char *K = "key 'deepseek4.attention.compress_ratios'";
    if (expect_rewrite_fail("deepseek4.attention.compress_ratios", NULL, add_ratios_bad, K,
                            "layer 2 has ratio 5 (allowed 0, 4, 128)") ||
        expect_rewrite_fail("deepseek4.attention.compress_ratios", NULL, add_ratios_short, K,
                            "3 entries, expected at least 4") ||
        expect_rewrite_fail("deepseek4.attention.compress_ratios", NULL, add_ratios_float, K,
                            "integer array") ||
        expect_rewrite_fail("deepseek4.attention.compress_ratios", NULL, NULL,
                            "deepseek4.attention.compress_ratios", NULL) ||
        expect_rewrite_fail("deepseek4.swiglu_clamp_exp", NULL, add_clamp_short,
                            "key 'deepseek4.swiglu_clamp_exp'", "2 entries") ||
        expect_rewrite_fail("deepseek4.attention.sliding_window", NULL, NULL,
                            "deepseek4.attention.sliding_window", NULL) ||
        expect_rewrite_fail("deepseek4.expert_weights_norm", NULL, NULL,
                            "deepseek4.expert_weights_norm", NULL) ||
        expect_rewrite_fail("deepseek4.rope.scaling.yarn_beta_slow", NULL, NULL,
                            "deepseek4.rope.scaling.yarn_beta_slow", NULL) ||
        expect_rewrite_fail("deepseek4.attention.head_count_kv", NULL, add_kv2,
                            "key 'deepseek4.attention.head_count_kv': 2", NULL) ||
        expect_rewrite_fail("deepseek4.attention.value_length", NULL, add_vlen,
                            "key 'deepseek4.attention.value_length': 16", NULL) ||
        expect_rewrite_fail("deepseek4.rope.dimension_count", NULL, add_rot_odd,
                            "key 'deepseek4.rope.dimension_count': 7", NULL) ||
        expect_rewrite_fail("deepseek4.expert_used_count", NULL, add_used_big,
                            "key 'deepseek4.expert_used_count': 5", NULL) ||
        expect_rewrite_fail("deepseek4.expert_group_count", NULL, add_groups,
                            "key 'deepseek4.expert_group_count': value 2", NULL) ||
        expect_rewrite_fail("deepseek4.hash_layer_count", NULL, add_hash5,
                            "key 'deepseek4.hash_layer_count': 5", NULL) ||
        expect_rewrite_fail("deepseek4.attention.layer_norm_rms_epsilon", NULL, add_eps0,
                            "key 'deepseek4.attention.layer_norm_rms_epsilon'", "> 0") ||
        expect_rewrite_fail("deepseek4.vocab_size", NULL, add_vocab_bad,
                            "key 'deepseek4.vocab_size': 301", "300") ||
        expect_rewrite_fail("general.architecture", NULL, add_arch,
                            "key 'general.architecture': 'llama'", NULL))
        return 1;
    return 0;
}

static int test_model_bad_tensors(void) {
    if (expect_rewrite_fail(NULL, "blk.0.attn_sinks.weight", NULL,
                            "missing tensor 'blk.0.attn_sinks.weight'", NULL) ||
        expect_rewrite_fail(NULL, "blk.2.indexer_compressor_kv.weight", NULL,
                            "missing tensor 'blk.2.indexer_compressor_kv.weight'", NULL) ||
        expect_rewrite_fail(NULL, "blk.3.attn_compressor_ape.weight", NULL,
                            "missing tensor 'blk.3.attn_compressor_ape.weight'", NULL) ||
        expect_rewrite_fail(NULL, "output.weight", NULL, "missing tensor 'output.weight'", NULL) ||
        expect_rewrite_fail(NULL, "blk.2.ffn_gate_tid2eid.weight", NULL,
                            "missing tensor 'blk.2.ffn_gate_tid2eid.weight'", NULL) ||
        expect_rewrite_fail("deepseek4.hash_layer_count", NULL, add_hash4,
                            "missing tensor 'blk.3.ffn_gate_tid2eid.weight'", NULL) ||
        expect_rewrite_fail(NULL, "blk.0.attn_sinks.weight", add_sinks_wrong,
                            "tensor 'blk.0.attn_sinks.weight': dims [3] expected [2]", NULL) ||
        expect_rewrite_fail(NULL, "blk.2.attn_compressor_kv.weight", add_comp_kv_q8,
                            "tensor 'blk.2.attn_compressor_kv.weight': type Q8_0 expected "
                            "F16, BF16 or F32", NULL) ||
        expect_rewrite_fail(NULL, "blk.3.ffn_up_exps.weight", add_up_f16,
                            "tensor 'blk.3.ffn_up_exps.weight': type F16 differs from "
                            "ffn_gate_exps type Q8_0", NULL) ||
        expect_rewrite_fail(NULL, "blk.3.ffn_down_exps.weight", add_down_q4_0,
                            "tensor 'blk.3.ffn_down_exps.weight': type Q4_0 expected "
                            "IQ2_XXS, Q2_K, Q4_K, Q8_0, F16, BF16 or F32", NULL) ||
        expect_rewrite_fail(NULL, "blk.1.ffn_up_shexp.weight", add_shexp_q5_0,
                            "tensor 'blk.1.ffn_up_shexp.weight': type Q5_0 expected "
                            "Q8_0, F16, BF16 or F32", NULL))
        return 1;
    return 0;
}

/* Accepted variations: extra array entries, other numeric key types, no
 * vocab_size key, exp_probs_b absent. */
static int test_model_accepted_variants(void) {
    tm_ctx r;
    if (expect_rewrite_ok("deepseek4.attention.compress_ratios", NULL, add_ratios_long_u32, &r))
        return 1;
    int ok = r.m->hp.compress_ratio[3] == 128 && r.m->hp.compress_ratio[4] == 0;
    tm_free(&r);
    T_CHECK(ok, "long u32 ratios array");

    if (expect_rewrite_ok("deepseek4.swiglu_clamp_exp", NULL, add_clamp_f64_long, &r)) return 1;
    ok = r.m->hp.swiglu_clamp[0] == 10.0f && r.m->hp.swiglu_clamp[3] == 7.0f;
    tm_free(&r);
    T_CHECK(ok, "f64 clamp array");

    if (expect_rewrite_ok("deepseek4.rope.freq_base", NULL, add_rope_f64, &r)) return 1;
    ok = r.m->hp.rope_base == 12345.0f;
    tm_free(&r);
    T_CHECK(ok, "f64 rope base");

    if (expect_rewrite_ok("deepseek4.vocab_size", NULL, NULL, &r)) return 1;
    ok = r.m->hp.n_vocab == 300;
    tm_free(&r);
    T_CHECK(ok, "n_vocab from the token list");

    if (expect_rewrite_ok("deepseek4.expert_group_count", "blk.3.exp_probs_b.bias", NULL, &r))
        return 1;
    ok = r.m->layers[3].exp_probs_b == NULL && r.m->layers[3].ffn_gate_inp != NULL;
    tm_free(&r);
    T_CHECK(ok, "exp_probs_b optional");
    return 0;
}

/* Flash's metadata passes validation (the bind then stops at the first
 * tensor, since the rewritten file has none). */
static int add_flash(gguf_writer *w, const gguf_file *src, ds4_error *err) {
    const char *P = "deepseek4.";
    const struct {
        const char *k;
        uint32_t v;
    } u[] = {
        {"block_count", 43}, {"embedding_length", 4096}, {"vocab_size", 129280},
        {"attention.head_count", 64}, {"attention.head_count_kv", 1},
        {"attention.key_length", 512}, {"attention.value_length", 512},
        {"rope.dimension_count", 64}, {"attention.q_lora_rank", 1024},
        {"attention.output_lora_rank", 1024}, {"attention.output_group_count", 8},
        {"expert_count", 256}, {"expert_used_count", 6}, {"expert_feed_forward_length", 2048},
        {"expert_shared_count", 1}, {"hash_layer_count", 3}, {"attention.sliding_window", 128},
        {"attention.indexer.head_count", 64}, {"attention.indexer.key_length", 128},
        {"attention.indexer.top_k", 512}, {"hyper_connection.count", 4},
        {"hyper_connection.sinkhorn_iterations", 20},
        {"rope.scaling.original_context_length", 65536},
    };
    char key[128];
    for (size_t i = 0; i < sizeof(u) / sizeof(u[0]); i++) {
        snprintf(key, sizeof(key), "%s%s", P, u[i].k);
        gguf_w_u32(w, key, u[i].v);
    }
    const struct {
        const char *k;
        float v;
    } fl[] = {
        {"hyper_connection.epsilon", 1e-6f}, {"rope.freq_base", 10000.0f},
        {"rope.scaling.factor", 16.0f}, {"rope.scaling.yarn_beta_fast", 32.0f},
        {"rope.scaling.yarn_beta_slow", 1.0f}, {"attention.compress_rope_freq_base", 160000.0f},
        {"expert_weights_scale", 1.5f}, {"attention.layer_norm_rms_epsilon", 1e-6f},
    };
    for (size_t i = 0; i < sizeof(fl) / sizeof(fl[0]); i++) {
        snprintf(key, sizeof(key), "%s%s", P, fl[i].k);
        gguf_w_f32(w, key, fl[i].v);
    }
    int32_t ratios[44];
    float clamp[44];
    for (int il = 0; il < 44; il++) {
        ratios[il] = il < 2 ? 0 : il % 2 == 0 ? 4 : 128;
        clamp[il] = 10.0f;
    }
    ratios[43] = 0; /* an MTP entry past the last layer */
    gguf_w_arr(w, "deepseek4.attention.compress_ratios", GGUF_VT_INT32, ratios, 44);
    gguf_w_arr(w, "deepseek4.swiglu_clamp_exp", GGUF_VT_FLOAT32, clamp, 44);
    gguf_w_bool(w, "deepseek4.expert_weights_norm", true);
    gguf_w_str(w, "general.architecture", "deepseek4");
    return 0;
}

static int test_model_flash_metadata(void) {
    ds4_testmodel_opts o;
    small_opts(&o);
    o.n_layer = 1;
    o.n_hash_layers = 0;
    tm_ctx c, r;
    T_CHECK(tm_build(&c, &o) == 0, "%s", c.err.msg);
    /* Only Flash's keys: vocab_size then has no token list to agree with. */
    gguf_writer *w = gguf_writer_new(0);
    int rc = add_flash(w, &c.f, &c.err);
    uint8_t *buf = NULL;
    uint64_t size = 0;
    if (rc == 0) rc = gguf_writer_to_memory(w, &buf, &size, &c.err);
    gguf_writer_free(w);
    tm_free(&c);
    T_CHECK(rc == 0, "%s", c.err.msg);
    memset(&r, 0, sizeof(r));
    rc = tm_parse(&r, buf, size);
    T_CHECK(rc == 0 || (tm_free(&r), 0), "%s", r.err.msg);
    rc = tm_bind(&r);
    const ds4_hparams *hp = &r.m->hp;
    int ok = rc != 0 && strstr(r.err.msg, "missing tensor 'token_embd.weight'") &&
             hp->n_layer == 43 && hp->n_vocab == 129280 && hp->head_dim == 512 &&
             hp->compress_ratio[2] == 4 && hp->compress_ratio[41] == 128 &&
             hp->compress_ratio[42] == 4 && hp->idx_top_k == 512;
    if (!ok) fprintf(stderr, "    got '%s'\n", rc ? r.err.msg : "success");
    tm_free(&r);
    T_CHECK(ok, "Flash metadata");
    return 0;
}

/* ---------------------------------------------------------------------- */
/* --info                                                                   */
/* ---------------------------------------------------------------------- */

static int test_model_print_info(void) {
    ds4_testmodel_opts o;
    small_opts(&o);
    o.exp_gate_up_type = DS4_TYPE_F16;
    tm_ctx c;
    T_CHECK(tm_build(&c, &o) == 0, "%s", c.err.msg);
    T_CHECK(tm_bind(&c) == 0 || (tm_free(&c), 0), "%s", c.err.msg);
    char *text = NULL;
    size_t len = 0;
    FILE *fp = open_memstream(&text, &len);
    T_CHECK(fp != NULL || (tm_free(&c), 0), "open_memstream");
    ds4_model_print_info(c.m, fp);
    fclose(fp);
    uint64_t total = 0, f16 = 0, n_f16 = 0;
    for (uint64_t i = 0; i < c.f.n_tensors; i++) {
        total += c.f.tensors[i].nbytes;
        if (c.f.tensors[i].type == DS4_TYPE_F16) {
            f16 += c.f.tensors[i].nbytes;
            n_f16++;
        }
    }
    char total_line[96], f16_line[96], count_line[64];
    snprintf(total_line, sizeof(total_line), "total: %llu bytes", (unsigned long long)total);
    snprintf(f16_line, sizeof(f16_line), "  %-8s %8llu %18llu", "F16", (unsigned long long)n_f16,
             (unsigned long long)f16);
    snprintf(count_line, sizeof(count_line), "tensors: %llu in file, %llu bound",
             (unsigned long long)c.f.n_tensors, (unsigned long long)c.f.n_tensors);
    const char *want[] = {
        "model: ds4cl random test model\n",
        "architecture: deepseek4\n",
        "  n_layer                4\n",
        "  n_embd                 64\n",
        "  n_vocab                300\n",
        "  n_expert_used          2\n",
        "  rope_compress_base     160000\n",
        "  expert_weights_norm    true\n",
        "layers: 2 window, 1 ratio-4, 1 ratio-128; hash-routed: 0-2\n",
        "compress ratios: 0 0 4 128\n",
        "swiglu clamp: 10 (all layers)\n",
        count_line,
        f16_line,
        "Q8_0",
        "I32",
        total_line,
    };
    int missing = -1;
    for (size_t i = 0; i < sizeof(want) / sizeof(want[0]) && missing < 0; i++)
        if (!strstr(text, want[i])) missing = (int)i;
    if (missing >= 0) fprintf(stderr, "    info output:\n%s", text);
    free(text);
    tm_free(&c);
    T_CHECK(missing < 0, "print_info lacks '%s'", want[missing]);
    return 0;
}

void tests_register_model(void) {
    test_add("model/default_binds", test_model_default_binds);
    test_add("model/deterministic", test_model_deterministic);
    test_add("model/variants_bind", test_model_variants_bind);
    test_add("model/write_file", test_model_write_file);
    test_add("model/tokenizer", test_model_tokenizer);
    test_add("model/opts_rejected", test_model_opts_rejected);
    test_add("model/bad_dims_type", test_model_bad_dims_type);
    test_add("model/tid2eid_range", test_model_tid2eid_range);
    test_add("model/bad_keys", test_model_bad_keys);
    test_add("model/bad_tensors", test_model_bad_tensors);
    test_add("model/accepted_variants", test_model_accepted_variants);
    test_add("model/flash_metadata", test_model_flash_metadata);
    test_add("model/print_info", test_model_print_info);
}
