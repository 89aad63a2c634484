#!/usr/bin/env python3
"""Writes a small random DeepSeek V4 model as a Hugging Face folder
(config.json + model.safetensors), for the forward-pass golden tests.

Needs only numpy.  The output is the same bytes on every machine and numpy
version: the random stream is our own splitmix64 on uint64 arrays, turned
into floats with exact integer->float conversions and one correctly rounded
multiply, so no numpy Generator, libm call or summation order is involved.

Every parameter is non-trivial (random norms around 1, sinks, compressor
position biases, HC base and scale, router bias, a tid2eid table with k
distinct experts per row), because the HF default init (zeros/ones) would
hide bugs.  The scales keep activations O(1) over ~500 tokens.

Design:
- The model is built once under the *official* DeepSeek tensor names
  (no prefix, embed.weight, attn.kv_norm.weight, per-expert w1/w2/w3).
  Each tensor's values come from its own stream, seeded by FNV-1a of
  "<preset seed>:<official name>", so values do not depend on order.
- The three namings are pure renames/reshapes of that one set:
    saved     what transformers 5.x save_pretrained() writes by default
              ("model." prefix, head.weight, attn.norm.weight for the KV
              norm, per-expert w1/w2/w3), with the config.json it writes;
    official  the official checkpoint names and an official-style config
              (compress_ratios, num_hash_layers, qk_rope_head_dim,
              rope_scaling with yarn);
    hf        the HF module names (save_original_format=False: fused 3-D
              experts.gate_up_proj / down_proj, e_score_correction_bias,
              compressor.indexer.*), modern config spelling.
- The safetensors writer mirrors the safetensors library: tensors sorted by
  dtype (I64 before floats) then name, compact JSON header with
  {"__metadata__":{"format":"pt"}} first, padded with spaces to 8 bytes.

Usage: make_model.py --preset tiny-a --out DIR [--naming saved|official|hf]
                     [--dtype f32|bf16|f16]
                     [--encoding official-fp8 [--dequant-out DIR2]]
bf16/f16 store every float tensor in that type (round to nearest even);
tid2eid is always I64.  --encoding official-fp8 (official naming; needs
ml_dtypes) writes the official checkpoint's encodings instead: FP8 E4M3
projections with E8M0 scales per 128x128 block, FP4 E2M1 routed experts
packed in I8 with E8M0 scales per 1x32, F32/BF16 for the rest; DIR2 gets
the exact f32 values they stand for (see write_official_fp8).
"""
import argparse
import json
import os
import struct
import sys

import numpy as np

U64 = np.uint64
TRANSFORMERS_VERSION = "5.23.0"   # what the saved/hf config.json records

