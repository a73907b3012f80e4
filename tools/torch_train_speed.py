#!/usr/bin/env python3
# torch_train_speed.py - the peer of `bench_train --cuda`: the same llama-style transformer
# (src/llm/model.c: RMSNorm, RoPE, causal attention with all heads as KV heads, SwiGLU with
# d_ff = 8C/3 rounded up to 8, tied embeddings) trained with AdamW on random tokens in PyTorch
# on the GPU, float32, fused AdamW, scaled_dot_product_attention. Prints tokens/s as
# "best / median". PyTorch is not a dependency of tinynn: this only runs where it is
# installed (the GPU machine). Usage: torch_train_speed.py L C H V B T steps
import statistics
import sys
import time

import torch
import torch.nn.functional as F


def main():
    L, C, H, V, B, T, steps = (int(a) for a in sys.argv[1:8])
    dev = "cuda"
    torch.manual_seed(1)
    ff = (8 * C // 3 + 7) // 8 * 8
    hd = C // H

    def mat(o, i):
        return (torch.randn(o, i, device=dev) * 0.02).requires_grad_()

    emb = mat(V, C)
    layers = [dict(n1=torch.ones(C, device=dev, requires_grad=True), q=mat(C, C), k=mat(C, C),
                   v=mat(C, C), o=mat(C, C), n2=torch.ones(C, device=dev, requires_grad=True),
                   g=mat(ff, C), u=mat(ff, C), d=mat(C, ff)) for _ in range(L)]
    nf = torch.ones(C, device=dev, requires_grad=True)
    params = [emb, nf] + [p for l in layers for p in l.values()]
    opt = torch.optim.AdamW(params, lr=1e-4, fused=True)
    inv = 1.0 / (10000.0 ** (torch.arange(0, hd, 2, device=dev).float() / hd))
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
            k = rope((h @ l["k"].T).view(B, T, H, hd).transpose(1, 2))
            v = (h @ l["v"].T).view(B, T, H, hd).transpose(1, 2)
            a = F.scaled_dot_product_attention(q, k, v, is_causal=True)
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
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        step(tok, tgt)
        torch.cuda.synchronize()
        if s > 0:
            times.append(time.perf_counter() - t0)
    n = B * T
    print("%.1f / %.1f tokens/s (best / median of %d steps, torch %s, %s)"
          % (n / min(times), n / statistics.median(times), steps, torch.__version__,
             torch.cuda.get_device_name()))


if __name__ == "__main__":
    main()
