#!/usr/bin/env bash
# What users hit at once: vocabularies without byte tokens, signals and
# closed pipes that must not lose the generation, BOS as a document end,
# the context size asked for, joinable JSON pieces, chat input that must
# not become special tokens. Each check fails on the behaviour before it
# was fixed.
set -u
. "$(dirname "$0")/lib.sh"
TINY="$SM_MODELS/tinystories-656K.gguf"
BABY="$SM_MODELS/babyllama-tok105-1M.gguf"
for m in "$TINY" "$BABY"; do [ -r "$m" ] || fail "test model missing: $m"; done
MEM="$WORK/memory.jsonl"
crashed() { grep -qE 'Segmentation fault|AddressSanitizer|runtime error|GGML_ASSERT|terminate called|Aborted' "$1"; }

# --- Vocabularies without byte tokens: no abort, a note, the text generated.
check_unknown() {
  local model="$1" case="$2"
    "$SM_BIN" -m "$model" -p "$case" -n 8 --seed 1 --no-memory > out.txt 2> err.txt
    code=$?
    crashed err.txt && fail "$(basename "$model") '$case': crashed: $(head -3 err.txt)"
    [ "$code" = 0 ] || fail "$(basename "$model") '$case': exit $code: $(cat err.txt)"
    grep -q "not in the vocabulary of .* became its unknown token" err.txt \
      || fail "$(basename "$model") '$case': no note about the characters: $(cat err.txt)"
}
for case in "Once upon a time (in a land)" "café" "a party 🎉"; do check_unknown "$TINY" "$case"; done
for case in "a party 🎉" $'two\nlines'; do check_unknown "$BABY" "$case"; done
# ... and the server, which llama.cpp's exception used to kill, answers
rm -f serve.log; : > serve.log   # exists before the poll (the child opens it after the fork)
"$SM_BIN" serve -m "$TINY" --host 127.0.0.1 --port 0 --quiet > serve.log 2>&1 &
spid=$!
for _ in $(seq 100); do grep -q "listening on" serve.log && break; sleep 0.1; done
port=$(sed -n 's|.*listening on http://127\.0\.0\.1:\([0-9]*\).*|\1|p' serve.log)
[ -n "$port" ] || { kill $spid; fail "the server on tinystories-656K did not start: $(cat serve.log)"; }
body=$(curl -s -H 'Content-Type: application/json' -d '{"content":"hi (there) café"}' "http://127.0.0.1:$port/tokenize")
chat=$(curl -s -o /dev/null -w '%{http_code}' -H 'Content-Type: application/json' \
  -d '{"messages":[{"role":"user","content":"a (b) é"}],"max_tokens":4}' "http://127.0.0.1:$port/v1/chat/completions")
kill -0 $spid 2>/dev/null || fail "the server died on text outside its vocabulary"
kill $spid; wait $spid
echo "$body" | grep -q '"tokens":\[' || fail "/tokenize: $body"
[ "$chat" = 200 ] || fail "chat with characters outside the vocabulary: HTTP $chat"
# ... and llama.cpp's own log lines stay hidden unless asked for
"$SM_BIN" -m "$BABY" -p "Once" -n 4 --seed 1 --no-memory > /dev/null 2> err.txt
grep -q "bad special token\|^load:" err.txt && fail "llama.cpp's log lines shown without --verbose: $(cat err.txt)"
"$SM_BIN" -m "$BABY" -p "Once" -n 4 --seed 1 --no-memory --verbose > /dev/null 2> err.txt
grep -q "load" err.txt || fail "--verbose does not show llama.cpp's log lines"
echo "ok: byte-less vocabularies"

# --- Flags that do nothing in this combination are said to do nothing.
"$SM_BIN" -m "$STORIES" -p "Once" -n 2 --max-retractions 5 --critical-threshold 0.2 --no-memory > /dev/null 2> err.txt
grep -q "warning: --max-retractions has no effect" err.txt || fail "no warning for --max-retractions: $(cat err.txt)"
grep -q "warning: --critical-threshold has no effect" err.txt || fail "no warning for --critical-threshold"
"$SM_BIN" -m "$STORIES" -p "Once" -n 2 --max-retractions 5 --aggressive --no-memory > /dev/null 2> err.txt
grep -q "warning" err.txt && fail "a warning with retraction on: $(cat err.txt)"
echo "ok: inert flags"

# --- A closed pipe: the generation is recorded, the exit is non-zero.
rm -f "$MEM"
"$SM_BIN" -m "$STORIES" -p "Once" -n 200 --seed 1 --json-stream --memory-file "$MEM" 2> err.txt | head -1 > /dev/null
code=${PIPESTATUS[0]}
[ "$code" != 0 ] || fail "closed pipe: exit 0"
[ "$code" -lt 128 ] || fail "closed pipe: killed by signal $((code - 128))"
[ "$(wc -l < "$MEM")" = 1 ] || fail "closed pipe: no memory record"
grep -q "cannot write the output" err.txt || fail "closed pipe: no message: $(cat err.txt)"
echo "ok: closed pipe"

# --- A full disk, for the output and for --help.
"$SM_BIN" -m "$STORIES" -p "Once" -n 8 --seed 1 --no-memory > /dev/full 2> err.txt && fail "/dev/full: exit 0"
grep -q "No space left" err.txt || fail "/dev/full: no message: $(cat err.txt)"
"$SM_BIN" --help > /dev/full 2> err.txt && fail "--help > /dev/full: exit 0"
grep -q "cannot write to standard output" err.txt || fail "--help > /dev/full: no message"
echo "ok: write errors"

