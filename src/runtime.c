/* runtime.c - OpenCL device choice, program build + cache, buffers, and the
 * weight memory plan.  The design and invariants are described in runtime.h.
 *
 * Program cache.  A built program is identified by a 128-bit xxHash of the
 * device name, vendor, driver and device versions, the build options and the
 * full concatenated source.  The binary is stored as <cache>/<hex>.bin,
 * written to a temporary name and renamed, so a crash never leaves a torn
 * file.  A cached binary the driver refuses (or that fails to build) is simply
 * ignored and the program is rebuilt from source.
 *
 * Weight spans.  The tensors are visited in file order and cut into spans;
 * each span is one cl_mem.  A zero-copy span covers whole pages of the file
 * mapping (CL_MEM_USE_HOST_PTR wants page-aligned memory to avoid a hidden
 * copy); adjacent spans may share a boundary page, which is harmless because
 * weights are only read.  A copied span is a device buffer filled in chunks.
 */
#include "runtime.h"

#include <ctype.h>
#include <errno.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <xxhash.h>

#include "quant.h"

typedef struct {
    const char *name;
    const char *source;
} ds4_cl_file;
extern const ds4_cl_file ds4_cl_files[]; /* build/gen/cl_sources.c */

/* ------------------------------------------------------------------------ */
/* Error names                                                              */
/* ------------------------------------------------------------------------ */

const char *ds4_cl_strerror(cl_int code) {
    switch (code) {
#define E(x) case x: return #x;
        E(CL_SUCCESS) E(CL_DEVICE_NOT_FOUND) E(CL_DEVICE_NOT_AVAILABLE)
        E(CL_COMPILER_NOT_AVAILABLE) E(CL_MEM_OBJECT_ALLOCATION_FAILURE)
        E(CL_OUT_OF_RESOURCES) E(CL_OUT_OF_HOST_MEMORY) E(CL_PROFILING_INFO_NOT_AVAILABLE)
        E(CL_MEM_COPY_OVERLAP) E(CL_IMAGE_FORMAT_MISMATCH) E(CL_IMAGE_FORMAT_NOT_SUPPORTED)
        E(CL_BUILD_PROGRAM_FAILURE) E(CL_MAP_FAILURE) E(CL_MISALIGNED_SUB_BUFFER_OFFSET)
        E(CL_EXEC_STATUS_ERROR_FOR_EVENTS_IN_WAIT_LIST) E(CL_COMPILE_PROGRAM_FAILURE)
        E(CL_LINKER_NOT_AVAILABLE) E(CL_LINK_PROGRAM_FAILURE) E(CL_DEVICE_PARTITION_FAILED)
        E(CL_KERNEL_ARG_INFO_NOT_AVAILABLE) E(CL_INVALID_VALUE) E(CL_INVALID_DEVICE_TYPE)
        E(CL_INVALID_PLATFORM) E(CL_INVALID_DEVICE) E(CL_INVALID_CONTEXT)
        E(CL_INVALID_QUEUE_PROPERTIES) E(CL_INVALID_COMMAND_QUEUE) E(CL_INVALID_HOST_PTR)
        E(CL_INVALID_MEM_OBJECT) E(CL_INVALID_IMAGE_FORMAT_DESCRIPTOR) E(CL_INVALID_IMAGE_SIZE)
        E(CL_INVALID_SAMPLER) E(CL_INVALID_BINARY) E(CL_INVALID_BUILD_OPTIONS)
        E(CL_INVALID_PROGRAM) E(CL_INVALID_PROGRAM_EXECUTABLE) E(CL_INVALID_KERNEL_NAME)
        E(CL_INVALID_KERNEL_DEFINITION) E(CL_INVALID_KERNEL) E(CL_INVALID_ARG_INDEX)
        E(CL_INVALID_ARG_VALUE) E(CL_INVALID_ARG_SIZE) E(CL_INVALID_KERNEL_ARGS)
        E(CL_INVALID_WORK_DIMENSION) E(CL_INVALID_WORK_GROUP_SIZE) E(CL_INVALID_WORK_ITEM_SIZE)
        E(CL_INVALID_GLOBAL_OFFSET) E(CL_INVALID_EVENT_WAIT_LIST) E(CL_INVALID_EVENT)
        E(CL_INVALID_OPERATION) E(CL_INVALID_GL_OBJECT) E(CL_INVALID_BUFFER_SIZE)
        E(CL_INVALID_MIP_LEVEL) E(CL_INVALID_GLOBAL_WORK_SIZE) E(CL_INVALID_PROPERTY)
        E(CL_INVALID_IMAGE_DESCRIPTOR) E(CL_INVALID_COMPILER_OPTIONS) E(CL_INVALID_LINKER_OPTIONS)
        E(CL_INVALID_DEVICE_PARTITION_COUNT)
#undef E
    case -1001: return "CL_PLATFORM_NOT_FOUND_KHR (no OpenCL driver installed)";
    default: {
        /* Unknown codes are rare; a static buffer per thread keeps this simple. */
        static _Thread_local char buf[32];
        snprintf(buf, sizeof(buf), "CL error %d", (int)code);
        return buf;
    }
    }
}

/* ------------------------------------------------------------------------ */
/* Device listing                                                           */
/* ------------------------------------------------------------------------ */

