/*
 * A judge model scores continuations: ln p(c_j | context, c_<j) for every
 * continuation token, from one batched decode that asks for logits at
 * exactly the positions that predict a continuation token. It has its own
 * llama context, sized so that the whole text is one micro-batch.
 */
#include "internal.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

struct sm_judge {
    sm_model *model;
    struct llama_context *ctx;
    int32_t n_ctx;
    struct llama_batch batch;
    char error[512];
};

static sm_status judge_fail(sm_judge *j, sm_status status, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

static sm_status judge_fail(sm_judge *j, sm_status status, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(j->error, sizeof j->error, fmt, ap);
    va_end(ap);
    return status;
}

sm_judge_params sm_judge_default_params(void) { return (sm_judge_params){.n_ctx = 0, .n_threads = 0}; }

static struct llama_context *judge_context(sm_model *model, uint32_t n_ctx, int32_t n_threads, sm_error *err) {
    sm_context_opts o = {
        .n_ctx = n_ctx,
        .n_batch = n_ctx,  /* the whole text in one decode ...   */
        .n_ubatch = n_ctx, /* ... and in one micro-batch          */
        .n_threads = n_threads,
        .what = "a judge context",
    };
    return sm_context_new(model, &o, err);
}

sm_judge *sm_judge_new(sm_model *judge, const sm_model *generator, const sm_judge_params *params, sm_error *err) {
    if (!judge) {
        sm_error_set(err, SM_ERR_INVALID_ARGUMENT, "no judge model given");
        return NULL;
    }
    sm_judge_params p = params ? *params : sm_judge_default_params();
    if (p.n_threads < 0) {
        sm_error_set(err, SM_ERR_INVALID_ARGUMENT, "judge n_threads must be >= 0 (got %d)", p.n_threads);
        return NULL;
    }
    sm_error mismatch;
    if (generator && !sm_vocab_equal(generator, judge, &mismatch)) {
        sm_error_set(err, SM_ERR_VOCAB_MISMATCH,
                     "the judge '%s' cannot score the tokens of '%s': their vocabularies differ (%s); "
                     "a judge must share the generating model's vocabulary",
                     judge->path, generator->path, mismatch.message);
        return NULL;
    }
    uint32_t n_ctx = p.n_ctx;
    if (n_ctx == 0) n_ctx = (uint32_t)llama_model_n_ctx_train(judge->lm);
    if (n_ctx == 0) n_ctx = 2048;
    int32_t n_threads = p.n_threads; /* 0: the online cores */
    sm_judge *j = calloc(1, sizeof *j);
    if (!j) {
        sm_error_set(err, SM_ERR_NO_MEMORY, "out of memory");
        return NULL;
    }
    j->model = judge;
    j->ctx = judge_context(judge, n_ctx, n_threads, err);
    if (!j->ctx) {
        free(j);
        return NULL;
    }
    /* llama.cpp may pad the context past the batch sizes asked for; one
     * decode holds no more than the smallest of the three. */
    uint32_t usable = llama_n_ctx(j->ctx);
    if (llama_n_batch(j->ctx) < usable) usable = llama_n_batch(j->ctx);
    if (llama_n_ubatch(j->ctx) < usable) usable = llama_n_ubatch(j->ctx);
    j->n_ctx = (int32_t)usable;
    j->batch = llama_batch_init(j->n_ctx, 0, 1);
    return j;
}

void sm_judge_free(sm_judge *j) {
    if (!j) return;
    llama_batch_free(j->batch);
    llama_free(j->ctx);
    free(j);
}

int32_t sm_judge_n_ctx(const sm_judge *j) { return j->n_ctx; }
const char *sm_judge_last_error(const sm_judge *j) { return j->error; }

/* ln softmax(logits)[token], in double so long sums stay exact. */
static double log_prob_of(const float *logits, int32_t n_vocab, sm_token token) {
    float max = logits[0];
    for (int32_t t = 1; t < n_vocab; t++)
        if (logits[t] > max) max = logits[t];
    double sum = 0.0;
    for (int32_t t = 0; t < n_vocab; t++) sum += exp((double)logits[t] - max);
    return (double)logits[token] - max - log(sum);
}

static void batch_add(struct llama_batch *b, sm_token token, int32_t pos, bool logits) {
    int32_t i = b->n_tokens++;
    b->token[i] = token;
    b->pos[i] = pos;
    b->n_seq_id[i] = 1;
    b->seq_id[i][0] = 0;
    b->logits[i] = logits;
}

static sm_status check_tokens(sm_judge *j, const sm_token *tokens, int32_t n, const char *what) {
    for (int32_t i = 0; i < n; i++)
        if (tokens[i] < 0 || tokens[i] >= j->model->n_vocab)
            return judge_fail(j, SM_ERR_INVALID_ARGUMENT, "%s token %d at index %d is outside the judge's vocabulary (%d)",
                              what, tokens[i], i, j->model->n_vocab);
    return SM_OK;
}

sm_status sm_judge_score_tokens(sm_judge *j, const sm_token *context, int32_t n_context, const sm_token *continuation,
                                int32_t n_continuation, float *logprobs, sm_judge_score *out) {
    if (!j || !out) return j ? judge_fail(j, SM_ERR_INVALID_ARGUMENT, "no score to write") : SM_ERR_INVALID_ARGUMENT;
    *out = (sm_judge_score){.mean_nll = NAN};
    if (n_context < 1 || !context)
        return judge_fail(j, SM_ERR_INVALID_ARGUMENT,
                          "the judge needs at least one context token (e.g. BOS) before the continuation");
    if (n_continuation < 0 || (n_continuation > 0 && !continuation))
        return judge_fail(j, SM_ERR_INVALID_ARGUMENT, "invalid continuation (%d tokens)", n_continuation);
    sm_status st = check_tokens(j, context, n_context, "context");
    if (st == SM_OK) st = check_tokens(j, continuation, n_continuation, "continuation");
    if (st != SM_OK || n_continuation == 0) return st;
    /* The last continuation token is only predicted, never fed. */
    int32_t n_feed = n_context + n_continuation - 1;
    if (n_feed > j->n_ctx)
        return judge_fail(j, SM_ERR_PROMPT_TOO_LONG,
                          "%d context + %d continuation tokens do not fit the judge's context of %d (it reads %d)",
                          n_context, n_continuation, j->n_ctx, n_feed);

    llama_memory_clear(llama_get_memory(j->ctx), true);
    j->batch.n_tokens = 0;
    for (int32_t i = 0; i < n_context; i++) batch_add(&j->batch, context[i], i, i == n_context - 1);
    for (int32_t i = 0; i + 1 < n_continuation; i++) batch_add(&j->batch, continuation[i], n_context + i, true);
    int32_t rc = sm_decode(j->ctx, &j->batch);
    if (rc != 0) return judge_fail(j, SM_ERR_DECODE, "the judge's llama_decode failed (code %d) on %d tokens", rc, n_feed);

    double sum = 0.0;
    for (int32_t k = 0; k < n_continuation; k++) {
        const float *logits = llama_get_logits_ith(j->ctx, n_context - 1 + k);
        if (!logits) return judge_fail(j, SM_ERR_DECODE, "the judge returned no logits for continuation token %d", k);
        double lp = log_prob_of(logits, j->model->n_vocab, continuation[k]);
        if (logprobs) logprobs[k] = (float)lp;
        sum += lp;
    }
    out->sum_logprob = sum;
    out->n_scored = n_continuation;
    out->mean_nll = -sum / n_continuation;
    return SM_OK;
}

/* text with the judge's BOS (when its vocabulary adds one), as the judge's tokens */
static sm_status judge_tokens(sm_judge *j, const char *text, size_t len, sm_tokens *out) {
    sm_error err = {0};
    sm_status st = sm_tokenize(j->model, text, len, true, false, out, &err);
    return st == SM_OK ? SM_OK : judge_fail(j, st, "the judge cannot tokenize the text: %s", err.message);
}

sm_status sm_judge_score_text(sm_judge *j, const char *context, const char *continuation, sm_judge_score *out) {
    if (!j || !out) return j ? judge_fail(j, SM_ERR_INVALID_ARGUMENT, "no score to write") : SM_ERR_INVALID_ARGUMENT;
    *out = (sm_judge_score){.mean_nll = NAN, .bits_per_byte = NAN};
    if (!context || !continuation) return judge_fail(j, SM_ERR_INVALID_ARGUMENT, "no text to score");
    size_t n_context = strlen(context), n_cont = strlen(continuation);
    if (n_cont == 0) return SM_OK;
    char *whole = malloc(n_context + n_cont + 1);
    if (!whole) return judge_fail(j, SM_ERR_NO_MEMORY, "out of memory");
    memcpy(whole, context, n_context);
    memcpy(whole + n_context, continuation, n_cont + 1);
    sm_tokens all = {0}, head = {0};
    sm_status st = judge_tokens(j, whole, n_context + n_cont, &all);
    if (st == SM_OK) st = judge_tokens(j, context, n_context, &head);
    free(whole);
    if (st == SM_OK) {
        /* the context's tokens as the whole text has them; at least BOS or
         * the first token stays context, the rest is scored */
        int32_t common = 0;
        while (common < head.n && common < all.n && head.data[common] == all.data[common]) common++;
        if (common < 1) common = 1;
        if (all.n <= common) {
            st = judge_fail(j, SM_ERR_INVALID_ARGUMENT, "the judge's tokenizer left nothing of the continuation to score");
        } else {
            st = sm_judge_score_tokens(j, all.data, common, all.data + common, all.n - common, NULL, out);
            if (st == SM_OK) {
                out->n_bytes = (int64_t)n_cont;
                out->bits_per_byte = -out->sum_logprob / log(2.0) / (double)n_cont;
            }
        }
    }
    sm_tokens_free(&all);
    sm_tokens_free(&head);
    return st;
}
