/* convert.c - the `ds4cl-convert` program: a Hugging Face DeepSeek V4 folder
 * (config.json + safetensors, optional tokenizer.json) to a deepseek4 GGUF.
 *
 *   ds4cl-convert HF_DIR OUT.gguf [--type f32|f16|q8_0|q2|q4] [--name NAME]
 *                 [--threads N] [-q]
 *
 * Flow, and why it is in this order:
 *   1. config.json -> cv_config.  Both spellings are read: the official one
 *      (compress_ratios, num_hash_layers, qk_rope_head_dim, rope_scaling)
 *      and the one transformers saves (layer_types, mlp_layer_types,
 *      compress_rates, partial_rotary_factor, nested rope_parameters).  When
 *      both spellings of a fact are present they must agree.  A missing
 *      tuning key takes transformers' default; a missing shape key, a value
 *      of the wrong kind or one ds4 cannot run is an error naming the key.
 *   2. The safetensors names are normalised to the official DeepSeek names
 *      (three namings exist: official, transformers' default save with a
 *      "model." prefix, and the HF module names with fused 3-D experts).
 *   3. A plan lists every GGUF tensor of the deepseek4 layout (model.md
 *      §3.4) with its source parts, dims and output type; every source is
 *      checked (present, shape, dtype, row length fits the block size) and
 *      every source tensor must be used, BEFORE any slow work starts.
 *   4. Tensors are converted one at a time, in chunks of rows (bounded f32
 *      scratch), quantized by worker threads (rows are independent, so the
 *      bytes do not depend on the thread count).  The GGUF writer keeps a
 *      copy of every tensor until it saves: peak memory is about the output
 *      size (fine for test models; a streaming writer is needed for Flash).
 *   5. The file is saved to OUT.tmp (the writer itself goes through
 *      OUT.tmp.tmp), opened again and bound with ds4_model_bind; only a file
 *      that binds is renamed to OUT.  No partial output is ever left.
 *
 * Output is a pure function of the tensor values, the config values and the
 * options: the three namings of one model give byte-identical files.
 * Official FP8/FP4 block-scaled weights are not supported yet (clear error).
 */
#include <cjson/cJSON.h>
#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "error.h"
#include "gguf.h"
#include "gguf_write.h"
#include "model.h"
#include "quant.h"
#include "safetensors.h"

#define KP "deepseek4."
#define MAX_THREADS 64
#define CHUNK_VALUES (UINT64_C(1) << 22) /* f32 scratch per conversion step */
#define MAX_CONFIG_BYTES (16u << 20)
#define MAX_TOKENIZER_BYTES (256u << 20)

/* ---------------------------------------------------------------------- */
/* Options                                                                 */
/* ---------------------------------------------------------------------- */

enum out_kind { OUT_F32, OUT_F16, OUT_Q8_0, OUT_Q2, OUT_Q4, OUT_KIND_COUNT };
static const char *const k_kind_names[OUT_KIND_COUNT] = {"f32", "f16", "q8_0", "q2", "q4"};

typedef struct cv_opts {
    const char *dir, *out, *name;
    int kind;
    int threads;
    bool quiet;
    char name_buf[256]; /* default general.name: the folder's name */
} cv_opts;

/* ---------------------------------------------------------------------- */
/* Config                                                                  */
/* ---------------------------------------------------------------------- */

typedef struct cv_config {
    uint32_t n_layer, n_embd, n_vocab, n_head, head_dim, n_rot;
    uint32_t q_lora, o_lora, o_groups;
    uint32_t n_expert, n_expert_used, n_ff_exp, n_hash;
    uint32_t n_swa, n_idx_head, idx_head_dim, idx_top_k;
    uint32_t n_hc, n_sinkhorn, n_nextn, bos, eos;
    double hc_eps, rms_eps, rope_base, compress_base, rope_factor, beta_fast, beta_slow;
    double swiglu, weights_scale;
    uint64_t orig_ctx, n_ctx;
    uint32_t ratio[DS4_MAX_LAYERS];
} cv_config;

/* JSON null counts as absent (transformers writes None as null). */
static const cJSON *jget(const cJSON *obj, const char *key) {
    const cJSON *j = cJSON_GetObjectItemCaseSensitive(obj, key);
    return cJSON_IsNull(j) ? NULL : j;
}

/* Short rendering of a JSON value for messages. */
static const char *jrepr(const cJSON *j, char *buf, size_t cap) {
    char *s = cJSON_PrintUnformatted(j);
    snprintf(buf, cap, "%s", s ? s : "?");
    if (s && strlen(s) >= cap && cap > 4) memcpy(buf + cap - 4, "...", 4);
    free(s);
    return buf;
}

/* Integer key in [min, max]; `where` names the object ("" or "rope_parameters.compress."). */
static int cfg_int(const cJSON *obj, const char *where, const char *key, bool required,
                   int64_t def, int64_t min, int64_t max, int64_t *out, ds4_error *err) {
    const cJSON *j = jget(obj, key);
    if (!j) {
        if (required) return ds4_fail(err, "config.json: missing key '%s%s'", where, key);
        *out = def;
        return 0;
    }
    double v = cJSON_IsNumber(j) ? j->valuedouble : NAN;
    char b[64];
    if (!(v == floor(v)) || v < (double)min || v > (double)max)
        return ds4_fail(err, "config.json: key '%s%s': %s, expected an integer in [%" PRId64
                        ", %" PRId64 "]", where, key, jrepr(j, b, sizeof(b)), min, max);
    *out = (int64_t)v;
    return 0;
}

static int cfg_u32(const cJSON *obj, const char *key, bool required, uint32_t def, uint32_t min,
                   uint32_t *out, ds4_error *err) {
    int64_t v;
    if (cfg_int(obj, "", key, required, def, min, UINT32_MAX, &v, err) != 0) return -1;
    *out = (uint32_t)v;
    return 0;
}

/* Finite number key; positive requires > 0. */
static int cfg_num(const cJSON *obj, const char *where, const char *key, bool required,
                   double def, bool positive, double *out, ds4_error *err) {
    const cJSON *j = jget(obj, key);
    if (!j) {
        if (required) return ds4_fail(err, "config.json: missing key '%s%s'", where, key);
        *out = def;
        return 0;
    }
    char b[64];
    double v = cJSON_IsNumber(j) ? j->valuedouble : NAN;
    if (!isfinite(v) || fabs(v) > 3.0e38 || (positive && !(v > 0.0)))
        return ds4_fail(err, "config.json: key '%s%s': %s, expected a finite number%s", where,
                        key, jrepr(j, b, sizeof(b)), positive ? " > 0" : "");
    *out = v;
    return 0;
}

/* Optional key that, when present, must have one given value (something
 * transformers ignores or hard-wires and ds4 cannot do otherwise). */
static int cfg_must_str(const cJSON *obj, const char *key, const char *want, ds4_error *err) {
    const cJSON *j = jget(obj, key);
    char b[64];
    if (j && !(cJSON_IsString(j) && strcmp(j->valuestring, want) == 0))
        return ds4_fail(err, "config.json: key '%s': %s, expected \"%s\" (the only value "
                        "deepseek4 supports)", key, jrepr(j, b, sizeof(b)), want);
    return 0;
}

static int cfg_must_bool(const cJSON *obj, const char *key, bool want, ds4_error *err) {
    const cJSON *j = jget(obj, key);
    if (j && !(cJSON_IsBool(j) && (cJSON_IsTrue(j) != 0) == want))
        return ds4_fail(err, "config.json: key '%s': expected %s (the only value deepseek4 "
                        "supports)", key, want ? "true" : "false");
    return 0;
}

static int cfg_must_int(const cJSON *obj, const char *key, int64_t want, ds4_error *err) {
    int64_t v;
    if (cfg_int(obj, "", key, false, want, INT64_MIN / 2, INT64_MAX / 2, &v, err) != 0) return -1;
    if (v != want)
        return ds4_fail(err, "config.json: key '%s': %" PRId64 ", expected %" PRId64
                        " (the only value deepseek4 supports)", key, v, want);
    return 0;
}

static int check_fixed_keys(const cJSON *c, ds4_error *err) {
    if (cfg_must_str(c, "model_type", "deepseek_v4", err) ||
        cfg_must_str(c, "hidden_act", "silu", err) ||
        cfg_must_str(c, "scoring_func", "sqrtsoftplus", err) ||
        cfg_must_bool(c, "norm_topk_prob", true, err) ||
        cfg_must_bool(c, "attention_bias", false, err) ||
        cfg_must_bool(c, "mlp_bias", false, err) ||
        cfg_must_bool(c, "tie_word_embeddings", false, err) ||
        cfg_must_int(c, "num_key_value_heads", 1, err) ||
        cfg_must_int(c, "n_shared_experts", 1, err))
        return -1;
    return 0;
}

/* The first key of `names` present in c, in order; the others, when present,
 * must hold the same number (aliases such as n_routed_experts /
 * num_local_experts). */
static int cfg_u32_alias(const cJSON *c, const char *const *names, int n, uint32_t min,
                         uint32_t *out, ds4_error *err) {
    int found = -1;
    for (int i = 0; i < n; i++) {
        if (!jget(c, names[i])) continue;
        uint32_t v;
        if (cfg_u32(c, names[i], true, 0, min, &v, err) != 0) return -1;
        if (found < 0) {
            found = i;
            *out = v;
        } else if (v != *out) {
            return ds4_fail(err, "config.json: keys '%s' (%" PRIu32 ") and '%s' (%" PRIu32
                            ") contradict", names[found], *out, names[i], v);
        }
    }
    if (found < 0) return ds4_fail(err, "config.json: missing key '%s'", names[0]);
    return 0;
}

