/* prof.h - one profiled kernel launch, as the runtime reads it back.
 *
 * Shared by runtime.h (which records launches with OpenCL events) and
 * engine.h (which hands them to programs such as ds4cl-bench without
 * exposing OpenCL types).  Times are the device clock in nanoseconds.
 */
#ifndef DS4_PROF_H
#define DS4_PROF_H

#include <stdint.h>

typedef struct ds4_prof_record {
    char kernel[48];          /* kernel function name ("?" if unreadable) */
    int32_t tag;              /* forward.c: layer index; -1 embedding / head */
    uint64_t queued_ns, start_ns, end_ns;
    uint64_t bytes;           /* expected bytes read + written; 0 = not estimated */
} ds4_prof_record;

#endif
