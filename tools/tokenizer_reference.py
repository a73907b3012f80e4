#!/usr/bin/env python3
"""tokenizer_reference.py - writes tests/data/tokenizer_*.txt, the golden
token ids and decoded texts that llama.cpp (through llama-cpp-python) gives
on varied prompts; tests/test_tokenizer.c compares tinynn's tokenizer with
them exactly. Run once; the output is committed, and the tests need neither
this script nor llama.cpp.

    pip install llama-cpp-python gguf   # builds llama.cpp: minutes
    make models                         # models/SmolLM2-135M-Instruct.Q4_1.gguf
    python3 tools/tokenizer_reference.py [MODEL.gguf] [OUT_DIR]

tokenizer_smollm2.txt is SmolLM2-135M-Instruct as shipped (gpt2 model,
smollm pre-tokenizer). The other files are vocabularies derived from it, so
that every pre-tokenizer and the SPM model are checked against llama.cpp
without more model files (the C test derives the same ones):
  tokenizer_gpt2.txt, tokenizer_qwen2.txt, tokenizer_llama-bpe.txt: the same
    tokens and merges, tokenizer.ggml.pre set to "gpt-2", "qwen2",
    "llama-bpe";
  tokenizer_spm.txt: tokenizer.ggml.model "llama" (SentencePiece) with
    <unk> <s> </s>, the 256 byte tokens <0x00>..<0xFF>, SmolLM2's control
    tokens, then each normal SmolLM2 token whose bytes are valid UTF-8
    without NUL, spaces written U+2581 (first occurrence kept), score
    -(SmolLM2 id).

Format of the output: lines starting with '#' are comments; every other line
is one case, seven tab-separated fields:

    add_special parse_special lenient text ids detok detok_special

add_special / parse_special are llama_tokenize's flags (0/1); lenient = 1
marks a text holding invalid UTF-8, which llama.cpp reads as U+FFFD per bad
byte (tinynn keeps the bytes; the test substitutes U+FFFD before comparing).
text, detok and detok_special are hex ('-' when empty); ids is a
comma-separated list ('-' when empty). detok is llama_detokenize(ids,
remove_special=0, unparse_special=0); detok_special the same with
unparse_special=1.
"""
import ctypes
import os
import sys

import llama_cpp as L

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)

