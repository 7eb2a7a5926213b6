/*
 * Exactness of every rewind at T > 0, with penalties, an adapting policy
 * and exploration bursts: a generation that backtracks k tokens to
 * position j must go on exactly as a generation that only ever rejected
 * the candidate at j. Both then sample position j with the same ban, the
 * same random state, the same temperature and penalty, the same policy
 * state and the same kept tokens; any state a rewind fails to restore
 * (random state, policy values, text, KV cache, bans, operator state)
 * makes the two runs part. scripts/mutate_restores.sh deletes each
 * restoring statement in turn and checks that these tests fail.
 */
#include "testutil.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct fixture {
    sm_model *model;
    sm_session *session;
} fixture;

static int setup(void **state) {
    fixture *f = calloc(1, sizeof *f);
    f->model = tu_load_model("stories260K.gguf");
    sm_session_params sp = tu_session_params(256);
    sp.max_rewind = 16;
    f->session = tu_open_session(f->model, &sp);
    *state = f;
    return 0;
}

static int teardown(void **state) {
    fixture *f = *state;
    if (!f) return 0; /* the setup failed (a missing model): it said why */
    sm_session_free(f->session);
    sm_model_free(f->model);
    free(f);
    return 0;
}

/* Sampling at T > 0 with every penalty, and a policy that moves T and the
 * repeat penalty on most tokens and bursts often (its own random state). */
static sm_policy_style busy_style = SM_POLICY_FIXED;

static sm_gen_params busy_params(uint64_t seed, int32_t n_predict) {
    sm_gen_params gp = sm_gen_default_params();
    gp.policy.style = busy_style;
    gp.policy.aggressive = busy_style != SM_POLICY_CALIBRATED; /* it has no aggressive mode */
    gp.n_predict = n_predict;
    gp.stop_at_bos = false;
    gp.sampling.temperature = 0.9f;
    gp.sampling.seed = seed;
    gp.sampling.repeat_penalty = 1.02f; /* raised 10% a step to its cap of 1.5 */
    gp.sampling.repeat_last_n = 16;
    gp.sampling.frequency_penalty = 0.3f;
    gp.sampling.presence_penalty = 0.2f;
    gp.policy.confidence_threshold = 0.95f;
    gp.policy.sharpen_threshold = 0.97f;
    gp.policy.retract = 0;
    gp.policy.exploration_prob = 0.5f;
    gp.backtrack.max_per_position = 8;
    return gp;
}

static void generate(fixture *f, const sm_gen_params *gp, sm_result *r) {
    assert_int_equal(sm_session_clear(f->session), SM_OK);
    sm_status st = sm_session_generate(f->session, "Once upon a time", gp, r);
    if (st != SM_OK) fail_msg("generation failed: %s", sm_session_last_error(f->session));
}

/* Everything a user can see of a generation, and the state it left. */
static void assert_same_generation(fixture *f, const sm_result *a, const float *logits_a, int32_t past_a,
                                   const sm_result *b, const char *what) {
    if (a->n_tokens != b->n_tokens || memcmp(a->tokens, b->tokens, sizeof *a->tokens * (size_t)a->n_tokens) != 0) {
        int32_t d = 0;
        while (d < a->n_tokens && d < b->n_tokens && a->tokens[d] == b->tokens[d]) d++;
        fail_msg("%s: the tokens part at %d (%d and %d tokens)", what, d, a->n_tokens, b->n_tokens);
    }
    assert_int_equal(a->text_len, b->text_len);
    assert_memory_equal(a->text, b->text, a->text_len);
    assert_true(a->final_temperature == b->final_temperature);
    assert_true(a->final_repeat_penalty == b->final_repeat_penalty);
    assert_true(a->avg_confidence == b->avg_confidence);
    assert_int_equal(past_a, sm_session_n_past(f->session));
    int32_t n_vocab = sm_model_n_vocab(f->model);
    assert_true(tu_max_abs_diff(logits_a, sm_session_logits(f->session), n_vocab) == 0.0f);
}

