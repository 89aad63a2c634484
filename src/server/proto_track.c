/* proto_track.c - the generation tracker and the tool-call id map (see
 * proto.h).
 *
 * Tracker.  Generated text only grows.  The tracker keeps all of it and a
 * phase: REASONING (thinking mode, up to </think>), CONTENT (up to EOS, a
 * stop string or a DSML tool-call block), BLOCK (inside the block), DONE.
 * In REASONING and CONTENT it releases text up to the last byte that can
 * no longer be the start of a marker, a stop string or an incomplete UTF-8
 * character, so what the client sees never has to be taken back.  Each
 * released byte is looked at a bounded number of times: feeding is linear
 * in the output.
 *
 * The block is scanned by a resumable state machine with exactly the
 * grammar ds4_chat_parse accepts (chat.h): headers (invoke name, parameter
 * name and string flag) are consumed whole once complete; parameter values
 * stream: their released bytes become argument deltas at once, string
 * values JSON-escaped as Python's json.dumps(ensure_ascii=False) does, JSON
 * values verbatim, so the concatenated deltas of a call equal
 * ds4_chat_call_arguments of the parsed call.  "&lt;/｜DSML｜parameter>"
 * inside a value stands for the closing tag (held back while partial).
 *
 * A block that breaks the grammar before any call started is handed back
 * as plain content (ds4's rule) and tool parsing stops; one that breaks
 * after a call started cannot be retracted: generation stops and the
 * response ends with an error.  The exact block text (from the end of the
 * released content, including the blank line, to the end of
 * </｜DSML｜tool_calls>) is what the tool map stores per call id.
 *
 * Tool map.  A chained hash table over entries that also sit on an LRU
 * list; both limits (ids, bytes) evict from the cold end.
 */
#include "server/proto.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define S_EOS "<｜end▁of▁sentence｜>"
#define S_THINK_END "</think>"
#define S_DSML "｜DSML｜"
#define TC_OPEN "<" S_DSML "tool_calls>"
#define TC_CLOSE "</" S_DSML "tool_calls>"
#define INV_OPEN "<" S_DSML "invoke"
#define INV_CLOSE "</" S_DSML "invoke>"
#define PAR_OPEN "<" S_DSML "parameter"
#define PAR_CLOSE "</" S_DSML "parameter>"
#define PAR_CLOSE_ESC "&lt;/" S_DSML "parameter>"
#define NL_TC_OPEN "\n\n" TC_OPEN

/* ------------------------------------------------------------------ */
/* Tool map                                                            */
/* ------------------------------------------------------------------ */

typedef struct tm_entry {
    struct tm_entry *hnext;
    struct tm_entry *prev, *next; /* LRU: head is the most recent */
    uint64_t hash;
    size_t id_len, dsml_len;
    char data[]; /* id NUL dsml NUL */
} tm_entry;

struct ds4_toolmap {
    tm_entry **buckets;
    size_t n_buckets;
    tm_entry *head, *tail;
    size_t count, bytes, max_ids, max_bytes;
};

static uint64_t fnv1a(const char *s, size_t n) {
    uint64_t h = 1469598103934665603ull;
    for (size_t i = 0; i < n; i++) {
        h ^= (unsigned char)s[i];
        h *= 1099511628211ull;
    }
    return h;
}

static size_t entry_bytes(const tm_entry *e) { return sizeof(*e) + e->id_len + e->dsml_len + 2; }

int ds4_toolmap_new(ds4_toolmap **out, size_t max_ids, size_t max_bytes, ds4_error *err) {
    *out = NULL;
    ds4_toolmap *m = calloc(1, sizeof(*m));
    if (!m) return ds4p_oom(err);
    m->n_buckets = 64;
    m->buckets = calloc(m->n_buckets, sizeof(*m->buckets));
    if (!m->buckets) {
        free(m);
        return ds4p_oom(err);
    }
    m->max_ids = max_ids ? max_ids : 1;
    m->max_bytes = max_bytes;
    *out = m;
    return 0;
}

void ds4_toolmap_free(ds4_toolmap *m) {
    if (!m) return;
    tm_entry *e = m->head;
    while (e) {
        tm_entry *n = e->next;
        free(e);
        e = n;
    }
    free(m->buckets);
    free(m);
}

static tm_entry *tm_find(const ds4_toolmap *m, const char *id, size_t len, uint64_t h) {
    for (tm_entry *e = m->buckets[h & (m->n_buckets - 1)]; e; e = e->hnext)
        if (e->hash == h && e->id_len == len && memcmp(e->data, id, len) == 0) return e;
    return NULL;
}

