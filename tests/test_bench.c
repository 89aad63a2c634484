/* test_bench.c - the ds4cl-bench program on small random models (PoCL).
 *
 * Runs the binary next to the test runner (build/san/ds4cl-bench under
 * make test) on the default test model with tiny frontiers (16/32/48,
 * chunk 8) and checks: the CSV header and rows (frontiers, token counts,
 * positive rates, a snapshot that grows with the context); geometric steps;
 * that the greedy decode probe is deterministic and that restore works (the
 * ids decoded at a frontier equal those of a fresh run that starts there);
 * that --profile's per-kernel launches per decoded token and per prefill
 * token equal the counts of an in-process engine profiling the same tokens;
 * the 43-layer projection on the tiny benchmark model (benchmodel.h) and
 * on the test model with ds4cl.bench_model added (a missing kind projects
 * from its ratio), its launches and rates recomputed from the printed
 * per-kind tables; and bad command lines (exit 2) and impossible settings
 * (exit 1, one line).
 */
#include <stdbool.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "../src/benchmodel.h"
#include "../src/engine.h"
#include "../src/gguf_write.h"
#include "../src/testmodel.h"
#include "../src/tokenizer.h"
#include "test.h"

#define MAX_KERNELS 64

typedef struct {
    int status;        /* exit code, or 128+signal */
    char out[65536];   /* stdout and stderr together */
} bench_run;

/* Run `ds4cl-bench args`; stdout and stderr together, or stdout alone. */
static int run_bench_in(bench_run *r, const char *args, bool with_stderr) {
    char cmd[4096];
    snprintf(cmd, sizeof(cmd), "%s/ds4cl-bench %s </dev/null %s", test_bin_dir(), args,
             with_stderr ? "2>&1" : "2>/dev/null");
    FILE *p = popen(cmd, "r");
    if (!p) return -1;
    size_t n = fread(r->out, 1, sizeof(r->out) - 1, p);
    r->out[n] = '\0';
    char sink[4096];
    while (fread(sink, 1, sizeof(sink), p) > 0) {}
    int st = pclose(p);
    if (st == -1) return -1;
    r->status = WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
    return 0;
}

static int run_bench(bench_run *r, const char *args) { return run_bench_in(r, args, true); }

static int read_all(const char *path, char *buf, size_t cap) {
    FILE *fp = fopen(path, "rb");
    if (!fp) return -1;
    size_t n = fread(buf, 1, cap - 1, fp);
    buf[n] = '\0';
    fclose(fp);
    return 0;
}

/* A temporary file name (created empty). */
static int tmp_path(char *path, size_t cap, const char *tag) {
    snprintf(path, cap, "/tmp/ds4cl-test-bench-%s-XXXXXX", tag);
    int fd = mkstemp(path);
    if (fd < 0) return -1;
    close(fd);
    return 0;
}

static int write_model(char *path, size_t cap) {
    ds4_testmodel_opts o;
    ds4_testmodel_default_opts(&o);
    ds4_error err = {{0}};
    if (tmp_path(path, cap, "model") != 0) return -1;
    if (ds4_testmodel_write(&o, path, &err) != 0) {
        fprintf(stderr, "    %s\n", err.msg);
        return -1;
    }
    return 0;
}

/* The default test model plus ds4cl.bench_model = true: every key and
 * tensor of the test model copied into a new file. */
