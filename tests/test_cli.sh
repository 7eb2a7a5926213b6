#!/usr/bin/env bash
# The llama_selfmod program end to end on real models: single prompts, the
# JSON event stream, the memory file, retraction, and a chat through a pipe.
set -u
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
# One thread: the tests stay fast when other jobs share the cores.
COMMON=(--quiet --threads 1)

# Checks a --json-stream output file: every line is JSON, the first is
# start and the last done, and replaying the token events (each removal
# cuts the list at its token_index) spells the done text byte for byte.
# Prints "n_retractions n_tokens" of the done object.
check_json_stream() {
  python3 - "$1" <<'EOF'
import json, sys
data = open(sys.argv[1], 'rb').read()
if not data.endswith(b'\n'): sys.exit('output does not end with a newline')
objs = []
for n, line in enumerate(data.split(b'\n')[:-1], 1):
    try: objs.append(json.loads(line))
    except ValueError as e: sys.exit(f'line {n} is not JSON ({e}): {line[:120]!r}')
if not objs or objs[0].get('type') != 'start': sys.exit('the first object is not a start event')
if objs[-1].get('type') != 'done': sys.exit('the last object is not a done event')
def raw(o, key):
    return bytes(o[key + '_bytes']) if key + '_bytes' in o else o[key].encode()
pieces, retractions = [], 0
for o in objs[1:-1]:
    t = o.get('type')
    if t == 'token':
        if o['index'] != len(pieces): sys.exit(f'token index {o["index"]} after {len(pieces)} kept tokens')
        for k in ('p_chosen', 'logit', 'p_top1', 'p_top2', 'entropy', 'p_sampled', 'temperature', 'repeat_penalty'):
            if k not in o: sys.exit(f'token event without {k}')
        pieces.append(raw(o, 'piece'))
    elif t in ('retraction', 'backtrack'):
        if not 0 <= o['token_index'] <= len(pieces): sys.exit(f'{t} at {o["token_index"]} of {len(pieces)}')
        if o['n_removed'] < 1: sys.exit(f'{t} removed {o["n_removed"]} tokens')
        del pieces[o['token_index']:]
        retractions += t == 'retraction'
    elif t == 'modification':
        for k in ('mod_type', 'token_index', 'confidence', 'description', 'temperature_before', 'temperature_after'):
            if k not in o: sys.exit(f'modification event without {k}')
    else:
        sys.exit(f'unexpected event type {t!r}')
done = objs[-1]
text = b''.join(pieces)
if done['stop_reason'] != 'stop_string' and text != raw(done, 'text'):
    sys.exit(f'token pieces {text[:80]!r} differ from the done text {raw(done, "text")[:80]!r}')
if retractions != done['n_retractions']: sys.exit(f'{retractions} retraction events, done says {done["n_retractions"]}')
if len(pieces) != done['n_tokens']: sys.exit(f'{len(pieces)} kept tokens, done says {done["n_tokens"]}')
print(done['n_retractions'], done['n_tokens'])
EOF
}

# Checks every line of a memory file from line $2 on: a JSON record with
# the original's fields and the added ones. $3: the expected prompt.
check_memory_records() {
  python3 - "$@" <<'EOF'
import json, sys
path, first, prompt = sys.argv[1], int(sys.argv[2]), sys.argv[3]
lines = open(path, 'rb').read().split(b'\n')
if lines[-1] != b'': sys.exit('the memory file does not end with a newline')
for n, line in enumerate(lines[first - 1:-1], first):
    try: r = json.loads(line)
    except ValueError as e: sys.exit(f'memory line {n} is not JSON ({e})')
    original = ['timestamp', 'prompt', 'response', 'modifications', 'avg_confidence', 'final_temperature', 'retractions']
    added = ['model', 'parameters', 'n_prompt_tokens', 'n_tokens', 'n_sampled', 'n_decoded', 'n_backtracks', 'stop_reason', 'timings']
    missing = [k for k in original + added if k not in r]
    if missing: sys.exit(f'memory line {n} lacks {missing}')
    if r['prompt'] != prompt: sys.exit(f'memory line {n}: prompt {r["prompt"]!r}, expected {prompt!r}')
    if not r['timestamp'].endswith('Z') or r['timestamp'][10] != 'T': sys.exit(f'timestamp {r["timestamp"]} is not RFC 3339 UTC')
    for k in ('temperature', 'top_k', 'top_p', 'min_p', 'repeat_penalty', 'seed', 'confidence_threshold', 'aggressive', 'max_retractions'):
        if k not in r['parameters']: sys.exit(f'memory line {n}: parameters lack {k}')
    for k in ('t_prompt_ms', 't_generate_ms', 'tokens_per_s'):
        if k not in r['timings']: sys.exit(f'memory line {n}: timings lack {k}')
    for m in r['modifications']:
        for k in ('token_index', 'mod_type', 'confidence', 'description'):
            if k not in m: sys.exit(f'memory line {n}: a modification lacks {k}')
EOF
}

