/* cli.c - the `ds4cl` program: one-shot generation, the interactive chat
 * REPL and the diagnostics.
 *
 * Modes, picked by the flags: --list-devices; --info (model and weight plan,
 * without running anything); --tokens (teacher-forced ids, optional
 * --dump-logits); --dump-tokens (tokenize -p exactly as written and exit);
 * --dump-logprobs (greedy continuation as JSON); -p / --prompt-file (one
 * chat turn); otherwise the REPL.
 *
 * Model: -m FILE, else --demo, else $DS4CL_MODEL, ds4flash.gguf or
 * gguf/ds4flash.gguf, else gguf/demo.gguf (random weights with the real
 * tokenizer), else the embedded demo model (a tiny random model written to
 * a temporary file, unlinked once mapped); a one-line note says which demo.
 *
 * A conversation (struct convo) is the list of turns plus one engine
 * session and the exact tokens that session holds (`live`).  Each turn the
 * whole conversation is rendered by chat.c (the official template, which
 * drops earlier reasoning) and tokenized; the session is then synced to
 * those tokens: when `live` is a prefix only the suffix is prefilled, else
 * the session is rewound to a snapshot taken just before the previous
 * turn's assistant opener (the point where a re-rendered history can first
 * differ from what was generated), else to an empty snapshot.  Prefill runs
 * in slices so a progress bar can move and Ctrl+C can stop it.
 *
 * Sampling: the flags apply in every mode, as in ds4's CLI (the fixed
 * thinking-mode settings of sampler.h are for API servers, where clients
 * send knobs the model's makers say to ignore); --ignore-eos masks EOS.
 *
 * Output: tokens are streamed through the tokenizer's UTF-8-safe
 * detokenizer; the reasoning (between <think> and </think>) is grey on a
 * terminal, and on a pipe is printed between its tags as the model wrote
 * it.  EOS ends a turn.  Ctrl+C sets a flag (the one piece of global state:
 * a signal handler has nowhere else to write) checked between tokens and
 * prefill slices; the REPL returns to its prompt, one-shot runs exit 130.
 *
 * Every failure prints one line "ds4cl: <what went wrong>" and exits 1; a
 * bad command line prints a message (and the usage for an unknown flag)
 * and exits 2.  Nothing here touches OpenCL beyond the runtime's API.
 */
#include <errno.h>
#include <fcntl.h>
#include <histedit.h>
#include <inttypes.h>
#include <math.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "chat.h"
#include "engine.h"
#include "gguf.h"
#include "model.h"
#include "runtime.h"
#include "sampler.h"
#include "testmodel.h"
#include "tokenizer.h"

#define DS4CL_VERSION "0.1.0"
#define DEFAULT_CTX 32768u
#define MIN_AUTO_CTX 1024u        /* the automatic context never shrinks below this */
#define DEFAULT_N_PREDICT 50000u  /* as ds4; always capped by the context room */
#define DEFAULT_SYSTEM "You are a helpful assistant"
#define DEFAULT_LOGPROBS_K 20u
#define MAX_LOGPROBS_K 128u
#define PREFILL_SLICE 256u        /* tokens per progress/interrupt check */
#define HISTORY_MAX 512
#define GREY "\x1b[90m"
#define RESET "\x1b[0m"

/* Where a downloaded model is looked for when neither -m nor $DS4CL_MODEL is given. */
static const char *const default_models[] = {"ds4flash.gguf", "gguf/ds4flash.gguf"};
#define DEMO_GGUF "gguf/demo.gguf"

/* ---------------------------------------------------------------------- */
/* Ctrl+C                                                                 */
/* ---------------------------------------------------------------------- */

static volatile sig_atomic_t g_interrupted;

static void on_sigint(int sig) {
    (void)sig;
    g_interrupted = 1;
}

/* No SA_RESTART: a Ctrl+C at the line editor makes el_gets return. */
static void install_sigint(void) {
    struct sigaction sa;
    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = on_sigint;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, NULL);
}

static bool interrupted(void) { return g_interrupted != 0; }
static void clear_interrupt(void) { g_interrupted = 0; }

/* ---------------------------------------------------------------------- */
/* Options                                                                */
/* ---------------------------------------------------------------------- */

typedef struct cli_opts {
    const char *model;
    const char *device;
    const char *kernel_dir;
    const char *weights;  /* auto | map | copy */
    uint64_t max_alloc;   /* bytes; 0 = the device's */
    const char *tokens;   /* --tokens "0,17,42" */
    const char *dump_logits;
    uint32_t ctx;         /* 0: not given */
    uint32_t chunk;       /* prefill chunk; 0: engine default */
    bool no_quant_sim;
    bool info;
    bool list_devices;
    bool demo;
    bool verbose;
    /* generation */
    const char *prompt;
    const char *prompt_file;
    const char *system;
    uint32_t n_predict;
    ds4_sampler_params sp;
    bool seed_set;
    enum ds4_think_mode think;
    bool dump_tokens;
    bool ignore_eos;
    const char *dump_logprobs;
    uint32_t logprobs_k;
} cli_opts;

static void usage(FILE *fp) {
    fprintf(fp,
            "usage: ds4cl [options]            chat interactively (no prompt given)\n"
            "       ds4cl [options] -p TEXT    answer one prompt\n"
            "  -m, --model FILE       DeepSeek V4 Flash GGUF (default: $DS4CL_MODEL, else ds4flash.gguf or\n"
            "                         gguf/ds4flash.gguf, else gguf/demo.gguf, else the embedded demo model)\n"
            "      --demo             use the embedded demo model (a tiny random deepseek4 model)\n"
            "  -p, --prompt TEXT      one-shot prompt (text starting with <｜begin▁of▁sentence｜> is taken\n"
            "                         as an already rendered chat)\n"
            "      --prompt-file FILE read the one-shot prompt from FILE\n"
            "  -sys, --system TEXT    system prompt (default \"" DEFAULT_SYSTEM "\"; \"\" for none)\n"
            "  -c, --ctx N            context size in tokens (default 32768, capped to the model; with\n"
            "                         --tokens: fits the tokens)\n"
            "  -n, --predict N        most tokens to generate per turn (default 50000, capped to the context)\n"
            "      --temp F           temperature, 0 = greedy (default 1)\n"
            "      --top-p F          nucleus sampling mass (default 1 = off)\n"
            "      --top-k N          sample among the N most likely tokens (default 0 = off)\n"
            "      --min-p F          drop tokens below F times the most likely one (default 0.05)\n"
            "      --seed N           sampling seed (default: from the clock)\n"
            "      --ignore-eos       never sample the end-of-sentence token (generate exactly -n tokens)\n"
            "      --think            reason before answering (default)\n"
            "      --think-max        Think Max (needs --ctx >= 393216, else normal thinking)\n"
            "      --nothink          answer directly\n"
            "      --dump-tokens      print the token ids of -p exactly as written (special strings\n"
            "                         recognised) and exit\n"
            "      --dump-logprobs FILE  write a greedy continuation with top logprobs as JSON\n"
            "      --logprobs-top-k K alternatives per step in --dump-logprobs (default 20, max 128)\n"
            "      --info             print the model's architecture, tensors and weight memory plan, then exit\n"
            "      --list-devices     list the OpenCL devices and exit\n"
            "      --device N|NAME    OpenCL device by index or name substring (default: $DS4CL_DEVICE, else\n"
            "                         the first GPU, else the first device)\n"
            "      --weights MODE     auto | map (zero-copy on the file mapping) | copy (device buffers)\n"
            "      --max-alloc MIB    cap each weight buffer below the device's largest allocation\n"
            "      --tokens IDS       evaluate these comma-separated token ids teacher-forced\n"
            "      --dump-logits FILE write the float32 logits [n_tokens x vocab] of --tokens to FILE\n"
            "      --chunk N          prefill chunk size in tokens (default 256 on CPUs, 2048 on GPUs)\n"
            "      --no-quant-sim     exact f32 KV: no FP8 KV / FP4 indexer simulation, no f16 raw KV\n"
            "      --kernel-dir DIR   read the OpenCL kernels from DIR instead of the embedded copy\n"
            "                         (also $DS4CL_KERNEL_DIR)\n"
            "  -v, --verbose          log device and plan decisions; tokens per second after each turn\n"
            "  -h, --help             this text\n"
            "      --version          print the version\n"
            "REPL commands: /help /think /think-max /nothink /ctx N /n N /read FILE /quit\n"
            "Environment: DS4CL_MODEL, DS4CL_DEVICE, DS4CL_KERNEL_DIR, DS4CL_HISTORY (REPL history file,\n"
            "default ~/.ds4cl_history; empty for none)\n");
}

