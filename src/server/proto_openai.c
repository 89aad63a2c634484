/* proto_openai.c - OpenAI chat completions and legacy completions (see
 * proto.h).
 *
 * Requests.  /v1/chat/completions: messages with roles system and
 * developer (merged into the leading system block), user, assistant
 * (content, reasoning_content or reasoning, tool_calls), tool (tool_call_id)
 * and the legacy function role; content is a string, null or an array of
 * text parts (any other part, e.g. an image, is a 400 naming it).  Tools
 * are function tools; tool_choice "none" drops them, "auto" is the
 * default, and "required" or a named function are accepted but cannot be
 * enforced: they act as "auto" (ds4 does the same).  n > 1 is refused.
 * /v1/completions wraps the prompt (a string, or the first string of an
 * array) in the chat template: system "You are a helpful assistant", one
 * user turn; it has no tools.
 *
 * Responses.  chat.completion / chat.completion.chunk with
 * delta.reasoning_content, delta.content and delta.tool_calls[i] (a start
 * delta with id, type and name, then function.arguments fragments), a
 * finish chunk, an optional usage chunk (choices: []) and "data: [DONE]".
 * text_completion chunks for /v1/completions, whose text in thinking mode
 * is the reasoning, "</think>", then the answer (ds4's behaviour).  A
 * failure mid-stream is an "event: error" frame with {"error": {...}},
 * which the OpenAI SDKs raise as an APIError.
 */
#include "server/proto.h"

#include <stdio.h>
#include <string.h>

/* ------------------------------------------------------------------ */
/* Chat request                                                        */
/* ------------------------------------------------------------------ */

static const char *const TEXT_PARTS[] = {"text", "input_text", "output_text"};
#define N_TEXT_PARTS (sizeof(TEXT_PARTS) / sizeof(TEXT_PARTS[0]))

static int parse_tool_calls(ds4p_build *b, const cJSON *arr, const char *param, ds4_chat_msg *m) {
    if (!arr || cJSON_IsNull(arr)) return 0;
    if (!cJSON_IsArray(arr)) return ds4p_fail(b->req, b->err, param, "expected an array");
    size_t n = (size_t)cJSON_GetArraySize(arr);
    if (n == 0) return 0;
    ds4_chat_tool_call *calls = ds4p_alloc(b->req, n * sizeof(*calls), b->err);
    if (!calls) return -1;
    size_t k = 0;
    const cJSON *tc;
    cJSON_ArrayForEach(tc, arr) {
        char p[160], q[192];
        snprintf(p, sizeof(p), "%s[%zu]", param, k);
        if (!cJSON_IsObject(tc)) return ds4p_fail(b->req, b->err, p, "expected a tool call object");
        ds4_chat_tool_call *c = &calls[k];
        memset(c, 0, sizeof(*c));
        snprintf(q, sizeof(q), "%s.id", p);
        if (ds4p_get_string(b, tc, "id", q, &c->id) < 0) return -1;
        const char *type = NULL;
        snprintf(q, sizeof(q), "%s.type", p);
        int r = ds4p_get_string(b, tc, "type", q, &type);
        if (r < 0) return -1;
        if (r == 0 && strcmp(type, "function") != 0)
            return ds4p_fail(b->req, b->err, q, "unsupported tool call type \"%s\" (only function)", type);
        const cJSON *fn = cJSON_GetObjectItemCaseSensitive(tc, "function");
        snprintf(q, sizeof(q), "%s.function", p);
        if (!cJSON_IsObject(fn)) return ds4p_fail(b->req, b->err, q, "expected an object with name and arguments");
        snprintf(q, sizeof(q), "%s.function.name", p);
        r = ds4p_get_string(b, fn, "name", q, &c->name);
        if (r < 0) return -1;
        if (r || !*c->name) return ds4p_fail(b->req, b->err, q, "missing");
        snprintf(q, sizeof(q), "%s.function.arguments", p);
        if (ds4p_arguments(b, cJSON_GetObjectItemCaseSensitive(fn, "arguments"), q, &c->arguments)) return -1;
        k++;
    }
    m->tool_calls = calls;
    m->n_tool_calls = n;
    return 0;
}

