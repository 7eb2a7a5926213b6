/* --json-stream: one JSON object per line on stdout, nothing else. */
#ifndef CLI_JSONOUT_H
#define CLI_JSONOUT_H

#include "selfmod.h"

#include <stdio.h>

/* {"type":"start", model, prompt, n_ctx, n_prompt_tokens, seed, parameters} */
void json_print_start(FILE *out, const char *model_path, const char *model_description,
                      const char *prompt, const sm_gen_params *params, int32_t n_ctx,
                      int32_t n_prompt_tokens);
/* A token, modification, retraction or backtrack event. */
void json_print_event(FILE *out, const sm_event *event);
/* {"type":"done", text, stop_reason, counts, timings} */
void json_print_done(FILE *out, const sm_result *result);

/*
 * --json-stream=original: the Rust llama_selfmod's events, which its GUI
 * reads (dispatching on "init" and "token"):
 *   {"type":"init", num_models, fusion_mode, model_names}
 *   {"type":"token", text, confidence, fusion_data (several models),
 *    consciousness{human_emotions, ai_states, metrics}}
 *   {"type":"modification", mod_type, description, confidence} (a
 *    retraction: CRITICAL_RETRACT, with n_removed: the original never took
 *    printed text back; this says how many of the token lines printed last
 *    are gone)
 *   {"type":"complete", total_tokens, avg_confidence, modifications, retractions}
 * The GUI's "consciousness" object follows the original's formulas over
 * the kept tokens' confidences, so it stays exact under retractions.
 */
typedef struct json_original {
    char *paths;                      /* a copy of the joined paths         */
    const char *names[SM_MAX_MODELS]; /* the models' file names, in paths   */
    int32_t n_models;
    float *confidences;               /* of the kept tokens, by index       */
    int32_t n_kept, cap;
    int32_t n_modifications, n_retractions;
    double t_start;                   /* for tokens_per_second              */
} json_original;

/* Starts a generation: paths are the models' paths joined by ','. */
void json_original_init(FILE *out, json_original *state, const char *paths, const char *fusion_mode);
void json_original_event(FILE *out, json_original *state, const sm_event *event);
void json_original_complete(FILE *out, json_original *state, const sm_result *result);
void json_original_free(json_original *state);

#endif
