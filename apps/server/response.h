/* The JSON shapes of each API: streamed chunks, final responses, and the
 * "selfmod" object that shows what self-correction did. */
#ifndef SERVER_RESPONSE_H
#define SERVER_RESPONSE_H

#include "server/job.h"

#include <cjson/cJSON.h>

/* A library event as the stream shows it (the library's JSON form plus
 * the token's alternatives and the models' agreement). */
cJSON *response_event(const job *j, const sm_event *event);
/* A chunk with text [from, from + len) of the tracker's text and the
 * log-probabilities of tokens [tok_from, tok_to); events may be NULL. */
cJSON *response_chunk(const job *j, const char *text, size_t len, int32_t tok_from, int32_t tok_to,
                      cJSON *events);
/* The chunk that ends a stream. */
cJSON *response_final_chunk(const job *j, const sm_result *res, const char *text, size_t len, int32_t tok_from,
                            int32_t tok_to);
/* OpenAI's usage chunk (choices: []). */
cJSON *response_usage_chunk(const job *j, const sm_result *res);
/* The first chunk of a chat stream: {"delta": {"role": "assistant"}}. */
cJSON *response_role_chunk(const job *j);
/* A chat chunk with this delta (taken; NULL: empty) and the events (taken; may be NULL). */
cJSON *response_delta_chunk(const job *j, cJSON *delta, cJSON *events);
/* return_progress: where the prompt's decode stands (llama-server's prompt_progress). */
cJSON *response_progress_chunk(const job *j, int32_t total, int32_t cached, int32_t processed, double elapsed_ms);
/* The whole response of a request that did not stream. */
cJSON *response_complete(const job *j, const sm_result *res);

#endif
