/* testmodel.c - random deepseek4 GGUFs with the Flash layout at any width.
 *
 * The generator writes what a published ds4 GGUF holds: general.* keys,
 * every deepseek4.* hyperparameter key model.c reads (RoPE/YaRN/eps/scale
 * constants as in Flash, the Flash layer pattern 0,0,4,128,4,128,...), a
 * small but consistent GPT-2 style tokenizer, and every tensor of the
 * inventory with the dims model.c expects.
 *
 * Tokenizer: id 0 BOS, 1 EOS, 2..6 the other five strings ds4 treats as
 * special, then the 256 byte-level tokens (GPT-2 byte-to-unicode map), then
 * filler tokens, each the concatenation of two byte tokens with a matching
 * merge "A B" (rank = merge index), so BPE over the file's vocab works.
 *
 * Values: each tensor draws from its own generator seeded by (seed, name),
 * so the same options give the same bytes and tensors do not depend on the
 * order they are written in.  Matrices are N(0, 1/fan_in) (std 1/sqrt(fan_in)),
 * norms 1 + N(0, 0.1^2), sinks/biases/HC bases small, HC scales around 0.5,
 * and tid2eid picks n_expert_used distinct experts per token.  Values are
 * quantized row by row with ds4_quantize_row to F32/F16/BF16/Q8_0; the
 * options are validated first so every row is whole blocks.
 *
 * The super-block formats (Q2_K, Q4_K, IQ2_XXS) are not quantized: their
 * quantizers search for the best codes at several us per value, which would
 * make the default model take tens of seconds.  Their blocks get uniformly
 * random codes instead (every grid index, sign pattern, scale and min
 * occurs), then d (and dmin) are fitted so the block has mean ~0 and RMS
 * equal to the tensor's std.  The result is a valid block of the format with
 * the intended scale, costs one dequantization, and exercises all the codes
 * a kernel must decode.
 */
#include "testmodel.h"

#include <inttypes.h>
#include <math.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gguf.h"
#include "gguf_write.h"
#include "model.h"
#include "quant.h"

#define N_SPECIAL 7
#define N_BYTE_TOKENS 256
#define MIN_VOCAB (N_SPECIAL + N_BYTE_TOKENS)
#define MAX_VOCAB (MIN_VOCAB + 256 * 256)
#define TM_HC 4            /* hyper-connection streams, as Flash */
#define TM_MAX_DIM (1u << 20)

void ds4_testmodel_default_opts(ds4_testmodel_opts *o) {
    memset(o, 0, sizeof(*o));
    o->n_layer = 4;
    o->n_embd = 256;
    o->n_vocab = 512;
    o->n_head = 4;
    o->head_dim = 64;
    o->n_rot = 16;
    o->q_lora = 64;
    o->o_lora = 32;
    o->o_groups = 2;
    o->n_expert = 8;
    o->n_expert_used = 2;
    o->n_ff_exp = 256;
    o->n_hash_layers = 3;
    o->n_swa = 8;
    o->n_idx_head = 2;
    o->idx_head_dim = 32;
    o->idx_top_k = 4;
    o->dense_type = DS4_TYPE_Q8_0;
    o->exp_gate_up_type = DS4_TYPE_IQ2_XXS;
    o->exp_down_type = DS4_TYPE_Q2_K;
    o->seed = 1;
}

/* Flash pattern: layers 0-1 window only, then 4 on even and 128 on odd. */
static uint32_t layer_ratio(uint32_t il) {
    if (il < 2) return 0;
    return il % 2 == 0 ? 4 : 128;
}

/* ---------------------------------------------------------------------- */
/* Option validation                                                       */
/* ---------------------------------------------------------------------- */

static bool type_in(uint32_t t, const uint32_t *set, size_t n) {
    for (size_t i = 0; i < n; i++)
        if (set[i] == t) return true;
    return false;
}

/* A row of n values of type t must be whole blocks. */
static int check_rows(uint32_t t, const char *type_opt, uint64_t n, const char *what,
                      ds4_error *err) {
    if (ds4_row_bytes(t, n) != 0) return 0;
    const ds4_type_traits *tr = ds4_type_get(t);
    return ds4_fail(err, "test model: %s %" PRIu64 " is not a multiple of %" PRIu32
                    ", the block size of %s %s", what, n, tr ? tr->block_size : 0, type_opt,
                    ds4_type_name(t));
}

