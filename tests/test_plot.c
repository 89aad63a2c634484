/* test_plot.c - bench/plot_bench.py, the standard-library CSV-to-PNG plotter.
 *
 * The script runs through the shell (python3, skipped with a note when it
 * is missing) on tests/fixtures/bench_sample.csv plus a second series.
 * Checked here in C, independently of the script: the PNG signature, every
 * chunk's length and CRC-32, an IHDR of 13 bytes first (1400 wide, a sane
 * height, 8-bit RGB, no interlace), at least one IDAT, IEND last with
 * nothing after it.  Checked through the script's --check (which inflates
 * and unfilters every row): the same size and at least five colours
 * (background, ink, grid and the two series).  Malformed CSVs, a missing
 * file and a corrupted PNG fail with exit 1 and one "plot_bench.py:" line,
 * leaving no output file; a bad command line exits 2.
 */
#include <stdbool.h>
#include <string.h>

#include "test.h"
#include "util_convert.h"

/* CRC-32 (ISO-HDLC, as PNG uses), bitwise. */
static uint32_t crc32_of(const uint8_t *p, size_t n) {
    uint32_t c = 0xFFFFFFFFu;
    for (size_t i = 0; i < n; i++) {
        c ^= p[i];
        for (int k = 0; k < 8; k++) c = (c >> 1) ^ (0xEDB88320u & (0u - (c & 1u)));
    }
    return c ^ 0xFFFFFFFFu;
}

static uint32_t be32(const uint8_t *p) {
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

typedef struct {
    uint32_t width, height;
    uint32_t n_idat;
    uint64_t idat_off;     /* file offset of the first IDAT's data */
} png_info;

/* Walk the chunks of a PNG in memory; 0 and *info filled when the
 * structure is sound, else -1 with why. */
static int png_walk(const uint8_t *d, size_t n, png_info *info, char *why, size_t cap) {
    static const uint8_t sig[8] = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1a, '\n'};
    memset(info, 0, sizeof(*info));
    if (n < 8 || memcmp(d, sig, 8) != 0) return snprintf(why, cap, "bad signature"), -1;
    size_t pos = 8;
    bool first = true, iend = false;
    while (pos < n) {
        if (n - pos < 12) return snprintf(why, cap, "truncated chunk at %zu", pos), -1;
        uint32_t len = be32(d + pos);
        if (len > n - pos - 12) return snprintf(why, cap, "chunk at %zu overruns the file", pos), -1;
        const uint8_t *type = d + pos + 4, *body = d + pos + 8;
        if (crc32_of(type, (size_t)len + 4) != be32(body + len))
            return snprintf(why, cap, "CRC mismatch in %.4s", (const char *)type), -1;
        if (first) {
            if (memcmp(type, "IHDR", 4) != 0 || len != 13) return snprintf(why, cap, "first chunk not IHDR"), -1;
            info->width = be32(body);
            info->height = be32(body + 4);
            if (body[8] != 8 || body[9] != 2 || body[10] || body[11] || body[12])
                return snprintf(why, cap, "IHDR depth %u colour %u", body[8], body[9]), -1;
            first = false;
        } else if (memcmp(type, "IDAT", 4) == 0) {
            if (info->n_idat++ == 0) info->idat_off = pos + 8;
        } else if (memcmp(type, "IEND", 4) == 0) {
            iend = true;
            pos += 12 + (size_t)len;
            break;
        }
        pos += 12 + (size_t)len;
    }
    if (!iend) return snprintf(why, cap, "no IEND"), -1;
    if (pos != n) return snprintf(why, cap, "%zu bytes after IEND", n - pos), -1;
    if (info->n_idat == 0) return snprintf(why, cap, "no IDAT"), -1;
    return 0;
}

/* python3 with zlib present?  Prints the skip note when not. */
static bool have_python(void) {
    if (tc_sh("python3 -c 'import zlib, csv, struct' >/dev/null 2>&1") == 0) return true;
    printf("    note: python3 not available, plot_bench.py not tested\n");
    return false;
}

