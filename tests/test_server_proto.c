/* test_server_proto.c - the server's protocol translation (src/server/proto*.c).
 *
 * Requests of every protocol are parsed from JSON text and checked field by
 * field (messages, tools, thinking, sampling, limits), invalid ones must
 * fail naming the field.  The tracker is fed generated text in every split
 * (byte by byte, in chunks) and must emit the same events, with tool-call
 * arguments equal to what ds4_chat_parse decodes.  Event sequences are
 * turned into SSE and final bodies for each protocol; every SSE data line
 * must parse and carry the fields the OpenAI and Anthropic SDKs read.
 * With DS4CL_PROTO_DUMP=<dir> the SSE streams and bodies are written there
 * for tests/server/sdk_test.py --replay <dir> (the SDKs' own parsers).
 */
#include "test.h"

#include <string.h>
#include <sys/stat.h>

#include "server/proto.h"

#define STR_EQ(a, b) ((a) && (b) && strcmp((a), (b)) == 0)

static int parse(enum ds4_proto p, const char *json, ds4_gen_request *req, ds4_error *err) {
    cJSON *body = cJSON_Parse(json);
    if (!body) {
        memset(req, 0, sizeof(*req));
        return ds4_fail(err, "test JSON does not parse: %s", json);
    }
    int rc = ds4_proto_parse(p, body, req, err);
    cJSON_Delete(body);
    return rc;
}

/* ------------------------------------------------------------------ */
/* Requests                                                            */
/* ------------------------------------------------------------------ */

static int test_chat_request(void) {
    const char *json =
        "{\"model\":\"deepseek-v4-flash\",\"messages\":["
        "{\"role\":\"system\",\"content\":\"S1\"},"
        "{\"role\":\"developer\",\"content\":[{\"type\":\"text\",\"text\":\"D1\"}]},"
        "{\"role\":\"user\",\"content\":[{\"type\":\"text\",\"text\":\"a\"},{\"type\":\"text\",\"text\":\"b\"}]},"
        "{\"role\":\"assistant\",\"content\":null,\"reasoning_content\":\"think\",\"tool_calls\":["
        "{\"id\":\"call_1\",\"type\":\"function\",\"function\":{\"name\":\"f\",\"arguments\":\"{\\\"x\\\":1}\"}}]},"
        "{\"role\":\"tool\",\"tool_call_id\":\"call_1\",\"content\":\"42\"}],"
        "\"tools\":[{\"type\":\"function\",\"function\":{\"name\":\"f\",\"description\":\"F\","
        "\"parameters\":{\"type\":\"object\",\"properties\":{\"x\":{\"type\":\"integer\"}}},\"strict\":true}}],"
        "\"tool_choice\":\"auto\",\"reasoning_effort\":\"none\",\"temperature\":0.5,\"top_p\":0.9,\"top_k\":5000,"
        "\"min_p\":0.1,\"seed\":7,\"max_completion_tokens\":99,\"max_tokens\":5,\"stop\":[\"END\",\"\"],"
        "\"stream\":true,\"stream_options\":{\"include_usage\":true}}";
    ds4_gen_request r;
    ds4_error err = {{0}};
    T_CHECK(parse(DS4_PROTO_CHAT, json, &r, &err) == 0, "%s", err.msg);
    T_CHECK(r.n_msgs == 4, "%zu messages", r.n_msgs);
    T_CHECK(r.msgs[0].role == DS4_CHAT_SYSTEM && STR_EQ(r.msgs[0].content, "S1\n\nD1"), "system [%s]", r.msgs[0].content);
    T_CHECK(r.msgs[1].role == DS4_CHAT_USER && STR_EQ(r.msgs[1].content, "a\n\nb"), "user [%s]", r.msgs[1].content);
    const ds4_chat_msg *a = &r.msgs[2];
    T_CHECK(a->role == DS4_CHAT_ASSISTANT && a->content == NULL && STR_EQ(a->reasoning, "think") && a->n_tool_calls == 1,
            "assistant");
    T_CHECK(STR_EQ(a->tool_calls[0].id, "call_1") && STR_EQ(a->tool_calls[0].name, "f") &&
                STR_EQ(a->tool_calls[0].arguments, "{\"x\":1}"),
            "call");
    T_CHECK(r.msgs[3].role == DS4_CHAT_TOOL && STR_EQ(r.msgs[3].tool_call_id, "call_1") && STR_EQ(r.msgs[3].content, "42"),
            "tool");
    T_CHECK(r.n_tools == 1, "%zu tools", r.n_tools);
    T_CHECK(STR_EQ(r.tools[0], "{\"name\":\"f\",\"description\":\"F\",\"parameters\":{\"type\":\"object\","
                               "\"properties\":{\"x\":{\"type\":\"integer\"}}}}"),
            "schema %s", r.tools[0]);
    T_CHECK(r.think == DS4_THINK_NONE, "think %d", r.think);
    T_CHECK(r.sampling.temperature == 0.5f && r.sampling.top_p == 0.9f && r.sampling.top_k == DS4_TOP_K_MAX &&
                r.sampling.min_p == 0.1f && r.sampling.seed == 7 && r.seed_set,
            "sampling");
    T_CHECK(r.max_tokens == 99, "max_tokens %u (max_completion_tokens wins)", r.max_tokens);
    T_CHECK(r.n_stop == 1 && STR_EQ(r.stop[0], "END"), "stops %zu", r.n_stop);
    T_CHECK(r.stream && r.include_usage && !r.orphan_tool_results, "stream flags");
    T_CHECK(STR_EQ(r.model, "deepseek-v4-flash") && STR_EQ(r.id_prefix, "call_"), "model/prefix");
    /* It renders: the tool result and the canonical DSML are there. */
    ds4_chat_prompt p;
    T_CHECK(ds4_gen_request_render(&r, 4096, &p, &err) == 0, "%s", err.msg);
    T_CHECK(strstr(p.text, "<tool_result>42</tool_result>") && strstr(p.text, "<｜DSML｜invoke name=\"f\">") &&
                strstr(p.text, "<｜DSML｜parameter name=\"x\" string=\"false\">1</｜DSML｜parameter>") &&
                strstr(p.text, "S1\n\nD1"),
            "rendered: %s", p.text);
    ds4_chat_prompt_free(&p);
    ds4_gen_request_free(&r);
    return 0;
}

/* Thinking controls, their precedence, and the sampling they imply. */
static int test_thinking_controls(void) {
    static const struct {
        enum ds4_proto proto;
        const char *extra;
        enum ds4_think_mode want;
    } cases[] = {
        {DS4_PROTO_CHAT, "", DS4_THINK_HIGH},
        {DS4_PROTO_CHAT, ",\"model\":\"deepseek-chat\"", DS4_THINK_NONE},
        {DS4_PROTO_CHAT, ",\"model\":\"deepseek-chat\",\"reasoning_effort\":\"low\"", DS4_THINK_HIGH},
        {DS4_PROTO_CHAT, ",\"model\":\"deepseek-reasoner\"", DS4_THINK_HIGH},
        {DS4_PROTO_CHAT, ",\"thinking\":false", DS4_THINK_NONE},
        {DS4_PROTO_CHAT, ",\"think\":false,\"reasoning_effort\":\"max\"", DS4_THINK_NONE},
        {DS4_PROTO_CHAT, ",\"thinking\":{\"type\":\"disabled\"}", DS4_THINK_NONE},
        {DS4_PROTO_CHAT, ",\"thinking\":{\"type\":\"enabled\"},\"model\":\"deepseek-chat\"", DS4_THINK_HIGH},
        {DS4_PROTO_CHAT, ",\"reasoning_effort\":\"max\"", DS4_THINK_MAX},
        {DS4_PROTO_CHAT, ",\"reasoning_effort\":\"xhigh\"", DS4_THINK_HIGH},
        {DS4_PROTO_COMPLETIONS, ",\"reasoning_effort\":\"none\"", DS4_THINK_NONE},
        {DS4_PROTO_ANTHROPIC, ",\"thinking\":{\"type\":\"enabled\",\"budget_tokens\":1000}", DS4_THINK_HIGH},
        {DS4_PROTO_ANTHROPIC, ",\"thinking\":{\"type\":\"disabled\"}", DS4_THINK_NONE},
        {DS4_PROTO_ANTHROPIC, ",\"output_config\":{\"effort\":\"max\"}", DS4_THINK_MAX},
        {DS4_PROTO_ANTHROPIC, ",\"model\":\"deepseek-chat\"", DS4_THINK_NONE},
        {DS4_PROTO_RESPONSES, ",\"reasoning\":{\"effort\":\"none\"}", DS4_THINK_NONE},
        {DS4_PROTO_RESPONSES, ",\"reasoning\":{\"effort\":\"medium\",\"summary\":\"auto\"}", DS4_THINK_HIGH},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        char json[512];
        const char *base = cases[i].proto == DS4_PROTO_COMPLETIONS ? "\"prompt\":\"hi\""
                           : cases[i].proto == DS4_PROTO_RESPONSES ? "\"input\":\"hi\""
                                                                    : "\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}]";
        snprintf(json, sizeof(json), "{%s,\"temperature\":0.3,\"top_k\":4,\"seed\":11%s}", base, cases[i].extra);
        ds4_gen_request r;
        ds4_error err = {{0}};
        T_CHECK(parse(cases[i].proto, json, &r, &err) == 0, "case %zu: %s", i, err.msg);
        T_CHECK(r.think == cases[i].want, "case %zu (%s): think %d, want %d", i, json, r.think, cases[i].want);
        if (r.think == DS4_THINK_NONE) {
            T_CHECK(r.sampling.temperature == 0.3f && r.sampling.top_k == 4, "case %zu keeps the client's sampling", i);
        } else {
            T_CHECK(r.sampling.temperature == DS4_DEFAULT_TEMPERATURE && r.sampling.top_k == 0 &&
                        r.sampling.min_p == DS4_DEFAULT_MIN_P,
                    "case %zu: thinking uses ds4's sampling", i);
        }
        if (cases[i].proto != DS4_PROTO_ANTHROPIC) T_CHECK(r.sampling.seed == 11 && r.seed_set, "case %zu seed", i);
        else T_CHECK(!r.seed_set, "anthropic has no seed");
        if (cases[i].proto == DS4_PROTO_RESPONSES && strstr(cases[i].extra, "summary"))
            T_CHECK(r.reasoning_summary, "summary asked");
        ds4_gen_request_free(&r);
    }
    /* Think Max only on a large context. */
    ds4_gen_request r;
    ds4_error err = {{0}};
    T_CHECK(parse(DS4_PROTO_CHAT, "{\"messages\":[{\"role\":\"user\",\"content\":\"q\"}],\"reasoning_effort\":\"max\"}", &r,
                  &err) == 0,
            "%s", err.msg);
    T_CHECK(ds4_gen_request_think(&r, 4096) == DS4_THINK_HIGH, "small ctx falls back to high");
    T_CHECK(ds4_gen_request_think(&r, DS4_THINK_MAX_MIN_CTX) == DS4_THINK_MAX, "large ctx keeps max");
    ds4_gen_request_free(&r);
    return 0;
}

static int test_completion_request(void) {
    ds4_gen_request r;
    ds4_error err = {{0}};
    T_CHECK(parse(DS4_PROTO_COMPLETIONS, "{\"prompt\":[\"first\",\"second\"],\"max_tokens\":3,\"stop\":\"x\"}", &r, &err) == 0,
            "%s", err.msg);
    T_CHECK(r.n_msgs == 2 && r.msgs[0].role == DS4_CHAT_SYSTEM && STR_EQ(r.msgs[0].content, "You are a helpful assistant") &&
                r.msgs[1].role == DS4_CHAT_USER && STR_EQ(r.msgs[1].content, "first"),
            "messages");
    T_CHECK(r.max_tokens == 3 && r.n_stop == 1 && r.n_tools == 0, "fields");
    ds4_tracker_opts to = ds4_gen_request_tracker_opts(&r, 4096, NULL);
    T_CHECK(to.thinking && !to.tools && to.n_stop == 1, "tracker options");
    ds4_gen_request_free(&r);
    return 0;
}