PROMPTS = [
    "Hello world",
    "Hello, world! How are you today?",
    "The quick brown fox jumps over the lazy dog.",
    " leading space",
    "trailing space ",
    "  two leading spaces and two trailing  ",
    "multiple     spaces    between   words",
    "line one\nline two\n\nline four\n",
    "\n\n\nnewlines first",
    "tabs\tand\t\ttabs\t",
    "mixed \t \n \r\n whitespace\r\n",
    "numbers 12345 and 3.14 and 1,000,000 and 007",
    "phone: +1 (555) 010-9999, year 2024",
    "I'm sure you're right; we'll see, they've said it's John's and I'd go. DON'T SHOUT'S",
    "quotes 'single' and \"double\" and `back`",
    "Punctuation!!! ??? ... --- ;;; ::: (((nested))) [[x]] {{y}}",
    "email: someone@example.com, url: https://example.org/a/b?c=d&e=f#g",
    "def fib(n):\n    if n < 2:\n        return n\n    return fib(n - 1) + fib(n - 2)\n",
    "int main(void) {\n\tprintf(\"%d\\n\", 42);\n\treturn 0;\n}\n",
    "x = [1, 2, 3]; y = {'a': 1}  # comment",
    "Caf\u00e9 na\u00efve r\u00e9sum\u00e9 \u00fcber Stra\u00dfe se\u00f1or",
    "\u00c9cole \u00e9t\u00e9 \u00c5ngstr\u00f6m \u00d8resund \u0141\u00f3d\u017a",
    "\u041f\u0440\u0438\u0432\u0435\u0442, \u043c\u0438\u0440! \u039a\u03b1\u03bb\u03b7\u03bc\u03ad\u03c1\u03b1",
    "\u4f60\u597d\uff0c\u4e16\u754c\uff01\u4eca\u5929\u5929\u6c14\u5f88\u597d\u3002",
    "\u3053\u3093\u306b\u3061\u306f\u4e16\u754c \u30ab\u30bf\u30ab\u30ca \ud55c\uad6d\uc5b4",
    "\u0645\u0631\u062d\u0628\u0627 \u0628\u0627\u0644\u0639\u0627\u0644\u0645 \u05e9\u05dc\u05d5\u05dd \u0928\u092e\u0938\u094d\u0924\u0947",
    "emoji \U0001F600\U0001F680 family \U0001F468\u200d\U0001F469\u200d\U0001F467 flag \U0001F1EF\U0001F1F5 \u2764\ufe0f",
    "math \u2211 x\u00b2 \u2264 \u221e, \u00bd + \u2153 = \u2075\u2044\u2086, \u2160\u2161\u2162",
    "full\u3000width\u3000space and nbsp\u00a0here and \u2028line sep",
    "<|im_start|>user\nHello!<|im_end|>\n<|im_start|>assistant\n",
    "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n",
    "text<|endoftext|>more text<|im_end|>",
    "<|im_start|><|im_start|> doubled <|im_end|><|im_end|>",
    "almost special <|im_star|> and <|im_end and im_end|>",
    "<repo_name>tinynn<file_sep>src/main.c<filename>x<gh_stars>10",
    "a",
    " ",
    "\n",
    "'s",
    "'",
    "?!.,",
    "A" * 40 + " " + "ab" * 30,
    "0123456789" * 5,
    "The year 1999 ended; 2000 began. In 1492, Columbus sailed. Pi is 3.14159265358979.",
    "Mr. O'Neil's cat-dog's \"toy\" costs $4.99 (20% off) - buy @ store #3!",
    "Once upon a time, in a land far, far away, there lived a small dragon who loved "
    "to read. Every evening she would curl up by the fire with a book about the stars, "
    "and dream of flying higher than any dragon had flown before.\n\n" * 3,
]

# Invalid UTF-8 (bytes): llama.cpp reads each bad byte as U+FFFD.
INVALID = [
    b"bad \xff byte",
    b"stray \x80\x81 continuation",
    b"truncated \xe4\xbd end",
    b"\xc3",
]

BOTH_SPECIAL = {p for p in PROMPTS if "<" in p}


def tokenize(vocab, data, add_special, parse_special):
    n_max = len(data) + 16
    buf = (L.llama_token * n_max)()
    n = L.llama_tokenize(vocab, data, len(data), buf, n_max, add_special, parse_special)
    assert n >= 0, n
    return list(buf[:n])


def detokenize(vocab, ids, unparse_special):
    arr = (L.llama_token * max(1, len(ids)))(*ids)
    cap = 64 + 16 * len(ids)
    out = ctypes.create_string_buffer(cap)
    n = L.llama_detokenize(vocab, arr, len(ids), out, cap, False, unparse_special)
    assert n >= 0, n
    return out.raw[:n]


def hx(b):
    return b.hex() if b else "-"


def byte_decoder():
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAD)) + list(range(0xAE, 0x100))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(bs, cs)}


