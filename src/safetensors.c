/* safetensors.c - the safetensors reader (see safetensors.h).
 *
 * File layout: u64 little-endian N, then N bytes of JSON (an object, maybe
 * padded with spaces), then the data section; every tensor's data_offsets
 * [begin, end) are relative to the data section.
 *
 * Design: each shard is mapped whole and its header parsed with cJSON; the
 * entries are validated one by one (dtype, shape, span) and appended to one
 * growing directory; the spans of a shard are then sorted to check they do
 * not overlap, and at the end the whole directory is sorted by name, which
 * both finds duplicate names across shards and gives O(log n) lookups.
 * Numbers in JSON are doubles: shape entries and offsets must be integers
 * in [0, 2^53], far above any real file.  Nothing is read from a mapping
 * before the bounds that cover it have been checked.
 *
 * Block-scaled reads (st_scaled): st_scaled_init checks the pairing once
 * (code dtype, 2-D weight, scale dtype and its exact [ceil(rows/br),
 * ceil(cols/bc)] shape), so the read loop only walks runs of one block's
 * columns: one scale lookup per run, a 256- or 16-entry table per code.
 * E4M3 and E2M1 values have at most 4 significant bits and E8M0 scales are
 * powers of two, so each product is exact in f32 (subnormals included)
 * unless it overflows; non-finite results are reported, never returned.
 * st_release is madvise(MADV_DONTNEED) on the private read-only mapping
 * (the pages go, the bytes stay in the file), over the range plus a slack
 * for what the kernel maps around a fault (see ST_RELEASE_SLACK).
 */
#include "safetensors.h"

#include <cjson/cJSON.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <math.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "quant.h"

#define ST_MAX_INDEX (64u * 1024u * 1024u) /* bytes of model.safetensors.index.json */
#define ST_MAX_INT 9007199254740992.0      /* 2^53: integers a double holds exactly */

static const struct {
    const char *name;
    uint32_t bits;
} k_dtypes[ST_DTYPE_COUNT] = {
    [ST_BOOL] = {"BOOL", 8},       [ST_U8] = {"U8", 8},         [ST_I8] = {"I8", 8},
    [ST_U16] = {"U16", 16},        [ST_I16] = {"I16", 16},      [ST_U32] = {"U32", 32},
    [ST_I32] = {"I32", 32},        [ST_U64] = {"U64", 64},      [ST_I64] = {"I64", 64},
    [ST_F16] = {"F16", 16},        [ST_BF16] = {"BF16", 16},    [ST_F32] = {"F32", 32},
    [ST_F64] = {"F64", 64},        [ST_C64] = {"C64", 64},      [ST_F8_E4M3] = {"F8_E4M3", 8},
    [ST_F8_E5M2] = {"F8_E5M2", 8}, [ST_F8_E8M0] = {"F8_E8M0", 8}, [ST_F6_E2M3] = {"F6_E2M3", 6},
    [ST_F6_E3M2] = {"F6_E3M2", 6}, [ST_F4] = {"F4", 4},
};

const char *st_dtype_name(uint32_t dtype) {
    return dtype < ST_DTYPE_COUNT ? k_dtypes[dtype].name : "?";
}

uint32_t st_dtype_bits(uint32_t dtype) {
    return dtype < ST_DTYPE_COUNT ? k_dtypes[dtype].bits : 0;
}

static int dtype_from_name(const char *s) {
    for (int i = 0; i < ST_DTYPE_COUNT; i++)
        if (strcmp(s, k_dtypes[i].name) == 0) return i;
    return -1;
}

static const char *base_name(const char *path) {
    const char *b = strrchr(path, '/');
    return b ? b + 1 : path;
}

const char *st_path(const st_set *s, const st_tensor *t) {
    return t->shard < s->n_shards ? s->shards[t->shard].path : "?";
}

/* ---------------------------------------------------------------------- */
/* Directory growth and lookup                                            */
/* ---------------------------------------------------------------------- */

static int push_tensor(st_set *s, uint64_t *cap, const st_tensor *t, ds4_error *err) {
    if (s->n_tensors == *cap) {
        uint64_t nc = *cap ? *cap * 2 : 256;
        st_tensor *p = realloc(s->tensors, nc * sizeof(*p));
        if (!p) return ds4_fail(err, "out of memory for the tensor directory");
        s->tensors = p;
        *cap = nc;
    }
    s->tensors[s->n_tensors++] = *t;
    return 0;
}

static int cmp_name(const void *a, const void *b) {
    return strcmp(((const st_tensor *)a)->name, ((const st_tensor *)b)->name);
}