static int check_types(const ds4_testmodel_opts *o, ds4_error *err) {
    static const uint32_t dense[] = {DS4_TYPE_F32, DS4_TYPE_F16, DS4_TYPE_BF16, DS4_TYPE_Q8_0};
    static const uint32_t exps[] = {DS4_TYPE_F32,  DS4_TYPE_F16,  DS4_TYPE_BF16,
                                    DS4_TYPE_Q8_0, DS4_TYPE_IQ2_XXS, DS4_TYPE_Q2_K,
                                    DS4_TYPE_Q4_K};
    if (!type_in(o->dense_type, dense, sizeof(dense) / sizeof(dense[0])))
        return ds4_fail(err, "test model: dense_type %s (%" PRIu32 ") not allowed "
                        "(F32, F16, BF16, Q8_0)", ds4_type_name(o->dense_type), o->dense_type);
    const struct {
        const char *opt;
        uint32_t t;
    } et[] = {{"exp_gate_up_type", o->exp_gate_up_type}, {"exp_down_type", o->exp_down_type}};
    for (size_t i = 0; i < 2; i++)
        if (!type_in(et[i].t, exps, sizeof(exps) / sizeof(exps[0])))
            return ds4_fail(err, "test model: %s %s (%" PRIu32 ") not allowed (F32, F16, BF16, "
                            "Q8_0, IQ2_XXS, Q2_K, Q4_K)", et[i].opt, ds4_type_name(et[i].t),
                            et[i].t);
    uint32_t d = o->dense_type;
    uint64_t oa_in = (uint64_t)o->n_head * o->head_dim / o->o_groups;
    if (check_rows(d, "dense_type", o->n_embd, "n_embd", err) ||
        check_rows(d, "dense_type", o->q_lora, "q_lora", err) ||
        check_rows(d, "dense_type", oa_in, "n_head*head_dim/o_groups", err) ||
        check_rows(d, "dense_type", (uint64_t)o->o_groups * o->o_lora, "o_groups*o_lora", err) ||
        check_rows(d, "dense_type", o->n_ff_exp, "n_ff_exp", err) ||
        check_rows(o->exp_gate_up_type, "exp_gate_up_type", o->n_embd, "n_embd", err) ||
        check_rows(o->exp_down_type, "exp_down_type", o->n_ff_exp, "n_ff_exp", err))
        return -1;
    return 0;
}

static int check_opts(const ds4_testmodel_opts *o, ds4_error *err) {
    const struct {
        const char *name;
        uint32_t v;
    } pos[] = {
        {"n_embd", o->n_embd},         {"n_head", o->n_head},
        {"head_dim", o->head_dim},     {"q_lora", o->q_lora},
        {"o_lora", o->o_lora},         {"o_groups", o->o_groups},
        {"n_expert", o->n_expert},     {"n_expert_used", o->n_expert_used},
        {"n_ff_exp", o->n_ff_exp},     {"n_swa", o->n_swa},
        {"n_idx_head", o->n_idx_head}, {"idx_head_dim", o->idx_head_dim},
        {"idx_top_k", o->idx_top_k},
    };
    for (size_t i = 0; i < sizeof(pos) / sizeof(pos[0]); i++)
        if (pos[i].v < 1 || pos[i].v > TM_MAX_DIM)
            return ds4_fail(err, "test model: %s %" PRIu32 " out of range 1..%u", pos[i].name,
                            pos[i].v, TM_MAX_DIM);
    if (o->n_layer < 1 || o->n_layer > DS4_MAX_LAYERS)
        return ds4_fail(err, "test model: n_layer %" PRIu32 " out of range 1..%d", o->n_layer,
                        DS4_MAX_LAYERS);
    if (o->n_vocab < MIN_VOCAB || o->n_vocab > MAX_VOCAB)
        return ds4_fail(err, "test model: n_vocab %" PRIu32 " out of range %d..%d (7 special "
                        "and 256 byte tokens come first)", o->n_vocab, MIN_VOCAB, MAX_VOCAB);
    if (o->n_rot % 2 != 0 || o->n_rot > o->head_dim)
        return ds4_fail(err, "test model: n_rot %" PRIu32 " must be even and <= head_dim %" PRIu32,
                        o->n_rot, o->head_dim);
    if (o->n_layer > 2 && o->n_rot > o->idx_head_dim)
        return ds4_fail(err, "test model: n_rot %" PRIu32 " must be <= idx_head_dim %" PRIu32,
                        o->n_rot, o->idx_head_dim);
    if (o->n_layer > 2 && (o->idx_head_dim & (o->idx_head_dim - 1)) != 0)
        return ds4_fail(err, "test model: idx_head_dim %" PRIu32 " must be a power of two",
                        o->idx_head_dim);
    if (o->n_head % o->o_groups != 0)
        return ds4_fail(err, "test model: o_groups %" PRIu32 " must divide n_head %" PRIu32,
                        o->o_groups, o->n_head);
    if (o->n_expert_used > o->n_expert)
        return ds4_fail(err, "test model: n_expert_used %" PRIu32 " > n_expert %" PRIu32,
                        o->n_expert_used, o->n_expert);
    if (o->n_hash_layers > o->n_layer)
        return ds4_fail(err, "test model: n_hash_layers %" PRIu32 " > n_layer %" PRIu32,
                        o->n_hash_layers, o->n_layer);
    return check_types(o, err);
}

