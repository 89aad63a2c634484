/* chat.h - DeepSeek V4 chat rendering and DSML tool-call parsing.
 *
 * Rendering follows the official DeepSeek V4 encoder (encoding_dsv4.py,
 * encode_messages with drop_thinking on) byte for byte; tests/test_chat.c
 * compares against renderings the official encoder produced
 * (tests/chat/README.md).  The prompt comes back as an ordered list of
 * SEGMENTS: special=true marks trusted template text (it may contain DS4
 * special strings such as <｜User｜>, <think>, ｜DSML｜ that must become
 * control tokens); special=false marks text that came from the user, a tool
 * or an earlier model turn (system prompt, messages, reasoning, tool names,
 * argument values, tool schemas).  ds4_chat_tokenize recognises special
 * strings only inside special segments, so user text can never inject a
 * control token, while BPE still runs over whole spans between control
 * tokens exactly as the official tokenizer does on the concatenated string.
 *
 * The conversation model mirrors the OpenAI one:
 *   - roles system, developer, user, assistant, tool;
 *   - an assistant message may carry reasoning and tool calls (name plus
 *     arguments as JSON object text, as OpenAI sends them);
 *   - a tool message carries a result and optionally the id of its call;
 *   - tool definitions are JSON text, one function schema each
 *     ({"name", "description", "parameters"}), or the OpenAI wrapper
 *     {"type": "function", "function": {...}}.
 * Tools attach to the first message when it is a system message, otherwise
 * to an empty system message placed first.  JSON (schemas, non-string
 * argument values) is re-serialised as Python's json.dumps(ensure_ascii=False)
 * writes it, since that is what the official encoder emits.
 *
 * Encoder behaviours reproduced: consecutive user/tool messages merge into
 * one <｜User｜> turn joined by "\n\n" (tool results as
 * <tool_result>...</tool_result>, sorted by the order of the calls of the
 * latest assistant message that made calls with ids); in thinking mode
 * without tools the reasoning of turns before the last user message is
 * dropped and developer messages before it are removed; with tools all
 * reasoning is kept; the Think Max prefix goes right after BOS.  Not
 * modelled: latest_reminder, task tokens, response_format, wo_eos.
 *
 * Parsing (ds4_chat_parse) splits generated assistant text into reasoning,
 * visible content and DSML tool calls.  It accepts partial text (streaming)
 * and reports whether the message is complete, still incomplete, or
 * malformed; see the comment above ds4_chat_parse.
 */
#ifndef DS4_CHAT_H
#define DS4_CHAT_H

#include <stdbool.h>
#include <stddef.h>

#include "error.h"
#include "tokenizer.h"

/* The Think Max preamble is only applied when the context has at least
 * this many tokens (ds4's rule; the caller decides). */
#define DS4_THINK_MAX_MIN_CTX 393216u

enum ds4_chat_role {
    DS4_CHAT_SYSTEM,
    DS4_CHAT_DEVELOPER,
    DS4_CHAT_USER,
    DS4_CHAT_ASSISTANT,
    DS4_CHAT_TOOL
};

enum ds4_think_mode {
    DS4_THINK_NONE,  /* chat: the assistant opens with </think> */
    DS4_THINK_HIGH,  /* thinking: the assistant opens with <think> */
    DS4_THINK_MAX    /* thinking plus the "Reasoning Effort" preamble */
};

typedef struct ds4_chat_tool_call {
    const char *id;         /* optional (NULL): orders the tool results */
    const char *name;
    const char *arguments;  /* JSON object text; NULL means {} */
} ds4_chat_tool_call;

typedef struct ds4_chat_msg {
    enum ds4_chat_role role;
    const char *content;                   /* NULL = "" */
    const char *reasoning;                 /* assistant; NULL = "" */
    const ds4_chat_tool_call *tool_calls;  /* assistant */
    size_t n_tool_calls;
    const char *tool_call_id;              /* tool; NULL = none */
    /* assistant with tool calls: the exact DSML text that replaces their
     * rendering (from the end of content to </｜DSML｜tool_calls>, as
     * sampled), emitted as template text; NULL = render the calls */
    const char *tool_block;
} ds4_chat_msg;

typedef struct ds4_chat {
    const ds4_chat_msg *msgs;
    size_t n_msgs;
    const char *const *tools;  /* JSON function schemas */
    size_t n_tools;
    enum ds4_think_mode think;
} ds4_chat;

/* One piece of the rendered prompt (points into ds4_chat_prompt.text). */
typedef struct ds4_chat_segment {
    const char *text;
    size_t len;
    bool special;  /* trusted template text: special strings are control tokens */
} ds4_chat_segment;

/* A rendered prompt: text is the concatenation of the segments (NUL
 * terminated); adjacent segments never share the same flag and none is
 * empty. */
typedef struct ds4_chat_prompt {
    char *text;
    size_t len;
    ds4_chat_segment *segs;
    size_t n_segs;
} ds4_chat_prompt;

/* Render chat into out (freed with ds4_chat_prompt_free, also after a
 * failure).  Fails on invalid JSON in a tool schema or in call arguments,
 * arguments that are not an object, a duplicate key inside JSON or a lone
 * UTF-16 surrogate escape (both accepted by Python), a tool call without a
 * name, or an empty developer message (as the encoder). */
