/* test_kvcache.c - the disk KV cache and prefix reuse (src/server/kvcache.c,
 * src/server/prefix.c).
 *
 *   - store_restore: a session saved after N tokens through the cache,
 *     found again by a new cache object on the same directory (a restart)
 *     by tokens and by text, restored into a fresh session, continues with
 *     logits identical to the uninterrupted session; a file replaced by
 *     another process is re-indexed, not deleted;
 *   - corrupt: a truncated file, a flipped text byte, a garbage file and a
 *     stale temporary file are logged and removed at scan; a flipped
 *     payload byte is caught by the checksum on load (logged, deleted, the
 *     next best entry is used); another model's fingerprint is ignored with
 *     a log line; a payload the engine refuses leaves the file alone;
 *     fingerprints tell models apart but not quantizations of one model;
 *   - eviction: the total stays within the budget, the entry with the
 *     lowest hit-decayed score goes first, hits stop protecting an entry
 *     after many half-lives, a file over the budget is not written;
 *   - kill_writers: two forked writers killed with SIGKILL mid-write never
 *     leave a partial file under a real name; the next scan removes their
 *     temporary files;
 *   - transcript: a multi-turn agent transcript (tools, tool results) on
 *     gguf/demo.gguf's real tokenizer: cold save at the chat anchor,
 *     continued saves, live reuse by tokens and by text (an answer sampled
 *     with a non-BPE split), shutdown save, restart on the same directory
 *     resuming from disk (prefilled tokens counted, logits checked against
 *     a fresh evaluation of the same tokens), the tool-id map persisted and
 *     handed back, a retry shorter than the live session (evict save, then
 *     disk), a new conversation starting from the cold anchor whose prefill
 *     is stopped by its client and resumed by the next request;
 *   - policy: cold points, continued boundaries and flag parsing.
 */
#include "test.h"

#include <dirent.h>
#include <fcntl.h>
#include <signal.h>
#include <stdbool.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "../src/chat.h"
#include "../src/engine.h"
#include "../src/gguf.h"
#include "../src/quant.h"
#include "../src/server/kvcache.h"
#include "../src/server/prefix.h"
#include "../src/testmodel.h"
#include "../src/tokenizer.h"

/* ---------------------------------------------------------------------- */
/* Helpers                                                                 */
/* ---------------------------------------------------------------------- */

static int load_testmodel(ds4_engine **e, ds4_testmodel_opts *mo, ds4_error *err) {
    char path[] = "/tmp/ds4cl-test-kvc-XXXXXX";
    int fd = mkstemp(path);
    if (fd < 0) return ds4_fail(err, "mkstemp");
    close(fd);
    ds4_testmodel_default_opts(mo);
    int rc = ds4_testmodel_write(mo, path, err);
    ds4_engine_opts eo = {.model_path = path, .prefill_chunk = 16};
    if (rc == 0) rc = ds4_engine_load(e, &eo, err);
    unlink(path);
    return rc;
}

static void rm_dir(const char *dir) {
    DIR *d = opendir(dir);
    if (!d) return;
    struct dirent *de;
    char p[4096];
    while ((de = readdir(d)) != NULL) {
        if (strcmp(de->d_name, ".") == 0 || strcmp(de->d_name, "..") == 0) continue;
        snprintf(p, sizeof(p), "%s/%s", dir, de->d_name);
        unlink(p);
    }
    closedir(d);
    rmdir(dir);
}

/* Files in dir: *kv named <sha1>.kv, *tmp starting with ".tmp.". */
static void count_files(const char *dir, int *kv, int *tmp) {
    *kv = *tmp = 0;
    DIR *d = opendir(dir);
    if (!d) return;
    struct dirent *de;
    while ((de = readdir(d)) != NULL) {
        size_t n = strlen(de->d_name);
        if (n == 43 && strcmp(de->d_name + 40, ".kv") == 0) (*kv)++;
        if (strncmp(de->d_name, ".tmp.", 5) == 0) (*tmp)++;
    }
    closedir(d);
}

static bool file_exists(const char *dir, const char *name) {
    char p[4096];
    snprintf(p, sizeof(p), "%s/%s.kv", dir, name);
    return access(p, F_OK) == 0;
}

static uint64_t file_size(const char *dir, const char *name) {
    char p[4096];
    struct stat sb;
    snprintf(p, sizeof(p), "%s/%s.kv", dir, name);
    return stat(p, &sb) == 0 ? (uint64_t)sb.st_size : 0;
}

/* XOR one byte of a cache file. */
static int flip_byte(const char *dir, const char *name, uint64_t off) {
    char p[4096];
    snprintf(p, sizeof(p), "%s/%s.kv", dir, name);
    int fd = open(p, O_RDWR);
    if (fd < 0) return -1;
    uint8_t b;
    int rc = pread(fd, &b, 1, (off_t)off) == 1 ? 0 : -1;
    b ^= 0x20;
    if (rc == 0 && pwrite(fd, &b, 1, (off_t)off) != 1) rc = -1;
    close(fd);
    return rc;
}

/* A log captured in memory. */
typedef struct logcap {
    char *buf;
    size_t len;
    FILE *f;
} logcap;

static void log_open(logcap *l) {
    l->buf = NULL;
    l->len = 0;
    l->f = open_memstream(&l->buf, &l->len);
}
static bool log_has(logcap *l, const char *needle) {
    fflush(l->f);
    return l->buf && strstr(l->buf, needle) != NULL;
}
static void log_close(logcap *l) {
    if (l->f) fclose(l->f);
    free(l->buf);
    l->f = NULL;
    l->buf = NULL;
}

/* "<t12><t7>..." for tokens[0..n): the text of a prefix is a prefix of the
 * text of the whole. */
static char *tokens_text(const int32_t *t, uint32_t n, size_t *len) {
    char *s = malloc((size_t)n * 12 + 1);
    size_t k = 0;
    for (uint32_t i = 0; s && i < n; i++) k += (size_t)sprintf(s + k, "<t%d>", t[i]);
    if (s) s[k] = '\0';
    *len = k;
    return s;
}

/* Store the session (which holds toks[0..n)) under its tokens' text. */
static int store_session(ds4_kvcache *c, ds4_session *s, const int32_t *toks, uint32_t n, char name[41],
                         ds4_error *err) {
    size_t len;
    char *text = tokens_text(toks, n, &len);
    ds4_kv_item it = {.tokens = toks, .n_tokens = n, .text = text, .text_len = len, .ctx = ds4_session_ctx(s),
                      .reason = DS4_KV_COLD};
    int rc = ds4_kvcache_store(c, s, &it, err);
    if (name) ds4_kv_sha1_hex(text, len, name, NULL);
    free(text);
    return rc;
}

static void base_opts(ds4_kvcache_opts *o, const char *dir, const ds4_engine *e, FILE *log) {
    ds4_kvcache_default_opts(o);
    o->dir = dir;
    o->min_tokens = 4;
    o->log = log;
    if (e) {
        o->model_fp = ds4_kvcache_model_fingerprint(ds4_engine_model(e));
        o->quant_bits = ds4_kvcache_quant_bits(ds4_engine_model(e));
    }
}

/* ---------------------------------------------------------------------- */
/* Save, restart, restore, continue                                        */
/* ---------------------------------------------------------------------- */

