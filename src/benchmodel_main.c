/* benchmodel_main.c - the `ds4cl-benchmodel` program: write a Flash-shaped
 * benchmark GGUF (benchmodel.h) with random weights.
 *
 *   ds4cl-benchmodel [--mix q2|q4] [--layers N] [--pattern LIST|flash]
 *                    [--hash-layers K] [--seed S] [--threads T] [--tiny] [-q]
 *                    -o OUT.gguf
 *
 * --pattern gives each layer's compress ratio (0, 4 or 128, comma
 * separated); without --layers the list sets the layer count, with it the
 * counts must agree.  "flash" is the published pattern (0, 0, then 4 on
 * even and 128 on odd layers, 3 hash layers) for --layers N.  --tiny scales
 * the shape down to the test size.  Progress goes to stderr (a live line
 * on a terminal, every 10% otherwise), then one summary line to stdout:
 * bytes, seconds, MB/s.  Exit 0 on success, 1 on a failure (one line), 2 on
 * a bad command line.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "benchmodel.h"

static void usage(FILE *fp) {
    fprintf(fp,
            "usage: ds4cl-benchmodel [--mix q2|q4] [--layers N] [--pattern LIST|flash] [--hash-layers K]\n"
            "                        [--seed S] [--threads T] [--tiny] [-q] -o OUT.gguf\n"
            "  --mix q2|q4        expert types of the published ds4 files (default q2:\n"
            "                     IQ2_XXS gate/up + Q2_K down; q4: Q4_K)\n"
            "  --layers N         layers (default 4, or the length of --pattern)\n"
            "  --pattern LIST     compress ratio per layer, e.g. 0,4,128,4 (default: 0 then\n"
            "                     4,128,4,...); 'flash' = 0,0,4,128,... with 3 hash layers\n"
            "  --hash-layers K    first K layers route through tid2eid (default min(2, N))\n"
            "  --seed S           random seed (default 1); same options, same bytes\n"
            "  --threads T        generator threads (default: online CPUs)\n"
            "  --tiny             a tiny shape (256 wide) instead of the Flash widths\n"
            "  -q, --quiet        no progress\n"
            "  -o, --output FILE  the GGUF to write\n");
}

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

typedef struct progress {
    double t0, last;
    bool tty;
    int last_tenth;
} progress;

static void show_progress(void *ctx, uint64_t done, uint64_t total) {
    progress *pg = ctx;
    double t = now_s();
    double frac = total ? (double)done / (double)total : 1.0;
    int tenth = (int)(frac * 10.0);
    if (pg->tty ? (t - pg->last < 0.25 && done < total) : tenth == pg->last_tenth) return;
    pg->last = t;
    pg->last_tenth = tenth;
    double dt = t - pg->t0, mbs = dt > 0 ? (double)done / dt / 1e6 : 0.0;
    fprintf(stderr, "%sds4cl-benchmodel: %3.0f%%  %.2f / %.2f GB  %.0f MB/s%s", pg->tty ? "\r" : "",
            frac * 100.0, (double)done / 1e9, (double)total / 1e9, mbs, pg->tty ? "  " : "\n");
    fflush(stderr);
}

/* Unsigned decimal into *out, within [lo, hi]. */
static int parse_u64(const char *flag, const char *s, uint64_t lo, uint64_t hi, uint64_t *out,
                     ds4_error *err) {
    char *end = NULL;
    errno = 0;
    if (!s || !*s || *s == '-' || *s == '+')
        return ds4_fail(err, "%s: '%s' is not a number", flag, s ? s : "");
    unsigned long long v = strtoull(s, &end, 10);
    if (errno || *end != '\0') return ds4_fail(err, "%s: '%s' is not a number", flag, s);
    if (v < lo || v > hi)
        return ds4_fail(err, "%s: %llu out of range %" PRIu64 "..%" PRIu64, flag, v, lo, hi);
    *out = v;
    return 0;
}

static int parse_pattern(const char *s, ds4_benchmodel_opts *o, ds4_error *err) {
    uint32_t n = 0;
    const char *p = s;
    for (;;) {
        if (n == DS4_MAX_LAYERS)
            return ds4_fail(err, "--pattern: more than %d layers", DS4_MAX_LAYERS);
        char *end = NULL;
        errno = 0;
        unsigned long v = (*p >= '0' && *p <= '9') ? strtoul(p, &end, 10) : 0;
        if (!end || end == p || errno || (*end != ',' && *end != '\0') ||
            (v != 0 && v != 4 && v != 128))
            return ds4_fail(err, "--pattern: '%s' is not a comma-separated list of 0, 4 and 128",
                            s);
        o->pattern[n++] = (uint32_t)v;
        if (*end == '\0') break;
        p = end + 1;
    }
    o->n_pattern = n;
    return 0;
}

typedef struct cli {
    ds4_benchmodel_opts o;
    const char *out;
    const char *pattern;
    bool layers_set, quiet;
} cli;