static int write_keyed_model(char *path, size_t cap) {
    ds4_testmodel_opts o;
    ds4_testmodel_default_opts(&o);
    ds4_error err = {{0}};
    uint8_t *img = NULL;
    uint64_t size = 0;
    gguf_file f = {0};
    gguf_writer *w = NULL;
    int rc = tmp_path(path, cap, "bmodel");
    if (rc == 0) rc = ds4_testmodel_build(&o, &img, &size, &err);
    if (rc == 0) rc = gguf_parse(&f, img, size, &err);
    if (rc == 0 && !(w = gguf_writer_new(f.alignment == GGUF_DEFAULT_ALIGNMENT ? 0 : f.alignment))) rc = -1;
    for (uint64_t i = 0; rc == 0 && i < f.n_kv; i++) {
        char key[256];
        gguf_str_copy(f.kv[i].key, key, sizeof(key));
        if (strcmp(key, "general.alignment") != 0) gguf_w_value(w, key, &f.kv[i].value);
    }
    if (rc == 0) gguf_w_bool(w, "ds4cl.bench_model", true);
    for (uint64_t i = 0; rc == 0 && i < f.n_tensors; i++) {
        const gguf_tensor *t = &f.tensors[i];
        char name[GGUF_MAX_NAME_LEN + 1];
        gguf_str_copy(t->name, name, sizeof(name));
        rc = gguf_w_tensor(w, name, t->n_dims, t->ne, t->type, t->data, &err);
    }
    if (rc == 0) rc = gguf_writer_save(w, path, &err);
    if (rc != 0) fprintf(stderr, "    bench model: %s\n", err.msg);
    gguf_writer_free(w);
    gguf_close(&f);
    free(img);
    return rc;
}

/* Split the CSV text into rows of six numbers after the exact header. */
static int parse_csv(const char *text, double rows[][6], int cap, int *n) {
    const char *hdr = "ctx_tokens,prefill_tokens,prefill_tps,gen_tokens,gen_tps,kvcache_bytes\n";
    if (strncmp(text, hdr, strlen(hdr)) != 0) return -1;
    const char *p = text + strlen(hdr);
    *n = 0;
    while (*p && *n < cap) {
        double *r = rows[*n];
        int used = 0;
        if (sscanf(p, "%lf,%lf,%lf,%lf,%lf,%lf%n", &r[0], &r[1], &r[2], &r[3], &r[4], &r[5], &used) != 6) return -1;
        p += used;
        if (*p != '\n') return -1;
        p++;
        (*n)++;
    }
    return *p ? -1 : 0;
}

/* The ids of frontier f in a --dump-gen file ("F: id id ..."), as text. */
static int gen_line(const char *dump, unsigned f, char *out, size_t cap) {
    char key[32];
    snprintf(key, sizeof(key), "%u:", f);
    for (const char *p = dump; p && *p; p = strchr(p, '\n') ? strchr(p, '\n') + 1 : NULL) {
        if (strncmp(p, key, strlen(key)) != 0) continue;
        const char *e = strchr(p, '\n');
        size_t n = e ? (size_t)(e - p) : strlen(p);
        if (n >= cap) return -1;
        memcpy(out, p, n);
        out[n] = '\0';
        return 0;
    }
    return -1;
}

