#!/usr/bin/env bash
# What each rule of the calibrated policy buys on its own (docs/EVAL.md,
# "What each rule buys"): on the held-out prompts, each model judged by a
# panel of the others, the default with one rule at a time taken away.
#   scripts/eval_rules.sh [BUILD]     CSVs into docs/eval-rules-*.csv
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
BIN="${1:-$ROOT/build}/llama_selfmod"
M="${SM_MODELS:-$ROOT/../shared/models}"
# At T 0: the penalty alone, the loop retraction alone, both (the default).
# At T 0.7: sampling, the temperature rules alone, and with the retraction.
S="greedy,greedy:rp=1.1,selfmod:rp=1,selfmod,sample,calibrated:retract=0,calibrated"
run() { # NAME PROMPTS MODEL JUDGES N
  "$BIN" eval -f "$ROOT/data/prompts/$2" -m "$M/$3" --judge "$4" --strategies "$S" -n "$5" --seeds 3 --threads 2 \
    --quiet --csv "$ROOT/docs/eval-rules-$1.csv"
}
run stories260K stories-heldout.txt stories260K.gguf "$M/llama2xs-salty-280K.gguf,$M/tinystories-656K.gguf" 96
run llama2xs-salty-280K stories-heldout.txt llama2xs-salty-280K.gguf "$M/stories260K.gguf,$M/tinystories-656K.gguf" 96
run tinystories-656K stories-heldout.txt tinystories-656K.gguf "$M/stories260K.gguf,$M/llama2xs-salty-280K.gguf" 96
run chat chat-heldout.jsonl cardputer-chat-3M.gguf \
  "$M/stories260K.gguf,$M/tinystories-656K.gguf,$M/cardputer-brainrot-3M.sharedvocab12688.gguf" 64
