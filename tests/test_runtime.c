/* test_runtime.c - device listing and choice, program build and the on-disk
 * program cache, the kernel-directory override, and the weight memory plan
 * (spans under a cap, each tensor inside one span, zero-copy and copied
 * placement both reading back the file's bytes). */
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <dirent.h>

#include "../src/gguf_write.h"
#include "../src/quant.h"
#include "test.h"

static int t_devices_listed(void) {
    ds4_error err = {{0}};
    ds4_device_desc *list = NULL;
    int n = 0;
    T_CHECK(ds4_devices_list(&list, &n, &err) == 0, "%s", err.msg);
    T_CHECK(n >= 1, "no OpenCL device listed");
    for (int i = 0; i < n; i++) {
        T_CHECK(list[i].index == i, "index %d at position %d", list[i].index, i);
        T_CHECK(list[i].max_alloc > 0 && list[i].max_alloc <= list[i].global_mem, "device %d sizes", i);
        T_CHECK(list[i].name[0] != '\0', "device %d has no name", i);
    }
    free(list);
    return 0;
}

static int t_device_choice(void) {
    ds4_runtime *rt = test_runtime();
    T_CHECK(rt != NULL, "no runtime");
    ds4_error err = {{0}};
    ds4_runtime other;
    /* By index. */
    char idx[16];
    snprintf(idx, sizeof(idx), "%d", rt->dev.index);
    ds4_runtime_opts o = {.device = idx};
    T_CHECK(ds4_runtime_open(&other, &o, &err) == 0, "%s", err.msg);
    T_CHECK(strcmp(other.dev.name, rt->dev.name) == 0, "index picked %s", other.dev.name);
    ds4_runtime_close(&other);
    /* By a case-swapped substring of the name. */
    char sub[8] = {0};
    for (int i = 0; i < 4 && rt->dev.name[i]; i++) {
        char c = rt->dev.name[i];
        sub[i] = (c >= 'a' && c <= 'z') ? (char)(c - 32) : (c >= 'A' && c <= 'Z') ? (char)(c + 32) : c;
    }
    o.device = sub;
    T_CHECK(ds4_runtime_open(&other, &o, &err) == 0, "%s", err.msg);
    ds4_runtime_close(&other);
    /* Out of range and unmatched selections fail with a clear message. */
    o.device = "999";
    T_CHECK(ds4_runtime_open(&other, &o, &err) != 0, "index 999 accepted");
    T_CHECK(strstr(err.msg, "out of range") != NULL, "message: %s", err.msg);
    o.device = "no-such-device-xyz";
    T_CHECK(ds4_runtime_open(&other, &o, &err) != 0, "bogus name accepted");
    T_CHECK(strstr(err.msg, "no-such-device-xyz") != NULL, "message: %s", err.msg);
    return 0;
}

static int count_files(const char *dir) {
    DIR *d = opendir(dir);
    if (!d) return -1;
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d)) != NULL)
        if (strstr(e->d_name, ".bin")) n++;
    closedir(d);
    return n;
}

static void remove_dir(const char *dir) {
    DIR *d = opendir(dir);
    if (!d) return;
    struct dirent *e;
    char path[1200];
    while ((e = readdir(d)) != NULL) {
        if (e->d_name[0] == '.') continue;
        snprintf(path, sizeof(path), "%s/%s", dir, e->d_name);
        unlink(path);
    }
    closedir(d);
    rmdir(dir);
}

static const char *tiny_kernel_options = "-DDS4_TEST_TINY=1";

