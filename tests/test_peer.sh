#!/usr/bin/env bash
# llama.cpp's own server test suite (tools/server/tests, pytest, from the
# pinned source) against `llama_selfmod serve`: the files in scope (issue
# 14), copied at run time (none of llama.cpp's files are committed), the
# server started through tests/peer/llama_server_shim.py, the tests that
# use the `openai` package skipped (Debian has none), and the tests listed
# in tests/peer/known_failures.txt deselected (one line of reason each,
# also in the README). Everything else must pass.
set -euo pipefail
SM_SRC="${SM_SRC:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)}"
: "${SM_BIN:?SM_BIN must name the llama_selfmod program}"
: "${SM_MODELS:?SM_MODELS must name the models folder}"
PY=/usr/bin/python3
if ! "$PY" -c "import pytest, requests, filelock, wget" 2> /dev/null; then
  echo "test_peer: Debian's python3-pytest python3-requests python3-filelock python3-wget are needed (.ci/run installs them)"
  exit 1
fi
CACHE="${SM_LLAMA_CACHE:-$HOME/.cache/llama_selfmod}"
SUITE="$(ls -d "$CACHE"/src/llama.cpp-*/tools/server/tests 2> /dev/null | head -1)"
[ -d "$SUITE" ] || { echo "test_peer: llama.cpp's source is not in $CACHE/src (scripts/setup_llama.sh)"; exit 1; }

ROOT="$(mktemp -d)"
trap 'rm -rf "$ROOT"' EXIT
# The suite's layout: its chat-template files are ../../../models/templates.
WORK="$ROOT/tools/server/tests"
mkdir -p "$WORK" "$ROOT/models"
cp -r "$SUITE"/. "$WORK/"
ln -s "$SUITE/../../../models/templates" "$ROOT/models/templates"
FILES=(test_tokenize.py test_basic.py test_completion.py test_chat_completion.py test_ctx_shift.py
       test_ignore_eos.py test_metrics.py test_slot_save.py test_security.py test_infill.py)
DESELECT=()
while IFS= read -r line; do
  case "$line" in ''|'#'*) continue ;; esac
  id="${line%%$'\t'*}"
  DESELECT+=(--deselect "unit/$id")
  # the README lists them too, each with its reason
  grep -qF -- "\`${id//|/\\|}\`" "$SM_SRC/README.md" || { echo "test_peer: README does not list $id"; exit 1; }
done < "$SM_SRC/tests/peer/known_failures.txt"
args=()
for f in "${FILES[@]}"; do args+=("unit/$f"); done
cd "$WORK"
export LLAMA_SERVER_BIN_PATH="$SM_SRC/tests/peer/llama_server_shim.py" SM_BIN SM_MODELS
export PYTHONPATH="$SM_SRC/tests/peer/stubs${PYTHONPATH:+:$PYTHONPATH}" LLAMA_CACHE="$WORK/cache"
export PORT="${SM_PEER_PORT:-$((20000 + $$ % 20000))}"
status=0
"$PY" -m pytest -q -p no:cacheprovider --tb=line --tb=line "${args[@]}" "${DESELECT[@]}" "$@" > "$WORK/pytest.log" 2>&1 \
  || status=$?
tail -n 400 "$WORK/pytest.log"
exit "$status"