line_count() { wc -l < "$1" | tr -d ' '; }

# --help and --version -------------------------------------------------
"$SM_BIN" --help > help.txt || fail "--help exited non-zero"
for flag in --model --prompt --ctx-size --temperature --top-k --top-p --min-p --repeat-penalty \
            --n-predict --confidence-threshold --aggressive --max-retractions --n-gpu-layers \
            --threads --memory-file --quiet --seed --no-color --json-stream --operator; do
  grep -q -- "$flag" help.txt || fail "--help does not list $flag"
done
grep -q "selfmod_memory.jsonl" help.txt || fail "--help does not give the memory file's default"
version="$("$SM_BIN" --version)" || fail "--version exited non-zero"
[[ "$version" =~ ^llama_selfmod\ [0-9]+\.[0-9]+\.[0-9]+\ \(llama\.cpp\ 0\.5\.0\)$ ]] \
  || fail "--version printed '$version'"

# Single prompts on both models ------------------------------------------
for model in "$STORIES" "$CHAT"; do
  name="$(basename "$model")"
  mem="mem-$name.jsonl"
  prompt="Once upon a time"
  "$SM_BIN" -m "$model" -p "$prompt" -n 40 --seed 11 --memory-file "$mem" "${COMMON[@]}" \
    > plain.out 2> plain.err || fail "$name: -p exited non-zero: $(cat plain.err)"
  [ -s plain.err ] && fail "$name: --quiet still wrote to stderr: $(head -3 plain.err)"
  [ "$(tr -d '\n' < plain.out | wc -c)" -gt 0 ] || fail "$name: no text produced"
  [ "$(line_count "$mem")" = 1 ] || fail "$name: memory file has $(line_count "$mem") lines after one generation"
  check_memory_records "$mem" 1 "$prompt" || fail "$name: memory record invalid"

  "$SM_BIN" -m "$model" -p "$prompt" -n 40 --seed 11 --memory-file "$mem" --json-stream "${COMMON[@]}" \
    > stream.out 2> stream.err || fail "$name: --json-stream exited non-zero: $(cat stream.err)"
  check_json_stream stream.out > stream.summary || fail "$name: --json-stream output invalid"
  [ "$(line_count "$mem")" = 2 ] || fail "$name: memory file has $(line_count "$mem") lines after two generations"
  check_memory_records "$mem" 1 "$prompt" || fail "$name: memory records invalid"

  # Plain stdout (not a terminal) is the done text and a newline, byte for
  # byte, for the same seed.
  python3 - stream.out plain.out <<'EOF' || fail "$name: plain output differs from the json-stream done text"
import json, sys
done = json.loads(open(sys.argv[1], 'rb').read().split(b'\n')[-2])
text = bytes(done['text_bytes']) if 'text_bytes' in done else done['text'].encode()
plain = open(sys.argv[2], 'rb').read()
if plain != text + b'\n': sys.exit(f'plain {plain[:80]!r} vs done {text[:80]!r}')
EOF
  start_seed="$(head -1 stream.out | python3 -c 'import json,sys; print(json.load(sys.stdin)["seed"])')"
  [ "$start_seed" = 11 ] || fail "$name: start event reports seed $start_seed, not 11"
done

# Without --seed a seed is chosen and reported, so the run can be repeated.
"$SM_BIN" -m "$STORIES" -p "Once upon a time" -n 20 --no-memory --json-stream "${COMMON[@]}" > a.out \
  || fail "run without --seed failed"