static void lru_unlink(ds4_toolmap *m, tm_entry *e) {
    if (e->prev) e->prev->next = e->next;
    else m->head = e->next;
    if (e->next) e->next->prev = e->prev;
    else m->tail = e->prev;
    e->prev = e->next = NULL;
}

static void lru_push_front(ds4_toolmap *m, tm_entry *e) {
    e->prev = NULL;
    e->next = m->head;
    if (m->head) m->head->prev = e;
    m->head = e;
    if (!m->tail) m->tail = e;
}

static void tm_remove(ds4_toolmap *m, tm_entry *e) {
    tm_entry **pp = &m->buckets[e->hash & (m->n_buckets - 1)];
    while (*pp != e) pp = &(*pp)->hnext;
    *pp = e->hnext;
    lru_unlink(m, e);
    m->count--;
    m->bytes -= entry_bytes(e);
    free(e);
}

static int tm_rehash(ds4_toolmap *m, ds4_error *err) {
    size_t nb = m->n_buckets * 2;
    tm_entry **b = calloc(nb, sizeof(*b));
    if (!b) return ds4p_oom(err);
    for (size_t i = 0; i < m->n_buckets; i++) {
        tm_entry *e = m->buckets[i];
        while (e) {
            tm_entry *n = e->hnext;
            e->hnext = b[e->hash & (nb - 1)];
            b[e->hash & (nb - 1)] = e;
            e = n;
        }
    }
    free(m->buckets);
    m->buckets = b;
    m->n_buckets = nb;
    return 0;
}

int ds4_toolmap_put(ds4_toolmap *m, const char *id, const char *dsml, size_t len, ds4_error *err) {
    size_t il = strlen(id);
    uint64_t h = fnv1a(id, il);
    tm_entry *old = tm_find(m, id, il, h);
    if (old) tm_remove(m, old);
    if (m->count + 1 > m->n_buckets && tm_rehash(m, err)) return -1;
    tm_entry *e = malloc(sizeof(*e) + il + len + 2);
    if (!e) return ds4p_oom(err);
    memset(e, 0, sizeof(*e));
    e->hash = h;
    e->id_len = il;
    e->dsml_len = len;
    memcpy(e->data, id, il + 1);
    if (len) memcpy(e->data + il + 1, dsml, len);
    e->data[il + 1 + len] = '\0';
    size_t bi = h & (m->n_buckets - 1);
    e->hnext = m->buckets[bi];
    m->buckets[bi] = e;
    lru_push_front(m, e);
    m->count++;
    m->bytes += entry_bytes(e);
    /* Evict the coldest, never the entry just stored. */
    while ((m->count > m->max_ids || (m->max_bytes && m->bytes > m->max_bytes)) && m->tail != e) tm_remove(m, m->tail);
    return 0;
}

const char *ds4_toolmap_get(ds4_toolmap *m, const char *id, size_t *len) {
    size_t il = strlen(id);
    tm_entry *e = tm_find(m, id, il, fnv1a(id, il));
    if (!e) return NULL;
    lru_unlink(m, e);
    lru_push_front(m, e);
    if (len) *len = e->dsml_len;
    return e->data + il + 1;
}

bool ds4_toolmap_has(const ds4_toolmap *m, const char *id) {
    size_t il = strlen(id);
    return tm_find(m, id, il, fnv1a(id, il)) != NULL;
}

size_t ds4_toolmap_count(const ds4_toolmap *m) { return m->count; }
size_t ds4_toolmap_bytes(const ds4_toolmap *m) { return m->bytes; }

int ds4_toolmap_each(const ds4_toolmap *m, ds4_toolmap_visit_fn fn, void *ctx) {
    for (const tm_entry *e = m->head; e; e = e->next) {
        int r = fn(ctx, e->data, e->data + e->id_len + 1, e->dsml_len);
        if (r) return r;
    }
    return 0;
}

int ds4_tool_id_new(const ds4_toolmap *m, const char *prefix, char *out, size_t cap, ds4_error *err) {
    size_t pl = strlen(prefix);
    if (cap < pl + 33) return ds4_fail(err, "tool id buffer too small");
    for (int tries = 0; tries < 16; tries++) {
        memcpy(out, prefix, pl);
        if (ds4_random_hex(out + pl, 32, err)) return -1;
        if (!m || !ds4_toolmap_has(m, out)) return 0;
    }
    return ds4_fail(err, "could not draw an unused tool-call id");
}

/* ------------------------------------------------------------------ */
/* Tracker                                                             */
/* ------------------------------------------------------------------ */

enum phase { PH_REASONING, PH_CONTENT, PH_BLOCK, PH_DONE };

enum bstate { B_OPEN_NL, B_ITEM, B_INV_HEAD, B_PARAM_OR_END, B_PAR_HEAD, B_VALUE, B_PAR_NL, B_INV_NL };

