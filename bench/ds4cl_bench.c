/* ds4cl_bench.c - the `ds4cl-bench` program: prefill and decode speed at
 * growing context frontiers (ds4-bench's method), with a kernel profile
 * and, on a benchmark model, the projected 43-layer numbers.
 *
 * The model is loaded once and one fixed token sequence is built: the
 * --prompt-file text tokenized as-is with the model's tokenizer, or
 * (--random-tokens, the default without a prompt file) --seed'ed random
 * ordinary ids (never a special token or EOS).  One session of ctx-alloc
 * tokens (default ctx-max + room + 1, room = gen-tokens, or in profile mode
 * the largest of gen-tokens, --profile-tokens and the prefill chunk) walks
 * the frontiers F = ctx-start, then +step-incr, or x step-mul when it is
 * above 1 (rounded up, at least +1), the last one clamped to ctx-max.  At each F:
 *   1. prefill tokens [previous F, F) - timed;
 *   2. snapshot the session (ds4_session_save; its size is kvcache_bytes);
 *   3. decode gen-tokens greedily, argmax over every token but EOS - timed;
 *   4. restore the snapshot;
 * and one CSV row `ctx_tokens,prefill_tokens,prefill_tps,gen_tokens,
 * gen_tps,kvcache_bytes` (t/s with 2 decimals).  Timing is the wall clock
 * around the engine calls, which return once the logits are on the host.
 *
 * Profile mode (--profile, implied by --profile-out/--proj-csv/
 * --profile-tokens) loads the engine with profiling on.  After the timed
 * runs of a frontier it profiles --profile-tokens decoded tokens (one take
 * per token) and one prefill chunk of min(chunk, F - previous F) tokens
 * (the prompt's tokens from F on, wrapping), restoring the snapshot after
 * each, so the CSV numbers are unaffected; bench_prof.c prints the tables
 * and projects them.  The projection needs the `ds4cl.bench_model` key.
 * --proj-csv FILE writes `ctx_tokens,proj_prefill_tps,proj_gen_tps,
 * launches_per_token,decode_gbps`: the projected 43-layer rates, the
 * projected launches per decoded token and the projected decode bytes per
 * token (estimated bytes only) times the projected decode rate.
 *
 * The hidden --dump-gen FILE writes "F: id id ..." per frontier (the timed
 * decode's ids) so tests can check determinism and restore.
 *
 * A bad command line prints one line (and the usage for an unknown flag or
 * a missing value) and exits 2; impossible settings and every runtime
 * failure print one line "ds4cl-bench: ..." and exit 1.
 */
#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "bench_prof.h"
#include "engine.h"
#include "gguf.h"
#include "tokenizer.h"

#define DEFAULT_CHUNK 2048u  /* the engine's largest default prefill chunk (engine.h), for the context room */
#define MAX_CTX (1u << 30)   /* the engine's largest session */
#define BENCH_KEY "ds4cl.bench_model"

static const char *const default_models[] = {"ds4flash.gguf", "gguf/ds4flash.gguf"};

typedef struct bench_opts {
    const char *model, *prompt_file, *csv, *device, *kernel_dir, *weights;
    const char *profile_out, *proj_csv, *dump_gen;
    bool random_tokens, no_quant_sim, verbose, profile;
    bool step_incr_set;
    uint32_t ctx_start, ctx_max, ctx_alloc, step_incr, gen, chunk, profile_tokens;
    double step_mul;
    uint64_t seed;
} bench_opts;

/* Everything a run holds; bench_close releases what is set. */
typedef struct bench {
    const bench_opts *o;
    ds4_engine *e;
    const ds4_model *m;
    ds4_tokenizer *tok;
    ds4_session *s;
    int32_t *ids;          /* the fixed token sequence */
    uint32_t n_ids;
    int32_t eos;           /* -1 when the model names none */
    uint32_t chunk;        /* effective prefill chunk */
    bool bench_model;      /* ds4cl.bench_model = true */
    uint8_t *snap;
    uint64_t snap_size;
    int32_t *gen_ids;      /* o->gen ids of the last decode */
    FILE *csv, *prof, *proj, *dump;
    bench_phase dec, pre;
} bench;