static void info_str(cl_device_id d, cl_device_info what, char *buf, size_t cap) {
    size_t n = 0;
    buf[0] = '\0';
    if (clGetDeviceInfo(d, what, cap - 1, buf, &n) != CL_SUCCESS) {
        snprintf(buf, cap, "?");
        return;
    }
    buf[n < cap ? n : cap - 1] = '\0';
    /* Drivers pad some strings with spaces. */
    size_t len = strlen(buf);
    while (len && isspace((unsigned char)buf[len - 1])) buf[--len] = '\0';
}

static int has_extension(cl_device_id d, const char *ext) {
    size_t n = 0;
    if (clGetDeviceInfo(d, CL_DEVICE_EXTENSIONS, 0, NULL, &n) != CL_SUCCESS || n == 0) return 0;
    char *s = malloc(n + 1);
    if (!s) return 0;
    int found = 0;
    if (clGetDeviceInfo(d, CL_DEVICE_EXTENSIONS, n, s, NULL) == CL_SUCCESS) {
        s[n] = '\0';
        size_t el = strlen(ext);
        for (const char *p = s; (p = strstr(p, ext)) != NULL; p += el) {
            int start_ok = p == s || p[-1] == ' ';
            int end_ok = p[el] == '\0' || p[el] == ' ';
            if (start_ok && end_ok) { found = 1; break; }
        }
    }
    free(s);
    return found;
}

static int describe_device(ds4_device_desc *dd, cl_platform_id p, cl_device_id d, int index,
                           ds4_error *err) {
    memset(dd, 0, sizeof(*dd));
    dd->index = index;
    dd->platform = p;
    dd->device = d;
    size_t n = 0;
    if (clGetPlatformInfo(p, CL_PLATFORM_NAME, sizeof(dd->platform_name) - 1, dd->platform_name, &n) !=
        CL_SUCCESS)
        snprintf(dd->platform_name, sizeof(dd->platform_name), "?");
    info_str(d, CL_DEVICE_NAME, dd->name, sizeof(dd->name));
    info_str(d, CL_DEVICE_VENDOR, dd->vendor, sizeof(dd->vendor));
    info_str(d, CL_DEVICE_VERSION, dd->version, sizeof(dd->version));
    info_str(d, CL_DRIVER_VERSION, dd->driver, sizeof(dd->driver));
    info_str(d, CL_DEVICE_OPENCL_C_VERSION, dd->c_version, sizeof(dd->c_version));
    cl_ulong u64 = 0;
    cl_bool b = CL_FALSE;
    DS4_CL_CHECK(clGetDeviceInfo(d, CL_DEVICE_TYPE, sizeof(dd->type), &dd->type, NULL), err);
    DS4_CL_CHECK(clGetDeviceInfo(d, CL_DEVICE_GLOBAL_MEM_SIZE, sizeof(u64), &u64, NULL), err);
    dd->global_mem = u64;
    DS4_CL_CHECK(clGetDeviceInfo(d, CL_DEVICE_MAX_MEM_ALLOC_SIZE, sizeof(u64), &u64, NULL), err);
    dd->max_alloc = u64;
    DS4_CL_CHECK(clGetDeviceInfo(d, CL_DEVICE_LOCAL_MEM_SIZE, sizeof(u64), &u64, NULL), err);
    dd->local_mem = u64;
    DS4_CL_CHECK(clGetDeviceInfo(d, CL_DEVICE_MAX_WORK_GROUP_SIZE, sizeof(dd->max_wg), &dd->max_wg, NULL),
                 err);
    DS4_CL_CHECK(clGetDeviceInfo(d, CL_DEVICE_MAX_COMPUTE_UNITS, sizeof(dd->compute_units),
                                 &dd->compute_units, NULL),
                 err);
    /* Deprecated in 2.0 but still answered by every driver we target. */
    if (clGetDeviceInfo(d, CL_DEVICE_HOST_UNIFIED_MEMORY, sizeof(b), &b, NULL) == CL_SUCCESS)
        dd->host_unified = b == CL_TRUE;
    dd->fp16 = has_extension(d, "cl_khr_fp16");
    dd->subgroups = has_extension(d, "cl_khr_subgroups");
    dd->int_dot = has_extension(d, "cl_khr_integer_dot_product");
    dd->nvidia = strstr(dd->platform_name, "NVIDIA") != NULL || has_extension(d, "cl_nv_device_attribute_query");
    return 0;
}

