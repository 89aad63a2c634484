/* test_tuning.c - the device-class tuning table, the DS4CL_TUNING override
 * and the merge with explicit options (src/tuning.c).
 *
 * Devices are fabricated ds4_device_desc values shaped like the real ones
 * (PoCL, the H200 through NVIDIA's driver, gfx1151 through ROCm and through
 * rusticl, an Intel GPU, an older AMD APU); nothing here opens OpenCL.
 * Checked: each class gets the documented shape and options; the override
 * replaces the shape (last occurrence wins) and adds options; malformed
 * overrides fail with one line naming the token; lanes * rows never exceeds
 * the work-group limit for any class, limit and override (clamped with a
 * note); the merged build string defines every macro once, caller last.
 */
#include <string.h>

#include "../src/tuning.h"
#include "test.h"

static ds4_device_desc dev_pocl(void) {
    ds4_device_desc d;
    memset(&d, 0, sizeof(d));
    snprintf(d.platform_name, sizeof(d.platform_name), "Portable Computing Language");
    snprintf(d.name, sizeof(d.name), "pthread-skylake-avx512-Intel(R) Xeon(R) Processor");
    snprintf(d.vendor, sizeof(d.vendor), "GenuineIntel");
    d.type = CL_DEVICE_TYPE_CPU;
    d.max_wg = 4096;
    d.local_mem = 2u << 20;
    d.host_unified = true;
    return d;
}

static ds4_device_desc dev_h200(void) {
    ds4_device_desc d;
    memset(&d, 0, sizeof(d));
    snprintf(d.platform_name, sizeof(d.platform_name), "NVIDIA CUDA");
    snprintf(d.name, sizeof(d.name), "NVIDIA H200");
    snprintf(d.vendor, sizeof(d.vendor), "NVIDIA Corporation");
    d.type = CL_DEVICE_TYPE_GPU;
    d.max_wg = 1024;
    d.local_mem = 48u << 10;
    d.nvidia = true;
    return d;
}

/* gfx1151 as ROCm's OpenCL reports it (hardware.md 3.1). */
static ds4_device_desc dev_gfx1151(void) {
    ds4_device_desc d;
    memset(&d, 0, sizeof(d));
    snprintf(d.platform_name, sizeof(d.platform_name), "AMD Accelerated Parallel Processing");
    snprintf(d.name, sizeof(d.name), "gfx1151");
    snprintf(d.vendor, sizeof(d.vendor), "Advanced Micro Devices, Inc.");
    d.type = CL_DEVICE_TYPE_GPU;
    d.max_wg = 256;
    d.local_mem = 64u << 10;
    d.compute_units = 20;
    d.host_unified = true;
    d.fp16 = d.subgroups = true;
    return d;
}

/* The same chip through Mesa rusticl: ISA in the name, no host-unified. */
static ds4_device_desc dev_rusticl(void) {
    ds4_device_desc d = dev_gfx1151();
    snprintf(d.platform_name, sizeof(d.platform_name), "rusticl");
    snprintf(d.name, sizeof(d.name), "AMD Radeon 8060S Graphics (radeonsi, gfx1151, ACO, DRM 3.61)");
    snprintf(d.vendor, sizeof(d.vendor), "AMD");
    d.max_wg = 1024;
    d.host_unified = false;
    d.fp16 = false;
    return d;
}

static ds4_device_desc dev_named(const char *vendor, const char *name, bool unified) {
    ds4_device_desc d;
    memset(&d, 0, sizeof(d));
    snprintf(d.platform_name, sizeof(d.platform_name), "some platform");
    snprintf(d.name, sizeof(d.name), "%s", name);
    snprintf(d.vendor, sizeof(d.vendor), "%s", vendor);
    d.type = CL_DEVICE_TYPE_GPU;
    d.max_wg = 512;
    d.local_mem = 64u << 10;
    d.host_unified = unified;
    return d;
}

/* Occurrences of needle in s. */
static int count_of(const char *s, const char *needle) {
    int n = 0;
    for (const char *p = s; (p = strstr(p, needle)) != NULL; p += strlen(needle)) n++;
    return n;
}

static bool one_line(const ds4_error *e) { return e->msg[0] && !strchr(e->msg, '\n'); }