const st_tensor *st_find(const st_set *s, const char *name) {
    uint64_t lo = 0, hi = s->n_tensors;
    while (lo < hi) {
        uint64_t mid = lo + (hi - lo) / 2;
        int c = strcmp(s->tensors[mid].name, name);
        if (c == 0) return &s->tensors[mid];
        if (c < 0) lo = mid + 1;
        else hi = mid;
    }
    return NULL;
}

void st_close(st_set *s) {
    if (!s) return;
    for (uint64_t i = 0; i < s->n_tensors; i++) free((char *)s->tensors[i].name);
    for (uint32_t i = 0; i < s->n_shards; i++) {
        if (s->shards[i].base) munmap((void *)s->shards[i].base, s->shards[i].size);
        free(s->shards[i].path);
    }
    free(s->tensors);
    free(s->shards);
    memset(s, 0, sizeof(*s));
}

/* ---------------------------------------------------------------------- */
/* Header parsing                                                          */
/* ---------------------------------------------------------------------- */

/* A JSON number that is an integer in [0, 2^53]. */
static bool json_uint(const cJSON *j, uint64_t *out) {
    if (!cJSON_IsNumber(j)) return false;
    double v = j->valuedouble;
    if (!(v >= 0.0) || v > ST_MAX_INT || v != floor(v)) return false;
    *out = (uint64_t)v;
    return true;
}

/* dtype, shape and element count of one entry. */
static int parse_shape(const char *file, const char *name, const cJSON *ent, st_tensor *t,
                       ds4_error *err) {
    const cJSON *dt = cJSON_GetObjectItemCaseSensitive(ent, "dtype");
    if (!cJSON_IsString(dt))
        return ds4_fail(err, "%s: tensor '%s': missing or non-string \"dtype\"", file, name);
    int d = dtype_from_name(dt->valuestring);
    if (d < 0)
        return ds4_fail(err, "%s: tensor '%s': unknown dtype '%s'", file, name, dt->valuestring);
    t->dtype = (uint32_t)d;

    const cJSON *sh = cJSON_GetObjectItemCaseSensitive(ent, "shape");
    if (!cJSON_IsArray(sh))
        return ds4_fail(err, "%s: tensor '%s': missing or non-array \"shape\"", file, name);
    int nd = cJSON_GetArraySize(sh);
    if (nd > ST_MAX_DIMS)
        return ds4_fail(err, "%s: tensor '%s': %d dims, at most %d supported", file, name, nd,
                        ST_MAX_DIMS);
    t->n_dims = (uint32_t)nd;
    t->n_elements = 1;
    for (int i = 0; i < ST_MAX_DIMS; i++) t->shape[i] = 1;
    int i = 0;
    for (const cJSON *e = sh->child; e; e = e->next, i++) {
        uint64_t v;
        if (!json_uint(e, &v))
            return ds4_fail(err, "%s: tensor '%s': shape entry %d is not a non-negative integer",
                            file, name, i);
        if (v != 0 && t->n_elements > UINT64_MAX / 64 / v)
            return ds4_fail(err, "%s: tensor '%s': shape product overflows", file, name);
        t->shape[i] = v;
        t->n_elements *= v;
    }
    return 0;
}

/* One "name": {dtype, shape, data_offsets} entry of a shard whose data
 * section is data_len bytes at data. */
static int parse_entry(const char *file, const cJSON *ent, const uint8_t *data,
                       uint64_t data_len, st_tensor *t, ds4_error *err) {
    const char *name = ent->string;
    if (!name || !name[0]) return ds4_fail(err, "%s: header has a tensor with an empty name", file);
    if (!cJSON_IsObject(ent))
        return ds4_fail(err, "%s: tensor '%s': entry is not a JSON object", file, name);
    for (const cJSON *k = ent->child; k; k = k->next)
        if (strcmp(k->string, "dtype") && strcmp(k->string, "shape") &&
            strcmp(k->string, "data_offsets"))
            return ds4_fail(err, "%s: tensor '%s': unexpected field \"%s\"", file, name,
                            k->string);
    memset(t, 0, sizeof(*t));
    if (parse_shape(file, name, ent, t, err) != 0) return -1;

    const cJSON *off = cJSON_GetObjectItemCaseSensitive(ent, "data_offsets");
    uint64_t b, e;
    if (!cJSON_IsArray(off) || cJSON_GetArraySize(off) != 2 || !json_uint(off->child, &b) ||
        !json_uint(off->child->next, &e))
        return ds4_fail(err, "%s: tensor '%s': \"data_offsets\" is not two non-negative integers",
                        file, name);
    if (b > e || e > data_len)
        return ds4_fail(err, "%s: tensor '%s': data_offsets [%" PRIu64 ", %" PRIu64
                        ") outside the %" PRIu64 "-byte data section", file, name, b, e,
                        data_len);
    uint64_t bits = t->n_elements * st_dtype_bits(t->dtype);
    if (bits % 8 != 0 || bits / 8 != e - b)
        return ds4_fail(err, "%s: tensor '%s': %" PRIu64 " elements of %s need %" PRIu64
                        " bits but data_offsets span %" PRIu64 " bytes", file, name,
                        t->n_elements, st_dtype_name(t->dtype), bits, e - b);
    t->nbytes = e - b;
    t->data = data + b;
    t->name = strdup(name);
    if (!t->name) return ds4_fail(err, "out of memory for tensor names");
    return 0;
}

