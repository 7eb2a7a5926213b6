/* Strict parsing of flag values, shared by every front-end (the CLI, eval,
 * serve): the whole text must be the number — no blanks, nothing after it,
 * no overflow, finite. */
#ifndef APPS_FLAGS_H
#define APPS_FLAGS_H

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

bool flag_long(const char *text, long *out);
bool flag_float(const char *text, float *out);
bool flag_u64(const char *text, uint64_t *out);

/* Prints "PROGRAM: error: invalid value 'VALUE' for FLAG: expected EXPECTED"
 * and returns false. */
bool flag_invalid(FILE *err, const char *program, const char *flag, const char *value, const char *expected);

/* An integer in [lo, hi] into *out, or the message above. */
bool flag_int_in(FILE *err, const char *program, const char *flag, const char *text, long lo, long hi,
                 const char *expected, int32_t *out);

/* A list of HOST:PORT endpoints (--rpc), or the message above. */
bool flag_endpoints(FILE *err, const char *program, const char *flag, const char *text);

/* llama.cpp's short flags, as llama-cli and llama-server users type them
 * (-ngl 99, -np 4, -c 4096): getopt would read "-ngl 99" as -n "gl".
 * Rewrites argv in place, before getopt, turning each flag of `aliases`
 * (llama.cpp's name, then ours; NULL-terminated) into our long name, and
 * refuses every other multi-letter flag of llama.cpp by name. A word that
 * is a value (after a flag of short_options or longs that takes one) or
 * comes after "--" is left alone. False after printing the error. */
struct option;
typedef struct flag_alias {
    const char *llama, *ours;
} flag_alias;
bool flag_llama_aliases(int argc, char **argv, const char *short_options, const struct option *longs,
                        const flag_alias *aliases, FILE *err, const char *program);

/* The whole of a file a flag names (at most max_bytes), NUL-terminated, to
 * free(); NULL with errno set (EFBIG when larger than max_bytes). */
char *flag_read_file(const char *path, size_t max_bytes);

#endif
