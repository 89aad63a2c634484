/* test_sampler.c - the sampler's distributions, not just that it runs.
 *
 * Every filter of the chain is checked twice: ds4_sampler_probs against a
 * distribution computed here by hand from the definition (independent code:
 * softmax over a list, sort, cut), and ds4_sampler_sample against both by
 * drawing 100k tokens and comparing frequencies (chi-square with the
 * p = 1e-4 critical value, plus a per-token 5-sigma bound; tokens the chain
 * removed must never appear).  Seeds are fixed, so the test is deterministic;
 * the bounds only say a correct sampler passes for any seed with
 * overwhelming probability.  Also: greedy = argmax, seed determinism (and
 * the PRNG's first outputs pinned against an independent Python
 * computation), the edge cases (NaN / +inf / all -inf, one finite logit,
 * top_k above the vocabulary) and ds4_top_logprobs.
 */
#include <math.h>
#include <stdbool.h>
#include <string.h>

#include "../src/sampler.h"
#include "test.h"

#define N_DRAWS 100000

/* ---------------------------------------------------------------------- */
/* Reference chain, written from the definition                           */
/* ---------------------------------------------------------------------- */

/* Softmax of logits/T over indices with keep[i], into p (0 elsewhere). */
static void ref_softmax(const float *l, int n, double t, const bool *keep, double *p) {
    double mx = -INFINITY, s = 0.0;
    for (int i = 0; i < n; i++)
        if (keep[i] && l[i] > mx) mx = l[i];
    for (int i = 0; i < n; i++) {
        p[i] = keep[i] ? exp(((double)l[i] - mx) / t) : 0.0;
        s += p[i];
    }
    for (int i = 0; i < n; i++) p[i] /= s;
}

/* Order of indices by p descending, ties by index: selection sort. */
static void ref_order(const double *p, int n, int *ord) {
    bool used[64] = {0};
    for (int r = 0; r < n; r++) {
        int b = -1;
        for (int i = 0; i < n; i++)
            if (!used[i] && (b < 0 || p[i] > p[b])) b = i;
        used[b] = true;
        ord[r] = b;
    }
}

/* temperature -> top_k -> min_p -> top_p, renormalising after each. */
static void ref_chain(const float *l, int n, double t, int top_k, double min_p, double top_p, double *p) {
    bool keep[64] = {0};
    int ord[64];
    for (int i = 0; i < n; i++) keep[i] = !isinf(l[i]);
    ref_softmax(l, n, t, keep, p);
    ref_order(p, n, ord);
    if (top_k > 0)
        for (int r = top_k; r < n; r++) keep[ord[r]] = false;
    ref_softmax(l, n, t, keep, p);
    double pmax = p[ord[0]];
    for (int i = 0; i < n; i++)
        if (p[i] < min_p * pmax) keep[i] = false;
    ref_softmax(l, n, t, keep, p);
    double cum = 0.0;
    for (int r = 0; r < n; r++) {
        int i = ord[r];
        if (!keep[i]) continue;
        if (cum >= top_p) keep[i] = false;
        cum += p[i];
    }
    ref_softmax(l, n, t, keep, p);
}

/* ---------------------------------------------------------------------- */
/* Helpers                                                                */
/* ---------------------------------------------------------------------- */

/* Critical chi-square values at p = 1e-4 for df = 1..20. */
static const double chi2_crit[21] = {0,    15.14, 18.42, 21.11, 23.51, 25.74, 27.86, 29.88, 31.83, 33.72, 35.56,
                                     37.37, 39.13, 40.87, 42.58, 44.26, 45.92, 47.57, 49.19, 50.80, 52.39};

/* Draw N_DRAWS tokens with params p and compare with the expected
 * distribution `want` (n entries): returns 0 or fails with a message. */
