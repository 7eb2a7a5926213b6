/* The built-in backtracking operators on synthetic token views: threshold
 * edges, returned counts, exact rollback, reset, and spec parsing. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "selfmod.h"

/* ------------------------------------------------------------------ */
/* Helpers                                                             */
/* ------------------------------------------------------------------ */

static sm_operator *make(const char *spec)
{
    sm_error err = { .status = SM_ERR_STATE, .message = "untouched" };
    sm_operator *op = sm_operator_from_spec(spec, &err);
    if (!op)
        fail_msg("'%s' was refused: %s", spec, err.message);
    assert_int_equal(err.status, SM_OK);
    return op;
}

static int32_t show_token(sm_operator *op, sm_token token, float prob, float logit)
{
    sm_token_view view = { .token = token, .prob = prob, .logit = logit };
    return op->vt->decide(op->state, &view);
}

static int32_t show_prob(sm_operator *op, float prob)
{
    return show_token(op, 7, prob, 0.0f);
}

static int32_t show(sm_operator *op, sm_token token)
{
    return show_token(op, token, 0.5f, 0.0f);
}

static int32_t show_top(sm_operator *op, const sm_candidate *top, int32_t n_top,
                        const sm_signals *signals)
{
    sm_token_view view = { .token = top[0].token, .prob = top[0].prob, .logit = top[0].logit,
                           .top = top, .n_top = n_top, .signals = signals };
    return op->vt->decide(op->state, &view);
}

static void backtrack(sm_operator *op, int32_t n)
{
    op->vt->on_backtrack(op->state, n);
}

static void reset(sm_operator *op)
{
    op->vt->reset(op->state);
}

static float just_below(float x)
{
    return nextafterf(x, -INFINITY);
}

static float just_above(float x)
{
    return nextafterf(x, INFINITY);
}

/* Asserts that `spec` is refused with a message containing every one of
 * the NULL-terminated strings that follow. */
static void expect_refused(const char *spec, ...)
{
    sm_error err = { .status = SM_OK, .message = "" };
    sm_operator *op = sm_operator_from_spec(spec, &err);
    if (op) {
        sm_operator_free(op);
        fail_msg("'%s' was accepted", spec ? spec : "(null)");
    }
    assert_int_equal(err.status, SM_ERR_INVALID_ARGUMENT);
    va_list args;
    va_start(args, spec);
    for (const char *part = va_arg(args, const char *); part; part = va_arg(args, const char *))
        if (!strstr(err.message, part))
            fail_msg("message for '%s' lacks '%s': %s", spec ? spec : "(null)", part,
                     err.message);
    va_end(args);
}

#define ALL_NAMES                                                                          \
    "probability_threshold", "entropy_threshold", "probability_margin", "probability_drop", \
        "probability_trend", "repetition", "ngram_overlap", "logit_threshold", "never"

/* ------------------------------------------------------------------ */
/* Names, help, construction                                           */
/* ------------------------------------------------------------------ */

static void test_names_are_the_originals_plus_never(void **state)
{
    (void)state;
    const char *expected[] = { ALL_NAMES };
    const char *const *names = sm_operator_names();
    size_t n = 0;
    while (names[n])
        n++;
    assert_int_equal(n, sizeof expected / sizeof expected[0]);
    for (size_t i = 0; i < n; i++) {
        assert_string_equal(names[i], expected[i]);
        sm_operator *op = make(names[i]);
        assert_string_equal(op->vt->name, names[i]);
        assert_string_equal(op->description, "");
        sm_operator_free(op);
    }
}

static void test_help_lists_every_operator_key_and_default(void **state)
{
    (void)state;
    const char *help = sm_operator_help();
    const char *expected[] = {
        ALL_NAMES,
        "min_probability=0.05", "max_entropy=0.2", "backtrack_count=2", "scope=topk",
        "min_margin=0.05", "max_drop=0.8", "window_size=10", "drop_threshold=0.5",
        "max_repetitions=3", "ngram_size=4", "min_logit=-20", "backtrack_count=1",
    };
    for (size_t i = 0; i < sizeof expected / sizeof expected[0]; i++)
        if (!strstr(help, expected[i]))
            fail_msg("help lacks '%s'", expected[i]);
}

static int user_decide_calls;
static int user_frees;

static int32_t user_decide(void *state, const sm_token_view *view)
{
    (void)view;
    user_decide_calls++;
    return *(int32_t *)state;
}

static void user_free(void *state)
{
    user_frees++;
    free(state);
}