static int read_shape_keys(const cJSON *c, cv_config *k, ds4_error *err) {
    static const char *const experts[] = {"n_routed_experts", "num_local_experts"};
    const struct {
        const char *key;
        uint32_t *dst;
    } req[] = {
        {"vocab_size", &k->n_vocab},        {"hidden_size", &k->n_embd},
        {"num_hidden_layers", &k->n_layer}, {"num_attention_heads", &k->n_head},
        {"head_dim", &k->head_dim},         {"q_lora_rank", &k->q_lora},
        {"o_lora_rank", &k->o_lora},        {"o_groups", &k->o_groups},
        {"num_experts_per_tok", &k->n_expert_used}, {"index_n_heads", &k->n_idx_head},
        {"index_head_dim", &k->idx_head_dim}, {"index_topk", &k->idx_top_k},
        {"sliding_window", &k->n_swa},
    };
    for (size_t i = 0; i < sizeof(req) / sizeof(req[0]); i++)
        if (cfg_u32(c, req[i].key, true, 0, 1, req[i].dst, err) != 0) return -1;
    if (k->n_layer > DS4_MAX_LAYERS)
        return ds4_fail(err, "config.json: key 'num_hidden_layers': %" PRIu32 ", at most %d "
                        "supported", k->n_layer, DS4_MAX_LAYERS);
    if (cfg_u32_alias(c, experts, 2, 1, &k->n_expert, err) != 0) return -1;
    /* moe_intermediate_size wins over the alias intermediate_size, which
     * other DeepSeek configs use for a dense FFN width. */
    const char *ff = jget(c, "moe_intermediate_size") ? "moe_intermediate_size"
                                                      : "intermediate_size";
    if (cfg_u32(c, ff, true, 0, 1, &k->n_ff_exp, err) != 0) {
        if (!jget(c, ff)) return ds4_fail(err, "config.json: missing key 'moe_intermediate_size'");
        return -1;
    }
    if (k->n_expert_used > k->n_expert)
        return ds4_fail(err, "config.json: key 'num_experts_per_tok': %" PRIu32 ", more than "
                        "the %" PRIu32 " routed experts", k->n_expert_used, k->n_expert);
    if (k->n_head % k->o_groups != 0)
        return ds4_fail(err, "config.json: key 'o_groups': %" PRIu32 " does not divide "
                        "num_attention_heads %" PRIu32, k->o_groups, k->n_head);
    return 0;
}

static int read_tuning_keys(const cJSON *c, cv_config *k, ds4_error *err) {
    int64_t v;
    if (cfg_u32(c, "hc_mult", false, 4, 1, &k->n_hc, err) ||
        cfg_u32(c, "hc_sinkhorn_iters", false, 20, 1, &k->n_sinkhorn, err) ||
        cfg_u32(c, "num_nextn_predict_layers", false, 1, 0, &k->n_nextn, err) ||
        cfg_u32(c, "bos_token_id", false, 0, 0, &k->bos, err) ||
        cfg_u32(c, "eos_token_id", false, 1, 0, &k->eos, err) ||
        cfg_num(c, "", "hc_eps", false, 1e-6, true, &k->hc_eps, err) ||
        cfg_num(c, "", "rms_norm_eps", false, 1e-6, true, &k->rms_eps, err) ||
        cfg_num(c, "", "swiglu_limit", false, 10.0, true, &k->swiglu, err) ||
        cfg_num(c, "", "routed_scaling_factor", false, 1.5, true, &k->weights_scale, err) ||
        cfg_int(c, "", "max_position_embeddings", false, 1048576, 1, INT64_MAX / 2, &v, err))
        return -1;
    if (k->n_hc > 64)
        return ds4_fail(err, "config.json: key 'hc_mult': %" PRIu32 ", at most 64 supported",
                        k->n_hc);
    k->n_ctx = (uint64_t)v;
    return 0;
}

/* --- per-layer attention kinds --- */

enum { LT_SWA, LT_CSA, LT_HCA };

static int attn_kind(const char *s) {
    if (strcmp(s, "sliding_attention") == 0) return LT_SWA;
    if (strcmp(s, "compressed_sparse_attention") == 0) return LT_CSA;
    if (strcmp(s, "heavily_compressed_attention") == 0) return LT_HCA;
    return -1;
}

/* compress_rates {csa, hca}, overridden by legacy compress_rate_csa/hca. */
static int read_rates(const cJSON *c, int64_t rate[3], ds4_error *err) {
    rate[LT_SWA] = 0;
    rate[LT_CSA] = 4;
    rate[LT_HCA] = 128;
    const cJSON *r = jget(c, "compress_rates");
    if (r) {
        if (!cJSON_IsObject(r))
            return ds4_fail(err, "config.json: key 'compress_rates': expected an object");
        for (const cJSON *e = r->child; e; e = e->next) {
            int kind = attn_kind(e->string);
            if (kind != LT_CSA && kind != LT_HCA)
                return ds4_fail(err, "config.json: key 'compress_rates': unknown layer type "
                                "'%s'", e->string);
            if (cfg_int(r, "compress_rates.", e->string, true, 0, 1, 1 << 20, &rate[kind], err))
                return -1;
        }
    }
    if (cfg_int(c, "", "compress_rate_csa", false, rate[LT_CSA], 1, 1 << 20, &rate[LT_CSA], err) ||
        cfg_int(c, "", "compress_rate_hca", false, rate[LT_HCA], 1, 1 << 20, &rate[LT_HCA], err))
        return -1;
    return 0;
}

static int ratios_from_layer_types(const cJSON *lt, const cv_config *k, const int64_t rate[3],
                                   int64_t *out, ds4_error *err) {
    if (!cJSON_IsArray(lt) || (uint32_t)cJSON_GetArraySize(lt) != k->n_layer)
        return ds4_fail(err, "config.json: key 'layer_types': expected an array of %" PRIu32
                        " strings (num_hidden_layers)", k->n_layer);
    uint32_t il = 0;
    for (const cJSON *e = lt->child; e; e = e->next, il++) {
        int kind = cJSON_IsString(e) ? attn_kind(e->valuestring) : -1;
        char b[80];
        if (kind < 0)
            return ds4_fail(err, "config.json: key 'layer_types': layer %" PRIu32 " is %s, "
                            "expected sliding_attention, compressed_sparse_attention or "
                            "heavily_compressed_attention", il, jrepr(e, b, sizeof(b)));
        out[il] = rate[kind];
    }
    return 0;
}

/* compress_ratios (official): one entry per layer, maybe a trailing MTP one;
 * transformers maps 0/4/128 to a layer type, then the type to its rate. */
static int ratios_from_official(const cJSON *cr, const cv_config *k, const int64_t rate[3],
                                int64_t *out, ds4_error *err) {
    if (!cJSON_IsArray(cr) || (uint32_t)cJSON_GetArraySize(cr) < k->n_layer)
        return ds4_fail(err, "config.json: key 'compress_ratios': expected an array of at "
                        "least %" PRIu32 " integers (num_hidden_layers)", k->n_layer);
    const cJSON *e = cr->child;
    for (uint32_t il = 0; il < k->n_layer; il++, e = e->next) {
        double v = cJSON_IsNumber(e) ? e->valuedouble : NAN;
        char b[64];
        if (v != 0.0 && v != 4.0 && v != 128.0)
            return ds4_fail(err, "config.json: key 'compress_ratios': layer %" PRIu32 " is %s, "
                            "expected 0, 4 or 128", il, jrepr(e, b, sizeof(b)));
        out[il] = rate[v == 0.0 ? LT_SWA : v == 4.0 ? LT_CSA : LT_HCA];
    }
    return 0;
}

static int read_layer_kinds(const cJSON *c, cv_config *k, ds4_error *err) {
    int64_t rate[3], a[DS4_MAX_LAYERS], b[DS4_MAX_LAYERS];
    if (read_rates(c, rate, err) != 0) return -1;
    const cJSON *lt = jget(c, "layer_types"), *cr = jget(c, "compress_ratios");
    if (!lt && !cr)
        return ds4_fail(err, "config.json: missing key 'layer_types' (or the official "
                        "'compress_ratios'): the attention kind of every layer");
    if (lt && ratios_from_layer_types(lt, k, rate, a, err) != 0) return -1;
    if (cr && ratios_from_official(cr, k, rate, b, err) != 0) return -1;
    for (uint32_t il = 0; il < k->n_layer; il++) {
        int64_t r = lt ? a[il] : b[il];
        if (lt && cr && a[il] != b[il])
            return ds4_fail(err, "config.json: keys 'layer_types' and 'compress_ratios' "
                            "contradict at layer %" PRIu32 " (%" PRId64 " vs %" PRId64 ")",
                            il, a[il], b[il]);
        if (r != 0 && r != 4 && r != 128)
            return ds4_fail(err, "config.json: layer %" PRIu32 " has compress rate %" PRId64
                            " (ds4 supports 4 and 128, from 'compress_rates')", il, r);
        k->ratio[il] = (uint32_t)r;
    }
    return 0;
}

/* Hash-routed layers: mlp_layer_types (a "hash_moe" prefix) or num_hash_layers. */
static int read_hash_layers(const cJSON *c, cv_config *k, ds4_error *err) {
    const cJSON *mt = jget(c, "mlp_layer_types");
    int64_t nh = -1;
    if (mt) {
        if (!cJSON_IsArray(mt) || (uint32_t)cJSON_GetArraySize(mt) != k->n_layer)
            return ds4_fail(err, "config.json: key 'mlp_layer_types': expected an array of %" PRIu32
                            " strings (num_hidden_layers)", k->n_layer);
        uint32_t il = 0, n = 0;
        for (const cJSON *e = mt->child; e; e = e->next, il++) {
            bool hash = cJSON_IsString(e) && strcmp(e->valuestring, "hash_moe") == 0;
            bool moe = cJSON_IsString(e) && strcmp(e->valuestring, "moe") == 0;
            char b[64];
            if (!hash && !moe)
                return ds4_fail(err, "config.json: key 'mlp_layer_types': layer %" PRIu32
                                " is %s, expected \"hash_moe\" or \"moe\"", il,
                                jrepr(e, b, sizeof(b)));
            if (hash && n != il)
                return ds4_fail(err, "config.json: key 'mlp_layer_types': layer %" PRIu32
                                " is hash_moe after a moe layer (deepseek4 needs the hash "
                                "layers first)", il);
            n += hash;
        }
        nh = n;
    }
    const cJSON *nj = jget(c, "num_hash_layers");
    if (nj) {
        int64_t v;
        if (cfg_int(c, "", "num_hash_layers", true, 0, 0, UINT32_MAX, &v, err) != 0) return -1;
        if (v > k->n_layer) v = k->n_layer;
        if (nh >= 0 && nh != v)
            return ds4_fail(err, "config.json: keys 'mlp_layer_types' (%" PRId64 " hash layers) "
                            "and 'num_hash_layers' (%" PRId64 ") contradict", nh, v);
        nh = v;
    }
    if (nh < 0) nh = k->n_layer < 3 ? k->n_layer : 3; /* transformers' default */
    k->n_hash = (uint32_t)nh;
    return 0;
}

