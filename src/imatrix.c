/* imatrix.c - the routed-expert importance matrix: allocation, the file
 * format of imatrix.h (writer and strict reader), and the lookups the
 * quantizers use.
 *
 * Design: the in-memory form is three flat arrays indexed
 * [layer][expert](column), so a lookup is one multiplication; the file
 * interleaves them per (layer, expert) as the format says.  The writer
 * streams into a FILE with an incremental XXH64 so even a Flash-sized file
 * (~270 MB) is never held twice; the reader checks the header against the
 * file size before allocating anything, then validates every record.
 * Nothing here knows about devices; collection is calib.c's.
 */
#include "imatrix.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <xxhash.h>

#include "model.h"

#define MAX_EXPERTS 65536u
#define MAX_COLS (1u << 20)

/* ------------------------------------------------------------ helpers */

static void put_u32(uint8_t *p, uint32_t v) {
    for (int i = 0; i < 4; i++) p[i] = (uint8_t)(v >> (8 * i));
}

static void put_u64(uint8_t *p, uint64_t v) {
    for (int i = 0; i < 8; i++) p[i] = (uint8_t)(v >> (8 * i));
}

static uint32_t get_u32(const uint8_t *p) {
    uint32_t v = 0;
    for (int i = 0; i < 4; i++) v |= (uint32_t)p[i] << (8 * i);
    return v;
}

static uint64_t get_u64(const uint8_t *p) {
    uint64_t v = 0;
    for (int i = 0; i < 8; i++) v |= (uint64_t)p[i] << (8 * i);
    return v;
}

/* The six shape words as stored at offsets 12..35 (plus the reserved 0). */
static void dims_words(const ds4_imatrix_dims *d, uint8_t out[24]) {
    put_u32(out + 0, d->n_layer);
    put_u32(out + 4, d->n_expert);
    put_u32(out + 8, d->n_embd);
    put_u32(out + 12, d->n_ff);
    put_u32(out + 16, d->n_vocab);
    put_u32(out + 20, d->n_expert_used);
}

uint64_t ds4_imatrix_fingerprint(const ds4_imatrix_dims *d) {
    uint8_t w[24];
    dims_words(d, w);
    return XXH64(w, sizeof(w), 0);
}

int ds4_imatrix_dims_check(const ds4_imatrix_dims *d, ds4_error *err) {
    if (d->n_layer == 0 || d->n_layer > DS4_MAX_LAYERS)
        return ds4_fail(err, "imatrix: %u layers (1..%u)", d->n_layer, DS4_MAX_LAYERS);
    if (d->n_expert == 0 || d->n_expert > MAX_EXPERTS)
        return ds4_fail(err, "imatrix: %u experts (1..%u)", d->n_expert, MAX_EXPERTS);
    if (d->n_embd == 0 || d->n_embd > MAX_COLS || d->n_ff == 0 || d->n_ff > MAX_COLS)
        return ds4_fail(err, "imatrix: column counts %u / %u (1..%u)", d->n_embd, d->n_ff, MAX_COLS);
    if (d->n_expert_used == 0 || d->n_expert_used > d->n_expert)
        return ds4_fail(err, "imatrix: %u experts used of %u", d->n_expert_used, d->n_expert);
    return 0;
}

/* Bytes of one (layer, expert) record. */
static uint64_t record_bytes(const ds4_imatrix_dims *d) {
    return 8 + 4 + 4 * (uint64_t)d->n_embd + 4 + 4 * (uint64_t)d->n_ff;
}

uint64_t ds4_imatrix_file_bytes(const ds4_imatrix_dims *d) {
    return DS4_IMATRIX_HEADER_BYTES + (uint64_t)d->n_layer * d->n_expert * record_bytes(d) + 8;
}

/* ------------------------------------------------------------ memory */

int ds4_imatrix_init(ds4_imatrix *m, const ds4_imatrix_dims *d, ds4_error *err) {
    memset(m, 0, sizeof(*m));
    if (ds4_imatrix_dims_check(d, err) != 0) return -1;
    uint64_t le = (uint64_t)d->n_layer * d->n_expert;
    m->dims = *d;
    m->fingerprint = ds4_imatrix_fingerprint(d);
    m->count = calloc(le, sizeof(uint64_t));
    m->gate_up = calloc(le * d->n_embd, sizeof(float));
    m->down = calloc(le * d->n_ff, sizeof(float));
    if (!m->count || !m->gate_up || !m->down) {
        ds4_imatrix_free(m);
        return ds4_fail(err, "imatrix: out of memory for %u layers x %u experts", d->n_layer, d->n_expert);
    }
    return 0;
}

