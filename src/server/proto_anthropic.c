/* proto_anthropic.c - the Anthropic Messages API, POST /v1/messages (see
 * proto.h).
 *
 * Requests.  system is a string or a list of text blocks (blocks starting
 * with "x-anthropic-", such as Claude Code's billing header, are dropped;
 * the rest are joined by blank lines).  messages alternate user and
 * assistant; content is a string or a list of blocks: user text and
 * tool_result (its content a string or text blocks; an image inside a
 * tool result becomes the note "[image omitted]"), assistant text,
 * thinking (becomes the reasoning), redacted_thinking (skipped) and
 * tool_use.  Images and documents outside tool results are a 400.  Tools
 * with input_schema become function schemas; server tools (typed, without
 * input_schema) cannot run here and are left out.  tool_choice {"type":
 * "none"} drops the tools; auto, any and tool act as auto.  thinking
 * {type: enabled|adaptive|disabled}, output_config.effort and
 * reasoning_effort control thinking.  No min_p, no seed (as Anthropic).
 *
 * Responses.  message_start (usage so far), ping, then content blocks in
 * order: thinking (thinking_delta, closed by a signature_delta whose
 * signature is the message id: nothing to verify, but clients send it
 * back), text (text_delta), tool_use (input_json_delta as the arguments are
 * sampled), each closed by content_block_stop; message_delta (stop_reason,
 * stop_sequence, usage) and message_stop.  Thinking without text or tools
 * gets an empty text block.  Usage: input_tokens is the prefilled part of
 * the prompt, cache_read_input_tokens the reused part,
 * cache_creation_input_tokens 0, so the three add up to the prompt.
 * Errors mid-stream are an "event: error" frame.
 */
#include "server/proto.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ------------------------------------------------------------------ */
/* Request                                                             */
/* ------------------------------------------------------------------ */

static int need_string(ds4p_build *b, const cJSON *obj, const char *key, const char *at, const char **out) {
    char q[128];
    snprintf(q, sizeof(q), "%s.%s", at, key);
    int r = ds4p_get_string(b, obj, key, q, out);
    if (r < 0) return -1;
    if (r) return ds4p_fail(b->req, b->err, q, "missing");
    return 0;
}

static int parse_system(ds4p_build *b, const cJSON *body) {
    const cJSON *s = cJSON_GetObjectItemCaseSensitive(body, "system");
    if (!s || cJSON_IsNull(s)) return 0;
    if (cJSON_IsString(s)) return ds4p_add_system(b, s->valuestring, strlen(s->valuestring));
    if (!cJSON_IsArray(s)) return ds4p_fail(b->req, b->err, "system", "expected a string or an array of text blocks");
    size_t i = 0;
    const cJSON *blk;
    cJSON_ArrayForEach(blk, s) {
        char p[48];
        snprintf(p, sizeof(p), "system[%zu]", i++);
        const char *type, *text;
        if (!cJSON_IsObject(blk)) return ds4p_fail(b->req, b->err, p, "expected a text block");
        if (need_string(b, blk, "type", p, &type)) return -1;
        if (strcmp(type, "text") != 0) return ds4p_fail(b->req, b->err, p, "unsupported system block type \"%s\"", type);
        if (need_string(b, blk, "text", p, &text)) return -1;
        if (strncmp(text, "x-anthropic-", 12) == 0) continue;
        if (ds4p_add_system(b, text, strlen(text))) return -1;
    }
    return 0;
}