static int cmp_ptr(const void *a, const void *b) {
    const st_tensor *x = *(const st_tensor *const *)a, *y = *(const st_tensor *const *)b;
    return x->data < y->data ? -1 : x->data > y->data;
}

/* Tensors [first, n) all belong to one shard: no two non-empty spans may
 * overlap (an empty tensor occupies no bytes and overlaps nothing). */
static int check_overlap(st_set *s, uint64_t first, const char *file, ds4_error *err) {
    uint64_t total = s->n_tensors - first, n = 0;
    if (total < 2) return 0;
    const st_tensor **v = malloc(total * sizeof(*v));
    if (!v) return ds4_fail(err, "out of memory checking %s", file);
    for (uint64_t i = 0; i < total; i++)
        if (s->tensors[first + i].nbytes) v[n++] = &s->tensors[first + i];
    if (n > 1) qsort(v, n, sizeof(*v), cmp_ptr);
    int rc = 0;
    for (uint64_t i = 1; i < n && rc == 0; i++)
        if (v[i]->data < v[i - 1]->data + v[i - 1]->nbytes)
            rc = ds4_fail(err, "%s: tensors '%s' and '%s' overlap in the data section", file,
                          v[i - 1]->name, v[i]->name);
    free(v);
    return rc;
}

static int check_metadata(const char *file, const cJSON *m, ds4_error *err) {
    if (!cJSON_IsObject(m)) return ds4_fail(err, "%s: \"__metadata__\" is not an object", file);
    for (const cJSON *k = m->child; k; k = k->next)
        if (!cJSON_IsString(k))
            return ds4_fail(err, "%s: \"__metadata__\" value '%s' is not a string", file,
                            k->string);
    return 0;
}

/* Parse the header of shard `idx` (already mapped) into the directory. */
static int parse_shard(st_set *s, uint32_t idx, uint64_t *cap, ds4_error *err) {
    const st_shard *sh = &s->shards[idx];
    const char *file = sh->path;
    if (sh->size < 8) return ds4_fail(err, "%s: %" PRIu64 " bytes, too small for a safetensors "
                                      "header", file, sh->size);
    uint64_t n = 0;
    for (int i = 7; i >= 0; i--) n = (n << 8) | sh->base[i];
    if (n < 2 || n > ST_MAX_HEADER || n > sh->size - 8)
        return ds4_fail(err, "%s: header length %" PRIu64 " does not fit the %" PRIu64
                        "-byte file (truncated or not safetensors)", file, n, sh->size);
    const char *json = (const char *)sh->base + 8;
    if (json[0] != '{') return ds4_fail(err, "%s: header does not start with '{'", file);
    const char *end = NULL;
    cJSON *root = cJSON_ParseWithLengthOpts(json, (size_t)n, &end, 0);
    if (!root || !cJSON_IsObject(root)) {
        cJSON_Delete(root);
        return ds4_fail(err, "%s: header is not valid JSON", file);
    }
    for (const char *p = end; p && p < json + n; p++)
        if (*p != ' ' && *p != '\t' && *p != '\n' && *p != '\r') {
            cJSON_Delete(root);
            return ds4_fail(err, "%s: garbage after the JSON header", file);
        }
    const uint8_t *data = sh->base + 8 + n;
    uint64_t data_len = sh->size - 8 - n, first = s->n_tensors;
    int rc = 0;
    for (const cJSON *ent = root->child; ent && rc == 0; ent = ent->next) {
        if (ent->string && strcmp(ent->string, "__metadata__") == 0) {
            rc = check_metadata(file, ent, err);
            continue;
        }
        st_tensor t;
        rc = parse_entry(file, ent, data, data_len, &t, err);
        if (rc == 0) {
            t.shard = idx;
            if (push_tensor(s, cap, &t, err) != 0) {
                free((char *)t.name);
                rc = -1;
            }
        }
    }
    cJSON_Delete(root);
    if (rc == 0) rc = check_overlap(s, first, file, err);
    /* Nothing points into the header text (names are copies): its pages
     * need not stay resident (advice only). */
    long ps = sysconf(_SC_PAGESIZE);
    uint64_t page = ps > 0 ? (uint64_t)ps : 4096, hl = (8 + n) / page * page;
    if (rc == 0 && hl) (void)madvise((void *)sh->base, (size_t)hl, MADV_DONTNEED);
    return rc;
}

