#!/bin/sh
# The man page, written from the program's own --help (so it never
# disagrees with it): make_man.sh PROGRAM VERSION > llama_selfmod.1
set -eu
prog="$1" version="$2"
printf '.TH LLAMA_SELFMOD 1 "" "llama_selfmod %s" "User Commands"\n' "$version"
printf '.SH NAME\nllama_selfmod \\- a self-correcting inference engine on llama.cpp\n'
printf '.SH SYNOPSIS\n.B llama_selfmod\n[\\fIOPTIONS\\fR]\n.br\n.B llama_selfmod serve\n[\\fIOPTIONS\\fR]\n.br\n.B llama_selfmod eval\n[\\fIOPTIONS\\fR]\n'
printf '.SH OPTIONS\n.nf\n'
"$prog" --help 2>&1 | sed -e 's/\\/\\e/g' -e 's/^\./\\\&./' -e "s/^'/\\\\\\&'/"
printf '.fi\n.SH SERVER\n.nf\n'
"$prog" serve --help 2>&1 | sed -e 's/\\/\\e/g' -e 's/^\./\\\&./' -e "s/^'/\\\\\\&'/"
printf '.fi\n.SH SEE ALSO\nThe README of the llama_selfmod repository.\n'
