#!/usr/bin/env bash
# Threads under load: the CLI's default thread count (tuned, --threads 0)
# against --threads 1 and --threads = all cores, on an idle machine and
# with one competing busy process (`yes > /dev/null`, one core), which is
# where llama.cpp's spinning threads collapse. Wall time of whole runs,
# median of 3; the busy process runs only during the "busy" rows.
#   bench/bench_threads.sh BUILD MODELS RANDOM_MODEL
set -uo pipefail
build=$1 models=$2 random_model=$3
bin=$build/llama_selfmod
cores=$(nproc)

run_ms() { # MODEL N THREADS
    local s e
    s=$(date +%s%N)
    "$bin" -m "$1" -p "Once upon a time" -n "$2" --no-stop-at-bos --ctx-size 2048 --threads "$3" --no-memory --quiet \
        --seed 1 -t 0 --no-selfmod > /dev/null
    e=$(date +%s%N)
    echo $(((e - s) / 1000000))
}
median3() { printf '%s\n' "$@" | sort -n | sed -n 2p; }

row() { # LABEL MODEL N LOAD
    local cells=()
    for t in 0 1 "$cores"; do
        cells+=("$(median3 "$(run_ms "$2" "$3" "$t")" "$(run_ms "$2" "$3" "$t")" "$(run_ms "$2" "$3" "$t")")")
    done
    echo "| $1, $3 tokens | $4 | ${cells[0]} | ${cells[1]} | ${cells[2]} |"
}

echo "| model | machine | default (tuned) ms | --threads 1 ms | --threads $cores ms |"
echo "|---|---|---|---|---|"
for load in idle busy; do
    pid=
    if [[ $load == busy ]]; then
        yes > /dev/null &
        pid=$!
        sleep 0.3
    fi
    row stories260K "$models/stories260K.gguf" 512 "$load"
    row "random llama 110M" "$random_model" 128 "$load"
    [[ -n $pid ]] && kill "$pid"
done
