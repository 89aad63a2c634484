/* model.c - binds a parsed deepseek4 GGUF to the shapes the forward pass uses.
 *
 * Two steps, both at load time only (no hot path ever calls into here):
 *
 *   1. read_hparams: every hyperparameter key of the architecture is read
 *      from metadata and checked for STRUCTURE, not for the Flash constants,
 *      so the 43-layer Flash files and tiny test models both bind.  The
 *      checks are the ones the forward pass relies on: one KV head, K width
 *      == V width, an even RoPE tail that fits in a head, heads divisible
 *      into output groups, ratios in {0, 4, 128}, top-k experts <= experts...
 *
 *   2. bind_*: every tensor of the inventory is looked up by exact name and
 *      its dims (fastest first) and type are compared with what the shape
 *      implies.  Each tensor has a type class (F32 only, plain float, dense,
 *      routed expert, I32); the class lists what the kernels can read.
 *      tid2eid tables are scanned once so every routed id is < n_expert.
 *
 * The first mismatch stops the bind with a message naming the key or the
 * tensor and what was expected vs found.  After success every non-optional
 * pointer of every layer is non-NULL and the forward code never re-checks.
 * Tensor dims are compared in 64 bits: every product below is of 32-bit
 * values (or a small count times one), so nothing overflows.
 *
 * The reverse direction lives here too: ds4_model_write_hparams writes the
 * same keys from a ds4_hparams, the one writer the converter and the
 * random test models share.
 */
#include "model.h"

#include <inttypes.h>
#include <math.h>
#include <stddef.h>
#include <string.h>

#include "quant.h"

/* ---------------------------------------------------------------------- */
/* Metadata helpers                                                        */
/* ---------------------------------------------------------------------- */

#define KP "deepseek4."

static bool vt_is_int(uint32_t t) {
    return t == GGUF_VT_UINT8 || t == GGUF_VT_INT8 || t == GGUF_VT_UINT16 ||
           t == GGUF_VT_INT16 || t == GGUF_VT_UINT32 || t == GGUF_VT_INT32 ||
           t == GGUF_VT_UINT64 || t == GGUF_VT_INT64;
}

static bool vt_is_signed(uint32_t t) {
    return t == GGUF_VT_INT8 || t == GGUF_VT_INT16 || t == GGUF_VT_INT32 ||
           t == GGUF_VT_INT64;
}

static bool vt_is_float(uint32_t t) {
    return t == GGUF_VT_FLOAT32 || t == GGUF_VT_FLOAT64;
}

/* Required u32 key that must be >= min_v. */
static int key_u32(const gguf_file *f, const char *key, uint32_t min_v, uint32_t *out,
                   ds4_error *err) {
    if (gguf_get_u32(f, key, out, err) != 0) return -1;
    if (*out < min_v)
        return ds4_fail(err, "key '%s': value %" PRIu32 ", expected at least %" PRIu32, key,
                        *out, min_v);
    return 0;
}

/* Required float key: finite, and > 0 when positive is set. */
static int key_f32(const gguf_file *f, const char *key, bool positive, float *out,
                   ds4_error *err) {
    double v;
    if (gguf_get_f64(f, key, &v, err) != 0) return -1;
    if (!isfinite(v) || fabs(v) > 3.0e38)
        return ds4_fail(err, "key '%s': value %g is not a finite f32", key, v);
    if (positive && !(v > 0.0))
        return ds4_fail(err, "key '%s': value %g, expected > 0", key, v);
    *out = (float)v;
    return 0;
}

/* Key that must be absent or 0 (expert groups are not supported). */
static int key_absent_or_zero(const gguf_file *f, const char *key, ds4_error *err) {
    if (!gguf_find_kv(f, key)) return 0;
    uint64_t v;
    if (gguf_get_u64(f, key, &v, err) != 0) return -1;
    if (v != 0)
        return ds4_fail(err, "key '%s': value %" PRIu64 ", expected 0 or absent "
                        "(expert groups are not supported)", key, v);
    return 0;
}

/* The array value of key, with at least n elements. */
static int key_layer_array(const gguf_file *f, const char *key, uint32_t n,
                           const gguf_value **out, ds4_error *err) {
    const gguf_kv *kv = gguf_find_kv(f, key);
    if (!kv) return ds4_fail(err, "missing key '%s'", key);
    if (kv->value.type != GGUF_VT_ARRAY)
        return ds4_fail(err, "key '%s': type %s, expected an array with one entry per layer",
                        key, gguf_value_type_name(kv->value.type));
    if (kv->value.arr.count < n)
        return ds4_fail(err, "key '%s': %" PRIu64 " entries, expected at least %" PRIu32
                        " (one per layer)", key, kv->value.arr.count, n);
    *out = &kv->value;
    return 0;
}

static int read_compress_ratios(const gguf_file *f, ds4_hparams *hp, ds4_error *err) {
    const char *key = KP "attention.compress_ratios";
    const gguf_value *arr;
    if (key_layer_array(f, key, hp->n_layer, &arr, err) != 0) return -1;
    if (!vt_is_int(arr->arr.elem_type))
        return ds4_fail(err, "key '%s': array of %s, expected an integer array", key,
                        gguf_value_type_name(arr->arr.elem_type));
    for (uint32_t il = 0; il < hp->n_layer; il++) {
        gguf_value e;
        if (gguf_array_get(arr, il, &e) != 0)
            return ds4_fail(err, "key '%s': cannot read entry %" PRIu32, key, il);
        int64_t r = vt_is_signed(e.type) ? e.i : (e.u > INT64_MAX ? INT64_MAX : (int64_t)e.u);
        if (r != 0 && r != 4 && r != 128)
            return ds4_fail(err, "key '%s': layer %" PRIu32 " has ratio %" PRId64
                            " (allowed 0, 4, 128)", key, il, r);
        hp->compress_ratio[il] = (uint32_t)r;
    }
    return 0;
}