enum { LIT_NO, LIT_PARTIAL, LIT_YES };

typedef struct tcall {
    char *name;
    char id[64];
    char **params;
    size_t n_params;
    bool ended;
} tcall;

struct ds4_gen_tracker {
    bool thinking, tools;
    char **stops;
    size_t n_stop;
    char id_prefix[24];
    const ds4_toolmap *ids;
    ds4_gen_event_fn sink;
    void *ctx;

    ds4p_buf text;
    enum phase ph;
    size_t rel;          /* REASONING/CONTENT: released up to here */
    bool raw;            /* no more tool parsing (after a malformed block) */
    bool done;
    bool eos_text;       /* the EOS string was fed */
    bool block_closed;
    bool bad_block;      /* malformed after a call started */
    const char *stop_hit;
    bool finished;

    /* block */
    size_t bsep, bcur, bend;
    enum bstate bs;
    tcall *calls;
    size_t n_calls;
    bool p_string;
    size_t vstart, vrel;
    bool js_str, js_esc; /* JSON string state over the released value bytes */
    ds4p_buf scratch;
    char problem[256];
};

static int lit_at(const ds4p_buf *b, size_t i, const char *l) {
    size_t ln = strlen(l), avail = b->len - i;
    if (avail >= ln) return memcmp(b->p + i, l, ln) == 0 ? LIT_YES : LIT_NO;
    return memcmp(b->p + i, l, avail) == 0 ? LIT_PARTIAL : LIT_NO;
}

/* Earliest start in [from, n) of a tail that is a proper prefix of one of
 * the markers (n when none). */
static size_t hold_from(const ds4p_buf *b, size_t from, const char *const *m, size_t nm) {
    size_t maxl = 0;
    for (size_t k = 0; k < nm; k++)
        if (m[k] && strlen(m[k]) > maxl) maxl = strlen(m[k]);
    size_t lo = b->len > from + maxl ? b->len - maxl : from;
    for (size_t i = lo; i < b->len; i++)
        for (size_t k = 0; k < nm; k++)
            if (m[k] && *m[k] && lit_at(b, i, m[k]) == LIT_PARTIAL) return i;
    return b->len;
}

/* Bytes at the end of s[0..n) that start a UTF-8 character not yet
 * complete (0 when the text ends on a boundary or on invalid bytes). */
static size_t utf8_hold(const char *s, size_t n) {
    const unsigned char *u = (const unsigned char *)s;
    for (size_t back = 1; back <= 3 && back <= n; back++) {
        unsigned char c = u[n - back];
        if ((c & 0xC0) == 0x80) continue; /* continuation: look further back */
        size_t need = c >= 0xF0 && c <= 0xF4 ? 4 : c >= 0xE0 ? 3 : c >= 0xC2 && c < 0xE0 ? 2 : 1;
        return need > back ? back : 0;
    }
    return 0;
}

/* Earliest occurrence of l in text[from..n), or (size_t)-1. */
static size_t find_lit(const ds4p_buf *b, size_t from, const char *l) {
    size_t ln = strlen(l);
    if (!ln || b->len < ln || from > b->len - ln) return (size_t)-1;
    for (size_t i = from; i + ln <= b->len;) {
        const char *p = memchr(b->p + i, l[0], b->len - ln + 1 - i);
        if (!p) break;
        i = (size_t)(p - b->p);
        if (memcmp(p, l, ln) == 0) return i;
        i++;
    }
    return (size_t)-1;
}

static int emit(ds4_gen_tracker *t, const ds4_gen_event *ev, ds4_error *err) { return t->sink(t->ctx, ev, err); }

/* Emit text (sanitised to valid UTF-8) as a delta of the given type. */
static int emit_text(ds4_gen_tracker *t, enum ds4_gen_ev_type type, uint32_t index, const char *s, size_t n,
                     ds4_error *err) {
    if (n == 0) return 0;
    t->scratch.len = 0;
    if (ds4p_buf_utf8(&t->scratch, s, n, err)) return -1;
    ds4_gen_event ev = {.type = type, .text = t->scratch.p, .len = t->scratch.len, .index = index};
    return emit(t, &ev, err);
}

static int emit_args(ds4_gen_tracker *t, const char *s, size_t n, ds4_error *err) {
    return emit_text(t, DS4_EV_TOOL_ARGS, (uint32_t)(t->n_calls - 1), s, n, err);
}

/* A string value piece: unescape the closing-tag escape, then JSON-escape
 * (string values) or copy (JSON values). */
