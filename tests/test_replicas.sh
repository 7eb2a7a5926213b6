#!/usr/bin/env bash
# Replicas behind a proxy (issue 15): two `serve` replicas behind Debian's
# HAProxy with docs/replicas/haproxy.cfg, on loopback. A loading replica
# answers 503 (/health too) and exits 1 when its model fails. A draining replica
# (SIGTERM) finishes its stream and answers 503 to /health and to new
# requests; a conversation named in X-Session-Id stays on one replica; a
# rolling restart of both replicas under a steady load loses no request.
set -u
fail() { echo "FAIL: $*"; exit 1; }
: "${SM_BIN:?}" "${SM_MODELS:?}" "${SM_SRC:?}"
command -v haproxy > /dev/null || fail "haproxy is not installed (scripts/install_deps.sh installs it)"
TMP="$(mktemp -d)"
PIDS=()
trap 'for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null; done; wait 2>/dev/null; rm -rf "$TMP"' EXIT
# shellcheck source=serve_helpers.sh
. "$(dirname "${BASH_SOURCE[0]}")/serve_helpers.sh"
export A_PORT=$(free_port) B_PORT=$(free_port) LB_PORT=$(free_port)
declare -A PID
start_replica() { # NAME PORT
  "$SM_BIN" serve -m "$SM_MODELS/stories260K.gguf" --port "$2" --alias "replica-$1" --threads 1 --parallel 2 \
    > "$TMP/$1.log" 2>&1 &
  PID[$1]=$!
  PIDS+=($!)
  for _ in $(seq 1 100); do
    [ "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$2/health")" = 200 ] && return 0
    sleep 0.1
  done
  fail "replica $1 did not become healthy: $(tail -3 "$TMP/$1.log")"
}
stop_replica() { # NAME: SIGTERM, and it must be gone within its drain
  kill -TERM "${PID[$1]}"
  for _ in $(seq 1 200); do kill -0 "${PID[$1]}" 2> /dev/null || return 0; sleep 0.1; done
  fail "replica $1 did not stop after SIGTERM"
}
# 0. while the model loads, /health (and everything else) is 503 "Loading model": a model path
# that is a FIFO keeps the load waiting until something is written to it
mkfifo "$TMP/slow.gguf"
"$SM_BIN" serve -m "$TMP/slow.gguf" --port "$A_PORT" --threads 1 > "$TMP/loading.log" 2>&1 &
LPID=$!
PIDS+=($LPID)
code=""
for _ in $(seq 1 100); do
  code=$(curl -s -o "$TMP/loading.json" -w '%{http_code}' "http://127.0.0.1:$A_PORT/health")
  [ "$code" = 503 ] && break
  sleep 0.1
done
[ "$code" = 503 ] && grep -q "Loading model" "$TMP/loading.json" || fail "a loading server's /health: $code $(cat "$TMP/loading.json")"
[ "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$A_PORT/v1/models")" = 503 ] || fail "a loading server answered"
: > "$TMP/slow.gguf" # an empty "model": the load fails, the server says why and exits
rc=0; wait "$LPID" || rc=$?
[ "$rc" = 1 ] && grep -q "error:.*slow.gguf" "$TMP/loading.log" || fail "after a failed load: rc $rc, $(tail -2 "$TMP/loading.log")"

start_replica a "$A_PORT"
start_replica b "$B_PORT"

# 1. draining: a request in flight (16 answers of 400 tokens, about 3 s)
# finishes; meanwhile /health and new requests get 503
curl -s -o "$TMP/long.json" -w '%{http_code}' "http://127.0.0.1:$A_PORT/v1/completions" \
  -d '{"prompt": "Once upon a time", "max_tokens": 400, "n": 16, "ignore_eos": true}' > "$TMP/long.code" &
