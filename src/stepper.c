/*
 * stepper.c - the step API: one token per call, the caller decides.
 *
 * Each step is a generation of one token on the session, so everything a
 * generation does (sampler, stages, policy, operators, exact rewinds)
 * holds for it. What the step returns is captured by one more operator
 * that never fires: the view it is shown is the one operators see. The
 * seed of step k is the caller's seed mixed with k, so the random state
 * moves on with every call, backtracks included, and a run is repeatable.
 *
 * Invariant: tokens[0..n) are the last n tokens of the session's context,
 * in order; backtrack(n) removes them from both.
 */
#include "internal.h"

#include <stdlib.h>
#include <string.h>

typedef struct captured {
    sm_token token;
    float prob, logit;
    sm_candidate top[1000];
    int32_t n_top;
    char piece[256];
} captured;

struct sm_stepper {
    sm_session *session;
    sm_gen_params params;
    sm_operator *operators[1];      /* the capture                      */
    char *prompt;                   /* fed by the first step, then NULL */
    sm_token *tokens;
    int32_t n_tokens, cap;
    uint64_t n_steps;
    bool done;
    captured seen;
    sm_operator *capture;
    char error[256];
};

static int32_t capture_decide(void *state, const sm_token_view *view) {
    captured *c = state;
    c->token = view->token;
    c->prob = view->prob;
    c->logit = view->logit;
    c->n_top = view->n_top < 1000 ? view->n_top : 1000;
    if (view->top && c->n_top > 0) memcpy(c->top, view->top, sizeof *c->top * (size_t)c->n_top);
    snprintf(c->piece, sizeof c->piece, "%s", view->piece ? view->piece : "");
    return 0;
}

static const sm_operator_vtable CAPTURE_VT = {.name = "step", .decide = capture_decide};

static sm_status fail(sm_stepper *st, sm_status status, const char *message) {
    snprintf(st->error, sizeof st->error, "%s", message);
    return status;
}

sm_stepper *sm_stepper_new(sm_session *session, const char *prompt, const sm_gen_params *params, sm_error *err) {
    sm_error scratch;
    if (!err) err = &scratch;
    if (!session || !params) {
        sm_error_set(err, SM_ERR_INVALID_ARGUMENT, "sm_stepper_new: %s is NULL", !session ? "session" : "params");
        return NULL;
    }
    /* Each step is a generation of one token: what adapts over a
     * generation (the policy, operators, stages, every_n) would start over
     * at every step, so it is refused rather than quietly reset. */
    const char *refused = params->policy.enabled            ? "params.policy.enabled (set it to false)"
                          : params->backtrack.n_operators > 0 ? "operators (the caller decides what to remove)"
                          : params->n_stages > 0             ? "stages"
                          : params->backtrack.every_n != 1   ? "backtrack.every_n other than 1"
                                                             : NULL;
    if (refused) {
        sm_error_set(err, SM_ERR_INVALID_ARGUMENT,
                     "a stepper samples one token per call and takes no %s: they adapt over a whole generation",
                     refused);
        return NULL;
    }
    if (sm_gen_params_validate(params, err) != SM_OK) return NULL;
    sm_stepper *st = calloc(1, sizeof *st);
    if (!st || (prompt && *prompt && !(st->prompt = strdup(prompt)))) {
        free(st);
        sm_error_set(err, SM_ERR_NO_MEMORY, "out of memory");
        return NULL;
    }
    st->session = session;
    st->params = *params;
    st->capture = sm_operator_new(&CAPTURE_VT, &st->seen);
    if (!st->capture) {
        sm_stepper_free(st);
        sm_error_set(err, SM_ERR_NO_MEMORY, "out of memory");
        return NULL;
    }
    /* The only operator: shown every candidate, it sees the one kept. */
    st->operators[0] = st->capture;
    st->params.backtrack.operators = st->operators;
    st->params.backtrack.n_operators = 1;
    st->params.n_predict = 1;
    st->params.on_event = NULL;
    err->status = SM_OK;
    return st;
}

/* splitmix64: the seed of step k. */
static uint64_t step_seed(uint64_t seed, uint64_t k) {
    uint64_t x = seed + 0x9e3779b97f4a7c15ULL * (k + 1);
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
    return x ^ (x >> 31);
}

sm_status sm_stepper_step(sm_stepper *st, sm_step *step) {
    if (!st || !step) return SM_ERR_INVALID_ARGUMENT;
    memset(step, 0, sizeof *step);
    if (st->done) {
        step->done = true;
        return SM_OK;
    }
    if (st->n_tokens == st->cap) {
        int32_t cap = st->cap ? st->cap * 2 : 64;
        sm_token *grown = realloc(st->tokens, sizeof *grown * (size_t)cap);
        if (!grown) return fail(st, SM_ERR_NO_MEMORY, "out of memory");
        st->tokens = grown;
        st->cap = cap;
    }
    sm_gen_params gp = st->params;
    gp.sampling.seed = step_seed(st->params.sampling.seed, st->n_steps++);
    memset(&st->seen, 0, sizeof st->seen);
    st->seen.token = -1;
    sm_result r;
    sm_status status = sm_session_generate(st->session, st->prompt, &gp, &r);
    free(st->prompt);
    st->prompt = NULL;
    if (status != SM_OK) {
        sm_result_free(&r);
        return fail(st, status, sm_session_last_error(st->session));
    }
    step->token = st->seen.token;
    step->piece = st->seen.piece;
    step->prob = st->seen.prob;
    step->logit = st->seen.logit;
    step->top = st->seen.top;
    step->n_top = st->seen.n_top;
    if (r.n_tokens == 1 && r.tokens[0] == st->seen.token) {
        st->tokens[st->n_tokens++] = r.tokens[0];
    } else {
        /* nothing kept: an end of generation, a full context, a stop */
        st->done = true;
        step->done = true;
        if (r.n_tokens > 0) { /* kept, though not the one captured: should not happen */
            sm_result_free(&r);
            return fail(st, SM_ERR_STATE, "the step kept a token its view did not show");
        }
    }
    sm_result_free(&r);
    return SM_OK;
}

sm_status sm_stepper_backtrack(sm_stepper *st, int32_t n) {
    if (!st) return SM_ERR_INVALID_ARGUMENT;
    if (n < 0 || n > st->n_tokens) {
        char message[128];
        snprintf(message, sizeof message, "cannot backtrack %d tokens: %d were stepped and kept", n, st->n_tokens);
        return fail(st, SM_ERR_INVALID_ARGUMENT, message);
    }
    if (n == 0) return SM_OK;
    sm_status status = sm_session_rewind(st->session, n);
    if (status != SM_OK) return fail(st, status, sm_session_last_error(st->session));
    st->n_tokens -= n;
    st->done = false;
    return SM_OK;
}

const sm_token *sm_stepper_tokens(const sm_stepper *st, int32_t *n_tokens) {
    if (n_tokens) *n_tokens = st ? st->n_tokens : 0;
    return st ? st->tokens : NULL;
}

bool sm_stepper_done(const sm_stepper *st) { return !st || st->done; }

const char *sm_stepper_last_error(const sm_stepper *st) { return st ? st->error : "no stepper"; }

void sm_stepper_free(sm_stepper *st) {
    if (!st) return;
    sm_operator_free(st->capture);
    free(st->prompt);
    free(st->tokens);
    free(st);
}
