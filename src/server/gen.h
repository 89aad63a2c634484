/* gen.h - the generation job of ds4cl-server: the four POST endpoints.
 *
 * A connection thread parses the body (proto.h) and queues one job on the
 * worker; the job renders and tokenizes the prompt, reuses what it can of
 * the live session or the disk KV cache (prefix.h), prefills the rest,
 * decodes token by token through the DSML tracker and answers in the
 * request's protocol (one JSON body, or an SSE stream).  All the state the
 * job needs lives in one ds4_gen, owned by the worker thread once the
 * server is started (the connection threads only read its immutable
 * fields).
 */
#ifndef DS4_SERVER_GEN_H
#define DS4_SERVER_GEN_H

#include <stdint.h>

#include "error.h"
#include "kvcache.h"
#include "server.h"

typedef struct ds4_gen ds4_gen;

/* Tokenizer, live session (on s->session) and tool-id map; with
 * kv_opts->dir set also the disk KV cache.  s->engine and s->session must
 * be loaded; kv_opts may be NULL. */
int ds4_gen_new(ds4_gen **out, ds4_srv *s, const ds4_kvcache_opts *kv_opts, ds4_error *err);
/* Store the live session as a `shutdown` checkpoint (no-op without a
 * cache).  Call after the worker drained, from the main thread. */
void ds4_gen_shutdown(ds4_gen *g);
void ds4_gen_free(ds4_gen *g);

/* POST /v1/chat/completions, /v1/completions, /v1/responses and
 * /v1/messages (Anthropic error shapes). */
int ds4_srv_routes_gen(ds4_srv *s, ds4_gen *g, ds4_error *err);

#endif