void ds4_imatrix_free(ds4_imatrix *m) {
    free(m->count);
    free(m->gate_up);
    free(m->down);
    memset(m, 0, sizeof(*m));
}

/* ------------------------------------------------------------ writer */

/* A byte sink: a FILE or a memory buffer, hashed as it goes. */
typedef struct sink {
    FILE *fp;
    uint8_t *mem;
    uint64_t pos;
    XXH64_state_t *h;
    bool failed;
} sink;

static void sink_put(sink *s, const void *p, uint64_t n) {
    if (s->failed || n == 0) return;
    if (XXH64_update(s->h, p, (size_t)n) != XXH_OK) s->failed = true;
    if (s->fp) {
        if (fwrite(p, 1, (size_t)n, s->fp) != n) s->failed = true;
    } else {
        memcpy(s->mem + s->pos, p, (size_t)n);
    }
    s->pos += n;
}

static void header_bytes(const ds4_imatrix *m, uint8_t h[DS4_IMATRIX_HEADER_BYTES]) {
    memset(h, 0, DS4_IMATRIX_HEADER_BYTES);
    memcpy(h, DS4_IMATRIX_MAGIC, 8);
    put_u32(h + 8, DS4_IMATRIX_VERSION);
    dims_words(&m->dims, h + 12);
    put_u64(h + 40, ds4_imatrix_fingerprint(&m->dims));
    put_u64(h + 48, m->n_tokens);
    put_u64(h + 56, m->tokens_hash);
    size_t nl = strnlen(m->name, DS4_IMATRIX_NAME_BYTES - 1);
    memcpy(h + 64, m->name, nl);
}

/* Floats as little-endian bytes, in pieces (the host may be any endian). */
static void sink_floats(sink *s, const float *v, uint32_t n) {
    uint8_t buf[4096];
    for (uint32_t i = 0; i < n;) {
        uint32_t k = 0;
        for (; k < sizeof(buf) / 4 && i < n; k++, i++) {
            uint32_t u;
            memcpy(&u, &v[i], 4);
            put_u32(buf + 4 * k, u);
        }
        sink_put(s, buf, 4 * (uint64_t)k);
    }
}

static int write_all(const ds4_imatrix *m, sink *s, ds4_error *err) {
    const ds4_imatrix_dims *d = &m->dims;
    if (!m->count) return ds4_fail(err, "imatrix: nothing to write");
    if (ds4_imatrix_dims_check(d, err) != 0) return -1;
    s->h = XXH64_createState();
    if (!s->h || XXH64_reset(s->h, 0) != XXH_OK) {
        XXH64_freeState(s->h);
        return ds4_fail(err, "imatrix: out of memory");
    }
    uint8_t hdr[DS4_IMATRIX_HEADER_BYTES];
    header_bytes(m, hdr);
    sink_put(s, hdr, sizeof(hdr));
    for (uint64_t le = 0; le < (uint64_t)d->n_layer * d->n_expert; le++) {
        uint8_t b[8];
        put_u64(b, m->count[le]);
        sink_put(s, b, 8);
        put_u32(b, d->n_embd);
        sink_put(s, b, 4);
        sink_floats(s, m->gate_up + le * d->n_embd, d->n_embd);
        put_u32(b, d->n_ff);
        sink_put(s, b, 4);
        sink_floats(s, m->down + le * d->n_ff, d->n_ff);
    }
    uint8_t tail[8];
    put_u64(tail, XXH64_digest(s->h));
    XXH64_freeState(s->h);
    s->h = NULL;
    if (!s->failed) {
        if (s->fp) s->failed = fwrite(tail, 1, 8, s->fp) != 8;
        else memcpy(s->mem + s->pos, tail, 8);
        s->pos += 8;
    }
    return s->failed ? ds4_fail(err, "imatrix: write failed: %s", strerror(errno)) : 0;
}

int ds4_imatrix_to_memory(const ds4_imatrix *m, uint8_t **out, uint64_t *size, ds4_error *err) {
    *out = NULL;
    *size = 0;
    uint64_t n = ds4_imatrix_file_bytes(&m->dims);
    sink s = {0};
    s.mem = malloc((size_t)n);
    if (!s.mem) return ds4_fail(err, "imatrix: out of memory (%llu bytes)", (unsigned long long)n);
    if (write_all(m, &s, err) != 0) {
        free(s.mem);
        return -1;
    }
    *out = s.mem;
    *size = s.pos;
    return 0;
}

