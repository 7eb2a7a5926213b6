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

#endif