static int test_responses_request(void) {
    const char *json =
        "{\"model\":\"m\",\"instructions\":\"I\",\"input\":["
        "{\"type\":\"message\",\"role\":\"developer\",\"content\":[{\"type\":\"input_text\",\"text\":\"D\"}]},"
        "{\"role\":\"user\",\"content\":\"hello\"},"
        "{\"type\":\"reasoning\",\"id\":\"rs_1\",\"summary\":[{\"type\":\"summary_text\",\"text\":\"R\"}]},"
        "{\"type\":\"message\",\"role\":\"assistant\",\"content\":[{\"type\":\"output_text\",\"text\":\"A\"}]},"
        "{\"type\":\"function_call\",\"call_id\":\"call_a\",\"name\":\"f\",\"arguments\":\"{\\\"q\\\":\\\"v\\\"}\"},"
        "{\"type\":\"custom_tool_call\",\"call_id\":\"call_b\",\"name\":\"apply_patch\",\"input\":\"*** Begin\"},"
        "{\"type\":\"function_call_output\",\"call_id\":\"call_a\",\"output\":\"out a\"},"
        "{\"type\":\"custom_tool_call_output\",\"call_id\":\"call_b\",\"output\":[{\"type\":\"input_text\",\"text\":\"ok\"}]},"
        "{\"type\":\"compaction\",\"encrypted_content\":\"x\"}],"
        "\"tools\":[{\"type\":\"function\",\"name\":\"f\",\"parameters\":{\"type\":\"object\"}},"
        "{\"type\":\"custom\",\"name\":\"apply_patch\",\"description\":\"patch\"},{\"type\":\"web_search\"}],"
        "\"tool_choice\":\"auto\",\"reasoning\":{\"effort\":\"high\",\"summary\":\"detailed\"},"
        "\"max_output_tokens\":64,\"stream\":true,\"store\":false}";
    ds4_gen_request r;
    ds4_error err = {{0}};
    T_CHECK(parse(DS4_PROTO_RESPONSES, json, &r, &err) == 0, "%s", err.msg);
    T_CHECK(r.n_msgs == 5, "%zu messages", r.n_msgs);
    T_CHECK(r.msgs[0].role == DS4_CHAT_SYSTEM && STR_EQ(r.msgs[0].content, "I\n\nD"), "system [%s]", r.msgs[0].content);
    T_CHECK(r.msgs[1].role == DS4_CHAT_USER && STR_EQ(r.msgs[1].content, "hello"), "user");
    const ds4_chat_msg *a = &r.msgs[2];
    T_CHECK(a->role == DS4_CHAT_ASSISTANT && STR_EQ(a->reasoning, "R") && STR_EQ(a->content, "A") && a->n_tool_calls == 2,
            "assistant turn merged from 4 items");
    T_CHECK(STR_EQ(a->tool_calls[0].id, "call_a") && STR_EQ(a->tool_calls[0].arguments, "{\"q\":\"v\"}"), "call a");
    T_CHECK(STR_EQ(a->tool_calls[1].name, "apply_patch") && STR_EQ(a->tool_calls[1].arguments, "{\"input\":\"*** Begin\"}"),
            "custom call %s", a->tool_calls[1].arguments);
    T_CHECK(r.msgs[3].role == DS4_CHAT_TOOL && STR_EQ(r.msgs[3].tool_call_id, "call_a") && STR_EQ(r.msgs[3].content, "out a"),
            "output a");
    T_CHECK(r.msgs[4].role == DS4_CHAT_TOOL && STR_EQ(r.msgs[4].content, "ok"), "output b");
    T_CHECK(r.n_tools == 2 && r.n_custom_tools == 1 && STR_EQ(r.custom_tools[0], "apply_patch"), "tools %zu", r.n_tools);
    T_CHECK(strstr(r.tools[1], "\"input\"") && strstr(r.tools[1], "\"name\":\"apply_patch\""), "custom schema %s", r.tools[1]);
    T_CHECK(r.reasoning_summary && r.max_tokens == 64 && r.stream && r.think == DS4_THINK_HIGH, "options");
    T_CHECK(!r.orphan_tool_results, "outputs match calls");
    ds4_gen_request_free(&r);

    /* Outputs alone continue a conversation the server holds. */
    T_CHECK(parse(DS4_PROTO_RESPONSES,
                  "{\"input\":[{\"type\":\"function_call_output\",\"call_id\":\"call_z\",\"output\":\"r\"}]}", &r, &err) == 0,
            "%s", err.msg);
    T_CHECK(r.orphan_tool_results, "orphan outputs");
    ds4_gen_request_free(&r);
    return 0;
}

static int test_anthropic_request(void) {
    const char *json =
        "{\"model\":\"claude-x\",\"max_tokens\":1024,\"system\":[{\"type\":\"text\",\"text\":\"x-anthropic-billing: 1\"},"
        "{\"type\":\"text\",\"text\":\"Sys A\",\"cache_control\":{\"type\":\"ephemeral\"}},{\"type\":\"text\",\"text\":\"Sys B\"}],"
        "\"messages\":[{\"role\":\"user\",\"content\":\"go\"},"
        "{\"role\":\"assistant\",\"content\":[{\"type\":\"thinking\",\"thinking\":\"plan\",\"signature\":\"s\"},"
        "{\"type\":\"text\",\"text\":\"Running.\"},"
        "{\"type\":\"tool_use\",\"id\":\"toolu_1\",\"name\":\"bash\",\"input\":{\"cmd\":\"ls\",\"n\":[1,2]}}]},"
        "{\"role\":\"user\",\"content\":[{\"type\":\"tool_result\",\"tool_use_id\":\"toolu_1\",\"content\":["
        "{\"type\":\"text\",\"text\":\"a.txt\"},{\"type\":\"image\",\"source\":{}}]},{\"type\":\"text\",\"text\":\"next\"}]}],"
        "\"tools\":[{\"name\":\"bash\",\"description\":\"Run\",\"input_schema\":{\"type\":\"object\"}},"
        "{\"type\":\"web_search_20250305\",\"name\":\"web_search\"}],"
        "\"tool_choice\":{\"type\":\"any\"},\"stop_sequences\":[\"\\n\\nHuman:\"],\"temperature\":0.2,\"top_k\":40,"
        "\"thinking\":{\"type\":\"disabled\"},\"stream\":true}";
    ds4_gen_request r;
    ds4_error err = {{0}};
    T_CHECK(parse(DS4_PROTO_ANTHROPIC, json, &r, &err) == 0, "%s", err.msg);
    T_CHECK(r.n_msgs == 5, "%zu messages", r.n_msgs);
    T_CHECK(STR_EQ(r.msgs[0].content, "Sys A\n\nSys B"), "system [%s]", r.msgs[0].content);
    const ds4_chat_msg *a = &r.msgs[2];
    T_CHECK(a->role == DS4_CHAT_ASSISTANT && STR_EQ(a->reasoning, "plan") && STR_EQ(a->content, "Running.") &&
                a->n_tool_calls == 1 && STR_EQ(a->tool_calls[0].id, "toolu_1") &&
                STR_EQ(a->tool_calls[0].arguments, "{\"cmd\":\"ls\",\"n\":[1,2]}"),
            "assistant");
    T_CHECK(r.msgs[3].role == DS4_CHAT_TOOL && STR_EQ(r.msgs[3].content, "a.txt\n\n[image omitted]") &&
                STR_EQ(r.msgs[3].tool_call_id, "toolu_1"),
            "tool result [%s]", r.msgs[3].content);
    T_CHECK(r.msgs[4].role == DS4_CHAT_USER && STR_EQ(r.msgs[4].content, "next"), "text after the result");
    T_CHECK(r.n_tools == 1 && strstr(r.tools[0], "\"name\":\"bash\""), "server tool left out");
    T_CHECK(r.n_stop == 1 && r.max_tokens == 1024 && r.think == DS4_THINK_NONE && r.sampling.temperature == 0.2f &&
                r.sampling.top_k == 40 && STR_EQ(r.id_prefix, "toolu_") && STR_EQ(r.model, "claude-x"),
            "options");
    ds4_gen_request_free(&r);

    /* tool_choice none drops the tools; a bare tool_result is an orphan. */
    T_CHECK(parse(DS4_PROTO_ANTHROPIC,
                  "{\"messages\":[{\"role\":\"user\",\"content\":[{\"type\":\"tool_result\",\"tool_use_id\":\"toolu_9\","
                  "\"content\":\"r\"}]}],\"tools\":[{\"name\":\"t\",\"input_schema\":{}}],\"tool_choice\":{\"type\":\"none\"}}",
                  &r, &err) == 0,
            "%s", err.msg);
    T_CHECK(r.n_tools == 0 && r.orphan_tool_results && r.n_msgs == 1, "none/orphan");
    ds4_gen_request_free(&r);
    return 0;
}

/* Invalid requests: 400 naming the field. */
static int test_invalid_requests(void) {
    static const struct {
        enum ds4_proto proto;
        const char *json;
        const char *param;
        const char *msg; /* substring of the message */
    } cases[] = {
        {DS4_PROTO_CHAT, "[]", "", "JSON object"},
        {DS4_PROTO_CHAT, "{}", "messages", "required"},
        {DS4_PROTO_CHAT, "{\"messages\":[]}", "messages", "non-empty"},
        {DS4_PROTO_CHAT, "{\"messages\":[{\"content\":\"x\"}]}", "messages[0].role", "missing"},
        {DS4_PROTO_CHAT, "{\"messages\":[{\"role\":\"robot\",\"content\":\"x\"}]}", "messages[0].role", "unknown role"},
        {DS4_PROTO_CHAT, "{\"messages\":[{\"role\":\"user\",\"content\":[{\"type\":\"image_url\",\"image_url\":{}}]}]}",
         "messages[0].content[0]", "image_url"},
        {DS4_PROTO_CHAT, "{\"messages\":[{\"role\":\"user\",\"content\":5}]}", "messages[0].content", "string"},
        {DS4_PROTO_CHAT,
         "{\"messages\":[{\"role\":\"assistant\",\"tool_calls\":[{\"id\":\"c\",\"function\":{\"name\":\"f\",\"arguments\":\"[1]\"}}]}]}",
         "messages[0].tool_calls[0].function.arguments", "JSON object"},
        {DS4_PROTO_CHAT, "{\"messages\":[{\"role\":\"assistant\",\"tool_calls\":[{\"id\":\"c\",\"function\":{}}]}]}",
         "messages[0].tool_calls[0].function.name", "missing"},
        {DS4_PROTO_CHAT, "{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"temperature\":\"hot\"}", "temperature",
         "number"},
        {DS4_PROTO_CHAT, "{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"temperature\":-1}", "temperature", "between"},
        {DS4_PROTO_CHAT, "{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"top_p\":0}", "top_p", "(0, 1]"},
        {DS4_PROTO_CHAT, "{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"top_k\":1.5}", "top_k", "integer"},
        {DS4_PROTO_CHAT, "{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"min_p\":2}", "min_p", "[0, 1]"},
        {DS4_PROTO_CHAT, "{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"max_tokens\":0}", "max_tokens", "positive"},
        {DS4_PROTO_CHAT, "{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"stop\":[1]}", "stop[0]", "string"},
        {DS4_PROTO_CHAT, "{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"reasoning_effort\":\"huge\"}",
         "reasoning_effort", "unknown reasoning effort"},
        {DS4_PROTO_CHAT, "{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"thinking\":{\"type\":\"maybe\"}}",
         "thinking.type", "unknown value"},
        {DS4_PROTO_CHAT, "{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"n\":2}", "n", "one choice"},
        {DS4_PROTO_CHAT, "{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"tool_choice\":\"sometimes\"}", "tool_choice",
         "unknown value"},
        {DS4_PROTO_CHAT, "{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"tools\":[{\"type\":\"custom\"}]}",
         "tools[0].type", "only function"},
        {DS4_PROTO_CHAT, "{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"stream\":\"yes\"}", "stream", "true or false"},
        {DS4_PROTO_CHAT, "{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"stream_options\":{\"include_usage\":1}}",
         "stream_options.include_usage", "true or false"},
        {DS4_PROTO_COMPLETIONS, "{\"prompt\":[1,2,3]}", "prompt", "token arrays"},
        {DS4_PROTO_COMPLETIONS, "{}", "prompt", "required"},
        {DS4_PROTO_RESPONSES, "{}", "input", "required"},
        {DS4_PROTO_RESPONSES, "{\"input\":\"x\",\"previous_response_id\":\"resp_1\"}", "previous_response_id",
         "replay the full input"},
        {DS4_PROTO_RESPONSES, "{\"input\":\"x\",\"tool_choice\":\"required\"}", "tool_choice", "auto"},
        {DS4_PROTO_RESPONSES, "{\"input\":\"x\",\"tool_choice\":{\"type\":\"function\",\"name\":\"f\"}}", "tool_choice", "auto"},
        {DS4_PROTO_RESPONSES, "{\"input\":[{\"type\":\"web_search_call\"}]}", "input[0].type", "unsupported input item"},
        {DS4_PROTO_RESPONSES, "{\"input\":[{\"type\":\"item_reference\",\"id\":\"x\"}]}", "input[0].type", "replay"},
        {DS4_PROTO_RESPONSES,
         "{\"input\":[{\"role\":\"user\",\"content\":[{\"type\":\"input_image\",\"image_url\":\"data:\"}]}]}",
         "input[0].content[0]", "input_image"},
        {DS4_PROTO_RESPONSES, "{\"input\":[{\"type\":\"function_call\",\"name\":\"f\"}]}", "input[0].call_id", "missing"},
        {DS4_PROTO_RESPONSES, "{\"input\":\"x\",\"reasoning\":{\"summary\":\"long\"}}", "reasoning.summary", "unknown"},
        {DS4_PROTO_RESPONSES, "{\"input\":[]}", "input", "no message"},
        {DS4_PROTO_ANTHROPIC, "{\"messages\":[{\"role\":\"system\",\"content\":\"x\"}]}", "messages[0].role", "unknown role"},
        {DS4_PROTO_ANTHROPIC,
         "{\"messages\":[{\"role\":\"user\",\"content\":[{\"type\":\"image\",\"source\":{}}]}]}",
         "messages[0].content[0]", "image blocks"},
        {DS4_PROTO_ANTHROPIC,
         "{\"messages\":[{\"role\":\"assistant\",\"content\":[{\"type\":\"tool_use\",\"id\":\"t\",\"name\":\"n\",\"input\":[1]}]}]}",
         "messages[0].content[0].input", "object"},
        {DS4_PROTO_ANTHROPIC, "{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"tool_choice\":\"auto\"}", "tool_choice",
         "object"},
        {DS4_PROTO_ANTHROPIC, "{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"system\":[{\"type\":\"image\"}]}",
         "system[0]", "unsupported"},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        ds4_gen_request r;
        ds4_error err = {{0}};
        int rc = parse(cases[i].proto, cases[i].json, &r, &err);
        T_CHECK(rc == -1, "case %zu (%s) was accepted", i, cases[i].json);
        T_CHECK(strcmp(r.err_param, cases[i].param) == 0, "case %zu: param [%s], want [%s] (%s)", i, r.err_param,
                cases[i].param, err.msg);
        T_CHECK(strstr(err.msg, cases[i].msg), "case %zu: message [%s] lacks [%s]", i, err.msg, cases[i].msg);
        /* The error body is in the protocol's shape and names the field. */
        cJSON *e = ds4_proto_error_json(cases[i].proto, 400, NULL, NULL, r.err_param, err.msg);
        T_CHECK(e, "error body");
        const cJSON *inner = cJSON_GetObjectItemCaseSensitive(e, "error");
        const cJSON *type = cJSON_GetObjectItemCaseSensitive(inner, "type");
        T_CHECK(cJSON_IsString(type) && strcmp(type->valuestring, "invalid_request_error") == 0, "type");
        if (cases[i].proto == DS4_PROTO_ANTHROPIC) {
            T_CHECK(STR_EQ(cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(e, "type")), "error"), "anthropic shape");
        } else if (*cases[i].param) {
            T_CHECK(STR_EQ(cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(inner, "param")), cases[i].param),
                    "param in body");
        }
        cJSON_Delete(e);
        ds4_gen_request_free(&r);
    }
    return 0;
}