int ds4_devices_list(ds4_device_desc **out, int *count, ds4_error *err) {
    *out = NULL;
    *count = 0;
    cl_uint np = 0;
    cl_int rc = clGetPlatformIDs(0, NULL, &np);
    if (rc == -1001 /* CL_PLATFORM_NOT_FOUND_KHR */ || (rc == CL_SUCCESS && np == 0)) return 0;
    if (rc != CL_SUCCESS) return ds4_fail(err, "clGetPlatformIDs failed: %s", ds4_cl_strerror(rc));
    cl_platform_id *plats = calloc(np, sizeof(*plats));
    if (!plats) return ds4_fail(err, "out of memory listing platforms");
    rc = clGetPlatformIDs(np, plats, NULL);
    if (rc != CL_SUCCESS) {
        free(plats);
        return ds4_fail(err, "clGetPlatformIDs failed: %s", ds4_cl_strerror(rc));
    }
    ds4_device_desc *list = NULL;
    int n = 0, status = 0;
    for (cl_uint pi = 0; pi < np && status == 0; pi++) {
        cl_uint nd = 0;
        rc = clGetDeviceIDs(plats[pi], CL_DEVICE_TYPE_ALL, 0, NULL, &nd);
        if (rc == CL_DEVICE_NOT_FOUND || nd == 0) continue;
        if (rc != CL_SUCCESS) {
            status = ds4_fail(err, "clGetDeviceIDs failed: %s", ds4_cl_strerror(rc));
            break;
        }
        cl_device_id *devs = calloc(nd, sizeof(*devs));
        ds4_device_desc *grown = realloc(list, sizeof(*list) * (size_t)(n + (int)nd));
        if (!devs || !grown) {
            free(devs);
            if (grown) list = grown;
            status = ds4_fail(err, "out of memory listing devices");
            break;
        }
        list = grown;
        rc = clGetDeviceIDs(plats[pi], CL_DEVICE_TYPE_ALL, nd, devs, NULL);
        if (rc != CL_SUCCESS) {
            free(devs);
            status = ds4_fail(err, "clGetDeviceIDs failed: %s", ds4_cl_strerror(rc));
            break;
        }
        for (cl_uint di = 0; di < nd && status == 0; di++) {
            status = describe_device(&list[n], plats[pi], devs[di], n, err);
            if (status == 0) n++;
        }
        free(devs);
    }
    free(plats);
    if (status != 0) {
        free(list);
        return -1;
    }
    *out = list;
    *count = n;
    return 0;
}

static double gib(uint64_t b) { return (double)b / (1024.0 * 1024.0 * 1024.0); }

static const char *device_type_name(cl_device_type t) {
    if (t & CL_DEVICE_TYPE_GPU) return "GPU";
    if (t & CL_DEVICE_TYPE_CPU) return "CPU";
    if (t & CL_DEVICE_TYPE_ACCELERATOR) return "accelerator";
    return "other";
}

int ds4_devices_print(FILE *fp, ds4_error *err) {
    ds4_device_desc *list = NULL;
    int n = 0;
    if (ds4_devices_list(&list, &n, err) != 0) return -1;
    if (n == 0) {
        fprintf(fp, "no OpenCL devices found (is an ICD installed? try: apt-get install pocl-opencl-icd)\n");
        return 0;
    }
    for (int i = 0; i < n; i++) {
        const ds4_device_desc *d = &list[i];
        fprintf(fp, "[%d] %s / %s (%s)\n", d->index, d->platform_name, d->name, device_type_name(d->type));
        fprintf(fp, "    %s, %s, driver %s\n", d->version, d->c_version, d->driver);
        fprintf(fp,
                "    %u compute units, global %.2f GiB, largest allocation %.2f GiB, local %llu KiB, "
                "work-group %zu\n",
                d->compute_units, gib(d->global_mem), gib(d->max_alloc),
                (unsigned long long)(d->local_mem / 1024), d->max_wg);
        fprintf(fp, "    host-unified memory %s; fp16 %s, subgroups %s, integer dot %s\n",
                d->host_unified ? "yes (weights zero-copy)" : "no (weights copied)", d->fp16 ? "yes" : "no",
                d->subgroups ? "yes" : "no", d->int_dot ? "yes" : "no");
    }
    free(list);
    return 0;
}

/* Case-insensitive substring search. */
static int contains_ci(const char *hay, const char *needle) {
    size_t nl = strlen(needle);
    if (nl == 0) return 1;
    for (; *hay; hay++) {
        size_t i = 0;
        while (i < nl && hay[i] && tolower((unsigned char)hay[i]) == tolower((unsigned char)needle[i])) i++;
        if (i == nl) return 1;
    }
    return 0;
}

static int all_digits(const char *s) {
    if (!*s) return 0;
    for (; *s; s++)
        if (!isdigit((unsigned char)*s)) return 0;
    return 1;
}

/* Pick a device: by index, by substring of "platform / name", or the default
 * (first GPU, else the first device). */
static int choose_device(const ds4_device_desc *list, int n, const char *sel, int *chosen, ds4_error *err) {
    if (n == 0) return ds4_fail(err, "no OpenCL devices found (is an ICD installed? try: make deps)");
    if (sel && *sel) {
        if (all_digits(sel)) {
            long idx = strtol(sel, NULL, 10);
            if (idx < 0 || idx >= n)
                return ds4_fail(err, "device index %s out of range: %d device(s) (see --list-devices)", sel, n);
            *chosen = (int)idx;
            return 0;
        }
        for (int i = 0; i < n; i++) {
            char full[300];
            snprintf(full, sizeof(full), "%s / %s", list[i].platform_name, list[i].name);
            if (contains_ci(full, sel)) {
                *chosen = i;
                return 0;
            }
        }
        return ds4_fail(err, "no OpenCL device matches '%s' (see --list-devices)", sel);
    }
    for (int i = 0; i < n; i++)
        if (list[i].type & CL_DEVICE_TYPE_GPU) {
            *chosen = i;
            return 0;
        }
    *chosen = 0;
    return 0;
}

/* ------------------------------------------------------------------------ */
/* Sources                                                                  */
/* ------------------------------------------------------------------------ */

