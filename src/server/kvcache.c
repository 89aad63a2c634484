/* kvcache.c - the disk KV cache (see kvcache.h for the file format, the
 * index and the eviction rule).
 *
 * Invariants:
 *   - every entry of the index is a file `<dir>/<name>.kv` that passed the
 *     header/size/footer/text checks when it was scanned or written, and
 *     c->bytes is the sum of their sizes;
 *   - a file only ever appears under its real name by rename(2) of a
 *     complete, fsync'ed temporary file, so a reader sees either the old
 *     file, the new file, or none;
 *   - the header's hits and last-used fields are the only bytes changed in
 *     place, and the checksum does not cover them;
 *   - the mutex is held for the whole of every public call.
 * Disk failures never corrupt the index: a store that fails removes its
 * temporary file and leaves the entry as it was; a file that fails its
 * checks on load is deleted and dropped from the index, unless it merely
 * differs from its entry and scans clean (another writer replaced it):
 * then the entry is rebuilt from the file.
 */
#define _GNU_SOURCE /* memmem */
#include "kvcache.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <math.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <openssl/evp.h>
#include <xxhash.h>

#include "quant.h"

#define KV_VERSION 2
#define KV_HDR 48
#define KV_FOOTER 24
#define KV_FOOTER_MAGIC "DS4CLKVF"
#define KV_TOOLS_MAGIC "KTM"
#define KV_OFF_HITS 12
#define KV_OFF_USED 32

typedef struct kv_entry {
    char name[41];
    int32_t *tokens;
    uint32_t n_tokens;
    uint32_t hits;
    uint32_t ctx;
    uint8_t quant_bits, reason, flags;
    bool foreign;          /* another model's file: counted, never matched */
    uint64_t text_len;
    uint64_t payload_len;
    uint64_t size;         /* file bytes */
    uint64_t created, last_used;
} kv_entry;

struct ds4_kvcache {
    ds4_kvcache_opts o;
    char *dir;
    kv_entry *e;
    size_t n, cap;
    uint64_t bytes, budget;
    uint64_t seq;          /* temporary file names */
    ds4_kvcache_stats st;
    pthread_mutex_t mu;
};

/* ------------------------------------------------------------------------ */
/* Small helpers                                                            */
/* ------------------------------------------------------------------------ */

static void kv_log(ds4_kvcache *c, const char *fmt, ...) DS4_PRINTF(2, 3);
static void kv_log(ds4_kvcache *c, const char *fmt, ...) {
    if (!c->o.log) return;
    va_list ap;
    va_start(ap, fmt);
    fputs("kvcache: ", c->o.log);
    vfprintf(c->o.log, fmt, ap);
    fputc('\n', c->o.log);
    fflush(c->o.log);
    va_end(ap);
}

static uint64_t kv_now(const ds4_kvcache *c) {
    if (c->o.now) return c->o.now(c->o.now_ud);
    return (uint64_t)time(NULL);
}

static void put32(uint8_t *p, uint32_t v) {
    for (int i = 0; i < 4; i++) p[i] = (uint8_t)(v >> (8 * i));
}
static void put64(uint8_t *p, uint64_t v) {
    for (int i = 0; i < 8; i++) p[i] = (uint8_t)(v >> (8 * i));
}
static uint32_t get32(const uint8_t *p) {
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}
static uint64_t get64(const uint8_t *p) { return (uint64_t)get32(p) | (uint64_t)get32(p + 4) << 32; }

static void hex40(const unsigned char md[20], char out[41]) {
    static const char hx[] = "0123456789abcdef";
    for (int i = 0; i < 20; i++) {
        out[2 * i] = hx[md[i] >> 4];
        out[2 * i + 1] = hx[md[i] & 15];
    }
    out[40] = '\0';
}

int ds4_kv_sha1_hex(const void *data, size_t len, char out[41], ds4_error *err) {
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int mdlen = 0;
    if (EVP_Digest(data, len, md, &mdlen, EVP_sha1(), NULL) != 1 || mdlen != 20)
        return ds4_fail(err, "SHA-1 failed");
    hex40(md, out);
    return 0;
}

/* "<40 lowercase hex>.kv" */
static bool is_key_name(const char *s) {
    for (int i = 0; i < 40; i++)
        if (!((s[i] >= '0' && s[i] <= '9') || (s[i] >= 'a' && s[i] <= 'f'))) return false;
    return strcmp(s + 40, ".kv") == 0;
}

static void entry_path(const ds4_kvcache *c, const char *name, char *out, size_t cap) {
    snprintf(out, cap, "%s/%s.kv", c->dir, name);
}

static int read_at(int fd, void *buf, uint64_t len, uint64_t off) {
    uint8_t *p = buf;
    while (len) {
        ssize_t r = pread(fd, p, len > (1u << 30) ? (1u << 30) : (size_t)len, (off_t)off);
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) return -1;
        p += r;
        off += (uint64_t)r;
        len -= (uint64_t)r;
    }
    return 0;
}

static int write_all(int fd, const void *buf, uint64_t len) {
    const uint8_t *p = buf;
    while (len) {
        ssize_t w = write(fd, p, len > (1u << 30) ? (1u << 30) : (size_t)len);
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) return -1;
        p += w;
        len -= (uint64_t)w;
    }
    return 0;
}

static void fsync_dir(const char *dir) {
    int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0) return;
    fsync(fd);
    close(fd);
}

static kv_entry *find_entry(ds4_kvcache *c, const char *name) {
    for (size_t i = 0; i < c->n; i++)
        if (strcmp(c->e[i].name, name) == 0) return &c->e[i];
    return NULL;
}

static void drop_entry(ds4_kvcache *c, kv_entry *e) {
    size_t i = (size_t)(e - c->e);
    c->bytes -= e->size;
    free(e->tokens);
    c->e[i] = c->e[c->n - 1];
    c->n--;
}

/* Delete the file and its entry. */
static void remove_entry(ds4_kvcache *c, kv_entry *e) {
    char path[PATH_MAX];
    entry_path(c, e->name, path, sizeof(path));
    if (unlink(path) != 0 && errno != ENOENT) kv_log(c, "cannot delete %s: %s", path, strerror(errno));
    drop_entry(c, e);
}

static int add_entry(ds4_kvcache *c, const kv_entry *src, ds4_error *err) {
    if (c->n == c->cap) {
        size_t nc = c->cap ? 2 * c->cap : 16;
        kv_entry *ne = realloc(c->e, nc * sizeof(*ne));
        if (!ne) return ds4_fail(err, "out of memory");
        c->e = ne;
        c->cap = nc;
    }
    c->e[c->n++] = *src;
    c->bytes += src->size;
    return 0;
}