static int t_csv_and_restore(void) {
    char model[64], csv[64], dump1[64], dump2[64], dump3[64];
    T_CHECK(write_model(model, sizeof(model)) == 0, "test model");
    T_CHECK(tmp_path(csv, sizeof(csv), "csv") == 0 && tmp_path(dump1, sizeof(dump1), "g1") == 0 &&
                tmp_path(dump2, sizeof(dump2), "g2") == 0 && tmp_path(dump3, sizeof(dump3), "g3") == 0,
            "mkstemp");
    static bench_run r;
    static char text[8192], d1[4096], d2[4096], d3[4096];
    char args[1024];
    snprintf(args, sizeof(args),
             "-m %s --ctx-start 16 --ctx-max 48 --step-incr 16 -n 4 --chunk 8 --csv %s --dump-gen %s", model, csv,
             dump1);
    int rc1 = run_bench(&r, args);
    int ok1 = rc1 == 0 && r.status == 0;
    read_all(csv, text, sizeof(text));
    read_all(dump1, d1, sizeof(d1));
    /* The same sweep again, and a fresh run that starts at 32. */
    snprintf(args, sizeof(args), "-m %s --ctx-start 16 --ctx-max 48 --step-incr 16 -n 4 --chunk 8 --csv /dev/null "
                                 "--dump-gen %s", model, dump2);
    int ok2 = run_bench(&r, args) == 0 && r.status == 0;
    snprintf(args, sizeof(args), "-m %s --ctx-start 32 --ctx-max 48 --step-incr 16 -n 4 --chunk 8 --csv /dev/null "
                                 "--dump-gen %s", model, dump3);
    int ok3 = run_bench(&r, args) == 0 && r.status == 0;
    read_all(dump2, d2, sizeof(d2));
    read_all(dump3, d3, sizeof(d3));
    unlink(model);
    unlink(csv);
    unlink(dump1);
    unlink(dump2);
    unlink(dump3);
    T_CHECK(ok1 && ok2 && ok3, "a run failed (exit %d):\n%s", r.status, r.out);

    double rows[8][6];
    int n = 0;
    T_CHECK(parse_csv(text, rows, 8, &n) == 0, "bad CSV:\n%s", text);
    T_CHECK(n == 3, "%d rows:\n%s", n, text);
    for (int i = 0; i < n; i++) {
        T_CHECK(rows[i][0] == 16.0 * (i + 1), "row %d ctx %g", i, rows[i][0]);
        T_CHECK(rows[i][1] == 16 && rows[i][3] == 4, "row %d: prefill %g gen %g", i, rows[i][1], rows[i][3]);
        T_CHECK(rows[i][2] > 0 && rows[i][4] > 0, "row %d: rates %g %g", i, rows[i][2], rows[i][4]);
        T_CHECK(i == 0 || rows[i][5] > rows[i - 1][5], "kvcache_bytes %g after %g", rows[i][5], rows[i - 1][5]);
    }
    T_CHECK(strcmp(d1, d2) == 0, "two runs decode differently:\n%s---\n%s", d1, d2);
    char a[512], b[512];
    for (unsigned f = 32; f <= 48; f += 16) {
        T_CHECK(gen_line(d1, f, a, sizeof(a)) == 0 && gen_line(d3, f, b, sizeof(b)) == 0, "no %u line:\n%s\n%s", f,
                d1, d3);
        T_CHECK(strcmp(a, b) == 0, "frontier %u after restore '%s', fresh run '%s'", f, a, b);
    }
    T_CHECK(gen_line(d1, 16, a, sizeof(a)) == 0 && strlen(a) > 4, "no 16 line:\n%s", d1);
    return 0;
}

static int t_step_mul(void) {
    char model[64];
    T_CHECK(write_model(model, sizeof(model)) == 0, "test model");
    static bench_run r;
    char args[512];
    snprintf(args, sizeof(args), "-m %s --ctx-start 8 --ctx-max 40 --step-mul 2 -n 1 --chunk 8", model);
    int rc = run_bench_in(&r, args, false);
    unlink(model);
    T_CHECK(rc == 0 && r.status == 0, "exit %d:\n%s", r.status, r.out);
    double rows[8][6];
    int n = 0;
    T_CHECK(parse_csv(r.out, rows, 8, &n) == 0 && n == 4, "CSV:\n%s", r.out);
    const double want[4][2] = {{8, 8}, {16, 8}, {32, 16}, {40, 8}};
    for (int i = 0; i < 4; i++)
        T_CHECK(rows[i][0] == want[i][0] && rows[i][1] == want[i][1], "row %d: %g,%g", i, rows[i][0], rows[i][1]);
    return 0;
}

/* One kernel row of a printed table. */
typedef struct {
    char name[48];
    double per_tok;
} krow;