static int emit_value(ds4_gen_tracker *t, size_t from, size_t to, ds4_error *err) {
    ds4p_buf out = {0};
    const char *s = t->text.p;
    size_t el = strlen(PAR_CLOSE_ESC), run = from;
    int rc = 0;
    for (size_t i = from; i < to && rc == 0;) {
        if (to - i >= el && memcmp(s + i, PAR_CLOSE_ESC, el) == 0) {
            rc = (t->p_string ? ds4p_buf_json_esc(&out, s + run, i - run, err) : ds4p_buf_add(&out, s + run, i - run, err)) ||
                 (t->p_string ? ds4p_buf_json_esc(&out, PAR_CLOSE, strlen(PAR_CLOSE), err) : ds4p_buf_str(&out, PAR_CLOSE, err));
            i += el;
            run = i;
        } else {
            i++;
        }
    }
    if (rc == 0) rc = t->p_string ? ds4p_buf_json_esc(&out, s + run, to - run, err) : ds4p_buf_add(&out, s + run, to - run, err);
    if (rc == 0) rc = emit_args(t, out.p, out.len, err);
    ds4p_buf_free(&out);
    return rc ? -1 : 0;
}

static void js_scan(const char *s, size_t n, bool *in_str, bool *esc) {
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        if (!*in_str) {
            if (c == '"') *in_str = true;
        } else if (*esc) {
            *esc = false;
        } else if (c == '\\') {
            *esc = true;
        } else if (c == '"') {
            *in_str = false;
        }
    }
}

ds4_tracker_opts ds4_gen_request_tracker_opts(const ds4_gen_request *req, uint32_t n_ctx, const ds4_toolmap *ids) {
    ds4_tracker_opts o = {0};
    o.thinking = ds4_gen_request_think(req, n_ctx) != DS4_THINK_NONE;
    o.tools = req->proto != DS4_PROTO_COMPLETIONS && (req->n_tools > 0 || req->n_custom_tools > 0);
    o.stop = req->stop;
    o.n_stop = req->n_stop;
    o.id_prefix = req->id_prefix;
    o.ids = ids;
    return o;
}

int ds4_gen_tracker_new(ds4_gen_tracker **out, const ds4_tracker_opts *o, ds4_gen_event_fn sink, void *ctx,
                        ds4_error *err) {
    *out = NULL;
    ds4_gen_tracker *t = calloc(1, sizeof(*t));
    if (!t) return ds4p_oom(err);
    t->thinking = o->thinking;
    t->tools = o->tools;
    t->ids = o->ids;
    t->sink = sink;
    t->ctx = ctx;
    snprintf(t->id_prefix, sizeof(t->id_prefix), "%s", o->id_prefix ? o->id_prefix : "call_");
    t->ph = o->thinking ? PH_REASONING : PH_CONTENT;
    if (o->n_stop) {
        t->stops = calloc(o->n_stop, sizeof(*t->stops));
        if (!t->stops) goto oom;
        for (size_t i = 0; i < o->n_stop; i++) {
            if (!o->stop[i] || !*o->stop[i]) continue;
            size_t n = strlen(o->stop[i]);
            if (!(t->stops[t->n_stop] = malloc(n + 1))) goto oom;
            memcpy(t->stops[t->n_stop++], o->stop[i], n + 1);
        }
    }
    if (ds4p_buf_add(&t->text, "", 0, err)) goto fail;
    *out = t;
    return 0;
oom:
    ds4p_oom(err);
fail:
    ds4_gen_tracker_free(t);
    return -1;
}

void ds4_gen_tracker_free(ds4_gen_tracker *t) {
    if (!t) return;
    for (size_t i = 0; i < t->n_stop; i++) free(t->stops[i]);
    free(t->stops);
    for (size_t c = 0; c < t->n_calls; c++) {
        for (size_t k = 0; k < t->calls[c].n_params; k++) free(t->calls[c].params[k]);
        free(t->calls[c].params);
        free(t->calls[c].name);
    }
    free(t->calls);
    ds4p_buf_free(&t->text);
    ds4p_buf_free(&t->scratch);
    free(t);
}

/* ---- reasoning and content ---------------------------------------- */

/* 1: moved to another phase (loop again), 0: waiting for text, -1 error. */
static int step_reasoning(ds4_gen_tracker *t, ds4_error *err) {
    size_t a = find_lit(&t->text, t->rel, S_THINK_END), b = find_lit(&t->text, t->rel, S_EOS);
    size_t m = a < b ? a : b;
    if (m != (size_t)-1) {
        if (emit_text(t, DS4_EV_REASONING, 0, t->text.p + t->rel, m - t->rel, err)) return -1;
        if (m == a) {
            ds4_gen_event ev = {.type = DS4_EV_REASONING_END};
            if (emit(t, &ev, err)) return -1;
            t->rel = m + strlen(S_THINK_END);
            t->ph = PH_CONTENT;
            return 1;
        }
        t->rel = t->text.len;
        t->eos_text = t->done = true;
        t->ph = PH_DONE;
        return 1;
    }
    const char *marks[] = {S_THINK_END, S_EOS};
    size_t h = hold_from(&t->text, t->rel, marks, 2);
    size_t u = t->text.len - utf8_hold(t->text.p, t->text.len);
    if (u < h) h = u;
    if (h < t->rel) h = t->rel;
    if (emit_text(t, DS4_EV_REASONING, 0, t->text.p + t->rel, h - t->rel, err)) return -1;
    t->rel = h;
    return 0;
}

