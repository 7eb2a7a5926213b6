/*
 * libFuzzer target: the command lines of llama_selfmod, `serve` and
 * `eval`. The input is split at NUL bytes into arguments; the first byte
 * picks the parser. Every outcome must be a parse or one error line.
 */
#include "cli/args.h"
#include "eval/options.h"
#include "server/options.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static FILE *sink;

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    (void)argc;
    (void)argv;
    sink = fopen("/dev/null", "w");
    if (!freopen("/dev/null", "w", stdout)) return 1; /* --help, --version */
    return 0;
}

enum { MAX_ARGS = 64 };

int LLVMFuzzerTestOneInput(const unsigned char *data, size_t size) {
    if (size < 1) return 0;
    char *copy = malloc(size + 1);
    memcpy(copy, data + 1, size - 1);
    copy[size - 1] = '\0';
    char *argv[MAX_ARGS + 2];
    int argc = 0;
    argv[argc++] = (char *)"llama_selfmod";
    for (char *p = copy; p < copy + size - 1 && argc < MAX_ARGS;) {
        argv[argc++] = p;
        p += strlen(p) + 1;
    }
    argv[argc] = NULL;
    switch (data[0] % 3) {
    case 0: {
        cli_options opt;
        cli_parse_args(argc, argv, &opt, sink);
        cli_options_free(&opt);
        break;
    }
    case 1: {
        server_options opt;
        if (server_parse_options(argc, argv, &opt, sink, sink) == OPTIONS_RUN) server_options_free(&opt);
        break;
    }
    default: {
        eval_options opt;
        if (eval_parse_args(argc, argv, &opt, sink) == EVAL_PARSE_RUN) eval_options_free(&opt);
        break;
    }
    }
    free(copy);
    return 0;
}
