/* proto.h - the API protocols of ds4cl-server, as pure translation.
 *
 * Nothing here touches a socket, the model or a clock.  Four wire protocols
 * (OpenAI chat completions, OpenAI legacy completions, OpenAI Responses,
 * Anthropic Messages) are translated both ways:
 *
 *   request  JSON body (cJSON)  --ds4_proto_parse-->  ds4_gen_request
 *            one protocol-independent request: chat messages in chat.h's
 *            types, tool schemas, thinking mode, sampling, limits, stops.
 *
 *   response ds4_gen_event stream  --ds4_proto_out-->  SSE events in the
 *            protocol's native shapes (through a write callback) and/or the
 *            final non-streamed JSON body.
 *
 * Between them sits ds4_gen_tracker (proto_track.c): fed the generated text
 * piece by piece, it splits reasoning / visible content / DSML tool calls
 * and emits the events, streaming tool-call arguments as they are sampled,
 * holding back any tail that may still become a marker, a stop string or
 * the rest of a UTF-8 character.  It also says whether the next token is
 * DSML structure (sample greedily) or payload (the request's sampling).
 *
 * Exact replay.  Each tool call gets a random id; ds4_toolmap remembers
 * id -> the exact sampled DSML block (from the end of the visible content
 * to the closing </｜DSML｜tool_calls>).  ds4_gen_request_replay puts that
 * text back into an assistant message of a later request (chat.h's
 * ds4_chat_msg.tool_block) when every call id of the message maps to the
 * same block and the block still decodes to the calls the client sent, so
 * the rendered prompt equals the live KV text byte for byte.
 *
 * How the worker drives one request:
 *
 *   ds4_gen_request req;
 *   if (ds4_proto_parse(proto, body, &req, &err))      -> 400, ds4_proto_error_json
 *   ds4_gen_request_replay(&req, map, &stats, &err);   (optional)
 *   ds4_gen_request_render(&req, n_ctx, &prompt, &err) -> ds4_chat_tokenize
 *   prompt too long                                    -> ds4_proto_overflow_json
 *   ds4_proto_out_new(&out, &req, &{seq, created, write: sse or NULL})
 *   ... prefill ...;  event BEGIN {usage.prompt_tokens, cached_tokens}
 *   ds4_gen_tracker_new(&tr, &{thinking, tools, stops, id prefix, map},
 *                       ds4_proto_out_sink, out)
 *   per token: ds4_gen_tracker_feed(tr, piece); sample greedily unless
 *              ds4_gen_tracker_payload(tr); stop when ds4_gen_tracker_done(tr)
 *   ds4_gen_tracker_finish(tr, DS4_END_EOS | LENGTH | DONE, &usage)
 *   ds4_gen_tracker_remember(tr, map)
 *   not streamed: ds4_proto_out_reply(out, &status, &json) -> HTTP reply
 *
 * Ownership: a ds4_gen_request owns all of its strings (an arena freed by
 * ds4_gen_request_free); a ds4_proto_out keeps a pointer to its request,
 * which must outlive it.  No function keeps global state; random ids come
 * from getrandom(2).
 */
#ifndef DS4_SERVER_PROTO_H
#define DS4_SERVER_PROTO_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <cjson/cJSON.h>

#include "chat.h"
#include "error.h"
#include "sampler.h"

enum ds4_proto {
    DS4_PROTO_CHAT,         /* POST /v1/chat/completions */
    DS4_PROTO_COMPLETIONS,  /* POST /v1/completions */
    DS4_PROTO_RESPONSES,    /* POST /v1/responses */
    DS4_PROTO_ANTHROPIC     /* POST /v1/messages */
};

/* The model id the server reports and uses when a request names none. */
#define DS4_MODEL_ID "deepseek-v4-flash"
/* Top-k is capped here (ds4's limit). */
#define DS4_TOP_K_MAX 1024u
/* Stop strings per request, and their length. */
#define DS4_MAX_STOPS 16u
#define DS4_MAX_STOP_LEN 256u

/* ------------------------------------------------------------------ */
/* Requests                                                            */
/* ------------------------------------------------------------------ */

typedef struct ds4_arena ds4_arena;