static int step_content(ds4_gen_tracker *t, ds4_error *err) {
    bool tools = t->tools && !t->raw;
    size_t best = (size_t)-1;
    int kind = -1; /* 0 EOS, 1 block, 2 stop */
    const char *stop = NULL;
    size_t m = find_lit(&t->text, t->rel, S_EOS);
    if (m < best) best = m, kind = 0;
    if (tools && (m = find_lit(&t->text, t->rel, TC_OPEN)) < best) best = m, kind = 1;
    for (size_t i = 0; i < t->n_stop; i++)
        if ((m = find_lit(&t->text, t->rel, t->stops[i])) < best) best = m, kind = 2, stop = t->stops[i];
    if (kind >= 0) {
        size_t end = best;
        if (kind == 1 && best >= t->rel + 2 && t->text.p[best - 1] == '\n' && t->text.p[best - 2] == '\n') end = best - 2;
        if (emit_text(t, DS4_EV_CONTENT, 0, t->text.p + t->rel, end - t->rel, err)) return -1;
        t->rel = end;
        if (kind == 1) {
            t->bsep = end;
            t->bcur = best + strlen(TC_OPEN);
            t->bs = B_OPEN_NL;
            t->ph = PH_BLOCK;
            return 1;
        }
        if (kind == 0) t->eos_text = true;
        else t->stop_hit = stop;
        t->done = true;
        t->ph = PH_DONE;
        return 1;
    }
    const char *marks[DS4_MAX_STOPS + 3];
    size_t nm = 0;
    marks[nm++] = S_EOS;
    if (tools) {
        marks[nm++] = TC_OPEN;
        marks[nm++] = NL_TC_OPEN;
    }
    for (size_t i = 0; i < t->n_stop && nm < sizeof(marks) / sizeof(marks[0]); i++) marks[nm++] = t->stops[i];
    size_t h = hold_from(&t->text, t->rel, marks, nm);
    size_t u = t->text.len - utf8_hold(t->text.p, t->text.len);
    if (u < h) h = u;
    if (h < t->rel) h = t->rel;
    if (emit_text(t, DS4_EV_CONTENT, 0, t->text.p + t->rel, h - t->rel, err)) return -1;
    t->rel = h;
    return 0;
}

/* ---- the DSML block ---------------------------------------------- */

/* The block broke the grammar at byte `at`. */
static int block_fail(ds4_gen_tracker *t, size_t at, const char *what) {
    snprintf(t->problem, sizeof(t->problem), "malformed tool call: expected %s at byte %zu of the output", what, at);
    if (t->n_calls == 0) {
        /* Nothing was promised yet: the block is plain content. */
        t->raw = true;
        t->ph = PH_CONTENT;
        t->rel = t->bsep;
        return 1;
    }
    t->bad_block = true;
    t->done = true;
    t->ph = PH_DONE;
    return 1;
}

/* Expect literal l at bcur: 1 consumed, 0 wait, 2 mismatch. */
static int expect(ds4_gen_tracker *t, size_t *i, const char *l) {
    int r = lit_at(&t->text, *i, l);
    if (r == LIT_YES) {
        *i += strlen(l);
        return 1;
    }
    return r == LIT_PARTIAL ? 0 : 2;
}

/* A quoted attribute value after its opening quote: 1 done (i after the
 * closing quote), 0 wait. */
static int attr(ds4_gen_tracker *t, size_t *i, size_t *start, size_t *len) {
    const char *q = memchr(t->text.p + *i, '"', t->text.len - *i);
    if (!q) return 0;
    *start = *i;
    *len = (size_t)(q - (t->text.p + *i));
    *i += *len + 1;
    return 1;
}

