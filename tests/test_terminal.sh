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

# Ctrl-C at the chat prompt clears what was typed (the chat goes on); on an
# empty line it leaves with 130, as a shell does. (A tmux server of its own.)
sock2="${sock}_chat"
trap 'tmux -L "$sock" kill-server 2>/dev/null; tmux -L "$sock2" kill-server 2>/dev/null; rm -rf "$tmp"' EXIT
tmux -L "$sock2" new-session -d -x 80 -y 30 \
    "$SM_BIN -m $SM_MODELS/cardputer-chat-3M.gguf -n 6 --seed 1 --threads 1 --no-memory --no-color; echo EXIT=\$? > $tmp/chat_exit; sleep 60"
for _ in $(seq 200); do tmux -L "$sock2" capture-pane -p 2>/dev/null | grep -q '^>' && break; sleep 0.1; done
tmux -L "$sock2" capture-pane -p | grep -q '^>' || fail "the chat prompt never showed: $(tmux -L "$sock2" capture-pane -p 2>&1)"
tmux -L "$sock2" send-keys "a line to throw away"
sleep 0.3
tmux -L "$sock2" send-keys C-c
sleep 0.3
tmux -L "$sock2" send-keys "hi" Enter
for _ in $(seq 100); do [ "$(tmux -L "$sock2" capture-pane -p | grep -c 'tokens,')" -ge 1 ] && break; sleep 0.1; done
tmux -L "$sock2" capture-pane -p | grep -q 'tokens,' || fail "Ctrl-C at the prompt ended the chat: $(tmux -L "$sock2" capture-pane -p)"
tmux -L "$sock2" capture-pane -p | grep -q '^> a line to throw away^C' || fail "the cleared line is not shown as cancelled"
sleep 0.3
tmux -L "$sock2" send-keys C-c
for _ in $(seq 50); do [ -f "$tmp/chat_exit" ] && break; sleep 0.1; done
[ "$(cat "$tmp/chat_exit" 2>/dev/null)" = "EXIT=130" ] || fail "Ctrl-C on an empty prompt: $(cat "$tmp/chat_exit" 2>/dev/null || echo 'did not leave')"
echo "ok: Ctrl-C clears the prompt, and leaves with 130 on an empty one"
