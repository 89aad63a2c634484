/* error.c - formatting for ds4_error (see error.h). */
#include "error.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

int ds4_fail(ds4_error *err, const char *fmt, ...) {
    if (!err) return -1;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err->msg, sizeof(err->msg), fmt, ap);
    va_end(ap);
    return -1;
}

int ds4_fail_wrap(ds4_error *err, const char *fmt, ...) {
    if (!err) return -1;
    char inner[sizeof(err->msg)];
    memcpy(inner, err->msg, sizeof(inner));
    inner[sizeof(inner) - 1] = '\0';
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(err->msg, sizeof(err->msg), fmt, ap);
    va_end(ap);
    if (n < 0) n = 0;
    /* Append ": inner", truncating at the buffer's end. */
    size_t used = (size_t)n < sizeof(err->msg) ? (size_t)n : sizeof(err->msg) - 1;
    const char *parts[2] = {": ", inner};
    for (int p = 0; p < 2; p++)
        for (const char *c = parts[p]; *c && used < sizeof(err->msg) - 1; c++) err->msg[used++] = *c;
    err->msg[used] = '\0';
    return -1;
}