/* The kernel rows of the table after the line starting with `head`. */
static int parse_kernels(const char *text, const char *head, krow *rows, int cap, int *n) {
    const char *p = strstr(text, head);
    if (!p) return -1;
    p = strchr(p, '\n');
    if (!p || !(p = strchr(p + 1, '\n'))) return -1; /* skip the column header */
    p++;
    *n = 0;
    while (*p == ' ' && *n < cap) {
        char name[48], gbs[32];
        double us, pct, lt;
        if (sscanf(p, "%47s %lf %lf %lf %31s", name, &us, &pct, &lt, gbs) != 5) break;
        if (strcmp(name, "layer") == 0) break;
        snprintf(rows[*n].name, sizeof(rows[*n].name), "%s", name);
        rows[*n].per_tok = lt;
        (*n)++;
        p = strchr(p, '\n');
        if (!p) break;
        p++;
    }
    return 0;
}

/* Kernel launch counts of one take, added to names/counts. */
static int count_take(ds4_engine *e, char names[][48], uint64_t *counts, int *nk, ds4_error *err) {
    ds4_prof_record *rec = NULL;
    uint64_t n = 0;
    if (ds4_engine_profile_take(e, &rec, &n, err) != 0) return -1;
    for (uint64_t i = 0; i < n; i++) {
        int k = 0;
        while (k < *nk && strcmp(names[k], rec[i].kernel) != 0) k++;
        if (k == *nk) {
            if (*nk == MAX_KERNELS) break;
            snprintf(names[k], 48, "%s", rec[i].kernel);
            counts[k] = 0;
            (*nk)++;
        }
        counts[k]++;
    }
    free(rec);
    return 0;
}

static int argmax_no_eos(const float *l, uint32_t n, int32_t eos) {
    int best = -1;
    for (uint32_t i = 0; i < n; i++)
        if ((int32_t)i != eos && !isnan(l[i]) && (best < 0 || l[i] > l[best])) best = (int)i;
    return best;
}

/* Compare printed rows with counts over `tokens` tokens. */
static int check_rows(const char *what, const krow *rows, int nr, char names[][48], const uint64_t *counts, int nk,
                      double tokens) {
    T_CHECK(nr == nk, "%s: %d printed kernels, %d counted", what, nr, nk);
    for (int k = 0; k < nk; k++) {
        int j = 0;
        while (j < nr && strcmp(rows[j].name, names[k]) != 0) j++;
        T_CHECK(j < nr, "%s: kernel %s not printed", what, names[k]);
        double want = (double)counts[k] / tokens;
        T_CHECK(fabs(rows[j].per_tok - want) < 0.006, "%s: %s %.2f launches/token printed, %.4f counted", what,
                names[k], rows[j].per_tok, want);
    }
    return 0;
}

static const char prompt_text[] =
    "Quel ramo del lago di Como, che volge a mezzogiorno, tra due catene non interrotte di monti, tutto a seni e a "
    "golfi, a seconda dello sporgere e del rientrare di quelli, vien, quasi a un tratto, a ristringersi, e a prender "
    "corso e figura di fiume, tra un promontorio a destra, e un'ampia costiera dall'altra parte.";

