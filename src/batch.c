/*
 * batch.c - several sessions decoding in one llama.cpp context per model.
 *
 * A batch owns one context per model with n_seq sequences (llama.cpp's
 * seq ids, a KV stream each). Each session made from it generates on
 * its own sequence with its own loop, policy, operators and rewinds, in
 * its own thread; only llama_decode is shared. A session that needs a
 * decode hands its tokens to the batch and waits: when every session that
 * is busy (inside a generation or a prompt) has handed in its tokens, the
 * batch's decoder thread decodes them all in ONE llama_decode, copies each
 * session's distribution out and wakes them. Sessions that join or leave
 * between steps simply change how many are busy (continuous batching). A
 * session that is busy but slow to hand in (doing something else) is not
 * waited for longer than WAIT_MS. One thread decodes, always the same:
 * llama.cpp's OpenMP workers belong to the thread that calls it, and a
 * different caller each step would keep a spinning team for each.
 *
 * Other work that decodes beside the batch (a LLooM tree, in its own
 * context) hands its decodes to the same decoder thread, which runs one
 * of them after each pass of the batch's own, and batches made with
 * share_decoder (a server's batch per model set) all decode on the first
 * one's thread: llama.cpp's OpenMP workers belong to the thread that
 * decodes, and with two such teams in a process OpenMP's barriers sleep
 * instead of spinning (measured: 8 streams 206 -> 142 tokens/s for as long
 * as a second batch's thread lived).
 *
 * Invariant: a decode never mixes models, every request's last token has
 * its logits copied out before the next decode starts, and a sequence's
 * cells are touched only by its own session (seq_rm on its own seq id).
 */
#include "internal.h"

#include <errno.h>
#include <pthread.h>
#include <semaphore.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* The longest a decode waits for a busy session that is not handing in. */
enum { WAIT_MS = 20 };

typedef struct request {
    const sm_token *tokens;
    int32_t n;
    int32_t pos;            /* of tokens[0]                              */
    llama_seq_id seq;
    /* NULL: tokens follow each other in seq. Else rows: token i at pos
     * in seqs[i] (a session's lookahead branches), every one an output */
    const llama_seq_id *seqs;
    float *logits;          /* n_vocab floats for the last token's (rows: n
                               rows of them); NULL: none wanted          */
    sm_introspector *observe; /* decoded alone, observed by it (or NULL) */
    int32_t rc;
    sem_t done;             /* posted once rc is set: the waiting session
                               wakes alone, without the batch's mutex    */
} request;

/* A decode of another context, run by the decoder thread. */
typedef struct other_request {
    sm_batch *batch;        /* whose stats count it                      */
    struct llama_context *ctx;
    const llama_batch *batch_of_other;
    int32_t rc;
    sem_t done;
    struct other_request *next;
} other_request;

/* The thread that decodes for one or more batches, and what they share
 * with it: the mutex guards every field of its batches but the contexts. */
typedef struct decoder {
    pthread_mutex_t mutex;
    pthread_cond_t submitted;    /* there is work, or it should stop          */
    pthread_t thread;
    bool stopping;
    int32_t n_refs;              /* batches using it                          */
    sm_batch *batches;           /* theirs, through next_on_decoder           */
    other_request *others, **others_tail; /* first in, first decoded          */
} decoder;

typedef struct batch_model {
    const sm_model *model;
    struct llama_context *ctx;
    llama_batch batch;
    request **pending;       /* waiting to be decoded                     */
    int32_t n_pending;
    sm_introspector *observing; /* the eval callback's, during a decode of
                                   one observed request; else NULL      */
} batch_model;

struct sm_batch {
    decoder *dec;
    sm_batch *next_on_decoder;
    pthread_mutex_t context_mutex; /* the contexts: a decode, or a cache operation */
    batch_model models[SM_MAX_MODELS];
    int32_t n_models;
    int32_t n_seq;
    uint32_t n_ctx_seq, n_batch;
    bool kv_unified;
    int32_t n_busy;          /* sessions inside a generation or a prompt  */
    bool *seq_taken;
    int64_t n_decodes, n_tokens_decoded, n_requests, n_other_decodes;
    double ms_decoding;
};

sm_batch_params sm_batch_default_params(void) {
    return (sm_batch_params){.n_seq = 4, .n_ctx_seq = 2048, .n_batch = 512, .n_threads = 0};
}

static void *decoder_loop(void *arg);

