/*
 * guard.h - llama.cpp calls that can throw C++ exceptions, made safe for C
 * (guard.cpp). The library calls these, never the llama.h functions they
 * wrap: an exception crossing into C would terminate the process.
 *
 * Convention: a wrapper returns false (or NULL) when llama.cpp threw, with
 * err saying what it threw; otherwise the wrapped function's own result is
 * in *n_out (or returned) with its own meaning.
 */
#ifndef SELFMOD_GUARD_H
#define SELFMOD_GUARD_H

#include "llama.h"
#include "selfmod.h"

#ifdef __cplusplus
extern "C" {
#endif

void sm_error_set(sm_error *err, sm_status status, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

bool smx_tokenize(const struct llama_vocab *vocab, const char *text, int32_t len, llama_token *tokens,
                  int32_t n_max, bool add_special, bool parse_special, int32_t *n_out, sm_error *err);
bool smx_token_to_piece(const struct llama_vocab *vocab, llama_token token, char *buf, int32_t size,
                        bool special, int32_t *n_out, sm_error *err);
bool smx_detokenize(const struct llama_vocab *vocab, const llama_token *tokens, int32_t n_tokens, char *text,
                    int32_t size, bool remove_special, bool unparse_special, int32_t *n_out, sm_error *err);
bool smx_chat_apply_template(const char *tmpl, const struct llama_chat_message *msgs, size_t n_msgs, bool add_ass,
                             char *buf, int32_t size, int32_t *n_out, sm_error *err);
struct llama_model *smx_model_load(const char *path, struct llama_model_params params, sm_error *err);
struct llama_context *smx_init_from_model(struct llama_model *model, struct llama_context_params params,
                                          sm_error *err);

/* A GBNF grammar as llama.cpp's grammar sampler (NULL: it does not parse,
 * or llama.cpp threw); applying it (invalid tokens' logits become -inf)
 * and accepting a token (false: the grammar does not allow it). */
struct llama_sampler *smx_grammar_new(const struct llama_vocab *vocab, const char *grammar, const char *root,
                                      sm_error *err);
/* The same grammar applying only once the text matches one of the
 * patterns (regular expressions), from the match on. */
struct llama_sampler *smx_grammar_new_lazy(const struct llama_vocab *vocab, const char *grammar, const char *root,
                                           const char *const *patterns, size_t n_patterns, sm_error *err);
bool smx_sampler_apply(struct llama_sampler *smpl, llama_token_data_array *cur, sm_error *err);
struct llama_sampler *smx_infill_new(const struct llama_vocab *vocab, sm_error *err);
bool smx_sampler_accept(struct llama_sampler *smpl, llama_token token, sm_error *err);
bool smx_sampler_reset(struct llama_sampler *smpl, sm_error *err);

/* llama_decode's own codes (0 ok, 1 no KV slot, 2 aborted, -1 invalid
 * batch, < -1 fatal), or this one when it threw. */
#define SMX_DECODE_THREW (-100)
int32_t smx_decode(struct llama_context *ctx, struct llama_batch batch);
/* What the last exception caught in this thread said ("" if none). */
const char *smx_last_exception(void);
/* The devices of the ggml RPC server at endpoint ("host:port"), up to max;
 * -1 with err set when llama.cpp threw. From then on ggml's aborts throw
 * (so that a server that goes away fails a decode, not the process). */
int32_t smx_rpc_devices(const char *endpoint, ggml_backend_dev_t *out, int32_t max, sm_error *err);

bool smx_state_seq_save_file(struct llama_context *ctx, const char *path, llama_seq_id seq, const llama_token *tokens,
                             size_t n_tokens, size_t *bytes_out, sm_error *err);
bool smx_state_seq_load_file(struct llama_context *ctx, const char *path, llama_seq_id seq, llama_token *tokens,
                             size_t capacity, size_t *n_tokens_out, size_t *bytes_out, sm_error *err);

#ifdef __cplusplus
}
#endif
#endif