static void test_user_operator_is_wrapped_and_its_state_freed(void **state)
{
    (void)state;
    static const sm_operator_vtable vt = { .name = "always_two", .decide = user_decide,
                                           .free_state = user_free };
    static const sm_operator_vtable nameless = { .decide = user_decide };
    static const sm_operator_vtable no_decide = { .name = "x" };
    assert_null(sm_operator_new(NULL, NULL));
    assert_null(sm_operator_new(&nameless, NULL));
    assert_null(sm_operator_new(&no_decide, NULL));

    int32_t *count = malloc(sizeof *count);
    assert_non_null(count);
    *count = 2;
    user_decide_calls = 0;
    user_frees = 0;
    sm_operator *op = sm_operator_new(&vt, count);
    assert_non_null(op);
    assert_ptr_equal(op->vt, &vt);
    assert_ptr_equal(op->state, count);
    assert_string_equal(op->description, "");
    assert_int_equal(show(op, 1), 2);
    assert_int_equal(user_decide_calls, 1);
    sm_operator_free(op);
    assert_int_equal(user_frees, 1);
    sm_operator_free(NULL);
}

/* ------------------------------------------------------------------ */
/* probability_threshold                                               */
/* ------------------------------------------------------------------ */

static void test_probability_threshold_fires_strictly_below(void **state)
{
    (void)state;
    sm_operator *op = make("probability_threshold");
    assert_int_equal(show_prob(op, 0.05f), 0);
    assert_string_equal(op->description, "");
    assert_int_equal(show_prob(op, 0.0499f), 1);
    assert_non_null(strstr(op->description, "min_probability 0.05"));
    assert_int_equal(show_prob(op, 0.9f), 0);
    sm_operator_free(op);

    op = make("probability_threshold:min_probability=0.25,backtrack_count=3");
    assert_int_equal(show_prob(op, 0.25f), 0);
    assert_int_equal(show_prob(op, just_below(0.25f)), 3);
    sm_operator_free(op);
}

/* ------------------------------------------------------------------ */
/* entropy_threshold                                                   */
/* ------------------------------------------------------------------ */

static void test_entropy_threshold_zero_edge(void **state)
{
    (void)state;
    sm_operator *op = make("entropy_threshold:max_entropy=0");
    const sm_candidate certain[] = { { 1, 0.0f, 0.9f } };
    const sm_candidate almost[] = { { 1, 0.0f, 0.9f }, { 2, -9.0f, 0.0001f } };
    /* One candidate renormalises to p = 1: entropy exactly 0, not > 0. */
    assert_int_equal(show_top(op, certain, 1, NULL), 0);
    assert_int_equal(show_top(op, almost, 2, NULL), 2);
    assert_non_null(strstr(op->description, "max_entropy 0"));
    sm_operator_free(op);
}

static void test_entropy_threshold_renormalises_the_top_view(void **state)
{
    (void)state;
    /* Renormalised, {0.4, 0.4} is uniform over two: ln 2 = 0.693147 nats.
     * Unnormalised it would be -0.8 ln 0.4 = 0.733. */
    const sm_candidate top[] = { { 1, 0.0f, 0.4f }, { 2, 0.0f, 0.4f } };
    sm_operator *above = make("entropy_threshold:max_entropy=0.6931");
    sm_operator *below = make("entropy_threshold:max_entropy=0.6932");
    sm_operator *raw_would_fire = make("entropy_threshold:max_entropy=0.72");
    assert_int_equal(show_top(above, top, 2, NULL), 2);
    assert_int_equal(show_top(below, top, 2, NULL), 0);
    assert_int_equal(show_top(raw_would_fire, top, 2, NULL), 0);
    sm_operator_free(above);
    sm_operator_free(below);
    sm_operator_free(raw_would_fire);

    sm_operator *by_default = make("entropy_threshold");
    const sm_candidate confident[] = { { 1, 0.0f, 0.99f }, { 2, 0.0f, 0.005f } };
    assert_int_equal(show_top(by_default, confident, 2, NULL), 0); /* 0.06 nats */
    assert_int_equal(show_top(by_default, top, 2, NULL), 2);
    sm_operator_free(by_default);
}

static void test_entropy_threshold_full_scope_uses_the_whole_vocabulary(void **state)
{
    (void)state;
    sm_operator *op = make("entropy_threshold:max_entropy=0.5,scope=full,backtrack_count=1");
    const sm_candidate uniform_top[] = { { 1, 0.0f, 0.4f }, { 2, 0.0f, 0.4f } };
    sm_signals signals = { .entropy = 0.5f };
    assert_int_equal(show_top(op, uniform_top, 2, &signals), 0);
    signals.entropy = just_above(0.5f);
    assert_int_equal(show_top(op, uniform_top, 2, &signals), 1);
    assert_non_null(strstr(op->description, "full entropy"));
    sm_operator_free(op);

    /* Without signals it computes the entropy from the logits: ln 2 here. */
    const float logits[] = { 3.0f, 3.0f };
    sm_token_view view = { .token = 0, .prob = 0.5f, .logits = logits, .n_vocab = 2 };
    sm_operator *high = make("entropy_threshold:max_entropy=0.6931,scope=full");
    sm_operator *low = make("entropy_threshold:max_entropy=0.6932,scope=full");
    assert_int_equal(high->vt->decide(high->state, &view), 2);
    assert_int_equal(low->vt->decide(low->state, &view), 0);
    sm_operator_free(high);
    sm_operator_free(low);
}