static int tool_result_text(ds4p_build *b, const cJSON *content, const char *at, const char **out) {
    *out = "";
    if (!content || cJSON_IsNull(content)) return 0;
    if (cJSON_IsString(content)) {
        *out = ds4p_strdup(b->req, content->valuestring, b->err);
        return *out ? 0 : -1;
    }
    if (!cJSON_IsArray(content)) return ds4p_fail(b->req, b->err, at, "expected a string or an array of blocks");
    ds4p_buf t = {0};
    size_t i = 0;
    const cJSON *blk;
    int rc = 0;
    cJSON_ArrayForEach(blk, content) {
        char p[160];
        snprintf(p, sizeof(p), "%s[%zu]", at, i);
        const char *type, *text = NULL;
        if (!cJSON_IsObject(blk)) {
            rc = ds4p_fail(b->req, b->err, p, "expected a content block");
            break;
        }
        if ((rc = need_string(b, blk, "type", p, &type))) break;
        if (strcmp(type, "text") == 0) {
            if ((rc = need_string(b, blk, "text", p, &text))) break;
        } else if (strcmp(type, "image") == 0 || strcmp(type, "document") == 0) {
            text = "[image omitted]";
        } else {
            rc = ds4p_fail(b->req, b->err, p, "unsupported block type \"%s\" in a tool result", type);
            break;
        }
        if ((i > 0 && ds4p_buf_str(&t, "\n\n", b->err)) || ds4p_buf_str(&t, text, b->err)) {
            rc = -1;
            break;
        }
        i++;
    }
    if (rc == 0) rc = (*out = ds4p_strndup(b->req, t.p ? t.p : "", t.len, b->err)) ? 0 : -1;
    ds4p_buf_free(&t);
    return rc;
}

static int flush_user(ds4p_build *b, ds4p_buf *text, bool *has) {
    if (!*has) return 0;
    ds4_chat_msg m = {.role = DS4_CHAT_USER, .content = ds4p_strndup(b->req, text->p ? text->p : "", text->len, b->err)};
    text->len = 0;
    *has = false;
    return m.content ? ds4p_push_msg(b, &m) : -1;
}

static int user_blocks(ds4p_build *b, const cJSON *content, const char *at) {
    ds4p_buf text = {0};
    bool has = false;
    size_t i = 0;
    const cJSON *blk;
    int rc = 0;
    cJSON_ArrayForEach(blk, content) {
        char p[96];
        snprintf(p, sizeof(p), "%s[%zu]", at, i++);
        const char *type;
        if (!cJSON_IsObject(blk)) {
            rc = ds4p_fail(b->req, b->err, p, "expected a content block");
            break;
        }
        if ((rc = need_string(b, blk, "type", p, &type))) break;
        if (strcmp(type, "text") == 0) {
            const char *t;
            if ((rc = need_string(b, blk, "text", p, &t))) break;
            if ((has && ds4p_buf_str(&text, "\n\n", b->err)) || ds4p_buf_str(&text, t, b->err)) {
                rc = -1;
                break;
            }
            has = true;
        } else if (strcmp(type, "tool_result") == 0) {
            ds4_chat_msg m = {.role = DS4_CHAT_TOOL};
            char q[128];
            snprintf(q, sizeof(q), "%s.content", p);
            if ((rc = flush_user(b, &text, &has)) || (rc = need_string(b, blk, "tool_use_id", p, &m.tool_call_id)) ||
                (rc = tool_result_text(b, cJSON_GetObjectItemCaseSensitive(blk, "content"), q, &m.content)) ||
                (rc = ds4p_push_msg(b, &m)))
                break;
        } else if (strcmp(type, "image") == 0 || strcmp(type, "document") == 0) {
            rc = ds4p_fail(b->req, b->err, p, "%s blocks are not supported (this model reads text only)", type);
            break;
        } else {
            rc = ds4p_fail(b->req, b->err, p, "unsupported content block type \"%s\"", type);
            break;
        }
    }
    if (rc == 0) rc = flush_user(b, &text, &has);
    ds4p_buf_free(&text);
    return rc;
}

