#!/usr/bin/env bash
# llama.cpp's short flags as llama-cli and llama-server users type them
# (-ngl 99, -np 4, -nr): getopt used to read "-ngl 0" as -n "gl" and fail
# on the number. Those the program has mean the same as their long names;
# the other multi-letter ones of llama.cpp are refused by name; a prompt
# that happens to spell one is a prompt.
set -u
HERE="$(cd "$(dirname "$0")" && pwd)"
. "$HERE/serve_helpers.sh"
. "$HERE/lib.sh"

# the CLI: the same text as with the long names
"$SM_BIN" -m "$STORIES" -p "Once upon a time" -n 12 --n-gpu-layers 0 --no-repack --ctx-size 256 --seed 3 \
  -t 0.8 --no-memory > long.txt 2> /dev/null || fail "long flags"
"$SM_BIN" -m "$STORIES" -p "Once upon a time" -n 12 -ngl 0 -nr -c 256 -s 3 -t 0.8 --no-memory > short.txt 2> err.txt \
  || fail "llama.cpp's short flags refused: $(cat err.txt)"
cmp -s long.txt short.txt || fail "-ngl -nr -c -s differ from their long names: '$(cat short.txt)' vs '$(cat long.txt)'"
# a value is left alone, even one that spells a flag
"$SM_BIN" -m "$STORIES" -p -ngl -n 4 --no-memory > /dev/null 2> err.txt || fail "the prompt '-ngl': $(cat err.txt)"
# llama.cpp's flags this program lacks: one line naming the flag, exit 2
"$SM_BIN" -m "$STORIES" -p hi -ctk q8_0 > /dev/null 2> err.txt
code=$?
[ "$code" = 2 ] || fail "-ctk: exit $code"
grep -q "^llama_selfmod: error: -ctk is a llama.cpp flag" err.txt || fail "-ctk: $(cat err.txt)"
"$SM_BIN" serve -m "$STORIES" -fa on > /dev/null 2> err.txt && fail "serve -fa accepted"
grep -q "serve: error: -fa is a llama.cpp flag" err.txt || fail "serve -fa: $(cat err.txt)"

# -f/--file: the prompt from a file, one final newline dropped (llama-cli's
# -f); -sysf/--system-prompt-file: the chat's system prompt from a file
printf 'Once upon a time\n' > prompt.txt
"$SM_BIN" -m "$STORIES" -f prompt.txt -n 12 -c 256 -s 3 -t 0.8 --no-memory > from_file.txt 2> err.txt \
  || fail "-f: $(cat err.txt)"
cmp -s long.txt from_file.txt || fail "-f differs from -p: '$(cat from_file.txt)' vs '$(cat long.txt)'"
for args in "-f prompt.txt -p hi" "-p hi --file prompt.txt"; do
  # shellcheck disable=SC2086
  "$SM_BIN" -m "$STORIES" $args > /dev/null 2> err.txt; code=$?
  [ "$code" = 2 ] && grep -q "both give the prompt" err.txt || fail "$args: exit $code, $(cat err.txt)"
done
"$SM_BIN" -m "$STORIES" -f no-such-file.txt > /dev/null 2> err.txt; code=$?
[ "$code" = 2 ] && grep -q "^llama_selfmod: error: -f/--file: cannot read 'no-such-file.txt'" err.txt \
  || fail "-f of a missing file: exit $code, $(cat err.txt)"
mkdir -p a-folder
"$SM_BIN" -m "$STORIES" -f a-folder > /dev/null 2> err.txt; code=$?
[ "$code" = 2 ] && grep -q "cannot read 'a-folder': Is a directory" err.txt || fail "-f of a folder: exit $code, $(cat err.txt)"
: > empty.txt
"$SM_BIN" -m "$STORIES" -f empty.txt > /dev/null 2> err.txt; code=$?
[ "$code" = 2 ] && grep -q "is empty" err.txt || fail "-f of an empty file: exit $code, $(cat err.txt)"
CHAT="$SM_MODELS/cardputer-chat-3M.gguf"
printf 'You are terse.\n' > system.txt
chat_start() { # FLAGS -> the prompt's length and the tokens the reply starts with
  printf 'hello\n' | "$SM_BIN" -m "$CHAT" -n 4 -s 1 --no-memory --json-stream "$@" 2> /dev/null \
    | grep -o '"n_prompt_tokens":[0-9]*\|"token":[0-9]*' | tr '\n' ' '
}
with_flag=$(chat_start --system "You are terse.") from_file=$(chat_start -sysf system.txt)
without=$(chat_start)
[ -n "$with_flag" ] && [ "$with_flag" = "$from_file" ] || fail "-sysf: '$from_file' vs --system: '$with_flag'"
[ "$with_flag" != "$without" ] || fail "the system prompt changed nothing"
# with -p they shape nothing: said, not ignored
"$SM_BIN" -m "$STORIES" -f prompt.txt -n 2 -sysf system.txt --no-memory > /dev/null 2> err.txt || fail "-f -sysf: $(cat err.txt)"
grep -q "warning: --system-prompt-file has no effect with -p/-f" err.txt || fail "-f with -sysf: '$(cat err.txt)'"
"$SM_BIN" -m "$STORIES" -p hi -n 2 --chat-template-kwargs '{}' --no-memory > /dev/null 2> err.txt
grep -q "warning: --chat-template-kwargs has no effect" err.txt || fail "-p with --chat-template-kwargs: '$(cat err.txt)'"
# --chat-template-kwargs: the template's variables (llama-cli's flag)
printf '%s' '{{ mood | default("") }}{% for m in messages %}<{{ m.role }}>{{ m.content }}{% endfor %}<assistant>' > mood.jinja
plain=$(chat_start --chat-template-file mood.jinja)
moody=$(chat_start --chat-template-file mood.jinja --chat-template-kwargs '{"mood": "very calm and happy"}')
[ "${plain%% *}" != "${moody%% *}" ] || fail "--chat-template-kwargs changed nothing: '$moody'"
printf 'hello\n' | "$SM_BIN" -m "$CHAT" --chat-template-kwargs '[1]' -n 2 --no-memory > /dev/null 2> err.txt \
  && fail "--chat-template-kwargs [1] accepted"
