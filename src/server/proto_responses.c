/* proto_responses.c - the OpenAI Responses API, POST /v1/responses (see
 * proto.h).
 *
 * Requests.  input is a string (one user turn) or a list of items:
 * messages (roles user, assistant, system, developer; text parts only),
 * reasoning (its reasoning_text content, else its summary texts), function
 * calls and their outputs, and custom (freeform) tool calls and outputs.
 * Consecutive reasoning / assistant message / call items form one
 * assistant turn, as the model produced them.  instructions and
 * system/developer messages make the leading system block.  Tools:
 * function tools, and custom tools offered as a function with one string
 * parameter "input"; hosted tools (web_search, file_search, ...) cannot
 * run here and are left out.  Refused with 400: previous_response_id and
 * conversation (nothing is stored: replay the full input), item_reference
 * items, non-text content, tool_choice other than "auto"/"none", unknown
 * item types.  compaction items are skipped.
 *
 * Responses.  Every SSE event carries sequence_number and type: created,
 * in_progress, then per output item output_item.added ... output_item.done
 * (reasoning with summary parts when reasoning.summary asked for one,
 * message with one output_text part, function_call with live
 * function_call_arguments deltas, custom_tool_call with its input at the
 * end), and a terminal response.completed / response.incomplete
 * (max_output_tokens) / response.failed carrying the whole output and the
 * usage.  Output indexes are given in the order items open; the
 * non-streamed body lists the same items in the same order.  ids: resp_,
 * rs_, msg_, fc_, ctc_ + 24 random hex digits.
 */
#include "server/proto.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ------------------------------------------------------------------ */
/* Request                                                             */
/* ------------------------------------------------------------------ */

static const char *const TEXT_PARTS[] = {"input_text", "output_text", "text"};
#define N_TEXT_PARTS (sizeof(TEXT_PARTS) / sizeof(TEXT_PARTS[0]))

/* The assistant turn being assembled from consecutive items. */
typedef struct pending {
    bool active;
    ds4p_buf content, reasoning;
    bool has_content, has_reasoning;
    ds4_chat_tool_call *calls;
    size_t n_calls, cap_calls;
} pending;

static void pending_free(pending *p) {
    ds4p_buf_free(&p->content);
    ds4p_buf_free(&p->reasoning);
    free(p->calls);
    memset(p, 0, sizeof(*p));
}

static int flush(ds4p_build *b, pending *p) {
    if (!p->active) return 0;
    ds4_chat_msg m = {.role = DS4_CHAT_ASSISTANT};
    if (p->has_content && !(m.content = ds4p_strndup(b->req, p->content.p ? p->content.p : "", p->content.len, b->err)))
        return -1;
    if (p->has_reasoning &&
        !(m.reasoning = ds4p_strndup(b->req, p->reasoning.p ? p->reasoning.p : "", p->reasoning.len, b->err)))
        return -1;
    if (p->n_calls) {
        ds4_chat_tool_call *c = ds4p_alloc(b->req, p->n_calls * sizeof(*c), b->err);
        if (!c) return -1;
        memcpy(c, p->calls, p->n_calls * sizeof(*c));
        m.tool_calls = c;
        m.n_tool_calls = p->n_calls;
    }
    p->content.len = p->reasoning.len = 0;
    p->has_content = p->has_reasoning = false;
    p->n_calls = 0;
    p->active = false;
    return ds4p_push_msg(b, &m);
}

static int add_call(ds4p_build *b, pending *p, const ds4_chat_tool_call *c) {
    if (p->n_calls == p->cap_calls) {
        size_t cap = p->cap_calls ? p->cap_calls * 2 : 4;
        ds4_chat_tool_call *n = realloc(p->calls, cap * sizeof(*n));
        if (!n) return ds4p_oom(b->err);
        p->calls = n;
        p->cap_calls = cap;
    }
    p->calls[p->n_calls++] = *c;
    p->active = true;
    return 0;
}

static int need_string(ds4p_build *b, const cJSON *obj, const char *key, const char *item, const char **out) {
    char q[96];
    snprintf(q, sizeof(q), "%s.%s", item, key);
    int r = ds4p_get_string(b, obj, key, q, out);
    if (r < 0) return -1;
    if (r) return ds4p_fail(b->req, b->err, q, "missing");
    return 0;
}