static int t_store_restore(void) {
    ds4_error err = {{0}};
    ds4_engine *e = NULL;
    ds4_testmodel_opts mo;
    T_CHECK(load_testmodel(&e, &mo, &err) == 0, "%s", err.msg);
    char dir[] = "/tmp/ds4cl-kvc-XXXXXX";
    T_CHECK(mkdtemp(dir) != NULL, "mkdtemp");
    enum { N = 70, M = 30 };
    const uint32_t V = mo.n_vocab;
    int32_t toks[N + M], other[N + M];
    test_rng rng = {0x5eed};
    for (int i = 0; i < N + M; i++) toks[i] = (int32_t)(test_rng_u64(&rng) % V);
    float *la = malloc(sizeof(float) * M * V), *lb = malloc(sizeof(float) * M * V), *ln = malloc(sizeof(float) * V);
    ds4_session *a = NULL, *b = NULL;
    ds4_kvcache *c = NULL;
    ds4_kvcache_opts o;
    logcap lg;
    log_open(&lg);
    base_opts(&o, dir, e, lg.f);
    char name[41] = {0};
    int rc = la && lb && ln ? 0 : ds4_fail(&err, "oom");
    if (rc == 0) rc = ds4_kvcache_open(&c, &o, &err);
    if (rc == 0) rc = ds4_session_new(e, 128, &a, &err);
    if (rc == 0) rc = ds4_session_eval(a, toks, N, NULL, &err);
    if (rc == 0) rc = store_session(c, a, toks, N, name, &err) == 1 ? 0 : ds4_fail(&err, "not stored: %s", err.msg);
    if (rc == 0) memcpy(ln, ds4_session_logits(a), sizeof(float) * V);
    if (rc == 0) rc = ds4_session_eval(a, toks + N, M, la, &err);
    /* Storing the same prefix again writes nothing. */
    ds4_kvcache_close(c);
    c = NULL;
    /* Restart: a new cache object on the same directory. */
    if (rc == 0) rc = ds4_kvcache_open(&c, &o, &err);
    ds4_kvcache_stats st = {0};
    if (rc == 0) ds4_kvcache_get_stats(c, &st);
    if (rc == 0 && st.entries != 1) rc = ds4_fail(&err, "%u entries after the restart", st.entries);
    ds4_kvcache_match m;
    memset(&m, 0, sizeof(m));
    if (rc == 0 && ds4_kvcache_lookup(c, toks, N + M, NULL, 0, 128, NULL, NULL, &m) != 1)
        rc = ds4_fail(&err, "the entry is not found by tokens");
    if (rc == 0 && (m.n_tokens != N || m.by_text || strcmp(m.name, name) != 0))
        rc = ds4_fail(&err, "wrong match: %u tokens, by_text %d", m.n_tokens, m.by_text);
    /* A context too small for the entry skips it. */
    ds4_kvcache_match m2;
    if (rc == 0 && ds4_kvcache_lookup(c, toks, N + M, NULL, 0, N - 1, NULL, NULL, &m2) != 0)
        rc = ds4_fail(&err, "an entry larger than the context matched");
    ds4_kvcache_loaded ld = {0};
    if (rc == 0) rc = ds4_session_new(e, 128, &b, &err);
    if (rc == 0) rc = ds4_kvcache_load(c, &m, b, &ld, &err);
    if (rc == 0 && (ld.n_tokens != N || memcmp(ld.tokens, toks, sizeof(int32_t) * N) != 0 || ds4_session_pos(b) != N))
        rc = ds4_fail(&err, "restored %u tokens, session at %u", ld.n_tokens, ds4_session_pos(b));
    if (rc == 0 && memcmp(ds4_session_logits(b), ln, sizeof(float) * V) != 0)
        rc = ds4_fail(&err, "the restored next-token logits differ");
    if (rc == 0) rc = ds4_session_eval(b, toks + N, M, lb, &err);
    if (rc == 0 && memcmp(la, lb, sizeof(float) * M * V) != 0)
        rc = ds4_fail(&err, "logits after the restore differ from the uninterrupted session");
    uint32_t hits = 0, nt = 0;
    if (rc == 0 && (!ds4_kvcache_has(c, name, &nt, &hits) || hits != 1 || nt != N))
        rc = ds4_fail(&err, "hits %u tokens %u after one load", hits, nt);
    /* Text match: other tokens, same text prefix. */
    memcpy(other, toks, sizeof(toks));
    other[0] = (toks[0] + 1) % (int32_t)V;
    size_t tl;
    char *text = tokens_text(toks, N + M, &tl);
    if (rc == 0 && ds4_kvcache_lookup(c, other, N + M, NULL, 0, 128, NULL, NULL, &m2) != 0)
        rc = ds4_fail(&err, "a token mismatch matched");
    if (rc == 0 && (ds4_kvcache_lookup(c, other, N + M, text, tl, 128, NULL, NULL, &m2) != 1 || !m2.by_text ||
                    m2.n_tokens != N))
        rc = ds4_fail(&err, "no text match");
    /* A text shorter than the entry's, or different, does not match. */
    if (rc == 0 && ds4_kvcache_lookup(c, other, N + M, text, 20, 128, NULL, NULL, &m2) != 0)
        rc = ds4_fail(&err, "a short text matched");
    if (rc == 0) {
        text[3] ^= 1;
        if (ds4_kvcache_lookup(c, other, N + M, text, tl, 128, NULL, NULL, &m2) != 0)
            rc = ds4_fail(&err, "a different text matched");
    }
    free(text);
    /* Another process replaces the file (same text, other tokens): the
     * stale index entry is refreshed, not the file deleted. */
    ds4_kvcache *c2 = NULL;
    if (rc == 0) rc = ds4_kvcache_open(&c2, &o, &err);
    if (rc == 0) {
        uint8_t junk[32] = {1};
        size_t nl;
        char *t2 = tokens_text(toks, N, &nl);
        ds4_kv_item it = {.tokens = other, .n_tokens = N - 1, .text = t2, .text_len = nl, .ctx = 128};
        if (ds4_kvcache_store_blob(c2, &it, junk, sizeof(junk), &err) != 1) rc = ds4_fail(&err, "replace");
        free(t2);
    }
    ds4_kvcache_close(c2);
    ds4_kvcache_loaded ld2;
    if (rc == 0 && ds4_kvcache_load(c, &m, b, &ld2, &err) != -1) rc = ds4_fail(&err, "a replaced file loaded");
    if (rc == 0 && (!ds4_kvcache_has(c, name, &nt, NULL) || nt != N - 1 || !file_exists(dir, name)))
        rc = ds4_fail(&err, "the replaced file was not re-indexed (%u tokens)", nt);
    if (rc == 0 && (!log_has(&lg, "store ") || !log_has(&lg, "load ")))
        rc = ds4_fail(&err, "log lacks store/load lines:\n%s", lg.buf);
    if (rc != 0) fprintf(stderr, "    %s\n", err.msg);
    ds4_kvcache_loaded_free(&ld);
    ds4_kvcache_close(c);
    log_close(&lg);
    ds4_session_free(a);
    ds4_session_free(b);
    ds4_engine_free(e);
    free(la);
    free(lb);
    free(ln);
    rm_dir(dir);
    return rc;
}

/* ---------------------------------------------------------------------- */
/* Corruption, model identity                                              */
/* ---------------------------------------------------------------------- */

static uint64_t payload_offset(uint64_t text_len, uint32_t n) { return 48 + 4 + text_len + 4ull * n; }

static int fingerprints(ds4_error *err) {
    ds4_testmodel_opts o;
    uint64_t fp[3];
    uint8_t bits[3];
    for (int k = 0; k < 3; k++) {
        ds4_testmodel_default_opts(&o);
        if (k == 1) o.seed = 2;
        if (k == 2) o.exp_gate_up_type = o.exp_down_type = DS4_TYPE_Q4_K;
        uint8_t *buf = NULL;
        uint64_t size = 0;
        gguf_file g;
        ds4_model m;
        if (ds4_testmodel_build(&o, &buf, &size, err) != 0) return -1;
        int rc = gguf_parse(&g, buf, size, err);
        if (rc == 0) rc = ds4_model_bind(&m, &g, err);
        if (rc == 0) {
            fp[k] = ds4_kvcache_model_fingerprint(&m);
            bits[k] = ds4_kvcache_quant_bits(&m);
        }
        if (rc == 0) gguf_close(&g);
        free(buf);
        if (rc != 0) return -1;
    }
    if (fp[0] == fp[1]) return ds4_fail(err, "two models share a fingerprint");
    if (fp[0] != fp[2]) return ds4_fail(err, "two quantizations of one model differ in fingerprint");
    if (bits[0] != 2 || bits[2] != 4) return ds4_fail(err, "quant bits %u %u", bits[0], bits[2]);
    return 0;
}

