/* convert.c - the `ds4cl-convert` program: a Hugging Face DeepSeek V4 folder
 * (config.json + safetensors, optional tokenizer.json) to a deepseek4 GGUF.
 *
 *   ds4cl-convert HF_DIR OUT.gguf [--type f32|f16|q8_0|q2|q4] [--name NAME]
 *                 [--threads N] [--imatrix FILE] [-q]
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
 *      Block scales ("<w>.scale", or transformers' "<w>.weight_scale_inv")
 *      are paired with their "<w>.weight" and leave the name list.
 *   3. A plan lists every GGUF tensor of the deepseek4 layout (model.md
 *      §3.4) with its source parts, dims and output type; every source is
 *      checked (present, shape, dtype, scales, row length fits the block
 *      size) and every source tensor must be used, BEFORE any slow work.
 *   4. Source encodings: F32/F16/BF16/F64 are read as they are; the official
 *      FP8 checkpoint's F8_E4M3 weights with E8M0 scales per 128x128 block
 *      (quantization_config.weight_block_size) and FP4 E2M1 routed experts
 *      (two codes per I8 byte, low nibble first, an E8M0 scale per 1x32) are
 *      dequantized exactly to f32 (code x 2^k is exact), then quantized to
 *      the recipe's type like any f32 source: converting the FP8 checkpoint
 *      and converting its exact f32 dequantization give the same bytes.
 *   5. Streaming: the head (keys + tensor directory) is fixed first, then
 *      each tensor is converted in chunks of whole rows (CHUNK_VALUES f32
 *      of scratch) and appended to OUT.tmp; the source pages of a chunk are
 *      released once it is written.  Memory is bounded by the scratch, the
 *      tokenizer and the directories, independent of the checkpoint's size.
 *      Rows are read, dequantized and quantized by worker threads (each a
 *      contiguous run of rows: the bytes do not depend on the thread count).
 *   6. Resume: OUT.tmp.journal holds a key (hash of the head, the source
 *      files' names, sizes and mtimes, and this binary) and one line per
 *      complete tensor (index, end offset, XXH64 of its bytes).  A run with
 *      the same key re-hashes each recorded tensor in OUT.tmp (and checks
 *      its padding) and continues after the last one that matches; anything
 *      else starts over.  A run killed at any point resumes this way.
 *   7. OUT.tmp is closed, bound with ds4_model_bind and only then renamed to
 *      OUT; the journal is removed.  A failure before streaming leaves no
 *      file; one while streaming removes OUT.tmp unless it was a write error
 *      (disk full...), which keeps it for a resumed run.
 *
 * Output is a pure function of the tensor values, the config values and the
 * options: the three namings of one model give byte-identical files, and so
 * does any thread count or any number of interruptions.
 * DS4CL_CONVERT_STOP_AFTER=N (a test hook) exits abruptly in the middle of
 * tensor N, as a kill would.
 */
#include <cjson/cJSON.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <math.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#include <xxhash.h>

#include "error.h"
#include "gguf.h"
#include "gguf_write.h"
#include "imatrix.h"
#include "model.h"
#include "quant.h"
#include "safetensors.h"

#define KP "deepseek4."
#define MAX_THREADS 64
#define CHUNK_VALUES (UINT64_C(1) << 20) /* f32 scratch per conversion step */
#define VERIFY_BYTES (1u << 22)            /* read buffer when checking a resumed file */
#define JOURNAL_MAGIC "ds4cl-convert journal 1"
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
    const char *imatrix;   /* --imatrix FILE (imatrix.h), or NULL */
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
    uint64_t fp8_block[2]; /* rows x cols of one FP8 scale block */
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

/* FP8 block size: quantization_config.weight_block_size, default 128x128
 * (DeepSeek V4).  The other quantization_config keys describe the same
 * encoding and are not needed: each weight's dtype says what it is. */
static int read_quant(const cJSON *c, cv_config *k, ds4_error *err) {
    k->fp8_block[0] = k->fp8_block[1] = 128;
    const cJSON *q = jget(c, "quantization_config");
    if (!q) return 0;
    if (!cJSON_IsObject(q))
        return ds4_fail(err, "config.json: key 'quantization_config': expected an object");
    const cJSON *b = jget(q, "weight_block_size");
    if (!b) return 0;
    char buf[64];
    if (!cJSON_IsArray(b) || cJSON_GetArraySize(b) != 2)
        return ds4_fail(err, "config.json: key 'quantization_config.weight_block_size': %s, "
                        "expected two positive integers", jrepr(b, buf, sizeof(buf)));
    int i = 0;
    for (const cJSON *e = b->child; e; e = e->next, i++) {
        double v = cJSON_IsNumber(e) ? e->valuedouble : NAN;
        if (!(v >= 1.0 && v <= 65536.0 && v == floor(v)))
            return ds4_fail(err, "config.json: key 'quantization_config.weight_block_size': "
                            "%s, expected two integers in [1, 65536]", jrepr(b, buf, sizeof(buf)));
        k->fp8_block[i] = (uint64_t)v;
    }
    return 0;
}

static int read_config(const char *dir, cv_config *k, ds4_error *err) {
    cJSON *c;
    memset(k, 0, sizeof(*k));
    if (load_json(dir, "config.json", false, MAX_CONFIG_BYTES, &c, err) != 0) return -1;
    int rc = 0;
    if (check_fixed_keys(c, err) || read_shape_keys(c, k, err) || read_tuning_keys(c, k, err) ||
        read_layer_kinds(c, k, err) || read_hash_layers(c, k, err) || read_rope(c, k, err) ||
        read_quant(c, k, err))
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
    bool *used;                /* per st tensor index */
    const st_tensor **scale;   /* per st tensor index: its block scales, or NULL */
    uint64_t n_skipped;
} sources;