/* Text of a list of {type, text} parts whose type is one of the given. */
static int parts_text(ds4p_build *b, const cJSON *arr, const char *type, const char *param, const char *sep,
                      ds4p_buf *out, bool *any) {
    if (!arr || cJSON_IsNull(arr)) return 0;
    if (!cJSON_IsArray(arr)) return ds4p_fail(b->req, b->err, param, "expected an array");
    const cJSON *e;
    size_t i = 0;
    cJSON_ArrayForEach(e, arr) {
        char q[128];
        snprintf(q, sizeof(q), "%s[%zu]", param, i++);
        const cJSON *t = cJSON_GetObjectItemCaseSensitive(e, "type");
        if (!cJSON_IsObject(e) || !cJSON_IsString(t) || strcmp(t->valuestring, type) != 0)
            return ds4p_fail(b->req, b->err, q, "expected a %s part", type);
        const char *text;
        if (need_string(b, e, "text", q, &text)) return -1;
        if ((*any && ds4p_buf_str(out, sep, b->err)) || ds4p_buf_str(out, text, b->err)) return -1;
        *any = true;
    }
    return 0;
}

static int item_message(ds4p_build *b, pending *p, const cJSON *it, const char *ip) {
    const char *role;
    if (need_string(b, it, "role", ip, &role)) return -1;
    char q[96];
    snprintf(q, sizeof(q), "%s.content", ip);
    bool asst = strcmp(role, "assistant") == 0;
    const char *text = NULL;
    if (ds4p_content_text(b, cJSON_GetObjectItemCaseSensitive(it, "content"), q, TEXT_PARTS, N_TEXT_PARTS,
                          asst ? "" : "\n\n", &text))
        return -1;
    if (strcmp(role, "system") == 0 || strcmp(role, "developer") == 0)
        return ds4p_add_system(b, text ? text : "", text ? strlen(text) : 0);
    if (asst) {
        if (p->n_calls && flush(b, p)) return -1;
        p->active = true;
        p->has_content = true;
        return ds4p_buf_str(&p->content, text ? text : "", b->err);
    }
    if (strcmp(role, "user") != 0) {
        snprintf(q, sizeof(q), "%s.role", ip);
        return ds4p_fail(b->req, b->err, q, "unknown role \"%s\" (user, assistant, system, developer)", role);
    }
    if (flush(b, p)) return -1;
    ds4_chat_msg m = {.role = DS4_CHAT_USER, .content = text};
    return ds4p_push_msg(b, &m);
}

static int item_reasoning(ds4p_build *b, pending *p, const cJSON *it, const char *ip) {
    if ((p->has_content || p->n_calls) && flush(b, p)) return -1;
    ds4p_buf t = {0};
    bool any = false;
    char q[96];
    snprintf(q, sizeof(q), "%s.content", ip);
    int rc = parts_text(b, cJSON_GetObjectItemCaseSensitive(it, "content"), "reasoning_text", q, "", &t, &any);
    if (rc == 0 && !any) {
        snprintf(q, sizeof(q), "%s.summary", ip);
        rc = parts_text(b, cJSON_GetObjectItemCaseSensitive(it, "summary"), "summary_text", q, "\n\n", &t, &any);
    }
    if (rc == 0 && any) {
        rc = ds4p_buf_add(&p->reasoning, t.p, t.len, b->err);
        p->has_reasoning = true;
        p->active = true;
    }
    ds4p_buf_free(&t);
    return rc;
}

static int item_call(ds4p_build *b, pending *p, const cJSON *it, const char *ip, bool custom) {
    ds4_chat_tool_call c = {0};
    char q[96];
    if (need_string(b, it, "call_id", ip, &c.id) || need_string(b, it, "name", ip, &c.name)) return -1;
    if (custom) {
        const char *input;
        if (need_string(b, it, "input", ip, &input)) return -1;
        cJSON *o = cJSON_CreateObject();
        char *s = o && cJSON_AddStringToObject(o, "input", input) ? cJSON_PrintUnformatted(o) : NULL;
        cJSON_Delete(o);
        if (!s) return ds4p_oom(b->err);
        c.arguments = ds4p_strdup(b->req, s, b->err);
        free(s);
        if (!c.arguments) return -1;
    } else {
        snprintf(q, sizeof(q), "%s.arguments", ip);
        if (ds4p_arguments(b, cJSON_GetObjectItemCaseSensitive(it, "arguments"), q, &c.arguments)) return -1;
    }
    return add_call(b, p, &c);
}

static int item_output(ds4p_build *b, pending *p, const cJSON *it, const char *ip) {
    if (flush(b, p)) return -1;
    ds4_chat_msg m = {.role = DS4_CHAT_TOOL};
    char q[96];
    if (need_string(b, it, "call_id", ip, &m.tool_call_id)) return -1;
    snprintf(q, sizeof(q), "%s.output", ip);
    const cJSON *out = cJSON_GetObjectItemCaseSensitive(it, "output");
    if (ds4p_content_text(b, out, q, TEXT_PARTS, N_TEXT_PARTS, "\n\n", &m.content)) return -1;
    return ds4p_push_msg(b, &m);
}