static void usage(FILE *fp) {
    fprintf(fp,
            "usage: ds4cl-bench [options]\n"
            "  -m, --model FILE        GGUF model (default: $DS4CL_MODEL, ds4flash.gguf, gguf/ds4flash.gguf)\n"
            "  --prompt-file FILE      token sequence: FILE's text tokenized as-is\n"
            "  --random-tokens         token sequence: seeded random ids (default without --prompt-file)\n"
            "  --seed N                seed of --random-tokens (default 1)\n"
            "  --ctx-start N           first frontier (default 2048)\n"
            "  --ctx-max N             last frontier (default 32768)\n"
            "  --step-incr N           linear step between frontiers (default 2048)\n"
            "  --step-mul F            geometric step instead when F > 1 (rounded up, at least +1)\n"
            "  --ctx-alloc N           session context (default ctx-max + gen-tokens + 1)\n"
            "  -n, --gen-tokens N      greedy decode tokens per frontier (default 128)\n"
            "  --chunk N               prefill chunk in tokens (default: the engine's, 256 on CPUs, 2048 on GPUs)\n"
            "  --csv FILE              write the CSV there (default stdout)\n"
            "  --device D              OpenCL device index or name substring\n"
            "  --kernel-dir DIR        kernel sources from DIR instead of the embedded ones\n"
            "  --weights MODE          auto, map or copy (default auto)\n"
            "  --no-quant-sim          exact f32 KV path (no FP8/FP4 simulation)\n"
            "  --profile               per-kernel and per-layer profile at each frontier\n"
            "  --profile-tokens N      decoded tokens profiled per frontier (default 8)\n"
            "  --profile-out FILE      write the profile there (default stderr)\n"
            "  --proj-csv FILE         projected 43-layer rates per frontier (benchmark models)\n"
            "  -v, --verbose           log the device and the weight plan\n"
            "  -h, --help              this help\n");
}

static void usage_error(const char *msg, const char *arg, bool show_usage) {
    fprintf(stderr, "ds4cl-bench: %s%s%s\n", msg, arg ? ": " : "", arg ? arg : "");
    if (show_usage) usage(stderr);
    exit(2);
}

static uint32_t parse_count(const char *s, const char *flag) {
    char *end = NULL;
    if (!s[0] || s[0] == '-' || s[0] == '+') usage_error("invalid value for", flag, false);
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno || *end || v == 0 || v > MAX_CTX) usage_error("invalid value for", flag, false);
    return (uint32_t)v;
}

static const char *need(int argc, char **argv, int *i) {
    if (*i + 1 >= argc) usage_error("missing value for", argv[*i], true);
    return argv[++*i];
}

