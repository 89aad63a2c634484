/* cli.c - the `ds4cl` program.
 *
 * Flow: parse flags -> pick the model (-m FILE, else $DS4CL_MODEL, else
 * ds4flash.gguf or gguf/ds4flash.gguf when present, else the embedded demo
 * model: a tiny random deepseek4 GGUF generated on the spot)
 * -> map and validate the GGUF -> bind the deepseek4 tensors -> open the
 * OpenCL device -> plan the weight memory -> either print it all (--info) or
 * also place the weights on the device.
 *
 * Every failure prints one line "ds4cl: <what went wrong>" and exits 1; a
 * bad command line prints the usage and exits 2.  Nothing here touches
 * OpenCL beyond the runtime's API.
 */
#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "engine.h"
#include "gguf.h"
#include "model.h"
#include "runtime.h"
#include "testmodel.h"

#define DS4CL_VERSION "0.1.0"

/* Where a downloaded model is looked for when neither -m nor $DS4CL_MODEL is given. */
static const char *const default_models[] = {"ds4flash.gguf", "gguf/ds4flash.gguf"};

typedef struct cli_opts {
    const char *model;
    const char *device;
    const char *kernel_dir;
    const char *weights;  /* auto | map | copy */
    uint64_t max_alloc;   /* bytes; 0 = the device's */
    const char *tokens;   /* --tokens "0,17,42" */
    const char *dump_logits;
    uint32_t ctx;         /* 0: sized to the tokens */
    uint32_t chunk;       /* prefill chunk; 0: engine default */
    bool no_quant_sim;
    bool info;
    bool list_devices;
    bool demo;
    bool verbose;
} cli_opts;

static void usage(FILE *fp) {
    fprintf(fp,
            "usage: ds4cl [options]\n"
            "  -m, --model FILE       DeepSeek V4 Flash GGUF (default: $DS4CL_MODEL, else ds4flash.gguf or\n"
            "                         gguf/ds4flash.gguf when present, else the embedded demo model)\n"
            "      --demo             use the embedded demo model (a tiny random deepseek4 model)\n"
            "      --info             print the model's architecture, tensors and weight memory plan, then exit\n"
            "      --list-devices     list the OpenCL devices and exit\n"
            "      --device N|NAME    OpenCL device by index or name substring (default: $DS4CL_DEVICE, else\n"
            "                         the first GPU, else the first device)\n"
            "      --weights MODE     auto | map (zero-copy on the file mapping) | copy (device buffers)\n"
            "      --max-alloc MIB    cap each weight buffer below the device's largest allocation\n"
            "      --tokens IDS       evaluate these comma-separated token ids teacher-forced\n"
            "      --dump-logits FILE write the float32 logits [n_tokens x vocab] of --tokens to FILE\n"
            "      --ctx N            context size (default: fits the tokens)\n"
            "      --chunk N          prefill chunk size in tokens (default 256)\n"
            "      --no-quant-sim     exact f32 KV: no FP8 KV / FP4 indexer simulation, no f16 raw KV\n"
            "      --kernel-dir DIR   read the OpenCL kernels from DIR instead of the embedded copy\n"
            "                         (also $DS4CL_KERNEL_DIR)\n"
            "  -v, --verbose          log device, program cache and plan decisions\n"
            "  -h, --help             this text\n"
            "      --version          print the version\n");
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

/* Returns 0 to continue, 1 to exit 0 (help/version), 2 on a usage error. */
static int parse_args(int argc, char **argv, cli_opts *o) {
    memset(o, 0, sizeof(*o));
    o->weights = "auto";
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        const char *val = NULL;
        bool takes_value = strcmp(a, "-m") == 0 || strcmp(a, "--model") == 0 || strcmp(a, "--device") == 0 ||
                           strcmp(a, "--kernel-dir") == 0 || strcmp(a, "--weights") == 0 ||
                           strcmp(a, "--max-alloc") == 0 || strcmp(a, "--tokens") == 0 ||
                           strcmp(a, "--dump-logits") == 0 || strcmp(a, "--ctx") == 0 || strcmp(a, "--chunk") == 0;
        if (takes_value) {
            if (i + 1 >= argc) {
                fprintf(stderr, "ds4cl: %s needs a value\n", a);
                return 2;
            }
            val = argv[++i];
        }
        if (strcmp(a, "-m") == 0 || strcmp(a, "--model") == 0) o->model = val;
        else if (strcmp(a, "--device") == 0) o->device = val;
        else if (strcmp(a, "--kernel-dir") == 0) o->kernel_dir = val;
        else if (strcmp(a, "--weights") == 0) {
            if (strcmp(val, "auto") && strcmp(val, "map") && strcmp(val, "copy")) {
                fprintf(stderr, "ds4cl: --weights takes auto, map or copy, not '%s'\n", val);
                return 2;
            }
            o->weights = val;
        } else if (strcmp(a, "--max-alloc") == 0) {
            uint64_t mib = 0;
            if (parse_u64(val, &mib) != 0 || mib > ((uint64_t)1 << 24)) {
                fprintf(stderr, "ds4cl: --max-alloc takes a positive number of MiB, not '%s'\n", val);
                return 2;
            }
            o->max_alloc = mib << 20;
        } else if (strcmp(a, "--ctx") == 0 || strcmp(a, "--chunk") == 0) {
            uint64_t v = 0;
            if (parse_u64(val, &v) != 0 || v > (1u << 30)) {
                fprintf(stderr, "ds4cl: %s takes a positive number, not '%s'\n", a, val);
                return 2;
            }
            if (a[2] == 'c' && a[3] == 't') o->ctx = (uint32_t)v;
            else o->chunk = (uint32_t)v;
        } else if (strcmp(a, "--tokens") == 0) o->tokens = val;
        else if (strcmp(a, "--dump-logits") == 0) o->dump_logits = val;
        else if (strcmp(a, "--no-quant-sim") == 0) o->no_quant_sim = true;
        else if (strcmp(a, "--info") == 0) o->info = true;
        else if (strcmp(a, "--list-devices") == 0) o->list_devices = true;
        else if (strcmp(a, "--demo") == 0) o->demo = true;
        else if (strcmp(a, "-v") == 0 || strcmp(a, "--verbose") == 0) o->verbose = true;
        else if (strcmp(a, "-h") == 0 || strcmp(a, "--help") == 0) {
            usage(stdout);
            return 1;
        } else if (strcmp(a, "--version") == 0) {
            printf("ds4cl %s\n", DS4CL_VERSION);
            return 1;
        } else {
            fprintf(stderr, "ds4cl: unknown option '%s'\n", a);
            usage(stderr);
            return 2;
        }
    }
    if (o->demo && o->model) {
        fprintf(stderr, "ds4cl: --demo and --model exclude each other\n");
        return 2;
    }
    if (o->dump_logits && !o->tokens) {
        fprintf(stderr, "ds4cl: --dump-logits needs --tokens\n");
        return 2;
    }
    return 0;
}

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

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
    ds4_engine_opts eo = {.model_path = path, .device = o->device, .kernel_dir = o->kernel_dir,
                          .weights = o->weights, .max_alloc = o->max_alloc, .no_quant_sim = o->no_quant_sim,
                          .prefill_chunk = o->chunk, .verbose = o->verbose};
    ds4_engine *e = NULL;
    ds4_session *s = NULL;
    float *logits = NULL;
    int rc = ds4_engine_load(&e, &eo, err);
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
    if (rc == 0) {
        const float *last = ds4_session_logits(s);
        uint32_t best = 0;
        for (uint32_t i = 1; i < V; i++)
            if (last[i] > last[best]) best = i;
        fprintf(stderr, "ds4cl: %u tokens on %s in %.3f s (%.1f tokens/s); next-token argmax %u\n", n,
                ds4_engine_device_name(e), dt, dt > 0 ? n / dt : 0.0, best);
    }
    free(logits);
    ds4_session_free(s);
    ds4_engine_free(e);
    free(ids);
    return rc;
}


