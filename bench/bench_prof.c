/* bench_prof.c - ds4cl-bench's profile tables and 43-layer projection.
 *
 * See bench_prof.h for what is measured and how spans and the projection
 * are defined.  Everything here is host arithmetic on the records the
 * engine profiler returns: no device calls.  Device timestamps are taken
 * as they come; a timestamp that runs backwards (a driver quirk) gives a
 * zero interval, never a wrapped one.
 */
#include "bench_prof.h"

#include <stdlib.h>
#include <string.h>

/* Layer kinds: ratio 0/4/128 x score/hash routed. */
#define N_KINDS 6

static uint64_t sub0(uint64_t a, uint64_t b) { return a > b ? a - b : 0; }

static int ratio_index(uint32_t ratio) { return ratio == 0 ? 0 : ratio == 4 ? 1 : 2; }

static int kind_of(uint32_t ratio, bool hash) { return ratio_index(ratio) * 2 + (hash ? 1 : 0); }

static const char *kind_name(int k) {
    static const char *const names[N_KINDS] = {"ratio 0 score",  "ratio 0 hash",   "ratio 4 score",
                                               "ratio 4 hash",   "ratio 128 score", "ratio 128 hash"};
    return names[k];
}

/* The Flash layer pattern (model.md section 1). */
static uint32_t flash_ratio(uint32_t il) { return il < 2 ? 0 : il % 2 == 0 ? 4 : 128; }

int bench_phase_init(bench_phase *p, const char *name, uint32_t n_layer, ds4_error *err) {
    memset(p, 0, sizeof(*p));
    p->name = name;
    p->n_layer = n_layer;
    p->tag = calloc((size_t)n_layer + 1, sizeof(*p->tag));
    if (!p->tag) return ds4_fail(err, "out of memory");
    return 0;
}

void bench_phase_free(bench_phase *p) {
    free(p->k);
    free(p->tag);
    memset(p, 0, sizeof(*p));
}

void bench_phase_reset(bench_phase *p) {
    p->tokens = p->launches = p->busy_ns = p->wall_ns = 0;
    p->nk = 0;
    memset(p->tag, 0, ((size_t)p->n_layer + 1) * sizeof(*p->tag));
}

static bench_kclass *kclass(bench_phase *p, const char *name, ds4_error *err) {
    for (uint32_t i = 0; i < p->nk; i++)
        if (strcmp(p->k[i].name, name) == 0) return &p->k[i];
    if (p->nk == p->capk) {
        uint32_t cap = p->capk ? p->capk * 2 : 32;
        bench_kclass *k = realloc(p->k, cap * sizeof(*k));
        if (!k) {
            ds4_fail(err, "out of memory");
            return NULL;
        }
        p->k = k;
        p->capk = cap;
    }
    bench_kclass *k = &p->k[p->nk++];
    memset(k, 0, sizeof(*k));
    snprintf(k->name, sizeof(k->name), "%s", name);
    return k;
}

/* Index into p->tag of a record's tag; tags outside the model count as
 * head/embed (the engine tags only layers and -1). */
static uint32_t tag_index(const bench_phase *p, int32_t tag) {
    return tag >= 0 && (uint32_t)tag < p->n_layer ? (uint32_t)tag + 1 : 0;
}

int bench_phase_add(bench_phase *p, const ds4_prof_record *r, uint64_t n, uint32_t tokens, ds4_error *err) {
    p->tokens += tokens;
    if (n == 0) return 0;
    uint64_t max_end = r[0].end_ns;
    for (uint64_t i = 0; i < n; i++) {
        uint64_t busy = sub0(r[i].end_ns, r[i].start_ns);
        bench_kclass *k = kclass(p, r[i].kernel, err);
        if (!k) return -1;
        k->launches++;
        k->busy_ns += busy;
        if (r[i].bytes) {
            k->bytes += r[i].bytes;
            k->bytes_ns += busy;
        }
        bench_tag *t = &p->tag[tag_index(p, r[i].tag)];
        t->launches++;
        t->busy_ns += busy;
        t->bytes += r[i].bytes;
        p->launches++;
        p->busy_ns += busy;
        if (r[i].end_ns > max_end) max_end = r[i].end_ns;
    }
    /* Spans of the runs of equal tags. */
    for (uint64_t a = 0; a < n;) {
        uint64_t b = a + 1, run_end = r[a].end_ns;
        while (b < n && r[b].tag == r[a].tag) {
            if (r[b].end_ns > run_end) run_end = r[b].end_ns;
            b++;
        }
        uint64_t until = b < n ? r[b].start_ns : run_end;
        p->tag[tag_index(p, r[a].tag)].span_ns += sub0(until, r[a].start_ns);
        a = b;
    }
    p->wall_ns += sub0(max_end, r[0].start_ns);
    return 0;
}

static int by_busy_desc(const void *a, const void *b) {
    const bench_kclass *x = a, *y = b;
    if (x->busy_ns != y->busy_ns) return x->busy_ns < y->busy_ns ? 1 : -1;
    return strcmp(x->name, y->name);
}

/* Per-kind sums over the measured layers. */
typedef struct kind_sum {
    uint32_t layers;
    uint64_t span_ns, busy_ns, launches, bytes;
} kind_sum;

