/*
 * events.c - the JSON form of events and generation parameters.
 *
 * Every sink (the CLI's --json-stream, the JSONL memory file, the server)
 * formats events through these functions, so one event reads the same
 * everywhere.
 */
#include "selfmod.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "internal.h" /* the JSON forms of introspection and lookahead */
#include "json_forms.h"

/* Largest integer a JSON reader holding doubles represents exactly. */
#define JSON_MAX_EXACT_INTEGER 9007199254740992ULL

/*
 * Floats go through 7 significant digits so that 0.42f prints as 0.42
 * rather than 0.41999998688697815, while keeping every float distinct.
 */
static double json_float(float value) {
    if (!isfinite(value)) return (double)value; /* cJSON writes null */
    char buf[32];
    snprintf(buf, sizeof buf, "%.7g", (double)value);
    return strtod(buf, NULL);
}

void sm_json_add_float(cJSON *object, const char *key, float value) {
    cJSON_AddNumberToObject(object, key, json_float(value));
}

/* A seed above 2^53 would be rounded by JSON readers: write it as a string. */
void sm_json_add_u64(cJSON *object, const char *key, uint64_t value) {
    if (value <= JSON_MAX_EXACT_INTEGER) {
        cJSON_AddNumberToObject(object, key, (double)value);
    } else {
        char buf[24];
        snprintf(buf, sizeof buf, "%llu", (unsigned long long)value);
        cJSON_AddStringToObject(object, key, buf);
    }
}

/*
 * Length of the well-formed UTF-8 sequence at s (1 to 4), or 0 when the
 * bytes there are not one (invalid, overlong, surrogate, cut short).
 */
static size_t utf8_valid_sequence(const unsigned char *s, size_t n) {
    unsigned char c = s[0];
    if (c >= 0x01 && c < 0x80) return 1;
    size_t len;
    unsigned char lo = 0x80, hi = 0xBF; /* allowed range of the 2nd byte */
    if (c >= 0xC2 && c <= 0xDF) {
        len = 2;
    } else if (c >= 0xE0 && c <= 0xEF) {
        len = 3;
        if (c == 0xE0) lo = 0xA0;
        if (c == 0xED) hi = 0x9F;
    } else if (c >= 0xF0 && c <= 0xF4) {
        len = 4;
        if (c == 0xF0) lo = 0x90;
        if (c == 0xF4) hi = 0x8F;
    } else {
        return 0; /* NUL, a continuation byte, or a byte never used */
    }
    if (n < len || s[1] < lo || s[1] > hi) return 0;
    for (size_t i = 2; i < len; i++)
        if (s[i] < 0x80 || s[i] > 0xBF) return 0;
    return len;
}

bool sm_utf8_is_valid(const char *bytes, size_t len) {
    const unsigned char *s = (const unsigned char *)bytes;
    for (size_t i = 0; i < len;) {
        size_t seq = utf8_valid_sequence(s + i, len - i);
        if (seq == 0) return false;
        i += seq;
    }
    return true;
}

/* Copy with every byte that is not part of a well-formed sequence
 * replaced by U+FFFD. */
static char *utf8_sanitized_copy(const char *bytes, size_t len) {
    static const char replacement[] = "\xEF\xBF\xBD";
    char *out = malloc(len * 3 + 1);
    if (!out) return NULL;
    const unsigned char *s = (const unsigned char *)bytes;
    size_t o = 0;
    for (size_t i = 0; i < len;) {
        size_t seq = utf8_valid_sequence(s + i, len - i);
        if (seq == 0) {
            memcpy(out + o, replacement, 3);
            o += 3;
            i += 1;
        } else {
            memcpy(out + o, s + i, seq);
            o += seq;
            i += seq;
        }
    }
    out[o] = '\0';
    return out;
}

cJSON *sm_json_text(const char *bytes, size_t len) {
    char *copy = utf8_sanitized_copy(bytes, len);
    if (!copy) return NULL;
    cJSON *item = cJSON_CreateString(copy);
    free(copy);
    return item;
}

/*
 * Adds text as a JSON string. JSON strings must be valid Unicode, but a
 * token piece can be part of a UTF-8 sequence split across tokens: then the
 * string carries U+FFFD in place of the stray bytes and "<key>_bytes" holds
 * the exact bytes, so a reader can still reassemble the text byte for byte.
 */