static int t_corrupt(void) {
    ds4_error err = {{0}};
    T_CHECK(fingerprints(&err) == 0, "%s", err.msg);
    ds4_engine *e = NULL;
    ds4_testmodel_opts mo;
    T_CHECK(load_testmodel(&e, &mo, &err) == 0, "%s", err.msg);
    char dir[] = "/tmp/ds4cl-kvc-XXXXXX";
    T_CHECK(mkdtemp(dir) != NULL, "mkdtemp");
    enum { N = 64 };
    int32_t toks[N];
    test_rng rng = {99};
    for (int i = 0; i < N; i++) toks[i] = (int32_t)(test_rng_u64(&rng) % mo.n_vocab);
    logcap lg;
    log_open(&lg);
    ds4_kvcache_opts o;
    base_opts(&o, dir, e, lg.f);
    ds4_kvcache *c = NULL;
    ds4_session *a = NULL, *b = NULL;
    /* Entries at 20 (X), 30 (W), 40 (Y), 60 (Z) tokens. */
    const uint32_t at[4] = {20, 30, 40, 60};
    char names[4][41];
    int rc = ds4_kvcache_open(&c, &o, &err);
    if (rc == 0) rc = ds4_session_new(e, 128, &a, &err);
    for (int k = 0; k < 4 && rc == 0; k++) {
        uint32_t from = k ? at[k - 1] : 0;
        rc = ds4_session_eval(a, toks + from, at[k] - from, NULL, &err);
        if (rc == 0 && store_session(c, a, toks, at[k], names[k], &err) != 1) rc = ds4_fail(&err, "store %d", k);
    }
    ds4_kvcache_close(c);
    c = NULL;
    size_t tl[4];
    for (int k = 0; k < 4; k++) free(tokens_text(toks, at[k], &tl[k]));
    /* W: a text byte; Y: truncated; Z: a payload byte; plus junk. */
    char p[4200];
    if (rc == 0 && flip_byte(dir, names[1], 48 + 4 + 5) != 0) rc = ds4_fail(&err, "flip W");
    snprintf(p, sizeof(p), "%s/%s.kv", dir, names[2]);
    if (rc == 0 && truncate(p, (off_t)(file_size(dir, names[2]) - 100)) != 0) rc = ds4_fail(&err, "truncate Y");
    uint64_t zsize = file_size(dir, names[3]);
    uint64_t zoff = payload_offset(tl[3], at[3]);
    if (rc == 0 && flip_byte(dir, names[3], zoff + (zsize - 24 - zoff) / 2) != 0) rc = ds4_fail(&err, "flip Z");
    const char *junk_name = "0123456789abcdef0123456789abcdef01234567";
    snprintf(p, sizeof(p), "%s/%s.kv", dir, junk_name);
    FILE *f = fopen(p, "wb");
    if (f) {
        fputs("this is not a cache file, but it is long enough to have a header and a footer ...", f);
        fclose(f);
    }
    snprintf(p, sizeof(p), "%s/.tmp.999999999.1", dir);
    f = fopen(p, "wb");
    if (f) fclose(f);
    snprintf(p, sizeof(p), "%s/notes.txt", dir);
    f = fopen(p, "wb");
    if (f) fclose(f);

    /* The scan drops W, Y and the junk file, keeps X and Z. */
    if (rc == 0) rc = ds4_kvcache_open(&c, &o, &err);
    ds4_kvcache_stats st = {0};
    if (rc == 0) ds4_kvcache_get_stats(c, &st);
    if (rc == 0 && (st.entries != 2 || st.corrupt != 3))
        rc = ds4_fail(&err, "%u entries, %llu corrupt after the scan", st.entries, (unsigned long long)st.corrupt);
    if (rc == 0 && (file_exists(dir, names[1]) || file_exists(dir, names[2]) || file_exists(dir, junk_name)))
        rc = ds4_fail(&err, "malformed files were not deleted");
    if (rc == 0 && !log_has(&lg, "does not hash")) rc = ds4_fail(&err, "no log line for the text flip");
    if (rc == 0 && !log_has(&lg, "truncated")) rc = ds4_fail(&err, "no log line for the truncation");
    if (rc == 0 && !log_has(&lg, "dead writer")) rc = ds4_fail(&err, "the stale temporary file was not removed");
    snprintf(p, sizeof(p), "%s/notes.txt", dir);
    if (rc == 0 && access(p, F_OK) != 0) rc = ds4_fail(&err, "an unrelated file was deleted");
    /* Z is found first, fails its checksum, is deleted; then X is used. */
    ds4_kvcache_match m;
    ds4_kvcache_loaded ld = {0};
    if (rc == 0) rc = ds4_session_new(e, 128, &b, &err);
    if (rc == 0 && (ds4_kvcache_lookup(c, toks, N, NULL, 0, 128, NULL, NULL, &m) != 1 || m.n_tokens != at[3]))
        rc = ds4_fail(&err, "Z not matched first");
    if (rc == 0) {
        ds4_error le = {{0}};
        if (ds4_kvcache_load(c, &m, b, &ld, &le) != -1 || !strstr(le.msg, "checksum"))
            rc = ds4_fail(&err, "a flipped payload byte was not caught: %s", le.msg);
        else if (ds4_session_pos(b) != 0 || file_exists(dir, names[3]) || !log_has(&lg, "checksum mismatch"))
            rc = ds4_fail(&err, "the corrupt file was not handled (pos %u)", ds4_session_pos(b));
    }
    if (rc == 0 && (ds4_kvcache_lookup(c, toks, N, NULL, 0, 128, NULL, NULL, &m) != 1 || m.n_tokens != at[0]))
        rc = ds4_fail(&err, "X not matched next");
    if (rc == 0) rc = ds4_kvcache_load(c, &m, b, &ld, &err);
    if (rc == 0 && ds4_session_pos(b) != at[0]) rc = ds4_fail(&err, "X restored to %u", ds4_session_pos(b));
    ds4_kvcache_loaded_free(&ld);
    /* A payload the engine refuses (checksum fine): -2, the file stays. */
    uint8_t junk[64] = {0};
    ds4_kv_item it = {.tokens = toks, .n_tokens = 50, .text = "junk payload", .text_len = 12, .ctx = 128};
    if (rc == 0 && ds4_kvcache_store_blob(c, &it, junk, sizeof(junk), &err) != 1) rc = ds4_fail(&err, "store junk");
    if (rc == 0 && (ds4_kvcache_lookup(c, toks, N, NULL, 0, 128, NULL, NULL, &m) != 1 || m.n_tokens != 50))
        rc = ds4_fail(&err, "junk not matched");
    if (rc == 0) {
        ds4_error le = {{0}};
        if (ds4_kvcache_load(c, &m, b, &ld, &le) != -2) rc = ds4_fail(&err, "the junk payload was restored");
        else if (!ds4_kvcache_has(c, m.name, NULL, NULL)) rc = ds4_fail(&err, "a sound file was dropped");
    }
    ds4_kvcache_close(c);
    c = NULL;
    /* Another model: ignored with a log line, not deleted, never matched. */
    o.model_fp ^= 1;
    if (rc == 0) rc = ds4_kvcache_open(&c, &o, &err);
    if (rc == 0 && !log_has(&lg, "another model")) rc = ds4_fail(&err, "no log line for another model");
    if (rc == 0 && ds4_kvcache_lookup(c, toks, N, NULL, 0, 128, NULL, NULL, &m) != 0)
        rc = ds4_fail(&err, "another model's file matched");
    if (rc == 0 && !file_exists(dir, names[0])) rc = ds4_fail(&err, "another model's file was deleted");
    ds4_kvcache_close(c);
    c = NULL;
    /* Strict quant: a different quant is skipped only when asked. */
    o.model_fp ^= 1;
    o.quant_bits = 4;
    if (rc == 0) rc = ds4_kvcache_open(&c, &o, &err);
    if (rc == 0 && ds4_kvcache_lookup(c, toks, N, NULL, 0, 128, NULL, NULL, &m) != 1)
        rc = ds4_fail(&err, "a q2 file was not reused by q4 by default");
    ds4_kvcache_close(c);
    c = NULL;
    o.reject_different_quant = true;
    if (rc == 0) rc = ds4_kvcache_open(&c, &o, &err);
    if (rc == 0 && ds4_kvcache_lookup(c, toks, N, NULL, 0, 128, NULL, NULL, &m) != 0)
        rc = ds4_fail(&err, "--kv-cache-reject-different-quant did not reject");
    if (rc != 0) fprintf(stderr, "    %s\n    log:\n%s", err.msg, lg.buf ? lg.buf : "");
    ds4_kvcache_close(c);
    log_close(&lg);
    ds4_session_free(a);
    ds4_session_free(b);
    ds4_engine_free(e);
    rm_dir(dir);
    return rc;
}

