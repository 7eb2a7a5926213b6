/*
 * operators.c - the built-in backtracking operators (issue 3).
 *
 * Every built-in keeps the history of the candidates it was shown (token,
 * raw probability, length of the run of identical tokens ending there) and
 * derives its decision from that history. Rolling back after a backtrack is
 * therefore just truncating the history; ngram_overlap also keeps a count
 * per n-gram and forgets exactly the n-grams that ended at removed tokens.
 *
 * The rules and defaults are backtracking-llm's, with these deliberate
 * choices:
 *   - probabilities and logits are the raw ones over the full vocabulary at
 *     temperature 1 (backtracking-llm used its top-k renormalised,
 *     temperature-scaled list);
 *   - entropy_threshold measures, by default (scope=topk), the entropy in
 *     nats of the top-k view renormalised, as backtracking-llm did;
 *     scope=full uses the full-vocabulary entropy instead;
 *   - repetition and ngram_overlap compare token ids (compare=text: the
 *     tokens' text, as backtracking-llm did);
 *   - its bounds are kept: probabilities strictly inside (0, 1), windows
 *     and n-grams of at least 2;
 *   - thresholds are stored as floats, so a value equal to its threshold as
 *     written (p = 0.05f against min_probability=0.05) never fires;
 *   - every piece of state is rolled back exactly on a backtrack.
 */
#include "selfmod.h"

#include <ctype.h>
#include <errno.h>
#include <float.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ------------------------------------------------------------------ */
/* Configuration and the table of built-ins                            */
/* ------------------------------------------------------------------ */

typedef enum entropy_scope {
    SCOPE_TOPK = 0,
    SCOPE_FULL,
} entropy_scope;

/* Every parameter any built-in takes; each operator reads its own. */
typedef struct op_config {
    float min_probability;
    float max_entropy;
    float min_margin;
    float max_drop;
    float drop_threshold;
    float min_logit;
    int32_t backtrack_count;
    int32_t window_size;
    int32_t max_repetitions;
    int32_t ngram_size;
    entropy_scope scope;
    bool compare_text; /* repetition, ngram_overlap: by the tokens' text */
} op_config;

typedef enum param_type {
    PARAM_REAL,  /* a float in [min, max]              */
    PARAM_COUNT, /* an int32 in [min, max]             */
    PARAM_SCOPE, /* "topk" or "full"                   */
    PARAM_COMPARE, /* "id" or "text"                   */
} param_type;

enum { MAX_PARAMS = 3 }; /* the most keys any built-in takes */

typedef struct param_def {
    const char *key;
    param_type type;
    double min, max;        /* bounds, inclusive unless open         */
    const char *valid;      /* the bounds in words, for messages    */
    size_t offset;          /* of the field in op_config            */
    bool open;              /* both bounds excluded                 */
} param_def;

