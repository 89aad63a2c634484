/* gen.c - the generation job behind the four POST endpoints.
 *
 * Flow of one request:
 *
 *   connection thread: ds4_proto_parse (400 in the protocol's shape on a
 *     bad field), then queue a job on the worker (FIFO).
 *   worker thread, in the job:
 *     1. exact DSML replay of earlier tool calls (tool-id map), render the
 *        messages (ds4_gen_request_render), tokenize by segment;
 *     2. too long for the context: 400 context_length_exceeded with the
 *        token counts, nothing touched;
 *     3. ds4_prefix_prepare + ds4_prefix_prefill: reuse the live session
 *        or a disk file, prefill the rest; the progress callback stops on
 *        a client that left and writes an SSE comment per step of a
 *        streamed request (keep-alive during long prefills);
 *     4. decode: sample each token (the request's sampling for payload
 *        text, greedy inside DSML structure, as the tracker says), detok
 *        it, feed the tracker, which emits the protocol events; stop on
 *        EOS, the tracker's done (stop string, closed tool block),
 *        max_tokens or the context; each kept token is evaluated through
 *        ds4_live_eval so the live session always equals its text;
 *     5. FINISH with usage (prompt, cached, completion), remember the tool
 *        ids, answer (JSON body, or the stream's last events).
 *
 * Invariants: only the worker thread touches g->live, g->map and the
 * sampler scratch; g's other fields are read-only after ds4_gen_new.  The
 * token that ended the generation (EOS, the last one at the limit) is not
 * evaluated: the next request's rendering matches the live text up to it
 * (prefix.h's live-text rule) and prefills the small rest.
 */
#include "gen.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>

#include "prefix.h"
#include "proto.h"
#include "sampler.h"
#include "tokenizer.h"

/* One POST route's context (lives in its ds4_gen). */
typedef struct gen_route {
    ds4_srv *srv;
    ds4_gen *g;
    enum ds4_proto proto;
} gen_route;

struct ds4_gen {
    ds4_srv *srv;
    ds4_tokenizer *tok;
    ds4_kvcache *cache;      /* NULL: no disk cache */
    ds4_live live;
    bool live_ok;
    ds4_toolmap *map;
    uint32_t n_vocab;
    int32_t eos;
    uint64_t seq;            /* response ids */
    ds4_kv_tool *tools_buf;  /* tools_for scratch */
    size_t n_tools_buf, cap_tools_buf;
    gen_route routes[4];     /* contexts of the four POST routes */
};

/* ---- tool ids persisted with disk checkpoints --------------------------- */

static int collect_tool(void *ud, const char *id, const char *dsml, size_t len) {
    ds4_gen *g = ud;
    if (g->n_tools_buf == g->cap_tools_buf) {
        size_t cap = g->cap_tools_buf ? g->cap_tools_buf * 2 : 16;
        ds4_kv_tool *p = realloc(g->tools_buf, cap * sizeof(*p));
        if (!p) return 1;
        g->tools_buf = p;
        g->cap_tools_buf = cap;
    }
    g->tools_buf[g->n_tools_buf++] = (ds4_kv_tool){id, strlen(id), dsml, len};
    return 0;
}

static size_t tools_for(void *ud, const char *text, size_t len, const ds4_kv_tool **out) {
    (void)text;
    (void)len;
    ds4_gen *g = ud;
    g->n_tools_buf = 0;
    ds4_toolmap_each(g->map, collect_tool, g); /* a short list on OOM is fine */
    *out = g->tools_buf;
    return g->n_tools_buf;
}

static void tools_loaded(void *ud, const ds4_kv_tool *tools, size_t n) {
    ds4_gen *g = ud;
    for (size_t i = 0; i < n; i++) {
        char id[256];
        if (tools[i].id_len >= sizeof(id)) continue;
        memcpy(id, tools[i].id, tools[i].id_len);
        id[tools[i].id_len] = '\0';
        ds4_error err = {{0}};
        if (ds4_toolmap_put(g->map, id, tools[i].dsml, tools[i].dsml_len, &err) != 0)
            ds4_log("gen: tool map: %s", err.msg);
    }
}

/* ---- setup -------------------------------------------------------------- */