static int t_profile_counts(void) {
    char model[64], ptext[64], pout[64], dump[64];
    T_CHECK(write_model(model, sizeof(model)) == 0, "test model");
    T_CHECK(tmp_path(ptext, sizeof(ptext), "prompt") == 0 && tmp_path(pout, sizeof(pout), "prof") == 0 &&
                tmp_path(dump, sizeof(dump), "gen") == 0,
            "mkstemp");
    FILE *fp = fopen(ptext, "w");
    T_CHECK(fp && fputs(prompt_text, fp) >= 0 && fclose(fp) == 0, "prompt file");
    static bench_run r;
    static char prof[65536], gen[1024];
    char args[1024];
    snprintf(args, sizeof(args),
             "-m %s --prompt-file %s --ctx-start 16 --ctx-max 16 -n 2 --chunk 8 --profile --profile-tokens 3 "
             "--profile-out %s --dump-gen %s --csv /dev/null",
             model, ptext, pout, dump);
    int ok = run_bench(&r, args) == 0 && r.status == 0;
    read_all(pout, prof, sizeof(prof));
    read_all(dump, gen, sizeof(gen));
    unlink(ptext);
    unlink(pout);
    unlink(dump);
    if (!ok) unlink(model);
    T_CHECK(ok, "exit %d:\n%s", r.status, r.out);

    /* The same tokens in-process: prefill 16, profile 3 greedy tokens,
     * then the prefill chunk of tokens 16..23 from the snapshot. */
    ds4_error err = {{0}};
    gguf_file f = {0};
    ds4_tokenizer *tok = NULL;
    ds4_tokens ids = {0};
    ds4_engine *e = NULL;
    ds4_session *s = NULL;
    uint8_t *snap = NULL;
    uint64_t snap_size = 0;
    static char dn[MAX_KERNELS][48], pn[MAX_KERNELS][48];
    uint64_t dc[MAX_KERNELS], pc[MAX_KERNELS];
    int ndk = 0, npk = 0, rc = 0;
    int32_t got[3] = {0};
    rc = gguf_open(&f, model, &err);
    if (rc == 0) rc = ds4_tokenizer_load(&tok, &f, &err);
    if (rc == 0) rc = ds4_tokenize(tok, prompt_text, strlen(prompt_text), false, &ids, &err);
    ds4_engine_opts eo = {.model_path = model, .prefill_chunk = 8, .profile = true};
    if (rc == 0) rc = ds4_engine_load(&e, &eo, &err);
    if (rc == 0) rc = ds4_session_new(e, 64, &s, &err);
    if (rc == 0 && ids.n < 24) rc = ds4_fail(&err, "prompt has %u tokens", ids.n);
    if (rc == 0) rc = ds4_session_eval(s, ids.ids, 16, NULL, &err);
    if (rc == 0) rc = ds4_session_save(s, &snap, &snap_size, &err);
    if (rc == 0) rc = ds4_engine_profile_start(e, &err);
    for (int t = 0; rc == 0 && t < 3; t++) {
        got[t] = argmax_no_eos(ds4_session_logits(s), ds4_engine_model(e)->hp.n_vocab,
                               ds4_tokenizer_special(tok, DS4_TOK_EOS));
        rc = ds4_session_eval(s, &got[t], 1, NULL, &err);
        if (rc == 0) rc = count_take(e, dn, dc, &ndk, &err);
    }
    if (rc == 0) rc = ds4_session_restore(s, snap, snap_size, &err);
    if (rc == 0) rc = ds4_session_eval(s, ids.ids + 16, 8, NULL, &err);
    if (rc == 0) rc = count_take(e, pn, pc, &npk, &err);
    ds4_engine_profile_stop(e);
    free(snap);
    ds4_session_free(s);
    ds4_engine_free(e);
    ds4_tokens_free(&ids);
    if (tok) ds4_tokenizer_free(tok);
    gguf_close(&f);
    unlink(model);
    T_CHECK(rc == 0, "%s", err.msg);

    char want[128];
    snprintf(want, sizeof(want), "16: %d %d", got[0], got[1]);
    T_CHECK(strncmp(gen, want, strlen(want)) == 0, "bench decoded '%s', in-process '%s'", gen, want);
    static krow rows[MAX_KERNELS];
    int nr = 0;
    T_CHECK(parse_kernels(prof, "profile: decode at ctx 16, 3 tokens", rows, MAX_KERNELS, &nr) == 0, "no decode "
            "table:\n%s", prof);
    if (check_rows("decode", rows, nr, dn, dc, ndk, 3.0) != 0) return 1;
    T_CHECK(parse_kernels(prof, "profile: prefill at ctx 16, one chunk of 8 tokens", rows, MAX_KERNELS, &nr) == 0,
            "no prefill table:\n%s", prof);
    if (check_rows("prefill", rows, nr, pn, pc, npk, 8.0) != 0) return 1;
    uint64_t total = 0;
    for (int k = 0; k < ndk; k++) total += dc[k];
    snprintf(want, sizeof(want), "launches per token %.2f;", (double)total / 3.0);
    T_CHECK(strstr(prof, want) != NULL, "no '%s' in:\n%s", want, prof);
    T_CHECK(strstr(prof, "ratio 0 hash") && strstr(prof, "ratio 4 hash") && strstr(prof, "ratio 128 score") &&
                strstr(prof, "head/embed"),
            "layer kinds missing:\n%s", prof);
    T_CHECK(!strstr(prof, "projected"), "a projection on a model without the bench key:\n%s", prof);
    return 0;
}

