#!/usr/bin/env bash
# `llama_selfmod tune` end to end: a small search on stories260K with a
# judge panel writes every trial to the CSV (3 rounds, the best third of
# each going on), names as best the round-3 trial with the lowest
# objective, and writes a preset file that --preset loads; bad flags and
# bad preset files are refused by name.
set -u
: "${SM_BIN:?}" "${SM_MODELS:?}" "${SM_SRC:?}"
STORIES="$SM_MODELS/stories260K.gguf"
SALTY="$SM_MODELS/llama2xs-salty-280K.gguf"
TINY="$SM_MODELS/tinystories-656K.gguf"
PROMPTS="$SM_SRC/data/prompts/stories-heldout.txt"
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
cd "$WORK" || exit 1
fail() { echo "FAIL: $*"; exit 1; }

"$SM_BIN" tune -f "$PROMPTS" -m "$STORIES" --judge "$SALTY,$TINY" --trials 6 -n 24 --seeds 1 --threads 1 \
  --csv trials.csv -o best.json --quiet > out.txt 2> err.txt || fail "tune exited $?: $(cat err.txt)"
python3 - <<'PY' || fail "the trials, the best and the preset file disagree"
import csv, json, re, sys
rows = list(csv.DictReader(open('trials.csv')))
by_round = {r: [x for x in rows if x['round'] == r] for r in ('1', '2', '3')}
if [len(by_round[r]) for r in ('1', '2', '3')] != [6, 2, 1]: sys.exit(f'rounds: {[len(v) for v in by_round.values()]}')
if [by_round[r][0]['prompts'] for r in ('1', '2', '3')] != ['5', '10', '20']: sys.exit('prompts per round')
for r in rows:
    obj, bpb, rep = float(r['objective']), float(r['judge_bpb']), float(r['rep_4'])
    if abs(obj - (bpb + 10 * max(0.0, rep - 0.05))) > 1e-4: sys.exit(f'objective of {r}')
# the survivors of a round are its best third
r1 = sorted(by_round['1'], key=lambda x: float(x['objective']))
if {x['spec'] for x in r1[:2]} != {x['spec'] for x in by_round['2']}: sys.exit('round 2 is not the best third of round 1')
best = re.search(r'best: (\S+)', open('out.txt').read()).group(1)
if best != by_round['3'][0]['spec']: sys.exit(f'best {best} is not the last round\'s')
p = json.load(open('best.json'))
if p['preset'] != 'calibrated' or f"temp={p['temperature']:.2f}" not in best: sys.exit(f'preset file {p}')
PY
"$SM_BIN" -m "$STORIES" -p "Once upon a time" -n 16 --preset best.json --no-memory --quiet > gen.txt 2> err.txt \
  || fail "--preset best.json: $(cat err.txt)"
[ -s gen.txt ] || fail "--preset best.json generated nothing"
"$SM_BIN" eval -f "$PROMPTS" --limit 2 -m "$STORIES" --judge "$SALTY" --strategies "greedy,preset:best.json" -n 16 \
  --seeds 1 --threads 1 --quiet --json ev.json > /dev/null 2> err.txt || fail "eval preset:best.json: $(cat err.txt)"
python3 -c "
import json, sys
p = json.load(open('best.json')); s = json.load(open('ev.json'))['strategies'][1]['params']
sys.exit(0 if abs(s['temperature'] - p['temperature']) < 1e-6 and s['max_retractions'] == p['max_retractions'] else 1)
" || fail "eval's preset:FILE strategy does not use the file's settings"
echo "ok - tune writes its trials, names the best and a preset --preset (and eval's preset:FILE) loads"

