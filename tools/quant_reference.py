#!/usr/bin/env python3
# quant_reference.py - writes tests/data/quant_golden.bin: rows quantized and
# dequantized by the `gguf` Python package (pip install gguf numpy), the
# independent reference that tests/test_quant.c checks src/quant/ against.
#
# Run once from the repository root: python3 tools/quant_reference.py
#
# File layout (all little-endian):
#   header : char magic[8] = "TNNQGLD1", u32 n_records, u32 reserved (0)
#   record : u32 type        GGUF type id (0 F32, 1 F16, 2 Q4_0, ...)
#            u32 flags       bit 0: an f32 source is present (row quantized by
#                            gguf from it); else the blocks are random valid
#                            blocks built here
#            u32 rows, u32 n (elements per row; a multiple of the block size)
#            f32 src[rows*n]            only when flags & 1
#            u8  blocks[rows*row_bytes] gguf.quantize(src) or the random blocks
#            f32 deq[rows*n]            gguf.dequantize(blocks)
#            f32 x[n]                   a random activation vector
#            f64 dot[rows]              sum(deq[r] * x) in float64 (numpy)
import os
import struct
import sys

import numpy as np
import gguf
from gguf import GGMLQuantizationType as T
from gguf.constants import GGML_QUANT_SIZES

MAGIC = b"TNNQGLD1"

# Types gguf can quantize from f32 (byte-exact checks) and those it can only
# dequantize (random valid blocks).
QUANTIZABLE = [T.F32, T.F16, T.BF16, T.Q8_0, T.Q4_0, T.Q4_1, T.Q5_0, T.Q5_1]
DEQ_ONLY = [T.Q4_K, T.Q5_K, T.Q6_K, T.IQ4_NL, T.Q2_K, T.Q3_K, T.IQ4_XS]


def f16_bytes(rng, count, lo_exp=-14, hi_exp=2):
    """count finite f16 scales of random sign-positive magnitude, as bytes."""
    mag = np.exp2(rng.uniform(lo_exp, hi_exp, size=count)).astype(np.float16)
    return mag.view(np.uint8).reshape(count, 2)


def special_block(kind, bs, rng):
    """One block of f32 values exercising an edge of the rounding rules."""
    if kind == 0:  # all zero: d = 0, id = 0
        return np.zeros(bs, np.float32)
    if kind == 1:  # constant: Q4_1 max == min
        return np.full(bs, 0.375, np.float32)
    if kind == 2:  # ties: amax 127 -> Q8_0 d = 1 exactly; x*id at .5
        v = np.array([(i % 17) - 8.5 for i in range(bs)], np.float32)
        v[0] = -127.0
        v[1] = 127.0
        v[3] = 126.5
        v[5] = -0.5
        return v
    if kind == 3:  # ties for the 4-bit: max -8 -> Q4_0 d = 1
        v = np.array([((i * 5) % 16) - 7.5 for i in range(bs)], np.float32)
        v[2] = -8.0
        v[7] = 7.5
        return v
    if kind == 4:  # tiny values: d underflows to f16 subnormal or zero
        return (rng.standard_normal(bs) * 1e-6).astype(np.float32)
    if kind == 5:  # large values: min and max near the f16 range
        return (rng.standard_normal(bs) * 2e4).astype(np.float32)
    if kind == 6:  # |max| tie between a positive and a negative value
        v = rng.uniform(-1, 1, bs).astype(np.float32)
        v[4] = 2.0
        v[9] = -2.0
        return v
    if kind == 7:  # one outlier
        v = rng.uniform(-0.01, 0.01, bs).astype(np.float32)
        v[bs - 1] = 5.0
        return v
    raise ValueError(kind)


