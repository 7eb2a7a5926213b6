#!/usr/bin/env bash
# The Python package (python/selfmod) with Debian's python3-pytest, on the
# build's libselfmod_cli.so and the shared models (tests/python).
set -u
: "${SM_BUILD:?}" "${SM_SRC:?}" "${SM_MODELS:?}" "${SM_BIN:?}"
if ! /usr/bin/python3 -c "import pytest" 2> /dev/null; then
  echo "FAIL: python3-pytest is not installed (scripts/install_deps.sh installs it)"; exit 1
fi
export SELFMOD_LIBRARY_PATH="$SM_BUILD" PYTHONPATH="$SM_SRC/python" PYTHONDONTWRITEBYTECODE=1
# A sanitized build's library needs its runtime loaded first in a Python process.
if nm -D "$SM_BUILD/libselfmod_cli.so" 2> /dev/null | grep -q __asan; then
  export LD_PRELOAD="$(gcc -print-file-name=libasan.so) $(gcc -print-file-name=libubsan.so)"
  export ASAN_OPTIONS="detect_leaks=0:${ASAN_OPTIONS:-}"
fi
cd "$SM_SRC/tests/python" && exec /usr/bin/python3 -m pytest -q -p no:cacheprovider "$@" .