static int parse_input(ds4p_build *b, const cJSON *input) {
    if (cJSON_IsString(input)) {
        ds4_chat_msg m = {.role = DS4_CHAT_USER, .content = ds4p_strdup(b->req, input->valuestring, b->err)};
        return m.content ? ds4p_push_msg(b, &m) : -1;
    }
    if (!cJSON_IsArray(input)) return ds4p_fail(b->req, b->err, "input", "a string or an array of items is required");
    pending p = {0};
    size_t i = 0;
    const cJSON *it;
    int rc = 0;
    cJSON_ArrayForEach(it, input) {
        char ip[48];
        snprintf(ip, sizeof(ip), "input[%zu]", i++);
        if (!cJSON_IsObject(it)) {
            rc = ds4p_fail(b->req, b->err, ip, "expected an item object");
            break;
        }
        const char *type = NULL;
        char q[96];
        snprintf(q, sizeof(q), "%s.type", ip);
        int r = ds4p_get_string(b, it, "type", q, &type);
        if (r < 0) {
            rc = -1;
            break;
        }
        if (r) type = "message";
        if (strcmp(type, "message") == 0) rc = item_message(b, &p, it, ip);
        else if (strcmp(type, "reasoning") == 0) rc = item_reasoning(b, &p, it, ip);
        else if (strcmp(type, "function_call") == 0) rc = item_call(b, &p, it, ip, false);
        else if (strcmp(type, "custom_tool_call") == 0) rc = item_call(b, &p, it, ip, true);
        else if (strcmp(type, "function_call_output") == 0 || strcmp(type, "custom_tool_call_output") == 0)
            rc = item_output(b, &p, it, ip);
        else if (strcmp(type, "compaction") == 0 || strcmp(type, "context_compaction") == 0) rc = 0;
        else if (strcmp(type, "item_reference") == 0)
            rc = ds4p_fail(b->req, b->err, q, "item references need stored responses, which this server does not keep; "
                                               "replay the full input instead");
        else
            rc = ds4p_fail(b->req, b->err, q, "unsupported input item type \"%s\"", type);
        if (rc) break;
    }
    if (rc == 0) rc = flush(b, &p);
    pending_free(&p);
    return rc;
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
        const char *type, *name, *desc = NULL;
        if (need_string(b, t, "type", p, &type)) return -1;
        bool fn = strcmp(type, "function") == 0, custom = strcmp(type, "custom") == 0;
        if (!fn && !custom) continue; /* hosted tools cannot run here */
        if (need_string(b, t, "name", p, &name)) return -1;
        snprintf(q, sizeof(q), "%s.description", p);
        if (ds4p_get_string(b, t, "description", q, &desc) < 0) return -1;
        if (fn) {
            if (ds4p_function_schema(b, name, desc, cJSON_GetObjectItemCaseSensitive(t, "parameters"), p)) return -1;
            continue;
        }
        cJSON *params = cJSON_Parse("{\"type\":\"object\",\"properties\":{\"input\":{\"type\":\"string\","
                                    "\"description\":\"The raw input of the tool, in the format its description "
                                    "asks for.\"}},\"required\":[\"input\"]}");
        if (!params) return ds4p_oom(b->err);
        const char *n = ds4p_strdup(b->req, name, b->err);
        int rc = n ? ds4p_function_schema(b, name, desc, params, p) : -1;
        cJSON_Delete(params);
        if (rc || ds4p_push_custom(b, n)) return -1;
    }
    return 0;
}

static int parse_tool_choice(ds4p_build *b, const cJSON *body) {
    const cJSON *tc = cJSON_GetObjectItemCaseSensitive(body, "tool_choice");
    if (!tc || cJSON_IsNull(tc)) return 0;
    if (cJSON_IsString(tc) && strcmp(tc->valuestring, "auto") == 0) return 0;
    if (cJSON_IsString(tc) && strcmp(tc->valuestring, "none") == 0) {
        b->tool_choice_none = true;
        return 0;
    }
    return ds4p_fail(b->req, b->err, "tool_choice", "only \"auto\" and \"none\" are supported");
}

static int parse_reasoning(ds4p_build *b, const cJSON *body) {
    const cJSON *r = cJSON_GetObjectItemCaseSensitive(body, "reasoning");
    if (!r || cJSON_IsNull(r)) return 0;
    if (!cJSON_IsObject(r)) return ds4p_fail(b->req, b->err, "reasoning", "expected an object");
    const char *effort = NULL, *summary = NULL;
    int x = ds4p_get_string(b, r, "effort", "reasoning.effort", &effort);
    if (x < 0 || (x == 0 && ds4p_effort(b, effort, "reasoning.effort"))) return -1;
    x = ds4p_get_string(b, r, "summary", "reasoning.summary", &summary);
    if (x < 0) return -1;
    if (x == 0) {
        if (strcmp(summary, "auto") == 0 || strcmp(summary, "concise") == 0 || strcmp(summary, "detailed") == 0)
            b->req->reasoning_summary = true;
        else if (strcmp(summary, "none") != 0)
            return ds4p_fail(b->req, b->err, "reasoning.summary", "unknown value \"%s\" (auto, concise, detailed, none)",
                             summary);
    }
    return 0;
}