seed="$(head -1 a.out | python3 -c 'import json,sys; print(json.load(sys.stdin)["seed"])')" \
  || fail "start event has no seed"
"$SM_BIN" -m "$STORIES" -p "Once upon a time" -n 20 --no-memory --json-stream --seed "$seed" "${COMMON[@]}" > b.out \
  || fail "run with the reported seed failed"
[ "$(tail -1 a.out | python3 -c 'import json,sys; print(json.load(sys.stdin)["text"])')" = \
  "$(tail -1 b.out | python3 -c 'import json,sys; print(json.load(sys.stdin)["text"])')" ] \
  || fail "the reported seed $seed does not repeat the run"

# A memory file whose last line was cut off (a killed writer) ------------
printf '{"timestamp":"2025-01-01T00:00:00.000Z","prompt":"old"}\n{"timestamp":"2025-01-01T00:00:01.000Z","pro' > cut.jsonl
cp cut.jsonl cut.before
"$SM_BIN" -m "$STORIES" -p "The dog" -n 10 --seed 3 --memory-file cut.jsonl "${COMMON[@]}" > /dev/null \
  || fail "generation with a truncated memory file failed"
cmp -s cut.before <(head -c "$(wc -c < cut.before)" cut.jsonl) || fail "earlier memory lines were changed"
[ "$(line_count cut.jsonl)" = 3 ] || fail "the new record is not on its own line: $(cat cut.jsonl)"
tail -1 cut.jsonl > cut.new
check_memory_records cut.new 1 "The dog" || fail "the record after a truncated line is invalid"

# Retraction: --aggressive on a low-confidence run -----------------------
# The chat model answering a story prompt at a high temperature is unsure
# of most tokens, so the window mean falls below the critical 0.35.
"$SM_BIN" -m "$CHAT" -p "Once upon a time" -n 80 --seed 5 --aggressive --max-retractions 2 \
  --temperature 1.5 --top-k 0 --top-p 1 --min-p 0 --memory-file retract.jsonl --json-stream "${COMMON[@]}" \
  > retract.out || fail "--aggressive run failed"
read -r n_retractions n_tokens < <(check_json_stream retract.out) || fail "--aggressive json-stream invalid"
[ "${n_retractions:-0}" -ge 1 ] || fail "no retraction in a low-confidence --aggressive run"
[ "$n_retractions" -le 2 ] || fail "$n_retractions retractions with --max-retractions 2"
logged="$(python3 -c 'import json,sys; print(json.loads(open(sys.argv[1]).readline())["retractions"])' retract.jsonl)"
[ "$logged" = "$n_retractions" ] || fail "memory file says $logged retractions, the stream $n_retractions"
# The same run with --no-retract never retracts.
"$SM_BIN" -m "$CHAT" -p "Once upon a time" -n 80 --seed 5 --aggressive --no-retract \
  --temperature 1.5 --top-k 0 --top-p 1 --min-p 0 --no-memory --json-stream "${COMMON[@]}" > noretract.out \
  || fail "--no-retract run failed"
read -r n_retractions n_tokens < <(check_json_stream noretract.out) || fail "--no-retract json-stream invalid"
[ "$n_retractions" = 0 ] || fail "--no-retract still retracted $n_retractions times"

# The Rust original's stream and record --------------------------------
# --json-stream=original (or LLAMA_SELFMOD_JSON_STREAM=original, for its GUI
# that passes a fixed command line): init, token, modification, complete
# with its keys; a retraction is a CRITICAL_RETRACT modification; the
# counts in complete match the lines. --memory-format original writes its
# record; --wrap-prompt feeds "User: ...\nAssistant:" and records the prompt.
for how in flag env; do
  if [ "$how" = flag ]; then stream=(--json-stream=original); else stream=(--json-stream); fi
  rm -f orig.jsonl
  LLAMA_SELFMOD_JSON_STREAM=$([ "$how" = env ] && echo original) \
  "$SM_BIN" -m "$CHAT" -p "Once upon a time" -n 80 --seed 5 --aggressive --max-retractions 2 \
    --temperature 1.5 --top-k 0 --top-p 1 --min-p 0 --memory-file orig.jsonl --memory-format original \
    --wrap-prompt "${stream[@]}" "${COMMON[@]}" > orig.out || fail "--json-stream=original ($how) run failed"
  python3 - orig.out orig.jsonl <<'EOF' || fail "--json-stream=original ($how): not the original's stream"
