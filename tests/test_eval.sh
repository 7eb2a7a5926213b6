#!/usr/bin/env bash
# `llama_selfmod eval` end to end on real models: 3 prompts x 2 strategies
# on stories260K with a panel of two judges (one with a vocabulary of its own) write a table, a CSV and a JSON file whose
# numbers agree with each other and with metrics recomputed here from the
# output tokens, and an SVG chart that parses as XML; bad input is refused
# with a clear message.
set -u
: "${SM_BIN:?SM_BIN must name the llama_selfmod program}"
: "${SM_MODELS:?SM_MODELS must name the models folder}"
: "${SM_SRC:?SM_SRC must name the source folder}"
STORIES="$SM_MODELS/stories260K.gguf"
SALTY="$SM_MODELS/llama2xs-salty-280K.gguf"
AIDREAMS="$SM_MODELS/aidreams260K.gguf"
TINY="$SM_MODELS/tinystories-656K.gguf"
PROMPTS="$SM_SRC/data/prompts/stories.txt"
for f in "$STORIES" "$SALTY" "$AIDREAMS" "$TINY" "$PROMPTS" "$SM_SRC/data/prompts/chat.jsonl"; do
  [ -r "$f" ] || { echo "FAIL: missing: $f"; exit 1; }
done

WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
cd "$WORK" || exit 1
fail() { echo "FAIL: $*"; exit 1; }
passed=0
ok() { passed=$((passed + 1)); echo "ok - $*"; }

# ---------------------------------------------------------------------------
"$SM_BIN" eval -f "$PROMPTS" --limit 3 -m "$STORIES" --judge "$SALTY,$TINY" \
  --strategies greedy,calibrated -n 24 --seeds 2 --threads 1 --quiet \
  --csv out.csv --json out.json --chart out.svg > table.txt 2> err.txt \
  || fail "eval exited $?: $(cat err.txt)"
grep -q "rep-4" table.txt && grep -q "calibrated" table.txt && grep -q "against greedy" table.txt \
  || fail "the terminal table lacks its columns: $(cat table.txt)"
ok "eval runs 3 prompts x 2 strategies and prints a table"

python3 - <<'EOF' || fail "CSV/JSON check failed"
import csv, json, math, sys

def rep(outputs, n):
    unique = total = 0
    for t in outputs:
        grams = [tuple(t[i:i + n]) for i in range(len(t) - n + 1)]
        unique += len(set(grams)); total += len(grams)
    return 1 - unique / total if total else float('nan')

rows = list(csv.DictReader(open('out.csv')))
if [r['strategy'] for r in rows] != ['greedy', 'calibrated']: sys.exit(f'CSV strategies: {[r["strategy"] for r in rows]}')
g, s = rows
if (g['baseline'], g['deterministic'], g['outputs'], g['seeds']) != ('1', '1', '3', '1'): sys.exit(f'greedy row: {g}')
if (s['baseline'], s['deterministic'], s['outputs'], s['seeds']) != ('0', '0', '6', '2'): sys.exit(f'calibrated row: {s}')
for r in rows:
    for k in ('rep_2', 'rep_3', 'rep_4', 'diversity', 'distinct_1', 'distinct_2'):
        if not 0 <= float(r[k]) <= 1: sys.exit(f'{r["strategy"]} {k} = {r[k]}')
    for k in ('judge_bpb', 'judge_1_bpb', 'judge_2_bpb'):
        if not 0 < float(r[k]) < 20: sys.exit(f'{r["strategy"]} {k} = {r[k]}')
    if r['judge_3_bpb'] != '': sys.exit('a panel of two has no third judge')
    # every kept token is decoded but the last of each output (decoded only when needed)
    if float(r['decoded_per_kept']) < 1 - 1 / float(r['mean_length']) - 1e-6 or float(r['tokens_per_s']) <= 0: sys.exit(f'cost columns: {r}')
if s['rep_4_se'] == '' or g['rep_4_se'] != '': sys.exit('standard errors: only the sampling strategy has one')
if g['rep_4_diff'] != '0': sys.exit(f'greedy against itself differs: {g["rep_4_diff"]}')

