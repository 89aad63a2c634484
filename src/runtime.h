/* runtime.h - the OpenCL device, its programs and the weight memory plan.
 *
 * One ds4_runtime holds one device, its context and one in-order queue.
 * Devices are listed across all platforms in a stable order (platform order,
 * then device order) and chosen by index or by a case-insensitive substring
 * of "platform name / device name" (flag --device, env DS4CL_DEVICE).
 *
 * Kernel sources are embedded at build time (build/cl_sources.c, generated
 * from the cl/ sources); DS4CL_KERNEL_DIR (or ds4_runtime_opts.kernel_dir) reads the
 * same files from a directory instead, for kernel development.  Programs are
 * built once per (device, options) and kept: in memory for the runtime's
 * life, and as binaries on disk in DS4CL_CACHE_DIR (default
 * $XDG_CACHE_HOME/ds4cl or ~/.cache/ds4cl), keyed by a hash of the device,
 * driver, options and source.  DS4CL_NO_CACHE=1 turns the disk cache off.
 *
 * Weight memory plan: tensors (in file order) are packed into spans no larger
 * than the device's largest allocation, each tensor inside one span.  On a
 * host-unified device (Strix Halo, PoCL) a span is a page-aligned window of
 * the file mapping wrapped with CL_MEM_USE_HOST_PTR (zero copy); on a
 * discrete device (NVIDIA) a span is a device buffer the bytes are copied
 * into.  Kernels address a tensor as (span buffer, byte offset).
 *
 * Every OpenCL return code is checked; failures come back as ds4_error text
 * naming the call and the CL error.  Nothing here knows the model's math.
 */
#ifndef DS4_RUNTIME_H
#define DS4_RUNTIME_H

#define CL_TARGET_OPENCL_VERSION 120
#include <CL/cl.h>

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

#include "error.h"
#include "gguf.h"
#include "prof.h"

/* Name of an OpenCL error code ("CL_OUT_OF_RESOURCES", or "CL error -N"). */
const char *ds4_cl_strerror(cl_int code);

