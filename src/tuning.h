/* tuning.h - the kernel build options chosen per device class.
 *
 * The matvec / matmul / MoE kernels take their work-group shape from three
 * build options (cl/common.cl): MV_LANES work-items per weight row (a power
 * of two), MV_ROWS rows per work-group and MM_TOKENS tokens per matmul tile.
 * The host must enqueue with the same shape the program was built with, so
 * the shape travels as numbers (lanes, rows, tokens), and every other knob
 * as an option string that only the kernels read.
 *
 * ds4_tuning_for_device classifies the device and looks up its row of a
 * small table (CPU, NVIDIA, AMD RDNA3 / RDNA3.5 such as Strix Halo's
 * gfx1151, any other GPU; the values and why are in tuning.c), then applies
 * the user's override from the environment:
 *
 *     DS4CL_TUNING="-DMV_LANES=16 -DMV_ROWS=2 -DMV_TABLES_LOCAL=0"
 *
 * MV_LANES / MV_ROWS / MM_TOKENS found there replace the table's shape (the
 * last occurrence wins, as in the compiler); every other token must be a
 * compiler option ("-D...", "-cl-...") and is appended to the class options.
 * Finally the shape is clamped so lanes * rows fits the device's work-group
 * limit (rows shrink first, then lanes), with a note saying so.
 *
 * ds4_tuning_merge then folds a caller's explicit options (the extra_options
 * of ds4_kernels_init, e.g. ds4cl-matvec-bench --options) over that and
 * writes the one build-option string, each macro defined once: explicit
 * options beat DS4CL_TUNING, which beats the table.
 *
 * Pure functions of their inputs (plus the one getenv): no OpenCL calls.
 */
#ifndef DS4_TUNING_H
#define DS4_TUNING_H

#include <stddef.h>

#include "error.h"
#include "runtime.h"

typedef enum ds4_tuning_class {
    DS4_TUNING_CPU = 0,    /* any CL_DEVICE_TYPE_CPU device (PoCL) */
    DS4_TUNING_NVIDIA,     /* NVIDIA's OpenCL driver */
    DS4_TUNING_AMD_RDNA3,  /* AMD gfx11xx: RDNA3 / RDNA3.5 (Strix Halo gfx1151) */
    DS4_TUNING_GENERIC     /* every other GPU or accelerator */
} ds4_tuning_class;

#define DS4_TUNING_OPTIONS_MAX 512

typedef struct ds4_tuning {
    ds4_tuning_class cls;
    int lanes;             /* MV_LANES: work-items per weight row, a power of two */
    int rows;              /* MV_ROWS: rows per work-group */
    int tokens;            /* MM_TOKENS: tokens per matmul work-group */
    /* Further build options for the kernels, never defining MV_LANES,
     * MV_ROWS or MM_TOKENS (those are the three numbers above). */
    char options[DS4_TUNING_OPTIONS_MAX];
    /* Why the shape differs from the table (override, clamp); "" if not. */
    char note[256];
} ds4_tuning;

/* Which table row a device gets. */
ds4_tuning_class ds4_tuning_classify(const ds4_device_desc *dev);
/* "cpu", "nvidia", "amd-rdna3", "generic". */
const char *ds4_tuning_class_name(ds4_tuning_class cls);

/* The tuning for dev with `override` (may be NULL or "") applied as
 * DS4CL_TUNING would be.  Fails with a one-line message on a malformed
 * override (bad number, a shape that is not positive / a power of two,
 * a token that is not an option, too long). */
int ds4_tuning_resolve(const ds4_device_desc *dev, const char *override, ds4_tuning *out, ds4_error *err);

/* ds4_tuning_resolve with override = getenv("DS4CL_TUNING"). */
int ds4_tuning_for_device(const ds4_device_desc *dev, ds4_tuning *out, ds4_error *err);

/* Fold the caller's explicit options `extra` (may be NULL) into t and write
 * the complete build-option string into opts (cap bytes):
 *   "-DMV_LANES=a -DMV_ROWS=b -DMM_TOKENS=c " + t->options (minus macros that
 *   extra defines again) + extra (minus its shape defines).
 * MV_LANES / MV_ROWS / MM_TOKENS in extra replace t's shape (last wins).
 * No clamping here: the caller checks the device limits and reports them. */
int ds4_tuning_merge(ds4_tuning *t, const char *extra, char *opts, size_t cap, ds4_error *err);

#endif