/* ---------------------------------------------------------------------- */
/* Opening files                                                           */
/* ---------------------------------------------------------------------- */

static int map_file(st_shard *sh, const char *path, ds4_error *err) {
    sh->path = strdup(path);
    if (!sh->path) return ds4_fail(err, "out of memory");
    int fd = open(path, O_RDONLY);
    if (fd < 0) return ds4_fail(err, "%s: cannot open: %s", path, strerror(errno));
    struct stat st;
    if (fstat(fd, &st) != 0) {
        int e = errno;
        close(fd);
        return ds4_fail(err, "%s: cannot stat: %s", path, strerror(e));
    }
    if (!S_ISREG(st.st_mode)) {
        close(fd);
        return ds4_fail(err, "%s: not a regular file", path);
    }
    if (st.st_size < 8) {
        close(fd);
        return ds4_fail(err, "%s: %lld bytes, too small for a safetensors header", path,
                        (long long)st.st_size);
    }
    void *p = mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_PRIVATE, fd, 0);
    int e = errno;
    close(fd);
    if (p == MAP_FAILED) return ds4_fail(err, "%s: cannot map: %s", path, strerror(e));
    sh->base = p;
    sh->size = (uint64_t)st.st_size;
    return 0;
}

/* Sort the directory and reject a name that appears twice. */
static int finish(st_set *s, ds4_error *err) {
    if (s->n_tensors > 1) qsort(s->tensors, s->n_tensors, sizeof(st_tensor), cmp_name);
    for (uint64_t i = 1; i < s->n_tensors; i++)
        if (strcmp(s->tensors[i].name, s->tensors[i - 1].name) == 0)
            return ds4_fail(err, "tensor '%s' appears twice (%s and %s)", s->tensors[i].name,
                            st_path(s, &s->tensors[i - 1]), st_path(s, &s->tensors[i]));
    return 0;
}

int st_open_files(st_set *s, const char *const *paths, uint32_t n, ds4_error *err) {
    memset(s, 0, sizeof(*s));
    if (n == 0) return ds4_fail(err, "no safetensors files given");
    s->shards = calloc(n, sizeof(st_shard));
    if (!s->shards) return ds4_fail(err, "out of memory");
    uint64_t cap = 0;
    for (uint32_t i = 0; i < n; i++) {
        s->n_shards = i + 1;
        if (map_file(&s->shards[i], paths[i], err) != 0 || parse_shard(s, i, &cap, err) != 0) {
            st_close(s);
            return -1;
        }
    }
    if (finish(s, err) != 0) {
        st_close(s);
        return -1;
    }
    return 0;
}

/* ---------------------------------------------------------------------- */
/* Folders: index file or every *.safetensors                              */
/* ---------------------------------------------------------------------- */

typedef struct strlist {
    char **v;
    uint32_t n, cap;
} strlist;

static void strlist_free(strlist *l) {
    for (uint32_t i = 0; i < l->n; i++) free(l->v[i]);
    free(l->v);
    memset(l, 0, sizeof(*l));
}

static int strlist_add(strlist *l, const char *dir, const char *name, ds4_error *err) {
    if (l->n == l->cap) {
        uint32_t nc = l->cap ? l->cap * 2 : 16;
        char **p = realloc(l->v, nc * sizeof(*p));
        if (!p) return ds4_fail(err, "out of memory");
        l->v = p;
        l->cap = nc;
    }
    size_t len = strlen(dir) + strlen(name) + 2;
    char *s = malloc(len);
    if (!s) return ds4_fail(err, "out of memory");
    snprintf(s, len, "%s/%s", dir, name);
    l->v[l->n++] = s;
    return 0;
}

static int cmp_str(const void *a, const void *b) {
    return strcmp(*(char *const *)a, *(char *const *)b);
}

