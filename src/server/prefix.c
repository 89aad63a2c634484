/* prefix.c - prefix reuse for the live session (see prefix.h for the order
 * of attempts and the save points).
 *
 * Design: the live session is append-only (the engine has no truncation),
 * so "keep the longest common prefix" means: keep the session when all of
 * it is a prefix of the new prompt (by tokens, or by bytes with the byte
 * suffix tokenized on top), otherwise restore the longest matching disk
 * snapshot, otherwise start from the position-0 snapshot.  Every path
 * keeps the invariant pos == tokens.n and text == bytes(tokens); a device
 * failure resets the live session rather than leave it unknown.
 */
#include "prefix.h"

#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

static void px_log(const ds4_live *l, const char *fmt, ...) DS4_PRINTF(2, 3);
static void px_log(const ds4_live *l, const char *fmt, ...) {
    if (!l->log) return;
    va_list ap;
    va_start(ap, fmt);
    fputs("prefix: ", l->log);
    vfprintf(l->log, fmt, ap);
    fputc('\n', l->log);
    fflush(l->log);
    va_end(ap);
}

const char *ds4_reuse_source_name(enum ds4_reuse_source s) {
    switch (s) {
    case DS4_REUSE_NONE: return "none";
    case DS4_REUSE_LIVE_TOKENS: return "live-tokens";
    case DS4_REUSE_LIVE_TEXT: return "live-text";
    case DS4_REUSE_DISK_TOKENS: return "disk-tokens";
    case DS4_REUSE_DISK_TEXT: return "disk-text";
    }
    return "?";
}

/* ------------------------------------------------------------------------ */
/* The live token list and its bytes                                        */
/* ------------------------------------------------------------------------ */

static int tokens_append(ds4_tokens *t, const int32_t *ids, uint32_t n, ds4_error *err) {
    for (uint32_t i = 0; i < n; i++)
        if (ds4_tokens_push(t, ids[i], err) != 0) return -1;
    return 0;
}

static int text_reserve(ds4_live *l, size_t more, ds4_error *err) {
    if (l->text_len + more + 1 <= l->text_cap) return 0;
    size_t cap = l->text_cap ? l->text_cap : 256;
    while (cap < l->text_len + more + 1) cap *= 2;
    char *p = realloc(l->text, cap);
    if (!p) return ds4_fail(err, "out of memory");
    l->text = p;
    l->text_cap = cap;
    return 0;
}

/* Append tokens (already evaluated) to the live list and text. */
static int live_push(ds4_live *l, const int32_t *ids, uint32_t n, ds4_error *err) {
    for (uint32_t i = 0; i < n; i++) {
        size_t len = 0;
        const char *b = ds4_token_bytes(l->tok, ids[i], &len);
        if (!b) return ds4_fail(err, "token %d is outside the vocabulary", ids[i]);
        if (text_reserve(l, len, err) != 0) return -1;
        memcpy(l->text + l->text_len, b, len);
        l->text_len += len;
        l->text[l->text_len] = '\0';
    }
    return tokens_append(&l->tokens, ids, n, err);
}

static void live_clear(ds4_live *l) {
    l->tokens.n = 0;
    l->text_len = 0;
    if (l->text) l->text[0] = '\0';
    l->continued_due = false;
}

int ds4_live_reset(ds4_live *l, ds4_error *err) {
    live_clear(l);
    if (ds4_session_restore(l->s, l->empty, l->empty_size, err) != 0) return ds4_fail_wrap(err, "resetting the session");
    return 0;
}

int ds4_live_init(ds4_live *l, ds4_session *s, const ds4_tokenizer *tok, ds4_kvcache *cache, ds4_error *err) {
    memset(l, 0, sizeof(*l));
    if (ds4_session_pos(s) != 0) return ds4_fail(err, "live session: the session must start empty");
    l->s = s;
    l->tok = tok;
    l->cache = cache;
    l->log = stderr;
    l->prefill_step = 256;
    l->tok_user = ds4_tokenizer_special(tok, DS4_TOK_USER);
    l->tok_assistant = ds4_tokenizer_special(tok, DS4_TOK_ASSISTANT);
    if (ds4_session_save(s, &l->empty, &l->empty_size, err) != 0) return ds4_fail_wrap(err, "live session");
    if (text_reserve(l, 0, err) != 0) {
        ds4_live_free(l);
        return -1;
    }
    l->text[0] = '\0';
    return 0;
}

void ds4_live_free(ds4_live *l) {
    ds4_tokens_free(&l->tokens);
    free(l->text);
    free(l->empty);
    memset(l, 0, sizeof(*l));
}

