#include "server/request.h"
#include "server/json_util.h"

#include <math.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

bool api_fail(api_error *err, unsigned status, const char *param, const char *fmt, ...) {
    err->status = status;
    err->type = status >= 500 ? "server_error" : "invalid_request_error";
    err->code = NULL;
    snprintf(err->param, sizeof err->param, "%s", param ? param : "");
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err->message, sizeof err->message, fmt, ap);
    va_end(ap);
    return false;
}

const cJSON *json_field(const cJSON *object, const char *key) {
    const cJSON *item = cJSON_GetObjectItemCaseSensitive(object, key);
    return cJSON_IsNull(item) ? NULL : item;
}

bool get_number_field(const cJSON *object, const char *key, const char *param, double lo, double hi,
                      double *out, api_error *err) {
    const cJSON *item = json_field(object, key);
    if (!item) return true;
    if (!cJSON_IsNumber(item) || !isfinite(item->valuedouble) || item->valuedouble < lo || item->valuedouble > hi)
        return api_fail(err, 400, param, "'%s' must be a number in [%g, %g]", param, lo, hi);
    *out = item->valuedouble;
    return true;
}

bool get_int_field(const cJSON *object, const char *key, const char *param, long long lo, long long hi,
                   long long *out, api_error *err) {
    const cJSON *item = json_field(object, key);
    if (!item) return true;
    double v = cJSON_IsNumber(item) ? item->valuedouble : NAN;
    if (!isfinite(v) || v != floor(v) || v < (double)lo || v > (double)hi)
        return api_fail(err, 400, param, "'%s' must be an integer in [%lld, %lld]", param, lo, hi);
    *out = (long long)v;
    return true;
}

bool get_bool_field(const cJSON *object, const char *key, const char *param, bool *out, api_error *err) {
    const cJSON *item = json_field(object, key);
    if (!item) return true;
    if (!cJSON_IsBool(item)) return api_fail(err, 400, param, "'%s' must be true or false", param);
    *out = cJSON_IsTrue(item);
    return true;
}

static bool get_float(const cJSON *o, const char *key, const char *param, double lo, double hi, float *out,
                      api_error *err) {
    double v = *out;
    if (!get_number_field(o, key, param, lo, hi, &v, err)) return false;
    *out = (float)v;
    return true;
}

static bool get_i32(const cJSON *o, const char *key, const char *param, long long lo, long long hi, int32_t *out,
                    api_error *err) {
    long long v = *out;
    if (!get_int_field(o, key, param, lo, hi, &v, err)) return false;
    *out = (int32_t)v;
    return true;
}

uint64_t fresh_seed(void) {
    static atomic_uint_fast64_t counter;
    uint64_t x = (uint64_t)time(NULL) * 0x9E3779B97F4A7C15ULL + atomic_fetch_add(&counter, 1) * 0xBF58476D1CE4E5B9ULL;
    x ^= x >> 31;
    x *= 0x94D049BB133111EBULL;
    x ^= x >> 29;
    return x & 0xFFFFFFFFu; /* short enough to type back */
}

/* ------------------------------------------------------------------ */

static bool parse_sampling(const cJSON *b, gen_request *r, api_error *err) {
    sm_sampling_params *s = &r->params.sampling;
    long long seed = -1;
    if (!get_float(b, "temperature", "temperature", 0, 100, &s->temperature, err) ||
        !get_float(b, "top_p", "top_p", 0, 1, &s->top_p, err) ||
        !get_i32(b, "top_k", "top_k", 0, 1 << 30, &s->top_k, err) ||
        !get_float(b, "min_p", "min_p", 0, 1, &s->min_p, err) ||
        !get_float(b, "repeat_penalty", "repeat_penalty", 0.01, 100, &s->repeat_penalty, err) ||
        !get_i32(b, "repeat_last_n", "repeat_last_n", 0, 1 << 30, &s->repeat_last_n, err) ||
        !get_float(b, "dry_multiplier", "dry_multiplier", 0, 100, &s->dry_multiplier, err) ||
        !get_float(b, "dry_base", "dry_base", 1, 100, &s->dry_base, err) ||
        !get_i32(b, "dry_allowed_length", "dry_allowed_length", 1, 1 << 30, &s->dry_allowed_length, err) ||
        !get_i32(b, "dry_penalty_last_n", "dry_penalty_last_n", -1, 1 << 30, &s->dry_penalty_last_n, err) ||
        !get_float(b, "top_n_sigma", "top_n_sigma", -1e6, 100, &s->top_n_sigma, err) ||
        !get_float(b, "typical_p", "typical_p", 0, 1, &s->typical_p, err) ||
        !get_float(b, "xtc_probability", "xtc_probability", 0, 1, &s->xtc_probability, err) ||
        !get_float(b, "xtc_threshold", "xtc_threshold", 0, 1, &s->xtc_threshold, err) ||
        !get_float(b, "dynatemp_range", "dynatemp_range", 0, 100, &s->dynatemp_range, err) ||
        !get_float(b, "dynatemp_exponent", "dynatemp_exponent", 0, 100, &s->dynatemp_exponent, err) ||
        !get_i32(b, "mirostat", "mirostat", 0, 2, &s->mirostat, err) ||
        !get_float(b, "mirostat_tau", "mirostat_tau", 0, 100, &s->mirostat_tau, err) ||
        !get_float(b, "mirostat_eta", "mirostat_eta", 0, 10, &s->mirostat_eta, err) ||
        !get_int_field(b, "seed", "seed", -1, 9007199254740992LL, &seed, err))
        return false;
    if (s->mirostat == 1) return api_fail(err, 400, "mirostat", "'mirostat' 1 (v1) is not offered: 0 or 2");
    if (s->top_p <= 0.0f) return api_fail(err, 400, "top_p", "'top_p' must be in (0, 1]");
    if (s->min_p >= 1.0f) return api_fail(err, 400, "min_p", "'min_p' must be in [0, 1)");
    if (!get_float(b, "frequency_penalty", "frequency_penalty", -2, 2, &s->frequency_penalty, err) ||
        !get_float(b, "presence_penalty", "presence_penalty", -2, 2, &s->presence_penalty, err))
        return false;
    /* What the client set is what it gets: the policy may not move it. */
    r->params.policy.hold_temperature = json_field(b, "temperature") != NULL;
    r->params.policy.hold_repeat_penalty = json_field(b, "repeat_penalty") || json_field(b, "frequency_penalty") ||
                                           json_field(b, "presence_penalty");
    r->seed_given = seed >= 0;
    /* Unsent: serve --seed's when it was given (as llama-server), else a fresh one. */
    s->seed = seed >= 0 ? (uint64_t)seed : s->seed != SEED_UNSET ? s->seed : fresh_seed();
    return true;
}

/* llama-server's "samplers": names (["top_k", "top_p", "infill"]) or one
 * letter each ("kpi"), run in the chain's order (sm_sampling_params_set_samplers). */
static bool parse_samplers(const cJSON *b, gen_request *r, api_error *err) {
    enum { MAX_SAMPLERS = 32 };
    const cJSON *v = json_field(b, "samplers"), *item;
    if (!v || cJSON_IsNull(v)) return true;
    sm_error e;
    sm_status st;
    if (cJSON_IsString(v)) {
        st = sm_sampling_params_set_sampler_letters(&r->params.sampling, v->valuestring, &e);
    } else if (cJSON_IsArray(v)) {
        const char *names[MAX_SAMPLERS];
        int n = 0;
        cJSON_ArrayForEach(item, v) {
            if (!cJSON_IsString(item) || n == MAX_SAMPLERS)
                return api_fail(err, 400, "samplers", "'samplers' must be at most %d sampler names", MAX_SAMPLERS);
            names[n++] = item->valuestring;
        }
        st = sm_sampling_params_set_samplers(&r->params.sampling, names, n, &e);
    } else {
        return api_fail(err, 400, "samplers", "'samplers' must be an array of sampler names or a string of letters");
    }
    return st == SM_OK ? true : api_fail(err, 400, "samplers", "%s", e.message);
}