static int t_program_cache(void) {
    char dir[] = "/tmp/ds4cl-test-cache-XXXXXX";
    T_CHECK(mkdtemp(dir) != NULL, "mkdtemp");
    ds4_error err = {{0}};
    ds4_runtime a;
    ds4_runtime_opts o = {.cache_dir = dir};
    T_CHECK(ds4_runtime_open(&a, &o, &err) == 0, "%s", err.msg);
    cl_program p1 = NULL, p2 = NULL;
    T_CHECK(ds4_runtime_program(&a, tiny_kernel_options, &p1, &err) == 0, "%s", err.msg);
    T_CHECK(ds4_runtime_program(&a, tiny_kernel_options, &p2, &err) == 0, "%s", err.msg);
    T_CHECK(p1 == p2, "the same options built twice");
    T_CHECK(count_files(dir) == 1, "cache holds %d binaries", count_files(dir));
    ds4_runtime_close(&a);
    /* A second runtime finds the binary, and the program it loads works. */
    ds4_runtime b;
    T_CHECK(ds4_runtime_open(&b, &o, &err) == 0, "%s", err.msg);
    T_CHECK(ds4_runtime_program(&b, tiny_kernel_options, &p1, &err) == 0, "%s", err.msg);
    cl_uint nk = 0;
    T_CHECK(clCreateKernelsInProgram(p1, 0, NULL, &nk) == CL_SUCCESS && nk > 0, "no kernels in cached program");
    T_CHECK(count_files(dir) == 1, "cache holds %d binaries", count_files(dir));
    ds4_runtime_close(&b);
    /* A corrupt cached binary is ignored and rebuilt. */
    DIR *d = opendir(dir);
    struct dirent *e;
    char path[1200] = "";
    while (d && (e = readdir(d)) != NULL)
        if (strstr(e->d_name, ".bin")) snprintf(path, sizeof(path), "%s/%s", dir, e->d_name);
    if (d) closedir(d);
    FILE *fp = fopen(path, "wb");
    T_CHECK(fp != NULL, "open %s", path);
    fputs("this is not a program binary", fp);
    fclose(fp);
    T_CHECK(ds4_runtime_open(&b, &o, &err) == 0, "%s", err.msg);
    T_CHECK(ds4_runtime_program(&b, tiny_kernel_options, &p1, &err) == 0, "corrupt cache: %s", err.msg);
    ds4_runtime_close(&b);
    remove_dir(dir);
    return 0;
}

/* Copy the repo's cl/ directory, break one file, and check the build fails
 * with an error (and that the intact copy builds). */
static int t_kernel_dir(void) {
    char dir[] = "/tmp/ds4cl-test-kdir-XXXXXX";
    T_CHECK(mkdtemp(dir) != NULL, "mkdtemp");
    char cmd[2400];
    snprintf(cmd, sizeof(cmd), "cp %s/cl/*.cl %s/", test_root_dir(), dir);
    T_CHECK(system(cmd) == 0, "%s", cmd);
    ds4_error err = {{0}};
    ds4_runtime rt;
    ds4_runtime_opts o = {.kernel_dir = dir, .cache_dir = ""};
    T_CHECK(ds4_runtime_open(&rt, &o, &err) == 0, "%s", err.msg);
    cl_program p = NULL;
    T_CHECK(ds4_runtime_program(&rt, tiny_kernel_options, &p, &err) == 0, "%s", err.msg);
    ds4_runtime_close(&rt);

    char path[1200];
    snprintf(path, sizeof(path), "%s/common.cl", dir);
    FILE *fp = fopen(path, "a");
    T_CHECK(fp != NULL, "append %s", path);
    fputs("\n__kernel void broken(__global float *x) { x[0] = undefined_symbol_here; }\n", fp);
    fclose(fp);
    T_CHECK(ds4_runtime_open(&rt, &o, &err) == 0, "%s", err.msg);
    fprintf(stderr, "    (an OpenCL build log for a deliberately broken kernel follows)\n");
    T_CHECK(ds4_runtime_program(&rt, tiny_kernel_options, &p, &err) != 0, "broken kernel built");
    T_CHECK(strstr(err.msg, "clBuildProgram") != NULL, "message: %s", err.msg);
    ds4_runtime_close(&rt);

    o.kernel_dir = "/nonexistent-ds4cl-dir";
    T_CHECK(ds4_runtime_open(&rt, &o, &err) != 0, "missing kernel dir accepted");
    T_CHECK(strstr(err.msg, "/nonexistent-ds4cl-dir") != NULL, "message: %s", err.msg);
    remove_dir(dir);
    return 0;
}

/* A GGUF file with n tensors of assorted sizes and types, random bytes. */
static int write_plan_file(const char *path, ds4_error *err) {
    gguf_writer *w = gguf_writer_new(32);
    if (!w) return ds4_fail(err, "writer");
    test_rng rng = {0x1234567ULL};
    const uint32_t types[] = {DS4_TYPE_F32, DS4_TYPE_Q8_0, DS4_TYPE_F16, DS4_TYPE_Q2_K};
    for (int i = 0; i < 12; i++) {
        uint32_t type = types[i % 4];
        uint64_t ne[2] = {256, (uint64_t)(1 + (i * 37) % 90)};
        uint64_t bytes = ds4_row_bytes(type, ne[0]) * ne[1];
        uint8_t *data = malloc(bytes);
        if (!data) {
            gguf_writer_free(w);
            return ds4_fail(err, "oom");
        }
        /* Random bytes, but keep f16 scales finite for typed readers. */
        for (uint64_t b = 0; b < bytes; b++) data[b] = (uint8_t)(test_rng_u64(&rng) & 0x3f);
        char name[32];
        snprintf(name, sizeof(name), "t%02d", i);
        int rc = gguf_w_tensor(w, name, 2, ne, type, data, err);
        free(data);
        if (rc != 0) {
            gguf_writer_free(w);
            return -1;
        }
    }
    gguf_w_str(w, "general.architecture", "plan-test");
    int rc = gguf_writer_save(w, path, err);
    gguf_writer_free(w);
    return rc;
}