static void decoder_destroy(decoder *d) {
    pthread_mutex_destroy(&d->mutex);
    pthread_cond_destroy(&d->submitted);
    free(d);
}

/* A decoder thread, started, serving no batch yet (NULL: none could be). */
static decoder *decoder_new(void) {
    decoder *d = calloc(1, sizeof *d);
    if (!d) return NULL;
    pthread_mutex_init(&d->mutex, NULL);
    pthread_cond_init(&d->submitted, NULL);
    d->others_tail = &d->others;
    if (pthread_create(&d->thread, NULL, decoder_loop, d) != 0) {
        decoder_destroy(d);
        return NULL;
    }
    return d;
}

/* b decodes on d from now on. */
static void decoder_attach(decoder *d, sm_batch *b) {
    pthread_mutex_lock(&d->mutex);
    b->dec = d;
    b->next_on_decoder = d->batches;
    d->batches = b;
    d->n_refs++;
    pthread_mutex_unlock(&d->mutex);
}

/* b leaves d (none of its sessions or trees is left); the last batch to
 * leave stops the thread. */
static void decoder_detach(decoder *d, sm_batch *b) {
    pthread_mutex_lock(&d->mutex);
    for (sm_batch **p = &d->batches; *p; p = &(*p)->next_on_decoder)
        if (*p == b) {
            *p = b->next_on_decoder;
            break;
        }
    bool last = --d->n_refs == 0;
    if (last) {
        d->stopping = true;
        pthread_cond_signal(&d->submitted);
    }
    pthread_mutex_unlock(&d->mutex);
    if (!last) return;
    pthread_join(d->thread, NULL);
    decoder_destroy(d);
}

void sm_batch_free(sm_batch *b) {
    if (!b) return;
    if (b->dec) decoder_detach(b->dec, b);
    for (int32_t m = 0; m < b->n_models; m++) {
        if (b->models[m].ctx) llama_free(b->models[m].ctx);
        if (b->models[m].batch.token) llama_batch_free(b->models[m].batch);
        free(b->models[m].pending);
    }
    free(b->seq_taken);
    pthread_mutex_destroy(&b->context_mutex);
    free(b);
}

/* The batch contexts' eval callback: the observing session's, if any. */
static bool observe_batch(struct ggml_tensor *t, bool ask, void *user_data) {
    const batch_model *bm = user_data;
    if (!bm->observing) return !ask;
    return sm_introspector_cb(t, ask, bm->observing);
}