static int start_call(ds4_gen_tracker *t, size_t name_at, size_t name_len, ds4_error *err) {
    tcall *c = realloc(t->calls, (t->n_calls + 1) * sizeof(*c));
    if (!c) return ds4p_oom(err);
    t->calls = c;
    tcall *nc = &c[t->n_calls];
    memset(nc, 0, sizeof(*nc));
    if (!(nc->name = malloc(name_len + 1))) return ds4p_oom(err);
    memcpy(nc->name, t->text.p + name_at, name_len);
    nc->name[name_len] = '\0';
    t->n_calls++;
    if (ds4_tool_id_new(t->ids, t->id_prefix, nc->id, sizeof(nc->id), err)) return -1;
    t->scratch.len = 0;
    if (ds4p_buf_utf8(&t->scratch, nc->name, name_len, err)) return -1;
    ds4_gen_event ev = {.type = DS4_EV_TOOL_START, .index = (uint32_t)(t->n_calls - 1), .id = nc->id,
                        .name = t->scratch.p};
    if (emit(t, &ev, err)) return -1;
    return emit_args(t, "{", 1, err);
}

static int end_call(ds4_gen_tracker *t, ds4_error *err) {
    tcall *c = &t->calls[t->n_calls - 1];
    if (c->ended) return 0;
    c->ended = true;
    ds4_gen_event ev = {.type = DS4_EV_TOOL_END, .index = (uint32_t)(t->n_calls - 1)};
    return emit(t, &ev, err);
}

/* Parameter header after PAR_OPEN: ` name="K" string="true|false">`. */
static int par_head(ds4_gen_tracker *t, ds4_error *err) {
    size_t i = t->bcur, na, nl;
    int r;
    if ((r = expect(t, &i, " name=\"")) != 1) return r == 0 ? 0 : block_fail(t, i, "' name=\"'");
    if (!attr(t, &i, &na, &nl)) return 0;
    if ((r = expect(t, &i, " string=\"")) != 1) return r == 0 ? 0 : block_fail(t, i, "' string=\"'");
    int tr = lit_at(&t->text, i, "true\">"), fa = lit_at(&t->text, i, "false\">");
    if (tr != LIT_YES && fa != LIT_YES) {
        if (tr == LIT_PARTIAL || fa == LIT_PARTIAL) return 0;
        return block_fail(t, i, "string=\"true\"> or string=\"false\">");
    }
    t->p_string = tr == LIT_YES;
    i += t->p_string ? 6 : 7;
    tcall *c = &t->calls[t->n_calls - 1];
    for (size_t k = 0; k < c->n_params; k++)
        if (strlen(c->params[k]) == nl && memcmp(c->params[k], t->text.p + na, nl) == 0)
            return block_fail(t, na, "a parameter name not used twice");
    char **pp = realloc(c->params, (c->n_params + 1) * sizeof(*pp));
    if (!pp) return ds4p_oom(err);
    c->params = pp;
    if (!(pp[c->n_params] = malloc(nl + 1))) return ds4p_oom(err);
    memcpy(pp[c->n_params], t->text.p + na, nl);
    pp[c->n_params][nl] = '\0';
    ds4p_buf h = {0};
    int rc = (c->n_params > 0 && ds4p_buf_str(&h, ", ", err)) || ds4p_buf_str(&h, "\"", err) ||
             ds4p_buf_json_esc(&h, t->text.p + na, nl, err) || ds4p_buf_str(&h, t->p_string ? "\": \"" : "\": ", err) ||
             emit_args(t, h.p, h.len, err);
    ds4p_buf_free(&h);
    c->n_params++;
    if (rc) return -1;
    t->bcur = i;
    t->vstart = t->vrel = i;
    t->js_str = t->js_esc = false;
    t->bs = B_VALUE;
    return 1;
}

static int par_value(ds4_gen_tracker *t, ds4_error *err) {
    size_t m = find_lit(&t->text, t->vrel, PAR_CLOSE);
    if (m == (size_t)-1) {
        const char *marks[] = {PAR_CLOSE, PAR_CLOSE_ESC};
        size_t h = hold_from(&t->text, t->vrel, marks, 2);
        size_t u = t->text.len - utf8_hold(t->text.p, t->text.len);
        if (u < h) h = u;
        if (h < t->vrel) h = t->vrel;
        if (emit_value(t, t->vrel, h, err)) return -1;
        js_scan(t->text.p + t->vrel, h - t->vrel, &t->js_str, &t->js_esc);
        t->vrel = h;
        return 0;
    }
    if (memchr(t->text.p + t->vstart, '\0', m - t->vstart)) return block_fail(t, t->vstart, "a value without NUL bytes");
    if (!t->p_string) {
        /* The whole value, unescaped, must be JSON (as ds4_chat_parse). */
        ds4p_buf v = {0};
        const char *s = t->text.p;
        size_t el = strlen(PAR_CLOSE_ESC), run = t->vstart;
        int rc = 0;
        for (size_t i = t->vstart; i < m && rc == 0;) {
            if (m - i >= el && memcmp(s + i, PAR_CLOSE_ESC, el) == 0) {
                rc = ds4p_buf_add(&v, s + run, i - run, err) || ds4p_buf_str(&v, PAR_CLOSE, err);
                i += el;
                run = i;
            } else {
                i++;
            }
        }
        if (rc == 0) rc = ds4p_buf_add(&v, s + run, m - run, err);
        cJSON *j = rc == 0 ? cJSON_ParseWithOpts(v.p ? v.p : "", NULL, 1) : NULL;
        bool ok = j != NULL;
        cJSON_Delete(j);
        ds4p_buf_free(&v);
        if (rc) return -1;
        if (!ok) return block_fail(t, t->vstart, "a JSON value (string=\"false\")");
    }
    if (emit_value(t, t->vrel, m, err)) return -1;
    if (t->p_string && emit_args(t, "\"", 1, err)) return -1;
    t->vrel = m;
    t->bcur = m + strlen(PAR_CLOSE);
    t->bs = B_PAR_NL;
    return 1;
}