/* span us/layer and launch/layer of a layer-kind row of a table. */
static int kind_row(const char *table, const char *kind, double *span, double *launch) {
    const char *p = strstr(table, kind);
    if (!p) return -1;
    p += strlen(kind);
    double layers, busy;
    if (strcmp(kind, "head/embed") == 0) return sscanf(p, " - %lf %lf %lf", span, &busy, launch) == 3 ? 0 : -1;
    return sscanf(p, "%lf %lf %lf %lf", &layers, span, &busy, launch) == 4 ? 0 : -1;
}

/* How the 43 Flash layers map on the measured kinds: kind row name and the
 * number of Flash layers projected from it. */
typedef struct {
    const char *kind;
    int flash_layers;
} kind_use;

/* Run a profiled sweep 16, 32 on a benchmark model and check the ctx-16
 * row of --proj-csv against the printed decode and prefill tables:
 * launches = head + sum(flash_layers x launch/layer); rate = measured rate
 * x (head + sum over the 4 measured layers of their spans) / (head +
 * sum(flash_layers x span)). */
static int check_projection(const char *model, const kind_use *use, int n_use, const char *absent) {
    char proj[64], pout[64], csv[64];
    T_CHECK(tmp_path(proj, sizeof(proj), "proj") == 0 && tmp_path(pout, sizeof(pout), "prof") == 0 &&
                tmp_path(csv, sizeof(csv), "csv") == 0,
            "mkstemp");
    static bench_run r;
    static char ptext[4096], prof[65536], ctext[4096], table[16384];
    char args[1024];
    snprintf(args, sizeof(args),
             "-m %s --ctx-start 16 --ctx-max 32 --step-incr 16 -n 4 --chunk 8 --profile-tokens 4 --proj-csv %s "
             "--profile-out %s --csv %s",
             model, proj, pout, csv);
    int ok = run_bench(&r, args) == 0 && r.status == 0;
    read_all(proj, ptext, sizeof(ptext));
    read_all(pout, prof, sizeof(prof));
    read_all(csv, ctext, sizeof(ctext));
    unlink(proj);
    unlink(pout);
    unlink(csv);
    T_CHECK(ok, "exit %d:\n%s", r.status, r.out);
    T_CHECK(strstr(r.out, "ctx 16: projected 43-layer decode") != NULL, "no projection on stderr:\n%s", r.out);
    const char *hdr = "ctx_tokens,proj_prefill_tps,proj_gen_tps,launches_per_token,decode_gbps\n";
    T_CHECK(strncmp(ptext, hdr, strlen(hdr)) == 0, "proj CSV:\n%s", ptext);
    double rows[8][6];
    int n = 0;
    T_CHECK(parse_csv(ctext, rows, 8, &n) == 0 && n == 2, "CSV:\n%s", ctext);
    double ctx, ppre, pgen, launches, gbps;
    const char *p = ptext + strlen(hdr);
    T_CHECK(sscanf(p, "%lf,%lf,%lf,%lf,%lf", &ctx, &ppre, &pgen, &launches, &gbps) == 5 && ctx == 16, "row:\n%s", p);
    T_CHECK(ppre > 0 && pgen > 0 && launches > 0 && gbps >= 0, "row:\n%s", p);
    T_CHECK(strstr(p, "\n32,") != NULL, "no ctx-32 row:\n%s", ptext);

    for (int phase = 0; phase < 2; phase++) {
        const char *start = phase == 0 ? "profile: decode at ctx 16" : "profile: prefill at ctx 16";
        const char *t = strstr(prof, start);
        const char *e = t ? strstr(t + 1, phase == 0 ? "profile: prefill" : "projected") : NULL;
        T_CHECK(t && e, "no %s table:\n%s", start, prof);
        snprintf(table, sizeof(table), "%.*s", (int)(e - t), t);
        double sh, lh, own = 0, flash = 0, flash_launch = 0;
        T_CHECK(kind_row(table, "head/embed", &sh, &lh) == 0, "head row:\n%s", table);
        own = sh;
        flash = sh;
        flash_launch = lh;
        int measured = 0;
        for (int i = 0; i < n_use; i++) {
            double span, launch, layers = 0;
            T_CHECK(kind_row(table, use[i].kind, &span, &launch) == 0, "no %s row:\n%s", use[i].kind, table);
            sscanf(strstr(table, use[i].kind) + strlen(use[i].kind), "%lf", &layers);
            own += layers * span;
            measured += (int)layers;
            flash += use[i].flash_layers * span;
            flash_launch += use[i].flash_layers * launch;
        }
        T_CHECK(measured == 4, "%d measured layers in:\n%s", measured, table);
        T_CHECK(!absent || !strstr(table, absent), "unexpected %s in:\n%s", absent, table);
        double want = (phase == 0 ? rows[0][4] : rows[0][2]) * own / flash, got = phase == 0 ? pgen : ppre;
        T_CHECK(fabs(got - want) < 0.01 * want + 0.01, "%s: projected %.2f t/s, want %.2f", start, got, want);
        T_CHECK(got < (phase == 0 ? rows[0][4] : rows[0][2]), "43 layers faster than 4 (%.2f t/s)", got);
        if (phase == 0)
            T_CHECK(fabs(launches - flash_launch) < 0.02 + 1e-3 * flash_launch, "projected launches %.2f, want %.2f",
                    launches, flash_launch);
    }
    char line[160];
    snprintf(line, sizeof(line), "projected 43-layer decode %.2f t/s, prefill %.2f t/s (from 4 measured layers)", pgen,
             ppre);
    T_CHECK(strstr(prof, line) != NULL, "no '%s' in:\n%s", line, prof);
    return 0;
}

