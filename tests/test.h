/* test.h - the tiny test framework shared by every tests/test_*.c.
 *
 * Each test is a function returning 0 (pass) or non-zero (fail); T_CHECK
 * prints where and why and fails the test.  Each file registers its tests in
 * a tests_register_<room>() function called from test_main.c.  The runner
 * prints one line per test and closes with "N passed, N failed".
 * Tests assert values, never time.
 */
#ifndef DS4_TEST_H
#define DS4_TEST_H

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#include "../src/runtime.h"

typedef int (*ds4_test_fn)(void);

void test_add(const char *name, ds4_test_fn fn);

#define T_CHECK(cond, ...)                                                       \
    do {                                                                         \
        if (!(cond)) {                                                           \
            fprintf(stderr, "    %s:%d: check failed: %s: ", __FILE__, __LINE__, #cond); \
            fprintf(stderr, __VA_ARGS__);                                        \
            fputc('\n', stderr);                                                 \
            return 1;                                                            \
        }                                                                        \
    } while (0)

/* The OpenCL runtime shared by the tests (opened on first use with the
 * device from DS4CL_DEVICE, closed at exit); NULL with a message printed
 * when no device can be opened. */
ds4_runtime *test_runtime(void);

/* Directory of the built binaries (build/ or build/san/) and of the repo
 * root, for tests that run the programs or read fixtures. */
const char *test_bin_dir(void);
const char *test_root_dir(void);

/* Deterministic random numbers (xorshift64*), seedable per test. */
typedef struct { uint64_t s; } test_rng;
static inline uint64_t test_rng_u64(test_rng *r) {
    r->s ^= r->s >> 12; r->s ^= r->s << 25; r->s ^= r->s >> 27;
    return r->s * 2685821657736338717ULL;
}
/* Uniform in [-1, 1). */
static inline float test_rng_f32(test_rng *r) {
    return (float)((double)(test_rng_u64(r) >> 11) * (2.0 / 9007199254740992.0) - 1.0);
}

/* Registration hooks, one per test file (weak, so a partial build of the
 * runner links and runs what it has). */
#define DS4_TEST_HOOK __attribute__((weak))
DS4_TEST_HOOK void tests_register_quant(void);
DS4_TEST_HOOK void tests_register_gguf(void);
DS4_TEST_HOOK void tests_register_gguf_mutate(void);
DS4_TEST_HOOK void tests_register_model(void);
DS4_TEST_HOOK void tests_register_runtime(void);
DS4_TEST_HOOK void tests_register_kernels(void);
DS4_TEST_HOOK void tests_register_cli(void);
DS4_TEST_HOOK void tests_register_qsim(void);
DS4_TEST_HOOK void tests_register_ops_dense(void);
DS4_TEST_HOOK void tests_register_ops_attn(void);
DS4_TEST_HOOK void tests_register_ops_moe(void);
DS4_TEST_HOOK void tests_register_forward(void);
DS4_TEST_HOOK void tests_register_tokenizer(void);
DS4_TEST_HOOK void tests_register_chat(void);
DS4_TEST_HOOK void tests_register_sampler(void);
DS4_TEST_HOOK void tests_register_repl(void);
DS4_TEST_HOOK void tests_register_download(void);
DS4_TEST_HOOK void tests_register_convert(void);
DS4_TEST_HOOK void tests_register_convert_official(void);
DS4_TEST_HOOK void tests_register_server_http(void);
DS4_TEST_HOOK void tests_register_imatrix(void);
DS4_TEST_HOOK void tests_register_server_proto(void);
DS4_TEST_HOOK void tests_register_kvcache(void);
DS4_TEST_HOOK void tests_register_server_sdk(void);
DS4_TEST_HOOK void tests_register_bench(void);
DS4_TEST_HOOK void tests_register_tuning(void);
DS4_TEST_HOOK void tests_register_plot(void);
DS4_TEST_HOOK void tests_register_benchmodel(void);
DS4_TEST_HOOK void tests_register_matmul_tiled(void);

#endif
