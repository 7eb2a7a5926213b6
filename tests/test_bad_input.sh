#!/usr/bin/env bash
# Every bad input gets one clear error line naming the problem, a non-zero
# exit, no crash, and nothing appended to the memory file.
set -u
: "${SM_BIN:?SM_BIN must name the llama_selfmod program}"
: "${SM_MODELS:?SM_MODELS must name the models folder}"
STORIES="$SM_MODELS/stories260K.gguf"
[ -r "$STORIES" ] || { echo "FAIL: test model missing: $STORIES"; exit 1; }

WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
cd "$WORK" || exit 1

fail() { echo "FAIL: $*"; exit 1; }

# Bad files, made here.
head -c 1000 "$STORIES" > truncated-header.gguf
head -c "$(( $(wc -c < "$STORIES") / 2 ))" "$STORIES" > truncated-data.gguf
printf 'this is a text file, not a model\n' > notgguf.gguf
: > empty.gguf
mkdir adirectory.gguf
LONG_PROMPT="$(for _ in $(seq 200); do printf 'Once upon a time there was a dog. '; done)"

MEM="$WORK/memory.jsonl"
printf '{"prompt":"existing record"}\n' > "$MEM"
cp "$MEM" memory.before

# expect_error NAME EXPECTED_EXIT PATTERN -- ARGS...
#   EXPECTED_EXIT: a number, or "nonzero". PATTERN: grep -E pattern the
#   error line must match (the path, the flag or the value at fault).
expect_error() {
  local name="$1" expected="$2" pattern="$3"
  shift 4
  "$SM_BIN" "$@" > out.txt 2> err.txt < /dev/null
  local code=$?
  if [ "$expected" = nonzero ]; then
    [ "$code" -ne 0 ] || fail "$name: exit code 0"
  else
    [ "$code" = "$expected" ] || fail "$name: exit code $code, expected $expected; stderr: $(cat err.txt)"
  fi
  grep -qE 'Segmentation fault|AddressSanitizer|runtime error|GGML_ASSERT|Aborted' err.txt \
    && fail "$name: crashed: $(head -5 err.txt)"
  [ "$(wc -l < err.txt | tr -d ' ')" = 1 ] || fail "$name: expected one error line, got: $(cat err.txt)"
  grep -q '^llama_selfmod: error: ' err.txt || fail "$name: not a 'llama_selfmod: error:' line: $(cat err.txt)"
  grep -qE -- "$pattern" err.txt || fail "$name: the message does not name '$pattern': $(cat err.txt)"
  [ -s out.txt ] && fail "$name: wrote to stdout: $(head -c 200 out.txt)"
  cmp -s "$MEM" memory.before || fail "$name: the memory file changed"
  echo "ok: $name"
}

M=(--memory-file "$MEM" --quiet)
P=(-p "Once upon a time")

# Models.
expect_error "missing model file" 1 "nothere\.gguf.*No such file" -- -m "$WORK/nothere.gguf" "${P[@]}" "${M[@]}"
expect_error "default model absent" 1 "models/model\.gguf" -- "${P[@]}" "${M[@]}"
expect_error "directory as model" 1 "adirectory\.gguf" -- -m adirectory.gguf "${P[@]}" "${M[@]}"
expect_error "path through a file" 1 "notgguf\.gguf/x\.gguf" -- -m notgguf.gguf/x.gguf "${P[@]}" "${M[@]}"
expect_error "truncated header" 1 "truncated-header\.gguf" -- -m truncated-header.gguf "${P[@]}" "${M[@]}"
expect_error "truncated tensor data" 1 "truncated-data\.gguf" -- -m truncated-data.gguf "${P[@]}" "${M[@]}"
expect_error "text file as model" 1 "notgguf\.gguf.*GGUF" -- -m notgguf.gguf "${P[@]}" "${M[@]}"
expect_error "empty file as model" 1 "empty\.gguf.*GGUF" -- -m empty.gguf "${P[@]}" "${M[@]}"
expect_error "empty model path" 2 "model" -- -m "" "${P[@]}" "${M[@]}"

# Prompts.
expect_error "empty prompt" 2 "empty prompt.*--prompt" -- -m "$STORIES" -p "" "${M[@]}"
expect_error "prompt longer than the context" 1 "prompt.*context" -- -m "$STORIES" -p "$LONG_PROMPT" --ctx-size 64 "${M[@]}"