static int assistant_blocks(ds4p_build *b, const cJSON *content, const char *at) {
    ds4p_buf text = {0}, reasoning = {0};
    bool has_text = false, has_reasoning = false;
    size_t n_calls = 0, i = 0;
    const cJSON *blk;
    cJSON_ArrayForEach(blk, content) {
        const cJSON *t = cJSON_GetObjectItemCaseSensitive(blk, "type");
        if (cJSON_IsString(t) && strcmp(t->valuestring, "tool_use") == 0) n_calls++;
    }
    ds4_chat_tool_call *calls = n_calls ? ds4p_alloc(b->req, n_calls * sizeof(*calls), b->err) : NULL;
    if (n_calls && !calls) return -1;
    size_t k = 0;
    int rc = 0;
    cJSON_ArrayForEach(blk, content) {
        char p[96];
        snprintf(p, sizeof(p), "%s[%zu]", at, i++);
        const char *type, *s;
        if (!cJSON_IsObject(blk)) {
            rc = ds4p_fail(b->req, b->err, p, "expected a content block");
            break;
        }
        if ((rc = need_string(b, blk, "type", p, &type))) break;
        if (strcmp(type, "text") == 0) {
            if ((rc = need_string(b, blk, "text", p, &s)) || (rc = ds4p_buf_str(&text, s, b->err))) break;
            has_text = true;
        } else if (strcmp(type, "thinking") == 0) {
            if ((rc = need_string(b, blk, "thinking", p, &s)) || (rc = ds4p_buf_str(&reasoning, s, b->err))) break;
            has_reasoning = true;
        } else if (strcmp(type, "redacted_thinking") == 0) {
            continue;
        } else if (strcmp(type, "tool_use") == 0) {
            ds4_chat_tool_call *c = &calls[k++];
            memset(c, 0, sizeof(*c));
            char q[128];
            snprintf(q, sizeof(q), "%s.input", p);
            const cJSON *input = cJSON_GetObjectItemCaseSensitive(blk, "input");
            if (input && !cJSON_IsNull(input) && !cJSON_IsObject(input)) {
                rc = ds4p_fail(b->req, b->err, q, "expected an object");
                break;
            }
            if ((rc = need_string(b, blk, "id", p, &c->id)) || (rc = need_string(b, blk, "name", p, &c->name)) ||
                (rc = ds4p_arguments(b, input, q, &c->arguments)))
                break;
        } else {
            rc = ds4p_fail(b->req, b->err, p, "unsupported content block type \"%s\" in an assistant message", type);
            break;
        }
    }
    if (rc == 0) {
        ds4_chat_msg m = {.role = DS4_CHAT_ASSISTANT, .tool_calls = calls, .n_tool_calls = n_calls};
        if (has_text && !(m.content = ds4p_strndup(b->req, text.p, text.len, b->err))) rc = -1;
        if (rc == 0 && has_reasoning && !(m.reasoning = ds4p_strndup(b->req, reasoning.p, reasoning.len, b->err)))
            rc = -1;
        if (rc == 0) rc = ds4p_push_msg(b, &m);
    }
    ds4p_buf_free(&text);
    ds4p_buf_free(&reasoning);
    return rc;
}

static int parse_messages(ds4p_build *b, const cJSON *msgs) {
    size_t i = 0;
    const cJSON *m;
    cJSON_ArrayForEach(m, msgs) {
        char p[48], q[80];
        snprintf(p, sizeof(p), "messages[%zu]", i++);
        if (!cJSON_IsObject(m)) return ds4p_fail(b->req, b->err, p, "expected a message object");
        const char *role;
        if (need_string(b, m, "role", p, &role)) return -1;
        const cJSON *content = cJSON_GetObjectItemCaseSensitive(m, "content");
        snprintf(q, sizeof(q), "%s.content", p);
        bool user = strcmp(role, "user") == 0;
        if (!user && strcmp(role, "assistant") != 0) {
            snprintf(q, sizeof(q), "%s.role", p);
            return ds4p_fail(b->req, b->err, q, "unknown role \"%s\" (user or assistant)", role);
        }
        if (cJSON_IsString(content)) {
            ds4_chat_msg msg = {.role = user ? DS4_CHAT_USER : DS4_CHAT_ASSISTANT,
                                .content = ds4p_strdup(b->req, content->valuestring, b->err)};
            if (!msg.content || ds4p_push_msg(b, &msg)) return -1;
            continue;
        }
        if (!cJSON_IsArray(content)) return ds4p_fail(b->req, b->err, q, "expected a string or an array of blocks");
        if (user ? user_blocks(b, content, q) : assistant_blocks(b, content, q)) return -1;
    }
    return 0;
}

