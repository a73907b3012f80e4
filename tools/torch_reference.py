#!/usr/bin/env python3
# torch_reference.py - writes tests/data/parity_tiny.bin, the PyTorch golden file that
# tests/test_parity.c matches: the tinynn transformer (src/llm/model.c) rebuilt in PyTorch
# on a tiny config with closed-form weights and batch; logits, loss, gradients, 5 AdamW steps.
#
# Run once (PyTorch is NOT needed by the tests; the output file is committed):
#     python3 -m venv /tmp/torchenv && /tmp/torchenv/bin/pip install torch numpy
#     /tmp/torchenv/bin/python tools/torch_reference.py [out.bin]
# The committed file was written with torch 2.15.0+cu132 (the PyPI wheel, run on the CPU in
# float32), numpy 2.4.6, Python 3.11.7; rerunning it gives the same bytes.
#
# The model (model.c's forward, float32, CPU):
#     x = tok_emb[tokens]
#     per layer: h = rms(x) g1; q, k = rope(h Wq^T), rope(h Wk^T); v = h Wv^T
#                x += attention(q, k, v) Wo^T
#                h = rms(x) g2; x += (silu(h Wg^T) * (h Wu^T)) Wd^T
#     logits = (rms(x) gf) tok_emb^T;  loss = mean cross-entropy over the B*T rows
# rms(x) = x / sqrt(mean(x^2) + eps); rope mode 0 rotates adjacent pairs (2i, 2i+1) of each
# head by pos * base^(-2i/hd); attention is causal softmax(q k^T / sqrt(hd)) v, query head h
# reading kv head h // (n_head / n_kv_head). Linear weights are (out, in) as in nn.Linear.
#
# Config: vocab 256, d_model 64, n_layer 2, n_head 4, n_kv_head 2, d_ff 172, seq_len = T = 32,
# batch B = 2, rope_base 10000, norm_eps 1e-5.
#
# Weights (regenerated exactly by the C test, no libm involved). Parameters are numbered
# p = 0, 1, ... in lm_params_each order: token_embd, then per layer attn_norm, attn_q, attn_k,
# attn_v, attn_output, ffn_norm, ffn_gate, ffn_up, ffn_down, then output_norm. Element i
# (flat, row-major) of parameter p:
#     h = mix32((i + 0x9E3779B9 * (p + 1)) mod 2^32)     (murmur3's fmix32)
#     s = (h >> 8) / 2^23 - 1                             (in [-1, 1), exact in float32)
#     norm gains: float32(1 + 0.125 s)  (computed in float64, rounded)
#     token_embd: 0.5 s;  ffn_down: 0.125 s;  every other matrix: 0.25 s   (exact)
# Batch: for sequence b and position t in 0..T, a[b][t] = mix32((t + 0x9E3779B9*(1000+b+1))
# mod 2^32) % vocab; tokens[b*T + t] = a[b][t], targets[b*T + t] = a[b][t+1].
#
# Training: torch.optim.AdamW, lr 1e-3, betas (0.9, 0.95), eps 1e-8, weight_decay 0.1 for the
# matrices and 0 for the norm gains (two param groups), torch.nn.utils.clip_grad_norm_ 1.0
# before each step. losses[k] is the loss computed before step k+1 (losses[0] == loss).
#
# File layout (little-endian):
#     char    magic[8] = "TNNPAR01"
#     int32   header[12] = {version 1, vocab, d_model, n_layer, n_head, n_kv_head, d_ff, T, B,
#                           n_params, n_steps (5), has_final_params (1)}
#     int32   nelem[n_params]            element count of each parameter, lm_params_each order
#     int32   tokens[B*T], targets[B*T]
#     float32 logits[B*T*vocab]          at the initial weights, row r = b*T + t
#     float32 loss
#     float32 grads[sum nelem]           d loss / d parameter at the initial weights, unclipped,
#                                        parameters concatenated in lm_params_each order
#     float32 losses[n_steps]
#     float32 params[sum nelem]          the parameters after the n_steps AdamW steps
import struct
import sys