/* OpenAI's {"token id": bias} (bias in [-100, 100]; -100 bans), or
 * llama-server's [[id, bias], ...] with false for a ban. */
static bool add_bias(gen_request *r, double token, const cJSON *bias, const char *param, int n_vocab,
                     api_error *err) {
    if (!isfinite(token) || token != floor(token) || token < 0 || token >= n_vocab)
        return api_fail(err, 400, param, "'%s': token ids are integers in [0, %d)", param, n_vocab);
    float b;
    if (cJSON_IsFalse(bias)) b = -INFINITY;
    else if (cJSON_IsNumber(bias) && isfinite(bias->valuedouble) && fabs(bias->valuedouble) <= 100)
        b = bias->valuedouble <= -100 ? -INFINITY : (float)bias->valuedouble;
    else return api_fail(err, 400, param, "'%s': a bias is a number in [-100, 100] (or false to ban)", param);
    if (r->n_logit_bias == MAX_LOGIT_BIAS) return api_fail(err, 400, "logit_bias", "at most %d biases", MAX_LOGIT_BIAS);
    r->logit_bias[r->n_logit_bias++] = (sm_logit_bias){(sm_token)token, b};
    return true;
}

/* A bias on a text (llama-server's form): on each of its tokens. */
static bool add_text_bias(gen_request *r, const sm_model *model, const char *text, const cJSON *bias, const char *param,
                          api_error *err) {
    sm_tokens toks;
    sm_error terr = {0};
    if (!*text) return api_fail(err, 400, param, "'%s': an empty text has no tokens", param);
    if (sm_tokenize(model, text, strlen(text), false, false, &toks, &terr) != SM_OK)
        return api_fail(err, 400, param, "'%s': %s", param, terr.message);
    bool ok = true;
    for (int32_t k = 0; ok && k < toks.n; k++) ok = add_bias(r, toks.data[k], bias, param, sm_model_n_vocab(model), err);
    sm_tokens_free(&toks);
    return ok;
}

static bool parse_logit_bias(const cJSON *b, gen_request *r, const sm_model *model, api_error *err) {
    int n_vocab = sm_model_n_vocab(model);
    const cJSON *lb = json_field(b, "logit_bias");
    if (!lb) return true;
    if (!cJSON_IsObject(lb) && !cJSON_IsArray(lb))
        return api_fail(err, 400, "logit_bias", "'logit_bias' must be an object of token id (or text) -> bias");
    r->logit_bias = calloc(MAX_LOGIT_BIAS, sizeof *r->logit_bias);
    if (!r->logit_bias) return api_fail(err, 500, NULL, "out of memory");
    const cJSON *item;
    int i = 0;
    cJSON_ArrayForEach(item, lb) {
        char param[64];
        if (cJSON_IsObject(lb)) {
            snprintf(param, sizeof param, "logit_bias.%.40s", item->string);
            char *end;
            double token = strtod(item->string, &end);
            bool is_id = end != item->string && !*end;
            if (!(is_id ? add_bias(r, token, item, param, n_vocab, err)
                        : add_text_bias(r, model, item->string, item, param, err)))
                return false;
        } else {
            snprintf(param, sizeof param, "logit_bias[%d]", i);
            const cJSON *key = cJSON_GetArrayItem(item, 0);
            if (!cJSON_IsArray(item) || cJSON_GetArraySize(item) != 2 || !(cJSON_IsNumber(key) || cJSON_IsString(key)))
                return api_fail(err, 400, param, "'%s' must be [token id or text, bias]", param);
            if (!(cJSON_IsNumber(key) ? add_bias(r, key->valuedouble, cJSON_GetArrayItem(item, 1), param, n_vocab, err)
                                      : add_text_bias(r, model, key->valuestring, cJSON_GetArrayItem(item, 1), param, err)))
                return false;
        }
        i++;
    }
    return true;
}

static bool add_stop(gen_request *r, const cJSON *item, const char *param, api_error *err) {
    if (!cJSON_IsString(item) || !item->valuestring[0])
        return api_fail(err, 400, param, "'%s' must be a non-empty string", param);
    if (r->n_stops == MAX_STOPS) return api_fail(err, 400, "stop", "at most %d stop strings", MAX_STOPS);
    r->stops[r->n_stops] = strdup(item->valuestring);
    if (!r->stops[r->n_stops]) return api_fail(err, 500, NULL, "out of memory");
    r->n_stops++;
    return true;
}

static bool parse_stop(const cJSON *b, gen_request *r, api_error *err) {
    const cJSON *stop = json_field(b, "stop");
    if (!stop) return true;
    if (cJSON_IsString(stop)) return add_stop(r, stop, "stop", err);
    if (!cJSON_IsArray(stop)) return api_fail(err, 400, "stop", "'stop' must be a string or an array of strings");
    int i = 0;
    const cJSON *item;
    cJSON_ArrayForEach(item, stop) {
        char param[32];
        snprintf(param, sizeof param, "stop[%d]", i++);
        if (!add_stop(r, item, param, err)) return false;
    }
    return true;
}

static bool parse_length(const cJSON *b, gen_request *r, api_error *err) {
    sm_gen_params *p = &r->params;
    if (p->n_predict == N_PREDICT_UNSET) p->n_predict = r->api == API_COMPLETIONS ? 16 : -1;
    if (!get_i32(b, "n_predict", "n_predict", -1, 1 << 30, &p->n_predict, err) ||
        !get_i32(b, "max_tokens", "max_tokens", 0, 1 << 30, &p->n_predict, err) ||
        !get_i32(b, "max_completion_tokens", "max_completion_tokens", 0, 1 << 30, &p->n_predict, err))
        return false;
    long long n = 1;
    if (!get_int_field(b, "n", "n", 1, MAX_CHOICES, &n, err)) return false;
    if (n > 1 && r->api == API_LLAMA) return api_fail(err, 400, "n", "'n' > 1 is for the OpenAI endpoints");
    r->n_choices = (int)n;
    return true;
}

static bool parse_logprobs(const cJSON *b, gen_request *r, api_error *err) {
    long long n = 0;
    switch (r->api) {
    case API_COMPLETIONS: {
        const cJSON *lp = json_field(b, "logprobs");
        if (cJSON_IsBool(lp)) { /* some clients send a boolean here */
            r->logprobs = cJSON_IsTrue(lp);
            return true;
        }
        if (!get_int_field(b, "logprobs", "logprobs", 0, MAX_TOP_LOGPROBS, &n, err)) return false;
        r->logprobs = lp != NULL;
        r->n_probs = (int)n;
        return true;
    }
    case API_CHAT:
        if (!get_bool_field(b, "logprobs", "logprobs", &r->logprobs, err) ||
            !get_int_field(b, "top_logprobs", "top_logprobs", 0, MAX_TOP_LOGPROBS, &n, err))
            return false;
        if (n > 0 && !r->logprobs)
            return api_fail(err, 400, "top_logprobs", "'top_logprobs' needs 'logprobs': true");
        r->n_probs = (int)n;
        return true;
    case API_LLAMA:
    case API_INFILL: /* not seen: an /infill request's api is API_LLAMA by now */
        if (!get_int_field(b, "n_probs", "n_probs", 0, MAX_N_PROBS, &n, err)) return false;
        r->logprobs = n > 0;
        r->n_probs = (int)n;
        return true;
    }
    return true;
}

/* The JSON schema a request gives, as llama-server reads it: its
 * "json_schema", or response_format's "schema" (json_object) or
 * "json_schema.schema" (json_schema). NULL: none; *bad on a wrong shape. */
static const cJSON *requested_schema(const cJSON *b, const cJSON *rf, const char **bad) {
    const cJSON *schema = json_field(b, "json_schema");
    if (schema && cJSON_IsNull(schema)) schema = NULL;
    if (!rf || cJSON_IsNull(rf)) return schema;
    const cJSON *type = json_field(rf, "type");
    if (strcmp(type->valuestring, "json_object") == 0) {
        const cJSON *inner = json_field(rf, "schema");
        return inner && !cJSON_IsNull(inner) ? inner : schema;
    }
    if (strcmp(type->valuestring, "json_schema") == 0) {
        const cJSON *wrapper = json_field(rf, "json_schema");
        const cJSON *inner = cJSON_IsObject(wrapper) ? json_field(wrapper, "schema") : NULL;
        if (!cJSON_IsObject(inner)) *bad = "response_format.json_schema.schema";
        return inner;
    }
    return schema;
}

