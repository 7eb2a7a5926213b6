/*
 * Prompts built from a request's pieces, as llama-server builds them:
 * token ids mixed with strings, and /infill's fill-in-the-middle form.
 */
#ifndef SERVER_PROMPT_H
#define SERVER_PROMPT_H

#include "selfmod.h"

#include <cjson/cJSON.h>

#include <stdbool.h>

/* A string, or an array of token ids and strings: each string tokenized in
 * place (with the model's BOS only when add_special and it comes first;
 * the text of special tokens becomes them only when parse_special). The
 * ids are checked by the request's parser. */
sm_status prompt_tokenize_mixed(const sm_model *model, const cJSON *parts, bool add_special, bool parse_special,
                                sm_tokens *out, sm_error *err);

typedef struct infill_limits {
    int32_t n_batch;    /* the prefix takes 3/4 of it at most, the suffix the rest */
    int32_t n_predict;  /* the server's own (-1: none); the other files fill  */
    int32_t n_ctx;      /* the slot's context less n_batch and 2 n_predict    */
    int32_t n_answer;   /* tokens the files leave free for the answer: they
                           never push the prompt past the context (llama-server's
                           formula can, and refuses the request)            */
    bool spm;           /* --spm-infill: suffix before prefix                 */
} infill_limits;

/* llama-server's /infill prompt (format_prompt_infill), token for token:
 *   [extra files] BOS FIM_PRE prefix prompt FIM_SUF suffix FIM_MID
 * where the other files are "[FIM_REP]myproject\n" then "[FIM_SEP]name\n"
 * and each text (a "--- snippet ---" line between them in a vocabulary
 * without FIM_SEP). The code is user text: its special tokens' text stays
 * text. The prefix keeps its end, the suffix its start, the files their
 * last tokens (fewer than llama-server's where its prompt would not fit). */
sm_status prompt_infill(const sm_model *model, const cJSON *prefix, const cJSON *suffix, const cJSON *extra,
                        const char *prompt, const infill_limits *lim, sm_tokens *out, sm_error *err);

#endif