/* ---------------------------------------------------------------------- */
/* Random numbers (splitmix64; one stream per tensor)                      */
/* ---------------------------------------------------------------------- */

typedef struct tm_rng {
    uint64_t s;
} tm_rng;

static uint64_t rng_u64(tm_rng *r) {
    uint64_t z = (r->s += 0x9E3779B97F4A7C15ULL);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    return z ^ (z >> 31);
}

/* Uniform in (0, 1]. */
static double rng_unit(tm_rng *r) {
    return ((double)(rng_u64(r) >> 11) + 1.0) * (1.0 / 9007199254740992.0);
}

static float rng_normal(tm_rng *r) {
    double u1 = rng_unit(r), u2 = rng_unit(r);
    return (float)(sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2));
}

static tm_rng rng_for(uint64_t seed, const char *name) {
    uint64_t h = 0xcbf29ce484222325ULL; /* FNV-1a of the tensor name */
    for (const char *p = name; *p; p++) h = (h ^ (uint8_t)*p) * 0x100000001b3ULL;
    tm_rng r = {seed ^ h};
    rng_u64(&r);
    return r;
}

/* ---------------------------------------------------------------------- */
/* Tensors                                                                 */
/* ---------------------------------------------------------------------- */

typedef struct gen {
    const ds4_testmodel_opts *o;
    gguf_writer *w;
    uint32_t plain_type; /* HC, router, compressor, indexer, embedding */
} gen;

/* Formats that get random codes rather than quantized values. */
static bool random_codes(uint32_t type) {
    return type == DS4_TYPE_Q2_K || type == DS4_TYPE_Q4_K || type == DS4_TYPE_IQ2_XXS;
}

static void set_f16(uint8_t *blk, size_t off, double v) {
    uint16_t h = ds4_f32_to_f16((float)v);
    memcpy(blk + off, &h, sizeof(h));
}

/* One block of random codes whose values have mean ~0 and RMS ~sigma.
 * With the codes fixed a value is d*a_i - dmin*b_i; a and b are read back
 * by dequantizing with (d, dmin) = (1, 0) and (0, 1). */
