/*
 * embed.c - embeddings (OpenAI's /v1/embeddings): each input decoded alone
 * in a context made for embeddings, its tokens pooled by the model's own
 * pooling (mean for a generative model, which names none), L2-normalised
 * as llama-server does by default. Not generation: nothing is sampled.
 */
#include "internal.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

int32_t sm_model_n_embd(const sm_model *model) { return model ? llama_model_n_embd(model->lm) : 0; }

static struct llama_context *embedding_context(const sm_model *model, uint32_t n_ctx, int32_t n_threads,
                                               sm_error *err) {
    sm_context_opts o = {.n_ctx = n_ctx, .n_batch = n_ctx, .n_ubatch = n_ctx, .n_threads = n_threads,
                         .embeddings = true, .what = "an embedding context"};
    struct llama_context *ctx = sm_context_new(model, &o, err);
    if (ctx && llama_pooling_type(ctx) == LLAMA_POOLING_TYPE_NONE) { /* a generative model: mean */
        llama_free(ctx);
        o.mean_pooling = true;
        ctx = sm_context_new(model, &o, err);
    }
    return ctx;
}

sm_status sm_embed_tokens(const sm_model *model, const sm_token *const *inputs, const int32_t *n_tokens,
                          int32_t n_inputs, int32_t n_threads, float *out, sm_error *err) {
    if (!model || !inputs || !n_tokens || n_inputs < 1 || !out) {
        sm_error_set(err, SM_ERR_INVALID_ARGUMENT, "sm_embed_tokens: a model, inputs and an output are needed");
        return SM_ERR_INVALID_ARGUMENT;
    }
    int32_t longest = 0, n_train = sm_model_n_ctx_train(model);
    for (int32_t i = 0; i < n_inputs; i++) {
        if (n_tokens[i] < 1 || !inputs[i]) {
            sm_error_set(err, SM_ERR_INVALID_ARGUMENT, "input %d is empty", i);
            return SM_ERR_INVALID_ARGUMENT;
        }
        for (int32_t k = 0; k < n_tokens[i]; k++)
            if (inputs[i][k] < 0 || inputs[i][k] >= model->n_vocab) {
                sm_error_set(err, SM_ERR_INVALID_ARGUMENT, "input %d: token %d is not in the vocabulary (0 to %d)", i,
                             inputs[i][k], model->n_vocab - 1);
                return SM_ERR_INVALID_ARGUMENT;
            }
        if (n_train > 0 && n_tokens[i] > n_train) {
            sm_error_set(err, SM_ERR_PROMPT_TOO_LONG, "input %d is %d tokens; '%s' takes at most %d", i, n_tokens[i],
                         model->path, n_train);
            return SM_ERR_PROMPT_TOO_LONG;
        }
        if (n_tokens[i] > longest) longest = n_tokens[i];
    }
    struct llama_context *ctx = embedding_context(model, (uint32_t)(longest < 16 ? 16 : longest), n_threads, err);
    if (!ctx) return SM_ERR_CONTEXT;
    const int32_t n_embd = sm_model_n_embd(model);
    llama_batch batch = llama_batch_init(longest, 0, 1);
    sm_status st = SM_OK;
    for (int32_t i = 0; i < n_inputs && st == SM_OK; i++) {
        llama_memory_clear(llama_get_memory(ctx), true);
        batch.n_tokens = 0;
        for (int32_t k = 0; k < n_tokens[i]; k++) sm_llama_batch_add(&batch, inputs[i][k], k, 0, true); /* all pooled */
        int32_t rc = sm_decode(ctx, &batch);
        const float *e = rc == 0 ? llama_get_embeddings_seq(ctx, 0) : NULL;
        if (!e) {
            sm_error_set(err, SM_ERR_DECODE, "embedding input %d: llama_decode failed (code %d: %s)", i, rc,
                         rc ? sm_decode_failure(rc) : "no pooled embedding");
            st = SM_ERR_DECODE;
            break;
        }
        double norm = 0;
        for (int32_t j = 0; j < n_embd; j++) norm += (double)e[j] * e[j];
        float scale = norm > 0 ? (float)(1.0 / sqrt(norm)) : 0.0f;
        for (int32_t j = 0; j < n_embd; j++) out[(size_t)i * (size_t)n_embd + (size_t)j] = e[j] * scale;
    }
    llama_batch_free(batch);
    llama_free(ctx);
    return st;
}

sm_status sm_embed(const sm_model *model, const char *const *texts, int32_t n_texts, int32_t n_threads, float *out,
                   int32_t *n_tokens, sm_error *err) {
    if (!texts || n_texts < 1) {
        sm_error_set(err, SM_ERR_INVALID_ARGUMENT, "sm_embed: no texts");
        return SM_ERR_INVALID_ARGUMENT;
    }
    sm_tokens *toks = calloc((size_t)n_texts, sizeof *toks);
    const sm_token **ptrs = calloc((size_t)n_texts, sizeof *ptrs);
    int32_t *lens = calloc((size_t)n_texts, sizeof *lens);
    sm_status st = toks && ptrs && lens ? SM_OK : SM_ERR_NO_MEMORY;
    if (st != SM_OK) sm_error_set(err, st, "out of memory");
    for (int32_t i = 0; i < n_texts && st == SM_OK; i++) {
        st = sm_tokenize(model, texts[i] ? texts[i] : "", texts[i] ? strlen(texts[i]) : 0, true, false, &toks[i], err);
        ptrs[i] = toks[i].data;
        lens[i] = toks[i].n;
        if (n_tokens) n_tokens[i] = toks[i].n;
    }
    if (st == SM_OK) st = sm_embed_tokens(model, ptrs, lens, n_texts, n_threads, out, err);
    for (int32_t i = 0; toks && i < n_texts; i++) sm_tokens_free(&toks[i]);
    free(toks);
    free(ptrs);
    free(lens);
    return st;
}