/* Advance the block scanner as far as the text allows: 1 progress
 * (maybe a phase change), 0 waiting, -1 error. */
static int step_block(ds4_gen_tracker *t, ds4_error *err) {
    size_t i = t->bcur;
    int r;
    switch (t->bs) {
    case B_OPEN_NL:
        if ((r = expect(t, &i, "\n")) != 1) return r == 0 ? 0 : block_fail(t, i, "a newline after <｜DSML｜tool_calls>");
        t->bcur = i;
        t->bs = B_ITEM;
        return 1;
    case B_ITEM: {
        int c = lit_at(&t->text, i, TC_CLOSE), v = lit_at(&t->text, i, INV_OPEN);
        if (c == LIT_YES) {
            t->bcur = t->bend = i + strlen(TC_CLOSE);
            t->block_closed = t->done = true;
            t->ph = PH_DONE;
            return 1;
        }
        if (v == LIT_YES) {
            t->bcur = i + strlen(INV_OPEN);
            t->bs = B_INV_HEAD;
            return 1;
        }
        if (c == LIT_PARTIAL || v == LIT_PARTIAL) return 0;
        return block_fail(t, i, "<｜DSML｜invoke or </｜DSML｜tool_calls>");
    }
    case B_INV_HEAD: {
        while (i < t->text.len && strchr(" \t\n\r", t->text.p[i]) && t->text.p[i]) i++;
        size_t na, nl;
        if ((r = expect(t, &i, "name=\"")) != 1) return r == 0 ? 0 : block_fail(t, i, "'name=\"'");
        if (!attr(t, &i, &na, &nl)) return 0;
        if ((r = expect(t, &i, ">\n")) != 1) return r == 0 ? 0 : block_fail(t, i, "'\">\\n'");
        t->bcur = i;
        t->bs = B_PARAM_OR_END;
        return start_call(t, na, nl, err) ? -1 : 1;
    }
    case B_PARAM_OR_END: {
        if (lit_at(&t->text, i, PAR_OPEN) == LIT_YES) {
            t->bcur = i + strlen(PAR_OPEN);
            t->bs = B_PAR_HEAD;
            return 1;
        }
        if (t->calls[t->n_calls - 1].n_params == 0) {
            int x = lit_at(&t->text, i, "\n" INV_CLOSE);
            if (x == LIT_PARTIAL) return 0;
            if (x == LIT_YES) i++;
        }
        int p = lit_at(&t->text, i, PAR_OPEN), c = lit_at(&t->text, i, INV_CLOSE);
        if (c == LIT_YES) {
            t->bcur = i + strlen(INV_CLOSE);
            t->bs = B_INV_NL;
            return emit_args(t, "}", 1, err) || end_call(t, err) ? -1 : 1;
        }
        if (p == LIT_PARTIAL || c == LIT_PARTIAL) return 0;
        return block_fail(t, i, "<｜DSML｜parameter or </｜DSML｜invoke>");
    }
    case B_PAR_HEAD: return par_head(t, err);
    case B_VALUE: return par_value(t, err);
    case B_PAR_NL:
        if ((r = expect(t, &i, "\n")) != 1) return r == 0 ? 0 : block_fail(t, i, "a newline after </｜DSML｜parameter>");
        t->bcur = i;
        t->bs = B_PARAM_OR_END;
        return 1;
    case B_INV_NL:
        if ((r = expect(t, &i, "\n")) != 1) return r == 0 ? 0 : block_fail(t, i, "a newline after </｜DSML｜invoke>");
        t->bcur = i;
        t->bs = B_ITEM;
        return 1;
    }
    return ds4_fail(err, "tracker: bad block state");
}