/* Parse a positive integer (decimal) or fail. */
static int parse_u64(const char *s, uint64_t *out) {
    if (!s || !*s) return -1;
    char *end = NULL;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno || *end || s[0] == '-' || v == 0) return -1;
    *out = v;
    return 0;
}

/* Parse a non-negative integer (0 allowed). */
static int parse_u64_zero(const char *s, uint64_t *out) {
    if (s && strcmp(s, "0") == 0) {
        *out = 0;
        return 0;
    }
    return parse_u64(s, out);
}

/* Parse a float in [lo, hi]. */
static int parse_float(const char *s, float lo, float hi, float *out) {
    if (!s || !*s) return -1;
    char *end = NULL;
    errno = 0;
    float v = strtof(s, &end);
    if (errno || *end || !(v >= lo && v <= hi)) return -1;
    *out = v;
    return 0;
}

static bool is_flag(const char *a, const char *shrt, const char *lng) {
    return (shrt && strcmp(a, shrt) == 0) || (lng && strcmp(a, lng) == 0);
}

static bool flag_takes_value(const char *a) {
    static const char *const with_value[] = {
        "-m",      "--model",  "--device", "--kernel-dir",  "--weights",       "--max-alloc",      "--tokens",
        "--dump-logits", "--ctx", "-c",    "--chunk",       "-p",              "--prompt",         "--prompt-file",
        "-sys",    "--system", "-n",       "--predict",     "--temp",          "--top-p",          "--top-k",
        "--min-p", "--seed",   "--dump-logprobs", "--logprobs-top-k"};
    for (size_t i = 0; i < sizeof(with_value) / sizeof(with_value[0]); i++)
        if (strcmp(a, with_value[i]) == 0) return true;
    return false;
}

/* One flag with its value: 0 ok, 2 usage error (message printed). */
static int parse_one(cli_opts *o, const char *a, const char *val) {
    uint64_t v = 0;
    if (is_flag(a, "-m", "--model")) o->model = val;
    else if (is_flag(a, NULL, "--device")) o->device = val;
    else if (is_flag(a, NULL, "--kernel-dir")) o->kernel_dir = val;
    else if (is_flag(a, NULL, "--weights")) {
        if (strcmp(val, "auto") && strcmp(val, "map") && strcmp(val, "copy")) {
            fprintf(stderr, "ds4cl: --weights takes auto, map or copy, not '%s'\n", val);
            return 2;
        }
        o->weights = val;
    } else if (is_flag(a, NULL, "--max-alloc")) {
        if (parse_u64(val, &v) != 0 || v > ((uint64_t)1 << 24)) {
            fprintf(stderr, "ds4cl: --max-alloc takes a positive number of MiB, not '%s'\n", val);
            return 2;
        }
        o->max_alloc = v << 20;
    } else if (is_flag(a, "-c", "--ctx") || is_flag(a, NULL, "--chunk") || is_flag(a, "-n", "--predict")) {
        if (parse_u64(val, &v) != 0 || v > (1u << 30)) {
            fprintf(stderr, "ds4cl: %s takes a positive number, not '%s'\n", a, val);
            return 2;
        }
        if (is_flag(a, "-c", "--ctx")) o->ctx = (uint32_t)v;
        else if (is_flag(a, NULL, "--chunk")) o->chunk = (uint32_t)v;
        else o->n_predict = (uint32_t)v;
    } else if (is_flag(a, NULL, "--logprobs-top-k")) {
        if (parse_u64(val, &v) != 0 || v > MAX_LOGPROBS_K) {
            fprintf(stderr, "ds4cl: --logprobs-top-k takes 1..%u, not '%s'\n", MAX_LOGPROBS_K, val);
            return 2;
        }
        o->logprobs_k = (uint32_t)v;
    } else if (is_flag(a, NULL, "--top-k")) {
        if (parse_u64_zero(val, &v) != 0 || v > UINT32_MAX) {
            fprintf(stderr, "ds4cl: --top-k takes a number >= 0, not '%s'\n", val);
            return 2;
        }
        o->sp.top_k = (uint32_t)v;
    } else if (is_flag(a, NULL, "--seed")) {
        if (parse_u64_zero(val, &v) != 0) {
            fprintf(stderr, "ds4cl: --seed takes a number >= 0, not '%s'\n", val);
            return 2;
        }
        o->sp.seed = v;
        o->seed_set = true;
    } else if (is_flag(a, NULL, "--temp")) {
        if (parse_float(val, 0.0f, 100.0f, &o->sp.temperature) != 0) {
            fprintf(stderr, "ds4cl: --temp takes a number in [0, 100], not '%s'\n", val);
            return 2;
        }
    } else if (is_flag(a, NULL, "--top-p")) {
        if (parse_float(val, 0.0f, 1.0f, &o->sp.top_p) != 0 || o->sp.top_p == 0.0f) {
            fprintf(stderr, "ds4cl: --top-p takes a number in (0, 1], not '%s'\n", val);
            return 2;
        }
    } else if (is_flag(a, NULL, "--min-p")) {
        if (parse_float(val, 0.0f, 1.0f, &o->sp.min_p) != 0) {
            fprintf(stderr, "ds4cl: --min-p takes a number in [0, 1], not '%s'\n", val);
            return 2;
        }
    } else if (is_flag(a, NULL, "--tokens")) o->tokens = val;
    else if (is_flag(a, NULL, "--dump-logits")) o->dump_logits = val;
    else if (is_flag(a, "-p", "--prompt")) o->prompt = val;
    else if (is_flag(a, NULL, "--prompt-file")) o->prompt_file = val;
    else if (is_flag(a, "-sys", "--system")) o->system = val;
    else if (is_flag(a, NULL, "--dump-logprobs")) o->dump_logprobs = val;
    else if (is_flag(a, NULL, "--no-quant-sim")) o->no_quant_sim = true;
    else if (is_flag(a, NULL, "--info")) o->info = true;
    else if (is_flag(a, NULL, "--list-devices")) o->list_devices = true;
    else if (is_flag(a, NULL, "--demo")) o->demo = true;
    else if (is_flag(a, NULL, "--dump-tokens")) o->dump_tokens = true;
    else if (is_flag(a, NULL, "--ignore-eos")) o->ignore_eos = true;
    else if (is_flag(a, NULL, "--think")) o->think = DS4_THINK_HIGH;
    else if (is_flag(a, NULL, "--think-max")) o->think = DS4_THINK_MAX;
    else if (is_flag(a, NULL, "--nothink")) o->think = DS4_THINK_NONE;
    else if (is_flag(a, "-v", "--verbose")) o->verbose = true;
    else {
        fprintf(stderr, "ds4cl: unknown option '%s'\n", a);
        usage(stderr);
        return 2;
    }
    return 0;
}

/* Checks across flags: 0 ok, 2 usage error. */
static int check_opts(const cli_opts *o) {
    const char *clash = NULL;
    if (o->demo && o->model) clash = "--demo and --model exclude each other";
    else if (o->dump_logits && !o->tokens) clash = "--dump-logits needs --tokens";
    else if (o->prompt && o->prompt_file) clash = "-p and --prompt-file exclude each other";
    else if (o->dump_tokens && !o->prompt && !o->prompt_file) clash = "--dump-tokens needs -p or --prompt-file";
    else if (o->dump_logprobs && !o->prompt && !o->prompt_file) clash = "--dump-logprobs needs -p or --prompt-file";
    else if (o->tokens && (o->prompt || o->prompt_file)) clash = "--tokens and a prompt exclude each other";
    if (clash) {
        fprintf(stderr, "ds4cl: %s\n", clash);
        return 2;
    }
    return 0;
}

/* Returns 0 to continue, 1 to exit 0 (help/version), 2 on a usage error. */
static int parse_args(int argc, char **argv, cli_opts *o) {
    memset(o, 0, sizeof(*o));
    o->weights = "auto";
    o->system = DEFAULT_SYSTEM;
    o->n_predict = DEFAULT_N_PREDICT;
    o->think = DS4_THINK_HIGH;
    o->logprobs_k = DEFAULT_LOGPROBS_K;
    ds4_sampler_default_params(&o->sp);
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (strcmp(a, "-h") == 0 || strcmp(a, "--help") == 0) {
            usage(stdout);
            return 1;
        }
        if (strcmp(a, "--version") == 0) {
            printf("ds4cl %s\n", DS4CL_VERSION);
            return 1;
        }
        const char *val = NULL;
        if (flag_takes_value(a)) {
            if (i + 1 >= argc) {
                fprintf(stderr, "ds4cl: %s needs a value\n", a);
                return 2;
            }
            val = argv[++i];
        }
        int rc = parse_one(o, a, val);
        if (rc != 0) return rc;
    }
    return check_opts(o);
}