/* ------------------------------------------------------------------ */
/* probability_margin                                                  */
/* ------------------------------------------------------------------ */

static void test_probability_margin_edge(void **state)
{
    (void)state;
    sm_operator *op = make("probability_margin:min_margin=0.25,backtrack_count=2");
    const sm_candidate at_edge[] = { { 1, 0.0f, 0.75f }, { 2, 0.0f, 0.5f } };
    const sm_candidate inside[] = { { 1, 0.0f, 0.75f }, { 2, 0.0f, just_above(0.5f) } };
    assert_int_equal(show_top(op, at_edge, 2, NULL), 0);
    assert_int_equal(show_top(op, inside, 2, NULL), 2);
    assert_non_null(strstr(op->description, "min_margin 0.25"));
    sm_operator_free(op);

    op = make("probability_margin");
    const sm_candidate close[] = { { 1, 0.0f, 0.5f }, { 2, 0.0f, 0.46f } };
    const sm_candidate clear[] = { { 1, 0.0f, 0.5f }, { 2, 0.0f, 0.4f } };
    assert_int_equal(show_top(op, close, 2, NULL), 1);
    assert_int_equal(show_top(op, clear, 2, NULL), 0);
    /* With one candidate it falls back to the signals' top two. */
    sm_signals signals = { .p_top1 = 0.5f, .p_top2 = 0.49f };
    assert_int_equal(show_top(op, clear, 1, &signals), 1);
    sm_operator_free(op);
}

/* ------------------------------------------------------------------ */
/* probability_drop                                                    */
/* ------------------------------------------------------------------ */

static void test_probability_drop_edge(void **state)
{
    (void)state;
    sm_operator *op = make("probability_drop:max_drop=0.75");
    assert_int_equal(show_prob(op, 0.0001f), 0); /* nothing before it */
    backtrack(op, 1);
    assert_int_equal(show_prob(op, 0.5f), 0);
    assert_int_equal(show_prob(op, 0.125f), 0); /* 0.5 * (1 - 0.75) */
    backtrack(op, 1);
    assert_int_equal(show_prob(op, just_below(0.125f)), 1);
    assert_non_null(strstr(op->description, "max_drop 0.75"));
    sm_operator_free(op);

    op = make("probability_drop");
    assert_int_equal(show_prob(op, 0.5f), 0);
    assert_int_equal(show_prob(op, 0.09f), 1); /* < 0.5 * 0.2 */
    sm_operator_free(op);
}

static void test_probability_drop_restores_the_previous_probability(void **state)
{
    (void)state;
    sm_operator *op = make("probability_drop:max_drop=0.75");
    assert_int_equal(show_prob(op, 0.5f), 0);
    assert_int_equal(show_prob(op, 0.01f), 1);
    backtrack(op, 1);
    /* The previous p is 0.5 again, not the removed 0.01 (limit 0.0025). */
    assert_int_equal(show_prob(op, 0.1f), 1);
    backtrack(op, 1);

    assert_int_equal(show_prob(op, 0.4f), 0);
    assert_int_equal(show_prob(op, 0.3f), 0);
    backtrack(op, 2);
    /* Back to the 0.5: limit 0.125 (0.3 would give 0.075). */
    assert_int_equal(show_prob(op, 0.1f), 1);
    sm_operator_free(op);
}

/* ------------------------------------------------------------------ */
/* probability_trend                                                   */
/* ------------------------------------------------------------------ */

static void test_probability_trend_edge_and_warm_up(void **state)
{
    (void)state;
    sm_operator *op = make("probability_trend:window_size=4,drop_threshold=0.5,backtrack_count=2");
    assert_int_equal(show_prob(op, 0.5f), 0);
    assert_int_equal(show_prob(op, 0.01f), 0); /* one value held, two needed */
    backtrack(op, 1);
    assert_int_equal(show_prob(op, 0.5f), 0);
    assert_int_equal(show_prob(op, 0.25f), 0); /* mean 0.5 * 0.5 */
    backtrack(op, 1);
    assert_int_equal(show_prob(op, just_below(0.25f)), 2);
    assert_non_null(strstr(op->description, "drop_threshold 0.5"));
    sm_operator_free(op);

    /* The default window of 10 waits for 5 values. */
    op = make("probability_trend");
    for (int i = 0; i < 4; i++)
        assert_int_equal(show_prob(op, 0.9f), 0);
    assert_int_equal(show_prob(op, 0.01f), 0);
    assert_int_equal(show_prob(op, 0.01f), 1);
    sm_operator_free(op);
}

static void test_probability_trend_uses_only_the_window(void **state)
{
    (void)state;
    sm_operator *op = make("probability_trend:window_size=4");
    assert_int_equal(show_prob(op, 1.0f), 0);
    assert_int_equal(show_prob(op, 1.0f), 0);
    for (int i = 0; i < 4; i++)
        assert_int_equal(show_prob(op, 0.5f), 0);
    /* The last four average 0.5: limit 0.25; all six would give 0.333. */
    assert_int_equal(show_prob(op, 0.3f), 0);
    sm_operator_free(op);
}