void sm_json_add_text(cJSON *object, const char *key, const char *bytes, size_t len) {
    if (!bytes) len = 0;
    cJSON *item = sm_json_text(bytes ? bytes : "", len);
    if (!item) return;
    cJSON_AddItemToObject(object, key, item);
    if (sm_utf8_is_valid(bytes, len)) return;

    char bytes_key[96];
    snprintf(bytes_key, sizeof bytes_key, "%s_bytes", key);
    cJSON *array = cJSON_AddArrayToObject(object, bytes_key);
    for (size_t i = 0; array && i < len; i++)
        cJSON_AddItemToArray(array, cJSON_CreateNumber((unsigned char)bytes[i]));
}

static const char *event_type_name(sm_event_type type) {
    switch (type) {
    case SM_EVENT_START: return "start";
    case SM_EVENT_TOKEN: return "token";
    case SM_EVENT_MODIFICATION: return "modification";
    case SM_EVENT_RETRACTION: return "retraction";
    case SM_EVENT_BACKTRACK: return "backtrack";
    case SM_EVENT_DONE: return "done";
    }
    return "unknown";
}

static cJSON *float_array(const float *values, int32_t n) {
    cJSON *array = cJSON_CreateArray();
    for (int32_t i = 0; array && i < n; i++)
        cJSON_AddItemToArray(array, cJSON_CreateNumber(json_float(values[i])));
    return array;
}

/* The most probable tokens of the distribution (with n_probs > 0). */
static void add_top_candidates(cJSON *json, const sm_event *event) {
    if (!event->top || event->n_top <= 0) return;
    cJSON *array = cJSON_AddArrayToObject(json, "top");
    for (int32_t i = 0; array && i < event->n_top; i++) {
        cJSON *item = cJSON_CreateObject();
        if (!item) break;
        cJSON_AddNumberToObject(item, "token", event->top[i].token);
        sm_json_add_float(item, "prob", event->top[i].prob);
        sm_json_add_float(item, "logit", event->top[i].logit);
        cJSON_AddItemToArray(array, item);
    }
}

/* How the models of a fusion agreed on the token. */
static void add_fusion(cJSON *json, const sm_fusion_info *f) {
    if (!f || f->n_models <= 0) return;
    cJSON *fusion = cJSON_AddObjectToObject(json, "fusion");
    if (!fusion) return;
    int32_t n = f->n_models < SM_MAX_MODELS ? f->n_models : SM_MAX_MODELS;
    cJSON_AddNumberToObject(fusion, "n_models", f->n_models);
    sm_json_add_float(fusion, "top1_agreement", f->top1_agreement);
    sm_json_add_float(fusion, "top3_agreement", f->top3_agreement);
    sm_json_add_float(fusion, "js_divergence", f->js_divergence);
    cJSON_AddNumberToObject(fusion, "leading_model", f->leading_model);
    cJSON_AddItemToObject(fusion, "p_chosen", float_array(f->p_chosen, n));
    cJSON_AddItemToObject(fusion, "p_top1", float_array(f->p_top1, n));
    cJSON *top1 = cJSON_AddArrayToObject(fusion, "top1");
    for (int32_t i = 0; top1 && i < n; i++) cJSON_AddItemToArray(top1, cJSON_CreateNumber(f->top1[i]));
    cJSON *top3 = cJSON_AddArrayToObject(fusion, "top3"); /* per model: [{token, prob}] x 3 */
    for (int32_t i = 0; top3 && i < n; i++) {
        cJSON *list = cJSON_CreateArray();
        for (int k = 0; list && k < 3 && f->top3[i][k] >= 0; k++) {
            cJSON *c = cJSON_CreateObject();
            cJSON_AddNumberToObject(c, "token", f->top3[i][k]);
            sm_json_add_float(c, "prob", f->p_top3[i][k]);
            cJSON_AddItemToArray(list, c);
        }
        cJSON_AddItemToArray(top3, list);
    }
    cJSON_AddBoolToObject(fusion, "reference_differs", f->reference_differs);
}