/* Bytes of the file before the tool trailer (header..payload). */
static uint64_t body_end(uint64_t text_len, uint32_t n_tokens, uint64_t payload_len) {
    return KV_HDR + 4 + text_len + 4ull * n_tokens + payload_len;
}

/* ------------------------------------------------------------------------ */
/* Options                                                                  */
/* ------------------------------------------------------------------------ */

void ds4_kvcache_default_opts(ds4_kvcache_opts *o) {
    memset(o, 0, sizeof(*o));
    o->space_mb = 4096;
    o->min_tokens = 512;
    o->cold_max_tokens = 30000;
    o->continued_interval = 10000;
    o->boundary_trim = 32;
    o->boundary_align = 2048;
    o->half_life_s = 6 * 3600.0;
    o->log = stderr;
}

const char *ds4_kvcache_usage(void) {
    return "  --kv-disk-dir DIR                  disk KV cache directory (created if needed)\n"
           "  --kv-disk-space-mb N               disk KV cache budget in MiB (4096)\n"
           "  --kv-cache-min-tokens N            shortest prefix worth a file (512)\n"
           "  --kv-cache-cold-max-tokens N       longest first prefill saved cold (30000; 0 off)\n"
           "  --kv-cache-continued-interval-tokens N  save every N tokens (10000, rounded up to align; 0 off)\n"
           "  --kv-cache-boundary-trim-tokens N  tokens left off the end of a cold save (32)\n"
           "  --kv-cache-boundary-align-tokens N align cold saves down to N tokens (2048; 0 off)\n"
           "  --kv-cache-reject-different-quant  never reuse files of another expert quantization\n";
}

static int parse_u64(const char *flag, const char *s, uint64_t max, uint64_t *out, ds4_error *err) {
    if (!s || !*s) return ds4_fail(err, "%s needs a value", flag);
    char *end = NULL;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno || *end || s[0] == '-' || v > max) return ds4_fail(err, "%s: bad value '%s'", flag, s);
    *out = v;
    return 0;
}

int ds4_kvcache_parse_flag(ds4_kvcache_opts *o, int argc, char **argv, int *i, ds4_error *err) {
    const char *f = argv[*i];
    if (strcmp(f, "--kv-cache-reject-different-quant") == 0) {
        o->reject_different_quant = true;
        return 1;
    }
    static const char *const names[] = {
        "--kv-disk-dir", "--kv-disk-space-mb", "--kv-cache-min-tokens", "--kv-cache-cold-max-tokens",
        "--kv-cache-continued-interval-tokens", "--kv-cache-boundary-trim-tokens",
        "--kv-cache-boundary-align-tokens",
    };
    int k = -1;
    for (int j = 0; j < (int)(sizeof(names) / sizeof(names[0])); j++)
        if (strcmp(f, names[j]) == 0) k = j;
    if (k < 0) return 0;
    if (*i + 1 >= argc) return ds4_fail(err, "%s needs a value", f);
    const char *v = argv[++*i];
    if (k == 0) {
        if (!*v) return ds4_fail(err, "%s needs a value", f);
        o->dir = v;
        return 1;
    }
    uint64_t x = 0;
    if (parse_u64(f, v, k == 1 ? (UINT64_MAX >> 20) : UINT32_MAX, &x, err)) return -1;
    switch (k) {
    case 1: o->space_mb = x; break;
    case 2: o->min_tokens = (uint32_t)x; break;
    case 3: o->cold_max_tokens = (uint32_t)x; break;
    case 4: o->continued_interval = (uint32_t)x; break;
    case 5: o->boundary_trim = (uint32_t)x; break;
    default: o->boundary_align = (uint32_t)x; break;
    }
    return 1;
}

/* ------------------------------------------------------------------------ */
/* Model identity                                                           */
/* ------------------------------------------------------------------------ */

static void h_u32(XXH3_state_t *st, uint32_t v) {
    uint8_t b[4];
    put32(b, v);
    XXH3_64bits_update(st, b, 4);
}
static void h_f32(XXH3_state_t *st, float f) {
    uint32_t v;
    memcpy(&v, &f, 4);
    h_u32(st, v);
}

/* The data of an F32 tensor, else its type and dims. */
static void h_tensor(XXH3_state_t *st, const gguf_tensor *t) {
    if (!t) {
        h_u32(st, 0xFFFFFFFFu);
        return;
    }
    h_u32(st, t->type);
    for (uint32_t d = 0; d < GGUF_MAX_DIMS; d++) h_u32(st, (uint32_t)t->ne[d]);
    if (t->type == DS4_TYPE_F32 && t->data) XXH3_64bits_update(st, t->data, t->nbytes);
}

uint64_t ds4_kvcache_model_fingerprint(const ds4_model *m) {
    XXH3_state_t *st = XXH3_createState();
    if (!st) return 0;
    XXH3_64bits_reset(st);
    const ds4_hparams *hp = &m->hp;
    XXH3_64bits_update(st, m->arch, strlen(m->arch));
    const uint32_t u[] = {hp->n_layer,  hp->n_embd,    hp->n_vocab,       hp->n_head,       hp->n_head_kv,
                          hp->head_dim, hp->n_rot,     hp->q_lora,        hp->o_lora,       hp->o_groups,
                          hp->n_expert, hp->n_expert_used, hp->n_ff_exp,  hp->n_expert_shared,
                          hp->n_hash_layers, hp->n_swa, hp->n_idx_head,   hp->idx_head_dim, hp->idx_top_k,
                          hp->n_hc,     hp->n_sinkhorn};
    for (size_t i = 0; i < sizeof(u) / sizeof(u[0]); i++) h_u32(st, u[i]);
    const float f[] = {hp->hc_eps,     hp->rms_eps,        hp->rope_base,          hp->rope_compress_base,
                       hp->rope_scale, hp->yarn_beta_fast, hp->yarn_beta_slow,     hp->expert_weights_scale};
    for (size_t i = 0; i < sizeof(f) / sizeof(f[0]); i++) h_f32(st, f[i]);
    h_u32(st, (uint32_t)hp->rope_orig_ctx);
    h_u32(st, hp->expert_weights_norm);
    for (uint32_t il = 0; il < hp->n_layer && il < DS4_MAX_LAYERS; il++) {
        const ds4_layer *L = &m->layers[il];
        h_u32(st, hp->compress_ratio[il]);
        h_f32(st, hp->swiglu_clamp[il]);
        h_tensor(st, L->attn_norm);
        h_tensor(st, L->ffn_norm);
        h_tensor(st, L->attn_sinks);
        h_tensor(st, L->attn_q_a_norm);
        h_tensor(st, L->attn_kv_a_norm);
    }
    h_tensor(st, m->output_norm);
    uint64_t h = XXH3_64bits_digest(st);
    XXH3_freeState(st);
    return h;
}