static int read_text_file(const char *path, char **out, size_t *len, ds4_error *err) {
    FILE *fp = fopen(path, "rb");
    if (!fp) return ds4_fail(err, "cannot open kernel source %s: %s", path, strerror(errno));
    char *buf = NULL;
    size_t n = 0, cap = 0;
    for (;;) {
        if (cap - n < 65536) {
            if (cap > ((size_t)64 << 20)) {
                free(buf);
                fclose(fp);
                return ds4_fail(err, "kernel source %s is larger than 64 MiB", path);
            }
            size_t ncap = cap ? cap * 2 : 131072;
            char *nb = realloc(buf, ncap);
            if (!nb) {
                free(buf);
                fclose(fp);
                return ds4_fail(err, "out of memory reading %s", path);
            }
            buf = nb;
            cap = ncap;
        }
        size_t got = fread(buf + n, 1, cap - n - 1, fp);
        n += got;
        if (got == 0) break;
    }
    int bad = ferror(fp);
    fclose(fp);
    if (bad) {
        free(buf);
        return ds4_fail(err, "error reading %s", path);
    }
    buf[n] = '\0';
    *out = buf;
    *len = n;
    return 0;
}

/* Concatenate the kernel files (embedded, or read from dir) into one source. */
static int load_sources(ds4_runtime *rt, const char *dir, ds4_error *err) {
    size_t total = 0;
    char *all = NULL;
    for (const ds4_cl_file *f = ds4_cl_files; f->name; f++) {
        char *text = NULL;
        size_t len = 0;
        if (dir) {
            char path[PATH_MAX];
            snprintf(path, sizeof(path), "%s/%s", dir, f->name);
            if (read_text_file(path, &text, &len, err) != 0) {
                free(all);
                return -1;
            }
        } else {
            text = (char *)f->source;
            len = strlen(text);
        }
        char header[512];
        int hl = snprintf(header, sizeof(header), "\n/* ---- %s ---- */\n", f->name);
        char *grown = realloc(all, total + (size_t)hl + len + 2);
        if (!grown) {
            if (dir) free(text);
            free(all);
            return ds4_fail(err, "out of memory assembling kernel sources");
        }
        all = grown;
        memcpy(all + total, header, (size_t)hl);
        total += (size_t)hl;
        memcpy(all + total, text, len);
        total += len;
        all[total++] = '\n';
        all[total] = '\0';
        if (dir) free(text);
    }
    if (!all) return ds4_fail(err, "no kernel sources were embedded");
    rt->source = all;
    rt->source_len = total;
    return 0;
}

/* ------------------------------------------------------------------------ */
/* Runtime                                                                  */
/* ------------------------------------------------------------------------ */

static int mkdir_p(const char *path) {
    char tmp[1024];
    snprintf(tmp, sizeof(tmp), "%s", path);
    for (char *p = tmp + 1; *p; p++) {
        if (*p != '/') continue;
        *p = '\0';
        if (mkdir(tmp, 0755) != 0 && errno != EEXIST) return -1;
        *p = '/';
    }
    if (mkdir(tmp, 0755) != 0 && errno != EEXIST) return -1;
    return 0;
}

static void setup_cache_dir(ds4_runtime *rt, const char *opt) {
    rt->cache_dir[0] = '\0';
    const char *no = getenv("DS4CL_NO_CACHE");
    if (no && *no && strcmp(no, "0") != 0) return;
    const char *dir = opt ? opt : getenv("DS4CL_CACHE_DIR");
    char buf[1024];
    if (!dir) {
        const char *xdg = getenv("XDG_CACHE_HOME");
        const char *home = getenv("HOME");
        if (xdg && *xdg) snprintf(buf, sizeof(buf), "%s/ds4cl", xdg);
        else if (home && *home) snprintf(buf, sizeof(buf), "%s/.cache/ds4cl", home);
        else return;
        dir = buf;
    }
    if (!*dir) return;
    if (mkdir_p(dir) != 0) {
        if (rt->verbose) fprintf(stderr, "ds4cl: program cache %s unusable (%s); not caching\n", dir, strerror(errno));
        return;
    }
    snprintf(rt->cache_dir, sizeof(rt->cache_dir), "%s", dir);
}

int ds4_runtime_open(ds4_runtime *rt, const ds4_runtime_opts *opts, ds4_error *err) {
    memset(rt, 0, sizeof(*rt));
    ds4_runtime_opts none = {0};
    if (!opts) opts = &none;
    rt->verbose = opts->verbose;

    ds4_device_desc *list = NULL;
    int n = 0, chosen = 0;
    if (ds4_devices_list(&list, &n, err) != 0) return -1;
    const char *sel = opts->device ? opts->device : getenv("DS4CL_DEVICE");
    if (choose_device(list, n, sel, &chosen, err) != 0) {
        free(list);
        return -1;
    }
    rt->dev = list[chosen];
    free(list);

    cl_int rc = CL_SUCCESS;
    cl_context_properties props[] = {CL_CONTEXT_PLATFORM, (cl_context_properties)rt->dev.platform, 0};
    rt->ctx = clCreateContext(props, 1, &rt->dev.device, NULL, NULL, &rc);
    if (rc != CL_SUCCESS || !rt->ctx) {
        rt->ctx = NULL;
        return ds4_fail(err, "clCreateContext for %s failed: %s", rt->dev.name, ds4_cl_strerror(rc));
    }
    rt->profiling = opts->profile;
    cl_command_queue_properties qprops = opts->profile ? CL_QUEUE_PROFILING_ENABLE : 0;
    rt->queue = clCreateCommandQueue(rt->ctx, rt->dev.device, qprops, &rc);
    if (rc != CL_SUCCESS || !rt->queue) {
        rt->queue = NULL;
        ds4_runtime_close(rt);
        return ds4_fail(err, "clCreateCommandQueue failed: %s", ds4_cl_strerror(rc));
    }
    const char *kdir = opts->kernel_dir ? opts->kernel_dir : getenv("DS4CL_KERNEL_DIR");
    if (kdir && !*kdir) kdir = NULL;
    if (load_sources(rt, kdir, err) != 0) {
        ds4_runtime_close(rt);
        return -1;
    }
    setup_cache_dir(rt, opts->cache_dir);
    if (rt->verbose)
        fprintf(stderr, "ds4cl: device [%d] %s / %s, kernels %s, program cache %s\n", rt->dev.index,
                rt->dev.platform_name, rt->dev.name, kdir ? kdir : "embedded",
                rt->cache_dir[0] ? rt->cache_dir : "off");
    return 0;
}

