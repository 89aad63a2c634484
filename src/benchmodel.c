/* benchmodel.c - writes DeepSeek-V4-Flash-shaped benchmark GGUFs, fast.
 *
 * Three phases:
 *
 *   1. plan: the options become a list of tensors in file order (name,
 *      dims, GGML type, and how to fill it: centre and scale of its values),
 *      with the constants every block of a tensor shares computed ONCE here
 *      (the f16 d/dmin of the super-block formats, the Q8_0 d, a table of
 *      f16 values for F16 tensors).  Types follow model.md §3.4: Q8_0 for
 *      attention, shared expert and head; F16 for HC, router, compressor,
 *      indexer and embedding; F32 for norms, sinks, biases, HC scale/base;
 *      I32 tid2eid; routed experts IQ2_XXS/IQ2_XXS/Q2_K (q2) or Q4_K (q4).
 *
 *   2. metadata: every deepseek4 key through ds4_model_write_hparams, the
 *      ds4cl.bench_* keys, a small tokenizer, and one tensor info per tensor;
 *      the streaming writer then fixes the layout and writes the head.
 *
 *   3. data: each tensor is cut into pieces of at most chunk_bytes (whole
 *      blocks / values / tid2eid rows).  Piece c of tensor t is a pure
 *      function of (seed, name of t, c): it draws from its own splitmix64
 *      stream, so the bytes do not depend on which thread makes it or when.
 *      Worker threads take pieces in file order and fill a ring of slots;
 *      the calling thread appends slot after slot to the file in order.  A
 *      worker waits while its piece's slot still holds an unwritten piece,
 *      so memory is the ring (at most BM_MAX_SLOTS pieces) whatever the
 *      file size.
 *
 * Values (sane activations through any number of layers, router not
 * degenerate): matrices have RMS 1/sqrt(fan_in) and mean 0, the embedding
 * RMS 1, norms 1 + N(0, 0.1^2), sinks and HC bases N(0, 0.5^2), HC scales
 * 0.5 + N(0, 0.1^2), router biases N(0, 0.05^2).
 *   - IQ2_XXS / Q2_K / Q4_K: random codes.  For Q2_K and Q4_K each
 *     sub-block's min code equals its scale code, so with dmin = k*d every
 *     sub-block is centred (value = d*sc*(q - k), like a symmetric
 *     quantizer's output); the grid signs of IQ2_XXS centre it already.
 *     k and the RMS per unit d are measured once per type by dequantizing
 *     FIT_BLOCKS random blocks (the reference dequantizer, so no bit layout
 *     is assumed twice); a tensor's d is then f16(std * c_d), the same for
 *     all its blocks.
 *   - Q8_0: random int8 in -127..127 (-128 becomes 0: mean exactly 0) with
 *     d = f16(std / RMS of that distribution).
 *   - F16: BM_TABLE values of centre + scale * z, z normal samples shifted
 *     and scaled to mean 0 / RMS 1 exactly; each value picks one entry with
 *     12 random bits.  F32 (only small tensors): Box-Muller per value.
 *   - tid2eid: n_expert_used distinct experts per token (rejection).
 *
 * Tokenizer: ids 0..6 are the seven strings ds4 treats as special (BOS 0,
 * EOS 1), 7..262 the 256 GPT-2 byte tokens, then up to 65536 two-byte
 * tokens "AB" with merges "A B", then three-byte tokens "ABC" with merges
 * "AB C" (AB always an earlier two-byte token), enough for 129,280 tokens;
 * every merge's parts and result are in the vocabulary, so BPE over it
 * works and any byte string round-trips.
 */
#include "benchmodel.h"

#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <pthread.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "gguf.h"
#include "gguf_write.h"
#include "quant.h"

#define BM_HC 4                     /* hyper-connection streams (Flash) */
#define BM_CHUNK (4u << 20)         /* default piece size */
#define BM_MIN_CHUNK 4096u          /* smallest chunk_bytes option */
#define BM_MAX_SLOTS 48u            /* pieces in flight at most */
#define BM_TABLE 4096u              /* F16 lookup table entries (12 bits) */
#define BM_MAX_DIM (1u << 20)
#define FIT_BLOCKS 2048u
#define N_SPECIAL 7u
#define N_BYTES 256u
#define MIN_VOCAB (N_SPECIAL + N_BYTES)
#define MAX_VOCAB (1u << 20)

/* ---------------------------------------------------------------------- */
/* Options                                                                 */
/* ---------------------------------------------------------------------- */

void ds4_benchmodel_default_opts(ds4_benchmodel_opts *o) {
    memset(o, 0, sizeof(*o));
    o->n_layer = 4;
    o->n_hash_layers = -1;
    o->mix = DS4_BENCH_MIX_Q2;
    o->seed = 1;
    /* model.md §1 */
    o->n_embd = 4096;
    o->n_vocab = 129280;
    o->n_head = 64;
    o->head_dim = 512;
    o->n_rot = 64;
    o->q_lora = 1024;
    o->o_lora = 1024;
    o->o_groups = 8;
    o->n_expert = 256;
    o->n_expert_used = 6;
    o->n_ff_exp = 2048;
    o->n_swa = 128;
    o->n_idx_head = 64;
    o->idx_head_dim = 128;
    o->idx_top_k = 512;
}

void ds4_benchmodel_tiny_shape(ds4_benchmodel_opts *o) {
    o->n_embd = 256;
    o->n_vocab = 512;
    o->n_head = 4;
    o->head_dim = 128;
    o->n_rot = 64;
    o->q_lora = 64;
    o->o_lora = 64;
    o->o_groups = 2;
    o->n_expert = 16;
    o->n_expert_used = 6;
    o->n_ff_exp = 256;
    o->n_swa = 8;
    o->n_idx_head = 4;
    o->idx_head_dim = 64;
    o->idx_top_k = 4;
}

uint32_t ds4_benchmodel_ratio(const ds4_benchmodel_opts *o, uint32_t il) {
    if (o->n_pattern) return o->pattern[il];
    if (il == 0) return 0;
    return il % 2 == 1 ? 4 : 128;
}

uint32_t ds4_benchmodel_hash_layers(const ds4_benchmodel_opts *o) {
    if (o->n_hash_layers >= 0) return (uint32_t)o->n_hash_layers;
    return o->n_layer < 2 ? o->n_layer : 2;
}