/* A grammar: llama-server's "grammar" (GBNF) or "json_schema", or
 * OpenAI's response_format (json_object, json_schema); schemas become GBNF
 * by llama.cpp's own converter. */
static bool parse_grammar(const cJSON *b, gen_request *r, sm_model *model, api_error *err) {
    const cJSON *g = json_field(b, "grammar"), *rf = json_field(b, "response_format");
    const char *grammar = NULL;
    if (g && !cJSON_IsNull(g)) {
        if (!cJSON_IsString(g)) return api_fail(err, 400, "grammar", "'grammar' must be a GBNF string");
        if (*g->valuestring) grammar = g->valuestring;
    }
    bool json_object = false;
    if (rf && !cJSON_IsNull(rf)) {
        const cJSON *type = cJSON_IsObject(rf) ? json_field(rf, "type") : NULL;
        if (!cJSON_IsString(type))
            return api_fail(err, 400, "response_format", "'response_format' must be an object with a 'type'");
        if (strcmp(type->valuestring, "json_object") != 0 && strcmp(type->valuestring, "json_schema") != 0 &&
            strcmp(type->valuestring, "text") != 0)
            return api_fail(err, 400, "response_format.type", "'response_format.type' must be text, json_object or json_schema");
        json_object = strcmp(type->valuestring, "json_object") == 0;
    }
    const char *bad = NULL;
    const cJSON *schema = requested_schema(b, rf, &bad);
    if (bad) return api_fail(err, 400, bad, "'%s' must be a JSON schema object", bad);
    if (schema && !cJSON_IsObject(schema) && !cJSON_IsTrue(schema))
        return api_fail(err, 400, "json_schema", "'json_schema' must be a JSON schema object");
    if (grammar && (schema || json_object))
        return api_fail(err, 400, "grammar", "give 'grammar' or a JSON schema (json_schema, response_format), not both");
    char *converted = NULL;
    if (schema) {
        /* An empty schema means any JSON object, as in llama-server. */
        char *text = cJSON_GetArraySize(schema) == 0 ? strdup("{\"type\": \"object\"}") : cJSON_PrintUnformatted(schema);
        sm_error why = {0};
        converted = text ? sm_grammar_from_json_schema(text, &why) : NULL;
        free(text);
        if (!converted) return api_fail(err, 400, "json_schema", "the JSON schema cannot be used: %s", why.message);
        grammar = converted;
    } else if (json_object) {
        grammar = SM_GRAMMAR_JSON;
    }
    if (!grammar) return true;
    sm_error invalid;
    if (sm_grammar_check(model, grammar, &invalid) != SM_OK) {
        free(converted);
        return api_fail(err, 400, g ? "grammar" : "json_schema", "the grammar does not parse as GBNF (root rule 'root')");
    }
    r->grammar = converted ? converted : strdup(grammar);
    if (!r->grammar) return api_fail(err, 500, NULL, "out of memory");
    r->params.grammar = r->grammar;
    return true;
}

/* llama-server's: return_tokens, cache_prompt, ignore_eos, timings_per_token, return_progress. */
static bool parse_llama_fields(const cJSON *b, gen_request *r, api_error *err) {
    r->cache_prompt = true;
    if (!get_bool_field(b, "return_tokens", "return_tokens", &r->return_tokens, err) ||
        !get_bool_field(b, "cache_prompt", "cache_prompt", &r->cache_prompt, err) ||
        !get_bool_field(b, "ignore_eos", "ignore_eos", &r->params.ignore_eos, err) ||
        !get_bool_field(b, "timings_per_token", "timings_per_token", &r->timings_per_token, err) ||
        !get_bool_field(b, "return_progress", "return_progress", &r->return_progress, err))
        return false;
    if (!get_bool_field(b, "post_sampling_probs", "post_sampling_probs", &r->params.n_probs_post_sampling, err) ||
        !get_i32(b, "n_keep", "n_keep", -1, 1 << 30, &r->params.n_keep, err) ||
        !get_i32(b, "n_discard", "n_discard", 0, 1 << 30, &r->params.n_discard, err))
        return false;
    long long id_slot = -1, t_max_predict_ms = 0;
    if (!get_int_field(b, "id_slot", "id_slot", -1, 1 << 20, &id_slot, err) ||
        !get_i32(b, "n_indent", "n_indent", 0, 1 << 20, &r->params.n_indent, err) ||
        !get_int_field(b, "t_max_predict_ms", "t_max_predict_ms", -1, INT32_MAX, &t_max_predict_ms, err))
        return false;
    r->params.t_max_predict_ms = t_max_predict_ms > 0 ? (int32_t)t_max_predict_ms : 0; /* <= 0: off, as llama-server */
    long long t_max_prompt_ms = 0;
    if (!get_int_field(b, "t_max_prompt_ms", "t_max_prompt_ms", -1, INT32_MAX, &t_max_prompt_ms, err)) return false;
    if (t_max_prompt_ms > 0 && r->api == API_CHAT)
        return api_fail(err, 400, "t_max_prompt_ms", "'t_max_prompt_ms' is for completions: a chat's turn is not cut");
    r->t_max_prompt_ms = t_max_prompt_ms > 0 ? (int32_t)t_max_prompt_ms : 0;
    r->id_slot = (int)id_slot;
    const cJSON *fields = json_field(b, "response_fields"), *field;
    if (fields && !cJSON_IsNull(fields)) {
        if (!cJSON_IsArray(fields)) return api_fail(err, 400, "response_fields", "'response_fields' must be an array of strings");
        cJSON_ArrayForEach(field, fields)
            if (!cJSON_IsString(field)) return api_fail(err, 400, "response_fields", "'response_fields' must be an array of strings");
        if (r->api != API_LLAMA && cJSON_GetArraySize(fields) > 0)
            return api_fail(err, 400, "response_fields", "'response_fields' is for /completion");
        if (cJSON_GetArraySize(fields) > 0 && !(r->response_fields = cJSON_Duplicate(fields, true)))
            return api_fail(err, 500, NULL, "out of memory");
    }
    bool verbose = false;
    if (json_field(b, "verbose")) {
        if (!get_bool_field(b, "verbose", "verbose", &verbose, err)) return false;
        r->verbose = verbose ? 1 : 0;
    } else {
        r->verbose = -1;
    }
    if (r->params.ignore_eos) r->params.stop_at_bos = false; /* nothing but the length or a stop ends it */
    if (!r->params.context_shift && (json_field(b, "n_keep") || json_field(b, "n_discard")))
        return api_fail(err, 400, json_field(b, "n_keep") ? "n_keep" : "n_discard",
                        "n_keep and n_discard shape a context shift: start the server with --context-shift");
    return true;
}

static bool parse_stream(const cJSON *b, gen_request *r, api_error *err) {
    if (!get_bool_field(b, "stream", "stream", &r->stream, err)) return false;
    const cJSON *so = json_field(b, "stream_options");
    if (!so) return true;
    if (!cJSON_IsObject(so)) return api_fail(err, 400, "stream_options", "'stream_options' must be an object");
    return get_bool_field(so, "include_usage", "stream_options.include_usage", &r->include_usage, err);
}

/* ------------------------------------------------------------------ */
/* The "selfmod" object                                                */
/* ------------------------------------------------------------------ */