# Shapes and hyperparameters.  "gain" knobs scale the random weights; the
# rest is the DeepseekV4Config content.
PRESETS = {
    "tiny-a": dict(
        seed="ds4cl-golden-tiny-a-47",
        vocab_size=320, hidden_size=256, num_hidden_layers=6,
        compress_ratios=[0, 0, 4, 128, 4, 128], num_hash_layers=3,
        num_attention_heads=4, head_dim=64, qk_rope_head_dim=16,
        q_lora_rank=64, o_groups=2, o_lora_rank=32,
        n_routed_experts=8, num_experts_per_tok=2, moe_intermediate_size=256,
        index_n_heads=16, index_head_dim=32, index_topk=16,
        sliding_window=128, rope_theta=10000.0, compress_rope_theta=160000.0,
        rope_scaling=dict(type="yarn", factor=16,
                          original_max_position_embeddings=65536,
                          beta_fast=32, beta_slow=1),
        hc_mult=4, hc_sinkhorn_iters=20, hc_eps=1e-6, swiglu_limit=3.0,
        rms_norm_eps=1e-6, routed_scaling_factor=1.5,
        max_position_embeddings=1048576,
        gain=dict(ffn_in=1.5, head=2.0, attn_out=1.5, router_bias=0.1)),
    "tiny-b": dict(
        seed="ds4cl-golden-tiny-b-29",
        vocab_size=300, hidden_size=256, num_hidden_layers=5,
        compress_ratios=[0, 0, 4, 128, 4], num_hash_layers=2,
        num_attention_heads=8, head_dim=32, qk_rope_head_dim=16,
        q_lora_rank=32, o_groups=4, o_lora_rank=32,
        n_routed_experts=16, num_experts_per_tok=3, moe_intermediate_size=256,
        index_n_heads=16, index_head_dim=32, index_topk=8,
        sliding_window=128, rope_theta=10000.0, compress_rope_theta=160000.0,
        rope_scaling=dict(type="yarn", factor=8,
                          original_max_position_embeddings=32768,
                          beta_fast=32, beta_slow=1),
        hc_mult=4, hc_sinkhorn_iters=20, hc_eps=1e-6, swiglu_limit=2.5,
        rms_norm_eps=1e-6, routed_scaling_factor=2.0,
        max_position_embeddings=262144,
        gain=dict(ffn_in=1.5, head=2.0, attn_out=1.5, router_bias=0.1)),
    # The embedded demo model (make gguf/demo.gguf): the real vocabulary size
    # (129280, so the real tokenizer fits) with tiny widths, so the q8_0 GGUF
    # stays near 25 MB (the F16 embedding and Q8_0 head are most of it).
    "demo": dict(
        seed="ds4cl-demo-129280",
        vocab_size=129280, hidden_size=64, num_hidden_layers=4,
        compress_ratios=[0, 0, 4, 128], num_hash_layers=2,
        num_attention_heads=4, head_dim=64, qk_rope_head_dim=16,
        q_lora_rank=64, o_groups=2, o_lora_rank=32,
        n_routed_experts=8, num_experts_per_tok=2, moe_intermediate_size=128,
        index_n_heads=8, index_head_dim=32, index_topk=16,
        sliding_window=128, rope_theta=10000.0, compress_rope_theta=160000.0,
        rope_scaling=dict(type="yarn", factor=16,
                          original_max_position_embeddings=65536,
                          beta_fast=32, beta_slow=1),
        hc_mult=4, hc_sinkhorn_iters=20, hc_eps=1e-6, swiglu_limit=10.0,
        rms_norm_eps=1e-6, routed_scaling_factor=1.5,
        max_position_embeddings=1048576,
        gain=dict(ffn_in=1.5, head=2.0, attn_out=1.5, router_bias=0.1)),
}

ATTN_TYPES = {0: "sliding_attention", 4: "compressed_sparse_attention",
              128: "heavily_compressed_attention"}


# ---------------------------------------------------------------- random

def fnv1a64(text):
    h = 0xCBF29CE484222325
    for b in text.encode("utf-8"):
        h = ((h ^ b) * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return h


def splitmix64(seed, n):
    """n outputs of splitmix64 started at state `seed` (uint64 wrap-around)."""
    z = U64(seed) + np.arange(1, n + 1, dtype=U64) * U64(0x9E3779B97F4A7C15)
    z = (z ^ (z >> U64(30))) * U64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> U64(27))) * U64(0x94D049BB133111EB)
    return z ^ (z >> U64(31))


def stream_u64(preset, name, n):
    return splitmix64(fnv1a64(preset["seed"] + ":" + name), n)


def uniform(preset, name, shape, lo, hi):
    """f32 values lo + (hi-lo)*u, u = k/2^24 exactly; one rounding to f32."""
    n = int(np.prod(shape, dtype=np.int64))
    u = (stream_u64(preset, name, n) >> U64(40)).astype(np.float64) * 2.0 ** -24
    return (lo + (hi - lo) * u).astype(np.float32).reshape(shape)


def linear(preset, name, out_f, in_f, gain=1.0):
    """(out, in) weight, uniform with std gain/sqrt(in)."""
    a = gain * np.sqrt(3.0 / in_f)
    return uniform(preset, name, (out_f, in_f), -a, a)


def distinct_rows(preset, name, rows, n, k):
    """rows x k int64, each row k distinct values of [0, n)."""
    keys = stream_u64(preset, name, rows * n).reshape(rows, n)
    return np.argsort(keys, axis=1, kind="stable")[:, :k].astype(np.int64)


# ---------------------------------------------------------------- model