void ds4_benchmodel_flash_pattern(ds4_benchmodel_opts *o) {
    uint32_t n = o->n_layer <= DS4_MAX_LAYERS ? o->n_layer : DS4_MAX_LAYERS;
    o->n_pattern = n;
    for (uint32_t il = 0; il < n; il++) o->pattern[il] = il < 2 ? 0 : il % 2 == 0 ? 4 : 128;
    o->n_hash_layers = (int32_t)(n < 3 ? n : 3);
}

const char *ds4_benchmodel_mix_name(ds4_bench_mix mix) {
    return mix == DS4_BENCH_MIX_Q4 ? "q4" : "q2";
}

int ds4_benchmodel_mix_from_name(const char *name, ds4_bench_mix *out) {
    if (strcmp(name, "q2") == 0) *out = DS4_BENCH_MIX_Q2;
    else if (strcmp(name, "q4") == 0) *out = DS4_BENCH_MIX_Q4;
    else return -1;
    return 0;
}

static bool is_pow2(uint32_t v) { return v && !(v & (v - 1)); }

/* Rows of n values in a type whose block is `block` values. */
static int check_mult(uint64_t n, uint32_t block, const char *what, const char *type,
                      ds4_error *err) {
    if (n % block == 0) return 0;
    return ds4_fail(err, "bench model: %s %" PRIu64 " is not a multiple of %" PRIu32
                    " (rows of %s)", what, n, block, type);
}

static int check_shape(const ds4_benchmodel_opts *o, bool has_r4, ds4_error *err) {
    const struct {
        const char *name;
        uint32_t v;
    } dims[] = {
        {"n_embd", o->n_embd},         {"n_head", o->n_head},
        {"head_dim", o->head_dim},     {"q_lora", o->q_lora},
        {"o_lora", o->o_lora},         {"o_groups", o->o_groups},
        {"n_expert", o->n_expert},     {"n_expert_used", o->n_expert_used},
        {"n_ff_exp", o->n_ff_exp},     {"n_swa", o->n_swa},
        {"n_idx_head", o->n_idx_head}, {"idx_head_dim", o->idx_head_dim},
        {"idx_top_k", o->idx_top_k},
    };
    for (size_t i = 0; i < sizeof(dims) / sizeof(dims[0]); i++)
        if (dims[i].v < 1 || dims[i].v > BM_MAX_DIM)
            return ds4_fail(err, "bench model: %s %" PRIu32 " out of range 1..%u", dims[i].name,
                            dims[i].v, BM_MAX_DIM);
    if (o->n_vocab < MIN_VOCAB || o->n_vocab > MAX_VOCAB)
        return ds4_fail(err, "bench model: n_vocab %" PRIu32 " out of range %u..%u", o->n_vocab,
                        MIN_VOCAB, MAX_VOCAB);
    if (o->n_rot % 2 != 0 || o->n_rot > o->head_dim)
        return ds4_fail(err, "bench model: n_rot %" PRIu32 " must be even and <= head_dim %" PRIu32,
                        o->n_rot, o->head_dim);
    if (o->n_head % o->o_groups != 0)
        return ds4_fail(err, "bench model: o_groups %" PRIu32 " must divide n_head %" PRIu32,
                        o->o_groups, o->n_head);
    if (o->n_expert_used > o->n_expert || o->n_expert_used > 64)
        return ds4_fail(err, "bench model: n_expert_used %" PRIu32 " must be <= n_expert %" PRIu32
                        " and <= 64", o->n_expert_used, o->n_expert);
    if (has_r4 && (o->n_rot > o->idx_head_dim || !is_pow2(o->idx_head_dim)))
        return ds4_fail(err, "bench model: idx_head_dim %" PRIu32 " must be a power of two "
                        ">= n_rot %" PRIu32, o->idx_head_dim, o->n_rot);
    uint64_t oa_in = (uint64_t)o->n_head * o->head_dim / o->o_groups;
    if (check_mult(o->n_embd, DS4_QK_K, "n_embd", "routed experts", err) ||
        check_mult(o->n_ff_exp, DS4_QK_K, "n_ff_exp", "routed experts", err) ||
        check_mult(o->q_lora, DS4_QK8_0, "q_lora", "Q8_0", err) ||
        check_mult(oa_in, DS4_QK8_0, "n_head*head_dim/o_groups", "Q8_0", err) ||
        check_mult((uint64_t)o->o_groups * o->o_lora, DS4_QK8_0, "o_groups*o_lora", "Q8_0", err))
        return -1;
    return 0;
}

int ds4_benchmodel_check(const ds4_benchmodel_opts *o, ds4_error *err) {
    if (o->n_layer < 1 || o->n_layer > DS4_MAX_LAYERS)
        return ds4_fail(err, "bench model: layers %" PRIu32 " out of range 1..%d", o->n_layer,
                        DS4_MAX_LAYERS);
    if (o->n_pattern != 0 && o->n_pattern != o->n_layer)
        return ds4_fail(err, "bench model: the pattern has %" PRIu32 " entries for %" PRIu32
                        " layers", o->n_pattern, o->n_layer);
    bool has_r4 = false;
    for (uint32_t il = 0; il < o->n_pattern; il++) {
        uint32_t r = o->pattern[il];
        if (r != 0 && r != 4 && r != 128)
            return ds4_fail(err, "bench model: layer %" PRIu32 " has ratio %" PRIu32
                            " (allowed 0, 4, 128)", il, r);
    }
    for (uint32_t il = 0; il < o->n_layer; il++) has_r4 |= ds4_benchmodel_ratio(o, il) == 4;
    if (o->n_hash_layers < -1 || (o->n_hash_layers >= 0 && (uint32_t)o->n_hash_layers > o->n_layer))
        return ds4_fail(err, "bench model: hash layers %" PRId32 " out of range 0..%" PRIu32,
                        o->n_hash_layers, o->n_layer);
    if (o->mix != DS4_BENCH_MIX_Q2 && o->mix != DS4_BENCH_MIX_Q4)
        return ds4_fail(err, "bench model: unknown mix %d (q2 or q4)", (int)o->mix);
    if (o->threads > DS4_BENCH_MAX_THREADS)
        return ds4_fail(err, "bench model: threads %" PRIu32 " out of range 0..%d", o->threads,
                        DS4_BENCH_MAX_THREADS);
    if (o->chunk_bytes != 0 && o->chunk_bytes < BM_MIN_CHUNK)
        return ds4_fail(err, "bench model: chunk_bytes %" PRIu32 " below %u", o->chunk_bytes,
                        BM_MIN_CHUNK);
    return check_shape(o, has_r4, err);
}

