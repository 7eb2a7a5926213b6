#!/usr/bin/env bash
# The issue-12 measurements of docs/EVAL.md: every strategy on the held-out
# prompts for the four shared models, each judged by a panel of the others;
# CSV, SVG and (with rsvg-convert, Debian's librsvg2-bin) PNG into docs/.
#   scripts/eval_heldout.sh [BUILD]          every strategy: docs/eval-heldout-*
#   scripts/eval_heldout.sh [BUILD] rules    what each rule of the default buys
#                                            on its own: docs/eval-rules-*.csv
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
BIN="${1:-$ROOT/build}/llama_selfmod"
M="${SM_MODELS:-$ROOT/../shared/models}"
if [ "${2:-}" = rules ]; then
  # At T 0: the penalty alone, the loop retraction alone, both (the default).
  # At T 0.7: sampling, the temperature rules alone, and with the retraction.
  S="greedy,greedy:rp=1.1,selfmod:rp=1,selfmod,sample,calibrated:retract=0,calibrated"
  OUT=eval-rules
else
  S="greedy,sample,selfmod,calibrated,calibrated:temp=0.2,original,dry,min-p,xtc,typical,greedy+op:ngram_overlap,fixed"
  OUT=eval-heldout
fi
run() { # NAME PROMPTS MODEL JUDGES N
  local chart=()
  [ "$OUT" = eval-heldout ] && chart=(--chart "$ROOT/docs/$OUT-$1.svg")
  "$BIN" eval -f "$ROOT/data/prompts/$2" -m "$M/$3" --judge "$4" --strategies "$S" -n "$5" --seeds 3 --threads 2 \
    --quiet --csv "$ROOT/docs/$OUT-$1.csv" "${chart[@]}"
  [ "$OUT" = eval-heldout ] || return 0
  if command -v rsvg-convert > /dev/null; then
    rsvg-convert -b white "$ROOT/docs/$OUT-$1.svg" -o "$ROOT/docs/$OUT-$1.png"
  else
    echo "eval_heldout: no rsvg-convert (apt-get install librsvg2-bin): no PNG for $1" >&2
  fi
}
run stories260K stories-heldout.txt stories260K.gguf "$M/llama2xs-salty-280K.gguf,$M/tinystories-656K.gguf" 96
run llama2xs-salty-280K stories-heldout.txt llama2xs-salty-280K.gguf "$M/stories260K.gguf,$M/tinystories-656K.gguf" 96
run tinystories-656K stories-heldout.txt tinystories-656K.gguf "$M/stories260K.gguf,$M/llama2xs-salty-280K.gguf" 96
run chat chat-heldout.jsonl cardputer-chat-3M.gguf \
  "$M/stories260K.gguf,$M/tinystories-656K.gguf,$M/cardputer-brainrot-3M.sharedvocab12688.gguf" 64
