#!/usr/bin/env bash
# make install, as a user would use it (issue 16): installed into a
# temporary prefix, then used from outside the checkout with no
# LD_LIBRARY_PATH: the program generates, the server serves its web page,
# examples/custom_operator.c compiles against the installed header and
# library through pkg-config and runs; DESTDIR stages an install and the
# manifest removes it again.
set -u
fail() { echo "FAIL: $*"; exit 1; }
# shellcheck source=serve_helpers.sh
. "$(dirname "${BASH_SOURCE[0]}")/serve_helpers.sh"
: "${SM_BUILD:?}" "${SM_SRC:?}" "${SM_MODELS:?}"
TMP="$(mktemp -d)"
PID=""
trap '[ -n "$PID" ] && kill "$PID" 2>/dev/null; rm -rf "$TMP"' EXIT
PREFIX="$TMP/usr"
cmake --install "$SM_BUILD" --prefix "$PREFIX" > "$TMP/install.log" 2>&1 || fail "cmake --install: $(tail -3 "$TMP/install.log")"
for f in bin/llama_selfmod bin/ggml-rpc-server lib/libselfmod.a lib/libselfmod.so lib/libselfmod_cli.so include/selfmod.h lib/pkgconfig/selfmod.pc \
         share/llama_selfmod/web/index.html share/man/man1/llama_selfmod.1; do
  [ -e "$PREFIX/$f" ] || fail "not installed: $f"
done
[ -L "$PREFIX/lib/libselfmod.so" ] && [ -e "$PREFIX/lib/libselfmod.so.0" ] || fail "no versioned soname"
# the shared library exports its API and nothing of its inside (the guard, the bridge, C++)
exported=$(nm -D --defined-only "$PREFIX/lib/libselfmod.so" | awk '{print $3}')
echo "$exported" | grep -q '^sm_session_generate$' && echo "$exported" | grep -q '^sm_operator_new$' \
  || fail "libselfmod.so does not export its API"
leaked=$(echo "$exported" | grep -v '^sm_\|^SM_GRAMMAR_JSON$' | grep -v '^__\|^_fini$\|^_init$' | head -3)
[ -z "$leaked" ] || fail "libselfmod.so exports more than its API: $leaked"
for f in $(grep -o '\bsm_[a-z0-9_]*[ ]*(' "$SM_SRC/include/selfmod.h" | tr -d ' (' | sort -u); do
  grep -q "^sm_\(status\)\?$" <<< "$f" && continue
  echo "$exported" | grep -qx "$f" || fail "selfmod.h declares $f but libselfmod.so does not export it"
done
grep -q '^\.TH LLAMA_SELFMOD 1' "$PREFIX/share/man/man1/llama_selfmod.1" || fail "the man page has no .TH"
grep -q -- '--json-schema' "$PREFIX/share/man/man1/llama_selfmod.1" || fail "the man page lacks the flags"

cd "$TMP"
unset LD_LIBRARY_PATH
out=$("$PREFIX/bin/llama_selfmod" -m "$SM_MODELS/stories260K.gguf" -p "Once upon a time" -n 8 --seed 1 --no-memory 2> "$TMP/err") \
  || fail "the installed program: $(tail -2 "$TMP/err")"
[ -n "$out" ] || fail "the installed program wrote nothing"
"$PREFIX/bin/ggml-rpc-server" --help 2>&1 | grep -q "^Usage:" || fail "the installed ggml-rpc-server does not run: $("$PREFIX/bin/ggml-rpc-server" --help 2>&1 | head -2)"
# every library it loads from llama.cpp and this project is the installed one
for lib in libllama.so libllama-common.so libggml.so libggml-base.so libggml-cpu.so; do
  ldd "$PREFIX/bin/llama_selfmod" | grep -q "$lib.* => $PREFIX/\(bin/\.\./\)\?lib/" || fail "$lib is not the installed one: $(ldd "$PREFIX/bin/llama_selfmod" | grep "$lib")"
done

