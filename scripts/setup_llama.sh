#!/usr/bin/env bash
# Fetch, verify and build llama.cpp (libllama + ggml, CPU, and ggml's RPC
# backend with its server program, bin/ggml-rpc-server) into a cache outside
# the checkout, once. Prints the install prefix on its last line of stdout.
#
#   LLAMA_CPP_DIR=/path/to/llama.cpp   use an existing source tree instead of npm
#   LLAMA_SELFMOD_CACHE=/path          cache root (default ~/.cache/llama_selfmod)
#   LLAMA_GPU=cuda                     also build ggml's CUDA backend (needs nvcc;
#                                      `make build GPU=cuda`); a build of its own
#   LLAMA_CUDA_ARCHS=90                the GPU generations to compile for (default:
#                                      this machine's GPU)
set -euo pipefail

LLAMA_VERSION=0.5.0
NPM_PACKAGE=node-llama-cpp@3.22.1
NPM_SHA256=a0d9dd80eacd2ab1cfe71aee57ac8a806487fd70b3d2a38fbec637752d9e5c5f

CACHE="${LLAMA_SELFMOD_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/llama_selfmod}"
CMAKE_OPTS=(-DCMAKE_BUILD_TYPE=Release -DBUILD_SHARED_LIBS=ON -DGGML_NATIVE=ON
  -DLLAMA_BUILD_COMMON=ON -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_TOOLS=ON -DGGML_RPC=ON
  -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=OFF -DLLAMA_BUILD_APP=OFF
  -DLLAMA_OPENSSL=OFF -DLLAMA_USE_PREBUILT_UI=OFF -DGGML_CCACHE=ON -DCMAKE_BUILD_RPATH_USE_ORIGIN=ON)

log() { echo "setup_llama: $*" >&2; }

case "${LLAMA_GPU:-}" in
  "") ;;
  cuda)
    command -v nvcc > /dev/null || { log "GPU=cuda needs the CUDA toolkit's nvcc on PATH"; exit 1; }
    archs="${LLAMA_CUDA_ARCHS:-}"
    if [ -z "$archs" ]; then
      nvidia-smi -L > /dev/null 2>&1 || { log "GPU=cuda: no GPU here; give LLAMA_CUDA_ARCHS (e.g. 90 for an H100/H200) to build for one elsewhere"; exit 1; }
      archs=native
    fi
    CMAKE_OPTS+=(-DGGML_CUDA=ON "-DCMAKE_CUDA_ARCHITECTURES=$archs") ;;
  *) log "GPU=${LLAMA_GPU}: only cuda is known (or leave it empty for the CPU build)"; exit 1 ;;
esac

if [ -n "${LLAMA_CPP_DIR:-}" ]; then
  [ -f "$LLAMA_CPP_DIR/include/llama.h" ] || { log "LLAMA_CPP_DIR=$LLAMA_CPP_DIR has no include/llama.h"; exit 1; }
  SRC="$(cd "$LLAMA_CPP_DIR" && pwd)"
  SRC_KEY="custom-$(echo "$SRC" | sha256sum | cut -c1-12)"
else
  SRC="$CACHE/src/llama.cpp-$LLAMA_VERSION"
  SRC_KEY="$LLAMA_VERSION"
  if [ ! -f "$SRC/include/llama.h" ]; then
    command -v npm >/dev/null || { log "npm is needed to fetch $NPM_PACKAGE (apt-get install npm)"; exit 1; }
    tmp="$(mktemp -d)"; trap 'rm -rf "$tmp"' EXIT
    log "fetching $NPM_PACKAGE"
    (cd "$tmp" && npm pack --silent "$NPM_PACKAGE" >/dev/null)
    tgz="$(ls "$tmp"/*.tgz)"
    echo "$NPM_SHA256  $tgz" | sha256sum -c --quiet - || { log "checksum mismatch for $tgz"; exit 1; }
    tar -xzf "$tgz" -C "$tmp" package/llama/gitRelease.bundle package/llama/llama.cpp.info.json
    grep -q "\"v$LLAMA_VERSION\"" "$tmp/package/llama/llama.cpp.info.json" || { log "bundle is not v$LLAMA_VERSION"; exit 1; }
    mkdir -p "$CACHE/src"
    rm -rf "$SRC.partial"
    git clone -q "$tmp/package/llama/gitRelease.bundle" "$SRC.partial" 2>/dev/null
    mv "$SRC.partial" "$SRC"
  fi
