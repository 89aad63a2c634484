#!/usr/bin/env python3
"""sdk_test.py - ds4cl-server through the official openai and anthropic SDKs.

Live mode, against a running server:

    python3 tests/server/sdk_test.py http://127.0.0.1:8000 [--api-key KEY]
        [--max-tokens 12] [--expect-tool-calls] [--only NAME,...]

  non-streamed and streamed chat completions, completions, responses and
  messages; thinking on and off; a tool-call round trip per protocol (the
  model's own call when it makes one, else a client-built history with a
  call and its result); errors; and, with --api-key, a wrong key refused
  (401) and the right one accepted.  A tiny random test model writes
  noise, so live checks test shapes and invariants, not text;
  --expect-tool-calls (a real model) requires the model to call the tool.

Replay mode, no server needed:

    DS4CL_PROTO_DUMP=/tmp/proto build/san/ds4cl-tests server_proto
    python3 tests/server/sdk_test.py --replay /tmp/proto

  the C unit tests dump what src/server/proto*.c writes for fixed event
  sequences (<proto>_<scenario>.sse and <proto>_<scenario>.<status>.json);
  a local HTTP server replays them to the SDKs, whose parsers and stream
  accumulators must accept them and yield the exact expected values.

pip install openai anthropic.  Exit status 0 when every check passed.
"""
import argparse
import glob
import http.server
import json
import os
import sys
import threading
import traceback

import anthropic
import openai

RESULTS = []


def check(cond, what):
    if not cond:
        raise AssertionError(what)


def run(name, fn, *args):
    try:
        fn(*args)
        RESULTS.append((name, True, ""))
        print(f"ok   {name}", flush=True)
    except Exception as e:  # noqa: BLE001 - report every failure and go on
        RESULTS.append((name, False, f"{type(e).__name__}: {e}"))
        print(f"FAIL {name}: {type(e).__name__}: {e}", flush=True)
        if os.environ.get("SDK_TEST_TRACE"):
            traceback.print_exc()


def extra(obj, key):
    """A field the SDK models do not declare (reasoning_content, ...)."""
    v = getattr(obj, key, None)
    if v is None and getattr(obj, "model_extra", None):
        v = obj.model_extra.get(key)
    return v


def responses_stream_final(st):
    """Event types and the final response of a Responses stream helper.
    The SDK's get_final_response() only accepts response.completed; a
    response.incomplete (max_output_tokens) carries the response too."""
    types, last = [], None
    for ev in st:
        types.append(ev.type)
        if ev.type in ("response.completed", "response.incomplete", "response.failed"):
            last = ev.response
    if types and types[-1] == "response.completed":
        return types, st.get_final_response()
    return types, last


def chat_stream_final(st):
    """The helper's final completion; it raises LengthFinishReasonError on
    finish_reason length by design (None then)."""
    try:
        return st.get_final_completion()
    except openai.LengthFinishReasonError:
        return None


WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather of a city.",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}

# ---------------------------------------------------------------------------
# Live checks
# ---------------------------------------------------------------------------