CURL=$!
sleep 0.5
kill -TERM "${PID[a]}"
sleep 0.3
[ "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$A_PORT/health")" = 503 ] || fail "a draining replica's /health is not 503"
code=$(curl -s -o "$TMP/refused.json" -w '%{http_code}' "http://127.0.0.1:$A_PORT/completion" -d '{"prompt": "x", "n_predict": 2}')
[ "$code" = 503 ] && grep -q "shutting down" "$TMP/refused.json" || fail "a draining replica took a new request: $code"
wait "$CURL" || fail "the request in flight was cut"
[ "$(cat "$TMP/long.code")" = 200 ] || fail "the request in flight got $(cat "$TMP/long.code")"
python3 -c 'import json, sys; d = json.load(open(sys.argv[1])); assert len(d["choices"]) == 16 and d["usage"]["completion_tokens"] == 6400' \
  "$TMP/long.json" || fail "the request in flight did not finish whole"
for _ in $(seq 1 100); do kill -0 "${PID[a]}" 2> /dev/null || break; sleep 0.1; done
kill -0 "${PID[a]}" 2> /dev/null && fail "replica a did not exit after draining"
grep -q "finishing 1 request in flight" "$TMP/a.log" || fail "replica a did not say it drained: $(tail -3 "$TMP/a.log")"
start_replica a "$A_PORT"

haproxy -f "$SM_SRC/docs/replicas/haproxy.cfg" -db > "$TMP/haproxy.log" 2>&1 &
PIDS+=($!)
LB="http://127.0.0.1:$LB_PORT"
for _ in $(seq 1 100); do
  [ "$(curl -s -o /dev/null -w '%{http_code}' "$LB/health")" = 200 ] && break
  sleep 0.1
done
sleep 1 # both replicas seen healthy (rise 2)

# 2. sticky: one conversation, one replica; no header: both serve
served_by() { curl -s "$LB/v1/chat/completions" ${1:+-H "X-Session-Id: $1"} \
  -d '{"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2}' | python3 -c 'import json, sys; print(json.load(sys.stdin)["model"])'; }
for chat in chat-1 chat-2 chat-3; do
  first=$(served_by "$chat")
  for _ in 1 2 3; do [ "$(served_by "$chat")" = "$first" ] || fail "$chat moved from $first"; done
done
seen=$(for _ in 1 2 3 4; do served_by ""; done | sort -u | wc -l)
[ "$seen" = 2 ] || fail "without X-Session-Id the requests went to $seen replica(s)"

# 3. a rolling restart under load loses no request
cat > "$TMP/load.py" <<'PY'
import json, os, sys, threading, time, urllib.request
url, stop, out = sys.argv[1], sys.argv[2], sys.argv[3]
codes, lock = [], threading.Lock()
def work(i):
    while not os.path.exists(stop):
        req = urllib.request.Request(url + "/completion", data=json.dumps({"prompt": "Once upon a time", "n_predict": 24,
                                     "ignore_eos": True}).encode(), headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=60) as r:
                body = json.load(r)
                code = r.status if body.get("content") else -1
        except urllib.error.HTTPError as e:
            code = e.code
        except Exception as e:
            code = repr(e)
        with lock:
            codes.append(code)
threads = [threading.Thread(target=work, args=(i,)) for i in range(3)]
for t in threads: t.start()
for t in threads: t.join()
json.dump(codes, open(out, "w"))
PY
python3 "$TMP/load.py" "$LB" "$TMP/stop" "$TMP/codes.json" &
LOAD=$!
sleep 1
for name in a b; do
  port=$([ "$name" = a ] && echo "$A_PORT" || echo "$B_PORT")
  stop_replica "$name"
  start_replica "$name" "$port"
  sleep 1.5 # the proxy sees it healthy again before the next one goes
done
touch "$TMP/stop"
wait "$LOAD"
python3 - "$TMP/codes.json" <<'PY' || fail "the rolling restart lost requests (haproxy: $(tail -3 "$TMP/haproxy.log"))"
import json, sys
codes = json.load(open(sys.argv[1]))
bad = [c for c in codes if c != 200]
print(f"replicas: {len(codes)} requests during a rolling restart, {len(bad)} failed")
sys.exit(1 if bad or len(codes) < 10 else 0)
PY
echo "replicas: draining finishes what is in flight and answers 503; sticky by X-Session-Id; a rolling restart lost nothing"
