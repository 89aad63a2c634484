/* sampler.c - temperature / top-k / min-p / top-p sampling and greedy.
 *
 * One function, build_candidates, turns a logit vector into the list of
 * tokens that survive the chain of sampler.h with their unnormalised
 * weights w_i = exp((l_i - max) / T) (so the most probable token has w = 1).
 * Sampling draws from that list, ds4_sampler_probs normalises it: the tests
 * check the second against hand-computed distributions and the first
 * against the second, so the two can never disagree.
 *
 * Cost per token: one pass over the vocabulary (validation, max, exp and
 * the min-p cut, which is w_i >= min_p since w_max = 1).  The survivors are
 * only sorted when top_k or top_p needs an order; with the default min_p
 * 0.05 they are few.  Weights and sums are doubles, so a 129k vocabulary
 * loses nothing to rounding.
 *
 * The PRNG is xoshiro256** (Blackman and Vigna, public domain algorithm)
 * seeded by expanding the 64-bit seed with splitmix64; uniforms take the
 * top 53 bits.  No global state: the generator lives in the sampler.
 */
#include "sampler.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

void ds4_sampler_default_params(ds4_sampler_params *p) {
    memset(p, 0, sizeof(*p));
    p->temperature = DS4_DEFAULT_TEMPERATURE;
    p->top_p = DS4_DEFAULT_TOP_P;
    p->min_p = DS4_DEFAULT_MIN_P;
    p->top_k = 0;
}

ds4_sampler_params ds4_sampler_thinking_params(const ds4_sampler_params *asked) {
    ds4_sampler_params p;
    ds4_sampler_default_params(&p);
    if (asked) p.seed = asked->seed;
    return p;
}

int ds4_sampler_params_check(const ds4_sampler_params *p, ds4_error *err) {
    if (!(p->temperature >= 0.0f && p->temperature <= 100.0f))
        return ds4_fail(err, "temperature %g is outside [0, 100]", (double)p->temperature);
    if (!(p->top_p > 0.0f && p->top_p <= 1.0f))
        return ds4_fail(err, "top_p %g is outside (0, 1]", (double)p->top_p);
    if (!(p->min_p >= 0.0f && p->min_p <= 1.0f))
        return ds4_fail(err, "min_p %g is outside [0, 1]", (double)p->min_p);
    return 0;
}

/* ---------------------------------------------------------------------- */
/* PRNG                                                                   */
/* ---------------------------------------------------------------------- */