/* --- RoPE --- */

/* "rope_type" or legacy "type" of a rope dict (default "default"). */
static int rope_type(const cJSON *d, const char *where, const char **out, ds4_error *err) {
    const cJSON *a = jget(d, "rope_type"), *b = jget(d, "type");
    if ((a && !cJSON_IsString(a)) || (b && !cJSON_IsString(b)))
        return ds4_fail(err, "config.json: key '%srope_type': expected a string", where);
    if (a && b && strcmp(a->valuestring, b->valuestring) != 0)
        return ds4_fail(err, "config.json: keys '%srope_type' (%s) and '%stype' (%s) contradict",
                        where, a->valuestring, where, b->valuestring);
    *out = a ? a->valuestring : b ? b->valuestring : "default";
    return 0;
}

/* A number that may be given at top level and inside a rope dict: both
 * must agree; *out keeps def when neither has it. */
static int rope_num(const cJSON *top, const char *tkey, const cJSON *sub, const char *where,
                    const char *skey, double def, double *out, ds4_error *err) {
    double a = NAN, b = NAN;
    if (top && jget(top, tkey) && cfg_num(top, "", tkey, true, 0, true, &a, err) != 0) return -1;
    if (sub && jget(sub, skey) && cfg_num(sub, where, skey, true, 0, true, &b, err) != 0)
        return -1;
    if (!isnan(a) && !isnan(b) && fabs(a - b) > 1e-9 * fabs(a))
        return ds4_fail(err, "config.json: keys '%s' (%g) and '%s%s' (%g) contradict", tkey, a,
                        where, skey, b);
    *out = !isnan(b) ? b : !isnan(a) ? a : def;
    return 0;
}

/* YaRN (or nothing) from the compress rope dict. */
static int read_yarn(const cJSON *d, const char *where, cv_config *k, ds4_error *err) {
    const char *type = "default";
    if (d && rope_type(d, where, &type, err) != 0) return -1;
    k->rope_factor = 1.0;
    k->beta_fast = 32.0;
    k->beta_slow = 1.0;
    k->orig_ctx = k->n_ctx;
    if (strcmp(type, "default") == 0) {
        int64_t v;
        if (d && cfg_int(d, where, "original_max_position_embeddings", false, (int64_t)k->n_ctx,
                         1, INT64_MAX / 2, &v, err) != 0)
            return -1;
        if (d) k->orig_ctx = (uint64_t)v;
        return 0;
    }
    if (strcmp(type, "yarn") != 0)
        return ds4_fail(err, "config.json: key '%srope_type': \"%s\" is not supported "
                        "(deepseek4 uses \"yarn\" or \"default\")", where, type);
    int64_t v;
    double af;
    if (cfg_num(d, where, "factor", true, 0, true, &k->rope_factor, err) ||
        cfg_int(d, where, "original_max_position_embeddings", true, 0, 1, INT64_MAX / 2, &v,
                err) ||
        cfg_num(d, where, "beta_fast", false, 32.0, true, &k->beta_fast, err) ||
        cfg_num(d, where, "beta_slow", false, 1.0, true, &k->beta_slow, err) ||
        cfg_num(d, where, "attention_factor", false, 1.0, true, &af, err))
        return -1;
    if (af != 1.0)
        return ds4_fail(err, "config.json: key '%sattention_factor': %g is not supported (ds4 "
                        "applies no YaRN magnitude scaling; transformers sets 1.0)", where, af);
    k->orig_ctx = (uint64_t)v;
    return 0;
}

static int read_rope(const cJSON *c, cv_config *k, ds4_error *err) {
    /* transformers keeps a nested {"main": {...}, "compress": {...}}; an
     * official config has rope_scaling (or a flat rope_parameters), which
     * describes the compress rope. */
    const cJSON *rp = jget(c, "rope_parameters"), *main = NULL, *comp = NULL;
    const char *mw = "rope_parameters.main.", *cw = "rope_parameters.compress.";
    if (rp && !cJSON_IsObject(rp))
        return ds4_fail(err, "config.json: key 'rope_parameters': expected an object");
    if (rp && cJSON_IsObject(jget(rp, "main")) && cJSON_IsObject(jget(rp, "compress"))) {
        main = jget(rp, "main");
        comp = jget(rp, "compress");
    } else {
        const cJSON *rs = jget(c, "rope_scaling");
        if (rs && !cJSON_IsObject(rs))
            return ds4_fail(err, "config.json: key 'rope_scaling': expected an object");
        if (rs && rp)
            return ds4_fail(err, "config.json: keys 'rope_scaling' and a flat 'rope_parameters' "
                            "both present; keep one");
        comp = rs ? rs : rp;
        cw = rs ? "rope_scaling." : "rope_parameters.";
    }
    const char *mt = "default";
    if (main && rope_type(main, mw, &mt, err) != 0) return -1;
    if (strcmp(mt, "default") != 0)
        return ds4_fail(err, "config.json: key '%srope_type': \"%s\" is not supported (the "
                        "main rope of deepseek4 is unscaled)", mw, mt);
    if (rope_num(c, "rope_theta", main, mw, "rope_theta", 10000.0, &k->rope_base, err) ||
        rope_num(c, "compress_rope_theta", main ? comp : NULL, cw, "rope_theta", 160000.0,
                 &k->compress_base, err))
        return -1;
    if (read_yarn(comp, cw, k, err) != 0) return -1;

    /* RoPE width: partial_rotary_factor (top level and in each dict) and
     * qk_rope_head_dim must all agree; default 64/512 as in transformers. */
    double prf = NAN, f;
    const cJSON *srcs[3] = {c, main, main ? comp : NULL};
    const char *wh[3] = {"", mw, cw};
    for (int i = 0; i < 3; i++) {
        if (!srcs[i] || !jget(srcs[i], "partial_rotary_factor")) continue;
        if (cfg_num(srcs[i], wh[i], "partial_rotary_factor", true, 0, true, &f, err)) return -1;
        if (!isnan(prf) && f != prf)
            return ds4_fail(err, "config.json: key '%spartial_rotary_factor': %g contradicts %g",
                            wh[i], f, prf);
        prf = f;
    }
    uint32_t rot = 0;
    if (jget(c, "qk_rope_head_dim") && cfg_u32(c, "qk_rope_head_dim", true, 0, 0, &rot, err))
        return -1;
    double want = isnan(prf) ? (jget(c, "qk_rope_head_dim") ? rot : k->head_dim * 0.125)
                             : k->head_dim * prf;
    if (want != floor(want) || want > k->head_dim || ((uint32_t)want) % 2 != 0)
        return ds4_fail(err, "config.json: RoPE width head_dim x partial_rotary_factor = %g "
                        "is not an even integer <= head_dim %" PRIu32, want, k->head_dim);
    if (jget(c, "qk_rope_head_dim") && rot != (uint32_t)want)
        return ds4_fail(err, "config.json: key 'qk_rope_head_dim': %" PRIu32 " contradicts "
                        "partial_rotary_factor (%g dims)", rot, want);
    k->n_rot = (uint32_t)want;
    return 0;
}

/* ---------------------------------------------------------------------- */
/* Small file helpers                                                      */
/* ---------------------------------------------------------------------- */

static char *path_join(const char *dir, const char *name) {
    size_t n = strlen(dir) + strlen(name) + 2;
    char *p = malloc(n);
    if (p) snprintf(p, n, "%s/%s", dir, name);
    return p;
}

/* Parse a JSON file whole.  *root is NULL (no error) when the file is
 * absent and optional. */
static int load_json(const char *dir, const char *name, bool optional, uint64_t max,
                     cJSON **root, ds4_error *err) {
    *root = NULL;
    char *path = path_join(dir, name);
    if (!path) return ds4_fail(err, "out of memory");
    FILE *fp = fopen(path, "rb");
    if (!fp) {
        int e = errno;
        int rc = (optional && e == ENOENT) ? 0 : ds4_fail(err, "%s: cannot open: %s", path,
                                                         strerror(e));
        free(path);
        return rc;
    }
    long len = -1;
    if (fseek(fp, 0, SEEK_END) == 0) len = ftell(fp);
    char *text = NULL;
    int rc = 0;
    if (len < 0 || (uint64_t)len > max || fseek(fp, 0, SEEK_SET) != 0)
        rc = ds4_fail(err, "%s: unreadable or larger than %" PRIu64 " bytes", path, max);
    else if (!(text = malloc((size_t)len + 1)) || fread(text, 1, (size_t)len, fp) != (size_t)len)
        rc = ds4_fail(err, "%s: read failed", path);
    fclose(fp);
    if (rc == 0) {
        text[len] = '\0';
        *root = cJSON_ParseWithLength(text, (size_t)len);
        if (!*root || !cJSON_IsObject(*root)) {
            cJSON_Delete(*root);
            *root = NULL;
            rc = ds4_fail(err, "%s: not a JSON object", path);
        }
    }
    free(text);
    free(path);
    return rc;
}

static int read_config(const char *dir, cv_config *k, ds4_error *err) {
    cJSON *c;
    memset(k, 0, sizeof(*k));
    if (load_json(dir, "config.json", false, MAX_CONFIG_BYTES, &c, err) != 0) return -1;
    int rc = 0;
    if (check_fixed_keys(c, err) || read_shape_keys(c, k, err) || read_tuning_keys(c, k, err) ||
        read_layer_kinds(c, k, err) || read_hash_layers(c, k, err) || read_rope(c, k, err))
        rc = -1;
    cJSON_Delete(c);
    return rc;
}

/* ---------------------------------------------------------------------- */
/* Tensor names: three namings -> the official names                       */
/* ---------------------------------------------------------------------- */

/* HF module suffix (after "layers.N.") -> official suffix.  The saved
 * naming differs from the official one only by the "model." prefix, the
 * globals and "attn.norm.weight" (the attention's KV norm). */
