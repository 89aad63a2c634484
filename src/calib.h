/* calib.h - calibration and quality measurement on the engine: the
 * importance-matrix collector behind `ds4cl-imatrix` and the teacher-forced
 * scorer behind `ds4cl-score`, plus reading their token inputs.
 *
 * Both split a token sequence into windows of `ctx` tokens; each window is
 * evaluated in a fresh session (position 0, empty KV), so results depend
 * only on the tokens and ctx, never on what ran before.
 *
 * Score: the mean over every window's positions 1..n-1 of
 * -log softmax(logits[p-1])[token p] (natural log, computed in double), and
 * the perplexity exp(mean).  The first token of each window is context only.
 *
 * Imatrix: the session's routed-expert tap (forward.h) hands every layer's
 * chunk to the device collector, which keeps per layer and expert the token
 * count and the running sums of the squared inputs (cl/imatrix.cl); the
 * host reads them once at the end and stores the means (imatrix.h).
 */
#ifndef DS4_CALIB_H
#define DS4_CALIB_H

#include <stdio.h>

#include "engine.h"
#include "imatrix.h"
#include "runtime.h"
#include "tokenizer.h"

/* The imatrix shape of a bound model. */
void ds4_imatrix_dims_of(const ds4_model *m, ds4_imatrix_dims *d);

/* Token ids from a file of decimal ids separated by commas and/or white
 * space (what `--tokens-file` reads).  Fails on anything else, on an empty
 * list and on ids outside [0, INT32_MAX]. */
int ds4_read_token_ids(const char *path, ds4_tokens *out, ds4_error *err);
/* A text file tokenized with the engine model's tokenizer (plain text: no
 * special tokens inside), after the BOS token. */
int ds4_read_text_tokens(ds4_engine *e, const char *path, ds4_tokens *out, ds4_error *err);

/* Collect the imatrix of tokens[0..n) in windows of ctx tokens into *out
 * (initialised here; free with ds4_imatrix_free).  Progress lines go to
 * `progress` when not NULL. */
int ds4_collect_imatrix(ds4_engine *e, const int32_t *tokens, uint64_t n, uint32_t ctx, ds4_imatrix *out,
                        FILE *progress, ds4_error *err);

typedef struct ds4_score_result {
    uint64_t n_tokens;  /* tokens evaluated */
    uint64_t n_scored;  /* predictions scored (n_tokens - windows) */
    double nll;         /* mean negative log-likelihood, nats per token */
    double ppl;         /* exp(nll) */
} ds4_score_result;

/* Teacher-forced NLL of tokens[0..n) in windows of ctx tokens (n >= 2). */
int ds4_score_tokens(ds4_engine *e, const int32_t *tokens, uint64_t n, uint32_t ctx, ds4_score_result *out,
                     FILE *progress, ds4_error *err);

/* --- the command lines of ds4cl-imatrix and ds4cl-score ---
 *   -m MODEL  (-f TEXT | --tokens-file IDS)  [--ctx N] [--chunk N]
 *   [--device D] [--no-quant-sim] [-q]   (+ -o OUT for ds4cl-imatrix) */
#define DS4_CALIB_DEFAULT_CTX 512u

typedef struct ds4_calib_args {
    const char *model, *text, *tokens_file, *out, *device;
    uint32_t ctx, chunk;
    bool no_quant_sim, quiet;
} ds4_calib_args;

/* Parse argv (want_out: -o is accepted and required).  Returns 0, or -1
 * with a message for a bad or incomplete command line. */
int ds4_calib_parse_args(int argc, char **argv, bool want_out, ds4_calib_args *a, ds4_error *err);
/* Load the engine and read the tokens the arguments name. */
int ds4_calib_open(const ds4_calib_args *a, ds4_engine **e, ds4_tokens *tokens, ds4_error *err);

/* --- the device collector (used by ds4_collect_imatrix; tests drive it
 * directly on their own buffers) --- */
typedef struct ds4_imx_collector ds4_imx_collector;

/* Kernels from `program` (built from the embedded cl/ sources), zeroed
 * accumulators for every layer, routing lists for chunks of up to
 * max_slots = tokens x n_expert_used slots. */
int ds4_imx_collector_new(ds4_imx_collector **out, ds4_runtime *rt, cl_program program, const ds4_imatrix_dims *d,
                          uint32_t max_slots, ds4_error *err);
void ds4_imx_collector_free(ds4_imx_collector *c);
/* Add one chunk of layer il: xn f32 [T][n_embd] (gate/up input), sel int32
 * [T][n_expert_used] (ids in [0, n_expert)), mid f32 [T][n_expert_used][n_ff]
 * (down input); all at offset 0.  Only enqueues. */
int ds4_imx_collector_add(ds4_imx_collector *c, uint32_t il, cl_mem xn, cl_mem sel, cl_mem mid, uint32_t T,
                          ds4_error *err);
/* Read the counts and sums back and turn them into means in *out
 * (initialised here; n_tokens, tokens_hash and name are left 0). */
int ds4_imx_collector_read(ds4_imx_collector *c, ds4_imatrix *out, ds4_error *err);

#endif
