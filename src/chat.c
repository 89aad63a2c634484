/* chat.c - DeepSeek V4 chat rendering and DSML parsing (see chat.h).
 *
 * Rendering works in three passes over the caller's messages:
 *   1. turns: consecutive user/tool messages merge into one user turn whose
 *      parts are contiguous in a parts array; tools attach to turn 0 (a
 *      synthetic empty system turn when the first message is not system);
 *   2. tool results inside a user turn are stably sorted by the position of
 *      their call in the latest assistant message that made calls; in
 *      thinking mode without tools, developer turns before the last user
 *      turn are removed;
 *   3. emit: every piece of text goes through emit() with its special flag;
 *      adjacent pieces with the same flag share one segment.  The segments
 *      are offsets while the buffer grows and become pointers at the end.
 * The output reproduces encoding_dsv4.py's encode_messages byte for byte
 * (tests/test_chat.c checks it against renderings of the official code).
 *
 * JSON that the official encoder re-serialises (tool schemas, non-string
 * argument values) goes through a small strict parser that writes Python's
 * json.dumps(ensure_ascii=False) form directly: ", " / ": " separators,
 * strings re-escaped (only " \ and control characters), integer literals
 * kept exact ("-0" becomes "0"), other numbers as Python's shortest float
 * repr.  Duplicate object keys are rejected (Python would keep the last
 * value at the first position).  Nesting is bounded by JSON_MAX_DEPTH.
 *
 * Tokenizer pieces: control tokens are looked for only inside special
 * segments; the plain text between two control tokens is one piece even
 * when it spans several segments, so BPE sees the same spans as the
 * official tokenizer running over the whole string.
 *
 * The DSML parser is a scanner over the generated text with one rule for
 * partial input: every literal is matched with lit(), which tells a
 * mismatch (an error) from a text that ends inside the literal (more
 * output needed).  Free text (reasoning, content) is cut at the earliest
 * marker and, while the text may still grow, any tail that is a proper
 * prefix of a marker is held back, so what is reported only ever grows.
 * A call costs O(len): a streamer re-parses the whole text it has so far.
 */
#include "chat.h"

#include <cjson/cJSON.h>
#include <math.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define JSON_MAX_DEPTH 256
#define NO_POS ((size_t)-1)

/* ------------------------------------------------------------------ */
/* Template strings (DeepSeek V4's, byte exact)                        */
/* ------------------------------------------------------------------ */

#define S_BOS "<｜begin▁of▁sentence｜>"
#define S_EOS "<｜end▁of▁sentence｜>"
#define S_USER "<｜User｜>"
#define S_ASSISTANT "<｜Assistant｜>"
#define S_THINK "<think>"
#define S_THINK_END "</think>"
#define S_DSML "｜DSML｜"

#define TC_OPEN "<" S_DSML "tool_calls>"
#define TC_CLOSE "</" S_DSML "tool_calls>"
#define INV_OPEN "<" S_DSML "invoke"
#define INV_CLOSE "</" S_DSML "invoke>"
#define PAR_OPEN "<" S_DSML "parameter"
#define PAR_CLOSE "</" S_DSML "parameter>"
#define PAR_CLOSE_ESC "&lt;/" S_DSML "parameter>"

static const char *const SPECIAL_TEXT[DS4_TOK_N_SPECIAL] = {
    [DS4_TOK_BOS] = S_BOS,           [DS4_TOK_EOS] = S_EOS,   [DS4_TOK_USER] = S_USER,
    [DS4_TOK_ASSISTANT] = S_ASSISTANT, [DS4_TOK_THINK] = S_THINK, [DS4_TOK_THINK_END] = S_THINK_END,
    [DS4_TOK_DSML] = S_DSML,
};

static const char THINK_MAX_PREFIX[] =
    "Reasoning Effort: Absolute maximum with no shortcuts permitted.\n"
    "You MUST be very thorough in your thinking and comprehensively decompose the problem to resolve the "
    "root cause, rigorously stress-testing your logic against all potential paths, edge cases, and "
    "adversarial scenarios.\n"
    "Explicitly write out your entire deliberation process, documenting every intermediate step, considered "
    "alternative, and rejected hypothesis to ensure absolutely no assumption is left unchecked.\n\n";

static const char TOOLS_HEAD[] =
    "## Tools\n\n"
    "You have access to a set of tools to help answer the user's question. You can invoke tools by writing a "
    "\"" TC_OPEN "\" block like the following:\n\n"
    TC_OPEN "\n"
    INV_OPEN " name=\"$TOOL_NAME\">\n"
    PAR_OPEN " name=\"$PARAMETER_NAME\" string=\"true|false\">$PARAMETER_VALUE" PAR_CLOSE "\n"
    "...\n"
    INV_CLOSE "\n"
    INV_OPEN " name=\"$TOOL_NAME2\">\n"
    "...\n"
    INV_CLOSE "\n"
    TC_CLOSE "\n\n"
    "String parameters should be specified as is and set `string=\"true\"`. For all other types (numbers, "
    "booleans, arrays, objects), pass the value in JSON format and set `string=\"false\"`.\n\n"
    "If thinking_mode is enabled (triggered by " S_THINK "), you MUST output your complete reasoning inside "
    S_THINK "..." S_THINK_END " BEFORE any tool calls or final response.\n\n"
    "Otherwise, output directly after " S_THINK_END " with tool calls or final response.\n\n"
    "### Available Tool Schemas\n\n";

static const char TOOLS_TAIL[] =
    "\n\nYou MUST strictly follow the above defined tool name and parameter schemas to invoke tool calls.\n";

const char *ds4_chat_special_text(enum ds4_special which) {
    return (unsigned)which < DS4_TOK_N_SPECIAL ? SPECIAL_TEXT[which] : NULL;
}

/* ------------------------------------------------------------------ */
/* Growable byte buffer                                                */
/* ------------------------------------------------------------------ */

typedef struct sbuf {
    char *p;
    size_t len, cap;
} sbuf;

static int sb_reserve(sbuf *b, size_t extra, ds4_error *err) {
    if (extra > SIZE_MAX / 2 - b->len) return ds4_fail(err, "chat: text too large");
    size_t need = b->len + extra + 1;
    if (need <= b->cap) return 0;
    size_t cap = b->cap ? b->cap : 256;
    while (cap < need) cap *= 2;
    char *p = realloc(b->p, cap);
    if (!p) return ds4_fail(err, "chat: out of memory (%zu bytes)", cap);
    b->p = p;
    b->cap = cap;
    return 0;
}

static int sb_add(sbuf *b, const char *s, size_t n, ds4_error *err) {
    if (sb_reserve(b, n, err)) return -1;
    if (n) memcpy(b->p + b->len, s, n);
    b->len += n;
    b->p[b->len] = '\0';
    return 0;
}

static int sb_str(sbuf *b, const char *s, ds4_error *err) { return sb_add(b, s, strlen(s), err); }

static int sb_ch(sbuf *b, char c, ds4_error *err) { return sb_add(b, &c, 1, err); }

const char *ds4_chat_json_escape(unsigned char ch, char buf[8]) {
    switch (ch) {
    case '"': return "\\\"";
    case '\\': return "\\\\";
    case '\n': return "\\n";
    case '\r': return "\\r";
    case '\t': return "\\t";
    case '\b': return "\\b";
    case '\f': return "\\f";
    default:
        if (ch >= 0x20) return NULL;
        snprintf(buf, 8, "\\u%04x", ch);
        return buf;
    }
}

