/* test_cli.c - the ds4cl program as a user meets it: the demo model's --info,
 * --info on a model file, device listing, and bad command lines and bad files
 * (usage or one clear line, a non-zero exit, never a crash).  Runs the binary
 * that sits next to the test runner (the sanitizer build under make test). */
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "../src/testmodel.h"
#include "test.h"

typedef struct {
    int status;     /* exit code, or 128+signal */
    char out[65536]; /* stdout and stderr together */
} run_result;

static int run_cli(run_result *r, const char *args) {
    char cmd[4096];
    snprintf(cmd, sizeof(cmd), "%s/ds4cl %s 2>&1", test_bin_dir(), args);
    FILE *p = popen(cmd, "r");
    if (!p) return -1;
    size_t n = fread(r->out, 1, sizeof(r->out) - 1, p);
    r->out[n] = '\0';
    /* Drain anything past the buffer so the child never blocks. */
    char sink[4096];
    while (fread(sink, 1, sizeof(sink), p) > 0) {}
    int st = pclose(p);
    if (st == -1) return -1;
    r->status = WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
    return 0;
}

static int count_lines(const char *s) {
    int n = 0;
    for (; *s; s++) n += *s == '\n';
    return n;
}

static int t_demo_info(void) {
    static run_result r;
    T_CHECK(run_cli(&r, "--info") == 0, "popen");
    T_CHECK(r.status == 0, "exit %d:\n%s", r.status, r.out);
    T_CHECK(strstr(r.out, "deepseek4") != NULL, "no architecture in:\n%s", r.out);
    T_CHECK(strstr(r.out, "weight memory plan") != NULL, "no plan in:\n%s", r.out);
    T_CHECK(strstr(r.out, "IQ2_XXS") != NULL && strstr(r.out, "Q2_K") != NULL && strstr(r.out, "Q8_0") != NULL,
            "no per-type bytes in:\n%s", r.out);
    return 0;
}

static int t_demo_load(void) {
    static run_result r;
    T_CHECK(run_cli(&r, "--demo --weights copy --max-alloc 1") == 0, "popen");
    T_CHECK(r.status == 0, "exit %d:\n%s", r.status, r.out);
    T_CHECK(strstr(r.out, "weights placed") != NULL, "output:\n%s", r.out);
    T_CHECK(run_cli(&r, "--demo --weights map") == 0, "popen");
    T_CHECK(r.status == 0, "exit %d:\n%s", r.status, r.out);
    T_CHECK(strstr(r.out, "zero-copy") != NULL, "output:\n%s", r.out);
    return 0;
}

static int t_model_file_info(void) {
    char path[] = "/tmp/ds4cl-test-cli-XXXXXX";
    int fd = mkstemp(path);
    T_CHECK(fd >= 0, "mkstemp");
    close(fd);
    ds4_testmodel_opts o;
    ds4_testmodel_default_opts(&o);
    o.exp_gate_up_type = o.exp_down_type = 12; /* Q4_K, the q4 layout */
    ds4_error err = {{0}};
    T_CHECK(ds4_testmodel_write(&o, path, &err) == 0, "%s", err.msg);
    static run_result r;
    char args[256];
    snprintf(args, sizeof(args), "-m %s --info", path);
    int rc = run_cli(&r, args);
    unlink(path);
    T_CHECK(rc == 0, "popen");
    T_CHECK(r.status == 0, "exit %d:\n%s", r.status, r.out);
    T_CHECK(strstr(r.out, "Q4_K") != NULL, "no Q4_K in:\n%s", r.out);
    T_CHECK(strstr(r.out, path) != NULL, "model path not shown:\n%s", r.out);
    return 0;
}

static int t_list_devices(void) {
    static run_result r;
    T_CHECK(run_cli(&r, "--list-devices") == 0, "popen");
    T_CHECK(r.status == 0, "exit %d:\n%s", r.status, r.out);
    T_CHECK(strstr(r.out, "[0]") != NULL, "no device 0 in:\n%s", r.out);
    T_CHECK(strstr(r.out, "largest allocation") != NULL, "output:\n%s", r.out);
    return 0;
}

static int t_bad_command_lines(void) {
    static run_result r;
    const char *usage_cases[] = {"--no-such-flag", "-m", "--device", "--weights sideways",
                                 "--max-alloc -5", "--max-alloc lots", "--demo -m x.gguf", "stray"};
    for (size_t i = 0; i < sizeof(usage_cases) / sizeof(usage_cases[0]); i++) {
        T_CHECK(run_cli(&r, usage_cases[i]) == 0, "popen");
        T_CHECK(r.status == 2, "'%s' exited %d:\n%s", usage_cases[i], r.status, r.out);
        T_CHECK(strstr(r.out, "ds4cl:") != NULL, "'%s' gave no message:\n%s", usage_cases[i], r.out);
    }
    T_CHECK(run_cli(&r, "--help") == 0 && r.status == 0 && strstr(r.out, "usage:"), "--help: %s", r.out);
    return 0;
}

static int t_bad_files(void) {
    static run_result r;
    char dir[] = "/tmp/ds4cl-test-badf-XXXXXX";
    T_CHECK(mkdtemp(dir) != NULL, "mkdtemp");
    char path[256], args[400];
    const struct {
        const char *name;
        const char *bytes;
        size_t len;
    } cases[] = {
        {"empty.gguf", "", 0},
        {"text.gguf", "hello, this is not a model\n", 27},
        {"magic-only.gguf", "GGUF", 4},
        {"v2.gguf", "GGUF\x02\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0", 24},
        {"huge-counts.gguf", "GGUF\x03\0\0\0\xff\xff\xff\xff\xff\xff\xff\x7f\xff\xff\xff\xff\xff\xff\xff\x7f", 24},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        snprintf(path, sizeof(path), "%s/%s", dir, cases[i].name);
        FILE *fp = fopen(path, "wb");
        T_CHECK(fp != NULL, "create %s", path);
        if (cases[i].len) fwrite(cases[i].bytes, 1, cases[i].len, fp);
        fclose(fp);
        snprintf(args, sizeof(args), "-m %s --info", path);
        T_CHECK(run_cli(&r, args) == 0, "popen");
        T_CHECK(r.status == 1, "%s exited %d:\n%s", cases[i].name, r.status, r.out);
        T_CHECK(count_lines(r.out) == 1 && strncmp(r.out, "ds4cl: ", 7) == 0, "%s: not one error line:\n%s",
                cases[i].name, r.out);
        unlink(path);
    }
    /* A directory and a missing file. */
    snprintf(args, sizeof(args), "-m %s --info", dir);
    T_CHECK(run_cli(&r, args) == 0 && r.status == 1 && count_lines(r.out) == 1, "directory: %d %s", r.status,
            r.out);
    rmdir(dir);
    T_CHECK(run_cli(&r, "-m /nonexistent/model.gguf --info") == 0, "popen");
    T_CHECK(r.status == 1 && strstr(r.out, "/nonexistent/model.gguf") && count_lines(r.out) == 1,
            "missing file: %d %s", r.status, r.out);
    return 0;
}

void tests_register_cli(void) {
    test_add("cli/demo_info", t_demo_info);
    test_add("cli/demo_load", t_demo_load);
    test_add("cli/model_file_info", t_model_file_info);
    test_add("cli/list_devices", t_list_devices);
    test_add("cli/bad_command_lines", t_bad_command_lines);
    test_add("cli/bad_files", t_bad_files);
}
