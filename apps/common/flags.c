/* Strict parsing of flag values, shared by every front-end. */
#include "common/flags.h"

#include <ctype.h>
#include <errno.h>
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
    int failed = ferror(f) ? EIO : 0;
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