# --- SIGTERM and SIGHUP stop like Ctrl-C: text written, record kept.
for sig in TERM HUP; do
  rm -f "$MEM"; : > out.jsonl
  "$SM_BIN" -m "$STORIES" -p "Once" -n -1 --no-stop-at-bos --ctx-size 2048 --threads 1 --seed 1 --json-stream \
    --memory-file "$MEM" > out.jsonl 2> /dev/null &
  pid=$!
  for _ in $(seq 500); do [ "$(wc -l < out.jsonl)" -ge 3 ] && break; sleep 0.01; done
  kill -"$sig" "$pid"
  wait "$pid"
  code=$?
  want=$(( 128 + $(kill -l "$sig") ))
  [ "$code" = "$want" ] || fail "SIG$sig: exit $code, expected $want"
  tail -1 out.jsonl | grep -q '"type":"done".*"stop_reason":"cancelled"' || fail "SIG$sig: no done line: $(tail -c 300 out.jsonl)"
  grep -q '"stop_reason":"cancelled"' "$MEM" || fail "SIG$sig: no memory record"
done
echo "ok: SIGTERM, SIGHUP"

# --- BOS ends a story (llama2.c's models start the next one there).
"$SM_BIN" -m "$STORIES" -p "Once upon a time" -n -1 -t 0 --no-selfmod --json-stream --no-memory > out.jsonl 2> /dev/null
tail -1 out.jsonl | grep -q '"stop_reason":"bos"' || fail "BOS does not end the generation: $(tail -c 300 out.jsonl)"
"$SM_BIN" -m "$STORIES" -p "Once upon a time" -n -1 -t 0 --no-selfmod --no-stop-at-bos --ctx-size 512 --json-stream \
  --no-memory > out.jsonl 2> /dev/null
tail -1 out.jsonl | grep -q '"stop_reason":"context_full"' || fail "--no-stop-at-bos does not go on"
# serve goes on past BOS as llama-server does, unless --stop-at-bos.
. "$SM_SRC/tests/serve_helpers.sh"
for flag in "" --stop-at-bos; do
  "$SM_BIN" serve -m "$STORIES" --port 0 --parallel 1 --ctx-size 512 $flag > serve.log 2>&1 &
  spid=$!
  port=$(listening_port serve.log $spid) || fail "serve $flag did not start: $(cat serve.log)"
  body='{"prompt": "Once upon a time", "n_predict": 400, "temperature": 0}'
  out=$(curl -s "http://127.0.0.1:$port/completion" -H 'Content-Type: application/json' -d "$body")
  kill $spid; wait $spid 2> /dev/null
  if [ -z "$flag" ]; then
    echo "$out" | grep -q '"tokens_predicted":400' || fail "serve stopped before n_predict: $(echo "$out" | cut -c1-200)"
  else
    echo "$out" | grep -q '"stop_type":"eos"' && echo "$out" | grep -q '"stop_reason":"bos"' \
      || fail "serve --stop-at-bos went past BOS: $(echo "$out" | cut -c1-200)"
  fi
done
echo "ok: BOS"

# --- The context size asked for is the one used.
"$SM_BIN" -m "$STORIES" -p "Once upon a time" -n -1 -t 0 --no-selfmod --no-stop-at-bos --ctx-size 16 --json-stream \
  --no-memory > out.jsonl 2> /dev/null
n_prompt=$(head -1 out.jsonl | grep -o '"n_prompt_tokens":[0-9]*' | cut -d: -f2)
n_gen=$(grep -c '"type":"token"' out.jsonl)
[ "$((n_prompt + n_gen))" = 16 ] || fail "--ctx-size 16 held $n_prompt + $n_gen tokens"
echo "ok: --ctx-size"

# --- Joining the token events' text rebuilds the text, split characters too
# (with this seed the chat model writes two characters in two tokens each).
for model in "$STORIES" "$CHAT"; do
  "$SM_BIN" -m "$model" -p "Le café était très" -n 40 -t 1.5 --seed 4 --preset fixed --json-stream --no-memory > out.jsonl 2> /dev/null
  [ "$model" = "$CHAT" ] && { grep -q '"piece_bytes"' out.jsonl || fail "no split character to join: the check would prove nothing"; }
  python3 - out.jsonl <<'EOF' || fail "$(basename "$model"): joined token text differs from the final text"
import json, sys
events = [json.loads(line) for line in open(sys.argv[1])]
kept = {}
for e in events:
    if e["type"] == "token":
        kept[e["index"]] = e["text"]
    elif e["type"] in ("retraction", "backtrack"):
        kept = {i: t for i, t in kept.items() if i < e["index"]}
done = events[-1]
joined = "".join(kept[i] for i in sorted(kept))
sys.exit(0 if done["text"].startswith(joined) and len(done["text"].encode()) - len(joined.encode()) < 4 else 1)
EOF
done
echo "ok: joinable text"

# --- Chat: the model's own labels, EXIT, and no special tokens from a message.
printf 'hello\nEXIT\nnot reached\n' | "$SM_BIN" -m "$CHAT" -n 8 --seed 1 --no-memory > out.txt 2> err.txt
[ $? = 0 ] || fail "chat EXIT: non-zero exit"
grep -q "format: jinja (the model's own)" err.txt || fail "chat: not the model's template: $(head -2 err.txt)"
printf 'hello\nEXIT\n' | "$SM_BIN" -m "$CHAT" -n 8 --seed 1 --no-memory --no-jinja > out.txt 2> err.txt
grep -q 'format: plain "User: ...\\nBot:" (the labels of the model' err.txt || fail "chat --no-jinja: not the model's labels: $(head -2 err.txt)"
[ "$(grep -c 'tokens,' err.txt)" = 1 ] || fail "chat: EXIT did not leave"
echo "reliability: all checks passed"