sm_batch *sm_batch_new(sm_model *const *models, int32_t n_models, const sm_batch_params *params, sm_error *err) {
    sm_batch_params p = params ? *params : sm_batch_default_params();
    if (!models || n_models < 1 || n_models > SM_MAX_MODELS || p.n_seq < 1 || p.n_seq > 256 || p.n_batch < 1) {
        sm_error_set(err, SM_ERR_INVALID_ARGUMENT, "a batch takes 1 to %d models and 1 to 256 sequences", SM_MAX_MODELS);
        return NULL;
    }
    if (p.n_batch < (uint32_t)p.n_seq) { /* llama.cpp asserts that a decode has room for a token of every sequence */
        sm_error_set(err, SM_ERR_INVALID_ARGUMENT, "n_batch %u is smaller than the %d sequences: a step decodes a token "
                     "of every sequence at once (give at least %d)", p.n_batch, p.n_seq, p.n_seq);
        return NULL;
    }
    sm_batch *b = calloc(1, sizeof *b);
    if (!b) {
        sm_error_set(err, SM_ERR_NO_MEMORY, "out of memory");
        return NULL;
    }
    pthread_mutex_init(&b->context_mutex, NULL);
    b->n_seq = p.n_seq;
    b->n_batch = p.n_batch;
    b->kv_unified = p.kv_unified;
    b->seq_taken = calloc((size_t)p.n_seq, sizeof *b->seq_taken);
    /* A sequence never goes past a model's training length, in any model
     * (a session clamps itself too): a stream per sequence is no longer,
     * and one pool holds no more than every sequence at its longest. */
    uint32_t n_ctx_seq = p.n_ctx_seq;
    for (int32_t m = 0; m < n_models; m++) {
        const int32_t n_train = llama_model_n_ctx_train(models[m]->lm);
        if (n_train <= 0) continue;
        const uint64_t most = (uint64_t)n_train * (uint64_t)(p.kv_unified ? p.n_seq : 1);
        if (n_ctx_seq == 0) n_ctx_seq = (uint32_t)n_train;
        else if (n_ctx_seq > most) n_ctx_seq = (uint32_t)most;
    }
    b->n_ctx_seq = n_ctx_seq;
    for (int32_t m = 0; m < n_models && b->seq_taken; m++) {
        batch_model *bm = &b->models[m];
        sm_context_opts o = {
            /* a stream per sequence (its attention spans its own cells only),
             * or one pool they share */
            .n_ctx = p.kv_unified ? n_ctx_seq : n_ctx_seq * (uint32_t)p.n_seq,
            .n_batch = p.n_batch,
            .n_seq_max = (uint32_t)p.n_seq,
            .kv_unified = p.kv_unified,
            .n_threads = p.n_threads,
            /* asks for nothing unless a decode is of an observing session */
            .cb_eval = observe_batch,
            .cb_eval_user_data = bm,
            .what = "a batch context",
        };
        bm->model = models[m];
        bm->ctx = sm_context_new(models[m], &o, err);
        if (!bm->ctx) {
            sm_batch_free(b);
            return NULL;
        }
        b->n_models++;
        /* clearing writes the whole cache now: its pages are not first
         * touched in the middle of the first requests' decodes */
        llama_memory_clear(llama_get_memory(bm->ctx), true);
        bm->batch = llama_batch_init((int32_t)p.n_batch, 0, 1);
        /* Each sequence has one request pending at most, but during a pass
         * that takes several decodes (n_batch smaller than the step) the
         * requests already decoded stay in the array until the pass ends,
         * while their sessions hand in their next: up to 2 n_seq - 1. */
        bm->pending = calloc(2 * (size_t)p.n_seq, sizeof *bm->pending);
        if (!bm->batch.token || !bm->pending) break;
    }
    if (!b->seq_taken || b->n_models != n_models) {
        sm_batch_free(b);
        sm_error_set(err, SM_ERR_NO_MEMORY, "out of memory for a batch of %d sequences", p.n_seq);
        return NULL;
    }
    /* attached last: the decoder never sees a batch half made */
    decoder *d = p.share_decoder ? p.share_decoder->dec : decoder_new();
    if (!d) {
        sm_batch_free(b);
        sm_error_set(err, SM_ERR_NO_MEMORY, "cannot start the batch's decoder thread");
        return NULL;
    }
    decoder_attach(d, b);
    return b;
}

int32_t sm_batch_n_seq(const sm_batch *b) { return b->n_seq; }
bool sm_batch_kv_unified(const sm_batch *b) { return b->kv_unified; }
uint32_t sm_batch_n_ctx_seq(const sm_batch *b) { return b->n_ctx_seq; }

sm_batch_stats sm_batch_get_stats(sm_batch *b) {
    pthread_mutex_lock(&b->dec->mutex);
    sm_batch_stats st = {b->n_decodes, b->n_tokens_decoded, b->n_requests, b->ms_decoding, b->n_other_decodes};
    pthread_mutex_unlock(&b->dec->mutex);
    return st;
}

/* ------------------------------------------------------------------ */
/* What sessions call (session.c)                                      */
/* ------------------------------------------------------------------ */

int32_t sm_batch_take_seq(sm_batch *b) {
    pthread_mutex_lock(&b->dec->mutex);
    int32_t seq = -1;
    for (int32_t i = 0; i < b->n_seq && seq < 0; i++)
        if (!b->seq_taken[i]) seq = i;
    if (seq >= 0) b->seq_taken[seq] = true;
    pthread_mutex_unlock(&b->dec->mutex);
    return seq;
}

void sm_batch_lock_context(sm_batch *b) { pthread_mutex_lock(&b->context_mutex); }
void sm_batch_unlock_context(sm_batch *b) { pthread_mutex_unlock(&b->context_mutex); }

void sm_batch_give_seq(sm_batch *b, int32_t seq) {
    sm_batch_lock_context(b);
    for (int32_t m = 0; m < b->n_models; m++)
        llama_memory_seq_rm(llama_get_memory(b->models[m].ctx), seq, -1, -1);
    sm_batch_unlock_context(b);
    pthread_mutex_lock(&b->dec->mutex);
    b->seq_taken[seq] = false;
    pthread_mutex_unlock(&b->dec->mutex);
}

struct llama_context *sm_batch_context(const sm_batch *b, int32_t m) { return b->models[m].ctx; }

