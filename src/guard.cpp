/*
 * guard.cpp - the one C++ boundary between the library and llama.cpp.
 *
 * llama.h is a C API, but behind it is C++ that throws: a vocabulary
 * without byte tokens throws std::out_of_range from llama_tokenize, a
 * corrupt chat template or state file throws from deep inside. An
 * exception that reaches C code terminates the process. Every llama.cpp
 * call that can throw goes through one of these wrappers, which catch
 * everything and turn it into a status and a message in an sm_error.
 *
 * Invariant: no C++ exception crosses this file's extern "C" functions.
 * Each returns false (or NULL) on an exception, with err filled in; the
 * wrapped function's own return value is passed through otherwise.
 */
#include "guard.h"

#include <exception>
#include <new>

namespace {

void caught(sm_error *err, sm_status status, const char *what, const char *call) {
    sm_error_set(err, status, "llama.cpp failed in %s: %s", call, what && *what ? what : "unknown exception");
}

/* Runs f; on any exception fills err and returns false. */
template <typename F> bool guarded(sm_error *err, sm_status status, const char *call, F &&f) {
    try {
        f();
        return true;
    } catch (const std::bad_alloc &) {
        caught(err, SM_ERR_NO_MEMORY, "out of memory", call);
    } catch (const std::exception &e) {
        caught(err, status, e.what(), call);
    } catch (...) {
        caught(err, status, "unknown exception", call);
    }
    return false;
}

} // namespace

extern "C" {

bool smx_tokenize(const struct llama_vocab *vocab, const char *text, int32_t len, llama_token *tokens,
                  int32_t n_max, bool add_special, bool parse_special, int32_t *n_out, sm_error *err) {
    return guarded(err, SM_ERR_INVALID_ARGUMENT, "llama_tokenize", [&] {
        *n_out = llama_tokenize(vocab, text, len, tokens, n_max, add_special, parse_special);
    });
}

bool smx_token_to_piece(const struct llama_vocab *vocab, llama_token token, char *buf, int32_t size,
                        bool special, int32_t *n_out, sm_error *err) {
    return guarded(err, SM_ERR_INVALID_ARGUMENT, "llama_token_to_piece", [&] {
        *n_out = llama_token_to_piece(vocab, token, buf, size, 0, special);
    });
}

bool smx_detokenize(const struct llama_vocab *vocab, const llama_token *tokens, int32_t n_tokens, char *text,
                    int32_t size, bool remove_special, bool unparse_special, int32_t *n_out, sm_error *err) {
    return guarded(err, SM_ERR_INVALID_ARGUMENT, "llama_detokenize", [&] {
        *n_out = llama_detokenize(vocab, tokens, n_tokens, text, size, remove_special, unparse_special);
    });
}

bool smx_chat_apply_template(const char *tmpl, const struct llama_chat_message *msgs, size_t n_msgs, bool add_ass,
                             char *buf, int32_t size, int32_t *n_out, sm_error *err) {
    return guarded(err, SM_ERR_INVALID_ARGUMENT, "llama_chat_apply_template", [&] {
        *n_out = llama_chat_apply_template(tmpl, msgs, n_msgs, add_ass, buf, size);
    });
}

struct llama_sampler *smx_grammar_new(const struct llama_vocab *vocab, const char *grammar, const char *root,
                                      sm_error *err) {
    struct llama_sampler *s = nullptr;
    guarded(err, SM_ERR_INVALID_ARGUMENT, "llama_sampler_init_grammar",
            [&] { s = llama_sampler_init_grammar(vocab, grammar, root); });
    return s;
}

struct llama_sampler *smx_grammar_new_lazy(const struct llama_vocab *vocab, const char *grammar, const char *root,
                                           const char *const *patterns, size_t n_patterns, sm_error *err) {
    struct llama_sampler *s = nullptr;
    guarded(err, SM_ERR_INVALID_ARGUMENT, "llama_sampler_init_grammar_lazy_patterns", [&] {
        s = llama_sampler_init_grammar_lazy_patterns(vocab, grammar, root, const_cast<const char **>(patterns),
                                                     n_patterns, nullptr, 0);
    });
    return s;
}

bool smx_sampler_apply(struct llama_sampler *smpl, llama_token_data_array *cur, sm_error *err) {
    return guarded(err, SM_ERR_INVALID_ARGUMENT, "llama_sampler_apply", [&] { llama_sampler_apply(smpl, cur); });
}

bool smx_sampler_accept(struct llama_sampler *smpl, llama_token token, sm_error *err) {
    return guarded(err, SM_ERR_INVALID_ARGUMENT, "llama_sampler_accept", [&] { llama_sampler_accept(smpl, token); });
}

bool smx_sampler_reset(struct llama_sampler *smpl, sm_error *err) {
    return guarded(err, SM_ERR_INVALID_ARGUMENT, "llama_sampler_reset", [&] { llama_sampler_reset(smpl); });
}

struct llama_model *smx_model_load(const char *path, struct llama_model_params params, sm_error *err) {
    struct llama_model *model = nullptr;
    guarded(err, SM_ERR_MODEL, "llama_model_load_from_file", [&] { model = llama_model_load_from_file(path, params); });
    return model;
}

struct llama_context *smx_init_from_model(struct llama_model *model, struct llama_context_params params,
                                          sm_error *err) {
    struct llama_context *ctx = nullptr;
    guarded(err, SM_ERR_CONTEXT, "llama_init_from_model", [&] { ctx = llama_init_from_model(model, params); });
    return ctx;
}

int32_t smx_decode(struct llama_context *ctx, struct llama_batch batch) {
    int32_t rc = SMX_DECODE_THREW;
    try {
        rc = llama_decode(ctx, batch);
    } catch (...) {
        rc = SMX_DECODE_THREW;
    }
    return rc;
}

bool smx_state_seq_save_file(struct llama_context *ctx, const char *path, llama_seq_id seq, const llama_token *tokens,
                             size_t n_tokens, size_t *bytes_out, sm_error *err) {
    return guarded(err, SM_ERR_IO, "llama_state_seq_save_file", [&] {
        *bytes_out = llama_state_seq_save_file(ctx, path, seq, tokens, n_tokens);
    });
}

bool smx_state_seq_load_file(struct llama_context *ctx, const char *path, llama_seq_id seq, llama_token *tokens,
                             size_t capacity, size_t *n_tokens_out, size_t *bytes_out, sm_error *err) {
    return guarded(err, SM_ERR_IO, "llama_state_seq_load_file", [&] {
        *bytes_out = llama_state_seq_load_file(ctx, path, seq, tokens, capacity, n_tokens_out);
    });
}

} // extern "C"
