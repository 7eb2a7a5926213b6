#!/usr/bin/env bash
# bench/bench_rpc.sh BUILD MODEL [N_TOKENS] [ROUNDS] - the cost of ggml RPC's
# transport: the same greedy generation with every layer local, and with
# every layer on one ggml-rpc-server on loopback (same machine, same
# threads), alternating, median tokens/s of each.
set -euo pipefail
build=$1 model=$2 n=${3:-64} rounds=${4:-3}
threads=${BENCH_THREADS:-2}
server="$(cat "$build/llama_prefix")/bin/ggml-rpc-server"
port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
"$server" -H 127.0.0.1 -p "$port" -t "$threads" > /dev/null 2>&1 &
pid=$!
trap 'kill $pid 2>/dev/null' EXIT
for _ in $(seq 1 50); do (exec 3<> "/dev/tcp/127.0.0.1/$port") 2> /dev/null && break; sleep 0.1; done
rate() { "$build/llama_selfmod" -m "$model" -p "Once upon a time" -n "$n" -t 0 --no-selfmod --no-memory --no-stop-at-bos \
           --threads "$threads" "$@" 2>&1 >/dev/null | sed -n 's/.*, \([0-9.]*\) tokens\/s.*/\1/p'; }
median() { sort -g | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
local_rates=() rpc_rates=()
for ((r = 0; r < rounds; r++)); do
  local_rates+=("$(rate)")
  rpc_rates+=("$(rate --rpc "127.0.0.1:$port")")
done
l=$(printf '%s\n' "${local_rates[@]}" | median)
p=$(printf '%s\n' "${rpc_rates[@]}" | median)
echo "| $(basename "$model") | $n | $l | $p | $(awk -v a="$p" -v b="$l" 'BEGIN { printf "%.2f", a / b }') |"
