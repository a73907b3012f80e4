#!/usr/bin/env python3
"""llama_speed.py - llama.cpp's prompt (512) and generation (128) tokens/s
for a GGUF file, through llama-cpp-python (pip, built outside this
repository), for the same-run comparison with bench/bench_generate:
    python3 tools/llama_speed.py models/SmolLM2-135M-Instruct.Q4_1.gguf [--prompts 5,16,64]
        [--lora ADAPTER.gguf]
(--prompts: also prompts of those lengths, best of 3 each, as bench_generate;
--lora: with that adapter applied, as bench_generate --lora)
"""
import time, sys
from llama_cpp import Llama
lora = None
if "--lora" in sys.argv:  # with that adapter applied at run time
    at = sys.argv.index("--lora")
    lora = sys.argv[at + 1]
    del sys.argv[at:at + 2]
llm = Llama(model_path=sys.argv[1], n_ctx=1024, n_threads=2, n_batch=512, verbose=False,
            **({"lora_path": lora} if lora else {}))
prompt = list(range(1000, 1512))
best_pp = best_tg = 0
for rep in range(3):
    llm.reset(); t0 = time.time(); llm.eval(prompt); t1 = time.time()
    best_pp = max(best_pp, 512 / (t1 - t0))
    tok = 504; t2 = time.time()
    for i in range(128): llm.eval([tok])
    best_tg = max(best_tg, 128 / (time.time() - t2))
print(f"llama.cpp (llama-cpp-python): prompt 512 {best_pp:.1f} tok/s, generation 128 {best_tg:.1f} tok/s")
if len(sys.argv) > 3 and sys.argv[2] == "--prompts":
    for n in map(int, sys.argv[3].split(",")):
        best = 0
        for rep in range(3):
            llm.reset(); t0 = time.time(); llm.eval(list(range(1000, 1000 + n)))
            best = max(best, n / (time.time() - t0))
        print(f"llama.cpp prompt {n}: {best:.1f} tok/s")
