#!/usr/bin/env bash
# cuda_check.sh - what the CUDA issue runs on a GPU machine, in one go (about 5 minutes):
# the CUDA suite, the demo model trained on the CPU and on the GPU (loss curves compared),
# fine-tuning (every weight and LoRA) of a SmolLM2-shaped checkpoint on the GPU,
# greedy sampling of one checkpoint on both, GEMM against cuBLAS, training throughput (with
# PyTorch beside it when installed; GPT-2 small also at T = 1024 in f32, TF32 and bf16), training
# attention by each path (bench_cuda --attn), generation speed of a SmolLM2-shaped Q4_1 model (with
# llama.cpp's llama-bench on the same file, and per-kernel GPU times from ncu, when there),
# and the CPU's AVX512_BF16 GEMM when the host has it.
#
#   tools/cuda_check.sh [BIN]      BIN: a CUDA build folder (default build-gpu, configured
#                                  and built here when missing: needs cmake and nvcc); it may
#                                  also hold tok.gguf (a GGUF file with SmolLM2's tokenizer)
#                                  and llama-bench (+ llamalib/), built elsewhere
# The summary (with the tail of every failing step) and the loss curves go to $OUT (default
# /tmp/cuda_check); whole logs and model files to $WORK. ONLY=REGEX runs only the steps whose
# names match it. Every step is bounded and a failing step does not stop the next.
set -u
cd "$(dirname "$0")/.."
BIN=${1:-build-gpu}
OUT=${OUT:-/tmp/cuda_check}
W=${WORK:-/tmp/cuda_check_models} # model files and whole logs, kept out of $OUT
L=$W/logs                          # (the device tool returns only a few files)
mkdir -p "$OUT" "$W" "$L"
export LD_LIBRARY_PATH=/usr/local/cuda/lib64${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
S=$OUT/summary.txt
: > "$S"
note() { echo "$*" | tee -a "$S"; }
step() { # name, timeout seconds, command... (ONLY=regex runs only the steps it matches)
  local name=$1 t=$2; shift 2
  if [ -n "${ONLY:-}" ] && ! [[ $name =~ $ONLY ]]; then return 0; fi
  local t0=$SECONDS
  timeout "$t" "$@" > "$L/$name.log" 2>&1
  local rc=$?
  note "[$name] rc=$rc ($((SECONDS - t0)) s): $(tail -n 2 "$L/$name.log" | tr '\n' ' ' | cut -c1-300)"
  if [ $rc -ne 0 ] && [ $rc -ne 77 ]; then tail -n 20 "$L/$name.log" | sed 's/^/    /' >> "$S"; fi
}

note "== machine"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1 | tee -a "$S"
grep -m1 "model name" /proc/cpuinfo | tee -a "$S"
for f in avx512f avx512_bf16 amx_bf16; do note "$f: $(grep -c -w $f /proc/cpuinfo)"; done
note "nproc $(nproc); nvcc: $(command -v nvcc || echo none); torch: $(python3 -c 'import torch; print(torch.__version__)' 2>/dev/null || echo none)"

if [ ! -x "$BIN/tests/test_cuda" ]; then
  step build 400 bash -c "cmake -S . -B $BIN -DTNN_CUDA=ON -DTNN_CUDA_EMU=OFF -DCMAKE_CUDA_ARCHITECTURES='80;90' && cmake --build $BIN -j$(nproc)"
fi
# The tests find their data by the absolute path they were built with.
DATA=$(grep -aoE '/[[:alnum:]_./-]*/tests/data' "$BIN/tests/test_arch_cuda" 2>/dev/null | head -n 1)
if [ -n "$DATA" ] && [ ! -d "$DATA" ]; then
  ROOT=$(dirname "$(dirname "$DATA")")
  mkdir -p "$(dirname "$ROOT")" && ln -s "$PWD" "$ROOT" 2>/dev/null || true
fi

note "== CUDA suite"
step test_cuda 120 "$BIN/tests/test_cuda"
for t in test_ops_cuda test_autograd_cuda test_arch_cuda test_parity_cuda test_llama_cuda test_llm_api_cuda; do
  [ -x "$BIN/tests/$t" ] && step $t 120 "$BIN/tests/$t"
done
TNN_CUDA_GEMM=own step test_cuda_owngemm 120 "$BIN/tests/test_cuda"

note "== the demo model: 200 steps on the CPU and on the GPU, same data and seed"
DOCS="README.md docs/ARCHITECTURE.md docs/PERFORMANCE.md"
step train_cpu 240 "$BIN/tnn" train $DOCS --steps 200 --eval-every 50 --sample-len 0 --log "$OUT/cpu.csv" --checkpoint "$W/ck.gguf"
step train_cuda 240 "$BIN/tnn" train $DOCS --steps 200 --eval-every 50 --sample-len 0 --log "$OUT/cuda.csv" --cuda
# mixed precision on the GPU (bf16 products of bf16 weights and activations): the same 200
# steps, the loss compared with the f32 curves below
step train_cuda_bf16 240 "$BIN/tnn" train $DOCS --steps 200 --eval-every 50 --sample-len 0 --log "$OUT/cuda_bf16.csv" --cuda --bf16
if [ -f "$OUT/cpu.csv" ] && [ -f "$OUT/cuda.csv" ]; then
  paste -d, "$OUT/cpu.csv" "$OUT/cuda.csv" | awk -F, 'NR > 1 { d = $2 - $8; if (d < 0) d = -d; r = d / $2; if (r > w) { w = r; s = $1 } }
    END { printf "loss curves: worst relative difference of the training loss %.2e (step %d)\n", w, s }' | tee -a "$S"
  note "cpu  last: $(tail -n 1 "$OUT/cpu.csv")"
  note "cuda last: $(tail -n 1 "$OUT/cuda.csv")"
  [ -f "$OUT/cuda_bf16.csv" ] && note "cuda --bf16 last: $(tail -n 1 "$OUT/cuda_bf16.csv")"
fi
if [ -f "$W/ck.gguf" ]; then
  step sample_cpu 60 "$BIN/tnn" sample -m "$W/ck.gguf" --prompt "The " -n 64 --temp 0
  step sample_cuda 60 "$BIN/tnn" sample -m "$W/ck.gguf" --prompt "The " -n 64 --temp 0 --cuda
  if cmp -s "$L/sample_cpu.log" "$L/sample_cuda.log"; then note "greedy sample: identical"; else note "greedy sample: DIFFERS"; fi
fi

note "== benchmarks"
step bench_cuda 180 "$BIN/bench/bench_cuda"
cat "$L/bench_cuda.log" 2>/dev/null >> "$S"
TORCH=""
python3 -c 'import torch; assert torch.cuda.is_available()' 2>/dev/null && TORCH="python3 $PWD/tools/torch_train_speed.py"
TNN_TORCH_BENCH="$TORCH" step bench_train_cuda 240 "$BIN/bench/bench_train" all --cuda
cat "$L/bench_train_cuda.log" 2>/dev/null >> "$S"
# GPT-2 small at T = 1024: f32 beside PyTorch, then TF32, and mixed precision (bf16 products
# of bf16 weights and activations, attention in TF32); and the step's product shapes against
# cuBLAS
TNN_TORCH_BENCH="$TORCH" step bench_train_t1024 180 "$BIN/bench/bench_train" gpt2 --cuda --batch 4 --seq 1024 --steps 8
step bench_train_t1024_tf32 120 "$BIN/bench/bench_train" gpt2 --cuda --tf32 --batch 4 --seq 1024 --steps 8
step bench_train_t1024_bf16 120 "$BIN/bench/bench_train" gpt2 --cuda --bf16 --tf32 --batch 4 --seq 1024 --steps 8
# what keeping attention's log-sum-exp from the forward is worth (the backward runs the
# forward again without it), same binary
TNN_CUDA_FLASH_LSE=0 step bench_train_t1024_tf32_nolse 120 "$BIN/bench/bench_train" gpt2 --cuda --tf32 --batch 4 --seq 1024 --steps 8
# what padding the output projection to 50304 rows is worth (the default on the GPU; the
# products over the logits then have 16-byte-aligned rows), same binary
step bench_train_t1024_tf32_nopad 120 "$BIN/bench/bench_train" gpt2 --cuda --tf32 --batch 4 --seq 1024 --steps 8 --vocab-align 1
# where a short-sequence TF32 step goes (T = 64: 256 tokens a step), node by node
TNN_CUDA_PROFILE=1 step profile_t64_tf32 120 "$BIN/bench/bench_train" gpt2 --cuda --tf32 --steps 3
# the GPU time of every kernel inside the replayed CUDA graphs (no waits between nodes,
# unlike TNN_CUDA_PROFILE), when Nsight Systems is installed: T = 1024 and T = 64, TF32
NSYS=$(command -v nsys || ls /usr/local/cuda/bin/nsys /opt/nvidia/nsight-systems/*/bin/nsys 2>/dev/null | head -n 1)
if [ -n "$NSYS" ]; then
  for T in 1024 64; do
    step nsys_t$T 240 bash -c "'$NSYS' profile -t cuda --cuda-graph-trace=node -f true -o '$W/nsys_t$T' '$BIN/bench/bench_train' gpt2 --cuda --tf32 --batch 4 --seq $T --steps 4 && '$NSYS' stats -q --report cuda_gpu_kern_sum --format csv '$W/nsys_t$T.nsys-rep' | head -n 40"
    cat "$L/nsys_t$T.log" 2>/dev/null | grep -E '^"?[0-9]' | head -n 40 >> "$S"
  done
fi
for n in bench_train_t1024 bench_train_t1024_tf32 bench_train_t1024_bf16 bench_train_t1024_tf32_nolse bench_train_t1024_tf32_nopad; do
  grep -v "^threads" "$L/$n.log" 2>/dev/null >> "$S"
done
step bench_cuda_train 120 "$BIN/bench/bench_cuda" --train
cat "$L/bench_cuda_train.log" 2>/dev/null >> "$S"
tail -n 40 "$L/profile_t64_tf32.log" 2>/dev/null >> "$S"
step bench_cuda_attn 120 "$BIN/bench/bench_cuda" --attn
cat "$L/bench_cuda_attn.log" 2>/dev/null >> "$S"
# A SmolLM2-135M-shaped model (30 layers, 576 wide, 9 heads / 3 KV, FF 1536), with SmolLM2's
# tokenizer (49152 tokens) when $BIN/tok.gguf has it (any GGUF model or checkpoint carrying it:
# SmolLM2 itself is larger than what can be carried to a GPU machine), else bytes
TOK=""
[ -f "$BIN/tok.gguf" ] && TOK="--tokenizer $BIN/tok.gguf"
step smol_make 200 bash -c "'$BIN/tnn' train $DOCS $TOK --layers 30 --dim 576 --heads 9 --kv-heads 3 --ff 1536 --seq 128 --batch 4 --steps 2 --eval-every 0 --sample-len 0 --checkpoint '$W/smol.gguf' --cuda && '$BIN/tnn' quantize '$W/smol.gguf' '$W/smol-q4_1.gguf' q4_1"
# fine-tuning on the GPU from that checkpoint: every weight, then LoRA (the loss printed, the
# step's speed)
if [ -f "$W/smol.gguf" ]; then
  for mode in full lora; do
    LORA=""
    [ $mode = lora ] && LORA="--lora 8"
    step finetune_${mode}_cuda 120 "$BIN/tnn" train $DOCS --init "$W/smol.gguf" $LORA --steps 6 --seq 128 --batch 4 --eval-every 3 --sample-len 0 --cuda
  done
fi
if [ -f "$W/smol-q4_1.gguf" ]; then
  step gen_cpu 120 "$BIN/bench/bench_generate" "$W/smol-q4_1.gguf"
  step gen_cuda 120 "$BIN/bench/bench_generate" "$W/smol-q4_1.gguf" --cuda
  cat "$L/gen_cpu.log" "$L/gen_cuda.log" 2>/dev/null >> "$S"
  # llama.cpp's CUDA build on the same file, when BIN has its llama-bench (built elsewhere):
  # 128 tokens after 512 of context, as bench_generate measures, flash attention off and on
  # (its libraries: BIN/llamalib, else the system's; NCCL from wherever it is installed)
  if [ -x "$BIN/llama-bench" ]; then
    NCCL=$(find /usr /opt -name libnccl.so.2 2>/dev/null | head -n 1)
    LLP=$PWD/$BIN/llamalib${NCCL:+:$(dirname "$NCCL")}
    LD_LIBRARY_PATH=$LLP:$LD_LIBRARY_PATH step llama_bench 300 "$BIN/llama-bench" -m "$W/smol-q4_1.gguf" -p 512 -n 128 -d 512 -ngl 99 -fa 0,1 -r 3
    cat "$L/llama_bench.log" 2>/dev/null | grep -E "^\|" >> "$S"
  fi
  TNN_CUDA_PROFILE=1 step gen_profile 120 "$BIN/bench/bench_generate" "$W/smol-q4_1.gguf" --cuda
  tail -n 14 "$L/gen_profile.log" 2>/dev/null >> "$S"
  # the same without CUDA graphs, without the fused epilogues and without overlapped
  # launches (what each is worth)
  TNN_CUDA_GRAPHS=0 step gen_nographs 120 "$BIN/bench/bench_generate" "$W/smol-q4_1.gguf" --cuda
  TNN_CUDA_FUSE=0 step gen_nofuse 120 "$BIN/bench/bench_generate" "$W/smol-q4_1.gguf" --cuda
  TNN_CUDA_PDL=0 step gen_nopdl 120 "$BIN/bench/bench_generate" "$W/smol-q4_1.gguf" --cuda
  # each decoding kernel's GPU time (ncu runs them one at a time, caches and clocks left as
  # they are): ~3 tokens of the first generation, well past the prompt and the recording
  NCU=$(command -v ncu || ls /usr/local/cuda/bin/ncu 2>/dev/null)
  if [ -n "$NCU" ]; then
    step gen_ncu 300 "$NCU" --metrics gpu__time_duration.sum --cache-control none --clock-control none --csv --launch-skip 6000 --launch-count 1200 "$BIN/bench/bench_generate" "$W/smol-q4_1.gguf" --cuda
    python3 tools/ncu_summary.py "$L/gen_ncu.log" >> "$S" 2>&1
  fi
fi

note "== bf16 GEMM on this host's CPU"
if [ -x "$BIN/tests/test_gemm_bf16" ]; then
  step test_gemm_bf16 120 "$BIN/tests/test_gemm_bf16"
  grep -i "avx512bf16\|skipped\|passed" "$L/test_gemm_bf16.log" 2>/dev/null | tail -5 >> "$S"
  OB=$(ls "$BIN"/lib/libopenblas.so.0 2>/dev/null)
  [ -n "$OB" ] && export LD_LIBRARY_PATH=$PWD/$BIN/lib:$LD_LIBRARY_PATH
  # OpenBLAS 0.3.21 does not know newer Xeons and falls back to old kernels
  OPENBLAS_CORETYPE=SkylakeX step bench_gemm_bf16 150 "$BIN/bench/bench_gemm" --quick
  tail -n 30 "$L/bench_gemm_bf16.log" 2>/dev/null >> "$S"
fi
note "== done"