static int parse_message(ds4p_build *b, const cJSON *msg, size_t i) {
    char p[64], q[96];
    snprintf(p, sizeof(p), "messages[%zu]", i);
    if (!cJSON_IsObject(msg)) return ds4p_fail(b->req, b->err, p, "expected a message object");
    const char *role = NULL;
    snprintf(q, sizeof(q), "%s.role", p);
    int r = ds4p_get_string(b, msg, "role", q, &role);
    if (r < 0) return -1;
    if (r) return ds4p_fail(b->req, b->err, q, "missing");
    const cJSON *content = cJSON_GetObjectItemCaseSensitive(msg, "content");
    snprintf(q, sizeof(q), "%s.content", p);
    const char *text = NULL;
    bool is_user = strcmp(role, "user") == 0, is_asst = strcmp(role, "assistant") == 0;
    if (ds4p_content_text(b, content, q, TEXT_PARTS, N_TEXT_PARTS, is_asst ? "" : "\n\n", &text)) return -1;
    if (strcmp(role, "system") == 0 || strcmp(role, "developer") == 0)
        return ds4p_add_system(b, text ? text : "", text ? strlen(text) : 0);
    ds4_chat_msg m = {.content = text};
    if (is_user) {
        m.role = DS4_CHAT_USER;
    } else if (is_asst) {
        m.role = DS4_CHAT_ASSISTANT;
        snprintf(q, sizeof(q), "%s.reasoning_content", p);
        r = ds4p_get_string(b, msg, "reasoning_content", q, &m.reasoning);
        if (r < 0) return -1;
        if (r) {
            snprintf(q, sizeof(q), "%s.reasoning", p);
            if (ds4p_get_string(b, msg, "reasoning", q, &m.reasoning) < 0) return -1;
        }
        snprintf(q, sizeof(q), "%s.tool_calls", p);
        if (parse_tool_calls(b, cJSON_GetObjectItemCaseSensitive(msg, "tool_calls"), q, &m)) return -1;
    } else if (strcmp(role, "tool") == 0 || strcmp(role, "function") == 0) {
        m.role = DS4_CHAT_TOOL;
        snprintf(q, sizeof(q), "%s.tool_call_id", p);
        if (ds4p_get_string(b, msg, "tool_call_id", q, &m.tool_call_id) < 0) return -1;
    } else {
        snprintf(q, sizeof(q), "%s.role", p);
        return ds4p_fail(b->req, b->err, q, "unknown role \"%s\" (system, developer, user, assistant, tool)", role);
    }
    return ds4p_push_msg(b, &m);
}

static int parse_tools(ds4p_build *b, const cJSON *body) {
    const cJSON *tools = cJSON_GetObjectItemCaseSensitive(body, "tools");
    if (!tools || cJSON_IsNull(tools)) return 0;
    if (!cJSON_IsArray(tools)) return ds4p_fail(b->req, b->err, "tools", "expected an array");
    size_t i = 0;
    const cJSON *t;
    cJSON_ArrayForEach(t, tools) {
        char p[64], q[96];
        snprintf(p, sizeof(p), "tools[%zu]", i++);
        if (!cJSON_IsObject(t)) return ds4p_fail(b->req, b->err, p, "expected a tool object");
        const char *type = NULL;
        snprintf(q, sizeof(q), "%s.type", p);
        int r = ds4p_get_string(b, t, "type", q, &type);
        if (r < 0) return -1;
        if (r == 0 && strcmp(type, "function") != 0)
            return ds4p_fail(b->req, b->err, q, "unsupported tool type \"%s\" (only function tools)", type);
        const cJSON *fn = cJSON_GetObjectItemCaseSensitive(t, "function");
        snprintf(q, sizeof(q), "%s.function", p);
        if (!cJSON_IsObject(fn)) return ds4p_fail(b->req, b->err, q, "expected an object");
        const char *name = NULL, *desc = NULL;
        snprintf(q, sizeof(q), "%s.function.name", p);
        if ((r = ds4p_get_string(b, fn, "name", q, &name)) < 0) return -1;
        if (r) return ds4p_fail(b->req, b->err, q, "missing");
        snprintf(q, sizeof(q), "%s.function.description", p);
        if (ds4p_get_string(b, fn, "description", q, &desc) < 0) return -1;
        snprintf(q, sizeof(q), "%s.function", p);
        if (ds4p_function_schema(b, name, desc, cJSON_GetObjectItemCaseSensitive(fn, "parameters"), q)) return -1;
    }
    return 0;
}