/* Append s[0..n) as a JSON string the way Python's json.dumps writes it
 * with ensure_ascii=False: only '"', '\\' and control characters escaped. */
static int sb_py_string(sbuf *b, const char *s, size_t n, ds4_error *err) {
    if (sb_ch(b, '"', err)) return -1;
    size_t run = 0;
    for (size_t i = 0; i < n; i++) {
        unsigned char ch = (unsigned char)s[i];
        char ubuf[8];
        const char *esc = ds4_chat_json_escape(ch, ubuf);
        if (!esc) continue;
        if (sb_add(b, s + run, i - run, err) || sb_str(b, esc, err)) return -1;
        run = i + 1;
    }
    if (sb_add(b, s + run, n - run, err)) return -1;
    return sb_ch(b, '"', err);
}

/* ------------------------------------------------------------------ */
/* Strict JSON reader writing Python's json.dumps form                 */
/* ------------------------------------------------------------------ */

typedef struct jcur {
    const char *s;
    size_t n, i;
    int depth;
    ds4_error *err;
} jcur;

static int j_fail(jcur *c, const char *what) {
    return ds4_fail(c->err, "invalid JSON at byte %zu: %s", c->i, what);
}

static void j_ws(jcur *c) {
    while (c->i < c->n) {
        char ch = c->s[c->i];
        if (ch != ' ' && ch != '\t' && ch != '\n' && ch != '\r') break;
        c->i++;
    }
}

static int j_hex4(jcur *c, uint32_t *v) {
    if (c->n - c->i < 4) return j_fail(c, "truncated \\u escape");
    uint32_t x = 0;
    for (int k = 0; k < 4; k++) {
        char h = c->s[c->i + (size_t)k];
        int d = h >= '0' && h <= '9' ? h - '0' : h >= 'a' && h <= 'f' ? h - 'a' + 10 : h >= 'A' && h <= 'F' ? h - 'A' + 10 : -1;
        if (d < 0) return j_fail(c, "bad hex digit in \\u escape");
        x = x * 16 + (uint32_t)d;
    }
    c->i += 4;
    *v = x;
    return 0;
}

static int sb_utf8(sbuf *b, uint32_t cp, ds4_error *err) {
    char u[4];
    size_t n;
    if (cp < 0x80) {
        u[0] = (char)cp;
        n = 1;
    } else if (cp < 0x800) {
        u[0] = (char)(0xC0 | (cp >> 6));
        u[1] = (char)(0x80 | (cp & 0x3F));
        n = 2;
    } else if (cp < 0x10000) {
        u[0] = (char)(0xE0 | (cp >> 12));
        u[1] = (char)(0x80 | ((cp >> 6) & 0x3F));
        u[2] = (char)(0x80 | (cp & 0x3F));
        n = 3;
    } else {
        u[0] = (char)(0xF0 | (cp >> 18));
        u[1] = (char)(0x80 | ((cp >> 12) & 0x3F));
        u[2] = (char)(0x80 | ((cp >> 6) & 0x3F));
        u[3] = (char)(0x80 | (cp & 0x3F));
        n = 4;
    }
    return sb_add(b, u, n, err);
}

/* A string at c->i (the opening quote); its decoded bytes go to raw
 * (NULL: validate only). */
static int j_string(jcur *c, sbuf *raw) {
    if (c->i >= c->n || c->s[c->i] != '"') return j_fail(c, "expected a string");
    c->i++;
    size_t run = c->i;
    for (;;) {
        if (c->i >= c->n) return j_fail(c, "unterminated string");
        unsigned char ch = (unsigned char)c->s[c->i];
        if (ch == '"') break;
        if (ch < 0x20) return j_fail(c, "control character in string");
        if (ch != '\\') {
            c->i++;
            continue;
        }
        if (raw && sb_add(raw, c->s + run, c->i - run, c->err)) return -1;
        c->i++;
        if (c->i >= c->n) return j_fail(c, "unterminated string");
        char e = c->s[c->i++];
        char lit = 0;
        switch (e) {
        case '"': lit = '"'; break;
        case '\\': lit = '\\'; break;
        case '/': lit = '/'; break;
        case 'b': lit = '\b'; break;
        case 'f': lit = '\f'; break;
        case 'n': lit = '\n'; break;
        case 'r': lit = '\r'; break;
        case 't': lit = '\t'; break;
        case 'u': break;
        default: c->i--; return j_fail(c, "bad escape in string");
        }
        if (lit) {
            if (raw && sb_ch(raw, lit, c->err)) return -1;
        } else {
            uint32_t cp;
            if (j_hex4(c, &cp)) return -1;
            if (cp >= 0xDC00 && cp <= 0xDFFF) return j_fail(c, "lone low surrogate in \\u escape");
            if (cp >= 0xD800 && cp <= 0xDBFF) {
                uint32_t lo;
                if (c->n - c->i < 2 || c->s[c->i] != '\\' || c->s[c->i + 1] != 'u')
                    return j_fail(c, "lone high surrogate in \\u escape");
                c->i += 2;
                if (j_hex4(c, &lo)) return -1;
                if (lo < 0xDC00 || lo > 0xDFFF) return j_fail(c, "bad surrogate pair in \\u escape");
                cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
            }
            if (raw && sb_utf8(raw, cp, c->err)) return -1;
        }
        run = c->i;
    }
    if (raw && sb_add(raw, c->s + run, c->i - run, c->err)) return -1;
    c->i++;
    return 0;
}

/* Python's repr() of a finite or infinite double (json.dumps uses it). */
static void py_float_repr(double d, char *out, size_t cap) {
    if (isinf(d)) {
        snprintf(out, cap, "%s", d < 0 ? "-Infinity" : "Infinity");
        return;
    }
    if (d == 0) {
        snprintf(out, cap, "%s", signbit(d) ? "-0.0" : "0.0");
        return;
    }
    /* Shortest round-tripping significand. */
    char e[40];
    for (int p = 1; p <= 17; p++) {
        snprintf(e, sizeof(e), "%.*e", p - 1, d);
        if (strtod(e, NULL) == d) break;
    }
    /* e = [-]D[.DDD]e[+-]XX  ->  digits and decimal point position. */
    char digits[24];
    size_t nd = 0;
    const char *q = e;
    bool neg = *q == '-';
    if (neg) q++;
    for (; *q && *q != 'e'; q++)
        if (*q != '.') digits[nd++] = *q;
    while (nd > 1 && digits[nd - 1] == '0') nd--;
    int decpt = atoi(q + 1) + 1; /* value = 0.DIGITS * 10^decpt */
    size_t o = 0;
#define PUT(ch) do { if (o + 1 < cap) out[o++] = (ch); } while (0)
    if (neg) PUT('-');
    if (decpt > -4 && decpt <= 16) {
        if (decpt <= 0) {
            PUT('0');
            PUT('.');
            for (int k = 0; k < -decpt; k++) PUT('0');
            for (size_t k = 0; k < nd; k++) PUT(digits[k]);
        } else {
            for (int k = 0; k < decpt; k++) PUT((size_t)k < nd ? digits[k] : '0');
            PUT('.');
            if ((size_t)decpt >= nd) PUT('0');
            for (size_t k = (size_t)decpt; k < nd; k++) PUT(digits[k]);
        }
    } else {
        PUT(digits[0]);
        if (nd > 1) {
            PUT('.');
            for (size_t k = 1; k < nd; k++) PUT(digits[k]);
        }
        int x = decpt - 1;
        char xb[16];
        snprintf(xb, sizeof(xb), "e%c%02d", x < 0 ? '-' : '+', x < 0 ? -x : x);
        for (const char *t = xb; *t; t++) PUT(*t);
    }
#undef PUT
    out[o] = '\0';
}