/* The tiny benchmark model (benchmodel.h): every Flash kind is measured. */
static int t_projection(void) {
    char model[64];
    ds4_benchmodel_opts o;
    ds4_benchmodel_default_opts(&o);
    ds4_benchmodel_tiny_shape(&o);
    o.threads = 1;
    ds4_error err = {{0}};
    T_CHECK(tmp_path(model, sizeof(model), "bmodel") == 0, "mkstemp");
    int rc = ds4_benchmodel_write(&o, model, &err);
    if (rc != 0) unlink(model);
    T_CHECK(rc == 0, "%s", err.msg);
    const kind_use use[] = {
        {"ratio 0 hash", 2}, {"ratio 4 hash", 1}, {"ratio 4 score", 20}, {"ratio 128 score", 20}};
    rc = check_projection(model, use, 4, NULL);
    unlink(model);
    return rc;
}

/* The test model plus the key: no ratio-4 score layer, so the 20 Flash
 * ones project from the ratio-4 hash layer; and --proj-csv on a model
 * without the key is refused. */
static int t_projection_fallback(void) {
    char model[64], plain[64];
    T_CHECK(write_keyed_model(model, sizeof(model)) == 0, "bench model");
    const kind_use use[] = {{"ratio 0 hash", 2}, {"ratio 4 hash", 21}, {"ratio 128 score", 20}};
    int rc = check_projection(model, use, 3, "ratio 4 score");
    unlink(model);
    if (rc != 0) return rc;
    static bench_run r;
    char args[256];
    T_CHECK(write_model(plain, sizeof(plain)) == 0, "test model");
    snprintf(args, sizeof(args), "-m %s --ctx-start 16 --ctx-max 16 -n 1 --chunk 8 --proj-csv /dev/null", plain);
    int ok = run_bench(&r, args) == 0;
    unlink(plain);
    T_CHECK(ok && r.status == 1 && strstr(r.out, "ds4cl.bench_model"), "exit %d:\n%s", r.status, r.out);
    return 0;
}