uint8_t ds4_kvcache_quant_bits(const ds4_model *m) {
    if (m->hp.n_layer == 0 || !m->layers[0].ffn_gate_exps) return 0;
    switch (m->layers[0].ffn_gate_exps->type) {
    case DS4_TYPE_IQ2_XXS:
    case DS4_TYPE_IQ2_XS:
    case DS4_TYPE_Q2_K: return 2;
    case DS4_TYPE_Q3_K: return 3;
    case DS4_TYPE_Q4_0:
    case DS4_TYPE_Q4_1:
    case DS4_TYPE_Q4_K: return 4;
    case DS4_TYPE_Q8_0: return 8;
    case DS4_TYPE_F16: return 16;
    case DS4_TYPE_F32: return 32;
    default: return 0;
    }
}

/* ------------------------------------------------------------------------ */
/* Scanning one file                                                        */
/* ------------------------------------------------------------------------ */

/* Check the file's header, sizes, footer and text; fill e.  Returns 0 when
 * valid, -1 (message in err) when malformed. */
static int scan_file(ds4_kvcache *c, const char *name, kv_entry *e, ds4_error *err) {
    char path[PATH_MAX];
    entry_path(c, name, path, sizeof(path));
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return ds4_fail(err, "cannot open: %s", strerror(errno));
    int rc = -1;
    uint8_t *tt = NULL;
    struct stat sb;
    uint8_t h[KV_HDR + 4], foot[KV_FOOTER];
    memset(e, 0, sizeof(*e));
    if (fstat(fd, &sb) != 0 || !S_ISREG(sb.st_mode)) {
        ds4_fail(err, "not a regular file");
        goto out;
    }
    uint64_t size = (uint64_t)sb.st_size;
    if (size < KV_HDR + 4 + KV_FOOTER || read_at(fd, h, sizeof(h), 0) != 0) {
        ds4_fail(err, "truncated: %llu bytes", (unsigned long long)size);
        goto out;
    }
    if (memcmp(h, "KVC", 3) != 0) {
        ds4_fail(err, "bad magic");
        goto out;
    }
    if (h[3] != KV_VERSION) {
        ds4_fail(err, "version %u, expected %u", h[3], KV_VERSION);
        goto out;
    }
    e->quant_bits = h[4];
    e->reason = h[5];
    e->flags = h[6];
    e->n_tokens = get32(h + 8);
    e->hits = get32(h + KV_OFF_HITS);
    e->ctx = get32(h + 16);
    e->created = get64(h + 24);
    e->last_used = get64(h + KV_OFF_USED);
    e->payload_len = get64(h + 40);
    e->text_len = get32(h + KV_HDR);
    e->size = size;
    /* Every length is bounded by the file size before any sum is formed. */
    if (e->payload_len > size || e->text_len > size || 4ull * e->n_tokens > size) {
        ds4_fail(err, "lengths exceed the file (truncated?)");
        goto out;
    }
    uint64_t end = body_end(e->text_len, e->n_tokens, e->payload_len);
    uint64_t need = end + ((e->flags & DS4_KV_FLAG_TOOLS) ? 8 : 0) + KV_FOOTER;
    if ((e->flags & DS4_KV_FLAG_TOOLS) ? size < need : size != need) {
        ds4_fail(err, "size %llu does not match its header (%llu; truncated?)", (unsigned long long)size,
                 (unsigned long long)need);
        goto out;
    }
    if (e->n_tokens == 0) {
        ds4_fail(err, "no tokens");
        goto out;
    }
    if (read_at(fd, foot, KV_FOOTER, size - KV_FOOTER) != 0 || memcmp(foot, KV_FOOTER_MAGIC, 8) != 0) {
        ds4_fail(err, "footer missing (truncated?)");
        goto out;
    }
    uint64_t fp = get64(foot + 8);
    e->foreign = fp != c->o.model_fp;
    uint64_t tlen = e->text_len + 4ull * e->n_tokens;
    tt = malloc(tlen ? tlen : 1);
    e->tokens = malloc(4ull * e->n_tokens);
    if (!tt || !e->tokens) {
        ds4_fail(err, "out of memory");
        goto out;
    }
    if (read_at(fd, tt, tlen, KV_HDR + 4) != 0) {
        ds4_fail(err, "read failed");
        goto out;
    }
    char hx[41];
    if (ds4_kv_sha1_hex(tt, e->text_len, hx, err) != 0) goto out;
    if (memcmp(hx, name, 40) != 0) {
        ds4_fail(err, "text does not hash to the file name");
        goto out;
    }
    for (uint32_t i = 0; i < e->n_tokens; i++) e->tokens[i] = (int32_t)get32(tt + e->text_len + 4ull * i);
    memcpy(e->name, name, 40);
    e->name[40] = '\0';
    rc = 0;
out:
    free(tt);
    if (rc != 0) {
        free(e->tokens);
        e->tokens = NULL;
    }
    close(fd);
    return rc;
}

/* ------------------------------------------------------------------------ */
/* Eviction                                                                 */
/* ------------------------------------------------------------------------ */

static double entry_score(const ds4_kvcache *c, const kv_entry *e, uint64_t now) {
    double age = now > e->last_used ? (double)(now - e->last_used) : 0.0;
    double hits = c->o.half_life_s > 0 ? e->hits * pow(0.5, age / c->o.half_life_s) : e->hits;
    if (hits < 0.01) hits = 0.0;
    return (hits + 1.0) * (double)e->n_tokens / (double)(e->size ? e->size : 1);
}

/* Evict the lowest scores until the total fits; `protect` (a name or NULL)
 * goes only if it alone exceeds the budget. */
