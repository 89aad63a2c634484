/* kvcache.h - the disk KV cache of ds4cl-server: session snapshots stored as
 * files named after the SHA-1 of the rendered prefix text they hold.
 *
 * A cache is a directory (--kv-disk-dir) of files `<sha1 hex>.kv`, where
 * the SHA-1 is that of the prefix text: the rendered (decoded) text of the
 * tokens whose KV state the file holds.  A file is found again by a request
 * whose token list starts with the file's tokens, or whose rendered text
 * starts with the file's text (the SHA-1 of the request's first text_len
 * bytes equals the file name).  Restoring it skips the prefill of that
 * prefix.
 *
 * File layout (little-endian; ds4's layout, version 2; ds4 writes version 1
 * with its own session payload, so neither reads the other's files):
 *
 *   offset size  header (48 bytes)
 *        0    3  magic "KVC"
 *        3    1  version 2
 *        4    1  routed-expert quant bits (2, 4, 8, 16, 32)
 *        5    1  save reason (enum ds4_kv_reason)
 *        6    1  flags: bit 0 tool-id map trailer present, bit 1 the key is
 *                the Responses-visible text, bit 2 the thinking-visible text
 *        7    1  reserved (0)
 *        8    4  u32 token count n
 *       12    4  u32 hit count                  (mutable, see below)
 *       16    4  u32 context of the session that wrote it
 *       20    4  reserved (0)
 *       24    8  u64 creation time (Unix seconds)
 *       32    8  u64 last-used time              (mutable)
 *       40    8  u64 session payload length P
 *   then  u32 text length L, the L bytes of prefix text (SHA-1 = file name)
 *         i32 tokens[n]
 *         the session payload: P bytes of ds4_session_save (self-checked)
 *         if flags bit 0: the tool-id map: "KTM", u8 version 1, u32 count,
 *           per entry u32 id length, u32 DSML length, id bytes, DSML bytes
 *   footer (24 bytes): "DS4CLKVF", u64 model fingerprint, u64 checksum.
 *
 * The checksum is XXH3-64 of every byte before it, with the two mutable
 * header fields (hits, last used) read as zero, so a hit updates them in
 * place without rewriting the file.  It detects torn and corrupted files;
 * it is not a signature (whoever can write the directory can forge files).
 *
 * Writes go to `.tmp.<pid>.<seq>` in the same directory, are fsync'ed and
 * renamed over the real name, so a crash or kill never leaves a partial
 * file under a `<sha1>.kv` name.  Temporary files of dead processes are
 * removed when a cache is opened.
 *
 * Index.  The cache keeps an in-memory index of every valid file: name,
 * text length, the full token list (4 bytes a token: small next to the
 * ~7-14 KB a token of KV state), sizes, hits and times.  Opening a cache
 * rebuilds it by scanning the directory: each `<sha1>.kv` is checked
 * (header, sizes against the file size, footer magic, SHA-1 of the text)
 * without reading the payload; a malformed one is logged and deleted.  A
 * file made by another model (fingerprint) is kept in the index only to
 * count its bytes against the budget (and be evicted first if cold); it is
 * never matched.  The full checksum is verified when a file is loaded; a
 * file that fails it is logged, deleted and treated as a miss (one that
 * another process replaced since the scan is re-indexed instead).
 *
 * Eviction keeps the directory's .kv bytes within the budget
 * (--kv-disk-space-mb).  After every store the entry with the lowest
 *   score = (hits x 0.5^(age since last use / half-life), 0 below 0.01, + 1)
 *           x tokens / file bytes
 * is removed first (ties: the least recently used), until the total fits;
 * the file just written is spared unless it alone exceeds the budget.  A
 * file larger than 1.01 x the budget is not written at all.
 *
 * Save points (the policy helpers below; the live-session code in prefix.c
 * applies them): cold (a fresh prefill of min..cold_max tokens is saved at
 * its chat anchor or at its length minus the trim, aligned down), continued
 * (every interval tokens, absolute positions), evict (the live session
 * before an unrelated request replaces it), shutdown.
 *
 * Threads: every function locks the cache's mutex, so connection threads
 * may look up tool ids while the worker stores.
 */
#ifndef DS4_SERVER_KVCACHE_H
#define DS4_SERVER_KVCACHE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "engine.h"
#include "error.h"
#include "model.h"

typedef struct ds4_kvcache ds4_kvcache;

enum ds4_kv_reason {
    DS4_KV_UNKNOWN = 0,
    DS4_KV_COLD = 1,       /* after (part of) a long first prefill */
    DS4_KV_CONTINUED = 2,  /* at an absolute multiple of the interval */
    DS4_KV_EVICT = 3,      /* the live session, before it is replaced */
    DS4_KV_SHUTDOWN = 4    /* the live session, on a clean exit */
};

