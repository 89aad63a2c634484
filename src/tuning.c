/* tuning.c - the per-device-class table of kernel build options, the
 * DS4CL_TUNING override and the merge with a caller's explicit options.
 *
 * The table (lanes x rows, tokens, further options) and why:
 *
 *   cpu        1 x 8, 4   PoCL: one work-item per row, no barriers at all
 *                         (PoCL vectorises each work-item's loop and splits
 *                         a kernel at every barrier; hardware.md 4.2: a
 *                         32-lane barrier tree ran 4x slower than one
 *                         work-item per row).  Eight rows per group amortise
 *                         the group launch.
 *   nvidia     8 x 32, 8  8 lanes per row (on the H200, 8 lanes beat 16
 *              +MV_Q8X=1  and 32 for every type at ncols 4096: rows are
 *                         short, so fewer reduction steps win), 32 rows per
 *                         group of 256 and int8 activations for quantized
 *                         weights (cl/matvec_q8x.cl; the group quantizes its
 *                         activation row once for 32 rows).  Measured with
 *                         ds4cl-matvec-bench on an H200: Q8_0 1783 GB/s,
 *                         IQ2_XXS 527, Q2_K 651, Q4_K 742 against 1640 /
 *                         330 / 602 / 659 for f32 activations at 8 x 4; the
 *                         4-layer q2 bench model's projected decode went
 *                         from 30.4 to 37.5 t/s.  Tiled prefill GEMM
 *                         (cl/matmul_tiled.cl) with 128-item groups: the
 *                         bench model prefilled 7006 t/s at a 2048-token
 *                         chunk against 6546 with 256.
 *   amd-rdna3  8 x 8, 8   gfx11xx (Strix Halo is gfx1151): ROCm runs
 *                         wave32 on gfx10+, allows 256-wide groups by
 *                         default and has 64 KiB of local memory per group
 *                         (hardware.md 3.1).  8 lanes per row as on the
 *                         warp-32 NVIDIA part, the nearest measured design;
 *                         a row's lanes are adjacent and 8 divides 32, so a
 *                         row never straddles two waves.  8 rows make the
 *                         group two waves, so the 2 KiB IQ2_XXS grid the
 *                         group copies into local memory costs 4 loads per
 *                         work-item, amortised over 8 rows, instead of 8
 *                         over 4.  Local memory per group stays small
 *                         (8*8*8 floats of matmul reduction + 2 KiB grid =
 *                         4 KiB), far from limiting occupancy (a WGP has
 *                         128 KiB).  Options: -DMV_TABLES_LOCAL=1 (explicit:
 *                         __constant lookups serialise when divergent) and
 *                         -DDS4_WAVE=32 (the wave width, for kernels that
 *                         want it; no kernel reads it yet, so it is inert).
 *                         Subgroups: ROCm has cl_khr_subgroups and the
 *                         runtime already defines DS4_SUBGROUPS=1 there, but
 *                         the kernels are OpenCL C 1.2 without subgroups
 *                         (cl/common.cl), so nothing here depends on them.
 *                         These values are a reasoned start, not a
 *                         measurement: ports/strix-halo/report.sh sweeps
 *                         the alternatives with ds4cl-matvec-bench.
 *   generic    8 x 4, 8   Any other GPU: 32 work-items per group is a
 *                         multiple of every common SIMD width (8, 16, 32)
 *                         and below every work-group limit we know of.
 *
 * Option strings are split on blanks into tokens.  A token "-DNAME=VALUE"
 * or "-DNAME" defines macro NAME; the shape names are parsed back as
 * decimal integers (strictly: "-DMV_LANES=8x" is an error, not 8).
 *
 * Invariants of every ds4_tuning this file hands out: lanes is a power of
 * two in [1, 1024], rows and tokens in [1, 1024], lanes * rows <= the
 * device's max_wg (when the device reports one), and options never defines
 * a shape macro.
 */
#include "tuning.h"

#include <ctype.h>
#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define SHAPE_MAX 1024
#define TOKEN_MAX 256

static const char *const shape_names[3] = {"MV_LANES", "MV_ROWS", "MM_TOKENS"};

/* ------------------------------------------------------------ classes -- */

/* Case-insensitive substring test. */
static bool contains_ci(const char *hay, const char *needle) {
    size_t n = strlen(needle);
    for (const char *p = hay; *p; p++) {
        size_t i = 0;
        while (i < n && p[i] && tolower((unsigned char)p[i]) == tolower((unsigned char)needle[i])) i++;
        if (i == n) return true;
    }
    return n == 0;
}

ds4_tuning_class ds4_tuning_classify(const ds4_device_desc *dev) {
    if (dev->type & CL_DEVICE_TYPE_CPU) return DS4_TUNING_CPU;
    if (dev->nvidia) return DS4_TUNING_NVIDIA;
    /* ROCm names the device by its ISA ("gfx1151"); rusticl's radeonsi
     * name carries it too ("AMD Radeon 8060S Graphics (radeonsi, gfx1151,
     * ...)").  A name naming another gfx ISA is another architecture. */
    if (contains_ci(dev->name, "gfx11")) return DS4_TUNING_AMD_RDNA3;
    bool amd = contains_ci(dev->vendor, "Advanced Micro Devices") || contains_ci(dev->vendor, "AMD");
    if (amd && dev->host_unified && !contains_ci(dev->name, "gfx")) return DS4_TUNING_AMD_RDNA3;
    return DS4_TUNING_GENERIC;
}