static int parse_tools(ds4p_build *b, const cJSON *body) {
    const cJSON *tools = cJSON_GetObjectItemCaseSensitive(body, "tools");
    if (!tools || cJSON_IsNull(tools)) return 0;
    if (!cJSON_IsArray(tools)) return ds4p_fail(b->req, b->err, "tools", "expected an array");
    size_t i = 0;
    const cJSON *t;
    cJSON_ArrayForEach(t, tools) {
        char p[48], q[80];
        snprintf(p, sizeof(p), "tools[%zu]", i++);
        if (!cJSON_IsObject(t)) return ds4p_fail(b->req, b->err, p, "expected a tool object");
        const char *type = NULL, *name, *desc = NULL;
        snprintf(q, sizeof(q), "%s.type", p);
        int r = ds4p_get_string(b, t, "type", q, &type);
        if (r < 0) return -1;
        const cJSON *schema = cJSON_GetObjectItemCaseSensitive(t, "input_schema");
        if (r == 0 && strcmp(type, "custom") != 0 && !schema) continue; /* a server tool */
        if (need_string(b, t, "name", p, &name)) return -1;
        snprintf(q, sizeof(q), "%s.description", p);
        if (ds4p_get_string(b, t, "description", q, &desc) < 0) return -1;
        snprintf(q, sizeof(q), "%s.input_schema", p);
        if (ds4p_function_schema(b, name, desc, schema, q)) return -1;
    }
    return 0;
}

static int parse_tool_choice(ds4p_build *b, const cJSON *body) {
    const cJSON *tc = cJSON_GetObjectItemCaseSensitive(body, "tool_choice");
    if (!tc || cJSON_IsNull(tc)) return 0;
    if (!cJSON_IsObject(tc)) return ds4p_fail(b->req, b->err, "tool_choice", "expected an object {\"type\": ...}");
    const char *type;
    if (need_string(b, tc, "type", "tool_choice", &type)) return -1;
    if (strcmp(type, "none") == 0) b->tool_choice_none = true;
    else if (strcmp(type, "auto") != 0 && strcmp(type, "any") != 0 && strcmp(type, "tool") != 0)
        return ds4p_fail(b->req, b->err, "tool_choice.type", "unknown value \"%s\" (auto, any, tool, none)", type);
    return 0;
}

static int parse_thinking(ds4p_build *b, const cJSON *body) {
    if (ds4p_thinking_field(b, body, "thinking")) return -1;
    const cJSON *oc = cJSON_GetObjectItemCaseSensitive(body, "output_config");
    const char *effort = NULL;
    int r;
    if (oc && cJSON_IsObject(oc)) {
        r = ds4p_get_string(b, oc, "effort", "output_config.effort", &effort);
        if (r < 0 || (r == 0 && ds4p_effort(b, effort, "output_config.effort"))) return -1;
    }
    r = ds4p_get_string(b, body, "reasoning_effort", "reasoning_effort", &effort);
    if (r < 0 || (r == 0 && ds4p_effort(b, effort, "reasoning_effort"))) return -1;
    return 0;
}

