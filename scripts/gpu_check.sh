#!/usr/bin/env bash
# Issue 15's GPU check, prepared for a machine with an NVIDIA GPU (the device
# tool), which can fetch nothing: one run builds llama.cpp with CUDA for its
# GPU and the project against it, runs the suite, then times the loop
# against plain llama.cpp and the server against llama-server with every
# layer on the GPU. Not yet run on a GPU (none was lent): expect to mend it
# on its first call.
#
#   scripts/gpu_check.sh stage     here: put into .gpu (ignored by git) what
#                                  the device needs and cannot fetch: the
#                                  shared models (not the two 19 MB
#                                  shared-vocabulary ones: a carried tree holds
#                                  64 MiB), llama.cpp's source without its docs
#                                  and models, and the build's library packages
#   scripts/gpu_check.sh run OUT   there: run(command='scripts/gpu_check.sh run
#                                  $OUT', carry=['.gpu'], timeout_s=600)
set -uo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT" || exit 1
CACHE=${LLAMA_SELFMOD_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/llama_selfmod}
DEBS=(libcjson1 libcjson-dev libmicrohttpd12 libmicrohttpd-dev libcmocka0 libcmocka-dev libreadline8 libreadline-dev
      libncurses-dev)

if [ "${1:-}" = stage ]; then
  mkdir -p .gpu/models/vocab .gpu/debs
  grep -qx '/.gpu/' .git/info/exclude 2> /dev/null || echo '/.gpu/' >> .git/info/exclude
  for f in ../shared/models/*.gguf; do
    case $f in *sharedvocab*) ;; *) cp -u "$f" .gpu/models/ ;; esac
  done
  cp -u ../shared/models/vocab/*.gguf .gpu/models/vocab/
  scripts/setup_llama.sh > /dev/null || exit 1
  git -C "$CACHE/src/llama.cpp-0.5.0" archive HEAD -- ggml src include common cmake CMakeLists.txt tools vendor \
    licenses LICENSE scripts models/templates | xz -6 > .gpu/llama-src.tar.xz
  (cd .gpu/debs && apt-get download "${DEBS[@]}" > /dev/null) || { echo "gpu_check: apt-get download failed"; exit 1; }
  du -sh .gpu
  exit 0
fi
[ "${1:-}" = run ] || { echo "usage: scripts/gpu_check.sh stage | run OUT" >&2; exit 2; }
OUT=${2:?usage: scripts/gpu_check.sh run OUT}
mkdir -p "$OUT"
exec > >(tee "$OUT/gpu_check.log") 2>&1
MODELS=$ROOT/.gpu/models
[ -f "$MODELS/stories260K.gguf" ] || { echo "gpu_check: no $MODELS (scripts/gpu_check.sh stage, then carry .gpu)"; exit 1; }
step() { echo; echo "== $* ($((SECONDS / 60)) min $((SECONDS % 60)) s)"; }
rate() { sed 's/.*tokens_per_s=\([0-9.]*\).*/\1/'; }

step "the GPU"
nvidia-smi --query-gpu=name,memory.total,driver_version,compute_cap --format=csv | tee "$OUT/gpu.txt"
echo "$(nproc) cores; $(nvcc --version | tail -1)"

step "build: llama.cpp with CUDA for this GPU, and the project (make build GPU=cuda)"
for f in .gpu/debs/*.deb; do dpkg -x "$f" /; done
ldconfig
rm -rf /tmp/llama-src && mkdir -p /tmp/llama-src && tar -xJf .gpu/llama-src.tar.xz -C /tmp/llama-src
SM_NO_APT=1 LLAMA_CPP_DIR=/tmp/llama-src make build GPU=cuda BUILD=build-gpu MODELS="$MODELS" > "$OUT/build.log" 2>&1 ||
  { tail -30 "$OUT/build.log"; exit 1; }
PREFIX=$(cat build-gpu/llama_prefix)
# llama-server from the same CUDA build tree (its CUDA objects are reused)
LLAMA_SERVER=$PREFIX/build/bin/llama-server
{ cmake -S /tmp/llama-src -B "$PREFIX/build" -DLLAMA_BUILD_SERVER=ON && cmake --build "$PREFIX/build" --target llama-server -j"$(nproc)"; } \
  > "$OUT/server_build.log" 2>&1 || { tail -20 "$OUT/server_build.log"; echo "gpu_check: no llama-server"; }

step "the suite on the CUDA build (without the tests of the two models not carried)"
(cd build-gpu && ctest -j8 -E 'test_fusion|test_models' 2>&1 | tail -15)

step "greedy text with every layer on the GPU, then on the CPU"
for ngl in -1 0; do
  build-gpu/llama_selfmod -m "$MODELS/stories260K.gguf" -p "Once upon a time" -n 48 --n-gpu-layers "$ngl" --no-memory 2>&1 |
    tail -2
done

step "the loop against plain llama.cpp, every layer on the GPU (3 alternating rounds, 128 greedy tokens)"
build-gpu/make_random_model "$MODELS/vocab/ggml-vocab-llama-spm.gguf" /tmp/r110m.gguf > /dev/null 2>&1
build-gpu/make_random_model "$MODELS/vocab/synthetic-spm-262144.gguf" /tmp/r110m-v262144.gguf > /dev/null 2>&1
for model in /tmp/r110m.gguf /tmp/r110m-v262144.gguf "$MODELS/stories260K.gguf"; do
  [ -f "$model" ] || { echo "gpu_check: no $model"; continue; }
  for r in 1 2 3; do
    p=$(build-gpu/plain_loop "$model" -n 128 -t 4 -ngl 99 --reps 3 | rate)
    s=$(build-gpu/selfmod_loop "$model" -n 128 -t 4 -ngl 99 --reps 3 | rate)
    echo "$(basename "$model") round $r: plain $p, selfmod $s, ratio $(awk -v a="$s" -v b="$p" 'BEGIN { printf "%.3f", a / b }')"
  done
done

step "the server against llama-server, every layer on the GPU (8 concurrent streams of 48 tokens, then 1)"
if [ -x "$LLAMA_SERVER" ] && command -v node > /dev/null && command -v curl > /dev/null; then
  for streams in 8 1; do
    LLAMA_SERVER=$LLAMA_SERVER SERVER_ARGS="--n-gpu-layers 99" BENCH_THREADS=4 \
      bench/bench_batching.sh build-gpu /tmp/r110m.gguf "$streams" 48 3
  done
else
  echo "gpu_check: llama-server, node or curl missing: the server comparison is left out"
fi
step "done"