static bool parse_operators(const cJSON *ops, gen_request *r, api_error *err) {
    if (!cJSON_IsArray(ops))
        return api_fail(err, 400, "selfmod.operators", "'selfmod.operators' must be an array of operator specs");
    int i = 0;
    const cJSON *item;
    cJSON_ArrayForEach(item, ops) {
        char param[48];
        snprintf(param, sizeof param, "selfmod.operators[%d]", i++);
        if (!cJSON_IsString(item))
            return api_fail(err, 400, param, "'%s' must be a string such as \"repetition\"", param);
        if (r->n_operators == MAX_OPERATORS)
            return api_fail(err, 400, param, "at most %d operators", MAX_OPERATORS);
        sm_error e = {0};
        sm_operator *op = sm_operator_from_spec(item->valuestring, &e);
        if (!op) return api_fail(err, 400, param, "%s", e.message);
        r->operators[r->n_operators++] = op;
    }
    return true;
}

static bool parse_retract(const cJSON *v, sm_policy_params *p, api_error *err) {
    if (cJSON_IsBool(v)) {
        p->retract = cJSON_IsTrue(v) ? 1 : 0;
        return true;
    }
    if (cJSON_IsString(v) && strcmp(v->valuestring, "auto") == 0) {
        p->retract = -1;
        return true;
    }
    if (cJSON_IsNumber(v) && (v->valuedouble == -1 || v->valuedouble == 0 || v->valuedouble == 1)) {
        p->retract = (int32_t)v->valuedouble;
        return true;
    }
    return api_fail(err, 400, "selfmod.retract",
                    "'selfmod.retract' must be true, false or \"auto\" (only when aggressive)");
}

static bool parse_fusion_mode(const cJSON *v, sm_fusion_params *f, api_error *err) {
    if (!cJSON_IsString(v) || !sm_fusion_mode_from_name(v->valuestring, &f->mode))
        return api_fail(err, 400, "selfmod.fusion_mode",
                        "'selfmod.fusion_mode' must be one of confidence, average, voting, harmony, adaptive, "
                        "democratic, round_robin, reference, contrastive");
    return true;
}

static bool parse_fusion_weights(const cJSON *v, sm_fusion_params *f, api_error *err) {
    if (!cJSON_IsArray(v) || cJSON_GetArraySize(v) > SM_MAX_MODELS)
        return api_fail(err, 400, "selfmod.fusion_weights", "'selfmod.fusion_weights' must be an array of at most %d numbers",
                        SM_MAX_MODELS);
    f->n_weights = 0;
    const cJSON *item;
    cJSON_ArrayForEach(item, v) {
        if (!cJSON_IsNumber(item) || !(item->valuedouble >= 0) || !isfinite(item->valuedouble))
            return api_fail(err, 400, "selfmod.fusion_weights", "fusion weights must be finite numbers >= 0");
        f->weights[f->n_weights++] = (float)item->valuedouble;
    }
    return true;
}

static bool is_fusion_key(const char *key) { return strncmp(key, "fusion_", 7) == 0 || strcmp(key, "abstain_below") == 0; }

/* One key of the selfmod object; false with err set when it is invalid or
 * unknown. */
static bool parse_selfmod_key(const cJSON *o, const cJSON *v, gen_request *r, api_error *err) {
    sm_policy_params *p = &r->params.policy;
    sm_fusion_params *f = &r->params.fusion;
    sm_gen_params *g = &r->params;
    const char *k = v->string;
    char param[96];
    snprintf(param, sizeof param, "selfmod.%s", k);
    if (cJSON_IsNull(v) || strcmp(k, "preset") == 0) return true; /* the preset went first */
    if (strcmp(k, "enabled") == 0) return get_bool_field(o, k, param, &p->enabled, err);
    if (strcmp(k, "aggressive") == 0) return get_bool_field(o, k, param, &p->aggressive, err);
    if (strcmp(k, "retract") == 0) return parse_retract(v, p, err);
    if (strcmp(k, "window") == 0) return get_i32(o, k, param, 1, 4096, &p->window, err);
    if (strcmp(k, "critical_threshold") == 0) return get_float(o, k, param, 0, 1, &p->critical_threshold, err);
    if (strcmp(k, "confidence_threshold") == 0) return get_float(o, k, param, 0, 1, &p->confidence_threshold, err);
    if (strcmp(k, "sharpen_threshold") == 0) return get_float(o, k, param, 0, 1, &p->sharpen_threshold, err);
    if (strcmp(k, "retract_tokens") == 0) return get_i32(o, k, param, 1, 64, &p->retract_tokens, err);
    if (strcmp(k, "max_retractions") == 0) return get_i32(o, k, param, 0, 1 << 20, &p->max_retractions, err);
    if (strcmp(k, "exploration_prob") == 0) return get_float(o, k, param, 0, 1, &p->exploration_prob, err);
    if (strcmp(k, "repetition_window") == 0) return get_i32(o, k, param, 1, 4096, &p->repetition_window, err);
    if (strcmp(k, "repetition_min_distinct") == 0)
        return get_i32(o, k, param, 1, 4096, &p->repetition_min_distinct, err);
    if (strcmp(k, "operators") == 0) return parse_operators(v, r, err);
    if (strcmp(k, "combine") == 0) {
        if (cJSON_IsString(v) && strcmp(v->valuestring, "first") == 0) g->backtrack.combine = SM_COMBINE_FIRST;
        else if (cJSON_IsString(v) && strcmp(v->valuestring, "max") == 0) g->backtrack.combine = SM_COMBINE_MAX;
        else return api_fail(err, 400, param, "'%s' must be \"first\" or \"max\"", param);
        return true;
    }
    if (strcmp(k, "backtrack_every_n") == 0) return get_i32(o, k, param, 1, 1 << 20, &g->backtrack.every_n, err);
    if (strcmp(k, "max_backtracks") == 0) return get_i32(o, k, param, 0, 1 << 20, &g->backtrack.max_backtracks, err);
    if (strcmp(k, "max_backtracks_per_position") == 0)
        return get_i32(o, k, param, 0, 1 << 20, &g->backtrack.max_per_position, err);
    if (strcmp(k, "events") == 0) return get_bool_field(o, k, param, &r->live_events, err);
    if (strcmp(k, "fusion_mode") == 0) return parse_fusion_mode(v, f, err);
    if (strcmp(k, "fusion_weights") == 0) return parse_fusion_weights(v, f, err);
    if (strcmp(k, "fusion_turn") == 0) return get_i32(o, k, param, 1, 1 << 20, &f->turn, err);
    if (strcmp(k, "fusion_reference") == 0) return get_i32(o, k, param, 0, SM_MAX_MODELS - 1, &f->reference, err);
    if (strcmp(k, "backtrack_every_only") == 0) return get_bool_field(o, k, param, &g->backtrack.every_n_only, err);
    if (strcmp(k, "operator_top_k") == 0) return get_i32(o, k, param, 1, 1000, &g->backtrack.top_n_view, err);
    if (strcmp(k, "operator_temperature") == 0) return get_float(o, k, param, 0, 100, &g->backtrack.input_temperature, err);
    if (strcmp(k, "operator_input") == 0) {
        if (cJSON_IsString(v) && strcmp(v->valuestring, "full") == 0) g->backtrack.input = SM_OPERATOR_INPUT_FULL;
        else if (cJSON_IsString(v) && strcmp(v->valuestring, "original") == 0) g->backtrack.input = SM_OPERATOR_INPUT_ORIGINAL;
        else return api_fail(err, 400, param, "'%s' must be \"full\" or \"original\"", param);
        return true;
    }
    if (strcmp(k, "fusion_alpha") == 0) return get_float(o, k, param, 0, 1, &f->alpha, err);
    if (strcmp(k, "fusion_beta") == 0) return get_float(o, k, param, 0, 100, &f->beta, err);
    if (strcmp(k, "fusion_abstain_below") == 0 || strcmp(k, "abstain_below") == 0)
        return get_float(o, k, param, 0, 1, &f->abstain_below, err);
    return api_fail(err, 400, param, "unknown field '%s'", param);
}

/* selfmod.preset: a built-in policy preset, or one of --preset-dir's files
 * (its policy, and its temperature and penalty where the request sets none). */
