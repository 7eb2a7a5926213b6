/* User stages on a real model (stories260K): every hook is called where the
 * header says, a stage's snapshot is put back on every rewind, its removals
 * and takebacks are real backtracks with its name on the event, and it can
 * inject text and stop the generation. */
#include "testutil.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct fixture {
    sm_model *model;
    sm_session *session;
} fixture;

static int setup(void **state) {
    static fixture f;
    f.model = tu_load_model("stories260K.gguf");
    f.session = tu_open_session(f.model, NULL);
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

static void generate(fixture *f, const char *prompt, const sm_gen_params *gp, sm_result *res) {
    assert_int_equal(sm_session_clear(f->session), SM_OK);
    if (sm_session_generate(f->session, prompt, gp, res) != SM_OK)
        fail_msg("generation failed: %s", sm_session_last_error(f->session));
}

/* ---- a counter whose state is only right if rewinds restore it ---- */

typedef struct counter {
    int32_t n_accepted;
    int64_t token_sum;
    int32_t n_rewinds_seen;
} counter;

enum { COUNTER_SNAPSHOT = sizeof(int32_t) + sizeof(int64_t) };

static void counter_save(const void *state, void *snap) {
    const counter *c = state;
    memcpy(snap, &c->n_accepted, sizeof c->n_accepted);
    memcpy((char *)snap + sizeof c->n_accepted, &c->token_sum, sizeof c->token_sum);
}

static void counter_restore(void *state, const void *snap) {
    counter *c = state;
    memcpy(&c->n_accepted, snap, sizeof c->n_accepted);
    memcpy(&c->token_sum, (const char *)snap + sizeof c->n_accepted, sizeof c->token_sum);
}

static void counter_reset(void *state, sm_loop *loop) {
    (void)loop;
    memset(state, 0, sizeof(counter));
}

static void counter_accept(void *state, sm_loop *loop, const sm_token_view *view) {
    counter *c = state;
    assert_int_equal(view->position, sm_loop_n_generated(loop)); /* the candidate is the next position */
    c->n_accepted++;
    c->token_sum += view->token;
}

static void counter_on_rewind(void *state, sm_loop *loop, int32_t n, bool by_me) {
    (void)loop;
    assert_true(n >= 1);
    assert_false(by_me); /* it never removes anything */
    ((counter *)state)->n_rewinds_seen++;
}

static const sm_stage_vtable counter_vt = {
    .name = "counter",
    .snapshot_size = COUNTER_SNAPSHOT,
    .save = counter_save,
    .restore = counter_restore,
    .reset = counter_reset,
    .accept = counter_accept,
    .on_rewind = counter_on_rewind,
};

/* Retractions (a policy that retracts often) and backtracks (an operator)
 * rewind the generation; the stage's count equals the kept tokens only
 * because its snapshot is restored each time. */
static void test_snapshot_follows_every_rewind(void **state) {
    fixture *f = *state;
    counter c = {0};
    sm_stage *stage = sm_stage_new(&counter_vt, &c);
    sm_operator *op = tu_backtrack_once(12, 4);
    sm_gen_params gp = sm_gen_default_params();
    gp.n_predict = 60;
    gp.stop_at_bos = false;
    gp.sampling.seed = 7;
    gp.sampling.temperature = 1.0f;
    gp.policy.style = SM_POLICY_FIXED; /* retraction at critical confidence */
    gp.policy.retract = 1;
    gp.policy.critical_threshold = 0.6f;
    gp.policy.max_retractions = 6;
    gp.policy.aggressive = true;           /* and the knobs move, too */
    gp.policy.exploration_prob = 0.5f;
    gp.backtrack.operators = &op;
    gp.backtrack.n_operators = 1;
    gp.stages = &stage;
    gp.n_stages = 1;
    sm_result r;
    generate(f, "Once upon a time", &gp, &r);
    assert_true(r.n_retractions > 0);
    assert_int_equal(r.n_backtracks, 1);
    assert_int_equal(c.n_rewinds_seen, r.n_retractions + r.n_backtracks);
    int32_t eog = r.stop_reason == SM_STOP_EOG || r.stop_reason == SM_STOP_BOS; /* accepted, not kept */
    assert_int_equal(c.n_accepted, r.n_tokens + eog);
    int64_t sum = 0;
    for (int32_t i = 0; i < r.n_tokens; i++) sum += r.tokens[i];
    if (!eog) assert_true(c.token_sum == sum);
    sm_result_free(&r);
    sm_operator_free(op);
    sm_stage_free(stage);
}

/* ---- a judge that removes three tokens once, with a reason ---- */

typedef struct remover {
    int32_t at;
    bool fired;
} remover;

static int32_t remover_judge(void *state, sm_loop *loop, const sm_token_view *view) {
    remover *rm = state;
    /* text cannot go in under a candidate being judged */
    assert_int_equal(sm_loop_inject(loop, "x", 1), SM_ERR_STATE);
    if (rm->fired || view->position != rm->at) return 0;
    rm->fired = true;
    sm_loop_describe(loop, "three tokens had to go");
    return 3;
}

static const sm_stage_vtable remover_vt = {.name = "remover", .judge = remover_judge};

static void test_judge_removes_tokens(void **state) {
    fixture *f = *state;
    sm_gen_params gp = tu_greedy_params(30);
    sm_result base;
    generate(f, "Once upon a time", &gp, &base);

    remover rm = {.at = 10};
    sm_stage *stage = sm_stage_new(&remover_vt, &rm);
    gp.stages = &stage;
    gp.n_stages = 1;
    sm_result r;
    generate(f, "Once upon a time", &gp, &r);
    assert_true(rm.fired);
    assert_int_equal(r.n_backtracks, 1);
    assert_int_equal(r.n_tokens_removed, 3);
    /* positions 0..7 are what greedy made; at 8 the removed token is banned */
    assert_memory_equal(r.tokens, base.tokens, 8 * sizeof(sm_token));
    assert_int_not_equal(r.tokens[8], base.tokens[8]);
    bool seen = false;
    for (int32_t e = 0; e < r.n_events; e++) {
        const sm_event *ev = &r.events[e];
        if (ev->type != SM_EVENT_BACKTRACK) continue;
        seen = true;
        assert_string_equal(ev->source, "remover");
        assert_string_equal(ev->description, "three tokens had to go");
        assert_int_equal(ev->n_removed, 3);
        assert_int_equal(ev->token_index, 8);
    }
    assert_true(seen);
    sm_result_free(&r);
    sm_result_free(&base);
    sm_stage_free(stage);
}

/* ---- a check that takes back every token with an 'e' in it ---- */

static bool no_e_check(void *state, sm_loop *loop, const sm_token_view *view) {
    (void)loop;
    (*(int32_t *)state)++;
    return strchr(view->piece, 'e') != NULL;
}

static const sm_stage_vtable no_e_vt = {.name = "no_e", .check = no_e_check};

static void test_check_takes_tokens_back(void **state) {
    fixture *f = *state;
    int32_t n_checked = 0;
    sm_stage *stage = sm_stage_new(&no_e_vt, &n_checked);
    sm_gen_params gp = tu_greedy_params(40);
    gp.backtrack.max_backtracks = 100000;
    gp.backtrack.max_per_position = 100000;
    gp.stages = &stage;
    gp.n_stages = 1;
    sm_result r;
    generate(f, "Once upon a time", &gp, &r);
    assert_null(strchr(r.text, 'e'));
    assert_true(r.n_backtracks > 0);
    assert_int_equal(r.n_tokens_removed, r.n_backtracks);
    assert_int_equal(n_checked, r.n_tokens + r.n_backtracks); /* every decoded token was checked once */
    assert_true(r.n_decoded >= n_checked);
    sm_result_free(&r);

    /* the backtrack limit bounds a check too */
    gp.backtrack.max_backtracks = 3;
    generate(f, "Once upon a time", &gp, &r);
    assert_int_equal(r.stop_reason, SM_STOP_BACKTRACK_LIMIT);
    sm_result_free(&r);
    sm_stage_free(stage);
}

/* ---- after_token: inject once, then stop ---- */

static void narrator_after_token(void *state, sm_loop *loop, const sm_token_view *view) {
    (void)state;
    (void)view;
    int32_t n = sm_loop_n_generated(loop);
    if (n == 5) assert_int_equal(sm_loop_inject(loop, " Then a dog came.", strlen(" Then a dog came.")), SM_OK);
    if (n == 12) sm_loop_stop(loop, "twelve is enough");
}

static const sm_stage_vtable narrator_vt = {.name = "narrator", .after_token = narrator_after_token};

static bool remember_done(const sm_event *e, void *user_data) {
    if (e->type == SM_EVENT_DONE) snprintf(user_data, 64, "%s", e->description);
    return true;
}

static void test_stage_injects_and_stops(void **state) {
    fixture *f = *state;
    sm_stage *stage = sm_stage_new(&narrator_vt, NULL);
    sm_gen_params gp = tu_greedy_params(100);
    gp.stages = &stage;
    gp.n_stages = 1;
    char done[64] = "";
    gp.on_event = remember_done;
    gp.user_data = done;
    sm_result r;
    generate(f, "Once upon a time", &gp, &r);
    assert_int_equal(r.stop_reason, SM_STOP_STAGE);
    assert_string_equal(sm_stop_reason_name(r.stop_reason), "stage");
    assert_int_equal(r.n_tokens, 12);
    assert_non_null(strstr(r.text, " Then a dog came."));
    assert_true(r.n_injected_tokens > 0);
    assert_string_equal(done, "twelve is enough");
    bool seen = false;
    for (int32_t e = 0; e < r.n_events; e++)
        if (r.events[e].mod == SM_MOD_INJECT) seen = !strcmp(r.events[e].source, "narrator");
    assert_true(seen);
    sm_result_free(&r);
    sm_stage_free(stage);
}

/* ---- hooks may be missing; a NULL stage is refused ---- */

static void test_bad_stages(void **state) {
    fixture *f = *state;
    assert_null(sm_stage_new(NULL, NULL));
    static const sm_stage_vtable empty = {0};
    sm_stage *stage = sm_stage_new(&empty, NULL);
    sm_gen_params gp = tu_greedy_params(10);
    gp.stages = &stage;
    gp.n_stages = 1;
    sm_result r;
    generate(f, "Once upon a time", &gp, &r);
    assert_int_equal(r.n_tokens, 10);
    sm_result_free(&r);
    sm_stage_free(stage);

    sm_stage *none = NULL;
    gp.stages = &none;
    assert_int_equal(sm_session_clear(f->session), SM_OK);
    assert_int_equal(sm_session_generate(f->session, "Once", &gp, &r), SM_ERR_INVALID_ARGUMENT);
    assert_non_null(strstr(sm_session_last_error(f->session), "stages[0]"));
    sm_result_free(&r);
    gp.n_stages = 1;
    gp.stages = NULL;
    assert_int_equal(sm_session_generate(f->session, "Once", &gp, &r), SM_ERR_INVALID_ARGUMENT);
    sm_result_free(&r);
}

/* Forced tokens (an assistant prefill): the generation begins with them,
 * as given even where the model would not choose them, they are reported
 * as tokens, and the model goes on after them; ids outside the vocabulary
 * or below 0 are refused. sm_tokenize_continuation spells the text. */
static bool count_tokens(const sm_event *e, void *user_data) {
    if (e->type == SM_EVENT_TOKEN) (*(int *)user_data)++;
    return true;
}

static void test_forced_tokens_begin_the_generation(void **state) {
    fixture *f = *state;
    sm_tokens forced;
    sm_error err = {0};
    assert_int_equal(sm_tokenize_continuation(f->model, " a purple dragon", 16, &forced, &err), SM_OK);
    sm_gen_params gp = tu_greedy_params(forced.n + 6);
    gp.forced_tokens = forced.data;
    gp.n_forced_tokens = forced.n;
    int n_events = 0;
    gp.on_event = count_tokens;
    gp.user_data = &n_events;
    sm_result res;
    generate(f, "Once upon a time, there was", &gp, &res);
    assert_true(res.n_tokens > forced.n);
    assert_memory_equal(res.tokens, forced.data, sizeof(sm_token) * (size_t)forced.n);
    assert_int_equal(strncmp(res.text, " a purple dragon", 16), 0);
    assert_int_equal(n_events, res.n_tokens);
    sm_result_free(&res);
    /* Text without a leading space goes on without one, though this
     * SentencePiece vocabulary puts a space in front of what it tokenizes. */
    sm_tokens glued;
    assert_int_equal(sm_tokenize_continuation(f->model, "Whill\n\nx", 9, &glued, &err), SM_OK);
    char *spelled = sm_detokenize(f->model, glued.data, glued.n, NULL, &err);
    char first[16];
    assert_true(sm_token_to_piece(f->model, glued.data[0], first, sizeof first, false) > 0);
    assert_true(first[0] == 'W');
    assert_non_null(strstr(spelled, "Whill\n\nx"));
    free(spelled);
    sm_tokens_free(&glued);

    int32_t n_vocab = sm_model_n_vocab(f->model);
    sm_token bad = n_vocab;
    gp = tu_greedy_params(4);
    gp.forced_tokens = &bad;
    gp.n_forced_tokens = 1;
    assert_int_equal(sm_session_generate(f->session, "x", &gp, &res), SM_ERR_INVALID_ARGUMENT);
    assert_non_null(strstr(sm_session_last_error(f->session), "outside the vocabulary"));
    sm_result_free(&res);
    bad = -3;
    assert_int_equal(sm_session_generate(f->session, "x", &gp, &res), SM_ERR_INVALID_ARGUMENT);
    sm_result_free(&res);
    sm_tokens_free(&forced);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_snapshot_follows_every_rewind),
        cmocka_unit_test(test_forced_tokens_begin_the_generation),
        cmocka_unit_test(test_judge_removes_tokens),
        cmocka_unit_test(test_check_takes_tokens_back),
        cmocka_unit_test(test_stage_injects_and_stops),
        cmocka_unit_test(test_bad_stages),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
