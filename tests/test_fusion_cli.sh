#!/usr/bin/env bash
# The CLI's fusion flags end to end: --models, every mode, the per-token
# agreement in --json-stream, the fusion fields of the memory record, and
# the errors for mismatched vocabularies and bad flags.
set -u
M="$SM_MODELS"; BIN="$SM_BIN"
PAIR="$M/stories260K.gguf,$M/llama2xs-salty-280K.gguf"
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
fail() { echo "FAIL: $*"; exit 1; }
run() { "$BIN" -p "Once upon a time" -n 24 -t 2 --seed 5 --quiet "$@"; }

for mode in confidence average voting harmony adaptive democratic round_robin reference contrastive; do
  out=$(run --models "$PAIR" --fusion-mode $mode --no-memory) || fail "mode $mode exited non-zero"
  [ -n "$out" ] || fail "mode $mode produced no text"
done

run --models "$PAIR" --fusion-mode reference --json-stream --memory-file "$tmp/mem.jsonl" > "$tmp/stream.jsonl" \
  || fail "json-stream run failed"
python3 - "$tmp/stream.jsonl" "$tmp/mem.jsonl" <<'PY' || fail "fusion JSON check"
import json, sys
events = [json.loads(l) for l in open(sys.argv[1])]
tokens = [e for e in events if e["type"] == "token"]
assert tokens, "no token events"
for t in tokens:
    f = t["fusion"]
    assert f["n_models"] == 2 and 0 <= f["top1_agreement"] <= 1 and 0 <= f["js_divergence"] <= 1, f
rec = json.loads(open(sys.argv[2]).read().splitlines()[-1])
assert rec["num_models"] == 2 and rec["fusion_mode"] == "reference", rec
assert len(rec["models"]) == 2 and "avg_confidence" in rec["models"][0]
differs = sum(1 for t in tokens if t["fusion"].get("reference_differs"))
assert rec["agreement"]["reference_disagreements"] == differs, (rec["agreement"], differs)
for k in ("timestamp", "prompt", "response", "modifications", "avg_confidence", "final_temperature", "retractions"):
    assert k in rec, k
PY

# The Rust original's forms with two models: fusion_data on every token,
# naming the models by file name, and FUSION_SAMPLE records where the
# agreement was below 0.5 and at every 50th token, each with fusion_data.
run --models "$PAIR" --fusion-mode harmony -n 60 --json-stream=original --memory-file "$tmp/orig.jsonl" \
  --memory-format original > "$tmp/orig_stream.jsonl" || fail "original-format fusion run failed"
python3 - "$tmp/orig_stream.jsonl" "$tmp/orig.jsonl" <<'PY' || fail "original fusion forms"
import json, sys
events = [json.loads(l) for l in open(sys.argv[1])]
names = ["stories260K.gguf", "llama2xs-salty-280K.gguf"]
assert events[0] == {"type": "init", "num_models": 2, "fusion_mode": "harmony", "model_names": names}, events[0]
tokens = [e for e in events if e["type"] == "token"]
want = ["model_confidences", "leading_model", "agreement_score", "harmony_score", "diversity_score",
        "num_abstentions", "adaptive_temp"]
for t in tokens:
    f = t["fusion_data"]
    assert list(f) == want, list(f)
    assert [c[0] for c in f["model_confidences"]] == names and f["leading_model"] in names + ["ensemble"], f
rec = json.loads(open(sys.argv[2]).read())
assert rec["num_models"] == 2 and rec["fusion_mode"] == "harmony", rec
samples = [m for m in rec["modifications"] if m["mod_type"] == "FUSION_SAMPLE"]
kept = rec["modifications"]
assert any(m["token_idx"] == 0 for m in samples) and any(m["token_idx"] == 50 for m in samples), samples
for m in samples:
    assert list(m["fusion_data"]) == want
    assert m["token_idx"] % 50 == 0 or m["fusion_data"]["agreement_score"] < 0.5, m
PY

# --fusion-reference R: reference mode follows model R (greedy, no penalty:
# the same text as R alone), and R names a model
for r in 0 1; do
  alone=$("$BIN" -m "$M/$( [ $r = 0 ] && echo stories260K || echo llama2xs-salty-280K ).gguf" -p "Once upon a time" -n 40 \
    -t 0 --repeat-penalty 1 --no-selfmod --quiet --no-memory) || fail "model $r alone"
  ref=$(run --models "$PAIR" --fusion-mode reference --fusion-reference $r -n 40 -t 0 --repeat-penalty 1 --no-selfmod \
    --no-memory) || fail "--fusion-reference $r"
  [ "$alone" = "$ref" ] || fail "--fusion-reference $r does not follow model $r: '$ref' vs '$alone'"
done
"$BIN" --models "$PAIR" --fusion-reference 2 -p x --no-memory 2> "$tmp/err" && fail "--fusion-reference 2 accepted"
grep -q "models are 0 to 1" "$tmp/err" || fail "--fusion-reference 2: $(cat "$tmp/err")"

# weights 1,0 reproduce model 0 alone (greedy)
a=$(run -m "$M/stories260K.gguf" -t 0 --no-memory) || fail "single run"
b=$(run --models "$PAIR" --fusion-mode average --fusion-weights 1,0 -t 0 --no-memory) || fail "weighted run"
[ "$a" = "$b" ] || fail "weights 1,0 differ from model 0 alone: '$a' vs '$b'"

err=$(run --models "$M/stories260K.gguf,$M/aidreams260K.gguf" --no-memory 2>&1 >/dev/null); rc=$?
[ $rc -ne 0 ] || fail "mismatched vocabularies were accepted"
grep -q "do not share a vocabulary: token" <<<"$err" || fail "mismatch message: $err"
run --models "$M/stories260K.gguf,$M/cardputer-chat-3M.gguf" --fusion-align --no-memory >/dev/null \
  || fail "--fusion-align run failed"

for bad in "--fusion-mode nope" "--fusion-weights 1,2,3" "--fusion-weights 0,0" "--fusion-turn 0" "--fusion-alpha 2"; do
  err=$(run --models "$PAIR" $bad --no-memory 2>&1 >/dev/null); rc=$?
  [ $rc -eq 2 ] || fail "'$bad' exit code $rc, expected 2"
  grep -q -- "${bad%% *}" <<<"$err" || fail "'$bad' message does not name the flag: $err"
done
err=$(run -m "$M/stories260K.gguf" --fusion-mode contrastive --no-memory 2>&1 >/dev/null); rc=$?
[ $rc -eq 2 ] && grep -q "contrastive" <<<"$err" || fail "contrastive with one model: rc $rc: $err"
echo "ok"