/* ---------------------------------------------------------------------- */
/* Small utilities                                                        */
/* ---------------------------------------------------------------------- */

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* A growable byte string, always NUL terminated once non-empty. */
typedef struct strbuf {
    char *p;
    size_t len, cap;
} strbuf;

static int sb_add(strbuf *b, const char *s, size_t n, ds4_error *err) {
    if (b->len + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap < b->len + n + 1) cap *= 2;
        char *p = realloc(b->p, cap);
        if (!p) return ds4_fail(err, "out of memory");
        b->p = p;
        b->cap = cap;
    }
    if (n) memcpy(b->p + b->len, s, n);
    b->len += n;
    b->p[b->len] = '\0';
    return 0;
}

static void sb_free(strbuf *b) {
    free(b->p);
    memset(b, 0, sizeof(*b));
}

/* Whole file into *out (NUL terminated). */
static int read_file(const char *path, strbuf *out, ds4_error *err) {
    FILE *fp = fopen(path, "rb");
    if (!fp) return ds4_fail(err, "cannot read %s: %s", path, strerror(errno));
    char buf[65536];
    size_t n;
    int rc = sb_add(out, "", 0, err);
    while (rc == 0 && (n = fread(buf, 1, sizeof(buf), fp)) > 0) rc = sb_add(out, buf, n, err);
    if (rc == 0 && ferror(fp)) rc = ds4_fail(err, "reading %s: %s", path, strerror(errno));
    fclose(fp);
    return rc;
}

/* ---------------------------------------------------------------------- */
/* Model choice                                                           */
/* ---------------------------------------------------------------------- */

/* Write the demo model to a temporary file (the caller unlinks it once the
 * model is mapped), so it goes through exactly the path a real model does. */
static int write_demo(char *path, size_t cap, ds4_error *err) {
    ds4_testmodel_opts o;
    ds4_testmodel_default_opts(&o);
    const char *tmpdir = getenv("TMPDIR");
    snprintf(path, cap, "%s/ds4cl-demo-XXXXXX", tmpdir && *tmpdir ? tmpdir : "/tmp");
    int fd = mkstemp(path);
    if (fd < 0) return ds4_fail(err, "cannot create a temporary file for the demo model: %s", strerror(errno));
    close(fd);
    if (ds4_testmodel_write(&o, path, err) != 0) {
        unlink(path);
        return ds4_fail_wrap(err, "demo model");
    }
    return 0;
}

/* The model path to use: demo_path is set (and must be unlinked once the
 * file is mapped) when the embedded demo model was written out. */
static int pick_model(const cli_opts *o, const char **path, char *demo_path, size_t cap, ds4_error *err) {
    *path = o->model;
    demo_path[0] = '\0';
    if (!*path && !o->demo) {
        const char *env = getenv("DS4CL_MODEL");
        if (env && *env) *path = env;
        for (size_t i = 0; !*path && i < sizeof(default_models) / sizeof(default_models[0]); i++)
            if (access(default_models[i], R_OK) == 0) *path = default_models[i];
        if (!*path && access(DEMO_GGUF, R_OK) == 0) {
            *path = DEMO_GGUF;
            fprintf(stderr, "ds4cl: no gguf/ds4flash.gguf: using " DEMO_GGUF
                            " (random weights, real tokenizer: its output is noise)\n");
        }
        if (!*path && !o->info)
            fprintf(stderr, "ds4cl: no model file found: using the embedded demo model (random weights: "
                            "its output is noise)\n");
    }
    if (*path) return 0;
    if (write_demo(demo_path, cap, err) != 0) return -1;
    *path = demo_path;
    return 0;
}

/* ---------------------------------------------------------------------- */
/* Load progress                                                          */
/* ---------------------------------------------------------------------- */

/* The engine maps the file and reads (or pins) every weight page while it
 * loads; a watcher thread maps the same file and reports the share of its
 * pages that are resident in the page cache (mincore) as a progress bar on
 * stderr.  Only for files of 1 GiB or more, only on a terminal, and only
 * after half a second (a cached model loads without a bar). */
typedef struct load_watch {
    pthread_t th;
    atomic_int done;
    bool running;
    void *map;
    uint64_t size;
} load_watch;

static void draw_bar(const char *what, double frac, const char *tail) {
    const int width = 30;
    int fill = (int)(frac * width + 0.5);
    if (fill > width) fill = width;
    char bar[64];
    for (int i = 0; i < width; i++) bar[i] = i < fill ? '#' : '.';
    bar[width] = '\0';
    fprintf(stderr, "\r%s [%s] %3d%% %s\x1b[K", what, bar, (int)(frac * 100 + 0.5), tail ? tail : "");
    fflush(stderr);
}

static void clear_bar(void) {
    fputs("\r\x1b[K", stderr);
    fflush(stderr);
}

static double resident_share(const load_watch *w) {
    const uint64_t page = (uint64_t)sysconf(_SC_PAGESIZE), span = (uint64_t)1 << 30;
    static const uint64_t vec_cap = ((uint64_t)1 << 30) / 4096;
    unsigned char *vec = malloc(vec_cap);
    if (!vec) return 0.0;
    uint64_t resident = 0, pages = 0;
    for (uint64_t off = 0; off < w->size; off += span) {
        uint64_t len = w->size - off < span ? w->size - off : span;
        uint64_t n = (len + page - 1) / page;
        if (n > vec_cap || mincore((char *)w->map + off, len, vec) != 0) break;
        for (uint64_t i = 0; i < n; i++) resident += vec[i] & 1;
        pages += n;
    }
    free(vec);
    return pages ? (double)resident / (double)pages : 0.0;
}

static void *watch_main(void *arg) {
    load_watch *w = arg;
    double t0 = now_s();
    bool shown = false;
    while (!atomic_load(&w->done)) {
        struct timespec ts = {0, 100 * 1000 * 1000};
        nanosleep(&ts, NULL);
        if (now_s() - t0 < 0.5 || atomic_load(&w->done)) continue;
        draw_bar("loading model", resident_share(w), NULL);
        shown = true;
    }
    if (shown) clear_bar();
    return NULL;
}

static void watch_start(load_watch *w, const char *path) {
    memset(w, 0, sizeof(*w));
    if (!isatty(STDERR_FILENO)) return;
    int fd = open(path, O_RDONLY);
    struct stat st;
    if (fd < 0) return;
    if (fstat(fd, &st) == 0 && (uint64_t)st.st_size >= ((uint64_t)1 << 30)) {
        w->size = (uint64_t)st.st_size;
        w->map = mmap(NULL, w->size, PROT_READ, MAP_SHARED, fd, 0);
        if (w->map == MAP_FAILED) w->map = NULL;
    }
    close(fd);
    if (!w->map) return;
    atomic_init(&w->done, 0);
    w->running = pthread_create(&w->th, NULL, watch_main, w) == 0;
    if (!w->running) munmap(w->map, w->size);
}

static void watch_stop(load_watch *w) {
    if (!w->running) return;
    atomic_store(&w->done, 1);
    pthread_join(w->th, NULL);
    munmap(w->map, w->size);
    w->running = false;
}

static int load_engine(const cli_opts *o, const char *path, ds4_engine **e, ds4_error *err) {
    ds4_engine_opts eo = {.model_path = path, .device = o->device, .kernel_dir = o->kernel_dir,
                          .weights = o->weights, .max_alloc = o->max_alloc, .no_quant_sim = o->no_quant_sim,
                          .prefill_chunk = o->chunk, .verbose = o->verbose};
    load_watch w;
    watch_start(&w, path);
    double t0 = now_s();
    int rc = ds4_engine_load(e, &eo, err);
    watch_stop(&w);
    if (rc == 0 && o->verbose)
        fprintf(stderr, "ds4cl: model loaded on %s in %.2f s\n", ds4_engine_device_name(*e), now_s() - t0);
    return rc;
}

/* ---------------------------------------------------------------------- */
/* --tokens and --info (diagnostics)                                      */
/* ---------------------------------------------------------------------- */

/* Parse "0,17,42" into *out (malloc'd). */
static int parse_tokens(const char *s, int32_t **out, uint32_t *n, ds4_error *err) {
    uint32_t cap = 1;
    for (const char *p = s; *p; p++) cap += *p == ',';
    int32_t *ids = malloc(sizeof(int32_t) * cap);
    if (!ids) return ds4_fail(err, "out of memory");
    uint32_t count = 0;
    const char *p = s;
    for (;;) {
        char *end = NULL;
        errno = 0;
        long v = strtol(p, &end, 10);
        if (end == p || errno || v < INT32_MIN || v > INT32_MAX || (*end != ',' && *end != '\0')) {
            free(ids);
            return ds4_fail(err, "--tokens: '%s' is not a comma-separated list of integers", s);
        }
        ids[count++] = (int32_t)v;
        if (*end == '\0') break;
        p = end + 1;
    }
    *out = ids;
    *n = count;
    return 0;
}