static bool apply_preset(const cJSON *b, const char *name, const request_defaults *defaults, gen_request *r,
                         api_error *err) {
    sm_error invalid;
    if (sm_policy_preset(&r->params.policy, name, &invalid) == SM_OK) return true;
    for (int i = 0; i < defaults->n_presets; i++) {
        const named_preset *p = &defaults->presets[i];
        if (strcmp(p->name, name) != 0) continue;
        sm_policy_params was = r->params.policy;
        r->params.policy = p->policy;
        r->params.policy.enabled = was.enabled;
        r->params.policy.hold_temperature = was.hold_temperature;
        r->params.policy.hold_repeat_penalty = was.hold_repeat_penalty;
        if (p->sets_temperature && !json_field(b, "temperature")) r->params.sampling.temperature = p->temperature;
        if (p->sets_repeat_penalty && !json_field(b, "repeat_penalty"))
            r->params.sampling.repeat_penalty = p->repeat_penalty;
        return true;
    }
    char names[512] = "";
    size_t used = 0;
    for (int i = 0; i < defaults->n_presets && used < sizeof names; i++)
        used += (size_t)snprintf(names + used, sizeof names - used, ", %s", defaults->presets[i].name);
    return api_fail(err, 400, "selfmod.preset", "'selfmod.preset': unknown preset '%.60s' (presets: original, fixed, "
                    "tuned, calibrated%s%s)", name, names, defaults->n_presets ? "" : "; serve --preset-dir DIR offers "
                    "tune's files by name");
}

static bool parse_selfmod(const cJSON *b, gen_request *r, int n_models, const request_defaults *defaults,
                          api_error *err) {
    const bool selfmod_default = defaults->selfmod;
    const cJSON *o = json_field(b, "selfmod");
    /* Without a selfmod object a request samples as asked, as with OpenAI
     * and llama-server, unless the server was started with --selfmod. */
    r->params.policy.enabled = o ? true : selfmod_default;
    if (!o) return true;
    if (!cJSON_IsObject(o)) return api_fail(err, 400, "selfmod", "'selfmod' must be an object");
    r->live_events = true;
    /* A preset first, wherever it stands: the object's other keys refine it. */
    const cJSON *preset = json_field(o, "preset");
    if (preset && !cJSON_IsNull(preset)) {
        if (!cJSON_IsString(preset))
            return api_fail(err, 400, "selfmod.preset", "'selfmod.preset' must be a string (original, fixed, tuned)");
        if (!apply_preset(b, preset->valuestring, defaults, r, err)) return false;
    }
    const cJSON *v;
    cJSON_ArrayForEach(v, o) {
        if (is_fusion_key(v->string) && !cJSON_IsNull(v) && n_models < 2)
            return api_fail(err, 400, "selfmod.fusion_mode",
                            "'selfmod.%s' needs several models: this request's model is one model "
                            "(start the server with --models A,B)",
                            v->string);
        if (!parse_selfmod_key(o, v, r, err)) return false;
    }
    if (r->params.fusion.reference >= n_models && n_models > 1)
        return api_fail(err, 400, "selfmod.fusion_reference", "'selfmod.fusion_reference' is %d, but the models are 0 to %d",
                        r->params.fusion.reference, n_models - 1);
    if (r->params.policy.style == SM_POLICY_CALIBRATED) { /* no absolute thresholds, no bursts: refused, not ignored */
        static const char *const FIXED_ONLY[] = {"confidence_threshold", "critical_threshold", "sharpen_threshold",
                                                 "aggressive", "exploration_prob", "repetition_window",
                                                 "repetition_min_distinct", "retract_tokens"};
        for (size_t i = 0; i < sizeof FIXED_ONLY / sizeof *FIXED_ONLY; i++) {
            if (!json_field(o, FIXED_ONLY[i])) continue;
            if (!preset || cJSON_IsNull(preset)) { /* the key chooses the policy it belongs to */
                r->params.policy.style = SM_POLICY_FIXED;
                break;
            }
            return api_fail(err, 400, "selfmod.preset",
                            "'selfmod.%s' belongs to the fixed and original presets, not 'calibrated'", FIXED_ONLY[i]);
        }
    }
    const sm_fusion_params *f = &r->params.fusion;
    if (f->n_weights != 0 && f->n_weights != n_models)
        return api_fail(err, 400, "selfmod.fusion_weights", "%d fusion weights given for %d models", f->n_weights,
                        n_models);
    return true;
}

/* ------------------------------------------------------------------ */
/* Prompts and messages                                                */
/* ------------------------------------------------------------------ */

/* One prompt, in llama-server's forms: a string; token ids, alone or
 * mixed with strings ([1, 2, "text", 3]: the strings tokenized in place, a
 * BOS only when a string comes first); {"prompt_string": "..."}. Several
 * prompts (an array of those) are split by the caller, one request each. */
bool prompt_is_several(const cJSON *prompt) {
    if (!cJSON_IsArray(prompt) || cJSON_GetArraySize(prompt) < 2) return false;
    const cJSON *item;
    cJSON_ArrayForEach(item, prompt) if (cJSON_IsNumber(item)) return false; /* one mixed prompt */
    return true;
}

static bool parse_prompt(const cJSON *b, gen_request *r, int32_t n_vocab, api_error *err) {
    const cJSON *prompt = json_field(b, "prompt");
    if (cJSON_IsArray(prompt) && cJSON_GetArraySize(prompt) == 1) prompt = cJSON_GetArrayItem(prompt, 0);
    if (!prompt) return api_fail(err, 400, "prompt", "'prompt' is required");
    if (cJSON_IsObject(prompt)) {
        const cJSON *text = cJSON_GetObjectItemCaseSensitive(prompt, "prompt_string");
        const cJSON *item;
        cJSON_ArrayForEach(item, prompt)
            if (strcmp(item->string, "prompt_string") != 0)
                return api_fail(err, 400, "prompt", "a prompt object takes only 'prompt_string' here ('%s': "
                                                    "multimodal data is not supported)", item->string);
        if (!cJSON_IsString(text)) return api_fail(err, 400, "prompt", "'prompt.prompt_string' must be a string");
        prompt = text;
    }
    if (cJSON_IsString(prompt)) {
        r->prompt = strdup(prompt->valuestring);
        return r->prompt ? true : api_fail(err, 500, NULL, "out of memory");
    }
    if (!cJSON_IsArray(prompt) || prompt_is_several(prompt))
        return api_fail(err, 400, "prompt", "'prompt' must be a string, token ids (mixed with strings), "
                                            "{\"prompt_string\": ...}, or an array of those");
    const cJSON *item;
    int i = 0;
    cJSON_ArrayForEach(item, prompt) {
        if (cJSON_IsNumber(item) && !json_is_token_id(item, n_vocab))
            return api_fail(err, 400, "prompt", "prompt[%d]: %g is not a token id of this model (0 to %d)", i,
                            item->valuedouble, n_vocab - 1);
        if (!cJSON_IsNumber(item) && !cJSON_IsString(item))
            return api_fail(err, 400, "prompt", "prompt[%d] must be a token id or a string", i);
        i++;
    }
    if (i == 0) return api_fail(err, 400, "prompt", "the prompt is empty: give some text");
    r->prompt_mixed = cJSON_Duplicate(prompt, true);
    return r->prompt_mixed ? true : api_fail(err, 500, NULL, "out of memory");
}

/* A piece of /infill's code: a string, or token ids mixed with strings. */
static bool parse_infill_text(const cJSON *b, const char *key, int32_t n_vocab, cJSON **out, api_error *err) {
    const cJSON *v = json_field(b, key);
    if (!v) return api_fail(err, 400, key, "'%s' is required", key);
    if (cJSON_IsArray(v)) {
        const cJSON *item;
        int i = 0;
        cJSON_ArrayForEach(item, v) {
            if (cJSON_IsNumber(item) ? !json_is_token_id(item, n_vocab) : !cJSON_IsString(item))
                return api_fail(err, 400, key, "%s[%d] must be a token id of this model (0 to %d) or a string", key,
                                i, n_vocab - 1);
            i++;
        }
    } else if (!cJSON_IsString(v)) {
        return api_fail(err, 400, key, "'%s' must be a string, or token ids mixed with strings", key);
    }
    return (*out = cJSON_Duplicate(v, true)) ? true : api_fail(err, 500, NULL, "out of memory");
}