static int random_block(uint32_t type, tm_rng *r, float sigma, uint8_t *blk) {
    size_t bytes = (size_t)ds4_row_bytes(type, DS4_QK_K), d_off, m_off = 0;
    bool has_min = type != DS4_TYPE_IQ2_XXS;
    if (type == DS4_TYPE_Q2_K) {
        d_off = offsetof(ds4_block_q2_K, d);
        m_off = offsetof(ds4_block_q2_K, dmin);
    } else if (type == DS4_TYPE_Q4_K) {
        d_off = offsetof(ds4_block_q4_K, d);
        m_off = offsetof(ds4_block_q4_K, dmin);
    } else {
        d_off = offsetof(ds4_block_iq2_xxs, d);
    }
    for (size_t i = 0; i < bytes; i += 8) {
        uint64_t x = rng_u64(r);
        memcpy(blk + i, &x, bytes - i < 8 ? bytes - i : 8);
    }
    float a[DS4_QK_K], b[DS4_QK_K];
    set_f16(blk, d_off, 1.0);
    if (has_min) set_f16(blk, m_off, 0.0);
    if (ds4_dequantize_row(type, blk, a, DS4_QK_K) != 0) return -1;
    double k = 0.0;
    if (has_min) {
        set_f16(blk, d_off, 0.0);
        set_f16(blk, m_off, 1.0);
        if (ds4_dequantize_row(type, blk, b, DS4_QK_K) != 0) return -1;
        double sa = 0.0, sb = 0.0; /* b_i <= 0: the min is subtracted */
        for (int i = 0; i < DS4_QK_K; i++) {
            sa += a[i];
            sb -= b[i];
        }
        k = sb > 0.0 ? sa / sb : 0.0;
    }
    double s2 = 0.0;
    for (int i = 0; i < DS4_QK_K; i++) {
        double v = a[i] + (has_min ? k * b[i] : 0.0);
        s2 += v * v;
    }
    double rms = sqrt(s2 / DS4_QK_K), d = rms > 0.0 ? sigma / rms : 0.0;
    set_f16(blk, d_off, d);
    if (has_min) set_f16(blk, m_off, k * d);
    return 0;
}

/* Write one tensor of center + scale * N(0,1) values (random codes of RMS
 * scale for the super-block formats, center then 0). */
static int put(gen *g, const char *name, uint32_t n_dims, uint64_t a, uint64_t b, uint64_t c,
               uint32_t type, float center, float scale, ds4_error *err) {
    uint64_t ne[GGUF_MAX_DIMS] = {a, b, c, 1};
    uint64_t rows = b * c, rb = ds4_row_bytes(type, a);
    if (rb == 0)
        return ds4_fail(err, "test model: tensor '%s': rows of %" PRIu64 " values do not fit %s",
                        name, a, ds4_type_name(type));
    uint8_t *data = malloc(rb * rows);
    float *row = malloc(a * sizeof(float));
    if (!data || !row) {
        free(data);
        free(row);
        return ds4_fail(err, "test model: out of memory for tensor '%s'", name);
    }
    tm_rng r = rng_for(g->o->seed, name);
    int rc = 0;
    uint64_t bb = ds4_row_bytes(type, DS4_QK_K);
    for (uint64_t i = 0; i < rows && rc == 0; i++) {
        if (random_codes(type)) {
            for (uint64_t j = 0; j < a / DS4_QK_K && rc == 0; j++)
                if (random_block(type, &r, scale, data + i * rb + j * bb) != 0)
                    rc = ds4_fail(err, "test model: tensor '%s': cannot decode %s", name,
                                  ds4_type_name(type));
            continue;
        }
        for (uint64_t j = 0; j < a; j++) row[j] = center + scale * rng_normal(&r);
        if (ds4_quantize_row(type, row, data + i * rb, a, NULL) != 0)
            rc = ds4_fail(err, "test model: tensor '%s': cannot quantize to %s", name,
                          ds4_type_name(type));
    }
    if (rc == 0) rc = gguf_w_tensor(g->w, name, n_dims, ne, type, data, err);
    free(data);
    free(row);
    return rc;
}

/* A matrix [in, out] (or [in, out, n] experts) with std 1/sqrt(in). */
static int put_mat(gen *g, const char *name, uint64_t in, uint64_t out, uint64_t n,
                   uint32_t type, ds4_error *err) {
    return put(g, name, n > 1 ? 3 : 2, in, out, n, type, 0.0f, (float)(1.0 / sqrt((double)in)),
               err);
}

static int put_norm(gen *g, const char *name, uint64_t n, ds4_error *err) {
    return put(g, name, 1, n, 1, 1, DS4_TYPE_F32, 1.0f, 0.1f, err);
}