static int cmp_src(const void *a, const void *b) {
    return strcmp(((const srcname *)a)->canon, ((const srcname *)b)->canon);
}

static void sources_free(sources *s) {
    for (uint64_t i = 0; i < s->n; i++) free(s->v[i].canon);
    free(s->v);
    free(s->used);
    free(s->scale);
    st_close(&s->st);
    memset(s, 0, sizeof(*s));
}

static const st_tensor *src_find(const sources *s, const char *canon) {
    srcname key = {(char *)canon, NULL};
    const srcname *r = s->n ? bsearch(&key, s->v, s->n, sizeof(srcname), cmp_src) : NULL;
    return r ? r->t : NULL;
}

static void src_use(sources *s, const st_tensor *t) { s->used[t - s->st.tensors] = true; }

static const st_tensor *src_scale(const sources *s, const st_tensor *t) {
    return s->scale[t - s->st.tensors];
}

/* FP8/FP4 checkpoints carry "<w>.scale" (official) or "<w>.weight_scale_inv"
 * (transformers' name) next to "<w>.weight": each becomes the scale of its
 * weight (s->scale) and is flagged in is_scale, to leave the name list. */
static int pair_scales(sources *s, bool *is_scale, ds4_error *err) {
    for (uint64_t i = 0; i < s->st.n_tensors; i++) {
        const st_tensor *t = &s->st.tensors[i];
        size_t len = strlen(t->name), cut = 0;
        if (len > 6 && strcmp(t->name + len - 6, ".scale") == 0) cut = 6;
        else if (len > 17 && strcmp(t->name + len - 17, ".weight_scale_inv") == 0) cut = 17;
        if (!cut) continue;
        char *w = malloc(len - cut + sizeof(".weight"));
        if (!w) return ds4_fail(err, "out of memory");
        snprintf(w, len - cut + sizeof(".weight"), "%.*s.weight", (int)(len - cut), t->name);
        const st_tensor *wt = st_find(&s->st, w);
        free(w);
        if (!wt) continue; /* not a scale: e.g. "attn_hc.scale" */
        uint64_t wi = (uint64_t)(wt - s->st.tensors);
        if (s->scale[wi])
            return ds4_fail(err, "%s: tensor '%s' has two scale tensors, '%s' and '%s'",
                            st_path(&s->st, wt), wt->name, s->scale[wi]->name, t->name);
        s->scale[wi] = t;
        is_scale[i] = true;
    }
    return 0;
}