static int run(const cli_opts *o, ds4_error *err) {
    if (o->list_devices) return ds4_devices_print(stdout, err);

    const char *path = o->model;
    if (!path && !o->demo) {
        const char *env = getenv("DS4CL_MODEL");
        if (env && *env) path = env;
        for (size_t i = 0; !path && i < sizeof(default_models) / sizeof(default_models[0]); i++)
            if (access(default_models[i], R_OK) == 0) path = default_models[i];
    }
    char demo_path[4096] = "";
    if (!path) {
        if (write_demo(demo_path, sizeof(demo_path), err) != 0) return -1;
    }
    if (o->tokens) {
        int trc = run_tokens(o, path ? path : demo_path, err);
        if (demo_path[0]) unlink(demo_path);
        return trc;
    }
    gguf_file file = {0};
    int orc = gguf_open(&file, path ? path : demo_path, err);
    if (demo_path[0]) unlink(demo_path);
    if (orc != 0) return ds4_fail_wrap(err, "%s", path ? path : "demo model");

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
        ds4_fail_wrap(err, "%s", path ? path : "demo model");
        goto done;
    }
    if (o->info) {
        printf("file: %s\n", path ? path : "(embedded demo model: random weights, generated at start)");
        ds4_model_print_info(model, stdout);
        fflush(stdout);
    }

    ds4_runtime_opts ro = {.device = o->device, .kernel_dir = o->kernel_dir, .verbose = o->verbose};
    if (ds4_runtime_open(&rt, &ro, err) != 0) goto done;
    rt_open = true;
    bool zero_copy = strcmp(o->weights, "map") == 0 || (strcmp(o->weights, "auto") == 0 && rt.dev.host_unified);
    uint64_t max_span = rt.dev.max_alloc;
    if (o->max_alloc && o->max_alloc < max_span) max_span = o->max_alloc;
    if (ds4_weights_plan(&plan, &file, max_span, zero_copy, err) != 0) goto done;
    if (o->info || o->verbose) {
        printf("device: [%d] %s / %s\n", rt.dev.index, rt.dev.platform_name, rt.dev.name);
        ds4_weights_print(&plan, stdout);
    }
    if (!o->info) {
        double t0 = now_s();
        if (ds4_weights_load(&plan, &rt, &file, err) != 0) goto done;
        if (ds4_runtime_finish(&rt, err) != 0) goto done;
        printf("weights placed on %s in %.3f s (%s)\n", rt.dev.name, now_s() - t0,
               plan.zero_copy ? "zero-copy" : "copied");
    }
    rc = 0;
done:
    ds4_weights_free(&plan);
    if (rt_open) ds4_runtime_close(&rt);
    free(model);
    gguf_close(&file);
    return rc;
}

int main(int argc, char **argv) {
    cli_opts o;
    int p = parse_args(argc, argv, &o);
    if (p == 1) return 0;
    if (p == 2) return 2;
    ds4_error err = {{0}};
    if (run(&o, &err) != 0) {
        fflush(stdout);
        fprintf(stderr, "ds4cl: %s\n", err.msg);
        return 1;
    }
    return 0;
}