static void add_token_fields(cJSON *json, const sm_event *event) {
    const sm_signals *s = &event->signals;
    cJSON_AddNumberToObject(json, "index", event->token_index);
    cJSON_AddNumberToObject(json, "settled", event->n_settled);
    cJSON_AddNumberToObject(json, "token", event->token);
    const char *piece = event->piece ? event->piece : "";
    sm_json_add_text(json, "piece", piece, strlen(piece));
    sm_json_add_text(json, "text", event->text ? event->text : "", event->text ? event->text_len : 0);
    sm_json_add_float(json, "p_chosen", s->p_chosen);
    sm_json_add_float(json, "logit", s->logit);
    sm_json_add_float(json, "p_top1", s->p_top1);
    sm_json_add_float(json, "p_top2", s->p_top2);
    sm_json_add_float(json, "entropy", s->entropy);
    sm_json_add_float(json, "varentropy", s->varentropy);
    sm_json_add_float(json, "p_sampled", s->p_sampled);
    sm_json_add_float(json, "temperature", event->temperature_before);
    sm_json_add_float(json, "repeat_penalty", event->repeat_penalty_before);
    add_top_candidates(json, event);
    add_fusion(json, event->fusion);
    if (event->introspection)
        cJSON_AddItemToObject(json, "introspection", sm_introspection_to_cjson(event->introspection));
}

/* The fields of a modification, shared with the memory file's records. */
void sm_json_add_modification_fields(cJSON *json, const sm_event *event) {
    cJSON_AddStringToObject(json, "mod_type", sm_mod_type_name(event->mod));
    cJSON_AddNumberToObject(json, "token_index", event->token_index);
    sm_json_add_float(json, "confidence", event->confidence);
    cJSON_AddStringToObject(json, "description", event->description ? event->description : "");
    cJSON_AddStringToObject(json, "source", event->source ? event->source : "policy");
    sm_json_add_float(json, "temperature_before", event->temperature_before);
    sm_json_add_float(json, "temperature_after", event->temperature_after);
    sm_json_add_float(json, "repeat_penalty_before", event->repeat_penalty_before);
    sm_json_add_float(json, "repeat_penalty_after", event->repeat_penalty_after);
    if (event->type == SM_EVENT_RETRACTION || event->type == SM_EVENT_BACKTRACK) {
        cJSON_AddNumberToObject(json, "n_removed", event->n_removed);
        cJSON_AddNumberToObject(json, "settled", event->n_settled);
    }
    if (event->lookahead) cJSON_AddItemToObject(json, "lookahead", sm_lookahead_to_cjson(event->lookahead));
    if ((event->mod == SM_MOD_TOOL || event->mod == SM_MOD_INJECT) && event->piece)
        sm_json_add_text(json, "injected", event->piece, strlen(event->piece));
}

const char *sm_model_file_name(const char *path) {
    if (!path) return "";
    const char *slash = strrchr(path, '/');
    return slash ? slash + 1 : path;
}

cJSON *sm_json_fusion_data_original(const sm_fusion_info *f, const char *const *names, float temperature) {
    cJSON *json = cJSON_CreateObject();
    if (!json) return NULL;
    int32_t n = f->n_models < SM_MAX_MODELS ? f->n_models : SM_MAX_MODELS;
    cJSON *confidences = cJSON_AddArrayToObject(json, "model_confidences");
    for (int32_t m = 0; confidences && m < n; m++) {
        cJSON *pair = cJSON_CreateArray();
        if (!pair) break;
        cJSON_AddItemToArray(pair, cJSON_CreateString(names[m]));
        cJSON_AddItemToArray(pair, cJSON_CreateNumber(json_float(f->p_top1[m])));
        cJSON_AddItemToArray(confidences, pair);
    }
    cJSON_AddStringToObject(json, "leading_model", f->leading_model >= 0 && f->leading_model < n
                                                       ? names[f->leading_model] : "ensemble");
    sm_json_add_float(json, "agreement_score", f->top3_agreement);
    sm_json_add_float(json, "harmony_score", 1.0f - f->js_divergence);
    sm_json_add_float(json, "diversity_score", f->js_divergence);
    cJSON_AddNumberToObject(json, "num_abstentions", f->n_models - f->n_participating);
    sm_json_add_float(json, "adaptive_temp", temperature);
    return json;
}