/* input_extra: [{"text": ..., "filename": ...}], llama-server's form. A
 * chunk's "time" is llama.vim's own bookkeeping, sent back with the chunk:
 * no server reads it, and it leaves the prompt as it is. */
static bool parse_infill_extra(const cJSON *b, gen_request *r, api_error *err) {
    const cJSON *extra = json_field(b, "input_extra"), *chunk;
    if (!extra || cJSON_IsNull(extra)) return (r->input_extra = cJSON_CreateArray()) ? true : api_fail(err, 500, NULL, "out of memory");
    if (!cJSON_IsArray(extra))
        return api_fail(err, 400, "input_extra", "'input_extra' must be an array of {\"filename\": string, \"text\": string}");
    int i = 0;
    cJSON_ArrayForEach(chunk, extra) {
        if (!cJSON_IsObject(chunk) || !cJSON_IsString(cJSON_GetObjectItemCaseSensitive(chunk, "text")))
            return api_fail(err, 400, "input_extra", "input_extra[%d] must be an object with a string 'text'", i);
        const cJSON *name = cJSON_GetObjectItemCaseSensitive(chunk, "filename"), *field;
        if (name && !cJSON_IsString(name))
            return api_fail(err, 400, "input_extra", "input_extra[%d].filename must be a string", i);
        cJSON_ArrayForEach(field, chunk)
            if (strcmp(field->string, "text") != 0 && strcmp(field->string, "filename") != 0 &&
                strcmp(field->string, "time") != 0)
                return api_fail(err, 400, "input_extra", "input_extra[%d]: unknown field '%.60s' (a chunk has "
                                                         "'text' and 'filename')", i, field->string);
        i++;
    }
    return (r->input_extra = cJSON_Duplicate(extra, true)) ? true : api_fail(err, 500, NULL, "out of memory");
}

/* POST /infill (llama-server's fill-in-the-middle): the model must have
 * the FIM tokens, or the request is one the server cannot serve (501,
 * llama-server's words). */
static bool parse_infill(const cJSON *b, gen_request *r, const sm_model *model, api_error *err) {
    sm_special_tokens sp = sm_model_special_tokens(model);
    if (sp.fim_prefix < 0 || sp.fim_suffix < 0 || sp.fim_middle < 0) {
        api_fail(err, 501, NULL, "Infill is not supported by this model: %s%s%s", sp.fim_prefix < 0 ? "prefix token is missing. " : "",
                 sp.fim_suffix < 0 ? "suffix token is missing. " : "", sp.fim_middle < 0 ? "middle token is missing. " : "");
        err->type = "not_supported_error";
        return false;
    }
    r->infill = true;
    const cJSON *prompt = json_field(b, "prompt");
    if (prompt && !cJSON_IsNull(prompt) && !cJSON_IsString(prompt))
        return api_fail(err, 400, "prompt", "'prompt' must be a string (the beginning of the middle)");
    r->prompt = strdup(cJSON_IsString(prompt) ? prompt->valuestring : "");
    if (!r->prompt) return api_fail(err, 500, NULL, "out of memory");
    int32_t n_vocab = sm_model_n_vocab(model);
    return parse_infill_text(b, "input_prefix", n_vocab, &r->input_prefix, err) &&
           parse_infill_text(b, "input_suffix", n_vocab, &r->input_suffix, err) && parse_infill_extra(b, r, err);
}

/* A message's content: a string, or an array of {"type": "text", "text"}
 * joined by sep once there is text, as llama-server joins them
 * (common/chat.cpp: "\n", and "\n\n" in an assistant prefill). */
static char *message_text(const cJSON *content, const char *sep, const char *param, api_error *err) {
    if (cJSON_IsString(content)) return strdup(content->valuestring);
    if (!cJSON_IsArray(content)) {
        api_fail(err, 400, param, "'%s' must be a string or an array of text parts", param);
        return NULL;
    }
    size_t len = 0;
    const cJSON *part;
    cJSON_ArrayForEach(part, content) {
        const cJSON *text = cJSON_GetObjectItemCaseSensitive(part, "text");
        const cJSON *type = cJSON_GetObjectItemCaseSensitive(part, "type");
        if (!cJSON_IsString(text) || !cJSON_IsString(type) || strcmp(type->valuestring, "text") != 0) {
            api_fail(err, 400, param, "'%s': only text parts ({\"type\": \"text\", \"text\": ...}) are supported", param);
            return NULL;
        }
        len += strlen(text->valuestring) + strlen(sep);
    }
    char *out = malloc(len + 1);
    if (!out) {
        api_fail(err, 500, NULL, "out of memory");
        return NULL;
    }
    out[0] = '\0';
    cJSON_ArrayForEach(part, content) {
        if (out[0]) strcat(out, sep);
        strcat(out, cJSON_GetObjectItemCaseSensitive(part, "text")->valuestring);
    }
    return out;
}

static const char *message_role(const cJSON *m, int i, int n, api_error *err) {
    char param[48];
    snprintf(param, sizeof param, "messages[%d].role", i);
    const cJSON *role = cJSON_GetObjectItemCaseSensitive(m, "role");
    if (!cJSON_IsString(role)) {
        api_fail(err, 400, param, "'%s' must be a string", param);
        return NULL;
    }
    const char *name = role->valuestring;
    bool system = strcmp(name, "system") == 0 || strcmp(name, "developer") == 0;
    if (!system && strcmp(name, "user") != 0 && strcmp(name, "assistant") != 0) {
        api_fail(err, 400, param, "role '%s' is not supported (system, user, assistant)", name);
        return NULL;
    }
    /* The last message is the user's, or the beginning of the answer to it
     * (an assistant prefill, as llama-server takes it). */
    if (i == n - 1 && strcmp(name, "user") != 0 && !(strcmp(name, "assistant") == 0 && i > 0)) {
        api_fail(err, 400, param, "the last message must be the user's (or the start of the assistant's answer to it)");
        return NULL;
    }
    return system ? "system" : name;
}

/* A conversation with tools (tools given, or tool calls and results in
 * the messages): kept as OpenAI's JSON for the template. Each message is
 * an object with a role; llama.cpp's parser checks the rest. */
static bool uses_tools(const cJSON *b) {
    const cJSON *tools = json_field(b, "tools"), *messages = json_field(b, "messages"), *m;
    if (cJSON_IsArray(tools) && cJSON_GetArraySize(tools) > 0) return true;
    cJSON_ArrayForEach(m, messages) {
        const cJSON *role = cJSON_GetObjectItemCaseSensitive(m, "role");
        if (cJSON_GetObjectItemCaseSensitive(m, "tool_calls") ||
            (cJSON_IsString(role) && strcmp(role->valuestring, "tool") == 0))
            return true;
    }
    return false;
}

static bool parse_tool_request(const cJSON *b, gen_request *r, api_error *err) {
    const cJSON *messages = json_field(b, "messages"), *tools = json_field(b, "tools"), *m;
    if (!cJSON_IsArray(messages) || cJSON_GetArraySize(messages) == 0)
        return api_fail(err, 400, "messages", "'messages' must be a non-empty array");
    int i = 0;
    cJSON_ArrayForEach(m, messages) {
        const cJSON *role = cJSON_GetObjectItemCaseSensitive(m, "role");
        if (!cJSON_IsObject(m) || !cJSON_IsString(role))
            return api_fail(err, 400, "messages", "messages[%d] must be an object with a role", i);
        i++;
    }
    if (tools && !cJSON_IsNull(tools) && !cJSON_IsArray(tools))
        return api_fail(err, 400, "tools", "'tools' must be an array of {\"type\": \"function\", \"function\": ...}");
    r->tool_mode = true;
    r->messages_json = cJSON_PrintUnformatted(messages);
    r->tools_json = cJSON_IsArray(tools) ? cJSON_PrintUnformatted(tools) : NULL;
    if (!r->messages_json || (cJSON_IsArray(tools) && !r->tools_json)) return api_fail(err, 500, NULL, "out of memory");
    return true;
}

