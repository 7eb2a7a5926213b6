#!/usr/bin/env bash
# Mutation check of every rewind path: each statement in src/ marked
# "[restore]" (what puts state back on a rewind, or applies the policy's step
# to a kept token) is deleted in turn, in a copy of the tree, and the tests
# that guard exactness are run against it. Each deletion must make at least
# one of them fail; the table says which.
#
#   scripts/mutate_restores.sh [BUILD]     (BUILD: a configured build, default build)
# Exit status: 0 when every mutant was caught, 1 otherwise.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
BUILD="$(cd "${1:-$ROOT/build}" && pwd)"
PREFIX="$(cat "$BUILD/llama_prefix")"
MODELS="${SM_MODELS:-$ROOT/../shared/models}"
TESTS=(test_exactness test_stages test_session test_intervene test_operators_e2e test_operators)

WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
cp -r "$ROOT/CMakeLists.txt" "$ROOT/src" "$ROOT/include" "$ROOT/apps" "$ROOT/tests" "$ROOT/bench" \
  "$ROOT/examples" "$ROOT/web" "$ROOT/scripts" "$WORK/"
cmake -S "$WORK" -B "$WORK/build" -DLLAMA_PREFIX="$PREFIX" -DSHARED_MODELS_DIR="$MODELS" > "$WORK/cmake.log"
cmake --build "$WORK/build" -j"$(nproc)" --target "${TESTS[@]}" > "$WORK/build.log" 2>&1 \
  || { echo "the unmutated tree does not build: $WORK/build.log"; exit 1; }

run_tests() {
  local failed=()
  for t in "${TESTS[@]}"; do
    (cd "$WORK/build" && SM_MODELS="$MODELS" timeout 300 "./$t" > "$WORK/$t.out" 2>&1) || failed+=("$t")
  done
  echo "${failed[*]:-}"
}

[ -z "$(run_tests)" ] || { echo "the unmutated tree fails its tests"; exit 1; }

mapfile -t SITES < <(cd "$WORK" && grep -n '/\* \[restore\]' src/*.c | cut -d: -f1,2)
echo "| statement | file:line | tests that fail without it |"
echo "|---|---|---|"
survivors=0
for site in "${SITES[@]}"; do
  file="${site%%:*}" line="${site##*:}"
  original="$(sed -n "${line}p" "$WORK/$file")"
  statement="$(echo "$original" | sed -E 's|/\*.*\*/||; s/^[[:space:]]+//; s/[[:space:]]+$//')"
  cp "$WORK/$file" "$WORK/$file.orig"
  if [[ "$statement" =~ ^sm_status\ st\ = ]]; then
    sed -i "${line}s/sm_status st = [^;]*;/sm_status st = SM_OK;/" "$WORK/$file"
  else
    sed -i -E "${line}s/^([[:space:]]*)[^/]*;/\1;/" "$WORK/$file"
  fi
  if cmake --build "$WORK/build" -j"$(nproc)" --target "${TESTS[@]}" > "$WORK/mut.log" 2>&1; then
    failed="$(run_tests)"
  else
    failed="(does not compile)"
  fi
  mv "$WORK/$file.orig" "$WORK/$file"
  [ -n "$failed" ] || survivors=$((survivors + 1))
  echo "| \`$statement\` | $file:$line | ${failed:-**none: survived**} |"
done
cmake --build "$WORK/build" -j"$(nproc)" --target "${TESTS[@]}" > /dev/null 2>&1
echo
echo "${#SITES[@]} mutants, $((${#SITES[@]} - survivors)) caught, $survivors survived"
[ "$survivors" -eq 0 ]