static int read_swiglu_clamp(const gguf_file *f, ds4_hparams *hp, ds4_error *err) {
    const char *key = KP "swiglu_clamp_exp";
    const gguf_value *arr;
    if (key_layer_array(f, key, hp->n_layer, &arr, err) != 0) return -1;
    uint32_t et = arr->arr.elem_type;
    if (!vt_is_float(et) && !vt_is_int(et))
        return ds4_fail(err, "key '%s': array of %s, expected a numeric array", key,
                        gguf_value_type_name(et));
    for (uint32_t il = 0; il < hp->n_layer; il++) {
        gguf_value e;
        if (gguf_array_get(arr, il, &e) != 0)
            return ds4_fail(err, "key '%s': cannot read entry %" PRIu32, key, il);
        double v = vt_is_float(et) ? e.f : vt_is_signed(et) ? (double)e.i : (double)e.u;
        if (!isfinite(v) || !(v > 0.0) || v > 3.0e38)
            return ds4_fail(err, "key '%s': layer %" PRIu32 " has clamp %g, expected a "
                            "finite value > 0", key, il, v);
        hp->swiglu_clamp[il] = (float)v;
    }
    return 0;
}

/* vocab_size, or the token list length when the key is absent; when both
 * exist they must agree. */
static int read_vocab(const gguf_file *f, ds4_hparams *hp, ds4_error *err) {
    const char *key = KP "vocab_size";
    const gguf_kv *tok = gguf_find_kv(f, "tokenizer.ggml.tokens");
    if (tok && (tok->value.type != GGUF_VT_ARRAY || tok->value.arr.elem_type != GGUF_VT_STRING))
        return ds4_fail(err, "key 'tokenizer.ggml.tokens': expected an array of strings");
    if (gguf_find_kv(f, key)) {
        if (key_u32(f, key, 1, &hp->n_vocab, err) != 0) return -1;
        if (tok && tok->value.arr.count != hp->n_vocab)
            return ds4_fail(err, "key '%s': %" PRIu32 " but tokenizer.ggml.tokens has %" PRIu64
                            " entries", key, hp->n_vocab, tok->value.arr.count);
        return 0;
    }
    if (!tok) return ds4_fail(err, "missing key '%s' (and no tokenizer.ggml.tokens)", key);
    if (tok->value.arr.count == 0 || tok->value.arr.count > UINT32_MAX)
        return ds4_fail(err, "key 'tokenizer.ggml.tokens': %" PRIu64 " entries",
                        tok->value.arr.count);
    hp->n_vocab = (uint32_t)tok->value.arr.count;
    return 0;
}

static int read_int_keys(const gguf_file *f, ds4_hparams *hp, ds4_error *err) {
    const struct {
        const char *key;
        uint32_t *dst;
        uint32_t min;
    } keys[] = {
        {KP "block_count", &hp->n_layer, 1},
        {KP "embedding_length", &hp->n_embd, 1},
        {KP "attention.head_count", &hp->n_head, 1},
        {KP "attention.head_count_kv", &hp->n_head_kv, 1},
        {KP "attention.key_length", &hp->head_dim, 1},
        {KP "rope.dimension_count", &hp->n_rot, 0},
        {KP "attention.q_lora_rank", &hp->q_lora, 1},
        {KP "attention.output_lora_rank", &hp->o_lora, 1},
        {KP "attention.output_group_count", &hp->o_groups, 1},
        {KP "expert_count", &hp->n_expert, 1},
        {KP "expert_used_count", &hp->n_expert_used, 1},
        {KP "expert_feed_forward_length", &hp->n_ff_exp, 1},
        {KP "expert_shared_count", &hp->n_expert_shared, 1},
        {KP "hash_layer_count", &hp->n_hash_layers, 0},
        {KP "attention.sliding_window", &hp->n_swa, 1},
        {KP "attention.indexer.head_count", &hp->n_idx_head, 1},
        {KP "attention.indexer.key_length", &hp->idx_head_dim, 1},
        {KP "attention.indexer.top_k", &hp->idx_top_k, 1},
        {KP "hyper_connection.count", &hp->n_hc, 1},
        {KP "hyper_connection.sinkhorn_iterations", &hp->n_sinkhorn, 1},
    };
    for (size_t i = 0; i < sizeof(keys) / sizeof(keys[0]); i++)
        if (key_u32(f, keys[i].key, keys[i].min, keys[i].dst, err) != 0) return -1;

    uint32_t value_length;
    if (key_u32(f, KP "attention.value_length", 1, &value_length, err) != 0) return -1;
    if (value_length != hp->head_dim)
        return ds4_fail(err, "key '" KP "attention.value_length': %" PRIu32 ", expected "
                        "key_length %" PRIu32 " (K and V share one row)", value_length,
                        hp->head_dim);
    if (gguf_get_u64(f, KP "rope.scaling.original_context_length", &hp->rope_orig_ctx, err))
        return -1;
    if (hp->rope_orig_ctx == 0)
        return ds4_fail(err, "key '" KP "rope.scaling.original_context_length': 0");
    hp->n_ctx_train = 0;
    if (gguf_find_kv(f, KP "context_length") &&
        gguf_get_u64(f, KP "context_length", &hp->n_ctx_train, err) != 0)
        return -1;
    if (key_absent_or_zero(f, KP "expert_group_count", err) != 0) return -1;
    if (key_absent_or_zero(f, KP "expert_group_used_count", err) != 0) return -1;
    return read_vocab(f, hp, err);
}