/* Evaluate and append; a failure resets the live session. */
static int live_eval(ds4_live *l, const int32_t *ids, uint32_t n, ds4_error *err) {
    if (n == 0) return 0;
    if (ds4_session_eval(l->s, ids, n, NULL, err) != 0 || live_push(l, ids, n, err) != 0) {
        ds4_live_reset(l, NULL);
        return -1;
    }
    return 0;
}

/* Store the live session; a failure is logged and otherwise ignored (the
 * session is only read). */
static int live_store(ds4_live *l, enum ds4_kv_reason why) {
    if (!l->cache || l->tokens.n == 0) return 0;
    ds4_kv_item it = {
        .tokens = l->tokens.ids,
        .n_tokens = l->tokens.n,
        .text = l->text,
        .text_len = l->text_len,
        .ctx = ds4_session_ctx(l->s),
        .reason = why,
    };
    if (l->tools_for) it.n_tools = l->tools_for(l->tools_ud, l->text, l->text_len, &it.tools);
    ds4_error err = {{0}};
    int rc = ds4_kvcache_store(l->cache, l->s, &it, &err);
    if (rc < 0) px_log(l, "checkpoint of %u tokens failed: %s", l->tokens.n, err.msg);
    if (rc == 1) l->stats.saves++;
    return rc;
}

int ds4_live_checkpoint(ds4_live *l, enum ds4_kv_reason why, ds4_error *err) {
    int rc = live_store(l, why);
    if (rc < 0) return ds4_fail(err, "checkpoint failed");
    return rc;
}

int ds4_live_eval(ds4_live *l, const int32_t *ids, uint32_t n, bool in_tool_block, ds4_error *err) {
    uint32_t before = l->tokens.n;
    if (live_eval(l, ids, n, err) != 0) return -1;
    if (!l->cache) return 0;
    uint32_t nc = ds4_kvcache_next_continued(l->cache, before);
    if (nc && nc <= l->tokens.n) l->continued_due = true;
    if (l->continued_due && !in_tool_block) {
        l->continued_due = false;
        live_store(l, DS4_KV_CONTINUED);
    }
    return 0;
}

/* ------------------------------------------------------------------------ */
/* Tokenizing a byte suffix of the rendered prompt                          */
/* ------------------------------------------------------------------------ */

typedef struct cut_ctx {
    ds4_chat_piece *pc;
    size_t n;
} cut_ctx;

/* A cut at byte off may not split a control token. */
static bool cut_ok(void *ud, uint64_t off) {
    const cut_ctx *c = ud;
    for (size_t i = 0; i < c->n; i++)
        if (c->pc[i].special >= 0 && off > c->pc[i].off && off < c->pc[i].off + c->pc[i].len) return false;
    return true;
}

static int tokenize_pieces(const ds4_tokenizer *t, const ds4_chat_prompt *p, const ds4_chat_piece *pc, size_t n,
                           size_t off, ds4_tokens *out, ds4_error *err) {
    for (size_t i = 0; i < n; i++) {
        size_t end = pc[i].off + pc[i].len;
        if (end <= off) continue;
        if (pc[i].special >= 0) {
            if (pc[i].off < off) return ds4_fail(err, "the cut at byte %zu splits a control token", off);
            if (ds4_tokens_push(out, ds4_tokenizer_special(t, (enum ds4_special)pc[i].special), err)) return -1;
            continue;
        }
        size_t from = pc[i].off > off ? pc[i].off : off;
        if (ds4_tokenize(t, p->text + from, end - from, false, out, err) != 0) return -1;
    }
    return 0;
}

int ds4_prefix_tokenize_from(const ds4_tokenizer *t, const ds4_chat_prompt *p, size_t off, ds4_tokens *out,
                             ds4_error *err) {
    if (off > p->len) return ds4_fail(err, "cut at %zu is past the prompt's %zu bytes", off, p->len);
    ds4_chat_piece *pc = NULL;
    size_t n = 0;
    if (ds4_chat_pieces(p, &pc, &n, err) != 0) return -1;
    int rc = tokenize_pieces(t, p, pc, n, off, out, err);
    free(pc);
    return rc;
}

/* ------------------------------------------------------------------------ */
/* Choosing the reuse                                                       */
/* ------------------------------------------------------------------------ */

void ds4_reuse_free(ds4_reuse *r) {
    ds4_tokens_free(&r->feed);
    memset(r, 0, sizeof(*r));
}