static bool ends_with(const char *s, const char *suf) {
    size_t a = strlen(s), b = strlen(suf);
    return a >= b && strcmp(s + a - b, suf) == 0;
}

/* Read a small text file whole (NUL-terminated). */
static char *slurp(const char *path, uint64_t max, ds4_error *err) {
    FILE *fp = fopen(path, "rb");
    if (!fp) {
        ds4_fail(err, "%s: cannot open: %s", path, strerror(errno));
        return NULL;
    }
    char *buf = NULL;
    long len = -1;
    if (fseek(fp, 0, SEEK_END) == 0) len = ftell(fp);
    if (len < 0 || (uint64_t)len > max || fseek(fp, 0, SEEK_SET) != 0) {
        fclose(fp);
        ds4_fail(err, "%s: unreadable or larger than %" PRIu64 " bytes", path, max);
        return NULL;
    }
    buf = malloc((size_t)len + 1);
    if (!buf || fread(buf, 1, (size_t)len, fp) != (size_t)len) {
        free(buf);
        fclose(fp);
        ds4_fail(err, "%s: read failed", path);
        return NULL;
    }
    buf[len] = '\0';
    fclose(fp);
    return buf;
}

/* The shard files named by the index's weight_map (sorted, unique).  The
 * parsed index is returned in *root so the caller can check the map. */
static int index_files(const char *dir, const char *index, strlist *files, cJSON **root,
                       ds4_error *err) {
    char *text = slurp(index, ST_MAX_INDEX, err);
    if (!text) return -1;
    *root = cJSON_Parse(text);
    free(text);
    const cJSON *map = cJSON_GetObjectItemCaseSensitive(*root, "weight_map");
    if (!*root || !cJSON_IsObject(map))
        return ds4_fail(err, "%s: not JSON with a \"weight_map\" object", index);
    for (const cJSON *e = map->child; e; e = e->next) {
        if (!cJSON_IsString(e) || !e->valuestring[0] || strchr(e->valuestring, '/') ||
            strcmp(e->valuestring, "..") == 0)
            return ds4_fail(err, "%s: weight_map entry '%s' is not a file name in the folder",
                            index, e->string);
        bool seen = false;
        for (uint32_t i = 0; i < files->n && !seen; i++)
            seen = strcmp(base_name(files->v[i]), e->valuestring) == 0;
        if (!seen && strlist_add(files, dir, e->valuestring, err) != 0) return -1;
    }
    if (files->n == 0) return ds4_fail(err, "%s: \"weight_map\" is empty", index);
    qsort(files->v, files->n, sizeof(char *), cmp_str);
    return 0;
}

/* Every tensor of the weight map must be in the file the map names. */
static int check_index(const st_set *s, const char *index, const cJSON *root, ds4_error *err) {
    const cJSON *map = cJSON_GetObjectItemCaseSensitive(root, "weight_map");
    for (const cJSON *e = map->child; e; e = e->next) {
        const st_tensor *t = st_find(s, e->string);
        if (!t || strcmp(base_name(st_path(s, t)), e->valuestring) != 0)
            return ds4_fail(err, "%s: tensor '%s' is listed in %s but not found there", index,
                            e->string, e->valuestring);
    }
    return 0;
}

static int dir_files(const char *dir, strlist *files, ds4_error *err) {
    DIR *d = opendir(dir);
    if (!d) return ds4_fail(err, "%s: cannot open folder: %s", dir, strerror(errno));
    struct dirent *de;
    int rc = 0;
    while (rc == 0 && (de = readdir(d)) != NULL)
        if (de->d_name[0] != '.' && ends_with(de->d_name, ".safetensors"))
            rc = strlist_add(files, dir, de->d_name, err);
    closedir(d);
    if (rc != 0) return -1;
    if (files->n == 0)
        return ds4_fail(err, "%s: no *.safetensors files (and no model.safetensors.index.json)",
                        dir);
    qsort(files->v, files->n, sizeof(char *), cmp_str);
    return 0;
}