static int read_float_keys(const gguf_file *f, ds4_hparams *hp, ds4_error *err) {
    const struct {
        const char *key;
        float *dst;
        bool positive;
    } keys[] = {
        {KP "hyper_connection.epsilon", &hp->hc_eps, true},
        {KP "attention.layer_norm_rms_epsilon", &hp->rms_eps, true},
        {KP "rope.freq_base", &hp->rope_base, true},
        {KP "attention.compress_rope_freq_base", &hp->rope_compress_base, true},
        {KP "rope.scaling.factor", &hp->rope_scale, true},
        {KP "rope.scaling.yarn_beta_fast", &hp->yarn_beta_fast, true},
        {KP "rope.scaling.yarn_beta_slow", &hp->yarn_beta_slow, true},
        {KP "expert_weights_scale", &hp->expert_weights_scale, true},
    };
    for (size_t i = 0; i < sizeof(keys) / sizeof(keys[0]); i++)
        if (key_f32(f, keys[i].key, keys[i].positive, keys[i].dst, err) != 0) return -1;
    return gguf_get_bool(f, KP "expert_weights_norm", &hp->expert_weights_norm, err);
}

static bool is_pow2(uint32_t v) { return v && !(v & (v - 1)); }

/* Structural checks across keys (each one names the key it is about). */
static int check_hparams(const ds4_hparams *hp, ds4_error *err) {
    bool has_r4 = false;
    for (uint32_t il = 0; il < hp->n_layer; il++) has_r4 |= hp->compress_ratio[il] == 4;
    if (hp->n_head_kv != 1)
        return ds4_fail(err, "key '" KP "attention.head_count_kv': %" PRIu32
                        ", expected 1 (one shared K=V head)", hp->n_head_kv);
    if (hp->n_rot % 2 != 0 || hp->n_rot > hp->head_dim)
        return ds4_fail(err, "key '" KP "rope.dimension_count': %" PRIu32 ", expected an even "
                        "count <= key_length %" PRIu32, hp->n_rot, hp->head_dim);
    if (hp->n_head % hp->o_groups != 0)
        return ds4_fail(err, "key '" KP "attention.output_group_count': %" PRIu32
                        " does not divide head_count %" PRIu32, hp->o_groups, hp->n_head);
    if (hp->n_expert_used > hp->n_expert)
        return ds4_fail(err, "key '" KP "expert_used_count': %" PRIu32 ", more than "
                        "expert_count %" PRIu32, hp->n_expert_used, hp->n_expert);
    if (hp->n_hash_layers > hp->n_layer)
        return ds4_fail(err, "key '" KP "hash_layer_count': %" PRIu32 ", more than "
                        "block_count %" PRIu32, hp->n_hash_layers, hp->n_layer);
    if (hp->n_hc > 64)
        return ds4_fail(err, "key '" KP "hyper_connection.count': %" PRIu32
                        ", expected at most 64", hp->n_hc);
    if (has_r4 && hp->n_rot > hp->idx_head_dim)
        return ds4_fail(err, "key '" KP "attention.indexer.key_length': %" PRIu32
                        ", smaller than rope.dimension_count %" PRIu32, hp->idx_head_dim,
                        hp->n_rot);
    if (has_r4 && !is_pow2(hp->idx_head_dim))
        return ds4_fail(err, "key '" KP "attention.indexer.key_length': %" PRIu32
                        ", expected a power of two (Hadamard transform)", hp->idx_head_dim);
    return 0;
}

static int read_hparams(const gguf_file *f, ds4_hparams *hp, ds4_error *err) {
    memset(hp, 0, sizeof(*hp));
    if (read_int_keys(f, hp, err) != 0) return -1;
    if (hp->n_layer > DS4_MAX_LAYERS)
        return ds4_fail(err, "key '" KP "block_count': %" PRIu32 ", expected 1..%d",
                        hp->n_layer, DS4_MAX_LAYERS);
    if (read_float_keys(f, hp, err) != 0) return -1;
    if (read_compress_ratios(f, hp, err) != 0) return -1;
    if (read_swiglu_clamp(f, hp, err) != 0) return -1;
    return check_hparams(hp, err);
}

/* ---------------------------------------------------------------------- */
/* Tensor binding                                                          */
/* ---------------------------------------------------------------------- */

#define TBIT(t) (UINT64_C(1) << (t))

/* Type classes, each a set of GGML ids (all ids are < 64). */
enum {
    TS_F32 = 0,   /* norms, sinks, biases, HC scale and base */
    TS_PLAIN,     /* HC fn, router, compressor, indexer, embedding */
    TS_DENSE,     /* attention, shared expert, output head */
    TS_EXPERT,    /* routed experts */
    TS_I32,       /* tid2eid */
    TS_COUNT
};

