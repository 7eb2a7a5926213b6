/* Default parameters, their validation, and the names of enums. */
#include "internal.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

void sm_error_set(sm_error *err, sm_status status, const char *fmt, ...) {
    if (!err) return;
    err->status = status;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err->message, sizeof err->message, fmt, ap);
    va_end(ap);
}

const char *sm_status_name(sm_status status) {
    switch (status) {
    case SM_OK: return "ok";
    case SM_ERR_INVALID_ARGUMENT: return "invalid argument";
    case SM_ERR_IO: return "i/o error";
    case SM_ERR_MODEL: return "model error";
    case SM_ERR_VOCAB_MISMATCH: return "vocabulary mismatch";
    case SM_ERR_CONTEXT: return "context error";
    case SM_ERR_PROMPT_TOO_LONG: return "prompt too long";
    case SM_ERR_DECODE: return "decode error";
    case SM_ERR_STATE: return "invalid state";
    case SM_ERR_NO_MEMORY: return "out of memory";
    case SM_ERR_CANCELLED: return "cancelled";
    }
    return "unknown status";
}

const char *sm_mod_type_name(sm_mod_type type) {
    switch (type) {
    case SM_MOD_NONE: return "NONE";
    case SM_MOD_PARAM_ADJUST: return "PARAM_ADJUST";
    case SM_MOD_SHARPEN: return "SHARPEN";
    case SM_MOD_ANTI_REPETITION: return "ANTI_REPETITION";
    case SM_MOD_EXPLORATION_BURST: return "EXPLORATION_BURST";
    case SM_MOD_RETRACT: return "RETRACT";
    case SM_MOD_BACKTRACK: return "BACKTRACK";
    }
    return "UNKNOWN";
}

const char *sm_stop_reason_name(sm_stop_reason reason) {
    switch (reason) {
    case SM_STOP_NONE: return "none";
    case SM_STOP_EOG: return "eog";
    case SM_STOP_N_PREDICT: return "n_predict";
    case SM_STOP_CONTEXT_FULL: return "context_full";
    case SM_STOP_STOP_STRING: return "stop_string";
    case SM_STOP_BACKTRACK_LIMIT: return "backtrack_limit";
    case SM_STOP_CANCELLED: return "cancelled";
    case SM_STOP_ERROR: return "error";
    }
    return "unknown";
}

sm_sampling_params sm_sampling_default_params(void) {
    return (sm_sampling_params){
        .temperature = 0.7f,
        .top_k = 40,
        .top_p = 0.95f,
        .min_p = 0.05f,
        .repeat_penalty = 1.1f,
        .repeat_last_n = 64,
        .seed = 42,
    };
}

sm_policy_params sm_policy_default_params(void) {
    return (sm_policy_params){
        .enabled = true,
        .aggressive = false,
        .retract = -1,
        .window = 5,
        .critical_threshold = 0.35f,
        .confidence_threshold = 0.5f,
        .sharpen_threshold = 0.85f,
        .retract_tokens = 3,
        .max_retractions = 3,
        .exploration_prob = 0.05f,
        .repetition_window = 10,
        .repetition_min_distinct = 5,
    };
}

sm_gen_params sm_gen_default_params(void) {
    return (sm_gen_params){
        .n_predict = 256,
        .sampling = sm_sampling_default_params(),
        .policy = sm_policy_default_params(),
        .combine = SM_COMBINE_FIRST,
        .backtrack_every_n = 1,
        .max_backtracks = 64,
        .max_backtracks_per_position = 4,
        .top_n_view = 10,
        .fusion = {.mode = SM_FUSION_CONFIDENCE, .turn = 1, .alpha = 0.1f, .beta = 0.5f, .abstain_below = 0.3f},
    };
}

static bool in_range(float v, float lo, float hi) { return isfinite(v) && v >= lo && v <= hi; }

#define CHECK(cond, ...)                                   \
    do {                                                   \
        if (!(cond)) {                                     \
            snprintf(msg, msg_size, __VA_ARGS__);          \
            return SM_ERR_INVALID_ARGUMENT;                \
        }                                                  \
    } while (0)