static bool is_digit(char ch) { return ch >= '0' && ch <= '9'; }

static int j_number(jcur *c, sbuf *out) {
    size_t st = c->i;
    bool is_float = false;
    if (c->i < c->n && c->s[c->i] == '-') c->i++;
    if (c->i >= c->n || !is_digit(c->s[c->i])) return j_fail(c, "bad number");
    if (c->s[c->i] == '0') c->i++;
    else
        while (c->i < c->n && is_digit(c->s[c->i])) c->i++;
    if (c->i < c->n && c->s[c->i] == '.') {
        c->i++;
        if (c->i >= c->n || !is_digit(c->s[c->i])) return j_fail(c, "bad number fraction");
        while (c->i < c->n && is_digit(c->s[c->i])) c->i++;
        is_float = true;
    }
    if (c->i < c->n && (c->s[c->i] == 'e' || c->s[c->i] == 'E')) {
        c->i++;
        if (c->i < c->n && (c->s[c->i] == '+' || c->s[c->i] == '-')) c->i++;
        if (c->i >= c->n || !is_digit(c->s[c->i])) return j_fail(c, "bad number exponent");
        while (c->i < c->n && is_digit(c->s[c->i])) c->i++;
        is_float = true;
    }
    if (!out) return 0;
    size_t len = c->i - st;
    if (!is_float) {
        if (len == 2 && c->s[st] == '-' && c->s[st + 1] == '0') return sb_ch(out, '0', c->err);
        return sb_add(out, c->s + st, len, c->err);
    }
    char *tmp = malloc(len + 1);
    if (!tmp) return ds4_fail(c->err, "chat: out of memory");
    memcpy(tmp, c->s + st, len);
    tmp[len] = '\0';
    double d = strtod(tmp, NULL);
    free(tmp);
    char rep[48];
    py_float_repr(d, rep, sizeof(rep));
    return sb_str(out, rep, c->err);
}

static int j_word(jcur *c, const char *w, sbuf *out) {
    size_t n = strlen(w);
    if (c->n - c->i < n || memcmp(c->s + c->i, w, n) != 0) return j_fail(c, "unexpected character");
    c->i += n;
    return out ? sb_add(out, w, n, c->err) : 0;
}

static int j_value(jcur *c, sbuf *out);

/* Keys seen in one object, for the duplicate check. */
typedef struct keyset {
    sbuf all;
    size_t *ends;
    size_t n, cap;
} keyset;

static void keyset_free(keyset *k) {
    free(k->all.p);
    free(k->ends);
}

/* Add key; fails when the object already has it. */
static int keyset_add(keyset *k, const char *key, size_t len, ds4_error *err) {
    size_t start = 0;
    for (size_t i = 0; i < k->n; i++) {
        size_t end = k->ends[i];
        if (end - start == len && memcmp(k->all.p + start, key, len) == 0) {
            char shown[64];
            snprintf(shown, sizeof(shown), "%.*s", (int)(len < 60 ? len : 60), key);
            return ds4_fail(err, "duplicate key \"%s\" in a JSON object", shown);
        }
        start = end;
    }
    if (k->n == k->cap) {
        size_t cap = k->cap ? k->cap * 2 : 8;
        size_t *e = realloc(k->ends, cap * sizeof(*e));
        if (!e) return ds4_fail(err, "chat: out of memory");
        k->ends = e;
        k->cap = cap;
    }
    if (sb_add(&k->all, key, len, err)) return -1;
    k->ends[k->n++] = k->all.len;
    return 0;
}

/* Walk the members of the object at c->i.  For each member, fn is called
 * with the decoded key and the cursor on the value, which fn must consume;
 * fn == NULL copies the object to out in Python's form. */
typedef int (*member_fn)(void *ctx, const char *key, size_t klen, jcur *c);

static int j_object(jcur *c, sbuf *out, member_fn fn, void *ctx) {
    if (c->i >= c->n || c->s[c->i] != '{') return j_fail(c, "expected an object");
    if (++c->depth > JSON_MAX_DEPTH) return j_fail(c, "nested too deeply");
    c->i++;
    keyset keys = {0};
    sbuf key = {0};
    int rc = -1;
    if (out && sb_ch(out, '{', c->err)) goto done;
    j_ws(c);
    if (c->i < c->n && c->s[c->i] == '}') {
        c->i++;
        rc = out ? sb_ch(out, '}', c->err) : 0;
        goto done;
    }
    for (bool first = true;; first = false) {
        j_ws(c);
        key.len = 0;
        if (j_string(c, &key) || keyset_add(&keys, key.p ? key.p : "", key.len, c->err)) goto done;
        j_ws(c);
        if (c->i >= c->n || c->s[c->i] != ':') {
            j_fail(c, "expected ':'");
            goto done;
        }
        c->i++;
        j_ws(c);
        if (fn) {
            if (fn(ctx, key.p ? key.p : "", key.len, c)) goto done;
        } else {
            if (out && ((!first && sb_str(out, ", ", c->err)) || sb_py_string(out, key.p ? key.p : "", key.len, c->err) ||
                        sb_str(out, ": ", c->err)))
                goto done;
            if (j_value(c, out)) goto done;
        }
        j_ws(c);
        if (c->i < c->n && c->s[c->i] == ',') {
            c->i++;
            continue;
        }
        if (c->i < c->n && c->s[c->i] == '}') {
            c->i++;
            break;
        }
        j_fail(c, "expected ',' or '}'");
        goto done;
    }
    rc = out ? sb_ch(out, '}', c->err) : 0;
done:
    c->depth--;
    keyset_free(&keys);
    free(key.p);
    return rc;
}

static int j_array(jcur *c, sbuf *out) {
    if (++c->depth > JSON_MAX_DEPTH) return j_fail(c, "nested too deeply");
    c->i++;
    int rc = -1;
    if (out && sb_ch(out, '[', c->err)) goto done;
    j_ws(c);
    if (c->i < c->n && c->s[c->i] == ']') {
        c->i++;
        rc = out ? sb_ch(out, ']', c->err) : 0;
        goto done;
    }
    for (bool first = true;; first = false) {
        j_ws(c);
        if (out && !first && sb_str(out, ", ", c->err)) goto done;
        if (j_value(c, out)) goto done;
        j_ws(c);
        if (c->i < c->n && c->s[c->i] == ',') {
            c->i++;
            continue;
        }
        if (c->i < c->n && c->s[c->i] == ']') {
            c->i++;
            break;
        }
        j_fail(c, "expected ',' or ']'");
        goto done;
    }
    rc = out ? sb_ch(out, ']', c->err) : 0;
done:
    c->depth--;
    return rc;
}