fi

# GGML_NATIVE tunes for this CPU, so the CPU's feature flags are part of the key.
CPU_KEY="$(grep -m1 '^flags' /proc/cpuinfo 2>/dev/null | sha256sum | cut -c1-8)"
OPT_KEY="$(printf '%s ' "${CMAKE_OPTS[@]}" | sha256sum | cut -c1-8)"
PREFIX="$CACHE/build/$SRC_KEY-$OPT_KEY-$CPU_KEY"

if [ ! -f "$PREFIX/.complete" ]; then
  log "building llama.cpp ($SRC_KEY) into $PREFIX (about 2 minutes on 2 cores; with CUDA an hour)"
  mkdir -p "$PREFIX" # an interrupted build goes on where it stopped
  LINK_OPTS=()
  # CUDA on a machine without the driver (building for another one's GPU):
  # programs link against the toolkit's stub of libcuda.so.1.
  if [ "${LLAMA_GPU:-}" = cuda ] && ! ldconfig -p 2> /dev/null | grep -q 'libcuda\.so\.1 '; then
    stub="$(dirname "$(command -v nvcc)")/../lib64/stubs/libcuda.so"
    [ -f "$stub" ] || { log "GPU=cuda: no driver here and no stub at $stub"; exit 1; }
    mkdir -p "$PREFIX/stubs"
    ln -sf "$(readlink -f "$stub")" "$PREFIX/stubs/libcuda.so.1"
    LINK_OPTS=("-DCMAKE_EXE_LINKER_FLAGS=-Wl,-rpath-link,$PREFIX/stubs")
  fi
  export CCACHE_BASEDIR="$SRC" CCACHE_DIR="$CACHE/ccache"
  cmake -S "$SRC" -B "$PREFIX/build" "${CMAKE_OPTS[@]}" "${LINK_OPTS[@]}" -DCMAKE_INSTALL_PREFIX="$PREFIX" >"$PREFIX/cmake.log" 2>&1 \
    || { log "cmake configure failed, see $PREFIX/cmake.log"; exit 1; }
  # (the tools are configured only for ggml-rpc-server: nothing else of them is built)
  cmake --build "$PREFIX/build" --target llama llama-common ggml-rpc-server -j"$(nproc)" >>"$PREFIX/cmake.log" 2>&1 \
    || { log "build failed, see $PREFIX/cmake.log"; exit 1; }
  mkdir -p "$PREFIX/include" "$PREFIX/lib" "$PREFIX/bin"
  # (a link: the program finds its libraries beside the real file, $ORIGIN)
  ln -sf ../build/bin/ggml-rpc-server "$PREFIX/bin/ggml-rpc-server"
  cp "$SRC"/include/llama.h "$SRC"/include/llama-cpp.h "$PREFIX/include/" 2>/dev/null || cp "$SRC"/include/llama.h "$PREFIX/include/"
  cp "$SRC"/ggml/include/*.h "$PREFIX/include/"
  find "$PREFIX/build" -name '*.so*' \( -type f -o -type l \) -exec cp -P {} "$PREFIX/lib/" \;
  touch "$PREFIX/.complete"
fi
# llama.cpp's common library (chat templates, JSON schema to grammar) is
# reached through src/jinja.cpp, which needs its headers.
if [ ! -f "$PREFIX/include/common/chat.h" ]; then
  mkdir -p "$PREFIX/include/common/jinja"
  cp "$SRC"/common/*.h "$SRC"/common/*.hpp "$PREFIX/include/common/"
  cp "$SRC"/common/jinja/*.h "$PREFIX/include/common/jinja/"
fi
echo "$PREFIX"
