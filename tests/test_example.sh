#!/usr/bin/env bash
# The README's custom operator: greedy stories260K says "Lily" without it;
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