void ds4_runtime_close(ds4_runtime *rt) {
    ds4_profile_stop(rt);
    for (int i = 0; i < rt->n_programs; i++) {
        if (rt->programs[i].program) clReleaseProgram(rt->programs[i].program);
        free(rt->programs[i].options);
    }
    rt->n_programs = 0;
    if (rt->queue) clReleaseCommandQueue(rt->queue);
    if (rt->ctx) clReleaseContext(rt->ctx);
    free(rt->source);
    memset(rt, 0, sizeof(*rt));
}

/* ------------------------------------------------------------------------ */
/* Programs                                                                 */
/* ------------------------------------------------------------------------ */

static void cache_key(const ds4_runtime *rt, const char *options, char hex[33]) {
    XXH3_state_t *st = XXH3_createState();
    XXH128_hash_t h = {0, 0};
    if (st && XXH3_128bits_reset(st) == XXH_OK) {
        const char *parts[] = {rt->dev.platform_name, rt->dev.name, rt->dev.vendor,
                               rt->dev.version, rt->dev.driver, options};
        for (size_t i = 0; i < sizeof(parts) / sizeof(parts[0]); i++)
            XXH3_128bits_update(st, parts[i], strlen(parts[i]) + 1); /* +1: NUL separates fields */
        XXH3_128bits_update(st, rt->source, rt->source_len);
        h = XXH3_128bits_digest(st);
    }
    XXH3_freeState(st);
    snprintf(hex, 33, "%016llx%016llx", (unsigned long long)h.high64, (unsigned long long)h.low64);
}

static void print_build_log(ds4_runtime *rt, cl_program prog, const char *options) {
    size_t n = 0;
    if (clGetProgramBuildInfo(prog, rt->dev.device, CL_PROGRAM_BUILD_LOG, 0, NULL, &n) != CL_SUCCESS || n == 0)
        return;
    char *log = malloc(n + 1);
    if (!log) return;
    if (clGetProgramBuildInfo(prog, rt->dev.device, CL_PROGRAM_BUILD_LOG, n, log, NULL) == CL_SUCCESS) {
        log[n] = '\0';
        fprintf(stderr, "ds4cl: OpenCL build log for %s (options \"%s\"):\n%s\n", rt->dev.name, options, log);
    }
    free(log);
}

/* Try the cached binary; returns a built program or NULL. */
static cl_program load_cached(ds4_runtime *rt, const char *path, const char *options) {
    FILE *fp = fopen(path, "rb");
    if (!fp) return NULL;
    cl_program prog = NULL;
    unsigned char *bin = NULL;
    long size = -1;
    if (fseek(fp, 0, SEEK_END) == 0) size = ftell(fp);
    if (size > 0 && size < (256L << 20) && fseek(fp, 0, SEEK_SET) == 0) {
        bin = malloc((size_t)size);
        if (bin && fread(bin, 1, (size_t)size, fp) == (size_t)size) {
            size_t len = (size_t)size;
            const unsigned char *bins[1] = {bin};
            cl_int st = CL_SUCCESS, rc = CL_SUCCESS;
            prog = clCreateProgramWithBinary(rt->ctx, 1, &rt->dev.device, &len, bins, &st, &rc);
            if (rc != CL_SUCCESS || st != CL_SUCCESS) {
                if (prog) clReleaseProgram(prog);
                prog = NULL;
            } else if (clBuildProgram(prog, 1, &rt->dev.device, options, NULL, NULL) != CL_SUCCESS) {
                clReleaseProgram(prog);
                prog = NULL;
            }
        }
    }
    free(bin);
    fclose(fp);
    return prog;
}

/* Save the program's binary; failures only cost a rebuild next time. */
static void store_cached(ds4_runtime *rt, cl_program prog, const char *path) {
    size_t size = 0;
    if (clGetProgramInfo(prog, CL_PROGRAM_BINARY_SIZES, sizeof(size), &size, NULL) != CL_SUCCESS || size == 0)
        return;
    unsigned char *bin = malloc(size);
    if (!bin) return;
    unsigned char *bins[1] = {bin};
    if (clGetProgramInfo(prog, CL_PROGRAM_BINARIES, sizeof(bins), bins, NULL) == CL_SUCCESS) {
        char tmp[1200];
        snprintf(tmp, sizeof(tmp), "%s.%ld.tmp", path, (long)getpid());
        FILE *fp = fopen(tmp, "wb");
        if (fp) {
            int ok = fwrite(bin, 1, size, fp) == size;
            ok = (fclose(fp) == 0) && ok;
            if (!ok || rename(tmp, path) != 0) remove(tmp);
            else if (rt->verbose) fprintf(stderr, "ds4cl: cached program binary %s\n", path);
        }
    }
    free(bin);
}