static void dump(const char *name, const char *text);

static int test_error_bodies(void) {
    /* Fixtures for sdk_test.py --replay: the SDKs raise BadRequestError. */
    static const char *const tags[] = {"chat", "completions", "responses", "anthropic"};
    for (int p = 0; p < 4; p++) {
        cJSON *o = ds4_proto_overflow_json((enum ds4_proto)p, 5000, 4096);
        char *t = o ? cJSON_Print(o) : NULL;
        char name[64];
        snprintf(name, sizeof(name), "%s_overflow.400.json", tags[p]);
        T_CHECK(t, "overflow body %d", p);
        dump(name, t);
        free(t);
        cJSON_Delete(o);
    }
    cJSON *e = ds4_proto_overflow_json(DS4_PROTO_CHAT, 5000, 4096);
    char *s = cJSON_PrintUnformatted(e);
    T_CHECK(s && strcmp(s, "{\"error\":{\"message\":\"the prompt has 5000 tokens, more than the context of 4096 tokens "
                           "leaves room for; shorten the messages\",\"type\":\"invalid_request_error\",\"param\":"
                           "\"messages\",\"code\":\"context_length_exceeded\",\"n_prompt_tokens\":5000,\"n_ctx\":4096}}") == 0,
            "%s", s);
    free(s);
    cJSON_Delete(e);
    e = ds4_proto_overflow_json(DS4_PROTO_ANTHROPIC, 10, 8);
    s = cJSON_PrintUnformatted(e);
    T_CHECK(s && strstr(s, "{\"type\":\"error\",\"error\":{\"type\":\"invalid_request_error\"") &&
                strstr(s, "\"n_prompt_tokens\":10,\"n_ctx\":8"),
            "%s", s);
    free(s);
    cJSON_Delete(e);
    e = ds4_proto_error_json(DS4_PROTO_ANTHROPIC, 500, NULL, NULL, NULL, "boom");
    s = cJSON_PrintUnformatted(e);
    T_CHECK(s && strcmp(s, "{\"type\":\"error\",\"error\":{\"type\":\"api_error\",\"message\":\"boom\"}}") == 0, "%s", s);
    free(s);
    cJSON_Delete(e);
    return 0;
}

/* ------------------------------------------------------------------ */
/* Tool map                                                            */
/* ------------------------------------------------------------------ */

static int test_toolmap(void) {
    ds4_toolmap *m;
    ds4_error err = {{0}};
    T_CHECK(ds4_toolmap_new(&m, 3, 0, &err) == 0, "%s", err.msg);
    T_CHECK(ds4_toolmap_put(m, "a", "AAA", 3, &err) == 0 && ds4_toolmap_put(m, "b", "BB", 2, &err) == 0 &&
                ds4_toolmap_put(m, "c", "C", 1, &err) == 0,
            "%s", err.msg);
    size_t len = 0;
    const char *v = ds4_toolmap_get(m, "a", &len); /* a becomes the most recent */
    T_CHECK(v && len == 3 && memcmp(v, "AAA", 3) == 0, "get a");
    T_CHECK(ds4_toolmap_put(m, "d", "DDDD", 4, &err) == 0, "%s", err.msg);
    T_CHECK(ds4_toolmap_count(m) == 3 && !ds4_toolmap_has(m, "b") && ds4_toolmap_has(m, "a") && ds4_toolmap_has(m, "c") &&
                ds4_toolmap_has(m, "d"),
            "LRU evicted b");
    T_CHECK(ds4_toolmap_put(m, "c", "new", 3, &err) == 0 && ds4_toolmap_count(m) == 3, "replace");
    v = ds4_toolmap_get(m, "c", &len);
    T_CHECK(v && len == 3 && memcmp(v, "new", 3) == 0, "replaced value");
    T_CHECK(ds4_toolmap_get(m, "zz", NULL) == NULL, "absent");
    ds4_toolmap_free(m);

    /* Byte budget, and many ids (rehashing). */
    T_CHECK(ds4_toolmap_new(&m, 100000, 0, &err) == 0, "%s", err.msg);
    char id[64];
    for (int i = 0; i < 5000; i++) {
        snprintf(id, sizeof(id), "call_%d", i);
        T_CHECK(ds4_toolmap_put(m, id, id, strlen(id), &err) == 0, "%s", err.msg);
    }
    for (int i = 0; i < 5000; i += 97) {
        snprintf(id, sizeof(id), "call_%d", i);
        v = ds4_toolmap_get(m, id, &len);
        T_CHECK(v && len == strlen(id) && memcmp(v, id, len) == 0, "entry %d", i);
    }
    size_t bytes = ds4_toolmap_bytes(m);
    ds4_toolmap_free(m);
    T_CHECK(ds4_toolmap_new(&m, 100000, bytes / 2, &err) == 0, "%s", err.msg);
    for (int i = 0; i < 5000; i++) {
        snprintf(id, sizeof(id), "call_%d", i);
        T_CHECK(ds4_toolmap_put(m, id, id, strlen(id), &err) == 0, "%s", err.msg);
    }
    T_CHECK(ds4_toolmap_bytes(m) <= bytes / 2 && ds4_toolmap_count(m) > 2000 && ds4_toolmap_count(m) < 2600 &&
                ds4_toolmap_has(m, "call_4999") && !ds4_toolmap_has(m, "call_0"),
            "byte budget: %zu entries, %zu bytes", ds4_toolmap_count(m), ds4_toolmap_bytes(m));
    /* Fresh ids: prefix + 32 hex, distinct. */
    char a[64], b[64];
    T_CHECK(ds4_tool_id_new(m, "toolu_", a, sizeof(a), &err) == 0 && ds4_tool_id_new(m, "toolu_", b, sizeof(b), &err) == 0,
            "%s", err.msg);
    T_CHECK(strlen(a) == 38 && strncmp(a, "toolu_", 6) == 0 && strspn(a + 6, "0123456789abcdef") == 32 && strcmp(a, b) != 0,
            "ids %s %s", a, b);
    T_CHECK(ds4_tool_id_new(m, "call_", a, 20, &err) == -1, "small buffer refused");
    ds4_toolmap_free(m);
    return 0;
}

/* ------------------------------------------------------------------ */
/* Tracker                                                             */
/* ------------------------------------------------------------------ */

#define MAX_CALLS 8

/* What a tracker emitted, concatenated per kind. */
typedef struct trace {
    ds4p_buf reasoning, content, args[MAX_CALLS];
    char names[MAX_CALLS][64], ids[MAX_CALLS][64];
    int n_start, n_end, n_reasoning_end, n_finish, n_error;
    enum ds4_finish finish;
    char stop[64];
    char error[400];
    int bad_utf8;       /* deltas that were not valid UTF-8 */
    int order_errors;   /* events out of order */
    int ended;
} trace;

static bool valid_utf8(const char *s, size_t n) {
    ds4p_buf b = {0};
    ds4_error e = {{0}};
    bool ok = ds4p_buf_utf8(&b, s, n, &e) == 0 && b.len == n && (n == 0 || memcmp(b.p, s, n) == 0);
    ds4p_buf_free(&b);
    return ok;
}

static int trace_sink(void *ctx, const ds4_gen_event *ev, ds4_error *err) {
    trace *t = ctx;
    if (t->ended) t->order_errors++;
    if ((ev->type == DS4_EV_REASONING || ev->type == DS4_EV_CONTENT || ev->type == DS4_EV_TOOL_ARGS) &&
        !valid_utf8(ev->text, ev->len))
        t->bad_utf8++;
    switch (ev->type) {
    case DS4_EV_REASONING:
        if (t->n_reasoning_end || t->content.len || t->n_start) t->order_errors++;
        return ds4p_buf_add(&t->reasoning, ev->text, ev->len, err);
    case DS4_EV_REASONING_END: t->n_reasoning_end++; return 0;
    case DS4_EV_CONTENT:
        if (t->n_start) t->order_errors++;
        return ds4p_buf_add(&t->content, ev->text, ev->len, err);
    case DS4_EV_TOOL_START:
        if ((int)ev->index != t->n_start || ev->index >= MAX_CALLS || t->n_end != t->n_start) t->order_errors++;
        if (ev->index < MAX_CALLS) {
            snprintf(t->names[ev->index], 64, "%s", ev->name);
            snprintf(t->ids[ev->index], 64, "%s", ev->id);
        }
        t->n_start++;
        return 0;
    case DS4_EV_TOOL_ARGS:
        if ((int)ev->index != t->n_start - 1 || t->n_end == t->n_start) t->order_errors++;
        return ds4p_buf_add(&t->args[ev->index % MAX_CALLS], ev->text, ev->len, err);
    case DS4_EV_TOOL_END:
        if ((int)ev->index != t->n_end) t->order_errors++;
        t->n_end++;
        return 0;
    case DS4_EV_FINISH:
        t->n_finish++;
        t->finish = ev->finish;
        snprintf(t->stop, sizeof(t->stop), "%s", ev->stop_sequence ? ev->stop_sequence : "");
        t->ended = 1;
        return 0;
    case DS4_EV_ERROR:
        t->n_error++;
        snprintf(t->error, sizeof(t->error), "%s", ev->message ? ev->message : "");
        t->ended = 1;
        return 0;
    default: return 0;
    }
}