def float_source(qt, rows, n, rng):
    bs = GGML_QUANT_SIZES[qt][0]
    src = np.empty((rows, n), np.float32)
    for r in range(rows):
        scale = [1.0, 0.02, 40.0, 3.0][r % 4]
        src[r] = (rng.standard_normal(n) * scale).astype(np.float32)
    if qt in (T.F32, T.F16, T.BF16):
        # conversion edges: f16 subnormals, overflow, ties, inf, NaN (quiet)
        edge = np.array([0.0, -0.0, 1.0, -2.5, 65504.0, 65520.0, 65519.99, 1e6, -1e6,
                         6.1035156e-05, 5.9604645e-08, 2.9802322e-08, 2.9802326e-08,
                         1e-8, -3e-7, 1.00048828125, 1.0009765625 + 0.00048828125,
                         np.inf, -np.inf, np.nan, 3.3895314e38, 1.0039062, 1.01171875,
                         1.1754944e-38, 1e-40, -1e-45], np.float32)
        src[0, :len(edge)] = edge
    else:
        kinds = 8
        for k in range(min(kinds, n // bs)):
            src[0, k * bs:(k + 1) * bs] = special_block(k, bs, rng)
    return src


def random_kquant_blocks(qt, rows, n, rng):
    bs, ts = GGML_QUANT_SIZES[qt]
    nb = rows * n // bs
    blocks = rng.integers(0, 256, size=(nb, ts), dtype=np.uint8)
    if qt in (T.Q4_K, T.Q5_K):
        blocks[:, 0:2] = f16_bytes(rng, nb, -12, -4)  # d
        blocks[:, 2:4] = f16_bytes(rng, nb, -14, -6)  # dmin
    elif qt == T.Q6_K:
        blocks[:, ts - 2:ts] = f16_bytes(rng, nb, -12, -4)  # d (last)
    elif qt == T.Q2_K:
        blocks[:, 80:82] = f16_bytes(rng, nb, -12, -4)  # d
        blocks[:, 82:84] = f16_bytes(rng, nb, -14, -6)  # dmin
    elif qt == T.Q3_K:
        blocks[:, 108:110] = f16_bytes(rng, nb, -12, -4)  # d (last)
    else:  # IQ4_NL, IQ4_XS: d first
        blocks[:, 0:2] = f16_bytes(rng, nb, -12, -4)
    # one block with extreme codes: all bits set (the f16 fields kept)
    lo, hi = {T.Q6_K: (0, ts - 2), T.Q2_K: (0, 80), T.Q3_K: (0, 108),
              T.IQ4_NL: (2, ts), T.IQ4_XS: (2, ts)}.get(qt, (4, ts))
    blocks[0, lo:hi] = 0xFF
    return blocks.reshape(rows, n // bs * ts)


def main():
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = os.path.join(root, "tests", "data", "quant_golden.bin")
    rng = np.random.default_rng(20240611)
    records = []
    for qt in QUANTIZABLE + DEQ_ONLY:
        bs, ts = GGML_QUANT_SIZES[qt]
        if qt in DEQ_ONLY:
            rows, n = 3, 512
            src = None
            blocks = random_kquant_blocks(qt, rows, n, rng)
        else:
            rows, n = 4, 256
            src = float_source(qt, rows, n, rng)
            blocks = np.ascontiguousarray(gguf.quantize(src, qt)).view(np.uint8)
            blocks = blocks.reshape(rows, -1)
        assert blocks.shape == (rows, n // bs * ts), (qt, blocks.shape)
        deq = np.asarray(gguf.dequantize(blocks, qt), dtype=np.float32).reshape(rows, n)
        x = rng.standard_normal(n).astype(np.float32)
        finite = np.where(np.isfinite(deq), deq, 0).astype(np.float64)
        dot = finite @ x.astype(np.float64)
        rec = struct.pack("<4I", int(qt), 1 if src is not None else 0, rows, n)
        if src is not None:
            rec += src.astype("<f4").tobytes()
        rec += blocks.tobytes()
        rec += deq.astype("<f4").tobytes()
        rec += x.astype("<f4").tobytes()
        rec += dot.astype("<f8").tobytes()
        records.append(rec)
        print(f"{qt.name:5s} rows {rows} n {n} bytes {len(rec)}")
    data = MAGIC + struct.pack("<2I", len(records), 0) + b"".join(records)
    os.makedirs(os.path.dirname(out), exist_ok=True)
    with open(out, "wb") as f:
        f.write(data)
    ver = getattr(gguf, "__version__", None)
    if ver is None:
        try:
            from importlib.metadata import version
            ver = version("gguf")
        except Exception:
            ver = "?"
    print(f"wrote {out}: {len(data)} bytes (gguf {ver}, numpy {np.__version__})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