static const char *const k_layer_map[][2] = {
    {"self_attn.compressor.indexer.kv_proj.weight", "attn.indexer.compressor.wkv.weight"},
    {"self_attn.compressor.indexer.gate_proj.weight", "attn.indexer.compressor.wgate.weight"},
    {"self_attn.compressor.indexer.kv_norm.weight", "attn.indexer.compressor.norm.weight"},
    {"self_attn.compressor.indexer.position_bias", "attn.indexer.compressor.ape"},
    {"self_attn.compressor.indexer.q_b_proj.weight", "attn.indexer.wq_b.weight"},
    {"self_attn.compressor.indexer.scorer.weights_proj.weight", "attn.indexer.weights_proj.weight"},
    {"self_attn.compressor.indexer.weights_proj.weight", "attn.indexer.weights_proj.weight"},
    {"self_attn.compressor.kv_proj.weight", "attn.compressor.wkv.weight"},
    {"self_attn.compressor.gate_proj.weight", "attn.compressor.wgate.weight"},
    {"self_attn.compressor.kv_norm.weight", "attn.compressor.norm.weight"},
    {"self_attn.compressor.position_bias", "attn.compressor.ape"},
    {"self_attn.sinks", "attn.attn_sink"},
    {"self_attn.q_a_proj.weight", "attn.wq_a.weight"},
    {"self_attn.q_a_norm.weight", "attn.q_norm.weight"},
    {"self_attn.q_b_proj.weight", "attn.wq_b.weight"},
    {"self_attn.kv_proj.weight", "attn.wkv.weight"},
    {"self_attn.kv_norm.weight", "attn.kv_norm.weight"},
    {"self_attn.o_a_proj.weight", "attn.wo_a.weight"},
    {"self_attn.o_b_proj.weight", "attn.wo_b.weight"},
    {"attn.norm.weight", "attn.kv_norm.weight"},
    {"input_layernorm.weight", "attn_norm.weight"},
    {"post_attention_layernorm.weight", "ffn_norm.weight"},
    {"attn_hc.fn", "hc_attn_fn"},
    {"attn_hc.base", "hc_attn_base"},
    {"attn_hc.scale", "hc_attn_scale"},
    {"ffn_hc.fn", "hc_ffn_fn"},
    {"ffn_hc.base", "hc_ffn_base"},
    {"ffn_hc.scale", "hc_ffn_scale"},
    {"mlp.gate.weight", "ffn.gate.weight"},
    {"mlp.gate.e_score_correction_bias", "ffn.gate.bias"},
    {"mlp.gate.tid2eid", "ffn.gate.tid2eid"},
    {"mlp.shared_experts.gate_proj.weight", "ffn.shared_experts.w1.weight"},
    {"mlp.shared_experts.up_proj.weight", "ffn.shared_experts.w3.weight"},
    {"mlp.shared_experts.down_proj.weight", "ffn.shared_experts.w2.weight"},
    /* fused 3-D experts: internal names, sliced per expert by the plan */
    {"mlp.experts.gate_up_proj", "ffn.experts.gate_up"},
    {"mlp.experts.down_proj", "ffn.experts.down"},
};

static const char *const k_global_map[][2] = {
    {"embed_tokens.weight", "embed.weight"}, {"lm_head.weight", "head.weight"},
    {"hc_head.hc_fn", "hc_head_fn"},         {"hc_head.hc_base", "hc_head_base"},
    {"hc_head.hc_scale", "hc_head_scale"},
};

/* Official name of a source tensor (malloc'd), or NULL with *skip set for
 * the MTP layer (converted separately, if ever).  Unknown names come back
 * unchanged and are reported later as unused. */
static char *canonical_name(const char *src, bool *skip) {
    const char *n = strncmp(src, "model.", 6) == 0 ? src + 6 : src;
    *skip = strncmp(n, "mtp.", 4) == 0;
    if (*skip) return NULL;
    for (size_t i = 0; i < sizeof(k_global_map) / sizeof(k_global_map[0]); i++)
        if (strcmp(n, k_global_map[i][0]) == 0) return strdup(k_global_map[i][1]);
    const char *p = n;
    if (strncmp(p, "layers.", 7) == 0) {
        p += 7;
        while (*p >= '0' && *p <= '9') p++;
        if (p > n + 7 && *p == '.') {
            p++;
            for (size_t i = 0; i < sizeof(k_layer_map) / sizeof(k_layer_map[0]); i++) {
                if (strcmp(p, k_layer_map[i][0]) != 0) continue;
                size_t pre = (size_t)(p - n), len = pre + strlen(k_layer_map[i][1]) + 1;
                char *s = malloc(len);
                if (s) snprintf(s, len, "%.*s%s", (int)pre, n, k_layer_map[i][1]);
                return s;
            }
        }
    }
    return strdup(n);
}

/* Source tensors under their official names, sorted for lookup. */
typedef struct srcname {
    char *canon;
    const st_tensor *t;
} srcname;

typedef struct sources {
    st_set st;
    srcname *v;
    uint64_t n;
    bool *used;      /* per st tensor index */
    uint64_t n_skipped;
} sources;

static int cmp_src(const void *a, const void *b) {
    return strcmp(((const srcname *)a)->canon, ((const srcname *)b)->canon);
}

static void sources_free(sources *s) {
    for (uint64_t i = 0; i < s->n; i++) free(s->v[i].canon);
    free(s->v);
    free(s->used);
    st_close(&s->st);
    memset(s, 0, sizeof(*s));
}

static const st_tensor *src_find(const sources *s, const char *canon) {
    srcname key = {(char *)canon, NULL};
    const srcname *r = s->n ? bsearch(&key, s->v, s->n, sizeof(srcname), cmp_src) : NULL;
    return r ? r->t : NULL;
}

static void src_use(sources *s, const st_tensor *t) { s->used[t - s->st.tensors] = true; }

/* FP8/FP4 block-scaled checkpoints carry "<w>.scale" next to "<w>.weight". */
static int check_not_fp8(const sources *s, ds4_error *err) {
    for (uint64_t i = 0; i < s->st.n_tensors; i++) {
        const st_tensor *t = &s->st.tensors[i];
        size_t len = strlen(t->name);
        bool scale = len > 6 && strcmp(t->name + len - 6, ".scale") == 0;
        bool inv = len > 17 && strcmp(t->name + len - 17, ".weight_scale_inv") == 0;
        if (!scale && !inv) continue;
        char w[512];
        snprintf(w, sizeof(w), "%.*s.weight", (int)(len - (scale ? 6 : 17)), t->name);
        if (st_find(&s->st, w))
            return ds4_fail(err, "%s: tensor '%s': FP8/FP4 block-scaled checkpoints are not "
                            "supported yet (dequantize to BF16 first)", st_path(&s->st, t),
                            t->name);
    }
    return 0;
}

static int sources_open(sources *s, const char *dir, ds4_error *err) {
    memset(s, 0, sizeof(*s));
    if (st_open_dir(&s->st, dir, err) != 0) return -1;
    uint64_t n = s->st.n_tensors;
    s->v = calloc(n ? n : 1, sizeof(srcname));
    s->used = calloc(n ? n : 1, sizeof(bool));
    if (!s->v || !s->used) {
        sources_free(s);
        return ds4_fail(err, "out of memory");
    }
    if (check_not_fp8(s, err) != 0) {
        sources_free(s);
        return -1;
    }
    for (uint64_t i = 0; i < n; i++) {
        bool skip;
        char *c = canonical_name(s->st.tensors[i].name, &skip);
        if (skip) {
            s->used[i] = true;
            s->n_skipped++;
            continue;
        }
        if (!c) {
            sources_free(s);
            return ds4_fail(err, "out of memory");
        }
        s->v[s->n].canon = c;
        s->v[s->n++].t = &s->st.tensors[i];
    }
    if (s->n > 1) qsort(s->v, s->n, sizeof(srcname), cmp_src);
    for (uint64_t i = 1; i < s->n; i++)
        if (strcmp(s->v[i].canon, s->v[i - 1].canon) == 0) {
            int rc = ds4_fail(err, "tensors '%s' and '%s' are the same weight ('%s'): mixed "
                              "namings in one checkpoint", s->v[i - 1].t->name, s->v[i].t->name,
                              s->v[i].canon);
            sources_free(s);
            return rc;
        }
    return 0;
}

/* ---------------------------------------------------------------------- */
/* The plan: every GGUF tensor, its sources, dims and type                 */
/* ---------------------------------------------------------------------- */

enum { TC_F32, TC_PLAIN, TC_DENSE, TC_EXP_GU, TC_EXP_DOWN, TC_I32, TC_COUNT };

static const uint32_t k_types[OUT_KIND_COUNT][TC_COUNT] = {
    [OUT_F32] = {DS4_TYPE_F32, DS4_TYPE_F32, DS4_TYPE_F32, DS4_TYPE_F32, DS4_TYPE_F32,
                 DS4_TYPE_I32},
    [OUT_F16] = {DS4_TYPE_F32, DS4_TYPE_F16, DS4_TYPE_F16, DS4_TYPE_F16, DS4_TYPE_F16,
                 DS4_TYPE_I32},
    [OUT_Q8_0] = {DS4_TYPE_F32, DS4_TYPE_F16, DS4_TYPE_Q8_0, DS4_TYPE_Q8_0, DS4_TYPE_Q8_0,
                  DS4_TYPE_I32},
    [OUT_Q2] = {DS4_TYPE_F32, DS4_TYPE_F16, DS4_TYPE_Q8_0, DS4_TYPE_IQ2_XXS, DS4_TYPE_Q2_K,
                DS4_TYPE_I32},
    [OUT_Q4] = {DS4_TYPE_F32, DS4_TYPE_F16, DS4_TYPE_Q8_0, DS4_TYPE_Q4_K, DS4_TYPE_Q4_K,
                DS4_TYPE_I32},
};

/* A run of whole rows of one source tensor. */
typedef struct part {
    const st_tensor *t;
    uint64_t first, count; /* elements */
} part;

typedef struct item {
    char name[64];
    uint32_t n_dims;
    uint64_t ne[3];   /* GGUF dims, fastest first */
    uint32_t type;
    int cls;
    uint32_t n_parts;
    part *parts;      /* one, or one per expert */
} item;

typedef struct plan {
    item *v;
    uint32_t n, cap;
} plan;

static void plan_free(plan *p) {
    for (uint32_t i = 0; i < p->n; i++) free(p->v[i].parts);
    free(p->v);
    memset(p, 0, sizeof(*p));
}

static void shape_str(const uint64_t *s, uint32_t n, char *buf, size_t cap) {
    size_t used = 0;
    buf[0] = '\0';
    for (uint32_t i = 0; i < n && used < cap; i++) {
        int w = snprintf(buf + used, cap - used, "%s%" PRIu64, i ? ", " : "(", s[i]);
        if (w < 0) return;
        used += (size_t)w;
    }
    if (used < cap) snprintf(buf + used, cap - used, n ? ")" : "()");
}

