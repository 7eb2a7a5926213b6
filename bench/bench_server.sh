#!/usr/bin/env bash
# bench/bench_server.sh BUILD_DIR - server tokens/s for 1 and 4 concurrent
# streams against the CLI on the same model, prompt, token count and threads.
#
# The CLI's rate is its own generation timing (--json-stream); the server's
# is measured twice: by the client (wall time of all streams, HTTP and SSE
# included; with 4 streams the total over all of them) and by the server's
# own generation timing per stream. Several rounds, medians reported. The
# table goes to stdout and to bench/out/server.md.
#
# Environment: SM_MODELS (default ../shared/models), BENCH_SERVER_MODEL
# (default stories260K.gguf there), BENCH_SERVER_TOKENS (512),
# BENCH_ROUNDS (5), BENCH_THREADS (1 per stream and for the CLI),
# SM_BIN (default BUILD_DIR/llama_selfmod).
set -euo pipefail

if [[ $# -ne 1 || ! -d $1 ]]; then
    echo "usage: bench/bench_server.sh BUILD_DIR" >&2
    exit 2
fi
build=$(cd "$1" && pwd)
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
models=${SM_MODELS:-$root/../shared/models}
model=${BENCH_SERVER_MODEL:-$models/stories260K.gguf}
tokens=${BENCH_SERVER_TOKENS:-512}
rounds=${BENCH_ROUNDS:-5}
threads=${BENCH_THREADS:-1}
bin=${SM_BIN:-$build/llama_selfmod}
out_dir=$root/bench/out
export OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-PASSIVE}

command -v node >/dev/null || { echo "bench_server: node is needed for the HTTP client" >&2; exit 1; }
[[ -x $bin ]] || { echo "bench_server: $bin is missing; run make build first" >&2; exit 1; }
[[ -f $model ]] || { echo "bench_server: no model at $model" >&2; exit 1; }

median() { sort -g | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
json_field() { node -e 'const o = JSON.parse(process.argv[1]); const v = process.argv[2].split(".").reduce((a, k) => a[k], o); console.log(v)' "$1" "$2"; }

log=$(mktemp)
server_pid=
cleanup() {
    [[ -n $server_pid ]] && kill "$server_pid" 2>/dev/null && wait "$server_pid" 2>/dev/null
    rm -f "$log"
}
trap cleanup EXIT

: > "$log"
"$bin" serve -m "$model" --host 127.0.0.1 --port 0 --parallel 4 --threads "$threads" --quiet >"$log" 2>&1 &
server_pid=$!
port=
for _ in $(seq 1 300); do
    port=$(sed -n 's|.*listening on http://127\.0\.0\.1:\([0-9]*\).*|\1|p' "$log")
    [[ -n $port ]] && break
    kill -0 "$server_pid" 2>/dev/null || { cat "$log" >&2; exit 1; }
    sleep 0.1
done
[[ -n $port ]] || { echo "bench_server: the server did not start" >&2; cat "$log" >&2; exit 1; }
url=http://127.0.0.1:$port

cli_rates=() one_client=() one_engine=() one_first=() four_client=() four_engine=() four_first=()
node "$root/bench/server_load.js" "$url" 1 32 1 >/dev/null # warm-up
for ((round = 0; round < rounds; round++)); do
    line=$("$bin" -m "$model" -p "Once upon a time" -n "$tokens" --seed $((round + 1)) --threads "$threads" \
        --json-stream --no-memory --quiet 2>/dev/null | tail -n 1)
    cli_rates+=("$(json_field "$line" timings.tokens_per_s)")
    line=$(node "$root/bench/server_load.js" "$url" 1 "$tokens" $((round + 1)))
    one_client+=("$(json_field "$line" client_tokens_per_s)")
    one_engine+=("$(json_field "$line" engine_tokens_per_s_per_stream)")
    one_first+=("$(json_field "$line" first_token_ms)")
    line=$(node "$root/bench/server_load.js" "$url" 4 "$tokens" $((round + 1)))
    four_client+=("$(json_field "$line" client_tokens_per_s)")
    four_engine+=("$(json_field "$line" engine_tokens_per_s_per_stream)")
    four_first+=("$(json_field "$line" first_token_ms)")
done

m() { printf '%s\n' "$@" | median; }
cli=$(m "${cli_rates[@]}")
table=$(cat <<EOT
## Server throughput: $(basename "$model"), $tokens tokens per stream, $threads thread(s) per stream, median of $rounds

| setup | streams | tokens/s, all streams (client wall clock) | tokens/s per stream (engine timing) | first text at client (ms) |
|---|---:|---:|---:|---:|
| CLI (llama_selfmod -p, --json-stream timing) | 1 | – | $(printf '%.0f' "$cli") | – |
| server, /v1/completions stream | 1 | $(printf '%.0f' "$(m "${one_client[@]}")") | $(printf '%.0f' "$(m "${one_engine[@]}")") | $(printf '%.1f' "$(m "${one_first[@]}")") |
| server, /v1/completions stream | 4 | $(printf '%.0f' "$(m "${four_client[@]}")") | $(printf '%.0f' "$(m "${four_engine[@]}")") | $(printf '%.1f' "$(m "${four_first[@]}")") |

Machine: $(nproc) cores. With 4 streams and 4 slots the streams share the cores; the first column is their total.
EOT
)
echo "$table"
mkdir -p "$out_dir"
echo "$table" >"$out_dir/server.md"