/* Evaluate an OpenCL call; on error fill err and return -1 from the caller. */
#define DS4_CL_CHECK(call, err)                                                    \
    do {                                                                           \
        cl_int ds4_cl_rc_ = (call);                                                \
        if (ds4_cl_rc_ != CL_SUCCESS)                                              \
            return ds4_fail((err), "%s failed: %s", #call, ds4_cl_strerror(ds4_cl_rc_)); \
    } while (0)

typedef struct ds4_device_desc {
    int index;                 /* global index used by --device N */
    cl_platform_id platform;
    cl_device_id device;
    char platform_name[128];
    char name[128];
    char vendor[128];
    char version[128];         /* CL_DEVICE_VERSION */
    char driver[128];          /* CL_DRIVER_VERSION */
    char c_version[64];        /* CL_DEVICE_OPENCL_C_VERSION */
    cl_device_type type;
    uint64_t global_mem;
    uint64_t max_alloc;
    uint64_t local_mem;
    size_t max_wg;
    cl_uint compute_units;
    bool host_unified;
    bool fp16, subgroups, int_dot; /* extensions present */
    bool nvidia;               /* NVIDIA's driver (inline PTX allowed) */
} ds4_device_desc;

/* Enumerate every device of every platform.  *out is malloc'd (free it);
 * *count may be 0 (no platform is not an error here). */
int ds4_devices_list(ds4_device_desc **out, int *count, ds4_error *err);
/* Print the list for --list-devices. */
int ds4_devices_print(FILE *fp, ds4_error *err);

typedef struct ds4_runtime_opts {
    const char *device;       /* index or name substring; NULL: env DS4CL_DEVICE, else first GPU, else first device */
    const char *kernel_dir;   /* NULL: env DS4CL_KERNEL_DIR, else the embedded sources */
    const char *cache_dir;    /* NULL: env DS4CL_CACHE_DIR, else default; "" disables */
    bool verbose;             /* log device and plan decisions to stderr */
    bool profile;             /* create the queue with CL_QUEUE_PROFILING_ENABLE */
} ds4_runtime_opts;

#define DS4_MAX_PROGRAMS 16

/* One profiled launch: the kernel, the tag the caller set (forward.c: the
 * layer index, -1 outside the layers), the bytes the launch is expected to
 * move (0 when not estimated) and its event, read after a finish. */
typedef struct ds4_prof_launch {
    cl_event ev;
    cl_kernel kern;
    int32_t tag;
    uint64_t bytes;
} ds4_prof_launch;

typedef struct ds4_profiler {
    bool on;                  /* recording launches */
    int32_t tag;              /* tag given to the next launches */
    uint64_t n, cap;
    ds4_prof_launch *rec;
} ds4_profiler;

typedef struct ds4_runtime {
    ds4_device_desc dev;
    cl_context ctx;
    cl_command_queue queue;
    char *source;             /* all kernel sources, concatenated */
    size_t source_len;
    char cache_dir[1024];     /* "" when the disk cache is off */
    bool verbose;
    bool profiling;           /* queue created with profiling enabled */
    ds4_profiler prof;
    int n_programs;
    struct {
        char *options;
        cl_program program;
    } programs[DS4_MAX_PROGRAMS];
} ds4_runtime;

int ds4_runtime_open(ds4_runtime *rt, const ds4_runtime_opts *opts, ds4_error *err);
void ds4_runtime_close(ds4_runtime *rt);

/* The program for these build options (device-tuning defines such as
 * "-DMV_LANES=32"): built on first use (from the disk cache when possible),
 * shown with its build log on failure, then reused.  Every build also gets
 * "-cl-std=CL1.2" and feature defines for the device: DS4_NVIDIA, DS4_CPU,
 * DS4_FP16, DS4_SUBGROUPS (each =1 when true, undefined otherwise). */
int ds4_runtime_program(ds4_runtime *rt, const char *options, cl_program *out, ds4_error *err);

/* Enqueue kern on the runtime's queue (every kernel launch of the engine
 * goes through here).  When the profiler is on, the launch also gets an
 * event recorded with the current tag and `bytes` (the caller's estimate of
 * the bytes the launch reads and writes; 0 = unknown).  Failing to grow the
 * record table is an error, never a silently dropped launch. */
int ds4_enqueue(ds4_runtime *rt, cl_kernel kern, cl_uint dims, const size_t *global, const size_t *local,
                uint64_t bytes, ds4_error *err);

/* Start recording launches (needs a queue opened with opts.profile);
 * drops whatever was recorded before. */
int ds4_profile_start(ds4_runtime *rt, ds4_error *err);
/* Stop recording and release the recorded events. */
void ds4_profile_stop(ds4_runtime *rt);

/* Wait for the queue, read every recorded launch's timestamps (in launch
 * order) into *out (malloc'd, *n entries), then clear the records (the
 * profiler stays on). */
int ds4_profile_collect(ds4_runtime *rt, ds4_prof_record **out, uint64_t *n, ds4_error *err);

/* Plain device buffers. */
int ds4_buffer_new(ds4_runtime *rt, uint64_t bytes, cl_mem *out, ds4_error *err);
int ds4_buffer_write(ds4_runtime *rt, cl_mem buf, uint64_t off, const void *src, uint64_t bytes,
                     ds4_error *err);
int ds4_buffer_read(ds4_runtime *rt, cl_mem buf, uint64_t off, void *dst, uint64_t bytes,
                    ds4_error *err);
int ds4_runtime_finish(ds4_runtime *rt, ds4_error *err);

/* --- weight memory plan --- */

typedef struct ds4_weight_span {
    uint64_t file_begin;      /* page-aligned start in the file */
    uint64_t file_end;        /* end (page-aligned when zero copy, else last tensor end) */
    uint64_t n_tensors;
    cl_mem mem;               /* NULL until ds4_weights_load */
} ds4_weight_span;

typedef struct ds4_weight_plan {
    bool zero_copy;           /* wrap the mapping (host-unified) or copy (discrete) */
    uint64_t max_span;        /* the largest allocation the plan respects */
    uint64_t total_bytes;     /* bytes of all spans */
    uint64_t n_spans;
    ds4_weight_span *spans;
    uint64_t n_tensors;
    uint32_t *tensor_span;    /* per gguf tensor index: which span holds it */
} ds4_weight_plan;

/* Plan how f's tensors go into buffers of at most max_span bytes.  Pure: no
 * OpenCL calls.  Fails naming the tensor when one does not fit in max_span. */
int ds4_weights_plan(ds4_weight_plan *plan, const gguf_file *f, uint64_t max_span, bool zero_copy,
                     ds4_error *err);
/* Create the span buffers on rt's device (wrap or copy as planned). */
int ds4_weights_load(ds4_weight_plan *plan, ds4_runtime *rt, const gguf_file *f, ds4_error *err);
/* Print the plan (one summary line and one line per span). */
void ds4_weights_print(const ds4_weight_plan *plan, FILE *fp);
void ds4_weights_free(ds4_weight_plan *plan);

/* Where tensor t (pointer into f->tensors) lives: its span buffer and the
 * byte offset of its data inside that buffer. */
typedef struct ds4_tensor_ref {
    cl_mem mem;
    uint64_t offset;
} ds4_tensor_ref;
ds4_tensor_ref ds4_weights_ref(const ds4_weight_plan *plan, const gguf_file *f, const gguf_tensor *t);

#endif
