/* json.c - UTF-8, control-character and nesting checks in front of cJSON
 * (see json.h).
 *
 * The scan is one pass with a tiny state machine: outside strings it counts
 * '[' and '{' against ']' and '}', inside strings it skips escaped bytes and
 * rejects raw bytes below 0x20.  Every byte, inside or outside strings, is
 * decoded as UTF-8 and rejected at the first invalid sequence.  NUL is never
 * valid JSON and is refused everywhere (cJSON would stop at it and accept
 * whatever came before).  Grammar errors are left to cJSON.
 */
#include "json.h"

#include <string.h>

/* Length of the valid UTF-8 sequence at s[0..n) (n >= 1), or 0. */
static size_t utf8_seq(const unsigned char *s, size_t n) {
    unsigned char c = s[0];
    if (c < 0x80) return 1;
    size_t len;
    unsigned char lo = 0x80, hi = 0xBF; /* range of the second byte */
    if (c >= 0xC2 && c <= 0xDF) len = 2;
    else if (c == 0xE0) len = 3, lo = 0xA0;
    else if ((c >= 0xE1 && c <= 0xEC) || c == 0xEE || c == 0xEF) len = 3;
    else if (c == 0xED) len = 3, hi = 0x9F; /* no UTF-16 surrogates */
    else if (c == 0xF0) len = 4, lo = 0x90;
    else if (c >= 0xF1 && c <= 0xF3) len = 4;
    else if (c == 0xF4) len = 4, hi = 0x8F; /* nothing above U+10FFFF */
    else return 0;
    if (n < len) return 0;
    if (s[1] < lo || s[1] > hi) return 0;
    for (size_t i = 2; i < len; i++)
        if (s[i] < 0x80 || s[i] > 0xBF) return 0;
    return len;
}

bool ds4_utf8_valid(const char *s, size_t len) {
    const unsigned char *u = (const unsigned char *)s;
    size_t i = 0;
    while (i < len) {
        size_t k = utf8_seq(u + i, len - i);
        if (k == 0) return false;
        i += k;
    }
    return true;
}

int ds4_json_check(const char *s, size_t len, uint32_t max_depth, ds4_error *err) {
    const unsigned char *u = (const unsigned char *)s;
    uint32_t depth = 0;
    bool in_str = false, esc = false;
    size_t i = 0;
    while (i < len) {
        unsigned char c = u[i];
        if (c == 0) return ds4_fail(err, "NUL byte at offset %zu", i);
        if (c >= 0x80) {
            size_t k = utf8_seq(u + i, len - i);
            if (k == 0) return ds4_fail(err, "invalid UTF-8 at offset %zu", i);
            i += k;
            esc = false;
            continue;
        }
        if (in_str) {
            if (c < 0x20) return ds4_fail(err, "raw control character in a string at offset %zu", i);
            if (esc) esc = false;
            else if (c == '\\') esc = true;
            else if (c == '"') in_str = false;
        } else if (c == '"') {
            in_str = true;
        } else if (c == '[' || c == '{') {
            if (++depth > max_depth) return ds4_fail(err, "JSON nested deeper than %u levels", max_depth);
        } else if (c == ']' || c == '}') {
            if (depth > 0) depth--;
        }
        i++;
    }
    return 0;
}

static bool json_space(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r'; }

int ds4_json_parse(const char *s, size_t len, uint32_t max_depth, cJSON **out, ds4_error *err) {
    *out = NULL;
    size_t first = 0;
    while (first < len && json_space(s[first])) first++;
    if (first == len) return ds4_fail(err, "empty JSON body");
    if (ds4_json_check(s, len, max_depth, err) != 0) return -1;
    const char *end = NULL;
    cJSON *root = cJSON_ParseWithLengthOpts(s, len, &end, 0);
    if (!root) {
        size_t off = end && end >= s && end <= s + len ? (size_t)(end - s) : 0;
        return ds4_fail(err, "invalid JSON near offset %zu", off);
    }
    size_t at = (size_t)(end - s);
    while (at < len && json_space(s[at])) at++;
    if (at != len) {
        cJSON_Delete(root);
        return ds4_fail(err, "unexpected data after the JSON value at offset %zu", at);
    }
    *out = root;
    return 0;
}