static void parse_args(int argc, char **argv, bench_opts *o) {
    memset(o, 0, sizeof(*o));
    o->ctx_start = 2048;
    o->ctx_max = 32768;
    o->step_incr = 2048;
    o->step_mul = 1.0;
    o->gen = 128;
    o->profile_tokens = 8;
    o->seed = 1;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            usage(stdout);
            exit(0);
        } else if (!strcmp(a, "-m") || !strcmp(a, "--model")) o->model = need(argc, argv, &i);
        else if (!strcmp(a, "--prompt-file")) o->prompt_file = need(argc, argv, &i);
        else if (!strcmp(a, "--random-tokens")) o->random_tokens = true;
        else if (!strcmp(a, "--seed")) {
            const char *v = need(argc, argv, &i);
            char *end = NULL;
            errno = 0;
            o->seed = strtoull(v, &end, 10);
            if (!v[0] || v[0] == '-' || *end || errno) usage_error("invalid value for", a, false);
        } else if (!strcmp(a, "--ctx-start")) o->ctx_start = parse_count(need(argc, argv, &i), a);
        else if (!strcmp(a, "--ctx-max")) o->ctx_max = parse_count(need(argc, argv, &i), a);
        else if (!strcmp(a, "--ctx-alloc")) o->ctx_alloc = parse_count(need(argc, argv, &i), a);
        else if (!strcmp(a, "--step-incr")) {
            o->step_incr = parse_count(need(argc, argv, &i), a);
            o->step_incr_set = true;
        } else if (!strcmp(a, "--step-mul")) {
            const char *v = need(argc, argv, &i);
            char *end = NULL;
            o->step_mul = strtod(v, &end);
            if (!v[0] || *end || !isfinite(o->step_mul)) usage_error("invalid value for", a, false);
        } else if (!strcmp(a, "-n") || !strcmp(a, "--gen-tokens") || !strcmp(a, "--tokens"))
            o->gen = parse_count(need(argc, argv, &i), a);
        else if (!strcmp(a, "--chunk")) o->chunk = parse_count(need(argc, argv, &i), a);
        else if (!strcmp(a, "--csv")) o->csv = need(argc, argv, &i);
        else if (!strcmp(a, "--device")) o->device = need(argc, argv, &i);
        else if (!strcmp(a, "--kernel-dir")) o->kernel_dir = need(argc, argv, &i);
        else if (!strcmp(a, "--weights")) {
            o->weights = need(argc, argv, &i);
            if (strcmp(o->weights, "auto") && strcmp(o->weights, "map") && strcmp(o->weights, "copy"))
                usage_error("--weights must be auto, map or copy, not", o->weights, false);
        } else if (!strcmp(a, "--no-quant-sim")) o->no_quant_sim = true;
        else if (!strcmp(a, "--profile")) o->profile = true;
        else if (!strcmp(a, "--profile-tokens")) {
            o->profile_tokens = parse_count(need(argc, argv, &i), a);
            o->profile = true;
        } else if (!strcmp(a, "--profile-out")) {
            o->profile_out = need(argc, argv, &i);
            o->profile = true;
        } else if (!strcmp(a, "--proj-csv")) {
            o->proj_csv = need(argc, argv, &i);
            o->profile = true;
        } else if (!strcmp(a, "--dump-gen")) o->dump_gen = need(argc, argv, &i);
        else if (!strcmp(a, "-v") || !strcmp(a, "--verbose")) o->verbose = true;
        else if (a[0] == '-') usage_error("unknown option", a, true);
        else usage_error("unexpected argument", a, true);
    }
    if (o->prompt_file && o->random_tokens)
        usage_error("--prompt-file and --random-tokens exclude each other", NULL, false);
    if (!o->prompt_file) o->random_tokens = true;
}

/* Settings that parse but cannot run; the message goes to err. */
static int check_opts(bench_opts *o, ds4_error *err) {
    if (o->ctx_start > o->ctx_max)
        return ds4_fail(err, "--ctx-start %u is larger than --ctx-max %u", o->ctx_start, o->ctx_max);
    if (o->step_mul < 1.0) return ds4_fail(err, "--step-mul must be at least 1 (got %g)", o->step_mul);
    if (o->step_incr_set && o->step_mul > 1.0) return ds4_fail(err, "give --step-incr or --step-mul, not both");
    uint32_t chunk = o->chunk ? o->chunk : DEFAULT_CHUNK;
    uint64_t room = o->gen;
    if (o->profile && o->profile_tokens > room) room = o->profile_tokens;
    if (o->profile && chunk > room) room = chunk;
    uint64_t need = (uint64_t)o->ctx_max + room + 1;
    if (need > MAX_CTX)
        return ds4_fail(err, "--ctx-max %u plus %" PRIu64 " tokens of room is too large", o->ctx_max, room);
    if (!o->ctx_alloc) o->ctx_alloc = (uint32_t)need;
    if (o->ctx_alloc < need)
        return ds4_fail(err, "--ctx-alloc %u must be larger than ctx-max + %s (%" PRIu64 ")", o->ctx_alloc,
                        room == o->gen ? "gen-tokens" : "the profile room", need - 1);
    return 0;
}

static uint32_t next_frontier(const bench_opts *o, uint32_t f) {
    uint64_t next;
    if (o->step_mul > 1.0) {
        double v = ceil((double)f * o->step_mul);
        next = v >= (double)MAX_CTX ? MAX_CTX : (uint64_t)v;
        if (next <= f) next = (uint64_t)f + 1;
    } else {
        next = (uint64_t)f + o->step_incr;
    }
    return next > o->ctx_max ? o->ctx_max : (uint32_t)next;
}

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* ---------------------------------------------------------------------- */
/* Model, tokens, outputs                                                  */
/* ---------------------------------------------------------------------- */