static void test_probability_trend_restores_its_window(void **state)
{
    (void)state;
    sm_operator *op = make("probability_trend:window_size=4");
    for (int i = 0; i < 4; i++)
        assert_int_equal(show_prob(op, 0.5f), 0);
    assert_int_equal(show_prob(op, 1.0f), 0);
    assert_int_equal(show_prob(op, 1.0f), 0);
    assert_int_equal(show_prob(op, 0.3f), 1); /* window 0.5 0.5 1 1: limit 0.375 */
    backtrack(op, 3);
    /* The window is 0.5 x 4 again: limit 0.25. */
    assert_int_equal(show_prob(op, 0.3f), 0);
    sm_operator_free(op);
}

/* ------------------------------------------------------------------ */
/* repetition                                                          */
/* ------------------------------------------------------------------ */

static void test_repetition_returns_the_run_length(void **state)
{
    (void)state;
    sm_operator *op = make("repetition");
    assert_int_equal(show(op, 9), 0);
    for (int i = 0; i < 3; i++)
        assert_int_equal(show(op, 5), 0);
    assert_int_equal(show(op, 5), 4); /* the run, not the 9 before it */
    assert_non_null(strstr(op->description, "max_repetitions 3"));
    backtrack(op, 4);
    assert_int_equal(show(op, 5), 0); /* a fresh run of one after the 9 */
    sm_operator_free(op);

    op = make("repetition:max_repetitions=1");
    assert_int_equal(show(op, 5), 0);
    assert_int_equal(show(op, 5), 2);
    sm_operator_free(op);
}

static void test_repetition_rolls_back_its_run(void **state)
{
    (void)state;
    sm_operator *op = make("repetition");
    for (int i = 0; i < 3; i++)
        assert_int_equal(show(op, 5), 0);
    backtrack(op, 1);
    assert_int_equal(show(op, 5), 0); /* the run is 3 again, not 4 */
    assert_int_equal(show(op, 5), 4);
    backtrack(op, 1);
    assert_int_equal(show(op, 6), 0);
    assert_int_equal(show(op, 5), 0);
    backtrack(op, 2);
    assert_int_equal(show(op, 5), 4); /* back to 5 5 5 */
    sm_operator_free(op);
}

/* ------------------------------------------------------------------ */
/* ngram_overlap                                                       */
/* ------------------------------------------------------------------ */

static void test_ngram_overlap_fires_on_a_repeated_ngram(void **state)
{
    (void)state;
    sm_operator *op = make("ngram_overlap");
    const sm_token text[] = { 1, 2, 3, 4, 9, 1, 2, 3 };
    for (size_t i = 0; i < sizeof text / sizeof text[0]; i++)
        assert_int_equal(show(op, text[i]), 0);
    assert_int_equal(show(op, 4), 1);
    assert_non_null(strstr(op->description, "4-gram"));
    sm_operator_free(op);

    op = make("ngram_overlap:ngram_size=2,backtrack_count=3");
    assert_int_equal(show(op, 1), 0);
    assert_int_equal(show(op, 2), 0);
    assert_int_equal(show(op, 2), 0);
    assert_int_equal(show(op, 2), 3); /* (2 2) again */
    sm_operator_free(op);
}

static void test_ngram_overlap_forgets_only_removed_ngrams(void **state)
{
    (void)state;
    sm_operator *op = make("ngram_overlap:ngram_size=3");
    const sm_token first[] = { 1, 2, 3, 4, 5 };
    for (size_t i = 0; i < 5; i++)
        assert_int_equal(show(op, first[i]), 0);
    backtrack(op, 2); /* (2 3 4) and (3 4 5) are gone; (1 2 3) stays */
    assert_int_equal(show(op, 4), 0);
    assert_int_equal(show(op, 5), 0);
    assert_int_equal(show(op, 1), 0);
    assert_int_equal(show(op, 2), 0);
    assert_int_equal(show(op, 3), 1); /* (1 2 3) is still remembered */
    backtrack(op, 1);
    assert_int_equal(show(op, 3), 1); /* and still after rejecting its repeat */
    sm_operator_free(op);
}

static void test_ngram_overlap_counts_kept_repeats(void **state)
{
    (void)state;
    sm_operator *op = make("ngram_overlap:ngram_size=2");
    /* The session may keep a token the operator rejected (per-position cap):
     * each occurrence is counted, and removing one keeps the others. */
    const sm_token text[] = { 1, 2, 1, 2, 1, 2 };
    const int32_t fired[] = { 0, 0, 0, 1, 1, 1 };
    for (size_t i = 0; i < 6; i++)
        assert_int_equal(show(op, text[i]), fired[i]);
    backtrack(op, 4); /* back to 1 2 */
    assert_int_equal(show(op, 1), 0); /* (2 1) is gone */
    assert_int_equal(show(op, 2), 1); /* (1 2) is not */
    sm_operator_free(op);
}

