#!/usr/bin/env bash
# On a real terminal (tmux, 60 columns, so lines wrap) text streams as it is
# generated and each retraction visibly erases the removed text: the screen
# at the end shows exactly the final text (the same bytes a pipe receives),
# and the raw stream shows text was printed and then erased.
set -u
command -v tmux >/dev/null || { echo "FAIL: tmux is not installed (scripts/install_deps.sh installs it)"; exit 1; }
tmp=$(mktemp -d); sock="sm_test_$$"
trap 'tmux -L "$sock" kill-server 2>/dev/null; rm -rf "$tmp"' EXIT
fail() { echo "FAIL: $*"; exit 1; }
cmd=("$SM_BIN" -m "$SM_MODELS/stories260K.gguf" -p "Once upon a time" -n 80 --seed 11 --threads 1
     --aggressive --confidence-threshold 0.9 --sharpen-threshold 0.95 --critical-threshold 0.9 --max-retractions 3 --quiet --no-color)

"${cmd[@]}" --memory-file "$tmp/mem.jsonl" > "$tmp/ref.txt" || fail "reference run"
retractions=$(python3 -c 'import json,sys; print(json.loads(open(sys.argv[1]).read().splitlines()[-1])["retractions"])' "$tmp/mem.jsonl")
[ "$retractions" -gt 0 ] || fail "the run made no retraction, nothing to erase"

printf -v line '%q ' "${cmd[@]}"
# The program waits until the raw stream is being recorded.
tmux -L "$sock" new-session -d -x 60 -y 40 \
    "while [ ! -f $tmp/go ]; do sleep 0.05; done; $line --no-memory; touch $tmp/done; sleep 60"
tmux -L "$sock" pipe-pane -o "cat >> $tmp/raw"
touch "$tmp/go"
for _ in $(seq 300); do [ -f "$tmp/done" ] && break; sleep 0.1; done
[ -f "$tmp/done" ] || fail "the terminal run did not finish"
tmux -L "$sock" capture-pane -p -J > "$tmp/screen"

python3 - "$tmp/ref.txt" "$tmp/screen" "$tmp/raw" <<'PY' || exit 1
import sys
ref = open(sys.argv[1], encoding="utf-8").read().rstrip("\n")
screen = open(sys.argv[2], encoding="utf-8").read().rstrip()
raw = open(sys.argv[3], "rb").read()
screen_lines = [l.rstrip() for l in screen.split("\n")]
ref_lines = [l.rstrip() for l in ref.split("\n")]
if screen_lines != ref_lines:
    print("FAIL: the screen differs from the final text\n--- screen:\n%s\n--- final text:\n%s" % (screen, ref))
    sys.exit(1)
# Streaming: the raw output is longer than the final text and moves the
# cursor back (CSI ... A / D / J / K) to erase.
if len(raw) <= len(ref.encode()) or b"\x1b[" not in raw:
    print("FAIL: no erase sequences in the terminal stream (%d bytes for %d of text)" % (len(raw), len(ref.encode())))
    sys.exit(1)
print("ok: screen == final text (%d lines); the stream erased text" % len(ref_lines))
PY
