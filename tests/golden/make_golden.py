#!/usr/bin/env python3
"""Records golden logits from Hugging Face transformers' DeepseekV4ForCausalLM
for the small random models of make_model.py, and checks that make_model's
three namings are exactly what transformers reads and writes.

Needs torch + transformers (pip install torch transformers; here:
/tmp/hfvenv/bin/python).  CPU is enough; a run takes about a minute.

Per preset:
  1. make_model writes the saved, official and hf folders (f32).
  2. Each loads with from_pretrained(dtype=float32, attn_implementation=
     "eager", experts_implementation="eager") with no missing, unexpected or
     mismatched keys.
  3. save_pretrained() of the model loaded from the saved folder writes
     the same tensor names, shapes, dtypes and bytes as make_model's saved
     folder (and the same config.json); save_original_format=False writes
     make_model's hf folder.  The model loaded from the official folder
     also re-saves to the saved tensors.
  4. The three folders give bit-identical logits.
  5. Teacher-forced logits (use_cache=False) for a seeded token sequence
     (token 0 first) are compared with HF's own token-by-token decode and a
     chunked prefill through the cache; both must agree to 2e-4.
  6. Writes tests/fixtures/golden_<preset>.bin.

Fixture format (little-endian, no padding):
  offset 0   char[8]  magic "DS4GOLD1"
  offset 8   char[16] preset name, NUL-padded
  offset 24  u32      n_tokens
  offset 28  u32      vocab
  offset 32  i32      token ids [n_tokens]
  then       f32      logits [n_tokens][vocab] (row t = logits after token t)

Usage: make_golden.py [--preset NAME ...] [--work DIR] [--out-dir DIR]
"""
import argparse
import hashlib
import json
import os
import struct
import sys
import tempfile

import numpy as np
import torch
import transformers
from transformers import DeepseekV4ForCausalLM

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import make_model  # noqa: E402

FIXTURES = os.path.join(os.path.dirname(HERE), "fixtures")
N_TOKENS = {"tiny-a": 520, "tiny-b": 300}
CHUNKS = [37, 50, 3, 1, 100, 128, 7]      # cycled for the chunked prefill
DECODE_TOL = 2e-4


def fail(msg):
    raise SystemExit("make_golden: FAILED: " + msg)


def tokens(preset, n):
    """Seeded token stream, token 0 (BOS) first."""
    p = make_model.PRESETS[preset]
    u = make_model.stream_u64(p, "tokens", n) % np.uint64(p["vocab_size"])
    ids = u.astype(np.int64)
    ids[0] = 0
    return ids


def load(path):
    m, info = DeepseekV4ForCausalLM.from_pretrained(
        path, dtype=torch.float32, attn_implementation="eager",
        experts_implementation="eager", output_loading_info=True)
    bad = {k: v for k, v in info.items() if v}
    if bad:
        fail("%s: loading info %s" % (path, bad))
    return m.eval()


def read_safetensors(path):
    """name -> (dtype tag, shape, raw bytes), without the safetensors package."""
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        data = f.read()
    header.pop("__metadata__", None)
    return {k: (v["dtype"], tuple(v["shape"]), data[v["data_offsets"][0]:v["data_offsets"][1]])
            for k, v in header.items()}


def compare_folders(got_dir, want_dir, what, check_config=True):
    """Tensor names/shapes/bytes (and the config files, transformers_version
    aside) must match; returns whether all three files are byte-identical."""
    got = read_safetensors(os.path.join(got_dir, "model.safetensors"))
    want = read_safetensors(os.path.join(want_dir, "model.safetensors"))
    if set(got) != set(want):
        fail("%s: names differ: only saved %s, only make_model %s"
             % (what, sorted(set(got) - set(want))[:8], sorted(set(want) - set(got))[:8]))
    for k in want:
        if got[k] != want[k]:
            fail("%s: tensor %s differs (%s %s vs %s %s)"
                 % (what, k, got[k][0], got[k][1], want[k][0], want[k][1]))
    if check_config:
        for fn in ("config.json", "generation_config.json"):
            with open(os.path.join(got_dir, fn)) as f:
                g = json.load(f)
            with open(os.path.join(want_dir, fn)) as f:
                w = json.load(f)
            g.pop("transformers_version", None)
            w.pop("transformers_version", None)
            if g != w:
                diff = sorted(k for k in set(g) | set(w) if g.get(k) != w.get(k))
                fail("%s: %s differs in %s" % (what, fn, diff))
    same = True
    for fn in ("model.safetensors", "config.json", "generation_config.json"):
        with open(os.path.join(got_dir, fn), "rb") as f:
            a = f.read()
        with open(os.path.join(want_dir, fn), "rb") as f:
            same = same and a == f.read()
    return same