class Live:
    def __init__(self, url, key, max_tokens, expect_tools):
        self.url = url.rstrip("/")
        self.key = key or "dsv4-local"
        self.n = max_tokens
        self.expect_tools = expect_tools
        self.oa = openai.OpenAI(base_url=self.url + "/v1", api_key=self.key, max_retries=0, timeout=600)
        self.an = anthropic.Anthropic(base_url=self.url, api_key=self.key, max_retries=0, timeout=600)

    def msgs(self, text="Say hello."):
        return [{"role": "user", "content": text}]

    def models(self):
        ms = list(self.oa.models.list())
        check(ms and ms[0].id, "no model listed")
        one = self.oa.models.retrieve(ms[0].id)
        check(one.id == ms[0].id, "models/{id}")

    def chat(self, thinking):
        kw = {} if thinking else {"extra_body": {"thinking": {"type": "disabled"}}}
        r = self.oa.chat.completions.create(model="deepseek-v4-flash", messages=self.msgs(), max_tokens=self.n, **kw)
        m = r.choices[0].message
        check(r.object == "chat.completion" and r.id, "object/id")
        check(r.choices[0].finish_reason in ("stop", "length"), f"finish {r.choices[0].finish_reason}")
        check(isinstance(m.content, str), "content is a string")
        reasoning = extra(m, "reasoning_content") or ""
        if thinking:
            check(reasoning or m.content or r.choices[0].finish_reason == "stop", "thinking produced nothing")
        else:
            check(not reasoning, "reasoning while thinking is off")
        u = r.usage
        check(u.prompt_tokens > 0 and u.completion_tokens >= 1 and u.total_tokens == u.prompt_tokens + u.completion_tokens,
              f"usage {u}")
        check(u.prompt_tokens_details is not None and u.prompt_tokens_details.cached_tokens <= u.prompt_tokens, "cached")

    def chat_alias_no_thinking(self):
        r = self.oa.chat.completions.create(model="deepseek-chat", messages=self.msgs(), max_tokens=self.n)
        check(not extra(r.choices[0].message, "reasoning_content"), "deepseek-chat must not think")

    def chat_stream(self, thinking):
        kw = {} if thinking else {"extra_body": {"reasoning_effort": "none"}}
        s = self.oa.chat.completions.create(model="deepseek-v4-flash", messages=self.msgs(), max_tokens=self.n,
                                            stream=True, stream_options={"include_usage": True}, **kw)
        chunks = list(s)
        check(chunks and chunks[0].choices[0].delta.role == "assistant", "role chunk first")
        fins = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
        check(len(fins) == 1 and fins[0] in ("stop", "length"), f"finish reasons {fins}")
        check(chunks[-1].choices == [] and chunks[-1].usage and chunks[-1].usage.completion_tokens >= 1, "usage chunk last")
        reasoning = "".join(extra(c.choices[0].delta, "reasoning_content") or "" for c in chunks if c.choices)
        if not thinking:
            check(reasoning == "", "reasoning deltas with thinking off")
        # the helper accumulates the same stream
        with self.oa.chat.completions.stream(model="deepseek-v4-flash", messages=self.msgs(), max_tokens=self.n) as st:
            final = chat_stream_final(st)
        check(final is None or final.choices[0].finish_reason == "stop", "helper final")

    def completions(self):
        r = self.oa.completions.create(model="deepseek-v4-flash", prompt="Once upon a time", max_tokens=self.n)
        check(r.object == "text_completion" and isinstance(r.choices[0].text, str), "completion")
        check(r.usage.prompt_tokens > 0, "usage")
        parts = list(self.oa.completions.create(model="deepseek-v4-flash", prompt="Once upon a time",
                                                max_tokens=self.n, stream=True))
        check(parts and parts[-1].choices[0].finish_reason in ("stop", "length"), "stream finish")

    def responses(self, thinking):
        reasoning = {"effort": "high", "summary": "auto"} if thinking else {"effort": "none"}
        r = self.oa.responses.create(model="deepseek-v4-flash", input="Say hello.", max_output_tokens=self.n,
                                     reasoning=reasoning)
        check(r.object == "response" and r.status in ("completed", "incomplete"), f"status {r.status}")
        check(isinstance(r.output_text, str), "output_text")
        kinds = [o.type for o in r.output]
        check("message" in kinds, f"items {kinds}")
        if not thinking:
            check("reasoning" not in kinds, "reasoning item with thinking off")
        check(r.usage.input_tokens > 0 and r.usage.output_tokens >= 1, "usage")
        with self.oa.responses.stream(model="deepseek-v4-flash", input="Say hello.", max_output_tokens=self.n,
                                      reasoning=reasoning) as st:
            types, final = responses_stream_final(st)
        check(types[0] == "response.created" and types[-1] in ("response.completed", "response.incomplete"),
              f"stream lifecycle {types[:2]}..{types[-1:]}")
        check(final.status in ("completed", "incomplete"), "final status")

    def messages(self, thinking):
        kw = {"thinking": {"type": "enabled", "budget_tokens": 1024}} if thinking else {"thinking": {"type": "disabled"}}
        r = self.an.messages.create(model="deepseek-v4-flash", max_tokens=self.n, messages=self.msgs(), **kw)
        check(r.type == "message" and r.role == "assistant", "message")
        check(r.stop_reason in ("end_turn", "max_tokens", "stop_sequence"), f"stop {r.stop_reason}")
        kinds = [b.type for b in r.content]
        check(kinds and "text" in kinds, f"blocks {kinds}")
        if not thinking:
            check("thinking" not in kinds, "thinking block with thinking off")
        check(r.usage.input_tokens + (r.usage.cache_read_input_tokens or 0) > 0 and r.usage.output_tokens >= 1, "usage")
        with self.an.messages.stream(model="deepseek-v4-flash", max_tokens=self.n, messages=self.msgs(), **kw) as st:
            final = st.get_final_message()
        check(final.stop_reason in ("end_turn", "max_tokens", "stop_sequence"), "stream final")

    # Tool round trips: the model's own call, else a client-built history.
    def chat_tools(self):
        msgs = self.msgs("What is the weather in Paris? Use the tool.")
        r = self.oa.chat.completions.create(model="deepseek-v4-flash", messages=msgs, tools=[WEATHER_TOOL],
                                            max_tokens=max(self.n, 256) if self.expect_tools else self.n)
        m = r.choices[0].message
        if m.tool_calls:
            check(r.choices[0].finish_reason == "tool_calls", "finish tool_calls")
            tc = m.tool_calls[0]
            json.loads(tc.function.arguments)
            history = msgs + [m.model_dump(exclude_none=True),
                              {"role": "tool", "tool_call_id": tc.id, "content": "18 C, sunny"}]
        else:
            check(not self.expect_tools, "the model did not call the tool")
            history = msgs + [
                {"role": "assistant", "content": None, "tool_calls": [
                    {"id": "call_client1", "type": "function",
                     "function": {"name": "get_weather", "arguments": "{\"city\": \"Paris\"}"}}]},
                {"role": "tool", "tool_call_id": "call_client1", "content": "18 C, sunny"}]
        r2 = self.oa.chat.completions.create(model="deepseek-v4-flash", messages=history, tools=[WEATHER_TOOL],
                                             max_tokens=self.n)
        check(r2.choices[0].finish_reason in ("stop", "length", "tool_calls"), "second turn")
        check(r2.usage.prompt_tokens > r.usage.prompt_tokens, "the history grew")

    def responses_tools(self):
        tool = {"type": "function", "name": "get_weather", "parameters": WEATHER_TOOL["function"]["parameters"]}
        inp = [{"role": "user", "content": "What is the weather in Paris? Use the tool."}]
        r = self.oa.responses.create(model="deepseek-v4-flash", input=inp, tools=[tool], max_output_tokens=self.n)
        calls = [o for o in r.output if o.type == "function_call"]
        if calls:
            inp += [o.model_dump(exclude_none=True) for o in r.output]
            inp.append({"type": "function_call_output", "call_id": calls[0].call_id, "output": "18 C"})
        else:
            check(not self.expect_tools, "the model did not call the tool")
            inp += [{"type": "function_call", "call_id": "call_client2", "name": "get_weather",
                     "arguments": "{\"city\": \"Paris\"}"},
                    {"type": "function_call_output", "call_id": "call_client2", "output": "18 C"}]
        r2 = self.oa.responses.create(model="deepseek-v4-flash", input=inp, tools=[tool], max_output_tokens=self.n)
        check(r2.status in ("completed", "incomplete"), "second turn")

    def messages_tools(self):
        tool = {"name": "get_weather", "description": "Weather", "input_schema": WEATHER_TOOL["function"]["parameters"]}
        msgs = self.msgs("What is the weather in Paris? Use the tool.")
        r = self.an.messages.create(model="deepseek-v4-flash", max_tokens=self.n, messages=msgs, tools=[tool])
        uses = [b for b in r.content if b.type == "tool_use"]
        if uses:
            check(r.stop_reason == "tool_use", "stop tool_use")
            msgs += [{"role": "assistant", "content": [b.model_dump(exclude_none=True) for b in r.content]},
                     {"role": "user", "content": [{"type": "tool_result", "tool_use_id": uses[0].id, "content": "18 C"}]}]
        else:
            check(not self.expect_tools, "the model did not call the tool")
            msgs += [{"role": "assistant", "content": [
                {"type": "tool_use", "id": "toolu_client3", "name": "get_weather", "input": {"city": "Paris"}}]},
                {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_client3", "content": "18 C"}]}]
        r2 = self.an.messages.create(model="deepseek-v4-flash", max_tokens=self.n, messages=msgs, tools=[tool])
        check(r2.stop_reason in ("end_turn", "max_tokens", "tool_use"), "second turn")

    def errors(self):
        try:
            self.oa.chat.completions.create(model="deepseek-v4-flash", messages=[], max_tokens=self.n)
            raise AssertionError("empty messages accepted")
        except openai.BadRequestError as e:
            check(e.status_code == 400 and e.body.get("param") == "messages", f"body {e.body}")
        try:
            self.an.messages.create(model="deepseek-v4-flash", max_tokens=self.n,
                                    messages=[{"role": "robot", "content": "x"}])
            raise AssertionError("bad role accepted")
        except anthropic.BadRequestError as e:
            check(e.status_code == 400 and "role" in str(e), str(e))
        try:
            self.oa.responses.create(model="deepseek-v4-flash", input="x", previous_response_id="resp_x")
            raise AssertionError("previous_response_id accepted")
        except openai.BadRequestError as e:
            check(e.status_code == 400, "status")

    def auth(self):
        bad_oa = openai.OpenAI(base_url=self.url + "/v1", api_key="wrong-" + self.key, max_retries=0)
        bad_an = anthropic.Anthropic(base_url=self.url, api_key="wrong-" + self.key, max_retries=0)
        try:
            bad_oa.chat.completions.create(model="m", messages=self.msgs(), max_tokens=1)
            raise AssertionError("wrong key accepted (openai)")
        except openai.AuthenticationError as e:
            check(e.status_code == 401, "401")
        try:
            bad_an.messages.create(model="m", max_tokens=1, messages=self.msgs())
            raise AssertionError("wrong key accepted (anthropic)")
        except anthropic.AuthenticationError as e:
            check(e.status_code == 401, "401")
        # the right key through the other header style works too
        r = anthropic.Anthropic(base_url=self.url, auth_token=self.key, max_retries=0).messages.create(
            model="m", max_tokens=self.n, messages=self.msgs())
        check(r.type == "message", "bearer key accepted")


def live_main(args):
    t = Live(args.url, args.api_key, args.max_tokens, args.expect_tool_calls)
    tests = [
        ("models", t.models),
        ("chat_thinking", lambda: t.chat(True)),
        ("chat_no_thinking", lambda: t.chat(False)),
        ("chat_alias_deepseek_chat", t.chat_alias_no_thinking),
        ("chat_stream_thinking", lambda: t.chat_stream(True)),
        ("chat_stream_no_thinking", lambda: t.chat_stream(False)),
        ("completions", t.completions),
        ("responses_thinking", lambda: t.responses(True)),
        ("responses_no_thinking", lambda: t.responses(False)),
        ("messages_thinking", lambda: t.messages(True)),
        ("messages_no_thinking", lambda: t.messages(False)),
        ("chat_tool_round_trip", t.chat_tools),
        ("responses_tool_round_trip", t.responses_tools),
        ("messages_tool_round_trip", t.messages_tools),
        ("errors", t.errors),
    ]
    if args.api_key:
        tests.append(("api_key", t.auth))
    only = set(args.only.split(",")) if args.only else None
    for name, fn in tests:
        if only is None or name in only:
            run(name, fn)


# ---------------------------------------------------------------------------
# Replay of the C unit tests' fixtures
# ---------------------------------------------------------------------------

ROUTES = {"/v1/chat/completions": "chat", "/v1/completions": "completions", "/v1/responses": "responses",
          "/v1/messages": "anthropic"}


def replay_server(fixdir):
    class H(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *a):
            pass

        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", "0"))) or b"{}")
            tag = ROUTES.get(self.path)
            sc = self.headers.get("X-Scenario", "plain")
            if body.get("stream"):
                path, status, ctype = os.path.join(fixdir, f"{tag}_{sc}.sse"), 200, "text/event-stream"
            else:
                found = glob.glob(os.path.join(fixdir, f"{tag}_{sc}.*.json"))
                path = found[0] if found else ""
                status, ctype = (int(path.rsplit(".", 2)[1]) if path else 404), "application/json"
            data = open(path, "rb").read() if path else b'{"error":{"message":"no fixture"}}'
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(data)))
            self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(data)

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    return srv