/* Run plot_bench.py with `args` (already quoted), its stdout and stderr
 * into out_path; the exit status. */
static int run_plot(const char *args, const char *out_path) {
    return tc_sh("python3 '%s/bench/plot_bench.py' %s >'%s' 2>&1", test_root_dir(), args, out_path);
}

static int t_plot_png(void) {
    if (!have_python()) return 0;
    char dir[256], png[320], csv2[320], log[320], args[2048];
    tc_scratch(dir, sizeof(dir), "ds4cl-plot", "png");
    snprintf(png, sizeof(png), "%s/out.png", dir);
    snprintf(csv2, sizeof(csv2), "%s/strix-halo.csv", dir);
    snprintf(log, sizeof(log), "%s/log.txt", dir);
    const char *second = "ctx_tokens,prefill_tokens,prefill_tps,gen_tokens,gen_tps,kvcache_bytes\n"
                         "2048,2048,214.0,128,16.1,151781376\n"
                         "\n"
                         "65536,63488,158.0,128,13.3,929268736\n";
    T_CHECK(tc_spit(csv2, second, strlen(second)), "cannot write %s", csv2);
    snprintf(args, sizeof(args), "'%s' '%s/tests/fixtures/bench_sample.csv' '%s' --title 'sample: H200 vs Strix Halo'",
             png, test_root_dir(), csv2);
    int rc = run_plot(args, log);
    char msg[512] = {0};
    char *out = tc_slurp(log, NULL);
    if (out) snprintf(msg, sizeof(msg), "%s", out);
    free(out);
    T_CHECK(rc == 0, "plot_bench.py exited %d: %s", rc, msg);

    size_t n = 0;
    uint8_t *d = (uint8_t *)tc_slurp(png, &n);
    T_CHECK(d != NULL, "no %s", png);
    png_info info;
    char why[128] = {0};
    int ok = png_walk(d, n, &info, why, sizeof(why));
    free(d);
    T_CHECK(ok == 0, "PNG structure: %s", why);
    T_CHECK(info.width == 1400 && info.height >= 400 && info.height <= 2000, "size %ux%u", info.width, info.height);

    /* The script's own validator inflates and unfilters every row. */
    snprintf(args, sizeof(args), "--check '%s'", png);
    rc = run_plot(args, log);
    msg[0] = '\0';
    out = tc_slurp(log, NULL);
    if (out) snprintf(msg, sizeof(msg), "%s", out);
    free(out);
    T_CHECK(rc == 0, "--check exited %d: %s", rc, msg);
    unsigned w = 0, h = 0, colours = 0;
    int got = sscanf(msg, "ok: %ux%u, %u colours", &w, &h, &colours);
    T_CHECK(got == 3 && w == info.width && h == info.height, "--check said %ux%u (%d fields)", w, h, got);
    T_CHECK(colours >= 5, "only %u colours: two series, grid and ink expected", colours);
    char tmp[340];
    snprintf(tmp, sizeof(tmp), "%s.tmp", png);
    T_CHECK(!tc_exists(tmp), "temporary file %s left behind", tmp);
    tc_scratch_rm(dir);
    return 0;
}

