/* sampler.h - choosing the next token from a logit vector.
 *
 * The distribution a sampler draws from is defined by a fixed chain, each
 * step renormalising what survives the previous one:
 *
 *   1. temperature T: p_i ~ exp((l_i - max l) / T) over the finite logits
 *      (-inf logits have probability 0; T == 0 means greedy: argmax, the
 *      lowest id among equal maxima);
 *   2. top_k (0 = off): keep the k most probable tokens (ties: lower id
 *      first); k larger than the vocabulary keeps everything;
 *   3. min_p (0 = off): keep tokens with p_i >= min_p * p_max;
 *   4. top_p (1 = off): sort by probability, keep the shortest prefix whose
 *      mass reaches top_p (the most probable token is always kept).
 *
 * There is no repetition penalty.  NaN or +inf logits are an error (a broken
 * forward pass must not turn into plausible text), and so is a vector with
 * no finite logit.  Randomness comes from the sampler's own PRNG
 * (xoshiro256**, seeded through splitmix64): the same seed and the same
 * logits give the same tokens on every machine.
 */
#ifndef DS4_SAMPLER_H
#define DS4_SAMPLER_H

#include <stdbool.h>
#include <stdint.h>

#include "error.h"

typedef struct ds4_sampler_params {
    float temperature; /* 0 = greedy, else (0, 100] */
    float top_p;       /* (0, 1]; 1 = off */
    float min_p;       /* [0, 1]; 0 = off */
    uint32_t top_k;    /* 0 = off */
    uint64_t seed;
} ds4_sampler_params;

/* ds4's defaults: temperature 1, top_p 1, min_p 0.05, top_k 0, seed 0. */
#define DS4_DEFAULT_TEMPERATURE 1.0f
#define DS4_DEFAULT_TOP_P 1.0f
#define DS4_DEFAULT_MIN_P 0.05f
void ds4_sampler_default_params(ds4_sampler_params *p);

/* The settings thinking mode uses whatever the caller asked for (as
 * DeepSeek's API and ds4's server do): the defaults above, keeping only the
 * caller's seed. */
ds4_sampler_params ds4_sampler_thinking_params(const ds4_sampler_params *asked);

/* Range-check the parameters; an error names the bad one. */
int ds4_sampler_params_check(const ds4_sampler_params *p, ds4_error *err);

/* A token that survived the chain so far and its unnormalised weight. */
typedef struct ds4_cand {
    double w;
    int32_t id;
} ds4_cand;

typedef struct ds4_sampler {
    ds4_sampler_params p;
    uint64_t rng[4];   /* xoshiro256** state */
    uint32_t cap;      /* entries in cand */
    ds4_cand *cand;    /* scratch, one per vocabulary entry */
} ds4_sampler;

/* Validate p and allocate scratch for vocabularies up to n_vocab. */
int ds4_sampler_init(ds4_sampler *s, const ds4_sampler_params *p, uint32_t n_vocab, ds4_error *err);
void ds4_sampler_free(ds4_sampler *s);
/* Change the parameters (the PRNG state is kept unless the seed changes). */
int ds4_sampler_set_params(ds4_sampler *s, const ds4_sampler_params *p, ds4_error *err);

/* Draw a token id from logits[0..n) (n <= the n_vocab given at init). */
int ds4_sampler_sample(ds4_sampler *s, const float *logits, uint32_t n, int32_t *out, ds4_error *err);

/* The distribution ds4_sampler_sample draws from: probs[0..n) (0 for the
 * tokens the chain removed; the rest sum to 1).  For greedy parameters it
 * is one-hot on the argmax. */
int ds4_sampler_probs(const ds4_sampler_params *p, const float *logits, uint32_t n, double *probs,
                      ds4_error *err);

/* Index of the largest logit (lowest id among ties); -1 with an error for
 * NaN / +inf logits or when no logit is finite. */
int ds4_argmax(const float *logits, uint32_t n, int32_t *out, ds4_error *err);

/* The k most probable tokens under log_softmax(logits) (temperature 1, no
 * filters), most probable first: ids[i], their logits and log-probabilities.
 * Writes min(k, n) entries and returns how many (-1 on bad logits). */
int ds4_top_logprobs(const float *logits, uint32_t n, uint32_t k, int32_t *ids, float *logit, double *logprob,
                     ds4_error *err);

/* Uniform double in [0, 1) from the sampler's PRNG (exposed for tests). */
double ds4_sampler_uniform(ds4_sampler *s);

#endif
