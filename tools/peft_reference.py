#!/usr/bin/env python3
"""peft_reference.py - checks Hugging Face PEFT adapters end to end: a tiny
random model made with transformers, a random PEFT LoRA adapter of it
(the seven projections, the embeddings and, where the model has one, the
output matrix), both converted by llama.cpp's own converters
(convert_hf_to_gguf.py, convert_lora_to_gguf.py), then the logits of
tinynn (the base GGUF with tnn_llm_load_lora, and the adapter merged into
it by `tnn quantize BASE OUT f32 --lora ADAPTER`) against PyTorch's (the
PEFT model) on the same token ids, for llama and qwen2, tied and untied.

Nothing here is run by the suite; the peers stay outside the repository:
    pip install peft transformers torch
    pip download --no-deps --no-binary :all: llama-cpp-python   # the converters
    tar xzf llama_cpp_python-*.tar.gz
    make
    python3 tools/peft_reference.py build/libtinynn.so \\
        llama_cpp_python-*/vendor/llama.cpp

The converters need a tokenizer to write the base model; the tiny models
have none, so this script hands them a byte vocabulary of 259 tokens in the
SentencePiece layout (<unk>, <s>, </s>, <0x00> ... <0xFF>) instead.
"""
import ctypes
import os
import subprocess
import sys
import tempfile

import numpy as np
import torch

VOCAB, D, FF, LAYERS, HEADS, KV_HEADS, RANK = 259, 64, 128, 2, 4, 2, 4
PROMPT = [1, 70, 80, 90, 100, 33, 44, 200, 17, 5]


def byte_vocab(self):
    """set_vocab for the converters' model classes: the byte vocabulary."""
    import gguf
    toks = ["<unk>", "<s>", "</s>"] + [f"<0x{i:02X}>" for i in range(256)]
    types = [gguf.TokenType.UNKNOWN] + [gguf.TokenType.CONTROL] * 2 + \
        [gguf.TokenType.BYTE] * 256
    w = self.gguf_writer
    w.add_tokenizer_model("llama")
    w.add_tokenizer_pre("default")
    w.add_token_list(toks)
    w.add_token_scores([0.0] * VOCAB)
    w.add_token_types(types)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_unk_token_id(0)


def convert_base(llama_cpp, model_dir, out):
    """convert_hf_to_gguf.py on model_dir, run in this process with the byte
    vocabulary in place of a tokenizer."""
    sys.path[:0] = [llama_cpp, os.path.join(llama_cpp, "gguf-py")]
    import importlib
    conv = importlib.import_module("convert_hf_to_gguf")
    from conversion import llama as conv_llama, qwen as conv_qwen
    conv_llama.LlamaModel.set_vocab = byte_vocab
    for name in dir(conv_qwen):
        cls = getattr(conv_qwen, name)
        if isinstance(cls, type) and name.startswith("Qwen2Model"):
            cls.set_vocab = byte_vocab
    argv = sys.argv
    sys.argv = ["convert_hf_to_gguf.py", model_dir, "--outtype", "f32", "--outfile", out]
    try:
        conv.main()
    finally:
        sys.argv = argv


def make_models(kind, tied, d):
    """The base model and its PEFT adapter, saved in d; returns the PEFT
    model (PyTorch, f32) for the reference logits."""
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM
    torch.manual_seed(7)
    common = dict(vocab_size=VOCAB, hidden_size=D, intermediate_size=FF,
                  num_hidden_layers=LAYERS, num_attention_heads=HEADS,
                  num_key_value_heads=KV_HEADS, max_position_embeddings=256,
                  rms_norm_eps=1e-5, tie_word_embeddings=tied, bos_token_id=1,
                  eos_token_id=2, torch_dtype="float32")
    if kind == "qwen2":
        model = Qwen2ForCausalLM(Qwen2Config(rope_theta=1000000.0, **common))
    else:
        model = LlamaForCausalLM(LlamaConfig(rope_theta=10000.0, **common))
    with torch.no_grad():
        for p in model.parameters():  # weights of the scale of real ones
            p.normal_(0.0, 0.2 if p.dim() == 2 else 0.05)
            if p.dim() == 1 and p.numel() == D:
                p.add_(1.0)
    model.save_pretrained(os.path.join(d, "base"), safe_serialization=True)
    targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj",
               "embed_tokens"] + ([] if tied else ["lm_head"])
    peft = get_peft_model(model, LoraConfig(r=RANK, lora_alpha=2 * RANK,
                                            target_modules=targets, lora_dropout=0.0))
    with torch.no_grad():
        for n, p in peft.named_parameters():
            if "lora_" in n:
                p.uniform_(-0.3, 0.3)
    peft.save_pretrained(os.path.join(d, "adapter"), safe_serialization=True)
    return peft.eval()