/* One value at c->i, copied to out in Python's form (out NULL: validate). */
static int j_value(jcur *c, sbuf *out) {
    if (c->i >= c->n) return j_fail(c, "unexpected end");
    switch (c->s[c->i]) {
    case '{': return j_object(c, out, NULL, NULL);
    case '[': return j_array(c, out);
    case '"': {
        if (!out) return j_string(c, NULL);
        sbuf raw = {0};
        int rc = j_string(c, &raw);
        if (rc == 0) rc = sb_py_string(out, raw.p ? raw.p : "", raw.len, c->err);
        free(raw.p);
        return rc;
    }
    case 't': return j_word(c, "true", out);
    case 'f': return j_word(c, "false", out);
    case 'n': return j_word(c, "null", out);
    default: return j_number(c, out);
    }
}

static int j_end(jcur *c) {
    j_ws(c);
    return c->i == c->n ? 0 : j_fail(c, "unexpected text after the value");
}

int ds4_chat_json_canon(const char *json, size_t len, char **out, size_t *out_len, ds4_error *err) {
    *out = NULL;
    if (out_len) *out_len = 0;
    jcur c = {json, len, 0, 0, err};
    sbuf b = {0};
    j_ws(&c);
    if (j_value(&c, &b) || j_end(&c) || sb_reserve(&b, 0, err)) {
        free(b.p);
        return -1;
    }
    *out = b.p;
    if (out_len) *out_len = b.len;
    return 0;
}

/* ------------------------------------------------------------------ */
/* Rendering                                                           */
/* ------------------------------------------------------------------ */

typedef struct seg_off {
    size_t off, len;
    bool special;
} seg_off;

typedef struct render {
    sbuf text;
    seg_off *segs;
    size_t n_segs, cap_segs;
    ds4_error *err;
} render;

static int emit(render *r, const char *s, size_t n, bool special) {
    if (n == 0) return 0;
    if (r->n_segs && r->segs[r->n_segs - 1].special == special) {
        r->segs[r->n_segs - 1].len += n;
    } else {
        if (r->n_segs == r->cap_segs) {
            size_t cap = r->cap_segs ? r->cap_segs * 2 : 32;
            seg_off *g = realloc(r->segs, cap * sizeof(*g));
            if (!g) return ds4_fail(r->err, "chat: out of memory");
            r->segs = g;
            r->cap_segs = cap;
        }
        r->segs[r->n_segs++] = (seg_off){r->text.len, n, special};
    }
    return sb_add(&r->text, s, n, r->err);
}

static int tmpl(render *r, const char *s) { return emit(r, s, strlen(s), true); }
static int user_text(render *r, const char *s) { return s ? emit(r, s, strlen(s), false) : 0; }

enum turn_kind { TK_SYSTEM, TK_DEVELOPER, TK_USER, TK_ASSISTANT };

typedef struct turn {
    enum turn_kind kind;
    const ds4_chat_msg *msg;  /* NULL: the synthetic empty system turn */
    size_t part0, n_parts;    /* TK_USER: its messages in parts[] */
    bool tools;               /* the tools block follows this turn's content */
} turn;

/* Members of a tool definition that decide whether it is the OpenAI
 * wrapper {"type": "function", "function": {...}}; fn gets the function
 * object in Python's form. */
typedef struct tool_ctx {
    bool type_is_function, has_function;
    sbuf fn;
} tool_ctx;

static int tool_member(void *vctx, const char *key, size_t klen, jcur *c) {
    tool_ctx *t = vctx;
    char first = c->i < c->n ? c->s[c->i] : '\0';
    if (klen == 4 && memcmp(key, "type", 4) == 0 && first == '"') {
        sbuf raw = {0};
        int rc = j_string(c, &raw);
        t->type_is_function = rc == 0 && raw.len == 8 && memcmp(raw.p, "function", 8) == 0;
        free(raw.p);
        return rc;
    }
    if (klen == 8 && memcmp(key, "function", 8) == 0 && first == '{') {
        t->has_function = true;
        t->fn.len = 0;
        return j_value(c, &t->fn);
    }
    return j_value(c, NULL);
}

/* The tools block: template text around the schemas, each re-serialised
 * (a wrapped definition renders its function object only). */
static int emit_tools(render *r, const ds4_chat *chat) {
    if (tmpl(r, TOOLS_HEAD)) return -1;
    for (size_t i = 0; i < chat->n_tools; i++) {
        const char *t = chat->tools[i] ? chat->tools[i] : "";
        char *canon = NULL;
        size_t clen = 0;
        if (ds4_chat_json_canon(t, strlen(t), &canon, &clen, r->err)) return ds4_fail_wrap(r->err, "tool %zu", i);
        tool_ctx tc = {false, false, {0}};
        if (clen && canon[0] == '{') {
            jcur c = {t, strlen(t), 0, 0, r->err};
            j_ws(&c);
            if (j_object(&c, NULL, tool_member, &tc)) {
                free(canon);
                free(tc.fn.p);
                return ds4_fail_wrap(r->err, "tool %zu", i);
            }
        }
        const char *body = canon;
        size_t blen = clen;
        if (tc.type_is_function && tc.has_function) {
            body = tc.fn.p;
            blen = tc.fn.len;
        }
        int rc = (i > 0 && tmpl(r, "\n")) || emit(r, body, blen, false);
        free(canon);
        free(tc.fn.p);
        if (rc) return -1;
    }
    return tmpl(r, TOOLS_TAIL);
}

/* Context for emitting one call's parameters from its arguments object. */
typedef struct args_ctx {
    render *r;
    size_t n;
    sbuf val;
} args_ctx;

static int emit_param(void *vctx, const char *key, size_t klen, jcur *c) {
    args_ctx *a = vctx;
    render *r = a->r;
    bool is_str = c->i < c->n && c->s[c->i] == '"';
    a->val.len = 0;
    if (is_str ? j_string(c, &a->val) : j_value(c, &a->val)) return -1;
    if ((a->n++ > 0 && tmpl(r, "\n")) || tmpl(r, PAR_OPEN " name=\"") || emit(r, key, klen, false) ||
        tmpl(r, is_str ? "\" string=\"true\">" : "\" string=\"false\">") ||
        emit(r, a->val.p ? a->val.p : "", a->val.len, false) || tmpl(r, PAR_CLOSE))
        return -1;
    return 0;
}

static int emit_calls(render *r, const ds4_chat_msg *m) {
    if (tmpl(r, "\n\n" TC_OPEN "\n")) return -1;
    for (size_t k = 0; k < m->n_tool_calls; k++) {
        const ds4_chat_tool_call *tc = &m->tool_calls[k];
        if (!tc->name) return ds4_fail(r->err, "tool call %zu has no name", k);
        if ((k > 0 && tmpl(r, "\n")) || tmpl(r, INV_OPEN " name=\"") || user_text(r, tc->name) || tmpl(r, "\">\n"))
            return -1;
        const char *args = tc->arguments ? tc->arguments : "{}";
        jcur c = {args, strlen(args), 0, 0, r->err};
        args_ctx a = {r, 0, {0}};
        j_ws(&c);
        int rc = c.i < c.n && c.s[c.i] == '{' ? j_object(&c, NULL, emit_param, &a)
                                              : j_fail(&c, "tool call arguments must be a JSON object");
        if (rc == 0) rc = j_end(&c);
        free(a.val.p);
        if (rc) return ds4_fail_wrap(r->err, "tool call %zu (%s)", k, tc->name);
        if (tmpl(r, "\n" INV_CLOSE)) return -1;
    }
    return tmpl(r, "\n" TC_CLOSE);
}

