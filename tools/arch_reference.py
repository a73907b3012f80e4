#!/usr/bin/env python3
"""arch_reference.py - writes the golden file of the architecture test
(tests/data/llama_arch.txt) from llama.cpp, through llama-cpp-python.

The tiny models are written by the test program itself (fixed RNG, tinynn's
GGUF writer), so nothing binary is committed. Run once, outside the suite:
    pip install llama-cpp-python
    make
    python3 tools/arch_reference.py build/tests/test_arch > tests/data/llama_arch.txt

Per model: the prompt's token ids, the top-10 logits after it, then 8 greedy
tokens (argmax at every step) and llama.cpp's top-1 minus top-2 logit at
each of those steps. Format:
    model <name>
    tokens <n> <id> ...
    top10 <id>:<logit> ...   (highest first)
    greedy <id> ...
    margin <float> ...
"""
import os
import subprocess
import sys
import tempfile

import numpy as np
from llama_cpp import Llama, __version__

PROMPT = [1, 70, 80, 90, 100, 33, 44, 200, 17, 5, 250, 3]


def main():
    exe = sys.argv[1]
    with tempfile.TemporaryDirectory() as d:
        files = subprocess.run([exe, "--write", d], check=True, capture_output=True,
                               text=True).stdout.split()
        print(f"# made by tools/arch_reference.py with llama-cpp-python {__version__}")
        for path in files:
            name = os.path.basename(path)[len("tiny_"):-len(".gguf")]
            llm = Llama(model_path=path, n_ctx=64, n_threads=2, logits_all=True, verbose=False)
            llm.eval(PROMPT)
            lg = np.array(llm.scores[len(PROMPT) - 1], dtype=np.float64)
            top = np.argsort(-lg)[:10]
            print(f"model {name}")
            print("tokens", len(PROMPT), " ".join(str(t) for t in PROMPT))
            print("top10", " ".join(f"{i}:{lg[i]:.6f}" for i in top))
            greedy, margin = [], []
            for _ in range(8):
                order = np.argsort(-lg)
                greedy.append(int(order[0]))
                margin.append(float(lg[order[0]] - lg[order[1]]))
                llm.eval([int(order[0])])
                lg = np.array(llm.scores[llm.n_tokens - 1], dtype=np.float64)
            print("greedy", " ".join(str(t) for t in greedy))
            print("margin", " ".join(f"{m:.4f}" for m in margin))


if __name__ == "__main__":
    main()