static void trace_free(trace *t) {
    ds4p_buf_free(&t->reasoning);
    ds4p_buf_free(&t->content);
    for (int i = 0; i < MAX_CALLS; i++) ds4p_buf_free(&t->args[i]);
}

static const char *bs(const ds4p_buf *b) { return b->p ? b->p : ""; }

/* Run text through a tracker in pieces of `chunk` bytes (0: byte by
 * byte with every other split 2 bytes). */
static int run_tracker(const char *text, size_t len, const ds4_tracker_opts *o, size_t chunk, enum ds4_gen_end end,
                       trace *t, ds4_gen_tracker **keep, ds4_error *err) {
    memset(t, 0, sizeof(*t));
    ds4_gen_tracker *tr;
    if (ds4_gen_tracker_new(&tr, o, trace_sink, t, err)) return -1;
    size_t i = 0, k = 0;
    while (i < len && !ds4_gen_tracker_done(tr)) {
        size_t n = chunk ? chunk : 1 + (k++ % 2);
        if (n > len - i) n = len - i;
        if (ds4_gen_tracker_feed(tr, text + i, n, err)) {
            ds4_gen_tracker_free(tr);
            return -1;
        }
        i += n;
    }
    ds4_gen_usage u = {10, 4, 7, 0};
    int rc = ds4_gen_tracker_finish(tr, end, &u, err);
    if (keep && rc == 0) *keep = tr;
    else ds4_gen_tracker_free(tr);
    return rc;
}

/* A generated thinking turn with two calls: a string parameter holding
 * JSON-special characters, an escaped closing tag and non-ASCII text, a
 * JSON parameter with a string inside, and a call without parameters. */
static const char GEN_CALLS[] =
    "Let me check the <weather> & \xE2\x82\xAC prices.</think>I'll look it up."
    "\n\n<｜DSML｜tool_calls>\n"
    "<｜DSML｜invoke name=\"get_weather\">\n"
    "<｜DSML｜parameter name=\"city\" string=\"true\">Z\xC3\xBCrich \"old\" town\\n\ttab &lt;/｜DSML｜parameter> end</｜DSML｜parameter>\n"
    "<｜DSML｜parameter name=\"opts\" string=\"false\">{\"days\": 3, \"units\": \"m\\\"e}tric\", \"x\": [1, 2]}</｜DSML｜parameter>\n"
    "</｜DSML｜invoke>\n"
    "<｜DSML｜invoke name=\"now\">\n\n"
    "</｜DSML｜invoke>\n"
    "</｜DSML｜tool_calls>";

static int test_tracker_tool_calls(void) {
    ds4_error err = {{0}};
    /* The reference: ds4_chat_parse of the whole text. */
    ds4_chat_parsed ref;
    T_CHECK(ds4_chat_parse(GEN_CALLS, strlen(GEN_CALLS), true, false, &ref, &err) == 0, "%s", err.msg);
    T_CHECK(ref.status == DS4_PARSE_DONE && ref.n_calls == 2, "reference parse: %zu calls", ref.n_calls);
    char *ref_args[2];
    for (int k = 0; k < 2; k++) T_CHECK(ds4_chat_call_arguments(&ref.calls[k], &ref_args[k], &err) == 0, "%s", err.msg);
    ds4_tracker_opts o = {.thinking = true, .tools = true, .id_prefix = "call_"};
    static const size_t chunks[] = {0, 1, 3, 7, 64, 100000};
    for (size_t c = 0; c < sizeof(chunks) / sizeof(chunks[0]); c++) {
        trace t;
        ds4_gen_tracker *tr = NULL;
        T_CHECK(run_tracker(GEN_CALLS, strlen(GEN_CALLS), &o, chunks[c], DS4_END_DONE, &t, &tr, &err) == 0, "%s", err.msg);
        T_CHECK(strcmp(bs(&t.reasoning), ref.reasoning) == 0, "chunk %zu reasoning [%s]", chunks[c], bs(&t.reasoning));
        T_CHECK(strcmp(bs(&t.content), ref.content) == 0 && strcmp(ref.content, "I'll look it up.") == 0,
                "chunk %zu content [%s]", chunks[c], bs(&t.content));
        T_CHECK(t.n_start == 2 && t.n_end == 2 && t.n_finish == 1 && t.finish == DS4_FINISH_TOOL_CALLS &&
                    t.n_reasoning_end == 1 && t.order_errors == 0 && t.bad_utf8 == 0,
                "chunk %zu: events start %d end %d finish %d order %d utf8 %d", chunks[c], t.n_start, t.n_end, t.n_finish,
                t.order_errors, t.bad_utf8);
        for (int k = 0; k < 2; k++) {
            T_CHECK(strcmp(t.names[k], ref.calls[k].name) == 0, "name %d", k);
            T_CHECK(strcmp(bs(&t.args[k]), ref_args[k]) == 0, "chunk %zu call %d args\n  got  %s\n  want %s", chunks[c], k,
                    bs(&t.args[k]), ref_args[k]);
            T_CHECK(strncmp(t.ids[k], "call_", 5) == 0 && strlen(t.ids[k]) == 37, "id %s", t.ids[k]);
            cJSON *j = cJSON_Parse(bs(&t.args[k]));
            T_CHECK(j && cJSON_IsObject(j), "args %d are a JSON object", k);
            cJSON_Delete(j);
        }
        T_CHECK(strcmp(t.ids[0], t.ids[1]) != 0, "distinct ids");
        /* The exact block starts at the blank line. */
        size_t bl = 0;
        const char *blk = ds4_gen_tracker_block(tr, &bl);
        const char *want = strstr(GEN_CALLS, "\n\n<｜DSML｜tool_calls>");
        T_CHECK(blk && bl == strlen(want) && memcmp(blk, want, bl) == 0, "block");
        T_CHECK(ds4_gen_tracker_done(tr), "done after the block");
        ds4_gen_tracker_free(tr);
        trace_free(&t);
    }
    T_CHECK(strstr(ref_args[0], "\"city\": \"Z\xC3\xBCrich \\\"old\\\" town\\\\n\\ttab </｜DSML｜parameter> end\""),
            "the reference escapes as json.dumps: %s", ref_args[0]);
    for (int k = 0; k < 2; k++) free(ref_args[k]);
    ds4_chat_parsed_free(&ref);
    return 0;
}

/* Random turns: valid blocks, and mutated ones, fed in random splits.
 * Wherever ds4_chat_parse accepts the whole text, the tracker must agree
 * on reasoning, content, call names and argument text; it must never emit
 * invalid UTF-8 or events out of order. */
static void gen_value(test_rng *r, ds4p_buf *b, bool is_str, ds4_error *e) {
    static const char *const pieces[] = {"a", "b c", "\"", "\\", "\n", "\t", "<", ">", "&", "&lt;", "&lt;/｜DSML｜parameter>",
                                         "</", "\xE2\x82\xAC", "\xF0\x9F\x98\x80", "{", "}", "｜", "\xC3\xBC", " ", "x\ny"};
    static const char *const jvals[] = {"1", "-2.5e3", "true", "null", "\"s\\\"q\"", "[1, \"two\", {}]",
                                        "{\"k\": \"v<\", \"n\": [false]}", "\"\xE2\x82\xAC\""};
    if (!is_str) {
        ds4p_buf_str(b, jvals[test_rng_u64(r) % 8], e);
        return;
    }
    int n = (int)(test_rng_u64(r) % 6);
    for (int i = 0; i < n; i++) ds4p_buf_str(b, pieces[test_rng_u64(r) % 20], e);
}

static void gen_turn(test_rng *r, ds4p_buf *b, bool thinking, ds4_error *e) {
    if (thinking) ds4p_buf_str(b, test_rng_u64(r) % 2 ? "plan \xE2\x82\xAC <x>\n" : "", e), ds4p_buf_str(b, "</think>", e);
    static const char *const contents[] = {"", "Sure.", "a\nb\n", "x <y> & z", "\xC3\xA9t\xC3\xA9"};
    ds4p_buf_str(b, contents[test_rng_u64(r) % 5], e);
    if (test_rng_u64(r) % 4 == 0) return;
    ds4p_buf_str(b, test_rng_u64(r) % 2 ? "\n\n<｜DSML｜tool_calls>\n" : "<｜DSML｜tool_calls>\n", e);
    int calls = (int)(test_rng_u64(r) % 3);
    for (int c = 0; c < calls; c++) {
        ds4p_buf_str(b, test_rng_u64(r) % 3 ? "<｜DSML｜invoke name=\"" : "<｜DSML｜invoke \n name=\"", e);
        ds4p_buf_str(b, c ? "tool_b" : "tool_a", e);
        ds4p_buf_str(b, "\">\n", e);
        int params = (int)(test_rng_u64(r) % 4);
        for (int k = 0; k < params; k++) {
            bool is_str = test_rng_u64(r) % 2;
            char head[96];
            snprintf(head, sizeof(head), "<｜DSML｜parameter name=\"p%d\" string=\"%s\">", k, is_str ? "true" : "false");
            ds4p_buf_str(b, head, e);
            gen_value(r, b, is_str, e);
            ds4p_buf_str(b, "</｜DSML｜parameter>\n", e);
        }
        if (params == 0 && test_rng_u64(r) % 2) ds4p_buf_str(b, "\n", e);
        ds4p_buf_str(b, "</｜DSML｜invoke>\n", e);
    }
    ds4p_buf_str(b, "</｜DSML｜tool_calls>", e);
}

static int test_tracker_random(void) {
    ds4_error err = {{0}};
    test_rng r = {0x5eed1234abcdull};
    int agreed = 0, with_calls = 0, mutated = 0;
    for (int it = 0; it < 400; it++) {
        bool thinking = test_rng_u64(&r) % 2;
        ds4p_buf b = {0};
        gen_turn(&r, &b, thinking, &err);
        if (it % 3 == 2 && b.len > 4) {
            /* Mutate: drop or duplicate a random span. */
            size_t at = test_rng_u64(&r) % b.len, n = 1 + test_rng_u64(&r) % 6;
            if (at + n > b.len) n = b.len - at;
            if (test_rng_u64(&r) % 2) {
                memmove(b.p + at, b.p + at + n, b.len - at - n + 1);
                b.len -= n;
            } else {
                ds4p_buf d = {0};
                ds4p_buf_add(&d, b.p, at + n, &err);
                ds4p_buf_add(&d, b.p + at, b.len - at, &err);
                ds4p_buf_free(&b);
                b = d;
            }
            mutated++;
        }
        ds4_tracker_opts o = {.thinking = thinking, .tools = true};
        trace t;
        ds4_gen_tracker *tr = NULL;
        size_t chunk = test_rng_u64(&r) % 5; /* 0: 1-2 bytes, else fixed */
        T_CHECK(run_tracker(b.p, b.len, &o, chunk, DS4_END_EOS, &t, &tr, &err) == 0, "it %d: %s", it, err.msg);
        T_CHECK(t.order_errors == 0 && t.bad_utf8 == 0 && t.n_finish + t.n_error == 1, "it %d: order %d utf8 %d", it,
                t.order_errors, t.bad_utf8);
        ds4_chat_parsed p;
        ds4_error perr = {{0}};
        int prc = ds4_chat_parse(b.p, b.len, thinking, true, &p, &perr);
        if (prc == 0 && p.status == DS4_PARSE_DONE) {
            ds4p_buf want = {0};
            ds4p_buf_utf8(&want, p.content, p.content_len, &err);
            T_CHECK(strcmp(bs(&t.content), bs(&want)) == 0, "it %d: content [%s] want [%s]\n%s", it, bs(&t.content), bs(&want),
                    b.p);
            want.len = 0;
            ds4p_buf_utf8(&want, p.reasoning, p.reasoning_len, &err);
            T_CHECK(strcmp(bs(&t.reasoning), bs(&want)) == 0, "it %d: reasoning", it);
            T_CHECK(t.n_error == 0 && t.n_start == (int)p.n_calls && t.n_end == t.n_start, "it %d: %d calls, parse %zu (%s)\n%s",
                    it, t.n_start, p.n_calls, t.error, b.p);
            for (size_t k = 0; k < p.n_calls; k++) {
                char *args = NULL;
                T_CHECK(ds4_chat_call_arguments(&p.calls[k], &args, &err) == 0, "%s", err.msg);
                want.len = 0;
                ds4p_buf_utf8(&want, args, strlen(args), &err);
                free(args);
                T_CHECK(strcmp(t.names[k], p.calls[k].name) == 0 && strcmp(bs(&t.args[k]), bs(&want)) == 0,
                        "it %d call %zu: %s\n  want %s\n%s", it, k, bs(&t.args[k]), bs(&want), b.p);
            }
            T_CHECK(t.n_finish == 1 && t.finish == (p.in_tool_calls && p.n_calls ? DS4_FINISH_TOOL_CALLS : DS4_FINISH_STOP),
                    "it %d: finish %d", it, t.finish);
            if (p.n_calls) {
                size_t bl = 0;
                const char *blk = ds4_gen_tracker_block(tr, &bl);
                const char *close = "</｜DSML｜tool_calls>";
                size_t cl = strlen(close);
                bool found = false;
                for (size_t i = 0; blk && i + bl <= b.len && !found; i++) found = memcmp(b.p + i, blk, bl) == 0;
                T_CHECK(found && bl > cl && memcmp(blk + bl - cl, close, cl) == 0 && (blk[0] == '<' || blk[0] == '\n'),
                        "it %d: block", it);
                with_calls++;
            }
            ds4p_buf_free(&want);
            agreed++;
        }
        ds4_chat_parsed_free(&p);
        ds4_gen_tracker_free(tr);
        trace_free(&t);
        ds4p_buf_free(&b);
    }
    T_CHECK(agreed > 250 && with_calls > 100 && mutated > 100, "coverage: %d agreed, %d with calls, %d mutated", agreed,
            with_calls, mutated);
    return 0;
}