/* "none" drops the tools; "auto", "required" and a named function are
 * served as "auto" (nothing can force a call). */
static int parse_tool_choice(ds4p_build *b, const cJSON *body) {
    const cJSON *tc = cJSON_GetObjectItemCaseSensitive(body, "tool_choice");
    if (!tc || cJSON_IsNull(tc)) return 0;
    if (cJSON_IsString(tc)) {
        const char *s = tc->valuestring;
        if (strcmp(s, "none") == 0) b->tool_choice_none = true;
        else if (strcmp(s, "auto") != 0 && strcmp(s, "required") != 0)
            return ds4p_fail(b->req, b->err, "tool_choice", "unknown value \"%s\" (auto, none, required)", s);
        return 0;
    }
    if (!cJSON_IsObject(tc)) return ds4p_fail(b->req, b->err, "tool_choice", "expected a string or an object");
    return 0;
}

static int parse_thinking(ds4p_build *b, const cJSON *body) {
    if (ds4p_thinking_field(b, body, "thinking") || ds4p_thinking_field(b, body, "think")) return -1;
    const char *effort = NULL;
    int r = ds4p_get_string(b, body, "reasoning_effort", "reasoning_effort", &effort);
    if (r < 0) return -1;
    return r == 0 ? ds4p_effort(b, effort, "reasoning_effort") : 0;
}

static int check_n(ds4p_build *b, const cJSON *body) {
    double n;
    int r = ds4p_get_number(b, body, "n", "n", &n);
    if (r < 0) return -1;
    if (r == 0 && n != 1) return ds4p_fail(b->req, b->err, "n", "only one choice per request is supported");
    return 0;
}

int ds4_openai_parse_chat(const cJSON *body, ds4_gen_request *req, ds4_error *err) {
    ds4p_build b;
    ds4p_build_init(&b, req, DS4_PROTO_CHAT, err);
    static const char *const max_keys[] = {"max_completion_tokens", "max_tokens"};
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
    size_t i = 0;
    const cJSON *m;
    cJSON_ArrayForEach(m, msgs) {
        if (parse_message(&b, m, i++)) goto out;
    }
    if (ds4p_common_model(&b, body) || parse_tools(&b, body) || parse_tool_choice(&b, body) ||
        parse_thinking(&b, body) || ds4p_common_sampling(&b, body, true) ||
        ds4p_common_max_tokens(&b, body, max_keys, 2) || ds4p_common_stop(&b, body, "stop") ||
        ds4p_common_stream(&b, body, true) || check_n(&b, body))
        goto out;
    rc = ds4p_finish(&b);
out:
    ds4p_build_free(&b);
    return rc;
}

int ds4_openai_parse_completion(const cJSON *body, ds4_gen_request *req, ds4_error *err) {
    ds4p_build b;
    ds4p_build_init(&b, req, DS4_PROTO_COMPLETIONS, err);
    static const char *const max_keys[] = {"max_tokens"};
    int rc = -1;
    if (!cJSON_IsObject(body)) {
        ds4p_fail(req, err, NULL, "the request body must be a JSON object");
        goto out;
    }
    const cJSON *prompt = cJSON_GetObjectItemCaseSensitive(body, "prompt");
    const char *text = NULL;
    if (cJSON_IsString(prompt)) {
        text = prompt->valuestring;
    } else if (cJSON_IsArray(prompt)) {
        const cJSON *first = cJSON_GetArrayItem(prompt, 0);
        if (!cJSON_IsString(first)) {
            ds4p_fail(req, err, "prompt", "expected a string or an array of strings (token arrays are not supported)");
            goto out;
        }
        text = first->valuestring;
    } else {
        ds4p_fail(req, err, "prompt", "a prompt string is required");
        goto out;
    }
    static const char sys[] = "You are a helpful assistant";
    ds4_chat_msg user = {.role = DS4_CHAT_USER, .content = ds4p_strdup(req, text, err)};
    if (!user.content || ds4p_add_system(&b, sys, strlen(sys)) || ds4p_push_msg(&b, &user) || ds4p_common_model(&b, body) ||
        parse_thinking(&b, body) || ds4p_common_sampling(&b, body, true) ||
        ds4p_common_max_tokens(&b, body, max_keys, 1) || ds4p_common_stop(&b, body, "stop") ||
        ds4p_common_stream(&b, body, true) || check_n(&b, body))
        goto out;
    rc = ds4p_finish(&b);
out:
    ds4p_build_free(&b);
    return rc;
}

