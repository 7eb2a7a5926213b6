#!/usr/bin/env bash
# Builds llama.cpp's own llama-server from the same pinned source as the
# library (for benchmarks only), cached beside it; prints its path.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
"$ROOT/scripts/setup_llama.sh" > /dev/null
CACHE="${LLAMA_SELFMOD_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/llama_selfmod}"
SRC="$CACHE/src/llama.cpp-0.5.0"
OUT="$CACHE/build/llama-server-0.5.0"
if [ ! -x "$OUT/bin/llama-server" ]; then
  echo "build_llama_server: building llama-server (several minutes on 2 cores)" >&2
  cmake -S "$SRC" -B "$OUT" -DCMAKE_BUILD_TYPE=Release -DBUILD_SHARED_LIBS=OFF -DGGML_NATIVE=ON -DLLAMA_BUILD_COMMON=ON \
    -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_TOOLS=ON -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=ON -DLLAMA_OPENSSL=OFF \
    -DLLAMA_USE_PREBUILT_UI=OFF -DLLAMA_CURL=OFF -DGGML_CCACHE=ON > "$OUT.log" 2>&1
  cmake --build "$OUT" --target llama-server -j"$(nproc)" >> "$OUT.log" 2>&1 || { tail -20 "$OUT.log" >&2; exit 1; }
fi
echo "$OUT/bin/llama-server"
