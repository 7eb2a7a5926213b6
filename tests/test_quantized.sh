#!/usr/bin/env bash
# Quantized models load and generate. On a CPU with AMX llama.cpp repacks
# Q4_0, Q8_0, K-quant and F16 weights into AMX tiles by default, and on
# some machines (this project's own virtual one) the AMX product then
# kills the process: SIGILL or SIGSEGV on the first decode, llama-server
# too. src/cpu_probe.c tries AMX in a child process first and loads
# without extra buffers where it fails. Small random models of each type
# are made here (bench/make_random_model).
set -u
: "${SM_BIN:?}" "${SM_MODELS:?}" "${SM_BUILD:?}"
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
fail() { echo "FAIL: $*"; exit 1; }
VOCAB="$SM_MODELS/vocab/ggml-vocab-llama-spm.gguf"
[ -r "$VOCAB" ] || fail "vocabulary missing: $VOCAB"

for type in q4_0 q8_0 q4_k f16; do
  model="$WORK/random-$type.gguf"
  "$SM_BUILD/make_random_model" "$VOCAB" "$model" --type "$type" --layers 2 --embd 256 --ff 512 --heads 4 \
    --ctx 256 > /dev/null || fail "make_random_model --type $type"
  for repack in "" --no-repack; do
    "$SM_BIN" -m "$model" -p "Once upon a time" -n 8 --seed 1 --no-memory $repack > "$WORK/out" 2> "$WORK/err"
    code=$?
    [ "$code" = 0 ] || fail "$type $repack: exit $code (a signal is 128 + its number): $(tail -3 "$WORK/err")"
    grep -q '8 tokens' "$WORK/err" || fail "$type $repack: no 8 tokens: $(tail -3 "$WORK/err")"
  done
  echo "ok: $type"
done
# The probe's answer does not depend on the host program's fault handlers:
# one that exits 0 (as a host might) once made the crashing child look
# healthy, and the process then died on its first decode.
plain=$("$SM_BUILD/cpu_probe") || fail "cpu_probe"
handled=$("$SM_BUILD/cpu_probe" --with-handlers) || fail "cpu_probe --with-handlers"
[ "$plain" = "$handled" ] || fail "the probe says '$handled' under fault handlers, '$plain' without"
echo "probe: $plain"
# and the fallback is said, not silent: --verbose notes it when it happened
"$SM_BIN" -m "$WORK/random-q4_0.gguf" -p hi -n 2 --verbose --no-memory > /dev/null 2> "$WORK/err" || fail "--verbose"
noted=$(grep -c "AMX matrix product fails" "$WORK/err")
[ "$noted" = "$([ "$plain" = "extra-buffers off" ] && echo 1 || echo 0)" ] || fail "note printed $noted times with $plain"
"$SM_BIN" -m "$WORK/random-q4_0.gguf" -p hi -n 2 --verbose --no-repack --no-memory > /dev/null 2> "$WORK/err"
grep -q "AMX matrix product fails" "$WORK/err" && fail "the note with --no-repack, which asked for it"
# make_random_model refuses a type its shape cannot hold
"$SM_BUILD/make_random_model" "$VOCAB" "$WORK/x.gguf" --type q4_k --embd 128 --heads 4 --ff 512 2> "$WORK/err" \
  && fail "q4_k with --embd 128 was accepted"
grep -q "multiples of 256" "$WORK/err" || fail "q4_k with --embd 128: $(cat "$WORK/err")"
echo "quantized models: all generated"