/* ---------------------------------------------------------------------- */
/* Random numbers (splitmix64)                                             */
/* ---------------------------------------------------------------------- */

typedef struct bm_rng {
    uint64_t s;
} bm_rng;

static uint64_t rng_u64(bm_rng *r) {
    uint64_t z = (r->s += 0x9E3779B97F4A7C15ULL);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    return z ^ (z >> 31);
}

static double rng_normal(bm_rng *r) {
    double u1 = ((double)(rng_u64(r) >> 11) + 1.0) * (1.0 / 9007199254740992.0);
    double u2 = (double)(rng_u64(r) >> 11) * (1.0 / 9007199254740992.0);
    return sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2);
}

static void rng_fill(bm_rng *r, uint8_t *dst, size_t n) {
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        uint64_t x = rng_u64(r);
        memcpy(dst + i, &x, 8);
    }
    if (i < n) {
        uint64_t x = rng_u64(r);
        memcpy(dst + i, &x, n - i);
    }
}

static uint64_t name_hash(const char *name) {
    uint64_t h = 0xcbf29ce484222325ULL; /* FNV-1a */
    for (const char *p = name; *p; p++) h = (h ^ (uint8_t)*p) * 0x100000001b3ULL;
    return h;
}

/* The stream of piece `piece` of a tensor (piece UINT64_MAX: its table). */
static bm_rng rng_for(uint64_t seed, uint64_t hash, uint64_t piece) {
    bm_rng r = {seed ^ hash};
    r.s = rng_u64(&r) ^ (piece * 0xD1B54A32D192ED03ULL);
    rng_u64(&r);
    return r;
}

/* ---------------------------------------------------------------------- */
/* Blocks                                                                  */
/* ---------------------------------------------------------------------- */

static void put16(uint8_t *p, uint16_t v) { memcpy(p, &v, 2); }

/* One super-block of random codes with the given f16 d and dmin (see the
 * header comment: Q2_K/Q4_K min codes equal the scale codes). */
static void codes_block(uint32_t type, bm_rng *r, uint16_t d, uint16_t dmin, uint8_t *b) {
    if (type == DS4_TYPE_IQ2_XXS) {
        put16(b + offsetof(ds4_block_iq2_xxs, d), d);
        rng_fill(r, b + offsetof(ds4_block_iq2_xxs, qs), DS4_QK_K / 4);
    } else if (type == DS4_TYPE_Q2_K) {
        uint8_t *sc = b + offsetof(ds4_block_q2_K, scales);
        uint64_t x = rng_u64(r);
        for (int i = 0; i < 16; i++) sc[i] = (uint8_t)(((x >> (4 * i)) & 0xf) * 0x11);
        rng_fill(r, b + offsetof(ds4_block_q2_K, qs), DS4_QK_K / 4);
        put16(b + offsetof(ds4_block_q2_K, d), d);
        put16(b + offsetof(ds4_block_q2_K, dmin), dmin);
    } else { /* Q4_K: bytes 4..7 repeat 0..3, bytes 8..11 repeat their low nibble */
        uint8_t *sc = b + offsetof(ds4_block_q4_K, scales);
        uint64_t x = rng_u64(r);
        for (int i = 0; i < 4; i++) sc[i] = sc[i + 4] = (uint8_t)(x >> (8 * i));
        for (int i = 0; i < 4; i++) sc[8 + i] = (uint8_t)(((x >> (32 + 4 * i)) & 0xf) * 0x11);
        rng_fill(r, b + offsetof(ds4_block_q4_K, qs), DS4_QK_K / 2);
        put16(b + offsetof(ds4_block_q4_K, d), d);
        put16(b + offsetof(ds4_block_q4_K, dmin), dmin);
    }
}

/* d = std * cd, dmin = std * cm give values of mean ~0 and RMS std. */
typedef struct code_fit {
    double cd, cm;
} code_fit;

static int fit_codes(uint32_t type, code_fit *out, ds4_error *err) {
    bm_rng r = {0x62656e63686d6f64ULL};
    uint8_t blk[sizeof(ds4_block_q4_K)];
    float a[DS4_QK_K], b[DS4_QK_K];
    double sa = 0, sb = 0, saa = 0, sab = 0, sbb = 0;
    bool has_min = type != DS4_TYPE_IQ2_XXS;
    uint16_t one = ds4_f32_to_f16(1.0f), zero = ds4_f32_to_f16(0.0f);
    for (uint32_t k = 0; k < FIT_BLOCKS; k++) {
        bm_rng saved = r;
        codes_block(type, &r, one, zero, blk);
        if (ds4_dequantize_row(type, blk, a, DS4_QK_K) != 0)
            return ds4_fail(err, "bench model: cannot decode %s", ds4_type_name(type));
        memset(b, 0, sizeof(b));
        if (has_min) {
            r = saved;
            codes_block(type, &r, zero, one, blk);
            if (ds4_dequantize_row(type, blk, b, DS4_QK_K) != 0)
                return ds4_fail(err, "bench model: cannot decode %s", ds4_type_name(type));
        }
        for (int i = 0; i < DS4_QK_K; i++) {
            sa += a[i];
            sb += b[i];
            saa += (double)a[i] * a[i];
            sab += (double)a[i] * b[i];
            sbb += (double)b[i] * b[i];
        }
    }
    double k = sb < 0.0 ? -sa / sb : 0.0; /* mean of a + k*b is 0 */
    double n = (double)FIT_BLOCKS * DS4_QK_K;
    double rms = sqrt((saa + 2.0 * k * sab + k * k * sbb) / n);
    if (!(rms > 0.0))
        return ds4_fail(err, "bench model: %s codes have no spread", ds4_type_name(type));
    out->cd = 1.0 / rms;
    out->cm = k / rms;
    return 0;
}

/* RMS of int8 codes uniform in -127..127 with -128 mapped to 0. */
static double q8_rms(void) {
    double s = 0.0;
    for (int q = -127; q <= 127; q++) s += (double)q * q;
    return sqrt(s / 256.0);
}