static void evict(ds4_kvcache *c, const char *protect) {
    uint64_t now = kv_now(c);
    while (c->bytes > c->budget && c->n > 0) {
        kv_entry *victim = NULL;
        double vs = 0;
        for (size_t i = 0; i < c->n; i++) {
            kv_entry *e = &c->e[i];
            if (protect && strcmp(e->name, protect) == 0 && e->size <= c->budget) continue;
            double s = entry_score(c, e, now);
            if (!victim || s < vs || (s == vs && e->last_used < victim->last_used)) {
                victim = e;
                vs = s;
            }
        }
        if (!victim) break;
        kv_log(c, "evict %s.kv (%u tokens, %.1f MiB, %u hits, score %.3g)%s", victim->name, victim->n_tokens,
               victim->size / 1048576.0, victim->hits, vs, victim->foreign ? " [other model]" : "");
        remove_entry(c, victim);
        c->st.evictions++;
    }
}

/* ------------------------------------------------------------------------ */
/* Open / close                                                             */
/* ------------------------------------------------------------------------ */

static int mkdir_p(const char *dir, ds4_error *err) {
    char buf[PATH_MAX];
    size_t n = strlen(dir);
    if (n == 0 || n >= sizeof(buf)) return ds4_fail(err, "bad directory name");
    memcpy(buf, dir, n + 1);
    for (size_t i = 1; i <= n; i++) {
        if (buf[i] != '/' && buf[i] != '\0') continue;
        char keep = buf[i];
        buf[i] = '\0';
        if (mkdir(buf, 0755) != 0 && errno != EEXIST) return ds4_fail(err, "mkdir %s: %s", buf, strerror(errno));
        buf[i] = keep;
    }
    struct stat sb;
    if (stat(dir, &sb) != 0 || !S_ISDIR(sb.st_mode)) return ds4_fail(err, "%s is not a directory", dir);
    if (access(dir, R_OK | W_OK | X_OK) != 0) return ds4_fail(err, "%s: %s", dir, strerror(errno));
    return 0;
}

/* ".tmp.<pid>.<seq>" of a process that no longer exists. */
static bool stale_tmp(const char *name) {
    if (strncmp(name, ".tmp.", 5) != 0) return false;
    char *end = NULL;
    long pid = strtol(name + 5, &end, 10);
    if (pid <= 0 || !end || *end != '.') return false;
    return kill((pid_t)pid, 0) != 0 && errno == ESRCH;
}

static int scan_dir(ds4_kvcache *c, ds4_error *err) {
    DIR *d = opendir(c->dir);
    if (!d) return ds4_fail(err, "opendir %s: %s", c->dir, strerror(errno));
    struct dirent *de;
    int rc = 0;
    uint32_t foreign = 0;
    while (rc == 0 && (de = readdir(d)) != NULL) {
        char path[PATH_MAX];
        snprintf(path, sizeof(path), "%s/%s", c->dir, de->d_name);
        if (stale_tmp(de->d_name)) {
            kv_log(c, "removing %s, left by a dead writer", de->d_name);
            unlink(path);
            continue;
        }
        if (!is_key_name(de->d_name)) continue;
        char name[41];
        memcpy(name, de->d_name, 40);
        name[40] = '\0';
        kv_entry e;
        ds4_error why = {{0}};
        if (scan_file(c, name, &e, &why) != 0) {
            kv_log(c, "%s: %s; deleted", de->d_name, why.msg);
            unlink(path);
            c->st.corrupt++;
            continue;
        }
        if (e.foreign) {
            kv_log(c, "%s: made by another model (fingerprint differs); ignored", de->d_name);
            foreign++;
        }
        rc = add_entry(c, &e, err);
        if (rc) free(e.tokens);
    }
    closedir(d);
    if (rc == 0)
        kv_log(c, "%s: %zu files, %.1f MiB of %.1f MiB%s", c->dir, c->n, c->bytes / 1048576.0,
               c->budget / 1048576.0, foreign ? " (some of another model)" : "");
    return rc;
}

int ds4_kvcache_open(ds4_kvcache **out, const ds4_kvcache_opts *o, ds4_error *err) {
    *out = NULL;
    if (!o->dir || !*o->dir) return ds4_fail(err, "kv cache: no directory");
    if (o->cold_max_tokens != 0 && o->cold_max_tokens < o->min_tokens)
        return ds4_fail(err, "--kv-cache-cold-max-tokens must be 0 or at least --kv-cache-min-tokens (%u)",
                        o->min_tokens);
    if (o->space_mb == 0) return ds4_fail(err, "--kv-disk-space-mb must be positive");
    ds4_kvcache *c = calloc(1, sizeof(*c));
    if (!c) return ds4_fail(err, "out of memory");
    c->o = *o;
    uint32_t a = o->boundary_align, iv = o->continued_interval;
    if (iv && a && iv % a) {
        uint64_t r = ((uint64_t)iv + a - 1) / a * a;
        c->o.continued_interval = r > UINT32_MAX ? UINT32_MAX / a * a : (uint32_t)r;
    }
    c->budget = o->space_mb << 20;
    c->dir = strdup(o->dir);
    pthread_mutex_init(&c->mu, NULL);
    if (!c->dir) {
        ds4_kvcache_close(c);
        return ds4_fail(err, "out of memory");
    }
    if (mkdir_p(c->dir, err) != 0 || scan_dir(c, err) != 0) {
        ds4_kvcache_close(c);
        return ds4_fail_wrap(err, "kv cache");
    }
    evict(c, NULL);
    *out = c;
    return 0;
}

void ds4_kvcache_close(ds4_kvcache *c) {
    if (!c) return;
    for (size_t i = 0; i < c->n; i++) free(c->e[i].tokens);
    free(c->e);
    free(c->dir);
    pthread_mutex_destroy(&c->mu);
    free(c);
}

const ds4_kvcache_opts *ds4_kvcache_get_opts(const ds4_kvcache *c) { return &c->o; }

/* ------------------------------------------------------------------------ */
/* Store                                                                    */
/* ------------------------------------------------------------------------ */

/* Is the same prefix already stored, compatibly? */
static bool same_stored(const ds4_kvcache *c, const kv_entry *e, const ds4_kv_item *it) {
    return e && !e->foreign && e->quant_bits == c->o.quant_bits && e->n_tokens == it->n_tokens &&
           e->text_len == it->text_len && e->ctx >= it->ctx &&
           memcmp(e->tokens, it->tokens, 4ull * it->n_tokens) == 0;
}

static bool memfind(const char *hay, size_t n, const char *needle, size_t m) {
    if (m == 0) return false;
    return memmem(hay, n, needle, m) != NULL;
}