static int sources_open(sources *s, const char *dir, ds4_error *err) {
    memset(s, 0, sizeof(*s));
    if (st_open_dir(&s->st, dir, err) != 0) return -1;
    uint64_t n = s->st.n_tensors;
    s->v = calloc(n ? n : 1, sizeof(srcname));
    s->used = calloc(n ? n : 1, sizeof(bool));
    s->scale = calloc(n ? n : 1, sizeof(*s->scale));
    bool *is_scale = calloc(n ? n : 1, sizeof(bool));
    if (!s->v || !s->used || !s->scale || !is_scale) {
        free(is_scale);
        sources_free(s);
        return ds4_fail(err, "out of memory");
    }
    if (pair_scales(s, is_scale, err) != 0) {
        free(is_scale);
        sources_free(s);
        return -1;
    }
    for (uint64_t i = 0; i < n; i++) {
        if (is_scale[i]) { /* used through its weight */
            s->used[i] = true;
            continue;
        }
        bool skip;
        char *c = canonical_name(s->st.tensors[i].name, &skip);
        if (skip) {
            s->used[i] = true;
            s->n_skipped++;
            continue;
        }
        if (!c) {
            free(is_scale);
            sources_free(s);
            return ds4_fail(err, "out of memory");
        }
        s->v[s->n].canon = c;
        s->v[s->n++].t = &s->st.tensors[i];
    }
    free(is_scale);
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

/* A run of whole rows of one source tensor (a block-scaled one through q). */
typedef struct part {
    const st_tensor *t;
    uint64_t first, count; /* logical elements (FP4 codes unpacked) */
    bool scaled;
    st_scaled q;           /* when scaled: t with its scales */
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

/* The shape a source tensor stands for (slowest first): its own, or for an
 * FP4 weight packed two codes per I8/U8 byte (it has scales) the unpacked
 * one.  Returns the dim count. */
static uint32_t src_shape(const sources *s, const st_tensor *t, uint64_t *shape) {
    for (uint32_t i = 0; i < t->n_dims; i++) shape[i] = t->shape[i];
    uint64_t rows, cols;
    if (src_scale(s, t) && st_scaled_dims(t, &rows, &cols) == 0) shape[1] = cols;
    return t->n_dims;
}

static uint64_t src_elements(const sources *s, const st_tensor *t) {
    uint64_t shape[ST_MAX_DIMS], n = 1;
    uint32_t nd = src_shape(s, t, shape);
    for (uint32_t i = 0; i < nd; i++) n *= shape[i];
    return n;
}

/* The source must have exactly this PyTorch shape (slowest first). */
static int check_shape(const sources *s, const st_tensor *t, uint32_t n, const uint64_t *shape,
                       ds4_error *err) {
    uint64_t have[ST_MAX_DIMS];
    uint32_t nd = src_shape(s, t, have);
    bool ok = nd == n;
    for (uint32_t i = 0; ok && i < n; i++) ok = have[i] == shape[i];
    if (ok) return 0;
    char got[128], want[128];
    shape_str(have, nd, got, sizeof(got));
    shape_str(shape, n, want, sizeof(want));
    bool packed = nd == 2 && have[1] != t->shape[1];
    return ds4_fail(err, "%s: tensor '%s': shape %s%s, expected %s from config.json",
                    st_path(&s->st, t), t->name, got,
                    packed ? " (FP4 codes, two per byte)" : "", want);
}

/* "layers.0.attn.wq_a.weight" -> "layers.0.attn.wq_a.scale", for messages. */
static const char *scale_name(const char *w, char *buf, size_t cap) {
    size_t n = strlen(w);
    if (n > 7 && strcmp(w + n - 7, ".weight") == 0) n -= 7;
    snprintf(buf, cap, "%.*s.scale", (int)n, w);
    return buf;
}

static int check_dtype(const sources *s, const st_tensor *t, int cls, ds4_error *err) {
    uint32_t d = t->dtype;
    const st_tensor *sc = src_scale(s, t);
    char sn[300];
    if (sc && cls == TC_I32)
        return ds4_fail(err, "%s: tensor '%s': an integer table with a scale tensor '%s'",
                        st_path(&s->st, t), t->name, sc->name);
    if (sc && st_scaled_code(d) < 0)
        return ds4_fail(err, "%s: tensor '%s': dtype %s has a scale tensor '%s' (only F8_E4M3 "
                        "weights and FP4 weights packed in I8/U8/F4 take block scales)",
                        st_path(&s->st, t), t->name, st_dtype_name(d), sc->name);
    if (sc) return 0; /* the scale itself is checked when the part is made */
    bool flt = d == ST_F32 || d == ST_F16 || d == ST_BF16 || d == ST_F64;
    bool intg = d == ST_I64 || d == ST_I32 || d == ST_U8 || d == ST_I16 || d == ST_U16 ||
                d == ST_U32 || d == ST_I8;
    if (cls == TC_I32 ? intg : flt) return 0;
    if (cls == TC_I32)
        return ds4_fail(err, "%s: tensor '%s': dtype %s is not an integer type",
                        st_path(&s->st, t), t->name, st_dtype_name(d));
    if (d == ST_F8_E4M3 || d == ST_F4 || d == ST_I8 || d == ST_U8)
        return ds4_fail(err, "%s: tensor '%s': dtype %s (%s codes) without its scale tensor "
                        "'%s'", st_path(&s->st, t), t->name, st_dtype_name(d),
                        d == ST_F8_E4M3 ? "FP8" : "FP4", scale_name(t->name, sn, sizeof(sn)));
    return ds4_fail(err, "%s: tensor '%s': dtype %s cannot be converted (expected F32, F16, "
                    "BF16, or F8_E4M3 / packed FP4 with block scales)", st_path(&s->st, t),
                    t->name, st_dtype_name(d));
}

/* A part covering logical elements [first, first+count) of t (checked by
 * check_shape and check_dtype); a scaled t gets its scales paired, with
 * config's FP8 block for E4M3 codes and 1x32 blocks for FP4 codes. */
static int make_part(const sources *s, const cv_config *k, const st_tensor *t, uint64_t first,
                     uint64_t count, part *pt, ds4_error *err) {
    memset(pt, 0, sizeof(*pt));
    pt->t = t;
    pt->first = first;
    pt->count = count;
    const st_tensor *sc = src_scale(s, t);
    if (!sc) return 0;
    bool fp8 = st_scaled_code(t->dtype) == ST_CODE_E4M3;
    pt->scaled = true;
    return st_scaled_init(&pt->q, &s->st, t, sc, fp8 ? k->fp8_block[0] : 1,
                          fp8 ? k->fp8_block[1] : 32, err);
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
    if (check_dtype(pl->s, t, cls, err) || check_shape(pl->s, t, n_dims, shape, err)) return -1;
    item *it = plan_add(pl->p, gname, cls, pl->kind, n_dims, a, n_dims == 2 ? b : 1, 1, 1, err);
    if (!it || make_part(pl->s, pl->k, t, 0, src_elements(pl->s, t), &it->parts[0], err))
        return -1;
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
        if (check_dtype(pl->s, gu, TC_EXP_GU, err) || check_dtype(pl->s, dn, TC_EXP_DOWN, err) ||
            check_shape(pl->s, gu, 3, sgu, err) || check_shape(pl->s, dn, 3, sdn, err))
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
                if (make_part(pl->s, pl->k, t, first, I * H, &it->parts[e], err)) return -1;
                continue;
            }
            snprintf(x, sizeof(x), "ffn.experts.%" PRIu64 ".%s.weight", e, wn[w]);
            const st_tensor *t = src_find(pl->s, sname(s, 96, il, x));
            uint64_t shape[2] = {out, in};
            if (!t)
                return ds4_fail(err, "missing tensor '%s' (official name; needed for '%s')", s,
                                it->name);
            if (check_dtype(pl->s, t, cls, err) || check_shape(pl->s, t, 2, shape, err) ||
                make_part(pl->s, pl->k, t, 0, src_elements(pl->s, t), &it->parts[e], err))
                return -1;
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

/* Logical elements [first, first+count) of a part (offsets within it) as f32. */
static int part_read(const sources *s, const part *pt, uint64_t first, uint64_t count,
                     float *dst, ds4_error *err) {
    return pt->scaled ? st_read_scaled_f32(&s->st, &pt->q, pt->first + first, count, dst, err)
                      : st_read_f32(&s->st, pt->t, pt->first + first, count, dst, err);
}

/* Drop the mapped source pages of those elements (codes packed two per
 * I8/U8 element cover half as many elements). */
static void part_release(const sources *s, const part *pt, uint64_t first, uint64_t count) {
    uint64_t a = pt->first + first, n = count;
    if (pt->scaled && (pt->t->dtype == ST_I8 || pt->t->dtype == ST_U8)) {
        n = (a + n + 1) / 2 - a / 2;
        a /= 2;
    }
    st_release(&s->st, pt->t, a, n);
}

/* Output bytes so far, shown on stderr at most every 0.25 s on a terminal
 * (one line redrawn) or every 5 s otherwise (a log line each time). */
typedef struct progress {
    bool on, tty;
    double t0, last;
    uint64_t total, done, resumed; /* bytes of tensor data */
    uint32_t n, i;                 /* tensors; the one being converted */
    const char *name;
} progress;

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static void progress_show(progress *p, bool force) {
    if (!p->on) return;
    double t = now_s();
    if (!force && t - p->last < (p->tty ? 0.25 : 5.0)) return;
    p->last = t;
    double el = t - p->t0, gib = 1024.0 * 1024.0 * 1024.0;
    double rate = el > 0.0 ? (double)(p->done - p->resumed) / el : 0.0;
    double eta = rate > 0.0 ? (double)(p->total - p->done) / rate : 0.0;
    fprintf(stderr, "%s[%" PRIu32 "/%" PRIu32 "] %-34.34s %8.2f/%.2f GiB %8.1f MiB/s  "
            "ETA %3dh%02dm%02ds%s", p->tty ? "\r" : "", p->i + 1, p->n, p->name ? p->name : "",
            (double)p->done / gib, (double)p->total / gib, rate / (1024.0 * 1024.0),
            (int)(eta / 3600.0), (int)(eta / 60.0) % 60, (int)eta % 60,
            p->tty ? "\033[K" : "\n");
}

/* Rows of one part handled by one thread: read (dequantized) into src,
 * converted into dst. */
typedef struct rjob {
    const sources *s;
    const part *pt;
    uint32_t type;
    uint64_t row0, rows, ncols, rb;
    float *src;
    uint8_t *dst;
    int rc;
    ds4_error err;
    const ds4_imatrix *imx;  /* --imatrix, or NULL */
    const char *name;        /* the GGUF tensor */
    uint64_t base;           /* its row of the part's row 0 (experts stacked) */
} rjob;

static void *rworker(void *arg) {
    rjob *j = arg;
    j->rc = part_read(j->s, j->pt, j->row0 * j->ncols, j->rows * j->ncols, j->src, &j->err);
    for (uint64_t r = 0; j->rc == 0 && r < j->rows; r++)
        if (ds4_quantize_row(j->type, j->src + r * j->ncols, j->dst + r * j->rb, j->ncols,
                             ds4_imatrix_lookup(j->imx, j->name, j->base + j->row0 + r, j->ncols)))
            j->rc = ds4_fail(&j->err, "cannot quantize to %s", ds4_type_name(j->type));
    return NULL;
}

/* The state of one conversion run. */
typedef struct conv {
    const sources *s;
    const cv_config *k;
    int threads;
    float *src;              /* chunk_values f32 */
    uint8_t *dst;            /* their converted bytes (at most f32 size) */
    uint64_t chunk_values;
    rjob *jobs;              /* MAX_THREADS */
    gguf_writer *w;
    XXH64_state_t *hash;     /* of the tensor being written */
    progress pg;
    int64_t stop_at;         /* DS4CL_CONVERT_STOP_AFTER, or -1 */
    bool io_failed;          /* a write failed: the partial file is worth keeping */
    const ds4_imatrix *imx;  /* --imatrix, or NULL */
} conv;

/* Rows [row0, row0+rows) of a part into c->dst, split over the threads
 * (each a contiguous run of rows; the first failing run's error wins, so
 * the message does not depend on timing either). */
static int convert_rows(conv *c, const part *pt, const char *name, uint64_t base, uint32_t type,
                        uint64_t row0, uint64_t rows, uint64_t ncols, ds4_error *err) {
    uint64_t rb = ds4_row_bytes(type, ncols);
    int nt = c->threads;
    if ((uint64_t)nt > rows) nt = (int)rows;
    if (rows * ncols < (1u << 15)) nt = 1;
    pthread_t tid[MAX_THREADS];
    bool started[MAX_THREADS] = {false};
    uint64_t r0 = 0;
    for (int i = 0; i < nt; i++) {
        uint64_t r1 = rows * (uint64_t)(i + 1) / (uint64_t)nt;
        rjob *j = &c->jobs[i];
        *j = (rjob){c->s, pt, type, row0 + r0, r1 - r0, ncols, rb, c->src + r0 * ncols,
                    c->dst + r0 * rb, 0, {{0}}, c->imx, name, base};
        r0 = r1;
    }
    for (int i = 1; i < nt; i++)
        started[i] = pthread_create(&tid[i], NULL, rworker, &c->jobs[i]) == 0;
    rworker(&c->jobs[0]);
    for (int i = 1; i < nt; i++) {
        if (started[i]) pthread_join(tid[i], NULL);
        else rworker(&c->jobs[i]); /* no thread: run it here */
    }
    for (int i = 0; i < nt; i++)
        if (c->jobs[i].rc) {
            *err = c->jobs[i].err;
            return -1;
        }
    return 0;
}

/* Append converted bytes of the current tensor to the file and its hash. */
static int emit(conv *c, const void *data, uint64_t n, ds4_error *err) {
    if (gguf_writer_stream_write(c->w, data, n, err)) {
        c->io_failed = true;
        return -1;
    }
    XXH64_update(c->hash, data, (size_t)n);
    c->pg.done += n;
    progress_show(&c->pg, false);
    return 0;
}

/* The test hook: what is written so far reaches the file, then the process
 * ends as abruptly as a kill (no cleanup, no journal record). */
static void stop_now(conv *c) {
    ds4_error e;
    if (gguf_writer_stream_flush(c->w, &e)) fprintf(stderr, "ds4cl-convert: %s\n", e.msg);
    fprintf(stderr, "ds4cl-convert: stopped in tensor %" PRId64 " (DS4CL_CONVERT_STOP_AFTER)\n",
            c->stop_at);
    _exit(75);
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

/* Item idx: converted chunk by chunk and appended to the stream. */
static int convert_item(conv *c, uint32_t idx, const item *it, ds4_error *err) {
    uint64_t ncols = it->ne[0], rb = ds4_row_bytes(it->type, ncols);
    uint64_t chunk_rows = c->chunk_values / ncols;
    bool stop = c->stop_at == (int64_t)idx;
    int rc = 0;
    XXH64_reset(c->hash, 0);
    if (it->cls == TC_I32) {
        uint64_t nbytes = rb * it->ne[1];
        uint8_t *out = malloc(nbytes ? nbytes : 1);
        if (!out) return ds4_fail(err, "tensor '%s': out of memory", it->name);
        rc = convert_ids(c->s, it, c->k->n_expert, out, err);
        if (rc == 0) rc = emit(c, out, nbytes, err);
        free(out);
        if (stop) stop_now(c);
        return rc ? ds4_fail_wrap(err, "converting '%s'", it->name) : 0;
    }
    uint64_t base = 0; /* item row of the part's first row */
    for (uint32_t p = 0; rc == 0 && p < it->n_parts; p++) {
        const part *pt = &it->parts[p];
        uint64_t prow = pt->count / ncols;
        for (uint64_t r = 0; r < prow && rc == 0; r += chunk_rows) {
            uint64_t n = prow - r < chunk_rows ? prow - r : chunk_rows;
            rc = convert_rows(c, pt, it->name, base, it->type, r, n, ncols, err);
            if (rc == 0) rc = emit(c, c->dst, n * rb, err);
            part_release(c->s, pt, r * ncols, n * ncols);
            if (rc == 0 && stop) stop_now(c);
        }
        if (pt->scaled) st_release(&c->s->st, pt->q.scale, 0, pt->q.scale->n_elements);
        base += prow;
    }
    return rc ? ds4_fail_wrap(err, "converting '%s'", it->name) : 0;
}

/* ---------------------------------------------------------------------- */
/* Metadata and tokenizer                                                  */
/* ---------------------------------------------------------------------- */

/* The converted config as ds4_hparams, written by model.c's one writer of
 * the deepseek4 keys; nextn_predict_layers (not bound by model.c) follows. */
static void put_hparams(gguf_writer *w, const cv_config *k, const char *name) {
    ds4_hparams hp = {
        .n_layer = k->n_layer,
        .n_embd = k->n_embd,
        .n_vocab = k->n_vocab,
        .n_head = k->n_head,
        .n_head_kv = 1,
        .head_dim = k->head_dim,
        .n_rot = k->n_rot,
        .q_lora = k->q_lora,
        .o_lora = k->o_lora,
        .o_groups = k->o_groups,
        .n_expert = k->n_expert,
        .n_expert_used = k->n_expert_used,
        .n_ff_exp = k->n_ff_exp,
        .n_expert_shared = 1,
        .n_hash_layers = k->n_hash,
        .n_swa = k->n_swa,
        .n_idx_head = k->n_idx_head,
        .idx_head_dim = k->idx_head_dim,
        .idx_top_k = k->idx_top_k,
        .n_hc = k->n_hc,
        .n_sinkhorn = k->n_sinkhorn,
        .hc_eps = (float)k->hc_eps,
        .rms_eps = (float)k->rms_eps,
        .rope_base = (float)k->rope_base,
        .rope_compress_base = (float)k->compress_base,
        .rope_scale = (float)k->rope_factor,
        .yarn_beta_fast = (float)k->beta_fast,
        .yarn_beta_slow = (float)k->beta_slow,
        .rope_orig_ctx = k->orig_ctx,
        .n_ctx_train = k->n_ctx,
        .expert_weights_scale = (float)k->weights_scale,
        .expert_weights_norm = true,
    };
    for (uint32_t il = 0; il < k->n_layer; il++) {
        hp.compress_ratio[il] = k->ratio[il];
        hp.swiglu_clamp[il] = (float)k->swiglu;
    }
    ds4_model_write_hparams(w, &hp, name);
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

/* Bind the saved file as ds4cl will; a failure is a converter bug. */
static int check_binds(const char *path, ds4_error *err) {
    gguf_file f;
    ds4_model m;
    if (gguf_open(&f, path, err) != 0) return -1;
    int rc = ds4_model_bind(&m, &f, err);
    gguf_close(&f);
    return rc ? ds4_fail_wrap(err, "the converted file does not bind (converter bug)") : 0;
}

static uint64_t item_bytes(const item *it) {
    return ds4_row_bytes(it->type, it->ne[0]) * it->ne[1] * it->ne[2];
}

/* Peak resident memory of this process so far, in bytes: VmHWM (the high
 * water mark of this program's own address space; getrusage's ru_maxrss
 * also counts the parent's pages this process had before exec), else
 * ru_maxrss. */
static uint64_t peak_rss(void) {
    FILE *fp = fopen("/proc/self/status", "r");
    char line[256];
    unsigned long long kib = 0;
    while (fp && fgets(line, sizeof(line), fp))
        if (sscanf(line, "VmHWM: %llu kB", &kib) == 1) break;
    if (fp) fclose(fp);
    struct rusage ru;
    if (!kib && getrusage(RUSAGE_SELF, &ru) == 0) kib = (unsigned long long)ru.ru_maxrss;
    return (uint64_t)kib * 1024;
}

static void print_summary(const plan *p, const cv_config *k, bool tok, double secs,
                          uint64_t written, FILE *fp) {
    uint64_t count[DS4_TYPE_COUNT] = {0}, bytes[DS4_TYPE_COUNT] = {0}, total = 0;
    for (uint32_t i = 0; i < p->n; i++) {
        const item *it = &p->v[i];
        uint64_t b = item_bytes(it);
        count[it->type]++;
        bytes[it->type] += b;
        total += b;
    }
    uint32_t n4 = 0, n128 = 0;
    for (uint32_t il = 0; il < k->n_layer; il++) {
        n4 += k->ratio[il] == 4;
        n128 += k->ratio[il] == 128;
    }
    double mib = 1024.0 * 1024.0;
    fprintf(fp, "layers: %" PRIu32 " (%" PRIu32 " ratio-4, %" PRIu32 " ratio-128, %" PRIu32
            " hash-routed), experts %" PRIu32 " (top %" PRIu32 "), tokenizer: %s\n", k->n_layer,
            n4, n128, k->n_hash, k->n_expert, k->n_expert_used, tok ? "yes" : "none");
    fprintf(fp, "tensors: %" PRIu32 "\n", p->n);
    for (uint32_t t = 0; t < DS4_TYPE_COUNT; t++)
        if (count[t])
            fprintf(fp, "  %-8s %6" PRIu64 " tensors %16" PRIu64 " bytes\n", ds4_type_name(t),
                    count[t], bytes[t]);
    fprintf(fp, "total: %" PRIu64 " bytes of tensor data (%.2f MiB) in %.2f s\n", total,
            (double)total / mib, secs);
    fprintf(fp, "written: %.2f MiB this run (%.1f MiB/s), peak memory %.1f MiB\n",
            (double)written / mib, secs > 0.0 ? (double)written / mib / secs : 0.0,
            (double)peak_rss() / mib);
}

/* Keys, tokenizer and tensor directory, then the layout is fixed. */
static int describe(gguf_writer *w, const cv_opts *o, const cv_config *k, const plan *p,
                    bool *tok, ds4_error *err) {
    put_hparams(w, k, o->name);
    if (put_tokenizer(w, o->dir, k, tok, err) != 0) return -1;
    for (uint32_t i = 0; i < p->n; i++) {
        const item *it = &p->v[i];
        uint64_t ne[GGUF_MAX_DIMS] = {it->ne[0], it->ne[1], it->ne[2], 1};
        if (gguf_w_tensor_info(w, it->name, it->n_dims, ne, it->type, err) != 0) return -1;
    }
    return gguf_writer_layout(w, err);
}

/* ---------------------------------------------------------------------- */
/* Journal (resume)                                                        */
/* ---------------------------------------------------------------------- */

/* The key of a run: the head (every key, tensor name, dims and type), the
 * name, size and mtime of each source file, of the --imatrix file and of
 * this binary (a rebuilt converter may round differently).  The bytes
 * depend on nothing else (not on the thread count). */
static uint64_t run_key(const gguf_writer *w, const sources *s, const char *imatrix) {
    uint64_t len;
    const uint8_t *head = gguf_writer_head(w, &len);
    uint64_t key = XXH64(head, (size_t)len, 0);
    for (uint32_t i = 0; i <= s->st.n_shards + 1; i++) {
        const char *path = i < s->st.n_shards ? s->st.shards[i].path
                           : i == s->st.n_shards ? "/proc/self/exe" : imatrix;
        if (!path) continue;
        const char *base = strrchr(path, '/');
        base = base ? base + 1 : path;
        struct stat st;
        uint64_t v[4] = {key, 0, 0, 0};
        if (stat(path, &st) == 0) {
            v[1] = (uint64_t)st.st_size;
            v[2] = (uint64_t)st.st_mtim.tv_sec;
            v[3] = (uint64_t)st.st_mtim.tv_nsec;
        }
        key = XXH64(v, sizeof(v), XXH64(base, strlen(base), 0));
    }
    return key;
}

/* pread exactly n bytes at off. */
static bool read_at(int fd, uint64_t off, uint8_t *buf, uint64_t n) {
    while (n) {
        ssize_t r = pread(fd, buf, (size_t)n, (off_t)off);
        if (r <= 0) return false;
        buf += r;
        off += (uint64_t)r;
        n -= (uint64_t)r;
    }
    return true;
}

/* XXH64 of file bytes [off, off+n) into *h, then [off+n, end) must be
 * zeros (the padding).  false on a short file or a non-zero pad byte. */
static bool hash_span(int fd, uint64_t off, uint64_t n, uint64_t end, uint8_t *buf,
                      XXH64_state_t *st, uint64_t *h) {
    XXH64_reset(st, 0);
    for (uint64_t at = off; at < end;) {
        uint64_t k = end - at < VERIFY_BYTES ? end - at : VERIFY_BYTES;
        if (!read_at(fd, at, buf, k)) return false;
        uint64_t data = at < off + n ? (off + n - at < k ? off + n - at : k) : 0;
        XXH64_update(st, buf, (size_t)data);
        for (uint64_t i = data; i < k; i++)
            if (buf[i]) return false;
        at += k;
    }
    *h = XXH64_digest(st);
    return true;
}

/* How many leading tensors of tmp the journal at jpath vouches for.  Each
 * record must be the next index, end where the layout says, and its bytes
 * re-hashed from the file must match (padding all zeros); counting stops at
 * the first record that fails.  hashes[] gets the verified hashes.  *why
 * explains a 0 when there was a journal (NULL when there was none). */
static uint64_t journal_verify(const char *jpath, const char *tmp, const gguf_writer *w,
                               uint64_t key, uint64_t *hashes, const char **why) {
    *why = NULL;
    FILE *jf = fopen(jpath, "r");
    if (!jf) return 0;
    char line[200], want[80];
    snprintf(want, sizeof(want), JOURNAL_MAGIC " key=%016" PRIx64 "\n", key);
    if (!fgets(line, sizeof(line), jf) || strcmp(line, want) != 0) {
        fclose(jf);
        *why = "the journal is for another input, type or converter build";
        return 0;
    }
    uint64_t hlen, n = 0;
    const uint8_t *head = gguf_writer_head(w, &hlen);
    int fd = open(tmp, O_RDONLY);
    uint8_t *buf = malloc(VERIFY_BYTES > hlen ? VERIFY_BYTES : (size_t)hlen);
    XXH64_state_t *st = XXH64_createState();
    if (fd < 0 || !buf || !st) {
        *why = fd < 0 ? "the partial file is missing" : "out of memory";
    } else if (!read_at(fd, 0, buf, hlen) || memcmp(buf, head, (size_t)hlen) != 0) {
        *why = "the partial file's head differs";
    } else {
        while (fgets(line, sizeof(line), jf) && strchr(line, '\n')) {
            uint64_t i, end, h, off, nb, e, got;
            if (sscanf(line, "%" SCNu64 " %" SCNu64 " %" SCNx64, &i, &end, &h) != 3 || i != n ||
                gguf_writer_tensor_span(w, i, &off, &nb, &e) != 0 || e != end ||
                !hash_span(fd, off, nb, e, buf, st, &got) || got != h)
                break;
            hashes[n++] = h;
        }
        if (n == 0) *why = "no tensor in it was complete";
    }
    if (fd >= 0) close(fd);
    XXH64_freeState(st);
    free(buf);
    fclose(jf);
    return n;
}

static int journal_add(FILE *jf, const char *jpath, uint64_t i, uint64_t end, uint64_t h,
                       ds4_error *err) {
    if (fprintf(jf, "%" PRIu64 " %" PRIu64 " %016" PRIx64 "\n", i, end, h) < 0 || fflush(jf))
        return ds4_fail(err, "%s: write failed: %s", jpath, strerror(errno));
    return 0;
}

/* A fresh journal holding the key and the n verified records. */
static int journal_begin(const char *jpath, uint64_t key, const gguf_writer *w,
                         const uint64_t *hashes, uint64_t n, FILE **out, ds4_error *err) {
    FILE *jf = fopen(jpath, "w");
    if (!jf) return ds4_fail(err, "%s: cannot create: %s", jpath, strerror(errno));
    int rc = 0;
    if (fprintf(jf, JOURNAL_MAGIC " key=%016" PRIx64 "\n", key) < 0)
        rc = ds4_fail(err, "%s: write failed: %s", jpath, strerror(errno));
    for (uint64_t i = 0; rc == 0 && i < n; i++) {
        uint64_t off, nb, end;
        gguf_writer_tensor_span(w, i, &off, &nb, &end);
        rc = journal_add(jf, jpath, i, end, hashes[i], err);
    }
    if (rc == 0 && fflush(jf) != 0)
        rc = ds4_fail(err, "%s: write failed: %s", jpath, strerror(errno));
    if (rc) {
        fclose(jf);
        return -1;
    }
    *out = jf;
    return 0;
}

/* ---------------------------------------------------------------------- */
/* The run                                                                 */
/* ---------------------------------------------------------------------- */

static void conv_free(conv *c) {
    free(c->src);
    free(c->dst);
    free(c->jobs);
    if (c->hash) XXH64_freeState(c->hash);
}

/* Scratch for the widest chunk of the plan (rows of at least one row). */
static int conv_init(conv *c, const cv_opts *o, const cv_config *k, const sources *s,
                     const plan *p, gguf_writer *w, ds4_error *err) {
    memset(c, 0, sizeof(*c));
    c->s = s;
    c->k = k;
    c->w = w;
    c->threads = o->threads;
    c->chunk_values = CHUNK_VALUES;
    for (uint32_t i = 0; i < p->n; i++)
        if (p->v[i].ne[0] > c->chunk_values) c->chunk_values = p->v[i].ne[0];
    c->src = malloc(c->chunk_values * sizeof(float));
    c->dst = malloc(c->chunk_values * sizeof(float)); /* no output type exceeds 4 bytes a value */
    c->jobs = calloc(MAX_THREADS, sizeof(rjob));
    c->hash = XXH64_createState();
    if (!c->src || !c->dst || !c->jobs || !c->hash) {
        conv_free(c);
        return ds4_fail(err, "out of memory");
    }
    const char *stop = getenv("DS4CL_CONVERT_STOP_AFTER");
    c->stop_at = stop && *stop ? strtoll(stop, NULL, 10) : -1;
    return 0;
}

/* Verify what a previous run left, open the stream past it, convert the
 * rest.  *started: OUT.tmp is ours to remove on failure.  *written: bytes
 * converted in this run. */
static int stream_all(const cv_opts *o, conv *c, const plan *p, const char *tmp,
                      const char *jpath, bool *started, uint64_t *written, ds4_error *err) {
    gguf_writer *w = c->w;
    uint64_t key = run_key(w, c->s, o->imatrix), skip = 0, skipped_bytes = 0;
    uint64_t *hashes = calloc(p->n ? p->n : 1, sizeof(uint64_t));
    if (!hashes) return ds4_fail(err, "out of memory");
    const char *why;
    if (!o->quiet && access(jpath, F_OK) == 0)
        fprintf(stderr, "ds4cl-convert: checking %s against its journal\n", tmp);
    skip = journal_verify(jpath, tmp, w, key, hashes, &why);
    for (uint64_t i = 0; i < skip; i++) skipped_bytes += item_bytes(&p->v[i]);
    if (!o->quiet && skip)
        fprintf(stderr, "ds4cl-convert: resuming %s after %" PRIu64 " of %" PRIu32 " tensors "
                "(%.1f MiB verified)\n", tmp, skip, p->n,
                (double)skipped_bytes / (1024.0 * 1024.0));
    else if (!o->quiet && why)
        fprintf(stderr, "ds4cl-convert: not resuming %s: %s; starting over\n", tmp, why);
    FILE *jf = NULL;
    int rc = journal_begin(jpath, key, w, hashes, skip, &jf, err);
    free(hashes);
    if (rc == 0 && gguf_writer_stream_open(w, tmp, skip, err)) {
        c->io_failed = true; /* a verified partial file stays for the next run */
        rc = -1;
    }
    if (rc) {
        if (jf) fclose(jf);
        return -1;
    }
    *started = true;
    progress *pg = &c->pg;
    pg->on = !o->quiet;
    pg->tty = isatty(STDERR_FILENO) != 0;
    pg->t0 = pg->last = now_s();
    pg->n = p->n;
    for (uint32_t i = 0; i < p->n; i++) pg->total += item_bytes(&p->v[i]);
    pg->done = pg->resumed = skipped_bytes;
    for (uint32_t i = (uint32_t)skip; rc == 0 && i < p->n; i++) {
        pg->i = i;
        pg->name = p->v[i].name;
        rc = convert_item(c, i, &p->v[i], err);
        uint64_t off, nb, end;
        gguf_writer_tensor_span(w, i, &off, &nb, &end);
        if (rc == 0 && gguf_writer_stream_flush(w, err)) {
            c->io_failed = true;
            rc = -1;
        }
        if (rc == 0) rc = journal_add(jf, jpath, i, end, XXH64_digest(c->hash), err);
    }
    if (rc == 0) {
        progress_show(pg, true);
        if (pg->on && pg->tty) fputc('\n', stderr);
    }
    if (rc == 0 && gguf_writer_stream_close(w, err)) {
        c->io_failed = true;
        rc = -1;
    }
    if (fclose(jf) != 0 && rc == 0)
        rc = ds4_fail(err, "%s: close failed: %s", jpath, strerror(errno));
    *written = pg->done - pg->resumed;
    return rc;
}

static char *str_cat(const char *a, const char *b) {
    size_t n = strlen(a) + strlen(b) + 1;
    char *s = malloc(n);
    if (s) snprintf(s, n, "%s%s", a, b);
    return s;
}

static int run(const cv_opts *o, ds4_error *err) {
    double t0 = now_s();
    cv_config k;
    sources s;
    plan p = {0};
    conv c = {0};
    if (read_config(o->dir, &k, err) != 0) return -1;
    if (sources_open(&s, o->dir, err) != 0) return -1;
    int rc = build_plan(&p, &s, &k, o->kind, err);
    gguf_writer *w = rc == 0 ? gguf_writer_new(0) : NULL;
    if (rc == 0 && !w) rc = ds4_fail(err, "out of memory");
    char *tmp = rc == 0 ? str_cat(o->out, ".tmp") : NULL;
    char *jpath = tmp ? str_cat(tmp, ".journal") : NULL;
    if (rc == 0 && !jpath) rc = ds4_fail(err, "out of memory");
    bool tok = false, started = false;
    uint64_t written = 0;
    ds4_imatrix imx = {0};
    ds4_imatrix_dims idims = {k.n_layer, k.n_expert, k.n_embd, k.n_ff_exp, k.n_vocab, k.n_expert_used};
    if (rc == 0 && o->imatrix && (rc = ds4_imatrix_load_for(&imx, o->imatrix, &idims, err)) == 0)
        ds4_imatrix_put_meta(w, &imx, o->imatrix);
    if (rc == 0) rc = describe(w, o, &k, &p, &tok, err);
    if (rc == 0) rc = conv_init(&c, o, &k, &s, &p, w, err);
    c.imx = o->imatrix ? &imx : NULL;
    if (rc == 0) rc = stream_all(o, &c, &p, tmp, jpath, &started, &written, err);
    bool keep = rc != 0 && c.io_failed && access(tmp, F_OK) == 0;
    if (rc == 0) rc = check_binds(tmp, err);
    if (rc == 0 && rename(tmp, o->out) != 0)
        rc = ds4_fail(err, "%s: cannot rename to %s: %s", tmp, o->out, strerror(errno));
    if (rc == 0 || ((started || c.io_failed) && !keep)) unlink(jpath);
    if (rc != 0 && started && !keep) unlink(tmp);
    if (keep) {
        char inner[sizeof(err->msg)];
        snprintf(inner, sizeof(inner), "%s", err->msg);
        ds4_fail(err, "%.700s (%.200s is kept: run the same command again to resume)", inner,
                 tmp);
    }
    if (rc == 0 && !o->quiet) {
        printf("%s: %s -> %s (--type %s)\n", "ds4cl-convert", o->dir, o->out,
               k_kind_names[o->kind]);
        print_summary(&p, &k, tok, now_s() - t0, written, stdout);
    }
    gguf_writer_free(w);
    conv_free(&c);
    ds4_imatrix_free(&imx);
    free(tmp);
    free(jpath);
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
            "  --imatrix  routed-expert importance matrix from ds4cl-imatrix: weights\n"
            "             the experts' rounding error (default: unweighted)\n"
            "  -q         no progress or summary\n"
            "  Sources may be F32/F16/BF16 or the official FP8 checkpoint (F8_E4M3 weights\n"
            "  with block scales, FP4 routed experts with 1x32 scales): dequantized exactly.\n"
            "  The output is streamed to OUT.gguf.tmp (memory stays bounded) and renamed\n"
            "  when complete; an interrupted run resumes where it stopped when the same\n"
            "  command is run again (OUT.gguf.tmp.journal records the complete tensors).\n");
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
        } else if (strcmp(a, "--imatrix") == 0 && has_val) {
            o->imatrix = argv[++i];
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
