/* Running generation requests in slots, streamed or not. */
#ifndef SERVER_GENERATE_H
#define SERVER_GENERATE_H

#include "server/channel.h"
#include "server/context.h"
#include "server/request.h"

#include <cjson/cJSON.h>

/* Runs a request in the calling thread (waiting for a slot). On success
 * *response is the JSON to send with 200; else err says what failed.
 * client_fd (or -1) is the client's socket: when the client goes away the
 * generation is cancelled. Takes ownership of *req either way. */
bool generation_run(server *srv, gen_request *req, int client_fd, cJSON **response, api_error *err);

/* Everything a generation request is checked for before it runs (the
 * prompt tokenized and measured against the context), without running
 * it: for the request fuzzer. Takes ownership of *req. */
bool generation_validate(server *srv, gen_request *req, api_error *err);

/* Checks the request, then generates in a thread of its own that writes
 * server-sent events to *out (the caller turns it into the HTTP response).
 * Takes ownership of *req either way. */
bool generation_start_stream(server *srv, gen_request *req, channel **out, api_error *err);
/* The same for several answers (n > 1, several prompts), streamed in turn
 * on one channel, each chunk with its answer's index. Takes reqs[0..n). */
bool generation_start_stream_many(server *srv, gen_request *reqs, int n, int n_per_prompt, channel **out,
                                  api_error *err);

#endif