/* Write n floats to path atomically (path.tmp, then rename). */
static int write_floats(const char *path, const float *v, uint64_t n, ds4_error *err) {
    char tmp[4200];
    snprintf(tmp, sizeof(tmp), "%s.tmp", path);
    FILE *fp = fopen(tmp, "wb");
    if (!fp) return ds4_fail(err, "cannot write %s: %s", tmp, strerror(errno));
    int ok = fwrite(v, sizeof(float), n, fp) == n;
    ok = (fclose(fp) == 0) && ok;
    if (!ok || rename(tmp, path) != 0) {
        remove(tmp);
        return ds4_fail(err, "writing %s failed: %s", path, strerror(errno));
    }
    return 0;
}

/* --tokens: evaluate teacher-forced, optionally dump all logits. */
static int run_tokens(const cli_opts *o, const char *path, ds4_error *err) {
    int32_t *ids = NULL;
    uint32_t n = 0;
    if (parse_tokens(o->tokens, &ids, &n, err) != 0) return -1;
    ds4_engine *e = NULL;
    ds4_session *s = NULL;
    float *logits = NULL;
    int rc = load_engine(o, path, &e, err);
    if (rc == 0) rc = ds4_session_new(e, o->ctx ? o->ctx : n, &s, err);
    uint64_t V = rc == 0 ? ds4_engine_model(e)->hp.n_vocab : 0;
    if (rc == 0 && o->dump_logits) {
        logits = malloc((size_t)n * V * sizeof(float));
        if (!logits) rc = ds4_fail(err, "out of memory for %u x %llu logits", n, (unsigned long long)V);
    }
    double t0 = now_s();
    if (rc == 0) rc = ds4_session_eval(s, ids, n, logits, err);
    double dt = now_s() - t0;
    if (rc == 0 && o->dump_logits) rc = write_floats(o->dump_logits, logits, (uint64_t)n * V, err);
    int32_t best = 0;
    if (rc == 0) rc = ds4_argmax(ds4_session_logits(s), (uint32_t)V, &best, err);
    if (rc == 0)
        fprintf(stderr, "ds4cl: %u tokens on %s in %.3f s (%.1f tokens/s); next-token argmax %d\n", n,
                ds4_engine_device_name(e), dt, dt > 0 ? n / dt : 0.0, best);
    free(logits);
    ds4_session_free(s);
    ds4_engine_free(e);
    free(ids);
    return rc;
}

/* --info: architecture, tensors and the weight plan, without running. */
static int run_info(const cli_opts *o, const char *path, bool demo, ds4_error *err) {
    gguf_file file = {0};
    int orc = gguf_open(&file, path, err);
    if (demo) unlink(path);
    if (orc != 0) return ds4_fail_wrap(err, "%s", demo ? "demo model" : path);
    int rc = -1;
    ds4_model *model = calloc(1, sizeof(*model));
    ds4_runtime rt;
    bool rt_open = false;
    ds4_weight_plan plan = {0};
    if (!model) {
        ds4_fail(err, "out of memory");
        goto done;
    }
    if (ds4_model_bind(model, &file, err) != 0) {
        ds4_fail_wrap(err, "%s", demo ? "demo model" : path);
        goto done;
    }
    printf("file: %s\n", demo ? "(embedded demo model: random weights, generated at start)" : path);
    ds4_model_print_info(model, stdout);
    fflush(stdout);
    ds4_runtime_opts ro = {.device = o->device, .kernel_dir = o->kernel_dir, .verbose = o->verbose};
    if (ds4_runtime_open(&rt, &ro, err) != 0) goto done;
    rt_open = true;
    bool zero_copy = strcmp(o->weights, "map") == 0 || (strcmp(o->weights, "auto") == 0 && rt.dev.host_unified);
    uint64_t max_span = rt.dev.max_alloc;
    if (o->max_alloc && o->max_alloc < max_span) max_span = o->max_alloc;
    if (ds4_weights_plan(&plan, &file, max_span, zero_copy, err) != 0) goto done;
    printf("device: [%d] %s / %s\n", rt.dev.index, rt.dev.platform_name, rt.dev.name);
    ds4_weights_print(&plan, stdout);
    rc = 0;
done:
    ds4_weights_free(&plan);
    if (rt_open) ds4_runtime_close(&rt);
    free(model);
    gguf_close(&file);
    return rc;
}

/* ---------------------------------------------------------------------- */
/* The program state for generation                                       */
/* ---------------------------------------------------------------------- */

typedef struct app {
    const cli_opts *o;
    ds4_engine *e;
    ds4_tokenizer *tok;
    ds4_sampler smp;
    bool smp_ready;
    float *masked;          /* --ignore-eos: the logits with EOS at -inf */
    uint32_t n_predict;     /* -n, changed by /n */
    uint32_t n_vocab;
    uint32_t max_ctx;       /* the model's trained context (cap for --ctx) */
    int32_t eos, think, think_end;
    bool out_tty, err_tty;
} app;

typedef struct turn {
    enum ds4_chat_role role;
    char *content;
    char *reasoning;
} turn;

/* A conversation on one session; see the comment at the top of the file. */
typedef struct convo {
    turn *turns;
    size_t n_turns, cap_turns;
    enum ds4_think_mode think;  /* as asked; Think Max is gated by ctx */
    ds4_session *s;
    uint32_t ctx;
    ds4_tokens live;            /* tokens the session holds, in order */
    uint8_t *empty;             /* snapshot at position 0 */
    uint64_t empty_size;
    uint8_t *snap;              /* snapshot at position snap_toks.n */
    uint64_t snap_size;
    ds4_tokens snap_toks;
} convo;

typedef struct turn_stats {
    uint32_t prompt_tokens, prefilled, generated;
    double prefill_s, decode_s;
    bool interrupted, eos;
} turn_stats;

static enum ds4_think_mode effective_think(enum ds4_think_mode m, uint32_t ctx) {
    return m == DS4_THINK_MAX && ctx < DS4_THINK_MAX_MIN_CTX ? DS4_THINK_HIGH : m;
}

static void warn_think_max(enum ds4_think_mode m, uint32_t ctx, const char *what) {
    if (m == DS4_THINK_MAX && ctx < DS4_THINK_MAX_MIN_CTX)
        fprintf(stderr, "ds4cl: warning: %s needs a context of at least %u tokens; ctx=%u uses normal thinking\n",
                what, DS4_THINK_MAX_MIN_CTX, ctx);
}

static int app_open(app *a, const cli_opts *o, const char *path, ds4_error *err) {
    memset(a, 0, sizeof(*a));
    a->o = o;
    a->out_tty = isatty(STDOUT_FILENO);
    a->err_tty = isatty(STDERR_FILENO);
    if (load_engine(o, path, &a->e, err) != 0) return -1;
    const ds4_model *m = ds4_engine_model(a->e);
    a->n_vocab = m->hp.n_vocab;
    a->max_ctx = m->hp.n_ctx_train && m->hp.n_ctx_train < (1u << 30) ? (uint32_t)m->hp.n_ctx_train : (1u << 30);
    if (ds4_tokenizer_load(&a->tok, m->file, err) != 0) return ds4_fail_wrap(err, "%s: tokenizer", path);
    a->eos = ds4_tokenizer_special(a->tok, DS4_TOK_EOS);
    a->think = ds4_tokenizer_special(a->tok, DS4_TOK_THINK);
    a->think_end = ds4_tokenizer_special(a->tok, DS4_TOK_THINK_END);
    ds4_sampler_params sp = o->sp;
    if (!o->seed_set) sp.seed = (uint64_t)time(NULL) ^ ((uint64_t)getpid() << 32) ^ (uint64_t)clock();
    if (o->verbose) fprintf(stderr, "ds4cl: sampling seed %" PRIu64 "\n", sp.seed);
    if (ds4_sampler_init(&a->smp, &sp, a->n_vocab, err) != 0) return -1;
    a->smp_ready = true;
    a->n_predict = o->n_predict;
    if (o->ignore_eos && !(a->masked = malloc(sizeof(float) * a->n_vocab))) return ds4_fail(err, "out of memory");
    return 0;
}

static void app_close(app *a) {
    if (a->smp_ready) ds4_sampler_free(&a->smp);
    free(a->masked);
    if (a->tok) ds4_tokenizer_free(a->tok);
    if (a->e) ds4_engine_free(a->e);
    memset(a, 0, sizeof(*a));
}

/* ---------------------------------------------------------------------- */
/* Conversation                                                           */
/* ---------------------------------------------------------------------- */