typedef struct ds4_gen_request {
    enum ds4_proto proto;
    const char *model;            /* as sent, echoed back; DS4_MODEL_ID if absent */

    /* The conversation (chat.h).  System and developer text is merged into
     * one leading system message joined by blank lines (ds4's rule).
     * Completions: system "You are a helpful assistant" + one user turn. */
    ds4_chat_msg *msgs;
    size_t n_msgs;
    /* Function schemas {"name","description","parameters"} as JSON text;
     * empty when tool_choice is "none". */
    const char **tools;
    size_t n_tools;
    /* Responses "custom" (freeform) tools: their names.  They are offered
     * to the model as functions with one string parameter "input"; calls
     * come back as custom_tool_call items. */
    const char **custom_tools;
    size_t n_custom_tools;

    /* Thinking as asked: DS4_THINK_MAX falls back to HIGH on a small
     * context (ds4_gen_request_think). */
    enum ds4_think_mode think;
    /* Effective sampling: in thinking mode the client's values are replaced
     * by ds4's defaults (only the seed is kept), as DeepSeek's API does. */
    ds4_sampler_params sampling;
    bool seed_set;                /* else the worker picks a seed */
    uint32_t max_tokens;          /* 0: not given (the server's limit) */
    const char **stop;            /* non-empty strings, matched in the visible content */
    size_t n_stop;

    bool stream;
    bool include_usage;           /* chat/completions: stream_options.include_usage */
    bool reasoning_summary;       /* responses: reasoning.summary auto|concise|detailed */
    /* A tool result refers to a call id that no earlier message of the
     * request holds: the client continues a conversation the server keeps
     * (Responses function_call_output items alone, an Anthropic
     * tool_result without its tool_use).  Such a request can only be
     * served from the live state (else 409, replay the full history). */
    bool orphan_tool_results;
    const char *id_prefix;        /* tool-call ids: "call_" or "toolu_" */

    char err_param[128];          /* on a parse failure: the field at fault */
    ds4_arena *arena;
} ds4_gen_request;

/* Parse a request body of the given protocol into req (reset first; free
 * with ds4_gen_request_free, also after a failure).  On failure err->msg
 * names the field ("messages[2].content: ...") and req->err_param holds
 * it; the answer is HTTP 400 in the protocol's error shape. */
int ds4_proto_parse(enum ds4_proto proto, const cJSON *body, ds4_gen_request *req, ds4_error *err);
void ds4_gen_request_free(ds4_gen_request *req);

/* The per-protocol parsers ds4_proto_parse dispatches to. */
int ds4_openai_parse_chat(const cJSON *body, ds4_gen_request *req, ds4_error *err);
int ds4_openai_parse_completion(const cJSON *body, ds4_gen_request *req, ds4_error *err);
int ds4_responses_parse(const cJSON *body, ds4_gen_request *req, ds4_error *err);
int ds4_anthropic_parse(const cJSON *body, ds4_gen_request *req, ds4_error *err);

/* The thinking mode to render with on a context of n_ctx tokens. */
enum ds4_think_mode ds4_gen_request_think(const ds4_gen_request *req, uint32_t n_ctx);
/* The chat.h view of the request (pointers into req). */
ds4_chat ds4_gen_request_chat(const ds4_gen_request *req, uint32_t n_ctx);
/* ds4_chat_render of that view. */
int ds4_gen_request_render(const ds4_gen_request *req, uint32_t n_ctx, ds4_chat_prompt *out, ds4_error *err);

/* ------------------------------------------------------------------ */
/* Tool-call ids and exact DSML replay                                 */
/* ------------------------------------------------------------------ */

/* n_hex random lowercase hex digits + NUL into out (getrandom(2)). */
int ds4_random_hex(char *out, size_t n_hex, ds4_error *err);

/* id -> exact sampled DSML block, least recently used evicted first when
 * either limit is passed.  Not thread safe: the worker owns it. */
typedef struct ds4_toolmap ds4_toolmap;

/* ds4's limits: 100k ids, 512 MiB. */
#define DS4_TOOLMAP_MAX_IDS 100000u
#define DS4_TOOLMAP_MAX_BYTES (512ull << 20)

int ds4_toolmap_new(ds4_toolmap **out, size_t max_ids, size_t max_bytes, ds4_error *err);
void ds4_toolmap_free(ds4_toolmap *m);
/* Insert or replace (copies both). */
int ds4_toolmap_put(ds4_toolmap *m, const char *id, const char *dsml, size_t len, ds4_error *err);
/* The block for id (marks it recently used), or NULL. */
const char *ds4_toolmap_get(ds4_toolmap *m, const char *id, size_t *len);
bool ds4_toolmap_has(const ds4_toolmap *m, const char *id);
size_t ds4_toolmap_count(const ds4_toolmap *m);
size_t ds4_toolmap_bytes(const ds4_toolmap *m);
/* Visit every entry, most recently used first; a non-zero return stops
 * the walk and is returned (for the disk cache's tool-id trailer). */