/* Greedy structure, free payload. */
static int test_tracker_payload(void) {
    ds4_error err = {{0}};
    ds4_tracker_opts o = {.thinking = false, .tools = true};
    trace t;
    memset(&t, 0, sizeof(t));
    ds4_gen_tracker *tr;
    T_CHECK(ds4_gen_tracker_new(&tr, &o, trace_sink, &t, &err) == 0, "%s", err.msg);
    static const struct {
        const char *piece;
        bool payload;
    } steps[] = {
        {"Sure.", true},
        {"\n\n<｜DSML｜tool_calls>", false},
        {"\n<｜DSML｜invoke name=\"w\">\n", false},
        {"<｜DSML｜parameter name=\"a\" string=\"true\">", true},
        {"hello", true},
        {"</｜DSML｜parameter>\n", false},
        {"<｜DSML｜parameter name=\"b\" string=\"false\">", false},
        {"{\"k\": ", false},
        {"\"va", true},
        {"l\\\"ue\"", false},
        {", \"n\": 1}", false},
        {"</｜DSML｜parameter>\n</｜DSML｜invoke>\n", false},
    };
    for (size_t i = 0; i < sizeof(steps) / sizeof(steps[0]); i++) {
        T_CHECK(ds4_gen_tracker_feed(tr, steps[i].piece, strlen(steps[i].piece), &err) == 0, "%s", err.msg);
        T_CHECK(ds4_gen_tracker_payload(tr) == steps[i].payload, "after [%s]: payload %d", steps[i].piece,
                ds4_gen_tracker_payload(tr));
        T_CHECK(!ds4_gen_tracker_done(tr), "not done at step %zu", i);
    }
    T_CHECK(t.n_start == 1 && t.n_end == 1 && strcmp(bs(&t.args[0]), "{\"a\": \"hello\", \"b\": {\"k\": \"val\\\"ue\", \"n\": 1}}") == 0,
            "args %s", bs(&t.args[0]));
    T_CHECK(ds4_gen_tracker_feed(tr, "</｜DSML｜tool_calls>", strlen("</｜DSML｜tool_calls>"), &err) == 0, "%s", err.msg);
    T_CHECK(ds4_gen_tracker_done(tr), "done");
    T_CHECK(ds4_gen_tracker_finish(tr, DS4_END_DONE, NULL, &err) == 0 && t.finish == DS4_FINISH_TOOL_CALLS, "finish");
    ds4_gen_tracker_free(tr);
    trace_free(&t);
    return 0;
}

static int test_tracker_text_cases(void) {
    ds4_error err = {{0}};
    static const struct {
        const char *text;
        bool thinking, tools;
        const char *stop;
        enum ds4_gen_end end;
        const char *reasoning, *content;
        enum ds4_finish finish;
        const char *stop_hit;
        int calls, error;
    } cases[] = {
        /* stop string, also split, also after a false start */
        {"Hello STOP world", false, false, "STOP", DS4_END_EOS, "", "Hello ", DS4_FINISH_STOP, "STOP", 0, 0},
        {"a STSTOP b", false, false, "STOP", DS4_END_EOS, "", "a ST", DS4_FINISH_STOP, "STOP", 0, 0},
        {"no stop here ST", false, false, "STOP", DS4_END_EOS, "", "no stop here ST", DS4_FINISH_STOP, "", 0, 0},
        /* stops do not apply to the reasoning */
        {"r STOP r</think>c", true, false, "STOP", DS4_END_EOS, "r STOP r", "c", DS4_FINISH_STOP, "", 0, 0},
        /* EOS text ends the turn */
        {"abc<｜end▁of▁sentence｜>", false, true, NULL, DS4_END_DONE, "", "abc", DS4_FINISH_STOP, "", 0, 0},
        {"r<｜end▁of▁sentence｜>", true, true, NULL, DS4_END_DONE, "r", "", DS4_FINISH_STOP, "", 0, 0},
        /* length inside the reasoning / the content */
        {"long reas", true, false, NULL, DS4_END_LENGTH, "long reas", "", DS4_FINISH_LENGTH, "", 0, 0},
        {"x</think>partial </th", true, false, NULL, DS4_END_LENGTH, "x", "partial </th", DS4_FINISH_LENGTH, "", 0, 0},
        /* without tools DSML is content */
        {"A\n\n<｜DSML｜tool_calls>\n", false, false, NULL, DS4_END_EOS, "", "A\n\n<｜DSML｜tool_calls>\n", DS4_FINISH_STOP, "",
         0, 0},
        /* a block that breaks before any call is plain content */
        {"A\n\n<｜DSML｜tool_calls>\n<oops> tail", false, true, NULL, DS4_END_EOS, "",
         "A\n\n<｜DSML｜tool_calls>\n<oops> tail", DS4_FINISH_STOP, "", 0, 0},
        {"A\n\n<｜DSML｜tool_calls>\n<｜DSML｜inv", false, true, NULL, DS4_END_EOS, "", "A\n\n<｜DSML｜tool_calls>\n<｜DSML｜inv",
         DS4_FINISH_STOP, "", 0, 0},
        /* after a call started it is an error */
        {"\n\n<｜DSML｜tool_calls>\n<｜DSML｜invoke name=\"f\">\n<bad>", false, true, NULL, DS4_END_EOS, "", "",
         DS4_FINISH_STOP, "", 1, 1},
        {"<｜DSML｜tool_calls>\n<｜DSML｜invoke name=\"f\">\n<｜DSML｜parameter name=\"j\" string=\"false\">{bad</｜DSML｜parameter>\n",
         false, true, NULL, DS4_END_EOS, "", "", DS4_FINISH_STOP, "", 1, 1},
        {"<｜DSML｜tool_calls>\n<｜DSML｜invoke name=\"f\">\n<｜DSML｜parameter name=\"s\" string=\"true\">x", false, true, NULL,
         DS4_END_EOS, "", "", DS4_FINISH_STOP, "", 1, 1},
        /* truncated by the length limit: finish length, the call closed */
        {"<｜DSML｜tool_calls>\n<｜DSML｜invoke name=\"f\">\n<｜DSML｜parameter name=\"s\" string=\"true\">x", false, true, NULL,
         DS4_END_LENGTH, "", "", DS4_FINISH_LENGTH, "", 1, 0},
        /* UTF-8: invalid bytes become U+FFFD, split characters are whole */
        {"caf\xC3\xA9 \xF0\x9F\x98\x80 bad\xFF!", false, false, NULL, DS4_END_EOS, "", "caf\xC3\xA9 \xF0\x9F\x98\x80 bad\xEF\xBF\xBD!",
         DS4_FINISH_STOP, "", 0, 0},
        {"cut \xE2\x82", false, false, NULL, DS4_END_LENGTH, "", "cut \xEF\xBF\xBD\xEF\xBF\xBD", DS4_FINISH_LENGTH, "", 0, 0},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        const char *stops[1] = {cases[i].stop};
        ds4_tracker_opts o = {.thinking = cases[i].thinking, .tools = cases[i].tools, .stop = stops,
                              .n_stop = cases[i].stop ? 1 : 0};
        for (size_t chunk = 0; chunk < 4; chunk++) {
            trace t;
            T_CHECK(run_tracker(cases[i].text, strlen(cases[i].text), &o, chunk, cases[i].end, &t, NULL, &err) == 0,
                    "case %zu: %s", i, err.msg);
            T_CHECK(strcmp(bs(&t.reasoning), cases[i].reasoning) == 0, "case %zu/%zu reasoning [%s]", i, chunk,
                    bs(&t.reasoning));
            T_CHECK(strcmp(bs(&t.content), cases[i].content) == 0, "case %zu/%zu content [%s]", i, chunk, bs(&t.content));
            T_CHECK(t.n_start == cases[i].calls && t.n_error == cases[i].error && t.order_errors == 0 && t.bad_utf8 == 0,
                    "case %zu/%zu: calls %d errors %d (%s) order %d utf8 %d", i, chunk, t.n_start, t.n_error, t.error,
                    t.order_errors, t.bad_utf8);
            if (!cases[i].error) {
                T_CHECK(t.n_finish == 1 && t.finish == cases[i].finish && strcmp(t.stop, cases[i].stop_hit) == 0,
                        "case %zu/%zu: finish %d stop [%s]", i, chunk, t.finish, t.stop);
            } else {
                T_CHECK(t.n_finish == 0 && strstr(t.error, "tool call"), "case %zu: error [%s]", i, t.error);
            }
            trace_free(&t);
        }
    }
    return 0;
}