/* Runs gp with the operators of run A and then of run B, and asserts
 * that both ended the same; the results stay in *a and *b to look at. */
static void run_both(fixture *f, sm_gen_params gp, sm_operator **ops_a, int32_t n_a, sm_operator **ops_b,
                     int32_t n_b, const char *what, sm_result *a, sm_result *b) {
    int32_t n_vocab = sm_model_n_vocab(f->model);
    gp.backtrack.operators = ops_a;
    gp.backtrack.n_operators = n_a;
    generate(f, &gp, a);
    float *logits_a = malloc(sizeof(float) * (size_t)n_vocab);
    memcpy(logits_a, sm_session_logits(f->session), sizeof(float) * (size_t)n_vocab);
    int32_t past_a = sm_session_n_past(f->session);
    gp.backtrack.operators = ops_b;
    gp.backtrack.n_operators = n_b;
    generate(f, &gp, b);
    assert_same_generation(f, a, logits_a, past_a, b, what);
    free(logits_a);
}

/* Run A backtracks `count` tokens when shown position `at`; run B rejects
 * only the candidate at the position A resumes at. */
static void check_backtrack(fixture *f, uint64_t seed, int32_t at, int32_t count) {
    sm_operator *op_a = tu_backtrack_once(at, count), *op_b = tu_backtrack_once(at - count + 1, 1);
    char what[96];
    snprintf(what, sizeof what, "seed %llu, %d tokens back from %d", (unsigned long long)seed, count, at);
    sm_result a, b;
    run_both(f, busy_params(seed, 48), &op_a, 1, &op_b, 1, what, &a, &b);
    assert_int_equal(a.n_backtracks, 1);
    assert_int_equal(b.n_backtracks, 1);
    assert_int_equal(a.n_tokens_removed - b.n_tokens_removed, count - 1);
    sm_result_free(&a);
    sm_result_free(&b);
    sm_operator_free(op_a);
    sm_operator_free(op_b);
}

static void test_backtracks_at_temperature(void **state) {
    fixture *f = *state;
    /* early ones too: the repeat penalty the policy raises reaches its
     * cap within a few tokens, after which it no longer changes */
    const int32_t cases[][2] = {{12, 4}, {20, 8}, {9, 2}, {30, 12}, {3, 2}, {4, 3}, {5, 4}};
    for (uint64_t seed = 1; seed <= 4; seed++)
        for (size_t c = 0; c < sizeof cases / sizeof *cases; c++) check_backtrack(f, seed, cases[c][0], cases[c][1]);
}

/* The calibrated policy keeps running statistics of the text's confidence
 * (its snapshot): after a backtrack they are those of a run that never saw
 * the removed tokens. */
static void test_backtracks_with_the_calibrated_policy(void **state) {
    fixture *f = *state;
    busy_style = SM_POLICY_CALIBRATED;
    const int32_t cases[][2] = {{12, 4}, {20, 8}, {30, 12}, {40, 6}};
    for (uint64_t seed = 1; seed <= 4; seed++)
        for (size_t c = 0; c < sizeof cases / sizeof *cases; c++) check_backtrack(f, seed, cases[c][0], cases[c][1]);
    busy_style = SM_POLICY_FIXED;
}

/*
 * Two backtracks, the second reaching behind the first: the ban the first
 * left at its position belongs to a prefix that is gone, so after the
 * second rewind that position samples without it. Run B never made the
 * first backtrack's prefix at all.
 */
typedef struct two_backtracks {
    int32_t first_at, first_count, second_at, second_count;
    int fired;
} two_backtracks;

static int32_t two_decide(void *state, const sm_token_view *v) {
    two_backtracks *t = state;
    if (t->fired == 0 && v->position == t->first_at) {
        t->fired = 1;
        return t->first_count;
    }
    if (t->fired == 1 && v->position == t->second_at) {
        t->fired = 2;
        return t->second_count;
    }
    return 0;
}