/* Each token picks n_expert_used distinct experts (partial Fisher-Yates). */
static int put_tid2eid(gen *g, const char *name, ds4_error *err) {
    const ds4_testmodel_opts *o = g->o;
    uint64_t n = (uint64_t)o->n_expert_used * o->n_vocab;
    int32_t *ids = malloc(n * sizeof(int32_t));
    int32_t *perm = malloc(o->n_expert * sizeof(int32_t));
    if (!ids || !perm) {
        free(ids);
        free(perm);
        return ds4_fail(err, "test model: out of memory for tensor '%s'", name);
    }
    tm_rng r = rng_for(o->seed, name);
    for (uint32_t t = 0; t < o->n_vocab; t++) {
        for (uint32_t e = 0; e < o->n_expert; e++) perm[e] = (int32_t)e;
        for (uint32_t k = 0; k < o->n_expert_used; k++) {
            uint32_t j = k + (uint32_t)(rng_u64(&r) % (o->n_expert - k));
            int32_t tmp = perm[k];
            perm[k] = perm[j];
            perm[j] = tmp;
            ids[(uint64_t)t * o->n_expert_used + k] = perm[k];
        }
    }
    uint64_t ne[GGUF_MAX_DIMS] = {o->n_expert_used, o->n_vocab, 1, 1};
    int rc = gguf_w_tensor(g->w, name, 2, ne, DS4_TYPE_I32, ids, err);
    free(ids);
    free(perm);
    return rc;
}

static const char *lname(char *buf, size_t cap, uint32_t il, const char *suffix) {
    snprintf(buf, cap, "blk.%" PRIu32 ".%s", il, suffix);
    return buf;
}

static int put_layer_hc(gen *g, uint32_t il, ds4_error *err) {
    const ds4_testmodel_opts *o = g->o;
    uint64_t in = (uint64_t)TM_HC * o->n_embd, mix = TM_HC * (2 + TM_HC);
    char n[96];
    const char *which[2] = {"attn", "ffn"};
    for (int k = 0; k < 2; k++) {
        char s[64];
        snprintf(s, sizeof(s), "hc_%s_fn.weight", which[k]);
        if (put_mat(g, lname(n, sizeof(n), il, s), in, mix, 1, g->plain_type, err)) return -1;
        snprintf(s, sizeof(s), "hc_%s_scale.weight", which[k]);
        if (put(g, lname(n, sizeof(n), il, s), 1, 3, 1, 1, DS4_TYPE_F32, 0.5f, 0.1f, err))
            return -1;
        snprintf(s, sizeof(s), "hc_%s_base.weight", which[k]);
        if (put(g, lname(n, sizeof(n), il, s), 1, mix, 1, 1, DS4_TYPE_F32, 0.0f, 0.5f, err))
            return -1;
    }
    return 0;
}

static int put_layer_attn(gen *g, uint32_t il, ds4_error *err) {
    const ds4_testmodel_opts *o = g->o;
    uint32_t d = o->dense_type;
    uint64_t e = o->n_embd, q = o->q_lora, hd = o->head_dim;
    uint64_t qh = (uint64_t)o->n_head * hd, ow = (uint64_t)o->o_groups * o->o_lora;
    char n[96];
    if (put_norm(g, lname(n, sizeof(n), il, "attn_norm.weight"), e, err) ||
        put_mat(g, lname(n, sizeof(n), il, "attn_q_a.weight"), e, q, 1, d, err) ||
        put_norm(g, lname(n, sizeof(n), il, "attn_q_a_norm.weight"), q, err) ||
        put_mat(g, lname(n, sizeof(n), il, "attn_q_b.weight"), q, qh, 1, d, err) ||
        put_mat(g, lname(n, sizeof(n), il, "attn_kv.weight"), e, hd, 1, d, err) ||
        put_norm(g, lname(n, sizeof(n), il, "attn_kv_a_norm.weight"), hd, err) ||
        put(g, lname(n, sizeof(n), il, "attn_sinks.weight"), 1, o->n_head, 1, 1, DS4_TYPE_F32,
            0.0f, 0.5f, err) ||
        put_mat(g, lname(n, sizeof(n), il, "attn_output_a.weight"), qh / o->o_groups, ow, 1, d,
                err) ||
        put_mat(g, lname(n, sizeof(n), il, "attn_output_b.weight"), ow, e, 1, d, err))
        return -1;
    return 0;
}

/* One compressor: prefix "attn_compressor" or "indexer_compressor". */
static int put_compressor(gen *g, uint32_t il, const char *prefix, uint64_t dim, uint32_t ratio,
                          ds4_error *err) {
    uint64_t w = (ratio == 4 ? 2 : 1) * dim, e = g->o->n_embd;
    char n[96], s[64];
    snprintf(s, sizeof(s), "%s_ape.weight", prefix);
    if (put(g, lname(n, sizeof(n), il, s), 2, w, ratio, 1, g->plain_type, 0.0f, 0.5f, err))
        return -1;
    snprintf(s, sizeof(s), "%s_kv.weight", prefix);
    if (put_mat(g, lname(n, sizeof(n), il, s), e, w, 1, g->plain_type, err)) return -1;
    snprintf(s, sizeof(s), "%s_gate.weight", prefix);
    if (put_mat(g, lname(n, sizeof(n), il, s), e, w, 1, g->plain_type, err)) return -1;
    snprintf(s, sizeof(s), "%s_norm.weight", prefix);
    return put_norm(g, lname(n, sizeof(n), il, s), dim, err);
}