/* Sampled DSML comes back byte for byte; edited calls render canonically. */
static int test_exact_replay(void) {
    ds4_error err = {{0}};
    /* Non-canonical DSML: minified JSON value, an extra newline in the
     * parameterless invoke, one newline before the block. */
    const char *gen = "Plan.</think>Calling.\n<｜DSML｜tool_calls>\n<｜DSML｜invoke name=\"f\">\n"
                      "<｜DSML｜parameter name=\"o\" string=\"false\">{\"a\":1,\"b\":[true]}</｜DSML｜parameter>\n"
                      "</｜DSML｜invoke>\n<｜DSML｜invoke name=\"g\">\n\n</｜DSML｜invoke>\n</｜DSML｜tool_calls>";
    ds4_toolmap *map;
    T_CHECK(ds4_toolmap_new(&map, 100, 0, &err) == 0, "%s", err.msg);
    ds4_tracker_opts o = {.thinking = true, .tools = true, .ids = map};
    trace t;
    ds4_gen_tracker *tr = NULL;
    T_CHECK(run_tracker(gen, strlen(gen), &o, 5, DS4_END_DONE, &t, &tr, &err) == 0, "%s", err.msg);
    T_CHECK(t.n_start == 2 && strcmp(bs(&t.content), "Calling.\n") == 0, "content [%s]", bs(&t.content));
    T_CHECK(ds4_gen_tracker_remember(tr, map, &err) == 0 && ds4_toolmap_count(map) == 2, "remember");
    /* The client sends the turn back as OpenAI JSON. */
    char json[2048];
    snprintf(json, sizeof(json),
             "{\"messages\":[{\"role\":\"user\",\"content\":\"q\"},{\"role\":\"assistant\",\"content\":\"Calling.\\n\","
             "\"reasoning_content\":\"Plan.\",\"tool_calls\":[{\"id\":\"%s\",\"type\":\"function\",\"function\":{\"name\":\"f\","
             "\"arguments\":%s}},{\"id\":\"%s\",\"type\":\"function\",\"function\":{\"name\":\"g\",\"arguments\":\"{}\"}}]},"
             "{\"role\":\"tool\",\"tool_call_id\":\"%s\",\"content\":\"r1\"},{\"role\":\"tool\",\"tool_call_id\":\"%s\",\"content\":\"r2\"}],"
             "\"tools\":[{\"type\":\"function\",\"function\":{\"name\":\"f\"}}]}",
             t.ids[0], "\"{\\\"o\\\": {\\\"a\\\": 1, \\\"b\\\": [true]}}\"", t.ids[1], t.ids[0], t.ids[1]);
    ds4_gen_request r;
    T_CHECK(parse(DS4_PROTO_CHAT, json, &r, &err) == 0, "%s", err.msg);
    ds4_replay_stats st;
    T_CHECK(ds4_gen_request_replay(&r, map, &st, &err) == 0, "%s", err.msg);
    T_CHECK(st.messages == 1 && st.exact == 1 && st.missing == 0 && st.changed == 0, "stats %u %u %u %u", st.messages,
            st.exact, st.missing, st.changed);
    ds4_chat_prompt p;
    T_CHECK(ds4_gen_request_render(&r, 4096, &p, &err) == 0, "%s", err.msg);
    /* The live text (prompt up to the generation + what was generated). */
    const char *open = "<｜Assistant｜><think>";
    const char *at = strstr(p.text, open);
    T_CHECK(at, "no opener in %s", p.text);
    at += strlen(open);
    T_CHECK(strncmp(at, gen, strlen(gen)) == 0, "replay differs:\n%s\nwant prefix:\n%s", at, gen);
    T_CHECK(strncmp(at + strlen(gen), "<｜end▁of▁sentence｜>", strlen("<｜end▁of▁sentence｜>")) == 0, "EOS follows");
    /* The block is template text: its DSML markers become control tokens. */
    ds4_chat_piece *pc = NULL;
    size_t np = 0, n_dsml = 0;
    T_CHECK(ds4_chat_pieces(&p, &pc, &np, &err) == 0, "%s", err.msg);
    size_t lo = (size_t)(at - p.text), hi = lo + strlen(gen);
    for (size_t i = 0; i < np; i++) n_dsml += pc[i].special == DS4_TOK_DSML && pc[i].off >= lo && pc[i].off < hi;
    T_CHECK(n_dsml == 8, "%zu DSML control tokens in the replayed turn", n_dsml);
    free(pc);
    ds4_chat_prompt_free(&p);
    ds4_gen_request_free(&r);

    /* Edited arguments: rendered canonically. */
    char *edit = strstr(json, "[true]");
    T_CHECK(edit, "fixture");
    memcpy(edit, "[fals]", 6);
    char *e2 = strstr(json, "[fals]");
    memmove(e2 + 7, e2 + 6, strlen(e2 + 6) + 1);
    memcpy(e2, "[false]", 7);
    T_CHECK(parse(DS4_PROTO_CHAT, json, &r, &err) == 0, "%s", err.msg);
    T_CHECK(ds4_gen_request_replay(&r, map, &st, &err) == 0 && st.exact == 0 && st.changed == 1, "changed %u", st.changed);
    T_CHECK(r.msgs[1].tool_block == NULL, "no replay");
    ds4_gen_request_free(&r);
    /* Unknown ids: canonical. */
    ds4_toolmap *empty;
    T_CHECK(ds4_toolmap_new(&empty, 10, 0, &err) == 0, "%s", err.msg);
    T_CHECK(parse(DS4_PROTO_CHAT, json, &r, &err) == 0, "%s", err.msg);
    T_CHECK(ds4_gen_request_replay(&r, empty, &st, &err) == 0 && st.missing == 1, "missing %u", st.missing);
    ds4_gen_request_free(&r);
    ds4_toolmap_free(empty);
    ds4_gen_tracker_free(tr);
    trace_free(&t);
    ds4_toolmap_free(map);
    return 0;
}

/* ------------------------------------------------------------------ */
/* Output: SSE and bodies                                              */
/* ------------------------------------------------------------------ */

typedef struct sse_cap {
    ds4p_buf text;
    int n;
    char names[256][64];
    cJSON *data[256];
    int bad_json;
    int fail_after; /* the write fails after this many events (0: never) */
} sse_cap;

static int cap_write(void *ctx, const char *event, const char *data, size_t len) {
    sse_cap *c = ctx;
    ds4_error e = {{0}};
    if (c->fail_after && c->n >= c->fail_after) return -1;
    if (event && (ds4p_buf_str(&c->text, "event: ", &e) || ds4p_buf_str(&c->text, event, &e) ||
                  ds4p_buf_str(&c->text, "\n", &e)))
        return -1;
    if (ds4p_buf_str(&c->text, "data: ", &e) || ds4p_buf_add(&c->text, data, len, &e) || ds4p_buf_str(&c->text, "\n\n", &e))
        return -1;
    if (memchr(data, '\n', len)) c->bad_json++;
    if (c->n < 256) {
        snprintf(c->names[c->n], 64, "%s", event ? event : "");
        c->data[c->n] = strcmp(data, "[DONE]") == 0 ? cJSON_CreateNull() : cJSON_ParseWithLength(data, len);
        if (!c->data[c->n]) c->bad_json++;
    }
    c->n++;
    return 0;
}

static void cap_free(sse_cap *c) {
    ds4p_buf_free(&c->text);
    for (int i = 0; i < c->n && i < 256; i++) cJSON_Delete(c->data[i]);
}

static const char *jstr(const cJSON *j, const char *path) {
    /* "a.b.0.c": object keys and array indexes */
    char buf[128];
    snprintf(buf, sizeof(buf), "%s", path);
    const cJSON *cur = j;
    for (char *tok = strtok(buf, "."); tok && cur; tok = strtok(NULL, "."))
        cur = (tok[0] >= '0' && tok[0] <= '9') ? cJSON_GetArrayItem(cur, atoi(tok)) : cJSON_GetObjectItemCaseSensitive(cur, tok);
    return cur && cJSON_IsString(cur) ? cur->valuestring : NULL;
}

static double jnum(const cJSON *j, const char *path) {
    char buf[128];
    snprintf(buf, sizeof(buf), "%s", path);
    const cJSON *cur = j;
    for (char *tok = strtok(buf, "."); tok && cur; tok = strtok(NULL, "."))
        cur = (tok[0] >= '0' && tok[0] <= '9') ? cJSON_GetArrayItem(cur, atoi(tok)) : cJSON_GetObjectItemCaseSensitive(cur, tok);
    return cur && cJSON_IsNumber(cur) ? cur->valuedouble : -1;
}

static const cJSON *jget(const cJSON *j, const char *path) {
    char buf[128];
    snprintf(buf, sizeof(buf), "%s", path);
    const cJSON *cur = j;
    for (char *tok = strtok(buf, "."); tok && cur; tok = strtok(NULL, "."))
        cur = (tok[0] >= '0' && tok[0] <= '9') ? cJSON_GetArrayItem(cur, atoi(tok)) : cJSON_GetObjectItemCaseSensitive(cur, tok);
    return cur;
}

/* Write fixtures for sdk_test.py --replay when DS4CL_PROTO_DUMP is set. */
static void dump(const char *name, const char *text) {
    const char *dir = getenv("DS4CL_PROTO_DUMP");
    if (!dir || !*dir) return;
    mkdir(dir, 0755);
    char path[1024];
    snprintf(path, sizeof(path), "%s/%s", dir, name);
    FILE *f = fopen(path, "wb");
    if (!f) return;
    fputs(text, f);
    fclose(f);
}

enum scenario { SC_THINK_TOOLS, SC_PLAIN, SC_LENGTH, SC_STOPSEQ, SC_FAIL };

/* Drive one scenario through ds4_proto_out: streamed into cap (when cap)
 * and the final reply into *body.  Uses the tracker, as the worker will. */
static int drive(const ds4_gen_request *req, enum scenario sc, sse_cap *cap, int *status, cJSON **body, ds4_error *err) {
    ds4_proto_out *out;
    ds4_proto_out_opts oo = {.seq = 42, .created = 1767225600, .write = cap ? cap_write : NULL, .write_ctx = cap};
    if (ds4_proto_out_new(&out, req, &oo, err)) return -1;
    ds4_gen_tracker *tr = NULL;
    ds4_tracker_opts to = ds4_gen_request_tracker_opts(req, 4096, NULL);
    int rc = ds4_gen_tracker_new(&tr, &to, ds4_proto_out_sink, out, err);
    ds4_gen_event begin = {.type = DS4_EV_BEGIN, .usage = {100, 60, 0, 0}};
    if (rc == 0) rc = ds4_proto_out_event(out, &begin, err);
    const char *text = "";
    enum ds4_gen_end end = DS4_END_EOS;
    switch (sc) {
    case SC_THINK_TOOLS:
        text = "I should call \"f\".</think>Checking the weather."
               "\n\n<｜DSML｜tool_calls>\n<｜DSML｜invoke name=\"get_weather\">\n"
               "<｜DSML｜parameter name=\"city\" string=\"true\">Paris</｜DSML｜parameter>\n"
               "<｜DSML｜parameter name=\"days\" string=\"false\">2</｜DSML｜parameter>\n</｜DSML｜invoke>\n"
               "<｜DSML｜invoke name=\"apply_patch\">\n<｜DSML｜parameter name=\"input\" string=\"true\">*** Begin Patch</｜DSML｜parameter>\n"
               "</｜DSML｜invoke>\n</｜DSML｜tool_calls>";
        end = DS4_END_DONE;
        break;
    case SC_PLAIN: text = to.thinking ? "Hmm.</think>Hello, world!" : "Hello, world!"; break;
    case SC_LENGTH: text = to.thinking ? "Still thinking about" : "Truncated answ"; end = DS4_END_LENGTH; break;
    case SC_STOPSEQ: text = to.thinking ? "ok</think>one two END three" : "one two END three"; end = DS4_END_DONE; break;
    case SC_FAIL: text = to.thinking ? "a</think>b" : "b"; break;
    }
    for (size_t i = 0, n = strlen(text); rc == 0 && i < n && !ds4_gen_tracker_done(tr); i += 4)
        rc = ds4_gen_tracker_feed(tr, text + i, n - i < 4 ? n - i : 4, err);
    if (rc == 0 && sc == SC_FAIL) {
        ds4_gen_event e = {.type = DS4_EV_ERROR, .status = 500, .code = "server_error", .message = "device lost"};
        rc = ds4_proto_out_event(out, &e, err);
    } else if (rc == 0) {
        ds4_gen_usage u = {100, 60, 25, 0};
        rc = ds4_gen_tracker_finish(tr, end, &u, err);
    }
    if (rc == 0) rc = ds4_proto_out_reply(out, status, body, err);
    ds4_gen_tracker_free(tr);
    ds4_proto_out_free(out);
    return rc;
}

static const char *SC_NAMES[] = {"tools", "plain", "length", "stop", "fail"};

static int run_scenarios(enum ds4_proto proto, const char *json, const char *tag, int (*check)(enum scenario, sse_cap *, int,
                                                                                                 cJSON *, const ds4_gen_request *)) {
    ds4_error err = {{0}};
    ds4_gen_request req;
    T_CHECK(parse(proto, json, &req, &err) == 0, "%s", err.msg);
    for (int sc = 0; sc <= SC_FAIL; sc++) {
        for (int streamed = 0; streamed < 2; streamed++) {
            sse_cap cap;
            memset(&cap, 0, sizeof(cap));
            int status = 0;
            cJSON *body = NULL;
            T_CHECK(drive(&req, (enum scenario)sc, streamed ? &cap : NULL, &status, &body, &err) == 0, "%s %s: %s", tag,
                    SC_NAMES[sc], err.msg);
            T_CHECK(cap.bad_json == 0, "%s %s: an SSE data line is not one JSON line", tag, SC_NAMES[sc]);
            int rc = check((enum scenario)sc, streamed ? &cap : NULL, status, body, &req);
            if (rc) fprintf(stderr, "    (%s, scenario %s, %s)\n%s\n", tag, SC_NAMES[sc], streamed ? "streamed" : "body",
                            streamed ? bs(&cap.text) : "");
            char name[96];
            if (streamed) {
                snprintf(name, sizeof(name), "%s_%s.sse", tag, SC_NAMES[sc]);
                dump(name, bs(&cap.text));
            } else {
                char *s = cJSON_Print(body);
                snprintf(name, sizeof(name), "%s_%s.%d.json", tag, SC_NAMES[sc], status);
                if (s) dump(name, s);
                free(s);
            }
            cJSON_Delete(body);
            cap_free(&cap);
            if (rc) {
                ds4_gen_request_free(&req);
                return rc;
            }
        }
    }
    ds4_gen_request_free(&req);
    return 0;
}