/* Options every build gets: the language version and what the device is, so
 * kernels can pick a feature path with #ifdef (tuning stays with the caller). */
static void base_options(const ds4_runtime *rt, const char *options, char *out, size_t cap) {
    snprintf(out, cap, "-cl-std=CL1.2%s%s%s%s %s", rt->dev.nvidia ? " -DDS4_NVIDIA=1" : "",
             (rt->dev.type & CL_DEVICE_TYPE_CPU) ? " -DDS4_CPU=1" : "", rt->dev.fp16 ? " -DDS4_FP16=1" : "",
             rt->dev.subgroups ? " -DDS4_SUBGROUPS=1" : "", options);
}

static int build_from_source(ds4_runtime *rt, const char *options, cl_program *out, ds4_error *err) {
    cl_int rc = CL_SUCCESS;
    const char *src = rt->source;
    size_t len = rt->source_len;
    cl_program prog = clCreateProgramWithSource(rt->ctx, 1, &src, &len, &rc);
    if (rc != CL_SUCCESS || !prog)
        return ds4_fail(err, "clCreateProgramWithSource failed: %s", ds4_cl_strerror(rc));
    rc = clBuildProgram(prog, 1, &rt->dev.device, options, NULL, NULL);
    if (rc != CL_SUCCESS) {
        print_build_log(rt, prog, options);
        clReleaseProgram(prog);
        return ds4_fail(err, "clBuildProgram for %s failed: %s (build log above)", rt->dev.name,
                        ds4_cl_strerror(rc));
    }
    *out = prog;
    return 0;
}

int ds4_runtime_program(ds4_runtime *rt, const char *options, cl_program *out, ds4_error *err) {
    if (!options) options = "";
    for (int i = 0; i < rt->n_programs; i++)
        if (strcmp(rt->programs[i].options, options) == 0) {
            *out = rt->programs[i].program;
            return 0;
        }
    if (rt->n_programs == DS4_MAX_PROGRAMS)
        return ds4_fail(err, "too many program variants (%d) on one runtime", DS4_MAX_PROGRAMS);
    char *opt_copy = strdup(options);
    if (!opt_copy) return ds4_fail(err, "out of memory");
    char full[2048];
    base_options(rt, options, full, sizeof(full));

    cl_program prog = NULL;
    char path[1100] = "";
    if (rt->cache_dir[0]) {
        char hex[33];
        cache_key(rt, full, hex);
        snprintf(path, sizeof(path), "%s/%s.bin", rt->cache_dir, hex);
        prog = load_cached(rt, path, full);
        if (prog && rt->verbose) fprintf(stderr, "ds4cl: program from cache %s\n", path);
    }
    if (!prog) {
        if (build_from_source(rt, full, &prog, err) != 0) {
            free(opt_copy);
            return -1;
        }
        if (path[0]) store_cached(rt, prog, path);
    }
    rt->programs[rt->n_programs].options = opt_copy;
    rt->programs[rt->n_programs].program = prog;
    rt->n_programs++;
    *out = prog;
    return 0;
}

/* ------------------------------------------------------------------------ */
/* Buffers                                                                  */
/* ------------------------------------------------------------------------ */

int ds4_buffer_new(ds4_runtime *rt, uint64_t bytes, cl_mem *out, ds4_error *err) {
    *out = NULL;
    if (bytes == 0) bytes = 16;
    if (bytes > rt->dev.max_alloc)
        return ds4_fail(err, "buffer of %llu bytes exceeds the device's largest allocation (%llu bytes)",
                        (unsigned long long)bytes, (unsigned long long)rt->dev.max_alloc);
    cl_int rc = CL_SUCCESS;
    cl_mem m = clCreateBuffer(rt->ctx, CL_MEM_READ_WRITE, (size_t)bytes, NULL, &rc);
    if (rc != CL_SUCCESS || !m)
        return ds4_fail(err, "clCreateBuffer(%llu bytes) failed: %s", (unsigned long long)bytes,
                        ds4_cl_strerror(rc));
    *out = m;
    return 0;
}

int ds4_buffer_write(ds4_runtime *rt, cl_mem buf, uint64_t off, const void *src, uint64_t bytes,
                     ds4_error *err) {
    DS4_CL_CHECK(clEnqueueWriteBuffer(rt->queue, buf, CL_TRUE, (size_t)off, (size_t)bytes, src, 0, NULL, NULL),
                 err);
    return 0;
}

int ds4_buffer_read(ds4_runtime *rt, cl_mem buf, uint64_t off, void *dst, uint64_t bytes, ds4_error *err) {
    DS4_CL_CHECK(clEnqueueReadBuffer(rt->queue, buf, CL_TRUE, (size_t)off, (size_t)bytes, dst, 0, NULL, NULL),
                 err);
    return 0;
}

int ds4_runtime_finish(ds4_runtime *rt, ds4_error *err) {
    DS4_CL_CHECK(clFinish(rt->queue), err);
    return 0;
}

/* ------------------------------------------------------------------------ */
/* Weight memory plan                                                       */
/* ------------------------------------------------------------------------ */

static uint64_t page_size(void) {
    long p = sysconf(_SC_PAGESIZE);
    return p > 0 ? (uint64_t)p : 4096;
}

typedef struct {
    uint64_t offset;
    uint32_t index;
} tensor_pos;