/* The source must have exactly this PyTorch shape (slowest first). */
static int check_shape(const sources *s, const st_tensor *t, uint32_t n, const uint64_t *shape,
                       ds4_error *err) {
    bool ok = t->n_dims == n;
    for (uint32_t i = 0; ok && i < n; i++) ok = t->shape[i] == shape[i];
    if (ok) return 0;
    char got[128], want[128];
    shape_str(t->shape, t->n_dims, got, sizeof(got));
    shape_str(shape, n, want, sizeof(want));
    return ds4_fail(err, "%s: tensor '%s': shape %s, expected %s from config.json",
                    st_path(&s->st, t), t->name, got, want);
}

static int check_dtype(const sources *s, const st_tensor *t, int cls, ds4_error *err) {
    uint32_t d = t->dtype;
    bool flt = d == ST_F32 || d == ST_F16 || d == ST_BF16 || d == ST_F64;
    bool intg = d == ST_I64 || d == ST_I32 || d == ST_U8 || d == ST_I16 || d == ST_U16 ||
                d == ST_U32 || d == ST_I8;
    if (cls == TC_I32 ? intg : flt) return 0;
    bool fp8 = d == ST_F8_E4M3 || d == ST_F8_E5M2 || d == ST_F8_E8M0 || d == ST_F4 ||
               d == ST_I8 || d == ST_U8;
    return ds4_fail(err, "%s: tensor '%s': dtype %s %s", st_path(&s->st, t), t->name,
                    st_dtype_name(d),
                    cls == TC_I32 ? "is not an integer type"
                    : fp8 ? "(FP8/FP4 weights) is not supported yet (dequantize to BF16 first)"
                          : "cannot be converted (expected F32, F16 or BF16)");
}

static item *plan_add(plan *p, const char *name, int cls, int kind, uint32_t n_dims, uint64_t a,
                      uint64_t b, uint64_t c, uint32_t n_parts, ds4_error *err) {
    if (p->n == p->cap) {
        uint32_t nc = p->cap ? p->cap * 2 : 128;
        item *v = realloc(p->v, nc * sizeof(item));
        if (!v) {
            ds4_fail(err, "out of memory");
            return NULL;
        }
        p->v = v;
        p->cap = nc;
    }
    item *it = &p->v[p->n];
    memset(it, 0, sizeof(*it));
    snprintf(it->name, sizeof(it->name), "%s", name);
    it->cls = cls;
    it->type = k_types[kind][cls];
    it->n_dims = n_dims;
    it->ne[0] = a;
    it->ne[1] = b;
    it->ne[2] = c;
    it->parts = calloc(n_parts, sizeof(part));
    if (!it->parts) {
        ds4_fail(err, "out of memory");
        return NULL;
    }
    it->n_parts = n_parts;
    p->n++;
    if (ds4_row_bytes(it->type, a) == 0) {
        ds4_fail(err, "tensor '%s': rows of %" PRIu64 " values are not a multiple of the %s "
                 "block size %" PRIu32 "; pick another --type", name, a,
                 ds4_type_name(it->type), ds4_type_get(it->type)->block_size);
        return NULL;
    }
    return it;
}

typedef struct planner {
    plan *p;
    sources *s;
    const cv_config *k;
    int kind;
} planner;

/* A GGUF tensor made from one whole source tensor.  dims are GGUF order
 * (fastest first); the source shape is their reverse. */
static int one(planner *pl, const char *gname, const char *canon, int cls, uint32_t n_dims,
               uint64_t a, uint64_t b, ds4_error *err) {
    const st_tensor *t = src_find(pl->s, canon);
    if (!t)
        return ds4_fail(err, "missing tensor '%s' (official name; needed for '%s')", canon,
                        gname);
    uint64_t shape[2] = {n_dims == 2 ? b : a, a};
    if (check_shape(pl->s, t, n_dims, shape, err) || check_dtype(pl->s, t, cls, err)) return -1;
    item *it = plan_add(pl->p, gname, cls, pl->kind, n_dims, a, n_dims == 2 ? b : 1, 1, 1, err);
    if (!it) return -1;
    it->parts[0] = (part){t, 0, t->n_elements};
    src_use(pl->s, t);
    return 0;
}

static const char *lname(char *buf, size_t cap, uint32_t il, const char *suffix) {
    snprintf(buf, cap, "blk.%" PRIu32 ".%s", il, suffix);
    return buf;
}

static const char *sname(char *buf, size_t cap, uint32_t il, const char *suffix) {
    snprintf(buf, cap, "layers.%" PRIu32 ".%s", il, suffix);
    return buf;
}

static int plan_hc(planner *pl, uint32_t il, ds4_error *err) {
    const cv_config *k = pl->k;
    uint64_t in = (uint64_t)k->n_hc * k->n_embd, mix = (uint64_t)k->n_hc * (2 + k->n_hc);
    const char *which[2] = {"attn", "ffn"};
    char g[96], s[96], a[64], b[64];
    for (int i = 0; i < 2; i++) {
        snprintf(a, sizeof(a), "hc_%s_fn.weight", which[i]);
        snprintf(b, sizeof(b), "hc_%s_fn", which[i]);
        if (one(pl, lname(g, 96, il, a), sname(s, 96, il, b), TC_PLAIN, 2, in, mix, err))
            return -1;
        snprintf(a, sizeof(a), "hc_%s_scale.weight", which[i]);
        snprintf(b, sizeof(b), "hc_%s_scale", which[i]);
        if (one(pl, lname(g, 96, il, a), sname(s, 96, il, b), TC_F32, 1, 3, 1, err)) return -1;
        snprintf(a, sizeof(a), "hc_%s_base.weight", which[i]);
        snprintf(b, sizeof(b), "hc_%s_base", which[i]);
        if (one(pl, lname(g, 96, il, a), sname(s, 96, il, b), TC_F32, 1, mix, 1, err)) return -1;
    }
    return 0;
}

static int plan_attn(planner *pl, uint32_t il, ds4_error *err) {
    const cv_config *k = pl->k;
    uint64_t e = k->n_embd, q = k->q_lora, hd = k->head_dim;
    uint64_t qh = (uint64_t)k->n_head * hd, ow = (uint64_t)k->o_groups * k->o_lora;
    static const struct {
        const char *g, *s;
        int cls;
        int a, b; /* 0 e, 1 q, 2 hd, 3 qh, 4 qh/groups, 5 ow, 6 n_head, 7 none */
    } t[] = {
        {"attn_norm.weight", "attn_norm.weight", TC_F32, 0, 7},
        {"attn_q_a.weight", "attn.wq_a.weight", TC_DENSE, 0, 1},
        {"attn_q_a_norm.weight", "attn.q_norm.weight", TC_F32, 1, 7},
        {"attn_q_b.weight", "attn.wq_b.weight", TC_DENSE, 1, 3},
        {"attn_kv.weight", "attn.wkv.weight", TC_DENSE, 0, 2},
        {"attn_kv_a_norm.weight", "attn.kv_norm.weight", TC_F32, 2, 7},
        {"attn_sinks.weight", "attn.attn_sink", TC_F32, 6, 7},
        {"attn_output_a.weight", "attn.wo_a.weight", TC_DENSE, 4, 5},
        {"attn_output_b.weight", "attn.wo_b.weight", TC_DENSE, 5, 0},
    };
    const uint64_t dim[8] = {e, q, hd, qh, qh / k->o_groups, ow, k->n_head, 1};
    char g[96], s[96];
    for (size_t i = 0; i < sizeof(t) / sizeof(t[0]); i++)
        if (one(pl, lname(g, 96, il, t[i].g), sname(s, 96, il, t[i].s), t[i].cls,
                t[i].b == 7 ? 1 : 2, dim[t[i].a], dim[t[i].b], err))
            return -1;
    return 0;
}

/* One compressor: gpre "attn_compressor" / "indexer_compressor", spre
 * "attn.compressor." / "attn.indexer.compressor.". */
static int plan_compressor(planner *pl, uint32_t il, const char *gpre, const char *spre,
                           uint64_t dim, uint32_t ratio, ds4_error *err) {
    uint64_t w = (ratio == 4 ? 2 : 1) * dim, e = pl->k->n_embd;
    char g[96], s[96], a[64], b[64];
    snprintf(a, sizeof(a), "%s_ape.weight", gpre);
    snprintf(b, sizeof(b), "%sape", spre);
    if (one(pl, lname(g, 96, il, a), sname(s, 96, il, b), TC_PLAIN, 2, w, ratio, err)) return -1;
    snprintf(a, sizeof(a), "%s_kv.weight", gpre);
    snprintf(b, sizeof(b), "%swkv.weight", spre);
    if (one(pl, lname(g, 96, il, a), sname(s, 96, il, b), TC_PLAIN, 2, e, w, err)) return -1;
    snprintf(a, sizeof(a), "%s_gate.weight", gpre);
    snprintf(b, sizeof(b), "%swgate.weight", spre);
    if (one(pl, lname(g, 96, il, a), sname(s, 96, il, b), TC_PLAIN, 2, e, w, err)) return -1;
    snprintf(a, sizeof(a), "%s_norm.weight", gpre);
    snprintf(b, sizeof(b), "%snorm.weight", spre);
    return one(pl, lname(g, 96, il, a), sname(s, 96, il, b), TC_F32, 1, dim, 1, err);
}

static int plan_compress(planner *pl, uint32_t il, ds4_error *err) {
    const cv_config *k = pl->k;
    uint32_t r = k->ratio[il];
    if (r == 0) return 0;
    if (plan_compressor(pl, il, "attn_compressor", "attn.compressor.", k->head_dim, r, err))
        return -1;
    if (r != 4) return 0;
    char g[96], s[96];
    uint64_t iq = (uint64_t)k->n_idx_head * k->idx_head_dim;
    if (one(pl, lname(g, 96, il, "indexer.attn_q_b.weight"),
            sname(s, 96, il, "attn.indexer.wq_b.weight"), TC_PLAIN, 2, k->q_lora, iq, err) ||
        one(pl, lname(g, 96, il, "indexer.proj.weight"),
            sname(s, 96, il, "attn.indexer.weights_proj.weight"), TC_PLAIN, 2, k->n_embd,
            k->n_idx_head, err))
        return -1;
    return plan_compressor(pl, il, "indexer_compressor", "attn.indexer.compressor.",
                           k->idx_head_dim, 4, err);
}