int ds4_responses_parse(const cJSON *body, ds4_gen_request *req, ds4_error *err) {
    ds4p_build b;
    ds4p_build_init(&b, req, DS4_PROTO_RESPONSES, err);
    static const char *const max_keys[] = {"max_output_tokens", "max_tokens"};
    int rc = -1;
    if (!cJSON_IsObject(body)) {
        ds4p_fail(req, err, NULL, "the request body must be a JSON object");
        goto out;
    }
    static const char *const stored[] = {"previous_response_id", "conversation"};
    for (size_t i = 0; i < 2; i++) {
        const cJSON *v = cJSON_GetObjectItemCaseSensitive(body, stored[i]);
        if (v && !cJSON_IsNull(v)) {
            ds4p_fail(req, err, stored[i], "not supported: this server stores no responses; replay the full input instead");
            goto out;
        }
    }
    const char *instr = NULL;
    int r = ds4p_get_string(&b, body, "instructions", "instructions", &instr);
    if (r < 0 || (r == 0 && ds4p_add_system(&b, instr, strlen(instr)))) goto out;
    const cJSON *input = cJSON_GetObjectItemCaseSensitive(body, "input");
    if (!input || cJSON_IsNull(input)) {
        ds4p_fail(req, err, "input", "required");
        goto out;
    }
    if (parse_input(&b, input) || ds4p_common_model(&b, body) || parse_tools(&b, body) ||
        parse_tool_choice(&b, body) || parse_reasoning(&b, body) || ds4p_common_sampling(&b, body, true) ||
        ds4p_common_max_tokens(&b, body, max_keys, 2) || ds4p_common_stream(&b, body, false))
        goto out;
    if (b.n_msgs == 0) {
        ds4p_fail(req, err, "input", "no message to answer");
        goto out;
    }
    rc = ds4p_finish(&b);
out:
    ds4p_build_free(&b);
    return rc;
}

/* ------------------------------------------------------------------ */
/* Output                                                              */
/* ------------------------------------------------------------------ */

static cJSON *event(ds4_proto_out *o, const char *type) {
    cJSON *j = cJSON_CreateObject();
    if (!j) return NULL;
    if (!cJSON_AddStringToObject(j, "type", type) || !cJSON_AddNumberToObject(j, "sequence_number", (double)o->seq_no++)) {
        cJSON_Delete(j);
        return NULL;
    }
    return j;
}

static int emit_ev(ds4_proto_out *o, cJSON *j, ds4_error *err) {
    if (!j) return ds4p_oom(err);
    cJSON *t = cJSON_GetObjectItemCaseSensitive(j, "type");
    int rc = ds4p_sse(o, t->valuestring, j, err);
    cJSON_Delete(j);
    return rc;
}

static bool add_str_n(cJSON *o, const char *key, const char *s, size_t n) {
    cJSON *v = ds4p_str_n(s ? s : "", s ? n : 0);
    if (!v) return false;
    cJSON_AddItemToObject(o, key, v);
    return true;
}

static cJSON *usage_json(const ds4_gen_usage *u) {
    cJSON *j = cJSON_CreateObject(), *d = cJSON_CreateObject(), *od = cJSON_CreateObject();
    uint32_t cached = u->cached_tokens > u->prompt_tokens ? u->prompt_tokens : u->cached_tokens;
    if (!j || !d || !od || !cJSON_AddNumberToObject(j, "input_tokens", u->prompt_tokens) ||
        !cJSON_AddNumberToObject(d, "cached_tokens", cached) ||
        !cJSON_AddNumberToObject(d, "cache_write_tokens", u->prompt_tokens - cached) ||
        !cJSON_AddNumberToObject(j, "output_tokens", u->completion_tokens) ||
        !cJSON_AddNumberToObject(od, "reasoning_tokens", u->reasoning_tokens) ||
        !cJSON_AddNumberToObject(j, "total_tokens", (double)u->prompt_tokens + u->completion_tokens)) {
        cJSON_Delete(j);
        cJSON_Delete(d);
        cJSON_Delete(od);
        return NULL;
    }
    cJSON_AddItemToObject(j, "input_tokens_details", d);
    cJSON_AddItemToObject(j, "output_tokens_details", od);
    return j;
}