typedef int (*ds4_toolmap_visit_fn)(void *ctx, const char *id, const char *dsml, size_t len);
int ds4_toolmap_each(const ds4_toolmap *m, ds4_toolmap_visit_fn fn, void *ctx);
/* A fresh id: prefix + 32 hex digits, never one already in m (m may be
 * NULL).  cap must hold strlen(prefix) + 33 bytes. */
int ds4_tool_id_new(const ds4_toolmap *m, const char *prefix, char *out, size_t cap, ds4_error *err);

typedef struct ds4_replay_stats {
    uint32_t messages;  /* assistant messages with tool calls */
    uint32_t exact;     /* of them replayed from the map */
    uint32_t missing;   /* rendered canonically: an id unknown */
    uint32_t changed;   /* rendered canonically: the block no longer matches the calls */
} ds4_replay_stats;

/* For each assistant message with tool calls: when all its call ids map to
 * one block that decodes to the same names and arguments (as JSON values),
 * set the message's tool_block to it.  stats may be NULL. */
int ds4_gen_request_replay(ds4_gen_request *req, ds4_toolmap *map, ds4_replay_stats *stats, ds4_error *err);

/* ------------------------------------------------------------------ */
/* Generation events                                                   */
/* ------------------------------------------------------------------ */

enum ds4_gen_ev_type {
    DS4_EV_BEGIN,          /* prefill done: usage.prompt_tokens / cached_tokens known */
    DS4_EV_REASONING,      /* text: reasoning delta */
    DS4_EV_REASONING_END,  /* </think> seen (optional: other events close it too) */
    DS4_EV_CONTENT,        /* text: visible answer delta */
    DS4_EV_TOOL_START,     /* index, id, name */
    DS4_EV_TOOL_ARGS,      /* index, text: delta of the arguments JSON */
    DS4_EV_TOOL_END,       /* index: the arguments JSON is complete */
    DS4_EV_FINISH,         /* finish, stop_sequence, usage (last event) */
    DS4_EV_ERROR           /* status, code, message (last event; may come first) */
};

enum ds4_finish {
    DS4_FINISH_STOP,       /* EOS or a stop string */
    DS4_FINISH_LENGTH,     /* max_tokens or the context ran out */
    DS4_FINISH_TOOL_CALLS  /* a closed DSML block with at least one call */
};

typedef struct ds4_gen_usage {
    uint32_t prompt_tokens;     /* the whole prompt */
    uint32_t cached_tokens;     /* of it reused (live session or disk cache) */
    uint32_t completion_tokens;
    uint32_t reasoning_tokens;  /* of the completion, when known (else 0) */
} ds4_gen_usage;

typedef struct ds4_gen_event {
    enum ds4_gen_ev_type type;
    const char *text;           /* REASONING, CONTENT, TOOL_ARGS (valid UTF-8) */
    size_t len;
    uint32_t index;             /* TOOL_*: the call's position, from 0 */
    const char *id, *name;      /* TOOL_START */
    enum ds4_finish finish;     /* FINISH */
    const char *stop_sequence;  /* FINISH: the stop string hit, or NULL */
    ds4_gen_usage usage;        /* BEGIN (prompt part), FINISH (all) */
    int status;                 /* ERROR: HTTP status (500, 400, ...) */
    const char *code;           /* ERROR: e.g. "server_error", "context_length_exceeded" */
    const char *message;        /* ERROR */
    uint32_t n_prompt_tokens, n_ctx; /* ERROR: context overflow details (0: none) */
} ds4_gen_event;

/* Where streamed SSE events go: one call per event, "event" may be NULL
 * (the data-only events of the OpenAI chat/completions streams), data is
 * one line of JSON or "[DONE]".  Bind it to ds4_http_sse_event.  A non-zero
 * return (client gone) fails the event. */
typedef int (*ds4_sse_write_fn)(void *ctx, const char *event, const char *data, size_t len);

/* The sink type of the tracker. */
typedef int (*ds4_gen_event_fn)(void *ctx, const ds4_gen_event *ev, ds4_error *err);

/* ------------------------------------------------------------------ */
/* Protocol output                                                     */
/* ------------------------------------------------------------------ */

