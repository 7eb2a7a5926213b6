#!/usr/bin/env bash
# bench/run.sh BUILD_DIR - what `make bench` runs.
#
# Tokens/s of the llama_selfmod loop with all monitoring on (bench/selfmod_loop)
# against a plain llama.cpp decode-and-greedy loop (bench/plain_loop): same
# model, prompt, token count and threads. The two programs alternate, several
# rounds, and each side's median is reported. Then the cost of a retraction in
# decoded tokens. The table goes to stdout and to bench/out/results.md.
#
# Environment: SM_MODELS (the shared models, default ../shared/models),
# BENCH_THREADS (2), BENCH_ROUNDS (7), BENCH_CACHE (where the random model
# is kept, default ~/.cache/llama_selfmod/models).
set -euo pipefail

if [[ $# -ne 1 || ! -d $1 ]]; then
    echo "usage: bench/run.sh BUILD_DIR (a build with plain_loop, selfmod_loop, make_random_model)" >&2
    exit 2
fi
build=$(cd "$1" && pwd)
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
models=${SM_MODELS:-$root/../shared/models}
threads=${BENCH_THREADS:-2}
rounds=${BENCH_ROUNDS:-7}
cache=${BENCH_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/llama_selfmod/models}
prompt="Once upon a time"
out_dir=$root/bench/out

for program in plain_loop selfmod_loop make_random_model; do
    if [[ ! -x $build/$program ]]; then
        echo "bench/run.sh: $build/$program is missing; run make build first" >&2
        exit 1
    fi
done

# The random-weight model of realistic size is made once and kept outside
# the checkout: the stories110M shape with the 32000-token Llama vocabulary.
random_model=$cache/random-llama-110M-f16.gguf
if [[ ! -f $random_model ]]; then
    mkdir -p "$cache"
    echo "making $random_model (once)..." >&2
    "$build/make_random_model" "$models/vocab/ggml-vocab-llama-spm.gguf" "$random_model" >&2
fi

# Where the library finds llama.cpp's AMX product crashing (src/cpu_probe.c)
# it loads models without extra buffer types; plain llama.cpp gets the same
# placement here, so each ratio compares the loops on the same weights.
same_placement=()
if [[ $("$build/cpu_probe") == "extra-buffers off" ]]; then
    same_placement=(--no-repack)
    echo "(this machine's AMX product crashes: every program here runs with --no-repack, as the library does)"
fi

# The same weights quantized to Q8_0, as most users' files are.
q8_model=$cache/random-llama-110M-q8_0.gguf
[[ -f $q8_model ]] || "$build/make_random_model" "$models/vocab/ggml-vocab-llama-spm.gguf" "$q8_model" --type q8_0 >&2

# One field (key=value) of a result line.
field() { sed -n "s/.* $1=\([^ ]*\).*/\1/p" <<<"$2"; }
median() { sort -g | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }

# bench_model LABEL MODEL N CTX REPS [FLAG...]: one table row (the flags go to both programs). Besides the medians, the
# best run of each side: contention from other work only ever slows a run
# down, so on a shared machine the best runs are the cleaner comparison.
bench_model() {
    local label=$1 model=$2 n=$3 ctx=$4 reps=$5
    shift 5
    local args=("$model" -n "$n" -t "$threads" -p "$prompt" -c "$ctx" --reps "$reps" "$@" "${same_placement[@]}")
    local plain_rates=() selfmod_rates=() plain_best=() selfmod_best=() line selfmod_n=
    for ((round = 0; round < rounds; round++)); do
        # Alternate which side goes first so drift in machine load hits both.
        local order=(plain_loop selfmod_loop)
        ((round % 2)) && order=(selfmod_loop plain_loop)
        for program in "${order[@]}"; do
            line=$("$build/$program" "${args[@]}")
            case $program in
            plain_loop)
                plain_rates+=("$(field tokens_per_s "$line")")
                plain_best+=("$(field max "$line")")
                ;;
            selfmod_loop)
                selfmod_rates+=("$(field tokens_per_s "$line")")
                selfmod_best+=("$(field max "$line")")
                selfmod_n=$(field n "$line")
                ;;
            esac
        done
    done
    local plain selfmod best_plain best_selfmod tokens=$n
    plain=$(printf '%s\n' "${plain_rates[@]}" | median)
    selfmod=$(printf '%s\n' "${selfmod_rates[@]}" | median)
    best_plain=$(printf '%s\n' "${plain_best[@]}" | sort -g | tail -1)
    best_selfmod=$(printf '%s\n' "${selfmod_best[@]}" | sort -g | tail -1)
    [[ $selfmod_n != "$n" ]] && tokens="$n / $selfmod_n (selfmod stopped at end-of-generation)"
    awk -v label="$label" -v tokens="$tokens" -v p="$plain" -v s="$selfmod" -v bp="$best_plain" \
        -v bs="$best_selfmod" 'BEGIN {
            printf "| %s | %s | %.1f / %.1f | %.1f / %.1f | %.3f / %.3f |\n",
                   label, tokens, p, bp, s, bs, s / p, bs / bp }'
}

