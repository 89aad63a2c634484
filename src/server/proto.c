/* proto.c - what the protocol translators share (see proto.h): the request
 * arena and builder, field readers with named errors, thinking and
 * sampling resolution, prompt rendering, exact DSML replay, error bodies,
 * and the ds4_proto_out core that accumulates events and hands them to the
 * protocol's writer.
 *
 * Design.  A request is parsed in one pass into a ds4p_build (growable
 * arrays, the merged system text); ds4p_finish moves everything into the
 * request's arena, so a ds4_gen_request is one flat, read-only object
 * freed at once.  Every string it points to lives in that arena.
 *
 * The output core checks the event order (BEGIN first, FINISH or ERROR
 * last), accumulates reasoning, content and tool calls for the final body,
 * and then calls the protocol writer, which may read the accumulated state
 * (Responses' completed event carries the whole output).
 */
#include "server/proto.h"

#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>

/* ------------------------------------------------------------------ */
/* Buffers                                                             */
/* ------------------------------------------------------------------ */

static int buf_reserve(ds4p_buf *b, size_t extra, ds4_error *err) {
    if (extra > SIZE_MAX / 4 - b->len) return ds4_fail(err, "text too large");
    size_t need = b->len + extra + 1;
    if (need <= b->cap) return 0;
    size_t cap = b->cap ? b->cap : 64;
    while (cap < need) cap *= 2;
    char *p = realloc(b->p, cap);
    if (!p) return ds4_fail(err, "out of memory (%zu bytes)", cap);
    b->p = p;
    b->cap = cap;
    return 0;
}

int ds4p_buf_add(ds4p_buf *b, const char *s, size_t n, ds4_error *err) {
    if (buf_reserve(b, n, err)) return -1;
    if (n) memcpy(b->p + b->len, s, n);
    b->len += n;
    b->p[b->len] = '\0';
    return 0;
}

int ds4p_buf_str(ds4p_buf *b, const char *s, ds4_error *err) { return ds4p_buf_add(b, s, strlen(s), err); }

void ds4p_buf_free(ds4p_buf *b) {
    free(b->p);
    memset(b, 0, sizeof(*b));
}

/* Length of the valid UTF-8 sequence at s[0..n), 0 if invalid. */
static size_t utf8_len(const unsigned char *s, size_t n) {
    unsigned char c = s[0];
    if (c < 0x80) return 1;
    size_t len;
    unsigned char lo = 0x80, hi = 0xBF;
    if (c >= 0xC2 && c <= 0xDF) len = 2;
    else if (c == 0xE0) len = 3, lo = 0xA0;
    else if ((c >= 0xE1 && c <= 0xEC) || c == 0xEE || c == 0xEF) len = 3;
    else if (c == 0xED) len = 3, hi = 0x9F;
    else if (c == 0xF0) len = 4, lo = 0x90;
    else if (c >= 0xF1 && c <= 0xF3) len = 4;
    else if (c == 0xF4) len = 4, hi = 0x8F;
    else return 0;
    if (n < len || s[1] < lo || s[1] > hi) return 0;
    for (size_t i = 2; i < len; i++)
        if (s[i] < 0x80 || s[i] > 0xBF) return 0;
    return len;
}

int ds4p_buf_utf8(ds4p_buf *b, const char *s, size_t n, ds4_error *err) {
    const unsigned char *u = (const unsigned char *)s;
    size_t run = 0, i = 0;
    while (i < n) {
        size_t k = utf8_len(u + i, n - i);
        if (k) {
            i += k;
            continue;
        }
        if (ds4p_buf_add(b, s + run, i - run, err) || ds4p_buf_str(b, "\xEF\xBF\xBD", err)) return -1;
        i++;
        run = i;
    }
    return ds4p_buf_add(b, s + run, n - run, err);
}

int ds4p_buf_json_esc(ds4p_buf *b, const char *s, size_t n, ds4_error *err) {
    size_t run = 0;
    for (size_t i = 0; i < n; i++) {
        unsigned char ch = (unsigned char)s[i];
        char ubuf[8];
        const char *esc = ds4_chat_json_escape(ch, ubuf);
        if (!esc) continue;
        if (ds4p_buf_add(b, s + run, i - run, err) || ds4p_buf_str(b, esc, err)) return -1;
        run = i + 1;
    }
    return ds4p_buf_add(b, s + run, n - run, err);
}

/* ------------------------------------------------------------------ */
/* Arena                                                               */
/* ------------------------------------------------------------------ */

typedef struct anode {
    struct anode *next;
    max_align_t mem[];
} anode;

struct ds4_arena {
    anode *head;
};

void *ds4p_alloc(ds4_gen_request *req, size_t size, ds4_error *err) {
    if (!req->arena) {
        req->arena = calloc(1, sizeof(*req->arena));
        if (!req->arena) return ds4_fail(err, "out of memory"), NULL;
    }
    if (size > SIZE_MAX / 2) return ds4_fail(err, "request too large"), NULL;
    anode *n = malloc(sizeof(anode) + (size ? size : 1));
    if (!n) return ds4_fail(err, "out of memory (%zu bytes)", size), NULL;
    n->next = req->arena->head;
    req->arena->head = n;
    return n->mem;
}

char *ds4p_strndup(ds4_gen_request *req, const char *s, size_t n, ds4_error *err) {
    char *p = ds4p_alloc(req, n + 1, err);
    if (!p) return NULL;
    if (n) memcpy(p, s, n);
    p[n] = '\0';
    return p;
}