/* OpenAI's {"type": "function", "function": {"name": N}}: the call must be
 * to N. llama.cpp's formats know only auto/required/none, so the template
 * sees N alone among the tools and the call is required. */
static bool choose_named_tool(const cJSON *b, const cJSON *choice, gen_request *r, api_error *err) {
    const cJSON *type = cJSON_GetObjectItemCaseSensitive(choice, "type");
    const cJSON *fn = cJSON_GetObjectItemCaseSensitive(choice, "function");
    const cJSON *name = cJSON_IsObject(fn) ? cJSON_GetObjectItemCaseSensitive(fn, "name") : NULL;
    if (!cJSON_IsString(type) || strcmp(type->valuestring, "function") != 0 || !cJSON_IsString(name))
        return api_fail(err, 400, "tool_choice",
                        "'tool_choice' must be \"auto\", \"required\", \"none\" or {\"type\": \"function\", \"function\": "
                        "{\"name\": ...}}");
    const cJSON *tools = json_field(b, "tools"), *t;
    cJSON_ArrayForEach(t, tools) {
        const cJSON *f = cJSON_GetObjectItemCaseSensitive(t, "function");
        const cJSON *n = cJSON_IsObject(f) ? cJSON_GetObjectItemCaseSensitive(f, "name") : NULL;
        if (!cJSON_IsString(n) || strcmp(n->valuestring, name->valuestring) != 0) continue;
        cJSON *only = cJSON_CreateArray();
        cJSON_AddItemToArray(only, cJSON_Duplicate(t, true));
        cJSON_free(r->tools_json);
        r->tools_json = cJSON_PrintUnformatted(only);
        cJSON_Delete(only);
        r->tool_choice = strdup("required");
        if (!r->tools_json || !r->tool_choice) return api_fail(err, 500, NULL, "out of memory");
        return true;
    }
    return api_fail(err, 400, "tool_choice", "tool_choice names the function '%.100s', which is not among 'tools'",
                    name->valuestring);
}

/* tool_choice ("auto", "required", "none", or one function by name) and
 * parallel_tool_calls. */
static bool parse_tool_choice(const cJSON *b, gen_request *r, api_error *err) {
    const cJSON *choice = json_field(b, "tool_choice");
    if (cJSON_IsObject(choice)) {
        if (!choose_named_tool(b, choice, r, err)) return false;
    } else if (choice && !cJSON_IsNull(choice)) {
        if (!cJSON_IsString(choice) || (strcmp(choice->valuestring, "auto") != 0 &&
                                        strcmp(choice->valuestring, "required") != 0 &&
                                        strcmp(choice->valuestring, "none") != 0))
            return api_fail(err, 400, "tool_choice",
                            "'tool_choice' must be \"auto\", \"required\", \"none\" or {\"type\": \"function\", "
                            "\"function\": {\"name\": ...}}");
        if (!r->tool_mode && strcmp(choice->valuestring, "required") == 0)
            return api_fail(err, 400, "tool_choice", "tool_choice \"required\" needs 'tools'");
        r->tool_choice = strdup(choice->valuestring);
        if (!r->tool_choice) return api_fail(err, 500, NULL, "out of memory");
    }
    return get_bool_field(b, "parallel_tool_calls", "parallel_tool_calls", &r->parallel_tool_calls, err);
}

/* chat_template_kwargs as llama-server merges them: the request's members
 * over serve's --chat-template-kwargs; reasoning_effort becomes the
 * template's variable of that name ("none": enable_thinking false). */
static bool parse_template_kwargs(const cJSON *b, const request_defaults *defaults, gen_request *r, api_error *err) {
    const cJSON *given = json_field(b, "chat_template_kwargs"), *effort = json_field(b, "reasoning_effort");
    if (given && !cJSON_IsNull(given) && !cJSON_IsObject(given))
        return api_fail(err, 400, "chat_template_kwargs", "'chat_template_kwargs' must be an object of template "
                                                          "variables, such as {\"enable_thinking\": false}");
    if (effort && !cJSON_IsNull(effort) && (!cJSON_IsString(effort) || !*effort->valuestring))
        return api_fail(err, 400, "reasoning_effort", "'reasoning_effort' must be a string such as \"low\" or \"none\"");
    bool has_given = cJSON_IsObject(given), has_effort = cJSON_IsString(effort);
    if (!has_given && !has_effort && !defaults->template_kwargs) return true;
    cJSON *kwargs = defaults->template_kwargs ? cJSON_Parse(defaults->template_kwargs) : cJSON_CreateObject();
    const cJSON *item, *members = has_given ? given : NULL;
    cJSON_ArrayForEach(item, members) {
        cJSON *copy = cJSON_Duplicate(item, true);
        if (!kwargs || !copy) {
            cJSON_Delete(copy);
            break;
        }
        cJSON_DeleteItemFromObjectCaseSensitive(kwargs, item->string);
        cJSON_AddItemToObject(kwargs, item->string, copy);
    }
    if (kwargs && has_effort) {
        cJSON_DeleteItemFromObjectCaseSensitive(kwargs, "reasoning_effort");
        if (strcmp(effort->valuestring, "none") == 0) {
            cJSON_DeleteItemFromObjectCaseSensitive(kwargs, "enable_thinking");
            cJSON_AddFalseToObject(kwargs, "enable_thinking");
        } else {
            cJSON_AddStringToObject(kwargs, "reasoning_effort", effort->valuestring);
        }
    }
    const cJSON *thinking = cJSON_GetObjectItemCaseSensitive(kwargs, "enable_thinking");
    bool bad_thinking = thinking && !cJSON_IsBool(thinking);
    r->template_kwargs = kwargs && !bad_thinking ? cJSON_PrintUnformatted(kwargs) : NULL;
    cJSON_Delete(kwargs);
    if (bad_thinking)
        return api_fail(err, 400, "chat_template_kwargs", "chat_template_kwargs.enable_thinking must be true or false");
    return r->template_kwargs ? true : api_fail(err, 500, NULL, "out of memory");
}

static bool parse_messages(const cJSON *b, gen_request *r, api_error *err) {
    const cJSON *tools = json_field(b, "tools");
    if (tools && !cJSON_IsNull(tools) && !cJSON_IsArray(tools))
        return api_fail(err, 400, "tools", "'tools' must be an array of {\"type\": \"function\", \"function\": ...}");
    if (uses_tools(b)) return parse_tool_request(b, r, err);
    const cJSON *messages = json_field(b, "messages");
    if (!cJSON_IsArray(messages) || cJSON_GetArraySize(messages) == 0)
        return api_fail(err, 400, "messages", "'messages' must be a non-empty array");
    int n = cJSON_GetArraySize(messages);
    r->messages = calloc((size_t)n, sizeof *r->messages);
    if (!r->messages) return api_fail(err, 500, NULL, "out of memory");
    const cJSON *m;
    int i = 0;
    cJSON_ArrayForEach(m, messages) {
        if (!cJSON_IsObject(m)) {
            char param[32];
            snprintf(param, sizeof param, "messages[%d]", i);
            return api_fail(err, 400, param, "'%s' must be an object with role and content", param);
        }
        const char *role = message_role(m, i, n, err);
        if (!role) return false;
        char param[48];
        snprintf(param, sizeof param, "messages[%d].content", i);
        const cJSON *content_item = cJSON_GetObjectItemCaseSensitive(m, "content");
        /* an assistant turn may come with no text (OpenAI's content: null) */
        bool empty = strcmp(role, "assistant") == 0 && (!content_item || cJSON_IsNull(content_item));
        const bool prefill = i == n - 1 && strcmp(role, "assistant") == 0;
        char *content = empty ? strdup("") : message_text(content_item, prefill ? "\n\n" : "\n", param, err);
        if (!content) return err->status ? false : api_fail(err, 500, NULL, "out of memory");
        r->messages[i].role = strdup(role);
        r->messages[i].content = content;
        r->n_messages = ++i;
        if (!r->messages[i - 1].role) return api_fail(err, 500, NULL, "out of memory");
    }
    r->has_system = strcmp(r->messages[0].role, "system") == 0;
    if (strcmp(r->messages[n - 1].role, "assistant") == 0) { /* the prefill: the answer goes on from it */
        if (strcmp(r->messages[n - 2].role, "user") != 0)
            return api_fail(err, 400, "messages", "an assistant message to continue must follow the user's");
        r->prefill = (char *)r->messages[n - 1].content;
        free((char *)r->messages[n - 1].role);
        r->n_messages = n - 1;
    }
    return true;
}