static int check_draws_n(const ds4_sampler_params *p, const float *l, uint32_t n, const double *want,
                         int n_draws, const char *what) {
    ds4_sampler s;
    ds4_error err = {{0}};
    T_CHECK(ds4_sampler_init(&s, p, n, &err) == 0, "%s: %s", what, err.msg);
    static unsigned counts[4096];
    memset(counts, 0, sizeof(counts));
    for (int d = 0; d < n_draws; d++) {
        int32_t id = -1;
        if (ds4_sampler_sample(&s, l, n, &id, &err) != 0 || id < 0 || (uint32_t)id >= n) {
            ds4_sampler_free(&s);
            T_CHECK(0, "%s: draw %d gave %d: %s", what, d, id, err.msg);
        }
        counts[id]++;
    }
    ds4_sampler_free(&s);
    double chi2 = 0.0, max_sigma = 0.0, pooled_e = 0.0, pooled_o = 0.0;
    int df = -1;
    for (uint32_t i = 0; i < n; i++) {
        double e = want[i] * n_draws, o = counts[i];
        if (want[i] == 0.0) {
            T_CHECK(counts[i] == 0, "%s: token %u was removed but drawn %u times", what, i, counts[i]);
            continue;
        }
        double sigma = sqrt(n_draws * want[i] * (1.0 - want[i]));
        if (sigma > 0 && fabs(o - e) / sigma > max_sigma) max_sigma = fabs(o - e) / sigma;
        if (e < 5.0) {
            pooled_e += e;
            pooled_o += o;
            continue;
        }
        chi2 += (o - e) * (o - e) / e;
        df++;
    }
    if (pooled_e >= 5.0) {
        chi2 += (pooled_o - pooled_e) * (pooled_o - pooled_e) / pooled_e;
        df++;
    }
    T_CHECK(max_sigma < 5.0, "%s: a frequency is %.2f sigma off", what, max_sigma);
    if (df >= 1) {
        double crit = df <= 20 ? chi2_crit[df] : df + 4.0 * sqrt(2.0 * df) + 10.0;
        T_CHECK(chi2 < crit, "%s: chi-square %.2f with %d dof (limit %.2f)", what, chi2, df, crit);
    }
    return 0;
}

static int check_draws(const ds4_sampler_params *p, const float *l, uint32_t n, const double *want,
                       const char *what) {
    return check_draws_n(p, l, n, want, N_DRAWS, what);
}

static ds4_sampler_params params(float t, uint32_t top_k, float min_p, float top_p, uint64_t seed) {
    ds4_sampler_params p = {.temperature = t, .top_p = top_p, .min_p = min_p, .top_k = top_k, .seed = seed};
    return p;
}

/* probs from the library vs want, to tol (1e-9 against the reference on
 * the same float logits, 1e-6 against hand values: the logits are floats). */
static int check_probs_tol(const ds4_sampler_params *p, const float *l, uint32_t n, const double *want,
                           double tol, const char *what) {
    double got[4096];
    ds4_error err = {{0}};
    T_CHECK(ds4_sampler_probs(p, l, n, got, &err) == 0, "%s: %s", what, err.msg);
    double sum = 0.0;
    for (uint32_t i = 0; i < n; i++) {
        T_CHECK(fabs(got[i] - want[i]) < tol, "%s: p[%u] = %.12f, want %.12f", what, i, got[i], want[i]);
        sum += got[i];
    }
    T_CHECK(fabs(sum - 1.0) < 1e-12, "%s: probabilities sum to %.15f", what, sum);
    return 0;
}

static int check_probs(const ds4_sampler_params *p, const float *l, uint32_t n, const double *want,
                       const char *what) {
    return check_probs_tol(p, l, n, want, 1e-9, what);
}

static int check_hand(const ds4_sampler_params *p, const float *l, uint32_t n, const double *want,
                      const char *what) {
    return check_probs_tol(p, l, n, want, 1e-6, what);
}

/* ---------------------------------------------------------------------- */
/* Tests                                                                  */
/* ---------------------------------------------------------------------- */