char *ds4p_strdup(ds4_gen_request *req, const char *s, ds4_error *err) { return ds4p_strndup(req, s, strlen(s), err); }

void ds4_gen_request_free(ds4_gen_request *req) {
    if (!req) return;
    if (req->arena) {
        anode *n = req->arena->head;
        while (n) {
            anode *next = n->next;
            free(n);
            n = next;
        }
        free(req->arena);
    }
    memset(req, 0, sizeof(*req));
}

int ds4p_fail(ds4_gen_request *req, ds4_error *err, const char *param, const char *fmt, ...) {
    char msg[768];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    if (param && *param) {
        snprintf(req->err_param, sizeof(req->err_param), "%s", param);
        return ds4_fail(err, "%s: %s", param, msg);
    }
    req->err_param[0] = '\0';
    return ds4_fail(err, "%s", msg);
}

/* ------------------------------------------------------------------ */
/* Builder                                                             */
/* ------------------------------------------------------------------ */

void ds4p_build_init(ds4p_build *b, ds4_gen_request *req, enum ds4_proto proto, ds4_error *err) {
    memset(req, 0, sizeof(*req));
    memset(b, 0, sizeof(*b));
    b->req = req;
    b->err = err;
    req->proto = proto;
    req->model = DS4_MODEL_ID;
    req->think = DS4_THINK_HIGH;
    ds4_sampler_default_params(&req->sampling);
    req->id_prefix = proto == DS4_PROTO_ANTHROPIC ? "toolu_" : "call_";
}

void ds4p_build_free(ds4p_build *b) {
    ds4p_buf_free(&b->system);
    free(b->msgs);
    free(b->tools);
    free(b->custom);
    b->msgs = NULL;
    b->tools = NULL;
    b->custom = NULL;
}

static int grow(void **p, size_t *cap, size_t n, size_t elem, ds4_error *err) {
    if (n < *cap) return 0;
    size_t c = *cap ? *cap * 2 : 8;
    void *q = realloc(*p, c * elem);
    if (!q) return ds4_fail(err, "out of memory");
    *p = q;
    *cap = c;
    return 0;
}

int ds4p_add_system(ds4p_build *b, const char *text, size_t len) {
    if (!text) return 0;
    if (b->has_system && b->system.len && len && ds4p_buf_str(&b->system, "\n\n", b->err)) return -1;
    b->has_system = true;
    return ds4p_buf_add(&b->system, text, len, b->err);
}

int ds4p_push_msg(ds4p_build *b, const ds4_chat_msg *m) {
    if (grow((void **)&b->msgs, &b->cap_msgs, b->n_msgs, sizeof(*b->msgs), b->err)) return -1;
    b->msgs[b->n_msgs++] = *m;
    return 0;
}

int ds4p_push_tool(ds4p_build *b, const char *schema_json) {
    if (grow((void **)&b->tools, &b->cap_tools, b->n_tools, sizeof(*b->tools), b->err)) return -1;
    b->tools[b->n_tools++] = schema_json;
    return 0;
}

int ds4p_push_custom(ds4p_build *b, const char *name) {
    if (grow((void **)&b->custom, &b->cap_custom, b->n_custom, sizeof(*b->custom), b->err)) return -1;
    b->custom[b->n_custom++] = name;
    return 0;
}

static bool has_call_id(const ds4_chat_msg *msgs, size_t upto, const char *id) {
    for (size_t i = 0; i < upto; i++)
        for (size_t k = 0; k < msgs[i].n_tool_calls; k++)
            if (msgs[i].tool_calls[k].id && strcmp(msgs[i].tool_calls[k].id, id) == 0) return true;
    return false;
}

int ds4p_finish(ds4p_build *b) {
    ds4_gen_request *req = b->req;
    size_t n = b->n_msgs + (b->has_system && b->system.len ? 1 : 0);
    ds4_chat_msg *msgs = ds4p_alloc(req, (n ? n : 1) * sizeof(*msgs), b->err);
    if (!msgs) return -1;
    size_t o = 0;
    if (n > b->n_msgs) {
        const char *sys = ds4p_strndup(req, b->system.p, b->system.len, b->err);
        if (!sys) return -1;
        msgs[o++] = (ds4_chat_msg){.role = DS4_CHAT_SYSTEM, .content = sys};
    }
    if (b->n_msgs) memcpy(msgs + o, b->msgs, b->n_msgs * sizeof(*msgs));
    req->msgs = msgs;
    req->n_msgs = n;
    for (size_t i = 0; i < n; i++)
        if (msgs[i].role == DS4_CHAT_TOOL && msgs[i].tool_call_id && !has_call_id(msgs, i, msgs[i].tool_call_id))
            req->orphan_tool_results = true;

    if (!b->tool_choice_none && b->n_tools) {
        const char **t = ds4p_alloc(req, b->n_tools * sizeof(*t), b->err);
        if (!t) return -1;
        memcpy(t, b->tools, b->n_tools * sizeof(*t));
        req->tools = t;
        req->n_tools = b->n_tools;
    }
    if (!b->tool_choice_none && b->n_custom) {
        const char **t = ds4p_alloc(req, b->n_custom * sizeof(*t), b->err);
        if (!t) return -1;
        memcpy(t, b->custom, b->n_custom * sizeof(*t));
        req->custom_tools = t;
        req->n_custom_tools = b->n_custom;
    }

    /* Thinking: an explicit "off" wins, then max, then an explicit "on",
     * then the model alias, then ds4's default (high). */
    enum ds4_think_mode think = DS4_THINK_HIGH;
    if (b->think_explicit < 0 || b->effort < 0) think = DS4_THINK_NONE;
    else if (b->effort == 2) think = DS4_THINK_MAX;
    else if (b->think_explicit > 0 || b->effort > 0) think = DS4_THINK_HIGH;
    else if (b->model_think < 0) think = DS4_THINK_NONE;
    req->think = think;
    if (think != DS4_THINK_NONE) req->sampling = ds4_sampler_thinking_params(&req->sampling);
    ds4_error e = {{0}};
    if (ds4_sampler_params_check(&req->sampling, &e)) return ds4p_fail(req, b->err, NULL, "%s", e.msg);
    return 0;
}

