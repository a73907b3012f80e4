#!/usr/bin/env python3
# torch_train_speed.py - the peer of `bench_train --cuda` (and of its SmolLM2-shaped config on
# the CPU): the same llama-style transformer (src/llm/model.c: RMSNorm, RoPE, causal attention
# with KV heads, SwiGLU with d_ff = 8C/3 rounded up to 8 unless given, tied embeddings) trained
# with AdamW on random tokens in PyTorch, float32, fused AdamW (foreach on the CPU),
# scaled_dot_product_attention, gradient clipping. Prints tokens/s as "best / median".
# PyTorch is not a dependency of tinynn: this only runs where it is installed.
# Usage: torch_train_speed.py L C H V B T steps [KV FF BASE DEVICE THREADS]
# (KV heads, default H; FF, default 8C/3; RoPE base, default 10000; cuda or cpu, default cuda;
# CPU threads, default all)
import statistics
import sys
import time

import torch
import torch.nn.functional as F


def main():
    L, C, H, V, B, T, steps = (int(a) for a in sys.argv[1:8])
    extra = sys.argv[8:]
    KV = int(extra[0]) if len(extra) > 0 else H
    ff = int(extra[1]) if len(extra) > 1 else (8 * C // 3 + 7) // 8 * 8
    base = float(extra[2]) if len(extra) > 2 else 10000.0
    dev = extra[3] if len(extra) > 3 else "cuda"
    if len(extra) > 4:
        torch.set_num_threads(int(extra[4]))
    cuda = dev == "cuda"
    torch.manual_seed(1)
    hd = C // H

    def mat(o, i):
        return (torch.randn(o, i, device=dev) * 0.02).requires_grad_()

    emb = mat(V, C)
    layers = [dict(n1=torch.ones(C, device=dev, requires_grad=True), q=mat(C, C),
                   k=mat(KV * hd, C), v=mat(KV * hd, C), o=mat(C, C),
                   n2=torch.ones(C, device=dev, requires_grad=True),
                   g=mat(ff, C), u=mat(ff, C), d=mat(C, ff)) for _ in range(L)]
    nf = torch.ones(C, device=dev, requires_grad=True)
    params = [emb, nf] + [p for l in layers for p in l.values()]
    opt = torch.optim.AdamW(params, lr=1e-4, fused=cuda, foreach=not cuda)
    inv = 1.0 / (base ** (torch.arange(0, hd, 2, device=dev).float() / hd))
    ang = torch.arange(T, device=dev).float()[:, None] * inv[None, :]
    cos, sin = ang.cos(), ang.sin()

    def rope(x):  # (B, H, T, hd), adjacent pairs
        a, b = x[..., 0::2], x[..., 1::2]
        return torch.stack((a * cos - b * sin, a * sin + b * cos), -1).flatten(-2)

    def rms(x, g):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-5) * g

    def step(tok, tgt):
        x = emb[tok]
        for l in layers:
            h = rms(x, l["n1"])
            q = rope((h @ l["q"].T).view(B, T, H, hd).transpose(1, 2))
            k = rope((h @ l["k"].T).view(B, T, KV, hd).transpose(1, 2))
            v = (h @ l["v"].T).view(B, T, KV, hd).transpose(1, 2)
            a = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=KV != H)
            x = x + a.transpose(1, 2).reshape(B, T, C) @ l["o"].T
            h = rms(x, l["n2"])
            x = x + (F.silu(h @ l["g"].T) * (h @ l["u"].T)) @ l["d"].T
        loss = F.cross_entropy((rms(x, nf) @ emb.T).view(B * T, V), tgt.view(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        return loss.item()

    times = []
    for s in range(steps + 1):
        tok = torch.randint(0, V, (B, T), device=dev)
        tgt = torch.randint(0, V, (B, T), device=dev)
        if cuda:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        step(tok, tgt)
        if cuda:
            torch.cuda.synchronize()
        if s > 0:
            times.append(time.perf_counter() - t0)
    n = B * T
    where = torch.cuda.get_device_name() if cuda else "CPU, %d threads" % torch.get_num_threads()
    print("%.1f / %.1f tokens/s (best / median of %d steps, torch %s, %s)"
          % (n / min(times), n / statistics.median(times), steps, torch.__version__, where))


if __name__ == "__main__":
    main()