static int put_layer_compress(gen *g, uint32_t il, ds4_error *err) {
    const ds4_testmodel_opts *o = g->o;
    uint32_t ratio = layer_ratio(il);
    if (ratio == 0) return 0;
    if (put_compressor(g, il, "attn_compressor", o->head_dim, ratio, err)) return -1;
    if (ratio != 4) return 0;
    char n[96];
    uint64_t iq = (uint64_t)o->n_idx_head * o->idx_head_dim;
    if (put_mat(g, lname(n, sizeof(n), il, "indexer.attn_q_b.weight"), o->q_lora, iq, 1,
                g->plain_type, err) ||
        put_mat(g, lname(n, sizeof(n), il, "indexer.proj.weight"), o->n_embd, o->n_idx_head, 1,
                g->plain_type, err))
        return -1;
    return put_compressor(g, il, "indexer_compressor", o->idx_head_dim, 4, err);
}

static int put_layer_ffn(gen *g, uint32_t il, ds4_error *err) {
    const ds4_testmodel_opts *o = g->o;
    uint32_t d = o->dense_type, gu = o->exp_gate_up_type, dn = o->exp_down_type;
    uint64_t e = o->n_embd, ff = o->n_ff_exp, nx = o->n_expert;
    char n[96];
    if (put_norm(g, lname(n, sizeof(n), il, "ffn_norm.weight"), e, err) ||
        put_mat(g, lname(n, sizeof(n), il, "ffn_gate_inp.weight"), e, nx, 1, g->plain_type, err))
        return -1;
    if (il < o->n_hash_layers) {
        if (put_tid2eid(g, lname(n, sizeof(n), il, "ffn_gate_tid2eid.weight"), err)) return -1;
    } else {
        if (put(g, lname(n, sizeof(n), il, "exp_probs_b.bias"), 1, nx, 1, 1, DS4_TYPE_F32, 0.0f,
                0.05f, err))
            return -1;
    }
    if (put_mat(g, lname(n, sizeof(n), il, "ffn_gate_shexp.weight"), e, ff, 1, d, err) ||
        put_mat(g, lname(n, sizeof(n), il, "ffn_up_shexp.weight"), e, ff, 1, d, err) ||
        put_mat(g, lname(n, sizeof(n), il, "ffn_down_shexp.weight"), ff, e, 1, d, err) ||
        put(g, lname(n, sizeof(n), il, "ffn_gate_exps.weight"), 3, e, ff, nx, gu, 0.0f,
            (float)(1.0 / sqrt((double)e)), err) ||
        put(g, lname(n, sizeof(n), il, "ffn_up_exps.weight"), 3, e, ff, nx, gu, 0.0f,
            (float)(1.0 / sqrt((double)e)), err) ||
        put(g, lname(n, sizeof(n), il, "ffn_down_exps.weight"), 3, ff, e, nx, dn, 0.0f,
            (float)(1.0 / sqrt((double)ff)), err))
        return -1;
    return 0;
}

static int put_tensors(gen *g, ds4_error *err) {
    const ds4_testmodel_opts *o = g->o;
    uint64_t e = o->n_embd, v = o->n_vocab;
    if (put(g, "token_embd.weight", 2, e, v, 1, g->plain_type, 0.0f, 1.0f, err)) return -1;
    for (uint32_t il = 0; il < o->n_layer; il++)
        if (put_layer_hc(g, il, err) || put_layer_attn(g, il, err) ||
            put_layer_compress(g, il, err) || put_layer_ffn(g, il, err))
            return -1;
    if (put_norm(g, "output_norm.weight", e, err) ||
        put_mat(g, "output_hc_fn.weight", TM_HC * e, TM_HC, 1, g->plain_type, err) ||
        put(g, "output_hc_base.weight", 1, TM_HC, 1, 1, DS4_TYPE_F32, 0.0f, 0.5f, err) ||
        put(g, "output_hc_scale.weight", 1, 1, 1, 1, DS4_TYPE_F32, 0.5f, 0.1f, err) ||
        put_mat(g, "output.weight", e, v, 1, o->dense_type, err))
        return -1;
    return 0;
}