/* Items, in their final form when done. */
static cJSON *reasoning_item(ds4_proto_out *o, bool done) {
    cJSON *it = cJSON_CreateObject(), *sum = NULL;
    bool ok = it && cJSON_AddStringToObject(it, "id", o->rs_id) && cJSON_AddStringToObject(it, "type", "reasoning") &&
              (sum = cJSON_AddArrayToObject(it, "summary"));
    if (ok && done) {
        cJSON *part = cJSON_CreateObject();
        ok = part != NULL;
        if (ok) cJSON_AddItemToArray(sum, part);
        ok = ok && cJSON_AddStringToObject(part, "type", "summary_text") &&
             add_str_n(part, "text", o->reasoning.p, o->reasoning.len) &&
             cJSON_AddStringToObject(it, "status", o->reasoning_done ? "completed" : "incomplete");
    }
    if (!ok) {
        cJSON_Delete(it);
        return NULL;
    }
    return it;
}

static cJSON *text_part(const char *text, size_t len) {
    cJSON *p = cJSON_CreateObject();
    if (!p || !cJSON_AddStringToObject(p, "type", "output_text") || !add_str_n(p, "text", text, len) ||
        !cJSON_AddArrayToObject(p, "annotations") || !cJSON_AddArrayToObject(p, "logprobs")) {
        cJSON_Delete(p);
        return NULL;
    }
    return p;
}

static cJSON *message_item(ds4_proto_out *o, bool done) {
    cJSON *it = cJSON_CreateObject(), *content = NULL;
    bool ok = it && cJSON_AddStringToObject(it, "id", o->msg_id) && cJSON_AddStringToObject(it, "type", "message") &&
              cJSON_AddStringToObject(it, "status", done ? "completed" : "in_progress") &&
              cJSON_AddStringToObject(it, "role", "assistant") && (content = cJSON_AddArrayToObject(it, "content"));
    if (ok && done) {
        cJSON *p = text_part(o->content.p, o->content.len);
        ok = p != NULL;
        if (ok) cJSON_AddItemToArray(content, p);
    }
    if (!ok) {
        cJSON_Delete(it);
        return NULL;
    }
    return it;
}

/* The input of a custom tool call: the "input" string of its arguments,
 * else the arguments text. */
static char *custom_input(const ds4p_call *c) {
    cJSON *a = cJSON_Parse(c->args.p ? c->args.p : "");
    const cJSON *in = a ? cJSON_GetObjectItemCaseSensitive(a, "input") : NULL;
    const char *src = cJSON_IsString(in) ? in->valuestring : c->args.p ? c->args.p : "";
    size_t n = strlen(src);
    char *s = malloc(n + 1);
    if (s) memcpy(s, src, n + 1);
    cJSON_Delete(a);
    return s;
}

static cJSON *call_item(const ds4p_call *c, bool done) {
    cJSON *it = cJSON_CreateObject();
    bool ok = it && cJSON_AddStringToObject(it, "id", c->item_id) &&
              cJSON_AddStringToObject(it, "type", c->custom ? "custom_tool_call" : "function_call") &&
              cJSON_AddStringToObject(it, "status", done ? "completed" : "in_progress") &&
              cJSON_AddStringToObject(it, "call_id", c->id) && cJSON_AddStringToObject(it, "name", c->name);
    if (ok && c->custom) {
        char *in = done ? custom_input(c) : NULL;
        ok = (done ? in != NULL : true) && cJSON_AddStringToObject(it, "input", in ? in : "");
        free(in);
    } else if (ok) {
        ok = done ? add_str_n(it, "arguments", c->args.p, c->args.len) : cJSON_AddStringToObject(it, "arguments", "") != NULL;
    }
    if (!ok) {
        cJSON_Delete(it);
        return NULL;
    }
    return it;
}

/* Output items in output_index order. */
static cJSON *output_array(ds4_proto_out *o) {
    cJSON *arr = cJSON_CreateArray();
    if (!arr) return NULL;
    for (uint32_t s = 0; s < o->n_slots; s++) {
        cJSON *it = NULL;
        if (o->reasoning_opened && o->reasoning_slot == s) it = reasoning_item(o, true);
        else if (o->text_opened && o->text_slot == s) it = message_item(o, true);
        else
            for (size_t i = 0; i < o->n_calls; i++)
                if (o->calls[i].slot == s) it = call_item(&o->calls[i], true);
        if (!it) {
            cJSON_Delete(arr);
            return NULL;
        }
        cJSON_AddItemToArray(arr, it);
    }
    return arr;
}

