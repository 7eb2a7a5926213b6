#!/usr/bin/env bash
# eval --parallel N against --parallel 1: the same prompts and strategy,
# wall time of whole runs (the model load included), rounds alternating;
# medians, the speed-up, and whether the metrics came out the same.
#   bench/bench_eval_parallel.sh BUILD MODEL [N PROMPTS TOKENS ROUNDS]
# EVAL_ARGS: more flags for both (e.g. "--no-repack").
set -uo pipefail
build=$1 model=$2 n=${3:-8} prompts=${4:-16} tokens=${5:-32} rounds=${6:-3}
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
threads=${BENCH_THREADS:-2}
read -r -a extra <<< "${EVAL_ARGS:-}"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
median() { sort -g | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
declare -A wall
for ((r = 0; r < rounds; r++)); do
    order=(1 "$n")
    ((r % 2)) && order=("$n" 1)
    for p in "${order[@]}"; do
        t0=$(date +%s.%N)
        "$build/llama_selfmod" eval -f "$root/data/prompts/stories.txt" -m "$model" --limit "$prompts" -n "$tokens" \
            --strategies greedy --threads "$threads" --parallel "$p" --quiet --csv "$work/p$p.csv" "${extra[@]}" \
            > /dev/null 2> "$work/err" || { cat "$work/err"; exit 1; }
        wall[$p]+="$(echo "$(date +%s.%N) - $t0" | bc) "
    done
done
one=$(tr ' ' '\n' <<< "${wall[1]}" | grep . | median)
many=$(tr ' ' '\n' <<< "${wall[$n]}" | grep . | median)
# every column but the speed ones
metrics() { python3 -c 'import csv,sys; r=list(csv.reader(open(sys.argv[1]))); keep=[i for i,h in enumerate(r[0]) if not h.startswith("tokens_per_s")]; [print([row[i] for i in keep]) for row in r]' "$1"; }
same=$(diff <(metrics "$work/p1.csv") <(metrics "$work/p$n.csv") > /dev/null && echo yes || echo no)
printf 'eval %s prompts x %s greedy tokens, %s threads: --parallel 1 %.2f s, --parallel %s %.2f s (%.2fx), same metrics: %s\n' \
    "$prompts" "$tokens" "$threads" "$one" "$n" "$many" "$(echo "$one / $many" | bc -l)" "$same"