/* ------------------------------------------------------------------ */
/* Chat output                                                         */
/* ------------------------------------------------------------------ */

/* {"id","object","created","model","system_fingerprint", "choices":[{"index":0,
 * "delta":{},"logprobs":null,"finish_reason":null}]}; *delta and *choice
 * point inside.  choices == false: "choices": []. */
static cJSON *chunk(ds4_proto_out *o, const char *object, bool choices, cJSON **delta, cJSON **choice) {
    cJSON *j = cJSON_CreateObject();
    if (!j) return NULL;
    cJSON *arr = NULL, *c = NULL, *d = NULL;
    bool ok = cJSON_AddStringToObject(j, "id", o->id) && cJSON_AddStringToObject(j, "object", object) &&
              cJSON_AddNumberToObject(j, "created", (double)o->o.created) &&
              cJSON_AddStringToObject(j, "model", o->req->model) &&
              cJSON_AddStringToObject(j, "system_fingerprint", "ds4cl") && (arr = cJSON_AddArrayToObject(j, "choices"));
    if (ok && choices) {
        ok = (c = cJSON_CreateObject()) != NULL;
        if (ok) cJSON_AddItemToArray(arr, c);
        ok = ok && cJSON_AddNumberToObject(c, "index", 0);
        if (ok && delta) ok = (d = cJSON_AddObjectToObject(c, "delta")) != NULL;
        ok = ok && cJSON_AddNullToObject(c, "logprobs") && cJSON_AddNullToObject(c, "finish_reason");
    }
    if (ok && o->req->include_usage && choices) ok = cJSON_AddNullToObject(j, "usage") != NULL;
    if (!ok) {
        cJSON_Delete(j);
        return NULL;
    }
    if (delta) *delta = d;
    if (choice) *choice = c;
    return j;
}

static int send_and_free(ds4_proto_out *o, cJSON *j, ds4_error *err) {
    if (!j) return ds4p_oom(err);
    int rc = ds4p_sse(o, NULL, j, err);
    cJSON_Delete(j);
    return rc;
}

static int stream_error(ds4_proto_out *o, ds4_error *err) {
    cJSON *e = ds4_proto_error_json(o->req->proto, o->err_status, NULL, o->err_code, NULL, o->err_msg);
    if (!e) return ds4p_oom(err);
    int rc = ds4p_sse(o, "error", e, err);
    cJSON_Delete(e);
    return rc;
}

static int usage_chunk_and_done(ds4_proto_out *o, const char *object, ds4_error *err) {
    if (o->req->include_usage) {
        cJSON *j = chunk(o, object, false, NULL, NULL);
        cJSON *u = j ? ds4p_usage_openai(&o->usage) : NULL;
        if (!u) {
            cJSON_Delete(j);
            return ds4p_oom(err);
        }
        cJSON_AddItemToObject(j, "usage", u);
        if (send_and_free(o, j, err)) return -1;
    }
    return ds4p_sse_raw(o, NULL, "[DONE]", err);
}