int ds4_gen_new(ds4_gen **out, ds4_srv *s, const ds4_kvcache_opts *kv_opts, ds4_error *err) {
    *out = NULL;
    ds4_gen *g = calloc(1, sizeof(*g));
    if (!g) return ds4_fail(err, "out of memory");
    g->srv = s;
    const ds4_model *m = ds4_engine_model(s->engine);
    g->n_vocab = m->hp.n_vocab;
    if (ds4_tokenizer_load(&g->tok, m->file, err) != 0) {
        ds4_fail_wrap(err, "tokenizer");
        goto fail;
    }
    g->eos = ds4_tokenizer_special(g->tok, DS4_TOK_EOS);
    if (ds4_toolmap_new(&g->map, DS4_TOOLMAP_MAX_IDS, DS4_TOOLMAP_MAX_BYTES, err) != 0) goto fail;
    if (kv_opts && kv_opts->dir) {
        ds4_kvcache_opts ko = *kv_opts;
        ko.model_fp = ds4_kvcache_model_fingerprint(m);
        ko.quant_bits = ds4_kvcache_quant_bits(m);
        if (ds4_kvcache_open(&g->cache, &ko, err) != 0) {
            ds4_fail_wrap(err, "--kv-disk-dir %s", kv_opts->dir);
            goto fail;
        }
    }
    if (ds4_live_init(&g->live, s->session, g->tok, g->cache, err) != 0) goto fail;
    g->live_ok = true;
    g->live.tools_for = tools_for;
    g->live.tools_loaded = tools_loaded;
    g->live.tools_ud = g;
    *out = g;
    return 0;
fail:
    ds4_gen_free(g);
    return -1;
}

void ds4_gen_shutdown(ds4_gen *g) {
    if (!g || !g->cache || !g->live_ok) return;
    ds4_error err = {{0}};
    int rc = ds4_live_checkpoint(&g->live, DS4_KV_SHUTDOWN, &err);
    if (rc < 0) ds4_log("gen: shutdown checkpoint: %s", err.msg);
    else if (rc > 0) ds4_log("gen: stored the live session (%u tokens) as a shutdown checkpoint", g->live.tokens.n);
}

void ds4_gen_free(ds4_gen *g) {
    if (!g) return;
    if (g->live_ok) ds4_live_free(&g->live);
    ds4_kvcache_close(g->cache);
    ds4_toolmap_free(g->map);
    ds4_tokenizer_free(g->tok);
    free(g->tools_buf);
    free(g);
}

/* ---- the job ------------------------------------------------------------ */

typedef struct gen_job {
    ds4_gen *g;
    ds4_gen_request req;
} gen_job;

static void job_free(void *p) {
    gen_job *j = p;
    ds4_gen_request_free(&j->req);
    free(j);
}

static int sse_write(void *ctx, const char *event, const char *data, size_t len) {
    return ds4_http_sse_event(ctx, event, data, len);
}

static int prefill_cb(void *ud, uint32_t done, uint32_t total) {
    ds4_http_req *r = ud;
    if (ds4_http_req_cancelled(r)) return 1;
    if (ds4_http_replied(r) && done < total) {
        char msg[64];
        snprintf(msg, sizeof(msg), "prefill %u/%u", done, total);
        ds4_http_sse_comment(r, msg);
    }
    return 0;
}

static void reply_json_free(ds4_http_req *r, int status, cJSON *j) {
    if (j) ds4_http_reply_json(r, status, j);
    else ds4_http_error(r, 500, NULL, "out of memory");
    cJSON_Delete(j);
}

/* Emit ERROR (after BEGIN or first) and answer a non-streamed request. */
static void fail_out(ds4_proto_out *o, ds4_http_req *r, bool stream, int status, const char *code, const char *msg) {
    ds4_gen_event ev = {.type = DS4_EV_ERROR, .status = status, .code = code, .message = msg};
    ds4_error e2 = {{0}};
    if (ds4_proto_out_event(o, &ev, &e2) != 0 && !stream) {
        ds4_http_error(r, status, code, "%s", msg);
        return;
    }
    if (stream) return;
    int st = status;
    cJSON *body = NULL;
    if (ds4_proto_out_reply(o, &st, &body, &e2) != 0) ds4_http_error(r, status, code, "%s", msg);
    else reply_json_free(r, st, body);
}

/* The decode loop; returns how it ended, sets *n_out.  -1 on an engine
 * failure (err), -2 when the client left. */
