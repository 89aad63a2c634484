/* json.h - the server's guarded door to cJSON.
 *
 * Every JSON body the server reads goes through ds4_json_parse: the bytes
 * are first scanned once, without recursion, for what cJSON does not check
 * or checks too late: the text must be valid UTF-8 (RFC 3629: no overlong
 * forms, no UTF-16 surrogates, nothing above U+10FFFF), strings must not
 * hold raw control characters, and arrays/objects may nest at most
 * max_depth deep.  Only then does cJSON parse it (whole input, nothing
 * trailing), so a 10,000-deep '[' never reaches a recursive parser.
 */
#ifndef DS4_SERVER_JSON_H
#define DS4_SERVER_JSON_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <cjson/cJSON.h>

#include "error.h"

#define DS4_JSON_MAX_DEPTH 256

/* Scan len bytes: 0 when they are valid UTF-8 with at most max_depth
 * levels of nesting and no raw control character inside a string; else -1
 * and a message naming the byte offset.  Does not check JSON grammar. */
int ds4_json_check(const char *s, size_t len, uint32_t max_depth, ds4_error *err);

/* True when s[0..len) is valid UTF-8. */
bool ds4_utf8_valid(const char *s, size_t len);

/* ds4_json_check, then cJSON on exactly len bytes; *out is the root (free
 * with cJSON_Delete).  An empty body is an error. */
int ds4_json_parse(const char *s, size_t len, uint32_t max_depth, cJSON **out, ds4_error *err);

#endif
