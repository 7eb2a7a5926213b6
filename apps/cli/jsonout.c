/* --json-stream: one JSON object per line on stdout, nothing else. */
#include "jsonout.h"

#include "lib_extras.h"

#include <stdlib.h>
#include <string.h>
#include <time.h>

static void print_line(FILE *out, cJSON *json) {
    char *text = json ? cJSON_PrintUnformatted(json) : NULL;
    if (text) {
        fputs(text, out);
        fputc('\n', out);
        fflush(out);
    }
    free(text);
    cJSON_Delete(json);
}

void json_print_start(FILE *out, const char *model_path, const char *model_description,
                      const char *prompt, const sm_gen_params *params, int32_t n_ctx,
                      int32_t n_prompt_tokens) {
    cJSON *json = cJSON_CreateObject();
    if (!json) return;
    cJSON_AddStringToObject(json, "type", "start");
    sm_json_add_text(json, "model", model_path, strlen(model_path));
    cJSON_AddStringToObject(json, "model_description", model_description);
    sm_json_add_text(json, "prompt", prompt, strlen(prompt));
    cJSON_AddNumberToObject(json, "n_ctx", n_ctx);
    cJSON_AddNumberToObject(json, "n_prompt_tokens", n_prompt_tokens);
    sm_json_add_u64(json, "seed", params->sampling.seed);
    cJSON_AddItemToObject(json, "parameters", sm_gen_params_to_cjson(params));
    print_line(out, json);
}

void json_print_event(FILE *out, const sm_event *event) {
    char *text = sm_event_to_json(event);
    if (!text) return;
    fputs(text, out);
    fputc('\n', out);
    fflush(out);
    free(text);
}

void json_print_done(FILE *out, const sm_result *r) {
    cJSON *json = cJSON_CreateObject();
    if (!json) return;
    cJSON_AddStringToObject(json, "type", "done");
    sm_json_add_text(json, "text", r->text ? r->text : "", r->text ? r->text_len : 0);
    cJSON_AddStringToObject(json, "stop_reason", sm_stop_reason_name(r->stop_reason));
    cJSON_AddNumberToObject(json, "n_retractions", r->n_retractions);
    sm_json_add_float(json, "avg_confidence", r->avg_confidence);
    sm_json_add_float(json, "final_temperature", r->final_temperature);
    sm_json_add_result_counts(json, r);
    print_line(out, json);
}

/* ---- --json-stream=original ---------------------------------------- */