/* ---------------------------------------------------------------------- */
/* Metadata and tokenizer                                                  */
/* ---------------------------------------------------------------------- */

/* The test model's shape as ds4_hparams, written by model.c's one writer
 * of the deepseek4 keys (the non-shape keys are fixed constants). */
static void put_hparams(gen *g) {
    const ds4_testmodel_opts *o = g->o;
    ds4_hparams hp = {
        .n_layer = o->n_layer,
        .n_embd = o->n_embd,
        .n_vocab = o->n_vocab,
        .n_head = o->n_head,
        .n_head_kv = 1,
        .head_dim = o->head_dim,
        .n_rot = o->n_rot,
        .q_lora = o->q_lora,
        .o_lora = o->o_lora,
        .o_groups = o->o_groups,
        .n_expert = o->n_expert,
        .n_expert_used = o->n_expert_used,
        .n_ff_exp = o->n_ff_exp,
        .n_expert_shared = 1,
        .n_hash_layers = o->n_hash_layers,
        .n_swa = o->n_swa,
        .n_idx_head = o->n_idx_head,
        .idx_head_dim = o->idx_head_dim,
        .idx_top_k = o->idx_top_k,
        .n_hc = TM_HC,
        .n_sinkhorn = 20,
        .hc_eps = 1e-6f,
        .rms_eps = 1e-6f,
        .rope_base = 10000.0f,
        .rope_compress_base = 160000.0f,
        .rope_scale = 16.0f,
        .yarn_beta_fast = 32.0f,
        .yarn_beta_slow = 1.0f,
        .rope_orig_ctx = 65536,
        .n_ctx_train = 1048576,
        .expert_weights_scale = 1.5f,
        .expert_weights_norm = true,
    };
    for (uint32_t il = 0; il < o->n_layer; il++) {
        hp.compress_ratio[il] = layer_ratio(il);
        hp.swiglu_clamp[il] = 10.0f;
    }
    ds4_model_write_hparams(g->w, &hp, "ds4cl random test model");
}

/* GPT-2 byte-to-unicode map: printable Latin-1 bytes map to themselves,
 * the others to 256, 257, ... in byte order. */
static uint32_t byte_cp(uint32_t b) {
    bool printable = (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174 && b <= 255);
    if (printable) return b;
    uint32_t n = 0;
    for (uint32_t c = 0; c < b; c++)
        n += !((c >= 33 && c <= 126) || (c >= 161 && c <= 172) || (c >= 174 && c <= 255));
    return 256 + n;
}

/* UTF-8 of a code point < 0x800; returns bytes written (NUL-terminated). */
static size_t utf8(uint32_t cp, char *out) {
    if (cp < 0x80) {
        out[0] = (char)cp;
        out[1] = '\0';
        return 1;
    }
    out[0] = (char)(0xC0 | (cp >> 6));
    out[1] = (char)(0x80 | (cp & 0x3F));
    out[2] = '\0';
    return 2;
}

/* Bytes in the order filler pairs prefer them: space, lowercase by
 * frequency, uppercase, digits, then every other byte ascending. */
static void byte_order(uint8_t order[256]) {
    const char *pref = " etaoinshrdlucmfwypvbgkjqxzETAOINSHRDLUCMFWYPVBGKJQXZ0123456789";
    bool used[256] = {false};
    size_t n = 0;
    for (const char *p = pref; *p; p++) {
        order[n++] = (uint8_t)*p;
        used[(uint8_t)*p] = true;
    }
    for (uint32_t b = 0; b < 256; b++)
        if (!used[b]) order[n++] = (uint8_t)b;
}