static cJSON *response_obj(ds4_proto_out *o, const char *status, bool final) {
    const ds4_gen_request *rq = o->req;
    cJSON *j = cJSON_CreateObject(), *x = NULL;
    bool ok = j && cJSON_AddStringToObject(j, "id", o->id) && cJSON_AddStringToObject(j, "object", "response") &&
              cJSON_AddNumberToObject(j, "created_at", (double)o->o.created) &&
              cJSON_AddStringToObject(j, "status", status) && cJSON_AddStringToObject(j, "model", rq->model) &&
              cJSON_AddNullToObject(j, "instructions") && cJSON_AddNullToObject(j, "previous_response_id") &&
              cJSON_AddTrueToObject(j, "parallel_tool_calls") && cJSON_AddFalseToObject(j, "store") &&
              cJSON_AddNumberToObject(j, "temperature", rq->sampling.temperature) &&
              cJSON_AddNumberToObject(j, "top_p", rq->sampling.top_p) &&
              cJSON_AddStringToObject(j, "tool_choice", rq->n_tools ? "auto" : "none") &&
              cJSON_AddArrayToObject(j, "tools") && cJSON_AddStringToObject(j, "truncation", "disabled") &&
              cJSON_AddObjectToObject(j, "metadata") && (x = cJSON_AddObjectToObject(j, "text")) &&
              (x = cJSON_AddObjectToObject(x, "format")) && cJSON_AddStringToObject(x, "type", "text") &&
              (x = cJSON_AddObjectToObject(j, "reasoning")) &&
              (rq->think == DS4_THINK_NONE ? cJSON_AddStringToObject(x, "effort", "none") != NULL
                                           : cJSON_AddStringToObject(x, "effort", rq->think == DS4_THINK_MAX ? "max" : "high") != NULL) &&
              (rq->reasoning_summary ? cJSON_AddStringToObject(x, "summary", "auto") != NULL
                                     : cJSON_AddNullToObject(x, "summary") != NULL) &&
              (rq->max_tokens ? cJSON_AddNumberToObject(j, "max_output_tokens", rq->max_tokens) != NULL
                              : cJSON_AddNullToObject(j, "max_output_tokens") != NULL);
    if (!ok) goto fail;
    /* error and incomplete_details */
    if (final && o->failed) {
        cJSON *e = cJSON_AddObjectToObject(j, "error");
        if (!e || !cJSON_AddStringToObject(e, "code", "server_error") ||
            !cJSON_AddStringToObject(e, "message", o->err_msg ? o->err_msg : "generation failed"))
            goto fail;
    } else if (!cJSON_AddNullToObject(j, "error")) {
        goto fail;
    }
    if (final && !o->failed && o->finish == DS4_FINISH_LENGTH) {
        cJSON *d = cJSON_AddObjectToObject(j, "incomplete_details");
        if (!d || !cJSON_AddStringToObject(d, "reason", "max_output_tokens")) goto fail;
    } else if (!cJSON_AddNullToObject(j, "incomplete_details")) {
        goto fail;
    }
    cJSON *out = final ? output_array(o) : cJSON_CreateArray();
    if (!out) goto fail;
    cJSON_AddItemToObject(j, "output", out);
    if (final && !o->failed) {
        cJSON *u = usage_json(&o->usage);
        if (!u) goto fail;
        cJSON_AddItemToObject(j, "usage", u);
    } else if (!cJSON_AddNullToObject(j, "usage")) {
        goto fail;
    }
    return j;
fail:
    cJSON_Delete(j);
    return NULL;
}

static int item_event(ds4_proto_out *o, const char *type, uint32_t slot, cJSON *item, ds4_error *err) {
    if (!item) return ds4p_oom(err);
    cJSON *e = event(o, type);
    if (!e || !cJSON_AddNumberToObject(e, "output_index", slot)) {
        cJSON_Delete(e);
        cJSON_Delete(item);
        return ds4p_oom(err);
    }
    cJSON_AddItemToObject(e, "item", item);
    return emit_ev(o, e, err);
}

/* {type, sequence_number, item_id, output_index, [extra index key]} */
static cJSON *sub_event(ds4_proto_out *o, const char *type, const char *item_id, uint32_t slot, const char *ikey) {
    cJSON *e = event(o, type);
    if (!e || !cJSON_AddStringToObject(e, "item_id", item_id) || !cJSON_AddNumberToObject(e, "output_index", slot) ||
        (ikey && !cJSON_AddNumberToObject(e, ikey, 0))) {
        cJSON_Delete(e);
        return NULL;
    }
    return e;
}

static int new_id(char *out, size_t cap, const char *prefix, ds4_error *err) {
    char hex[25];
    if (ds4_random_hex(hex, 24, err)) return -1;
    snprintf(out, cap, "%s%s", prefix, hex);
    return 0;
}

