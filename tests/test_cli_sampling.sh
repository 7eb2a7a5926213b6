#!/usr/bin/env bash
# The sampling flags added after the original's: --dry-* (llama.cpp's DRY
# stage inside the one sampling chain), --preset and the policy thresholds.
set -u
M="$SM_MODELS/stories260K.gguf"
fail() { echo "FAIL: $*"; exit 1; }
gen() { "$SM_BIN" -m "$M" -p "Once upon a time" -n 250 --no-memory --quiet --threads 1 "$@"; }

plain=$(gen -t 0 --no-selfmod) || fail "plain greedy run"
dry=$(gen -t 0 --no-selfmod --dry-multiplier 0.8) || fail "DRY run"
[ "$plain" != "$dry" ] || fail "--dry-multiplier 0.8 left 250 greedy tokens unchanged"
same=$(gen -t 0 --no-selfmod --dry-multiplier 0) || fail "DRY 0 run"
[ "$plain" = "$same" ] || fail "--dry-multiplier 0 changed the output"

orig=$(gen --seed 9) || fail "default policy run"
tuned=$(gen --seed 9 --preset tuned) || fail "--preset tuned run"
explicit=$(gen --seed 9 --confidence-threshold 0 --sharpen-threshold 0.5) || fail "explicit thresholds"
[ "$tuned" = "$explicit" ] || fail "--preset tuned is not --confidence-threshold 0 --sharpen-threshold 0.5"
[ "$tuned" != "$orig" ] || fail "--preset tuned generated the same text as the defaults"
calibrated=$(gen --seed 9 --preset calibrated) || fail "--preset calibrated run"
[ "$calibrated" = "$orig" ] || fail "--preset calibrated is not the default policy"
fixed=$(gen --seed 9 --preset fixed) || fail "--preset fixed run"
fixed_by_flag=$(gen --seed 9 --confidence-threshold 0.5) || fail "a fixed-policy flag without --preset"
[ "$fixed" = "$fixed_by_flag" ] || fail "--confidence-threshold without --preset does not choose the fixed policy"
original=$(gen --seed 9 --preset original --aggressive) || fail "--preset original run"
[ -n "$original" ] || fail "--preset original wrote nothing"

# llama.cpp's samplers: each is on (the parameters say so), changes the
# sampled text at T 1, and repeats with the seed; XTC at probability 1
# with a low threshold cuts the most probable tokens away.
plain=$(gen -t 1 --seed 4 --top-k 0 --top-p 1 --min-p 0) || fail "plain run"
for s in "--typical 0.3" "--top-n-sigma 0.5" "--xtc-probability 1 --xtc-threshold 0.02" "--mirostat 2 --mirostat-ent 1" \
         "--dynatemp-range 0.9 --dynatemp-exp 0.2"; do
  # shellcheck disable=SC2086
  a=$(gen -t 1 --seed 4 --top-k 0 --top-p 1 --min-p 0 $s) || fail "'$s' run"
  # shellcheck disable=SC2086
  b=$(gen -t 1 --seed 4 --top-k 0 --top-p 1 --min-p 0 $s) || fail "'$s' rerun"
  [ "$a" = "$b" ] || fail "'$s' does not repeat with its seed"
  [ "$a" != "$plain" ] || fail "'$s' changed nothing"
done

# Grammars: the text follows one; --json-output is one JSON object; a
# grammar that does not parse is one line, before anything is generated.
yes=$(gen -n 8 --grammar 'root ::= " yes" | " no"') || fail "--grammar run"
[[ "$yes" == " yes" || "$yes" == " no" ]] || fail "--grammar: '$yes'"
json=$("$SM_BIN" -m "$M" -p "Once upon a time" -n 120 --no-memory --quiet --threads 1 --seed 2 --json-output) || fail "--json-output run"
[[ "$json" == "{"* ]] || fail "--json-output: '$json'"
err=$("$SM_BIN" -m "$M" -p x --no-memory --grammar 'root ::= (' 2>&1 >/dev/null); rc=$?
[ $rc -eq 1 ] && [ "$(wc -l <<<"$err")" = 1 ] && grep -q "does not parse" <<<"$err" || fail "a bad grammar: rc $rc: $err"