/* The newest n-gram occurs earlier in tokens[0..n-1]. */
static bool reference_ngram_repeat(const sm_token *tokens, int n, int size)
{
    if (n < size)
        return false;
    const sm_token *newest = &tokens[n - size];
    for (int start = 0; start + size < n; start++)
        if (memcmp(&tokens[start], newest, (size_t)size * sizeof *tokens) == 0)
            return true;
    return false;
}

static int reference_run(const sm_token *tokens, int n)
{
    int run = 1;
    while (run < n && tokens[n - 1 - run] == tokens[n - 1])
        run++;
    return run;
}

/* A long random walk of shows and backtracks against a from-scratch
 * reference; it also grows the n-gram table past its first size. */
static void test_random_walk_matches_a_reference(void **state)
{
    (void)state;
    enum { STEPS = 8000, MAX_TOKENS = STEPS };
    sm_token *kept = malloc(MAX_TOKENS * sizeof *kept);
    assert_non_null(kept);
    sm_operator *ngrams = make("ngram_overlap:ngram_size=3");
    sm_operator *repeats = make("repetition:max_repetitions=2");
    int n = 0, ngram_fires = 0, repeat_fires = 0, longest = 0;
    unsigned seed = 12345;
    for (int step = 0; step < STEPS; step++) {
        seed = seed * 1103515245u + 12345u;
        unsigned r = (seed >> 16) & 0x7fff;
        if (r % 7 == 0 && n > 0) {
            int k = 1 + (int)(r / 7 % 5);
            if (k > n)
                k = n;
            backtrack(ngrams, k);
            backtrack(repeats, k);
            n -= k;
            continue;
        }
        /* Mostly an alphabet of eight, which repeats often; the rest keeps
         * adding new n-grams. */
        sm_token token = (r % 3 != 0) ? (sm_token)(r >> 12) : (sm_token)(r % 3000);
        kept[n++] = token;
        bool repeat = reference_ngram_repeat(kept, n, 3);
        int run = reference_run(kept, n);
        assert_int_equal(show(ngrams, token), repeat ? 1 : 0);
        assert_int_equal(show(repeats, token), run > 2 ? run : 0);
        ngram_fires += repeat;
        repeat_fires += run > 2;
        longest = n > longest ? n : longest;
    }
    /* The walk must have exercised both answers and a long history. */
    print_message("n-gram repeats %d, runs %d, longest history %d\n", ngram_fires, repeat_fires,
                  longest);
    assert_true(ngram_fires > 100);
    assert_true(repeat_fires > 20);
    assert_true(longest > 2000);
    sm_operator_free(ngrams);
    sm_operator_free(repeats);
    free(kept);
}

/* ------------------------------------------------------------------ */
/* logit_threshold, never                                              */
/* ------------------------------------------------------------------ */

static void test_logit_threshold_edge(void **state)
{
    (void)state;
    sm_operator *op = make("logit_threshold");
    assert_int_equal(show_token(op, 1, 0.5f, -20.0f), 0);
    assert_int_equal(show_token(op, 1, 0.5f, just_below(-20.0f)), 1);
    assert_non_null(strstr(op->description, "min_logit -20"));
    sm_operator_free(op);

    op = make("logit_threshold:min_logit=2.5,backtrack_count=4");
    assert_int_equal(show_token(op, 1, 0.5f, 2.5f), 0);
    assert_int_equal(show_token(op, 1, 0.5f, just_below(2.5f)), 4);
    sm_operator_free(op);
}

static void test_never_never_fires(void **state)
{
    (void)state;
    sm_operator *op = make("never");
    for (int i = 0; i < 50; i++)
        assert_int_equal(show_token(op, 3, 0.0f, -1e30f), 0);
    backtrack(op, 100);
    reset(op);
    assert_int_equal(show(op, 3), 0);
    sm_operator_free(op);
}

/* ------------------------------------------------------------------ */
/* reset                                                               */
/* ------------------------------------------------------------------ */

static void test_reset_clears_all_state(void **state)
{
    (void)state;
    sm_operator *repeats = make("repetition");
    for (int i = 0; i < 4; i++)
        show(repeats, 5);
    assert_string_not_equal(repeats->description, "");
    reset(repeats);
    assert_string_equal(repeats->description, "");
    for (int i = 0; i < 3; i++)
        assert_int_equal(show(repeats, 5), 0);
    assert_int_equal(show(repeats, 5), 4);
    sm_operator_free(repeats);

    sm_operator *ngrams = make("ngram_overlap:ngram_size=2");
    show(ngrams, 1);
    show(ngrams, 2);
    reset(ngrams);
    assert_int_equal(show(ngrams, 1), 0);
    assert_int_equal(show(ngrams, 2), 0);
    assert_int_equal(show(ngrams, 1), 0);
    assert_int_equal(show(ngrams, 2), 1);
    sm_operator_free(ngrams);

    sm_operator *drop = make("probability_drop");
    show_prob(drop, 0.9f);
    reset(drop);
    assert_int_equal(show_prob(drop, 0.01f), 0);
    sm_operator_free(drop);

    sm_operator *trend = make("probability_trend:window_size=2");
    show_prob(trend, 0.9f);
    reset(trend);
    assert_int_equal(show_prob(trend, 0.01f), 0);
    sm_operator_free(trend);
}

