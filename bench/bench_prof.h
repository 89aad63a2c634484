/* bench_prof.h - ds4cl-bench's profile tables and 43-layer projection.
 *
 * A bench_phase accumulates the kernel launches the engine profiler hands
 * over (ds4_engine_profile_take) for one phase of one frontier: the decoded
 * tokens (one take per token) or one prefill chunk (one take).  From them it
 * derives, per token: time, launches and achieved GB/s per kernel class (the
 * kernel function name); the wall span and kernel-busy time per layer and
 * per layer kind (compress ratio 0/4/128, hash- or score-routed); launches
 * in total; device busy time against the wall span.
 *
 * Spans: inside one take the launches form runs of equal tag (embedding
 * -1, layer 0, ..., layer N-1, head -1).  A run's span goes from the start
 * of its first launch to the start of the next run's first launch (launch
 * gaps count), the last run's to the end of its last launch, so the spans
 * of a take add up to its wall span.  Embedding and head share tag -1 and
 * are reported together as "head/embed".
 *
 * Projection: a benchmark model has fewer layers than DeepSeek V4 Flash's
 * 43 (layers 0-1 ratio 0, then ratio 4 on even and ratio 128 on odd layers;
 * layers 0-2 hash-routed).  Each Flash layer takes the mean span of the
 * measured layers of its kind (else of its ratio, else of all layers); the
 * projected time per token is the measured one times
 *   (sum of the 43 layers' spans + head/embed span) /
 *   (sum of the measured layers' spans + head/embed span).
 * Launches and estimated bytes per token are projected the same way.
 */
#ifndef DS4_BENCH_PROF_H
#define DS4_BENCH_PROF_H

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

#include "engine.h"

#define BENCH_FLASH_LAYERS 43u
#define BENCH_FLASH_HASH_LAYERS 3u

/* One kernel class (kernel function name) of a phase. */
typedef struct bench_kclass {
    char name[48];
    uint64_t launches;
    uint64_t busy_ns;     /* sum of end - start */
    uint64_t bytes;       /* estimated bytes of the launches that have an estimate */
    uint64_t bytes_ns;    /* busy time of those launches */
} bench_kclass;

/* Per tag totals: index 0 = head/embed (tag -1), 1 + il = layer il. */
typedef struct bench_tag {
    uint64_t span_ns, busy_ns, launches, bytes;
} bench_tag;

typedef struct bench_phase {
    const char *name;     /* "decode" or "prefill" */
    uint32_t n_layer;
    uint64_t tokens;      /* tokens the added takes covered */
    uint64_t launches;
    uint64_t busy_ns, wall_ns;
    bench_kclass *k;
    uint32_t nk, capk;
    bench_tag *tag;       /* n_layer + 1 entries */
} bench_phase;

/* A projection of one phase onto the 43-layer Flash stack (per token). */
typedef struct bench_proj {
    double scale;         /* projected span / measured span */
    double launches;      /* projected launches per token */
    double bytes;         /* projected estimated bytes per token */
    uint32_t n_measured;  /* layers of the measured model */
} bench_proj;

int bench_phase_init(bench_phase *p, const char *name, uint32_t n_layer, ds4_error *err);
void bench_phase_free(bench_phase *p);
/* Clear the totals (keeps the allocations). */
void bench_phase_reset(bench_phase *p);
/* Add one take (records in launch order) that covered `tokens` tokens. */
int bench_phase_add(bench_phase *p, const ds4_prof_record *r, uint64_t n, uint32_t tokens, ds4_error *err);
/* Print the per-kernel, per-layer-kind and total tables. measured_s: the
 * timed (unprofiled) seconds per token, 0 if unknown. */
void bench_phase_print(const bench_phase *p, const ds4_model *m, double measured_s, FILE *fp);
/* Project p onto the Flash layer pattern; fails when p has no tokens or a
 * zero measured span. */
int bench_project(const bench_phase *p, const ds4_model *m, bench_proj *out, ds4_error *err);

#endif