import numpy as np
import torch

VOCAB, D, N_LAYER, N_HEAD, N_KV, D_FF = 256, 64, 2, 4, 2, 172
T, B, ROPE_BASE, EPS = 32, 2, 10000.0, 1e-5
LR, BETAS, ADAM_EPS, WD, CLIP, N_STEPS = 1e-3, (0.9, 0.95), 1e-8, 0.1, 1.0, 5
HD = D // N_HEAD
LAYER_ITEMS = ["attn_norm", "attn_q", "attn_k", "attn_v", "attn_output", "ffn_norm",
               "ffn_gate", "ffn_up", "ffn_down"]
M32 = 0xFFFFFFFF


def mix32(i, p):
    """murmur3 fmix32 of (i + 0x9E3779B9 (p+1)) mod 2^32, for a numpy int array i."""
    x = (i.astype(np.uint64) + np.uint64((0x9E3779B9 * (p + 1)) & M32)) & np.uint64(M32)
    x ^= x >> np.uint64(16)
    x = (x * np.uint64(0x85EBCA6B)) & np.uint64(M32)
    x ^= x >> np.uint64(13)
    x = (x * np.uint64(0xC2B2AE35)) & np.uint64(M32)
    x ^= x >> np.uint64(16)
    return x


def param_shapes():
    """(name, shape) in lm_params_each order."""
    kv = N_KV * HD
    out = [("token_embd.weight", (VOCAB, D))]
    shapes = {"attn_norm": (D,), "attn_q": (N_HEAD * HD, D), "attn_k": (kv, D),
              "attn_v": (kv, D), "attn_output": (D, N_HEAD * HD), "ffn_norm": (D,),
              "ffn_gate": (D_FF, D), "ffn_up": (D_FF, D), "ffn_down": (D, D_FF)}
    for l in range(N_LAYER):
        out += [(f"blk.{l}.{n}.weight", shapes[n]) for n in LAYER_ITEMS]
    out.append(("output_norm.weight", (D,)))
    return out


def init_value(p, name, shape):
    n = int(np.prod(shape))
    s = (mix32(np.arange(n), p) >> np.uint64(8)).astype(np.float64) / 2.0**23 - 1.0
    if "norm" in name:
        w = 1.0 + 0.125 * s
    elif name.startswith("token_embd"):
        w = 0.5 * s
    elif "ffn_down" in name:
        w = 0.125 * s
    else:
        w = 0.25 * s
    return torch.from_numpy(w.astype(np.float32).reshape(shape))


def batch():
    a = np.stack([mix32(np.arange(T + 1), 1000 + b) % VOCAB for b in range(B)]).astype(np.int64)
    return torch.from_numpy(a[:, :T].reshape(-1).copy()), torch.from_numpy(a[:, 1:].reshape(-1).copy())


def rms(x, g):
    return x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + EPS) * g