# JSON schemas (llama.cpp's converter): the text follows the schema, from
# the flag or a file; a schema that is not JSON, or one the converter
# refuses, is one line naming the flag.
schema='{"type":"object","properties":{"age":{"type":"integer"}},"required":["age"],"additionalProperties":false}'
out=$("$SM_BIN" -m "$M" -p "Once" -n 40 --no-memory --quiet --threads 1 --seed 3 --json-schema "$schema") || fail "--json-schema run"
[[ "$out" =~ ^\{[[:space:]]*\"age\"[[:space:]]*:[[:space:]]*-?[0-9] ]] || fail "--json-schema: '$out'"
sfile=$(mktemp); printf '%s' '{"enum":["red","green"]}' > "$sfile"
out=$("$SM_BIN" -m "$M" -p "Colour:" -n 10 --no-memory --quiet --threads 1 --seed 3 --json-schema-file "$sfile") || fail "--json-schema-file run"
[[ "$out" == '"red"' || "$out" == '"green"' ]] || fail "--json-schema-file: '$out'"
for bad in '{"type":' '{"anyOf":[]}'; do
  err=$("$SM_BIN" -m "$M" -p x --no-memory --json-schema "$bad" 2>&1 >/dev/null); rc=$?
  [ $rc -eq 1 ] && [ "$(wc -l <<<"$err")" = 1 ] && grep -q -- "--json-schema" <<<"$err" || fail "schema '$bad': rc $rc: $err"
done
err=$("$SM_BIN" -m "$M" -p x --no-memory --json-schema-file /nonexistent 2>&1 >/dev/null); rc=$?
[ $rc -eq 1 ] && grep -q -- "--json-schema-file: cannot read '/nonexistent'" <<<"$err" || fail "missing schema file: $err"
err=$("$SM_BIN" -m "$M" -p x --no-memory --json-schema '{}' --json-output 2>&1 >/dev/null); rc=$?
[ $rc -eq 2 ] || fail "--json-schema with --json-output: exit $rc"
rm -f "$sfile"

# A Jinja chat template from a file renders the chat; one that does not
# parse is one line.
tfile=$(mktemp); printf '%s' '{% for m in messages %}Q: {{ m.content }}{% endfor %}{% if add_generation_prompt %} A:{% endif %}' > "$tfile"
err=$(printf 'hi\n' | "$SM_BIN" -m "$M" -n 4 --no-memory --seed 1 --chat-template-file "$tfile" 2>&1 >/dev/null) || fail "--chat-template-file run: $err"
grep -q "format: jinja (given)" <<<"$err" || fail "--chat-template-file: not used: $err"
printf '%s' '{% for m in messages %}' > "$tfile"
err=$(printf 'hi\n' | "$SM_BIN" -m "$M" -n 4 --no-memory --chat-template-file "$tfile" 2>&1 >/dev/null); rc=$?
[ $rc -ne 0 ] && grep -q "chat template" <<<"$err" || fail "a bad chat template: rc $rc: $err"
rm -f "$tfile"

for bad in "--dry-multiplier -1" "--dry-base 0.5" "--dry-allowed-length 0" "--dry-penalty-last-n -2" \
           "--typical 2" "--top-n-sigma x" "--xtc-probability -0.5" "--mirostat 1" "--dynatemp-range -1" \
           "--preset fast" "--sharpen-threshold 2" "--critical-threshold x" "--preset calibrated --aggressive" \
           "--preset calibrated --confidence-threshold 0.4"; do
  err=$(gen $bad 2>&1 >/dev/null); rc=$?
  [ $rc -eq 2 ] || fail "'$bad': exit $rc, expected 2"
  grep -q -- "${bad%% *}" <<<"$err" || fail "'$bad': message does not name the flag: $err"
done
echo ok
