/*
 * context.c - every llama.cpp context the library makes (sessions, the
 * LLooM tree, the judge, steering) is made here, so that its settings,
 * its thread default and the error that says why one could not be made
 * are written once.
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