static void test_bans_do_not_outlive_their_prefix(void **state) {
    fixture *f = *state;
    static const sm_operator_vtable vt = {.name = "two_backtracks", .decide = two_decide, .free_state = free};
    for (uint64_t seed = 1; seed <= 4; seed++) {
        two_backtracks *t = calloc(1, sizeof *t);
        *t = (two_backtracks){.first_at = 14, .first_count = 2, .second_at = 15, .second_count = 8};
        sm_operator *op_a = sm_operator_new(&vt, t);
        sm_operator *op_b = tu_backtrack_once(8, 1); /* A resumes at 15 - 8 + 1 = 8 after its second backtrack */
        sm_result a, b;
        run_both(f, busy_params(seed, 40), &op_a, 1, &op_b, 1, "two backtracks", &a, &b);
        assert_int_equal(a.n_backtracks, 2);
        sm_result_free(&a);
        sm_result_free(&b);
        sm_operator_free(op_a);
        sm_operator_free(op_b);
    }
}

/* An operator that removes `count` tokens the `visit`-th time it is shown
 * generated position `position`, for each of its steps. */
typedef struct script_step {
    int32_t position, visit, count;
} script_step;

typedef struct script {
    script_step steps[4];
    int n_steps;
    int32_t visits[256];
} script;

static int32_t script_decide(void *state, const sm_token_view *v) {
    script *s = state;
    if (v->position < 0 || v->position >= 256) return 0;
    int32_t visit = ++s->visits[v->position];
    for (int i = 0; i < s->n_steps; i++)
        if (s->steps[i].position == v->position && s->steps[i].visit == visit) return s->steps[i].count;
    return 0;
}

static sm_operator *scripted(const script_step *steps, int n) {
    static const sm_operator_vtable vt = {.name = "script", .decide = script_decide, .free_state = free};
    script *s = calloc(1, sizeof *s);
    memcpy(s->steps, steps, sizeof *steps * (size_t)n);
    s->n_steps = n;
    return sm_operator_new(&vt, s);
}

/*
 * What a position learned by trying (its bans, how often it was retried)
 * is forgotten with the prefix it was learned under. A: rejects position
 * a+1 once, then rewinds from a+2 to a, and later rejects a+1 again (its
 * per-position budget is 1). B: rejects a once, then a+1 once. A's second
 * try at a+1 must be allowed, and nothing banned there before may stay.
 */
static void test_tries_do_not_outlive_their_prefix(void **state) {
    fixture *f = *state;
    for (uint64_t seed = 1; seed <= 3; seed++) {
        for (int32_t a_pos = 4; a_pos <= 16; a_pos += 6) {
            /* a+1 is shown: 1 rejected, 2 kept, (rewind to a) 3 rejected */
            const script_step steps_a[] = {{a_pos + 1, 1, 1}, {a_pos + 2, 1, 3}, {a_pos + 1, 3, 1}};
            const script_step steps_b[] = {{a_pos, 1, 1}, {a_pos + 1, 1, 1}};
            sm_operator *op_a = scripted(steps_a, 3), *op_b = scripted(steps_b, 2);
            sm_gen_params gp = busy_params(seed, 40);
            gp.backtrack.max_per_position = 1;
            sm_result a, b;
            run_both(f, gp, &op_a, 1, &op_b, 1, "tries after a rewind", &a, &b);
            assert_int_equal(a.n_backtracks, 3);
            assert_int_equal(b.n_backtracks, 2);
            sm_result_free(&a);
            sm_result_free(&b);
            sm_operator_free(op_a);
            sm_operator_free(op_b);
        }
    }
}

/* The policy's step takes effect on the next token once a token is kept:
 * each token is sampled with the temperature and penalty the policy's
 * last modification left. */
typedef struct applied {
    float t, rp;                 /* what the next token must be sampled with */
    float pending_t, pending_rp; /* a step judged on the candidate before it */
    bool pending;
    int n_tokens, n_mods, n_mismatches;
} applied;

/* A candidate's modifications come before its TOKEN event and set the
 * values for the token after it. */