static int close_reasoning(ds4_proto_out *o, ds4_error *err) {
    uint32_t s = o->reasoning_slot;
    cJSON *e = sub_event(o, "response.reasoning_summary_text.done", o->rs_id, s, "summary_index");
    if (!e || !add_str_n(e, "text", o->reasoning.p, o->reasoning.len)) {
        cJSON_Delete(e);
        return ds4p_oom(err);
    }
    if (emit_ev(o, e, err)) return -1;
    e = sub_event(o, "response.reasoning_summary_part.done", o->rs_id, s, "summary_index");
    cJSON *part = e ? cJSON_AddObjectToObject(e, "part") : NULL;
    if (!part || !cJSON_AddStringToObject(part, "type", "summary_text") ||
        !add_str_n(part, "text", o->reasoning.p, o->reasoning.len)) {
        cJSON_Delete(e);
        return ds4p_oom(err);
    }
    if (emit_ev(o, e, err)) return -1;
    return item_event(o, "response.output_item.done", s, reasoning_item(o, true), err);
}

static int close_text(ds4_proto_out *o, ds4_error *err) {
    uint32_t s = o->text_slot;
    cJSON *e = sub_event(o, "response.output_text.done", o->msg_id, s, "content_index");
    if (!e || !add_str_n(e, "text", o->content.p, o->content.len) || !cJSON_AddArrayToObject(e, "logprobs")) {
        cJSON_Delete(e);
        return ds4p_oom(err);
    }
    if (emit_ev(o, e, err)) return -1;
    e = sub_event(o, "response.content_part.done", o->msg_id, s, "content_index");
    cJSON *part = e ? text_part(o->content.p, o->content.len) : NULL;
    if (!part) {
        cJSON_Delete(e);
        return ds4p_oom(err);
    }
    cJSON_AddItemToObject(e, "part", part);
    if (emit_ev(o, e, err)) return -1;
    return item_event(o, "response.output_item.done", s, message_item(o, true), err);
}

static int close_call(ds4_proto_out *o, ds4p_call *c, ds4_error *err) {
    cJSON *e;
    if (c->custom) {
        char *in = custom_input(c);
        if (!in) return ds4p_oom(err);
        static const char *const kinds[2][2] = {{"response.custom_tool_call_input.delta", "delta"},
                                                {"response.custom_tool_call_input.done", "input"}};
        for (int k = 0; k < 2; k++) {
            e = sub_event(o, kinds[k][0], c->item_id, c->slot, NULL);
            if (!e || !cJSON_AddStringToObject(e, kinds[k][1], in)) {
                cJSON_Delete(e);
                free(in);
                return ds4p_oom(err);
            }
            if (emit_ev(o, e, err)) {
                free(in);
                return -1;
            }
        }
        free(in);
    } else {
        e = sub_event(o, "response.function_call_arguments.done", c->item_id, c->slot, NULL);
        if (!e || !cJSON_AddStringToObject(e, "name", c->name) || !add_str_n(e, "arguments", c->args.p, c->args.len)) {
            cJSON_Delete(e);
            return ds4p_oom(err);
        }
        if (emit_ev(o, e, err)) return -1;
    }
    return item_event(o, "response.output_item.done", c->slot, call_item(c, true), err);
}

/* Close whatever item is open. */
static int close_open(ds4_proto_out *o, ds4_error *err) {
    enum ds4p_open open = o->open;
    o->open = DS4P_OPEN_NONE;
    switch (open) {
    case DS4P_OPEN_REASONING: return close_reasoning(o, err);
    case DS4P_OPEN_TEXT: return close_text(o, err);
    case DS4P_OPEN_TOOL: return close_call(o, &o->calls[o->n_calls - 1], err);
    default: return 0;
    }
}

static int open_text(ds4_proto_out *o, ds4_error *err) {
    if (close_open(o, err)) return -1;
    o->text_opened = true;
    o->text_slot = o->n_slots++;
    o->open = DS4P_OPEN_TEXT;
    if (new_id(o->msg_id, sizeof(o->msg_id), "msg_", err)) return -1;
    if (item_event(o, "response.output_item.added", o->text_slot, message_item(o, false), err)) return -1;
    cJSON *e = sub_event(o, "response.content_part.added", o->msg_id, o->text_slot, "content_index");
    cJSON *part = e ? text_part("", 0) : NULL;
    if (!part) {
        cJSON_Delete(e);
        return ds4p_oom(err);
    }
    cJSON_AddItemToObject(e, "part", part);
    return emit_ev(o, e, err);
}

static int lifecycle(ds4_proto_out *o, const char *type, const char *status, bool final, ds4_error *err) {
    cJSON *e = event(o, type);
    cJSON *r = e ? response_obj(o, status, final) : NULL;
    if (!r) {
        cJSON_Delete(e);
        return ds4p_oom(err);
    }
    cJSON_AddItemToObject(e, "response", r);
    return emit_ev(o, e, err);
}

