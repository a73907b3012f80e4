#!/usr/bin/env python3
"""llama_reference.py - writes the golden file of the model parity test
(tests/data/llama_smollm2.txt) from llama.cpp, through llama-cpp-python.

Run once, outside the test suite (the tests never need llama.cpp):
    pip install llama-cpp-python        # builds llama.cpp (several minutes)
    make models
    python3 tools/llama_reference.py models/SmolLM2-135M-Instruct.Q4_1.gguf \\
        > tests/data/llama_smollm2.txt

For each prompt it records the prompt's token ids (special tokens parsed),
the top-10 logits after the whole prompt, and the greedy continuation of 32
tokens (argmax at every step). Format, one record per prompt:
    prompt <python repr of the text>
    tokens <n> <id> ...
    top10 <id>:<logit> ...   (highest first)
    greedy <id> ...
    margin <top1 - top2 logit at each greedy step> ...
"""
import sys

import numpy as np
from llama_cpp import Llama, __version__

PROMPTS = [
    "The capital of France is",
    "Once upon a time, there was a little robot who",
    "def fibonacci(n):\n    ",
    "<|im_start|>user\nWhat is 2 + 2?<|im_end|>\n<|im_start|>assistant\n",
    "Water boils at 100 degrees Celsius, which is",
    "List three colors: red,",
]


def main():
    path = sys.argv[1]
    llm = Llama(model_path=path, n_ctx=512, n_threads=2, n_batch=512, logits_all=True,
                verbose=False)
    print(f"# made by tools/llama_reference.py with llama-cpp-python {__version__}")
    print(f"# model {path.split('/')[-1]}")
    for text in PROMPTS:
        llm.reset()
        toks = llm.tokenize(text.encode(), add_bos=False, special=True)
        llm.eval(toks)
        logits = np.array(llm.scores[len(toks) - 1], dtype=np.float64)
        top = np.argsort(-logits, kind="stable")[:10]
        greedy, margin = [], []
        cur = logits
        for _ in range(32):
            nxt = int(np.argmax(cur))
            two = np.sort(cur)[-2:]
            greedy.append(nxt)
            margin.append(two[1] - two[0])
            llm.eval([nxt])
            cur = np.array(llm.scores[llm.n_tokens - 1], dtype=np.float64)
        print("prompt", repr(text))
        print("tokens", len(toks), " ".join(map(str, toks)))
        print("top10", " ".join(f"{int(i)}:{logits[i]:.6f}" for i in top))
        print("greedy", " ".join(map(str, greedy)))
        print("margin", " ".join(f"{x:.4f}" for x in margin))


if __name__ == "__main__":
    main()