/* Header flags (byte 6) a caller may set on a store. */
enum {
    DS4_KV_FLAG_TOOLS = 1u << 0,            /* set by the cache when a map is stored */
    DS4_KV_FLAG_RESPONSES_VISIBLE = 1u << 1,
    DS4_KV_FLAG_THINKING_VISIBLE = 1u << 2,
};

typedef struct ds4_kvcache_opts {
    const char *dir;                 /* --kv-disk-dir (created if needed); required */
    uint64_t space_mb;               /* --kv-disk-space-mb: 4096 */
    uint32_t min_tokens;             /* --kv-cache-min-tokens: 512 */
    uint32_t cold_max_tokens;        /* --kv-cache-cold-max-tokens: 30000 (0: no cold saves) */
    uint32_t continued_interval;     /* --kv-cache-continued-interval-tokens: 10000, rounded
                                        up to a multiple of align (0: none) */
    uint32_t boundary_trim;          /* --kv-cache-boundary-trim-tokens: 32 */
    uint32_t boundary_align;         /* --kv-cache-boundary-align-tokens: 2048 (0: none) */
    bool reject_different_quant;     /* --kv-cache-reject-different-quant */
    uint64_t model_fp;               /* ds4_kvcache_model_fingerprint() */
    uint8_t quant_bits;              /* ds4_kvcache_quant_bits() */
    double half_life_s;              /* hit decay: 6 h */
    FILE *log;                       /* "kvcache: ..." lines; default stderr; NULL: quiet */
    /* The clock in Unix seconds (NULL: time()); tests set it. */
    uint64_t (*now)(void *ud);
    void *now_ud;
} ds4_kvcache_opts;

/* The defaults above (dir NULL, log stderr). */
void ds4_kvcache_default_opts(ds4_kvcache_opts *o);

/* Command-line flags: if argv[*i] is one of --kv-disk-dir,
 * --kv-disk-space-mb, --kv-cache-min-tokens, --kv-cache-cold-max-tokens,
 * --kv-cache-continued-interval-tokens, --kv-cache-boundary-trim-tokens,
 * --kv-cache-boundary-align-tokens (each with a value) or
 * --kv-cache-reject-different-quant, consume it (and its value: *i is left
 * on the last argument used) and return 1; return 0 for another flag, -1
 * for a missing or bad value. */
int ds4_kvcache_parse_flag(ds4_kvcache_opts *o, int argc, char **argv, int *i, ds4_error *err);
/* Help text for those flags, one per line. */
const char *ds4_kvcache_usage(void);

/* What a file must match to be reused by this model: arch, every
 * hyperparameter, and the bytes of the F32 norm and sink tensors (identical
 * across quantizations of one model, different between models).  Callers
 * may mix in engine options that change the KV values. */
uint64_t ds4_kvcache_model_fingerprint(const ds4_model *m);
/* Bits per weight of the routed experts (2 for IQ2_XXS/Q2_K, 4 for Q4_K...). */
uint8_t ds4_kvcache_quant_bits(const ds4_model *m);

/* Open (mkdir -p) the directory and rebuild the index; evicts down to the
 * budget.  Fails on bad options or an unusable directory. */
int ds4_kvcache_open(ds4_kvcache **out, const ds4_kvcache_opts *o, ds4_error *err);
void ds4_kvcache_close(ds4_kvcache *c);

/* The options in force (continued_interval already rounded up). */
const ds4_kvcache_opts *ds4_kvcache_get_opts(const ds4_kvcache *c);

/* A tool-call id and the exact DSML block sampled for it. */
typedef struct ds4_kv_tool {
    const char *id;
    size_t id_len;
    const char *dsml;
    size_t dsml_len;
} ds4_kv_tool;

/* What a store writes: the prefix (tokens and their text) and the session
 * snapshot of exactly those tokens. */
typedef struct ds4_kv_item {
    const int32_t *tokens;
    uint32_t n_tokens;
    const char *text;            /* the key text (usually the decoded tokens) */
    size_t text_len;
    uint32_t ctx;                /* the session's context */
    enum ds4_kv_reason reason;
    uint8_t flags;               /* DS4_KV_FLAG_*_VISIBLE */
    const ds4_kv_tool *tools;    /* only those whose DSML occurs in text are kept */
    size_t n_tools;
} ds4_kv_item;

/* Snapshot session s (which must hold exactly item->tokens) and store it.
 * Returns 1 when a file was written, 0 when nothing needed writing (fewer
 * than min_tokens, the same prefix already stored, larger than the budget;
 * logged), -1 on a failure (logged too; the cache stays consistent). */