void sm_batch_busy(sm_batch *b, int32_t delta) {
    pthread_mutex_lock(&b->dec->mutex);
    b->n_busy += delta;
    if (delta < 0) pthread_cond_signal(&b->dec->submitted); /* one fewer to wait for: the rest may be complete */
    pthread_mutex_unlock(&b->dec->mutex);
}

static int by_seq(const void *a, const void *b) {
    llama_seq_id x = (*(request *const *)a)->seq, y = (*(request *const *)b)->seq;
    return (x > y) - (x < y);
}

/* Decodes every pending request of model m, in as few llama_decode calls
 * as n_batch allows. Called with the mutex held. */
static void decode_pending(sm_batch *b, batch_model *bm) {
    const int32_t n_vocab = bm->model->n_vocab;
    /* in sequence order, whatever the order they came in: the same batch
     * shape step after step, so llama.cpp can reuse its graph */
    qsort(bm->pending, (size_t)bm->n_pending, sizeof *bm->pending, by_seq);
    /* Only what is pending now: a session woken by this pass hands in its
     * next request while the pass goes on, and that one waits for the
     * other sessions of its step (decoding it at once would split the
     * step into decodes of one token). */
    const int32_t n_now = bm->n_pending;
    int32_t first = 0;
    while (first < n_now) {
        llama_batch *lb = &bm->batch;
        lb->n_tokens = 0;
        int32_t last = first;
        bm->observing = bm->pending[first]->observe; /* alone in its decode */
        while (last < n_now && (lb->n_tokens == 0 || lb->n_tokens + bm->pending[last]->n <= (int32_t)b->n_batch)) {
            request *r = bm->pending[last];
            if (last > first && (r->observe || bm->observing)) break;
            for (int32_t i = 0; i < r->n; i++) {
                if (r->seqs) sm_llama_batch_add(lb, r->tokens[i], r->pos, r->seqs[i], true);
                else sm_llama_batch_add(lb, r->tokens[i], r->pos + i, r->seq, r->logits && i == r->n - 1);
            }
            last++;
        }
        double t0 = sm_now_ms();
        /* sessions may hand in while this decodes, but not touch the context */
        pthread_mutex_lock(&b->context_mutex);
        pthread_mutex_unlock(&b->dec->mutex);
        int32_t rc = lb->n_tokens > 0 ? sm_decode(bm->ctx, lb) : 0; /* only sessions checking in */
        bm->observing = NULL;
        int32_t at = 0;
        for (int32_t i = first; i < last; i++) {
            request *r = bm->pending[i];
            for (int32_t k = r->seqs ? 0 : r->n - 1; rc == 0 && r->logits && k < r->n; k++)
                memcpy(r->logits + (size_t)(r->seqs ? k : 0) * (size_t)n_vocab, llama_get_logits_ith(bm->ctx, at + k),
                       sizeof(float) * (size_t)n_vocab);
            at += r->n;
        }
        pthread_mutex_unlock(&b->context_mutex);
        pthread_mutex_lock(&b->dec->mutex);
        b->ms_decoding += sm_now_ms() - t0;
        b->n_decodes += lb->n_tokens > 0;
        b->n_tokens_decoded += lb->n_tokens;
        for (int32_t i = first; i < last; i++) {
            request *r = bm->pending[i];
            r->rc = rc;
            sem_post(&r->done); /* r may be gone from here on */
        }
        first = last;
    }
    bm->n_pending -= n_now;
    memmove(bm->pending, bm->pending + n_now, sizeof *bm->pending * (size_t)bm->n_pending);
}

/* Whether model m's pending requests should be decoded now: every busy
 * session has handed in (or every sequence). */
static bool complete(const sm_batch *b, const batch_model *bm) {
    return bm->n_pending > 0 && (bm->n_pending >= b->n_busy || bm->n_pending == b->n_seq);
}

/* Runs the oldest decode handed in by other work, if any; called with the
 * mutex held. */
static bool decode_other(decoder *d) {
    other_request *r = d->others;
    if (!r) return false;
    d->others = r->next;
    if (!d->others) d->others_tail = &d->others;
    pthread_mutex_unlock(&d->mutex);
    r->rc = sm_decode(r->ctx, r->batch_of_other); /* its own context: the batches' stay free */
    pthread_mutex_lock(&d->mutex);
    r->batch->n_other_decodes++;
    sem_post(&r->done);
    return true;
}

