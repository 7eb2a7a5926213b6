/*
 * context.c - the context layer. Every llama.cpp context the library makes
 * (sessions, batches, the LLooM tree, the judge, steering) is made here, so
 * that its settings, its thread default and the error that says why one
 * could not be made are written once; and every decode goes through
 * sm_decode, the one call of llama_decode (behind guard.cpp's exception
 * wall). sm_models_decode is the parallel decode of a set of models, each
 * with its context, that sessions and the tree are algorithms over.
 *
 * Invariant: after sm_models_decode every model has decoded the batch, or
 * (when any failed) none of them keeps any of it.
 */
#include "internal.h"

#include <stdlib.h>
#include <unistd.h>

int32_t sm_online_cores(void) {
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    return n > 0 ? (int32_t)n : 1;
}

struct llama_context *sm_context_new(const sm_model *model, const sm_context_opts *o, sm_error *err) {
    struct llama_context_params cp = llama_context_default_params();
    cp.n_ctx = o->n_ctx;
    cp.n_batch = o->n_batch ? o->n_batch : 512;
    cp.n_ubatch = o->n_ubatch ? o->n_ubatch : cp.n_batch;
    cp.n_seq_max = o->n_seq_max ? o->n_seq_max : 1;
    cp.kv_unified = o->kv_unified;
    cp.n_threads = cp.n_threads_batch = o->n_threads > 0 ? o->n_threads : sm_online_cores();
    if (o->cb_eval) {
        cp.cb_eval = o->cb_eval;
        cp.cb_eval_user_data = o->cb_eval_user_data;
    }
    if (o->no_flash_attention) cp.flash_attn_type = LLAMA_FLASH_ATTN_TYPE_DISABLED;
    if (o->embeddings) {
        cp.embeddings = true;
        cp.pooling_type = o->mean_pooling ? LLAMA_POOLING_TYPE_MEAN : LLAMA_POOLING_TYPE_UNSPECIFIED;
    }
    cp.no_perf = true;
    sm_llama_clear_log_error();
    sm_error thrown = {0};
    struct llama_context *ctx = smx_init_from_model(model->lm, cp, &thrown);
    if (!ctx) {
        const char *why = *thrown.message ? thrown.message : sm_llama_last_log_error();
        sm_error_set(err, SM_ERR_CONTEXT, "cannot create %s of %u tokens%s for '%s'%s%s", o->what ? o->what : "a context",
                     o->n_ctx, cp.n_seq_max > 1 ? " and several sequences" : "", model->path, *why ? ": " : "", why);
        return NULL;
    }
    if (llama_n_seq_max(ctx) < cp.n_seq_max) {
        sm_error_set(err, SM_ERR_CONTEXT, "llama.cpp gave '%s' %u sequences, %u needed", model->path,
                     llama_n_seq_max(ctx), cp.n_seq_max);
        llama_free(ctx);
        return NULL;
    }
    return ctx;
}

int32_t sm_decode(struct llama_context *ctx, const llama_batch *batch) { return smx_decode(ctx, *batch); }

const char *sm_decode_failure(int32_t rc) {
    switch (rc) {
    case 1: return "no room left in the KV cache: the context size has been exceeded";
    case 2: return "aborted";
    case -1: return "an invalid batch";
    case SMX_DECODE_THREW: return *smx_last_exception() ? smx_last_exception() : "llama.cpp threw";
    default: return rc < 0 ? "an error inside llama.cpp" : "a warning from llama.cpp";
    }
}

typedef struct models_job {
    int32_t (*decode)(void *arg, int32_t m);
    void *arg;
    int32_t rc[SM_MAX_MODELS];
} models_job;

static void run_one(void *p, int32_t m) {
    models_job *job = p;
    job->rc[m] = job->decode(job->arg, m);
}

int32_t sm_models_decode(sm_pool *pool, int32_t n_models, int32_t (*decode)(void *arg, int32_t m),
                         void (*undo)(void *arg, int32_t m), void *arg, int32_t *failed) {
    models_job job = {.decode = decode, .arg = arg};
    if (n_models == 1 || !pool) {
        for (int32_t m = 0; m < n_models; m++) run_one(&job, m);
    } else {
        sm_pool_run(pool, run_one, &job, n_models);
    }
    int32_t first = -1;
    for (int32_t m = 0; m < n_models && first < 0; m++)
        if (job.rc[m] != 0) first = m;
    if (failed) *failed = first;
    if (first < 0) return 0;
    for (int32_t m = 0; undo && m < n_models; m++) undo(arg, m); /* none keeps a part of it, the failed one included */
    return job.rc[first];
}
