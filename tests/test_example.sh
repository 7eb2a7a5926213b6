#!/usr/bin/env bash
# The README's custom operator and custom stage. The operator: greedy stories260K says "Lily" without it;
# with the word filter the same generation never does, and it backtracked.
set -u
bin="$SM_BUILD/custom_operator"
model="$SM_MODELS/stories260K.gguf"
prompt="Once upon a time, there was a little girl named Lily."
plain=$("$bin" "$model" "zzzz-never" "$prompt" 2>/dev/null) || { echo "FAIL: example did not run"; exit 1; }
grep -q "Lily" <<<"$plain" || { echo "FAIL: the unfiltered text has no 'Lily' to filter: $plain"; exit 1; }
filtered=$("$bin" "$model" "Lily" "$prompt" 2>/tmp/sm_example_err.$$) || { echo "FAIL: filtered run failed"; exit 1; }
backtracks=$(sed -n 's/^backtracks: //p' /tmp/sm_example_err.$$); rm -f /tmp/sm_example_err.$$
if grep -q "Lily" <<<"$filtered"; then echo "FAIL: 'Lily' still generated: $filtered"; exit 1; fi
[ "${backtracks:-0}" -gt 0 ] || { echo "FAIL: no backtracks reported"; exit 1; }
[ -n "$filtered" ] || { echo "FAIL: empty output"; exit 1; }
echo "ok: $backtracks backtracks; filtered text: ${filtered:0:80}..."

# The README's custom stage: generation ends after exactly N sentences.
bin="$SM_BUILD/custom_stage"
for n in 1 3; do
  out=$("$bin" "$model" "$n" "Once upon a time" 2>/tmp/sm_stage_err.$$) || { echo "FAIL: custom_stage $n did not run"; exit 1; }
  stop=$(sed -n 's/^stop: //p' /tmp/sm_stage_err.$$); rm -f /tmp/sm_stage_err.$$
  ends=$(tr -cd '.!?' <<<"$out" | wc -c)
  [ "$stop" = "stage" ] || { echo "FAIL: custom_stage $n stopped by '$stop', not the stage: $out"; exit 1; }
  [ "$ends" -eq "$n" ] || { echo "FAIL: custom_stage $n wrote $ends sentence ends: $out"; exit 1; }
done
"$bin" "$model" 0 2>/dev/null && { echo "FAIL: custom_stage accepted N = 0"; exit 1; }
echo "ok: custom_stage stops after exactly 1 and 3 sentences"