/* ---------------------------------------------------------------------- */
/* Eviction                                                                */
/* ---------------------------------------------------------------------- */

static uint64_t fake_now(void *ud) { return *(const uint64_t *)ud; }

/* Store the session's payload under a text of text_len bytes made of c. */
static int store_padded(ds4_kvcache *kc, const uint8_t *blob, uint64_t blob_len, const int32_t *toks, uint32_t n,
                        char ch, size_t text_len, char name[41], ds4_error *err) {
    char *text = malloc(text_len);
    if (!text) return ds4_fail(err, "oom");
    memset(text, ch, text_len);
    ds4_kv_item it = {.tokens = toks, .n_tokens = n, .text = text, .text_len = text_len, .ctx = 64};
    int rc = ds4_kvcache_store_blob(kc, &it, blob, blob_len, err);
    ds4_kv_sha1_hex(text, text_len, name, NULL);
    free(text);
    return rc;
}

static int load_by_name(ds4_kvcache *kc, const char *name, uint32_t n, ds4_session *s, ds4_error *err) {
    ds4_kvcache_match m;
    memset(&m, 0, sizeof(m));
    memcpy(m.name, name, 41);
    m.n_tokens = n;
    ds4_kvcache_loaded ld;
    int rc = ds4_kvcache_load(kc, &m, s, &ld, err);
    if (rc == 0) ds4_kvcache_loaded_free(&ld);
    return rc;
}

static int t_eviction(void) {
    ds4_error err = {{0}};
    ds4_engine *e = NULL;
    ds4_testmodel_opts mo;
    T_CHECK(load_testmodel(&e, &mo, &err) == 0, "%s", err.msg);
    char dir[] = "/tmp/ds4cl-kvc-XXXXXX";
    T_CHECK(mkdtemp(dir) != NULL, "mkdtemp");
    enum { N = 8 };
    int32_t toks[N] = {5, 6, 7, 8, 9, 10, 11, 12};
    ds4_session *s = NULL;
    uint8_t *blob = NULL;
    uint64_t blob_len = 0;
    int rc = ds4_session_new(e, 64, &s, &err);
    if (rc == 0) rc = ds4_session_eval(s, toks, N, NULL, &err);
    if (rc == 0) rc = ds4_session_save(s, &blob, &blob_len, &err);
    /* Files of S bytes: 4 fit in 1 MiB, 5 do not. */
    const uint64_t S = 230000, over = 48 + 4 + 4 * N + 24;
    if (rc == 0 && blob_len + over + 1000 > S) rc = ds4_fail(&err, "payload of %llu bytes too large", (unsigned long long)blob_len);
    const size_t text_len = (size_t)(S - over - blob_len);
    uint64_t now = 1000;
    logcap lg;
    log_open(&lg);
    ds4_kvcache_opts o;
    base_opts(&o, dir, e, lg.f);
    o.space_mb = 1;
    o.now = fake_now;
    o.now_ud = &now;
    ds4_kvcache *c = NULL;
    char A[41], B[41], C[41], D[41], E[41], F[41], G[41];
    if (rc == 0) rc = ds4_kvcache_open(&c, &o, &err);
    if (rc == 0 && store_padded(c, blob, blob_len, toks, N, 'a', text_len, A, &err) != 1) rc = -1;
    now++;
    if (rc == 0 && store_padded(c, blob, blob_len, toks, N, 'b', text_len, B, &err) != 1) rc = -1;
    now++;
    if (rc == 0 && store_padded(c, blob, blob_len, toks, N, 'c', text_len, C, &err) != 1) rc = -1;
    now++;
    if (rc == 0 && file_size(dir, A) != S) rc = ds4_fail(&err, "file size %llu", (unsigned long long)file_size(dir, A));
    /* Hits: A twice, B once. */
    if (rc == 0) rc = load_by_name(c, A, N, s, &err);
    now++;
    if (rc == 0) rc = load_by_name(c, A, N, s, &err);
    now++;
    if (rc == 0) rc = load_by_name(c, B, N, s, &err);
    now++;
    if (rc == 0 && store_padded(c, blob, blob_len, toks, N, 'd', text_len, D, &err) != 1) rc = -1;
    now++;
    ds4_kvcache_stats st = {0};
    if (rc == 0) ds4_kvcache_get_stats(c, &st);
    if (rc == 0 && (st.entries != 4 || st.evictions != 0)) rc = ds4_fail(&err, "%u entries before the limit", st.entries);
    /* E overflows: C (no hits, older than D) goes. */
    if (rc == 0 && store_padded(c, blob, blob_len, toks, N, 'e', text_len, E, &err) != 1) rc = -1;
    if (rc == 0) ds4_kvcache_get_stats(c, &st);
    if (rc == 0 && (st.entries != 4 || st.bytes > st.budget || file_exists(dir, C) || !file_exists(dir, A) ||
                    !file_exists(dir, B) || !file_exists(dir, D) || !file_exists(dir, E)))
        rc = ds4_fail(&err, "first eviction: %u entries, %llu bytes, C %d", st.entries,
                      (unsigned long long)st.bytes, file_exists(dir, C));
    /* Twenty half-lives later A's hits are worth nothing: the least
     * recently used (A) goes, not D. */
    now += 20 * 6 * 3600;
    if (rc == 0 && store_padded(c, blob, blob_len, toks, N, 'f', text_len, F, &err) != 1) rc = -1;
    if (rc == 0) ds4_kvcache_get_stats(c, &st);
    if (rc == 0 && (st.entries != 4 || st.bytes > st.budget || file_exists(dir, A) || !file_exists(dir, B) ||
                    !file_exists(dir, D)))
        rc = ds4_fail(&err, "decayed eviction: A %d D %d", file_exists(dir, A), file_exists(dir, D));
    /* Too large for the budget: not written. */
    if (rc == 0 && store_padded(c, blob, blob_len, toks, N, 'g', 2u << 20, G, &err) != 0) rc = -1;
    if (rc == 0 && (file_exists(dir, G) || !log_has(&lg, "exceeds the"))) rc = ds4_fail(&err, "an oversize file");
    /* The budget holds after a restart with a smaller budget too. */
    ds4_kvcache_close(c);
    c = NULL;
    o.space_mb = 1;
    if (rc == 0) rc = ds4_kvcache_open(&c, &o, &err);
    if (rc == 0) ds4_kvcache_get_stats(c, &st);
    if (rc == 0 && (st.entries != 4 || st.bytes > st.budget)) rc = ds4_fail(&err, "%u entries after reopening", st.entries);
    if (rc != 0) fprintf(stderr, "    %s\n    log:\n%s", err.msg, lg.buf ? lg.buf : "");
    ds4_kvcache_close(c);
    log_close(&lg);
    free(blob);
    ds4_session_free(s);
    ds4_engine_free(e);
    rm_dir(dir);
    return rc;
}