"$PREFIX/bin/llama_selfmod" serve -m "$SM_MODELS/stories260K.gguf" --port 0 --threads 1 > "$TMP/serve.log" 2>&1 &
PID=$!
port=$(listening_port "$TMP/serve.log" "$PID") || fail "the installed server did not start: $(cat "$TMP/serve.log")"
grep -q "web page from $PREFIX/share/llama_selfmod/web" "$TMP/serve.log" || fail "the server did not take the installed page"
curl -sf "http://127.0.0.1:$port/" | grep -qi "<html" || fail "GET / served no page"
kill "$PID"; wait "$PID" 2>/dev/null; PID=""

export PKG_CONFIG_PATH="$PREFIX/lib/pkgconfig"
flags=$(pkg-config --cflags --libs selfmod) || fail "pkg-config does not know selfmod"
# a sanitized build's library needs the sanitizers in the program too
if nm -D "$PREFIX/lib/libselfmod.so" | grep -q __asan; then flags="$flags -fsanitize=address,undefined"; fi
# shellcheck disable=SC2086
cc -o "$TMP/custom_operator" "$SM_SRC/examples/custom_operator.c" $flags 2> "$TMP/cc.log" || fail "compile: $(cat "$TMP/cc.log")"
"$TMP/custom_operator" "$SM_MODELS/stories260K.gguf" the > "$TMP/op.out" 2>&1 || fail "custom_operator: $(tail -2 "$TMP/op.out")"
grep -q "backtracks:" "$TMP/op.out" || fail "custom_operator printed no summary"
ldd "$TMP/custom_operator" | grep -q "libselfmod.so.0 => $PREFIX/lib" || fail "the example does not use the installed library"
ldd "$TMP/custom_operator" | grep -q "libggml.so.* => $PREFIX/lib" || fail "the example's libggml is not the installed one"

# the installed Python package, from outside the checkout, finds the installed libraries
[ -f "$PREFIX/lib/python3/dist-packages/selfmod/__init__.py" ] || fail "the Python package is not installed"
if ! nm -D "$PREFIX/lib/libselfmod.so" | grep -q __asan; then  # (a sanitized library needs its runtime preloaded)
  py=$(env -u SELFMOD_LIBRARY_PATH PYTHONPATH="$PREFIX/lib/python3/dist-packages" /usr/bin/python3 -c '
import sys, selfmod
m = selfmod.Model(sys.argv[1], threads=1)
r = m.generate("Once upon a time", n_predict=8, temperature=0, selfmod=False)
print(selfmod.__file__, len(r.tokens), r.text)' "$SM_MODELS/stories260K.gguf" 2> "$TMP/py.err") || fail "the installed package: $(tail -3 "$TMP/py.err")"
  case "$py" in "$PREFIX/lib/python3/dist-packages/selfmod/__init__.py 8 "*) ;; *) fail "the installed package: $py";; esac
  cli_text=$("$PREFIX/bin/llama_selfmod" -m "$SM_MODELS/stories260K.gguf" -p "Once upon a time" -n 8 -t 0 --no-selfmod --no-memory 2> /dev/null)
  [ "${py#* 8 }" = "$cli_text" ] || fail "the installed package wrote '${py#* 8 }', the program '$cli_text'"
fi

# DESTDIR stages under a root; the manifest takes it all away again
DESTDIR="$TMP/stage" cmake --install "$SM_BUILD" --prefix /opt/selfmod > /dev/null 2>&1 || fail "DESTDIR install"
[ -x "$TMP/stage/opt/selfmod/bin/llama_selfmod" ] || fail "DESTDIR: no program under the stage"
# (the manifest names the files without DESTDIR, as `make uninstall DESTDIR=...` reads it)
make -s -C "$SM_SRC" uninstall BUILD="$SM_BUILD" DESTDIR="$TMP/stage" > /dev/null || fail "make uninstall"
[ -z "$(find "$TMP/stage" -type f -o -type l)" ] || fail "the manifest left files: $(find "$TMP/stage" -type f -o -type l | head -3)"
echo "install: program, server page, pkg-config build of the example, DESTDIR and uninstall all work"