/* Find the first event (by SSE name, or by data "type") from index from. */
static int find_ev(const sse_cap *c, const char *type, int from) {
    for (int i = from; i < c->n && i < 256; i++)
        if (strcmp(c->names[i], type) == 0 || STR_EQ(jstr(c->data[i], "type"), type)) return i;
    return -1;
}

static int count_ev(const sse_cap *c, const char *type) {
    int n = 0;
    for (int i = 0; i < c->n && i < 256; i++) n += strcmp(c->names[i], type) == 0 || STR_EQ(jstr(c->data[i], "type"), type);
    return n;
}

/* Concatenate a string field of every event of a type. */
static void concat(const sse_cap *c, const char *type, const char *path, ds4p_buf *out) {
    ds4_error e = {{0}};
    for (int i = 0; i < c->n && i < 256; i++) {
        if (strcmp(c->names[i], type) != 0 && !STR_EQ(jstr(c->data[i], "type"), type)) continue;
        const char *s = jstr(c->data[i], path);
        if (s) ds4p_buf_str(out, s, &e);
    }
}

static int check_chat(enum scenario sc, sse_cap *c, int status, cJSON *body, const ds4_gen_request *req) {
    if (sc == SC_FAIL) {
        T_CHECK(status == 500 && STR_EQ(jstr(body, "error.message"), "device lost") &&
                    STR_EQ(jstr(body, "error.type"), "server_error") && STR_EQ(jstr(body, "error.code"), "server_error"),
                "error body");
        if (c) {
            int e = find_ev(c, "error", 0);
            T_CHECK(e > 0 && STR_EQ(jstr(c->data[e], "error.message"), "device lost"), "SSE error event");
            T_CHECK(find_ev(c, "", e) == -1 || c->n == e + 1, "nothing after the error");
        }
        return 0;
    }
    T_CHECK(status == 200 && STR_EQ(jstr(body, "object"), "chat.completion") && STR_EQ(jstr(body, "id"), "chatcmpl-42") &&
                jnum(body, "created") == 1767225600 && STR_EQ(jstr(body, "model"), req->model),
            "body header");
    const char *fin = jstr(body, "choices.0.finish_reason");
    const char *want_fin = sc == SC_THINK_TOOLS ? "tool_calls" : sc == SC_LENGTH ? "length" : "stop";
    T_CHECK(STR_EQ(fin, want_fin), "finish %s", fin ? fin : "(null)");
    T_CHECK(jnum(body, "usage.prompt_tokens") == 100 && jnum(body, "usage.completion_tokens") == 25 &&
                jnum(body, "usage.total_tokens") == 125 && jnum(body, "usage.prompt_tokens_details.cached_tokens") == 60 &&
                jnum(body, "usage.prompt_tokens_details.cache_write_tokens") == 40,
            "usage");
    if (sc == SC_THINK_TOOLS) {
        T_CHECK(cJSON_IsNull(jget(body, "choices.0.message.content")) == false &&
                    STR_EQ(jstr(body, "choices.0.message.content"), "Checking the weather.") &&
                    STR_EQ(jstr(body, "choices.0.message.reasoning_content"), "I should call \"f\"."),
                "message");
        T_CHECK(STR_EQ(jstr(body, "choices.0.message.tool_calls.0.function.name"), "get_weather") &&
                    STR_EQ(jstr(body, "choices.0.message.tool_calls.0.function.arguments"), "{\"city\": \"Paris\", \"days\": 2}") &&
                    STR_EQ(jstr(body, "choices.0.message.tool_calls.0.type"), "function") &&
                    STR_EQ(jstr(body, "choices.0.message.tool_calls.1.function.arguments"), "{\"input\": \"*** Begin Patch\"}"),
                "tool calls");
    }
    if (sc == SC_STOPSEQ) T_CHECK(STR_EQ(jstr(body, "choices.0.message.content"), "one two "), "stop cut");
    if (!c) return 0;
    /* role chunk, deltas, finish chunk, usage chunk, [DONE] */
    T_CHECK(STR_EQ(jstr(c->data[0], "choices.0.delta.role"), "assistant"), "role chunk");
    for (int i = 0; i < c->n - 1; i++) {
        T_CHECK(c->names[i][0] == '\0' && STR_EQ(jstr(c->data[i], "object"), "chat.completion.chunk") &&
                    STR_EQ(jstr(c->data[i], "id"), "chatcmpl-42"),
                "chunk %d", i);
    }
    T_CHECK(cJSON_IsNull(c->data[c->n - 1]) && strstr(bs(&c->text), "data: [DONE]\n\n"), "[DONE] last");
    const cJSON *u = c->data[c->n - 2];
    T_CHECK(cJSON_GetArraySize(jget(u, "choices")) == 0 && jnum(u, "usage.prompt_tokens") == 100, "usage chunk");
    T_CHECK(STR_EQ(jstr(c->data[c->n - 3], "choices.0.finish_reason"), want_fin), "finish chunk");
    ds4p_buf content = {0}, reasoning = {0}, args = {0};
    ds4_error e = {{0}};
    for (int i = 0; i < c->n - 1; i++) {
        const char *s = jstr(c->data[i], "choices.0.delta.content");
        if (s) ds4p_buf_str(&content, s, &e);
        if ((s = jstr(c->data[i], "choices.0.delta.reasoning_content"))) ds4p_buf_str(&reasoning, s, &e);
        const cJSON *tc = jget(c->data[i], "choices.0.delta.tool_calls.0");
        if (tc && jnum(tc, "index") == 0 && (s = jstr(tc, "function.arguments"))) ds4p_buf_str(&args, s, &e);
        if (tc && jstr(tc, "id")) T_CHECK(STR_EQ(jstr(tc, "type"), "function") && jstr(tc, "function.name"), "start delta");
    }
    const char *want_c = jstr(body, "choices.0.message.content");
    int rc = strcmp(bs(&content), want_c ? want_c : "") != 0 ||
             (sc == SC_THINK_TOOLS && (strcmp(bs(&reasoning), "I should call \"f\".") != 0 ||
                                       strcmp(bs(&args), "{\"city\": \"Paris\", \"days\": 2}") != 0));
    if (rc) fprintf(stderr, "    streamed deltas differ from the body\n");
    ds4p_buf_free(&content);
    ds4p_buf_free(&reasoning);
    ds4p_buf_free(&args);
    return rc;
}

static int test_chat_output(void) {
    return run_scenarios(DS4_PROTO_CHAT,
                         "{\"model\":\"deepseek-v4-flash\",\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}],"
                         "\"tools\":[{\"type\":\"function\",\"function\":{\"name\":\"get_weather\"}}],\"stop\":\"END\","
                         "\"stream_options\":{\"include_usage\":true}}",
                         "chat", check_chat);
}

static int check_completion(enum scenario sc, sse_cap *c, int status, cJSON *body, const ds4_gen_request *req) {
    if (sc == SC_FAIL) {
        T_CHECK(status == 500 && (!c || find_ev(c, "error", 0) >= 0), "error");
        return 0;
    }
    T_CHECK(STR_EQ(jstr(body, "object"), "text_completion") && STR_EQ(jstr(body, "id"), "cmpl-42"), "header");
    const char *text = jstr(body, "choices.0.text");
    if (sc == SC_PLAIN) T_CHECK(STR_EQ(text, "Hmm.</think>Hello, world!"), "text [%s]", text);
    if (sc == SC_THINK_TOOLS) T_CHECK(text && strstr(text, "</think>Checking the weather.\n\n<｜DSML｜tool_calls>"), "raw DSML");
    if (!c) return 0;
    ds4p_buf all = {0};
    concat(c, "", "choices.0.text", &all);
    int rc = strcmp(bs(&all), text ? text : "") != 0;
    if (rc) fprintf(stderr, "    streamed [%s] != body [%s]\n", bs(&all), text);
    ds4p_buf_free(&all);
    T_CHECK(!rc, "stream text");
    T_CHECK(cJSON_IsNull(c->data[c->n - 1]), "[DONE]");
    T_CHECK(STR_EQ(jstr(c->data[c->n - 2], "object"), "text_completion") &&
                STR_EQ(jstr(c->data[c->n - 2], "choices.0.finish_reason"), sc == SC_LENGTH ? "length" : "stop"),
            "finish chunk (no usage chunk without include_usage)");
    (void)req;
    return 0;
}

static int test_completion_output(void) {
    return run_scenarios(DS4_PROTO_COMPLETIONS, "{\"prompt\":\"hi\",\"stop\":[\"END\"]}", "completions", check_completion);
}

static int check_responses(enum scenario sc, sse_cap *c, int status, cJSON *body, const ds4_gen_request *req) {
    if (sc == SC_FAIL) {
        T_CHECK(status == 500 && STR_EQ(jstr(body, "error.message"), "device lost"), "error body");
        if (c) {
            int f = find_ev(c, "response.failed", 0);
            T_CHECK(f > 0 && STR_EQ(jstr(c->data[f], "response.status"), "failed") &&
                        STR_EQ(jstr(c->data[f], "response.error.code"), "server_error"),
                    "failed event");
        }
        return 0;
    }
    const char *want_status = sc == SC_LENGTH ? "incomplete" : "completed";
    T_CHECK(status == 200 && STR_EQ(jstr(body, "object"), "response") && STR_EQ(jstr(body, "status"), want_status) &&
                strncmp(jstr(body, "id"), "resp_", 5) == 0 && strlen(jstr(body, "id")) == 29,
            "body header");
    T_CHECK(jnum(body, "usage.input_tokens") == 100 && jnum(body, "usage.input_tokens_details.cached_tokens") == 60 &&
                jnum(body, "usage.output_tokens") == 25 && jnum(body, "usage.total_tokens") == 125,
            "usage");
    if (sc == SC_LENGTH) T_CHECK(STR_EQ(jstr(body, "incomplete_details.reason"), "max_output_tokens"), "incomplete reason");
    if (sc == SC_THINK_TOOLS) {
        T_CHECK(STR_EQ(jstr(body, "output.0.type"), "reasoning") &&
                    STR_EQ(jstr(body, "output.0.summary.0.text"), "I should call \"f\".") &&
                    strncmp(jstr(body, "output.0.id"), "rs_", 3) == 0,
                "reasoning item");
        T_CHECK(STR_EQ(jstr(body, "output.1.type"), "message") &&
                    STR_EQ(jstr(body, "output.1.content.0.text"), "Checking the weather.") &&
                    STR_EQ(jstr(body, "output.1.content.0.type"), "output_text"),
                "message item");
        T_CHECK(STR_EQ(jstr(body, "output.2.type"), "function_call") && STR_EQ(jstr(body, "output.2.name"), "get_weather") &&
                    STR_EQ(jstr(body, "output.2.arguments"), "{\"city\": \"Paris\", \"days\": 2}") &&
                    strncmp(jstr(body, "output.2.call_id"), "call_", 5) == 0 && strncmp(jstr(body, "output.2.id"), "fc_", 3) == 0,
                "function call item");
        T_CHECK(STR_EQ(jstr(body, "output.3.type"), "custom_tool_call") && STR_EQ(jstr(body, "output.3.input"), "*** Begin Patch"),
                "custom tool call item");
    }
    if (!c) return 0;
    /* Sequence numbers 0, 1, 2, ... and the lifecycle. */
    for (int i = 0; i < c->n; i++) {
        T_CHECK(jnum(c->data[i], "sequence_number") == i && STR_EQ(jstr(c->data[i], "type"), c->names[i]),
                "event %d (%s): sequence/type", i, c->names[i]);
    }
    T_CHECK(strcmp(c->names[0], "response.created") == 0 && strcmp(c->names[1], "response.in_progress") == 0 &&
                strcmp(c->names[c->n - 1], sc == SC_LENGTH ? "response.incomplete" : "response.completed") == 0,
            "lifecycle");
    T_CHECK(count_ev(c, "response.output_item.added") == count_ev(c, "response.output_item.done") &&
                count_ev(c, "response.output_item.added") == cJSON_GetArraySize(jget(body, "output")),
            "items added %d / done %d / body %d", count_ev(c, "response.output_item.added"),
            count_ev(c, "response.output_item.done"), cJSON_GetArraySize(jget(body, "output")));
    /* The streamed deltas add up to the output of the final event. */
    ds4p_buf text = {0}, args = {0};
    concat(c, "response.output_text.delta", "delta", &text);
    concat(c, "response.function_call_arguments.delta", "delta", &args);
    const cJSON *out = jget(c->data[c->n - 1], "response.output");
    const cJSON *it;
    const char *want_text = "", *want_args = "";
    cJSON_ArrayForEach(it, out) {
        if (STR_EQ(jstr(it, "type"), "message")) want_text = jstr(it, "content.0.text");
        if (STR_EQ(jstr(it, "type"), "function_call")) want_args = jstr(it, "arguments");
    }
    int rc = strcmp(bs(&text), want_text) != 0 || strcmp(bs(&args), want_args) != 0;
    ds4p_buf_free(&text);
    ds4p_buf_free(&args);
    T_CHECK(!rc, "deltas match the final output");
    if (sc == SC_THINK_TOOLS)
        T_CHECK(count_ev(c, "response.reasoning_summary_text.delta") > 0 &&
                    count_ev(c, "response.custom_tool_call_input.done") == 1,
                "reasoning summary and custom input events");
    (void)req;
    return 0;
}