/* The three routed-expert tensors of a layer, from per-expert w1/w3/w2 or
 * from the fused gate_up_proj [E, 2I, H] (gate rows first) / down_proj
 * [E, H, I]. */
static int plan_experts(planner *pl, uint32_t il, ds4_error *err) {
    const cv_config *k = pl->k;
    uint64_t E = k->n_expert, I = k->n_ff_exp, H = k->n_embd;
    char g[96], s[96], x[64];
    const st_tensor *gu = src_find(pl->s, sname(s, 96, il, "ffn.experts.gate_up"));
    const st_tensor *dn = src_find(pl->s, sname(s, 96, il, "ffn.experts.down"));
    const st_tensor *w0 = src_find(pl->s, sname(s, 96, il, "ffn.experts.0.w1.weight"));
    if ((gu || dn) && w0)
        return ds4_fail(err, "layer %" PRIu32 ": both fused experts ('%s') and per-expert "
                        "weights ('%s') present", il, gu ? gu->name : dn->name, w0->name);
    if (gu || dn) {
        if (!gu || !dn)
            return ds4_fail(err, "missing tensor 'model.layers.%" PRIu32 ".mlp.experts.%s'", il,
                            gu ? "down_proj" : "gate_up_proj");
        uint64_t sgu[3] = {E, 2 * I, H}, sdn[3] = {E, H, I};
        if (check_shape(pl->s, gu, 3, sgu, err) || check_shape(pl->s, dn, 3, sdn, err) ||
            check_dtype(pl->s, gu, TC_EXP_GU, err) || check_dtype(pl->s, dn, TC_EXP_DOWN, err))
            return -1;
        src_use(pl->s, gu);
        src_use(pl->s, dn);
    }
    static const char *const gn[3] = {"ffn_gate_exps.weight", "ffn_up_exps.weight",
                                      "ffn_down_exps.weight"};
    static const char *const wn[3] = {"w1", "w3", "w2"};
    for (int w = 0; w < 3; w++) {
        int cls = w == 2 ? TC_EXP_DOWN : TC_EXP_GU;
        uint64_t in = w == 2 ? I : H, out = w == 2 ? H : I;
        item *it = plan_add(pl->p, lname(g, 96, il, gn[w]), cls, pl->kind, 3, in, out, E,
                            (uint32_t)E, err);
        if (!it) return -1;
        for (uint64_t e = 0; e < E; e++) {
            if (gu) {
                const st_tensor *t = w == 2 ? dn : gu;
                uint64_t first = w == 2 ? e * H * I : e * 2 * I * H + (w == 1 ? I * H : 0);
                it->parts[e] = (part){t, first, I * H};
                continue;
            }
            snprintf(x, sizeof(x), "ffn.experts.%" PRIu64 ".%s.weight", e, wn[w]);
            const st_tensor *t = src_find(pl->s, sname(s, 96, il, x));
            uint64_t shape[2] = {out, in};
            if (!t)
                return ds4_fail(err, "missing tensor '%s' (official name; needed for '%s')", s,
                                it->name);
            if (check_shape(pl->s, t, 2, shape, err) || check_dtype(pl->s, t, cls, err))
                return -1;
            it->parts[e] = (part){t, 0, t->n_elements};
            src_use(pl->s, t);
        }
    }
    return 0;
}

static int plan_ffn(planner *pl, uint32_t il, ds4_error *err) {
    const cv_config *k = pl->k;
    uint64_t e = k->n_embd, ff = k->n_ff_exp;
    char g[96], s[96];
    if (one(pl, lname(g, 96, il, "ffn_norm.weight"), sname(s, 96, il, "ffn_norm.weight"), TC_F32,
            1, e, 1, err) ||
        one(pl, lname(g, 96, il, "ffn_gate_inp.weight"), sname(s, 96, il, "ffn.gate.weight"),
            TC_PLAIN, 2, e, k->n_expert, err))
        return -1;
    if (il < k->n_hash) {
        if (one(pl, lname(g, 96, il, "ffn_gate_tid2eid.weight"),
                sname(s, 96, il, "ffn.gate.tid2eid"), TC_I32, 2, k->n_expert_used, k->n_vocab,
                err))
            return -1;
        /* A router bias on a hash layer is never used (transformers has
         * no slot for it): accepted and dropped. */
        const st_tensor *bias = src_find(pl->s, sname(s, 96, il, "ffn.gate.bias"));
        if (bias) src_use(pl->s, bias);
    } else if (one(pl, lname(g, 96, il, "exp_probs_b.bias"), sname(s, 96, il, "ffn.gate.bias"),
                   TC_F32, 1, k->n_expert, 1, err)) {
        return -1;
    }
    if (one(pl, lname(g, 96, il, "ffn_gate_shexp.weight"),
            sname(s, 96, il, "ffn.shared_experts.w1.weight"), TC_DENSE, 2, e, ff, err) ||
        one(pl, lname(g, 96, il, "ffn_up_shexp.weight"),
            sname(s, 96, il, "ffn.shared_experts.w3.weight"), TC_DENSE, 2, e, ff, err) ||
        one(pl, lname(g, 96, il, "ffn_down_shexp.weight"),
            sname(s, 96, il, "ffn.shared_experts.w2.weight"), TC_DENSE, 2, ff, e, err))
        return -1;
    return plan_experts(pl, il, err);
}

static int plan_unused(const sources *s, ds4_error *err) {
    for (uint64_t i = 0; i < s->st.n_tensors; i++)
        if (!s->used[i])
            return ds4_fail(err, "%s: tensor '%s' is not part of the deepseek4 layout for this "
                            "config.json (unknown name, or a layer/expert the config does not "
                            "have)", st_path(&s->st, &s->st.tensors[i]), s->st.tensors[i].name);
    return 0;
}

static int build_plan(plan *p, sources *s, const cv_config *k, int kind, ds4_error *err) {
    planner pl = {p, s, k, kind};
    uint64_t e = k->n_embd, v = k->n_vocab, hc = k->n_hc;
    memset(p, 0, sizeof(*p));
    if (one(&pl, "token_embd.weight", "embed.weight", TC_PLAIN, 2, e, v, err)) return -1;
    for (uint32_t il = 0; il < k->n_layer; il++)
        if (plan_hc(&pl, il, err) || plan_attn(&pl, il, err) || plan_compress(&pl, il, err) ||
            plan_ffn(&pl, il, err))
            return -1;
    if (one(&pl, "output_norm.weight", "norm.weight", TC_F32, 1, e, 1, err) ||
        one(&pl, "output_hc_fn.weight", "hc_head_fn", TC_PLAIN, 2, hc * e, hc, err) ||
        one(&pl, "output_hc_base.weight", "hc_head_base", TC_F32, 1, hc, 1, err) ||
        one(&pl, "output_hc_scale.weight", "hc_head_scale", TC_F32, 1, 1, 1, err) ||
        one(&pl, "output.weight", "head.weight", TC_DENSE, 2, e, v, err))
        return -1;
    return plan_unused(s, err);
}

/* ---------------------------------------------------------------------- */
/* Conversion                                                              */
/* ---------------------------------------------------------------------- */

typedef struct qjob {
    uint32_t type;
    const float *src;
    uint8_t *dst;
    uint64_t ncols, rows, rb;
    int rc;
} qjob;

static void *qworker(void *arg) {
    qjob *j = arg;
    for (uint64_t r = 0; r < j->rows && j->rc == 0; r++)
        if (ds4_quantize_row(j->type, j->src + r * j->ncols, j->dst + r * j->rb, j->ncols, NULL))
            j->rc = -1;
    return NULL;
}

/* Quantize rows x ncols values, split over up to `threads` threads. */
static int quantize_rows(uint32_t type, const float *src, uint8_t *dst, uint64_t rows,
                         uint64_t ncols, int threads, ds4_error *err) {
    uint64_t rb = ds4_row_bytes(type, ncols);
    int nt = threads;
    if (rows == 0) return 0;
    if ((uint64_t)nt > rows) nt = (int)rows;
    if (rows * ncols < (1u << 15)) nt = 1;
    qjob jobs[MAX_THREADS];
    pthread_t tid[MAX_THREADS];
    uint64_t r0 = 0;
    int started = 0;
    for (int i = 0; i < nt; i++) {
        uint64_t r1 = rows * (uint64_t)(i + 1) / (uint64_t)nt;
        jobs[i] = (qjob){type, src + r0 * ncols, dst + r0 * rb, ncols, r1 - r0, rb, 0};
        r0 = r1;
    }
    for (int i = 1; i < nt; i++) {
        if (pthread_create(&tid[i], NULL, qworker, &jobs[i]) != 0) break;
        started = i;
    }
    for (int i = started + 1; i < nt; i++) qworker(&jobs[i]); /* threads that did not start */
    qworker(&jobs[0]);
    int rc = 0;
    for (int i = 1; i <= started; i++) pthread_join(tid[i], NULL);
    for (int i = 0; i < nt; i++) rc |= jobs[i].rc;
    return rc ? ds4_fail(err, "cannot quantize to %s", ds4_type_name(type)) : 0;
}

/* tid2eid: integers [V, k] -> I32 with every id < n_expert. */
static int convert_ids(const sources *s, const item *it, uint32_t n_expert, uint8_t *out,
                       ds4_error *err) {
    const part *pt = &it->parts[0];
    int64_t *v = malloc(pt->count * sizeof(int64_t));
    if (!v) return ds4_fail(err, "out of memory");
    int rc = st_read_i64(&s->st, pt->t, 0, pt->count, v, err);
    for (uint64_t i = 0; rc == 0 && i < pt->count; i++) {
        if (v[i] < 0 || v[i] >= (int64_t)n_expert) {
            rc = ds4_fail(err, "%s: tensor '%s': token %" PRIu64 " slot %" PRIu64 " routes to "
                          "expert %" PRId64 " (expected 0..%" PRIu32 ")", st_path(&s->st, pt->t),
                          pt->t->name, i / it->ne[0], i % it->ne[0], v[i], n_expert - 1);
            break;
        }
        int32_t x = (int32_t)v[i];
        memcpy(out + i * 4, &x, 4);
    }
    free(v);
    return rc;
}