static void test_backtrack_past_the_history_is_clamped(void **state)
{
    (void)state;
    sm_operator *op = make("repetition:max_repetitions=1");
    show(op, 5);
    backtrack(op, 10);
    backtrack(op, 0);
    backtrack(op, -3);
    assert_int_equal(show(op, 5), 0);
    assert_int_equal(show(op, 5), 2);
    sm_operator_free(op);
}

/* ------------------------------------------------------------------ */
/* Spec parsing                                                        */
/* ------------------------------------------------------------------ */

/* ------------------------------------------------------------------ */
/* backtracking-llm's input and comparisons                            */
/* ------------------------------------------------------------------ */

/* Its formulas, written out: z = logits / T (when T > 0), the k largest,
 * softmax over them; the chosen token's entry of both. */
static void reference_view(const float *logits, int32_t n, int32_t k, float t, sm_token chosen,
                           double *top_p, int32_t *top_id, double *chosen_p, double *chosen_logit)
{
    double *z = malloc(sizeof *z * (size_t)n);
    bool *taken = calloc((size_t)n, 1);
    for (int32_t i = 0; i < n; i++)
        z[i] = t > 0 ? (double)(logits[i] / t) : (double)logits[i];
    for (int32_t j = 0; j < k; j++) { /* selection, ties to the lower id */
        int32_t best = -1;
        for (int32_t i = 0; i < n; i++)
            if (!taken[i] && (best < 0 || z[i] > z[best]))
                best = i;
        taken[best] = true;
        top_id[j] = best;
    }
    double sum = 0;
    for (int32_t j = 0; j < k; j++)
        sum += exp(z[top_id[j]] - z[top_id[0]]);
    *chosen_p = 0;
    for (int32_t j = 0; j < k; j++) {
        top_p[j] = exp(z[top_id[j]] - z[top_id[0]]) / sum;
        if (top_id[j] == chosen)
            *chosen_p = top_p[j];
    }
    *chosen_logit = z[chosen];
    free(z);
    free(taken);
}

/* On synthetic distributions (flat, peaked, random; T 0, 0.5, 1, 1.7) the
 * view equals the formulas; and the example from the issue: on a flat
 * 512-token distribution a full-vocabulary p and the top-50 p differ by
 * an order of magnitude, so the same min_probability fires differently. */
static void test_original_input_is_backtracking_llms_top_k_at_temperature(void **state)
{
    (void)state;
    enum { N = 512, K = 50 };
    static float logits[N];
    sm_candidate top[K];
    srand(7);
    const float temps[] = { 0.0f, 0.5f, 1.0f, 1.7f };
    for (int shape = 0; shape < 3; shape++) {
        for (int32_t i = 0; i < N; i++)
            logits[i] = shape == 0 ? 0.01f * (float)(i % 3)
                        : shape == 1 ? (i == 17 ? 9.0f : -1.0f + 0.001f * (float)i)
                                     : (float)rand() / (float)RAND_MAX * 8.0f - 4.0f;
        for (size_t ti = 0; ti < sizeof temps / sizeof *temps; ti++) {
            for (sm_token chosen = 0; chosen < N; chosen += 37) {
                sm_token_view view = { .token = chosen, .logits = logits, .n_vocab = N };
                sm_operator_view_original(&view, K, temps[ti], top);
                double want_p[K], chosen_p, chosen_logit;
                int32_t want_id[K];
                reference_view(logits, N, K, temps[ti], chosen, want_p, want_id, &chosen_p, &chosen_logit);
                assert_int_equal(view.n_top, K);
                assert_ptr_equal(view.top, top);
                for (int j = 0; j < K; j++) {
                    assert_int_equal(top[j].token, want_id[j]);
                    assert_true(fabs(top[j].prob - want_p[j]) < 1e-6);
                }
                assert_true(fabs(view.prob - chosen_p) < 1e-6);
                assert_true(fabs(view.logit - chosen_logit) < 1e-5);
            }
        }
    }
    /* a flat distribution: 1/512 of the mass each in full, 1/50 in the view */
    for (int32_t i = 0; i < N; i++)
        logits[i] = 0.0f;
    sm_token_view view = { .token = 3, .logits = logits, .n_vocab = N, .prob = 1.0f / N };
    sm_operator *op = make("probability_threshold:min_probability=0.01");
    assert_int_equal(op->vt->decide(op->state, &view), 1); /* p = 0.00195 < 0.01 */
    sm_operator_view_original(&view, K, 1.0f, top);
    assert_true(fabs(view.prob - 1.0 / K) < 1e-7);
    reset(op);
    assert_int_equal(op->vt->decide(op->state, &view), 0); /* p = 0.02 */
    sm_operator_free(op);
    /* top-k entropy: the view's own entropy (ln 50 when flat) */
    op = make("entropy_threshold:max_entropy=3.9");
    assert_int_equal(op->vt->decide(op->state, &view), 2); /* ln 50 = 3.912; its count is 2 */
    sm_operator_free(op);
}