/* ------------------------------------------------------------------ */
/* Field readers                                                       */
/* ------------------------------------------------------------------ */

int ds4p_get_string(ds4p_build *b, const cJSON *obj, const char *key, const char *param, const char **out) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, key);
    if (!v || cJSON_IsNull(v)) return 1;
    if (!cJSON_IsString(v)) return ds4p_fail(b->req, b->err, param, "expected a string");
    *out = ds4p_strdup(b->req, v->valuestring, b->err);
    return *out ? 0 : -1;
}

int ds4p_get_bool(ds4p_build *b, const cJSON *obj, const char *key, const char *param, bool *out) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, key);
    if (!v || cJSON_IsNull(v)) return 1;
    if (!cJSON_IsBool(v)) return ds4p_fail(b->req, b->err, param, "expected true or false");
    *out = cJSON_IsTrue(v);
    return 0;
}

int ds4p_get_number(ds4p_build *b, const cJSON *obj, const char *key, const char *param, double *out) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, key);
    if (!v || cJSON_IsNull(v)) return 1;
    if (!cJSON_IsNumber(v) || !isfinite(v->valuedouble)) return ds4p_fail(b->req, b->err, param, "expected a number");
    *out = v->valuedouble;
    return 0;
}

int ds4p_common_model(ds4p_build *b, const cJSON *body) {
    const char *model = NULL;
    int r = ds4p_get_string(b, body, "model", "model", &model);
    if (r < 0) return -1;
    if (r == 0 && *model) {
        if (!(b->req->model = ds4p_strdup(b->req, model, b->err))) return -1;
        if (strcmp(model, "deepseek-chat") == 0) b->model_think = -1;
        if (strcmp(model, "deepseek-reasoner") == 0) b->model_think = 1;
    }
    return 0;
}

int ds4p_common_sampling(ds4p_build *b, const cJSON *body, bool min_p_seed) {
    ds4_sampler_params *s = &b->req->sampling;
    double v;
    int r;
    if ((r = ds4p_get_number(b, body, "temperature", "temperature", &v)) < 0) return -1;
    if (r == 0) {
        if (v < 0 || v > 100) return ds4p_fail(b->req, b->err, "temperature", "must be between 0 and 100 (got %g)", v);
        s->temperature = (float)v;
    }
    if ((r = ds4p_get_number(b, body, "top_p", "top_p", &v)) < 0) return -1;
    if (r == 0) {
        if (!(v > 0 && v <= 1)) return ds4p_fail(b->req, b->err, "top_p", "must be in (0, 1] (got %g)", v);
        s->top_p = (float)v;
    }
    if ((r = ds4p_get_number(b, body, "top_k", "top_k", &v)) < 0) return -1;
    if (r == 0) {
        if (v < 0 || v != floor(v)) return ds4p_fail(b->req, b->err, "top_k", "must be a non-negative integer (got %g)", v);
        s->top_k = v > DS4_TOP_K_MAX ? DS4_TOP_K_MAX : (uint32_t)v;
    }
    if (!min_p_seed) return 0;
    if ((r = ds4p_get_number(b, body, "min_p", "min_p", &v)) < 0) return -1;
    if (r == 0) {
        if (v < 0 || v > 1) return ds4p_fail(b->req, b->err, "min_p", "must be in [0, 1] (got %g)", v);
        s->min_p = (float)v;
    }
    if ((r = ds4p_get_number(b, body, "seed", "seed", &v)) < 0) return -1;
    if (r == 0) {
        if (v != floor(v) || fabs(v) > 18446744073709551615.0)
            return ds4p_fail(b->req, b->err, "seed", "must be an integer (got %g)", v);
        s->seed = v < 0 ? (uint64_t)(int64_t)v : (uint64_t)v;
        b->req->seed_set = true;
    }
    return 0;
}

int ds4p_common_max_tokens(ds4p_build *b, const cJSON *body, const char *const *keys, size_t n_keys) {
    for (size_t i = 0; i < n_keys; i++) {
        double v;
        int r = ds4p_get_number(b, body, keys[i], keys[i], &v);
        if (r < 0) return -1;
        if (r) continue;
        if (v < 1 || v != floor(v)) return ds4p_fail(b->req, b->err, keys[i], "must be a positive integer (got %g)", v);
        b->req->max_tokens = v > 4294967295.0 ? UINT32_MAX : (uint32_t)v;
        return 0;
    }
    return 0;
}

static int add_stop(ds4p_build *b, const char **tmp, size_t *n, const cJSON *v, const char *param) {
    if (!cJSON_IsString(v)) return ds4p_fail(b->req, b->err, param, "expected a string");
    size_t len = strlen(v->valuestring);
    if (len == 0) return 0;
    if (len > DS4_MAX_STOP_LEN) return ds4p_fail(b->req, b->err, param, "longer than %u bytes", DS4_MAX_STOP_LEN);
    if (*n == DS4_MAX_STOPS) return ds4p_fail(b->req, b->err, param, "at most %u stop strings", DS4_MAX_STOPS);
    if (!(tmp[*n] = ds4p_strdup(b->req, v->valuestring, b->err))) return -1;
    (*n)++;
    return 0;
}