cJSON *sm_event_to_cjson(const sm_event *event) {
    cJSON *json = cJSON_CreateObject();
    if (!json) return NULL;
    cJSON_AddStringToObject(json, "type", event_type_name(event->type));
    switch (event->type) {
    case SM_EVENT_TOKEN:
        add_token_fields(json, event);
        break;
    case SM_EVENT_MODIFICATION:
    case SM_EVENT_RETRACTION:
    case SM_EVENT_BACKTRACK:
        sm_json_add_modification_fields(json, event);
        break;
    case SM_EVENT_DONE:
        cJSON_AddStringToObject(json, "stop_reason", sm_stop_reason_name(event->stop_reason));
        break;
    case SM_EVENT_START:
        break;
    }
    return json;
}

char *sm_event_to_json(const sm_event *event) {
    if (!event) return NULL;
    cJSON *json = sm_event_to_cjson(event);
    if (!json) return NULL;
    char *text = cJSON_PrintUnformatted(json);
    cJSON_Delete(json);
    return text;
}

/* Milliseconds and rates to a thousandth: enough for a reader, and no
 * 17-digit noise. */
static double round_to_thousandths(double value) {
    return isfinite(value) ? round(value * 1000.0) / 1000.0 : value;
}

/* "timings": {t_prompt_ms, t_generate_ms, tokens_per_s} of a result. */
void sm_json_add_timings(cJSON *object, const sm_result *result) {
    cJSON *json = cJSON_AddObjectToObject(object, "timings");
    if (!json) return;
    double seconds = result->t_generate_ms / 1000.0;
    double tokens_per_s = seconds > 0 ? result->n_tokens / seconds : 0.0;
    cJSON_AddNumberToObject(json, "t_prompt_ms", round_to_thousandths(result->t_prompt_ms));
    cJSON_AddNumberToObject(json, "t_generate_ms", round_to_thousandths(result->t_generate_ms));
    cJSON_AddNumberToObject(json, "tokens_per_s", round_to_thousandths(tokens_per_s));
}

static void add_stop_strings(cJSON *json, const sm_gen_params *params) {
    cJSON *stops = cJSON_AddArrayToObject(json, "stop_strings");
    for (int32_t i = 0; stops && i < params->n_stop_strings; i++) {
        const char *stop = params->stop_strings[i] ? params->stop_strings[i] : "";
        cJSON_AddItemToArray(stops, sm_json_text(stop, strlen(stop)));
    }
}

static void add_operators(cJSON *json, const sm_gen_params *params) {
    cJSON *names = cJSON_AddArrayToObject(json, "operators");
    for (int32_t i = 0; names && i < params->backtrack.n_operators; i++) {
        const sm_operator *op = params->backtrack.operators[i];
        const char *name = op && op->vt && op->vt->name ? op->vt->name : "unnamed";
        cJSON_AddItemToArray(names, cJSON_CreateString(name));
    }
    if (params->backtrack.n_operators > 0) {
        cJSON_AddStringToObject(json, "combine", params->backtrack.combine == SM_COMBINE_MAX ? "max" : "first");
        cJSON_AddNumberToObject(json, "backtrack_every_n", params->backtrack.every_n);
        cJSON_AddNumberToObject(json, "max_backtracks", params->backtrack.max_backtracks);
        cJSON_AddNumberToObject(json, "max_backtracks_per_position",
                                params->backtrack.max_per_position);
        cJSON_AddBoolToObject(json, "backtrack_every_only", params->backtrack.every_n_only);
        cJSON_AddStringToObject(json, "operator_input",
                                params->backtrack.input == SM_OPERATOR_INPUT_ORIGINAL ? "original" : "full");
        cJSON_AddNumberToObject(json, "operator_top_k", params->backtrack.top_n_view);
        sm_json_add_float(json, "operator_temperature", params->backtrack.input_temperature);
    }
}