static int convo_add(convo *c, enum ds4_chat_role role, const char *content, size_t content_len,
                     const char *reasoning, size_t reasoning_len, ds4_error *err) {
    if (c->n_turns == c->cap_turns) {
        size_t cap = c->cap_turns ? c->cap_turns * 2 : 8;
        turn *t = realloc(c->turns, cap * sizeof(*t));
        if (!t) return ds4_fail(err, "out of memory");
        c->turns = t;
        c->cap_turns = cap;
    }
    turn *t = &c->turns[c->n_turns];
    t->role = role;
    t->content = strndup(content ? content : "", content ? content_len : 0);
    t->reasoning = reasoning ? strndup(reasoning, reasoning_len) : NULL;
    if (!t->content || (reasoning && !t->reasoning)) {
        free(t->content);
        free(t->reasoning);
        return ds4_fail(err, "out of memory");
    }
    c->n_turns++;
    return 0;
}

static void convo_pop(convo *c) {
    if (!c->n_turns) return;
    c->n_turns--;
    free(c->turns[c->n_turns].content);
    free(c->turns[c->n_turns].reasoning);
}

static void convo_drop_snap(convo *c) {
    free(c->snap);
    c->snap = NULL;
    c->snap_size = 0;
    c->snap_toks.n = 0;
}

/* (Re)create the session for ctx tokens; the conversation is kept and the
 * next turn prefills it from the start. */
static int convo_set_ctx(app *a, convo *c, uint32_t ctx, ds4_error *err) {
    ds4_session_free(c->s);
    c->s = NULL;
    free(c->empty);
    c->empty = NULL;
    convo_drop_snap(c);
    c->live.n = 0;
    if (ds4_session_new(a->e, ctx, &c->s, err) != 0) return -1;
    c->ctx = ctx;
    if (ds4_session_save(c->s, &c->empty, &c->empty_size, err) != 0) return -1;
    if (a->o->verbose)
        fprintf(stderr, "ds4cl: context %u tokens, %.1f MiB of device memory\n", ctx,
                (double)ds4_session_device_bytes(c->s) / (1024.0 * 1024.0));
    return 0;
}

/* The context to use: --ctx, else 32768; capped to the model's trained
 * context; an automatic size halves while the device refuses it. */
static int convo_open(app *a, convo *c, ds4_error *err) {
    memset(c, 0, sizeof(*c));
    c->think = a->o->think;
    uint32_t ctx = a->o->ctx ? a->o->ctx : DEFAULT_CTX;
    if (ctx > a->max_ctx) {
        if (a->o->ctx)
            fprintf(stderr, "ds4cl: warning: --ctx %u is above the model's context of %u; using %u\n", ctx,
                    a->max_ctx, a->max_ctx);
        ctx = a->max_ctx;
    }
    while (convo_set_ctx(a, c, ctx, err) != 0) {
        if (a->o->ctx || ctx / 2 < MIN_AUTO_CTX) return -1;
        fprintf(stderr, "ds4cl: a context of %u tokens does not fit (%s); trying %u\n", ctx, err->msg, ctx / 2);
        ctx /= 2;
    }
    if (a->o->system && a->o->system[0])
        return convo_add(c, DS4_CHAT_SYSTEM, a->o->system, strlen(a->o->system), NULL, 0, err);
    return 0;
}

static void convo_close(convo *c) {
    while (c->n_turns) convo_pop(c);
    free(c->turns);
    ds4_session_free(c->s);
    free(c->empty);
    convo_drop_snap(c);
    ds4_tokens_free(&c->live);
    ds4_tokens_free(&c->snap_toks);
    memset(c, 0, sizeof(*c));
}

/* Render the conversation and tokenize it into *out. */
static int convo_render(app *a, const convo *c, ds4_tokens *out, ds4_error *err) {
    ds4_chat_msg *msgs = calloc(c->n_turns ? c->n_turns : 1, sizeof(*msgs));
    if (!msgs) return ds4_fail(err, "out of memory");
    for (size_t i = 0; i < c->n_turns; i++) {
        msgs[i].role = c->turns[i].role;
        msgs[i].content = c->turns[i].content;
        msgs[i].reasoning = c->turns[i].reasoning;
    }
    ds4_chat chat = {.msgs = msgs, .n_msgs = c->n_turns, .think = effective_think(c->think, c->ctx)};
    ds4_chat_prompt p = {0};
    int rc = ds4_chat_render(&chat, &p, err);
    out->n = 0;
    if (rc == 0) rc = ds4_chat_tokenize(a->tok, &p, out, err);
    ds4_chat_prompt_free(&p);
    free(msgs);
    return rc;
}

static bool tokens_prefix(const ds4_tokens *pre, uint32_t n, const ds4_tokens *of) {
    return n <= of->n && (n == 0 || memcmp(pre->ids, of->ids, (size_t)n * sizeof(int32_t)) == 0);
}

static int tokens_copy(ds4_tokens *dst, const int32_t *ids, uint32_t n, ds4_error *err) {
    dst->n = 0;
    for (uint32_t i = 0; i < n; i++)
        if (ds4_tokens_push(dst, ids[i], err) != 0) return -1;
    return 0;
}

/* Bring the session to the longest reusable prefix of prompt. */
static int convo_rewind(convo *c, const ds4_tokens *prompt, ds4_error *err) {
    if (tokens_prefix(&c->live, c->live.n, prompt)) return 0;
    if (c->snap && tokens_prefix(&c->snap_toks, c->snap_toks.n, prompt)) {
        if (ds4_session_restore(c->s, c->snap, c->snap_size, err) != 0) return -1;
        return tokens_copy(&c->live, c->snap_toks.ids, c->snap_toks.n, err);
    }
    if (ds4_session_restore(c->s, c->empty, c->empty_size, err) != 0) return -1;
    c->live.n = 0;
    return 0;
}

/* Evaluate prompt[live.n .. upto) in slices, drawing progress and
 * stopping early on Ctrl+C (returns 1 then). */
static int prefill_to(app *a, convo *c, const ds4_tokens *prompt, uint32_t upto, uint32_t total, uint32_t *done,
                      ds4_error *err) {
    const uint32_t slice = a->o->chunk > PREFILL_SLICE ? a->o->chunk : PREFILL_SLICE;
    const bool bar = a->err_tty && total > slice;
    double t0 = now_s();
    while (c->live.n < upto) {
        if (interrupted()) {
            if (bar) clear_bar();
            return 1;
        }
        uint32_t n = upto - c->live.n < slice ? upto - c->live.n : slice;
        if (ds4_session_eval(c->s, prompt->ids + c->live.n, n, NULL, err) != 0) {
            if (bar) clear_bar();
            c->live.n = 0; /* unknown state: the next turn starts over */
            ds4_session_restore(c->s, c->empty, c->empty_size, NULL);
            convo_drop_snap(c);
            return -1;
        }
        for (uint32_t i = 0; i < n; i++)
            if (ds4_tokens_push(&c->live, prompt->ids[c->live.n], err) != 0) return -1;
        *done += n;
        if (bar) {
            char tail[96];
            double dt = now_s() - t0;
            snprintf(tail, sizeof(tail), "%u/%u tokens, %.1f t/s", *done, total, dt > 0 ? *done / dt : 0.0);
            draw_bar("prefill", (double)*done / total, tail);
        }
    }
    if (bar) clear_bar();
    return 0;
}

/* Prefill all but the last token, snapshot there (the next turn's
 * history can first differ at the assistant opener), then the last one. */
static int prefill_snap(app *a, convo *c, const ds4_tokens *prompt, uint32_t total, uint32_t *done,
                        ds4_error *err) {
    if (prompt->n > c->live.n + 1) {
        int rc = prefill_to(a, c, prompt, prompt->n - 1, total, done, err);
        if (rc != 0) return rc;
        uint8_t *snap = NULL;
        uint64_t size = 0;
        if (ds4_session_save(c->s, &snap, &size, err) != 0) return -1;
        convo_drop_snap(c);
        c->snap = snap;
        c->snap_size = size;
        if (tokens_copy(&c->snap_toks, c->live.ids, c->live.n, err) != 0) return -1;
    }
    return prefill_to(a, c, prompt, prompt->n, total, done, err);
}

/* Sync the session to prompt (rewind, then prefill_snap).  Returns 1 if
 * interrupted; st gets the counts and time in every case. */
static int convo_prefill(app *a, convo *c, const ds4_tokens *prompt, turn_stats *st, ds4_error *err) {
    if (convo_rewind(c, prompt, err) != 0) return -1;
    st->prompt_tokens = prompt->n;
    uint32_t done = 0;
    double t0 = now_s();
    int rc = prefill_snap(a, c, prompt, prompt->n - c->live.n, &done, err);
    st->prefilled = done;
    st->prefill_s = now_s() - t0;
    if (rc == 0 && !ds4_session_logits(c->s)) return ds4_fail(err, "empty prompt");
    return rc;
}