static int pick_model(const bench_opts *o, const char **path, ds4_error *err) {
    *path = o->model;
    if (*path) return 0;
    const char *env = getenv("DS4CL_MODEL");
    if (env && *env) *path = env;
    for (size_t i = 0; !*path && i < sizeof(default_models) / sizeof(default_models[0]); i++)
        if (access(default_models[i], R_OK) == 0) *path = default_models[i];
    if (!*path) return ds4_fail(err, "no model: pass -m FILE (no ds4flash.gguf or gguf/ds4flash.gguf here)");
    return 0;
}

static int read_text(const char *path, char **out, size_t *len, ds4_error *err) {
    FILE *fp = fopen(path, "rb");
    if (!fp) return ds4_fail(err, "%s: %s", path, strerror(errno));
    size_t cap = 1 << 16, n = 0;
    char *buf = malloc(cap);
    while (buf) {
        n += fread(buf + n, 1, cap - n, fp);
        if (n < cap) break;
        char *bigger = realloc(buf, cap * 2);
        if (!bigger) {
            free(buf);
            buf = NULL;
            break;
        }
        buf = bigger;
        cap *= 2;
    }
    int bad = ferror(fp);
    fclose(fp);
    if (!buf) return ds4_fail(err, "%s: out of memory", path);
    if (bad) {
        free(buf);
        return ds4_fail(err, "%s: read error", path);
    }
    *out = buf;
    *len = n;
    return 0;
}

static uint64_t rng_next(uint64_t *s) {
    *s ^= *s >> 12;
    *s ^= *s << 25;
    *s ^= *s >> 27;
    return *s * 2685821657736338717ULL;
}

/* ctx-max random ids in [2, n_vocab), never EOS nor a special token. */
static int random_ids(bench *b, ds4_error *err) {
    uint32_t nv = b->m->hp.n_vocab, n = b->o->ctx_max;
    if (nv < 3) return ds4_fail(err, "the vocabulary of %u tokens is too small for random tokens", nv);
    if (!(b->ids = malloc((size_t)n * sizeof(int32_t)))) return ds4_fail(err, "out of memory");
    uint64_t s = b->o->seed * 0x9E3779B97F4A7C15ULL + 0x2545F4914F6CDD1DULL;
    for (uint32_t i = 0; i < n; i++) {
        int32_t id = -1;
        for (int tries = 0; tries < 1000 && id < 0; tries++) {
            id = (int32_t)(2 + rng_next(&s) % (nv - 2));
            if (id == b->eos || (b->tok && ds4_token_is_special(b->tok, id))) id = -1;
        }
        if (id < 0) return ds4_fail(err, "no ordinary token found in the vocabulary for random tokens");
        b->ids[i] = id;
    }
    b->n_ids = n;
    return 0;
}

static int prompt_ids(bench *b, ds4_error *err) {
    if (!b->tok) return ds4_fail(err, "--prompt-file needs the model's tokenizer");
    char *text = NULL;
    size_t len = 0;
    if (read_text(b->o->prompt_file, &text, &len, err) != 0) return -1;
    ds4_tokens t = {0};
    int rc = ds4_tokenize(b->tok, text, len, false, &t, err);
    free(text);
    if (rc != 0) {
        ds4_tokens_free(&t);
        return ds4_fail_wrap(err, "%s", b->o->prompt_file);
    }
    b->ids = t.ids;
    b->n_ids = t.n;
    if (t.n < b->o->ctx_max)
        return ds4_fail(err, "%s has %u tokens, --ctx-max needs at least %u", b->o->prompt_file, t.n, b->o->ctx_max);
    return 0;
}

/* Tokenizer and EOS (a model without a tokenizer can still run random
 * tokens; EOS then comes from tokenizer.ggml.eos_token_id if present). */
static int load_tokens(bench *b, ds4_error *err) {
    ds4_error terr = {{0}};
    b->eos = -1;
    if (ds4_tokenizer_load(&b->tok, b->m->file, &terr) == 0) {
        b->eos = ds4_tokenizer_special(b->tok, DS4_TOK_EOS);
    } else {
        b->tok = NULL;
        if (b->o->prompt_file) return ds4_fail(err, "tokenizer: %s", terr.msg);
        uint32_t eos;
        if (gguf_find_kv(b->m->file, "tokenizer.ggml.eos_token_id") &&
            gguf_get_u32(b->m->file, "tokenizer.ggml.eos_token_id", &eos, NULL) == 0 && eos < b->m->hp.n_vocab)
            b->eos = (int32_t)eos;
        if (b->o->verbose) fprintf(stderr, "ds4cl-bench: no tokenizer (%s); random tokens only\n", terr.msg);
    }
    return b->o->prompt_file ? prompt_ids(b, err) : random_ids(b, err);
}