data = json.load(open('out.json'))
if data['config']['n_prompts'] != 3 or data['config']['baseline'] != 'greedy': sys.exit(f'config: {data["config"]}')
gp, sp = data['strategies'][0]['params'], data['strategies'][1]['params']
if gp['temperature'] != 0 or gp['selfmod'] or gp['repeat_penalty'] != 1: sys.exit(f'greedy params: {gp}')
if sp['temperature'] != 0.7 or not sp['selfmod'] or sp['n_predict'] != 24: sys.exit(f'calibrated params: {sp}')
outs = data['outputs']
if len(outs) != 9: sys.exit(f'{len(outs)} outputs, expected 3 + 3 x 2')
for o in outs:
    if not 0 < o['n_tokens'] <= 24 or len(o['tokens']) != o['n_tokens'] or not o['text']: sys.exit(f'output: {o}')
    each = o['judge_each_bpb']
    if o['judge_bpb'] is None or len(each) != 2 or min(each) <= 0: sys.exit(f'unjudged output: {o}')
    if abs(o['judge_bpb'] - sum(each) / 2) > 1e-12: sys.exit(f'the panel score is not the judges\' mean: {o}')
# The program's numbers equal the ones recomputed from the tokens.
greedy = [o['tokens'] for o in outs if o['strategy'] == 'greedy']
for n in (2, 3, 4):
    mine = rep(greedy, n)
    theirs = data['strategies'][0]['metrics'][f'rep_{n}']['mean']
    if abs(mine - theirs) > 1e-9 or abs(float(g[f'rep_{n}']) - theirs) > 1e-5:
        sys.exit(f'greedy rep-{n}: recomputed {mine}, JSON {theirs}, CSV {g[f"rep_{n}"]}')
per_seed = [rep([o['tokens'] for o in outs if o['strategy'] == 'calibrated' and o['seed'] == seed], 4) for seed in (1, 2)]
m = data['strategies'][1]['metrics']['rep_4']
if abs(m['mean'] - sum(per_seed) / 2) > 1e-9: sys.exit(f'calibrated rep-4 {m["mean"]}, per seed {per_seed}')
if abs(m['se'] - abs(per_seed[0] - per_seed[1]) / 2) > 1e-9: sys.exit(f'calibrated rep-4 SE {m["se"]}, per seed {per_seed}')
# pooled over bytes: total bits / total bytes
g_outs = [o for o in outs if o['strategy'] == 'greedy']
nbytes = [len(o['text'].encode()) for o in g_outs]
pooled = sum(o['judge_bpb'] * b for o, b in zip(g_outs, nbytes)) / sum(nbytes)
if abs(data['strategies'][0]['metrics']['judge_bpb']['mean'] - pooled) > 1e-9: sys.exit('greedy judge bits/byte')
first = sum(o['judge_each_bpb'][0] * b for o, b in zip(g_outs, nbytes)) / sum(nbytes)
if abs(data['strategies'][0]['metrics']['judge_1_bpb']['mean'] - first) > 1e-9: sys.exit('greedy judge 1')
if len(data['config']['judges']) != 2: sys.exit(f'judges in the config: {data["config"]["judges"]}')
EOF
ok "the CSV and JSON are valid and agree with metrics recomputed from the tokens"

python3 - <<'EOF' || fail "the chart is not a valid SVG with one point per strategy and panel"
import sys, xml.etree.ElementTree as ET
root = ET.parse('out.svg').getroot()
ns = '{http://www.w3.org/2000/svg}'
if root.tag != ns + 'svg': sys.exit(f'root element {root.tag}')
circles = root.findall(f'.//{ns}circle')
labels = [t.text for t in root.findall(f'.//{ns}text') if t.get('font-weight') == 'bold' and t.get('fill')]
legend = [''.join(t.itertext()) for t in root.findall(f'.//{ns}text')]
if len(circles) != 4: sys.exit(f'{len(circles)} points, expected 2 strategies x 2 panels')
if labels.count('1') != 2 or labels.count('2') != 2: sys.exit(f'point numbers: {labels}')
if '1 greedy' not in legend or '2 calibrated' not in legend: sys.exit(f'legend: {legend}')
EOF
ok "the SVG chart parses and has a numbered point per strategy in each panel and a legend"

# `selfmod` is what the program does with no flags (the default T 0 and the
# calibrated policy): one deterministic output per prompt, the CLI's text.
"$SM_BIN" eval -f "$PROMPTS" --limit 2 -m "$STORIES" --strategies selfmod -n 24 --seeds 2 --threads 1 --quiet \
  --json default.json > /dev/null 2> err.txt || fail "eval selfmod exited $?: $(cat err.txt)"