/* ---------------------------------------------------------------------- */
/* The plan                                                                */
/* ---------------------------------------------------------------------- */

enum { GK_CODES, GK_Q8_0, GK_F16, GK_F32, GK_TID2EID };

typedef struct bm_tensor {
    char name[GGUF_MAX_NAME_LEN + 1];
    uint32_t n_dims;
    uint64_t ne[3];
    uint32_t type;
    int kind;
    float center, scale;
    uint64_t nbytes;
    uint64_t unit;          /* bytes of one independent unit (block, value, row) */
    uint64_t hash;
    uint16_t d, dmin;       /* GK_CODES, GK_Q8_0 */
    uint16_t *table;        /* GK_F16: BM_TABLE values */
} bm_tensor;

typedef struct bm_plan {
    const ds4_benchmodel_opts *o;
    bm_tensor *t;
    uint32_t n, cap;
    uint64_t bytes;
    bool want_tables;       /* build F16 tables and code constants */
    code_fit fit[3];        /* IQ2_XXS, Q2_K, Q4_K */
    bool fitted[3];
    double q8_rms;
} bm_plan;

static int fit_index(uint32_t type) {
    return type == DS4_TYPE_IQ2_XXS ? 0 : type == DS4_TYPE_Q2_K ? 1 : 2;
}

static int build_table(bm_plan *p, bm_tensor *t, ds4_error *err) {
    double z[BM_TABLE], mean = 0.0, ss = 0.0;
    bm_rng r = rng_for(p->o->seed, t->hash, UINT64_MAX);
    for (uint32_t i = 0; i < BM_TABLE; i++) {
        z[i] = rng_normal(&r);
        mean += z[i];
    }
    mean /= BM_TABLE;
    for (uint32_t i = 0; i < BM_TABLE; i++) ss += (z[i] - mean) * (z[i] - mean);
    double inv = 1.0 / sqrt(ss / BM_TABLE);
    t->table = malloc(BM_TABLE * sizeof(uint16_t));
    if (!t->table) return ds4_fail(err, "bench model: out of memory");
    for (uint32_t i = 0; i < BM_TABLE; i++)
        t->table[i] = ds4_f32_to_f16((float)(t->center + t->scale * (z[i] - mean) * inv));
    return 0;
}

/* Per-tensor constants shared by all its blocks. */
static int prepare(bm_plan *p, bm_tensor *t, ds4_error *err) {
    if (t->kind == GK_CODES) {
        int fi = fit_index(t->type);
        if (!p->fitted[fi]) {
            if (fit_codes(t->type, &p->fit[fi], err) != 0) return -1;
            p->fitted[fi] = true;
        }
        t->d = ds4_f32_to_f16((float)(t->scale * p->fit[fi].cd));
        t->dmin = ds4_f32_to_f16((float)(t->scale * p->fit[fi].cm));
    } else if (t->kind == GK_Q8_0) {
        t->d = ds4_f32_to_f16((float)(t->scale / p->q8_rms));
    } else if (t->kind == GK_F16) {
        return build_table(p, t, err);
    }
    return 0;
}

static int kind_of(uint32_t type) {
    switch (type) {
    case DS4_TYPE_Q8_0: return GK_Q8_0;
    case DS4_TYPE_F16: return GK_F16;
    case DS4_TYPE_F32: return GK_F32;
    case DS4_TYPE_I32: return GK_TID2EID;
    default: return GK_CODES;
    }
}

static int add(bm_plan *p, const char *name, uint32_t n_dims, uint64_t a, uint64_t b,
               uint64_t c, uint32_t type, double center, double scale, ds4_error *err) {
    if (p->n == p->cap) {
        uint32_t cap = p->cap ? p->cap * 2 : 256;
        bm_tensor *nt = realloc(p->t, cap * sizeof(*nt));
        if (!nt) return ds4_fail(err, "bench model: out of memory");
        p->t = nt;
        p->cap = cap;
    }
    bm_tensor *t = &p->t[p->n];
    memset(t, 0, sizeof(*t));
    snprintf(t->name, sizeof(t->name), "%s", name);
    t->n_dims = n_dims;
    t->ne[0] = a;
    t->ne[1] = b;
    t->ne[2] = c;
    t->type = type;
    t->kind = kind_of(type);
    t->center = (float)center;
    t->scale = (float)scale;
    t->nbytes = ds4_row_bytes(type, a) * b * c;
    const ds4_type_traits *tr = ds4_type_get(type);
    t->unit = t->kind == GK_TID2EID ? a * sizeof(int32_t) : tr->type_size;
    t->hash = name_hash(name);
    p->n++;
    p->bytes += t->nbytes;
    if (p->want_tables && prepare(p, t, err) != 0) return -1;
    return 0;
}

/* A matrix [in, out] (or [in, out, n] experts) of RMS 1/sqrt(in). */
static int add_mat(bm_plan *p, const char *name, uint64_t in, uint64_t out, uint64_t n,
                   uint32_t type, ds4_error *err) {
    return add(p, name, n > 1 ? 3 : 2, in, out, n, type, 0.0, 1.0 / sqrt((double)in), err);
}

static int add_vec(bm_plan *p, const char *name, uint64_t n, double center, double scale,
                   ds4_error *err) {
    return add(p, name, 1, n, 1, 1, DS4_TYPE_F32, center, scale, err);
}

static const char *lname(char *buf, size_t cap, uint32_t il, const char *suffix) {
    snprintf(buf, cap, "blk.%" PRIu32 ".%s", il, suffix);
    return buf;
}

static int add_hc(bm_plan *p, uint32_t il, ds4_error *err) {
    uint64_t in = (uint64_t)BM_HC * p->o->n_embd, mix = BM_HC * (2 + BM_HC);
    const char *which[2] = {"attn", "ffn"};
    char n[96], s[64];
    for (int k = 0; k < 2; k++) {
        snprintf(s, sizeof(s), "hc_%s_fn.weight", which[k]);
        if (add_mat(p, lname(n, sizeof(n), il, s), in, mix, 1, DS4_TYPE_F16, err)) return -1;
        snprintf(s, sizeof(s), "hc_%s_scale.weight", which[k]);
        if (add_vec(p, lname(n, sizeof(n), il, s), 3, 0.5, 0.1, err)) return -1;
        snprintf(s, sizeof(s), "hc_%s_base.weight", which[k]);
        if (add_vec(p, lname(n, sizeof(n), il, s), mix, 0.0, 0.5, err)) return -1;
    }
    return 0;
}