static int check_plan(ds4_runtime *rt, const gguf_file *f, uint64_t cap, bool zero_copy) {
    ds4_error err = {{0}};
    ds4_weight_plan plan;
    T_CHECK(ds4_weights_plan(&plan, f, cap, zero_copy, &err) == 0, "%s", err.msg);
    T_CHECK(plan.n_spans >= 1, "no spans");
    uint64_t covered = 0;
    for (uint64_t s = 0; s < plan.n_spans; s++) {
        T_CHECK(plan.spans[s].file_end - plan.spans[s].file_begin <= cap, "span %llu too large",
                (unsigned long long)s);
        covered += plan.spans[s].n_tensors;
    }
    T_CHECK(covered == f->n_tensors, "spans hold %llu of %llu tensors", (unsigned long long)covered,
            (unsigned long long)f->n_tensors);
    for (uint64_t i = 0; i < f->n_tensors; i++) {
        const ds4_weight_span *sp = &plan.spans[plan.tensor_span[i]];
        const gguf_tensor *t = &f->tensors[i];
        T_CHECK(t->file_offset >= sp->file_begin && t->file_offset + t->nbytes <= sp->file_end,
                "tensor %llu outside its span", (unsigned long long)i);
        if (zero_copy) T_CHECK(sp->file_begin % 4096 == 0, "span not page aligned");
    }
    T_CHECK(ds4_weights_load(&plan, rt, f, &err) == 0, "%s", err.msg);
    for (uint64_t i = 0; i < f->n_tensors; i++) {
        const gguf_tensor *t = &f->tensors[i];
        ds4_tensor_ref ref = ds4_weights_ref(&plan, f, t);
        T_CHECK(ref.mem != NULL, "tensor %llu has no buffer", (unsigned long long)i);
        uint8_t *back = malloc(t->nbytes);
        T_CHECK(back != NULL, "oom");
        int rc = ds4_buffer_read(rt, ref.mem, ref.offset, back, t->nbytes, &err);
        int same = rc == 0 && memcmp(back, t->data, t->nbytes) == 0;
        free(back);
        T_CHECK(rc == 0, "%s", err.msg);
        T_CHECK(same, "tensor %llu bytes differ on the device", (unsigned long long)i);
    }
    ds4_weights_free(&plan);
    return 0;
}

static int t_weight_plan(void) {
    ds4_runtime *rt = test_runtime();
    T_CHECK(rt != NULL, "no runtime");
    char path[] = "/tmp/ds4cl-test-plan-XXXXXX";
    int fd = mkstemp(path);
    T_CHECK(fd >= 0, "mkstemp");
    close(fd);
    ds4_error err = {{0}};
    T_CHECK(write_plan_file(path, &err) == 0, "%s", err.msg);
    gguf_file f;
    T_CHECK(gguf_open(&f, path, &err) == 0, "%s", err.msg);
    int rc = 0;
    /* One span for everything, then caps that force splits, both placements. */
    const uint64_t caps[] = {rt->dev.max_alloc, 160 * 1024, 80 * 1024};
    for (size_t c = 0; c < 3 && rc == 0; c++) {
        rc |= check_plan(rt, &f, caps[c], true);
        rc |= check_plan(rt, &f, caps[c], false);
    }
    if (rc == 0) {
        ds4_weight_plan plan;
        ds4_error e2 = {{0}};
        rc = ds4_weights_plan(&plan, &f, 8 * 1024, false, &e2) == 0;
        if (rc) fprintf(stderr, "    a tensor larger than the cap was planned\n");
        else if (!strstr(e2.msg, "largest allocation") || !strstr(e2.msg, "'t")) {
            fprintf(stderr, "    message: %s\n", e2.msg);
            rc = 1;
        }
    }
    gguf_close(&f);
    unlink(path);
    return rc;
}

void tests_register_runtime(void) {
    test_add("runtime/devices_listed", t_devices_listed);
    test_add("runtime/device_choice", t_device_choice);
    test_add("runtime/program_cache", t_program_cache);
    test_add("runtime/kernel_dir", t_kernel_dir);
    test_add("runtime/weight_plan", t_weight_plan);
}