/* ------------------------------------------------------------------ */

static int t_tuning_classes(void) {
    struct {
        const char *what;
        ds4_device_desc dev;
        ds4_tuning_class cls;
        int lanes, rows, tokens;
        const char *options;
    } cases[] = {
        {"pocl", dev_pocl(), DS4_TUNING_CPU, 1, 8, 4, ""},
        {"h200", dev_h200(), DS4_TUNING_NVIDIA, 8, 32, 8, "-DMV_Q8X=1 -DGT_WG=128"},
        {"gfx1151 rocm", dev_gfx1151(), DS4_TUNING_AMD_RDNA3, 8, 8, 8, "-DMV_TABLES_LOCAL=1 -DDS4_WAVE=32"},
        {"gfx1151 rusticl", dev_rusticl(), DS4_TUNING_AMD_RDNA3, 8, 8, 8, "-DMV_TABLES_LOCAL=1 -DDS4_WAVE=32"},
        {"rdna3 dgpu", dev_named("Advanced Micro Devices, Inc.", "gfx1100", false), DS4_TUNING_AMD_RDNA3, 8, 8, 8,
         "-DMV_TABLES_LOCAL=1 -DDS4_WAVE=32"},
        {"amd apu, marketing name", dev_named("Advanced Micro Devices, Inc.", "AMD Radeon Graphics", true),
         DS4_TUNING_AMD_RDNA3, 8, 8, 8, "-DMV_TABLES_LOCAL=1 -DDS4_WAVE=32"},
        {"vega apu", dev_named("Advanced Micro Devices, Inc.", "gfx90c", true), DS4_TUNING_GENERIC, 8, 4, 8, ""},
        {"amd dgpu, marketing name", dev_named("Advanced Micro Devices, Inc.", "AMD Radeon Pro", false),
         DS4_TUNING_GENERIC, 8, 4, 8, ""},
        {"intel", dev_named("Intel(R) Corporation", "Intel(R) Arc(TM) Graphics", true), DS4_TUNING_GENERIC, 8, 4, 8,
         ""},
    };
    /* PoCL on an AMD CPU is a CPU, whatever the vendor says. */
    ds4_device_desc zen = dev_pocl();
    snprintf(zen.vendor, sizeof(zen.vendor), "AuthenticAMD");
    snprintf(zen.name, sizeof(zen.name), "cpu-znver5-AMD RYZEN AI MAX+ 395 w/ Radeon 8060S");
    T_CHECK(ds4_tuning_classify(&zen) == DS4_TUNING_CPU, "AMD CPU classified as %s",
            ds4_tuning_class_name(ds4_tuning_classify(&zen)));

    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        ds4_error err = {{0}};
        ds4_tuning t;
        T_CHECK(ds4_tuning_resolve(&cases[i].dev, NULL, &t, &err) == 0, "%s: %s", cases[i].what, err.msg);
        T_CHECK(t.cls == cases[i].cls, "%s: class %s", cases[i].what, ds4_tuning_class_name(t.cls));
        T_CHECK(t.lanes == cases[i].lanes && t.rows == cases[i].rows && t.tokens == cases[i].tokens,
                "%s: shape %d x %d, %d", cases[i].what, t.lanes, t.rows, t.tokens);
        T_CHECK(strcmp(t.options, cases[i].options) == 0, "%s: options \"%s\"", cases[i].what, t.options);
        T_CHECK(t.note[0] == '\0', "%s: unexpected note \"%s\"", cases[i].what, t.note);
        /* An empty override is no override. */
        ds4_tuning e;
        T_CHECK(ds4_tuning_resolve(&cases[i].dev, "  ", &e, &err) == 0, "%s: %s", cases[i].what, err.msg);
        T_CHECK(e.cls == t.cls && e.lanes == t.lanes && e.rows == t.rows && e.tokens == t.tokens &&
                    strcmp(e.options, t.options) == 0 && strcmp(e.note, t.note) == 0,
                "%s: blank override changed the tuning", cases[i].what);
    }
    T_CHECK(strcmp(ds4_tuning_class_name(DS4_TUNING_AMD_RDNA3), "amd-rdna3") == 0, "class name");
    return 0;
}