static int add_attn(bm_plan *p, uint32_t il, ds4_error *err) {
    const ds4_benchmodel_opts *o = p->o;
    const uint32_t q8 = DS4_TYPE_Q8_0;
    uint64_t e = o->n_embd, q = o->q_lora, hd = o->head_dim;
    uint64_t qh = (uint64_t)o->n_head * hd, ow = (uint64_t)o->o_groups * o->o_lora;
    char n[96];
    if (add_vec(p, lname(n, sizeof(n), il, "attn_norm.weight"), e, 1.0, 0.1, err) ||
        add_mat(p, lname(n, sizeof(n), il, "attn_q_a.weight"), e, q, 1, q8, err) ||
        add_vec(p, lname(n, sizeof(n), il, "attn_q_a_norm.weight"), q, 1.0, 0.1, err) ||
        add_mat(p, lname(n, sizeof(n), il, "attn_q_b.weight"), q, qh, 1, q8, err) ||
        add_mat(p, lname(n, sizeof(n), il, "attn_kv.weight"), e, hd, 1, q8, err) ||
        add_vec(p, lname(n, sizeof(n), il, "attn_kv_a_norm.weight"), hd, 1.0, 0.1, err) ||
        add_vec(p, lname(n, sizeof(n), il, "attn_sinks.weight"), o->n_head, 0.0, 0.5, err) ||
        add_mat(p, lname(n, sizeof(n), il, "attn_output_a.weight"), qh / o->o_groups, ow, 1, q8,
                err) ||
        add_mat(p, lname(n, sizeof(n), il, "attn_output_b.weight"), ow, e, 1, q8, err))
        return -1;
    return 0;
}

/* One compressor: prefix "attn_compressor" or "indexer_compressor". */
static int add_compressor(bm_plan *p, uint32_t il, const char *prefix, uint64_t dim,
                          uint32_t ratio, ds4_error *err) {
    uint64_t w = (ratio == 4 ? 2 : 1) * dim, e = p->o->n_embd;
    char n[96], s[64];
    snprintf(s, sizeof(s), "%s_ape.weight", prefix);
    if (add(p, lname(n, sizeof(n), il, s), 2, w, ratio, 1, DS4_TYPE_F16, 0.0, 0.5, err))
        return -1;
    snprintf(s, sizeof(s), "%s_kv.weight", prefix);
    if (add_mat(p, lname(n, sizeof(n), il, s), e, w, 1, DS4_TYPE_F16, err)) return -1;
    snprintf(s, sizeof(s), "%s_gate.weight", prefix);
    if (add_mat(p, lname(n, sizeof(n), il, s), e, w, 1, DS4_TYPE_F16, err)) return -1;
    snprintf(s, sizeof(s), "%s_norm.weight", prefix);
    return add_vec(p, lname(n, sizeof(n), il, s), dim, 1.0, 0.1, err);
}

static int add_compress(bm_plan *p, uint32_t il, ds4_error *err) {
    const ds4_benchmodel_opts *o = p->o;
    uint32_t ratio = ds4_benchmodel_ratio(o, il);
    if (ratio == 0) return 0;
    if (add_compressor(p, il, "attn_compressor", o->head_dim, ratio, err)) return -1;
    if (ratio != 4) return 0;
    uint64_t iq = (uint64_t)o->n_idx_head * o->idx_head_dim;
    char n[96];
    if (add_mat(p, lname(n, sizeof(n), il, "indexer.attn_q_b.weight"), o->q_lora, iq, 1,
                DS4_TYPE_F16, err) ||
        add_mat(p, lname(n, sizeof(n), il, "indexer.proj.weight"), o->n_embd, o->n_idx_head, 1,
                DS4_TYPE_F16, err))
        return -1;
    return add_compressor(p, il, "indexer_compressor", o->idx_head_dim, 4, err);
}

static int add_ffn(bm_plan *p, uint32_t il, ds4_error *err) {
    const ds4_benchmodel_opts *o = p->o;
    const uint32_t q8 = DS4_TYPE_Q8_0;
    bool q4 = o->mix == DS4_BENCH_MIX_Q4;
    uint32_t gu = q4 ? DS4_TYPE_Q4_K : DS4_TYPE_IQ2_XXS, dn = q4 ? DS4_TYPE_Q4_K : DS4_TYPE_Q2_K;
    uint64_t e = o->n_embd, ff = o->n_ff_exp, nx = o->n_expert;
    char n[96];
    if (add_vec(p, lname(n, sizeof(n), il, "ffn_norm.weight"), e, 1.0, 0.1, err) ||
        add_mat(p, lname(n, sizeof(n), il, "ffn_gate_inp.weight"), e, nx, 1, DS4_TYPE_F16, err))
        return -1;
    if (il < ds4_benchmodel_hash_layers(o)) {
        if (add(p, lname(n, sizeof(n), il, "ffn_gate_tid2eid.weight"), 2, o->n_expert_used,
                o->n_vocab, 1, DS4_TYPE_I32, 0.0, 0.0, err))
            return -1;
    } else if (add_vec(p, lname(n, sizeof(n), il, "exp_probs_b.bias"), nx, 0.0, 0.05, err)) {
        return -1;
    }
    if (add_mat(p, lname(n, sizeof(n), il, "ffn_gate_shexp.weight"), e, ff, 1, q8, err) ||
        add_mat(p, lname(n, sizeof(n), il, "ffn_up_shexp.weight"), e, ff, 1, q8, err) ||
        add_mat(p, lname(n, sizeof(n), il, "ffn_down_shexp.weight"), ff, e, 1, q8, err) ||
        add_mat(p, lname(n, sizeof(n), il, "ffn_gate_exps.weight"), e, ff, nx, gu, err) ||
        add_mat(p, lname(n, sizeof(n), il, "ffn_up_exps.weight"), e, ff, nx, gu, err) ||
        add_mat(p, lname(n, sizeof(n), il, "ffn_down_exps.weight"), ff, e, nx, dn, err))
        return -1;
    return 0;
}

static void plan_free(bm_plan *p) {
    for (uint32_t i = 0; i < p->n; i++) free(p->t[i].table);
    free(p->t);
    memset(p, 0, sizeof(*p));
}

