/* Default parameters, their validation, and the names of enums. */
#include "internal.h"
#include "jinja.h"

#include <ctype.h>
#include <math.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

double sm_now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

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
    case SM_MOD_ENTROPY_STEER: return "ENTROPY_STEER";
    case SM_MOD_LOOKAHEAD: return "LOOKAHEAD";
    case SM_MOD_SAFETY: return "SAFETY";
    case SM_MOD_TOOL: return "TOOL";
    case SM_MOD_INJECT: return "INJECT";
    case SM_MOD_STEER: return "STEER";
    case SM_MOD_CONTEXT_SHIFT: return "CONTEXT_SHIFT";
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
    case SM_STOP_SAFETY: return "safety";
    case SM_STOP_BOS: return "bos";
    case SM_STOP_NO_CANDIDATES: return "no_candidates";
    case SM_STOP_STAGE: return "stage";
    case SM_STOP_INDENT: return "indent";
    case SM_STOP_TIME_LIMIT: return "time_limit";
    }
    return "unknown";
}

sm_sampling_params sm_sampling_default_params(void) {
    return (sm_sampling_params){
        .temperature = 0.0f, /* greedy: docs/EVAL.md, "the default temperature" */
        .top_k = 40,
        .top_p = 0.95f,
        .min_p = 0.05f,
        .repeat_penalty = 1.1f,
        .repeat_last_n = 64,
        .seed = 42,
        .dry_multiplier = 0.0f,
        .dry_base = 1.75f,
        .dry_allowed_length = 2,
        .dry_penalty_last_n = -1,
        .top_n_sigma = -1.0f,
        .typical_p = 1.0f,
        .xtc_probability = 0.0f,
        .xtc_threshold = 0.1f,
        .dynatemp_range = 0.0f,
        .dynatemp_exponent = 1.0f,
        .mirostat = 0,
        .mirostat_tau = 5.0f,
        .mirostat_eta = 0.1f,
    };
}

sm_policy_params sm_policy_default_params(void) {
    return (sm_policy_params){
        .enabled = true,
        .style = SM_POLICY_CALIBRATED, /* docs/EVAL.md: the fixed thresholds ratchet T up on small models */
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
        .entropy_mode = 0,
        .entropy_high = 3.0f,
        .entropy_low = 0.5f,
        .varentropy_low = 1.0f,
        .entropy_factor = 0.5f,
        .entropy_raise = 1.3f,
    };
}

sm_status sm_policy_preset(sm_policy_params *p, const char *name, sm_error *err) {
    sm_error scratch;
    if (!err) err = &scratch;
    static const char *const NAMES[] = {"original", "fixed", "tuned", "calibrated"};
    int which = -1;
    for (int i = 0; name && i < 4; i++)
        if (strcmp(name, NAMES[i]) == 0) which = i;
    if (!p || which < 0) {
        sm_error_set(err, SM_ERR_INVALID_ARGUMENT, "unknown policy preset '%s' (presets: original, fixed, tuned, calibrated)",
                     name ? name : "");
        return SM_ERR_INVALID_ARGUMENT;
    }
    const sm_policy_params d = sm_policy_default_params();
    p->style = which == 0 ? SM_POLICY_ORIGINAL : which == 3 ? SM_POLICY_CALIBRATED : SM_POLICY_FIXED;
    p->window = d.window;
    p->critical_threshold = d.critical_threshold;
    p->confidence_threshold = which == 2 ? 0.0f : d.confidence_threshold;
    p->sharpen_threshold = which == 2 ? 0.5f : d.sharpen_threshold;
    p->retract_tokens = d.retract_tokens;
    p->exploration_prob = d.exploration_prob;
    p->repetition_window = d.repetition_window;
    p->repetition_min_distinct = d.repetition_min_distinct;
    err->status = SM_OK;
    return SM_OK;
}