int ds4p_common_stop(ds4p_build *b, const cJSON *body, const char *key) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(body, key);
    if (!v || cJSON_IsNull(v)) return 0;
    const char **tmp = ds4p_alloc(b->req, DS4_MAX_STOPS * sizeof(*tmp), b->err);
    if (!tmp) return -1;
    size_t n = 0;
    if (cJSON_IsString(v)) {
        if (add_stop(b, tmp, &n, v, key)) return -1;
    } else if (cJSON_IsArray(v)) {
        size_t i = 0;
        const cJSON *e;
        cJSON_ArrayForEach(e, v) {
            char param[64];
            snprintf(param, sizeof(param), "%s[%zu]", key, i++);
            if (add_stop(b, tmp, &n, e, param)) return -1;
        }
    } else {
        return ds4p_fail(b->req, b->err, key, "expected a string or an array of strings");
    }
    b->req->stop = tmp;
    b->req->n_stop = n;
    return 0;
}

int ds4p_common_stream(ds4p_build *b, const cJSON *body, bool stream_options) {
    if (ds4p_get_bool(b, body, "stream", "stream", &b->req->stream) < 0) return -1;
    if (!stream_options) return 0;
    const cJSON *so = cJSON_GetObjectItemCaseSensitive(body, "stream_options");
    if (!so || cJSON_IsNull(so)) return 0;
    if (!cJSON_IsObject(so)) return ds4p_fail(b->req, b->err, "stream_options", "expected an object");
    return ds4p_get_bool(b, so, "include_usage", "stream_options.include_usage", &b->req->include_usage) < 0 ? -1 : 0;
}

int ds4p_effort(ds4p_build *b, const char *effort, const char *param) {
    static const char *const high[] = {"xhigh", "high", "medium", "low", "minimal"};
    if (strcmp(effort, "max") == 0) {
        b->effort = 2;
        return 0;
    }
    if (strcmp(effort, "none") == 0) {
        b->effort = -1;
        return 0;
    }
    for (size_t i = 0; i < sizeof(high) / sizeof(high[0]); i++)
        if (strcmp(effort, high[i]) == 0) {
            if (b->effort != 2) b->effort = 1;
            return 0;
        }
    return ds4p_fail(b->req, b->err, param, "unknown reasoning effort \"%s\" (none, minimal, low, medium, high, xhigh, max)",
                     effort);
}

int ds4p_thinking_field(ds4p_build *b, const cJSON *body, const char *key) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(body, key);
    if (!v || cJSON_IsNull(v)) return 0;
    if (cJSON_IsBool(v)) {
        b->think_explicit = cJSON_IsTrue(v) ? 1 : -1;
        return 0;
    }
    if (!cJSON_IsObject(v)) return ds4p_fail(b->req, b->err, key, "expected true, false or {\"type\": ...}");
    char param[64];
    snprintf(param, sizeof(param), "%s.type", key);
    const char *type = NULL;
    int r = ds4p_get_string(b, v, "type", param, &type);
    if (r < 0) return -1;
    if (r) return ds4p_fail(b->req, b->err, param, "missing (enabled or disabled)");
    if (strcmp(type, "enabled") == 0 || strcmp(type, "adaptive") == 0) b->think_explicit = 1;
    else if (strcmp(type, "disabled") == 0) b->think_explicit = -1;
    else return ds4p_fail(b->req, b->err, param, "unknown value \"%s\" (enabled or disabled)", type);
    return 0;
}

int ds4p_content_text(ds4p_build *b, const cJSON *content, const char *param, const char *const *text_types,
                      size_t n_types, const char *sep, const char **out) {
    *out = NULL;
    if (!content || cJSON_IsNull(content)) return 0;
    if (cJSON_IsString(content)) {
        *out = ds4p_strdup(b->req, content->valuestring, b->err);
        return *out ? 0 : -1;
    }
    if (!cJSON_IsArray(content)) return ds4p_fail(b->req, b->err, param, "expected a string or an array of parts");
    ds4p_buf t = {0};
    size_t i = 0;
    bool any = false;
    const cJSON *part;
    cJSON_ArrayForEach(part, content) {
        char pp[160];
        snprintf(pp, sizeof(pp), "%s[%zu]", param, i++);
        const char *text = NULL;
        if (cJSON_IsString(part)) {
            text = part->valuestring;
        } else if (cJSON_IsObject(part)) {
            const char *type = NULL;
            char tp[176];
            snprintf(tp, sizeof(tp), "%s.type", pp);
            int r = ds4p_get_string(b, part, "type", tp, &type);
            if (r < 0) goto fail;
            bool ok = r == 1; /* a part without a type is read as text */
            for (size_t k = 0; !ok && k < n_types; k++) ok = strcmp(type, text_types[k]) == 0;
            if (!ok) {
                ds4p_fail(b->req, b->err, pp, "unsupported content part type \"%s\" (only text is supported)", type);
                goto fail;
            }
            snprintf(tp, sizeof(tp), "%s.text", pp);
            r = ds4p_get_string(b, part, "text", tp, &text);
            if (r < 0) goto fail;
            if (r) {
                ds4p_fail(b->req, b->err, tp, "missing");
                goto fail;
            }
        } else {
            ds4p_fail(b->req, b->err, pp, "expected a content part object");
            goto fail;
        }
        if ((any && ds4p_buf_str(&t, sep, b->err)) || ds4p_buf_str(&t, text, b->err)) goto fail;
        any = true;
    }
    *out = ds4p_strndup(b->req, t.p ? t.p : "", t.len, b->err);
    ds4p_buf_free(&t);
    return *out ? 0 : -1;
fail:
    ds4p_buf_free(&t);
    return -1;
}

