/* Backtracking operators on a real model: greedy stories260K repeats itself
 * on this prompt, and the operators keep the repetition out of the kept
 * tokens; an operator that always fires still terminates. */
#include "testutil.h"

#include <string.h>

/* Greedy stories260K turns this into "00000000 pictures. ..." and later
 * repeats whole phrases. */
static const char *const LOOPING_PROMPT = "1 1 1 1 1 1 1";
enum { N_PREDICT = 100 };

typedef struct fixture {
    sm_model *model;
    sm_session *session;
} fixture;

static int setup(void **state)
{
    static fixture f;
    f.model = tu_load_model("stories260K.gguf");
    sm_session_params sp = sm_session_default_params();
    sm_error err = { 0 };
    f.session = sm_session_new(f.model, &sp, &err);
    if (!f.session)
        fail_msg("cannot create a session: %s", err.message);
    *state = &f;
    return 0;
}

static int teardown(void **state)
{
    fixture *f = *state;
    sm_session_free(f->session);
    sm_model_free(f->model);
    return 0;
}

static void generate(fixture *f, const sm_gen_params *gp, sm_result *result)
{
    assert_int_equal(sm_session_clear(f->session), SM_OK);
    sm_status st = sm_session_generate(f->session, LOOPING_PROMPT, gp, result);
    if (st != SM_OK)
        fail_msg("generation failed: %s", sm_session_last_error(f->session));
}

static void generate_with(fixture *f, sm_operator *op, sm_result *result)
{
    sm_gen_params gp = tu_greedy_params(N_PREDICT);
    gp.backtrack.operators = &op;
    gp.backtrack.n_operators = 1;
    generate(f, &gp, result);
}

static int32_t longest_run(const sm_token *tokens, int32_t n)
{
    int32_t longest = 0, run = 0;
    for (int32_t i = 0; i < n; i++) {
        run = (i > 0 && tokens[i] == tokens[i - 1]) ? run + 1 : 1;
        if (run > longest)
            longest = run;
    }
    return longest;
}

/* How many n-grams repeat one that started earlier. */
static int32_t repeated_ngrams(const sm_token *tokens, int32_t n, int32_t size)
{
    int32_t repeats = 0;
    for (int32_t start = 1; start + size <= n; start++)
        for (int32_t earlier = 0; earlier < start; earlier++)
            if (memcmp(&tokens[earlier], &tokens[start], (size_t)size * sizeof *tokens) == 0) {
                repeats++;
                break;
            }
    return repeats;
}

static const sm_event *first_backtrack(const sm_result *result)
{
    for (int32_t i = 0; i < result->n_events; i++)
        if (result->events[i].type == SM_EVENT_BACKTRACK)
            return &result->events[i];
    return NULL;
}

static sm_operator *make(const char *spec)
{
    sm_error err = { 0 };
    sm_operator *op = sm_operator_from_spec(spec, &err);
    if (!op)
        fail_msg("'%s' refused: %s", spec, err.message);
    return op;
}

static void test_plain_greedy_run_repeats_itself(void **state)
{
    sm_result result;
    sm_gen_params gp = tu_greedy_params(N_PREDICT);
    generate(*state, &gp, &result);
    assert_int_equal(result.stop_reason, SM_STOP_N_PREDICT);
    assert_int_equal(result.n_tokens, N_PREDICT);
    assert_true(longest_run(result.tokens, result.n_tokens) > 3);
    assert_true(repeated_ngrams(result.tokens, result.n_tokens, 4) > 0);
    sm_result_free(&result);
}

static void test_repetition_keeps_no_run_longer_than_its_maximum(void **state)
{
    sm_operator *op = make("repetition");
    sm_result result;
    generate_with(*state, op, &result);
    assert_int_equal(result.stop_reason, SM_STOP_N_PREDICT);
    assert_int_equal(result.n_tokens, N_PREDICT);
    assert_true(longest_run(result.tokens, result.n_tokens) <= 3);
    assert_true(result.n_backtracks > 0);

    const sm_event *e = first_backtrack(&result);
    assert_non_null(e);
    assert_string_equal(e->source, "repetition");
    assert_true(e->n_removed > 3);
    assert_non_null(strstr(e->description, "max_repetitions 3"));
    sm_result_free(&result);
    sm_operator_free(op);
}

static void test_ngram_overlap_keeps_no_repeated_4gram(void **state)
{
    sm_operator *op = make("ngram_overlap");
    sm_result result;
    generate_with(*state, op, &result);
    assert_int_equal(result.stop_reason, SM_STOP_N_PREDICT);
    assert_int_equal(result.n_tokens, N_PREDICT);
    assert_int_equal(repeated_ngrams(result.tokens, result.n_tokens, 4), 0);
    assert_true(result.n_backtracks > 0);

    const sm_event *e = first_backtrack(&result);
    assert_non_null(e);
    assert_string_equal(e->source, "ngram_overlap");
    assert_int_equal(e->n_removed, 1);
    assert_non_null(strstr(e->description, "4-gram"));
    sm_result_free(&result);
    sm_operator_free(op);
}

static int32_t always_remove_one(void *state, const sm_token_view *view)
{
    (void)state;
    (void)view;
    return 1;
}

static const sm_operator_vtable ALWAYS_VT = { .name = "always", .decide = always_remove_one };

static void test_always_firing_operator_stops_at_the_backtrack_limit(void **state)
{
    sm_operator *op = sm_operator_new(&ALWAYS_VT, NULL);
    assert_non_null(op);
    sm_gen_params gp = tu_greedy_params(N_PREDICT);
    gp.backtrack.operators = &op;
    gp.backtrack.n_operators = 1;
    sm_result result;
    generate(*state, &gp, &result);
    assert_int_equal(result.stop_reason, SM_STOP_BACKTRACK_LIMIT);
    assert_int_equal(result.n_backtracks, gp.backtrack.max_backtracks);
    assert_true(result.n_tokens < N_PREDICT);
    sm_result_free(&result);
    sm_operator_free(op);
}

static void test_always_firing_operator_is_capped_per_position(void **state)
{
    sm_operator *op = sm_operator_new(&ALWAYS_VT, NULL);
    assert_non_null(op);
    sm_gen_params gp = tu_greedy_params(10);
    gp.backtrack.operators = &op;
    gp.backtrack.n_operators = 1;
    gp.backtrack.max_backtracks = 1000;
    sm_result result;
    generate(*state, &gp, &result);
    assert_int_equal(result.stop_reason, SM_STOP_N_PREDICT);
    assert_int_equal(result.n_tokens, 10);
    assert_int_equal(result.n_backtracks, 10 * gp.backtrack.max_per_position);
    sm_result_free(&result);
    sm_operator_free(op);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_plain_greedy_run_repeats_itself),
        cmocka_unit_test(test_repetition_keeps_no_run_longer_than_its_maximum),
        cmocka_unit_test(test_ngram_overlap_keeps_no_repeated_4gram),
        cmocka_unit_test(test_always_firing_operator_stops_at_the_backtrack_limit),
        cmocka_unit_test(test_always_firing_operator_is_capped_per_position),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
