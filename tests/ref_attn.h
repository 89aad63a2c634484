/* ref_attn.h - plain C references of the attention-side ops of src/ops.h
 * (comp_update, indexer_scores, topk, attention, moe_matmul), with the same
 * arguments on host arrays and the same semantics, written for clarity:
 * sums in double, straight loops in the order of the definitions.  The
 * tests in test_ops_attn.c compare the OpenCL ops against these.
 *
 * Weights that the ops take as GGUF tensors come as (bytes, GGML type):
 * converted with ds4_dequantize_row.  Functions that can fail (a weight
 * type that cannot be dequantized, no memory) return -1, else 0.
 */
#ifndef DS4_REF_ATTN_H
#define DS4_REF_ATTN_H

#include <stdint.h>

/* ds4_op_comp_update: ape is `ratio` rows of W values of type ape_type
 * (F32/F16/BF16); state_kv / state_sc [8 or 128][W] are updated in place;
 * emitted row w goes to out[(w - out_first) * D]. */
int ref_comp_update(const float *kv, const float *sc, const void *ape, uint32_t ape_type, float *state_kv,
                    float *state_sc, uint32_t D, uint32_t ratio, uint32_t pos0, uint32_t T, float *out,
                    uint32_t out_first);

/* ds4_op_indexer_scores: q [T][n_head][dim], w [T][n_head], rows
 * [n_rows][dim], scores [T][n_rows]. */
void ref_indexer_scores(const float *q, const float *w, const float *rows, uint32_t n_head, uint32_t dim,
                        uint32_t n_rows, uint32_t pos0, uint32_t T, float *scores);

/* ds4_op_topk: scores [T][n_rows], sel [T][k]. */
int ref_topk(const float *scores, uint32_t n_rows, uint32_t k, uint32_t pos0, uint32_t T, int32_t *sel);

/* ds4_op_attention: comp NULL for none, sel NULL for all visible rows. */
int ref_attention(const float *q, const float *ring, uint32_t cap, uint32_t window, const float *comp,
                  uint32_t ratio, const int32_t *sel, uint32_t n_sel, const float *sinks, uint32_t H, uint32_t D,
                  uint32_t pos0, uint32_t T, float scale, float *out);

/* ds4_op_moe_matmul: W holds n_expert slabs of nrows rows of ncols values
 * of type `type`; y [T][n_used][nrows]. */
int ref_moe_matmul(uint32_t type, const void *W, uint32_t ncols, uint32_t nrows, uint32_t n_expert,
                   const float *x, int x_per_slot, const int32_t *sel, uint32_t n_used, uint32_t T, float *y);

#endif