static int open_out(const char *path, FILE **fp, ds4_error *err) {
    if (!path) return 0;
    if (!(*fp = fopen(path, "w"))) return ds4_fail(err, "%s: %s", path, strerror(errno));
    return 0;
}

static int bench_open(bench *b, const bench_opts *o, ds4_error *err) {
    memset(b, 0, sizeof(*b));
    b->o = o;
    b->csv = stdout;
    b->prof = stderr;
    const char *path = NULL;
    if (pick_model(o, &path, err) != 0) return -1;
    ds4_engine_opts eo = {.model_path = path, .device = o->device, .kernel_dir = o->kernel_dir,
                          .weights = o->weights, .no_quant_sim = o->no_quant_sim, .prefill_chunk = o->chunk,
                          .verbose = o->verbose, .profile = o->profile};
    if (ds4_engine_load(&b->e, &eo, err) != 0) return -1;
    b->m = ds4_engine_model(b->e);
    b->chunk = ds4_engine_prefill_chunk(b->e); /* the chunk the timed prefill used */
    if (gguf_find_kv(b->m->file, BENCH_KEY)) {
        bool v = false;
        if (gguf_get_bool(b->m->file, BENCH_KEY, &v, err) != 0) return ds4_fail_wrap(err, "%s", path);
        b->bench_model = v;
    }
    if (o->proj_csv && !b->bench_model)
        return ds4_fail(err, "--proj-csv needs a benchmark model (%s has no %s = true)", path, BENCH_KEY);
    if (load_tokens(b, err) != 0) return -1;
    if (!(b->gen_ids = malloc((size_t)o->gen * sizeof(int32_t)))) return ds4_fail(err, "out of memory");
    if (o->profile && (bench_phase_init(&b->dec, "decode", b->m->hp.n_layer, err) != 0 ||
                       bench_phase_init(&b->pre, "prefill", b->m->hp.n_layer, err) != 0))
        return -1;
    if (ds4_session_new(b->e, o->ctx_alloc, &b->s, err) != 0) return -1;
    if (open_out(o->csv, &b->csv, err) || open_out(o->profile_out, &b->prof, err) ||
        open_out(o->proj_csv, &b->proj, err) || open_out(o->dump_gen, &b->dump, err))
        return -1;
    fprintf(stderr, "ds4cl-bench: %s on %s: %u layers, %u tokens of %s, context %u, prefill chunk %u\n", path,
            ds4_engine_device_name(b->e), b->m->hp.n_layer, b->n_ids, o->prompt_file ? o->prompt_file : "random ids",
            o->ctx_alloc, b->chunk);
    return 0;
}

static int close_out(FILE *fp, FILE *std, const char *path, ds4_error *err) {
    if (!fp) return 0;
    int bad = fflush(fp) != 0 || ferror(fp);
    if (fp != std) bad |= fclose(fp) != 0;
    return bad ? ds4_fail(err, "%s: write error", path ? path : "stdout") : 0;
}

/* Release everything; returns -1 if an output failed to write. */
static int bench_close(bench *b, ds4_error *err) {
    int rc = 0;
    rc |= close_out(b->csv, stdout, b->o->csv, err);
    rc |= close_out(b->prof, stderr, b->o->profile_out, err);
    rc |= close_out(b->proj, NULL, b->o->proj_csv, err);
    rc |= close_out(b->dump, NULL, b->o->dump_gen, err);
    bench_phase_free(&b->dec);
    bench_phase_free(&b->pre);
    free(b->gen_ids);
    free(b->snap);
    free(b->ids);
    if (b->tok) ds4_tokenizer_free(b->tok);
    ds4_session_free(b->s);
    ds4_engine_free(b->e);
    return rc ? -1 : 0;
}

/* ---------------------------------------------------------------------- */
/* The sweep                                                               */
/* ---------------------------------------------------------------------- */