/* Every tensor of the model in file order (o already checked). */
static int plan_build(bm_plan *p, const ds4_benchmodel_opts *o, bool want_tables,
                      ds4_error *err) {
    memset(p, 0, sizeof(*p));
    p->o = o;
    p->want_tables = want_tables;
    p->q8_rms = q8_rms();
    uint64_t e = o->n_embd, v = o->n_vocab;
    int rc = add(p, "token_embd.weight", 2, e, v, 1, DS4_TYPE_F16, 0.0, 1.0, err);
    for (uint32_t il = 0; rc == 0 && il < o->n_layer; il++)
        rc = add_hc(p, il, err) || add_attn(p, il, err) || add_compress(p, il, err) ||
             add_ffn(p, il, err) ? -1 : 0;
    if (rc == 0)
        rc = add_vec(p, "output_norm.weight", e, 1.0, 0.1, err) ||
             add_mat(p, "output_hc_fn.weight", BM_HC * e, BM_HC, 1, DS4_TYPE_F16, err) ||
             add_vec(p, "output_hc_base.weight", BM_HC, 0.0, 0.5, err) ||
             add_vec(p, "output_hc_scale.weight", 1, 0.5, 0.1, err) ||
             add_mat(p, "output.weight", e, v, 1, DS4_TYPE_Q8_0, err) ? -1 : 0;
    if (rc != 0) plan_free(p);
    return rc;
}

uint64_t ds4_benchmodel_data_bytes(const ds4_benchmodel_opts *o) {
    bm_plan p;
    if (plan_build(&p, o, false, NULL) != 0) return 0;
    uint64_t b = p.bytes;
    plan_free(&p);
    return b;
}

/* ---------------------------------------------------------------------- */
/* Pieces                                                                  */
/* ---------------------------------------------------------------------- */

typedef struct bm_job {
    uint32_t t;        /* tensor index */
    uint64_t off, n;   /* bytes within the tensor (whole units) */
    uint64_t piece;
} bm_job;

static void gen_tid2eid(const bm_tensor *t, uint32_t n_expert, bm_rng *r, uint8_t *dst,
                        uint64_t rows) {
    uint32_t k_used = (uint32_t)t->ne[0];
    int32_t ids[64];
    for (uint64_t row = 0; row < rows; row++) {
        for (uint32_t k = 0; k < k_used; k++) {
            for (;;) {
                int32_t e = (int32_t)(rng_u64(r) % n_expert);
                uint32_t j = 0;
                while (j < k && ids[j] != e) j++;
                if (j == k) {
                    ids[k] = e;
                    break;
                }
            }
        }
        memcpy(dst + row * k_used * sizeof(int32_t), ids, k_used * sizeof(int32_t));
    }
}

/* Fill dst with piece j: a pure function of (seed, tensor, piece). */
static void gen_piece(const bm_plan *p, const bm_job *j, uint8_t *dst) {
    const bm_tensor *t = &p->t[j->t];
    bm_rng r = rng_for(p->o->seed, t->hash, j->piece);
    uint64_t units = j->n / t->unit;
    switch (t->kind) {
    case GK_CODES:
        for (uint64_t i = 0; i < units; i++)
            codes_block(t->type, &r, t->d, t->dmin, dst + i * t->unit);
        break;
    case GK_Q8_0:
        for (uint64_t i = 0; i < units; i++) {
            uint8_t *b = dst + i * t->unit;
            put16(b, t->d);
            rng_fill(&r, b + 2, DS4_QK8_0);
            for (int k = 2; k < 2 + DS4_QK8_0; k++) b[k] = b[k] == 0x80 ? 0 : b[k];
        }
        break;
    case GK_F16: {
        uint16_t *v = (uint16_t *)(void *)dst; /* slots are malloc'd: aligned */
        uint64_t i = 0;
        while (i < units) { /* five 12-bit indices per draw */
            uint64_t x = rng_u64(&r);
            for (int k = 0; k < 5 && i < units; k++, i++, x >>= 12)
                v[i] = t->table[x & (BM_TABLE - 1)];
        }
        break;
    }
    case GK_F32:
        for (uint64_t i = 0; i < units; i++) {
            float f = (float)(t->center + t->scale * rng_normal(&r));
            memcpy(dst + 4 * i, &f, 4);
        }
        break;
    default:
        gen_tid2eid(t, p->o->n_expert, &r, dst, units);
        break;
    }
}

static int jobs_build(const bm_plan *p, uint64_t chunk, bm_job **out, uint64_t *n_out,
                      uint64_t *max_bytes, ds4_error *err) {
    uint64_t n = 0;
    for (uint32_t i = 0; i < p->n; i++) {
        uint64_t per = chunk / p->t[i].unit ? chunk / p->t[i].unit * p->t[i].unit : p->t[i].unit;
        n += (p->t[i].nbytes + per - 1) / per;
    }
    bm_job *v = malloc((n ? n : 1) * sizeof(*v));
    if (!v) return ds4_fail(err, "bench model: out of memory");
    uint64_t k = 0, mx = 1;
    for (uint32_t i = 0; i < p->n; i++) {
        uint64_t per = chunk / p->t[i].unit ? chunk / p->t[i].unit * p->t[i].unit : p->t[i].unit;
        for (uint64_t off = 0, piece = 0; off < p->t[i].nbytes; off += per, piece++) {
            uint64_t len = p->t[i].nbytes - off < per ? p->t[i].nbytes - off : per;
            v[k++] = (bm_job){i, off, len, piece};
            if (len > mx) mx = len;
        }
    }
    *out = v;
    *n_out = n;
    *max_bytes = mx;
    return 0;
}

/* ---------------------------------------------------------------------- */
/* The pipeline: workers fill a ring of slots, the caller writes in order  */
/* ---------------------------------------------------------------------- */

typedef struct bm_pipe {
    const bm_plan *p;
    const bm_job *jobs;
    uint64_t n_jobs;
    uint32_t n_slots;
    uint8_t **slot;
    int64_t *slot_job;   /* job a slot holds ready, or -1 */
    pthread_mutex_t mu;
    pthread_cond_t ready, freed;
    uint64_t next;       /* next job to take */
    uint64_t written;    /* jobs written (their slots are free) */
    bool abort;
} bm_pipe;