# Flag values: exit code 2, before anything loads.
expect_error "negative n-predict" 2 "'-5' for --n-predict" -- -m "$STORIES" "${P[@]}" -n -5 "${M[@]}"
expect_error "n-predict not a number" 2 "'12x' for --n-predict" -- -m "$STORIES" "${P[@]}" --n-predict 12x "${M[@]}"
expect_error "top-p zero" 2 "'0' for --top-p" -- -m "$STORIES" "${P[@]}" --top-p 0 "${M[@]}"
expect_error "top-p above one" 2 "'1.5' for --top-p" -- -m "$STORIES" "${P[@]}" --top-p 1.5 "${M[@]}"
expect_error "negative temperature" 2 "'-0.1' for --temperature" -- -m "$STORIES" "${P[@]}" -t -0.1 "${M[@]}"
expect_error "temperature nan" 2 "'nan' for --temperature" -- -m "$STORIES" "${P[@]}" -t nan "${M[@]}"
expect_error "min-p one" 2 "'1' for --min-p" -- -m "$STORIES" "${P[@]}" --min-p 1 "${M[@]}"
expect_error "top-k empty" 2 "'' for --top-k" -- -m "$STORIES" "${P[@]}" --top-k "" "${M[@]}"
expect_error "ctx-size negative" 2 "'-1' for --ctx-size" -- -m "$STORIES" "${P[@]}" --ctx-size -1 "${M[@]}"
expect_error "threads overflow" 2 "for --threads" -- -m "$STORIES" "${P[@]}" --threads 99999999999999999999 "${M[@]}"
expect_error "seed negative" 2 "'-3' for --seed" -- -m "$STORIES" "${P[@]}" --seed -3 "${M[@]}"
expect_error "unknown flag" 2 "--bogus" -- -m "$STORIES" "${P[@]}" --bogus "${M[@]}"
expect_error "unknown short flag" 2 "'-z'" -- -m "$STORIES" "${P[@]}" -z "${M[@]}"
expect_error "missing flag value" 2 "--top-k needs a value" -- -m "$STORIES" "${P[@]}" "${M[@]}" --top-k
expect_error "stray argument" 2 "'stray'" -- -m "$STORIES" "${P[@]}" stray "${M[@]}"
expect_error "unknown operator" 2 "--operator 'nosuch'.*probability_threshold" -- -m "$STORIES" "${P[@]}" --operator nosuch "${M[@]}"
expect_error "unknown operator key" 2 "--operator.*min_probability" -- -m "$STORIES" "${P[@]}" --operator probability_threshold:nokey=1 "${M[@]}"
expect_error "bad combine mode" 2 "'both' for --combine" -- -m "$STORIES" "${P[@]}" --combine both "${M[@]}"

expect_error "value given to a flag without one" 2 "'--quiet=1': this flag takes no value" -- -m "$STORIES" "${P[@]}" --quiet=1 --memory-file "$MEM"
expect_error "critical threshold above confidence" 2 "critical-threshold 0.6 is above --confidence-threshold 0.5" -- -m "$STORIES" "${P[@]}" --critical-threshold 0.6 "${M[@]}"
expect_error "sharpen threshold below confidence" 2 "sharpen-threshold 0.3 is below" -- -m "$STORIES" "${P[@]}" --sharpen-threshold 0.3 "${M[@]}"
expect_error "-m beside --models" 2 "both -m/--model and --models" -- -m "$STORIES" --models "$STORIES,$STORIES" "${P[@]}" "${M[@]}"
expect_error "control vector scale not a number" 1 "scale 'abc' is not a number" -- -m "$STORIES" "${P[@]}" --control-vector "$STORIES:abc" "${M[@]}"
SHORT_PROMPT="$(for _ in $(seq 12); do printf 'Once upon a time there was a dog. '; done)"
expect_error "prompt longer than a small context" 1 "prompt is [0-9]+ tokens but the context holds 64" -- -m "$STORIES" -p "$SHORT_PROMPT" --ctx-size 64 "${M[@]}"
printf 'my notes, not a prompt cache\n' > notes.txt
cp notes.txt notes.before
expect_error "prompt cache that is not one" 1 "notes\.txt' is not a prompt cache.*refusing to overwrite" -- -m "$STORIES" "${P[@]}" --prompt-cache notes.txt "${M[@]}"
cmp -s notes.txt notes.before || fail "the prompt cache run overwrote a file that was not a prompt cache"

# Memory files that cannot be appended to: refused before the model loads.
expect_error "memory file in a missing directory" 1 "/no-such-dir/m\.jsonl" -- -m "$STORIES" "${P[@]}" --memory-file "$WORK/no-such-dir/m.jsonl" --quiet
expect_error "memory file under /proc" 1 "/proc/nonexistent/m\.jsonl" -- -m "$STORIES" "${P[@]}" --memory-file /proc/nonexistent/m.jsonl --quiet
expect_error "memory file is a directory" 1 "adirectory\.gguf" -- -m "$STORIES" "${P[@]}" --memory-file adirectory.gguf --quiet

# A good run still works and appends exactly one line (the checks above
# would pass for a program that never writes the file).
"$SM_BIN" -m "$STORIES" "${P[@]}" -n 5 --threads 1 "${M[@]}" > /dev/null || fail "a good run failed"
[ "$(wc -l < "$MEM" | tr -d ' ')" = 2 ] || fail "a good run did not append one memory line"

echo "bad input: all checks passed"
