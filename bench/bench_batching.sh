#!/usr/bin/env bash
# Continuous batching on the server: N concurrent greedy /v1/completions of
# T tokens against `llama_selfmod serve` (batched, and --no-batch) and
# llama-server built from the same llama.cpp source, same model, threads,
# slots and context per slot. Each server runs alone; rounds alternate;
# medians of the aggregate tokens/s, and each server's RSS after its runs.
#   bench/bench_batching.sh BUILD MODEL [REQUESTS TOKENS ROUNDS]
# LLAMA_SERVER: the llama-server binary (default: the cached build, made by
# scripts/build_llama_server.sh when missing). SERVER_ARGS: flags every
# server gets (e.g. "--n-gpu-layers 99").
set -uo pipefail
build=$1 model=$2 requests=${3:-8} tokens=${4:-48} rounds=${5:-3}
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
threads=${BENCH_THREADS:-2}
ctx_slot=512
llama_server=${LLAMA_SERVER:-$("$root/scripts/build_llama_server.sh")}
read -r -a extra <<< "${SERVER_ARGS:-}"

start() { # NAME CMD... -> sets url and pid
    local name=$1
    shift
    : > "/tmp/bench_batching.$$.log"
    "$@" > "/tmp/bench_batching.$$.log" 2>&1 &
    pid=$!
    url=
    for _ in $(seq 600); do
        port=$(grep -o 'http://127.0.0.1:[0-9]*' "/tmp/bench_batching.$$.log" | head -1)
        if [[ -n $port ]] && curl -sf "$port/health" > /dev/null 2>&1; then url=$port; break; fi
        sleep 0.1
    done
    [[ -n $url ]] || { echo "bench_batching: $name did not start"; cat "/tmp/bench_batching.$$.log"; exit 1; }
}
rss_mb() { awk '/VmRSS/ { printf "%.0f", $2 / 1024 }' "/proc/$1/status"; }
median() { sort -g | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }

declare -A rates rss
# selfmod_no_retract: the policy on but never retracting: on the random model
# the default policy retracts its loops, which costs decodes llama-server
# does not make; this row is the loop's own overhead.
names=(selfmod_batched selfmod_no_retract selfmod_no_batch llama_server)
for ((r = 0; r < rounds; r++)); do
    for name in "${names[@]}"; do
        port=$((18400 + RANDOM % 1000))
        case $name in
        selfmod_batched) start "$name" "$build/llama_selfmod" serve -m "$model" --port "$port" --parallel "$requests" \
                             --ctx-size "$ctx_slot" --threads "$threads" --quiet "${extra[@]}" ;;
        selfmod_no_retract) start "$name" "$build/llama_selfmod" serve -m "$model" --port "$port" --parallel "$requests" \
                             --ctx-size "$ctx_slot" --threads "$threads" --quiet "${extra[@]}" ;;
        selfmod_no_batch) start "$name" "$build/llama_selfmod" serve -m "$model" --port "$port" --parallel "$requests" \
                             --ctx-size "$ctx_slot" --threads 1 --no-batch --quiet "${extra[@]}" ;;
        llama_server) start "$name" "$llama_server" -m "$model" --host 127.0.0.1 --port "$port" --parallel "$requests" \
                          --ctx-size $((ctx_slot * requests)) --threads "$threads" --threads-batch "$threads" "${extra[@]}" ;;
        esac
        selfmod='{}'
        [[ $name == selfmod_no_retract ]] && selfmod='{"retract": 0}'
        line=$(BENCH_SELFMOD="$selfmod" node "$root/bench/batch_load.js" "$url" "$requests" "$tokens") || { kill "$pid"; exit 1; }
        rates[$name]+="$(node -e 'console.log(JSON.parse(process.argv[1]).tokens_per_s)' "$line") "
        rss[$name]=$(rss_mb "$pid")
        kill "$pid"; wait "$pid" 2> /dev/null
    done
done
echo "| server | aggregate tokens/s (median of $rounds) | RSS MB |"
echo "|---|---|---|"
for name in "${names[@]}"; do
    printf '| %s | %.1f | %s |\n' "$name" "$(printf '%s\n' ${rates[$name]} | median)" "${rss[$name]}"
done
rm -f "/tmp/bench_batching.$$.log"