static int t_plot_bad_input(void) {
    if (!have_python()) return 0;
    char dir[256], png[320], csv[320], log[320], args[2048];
    tc_scratch(dir, sizeof(dir), "ds4cl-plot", "bad");
    snprintf(png, sizeof(png), "%s/out.png", dir);
    snprintf(csv, sizeof(csv), "%s/bad.csv", dir);
    snprintf(log, sizeof(log), "%s/log.txt", dir);
    const struct {
        const char *text, *needle;
    } bad[] = {
        {"ctx_tokens,prefill_tokens,prefill_tps,gen_tokens,gen_tps,kvcache_bytes\n2048,2048,fast,64,3.5,1\n",
         "not a number"},
        {"ctx,tps\n2048,12\n", "header lacks"},
        {"ctx_tokens,prefill_tps,gen_tps\n2048,12\n", "2 fields"},
        {"ctx_tokens,prefill_tps,gen_tps\n", "no data rows"},
        {"", "empty file"},
        {"ctx_tokens,prefill_tps,gen_tps\n2048,inf,3\n", "finite"},
        {"ctx_tokens,prefill_tps,gen_tps\n2048,12,-1\n", "finite"},
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        T_CHECK(tc_spit(csv, bad[i].text, strlen(bad[i].text)), "cannot write %s", csv);
        snprintf(args, sizeof(args), "'%s' '%s'", png, csv);
        int rc = run_plot(args, log);
        char msg[512] = {0};
        char *out = tc_slurp(log, NULL);
        if (out) snprintf(msg, sizeof(msg), "%s", out);
        free(out);
        bool one = strncmp(msg, "plot_bench.py: ", 15) == 0 && strchr(msg, '\n') == msg + strlen(msg) - 1;
        T_CHECK(rc == 1 && one && strstr(msg, bad[i].needle), "case %zu: exit %d, message \"%s\" (want \"%s\")", i,
                rc, msg, bad[i].needle);
        T_CHECK(!tc_exists(png), "case %zu: output written for a bad CSV", i);
    }
    /* A missing CSV is the same kind of failure. */
    snprintf(args, sizeof(args), "'%s' '%s/none.csv'", png, dir);
    T_CHECK(run_plot(args, log) == 1 && !tc_exists(png), "missing CSV not exit 1");
    /* Command-line mistakes are usage errors. */
    T_CHECK(run_plot("", log) == 2, "no arguments not exit 2");
    snprintf(args, sizeof(args), "'%s'", png);
    T_CHECK(run_plot(args, log) == 2, "no CSV not exit 2");
    tc_scratch_rm(dir);
    return 0;
}

static int t_plot_check_rejects(void) {
    if (!have_python()) return 0;
    char dir[256], png[320], log[320], args[2048];
    tc_scratch(dir, sizeof(dir), "ds4cl-plot", "check");
    snprintf(png, sizeof(png), "%s/out.png", dir);
    snprintf(log, sizeof(log), "%s/log.txt", dir);
    snprintf(args, sizeof(args), "'%s' '%s/tests/fixtures/bench_sample.csv'", png, test_root_dir());
    T_CHECK(run_plot(args, log) == 0, "plot failed");
    size_t n = 0;
    uint8_t *d = (uint8_t *)tc_slurp(png, &n);
    T_CHECK(d != NULL, "no %s", png);
    png_info info;
    char why[128];
    if (png_walk(d, n, &info, why, sizeof(why)) != 0) {
        free(d);
        T_CHECK(0, "PNG structure: %s", why);
    }
    /* One flipped bit inside the compressed data: the CRC catches it, in
     * the C walk and in the script. */
    d[info.idat_off + 7] ^= 0x10;
    bool wrote = tc_spit(png, d, n);
    bool walk_flip = png_walk(d, n, &info, why, sizeof(why)) != 0;
    d[info.idat_off + 7] ^= 0x10;
    snprintf(args, sizeof(args), "--check '%s'", png);
    int rc = wrote ? run_plot(args, log) : -1;
    char *out = tc_slurp(log, NULL);
    bool named = out && strstr(out, "not a valid PNG") && strstr(out, "CRC");
    free(out);
    /* Truncated: both agree it is broken too. */
    bool wrote_cut = tc_spit(png, d, n - 20);
    bool walk_cut = png_walk(d, n - 20, &info, why, sizeof(why)) != 0;
    free(d);
    T_CHECK(wrote && wrote_cut, "cannot rewrite %s", png);
    T_CHECK(walk_flip, "the C walk accepted a corrupted IDAT");
    T_CHECK(rc == 1 && named, "corrupted IDAT: --check exited %d", rc);
    T_CHECK(walk_cut, "the C walk accepted a truncated PNG");
    T_CHECK(run_plot(args, log) == 1, "truncated PNG passed --check");
    tc_scratch_rm(dir);
    return 0;
}

void tests_register_plot(void) {
    test_add("plot_png", t_plot_png);
    test_add("plot_bad_input", t_plot_bad_input);
    test_add("plot_check_rejects", t_plot_check_rejects);
}