int ds4p_function_schema(ds4p_build *b, const char *name, const char *description, const cJSON *parameters,
                         const char *param) {
    if (!name || !*name) return ds4p_fail(b->req, b->err, param, "a tool needs a name");
    if (parameters && !cJSON_IsNull(parameters) && !cJSON_IsObject(parameters))
        return ds4p_fail(b->req, b->err, param, "the parameters schema must be an object");
    cJSON *o = cJSON_CreateObject();
    if (!o) return ds4p_oom(b->err);
    cJSON *p = parameters && cJSON_IsObject(parameters) ? cJSON_Duplicate(parameters, 1)
                                                         : cJSON_Parse("{\"type\":\"object\",\"properties\":{}}");
    bool ok = p && cJSON_AddStringToObject(o, "name", name) &&
              (!description || cJSON_AddStringToObject(o, "description", description));
    if (ok) cJSON_AddItemToObject(o, "parameters", p);
    else cJSON_Delete(p);
    char *s = ok ? cJSON_PrintUnformatted(o) : NULL;
    cJSON_Delete(o);
    if (!s) return ds4p_oom(b->err);
    char *a = ds4p_strdup(b->req, s, b->err);
    free(s);
    return a ? ds4p_push_tool(b, a) : -1;
}

int ds4p_arguments(ds4p_build *b, const cJSON *args, const char *param, const char **out) {
    if (!args || cJSON_IsNull(args)) {
        *out = "{}";
        return 0;
    }
    if (cJSON_IsObject(args)) {
        char *s = cJSON_PrintUnformatted(args);
        if (!s) return ds4p_oom(b->err);
        *out = ds4p_strdup(b->req, s, b->err);
        free(s);
        return *out ? 0 : -1;
    }
    if (!cJSON_IsString(args)) return ds4p_fail(b->req, b->err, param, "expected a JSON object or its text");
    const char *s = args->valuestring;
    size_t i = strspn(s, " \t\r\n");
    if (s[i] == '\0') {
        *out = "{}";
        return 0;
    }
    cJSON *j = cJSON_Parse(s);
    bool obj = j && cJSON_IsObject(j);
    cJSON_Delete(j);
    if (!obj) return ds4p_fail(b->req, b->err, param, "must be the text of a JSON object");
    *out = ds4p_strdup(b->req, s, b->err);
    return *out ? 0 : -1;
}

int ds4p_oom(ds4_error *err) { return ds4_fail(err, "out of memory"); }

cJSON *ds4p_str_n(const char *s, size_t n) {
    /* cJSON strings are NUL terminated: copy. */
    char *t = malloc(n + 1);
    if (!t) return NULL;
    if (n) memcpy(t, s, n);
    t[n] = '\0';
    cJSON *j = cJSON_CreateString(t);
    free(t);
    return j;
}

/* ------------------------------------------------------------------ */
/* Request-level API                                                   */
/* ------------------------------------------------------------------ */

int ds4_proto_parse(enum ds4_proto proto, const cJSON *body, ds4_gen_request *req, ds4_error *err) {
    switch (proto) {
    case DS4_PROTO_CHAT: return ds4_openai_parse_chat(body, req, err);
    case DS4_PROTO_COMPLETIONS: return ds4_openai_parse_completion(body, req, err);
    case DS4_PROTO_RESPONSES: return ds4_responses_parse(body, req, err);
    case DS4_PROTO_ANTHROPIC: return ds4_anthropic_parse(body, req, err);
    }
    memset(req, 0, sizeof(*req));
    return ds4_fail(err, "unknown protocol %d", (int)proto);
}

enum ds4_think_mode ds4_gen_request_think(const ds4_gen_request *req, uint32_t n_ctx) {
    if (req->think == DS4_THINK_MAX && n_ctx < DS4_THINK_MAX_MIN_CTX) return DS4_THINK_HIGH;
    return req->think;
}

ds4_chat ds4_gen_request_chat(const ds4_gen_request *req, uint32_t n_ctx) {
    ds4_chat c = {req->msgs, req->n_msgs, req->tools, req->n_tools, ds4_gen_request_think(req, n_ctx)};
    return c;
}

int ds4_gen_request_render(const ds4_gen_request *req, uint32_t n_ctx, ds4_chat_prompt *out, ds4_error *err) {
    ds4_chat c = ds4_gen_request_chat(req, n_ctx);
    return ds4_chat_render(&c, out, err);
}

int ds4_random_hex(char *out, size_t n_hex, ds4_error *err) {
    unsigned char raw[64];
    static const char hex[] = "0123456789abcdef";
    size_t o = 0;
    while (o < n_hex) {
        size_t want = (n_hex - o + 1) / 2;
        if (want > sizeof(raw)) want = sizeof(raw);
        ssize_t got = getrandom(raw, want, 0);
        if (got < 0) {
            if (errno == EINTR) continue;
            return ds4_fail(err, "getrandom: %s", strerror(errno));
        }
        for (ssize_t i = 0; i < got && o < n_hex; i++) {
            out[o++] = hex[raw[i] >> 4];
            if (o < n_hex) out[o++] = hex[raw[i] & 15];
        }
    }
    out[n_hex] = '\0';
    return 0;
}