static int convert_item(const sources *s, const item *it, const cv_config *k, int threads,
                        gguf_writer *w, ds4_error *err) {
    uint64_t ncols = it->ne[0], rows = it->ne[1] * it->ne[2];
    uint64_t rb = ds4_row_bytes(it->type, ncols);
    uint64_t nbytes = rb * rows;
    uint8_t *out = malloc(nbytes ? nbytes : 1);
    uint64_t chunk_rows = CHUNK_VALUES / ncols ? CHUNK_VALUES / ncols : 1;
    float *buf = NULL;
    int rc = 0;
    if (!out) return ds4_fail(err, "tensor '%s': out of memory (%" PRIu64 " bytes)", it->name,
                              nbytes);
    if (it->cls == TC_I32) {
        rc = convert_ids(s, it, k->n_expert, out, err);
    } else if (!(buf = malloc(chunk_rows * ncols * sizeof(float)))) {
        rc = ds4_fail(err, "out of memory");
    }
    uint8_t *dst = out;
    for (uint32_t p = 0; it->cls != TC_I32 && rc == 0 && p < it->n_parts; p++) {
        const part *pt = &it->parts[p];
        uint64_t prow = pt->count / ncols;
        for (uint64_t r = 0; r < prow && rc == 0; r += chunk_rows) {
            uint64_t n = prow - r < chunk_rows ? prow - r : chunk_rows;
            rc = st_read_f32(&s->st, pt->t, pt->first + r * ncols, n * ncols, buf, err);
            if (rc == 0) rc = quantize_rows(it->type, buf, dst, n, ncols, threads, err);
            dst += n * rb;
        }
    }
    uint64_t ne[GGUF_MAX_DIMS] = {it->ne[0], it->ne[1], it->ne[2], 1};
    if (rc == 0) rc = gguf_w_tensor(w, it->name, it->n_dims, ne, it->type, out, err);
    if (rc != 0) ds4_fail_wrap(err, "converting '%s'", it->name);
    free(buf);
    free(out);
    return rc;
}

/* ---------------------------------------------------------------------- */
/* Metadata and tokenizer                                                  */
/* ---------------------------------------------------------------------- */

static void put_hparams(gguf_writer *w, const cv_config *k, const char *name) {
    gguf_w_str(w, "general.architecture", "deepseek4");
    gguf_w_str(w, "general.name", name);
    gguf_w_u32(w, KP "block_count", k->n_layer);
    gguf_w_u64(w, KP "context_length", k->n_ctx);
    gguf_w_u32(w, KP "embedding_length", k->n_embd);
    gguf_w_u32(w, KP "vocab_size", k->n_vocab);
    gguf_w_u32(w, KP "attention.head_count", k->n_head);
    gguf_w_u32(w, KP "attention.head_count_kv", 1);
    gguf_w_u32(w, KP "attention.key_length", k->head_dim);
    gguf_w_u32(w, KP "attention.value_length", k->head_dim);
    gguf_w_u32(w, KP "rope.dimension_count", k->n_rot);
    gguf_w_u32(w, KP "attention.q_lora_rank", k->q_lora);
    gguf_w_u32(w, KP "attention.output_lora_rank", k->o_lora);
    gguf_w_u32(w, KP "attention.output_group_count", k->o_groups);
    gguf_w_u32(w, KP "expert_count", k->n_expert);
    gguf_w_u32(w, KP "expert_used_count", k->n_expert_used);
    gguf_w_u32(w, KP "expert_feed_forward_length", k->n_ff_exp);
    gguf_w_u32(w, KP "expert_shared_count", 1);
    gguf_w_u32(w, KP "hash_layer_count", k->n_hash);
    gguf_w_u32(w, KP "expert_group_count", 0);
    gguf_w_u32(w, KP "expert_group_used_count", 0);
    gguf_w_u32(w, KP "attention.sliding_window", k->n_swa);
    gguf_w_u32(w, KP "attention.indexer.head_count", k->n_idx_head);
    gguf_w_u32(w, KP "attention.indexer.key_length", k->idx_head_dim);
    gguf_w_u32(w, KP "attention.indexer.top_k", k->idx_top_k);
    gguf_w_u32(w, KP "hyper_connection.count", k->n_hc);
    gguf_w_u32(w, KP "hyper_connection.sinkhorn_iterations", k->n_sinkhorn);
    gguf_w_f32(w, KP "hyper_connection.epsilon", (float)k->hc_eps);
    int32_t ratios[DS4_MAX_LAYERS];
    float clamp[DS4_MAX_LAYERS];
    for (uint32_t il = 0; il < k->n_layer; il++) {
        ratios[il] = (int32_t)k->ratio[il];
        clamp[il] = (float)k->swiglu;
    }
    gguf_w_arr(w, KP "attention.compress_ratios", GGUF_VT_INT32, ratios, k->n_layer);
    gguf_w_arr(w, KP "swiglu_clamp_exp", GGUF_VT_FLOAT32, clamp, k->n_layer);
    if (k->orig_ctx <= UINT32_MAX)
        gguf_w_u32(w, KP "rope.scaling.original_context_length", (uint32_t)k->orig_ctx);
    else
        gguf_w_u64(w, KP "rope.scaling.original_context_length", k->orig_ctx);
    gguf_w_f32(w, KP "rope.freq_base", (float)k->rope_base);
    gguf_w_f32(w, KP "rope.scaling.factor", (float)k->rope_factor);
    gguf_w_f32(w, KP "rope.scaling.yarn_beta_fast", (float)k->beta_fast);
    gguf_w_f32(w, KP "rope.scaling.yarn_beta_slow", (float)k->beta_slow);
    gguf_w_f32(w, KP "attention.compress_rope_freq_base", (float)k->compress_base);
    gguf_w_f32(w, KP "expert_weights_scale", (float)k->weights_scale);
    gguf_w_f32(w, KP "attention.layer_norm_rms_epsilon", (float)k->rms_eps);
    gguf_w_bool(w, KP "expert_weights_norm", true);
    gguf_w_u32(w, KP "nextn_predict_layers", k->n_nextn);
}

enum { TT_NORMAL = 1, TT_CONTROL = 3, TT_USER = 4, TT_UNUSED = 5 };

typedef struct vocab {
    char **tok;
    int32_t *type;
    uint32_t n;
    char **merges;
    uint64_t n_merges;
} vocab;

static void vocab_free(vocab *v) {
    for (uint32_t i = 0; v->tok && i < v->n; i++) free(v->tok[i]);
    for (uint64_t i = 0; v->merges && i < v->n_merges; i++) free(v->merges[i]);
    free(v->tok);
    free(v->type);
    free(v->merges);
    memset(v, 0, sizeof(*v));
}

static int vocab_set(vocab *v, const cJSON *idj, const char *text, int32_t type,
                     ds4_error *err) {
    double id = cJSON_IsNumber(idj) ? idj->valuedouble : -1.0;
    if (!(id >= 0.0) || id != floor(id) || id >= v->n)
        return ds4_fail(err, "tokenizer.json: token '%s' has id %g outside the vocab_size %"
                        PRIu32 " of config.json", text, id, v->n);
    uint32_t i = (uint32_t)id;
    if (v->tok[i] && strcmp(v->tok[i], text) != 0)
        return ds4_fail(err, "tokenizer.json: id %" PRIu32 " is both '%s' and '%s'", i,
                        v->tok[i], text);
    if (!v->tok[i] && !(v->tok[i] = strdup(text))) return ds4_fail(err, "out of memory");
    v->type[i] = type;
    return 0;
}

/* merges: "a b" strings or ["a", "b"] pairs (newer tokenizers). */
static int read_merges(vocab *v, const cJSON *m, ds4_error *err) {
    if (!m) return 0;
    if (!cJSON_IsArray(m)) return ds4_fail(err, "tokenizer.json: model.merges is not an array");
    int n = cJSON_GetArraySize(m);
    v->merges = calloc(n ? (size_t)n : 1, sizeof(char *));
    if (!v->merges) return ds4_fail(err, "out of memory");
    for (const cJSON *e = m->child; e; e = e->next) {
        char *s = NULL;
        if (cJSON_IsString(e)) {
            s = strdup(e->valuestring);
        } else if (cJSON_IsArray(e) && cJSON_GetArraySize(e) == 2 &&
                   cJSON_IsString(e->child) && cJSON_IsString(e->child->next)) {
            size_t len = strlen(e->child->valuestring) + strlen(e->child->next->valuestring) + 2;
            if ((s = malloc(len)))
                snprintf(s, len, "%s %s", e->child->valuestring, e->child->next->valuestring);
        } else {
            return ds4_fail(err, "tokenizer.json: merge %" PRIu64 " is not \"a b\" or [a, b]",
                            v->n_merges);
        }
        if (!s) return ds4_fail(err, "out of memory");
        v->merges[v->n_merges++] = s;
    }
    return 0;
}

static int read_vocab(const cJSON *tj, vocab *v, ds4_error *err) {
    const cJSON *model = jget(tj, "model");
    const cJSON *type = jget(model, "type"), *voc = jget(model, "vocab");
    if (!cJSON_IsObject(model) || !cJSON_IsString(type) || strcmp(type->valuestring, "BPE") != 0)
        return ds4_fail(err, "tokenizer.json: model.type is not \"BPE\" (deepseek4 uses a "
                        "GPT-2 style byte-level BPE)");
    if (!cJSON_IsObject(voc)) return ds4_fail(err, "tokenizer.json: model.vocab is not an object");
    for (const cJSON *e = voc->child; e; e = e->next)
        if (vocab_set(v, e, e->string, TT_NORMAL, err) != 0) return -1;
    const cJSON *added = jget(tj, "added_tokens");
    if (added && !cJSON_IsArray(added))
        return ds4_fail(err, "tokenizer.json: added_tokens is not an array");
    for (const cJSON *e = added ? added->child : NULL; e; e = e->next) {
        const cJSON *c = jget(e, "content"), *sp = jget(e, "special");
        if (!cJSON_IsString(c))
            return ds4_fail(err, "tokenizer.json: an added token has no string content");
        if (vocab_set(v, jget(e, "id"), c->valuestring, cJSON_IsTrue(sp) ? TT_CONTROL : TT_USER,
                      err) != 0)
            return -1;
    }
    return read_merges(v, jget(model, "merges"), err);
}

/* Tokenizer keys when HF_DIR has a tokenizer.json; nothing otherwise.
 * Ids the tokenizer does not define (vocab padding) become "[PADn]". */
