#!/usr/bin/env bash
# The introspection and intervention flags of llama_selfmod end to end:
# trace file, hidden-state .npy, control vectors, safety rules, lookahead,
# tool markers, injection, the prompt cache, /trace, and bad flag values.
set -u
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
COMMON=(--quiet --threads 1 --no-memory --no-selfmod -t 0 --seed 1)
PROMPT="Once upon a time"

# --- trace file and hidden states -------------------------------------
"$SM_BIN" -m "$STORIES" -p "$PROMPT" -n 12 "${COMMON[@]}" --introspect-layers 0,-1 --introspect-attention \
  --trace-file trace.jsonl --hidden-states h.npy > out.txt || fail "introspection run failed"
python3 - <<'EOF' || fail "trace file or .npy file is wrong"
import ast, json, struct, sys
lines = [json.loads(l) for l in open('trace.jsonl')]
if lines[0]['type'] != 'start' or lines[-1]['type'] != 'done': sys.exit('trace: no start/done')
tokens = [l for l in lines if l['type'] == 'token']
if len(tokens) != 12: sys.exit(f'trace: {len(tokens)} token lines')
for t in tokens:
    layers = t['introspection']['layers']
    if [l['layer'] for l in layers] != [0, 4]: sys.exit('trace: wrong layers')
    for l in layers:
        if not l['norm'] > 0 or len(l['attn_entropy']) != 8: sys.exit('trace: bad stats')
data = open('h.npy', 'rb').read()
if data[:8] != b'\x93NUMPY\x01\x00': sys.exit('npy: magic')
hlen = struct.unpack('<H', data[8:10])[0]
header = ast.literal_eval(data[10:10 + hlen].decode('latin1'))
if header != {'descr': '<f4', 'fortran_order': False, 'shape': (12, 2, 64)}: sys.exit(f'npy: header {header}')
if (10 + hlen) % 64 or len(data) != 10 + hlen + 12 * 2 * 64 * 4: sys.exit('npy: size')
EOF

# --- safety rule: a threshold under every value stops at once ----------
"$SM_BIN" -m "$STORIES" -p "$PROMPT" -n 12 "${COMMON[@]}" --introspect-layers -1 \
  --safety "layer=-1,max_abs>0.01,action=stop" --json-stream > safety.jsonl || fail "safety run failed"
python3 - <<'EOF' || fail "safety stop not reported"
import json, sys
objs = [json.loads(l) for l in open('safety.jsonl')]
done = objs[-1]
if done['stop_reason'] != 'safety' or done['n_tokens'] != 0: sys.exit(f'done: {done}')
if not any(o.get('mod_type') == 'SAFETY' and o['type'] == 'backtrack' for o in objs): sys.exit('no SAFETY event')
EOF

# --- lookahead ----------------------------------------------------------
"$SM_BIN" -m "$STORIES" -p "$PROMPT" -n 16 "${COMMON[@]}" --lookahead 3 --lookahead-depth 3 \
  --lookahead-entropy 0 --json-stream > la.jsonl || fail "lookahead run failed"
python3 - <<'EOF' || fail "lookahead events are wrong"
import json, sys
objs = [json.loads(l) for l in open('la.jsonl')]
la = [o for o in objs if o.get('mod_type') == 'LOOKAHEAD']
if len(la) < 4: sys.exit(f'{len(la)} lookahead events')
for o in la:
    info = o['lookahead']
    scores = [b['score'] for b in info['branches']]
    if len(scores) != 3 or scores[info['chosen']] != max(scores): sys.exit(f'not the best branch: {info}')
if objs[-1]['n_tokens'] != 16: sys.exit('not 16 tokens')
EOF

# --- tool marker and injection -----------------------------------------
"$SM_BIN" -m "$STORIES" -p "$PROMPT" -n 30 "${COMMON[@]}" --introspect-layers 0 --tool-marker "named " \
  --tool-marker-end . > tool.txt || fail "tool run failed"
grep -q "named Lily. (layer 0: norm" tool.txt || fail "the tool's text was not injected: $(cat tool.txt)"
printf 'Tom had a red ball. He liked to kick it.' > inject.txt
"$SM_BIN" -m "$STORIES" -p "$PROMPT" -n 20 "${COMMON[@]}" --inject inject.txt --inject-every 8 > inj.txt \
  || fail "inject run failed"
grep -q "Tom had a red ball." inj.txt && grep -q " He liked to kick it." inj.txt || fail "chunks missing: $(cat inj.txt)"