static void sum_kinds(const bench_phase *p, const ds4_model *m, kind_sum ks[N_KINDS]) {
    memset(ks, 0, N_KINDS * sizeof(*ks));
    for (uint32_t il = 0; il < p->n_layer; il++) {
        const bench_tag *t = &p->tag[il + 1];
        kind_sum *s = &ks[kind_of(m->layers[il].ratio, m->layers[il].hash_routed)];
        s->layers++;
        s->span_ns += t->span_ns;
        s->busy_ns += t->busy_ns;
        s->launches += t->launches;
        s->bytes += t->bytes;
    }
}

void bench_phase_print(const bench_phase *p, const ds4_model *m, double measured_s, FILE *fp) {
    double tok = p->tokens ? (double)p->tokens : 1.0;
    bench_kclass *sorted = malloc((p->nk ? p->nk : 1) * sizeof(*sorted));
    if (sorted && p->nk) {
        memcpy(sorted, p->k, p->nk * sizeof(*sorted));
        qsort(sorted, p->nk, sizeof(*sorted), by_busy_desc);
    }
    const bench_kclass *rows = sorted ? sorted : p->k;
    fprintf(fp, "  %-36s %10s %6s %10s %8s\n", "kernel", "us/tok", "%dev", "launch/tok", "GB/s");
    for (uint32_t i = 0; i < p->nk; i++) {
        const bench_kclass *k = &rows[i];
        double pct = p->busy_ns ? 100.0 * (double)k->busy_ns / (double)p->busy_ns : 0.0;
        fprintf(fp, "  %-36s %10.2f %6.1f %10.2f ", k->name, (double)k->busy_ns / 1e3 / tok, pct,
                (double)k->launches / tok);
        if (k->bytes && k->bytes_ns) fprintf(fp, "%8.2f\n", (double)k->bytes / (double)k->bytes_ns);
        else fprintf(fp, "%8s\n", "-");
    }
    free(sorted);

    kind_sum ks[N_KINDS];
    sum_kinds(p, m, ks);
    fprintf(fp, "  %-20s %6s %14s %14s %12s\n", "layer kind", "layers", "span us/layer", "busy us/layer",
            "launch/layer");
    for (int k = 0; k < N_KINDS; k++) {
        if (!ks[k].layers) continue;
        double d = tok * ks[k].layers;
        fprintf(fp, "  %-20s %6u %14.2f %14.2f %12.2f\n", kind_name(k), ks[k].layers,
                (double)ks[k].span_ns / 1e3 / d, (double)ks[k].busy_ns / 1e3 / d, (double)ks[k].launches / d);
    }
    const bench_tag *h = &p->tag[0];
    fprintf(fp, "  %-20s %6s %14.2f %14.2f %12.2f\n", "head/embed", "-", (double)h->span_ns / 1e3 / tok,
            (double)h->busy_ns / 1e3 / tok, (double)h->launches / tok);
    double busy = (double)p->busy_ns / 1e3 / tok, wall = (double)p->wall_ns / 1e3 / tok;
    fprintf(fp, "  launches per token %.2f; device busy %.2f us of %.2f us wall span per token (%.1f%%)",
            (double)p->launches / tok, busy, wall, wall > 0 ? 100.0 * busy / wall : 0.0);
    if (measured_s > 0) fprintf(fp, "; timed %.2f us per token", measured_s * 1e6);
    fputc('\n', fp);
}

/* The measured layers a Flash layer of `kind` is projected from: those of
 * its kind, else of its ratio, else all of them (summed into *out). */
static void kind_source(const kind_sum ks[N_KINDS], int kind, kind_sum *out) {
    const int range[3][2] = {{kind, kind}, {kind & ~1, kind | 1}, {0, N_KINDS - 1}};
    for (int t = 0; t < 3; t++) {
        memset(out, 0, sizeof(*out));
        for (int k = range[t][0]; k <= range[t][1]; k++) {
            out->layers += ks[k].layers;
            out->span_ns += ks[k].span_ns;
            out->busy_ns += ks[k].busy_ns;
            out->launches += ks[k].launches;
            out->bytes += ks[k].bytes;
        }
        if (out->layers) return;
    }
}

int bench_project(const bench_phase *p, const ds4_model *m, bench_proj *out, ds4_error *err) {
    memset(out, 0, sizeof(*out));
    if (p->tokens == 0 || p->n_layer == 0) return ds4_fail(err, "projection: no %s profile", p->name);
    kind_sum ks[N_KINDS];
    sum_kinds(p, m, ks);
    const bench_tag *h = &p->tag[0];
    double own = (double)h->span_ns, proj = (double)h->span_ns;
    double launches = (double)h->launches, bytes = (double)h->bytes;
    for (uint32_t il = 0; il < p->n_layer; il++) own += (double)p->tag[il + 1].span_ns;
    for (uint32_t il = 0; il < BENCH_FLASH_LAYERS; il++) {
        kind_sum src;
        kind_source(ks, kind_of(flash_ratio(il), il < BENCH_FLASH_HASH_LAYERS), &src);
        proj += (double)src.span_ns / src.layers;
        launches += (double)src.launches / src.layers;
        bytes += (double)src.bytes / src.layers;
    }
    if (own <= 0) return ds4_fail(err, "projection: the %s profile has a zero wall span", p->name);
    out->scale = proj / own;
    out->launches = launches / (double)p->tokens;
    out->bytes = bytes / (double)p->tokens;
    out->n_measured = p->n_layer;
    return 0;
}
