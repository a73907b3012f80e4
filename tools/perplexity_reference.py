#!/usr/bin/env python3
"""perplexity_reference.py - llama.cpp's perplexity of a text, by the method
of its perplexity tool (chunks of C tokens, each on an empty cache, the
first token made BOS where the model adds one, the second half of each
chunk scored), through llama-cpp-python (pip install llama-cpp-python; built
outside the repository). tinynn's `tnn perplexity` / tnn_llm_perplexity use
the same method; test_llm_api compares against the number this prints.

Usage: python3 tools/perplexity_reference.py MODEL.gguf TEXT_FILE [CHUNK]
"""
import math
import sys

import numpy as np
from llama_cpp import Llama


def main():
    model, path = sys.argv[1], sys.argv[2]
    chunk = int(sys.argv[3]) if len(sys.argv) > 3 else 512
    llm = Llama(model_path=model, n_ctx=chunk, logits_all=True, n_threads=2, verbose=False)
    text = open(path, "rb").read()
    add_bos = llm._model.add_bos_token() if hasattr(llm._model, "add_bos_token") else True
    ids = llm.tokenize(text, add_bos=add_bos, special=False)
    first, nll, count = chunk // 2, 0.0, 0
    for c in range(len(ids) // chunk):
        t = list(ids[c * chunk:(c + 1) * chunk])
        if add_bos:
            t[0] = llm.token_bos()
        llm.reset()
        llm.eval(t)
        logits = np.array(llm.scores[:chunk], dtype=np.float64)
        for j in range(first, chunk - 1):
            row = logits[j]
            mx = row.max()
            nll += math.log(np.exp(row - mx).sum()) + mx - row[t[j + 1]]
            count += 1
    print(f"tokens {len(ids)} chunk {chunk} scored {count} ppl {math.exp(nll / count):.6f}")


if __name__ == "__main__":
    main()