sm_status sm_gen_params_preset(sm_gen_params *gp, const char *name, sm_error *err) {
    sm_error scratch;
    if (!err) err = &scratch;
    if (!gp || !name || strcmp(name, "backtracking-llm") != 0) {
        sm_status st = gp ? sm_policy_preset(&gp->policy, name, err) : SM_ERR_INVALID_ARGUMENT;
        if (st != SM_OK)
            sm_error_set(err, SM_ERR_INVALID_ARGUMENT, "unknown preset '%s' (presets: original, fixed, tuned, calibrated, "
                         "backtracking-llm)", name ? name : "");
        return st;
    }
    /* backtracking_llm.generation.Generator.generate's defaults: logits / T,
     * top-k 50, a draw from their softmax; nothing else. */
    sm_sampling_params *s = &gp->sampling;
    s->temperature = 1.0f;
    s->top_k = 50;
    s->top_p = 1.0f;
    s->min_p = 0.0f;
    s->repeat_penalty = 1.0f;
    s->frequency_penalty = 0.0f;
    s->presence_penalty = 0.0f;
    s->dry_multiplier = 0.0f;
    gp->policy.enabled = false;
    gp->backtrack.input = SM_OPERATOR_INPUT_ORIGINAL;
    gp->backtrack.top_n_view = 50;
    gp->backtrack.input_temperature = 0.0f;
    gp->backtrack.every_n_only = true;
    err->status = SM_OK;
    return SM_OK;
}

char *sm_grammar_from_json_schema(const char *schema_json, sm_error *err) {
    sm_error scratch;
    if (!err) err = &scratch;
    if (!schema_json) {
        sm_error_set(err, SM_ERR_INVALID_ARGUMENT, "sm_grammar_from_json_schema: schema is NULL");
        return NULL;
    }
    char why[sizeof err->message - 32] = "";
    char *grammar = smj_schema_to_grammar(schema_json, why, sizeof why);
    if (!grammar) sm_error_set(err, SM_ERR_INVALID_ARGUMENT, "%s", *why ? why : "out of memory converting the schema");
    else err->status = SM_OK;
    return grammar;
}

sm_status sm_grammar_check(const sm_model *model, const char *grammar, sm_error *err) {
    sm_error scratch;
    if (!err) err = &scratch;
    if (!model || !grammar) {
        sm_error_set(err, SM_ERR_INVALID_ARGUMENT, "sm_grammar_check: no model or grammar");
        return SM_ERR_INVALID_ARGUMENT;
    }
    struct llama_sampler *g = smx_grammar_new(model->vocab, grammar, "root", err);
    if (!g) {
        if (!*err->message || err->status == SM_OK)
            sm_error_set(err, SM_ERR_INVALID_ARGUMENT, "the grammar does not parse as GBNF (root rule 'root')");
        return SM_ERR_INVALID_ARGUMENT;
    }
    llama_sampler_free(g);
    err->status = SM_OK;
    return SM_OK;
}

/* One JSON object: objects, arrays, strings with escapes, numbers, true,
 * false, null; white space bounded so that it cannot run on forever. */
const char *const SM_GRAMMAR_JSON =
    "root   ::= object\n"
    "value  ::= object | array | string | number | (\"true\" | \"false\" | \"null\") ws\n"
    "object ::= \"{\" ws ( string \":\" ws value (\",\" ws string \":\" ws value)* )? \"}\" ws\n"
    "array  ::= \"[\" ws ( value (\",\" ws value)* )? \"]\" ws\n"
    "string ::= \"\\\"\" ( [^\"\\\\\\x7F\\x00-\\x1F] | \"\\\\\" ([\"\\\\/bfnrt] | \"u\" [0-9a-fA-F]{4,4}) )* \"\\\"\" ws\n"
    "number ::= \"-\"? ([0-9] | [1-9] [0-9]{0,15}) (\".\" [0-9]{1,16})? ([eE] [-+]? [0-9]{1,3})? ws\n"
    "ws     ::= | \" \" | \"\\n\" [ \\t]{0,20}\n";