static int t_tuning_override(void) {
    ds4_error err = {{0}};
    ds4_device_desc amd = dev_gfx1151();
    ds4_tuning t;
    T_CHECK(ds4_tuning_resolve(&amd, "-DMV_LANES=16 -DMV_ROWS=2\t-DMM_TOKENS=4 -DMV_W=16", &t, &err) == 0, "%s",
            err.msg);
    T_CHECK(t.cls == DS4_TUNING_AMD_RDNA3, "class %s", ds4_tuning_class_name(t.cls));
    T_CHECK(t.lanes == 16 && t.rows == 2 && t.tokens == 4, "shape %d x %d, %d", t.lanes, t.rows, t.tokens);
    T_CHECK(strcmp(t.options, "-DMV_TABLES_LOCAL=1 -DDS4_WAVE=32 -DMV_W=16") == 0, "options \"%s\"", t.options);
    T_CHECK(strstr(t.note, "DS4CL_TUNING") != NULL, "note \"%s\"", t.note);
    T_CHECK(count_of(t.options, "MV_LANES") == 0, "shape leaked into options \"%s\"", t.options);

    /* Last occurrence wins, as with the compiler and kernels.c. */
    ds4_device_desc cpu = dev_pocl();
    T_CHECK(ds4_tuning_resolve(&cpu, "-DMV_LANES=4 -DMV_ROWS=3 -DMV_LANES=32", &t, &err) == 0, "%s", err.msg);
    T_CHECK(t.lanes == 32 && t.rows == 3 && t.tokens == 4, "shape %d x %d, %d", t.lanes, t.rows, t.tokens);
    T_CHECK(strcmp(t.options, "") == 0, "options \"%s\"", t.options);
    /* Options only: the shape stays the table's. */
    T_CHECK(ds4_tuning_resolve(&cpu, "-DMV_VEC=4 -cl-mad-enable", &t, &err) == 0, "%s", err.msg);
    T_CHECK(t.lanes == 1 && t.rows == 8 && t.tokens == 4, "shape %d x %d, %d", t.lanes, t.rows, t.tokens);
    T_CHECK(strcmp(t.options, "-DMV_VEC=4 -cl-mad-enable") == 0, "options \"%s\"", t.options);

    /* Through the environment, as ds4_kernels_init will see it. */
    const char *old = getenv("DS4CL_TUNING");
    char saved[512] = {0};
    if (old) snprintf(saved, sizeof(saved), "%s", old);
    setenv("DS4CL_TUNING", "-DMV_ROWS=16", 1);
    ds4_device_desc nv = dev_h200();
    int rc = ds4_tuning_for_device(&nv, &t, &err);
    unsetenv("DS4CL_TUNING");
    ds4_tuning plain;
    int rc2 = ds4_tuning_for_device(&nv, &plain, &err);
    if (old) setenv("DS4CL_TUNING", saved, 1);
    T_CHECK(rc == 0 && rc2 == 0, "%s", err.msg);
    T_CHECK(t.lanes == 8 && t.rows == 16 && t.tokens == 8, "env shape %d x %d, %d", t.lanes, t.rows, t.tokens);
    T_CHECK(plain.lanes == 8 && plain.rows == 32 && plain.tokens == 8, "unset env shape %d x %d", plain.lanes,
            plain.rows);
    return 0;
}