int ds4_imatrix_save(const ds4_imatrix *m, const char *path, ds4_error *err) {
    size_t pl = strlen(path);
    char *tmp = malloc(pl + 5);
    if (!tmp) return ds4_fail(err, "out of memory");
    memcpy(tmp, path, pl);
    memcpy(tmp + pl, ".tmp", 5);
    sink s = {0};
    s.fp = fopen(tmp, "wb");
    if (!s.fp) {
        ds4_fail(err, "%s: %s", tmp, strerror(errno));
        free(tmp);
        return -1;
    }
    int rc = write_all(m, &s, err);
    if (fclose(s.fp) != 0 && rc == 0) rc = ds4_fail(err, "%s: %s", tmp, strerror(errno));
    if (rc == 0 && rename(tmp, path) != 0) rc = ds4_fail(err, "rename %s: %s", path, strerror(errno));
    if (rc != 0) {
        remove(tmp);
        ds4_fail_wrap(err, "%s", path);
    }
    free(tmp);
    return rc;
}

/* ------------------------------------------------------------ reader */

/* Validate and copy one column array of a record; returns the new offset
 * or 0 on error. */
static uint64_t read_values(const uint8_t *b, uint64_t off, uint32_t want, float *dst, uint64_t count,
                            const char *what, uint32_t il, uint32_t e, ds4_error *err) {
    uint32_t n = get_u32(b + off);
    off += 4;
    if (n != want) {
        ds4_fail(err, "imatrix: layer %u expert %u: %s has %u columns, header says %u", il, e, what, n, want);
        return 0;
    }
    for (uint32_t c = 0; c < n; c++, off += 4) {
        uint32_t u = get_u32(b + off);
        float v;
        memcpy(&v, &u, 4);
        if (!isfinite(v) || v < 0.0f || (count == 0 && v != 0.0f)) {
            ds4_fail(err, "imatrix: layer %u expert %u: %s column %u is %g%s", il, e, what, c, (double)v,
                     count == 0 ? " with a zero count" : "");
            return 0;
        }
        dst[c] = v;
    }
    return off;
}

int ds4_imatrix_parse(ds4_imatrix *m, const void *buf, uint64_t size, ds4_error *err) {
    memset(m, 0, sizeof(*m));
    const uint8_t *b = buf;
    if (size < DS4_IMATRIX_HEADER_BYTES + 8) return ds4_fail(err, "imatrix: file of %llu bytes is too short",
                                                             (unsigned long long)size);
    if (memcmp(b, DS4_IMATRIX_MAGIC, 8) != 0) return ds4_fail(err, "imatrix: bad magic (not a ds4cl imatrix)");
    uint32_t version = get_u32(b + 8);
    if (version != DS4_IMATRIX_VERSION)
        return ds4_fail(err, "imatrix: version %u (this build reads %u)", version, DS4_IMATRIX_VERSION);
    ds4_imatrix_dims d = {get_u32(b + 12), get_u32(b + 16), get_u32(b + 20),
                          get_u32(b + 24), get_u32(b + 28), get_u32(b + 32)};
    if (ds4_imatrix_dims_check(&d, err) != 0) return -1;
    if (get_u32(b + 36) != 0) return ds4_fail(err, "imatrix: reserved header field is not 0");
    if (get_u64(b + 40) != ds4_imatrix_fingerprint(&d))
        return ds4_fail(err, "imatrix: fingerprint does not match the stored shape");
    uint64_t want = ds4_imatrix_file_bytes(&d);
    if (size != want)
        return ds4_fail(err, "imatrix: %llu bytes, the header's shape needs %llu (truncated or corrupt)",
                        (unsigned long long)size, (unsigned long long)want);
    if (XXH64(b, (size_t)(size - 8), 0) != get_u64(b + size - 8))
        return ds4_fail(err, "imatrix: checksum mismatch (corrupt file)");
    if (memchr(b + 64, 0, DS4_IMATRIX_NAME_BYTES) == NULL)
        return ds4_fail(err, "imatrix: model name is not NUL-terminated");
    if (ds4_imatrix_init(m, &d, err) != 0) return -1;
    m->n_tokens = get_u64(b + 48);
    m->tokens_hash = get_u64(b + 56);
    memcpy(m->name, b + 64, DS4_IMATRIX_NAME_BYTES);
    uint64_t off = DS4_IMATRIX_HEADER_BYTES;
    for (uint32_t il = 0; il < d.n_layer; il++) {
        for (uint32_t e = 0; e < d.n_expert; e++) {
            uint64_t le = (uint64_t)il * d.n_expert + e;
            m->count[le] = get_u64(b + off);
            off += 8;
            off = read_values(b, off, d.n_embd, m->gate_up + le * d.n_embd, m->count[le], "gate/up input", il, e,
                              err);
            if (off) off = read_values(b, off, d.n_ff, m->down + le * d.n_ff, m->count[le], "down input", il, e, err);
            if (!off) {
                ds4_imatrix_free(m);
                return -1;
            }
        }
    }
    return 0;
}

