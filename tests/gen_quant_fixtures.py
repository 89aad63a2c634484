#!/usr/bin/env python3
"""gen_quant_fixtures.py - oracle data for tests/test_quant.c, made with the
`gguf` Python package (pip `gguf`), which the C dequantizers must agree with.

Seeded: rerunning writes byte-identical files.  Everything lands in
tests/fixtures/quant_*.

Binary fixture format (all little-endian), tests/fixtures/quant_<name>.bin:

  offset  size      field
  0       8         magic "DS4QFIX1"
  8       4         u32 GGML type id
  12      4         u32 flags: bit 0 = a source section is present
  16      8         u64 n, number of values
  24      8         u64 nbytes, bytes of the raw block section
  32      4*n       f32 source values (only when flags bit 0 is set): the raw
                    blocks are gguf.quants.quantize(source)
  ...     nbytes    raw block bytes of the type (GGML layout)
  ...     4*n       f32 expected values: gguf.quants.dequantize(raw)

Files:
  quant_q8_0.bin, quant_q2_k.bin, quant_q4_k.bin, quant_iq2_xxs.bin
      random block bytes whose f16 scale fields are overwritten with finite,
      moderate values (random sign), so no inf/nan reaches the expected values;
  quant_f16.bin, quant_bf16.bin
      random 16-bit patterns (NaNs included: compare those as "both NaN"),
      plus every special class (zeros, subnormals, max, inf);
  quant_q8_0_from_f32.bin
      gguf's own Q8_0 quantization of random floats (with source), including a
      block whose scaled values sit exactly on .5 to pin the rounding rule;
  quant_f16_from_f32.bin, quant_bf16_from_f32.bin
      f32 -> f16 (numpy, round to nearest even) and f32 -> bf16 (gguf) of
      random floats plus rounding ties, overflow and subnormal cases (no NaN);
  quant_traits.txt
      "id name block_size type_size" per line, from GGML_QUANT_SIZES.
"""

import os
import struct

import numpy as np
from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType as T
from gguf import quants

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "tests", "fixtures")
MAGIC = b"DS4QFIX1"


def write_fixture(name, qtype, raw, expected, source=None):
    raw = np.ascontiguousarray(raw, dtype=np.uint8).tobytes()
    expected = np.ascontiguousarray(expected, dtype="<f4").ravel()
    n = expected.size
    flags = 1 if source is not None else 0
    parts = [MAGIC, struct.pack("<IIQQ", int(qtype), flags, n, len(raw))]
    if source is not None:
        src = np.ascontiguousarray(source, dtype="<f4").ravel()
        assert src.size == n
        parts.append(src.tobytes())
    parts.append(raw)
    parts.append(expected.tobytes())
    path = os.path.join(OUT, name)
    with open(path, "wb") as f:
        f.write(b"".join(parts))
    return os.path.getsize(path)


def moderate_f16(rng, count):
    """Finite f16 scales with random sign and magnitude in [2^-12, 2^2)."""
    mag = np.exp2(rng.uniform(-12.0, 2.0, size=count))
    sign = np.where(rng.random(count) < 0.5, -1.0, 1.0)
    return (mag * sign).astype(np.float16)


def random_blocks(rng, qtype, n_blocks, scale_offsets):
    """Random block bytes; the f16 fields at scale_offsets get moderate values."""
    _, type_size = GGML_QUANT_SIZES[qtype]
    blocks = rng.integers(0, 256, size=(n_blocks, type_size), dtype=np.uint8)
    for off in scale_offsets:
        d = moderate_f16(rng, n_blocks).view(np.uint8).reshape(n_blocks, 2)
        blocks[:, off:off + 2] = d
    return blocks


def block_fixtures(rng, sizes):
    # (name, type, blocks, offsets of the f16 fields inside a block)
    specs = [
        ("quant_q8_0.bin", T.Q8_0, 64, [0]),
        ("quant_q2_k.bin", T.Q2_K, 16, [80, 82]),
        ("quant_q4_k.bin", T.Q4_K, 16, [0, 2]),
        ("quant_iq2_xxs.bin", T.IQ2_XXS, 24, [0]),
    ]
    for name, qtype, nb, offs in specs:
        blocks = random_blocks(rng, qtype, nb, offs)
        expected = quants.dequantize(blocks.ravel(), qtype)
        assert np.all(np.isfinite(expected))
        sizes[name] = write_fixture(name, qtype, blocks, expected)


def half_patterns(rng, specials):
    bits = rng.integers(0, 1 << 16, size=2048, dtype=np.uint32).astype(np.uint16)
    return np.concatenate([np.array(specials, dtype=np.uint16), bits])


