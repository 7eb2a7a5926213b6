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

#include "ggml-rpc.h"

#include <cstdio>
#include <cstring>
#include <exception>
#include <new>
#include <unistd.h>
#include <stdexcept>
#include <string>

namespace {

/* What the last exception a wrapper caught in this thread said. */
thread_local std::string last_exception;
/* Wrappers running in this thread: an abort inside one becomes an
 * exception it catches (see throw_on_abort). */
thread_local int guard_depth;

struct guard_scope {
    guard_scope() { guard_depth++; }
    ~guard_scope() { guard_depth--; }
};

void caught(sm_error *err, sm_status status, const char *what, const char *call) {
    last_exception = what && *what ? what : "unknown exception";
    sm_error_set(err, status, "llama.cpp failed in %s: %s", call, what && *what ? what : "unknown exception");
}

/* Runs f; on any exception fills err and returns false. */
template <typename F> bool guarded(sm_error *err, sm_status status, const char *call, F &&f) {
    guard_scope scope;
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

struct llama_sampler *smx_infill_new(const struct llama_vocab *vocab, sm_error *err) {
    struct llama_sampler *s = nullptr;
    guarded(err, SM_ERR_INVALID_ARGUMENT, "llama_sampler_init_infill", [&] { s = llama_sampler_init_infill(vocab); });
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
    guard_scope scope;
    try {
        rc = llama_decode(ctx, batch);
    } catch (const std::exception &e) {
        last_exception = e.what();
        rc = SMX_DECODE_THREW;
    } catch (...) {
        last_exception = "unknown exception";
        rc = SMX_DECODE_THREW;
    }
    return rc;
}

const char *smx_last_exception(void) { return last_exception.c_str(); }

/* ggml aborts the process where its RPC transport fails (a server that
 * went away). Inside one of these wrappers the abort is thrown instead,
 * reaches the wrapper and becomes an error. In a thread of ggml's own (its
 * RPC dispatcher) nothing can catch it and the caller waits for that
 * thread: the process ends there, with the reason said on one line and an
 * exit code of 1 rather than a signal. Set once an RPC server is used. */
static void throw_on_abort(const char *message) {
    if (guard_depth > 0) throw std::runtime_error(message);
    fflush(NULL);
    const char *why = strstr(message, ": "); /* past ggml's "file:line: " */
    fprintf(stderr, "llama_selfmod: error: llama.cpp cannot go on: %s (an RPC server went away or answered wrongly)\n",
            why ? why + 2 : message);
    _exit(1);
}

int32_t smx_rpc_devices(const char *endpoint, ggml_backend_dev_t *out, int32_t max, sm_error *err) {
    int32_t n = -1;
    ggml_set_abort_callback(throw_on_abort);
    guarded(err, SM_ERR_MODEL, "ggml_backend_rpc_add_server", [&] {
        ggml_backend_reg_t reg = ggml_backend_rpc_add_server(endpoint);
        n = 0;
        for (size_t i = 0; reg && i < ggml_backend_reg_dev_count(reg) && n < max; i++)
            out[n++] = ggml_backend_reg_dev_get(reg, i);
    });
    return n;
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