static uint64_t splitmix64(uint64_t *x) {
    uint64_t z = (*x += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

static void rng_seed(uint64_t s[4], uint64_t seed) {
    for (int i = 0; i < 4; i++) s[i] = splitmix64(&seed);
}

static uint64_t rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }

static uint64_t rng_next(uint64_t s[4]) {
    uint64_t result = rotl(s[1] * 5, 7) * 9;
    uint64_t t = s[1] << 17;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = rotl(s[3], 45);
    return result;
}

double ds4_sampler_uniform(ds4_sampler *s) {
    return (double)(rng_next(s->rng) >> 11) * (1.0 / 9007199254740992.0);
}

/* ---------------------------------------------------------------------- */
/* The chain                                                              */
/* ---------------------------------------------------------------------- */

/* Check every logit and find the argmax (lowest id among ties). */
static int scan_logits(const float *logits, uint32_t n, int32_t *best, ds4_error *err) {
    int32_t b = -1;
    for (uint32_t i = 0; i < n; i++) {
        float v = logits[i];
        if (isnan(v)) return ds4_fail(err, "logit %u is NaN", i);
        if (isinf(v) && v > 0) return ds4_fail(err, "logit %u is +inf", i);
        if (isinf(v)) continue;
        if (b < 0 || v > logits[b]) b = (int32_t)i;
    }
    if (b < 0) return ds4_fail(err, n ? "no finite logit among %u" : "empty logit vector (%u)", n);
    *best = b;
    return 0;
}

static int cand_cmp(const void *a, const void *b) {
    const ds4_cand *x = a, *y = b;
    if (x->w != y->w) return x->w > y->w ? -1 : 1;
    return (x->id > y->id) - (x->id < y->id);
}

/* Fill cand with the survivors of the chain; returns their count (>= 1)
 * and their weight sum in *sum, or -1 on bad logits. */
static int64_t build_candidates(const ds4_sampler_params *p, const float *logits, uint32_t n, ds4_cand *cand,
                                double *sum, ds4_error *err) {
    int32_t best = 0;
    if (scan_logits(logits, n, &best, err) != 0) return -1;
    if (p->temperature <= 0.0f) {
        cand[0] = (ds4_cand){.w = 1.0, .id = best};
        *sum = 1.0;
        return 1;
    }
    const double max = logits[best], inv_t = 1.0 / (double)p->temperature, min_p = p->min_p;
    uint32_t count = 0;
    for (uint32_t i = 0; i < n; i++) {
        if (isinf(logits[i])) continue;
        double w = exp(((double)logits[i] - max) * inv_t);
        if (w < min_p || w <= 0.0) continue; /* min-p: p_i / p_max = w_i */
        cand[count++] = (ds4_cand){.w = w, .id = (int32_t)i};
    }
    /* The argmax has w = 1 >= min_p, so count >= 1.  Top-k and min-p both
     * keep a prefix of the sorted order, so applying min-p first is the
     * same as applying it second. */
    bool need_order = (p->top_k > 0 && count > p->top_k) || p->top_p < 1.0f;
    if (need_order) qsort(cand, count, sizeof(cand[0]), cand_cmp);
    if (p->top_k > 0 && count > p->top_k) count = p->top_k;
    double total = 0.0;
    for (uint32_t i = 0; i < count; i++) total += cand[i].w;
    if (p->top_p < 1.0f) {
        double goal = (double)p->top_p * total, cum = 0.0;
        uint32_t keep = 0;
        while (keep < count && (keep == 0 || cum < goal)) cum += cand[keep++].w;
        count = keep;
        total = cum;
    }
    *sum = total;
    return count;
}

/* ---------------------------------------------------------------------- */
/* API                                                                    */
/* ---------------------------------------------------------------------- */

int ds4_sampler_init(ds4_sampler *s, const ds4_sampler_params *p, uint32_t n_vocab, ds4_error *err) {
    memset(s, 0, sizeof(*s));
    if (ds4_sampler_params_check(p, err) != 0) return -1;
    if (n_vocab == 0) return ds4_fail(err, "sampler: empty vocabulary");
    s->cand = malloc(sizeof(ds4_cand) * n_vocab);
    if (!s->cand) return ds4_fail(err, "sampler: out of memory for %u candidates", n_vocab);
    s->cap = n_vocab;
    s->p = *p;
    rng_seed(s->rng, p->seed);
    return 0;
}

void ds4_sampler_free(ds4_sampler *s) {
    free(s->cand);
    memset(s, 0, sizeof(*s));
}

int ds4_sampler_set_params(ds4_sampler *s, const ds4_sampler_params *p, ds4_error *err) {
    if (ds4_sampler_params_check(p, err) != 0) return -1;
    if (p->seed != s->p.seed) rng_seed(s->rng, p->seed);
    s->p = *p;
    return 0;
}

int ds4_sampler_sample(ds4_sampler *s, const float *logits, uint32_t n, int32_t *out, ds4_error *err) {
    if (n > s->cap) return ds4_fail(err, "sampler: %u logits for a sampler sized for %u", n, s->cap);
    double sum = 0.0;
    int64_t count = build_candidates(&s->p, logits, n, s->cand, &sum, err);
    if (count < 0) return -1;
    if (count == 1) {
        *out = s->cand[0].id;
        return 0;
    }
    double r = ds4_sampler_uniform(s) * sum, cum = 0.0;
    for (int64_t i = 0; i < count; i++) {
        cum += s->cand[i].w;
        if (r < cum) {
            *out = s->cand[i].id;
            return 0;
        }
    }
    *out = s->cand[count - 1].id; /* r rounded up to the total */
    return 0;
}

int ds4_sampler_probs(const ds4_sampler_params *p, const float *logits, uint32_t n, double *probs,
                      ds4_error *err) {
    if (ds4_sampler_params_check(p, err) != 0) return -1;
    ds4_cand *cand = malloc(sizeof(ds4_cand) * (n ? n : 1));
    if (!cand) return ds4_fail(err, "sampler: out of memory for %u candidates", n);
    double sum = 0.0;
    int64_t count = build_candidates(p, logits, n, cand, &sum, err);
    if (count >= 0) {
        memset(probs, 0, sizeof(double) * n);
        for (int64_t i = 0; i < count; i++) probs[cand[i].id] = cand[i].w / sum;
    }
    free(cand);
    return count < 0 ? -1 : 0;
}

int ds4_argmax(const float *logits, uint32_t n, int32_t *out, ds4_error *err) {
    return scan_logits(logits, n, out, err);
}

int ds4_top_logprobs(const float *logits, uint32_t n, uint32_t k, int32_t *ids, float *logit, double *logprob,
                     ds4_error *err) {
    int32_t best = 0;
    if (scan_logits(logits, n, &best, err) != 0) return -1;
    const double max = logits[best];
    double sum = 0.0;
    for (uint32_t i = 0; i < n; i++)
        if (!isinf(logits[i])) sum += exp((double)logits[i] - max);
    const double lse = max + log(sum);
    /* Insertion into a sorted list of k: O(n) for the usual k <= 128. */
    uint32_t m = 0;
    if (k > n) k = n;
    for (uint32_t i = 0; i < n && k > 0; i++) {
        float v = logits[i];
        if (m == k && !(v > logit[m - 1])) continue;
        uint32_t j = m < k ? m++ : m - 1;
        while (j > 0 && logit[j - 1] < v) {
            logit[j] = logit[j - 1];
            ids[j] = ids[j - 1];
            j--;
        }
        logit[j] = v;
        ids[j] = (int32_t)i;
    }
    for (uint32_t i = 0; i < m; i++) logprob[i] = isinf(logit[i]) ? -INFINITY : (double)logit[i] - lse;
    return (int)m;
}
