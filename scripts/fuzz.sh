#!/usr/bin/env bash
# Builds the libFuzzer targets in fuzz/ with clang (ASan + UBSan) and runs
# each for SECONDS, seeded, from the committed corpus in fuzz/corpus/.
# Units found interesting go to a scratch copy of the corpus; a crash
# leaves its input as build-fuzz/crash-* and fails the run.
#
#   scripts/fuzz.sh [SECONDS [SEED]]      (defaults: 60, 1)
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
SECONDS_EACH="${1:-60}"
SEED="${2:-1}"
BUILD="$ROOT/build-fuzz"
PREFIX="$(cat "$ROOT/build/llama_prefix" 2>/dev/null || "$ROOT/scripts/setup_llama.sh")"
export SM_MODELS="${SM_MODELS:-$ROOT/../shared/models}"
export LSAN_OPTIONS="suppressions=$ROOT/.ci/lsan.supp:print_suppressions=0"
export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1"

CC=clang CXX=clang++ cmake -S "$ROOT" -B "$BUILD" -DLLAMA_PREFIX="$PREFIX" -DSHARED_MODELS_DIR="$SM_MODELS" \
  -DSELFMOD_FUZZ=ON -DCMAKE_BUILD_TYPE=Debug > "$BUILD.log" 2>&1 || { cat "$BUILD.log"; exit 1; }
cmake --build "$BUILD" -j"$(nproc)" --target fuzz_request fuzz_flags >> "$BUILD.log" 2>&1 || { tail -40 "$BUILD.log"; exit 1; }

# a code model's vocabulary (FIM tokens) for /infill's prompt builder
"$ROOT/build/make_random_model" "$SM_MODELS/vocab/ggml-vocab-llama-spm.gguf" "$BUILD/fim.gguf" --fim --layers 1 \
  --embd 32 --ff 64 --heads 1 --ctx 512 > /dev/null
export SM_FIM_MODEL="$BUILD/fim.gguf"

status=0
for target in fuzz_request fuzz_flags; do
  corpus="$(mktemp -d)"
  cp "$ROOT/fuzz/corpus/$target"/* "$corpus/"
  log="$BUILD/$target.log"
  if (cd "$BUILD" && "./$target" -seed="$SEED" -max_total_time="$SECONDS_EACH" -timeout=20 -rss_limit_mb=4096 \
        -print_final_stats=1 "$corpus" > "$log" 2>&1); then
    runs="$(sed -n 's/^stat::number_of_executed_units: *//p' "$log")"
    cover="$(grep -o 'cov: [0-9]*' "$log" | tail -1)"
    echo "fuzz: $target: $runs inputs in ${SECONDS_EACH} s (seed $SEED, $cover), no crash"
  else
    echo "fuzz: $target FAILED; its log: $log"
    grep -m1 -A30 "ERROR\|==ERROR\|runtime error\|deadly signal" "$log" || tail -30 "$log"
    status=1
  fi
  rm -rf "$corpus"
done
exit "$status"