import json, sys
objs = [json.loads(l) for l in open(sys.argv[1])]
keys = lambda o: list(o.keys())
if keys(objs[0]) != ['type', 'num_models', 'fusion_mode', 'model_names'] or objs[0]['type'] != 'init':
    sys.exit(f'first line {objs[0]}')
if objs[0]['model_names'] != ['cardputer-chat-3M.gguf']: sys.exit(f'model_names {objs[0]["model_names"]}')
if keys(objs[-1]) != ['type', 'total_tokens', 'avg_confidence', 'modifications', 'retractions']: sys.exit(f'last line {objs[-1]}')
tokens = [o for o in objs if o['type'] == 'token']
mods = [o for o in objs if o['type'] == 'modification']
if len(tokens) + len(mods) + 2 != len(objs): sys.exit('a line of another type')
for t in tokens:
    if keys(t) != ['type', 'text', 'confidence', 'consciousness']: sys.exit(f'token keys {keys(t)}')
    if keys(t['consciousness']) != ['human_emotions', 'ai_states', 'metrics']: sys.exit('consciousness keys')
retracts = [m for m in mods if m['mod_type'] == 'CRITICAL_RETRACT']
done = objs[-1]
if not retracts or done['retractions'] != len(retracts): sys.exit(f'{len(retracts)} CRITICAL_RETRACT lines, complete says {done["retractions"]}')
if done['modifications'] != len(mods): sys.exit(f'{len(mods)} modification lines, complete says {done["modifications"]}')
removed = sum(m['n_removed'] for m in retracts)
if done['total_tokens'] != len(tokens) - removed: sys.exit(f'total_tokens {done["total_tokens"]} != {len(tokens)} - {removed}')
# the first token after a retraction: "flow" drops to 0.6, as in the original
after = objs.index(retracts[0]) + 1
later = [o for o in objs[after:] if o['type'] == 'token']
if later and later[0]['consciousness']['ai_states']['flow'] != 0.6: sys.exit('flow after a retraction')
r = json.loads(open(sys.argv[2]).readline())
if keys(r) != ['timestamp', 'prompt', 'response', 'modifications', 'avg_confidence', 'final_temperature', 'retractions']:
    sys.exit(f'record keys {keys(r)}')
if r['prompt'] != 'Once upon a time': sys.exit(f'record prompt {r["prompt"]!r}')
if r['retractions'] != done['retractions']: sys.exit('record retractions')
if [m['mod_type'] for m in r['modifications']].count('CRITICAL_RETRACT') != len(retracts): sys.exit('record retracts')
for m in r['modifications']:
    if keys(m) != ['token_idx', 'mod_type', 'confidence', 'description']: sys.exit(f'record modification {keys(m)}')
EOF
done
# --wrap-prompt changes what the model sees, and only that
"$SM_BIN" -m "$STORIES" -p "hi" -n 1 --wrap-prompt --json-stream --no-memory "${COMMON[@]}" > wrapped.out
grep -q '"prompt":"User: hi\\nAssistant:"' wrapped.out || fail "--wrap-prompt: $(head -c 300 wrapped.out)"
# --prefill: the answer begins with the text, spelled exactly, and goes on
out=$("$SM_BIN" -m "$STORIES" -p "Once upon a time" --prefill " there was a purple dragon" -n 40 -t 0 --no-memory \
  "${COMMON[@]}") || fail "--prefill run failed"
[[ "$out" == " there was a purple dragon"?* ]] || fail "--prefill: '$out'"
for bad in "--wrap-prompt" "--json-stream=xml -p hi" "--memory-format xml -p hi" "--prefill= -p hi"; do
  # shellcheck disable=SC2086
  "$SM_BIN" -m "$STORIES" $bad --no-memory > /dev/null 2> bad.err
  [ $? = 2 ] && [ "$(wc -l < bad.err)" = 1 ] || fail "'$bad': not a one-line usage error: $(cat bad.err)"
done

