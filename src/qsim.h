/* qsim.h - the quantization round trips DeepSeek V4 applies at inference.
 *
 * The official inference graph (and ds4) stores attention KV through an FP8
 * E4M3 round trip and indexer queries/keys through a Hadamard-128 transform
 * plus an FP4 E2M1 round trip.  These host functions are the exact reference
 * (bit for bit against ml_dtypes' casts, see tests/gen_qsim_fixtures.py); the
 * OpenCL kernels implement the same arithmetic and are tested against them.
 *
 * Rules (model.md §2.4.3, §2.4.6):
 *   FP8:  per block of 64: amax = max(|v|, 1e-4), scale = 2^ceil(log2(amax/448)),
 *         v' = e4m3(clamp(v/scale, ±448)) * scale.
 *   FP4:  per block of 32: amax = max(|v|, 6*2^-126), scale = 2^ceil(log2(amax/6)),
 *         v' = e2m1(clamp(v/scale, ±6)) * scale.
 *   Casts round to nearest, ties to the even code.  Scales are exact powers of
 *   two, so v/scale and the product are exact.
 */
#ifndef DS4_QSIM_H
#define DS4_QSIM_H

#include <stdint.h>

#define DS4_FP8_BLOCK 64
#define DS4_FP4_BLOCK 32

/* Nearest E4M3FN value of x, |x| <= 448 (ties to even code). */
float ds4_round_e4m3(float x);
/* Nearest E2M1 value of x, |x| <= 6 (ties to even code). */
float ds4_round_e2m1(float x);
/* 2^ceil(log2(r)) for a finite r > 0, computed exactly. */
float ds4_pow2_ceil(float r);

/* FP8 round trip of n values (n a multiple of 64) in place. */
void ds4_fp8_sim(float *v, uint32_t n);
/* FP4 round trip of n values (n a multiple of 32) in place. */
void ds4_fp4_sim(float *v, uint32_t n);
/* Unnormalised Sylvester Walsh-Hadamard transform of n values (a power of
 * two) in natural order, scaled by 1/sqrt(n), in place. */
void ds4_hadamard(float *v, uint32_t n);

#endif