/* ------------------------------------------------------------------ */
/* Exact replay                                                        */
/* ------------------------------------------------------------------ */

/* Does block decode to exactly the calls of m (names in order, arguments
 * equal as JSON values)? */
static bool block_matches(const char *block, size_t len, const ds4_chat_msg *m) {
    ds4_chat_parsed p;
    ds4_error e = {{0}};
    bool ok = ds4_chat_parse(block, len, false, false, &p, &e) == 0 && p.status == DS4_PARSE_DONE &&
              p.in_tool_calls && p.content_len == 0 && p.n_calls == m->n_tool_calls;
    for (size_t k = 0; ok && k < p.n_calls; k++) {
        const ds4_chat_tool_call *tc = &m->tool_calls[k];
        ok = p.calls[k].complete && tc->name && strcmp(p.calls[k].name, tc->name) == 0;
        char *args = NULL;
        if (ok) ok = ds4_chat_call_arguments(&p.calls[k], &args, &e) == 0;
        cJSON *a = ok ? cJSON_Parse(args) : NULL;
        cJSON *b = ok ? cJSON_Parse(tc->arguments ? tc->arguments : "{}") : NULL;
        ok = a && b && cJSON_Compare(a, b, 1);
        cJSON_Delete(a);
        cJSON_Delete(b);
        free(args);
    }
    ds4_chat_parsed_free(&p);
    return ok;
}

int ds4_gen_request_replay(ds4_gen_request *req, ds4_toolmap *map, ds4_replay_stats *stats, ds4_error *err) {
    ds4_replay_stats st = {0};
    for (size_t i = 0; i < req->n_msgs; i++) {
        ds4_chat_msg *m = &req->msgs[i];
        if (m->role != DS4_CHAT_ASSISTANT || m->n_tool_calls == 0) continue;
        st.messages++;
        m->tool_block = NULL;
        const char *block = NULL;
        size_t blen = 0;
        bool missing = false, differ = false;
        for (size_t k = 0; k < m->n_tool_calls && !missing; k++) {
            const char *id = m->tool_calls[k].id;
            size_t len = 0;
            const char *b = id ? ds4_toolmap_get(map, id, &len) : NULL;
            if (!b) missing = true;
            else if (!block) block = b, blen = len;
            else if (len != blen || memcmp(b, block, len) != 0) differ = true;
        }
        if (missing) {
            st.missing++;
            continue;
        }
        if (differ || !block_matches(block, blen, m)) {
            st.changed++;
            continue;
        }
        if (!(m->tool_block = ds4p_strndup(req, block, blen, err))) return -1;
        st.exact++;
    }
    if (stats) *stats = st;
    return 0;
}

/* ------------------------------------------------------------------ */
/* Error bodies                                                        */
/* ------------------------------------------------------------------ */

static const char *default_type(enum ds4_proto proto, int status) {
    bool a = proto == DS4_PROTO_ANTHROPIC;
    switch (status) {
    case 400: return "invalid_request_error";
    case 401: return "authentication_error";
    case 403: return "permission_error";
    case 404: return "not_found_error";
    case 409: return "invalid_request_error";
    case 413: return a ? "request_too_large" : "invalid_request_error";
    case 429: return "rate_limit_error";
    case 503: return a ? "overloaded_error" : "server_error";
    default: return status >= 500 ? (a ? "api_error" : "server_error") : "invalid_request_error";
    }
}

cJSON *ds4_proto_error_json(enum ds4_proto proto, int status, const char *type, const char *code, const char *param,
                            const char *msg) {
    if (!type) type = default_type(proto, status);
    cJSON *root = cJSON_CreateObject();
    cJSON *e = cJSON_CreateObject();
    if (!root || !e) {
        cJSON_Delete(root);
        cJSON_Delete(e);
        return NULL;
    }
    bool ok;
    if (proto == DS4_PROTO_ANTHROPIC) {
        ok = cJSON_AddStringToObject(root, "type", "error") && cJSON_AddStringToObject(e, "type", type) &&
             cJSON_AddStringToObject(e, "message", msg ? msg : "");
    } else {
        ok = cJSON_AddStringToObject(e, "message", msg ? msg : "") && cJSON_AddStringToObject(e, "type", type) &&
             (param && *param ? cJSON_AddStringToObject(e, "param", param) != NULL
                              : cJSON_AddNullToObject(e, "param") != NULL) &&
             (code ? cJSON_AddStringToObject(e, "code", code) != NULL : cJSON_AddNullToObject(e, "code") != NULL);
    }
    cJSON_AddItemToObject(root, "error", e);
    if (!ok) {
        cJSON_Delete(root);
        return NULL;
    }
    return root;
}

cJSON *ds4_proto_overflow_json(enum ds4_proto proto, uint32_t n_prompt, uint32_t n_ctx) {
    char msg[256];
    snprintf(msg, sizeof(msg),
             "the prompt has %u tokens, more than the context of %u tokens leaves room for; shorten the %s", n_prompt,
             n_ctx, proto == DS4_PROTO_COMPLETIONS ? "prompt" : proto == DS4_PROTO_RESPONSES ? "input" : "messages");
    const char *param = proto == DS4_PROTO_COMPLETIONS ? "prompt" : proto == DS4_PROTO_RESPONSES ? "input" : "messages";
    cJSON *root = ds4_proto_error_json(proto, 400, NULL, "context_length_exceeded", param, msg);
    cJSON *e = root ? cJSON_GetObjectItemCaseSensitive(root, "error") : NULL;
    if (!e || !cJSON_AddNumberToObject(e, "n_prompt_tokens", n_prompt) || !cJSON_AddNumberToObject(e, "n_ctx", n_ctx)) {
        cJSON_Delete(root);
        return NULL;
    }
    if (proto == DS4_PROTO_ANTHROPIC && !cJSON_AddStringToObject(e, "code", "context_length_exceeded")) {
        cJSON_Delete(root);
        return NULL;
    }
    return root;
}

