/* The step API (sm_stepper): one token per call with backtracking-llm's
 * view, exact backtracks, repeatable random state, refusals. */
#include "testutil.h"

#include <math.h>
#include <string.h>

typedef struct fixture {
    sm_model *model;
    sm_session *session;
} fixture;

static int setup(void **state) {
    static fixture f;
    f.model = tu_load_model("stories260K.gguf");
    sm_session_params sp = sm_session_default_params();
    sp.n_threads = 1;
    sm_error err = {0};
    f.session = sm_session_new(f.model, &sp, &err);
    if (!f.session) fail_msg("cannot create a session: %s", err.message);
    *state = &f;
    return 0;
}

static int teardown(void **state) {
    fixture *f = *state;
    if (!f) return 0; /* the setup failed (a missing model): it said why */
    sm_session_free(f->session);
    sm_model_free(f->model);
    return 0;
}

static sm_gen_params btllm_params(uint64_t seed) {
    sm_gen_params gp = sm_gen_default_params();
    sm_error err;
    assert_int_equal(sm_gen_params_preset(&gp, "backtracking-llm", &err), SM_OK);
    gp.sampling.seed = seed;
    return gp;
}

static sm_stepper *new_stepper(fixture *f, const sm_gen_params *gp) {
    assert_int_equal(sm_session_clear(f->session), SM_OK);
    sm_error err = {0};
    sm_stepper *st = sm_stepper_new(f->session, "Once upon a time", gp, &err);
    if (!st) fail_msg("sm_stepper_new: %s", err.message);
    return st;
}

/* Each step returns the token it kept with backtracking-llm's view of its
 * distribution: the 50 largest logits / T as the top, their softmax, and
 * the token's own entry; the context ends in the stepped tokens. */
static void test_step_returns_the_token_and_its_top_50_view(void **state) {
    fixture *f = *state;
    sm_gen_params gp = btllm_params(11);
    sm_stepper *st = new_stepper(f, &gp);
    for (int k = 0; k < 12; k++) {
        /* the view the next step will show, from the session's own logits */
        sm_step step;
        assert_int_equal(sm_stepper_step(st, &step), SM_OK);
        if (step.done) break;
        assert_int_equal(step.n_top, 50);
        double total = 0;
        bool found = false;
        for (int i = 0; i < step.n_top; i++) {
            total += step.top[i].prob;
            if (i > 0) assert_true(step.top[i].logit <= step.top[i - 1].logit);
            found |= step.top[i].token == step.token && step.top[i].prob == step.prob;
        }
        assert_true(fabs(total - 1.0) < 1e-4);
        assert_true(found); /* top-k 50 sampling: the token is in the view */
        int32_t n;
        const sm_token *tokens = sm_stepper_tokens(st, &n);
        assert_int_equal(n, k + 1);
        assert_int_equal(tokens[k], step.token);
        int32_t n_ctx;
        const sm_token *ctx = sm_session_tokens(f->session, &n_ctx);
        assert_int_equal(ctx[n_ctx - 1], step.token);
    }
    sm_stepper_free(st);
}

/* Backtracking n steps leaves exactly what was there n steps before (the
 * context and the distribution at its end), and the same calls with the
 * same seed give the same tokens. */
static void test_backtrack_is_exact_and_runs_repeat(void **state) {
    fixture *f = *state;
    sm_gen_params gp = btllm_params(5);
    sm_token first[20], second[20];
    float logits_at_5[512];
    int n_vocab = 512;
    for (int run = 0; run < 2; run++) {
        sm_stepper *st = new_stepper(f, &gp);
        sm_step step;
        for (int k = 0; k < 8; k++) {
            assert_int_equal(sm_stepper_step(st, &step), SM_OK);
            assert_false(step.done);
            if (k == 4) memcpy(logits_at_5, sm_session_logits(f->session), sizeof logits_at_5);
        }
        int32_t n_before;
        assert_int_equal(sm_stepper_backtrack(st, 3), SM_OK);
        const sm_token *kept = sm_stepper_tokens(st, &n_before);
        assert_int_equal(n_before, 5);
        assert_memory_equal(sm_session_logits(f->session), logits_at_5, sizeof(float) * (size_t)n_vocab);
        int32_t n_ctx;
        const sm_token *ctx = sm_session_tokens(f->session, &n_ctx);
        assert_memory_equal(ctx + n_ctx - 5, kept, 5 * sizeof *kept);
        for (int k = 0; k < 6; k++) assert_int_equal(sm_stepper_step(st, &step), SM_OK);
        int32_t n;
        const sm_token *tokens = sm_stepper_tokens(st, &n);
        assert_int_equal(n, 11);
        memcpy(run ? second : first, tokens, sizeof *tokens * (size_t)n);
        /* too deep a backtrack is refused, naming the count */
        assert_int_equal(sm_stepper_backtrack(st, 12), SM_ERR_INVALID_ARGUMENT);
        assert_non_null(strstr(sm_stepper_last_error(st), "11"));
        sm_stepper_free(st);
    }
    assert_memory_equal(first, second, 11 * sizeof *first);
}

/* What adapts over a whole generation is refused, naming it. */
static void test_generation_wide_settings_are_refused(void **state) {
    fixture *f = *state;
    sm_error err;
    sm_gen_params gp = sm_gen_default_params(); /* the policy on */
    assert_null(sm_stepper_new(f->session, "x", &gp, &err));
    assert_non_null(strstr(err.message, "policy"));
    gp = btllm_params(1);
    gp.backtrack.every_n = 2;
    assert_null(sm_stepper_new(f->session, "x", &gp, &err));
    assert_non_null(strstr(err.message, "every_n"));
    assert_null(sm_stepper_new(NULL, "x", &gp, &err));
    assert_int_equal(err.status, SM_ERR_INVALID_ARGUMENT);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_step_returns_the_token_and_its_top_50_view),
        cmocka_unit_test(test_backtrack_is_exact_and_runs_repeat),
        cmocka_unit_test(test_generation_wide_settings_are_refused),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
