/* prefix.h - prefix reuse for the server's one live session.
 *
 * The worker keeps one ds4_live: the engine session plus the exact tokens
 * whose KV state it holds and their decoded bytes.  For each request it
 * calls ds4_prefix_prepare with the rendered prompt and its tokens, then
 * ds4_prefix_prefill, then decodes with ds4_live_eval.
 *
 * The engine cannot truncate a session in place, so a session is only ever
 * extended; to go back to a shorter prefix it is restored from a snapshot.
 * The reuse order (first that applies, except that a longer disk match
 * beats a shorter live one):
 *   1. live tokens: the live tokens are a prefix of the request's tokens:
 *      keep the session, prefill the rest;
 *   2. live text: the live tokens' bytes are a byte prefix of the rendered
 *      prompt (the model's sampled tokens differ from a re-tokenization of
 *      the same text): keep the session, tokenize only the byte suffix
 *      (segment-aware, so specials stay control tokens only in template
 *      text) and prefill it; refused when the cut falls inside a control
 *      token or the result would not fit the context;
 *   3. disk: the cached file whose tokens are a prefix of the request's
 *      tokens, or whose text is a byte prefix of the rendered prompt, holding
 *      the most tokens: restore it, prefill the rest (by token or by text
 *      suffix as above).  A file that fails its checks is dropped and the
 *      next best is tried;
 *   4. nothing: reset the session (restore the position-0 snapshot taken at
 *      init) and prefill everything.
 * Before the live session is replaced (3, 4) it is saved to disk as an
 * `evict` checkpoint when it holds at least min_tokens.
 *
 * Save points during prefill: a fresh prefill (4) stops at the cold point
 * (kvcache.h) to store a `cold` file; any prefill or decode stops at each
 * absolute multiple of the continued interval to store a `continued` file
 * (during decode deferred while a tool-call block is open).  The worker
 * stores `shutdown` with ds4_live_checkpoint on a clean exit.
 *
 * Invariant: ds4_session_pos(live->s) == live->tokens.n, and live->text
 * is the concatenation of the tokens' bytes.  Any failure that may leave
 * the device state unknown resets the live session (empty), which keeps
 * the invariant.
 */
#ifndef DS4_SERVER_PREFIX_H
#define DS4_SERVER_PREFIX_H

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

#include "chat.h"
#include "engine.h"
#include "error.h"
#include "kvcache.h"
#include "tokenizer.h"

/* The tool-id → DSML pairs worth persisting with a checkpoint whose text is
 * text[0..len): set *out to an array valid until the next call, return its
 * length (the cache keeps those whose DSML occurs in the text). */
typedef size_t (*ds4_live_tools_fn)(void *ud, const char *text, size_t len, const ds4_kv_tool **out);
/* The tool map of a file just restored, for the worker's tool memory. */
typedef void (*ds4_live_tools_loaded_fn)(void *ud, const ds4_kv_tool *tools, size_t n);

typedef struct ds4_live_stats {
    uint64_t requests;
    uint64_t prompt_tokens;     /* tokens of the prompts as evaluated */
    uint64_t reused_tokens;     /* of those, taken from the live session or disk */
    uint64_t reused_live;       /* ... from the live session */
    uint64_t reused_disk;       /* ... from disk files */
    uint64_t prefilled_tokens;  /* prompt tokens evaluated */
    uint64_t saves, disk_loads, disk_misses;
} ds4_live_stats;

typedef struct ds4_live {
    ds4_session *s;
    const ds4_tokenizer *tok;
    ds4_kvcache *cache;          /* NULL: no disk cache */
    ds4_tokens tokens;           /* what the session holds */
    char *text;                  /* their bytes (NUL terminated) */
    size_t text_len, text_cap;
    uint8_t *empty;              /* snapshot at position 0 */
    uint64_t empty_size;
    int32_t tok_user, tok_assistant;
    uint32_t prefill_step;       /* tokens per eval call (progress granularity): 256 */
    bool continued_due;          /* a continued boundary passed inside a tool block */
    ds4_live_tools_fn tools_for; /* optional */
    ds4_live_tools_loaded_fn tools_loaded; /* optional */
    void *tools_ud;
    FILE *log;                   /* "prefix: ..." lines; NULL quiet (default stderr) */
    ds4_live_stats stats;
} ds4_live;

