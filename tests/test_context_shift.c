/*
 * Context shift (sm_gen_params.context_shift, llama-server's): a full
 * context drops tokens after n_keep and generation goes on; the cells and
 * the token list stay in step, nothing before a shift is rewound after it,
 * and on a batch the other sequences are untouched.
 */
#include "testutil.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum { N_CTX = 64, N_PREDICT = 150 };
static const char PROMPT[] = "Once upon a time";

typedef struct watch {
    sm_session *session;
    int32_t kv_violations;   /* token events where cells and tokens disagreed */
    int32_t shifts;          /* CONTEXT_SHIFT events                          */
    int32_t floor;           /* token_index of the last shift                 */
    int32_t crossed;         /* rewinds that resumed below the last shift     */
    int32_t removed_by_shift;
} watch;

static bool on_event(const sm_event *e, void *user_data) {
    watch *w = user_data;
    if (e->type == SM_EVENT_TOKEN && sm_session_kv_pos(w->session) != sm_session_n_past(w->session)) w->kv_violations++;
    if (e->type == SM_EVENT_MODIFICATION && e->mod == SM_MOD_CONTEXT_SHIFT) {
        w->shifts++;
        w->floor = e->token_index;
        w->removed_by_shift += e->n_removed;
    }
    if ((e->type == SM_EVENT_RETRACTION || e->type == SM_EVENT_BACKTRACK) && w->shifts > 0 && e->token_index < w->floor)
        w->crossed++;
    return true;
}

static sm_gen_params shifting_params(watch *w) {
    sm_gen_params gp = tu_greedy_params(N_PREDICT);
    gp.stop_at_bos = false;
    gp.context_shift = true;
    gp.n_keep = 2;
    gp.on_event = on_event;
    gp.user_data = w;
    return gp;
}

/* The generation goes on past the context; what it kept of the context is
 * the BOS, the first n_keep prompt tokens and the newest generated ones,
 * with the cells in step; before the first shift it equals a run without. */
static void test_shift_keeps_the_start_and_the_newest_tokens(void **state) {
    (void)state;
    sm_model *m = tu_load_model("stories260K.gguf");
    sm_session_params sp = tu_session_params(N_CTX);
    sm_session *s = tu_open_session(m, &sp);
    watch w = {.session = s};
    sm_gen_params gp = shifting_params(&w);
    sm_result r;
    assert_int_equal(sm_session_generate(s, PROMPT, &gp, &r), SM_OK);
    assert_int_equal(r.stop_reason, SM_STOP_N_PREDICT);
    assert_int_equal(r.n_tokens, N_PREDICT);
    assert_true(r.n_context_shifts >= 2);
    assert_int_equal(w.shifts, r.n_context_shifts);
    assert_int_equal(w.kv_violations, 0);

    sm_token prompt[16];
    int32_t n_prompt = tu_tokenize(m, PROMPT, true, false, prompt, 16);
    int32_t n_ctx_tokens;
    const sm_token *ctx = sm_session_tokens(s, &n_ctx_tokens);
    assert_int_equal(sm_session_kv_pos(s), n_ctx_tokens);
    assert_true(n_ctx_tokens <= N_CTX);
    assert_memory_equal(ctx, prompt, sizeof *ctx * 3); /* BOS + n_keep */
    int32_t tail = n_ctx_tokens - 3;
    assert_memory_equal(ctx + 3, r.tokens + r.n_tokens - tail, sizeof *ctx * (size_t)tail);
    assert_int_equal(n_prompt + N_PREDICT - w.removed_by_shift, n_ctx_tokens);

    /* without the shift it stops where the first shift happened, with the same tokens */
    sm_session *plain = tu_open_session(m, &sp);
    sm_gen_params gp2 = tu_greedy_params(N_PREDICT);
    gp2.stop_at_bos = false;
    sm_result p;
    assert_int_equal(sm_session_generate(plain, PROMPT, &gp2, &p), SM_OK);
    assert_int_equal(p.stop_reason, SM_STOP_CONTEXT_FULL);
    assert_int_equal(p.n_tokens, N_CTX - n_prompt);
    assert_memory_equal(p.tokens, r.tokens, sizeof *p.tokens * (size_t)p.n_tokens);

    /* n_keep -1 keeps the whole prompt */
    watch w3 = {.session = s};
    sm_gen_params gp3 = shifting_params(&w3);
    gp3.n_keep = -1;
    sm_result k;
    assert_int_equal(sm_session_clear(s), SM_OK);
    assert_int_equal(sm_session_generate(s, PROMPT, &gp3, &k), SM_OK);
    ctx = sm_session_tokens(s, &n_ctx_tokens);
    assert_memory_equal(ctx, prompt, sizeof *ctx * (size_t)n_prompt);
    assert_int_equal(w3.kv_violations, 0);
    assert_int_equal(k.n_tokens, N_PREDICT);

    sm_result_free(&k);
    gp3.n_keep = -2;
    assert_int_equal(sm_session_generate(s, PROMPT, &gp3, &k), SM_ERR_INVALID_ARGUMENT);
    sm_result_free(&k);
    sm_result_free(&p);
    sm_result_free(&r);
    sm_session_free(plain);
    sm_session_free(s);
    sm_model_free(m);
}

