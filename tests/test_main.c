/* test_main.c - runs every registered test, or those whose name contains
 * argv[1], and closes with "N passed, N failed". */
#include "test.h"

#include <libgen.h>
#include <limits.h>
#include <string.h>
#include <unistd.h>

#define MAX_TESTS 512

static struct {
    const char *name;
    ds4_test_fn fn;
} g_tests[MAX_TESTS];
static int g_n_tests;
static ds4_runtime g_rt;
static int g_rt_state; /* 0 untried, 1 open, -1 failed */
static char g_bin_dir[PATH_MAX];
static char g_root_dir[PATH_MAX];

void test_add(const char *name, ds4_test_fn fn) {
    if (g_n_tests == MAX_TESTS) {
        fprintf(stderr, "too many tests\n");
        exit(2);
    }
    g_tests[g_n_tests].name = name;
    g_tests[g_n_tests].fn = fn;
    g_n_tests++;
}

ds4_runtime *test_runtime(void) {
    if (g_rt_state == 0) {
        ds4_error err = {{0}};
        ds4_runtime_opts opts = {0};
        if (ds4_runtime_open(&g_rt, &opts, &err) == 0) {
            g_rt_state = 1;
        } else {
            fprintf(stderr, "    no OpenCL device: %s\n", err.msg);
            g_rt_state = -1;
        }
    }
    return g_rt_state == 1 ? &g_rt : NULL;
}

const char *test_bin_dir(void) { return g_bin_dir; }
const char *test_root_dir(void) { return g_root_dir; }

static void find_dirs(const char *argv0) {
    char buf[PATH_MAX];
    ssize_t n = readlink("/proc/self/exe", buf, sizeof(buf) - 1);
    if (n <= 0) {
        snprintf(buf, sizeof(buf), "%s", argv0);
        n = (ssize_t)strlen(buf);
    }
    buf[n] = '\0';
    snprintf(g_bin_dir, sizeof(g_bin_dir), "%s", dirname(buf));
    /* The binary lives in <root>/build or <root>/build/san. */
    const char *root = getenv("DS4CL_ROOT");
    if (root) {
        snprintf(g_root_dir, sizeof(g_root_dir), "%s", root);
        return;
    }
    char probe[PATH_MAX + 32];
    snprintf(g_root_dir, sizeof(g_root_dir), "%s", g_bin_dir);
    for (int up = 0; up < 4; up++) {
        snprintf(probe, sizeof(probe), "%s/Makefile", g_root_dir);
        if (access(probe, F_OK) == 0) return;
        snprintf(buf, sizeof(buf), "%s", g_root_dir);
        snprintf(g_root_dir, sizeof(g_root_dir), "%s", dirname(buf));
    }
}

int main(int argc, char **argv) {
    setvbuf(stdout, NULL, _IOLBF, 0);
    find_dirs(argv[0]);
    void (*const hooks[])(void) = {
        tests_register_quant, tests_register_gguf,    tests_register_gguf_mutate,
        tests_register_model, tests_register_runtime, tests_register_kernels,
        tests_register_cli,   tests_register_qsim,    tests_register_ops_dense,
        tests_register_ops_attn, tests_register_ops_moe, tests_register_forward, tests_register_convert,
        tests_register_convert_official,
        tests_register_tokenizer, tests_register_chat, tests_register_sampler, tests_register_repl,
        tests_register_download,
        tests_register_imatrix,
        tests_register_server_proto,
        tests_register_server_http,
        tests_register_kvcache,
        tests_register_server_sdk,
        tests_register_bench,
        tests_register_tuning, tests_register_plot,
        tests_register_benchmodel,
        tests_register_matmul_tiled,
    };
    for (size_t i = 0; i < sizeof(hooks) / sizeof(hooks[0]); i++)
        if (hooks[i]) hooks[i]();

    const char *filter = argc > 1 ? argv[1] : NULL;
    int passed = 0, failed = 0;
    for (int i = 0; i < g_n_tests; i++) {
        if (filter && !strstr(g_tests[i].name, filter)) continue;
        int rc = g_tests[i].fn();
        printf("%s %s\n", rc == 0 ? "ok  " : "FAIL", g_tests[i].name);
        if (rc == 0) passed++; else failed++;
    }
    if (g_rt_state == 1) ds4_runtime_close(&g_rt);
    printf("%d passed, %d failed\n", passed, failed);
    return failed ? 1 : 0;
}
