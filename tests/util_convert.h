/* util_convert.h - file and shell helpers shared by the converter tests
 * (test_convert.c, test_convert_official.c).
 *
 * Scratch folders, running shell commands, reading and writing whole files,
 * hand-made safetensors files and the type check of a converted tensor.
 * Nothing here keeps state; every path is the caller's.
 */
#ifndef DS4_TESTS_UTIL_CONVERT_H
#define DS4_TESTS_UTIL_CONVERT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "../src/error.h"
#include "../src/gguf.h"

/* Scratch folder of one test: /tmp/<prefix>-<pid>-<tag>, created fresh. */
const char *tc_scratch(char *buf, size_t cap, const char *prefix, const char *tag);
void tc_scratch_rm(const char *dir);

/* system() on a formatted command; the exit status, or -1. */
int tc_sh(const char *fmt, ...) DS4_PRINTF(1, 2);

bool tc_exists(const char *path);

/* A whole file, NUL-terminated and malloc'd (len optional), or NULL. */
char *tc_slurp(const char *path, size_t *len);
bool tc_spit(const char *path, const void *data, size_t len);

/* The file contains needle (says what it holds when not). */
bool tc_file_has(const char *path, const char *needle);

/* The two files hold the same bytes (says so when not). */
bool tc_same_bytes(const char *a, const char *b);

/* One safetensors file: u64 header length, header text, data. */
bool tc_write_st(const char *path, const char *header, const void *data, size_t n);

/* T_CHECK-style: tensor name exists in g with the given type. */
int tc_expect_type(const gguf_file *g, const char *name, uint32_t type);

#endif