int st_open_dir(st_set *s, const char *dir, ds4_error *err) {
    memset(s, 0, sizeof(*s));
    struct stat st;
    if (stat(dir, &st) != 0) return ds4_fail(err, "%s: %s", dir, strerror(errno));
    if (!S_ISDIR(st.st_mode)) return ds4_fail(err, "%s: not a folder", dir);
    size_t len = strlen(dir) + sizeof("/model.safetensors.index.json");
    char *index = malloc(len);
    if (!index) return ds4_fail(err, "out of memory");
    snprintf(index, len, "%s/model.safetensors.index.json", dir);
    strlist files = {0};
    cJSON *root = NULL;
    bool has_index = access(index, F_OK) == 0;
    int rc = has_index ? index_files(dir, index, &files, &root, err) : dir_files(dir, &files, err);
    if (rc == 0) rc = st_open_files(s, (const char *const *)files.v, files.n, err);
    if (rc == 0 && has_index && check_index(s, index, root, err) != 0) {
        st_close(s);
        rc = -1;
    }
    cJSON_Delete(root);
    strlist_free(&files);
    free(index);
    return rc;
}

/* ---------------------------------------------------------------------- */
/* Reading                                                                 */
/* ---------------------------------------------------------------------- */

static int check_range(const st_set *s, const st_tensor *t, uint64_t first, uint64_t count,
                       ds4_error *err) {
    if (first > t->n_elements || count > t->n_elements - first)
        return ds4_fail(err, "%s: tensor '%s': elements [%" PRIu64 ", +%" PRIu64
                        ") outside its %" PRIu64, st_path(s, t), t->name, first, count,
                        t->n_elements);
    return 0;
}

int st_read_f32(const st_set *s, const st_tensor *t, uint64_t first, uint64_t count, float *dst,
                ds4_error *err) {
    if (check_range(s, t, first, count, err) != 0) return -1;
    switch (t->dtype) {
    case ST_F32:
        memcpy(dst, t->data + first * 4, count * 4);
        return 0;
    case ST_F16:
    case ST_BF16:
        for (uint64_t i = 0; i < count; i++) {
            uint16_t h;
            memcpy(&h, t->data + (first + i) * 2, 2);
            dst[i] = t->dtype == ST_F16 ? ds4_f16_to_f32(h) : ds4_bf16_to_f32(h);
        }
        return 0;
    case ST_F64:
        for (uint64_t i = 0; i < count; i++) {
            double v;
            memcpy(&v, t->data + (first + i) * 8, 8);
            dst[i] = (float)v;
        }
        return 0;
    default:
        return ds4_fail(err, "%s: tensor '%s': dtype %s cannot be read as f32", st_path(s, t),
                        t->name, st_dtype_name(t->dtype));
    }
}

int st_read_i64(const st_set *s, const st_tensor *t, uint64_t first, uint64_t count,
                int64_t *dst, ds4_error *err) {
    if (check_range(s, t, first, count, err) != 0) return -1;
    uint32_t bytes = st_dtype_bits(t->dtype) / 8;
    bool is_signed;
    switch (t->dtype) {
    case ST_I8: case ST_I16: case ST_I32: case ST_I64: is_signed = true; break;
    case ST_U8: case ST_U16: case ST_U32: case ST_U64: is_signed = false; break;
    default:
        return ds4_fail(err, "%s: tensor '%s': dtype %s cannot be read as an integer",
                        st_path(s, t), t->name, st_dtype_name(t->dtype));
    }
    for (uint64_t i = 0; i < count; i++) {
        const uint8_t *p = t->data + (first + i) * bytes;
        uint64_t u = 0;
        for (uint32_t b = bytes; b-- > 0;) u = (u << 8) | p[b];
        if (is_signed && bytes < 8 && (u >> (bytes * 8 - 1)) & 1) u |= ~UINT64_C(0) << (bytes * 8);
        if (!is_signed && u > (uint64_t)INT64_MAX)
            return ds4_fail(err, "%s: tensor '%s': element %" PRIu64 " does not fit int64",
                            st_path(s, t), t->name, first + i);
        dst[i] = (int64_t)u;
    }
    return 0;
}

/* ---------------------------------------------------------------------- */
/* Releasing pages                                                         */
/* ---------------------------------------------------------------------- */

/* A read fault maps more than the page it touches: the kernel's fault-around
 * window and whole large folios, all inside the naturally aligned 2 MiB
 * block (of the address or of the file offset) around the fault.  Dropping
 * only the pages a read covered would leave such neighbours mapped, a few
 * tens of KiB per read that add up over a whole checkpoint; so a release
 * reaches ST_RELEASE_SLACK further on both sides.  Pages of other tensors
 * dropped this way are simply faulted in again (from the page cache). */
#define ST_RELEASE_SLACK (UINT64_C(2) << 20)