def official_tensors(p):
    """dict official name -> numpy array, in a fixed order."""
    H, V, nh, D = p["hidden_size"], p["vocab_size"], p["num_attention_heads"], p["head_dim"]
    q, G, R = p["q_lora_rank"], p["o_groups"], p["o_lora_rank"]
    E, I, k = p["n_routed_experts"], p["moe_intermediate_size"], p["num_experts_per_tok"]
    hc, iH, iD = p["hc_mult"], p["index_n_heads"], p["index_head_dim"]
    g = p["gain"]
    t = {}

    def lin(name, o, i, gain=1.0):
        t[name] = linear(p, name, o, i, gain)

    def uni(name, shape, lo, hi):
        t[name] = uniform(p, name, shape, lo, hi)

    def norm(name, n):
        uni(name, (n,), 0.75, 1.25)

    def compressor(pre, m, coff, d):
        uni(pre + "ape", (m, coff * d), -1.0, 1.0)
        lin(pre + "wkv.weight", coff * d, H)
        lin(pre + "wgate.weight", coff * d, H)
        norm(pre + "norm.weight", d)

    uni("embed.weight", (V, H), -1.0, 1.0)
    for L in range(p["num_hidden_layers"]):
        ratio = p["compress_ratios"][L]
        P = "layers.%d." % L
        norm(P + "attn_norm.weight", H)
        norm(P + "ffn_norm.weight", H)
        for s in ("attn", "ffn"):
            lin(P + "hc_%s_fn" % s, (2 + hc) * hc, hc * H)
            uni(P + "hc_%s_base" % s, ((2 + hc) * hc,), -1.0, 1.0)
            uni(P + "hc_%s_scale" % s, (3,), 0.5, 1.5)
        A = P + "attn."
        uni(A + "attn_sink", (nh,), -2.0, 3.0)
        lin(A + "wq_a.weight", q, H)
        norm(A + "q_norm.weight", q)
        lin(A + "wq_b.weight", nh * D, q)
        lin(A + "wkv.weight", D, H)
        norm(A + "kv_norm.weight", D)
        lin(A + "wo_a.weight", G * R, nh * D // G, g["attn_out"])
        lin(A + "wo_b.weight", H, G * R)
        if ratio:
            compressor(A + "compressor.", ratio, 2 if ratio == 4 else 1, D)
        if ratio == 4:
            lin(A + "indexer.wq_b.weight", iH * iD, q)
            lin(A + "indexer.weights_proj.weight", iH, H)
            compressor(A + "indexer.compressor.", ratio, 2, iD)
        F = P + "ffn."
        lin(F + "gate.weight", E, H)
        if L < p["num_hash_layers"]:
            t[F + "gate.tid2eid"] = distinct_rows(p, F + "gate.tid2eid", V, E, k)
        else:
            uni(F + "gate.bias", (E,), -g["router_bias"], g["router_bias"])
        for e in range(E):
            X = F + "experts.%d." % e
            lin(X + "w1.weight", I, H, g["ffn_in"])
            lin(X + "w2.weight", H, I)
            lin(X + "w3.weight", I, H, g["ffn_in"])
        lin(F + "shared_experts.w1.weight", I, H, g["ffn_in"])
        lin(F + "shared_experts.w2.weight", H, I)
        lin(F + "shared_experts.w3.weight", I, H, g["ffn_in"])
    norm("norm.weight", H)
    lin("head.weight", V, H, g["head"])
    lin("hc_head_fn", hc, hc * H)
    uni("hc_head_base", (hc,), -1.0, 1.0)
    uni("hc_head_scale", (1,), 0.5, 1.5)
    return t


# ---------------------------------------------------------------- namings

SAVED_GLOBAL = {"embed.weight": "model.embed_tokens.weight", "norm.weight": "model.norm.weight",
                "head.weight": "head.weight", "hc_head_fn": "model.hc_head.hc_fn",
                "hc_head_base": "model.hc_head.hc_base", "hc_head_scale": "model.hc_head.hc_scale"}

HF_GLOBAL = {"embed.weight": "model.embed_tokens.weight", "norm.weight": "model.norm.weight",
             "head.weight": "lm_head.weight", "hc_head_fn": "model.hc_head.hc_fn",
             "hc_head_base": "model.hc_head.hc_base", "hc_head_scale": "model.hc_head.hc_scale"}

# Per-layer official suffix -> HF module suffix, longest/most specific first.
HF_LAYER = [
    ("attn.indexer.compressor.wkv.weight", "self_attn.compressor.indexer.kv_proj.weight"),
    ("attn.indexer.compressor.wgate.weight", "self_attn.compressor.indexer.gate_proj.weight"),
    ("attn.indexer.compressor.norm.weight", "self_attn.compressor.indexer.kv_norm.weight"),
    ("attn.indexer.compressor.ape", "self_attn.compressor.indexer.position_bias"),
    ("attn.indexer.wq_b.weight", "self_attn.compressor.indexer.q_b_proj.weight"),
    ("attn.indexer.weights_proj.weight", "self_attn.compressor.indexer.scorer.weights_proj.weight"),
    ("attn.compressor.wkv.weight", "self_attn.compressor.kv_proj.weight"),
    ("attn.compressor.wgate.weight", "self_attn.compressor.gate_proj.weight"),
    ("attn.compressor.norm.weight", "self_attn.compressor.kv_norm.weight"),
    ("attn.compressor.ape", "self_attn.compressor.position_bias"),
    ("attn.attn_sink", "self_attn.sinks"),
    ("attn.wq_a.weight", "self_attn.q_a_proj.weight"),
    ("attn.q_norm.weight", "self_attn.q_a_norm.weight"),
    ("attn.wq_b.weight", "self_attn.q_b_proj.weight"),
    ("attn.wkv.weight", "self_attn.kv_proj.weight"),
    ("attn.kv_norm.weight", "self_attn.kv_norm.weight"),
    ("attn.wo_a.weight", "self_attn.o_a_proj.weight"),
    ("attn.wo_b.weight", "self_attn.o_b_proj.weight"),
    ("attn_norm.weight", "input_layernorm.weight"),
    ("ffn_norm.weight", "post_attention_layernorm.weight"),
    ("hc_attn_fn", "attn_hc.fn"), ("hc_attn_base", "attn_hc.base"), ("hc_attn_scale", "attn_hc.scale"),
    ("hc_ffn_fn", "ffn_hc.fn"), ("hc_ffn_base", "ffn_hc.base"), ("hc_ffn_scale", "ffn_hc.scale"),
    ("ffn.gate.weight", "mlp.gate.weight"),
    ("ffn.gate.bias", "mlp.gate.e_score_correction_bias"),
    ("ffn.gate.tid2eid", "mlp.gate.tid2eid"),
    ("ffn.shared_experts.w1.weight", "mlp.shared_experts.gate_proj.weight"),
    ("ffn.shared_experts.w2.weight", "mlp.shared_experts.down_proj.weight"),
    ("ffn.shared_experts.w3.weight", "mlp.shared_experts.up_proj.weight"),
]


def split_layer(name):
    """'layers.3.attn.wkv.weight' -> (3, 'attn.wkv.weight'); globals -> (None, name)."""
    if not name.startswith("layers."):
        return None, name
    _, n, rest = name.split(".", 2)
    return int(n), rest


def to_saved(t):
    out = {}
    for name, v in t.items():
        L, rest = split_layer(name)
        if L is None:
            out[SAVED_GLOBAL[name]] = v
        elif rest == "attn.kv_norm.weight":
            out["model.layers.%d.attn.norm.weight" % L] = v
        else:
            out["model." + name] = v
    return out


def to_hf(t, p):
    out = {}
    E = p["n_routed_experts"]
    for name, v in t.items():
        L, rest = split_layer(name)
        if L is None:
            out[HF_GLOBAL[name]] = v
        elif rest.startswith("ffn.experts."):
            continue
        else:
            out["model.layers.%d.%s" % (L, dict(HF_LAYER)[rest])] = v
    for L in range(p["num_hidden_layers"]):
        X = "layers.%d.ffn.experts." % L
        gate_up = np.stack([np.concatenate([t[X + "%d.w1.weight" % e], t[X + "%d.w3.weight" % e]])
                            for e in range(E)])
        down = np.stack([t[X + "%d.w2.weight" % e] for e in range(E)])
        out["model.layers.%d.mlp.experts.gate_up_proj" % L] = gate_up
        out["model.layers.%d.mlp.experts.down_proj" % L] = down
    return out


# ---------------------------------------------------------------- configs

DTYPE_NAMES = {"f32": "float32", "bf16": "bfloat16", "f16": "float16"}


def official_config(p, dtype):
    n = p["num_hidden_layers"]
    return {
        "architectures": ["DeepseekV4ForCausalLM"],
        "model_type": "deepseek_v4",
        "vocab_size": p["vocab_size"],
        "hidden_size": p["hidden_size"],
        "moe_intermediate_size": p["moe_intermediate_size"],
        "num_hidden_layers": n,
        "num_attention_heads": p["num_attention_heads"],
        "num_key_value_heads": 1,
        "head_dim": p["head_dim"],
        "qk_rope_head_dim": p["qk_rope_head_dim"],
        "q_lora_rank": p["q_lora_rank"],
        "o_groups": p["o_groups"],
        "o_lora_rank": p["o_lora_rank"],
        "n_routed_experts": p["n_routed_experts"],
        "n_shared_experts": 1,
        "num_experts_per_tok": p["num_experts_per_tok"],
        "routed_scaling_factor": p["routed_scaling_factor"],
        "scoring_func": "sqrtsoftplus",
        "topk_method": "noaux_tc",
        "norm_topk_prob": True,
        "num_hash_layers": p["num_hash_layers"],
        # One extra trailing entry for the MTP layer, as the official file has.
        "compress_ratios": list(p["compress_ratios"]) + [0],
        "compress_rope_theta": p["compress_rope_theta"],
        "rope_theta": p["rope_theta"],
        "rope_scaling": dict(p["rope_scaling"]),
        "sliding_window": p["sliding_window"],
        "index_n_heads": p["index_n_heads"],
        "index_head_dim": p["index_head_dim"],
        "index_topk": p["index_topk"],
        "hc_mult": p["hc_mult"],
        "hc_sinkhorn_iters": p["hc_sinkhorn_iters"],
        "hc_eps": p["hc_eps"],
        "swiglu_limit": p["swiglu_limit"],
        "rms_norm_eps": p["rms_norm_eps"],
        "hidden_act": "silu",
        "max_position_embeddings": p["max_position_embeddings"],
        "num_nextn_predict_layers": 1,
        "bos_token_id": 0,
        "eos_token_id": 1,
        "tie_word_embeddings": False,
        "torch_dtype": DTYPE_NAMES[dtype],
    }


def hf_config(p, dtype):
    """The config.json transformers 5.23 save_pretrained writes for this model
    (after loading the official-style config)."""
    n = p["num_hidden_layers"]
    prf = p["qk_rope_head_dim"] / p["head_dim"]
    compress = dict(p["rope_scaling"])
    compress.update(rope_theta=p["compress_rope_theta"], rope_type=compress["type"],
                    partial_rotary_factor=prf, attention_factor=1.0)
    nh = p["num_hash_layers"]
    return {
        "architectures": ["DeepseekV4ForCausalLM"],
        "attention_bias": False,
        "attention_dropout": 0.0,
        "bos_token_id": 0,
        "compress_rates": {"compressed_sparse_attention": 4,
                           "heavily_compressed_attention": 128},
        "compress_rope_theta": p["compress_rope_theta"],
        "dtype": DTYPE_NAMES[dtype],
        "eos_token_id": 1,
        "hc_eps": p["hc_eps"],
        "hc_mult": p["hc_mult"],
        "hc_sinkhorn_iters": p["hc_sinkhorn_iters"],
        "head_dim": p["head_dim"],
        "hidden_act": "silu",
        "hidden_size": p["hidden_size"],
        "index_head_dim": p["index_head_dim"],
        "index_n_heads": p["index_n_heads"],
        "index_topk": p["index_topk"],
        "initializer_range": 0.02,
        "layer_types": [ATTN_TYPES[r] for r in p["compress_ratios"]],
        "max_position_embeddings": p["max_position_embeddings"],
        "mlp_bias": False,
        "mlp_layer_types": ["hash_moe"] * min(nh, n) + ["moe"] * max(n - nh, 0),
        "model_type": "deepseek_v4",
        "moe_intermediate_size": p["moe_intermediate_size"],
        "n_routed_experts": p["n_routed_experts"],
        "n_shared_experts": 1,
        "norm_topk_prob": True,
        "num_attention_heads": p["num_attention_heads"],
        "num_experts_per_tok": p["num_experts_per_tok"],
        "num_hidden_layers": n,
        "num_key_value_heads": 1,
        "num_nextn_predict_layers": 1,
        "o_groups": p["o_groups"],
        "o_lora_rank": p["o_lora_rank"],
        "output_router_logits": False,
        "pad_token_id": None,
        "partial_rotary_factor": prf,
        "q_lora_rank": p["q_lora_rank"],
        "qk_rope_head_dim": p["qk_rope_head_dim"],
        "rms_norm_eps": p["rms_norm_eps"],
        "rope_parameters": {
            "compress": compress,
            "main": {"partial_rotary_factor": prf, "rope_theta": p["rope_theta"],
                     "rope_type": "default"},
        },
        "rope_theta": p["rope_theta"],
        "routed_scaling_factor": p["routed_scaling_factor"],
        "router_aux_loss_coef": 0.001,
        "router_jitter_noise": 0.0,
        "scoring_func": "sqrtsoftplus",
        "sliding_window": p["sliding_window"],
        "swiglu_limit": p["swiglu_limit"],
        "tie_word_embeddings": False,
        "transformers_version": TRANSFORMERS_VERSION,
        "use_cache": True,
        "vocab_size": p["vocab_size"],
    }


GENERATION_CONFIG = {"_from_model_config": True, "bos_token_id": 0, "eos_token_id": 1,
                     "output_attentions": False, "output_hidden_states": False,
                     "transformers_version": TRANSFORMERS_VERSION, "use_cache": True}


def dump_json(obj):
    """transformers' to_json_string spelling: indent 2, sorted keys, newline."""
    return json.dumps(obj, indent=2, sort_keys=True) + "\n"


# ---------------------------------------------------------------- safetensors

def f32_to_bf16_bits(a):
    """float32 array -> uint16 bfloat16 bits, round to nearest even (no NaNs here)."""
    b = a.astype(np.float32).view(np.uint32)
    rounding = ((b >> np.uint32(16)) & np.uint32(1)) + np.uint32(0x7FFF)
    return ((b + rounding) >> np.uint32(16)).astype(np.uint16)


def encode(v, dtype):
    """-> (safetensors dtype tag, little-endian bytes)."""
    if v.dtype == np.int64:
        return "I64", v.astype("<i8").tobytes()
    if dtype == "f32":
        return "F32", v.astype("<f4").tobytes()
    if dtype == "f16":
        return "F16", v.astype("<f2").tobytes()
    return "BF16", f32_to_bf16_bits(v).astype("<u2").tobytes()


def write_safetensors(path, tensors, dtype):
    items = []
    for name, v in tensors.items():
        tag, data = encode(v, dtype)
        items.append((0 if tag == "I64" else 1, name, tag, list(v.shape), data))
    items.sort(key=lambda it: (it[0], it[1]))
    header = {"__metadata__": {"format": "pt"}}
    off = 0
    for _, name, tag, shape, data in items:
        header[name] = {"dtype": tag, "shape": shape, "data_offsets": [off, off + len(data)]}
        off += len(data)
    hb = json.dumps(header, separators=(",", ":")).encode("utf-8")
    hb += b" " * (-len(hb) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(hb)))
        f.write(hb)
        for it in items:
            f.write(it[4])