int ds4p_responses_event(ds4_proto_out *o, const ds4_gen_event *ev, ds4_error *err) {
    switch (ev->type) {
    case DS4_EV_BEGIN:
        return lifecycle(o, "response.created", "in_progress", false, err) ||
                       lifecycle(o, "response.in_progress", "in_progress", false, err)
                   ? -1
                   : 0;
    case DS4_EV_REASONING: {
        if (!o->req->reasoning_summary) return 0;
        if (!o->reasoning_opened) {
            if (o->text_opened || o->n_calls) return ds4_fail(err, "reasoning after the answer began");
            o->reasoning_opened = true;
            o->reasoning_slot = o->n_slots++;
            o->open = DS4P_OPEN_REASONING;
            if (new_id(o->rs_id, sizeof(o->rs_id), "rs_", err) ||
                item_event(o, "response.output_item.added", o->reasoning_slot, reasoning_item(o, false), err))
                return -1;
            cJSON *e = sub_event(o, "response.reasoning_summary_part.added", o->rs_id, o->reasoning_slot, "summary_index");
            cJSON *part = e ? cJSON_AddObjectToObject(e, "part") : NULL;
            if (!part || !cJSON_AddStringToObject(part, "type", "summary_text") || !cJSON_AddStringToObject(part, "text", "")) {
                cJSON_Delete(e);
                return ds4p_oom(err);
            }
            if (emit_ev(o, e, err)) return -1;
        }
        cJSON *e = sub_event(o, "response.reasoning_summary_text.delta", o->rs_id, o->reasoning_slot, "summary_index");
        if (!e || !add_str_n(e, "delta", ev->text, ev->len)) {
            cJSON_Delete(e);
            return ds4p_oom(err);
        }
        return emit_ev(o, e, err);
    }
    case DS4_EV_REASONING_END: return o->open == DS4P_OPEN_REASONING ? close_open(o, err) : 0;
    case DS4_EV_CONTENT: {
        if (o->open != DS4P_OPEN_TEXT) {
            if (o->text_opened) return ds4_fail(err, "answer text after a tool call");
            if (open_text(o, err)) return -1;
        }
        cJSON *e = sub_event(o, "response.output_text.delta", o->msg_id, o->text_slot, "content_index");
        if (!e || !add_str_n(e, "delta", ev->text, ev->len) || !cJSON_AddArrayToObject(e, "logprobs")) {
            cJSON_Delete(e);
            return ds4p_oom(err);
        }
        return emit_ev(o, e, err);
    }
    case DS4_EV_TOOL_START: {
        if (close_open(o, err)) return -1;
        ds4p_call *c = &o->calls[ev->index];
        c->slot = o->n_slots++;
        if (new_id(c->item_id, sizeof(c->item_id), c->custom ? "ctc_" : "fc_", err)) return -1;
        o->open = DS4P_OPEN_TOOL;
        return item_event(o, "response.output_item.added", c->slot, call_item(c, false), err);
    }
    case DS4_EV_TOOL_ARGS: {
        ds4p_call *c = &o->calls[ev->index];
        if (c->custom) return 0;
        cJSON *e = sub_event(o, "response.function_call_arguments.delta", c->item_id, c->slot, NULL);
        if (!e || !add_str_n(e, "delta", ev->text, ev->len)) {
            cJSON_Delete(e);
            return ds4p_oom(err);
        }
        return emit_ev(o, e, err);
    }
    case DS4_EV_TOOL_END: return o->open == DS4P_OPEN_TOOL ? close_open(o, err) : 0;
    case DS4_EV_FINISH:
        if (close_open(o, err)) return -1;
        if (!o->text_opened && o->n_calls == 0) {
            /* Always answer with a message, even an empty one. */
            if (open_text(o, err) || close_open(o, err)) return -1;
        }
        if (o->finish == DS4_FINISH_LENGTH) return lifecycle(o, "response.incomplete", "incomplete", true, err);
        return lifecycle(o, "response.completed", "completed", true, err);
    case DS4_EV_ERROR:
        if (!o->began) {
            cJSON *e = event(o, "error");
            if (!e || !cJSON_AddStringToObject(e, "code", o->err_code ? o->err_code : "server_error") ||
                !cJSON_AddStringToObject(e, "message", o->err_msg) || !cJSON_AddNullToObject(e, "param")) {
                cJSON_Delete(e);
                return ds4p_oom(err);
            }
            return emit_ev(o, e, err);
        }
        if (close_open(o, err)) return -1;
        return lifecycle(o, "response.failed", "failed", true, err);
    }
    return 0;
}

int ds4p_responses_reply(ds4_proto_out *o, cJSON **body, ds4_error *err) {
    *body = response_obj(o, o->finish == DS4_FINISH_LENGTH ? "incomplete" : "completed", true);
    return *body ? 0 : ds4p_oom(err);
}