sm_gen_params sm_gen_default_params(void) {
    return (sm_gen_params){
        .n_predict = 256,
        .stop_at_bos = true,
        .sampling = sm_sampling_default_params(),
        .policy = sm_policy_default_params(),
        .backtrack = {.combine = SM_COMBINE_FIRST, .every_n = 1, .max_backtracks = 64, .max_per_position = 4,
                      .top_n_view = 10},
        .fusion = {.mode = SM_FUSION_CONFIDENCE, .turn = 1, .alpha = 0.1f, .beta = 0.5f, .abstain_below = 0.3f},
        .interventions = {.safety_max_retries = 3,
                          .lookahead = {.k = 0, .depth = 4, .entropy = 2.5f, .score = SM_LOOKAHEAD_MEAN_LOGPROB},
                          .steer_rule = {.il_start = -1, .il_end = -1, .on = 1.0f, .off = 0.0f,
                                         .min_strength = -4.0f, .max_strength = 4.0f}},
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

static sm_status validate_gen_params(const sm_gen_params *p, char *msg, size_t msg_size);

/* llama.cpp's sampler chain, in its order (common.h's default), with the
 * names and aliases common_sampler_types_from_names takes. */
enum { SAMPLER_PENALTIES, SAMPLER_DRY, SAMPLER_TOP_N_SIGMA, SAMPLER_TOP_K, SAMPLER_TYPICAL, SAMPLER_TOP_P,
       SAMPLER_MIN_P, SAMPLER_XTC, SAMPLER_INFILL, SAMPLER_TEMPERATURE, N_SAMPLERS };
static const char *const SAMPLER_NAMES[N_SAMPLERS] = {"penalties", "dry", "top_n_sigma", "top_k", "typ_p",
                                                      "top_p", "min_p", "xtc", "infill", "temperature"};

/* A name as llama.cpp takes it (any case): the name, with '-' for '_'
 * ("top-k"), or without the '_' ("topk"); or "nucleus", "temp", "typ".
 * -1 when none. */
static int sampler_index(const char *name) {
    char lower[32];
    size_t n = strlen(name);
    if (n >= sizeof lower) return -1;
    for (size_t i = 0; i <= n; i++) lower[i] = (char)tolower((unsigned char)name[i]);
    static const struct { const char *alias; int index; } MISC[] = {
        {"nucleus", SAMPLER_TOP_P}, {"temp", SAMPLER_TEMPERATURE}, {"typ", SAMPLER_TYPICAL}};
    for (size_t i = 0; i < sizeof MISC / sizeof MISC[0]; i++)
        if (strcmp(lower, MISC[i].alias) == 0) return MISC[i].index;
    for (int s = 0; s < N_SAMPLERS; s++) {
        char kebab[32], joined[32];
        size_t k = 0;
        for (size_t i = 0; SAMPLER_NAMES[s][i]; i++) {
            kebab[i] = SAMPLER_NAMES[s][i] == '_' ? '-' : SAMPLER_NAMES[s][i];
            kebab[i + 1] = '\0';
            if (SAMPLER_NAMES[s][i] != '_') joined[k++] = SAMPLER_NAMES[s][i];
        }
        joined[k] = '\0';
        if (strcmp(lower, SAMPLER_NAMES[s]) == 0 || strcmp(lower, kebab) == 0 || strcmp(lower, joined) == 0) return s;
    }
    return -1;
}

#define SAMPLER_ORDER "penalties, dry, top_n_sigma, top_k, typ_p, top_p, min_p, xtc, infill, temperature"
/* llama.cpp's letters for them (common_sampler_type_to_chr), in that order */
static const char SAMPLER_LETTERS[N_SAMPLERS + 1] = "edskypmxit";

sm_status sm_sampling_params_set_samplers(sm_sampling_params *p, const char *const *names, int32_t n_names,
                                          sm_error *err) {
    if (p->mirostat) {
        sm_error_set(err, SM_ERR_INVALID_ARGUMENT, "samplers: mirostat replaces the chain: give one or the other");
        return SM_ERR_INVALID_ARGUMENT;
    }
    bool on[N_SAMPLERS] = {false};
    int last = -1;
    for (int32_t i = 0; i < n_names; i++) {
        int s = names[i] ? sampler_index(names[i]) : -1;
        if (s < 0)
            sm_error_set(err, SM_ERR_INVALID_ARGUMENT, "samplers: unknown sampler '%.40s' (" SAMPLER_ORDER ")",
                         names[i] ? names[i] : "(null)");
        else if (on[s])
            sm_error_set(err, SM_ERR_INVALID_ARGUMENT, "samplers: '%s' is named twice", SAMPLER_NAMES[s]);
        else if (s < last)
            sm_error_set(err, SM_ERR_INVALID_ARGUMENT, "samplers: '%s' after '%s': the chain runs in llama.cpp's "
                         "order (" SAMPLER_ORDER ")", SAMPLER_NAMES[s], SAMPLER_NAMES[last]);
        if (s < 0 || on[s] || s < last) return SM_ERR_INVALID_ARGUMENT;
        on[s] = true;
        last = s;
    }
    if (!on[SAMPLER_PENALTIES]) p->repeat_penalty = 1.0f, p->frequency_penalty = 0.0f, p->presence_penalty = 0.0f;
    if (!on[SAMPLER_DRY]) p->dry_multiplier = 0.0f;
    if (!on[SAMPLER_TOP_N_SIGMA]) p->top_n_sigma = -1.0f;
    if (!on[SAMPLER_TOP_K]) p->top_k = 0;
    if (!on[SAMPLER_TYPICAL]) p->typical_p = 1.0f;
    if (!on[SAMPLER_TOP_P]) p->top_p = 1.0f;
    if (!on[SAMPLER_MIN_P]) p->min_p = 0.0f;
    if (!on[SAMPLER_XTC]) p->xtc_probability = 0.0f;
    p->infill = on[SAMPLER_INFILL];
    if (!on[SAMPLER_TEMPERATURE]) p->temperature = 1.0f, p->dynatemp_range = 0.0f;
    return SM_OK;
}

sm_status sm_sampling_params_set_sampler_letters(sm_sampling_params *p, const char *letters, sm_error *err) {
    const char *names[64];
    int32_t n = 0;
    for (const char *c = letters ? letters : ""; *c; c++) {
        const char *at = strchr(SAMPLER_LETTERS, *c);
        if (!at || n == (int32_t)(sizeof names / sizeof *names)) { /* a byte, not a character: the message stays UTF-8 */
            sm_error_set(err, SM_ERR_INVALID_ARGUMENT, "samplers: byte %d (0x%02x) is not a sampler's letter (%s)",
                         (int)(c - letters), (unsigned char)*c, SAMPLER_LETTERS);
            return SM_ERR_INVALID_ARGUMENT;
        }
        names[n++] = SAMPLER_NAMES[at - SAMPLER_LETTERS];
    }
    return sm_sampling_params_set_samplers(p, names, n, err);
}

sm_status sm_gen_params_validate(const sm_gen_params *p, sm_error *err) {
    sm_error scratch;
    if (!err) err = &scratch;
    err->status = validate_gen_params(p, err->message, sizeof err->message);
    return err->status;
}

static sm_status validate_gen_params(const sm_gen_params *p, char *msg, size_t msg_size) {
    const sm_sampling_params *s = &p->sampling;
    const sm_policy_params *q = &p->policy;
    CHECK(p->n_predict >= -1, "n_predict must be >= 0, or -1 for no limit (got %d)", p->n_predict);
    CHECK(p->n_indent >= 0, "n_indent must be >= 0 (0 = off; got %d)", p->n_indent);
    CHECK(p->t_max_predict_ms >= 0, "t_max_predict_ms must be >= 0 (0 = off; got %d)", p->t_max_predict_ms);
    CHECK(in_range(s->temperature, 0.0f, 100.0f), "temperature must be in [0, 100] (got %g)", s->temperature);
    CHECK(isfinite(s->top_p) && s->top_p > 0.0f && s->top_p <= 1.0f, "top_p must be in (0, 1] (got %g)", s->top_p);
    CHECK(isfinite(s->min_p) && s->min_p >= 0.0f && s->min_p < 1.0f, "min_p must be in [0, 1) (got %g)", s->min_p);
    CHECK(in_range(s->repeat_penalty, 0.01f, 100.0f), "repeat_penalty must be in [0.01, 100] (got %g)", s->repeat_penalty);
    CHECK(s->repeat_last_n >= 0, "repeat_last_n must be >= 0 (got %d)", s->repeat_last_n);
    CHECK(in_range(s->frequency_penalty, -100.0f, 100.0f), "frequency_penalty must be in [-100, 100] (got %g)",
          s->frequency_penalty);
    CHECK(in_range(s->presence_penalty, -100.0f, 100.0f), "presence_penalty must be in [-100, 100] (got %g)",
          s->presence_penalty);
    CHECK(s->n_logit_bias >= 0 && (s->n_logit_bias == 0 || s->logit_bias), "logit_bias: %d entries without an array",
          s->n_logit_bias);
    for (int32_t i = 0; i < s->n_logit_bias; i++)
        CHECK(s->logit_bias[i].token >= 0 && !isnan(s->logit_bias[i].bias) && s->logit_bias[i].bias < INFINITY,
              "logit_bias[%d]: token %d must be >= 0 and the bias a number below +infinity", i, s->logit_bias[i].token);
    CHECK(in_range(s->dry_multiplier, 0.0f, 100.0f), "dry_multiplier must be in [0, 100] (got %g)", s->dry_multiplier);
    if (s->dry_multiplier > 0.0f) { /* the other DRY settings matter only when it is on */
        CHECK(in_range(s->dry_base, 1.0f, 100.0f), "dry_base must be in [1, 100] (got %g)", s->dry_base);
        CHECK(s->dry_allowed_length >= 1, "dry_allowed_length must be >= 1 (got %d)", s->dry_allowed_length);
        CHECK(s->dry_penalty_last_n >= -1, "dry_penalty_last_n must be >= 0, or -1 for the whole context (got %d)",
              s->dry_penalty_last_n);
    }
    CHECK(isfinite(s->top_n_sigma) && s->top_n_sigma <= 100.0f, "top_n_sigma must be <= 100 (<= 0 = off; got %g)", s->top_n_sigma);
    CHECK(in_range(s->typical_p, 0.0f, 1.0f), "typical_p must be in [0, 1] (1 = off; got %g)", s->typical_p);
    CHECK(in_range(s->xtc_probability, 0.0f, 1.0f), "xtc_probability must be in [0, 1] (got %g)", s->xtc_probability);
    CHECK(in_range(s->xtc_threshold, 0.0f, 1.0f), "xtc_threshold must be in [0, 1] (got %g)", s->xtc_threshold);
    CHECK(in_range(s->dynatemp_range, 0.0f, 100.0f), "dynatemp_range must be in [0, 100] (got %g)", s->dynatemp_range);
    CHECK(in_range(s->dynatemp_exponent, 0.0f, 100.0f), "dynatemp_exponent must be in [0, 100] (got %g)", s->dynatemp_exponent);
    CHECK(s->mirostat == 0 || s->mirostat == 2, "mirostat must be 0 (off) or 2 (mirostat v2; v1 is not offered) (got %d)",
          s->mirostat);
    CHECK(!(s->infill && s->mirostat), "the infill sampler does not run with mirostat (mirostat replaces the chain)");
    if (s->mirostat) {
        CHECK(in_range(s->mirostat_tau, 0.0f, 100.0f), "mirostat_tau must be in [0, 100] (got %g)", s->mirostat_tau);
        CHECK(in_range(s->mirostat_eta, 0.0f, 10.0f), "mirostat_eta must be in [0, 10] (got %g)", s->mirostat_eta);
    }
    CHECK(q->window >= 1, "policy window must be >= 1 (got %d)", q->window);
    CHECK(q->style == SM_POLICY_FIXED || q->style == SM_POLICY_ORIGINAL || q->style == SM_POLICY_CALIBRATED,
          "policy style must be fixed, original or calibrated (got %d)", (int)q->style);
    CHECK(!(q->style == SM_POLICY_CALIBRATED && q->enabled && q->aggressive),
          "aggressive belongs to the fixed and original policies: the calibrated one has no bursts or larger steps");
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
    const sm_backtrack_params *bt = &p->backtrack;
    CHECK(bt->n_operators >= 0 && (bt->n_operators == 0 || bt->operators), "operators: count %d without an array", bt->n_operators);
    for (int32_t i = 0; i < bt->n_operators; i++)
        CHECK(bt->operators[i] && bt->operators[i]->vt && bt->operators[i]->vt->decide, "operator %d has no decide function", i);
    CHECK(p->n_stages >= 0 && (p->n_stages == 0 || p->stages), "stages: count %d without an array", p->n_stages);
    for (int32_t i = 0; i < p->n_stages; i++) CHECK(p->stages[i], "stages[%d] is NULL", i);
    CHECK(bt->combine == SM_COMBINE_FIRST || bt->combine == SM_COMBINE_MAX, "combine mode must be first or max");
    CHECK(bt->every_n >= 1, "backtrack_every_n must be >= 1 (got %d)", bt->every_n);
    CHECK(bt->max_backtracks >= 0, "max_backtracks must be >= 0 (got %d)", bt->max_backtracks);
    CHECK(bt->max_per_position >= 0, "max_backtracks_per_position must be >= 0 (got %d)", bt->max_per_position);
    CHECK(bt->top_n_view >= 1 && bt->top_n_view <= 1000, "top_n_view must be in [1, 1000] (got %d)", bt->top_n_view);
    CHECK(bt->input == SM_OPERATOR_INPUT_FULL || bt->input == SM_OPERATOR_INPUT_ORIGINAL,
          "operator input must be full or original (got %d)", (int)bt->input);
    CHECK(isfinite(bt->input_temperature) && bt->input_temperature >= 0.0f,
          "operator input temperature must be >= 0 (got %g; 0 = the token's own)", bt->input_temperature);
    CHECK(p->n_probs >= 0 && p->n_probs <= 1000, "n_probs must be in [0, 1000] (got %d)", p->n_probs);
    CHECK(p->grammar || (!p->grammar_prefill && p->n_grammar_triggers == 0),
          "grammar_prefill and grammar_triggers belong to a grammar: none is given");
    CHECK(p->n_grammar_triggers >= 0 && (p->n_grammar_triggers == 0 || p->grammar_triggers),
          "grammar_triggers: %d patterns without an array", p->n_grammar_triggers);
    CHECK(!p->grammar || (!p->interventions.tools && !(p->interventions.inject_every > 0 && p->interventions.inject_text)),
          "a grammar follows the generated tokens: injected text (tools, inject_text) would step outside it");
    CHECK(p->n_keep >= -1, "n_keep: %d (give -1 for the whole prompt, or a count >= 0)", p->n_keep);
    CHECK(p->n_discard >= 0, "n_discard: %d (give 0 for half, or a count >= 1)", p->n_discard);
    CHECK(p->n_forced_tokens >= 0 && (p->n_forced_tokens == 0 || p->forced_tokens),
          "forced tokens: count %d without an array", p->n_forced_tokens);
    for (int32_t i = 0; i < p->n_forced_tokens; i++)
        CHECK(p->forced_tokens[i] >= 0, "forced token %d is %d: token ids are >= 0", i, p->forced_tokens[i]);
    return sm_intervention_params_validate(p, msg, msg_size);
}

/* The introspection and intervention fields (docs/INTROSPECTION.md). */
sm_status sm_intervention_params_validate(const sm_gen_params *p, char *msg, size_t msg_size) {
    const sm_policy_params *q = &p->policy;
    CHECK(q->entropy_mode >= 0 && q->entropy_mode <= 2, "entropy mode must be 0 (off), 1 (seed) or 2 (entropix) (got %d)",
          q->entropy_mode);
    if (q->entropy_mode != 0) { /* the thresholds matter only when it is on */
        CHECK(in_range(q->entropy_high, 0.0f, 1e6f), "entropy_high must be >= 0 (got %g)", q->entropy_high);
        CHECK(in_range(q->entropy_low, 0.0f, 1e6f), "entropy_low must be >= 0 (got %g)", q->entropy_low);
        CHECK(in_range(q->varentropy_low, 0.0f, 1e6f), "varentropy_low must be >= 0 (got %g)", q->varentropy_low);
        CHECK(isfinite(q->entropy_factor) && q->entropy_factor > 0.0f && q->entropy_factor <= 10.0f,
              "entropy_factor must be in (0, 10] (got %g)", q->entropy_factor);
        CHECK(isfinite(q->entropy_raise) && q->entropy_raise > 0.0f && q->entropy_raise <= 10.0f,
              "entropy_raise must be in (0, 10] (got %g)", q->entropy_raise);
    }
    const sm_intervention_params *iv = &p->interventions;
    CHECK(iv->n_safety_rules >= 0 && (iv->n_safety_rules == 0 || iv->safety_rules),
          "safety rules: count %d without an array", iv->n_safety_rules);
    for (int32_t i = 0; i < iv->n_safety_rules; i++) {
        const sm_safety_rule *r = &iv->safety_rules[i];
        CHECK(r->metric >= SM_SAFETY_MAX_ABS && r->metric <= SM_SAFETY_NORM_ZSCORE, "safety rule %d: unknown metric %d", i,
              (int)r->metric);
        CHECK(r->action == SM_SAFETY_RESAMPLE || r->action == SM_SAFETY_STOP, "safety rule %d: unknown action %d", i,
              (int)r->action);
        CHECK(isfinite(r->threshold), "safety rule %d: the threshold must be a finite number", i);
    }
    CHECK(iv->safety_max_retries >= 0, "safety_max_retries must be >= 0 (got %d)", iv->safety_max_retries);
    const sm_steer_rule *sr = &iv->steer_rule;
    if (sr->vector) {
        CHECK(sr->n_embd >= 1 && sr->len >= sr->n_embd && sr->len % sr->n_embd == 0,
              "steer rule: a vector of %d floats is not a whole number of %d-float layers", sr->len, sr->n_embd);
        CHECK(sr->signal >= SM_STEER_SIGNAL_ENTROPY && sr->signal <= SM_STEER_SIGNAL_LAYER_NORM,
              "steer rule: unknown signal %d", (int)sr->signal);
        CHECK(isfinite(sr->threshold) && isfinite(sr->on) && isfinite(sr->off) && isfinite(sr->target) &&
                  isfinite(sr->gain) && isfinite(sr->min_strength) && isfinite(sr->max_strength),
              "steer rule: its numbers must be finite");
        CHECK(sr->gain == 0.0f || sr->min_strength <= sr->max_strength,
              "steer rule: min_strength %g is above max_strength %g", sr->min_strength, sr->max_strength);
    }
    const sm_lookahead_params *la = &iv->lookahead;
    CHECK(la->k == 0 || (la->k >= 2 && la->k <= SM_MAX_BRANCHES), "lookahead k must be 0 (off) or in [2, %d] (got %d)",
          SM_MAX_BRANCHES, la->k);
    if (la->k != 0) {
        CHECK(la->depth >= 1 && la->depth <= 64, "lookahead depth must be in [1, 64] (got %d)", la->depth);
        CHECK(in_range(la->entropy, 0.0f, 1e6f), "lookahead entropy must be >= 0 (got %g)", la->entropy);
        CHECK(la->score == SM_LOOKAHEAD_MEAN_LOGPROB || la->score == SM_LOOKAHEAD_MARGIN || la->score == SM_LOOKAHEAD_COHERENCE,
              "lookahead score must be mean_logprob, margin or coherence (got %d)", (int)la->score);
    }
    CHECK(!iv->tool_marker || iv->tool_marker[0], "the tool marker must not be empty");
    CHECK(!iv->tool_marker_end || iv->tool_marker_end[0], "the tool marker's end must not be empty");
    CHECK(iv->inject_every >= 0, "inject_every must be >= 0 (got %d)", iv->inject_every);
    return SM_OK;
}