static bool check_applied(const sm_event *e, void *user_data) {
    applied *ap = user_data;
    if (e->type == SM_EVENT_MODIFICATION && strcmp(e->source, "policy") == 0) {
        ap->pending_t = e->temperature_after;
        ap->pending_rp = e->repeat_penalty_after;
        ap->pending = true;
        ap->n_mods++;
    } else if (e->type == SM_EVENT_TOKEN) {
        if (ap->n_tokens > 0 && (e->temperature_before != ap->t || e->repeat_penalty_before != ap->rp))
            ap->n_mismatches++;
        ap->t = ap->pending ? ap->pending_t : e->temperature_before;
        ap->rp = ap->pending ? ap->pending_rp : e->repeat_penalty_before;
        ap->pending = false;
        ap->n_tokens++;
    }
    return true;
}

static void test_policy_step_applies_to_kept_tokens(void **state) {
    fixture *f = *state;
    sm_gen_params gp = busy_params(7, 40);
    gp.policy.aggressive = false;
    applied ap = {0};
    gp.on_event = check_applied;
    gp.user_data = &ap;
    sm_result r;
    generate(f, &gp, &r);
    assert_true(ap.n_mods > 3);
    assert_int_equal(ap.n_mismatches, 0);
    assert_true(r.final_temperature != gp.sampling.temperature || r.final_repeat_penalty != gp.sampling.repeat_penalty);
    sm_result_free(&r);
}

/* What the loop calls settled is never taken back: no rewind resumes
 * before the settled count it announced, and the count never decreases. */
typedef struct settle_watch {
    int32_t settled;
    int n_rewinds, n_violations, n_decreases;
} settle_watch;

static bool watch_settled(const sm_event *e, void *user_data) {
    settle_watch *w = user_data;
    if (e->type == SM_EVENT_RETRACTION || e->type == SM_EVENT_BACKTRACK) {
        w->n_rewinds++;
        if (e->token_index < w->settled) w->n_violations++;
    }
    if (e->type != SM_EVENT_START && e->type != SM_EVENT_DONE) {
        if (e->n_settled < w->settled) w->n_decreases++;
        w->settled = e->n_settled;
    }
    return true;
}

static void test_settled_tokens_are_never_rewound(void **state) {
    fixture *f = *state;
    sm_error err = {0};
    int n_settled_runs = 0;
    for (uint64_t seed = 1; seed <= 6; seed++) {
        sm_operator *op = sm_operator_from_spec("probability_threshold:min_probability=0.03,backtrack_count=3", &err);
        assert_non_null(op);
        sm_gen_params gp = busy_params(seed, 60);
        gp.policy.retract = 1;
        gp.policy.critical_threshold = 0.6f;
        gp.policy.max_retractions = 2; /* a budget of 2 * 2 + 2 * 16 tokens of rewind */
        gp.backtrack.max_backtracks = 2;
        gp.backtrack.operators = &op;
        gp.backtrack.n_operators = 1;
        settle_watch w = {0};
        gp.on_event = watch_settled;
        gp.user_data = &w;
        sm_result r;
        generate(f, &gp, &r);
        assert_true(w.n_rewinds > 0);
        assert_int_equal(w.n_violations, 0);
        assert_int_equal(w.n_decreases, 0);
        /* once the budgets are spent, the text settles */
        if (r.n_tokens > 2 * 2 + 2 * 16 && w.settled == 0)
            fail_msg("seed %d: nothing settled of %d tokens", (int)seed, r.n_tokens);
        n_settled_runs += w.settled > 0;
        sm_result_free(&r);
        sm_operator_free(op);
    }
    assert_true(n_settled_runs > 0);
    /* the calibrated policy's loop retractions remove 4 tokens each */
    for (uint64_t seed = 1; seed <= 4; seed++) {
        sm_gen_params gp = busy_params(seed, 80);
        gp.policy.style = SM_POLICY_CALIBRATED;
        gp.policy.aggressive = false;
        gp.policy.retract = -1;
        gp.policy.max_retractions = 6;
        gp.sampling.temperature = 0.0f; /* greedy stories260K loops */
        gp.sampling.repeat_penalty = 1.0f;
        gp.sampling.frequency_penalty = 0.0f;
        gp.sampling.presence_penalty = 0.0f;
        settle_watch w = {0};
        gp.on_event = watch_settled;
        gp.user_data = &w;
        sm_result r;
        generate(f, &gp, &r);
        assert_true(r.n_retractions > 0);
        assert_int_equal(w.n_violations, 0);
        assert_int_equal(w.n_decreases, 0);
        sm_result_free(&r);
    }
}