static const uint32_t k_class_types[TS_COUNT][8] = {
    [TS_F32] = {DS4_TYPE_F32},
    [TS_PLAIN] = {DS4_TYPE_F16, DS4_TYPE_BF16, DS4_TYPE_F32},
    [TS_DENSE] = {DS4_TYPE_Q8_0, DS4_TYPE_F16, DS4_TYPE_BF16, DS4_TYPE_F32},
    [TS_EXPERT] = {DS4_TYPE_IQ2_XXS, DS4_TYPE_Q2_K, DS4_TYPE_Q4_K, DS4_TYPE_Q8_0,
                   DS4_TYPE_F16, DS4_TYPE_BF16, DS4_TYPE_F32},
    [TS_I32] = {DS4_TYPE_I32},
};
static const uint32_t k_class_count[TS_COUNT] = {1, 3, 4, 7, 1};

static bool class_allows(int cls, uint32_t type) {
    for (uint32_t i = 0; i < k_class_count[cls]; i++)
        if (k_class_types[cls][i] == type) return true;
    return false;
}

static void class_names(int cls, char *buf, size_t cap) {
    size_t n = 0;
    buf[0] = '\0';
    for (uint32_t i = 0; i < k_class_count[cls] && n < cap; i++) {
        const char *sep = i == 0 ? "" : i + 1 == k_class_count[cls] ? " or " : ", ";
        int w = snprintf(buf + n, cap - n, "%s%s", sep, ds4_type_name(k_class_types[cls][i]));
        if (w < 0) break;
        n += (size_t)w;
    }
}

static void dims_str(const uint64_t *ne, uint32_t n_dims, char *buf, size_t cap) {
    size_t n = 0;
    buf[0] = '\0';
    for (uint32_t i = 0; i < n_dims && n < cap; i++) {
        int w = snprintf(buf + n, cap - n, "%s%" PRIu64, i == 0 ? "[" : ", ", ne[i]);
        if (w < 0) return;
        n += (size_t)w;
    }
    if (n < cap) snprintf(buf + n, cap - n, "]");
}

/* What one tensor must look like. */
typedef struct tspec {
    const char *name;  /* suffix after "blk.N." (or the full global name) */
    int cls;
    uint32_t n_dims;
    uint64_t ne[GGUF_MAX_DIMS];
} tspec;

static tspec T1(const char *name, int cls, uint64_t a) {
    return (tspec){name, cls, 1, {a, 1, 1, 1}};
}
static tspec T2(const char *name, int cls, uint64_t a, uint64_t b) {
    return (tspec){name, cls, 2, {a, b, 1, 1}};
}
static tspec T3(const char *name, int cls, uint64_t a, uint64_t b, uint64_t c) {
    return (tspec){name, cls, 3, {a, b, c, 1}};
}

/* Find and check one tensor.  il < 0: a global tensor.  *out is NULL when
 * an optional tensor is absent. */
static int bind_one(const gguf_file *f, int il, tspec s, bool optional,
                    const gguf_tensor **out, ds4_error *err) {
    char name[160];
    if (il < 0) snprintf(name, sizeof(name), "%s", s.name);
    else snprintf(name, sizeof(name), "blk.%d.%s", il, s.name);
    *out = NULL;
    const gguf_tensor *t = gguf_find_tensor(f, name);
    if (!t) {
        if (optional) return 0;
        return ds4_fail(err, "missing tensor '%s'", name);
    }
    for (uint32_t d = 0; d < GGUF_MAX_DIMS; d++) {
        if (t->ne[d] == s.ne[d]) continue;
        char got[96], want[96];
        dims_str(t->ne, t->n_dims, got, sizeof(got));
        dims_str(s.ne, s.n_dims, want, sizeof(want));
        return ds4_fail(err, "tensor '%s': dims %s expected %s", name, got, want);
    }
    if (!class_allows(s.cls, t->type)) {
        char want[96];
        class_names(s.cls, want, sizeof(want));
        return ds4_fail(err, "tensor '%s': type %s expected %s", name, ds4_type_name(t->type),
                        want);
    }
    *out = t;
    return 0;
}

/* Every routed id must name an existing expert. */
static int check_tid2eid(const gguf_tensor *t, uint32_t n_expert, ds4_error *err) {
    for (uint64_t i = 0; i < t->n_elements; i++) {
        int32_t v;
        memcpy(&v, t->data + i * 4, 4); /* GGUF is little-endian, as are our hosts */
        if (v < 0 || (uint32_t)v >= n_expert) {
            char name[160];
            return ds4_fail(err, "tensor '%s': token %" PRIu64 " slot %" PRIu64
                            " routes to expert %" PRId32 " (expected 0..%" PRIu32 ")",
                            gguf_str_copy(t->name, name, sizeof(name)), i / t->ne[0],
                            i % t->ne[0], v, n_expert - 1);
        }
    }
    return 0;
}

