#!/usr/bin/env bash
# End-to-end test of `llama_selfmod serve` on 127.0.0.1: three servers (plain,
# --api-key, two fused models) and the node tests in tests/server/ (the
# official openai client, raw HTTP, concurrency, and the web page in headless
# Chromium). Screenshots: server-screenshot.png and server-screenshot-loom.png
# in the current directory (the build folder under ctest).
set -euo pipefail

SM_SRC="${SM_SRC:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)}"
: "${SM_BIN:?SM_BIN must name the llama_selfmod program}"
: "${SM_MODELS:?SM_MODELS must name the models folder}"
for m in stories260K llama2xs-salty-280K; do
  [ -f "$SM_MODELS/$m.gguf" ] || { echo "test_server: missing $SM_MODELS/$m.gguf" >&2; exit 1; }
done

NODE_MODULES="$("$SM_SRC/scripts/setup_node_deps.sh")"
export NODE_PATH="$NODE_MODULES"

WORK="$(mktemp -d)"
PIDS=()
cleanup() {
  local pid
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
  rm -rf "$WORK"
}
trap cleanup EXIT

# start_server NAME ARGS...: starts it on a free port (--port 0) and sets
# the variable URL_<NAME> once it listens.
start_server() {
  local name="$1"; shift
  local log="$WORK/$name.log"
  : > "$log"   # the child opens it after the fork: the poll below must not find it missing
  "$SM_BIN" serve --host 127.0.0.1 --port 0 --threads 1 --web-dir "$SM_SRC/web" "$@" >"$log" 2>&1 &
  PIDS+=("$!")
  local pid="$!" port=""
  for _ in $(seq 1 300); do
    port="$(sed -n 's|.*listening on http://127\.0\.0\.1:\([0-9]*\).*|\1|p' "$log")"
    [ -n "$port" ] && break
    if ! kill -0 "$pid" 2>/dev/null; then
      echo "test_server: the $name server exited:" >&2; cat "$log" >&2; exit 1
    fi
    sleep 0.1
  done
  [ -n "$port" ] || { echo "test_server: the $name server did not start:" >&2; cat "$log" >&2; exit 1; }
  printf -v "URL_$name" 'http://127.0.0.1:%s' "$port"
  printf -v "PID_$name" '%s' "$pid"
}

API_KEY="test-key-$RANDOM$RANDOM"
mkdir -p "$WORK/slots"
printf 'not a slot file' > "$WORK/slots/garbage.bin"
start_server plain -m "$SM_MODELS/stories260K.gguf" --parallel 2 --slot-save-path "$WORK/slots"
printf '%s\n' "$API_KEY" > "$WORK/api-key"   # from a file: a key on the command line shows in ps
start_server keyed -m "$SM_MODELS/stories260K.gguf" --parallel 1 --api-key-file "$WORK/api-key" --alias tiny-stories --quiet \
  --preset original
# A Jinja chat template from a file (llama-server's --chat-template-file).
# It writes what chat_template_kwargs give it after the assistant's tag.
printf '%s' '{% for m in messages %}<{{ m.role }}>{{ m.content }}</{{ m.role }}>{% endfor %}{% if add_generation_prompt %}<assistant>{% endif %}{{ mood | default("") }}{% if enable_thinking is defined and not enable_thinking %}/no_think{% endif %}' \
  > "$WORK/template.jinja"
start_server templated -m "$SM_MODELS/cardputer-chat-3M.gguf" --parallel 1 --quiet --chat-template-file "$WORK/template.jinja"
# ... and with serve's --chat-template-kwargs
start_server kwargs -m "$SM_MODELS/stories260K.gguf" --parallel 1 --quiet --chat-template-file "$WORK/template.jinja" \
  --chat-template-kwargs '{"mood": "calm", "enable_thinking": false}'
export SM_TEMPLATE_FILE="$WORK/template.jinja"
# Tool calls need a template that renders tools: Qwen2.5's, from llama.cpp's
# pinned source in the cache (its files are never committed here).
TOOLS_TEMPLATE="$(ls "${SM_LLAMA_CACHE:-$HOME/.cache/llama_selfmod}"/src/llama.cpp-*/models/templates/Qwen-Qwen2.5-7B-Instruct.jinja | head -1)"
start_server tools -m "$SM_MODELS/stories260K.gguf" --parallel 1 --quiet --chat-template-file "$TOOLS_TEMPLATE"
start_server fused --models "$SM_MODELS/stories260K.gguf,llama2xs-salty-280K" --parallel 2
# Two vocabularies: aidreams260K follows stories260K's text on sequences of
# its own in the same batch.
start_server aligned --models "$SM_MODELS/stories260K.gguf,aidreams260K" --fusion-align --parallel 2
# A model slow enough (a random-weight 110M Llama, about 20 tokens/s on one
# thread) that a generation is still running when its client leaves.
SLOW_MODEL="${SM_RANDOM_MODEL:-$HOME/.cache/llama_selfmod/models/random-llama-110M-f16.gguf}"
if [ ! -f "$SLOW_MODEL" ]; then
  mkdir -p "$(dirname "$SLOW_MODEL")"
  "$(dirname "$SM_BIN")/make_random_model" "$SM_MODELS/vocab/ggml-vocab-llama-spm.gguf" "$SLOW_MODEL" > /dev/null