/* Index of the call with this id in m (the last one when ids repeat, as a
 * Python dict keeps the last); 0 when absent (the encoder's default). */
static size_t call_order(const ds4_chat_msg *m, const char *id) {
    size_t pos = 0;
    if (!m || !id || !*id) return 0;
    for (size_t k = 0; k < m->n_tool_calls; k++)
        if (m->tool_calls[k].id && strcmp(m->tool_calls[k].id, id) == 0) pos = k;
    return pos;
}

static bool has_ids(const ds4_chat_msg *m) {
    for (size_t k = 0; m && k < m->n_tool_calls; k++)
        if (m->tool_calls[k].id && *m->tool_calls[k].id) return true;
    return false;
}

/* Stable sort of the tool results inside each user turn by call order. */
static void sort_tool_results(turn *turns, size_t n_turns, const ds4_chat_msg **parts) {
    const ds4_chat_msg *calls = NULL;
    for (size_t t = 0; t < n_turns; t++) {
        if (turns[t].kind == TK_ASSISTANT && turns[t].msg->n_tool_calls > 0) calls = turns[t].msg;
        if (turns[t].kind != TK_USER || !has_ids(calls)) continue;
        const ds4_chat_msg **p = parts + turns[t].part0;
        size_t n = turns[t].n_parts, n_tool = 0;
        for (size_t i = 0; i < n; i++) n_tool += p[i]->role == DS4_CHAT_TOOL;
        if (n_tool < 2) continue;
        /* Insertion sort over the tool slots only; text parts stay put. */
        for (size_t i = 1; i < n; i++) {
            if (p[i]->role != DS4_CHAT_TOOL) continue;
            const ds4_chat_msg *x = p[i];
            size_t key = call_order(calls, x->tool_call_id);
            size_t j = i;
            for (;;) {
                size_t prev = j;
                do prev--; while (prev != NO_POS && p[prev]->role != DS4_CHAT_TOOL);
                if (prev == NO_POS || call_order(calls, p[prev]->tool_call_id) <= key) break;
                p[j] = p[prev];
                j = prev;
            }
            p[j] = x;
        }
    }
}

static size_t last_user_turn(const turn *turns, size_t n) {
    for (size_t t = n; t-- > 0;)
        if (turns[t].kind == TK_USER || turns[t].kind == TK_DEVELOPER) return t;
    return NO_POS;
}

/* Build the turns of chat (passes 1 and 2 of the header comment). */
static int build_turns(const ds4_chat *chat, turn **out_turns, size_t *out_n, const ds4_chat_msg ***out_parts,
                       ds4_error *err) {
    size_t n = chat->n_msgs;
    turn *turns = calloc(n + 1, sizeof(*turns));
    const ds4_chat_msg **parts = calloc(n + 1, sizeof(*parts));
    if (!turns || !parts) {
        free(turns);
        free(parts);
        return ds4_fail(err, "chat: out of memory");
    }
    size_t nt = 0, np = 0;
    bool tools = chat->n_tools > 0;
    if (tools && (n == 0 || chat->msgs[0].role != DS4_CHAT_SYSTEM)) turns[nt++] = (turn){TK_SYSTEM, NULL, 0, 0, true};
    for (size_t i = 0; i < n; i++) {
        const ds4_chat_msg *m = &chat->msgs[i];
        switch (m->role) {
        case DS4_CHAT_USER:
        case DS4_CHAT_TOOL:
            if (nt == 0 || turns[nt - 1].kind != TK_USER) turns[nt++] = (turn){TK_USER, m, np, 0, false};
            parts[np++] = m;
            turns[nt - 1].n_parts++;
            break;
        case DS4_CHAT_SYSTEM: turns[nt++] = (turn){TK_SYSTEM, m, 0, 0, tools && i == 0}; break;
        case DS4_CHAT_DEVELOPER: turns[nt++] = (turn){TK_DEVELOPER, m, 0, 0, false}; break;
        case DS4_CHAT_ASSISTANT: turns[nt++] = (turn){TK_ASSISTANT, m, 0, 0, false}; break;
        default:
            free(turns);
            free(parts);
            return ds4_fail(err, "message %zu: unknown role %d", i, (int)m->role);
        }
    }
    sort_tool_results(turns, nt, parts);
    if (chat->think != DS4_THINK_NONE && !tools) {
        size_t lu = last_user_turn(turns, nt), w = 0;
        for (size_t t = 0; t < nt; t++)
            if (!(turns[t].kind == TK_DEVELOPER && lu != NO_POS && t < lu)) turns[w++] = turns[t];
        nt = w;
    }
    *out_turns = turns;
    *out_n = nt;
    *out_parts = parts;
    return 0;
}

static int emit_turns(render *r, const ds4_chat *chat, const turn *turns, size_t nt, const ds4_chat_msg **parts) {
    bool thinking = chat->think != DS4_THINK_NONE;
    bool drop = chat->n_tools == 0; /* the encoder keeps all reasoning when tools exist */
    size_t lu = last_user_turn(turns, nt);
    if (tmpl(r, S_BOS)) return -1;
    for (size_t t = 0; t < nt; t++) {
        const turn *tu = &turns[t];
        const ds4_chat_msg *m = tu->msg;
        if (t == 0 && chat->think == DS4_THINK_MAX && tmpl(r, THINK_MAX_PREFIX)) return -1;
        switch (tu->kind) {
        case TK_SYSTEM:
            if (user_text(r, m ? m->content : NULL)) return -1;
            if (tu->tools && (tmpl(r, "\n\n") || emit_tools(r, chat))) return -1;
            break;
        case TK_DEVELOPER:
            if (!m->content || !*m->content) return ds4_fail(r->err, "a developer message needs content");
            if (tmpl(r, S_USER) || user_text(r, m->content)) return -1;
            break;
        case TK_USER:
            if (tmpl(r, S_USER)) return -1;
            for (size_t k = 0; k < tu->n_parts; k++) {
                const ds4_chat_msg *p = parts[tu->part0 + k];
                if (k > 0 && tmpl(r, "\n\n")) return -1;
                if (p->role == DS4_CHAT_TOOL) {
                    if (tmpl(r, "<tool_result>") || user_text(r, p->content) || tmpl(r, "</tool_result>")) return -1;
                } else if (user_text(r, p->content)) {
                    return -1;
                }
            }
            break;
        case TK_ASSISTANT:
            if (thinking && (!drop || lu == NO_POS || t > lu))
                if (user_text(r, m->reasoning) || tmpl(r, S_THINK_END)) return -1;
            if (user_text(r, m->content)) return -1;
            if (m->n_tool_calls && m->tool_block) {
                if (tmpl(r, m->tool_block)) return -1;
            } else if (m->n_tool_calls && emit_calls(r, m)) {
                return ds4_fail_wrap(r->err, "assistant message");
            }
            if (tmpl(r, S_EOS)) return -1;
            break;
        }
        /* Transition: open the assistant turn after the last user-like
         * message or before an assistant message. */
        if (t + 1 < nt && turns[t + 1].kind != TK_ASSISTANT) continue;
        if (tu->kind != TK_USER && tu->kind != TK_DEVELOPER) continue;
        bool open_think = thinking && (!drop || t >= lu);
        if (tmpl(r, S_ASSISTANT) || tmpl(r, open_think ? S_THINK : S_THINK_END)) return -1;
    }
    return 0;
}