int ds4_imatrix_load(ds4_imatrix *m, const char *path, ds4_error *err) {
    memset(m, 0, sizeof(*m));
    FILE *fp = fopen(path, "rb");
    if (!fp) return ds4_fail(err, "%s: %s", path, strerror(errno));
    uint8_t hdr[DS4_IMATRIX_HEADER_BYTES];
    uint8_t *buf = NULL;
    long size = -1;
    if (fseek(fp, 0, SEEK_END) == 0) size = ftell(fp);
    int rc = 0;
    if (size < 0 || fseek(fp, 0, SEEK_SET) != 0) rc = ds4_fail(err, "cannot seek: %s", strerror(errno));
    /* The header bounds the read: a file whose size is not what its shape
     * says is rejected before the body is allocated. */
    if (rc == 0 && (size < (long)sizeof(hdr) || fread(hdr, 1, sizeof(hdr), fp) != sizeof(hdr)))
        rc = ds4_fail(err, "imatrix: file of %ld bytes is too short", size);
    if (rc == 0 && memcmp(hdr, DS4_IMATRIX_MAGIC, 8) != 0)
        rc = ds4_fail(err, "imatrix: bad magic (not a ds4cl imatrix)");
    if (rc == 0) {
        ds4_imatrix_dims d = {get_u32(hdr + 12), get_u32(hdr + 16), get_u32(hdr + 20),
                              get_u32(hdr + 24), get_u32(hdr + 28), get_u32(hdr + 32)};
        if (ds4_imatrix_dims_check(&d, err) != 0) rc = -1;
        else if ((uint64_t)size != ds4_imatrix_file_bytes(&d))
            rc = ds4_fail(err, "imatrix: %ld bytes, the header's shape needs %llu (truncated or corrupt)", size,
                          (unsigned long long)ds4_imatrix_file_bytes(&d));
    }
    if (rc == 0 && (buf = malloc((size_t)size)) == NULL)
        rc = ds4_fail(err, "out of memory (%ld bytes)", size);
    if (rc == 0) {
        memcpy(buf, hdr, sizeof(hdr));
        if (fread(buf + sizeof(hdr), 1, (size_t)size - sizeof(hdr), fp) != (size_t)size - sizeof(hdr))
            rc = ds4_fail(err, "read failed");
    }
    fclose(fp);
    if (rc == 0) rc = ds4_imatrix_parse(m, buf, (uint64_t)size, err);
    free(buf);
    return rc == 0 ? 0 : ds4_fail_wrap(err, "%s", path);
}

int ds4_imatrix_check_dims(const ds4_imatrix *m, const ds4_imatrix_dims *d, ds4_error *err) {
    const ds4_imatrix_dims *h = &m->dims;
    const char *what = h->n_layer != d->n_layer     ? "layers"
                       : h->n_expert != d->n_expert ? "experts"
                       : h->n_embd != d->n_embd     ? "embedding width"
                       : h->n_ff != d->n_ff         ? "expert width"
                       : h->n_vocab != d->n_vocab   ? "vocabulary"
                       : h->n_expert_used != d->n_expert_used ? "experts used per token"
                                                              : NULL;
    if (!what) return 0;
    return ds4_fail(err, "imatrix was collected on another model (%s differ: imatrix %u/%u/%u/%u/%u/%u, model "
                    "%u/%u/%u/%u/%u/%u as layers/experts/embd/ff/vocab/used)", what, h->n_layer, h->n_expert,
                    h->n_embd, h->n_ff, h->n_vocab, h->n_expert_used, d->n_layer, d->n_expert, d->n_embd, d->n_ff,
                    d->n_vocab, d->n_expert_used);
}

int ds4_imatrix_load_for(ds4_imatrix *m, const char *path, const ds4_imatrix_dims *d, ds4_error *err) {
    if (ds4_imatrix_load(m, path, err) != 0) return -1;
    if (ds4_imatrix_check_dims(m, d, err) != 0) {
        ds4_imatrix_free(m);
        return ds4_fail_wrap(err, "%s", path);
    }
    return 0;
}

