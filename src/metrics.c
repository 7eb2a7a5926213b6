/*
 * Repetition and diversity metrics over generated token sequences, and
 * reference matching (see selfmod.h and docs/EVAL.md for the formulas).
 * n-grams are counted exactly: a hash table of pointers to where each
 * distinct n-gram first occurs, compared token by token on collision.
 */
#include "internal.h"

#include <ctype.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

typedef struct ngram_set {
    const sm_token **slots;
    size_t mask;
    int32_t n;
    int64_t n_distinct;
} ngram_set;

/* Room for `expected` n-grams at a load factor of at most one half, so the
 * table never grows. */
static int ngram_set_init(ngram_set *set, int64_t expected, int32_t n) {
    size_t cap = 16;
    while (cap < (size_t)expected * 2) cap *= 2;
    set->slots = calloc(cap, sizeof *set->slots);
    set->mask = cap - 1;
    set->n = n;
    set->n_distinct = 0;
    return set->slots ? 0 : -1;
}

static void ngram_set_free(ngram_set *set) {
    free(set->slots);
    set->slots = NULL;
}

static uint64_t hash_gram(const sm_token *gram, int32_t n) {
    uint64_t h = 0x9e3779b97f4a7c15ULL;
    for (int32_t i = 0; i < n; i++) {
        h ^= (uint32_t)gram[i];
        h *= 0x100000001b3ULL;
        h ^= h >> 29;
    }
    return h;
}

static void ngram_set_insert(ngram_set *set, const sm_token *gram) {
    size_t at = (size_t)hash_gram(gram, set->n) & set->mask;
    while (set->slots[at]) {
        if (memcmp(set->slots[at], gram, sizeof *gram * (size_t)set->n) == 0) return;
        at = (at + 1) & set->mask;
    }
    set->slots[at] = gram;
    set->n_distinct++;
}

static int32_t grams_in(int32_t n_tokens, int32_t n) { return n_tokens >= n ? n_tokens - n + 1 : 0; }

int32_t sm_ngram_count(const sm_token *tokens, int32_t n_tokens, int32_t n, int32_t *n_unique) {
    if (n < 1 || n_tokens < 0 || (n_tokens > 0 && !tokens)) return -1;
    int32_t total = grams_in(n_tokens, n);
    if (n_unique) *n_unique = 0;
    if (total == 0 || !n_unique) return total;
    ngram_set set;
    if (ngram_set_init(&set, total, n) != 0) return -1;
    for (int32_t i = 0; i < total; i++) ngram_set_insert(&set, tokens + i);
    *n_unique = (int32_t)set.n_distinct;
    ngram_set_free(&set);
    return total;
}

/* Distinct n-grams across all outputs together, over all n-grams. */
static int corpus_distinct(const sm_token *const *outputs, const int32_t *n_tokens, int32_t n_outputs, int32_t n,
                           double *out) {
    int64_t total = 0;
    for (int32_t o = 0; o < n_outputs; o++) total += grams_in(n_tokens[o], n);
    if (total == 0) {
        *out = NAN;
        return 0;
    }
    ngram_set set;
    if (ngram_set_init(&set, total, n) != 0) return -1;
    for (int32_t o = 0; o < n_outputs; o++)
        for (int32_t i = 0; i < grams_in(n_tokens[o], n); i++) ngram_set_insert(&set, outputs[o] + i);
    *out = (double)set.n_distinct / (double)total;
    ngram_set_free(&set);
    return 0;
}

sm_status sm_text_metrics_compute(const sm_token *const *outputs, const int32_t *n_tokens, int32_t n_outputs,
                                  sm_text_metrics *out) {
    if (!out || n_outputs < 0 || (n_outputs > 0 && (!outputs || !n_tokens))) return SM_ERR_INVALID_ARGUMENT;
    for (int32_t o = 0; o < n_outputs; o++)
        if (n_tokens[o] < 0 || (n_tokens[o] > 0 && !outputs[o])) return SM_ERR_INVALID_ARGUMENT;

    *out = (sm_text_metrics){.n_outputs = n_outputs};
    out->rep[0] = out->rep[1] = out->distinct[0] = NAN;
    for (int32_t o = 0; o < n_outputs; o++) out->n_tokens += n_tokens[o];
    out->mean_length = n_outputs > 0 ? (double)out->n_tokens / n_outputs : NAN;

    double seq_rep_sum = 0.0;
    int32_t seq_rep_outputs = 0;
    for (int32_t n = 2; n <= 4; n++) {
        int64_t unique = 0, total = 0;
        for (int32_t o = 0; o < n_outputs; o++) {
            int32_t u = 0, t = sm_ngram_count(outputs[o], n_tokens[o], n, &u);
            if (t < 0) return SM_ERR_NO_MEMORY;
            unique += u;
            total += t;
            if (n == 4 && t > 0) {
                seq_rep_sum += 1.0 - (double)u / t;
                seq_rep_outputs++;
            }
        }
        out->rep[n] = total > 0 ? 1.0 - (double)unique / (double)total : NAN;
    }
    out->diversity = (1.0 - out->rep[2]) * (1.0 - out->rep[3]) * (1.0 - out->rep[4]);
    out->seq_rep_4 = seq_rep_outputs > 0 ? seq_rep_sum / seq_rep_outputs : NAN;
    for (int32_t n = 1; n <= 2; n++)
        if (corpus_distinct(outputs, n_tokens, n_outputs, n, &out->distinct[n]) != 0) return SM_ERR_NO_MEMORY;
    return SM_OK;
}

/* ------------------------------------------------------------------ */
/* Reference answers                                                   */
/* ------------------------------------------------------------------ */

/* Lower case, one space between words, no trailing . ! ? */
static char *normalise(const char *text) {
    size_t len = strlen(text);
    char *out = malloc(len + 1);
    if (!out) return NULL;
    size_t n = 0;
    bool space = false;
    for (const unsigned char *p = (const unsigned char *)text; *p; p++) {
        if (isspace(*p)) {
            space = n > 0;
            continue;
        }
        if (space) out[n++] = ' ';
        space = false;
        out[n++] = (char)(*p < 128 ? tolower(*p) : *p);
    }
    while (n > 0 && (out[n - 1] == '.' || out[n - 1] == '!' || out[n - 1] == '?' || out[n - 1] == ' ')) n--;
    out[n] = '\0';
    return out;
}

static bool is_word_char(char c) { return isalnum((unsigned char)c) || (unsigned char)c >= 128; }

/* needle occurs in haystack as whole words: "blue" in "the blue sky",
 * not in "bluebird". */
static bool contains_words(const char *haystack, const char *needle) {
    size_t len = strlen(needle);
    for (const char *at = strstr(haystack, needle); at; at = strstr(at + 1, needle)) {
        bool starts = at == haystack || !is_word_char(at[-1]) || !is_word_char(needle[0]);
        bool ends = !at[len] || !is_word_char(at[len]) || !is_word_char(needle[len - 1]);
        if (starts && ends) return true;
    }
    return false;
}

static bool reference_match(const char *output, const char *reference, bool exact) {
    if (!output || !reference) return false;
    char *o = normalise(output), *r = normalise(reference);
    bool match = o && r && r[0] && (exact ? strcmp(o, r) == 0 : contains_words(o, r));
    free(o);
    free(r);
    return match;
}

bool sm_reference_exact_match(const char *output, const char *reference) {
    return reference_match(output, reference, true);
}

bool sm_reference_contains_match(const char *output, const char *reference) {
    return reference_match(output, reference, false);
}