static int decode(ds4_gen *g, ds4_http_req *r, ds4_gen_tracker *tr, ds4_sampler *smp, uint32_t limit,
                  uint32_t *n_out, enum ds4_gen_end *end, ds4_error *err) {
    ds4_detok dt;
    memset(&dt, 0, sizeof(dt));
    char buf[1024];
    *n_out = 0;
    for (;;) {
        if (ds4_http_req_cancelled(r)) return -2;
        const float *logits = ds4_session_logits(g->live.s);
        if (!logits) return ds4_fail(err, "no logits after the prefill");
        int32_t id;
        int rc = ds4_gen_tracker_payload(tr) ? ds4_sampler_sample(smp, logits, g->n_vocab, &id, err)
                                             : ds4_argmax(logits, g->n_vocab, &id, err);
        if (rc != 0) return -1;
        (*n_out)++;
        if (id == g->eos) {
            *end = DS4_END_EOS;
            return 0;
        }
        size_t n = ds4_detok_push(g->tok, &dt, id, buf, sizeof(buf));
        if (n && ds4_gen_tracker_feed(tr, buf, n, err) != 0) return ds4_http_req_cancelled(r) ? -2 : -1;
        if (ds4_gen_tracker_done(tr)) {
            *end = DS4_END_DONE;
            return 0;
        }
        if (*n_out >= limit) {
            n = ds4_detok_flush(&dt, buf, sizeof(buf));
            if (n && ds4_gen_tracker_feed(tr, buf, n, err) != 0) return ds4_http_req_cancelled(r) ? -2 : -1;
            *end = ds4_gen_tracker_done(tr) ? DS4_END_DONE : DS4_END_LENGTH;
            return 0;
        }
        size_t blen = 0;
        bool in_block = ds4_gen_tracker_n_calls(tr) > 0 && !ds4_gen_tracker_block(tr, &blen);
        if (ds4_live_eval(&g->live, &id, 1, in_block, err) != 0) return -1;
    }
}

static void gen_run(ds4_worker_env *env, ds4_http_req *r, void *p) {
    (void)env;
    gen_job *j = p;
    ds4_gen *g = j->g;
    ds4_gen_request *req = &j->req;
    const uint32_t n_ctx = g->srv->n_ctx;
    ds4_error err = {{0}};
    ds4_chat_prompt prompt = {0};
    ds4_tokens toks = {0};
    ds4_reuse reuse;
    memset(&reuse, 0, sizeof(reuse));
    ds4_proto_out *out = NULL;
    ds4_gen_tracker *tr = NULL;
    ds4_sampler smp;
    memset(&smp, 0, sizeof(smp));
    bool smp_ok = false;

    ds4_replay_stats rs = {0};
    if (ds4_gen_request_replay(req, g->map, &rs, &err) != 0) {
        ds4_http_error(r, 500, NULL, "replay: %s", err.msg);
        goto done;
    }
    if (ds4_gen_request_render(req, n_ctx, &prompt, &err) != 0) {
        reply_json_free(r, 400, ds4_proto_error_json(req->proto, 400, NULL, NULL, "messages", err.msg));
        goto done;
    }
    if (ds4_chat_tokenize(g->tok, &prompt, &toks, &err) != 0) {
        ds4_http_error(r, 500, NULL, "tokenize: %s", err.msg);
        goto done;
    }
    if (toks.n + 1 > n_ctx) {
        ds4_log("gen: prompt of %u tokens does not fit the %u-token context", toks.n, n_ctx);
        reply_json_free(r, 400, ds4_proto_overflow_json(req->proto, toks.n, n_ctx));
        goto done;
    }
    if (req->orphan_tool_results) {
        /* Only the live state could hold the missing calls: it must be a
         * prefix of what we rendered, else the client must send it all. */
        if (g->live.text_len == 0 || g->live.text_len > prompt.len || memcmp(g->live.text, prompt.text, g->live.text_len)) {
            reply_json_free(r, 409, ds4_proto_error_json(req->proto, 409, NULL, NULL, NULL,
                                                         "tool results refer to calls this server does not hold; "
                                                         "send the full conversation"));
            goto done;
        }
    }

    ds4_sampler_params sp = req->sampling;
    if (!req->seed_set) {
        if (getrandom(&sp.seed, sizeof(sp.seed), 0) != (ssize_t)sizeof(sp.seed)) sp.seed = (uint64_t)time(NULL);
    }
    if (ds4_sampler_init(&smp, &sp, g->n_vocab, &err) != 0) {
        reply_json_free(r, 400, ds4_proto_error_json(req->proto, 400, NULL, NULL, NULL, err.msg));
        goto done;
    }
    smp_ok = true;

    ds4_proto_out_opts oo = {.seq = ++g->seq, .created = (int64_t)time(NULL),
                             .write = req->stream ? sse_write : NULL, .write_ctx = r};
    if (ds4_proto_out_new(&out, req, &oo, &err) != 0) {
        ds4_http_error(r, 500, NULL, "%s", err.msg);
        goto done;
    }
    if (req->stream && ds4_http_sse_begin(r) != 0) goto done; /* client gone */

    if (ds4_prefix_prepare(&g->live, &prompt, toks.ids, toks.n, &reuse, &err) != 0) {
        fail_out(out, r, req->stream, 500, "server_error", err.msg);
        goto done;
    }
    int pr = ds4_prefix_prefill(&g->live, &reuse, prefill_cb, r, &err);
    if (pr != 0) {
        if (pr < 0) fail_out(out, r, req->stream, 500, "server_error", err.msg);
        goto done;
    }
    ds4_gen_usage usage = {.prompt_tokens = reuse.feed.n, .cached_tokens = reuse.n_cached};
    ds4_gen_event bev = {.type = DS4_EV_BEGIN, .usage = usage};
    if (ds4_proto_out_event(out, &bev, &err) != 0) goto done;

    ds4_tracker_opts to = ds4_gen_request_tracker_opts(req, n_ctx, g->map);
    if (ds4_gen_tracker_new(&tr, &to, ds4_proto_out_sink, out, &err) != 0) {
        fail_out(out, r, req->stream, 500, "server_error", err.msg);
        goto done;
    }
    uint32_t room = n_ctx - reuse.feed.n;
    uint32_t limit = req->max_tokens && req->max_tokens < room ? req->max_tokens : room;
    uint32_t n_gen = 0;
    enum ds4_gen_end end = DS4_END_LENGTH;
    int dr = decode(g, r, tr, &smp, limit, &n_gen, &end, &err);
    ds4_log("gen: %s%s prompt %u cached %u (%s) prefilled %u completion %u%s", ds4_proto_out_id(out),
            req->stream ? " stream" : "", reuse.feed.n, reuse.n_cached, ds4_reuse_source_name(reuse.source),
            reuse.n_prefilled, n_gen, dr == -2 ? " (client left)" : dr < 0 ? " (failed)" : "");
    if (dr == -2) goto done;
    if (dr < 0) {
        fail_out(out, r, req->stream, 500, "server_error", err.msg);
        goto done;
    }
    usage.completion_tokens = n_gen;
    if (ds4_gen_tracker_finish(tr, end, &usage, &err) != 0) goto done;
    if (ds4_gen_tracker_remember(tr, g->map, &err) != 0) ds4_log("gen: tool map: %s", err.msg);
    if (!req->stream) {
        int st = 200;
        cJSON *body = NULL;
        if (ds4_proto_out_reply(out, &st, &body, &err) != 0) ds4_http_error(r, 500, NULL, "%s", err.msg);
        else reply_json_free(r, st, body);
    }

done:
    ds4_gen_tracker_free(tr);
    ds4_proto_out_free(out);
    if (smp_ok) ds4_sampler_free(&smp);
    ds4_reuse_free(&reuse);
    ds4_tokens_free(&toks);
    ds4_chat_prompt_free(&prompt);
}