int ds4p_chat_event(ds4_proto_out *o, const ds4_gen_event *ev, ds4_error *err) {
    if (!o->o.write) return 0;
    cJSON *delta = NULL, *choice = NULL, *j = NULL;
    switch (ev->type) {
    case DS4_EV_BEGIN:
        j = chunk(o, "chat.completion.chunk", true, &delta, &choice);
        if (j && (!cJSON_AddStringToObject(delta, "role", "assistant") || !cJSON_AddStringToObject(delta, "content", ""))) {
            cJSON_Delete(j);
            j = NULL;
        }
        return send_and_free(o, j, err);
    case DS4_EV_REASONING:
    case DS4_EV_CONTENT: {
        j = chunk(o, "chat.completion.chunk", true, &delta, &choice);
        cJSON *s = j ? ds4p_str_n(ev->text, ev->len) : NULL;
        if (!s) {
            cJSON_Delete(j);
            return ds4p_oom(err);
        }
        cJSON_AddItemToObject(delta, ev->type == DS4_EV_REASONING ? "reasoning_content" : "content", s);
        return send_and_free(o, j, err);
    }
    case DS4_EV_TOOL_START:
    case DS4_EV_TOOL_ARGS: {
        j = chunk(o, "chat.completion.chunk", true, &delta, &choice);
        cJSON *arr = j ? cJSON_AddArrayToObject(delta, "tool_calls") : NULL;
        cJSON *tc = arr ? cJSON_CreateObject() : NULL;
        if (tc) cJSON_AddItemToArray(arr, tc);
        bool ok = tc && cJSON_AddNumberToObject(tc, "index", ev->index);
        cJSON *fn = NULL;
        if (ok && ev->type == DS4_EV_TOOL_START) {
            ok = cJSON_AddStringToObject(tc, "id", ev->id) && cJSON_AddStringToObject(tc, "type", "function") &&
                 (fn = cJSON_AddObjectToObject(tc, "function")) && cJSON_AddStringToObject(fn, "name", ev->name) &&
                 cJSON_AddStringToObject(fn, "arguments", "");
        } else if (ok) {
            cJSON *s = NULL;
            ok = (fn = cJSON_AddObjectToObject(tc, "function")) && (s = ds4p_str_n(ev->text, ev->len));
            if (s) cJSON_AddItemToObject(fn, "arguments", s);
        }
        if (!ok) {
            cJSON_Delete(j);
            return ds4p_oom(err);
        }
        return send_and_free(o, j, err);
    }
    case DS4_EV_REASONING_END:
    case DS4_EV_TOOL_END: return 0;
    case DS4_EV_FINISH:
        j = chunk(o, "chat.completion.chunk", true, &delta, &choice);
        if (j) cJSON_ReplaceItemInObjectCaseSensitive(choice, "finish_reason", cJSON_CreateString(ds4p_finish_openai(o->finish)));
        if (send_and_free(o, j, err)) return -1;
        return usage_chunk_and_done(o, "chat.completion.chunk", err);
    case DS4_EV_ERROR: return stream_error(o, err);
    }
    return 0;
}

int ds4p_chat_reply(ds4_proto_out *o, cJSON **body, ds4_error *err) {
    cJSON *choice = NULL;
    cJSON *j = chunk(o, "chat.completion", true, NULL, &choice);
    if (!j) return ds4p_oom(err);
    cJSON *msg = cJSON_CreateObject();
    bool ok = msg != NULL;
    if (ok) cJSON_AddItemToObject(choice, "message", msg);
    ok = ok && cJSON_AddStringToObject(msg, "role", "assistant");
    if (ok) {
        cJSON *c = o->content.len || o->n_calls == 0 ? ds4p_str_n(o->content.p ? o->content.p : "", o->content.len)
                                                      : cJSON_CreateNull();
        ok = c != NULL;
        if (ok) cJSON_AddItemToObject(msg, "content", c);
    }
    if (ok && o->reasoning.len) {
        cJSON *r = ds4p_str_n(o->reasoning.p, o->reasoning.len);
        ok = r != NULL;
        if (ok) cJSON_AddItemToObject(msg, "reasoning_content", r);
    }
    if (ok && o->n_calls) {
        cJSON *arr = cJSON_AddArrayToObject(msg, "tool_calls");
        ok = arr != NULL;
        for (size_t i = 0; ok && i < o->n_calls; i++) {
            cJSON *tc = cJSON_CreateObject(), *fn = NULL;
            ok = tc != NULL;
            if (ok) cJSON_AddItemToArray(arr, tc);
            ok = ok && cJSON_AddStringToObject(tc, "id", o->calls[i].id) && cJSON_AddStringToObject(tc, "type", "function") &&
                 (fn = cJSON_AddObjectToObject(tc, "function")) && cJSON_AddStringToObject(fn, "name", o->calls[i].name);
            cJSON *a = ok ? ds4p_str_n(o->calls[i].args.p ? o->calls[i].args.p : "", o->calls[i].args.len) : NULL;
            ok = a != NULL;
            if (ok) cJSON_AddItemToObject(fn, "arguments", a);
        }
    }
    if (ok) cJSON_ReplaceItemInObjectCaseSensitive(choice, "finish_reason", cJSON_CreateString(ds4p_finish_openai(o->finish)));
    cJSON *u = ok ? ds4p_usage_openai(&o->usage) : NULL;
    if (!u) {
        cJSON_Delete(j);
        return ds4p_oom(err);
    }
    cJSON_DeleteItemFromObjectCaseSensitive(j, "usage");
    cJSON_AddItemToObject(j, "usage", u);
    *body = j;
    return 0;
}