#define REAL_PARAM(field, lo, hi, words) \
    { #field, PARAM_REAL, (lo), (hi), (words), offsetof(op_config, field), false }
#define OPEN_PARAM(field, lo, hi, words) \
    { #field, PARAM_REAL, (lo), (hi), (words), offsetof(op_config, field), true }
#define COUNT_PARAM(field) \
    { #field, PARAM_COUNT, 1, INT32_MAX, "an integer >= 1", offsetof(op_config, field), false }
#define COUNT_FROM_2_PARAM(field) \
    { #field, PARAM_COUNT, 2, INT32_MAX, "an integer >= 2", offsetof(op_config, field), false }
#define COMPARE_PARAM \
    { "compare", PARAM_COMPARE, 0, 0, "'id' or 'text'", offsetof(op_config, compare_text), false }

static const param_def PROBABILITY_THRESHOLD_PARAMS[] = {
    OPEN_PARAM(min_probability, 0.0, 1.0, "a number in (0, 1)"),
    COUNT_PARAM(backtrack_count),
};
static const param_def ENTROPY_THRESHOLD_PARAMS[] = {
    REAL_PARAM(max_entropy, 0.0, FLT_MAX, "a number >= 0 (nats)"),
    COUNT_PARAM(backtrack_count),
    { "scope", PARAM_SCOPE, 0, 0, "'topk' or 'full'", offsetof(op_config, scope), false },
};
static const param_def PROBABILITY_MARGIN_PARAMS[] = {
    REAL_PARAM(min_margin, 0.0, 1.0, "a number in [0, 1]"),
    COUNT_PARAM(backtrack_count),
};
static const param_def PROBABILITY_DROP_PARAMS[] = {
    REAL_PARAM(max_drop, 0.0, 1.0, "a number in [0, 1]"),
    COUNT_PARAM(backtrack_count),
};
static const param_def PROBABILITY_TREND_PARAMS[] = {
    COUNT_FROM_2_PARAM(window_size),
    OPEN_PARAM(drop_threshold, 0.0, 1.0, "a number in (0, 1)"),
    COUNT_PARAM(backtrack_count),
};
static const param_def REPETITION_PARAMS[] = {
    COUNT_PARAM(max_repetitions),
    COMPARE_PARAM,
};
static const param_def NGRAM_OVERLAP_PARAMS[] = {
    COUNT_FROM_2_PARAM(ngram_size),
    COUNT_PARAM(backtrack_count),
    COMPARE_PARAM,
};
static const param_def LOGIT_THRESHOLD_PARAMS[] = {
    REAL_PARAM(min_logit, -FLT_MAX, FLT_MAX, "a finite number"),
    COUNT_PARAM(backtrack_count),
};

#define N_PARAMS(table) (sizeof(table) / sizeof((table)[0]))
_Static_assert(N_PARAMS(ENTROPY_THRESHOLD_PARAMS) <= MAX_PARAMS, "raise MAX_PARAMS");
_Static_assert(N_PARAMS(PROBABILITY_TREND_PARAMS) <= MAX_PARAMS, "raise MAX_PARAMS");
_Static_assert(N_PARAMS(NGRAM_OVERLAP_PARAMS) <= MAX_PARAMS, "raise MAX_PARAMS");

typedef struct builtin_state builtin_state;

/* A rule looks at the history (the candidate is its last entry) and returns
 * how many tokens to remove, writing the reason when it fires. */
typedef int32_t (*rule_fn)(builtin_state *s, const sm_token_view *view);

typedef struct builtin_def {
    const sm_operator_vtable *vt;
    const param_def *params;
    size_t n_params;
    op_config defaults;
    rule_fn rule;
    bool tracks_ngrams;
} builtin_def;

/* ------------------------------------------------------------------ */
/* History of the candidates shown                                     */
/* ------------------------------------------------------------------ */

typedef struct op_history {
    sm_token *tokens;
    float *probs;
    int32_t *run_lengths; /* identical tokens in a row ending here */
    int32_t n;
    int32_t cap;
} op_history;

static bool history_reserve(op_history *h, int32_t needed)
{
    if (needed <= h->cap)
        return true;
    if (h->cap > INT32_MAX / 2)
        return false;
    int32_t cap = h->cap > 0 ? h->cap : 64;
    while (cap < needed)
        cap *= 2;
    sm_token *tokens = realloc(h->tokens, (size_t)cap * sizeof *tokens);
    if (tokens)
        h->tokens = tokens;
    float *probs = realloc(h->probs, (size_t)cap * sizeof *probs);
    if (probs)
        h->probs = probs;
    int32_t *runs = realloc(h->run_lengths, (size_t)cap * sizeof *runs);
    if (runs)
        h->run_lengths = runs;
    if (!tokens || !probs || !runs)
        return false;
    h->cap = cap;
    return true;
}

static bool history_push(op_history *h, sm_token token, float prob)
{
    if (!history_reserve(h, h->n + 1))
        return false;
    bool continues_run = h->n > 0 && h->tokens[h->n - 1] == token;
    h->tokens[h->n] = token;
    h->probs[h->n] = prob;
    h->run_lengths[h->n] = continues_run ? h->run_lengths[h->n - 1] + 1 : 1;
    h->n++;
    return true;
}

static void history_free(op_history *h)
{
    free(h->tokens);
    free(h->probs);
    free(h->run_lengths);
    memset(h, 0, sizeof *h);
}

/* ------------------------------------------------------------------ */
/* A multiset of n-grams                                               */
/* ------------------------------------------------------------------ */

/*
 * Open addressing with linear probing. A slot names its n-gram by the
 * history index where its FIRST occurrence ends: removals only ever happen
 * at the end of the history, so later occurrences are removed before the
 * first one and the index stays valid while the count is positive.
 */
enum { SLOT_EMPTY = -1, SLOT_DELETED = -2 };

typedef struct ngram_slot {
    uint64_t hash;
    int32_t end;
    int32_t count;
} ngram_slot;

typedef struct ngram_table {
    ngram_slot *slots;
    size_t cap; /* a power of two */
    size_t n_live;
    size_t n_deleted;
} ngram_table;

static uint64_t ngram_hash(const sm_token *last, int32_t n)
{
    uint64_t h = 1469598103934665603ULL; /* FNV-1a */
    for (int32_t i = 0; i < n; i++) {
        h ^= (uint32_t)last[i - n + 1];
        h *= 1099511628211ULL;
    }
    return h ^ (h >> 29);
}

static void ngram_slots_clear(ngram_slot *slots, size_t cap)
{
    for (size_t i = 0; i < cap; i++)
        slots[i] = (ngram_slot){ .hash = 0, .end = SLOT_EMPTY, .count = 0 };
}

static bool ngram_table_init(ngram_table *t, size_t cap)
{
    t->slots = malloc(cap * sizeof *t->slots);
    if (!t->slots)
        return false;
    t->cap = cap;
    t->n_live = 0;
    t->n_deleted = 0;
    ngram_slots_clear(t->slots, cap);
    return true;
}

static void ngram_table_clear(ngram_table *t)
{
    ngram_slots_clear(t->slots, t->cap);
    t->n_live = 0;
    t->n_deleted = 0;
}

/* Index of the live slot holding the n-gram ending at history index
 * `end`, or -1. */
static long ngram_find(const ngram_table *t, const op_history *h, int32_t n, int32_t end,
                       uint64_t hash)
{
    size_t mask = t->cap - 1;
    for (size_t i = hash & mask;; i = (i + 1) & mask) {
        const ngram_slot *slot = &t->slots[i];
        if (slot->end == SLOT_EMPTY)
            return -1;
        if (slot->end >= 0 && slot->hash == hash
            && memcmp(&h->tokens[slot->end - n + 1], &h->tokens[end - n + 1],
                      (size_t)n * sizeof(sm_token)) == 0)
            return (long)i;
    }
}

static void ngram_place(ngram_slot *slots, size_t cap, ngram_slot entry)
{
    size_t mask = cap - 1;
    size_t i = entry.hash & mask;
    while (slots[i].end >= 0)
        i = (i + 1) & mask;
    slots[i] = entry;
}

/* Keeps live + deleted slots at most half the table, so probes stay short
 * and always meet an empty slot. */
static bool ngram_make_room(ngram_table *t)
{
    if ((t->n_live + t->n_deleted + 1) * 2 <= t->cap)
        return true;
    size_t cap = t->cap;
    while ((t->n_live + 1) * 4 > cap)
        cap *= 2;
    ngram_slot *slots = malloc(cap * sizeof *slots);
    if (!slots)
        return false;
    ngram_slots_clear(slots, cap);
    for (size_t i = 0; i < t->cap; i++)
        if (t->slots[i].end >= 0)
            ngram_place(slots, cap, t->slots[i]);
    free(t->slots);
    t->slots = slots;
    t->cap = cap;
    t->n_deleted = 0;
    return true;
}

/* Counts the n-gram ending at history index `end`; returns how often it
 * was held before, or -1 when out of memory. */
static int32_t ngram_add(ngram_table *t, const op_history *h, int32_t n, int32_t end)
{
    uint64_t hash = ngram_hash(&h->tokens[end], n);
    long found = ngram_find(t, h, n, end, hash);
    if (found >= 0)
        return t->slots[found].count++;
    if (!ngram_make_room(t))
        return -1;
    size_t mask = t->cap - 1;
    size_t i = hash & mask;
    while (t->slots[i].end >= 0)
        i = (i + 1) & mask;
    if (t->slots[i].end == SLOT_DELETED)
        t->n_deleted--;
    t->slots[i] = (ngram_slot){ .hash = hash, .end = end, .count = 1 };
    t->n_live++;
    return 0;
}

static void ngram_remove(ngram_table *t, const op_history *h, int32_t n, int32_t end)
{
    long found = ngram_find(t, h, n, end, ngram_hash(&h->tokens[end], n));
    if (found < 0)
        return;
    ngram_slot *slot = &t->slots[found];
    if (--slot->count == 0) {
        slot->end = SLOT_DELETED;
        t->n_live--;
        t->n_deleted++;
    }
}

/* ------------------------------------------------------------------ */
/* Token texts as small ids (compare=text)                             */
/* ------------------------------------------------------------------ */

/*
 * Every distinct text gets the next id, so two tokens compare equal
 * exactly when their texts do (byte for byte), and the history and the
 * n-gram table keep working on ids. Ids are never taken back: a rewind
 * leaves the table as it is, which changes no decision.
 */
typedef struct text_slot {
    char *text; /* NULL: empty */
    uint64_t hash;
    int32_t id;
} text_slot;

typedef struct text_ids {
    text_slot *slots;
    size_t cap; /* a power of two, at least twice n */
    int32_t n;
} text_ids;

static uint64_t text_hash(const char *text)
{
    uint64_t h = 1469598103934665603ULL;
    for (const unsigned char *p = (const unsigned char *)text; *p; p++)
        h = (h ^ *p) * 1099511628211ULL;
    return h;
}

static bool text_ids_grow(text_ids *t)
{
    size_t cap = t->cap ? t->cap * 2 : 256;
    text_slot *slots = calloc(cap, sizeof *slots);
    if (!slots)
        return false;
    for (size_t i = 0; i < t->cap; i++) {
        if (!t->slots[i].text)
            continue;
        size_t j = t->slots[i].hash & (cap - 1);
        while (slots[j].text)
            j = (j + 1) & (cap - 1);
        slots[j] = t->slots[i];
    }
    free(t->slots);
    t->slots = slots;
    t->cap = cap;
    return true;
}

/* The id of text, or -1 when out of memory. */
static int32_t text_id(text_ids *t, const char *text)
{
    if ((size_t)(t->n + 1) * 2 > t->cap && !text_ids_grow(t))
        return -1;
    uint64_t hash = text_hash(text);
    size_t i = hash & (t->cap - 1);
    for (; t->slots[i].text; i = (i + 1) & (t->cap - 1))
        if (t->slots[i].hash == hash && strcmp(t->slots[i].text, text) == 0)
            return t->slots[i].id;
    size_t len = strlen(text);
    char *copy = malloc(len + 1);
    if (!copy)
        return -1;
    memcpy(copy, text, len + 1);
    t->slots[i] = (text_slot){ .text = copy, .hash = hash, .id = t->n };
    return t->n++;
}

static void text_ids_free(text_ids *t)
{
    for (size_t i = 0; i < t->cap; i++)
        free(t->slots[i].text);
    free(t->slots);
    memset(t, 0, sizeof *t);
}

/* ------------------------------------------------------------------ */
/* Built-in operator state                                             */
/* ------------------------------------------------------------------ */

struct builtin_state {
    sm_operator *owner;        /* where the reason for firing goes        */
    const builtin_def *def;
    op_config config;
    op_history history;
    ngram_table ngrams;        /* ngram_overlap only                       */
    text_ids texts;            /* compare=text only                        */
    int32_t newest_ngram_seen; /* times the newest n-gram was held before */
    /* Set when memory ran out mid-generation: the history no longer
     * matches what was shown, so the operator stays silent until reset. */
    bool lost_track;
};

static void describe(builtin_state *s, const char *fmt, ...)
{
    if (!s->owner)
        return;
    va_list args;
    va_start(args, fmt);
    vsnprintf(s->owner->description, sizeof s->owner->description, fmt, args);
    va_end(args);
}

static bool record(builtin_state *s, const sm_token_view *view)
{
    op_history *h = &s->history;
    /* What "the same token" means: its id, or its text. */
    sm_token key = s->config.compare_text ? text_id(&s->texts, view->piece ? view->piece : "") : view->token;
    if (key < 0 || !history_push(h, key, view->prob))
        return false;
    s->newest_ngram_seen = 0;
    int32_t n = s->config.ngram_size;
    if (s->def->tracks_ngrams && h->n >= n) {
        int32_t seen = ngram_add(&s->ngrams, h, n, h->n - 1);
        if (seen < 0) {
            h->n--;
            return false;
        }
        s->newest_ngram_seen = seen;
    }
    return true;
}

static int32_t builtin_decide(void *state, const sm_token_view *view)
{
    builtin_state *s = state;
    if (!view || s->lost_track)
        return 0;
    if (!record(s, view)) {
        s->lost_track = true;
        return 0;
    }
    return s->def->rule(s, view);
}

static void builtin_on_backtrack(void *state, int32_t n_removed)
{
    builtin_state *s = state;
    op_history *h = &s->history;
    if (n_removed <= 0)
        return;
    int32_t keep = n_removed >= h->n ? 0 : h->n - n_removed;
    int32_t n = s->config.ngram_size;
    if (s->def->tracks_ngrams)
        for (int32_t end = h->n - 1; end >= keep && end >= n - 1; end--)
            ngram_remove(&s->ngrams, h, n, end);
    h->n = keep;
}

static void builtin_reset(void *state)
{
    builtin_state *s = state;
    s->history.n = 0;
    if (s->def->tracks_ngrams)
        ngram_table_clear(&s->ngrams);
    s->newest_ngram_seen = 0;
    s->lost_track = false;
    if (s->owner)
        s->owner->description[0] = '\0';
}

static void builtin_free(void *state)
{
    builtin_state *s = state;
    if (!s)
        return;
    history_free(&s->history);
    free(s->ngrams.slots);
    text_ids_free(&s->texts);
    free(s);
}

/* ------------------------------------------------------------------ */
/* The rules                                                           */
/* ------------------------------------------------------------------ */

static int32_t rule_never(builtin_state *s, const sm_token_view *view)
{
    (void)s;
    (void)view;
    return 0;
}

static int32_t rule_probability_threshold(builtin_state *s, const sm_token_view *view)
{
    float min = s->config.min_probability;
    if (!(view->prob < min))
        return 0;
    describe(s, "p=%.4g < min_probability %g", view->prob, min);
    return s->config.backtrack_count;
}

/* Entropy (nats) of the top-k view renormalised to sum to one. */
static double topk_entropy(const sm_token_view *view)
{
    if (!view->top || view->n_top < 1)
        return 0.0;
    double total = 0.0;
    for (int32_t i = 0; i < view->n_top; i++)
        total += view->top[i].prob > 0.0f ? view->top[i].prob : 0.0f;
    if (!(total > 0.0))
        return 0.0;
    double entropy = 0.0;
    for (int32_t i = 0; i < view->n_top; i++) {
        double q = view->top[i].prob / total;
        if (q > 0.0)
            entropy -= q * log(q);
    }
    return entropy;
}

static double full_entropy(const sm_token_view *view)
{
    if (view->signals)
        return view->signals->entropy;
    if (!view->logits || view->n_vocab < 1)
        return 0.0;
    double max = view->logits[0];
    for (int32_t i = 1; i < view->n_vocab; i++)
        if (view->logits[i] > max)
            max = view->logits[i];
    double z = 0.0, weighted = 0.0;
    for (int32_t i = 0; i < view->n_vocab; i++) {
        double shifted = view->logits[i] - max;
        double e = exp(shifted);
        if (e > 0.0) {
            z += e;
            weighted += e * shifted;
        }
    }
    /* H = log Z - E[shifted logit] */
    return log(z) - weighted / z;
}

static int32_t rule_entropy_threshold(builtin_state *s, const sm_token_view *view)
{
    bool full = s->config.scope == SCOPE_FULL;
    double entropy = full ? full_entropy(view) : topk_entropy(view);
    float max = s->config.max_entropy;
    if (!(entropy > max))
        return 0;
    describe(s, "%s entropy %.4g nats > max_entropy %g", full ? "full" : "top-k", entropy, max);
    return s->config.backtrack_count;
}

static int32_t rule_probability_margin(builtin_state *s, const sm_token_view *view)
{
    float top1, top2;
    if (view->top && view->n_top >= 2) {
        top1 = view->top[0].prob;
        top2 = view->top[1].prob;
    } else if (view->signals) {
        top1 = view->signals->p_top1;
        top2 = view->signals->p_top2;
    } else {
        return 0;
    }
    float margin = top1 - top2;
    float min = s->config.min_margin;
    if (!(margin < min))
        return 0;
    describe(s, "margin p1-p2=%.4g < min_margin %g", margin, min);
    return s->config.backtrack_count;
}

static int32_t rule_probability_drop(builtin_state *s, const sm_token_view *view)
{
    const op_history *h = &s->history;
    if (h->n < 2)
        return 0;
    double previous = h->probs[h->n - 2];
    double limit = previous * (1.0 - (double)s->config.max_drop);
    if (!((double)view->prob < limit))
        return 0;
    describe(s, "p=%.4g < previous p %.4g * (1 - max_drop %g)", view->prob, previous,
             s->config.max_drop);
    return s->config.backtrack_count;
}

/* Compares p with the mean of the window_size values before it, once at
 * least window_size / 2 (and at least one) are held. */
static int32_t rule_probability_trend(builtin_state *s, const sm_token_view *view)
{
    const op_history *h = &s->history;
    int32_t window = s->config.window_size;
    int32_t before = h->n - 1;
    int32_t held = before < window ? before : window;
    int32_t needed = window / 2 > 1 ? window / 2 : 1;
    if (held < needed)
        return 0;
    double sum = 0.0;
    for (int32_t i = before - held; i < before; i++)
        sum += h->probs[i];
    double mean = sum / held;
    if (!((double)view->prob < mean * (double)s->config.drop_threshold))
        return 0;
    describe(s, "p=%.4g < mean %.4g of last %d * drop_threshold %g", view->prob, mean, held,
             s->config.drop_threshold);
    return s->config.backtrack_count;
}

/* Removes the whole run, as backtracking-llm does. */
static int32_t rule_repetition(builtin_state *s, const sm_token_view *view)
{
    const op_history *h = &s->history;
    int32_t run = h->run_lengths[h->n - 1];
    if (run <= s->config.max_repetitions)
        return 0;
    if (s->config.compare_text)
        describe(s, "run of %d tokens reading '%.40s' > max_repetitions %d", run, view->piece ? view->piece : "",
                 s->config.max_repetitions);
    else
        describe(s, "run of %d identical tokens (id %d) > max_repetitions %d", run, (int)view->token,
                 s->config.max_repetitions);
    return run;
}

static int32_t rule_ngram_overlap(builtin_state *s, const sm_token_view *view)
{
    (void)view;
    if (s->newest_ngram_seen == 0)
        return 0;
    describe(s, "the newest %d-gram was generated %d time(s) before", s->config.ngram_size,
             s->newest_ngram_seen);
    return s->config.backtrack_count;
}

static int32_t rule_logit_threshold(builtin_state *s, const sm_token_view *view)
{
    float min = s->config.min_logit;
    if (!(view->logit < min))
        return 0;
    describe(s, "logit=%.4g < min_logit %g", view->logit, min);
    return s->config.backtrack_count;
}

/* ------------------------------------------------------------------ */
/* The built-in table                                                  */
/* ------------------------------------------------------------------ */

#define BUILTIN_VTABLE(op_name) \
    { .name = (op_name), .decide = builtin_decide, .on_backtrack = builtin_on_backtrack, \
      .reset = builtin_reset, .free_state = builtin_free }

static const sm_operator_vtable PROBABILITY_THRESHOLD_VT = BUILTIN_VTABLE("probability_threshold");
static const sm_operator_vtable ENTROPY_THRESHOLD_VT = BUILTIN_VTABLE("entropy_threshold");
static const sm_operator_vtable PROBABILITY_MARGIN_VT = BUILTIN_VTABLE("probability_margin");
static const sm_operator_vtable PROBABILITY_DROP_VT = BUILTIN_VTABLE("probability_drop");
static const sm_operator_vtable PROBABILITY_TREND_VT = BUILTIN_VTABLE("probability_trend");
static const sm_operator_vtable REPETITION_VT = BUILTIN_VTABLE("repetition");
static const sm_operator_vtable NGRAM_OVERLAP_VT = BUILTIN_VTABLE("ngram_overlap");
static const sm_operator_vtable LOGIT_THRESHOLD_VT = BUILTIN_VTABLE("logit_threshold");
static const sm_operator_vtable NEVER_VT = BUILTIN_VTABLE("never");

#define PARAMS(table) (table), N_PARAMS(table)

static const builtin_def BUILTINS[] = {
    { &PROBABILITY_THRESHOLD_VT, PARAMS(PROBABILITY_THRESHOLD_PARAMS),
      { .min_probability = 0.05f, .backtrack_count = 1 }, rule_probability_threshold, false },
    { &ENTROPY_THRESHOLD_VT, PARAMS(ENTROPY_THRESHOLD_PARAMS),
      { .max_entropy = 0.2f, .backtrack_count = 2, .scope = SCOPE_TOPK }, rule_entropy_threshold,
      false },
    { &PROBABILITY_MARGIN_VT, PARAMS(PROBABILITY_MARGIN_PARAMS),
      { .min_margin = 0.05f, .backtrack_count = 1 }, rule_probability_margin, false },
    { &PROBABILITY_DROP_VT, PARAMS(PROBABILITY_DROP_PARAMS),
      { .max_drop = 0.8f, .backtrack_count = 1 }, rule_probability_drop, false },
    { &PROBABILITY_TREND_VT, PARAMS(PROBABILITY_TREND_PARAMS),
      { .window_size = 10, .drop_threshold = 0.5f, .backtrack_count = 1 },
      rule_probability_trend, false },
    { &REPETITION_VT, PARAMS(REPETITION_PARAMS), { .max_repetitions = 3 }, rule_repetition,
      false },
    { &NGRAM_OVERLAP_VT, PARAMS(NGRAM_OVERLAP_PARAMS), { .ngram_size = 4, .backtrack_count = 1 },
      rule_ngram_overlap, true },
    { &LOGIT_THRESHOLD_VT, PARAMS(LOGIT_THRESHOLD_PARAMS),
      { .min_logit = -20.0f, .backtrack_count = 1 }, rule_logit_threshold, false },
    { &NEVER_VT, NULL, 0, { .backtrack_count = 0 }, rule_never, false },
};

enum { N_BUILTINS = sizeof BUILTINS / sizeof BUILTINS[0] };

static const char *const BUILTIN_NAMES[] = {
    "probability_threshold", "entropy_threshold", "probability_margin", "probability_drop",
    "probability_trend",     "repetition",        "ngram_overlap",      "logit_threshold",
    "never",                 NULL,
};
_Static_assert(sizeof BUILTIN_NAMES / sizeof BUILTIN_NAMES[0] == N_BUILTINS + 1,
               "every built-in is named once");

const char *const *sm_operator_names(void)
{
    return BUILTIN_NAMES;
}

const char *sm_operator_help(void)
{
    return "Backtracking operators: --operator NAME[:key=value,...] (repeatable).\n"
           "After each sampled token an operator may remove it and tokens before it.\n"
           "Probabilities and logits are raw, over the full vocabulary, at temperature 1\n"
           "(--operator-input original: backtracking-llm's top-k at the temperature).\n"
           "\n"
           "  probability_threshold  the chosen token's p < min_probability\n"
           "      min_probability=0.05   a number in (0, 1)\n"
           "      backtrack_count=1      an integer >= 1\n"
           "  entropy_threshold      the entropy (nats) > max_entropy\n"
           "      max_entropy=0.2        a number >= 0\n"
           "      backtrack_count=2      an integer >= 1\n"
           "      scope=topk             topk: the top-n view renormalised; full: whole vocabulary\n"
           "  probability_margin     p(top1) - p(top2) < min_margin\n"
           "      min_margin=0.05        a number in [0, 1]\n"
           "      backtrack_count=1      an integer >= 1\n"
           "  probability_drop       p < previous p * (1 - max_drop)\n"
           "      max_drop=0.8           a number in [0, 1]\n"
           "      backtrack_count=1      an integer >= 1\n"
           "  probability_trend      p < mean of the last window_size p * drop_threshold\n"
           "                         (once at least window_size/2 values are held)\n"
           "      window_size=10         an integer >= 2\n"
           "      drop_threshold=0.5     a number in (0, 1)\n"
           "      backtrack_count=1      an integer >= 1\n"
           "  repetition             a run of identical tokens longer than max_repetitions;\n"
           "                         removes the whole run\n"
           "      max_repetitions=3      an integer >= 1\n"
           "      compare=id             id: token ids; text: the tokens' text (backtracking-llm)\n"
           "  ngram_overlap          the newest n-gram was generated before\n"
           "      ngram_size=4           an integer >= 2\n"
           "      backtrack_count=1      an integer >= 1\n"
           "      compare=id             id or text, as for repetition\n"
           "  logit_threshold        the chosen token's raw logit < min_logit\n"
           "      min_logit=-20          a finite number\n"
           "      backtrack_count=1      an integer >= 1\n"
           "  never                  never fires (no keys)\n";
}

/* ------------------------------------------------------------------ */
/* Spec parsing                                                        */
/* ------------------------------------------------------------------ */

static void set_error(sm_error *err, sm_status status, const char *fmt, ...)
{
    if (!err)
        return;
    err->status = status;
    va_list args;
    va_start(args, fmt);
    vsnprintf(err->message, sizeof err->message, fmt, args);
    va_end(args);
}

static void join_names(char *out, size_t size)
{
    size_t used = 0;
    out[0] = '\0';
    for (size_t i = 0; i < N_BUILTINS && used < size; i++) {
        int n = snprintf(out + used, size - used, "%s%s", i ? ", " : "", BUILTIN_NAMES[i]);
        if (n < 0)
            break;
        used += (size_t)n;
    }
}

static void join_keys(const builtin_def *def, char *out, size_t size)
{
    size_t used = 0;
    out[0] = '\0';
    for (size_t i = 0; i < def->n_params && used < size; i++) {
        int n = snprintf(out + used, size - used, "%s%s", i ? ", " : "", def->params[i].key);
        if (n < 0)
            break;
        used += (size_t)n;
    }
}

static const builtin_def *find_builtin(const char *name)
{
    for (size_t i = 0; i < N_BUILTINS; i++)
        if (strcmp(BUILTINS[i].vt->name, name) == 0)
            return &BUILTINS[i];
    return NULL;
}

static const param_def *find_param(const builtin_def *def, const char *key)
{
    for (size_t i = 0; i < def->n_params; i++)
        if (strcmp(def->params[i].key, key) == 0)
            return &def->params[i];
    return NULL;
}

/* strtod and strtol skip leading blanks; a spec must not contain any. */
static bool parse_real(const char *text, double *out)
{
    if (isspace((unsigned char)text[0]))
        return false;
    char *end = NULL;
    errno = 0;
    double value = strtod(text, &end);
    if (end == text || *end != '\0' || errno == ERANGE || !isfinite(value))
        return false;
    *out = value;
    return true;
}

static bool parse_integer(const char *text, long *out)
{
    if (isspace((unsigned char)text[0]))
        return false;
    char *end = NULL;
    errno = 0;
    long value = strtol(text, &end, 10);
    if (end == text || *end != '\0' || errno == ERANGE)
        return false;
    *out = value;
    return true;
}

static bool set_param(const builtin_def *def, const param_def *param, const char *value,
                      op_config *config, sm_error *err)
{
    char *field = (char *)config + param->offset;
    double real;
    long integer;
    bool ok;
    switch (param->type) {
    case PARAM_REAL:
        ok = parse_real(value, &real) && (param->open ? real > param->min && real < param->max
                                                      : real >= param->min && real <= param->max);
        if (ok)
            *(float *)field = (float)real;
        break;
    case PARAM_COUNT:
        ok = parse_integer(value, &integer) && integer >= param->min && integer <= param->max;
        if (ok)
            *(int32_t *)field = (int32_t)integer;
        break;
    case PARAM_SCOPE:
        ok = strcmp(value, "topk") == 0 || strcmp(value, "full") == 0;
        if (ok)
            *(entropy_scope *)field = strcmp(value, "full") == 0 ? SCOPE_FULL : SCOPE_TOPK;
        break;
    case PARAM_COMPARE:
        ok = strcmp(value, "id") == 0 || strcmp(value, "text") == 0;
        if (ok)
            *(bool *)field = strcmp(value, "text") == 0;
        break;
    default:
        ok = false;
    }
    if (!ok)
        set_error(err, SM_ERR_INVALID_ARGUMENT, "operator '%s': '%s' must be %s, got '%.64s'",
                  def->vt->name, param->key, param->valid, value);
    return ok;
}

/* Parses "key=value,key=value" (modified in place) into config. */
static bool parse_params(const builtin_def *def, char *list, op_config *config, sm_error *err)
{
    bool given[MAX_PARAMS] = { false };
    char keys[256];
    join_keys(def, keys, sizeof keys);
    if (def->n_params == 0) {
        set_error(err, SM_ERR_INVALID_ARGUMENT, "operator '%s' takes no keys, got '%.64s'",
                  def->vt->name, list);
        return false;
    }
    char *item = list;
    for (;;) {
        char *next = strchr(item, ',');
        if (next)
            *next = '\0';
        char *eq = strchr(item, '=');
        if (!eq || eq == item || eq[1] == '\0') {
            set_error(err, SM_ERR_INVALID_ARGUMENT,
                      "operator '%s': expected key=value, got '%.64s' (valid keys: %s)",
                      def->vt->name, item, keys);
            return false;
        }
        *eq = '\0';
        const param_def *param = find_param(def, item);
        if (!param) {
            set_error(err, SM_ERR_INVALID_ARGUMENT,
                      "operator '%s' has no key '%.64s'; valid keys: %s", def->vt->name, item,
                      keys);
            return false;
        }
        size_t index = (size_t)(param - def->params);
        if (given[index]) {
            set_error(err, SM_ERR_INVALID_ARGUMENT, "operator '%s': key '%s' is given twice",
                      def->vt->name, param->key);
            return false;
        }
        given[index] = true;
        if (!set_param(def, param, eq + 1, config, err))
            return false;
        if (!next)
            return true;
        item = next + 1;
    }
}

static char *copy_string(const char *text)
{
    size_t len = strlen(text);
    char *copy = malloc(len + 1);
    if (copy)
        memcpy(copy, text, len + 1);
    return copy;
}

static bool parse_spec(char *spec, const builtin_def **def_out, op_config *config,
                       sm_error *err)
{
    char *colon = strchr(spec, ':');
    if (colon)
        *colon = '\0';
    const builtin_def *def = find_builtin(spec);
    if (!def) {
        char names[512];
        join_names(names, sizeof names);
        set_error(err, SM_ERR_INVALID_ARGUMENT, "unknown operator '%.64s'; valid operators: %s",
                  spec, names);
        return false;
    }
    *def_out = def;
    *config = def->defaults;
    if (!colon)
        return true;
    return parse_params(def, colon + 1, config, err);
}

static sm_operator *new_builtin(const builtin_def *def, const op_config *config)
{
    builtin_state *s = calloc(1, sizeof *s);
    if (!s)
        return NULL;
    s->def = def;
    s->config = *config;
    bool ok = history_reserve(&s->history, 256);
    if (ok && def->tracks_ngrams)
        ok = ngram_table_init(&s->ngrams, 512);
    sm_operator *op = ok ? sm_operator_new(def->vt, s) : NULL;
    if (!op) {
        builtin_free(s);
        return NULL;
    }
    s->owner = op;
    return op;
}

sm_operator *sm_operator_from_spec(const char *spec, sm_error *err)
{
    if (!spec || !*spec) {
        char names[512];
        join_names(names, sizeof names);
        set_error(err, SM_ERR_INVALID_ARGUMENT, "empty operator spec; valid operators: %s",
                  names);
        return NULL;
    }
    char *copy = copy_string(spec);
    if (!copy) {
        set_error(err, SM_ERR_NO_MEMORY, "out of memory parsing operator spec");
        return NULL;
    }
    const builtin_def *def = NULL;
    op_config config;
    bool parsed = parse_spec(copy, &def, &config, err);
    free(copy);
    if (!parsed)
        return NULL;
    sm_operator *op = new_builtin(def, &config);
    if (!op)
        set_error(err, SM_ERR_NO_MEMORY, "out of memory creating operator '%s'", def->vt->name);
    else if (err)
        *err = (sm_error){ .status = SM_OK };
    return op;
}

/* ------------------------------------------------------------------ */
/* Operator handles                                                    */
/* ------------------------------------------------------------------ */

/* A vtable without a name or a decide function is refused (NULL): events
 * need the name and the loop needs decide. The other hooks may be NULL. */
sm_operator *sm_operator_new(const sm_operator_vtable *vt, void *state)
{
    if (!vt || !vt->name || !vt->decide)
        return NULL;
    sm_operator *op = calloc(1, sizeof *op);
    if (!op)
        return NULL;
    op->vt = vt;
    op->state = state;
    return op;
}

void sm_operator_free(sm_operator *op)
{
    if (!op)
        return;
    if (op->vt->free_state)
        op->vt->free_state(op->state);
    free(op);
}
