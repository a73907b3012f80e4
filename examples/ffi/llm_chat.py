#!/usr/bin/env python3
"""llm_chat.py - a GGUF language model driven from Python through ctypes.

Binds the language-model functions of tinynn.h (tnn_llm_*, tnn_sampler_*,
tnn_trainer_*) with nothing but the standard library, then holds a two-turn
conversation with the model: the chat template applied by the library, the
answer streamed through a callback, the second turn computing only what the
cache does not already hold; and trains a small model on the model's tokens
(train()), whose checkpoint then opens as a model, and a LoRA update of the
model itself (QLoRA: on its quantized weights), whose adapter file
(tnn_lora_export) it then applies
(tnn_llm_load_lora). Along the way it checks
what an FFI caller relies on: the text round-trips through the tokenizer,
errors come back as a status or NULL plus tnn_last_error(), never a crash.

Usage:  python3 examples/ffi/llm_chat.py path/to/libtinynn.so MODEL.gguf [question]

Prints the conversation, one line per failed check, then
"ffi_llm: N passed, N failed"; the exit status is non-zero when a check
failed, 77 (skipped) when the model file is absent. CI runs it as the ctest
test `ffi_llm` on SmolLM2-135M-Instruct (`make models`).
"""

import ctypes
import os
import sys
from ctypes import (CFUNCTYPE, POINTER, c_char_p, c_double, c_int, c_int32, c_int64,
                    c_size_t, c_uint64, c_void_p)

PTR = c_void_p  # a model or a sampler
I32P = POINTER(c_int32)
TEXT_FN = CFUNCTYPE(c_int, c_void_p, c_size_t, c_void_p)  # (text bytes, length, user)

SIGNATURES = {
    "tnn_last_error": (c_char_p, []),
    "tnn_status_name": (c_char_p, [c_int]),
    "tnn_llm_open": (PTR, [c_char_p, c_int32, c_int32]),
    "tnn_llm_close": (None, [PTR]),
    "tnn_llm_n_vocab": (c_int32, [PTR]),
    "tnn_llm_n_ctx": (c_int32, [PTR]),
    "tnn_llm_arch": (c_char_p, [PTR]),
    "tnn_llm_pos": (c_int32, [PTR]),
    "tnn_llm_rewind": (c_int, [PTR, c_int32]),
    "tnn_llm_eval": (c_int, [PTR, I32P, c_int32, POINTER(ctypes.c_float)]),
    "tnn_llm_tokenize": (c_int32, [PTR, c_char_p, c_size_t, c_int32, I32P, c_int32]),
    "tnn_llm_detokenize": (c_int64, [PTR, I32P, c_size_t, c_int32, c_char_p, c_size_t]),
    "tnn_llm_token_is_eog": (c_int, [PTR, c_int32]),
    "tnn_llm_chat_format": (c_int64, [PTR, c_char_p, POINTER(c_char_p), POINTER(c_char_p),
                                      c_int32, c_int32, c_char_p, c_size_t]),
    "tnn_sampler_new": (PTR, [c_double, c_int32, c_double, c_double, c_double, c_uint64]),
    "tnn_sampler_free": (None, [PTR]),
    "tnn_llm_generate": (c_int64, [PTR, PTR, c_char_p, c_int32, c_int32, TEXT_FN, c_void_p,
                                   c_char_p, c_size_t]),
    "tnn_llm_last_stats": (c_int, [PTR, I32P, I32P, POINTER(c_double), POINTER(c_double)]),
    "tnn_trainer_new": (PTR, []),
    "tnn_trainer_free": (None, [PTR]),
    "tnn_trainer_set": (c_int, [PTR, c_char_p, c_char_p]),
    "tnn_trainer_run": (c_int, [PTR, TEXT_FN, c_void_p]),
    "tnn_trainer_result": (c_int, [PTR, I32P] + [POINTER(c_double)] * 5),
    "tnn_lora_export": (c_int, [c_char_p, c_char_p]),
    "tnn_llm_load_lora": (c_int, [PTR, c_char_p, ctypes.c_float]),
}

TOK_ADD_SPECIAL, TOK_PARSE_SPECIAL = 1, 2
GEN_CHAT, GEN_REUSE = 1, 2


def load_library(path):
    lib = ctypes.CDLL(os.path.abspath(path) if os.path.exists(path) else path)
    for name, (res, args) in SIGNATURES.items():
        fn = getattr(lib, name)
        fn.restype, fn.argtypes = res, args
    return lib


