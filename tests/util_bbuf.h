/* util_bbuf.h - a tiny byte builder the GGUF tests use to hand-make file
 * bytes (little-endian fields, GGUF strings).  Writes past the fixed buffer
 * are dropped and remembered in `overflow`, so a test can check it. */
#ifndef DS4_TEST_UTIL_BBUF_H
#define DS4_TEST_UTIL_BBUF_H

#include <stdint.h>
#include <string.h>

typedef struct bbuf {
    uint8_t p[2048];
    uint64_t n;
    int overflow;
} bbuf;

static inline void bb_put(bbuf *b, const void *src, uint64_t n) {
    if (n > sizeof(b->p) - b->n) {
        b->overflow = 1;
        return;
    }
    memcpy(b->p + b->n, src, (size_t)n);
    b->n += n;
}
static inline void bb_u8(bbuf *b, uint8_t v) { bb_put(b, &v, 1); }
static inline void bb_u16(bbuf *b, uint16_t v) { bb_put(b, &v, 2); }
static inline void bb_u32(bbuf *b, uint32_t v) { bb_put(b, &v, 4); }
static inline void bb_u64(bbuf *b, uint64_t v) { bb_put(b, &v, 8); }
static inline void bb_str(bbuf *b, const char *s) {
    bb_u64(b, strlen(s));
    bb_put(b, s, strlen(s));
}

#endif