/* ---------------------------------------------------------------------- */
/* Writers killed mid-write                                                */
/* ---------------------------------------------------------------------- */

#define WRITER_PAYLOAD (6u << 20)

static void writer_child(const char *dir, int who) {
    ds4_kvcache_opts o;
    ds4_kvcache_default_opts(&o);
    o.dir = dir;
    o.min_tokens = 1;
    o.space_mb = 48;
    o.model_fp = 42;
    o.log = NULL;
    ds4_kvcache *c = NULL;
    if (ds4_kvcache_open(&c, &o, NULL) != 0) _exit(2);
    const uint64_t P = WRITER_PAYLOAD;
    uint8_t *payload = malloc(P);
    if (!payload) _exit(3);
    for (uint64_t i = 0; i < P; i++) payload[i] = (uint8_t)(i * 31 + (uint64_t)who);
    int32_t toks[16];
    for (int i = 0; i < 16; i++) toks[i] = i;
    for (int i = 0; i < 200; i++) {
        char text[64];
        /* Even items share their key between the writers. */
        int len = i % 2 ? snprintf(text, sizeof(text), "writer %d item %d", who, i)
                        : snprintf(text, sizeof(text), "shared item %d", i);
        ds4_kv_item it = {.tokens = toks, .n_tokens = 16, .text = text, .text_len = (size_t)len, .ctx = 64};
        payload[0] = (uint8_t)i;
        ds4_kvcache_store_blob(c, &it, payload, P, NULL);
    }
    _exit(0);
}

/* Is a temporary file in dir shorter than a complete one (being written)? */
static bool partial_tmp(const char *dir) {
    DIR *d = opendir(dir);
    if (!d) return false;
    struct dirent *de;
    bool found = false;
    while (!found && (de = readdir(d)) != NULL) {
        if (strncmp(de->d_name, ".tmp.", 5) != 0) continue;
        char p[4096];
        struct stat sb;
        snprintf(p, sizeof(p), "%s/%s", dir, de->d_name);
        found = stat(p, &sb) == 0 && (uint64_t)sb.st_size < WRITER_PAYLOAD;
    }
    closedir(d);
    return found;
}

static int t_kill_writers(void) {
    char dir[] = "/tmp/ds4cl-kvc-XXXXXX";
    T_CHECK(mkdtemp(dir) != NULL, "mkdtemp");
    /* Kill both writers as soon as files exist under real names and one is
     * half written; again if the kill came too late to leave a partial file. */
    int kv = 0, tmp = 0;
    for (int attempt = 0; attempt < 5 && tmp == 0; attempt++) {
        fflush(stdout);
        fflush(stderr);
        pid_t kids[2];
        for (int k = 0; k < 2; k++) {
            kids[k] = fork();
            T_CHECK(kids[k] >= 0, "fork");
            if (kids[k] == 0) writer_child(dir, k);
        }
        bool seen = false;
        for (int i = 0; i < 40000 && !seen; i++) {
            count_files(dir, &kv, &tmp);
            seen = kv >= 2 && partial_tmp(dir);
        }
        for (int k = 0; k < 2; k++) kill(kids[k], SIGKILL);
        for (int k = 0; k < 2; k++) waitpid(kids[k], NULL, 0);
        count_files(dir, &kv, &tmp);
    }
    printf("    after SIGKILL: %d files, %d temporary (partial) files\n", kv, tmp);
    ds4_error err = {{0}};
    logcap lg;
    log_open(&lg);
    ds4_kvcache_opts o;
    base_opts(&o, dir, NULL, lg.f);
    o.model_fp = 42;
    o.space_mb = 1024;
    ds4_kvcache *c = NULL;
    int rc = tmp > 0 ? 0 : ds4_fail(&err, "no writer was killed mid-write");
    if (rc == 0) rc = ds4_kvcache_open(&c, &o, &err);
    ds4_kvcache_stats st = {0};
    if (rc == 0) ds4_kvcache_get_stats(c, &st);
    if (rc == 0 && (st.corrupt != 0 || st.entries != (uint32_t)kv))
        rc = ds4_fail(&err, "%llu malformed files under real names (%u of %d indexed)",
                      (unsigned long long)st.corrupt, st.entries, kv);
    /* Every file under a real name passes the full checksum. */
    DIR *d = opendir(dir);
    struct dirent *de;
    while (rc == 0 && d && (de = readdir(d)) != NULL) {
        if (strlen(de->d_name) != 43) continue;
        char name[41];
        memcpy(name, de->d_name, 40);
        name[40] = '\0';
        if (ds4_kvcache_verify(c, name, &err) != 0) rc = ds4_fail_wrap(&err, "%s", de->d_name);
    }
    if (d) closedir(d);
    int kv2, tmp2;
    count_files(dir, &kv2, &tmp2);
    if (rc == 0 && tmp2 != 0) rc = ds4_fail(&err, "%d temporary files survived the scan", tmp2);
    if (rc == 0 && !log_has(&lg, "dead writer")) rc = ds4_fail(&err, "no log line for the temporary files");
    if (rc != 0) fprintf(stderr, "    %s\n", err.msg);
    ds4_kvcache_close(c);
    log_close(&lg);
    rm_dir(dir);
    return rc;
}

/* ---------------------------------------------------------------------- */
/* Save-point policy and flags                                             */
/* ---------------------------------------------------------------------- */