typedef struct ds4_proto_out_opts {
    uint64_t seq;              /* per-process counter: chatcmpl-<seq>, cmpl-<seq> */
    int64_t created;           /* unix seconds for created / created_at */
    ds4_sse_write_fn write;    /* NULL: not streamed, only ds4_proto_out_reply */
    void *write_ctx;
} ds4_proto_out_opts;

typedef struct ds4_proto_out ds4_proto_out;

int ds4_proto_out_new(ds4_proto_out **out, const ds4_gen_request *req, const ds4_proto_out_opts *o, ds4_error *err);
void ds4_proto_out_free(ds4_proto_out *o);
/* Feed one event: it is accumulated for the final body and, when
 * streaming, written as the protocol's SSE events.  Order: BEGIN first,
 * FINISH or ERROR last (ERROR may also come first, e.g. a failed prefill);
 * anything else fails. */
int ds4_proto_out_event(ds4_proto_out *o, const ds4_gen_event *ev, ds4_error *err);
/* ds4_proto_out_event with a void context (a ds4_gen_event_fn). */
int ds4_proto_out_sink(void *o, const ds4_gen_event *ev, ds4_error *err);
/* After FINISH or ERROR: the non-streamed answer (HTTP status and body,
 * a new cJSON the caller deletes).  Fails before the last event. */
int ds4_proto_out_reply(ds4_proto_out *o, int *status, cJSON **body, ds4_error *err);
/* The response id (chatcmpl-N, cmpl-N, resp_..., msg_...). */
const char *ds4_proto_out_id(const ds4_proto_out *o);

/* An error body in the protocol's shape:
 *   OpenAI/Responses {"error":{"message","type","param","code"}}
 *   Anthropic {"type":"error","error":{"type","message"}}
 * type NULL picks one from the status (invalid_request_error,
 * authentication_error, not_found_error, api_error / server_error ...). */
cJSON *ds4_proto_error_json(enum ds4_proto proto, int status, const char *type, const char *code, const char *param,
                            const char *msg);
/* The 400 for a prompt of n_prompt tokens on an n_ctx context, with
 * code context_length_exceeded, n_prompt_tokens and n_ctx. */
cJSON *ds4_proto_overflow_json(enum ds4_proto proto, uint32_t n_prompt, uint32_t n_ctx);

/* ------------------------------------------------------------------ */
/* Generation tracker                                                  */
/* ------------------------------------------------------------------ */

typedef struct ds4_gen_tracker ds4_gen_tracker;

typedef struct ds4_tracker_opts {
    bool thinking;             /* the prompt ended with <think>: reasoning first */
    bool tools;                /* parse DSML tool-call blocks (else all is content) */
    const char *const *stop;   /* stop strings, matched in the content */
    size_t n_stop;
    const char *id_prefix;     /* "call_" (default) or "toolu_" */
    const ds4_toolmap *ids;    /* new ids avoid these (may be NULL) */
} ds4_tracker_opts;

/* How generation ended. */
enum ds4_gen_end {
    DS4_END_DONE,    /* the tracker said done (tool block closed, stop string, EOS text) */
    DS4_END_EOS,     /* the model sampled EOS (its text need not be fed) */
    DS4_END_LENGTH   /* max_tokens or the context */
};

/* Options that fit a request: thinking, tools, stops and id prefix. */
ds4_tracker_opts ds4_gen_request_tracker_opts(const ds4_gen_request *req, uint32_t n_ctx,
                                              const ds4_toolmap *ids);

int ds4_gen_tracker_new(ds4_gen_tracker **out, const ds4_tracker_opts *o, ds4_gen_event_fn sink, void *ctx,
                        ds4_error *err);
void ds4_gen_tracker_free(ds4_gen_tracker *t);
/* Append generated text (any split, even inside a UTF-8 character); emits
 * the events it makes certain.  A sink failure is returned. */
int ds4_gen_tracker_feed(ds4_gen_tracker *t, const char *text, size_t len, ds4_error *err);
/* Flush what is held and emit FINISH (or ERROR for a tool block that
 * cannot be executed: malformed or unterminated after calls started). */
int ds4_gen_tracker_finish(ds4_gen_tracker *t, enum ds4_gen_end end, const ds4_gen_usage *usage, ds4_error *err);
/* Generation should stop: the tool block closed, a stop string matched,
 * the EOS text was fed, or a started tool block turned out malformed. */
bool ds4_gen_tracker_done(const ds4_gen_tracker *t);
/* The next token is free text (reasoning, content, a string parameter,
 * a JSON string inside a non-string parameter): sample it with the
 * request's settings.  False inside DSML structure: sample greedily. */