void ds4_imatrix_put_meta(gguf_writer *w, const ds4_imatrix *m, const char *path) {
    const ds4_imatrix_dims *d = &m->dims;
    const uint64_t le = (uint64_t)d->n_layer * d->n_expert;
    uint64_t entries = 0;
    for (uint64_t i = 0; i < le; i++) entries += m->count[i] != 0;
    /* Chained one-shot hashes: no state to allocate. */
    uint64_t hash = XXH64(m->down, (size_t)(le * d->n_ff * sizeof(float)), 0);
    hash = XXH64(m->gate_up, (size_t)(le * d->n_embd * sizeof(float)), hash);
    hash = XXH64(m->count, (size_t)(le * sizeof(uint64_t)), hash);
    const char *base = strrchr(path, '/');
    gguf_w_str(w, "quantize.imatrix.file", base ? base + 1 : path);
    gguf_w_u64(w, "quantize.imatrix.n_tokens", m->n_tokens);
    gguf_w_u64(w, "quantize.imatrix.tokens_hash", m->tokens_hash);
    gguf_w_u64(w, "quantize.imatrix.hash", hash);
    gguf_w_u64(w, "quantize.imatrix.entries_count", entries);
}

/* ------------------------------------------------------------ lookups */

const float *ds4_imatrix_values(const ds4_imatrix *m, uint32_t layer, int input, uint32_t expert,
                                uint32_t *n_cols) {
    if (!m || !m->count || layer >= m->dims.n_layer || expert >= m->dims.n_expert) return NULL;
    if (input != DS4_IMX_GATE_UP && input != DS4_IMX_DOWN) return NULL;
    uint64_t le = (uint64_t)layer * m->dims.n_expert + expert;
    if (m->count[le] == 0) return NULL;
    uint32_t n = input == DS4_IMX_GATE_UP ? m->dims.n_embd : m->dims.n_ff;
    if (n_cols) *n_cols = n;
    return (input == DS4_IMX_GATE_UP ? m->gate_up : m->down) + le * n;
}

bool ds4_imatrix_tensor_input(const char *name, uint32_t *layer, int *input) {
    if (strncmp(name, "blk.", 4) != 0) return false;
    const char *p = name + 4;
    uint32_t il = 0;
    int digits = 0;
    for (; *p >= '0' && *p <= '9' && digits < 4; p++, digits++) il = il * 10 + (uint32_t)(*p - '0');
    if (digits == 0 || *p != '.' || (digits > 1 && name[4] == '0')) return false;
    p++;
    static const struct {
        const char *s;
        int input;
    } k[] = {{"ffn_gate_exps", DS4_IMX_GATE_UP}, {"ffn_up_exps", DS4_IMX_GATE_UP}, {"ffn_down_exps", DS4_IMX_DOWN}};
    for (size_t i = 0; i < sizeof(k) / sizeof(k[0]); i++) {
        size_t n = strlen(k[i].s);
        if (strncmp(p, k[i].s, n) == 0 && (p[n] == '\0' || strcmp(p + n, ".weight") == 0)) {
            *layer = il;
            *input = k[i].input;
            return true;
        }
    }
    return false;
}

const float *ds4_imatrix_lookup(const ds4_imatrix *m, const char *tensor_name, uint64_t row, uint64_t ncols) {
    uint32_t il;
    int input;
    if (!m || !m->count || !ds4_imatrix_tensor_input(tensor_name, &il, &input)) return NULL;
    /* gate/up: rows of one expert = n_ff, columns n_embd; down: the reverse. */
    uint64_t rows_per = input == DS4_IMX_GATE_UP ? m->dims.n_ff : m->dims.n_embd;
    uint64_t cols = input == DS4_IMX_GATE_UP ? m->dims.n_embd : m->dims.n_ff;
    if (ncols != cols || row / rows_per > UINT32_MAX) return NULL;
    return ds4_imatrix_values(m, il, input, (uint32_t)(row / rows_per), NULL);
}

int ds4_imatrix_importance(const ds4_imatrix *m, uint32_t layer, int input, uint32_t expert, const float *w,
                           uint64_t rows, uint64_t cols, float *out, ds4_error *err) {
    uint32_t n = 0;
    const float *v = ds4_imatrix_values(m, layer, input, expert, &n);
    if (v) {
        if (cols != n)
            return ds4_fail(err, "imatrix: layer %u expert %u: matrix has %llu columns, imatrix %u", layer, expert,
                            (unsigned long long)cols, n);
        memcpy(out, v, (size_t)cols * sizeof(float));
        return 1;
    }
    if (!w || rows == 0) return ds4_fail(err, "imatrix: no values for layer %u expert %u and no weights", layer, expert);
    for (uint64_t c = 0; c < cols; c++) {
        double s = 0;
        for (uint64_t r = 0; r < rows; r++) {
            double x = w[r * cols + c];
            s += x * x;
        }
        out[c] = (float)(s / (double)rows);
    }
    return 0;
}
