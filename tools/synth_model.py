#!/usr/bin/env python3
"""synth_model.py - a llama-shaped GGUF model with random weights, for speed
comparisons at widths the shipped SmolLM2 file does not have (its 576-wide
rows are not a multiple of 256, so llama.cpp's K-quant presets fall back to
32-element types there). Numbers from it mean nothing as text; the shapes
and the weight formats are what count.

    python3 tools/synth_model.py SmolLM2.gguf out.gguf [--dim 2048 --ff 5632
        --layers 6 --heads 32 --kv-heads 4] [--quantize q4_k_m,q6_k,...]

The tokenizer (and vocabulary size) comes from the first file; the weights
are N(0, 0.02) in f32 (norms 1). --quantize also writes out-<type>.gguf for
each type through llama.cpp's quantizer (llama-cpp-python, pip, built
outside this repository): the files llama.cpp users download.
"""
import argparse
import ctypes

import numpy as np
import gguf

FTYPES = {"q4_0": 2, "q8_0": 7, "q2_k": 10, "q3_k_m": 12, "q4_k_m": 15, "q5_k_m": 17,
          "q6_k": 18, "iq4_xs": 30}


def strings(field):
    return [bytes(field.parts[i]).decode("utf-8", "replace") for i in field.data]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("tokenizer_from")
    ap.add_argument("out")
    ap.add_argument("--dim", type=int, default=2048)
    ap.add_argument("--ff", type=int, default=5632)
    ap.add_argument("--layers", type=int, default=6)
    ap.add_argument("--heads", type=int, default=32)
    ap.add_argument("--kv-heads", type=int, default=4)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--quantize", default="")
    a = ap.parse_args()
    src = gguf.GGUFReader(a.tokenizer_from)
    tokens = strings(src.fields["tokenizer.ggml.tokens"])
    D, F, L, H, KV, V = a.dim, a.ff, a.layers, a.heads, a.kv_heads, len(tokens)
    hd = D // H
    w = gguf.GGUFWriter(a.out, "llama")
    w.add_name("synthetic")
    w.add_block_count(L)
    w.add_context_length(4096)
    w.add_embedding_length(D)
    w.add_feed_forward_length(F)
    w.add_head_count(H)
    w.add_head_count_kv(KV)
    w.add_rope_freq_base(10000.0)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_vocab_size(V)
    w.add_rope_dimension_count(hd)
    w.add_tokenizer_model(bytes(src.fields["tokenizer.ggml.model"].parts[-1]).decode())
    if "tokenizer.ggml.pre" in src.fields:
        w.add_tokenizer_pre(bytes(src.fields["tokenizer.ggml.pre"].parts[-1]).decode())
    w.add_token_list(tokens)
    f = src.fields["tokenizer.ggml.token_type"]
    w.add_token_types([int(f.parts[i][0]) for i in f.data])
    if "tokenizer.ggml.merges" in src.fields:
        w.add_token_merges(strings(src.fields["tokenizer.ggml.merges"]))
    w.add_bos_token_id(int(src.fields["tokenizer.ggml.bos_token_id"].parts[-1][0]))
    w.add_eos_token_id(int(src.fields["tokenizer.ggml.eos_token_id"].parts[-1][0]))
    w.add_add_bos_token(False)
    rng = np.random.default_rng(a.seed)

    def rand(name, shape):
        w.add_tensor(name, (rng.standard_normal(shape, dtype=np.float32) * 0.02))

    rand("token_embd.weight", (V, D))
    for l in range(L):
        p = f"blk.{l}."
        w.add_tensor(p + "attn_norm.weight", np.ones(D, np.float32))
        w.add_tensor(p + "ffn_norm.weight", np.ones(D, np.float32))
        rand(p + "attn_q.weight", (D, D))
        rand(p + "attn_k.weight", (hd * KV, D))
        rand(p + "attn_v.weight", (hd * KV, D))
        rand(p + "attn_output.weight", (D, D))
        rand(p + "ffn_gate.weight", (F, D))
        rand(p + "ffn_up.weight", (F, D))
        rand(p + "ffn_down.weight", (D, F))
    w.add_tensor("output_norm.weight", np.ones(D, np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    for t in filter(None, a.quantize.split(",")):
        import llama_cpp  # only for --quantize
        qp = llama_cpp.llama_model_quantize_default_params()
        qp.ftype = FTYPES[t]
        qp.nthread = 2
        out = a.out[:-5] + f"-{t}.gguf" if a.out.endswith(".gguf") else a.out + f"-{t}"
        rc = llama_cpp.llama_model_quantize(a.out.encode(), out.encode(), ctypes.byref(qp))
        print(f"{out}: {'written' if rc == 0 else f'failed ({rc})'}")


if __name__ == "__main__":
    main()