class Probe:
    """Forward hooks that measure how hard the golden run exercises the
    model: clamp bite rates, expert usage, the residual's size, and the
    margins at the router's and the indexer's top-k boundary (a near-tie
    there is where another f32 implementation could pick differently)."""

    def __init__(self, m):
        c = m.config
        self.lim, self.k, self.itopk = c.swiglu_limit, c.num_experts_per_tok, c.index_topk
        self.ratio = c.compress_rates["compressed_sparse_attention"]
        self.bite = []          # (gate fraction > lim, up fraction |u| > lim)
        self.usage = []         # per-layer expert counts
        self.rms = []           # residual RMS after each layer
        self.rmargin = []       # min gap k-th/(k+1)-th biased router score
        self.imargin = []       # min relative gap at the indexer top-k boundary
        self.inear = 0          # indexer boundaries closer than 1e-4 relative
        self.handles = []
        for layer in m.model.layers:
            mlp = layer.mlp
            self.handles.append(layer.register_forward_hook(self._layer))
            self.handles.append(mlp.experts.register_forward_pre_hook(self._experts))
            self.handles.append(mlp.shared_experts.register_forward_pre_hook(self._shared))
            if not mlp.is_hash:
                self.handles.append(mlp.gate.register_forward_hook(self._router))
            comp = getattr(layer.self_attn, "compressor", None)
            if comp is not None and hasattr(comp, "indexer"):
                self.handles.append(comp.indexer.scorer.register_forward_hook(self._scorer))

    def close(self):
        for h in self.handles:
            h.remove()

    def _layer(self, mod, args, out):
        h = out[0] if isinstance(out, tuple) else out
        self.rms.append(h.pow(2).mean().sqrt().item())

    def _experts(self, mod, args):
        x, idx, _ = args
        g_over = u_over = n = 0
        for e in range(mod.num_experts):
            tok, _ = torch.where(idx == e)
            if len(tok):
                g, u = (x[tok] @ mod.gate_up_proj[e].T).chunk(2, -1)
                g_over += (g > self.lim).sum().item()
                u_over += (u.abs() > self.lim).sum().item()
                n += g.numel()
        self.bite.append((g_over / n, u_over / n))
        self.usage.append(torch.bincount(idx.flatten(), minlength=mod.num_experts).tolist())

    def _shared(self, mod, args):
        x = args[0]
        self.bite.append(((mod.gate_proj(x) > self.lim).float().mean().item(),
                          (mod.up_proj(x).abs() > self.lim).float().mean().item()))

    def _router(self, mod, args, out):
        logits, _, _ = out
        v = (mod.score_fn(logits) + mod.e_score_correction_bias).sort(-1, descending=True).values
        self.rmargin.append((v[:, self.k - 1] - v[:, self.k]).min().item())

    def _scorer(self, mod, args, out):
        s, k, worst = out[0], self.itopk, float("inf")
        for t in range(s.shape[0]):
            vis = (t + 1) // self.ratio
            if vis > k:
                v = s[t, :vis].sort(descending=True).values
                rel = (v[k - 1] - v[k]).item() / v[0].abs().item()
                worst = min(worst, rel)
                self.inear += rel < 1e-4
        self.imargin.append(worst)

    def report(self):
        b = np.array(self.bite)
        u = [min(c) for c in self.usage], [max(c) for c in self.usage]
        print("  clamp bites: gate > limit %.1f%%..%.1f%%, |up| > limit %.1f%%..%.1f%% (per expert block)"
              % (100 * b[:, 0].min(), 100 * b[:, 0].max(), 100 * b[:, 1].min(), 100 * b[:, 1].max()))
        print("  expert use per layer min/max tokens: %s" % list(zip(*u)))
        print("  residual RMS per layer: %s" % " ".join("%.2f" % r for r in self.rms))
        print("  router min top-k gap: %s" % " ".join("%.2g" % r for r in self.rmargin))
        print("  indexer min relative top-k gap per CSA layer: %s; boundaries < 1e-4: %d"
              % (" ".join("%.2g" % r for r in self.imargin), self.inear))


@torch.no_grad()
def full_logits(m, ids):
    return m(ids, use_cache=False).logits[0]