static int t_policy(void) {
    char dir[] = "/tmp/ds4cl-kvc-XXXXXX";
    T_CHECK(mkdtemp(dir) != NULL, "mkdtemp");
    ds4_kvcache_opts o;
    ds4_kvcache_default_opts(&o);
    ds4_error err = {{0}};
    char *argv[] = {"x", "--kv-disk-dir", dir, "--kv-cache-min-tokens", "100", "--kv-cache-cold-max-tokens", "5000",
                    "--kv-cache-continued-interval-tokens", "1000", "--kv-cache-boundary-align-tokens", "256",
                    "--kv-cache-boundary-trim-tokens", "16", "--kv-cache-reject-different-quant", "--other",
                    "--kv-disk-space-mb", "12x", "--kv-disk-space-mb"};
    int argc = (int)(sizeof(argv) / sizeof(argv[0]));
    int i = 1, consumed = 0;
    for (; i < argc; i++) {
        int r = ds4_kvcache_parse_flag(&o, argc, argv, &i, &err);
        if (r != 1) break;
        consumed++;
    }
    T_CHECK(consumed == 7 && strcmp(argv[i], "--other") == 0, "parsed %d flags, stopped at %s", consumed, argv[i]);
    i++;
    T_CHECK(ds4_kvcache_parse_flag(&o, argc, argv, &i, &err) == -1, "bad value accepted");
    i = argc - 1;
    T_CHECK(ds4_kvcache_parse_flag(&o, argc, argv, &i, &err) == -1, "missing value accepted");
    T_CHECK(o.min_tokens == 100 && o.cold_max_tokens == 5000 && o.boundary_align == 256 && o.boundary_trim == 16 &&
                o.reject_different_quant && strcmp(o.dir, dir) == 0,
            "values not parsed");
    o.log = NULL;
    ds4_kvcache *c = NULL;
    T_CHECK(ds4_kvcache_open(&c, &o, &err) == 0, "%s", err.msg);
    /* 1000 rounds up to 1024; boundaries are absolute. */
    int rc = 0;
    if (ds4_kvcache_next_continued(c, 0) != 1024 || ds4_kvcache_next_continued(c, 1023) != 1024 ||
        ds4_kvcache_next_continued(c, 1024) != 2048)
        rc = ds4_fail(&err, "continued boundaries %u", ds4_kvcache_next_continued(c, 0));
    enum { U = 7, A = 8 };
    int32_t t[3000];
    for (int k = 0; k < 3000; k++) t[k] = 100 + k % 50;
    t[0] = 1;
    /* No anchor: n - trim aligned down. */
    if (rc == 0 && ds4_kvcache_cold_point(c, t, 3000, U, A) != 2816) rc = ds4_fail(&err, "cold point no anchor");
    if (rc == 0 && ds4_kvcache_cold_point(c, t, 99, U, A) != 0) rc = ds4_fail(&err, "below min");
    if (rc == 0 && ds4_kvcache_cold_point(c, t, 200, U, A) != 0) rc = ds4_fail(&err, "aligned below min");
    /* The anchor: last User before the first Assistant. */
    t[150] = U;
    t[400] = U;
    t[600] = A;
    t[900] = U;
    if (rc == 0 && ds4_kvcache_cold_point(c, t, 3000, U, A) != 400) rc = ds4_fail(&err, "anchor");
    t[400] = 5;
    /* An anchor below min falls back to the aligned length. */
    t[150] = 5;
    t[50] = U;
    if (rc == 0 && ds4_kvcache_cold_point(c, t, 3000, U, A) != 2816) rc = ds4_fail(&err, "short anchor");
    ds4_kvcache_close(c);
    c = NULL;
    /* cold_max must be 0 or >= min. */
    o.cold_max_tokens = 50;
    if (rc == 0 && ds4_kvcache_open(&c, &o, &err) == 0) rc = ds4_fail(&err, "cold max below min accepted");
    ds4_kvcache_close(c);
    if (rc != 0) fprintf(stderr, "    %s\n", err.msg);
    rm_dir(dir);
    return rc;
}

/* ---------------------------------------------------------------------- */
/* A multi-turn agent transcript through the live session and the disk     */
/* ---------------------------------------------------------------------- */

static const char *const TOOLS[] = {
    "{\"name\": \"list_files\", \"description\": \"List the files of a directory.\", \"parameters\": "
    "{\"type\": \"object\", \"properties\": {\"path\": {\"type\": \"string\"}}, \"required\": [\"path\"]}}",
    "{\"name\": \"read_file\", \"description\": \"Read a text file.\", \"parameters\": "
    "{\"type\": \"object\", \"properties\": {\"path\": {\"type\": \"string\"}}, \"required\": [\"path\"]}}",
    "{\"name\": \"write_file\", \"description\": \"Replace a file's content.\", \"parameters\": "
    "{\"type\": \"object\", \"properties\": {\"path\": {\"type\": \"string\"}, \"content\": {\"type\": "
    "\"string\"}}, \"required\": [\"path\", \"content\"]}}",
};

static const ds4_chat_tool_call CALL1[] = {{"call_1", "list_files", "{\"path\": \"src\"}"}};
static const ds4_chat_tool_call CALL2[] = {{"call_2", "read_file", "{\"path\": \"src/util.c\"}"}};
static const ds4_chat_tool_call CALL4[] = {
    {"call_4", "write_file",
     "{\"path\": \"src/util.c\", \"content\": \"int add(int a, int b) { return a + b; }\\nint sub(int a, int b) "
     "{ return a - b; }\\n\"}"}};

#define SYS(c) {.role = DS4_CHAT_SYSTEM, .content = (c)}
#define USER(c) {.role = DS4_CHAT_USER, .content = (c)}
#define ASST(c) {.role = DS4_CHAT_ASSISTANT, .content = (c)}
#define CALLS(c, calls) {.role = DS4_CHAT_ASSISTANT, .content = (c), .tool_calls = (calls), .n_tool_calls = 1}
#define TOOL(c, id) {.role = DS4_CHAT_TOOL, .content = (c), .tool_call_id = (id)}

static const ds4_chat_msg MSGS[] = {
    SYS("You are a careful coding agent working in a C repository. Use the tools to inspect files before you "
        "change them, keep answers short."),
    USER("What does src/util.c do?"),
    CALLS("Let me look at the source tree first.", CALL1),
    TOOL("main.c\nutil.c\nutil.h", "call_1"),
    CALLS("", CALL2),
    TOOL("int add(int a, int b) { return a + b; }\n", "call_2"),
    ASST("src/util.c defines add(), which returns the sum of its two int arguments."),
    USER("Add a sub() function next to it."),
    CALLS("", CALL4),
    TOOL("ok", "call_4"),
    ASST("Done: sub() now sits next to add() in src/util.c."),
};
/* Request k renders MSGS[0..REQ_END[k]); the model then "generates" the
 * assistant message MSGS[REQ_END[k]]. */
static const size_t REQ_END[] = {2, 4, 6, 8, 10};
enum { N_REQ = 5 };

typedef struct turn {
    ds4_chat_prompt p;
    ds4_tokens t;     /* canonical tokens of the prompt */
    ds4_tokens gen;   /* the "sampled" answer: its text tokenized as the model would emit it */
    char *gen_text;
} turn;

static int render(size_t n_msgs, ds4_chat_prompt *p, ds4_error *err) {
    ds4_chat chat = {.msgs = MSGS, .n_msgs = n_msgs, .tools = TOOLS, .n_tools = 3, .think = DS4_THINK_NONE};
    return ds4_chat_render(&chat, p, err);
}

/* Prompts, their tokens, and the answers: the bytes the rendering with the
 * assistant message added has after prompt k (through its end-of-sentence
 * marker). */
static int build_turns(const ds4_tokenizer *tok, turn *tr, ds4_error *err) {
    for (int k = 0; k < N_REQ; k++) {
        if (render(REQ_END[k], &tr[k].p, err) != 0 || ds4_chat_tokenize(tok, &tr[k].p, &tr[k].t, err) != 0)
            return -1;
        ds4_chat_prompt next;
        if (render(REQ_END[k] + 1, &next, err) != 0) return -1;
        bool prefix = next.len > tr[k].p.len && memcmp(next.text, tr[k].p.text, tr[k].p.len) == 0;
        if (prefix) tr[k].gen_text = strndup(next.text + tr[k].p.len, next.len - tr[k].p.len);
        ds4_chat_prompt_free(&next);
        if (!prefix) return ds4_fail(err, "prompt %d is not a prefix of the rendering with its answer", k + 1);
        /* The model emits the control tokens of its answer as tokens.
         * Answer 3 comes out split in a way BPE would not ("src/uti" +
         * "l.c ..."): its bytes match the next prompt, its tokens do not. */
        if (!tr[k].gen_text) return ds4_fail(err, "oom");
        size_t len = strlen(tr[k].gen_text), cut = k == 2 ? 7 : 0;
        if (ds4_tokenize(tok, tr[k].gen_text, cut, true, &tr[k].gen, err) != 0 ||
            ds4_tokenize(tok, tr[k].gen_text + cut, len - cut, true, &tr[k].gen, err) != 0)
            return -1;
    }
    return 0;
}

static void free_turns(turn *tr) {
    for (int k = 0; k < N_REQ; k++) {
        ds4_chat_prompt_free(&tr[k].p);
        ds4_tokens_free(&tr[k].t);
        ds4_tokens_free(&tr[k].gen);
        free(tr[k].gen_text);
    }
}

/* The tool memory of the test: the DSML of call_1 as the prompt renders it. */
typedef struct toolmem {
    ds4_kv_tool t[1];
    char *dsml;
    int loaded;
    bool loaded_call1;
} toolmem;