static int t_defaults(void) {
    ds4_sampler_params p;
    ds4_sampler_default_params(&p);
    T_CHECK(p.temperature == 1.0f && p.top_p == 1.0f && p.min_p == 0.05f && p.top_k == 0, "defaults %g %g %g %u",
            (double)p.temperature, (double)p.top_p, (double)p.min_p, p.top_k);
    ds4_sampler_params asked = params(0.0f, 7, 0.5f, 0.3f, 99);
    ds4_sampler_params th = ds4_sampler_thinking_params(&asked);
    T_CHECK(th.temperature == 1.0f && th.top_p == 1.0f && th.min_p == 0.05f && th.top_k == 0 && th.seed == 99,
            "thinking params %g %g %g %u %llu", (double)th.temperature, (double)th.top_p, (double)th.min_p,
            th.top_k, (unsigned long long)th.seed);
    ds4_error err = {{0}};
    const ds4_sampler_params bad[] = {params(-1, 0, 0, 1, 0), params(NAN, 0, 0, 1, 0), params(101, 0, 0, 1, 0),
                                      params(1, 0, 0, 0, 0),  params(1, 0, 0, 1.5f, 0), params(1, 0, -0.1f, 1, 0),
                                      params(1, 0, 2, 1, 0),  params(1, 0, NAN, 1, 0)};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        ds4_sampler s;
        T_CHECK(ds4_sampler_init(&s, &bad[i], 10, &err) != 0, "bad params %zu accepted", i);
        T_CHECK(err.msg[0] != '\0', "no message for bad params %zu", i);
    }
    return 0;
}

static int t_prng_pinned(void) {
    /* xoshiro256** seeded by splitmix64, computed independently in Python. */
    const double want1[3] = {6331357011769570.0, 4687676335253193.0, 5171084433360200.0};
    const double want2[3] = {6699628332854298.0, 1171346042582225.0, 8676945727531674.0};
    ds4_sampler s;
    ds4_error err = {{0}};
    ds4_sampler_params p = params(1, 0, 0, 1, 1);
    T_CHECK(ds4_sampler_init(&s, &p, 4, &err) == 0, "%s", err.msg);
    for (int i = 0; i < 3; i++) {
        double u = ds4_sampler_uniform(&s) * 9007199254740992.0;
        T_CHECK(u == want1[i], "seed 1 output %d: %.0f, want %.0f", i, u, want1[i]);
    }
    p.seed = 12345;
    T_CHECK(ds4_sampler_set_params(&s, &p, &err) == 0, "%s", err.msg);
    for (int i = 0; i < 3; i++) {
        double u = ds4_sampler_uniform(&s) * 9007199254740992.0;
        T_CHECK(u == want2[i], "seed 12345 output %d: %.0f, want %.0f", i, u, want2[i]);
    }
    /* Uniforms stay in [0, 1) and average 1/2. */
    double sum = 0.0;
    for (int i = 0; i < N_DRAWS; i++) {
        double u = ds4_sampler_uniform(&s);
        T_CHECK(u >= 0.0 && u < 1.0, "uniform %g", u);
        sum += u;
    }
    T_CHECK(fabs(sum / N_DRAWS - 0.5) < 5.0 * sqrt(1.0 / 12.0 / N_DRAWS), "mean %g", sum / N_DRAWS);
    ds4_sampler_free(&s);
    return 0;
}

