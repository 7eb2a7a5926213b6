/* The endpoints. */
#ifndef SERVER_API_H
#define SERVER_API_H

#include "server/http.h"

reply api_health(server *srv);
reply api_models(server *srv);
reply api_props(server *srv);
reply api_metrics(server *srv);
reply api_slots(server *srv);
reply api_model_named(server *srv, const char *name);
/* POST /slots/{id}?action=save|restore|erase (llama-server's, with --slot-save-path). */
reply api_slot_action(server *srv, const char *name, const char *action, const char *body, size_t len);
reply api_completions(server *srv, int client_fd, const char *body, size_t len);
reply api_chat_completions(server *srv, int client_fd, const char *body, size_t len);
reply api_llama_completion(server *srv, int client_fd, const char *body, size_t len);
reply api_infill(server *srv, int client_fd, const char *body, size_t len); /* /infill: FIM */
reply api_tokenize(server *srv, int client_fd, const char *body, size_t len);
reply api_apply_template(server *srv, int client_fd, const char *body, size_t len);
reply api_input_tokens(server *srv, int client_fd, const char *body, size_t len);
reply api_detokenize(server *srv, int client_fd, const char *body, size_t len);
reply api_loom_expand(server *srv, int client_fd, const char *body, size_t len);

/* POST /v1/embeddings, /embeddings (OpenAI's, apps/server/embeddings.c). */
reply api_embeddings(server *srv, int client_fd, const char *body, size_t len);
/* The model a request's "model" names (its tokenizer and vocabulary); NULL
 * with *bad the 400 or 404 to send. */
const served_model *api_vocab_for(server *srv, const cJSON *body, reply *bad);

/* Parses a JSON object body; on failure *reply is the 400 to send. */
cJSON *api_parse_body(const char *body, size_t len, reply *error_reply);

/* GET of a file of the web page; 404 reply when there is none. */
reply static_file(server *srv, const char *url);

#endif
