/* Strict parsing of flag values, shared by every front-end. */
#include "common/flags.h"

#include <ctype.h>
#include <errno.h>
#include <getopt.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

/* strto* skip leading white space; a flag value must not have any. */
static bool starts_well(const char *text) { return text && *text && !isspace((unsigned char)*text); }

bool flag_long(const char *text, long *out) {
    if (!starts_well(text)) return false;
    char *end;
    errno = 0;
    long v = strtol(text, &end, 10);
    if (errno != 0 || end == text || *end != '\0') return false;
    *out = v;
    return true;
}

bool flag_float(const char *text, float *out) {
    if (!starts_well(text)) return false;
    char *end;
    errno = 0;
    float v = strtof(text, &end);
    if (errno != 0 || end == text || *end != '\0' || !isfinite(v)) return false;
    *out = v;
    return true;
}

bool flag_u64(const char *text, uint64_t *out) {
    if (!text || !isdigit((unsigned char)*text)) return false; /* no sign, no blank */
    char *end;
    errno = 0;
    unsigned long long v = strtoull(text, &end, 10);
    if (errno != 0 || *end != '\0') return false;
    *out = v;
    return true;
}

bool flag_invalid(FILE *err, const char *program, const char *flag, const char *value, const char *expected) {
    fprintf(err, "%s: error: invalid value '%s' for %s: expected %s\n", program, value, flag, expected);
    return false;
}

bool flag_int_in(FILE *err, const char *program, const char *flag, const char *text, long lo, long hi,
                 const char *expected, int32_t *out) {
    long v;
    if (!flag_long(text, &v) || v < lo || v > hi) return flag_invalid(err, program, flag, text, expected);
    *out = (int32_t)v;
    return true;
}

char *flag_read_file(const char *path, size_t max_bytes) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    size_t cap = 4096, len = 0;
    char *text = malloc(cap);
    errno = 0;
    for (size_t got; text && (got = fread(text + len, 1, cap - len - 1, f)) > 0;) {
        len += got;
        if (len > max_bytes) {
            free(text);
            fclose(f);
            errno = EFBIG;
            return NULL;
        }
        if (cap - len > 1) continue;
        char *bigger = realloc(text, cap *= 2);
        if (!bigger) free(text);
        text = bigger;
    }
    int failed = ferror(f) ? (errno ? errno : EIO) : 0; /* a folder: EISDIR */
    fclose(f);
    if (!text || failed) {
        free(text);
        errno = failed ? failed : ENOMEM;
        return NULL;
    }
    text[len] = '\0';
    return text;
}

bool flag_endpoints(FILE *err, const char *program, const char *flag, const char *text) {
    const char *expected = "HOST:PORT[,HOST:PORT...]";
    for (const char *p = text; *p;) {
        size_t len = strcspn(p, ",");
        const char *colon = memchr(p, ':', len);
        /* the port is what follows the last ':' ([::1]:50052 has several) */
        const char *last = colon;
        for (const char *q = p; q < p + len; q++)
            if (*q == ':') last = q;
        if (!colon || last == p || last + 1 == p + len) return flag_invalid(err, program, flag, text, expected);
        for (const char *d = last + 1; d < p + len; d++)
            if (*d < '0' || *d > '9') return flag_invalid(err, program, flag, text, expected);
        p += len + (p[len] == ',');
    }
    return *text ? true : flag_invalid(err, program, flag, text, expected);
}

/* llama.cpp 0.5.0's flags of more than one letter after a single dash
 * (common/arg.cpp). */
static const char *const LLAMA_MULTI_LETTER[] = {
    "-Cb", "-Cr", "-Crb", "-ag", "-bf", "-bs", "-cb", "-cl", "-cmoe", "-cms", "-cnv", "-co", "-cram", "-ctk",
    "-ctv", "-ctxcp", "-dev", "-dr", "-dt", "-fa", "-fit", "-fitc", "-fitp", "-fitt", "-gan", "-gaw", "-hf",
    "-hff", "-hft", "-if", "-jf", "-kvo", "-kvu", "-lcd", "-lcs", "-lm", "-lv", "-lzm", "-mg", "-mli", "-mm",
    "-mmdev", "-mmu", "-mu", "-ncffn", "-ncmoe", "-ngl", "-nkvo", "-no-ag", "-no-cnv", "-no-kvu", "-nocb", "-np",
    "-npl", "-npp", "-nr", "-ns", "-ntg", "-ot", "-pps", "-ptc", "-rea", "-sm", "-sp", "-sps", "-st", "-sys",
    "-sysf", "-tb", "-tgs", "-to", "-ts", "-ub", NULL};

/* Whether word (a flag) takes the next word as its value. */
static bool takes_value(const char *word, const char *short_options, const struct option *longs) {
    if (word[0] != '-' || word[1] == '\0') return false;
    if (word[1] == '-') {
        if (strchr(word, '=')) return false;
        for (const struct option *o = longs; o && o->name; o++)
            if (strcmp(o->name, word + 2) == 0) return o->has_arg == required_argument;
        return false;
    }
    /* a short group: the last letter takes the next word if it wants a value
     * and nothing follows it in the word */
    for (const char *c = word + 1; *c; c++) {
        const char *at = strchr(short_options, *c);
        if (at && *c != ':' && at[1] == ':') return c[1] == '\0';
    }
    return false;
}

bool flag_llama_aliases(int argc, char **argv, const char *short_options, const struct option *longs,
                        const flag_alias *aliases, FILE *err, const char *program) {
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--") == 0) break;
        if (argv[i][0] != '-' || argv[i][1] == '-' || argv[i][1] == '\0') continue; /* not llama.cpp's short form */
        if (i > 1 && takes_value(argv[i - 1], short_options, longs)) continue;
        const flag_alias *a = aliases;
        while (a && a->llama && strcmp(a->llama, argv[i]) != 0) a++;
        if (a && a->llama) {
            argv[i] = (char *)a->ours;
            continue;
        }
        for (const char *const *l = LLAMA_MULTI_LETTER; *l; l++)
            if (strcmp(*l, argv[i]) == 0) {
                fprintf(err, "%s: error: %s is a llama.cpp flag this program does not have (see --help)\n", program,
                        argv[i]);
                return false;
            }
    }
    return true;
}
