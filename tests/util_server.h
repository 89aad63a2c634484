/* util_server.h - process helpers shared by the server tests
 * (test_server_http.c, test_server_sdk.c).
 *
 * Monotonic time and sleeps, bounded waits for a child, the tail of a log
 * file, and starting the sanitizer build of ds4cl-server next to the runner
 * with its stdout read for the "listening on http://...:PORT" line.  The
 * child is killed if the runner dies (PR_SET_PDEATHSIG) and inherits the
 * LSan suppressions of the OpenCL driver.  No state is kept here.
 */
#ifndef DS4_TESTS_UTIL_SERVER_H
#define DS4_TESTS_UTIL_SERVER_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

double ts_now_s(void);
void ts_sleep_ms(int ms);

/* Wait up to secs for pid; returns the exit code, 128+signal, or -1. */
int ts_wait_exit(pid_t pid, double secs);

/* Print the last tail bytes of the log at path to stderr. */
void ts_print_log(const char *path, long tail);

/* Set LSAN_OPTIONS (unless set) so children ignore the OpenCL driver's leaks. */
void ts_child_env(void);

/* Start ds4cl-server with args (space separated, no quoting), stderr to
 * logfd (closed here), and read its port from the "listening on" line.
 * Returns 0 with *pid and *port set; -1 on failure, with *pid the child
 * still to be stopped (after the caller shows its log) or 0 if none. */
int ts_spawn_server(const char *args, int logfd, pid_t *pid, uint16_t *port);

#endif