void st_release(const st_set *s, const st_tensor *t, uint64_t first, uint64_t count) {
    if (count == 0 || t->nbytes == 0 || t->shard >= s->n_shards) return;
    const st_shard *sh = &s->shards[t->shard];
    uint64_t bits = st_dtype_bits(t->dtype);
    uint64_t b0 = first * bits / 8, b1 = ((first + count) * bits + 7) / 8;
    if (b0 >= t->nbytes) return;
    if (b1 > t->nbytes) b1 = t->nbytes;
    uint64_t off = (uint64_t)(t->data - sh->base); /* the tensor's offset in the file */
    uint64_t lo = off + b0 > ST_RELEASE_SLACK ? off + b0 - ST_RELEASE_SLACK : 0;
    uint64_t hi = off + b1 + ST_RELEASE_SLACK;
    long ps = sysconf(_SC_PAGESIZE);
    uint64_t page = ps > 0 ? (uint64_t)ps : 4096;
    uint64_t end = (sh->size + page - 1) / page * page; /* the mapping's length */
    lo = lo / page * page;
    hi = hi > end ? end : (hi + page - 1) / page * page;
    /* Advice only: a failure leaves the pages mapped, which is harmless. */
    if (lo < hi) (void)madvise((void *)(sh->base + lo), (size_t)(hi - lo), MADV_DONTNEED);
}

/* ---------------------------------------------------------------------- */
/* Block-scaled matrices                                                   */
/* ---------------------------------------------------------------------- */

int st_scaled_code(uint32_t weight_dtype) {
    switch (weight_dtype) {
    case ST_F8_E4M3: return ST_CODE_E4M3;
    case ST_I8: case ST_U8: case ST_F4: return ST_CODE_E2M1;
    default: return -1;
    }
}

int st_scaled_dims(const st_tensor *w, uint64_t *rows, uint64_t *cols) {
    if (st_scaled_code(w->dtype) < 0 || w->n_dims != 2) return -1;
    bool packed = w->dtype == ST_I8 || w->dtype == ST_U8;
    *rows = w->shape[0];
    *cols = w->shape[1] * (packed ? 2 : 1);
    return 0;
}

static bool scale_dtype_ok(uint32_t d) {
    return d == ST_F8_E8M0 || d == ST_U8 || d == ST_F32 || d == ST_BF16 || d == ST_F16;
}

int st_scaled_init(st_scaled *q, const st_set *s, const st_tensor *w, const st_tensor *scale,
                   uint64_t block_rows, uint64_t block_cols, ds4_error *err) {
    memset(q, 0, sizeof(*q));
    int code = st_scaled_code(w->dtype);
    if (code < 0)
        return ds4_fail(err, "%s: tensor '%s': dtype %s does not take block scales (expected "
                        "F8_E4M3, or FP4 packed in I8/U8/F4) but '%s' is its scale",
                        st_path(s, w), w->name, st_dtype_name(w->dtype), scale->name);
    if (st_scaled_dims(w, &q->rows, &q->cols) != 0)
        return ds4_fail(err, "%s: tensor '%s': a block-scaled weight must be 2-D, it has %"
                        PRIu32 " dims", st_path(s, w), w->name, w->n_dims);
    if (!scale_dtype_ok(scale->dtype))
        return ds4_fail(err, "%s: tensor '%s': scale dtype %s (expected F8_E8M0, U8, F32, BF16 "
                        "or F16)", st_path(s, scale), scale->name, st_dtype_name(scale->dtype));
    if (block_rows == 0 || block_cols == 0)
        return ds4_fail(err, "tensor '%s': block size %" PRIu64 "x%" PRIu64, w->name,
                        block_rows, block_cols);
    uint64_t sr = (q->rows + block_rows - 1) / block_rows;
    uint64_t sc = (q->cols + block_cols - 1) / block_cols;
    if (scale->n_dims != 2 || scale->shape[0] != sr || scale->shape[1] != sc) {
        char got[96] = "(";
        size_t used = 1;
        for (uint32_t i = 0; i < scale->n_dims && used < sizeof(got); i++)
            used += (size_t)snprintf(got + used, sizeof(got) - used, "%s%" PRIu64, i ? ", " : "",
                                     scale->shape[i]);
        if (used < sizeof(got)) snprintf(got + used, sizeof(got) - used, ")");
        return ds4_fail(err, "%s: tensor '%s': shape %s, expected (%" PRIu64 ", %" PRIu64
                        ") for '%s' of %" PRIu64 "x%" PRIu64 " values in blocks of %" PRIu64
                        "x%" PRIu64, st_path(s, scale), scale->name, got, sr, sc, w->name,
                        q->rows, q->cols, block_rows, block_cols);
    }
    q->w = w;
    q->scale = scale;
    q->code = (uint32_t)code;
    q->block_rows = block_rows;
    q->block_cols = block_cols;
    return 0;
}

