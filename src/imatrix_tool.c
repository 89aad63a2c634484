/* imatrix_tool.c - the `ds4cl-imatrix` program: collect the routed-expert
 * importance matrix of a model over a calibration text.
 *
 *   ds4cl-imatrix -m MODEL (-f TEXT | --tokens-file IDS) -o OUT [--ctx N]
 *                 [--chunk N] [--device D] [--no-quant-sim] [-q]
 *
 * The text is tokenized with the model's tokenizer after a BOS token (a
 * tokens file is used as written), split into windows of --ctx tokens
 * (default 512), each evaluated from position 0 with collection on; OUT is
 * the file format of imatrix.h.  The summary names how many experts of how
 * many were reached: an expert no token reached keeps the converter's
 * weight-magnitude fallback.  Exit 0 on success, 1 on a failure (one line),
 * 2 on a bad command line.
 */
#include <stdio.h>

#include "calib.h"

static void usage(FILE *fp) {
    fprintf(fp, "usage: ds4cl-imatrix -m MODEL (-f TEXT | --tokens-file IDS) -o OUT [--ctx N] [--chunk N]\n"
                "                     [--device D] [--no-quant-sim] [-q]\n");
}

int main(int argc, char **argv) {
    ds4_error err = {{0}};
    ds4_calib_args a;
    if (ds4_calib_parse_args(argc, argv, true, &a, &err) != 0) {
        fprintf(stderr, "ds4cl-imatrix: %s\n", err.msg);
        usage(stderr);
        return 2;
    }
    ds4_engine *e = NULL;
    ds4_tokens toks;
    if (ds4_calib_open(&a, &e, &toks, &err) != 0) {
        fprintf(stderr, "ds4cl-imatrix: %s\n", err.msg);
        return 1;
    }
    ds4_imatrix m;
    int rc = ds4_collect_imatrix(e, toks.ids, toks.n, a.ctx, &m, a.quiet ? NULL : stderr, &err);
    if (rc == 0) rc = ds4_imatrix_save(&m, a.out, &err);
    if (rc == 0) {
        uint64_t reached = 0, total = (uint64_t)m.dims.n_layer * m.dims.n_expert;
        for (uint64_t i = 0; i < total; i++) reached += m.count[i] != 0;
        printf("wrote %s: %u layers x %u experts, %llu tokens, %llu of %llu experts reached\n", a.out,
               m.dims.n_layer, m.dims.n_expert, (unsigned long long)m.n_tokens, (unsigned long long)reached,
               (unsigned long long)total);
    } else {
        fprintf(stderr, "ds4cl-imatrix: %s\n", err.msg);
    }
    ds4_imatrix_free(&m);
    ds4_tokens_free(&toks);
    ds4_engine_free(e);
    return rc == 0 ? 0 : 1;
}