static int put_tokenizer(gguf_writer *w, const char *dir, const cv_config *k, bool *has,
                         ds4_error *err) {
    cJSON *tj;
    *has = false;
    if (load_json(dir, "tokenizer.json", true, MAX_TOKENIZER_BYTES, &tj, err) != 0) return -1;
    if (!tj) return 0;
    vocab v = {0};
    v.n = k->n_vocab;
    v.tok = calloc(v.n, sizeof(char *));
    v.type = calloc(v.n, sizeof(int32_t));
    int rc = (!v.tok || !v.type) ? ds4_fail(err, "out of memory") : read_vocab(tj, &v, err);
    for (uint32_t i = 0; rc == 0 && i < v.n; i++) {
        if (v.tok[i]) continue;
        char pad[32];
        snprintf(pad, sizeof(pad), "[PAD%" PRIu32 "]", i);
        if (!(v.tok[i] = strdup(pad))) rc = ds4_fail(err, "out of memory");
        v.type[i] = TT_UNUSED;
    }
    if (rc == 0) {
        gguf_w_str(w, "tokenizer.ggml.model", "gpt2");
        gguf_w_str(w, "tokenizer.ggml.pre", "joyai-llm");
        gguf_w_arr_str(w, "tokenizer.ggml.tokens", (const char *const *)v.tok, v.n);
        gguf_w_arr(w, "tokenizer.ggml.token_type", GGUF_VT_INT32, v.type, v.n);
        /* (any non-NULL pointer for an empty list) */
        gguf_w_arr_str(w, "tokenizer.ggml.merges",
                       (const char *const *)(v.merges ? v.merges : v.tok), v.n_merges);
        gguf_w_u32(w, "tokenizer.ggml.bos_token_id", k->bos);
        gguf_w_u32(w, "tokenizer.ggml.eos_token_id", k->eos);
        *has = true;
    }
    vocab_free(&v);
    cJSON_Delete(tj);
    return rc;
}

/* ---------------------------------------------------------------------- */
/* Driver                                                                  */
/* ---------------------------------------------------------------------- */

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* Bind the saved file as ds4cl will; a failure is a converter bug. */
static int check_binds(const char *path, ds4_error *err) {
    gguf_file f;
    ds4_model m;
    if (gguf_open(&f, path, err) != 0) return -1;
    int rc = ds4_model_bind(&m, &f, err);
    gguf_close(&f);
    return rc ? ds4_fail_wrap(err, "the converted file does not bind (converter bug)") : 0;
}

static void print_summary(const plan *p, const cv_config *k, bool tok, double secs, FILE *fp) {
    uint64_t count[DS4_TYPE_COUNT] = {0}, bytes[DS4_TYPE_COUNT] = {0}, total = 0;
    for (uint32_t i = 0; i < p->n; i++) {
        const item *it = &p->v[i];
        uint64_t b = ds4_row_bytes(it->type, it->ne[0]) * it->ne[1] * it->ne[2];
        count[it->type]++;
        bytes[it->type] += b;
        total += b;
    }
    uint32_t n4 = 0, n128 = 0;
    for (uint32_t il = 0; il < k->n_layer; il++) {
        n4 += k->ratio[il] == 4;
        n128 += k->ratio[il] == 128;
    }
    fprintf(fp, "layers: %" PRIu32 " (%" PRIu32 " ratio-4, %" PRIu32 " ratio-128, %" PRIu32
            " hash-routed), experts %" PRIu32 " (top %" PRIu32 "), tokenizer: %s\n", k->n_layer,
            n4, n128, k->n_hash, k->n_expert, k->n_expert_used, tok ? "yes" : "none");
    fprintf(fp, "tensors: %" PRIu32 "\n", p->n);
    for (uint32_t t = 0; t < DS4_TYPE_COUNT; t++)
        if (count[t])
            fprintf(fp, "  %-8s %6" PRIu64 " tensors %16" PRIu64 " bytes\n", ds4_type_name(t),
                    count[t], bytes[t]);
    fprintf(fp, "total: %" PRIu64 " bytes of tensor data (%.2f MiB) in %.2f s\n", total,
            (double)total / (1024.0 * 1024.0), secs);
}

static int convert_all(const cv_opts *o, const cv_config *k, sources *s, const plan *p,
                       const char *tmp, bool *tok, ds4_error *err) {
    gguf_writer *w = gguf_writer_new(0);
    if (!w) return ds4_fail(err, "out of memory");
    put_hparams(w, k, o->name);
    int rc = put_tokenizer(w, o->dir, k, tok, err);
    double t0 = now_s();
    int32_t last_layer = -1;
    for (uint32_t i = 0; rc == 0 && i < p->n; i++) {
        const item *it = &p->v[i];
        int32_t il = strncmp(it->name, "blk.", 4) == 0 ? atoi(it->name + 4) : -1;
        if (!o->quiet && il != last_layer && il >= 0) {
            fprintf(stderr, "  layer %" PRId32 "/%" PRIu32 " (%.1f s)\n", il, k->n_layer,
                    now_s() - t0);
            last_layer = il;
        }
        rc = convert_item(s, it, k, o->threads, w, err);
    }
    if (rc == 0) rc = gguf_writer_save(w, tmp, err);
    gguf_writer_free(w);
    return rc;
}

static int run(const cv_opts *o, ds4_error *err) {
    double t0 = now_s();
    cv_config k;
    sources s;
    plan p = {0};
    if (read_config(o->dir, &k, err) != 0) return -1;
    if (sources_open(&s, o->dir, err) != 0) return -1;
    int rc = build_plan(&p, &s, &k, o->kind, err);

    size_t len = strlen(o->out) + 5;
    char *tmp = malloc(len);
    if (rc == 0 && !tmp) rc = ds4_fail(err, "out of memory");
    if (rc == 0) {
        snprintf(tmp, len, "%s.tmp", o->out);
        FILE *probe = fopen(tmp, "wb"); /* fail now, not after the slow part */
        if (!probe) rc = ds4_fail(err, "%s: cannot create: %s", tmp, strerror(errno));
        else fclose(probe);
    }
    bool tok = false;
    if (rc == 0) rc = convert_all(o, &k, &s, &p, tmp, &tok, err);
    if (rc == 0) rc = check_binds(tmp, err);
    if (rc == 0 && rename(tmp, o->out) != 0)
        rc = ds4_fail(err, "%s: cannot rename to %s: %s", tmp, o->out, strerror(errno));
    if (rc != 0 && tmp) unlink(tmp);
    if (rc == 0 && !o->quiet) {
        printf("%s: %s -> %s (--type %s)\n", "ds4cl-convert", o->dir, o->out,
               k_kind_names[o->kind]);
        print_summary(&p, &k, tok, now_s() - t0, stdout);
    }
    free(tmp);
    plan_free(&p);
    sources_free(&s);
    return rc;
}

static void usage(FILE *fp) {
    fprintf(fp,
            "usage: ds4cl-convert HF_DIR OUT.gguf [--type f32|f16|q8_0|q2|q4] [--name NAME]\n"
            "                     [--threads N] [-q]\n"
            "  Converts a Hugging Face DeepSeek V4 folder (config.json, *.safetensors,\n"
            "  optional tokenizer.json) to a deepseek4 GGUF that ds4cl loads.\n"
            "  --type     f32/f16: every matrix in that type; q8_0: Q8_0 matrices and\n"
            "             experts; q2: IQ2_XXS gate/up + Q2_K down experts; q4: Q4_K\n"
            "             experts (q8_0/q2/q4: F16 HC/router/compressor/indexer/embedding,\n"
            "             F32 norms).  Default q8_0.\n"
            "  --name     general.name (default: the folder's name)\n"
            "  --threads  quantization threads (default: online CPUs)\n"
            "  -q         no progress or summary\n");
}

/* 0 run, 1 help printed, 2 usage error. */
static int parse_args(int argc, char **argv, cv_opts *o) {
    memset(o, 0, sizeof(*o));
    o->kind = OUT_Q8_0;
    long ncpu = sysconf(_SC_NPROCESSORS_ONLN);
    o->threads = ncpu < 1 ? 1 : ncpu > MAX_THREADS ? MAX_THREADS : (int)ncpu;
    int npos = 0;
    const char *pos[2] = {NULL, NULL};
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        bool has_val = i + 1 < argc;
        if (strcmp(a, "-h") == 0 || strcmp(a, "--help") == 0) {
            usage(stdout);
            return 1;
        } else if (strcmp(a, "-q") == 0) {
            o->quiet = true;
        } else if (strcmp(a, "--type") == 0 && has_val) {
            const char *v = argv[++i];
            o->kind = -1;
            for (int k = 0; k < OUT_KIND_COUNT; k++)
                if (strcmp(v, k_kind_names[k]) == 0) o->kind = k;
            if (o->kind < 0) {
                fprintf(stderr, "ds4cl-convert: unknown --type '%s'\n", v);
                return 2;
            }
        } else if (strcmp(a, "--name") == 0 && has_val) {
            o->name = argv[++i];
        } else if (strcmp(a, "--threads") == 0 && has_val) {
            char *end;
            long t = strtol(argv[++i], &end, 10);
            if (*end || t < 1 || t > MAX_THREADS) {
                fprintf(stderr, "ds4cl-convert: --threads wants 1..%d\n", MAX_THREADS);
                return 2;
            }
            o->threads = (int)t;
        } else if (a[0] == '-' && a[1]) {
            fprintf(stderr, "ds4cl-convert: unknown or incomplete option '%s'\n", a);
            usage(stderr);
            return 2;
        } else if (npos < 2) {
            pos[npos++] = a;
        } else {
            usage(stderr);
            return 2;
        }
    }
    if (npos != 2) {
        usage(stderr);
        return 2;
    }
    o->dir = pos[0];
    o->out = pos[1];
    if (!o->name) {
        /* the folder's last path component, trailing slashes ignored */
        size_t n = strlen(o->dir);
        while (n > 1 && o->dir[n - 1] == '/') n--;
        size_t b = n;
        while (b > 0 && o->dir[b - 1] != '/') b--;
        snprintf(o->name_buf, sizeof(o->name_buf), "%.*s", (int)(n - b), o->dir + b);
        o->name = o->name_buf;
    }
    return 0;
}

int main(int argc, char **argv) {
    cv_opts o;
    int p = parse_args(argc, argv, &o);
    if (p == 1) return 0;
    if (p == 2) return 2;
    ds4_error err = {{0}};
    if (run(&o, &err) != 0) {
        fflush(stdout);
        fprintf(stderr, "ds4cl-convert: %s\n", err.msg);
        return 1;
    }
    return 0;
}