void ds4_chat_prompt_free(ds4_chat_prompt *p) {
    if (!p) return;
    free(p->text);
    free(p->segs);
    memset(p, 0, sizeof(*p));
}

int ds4_chat_render(const ds4_chat *chat, ds4_chat_prompt *out, ds4_error *err) {
    memset(out, 0, sizeof(*out));
    render r = {{0}, NULL, 0, 0, err};
    turn *turns = NULL;
    const ds4_chat_msg **parts = NULL;
    size_t nt = 0;
    int rc = build_turns(chat, &turns, &nt, &parts, err);
    if (rc == 0) rc = emit_turns(&r, chat, turns, nt, parts);
    if (rc == 0) rc = sb_reserve(&r.text, 0, err);
    free(turns);
    free(parts);
    ds4_chat_segment *segs = NULL;
    if (rc == 0 && r.n_segs) {
        segs = malloc(r.n_segs * sizeof(*segs));
        if (!segs) rc = ds4_fail(err, "chat: out of memory");
    }
    if (rc) {
        free(r.text.p);
        free(r.segs);
        return -1;
    }
    for (size_t i = 0; i < r.n_segs; i++) segs[i] = (ds4_chat_segment){r.text.p + r.segs[i].off, r.segs[i].len, r.segs[i].special};
    free(r.segs);
    out->text = r.text.p;
    out->len = r.text.len;
    out->segs = segs;
    out->n_segs = r.n_segs;
    return 0;
}

char *ds4_chat_concat(const ds4_chat_segment *segs, size_t n, size_t *len) {
    size_t total = 0;
    for (size_t i = 0; i < n; i++) total += segs[i].len;
    char *s = malloc(total + 1);
    if (!s) return NULL;
    size_t o = 0;
    for (size_t i = 0; i < n; i++) {
        if (segs[i].len) memcpy(s + o, segs[i].text, segs[i].len);
        o += segs[i].len;
    }
    s[o] = '\0';
    if (len) *len = o;
    return s;
}

/* ------------------------------------------------------------------ */
/* Tokenizer pieces                                                    */
/* ------------------------------------------------------------------ */

/* The special string starting at s[0..n), or -1. */
static int special_at(const char *s, size_t n) {
    if (s[0] != '<' && (unsigned char)s[0] != 0xEF) return -1;
    for (int k = 0; k < DS4_TOK_N_SPECIAL; k++) {
        size_t l = strlen(SPECIAL_TEXT[k]);
        if (l <= n && memcmp(s, SPECIAL_TEXT[k], l) == 0) return k;
    }
    return -1;
}

static int piece_push(ds4_chat_piece **v, size_t *n, size_t *cap, ds4_chat_piece p, ds4_error *err) {
    if (p.len == 0) return 0;
    if (p.special < 0 && *n && (*v)[*n - 1].special < 0) {
        (*v)[*n - 1].len += p.len;
        return 0;
    }
    if (*n == *cap) {
        size_t c = *cap ? *cap * 2 : 32;
        ds4_chat_piece *g = realloc(*v, c * sizeof(*g));
        if (!g) return ds4_fail(err, "chat: out of memory");
        *v = g;
        *cap = c;
    }
    (*v)[(*n)++] = p;
    return 0;
}

int ds4_chat_pieces(const ds4_chat_prompt *p, ds4_chat_piece **pieces, size_t *n_out, ds4_error *err) {
    ds4_chat_piece *v = NULL;
    size_t n = 0, cap = 0;
    for (size_t s = 0; s < p->n_segs; s++) {
        size_t off = (size_t)(p->segs[s].text - p->text), len = p->segs[s].len;
        if (!p->segs[s].special) {
            if (piece_push(&v, &n, &cap, (ds4_chat_piece){off, len, -1}, err)) goto fail;
            continue;
        }
        size_t run = off;
        for (size_t i = off; i < off + len;) {
            int k = special_at(p->text + i, off + len - i);
            if (k < 0) {
                i++;
                continue;
            }
            size_t l = strlen(SPECIAL_TEXT[k]);
            if (piece_push(&v, &n, &cap, (ds4_chat_piece){run, i - run, -1}, err) ||
                piece_push(&v, &n, &cap, (ds4_chat_piece){i, l, k}, err))
                goto fail;
            i += l;
            run = i;
        }
        if (piece_push(&v, &n, &cap, (ds4_chat_piece){run, off + len - run, -1}, err)) goto fail;
    }
    *pieces = v;
    *n_out = n;
    return 0;
fail:
    free(v);
    *pieces = NULL;
    *n_out = 0;
    return -1;
}

int ds4_chat_tokenize(const ds4_tokenizer *t, const ds4_chat_prompt *p, ds4_tokens *out, ds4_error *err) {
    ds4_chat_piece *pc = NULL;
    size_t n = 0;
    if (ds4_chat_pieces(p, &pc, &n, err)) return -1;
    int rc = 0;
    for (size_t i = 0; i < n && rc == 0; i++) {
        if (pc[i].special >= 0)
            rc = ds4_tokens_push(out, ds4_tokenizer_special(t, (enum ds4_special)pc[i].special), err);
        else
            rc = ds4_tokenize(t, p->text + pc[i].off, pc[i].len, false, out, err);
    }
    free(pc);
    return rc ? ds4_fail_wrap(err, "tokenizing the chat prompt") : 0;
}

/* ------------------------------------------------------------------ */
/* DSML parsing                                                        */
/* ------------------------------------------------------------------ */

enum { LIT_NO, LIT_PARTIAL, LIT_YES };

typedef struct pstate {
    const char *s;
    size_t n, i;
    bool at_eos;
    ds4_chat_parsed *out;
    ds4_error *err;
} pstate;

/* Does the literal l start at s[i]?  LIT_PARTIAL: the text ends inside it. */
static int lit(const pstate *st, size_t i, const char *l) {
    size_t ln = strlen(l), avail = st->n - i;
    if (avail >= ln) return memcmp(st->s + i, l, ln) == 0 ? LIT_YES : LIT_NO;
    return memcmp(st->s + i, l, avail) == 0 ? LIT_PARTIAL : LIT_NO;
}

static int p_fail(pstate *st, size_t at, const char *fmt, ...) DS4_PRINTF(3, 4);
static int p_fail(pstate *st, size_t at, const char *fmt, ...) {
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    st->out->error_at = at;
    return ds4_fail(st->err, "%s", msg);
}

/* The text ended where more was needed: fine while streaming. */
static int p_more(pstate *st, const char *what) {
    if (st->at_eos) return p_fail(st, st->n, "unterminated %s at byte %zu", what, st->n);
    st->out->status = DS4_PARSE_INCOMPLETE;
    return 0;
}

/* Earliest occurrence of any marker in s[from..n); NO_POS when none.
 * *which gets the marker's index. */