# ---------------------------------------------------------------- official FP8

# The official checkpoint's encodings (DeepSeek-V4-Flash): FP8 E4M3 dense
# projections with an E8M0 scale per 128x128 block, FP4 E2M1 routed experts
# packed two per I8 byte (low nibble first) with an E8M0 scale per 1x32
# block, F32 for the HC/sink/position-bias/router-bias tensors, BF16 for the
# rest, I64 tid2eid.  Needs ml_dtypes (the reference FP8/FP4 rounding).
FP8_SUFFIXES = ("attn.wq_a.weight", "attn.wq_b.weight", "attn.wkv.weight", "attn.wo_a.weight",
                "attn.wo_b.weight", "attn.indexer.wq_b.weight", "ffn.shared_experts.w1.weight",
                "ffn.shared_experts.w2.weight", "ffn.shared_experts.w3.weight")
F32_SUFFIXES = ("hc_attn_fn", "hc_attn_base", "hc_attn_scale", "hc_ffn_fn", "hc_ffn_base",
                "hc_ffn_scale", "attn.attn_sink", "ape", "ffn.gate.bias")
FP8_BLOCK = (128, 128)
FP4_BLOCK = 32
QUANT_CONFIG = {"activation_scheme": "dynamic", "fmt": "e4m3", "quant_method": "fp8",
                "scale_fmt": "ue8m0", "weight_block_size": list(FP8_BLOCK)}