/* The tool trailer for the tools whose DSML occurs in the text. */
static int build_tools(const ds4_kv_item *it, uint8_t **out, uint64_t *len, ds4_error *err) {
    *out = NULL;
    *len = 0;
    uint64_t total = 8;
    uint32_t count = 0;
    for (size_t i = 0; i < it->n_tools; i++) {
        const ds4_kv_tool *t = &it->tools[i];
        if (t->id_len == 0 || t->id_len > UINT32_MAX || t->dsml_len > UINT32_MAX) continue;
        if (!memfind(it->text, it->text_len, t->dsml, t->dsml_len)) continue;
        total += 8 + t->id_len + t->dsml_len;
        count++;
    }
    if (count == 0) return 0;
    uint8_t *b = malloc(total);
    if (!b) return ds4_fail(err, "out of memory");
    memcpy(b, KV_TOOLS_MAGIC, 3);
    b[3] = 1;
    put32(b + 4, count);
    uint64_t off = 8;
    for (size_t i = 0; i < it->n_tools; i++) {
        const ds4_kv_tool *t = &it->tools[i];
        if (t->id_len == 0 || t->id_len > UINT32_MAX || t->dsml_len > UINT32_MAX) continue;
        if (!memfind(it->text, it->text_len, t->dsml, t->dsml_len)) continue;
        put32(b + off, (uint32_t)t->id_len);
        put32(b + off + 4, (uint32_t)t->dsml_len);
        memcpy(b + off + 8, t->id, t->id_len);
        memcpy(b + off + 8 + t->id_len, t->dsml, t->dsml_len);
        off += 8 + t->id_len + t->dsml_len;
    }
    *out = b;
    *len = total;
    return 0;
}

/* Write one part and hash it. */
static int wpart(int fd, XXH3_state_t *st, const void *p, uint64_t n) {
    if (n == 0) return 0;
    XXH3_64bits_update(st, p, n);
    return write_all(fd, p, n);
}

/* Write the complete file to tmp (fsync'ed). */
static int write_file(ds4_kvcache *c, const char *tmp, const ds4_kv_item *it, uint8_t flags, const uint8_t *payload,
                      uint64_t payload_len, const uint8_t *tools, uint64_t tools_len, uint64_t now, ds4_error *err) {
    int fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
    if (fd < 0) return ds4_fail(err, "create %s: %s", tmp, strerror(errno));
    XXH3_state_t *st = XXH3_createState();
    int32_t *le = malloc(4ull * it->n_tokens);
    int rc = -1;
    if (!st || !le) {
        ds4_fail(err, "out of memory");
        goto out;
    }
    XXH3_64bits_reset(st);
    uint8_t h[KV_HDR + 4];
    memset(h, 0, sizeof(h));
    memcpy(h, "KVC", 3);
    h[3] = KV_VERSION;
    h[4] = c->o.quant_bits;
    h[5] = (uint8_t)it->reason;
    h[6] = flags;
    put32(h + 8, it->n_tokens);
    put32(h + 16, it->ctx);
    put64(h + 24, now);
    put64(h + 40, payload_len);
    put32(h + KV_HDR, (uint32_t)it->text_len);
    /* hits = 0 and last used zero are hashed; the real last-used goes to disk. */
    XXH3_64bits_update(st, h, sizeof(h));
    put64(h + KV_OFF_USED, now);
    for (uint32_t i = 0; i < it->n_tokens; i++) put32((uint8_t *)&le[i], (uint32_t)it->tokens[i]);
    uint8_t foot[KV_FOOTER];
    memcpy(foot, KV_FOOTER_MAGIC, 8);
    put64(foot + 8, c->o.model_fp);
    if (write_all(fd, h, sizeof(h)) || wpart(fd, st, it->text, it->text_len) ||
        wpart(fd, st, le, 4ull * it->n_tokens) || wpart(fd, st, payload, payload_len) ||
        wpart(fd, st, tools, tools_len) || wpart(fd, st, foot, 16)) {
        ds4_fail(err, "write %s: %s", tmp, strerror(errno));
        goto out;
    }
    put64(foot + 16, XXH3_64bits_digest(st));
    if (write_all(fd, foot + 16, 8) || fsync(fd) != 0) {
        ds4_fail(err, "write %s: %s", tmp, strerror(errno));
        goto out;
    }
    rc = 0;
out:
    if (close(fd) != 0 && rc == 0) rc = ds4_fail(err, "close %s: %s", tmp, strerror(errno));
    XXH3_freeState(st);
    free(le);
    return rc;
}

static int store_locked(ds4_kvcache *c, const ds4_kv_item *it, const uint8_t *payload, uint64_t payload_len,
                        ds4_error *err) {
    if (it->n_tokens == 0 || it->n_tokens < c->o.min_tokens) {
        c->st.skipped++;
        return 0;
    }
    if (it->text_len > UINT32_MAX) {
        c->st.skipped++;
        kv_log(c, "not storing %u tokens: the text is over 4 GiB", it->n_tokens);
        return 0;
    }
    char name[41];
    if (ds4_kv_sha1_hex(it->text, it->text_len, name, err) != 0) return -1;
    kv_entry *old = find_entry(c, name);
    uint8_t *tools = NULL;
    uint64_t tools_len = 0;
    if (build_tools(it, &tools, &tools_len, err) != 0) return -1;
    if (same_stored(c, old, it) && tools_len == 0) {
        c->st.skipped++;
        kv_log(c, "%s.kv already holds these %u tokens", name, it->n_tokens);
        return 0;
    }
    uint8_t flags = (uint8_t)((it->flags & ~DS4_KV_FLAG_TOOLS) | (tools_len ? DS4_KV_FLAG_TOOLS : 0));
    uint64_t size = body_end(it->text_len, it->n_tokens, payload_len) + tools_len + KV_FOOTER;
    if ((double)size > (double)c->budget * 1.01) {
        free(tools);
        c->st.skipped++;
        kv_log(c, "not storing %u tokens: %.1f MiB exceeds the %.1f MiB budget", it->n_tokens, size / 1048576.0,
               c->budget / 1048576.0);
        return 0;
    }
    kv_entry e = {0};
    e.tokens = malloc(4ull * it->n_tokens);
    if (!e.tokens) {
        free(tools);
        return ds4_fail(err, "out of memory");
    }
    char tmp[PATH_MAX], path[PATH_MAX];
    snprintf(tmp, sizeof(tmp), "%s/.tmp.%ld.%llu", c->dir, (long)getpid(), (unsigned long long)++c->seq);
    entry_path(c, name, path, sizeof(path));
    uint64_t now = kv_now(c);
    int rc = write_file(c, tmp, it, flags, payload, payload_len, tools, tools_len, now, err);
    free(tools);
    if (rc == 0 && rename(tmp, path) != 0) rc = ds4_fail(err, "rename to %s: %s", path, strerror(errno));
    if (rc != 0) {
        unlink(tmp);
        free(e.tokens);
        c->st.failures++;
        kv_log(c, "store failed: %s", err ? err->msg : "?");
        return -1;
    }
    fsync_dir(c->dir);
    memcpy(e.name, name, 41);
    memcpy(e.tokens, it->tokens, 4ull * it->n_tokens);
    e.n_tokens = it->n_tokens;
    e.ctx = it->ctx;
    e.quant_bits = c->o.quant_bits;
    e.reason = (uint8_t)it->reason;
    e.flags = flags;
    e.text_len = it->text_len;
    e.payload_len = payload_len;
    e.size = size;
    e.created = e.last_used = now;
    old = find_entry(c, name);
    if (old) {
        e.hits = old->hits; /* the same prefix: its popularity carries over */
        drop_entry(c, old);
    }
    if (add_entry(c, &e, err) != 0) {
        free(e.tokens);
        unlink(path);
        return -1;
    }
    static const char *const why[] = {"unknown", "cold", "continued", "evict", "shutdown"};
    kv_log(c, "store %s.kv: %u tokens, %.1f MiB (%s)", name, it->n_tokens, size / 1048576.0,
           it->reason <= DS4_KV_SHUTDOWN ? why[it->reason] : "other");
    c->st.stores++;
    evict(c, name);
    return 1;
}