# --- control vector: a zero scale changes nothing, a large one does -----
python3 - <<'EOF' || fail "cannot write a control vector"
import struct
def s(x): b = x.encode(); return struct.pack('<Q', len(b)) + b
kv = [(s('general.architecture'), 8, s('controlvector'))]
out = b'GGUF' + struct.pack('<IQQ', 3, 1, len(kv))
for k, t, v in kv: out += k + struct.pack('<I', t) + v
out += s('direction.2') + struct.pack('<I', 1) + struct.pack('<Q', 64) + struct.pack('<IQ', 0, 0)
out += b'\0' * ((32 - len(out) % 32) % 32)
out += struct.pack('<64f', *([1.0] * 64))
open('vec.gguf', 'wb').write(out)
EOF
"$SM_BIN" -m "$STORIES" -p "$PROMPT" -n 20 "${COMMON[@]}" > plain.txt || fail "plain run failed"
"$SM_BIN" -m "$STORIES" -p "$PROMPT" -n 20 "${COMMON[@]}" --control-vector vec.gguf:0 > zero.txt || fail "zero vector failed"
"$SM_BIN" -m "$STORIES" -p "$PROMPT" -n 20 "${COMMON[@]}" --control-vector vec.gguf:8 --control-vector-layers 1-4 \
  > steered.txt || fail "steered run failed"
cmp -s plain.txt zero.txt || fail "a zero control vector changed the text"
cmp -s plain.txt steered.txt && fail "a strong control vector changed nothing"

# --- steer: a vector from two prompt files, applied ------------------------
printf 'The happy dog played in the sun.\nLily smiled and laughed with joy.\n' > pos.txt
printf 'The sad dog cried in the rain.\n\nLily was angry and shouted.\n' > neg.txt
"$SM_BIN" steer -m "$STORIES" --positive pos.txt --negative neg.txt -o steer.gguf --threads 1 --quiet \
  || fail "steer failed"
python3 - <<'EOF' || fail "steer wrote a wrong file"
import sys
data = open('steer.gguf', 'rb').read()
if data[:4] != b'GGUF': sys.exit('not GGUF')
for name in (b'direction.1', b'direction.4', b'controlvector.layer_count', b'controlvector'):
    if name not in data: sys.exit(f'no {name}')
if b'direction.0' in data: sys.exit('layer 0 written')
EOF
"$SM_BIN" -m "$STORIES" -p "$PROMPT" -n 20 "${COMMON[@]}" --control-vector steer.gguf:6 > steer.txt || fail "steered run failed"
cmp -s plain.txt steer.txt && fail "the steer vector changed nothing"
"$SM_BIN" steer -m "$STORIES" --positive pos.txt --negative neg.txt -o x.gguf --layers 0 --quiet 2> steer.err
[ $? -eq 1 ] && grep -q "layer 0" steer.err || fail "steer accepted layer 0: $(cat steer.err)"
"$SM_BIN" steer -m "$STORIES" --positive pos.txt -o x.gguf 2> steer.err
[ $? -eq 2 ] && grep -q "both --positive" steer.err || fail "steer without --negative: $(cat steer.err)"

# --- steer rules: the vector's strength follows a signal ---------------------
# A switch on the entropy (on while the model is sure; the vector unsettles
# it): STEER events, each strength 0 or 6 as the entropy says; a closed loop on an observed layer's norm: the strength
# moves by the gain times the error, within its bounds.
"$SM_BIN" -m "$STORIES" -p "$PROMPT" -n 30 "${COMMON[@]}" --control-vector steer.gguf --steer-when "entropy<1.0:6" \
  --json-stream > when.jsonl || fail "--steer-when run failed"
python3 - <<'EOF' || fail "--steer-when: wrong events"
import json, re, sys
ev = [json.loads(l) for l in open('when.jsonl')]
steer = [e for e in ev if e.get('mod_type') == 'STEER']
if len(steer) < 2: sys.exit(f'{len(steer)} STEER events')
for e in steer:
    m = re.search(r'entropy ([\d.e+-]+) (>=|<) 1: strength [\d.]+ -> ([\d.]+)', e['description'])
    if not m: sys.exit(e['description'])
    if (m.group(2) == '<') != (float(m.group(3)) == 6.0): sys.exit(e['description'])
EOF
"$SM_BIN" -m "$STORIES" -p "$PROMPT" -n 30 "${COMMON[@]}" --control-vector steer.gguf --introspect-layers 3 \
  --steer-target "norm@3=8:0.05:-3:3" --json-stream > target.jsonl || fail "--steer-target run failed"
python3 - <<'EOF' || fail "--steer-target: wrong events"
import json, re, sys
ev = [json.loads(l) for l in open('target.jsonl')]
steer = [e for e in ev if e.get('mod_type') == 'STEER']
if len(steer) < 20: sys.exit(f'{len(steer)} STEER events')
for e in steer:
    m = re.search(r'layer norm ([\d.e+-]+) \(target 8\): strength (-?[\d.]+) -> (-?[\d.]+)', e['description'])
    if not m: sys.exit(e['description'])
    norm, before, after = map(float, m.groups())
    want = max(-3, min(3, before + 0.05 * (8 - norm)))
    if abs(after - want) > 2e-3: sys.exit(f'{e["description"]}: expected {want}')