/* ---------------------------------------------------------------------- */
/* Streaming output                                                       */
/* ---------------------------------------------------------------------- */

/* Prints generated tokens as they come and keeps the raw bytes of the
 * reasoning and of the answer for the conversation. */
typedef struct printer {
    const app *a;
    FILE *fp;
    bool color;       /* grey reasoning (stdout is a terminal) */
    bool in_think;
    bool grey_on;
    bool at_bol;      /* the last byte written was a newline (or nothing yet) */
    ds4_detok detok;
    strbuf reasoning, content;
} printer;

/* On a terminal, C0 control bytes other than newline and tab are shown as
 * their Unicode control pictures (U+2400 + byte, U+2421 for DEL): model
 * output must not be able to drive the terminal with escape sequences. */
static void pr_write(printer *p, const char *s, size_t n) {
    if (!n) return;
    if (p->in_think && p->color && !p->grey_on) {
        fputs(GREY, p->fp);
        p->grey_on = true;
    }
    size_t from = 0;
    for (size_t i = 0; p->color && i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if ((c >= 0x20 && c != 0x7f) || c == '\n' || c == '\t') continue;
        fwrite(s + from, 1, i - from, p->fp);
        unsigned cp = c == 0x7f ? 0x2421 : 0x2400 + c;
        fputc(0xe0 | (cp >> 12), p->fp);
        fputc(0x80 | ((cp >> 6) & 0x3f), p->fp);
        fputc(0x80 | (cp & 0x3f), p->fp);
        from = i + 1;
    }
    fwrite(s + from, 1, n - from, p->fp);
    p->at_bol = s[n - 1] == '\n';
}

static void pr_flush_detok(printer *p) {
    char buf[16];
    size_t n = ds4_detok_flush(&p->detok, buf, sizeof(buf));
    pr_write(p, buf, n);
}

static void pr_end_think(printer *p) {
    pr_flush_detok(p);
    if (p->grey_on) {
        fputs(RESET, p->fp);
        p->grey_on = false;
    }
    if (!p->color) pr_write(p, "</think>", 8);
    if (!p->at_bol) pr_write(p, "\n", 1);
    if (!p->color) pr_write(p, "\n", 1);
    p->in_think = false;
}

static void pr_begin(printer *p, const app *a, bool thinking) {
    memset(p, 0, sizeof(*p));
    p->a = a;
    p->fp = stdout;
    p->color = a->out_tty;
    p->at_bol = true;
    p->in_think = thinking;
    if (thinking && !p->color) pr_write(p, "<think>\n", 8);
}

static int pr_token(printer *p, int32_t id, ds4_error *err) {
    if (id == p->a->think_end && p->in_think) {
        pr_end_think(p);
        fflush(p->fp);
        return 0;
    }
    size_t len = 0;
    const char *bytes = ds4_token_bytes(p->a->tok, id, &len);
    if (!bytes) return ds4_fail(err, "generated token %d is outside the vocabulary", id);
    if (sb_add(p->in_think ? &p->reasoning : &p->content, bytes, len, err) != 0) return -1;
    char out[512];
    if (len + 8 <= sizeof(out)) {
        size_t n = ds4_detok_push(p->a->tok, &p->detok, id, out, sizeof(out));
        pr_write(p, out, n);
    } else {
        pr_flush_detok(p);
        pr_write(p, bytes, len);
    }
    fflush(p->fp);
    return 0;
}

static void pr_end(printer *p) {
    pr_flush_detok(p);
    if (p->grey_on) fputs(RESET, p->fp);
    p->grey_on = false;
    if (!p->at_bol) fputc('\n', p->fp);
    fflush(p->fp);
}

static void pr_free(printer *p) {
    sb_free(&p->reasoning);
    sb_free(&p->content);
}

/* ---------------------------------------------------------------------- */
/* Generation                                                             */
/* ---------------------------------------------------------------------- */

/* Sample, print and evaluate up to max_new tokens (EOS is not evaluated:
 * the next rendering appends it).  Returns 0 also when interrupted. */
static int generate(app *a, convo *c, uint32_t max_new, printer *p, turn_stats *st, ds4_error *err) {
    double t0 = now_s();
    int rc = 0;
    while (st->generated < max_new) {
        if (interrupted()) {
            st->interrupted = true;
            break;
        }
        int32_t id = -1;
        const float *logits = ds4_session_logits(c->s);
        if (a->masked) {
            memcpy(a->masked, logits, sizeof(float) * a->n_vocab);
            a->masked[a->eos] = -INFINITY;
            logits = a->masked;
        }
        rc = ds4_sampler_sample(&a->smp, logits, a->n_vocab, &id, err);
        if (rc != 0) break;
        if (id == a->eos) {
            st->eos = true;
            break;
        }
        if ((rc = pr_token(p, id, err)) != 0) break;
        if ((rc = ds4_session_eval(c->s, &id, 1, NULL, err)) != 0) break;
        if ((rc = ds4_tokens_push(&c->live, id, err)) != 0) break;
        st->generated++;
    }
    st->decode_s = now_s() - t0;
    return rc;
}

static void print_stats(const turn_stats *st) {
    fprintf(stderr, "ds4cl: prefill %u tokens (%u cached) in %.2f s, %.1f t/s; decode %u tokens in %.2f s, %.1f t/s\n",
            st->prefilled, st->prompt_tokens - st->prefilled, st->prefill_s,
            st->prefill_s > 0 ? st->prefilled / st->prefill_s : 0.0, st->generated, st->decode_s,
            st->decode_s > 0 ? st->generated / st->decode_s : 0.0);
}

/* One chat turn: add the user message, render, prefill, generate, and add
 * the answer (rolled back when nothing was generated).  Returns 0 (also
 * when interrupted: see st), -1 on an error (the user message is dropped). */
static int convo_turn(app *a, convo *c, const char *user, size_t user_len, turn_stats *st, ds4_error *err) {
    memset(st, 0, sizeof(*st));
    if (convo_add(c, DS4_CHAT_USER, user, user_len, NULL, 0, err) != 0) return -1;
    ds4_tokens prompt = {0};
    int rc = convo_render(a, c, &prompt, err);
    if (rc == 0 && prompt.n >= c->ctx)
        rc = ds4_fail(err, "the conversation needs %u tokens, more than the context of %u (use /ctx or --ctx)",
                      prompt.n + 1, c->ctx);
    if (rc == 0) rc = convo_prefill(a, c, &prompt, st, err);
    ds4_tokens_free(&prompt);
    if (rc != 0) {
        convo_pop(c);
        if (rc == 1) st->interrupted = true;
        return rc < 0 ? -1 : 0;
    }
    enum ds4_think_mode mode = effective_think(c->think, c->ctx);
    printer p;
    pr_begin(&p, a, mode != DS4_THINK_NONE);
    uint32_t room = c->ctx - ds4_session_pos(c->s);
    uint32_t max_new = a->n_predict < room ? a->n_predict : room;
    rc = generate(a, c, max_new, &p, st, err);
    pr_end(&p);
    if (rc == 0 && st->generated == 0 && st->interrupted) {
        convo_pop(c);
    } else if (rc == 0) {
        rc = convo_add(c, DS4_CHAT_ASSISTANT, p.content.p, p.content.len, mode != DS4_THINK_NONE ? p.reasoning.p : NULL,
                       p.reasoning.len, err);
    } else {
        convo_pop(c);
    }
    pr_free(&p);
    return rc;
}

/* ---------------------------------------------------------------------- */
/* One-shot, --dump-tokens, --dump-logprobs                                */
/* ---------------------------------------------------------------------- */

static bool is_rendered(const char *s) {
    const char *bos = ds4_special_text(DS4_TOK_BOS);
    return strncmp(s, bos, strlen(bos)) == 0;
}

static int load_prompt(const cli_opts *o, strbuf *out, ds4_error *err) {
    if (o->prompt_file) return read_file(o->prompt_file, out, err);
    return sb_add(out, o->prompt, strlen(o->prompt), err);
}

/* --dump-tokens: no engine, just the file's tokenizer. */
static int run_dump_tokens(const cli_opts *o, const char *path, bool demo, ds4_error *err) {
    strbuf text = {0};
    gguf_file file = {0};
    ds4_tokenizer *tok = NULL;
    ds4_tokens ids = {0};
    int rc = gguf_open(&file, path, err);
    if (demo) unlink(path);
    if (rc != 0) ds4_fail_wrap(err, "%s", demo ? "demo model" : path);
    if (rc == 0) rc = load_prompt(o, &text, err);
    if (rc == 0 && (rc = ds4_tokenizer_load(&tok, &file, err)) != 0) ds4_fail_wrap(err, "%s: tokenizer", path);
    if (rc == 0) rc = ds4_tokenize(tok, text.p, text.len, true, &ids, err);
    if (rc == 0) {
        printf("[");
        for (uint32_t i = 0; i < ids.n; i++) printf("%s%d", i ? ", " : "", ids.ids[i]);
        printf("]\n");
        for (uint32_t i = 0; i < ids.n; i++) {
            size_t len = 0;
            const char *b = ds4_token_bytes(tok, ids.ids[i], &len);
            printf("%6d  %.*s\n", ids.ids[i], (int)len, b ? b : "");
        }
    }
    ds4_tokens_free(&ids);
    if (tok) ds4_tokenizer_free(tok);
    gguf_close(&file);
    sb_free(&text);
    return rc;
}

