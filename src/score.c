/*
 * A judge model scores continuations: ln p(c_j | context, c_<j) for every
 * continuation token, from one batched decode that asks for logits at
 * exactly the positions that predict a continuation token. It has its own
 * llama context, sized so that the whole text is one micro-batch; several
 * texts share a decode as sequences of one cell pool (sm_judge_score_texts).
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

/* Texts one decode may hold, a sequence each. */
enum { JUDGE_SEQS = 16 };

static struct llama_context *judge_context(sm_model *model, uint32_t n_ctx, int32_t n_threads, sm_error *err) {
    sm_context_opts o = {
        .n_ctx = n_ctx,
        .n_batch = n_ctx,  /* the whole text in one decode ...   */
        .n_ubatch = n_ctx, /* ... and in one micro-batch          */
        .n_seq_max = JUDGE_SEQS,
        .kv_unified = true, /* the texts of a decode share the n_ctx cells */
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
    for (int32_t i = 0; i < n_context; i++) sm_llama_batch_add(&j->batch, context[i], i, 0, i == n_context - 1);
    for (int32_t i = 0; i + 1 < n_continuation; i++)
        sm_llama_batch_add(&j->batch, continuation[i], n_context + i, 0, true);
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

/* A text to score through the judge's tokenizer: all of context +
 * continuation, of which the first n_context tokens are context. */
typedef struct judged_text {
    sm_tokens all;
    int32_t n_context;
    int64_t n_bytes;        /* the continuation's                       */
} judged_text;

static sm_status prepare_text(sm_judge *j, const char *context, const char *continuation, judged_text *t) {
    *t = (judged_text){0};
    if (!context || !continuation) return judge_fail(j, SM_ERR_INVALID_ARGUMENT, "no text to score");
    size_t n_context = strlen(context), n_cont = strlen(continuation);
    t->n_bytes = (int64_t)n_cont;
    if (n_cont == 0) return SM_OK;
    char *whole = malloc(n_context + n_cont + 1);
    if (!whole) return judge_fail(j, SM_ERR_NO_MEMORY, "out of memory");
    memcpy(whole, context, n_context);
    memcpy(whole + n_context, continuation, n_cont + 1);
    sm_tokens head = {0};
    sm_status st = judge_tokens(j, whole, n_context + n_cont, &t->all);
    if (st == SM_OK) st = judge_tokens(j, context, n_context, &head);
    free(whole);
    if (st == SM_OK) {
        /* the context's tokens as the whole text has them; at least BOS or
         * the first token stays context, the rest is scored */
        int32_t common = 0;
        while (common < head.n && common < t->all.n && head.data[common] == t->all.data[common]) common++;
        t->n_context = common < 1 ? 1 : common;
        if (t->all.n <= t->n_context)
            st = judge_fail(j, SM_ERR_INVALID_ARGUMENT, "the judge's tokenizer left nothing of the continuation to score");
    }
    sm_tokens_free(&head);
    return st;
}

static void finish_text_score(const judged_text *t, sm_judge_score *out) {
    out->n_bytes = t->n_bytes;
    out->bits_per_byte = -out->sum_logprob / log(2.0) / (double)t->n_bytes;
}

sm_status sm_judge_score_text(sm_judge *j, const char *context, const char *continuation, sm_judge_score *out) {
    if (!j || !out) return j ? judge_fail(j, SM_ERR_INVALID_ARGUMENT, "no score to write") : SM_ERR_INVALID_ARGUMENT;
    *out = (sm_judge_score){.mean_nll = NAN, .bits_per_byte = NAN};
    judged_text t;
    sm_status st = prepare_text(j, context, continuation, &t);
    if (st == SM_OK && t.n_bytes > 0) {
        const sm_token *all = t.all.data;
        st = sm_judge_score_tokens(j, all, t.n_context, all + t.n_context, t.all.n - t.n_context, NULL, out);
        if (st == SM_OK) finish_text_score(&t, out);
    }
    sm_tokens_free(&t.all);
    return st;
}

/* Decodes texts[0..n) together, a sequence each, and scores them. */
static sm_status score_packed(sm_judge *j, judged_text *const *texts, int32_t n, sm_judge_score *const *out) {
    llama_memory_clear(llama_get_memory(j->ctx), true);
    j->batch.n_tokens = 0;
    int32_t first_row[JUDGE_SEQS];
    for (int32_t s = 0; s < n; s++) {
        const judged_text *t = texts[s];
        first_row[s] = j->batch.n_tokens + t->n_context - 1;
        for (int32_t i = 0; i + 1 < t->all.n; i++)
            sm_llama_batch_add(&j->batch, t->all.data[i], i, s, i >= t->n_context - 1);
    }
    int32_t rc = sm_decode(j->ctx, &j->batch);
    if (rc != 0)
        return judge_fail(j, SM_ERR_DECODE, "the judge's llama_decode failed (code %d) on %d texts", rc, n);
    for (int32_t s = 0; s < n; s++) {
        const judged_text *t = texts[s];
        double sum = 0.0;
        int32_t n_cont = t->all.n - t->n_context;
        for (int32_t k = 0; k < n_cont; k++) {
            const float *logits = llama_get_logits_ith(j->ctx, first_row[s] + k);
            if (!logits) return judge_fail(j, SM_ERR_DECODE, "the judge returned no logits for a continuation token");
            sum += log_prob_of(logits, j->model->n_vocab, t->all.data[t->n_context + k]);
        }
        *out[s] = (sm_judge_score){.sum_logprob = sum, .n_scored = n_cont, .mean_nll = -sum / n_cont};
        finish_text_score(t, out[s]);
    }
    return SM_OK;
}

sm_status sm_judge_score_texts(sm_judge *j, int32_t n, const char *const *contexts, const char *const *continuations,
                               sm_judge_score *scores, sm_status *status) {
    if (!j || n < 0 || (n > 0 && (!contexts || !continuations || !scores || !status)))
        return j ? judge_fail(j, SM_ERR_INVALID_ARGUMENT, "no texts, scores or statuses given") : SM_ERR_INVALID_ARGUMENT;
    judged_text *texts = calloc((size_t)n + 1, sizeof *texts);
    if (!texts) return judge_fail(j, SM_ERR_NO_MEMORY, "out of memory");
    sm_status first_failure = SM_OK;
    judged_text *pack[JUDGE_SEQS];
    sm_judge_score *pack_out[JUDGE_SEQS];
    int32_t n_pack = 0, pack_tokens = 0;
    for (int32_t i = 0; i <= n && first_failure == SM_OK; i++) {
        judged_text *t = &texts[i];
        int32_t n_feed = 0;
        if (i < n) {
            scores[i] = (sm_judge_score){.mean_nll = NAN, .bits_per_byte = NAN};
            status[i] = prepare_text(j, contexts[i], continuations[i], t);
            n_feed = t->all.n - 1;
            if (status[i] == SM_OK && n_feed > j->n_ctx)
                status[i] = judge_fail(j, SM_ERR_PROMPT_TOO_LONG, "%d tokens do not fit the judge's context of %d",
                                       t->all.n, j->n_ctx);
            if (status[i] != SM_OK && status[i] != SM_ERR_PROMPT_TOO_LONG) first_failure = status[i];
            if (status[i] != SM_OK || t->n_bytes == 0) continue;
        }
        /* the pack so far goes when this text would not fit in it, or at the end */
        if (n_pack > 0 && (i == n || n_pack == JUDGE_SEQS || pack_tokens + n_feed > j->n_ctx)) {
            first_failure = score_packed(j, pack, n_pack, pack_out);
            n_pack = 0, pack_tokens = 0;
        }
        if (i < n) {
            pack[n_pack] = t;
            pack_out[n_pack++] = &scores[i];
            pack_tokens += n_feed;
        }
    }
    for (int32_t i = 0; i < n; i++) sm_tokens_free(&texts[i].all);
    free(texts);
    return first_failure;
}