static int t_seed_determinism(void) {
    test_rng r = {0x5eed};
    float l[300];
    for (int i = 0; i < 300; i++) l[i] = 3.0f * test_rng_f32(&r);
    ds4_sampler a, b, c;
    ds4_error err = {{0}};
    ds4_sampler_params p = params(1.0f, 0, 0.0f, 1.0f, 42);
    T_CHECK(ds4_sampler_init(&a, &p, 300, &err) == 0, "%s", err.msg);
    T_CHECK(ds4_sampler_init(&b, &p, 300, &err) == 0, "%s", err.msg);
    p.seed = 43;
    T_CHECK(ds4_sampler_init(&c, &p, 300, &err) == 0, "%s", err.msg);
    int same_ab = 0, same_ac = 0;
    for (int i = 0; i < 1000; i++) {
        int32_t x = -1, y = -1, z = -1;
        T_CHECK(ds4_sampler_sample(&a, l, 300, &x, &err) == 0, "%s", err.msg);
        T_CHECK(ds4_sampler_sample(&b, l, 300, &y, &err) == 0, "%s", err.msg);
        T_CHECK(ds4_sampler_sample(&c, l, 300, &z, &err) == 0, "%s", err.msg);
        same_ab += x == y;
        same_ac += x == z;
    }
    ds4_sampler_free(&a);
    ds4_sampler_free(&b);
    ds4_sampler_free(&c);
    T_CHECK(same_ab == 1000, "same seed diverged: %d/1000 equal", same_ab);
    T_CHECK(same_ac < 100, "different seeds agree on %d/1000 draws", same_ac);
    return 0;
}

static int t_greedy_is_argmax(void) {
    test_rng r = {77};
    float l[1000];
    ds4_error err = {{0}};
    ds4_sampler s;
    ds4_sampler_params p = params(0.0f, 0, 0.05f, 1.0f, 5);
    T_CHECK(ds4_sampler_init(&s, &p, 1000, &err) == 0, "%s", err.msg);
    for (int trial = 0; trial < 50; trial++) {
        int want = 0;
        for (int i = 0; i < 1000; i++) {
            l[i] = 10.0f * test_rng_f32(&r);
            if (l[i] > l[want]) want = i;
        }
        int32_t got = -1, am = -1;
        T_CHECK(ds4_sampler_sample(&s, l, 1000, &got, &err) == 0, "%s", err.msg);
        T_CHECK(ds4_argmax(l, 1000, &am, &err) == 0, "%s", err.msg);
        T_CHECK(got == want && am == want, "trial %d: sample %d argmax %d want %d", trial, got, am, want);
    }
    /* Ties go to the lowest id; -inf entries are skipped. */
    float tie[6] = {-INFINITY, 1.0f, 3.0f, -2.0f, 3.0f, 3.0f};
    int32_t got = -1;
    T_CHECK(ds4_sampler_sample(&s, tie, 6, &got, &err) == 0 && got == 2, "tie -> %d", got);
    double pr[6];
    T_CHECK(ds4_sampler_probs(&p, tie, 6, pr, &err) == 0, "%s", err.msg);
    T_CHECK(pr[2] == 1.0 && pr[4] == 0.0 && pr[5] == 0.0, "greedy probs not one-hot");
    ds4_sampler_free(&s);
    /* top_k = 1 and a tiny top_p are greedy too, at any temperature. */
    double want[6] = {0, 0, 1, 0, 0, 0};
    float l6[6] = {0.5f, 1.0f, 3.0f, -2.0f, 2.9f, 2.0f};
    ds4_sampler_params k1 = params(5.0f, 1, 0.0f, 1.0f, 1), p0 = params(5.0f, 0, 0.0f, 1e-6f, 1);
    if (check_probs(&k1, l6, 6, want, "top_k 1")) return 1;
    if (check_probs(&p0, l6, 6, want, "top_p 1e-6")) return 1;
    return check_draws(&k1, l6, 6, want, "top_k 1 draws");
}

/* A vector whose softmax is exactly known: log of the probabilities. */
static const double base_p[8] = {0.30, 0.22, 0.15, 0.12, 0.09, 0.06, 0.04, 0.02};

static void base_logits(float *l) {
    for (int i = 0; i < 8; i++) l[i] = (float)log(base_p[i]) + 1.5f; /* shift: softmax ignores it */
}