def write_variant(src, path, variant):
    """A vocab-only GGUF: SmolLM2's metadata with the tokenizer changed."""
    import gguf
    from gguf import GGUFValueType as T
    r = gguf.GGUFReader(src)
    w = gguf.GGUFWriter(path, "llama")
    tokens = r.fields["tokenizer.ggml.tokens"].contents()
    types = r.fields["tokenizer.ggml.token_type"].contents()
    drop = {"general.architecture"}
    if variant == "spm":
        drop |= {k for k in r.fields if k.startswith("tokenizer.")}
    for key, f in r.fields.items():
        if key.startswith("GGUF.") or key in drop:
            continue
        if key == "tokenizer.ggml.pre":
            w.add_key_value(key, variant, T.STRING)
            continue
        vt = T(f.types[0])
        sub = T(f.types[1]) if vt == T.ARRAY else None
        w.add_key_value(key, f.contents(), vt, sub)
    if variant == "spm":
        dec = byte_decoder()
        texts = ["<unk>", "<s>", "</s>"] + ["<0x%02X>" % b for b in range(256)]
        ttypes = [2, 3, 3] + [6] * 256
        scores = [0.0] * len(texts)
        seen = set(texts)
        for i, t in enumerate(tokens):
            if types[i] == 3 and t not in seen:
                seen.add(t)
                texts.append(t)
                ttypes.append(3)
                scores.append(0.0)
        for i, t in enumerate(tokens):
            if types[i] != 1:
                continue
            try:
                raw = bytes(dec[c] for c in t).decode("utf-8")
            except (KeyError, UnicodeDecodeError):
                continue
            if "\x00" in raw:  # GGUF writers take NUL-terminated strings
                continue
            piece = raw.replace(" ", "\u2581")
            if piece in seen:
                continue
            seen.add(piece)
            texts.append(piece)
            ttypes.append(1)
            scores.append(-float(i))
        w.add_key_value("tokenizer.ggml.model", "llama", T.STRING)
        w.add_key_value("tokenizer.ggml.tokens", texts, T.ARRAY, T.STRING)
        w.add_key_value("tokenizer.ggml.scores", scores, T.ARRAY, T.FLOAT32)
        w.add_key_value("tokenizer.ggml.token_type", ttypes, T.ARRAY, T.INT32)
        w.add_key_value("tokenizer.ggml.bos_token_id", 1, T.UINT32)
        w.add_key_value("tokenizer.ggml.eos_token_id", 2, T.UINT32)
        w.add_key_value("tokenizer.ggml.unknown_token_id", 0, T.UINT32)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def run_one(model, out_path, title):
    params = L.llama_model_default_params()
    params.vocab_only = True
    m = L.llama_model_load_from_file(model.encode(), params)
    assert m, "cannot load " + model
    vocab = L.llama_model_get_vocab(m)

    cases = []
    for p in PROMPTS:
        data = p.encode("utf-8")
        for ps in ((0, 1) if p in BOTH_SPECIAL else (0,)):
            cases.append((1, ps, 0, data))
        if p in BOTH_SPECIAL or p.startswith("Hello"):
            cases.append((0, 1, 0, data))
    for b in INVALID:
        cases.append((1, 0, 1, b))

    lines = [
        "# %s - golden tokenization of %s by" % (os.path.basename(out_path), title),
        "# llama.cpp (llama-cpp-python %s), written by tools/tokenizer_reference.py;" % L.__version__,
        "# fields: add_special parse_special lenient text_hex ids detok_hex detok_special_hex",
        "# (see the script for the format). add_bos of the model: %d" % L.llama_vocab_get_add_bos(vocab),
    ]
    for add_special, parse_special, lenient, data in cases:
        ids = tokenize(vocab, data, bool(add_special), bool(parse_special))
        d0 = detokenize(vocab, ids, False)
        d1 = detokenize(vocab, ids, True)
        lines.append("\t".join([str(add_special), str(parse_special), str(lenient), hx(data),
                                ",".join(map(str, ids)) if ids else "-", hx(d0), hx(d1)]))
    with open(out_path, "w") as f:
        f.write("\n".join(lines) + "\n")
    L.llama_model_free(m)
    print("wrote %d cases to %s" % (len(cases), out_path))


def main():
    import tempfile
    model = sys.argv[1] if len(sys.argv) > 1 else os.path.join(
        ROOT, "models", "SmolLM2-135M-Instruct.Q4_1.gguf")
    out_dir = sys.argv[2] if len(sys.argv) > 2 else os.path.join(ROOT, "tests", "data")
    L.llama_backend_init()
    run_one(model, os.path.join(out_dir, "tokenizer_smollm2.txt"),
            "SmolLM2-135M-Instruct.Q4_1.gguf")
    with tempfile.TemporaryDirectory() as tmp:
        for variant, name in (("gpt-2", "gpt2"), ("qwen2", "qwen2"), ("llama-bpe", "llama-bpe"),
                              ("spm", "spm")):
            path = os.path.join(tmp, name + ".gguf")
            write_variant(model, path, variant)
            run_one(path, os.path.join(out_dir, "tokenizer_%s.txt" % name),
                    "SmolLM2's vocabulary as variant '%s' (see the script)" % variant)


if __name__ == "__main__":
    main()
