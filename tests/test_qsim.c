/* test_qsim.c - the FP8 E4M3 and Hadamard + FP4 E2M1 round trips of
 * src/qsim.c, bit for bit against fixtures computed with ml_dtypes
 * (tests/gen_qsim_fixtures.py), plus hand-checked values. */
#include <string.h>

#include "../src/qsim.h"
#include "test.h"

static int t_qsim_known_values(void) {
    /* E4M3: 1 + 1/16 is halfway between 1 and 1.125: ties to even (1). */
    T_CHECK(ds4_round_e4m3(1.0625f) == 1.0f, "%g", ds4_round_e4m3(1.0625f));
    T_CHECK(ds4_round_e4m3(1.1875f) == 1.25f, "%g", ds4_round_e4m3(1.1875f));
    T_CHECK(ds4_round_e4m3(-448.0f) == -448.0f, "max");
    T_CHECK(ds4_round_e4m3(0x1p-9f) == 0x1p-9f, "smallest subnormal");
    T_CHECK(ds4_round_e4m3(0x1p-10f) == 0.0f, "half the smallest subnormal ties to zero");
    T_CHECK(ds4_round_e4m3(0x1.8p-10f) == 0x1p-9f, "above half rounds up");
    /* E2M1 grid {0, .5, 1, 1.5, 2, 3, 4, 6}. */
    const float in[] = {0.25f, 0.75f, 1.25f, 1.75f, 2.5f, 3.5f, 5.0f, 5.5f, -0.3f};
    const float out[] = {0.0f, 1.0f, 1.0f, 2.0f, 2.0f, 4.0f, 4.0f, 6.0f, -0.5f};
    for (size_t i = 0; i < sizeof(in) / sizeof(in[0]); i++)
        T_CHECK(ds4_round_e2m1(in[i]) == out[i], "e2m1(%g) = %g, want %g", in[i], ds4_round_e2m1(in[i]), out[i]);
    T_CHECK(ds4_pow2_ceil(1.0f) == 1.0f && ds4_pow2_ceil(1.0001f) == 2.0f && ds4_pow2_ceil(0.5f) == 0.5f &&
                ds4_pow2_ceil(0.3f) == 0.5f,
            "pow2_ceil");
    /* Hadamard of a unit vector is a constant 1/sqrt(n) vector. */
    float h[128] = {1.0f};
    ds4_hadamard(h, 128);
    for (int i = 0; i < 128; i++) T_CHECK(fabsf(h[i] - 0.0883883476f) < 1e-8f, "h[%d] = %g", i, h[i]);
    return 0;
}

static int t_qsim_fixtures(void) {
    char path[1200];
    snprintf(path, sizeof(path), "%s/tests/fixtures/qsim.bin", test_root_dir());
    FILE *fp = fopen(path, "rb");
    T_CHECK(fp != NULL, "cannot open %s (run make fixtures)", path);
    char magic[8];
    uint32_t n_sections = 0;
    T_CHECK(fread(magic, 1, 8, fp) == 8 && memcmp(magic, "DS4QSIM1", 8) == 0, "bad magic");
    T_CHECK(fread(&n_sections, 4, 1, fp) == 1 && n_sections == 3, "sections %u", n_sections);
    int rc = 0;
    for (uint32_t s = 0; s < n_sections && rc == 0; s++) {
        uint32_t hdr[2];
        T_CHECK(fread(hdr, 4, 2, fp) == 2 && hdr[1] > 0 && hdr[1] <= (1u << 20), "section header");
        uint32_t kind = hdr[0], n = hdr[1];
        float *x = malloc(sizeof(float) * n), *want = malloc(sizeof(float) * n);
        T_CHECK(x && want, "oom");
        if (fread(x, 4, n, fp) != n || fread(want, 4, n, fp) != n) rc = 1;
        if (rc == 0) {
            if (kind == 0) ds4_fp8_sim(x, n);
            else if (kind == 1) ds4_fp4_sim(x, n);
            else
                for (uint32_t i = 0; i + 128 <= n; i += 128) {
                    ds4_hadamard(x + i, 128);
                    ds4_fp4_sim(x + i, 128);
                }
            uint32_t bad = 0;
            for (uint32_t i = 0; i < n; i++)
                if (memcmp(&x[i], &want[i], 4) != 0) {
                    if (bad++ < 5) fprintf(stderr, "    kind %u [%u]: got %a want %a\n", kind, i, x[i], want[i]);
                }
            if (bad) {
                fprintf(stderr, "    kind %u: %u of %u values differ\n", kind, bad, n);
                rc = 1;
            }
        }
        free(x);
        free(want);
    }
    fclose(fp);
    return rc;
}

void tests_register_qsim(void) {
    test_add("qsim/known_values", t_qsim_known_values);
    test_add("qsim/ml_dtypes_fixtures", t_qsim_fixtures);
}