/* Greedy choice over every token but EOS (NaN logits never win). */
static int next_token(const bench *b, int32_t *out, ds4_error *err) {
    const float *l = ds4_session_logits(b->s);
    if (!l) return ds4_fail(err, "no logits to decode from");
    int32_t best = -1;
    for (uint32_t i = 0; i < b->m->hp.n_vocab; i++) {
        if ((int32_t)i == b->eos || isnan(l[i])) continue;
        if (best < 0 || l[i] > l[best]) best = (int32_t)i;
    }
    if (best < 0) return ds4_fail(err, "every logit is NaN at position %u", ds4_session_pos(b->s));
    *out = best;
    return 0;
}

static int restore(bench *b, ds4_error *err) {
    if (ds4_session_restore(b->s, b->snap, b->snap_size, err) != 0) return ds4_fail_wrap(err, "restoring the snapshot");
    return 0;
}

/* Add the launches recorded since the last take to phase p. */
static int take(bench *b, bench_phase *p, uint32_t tokens, ds4_error *err) {
    ds4_prof_record *rec = NULL;
    uint64_t n = 0;
    if (ds4_engine_profile_take(b->e, &rec, &n, err) != 0) return -1;
    int rc = bench_phase_add(p, rec, n, tokens, err);
    free(rec);
    return rc;
}

/* --profile-tokens greedy tokens from the snapshot, one take each. */
static int profile_decode(bench *b, ds4_error *err) {
    bench_phase_reset(&b->dec);
    int rc = ds4_engine_profile_start(b->e, err);
    for (uint32_t t = 0; rc == 0 && t < b->o->profile_tokens; t++) {
        int32_t id;
        rc = next_token(b, &id, err);
        if (rc == 0) rc = ds4_session_eval(b->s, &id, 1, NULL, err);
        if (rc == 0) rc = take(b, &b->dec, 1, err);
    }
    ds4_engine_profile_stop(b->e);
    return rc == 0 ? restore(b, err) : -1;
}

/* One prefill chunk of min(chunk, n) tokens at frontier f (the sequence's
 * tokens from f on, wrapping around), from the snapshot. */
static int profile_prefill(bench *b, uint32_t f, uint32_t n, ds4_error *err) {
    bench_phase_reset(&b->pre);
    uint32_t c = n < b->chunk ? n : b->chunk;
    uint32_t room = ds4_session_ctx(b->s) - ds4_session_pos(b->s);
    if (c > room) c = room;
    int32_t *ids = malloc((size_t)c * sizeof(int32_t));
    if (!ids) return ds4_fail(err, "out of memory");
    for (uint32_t i = 0; i < c; i++) ids[i] = b->ids[((uint64_t)f + i) % b->n_ids];
    int rc = ds4_engine_profile_start(b->e, err);
    if (rc == 0) rc = ds4_session_eval(b->s, ids, c, NULL, err);
    if (rc == 0) rc = take(b, &b->pre, c, err);
    ds4_engine_profile_stop(b->e);
    free(ids);
    return rc == 0 ? restore(b, err) : -1;
}

/* Print the profile of frontier f; project it on a benchmark model. */
static int report_profile(bench *b, uint32_t f, double prefill_s_tok, double gen_s_tok, ds4_error *err) {
    FILE *fp = b->prof;
    fprintf(fp, "profile: decode at ctx %u, %" PRIu64 " tokens, per token\n", f, b->dec.tokens);
    bench_phase_print(&b->dec, b->m, gen_s_tok, fp);
    fprintf(fp, "profile: prefill at ctx %u, one chunk of %" PRIu64 " tokens, per token\n", f, b->pre.tokens);
    bench_phase_print(&b->pre, b->m, prefill_s_tok, fp);
    if (!b->bench_model) return fflush(fp) == 0 ? 0 : ds4_fail(err, "profile: write error");
    bench_proj pd, pp;
    if (bench_project(&b->dec, b->m, &pd, err) != 0 || bench_project(&b->pre, b->m, &pp, err) != 0) return -1;
    double gen_tps = 1.0 / (gen_s_tok * pd.scale), pre_tps = 1.0 / (prefill_s_tok * pp.scale);
    double gbps = pd.bytes * gen_tps / 1e9;
    char line[256];
    snprintf(line, sizeof(line), "projected 43-layer decode %.2f t/s, prefill %.2f t/s (from %u measured layers)",
             gen_tps, pre_tps, pd.n_measured);
    fprintf(fp, "%s\n", line);
    fprintf(fp, "projected 43-layer launches per decoded token %.2f, decode %.2f GB/s of estimated bytes "
                "(%.3f GB per token)\n", pd.launches, gbps, pd.bytes / 1e9);
    if (fp != stderr) fprintf(stderr, "ds4cl-bench: ctx %u: %s\n", f, line);
    if (b->proj) {
        fprintf(b->proj, "%u,%.2f,%.2f,%.2f,%.2f\n", f, pre_tps, gen_tps, pd.launches, gbps);
        fflush(b->proj);
    }
    return fflush(fp) == 0 ? 0 : ds4_fail(err, "profile: write error");
}