# backtracking-llm's semantics from the command line: the preset's
# defaults, refined by flags on either side of it; with every-2 heeding a
# backtrack lands on an odd position and (its count 1) removes the token
# and the one before it.
"$SM_BIN" -m "$STORIES" -p "Once upon a time" -n 40 --seed 1 --no-memory --json-stream -t 0.9 \
  --preset backtracking-llm --operator probability_threshold:min_probability=0.3 --backtrack-every 2 \
  "${COMMON[@]}" > btllm.out || fail "--preset backtracking-llm run failed"
python3 - btllm.out <<'EOF' || fail "--preset backtracking-llm: not its semantics"
import json, sys
objs = [json.loads(l) for l in open(sys.argv[1])]
p = objs[0]['parameters']
want = {"temperature": 0.9, 'top_k': 50, 'top_p': 1, 'min_p': 0, 'repeat_penalty': 1, 'operator_input': 'original',
        'operator_top_k': 50, 'backtrack_every_only': True}
got = {k: p.get(k) for k in want}
if got != want: sys.exit(f'parameters {got}')
if p['selfmod']: sys.exit('self-modification on')
bts = [o for o in objs if o['type'] == 'backtrack']
if not bts: sys.exit('no backtrack')
for b in bts:
    if b['n_removed'] != 2 or b['token_index'] % 2 != 0: sys.exit(f'backtrack {b}')
EOF
for bad in "--operator-input topk" "--operator-top-k 0" "--operator-top-k 1001" "--operator-temperature -1" \
           "--preset nope"; do
  # shellcheck disable=SC2086
  "$SM_BIN" -m "$STORIES" -p hi $bad --no-memory > /dev/null 2> bad.err
  [ $? = 2 ] && [ "$(wc -l < bad.err)" = 1 ] || fail "'$bad': not a one-line usage error: $(cat bad.err)"
done
grep -q "backtracking-llm" bad.err || fail "--preset nope does not list backtracking-llm: $(cat bad.err)"

# Operators from the command line: backtracks are streamed, and replaying
# them still spells the final text -----------------------------------------
"$SM_BIN" -m "$STORIES" -p "Once upon a time" -n 80 --seed 2 --operator probability_threshold:min_probability=0.3 \
  --max-backtracks 20 --no-memory --json-stream "${COMMON[@]}" > ops.out || fail "--operator run failed"
check_json_stream ops.out > /dev/null || fail "--operator json-stream invalid"
grep -q '"type":"backtrack"' ops.out || fail "no backtrack event with a probability_threshold of 0.3"
python3 -c 'import json,sys; d=json.loads(open(sys.argv[1]).readlines()[-1]); sys.exit(0 if 1 <= d["n_backtracks"] <= 20 else 1)' ops.out \
  || fail "backtracks outside 1..--max-backtracks 20"

# A stop string ends the text before it --------------------------------
"$SM_BIN" -m "$STORIES" -p "Once upon a time" -n 60 -t 0 --stop "Lily" --no-memory --json-stream "${COMMON[@]}" > stop.out \
  || fail "--stop run failed"
"$SM_BIN" -m "$STORIES" -p "Once upon a time" -n 60 -t 0 --stop "Lily" --no-memory "${COMMON[@]}" > stop.txt \
  || fail "--stop plain run failed"
python3 - stop.out stop.txt <<'EOF' || fail "--stop: the output does not end before the stop string"
import json, sys
done = json.loads(open(sys.argv[1]).readlines()[-1])
plain = open(sys.argv[2]).read()
if done['stop_reason'] != 'stop_string': sys.exit(f'stop reason {done["stop_reason"]}')
if 'Lily' in plain or plain != done['text'] + '\n': sys.exit(f'plain {plain!r}, done {done["text"]!r}')
EOF

# Interactive mode through a pipe: two turns, the second decodes only its
# new tokens ----------------------------------------------------------------
printf 'Hello\nWhat is your name?\n/stats\nquit\nnever read\n' | \
  "$SM_BIN" -m "$CHAT" -n 30 --seed 2 --assistant-label "Bot:" --memory-file chat.jsonl --json-stream \
  "${COMMON[@]}" > chat.out || fail "interactive json-stream run failed"