EOF
for bad in "--steer-when entropy>1" "--control-vector steer.gguf --steer-when bogus>1" \
           "--control-vector steer.gguf --steer-target norm@3=8:0.05" "--control-vector steer.gguf --steer-target entropy=1:0" \
           "--control-vector steer.gguf --steer-when entropy>1 --steer-when entropy<1"; do
  # shellcheck disable=SC2086
  "$SM_BIN" -m "$STORIES" -p "$PROMPT" $bad --no-memory > /dev/null 2> bad.err
  [ $? = 2 ] && [ "$(wc -l < bad.err)" = 1 ] || fail "'$bad': not a one-line usage error: $(cat bad.err)"
done

# --- prompt cache ---------------------------------------------------------
"$SM_BIN" -m "$STORIES" -p "$PROMPT, there was a dog" -n 10 --threads 1 --no-memory -t 0 --prompt-cache pc.bin \
  > pc1.txt 2> pc1.err || fail "first cached run failed"
"$SM_BIN" -m "$STORIES" -p "$PROMPT, there was a dog" -n 10 --threads 1 --no-memory -t 0 --prompt-cache pc.bin \
  > pc2.txt 2> pc2.err || fail "second cached run failed"
grep -q "\[prompt-cache\] 0 of" pc1.err || fail "first run: $(grep prompt-cache pc1.err)"
grep -q "\[prompt-cache\] 10 of 11" pc2.err || fail "second run did not reuse the cache: $(grep prompt-cache pc2.err)"
cmp -s pc1.txt pc2.txt || fail "the cached run generated something else"

# --- interactive: per-turn summary and /trace ------------------------------
printf 'Hello there\nHow are you\n/trace\n' | "$SM_BIN" -m "$CHAT" -n 12 --threads 1 --no-memory --seed 3 \
  --introspect-layers 0,-1 > chat.out 2> chat.err || fail "interactive run failed"
grep -q "^\[introspect\] turn 2: 12 tokens" chat.err || fail "no per-turn summary: $(grep introspect chat.err)"
grep -q "change turn 1 -> 2: entropy" chat.out || fail "/trace shows no change across turns: $(cat chat.out)"

# --- bad values are refused before anything loads --------------------------
expect_usage() {
  local want="$1"; shift
  "$SM_BIN" -m /nonexistent.gguf -p x "$@" > /dev/null 2> err.txt
  [ $? -eq 2 ] || fail "$* was not refused as usage"
  grep -q -- "$want" err.txt || fail "$*: message lacks '$want': $(cat err.txt)"
}
expect_usage "layer numbers" --introspect-layers 0,x
expect_usage "need --introspect-layers" --hidden-states x.npy
expect_usage "off, seed or entropix" --entropy-policy hot
expect_usage "needs a condition" --introspect-layers 1 --safety layer=1
expect_usage "in \[2, 16\]" --lookahead 1
expect_usage "margin or coherence" --lookahead 2 --lookahead-score best
expect_usage "needs --introspect-layers" --lookahead 2 --lookahead-score coherence
expect_usage "go together" --inject x.txt
expect_usage "A-B" --control-vector x.gguf --control-vector-layers 3-1
# --- beam search: width 1 is greedy; activation scoring needs layers --------
greedy=$("$SM_BIN" -m "$STORIES" -p "$PROMPT" -n 12 "${COMMON[@]}" --repeat-penalty 1) || fail "greedy run failed"
beam1=$("$SM_BIN" -m "$STORIES" -p "$PROMPT" -n 12 --beam-search 1 --quiet --no-memory --threads 1) || fail "--beam-search 1 failed"
[ "$greedy" = "$beam1" ] || fail "--beam-search 1 is not greedy: '$beam1' vs '$greedy'"
"$SM_BIN" -m "$STORIES" -p "$PROMPT" -n 10 --beam-search 4 --introspect-layers 1,-1 --introspect-attention \
  --beam-stability 0.5 --beam-focus 0.3 --json-stream --quiet --no-memory --threads 1 > beams.jsonl || fail "scored beam search failed"
python3 - <<'EOF' || fail "--beam-search --json-stream: wrong beams"
import json, sys
beams = [json.loads(l) for l in open('beams.jsonl')]
if not 1 <= len(beams) <= 4: sys.exit(f'{len(beams)} beams')
if [b['rank'] for b in beams] != list(range(len(beams))): sys.exit('ranks')
if any(beams[i]['score'] < beams[i + 1]['score'] for i in range(len(beams) - 1)): sys.exit('not best first')
for b in beams:
    if b['end'] != 'eog' and len(b['tokens']) != 10: sys.exit(f'{len(b["tokens"])} tokens')
EOF
expect_usage "not with --operator" -p x --beam-search 2 --operator repetition
expect_usage "give --introspect-layers" -p x --beam-search 2 --beam-stability 1
expect_usage "weigh --beam-search" -p x --beam-focus 1

echo "PASS"