int ds4_anthropic_parse(const cJSON *body, ds4_gen_request *req, ds4_error *err) {
    ds4p_build b;
    ds4p_build_init(&b, req, DS4_PROTO_ANTHROPIC, err);
    static const char *const max_keys[] = {"max_tokens"};
    int rc = -1;
    if (!cJSON_IsObject(body)) {
        ds4p_fail(req, err, NULL, "the request body must be a JSON object");
        goto out;
    }
    const cJSON *msgs = cJSON_GetObjectItemCaseSensitive(body, "messages");
    if (!cJSON_IsArray(msgs) || cJSON_GetArraySize(msgs) == 0) {
        ds4p_fail(req, err, "messages", "a non-empty array of messages is required");
        goto out;
    }
    if (parse_system(&b, body) || parse_messages(&b, msgs) || ds4p_common_model(&b, body) || parse_tools(&b, body) ||
        parse_tool_choice(&b, body) || parse_thinking(&b, body) || ds4p_common_sampling(&b, body, false) ||
        ds4p_common_max_tokens(&b, body, max_keys, 1) || ds4p_common_stop(&b, body, "stop_sequences") ||
        ds4p_common_stream(&b, body, false))
        goto out;
    rc = ds4p_finish(&b);
out:
    ds4p_build_free(&b);
    return rc;
}

/* ------------------------------------------------------------------ */
/* Output                                                              */
/* ------------------------------------------------------------------ */

static int emit_ev(ds4_proto_out *o, cJSON *j, ds4_error *err) {
    if (!j) return ds4p_oom(err);
    cJSON *t = cJSON_GetObjectItemCaseSensitive(j, "type");
    int rc = ds4p_sse(o, t->valuestring, j, err);
    cJSON_Delete(j);
    return rc;
}

static cJSON *typed(const char *type) {
    cJSON *j = cJSON_CreateObject();
    if (j && !cJSON_AddStringToObject(j, "type", type)) {
        cJSON_Delete(j);
        return NULL;
    }
    return j;
}

static cJSON *usage_json(const ds4_gen_usage *u, bool with_output) {
    uint32_t cached = u->cached_tokens > u->prompt_tokens ? u->prompt_tokens : u->cached_tokens;
    cJSON *j = cJSON_CreateObject();
    if (!j || !cJSON_AddNumberToObject(j, "input_tokens", u->prompt_tokens - cached) ||
        !cJSON_AddNumberToObject(j, "cache_creation_input_tokens", 0) ||
        !cJSON_AddNumberToObject(j, "cache_read_input_tokens", cached) ||
        !cJSON_AddNumberToObject(j, "output_tokens", with_output ? u->completion_tokens : 0)) {
        cJSON_Delete(j);
        return NULL;
    }
    return j;
}

static const char *stop_reason(const ds4_proto_out *o) {
    switch (o->finish) {
    case DS4_FINISH_LENGTH: return "max_tokens";
    case DS4_FINISH_TOOL_CALLS: return "tool_use";
    default: return o->stop_sequence ? "stop_sequence" : "end_turn";
    }
}

/* The message object; content filled only when final. */
static cJSON *message_obj(ds4_proto_out *o, bool final);

static int block_start(ds4_proto_out *o, uint32_t index, cJSON *block, ds4_error *err) {
    cJSON *e = typed("content_block_start");
    if (!e || !block || !cJSON_AddNumberToObject(e, "index", index)) {
        cJSON_Delete(e);
        cJSON_Delete(block);
        return ds4p_oom(err);
    }
    cJSON_AddItemToObject(e, "content_block", block);
    return emit_ev(o, e, err);
}

static int block_delta(ds4_proto_out *o, uint32_t index, const char *type, const char *key, const char *s, size_t n,
                       ds4_error *err) {
    cJSON *e = typed("content_block_delta");
    cJSON *d = e && cJSON_AddNumberToObject(e, "index", index) ? cJSON_AddObjectToObject(e, "delta") : NULL;
    cJSON *v = d ? ds4p_str_n(s, n) : NULL;
    if (!v || !cJSON_AddStringToObject(d, "type", type)) {
        cJSON_Delete(v);
        cJSON_Delete(e);
        return ds4p_oom(err);
    }
    cJSON_AddItemToObject(d, key, v);
    return emit_ev(o, e, err);
}

static int block_stop(ds4_proto_out *o, uint32_t index, ds4_error *err) {
    cJSON *e = typed("content_block_stop");
    if (e && !cJSON_AddNumberToObject(e, "index", index)) {
        cJSON_Delete(e);
        e = NULL;
    }
    return emit_ev(o, e, err);
}