static int t_bad_command_lines(void) {
    static bench_run r;
    const char *usage_cases[] = {"--no-such-flag", "-m", "--ctx-start 0", "--ctx-start abc", "--ctx-max -5",
                                 "--step-mul x", "-n 0", "--chunk", "--seed -1", "--weights sideways", "stray",
                                 "--prompt-file a.txt --random-tokens", "--ctx-alloc 99999999999"};
    for (size_t i = 0; i < sizeof(usage_cases) / sizeof(usage_cases[0]); i++) {
        T_CHECK(run_bench(&r, usage_cases[i]) == 0, "popen");
        T_CHECK(r.status == 2, "'%s': exit %d:\n%s", usage_cases[i], r.status, r.out);
        T_CHECK(strncmp(r.out, "ds4cl-bench: ", 13) == 0, "'%s': output:\n%s", usage_cases[i], r.out);
    }
    T_CHECK(run_bench(&r, "--no-such-flag") == 0 && strstr(r.out, "usage:"), "no usage:\n%s", r.out);
    T_CHECK(run_bench(&r, "--help") == 0 && r.status == 0 && strstr(r.out, "--ctx-start"), "help:\n%s", r.out);

    char model[64];
    T_CHECK(write_model(model, sizeof(model)) == 0, "test model");
    char c[8][256];
    snprintf(c[0], 256, "-m %s --ctx-start 64 --ctx-max 32", model);
    snprintf(c[1], 256, "-m %s --ctx-max 32 --ctx-start 16 --step-mul 0.5", model);
    snprintf(c[2], 256, "-m %s --ctx-max 32 --ctx-start 16 --step-incr 4 --step-mul 2", model);
    snprintf(c[3], 256, "-m %s --ctx-max 32 --ctx-start 16 -n 4 --ctx-alloc 36", model);
    snprintf(c[4], 256, "-m /nonexistent/model.gguf --ctx-max 32 --ctx-start 16");
    snprintf(c[5], 256, "-m %s --ctx-max 32 --ctx-start 16 --prompt-file /nonexistent/prompt.txt", model);
    snprintf(c[6], 256, "-m %s --ctx-max 1000000 --ctx-start 16 --prompt-file %s/Makefile --chunk 8", model,
             test_root_dir());
    snprintf(c[7], 256, "-m %s --ctx-max 32 --ctx-start 16 --csv /nonexistent/dir/out.csv", model);
    const char *why[8] = {"--ctx-start", "--step-mul", "not both", "--ctx-alloc", "model.gguf", "prompt.txt",
                          "needs at least 1000000", "out.csv"};
    int fail = 0;
    for (int i = 0; i < 8 && !fail; i++) {
        if (run_bench(&r, c[i]) != 0 || r.status != 1 || !strstr(r.out, why[i])) fail = i + 1;
    }
    unlink(model);
    T_CHECK(!fail, "'%s': exit %d (want 1 and '%s'):\n%s", c[fail - 1], r.status, why[fail - 1], r.out);
    return 0;
}

void tests_register_bench(void) {
    test_add("bench/csv_and_restore", t_csv_and_restore);
    test_add("bench/step_mul", t_step_mul);
    test_add("bench/profile_counts", t_profile_counts);
    test_add("bench/projection", t_projection);
    test_add("bench/projection_fallback", t_projection_fallback);
    test_add("bench/bad_command_lines", t_bad_command_lines);
}