def tinynn_logits(lib, base, adapter):
    lib.tnn_llm_open.restype = ctypes.c_void_p
    lib.tnn_llm_open.argtypes = [ctypes.c_char_p, ctypes.c_int32, ctypes.c_int32]
    lib.tnn_llm_load_lora.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_float]
    lib.tnn_llm_eval_logits.argtypes = [ctypes.c_void_p, ctypes.POINTER(ctypes.c_int32),
                                        ctypes.c_int32, ctypes.POINTER(ctypes.c_float)]
    lib.tnn_llm_close.argtypes = [ctypes.c_void_p]
    lib.tnn_last_error.restype = ctypes.c_char_p
    out = []
    for ad in (None, adapter) if adapter else (None,):
        m = lib.tnn_llm_open(base.encode(), 64, 2)  # TNN_LLM_KV_F32: all in f32
        if not m:
            sys.exit(f"tnn_llm_open: {lib.tnn_last_error().decode()}")
        if ad and lib.tnn_llm_load_lora(m, ad.encode(), 1.0) != 0:
            sys.exit(f"tnn_llm_load_lora: {lib.tnn_last_error().decode()}")
        toks = (ctypes.c_int32 * len(PROMPT))(*PROMPT)
        lg = np.zeros((len(PROMPT), VOCAB), dtype=np.float32)
        if lib.tnn_llm_eval_logits(m, toks, len(PROMPT),
                                   lg.ctypes.data_as(ctypes.POINTER(ctypes.c_float))) != 0:
            sys.exit(f"tnn_llm_eval_logits: {lib.tnn_last_error().decode()}")
        lib.tnn_llm_close(m)
        out.append(lg.astype(np.float64))
    return out


def main():
    lib = ctypes.CDLL(os.path.abspath(sys.argv[1]))
    tnn = os.path.join(os.path.dirname(os.path.abspath(sys.argv[1])), "tnn")
    llama_cpp = os.path.abspath(sys.argv[2])
    worst_all = 0.0
    for kind in ("llama", "qwen2"):
        for tied in (False, True):
            with tempfile.TemporaryDirectory() as d:
                peft = make_models(kind, tied, d)
                base, adapter = os.path.join(d, "base.gguf"), os.path.join(d, "adapter.gguf")
                convert_base(llama_cpp, os.path.join(d, "base"), base)
                subprocess.run([sys.executable, os.path.join(llama_cpp, "convert_lora_to_gguf.py"),
                                "--base", os.path.join(d, "base"), "--outtype", "f32",
                                "--outfile", adapter, os.path.join(d, "adapter")],
                               check=True, capture_output=True)
                ids = torch.tensor([PROMPT])
                with torch.no_grad():
                    want = peft(ids).logits[0].double().numpy()
                    with peft.disable_adapter():
                        want_base = peft(ids).logits[0].double().numpy()
                got_base, got = tinynn_logits(lib, base, adapter)
                merged = os.path.join(d, "merged.gguf")  # tnn quantize --lora
                subprocess.run([tnn, "quantize", base, merged, "f32", "--lora", adapter],
                               check=True, capture_output=True)
                got_merged = tinynn_logits(lib, merged, None)[0]
                worst = max(np.abs(got - want).max(), np.abs(got_merged - want).max())
                worst_all = max(worst_all, worst)
                print(f"{kind} {'tied' if tied else 'untied'}: base within "
                      f"{np.abs(got_base - want_base).max():.2g} of PyTorch's; with the PEFT "
                      f"adapter (at run time, and merged by tnn quantize --lora) within "
                      f"{worst:.2g} (the adapter moves logits by up to "
                      f"{np.abs(want - want_base).max():.2f}); argmax equal at every position: "
                      f"{bool((got.argmax(1) == want.argmax(1)).all())}")
    print(f"worst difference with the adapter {worst_all:.2g}")
    return 0 if worst_all < 1e-4 else 1


if __name__ == "__main__":
    sys.exit(main())
