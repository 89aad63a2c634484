/* error.h - the one error type every ds4cl function reports through.
 *
 * A function that can fail takes a `ds4_error *` last, returns 0 on success
 * and -1 on failure, and on failure leaves a one-line, human readable message
 * in err->msg (no trailing newline).  Callers add context with ds4_fail_wrap
 * ("loading x: <inner message>") and print the message once at the top.
 * A NULL `ds4_error *` is allowed: the message is then dropped.
 */
#ifndef DS4_ERROR_H
#define DS4_ERROR_H

#include <stddef.h>

typedef struct ds4_error {
    char msg[1024];
} ds4_error;

#if defined(__GNUC__)
#define DS4_PRINTF(a, b) __attribute__((format(printf, a, b)))
#else
#define DS4_PRINTF(a, b)
#endif

/* Set err->msg from a printf format and return -1. */
int ds4_fail(ds4_error *err, const char *fmt, ...) DS4_PRINTF(2, 3);

/* Prefix the message already in err with a printf-formatted context and ": ".
 * Returns -1 so it can be used as `return ds4_fail_wrap(err, "x");`. */
int ds4_fail_wrap(ds4_error *err, const char *fmt, ...) DS4_PRINTF(2, 3);

#endif