/* compare=text: tokens with different ids and the same text are the same
 * token to repetition and ngram_overlap (backtracking-llm compared the
 * decoded strings); compare=id tells them apart. */
static void test_text_comparison_joins_ids_with_the_same_text(void **state)
{
    (void)state;
    sm_operator *by_text = make("repetition:max_repetitions=2,compare=text");
    sm_operator *by_id = make("repetition:max_repetitions=2");
    const sm_token ids[] = { 5, 905, 77 }; /* "ab" as 5, as 905, then "ab" as 77 */
    int32_t fired_text = 0, fired_id = 0;
    for (int i = 0; i < 3; i++) {
        sm_token_view view = { .token = ids[i], .piece = "ab", .prob = 0.5f };
        fired_text = by_text->vt->decide(by_text->state, &view);
        fired_id = by_id->vt->decide(by_id->state, &view);
    }
    assert_int_equal(fired_text, 3); /* the run of three "ab" */
    assert_int_equal(fired_id, 0);
    /* a rewind forgets the text run exactly */
    backtrack(by_text, 1);
    sm_token_view other = { .token = 5, .piece = "abc", .prob = 0.5f };
    assert_int_equal(by_text->vt->decide(by_text->state, &other), 0);
    sm_operator_free(by_text);
    sm_operator_free(by_id);

    sm_operator *ngrams = make("ngram_overlap:ngram_size=2,compare=text");
    const char *pieces[] = { "a", "b", "c", "a", "b" };
    const sm_token ngram_ids[] = { 1, 2, 3, 101, 102 }; /* the second "a b" has other ids */
    int32_t last = 0;
    for (int i = 0; i < 5; i++) {
        sm_token_view view = { .token = ngram_ids[i], .piece = pieces[i], .prob = 0.5f };
        last = ngrams->vt->decide(ngrams->state, &view);
    }
    assert_int_equal(last, 1);
    sm_operator_free(ngrams);
}

static void test_spec_accepts_every_key(void **state)
{
    (void)state;
    const char *specs[] = {
        "probability_threshold:min_probability=1e-9,backtrack_count=5",
        "probability_threshold:min_probability=0.999",
        "entropy_threshold:scope=topk,max_entropy=1.5",
        "probability_margin:min_margin=1e-3",
        "probability_drop:max_drop=1",
        "probability_trend:window_size=2,drop_threshold=0.9",
        "repetition:max_repetitions=+2,compare=text",
        "ngram_overlap:ngram_size=2,compare=id",
        "logit_threshold:min_logit=-1e3",
    };
    for (size_t i = 0; i < sizeof specs / sizeof specs[0]; i++)
        sm_operator_free(make(specs[i]));
}

static void test_spec_rejects_unknown_names_listing_all(void **state)
{
    (void)state;
    expect_refused("nope", "'nope'", ALL_NAMES, NULL);
    expect_refused("Repetition", "'Repetition'", ALL_NAMES, NULL);
    expect_refused("", ALL_NAMES, NULL);
    expect_refused(NULL, ALL_NAMES, NULL);
    expect_refused(":min_probability=0.1", ALL_NAMES, NULL);
    assert_null(sm_operator_from_spec("nope", NULL)); /* no error struct: no crash */
}

static void test_spec_rejects_unknown_keys_listing_valid_ones(void **state)
{
    (void)state;
    expect_refused("repetition:max_reps=2", "'max_reps'", "max_repetitions", NULL);
    expect_refused("probability_trend:window=3", "'window'", "window_size", "drop_threshold",
                   "backtrack_count", NULL);
    expect_refused("entropy_threshold:backtrack_count=1,bogus=1", "'bogus'", "max_entropy",
                   "scope", NULL);
    expect_refused("never:backtrack_count=1", "'never'", "no keys", NULL);
}

static void test_spec_rejects_malformed_lists(void **state)
{
    (void)state;
    expect_refused("repetition:", "key=value", "max_repetitions", NULL);
    expect_refused("repetition:max_repetitions", "key=value", NULL);
    expect_refused("repetition:max_repetitions=", "key=value", NULL);
    expect_refused("repetition:=3", "key=value", NULL);
    expect_refused("repetition:max_repetitions=2,", "key=value", NULL);
    expect_refused("repetition:max_repetitions=2,max_repetitions=3", "max_repetitions",
                   "twice", NULL);
}

