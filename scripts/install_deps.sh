#!/usr/bin/env bash
# Installs the Debian packages the build and tests need, if any are missing.
set -euo pipefail
# SM_NO_APT=1: a machine that can fetch nothing (the GPU check brings its own).
[ -n "${SM_NO_APT:-}" ] && exit 0
PACKAGES=(build-essential cmake pkg-config git ccache tmux libcjson-dev libmicrohttpd-dev
          libcmocka-dev libreadline-dev python3 clang libclang-rt-14-dev curl
          python3-pytest python3-requests python3-filelock python3-wget  # tests/test_peer.sh, tests/test_python.sh
          haproxy)                                                        # tests/test_replicas.sh
# npm fetches llama.cpp's source; a node install from elsewhere brings its own.
command -v npm >/dev/null || PACKAGES+=(npm)
missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0
echo "install_deps: installing ${missing[*]}" >&2
SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
