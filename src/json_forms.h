/* The JSON forms shared by every sink (defined in events.c): the CLI's
 * stream, the memory file and the server build their objects from these. */
#ifndef SELFMOD_JSON_FORMS_H
#define SELFMOD_JSON_FORMS_H

#include "selfmod.h"

#include <cjson/cJSON.h>

void sm_json_add_float(cJSON *object, const char *key, float value);
void sm_json_add_u64(cJSON *object, const char *key, uint64_t value);
/* A JSON string item for text; bytes that are not well-formed UTF-8 become
 * U+FFFD (NULL text gives ""). */
cJSON *sm_json_text(const char *bytes, size_t len);
/* Text as a JSON string; stray UTF-8 bytes also go to "<key>_bytes". */
void sm_json_add_text(cJSON *object, const char *key, const char *bytes, size_t len);
void sm_json_add_modification_fields(cJSON *json, const sm_event *event);
cJSON *sm_gen_params_to_cjson(const sm_gen_params *params);
/* A generation's counters (n_prompt_tokens, n_tokens, n_sampled, n_decoded,
 * n_backtracks, n_tokens_removed), final_repeat_penalty and timings: the
 * part of a result every sink reports the same way. */
void sm_json_add_result_counts(cJSON *object, const sm_result *result);
/* "timings": {t_prompt_ms, t_generate_ms, tokens_per_s} */
void sm_json_add_timings(cJSON *object, const sm_result *result);

/* The original llama_selfmod's forms (its --json-stream and memory file). */
/* A model's name there: the file name of its path. */
const char *sm_model_file_name(const char *path);
/* Its per-token fusion_data: model_confidences [[name, top-1 p]...],
 * leading_model (a name; "ensemble" when no model's top-1 won),
 * agreement_score (models with the token in their top 3), and the later
 * version's harmony_score (1 - mean JS divergence), diversity_score (the
 * divergence), num_abstentions and adaptive_temp (the token's temperature).
 * names[m] names model m. */
cJSON *sm_json_fusion_data_original(const sm_fusion_info *f, const char *const *names, float temperature);

#endif