static size_t find_first(const pstate *st, size_t from, const char *const *m, int nm, int *which) {
    bool first[256] = {false};
    for (int k = 0; k < nm; k++) first[(unsigned char)m[k][0]] = true;
    for (size_t i = from; i < st->n; i++) {
        if (!first[(unsigned char)st->s[i]]) continue;
        for (int k = 0; k < nm; k++)
            if (lit(st, i, m[k]) == LIT_YES) {
                *which = k;
                return i;
            }
    }
    return NO_POS;
}

/* Start of the tail of s[from..n) that could still grow into a marker
 * (n when none, or when the text is final). */
static size_t hold_from(const pstate *st, size_t from, const char *const *m, int nm) {
    if (st->at_eos) return st->n;
    size_t maxl = 0;
    for (int k = 0; k < nm; k++)
        if (strlen(m[k]) > maxl) maxl = strlen(m[k]);
    size_t lo = st->n > from + maxl ? st->n - maxl : from;
    for (size_t i = lo; i < st->n; i++)
        for (int k = 0; k < nm; k++)
            if (lit(st, i, m[k]) == LIT_PARTIAL) return i;
    return st->n;
}

static int dup_text(char **dst, size_t *dlen, const char *s, size_t n, ds4_error *err) {
    char *p = malloc(n + 1);
    if (!p) return ds4_fail(err, "chat: out of memory");
    if (n) memcpy(p, s, n);
    p[n] = '\0';
    free(*dst);
    *dst = p;
    if (dlen) *dlen = n;
    return 0;
}

/* Expect literal l at st->i: 1 matched (advanced), 0 need more (status
 * set), -1 error. */
static int expect(pstate *st, const char *l, const char *what) {
    int m = lit(st, st->i, l);
    if (m == LIT_YES) {
        st->i += strlen(l);
        return 1;
    }
    if (m == LIT_PARTIAL) return p_more(st, what) ? -1 : 0;
    return p_fail(st, st->i, "malformed tool call: expected %s at byte %zu", what, st->i);
}

/* A quoted attribute value up to the next '"' (the opening quote is
 * already consumed): 1 done, 0 need more, -1 error. */
static int attr_value(pstate *st, size_t *start, size_t *len, const char *what) {
    const char *q = memchr(st->s + st->i, '"', st->n - st->i);
    if (!q) return p_more(st, what) ? -1 : 0;
    *start = st->i;
    *len = (size_t)(q - (st->s + st->i));
    st->i += *len + 1;
    return 1;
}

static int add_call(pstate *st, size_t name_at, size_t name_len) {
    ds4_chat_parsed *o = st->out;
    ds4_chat_call *c = realloc(o->calls, (o->n_calls + 1) * sizeof(*c));
    if (!c) return ds4_fail(st->err, "chat: out of memory");
    o->calls = c;
    memset(&c[o->n_calls], 0, sizeof(*c));
    if (dup_text(&c[o->n_calls].name, NULL, st->s + name_at, name_len, st->err)) return -1;
    o->n_calls++;
    return 0;
}

/* Copy value s[0..n), replacing each "&lt;/｜DSML｜parameter>" by the tag. */
static int unescape_value(const char *s, size_t n, char **out, ds4_error *err) {
    sbuf b = {0};
    size_t el = strlen(PAR_CLOSE_ESC), run = 0;
    for (size_t i = 0; i < n;) {
        if (n - i >= el && memcmp(s + i, PAR_CLOSE_ESC, el) == 0) {
            if (sb_add(&b, s + run, i - run, err) || sb_str(&b, PAR_CLOSE, err)) goto fail;
            i += el;
            run = i;
        } else {
            i++;
        }
    }
    if (sb_add(&b, s + run, n - run, err)) goto fail;
    *out = b.p;
    return 0;
fail:
    free(b.p);
    return -1;
}

static int add_param(pstate *st, size_t name_at, size_t name_len, bool is_str, size_t val_at, size_t val_len) {
    ds4_chat_call *call = &st->out->calls[st->out->n_calls - 1];
    for (size_t k = 0; k < call->n_params; k++)
        if (strlen(call->params[k].name) == name_len && memcmp(call->params[k].name, st->s + name_at, name_len) == 0)
            return p_fail(st, name_at, "malformed tool call: duplicate parameter \"%s\" at byte %zu",
                          call->params[k].name, name_at);
    if (memchr(st->s + val_at, '\0', val_len)) return p_fail(st, val_at, "malformed tool call: NUL byte in a value at byte %zu", val_at);
    ds4_chat_param *pv = realloc(call->params, (call->n_params + 1) * sizeof(*pv));
    if (!pv) return ds4_fail(st->err, "chat: out of memory");
    call->params = pv;
    ds4_chat_param *p = &pv[call->n_params];
    memset(p, 0, sizeof(*p));
    call->n_params++;
    p->is_string = is_str;
    if (dup_text(&p->name, NULL, st->s + name_at, name_len, st->err) ||
        unescape_value(st->s + val_at, val_len, &p->value, st->err))
        return -1;
    p->json = is_str ? cJSON_CreateString(p->value) : cJSON_ParseWithOpts(p->value, NULL, 1);
    if (!p->json) {
        if (is_str) return ds4_fail(st->err, "chat: out of memory");
        return p_fail(st, val_at, "malformed tool call: parameter \"%s\" is not valid JSON (string=\"false\") at byte %zu",
                      p->name, val_at);
    }
    return 0;
}

/* One <｜DSML｜parameter ...>V</｜DSML｜parameter>\n, st->i just after
 * PAR_OPEN: 1 done, 0 need more, -1 error. */
static int parse_param(pstate *st) {
    size_t name_at, name_len;
    int r;
    if ((r = expect(st, " name=\"", "' name=\"'")) <= 0) return r;
    if ((r = attr_value(st, &name_at, &name_len, "parameter name")) <= 0) return r;
    if ((r = expect(st, " string=\"", "' string=\"'")) <= 0) return r;
    bool is_str;
    int t = lit(st, st->i, "true\">"), f = lit(st, st->i, "false\">");
    if (t == LIT_YES || f == LIT_YES) {
        is_str = t == LIT_YES;
        st->i += is_str ? 6 : 7;
    } else if (t == LIT_PARTIAL || f == LIT_PARTIAL) {
        return p_more(st, "parameter") ? -1 : 0;
    } else {
        return p_fail(st, st->i, "malformed tool call: expected string=\"true\"> or string=\"false\"> at byte %zu", st->i);
    }
    const char *const close[] = {PAR_CLOSE};
    int which;
    size_t end = find_first(st, st->i, close, 1, &which);
    if (end == NO_POS) return p_more(st, "parameter value") ? -1 : 0;
    if (add_param(st, name_at, name_len, is_str, st->i, end - st->i)) return -1;
    st->i = end + strlen(PAR_CLOSE);
    return expect(st, "\n", "a newline after </｜DSML｜parameter>");
}