static int run(ds4_gen_tracker *t, ds4_error *err) {
    for (;;) {
        int r;
        switch (t->ph) {
        case PH_REASONING: r = step_reasoning(t, err); break;
        case PH_CONTENT: r = step_content(t, err); break;
        case PH_BLOCK: r = step_block(t, err); break;
        default: return 0;
        }
        if (r <= 0) return r;
    }
}

int ds4_gen_tracker_feed(ds4_gen_tracker *t, const char *text, size_t len, ds4_error *err) {
    if (t->finished) return ds4_fail(err, "tracker: text after finish");
    if (t->done || len == 0) return 0;
    if (ds4p_buf_add(&t->text, text, len, err)) return -1;
    return run(t, err);
}

int ds4_gen_tracker_finish(ds4_gen_tracker *t, enum ds4_gen_end end, const ds4_gen_usage *usage, ds4_error *err) {
    if (t->finished) return ds4_fail(err, "tracker: finished twice");
    t->finished = true;
    const char *s = t->text.p;
    size_t n = t->text.len;
    if (t->ph == PH_BLOCK) {
        if (t->n_calls == 0) {
            /* An unfinished block that promised nothing: plain content. */
            if (t->problem[0] == '\0')
                snprintf(t->problem, sizeof(t->problem), "unterminated tool call block");
            if (emit_text(t, DS4_EV_CONTENT, 0, s + t->bsep, n - t->bsep, err)) return -1;
        } else if (end == DS4_END_LENGTH) {
            if (t->bs == B_VALUE && emit_value(t, t->vrel, n, err)) return -1;
            if (end_call(t, err)) return -1;
        } else {
            snprintf(t->problem, sizeof(t->problem), "unterminated tool call (the model stopped inside the block)");
            t->bad_block = true;
        }
    } else if (t->ph == PH_REASONING) {
        if (emit_text(t, DS4_EV_REASONING, 0, s + t->rel, n - t->rel, err)) return -1;
    } else if (t->ph == PH_CONTENT) {
        if (emit_text(t, DS4_EV_CONTENT, 0, s + t->rel, n - t->rel, err)) return -1;
    }
    t->ph = PH_DONE;
    if (t->bad_block) {
        char msg[320];
        snprintf(msg, sizeof(msg), "the model produced an unusable tool call: %s", t->problem);
        ds4_gen_event ev = {.type = DS4_EV_ERROR, .status = 500, .code = "server_error", .message = msg};
        return emit(t, &ev, err);
    }
    ds4_gen_event ev = {.type = DS4_EV_FINISH};
    if (usage) ev.usage = *usage;
    if (t->block_closed && t->n_calls > 0) ev.finish = DS4_FINISH_TOOL_CALLS;
    else if (end == DS4_END_LENGTH && !t->stop_hit && !t->eos_text && !t->block_closed) ev.finish = DS4_FINISH_LENGTH;
    else ev.finish = DS4_FINISH_STOP;
    ev.stop_sequence = t->stop_hit;
    return emit(t, &ev, err);
}

bool ds4_gen_tracker_done(const ds4_gen_tracker *t) { return t->done; }

bool ds4_gen_tracker_payload(const ds4_gen_tracker *t) {
    switch (t->ph) {
    case PH_REASONING:
    case PH_CONTENT: return true;
    case PH_BLOCK:
        if (t->bs != B_VALUE) return false;
        if (t->p_string) return true;
        {
            bool in = t->js_str, esc = t->js_esc;
            js_scan(t->text.p + t->vrel, t->text.len - t->vrel, &in, &esc);
            return in;
        }
    default: return false;
    }
}

const char *ds4_gen_tracker_text(const ds4_gen_tracker *t, size_t *len) {
    if (len) *len = t->text.len;
    return t->text.p;
}

const char *ds4_gen_tracker_block(const ds4_gen_tracker *t, size_t *len) {
    if (!t->block_closed) return NULL;
    if (len) *len = t->bend - t->bsep;
    return t->text.p + t->bsep;
}

size_t ds4_gen_tracker_n_calls(const ds4_gen_tracker *t) { return t->n_calls; }

const char *ds4_gen_tracker_call_id(const ds4_gen_tracker *t, size_t i) {
    return i < t->n_calls ? t->calls[i].id : NULL;
}

int ds4_gen_tracker_remember(const ds4_gen_tracker *t, ds4_toolmap *map, ds4_error *err) {
    size_t len;
    const char *b = ds4_gen_tracker_block(t, &len);
    if (!b || t->n_calls == 0) return 0;
    for (size_t i = 0; i < t->n_calls; i++)
        if (ds4_toolmap_put(map, t->calls[i].id, b, len, err)) return -1;
    return 0;
}

const char *ds4_gen_tracker_problem(const ds4_gen_tracker *t) { return t->problem; }