sm_status sm_gen_params_validate(const sm_gen_params *p, char *msg, size_t msg_size) {
    const sm_sampling_params *s = &p->sampling;
    const sm_policy_params *q = &p->policy;
    CHECK(p->n_predict >= -1, "n_predict must be >= 0, or -1 for no limit (got %d)", p->n_predict);
    CHECK(in_range(s->temperature, 0.0f, 100.0f), "temperature must be in [0, 100] (got %g)", s->temperature);
    CHECK(isfinite(s->top_p) && s->top_p > 0.0f && s->top_p <= 1.0f, "top_p must be in (0, 1] (got %g)", s->top_p);
    CHECK(isfinite(s->min_p) && s->min_p >= 0.0f && s->min_p < 1.0f, "min_p must be in [0, 1) (got %g)", s->min_p);
    CHECK(in_range(s->repeat_penalty, 0.01f, 100.0f), "repeat_penalty must be in [0.01, 100] (got %g)", s->repeat_penalty);
    CHECK(s->repeat_last_n >= 0, "repeat_last_n must be >= 0 (got %d)", s->repeat_last_n);
    CHECK(q->window >= 1, "policy window must be >= 1 (got %d)", q->window);
    CHECK(in_range(q->critical_threshold, 0.0f, 1.0f), "critical threshold must be in [0, 1] (got %g)", q->critical_threshold);
    CHECK(in_range(q->confidence_threshold, 0.0f, 1.0f), "confidence threshold must be in [0, 1] (got %g)", q->confidence_threshold);
    CHECK(in_range(q->sharpen_threshold, 0.0f, 1.0f), "sharpen threshold must be in [0, 1] (got %g)", q->sharpen_threshold);
    CHECK(q->retract >= -1 && q->retract <= 1, "policy retract must be -1, 0 or 1 (got %d)", q->retract);
    CHECK(q->retract_tokens >= 1, "retract_tokens must be >= 1 (got %d)", q->retract_tokens);
    CHECK(q->max_retractions >= 0, "max_retractions must be >= 0 (got %d)", q->max_retractions);
    CHECK(in_range(q->exploration_prob, 0.0f, 1.0f), "exploration probability must be in [0, 1] (got %g)", q->exploration_prob);
    CHECK(q->repetition_window >= 1, "repetition window must be >= 1 (got %d)", q->repetition_window);
    CHECK(q->repetition_min_distinct >= 1, "repetition min distinct must be >= 1 (got %d)", q->repetition_min_distinct);
    CHECK(p->n_stop_strings >= 0 && (p->n_stop_strings == 0 || p->stop_strings), "stop strings: count %d without an array", p->n_stop_strings);
    for (int32_t i = 0; i < p->n_stop_strings; i++)
        CHECK(p->stop_strings[i] && p->stop_strings[i][0], "stop string %d is empty", i);
    CHECK(p->n_operators >= 0 && (p->n_operators == 0 || p->operators), "operators: count %d without an array", p->n_operators);
    for (int32_t i = 0; i < p->n_operators; i++)
        CHECK(p->operators[i] && p->operators[i]->vt && p->operators[i]->vt->decide, "operator %d has no decide function", i);
    CHECK(p->combine == SM_COMBINE_FIRST || p->combine == SM_COMBINE_MAX, "combine mode must be first or max");
    CHECK(p->backtrack_every_n >= 1, "backtrack_every_n must be >= 1 (got %d)", p->backtrack_every_n);
    CHECK(p->max_backtracks >= 0, "max_backtracks must be >= 0 (got %d)", p->max_backtracks);
    CHECK(p->max_backtracks_per_position >= 0, "max_backtracks_per_position must be >= 0 (got %d)", p->max_backtracks_per_position);
    CHECK(p->top_n_view >= 1 && p->top_n_view <= 1000, "top_n_view must be in [1, 1000] (got %d)", p->top_n_view);
    return SM_OK;
}
