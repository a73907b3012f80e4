# Thin front over CMake. `make` builds, `make test` builds and runs every
# test, `make demo` runs the demo, `make install` installs (PREFIX=/usr/local).
BUILD ?= build
ASAN_BUILD ?= build-asan
PREFIX ?= /usr/local
JOBS ?= $(shell nproc 2>/dev/null || echo 2)
CMAKE_FLAGS ?=

.PHONY: all configure test asan demo install bench clean

all: configure
	cmake --build $(BUILD) -j$(JOBS)

configure:
	@command -v cmake >/dev/null || { echo "cmake is needed: apt-get install cmake"; exit 1; }
	cmake -S . -B $(BUILD) -DCMAKE_BUILD_TYPE=Release -DCMAKE_INSTALL_PREFIX=$(PREFIX) $(CMAKE_FLAGS)

test: all
	cd $(BUILD) && ctest --output-on-failure -j$(JOBS)

# The whole suite under AddressSanitizer + UndefinedBehaviorSanitizer.
asan:
	cmake -S . -B $(ASAN_BUILD) -DCMAKE_BUILD_TYPE=Debug -DTNN_SANITIZE=ON $(CMAKE_FLAGS)
	cmake --build $(ASAN_BUILD) -j$(JOBS)
	cd $(ASAN_BUILD) && ASAN_OPTIONS=detect_leaks=1:allocator_may_return_null=1 \
		UBSAN_OPTIONS=print_stacktrace=1 \
		ctest --output-on-failure -j$(JOBS) -E ffi_python

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

clean:
	rm -rf $(BUILD) $(ASAN_BUILD)