/* One invoke, st->i just after INV_OPEN: 1 done, 0 need more, -1 error. */
static int parse_invoke(pstate *st) {
    while (st->i < st->n && (st->s[st->i] == ' ' || st->s[st->i] == '\t' || st->s[st->i] == '\n' || st->s[st->i] == '\r'))
        st->i++;
    size_t name_at, name_len;
    int r;
    if ((r = expect(st, "name=\"", "'name=\"'")) <= 0) return r;
    if ((r = attr_value(st, &name_at, &name_len, "tool name")) <= 0) return r;
    if ((r = expect(st, ">\n", "'\">\\n'")) <= 0) return r;
    if (add_call(st, name_at, name_len)) return -1;
    ds4_chat_call *call = &st->out->calls[st->out->n_calls - 1];
    for (;;) {
        if (lit(st, st->i, PAR_OPEN) == LIT_YES) {
            st->i += strlen(PAR_OPEN);
            if ((r = parse_param(st)) <= 0) return r;
            continue;
        }
        /* An invoke without parameters may carry one more newline. */
        if (call->n_params == 0 && lit(st, st->i, "\n" INV_CLOSE) != LIT_NO) {
            if (lit(st, st->i, "\n" INV_CLOSE) == LIT_PARTIAL) return p_more(st, "invoke") ? -1 : 0;
            st->i++;
        }
        int p = lit(st, st->i, PAR_OPEN), c = lit(st, st->i, INV_CLOSE);
        if (c == LIT_YES) {
            st->i += strlen(INV_CLOSE);
            call->complete = true;
            return expect(st, "\n", "a newline after </｜DSML｜invoke>");
        }
        if (p == LIT_PARTIAL || c == LIT_PARTIAL) return p_more(st, "invoke") ? -1 : 0;
        return p_fail(st, st->i, "malformed tool call: expected %s at byte %zu",
                      "<｜DSML｜parameter or </｜DSML｜invoke>", st->i);
    }
}

/* The tool-call block, st->i just after TC_OPEN. */
static int parse_block(pstate *st) {
    int r;
    if ((r = expect(st, "\n", "a newline after <｜DSML｜tool_calls>")) <= 0) return r;
    for (;;) {
        int inv = lit(st, st->i, INV_OPEN), end = lit(st, st->i, TC_CLOSE);
        if (end == LIT_YES) {
            st->i += strlen(TC_CLOSE);
            break;
        }
        if (inv == LIT_YES) {
            st->i += strlen(INV_OPEN);
            if ((r = parse_invoke(st)) <= 0) return r;
            continue;
        }
        if (inv == LIT_PARTIAL || end == LIT_PARTIAL) return p_more(st, "tool call block");
        return p_fail(st, st->i, "malformed tool call: expected %s at byte %zu",
                      "<｜DSML｜invoke or </｜DSML｜tool_calls>", st->i);
    }
    /* Closed: only the end of sentence may follow. */
    int e = st->i == st->n ? LIT_YES : lit(st, st->i, S_EOS);
    if (e == LIT_NO || (e == LIT_YES && st->i != st->n && st->i + strlen(S_EOS) != st->n) ||
        (e == LIT_PARTIAL && st->at_eos))
        return p_fail(st, st->i, "malformed tool call: unexpected text after </｜DSML｜tool_calls> at byte %zu", st->i);
    st->out->status = DS4_PARSE_DONE;
    return 0;
}

static int parse_content(pstate *st) {
    static const char *const marks[] = {"\n\n" TC_OPEN, TC_OPEN, S_EOS, S_THINK, S_THINK_END, S_BOS, S_DSML};
    enum { M_BLOCK_NL, M_BLOCK, M_EOS };
    enum { M_DSML = 6 };
    int which = -1;
    size_t at = find_first(st, st->i, marks, 7, &which);
    /* "<｜DSML｜" may still grow into the block opener. */
    if (which == M_DSML && at > st->i && st->s[at - 1] == '<' && !st->at_eos && lit(st, at - 1, TC_OPEN) == LIT_PARTIAL)
        at = NO_POS;
    if (at == NO_POS) {
        size_t h = hold_from(st, st->i, marks, 7);
        if (dup_text(&st->out->content, &st->out->content_len, st->s + st->i, h - st->i, st->err)) return -1;
        st->out->status = st->at_eos ? DS4_PARSE_DONE : DS4_PARSE_INCOMPLETE;
        return 0;
    }
    if (dup_text(&st->out->content, &st->out->content_len, st->s + st->i, at - st->i, st->err)) return -1;
    if (which == M_EOS) {
        st->i = at + strlen(S_EOS);
        if (st->i != st->n) return p_fail(st, st->i, "text after the end of sentence at byte %zu", st->i);
        st->out->status = DS4_PARSE_DONE;
        return 0;
    }
    if (which != M_BLOCK_NL && which != M_BLOCK)
        return p_fail(st, at, "unexpected special string %s in the content at byte %zu", marks[which], at);
    st->out->in_tool_calls = true;
    st->i = at + strlen(marks[which]);
    return parse_block(st);
}

int ds4_chat_parse(const char *text, size_t len, bool thinking, bool at_eos, ds4_chat_parsed *out, ds4_error *err) {
    memset(out, 0, sizeof(*out));
    pstate st = {text, len, 0, at_eos, out, err};
    if (dup_text(&out->content, &out->content_len, "", 0, err) || dup_text(&out->reasoning, &out->reasoning_len, "", 0, err))
        return -1;
    if (thinking) {
        static const char *const marks[] = {S_THINK_END, S_EOS};
        int which = -1;
        size_t at = find_first(&st, 0, marks, 2, &which);
        size_t end = at != NO_POS ? at : hold_from(&st, 0, marks, 2);
        if (dup_text(&out->reasoning, &out->reasoning_len, text, end, err)) return -1;
        if (at == NO_POS) {
            if (at_eos) return p_fail(&st, len, "the reasoning has no </think> (at byte %zu)", len);
            out->status = DS4_PARSE_INCOMPLETE;
            return 0;
        }
        if (which == 1) return p_fail(&st, at, "end of sentence before </think> (at byte %zu)", at);
        out->reasoning_done = true;
        st.i = at + strlen(S_THINK_END);
    }
    return parse_content(&st);
}

void ds4_chat_parsed_free(ds4_chat_parsed *p) {
    if (!p) return;
    for (size_t c = 0; c < p->n_calls; c++) {
        for (size_t k = 0; k < p->calls[c].n_params; k++) {
            free(p->calls[c].params[k].name);
            free(p->calls[c].params[k].value);
            cJSON_Delete(p->calls[c].params[k].json);
        }
        free(p->calls[c].params);
        free(p->calls[c].name);
    }
    free(p->calls);
    free(p->reasoning);
    free(p->content);
    memset(p, 0, sizeof(*p));
}

int ds4_chat_call_arguments(const ds4_chat_call *call, char **out, ds4_error *err) {
    /* Same text as the official decoder: {"k": v, ...} with string values
     * quoted and JSON values as written. */
    sbuf b = {0};
    int rc = sb_ch(&b, '{', err);
    for (size_t k = 0; k < call->n_params && rc == 0; k++) {
        const ds4_chat_param *p = &call->params[k];
        if (k > 0) rc = sb_str(&b, ", ", err);
        if (rc == 0) rc = sb_py_string(&b, p->name, strlen(p->name), err);
        if (rc == 0) rc = sb_str(&b, ": ", err);
        if (rc == 0) rc = p->is_string ? sb_py_string(&b, p->value, strlen(p->value), err) : sb_str(&b, p->value, err);
    }
    if (rc == 0) rc = sb_ch(&b, '}', err);
    if (rc) {
        free(b.p);
        *out = NULL;
        return -1;
    }
    *out = b.p;
    return 0;
}