/* Retractions and backtracks go on after a shift but never reach below it. */
static void test_rewinds_never_cross_a_shift(void **state) {
    (void)state;
    sm_model *m = tu_load_model("stories260K.gguf");
    sm_session_params sp = tu_session_params(N_CTX);
    sm_session *s = tu_open_session(m, &sp);
    watch w = {.session = s};
    sm_gen_params gp = shifting_params(&w);
    gp.sampling.temperature = 1.0f;
    gp.sampling.seed = 5;
    gp.policy.enabled = true;
    gp.policy.style = SM_POLICY_FIXED;
    gp.policy.aggressive = true;
    gp.policy.retract = 1;
    gp.policy.critical_threshold = 0.5f;
    gp.policy.confidence_threshold = 0.6f;
    gp.policy.max_retractions = 40;
    /* the first token after the first shift asks to remove 8: the shift's floor cuts that to 1 */
    sm_operator *op = tu_backtrack_once(N_CTX - 5 + 1, 8);
    gp.backtrack.operators = &op;
    gp.backtrack.n_operators = 1;
    sm_result r;
    assert_int_equal(sm_session_generate(s, PROMPT, &gp, &r), SM_OK);
    fprintf(stderr, "shift: %d shifts, %d retractions, %d backtracks\n", r.n_context_shifts, r.n_retractions,
            r.n_backtracks);
    assert_true(r.n_context_shifts >= 1);
    assert_true(r.n_retractions + r.n_backtracks > 0);
    assert_int_equal(w.crossed, 0);
    assert_int_equal(w.kv_violations, 0);
    assert_int_equal(r.n_tokens, N_PREDICT);
    sm_result_free(&r);
    sm_operator_free(op);
    sm_session_free(s);
    sm_model_free(m);
}

typedef struct job {
    sm_session *session;
    sm_gen_params gp;
    sm_result result;
    sm_status status;
    watch w;
} job;

static void *run(void *arg) {
    job *j = arg;
    j->gp.on_event = on_event;
    j->gp.user_data = &j->w;
    j->status = sm_session_generate(j->session, PROMPT, &j->gp, &j->result);
    return NULL;
}

/* On a batch, one sequence shifting moves only its own cells: the other
 * generates what it generates alone. */
static void test_a_shift_on_a_batch_leaves_the_others_alone(void **state) {
    (void)state;
    sm_model *m = tu_load_model("stories260K.gguf");
    sm_batch *batch = tu_open_batch(m, 2, N_CTX, 512, false);
    job jobs[2];
    pthread_t threads[2];
    for (int i = 0; i < 2; i++) {
        jobs[i] = (job){0};
        jobs[i].session = tu_batch_session(m, batch, N_CTX);
        jobs[i].w.session = jobs[i].session;
        jobs[i].gp = tu_greedy_params(i == 0 ? N_PREDICT : N_CTX - 8);
        jobs[i].gp.stop_at_bos = false;
        jobs[i].gp.context_shift = i == 0;
    }
    for (int i = 0; i < 2; i++) pthread_create(&threads[i], NULL, run, &jobs[i]);
    for (int i = 0; i < 2; i++) pthread_join(threads[i], NULL);
    for (int i = 0; i < 2; i++) {
        assert_int_equal(jobs[i].status, SM_OK);
        assert_int_equal(jobs[i].w.kv_violations, 0);
    }
    assert_true(jobs[0].result.n_context_shifts >= 2);
    assert_int_equal(jobs[1].result.n_context_shifts, 0);
    sm_session *alone = tu_open_session(m, NULL);
    sm_gen_params gp = jobs[1].gp;
    gp.on_event = NULL;
    sm_result r;
    assert_int_equal(sm_session_generate(alone, PROMPT, &gp, &r), SM_OK);
    assert_int_equal(r.n_tokens, jobs[1].result.n_tokens);
    assert_memory_equal(r.tokens, jobs[1].result.tokens, sizeof *r.tokens * (size_t)r.n_tokens);
    sm_result_free(&r);
    sm_session_free(alone);
    for (int i = 0; i < 2; i++) {
        sm_result_free(&jobs[i].result);
        sm_session_free(jobs[i].session);
    }
    sm_batch_free(batch);
    sm_model_free(m);
}

int main(void) {
    sm_set_llama_logging(false);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_shift_keeps_the_start_and_the_newest_tokens),
        cmocka_unit_test(test_rewinds_never_cross_a_shift),
        cmocka_unit_test(test_a_shift_on_a_batch_leaves_the_others_alone),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