const char *ds4_tuning_class_name(ds4_tuning_class cls) {
    switch (cls) {
    case DS4_TUNING_CPU: return "cpu";
    case DS4_TUNING_NVIDIA: return "nvidia";
    case DS4_TUNING_AMD_RDNA3: return "amd-rdna3";
    case DS4_TUNING_GENERIC: return "generic";
    }
    return "?";
}

/* The table row of a class (see the comment at the top). */
static void table_row(ds4_tuning_class cls, ds4_tuning *t) {
    memset(t, 0, sizeof(*t));
    t->cls = cls;
    const char *opts = "";
    switch (cls) {
    case DS4_TUNING_CPU: t->lanes = 1; t->rows = 8; t->tokens = 4; break;
    case DS4_TUNING_NVIDIA:
        t->lanes = 8;
        t->rows = 32;
        t->tokens = 8;
        opts = "-DMV_Q8X=1 -DGT_WG=128";
        break;
    case DS4_TUNING_AMD_RDNA3:
        t->lanes = 8;
        t->rows = 8;
        t->tokens = 8;
        opts = "-DMV_TABLES_LOCAL=1 -DDS4_WAVE=32";
        break;
    case DS4_TUNING_GENERIC: t->lanes = 8; t->rows = 4; t->tokens = 8; break;
    }
    snprintf(t->options, sizeof(t->options), "%s", opts);
}

/* ------------------------------------------------------------ tokens -- */

/* Copy the next blank-separated token of *p into tok and advance *p.
 * Returns its length, 0 at the end, -1 when it does not fit in cap. */
static int next_token(const char **p, char *tok, size_t cap) {
    const char *s = *p;
    while (*s && isspace((unsigned char)*s)) s++;
    size_t n = 0;
    while (s[n] && !isspace((unsigned char)s[n])) n++;
    *p = s + n;
    if (n == 0) return 0;
    if (n >= cap) return -1;
    memcpy(tok, s, n);
    tok[n] = '\0';
    return (int)n;
}

/* The macro a "-DNAME[=VALUE]" token defines, into name; false when the
 * token defines none. */
static bool macro_name(const char *tok, char *name, size_t cap) {
    if (strncmp(tok, "-D", 2) != 0) return false;
    size_t n = strcspn(tok + 2, "=");
    if (n == 0 || n >= cap) return false;
    memcpy(name, tok + 2, n);
    name[n] = '\0';
    return true;
}

/* Index of the shape macro tok defines (0..2), or -1. */
static int shape_index(const char *tok) {
    char name[TOKEN_MAX];
    if (!macro_name(tok, name, sizeof(name))) return -1;
    for (int i = 0; i < 3; i++)
        if (strcmp(name, shape_names[i]) == 0) return i;
    return -1;
}

/* Parse the value of shape token tok (index i) into *val, checking range. */
static int shape_value(const char *what, const char *tok, int i, int *val, ds4_error *err) {
    const char *eq = strchr(tok, '=');
    if (!eq || eq[1] == '\0') return ds4_fail(err, "%s: %s needs a value (-D%s=N)", what, tok, shape_names[i]);
    errno = 0;
    char *end = NULL;
    long v = strtol(eq + 1, &end, 10);
    if (errno != 0 || *end != '\0' || v < 1 || v > SHAPE_MAX)
        return ds4_fail(err, "%s: %s: want an integer in 1..%d", what, tok, SHAPE_MAX);
    if (i == 0 && (v & (v - 1)) != 0)
        return ds4_fail(err, "%s: %s: MV_LANES must be a power of two", what, tok);
    *val = (int)v;
    return 0;
}

static int *shape_slot(ds4_tuning *t, int i) { return i == 0 ? &t->lanes : i == 1 ? &t->rows : &t->tokens; }

/* Append " tok" (or "tok" when dst is empty) to dst. */
static int append_token(char *dst, size_t cap, const char *tok, const char *what, ds4_error *err) {
    size_t n = strlen(dst);
    int w = snprintf(dst + n, cap - n, "%s%s", n ? " " : "", tok);
    if (w < 0 || (size_t)w >= cap - n) return ds4_fail(err, "%s: build options longer than %zu bytes", what, cap - 1);
    return 0;
}

/* Append a formatted sentence to t->note ("; " between sentences). */
static void add_note(ds4_tuning *t, const char *msg) {
    size_t n = strlen(t->note);
    snprintf(t->note + n, sizeof(t->note) - n, "%s%s", n ? "; " : "", msg);
}

/* ----------------------------------------------------------- resolve -- */