int ds4_chat_render(const ds4_chat *chat, ds4_chat_prompt *out, ds4_error *err);
void ds4_chat_prompt_free(ds4_chat_prompt *p);

/* The concatenation of n segments as a malloc'd NUL-terminated string
 * (length in *len when len is not NULL); NULL when out of memory. */
char *ds4_chat_concat(const ds4_chat_segment *segs, size_t n, size_t *len);

/* The DS4 special strings, as in tokenizer.h's enum ds4_special. */
const char *ds4_chat_special_text(enum ds4_special which);

/* Split a rendered prompt for the tokenizer: pieces cover text in order;
 * a piece is either a control token (special = its enum value; only found
 * inside special segments) or plain text to BPE (special = -1; spans may
 * cross segment boundaries).  *pieces is malloc'd. */
typedef struct ds4_chat_piece {
    size_t off, len;
    int special;
} ds4_chat_piece;
int ds4_chat_pieces(const ds4_chat_prompt *p, ds4_chat_piece **pieces, size_t *n, ds4_error *err);

/* Append the token ids of a rendered prompt to out. */
int ds4_chat_tokenize(const ds4_tokenizer *t, const ds4_chat_prompt *p, ds4_tokens *out, ds4_error *err);

/* Re-serialise JSON text as Python's json.dumps(ensure_ascii=False) would
 * after json.loads (", " and ": " separators, shortest float repr, int
 * literals kept exact).  Returns a malloc'd string. */
int ds4_chat_json_canon(const char *json, size_t len, char **out, size_t *out_len, ds4_error *err);

/* The escape sequence for byte ch inside a JSON string as json.dumps
 * (ensure_ascii=False) writes it: '"', '\\' and control characters only.
 * Returns NULL when ch is written as is; \u00XX forms are built in buf.
 * The one JSON string escaper of chat rendering and the server. */
const char *ds4_chat_json_escape(unsigned char ch, char buf[8]);

/* ------------------------------------------------------------------ */
/* DSML parsing of generated assistant text                            */
/* ------------------------------------------------------------------ */

typedef struct cJSON cJSON;

typedef struct ds4_chat_param {
    char *name;
    char *value;     /* string="true": the string (with &lt;/｜DSML｜parameter>
                      * unescaped); string="false": the JSON text */
    bool is_string;
    cJSON *json;     /* typed value: a cJSON string or the parsed JSON */
} ds4_chat_param;

typedef struct ds4_chat_call {
    char *name;
    ds4_chat_param *params;
    size_t n_params;
    bool complete;   /* its </｜DSML｜invoke> was seen */
} ds4_chat_call;

enum ds4_parse_status {
    DS4_PARSE_INCOMPLETE,  /* a valid prefix: more output is expected */
    DS4_PARSE_DONE         /* EOS seen (or at_eos), or the tool block closed */
};

typedef struct ds4_chat_parsed {
    enum ds4_parse_status status;
    char *reasoning;        /* thinking mode: text before </think> */
    size_t reasoning_len;
    bool reasoning_done;    /* </think> seen */
    char *content;          /* visible answer */
    size_t content_len;
    ds4_chat_call *calls;
    size_t n_calls;
    bool in_tool_calls;     /* a <｜DSML｜tool_calls> block was opened */
    size_t error_at;        /* on failure: byte offset of the problem */
} ds4_chat_parsed;

/* Parse generated assistant text (what follows the prompt's <think> or
 * </think> opener).
 *   thinking: the text starts with reasoning, closed by </think>;
 *     reasoning is free text up to the first </think> (DSML inside it is
 *     not executable, as in ds4).
 *   at_eos: generation stopped on the EOS token (same as the text ending
 *     with the EOS string).
 * Content runs to the EOS string or to a tool-call block
 * "\n\n<｜DSML｜tool_calls>" (the blank line is optional); after the block
 * only EOS may follow.  Grammar of the block, as the official encoder
 * writes it:
 *   <｜DSML｜tool_calls>\n
 *   <｜DSML｜invoke name="N">\n
 *   <｜DSML｜parameter name="K" string="true|false">V</｜DSML｜parameter>\n ...
 *   </｜DSML｜invoke>\n ...
 *   </｜DSML｜tool_calls>
 * (an invoke without parameters may have one extra "\n").  In string="true"
 * and "false" values "&lt;/｜DSML｜parameter>" stands for the closing tag;
 * string="false" values must be valid JSON.
 * Partial text is never an error: the status is DS4_PARSE_INCOMPLETE and
 * reasoning/content hold back any tail that may still become a marker
 * (so what is shown only grows).  Returns -1 with a message (and
 * out->error_at) when no continuation can make the text valid; out keeps
 * what was parsed before the problem.  out is reset on entry; free it with
 * ds4_chat_parsed_free. */
int ds4_chat_parse(const char *text, size_t len, bool thinking, bool at_eos, ds4_chat_parsed *out,
                   ds4_error *err);
void ds4_chat_parsed_free(ds4_chat_parsed *p);

/* The arguments of a parsed call as a compact JSON object (OpenAI's
 * "arguments" string), malloc'd. */
int ds4_chat_call_arguments(const ds4_chat_call *call, char **out, ds4_error *err);

#endif