def rope_tables():
    # angles in float64, cos/sin rounded to float32 (as the C kernel does)
    pos = np.arange(T, dtype=np.float64)[:, None]
    inv = ROPE_BASE ** (-2.0 * np.arange(HD // 2, dtype=np.float64) / HD)
    th = pos * inv[None, :]
    return (torch.from_numpy(np.cos(th).astype(np.float32)),
            torch.from_numpy(np.sin(th).astype(np.float32)))


COS, SIN = rope_tables()


def rope(x, n_head):
    """x (B*T, n_head*HD): rotate adjacent pairs (2i, 2i+1) of each head."""
    x = x.view(B, T, n_head, HD // 2, 2)
    x0, x1 = x[..., 0], x[..., 1]
    c, s = COS[None, :, None, :], SIN[None, :, None, :]
    return torch.stack([x0 * c - x1 * s, x0 * s + x1 * c], dim=-1).reshape(B * T, n_head * HD)


def attention(q, k, v):
    q = q.view(B, T, N_HEAD, HD).transpose(1, 2)
    k = k.view(B, T, N_KV, HD).transpose(1, 2).repeat_interleave(N_HEAD // N_KV, dim=1)
    v = v.view(B, T, N_KV, HD).transpose(1, 2).repeat_interleave(N_HEAD // N_KV, dim=1)
    sc = (q @ k.transpose(-1, -2)) / HD**0.5
    mask = torch.ones(T, T, dtype=torch.bool).tril()
    sc = sc.masked_fill(~mask, float("-inf"))
    a = torch.softmax(sc, dim=-1) @ v
    return a.transpose(1, 2).reshape(B * T, N_HEAD * HD)


def forward(P, tokens):
    x = P["token_embd.weight"][tokens]
    for l in range(N_LAYER):
        W = lambda n: P[f"blk.{l}.{n}.weight"]
        h = rms(x, W("attn_norm"))
        q = rope(h @ W("attn_q").t(), N_HEAD)
        k = rope(h @ W("attn_k").t(), N_KV)
        v = h @ W("attn_v").t()
        x = x + attention(q, k, v) @ W("attn_output").t()
        h = rms(x, W("ffn_norm"))
        f = torch.nn.functional.silu(h @ W("ffn_gate").t()) * (h @ W("ffn_up").t())
        x = x + f @ W("ffn_down").t()
    x = rms(x, P["output_norm.weight"])
    return x @ P["token_embd.weight"].t()


def main():
    out_path = sys.argv[1] if len(sys.argv) > 1 else "tests/data/parity_tiny.bin"
    torch.manual_seed(0)
    torch.set_num_threads(1)
    names = param_shapes()
    P = {}
    for p, (name, shape) in enumerate(names):
        P[name] = init_value(p, name, shape).requires_grad_(True)
    params = [P[n] for n, _ in names]
    tokens, targets = batch()
    decay = [P[n] for n, _ in names if "norm" not in n]
    no_decay = [P[n] for n, _ in names if "norm" in n]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": WD},
                             {"params": no_decay, "weight_decay": 0.0}],
                            lr=LR, betas=BETAS, eps=ADAM_EPS, foreach=False)
    losses = []
    for step in range(N_STEPS):
        opt.zero_grad(set_to_none=True)
        logits = forward(P, tokens)
        loss = torch.nn.functional.cross_entropy(logits, targets)
        loss.backward()
        if step == 0:
            logits0 = logits.detach().clone()
            loss0 = loss.detach().clone()
            grads0 = [t.grad.detach().clone() for t in params]
        norm = torch.nn.utils.clip_grad_norm_(params, CLIP)
        losses.append(loss.item())
        print(f"step {step}: loss {loss.item():.7f}, grad norm {norm.item():.5f}")
        opt.step()

    with open(out_path, "wb") as f:
        f.write(b"TNNPAR01")
        f.write(struct.pack("<12i", 1, VOCAB, D, N_LAYER, N_HEAD, N_KV, D_FF, T, B, len(names),
                            N_STEPS, 1))
        f.write(np.array([int(np.prod(s)) for _, s in names], dtype="<i4").tobytes())
        f.write(tokens.numpy().astype("<i4").tobytes())
        f.write(targets.numpy().astype("<i4").tobytes())
        f.write(logits0.numpy().astype("<f4").tobytes())
        f.write(np.array([loss0.item()], dtype="<f4").tobytes())
        for g in grads0:
            f.write(g.numpy().astype("<f4").reshape(-1).tobytes())
        f.write(np.array(losses, dtype="<f4").tobytes())
        for t in params:
            f.write(t.detach().numpy().astype("<f4").reshape(-1).tobytes())
    print(f"wrote {out_path} (torch {torch.__version__}, logits std "
          f"{logits0.std().item():.4f}, loss {loss0.item():.6f})")


if __name__ == "__main__":
    main()