static int t_filters_exact(void) {
    float l[8];
    base_logits(l);
    double want[8], ref[8];
    /* Temperature 1, nothing else: the base probabilities themselves. */
    ds4_sampler_params p = params(1.0f, 0, 0.0f, 1.0f, 0);
    for (int i = 0; i < 8; i++) want[i] = base_p[i];
    if (check_hand(&p, l, 8, want, "T=1")) return 1;
    /* top_k 3: .30 .22 .15 renormalised. */
    memset(want, 0, sizeof(want));
    want[0] = 0.30 / 0.67, want[1] = 0.22 / 0.67, want[2] = 0.15 / 0.67;
    p = params(1.0f, 3, 0.0f, 1.0f, 0);
    if (check_hand(&p, l, 8, want, "top_k 3")) return 1;
    /* min_p 0.35: keep p >= 0.105 -> .30 .22 .15 .12. */
    memset(want, 0, sizeof(want));
    for (int i = 0; i < 4; i++) want[i] = base_p[i] / 0.79;
    p = params(1.0f, 0, 0.35f, 1.0f, 0);
    if (check_hand(&p, l, 8, want, "min_p 0.35")) return 1;
    /* top_p 0.6: mass before .30 .22 .15 is 0, .30, .52 < .6 -> keep three. */
    memset(want, 0, sizeof(want));
    want[0] = 0.30 / 0.67, want[1] = 0.22 / 0.67, want[2] = 0.15 / 0.67;
    p = params(1.0f, 0, 0.0f, 0.6f, 0);
    if (check_hand(&p, l, 8, want, "top_p 0.6")) return 1;
    /* Chains and temperatures against the reference implementation. */
    const struct {
        float t;
        int k;
        float min_p, top_p;
    } cases[] = {{0.5f, 0, 0.0f, 1.0f},  {2.0f, 0, 0.0f, 1.0f},   {1.0f, 5, 0.1f, 1.0f},  {0.7f, 6, 0.0f, 0.8f},
                 {1.3f, 0, 0.2f, 0.9f},  {1.0f, 100, 0.05f, 1.0f}, {3.0f, 4, 0.5f, 0.95f}, {0.9f, 0, 0.05f, 0.5f}};
    for (size_t c = 0; c < sizeof(cases) / sizeof(cases[0]); c++) {
        p = params(cases[c].t, (uint32_t)cases[c].k, cases[c].min_p, cases[c].top_p, 0);
        ref_chain(l, 8, cases[c].t, cases[c].k, cases[c].min_p, cases[c].top_p, ref);
        char what[64];
        snprintf(what, sizeof(what), "chain case %zu", c);
        if (check_probs(&p, l, 8, ref, what)) return 1;
    }
    return 0;
}

static int t_distributions(void) {
    float l[8];
    base_logits(l);
    double ref[8];
    const struct {
        float t;
        int k;
        float min_p, top_p;
    } cases[] = {{1.0f, 0, 0.0f, 1.0f},  {1.0f, 0, 0.05f, 1.0f}, {0.5f, 0, 0.0f, 1.0f}, {2.0f, 0, 0.0f, 1.0f},
                 {1.0f, 3, 0.0f, 1.0f},  {1.0f, 0, 0.35f, 1.0f}, {1.0f, 0, 0.0f, 0.6f}, {1.3f, 6, 0.1f, 0.85f}};
    for (size_t c = 0; c < sizeof(cases) / sizeof(cases[0]); c++) {
        ds4_sampler_params p = params(cases[c].t, (uint32_t)cases[c].k, cases[c].min_p, cases[c].top_p, 1000 + c);
        ref_chain(l, 8, cases[c].t, cases[c].k, cases[c].min_p, cases[c].top_p, ref);
        char what[64];
        snprintf(what, sizeof(what), "draws case %zu (T %.1f k %d min_p %.2f top_p %.2f)", c, (double)cases[c].t,
                 cases[c].k, (double)cases[c].min_p, (double)cases[c].top_p);
        if (check_draws(&p, l, 8, ref, what)) return 1;
    }
    return 0;
}

/* A wider vocabulary: 512 random logits where hundreds of tokens survive,
 * the library's probs checked for the chain's invariants, then 20k draws
 * against them (fewer draws: each one is a pass and a sort over the
 * vocabulary, and the sanitizer build is slow). */
