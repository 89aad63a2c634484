/* qsim.c - FP8/FP4 round trips and the Hadamard transform (see qsim.h).
 *
 * Rounding is done by scaling to the code grid's step inside the value's
 * binade and calling rintf (the default rounding mode is to nearest, ties to
 * even; an even step count is an even code because codes step by one per
 * grid step within a binade and binades start at even codes).
 */
#include "qsim.h"

#include <math.h>

float ds4_pow2_ceil(float r) {
    int e = 0;
    float m = frexpf(r, &e); /* r = m * 2^e, m in [0.5, 1) */
    if (m == 0.5f) e -= 1;   /* r is exactly 2^(e-1) */
    return ldexpf(1.0f, e);
}

float ds4_round_e4m3(float x) {
    float a = fabsf(x);
    if (a == 0.0f) return x;
    /* Normal binades have 8 mantissa steps; subnormals (below 2^-6) step 2^-9. */
    int e = 0;
    frexpf(a, &e); /* a in [2^(e-1), 2^e) */
    int step_exp = (e - 1) - 3;
    if (step_exp < -9) step_exp = -9;
    float q = ldexpf(rintf(ldexpf(a, -step_exp)), step_exp);
    if (q > 448.0f) q = 448.0f;
    return copysignf(q, x);
}

float ds4_round_e2m1(float x) {
    float a = fabsf(x);
    if (a == 0.0f) return x;
    /* E2M1: 0, 0.5 (subnormal), then 1, 1.5, 2, 3, 4, 6: one mantissa bit. */
    int e = 0;
    frexpf(a, &e);
    int step_exp = (e - 1) - 1;
    if (step_exp < -1) step_exp = -1;
    float q = ldexpf(rintf(ldexpf(a, -step_exp)), step_exp);
    if (q > 6.0f) q = 6.0f;
    return copysignf(q, x);
}

static void block_sim(float *v, uint32_t n, float maxval, float floor_amax, float (*round)(float)) {
    float amax = floor_amax;
    for (uint32_t i = 0; i < n; i++) amax = fmaxf(amax, fabsf(v[i]));
    float scale = ds4_pow2_ceil(amax / maxval);
    for (uint32_t i = 0; i < n; i++) {
        float s = v[i] / scale;
        s = fminf(fmaxf(s, -maxval), maxval);
        v[i] = round(s) * scale;
    }
}

void ds4_fp8_sim(float *v, uint32_t n) {
    for (uint32_t b = 0; b + DS4_FP8_BLOCK <= n; b += DS4_FP8_BLOCK)
        block_sim(v + b, DS4_FP8_BLOCK, 448.0f, 1e-4f, ds4_round_e4m3);
}

void ds4_fp4_sim(float *v, uint32_t n) {
    for (uint32_t b = 0; b + DS4_FP4_BLOCK <= n; b += DS4_FP4_BLOCK)
        block_sim(v + b, DS4_FP4_BLOCK, 6.0f, 6.0f * 0x1p-126f, ds4_round_e2m1);
}

void ds4_hadamard(float *v, uint32_t n) {
    for (uint32_t h = 1; h < n; h *= 2)
        for (uint32_t i = 0; i < n; i += 2 * h)
            for (uint32_t j = i; j < i + h; j++) {
                float a = v[j], b = v[j + h];
                v[j] = a + b;
                v[j + h] = a - b;
            }
    const float s = (float)(1.0 / sqrt((double)n)); /* as n ** -0.5 in Python, then to f32 */
    for (uint32_t i = 0; i < n; i++) v[i] *= s;
}