def replay_main(fixdir):
    srv = replay_server(fixdir)
    url = f"http://127.0.0.1:{srv.server_address[1]}"
    oa = openai.OpenAI(base_url=url + "/v1", api_key="k", max_retries=0)
    an = anthropic.Anthropic(base_url=url, api_key="k", max_retries=0)
    msgs = [{"role": "user", "content": "hi"}]
    ARGS = {"city": "Paris", "days": 2}
    REASON = 'I should call "f".'

    def h(sc):
        return {"extra_headers": {"X-Scenario": sc}}

    # ---- chat completions
    def chat_body(sc):
        r = oa.chat.completions.create(model="m", messages=msgs, **h(sc))
        c = r.choices[0]
        if sc == "tools":
            check(c.finish_reason == "tool_calls" and c.message.content == "Checking the weather.", "message")
            check(extra(c.message, "reasoning_content") == REASON, "reasoning_content")
            check(c.message.tool_calls[0].function.name == "get_weather", "name")
            check(json.loads(c.message.tool_calls[0].function.arguments) == ARGS, "arguments")
            check(json.loads(c.message.tool_calls[1].function.arguments) == {"input": "*** Begin Patch"}, "second call")
        elif sc == "plain":
            check(c.message.content == "Hello, world!" and c.finish_reason == "stop", "plain")
        elif sc == "length":
            check(c.finish_reason == "length" and extra(c.message, "reasoning_content") == "Still thinking about", "length")
        elif sc == "stop":
            check(c.message.content == "one two " and c.finish_reason == "stop", "stop")
        check(r.usage.prompt_tokens == 100 and r.usage.prompt_tokens_details.cached_tokens == 60 and
              r.usage.completion_tokens == 25, "usage")

    def chat_stream(sc):
        s = oa.chat.completions.create(model="m", messages=msgs, stream=True, **h(sc))
        content, reasoning, calls, fin, usage = "", "", {}, None, None
        for ch in s:
            if ch.usage:
                usage = ch.usage
            for c in ch.choices:
                d = c.delta
                content += d.content or ""
                reasoning += extra(d, "reasoning_content") or ""
                for tc in d.tool_calls or []:
                    e = calls.setdefault(tc.index, {"id": None, "name": "", "args": ""})
                    e["id"] = tc.id or e["id"]
                    if tc.function:
                        e["name"] += tc.function.name or ""
                        e["args"] += tc.function.arguments or ""
                fin = c.finish_reason or fin
        check(usage and usage.prompt_tokens == 100 and usage.completion_tokens == 25, "usage chunk")
        if sc == "tools":
            check(content == "Checking the weather." and reasoning == REASON and fin == "tool_calls", "deltas")
            check(calls[0]["name"] == "get_weather" and json.loads(calls[0]["args"]) == ARGS, "streamed call")
            check(calls[0]["id"].startswith("call_") and calls[1]["id"] != calls[0]["id"], "ids")
        # the SDK's own accumulator
        with oa.chat.completions.stream(model="m", messages=msgs, **h(sc)) as st:
            final = chat_stream_final(st)
        if sc == "length":
            check(final is None, "length finish raised by the helper")
            return
        m = final.choices[0].message
        if sc == "tools":
            check(m.tool_calls and m.tool_calls[0].function.name == "get_weather" and
                  json.loads(m.tool_calls[0].function.arguments) == ARGS, "helper tool calls")
        if sc == "plain":
            check(m.content == "Hello, world!", "helper content")

    def chat_fail():
        try:
            oa.chat.completions.create(model="m", messages=msgs, **h("fail"))
            raise AssertionError("no error")
        except openai.InternalServerError as e:
            check(e.status_code == 500 and "device lost" in str(e), str(e))
        try:
            for _ in oa.chat.completions.create(model="m", messages=msgs, stream=True, **h("fail")):
                pass
            raise AssertionError("stream error not raised")
        except openai.APIError as e:
            check("device lost" in str(e), str(e))

    def overflow(tag):
        try:
            if tag == "anthropic":
                an.messages.create(model="m", max_tokens=5, messages=msgs, **h("overflow"))
            elif tag == "responses":
                oa.responses.create(model="m", input="x", **h("overflow"))
            elif tag == "completions":
                oa.completions.create(model="m", prompt="x", **h("overflow"))
            else:
                oa.chat.completions.create(model="m", messages=msgs, **h("overflow"))
            raise AssertionError("no error")
        except (openai.BadRequestError, anthropic.BadRequestError) as e:
            body = e.body if tag != "anthropic" else e.body["error"]
            check(e.status_code == 400 and body["n_prompt_tokens"] == 5000 and body["n_ctx"] == 4096, str(e.body))
            if tag != "anthropic":
                check(e.code == "context_length_exceeded", f"code {e.code}")

    # ---- completions
    def completions(sc):
        r = oa.completions.create(model="m", prompt="hi", **h(sc))
        text = "".join(p.choices[0].text for p in oa.completions.create(model="m", prompt="hi", stream=True, **h(sc)))
        check(text == r.choices[0].text, "stream == body")
        if sc == "plain":
            check(r.choices[0].text == "Hmm.</think>Hello, world!", r.choices[0].text)

    # ---- responses
    def responses_body(sc):
        r = oa.responses.create(model="m", input="hi", **h(sc))
        kinds = [o.type for o in r.output]
        if sc == "tools":
            check(kinds == ["reasoning", "message", "function_call", "custom_tool_call"], f"kinds {kinds}")
            check(r.output[0].summary[0].text == REASON and r.output_text == "Checking the weather.", "texts")
            check(json.loads(r.output[2].arguments) == ARGS and r.output[3].input == "*** Begin Patch", "calls")
        if sc == "length":
            check(r.status == "incomplete" and r.incomplete_details.reason == "max_output_tokens", "incomplete")
        check(r.usage.input_tokens == 100 and r.usage.input_tokens_details.cached_tokens == 60, "usage")

    def responses_stream(sc):
        with oa.responses.stream(model="m", input="hi", **h(sc)) as st:
            types, final = responses_stream_final(st)
        check(types[0] == "response.created", "created first")
        if sc == "length":
            check(types[-1] == "response.incomplete" and final.incomplete_details.reason == "max_output_tokens" and
                  [o.type for o in final.output] == ["reasoning", "message"] and final.output[0].status == "incomplete",
                  f"incomplete {types[-1]}")
        if sc == "tools":
            check("response.function_call_arguments.delta" in types and "response.reasoning_summary_text.delta" in types,
                  f"types {sorted(set(types))}")
            check([o.type for o in final.output] == ["reasoning", "message", "function_call", "custom_tool_call"], "final")
            check(json.loads(final.output[2].arguments) == ARGS, "final args")
            check(final.output_text == "Checking the weather.", "final text")
        if sc == "plain":
            check(final.output_text == "Hello, world!" and final.status == "completed", "plain")

    def responses_fail():
        try:
            oa.responses.create(model="m", input="hi", **h("fail"))
            raise AssertionError("no error")
        except openai.InternalServerError as e:
            check("device lost" in str(e), str(e))
        types = [ev.type for ev in oa.responses.create(model="m", input="hi", stream=True, **h("fail"))]
        check(types[-1] == "response.failed", f"last {types[-1]}")

    # ---- anthropic
    def messages_body(sc):
        r = an.messages.create(model="m", max_tokens=100, messages=msgs, **h(sc))
        kinds = [b.type for b in r.content]
        if sc == "tools":
            check(kinds == ["thinking", "text", "tool_use", "tool_use"] and r.stop_reason == "tool_use", f"{kinds}")
            check(r.content[0].thinking == REASON and r.content[2].input == ARGS, "blocks")
        if sc == "stop":
            check(r.stop_reason == "stop_sequence" and r.stop_sequence == "END", "stop_sequence")
        if sc == "length":
            check(kinds == ["thinking", "text"] and r.stop_reason == "max_tokens", f"{kinds}")
        check(r.usage.input_tokens == 40 and r.usage.cache_read_input_tokens == 60 and r.usage.output_tokens == 25, "usage")

    def messages_stream(sc):
        with an.messages.stream(model="m", max_tokens=100, messages=msgs, **h(sc)) as st:
            types = [ev.type for ev in st]
            final = st.get_final_message()
        check(types[0] == "message_start", "start")
        if sc == "tools":
            check([b.type for b in final.content] == ["thinking", "text", "tool_use", "tool_use"], "blocks")
            check(final.content[2].input == ARGS and final.content[3].input == {"input": "*** Begin Patch"}, "inputs")
            check(final.content[0].thinking == REASON and final.content[0].signature == final.id, "thinking")
            check(final.stop_reason == "tool_use" and final.usage.output_tokens == 25, "delta")
        if sc == "plain":
            check(final.content[-1].text == "Hello, world!", "text")

    def messages_fail():
        try:
            an.messages.create(model="m", max_tokens=100, messages=msgs, **h("fail"))
            raise AssertionError("no error")
        except anthropic.InternalServerError as e:
            check("device lost" in str(e), str(e))
        try:
            with an.messages.stream(model="m", max_tokens=100, messages=msgs, **h("fail")) as st:
                for _ in st:
                    pass
            raise AssertionError("stream error not raised")
        except anthropic.APIError as e:
            check("device lost" in str(e), str(e))

    for sc in ("tools", "plain", "length", "stop"):
        run(f"replay/chat_{sc}", chat_body, sc)
        run(f"replay/chat_stream_{sc}", chat_stream, sc)
        run(f"replay/completions_{sc}", completions, sc)
        run(f"replay/responses_{sc}", responses_body, sc)
        run(f"replay/responses_stream_{sc}", responses_stream, sc)
        run(f"replay/messages_{sc}", messages_body, sc)
        run(f"replay/messages_stream_{sc}", messages_stream, sc)
    run("replay/chat_fail", chat_fail)
    run("replay/responses_fail", responses_fail)
    run("replay/messages_fail", messages_fail)
    for tag in ("chat", "completions", "responses", "anthropic"):
        run(f"replay/{tag}_overflow", overflow, tag)
    srv.shutdown()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("url", nargs="?", help="server base URL, e.g. http://127.0.0.1:8000")
    ap.add_argument("--api-key", default=None, help="the server's --api-key (also tests a wrong one)")
    ap.add_argument("--max-tokens", type=int, default=12)
    ap.add_argument("--expect-tool-calls", action="store_true", help="require the model to call the tool")
    ap.add_argument("--only", default=None, help="comma-separated test names")
    ap.add_argument("--replay", metavar="DIR", help="replay the C tests' fixtures instead of a live server")
    args = ap.parse_args()
    if args.replay:
        replay_main(args.replay)
    elif args.url:
        live_main(args)
    else:
        ap.error("give a server URL or --replay DIR")
    failed = [r for r in RESULTS if not r[1]]
    print(f"{len(RESULTS) - len(failed)} passed, {len(failed)} failed")
    sys.exit(1 if failed or not RESULTS else 0)


if __name__ == "__main__":
    main()