static void *worker(void *arg) {
    bm_pipe *q = arg;
    pthread_mutex_lock(&q->mu);
    for (;;) {
        if (q->abort || q->next >= q->n_jobs) break;
        uint64_t j = q->next++;
        while (!q->abort && j >= q->written + q->n_slots) pthread_cond_wait(&q->freed, &q->mu);
        if (q->abort) break;
        pthread_mutex_unlock(&q->mu);
        uint32_t s = (uint32_t)(j % q->n_slots);
        gen_piece(q->p, &q->jobs[j], q->slot[s]);
        pthread_mutex_lock(&q->mu);
        q->slot_job[s] = (int64_t)j;
        pthread_cond_broadcast(&q->ready);
    }
    pthread_mutex_unlock(&q->mu);
    return NULL;
}

static int write_jobs(bm_pipe *q, gguf_writer *w, uint32_t n_workers, ds4_error *err) {
    const ds4_benchmodel_opts *o = q->p->o;
    uint64_t done = 0;
    for (uint64_t j = 0; j < q->n_jobs; j++) {
        uint32_t s = (uint32_t)(j % q->n_slots);
        if (n_workers == 0) {
            gen_piece(q->p, &q->jobs[j], q->slot[s]);
        } else {
            pthread_mutex_lock(&q->mu);
            while (q->slot_job[s] != (int64_t)j) pthread_cond_wait(&q->ready, &q->mu);
            pthread_mutex_unlock(&q->mu);
        }
        if (gguf_writer_stream_write(w, q->slot[s], q->jobs[j].n, err) != 0) return -1;
        done += q->jobs[j].n;
        pthread_mutex_lock(&q->mu);
        q->slot_job[s] = -1;
        q->written = j + 1;
        pthread_cond_broadcast(&q->freed);
        pthread_mutex_unlock(&q->mu);
        if (o->progress) o->progress(o->progress_ctx, done, q->p->bytes);
    }
    return 0;
}

static uint32_t online_cpus(void) {
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    if (n < 1) return 1;
    return n > DS4_BENCH_MAX_THREADS ? DS4_BENCH_MAX_THREADS : (uint32_t)n;
}

static int run_pipeline(const bm_plan *p, gguf_writer *w, ds4_error *err) {
    const ds4_benchmodel_opts *o = p->o;
    bm_job *jobs = NULL;
    uint64_t n_jobs = 0, max_bytes = 0;
    uint64_t chunk = o->chunk_bytes ? o->chunk_bytes : BM_CHUNK;
    if (jobs_build(p, chunk, &jobs, &n_jobs, &max_bytes, err) != 0) return -1;
    uint32_t threads = o->threads ? o->threads : online_cpus();
    if (threads > n_jobs) threads = n_jobs ? (uint32_t)n_jobs : 1;
    uint32_t n_slots = 2 * threads + 2 < BM_MAX_SLOTS ? 2 * threads + 2 : BM_MAX_SLOTS;
    bm_pipe q = {.p = p, .jobs = jobs, .n_jobs = n_jobs, .n_slots = n_slots};
    q.slot = calloc(n_slots, sizeof(uint8_t *));
    q.slot_job = malloc(n_slots * sizeof(int64_t));
    int rc = q.slot && q.slot_job ? 0 : ds4_fail(err, "bench model: out of memory");
    for (uint32_t s = 0; rc == 0 && s < n_slots; s++) {
        q.slot_job[s] = -1;
        if (!(q.slot[s] = malloc(max_bytes)))
            rc = ds4_fail(err, "bench model: out of memory for %u pieces of %" PRIu64 " bytes",
                          n_slots, max_bytes);
    }
    pthread_t tid[DS4_BENCH_MAX_THREADS];
    uint32_t started = 0;
    if (rc == 0) {
        pthread_mutex_init(&q.mu, NULL);
        pthread_cond_init(&q.ready, NULL);
        pthread_cond_init(&q.freed, NULL);
        while (started < threads && pthread_create(&tid[started], NULL, worker, &q) == 0)
            started++;
        rc = write_jobs(&q, w, started, err);
        pthread_mutex_lock(&q.mu);
        q.abort = true;
        pthread_cond_broadcast(&q.freed);
        pthread_mutex_unlock(&q.mu);
        for (uint32_t i = 0; i < started; i++) pthread_join(tid[i], NULL);
        pthread_cond_destroy(&q.freed);
        pthread_cond_destroy(&q.ready);
        pthread_mutex_destroy(&q.mu);
    }
    for (uint32_t s = 0; q.slot && s < n_slots; s++) free(q.slot[s]);
    free(q.slot);
    free(q.slot_job);
    free(jobs);
    return rc;
}

/* ---------------------------------------------------------------------- */
/* Metadata and tokenizer                                                  */
/* ---------------------------------------------------------------------- */

static void put_hparams(gguf_writer *w, const ds4_benchmodel_opts *o) {
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
        .n_hash_layers = ds4_benchmodel_hash_layers(o),
        .n_swa = o->n_swa,
        .n_idx_head = o->n_idx_head,
        .idx_head_dim = o->idx_head_dim,
        .idx_top_k = o->idx_top_k,
        .n_hc = BM_HC,
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
        hp.compress_ratio[il] = ds4_benchmodel_ratio(o, il);
        hp.swiglu_clamp[il] = 10.0f;
    }
    char name[128];
    snprintf(name, sizeof(name), "ds4cl benchmark model (%s, %" PRIu32 " layers, random weights)",
             ds4_benchmodel_mix_name(o->mix), o->n_layer);
    ds4_model_write_hparams(w, &hp, name);
    gguf_w_bool(w, "ds4cl.bench_model", true);
    gguf_w_str(w, "ds4cl.bench_mix", ds4_benchmodel_mix_name(o->mix));
    gguf_w_u64(w, "ds4cl.bench_seed", o->seed);
}

/* GPT-2 byte-to-unicode: printable Latin-1 bytes map to themselves, the
 * other 68 to 256.. in byte order. */
static bool byte_printable(uint32_t b) {
    return (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174 && b <= 255);
}

/* Bytes ordered so the first pairs look like text: space, lower case by
 * frequency, upper case, digits, then the rest ascending. */
static void byte_order(uint8_t order[256]) {
    const char *pref = " etaoinshrdlucmfwypvbgkjqxzETAOINSHRDLUCMFWYPVBGKJQXZ0123456789";
    bool used[256] = {false};
    uint32_t n = 0;
    for (const char *c = pref; *c; c++) {
        order[n++] = (uint8_t)*c;
        used[(uint8_t)*c] = true;
    }
    for (uint32_t b = 0; b < 256; b++)
        if (!used[b]) order[n++] = (uint8_t)b;
}

