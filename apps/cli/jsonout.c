/* --json-stream: one JSON object per line on stdout, nothing else. */
#include "jsonout.h"

#include "lib_extras.h"

#include <stdlib.h>
#include <string.h>

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