static double now_seconds(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

void json_original_init(FILE *out, json_original *state, const char *paths, const char *fusion_mode) {
    json_original_free(state);
    state->paths = strdup(paths);
    cJSON *json = cJSON_CreateObject();
    if (!json || !state->paths) {
        cJSON_Delete(json);
        return;
    }
    cJSON *names = cJSON_CreateArray();
    for (char *save = NULL, *p = strtok_r(state->paths, ",", &save); p && state->n_models < SM_MAX_MODELS;
         p = strtok_r(NULL, ",", &save)) {
        state->names[state->n_models++] = sm_model_file_name(p);
        cJSON_AddItemToArray(names, cJSON_CreateString(sm_model_file_name(p)));
    }
    state->t_start = now_seconds();
    cJSON_AddStringToObject(json, "type", "init");
    cJSON_AddNumberToObject(json, "num_models", state->n_models);
    cJSON_AddStringToObject(json, "fusion_mode", fusion_mode);
    cJSON_AddItemToObject(json, "model_names", names);
    print_line(out, json);
}

/* The original GUI's "consciousness" of a token, by its formulas: from the
 * token's confidence, the mean confidence of the tokens before it, whether
 * anything was retracted, the temperature, penalty and agreement. */
static cJSON *consciousness(const json_original *state, float confidence, float temperature,
                            float repeat_penalty, float agreement) {
    double sum = 0;
    for (int32_t i = 0; i < state->n_kept; i++) sum += state->confidences[i];
    float mean = state->n_kept > 0 ? (float)(sum / state->n_kept) : confidence;
    cJSON *json = cJSON_CreateObject();
    cJSON *human = cJSON_AddObjectToObject(json, "human_emotions");
    sm_json_add_float(human, "curious", confidence < 0.6f ? 0.7f : 0.3f);
    sm_json_add_float(human, "confident", confidence);
    sm_json_add_float(human, "uncertain", 1.0f - confidence);
    sm_json_add_float(human, "engaged", state->n_kept > 5 ? 0.8f : 0.5f);
    cJSON_AddStringToObject(human, "dominant_emotion",
                            confidence > 0.75f ? "confident" : confidence < 0.4f ? "uncertain" : "curious");
    float flow = state->n_retractions > 0 ? 0.6f : 0.9f;
    cJSON *ai = cJSON_AddObjectToObject(json, "ai_states");
    sm_json_add_float(ai, "resonance", agreement);
    sm_json_add_float(ai, "flow", flow);
    sm_json_add_float(ai, "coherence", mean);
    sm_json_add_float(ai, "exploration", temperature / 1.5f);
    cJSON_AddStringToObject(ai, "dominant_state",
                            agreement > 0.8f ? "resonance" : flow > 0.8f ? "flow" : "exploration");
    cJSON *metrics = cJSON_AddObjectToObject(json, "metrics");
    double elapsed = now_seconds() - state->t_start;
    sm_json_add_float(metrics, "temperature", temperature);
    sm_json_add_float(metrics, "repeat_penalty", repeat_penalty);
    sm_json_add_float(metrics, "agreement_score", agreement);
    sm_json_add_float(metrics, "tokens_per_second", elapsed > 0 ? (float)((state->n_kept + 1) / elapsed) : 0.0f);
    return json;
}

static void original_token(FILE *out, json_original *state, const sm_event *e) {
    const sm_fusion_info *f = e->fusion;
    float agreement = f ? f->top3_agreement : 1.0f;
    cJSON *json = cJSON_CreateObject();
    if (!json) return;
    cJSON_AddStringToObject(json, "type", "token");
    const char *piece = e->piece ? e->piece : "";
    sm_json_add_text(json, "text", piece, strlen(piece));
    sm_json_add_float(json, "confidence", e->confidence);
    if (f) cJSON_AddItemToObject(json, "fusion_data", sm_json_fusion_data_original(f, state->names, e->temperature_before));
    /* The tokens before this one are 0 .. index-1: anything later was rewound. */
    state->n_kept = e->token_index < state->n_kept ? e->token_index : state->n_kept;
    cJSON_AddItemToObject(json, "consciousness",
                          consciousness(state, e->confidence, e->temperature_before, e->repeat_penalty_before, agreement));
    print_line(out, json);
    if (state->n_kept >= state->cap) {
        int32_t cap = state->cap ? state->cap * 2 : 256;
        float *grown = realloc(state->confidences, sizeof *grown * (size_t)cap);
        if (!grown) return;
        state->confidences = grown;
        state->cap = cap;
    }
    state->confidences[state->n_kept++] = e->confidence;
}

void json_original_event(FILE *out, json_original *state, const sm_event *e) {
    if (e->type == SM_EVENT_TOKEN) {
        original_token(out, state, e);
        return;
    }
    if (e->type != SM_EVENT_MODIFICATION && e->type != SM_EVENT_RETRACTION && e->type != SM_EVENT_BACKTRACK) return;
    state->n_modifications++;
    cJSON *json = cJSON_CreateObject();
    if (!json) return;
    cJSON_AddStringToObject(json, "type", "modification");
    cJSON_AddStringToObject(json, "mod_type", e->mod == SM_MOD_RETRACT ? "CRITICAL_RETRACT" : sm_mod_type_name(e->mod));
    cJSON_AddStringToObject(json, "description", e->description ? e->description : "");
    sm_json_add_float(json, "confidence", e->confidence);
    if (e->type != SM_EVENT_MODIFICATION) {
        /* Of the token lines already printed, how many are gone (a removed
         * candidate was never printed). */
        cJSON_AddNumberToObject(json, "n_removed", e->token_index < state->n_kept ? state->n_kept - e->token_index : 0);
        if (e->type == SM_EVENT_RETRACTION) state->n_retractions++;
        if (e->token_index < state->n_kept) state->n_kept = e->token_index;
    }
    print_line(out, json);
}

void json_original_complete(FILE *out, json_original *state, const sm_result *r) {
    cJSON *json = cJSON_CreateObject();
    if (!json) return;
    cJSON_AddStringToObject(json, "type", "complete");
    cJSON_AddNumberToObject(json, "total_tokens", r->n_tokens);
    sm_json_add_float(json, "avg_confidence", r->avg_confidence);
    cJSON_AddNumberToObject(json, "modifications", r->n_events);
    cJSON_AddNumberToObject(json, "retractions", r->n_retractions);
    print_line(out, json);
    (void)state;
}

void json_original_free(json_original *state) {
    free(state->confidences);
    free(state->paths);
    memset(state, 0, sizeof *state);
}