static int bind_hc(const gguf_file *f, int il, const ds4_hparams *hp, ds4_layer *l,
                   ds4_error *err) {
    uint64_t hc_in = (uint64_t)hp->n_hc * hp->n_embd;
    uint64_t hc_mix = (uint64_t)hp->n_hc * (2 + hp->n_hc);
    if (bind_one(f, il, T2("hc_attn_fn.weight", TS_PLAIN, hc_in, hc_mix), false,
                 &l->hc_attn_fn, err) ||
        bind_one(f, il, T1("hc_attn_scale.weight", TS_F32, 3), false, &l->hc_attn_scale, err) ||
        bind_one(f, il, T1("hc_attn_base.weight", TS_F32, hc_mix), false, &l->hc_attn_base,
                 err) ||
        bind_one(f, il, T2("hc_ffn_fn.weight", TS_PLAIN, hc_in, hc_mix), false, &l->hc_ffn_fn,
                 err) ||
        bind_one(f, il, T1("hc_ffn_scale.weight", TS_F32, 3), false, &l->hc_ffn_scale, err) ||
        bind_one(f, il, T1("hc_ffn_base.weight", TS_F32, hc_mix), false, &l->hc_ffn_base, err))
        return -1;
    return 0;
}

static int bind_attn(const gguf_file *f, int il, const ds4_hparams *hp, ds4_layer *l,
                     ds4_error *err) {
    uint64_t e = hp->n_embd, q = hp->q_lora, hd = hp->head_dim;
    uint64_t qh = (uint64_t)hp->n_head * hd;
    uint64_t ow = (uint64_t)hp->o_groups * hp->o_lora;
    if (bind_one(f, il, T1("attn_norm.weight", TS_F32, e), false, &l->attn_norm, err) ||
        bind_one(f, il, T2("attn_q_a.weight", TS_DENSE, e, q), false, &l->attn_q_a, err) ||
        bind_one(f, il, T1("attn_q_a_norm.weight", TS_F32, q), false, &l->attn_q_a_norm, err) ||
        bind_one(f, il, T2("attn_q_b.weight", TS_DENSE, q, qh), false, &l->attn_q_b, err) ||
        bind_one(f, il, T2("attn_kv.weight", TS_DENSE, e, hd), false, &l->attn_kv, err) ||
        bind_one(f, il, T1("attn_kv_a_norm.weight", TS_F32, hd), false, &l->attn_kv_a_norm,
                 err) ||
        bind_one(f, il, T1("attn_sinks.weight", TS_F32, hp->n_head), false, &l->attn_sinks,
                 err) ||
        bind_one(f, il, T2("attn_output_a.weight", TS_DENSE, qh / hp->o_groups, ow), false,
                 &l->attn_output_a, err) ||
        bind_one(f, il, T2("attn_output_b.weight", TS_DENSE, ow, e), false, &l->attn_output_b,
                 err))
        return -1;
    return 0;
}

/* Compressor of a layer with ratio != 0, and the indexer of a ratio-4 layer. */
static int bind_compress(const gguf_file *f, int il, const ds4_hparams *hp, ds4_layer *l,
                         ds4_error *err) {
    if (l->ratio == 0) return 0;
    uint64_t e = hp->n_embd, hd = hp->head_dim, r = l->ratio;
    uint64_t w = (l->ratio == 4 ? 2 : 1) * hd;
    if (bind_one(f, il, T2("attn_compressor_ape.weight", TS_PLAIN, w, r), false, &l->comp_ape,
                 err) ||
        bind_one(f, il, T2("attn_compressor_kv.weight", TS_PLAIN, e, w), false, &l->comp_kv,
                 err) ||
        bind_one(f, il, T2("attn_compressor_gate.weight", TS_PLAIN, e, w), false, &l->comp_gate,
                 err) ||
        bind_one(f, il, T1("attn_compressor_norm.weight", TS_F32, hd), false, &l->comp_norm,
                 err))
        return -1;
    if (l->ratio != 4) return 0;
    uint64_t id = hp->idx_head_dim, iw = 2 * id;
    if (bind_one(f, il, T2("indexer.attn_q_b.weight", TS_PLAIN, hp->q_lora,
                           (uint64_t)hp->n_idx_head * id), false, &l->idx_q_b, err) ||
        bind_one(f, il, T2("indexer.proj.weight", TS_PLAIN, e, hp->n_idx_head), false,
                 &l->idx_proj, err) ||
        bind_one(f, il, T2("indexer_compressor_ape.weight", TS_PLAIN, iw, 4), false,
                 &l->idx_comp_ape, err) ||
        bind_one(f, il, T2("indexer_compressor_kv.weight", TS_PLAIN, e, iw), false,
                 &l->idx_comp_kv, err) ||
        bind_one(f, il, T2("indexer_compressor_gate.weight", TS_PLAIN, e, iw), false,
                 &l->idx_comp_gate, err) ||
        bind_one(f, il, T1("indexer_compressor_norm.weight", TS_F32, id), false,
                 &l->idx_comp_norm, err))
        return -1;
    return 0;
}