python3 - chat.out <<'EOF' || fail "interactive mode: the second turn did not re-use the first turn's tokens"
import json, sys
objs = [json.loads(l) for l in open(sys.argv[1])]
starts = [o for o in objs if o['type'] == 'start']
dones = [o for o in objs if o['type'] == 'done']
stats = [o for o in objs if o['type'] == 'stats']
if len(starts) != 2 or len(dones) != 2: sys.exit(f'{len(starts)} starts and {len(dones)} dones, expected 2 turns')
if len(stats) != 1: sys.exit('no stats object for /stats')
s = stats[0]
if s['n_reused'] <= 0: sys.exit(f'second turn re-used {s["n_reused"]} tokens')
# Everything in the context when the second answer began was either kept
# from the first turn or decoded for the new message: nothing twice.
if s['n_reused'] + s['n_prompt_decoded'] != starts[1]['n_prompt_tokens']:
    sys.exit(f'reused {s["n_reused"]} + decoded {s["n_prompt_decoded"]} != context {starts[1]["n_prompt_tokens"]}')
EOF
[ "$(line_count chat.jsonl)" = 2 ] || fail "interactive mode wrote $(line_count chat.jsonl) memory lines for 2 turns"
check_memory_records <(sed -n 2p chat.jsonl) 1 "What is your name?" || fail "second turn's memory record invalid"

# The same chat in plain text: both answers on stdout, each on its own line,
# then the /stats line.
printf 'Hello\nWhat is your name?\n/stats\nquit\n' | \
  "$SM_BIN" -m "$CHAT" -n 30 --seed 2 --assistant-label "Bot:" --memory-file plainchat.jsonl \
  "${COMMON[@]}" > plainchat.out || fail "interactive plain run failed"
python3 - plainchat.jsonl plainchat.out <<'EOF' || fail "interactive mode: answers missing from stdout"
import json, sys
answers = [json.loads(l)['response'].encode() for l in open(sys.argv[1], 'rb')]
out = open(sys.argv[2], 'rb').read()
expected = answers[0] + b'\n' + answers[1] + b'\n'
if not out.startswith(expected): sys.exit(f'stdout {out[:160]!r} does not start with the two answers {expected[:160]!r}')
rest = out[len(expected):].decode()
if not rest.startswith('[stats] n_reused=') or 'n_reused=0 ' in rest: sys.exit(f'stats line: {rest!r}')
EOF

# --ignore-eos: the one story model that ends stories with EOS goes on to -n.
TINY="$SM_MODELS/tinystories-656K.gguf"
"$SM_BIN" -m "$TINY" -p "Once upon a time" -n 300 -t 0 --no-selfmod --no-memory --json-stream > eos.out 2> /dev/null \
  || fail "tinystories run failed"
grep -q '"stop_reason":"eog"' eos.out || fail "tinystories-656K no longer ends its story by itself: pick another model"
"$SM_BIN" -m "$TINY" -p "Once upon a time" -n 300 -t 0 --no-selfmod --no-memory --json-stream --ignore-eos > eos.out \
  2> /dev/null || fail "--ignore-eos run failed"
grep -q '"stop_reason":"n_predict".*"n_tokens":300' eos.out || fail "--ignore-eos: $(tail -1 eos.out | cut -c1-200)"

# --no-repack (llama.cpp's): weights as stored; the same text (f32 weights
# have no repacked form), in the CLI, eval and serve alike.
"$SM_BIN" -m "$STORIES" -p "Once upon a time" -n 24 --no-memory --quiet > plain.out 2> /dev/null || fail "plain run failed"
"$SM_BIN" -m "$STORIES" -p "Once upon a time" -n 24 --no-memory --quiet --no-repack > norepack.out 2> err.txt \
  || fail "--no-repack: $(cat err.txt)"
cmp -s plain.out norepack.out || fail "--no-repack changed the text of f32 weights"
printf 'Once upon a time\n' > one.txt
"$SM_BIN" eval -f one.txt -m "$STORIES" --strategies greedy -n 8 --quiet --no-repack > /dev/null 2> err.txt \
  || fail "eval --no-repack: $(cat err.txt)"
"$SM_BIN" serve -m "$STORIES" --no-repack --port 0 --help > /dev/null 2> err.txt || fail "serve --no-repack: $(cat err.txt)"

echo "llama_selfmod CLI: all checks passed"
