/* test_cli.c - the ds4cl program as a user meets it: the demo model's --info,
 * --info on a model file, device listing, one-shot generation (-p, thinking
 * display on a pipe, --ignore-eos lengths, seed determinism, Think Max
 * gating), --dump-tokens, --dump-logprobs (JSON checked with cJSON against
 * --tokens' own argmax), the demo-model fallback note, and bad command lines
 * and bad files (usage or one clear line, a non-zero exit, never a crash).
 * Runs the binary that sits next to the test runner (the sanitizer build
 * under make test), with stdin from /dev/null so no run waits on a REPL. */
#include <cjson/cJSON.h>
#include <stdbool.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "../src/testmodel.h"
#include "test.h"

typedef struct {
    int status;     /* exit code, or 128+signal */
    char out[65536]; /* stdout and stderr together */
} run_result;

/* Run a shell command line, collecting its stdout. */
static int run_shell(run_result *r, const char *cmd) {
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

/* Run `ds4cl args`; stdout and stderr together, or stdout alone. */
static int run_cli_in(run_result *r, const char *args, bool with_stderr) {
    char cmd[8800];
    snprintf(cmd, sizeof(cmd), "%s/ds4cl %s </dev/null %s", test_bin_dir(), args,
             with_stderr ? "2>&1" : "2>/dev/null");
    return run_shell(r, cmd);
}

static int run_cli(run_result *r, const char *args) { return run_cli_in(r, args, true); }

static int count_of_str(const char *hay, const char *needle) {
    int n = 0;
    for (const char *p = strstr(hay, needle); p; p = strstr(p + strlen(needle), needle)) n++;
    return n;
}

static int count_lines(const char *s) {
    int n = 0;
    for (; *s; s++) n += *s == '\n';
    return n;
}

static int t_demo_info(void) {
    static run_result r;
    T_CHECK(run_cli(&r, "--demo --info") == 0, "popen");
    T_CHECK(r.status == 0, "exit %d:\n%s", r.status, r.out);
    T_CHECK(strstr(r.out, "deepseek4") != NULL, "no architecture in:\n%s", r.out);
    T_CHECK(strstr(r.out, "weight memory plan") != NULL, "no plan in:\n%s", r.out);
    T_CHECK(strstr(r.out, "IQ2_XXS") != NULL && strstr(r.out, "Q2_K") != NULL && strstr(r.out, "Q8_0") != NULL,
            "no per-type bytes in:\n%s", r.out);
    return 0;
}

static int t_demo_load(void) {
    static run_result r;
    /* No prompt and stdin at EOF: the REPL starts and ends at once. */
    T_CHECK(run_cli(&r, "--demo --weights copy --max-alloc 1 -v") == 0, "popen");
    T_CHECK(r.status == 0, "exit %d:\n%s", r.status, r.out);
    T_CHECK(strstr(r.out, "copied to device memory") != NULL && strstr(r.out, "buffer 1:") != NULL,
            "output:\n%s", r.out);
    T_CHECK(strstr(r.out, "model loaded on") != NULL, "output:\n%s", r.out);
    T_CHECK(run_cli(&r, "--demo --weights map -v") == 0, "popen");
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
                                 "--max-alloc -5", "--max-alloc lots", "--demo -m x.gguf", "stray",
                                 "--temp -1", "--temp hot", "--temp 101", "--top-p 0", "--top-p 1.5",
                                 "--min-p 2", "--top-k -1", "--top-k x", "--seed -3", "--seed abc", "-n 0",
                                 "-n", "--ctx 0", "-c lots", "-p", "--prompt-file", "-p a --prompt-file b",
                                 "--dump-tokens", "--dump-logprobs x.json", "--logprobs-top-k 500",
                                 "--logprobs-top-k 0", "--tokens 1,2 -p hi"};
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

/* -p on a pipe: the reasoning between its tags, exactly -n tokens with
 * --ignore-eos, the same text for the same seed, greedy reproducible. */
static int t_oneshot(void) {
    static run_result a, b, c;
    T_CHECK(run_cli(&a, "--demo -p 'Hello there' -n 12 --ignore-eos --seed 5 -v") == 0, "popen");
    T_CHECK(a.status == 0, "exit %d:\n%s", a.status, a.out);
    T_CHECK(strstr(a.out, "decode 12 tokens") != NULL, "output:\n%s", a.out);
    T_CHECK(run_cli_in(&a, "--demo -p 'Hello there' -n 12 --ignore-eos --seed 5", false) == 0, "popen");
    T_CHECK(run_cli_in(&b, "--demo -p 'Hello there' -n 12 --ignore-eos --seed 5", false) == 0, "popen");
    T_CHECK(run_cli_in(&c, "--demo -p 'Hello there' -n 12 --ignore-eos --seed 6", false) == 0, "popen");
    T_CHECK(a.status == 0 && b.status == 0 && c.status == 0, "exits %d %d %d", a.status, b.status, c.status);
    T_CHECK(strncmp(a.out, "<think>\n", 8) == 0, "thinking output does not open with <think>:\n%s", a.out);
    T_CHECK(strcmp(a.out, b.out) == 0, "same seed, different text:\n%s\n---\n%s", a.out, b.out);
    T_CHECK(strcmp(a.out, c.out) != 0, "different seeds, same text:\n%s", a.out);
    T_CHECK(run_cli_in(&a, "--demo -p 'Hello there' -n 12 --ignore-eos --temp 0 --nothink --seed 1", false) == 0,
            "popen");
    T_CHECK(run_cli_in(&b, "--demo -p 'Hello there' -n 12 --ignore-eos --temp 0 --nothink --seed 2", false) == 0,
            "popen");
    T_CHECK(a.status == 0 && strcmp(a.out, b.out) == 0, "greedy depends on the seed:\n%s\n---\n%s", a.out, b.out);
    T_CHECK(strstr(a.out, "<think>") == NULL && strlen(a.out) > 1, "--nothink output:\n%s", a.out);
    return 0;
}

static int t_think_max_gate(void) {
    static run_result r;
    T_CHECK(run_cli(&r, "--demo -p hi -n 1 --think-max") == 0, "popen");
    T_CHECK(r.status == 0 && strstr(r.out, "warning: --think-max needs a context of at least 393216"),
            "exit %d:\n%s", r.status, r.out);
    T_CHECK(run_cli(&r, "--demo -p hi -n 1 --think-max --ctx 393216") == 0, "popen");
    T_CHECK(r.status == 0 && !strstr(r.out, "warning"), "exit %d:\n%s", r.status, r.out);
    return 0;
}

static int t_dump_tokens(void) {
    static run_result r;
    /* Special strings are recognised: BOS is id 0 and <think> id 4 in the
     * demo model's vocabulary. */
    T_CHECK(run_cli_in(&r, "--demo --dump-tokens -p '<｜begin▁of▁sentence｜>hi there<think>'", false) == 0, "popen");
    T_CHECK(r.status == 0, "exit %d:\n%s", r.status, r.out);
    T_CHECK(strncmp(r.out, "[0, ", 4) == 0 && strstr(r.out, ", 4]\n") != NULL, "ids:\n%s", r.out);
    T_CHECK(strstr(r.out, "     4  <think>\n") != NULL, "per-token lines:\n%s", r.out);
    return 0;
}

/* --dump-logprobs: valid JSON, k sorted alternatives per step, the
 * selected token the most probable one, and the first choice equal to the
 * argmax --tokens reports after the same ids (a pre-rendered prompt,
 * tokenized by --dump-tokens). */
#define RENDERED "<｜begin▁of▁sentence｜>You are a helpful assistant<｜User｜>What is 2+2?<｜Assistant｜></think>"

static int first_choice(const char *json, int *sel0, int *n_prompt) {
    cJSON *root = cJSON_Parse(json);
    if (!root) return -1;
    int rc = -1;
    const cJSON *steps = cJSON_GetObjectItemCaseSensitive(root, "steps");
    const cJSON *k = cJSON_GetObjectItemCaseSensitive(root, "top_k");
    const cJSON *pt = cJSON_GetObjectItemCaseSensitive(root, "prompt_tokens");
    if (!cJSON_IsArray(steps) || !cJSON_IsNumber(k) || k->valueint != 5 || !cJSON_IsNumber(pt)) goto out;
    *n_prompt = pt->valueint;
    int n_steps = cJSON_GetArraySize(steps);
    if (n_steps < 1 || n_steps > 4) goto out;
    for (int s = 0; s < n_steps; s++) {
        const cJSON *st = cJSON_GetArrayItem(steps, s);
        const cJSON *sel = cJSON_GetObjectItemCaseSensitive(st, "selected");
        const cJSON *top = cJSON_GetObjectItemCaseSensitive(st, "top_logprobs");
        if (!cJSON_IsArray(top) || cJSON_GetArraySize(top) != 5) goto out;
        double prev = 1.0, mass = 0.0;
        for (int i = 0; i < 5; i++) {
            const cJSON *lp = cJSON_GetObjectItemCaseSensitive(cJSON_GetArrayItem(top, i), "logprob");
            if (!cJSON_IsNumber(lp) || !(lp->valuedouble <= 0.0 && lp->valuedouble <= prev + 1e-9)) goto out;
            prev = lp->valuedouble;
            mass += exp(lp->valuedouble);
        }
        if (mass > 1.0 + 1e-6) goto out;
        const cJSON *tok0 = cJSON_GetObjectItemCaseSensitive(cJSON_GetArrayItem(top, 0), "token");
        const cJSON *sel_id = cJSON_GetObjectItemCaseSensitive(sel, "id");
        const cJSON *top_id = cJSON_GetObjectItemCaseSensitive(tok0, "id");
        if (!cJSON_IsNumber(sel_id) || !cJSON_IsNumber(top_id) || sel_id->valueint != top_id->valueint) goto out;
        if (!cJSON_IsArray(cJSON_GetObjectItemCaseSensitive(sel, "bytes"))) goto out;
        if (s == 0) *sel0 = sel_id->valueint;
    }
    rc = 0;
out:
    cJSON_Delete(root);
    return rc;
}

static int t_dump_logprobs(void) {
    static run_result r;
    char path[] = "/tmp/ds4cl-test-logprobs-XXXXXX";
    int fd = mkstemp(path);
    T_CHECK(fd >= 0, "mkstemp");
    close(fd);
    char args[4200];
    snprintf(args, sizeof(args), "--demo -p '" RENDERED "' -n 4 --dump-logprobs %s --logprobs-top-k 5", path);
    T_CHECK(run_cli(&r, args) == 0, "popen");
    FILE *fp = fopen(path, "rb");
    static char json[1 << 16];
    size_t n = fp ? fread(json, 1, sizeof(json) - 1, fp) : 0;
    json[n] = '\0';
    if (fp) fclose(fp);
    unlink(path);
    T_CHECK(r.status == 0, "exit %d:\n%s", r.status, r.out);
    int sel0 = -1, n_prompt = 0;
    T_CHECK(first_choice(json, &sel0, &n_prompt) == 0, "unexpected JSON:\n%s", json);
    /* The same ids through --tokens. */
    T_CHECK(run_cli_in(&r, "--demo --dump-tokens -p '" RENDERED "'", false) == 0 && r.status == 0, "dump-tokens");
    char *end = strchr(r.out, ']');
    T_CHECK(r.out[0] == '[' && end, "ids:\n%s", r.out);
    *end = '\0';
    char ids[4096] = "";
    int count = 0;
    for (char *t = strtok(r.out + 1, ", "); t; t = strtok(NULL, ", ")) {
        strncat(ids, count ? "," : "", sizeof(ids) - strlen(ids) - 1);
        strncat(ids, t, sizeof(ids) - strlen(ids) - 1);
        count++;
    }
    T_CHECK(count == n_prompt, "--dump-tokens gave %d ids, --dump-logprobs %d", count, n_prompt);
    snprintf(args, sizeof(args), "--demo --tokens %s", ids);
    T_CHECK(run_cli(&r, args) == 0 && r.status == 0, "--tokens exit %d:\n%s", r.status, r.out);
    const char *am = strstr(r.out, "next-token argmax ");
    T_CHECK(am && atoi(am + 18) == sel0, "--tokens argmax vs first logprobs choice %d:\n%s", sel0, r.out);
    return 0;
}

static int t_errors_and_fallback(void) {
    static run_result r;
    T_CHECK(run_cli(&r, "--demo --prompt-file /nonexistent/prompt.txt") == 0, "popen");
    T_CHECK(r.status == 1 && count_lines(r.out) == 1 && strstr(r.out, "/nonexistent/prompt.txt"), "exit %d:\n%s",
            r.status, r.out);
    T_CHECK(run_cli(&r, "--demo -p 'a prompt longer than the context' --ctx 8") == 0, "popen");
    T_CHECK(r.status == 1 && count_lines(r.out) == 1 && strstr(r.out, "context"), "exit %d:\n%s", r.status, r.out);
    /* No model anywhere: the embedded demo model, with a one-line note. */
    char dir[] = "/tmp/ds4cl-test-nomodel-XXXXXX", cmd[4096];
    T_CHECK(mkdtemp(dir) != NULL, "mkdtemp");
    snprintf(cmd, sizeof(cmd), "cd %s && env -u DS4CL_MODEL %s/ds4cl -p hi -n 2 </dev/null 2>&1", dir,
             test_bin_dir());
    int rc = run_shell(&r, cmd);
    rmdir(dir);
    T_CHECK(rc == 0, "popen");
    T_CHECK(r.status == 0, "exit %d:\n%s", r.status, r.out);
    T_CHECK(count_of_str(r.out, "using the embedded demo model") == 1, "no note (or two):\n%s", r.out);
    return 0;
}

void tests_register_cli(void) {
    test_add("cli/demo_info", t_demo_info);
    test_add("cli/demo_load", t_demo_load);
    test_add("cli/model_file_info", t_model_file_info);
    test_add("cli/list_devices", t_list_devices);
    test_add("cli/bad_command_lines", t_bad_command_lines);
    test_add("cli/bad_files", t_bad_files);
    test_add("cli/oneshot", t_oneshot);
    test_add("cli/think_max_gate", t_think_max_gate);
    test_add("cli/dump_tokens", t_dump_tokens);
    test_add("cli/dump_logprobs", t_dump_logprobs);
    test_add("cli/errors_and_fallback", t_errors_and_fallback);
}
