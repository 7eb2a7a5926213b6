#!/usr/bin/env bash
# ggml RPC on loopback (issue 15): two ggml-rpc-server processes built from
# the pinned llama.cpp source hold a model's layers; greedy tokens and
# logits equal the local run's, a fused pair with each member on its own
# server equals the local fused run, serve and eval take --rpc, and a
# server that is down, or dies mid-generation, gives one clear line and
# exit code 1: no hang, no signal.
set -u
fail() { echo "FAIL: $*"; exit 1; }
: "${SM_BIN:?}" "${SM_MODELS:?}" "${SM_BUILD:?}"
RPC_SERVER="$(cat "$SM_BUILD/llama_prefix")/bin/ggml-rpc-server"
[ -x "$RPC_SERVER" ] || fail "no $RPC_SERVER (scripts/setup_llama.sh builds it)"
TMP="$(mktemp -d)"
PIDS=()
trap 'for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null; done; rm -rf "$TMP"' EXIT
S="$SM_MODELS/stories260K.gguf"
SALTY="$SM_MODELS/llama2xs-salty-280K.gguf"

# shellcheck source=serve_helpers.sh
. "$(dirname "${BASH_SOURCE[0]}")/serve_helpers.sh"
start_rpc() { # PORT -> pid in PIDS, waits until it listens
  "$RPC_SERVER" -H 127.0.0.1 -p "$1" -t 1 > "$TMP/rpc-$1.log" 2>&1 &
  PIDS+=($!)
  for _ in $(seq 1 100); do
    (exec 3<> "/dev/tcp/127.0.0.1/$1") 2> /dev/null && return 0
    sleep 0.1
  done
  fail "ggml-rpc-server on port $1 did not start: $(cat "$TMP/rpc-$1.log")"
}
P1=$(free_port); start_rpc "$P1"
P2=$(free_port); start_rpc "$P2"
RPC="127.0.0.1:$P1,127.0.0.1:$P2"
run() { timeout 120 "$SM_BIN" --no-memory --threads 1 "$@"; }
tokens_and_logits() { python3 -c '
import json, sys
for line in sys.stdin:
    e = json.loads(line)
    if e.get("type") == "token": print(e["token"], e["logit"], e["p_chosen"])'; }

# 1. one model split over both servers: the same tokens and logits
run -m "$S" -p "Once upon a time" -n 48 -t 0 --no-selfmod --json-stream > "$TMP/local.jsonl" 2> "$TMP/err" \
  || fail "local run: $(tail -1 "$TMP/err")"
run -m "$S" -p "Once upon a time" -n 48 -t 0 --no-selfmod --json-stream --rpc "$RPC" > "$TMP/rpc.jsonl" 2> "$TMP/err" \
  || fail "--rpc run: $(tail -1 "$TMP/err")"
tokens_and_logits < "$TMP/local.jsonl" > "$TMP/local.txt"
tokens_and_logits < "$TMP/rpc.jsonl" > "$TMP/rpc.txt"
[ "$(wc -l < "$TMP/local.txt")" = 48 ] || fail "the local run made $(wc -l < "$TMP/local.txt") tokens"
cmp -s "$TMP/local.txt" "$TMP/rpc.txt" || fail "tokens or logits over RPC differ: $(diff "$TMP/local.txt" "$TMP/rpc.txt" | head -3)"
grep -q "Accepted client connection" "$TMP/rpc-$P1.log" && grep -q "Accepted client connection" "$TMP/rpc-$P2.log" \
  || fail "a server was not used"

# 2. a fused pair, each member on its own server, equals the local fused run
local_fused=$(run --models "$S,$SALTY" --fusion-mode average -p "Once upon a time" -n 40 -t 0 --no-selfmod 2> "$TMP/err") \
  || fail "local fused: $(tail -1 "$TMP/err")"
rpc_fused=$(run --models "$S@127.0.0.1:$P1,$SALTY@127.0.0.1:$P2" --fusion-mode average -p "Once upon a time" -n 40 -t 0 \
  --no-selfmod 2> "$TMP/err") || fail "fused over RPC: $(tail -1 "$TMP/err")"
[ "$local_fused" = "$rpc_fused" ] || fail "fused over RPC: '$rpc_fused' is not the local '$local_fused'"

# 3. the server and eval take --rpc
"$SM_BIN" serve -m "$S" --port 0 --threads 1 --rpc "$RPC" > "$TMP/serve.log" 2>&1 &
SPID=$!
PIDS+=($SPID)
port=$(listening_port "$TMP/serve.log" "$SPID") || fail "serve --rpc did not start: $(cat "$TMP/serve.log")"
body=$(curl -sf "http://127.0.0.1:$port/completion" -d '{"prompt": "Once upon a time", "n_predict": 16, "temperature": 0}') \
  || fail "serve --rpc: /completion failed"
want=$(run -m "$S" -p "Once upon a time" -n 16 -t 0 --no-selfmod --repeat-penalty 1 2> /dev/null)
got=$(python3 -c 'import json, sys; print(json.loads(sys.argv[1])["content"])' "$body")
[ "$got" = "$want" ] || fail "serve --rpc wrote '$got', the CLI '$want'"
kill "$SPID"; wait "$SPID" 2> /dev/null
printf 'Once upon a time\nThe dog\n' > "$TMP/prompts.txt"
timeout 120 "$SM_BIN" eval -f "$TMP/prompts.txt" -m "$S" --strategies greedy -n 8 --threads 1 --rpc "$RPC" \
  --csv "$TMP/eval.csv" > "$TMP/eval.out" 2>&1 || fail "eval --rpc: $(tail -2 "$TMP/eval.out")"

# 4. refused before anything loads: no server there, or no port
rc=0; run -m "$S" -p "x" -n 4 --rpc "127.0.0.1:$(free_port)" 2> "$TMP/err" > /dev/null || rc=$?
[ "$rc" = 1 ] && grep -q "cannot reach the RPC server 127.0.0.1:.*Connection refused" "$TMP/err" \
  || fail "a server that is down: rc $rc, $(cat "$TMP/err")"
rc=0; run -m "$S" -p "x" -n 4 --rpc "localhost" 2> "$TMP/err" > /dev/null || rc=$?
[ "$rc" = 2 ] && grep -q -- "--rpc" "$TMP/err" || fail "--rpc without a port: rc $rc, $(cat "$TMP/err")"

# 5. a server dies mid-generation: one clear line, exit code 1, in seconds
run -m "$S" -p "Once upon a time" -n 100000 --no-stop-at-bos -t 0 --no-selfmod --rpc "$RPC" > /dev/null 2> "$TMP/err" &
GPID=$!
sleep 1.5
kill "${PIDS[1]}"
rc=0; wait "$GPID" || rc=$?
[ "$rc" = 1 ] || fail "a server that died mid-generation: exit code $rc ($(tail -2 "$TMP/err"))"
grep -q "llama_selfmod: error: .*RPC server" "$TMP/err" || fail "no clear error when a server died: $(tail -2 "$TMP/err")"
echo "rpc: split and fused runs equal the local ones; serve and eval take --rpc; a server down or gone is one clear error"