/* ------------------------------------------------------------------ */
/* Output core                                                         */
/* ------------------------------------------------------------------ */

int ds4_proto_out_new(ds4_proto_out **out, const ds4_gen_request *req, const ds4_proto_out_opts *o, ds4_error *err) {
    *out = NULL;
    ds4_proto_out *p = calloc(1, sizeof(*p));
    if (!p) return ds4p_oom(err);
    p->req = req;
    p->o = *o;
    char hex[25];
    if (ds4_random_hex(hex, 24, err)) {
        free(p);
        return -1;
    }
    switch (req->proto) {
    case DS4_PROTO_CHAT: snprintf(p->id, sizeof(p->id), "chatcmpl-%llu", (unsigned long long)o->seq); break;
    case DS4_PROTO_COMPLETIONS: snprintf(p->id, sizeof(p->id), "cmpl-%llu", (unsigned long long)o->seq); break;
    case DS4_PROTO_RESPONSES: snprintf(p->id, sizeof(p->id), "resp_%s", hex); break;
    case DS4_PROTO_ANTHROPIC: snprintf(p->id, sizeof(p->id), "msg_%s", hex); break;
    }
    *out = p;
    return 0;
}

void ds4_proto_out_free(ds4_proto_out *o) {
    if (!o) return;
    ds4p_buf_free(&o->reasoning);
    ds4p_buf_free(&o->content);
    for (size_t i = 0; i < o->n_calls; i++) {
        free(o->calls[i].id);
        free(o->calls[i].name);
        ds4p_buf_free(&o->calls[i].args);
    }
    free(o->calls);
    free(o->stop_sequence);
    free(o->err_code);
    free(o->err_msg);
    free(o);
}

const char *ds4_proto_out_id(const ds4_proto_out *o) { return o->id; }

static char *dup_or_null(const char *s) {
    if (!s) return NULL;
    size_t n = strlen(s);
    char *d = malloc(n + 1);
    if (d) memcpy(d, s, n + 1);
    return d;
}

static bool is_custom(const ds4_gen_request *req, const char *name) {
    for (size_t i = 0; i < req->n_custom_tools; i++)
        if (strcmp(req->custom_tools[i], name) == 0) return true;
    return false;
}

/* Accumulate ev into o; checks the order. */
static int accumulate(ds4_proto_out *o, const ds4_gen_event *ev, ds4_error *err) {
    if (o->ended) return ds4_fail(err, "event %d after the end of the response", (int)ev->type);
    if (ev->type != DS4_EV_BEGIN && ev->type != DS4_EV_ERROR && !o->began)
        return ds4_fail(err, "event %d before begin", (int)ev->type);
    switch (ev->type) {
    case DS4_EV_BEGIN:
        if (o->began) return ds4_fail(err, "a second begin event");
        o->began = true;
        o->usage.prompt_tokens = ev->usage.prompt_tokens;
        o->usage.cached_tokens = ev->usage.cached_tokens;
        return 0;
    case DS4_EV_REASONING:
        if (o->reasoning_done) return ds4_fail(err, "reasoning after its end");
        return ds4p_buf_add(&o->reasoning, ev->text, ev->len, err);
    case DS4_EV_REASONING_END: o->reasoning_done = true; return 0;
    case DS4_EV_CONTENT: return ds4p_buf_add(&o->content, ev->text, ev->len, err);
    case DS4_EV_TOOL_START: {
        if (ev->index != o->n_calls || !ev->id || !ev->name)
            return ds4_fail(err, "tool call start %u out of order or without id/name", ev->index);
        if (o->n_calls && !o->calls[o->n_calls - 1].done) return ds4_fail(err, "tool call %u started before the previous ended", ev->index);
        ds4p_call *c = realloc(o->calls, (o->n_calls + 1) * sizeof(*c));
        if (!c) return ds4p_oom(err);
        o->calls = c;
        ds4p_call *nc = &c[o->n_calls];
        memset(nc, 0, sizeof(*nc));
        nc->id = dup_or_null(ev->id);
        nc->name = dup_or_null(ev->name);
        if (!nc->id || !nc->name) {
            free(nc->id);
            free(nc->name);
            return ds4p_oom(err);
        }
        nc->custom = o->req->proto == DS4_PROTO_RESPONSES && is_custom(o->req, ev->name);
        o->n_calls++;
        return 0;
    }
    case DS4_EV_TOOL_ARGS:
    case DS4_EV_TOOL_END:
        if (ev->index >= o->n_calls || o->calls[ev->index].done) return ds4_fail(err, "tool call %u is not open", ev->index);
        if (ev->type == DS4_EV_TOOL_END) o->calls[ev->index].done = true;
        else if (ds4p_buf_add(&o->calls[ev->index].args, ev->text, ev->len, err)) return -1;
        return 0;
    case DS4_EV_FINISH:
        o->ended = true;
        o->finish = ev->finish;
        o->usage = ev->usage;
        if (ev->stop_sequence && !(o->stop_sequence = dup_or_null(ev->stop_sequence))) return ds4p_oom(err);
        for (size_t i = 0; i < o->n_calls; i++)
            if (!o->calls[i].done) o->calls[i].done = true;
        return 0;
    case DS4_EV_ERROR:
        o->ended = true;
        o->failed = true;
        o->err_status = ev->status ? ev->status : 500;
        o->err_code = dup_or_null(ev->code);
        o->err_msg = dup_or_null(ev->message ? ev->message : "generation failed");
        o->err_n_prompt = ev->n_prompt_tokens;
        o->err_n_ctx = ev->n_ctx;
        if (!o->err_msg || (ev->code && !o->err_code)) return ds4p_oom(err);
        return 0;
    }
    return ds4_fail(err, "unknown event type %d", (int)ev->type);
}

