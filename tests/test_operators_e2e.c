/* Backtracking operators on a real model: greedy stories260K repeats itself
 * on this prompt, and the operators keep the repetition out of the kept
 * tokens; an operator that always fires still terminates. */
#include "testutil.h"

#include <math.h>
#include <stdlib.h>
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

/* Records what it is shown: the positions (a stack that on_backtrack pops)
 * and the view's shape. Fires once, with count 1, at fire_at. */
typedef struct recorder {
    int32_t stack[4 * N_PREDICT];
    int32_t n;
    int32_t fire_at;
    int32_t every;   /* shown every n-th only (0: every candidate) */
    bool fired;
    int32_t shown, bad_order, bad_held, bad_view;
} recorder;

static int32_t record_decide(void *state, const sm_token_view *view)
{
    recorder *r = state;
    r->shown++;
    /* after exact rollbacks, what it still holds all came before */
    if (r->n > 0 && r->stack[r->n - 1] >= view->position)
        r->bad_order++;
    /* ... and it holds exactly the candidates it was shown before this one */
    if (r->n != (r->every ? view->position / r->every : view->position))
        r->bad_held++;
    if (r->n < 4 * N_PREDICT)
        r->stack[r->n++] = view->position;
    double total = 0;
    bool found = false;
    for (int32_t i = 0; i < view->n_top; i++) {
        total += view->top[i].prob;
        found |= view->top[i].token == view->token && view->top[i].prob == view->prob;
    }
    if (view->n_top != 50 || fabs(total - 1.0) > 1e-4 || !(found || view->prob == 0.0f))
        r->bad_view++;
    if (view->position == r->fire_at && !r->fired) {
        r->fired = true;
        return 1;
    }
    return 0;
}

static void record_backtrack(void *state, int32_t n)
{
    recorder *r = state;
    r->n = n > r->n ? 0 : r->n - n;
}

static const sm_operator_vtable RECORDER_VT = { .name = "recorder", .decide = record_decide,
                                                .on_backtrack = record_backtrack };

/* The backtracking-llm preset: operators see only every n-th candidate,
 * backtracking-llm's top-50 at the temperature, and a count of 1 removes
 * the candidate and the token before it; the operator's history rolls
 * back exactly (what it holds always precedes what it is shown). */
static void test_backtracking_llm_preset_shows_every_nth_top_50_and_counts_as_it_did(void **state)
{
    recorder *r = calloc(1, sizeof *r);
    r->fire_at = 11; /* heeded: (11 + 1) % 3 == 0 */
    r->every = 3;
    sm_operator *op = sm_operator_new(&RECORDER_VT, r);
    sm_gen_params gp = tu_greedy_params(60);
    sm_error err = { 0 };
    assert_int_equal(sm_gen_params_preset(&gp, "backtracking-llm", &err), SM_OK);
    assert_int_equal(gp.sampling.top_k, 50);
    assert_true(gp.sampling.temperature == 1.0f && gp.sampling.repeat_penalty == 1.0f && !gp.policy.enabled);
    gp.sampling.seed = 3;
    gp.backtrack.every_n = 3;
    gp.backtrack.operators = &op;
    gp.backtrack.n_operators = 1;
    sm_result result;
    generate(*state, &gp, &result);
    const sm_event *e = first_backtrack(&result);
    assert_non_null(e);
    assert_int_equal(e->n_removed, 2);  /* the candidate and one token before it */
    assert_int_equal(e->token_index, 10);
    assert_int_equal(r->bad_order, 0);
    assert_int_equal(r->bad_held, 0);
    assert_int_equal(r->bad_view, 0);
    /* shown once per heeded position, plus the re-sampled ones */
    assert_true(r->shown >= result.n_tokens / 3 && r->shown <= result.n_tokens / 3 + 2);
    sm_result_free(&result);

    /* every_n_only off: it sees every candidate, and still rolls back exactly */
    memset(r, 0, sizeof *r);
    r->fire_at = 11;
    gp.backtrack.every_n_only = false;
    generate(*state, &gp, &result);
    assert_int_equal(r->bad_order, 0);
    assert_int_equal(r->bad_held, 0);
    assert_true(r->shown >= result.n_tokens);
    sm_result_free(&result);
    sm_operator_free(op);
    free(r);

    assert_int_equal(sm_gen_params_preset(&gp, "no-such", &err), SM_ERR_INVALID_ARGUMENT);
    assert_non_null(strstr(err.message, "backtracking-llm"));
}

/* Under a grammar, confidence is read from the distribution the grammar
 * allows. Sampling with min-p over the whole vocabulary draws in token
 * order, and its scratch once shared that buffer: with enough candidates
 * (here: high temperature, tiny min-p, 512 tokens) every confidence came
 * out of logits and NaNs. */
static void test_grammar_confidence_survives_sampling_in_token_order(void **state)
{
    fixture *f = *state;
    sm_gen_params gp = tu_greedy_params(40);
    gp.sampling.temperature = 1.5f;
    gp.sampling.top_k = 0;
    gp.sampling.top_p = 1.0f;
    gp.sampling.min_p = 0.0001f;
    gp.sampling.seed = 3;
    gp.grammar = "root ::= [a-z ]+";
    sm_result r;
    generate(f, &gp, &r);
    assert_true(r.n_tokens > 0);
    if (!(r.avg_confidence > 0.0f && r.avg_confidence <= 1.0f)) fail_msg("mean confidence %g", (double)r.avg_confidence);
    sm_result_free(&r);
}

/* A grammar holds under backtracking: its state follows the kept tokens
 * (replayed after every rewind), so a sequence it dictates word by word
 * comes out whole even when tokens in its middle are removed; JSON output
 * is one JSON object; a grammar that does not parse is refused. */