static int t_wide_vocab(void) {
    enum { N = 512 };
    static float l[N];
    static double pr[N];
    test_rng r = {2024};
    int top = 0;
    for (int i = 0; i < N; i++) {
        l[i] = 1.5f * test_rng_f32(&r);
        if (l[i] > l[top]) top = i;
    }
    ds4_error err = {{0}};
    const double t = 0.8, min_p = 0.05, top_p = 0.9;
    ds4_sampler_params p = params((float)t, 0, (float)min_p, (float)top_p, 7);
    T_CHECK(ds4_sampler_probs(&p, l, N, pr, &err) == 0, "%s", err.msg);
    /* Invariants: every kept token clears min_p against the max, the kept
     * set is a prefix of the order, and the mass before the last kept one
     * is below top_p while the kept mass reaches it. */
    double pmax = pr[top], lowest_kept = 1.0, highest_dropped = 0.0, full = 0.0, kept_w = 0.0;
    int kept = 0;
    for (int i = 0; i < N; i++) {
        double w = exp((l[i] - l[top]) / t);
        if (w >= min_p) full += w;
        if (pr[i] > 0) {
            kept++;
            kept_w += w;
            if (pr[i] < lowest_kept) lowest_kept = pr[i];
            T_CHECK(pr[i] >= min_p * pmax * (1 - 1e-12), "token %d below min_p kept", i);
        } else if (w > highest_dropped) {
            highest_dropped = w;
        }
    }
    T_CHECK(kept >= 100 && kept < N, "kept %d", kept);
    T_CHECK(lowest_kept / pmax >= highest_dropped * (1 - 1e-9), "kept set is not a prefix");
    T_CHECK(kept_w >= top_p * full * (1 - 1e-9), "kept mass %g of %g", kept_w / full, top_p);
    T_CHECK(kept_w - lowest_kept / pmax < top_p * full, "more kept than top_p needs");
    return check_draws_n(&p, l, N, pr, 20000, "wide vocab");
}

static int t_edge_cases(void) {
    ds4_error err = {{0}};
    ds4_sampler s;
    ds4_sampler_params p = params(1.0f, 0, 0.0f, 1.0f, 3);
    T_CHECK(ds4_sampler_init(&s, &p, 16, &err) == 0, "%s", err.msg);
    int32_t id = -1;
    /* One finite logit: always it, at any temperature. */
    float one[5] = {-INFINITY, -INFINITY, -INFINITY, -3.0f, -INFINITY};
    for (int i = 0; i < 1000; i++) {
        T_CHECK(ds4_sampler_sample(&s, one, 5, &id, &err) == 0 && id == 3, "draw %d -> %d %s", i, id, err.msg);
    }
    double pr[5];
    T_CHECK(ds4_sampler_probs(&p, one, 5, pr, &err) == 0 && pr[3] == 1.0, "one finite: %s", err.msg);
    /* NaN, +inf and no finite logit are errors, everywhere. */
    float nan_l[4] = {0.0f, NAN, 1.0f, 2.0f}, inf_l[4] = {0.0f, 1.0f, INFINITY, 2.0f};
    float none[3] = {-INFINITY, -INFINITY, -INFINITY};
    const float *bad[3] = {nan_l, inf_l, none};
    const uint32_t nbad[3] = {4, 4, 3};
    for (int b = 0; b < 3; b++) {
        err.msg[0] = '\0';
        T_CHECK(ds4_sampler_sample(&s, bad[b], nbad[b], &id, &err) != 0 && err.msg[0], "bad %d sampled", b);
        T_CHECK(ds4_sampler_probs(&p, bad[b], nbad[b], pr, &err) != 0, "bad %d probs", b);
        T_CHECK(ds4_argmax(bad[b], nbad[b], &id, &err) != 0, "bad %d argmax", b);
        int32_t ids[2];
        float lg[2];
        double lp[2];
        T_CHECK(ds4_top_logprobs(bad[b], nbad[b], 2, ids, lg, lp, &err) < 0, "bad %d top_logprobs", b);
    }
    T_CHECK(strstr(err.msg, "finite") != NULL, "message: %s", err.msg);
    /* More logits than the sampler was sized for. */
    float big[17] = {0};
    T_CHECK(ds4_sampler_sample(&s, big, 17, &id, &err) != 0, "oversized vector accepted");
    ds4_sampler_free(&s);
    /* top_k larger than the vocabulary is no filter. */
    float l[8];
    base_logits(l);
    double ref[8];
    ds4_sampler_params k_big = params(1.0f, 1000000, 0.0f, 1.0f, 9);
    ref_chain(l, 8, 1.0, 0, 0.0, 1.0, ref);
    if (check_probs(&k_big, l, 8, ref, "top_k > vocab")) return 1;
    if (check_draws(&k_big, l, 8, ref, "top_k > vocab draws")) return 1;
    /* min_p 1 keeps exactly the maxima (a tie keeps both, evenly). */
    float tie[4] = {1.0f, 2.0f, 0.0f, 2.0f};
    double want[4] = {0, 0.5, 0, 0.5};
    ds4_sampler_params m1 = params(1.0f, 0, 1.0f, 1.0f, 11);
    if (check_probs(&m1, tie, 4, want, "min_p 1")) return 1;
    if (check_draws(&m1, tie, 4, want, "min_p 1 draws")) return 1;
    /* A very high temperature flattens towards uniform. */
    ds4_sampler_params hot = params(100.0f, 0, 0.0f, 1.0f, 0);
    T_CHECK(ds4_sampler_probs(&hot, l, 8, ref, &err) == 0, "%s", err.msg);
    for (int i = 0; i < 8; i++) T_CHECK(fabs(ref[i] - 0.125) < 0.005, "T=100 p[%d] = %g", i, ref[i]);
    return 0;
}