bool ds4_gen_tracker_payload(const ds4_gen_tracker *t);
/* Everything fed so far. */
const char *ds4_gen_tracker_text(const ds4_gen_tracker *t, size_t *len);
/* After a closed block: its exact text (from the end of the content to the
 * end of </｜DSML｜tool_calls>), else NULL. */
const char *ds4_gen_tracker_block(const ds4_gen_tracker *t, size_t *len);
/* Calls started so far and their ids. */
size_t ds4_gen_tracker_n_calls(const ds4_gen_tracker *t);
const char *ds4_gen_tracker_call_id(const ds4_gen_tracker *t, size_t i);
/* Store every call id -> the block in map (after a closed block; a no-op
 * otherwise). */
int ds4_gen_tracker_remember(const ds4_gen_tracker *t, ds4_toolmap *map, ds4_error *err);
/* Why a tool block was not executable ("" if it was). */
const char *ds4_gen_tracker_problem(const ds4_gen_tracker *t);

/* ------------------------------------------------------------------ */
/* Internals shared by proto*.c (not for other callers)                 */
/* ------------------------------------------------------------------ */

typedef struct ds4p_buf {
    char *p;
    size_t len, cap;
} ds4p_buf;

int ds4p_buf_add(ds4p_buf *b, const char *s, size_t n, ds4_error *err);
int ds4p_buf_str(ds4p_buf *b, const char *s, ds4_error *err);
void ds4p_buf_free(ds4p_buf *b);
/* Append s[0..n) with invalid UTF-8 replaced by U+FFFD. */
int ds4p_buf_utf8(ds4p_buf *b, const char *s, size_t n, ds4_error *err);
/* Append s[0..n) as the body of a JSON string (no quotes), escaped as
 * Python's json.dumps(ensure_ascii=False) does. */
int ds4p_buf_json_esc(ds4p_buf *b, const char *s, size_t n, ds4_error *err);

void *ds4p_alloc(ds4_gen_request *req, size_t size, ds4_error *err);
char *ds4p_strndup(ds4_gen_request *req, const char *s, size_t n, ds4_error *err);
char *ds4p_strdup(ds4_gen_request *req, const char *s, ds4_error *err);
/* Set req->err_param and fail with "param: message". */
int ds4p_fail(ds4_gen_request *req, ds4_error *err, const char *param, const char *fmt, ...) DS4_PRINTF(4, 5);

/* Builder state while a request is parsed. */
typedef struct ds4p_build {
    ds4_gen_request *req;
    ds4_error *err;
    ds4p_buf system;      /* merged system text */
    bool has_system;
    ds4_chat_msg *msgs;
    size_t n_msgs, cap_msgs;
    const char **tools;
    size_t n_tools, cap_tools;
    const char **custom;
    size_t n_custom, cap_custom;
    /* thinking controls, resolved by ds4p_finish */
    int think_explicit;   /* -1 disabled, 0 not said, 1 enabled */
    int effort;           /* -1 none, 0 not said, 1 high, 2 max */
    int model_think;      /* model alias: -1 deepseek-chat, 1 deepseek-reasoner, 0 other */
    bool tool_choice_none;
} ds4p_build;

void ds4p_build_init(ds4p_build *b, ds4_gen_request *req, enum ds4_proto proto, ds4_error *err);
void ds4p_build_free(ds4p_build *b);
int ds4p_add_system(ds4p_build *b, const char *text, size_t len);
int ds4p_push_msg(ds4p_build *b, const ds4_chat_msg *m);
int ds4p_push_tool(ds4p_build *b, const char *schema_json);
int ds4p_push_custom(ds4p_build *b, const char *name);
/* Move messages and tools into the request and resolve thinking/sampling. */
int ds4p_finish(ds4p_build *b);

/* Field readers: 0 with the value, 1 when absent or null, -1 on a wrong
 * type (error names param). */
int ds4p_get_string(ds4p_build *b, const cJSON *obj, const char *key, const char *param, const char **out);
int ds4p_get_bool(ds4p_build *b, const cJSON *obj, const char *key, const char *param, bool *out);
int ds4p_get_number(ds4p_build *b, const cJSON *obj, const char *key, const char *param, double *out);
/* Common fields: model, temperature, top_p, top_k, min_p, seed, the max
 * tokens fields (first present of keys[]), stop (string or array), stream,
 * stream_options. */