/* The prompt tokens of a one-shot run: rendered as one user turn, or
 * tokenized as is when the text is an already rendered chat. */
static int oneshot_prompt(app *a, convo *c, const strbuf *text, ds4_tokens *out, ds4_error *err) {
    if (is_rendered(text->p)) return ds4_tokenize(a->tok, text->p, text->len, true, out, err);
    if (convo_add(c, DS4_CHAT_USER, text->p, text->len, NULL, 0, err) != 0) return -1;
    return convo_render(a, c, out, err);
}

static bool utf8_valid(const unsigned char *s, size_t n) {
    size_t i = 0;
    while (i < n) {
        unsigned char c = s[i];
        size_t need;
        if (c < 0x80) {
            i++;
            continue;
        }
        if (c >= 0xc2 && c <= 0xdf) need = 1;
        else if (c >= 0xe0 && c <= 0xef) need = 2;
        else if (c >= 0xf0 && c <= 0xf4) need = 3;
        else return false;
        if (n - i - 1 < need) return false;
        unsigned char c1 = s[i + 1];
        if ((c == 0xe0 && c1 < 0xa0) || (c == 0xed && c1 >= 0xa0) || (c == 0xf0 && c1 < 0x90) ||
            (c == 0xf4 && c1 >= 0x90))
            return false;
        for (size_t k = 1; k <= need; k++)
            if ((s[i + k] & 0xc0) != 0x80) return false;
        i += need + 1;
    }
    return true;
}

/* A JSON string of the token's text (invalid UTF-8 shown as U+FFFD: the
 * "bytes" array next to it is authoritative). */
static void json_token(FILE *fp, const ds4_tokenizer *tok, int32_t id) {
    size_t n = 0;
    const char *b = ds4_token_bytes(tok, id, &n);
    const unsigned char *s = (const unsigned char *)(b ? b : "");
    bool valid = utf8_valid(s, n);
    fprintf(fp, "{\"id\":%d,\"text\":\"", id);
    for (size_t i = 0; i < n; i++) {
        unsigned char ch = s[i];
        if (ch == '"' || ch == '\\') fprintf(fp, "\\%c", ch);
        else if (ch == '\n') fputs("\\n", fp);
        else if (ch == '\r') fputs("\\r", fp);
        else if (ch == '\t') fputs("\\t", fp);
        else if (ch < 0x20) fprintf(fp, "\\u%04x", ch);
        else if (ch >= 0x80 && !valid) fputs("\\ufffd", fp);
        else fputc(ch, fp);
    }
    fputs("\",\"bytes\":[", fp);
    for (size_t i = 0; i < n; i++) fprintf(fp, "%s%u", i ? "," : "", s[i]);
    fputs("]}", fp);
}

/* Greedy continuation with the top-k alternatives of every step. */
static int dump_logprobs(app *a, convo *c, const ds4_tokens *prompt, ds4_error *err) {
    const uint32_t k = a->o->logprobs_k;
    int32_t ids[MAX_LOGPROBS_K];
    float logit[MAX_LOGPROBS_K];
    double lp[MAX_LOGPROBS_K];
    FILE *fp = fopen(a->o->dump_logprobs, "wb");
    if (!fp) return ds4_fail(err, "cannot write %s: %s", a->o->dump_logprobs, strerror(errno));
    fprintf(fp, "{\n  \"source\":\"ds4cl\",\n  \"prompt_tokens\":%u,\n  \"ctx\":%u,\n  \"top_k\":%u,\n  \"steps\":[\n",
            prompt->n, c->ctx, k);
    uint32_t room = c->ctx - ds4_session_pos(c->s);
    uint32_t steps = a->n_predict < room ? a->n_predict : room;
    int rc = 0;
    for (uint32_t step = 0; rc == 0 && step < steps && !interrupted(); step++) {
        const float *l = ds4_session_logits(c->s);
        int32_t best = 0;
        int m = ds4_top_logprobs(l, a->n_vocab, k, ids, logit, lp, err);
        if (m < 0 || ds4_argmax(l, a->n_vocab, &best, err) != 0) {
            rc = -1;
            break;
        }
        fprintf(fp, "%s    {\"step\":%u,\"selected\":", step ? ",\n" : "", step);
        json_token(fp, a->tok, best);
        fputs(",\"top_logprobs\":[", fp);
        for (int i = 0; i < m; i++) {
            fputs(i ? ",{\"token\":" : "{\"token\":", fp);
            json_token(fp, a->tok, ids[i]);
            if (isinf(logit[i])) fputs(",\"logit\":null,\"logprob\":null}", fp); /* JSON has no -inf */
            else fprintf(fp, ",\"logit\":%.9g,\"logprob\":%.9g}", (double)logit[i], lp[i]);
        }
        fputs("]}", fp);
        if (best == a->eos) break;
        if (step + 1 < steps) rc = ds4_session_eval(c->s, &best, 1, NULL, err);
    }
    fputs("\n  ]\n}\n", fp);
    if (fclose(fp) != 0 && rc == 0) rc = ds4_fail(err, "writing %s: %s", a->o->dump_logprobs, strerror(errno));
    return rc;
}

/* -p / --prompt-file, with or without --dump-logprobs.  Returns 0, -1, or
 * 130 when Ctrl+C stopped it. */
static int run_oneshot(app *a, ds4_error *err) {
    strbuf text = {0};
    convo c;
    ds4_tokens prompt = {0};
    turn_stats st = {0};
    int rc = load_prompt(a->o, &text, err);
    if (rc == 0) rc = convo_open(a, &c, err);
    else memset(&c, 0, sizeof(c));
    if (rc == 0) warn_think_max(c.think, c.ctx, "--think-max");
    if (rc == 0) rc = oneshot_prompt(a, &c, &text, &prompt, err);
    if (rc == 0 && prompt.n >= c.ctx)
        rc = ds4_fail(err, "the prompt has %u tokens, the context only %u (use --ctx)", prompt.n, c.ctx);
    if (rc == 0) rc = convo_prefill(a, &c, &prompt, &st, err);
    if (rc == 0 && a->o->dump_logprobs) {
        rc = dump_logprobs(a, &c, &prompt, err);
    } else if (rc == 0) {
        printer p;
        bool thinking = effective_think(c.think, c.ctx) != DS4_THINK_NONE && !is_rendered(text.p);
        if (is_rendered(text.p) && prompt.n && prompt.ids[prompt.n - 1] == a->think) thinking = true;
        pr_begin(&p, a, thinking);
        uint32_t room = c.ctx - ds4_session_pos(c.s);
        rc = generate(a, &c, a->n_predict < room ? a->n_predict : room, &p, &st, err);
        pr_end(&p);
        pr_free(&p);
        if (rc == 0 && a->o->verbose) print_stats(&st);
    }
    if (rc == 1 || (rc == 0 && (st.interrupted || interrupted()))) rc = 130;
    ds4_tokens_free(&prompt);
    convo_close(&c);
    sb_free(&text);
    return rc;
}

/* ---------------------------------------------------------------------- */
/* REPL                                                                   */
/* ---------------------------------------------------------------------- */

typedef struct repl {
    app *a;
    convo c;
    EditLine *el;
    History *hist;
    char hist_path[4096];
    strbuf pending;   /* a line ending in '\' continues on the next one */
} repl;

static char *repl_prompt(EditLine *el) {
    repl *r = NULL;
    el_get(el, EL_CLIENTDATA, &r);
    return r && r->pending.len ? "...> " : "ds4cl> ";
}

static void repl_help(void) {
    puts("Commands:\n"
         "  /help          this text\n"
         "  /think         reason before answering (default)\n"
         "  /think-max     Think Max (only with a context of at least 393216 tokens)\n"
         "  /nothink       answer directly\n"
         "  /ctx N         new context size (the conversation is kept and re-read)\n"
         "  /n N           most tokens per answer\n"
         "  /read FILE     send the contents of FILE as the next message\n"
         "  /quit, /exit   leave (also Ctrl+D)\n"
         "  Ctrl+C         stop the current answer and return to the prompt\n"
         "A line ending in \\ continues on the next line.");
    fflush(stdout);
}