static int frontier(bench *b, uint32_t f, uint32_t prev, ds4_error *err) {
    const bench_opts *o = b->o;
    uint32_t pn = f - prev;
    double t0 = now_s();
    if (ds4_session_eval(b->s, b->ids + prev, pn, NULL, err) != 0) return ds4_fail_wrap(err, "prefill to %u", f);
    double prefill_s = now_s() - t0;
    free(b->snap);
    b->snap = NULL;
    if (ds4_session_save(b->s, &b->snap, &b->snap_size, err) != 0) return ds4_fail_wrap(err, "snapshot at %u", f);
    t0 = now_s();
    for (uint32_t i = 0; i < o->gen; i++)
        if (next_token(b, &b->gen_ids[i], err) != 0 || ds4_session_eval(b->s, &b->gen_ids[i], 1, NULL, err) != 0)
            return ds4_fail_wrap(err, "decode at %u", f);
    double gen_s = now_s() - t0;
    if (restore(b, err) != 0) return -1;
    double pre_tps = prefill_s > 0 ? pn / prefill_s : 0, gen_tps = gen_s > 0 ? o->gen / gen_s : 0;
    fprintf(b->csv, "%u,%u,%.2f,%u,%.2f,%" PRIu64 "\n", f, pn, pre_tps, o->gen, gen_tps, b->snap_size);
    fflush(b->csv);
    fprintf(stderr,
            "ds4cl-bench: ctx %u: prefill %u tokens %.2f t/s, decode %u tokens %.2f t/s, kv %" PRIu64 " bytes\n", f,
            pn, pre_tps, o->gen, gen_tps, b->snap_size);
    if (b->dump) {
        fprintf(b->dump, "%u:", f);
        for (uint32_t i = 0; i < o->gen; i++) fprintf(b->dump, " %d", b->gen_ids[i]);
        fputc('\n', b->dump);
    }
    if (!o->profile) return 0;
    if (profile_decode(b, err) != 0 || profile_prefill(b, f, pn, err) != 0)
        return ds4_fail_wrap(err, "profile at %u", f);
    return report_profile(b, f, prefill_s / pn, gen_s / o->gen, err);
}

static int run(bench *b, ds4_error *err) {
    fprintf(b->csv, "ctx_tokens,prefill_tokens,prefill_tps,gen_tokens,gen_tps,kvcache_bytes\n");
    if (b->proj) fprintf(b->proj, "ctx_tokens,proj_prefill_tps,proj_gen_tps,launches_per_token,decode_gbps\n");
    uint32_t prev = 0;
    for (uint32_t f = b->o->ctx_start;; f = next_frontier(b->o, f)) {
        if (frontier(b, f, prev, err) != 0) return -1;
        prev = f;
        if (f >= b->o->ctx_max) return 0;
    }
}

int main(int argc, char **argv) {
    bench_opts o;
    parse_args(argc, argv, &o);
    ds4_error err = {{0}};
    if (check_opts(&o, &err) != 0) {
        fprintf(stderr, "ds4cl-bench: %s\n", err.msg);
        return 1;
    }
    bench b;
    int rc = bench_open(&b, &o, &err);
    if (rc == 0) rc = run(&b, &err);
    ds4_error cerr = {{0}};
    if (bench_close(&b, &cerr) != 0 && rc == 0) {
        err = cerr;
        rc = -1;
    }
    if (rc != 0) {
        fprintf(stderr, "ds4cl-bench: %s\n", err.msg);
        return 1;
    }
    return 0;
}