/* Every sampling and policy parameter of a generation, flat. */
cJSON *sm_gen_params_to_cjson(const sm_gen_params *params) {
    cJSON *json = cJSON_CreateObject();
    if (!json) return NULL;
    const sm_sampling_params *s = &params->sampling;
    const sm_policy_params *p = &params->policy;

    cJSON_AddNumberToObject(json, "n_predict", params->n_predict);
    sm_json_add_float(json, "temperature", s->temperature);
    cJSON_AddNumberToObject(json, "top_k", s->top_k);
    sm_json_add_float(json, "top_p", s->top_p);
    sm_json_add_float(json, "min_p", s->min_p);
    sm_json_add_float(json, "repeat_penalty", s->repeat_penalty);
    cJSON_AddNumberToObject(json, "repeat_last_n", s->repeat_last_n);
    if (s->frequency_penalty != 0) sm_json_add_float(json, "frequency_penalty", s->frequency_penalty);
    if (s->presence_penalty != 0) sm_json_add_float(json, "presence_penalty", s->presence_penalty);
    if (s->n_logit_bias > 0) cJSON_AddNumberToObject(json, "n_logit_bias", s->n_logit_bias);
    sm_json_add_u64(json, "seed", s->seed);
    sm_json_add_float(json, "dry_multiplier", s->dry_multiplier);
    if (s->dry_multiplier > 0) {
        sm_json_add_float(json, "dry_base", s->dry_base);
        cJSON_AddNumberToObject(json, "dry_allowed_length", s->dry_allowed_length);
        cJSON_AddNumberToObject(json, "dry_penalty_last_n", s->dry_penalty_last_n);
    }
    /* llama.cpp's other samplers, when on */
    if (s->top_n_sigma > 0) sm_json_add_float(json, "top_n_sigma", s->top_n_sigma);
    if (s->typical_p < 1) sm_json_add_float(json, "typical_p", s->typical_p);
    if (s->xtc_probability > 0) {
        sm_json_add_float(json, "xtc_probability", s->xtc_probability);
        sm_json_add_float(json, "xtc_threshold", s->xtc_threshold);
    }
    if (s->dynatemp_range > 0) {
        sm_json_add_float(json, "dynatemp_range", s->dynatemp_range);
        sm_json_add_float(json, "dynatemp_exponent", s->dynatemp_exponent);
    }
    if (s->mirostat) {
        cJSON_AddNumberToObject(json, "mirostat", s->mirostat);
        sm_json_add_float(json, "mirostat_tau", s->mirostat_tau);
        sm_json_add_float(json, "mirostat_eta", s->mirostat_eta);
    }
    if (s->infill) cJSON_AddBoolToObject(json, "infill", true);
    if (params->n_indent > 0) cJSON_AddNumberToObject(json, "n_indent", params->n_indent);
    if (params->t_max_predict_ms > 0) cJSON_AddNumberToObject(json, "t_max_predict_ms", params->t_max_predict_ms);

    cJSON_AddBoolToObject(json, "selfmod", p->enabled);
    cJSON_AddBoolToObject(json, "aggressive", p->aggressive);
    cJSON_AddNumberToObject(json, "retract", p->retract);
    cJSON_AddNumberToObject(json, "window", p->window);
    sm_json_add_float(json, "critical_threshold", p->critical_threshold);
    sm_json_add_float(json, "confidence_threshold", p->confidence_threshold);
    sm_json_add_float(json, "sharpen_threshold", p->sharpen_threshold);
    cJSON_AddNumberToObject(json, "retract_tokens", p->retract_tokens);
    cJSON_AddNumberToObject(json, "max_retractions", p->max_retractions);
    sm_json_add_float(json, "exploration_prob", p->exploration_prob);
    cJSON_AddNumberToObject(json, "repetition_window", p->repetition_window);
    cJSON_AddNumberToObject(json, "repetition_min_distinct", p->repetition_min_distinct);

    if (params->context_shift) {
        cJSON_AddBoolToObject(json, "context_shift", true);
        cJSON_AddNumberToObject(json, "n_keep", params->n_keep);
        cJSON_AddNumberToObject(json, "n_discard", params->n_discard);
    }
    add_stop_strings(json, params);
    add_operators(json, params);
    return json;
}

void sm_json_add_result_counts(cJSON *json, const sm_result *r) {
    cJSON_AddNumberToObject(json, "n_prompt_tokens", r->n_prompt_tokens);
    cJSON_AddNumberToObject(json, "n_tokens", r->n_tokens);
    cJSON_AddNumberToObject(json, "n_sampled", r->n_sampled);
    cJSON_AddNumberToObject(json, "n_decoded", r->n_decoded);
    cJSON_AddNumberToObject(json, "n_backtracks", r->n_backtracks);
    cJSON_AddNumberToObject(json, "n_tokens_removed", r->n_tokens_removed);
    if (r->n_context_shifts > 0) cJSON_AddNumberToObject(json, "n_context_shifts", r->n_context_shifts);
    sm_json_add_float(json, "final_repeat_penalty", r->final_repeat_penalty);
    sm_json_add_timings(json, r);
}