static void test_grammar_holds_under_backtracks(void **state)
{
    fixture *f = *state;
    const char *grammar = "root ::= (\" one\" \" two\" \" three\"){3,3}";
    const char *want = " one two three one two three one two three";
    for (int variant = 0; variant < 2; variant++) {
        sm_operator *op = tu_backtrack_once(6, 3);
        sm_gen_params gp = tu_greedy_params(60);
        gp.sampling.temperature = variant ? 1.0f : 0.0f;
        gp.sampling.seed = 9;
        gp.grammar = grammar;
        gp.backtrack.operators = &op;
        gp.backtrack.n_operators = 1;
        sm_result r;
        generate(f, &gp, &r);
        assert_int_equal(r.n_backtracks, 1);
        assert_string_equal(r.text, want);
        sm_result_free(&r);
        sm_operator_free(op);
    }
    /* A grammar that begins with text already written (a tool-call
     * grammar begins with the template's generation prompt): the prefill
     * is replayed after every rewind, so the grammar never asks for it
     * again; a prefill the grammar does not begin with is refused. */
    {
        sm_operator *op = tu_backtrack_once(6, 3);
        sm_gen_params gp = tu_greedy_params(60);
        gp.grammar = "root ::= \"<<\" (\" one\" \" two\" \" three\"){3,3}";
        gp.grammar_prefill = "<<";
        gp.backtrack.operators = &op;
        gp.backtrack.n_operators = 1;
        sm_result r;
        generate(f, &gp, &r);
        assert_int_equal(r.n_backtracks, 1);
        assert_string_equal(r.text, want);
        sm_result_free(&r);
        gp.grammar = NULL; /* a prefill without a grammar is refused, not ignored */
        assert_int_equal(sm_session_clear(f->session), SM_OK);
        assert_int_equal(sm_session_generate(f->session, LOOPING_PROMPT, &gp, &r), SM_ERR_INVALID_ARGUMENT);
        assert_non_null(strstr(sm_session_last_error(f->session), "grammar_prefill"));
        sm_result_free(&r);
        gp.grammar = "root ::= \"<<\" (\" one\" \" two\" \" three\"){3,3}";
        gp.grammar_prefill = ">>";
        assert_int_equal(sm_session_clear(f->session), SM_OK);
        assert_int_equal(sm_session_generate(f->session, LOOPING_PROMPT, &gp, &r), SM_ERR_INVALID_ARGUMENT);
        assert_non_null(strstr(sm_session_last_error(f->session), "prefill"));
        sm_result_free(&r);
        sm_operator_free(op);
    }
    /* A lazy grammar (a tool call's, with tool_choice auto): the text is
     * the model's own until it matches a trigger, the grammar's from
     * there; with a backtrack too. */
    for (int variant = 0; variant < 2; variant++) {
        sm_gen_params free_run = tu_greedy_params(60);
        sm_result plain;
        generate(f, &free_run, &plain);
        const char *at = strstr(plain.text, " the");
        assert_non_null(at); /* the greedy story says " the" early on */
        sm_operator *op = tu_backtrack_once(13, 2); /* inside the grammar: its trigger replayed */
        sm_gen_params gp = tu_greedy_params(60);
        static const char *const triggers[] = {" the"};
        gp.grammar = "root ::= \" the\" \" end\" \".\"";
        gp.grammar_triggers = triggers;
        gp.n_grammar_triggers = 1;
        if (variant) {
            gp.backtrack.operators = &op;
            gp.backtrack.n_operators = 1;
        }
        sm_result r;
        generate(f, &gp, &r);
        size_t n = strlen(r.text);
        assert_true(n >= 9);
        assert_string_equal(r.text + n - 9, " the end.");
        assert_int_equal(r.stop_reason, SM_STOP_EOG);
        if (!variant) /* before the trigger, the free text */
            assert_memory_equal(r.text, plain.text, (size_t)(at - plain.text));
        else
            assert_int_equal(r.n_backtracks, 1);
        sm_result_free(&r);
        sm_result_free(&plain);
        sm_operator_free(op);
    }
    sm_gen_params gp = tu_greedy_params(200);
    gp.grammar = SM_GRAMMAR_JSON;
    gp.sampling.temperature = 0.8f;
    sm_result r;
    generate(f, &gp, &r);
    assert_int_equal(r.text[0], '{');
    if (r.stop_reason == SM_STOP_EOG) assert_non_null(strrchr(r.text, '}'));
    sm_result_free(&r);

    gp.grammar = "root ::= (";
    assert_int_equal(sm_session_clear(f->session), SM_OK);
    assert_int_equal(sm_session_generate(f->session, LOOPING_PROMPT, &gp, &r), SM_ERR_INVALID_ARGUMENT);
    assert_non_null(strstr(sm_session_last_error(f->session), "does not parse"));
    sm_result_free(&r);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_plain_greedy_run_repeats_itself),
        cmocka_unit_test(test_repetition_keeps_no_run_longer_than_its_maximum),
        cmocka_unit_test(test_ngram_overlap_keeps_no_repeated_4gram),
        cmocka_unit_test(test_always_firing_operator_stops_at_the_backtrack_limit),
        cmocka_unit_test(test_always_firing_operator_is_capped_per_position),
        cmocka_unit_test(test_backtracking_llm_preset_shows_every_nth_top_50_and_counts_as_it_did),
        cmocka_unit_test(test_grammar_holds_under_backtracks),
        cmocka_unit_test(test_grammar_confidence_survives_sampling_in_token_order),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
