/* ref_dense.h - plain C references of the dense ops of src/ops.h.
 *
 * Each function takes the op's arguments as host arrays (no offsets: pass
 * pointers already offset) and computes exactly what ops.h documents, in
 * f32 and in the formula order transformers uses, one value at a time.
 * The FP8 / FP4 / Hadamard rules come from src/qsim.c and the f16 / bf16 /
 * Q8_0 decoding from src/quant.c, so those ops can be compared bit for bit.
 */
#ifndef DS4_REF_DENSE_H
#define DS4_REF_DENSE_H

#include <stdint.h>

/* embd: n_vocab rows of ds4_row_bytes(type, n_embd) bytes.  Returns -1 for
 * a type ds4_dequantize_row does not know. */
int ref_embed(const void *embd, uint32_t type, uint32_t n_embd, const int32_t *tokens, uint32_t T,
              uint32_t n_hc, float *X);
/* w may be NULL; y may equal x. */
void ref_rmsnorm(const float *x, float *y, uint32_t n, uint32_t rows, uint32_t stride, const float *w,
                 float eps);
void ref_hc_pre(const float *X, const float *mix, const float *scale, const float *base, uint32_t n_hc,
                uint32_t n_embd, uint32_t T, uint32_t iters, float hc_eps, float *x, float *post, float *comb);
void ref_hc_post(float *X, const float *y, const float *post, const float *comb, uint32_t n_hc, uint32_t n_embd,
                 uint32_t T);
void ref_hc_head(const float *X, const float *mix, const float *scale, const float *base, uint32_t n_hc,
                 uint32_t n_embd, uint32_t T, float hc_eps, float *h);
void ref_rope_tail(float *x, uint32_t T, uint32_t heads, uint32_t head_dim, uint32_t n_rot, uint32_t pos_base,
                   uint32_t pos_step, const float *inv_freq, int inverse);
void ref_fp8_sim(float *x, uint32_t rows, uint32_t stride, uint32_t n_sim);
void ref_hadamard_fp4(float *x, uint32_t rows, uint32_t width);
void ref_kv_store(const float *kv, float *ring, uint32_t width, uint32_t cap, uint32_t pos0, uint32_t T,
                  int round_f16);
/* bias NULL: no bias; tid2eid NULL: top-k, else hash on tokens (an id
 * outside [0, n_expert) becomes expert 0 with weight 0, as the kernel).
 * n_used <= 64. */
void ref_router(const float *logits, uint32_t n_expert, uint32_t n_used, uint32_t T, const float *bias,
                const int32_t *tid2eid, const int32_t *tokens, float scale, int32_t *sel, float *w);
/* w may be NULL; mid may equal g or u. */
void ref_swiglu(const float *g, const float *u, const float *w, uint32_t n, uint32_t rows, float clamp,
                float *mid);
/* add may be NULL. */
void ref_moe_sum(const float *y, uint32_t n_used, uint32_t n, uint32_t T, const float *add, float *out);
void ref_add(const float *a, const float *b, float *out, uint64_t n);

#endif
