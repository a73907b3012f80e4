#!/usr/bin/env bash
# run.sh - builds the libFuzzer targets (clang with ASan + UBSan) into
# build-fuzz/ and runs each for a bounded time: the GGUF reader (fuzz_gguf.c),
# the tokenizer (fuzz_tokenizer.c), the conversation reader with the chat
# families (fuzz_convo.c) and LoRA adapters applied to a model (fuzz_lora.c,
# against the whole library, built by CMake with clang into build-fuzz/lib).
# Exits non-zero when a fuzzer finds a crash (artifact in build-fuzz/).
#
#   fuzz/run.sh [SECONDS]      build and fuzz each target for SECONDS (default 60)
#   fuzz/run.sh --make-corpus  rewrite the seed corpora fuzz/corpus/gguf/ and lora/
#
# CLANG=clang-14 picks another compiler. New inputs the fuzzers find go to
# build-fuzz/corpus-gguf/, corpus-tokenizer/, corpus-convo/ and corpus-lora/
# (not committed); the seeds (fuzz/corpus/*/) are only read. A
# tokenizer seed is a text whose first byte picks the case (see
# fuzz_tokenizer.c).
set -euo pipefail
cd "$(dirname "$0")/.."

CC="${CLANG:-clang}"
OUT=build-fuzz
SRCS="src/io/gguf.c src/core/error.c"
TOK_SRCS="src/llm/tokenizer.c src/llm/unicode_tables.c $SRCS"
CONVO_SRCS="src/llm/convo.c src/llm/chat.c $TOK_SRCS"
FLAGS="-std=c11 -D_GNU_SOURCE -Iinclude -Isrc -Wall -Wextra -Wno-unused-parameter"

if ! command -v "$CC" >/dev/null 2>&1; then
  echo "fuzz/run.sh: $CC not found; install clang (apt-get install -y clang)" >&2
  exit 2
fi
mkdir -p "$OUT/corpus-gguf" "$OUT/corpus-tokenizer" "$OUT/corpus-convo" "$OUT/corpus-lora"
SAN="-fsanitize=address,undefined -fno-sanitize-recover=all -fno-omit-frame-pointer"

# The library, instrumented for the fuzzer, for the targets that need all of
# it (the model behind fuzz_lora).
build_lib() {
  cmake -S . -B "$OUT/lib" -DCMAKE_C_COMPILER="$CC" -DCMAKE_BUILD_TYPE=RelWithDebInfo \
    -DTNN_CUDA=OFF -DTNN_CUDA_EMU=OFF -DTNN_BUILD_TESTS=OFF -DTNN_BUILD_BENCH=OFF \
    -DCMAKE_C_FLAGS="-fsanitize=fuzzer-no-link $SAN" > "$OUT/lib.log" 2>&1 &&
  cmake --build "$OUT/lib" --target tinynn_static -j "$(nproc)" >> "$OUT/lib.log" 2>&1 ||
    { tail -30 "$OUT/lib.log" >&2; echo "fuzz/run.sh: building the library failed" >&2; exit 2; }
}
build_lora() {
  build_lib
  "$CC" -g -O1 -fsanitize=fuzzer $SAN $FLAGS fuzz/fuzz_lora.c "$OUT/lib/libtinynn.a" \
    -lm -lpthread -ldl -o "$OUT/fuzz_lora"
}

if [ "${1:-}" = "--make-corpus" ]; then
  "$CC" -g -O1 $FLAGS fuzz/make_corpus.c $SRCS -o "$OUT/make_corpus"
  rm -f fuzz/corpus/gguf/*.gguf
  mkdir -p fuzz/corpus/gguf
  "$OUT/make_corpus" fuzz/corpus/gguf
  ls -l fuzz/corpus/gguf
  build_lora
  mkdir -p fuzz/corpus/lora
  "$OUT/fuzz_lora" --write-seed fuzz/corpus/lora/adapter.gguf
  ls -l fuzz/corpus/lora
  exit 0
fi

SECS="${1:-60}"
case "$SECS" in
  ''|*[!0-9]*) echo "usage: fuzz/run.sh [SECONDS] | --make-corpus" >&2; exit 2 ;;
esac

# libFuzzer's runtime ships separately on some systems: probe for it first.
printf 'int LLVMFuzzerTestOneInput(const unsigned char *d, unsigned long n) { return 0; }\n' \
  > "$OUT/probe.c"
if ! "$CC" -fsanitize=fuzzer "$OUT/probe.c" -o "$OUT/probe" 2> "$OUT/probe.log"; then
  cat "$OUT/probe.log" >&2
  echo "fuzz/run.sh: $CC cannot link libFuzzer (-fsanitize=fuzzer): its runtime is missing." >&2
  echo "  On Debian/Ubuntu: apt-get update && apt-get install -y libclang-rt-14-dev" >&2
  echo "  (the package matching your clang version: $("$CC" --version | head -1))" >&2
  exit 2
fi

"$CC" -g -O1 -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=all \
  -fno-omit-frame-pointer $FLAGS fuzz/fuzz_gguf.c $SRCS -o "$OUT/fuzz_gguf"
"$CC" -g -O1 -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=all \
  -fno-omit-frame-pointer $FLAGS fuzz/fuzz_tokenizer.c $TOK_SRCS -o "$OUT/fuzz_tokenizer"
"$CC" -g -O1 -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=all \
  -fno-omit-frame-pointer $FLAGS fuzz/fuzz_convo.c $CONVO_SRCS -o "$OUT/fuzz_convo"

# fuzz WHAT BINARY CORPUS PREFIX [libFuzzer options]: fuzzes BINARY for SECS
# seconds on its corpus (new inputs to build-fuzz/corpus-CORPUS/, the
# committed seeds in fuzz/corpus/CORPUS/); exits with the fuzzer's status
# when it finds a crash (the input in build-fuzz/PREFIXcrash-*).
fuzz() {
  local what="$1" bin="$2" corpus="$3" prefix="$4"
  shift 4
  echo "fuzz/run.sh: fuzzing $what for ${SECS}s"
  local rc=0
  ASAN_OPTIONS="detect_leaks=1:allocator_may_return_null=1" \
  UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1" \
    "$OUT/$bin" -max_total_time="$SECS" -timeout=10 -rss_limit_mb=2048 "$@" \
      -artifact_prefix="$OUT/$prefix" -print_final_stats=1 \
      "$OUT/corpus-$corpus" "fuzz/corpus/$corpus" || rc=$?
  if [ "$rc" -ne 0 ]; then
    echo "fuzz/run.sh: $what FAILED (exit $rc): the crashing input is in $OUT/ (${prefix}crash-*, ${prefix}leak-*, ${prefix}timeout-*)" >&2
    exit "$rc"
  fi
  echo "fuzz/run.sh: $what: no crash in ${SECS}s"
}

fuzz "the GGUF reader" fuzz_gguf gguf "" -dict=fuzz/gguf.dict
fuzz "the tokenizer" fuzz_tokenizer tokenizer tokenizer- -max_len=4096
fuzz "the conversation reader" fuzz_convo convo convo- -max_len=4096 -dict=fuzz/convo.dict
build_lora
fuzz "LoRA adapters" fuzz_lora lora lora- -max_len=16384 -dict=fuzz/gguf.dict