static int put_tokenizer(gguf_writer *w, uint32_t nv, ds4_error *err) {
    static const char *const special[N_SPECIAL] = {
        "<\xef\xbd\x9c" "begin\xe2\x96\x81of\xe2\x96\x81sentence\xef\xbd\x9c>",
        "<\xef\xbd\x9c" "end\xe2\x96\x81of\xe2\x96\x81sentence\xef\xbd\x9c>",
        "<\xef\xbd\x9cUser\xef\xbd\x9c>",
        "<\xef\xbd\x9c" "Assistant\xef\xbd\x9c>",
        "<think>",
        "</think>",
        "\xef\xbd\x9c" "DSML\xef\xbd\x9c",
    };
    uint32_t n_fill = nv - MIN_VOCAB;
    /* byte token <= 2 bytes + NUL; pair 4+1 and merge 5+1; triple 6+1, merge 7+1 */
    size_t pool_cap = (size_t)N_BYTES * 3 + (size_t)n_fill * 16;
    const char **tokens = calloc(nv, sizeof(char *));
    const char **merges = calloc(n_fill ? n_fill : 1, sizeof(char *));
    int32_t *types = calloc(nv, sizeof(int32_t));
    char *pool = malloc(pool_cap);
    if (!tokens || !merges || !types || !pool) {
        free(tokens);
        free(merges);
        free(types);
        free(pool);
        return ds4_fail(err, "bench model: out of memory for the tokenizer");
    }
    char *p = pool;
    const char *byte_tok[256];
    for (uint32_t i = 0; i < N_SPECIAL; i++) {
        tokens[i] = special[i];
        types[i] = 3; /* control */
    }
    uint32_t extra = 0;
    for (uint32_t b = 0; b < 256; b++) {
        uint32_t cp = byte_printable(b) ? b : 256 + extra++;
        byte_tok[b] = p;
        if (cp < 0x80) {
            *p++ = (char)cp;
        } else {
            *p++ = (char)(0xC0 | (cp >> 6));
            *p++ = (char)(0x80 | (cp & 0x3F));
        }
        *p++ = '\0';
        tokens[N_SPECIAL + b] = byte_tok[b];
        types[N_SPECIAL + b] = 1;
    }
    uint8_t order[256];
    byte_order(order);
    uint32_t k = 0;
    /* pairs: by the sum of the two bytes' ranks, so early ones are common */
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
    /* triples "AB C": each pair (in rank order) times every byte */
    for (uint32_t t = 0; k < n_fill; t++, k++) {
        const char *ab = tokens[MIN_VOCAB + t / 256], *c = byte_tok[order[t % 256]];
        tokens[MIN_VOCAB + k] = p;
        p += (size_t)sprintf(p, "%s%s", ab, c) + 1;
        merges[k] = p;
        p += (size_t)sprintf(p, "%s %s", ab, c) + 1;
        types[MIN_VOCAB + k] = 1;
    }
    gguf_w_str(w, "tokenizer.ggml.model", "gpt2");
    gguf_w_str(w, "tokenizer.ggml.pre", "joyai-llm");
    gguf_w_arr_str(w, "tokenizer.ggml.tokens", tokens, nv);
    gguf_w_arr(w, "tokenizer.ggml.token_type", GGUF_VT_INT32, types, nv);
    gguf_w_arr_str(w, "tokenizer.ggml.merges", merges, n_fill);
    gguf_w_u32(w, "tokenizer.ggml.bos_token_id", 0);
    gguf_w_u32(w, "tokenizer.ggml.eos_token_id", 1);
    free(tokens);
    free(merges);
    free(types);
    free(pool);
    return 0;
}

/* ---------------------------------------------------------------------- */
/* Writing                                                                 */
/* ---------------------------------------------------------------------- */

/* The written file must bind (the invariant the engine relies on). */
static int check_binds(const char *path, ds4_error *err) {
    gguf_file f;
    if (gguf_open(&f, path, err) != 0) return -1;
    ds4_model *m = malloc(sizeof(*m));
    int rc = m ? ds4_model_bind(m, &f, err) : ds4_fail(err, "out of memory");
    if (rc != 0 && m) ds4_fail_wrap(err, "the written model does not bind (bug)");
    free(m);
    gguf_close(&f);
    return rc;
}

int ds4_benchmodel_write(const ds4_benchmodel_opts *o, const char *path, ds4_error *err) {
    if (ds4_benchmodel_check(o, err) != 0) return -1;
    bm_plan p;
    if (plan_build(&p, o, true, err) != 0) return -1;
    gguf_writer *w = gguf_writer_new(0);
    size_t tlen = strlen(path) + 5;
    char *tmp = malloc(tlen);
    int rc = w && tmp ? 0 : ds4_fail(err, "bench model: out of memory");
    if (rc == 0) {
        snprintf(tmp, tlen, "%s.tmp", path);
        put_hparams(w, o);
        rc = put_tokenizer(w, o->n_vocab, err);
    }
    for (uint32_t i = 0; rc == 0 && i < p.n; i++) {
        const bm_tensor *t = &p.t[i];
        uint64_t ne[GGUF_MAX_DIMS] = {t->ne[0], t->ne[1], t->ne[2], 1};
        rc = gguf_w_tensor_info(w, t->name, t->n_dims, ne, t->type, err);
    }
    bool opened = false;
    if (rc == 0) {
        rc = gguf_writer_stream_open(w, tmp, 0, err);
        opened = true; /* even on failure the file may exist */
    }
    if (rc == 0) rc = run_pipeline(&p, w, err);
    if (rc == 0) rc = gguf_writer_stream_close(w, err);
    if (rc == 0) rc = check_binds(tmp, err);
    if (rc == 0 && rename(tmp, path) != 0)
        rc = ds4_fail(err, "cannot rename %s to %s: %s", tmp, path, strerror(errno));
    gguf_writer_free(w); /* closes an abandoned stream */
    if (rc != 0) {
        if (opened) unlink(tmp);
        ds4_fail_wrap(err, "writing bench model '%s'", path);
    }
    free(tmp);
    plan_free(&p);
    return rc;
}