static int bind_ffn(const gguf_file *f, int il, const ds4_hparams *hp, ds4_layer *l,
                    ds4_error *err) {
    uint64_t e = hp->n_embd, ff = hp->n_ff_exp, nx = hp->n_expert;
    uint64_t sh = (uint64_t)hp->n_ff_exp * hp->n_expert_shared;
    if (bind_one(f, il, T1("ffn_norm.weight", TS_F32, e), false, &l->ffn_norm, err) ||
        bind_one(f, il, T2("ffn_gate_inp.weight", TS_PLAIN, e, nx), false, &l->ffn_gate_inp,
                 err) ||
        bind_one(f, il, T1("exp_probs_b.bias", TS_F32, nx), true, &l->exp_probs_b, err) ||
        bind_one(f, il, T2("ffn_gate_shexp.weight", TS_DENSE, e, sh), false, &l->ffn_gate_shexp,
                 err) ||
        bind_one(f, il, T2("ffn_up_shexp.weight", TS_DENSE, e, sh), false, &l->ffn_up_shexp,
                 err) ||
        bind_one(f, il, T2("ffn_down_shexp.weight", TS_DENSE, sh, e), false, &l->ffn_down_shexp,
                 err) ||
        bind_one(f, il, T3("ffn_gate_exps.weight", TS_EXPERT, e, ff, nx), false,
                 &l->ffn_gate_exps, err) ||
        bind_one(f, il, T3("ffn_up_exps.weight", TS_EXPERT, e, ff, nx), false, &l->ffn_up_exps,
                 err) ||
        bind_one(f, il, T3("ffn_down_exps.weight", TS_EXPERT, ff, e, nx), false,
                 &l->ffn_down_exps, err))
        return -1;
    if (l->ffn_up_exps->type != l->ffn_gate_exps->type)
        return ds4_fail(err, "tensor 'blk.%d.ffn_up_exps.weight': type %s differs from "
                        "ffn_gate_exps type %s (gate and up must match)", il,
                        ds4_type_name(l->ffn_up_exps->type),
                        ds4_type_name(l->ffn_gate_exps->type));
    if (!l->hash_routed) return 0;
    if (bind_one(f, il, T2("ffn_gate_tid2eid.weight", TS_I32, hp->n_expert_used, hp->n_vocab),
                 false, &l->tid2eid, err))
        return -1;
    return check_tid2eid(l->tid2eid, hp->n_expert, err);
}

static int bind_globals(ds4_model *m, const gguf_file *f, ds4_error *err) {
    const ds4_hparams *hp = &m->hp;
    uint64_t e = hp->n_embd, v = hp->n_vocab, hc = hp->n_hc;
    if (bind_one(f, -1, T2("token_embd.weight", TS_PLAIN, e, v), false, &m->token_embd, err) ||
        bind_one(f, -1, T2("output.weight", TS_DENSE, e, v), false, &m->output, err) ||
        bind_one(f, -1, T1("output_norm.weight", TS_F32, e), false, &m->output_norm, err) ||
        bind_one(f, -1, T2("output_hc_fn.weight", TS_PLAIN, hc * e, hc), false, &m->output_hc_fn,
                 err) ||
        bind_one(f, -1, T1("output_hc_base.weight", TS_F32, hc), false, &m->output_hc_base,
                 err) ||
        bind_one(f, -1, T1("output_hc_scale.weight", TS_F32, 1), false, &m->output_hc_scale,
                 err))
        return -1;
    return 0;
}

static int bind_layer(const gguf_file *f, int il, const ds4_hparams *hp, ds4_layer *l,
                      ds4_error *err) {
    l->ratio = hp->compress_ratio[il];
    l->hash_routed = (uint32_t)il < hp->n_hash_layers;
    if (bind_hc(f, il, hp, l, err) || bind_attn(f, il, hp, l, err) ||
        bind_compress(f, il, hp, l, err) || bind_ffn(f, il, hp, l, err))
        return -1;
    return 0;
}

static int read_names(ds4_model *m, const gguf_file *f, ds4_error *err) {
    gguf_str s;
    const char *key = "general.architecture";
    if (gguf_find_kv(f, key)) {
        if (gguf_get_str(f, key, &s, err) != 0) return -1;
        gguf_str_copy(s, m->arch, sizeof(m->arch));
        if (!gguf_str_eq(s, "deepseek4"))
            return ds4_fail(err, "key '%s': '%s', expected 'deepseek4'", key, m->arch);
    } else {
        snprintf(m->arch, sizeof(m->arch), "deepseek4");
    }
    key = "general.name";
    if (gguf_find_kv(f, key)) {
        if (gguf_get_str(f, key, &s, err) != 0) return -1;
        gguf_str_copy(s, m->name, sizeof(m->name));
    }
    return 0;
}

int ds4_model_bind(ds4_model *m, const gguf_file *f, ds4_error *err) {
    memset(m, 0, sizeof(*m));
    m->file = f;
    if (read_names(m, f, err) != 0) return -1;
    if (read_hparams(f, &m->hp, err) != 0) return -1;
    if (bind_globals(m, f, err) != 0) return -1;
    for (uint32_t il = 0; il < m->hp.n_layer; il++)
        if (bind_layer(f, (int)il, &m->hp, &m->layers[il], err) != 0) return -1;
    return 0;
}

/* ---------------------------------------------------------------------- */
/* --info                                                                  */
/* ---------------------------------------------------------------------- */