static bool is_prefix(const int32_t *a, uint32_t na, const int32_t *b, uint32_t nb) {
    return na <= nb && (na == 0 || memcmp(a, b, (size_t)na * 4) == 0);
}

/* The live session is about to be replaced: keep it on disk. */
static void evict_live(ds4_live *l, ds4_reuse *r) {
    if (r->evicted || !l->cache || l->tokens.n == 0) return;
    if (l->tokens.n < ds4_kvcache_get_opts(l->cache)->min_tokens) return;
    r->evicted = live_store(l, DS4_KV_EVICT) == 1;
}

/* feed = prefix tokens + the prompt's bytes from off on. */
static int text_feed(ds4_live *l, const ds4_chat_prompt *p, const cut_ctx *cc, const int32_t *pre, uint32_t npre,
                     size_t off, ds4_tokens *feed, ds4_error *err) {
    feed->n = 0;
    if (tokens_append(feed, pre, npre, err) != 0) return -1;
    return tokenize_pieces(l->tok, p, cc->pc, cc->n, off, feed, err);
}

/* Try the disk cache for a reuse longer than `better_than` tokens.
 * Returns 1 restored (r filled), 0 nothing usable, -1 error. */
static int try_disk(ds4_live *l, const ds4_chat_prompt *p, cut_ctx *cc, const int32_t *tokens, uint32_t n,
                    uint32_t better_than, ds4_reuse *r, ds4_error *err) {
    const uint32_t ctx = ds4_session_ctx(l->s);
    for (int attempt = 0; attempt < 8; attempt++) {
        ds4_kvcache_match m;
        if (!ds4_kvcache_lookup(l->cache, tokens, n, p ? p->text : NULL, p ? p->len : 0, ctx, p ? cut_ok : NULL, cc,
                                &m))
            return 0;
        if (m.n_tokens <= better_than) return 0;
        evict_live(l, r);
        ds4_kvcache_loaded ld;
        ds4_error why = {{0}};
        int rc = ds4_kvcache_load(l->cache, &m, l->s, &ld, &why);
        if (rc != 0) {
            l->stats.disk_misses++;
            px_log(l, "disk entry unusable: %s", why.msg);
            if (rc == -2) {
                /* The session may be half written: it is gone. */
                if (ds4_live_reset(l, err) != 0) return -1;
                return 0;
            }
            continue;
        }
        live_clear(l);
        int ok = live_push(l, ld.tokens, ld.n_tokens, err);
        if (ok == 0) {
            if (is_prefix(ld.tokens, ld.n_tokens, tokens, n)) {
                r->feed.n = 0;
                ok = tokens_append(&r->feed, tokens, n, err);
                r->source = DS4_REUSE_DISK_TOKENS;
            } else if (p && ld.text_len <= p->len && memcmp(ld.text, p->text, ld.text_len) == 0 &&
                       cut_ok(cc, ld.text_len)) {
                ok = text_feed(l, p, cc, ld.tokens, ld.n_tokens, ld.text_len, &r->feed, err);
                r->source = DS4_REUSE_DISK_TEXT;
            } else {
                ok = 1; /* the file changed under us: not a match after all */
            }
        }
        if (ok == 0 && r->feed.n > ctx) ok = 1;
        if (ok == 0 && l->tools_loaded && ld.n_tools) l->tools_loaded(l->tools_ud, ld.tools, ld.n_tools);
        ds4_kvcache_loaded_free(&ld);
        if (ok != 0) {
            /* The restored state is not what this prompt needs. */
            ds4_tokens_free(&r->feed);
            if (ds4_live_reset(l, err) != 0 || ok < 0) return -1;
            r->source = DS4_REUSE_NONE;
            return 0;
        }
        r->n_cached = l->tokens.n;
        memcpy(r->disk_name, m.name, sizeof(r->disk_name));
        l->stats.disk_loads++;
        return 1;
    }
    return 0;
}