static size_t tools_for(void *ud, const char *text, size_t len, const ds4_kv_tool **out) {
    toolmem *m = ud;
    *out = m->t;
    return m->dsml ? 1 : 0;
}

static void tools_loaded(void *ud, const ds4_kv_tool *t, size_t n) {
    toolmem *m = ud;
    m->loaded += (int)n;
    for (size_t i = 0; i < n; i++)
        if (t[i].id_len == 6 && memcmp(t[i].id, "call_1", 6) == 0) m->loaded_call1 = true;
}

/* One request: prepare, prefill, then "generate" the answer. */
static int serve(ds4_live *l, turn *tr, ds4_reuse *r, bool answer, ds4_error *err) {
    if (ds4_prefix_prepare(l, &tr->p, tr->t.ids, tr->t.n, r, err) != 0) return -1;
    if (ds4_prefix_prefill(l, r, NULL, NULL, err) != 0) return ds4_fail(err, "prefill");
    if (l->tokens.n != r->feed.n || ds4_session_pos(l->s) != r->feed.n) return ds4_fail(err, "live out of sync");
    if (answer && ds4_live_eval(l, tr->gen.ids, tr->gen.n, false, err) != 0) return -1;
    return 0;
}

static int stop_at_once(void *ud, uint32_t done, uint32_t total) {
    (*(int *)ud)++;
    return 1;
}