int ds4_kvcache_store_blob(ds4_kvcache *c, const ds4_kv_item *item, const uint8_t *payload, uint64_t payload_len,
                           ds4_error *err) {
    pthread_mutex_lock(&c->mu);
    int rc = store_locked(c, item, payload, payload_len, err);
    pthread_mutex_unlock(&c->mu);
    return rc;
}

int ds4_kvcache_store(ds4_kvcache *c, ds4_session *s, const ds4_kv_item *item, ds4_error *err) {
    if (ds4_session_pos(s) != item->n_tokens)
        return ds4_fail(err, "kv cache store: the session holds %u tokens, not %u", ds4_session_pos(s),
                        item->n_tokens);
    /* Cheap refusals before the (large) snapshot is taken. */
    pthread_mutex_lock(&c->mu);
    bool small = item->n_tokens == 0 || item->n_tokens < c->o.min_tokens;
    bool dup = false;
    char name[41];
    if (!small && item->n_tools == 0 && ds4_kv_sha1_hex(item->text, item->text_len, name, NULL) == 0)
        dup = same_stored(c, find_entry(c, name), item);
    if (small || dup) {
        c->st.skipped++;
        if (dup) kv_log(c, "%s.kv already holds these %u tokens", name, item->n_tokens);
    }
    pthread_mutex_unlock(&c->mu);
    if (small || dup) return 0;
    uint8_t *blob = NULL;
    uint64_t len = 0;
    if (ds4_session_save(s, &blob, &len, err) != 0) return ds4_fail_wrap(err, "kv cache store");
    int rc = ds4_kvcache_store_blob(c, item, blob, len, err);
    free(blob);
    return rc;
}

/* ------------------------------------------------------------------------ */
/* Lookup                                                                   */
/* ------------------------------------------------------------------------ */

static bool usable(const ds4_kvcache *c, const kv_entry *e, uint32_t max_tokens) {
    if (e->foreign || e->n_tokens > max_tokens) return false;
    if (c->o.reject_different_quant && e->quant_bits != c->o.quant_bits) return false;
    return true;
}

static int cmp_text_len(const void *a, const void *b) {
    const kv_entry *x = *(const kv_entry *const *)a, *y = *(const kv_entry *const *)b;
    return x->text_len < y->text_len ? -1 : x->text_len > y->text_len;
}

/* Text matches: hash text once, taking a digest at each candidate length. */
static void text_matches(ds4_kvcache *c, const char *text, uint64_t len, uint32_t max_tokens, ds4_kv_cut_ok cut_ok,
                         void *ud, const kv_entry **best, bool *best_by_text) {
    const kv_entry **cand = malloc(c->n * sizeof(*cand));
    EVP_MD_CTX *run = EVP_MD_CTX_new(), *tmp = EVP_MD_CTX_new();
    size_t nc = 0;
    if (!cand || !run || !tmp || EVP_DigestInit_ex(run, EVP_sha1(), NULL) != 1) goto out;
    for (size_t i = 0; i < c->n; i++) {
        const kv_entry *e = &c->e[i];
        if (!usable(c, e, max_tokens) || e->text_len > len || e->text_len == 0) continue;
        if (*best && e->n_tokens <= (*best)->n_tokens) continue;
        cand[nc++] = e;
    }
    qsort(cand, nc, sizeof(*cand), cmp_text_len);
    uint64_t at = 0;
    for (size_t i = 0; i < nc; i++) {
        const kv_entry *e = cand[i];
        if (EVP_DigestUpdate(run, text + at, e->text_len - at) != 1) break;
        at = e->text_len;
        unsigned char md[EVP_MAX_MD_SIZE];
        unsigned int mdlen = 0;
        char hx[41];
        if (EVP_MD_CTX_copy_ex(tmp, run) != 1 || EVP_DigestFinal_ex(tmp, md, &mdlen) != 1 || mdlen != 20) break;
        hex40(md, hx);
        if (strcmp(hx, e->name) != 0) continue;
        if (cut_ok && !cut_ok(ud, e->text_len)) continue;
        if (!*best || e->n_tokens > (*best)->n_tokens) {
            *best = e;
            *best_by_text = true;
        }
    }
out:
    free(cand);
    EVP_MD_CTX_free(run);
    EVP_MD_CTX_free(tmp);
}

int ds4_kvcache_lookup(ds4_kvcache *c, const int32_t *tokens, uint32_t n, const char *text, uint64_t len,
                       uint32_t max_tokens, ds4_kv_cut_ok cut_ok, void *ud, ds4_kvcache_match *m) {
    pthread_mutex_lock(&c->mu);
    const kv_entry *best = NULL;
    bool by_text = false;
    for (size_t i = 0; i < c->n; i++) {
        const kv_entry *e = &c->e[i];
        if (!usable(c, e, max_tokens) || e->n_tokens > n) continue;
        if (best && e->n_tokens <= best->n_tokens) continue;
        if (memcmp(e->tokens, tokens, 4ull * e->n_tokens) == 0) best = e;
    }
    if (text) text_matches(c, text, len, max_tokens, cut_ok, ud, &best, &by_text);
    int found = best != NULL;
    if (found) {
        memset(m, 0, sizeof(*m));
        memcpy(m->name, best->name, 41);
        m->n_tokens = best->n_tokens;
        m->text_len = best->text_len;
        m->by_text = by_text;
    }
    pthread_mutex_unlock(&c->mu);
    return found;
}