def pow2_exponent(amax, top_m, top_e):
    """Smallest integer k with amax / 2^k <= top (top = top_m * 2^top_e,
    0.5 <= top_m < 1), per element, computed exactly with frexp."""
    m, e = np.frexp(amax)
    k = e.astype(np.int64) - top_e + (m > top_m)
    return np.where(amax > 0, k, 0)


def block_jitter(p, name, n, bits):
    """n small non-negative integers < 2^bits: extra scale exponents, so
    blocks differ in scale and some codes land on subnormals and zero."""
    return (stream_u64(p, name + ":scale", n) >> U64(64 - bits)).astype(np.int64)


def fp8_encode(p, name, w):
    """(E4M3 codes as uint8 [R, C], E8M0 bytes [R/128, C/128], exact f32
    dequantization) of a float32 [R, C] weight."""
    import ml_dtypes
    R, C = w.shape
    br, bc = FP8_BLOCK
    sr, sc = -(-R // br), -(-C // bc)
    pad = np.zeros((sr * br, sc * bc), np.float32)
    pad[:R, :C] = w
    amax = np.abs(pad.reshape(sr, br, sc, bc)).max(axis=(1, 3))
    k = pow2_exponent(amax, 0.875, 9) + block_jitter(p, name, sr * sc, 2).reshape(sr, sc)
    scale = np.ldexp(np.float32(1.0), k).astype(np.float32)        # exact powers of two
    full = np.repeat(np.repeat(scale, br, axis=0), bc, axis=1)[:R, :C]
    codes = (w / full).astype(ml_dtypes.float8_e4m3fn)             # exact division, RNE cast
    deq = codes.astype(np.float32) * full
    return codes.view(np.uint8), (k + 127).astype(np.uint8), deq


def fp4_encode(p, name, w):
    """(packed E2M1 codes as int8 [R, C/2], E8M0 bytes [R, C/32], exact f32
    dequantization) of a float32 [R, C] weight."""
    import ml_dtypes
    R, C = w.shape
    nb = C // FP4_BLOCK
    amax = np.abs(w.reshape(R, nb, FP4_BLOCK)).max(axis=2)
    k = pow2_exponent(amax, 0.75, 3) + block_jitter(p, name, R * nb, 1).reshape(R, nb)
    full = np.repeat(np.ldexp(np.float32(1.0), k).astype(np.float32), FP4_BLOCK, axis=1)
    codes = (w / full).astype(ml_dtypes.float4_e2m1fn)
    deq = codes.astype(np.float32) * full
    c = codes.view(np.uint8) & np.uint8(15)
    packed = (c[:, 0::2] | (c[:, 1::2] << np.uint8(4))).astype(np.uint8)
    return packed.view(np.int8), (k + 127).astype(np.uint8), deq


def bf16_exact(v):
    """(bf16 bits, their exact f32 values)."""
    bits = f32_to_bf16_bits(v)
    return bits, (bits.astype(np.uint32) << np.uint32(16)).view(np.float32).reshape(v.shape)


def write_safetensors_raw(path, items):
    """items: (name, dtype tag, shape, bytes); sorted by element size
    (largest first) then name, as the safetensors library lays them out."""
    size = {"I64": 8, "F32": 4, "BF16": 2, "F8_E4M3": 1, "F8_E8M0": 1, "I8": 1}
    items = sorted(items, key=lambda it: (-size[it[1]], it[0]))
    header = {"__metadata__": {"format": "pt"}}
    off = 0
    for name, tag, shape, data in items:
        header[name] = {"dtype": tag, "shape": list(shape), "data_offsets": [off, off + len(data)]}
        off += len(data)
    hb = json.dumps(header, separators=(",", ":")).encode("utf-8")
    hb += b" " * (-len(hb) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(hb)))
        f.write(hb)
        for it in items:
            f.write(it[3])


