#!/usr/bin/env bash
# The README's "Using the CLI" examples run as written (with the shared
# models for MODEL, A and B, a prompt file for prompts.txt, and a short -n):
# a README that shows a command the program refuses is a bug.
set -u
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
: "${SM_SRC:?}"
printf 'Once upon a time\nThe little dog\n' > prompts.txt
block=$(awk '/^## Using the CLI/ { inside = 1 } inside && /^```sh/ { on = 1; next } on && /^```/ { exit } on' "$SM_SRC/README.md")
n=0
while IFS= read -r line; do
  case "$line" in build/llama_selfmod*) ;; *) continue ;; esac
  case "$line" in *" serve "*) continue ;; esac              # a server: tests/test_server.sh
  case "$line" in *" -p "*|*" eval "*) ;; *) continue ;; esac # interactive chat: tests/test_cli.sh
  cmd=${line/build\/llama_selfmod/@BIN@}
  cmd=${cmd//A.gguf,B.gguf/@M@/stories260K.gguf,@M@/llama2xs-salty-280K.gguf}
  cmd=${cmd//MODEL/@M@/stories260K.gguf}
  cmd=${cmd//..\/shared\/models/@M@}
  cmd=${cmd//\"...\"/\"Once upon a time\"}
  cmd=${cmd//@BIN@/\"$SM_BIN\"}
  cmd=${cmd//@M@/$SM_MODELS}
  case "$line" in *" eval "*) cmd="$cmd -n 4 --quiet" ;; *) cmd="$cmd -n 8 --no-memory" ;; esac
  eval "$cmd" > out.txt 2> err.txt || fail "README example failed: $line ($(tail -1 err.txt))"
  [ -s out.txt ] || fail "README example wrote nothing: $line"
  n=$((n + 1))
done <<< "$block"
[ "$n" -ge 5 ] || fail "only $n README examples found"
echo "README CLI examples: $n ran"