/* ------------------------------------------------------------------ */
/* Completions output                                                  */
/* ------------------------------------------------------------------ */

static cJSON *text_chunk(ds4_proto_out *o, const char *text, size_t len, cJSON **choice) {
    cJSON *j = chunk(o, "text_completion", false, NULL, NULL);
    cJSON *c = j ? cJSON_CreateObject() : NULL;
    cJSON *s = c ? ds4p_str_n(text, len) : NULL;
    if (!s) {
        cJSON_Delete(c);
        cJSON_Delete(j);
        return NULL;
    }
    cJSON_AddItemToArray(cJSON_GetObjectItemCaseSensitive(j, "choices"), c);
    cJSON_AddItemToObject(c, "text", s);
    if (!cJSON_AddNumberToObject(c, "index", 0) || !cJSON_AddNullToObject(c, "logprobs") ||
        !cJSON_AddNullToObject(c, "finish_reason") || (o->req->include_usage && !cJSON_AddNullToObject(j, "usage"))) {
        cJSON_Delete(j);
        return NULL;
    }
    if (choice) *choice = c;
    return j;
}

int ds4p_completion_event(ds4_proto_out *o, const ds4_gen_event *ev, ds4_error *err) {
    if (!o->o.write) return 0;
    cJSON *choice = NULL;
    switch (ev->type) {
    case DS4_EV_REASONING:
    case DS4_EV_CONTENT: return send_and_free(o, text_chunk(o, ev->text, ev->len, NULL), err);
    case DS4_EV_REASONING_END: return send_and_free(o, text_chunk(o, "</think>", 8, NULL), err);
    case DS4_EV_FINISH: {
        cJSON *j = text_chunk(o, "", 0, &choice);
        if (j) cJSON_ReplaceItemInObjectCaseSensitive(choice, "finish_reason", cJSON_CreateString(ds4p_finish_openai(o->finish)));
        if (send_and_free(o, j, err)) return -1;
        return usage_chunk_and_done(o, "text_completion", err);
    }
    case DS4_EV_ERROR: return stream_error(o, err);
    default: return 0; /* BEGIN and tool events have no completions form */
    }
}

int ds4p_completion_reply(ds4_proto_out *o, cJSON **body, ds4_error *err) {
    ds4p_buf t = {0};
    if (ds4p_buf_add(&t, o->reasoning.p ? o->reasoning.p : "", o->reasoning.len, err) ||
        (o->reasoning_done && ds4p_buf_str(&t, "</think>", err)) ||
        ds4p_buf_add(&t, o->content.p ? o->content.p : "", o->content.len, err)) {
        ds4p_buf_free(&t);
        return -1;
    }
    cJSON *choice = NULL;
    cJSON *j = text_chunk(o, t.p, t.len, &choice);
    ds4p_buf_free(&t);
    if (!j) return ds4p_oom(err);
    cJSON_ReplaceItemInObjectCaseSensitive(choice, "finish_reason", cJSON_CreateString(ds4p_finish_openai(o->finish)));
    cJSON *u = ds4p_usage_openai(&o->usage);
    if (!u) {
        cJSON_Delete(j);
        return ds4p_oom(err);
    }
    cJSON_DeleteItemFromObjectCaseSensitive(j, "usage");
    cJSON_AddItemToObject(j, "usage", u);
    *body = j;
    return 0;
}
