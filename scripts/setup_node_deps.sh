#!/usr/bin/env bash
# Installs what the server tests need and prints the node_modules folder:
#   - the npm packages of tests/server/package.json, into a cache outside the
#     checkout ($SM_NODE_DEPS, default ~/.cache/llama_selfmod/node), re-installed
#     only when package.json changes;
#   - Debian's chromium (for the web page test), when /usr/bin/chromium is missing.
# Set SM_SKIP_CHROMIUM=1 to skip the browser.
set -euo pipefail

SRC="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DEPS="${SM_NODE_DEPS:-${HOME:-/root}/.cache/llama_selfmod/node}"
PKG="$SRC/tests/server/package.json"

log() { echo "setup_node_deps: $*" >&2; }

install_chromium() {
  [ "${SM_SKIP_CHROMIUM:-0}" = 1 ] && return 0
  [ -x /usr/bin/chromium ] && return 0
  log "installing Debian's chromium"
  local sudo=""
  [ "$(id -u)" -ne 0 ] && sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq chromium >/dev/null
}

install_npm_packages() {
  command -v npm >/dev/null || { log "npm is missing (apt-get install npm)"; return 1; }
  mkdir -p "$DEPS"
  if [ -d "$DEPS/node_modules" ] && cmp -s "$PKG" "$DEPS/package.json"; then
    return 0
  fi
  log "installing npm packages into $DEPS"
  cp "$PKG" "$DEPS/package.json"
  rm -f "$DEPS/package-lock.json"
  (cd "$DEPS" && npm install --no-audit --no-fund --loglevel=error >&2) || {
    rm -f "$DEPS/package.json" # so the next run tries again
    return 1
  }
}

install_npm_packages
install_chromium
echo "$DEPS/node_modules"