static const char *mode_name(enum ds4_think_mode m) {
    return m == DS4_THINK_NONE ? "no thinking" : m == DS4_THINK_HIGH ? "thinking" : "Think Max";
}

/* One message through the model, reporting (not returning) errors. */
static void repl_send(repl *r, const char *text, size_t len) {
    ds4_error err = {{0}};
    turn_stats st;
    clear_interrupt();
    if (convo_turn(r->a, &r->c, text, len, &st, &err) != 0) {
        fprintf(stderr, "ds4cl: %s\n", err.msg);
    } else if (st.interrupted) {
        fprintf(stderr, "ds4cl: interrupted%s\n", st.generated ? "" : " (message dropped)");
    }
    if (r->a->o->verbose && st.prompt_tokens) print_stats(&st);
    clear_interrupt();
}

/* A /command.  Returns 1 to quit. */
static int repl_command(repl *r, char *line) {
    char *arg = line + strcspn(line, " \t");
    if (*arg) *arg++ = '\0';
    arg += strspn(arg, " \t");
    ds4_error err = {{0}};
    if (!strcmp(line, "/quit") || !strcmp(line, "/exit")) return 1;
    if (!strcmp(line, "/help")) {
        repl_help();
    } else if (!strcmp(line, "/think") || !strcmp(line, "/think-max") || !strcmp(line, "/nothink")) {
        r->c.think = !strcmp(line, "/think") ? DS4_THINK_HIGH : !strcmp(line, "/nothink") ? DS4_THINK_NONE : DS4_THINK_MAX;
        warn_think_max(r->c.think, r->c.ctx, "/think-max");
        printf("mode: %s\n", mode_name(effective_think(r->c.think, r->c.ctx)));
    } else if (!strcmp(line, "/ctx")) {
        uint64_t v = 0;
        if (parse_u64(arg, &v) != 0 || v > r->a->max_ctx) {
            fprintf(stderr, "ds4cl: /ctx takes a number of tokens from 1 to %u\n", r->a->max_ctx);
        } else if (convo_set_ctx(r->a, &r->c, (uint32_t)v, &err) != 0) {
            fprintf(stderr, "ds4cl: %s\n", err.msg);
            if (convo_set_ctx(r->a, &r->c, r->c.ctx ? r->c.ctx : DEFAULT_CTX, &err) != 0) {
                fprintf(stderr, "ds4cl: %s\n", err.msg);
                return 1;
            }
        } else {
            printf("context: %u tokens\n", r->c.ctx);
            warn_think_max(r->c.think, r->c.ctx, "/think-max");
        }
    } else if (!strcmp(line, "/n")) {
        uint64_t v = 0;
        if (parse_u64(arg, &v) != 0 || v > (1u << 30)) {
            fprintf(stderr, "ds4cl: /n takes a positive number of tokens\n");
        } else {
            r->a->n_predict = (uint32_t)v;
            printf("at most %u tokens per answer\n", r->a->n_predict);
        }
    } else if (!strcmp(line, "/read")) {
        strbuf text = {0};
        if (!*arg) fprintf(stderr, "ds4cl: /read needs a file name\n");
        else if (read_file(arg, &text, &err) != 0) fprintf(stderr, "ds4cl: %s\n", err.msg);
        else repl_send(r, text.p, text.len);
        sb_free(&text);
    } else {
        fprintf(stderr, "ds4cl: unknown command '%s' (/help lists them)\n", line);
    }
    fflush(stdout);
    return 0;
}

static int repl_open(repl *r, app *a, ds4_error *err) {
    memset(r, 0, sizeof(*r));
    r->a = a;
    if (convo_open(a, &r->c, err) != 0) return -1;
    warn_think_max(r->c.think, r->c.ctx, "--think-max");
    r->el = el_init("ds4cl", stdin, stdout, stderr);
    r->hist = history_init();
    if (!r->el || !r->hist) return ds4_fail(err, "cannot start the line editor");
    HistEvent ev;
    history(r->hist, &ev, H_SETSIZE, HISTORY_MAX);
    history(r->hist, &ev, H_SETUNIQUE, 1);
    el_set(r->el, EL_CLIENTDATA, r);
    el_set(r->el, EL_PROMPT, repl_prompt);
    el_set(r->el, EL_EDITOR, "emacs");
    el_set(r->el, EL_HIST, history, r->hist);
    el_source(r->el, NULL); /* ~/.editrc, when present */
    const char *file = getenv("DS4CL_HISTORY"), *home = getenv("HOME");
    if (file) snprintf(r->hist_path, sizeof(r->hist_path), "%s", file);
    else if (home && *home) snprintf(r->hist_path, sizeof(r->hist_path), "%s/.ds4cl_history", home);
    if (r->hist_path[0]) history(r->hist, &ev, H_LOAD, r->hist_path);
    return 0;
}

static void repl_close(repl *r) {
    HistEvent ev;
    if (r->hist && r->hist_path[0]) history(r->hist, &ev, H_SAVE, r->hist_path);
    if (r->hist) history_end(r->hist);
    if (r->el) el_end(r->el);
    convo_close(&r->c);
    sb_free(&r->pending);
}

/* Handle one line from the editor; returns 1 to quit. */
static int repl_line(repl *r, const char *line, int n) {
    while (n > 0 && (line[n - 1] == '\n' || line[n - 1] == '\r')) n--;
    if (n > 0) {
        HistEvent ev;
        char *entry = strndup(line, (size_t)n);
        if (entry) history(r->hist, &ev, H_ENTER, entry);
        free(entry);
    }
    ds4_error err = {{0}};
    bool more = n > 0 && line[n - 1] == '\\';
    if (sb_add(&r->pending, line, (size_t)(more ? n - 1 : n), &err) != 0) return 1;
    if (more) return sb_add(&r->pending, "\n", 1, &err) != 0;
    int rc = 0;
    char *text = r->pending.p ? r->pending.p : (char *)"";
    size_t len = r->pending.len;
    if (len == 0) {
        /* an empty line: nothing to do */
    } else if (text[0] == '/' && !memchr(text, '\n', len)) {
        rc = repl_command(r, text);
    } else {
        repl_send(r, text, len);
    }
    r->pending.len = 0;
    return rc;
}

static int run_repl(app *a, ds4_error *err) {
    repl r;
    if (repl_open(&r, a, err) != 0) {
        repl_close(&r);
        return -1;
    }
    if (a->out_tty)
        printf("ds4cl %s on %s, context %u tokens, %s. /help for commands, Ctrl+D to quit.\n", DS4CL_VERSION,
               ds4_engine_device_name(a->e), r.c.ctx, mode_name(effective_think(r.c.think, r.c.ctx)));
    fflush(stdout);
    for (;;) {
        int n = 0;
        clear_interrupt();
        const char *line = el_gets(r.el, &n);
        if (!line) {
            if (interrupted() || (n < 0 && errno == EINTR)) {
                /* Ctrl+C at the prompt: drop the line, prompt again. */
                fputc('\n', stdout);
                r.pending.len = 0;
                continue;
            }
            if (n == 0 || !line) {
                if (a->out_tty) fputc('\n', stdout);
                break;
            }
        }
        if (repl_line(&r, line, n)) break;
    }
    fflush(stdout);
    repl_close(&r);
    return 0;
}

/* ---------------------------------------------------------------------- */
/* main                                                                   */
/* ---------------------------------------------------------------------- */

static int run(const cli_opts *o, ds4_error *err) {
    if (o->list_devices) return ds4_devices_print(stdout, err);
    const char *path = NULL;
    char demo_path[4096];
    if (pick_model(o, &path, demo_path, sizeof(demo_path), err) != 0) return -1;
    bool demo = demo_path[0] != '\0';
    if (o->info) return run_info(o, path, demo, err);
    if (o->dump_tokens) return run_dump_tokens(o, path, demo, err);
    if (o->tokens) {
        int rc = run_tokens(o, path, err);
        if (demo) unlink(path);
        return rc;
    }
    app a;
    int rc = app_open(&a, o, path, err);
    if (demo) unlink(path);
    if (rc == 0) {
        install_sigint();
        rc = (o->prompt || o->prompt_file) ? run_oneshot(&a, err) : run_repl(&a, err);
    }
    app_close(&a);
    return rc;
}

int main(int argc, char **argv) {
    cli_opts o;
    int p = parse_args(argc, argv, &o);
    if (p == 1) return 0;
    if (p == 2) return 2;
    ds4_error err = {{0}};
    int rc = run(&o, &err);
    if (rc == 130) return 130;
    if (rc != 0) {
        fflush(stdout);
        fprintf(stderr, "ds4cl: %s\n", err.msg);
        return 1;
    }
    return 0;
}
