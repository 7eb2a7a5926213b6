#!/usr/bin/env bash
# The LLooM beside continuous batching: a server with REQUESTS + 1 slots
# runs REQUESTS concurrent greedy /v1/completions of TOKENS tokens while
# the LLooM expands trees one after another; the completions' aggregate
# tokens/s and the median expansion time, for each BUILD given (rounds
# alternate between them; medians). Also the expansions alone.
#   bench/bench_loom_beside.sh MODEL REQUESTS TOKENS ROUNDS BUILD...
# SERVER_ARGS: flags every server gets (e.g. "--no-repack"). BESIDE=embeddings:
# /v1/embeddings requests (8 sentences each) instead of the LLooM.
set -uo pipefail
model=$1 requests=$2 tokens=$3 rounds=$4
shift 4
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
threads=${BENCH_THREADS:-2}
read -r -a extra <<< "${SERVER_ARGS:-}"
median() { sort -g | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
declare -A rate expand alone
for ((r = 0; r < rounds; r++)); do
    for build in "$@"; do
        port=$((18400 + RANDOM % 1000))
        log=/tmp/bench_loom_beside.$$.log
        "$build/llama_selfmod" serve -m "$model" --port "$port" --parallel $((requests + 1)) --ctx-size 512 \
            --threads "$threads" --quiet "${extra[@]}" > "$log" 2>&1 &
        pid=$!
        for _ in $(seq 600); do curl -sf "127.0.0.1:$port/health" > /dev/null 2>&1 && break; sleep 0.1; done
        line=$(node "$root/bench/loom_beside.js" "http://127.0.0.1:$port" "$requests" "$tokens") || { kill "$pid"; cat "$log"; exit 1; }
        rate[$build]+="$(node -e 'console.log(JSON.parse(process.argv[1]).tokens_per_s)' "$line") "
        expand[$build]+="$(node -e 'console.log(JSON.parse(process.argv[1]).expand_ms)' "$line") "
        line=$(node "$root/bench/loom_beside.js" "http://127.0.0.1:$port" 0 "$tokens") || { kill "$pid"; exit 1; }
        alone[$build]+="$(node -e 'console.log(JSON.parse(process.argv[1]).expand_ms)' "$line") "
        kill "$pid"; wait "$pid" 2> /dev/null
    done
done
printf '%-40s %22s %20s %18s\n' build "streams tokens/s" "expand ms beside" "expand ms alone"
for build in "$@"; do
    printf '%-40s %22.1f %20.0f %18.0f\n' "$build" "$(tr ' ' '\n' <<< "${rate[$build]}" | grep . | median)" \
        "$(tr ' ' '\n' <<< "${expand[$build]}" | grep . | median)" "$(tr ' ' '\n' <<< "${alone[$build]}" | grep . | median)"
done