static int t_tuning_override_errors(void) {
    ds4_device_desc amd = dev_gfx1151();
    const struct {
        const char *text, *needle;
    } bad[] = {
        {"-DMV_LANES=12", "power of two"},
        {"-DMV_ROWS=0", "-DMV_ROWS=0"},
        {"-DMV_ROWS=abc", "-DMV_ROWS=abc"},
        {"-DMM_TOKENS=8x", "-DMM_TOKENS=8x"},
        {"-DMM_TOKENS=", "needs a value"},
        {"-DMV_LANES", "needs a value"},
        {"-DMV_ROWS=99999", "1..1024"},
        {"-DMV_LANES=-4", "-DMV_LANES=-4"},
        {"MV_LANES=8", "not a build option"},
        {"-DMV_W=16 -", "not a build option"},
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        ds4_error err = {{0}};
        ds4_tuning t;
        T_CHECK(ds4_tuning_resolve(&amd, bad[i].text, &t, &err) != 0, "\"%s\" accepted", bad[i].text);
        T_CHECK(one_line(&err) && strstr(err.msg, "DS4CL_TUNING") && strstr(err.msg, bad[i].needle),
                "\"%s\": message \"%s\"", bad[i].text, err.msg);
    }
    /* Too long for the options buffer, and one token too long. */
    char big[2048];
    size_t n = 0;
    for (int i = 0; n + 32 < sizeof(big); i++) n += (size_t)snprintf(big + n, sizeof(big) - n, "-DX%d=1 ", i);
    ds4_error err = {{0}};
    ds4_tuning t;
    T_CHECK(ds4_tuning_resolve(&amd, big, &t, &err) != 0, "oversized override accepted");
    T_CHECK(one_line(&err) && strstr(err.msg, "longer than"), "message \"%s\"", err.msg);
    char tok[400];
    memset(tok, 'A', sizeof(tok) - 1);
    tok[0] = '-';
    tok[1] = 'D';
    tok[sizeof(tok) - 1] = '\0';
    T_CHECK(ds4_tuning_resolve(&amd, tok, &t, &err) != 0, "oversized token accepted");
    T_CHECK(one_line(&err) && strstr(err.msg, "longer than"), "message \"%s\"", err.msg);
    return 0;
}

static int t_tuning_clamp(void) {
    ds4_device_desc devs[] = {dev_pocl(), dev_h200(), dev_gfx1151(), dev_rusticl(),
                              dev_named("Intel(R) Corporation", "Arc", false)};
    const size_t limits[] = {1, 2, 16, 32, 48, 64, 100, 256, 1024, 4096};
    const char *overrides[] = {NULL, "-DMV_LANES=64 -DMV_ROWS=16", "-DMV_LANES=1024 -DMV_ROWS=1024",
                               "-DMV_ROWS=1000"};
    for (size_t d = 0; d < sizeof(devs) / sizeof(devs[0]); d++)
        for (size_t l = 0; l < sizeof(limits) / sizeof(limits[0]); l++)
            for (size_t o = 0; o < sizeof(overrides) / sizeof(overrides[0]); o++) {
                ds4_device_desc dev = devs[d];
                dev.max_wg = limits[l];
                ds4_error err = {{0}};
                ds4_tuning t;
                T_CHECK(ds4_tuning_resolve(&dev, overrides[o], &t, &err) == 0, "%s", err.msg);
                T_CHECK(t.lanes >= 1 && (t.lanes & (t.lanes - 1)) == 0, "lanes %d", t.lanes);
                T_CHECK(t.rows >= 1 && t.tokens >= 1, "rows %d tokens %d", t.rows, t.tokens);
                T_CHECK((size_t)t.lanes * (size_t)t.rows <= limits[l], "%s, limit %zu, override %s: %d x %d",
                        dev.name, limits[l], overrides[o] ? overrides[o] : "none", t.lanes, t.rows);
            }
    /* The documented order: rows shrink first, then lanes; with a note. */
    ds4_device_desc amd = dev_gfx1151();
    amd.max_wg = 32;
    ds4_error err = {{0}};
    ds4_tuning t;
    T_CHECK(ds4_tuning_resolve(&amd, NULL, &t, &err) == 0, "%s", err.msg);
    T_CHECK(t.lanes == 8 && t.rows == 4, "clamped to %d x %d", t.lanes, t.rows);
    T_CHECK(strstr(t.note, "work-group limit 32") && strstr(t.note, "8*8") && strstr(t.note, "8*4"), "note \"%s\"",
            t.note);
    amd.max_wg = 256;
    T_CHECK(ds4_tuning_resolve(&amd, "-DMV_LANES=64 -DMV_ROWS=16", &t, &err) == 0, "%s", err.msg);
    T_CHECK(t.lanes == 64 && t.rows == 4, "clamped to %d x %d", t.lanes, t.rows);
    T_CHECK(strstr(t.note, "DS4CL_TUNING") && strstr(t.note, "work-group limit 256"), "note \"%s\"", t.note);
    amd.max_wg = 48;
    T_CHECK(ds4_tuning_resolve(&amd, "-DMV_LANES=64", &t, &err) == 0, "%s", err.msg);
    T_CHECK(t.lanes == 32 && t.rows == 1, "clamped to %d x %d", t.lanes, t.rows);
    /* An unknown limit (0) clamps nothing. */
    amd.max_wg = 0;
    T_CHECK(ds4_tuning_resolve(&amd, "-DMV_LANES=64 -DMV_ROWS=64", &t, &err) == 0, "%s", err.msg);
    T_CHECK(t.lanes == 64 && t.rows == 64, "unknown limit clamped to %d x %d", t.lanes, t.rows);
    return 0;
}