class Model:
    """A model, its sampler and the conversation so far."""

    def __init__(self, lib, path, n_ctx=0, temperature=0.0, seed=1):
        self.lib = lib
        self.m = lib.tnn_llm_open(path.encode(), n_ctx, 0)
        if not self.m:
            raise RuntimeError(lib.tnn_last_error().decode())
        self.sampler = lib.tnn_sampler_new(temperature, 40, 0.95, 0.05, 1.0, seed)
        self.messages = []

    def close(self):
        self.lib.tnn_sampler_free(self.sampler)
        self.lib.tnn_llm_close(self.m)

    def tokenize(self, text, flags=TOK_ADD_SPECIAL | TOK_PARSE_SPECIAL):
        b = text.encode()
        n = self.lib.tnn_llm_tokenize(self.m, b, len(b), flags, None, 0)
        if n < 0:
            raise RuntimeError(self.lib.tnn_last_error().decode())
        ids = (c_int32 * n)()
        self.lib.tnn_llm_tokenize(self.m, b, len(b), flags, ids, n)
        return list(ids)

    def detokenize(self, ids):
        arr = (c_int32 * len(ids))(*ids)
        n = self.lib.tnn_llm_detokenize(self.m, arr, len(ids), 0, None, 0)
        buf = ctypes.create_string_buffer(n + 1)
        self.lib.tnn_llm_detokenize(self.m, arr, len(ids), 0, buf, n + 1)
        return buf.raw[:n].decode("utf-8", "replace")

    def chat_text(self):
        n = len(self.messages)
        roles = (c_char_p * n)(*[r.encode() for r, _ in self.messages])
        texts = (c_char_p * n)(*[t.encode() for _, t in self.messages])
        need = self.lib.tnn_llm_chat_format(self.m, None, roles, texts, n, 1, None, 0)
        if need < 0:
            raise RuntimeError(self.lib.tnn_last_error().decode())
        buf = ctypes.create_string_buffer(need + 1)
        self.lib.tnn_llm_chat_format(self.m, None, roles, texts, n, 1, buf, need + 1)
        return buf.value.decode()

    def ask(self, question, max_tokens=96, stream=None):
        """One turn: the whole conversation goes in; the cache keeps what it
        already holds, so only the new turn is computed."""
        self.messages.append(("user", question))
        pieces = []

        def on_text(ptr, length, _user):
            piece = ctypes.string_at(ptr, length).decode()  # whole UTF-8 characters
            pieces.append(piece)
            if stream:
                stream(piece)
            return 0

        cb = TEXT_FN(on_text)  # kept alive for the call
        r = self.lib.tnn_llm_generate(self.m, self.sampler, self.chat_text().encode(),
                                      max_tokens, GEN_REUSE, cb, None, None, 0)
        if r < 0:
            raise RuntimeError(self.lib.tnn_last_error().decode())
        answer = "".join(pieces)
        self.messages.append(("assistant", answer))
        return answer

    def last_stats(self):
        npr, ngen = c_int32(), c_int32()
        ps, gs = c_double(), c_double()
        self.lib.tnn_llm_last_stats(self.m, npr, ngen, ps, gs)
        return npr.value, ngen.value, ps.value, gs.value


def train(lib, data, on_log=None, **options):
    """tnn train in a call: options by name (steps=2000, checkpoint="run.gguf",
    tokenizer="model.gguf", ...); the progress lines go to on_log. Returns
    the run's figures."""
    t = lib.tnn_trainer_new()
    try:
        for f in data:
            lib.tnn_trainer_set(t, b"data", f.encode())
        for k, v in options.items():
            if lib.tnn_trainer_set(t, k.replace("_", "-").encode(), str(v).encode()) < 0:
                raise RuntimeError(lib.tnn_last_error().decode())
        cb = TEXT_FN(lambda p, n, _u: (on_log and on_log(ctypes.string_at(p, n).decode()), 0)[1])
        if lib.tnn_trainer_run(t, cb, None) < 0:
            raise RuntimeError(lib.tnn_last_error().decode())
        steps = c_int32()
        vals = [c_double() for _ in range(5)]
        lib.tnn_trainer_result(t, steps, *vals)
        names = ("first_loss", "last_loss", "first_val_loss", "val_loss", "tokens_per_s")
        return dict(steps=steps.value, **{k: v.value for k, v in zip(names, vals)})
    finally:
        lib.tnn_trainer_free(t)