static void test_spec_rejects_bad_values_naming_key_and_range(void **state)
{
    (void)state;
    expect_refused("probability_threshold:min_probability=1.5", "'min_probability'", "(0, 1)",
                   "1.5", NULL);
    expect_refused("probability_threshold:min_probability=-0.1", "'min_probability'", "(0, 1)",
                   NULL);
    /* backtracking-llm's bounds: 0 < probabilities < 1, windows and
     * n-grams of at least 2 */
    expect_refused("probability_threshold:min_probability=0", "'min_probability'", "(0, 1)", NULL);
    expect_refused("probability_threshold:min_probability=1", "'min_probability'", "(0, 1)", NULL);
    expect_refused("probability_trend:drop_threshold=0", "'drop_threshold'", "(0, 1)", NULL);
    expect_refused("probability_trend:drop_threshold=1", "'drop_threshold'", "(0, 1)", NULL);
    expect_refused("probability_trend:window_size=1", "'window_size'", ">= 2", NULL);
    expect_refused("ngram_overlap:ngram_size=1", "'ngram_size'", ">= 2", NULL);
    expect_refused("repetition:compare=bytes", "'compare'", "'id' or 'text'", NULL);
    expect_refused("probability_threshold:min_probability=0.1x", "'min_probability'", "0.1x",
                   NULL);
    expect_refused("probability_threshold:min_probability= 0.1", "'min_probability'", NULL);
    expect_refused("probability_threshold:min_probability=nan", "'min_probability'", NULL);
    expect_refused("probability_threshold:backtrack_count=-1", "'backtrack_count'", ">= 1",
                   NULL);
    expect_refused("probability_threshold:backtrack_count=0", "'backtrack_count'", ">= 1", NULL);
    expect_refused("probability_threshold:backtrack_count=1.5", "'backtrack_count'", "integer",
                   NULL);
    expect_refused("probability_threshold:backtrack_count=99999999999", "'backtrack_count'",
                   NULL);
    expect_refused("entropy_threshold:max_entropy=-0.1", "'max_entropy'", ">= 0", NULL);
    expect_refused("entropy_threshold:scope=all", "'scope'", "topk", "full", NULL);
    expect_refused("probability_margin:min_margin=2", "'min_margin'", "[0, 1]", NULL);
    expect_refused("probability_drop:max_drop=1.01", "'max_drop'", "[0, 1]", NULL);
    expect_refused("probability_trend:window_size=0", "'window_size'", ">= 2", NULL);
    expect_refused("probability_trend:drop_threshold=3", "'drop_threshold'", "(0, 1)", NULL);
    expect_refused("repetition:max_repetitions=0", "'max_repetitions'", ">= 1", NULL);
    expect_refused("ngram_overlap:ngram_size=0", "'ngram_size'", ">= 2", NULL);
    expect_refused("logit_threshold:min_logit=inf", "'min_logit'", "finite", NULL);
    expect_refused("logit_threshold:min_logit=1e300", "'min_logit'", "finite", NULL);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_names_are_the_originals_plus_never),
        cmocka_unit_test(test_help_lists_every_operator_key_and_default),
        cmocka_unit_test(test_user_operator_is_wrapped_and_its_state_freed),
        cmocka_unit_test(test_probability_threshold_fires_strictly_below),
        cmocka_unit_test(test_entropy_threshold_zero_edge),
        cmocka_unit_test(test_entropy_threshold_renormalises_the_top_view),
        cmocka_unit_test(test_entropy_threshold_full_scope_uses_the_whole_vocabulary),
        cmocka_unit_test(test_probability_margin_edge),
        cmocka_unit_test(test_probability_drop_edge),
        cmocka_unit_test(test_probability_drop_restores_the_previous_probability),
        cmocka_unit_test(test_probability_trend_edge_and_warm_up),
        cmocka_unit_test(test_probability_trend_uses_only_the_window),
        cmocka_unit_test(test_probability_trend_restores_its_window),
        cmocka_unit_test(test_repetition_returns_the_run_length),
        cmocka_unit_test(test_repetition_rolls_back_its_run),
        cmocka_unit_test(test_ngram_overlap_fires_on_a_repeated_ngram),
        cmocka_unit_test(test_ngram_overlap_forgets_only_removed_ngrams),
        cmocka_unit_test(test_ngram_overlap_counts_kept_repeats),
        cmocka_unit_test(test_random_walk_matches_a_reference),
        cmocka_unit_test(test_logit_threshold_edge),
        cmocka_unit_test(test_never_never_fires),
        cmocka_unit_test(test_reset_clears_all_state),
        cmocka_unit_test(test_backtrack_past_the_history_is_clamped),
        cmocka_unit_test(test_original_input_is_backtracking_llms_top_k_at_temperature),
        cmocka_unit_test(test_text_comparison_joins_ids_with_the_same_text),
        cmocka_unit_test(test_spec_accepts_every_key),
        cmocka_unit_test(test_spec_rejects_unknown_names_listing_all),
        cmocka_unit_test(test_spec_rejects_unknown_keys_listing_valid_ones),
        cmocka_unit_test(test_spec_rejects_malformed_lists),
        cmocka_unit_test(test_spec_rejects_bad_values_naming_key_and_range),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