/* s must be at position 0 (a new session); cache may be NULL. */
int ds4_live_init(ds4_live *l, ds4_session *s, const ds4_tokenizer *tok, ds4_kvcache *cache, ds4_error *err);
void ds4_live_free(ds4_live *l);
/* Forget everything (e.g. after a stop sequence cut the answer). */
int ds4_live_reset(ds4_live *l, ds4_error *err);
/* Evaluate generated tokens and append them; stores a continued
 * checkpoint at an interval boundary unless in_tool_block (then at the
 * first call after the block).  A failure resets the live session. */
int ds4_live_eval(ds4_live *l, const int32_t *tokens, uint32_t n, bool in_tool_block, ds4_error *err);
/* Store the live session now (DS4_KV_SHUTDOWN, DS4_KV_EVICT).  Returns 1
 * stored, 0 not needed (no cache, too short, already stored), -1 failed. */
int ds4_live_checkpoint(ds4_live *l, enum ds4_kv_reason why, ds4_error *err);

enum ds4_reuse_source {
    DS4_REUSE_NONE,          /* nothing reused: full prefill */
    DS4_REUSE_LIVE_TOKENS,
    DS4_REUSE_LIVE_TEXT,
    DS4_REUSE_DISK_TOKENS,
    DS4_REUSE_DISK_TEXT
};
const char *ds4_reuse_source_name(enum ds4_reuse_source s);

/* One request's plan and its outcome. */
typedef struct ds4_reuse {
    enum ds4_reuse_source source;
    ds4_tokens feed;         /* the prompt as the session will hold it */
    uint32_t n_cached;       /* its first tokens already in the session (usage: cached) */
    uint32_t n_prefilled;    /* tokens evaluated by ds4_prefix_prefill so far */
    char disk_name[41];      /* the file restored (DISK_*) */
    bool evicted;            /* the previous live session was stored before being replaced */
} ds4_reuse;
/* n_prompt (usage: prompt tokens) is r->feed.n; the uncached part is
 * feed.n - n_cached. */
void ds4_reuse_free(ds4_reuse *r);

/* Decide and set up the reuse for a prompt: p is the rendered prompt (NULL:
 * token matching only), tokens[0..n) its tokenization.  On return the
 * session holds r->feed's first r->n_cached tokens.  Fails (-1) only on
 * device or memory errors, with the live session reset; a prompt longer
 * than the context fails too (the caller should have checked). */
int ds4_prefix_prepare(ds4_live *l, const ds4_chat_prompt *p, const int32_t *tokens, uint32_t n, ds4_reuse *r,
                       ds4_error *err);

/* Progress after each eval call: done/total count the tokens to prefill.
 * Return non-zero to stop (the client went away). */
typedef int (*ds4_prefill_cb)(void *ud, uint32_t done, uint32_t total);

/* Evaluate r->feed from the session's position to its end, storing the
 * cold and continued checkpoints on the way.  Returns 0 done (logits of the
 * last prompt token ready), 1 stopped by cb (the session keeps what was
 * evaluated), -1 error (the live session is reset). */
int ds4_prefix_prefill(ds4_live *l, ds4_reuse *r, ds4_prefill_cb cb, void *ud, ds4_error *err);

/* Tokens of the rendered prompt p from byte off on (off must not fall
 * inside a control token), appended to out: the same pieces and rules as
 * ds4_chat_tokenize. */
int ds4_prefix_tokenize_from(const ds4_tokenizer *t, const ds4_chat_prompt *p, size_t off, ds4_tokens *out,
                             ds4_error *err);

#endif