@torch.no_grad()
def cached_logits(m, ids, chunks):
    """Logits through the cache, feeding the sequence in the given chunk sizes."""
    from transformers import DynamicCache
    cache = DynamicCache(config=m.config)
    out, t, i = [], 0, 0
    T = ids.shape[1]
    while t < T:
        n = min(chunks[i % len(chunks)], T - t)
        r = m(ids[:, t:t + n], past_key_values=cache, use_cache=True)
        cache = r.past_key_values
        out.append(r.logits[0])
        t += n
        i += 1
    return torch.cat(out)


def sha256(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def write_fixture(path, preset, ids, logits):
    name = preset.encode("ascii")
    if len(name) > 16:
        fail("preset name too long")
    with open(path, "wb") as f:
        f.write(b"DS4GOLD1")
        f.write(name + b"\0" * (16 - len(name)))
        f.write(struct.pack("<II", len(ids), logits.shape[1]))
        f.write(np.asarray(ids, dtype="<i4").tobytes())
        f.write(np.asarray(logits, dtype="<f4").tobytes())


def run_preset(preset, work, out_dir):
    dirs = {n: os.path.join(work, preset + "-" + n) for n in ("saved", "official", "hf")}
    for n, d in dirs.items():
        make_model.write_model(preset, d, n, "f32")

    ms = load(dirs["saved"])
    res = os.path.join(work, preset + "-resaved")
    ms.save_pretrained(res)
    same_saved = compare_folders(res, dirs["saved"], preset + " save_pretrained()")
    res_hf = os.path.join(work, preset + "-resaved-hf")
    ms.save_pretrained(res_hf, save_original_format=False)
    same_hf = compare_folders(res_hf, dirs["hf"], preset + " save_original_format=False")

    mo = load(dirs["official"])
    res_off = os.path.join(work, preset + "-resaved-official")
    mo.save_pretrained(res_off)
    compare_folders(res_off, dirs["saved"], preset + " official -> save_pretrained()",
                    check_config=False)
    mh = load(dirs["hf"])

    T = N_TOKENS[preset]
    ids_np = tokens(preset, T)
    ids = torch.tensor(ids_np)[None]
    probe = Probe(ms)
    ref = full_logits(ms, ids)
    probe.close()
    for n, m in (("official", mo), ("hf", mh)):
        d = (full_logits(m, ids) - ref).abs().max().item()
        if d != 0.0:
            fail("%s: %s logits differ from saved by %g" % (preset, n, d))
    dec = (cached_logits(ms, ids, [1]) - ref).abs().max().item()
    chk = (cached_logits(ms, ids, CHUNKS) - ref).abs().max().item()
    if dec > DECODE_TOL or chk > DECODE_TOL:
        fail("%s: decode vs full %.3g, chunked vs full %.3g" % (preset, dec, chk))

    lg = ref.numpy().astype(np.float32)
    path = os.path.join(out_dir, "golden_%s.bin" % preset)
    write_fixture(path, preset, ids_np, lg)
    p = make_model.PRESETS[preset]
    print("%s: %d tokens, vocab %d, layers %s" % (preset, T, p["vocab_size"], p["compress_ratios"]))
    print("  logit std %.3f, max |logit| %.3f, per-token std %.3f..%.3f, distinct argmax %d"
          % (lg.std(), np.abs(lg).max(), lg.std(axis=1).min(), lg.std(axis=1).max(),
             len(set(lg.argmax(axis=1).tolist()))))
    print("  decode vs full max |diff| %.3g, chunked prefill %s vs full %.3g"
          % (dec, CHUNKS, chk))
    print("  saved/official/hf logits bit-identical; save_pretrained folders byte-identical: "
          "default %s, save_original_format=False %s" % (same_saved, same_hf))
    probe.report()
    for n in ("saved", "official", "hf"):
        print("  sha256 %s model.safetensors %s"
              % (n, sha256(os.path.join(dirs[n], "model.safetensors"))))
    print("  wrote %s (%d bytes)" % (path, os.path.getsize(path)))


def main(argv):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--preset", action="append", choices=sorted(make_model.PRESETS))
    ap.add_argument("--work", help="folder for the model folders (default: a temp dir)")
    ap.add_argument("--out-dir", default=FIXTURES)
    a = ap.parse_args(argv)
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    print("transformers %s, torch %s, numpy %s"
          % (transformers.__version__, torch.__version__, np.__version__))
    presets = a.preset or sorted(make_model.PRESETS)
    os.makedirs(a.out_dir, exist_ok=True)
    if a.work:
        for p in presets:
            run_preset(p, a.work, a.out_dir)
    else:
        with tempfile.TemporaryDirectory() as work:
            for p in presets:
                run_preset(p, work, a.out_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