static bool any_pending(const decoder *d) {
    for (const sm_batch *b = d->batches; b; b = b->next_on_decoder)
        for (int32_t m = 0; m < b->n_models; m++)
            if (b->models[m].n_pending > 0) return true;
    return false;
}

static void *decoder_loop(void *arg) {
    decoder *d = arg;
    pthread_mutex_lock(&d->mutex);
    while (!d->stopping) {
        bool any = false;
        for (sm_batch *b = d->batches; b; b = b->next_on_decoder)
            for (int32_t m = 0; m < b->n_models; m++)
                if (complete(b, &b->models[m])) {
                    decode_pending(b, &b->models[m]);
                    any = true;
                }
        /* one of the others' after every pass, so neither side starves */
        if (decode_other(d) || any) continue;
        if (!any_pending(d)) {
            pthread_cond_wait(&d->submitted, &d->mutex);
            continue;
        }
        /* something pending but incomplete: a busy session is elsewhere,
         * so it is not waited for past WAIT_MS */
        struct timespec until;
        clock_gettime(CLOCK_REALTIME, &until);
        until.tv_nsec += WAIT_MS * 1000000L;
        if (until.tv_nsec >= 1000000000L) {
            until.tv_sec++;
            until.tv_nsec -= 1000000000L;
        }
        if (pthread_cond_timedwait(&d->submitted, &d->mutex, &until) == ETIMEDOUT)
            for (sm_batch *b = d->batches; b; b = b->next_on_decoder)
                for (int32_t m = 0; m < b->n_models; m++)
                    if (b->models[m].n_pending > 0) decode_pending(b, &b->models[m]);
    }
    pthread_mutex_unlock(&d->mutex);
    return NULL;
}

static int32_t hand_in(sm_batch *b, int32_t m, request r);

int32_t sm_batch_decode(sm_batch *b, int32_t m, llama_seq_id seq, int32_t pos, const sm_token *tokens, int32_t n,
                        float *logits) {
    return hand_in(b, m, (request){.tokens = tokens, .n = n, .pos = pos, .seq = seq, .logits = logits});
}

int32_t sm_batch_decode_observed(sm_batch *b, int32_t m, llama_seq_id seq, int32_t pos, const sm_token *tokens,
                                 int32_t n, float *logits, sm_introspector *in) {
    return hand_in(b, m, (request){.tokens = tokens, .n = n, .pos = pos, .seq = seq, .logits = logits, .observe = in});
}

int32_t sm_batch_decode_rows(sm_batch *b, int32_t m, const llama_seq_id *seqs, int32_t pos, const sm_token *tokens,
                             int32_t n, float *logits, sm_introspector *in) {
    return hand_in(b, m, (request){.tokens = tokens, .n = n, .pos = pos, .seq = seqs[0], .seqs = seqs, .logits = logits,
                                   .observe = in});
}

/* Hands r in and waits for its decode. llama_decode's code. */
static int32_t hand_in(sm_batch *b, int32_t m, request r) {
    if (r.n > (int32_t)b->n_batch) return -1; /* the session chunks by n_batch */
    batch_model *bm = &b->models[m];
    if (sem_init(&r.done, 0, 0) != 0) return -1;
    pthread_mutex_lock(&b->dec->mutex);
    b->n_requests++;
    bm->pending[bm->n_pending++] = &r;
    /* The decoder needs waking for the first request (to start waiting
     * for the rest) and for the one that completes the step; the others
     * would only wake it to find the step incomplete. */
    if (bm->n_pending == 1 || complete(b, bm)) pthread_cond_signal(&b->dec->submitted);
    pthread_mutex_unlock(&b->dec->mutex);
    while (sem_wait(&r.done) != 0 && errno == EINTR) {}
    sem_destroy(&r.done);
    return r.rc;
}

int32_t sm_batch_decode_other(sm_batch *b, struct llama_context *ctx, const llama_batch *batch) {
    other_request r = {.batch = b, .ctx = ctx, .batch_of_other = batch};
    if (sem_init(&r.done, 0, 0) != 0) return -1;
    pthread_mutex_lock(&b->dec->mutex);
    *b->dec->others_tail = &r;
    b->dec->others_tail = &r.next;
    pthread_cond_signal(&b->dec->submitted);
    pthread_mutex_unlock(&b->dec->mutex);
    while (sem_wait(&r.done) != 0 && errno == EINTR) {}
    sem_destroy(&r.done);
    return r.rc;
}