grep -q "chat_template_kwargs: must be a JSON object" err.txt || fail "--chat-template-kwargs [1]: $(cat err.txt)"

# --samplers (llama-cli's): only the named samplers run, wherever the flag stands
gen() { "$SM_BIN" -m "$STORIES" -p "Once upon a time" -n 24 --seed 5 --temp 0.9 --no-memory --quiet --no-selfmod "$@"; }
a=$(gen --samplers "top_k;top_p;min_p;temperature") b=$(gen --repeat-penalty 1)
[ "$a" = "$b" ] || fail "--samplers without penalties is not --repeat-penalty 1: '$a' / '$b'"
a=$(gen --samplers "top_k;top_p;min_p" --temp 0.2) b=$(gen --temp 1 --repeat-penalty 1)
[ "$a" = "$b" ] || fail "--samplers without temperature does not sample at T 1: '$a' / '$b'"
[ "$(gen --samplers 'top_k;top_p;min_p;temperature')" != "$(gen --samplers 'top_k;top_p;min_p;temperature' --temp 0.2)" ] \
  || fail "--samplers with temperature ignored --temp"
gen --samplers "temperature;top_k" > /dev/null 2> err.txt && fail "--samplers out of order accepted"
grep -q "'top_k' after 'temperature'" err.txt || fail "--samplers out of order: $(cat err.txt)"
[ "$(gen --sampling-seq kpmt)" = "$(gen --samplers 'top_k;top_p;min_p;temperature')" ] \
  || fail "--sampling-seq kpmt is not --samplers top_k;top_p;min_p;temperature"
gen --samplers "top_k" --mirostat 2 > /dev/null 2> err.txt && fail "--samplers with --mirostat accepted"
grep -q "mirostat replaces the chain" err.txt || fail "--samplers with --mirostat: $(cat err.txt)"
gen --samplers "top_k;bogus" > /dev/null 2> err.txt && fail "--samplers bogus accepted"
grep -q "unknown sampler 'bogus'" err.txt || fail "--samplers bogus: $(cat err.txt)"

# serve: llama-server's -np, -t, -a, -nr, -kvu, -b, and its -c: the context
# of all the slots, split among them (whole with -kvu), as llama-server does
serve_props() { # FLAGS... -> "slots_idle n_ctx model_id"
  : > serve.log
  "$SM_BIN" serve -m "$STORIES" --port 0 --quiet "$@" > serve.log 2>&1 &
  local spid=$! port
  port=$(listening_port serve.log $spid) || fail "serve $* did not start: $(cat serve.log)"
  local health props models
  health=$(curl -s "127.0.0.1:$port/health") props=$(curl -s "127.0.0.1:$port/props")
  models=$(curl -s "127.0.0.1:$port/v1/models")
  kill $spid; wait $spid 2> /dev/null
  python3 -c 'import json,sys; h,p,m=(json.loads(a) for a in sys.argv[1:]);
print(h["slots_idle"], p["default_generation_settings"]["n_ctx"], m["data"][0]["id"])' "$health" "$props" "$models"
}
got=$(serve_props -np 3 -t 1 -a tiny -nr -b 64 -c 900)
[ "$got" = "3 300 tiny" ] || fail "-np 3 -a tiny -c 900: slots, context per slot, id are '$got'"
got=$(serve_props -np 3 -kvu -c 400)
[ "$got" = "3 400 stories260K" ] || fail "-np 3 -kvu -c 400: '$got'"
"$SM_BIN" serve -m "$STORIES" -c 256 --ctx-size 128 > /dev/null 2> err.txt && fail "-c with --ctx-size accepted"
grep -q "not both" err.txt || fail "-c with --ctx-size: $(cat err.txt)"

# eval: -np, -nr, -c, -t as --parallel, --no-repack, --ctx-size, --threads
"$SM_BIN" eval -f "$SM_SRC/data/prompts/stories.txt" -m "$STORIES" --limit 2 -n 6 --strategies greedy --quiet \
  -np 2 -nr -c 256 -t 1 > eval.txt 2> err.txt || fail "eval with llama.cpp's flags: $(cat err.txt)"
echo "llama.cpp flags: all checks passed"