/* vLLM's and transformers' continue_final_message (with
 * add_generation_prompt false): the final assistant message is continued,
 * which is what a final assistant message does here anyway. */
static bool parse_continuation(const cJSON *b, gen_request *r, api_error *err) {
    bool add_generation_prompt = true, continue_final = false;
    if (!get_bool_field(b, "add_generation_prompt", "add_generation_prompt", &add_generation_prompt, err) ||
        !get_bool_field(b, "continue_final_message", "continue_final_message", &continue_final, err))
        return false;
    if (add_generation_prompt && continue_final)
        return api_fail(err, 400, "continue_final_message",
                        "continue_final_message and add_generation_prompt cannot both be true");
    if ((continue_final || !add_generation_prompt) && !r->prefill)
        return api_fail(err, 400, continue_final ? "continue_final_message" : "add_generation_prompt",
                        "the last message must be the assistant's to continue it (a conversation that ends "
                        "with the user's opens the assistant's turn)");
    return true;
}

/* ------------------------------------------------------------------ */

static bool parse_model(const cJSON *b, const model_set *models, gen_request *r, api_error *err) {
    const cJSON *model = json_field(b, "model");
    if (model && !cJSON_IsString(model)) return api_fail(err, 400, "model", "'model' must be a string");
    r->target = model_set_resolve(models, model ? model->valuestring : NULL);
    if (r->target < 0) {
        api_fail(err, 404, "model", "The model '%s' does not exist (this server has '%s'; see /v1/models)",
                 model->valuestring, models->default_id);
        err->code = "model_not_found";
        return false;
    }
    return true;
}

/* Every field a request may carry: each one acts. A field not listed is
 * refused with 400 rather than silently ignored. */
static const char *const KNOWN_FIELDS[] = {
    "model", "prompt", "messages", "max_tokens", "max_completion_tokens", "n_predict", "n", "temperature", "top_p",
    "top_k", "min_p", "repeat_penalty", "repeat_last_n", "dry_multiplier", "dry_base", "dry_allowed_length",
    "dry_penalty_last_n", "top_n_sigma", "typical_p", "xtc_probability", "xtc_threshold", "dynatemp_range",
    "dynatemp_exponent", "mirostat", "mirostat_tau", "mirostat_eta", "seed", "frequency_penalty", "presence_penalty", "logit_bias", "stop", "logprobs",
    "top_logprobs", "n_probs", "stream", "stream_options", "selfmod", "return_tokens", "cache_prompt", "ignore_eos",
    "n_keep", "n_discard",
    "timings_per_token", "return_progress", "grammar", "response_format", "json_schema", "add_generation_prompt", "continue_final_message",
    "verbose", "tools", "tool_choice", "parallel_tool_calls", "id_slot", "response_fields", "post_sampling_probs",
    "user", /* OpenAI's end-user id: no effect on generation there either */
    "chat_template_kwargs", "reasoning_effort",
    "input_prefix", "input_suffix", "input_extra", "samplers", "n_indent", "t_max_predict_ms",
    "t_max_prompt_ms",
};

bool check_known_fields(const cJSON *body, const char *const *known_fields, size_t n_known, api_error *err) {
    if (!cJSON_IsObject(body)) return true; /* the caller says what it should be */
    const cJSON *item;
    cJSON_ArrayForEach(item, body) {
        bool known = false;
        for (size_t i = 0; i < n_known && !known; i++) known = strcmp(item->string, known_fields[i]) == 0;
        if (!known)
            return api_fail(err, 400, item->string, "unknown field '%.60s': this server does not implement it",
                            item->string);
    }
    return true;
}

bool gen_request_parse(const cJSON *body, api_kind api, const model_set *models, const request_defaults *defaults,
                       gen_request *r, api_error *err) {
    memset(r, 0, sizeof *r);
    memset(err, 0, sizeof *err);
    r->api = api;
    r->params = *defaults->base; /* serve's defaults: no repeat penalty unless asked for; --preset */
    if (!cJSON_IsObject(body)) return api_fail(err, 400, NULL, "the request body must be a JSON object");
    if (!check_known_fields(body, KNOWN_FIELDS, sizeof KNOWN_FIELDS / sizeof *KNOWN_FIELDS, err)) return false;
    if (!parse_model(body, models, r, err)) return false;
    sm_model *target_models[SM_MAX_MODELS];
    int n_models = model_set_target_models(models, r->target, target_models);
    static const char *const CHAT_ONLY[] = {"add_generation_prompt", "continue_final_message", "tools", "tool_choice",
                                            "parallel_tool_calls", "chat_template_kwargs", "reasoning_effort", NULL};
    for (const char *const *field = CHAT_ONLY; api != API_CHAT && *field; field++)
        if (json_field(body, *field)) return api_fail(err, 400, *field, "'%s' is for chat requests (messages)", *field);
    static const char *const INFILL_ONLY[] = {"input_prefix", "input_suffix", "input_extra", NULL};
    for (const char *const *field = INFILL_ONLY; api != API_INFILL && *field; field++)
        if (json_field(body, *field)) return api_fail(err, 400, *field, "'%s' is for /infill", *field);
    if (api == API_INFILL) r->api = API_LLAMA; /* answered as /completion answers */
    bool ok = (api == API_CHAT     ? parse_messages(body, r, err) && parse_continuation(body, r, err) &&
                                         parse_tool_choice(body, r, err) && parse_template_kwargs(body, defaults, r, err)
               : api == API_INFILL ? parse_infill(body, r, target_models[0], err)
                                   : parse_prompt(body, r, sm_model_n_vocab(target_models[0]), err)) &&
              parse_length(body, r, err) && parse_sampling(body, r, err) && parse_samplers(body, r, err) &&
              parse_stop(body, r, err) &&
              parse_logit_bias(body, r, target_models[0], err) &&
              parse_logprobs(body, r, err) && parse_stream(body, r, err) && parse_llama_fields(body, r, err) &&
              parse_grammar(body, r, target_models[0], err) &&
              parse_selfmod(body, r, n_models, defaults, err);
    if (!ok) return false;
    gen_request_bind(r);
    r->params.n_probs = r->n_probs;
    sm_error invalid;
    if (sm_gen_params_validate(&r->params, &invalid) != SM_OK) return api_fail(err, 400, NULL, "%s", invalid.message);
    return true;
}

void gen_request_bind(gen_request *r) {
    r->params.stop_strings = (const char *const *)r->stops;
    r->params.n_stop_strings = r->n_stops;
    r->params.backtrack.operators = r->operators;
    r->params.backtrack.n_operators = r->n_operators;
    r->params.sampling.logit_bias = r->logit_bias;
    r->params.sampling.n_logit_bias = r->n_logit_bias;
    r->params.grammar = r->grammar;
}

void gen_request_free(gen_request *r) {
    cJSON_Delete(r->input_prefix);
    cJSON_Delete(r->input_suffix);
    cJSON_Delete(r->input_extra);
    for (int i = 0; i < r->n_stops; i++) free(r->stops[i]);
    for (int i = 0; i < r->n_operators; i++) sm_operator_free(r->operators[i]);
    free(r->prefill);
    free(r->grammar);
    cJSON_free(r->messages_json);
    cJSON_free(r->tools_json);
    free(r->tool_choice);
    cJSON_free(r->template_kwargs);
    for (int i = 0; i < r->n_messages; i++) {
        free((char *)r->messages[i].role);
        free((char *)r->messages[i].content);
    }
    free(r->messages);
    free(r->prompt);
    cJSON_Delete(r->prompt_mixed);
    cJSON_Delete(r->response_fields);
    free(r->logit_bias);
    memset(r, 0, sizeof *r);
}