/* ------------------------------------------------------------------------ */
/* Load                                                                     */
/* ------------------------------------------------------------------------ */

/* Parse a tool trailer of len bytes (already checksummed). */
static int parse_tools(const uint8_t *p, uint64_t len, ds4_kvcache_loaded *out, ds4_error *err) {
    if (len < 8 || memcmp(p, KV_TOOLS_MAGIC, 3) != 0 || p[3] != 1) return ds4_fail(err, "bad tool map");
    uint32_t count = get32(p + 4);
    if (count > len / 8) return ds4_fail(err, "bad tool map count");
    char *mem = malloc(len);
    ds4_kv_tool *t = calloc(count ? count : 1, sizeof(*t));
    if (!mem || !t) {
        free(mem);
        free(t);
        return ds4_fail(err, "out of memory");
    }
    memcpy(mem, p, len);
    uint64_t off = 8;
    for (uint32_t i = 0; i < count; i++) {
        if (len - off < 8) goto bad;
        uint64_t il = get32(p + off), dl = get32(p + off + 4);
        if (il > len - off - 8 || dl > len - off - 8 - il) goto bad;
        t[i] = (ds4_kv_tool){mem + off + 8, il, mem + off + 8 + il, dl};
        off += 8 + il + dl;
    }
    if (off != len) goto bad;
    out->tools = t;
    out->n_tools = count;
    out->mem_ = mem;
    return 0;
bad:
    free(mem);
    free(t);
    return ds4_fail(err, "malformed tool map");
}

/* Read and verify the whole file; *buf malloc'd.  Returns 0, -1 when the
 * file is corrupt, -2 when it no longer matches its index entry (another
 * process may have replaced it: worth a rescan). */
static int read_verified(ds4_kvcache *c, const kv_entry *e, uint8_t **buf, ds4_error *err) {
    char path[PATH_MAX];
    entry_path(c, e->name, path, sizeof(path));
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return ds4_fail(err, "open: %s", strerror(errno));
    struct stat sb;
    uint8_t *b = NULL;
    int rc = -1;
    if (fstat(fd, &sb) != 0 || (uint64_t)sb.st_size != e->size) {
        ds4_fail(err, "size changed to %lld bytes (truncated?)", (long long)sb.st_size);
        rc = -2;
        goto out;
    }
    b = malloc(e->size);
    if (!b) {
        ds4_fail(err, "out of memory (%llu bytes)", (unsigned long long)e->size);
        goto out;
    }
    if (read_at(fd, b, e->size, 0) != 0) {
        ds4_fail(err, "read failed");
        goto out;
    }
    const uint8_t *foot = b + e->size - KV_FOOTER;
    if (memcmp(b, "KVC", 3) != 0 || b[3] != KV_VERSION || get32(b + 8) != e->n_tokens ||
        get64(b + 40) != e->payload_len || get32(b + KV_HDR) != e->text_len || b[6] != e->flags ||
        memcmp(foot, KV_FOOTER_MAGIC, 8) != 0 || get64(foot + 8) != c->o.model_fp) {
        ds4_fail(err, "header or footer changed");
        rc = -2;
        goto out;
    }
    uint8_t h[KV_HDR];
    memcpy(h, b, KV_HDR);
    memset(h + KV_OFF_HITS, 0, 4);
    memset(h + KV_OFF_USED, 0, 8);
    XXH3_state_t *st = XXH3_createState();
    if (!st) {
        ds4_fail(err, "out of memory");
        goto out;
    }
    XXH3_64bits_reset(st);
    XXH3_64bits_update(st, h, KV_HDR);
    XXH3_64bits_update(st, b + KV_HDR, e->size - KV_HDR - 8);
    uint64_t sum = XXH3_64bits_digest(st);
    XXH3_freeState(st);
    if (sum != get64(foot + 16)) {
        ds4_fail(err, "checksum mismatch");
        goto out;
    }
    char hx[41];
    if (ds4_kv_sha1_hex(b + KV_HDR + 4, e->text_len, hx, err) != 0) goto out;
    if (strcmp(hx, e->name) != 0) {
        ds4_fail(err, "text does not hash to the file name");
        goto out;
    }
    rc = 0;
out:
    close(fd);
    if (rc != 0) free(b);
    else *buf = b;
    return rc;
}

void ds4_kvcache_loaded_free(ds4_kvcache_loaded *l) {
    if (!l) return;
    free(l->tokens);
    free(l->text);
    free(l->tools);
    free(l->mem_);
    memset(l, 0, sizeof(*l));
}