def write_official_fp8(preset_name, out_dir, dequant_out=None):
    """The preset in the official encodings under official names.  With
    dequant_out, also that folder: the same model with every tensor stored
    as the exact f32 value the encoded one stands for (official names, F32,
    tid2eid I64): converting either must give the same GGUF."""
    p = PRESETS[preset_name]
    items, deq = [], {}
    for name, v in official_tensors(p).items():
        L, rest = split_layer(name)
        if v.dtype == np.int64:
            items.append((name, "I64", v.shape, v.astype("<i8").tobytes()))
            deq[name] = v
        elif L is not None and rest.startswith("ffn.experts."):
            packed, sc, deq[name] = fp4_encode(p, name, v)
            items.append((name, "I8", packed.shape, packed.tobytes()))
            items.append((name[:-len("weight")] + "scale", "F8_E8M0", sc.shape, sc.tobytes()))
        elif rest.endswith(FP8_SUFFIXES):
            codes, sc, deq[name] = fp8_encode(p, name, v)
            items.append((name, "F8_E4M3", codes.shape, codes.tobytes()))
            items.append((name[:-len("weight")] + "scale", "F8_E8M0", sc.shape, sc.tobytes()))
        elif rest.endswith(F32_SUFFIXES) or name.startswith("hc_head_"):
            items.append((name, "F32", v.shape, v.astype("<f4").tobytes()))
            deq[name] = v
        else:
            bits, deq[name] = bf16_exact(v)
            items.append((name, "BF16", v.shape, bits.astype("<u2").tobytes()))
    os.makedirs(out_dir, exist_ok=True)
    cfg = official_config(p, "bf16")
    cfg["quantization_config"] = dict(QUANT_CONFIG)
    with open(os.path.join(out_dir, "config.json"), "w") as f:
        f.write(dump_json(cfg))
    write_safetensors_raw(os.path.join(out_dir, "model.safetensors"), items)
    if dequant_out:
        os.makedirs(dequant_out, exist_ok=True)
        with open(os.path.join(dequant_out, "config.json"), "w") as f:
            f.write(dump_json(official_config(p, "f32")))
        write_safetensors(os.path.join(dequant_out, "model.safetensors"), deq, "f32")