def plain16_fixtures(rng, sizes):
    f16_specials = [0x0000, 0x8000, 0x0001, 0x8001, 0x03ff, 0x83ff, 0x0400, 0x7bff, 0xfbff,
                    0x7c00, 0xfc00, 0x7e00, 0x7c01, 0xfe00, 0x3c00, 0xbc00, 0x3555, 0x0200]
    h = half_patterns(rng, f16_specials)
    expected = h.view(np.float16).astype(np.float32)
    sizes["quant_f16.bin"] = write_fixture("quant_f16.bin", T.F16, h.view(np.uint8), expected)

    bf16_specials = [0x0000, 0x8000, 0x0001, 0x8001, 0x007f, 0x0080, 0x7f7f, 0xff7f,
                     0x7f80, 0xff80, 0x7fc0, 0x7f81, 0xffc0, 0x3f80, 0xbf80, 0x3eab]
    h = half_patterns(rng, bf16_specials)
    expected = quants.dequantize(h.view(np.uint8), T.BF16)
    sizes["quant_bf16.bin"] = write_fixture("quant_bf16.bin", T.BF16, h.view(np.uint8), expected)


def q8_0_from_f32(rng, sizes):
    n_blocks = 64
    x = rng.standard_normal(size=(n_blocks, 32)).astype(np.float32)
    x *= np.exp2(rng.uniform(-8.0, 4.0, size=(n_blocks, 1))).astype(np.float32)
    x[0, :] = 0.0                              # all-zero block: d = 0
    tie = np.arange(32, dtype=np.float32) - 15.5   # d = 1 exactly: q*id lands on .5
    tie[31] = 127.0
    x[1, :] = tie
    x[2, :] = -tie
    x[3, :] = np.float32(1e-6) * rng.standard_normal(32).astype(np.float32)  # tiny (subnormal f16 d)
    x = x.ravel()
    raw = quants.quantize(x, T.Q8_0)
    expected = quants.dequantize(raw, T.Q8_0)
    sizes["quant_q8_0_from_f32.bin"] = write_fixture("quant_q8_0_from_f32.bin", T.Q8_0, raw,
                                                     expected, source=x)


def f32_edge_values(rng):
    """Random floats over a wide exponent range plus rounding edge cases."""
    x = rng.standard_normal(1536).astype(np.float32)
    x *= np.exp2(rng.uniform(-30.0, 18.0, size=x.size)).astype(np.float32)
    # f16 ties between neighbours (1 + k*2^-10 + 2^-11), both parities
    ties16 = (1.0 + np.arange(8) * 2.0 ** -10 + 2.0 ** -11).astype(np.float32)
    # bf16 ties (1 + k*2^-7 + 2^-8)
    ties16b = (1.0 + np.arange(8) * 2.0 ** -7 + 2.0 ** -8).astype(np.float32)
    edges = np.array([0.0, -0.0, 65504.0, 65519.99, 65520.0, 70000.0, -1e30, np.inf, -np.inf,
                      2.0 ** -24, 2.0 ** -25, 2.0 ** -25 * 1.0001, 3 * 2.0 ** -26, 2.0 ** -14,
                      2.0 ** -14 - 2.0 ** -25, 1e-45, 3.4e38, 6e-8, 1.0, -1.0],
                     dtype=np.float32)
    return np.concatenate([edges, ties16, -ties16, ties16b, -ties16b, x]).astype(np.float32)


def plain_from_f32(rng, sizes):
    x = f32_edge_values(rng)
    with np.errstate(over="ignore"):
        h = x.astype(np.float16)
    sizes["quant_f16_from_f32.bin"] = write_fixture(
        "quant_f16_from_f32.bin", T.F16, h.view(np.uint8), h.astype(np.float32), source=x)
    raw = quants.quantize(x, T.BF16)
    expected = quants.dequantize(raw, T.BF16)
    sizes["quant_bf16_from_f32.bin"] = write_fixture(
        "quant_bf16_from_f32.bin", T.BF16, raw, expected, source=x)


def traits_table(sizes):
    lines = []
    for qtype, (bs, ts) in sorted(GGML_QUANT_SIZES.items(), key=lambda kv: int(kv[0])):
        lines.append("%d %s %d %d\n" % (int(qtype), qtype.name, bs, ts))
    path = os.path.join(OUT, "quant_traits.txt")
    with open(path, "w", newline="\n") as f:
        f.writelines(lines)
    sizes["quant_traits.txt"] = os.path.getsize(path)


def main():
    os.makedirs(OUT, exist_ok=True)
    rng = np.random.default_rng(20240531)
    sizes = {}
    block_fixtures(rng, sizes)
    plain16_fixtures(rng, sizes)
    q8_0_from_f32(rng, sizes)
    plain_from_f32(rng, sizes)
    traits_table(sizes)
    total = 0
    for name in sorted(sizes):
        print("wrote tests/fixtures/%s (%d bytes)" % (name, sizes[name]))
        total += sizes[name]
    print("total %d bytes" % total)
    assert total < 300 * 1024


if __name__ == "__main__":
    main()