int ds4_kvcache_load(ds4_kvcache *c, const ds4_kvcache_match *m, ds4_session *s, ds4_kvcache_loaded *out,
                     ds4_error *err) {
    memset(out, 0, sizeof(*out));
    pthread_mutex_lock(&c->mu);
    int rc = -1;
    uint8_t *b = NULL;
    kv_entry *e = find_entry(c, m->name);
    if (!e) {
        ds4_fail(err, "kv cache: %s.kv is gone", m->name);
        goto out;
    }
    ds4_error why = {{0}};
    int vr = read_verified(c, e, &b, &why);
    kv_entry fresh;
    if (vr == -2 && scan_file(c, e->name, &fresh, NULL) == 0) {
        /* Replaced by another writer: index the new file, report a miss. */
        kv_log(c, "%s.kv changed on disk; re-indexed", e->name);
        ds4_fail(err, "kv cache: %s.kv changed on disk", e->name);
        drop_entry(c, e);
        if (add_entry(c, &fresh, NULL) != 0) free(fresh.tokens);
        goto out;
    }
    if (vr != 0) {
        kv_log(c, "%s.kv: %s; deleted", e->name, why.msg);
        c->st.corrupt++;
        ds4_fail(err, "kv cache: %s.kv: %s", e->name, why.msg);
        remove_entry(c, e);
        goto out;
    }
    uint64_t end = body_end(e->text_len, e->n_tokens, e->payload_len);
    if (e->flags & DS4_KV_FLAG_TOOLS) {
        if (parse_tools(b + end, e->size - KV_FOOTER - end, out, &why) != 0) {
            kv_log(c, "%s.kv: %s; deleted", e->name, why.msg);
            c->st.corrupt++;
            ds4_fail(err, "kv cache: %s.kv: %s", e->name, why.msg);
            remove_entry(c, e);
            goto out;
        }
    }
    const uint8_t *payload = b + end - e->payload_len;
    if (ds4_session_restore(s, payload, e->payload_len, err) != 0) {
        kv_log(c, "%s.kv: restore failed: %s", e->name, err ? err->msg : "?");
        c->st.failures++;
        ds4_fail_wrap(err, "kv cache: %s.kv", e->name);
        rc = -2;
        goto out;
    }
    out->tokens = malloc(4ull * e->n_tokens);
    out->text = malloc(e->text_len + 1);
    if (!out->tokens || !out->text) {
        ds4_fail(err, "out of memory");
        goto out;
    }
    for (uint32_t i = 0; i < e->n_tokens; i++) out->tokens[i] = (int32_t)get32(b + KV_HDR + 4 + e->text_len + 4ull * i);
    memcpy(out->text, b + KV_HDR + 4, e->text_len);
    out->text[e->text_len] = '\0';
    out->n_tokens = e->n_tokens;
    out->text_len = e->text_len;
    out->reason = (enum ds4_kv_reason)e->reason;
    out->flags = e->flags;
    /* Count the hit in the index and in the file's mutable fields. */
    e->hits++;
    e->last_used = kv_now(c);
    char path[PATH_MAX];
    entry_path(c, e->name, path, sizeof(path));
    int fd = open(path, O_WRONLY | O_CLOEXEC);
    if (fd >= 0) {
        uint8_t f[8];
        put32(f, e->hits);
        if (pwrite(fd, f, 4, KV_OFF_HITS) != 4) kv_log(c, "%s.kv: cannot update hits", e->name);
        put64(f, e->last_used);
        if (pwrite(fd, f, 8, KV_OFF_USED) != 8) kv_log(c, "%s.kv: cannot update last use", e->name);
        close(fd);
    }
    kv_log(c, "load %s.kv: %u tokens (%u hits)", e->name, e->n_tokens, e->hits);
    c->st.loads++;
    rc = 0;
out:
    free(b);
    if (rc != 0) ds4_kvcache_loaded_free(out);
    pthread_mutex_unlock(&c->mu);
    return rc;
}

int ds4_kvcache_verify(ds4_kvcache *c, const char *name, ds4_error *err) {
    pthread_mutex_lock(&c->mu);
    const kv_entry *e = find_entry(c, name);
    uint8_t *b = NULL;
    int rc = e ? read_verified(c, e, &b, err) : ds4_fail(err, "%s.kv is not in the index", name);
    free(b);
    if (rc != 0) rc = -1;
    pthread_mutex_unlock(&c->mu);
    return rc;
}

int ds4_kvcache_find_tool(ds4_kvcache *c, const char *id, size_t id_len, char **dsml, size_t *dsml_len) {
    pthread_mutex_lock(&c->mu);
    int found = 0;
    for (size_t i = 0; i < c->n && !found; i++) {
        const kv_entry *e = &c->e[i];
        if (e->foreign || !(e->flags & DS4_KV_FLAG_TOOLS)) continue;
        uint64_t end = body_end(e->text_len, e->n_tokens, e->payload_len), len = e->size - KV_FOOTER - end;
        char path[PATH_MAX];
        entry_path(c, e->name, path, sizeof(path));
        int fd = open(path, O_RDONLY | O_CLOEXEC);
        if (fd < 0) continue;
        uint8_t *b = malloc(len ? len : 1);
        ds4_kvcache_loaded l = {0};
        if (b && read_at(fd, b, len, end) == 0 && parse_tools(b, len, &l, NULL) == 0) {
            for (size_t k = 0; k < l.n_tools && !found; k++) {
                if (l.tools[k].id_len != id_len || memcmp(l.tools[k].id, id, id_len) != 0) continue;
                *dsml = malloc(l.tools[k].dsml_len + 1);
                if (!*dsml) break;
                memcpy(*dsml, l.tools[k].dsml, l.tools[k].dsml_len);
                (*dsml)[l.tools[k].dsml_len] = '\0';
                *dsml_len = l.tools[k].dsml_len;
                found = 1;
            }
        }
        ds4_kvcache_loaded_free(&l);
        free(b);
        close(fd);
    }
    pthread_mutex_unlock(&c->mu);
    return found;
}

/* ------------------------------------------------------------------------ */
/* Policy and inspection                                                    */
/* ------------------------------------------------------------------------ */

uint32_t ds4_kvcache_cold_point(const ds4_kvcache *c, const int32_t *tokens, uint32_t n, int32_t tok_user,
                                int32_t tok_assistant) {
    const ds4_kvcache_opts *o = &c->o;
    if (o->cold_max_tokens == 0 || n < o->min_tokens || n > o->cold_max_tokens || n == 0) return 0;
    uint32_t first_asst = n, anchor = 0;
    for (uint32_t i = 0; i < n; i++)
        if (tokens[i] == tok_assistant) {
            first_asst = i;
            break;
        }
    for (uint32_t i = 0; i < first_asst; i++)
        if (tokens[i] == tok_user) anchor = i;
    if (anchor > 0 && anchor >= o->min_tokens) return anchor;
    uint32_t p = n > o->boundary_trim ? n - o->boundary_trim : 0;
    if (o->boundary_align) p -= p % o->boundary_align;
    return p > 0 && p >= o->min_tokens ? p : 0;
}

uint32_t ds4_kvcache_next_continued(const ds4_kvcache *c, uint32_t pos) {
    uint64_t iv = c->o.continued_interval;
    if (iv == 0) return 0;
    uint64_t next = ((uint64_t)pos / iv + 1) * iv;
    return next > UINT32_MAX ? 0 : (uint32_t)next;
}

void ds4_kvcache_get_stats(ds4_kvcache *c, ds4_kvcache_stats *st) {
    pthread_mutex_lock(&c->mu);
    *st = c->st;
    st->entries = (uint32_t)c->n;
    st->bytes = c->bytes;
    st->budget = c->budget;
    pthread_mutex_unlock(&c->mu);
}

bool ds4_kvcache_has(ds4_kvcache *c, const char *name, uint32_t *n_tokens, uint32_t *hits) {
    pthread_mutex_lock(&c->mu);
    const kv_entry *e = find_entry(c, name);
    if (e && n_tokens) *n_tokens = e->n_tokens;
    if (e && hits) *hits = e->hits;
    pthread_mutex_unlock(&c->mu);
    return e != NULL;
}
