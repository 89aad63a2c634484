#!/usr/bin/env python3
"""Writes tests/fixtures/qsim.bin: inputs and expected outputs of DeepSeek V4's
quantization round trips, computed with ml_dtypes' FP8 E4M3FN and FP4 E2M1
casts (round to nearest even) and the block-scale rules of model.md 2.4.3 and
2.4.6.  tests/test_qsim.c checks src/qsim.c against it bit for bit.

Format (little-endian): magic b"DS4QSIM1", u32 section count, then per
section: u32 kind (0 = FP8 blocks of 64, 1 = FP4 blocks of 32,
2 = Hadamard-128 then FP4), u32 n, n f32 inputs, n f32 expected outputs.
Deterministic: rerunning writes the same bytes.
"""
import os
import struct
import sys

import numpy as np
import ml_dtypes

F32 = np.float32
OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures", "qsim.bin")


def pow2_ceil(r):
    """2^ceil(log2(r)) exactly, for float32 r > 0."""
    m, e = np.frexp(F32(r))
    if m == 0.5:
        e -= 1
    return F32(np.ldexp(F32(1.0), int(e)))


def block_sim(v, block, maxval, floor_amax, dtype):
    v = v.astype(F32).copy()
    for b in range(0, len(v), block):
        blk = v[b:b + block]
        amax = max(F32(np.max(np.abs(blk))), F32(floor_amax))
        scale = pow2_ceil(F32(amax) / F32(maxval))
        s = np.clip(blk / scale, -F32(maxval), F32(maxval)).astype(F32)
        v[b:b + block] = s.astype(dtype).astype(F32) * scale
    return v


def fp8_sim(v):
    return block_sim(v, 64, 448.0, 1e-4, ml_dtypes.float8_e4m3fn)


def fp4_sim(v):
    return block_sim(v, 32, 6.0, 6.0 * 2.0 ** -126, ml_dtypes.float4_e2m1fn)


def hadamard(v):
    v = v.astype(F32).copy()
    n = len(v)
    h = 1
    while h < n:
        for i in range(0, n, 2 * h):
            a = v[i:i + h].copy()
            b = v[i + h:i + 2 * h].copy()
            v[i:i + h] = a + b
            v[i + h:i + 2 * h] = a - b
        h *= 2
    return (v * F32(n ** -0.5)).astype(F32)


def ties(rng, grid_steps, binades, block, maxval, dtype_max_code_value):
    """A block whose scale is fixed by one element at maxval*2^j and whose
    other elements sit exactly on rounding ties of the code grid."""
    j = int(rng.integers(-20, 10))
    scale = F32(2.0 ** j)
    vals = [F32(maxval) * scale]
    while len(vals) < block:
        e = int(rng.choice(binades))
        k = int(rng.integers(0, grid_steps))
        sign = F32(-1.0 if rng.random() < 0.5 else 1.0)
        t = F32((k + 0.5) * 2.0 ** e)  # halfway between two grid points
        if t < dtype_max_code_value:
            vals.append(sign * t * scale)
    return np.array(vals, dtype=F32)


def main():
    rng = np.random.default_rng(20261121)
    sections = []
    # FP8: Gaussian blocks at many magnitudes, zeros, tiny values, ties.
    fp8_in = []
    for mag in [1e-6, 1e-3, 0.05, 1.0, 30.0, 1e4]:
        fp8_in.append((rng.standard_normal(448) * mag).astype(F32))
    fp8_in.append(np.zeros(64, dtype=F32))
    fp8_in.append((rng.standard_normal(64) * 1e-9).astype(F32))
    for _ in range(8):
        # E4M3 binade [2^e, 2^(e+1)) has step 2^(e-3): ties at (k + .5) * 2^(e-3).
        fp8_in.append(ties(rng, 8, list(range(-9, 6)), 64, 448.0, 448.0))
    fp8_in = np.concatenate(fp8_in)
    sections.append((0, fp8_in, fp8_sim(fp8_in)))
    # FP4.
    fp4_in = []
    for mag in [1e-30, 1e-3, 1.0, 100.0]:
        fp4_in.append((rng.standard_normal(256) * mag).astype(F32))
    fp4_in.append(np.zeros(32, dtype=F32))
    for _ in range(8):
        fp4_in.append(ties(rng, 2, [-1, 0, 1], 32, 6.0, 6.0))
    fp4_in = np.concatenate(fp4_in)
    sections.append((1, fp4_in, fp4_sim(fp4_in)))
    # Hadamard-128 then FP4 (the indexer path), one 128-vector per "head".
    had_in = (rng.standard_normal(128 * 16) * 0.7).astype(F32)
    had_out = np.concatenate([fp4_sim(hadamard(had_in[i:i + 128])) for i in range(0, len(had_in), 128)])
    sections.append((2, had_in, had_out))

    os.makedirs(os.path.dirname(OUT), exist_ok=True)
    with open(OUT, "wb") as f:
        f.write(b"DS4QSIM1")
        f.write(struct.pack("<I", len(sections)))
        for kind, x, y in sections:
            f.write(struct.pack("<II", kind, len(x)))
            f.write(x.astype("<f4").tobytes())
            f.write(y.astype("<f4").tobytes())
    print(f"wrote {OUT} ({os.path.getsize(OUT)} bytes)", file=sys.stderr)


if __name__ == "__main__":
    main()