static int cmp_tensor_pos(const void *a, const void *b) {
    uint64_t oa = ((const tensor_pos *)a)->offset, ob = ((const tensor_pos *)b)->offset;
    return oa < ob ? -1 : oa > ob;
}

int ds4_weights_plan(ds4_weight_plan *plan, const gguf_file *f, uint64_t max_span, bool zero_copy,
                     ds4_error *err) {
    memset(plan, 0, sizeof(*plan));
    plan->zero_copy = zero_copy;
    plan->max_span = max_span;
    plan->n_tensors = f->n_tensors;
    if (f->n_tensors == 0) return 0;
    if (f->n_tensors > UINT32_MAX) return ds4_fail(err, "too many tensors (%llu)", (unsigned long long)f->n_tensors);
    const uint64_t page = page_size();
    /* Bytes readable past the file end: the mapping's last page, or nothing. */
    const uint64_t limit = f->map_size > f->size ? f->map_size : f->size;

    tensor_pos *order = malloc(sizeof(tensor_pos) * f->n_tensors);
    plan->tensor_span = calloc(f->n_tensors, sizeof(uint32_t));
    plan->spans = calloc(f->n_tensors, sizeof(ds4_weight_span)); /* at most one span per tensor */
    if (!order || !plan->tensor_span || !plan->spans) {
        free(order);
        ds4_weights_free(plan);
        return ds4_fail(err, "out of memory planning weights");
    }
    for (uint64_t i = 0; i < f->n_tensors; i++) {
        order[i].offset = f->tensors[i].file_offset;
        order[i].index = (uint32_t)i;
    }
    qsort(order, f->n_tensors, sizeof(tensor_pos), cmp_tensor_pos);

    ds4_weight_span *cur = NULL;
    for (uint64_t k = 0; k < f->n_tensors; k++) {
        const gguf_tensor *t = &f->tensors[order[k].index];
        uint64_t begin = t->file_offset / page * page;
        uint64_t end = t->file_offset + t->nbytes;
        if (zero_copy) {
            end = (end + page - 1) / page * page;
            if (end > limit) end = limit;
        }
        if (end - begin > max_span) {
            char name[256];
            gguf_str_copy(t->name, name, sizeof(name));
            free(order);
            ds4_weights_free(plan);
            return ds4_fail(err,
                            "tensor '%s' needs %llu bytes in one buffer but the device's largest allocation is "
                            "%llu bytes",
                            name, (unsigned long long)(end - begin), (unsigned long long)max_span);
        }
        if (!cur || end - cur->file_begin > max_span) {
            cur = &plan->spans[plan->n_spans++];
            cur->file_begin = begin;
            cur->file_end = end;
        }
        if (end > cur->file_end) cur->file_end = end;
        cur->n_tensors++;
        plan->tensor_span[order[k].index] = (uint32_t)(plan->n_spans - 1);
    }
    free(order);
    for (uint64_t s = 0; s < plan->n_spans; s++) plan->total_bytes += plan->spans[s].file_end - plan->spans[s].file_begin;
    return 0;
}

int ds4_weights_load(ds4_weight_plan *plan, ds4_runtime *rt, const gguf_file *f, ds4_error *err) {
    if (!plan->zero_copy && plan->total_bytes > rt->dev.global_mem)
        return ds4_fail(err, "weights need %.2f GiB of device memory but %s has %.2f GiB",
                        gib(plan->total_bytes), rt->dev.name, gib(rt->dev.global_mem));
    for (uint64_t s = 0; s < plan->n_spans; s++) {
        ds4_weight_span *sp = &plan->spans[s];
        size_t bytes = (size_t)(sp->file_end - sp->file_begin);
        cl_int rc = CL_SUCCESS;
        if (plan->zero_copy) {
            void *host = (void *)(uintptr_t)(f->base + sp->file_begin);
            sp->mem = clCreateBuffer(rt->ctx, CL_MEM_READ_ONLY | CL_MEM_USE_HOST_PTR, bytes, host, &rc);
        } else {
            sp->mem = clCreateBuffer(rt->ctx, CL_MEM_READ_ONLY, bytes, NULL, &rc);
        }
        if (rc != CL_SUCCESS || !sp->mem) {
            sp->mem = NULL;
            return ds4_fail(err, "clCreateBuffer for weight span %llu (%.2f GiB, %s) failed: %s",
                            (unsigned long long)s, gib(bytes), plan->zero_copy ? "zero-copy" : "copied",
                            ds4_cl_strerror(rc));
        }
        if (plan->zero_copy) continue;
        /* Copy in chunks so a driver never stages the whole span at once. */
        const size_t chunk = (size_t)256 << 20;
        for (size_t off = 0; off < bytes; off += chunk) {
            size_t n = bytes - off < chunk ? bytes - off : chunk;
            rc = clEnqueueWriteBuffer(rt->queue, sp->mem, CL_TRUE, off, n, f->base + sp->file_begin + off, 0,
                                      NULL, NULL);
            if (rc != CL_SUCCESS)
                return ds4_fail(err, "copying weight span %llu to the device failed: %s", (unsigned long long)s,
                                ds4_cl_strerror(rc));
        }
    }
    return 0;
}