static int t_top_logprobs(void) {
    float l[6] = {1.0f, 3.0f, -INFINITY, 2.0f, 3.0f, -1.0f};
    double lse = log(exp(1.0) + exp(3.0) + exp(2.0) + exp(3.0) + exp(-1.0));
    int32_t ids[8];
    float lg[8];
    double lp[8];
    ds4_error err = {{0}};
    int m = ds4_top_logprobs(l, 6, 3, ids, lg, lp, &err);
    T_CHECK(m == 3, "got %d: %s", m, err.msg);
    T_CHECK(ids[0] == 1 && ids[1] == 4 && ids[2] == 3, "order %d %d %d", ids[0], ids[1], ids[2]);
    T_CHECK(lg[0] == 3.0f && lg[2] == 2.0f, "logits %g %g", (double)lg[0], (double)lg[2]);
    T_CHECK(fabs(lp[0] - (3.0 - lse)) < 1e-12 && fabs(lp[2] - (2.0 - lse)) < 1e-12, "logprobs %g %g", lp[0], lp[2]);
    m = ds4_top_logprobs(l, 6, 8, ids, lg, lp, &err);
    T_CHECK(m == 6, "k > n gave %d", m);
    T_CHECK(ids[4] == 5 && ids[5] == 2 && isinf(lp[5]) && lp[5] < 0, "tail %d %d %g", ids[4], ids[5], lp[5]);
    double s = 0.0;
    for (int i = 0; i < m; i++) s += exp(lp[i]);
    T_CHECK(fabs(s - 1.0) < 1e-12, "probabilities sum to %.15f", s);
    return 0;
}

void tests_register_sampler(void) {
    test_add("sampler/defaults", t_defaults);
    test_add("sampler/prng_pinned", t_prng_pinned);
    test_add("sampler/seed_determinism", t_seed_determinism);
    test_add("sampler/greedy_is_argmax", t_greedy_is_argmax);
    test_add("sampler/filters_exact", t_filters_exact);
    test_add("sampler/distributions", t_distributions);
    test_add("sampler/wide_vocab", t_wide_vocab);
    test_add("sampler/edge_cases", t_edge_cases);
    test_add("sampler/top_logprobs", t_top_logprobs);
}