/* ---- routes ------------------------------------------------------------- */

static void on_post(ds4_http_req *r, void *ctx) {
    const gen_route *rt = ctx;
    gen_job *j = calloc(1, sizeof(*j));
    if (!j) {
        ds4_http_error(r, 500, NULL, "out of memory");
        return;
    }
    j->g = rt->g;
    ds4_error err = {{0}};
    if (ds4_proto_parse(rt->proto, ds4_http_req_json(r), &j->req, &err) != 0) {
        reply_json_free(r, 400,
                        ds4_proto_error_json(rt->proto, 400, NULL, NULL, j->req.err_param[0] ? j->req.err_param : NULL,
                                             err.msg));
        job_free(j);
        return;
    }
    ds4_worker_submit(rt->srv->worker, r, gen_run, j, job_free);
}

int ds4_srv_routes_gen(ds4_srv *s, ds4_gen *g, ds4_error *err) {
    static const struct {
        const char *path;
        enum ds4_proto proto;
        unsigned flags;
    } tab[] = {
        {"/v1/chat/completions", DS4_PROTO_CHAT, DS4_ROUTE_JSON},
        {"/v1/completions", DS4_PROTO_COMPLETIONS, DS4_ROUTE_JSON},
        {"/v1/responses", DS4_PROTO_RESPONSES, DS4_ROUTE_JSON},
        {"/v1/messages", DS4_PROTO_ANTHROPIC, DS4_ROUTE_JSON | DS4_ROUTE_ANTHROPIC},
    };
    for (size_t i = 0; i < sizeof(tab) / sizeof(tab[0]); i++) {
        gen_route *rt = &g->routes[i];
        *rt = (gen_route){s, g, tab[i].proto};
        if (ds4_http_route(s->http, "POST", tab[i].path, tab[i].flags, on_post, rt, err) != 0) return -1;
    }
    return 0;
}