int ds4_prefix_prepare(ds4_live *l, const ds4_chat_prompt *p, const int32_t *tokens, uint32_t n, ds4_reuse *r,
                       ds4_error *err) {
    memset(r, 0, sizeof(*r));
    const uint32_t ctx = ds4_session_ctx(l->s);
    if (n == 0) return ds4_fail(err, "empty prompt");
    if (n > ctx) return ds4_fail(err, "the prompt's %u tokens exceed the context of %u", n, ctx);
    cut_ctx cc = {0};
    if (p && ds4_chat_pieces(p, &cc.pc, &cc.n, err) != 0) return -1;
    int rc = 0;
    const uint32_t live_n = l->tokens.n;
    ds4_tokens text_cand = {0};
    enum ds4_reuse_source live_src = DS4_REUSE_NONE;
    if (live_n > 0 && is_prefix(l->tokens.ids, live_n, tokens, n)) {
        live_src = DS4_REUSE_LIVE_TOKENS;
    } else if (live_n > 0 && p && l->text_len <= p->len && memcmp(l->text, p->text, l->text_len) == 0 &&
               cut_ok(&cc, l->text_len)) {
        rc = text_feed(l, p, &cc, l->tokens.ids, live_n, l->text_len, &text_cand, err);
        if (rc == 0 && text_cand.n <= ctx) live_src = DS4_REUSE_LIVE_TEXT;
    }
    int disk = 0;
    if (rc == 0 && l->cache) {
        disk = try_disk(l, p, &cc, tokens, n, live_src != DS4_REUSE_NONE ? live_n : 0, r, err);
        if (disk < 0) rc = -1;
    }
    /* try_disk may have replaced or reset the live session. */
    if (rc == 0 && disk == 0 && live_src != DS4_REUSE_NONE && l->tokens.n == live_n) {
        r->source = live_src;
        r->n_cached = live_n;
        ds4_tokens_free(&r->feed);
        if (live_src == DS4_REUSE_LIVE_TOKENS) {
            rc = tokens_append(&r->feed, tokens, n, err);
        } else {
            r->feed = text_cand;
            text_cand = (ds4_tokens){0};
        }
    } else if (rc == 0 && disk == 0) {
        evict_live(l, r);
        r->source = DS4_REUSE_NONE;
        r->n_cached = 0;
        r->feed.n = 0;
        rc = ds4_live_reset(l, err);
        if (rc == 0) rc = tokens_append(&r->feed, tokens, n, err);
    }
    ds4_tokens_free(&text_cand);
    free(cc.pc);
    if (rc != 0) {
        ds4_live_reset(l, NULL);
        ds4_reuse_free(r);
        return -1;
    }
    l->stats.requests++;
    l->stats.prompt_tokens += r->feed.n;
    l->stats.reused_tokens += r->n_cached;
    if (r->source == DS4_REUSE_LIVE_TOKENS || r->source == DS4_REUSE_LIVE_TEXT) l->stats.reused_live += r->n_cached;
    if (r->source == DS4_REUSE_DISK_TOKENS || r->source == DS4_REUSE_DISK_TEXT) l->stats.reused_disk += r->n_cached;
    px_log(l, "%u prompt tokens: %u reused (%s%s%s), %u to prefill%s", r->feed.n, r->n_cached,
           ds4_reuse_source_name(r->source), r->disk_name[0] ? " " : "", r->disk_name, r->feed.n - r->n_cached,
           r->evicted ? "; previous session saved" : "");
    return 0;
}

/* ------------------------------------------------------------------------ */
/* Prefill with save points                                                 */
/* ------------------------------------------------------------------------ */

int ds4_prefix_prefill(ds4_live *l, ds4_reuse *r, ds4_prefill_cb cb, void *ud, ds4_error *err) {
    const uint32_t total = r->feed.n, start = r->n_cached;
    uint32_t pos = l->tokens.n;
    if (pos < start || pos > total || !is_prefix(l->tokens.ids, pos, r->feed.ids, total))
        return ds4_fail(err, "prefill: the live session does not hold the plan's prefix");
    uint32_t cold = 0;
    if (l->cache && r->source == DS4_REUSE_NONE)
        cold = ds4_kvcache_cold_point(l->cache, r->feed.ids, total, l->tok_user, l->tok_assistant);
    const uint32_t step = l->prefill_step ? l->prefill_step : 256;
    while (pos < total) {
        uint32_t stop = total - pos > step ? pos + step : total;
        if (cold > pos && cold < stop) stop = cold;
        uint32_t nc = l->cache ? ds4_kvcache_next_continued(l->cache, pos) : 0;
        if (nc && nc < stop) stop = nc;
        if (live_eval(l, r->feed.ids + pos, stop - pos, err) != 0) return ds4_fail_wrap(err, "prefill");
        r->n_prefilled += stop - pos;
        l->stats.prefilled_tokens += stop - pos;
        pos = stop;
        if (cold && pos == cold) live_store(l, DS4_KV_COLD);
        else if (nc && pos == nc) live_store(l, DS4_KV_CONTINUED);
        if (cb && cb(ud, pos - start, total - start) != 0) return 1;
    }
    return 0;
}