int ds4p_common_model(ds4p_build *b, const cJSON *body);
int ds4p_common_sampling(ds4p_build *b, const cJSON *body, bool min_p_seed);
int ds4p_common_max_tokens(ds4p_build *b, const cJSON *body, const char *const *keys, size_t n_keys);
int ds4p_common_stop(ds4p_build *b, const cJSON *body, const char *key);
int ds4p_common_stream(ds4p_build *b, const cJSON *body, bool stream_options);
/* Thinking controls: "thinking" (bool or {type}), "think" (bool),
 * reasoning effort strings. */
int ds4p_thinking_field(ds4p_build *b, const cJSON *body, const char *key);
int ds4p_effort(ds4p_build *b, const char *effort, const char *param);
/* Text of a content value: a string, null, or an array of text parts
 * (types from text_types[]); other part types fail.  The parts are joined
 * with sep.  *out is NULL for null. */
int ds4p_content_text(ds4p_build *b, const cJSON *content, const char *param, const char *const *text_types,
                      size_t n_types, const char *sep, const char **out);
/* Canonical function schema {"name","description","parameters"} from the
 * pieces (parameters may be NULL: an empty object schema). */
int ds4p_function_schema(ds4p_build *b, const char *name, const char *description, const cJSON *parameters,
                         const char *param);
/* Arguments JSON text: a string must hold a JSON object; an object is
 * printed. */
int ds4p_arguments(ds4p_build *b, const cJSON *args, const char *param, const char **out);

/* The output state every protocol writer shares (see ds4_proto_out). */
typedef struct ds4p_call {
    char *id;
    char *name;
    ds4p_buf args;
    bool done;
    uint32_t slot;        /* responses output_index / anthropic block index */
    char item_id[40];     /* responses fc_/ctc_ id */
    bool custom;          /* responses custom tool */
} ds4p_call;

enum ds4p_open { DS4P_OPEN_NONE, DS4P_OPEN_REASONING, DS4P_OPEN_TEXT, DS4P_OPEN_TOOL };

struct ds4_proto_out {
    const ds4_gen_request *req;
    ds4_proto_out_opts o;
    char id[64];
    bool began, ended, failed;
    ds4p_buf reasoning, content;
    bool reasoning_done;
    ds4p_call *calls;
    size_t n_calls;
    enum ds4_finish finish;
    char *stop_sequence;
    ds4_gen_usage usage;
    int err_status;
    char *err_code, *err_msg;
    uint32_t err_n_prompt, err_n_ctx;
    /* streaming state */
    enum ds4p_open open;
    uint32_t n_slots;        /* items / blocks opened so far */
    uint32_t reasoning_slot, text_slot;
    bool reasoning_opened, text_opened;
    uint64_t seq_no;         /* responses sequence_number */
    char rs_id[40], msg_id[40];
};

/* Per-protocol writers (proto_openai.c, proto_responses.c,
 * proto_anthropic.c): ev has already been accumulated into o. */
int ds4p_chat_event(ds4_proto_out *o, const ds4_gen_event *ev, ds4_error *err);
int ds4p_chat_reply(ds4_proto_out *o, cJSON **body, ds4_error *err);
int ds4p_completion_event(ds4_proto_out *o, const ds4_gen_event *ev, ds4_error *err);
int ds4p_completion_reply(ds4_proto_out *o, cJSON **body, ds4_error *err);
int ds4p_responses_event(ds4_proto_out *o, const ds4_gen_event *ev, ds4_error *err);
int ds4p_responses_reply(ds4_proto_out *o, cJSON **body, ds4_error *err);
int ds4p_anthropic_event(ds4_proto_out *o, const ds4_gen_event *ev, ds4_error *err);
int ds4p_anthropic_reply(ds4_proto_out *o, cJSON **body, ds4_error *err);

/* Write one SSE event (no-op success when not streaming). */
int ds4p_sse(ds4_proto_out *o, const char *event, const cJSON *json, ds4_error *err);
int ds4p_sse_raw(ds4_proto_out *o, const char *event, const char *data, ds4_error *err);
/* The finish reason names. */
const char *ds4p_finish_openai(enum ds4_finish f);
/* The usage object of OpenAI chat/completions. */
cJSON *ds4p_usage_openai(const ds4_gen_usage *u);
/* cJSON helpers that fail on out of memory. */
cJSON *ds4p_str_n(const char *s, size_t n);
int ds4p_oom(ds4_error *err);

#endif