int ds4_kvcache_store(ds4_kvcache *c, ds4_session *s, const ds4_kv_item *item, ds4_error *err);
/* The same with a ready payload (what ds4_session_save produced). */
int ds4_kvcache_store_blob(ds4_kvcache *c, const ds4_kv_item *item, const uint8_t *payload, uint64_t payload_len,
                           ds4_error *err);

/* A lookup result. */
typedef struct ds4_kvcache_match {
    char name[41];        /* SHA-1 hex of the entry's text */
    uint32_t n_tokens;    /* tokens whose KV the entry holds */
    uint64_t text_len;    /* bytes of its text */
    bool by_text;         /* matched on text only: its tokens are not a prefix of
                             the request's, the request's text[text_len..] must be
                             tokenized on top of them */
} ds4_kvcache_match;

/* May the request's text be cut at byte `off` (e.g. not inside a control
 * token)?  Used for text matches only. */
typedef bool (*ds4_kv_cut_ok)(void *ud, uint64_t off);

/* The entry reusing the most tokens for a request: one whose tokens are a
 * prefix of tokens[0..n), or (text != NULL) whose text is a byte prefix of
 * text[0..len) with cut_ok(ud, its length) (cut_ok may be NULL).  Entries of
 * another model or quant (when strict), or with more than max_tokens
 * tokens, are skipped; a token match wins a tie.  Returns 1 with *m filled,
 * 0 when nothing matches. */
int ds4_kvcache_lookup(ds4_kvcache *c, const int32_t *tokens, uint32_t n, const char *text, uint64_t len,
                       uint32_t max_tokens, ds4_kv_cut_ok cut_ok, void *ud, ds4_kvcache_match *m);

/* What a load hands back (free with ds4_kvcache_loaded_free). */
typedef struct ds4_kvcache_loaded {
    int32_t *tokens;          /* the tokens the session now holds */
    uint32_t n_tokens;
    char *text;               /* the stored key text */
    uint64_t text_len;
    enum ds4_kv_reason reason;
    uint8_t flags;
    ds4_kv_tool *tools;       /* the stored tool-id map (pointers into one block) */
    size_t n_tools;
    void *mem_;
} ds4_kvcache_loaded;

/* Read the matched file, verify it fully and restore it into s; counts a
 * hit.  Returns 0 on success; -1 when the file was unusable (a corrupt
 * file is logged, deleted and dropped from the index; a vanished one is
 * dropped) and s was not touched; -2 when ds4_session_restore refused or
 * failed: s must then be reset (its device state may be half written). */
int ds4_kvcache_load(ds4_kvcache *c, const ds4_kvcache_match *m, ds4_session *s, ds4_kvcache_loaded *out,
                     ds4_error *err);
void ds4_kvcache_loaded_free(ds4_kvcache_loaded *l);

/* Verify an indexed file fully (checksum included) without restoring it:
 * 0 valid, -1 not (message in err; nothing is deleted). */
int ds4_kvcache_verify(ds4_kvcache *c, const char *name, ds4_error *err);

/* Search the tool-id maps of every file for id; on success *dsml is a
 * malloc'd copy of the DSML block.  Returns 1 found, 0 not. */
int ds4_kvcache_find_tool(ds4_kvcache *c, const char *id, size_t id_len, char **dsml, size_t *dsml_len);

/* ---- save-point policy ------------------------------------------------ */

/* Where a fresh (nothing reused) prefill of tokens[0..n) should stop for a
 * cold save, or 0 for none: only when min <= n <= cold_max; the chat
 * anchor (the last tok_user before the first tok_assistant) when it is at
 * least min, else n - trim aligned down to align, if that is at least min. */
uint32_t ds4_kvcache_cold_point(const ds4_kvcache *c, const int32_t *tokens, uint32_t n, int32_t tok_user,
                                int32_t tok_assistant);
/* The first continued-save position > pos (a multiple of the interval), or
 * 0 when continued saves are off. */
uint32_t ds4_kvcache_next_continued(const ds4_kvcache *c, uint32_t pos);

/* ---- inspection -------------------------------------------------------- */

typedef struct ds4_kvcache_stats {
    uint32_t entries;        /* files in the index (foreign ones included) */
    uint64_t bytes;          /* their total size */
    uint64_t budget;         /* bytes */
    uint64_t stores, skipped, loads, evictions, corrupt, failures;
} ds4_kvcache_stats;
void ds4_kvcache_get_stats(ds4_kvcache *c, ds4_kvcache_stats *st);

/* Is there an index entry for this name (40 hex)?  Tokens and hits out. */
bool ds4_kvcache_has(ds4_kvcache *c, const char *name, uint32_t *n_tokens, uint32_t *hits);

/* SHA-1 of data as 40 lowercase hex digits plus NUL. */
int ds4_kv_sha1_hex(const void *data, size_t len, char out[41], ds4_error *err);

#endif