static int parse_args(int argc, char **argv, cli *c, ds4_error *err) {
    ds4_benchmodel_default_opts(&c->o);
    bool tiny = false;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (strcmp(a, "-h") == 0 || strcmp(a, "--help") == 0) {
            usage(stdout);
            exit(0);
        }
        if (strcmp(a, "--tiny") == 0) {
            tiny = true;
            continue;
        }
        if (strcmp(a, "-q") == 0 || strcmp(a, "--quiet") == 0) {
            c->quiet = true;
            continue;
        }
        static const char *const with_value[] = {"--mix",  "--layers",  "--pattern", "--hash-layers",
                                                 "--seed", "--threads", "-o",        "--output"};
        bool known = false;
        for (size_t k = 0; k < sizeof(with_value) / sizeof(with_value[0]); k++)
            known |= strcmp(a, with_value[k]) == 0;
        if (!known) return ds4_fail(err, "unknown argument '%s'", a);
        if (i + 1 >= argc) return ds4_fail(err, "%s needs a value", a);
        const char *v = argv[++i];
        uint64_t x = 0;
        if (strcmp(a, "--mix") == 0) {
            if (ds4_benchmodel_mix_from_name(v, &c->o.mix) != 0)
                return ds4_fail(err, "--mix: '%s' (expected q2 or q4)", v);
        } else if (strcmp(a, "--layers") == 0) {
            if (parse_u64(a, v, 1, DS4_MAX_LAYERS, &x, err)) return -1;
            c->o.n_layer = (uint32_t)x;
            c->layers_set = true;
        } else if (strcmp(a, "--pattern") == 0) {
            c->pattern = v;
        } else if (strcmp(a, "--hash-layers") == 0) {
            if (parse_u64(a, v, 0, DS4_MAX_LAYERS, &x, err)) return -1;
            c->o.n_hash_layers = (int32_t)x;
        } else if (strcmp(a, "--seed") == 0) {
            if (parse_u64(a, v, 0, UINT64_MAX, &x, err)) return -1;
            c->o.seed = x;
        } else if (strcmp(a, "--threads") == 0) {
            if (parse_u64(a, v, 1, DS4_BENCH_MAX_THREADS, &x, err)) return -1;
            c->o.threads = (uint32_t)x;
        } else {
            c->out = v;
        }
    }
    if (!c->out) return ds4_fail(err, "no output file (-o OUT.gguf)");
    if (tiny) ds4_benchmodel_tiny_shape(&c->o);
    if (c->pattern && strcmp(c->pattern, "flash") == 0) {
        int32_t hash = c->o.n_hash_layers;
        ds4_benchmodel_flash_pattern(&c->o);
        if (hash >= 0) c->o.n_hash_layers = hash; /* --hash-layers wins */
    } else if (c->pattern) {
        if (parse_pattern(c->pattern, &c->o, err) != 0) return -1;
        if (!c->layers_set) c->o.n_layer = c->o.n_pattern;
        else if (c->o.n_layer != c->o.n_pattern)
            return ds4_fail(err, "--pattern has %u entries but --layers is %u", c->o.n_pattern,
                            c->o.n_layer);
    }
    return ds4_benchmodel_check(&c->o, err);
}

int main(int argc, char **argv) {
    ds4_error err = {{0}};
    cli c = {0};
    if (parse_args(argc, argv, &c, &err) != 0) {
        fprintf(stderr, "ds4cl-benchmodel: %s\n", err.msg);
        usage(stderr);
        return 2;
    }
    progress pg = {.t0 = now_s(), .tty = isatty(STDERR_FILENO) != 0, .last_tenth = -1};
    pg.last = pg.t0;
    if (!c.quiet) {
        c.o.progress = show_progress;
        c.o.progress_ctx = &pg;
        fprintf(stderr, "ds4cl-benchmodel: %s, %u layers (", ds4_benchmodel_mix_name(c.o.mix),
                c.o.n_layer);
        for (uint32_t il = 0; il < c.o.n_layer; il++)
            fprintf(stderr, "%s%u", il ? "," : "", ds4_benchmodel_ratio(&c.o, il));
        fprintf(stderr, "; hash %u), %.2f GB of tensors -> %s\n", ds4_benchmodel_hash_layers(&c.o),
                (double)ds4_benchmodel_data_bytes(&c.o) / 1e9, c.out);
    }
    double t0 = now_s();
    int rc = ds4_benchmodel_write(&c.o, c.out, &err);
    double dt = now_s() - t0;
    if (!c.quiet && pg.tty) fputc('\n', stderr);
    if (rc != 0) {
        fprintf(stderr, "ds4cl-benchmodel: %s\n", err.msg);
        return 1;
    }
    struct stat st;
    uint64_t bytes = stat(c.out, &st) == 0 ? (uint64_t)st.st_size : 0;
    printf("wrote %s: %" PRIu64 " bytes in %.2f s (%.1f MB/s)\n", c.out, bytes, dt,
           dt > 0 ? (double)bytes / dt / 1e6 : 0.0);
    return 0;
}
