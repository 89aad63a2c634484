/* score.c - the `ds4cl-score` program: how well a model predicts a text.
 *
 *   ds4cl-score -m MODEL (-f TEXT | --tokens-file IDS) [--ctx N] [--chunk N]
 *               [--device D] [--no-quant-sim] [-q]
 *
 * Teacher-forced negative log-likelihood (calib.h): the text is tokenized
 * after a BOS token (a tokens file is used as written), split into windows
 * of --ctx tokens (default 512), and every position but each window's first
 * is scored.  Prints one line on stdout:
 *
 *   nll 2.345678 ppl 10.4400 tokens 1024 scored 1022
 *
 * so two quantizations of one checkpoint are compared on the same text and
 * window size (lower is better).  Progress goes to stderr unless -q.
 * Exit 0, 1 on a failure (one line), 2 on a bad command line.
 */
#include <stdio.h>

#include "calib.h"

static void usage(FILE *fp) {
    fprintf(fp, "usage: ds4cl-score -m MODEL (-f TEXT | --tokens-file IDS) [--ctx N] [--chunk N]\n"
                "                   [--device D] [--no-quant-sim] [-q]\n");
}

int main(int argc, char **argv) {
    ds4_error err = {{0}};
    ds4_calib_args a;
    if (ds4_calib_parse_args(argc, argv, false, &a, &err) != 0) {
        fprintf(stderr, "ds4cl-score: %s\n", err.msg);
        usage(stderr);
        return 2;
    }
    ds4_engine *e = NULL;
    ds4_tokens toks;
    if (ds4_calib_open(&a, &e, &toks, &err) != 0) {
        fprintf(stderr, "ds4cl-score: %s\n", err.msg);
        return 1;
    }
    ds4_score_result r;
    int rc = ds4_score_tokens(e, toks.ids, toks.n, a.ctx, &r, a.quiet ? NULL : stderr, &err);
    if (rc == 0)
        printf("nll %.6f ppl %.4f tokens %llu scored %llu\n", r.nll, r.ppl, (unsigned long long)r.n_tokens,
               (unsigned long long)r.n_scored);
    else
        fprintf(stderr, "ds4cl-score: %s\n", err.msg);
    ds4_tokens_free(&toks);
    ds4_engine_free(e);
    return rc == 0 ? 0 : 1;
}