static cJSON *thinking_block(const char *text, size_t n, const char *sig) {
    cJSON *b = typed("thinking");
    if (!b) return NULL;
    cJSON *t = ds4p_str_n(text, n);
    if (!t) {
        cJSON_Delete(b);
        return NULL;
    }
    cJSON_AddItemToObject(b, "thinking", t);
    if (!cJSON_AddStringToObject(b, "signature", sig)) {
        cJSON_Delete(b);
        return NULL;
    }
    return b;
}

static cJSON *text_block(const char *text, size_t n) {
    cJSON *b = typed("text");
    cJSON *t = b ? ds4p_str_n(text, n) : NULL;
    if (!t) {
        cJSON_Delete(b);
        return NULL;
    }
    cJSON_AddItemToObject(b, "text", t);
    return b;
}

static cJSON *tool_block(const ds4p_call *c, bool final) {
    cJSON *b = typed("tool_use");
    if (!b || !cJSON_AddStringToObject(b, "id", c->id) || !cJSON_AddStringToObject(b, "name", c->name)) {
        cJSON_Delete(b);
        return NULL;
    }
    cJSON *in = final && c->args.p ? cJSON_Parse(c->args.p) : NULL;
    if (in && !cJSON_IsObject(in)) {
        cJSON_Delete(in);
        in = NULL;
    }
    if (!in) in = cJSON_CreateObject();
    if (!in) {
        cJSON_Delete(b);
        return NULL;
    }
    cJSON_AddItemToObject(b, "input", in);
    return b;
}

static int close_open(ds4_proto_out *o, ds4_error *err) {
    enum ds4p_open open = o->open;
    o->open = DS4P_OPEN_NONE;
    switch (open) {
    case DS4P_OPEN_REASONING:
        if (block_delta(o, o->reasoning_slot, "signature_delta", "signature", o->id, strlen(o->id), err)) return -1;
        return block_stop(o, o->reasoning_slot, err);
    case DS4P_OPEN_TEXT: return block_stop(o, o->text_slot, err);
    case DS4P_OPEN_TOOL: return block_stop(o, o->calls[o->n_calls - 1].slot, err);
    default: return 0;
    }
}

static int open_text(ds4_proto_out *o, ds4_error *err) {
    if (close_open(o, err)) return -1;
    o->text_opened = true;
    o->text_slot = o->n_slots++;
    o->open = DS4P_OPEN_TEXT;
    return block_start(o, o->text_slot, text_block("", 0), err);
}