static int t_tuning_merge(void) {
    ds4_error err = {{0}};
    char opts[512];
    /* No extra options: the shape, then the class options. */
    ds4_device_desc nv = dev_h200();
    ds4_tuning t;
    T_CHECK(ds4_tuning_resolve(&nv, NULL, &t, &err) == 0, "%s", err.msg);
    T_CHECK(ds4_tuning_merge(&t, NULL, opts, sizeof(opts), &err) == 0, "%s", err.msg);
    T_CHECK(strcmp(opts, "-DMV_LANES=8 -DMV_ROWS=32 -DMM_TOKENS=8 -DMV_Q8X=1 -DGT_WG=128") == 0, "opts \"%s\"", opts);

    /* The caller's options beat the class's and the override's. */
    ds4_device_desc amd = dev_gfx1151();
    T_CHECK(ds4_tuning_resolve(&amd, "-DMV_ROWS=2 -DMV_W=16", &t, &err) == 0, "%s", err.msg);
    T_CHECK(ds4_tuning_merge(&t, "-DMV_LANES=32 -DMV_TABLES_LOCAL=0 -DMV_W=8 -DMV_LANES=16", opts, sizeof(opts),
                             &err) == 0,
            "%s", err.msg);
    T_CHECK(t.lanes == 16 && t.rows == 2 && t.tokens == 8, "shape %d x %d, %d", t.lanes, t.rows, t.tokens);
    T_CHECK(strcmp(opts, "-DMV_LANES=16 -DMV_ROWS=2 -DMM_TOKENS=8 -DDS4_WAVE=32 -DMV_TABLES_LOCAL=0 -DMV_W=8") == 0,
            "opts \"%s\"", opts);
    const char *macros[] = {"MV_LANES=", "MV_ROWS=", "MM_TOKENS=", "MV_TABLES_LOCAL=", "MV_W=", "DS4_WAVE="};
    for (size_t i = 0; i < sizeof(macros) / sizeof(macros[0]); i++)
        T_CHECK(count_of(opts, macros[i]) == 1, "%s defined %d times in \"%s\"", macros[i], count_of(opts, macros[i]),
                opts);

    /* Errors: a bad shape from the caller, and no room. */
    T_CHECK(ds4_tuning_resolve(&amd, NULL, &t, &err) == 0, "%s", err.msg);
    T_CHECK(ds4_tuning_merge(&t, "-DMV_LANES=3", opts, sizeof(opts), &err) != 0, "MV_LANES=3 accepted");
    T_CHECK(one_line(&err) && strstr(err.msg, "power of two"), "message \"%s\"", err.msg);
    T_CHECK(ds4_tuning_merge(&t, NULL, opts, 20, &err) != 0, "20-byte buffer accepted");
    T_CHECK(one_line(&err) && strstr(err.msg, "longer than"), "message \"%s\"", err.msg);
    T_CHECK(ds4_tuning_merge(&t, NULL, opts, 45, &err) != 0, "45-byte buffer accepted");
    T_CHECK(one_line(&err) && strstr(err.msg, "longer than"), "message \"%s\"", err.msg);
    return 0;
}

void tests_register_tuning(void) {
    test_add("tuning_classes", t_tuning_classes);
    test_add("tuning_override", t_tuning_override);
    test_add("tuning_override_errors", t_tuning_override_errors);
    test_add("tuning_clamp", t_tuning_clamp);
    test_add("tuning_merge", t_tuning_merge);
}