/* Apply DS4CL_TUNING-style text to t (shape numbers and extra options). */
static int apply_override(ds4_tuning *t, const char *override, ds4_error *err) {
    const char *what = "DS4CL_TUNING";
    char tok[TOKEN_MAX];
    bool used = false;
    int n;
    for (const char *p = override; (n = next_token(&p, tok, sizeof(tok))) != 0;) {
        if (n < 0) return ds4_fail(err, "%s: option longer than %d bytes", what, TOKEN_MAX - 1);
        int si = shape_index(tok);
        if (si >= 0) {
            if (shape_value(what, tok, si, shape_slot(t, si), err) != 0) return -1;
            used = true;
            continue;
        }
        if (tok[0] != '-' || tok[1] == '\0')
            return ds4_fail(err, "%s: '%s' is not a build option (write -DNAME=VALUE)", what, tok);
        if (append_token(t->options, sizeof(t->options), tok, what, err) != 0) return -1;
        used = true;
    }
    if (used) {
        char msg[128];
        snprintf(msg, sizeof(msg), "DS4CL_TUNING applied (MV_LANES=%d MV_ROWS=%d MM_TOKENS=%d)", t->lanes, t->rows,
                 t->tokens);
        add_note(t, msg);
    }
    return 0;
}

/* Shrink the shape until lanes * rows fits max_wg (0: no known limit):
 * rows first (the shape of one row's team is the kernel's design), then
 * lanes, keeping it a power of two. */
static void clamp_shape(ds4_tuning *t, size_t max_wg) {
    if (max_wg == 0 || (size_t)t->lanes * (size_t)t->rows <= max_wg) return;
    int lanes = t->lanes, rows = t->rows;
    while ((size_t)lanes > max_wg) lanes /= 2;
    if ((size_t)rows > max_wg / (size_t)lanes) rows = (int)(max_wg / (size_t)lanes);
    char msg[160];
    snprintf(msg, sizeof(msg), "MV_LANES*MV_ROWS %d*%d exceeds the device's work-group limit %zu: using %d*%d",
             t->lanes, t->rows, max_wg, lanes, rows);
    add_note(t, msg);
    t->lanes = lanes;
    t->rows = rows;
}

int ds4_tuning_resolve(const ds4_device_desc *dev, const char *override, ds4_tuning *out, ds4_error *err) {
    ds4_tuning t;
    table_row(ds4_tuning_classify(dev), &t);
    if (override && apply_override(&t, override, err) != 0) return -1;
    clamp_shape(&t, dev->max_wg);
    *out = t;
    return 0;
}

int ds4_tuning_for_device(const ds4_device_desc *dev, ds4_tuning *out, ds4_error *err) {
    return ds4_tuning_resolve(dev, getenv("DS4CL_TUNING"), out, err);
}

/* ------------------------------------------------------------- merge -- */

/* Does some "-D" token of opts define macro `name`? */
static bool defines_macro(const char *opts, const char *name) {
    char tok[TOKEN_MAX], m[TOKEN_MAX];
    int n;
    for (const char *p = opts; (n = next_token(&p, tok, sizeof(tok))) != 0;)
        if (n > 0 && macro_name(tok, m, sizeof(m)) && strcmp(m, name) == 0) return true;
    return false;
}

int ds4_tuning_merge(ds4_tuning *t, const char *extra, char *opts, size_t cap, ds4_error *err) {
    const char *what = "kernel options";
    if (!extra) extra = "";
    char tok[TOKEN_MAX];
    int n;
    /* The caller's shape first, so the string below carries final values. */
    for (const char *p = extra; (n = next_token(&p, tok, sizeof(tok))) != 0;) {
        if (n < 0) return ds4_fail(err, "%s: option longer than %d bytes", what, TOKEN_MAX - 1);
        int si = shape_index(tok);
        if (si >= 0 && shape_value(what, tok, si, shape_slot(t, si), err) != 0) return -1;
    }
    if (cap == 0) return ds4_fail(err, "%s: no room for the build options", what);
    int w = snprintf(opts, cap, "-DMV_LANES=%d -DMV_ROWS=%d -DMM_TOKENS=%d", t->lanes, t->rows, t->tokens);
    if (w < 0 || (size_t)w >= cap) return ds4_fail(err, "%s: build options longer than %zu bytes", what, cap - 1);
    /* The device's options, minus any macro the caller defines again. */
    char m[TOKEN_MAX];
    for (const char *p = t->options; (n = next_token(&p, tok, sizeof(tok))) != 0;) {
        if (n < 0) return ds4_fail(err, "%s: option longer than %d bytes", what, TOKEN_MAX - 1);
        if (macro_name(tok, m, sizeof(m)) && defines_macro(extra, m)) continue;
        if (append_token(opts, cap, tok, what, err) != 0) return -1;
    }
    /* Then the caller's, minus the shape (already above). */
    for (const char *p = extra; (n = next_token(&p, tok, sizeof(tok))) != 0;) {
        if (n < 0) return ds4_fail(err, "%s: option longer than %d bytes", what, TOKEN_MAX - 1);
        if (shape_index(tok) >= 0) continue;
        if (append_token(opts, cap, tok, what, err) != 0) return -1;
    }
    return 0;
}