static int test_responses_output(void) {
    return run_scenarios(DS4_PROTO_RESPONSES,
                         "{\"input\":\"hi\",\"reasoning\":{\"summary\":\"auto\"},\"tools\":[{\"type\":\"function\","
                         "\"name\":\"get_weather\",\"parameters\":{}},{\"type\":\"custom\",\"name\":\"apply_patch\"}]}",
                         "responses", check_responses);
}

static int check_anthropic(enum scenario sc, sse_cap *c, int status, cJSON *body, const ds4_gen_request *req) {
    if (sc == SC_FAIL) {
        T_CHECK(status == 500 && STR_EQ(jstr(body, "type"), "error") && STR_EQ(jstr(body, "error.type"), "api_error"), "error");
        if (c) {
            int e = find_ev(c, "error", 0);
            T_CHECK(e > 0 && STR_EQ(jstr(c->data[e], "error.message"), "device lost"), "SSE error");
        }
        return 0;
    }
    const char *want_stop = sc == SC_THINK_TOOLS ? "tool_use" : sc == SC_LENGTH ? "max_tokens"
                            : sc == SC_STOPSEQ ? "stop_sequence" : "end_turn";
    T_CHECK(status == 200 && STR_EQ(jstr(body, "type"), "message") && STR_EQ(jstr(body, "role"), "assistant") &&
                strncmp(jstr(body, "id"), "msg_", 4) == 0 && STR_EQ(jstr(body, "stop_reason"), want_stop),
            "body header, stop %s", jstr(body, "stop_reason"));
    T_CHECK(jnum(body, "usage.input_tokens") == 40 && jnum(body, "usage.cache_read_input_tokens") == 60 &&
                jnum(body, "usage.cache_creation_input_tokens") == 0 && jnum(body, "usage.output_tokens") == 25,
            "usage");
    if (sc == SC_STOPSEQ) T_CHECK(STR_EQ(jstr(body, "stop_sequence"), "END"), "stop_sequence");
    if (sc == SC_THINK_TOOLS) {
        T_CHECK(STR_EQ(jstr(body, "content.0.type"), "thinking") &&
                    STR_EQ(jstr(body, "content.0.thinking"), "I should call \"f\".") &&
                    STR_EQ(jstr(body, "content.0.signature"), jstr(body, "id")),
                "thinking block");
        T_CHECK(STR_EQ(jstr(body, "content.1.text"), "Checking the weather."), "text block");
        T_CHECK(STR_EQ(jstr(body, "content.2.type"), "tool_use") && strncmp(jstr(body, "content.2.id"), "toolu_", 6) == 0 &&
                    STR_EQ(jstr(body, "content.2.input.city"), "Paris") && jnum(body, "content.2.input.days") == 2,
                "tool_use block");
    }
    if (sc == SC_LENGTH) {
        /* thinking only: an empty text block follows */
        T_CHECK(STR_EQ(jstr(body, "content.0.type"), "thinking") && STR_EQ(jstr(body, "content.1.type"), "text") &&
                    STR_EQ(jstr(body, "content.1.text"), ""),
                "empty text block after thinking");
    }
    if (!c) return 0;
    T_CHECK(strcmp(c->names[0], "message_start") == 0 && strcmp(c->names[1], "ping") == 0 &&
                strcmp(c->names[c->n - 1], "message_stop") == 0 && strcmp(c->names[c->n - 2], "message_delta") == 0,
            "frame");
    T_CHECK(jnum(c->data[0], "message.usage.input_tokens") == 40 && STR_EQ(jstr(c->data[0], "message.role"), "assistant"),
            "message_start usage");
    T_CHECK(STR_EQ(jstr(c->data[c->n - 2], "delta.stop_reason"), want_stop) &&
                jnum(c->data[c->n - 2], "usage.output_tokens") == 25,
            "message_delta");
    for (int i = 0; i < c->n; i++) T_CHECK(STR_EQ(jstr(c->data[i], "type"), c->names[i]), "event %d type", i);
    T_CHECK(count_ev(c, "content_block_start") == count_ev(c, "content_block_stop") &&
                count_ev(c, "content_block_start") == cJSON_GetArraySize(jget(body, "content")),
            "blocks");
    /* Block indexes open in order and close before the next opens. */
    int open = -1, next = 0;
    for (int i = 0; i < c->n; i++) {
        int idx = (int)jnum(c->data[i], "index");
        if (strcmp(c->names[i], "content_block_start") == 0) {
            T_CHECK(open == -1 && idx == next, "block %d opens at %d", idx, i);
            open = idx;
            next++;
        } else if (strcmp(c->names[i], "content_block_delta") == 0) {
            T_CHECK(idx == open, "delta for open block");
        } else if (strcmp(c->names[i], "content_block_stop") == 0) {
            T_CHECK(idx == open, "stop the open block");
            open = -1;
        }
    }
    if (sc == SC_THINK_TOOLS) {
        ds4p_buf js = {0};
        concat(c, "content_block_delta", "delta.partial_json", &js);
        int rc = strcmp(bs(&js), "{\"city\": \"Paris\", \"days\": 2}{\"input\": \"*** Begin Patch\"}") != 0;
        ds4p_buf_free(&js);
        T_CHECK(!rc, "input_json_delta");
        T_CHECK(count_ev(c, "content_block_delta") > 3 && strstr(bs(&c->text), "\"type\":\"signature_delta\""), "deltas");
    }
    (void)req;
    return 0;
}

static int test_anthropic_output(void) {
    return run_scenarios(DS4_PROTO_ANTHROPIC,
                         "{\"model\":\"claude-sonnet\",\"max_tokens\":100,\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}],"
                         "\"tools\":[{\"name\":\"get_weather\",\"input_schema\":{\"type\":\"object\"}}],"
                         "\"stop_sequences\":[\"END\"]}",
                         "anthropic", check_anthropic);
}

/* Event order is enforced; a failing writer fails the event. */
static int test_output_misuse(void) {
    ds4_error err = {{0}};
    ds4_gen_request req;
    T_CHECK(parse(DS4_PROTO_CHAT, "{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"stream\":true}", &req, &err) == 0,
            "%s", err.msg);
    sse_cap cap;
    memset(&cap, 0, sizeof(cap));
    cap.fail_after = 2;
    ds4_proto_out *out;
    ds4_proto_out_opts oo = {.seq = 1, .created = 1, .write = cap_write, .write_ctx = &cap};
    T_CHECK(ds4_proto_out_new(&out, &req, &oo, &err) == 0, "%s", err.msg);
    ds4_gen_event content = {.type = DS4_EV_CONTENT, .text = "x", .len = 1};
    T_CHECK(ds4_proto_out_event(out, &content, &err) == -1 && strstr(err.msg, "before begin"), "content before begin");
    ds4_gen_event begin = {.type = DS4_EV_BEGIN};
    T_CHECK(ds4_proto_out_event(out, &begin, &err) == 0, "%s", err.msg);
    T_CHECK(ds4_proto_out_event(out, &begin, &err) == -1, "second begin");
    ds4_gen_event args = {.type = DS4_EV_TOOL_ARGS, .text = "{", .len = 1};
    T_CHECK(ds4_proto_out_event(out, &args, &err) == -1 && strstr(err.msg, "not open"), "args without start");
    T_CHECK(ds4_proto_out_event(out, &content, &err) == 0, "%s", err.msg);
    T_CHECK(ds4_proto_out_event(out, &content, &err) == -1 && strstr(err.msg, "went away"), "writer failure");
    int status;
    cJSON *body = NULL;
    T_CHECK(ds4_proto_out_reply(out, &status, &body, &err) == -1, "reply before the end");
    ds4_gen_event fin = {.type = DS4_EV_FINISH};
    cap.fail_after = 0;
    T_CHECK(ds4_proto_out_event(out, &fin, &err) == 0, "%s", err.msg);
    T_CHECK(ds4_proto_out_event(out, &content, &err) == -1, "after the end");
    ds4_proto_out_free(out);
    cap_free(&cap);

    /* An error before anything: the protocol's error event only. */
    const enum ds4_proto protos[] = {DS4_PROTO_CHAT, DS4_PROTO_RESPONSES, DS4_PROTO_ANTHROPIC};
    const char *bodies[] = {"{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}]}", "{\"input\":\"x\"}",
                            "{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}]}"};
    for (int p = 0; p < 3; p++) {
        ds4_gen_request r2;
        T_CHECK(parse(protos[p], bodies[p], &r2, &err) == 0, "%s", err.msg);
        memset(&cap, 0, sizeof(cap));
        T_CHECK(ds4_proto_out_new(&out, &r2, &oo, &err) == 0, "%s", err.msg);
        ds4_gen_event e = {.type = DS4_EV_ERROR, .status = 400, .code = "context_length_exceeded", .message = "too long",
                           .n_prompt_tokens = 9000, .n_ctx = 8192};
        T_CHECK(ds4_proto_out_event(out, &e, &err) == 0, "%s", err.msg);
        T_CHECK(cap.n == 1 && strcmp(cap.names[0], "error") == 0, "one error event (%d)", cap.n);
        T_CHECK(ds4_proto_out_reply(out, &status, &body, &err) == 0 && status == 400, "reply");
        T_CHECK(jnum(body, "error.n_prompt_tokens") == 9000 && jnum(body, "error.n_ctx") == 8192, "overflow fields");
        if (protos[p] != DS4_PROTO_ANTHROPIC) T_CHECK(STR_EQ(jstr(body, "error.code"), "context_length_exceeded"), "code");
        cJSON_Delete(body);
        ds4_proto_out_free(out);
        cap_free(&cap);
        ds4_gen_request_free(&r2);
    }
    ds4_gen_request_free(&req);
    return 0;
}

void tests_register_server_proto(void) {
    test_add("server_proto/chat_request", test_chat_request);
    test_add("server_proto/thinking_controls", test_thinking_controls);
    test_add("server_proto/completion_request", test_completion_request);
    test_add("server_proto/responses_request", test_responses_request);
    test_add("server_proto/anthropic_request", test_anthropic_request);
    test_add("server_proto/invalid_requests", test_invalid_requests);
    test_add("server_proto/error_bodies", test_error_bodies);
    test_add("server_proto/toolmap", test_toolmap);
    test_add("server_proto/tracker_tool_calls", test_tracker_tool_calls);
    test_add("server_proto/tracker_random", test_tracker_random);
    test_add("server_proto/tracker_payload", test_tracker_payload);
    test_add("server_proto/tracker_text_cases", test_tracker_text_cases);
    test_add("server_proto/exact_replay", test_exact_replay);
    test_add("server_proto/chat_output", test_chat_output);
    test_add("server_proto/completion_output", test_completion_output);
    test_add("server_proto/responses_output", test_responses_output);
    test_add("server_proto/anthropic_output", test_anthropic_output);
    test_add("server_proto/output_misuse", test_output_misuse);
}