expect_error() { # code pattern args...
  local code=$1 pattern=$2; shift 2
  "$SM_BIN" "$@" > /dev/null 2> err.txt; local rc=$?
  [ $rc -eq "$code" ] || fail "$* exited $rc, expected $code: $(cat err.txt)"
  grep -q -- "$pattern" err.txt || fail "$*: no '$pattern' in $(cat err.txt)"
}
expect_error 2 "--judge is required" tune -f "$PROMPTS" -m "$STORIES"
expect_error 2 "--trials" tune -f "$PROMPTS" -m "$STORIES" --judge "$SALTY" --trials 1
expect_error 2 "--max-rep4" tune -f "$PROMPTS" -m "$STORIES" --judge "$SALTY" --max-rep4 2
echo '{"preset": "calibrated", "temprature": 0.3}' > typo.json
expect_error 2 'unknown key "temprature"' -m "$STORIES" -p hi --preset typo.json
echo '{"preset": "calibrated", "temperature": -1}' > range.json
expect_error 2 '"temperature" is out of range' -m "$STORIES" -p hi --preset range.json
expect_error 2 "cannot read preset file" -m "$STORIES" -p hi --preset ./no-such.json
expect_error 2 'unknown key "temprature"' serve -m "$STORIES" --preset typo.json
expect_error 2 "unknown policy preset 'loud'" serve -m "$STORIES" --preset loud
echo "ok - bad tune flags and bad preset files are refused by name (serve --preset too)"

# serve --preset-dir: a request names tune's file; its policy applies, and its
# temperature unless the request gives one.
source "$SM_SRC/tests/serve_helpers.sh"
mkdir presets empty
cp best.json presets/mine.json
echo '{"preset": "fixed", "repeat_penalty": 1.3, "window": 7}' > presets/hot.json
echo 'not a preset' > presets/README.txt
"$SM_BIN" serve -m "$STORIES" --port 0 --threads 1 --preset-dir presets > serve.log 2>&1 &
SERVE_PID=$!
trap 'kill $SERVE_PID 2> /dev/null; rm -rf "$WORK"' EXIT
PORT="$(listening_port serve.log $SERVE_PID)" || fail "serve --preset-dir did not start: $(cat serve.log)"
python3 - "$PORT" <<'PY' || fail "a request's selfmod.preset naming a --preset-dir file"
import json, sys, urllib.request, urllib.error
url = f'http://127.0.0.1:{sys.argv[1]}/completion'
def post(body):
    req = urllib.request.Request(url, json.dumps(body).encode(), {'Content-Type': 'application/json'})
    try:
        with urllib.request.urlopen(req) as r: return r.status, json.load(r)
    except urllib.error.HTTPError as e: return e.code, json.load(e)
best = json.load(open('best.json'))
code, r = post({'prompt': 'Once upon a time', 'n_predict': 4, 'selfmod': {'preset': 'mine'}})
g = r.get('generation_settings', {})
if code != 200 or abs(g['temperature'] - best['temperature']) > 1e-6 or g['max_retractions'] != best['max_retractions'] \
        or g['window'] != best['window'] or not g['selfmod']: sys.exit(f'mine: {code} {g} (file {best})')
code, r = post({'prompt': 'Once upon a time', 'n_predict': 4, 'temperature': 0.55, 'selfmod': {'preset': 'mine'}})
if code != 200 or abs(r['generation_settings']['temperature'] - 0.55) > 1e-6: sys.exit(f'own temperature: {code} {r}')
code, r = post({'prompt': 'Once upon a time', 'n_predict': 4, 'selfmod': {'preset': 'hot'}})
g = r['generation_settings']
if code != 200 or abs(g['repeat_penalty'] - 1.3) > 1e-6 or g['window'] != 7 or abs(g['temperature'] - 0.8) > 1e-6 \
        or g['confidence_threshold'] != 0.5: sys.exit(f'hot (the fixed policy, serve\'s T 0.8): {code} {g}')
code, r = post({'prompt': 'Once upon a time', 'n_predict': 4, 'selfmod': {'preset': 'nope'}})
msg = r.get('error', {}).get('message', '')
if code != 400 or 'mine' not in msg or 'hot' not in msg: sys.exit(f'unknown preset: {code} {msg}')
PY
kill $SERVE_PID; wait $SERVE_PID 2> /dev/null
echo '{"preset": "calibrated"}' > empty/original.json
expect_error 2 "its name is a built-in preset" serve -m "$STORIES" --preset-dir empty
rm empty/original.json
expect_error 2 "no preset files" serve -m "$STORIES" --preset-dir empty
expect_error 2 "cannot read the folder" serve -m "$STORIES" --preset-dir no-such-dir
echo '{"preset": "calibrated", "temprature": 0.3}' > empty/typo.json
expect_error 2 'unknown key "temprature"' serve -m "$STORIES" --preset-dir empty
echo "ok - serve --preset-dir: a request's selfmod.preset names a file; bad folders and files are refused by name"
echo "3 passed, 0 failed"
