#!/usr/bin/env bash
# ThreadSanitizer over what runs on several threads: the batch (its decoder
# thread and the sessions on it), the flag parser, the server under eight
# clients at once (batched slots, streams cut off, the LLooM's tree, /metrics),
# and Python's generate_many (a thread per run, in libselfmod_cli). This
# project's code is instrumented; llama.cpp is not (.ci/tsan.supp). Any
# report fails the run.
#
#   scripts/tsan.sh
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
BUILD="$ROOT/build-tsan"
PREFIX="$(cat "$ROOT/build/llama_prefix" 2>/dev/null || "$ROOT/scripts/setup_llama.sh")"
export SM_MODELS="${SM_MODELS:-$ROOT/../shared/models}"
export TSAN_OPTIONS="suppressions=$ROOT/.ci/tsan.supp:halt_on_error=1:exitcode=66:report_signal_unsafe=0"
export OMP_WAIT_POLICY=PASSIVE
TSAN_LIB="$(gcc -print-file-name=libtsan.so)"
PYTHON=/usr/bin/python3 # Debian's: pyenv builds crash under an LD_PRELOADed runtime

mkdir -p "$BUILD"
cmake -S "$ROOT" -B "$BUILD" -DLLAMA_PREFIX="$PREFIX" -DSHARED_MODELS_DIR="$SM_MODELS" \
  -DCMAKE_BUILD_TYPE=RelWithDebInfo -DCMAKE_C_FLAGS=-fsanitize=thread -DCMAKE_CXX_FLAGS=-fsanitize=thread \
  -DCMAKE_EXE_LINKER_FLAGS=-fsanitize=thread -DCMAKE_SHARED_LINKER_FLAGS=-fsanitize=thread > "$BUILD/cmake.log" 2>&1 \
  || { cat "$BUILD/cmake.log"; exit 1; }
cmake --build "$BUILD" -j"$(nproc)" --target llama_selfmod selfmod_cli test_batch test_flags > "$BUILD/build.log" 2>&1 \
  || { tail -40 "$BUILD/build.log"; exit 1; }

# Some kernels map memory where ThreadSanitizer's runtime cannot live (high
# mmap_rnd_bits): there it runs without address randomisation, and where the
# machine forbids that too, it says so and stops.
RUN=()
if ! (cd "$BUILD" && ./test_flags > /dev/null 2> "$BUILD/probe.log") &&
   grep -q "unexpected memory mapping" "$BUILD/probe.log"; then
  RUN=(setarch "$(uname -m)" -R)
  if ! "${RUN[@]}" true 2> /dev/null; then
    echo "tsan: NOT RUN: this kernel's address layout does not fit ThreadSanitizer and setarch -R is forbidden"
    exit 0
  fi
fi

fail() { echo "tsan: $1 FAILED; its log: $2"; grep -m1 -A40 "WARNING: ThreadSanitizer" "$2" || tail -30 "$2"; exit 1; }

for t in test_flags test_batch; do
  (cd "$BUILD" && "${RUN[@]}" "./$t" > "$t.log" 2>&1) || fail "$t" "$BUILD/$t.log"
  echo "tsan: $t: no race"
done

log="$BUILD/server.log"
port="$("$PYTHON" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
"${RUN[@]}" "$BUILD/llama_selfmod" serve --models "$SM_MODELS/stories260K.gguf,llama2xs-salty-280K.gguf" --port "$port" \
  --parallel 4 --threads 2 --metrics --slots > "$log" 2>&1 &
server=$!
trap 'kill "$server" 2>/dev/null || true' EXIT
for _ in $(seq 100); do
  curl -sf "http://127.0.0.1:$port/health" > /dev/null && break
  kill -0 "$server" 2>/dev/null || fail "serve (start)" "$log"
  sleep 0.2
done
"$PYTHON" "$ROOT/scripts/tsan_load.py" "$port" > "$BUILD/load.log" 2>&1 || { cat "$BUILD/load.log"; fail "serve (load)" "$log"; }
kill -INT "$server"
wait "$server" || fail "serve" "$log"
trap - EXIT
grep -q "WARNING: ThreadSanitizer" "$log" && fail "serve" "$log"
echo "tsan: serve: 96 requests from 8 clients at once, no race"

log="$BUILD/python.log"
"${RUN[@]}" env LD_PRELOAD="$TSAN_LIB" SELFMOD_LIBRARY_PATH="$BUILD" PYTHONPATH="$ROOT/python" PYTHONDONTWRITEBYTECODE=1 \
  "$PYTHON" "$ROOT/scripts/tsan_many.py" > "$log" 2>&1 || fail "python generate_many" "$log"
echo "tsan: python generate_many: no race"