static int put_tokenizer(gen *g, ds4_error *err) {
    static const char *const special[N_SPECIAL] = {
        "<\xef\xbd\x9c" "begin\xe2\x96\x81of\xe2\x96\x81sentence\xef\xbd\x9c>",
        "<\xef\xbd\x9c" "end\xe2\x96\x81of\xe2\x96\x81sentence\xef\xbd\x9c>",
        "<\xef\xbd\x9cUser\xef\xbd\x9c>",
        "<\xef\xbd\x9c" "Assistant\xef\xbd\x9c>",
        "<think>",
        "</think>",
        "\xef\xbd\x9c" "DSML\xef\xbd\x9c",
    };
    uint32_t nv = g->o->n_vocab, n_fill = nv - MIN_VOCAB;
    const char **tokens = calloc(nv, sizeof(char *));
    const char **merges = calloc(n_fill ? n_fill : 1, sizeof(char *));
    int32_t *types = calloc(nv, sizeof(int32_t));
    char *pool = malloc((size_t)N_BYTE_TOKENS * 3 + (size_t)n_fill * (5 + 6));
    if (!tokens || !merges || !types || !pool) {
        free(tokens);
        free(merges);
        free(types);
        free(pool);
        return ds4_fail(err, "test model: out of memory for the tokenizer");
    }
    char *p = pool;
    const char *byte_tok[256];
    for (uint32_t i = 0; i < N_SPECIAL; i++) {
        tokens[i] = special[i];
        types[i] = 3; /* control */
    }
    for (uint32_t b = 0; b < 256; b++) {
        byte_tok[b] = p;
        p += utf8(byte_cp(b), p) + 1;
        tokens[N_SPECIAL + b] = byte_tok[b];
        types[N_SPECIAL + b] = 1; /* normal */
    }
    uint8_t order[256];
    byte_order(order);
    uint32_t k = 0;
    for (uint32_t s = 0; s < 511 && k < n_fill; s++) {
        for (uint32_t i = s > 255 ? s - 255 : 0; i <= s && i < 256 && k < n_fill; i++) {
            const char *a = byte_tok[order[i]], *b = byte_tok[order[s - i]];
            tokens[MIN_VOCAB + k] = p;
            p += (size_t)sprintf(p, "%s%s", a, b) + 1;
            merges[k] = p;
            p += (size_t)sprintf(p, "%s %s", a, b) + 1;
            types[MIN_VOCAB + k] = 1;
            k++;
        }
    }
    gguf_w_str(g->w, "tokenizer.ggml.model", "gpt2");
    gguf_w_str(g->w, "tokenizer.ggml.pre", "joyai-llm");
    gguf_w_arr_str(g->w, "tokenizer.ggml.tokens", tokens, nv);
    gguf_w_arr(g->w, "tokenizer.ggml.token_type", GGUF_VT_INT32, types, nv);
    gguf_w_arr_str(g->w, "tokenizer.ggml.merges", merges, n_fill);
    gguf_w_u32(g->w, "tokenizer.ggml.bos_token_id", 0);
    gguf_w_u32(g->w, "tokenizer.ggml.eos_token_id", 1);
    free(tokens);
    free(merges);
    free(types);
    free(pool);
    return 0;
}

/* A writer holding the whole model, or NULL with err set. */
static gguf_writer *build_writer(const ds4_testmodel_opts *o, ds4_error *err) {
    if (check_opts(o, err) != 0) return NULL;
    gen g = {o, gguf_writer_new(0), DS4_TYPE_F16};
    if (!g.w) {
        ds4_fail(err, "test model: out of memory for the writer");
        return NULL;
    }
    if (o->dense_type == DS4_TYPE_F32) g.plain_type = DS4_TYPE_F32;
    put_hparams(&g);
    if (put_tokenizer(&g, err) != 0 || put_tensors(&g, err) != 0) {
        gguf_writer_free(g.w);
        return NULL;
    }
    return g.w;
}

int ds4_testmodel_build(const ds4_testmodel_opts *o, uint8_t **buf, uint64_t *size,
                        ds4_error *err) {
    *buf = NULL;
    *size = 0;
    gguf_writer *w = build_writer(o, err);
    if (!w) return -1;
    int rc = gguf_writer_to_memory(w, buf, size, err);
    gguf_writer_free(w);
    return rc;
}

int ds4_testmodel_write(const ds4_testmodel_opts *o, const char *path, ds4_error *err) {
    gguf_writer *w = build_writer(o, err);
    if (!w) return -1;
    int rc = gguf_writer_save(w, path, err);
    gguf_writer_free(w);
    if (rc != 0) return ds4_fail_wrap(err, "writing test model '%s'", path);
    return 0;
}