int ds4_proto_out_event(ds4_proto_out *o, const ds4_gen_event *ev, ds4_error *err) {
    /* FINISH may carry only the completion counts: keep BEGIN's. */
    ds4_gen_event e = *ev;
    if (e.type == DS4_EV_FINISH && e.usage.prompt_tokens == 0 && e.usage.cached_tokens == 0) {
        e.usage.prompt_tokens = o->usage.prompt_tokens;
        e.usage.cached_tokens = o->usage.cached_tokens;
    }
    if ((e.type == DS4_EV_REASONING || e.type == DS4_EV_CONTENT || e.type == DS4_EV_TOOL_ARGS) && e.len == 0) {
        /* Empty deltas carry nothing: drop them (after the order check). */
        if (!o->began || o->ended) return accumulate(o, &e, err);
        return 0;
    }
    if (accumulate(o, &e, err)) return -1;
    switch (o->req->proto) {
    case DS4_PROTO_CHAT: return ds4p_chat_event(o, &e, err);
    case DS4_PROTO_COMPLETIONS: return ds4p_completion_event(o, &e, err);
    case DS4_PROTO_RESPONSES: return ds4p_responses_event(o, &e, err);
    case DS4_PROTO_ANTHROPIC: return ds4p_anthropic_event(o, &e, err);
    }
    return ds4_fail(err, "unknown protocol");
}

int ds4_proto_out_sink(void *o, const ds4_gen_event *ev, ds4_error *err) { return ds4_proto_out_event(o, ev, err); }

int ds4_proto_out_reply(ds4_proto_out *o, int *status, cJSON **body, ds4_error *err) {
    *body = NULL;
    if (!o->ended) return ds4_fail(err, "the response has not ended");
    if (o->failed) {
        *status = o->err_status;
        *body = ds4_proto_error_json(o->req->proto, o->err_status, NULL, o->err_code, NULL, o->err_msg);
        if (*body && o->err_n_ctx) {
            cJSON *e = cJSON_GetObjectItemCaseSensitive(*body, "error");
            cJSON_AddNumberToObject(e, "n_prompt_tokens", o->err_n_prompt);
            cJSON_AddNumberToObject(e, "n_ctx", o->err_n_ctx);
        }
        return *body ? 0 : ds4p_oom(err);
    }
    *status = 200;
    switch (o->req->proto) {
    case DS4_PROTO_CHAT: return ds4p_chat_reply(o, body, err);
    case DS4_PROTO_COMPLETIONS: return ds4p_completion_reply(o, body, err);
    case DS4_PROTO_RESPONSES: return ds4p_responses_reply(o, body, err);
    case DS4_PROTO_ANTHROPIC: return ds4p_anthropic_reply(o, body, err);
    }
    return ds4_fail(err, "unknown protocol");
}

int ds4p_sse_raw(ds4_proto_out *o, const char *event, const char *data, ds4_error *err) {
    if (!o->o.write) return 0;
    if (o->o.write(o->o.write_ctx, event, data, strlen(data))) return ds4_fail(err, "the client went away");
    return 0;
}

int ds4p_sse(ds4_proto_out *o, const char *event, const cJSON *json, ds4_error *err) {
    if (!o->o.write) return 0;
    char *s = cJSON_PrintUnformatted(json);
    if (!s) return ds4p_oom(err);
    int rc = ds4p_sse_raw(o, event, s, err);
    free(s);
    return rc;
}

const char *ds4p_finish_openai(enum ds4_finish f) {
    switch (f) {
    case DS4_FINISH_STOP: return "stop";
    case DS4_FINISH_LENGTH: return "length";
    case DS4_FINISH_TOOL_CALLS: return "tool_calls";
    }
    return "stop";
}

cJSON *ds4p_usage_openai(const ds4_gen_usage *u) {
    cJSON *j = cJSON_CreateObject();
    cJSON *d = cJSON_CreateObject();
    cJSON *c = cJSON_CreateObject();
    if (!j || !d || !c) goto fail;
    uint32_t cached = u->cached_tokens > u->prompt_tokens ? u->prompt_tokens : u->cached_tokens;
    if (!cJSON_AddNumberToObject(j, "prompt_tokens", u->prompt_tokens) ||
        !cJSON_AddNumberToObject(j, "completion_tokens", u->completion_tokens) ||
        !cJSON_AddNumberToObject(j, "total_tokens", (double)u->prompt_tokens + u->completion_tokens) ||
        !cJSON_AddNumberToObject(d, "cached_tokens", cached) ||
        !cJSON_AddNumberToObject(d, "cache_write_tokens", u->prompt_tokens - cached) ||
        !cJSON_AddNumberToObject(c, "reasoning_tokens", u->reasoning_tokens))
        goto fail;
    cJSON_AddItemToObject(j, "prompt_tokens_details", d);
    cJSON_AddItemToObject(j, "completion_tokens_details", c);
    return j;
fail:
    cJSON_Delete(j);
    cJSON_Delete(d);
    cJSON_Delete(c);
    return NULL;
}