void ds4_weights_print(const ds4_weight_plan *plan, FILE *fp) {
    fprintf(fp, "weight memory plan: %llu tensors in %llu buffer(s), %.3f GiB, %s, largest allocation %.2f GiB\n",
            (unsigned long long)plan->n_tensors, (unsigned long long)plan->n_spans, gib(plan->total_bytes),
            plan->zero_copy ? "zero-copy (CL_MEM_USE_HOST_PTR on the file mapping)" : "copied to device memory",
            gib(plan->max_span));
    for (uint64_t s = 0; s < plan->n_spans; s++) {
        const ds4_weight_span *sp = &plan->spans[s];
        fprintf(fp, "  buffer %llu: file [0x%llx, 0x%llx) %.3f GiB, %llu tensors\n", (unsigned long long)s,
                (unsigned long long)sp->file_begin, (unsigned long long)sp->file_end,
                gib(sp->file_end - sp->file_begin), (unsigned long long)sp->n_tensors);
    }
}

void ds4_weights_free(ds4_weight_plan *plan) {
    if (plan->spans)
        for (uint64_t s = 0; s < plan->n_spans; s++)
            if (plan->spans[s].mem) clReleaseMemObject(plan->spans[s].mem);
    free(plan->spans);
    free(plan->tensor_span);
    memset(plan, 0, sizeof(*plan));
}

ds4_tensor_ref ds4_weights_ref(const ds4_weight_plan *plan, const gguf_file *f, const gguf_tensor *t) {
    ds4_tensor_ref r = {NULL, 0};
    uint64_t idx = (uint64_t)(t - f->tensors);
    if (idx >= plan->n_tensors) return r;
    const ds4_weight_span *sp = &plan->spans[plan->tensor_span[idx]];
    r.mem = sp->mem;
    r.offset = t->file_offset - sp->file_begin;
    return r;
}

/* ------------------------------------------------------------------------ */
/* Launches and the profiler                                                */
/* ------------------------------------------------------------------------ */

static void prof_release(ds4_profiler *p) {
    for (uint64_t i = 0; i < p->n; i++) {
        if (p->rec[i].ev) clReleaseEvent(p->rec[i].ev);
        if (p->rec[i].kern) clReleaseKernel(p->rec[i].kern);
    }
    p->n = 0;
}

int ds4_enqueue(ds4_runtime *rt, cl_kernel kern, cl_uint dims, const size_t *global, const size_t *local,
                uint64_t bytes, ds4_error *err) {
    ds4_profiler *p = &rt->prof;
    if (!p->on) {
        DS4_CL_CHECK(clEnqueueNDRangeKernel(rt->queue, kern, dims, NULL, global, local, 0, NULL, NULL), err);
        return 0;
    }
    if (p->n == p->cap) {
        uint64_t cap = p->cap ? p->cap * 2 : 4096;
        ds4_prof_launch *rec = realloc(p->rec, cap * sizeof(*rec));
        if (!rec) return ds4_fail(err, "profiler: out of memory for %llu launches", (unsigned long long)cap);
        p->rec = rec;
        p->cap = cap;
    }
    cl_event ev = NULL;
    DS4_CL_CHECK(clEnqueueNDRangeKernel(rt->queue, kern, dims, NULL, global, local, 0, NULL, &ev), err);
    DS4_CL_CHECK(clRetainKernel(kern), err);
    ds4_prof_launch *r = &p->rec[p->n++];
    r->ev = ev;
    r->kern = kern;
    r->tag = p->tag;
    r->bytes = bytes;
    return 0;
}

int ds4_profile_start(ds4_runtime *rt, ds4_error *err) {
    if (!rt->profiling) return ds4_fail(err, "profiling needs a queue opened with profiling enabled");
    prof_release(&rt->prof);
    rt->prof.on = true;
    rt->prof.tag = -1;
    return 0;
}

void ds4_profile_stop(ds4_runtime *rt) {
    prof_release(&rt->prof);
    free(rt->prof.rec);
    memset(&rt->prof, 0, sizeof(rt->prof));
}

static int event_time(cl_event ev, cl_profiling_info what, uint64_t *out, ds4_error *err) {
    cl_ulong v = 0;
    DS4_CL_CHECK(clGetEventProfilingInfo(ev, what, sizeof(v), &v, NULL), err);
    *out = v;
    return 0;
}

int ds4_profile_collect(ds4_runtime *rt, ds4_prof_record **out, uint64_t *n, ds4_error *err) {
    ds4_profiler *p = &rt->prof;
    *out = NULL;
    *n = 0;
    if (ds4_runtime_finish(rt, err) != 0) return -1;
    ds4_prof_record *res = calloc(p->n ? p->n : 1, sizeof(*res));
    if (!res) return ds4_fail(err, "profiler: out of memory");
    for (uint64_t i = 0; i < p->n; i++) {
        ds4_prof_launch *r = &p->rec[i];
        ds4_prof_record *o = &res[i];
        cl_int rc = clGetKernelInfo(r->kern, CL_KERNEL_FUNCTION_NAME, sizeof(o->kernel), o->kernel, NULL);
        if (rc != CL_SUCCESS) snprintf(o->kernel, sizeof(o->kernel), "?");
        o->tag = r->tag;
        o->bytes = r->bytes;
        if (event_time(r->ev, CL_PROFILING_COMMAND_QUEUED, &o->queued_ns, err) != 0 ||
            event_time(r->ev, CL_PROFILING_COMMAND_START, &o->start_ns, err) != 0 ||
            event_time(r->ev, CL_PROFILING_COMMAND_END, &o->end_ns, err) != 0) {
            free(res);
            return -1;
        }
    }
    *out = res;
    *n = p->n;
    prof_release(p);
    return 0;
}