/* Number of tensors bound to the layer (non-NULL pointers). */
static uint32_t layer_bound(const ds4_layer *l) {
    const gguf_tensor *const p[] = {
        l->hc_attn_fn, l->hc_attn_scale, l->hc_attn_base, l->hc_ffn_fn, l->hc_ffn_scale,
        l->hc_ffn_base, l->attn_norm, l->attn_q_a, l->attn_q_a_norm, l->attn_q_b, l->attn_kv,
        l->attn_kv_a_norm, l->attn_sinks, l->attn_output_a, l->attn_output_b, l->comp_ape,
        l->comp_kv, l->comp_gate, l->comp_norm, l->idx_q_b, l->idx_proj, l->idx_comp_ape,
        l->idx_comp_kv, l->idx_comp_gate, l->idx_comp_norm, l->ffn_norm, l->ffn_gate_inp,
        l->exp_probs_b, l->tid2eid, l->ffn_gate_shexp, l->ffn_up_shexp, l->ffn_down_shexp,
        l->ffn_gate_exps, l->ffn_up_exps, l->ffn_down_exps,
    };
    uint32_t n = 0;
    for (size_t i = 0; i < sizeof(p) / sizeof(p[0]); i++) n += p[i] != NULL;
    return n;
}

void ds4_model_write_hparams(gguf_writer *w, const ds4_hparams *hp, const char *name) {
    gguf_w_str(w, "general.architecture", "deepseek4");
    gguf_w_str(w, "general.name", name);
    gguf_w_u32(w, KP "block_count", hp->n_layer);
    gguf_w_u64(w, KP "context_length", hp->n_ctx_train);
    gguf_w_u32(w, KP "embedding_length", hp->n_embd);
    gguf_w_u32(w, KP "vocab_size", hp->n_vocab);
    gguf_w_u32(w, KP "attention.head_count", hp->n_head);
    gguf_w_u32(w, KP "attention.head_count_kv", hp->n_head_kv);
    gguf_w_u32(w, KP "attention.key_length", hp->head_dim);
    gguf_w_u32(w, KP "attention.value_length", hp->head_dim);
    gguf_w_u32(w, KP "rope.dimension_count", hp->n_rot);
    gguf_w_u32(w, KP "attention.q_lora_rank", hp->q_lora);
    gguf_w_u32(w, KP "attention.output_lora_rank", hp->o_lora);
    gguf_w_u32(w, KP "attention.output_group_count", hp->o_groups);
    gguf_w_u32(w, KP "expert_count", hp->n_expert);
    gguf_w_u32(w, KP "expert_used_count", hp->n_expert_used);
    gguf_w_u32(w, KP "expert_feed_forward_length", hp->n_ff_exp);
    gguf_w_u32(w, KP "expert_shared_count", hp->n_expert_shared);
    gguf_w_u32(w, KP "hash_layer_count", hp->n_hash_layers);
    gguf_w_u32(w, KP "expert_group_count", 0);
    gguf_w_u32(w, KP "expert_group_used_count", 0);
    gguf_w_u32(w, KP "attention.sliding_window", hp->n_swa);
    gguf_w_u32(w, KP "attention.indexer.head_count", hp->n_idx_head);
    gguf_w_u32(w, KP "attention.indexer.key_length", hp->idx_head_dim);
    gguf_w_u32(w, KP "attention.indexer.top_k", hp->idx_top_k);
    gguf_w_u32(w, KP "hyper_connection.count", hp->n_hc);
    gguf_w_u32(w, KP "hyper_connection.sinkhorn_iterations", hp->n_sinkhorn);
    gguf_w_f32(w, KP "hyper_connection.epsilon", hp->hc_eps);
    int32_t ratios[DS4_MAX_LAYERS];
    for (uint32_t il = 0; il < hp->n_layer; il++) ratios[il] = (int32_t)hp->compress_ratio[il];
    gguf_w_arr(w, KP "attention.compress_ratios", GGUF_VT_INT32, ratios, hp->n_layer);
    gguf_w_arr(w, KP "swiglu_clamp_exp", GGUF_VT_FLOAT32, hp->swiglu_clamp, hp->n_layer);
    if (hp->rope_orig_ctx <= UINT32_MAX)
        gguf_w_u32(w, KP "rope.scaling.original_context_length", (uint32_t)hp->rope_orig_ctx);
    else
        gguf_w_u64(w, KP "rope.scaling.original_context_length", hp->rope_orig_ctx);
    gguf_w_f32(w, KP "rope.freq_base", hp->rope_base);
    gguf_w_f32(w, KP "rope.scaling.factor", hp->rope_scale);
    gguf_w_f32(w, KP "rope.scaling.yarn_beta_fast", hp->yarn_beta_fast);
    gguf_w_f32(w, KP "rope.scaling.yarn_beta_slow", hp->yarn_beta_slow);
    gguf_w_f32(w, KP "attention.compress_rope_freq_base", hp->rope_compress_base);
    gguf_w_f32(w, KP "expert_weights_scale", hp->expert_weights_scale);
    gguf_w_f32(w, KP "attention.layer_norm_rms_epsilon", hp->rms_eps);
    gguf_w_bool(w, KP "expert_weights_norm", hp->expert_weights_norm);
}