def main():
    if len(sys.argv) < 3:
        print(__doc__)
        return 2
    lib_path, model_path = sys.argv[1], sys.argv[2]
    question = sys.argv[3] if len(sys.argv) > 3 else "Which city is the capital of France?"
    if not os.path.exists(model_path):
        print(f"ffi_llm: skipped: {model_path} is absent (run make models)")
        return 77
    lib = load_library(lib_path)
    passed = failed = 0

    def check(cond, what):
        nonlocal passed, failed
        if cond:
            passed += 1
        else:
            failed += 1
            print(f"FAIL {what}")

    # errors come back as NULL / a status with a message
    check(not lib.tnn_llm_open(b"/nonexistent.gguf", 0, 0)
          and b"/nonexistent.gguf" in lib.tnn_last_error(), "open of a missing file")
    check(lib.tnn_llm_n_vocab(None) < 0 and b"NULL" in lib.tnn_last_error(), "NULL model")

    model = Model(lib, model_path, n_ctx=1024)
    m = model.m
    print(f"{lib.tnn_llm_arch(m).decode()} model, vocabulary {lib.tnn_llm_n_vocab(m)}, "
          f"context {lib.tnn_llm_n_ctx(m)}")
    text = "Tokenizers keep text: naïve café, 東京, emoji 🙂."
    ids = model.tokenize(text, flags=0)
    check(model.detokenize(ids) == text, "tokenizer round trip")
    bad = (c_int32 * 1)(10 ** 6)
    check(lib.tnn_llm_eval(m, bad, 1, None) == -3 and b"vocabulary" in lib.tnn_last_error(),
          "out-of-range token")

    print(f"> {question}")
    a1 = model.ask(question, stream=lambda s: print(s, end="", flush=True))
    print()
    np1, ng1, ps1, gs1 = model.last_stats()
    print(f"  ({np1} prompt tokens, {ng1} generated, {ng1 / max(gs1, 1e-9):.0f} tokens/s)")
    check(len(a1) > 0, "an answer")
    follow = "And of Germany?"
    print(f"> {follow}")
    a2 = model.ask(follow, stream=lambda s: print(s, end="", flush=True))
    print()
    np2, ng2, _, gs2 = model.last_stats()
    print(f"  ({np2} prompt tokens computed, the rest from the cache; "
          f"{ng2 / max(gs2, 1e-9):.0f} tokens/s)")
    check(len(a2) > 0, "a second answer")
    check(0 < np2 < len(model.tokenize(model.chat_text())) // 2, "the cache reused")
    if question == "Which city is the capital of France?" and "SmolLM2" in model_path:
        check("Paris" in a1 and "Berlin" in a2, "SmolLM2's answers: Paris, Berlin")
    # a small model trained from Python on this model's tokens, then run as a model
    import tempfile
    with tempfile.TemporaryDirectory() as tmp:
        corpus, ck = os.path.join(tmp, "corpus.txt"), os.path.join(tmp, "ck.gguf")
        phrases = ["the cat sat on the mat. ", "a dog ran in the park. ", "we read books. "]
        with open(corpus, "w") as f:
            f.write("".join(phrases[(i * 7919) % 3] for i in range(3000)))
        lines = []
        r = train(lib, [corpus], lines.append, tokenizer=model_path, checkpoint=ck, steps=40,
                  batch=8, seq=16, dim=32, ff=64, layers=2, lr=1e-2, warmup=5, eval_every=40,
                  sample_len=0)
        check(r["steps"] == 40 and r["val_loss"] < r["first_val_loss"] - 2
              and any("step" in line for line in lines), f"training from Python: {r}")
        small = Model(lib, ck, n_ctx=64)
        buf = ctypes.create_string_buffer(256)
        n = lib.tnn_llm_generate(small.m, None, b"the cat", 8, 0, TEXT_FN(0), None, buf, 256)
        check(n >= 0 and lib.tnn_llm_n_vocab(small.m) == lib.tnn_llm_n_vocab(model.m), "the checkpoint as a model")
        small.close()
        print(f"trained from Python: validation loss {r['first_val_loss']:.2f} -> "
              f"{r['val_loss']:.2f} in {r['steps']} steps")
        # a LoRA run on the model itself (QLoRA: on its quantized weights as
        # the file stores them), its adapter file, applied at run time
        lck, ad = os.path.join(tmp, "lora.gguf"), os.path.join(tmp, "adapter.gguf")
        log = []
        r = train(lib, [corpus], log.append, init=model_path, lora=4, qlora=1, checkpoint=lck,
                  steps=2, batch=2, seq=16, eval_every=2, sample_len=0)
        check(r["steps"] == 2 and lib.tnn_lora_export(lck.encode(), ad.encode()) == 0,
              f"QLoRA run and its adapter: {lib.tnn_last_error().decode()}")
        check("with QLoRA (rank 4" in "".join(log), "the QLoRA run's log")
        check(lib.tnn_lora_export(ck.encode(), ad.encode()) < 0
              and b"not a LoRA checkpoint" in lib.tnn_last_error(), "export refused")
        adapted = Model(lib, model_path, n_ctx=64)
        check(lib.tnn_llm_load_lora(adapted.m, ck.encode(), 1.0) < 0
              and b"not a LoRA adapter" in lib.tnn_last_error(), "a non-adapter refused")
        check(lib.tnn_llm_load_lora(adapted.m, ad.encode(), 1.0) == 0,
              f"adapter applied: {lib.tnn_last_error().decode()}")
        n = lib.tnn_llm_generate(adapted.m, None, b"the cat", 8, 0, TEXT_FN(0), None, buf, 256)
        check(n >= 0, "generating with the adapter")
        adapted.close()
        print(f"QLoRA from Python: {os.path.getsize(ad)} bytes of adapter, applied: "
              f"{buf.value.decode(errors='replace')!r}")

    model.close()
    print(f"ffi_llm: {passed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
