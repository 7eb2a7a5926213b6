/* The generated text, kept with per-token byte offsets so that removing
 * tokens removes exactly their bytes. */
#include "internal.h"

#include <stdlib.h>
#include <string.h>

void sm_text_init(sm_text *t) { memset(t, 0, sizeof *t); }

void sm_text_free(sm_text *t) {
    free(t->bytes);
    free(t->offsets);
    sm_text_init(t);
}

void sm_text_clear(sm_text *t) {
    t->len = 0;
    t->n_tokens = 0;
    if (t->bytes) t->bytes[0] = '\0';
}

int sm_text_push(sm_text *t, const char *piece, size_t n) {
    if (t->n_tokens == t->cap_tokens) {
        int32_t cap = t->cap_tokens ? t->cap_tokens * 2 : 256;
        size_t *o = realloc(t->offsets, sizeof *o * (size_t)cap);
        if (!o) return -1;
        t->offsets = o;
        t->cap_tokens = cap;
    }
    if (t->len + n + 1 > t->cap) {
        size_t cap = t->cap ? t->cap : 1024;
        while (cap < t->len + n + 1) cap *= 2;
        char *b = realloc(t->bytes, cap);
        if (!b) return -1;
        t->bytes = b;
        t->cap = cap;
    }
    t->offsets[t->n_tokens++] = t->len;
    memcpy(t->bytes + t->len, piece, n);
    t->len += n;
    t->bytes[t->len] = '\0';
    return 0;
}

void sm_text_pop(sm_text *t, int32_t n_tokens) {
    if (n_tokens <= 0) return;
    if (n_tokens > t->n_tokens) n_tokens = t->n_tokens;
    t->n_tokens -= n_tokens;
    t->len = t->n_tokens ? t->offsets[t->n_tokens] : 0;
    if (t->bytes) t->bytes[t->len] = '\0';
}

/* How many bytes a sequence starting with c has (1 for a stray byte). */
static size_t utf8_expected_length(unsigned char c) {
    if (c >= 0xC2 && c <= 0xDF) return 2;
    if (c >= 0xE0 && c <= 0xEF) return 3;
    if (c >= 0xF0 && c <= 0xF4) return 4;
    return 1;
}

long sm_indent_cut(const char *text, size_t len, int32_t n_indent) {
    if (!text || n_indent <= 0) return -1;
    for (size_t j = 0; j < len; j++) {
        if (text[j] != '\n') continue;
        size_t pos = j + 1;
        while (pos < len && (text[pos] == ' ' || text[pos] == '\t')) pos++;
        if (pos < len && pos - (j + 1) < (size_t)n_indent) return (long)pos;
    }
    return -1;
}

size_t sm_utf8_complete_prefix(const char *s, size_t len) {
    /* Only the last 3 bytes can start a sequence that is still open. */
    for (size_t back = 1; back <= 3 && back <= len; back++) {
        unsigned char c = (unsigned char)s[len - back];
        if (c < 0x80) return len;
        if (c >= 0xC0) return utf8_expected_length(c) > back ? len - back : len;
    }
    return len;
}

long sm_text_find_stop(const sm_text *t, size_t from, const char *const *stops, int32_t n_stops) {
    long best = -1;
    for (int32_t i = 0; i < n_stops; i++) {
        size_t sl = strlen(stops[i]);
        /* A stop string may begin in earlier text and end in the new piece. */
        size_t start = from > sl ? from - sl + 1 : 0;
        if (!t->bytes) continue;
        const char *hit = strstr(t->bytes + start, stops[i]);
        if (hit && (best < 0 || hit - t->bytes < best)) best = hit - t->bytes;
    }
    return best;
}
