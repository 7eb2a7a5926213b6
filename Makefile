# llama_selfmod - `make run` and `make test` do all set-up themselves.
MODELS     ?= $(CURDIR)/../shared/models
MODEL      ?= $(MODELS)/stories260K.gguf
PROMPT     ?= Once upon a time, there was a little girl named Lily.
BUILD      ?= build
GPU        ?=
# GPU=cuda: llama.cpp with its CUDA backend (a build of its own in the cache;
# --n-gpu-layers offloads); empty: the CPU build.
JOBS       ?= $(shell nproc)

FUZZ_SECONDS ?= 60
FUZZ_SEED  ?= 1

.PHONY: all deps llama build run test test-asan test-tsan fuzz mutate bench install uninstall clean FORCE

all: build

deps:
	@scripts/install_deps.sh

# The llama.cpp build lives in a cache outside the checkout (see scripts/setup_llama.sh).
# Asked every time (a cached build answers at once), so that GPU= takes effect.
$(BUILD)/llama_prefix: scripts/setup_llama.sh FORCE | deps
	@mkdir -p $(BUILD)
	@LLAMA_GPU="$(GPU)" scripts/setup_llama.sh > $(BUILD)/llama_prefix.tmp && \
	  { cmp -s $(BUILD)/llama_prefix.tmp $(BUILD)/llama_prefix && rm $(BUILD)/llama_prefix.tmp || mv $(BUILD)/llama_prefix.tmp $(BUILD)/llama_prefix; }

FORCE:

llama: $(BUILD)/llama_prefix

build: $(BUILD)/llama_prefix
	@cmake -S . -B $(BUILD) -DLLAMA_PREFIX=$$(cat $(BUILD)/llama_prefix) -DSHARED_MODELS_DIR=$(MODELS) $(CMAKE_ARGS) > $(BUILD)/cmake.log || (cat $(BUILD)/cmake.log; exit 1)
	@cmake --build $(BUILD) -j$(JOBS)

run: build
	$(BUILD)/llama_selfmod -m $(MODEL) -p "$(PROMPT)" -n 120 --seed 7 --verbose-events

test: build
	cd $(BUILD) && ctest --output-on-failure -j$(JOBS)

test-asan:
	@$(MAKE) --no-print-directory test BUILD=build-asan CMAKE_ARGS="-DSELFMOD_SANITIZE=ON -DCMAKE_BUILD_TYPE=Debug"

# ThreadSanitizer over the batch, the flag parser, a loaded server and Python's generate_many.
test-tsan: build
	scripts/tsan.sh

# libFuzzer over request bodies and command lines (clang, ASan + UBSan).
fuzz: build
	scripts/fuzz.sh $(FUZZ_SECONDS) $(FUZZ_SEED)

# Deletes each state-restoring statement of the rewinds in turn; every one must fail a test.
mutate: build
	scripts/mutate_restores.sh $(BUILD)

bench: build
	bench/run.sh $(BUILD)

# Installs into $(PREFIX) (default /usr/local; DESTDIR for staging);
# uninstall removes what the last install put there.
PREFIX ?= /usr/local
install: build
	DESTDIR="$(DESTDIR)" cmake --install $(BUILD) --prefix "$(PREFIX)"

uninstall:
	@test -f $(BUILD)/install_manifest.txt || { echo "nothing installed from $(BUILD)"; exit 1; }
	sed 's|^|$(DESTDIR)|' $(BUILD)/install_manifest.txt | xargs -d '\n' rm -f

clean:
	rm -rf build build-asan build-fuzz