python3 - "$SM_BIN" "$STORIES" <<'EOF' || fail "eval's selfmod is not the CLI with no flags"
import json, subprocess, sys
data = json.load(open('default.json'))
outs = data['outputs']
if len(outs) != 2 or data['strategies'][0]['params']['temperature'] != 0: sys.exit(f'{len(outs)} outputs, params {data["strategies"][0]["params"]}')
for o in outs:
    prompt = data['prompts'][o['prompt']]['prompt']
    cli = subprocess.run([sys.argv[1], '-m', sys.argv[2], '-p', prompt, '-n', '24', '--threads', '1', '--quiet'],
                         capture_output=True, text=True, check=True).stdout
    if cli.rstrip('\n') != o['text']: sys.exit(f'CLI {cli!r} != eval {o["text"]!r}')
EOF
ok "eval's selfmod strategy is the CLI with no flags (deterministic at the default T 0)"

# ---------------------------------------------------------------------------
# Reference answers (JSONL) and fusion of the same-vocabulary pair.
printf '%s\n' '{"prompt": "Once upon a time", "reference": "there was"}' '{"prompt": "Tom was sad"}' > refs.jsonl
"$SM_BIN" eval -f refs.jsonl -m "$STORIES" --models "$STORIES,$SALTY" \
  --strategies greedy,fusion:average -n 12 --seeds 1 --threads 1 --quiet --csv refs.csv > refs.txt 2> err.txt \
  || fail "eval with references and fusion exited $?: $(cat err.txt)"
python3 - <<'EOF' || fail "reference and fusion columns"
import csv, sys
rows = {r['strategy']: r for r in csv.DictReader(open('refs.csv'))}
if set(rows) != {'greedy', 'fusion:average'}: sys.exit(f'strategies {set(rows)}')
for r in rows.values():
    if r['exact_match'] == '' or not 0 <= float(r['contains_match']) <= 1: sys.exit(f'reference columns: {r}')
    if r['judge_bpb'] != '': sys.exit('no judge was given, yet there is a judge score')
EOF
grep -q "contains" refs.txt || fail "the table has no reference columns: $(cat refs.txt)"
ok "JSONL references give exact/contains columns; fusion:average runs on --models"

# ---------------------------------------------------------------------------
# Refusals.
expect_error() { # code, pattern, args...
  local code="$1" pattern="$2"
  shift 2
  "$SM_BIN" eval "$@" > /dev/null 2> err.txt
  local rc=$?
  [ "$rc" -eq "$code" ] || fail "eval $* exited $rc, expected $code: $(cat err.txt)"
  grep -qi -- "$pattern" err.txt || fail "eval $*: no '$pattern' in: $(cat err.txt)"
}
# ---------------------------------------------------------------------------
# --parallel: the same outputs, their decodes shared (greedy and operator
# strategies exactly; with a judge, so the shared judge is exercised too).
for par in 1 3; do
  "$SM_BIN" eval -f "$PROMPTS" --limit 4 -m "$STORIES" --judge "$SALTY" --strategies greedy,op:ngram_overlap \
    -n 24 --seeds 1 --threads 1 --quiet --parallel "$par" --json "par$par.json" > /dev/null 2> err.txt \
    || fail "eval --parallel $par exited $?: $(cat err.txt)"
done
python3 - par1.json par3.json <<'PY' || fail "--parallel 3 gave other outputs than --parallel 1"
import json, sys
def outputs(path):
    d = json.load(open(path))
    return [(o["strategy"], o["prompt"], o["seed"], o["text"], o.get("judge_bpb")) for o in d["outputs"]]
a, b = outputs(sys.argv[1]), outputs(sys.argv[2])
sys.exit(0 if a == b and len(a) == 8 else 1)
PY
ok "--parallel 3 gives the outputs of --parallel 1, in the same order"

expect_error 1 "never judges its own" -f "$PROMPTS" --limit 1 -m "$STORIES" --judge "$SALTY,$STORIES" --strategies greedy --threads 1
expect_error 2 "at most 4 judges" -f "$PROMPTS" -m "$STORIES" --judge "$SALTY,$SALTY,$SALTY,$SALTY,$SALTY"
expect_error 2 "unknown strategy 'nonsense'" -f "$PROMPTS" -m "$STORIES" --strategies greedy,nonsense
expect_error 2 "op:nosuchop" -f "$PROMPTS" -m "$STORIES" --strategies op:nosuchop
expect_error 2 "--models" -f "$PROMPTS" -m "$STORIES" --strategies fusion:average
expect_error 2 "baseline" -f "$PROMPTS" -m "$STORIES" --strategies sample --baseline greedy
expect_error 1 "no-such-file.txt" -f no-such-file.txt -m "$STORIES"
expect_error 2 "--seeds" -f "$PROMPTS" -m "$STORIES" --seeds 0
ok "a judge that generates, too many judges and bad flags are refused with clear messages"

echo "$passed passed, 0 failed"
