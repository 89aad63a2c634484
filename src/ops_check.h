/* ops_check.h - argument checks and kernel-argument setting shared by the
 * op modules (ops_attn.c defines them; ops_moe.c uses them too).
 *
 * Every op validates before it enqueues: a buffer range that does not lie
 * inside its cl_mem (CL_MEM_SIZE) fails with a message naming the op and the
 * argument, and nothing is enqueued.
 */
#ifndef DS4_OPS_CHECK_H
#define DS4_OPS_CHECK_H

#include "ops.h"

/* One kernel argument: its size and a pointer to its value. */
typedef struct karg {
    size_t size;
    const void *ptr;
} karg;
#define KA(v) {sizeof(v), &(v)}

/* Set arguments 0..n-1 of kern. */
int ds4_ops_set_args(cl_kernel kern, const char *op, const karg *a, int n, ds4_error *err);
/* Bytes [off, off + bytes) must lie inside buffer m (m non-NULL). */
int ds4_ops_check_mem(const char *op, const char *what, cl_mem m, uint64_t off, uint64_t bytes, ds4_error *err);
/* n floats from a.off (counted in floats) must lie inside a.mem. */
int ds4_ops_check_aref(const char *op, const char *what, ds4_aref a, uint64_t n, ds4_error *err);

#endif
