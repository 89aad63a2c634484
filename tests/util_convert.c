/* util_convert.c - helpers shared by the converter tests; see
 * util_convert.h.  Moved here from test_convert.c and
 * test_convert_official.c so both use one copy.
 */
#include "util_convert.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "../src/quant.h"
#include "test.h"

const char *tc_scratch(char *buf, size_t cap, const char *prefix, const char *tag) {
    snprintf(buf, cap, "/tmp/%s-%d-%s", prefix, (int)getpid(), tag);
    char cmd[600];
    snprintf(cmd, sizeof(cmd), "rm -rf '%s' && mkdir -p '%s'", buf, buf);
    if (system(cmd) != 0) fprintf(stderr, "    cannot create %s\n", buf);
    return buf;
}

void tc_scratch_rm(const char *dir) {
    char cmd[600];
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
    if (system(cmd) != 0) fprintf(stderr, "    cannot remove %s\n", dir);
}

int tc_sh(const char *fmt, ...) {
    char cmd[4096];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(cmd, sizeof(cmd), fmt, ap);
    va_end(ap);
    int rc = system(cmd);
    return rc == -1 || !WIFEXITED(rc) ? -1 : WEXITSTATUS(rc);
}

bool tc_exists(const char *path) {
    struct stat st;
    return stat(path, &st) == 0;
}

char *tc_slurp(const char *path, size_t *len) {
    FILE *fp = fopen(path, "rb");
    if (!fp) return NULL;
    char *buf = NULL;
    long n = -1;
    if (fseek(fp, 0, SEEK_END) == 0) n = ftell(fp);
    if (n >= 0 && fseek(fp, 0, SEEK_SET) == 0 && (buf = malloc((size_t)n + 1)) &&
        fread(buf, 1, (size_t)n, fp) == (size_t)n) {
        buf[n] = '\0';
        if (len) *len = (size_t)n;
    } else {
        free(buf);
        buf = NULL;
    }
    fclose(fp);
    return buf;
}

bool tc_spit(const char *path, const void *data, size_t len) {
    FILE *fp = fopen(path, "wb");
    if (!fp) return false;
    bool ok = fwrite(data, 1, len, fp) == len;
    return fclose(fp) == 0 && ok;
}

bool tc_file_has(const char *path, const char *needle) {
    char *s = tc_slurp(path, NULL);
    bool ok = s && strstr(s, needle);
    if (!ok) fprintf(stderr, "    %s: expected \"%s\" in: %s\n", path, needle, s ? s : "(none)");
    free(s);
    return ok;
}

bool tc_same_bytes(const char *a, const char *b) {
    size_t la, lb;
    char *x = tc_slurp(a, &la), *y = tc_slurp(b, &lb);
    bool ok = x && y && la == lb && memcmp(x, y, la) == 0;
    if (!ok) fprintf(stderr, "    %s and %s differ\n", a, b);
    free(x);
    free(y);
    return ok;
}

bool tc_write_st(const char *path, const char *header, const void *data, size_t n) {
    size_t hl = strlen(header);
    uint8_t *buf = malloc(8 + hl + n + 1);
    if (!buf) return false;
    for (int i = 0; i < 8; i++) buf[i] = (uint8_t)((uint64_t)hl >> (8 * i));
    memcpy(buf + 8, header, hl);
    if (n) memcpy(buf + 8 + hl, data, n);
    bool ok = tc_spit(path, buf, 8 + hl + n);
    free(buf);
    return ok;
}

int tc_expect_type(const gguf_file *g, const char *name, uint32_t type) {
    const gguf_tensor *t = gguf_find_tensor(g, name);
    T_CHECK(t, "missing %s", name);
    T_CHECK(t->type == type, "%s: type %s, expected %s", name, ds4_type_name(t->type),
            ds4_type_name(type));
    return 0;
}