# Other work on the machine shows up as noise, and a ratio is only as good
# as the quietest run: measure how much CPU everything else took while the
# table was made (all busy CPU time minus this shell's children) and say so.
busy_ticks() { awk '/^cpu / { print $2 + $3 + $4 + $7 + $8 }' /proc/stat; }
children_ticks() { sed 's/.*) //' "/proc/$1/stat" | awk '{ print $14 + $15 }'; } # PID
uptime_ticks() { awk -v hz="$(getconf CLK_TCK)" '{ printf "%d", $1 * hz }' /proc/uptime; }

other_load_note() { # PID BUSY0 CHILDREN0 UPTIME0
    local others
    others=$(awk -v b="$(($(busy_ticks) - $2))" -v c="$(($(children_ticks "$1") - $3))" \
                 -v t="$(($(uptime_ticks) - $4))" -v n="$(nproc)" \
                 'BEGIN { x = (b - c) / (t * n) * 100; printf "%.0f", x < 0 ? 0 : x }')
    if ((others > 5)); then
        echo "Other processes used ${others}% of the machine's CPU during these runs: BUSY, expect noisy numbers."
    else
        echo "Other processes used ${others}% of the machine's CPU during these runs."
    fi
}

report() {
    echo "## llama_selfmod benchmark"
    echo
    echo "$(date -u '+%Y-%m-%d %H:%M UTC'), $(nproc) cores, $threads threads, prompt \"$prompt\", greedy;" \
         "median of $rounds alternating runs of each program (each run: the median of its repetitions)."
    local me=$BASHPID busy0 children0 uptime0
    busy0=$(busy_ticks) children0=$(children_ticks "$me") uptime0=$(uptime_ticks)
    echo
    echo "| model | tokens | llama.cpp plain tok/s (median / best) | llama_selfmod tok/s (median / best) | ratio (median / best) |"
    echo "|---|---|---|---|---|"
    bench_model stories260K "$models/stories260K.gguf" 256 2048 10
    bench_model cardputer-chat-3M "$models/cardputer-chat-3M.gguf" 200 256 6
    bench_model "random llama 110M F16" "$random_model" 128 2048 3
    # llama.cpp's extra buffer types (AMX on Xeons) can slow one-token decoding:
    # without them a token takes less time, so our share of it shows more
    bench_model "random llama 110M F16, --no-repack" "$random_model" 128 2048 3 --no-repack
    # the same weights in Q8_0, as users' files are
    bench_model "random llama 110M Q8_0" "$q8_model" 128 2048 3
    # The per-token passes over the whole vocabulary at Llama-3 and Gemma sizes
    for v in 131072 262144; do
        vocab_model=$cache/random-llama-110M-v$v-f16.gguf
        [[ -f $vocab_model ]] || "$build/make_random_model" "$models/vocab/synthetic-spm-$v.gguf" "$vocab_model" >&2
        bench_model "random llama 110M body, vocab $v" "$vocab_model" 64 2048 3
    done
    echo
    other_load_note "$me" "$busy0" "$children0" "$uptime0"
    echo
    echo "Retraction cost (stories260K, 128 greedy tokens, retraction on at the default critical threshold 0.35,"
    echo "against the same generation with retraction off):"
    echo
    echo '```'
    "$build/selfmod_loop" "$models/stories260K.gguf" --retraction-cost -n 128 -t "$threads" -p "$prompt"
    echo '```'
}