/* Value of E4M3 code c (NaN for 0x7f / 0xff): exact in f32. */
static float e4m3_value(uint8_t c) {
    int e = (c >> 3) & 15, m = c & 7;
    if ((c & 0x7f) == 0x7f) return NAN;
    float v = e == 0 ? ldexpf((float)m, -9) : ldexpf((float)(8 + m), e - 10);
    return (c & 0x80) ? -v : v;
}

static float scale_value(const st_tensor *t, uint64_t i) {
    uint16_t h;
    float f;
    switch (t->dtype) {
    case ST_F8_E8M0:
    case ST_U8:
        return t->data[i] == 255 ? NAN : ldexpf(1.0f, (int)t->data[i] - 127);
    case ST_F32:
        memcpy(&f, t->data + i * 4, 4);
        return f;
    case ST_BF16:
        memcpy(&h, t->data + i * 2, 2);
        return ds4_bf16_to_f32(h);
    default: /* ST_F16 (checked by st_scaled_init) */
        memcpy(&h, t->data + i * 2, 2);
        return ds4_f16_to_f32(h);
    }
}

/* Code of logical element idx (flat). */
static uint8_t code_at(const st_scaled *q, uint64_t idx) {
    if (q->code == ST_CODE_E4M3) return q->w->data[idx];
    uint8_t b = q->w->data[idx >> 1];
    return (idx & 1) ? (uint8_t)(b >> 4) : (uint8_t)(b & 15);
}

int st_read_scaled_f32(const st_set *s, const st_scaled *q, uint64_t first, uint64_t count,
                       float *dst, ds4_error *err) {
    static const float k_e2m1[16] = {0.0f,  0.5f,  1.0f,  1.5f,  2.0f,  3.0f,  4.0f,  6.0f,
                                     -0.0f, -0.5f, -1.0f, -1.5f, -2.0f, -3.0f, -4.0f, -6.0f};
    float lut[256];
    if (q->code == ST_CODE_E4M3)
        for (int c = 0; c < 256; c++) lut[c] = e4m3_value((uint8_t)c);
    else
        memcpy(lut, k_e2m1, sizeof(k_e2m1));
    uint64_t total = q->rows * q->cols;
    if (first > total || count > total - first)
        return ds4_fail(err, "%s: tensor '%s': elements [%" PRIu64 ", +%" PRIu64 ") outside its %"
                        PRIu64, st_path(s, q->w), q->w->name, first, count, total);
    uint64_t scols = (q->cols + q->block_cols - 1) / q->block_cols;
    uint64_t idx = first, end = first + count;
    while (idx < end) {
        uint64_t r = idx / q->cols, c = idx % q->cols;
        uint64_t bj = c / q->block_cols, bi = r / q->block_rows;
        uint64_t stop = (bj + 1) * q->block_cols - c; /* to the end of this block's columns */
        if (stop > q->cols - c) stop = q->cols - c;
        if (stop > end - idx) stop = end - idx;
        float sc = scale_value(q->scale, bi * scols + bj);
        if (!isfinite(sc))
            return ds4_fail(err, "%s: tensor '%s': block (%" PRIu64 ", %" PRIu64 ") scale is %g "
                            "(for '%s')", st_path(s, q->scale), q->scale->name, bi, bj,
                            (double)sc, q->w->name);
        bool bad = false;
        for (uint64_t k = 0; k < stop; k++) {
            float v = lut[code_at(q, idx + k)] * sc;
            bad |= !isfinite(v);
            dst[idx - first + k] = v;
        }
        if (bad) {
            for (uint64_t k = 0; k < stop; k++) {
                uint8_t code = code_at(q, idx + k);
                if (isfinite(dst[idx - first + k])) continue;
                uint64_t e = idx + k;
                if (isnan(lut[code]))
                    return ds4_fail(err, "%s: tensor '%s': element (%" PRIu64 ", %" PRIu64
                                    ") is a NaN code (0x%02x)", st_path(s, q->w), q->w->name,
                                    e / q->cols, e % q->cols, code);
                return ds4_fail(err, "%s: tensor '%s': element (%" PRIu64 ", %" PRIu64
                                ") = %g x scale %g overflows f32", st_path(s, q->w), q->w->name,
                                e / q->cols, e % q->cols, (double)lut[code], (double)sc);
            }
        }
        idx += stop;
    }
    return 0;
}