static int t_transcript(void) {
    char path[4200];
    snprintf(path, sizeof(path), "%s/gguf/demo.gguf", test_root_dir());
    ds4_error err = {{0}};
    ds4_engine *e = NULL;
    ds4_engine_opts eo = {.model_path = path, .prefill_chunk = 64};
    if (ds4_engine_load(&e, &eo, &err) != 0) {
        fprintf(stderr, "    %s (run `make gguf/demo.gguf`)\n", err.msg);
        return 1;
    }
    ds4_tokenizer *tok = NULL;
    int rc = ds4_tokenizer_load(&tok, ds4_engine_model(e)->file, &err);
    turn tr[N_REQ];
    memset(tr, 0, sizeof(tr));
    if (rc == 0) rc = build_turns(tok, tr, &err);
    char dir[] = "/tmp/ds4cl-kvc-XXXXXX";
    if (rc == 0 && !mkdtemp(dir)) rc = ds4_fail(&err, "mkdtemp");
    logcap lg;
    log_open(&lg);
    ds4_kvcache_opts o;
    base_opts(&o, dir, e, lg.f);
    o.min_tokens = 64;
    o.boundary_align = 64;
    o.boundary_trim = 8;
    o.continued_interval = 250; /* rounded up to 256 */
    const uint32_t CTX = 2048;
    toolmem tm = {0};
    ds4_kvcache *c = NULL;
    ds4_session *s = NULL, *fresh = NULL;
    ds4_live live;
    memset(&live, 0, sizeof(live));
    ds4_reuse r[N_REQ];
    memset(r, 0, sizeof(r));
    uint32_t prompt_n[N_REQ] = {0};
    for (int k = 0; k < N_REQ; k++) prompt_n[k] = tr[k].t.n;
    /* The DSML block of call_1, as the later prompts render it. */
    if (rc == 0) {
        const char *b = strstr(tr[1].p.text, "<\xef\xbd\x9c" "DSML\xef\xbd\x9ctool_calls>");
        const char *end = b ? strstr(b, "</\xef\xbd\x9c" "DSML\xef\xbd\x9ctool_calls>") : NULL;
        if (!end) rc = ds4_fail(&err, "no DSML block in prompt 2:\n%s", tr[1].p.text);
        else {
            end += strlen("</\xef\xbd\x9c" "DSML\xef\xbd\x9ctool_calls>");
            tm.dsml = strndup(b, (size_t)(end - b));
            tm.t[0] = (ds4_kv_tool){"call_1", 6, tm.dsml, strlen(tm.dsml)};
        }
    }

    /* Server A: requests 1..3, then a clean shutdown. */
    if (rc == 0) rc = ds4_kvcache_open(&c, &o, &err);
    if (rc == 0) rc = ds4_session_new(e, CTX, &s, &err);
    if (rc == 0) rc = ds4_live_init(&live, s, tok, c, &err);
    live.log = lg.f;
    live.tools_for = tools_for;
    live.tools_loaded = tools_loaded;
    live.tools_ud = &tm;
    for (int k = 0; k < 3 && rc == 0; k++) {
        uint32_t before = live.tokens.n;
        rc = serve(&live, &tr[k], &r[k], true, &err);
        if (rc == 0 && k == 0 && (r[k].source != DS4_REUSE_NONE || r[k].n_prefilled != prompt_n[0]))
            rc = ds4_fail(&err, "request 1: %s", ds4_reuse_source_name(r[k].source));
        if (rc == 0 && k > 0 && (r[k].n_cached != before || (r[k].source != DS4_REUSE_LIVE_TOKENS &&
                                                            r[k].source != DS4_REUSE_LIVE_TEXT)))
            rc = ds4_fail(&err, "request %d reused %u of %u live tokens (%s)", k + 1, r[k].n_cached, before,
                          ds4_reuse_source_name(r[k].source));
    }
    /* The cold save of request 1 sits at the chat anchor (before the
     * first <｜User｜>): a new conversation with the same tools finds it. */
    uint32_t anchor = 0;
    for (uint32_t i = 0; rc == 0 && i < tr[0].t.n; i++)
        if (tr[0].t.ids[i] == live.tok_user) {
            anchor = i;
            break;
        }
    ds4_kvcache_match m;
    ds4_chat_prompt other = {0};
    ds4_tokens other_t = {0};
    if (rc == 0) {
        ds4_chat_msg om[2] = {MSGS[0], USER("Something else entirely.")};
        ds4_chat chat = {.msgs = om, .n_msgs = 2, .tools = TOOLS, .n_tools = 3, .think = DS4_THINK_NONE};
        rc = ds4_chat_render(&chat, &other, &err);
        if (rc == 0) rc = ds4_chat_tokenize(tok, &other, &other_t, &err);
    }
    if (rc == 0 && (ds4_kvcache_lookup(c, other_t.ids, other_t.n, other.text, other.len, CTX, NULL, NULL, &m) != 1 ||
                    m.n_tokens != anchor || anchor < o.min_tokens))
        rc = ds4_fail(&err, "the cold anchor (%u tokens) is not reusable by a new conversation", anchor);
    /* Continued saves: at 256 inside request 1's prefill, and after the
     * answer of request 2 crossed 512. */
    if (rc == 0 && (!log_has(&lg, "256 tokens, ") || !log_has(&lg, "(continued)")))
        rc = ds4_fail(&err, "no continued saves");
    const uint32_t live_a = live.tokens.n;
    if (rc == 0 && ds4_live_checkpoint(&live, DS4_KV_SHUTDOWN, &err) != 1) rc = ds4_fail(&err, "shutdown save");
    const uint64_t a_prefilled = live.stats.prefilled_tokens, a_reused = live.stats.reused_tokens;
    ds4_live_free(&live);
    ds4_session_free(s);
    s = NULL;
    ds4_kvcache_close(c);
    c = NULL;

    /* Server B: a restart on the same directory serves requests 4 and 5. */
    if (rc == 0) rc = ds4_kvcache_open(&c, &o, &err);
    if (rc == 0) rc = ds4_session_new(e, CTX, &s, &err);
    if (rc == 0) rc = ds4_live_init(&live, s, tok, c, &err);
    live.log = lg.f;
    live.tools_for = tools_for;
    live.tools_loaded = tools_loaded;
    live.tools_ud = &tm;
    if (rc == 0) rc = serve(&live, &tr[3], &r[3], false, &err);
    if (rc == 0 && ((r[3].source != DS4_REUSE_DISK_TOKENS && r[3].source != DS4_REUSE_DISK_TEXT) ||
                    r[3].n_cached != live_a || r[3].n_prefilled != r[3].feed.n - live_a))
        rc = ds4_fail(&err, "after the restart: %s, %u cached (the shutdown file holds %u)",
                      ds4_reuse_source_name(r[3].source), r[3].n_cached, live_a);
    if (rc == 0 && !tm.loaded_call1) rc = ds4_fail(&err, "the tool map was not handed back on load");
    /* The restored-and-extended state equals a fresh evaluation of the same tokens. */
    const uint32_t V = ds4_engine_model(e)->hp.n_vocab;
    if (rc == 0) rc = ds4_session_new(e, CTX, &fresh, &err);
    if (rc == 0) rc = ds4_session_eval(fresh, r[3].feed.ids, r[3].feed.n, NULL, &err);
    if (rc == 0) {
        const float *x = ds4_session_logits(s), *y = ds4_session_logits(fresh);
        double md = 0, mx = 0;
        for (uint32_t i = 0; i < V; i++) {
            double d = fabs((double)x[i] - y[i]);
            if (d > md) md = d;
            if (fabs(y[i]) > mx) mx = fabs(y[i]);
        }
        printf("    restored vs fresh logits: max|diff| %.3g (max|logit| %.3g)\n", md, mx);
        if (!(md <= 1e-4 * (mx > 1 ? mx : 1))) rc = ds4_fail(&err, "logits differ by %g", md);
    }
    if (rc == 0) rc = ds4_live_eval(&live, tr[3].gen.ids, tr[3].gen.n, false, &err);
    if (rc == 0) rc = serve(&live, &tr[4], &r[4], true, &err);
    if (rc == 0 && r[4].source != DS4_REUSE_LIVE_TOKENS && r[4].source != DS4_REUSE_LIVE_TEXT)
        rc = ds4_fail(&err, "request 5 did not reuse the live session");
    const uint64_t b_prefilled = live.stats.prefilled_tokens, b_live = live.stats.reused_live;
    /* A client retries request 4: the live session (longer) cannot be cut
     * back, so it is saved (evict) and request 4's prefix comes from disk. */
    ds4_reuse retry = {0};
    if (rc == 0) rc = serve(&live, &tr[3], &retry, false, &err);
    if (rc == 0 && ((retry.source != DS4_REUSE_DISK_TOKENS && retry.source != DS4_REUSE_DISK_TEXT) ||
                    !retry.evicted || retry.n_cached != live_a))
        rc = ds4_fail(&err, "the retry: %s, %u cached, evicted %d", ds4_reuse_source_name(retry.source),
                      retry.n_cached, retry.evicted);
    if (rc == 0)
        printf("    retry of request 4: %s, %u cached, %u prefilled, previous live session saved\n",
               ds4_reuse_source_name(retry.source), retry.n_cached, retry.n_prefilled);
    ds4_reuse_free(&retry);
    /* A new conversation with the same tools starts from the cold anchor;
     * its client leaves after the first 4 prefilled tokens; a retry picks
     * up the live session where the prefill stopped. */
    live.prefill_step = 4;
    int calls = 0;
    if (rc == 0) rc = ds4_prefix_prepare(&live, &other, other_t.ids, other_t.n, &retry, &err);
    if (rc == 0 && (retry.n_cached != anchor || (retry.source != DS4_REUSE_DISK_TOKENS &&
                                                 retry.source != DS4_REUSE_DISK_TEXT)))
        rc = ds4_fail(&err, "new conversation: %s, %u cached", ds4_reuse_source_name(retry.source), retry.n_cached);
    if (rc == 0 && ds4_prefix_prefill(&live, &retry, stop_at_once, &calls, &err) != 1)
        rc = ds4_fail(&err, "the prefill did not stop");
    if (rc == 0 && (calls != 1 || live.tokens.n != anchor + 4 || ds4_session_pos(s) != anchor + 4))
        rc = ds4_fail(&err, "stopped prefill holds %u tokens", live.tokens.n);
    ds4_reuse_free(&retry);
    if (rc == 0) rc = ds4_prefix_prepare(&live, &other, other_t.ids, other_t.n, &retry, &err);
    if (rc == 0 && (retry.source != DS4_REUSE_LIVE_TOKENS || retry.n_cached != anchor + 4))
        rc = ds4_fail(&err, "the retry after the stop: %s", ds4_reuse_source_name(retry.source));
    if (rc == 0 && (ds4_prefix_prefill(&live, &retry, NULL, NULL, &err) != 0 || live.tokens.n != other_t.n))
        rc = ds4_fail(&err, "the retry did not finish the prefill");
    ds4_reuse_free(&retry);
    char *dsml = NULL;
    size_t dl = 0;
    if (rc == 0 && (ds4_kvcache_find_tool(c, "call_1", 6, &dsml, &dl) != 1 || strcmp(dsml, tm.dsml) != 0))
        rc = ds4_fail(&err, "call_1 not found in the files' tool maps");
    free(dsml);
    if (rc == 0 && ds4_kvcache_find_tool(c, "call_9", 6, &dsml, &dl) != 0) rc = ds4_fail(&err, "call_9 found");

    /* The numbers. */
    if (rc == 0) {
        uint64_t all = 0;
        for (int k = 0; k < N_REQ; k++) all += prompt_n[k];
        uint64_t with = a_prefilled + b_prefilled;
        /* Without the disk the restart prefills request 4 in full. */
        uint64_t no_disk = a_prefilled + prompt_n[3] + r[4].n_prefilled;
        printf("    prompts (tokens): %u %u %u %u %u = %llu; answers %u %u %u %u\n", prompt_n[0], prompt_n[1],
               prompt_n[2], prompt_n[3], prompt_n[4], (unsigned long long)all, tr[0].gen.n, tr[1].gen.n,
               tr[2].gen.n, tr[3].gen.n);
        for (int k = 0; k < N_REQ; k++)
            printf("    request %d: %-11s %4u prompt, %4u cached, %4u prefilled\n", k + 1,
                   ds4_reuse_source_name(r[k].source), r[k].feed.n, r[k].n_cached, r[k].n_prefilled);
        printf("    prefilled: %llu with live+disk reuse (live reused %llu, disk %u), %llu live only across the "
               "restart, %llu without any reuse\n",
               (unsigned long long)with, (unsigned long long)(a_reused + b_live), r[3].n_cached,
               (unsigned long long)no_disk, (unsigned long long)all);
        if (!(with < no_disk && no_disk < all)) rc = ds4_fail(&err, "reuse did not save prefill");
        if (b_prefilled >= prompt_n[3] / 4) rc = ds4_fail(&err, "the restart prefilled %llu", (unsigned long long)b_prefilled);
    }
    if (rc != 0) fprintf(stderr, "    %s\n    log:\n%s", err.msg, lg.buf ? lg.buf : "");
    ds4_live_free(&live);
    for (int k = 0; k < N_REQ; k++) ds4_reuse_free(&r[k]);
    ds4_chat_prompt_free(&other);
    ds4_tokens_free(&other_t);
    ds4_session_free(s);
    ds4_session_free(fresh);
    ds4_kvcache_close(c);
    log_close(&lg);
    free(tm.dsml);
    free_turns(tr);
    ds4_tokenizer_free(tok);
    ds4_engine_free(e);
    rm_dir(dir);
    return rc;
}

void tests_register_kvcache(void) {
    test_add("kvcache/policy", t_policy);
    test_add("kvcache/store_restore", t_store_restore);
    test_add("kvcache/corrupt", t_corrupt);
    test_add("kvcache/eviction", t_eviction);
    test_add("kvcache/kill_writers", t_kill_writers);
    test_add("kvcache/transcript", t_transcript);
}
