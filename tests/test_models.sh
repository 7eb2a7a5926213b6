#!/usr/bin/env bash
# The shared models the tests rely on are present and match SHA256SUMS.
set -u
cd "${SM_MODELS:?}" || { echo "models folder missing: $SM_MODELS"; exit 1; }
for f in stories260K.gguf llama2xs-salty-280K.gguf aidreams260K.gguf cardputer-chat-3M.gguf \
         cardputer-chat-3M.sharedvocab12688.gguf cardputer-brainrot-3M.sharedvocab12688.gguf; do
  line=$(grep " $f\$" SHA256SUMS) || { echo "FAIL: $f not listed in SHA256SUMS"; exit 1; }
  echo "$line" | sha256sum -c --quiet - || { echo "FAIL: $f is missing or differs from SHA256SUMS"; exit 1; }
done
echo "all test models verified"