static void print_hparams(const ds4_hparams *hp, FILE *fp) {
    const struct {
        const char *name;
        uint64_t v;
    } ints[] = {
        {"n_layer", hp->n_layer},           {"n_embd", hp->n_embd},
        {"n_vocab", hp->n_vocab},           {"n_head", hp->n_head},
        {"n_head_kv", hp->n_head_kv},       {"head_dim", hp->head_dim},
        {"n_rot", hp->n_rot},               {"q_lora", hp->q_lora},
        {"o_lora", hp->o_lora},             {"o_groups", hp->o_groups},
        {"n_expert", hp->n_expert},         {"n_expert_used", hp->n_expert_used},
        {"n_ff_exp", hp->n_ff_exp},         {"n_expert_shared", hp->n_expert_shared},
        {"n_hash_layers", hp->n_hash_layers}, {"n_swa", hp->n_swa},
        {"n_idx_head", hp->n_idx_head},     {"idx_head_dim", hp->idx_head_dim},
        {"idx_top_k", hp->idx_top_k},       {"n_hc", hp->n_hc},
        {"n_sinkhorn", hp->n_sinkhorn},     {"rope_orig_ctx", hp->rope_orig_ctx},
        {"n_ctx_train", hp->n_ctx_train},
    };
    const struct {
        const char *name;
        float v;
    } flts[] = {
        {"hc_eps", hp->hc_eps},
        {"rms_eps", hp->rms_eps},
        {"rope_base", hp->rope_base},
        {"rope_compress_base", hp->rope_compress_base},
        {"rope_scale", hp->rope_scale},
        {"yarn_beta_fast", hp->yarn_beta_fast},
        {"yarn_beta_slow", hp->yarn_beta_slow},
        {"expert_weights_scale", hp->expert_weights_scale},
    };
    for (size_t i = 0; i < sizeof(ints) / sizeof(ints[0]); i++)
        fprintf(fp, "  %-22s %" PRIu64 "\n", ints[i].name, ints[i].v);
    for (size_t i = 0; i < sizeof(flts) / sizeof(flts[0]); i++)
        fprintf(fp, "  %-22s %g\n", flts[i].name, (double)flts[i].v);
    fprintf(fp, "  %-22s %s\n", "expert_weights_norm", hp->expert_weights_norm ? "true" : "false");
}

static void print_layers(const ds4_model *m, FILE *fp) {
    const ds4_hparams *hp = &m->hp;
    uint32_t n0 = 0, n4 = 0, n128 = 0;
    for (uint32_t il = 0; il < hp->n_layer; il++) {
        n0 += hp->compress_ratio[il] == 0;
        n4 += hp->compress_ratio[il] == 4;
        n128 += hp->compress_ratio[il] == 128;
    }
    fprintf(fp, "layers: %" PRIu32 " window, %" PRIu32 " ratio-4, %" PRIu32
            " ratio-128; hash-routed: ", n0, n4, n128);
    if (hp->n_hash_layers == 0) fprintf(fp, "none\n");
    else if (hp->n_hash_layers == 1) fprintf(fp, "0\n");
    else fprintf(fp, "0-%" PRIu32 "\n", hp->n_hash_layers - 1);

    fprintf(fp, "compress ratios:");
    for (uint32_t il = 0; il < hp->n_layer; il++) fprintf(fp, " %" PRIu32, hp->compress_ratio[il]);
    fprintf(fp, "\nswiglu clamp:");
    bool same = true;
    for (uint32_t il = 1; il < hp->n_layer; il++)
        same &= hp->swiglu_clamp[il] == hp->swiglu_clamp[0];
    if (same) {
        fprintf(fp, " %g (all layers)\n", (double)hp->swiglu_clamp[0]);
    } else {
        for (uint32_t il = 0; il < hp->n_layer; il++)
            fprintf(fp, " %g", (double)hp->swiglu_clamp[il]);
        fprintf(fp, "\n");
    }
}

static void print_bytes(const ds4_model *m, FILE *fp) {
    const gguf_file *f = m->file;
    uint64_t count[DS4_TYPE_COUNT] = {0}, bytes[DS4_TYPE_COUNT] = {0};
    uint64_t other_n = 0, other_b = 0, total = 0;
    for (uint64_t i = 0; i < f->n_tensors; i++) {
        const gguf_tensor *t = &f->tensors[i];
        total += t->nbytes;
        if (t->type < DS4_TYPE_COUNT) {
            count[t->type]++;
            bytes[t->type] += t->nbytes;
        } else {
            other_n++;
            other_b += t->nbytes;
        }
    }
    uint32_t bound = 6;
    for (uint32_t il = 0; il < m->hp.n_layer; il++) bound += layer_bound(&m->layers[il]);
    fprintf(fp, "tensors: %" PRIu64 " in file, %" PRIu32 " bound\n", f->n_tensors, bound);
    const double mib = 1024.0 * 1024.0;
    fprintf(fp, "  %-8s %8s %18s %12s\n", "type", "tensors", "bytes", "MiB");
    for (uint32_t t = 0; t < DS4_TYPE_COUNT; t++) {
        if (!count[t]) continue;
        fprintf(fp, "  %-8s %8" PRIu64 " %18" PRIu64 " %12.2f\n", ds4_type_name(t), count[t],
                bytes[t], (double)bytes[t] / mib);
    }
    if (other_n)
        fprintf(fp, "  %-8s %8" PRIu64 " %18" PRIu64 " %12.2f\n", "other", other_n, other_b,
                (double)other_b / mib);
    fprintf(fp, "total: %" PRIu64 " bytes (%.2f MiB, %.2f GiB)\n", total, (double)total / mib,
            (double)total / (mib * 1024.0));
}

void ds4_model_print_info(const ds4_model *m, FILE *fp) {
    fprintf(fp, "model: %s\n", m->name[0] ? m->name : "(unnamed)");
    fprintf(fp, "architecture: %s\n", m->arch);
    fprintf(fp, "hyperparameters:\n");
    print_hparams(&m->hp, fp);
    print_layers(m, fp);
    print_bytes(m, fp);
}