/* An operator with state of its own (n-gram overlap counts every n-gram
 * it saw): after a backtrack its state must be that of a run that never
 * saw the removed tokens, so both runs fire at the same places. */
static void test_operator_state_rolls_back(void **state) {
    fixture *f = *state;
    sm_error err = {0};
    for (uint64_t seed = 1; seed <= 4; seed++) {
        sm_operator *ngram_a = sm_operator_from_spec("ngram_overlap:ngram_size=3", &err);
        sm_operator *ngram_b = sm_operator_from_spec("ngram_overlap:ngram_size=3", &err);
        assert_non_null(ngram_a);
        sm_operator *ops_a[2] = {tu_backtrack_once(20, 10), ngram_a}, *ops_b[2] = {tu_backtrack_once(11, 1), ngram_b};
        char what[64];
        snprintf(what, sizeof what, "operator state, seed %llu", (unsigned long long)seed);
        /* (A may have backtracked more before its rewind: those positions are gone) */
        sm_result a, b;
        run_both(f, busy_params(seed, 48), ops_a, 2, ops_b, 2, what, &a, &b);
        sm_result_free(&a);
        sm_result_free(&b);
        for (int i = 0; i < 2; i++) {
            sm_operator_free(ops_a[i]);
            sm_operator_free(ops_b[i]);
        }
    }
}

/* A generation stopped by the backtrack limit reports the policy state of
 * the tokens it kept, not of the candidate it removed. */
static void test_backtrack_limit_keeps_kept_state(void **state) {
    fixture *f = *state;
    sm_operator *op = tu_backtrack_once(10, 1);
    sm_gen_params gp = busy_params(5, 40);
    gp.backtrack.operators = &op;
    gp.backtrack.n_operators = 1;
    gp.backtrack.max_backtracks = 0; /* the first backtrack asked for stops */
    sm_result a;
    generate(f, &gp, &a);
    assert_int_equal(a.stop_reason, SM_STOP_BACKTRACK_LIMIT);
    assert_int_equal(a.n_tokens, 10);
    sm_operator_free(op);
    sm_gen_params plain = busy_params(5, 10);
    sm_result b;
    generate(f, &plain, &b);
    assert_int_equal(b.n_tokens, 10);
    assert_memory_equal(a.tokens, b.tokens, sizeof *a.tokens * 10);
    assert_true(a.final_temperature == b.final_temperature);
    assert_true(a.final_repeat_penalty == b.final_repeat_penalty);
    sm_result_free(&a);
    sm_result_free(&b);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_backtracks_at_temperature, setup, teardown),
        cmocka_unit_test_setup_teardown(test_backtracks_with_the_calibrated_policy, setup, teardown),
        cmocka_unit_test_setup_teardown(test_bans_do_not_outlive_their_prefix, setup, teardown),
        cmocka_unit_test_setup_teardown(test_operator_state_rolls_back, setup, teardown),
        cmocka_unit_test_setup_teardown(test_backtrack_limit_keeps_kept_state, setup, teardown),
        cmocka_unit_test_setup_teardown(test_tries_do_not_outlive_their_prefix, setup, teardown),
        cmocka_unit_test_setup_teardown(test_policy_step_applies_to_kept_tokens, setup, teardown),
        cmocka_unit_test_setup_teardown(test_settled_tokens_are_never_rewound, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