fi
start_server slow -m "$SLOW_MODEL" --parallel 1 --quiet
# A code model's vocabulary (fill-in-the-middle tokens) on random weights, for
# /infill, in both orders (--spm-infill: suffix first).
"$(dirname "$SM_BIN")/make_random_model" "$SM_MODELS/vocab/ggml-vocab-llama-spm.gguf" "$WORK/fim.gguf" --fim \
  --layers 2 --embd 64 --ff 128 --heads 2 --ctx 4096 > /dev/null
start_server infill -m "$WORK/fim.gguf" --parallel 1 --ctx-size 2048 --quiet
start_server infill_spm -m "$WORK/fim.gguf" --parallel 1 --ctx-size 2048 --spm-infill --quiet
# ... and a trained one: stories260K with FIM tokens named, as llama.cpp's stories260K-infill
"$(dirname "$SM_BIN")/add_fim_tokens" "$SM_MODELS/stories260K.gguf" "$WORK/stories-fim.gguf" 3 4 5
start_server infill_stories -m "$WORK/stories-fim.gguf" --parallel 1 --ctx-size 2048 --quiet
# Two threads: llama.cpp's OpenMP team has a worker to count (below).
start_server teams -m "$SM_MODELS/stories260K.gguf" --parallel 2 --threads 2 --quiet
start_server guarded -m "$SM_MODELS/stories260K.gguf" --parallel 1 --header-timeout 1 --max-connections 8 \
  --cors-origins http://allowed.example --quiet

export SM_SERVER_URL="$URL_plain" SM_SERVER_KEY_URL="$URL_keyed" SM_SERVER_FUSED_URL="$URL_fused" SM_SERVER_ALIGNED_URL="$URL_aligned"
export SM_SERVER_TEMPLATED_URL="$URL_templated" SM_SERVER_TOOLS_URL="$URL_tools" SM_SERVER_KWARGS_URL="$URL_kwargs"
export SM_SERVER_GUARDED_URL="$URL_guarded" SM_SERVER_SLOW_URL="$URL_slow"
export SM_SERVER_INFILL_URL="$URL_infill" SM_SERVER_INFILL_SPM_URL="$URL_infill_spm"
export SM_SERVER_INFILL_STORIES_URL="$URL_infill_stories"
export SM_API_KEY="$API_KEY" SM_SCREENSHOT_DIR="$PWD"

status=0
# One decoding thread per server: an embeddings request leaves no OpenMP
# team behind on its connection's thread (which lives as long as the client
# keeps the connection open), and a model set's first request adds no
# decoder thread beside the first batch's: a second team decoding in the
# process makes every decode several times slower. Threads of the server
# counted with the connection open, before and after each request.
python3 - "$URL_teams" "$PID_teams" "$URL_fused" "$PID_fused" <<'PY' || status=1
import http.client, json, os, sys, time, urllib.parse
url, pid = urllib.parse.urlparse(sys.argv[1]), sys.argv[2]
def threads(pid=pid):
    return len(os.listdir(f"/proc/{pid}/task"))
fused_url, fused_pid = urllib.parse.urlparse(sys.argv[3]), sys.argv[4]
f = http.client.HTTPConnection(fused_url.hostname, fused_url.port)
f.request("GET", "/health")
f.getresponse().read()
before = threads(fused_pid)
f.request("POST", "/v1/completions", json.dumps({"model": "llama2xs-salty-280K", "prompt": "Once", "max_tokens": 4}),
          {"Content-Type": "application/json"})
r = f.getresponse()
r.read()
assert r.status == 200, r.status
grown = threads(fused_pid) - before  # (the connection's own thread is counted on both sides)
f.close()
if grown > 0:
    sys.exit(f"test_server: a second model set's batch started {grown} thread(s)")
print("test_server: every model set's batch decodes on one thread")
c = http.client.HTTPConnection(url.hostname, url.port)
def ask(method, path, body=None):
    c.request(method, path, body, {"Content-Type": "application/json"})
    r = c.getresponse()
    r.read()
    assert r.status == 200, r.status
ask("POST", "/v1/completions", json.dumps({"prompt": "Once", "max_tokens": 4}))  # the batch's team exists
ask("GET", "/health")
before = threads()
ask("POST", "/v1/embeddings", json.dumps({"input": ["Once upon a time", "The dog"]}))
for _ in range(50):  # a finished thread's workers leave shortly after it
    if threads() <= before:
        break
    time.sleep(0.02)
after = threads()
c.close()
if after > before:  # (threads of earlier requests may still be leaving)
    sys.exit(f"test_server: {after - before} thread(s) left behind by an embeddings request on an open connection")
print("test_server: an embeddings request leaves no thread behind")
PY
node --test --test-concurrency=1 "$SM_SRC"/tests/server/*.test.js || status=$?
if [ "$status" -ne 0 ]; then
  for name in plain keyed fused aligned guarded slow; do
    echo "---- $name server log (last lines) ----" >&2
    tail -n 40 "$WORK/$name.log" >&2
  done
fi
# Every server must stop cleanly on SIGTERM.
for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
for pid in "${PIDS[@]}"; do
  code=0
  wait "$pid" || code=$?
  if [ "$code" -ne 0 ]; then echo "test_server: a server exited with $code after SIGTERM" >&2; status=1; fi
done
PIDS=()
[ "$status" -eq 0 ] && echo "test_server: screenshots in $PWD/server-screenshot.png and $PWD/server-screenshot-loom.png"
exit "$status"
