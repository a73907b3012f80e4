#!/usr/bin/env python3
"""lora_reference.py - checks a tinynn LoRA adapter (tnn lora-export) in
llama.cpp, through llama-cpp-python (pip, built outside this repository):
the base model with the adapter applied by llama.cpp against the merged
model the same run wrote (tnn quantize CKPT MERGED.gguf f32, which drops
the factors), both run by llama.cpp: the last position's logits on each
prompt and the greedy continuation.
    python3 tools/lora_reference.py BASE.gguf ADAPTER.gguf MERGED.gguf "prompt" ...
"""
import sys
import numpy as np
from llama_cpp import Llama

base, adapter, merged = sys.argv[1:4]
prompts = sys.argv[4:] or ["Zorblax is the capital of"]


def run(llm, prompt, n=16):
    toks = llm.tokenize(prompt.encode(), add_bos=False)
    llm.reset()
    llm.eval(toks)
    logits = np.array(llm.scores[llm.n_tokens - 1], dtype=np.float64)
    out = []
    for _ in range(n):
        t = int(np.argmax(llm.scores[llm.n_tokens - 1]))
        if t == llm.token_eos():
            break
        out.append(t)
        llm.eval([t])
    return logits, llm.detokenize(out).decode(errors="replace")


kw = dict(n_ctx=256, n_threads=2, logits_all=True, verbose=False)
with_adapter = Llama(model_path=base, lora_path=adapter, **kw)
whole = Llama(model_path=merged, **kw)
plain = Llama(model_path=base, **kw)
for p in prompts:
    la, ta = run(with_adapter, p)
    lm, tm = run(whole, p)
    lb, tb = run(plain, p)
    print(f"prompt {p!r}")
    print(f"  base + adapter: {ta!r}")
    print(f"  merged model:   {tm!r}")
    print(f"  base alone:     {tb!r}")
    print(f"  max |logit difference| adapter vs merged {np.max(np.abs(la - lm)):.4f}, "
          f"base vs merged {np.max(np.abs(lb - lm)):.4f}; argmax equal: {np.argmax(la) == np.argmax(lm)}")