# ---------------------------------------------------------------- main

def write_model(preset_name, out_dir, naming="saved", dtype="f32"):
    p = PRESETS[preset_name]
    t = official_tensors(p)
    os.makedirs(out_dir, exist_ok=True)
    if naming == "official":
        tensors, cfg = t, official_config(p, dtype)
    elif naming == "saved":
        tensors, cfg = to_saved(t), hf_config(p, dtype)
    elif naming == "hf":
        tensors, cfg = to_hf(t, p), hf_config(p, dtype)
    else:
        raise ValueError("unknown naming " + naming)
    with open(os.path.join(out_dir, "config.json"), "w") as f:
        f.write(dump_json(cfg))
    if naming != "official":
        with open(os.path.join(out_dir, "generation_config.json"), "w") as f:
            f.write(dump_json(GENERATION_CONFIG))
    write_safetensors(os.path.join(out_dir, "model.safetensors"), tensors, dtype)


def main(argv):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--preset", required=True, choices=sorted(PRESETS))
    ap.add_argument("--out", required=True)
    ap.add_argument("--naming", default="saved", choices=["saved", "official", "hf"])
    ap.add_argument("--dtype", default="f32", choices=["f32", "bf16", "f16"])
    ap.add_argument("--encoding", default="plain", choices=["plain", "official-fp8"],
                    help="official-fp8: the official checkpoint's FP8/FP4 encodings "
                         "(--naming official only; --dtype is ignored)")
    ap.add_argument("--dequant-out", help="official-fp8: also write the exact f32 "
                    "dequantization of the model to this folder")
    a = ap.parse_args(argv)
    if a.encoding == "official-fp8":
        if a.naming != "official":
            ap.error("--encoding official-fp8 needs --naming official")
        write_official_fp8(a.preset, a.out, a.dequant_out)
        return 0
    write_model(a.preset, a.out, a.naming, a.dtype)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