# The benchmarks of the later features, each with its own program.
more_reports() {
    echo
    echo "### Backtracking operators (stories260K, 256 greedy tokens, $threads threads)"
    echo
    "$build/bench_ops_fusion" operators "$models/stories260K.gguf" -n 256 -t "$threads" --reps 5
    echo
    echo "### ggml RPC: every layer local, and on one ggml-rpc-server over loopback ($threads threads each)"
    echo
    echo "| model | tokens | local tok/s | over loopback RPC tok/s | ratio |"
    echo "|---|---|---|---|---|"
    bash "$root/bench/bench_rpc.sh" "$build" "$models/stories260K.gguf" 256 3
    bash "$root/bench/bench_rpc.sh" "$build" "$random_model" 64 3
    echo
    echo "### An operator written in Python (python/selfmod) against one in C"
    echo
    python3 "$root/bench/bench_python.py" "$build" "$models/stories260K.gguf" 512 5 1
    echo
    echo "### Python generate_many(prompts, parallel=8) against generate() one prompt at a time (random 110M)"
    echo
    python3 "$root/bench/bench_python_many.py" "$build" "$random_model" 16 32 3
    echo
    echo "### Python: every call on one decoding thread, a thread per call, or beside a second OpenMP team"
    echo
    python3 "$root/bench/bench_python_threads.py" "$build" "$models/stories260K.gguf" 100
    echo
    echo "### Fusion: cardputer-chat-3M + cardputer-brainrot-3M (shared vocabulary), 128 tokens, average mode"
    echo
    "$build/bench_ops_fusion" fusion "$models/cardputer-chat-3M.sharedvocab12688.gguf" \
        "$models/cardputer-brainrot-3M.sharedvocab12688.gguf" -n 128 -t "$threads" --reps 5
    echo
    echo "### LLooM tree expansion: one batched decode per level vs one decode per beam"
    echo
    echo '```'
    for t in 1 "$threads"; do
        "$build/bench_tree" "$models/stories260K.gguf" -t "$t"
        "$build/bench_tree" "$models/cardputer-chat-3M.gguf" -t "$t"
        # Realistic size; its near-uniform random distribution needs cutoff 0 to branch.
        "$build/bench_tree" "$random_model" -t "$t" --reps 5 --depth 6 --cutoff 0 --split 2 --beams 64
    done
    echo '```'
    echo
    echo "### Continuous batching: 8 concurrent requests of 48 tokens, random 110M, $threads threads, 8 slots"
    echo
    SERVER_ARGS="${SERVER_ARGS:-} ${same_placement[*]}" bash "$root/bench/bench_batching.sh" "$build" "$random_model" 8 48 3
    echo
    echo "### eval --parallel: prompts as sequences of one batch (wall time of whole runs, medians of 3)"
    echo
    echo '```'
    for m in "$random_model" "$q8_model"; do
        EVAL_ARGS="${same_placement[*]}" bash "$root/bench/bench_eval_parallel.sh" "$build" "$m" 8 16 32 3
        EVAL_ARGS="${same_placement[*]}" bash "$root/bench/bench_eval_parallel.sh" "$build" "$m" 16 16 32 3
    done
    echo '```'
    echo
    echo "### serve --fusion-align, batched and --no-batch (random 110M Llama-vocabulary + GPT-2-vocabulary models)"
    echo
    gpt2_model=$cache/random-gpt2-110M-f16.gguf
    [[ -f $gpt2_model ]] || "$build/make_random_model" "$models/vocab/ggml-vocab-gpt-2.gguf" "$gpt2_model" --seed 7 > /dev/null
    echo '```'
    SERVER_ARGS="${same_placement[*]}" python3 "$root/bench/bench_fusion_align.py" "$build" "$random_model" "$gpt2_model" 3 "$threads"
    echo '```'
    echo
    echo "### One decoding thread per server: 8 streams on A of \`serve --models A,B\` (random 110M, $threads threads)"
    echo
    echo '```'
    SERVER_ARGS="${same_placement[*]}" python3 "$root/bench/bench_one_decoder.py" "$build" "$random_model" 3 "$threads"
    echo '```'
    echo
    echo "### The LLooM beside 8 streams (random 110M, 9 slots): the tree decodes on the batch's thread"
    echo
    echo '```'
    SERVER_ARGS="${same_placement[*]}" bash "$root/bench/bench_loom_beside.sh" "$random_model" 8 48 3 "$build"
    echo '```'
    echo
    echo "### Threads under load (wall ms, median of 3)"
    echo
    bash "$root/bench/bench_threads.sh" "$build" "$models" "$random_model"
    echo
    echo "### Introspection and lookahead"
    echo
    echo '```'
    "$build/bench_introspect" "$models/stories260K.gguf" -n 256 -t "$threads" --reps 7
    "$build/bench_introspect" "$models/cardputer-chat-3M.gguf" -n 200 -c 256 -t "$threads" --reps 5
    echo '```'
    if command -v node >/dev/null; then
        echo
        echo "### Server: tokens/s for 1 and 4 concurrent streams vs the CLI"
        echo
        bash "$root/bench/bench_server.sh" "$build"
    fi
}

mkdir -p "$out_dir"
{ report; more_reports; } | tee "$out_dir/results.md.tmp"
mv "$out_dir/results.md.tmp" "$out_dir/results.md"
echo "(written to bench/out/results.md)" >&2