int ds4p_anthropic_event(ds4_proto_out *o, const ds4_gen_event *ev, ds4_error *err) {
    switch (ev->type) {
    case DS4_EV_BEGIN: {
        cJSON *e = typed("message_start");
        cJSON *m = e ? message_obj(o, false) : NULL;
        if (!m) {
            cJSON_Delete(e);
            return ds4p_oom(err);
        }
        cJSON_AddItemToObject(e, "message", m);
        if (emit_ev(o, e, err)) return -1;
        return emit_ev(o, typed("ping"), err);
    }
    case DS4_EV_REASONING:
        if (!o->reasoning_opened) {
            if (o->text_opened || o->n_calls) return ds4_fail(err, "reasoning after the answer began");
            o->reasoning_opened = true;
            o->reasoning_slot = o->n_slots++;
            o->open = DS4P_OPEN_REASONING;
            if (block_start(o, o->reasoning_slot, thinking_block("", 0, ""), err)) return -1;
        }
        return block_delta(o, o->reasoning_slot, "thinking_delta", "thinking", ev->text, ev->len, err);
    case DS4_EV_REASONING_END: return o->open == DS4P_OPEN_REASONING ? close_open(o, err) : 0;
    case DS4_EV_CONTENT:
        if (o->open != DS4P_OPEN_TEXT) {
            if (o->text_opened) return ds4_fail(err, "answer text after a tool call");
            if (open_text(o, err)) return -1;
        }
        return block_delta(o, o->text_slot, "text_delta", "text", ev->text, ev->len, err);
    case DS4_EV_TOOL_START: {
        if (close_open(o, err)) return -1;
        ds4p_call *c = &o->calls[ev->index];
        c->slot = o->n_slots++;
        o->open = DS4P_OPEN_TOOL;
        return block_start(o, c->slot, tool_block(c, false), err);
    }
    case DS4_EV_TOOL_ARGS:
        return block_delta(o, o->calls[ev->index].slot, "input_json_delta", "partial_json", ev->text, ev->len, err);
    case DS4_EV_TOOL_END: return o->open == DS4P_OPEN_TOOL ? close_open(o, err) : 0;
    case DS4_EV_FINISH: {
        if (close_open(o, err)) return -1;
        if (!o->text_opened && o->n_calls == 0 && (open_text(o, err) || close_open(o, err))) return -1;
        cJSON *e = typed("message_delta");
        cJSON *d = e ? cJSON_AddObjectToObject(e, "delta") : NULL;
        cJSON *u = d ? usage_json(&o->usage, true) : NULL;
        if (!u || !cJSON_AddStringToObject(d, "stop_reason", stop_reason(o)) ||
            !(o->stop_sequence ? cJSON_AddStringToObject(d, "stop_sequence", o->stop_sequence)
                               : cJSON_AddNullToObject(d, "stop_sequence"))) {
            cJSON_Delete(u);
            cJSON_Delete(e);
            return ds4p_oom(err);
        }
        cJSON_AddItemToObject(e, "usage", u);
        if (emit_ev(o, e, err)) return -1;
        return emit_ev(o, typed("message_stop"), err);
    }
    case DS4_EV_ERROR: {
        cJSON *e = ds4_proto_error_json(DS4_PROTO_ANTHROPIC, o->err_status, NULL, NULL, NULL, o->err_msg);
        if (!e) return ds4p_oom(err);
        int rc = ds4p_sse(o, "error", e, err);
        cJSON_Delete(e);
        return rc;
    }
    }
    return 0;
}

static cJSON *message_obj(ds4_proto_out *o, bool final) {
    cJSON *m = typed("message"), *content = NULL;
    bool ok = m && cJSON_AddStringToObject(m, "id", o->id) && cJSON_AddStringToObject(m, "role", "assistant") &&
              cJSON_AddStringToObject(m, "model", o->req->model) && (content = cJSON_AddArrayToObject(m, "content"));
    for (uint32_t s = 0; ok && final && s < o->n_slots; s++) {
        cJSON *b = NULL;
        if (o->reasoning_opened && o->reasoning_slot == s) b = thinking_block(o->reasoning.p, o->reasoning.len, o->id);
        else if (o->text_opened && o->text_slot == s) b = text_block(o->content.p, o->content.len);
        else
            for (size_t i = 0; i < o->n_calls; i++)
                if (o->calls[i].slot == s) b = tool_block(&o->calls[i], true);
        ok = b != NULL;
        if (ok) cJSON_AddItemToArray(content, b);
    }
    if (ok && final) {
        ok = cJSON_AddStringToObject(m, "stop_reason", stop_reason(o)) &&
             (o->stop_sequence ? cJSON_AddStringToObject(m, "stop_sequence", o->stop_sequence) != NULL
                               : cJSON_AddNullToObject(m, "stop_sequence") != NULL);
    } else if (ok) {
        ok = cJSON_AddNullToObject(m, "stop_reason") && cJSON_AddNullToObject(m, "stop_sequence");
    }
    cJSON *u = ok ? usage_json(&o->usage, final) : NULL;
    if (!u) {
        cJSON_Delete(m);
        return NULL;
    }
    cJSON_AddItemToObject(m, "usage", u);
    return m;
}

int ds4p_anthropic_reply(ds4_proto_out *o, cJSON **body, ds4_error *err) {
    *body = message_obj(o, true);
    return *body ? 0 : ds4p_oom(err);
}
