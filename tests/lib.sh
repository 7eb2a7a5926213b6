# Sourced by the shell tests: the environment ctest gives them, the models
# they use, a scratch directory that is removed at exit, and fail().
: "${SM_BIN:?SM_BIN must name the llama_selfmod program}"
: "${SM_MODELS:?SM_MODELS must name the models folder}"
STORIES="$SM_MODELS/stories260K.gguf"
CHAT="$SM_MODELS/cardputer-chat-3M.gguf"
for m in "$STORIES" "$CHAT"; do [ -r "$m" ] || { echo "FAIL: test model missing: $m"; exit 1; }; done

WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
cd "$WORK" || exit 1

fail() { echo "FAIL: $*"; exit 1; }
