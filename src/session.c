/*
 * THE generation loop, and the only place that calls llama_decode for
 * generation:
 *
 *   distribution -> stages' knobs -> sample -> signals -> stages judge
 *                -> accept, decode, check, report | rewind (no decode at all)
 *
 * Everything that acts on a generation is a stage (src/stage.c, the policy,
 * the operators, lookahead, injection, safety, tools, the caller's); the loop
 * keeps the tokens, the distributions, knobs and random state, the text,
 * and the one rewind that puts all of it back.
 *
 * A candidate token is judged before it is decoded, so a rejected token
 * costs nothing. Every generated position keeps the distribution it was
 * sampled from (a ring of max_rewind entries), so a rewind restores the
 * distribution instead of decoding again: a retraction costs exactly the
 * tokens that are regenerated.
 */
#include "session_internal.h"

#include <ctype.h>
#include <errno.h>
#include <sys/stat.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

/* ------------------------------------------------------------------ */

sm_status sm_session_fail(sm_session *s, sm_status status, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

sm_status sm_session_fail(sm_session *s, sm_status status, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(s->error, sizeof s->error, fmt, ap);
    va_end(ap);
    return status;
}

sm_session_params sm_session_default_params(void) {
    return (sm_session_params){.n_ctx = 2048, .n_batch = 512, .n_threads = 0, .max_rewind = 64};
}


static void piece_of(const struct llama_vocab *vocab, sm_token t, char *buf, int32_t size) {
    int32_t n = sm_token_text(vocab, t, buf, size - 1);
    buf[n] = '\0';
}

static bool vocab_equal(const sm_model *a, const sm_model *b, char *why, size_t why_size);

bool sm_vocab_equal(const sm_model *a, const sm_model *b, sm_error *err) {
    sm_error scratch;
    if (!err) err = &scratch;
    bool equal = vocab_equal(a, b, err->message, sizeof err->message);
    err->status = equal ? SM_OK : SM_ERR_VOCAB_MISMATCH;
    return equal;
}

static bool vocab_equal(const sm_model *a, const sm_model *b, char *why, size_t why_size) {
    const struct llama_vocab *va = a->vocab, *vb = b->vocab;
    if (llama_vocab_type(va) != llama_vocab_type(vb)) {
        snprintf(why, why_size, "vocabulary types differ (%d vs %d)", llama_vocab_type(va), llama_vocab_type(vb));
        return false;
    }
    if (a->n_vocab != b->n_vocab) {
        snprintf(why, why_size, "vocabulary sizes differ (%d vs %d tokens)", a->n_vocab, b->n_vocab);
        return false;
    }
    if (llama_vocab_bos(va) != llama_vocab_bos(vb) || llama_vocab_eos(va) != llama_vocab_eos(vb) ||
        llama_vocab_get_add_bos(va) != llama_vocab_get_add_bos(vb)) {
        snprintf(why, why_size, "BOS/EOS handling differs (bos %d/%d, eos %d/%d, add_bos %d/%d)", llama_vocab_bos(va),
                 llama_vocab_bos(vb), llama_vocab_eos(va), llama_vocab_eos(vb), llama_vocab_get_add_bos(va),
                 llama_vocab_get_add_bos(vb));
        return false;
    }
    for (int32_t t = 0; t < a->n_vocab; t++) {
        const char *ta = llama_vocab_get_text(va, t), *tb = llama_vocab_get_text(vb, t);
        if (strcmp(ta, tb) != 0) {
            snprintf(why, why_size, "token %d differs: '%s' vs '%s'", t, ta, tb);
            return false;
        }
    }
    return true;
}

/* FNV-1a over a piece, for the text -> token table of alignment. */
static uint32_t hash_text(const char *s) {
    uint32_t h = 2166136261u;
    for (; *s; s++) h = (h ^ (uint8_t)*s) * 16777619u;
    return h;
}

/* map[t_m] = the model-0 token with the same text, or -1. */
static int build_alignment(member *mb, const sm_model *m0) {
    int32_t cap = 1;
    while (cap < m0->n_vocab * 2) cap *= 2;
    int32_t *table = malloc(sizeof(int32_t) * (size_t)cap);
    char (*pieces)[48] = malloc(sizeof *pieces * (size_t)m0->n_vocab);
    mb->map_to0 = malloc(sizeof(int32_t) * (size_t)mb->model->n_vocab);
    if (!table || !pieces || !mb->map_to0) {
        free(table);
        free(pieces);
        return -1;
    }
    for (int32_t i = 0; i < cap; i++) table[i] = -1;
    for (int32_t t = 0; t < m0->n_vocab; t++) {
        piece_of(m0->vocab, t, pieces[t], sizeof pieces[t]);
        if (!pieces[t][0]) continue;
        uint32_t h = hash_text(pieces[t]) & (uint32_t)(cap - 1);
        while (table[h] >= 0 && strcmp(pieces[table[h]], pieces[t]) != 0) h = (h + 1) & (uint32_t)(cap - 1);
        if (table[h] < 0) table[h] = t; /* the first id with a text wins */
    }
    char piece[48];
    for (int32_t t = 0; t < mb->model->n_vocab; t++) {
        piece_of(mb->model->vocab, t, piece, sizeof piece);
        mb->map_to0[t] = -1;
        if (!piece[0]) continue;
        uint32_t h = hash_text(piece) & (uint32_t)(cap - 1);
        while (table[h] >= 0) {
            if (strcmp(pieces[table[h]], piece) == 0) {
                mb->map_to0[t] = table[h];
                break;
            }
            h = (h + 1) & (uint32_t)(cap - 1);
        }
    }
    free(table);
    free(pieces);
    return 0;
}

static bool init_member(member *mb, sm_model *model, const sm_session_params *p, int32_t n_threads,
                        sm_introspector *intro, sm_error *err) {
    /* Past its training context a model with learned positions (GPT-2)
     * reads outside its position table: never ask for more. */
    int32_t n_train = llama_model_n_ctx_train(model->lm);
    sm_context_opts o = {
        .n_ctx = n_train > 0 && (p->n_ctx == 0 || p->n_ctx > (uint32_t)n_train) ? (uint32_t)n_train : p->n_ctx,
        .n_batch = p->n_batch,
        .n_seq_max = 1 + (uint32_t)p->max_branches,
        .kv_unified = p->max_branches > 0, /* branches share the cells: n_ctx is not split between them */
        .n_threads = n_threads,
        .cb_eval = intro ? sm_introspector_cb : NULL,
        .cb_eval_user_data = intro,
        .no_flash_attention = intro && p->introspect_attention, /* else no kq_soft_max */
    };
    mb->model = model;
    mb->n_threads = mb->threads_now = n_threads;
    sm_thread_tuner_init(&mb->tuner, n_threads, p->n_threads == 0); /* an explicit count is kept as given */
    mb->ctx = sm_context_new(model, &o, err);
    if (!mb->ctx) return false;
    mb->mem = llama_get_memory(mb->ctx);
    return true;
}

/* Model m of a session on a batch: the batch's context, a sequence of
 * its own (taken by the caller). */
static void init_batch_member(member *mb, sm_model *model, sm_batch *b, int32_t m) {
    mb->model = model;
    mb->ctx = sm_batch_context(b, m);
    mb->mem = llama_get_memory(mb->ctx);
    mb->n_threads = mb->threads_now = (int32_t)llama_n_threads(mb->ctx);
}

/* What a session on a batch cannot do: its context is shared. */
static bool batch_params_valid(const sm_session_params *p, sm_model *const *models, int32_t n_models, sm_error *err) {
    const sm_batch *b = p->batch;
    /* branches copy the session's cells with seq_cp, which only a unified
     * pool does cell by cell (across streams llama.cpp copies whole ones) */
    const char *why = p->max_branches > 0 && !sm_batch_kv_unified(b) ? "lookahead branches without kv_unified"
                      : p->introspect_attention                       ? "attention introspection (its contexts use flash "
                                                                        "attention, which never forms the probabilities)"
                                                                      : NULL;
    if (why) {
        sm_error_set(err, SM_ERR_INVALID_ARGUMENT, "a session on a batch cannot use %s (its context is shared)", why);
        return false;
    }
    for (int32_t m = 0; m < n_models; m++) {
        const struct llama_context *ctx = m < SM_MAX_MODELS ? sm_batch_context(b, m) : NULL;
        if (!ctx || llama_get_model(ctx) != models[m]->lm) {
            sm_error_set(err, SM_ERR_INVALID_ARGUMENT, "model %d of the session is not model %d of its batch", m, m);
            return false;
        }
    }
    return true;
}

/* The introspection and lookahead settings that need no model. */
static bool introspection_params_valid(const sm_session_params *p, int32_t n_models, sm_error *err) {
    if (p->n_introspect_layers < 0 || (p->n_introspect_layers > 0 && !p->introspect_layers)) {
        sm_error_set(err, SM_ERR_INVALID_ARGUMENT, "introspection: %d layers without an array", p->n_introspect_layers);
        return false;
    }
    bool observes = p->n_introspect_layers > 0 || p->introspect_all_layers;
    if (!observes && (p->introspect_attention || p->introspect_hidden)) {
        sm_error_set(err, SM_ERR_INVALID_ARGUMENT,
                     "attention and hidden-state introspection need layers to observe (introspect_layers or all layers)");
        return false;
    }
    if (p->max_branches < 0 || p->max_branches > SM_MAX_BRANCHES) {
        sm_error_set(err, SM_ERR_INVALID_ARGUMENT, "max_branches must be in [0, %d] (got %d)", SM_MAX_BRANCHES,
                     p->max_branches);
        return false;
    }
    if (p->max_branches > 0 && n_models > 1) {
        sm_error_set(err, SM_ERR_INVALID_ARGUMENT,
                     "lookahead branches (max_branches %d) need a one-model session (this one has %d models)",
                     p->max_branches, n_models);
        return false;
    }
    return true;
}

/* The lookahead batch, and the eval callback's state when the session
 * observes anything. */
static bool open_introspection(sm_session *s, const sm_model *model, const sm_session_params *p, sm_error *err) {
    if (p->max_branches > 0) s->branch_batch = llama_batch_init(p->max_branches, 0, 1);
    if (p->max_branches > 0 && p->batch) {
        s->branch_rows = malloc(sizeof(float) * (size_t)p->max_branches * (size_t)model->n_vocab);
        if (!s->branch_rows) {
            sm_error_set(err, SM_ERR_NO_MEMORY, "out of memory for %d lookahead branches", p->max_branches);
            return false;
        }
    }
    if (p->n_introspect_layers == 0 && !p->introspect_all_layers) return true;
    char msg[256];
    s->intro = sm_introspector_new(model->lm, p->introspect_layers, p->n_introspect_layers, p->introspect_all_layers,
                                   p->introspect_attention, p->introspect_hidden,
                                   p->max_branches > 0 ? p->max_branches : 1, msg, sizeof msg);
    if (!s->intro) {
        sm_error_set(err, SM_ERR_INVALID_ARGUMENT, "%s", msg);
        return false;
    }
    size_t hidden_floats = sm_introspector_hidden_floats(s->intro);
    s->intro_last = malloc(sm_introspector_record_size(s->intro));
    if (hidden_floats) s->intro_last_hidden = malloc(sizeof(float) * hidden_floats);
    if (!s->intro_last || (hidden_floats && !s->intro_last_hidden)) {
        sm_error_set(err, SM_ERR_NO_MEMORY, "out of memory for introspection");
        return false;
    }
    return true;
}

sm_session *sm_session_new_fused(sm_model *const *models, int32_t n_models, const sm_session_params *params,
                                 sm_error *err) {
    if (!models || n_models < 1 || n_models > SM_MAX_MODELS) {
        sm_error_set(err, SM_ERR_INVALID_ARGUMENT, "a session takes 1 to %d models (got %d)", SM_MAX_MODELS, n_models);
        return NULL;
    }
    for (int32_t m = 0; m < n_models; m++)
        if (!models[m]) {
            sm_error_set(err, SM_ERR_INVALID_ARGUMENT, "model %d is missing", m);
            return NULL;
        }
    sm_session_params p = params ? *params : sm_session_default_params();
    if (p.n_threads < 0 || p.max_rewind < 1 || p.n_batch < 1) {
        sm_error_set(err, SM_ERR_INVALID_ARGUMENT,
                     "invalid session parameters: n_threads %d (>= 0), max_rewind %d (>= 1), n_batch %u (>= 1)",
                     p.n_threads, p.max_rewind, p.n_batch);
        return NULL;
    }
    if (!introspection_params_valid(&p, n_models, err)) return NULL;
    if (p.batch && !batch_params_valid(&p, models, n_models, err)) return NULL;
    bool aligned[SM_MAX_MODELS] = {false};
    for (int32_t m = 1; m < n_models; m++) {
        char why[256];
        if (vocab_equal(models[0], models[m], why, sizeof why)) continue;
        if (!p.fusion_align) {
            sm_error_set(err, SM_ERR_VOCAB_MISMATCH,
                         "'%s' and '%s' do not share a vocabulary: %s (use fusion alignment to map tokens by text)",
                         models[0]->path, models[m]->path, why);
            return NULL;
        }
        aligned[m] = true;
    }
    sm_session *s = calloc(1, sizeof *s);
    if (!s) {
        sm_error_set(err, SM_ERR_NO_MEMORY, "out of memory");
        return NULL;
    }
    s->model = models[0];
    s->params = p;
    s->params.introspect_layers = NULL; /* copied into the introspector: the caller's array may go */
    s->n_vocab = models[0]->n_vocab;
    if (!open_introspection(s, models[0], &p, err)) {
        sm_session_free(s);
        return NULL;
    }
    int32_t total_threads = p.n_threads ? p.n_threads : sm_online_cores();
    int32_t per_model = total_threads / n_models > 0 ? total_threads / n_models : 1;
    for (int32_t b = 0; b < SM_MAX_BRANCHES; b++) s->branch_seqs[b] = p.batch ? -1 : b + 1;
    s->seq = p.batch ? sm_batch_take_seq(p.batch) : 0;
    if (p.batch) s->batch = p.batch;
    for (int32_t b = 0; p.batch && s->seq >= 0 && b < p.max_branches; b++)
        if ((s->branch_seqs[b] = sm_batch_take_seq(p.batch)) < 0) {
            sm_session_free(s);
            sm_error_set(err, SM_ERR_STATE, "the batch has no %d sequences left for this session and its %d lookahead "
                         "branches (%d in all)", 1 + p.max_branches, p.max_branches, sm_batch_n_seq(p.batch));
            return NULL;
        }
    if (s->seq < 0) {
        sm_session_free(s);
        sm_error_set(err, SM_ERR_STATE, "every sequence of the batch is taken (%d)", sm_batch_n_seq(p.batch));
        return NULL;
    }
    for (int32_t m = 0; m < n_models; m++) {
        if (p.batch) init_batch_member(&s->members[m], models[m], p.batch, m);
        bool made = p.batch || init_member(&s->members[m], models[m], &p, n_models == 1 ? total_threads : per_model,
                                           m == 0 ? s->intro : NULL, err);
        if (!made) {
            sm_session_free(s);
            return NULL;
        }
        s->n_models++;
        s->members[m].aligned = aligned[m];
        if (aligned[m] && (build_alignment(&s->members[m], models[0]) != 0 ||
                           (p.batch && !(s->members[m].batch_logits = malloc(sizeof(float) * (size_t)models[m]->n_vocab))))) {
            sm_session_free(s);
            sm_error_set(err, SM_ERR_NO_MEMORY, "out of memory aligning vocabularies");
            return NULL;
        }
    }
    /* llama.cpp pads small contexts (to 256): the size asked for is what
     * every check uses, and never positions a model was not trained for,
     * in any model of the session. */
    s->n_ctx = p.batch ? (int32_t)sm_batch_n_ctx_seq(p.batch) : (int32_t)llama_n_ctx(s->members[0].ctx);
    if (p.n_ctx > 0 && (int64_t)p.n_ctx < s->n_ctx) s->n_ctx = (int32_t)p.n_ctx;
    for (int32_t m = 0; m < n_models; m++) {
        int32_t n_train = llama_model_n_ctx_train(models[m]->lm);
        int32_t n_ctx_m = (int32_t)llama_n_ctx(s->members[m].ctx);
        if (n_ctx_m < s->n_ctx) s->n_ctx = n_ctx_m;
        if (n_train > 0 && n_train < s->n_ctx) s->n_ctx = n_train;
    }
    s->params.n_batch = llama_n_batch(s->members[0].ctx); /* llama.cpp caps it at n_ctx */
    /* A session of its own holds every distribution a rewind of max_rewind
     * can need; one on a batch (a server slot, eight or more of them) starts
     * small and grows to what its generations can rewind (grow_ring). */
    s->ring_cap = p.batch ? 2 : p.max_rewind + 2;
    size_t slots = (size_t)s->ring_cap * (size_t)n_models;
    s->ring = malloc(sizeof(float) * slots * (size_t)s->n_vocab);
    s->ring_unmapped = calloc(slots, sizeof(float));
    s->ring_pos = malloc(sizeof(int32_t) * (size_t)s->ring_cap);
    s->top_view = malloc(sizeof(sm_candidate) * 1000);
    s->post_top = malloc(sizeof(sm_candidate) * 1000);
    s->fused = n_models > 1 ? malloc(sizeof(float) * (size_t)s->n_vocab) : NULL;
    s->pool = n_models > 1 ? sm_pool_new(n_models - 1) : NULL;
    if (!s->ring || !s->ring_unmapped || !s->ring_pos || !s->top_view || !s->post_top || (n_models > 1 && (!s->fused || !s->pool)) ||
        sm_sampler_work_init(&s->work, s->n_vocab) != 0) {
        sm_session_free(s);
        sm_error_set(err, SM_ERR_NO_MEMORY, "out of memory for a session of vocabulary %d", s->n_vocab);
        return NULL;
    }
    for (int32_t i = 0; i < s->ring_cap; i++) s->ring_pos[i] = -1;
    s->work.vocab = s->model->vocab;
    s->work.n_ctx = s->n_ctx;
    return s;
}

sm_session *sm_session_new(sm_model *model, const sm_session_params *params, sm_error *err) {
    if (!model) {
        sm_error_set(err, SM_ERR_INVALID_ARGUMENT, "no model given");
        return NULL;
    }
    return sm_session_new_fused(&model, 1, params, err);
}

void sm_session_free(sm_session *s) {
    if (!s) return;
    sm_pool_free(s->pool);
    if (s->batch && s->seq >= 0) sm_batch_give_seq(s->batch, s->seq);
    for (int32_t b = 0; s->batch && b < SM_MAX_BRANCHES; b++)
        if (s->branch_seqs[b] >= 0) sm_batch_give_seq(s->batch, s->branch_seqs[b]);
    for (int32_t m = 0; m < SM_MAX_MODELS; m++) {
        if (s->members[m].ctx && !s->batch) llama_free(s->members[m].ctx);
        free(s->members[m].map_to0);
        free(s->members[m].tokens);
        free(s->members[m].text);
        free(s->members[m].retok);
        free(s->members[m].batch_logits);
    }
    free(s->tokens);
    free(s->ring);
    free(s->ring_unmapped);
    free(s->ring_pos);
    free(s->top_view);
    free(s->post_top);
    free(s->eog);
    free(s->fused);
    sm_introspector_free(s->intro);
    free(s->intro_last);
    free(s->intro_last_hidden);
    if (s->params.max_branches > 0 && s->branch_batch.token) llama_batch_free(s->branch_batch);
    free(s->branch_rows);
    sm_sampler_work_free(&s->work);
    free(s);
}

const char *sm_session_last_error(const sm_session *s) { return s->error; }
int32_t sm_session_n_past(const sm_session *s) { return s->n_tokens; }
int32_t sm_session_n_ctx(const sm_session *s) { return s->n_ctx; }
int32_t sm_session_n_threads(const sm_session *s) { return s->members[0].threads_now; }
int64_t sm_session_n_decoded_total(const sm_session *s) { return s->n_decoded_total; }
const sm_model *sm_session_model(const sm_session *s) { return s->model; }
/* The distribution after the last token: a deferred token is decoded
 * now (the observable state is the same; only when it is computed moves). */
const float *sm_session_logits(const sm_session *s) {
    if (s->deferred && sm_session_flush_deferred((sm_session *)s) != SM_OK) return NULL;
    return s->logits;
}
int32_t sm_session_n_models(const sm_session *s) { return s->n_models; }

const sm_token *sm_session_tokens(const sm_session *s, int32_t *n_tokens) {
    if (n_tokens) *n_tokens = s->n_tokens;
    return s->tokens;
}

/* The session's sequence in a member's cache from pos on (-1: all of it).
 * On a batch the context is shared with the decoder thread: every cache
 * operation waits for the decode in progress (llama.cpp's contexts are not
 * safe to touch from two threads). */
static bool seq_rm(const sm_session *s, const member *mb, int32_t pos) {
    if (s->batch) sm_batch_lock_context(s->batch);
    bool ok = llama_memory_seq_rm(mb->mem, s->seq, pos < 0 ? -1 : pos, -1);
    if (s->batch) sm_batch_unlock_context(s->batch);
    return ok;
}

static llama_pos seq_pos_max(const sm_session *s, int32_t m) {
    if (s->batch) sm_batch_lock_context(s->batch);
    llama_pos pos = llama_memory_seq_pos_max(s->members[m].mem, s->seq);
    if (s->batch) sm_batch_unlock_context(s->batch);
    return pos;
}

int32_t sm_session_model_kv_pos(const sm_session *s, int32_t m) {
    if (s->deferred) sm_session_flush_deferred((sm_session *)s);
    if (m < 0 || m >= s->n_models) return -1;
    return (int32_t)seq_pos_max(s, m) + 1;
}

int32_t sm_session_kv_pos(const sm_session *s) { return sm_session_model_kv_pos(s, 0); }

int32_t sm_session_n_decoded(const sm_session *s) { return s->n_tokens - (s->deferred ? 1 : 0); }

/* ------------------------------------------------------------------ */
/* Decoding and the distribution ring                                  */
/* ------------------------------------------------------------------ */

int sm_loop_reserve(sm_token **buf, int32_t *cap, int32_t n) {
    if (n <= *cap) return 0;
    int32_t c = *cap ? *cap : 256;
    while (c < n) c *= 2;
    sm_token *t = realloc(*buf, sizeof *t * (size_t)c);
    if (!t) return -1;
    *buf = t;
    *cap = c;
    return 0;
}

float *sm_loop_ring_slot(const sm_session *s, int32_t pos, int32_t m) {
    size_t slot = (size_t)(pos % s->ring_cap) * (size_t)s->n_models + (size_t)m;
    return s->ring + slot * (size_t)s->n_vocab;
}

/* Model m's distribution at the current end of the context. */
const float *sm_session_model_logits(const sm_session *s, int32_t m) {
    if (s->deferred) sm_session_flush_deferred((sm_session *)s);
    if (!s->logits || m < 0 || m >= s->n_models) return NULL;
    return sm_loop_ring_slot(s, s->n_tokens, m);
}

/* Makes room for cap positions in the ring; the distributions it holds
 * keep their positions. Returns 0, or -1 out of memory (the ring unchanged). */
static int grow_ring(sm_session *s, int32_t cap) {
    if (cap <= s->ring_cap) return 0;
    const size_t row = (size_t)s->n_vocab, n_models = (size_t)s->n_models;
    float *ring = malloc(sizeof(float) * (size_t)cap * n_models * row);
    float *unmapped = calloc((size_t)cap * n_models, sizeof(float));
    int32_t *pos = malloc(sizeof(int32_t) * (size_t)cap);
    if (!ring || !unmapped || !pos) {
        free(ring);
        free(unmapped);
        free(pos);
        return -1;
    }
    for (int32_t i = 0; i < cap; i++) pos[i] = -1;
    for (int32_t i = 0; i < s->ring_cap; i++) {
        int32_t p = s->ring_pos[i];
        if (p < 0) continue;
        size_t to = (size_t)(p % cap);
        memcpy(ring + to * n_models * row, s->ring + (size_t)i * n_models * row, sizeof(float) * n_models * row);
        memcpy(unmapped + to * n_models, s->ring_unmapped + (size_t)i * n_models, sizeof(float) * n_models);
        pos[to] = p;
    }
    bool current = s->logits != NULL;
    free(s->ring);
    free(s->ring_unmapped);
    free(s->ring_pos);
    s->ring = ring;
    s->ring_unmapped = unmapped;
    s->ring_pos = pos;
    s->ring_cap = cap;
    if (current) s->logits = sm_loop_ring_slot(s, s->n_tokens, 0);
    return 0;
}

/* How far back the rewinds of a generation with these parameters can
 * reach, at most (settled_tokens' budget at its start), and the ring that
 * holds every distribution they can return to. */
static int32_t ring_needed(const sm_session *s, const sm_gen_params *gp) {
    const int64_t max_rewind = s->params.max_rewind;
    int64_t reach = 1; /* a check takes the last token back */
    if (sm_policy_retraction_enabled(&gp->policy))
        reach += (int64_t)gp->policy.max_retractions * (sm_policy_retraction_tokens(&gp->policy) - 1);
    if (gp->backtrack.n_operators > 0 || gp->n_stages > 0) reach += (int64_t)gp->backtrack.max_backtracks * max_rewind;
    /* a rewind lands at most `reach` positions behind the furthest one
     * written, so reach + 1 slots hold every distribution it can need */
    return (int32_t)((reach < max_rewind ? reach : max_rewind) + 1);
}

/* Model m's mass with no token at pos (an aligned model's). */
static float *ring_unmapped_slot(const sm_session *s, int32_t pos, int32_t m) {
    return &s->ring_unmapped[(size_t)(pos % s->ring_cap) * (size_t)s->n_models + (size_t)m];
}

static float ring_unmapped(const sm_session *s, int32_t pos, int32_t m) { return *ring_unmapped_slot(s, pos, m); }

/* Stores every model's last logits as the distributions at n_tokens. */
static void capture_logits(sm_session *s) {
    for (int32_t m = 0; m < s->n_models; m++) {
        member *mb = &s->members[m];
        float *dst = sm_loop_ring_slot(s, s->n_tokens, m);
        float unmapped = 0.0f;
        if (mb->aligned)
            unmapped = sm_map_distribution(s->batch ? mb->batch_logits : llama_get_logits_ith(mb->ctx, -1),
                                           mb->model->n_vocab, mb->map_to0, dst, s->n_vocab);
        else if (!s->batch) /* a batch wrote it there already */
            memcpy(dst, llama_get_logits_ith(mb->ctx, -1), sizeof(float) * (size_t)s->n_vocab);
        *ring_unmapped_slot(s, s->n_tokens, m) = unmapped;
    }
    s->ring_pos[s->n_tokens % s->ring_cap] = s->n_tokens;
    s->logits = sm_loop_ring_slot(s, s->n_tokens, 0);
}

typedef struct decode_job {
    sm_session *s;
    const sm_token *tokens;
    int32_t n;
    bool last;       /* the last chunk: its distribution is kept */
} decode_job;

/* decode_member's code for an aligned model that could not catch up
 * (the member's err says why); llama_decode's codes are all above it. */
enum { ALIGN_FAILED = -1000 };

static int32_t sync_aligned(sm_session *s, member *mb, int32_t m, int32_t n_text);

/* On a batch, model m has nothing of this session's this step, but the
 * step waits for every busy session: it checks in with no tokens. */
static int32_t check_in(sm_session *s, int32_t m) {
    return s->batch ? sm_batch_decode(s->batch, m, s->seq, 0, NULL, 0, NULL) : 0;
}

/* Model m decodes the job's tokens: through the batch, or in its own
 * context (one-token decodes with the tuned thread count). A model with
 * another vocabulary catches up with the text after the last chunk. */
static int32_t decode_member(void *arg, int32_t m) {
    decode_job *job = arg;
    sm_session *s = job->s;
    member *mb = &s->members[m];
    if (mb->aligned) {
        return job->last ? sync_aligned(s, mb, m, s->n_tokens + job->n) : check_in(s, m);
    }
    if (s->batch) /* the last chunk's distribution lands where capture_logits keeps it */
        return sm_batch_decode_observed(s->batch, m, s->seq, s->n_tokens, job->tokens, job->n,
                                        job->last ? sm_loop_ring_slot(s, s->n_tokens + job->n, m) : NULL,
                                        m == 0 ? s->intro : NULL);
    llama_batch b = llama_batch_get_one((sm_token *)job->tokens, job->n);
    if (job->n != 1) return sm_decode(mb->ctx, &b);
    int32_t threads = sm_thread_tuner_next(&mb->tuner);
    if (threads != mb->threads_now) {
        llama_set_n_threads(mb->ctx, threads, mb->n_threads);
        mb->threads_now = threads;
    }
    double t0 = sm_now_ms();
    int32_t rc = sm_decode(mb->ctx, &b);
    sm_thread_tuner_record(&mb->tuner, threads, sm_now_ms() - t0);
    return rc;
}

/* A chunk that some model could not decode leaves no other model with it.
 * An aligned model keeps what it caught up with: it is cut back to the
 * text's tokens at its next catching up. */
static void undo_member(void *arg, int32_t m) {
    decode_job *job = arg;
    member *mb = &job->s->members[m];
    if (!mb->aligned) seq_rm(job->s, mb, job->s->n_tokens);
}

static int32_t align_fail(member *mb, sm_status status, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static int32_t align_fail(member *mb, sm_status status, const char *fmt, ...) {
    char msg[sizeof mb->err.message];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap); /* fmt's arguments may be mb->err's own message */
    va_end(ap);
    mb->err.status = status;
    memcpy(mb->err.message, msg, sizeof msg);
    return ALIGN_FAILED;
}

/* The first n_text tokens of the context as text, in mb->text. */
static bool context_text(sm_session *s, member *mb, int32_t n_text) {
    size_t need = 64;
    for (;;) {
        if (need > mb->text_cap) {
            char *t = realloc(mb->text, need);
            if (!t) return align_fail(mb, SM_ERR_NO_MEMORY, "out of memory"), false;
            mb->text = t;
            mb->text_cap = need;
        }
        int32_t n;
        if (!smx_detokenize(s->model->vocab, s->tokens, n_text, mb->text, (int32_t)mb->text_cap - 1, true, false, &n,
                            &mb->err))
            return align_fail(mb, mb->err.status, "%s", mb->err.message), false;
        if (n >= 0) {
            mb->text[n] = '\0';
            return true;
        }
        need = (size_t)(-n) + 1;
    }
}

/*
 * A model with another vocabulary catches up with the text: the first
 * n_text tokens of the context as text are tokenized with its tokenizer,
 * its cache is cut back to the longest common prefix and the rest is
 * decoded. Runs in the pool beside the other models' decodes, so it
 * touches only its own member (and reports through mb->err).
 */
static int32_t sync_aligned(sm_session *s, member *mb, int32_t m, int32_t n_text) {
    if (!context_text(s, mb, n_text)) return ALIGN_FAILED;
    sm_tokens toks;
    sm_status st = sm_tokenize(mb->model, mb->text, strlen(mb->text), true, false, &toks, &mb->err);
    if (st != SM_OK) return align_fail(mb, st, "%s", mb->err.message);
    int32_t n = toks.n;
    if (sm_loop_reserve(&mb->retok, &mb->retok_cap, n + 1) != 0) {
        sm_tokens_free(&toks);
        return align_fail(mb, SM_ERR_NO_MEMORY, "out of memory");
    }
    memcpy(mb->retok, toks.data, sizeof *toks.data * (size_t)n);
    sm_tokens_free(&toks);
    if (n <= 0) return align_fail(mb, SM_ERR_DECODE, "'%s' turned the text into no tokens", mb->model->path);
    if (n > s->n_ctx)
        return align_fail(mb, SM_ERR_PROMPT_TOO_LONG, "the text is %d tokens for '%s', more than the context %d", n,
                          mb->model->path, s->n_ctx);
    int32_t common = 0;
    while (common < n && common < mb->n_tokens && mb->tokens[common] == mb->retok[common]) common++;
    if (common == n && common == mb->n_tokens) return check_in(s, m); /* its logits are current */
    if (common == n) common--; /* decode the last token again for its distribution */
    if (!seq_rm(s, mb, common))
        return align_fail(mb, SM_ERR_STATE, "'%s' cannot remove part of its cache", mb->model->path);
    mb->n_tokens = common;
    if (sm_loop_reserve(&mb->tokens, &mb->cap_tokens, n) != 0) return align_fail(mb, SM_ERR_NO_MEMORY, "out of memory");
    for (int32_t at = common; at < n;) {
        int32_t chunk = n - at < (int32_t)s->params.n_batch ? n - at : (int32_t)s->params.n_batch;
        memcpy(mb->tokens + at, mb->retok + at, sizeof(sm_token) * (size_t)chunk);
        int32_t rc;
        if (s->batch) {
            rc = sm_batch_decode(s->batch, m, s->seq, at, mb->tokens + at, chunk, at + chunk == n ? mb->batch_logits : NULL);
        } else {
            llama_batch b = llama_batch_get_one(mb->tokens + at, chunk);
            rc = sm_decode(mb->ctx, &b);
        }
        if (rc != 0) {
            seq_rm(s, mb, at);
            return align_fail(mb, SM_ERR_DECODE, "llama_decode failed in '%s' (code %d: %s)", mb->model->path, rc,
                              sm_decode_failure(rc));
        }
        at += chunk;
        mb->n_tokens = at;
    }
    return 0;
}

/* Keeps the stats of the token that last entered the context. */
void sm_loop_remember_introspection(sm_session *s, const void *record, const float *hidden) {
    memcpy(s->intro_last, record, sm_introspector_record_size(s->intro));
    if (s->intro_last_hidden && hidden)
        memcpy(s->intro_last_hidden, hidden, sizeof(float) * sm_introspector_hidden_floats(s->intro));
    sm_introspector_view(s->intro, s->intro_last, s->intro_last_hidden, &s->intro_view);
    s->intro_has_last = true;
}

/* Takes a deferred token out of the token list: the cache never had it,
 * and the distribution it was sampled from is the ring's. */
static void undefer(sm_session *s) {
    if (!s->deferred) return;
    s->deferred = false;
    s->n_tokens--;
    s->logits = s->ring_pos[s->n_tokens % s->ring_cap] == s->n_tokens ? sm_loop_ring_slot(s, s->n_tokens, 0) : NULL;
}

sm_status sm_session_flush_deferred(sm_session *s) {
    if (!s->deferred) return SM_OK;
    sm_token last = s->tokens[s->n_tokens - 1];
    undefer(s);
    return sm_loop_decode_append(s, &last, 1);
}

static bool remove_from(sm_session *s, int32_t pos);

/* Decodes tokens in batches in every model and appends them. A failure in
 * any model undoes the whole append in all of them: none is left behind. */
sm_status sm_loop_decode_append(sm_session *s, const sm_token *toks, int32_t n) {
    if (n <= 0) return SM_OK;
    if (s->deferred) {
        sm_status st = sm_session_flush_deferred(s);
        if (st != SM_OK) return st;
    }
    if (s->n_tokens + n > s->n_ctx)
        return sm_session_fail(s, SM_ERR_PROMPT_TOO_LONG, "%d tokens do not fit: %d of %d context tokens are used", n,
                    s->n_tokens, s->n_ctx);
    if (sm_loop_reserve(&s->tokens, &s->cap_tokens, s->n_tokens + n) != 0) return sm_session_fail(s, SM_ERR_NO_MEMORY, "out of memory");
    const int32_t n_before = s->n_tokens;
    for (int32_t done = 0; done < n;) {
        int32_t chunk = n - done < (int32_t)s->params.n_batch ? n - done : (int32_t)s->params.n_batch;
        memcpy(s->tokens + s->n_tokens, toks + done, sizeof(sm_token) * (size_t)chunk);
        decode_job job = {s, s->tokens + s->n_tokens, chunk, done + chunk == n};
        if (s->intro) sm_introspector_expect_rows(s->intro, 1);
        int32_t failed;
        int32_t rc = sm_models_decode(s->pool, s->n_models, decode_member, undo_member, &job, &failed);
        if (rc != 0) {
            s->logits = NULL;
            if (s->n_tokens > n_before) {
                s->n_tokens = n_before;
                remove_from(s, n_before);
            }
            member *mb = &s->members[failed];
            if (rc == ALIGN_FAILED) return sm_session_fail(s, mb->err.status, "%s", mb->err.message);
            return sm_session_fail(s, SM_ERR_DECODE, "llama_decode failed in '%s' at position %d (code %d: %s)",
                                   mb->model->path, s->n_tokens + done, rc, sm_decode_failure(rc));
        }
        s->n_tokens += chunk;
        s->n_decoded_total += chunk;
        done += chunk;
        if (s->progress && s->progress_total > 0)
            s->progress(s->progress_total, s->progress_cached, s->n_tokens, s->progress_data);
        if (done < n && s->prompt_deadline_ms > 0 && sm_now_ms() > s->prompt_deadline_ms) {
            s->logits = NULL; /* the prompt is not all there: nothing to sample from */
            return sm_session_fail(s, SM_ERR_CANCELLED, "the prompt's time limit (%d ms) passed with %d of its "
                                   "tokens decoded", s->prompt_limit_ms, s->n_tokens);
        }
    }
    capture_logits(s);
    if (s->intro) sm_loop_remember_introspection(s, sm_introspector_record(s->intro, 0), sm_introspector_hidden(s->intro, 0));
    return SM_OK;
}

static void forget_ring_after(sm_session *s, int32_t pos) {
    for (int32_t i = 0; i < s->ring_cap; i++)
        if (s->ring_pos[i] > pos) s->ring_pos[i] = -1;
}

/* Cuts every same-vocabulary model's cache at n_keep. Models that follow
 * the text catch up at the next decode. */
static bool remove_from(sm_session *s, int32_t pos) {
    for (int32_t m = 0; m < s->n_models; m++)
        if (!s->members[m].aligned && !seq_rm(s, &s->members[m], pos)) return false;
    return true;
}

static sm_status truncate_impl(sm_session *s, int32_t n_keep) {
    if (n_keep < 0 || n_keep > s->n_tokens)
        return sm_session_fail(s, SM_ERR_INVALID_ARGUMENT, "cannot keep %d tokens of %d", n_keep, s->n_tokens);
    if (n_keep == s->n_tokens) return sm_session_flush_deferred(s);
    undefer(s);
    if (n_keep == s->n_tokens && s->logits) return SM_OK;
    if (!remove_from(s, n_keep))
        return sm_session_fail(s, SM_ERR_STATE, "this model's memory cannot remove a partial sequence (recurrent model?)");
    s->n_tokens = n_keep;
    forget_ring_after(s, n_keep);
    if (n_keep > 0 && s->ring_pos[n_keep % s->ring_cap] == n_keep) {
        s->logits = sm_loop_ring_slot(s, n_keep, 0);
        return SM_OK;
    }
    s->logits = NULL;
    if (n_keep == 0) return SM_OK;
    /* The distribution here was never kept: decode the last token again. */
    if (!remove_from(s, n_keep - 1)) return sm_session_fail(s, SM_ERR_STATE, "cannot remove position %d from the cache", n_keep - 1);
    s->n_tokens = n_keep - 1;
    sm_token last = s->tokens[n_keep - 1];
    return sm_loop_decode_append(s, &last, 1);
}

static sm_status set_tokens_impl(sm_session *s, const sm_token *tokens, int32_t n, int32_t *n_reused) {
    if (n_reused) *n_reused = 0;
    if (n < 1 || !tokens) return sm_session_fail(s, SM_ERR_INVALID_ARGUMENT, "set_tokens needs at least one token");
    if (n > s->n_ctx)
        return sm_session_fail(s, SM_ERR_PROMPT_TOO_LONG, "%d tokens do not fit the context of %d", n, s->n_ctx);
    undefer(s); /* if it is among the new tokens it is decoded with them */
    int32_t common = 0;
    while (common < s->n_tokens && common < n - 1 && s->tokens[common] == tokens[common]) common++;
    if (common < s->n_tokens) {
        if (!remove_from(s, common)) { /* a recurrent model keeps all or nothing */
            common = 0;
            sm_status st = sm_session_clear(s);
            if (st != SM_OK) return st;
        }
        s->n_tokens = common;
        forget_ring_after(s, common);
        s->logits = NULL;
    }
    if (n_reused) *n_reused = common;
    s->prompt_deadline_ms = s->prompt_limit_ms > 0 ? sm_now_ms() + s->prompt_limit_ms : 0;
    if (s->progress) s->progress(n, common, common, s->progress_data);
    s->progress_total = s->progress ? n : 0;
    s->progress_cached = common;
    sm_status st = sm_session_feed_tokens(s, tokens + common, n - common);
    s->progress_total = 0;
    s->prompt_deadline_ms = 0;
    return st;
}

void sm_session_set_prompt_time_limit(sm_session *s, int32_t limit_ms) {
    if (s) s->prompt_limit_ms = limit_ms > 0 ? limit_ms : 0;
}

void sm_session_set_prompt_progress(sm_session *s, sm_prompt_progress_fn fn, void *user_data) {
    if (!s) return;
    s->progress = fn;
    s->progress_data = user_data;
}

sm_status sm_session_rewind(sm_session *s, int32_t n) {
    if (n < 0 || n > s->n_tokens)
        return sm_session_fail(s, SM_ERR_INVALID_ARGUMENT, "cannot rewind %d tokens of %d", n, s->n_tokens);
    return sm_session_truncate(s, s->n_tokens - n);
}

sm_status sm_session_clear(sm_session *s) {
    for (int32_t m = 0; m < s->n_models; m++) {
        if (s->batch) seq_rm(s, &s->members[m], -1); /* its own cells only */
        else llama_memory_clear(s->members[m].mem, true);
        s->members[m].n_tokens = 0;
    }
    s->n_tokens = 0;
    s->deferred = false;
    s->logits = NULL;
    s->intro_has_last = false;
    forget_ring_after(s, -1);
    return SM_OK;
}

static sm_status feed_tokens_impl(sm_session *s, const sm_token *tokens, int32_t n) {
    if (n < 0 || (n > 0 && !tokens)) return sm_session_fail(s, SM_ERR_INVALID_ARGUMENT, "invalid token array");
    for (int32_t i = 0; i < n; i++)
        if (tokens[i] < 0 || tokens[i] >= s->n_vocab)
            return sm_session_fail(s, SM_ERR_INVALID_ARGUMENT, "token %d at index %d is outside the vocabulary (%d)",
                        tokens[i], i, s->n_vocab);
    return sm_loop_decode_append(s, tokens, n);
}

/* Tokenizes a user's text for this session, BOS only at the very start.
 * The text's own "<|...|>" stays text: it never becomes a special token. */
static sm_status tokenize(sm_session *s, const char *text, bool add_bos, sm_tokens *out) {
    bool want_bos = add_bos && s->n_tokens == 0;
    sm_error err = {0};
    sm_status st = sm_tokenize(s->model, text, strlen(text), want_bos, false, out, &err);
    if (st != SM_OK) return sm_session_fail(s, st, "%s", err.message);
    return SM_OK;
}

static sm_status feed_text_impl(sm_session *s, const char *text, bool add_bos) {
    sm_tokens toks;
    sm_status st = tokenize(s, text, add_bos, &toks);
    if (st != SM_OK) return st;
    st = sm_loop_decode_append(s, toks.data, toks.n);
    sm_tokens_free(&toks);
    return st;
}

/* ------------------------------------------------------------------ */
/* One generation                                                      */
/* ------------------------------------------------------------------ */



static int ensure_records(generation *g, int32_t n) {
    if (n <= g->cap_rec) return 0;
    int32_t cap = g->cap_rec ? g->cap_rec * 2 : 256;
    while (cap < n) cap *= 2;
    position_record *r = realloc(g->rec, sizeof *r * (size_t)cap);
    float *c = realloc(g->confidences, sizeof *c * (size_t)cap);
    sm_token *t = realloc(g->gen_tokens, sizeof *t * (size_t)cap);
    sm_fusion_info *f = realloc(g->fusion, sizeof *f * (size_t)cap);
    if (r) g->rec = r;
    if (c) g->confidences = c;
    if (t) g->gen_tokens = t;
    if (f) g->fusion = f;
    if (!r || !c || !t || !f) return -1;
    if (g->snap_size) {
        unsigned char *sn = realloc(g->snaps, g->snap_size * (size_t)cap);
        if (!sn) return -1;
        g->snaps = sn;
    }
    if (g->s->intro) {
        unsigned char *ir = realloc(g->intro_rec, sm_introspector_record_size(g->s->intro) * (size_t)cap);
        if (!ir) return -1;
        g->intro_rec = ir;
    }
    memset(g->rec + g->cap_rec, 0, sizeof *r * (size_t)(cap - g->cap_rec));
    g->cap_rec = cap;
    return 0;
}

/* Sends an event to the caller and keeps modification-like ones. */
void sm_loop_emit(generation *g, const sm_event *e) {
    if (e->type == SM_EVENT_MODIFICATION || e->type == SM_EVENT_RETRACTION || e->type == SM_EVENT_BACKTRACK) {
        sm_result *r = g->res;
        if (r->n_events == g->cap_events) {
            int32_t cap = g->cap_events ? g->cap_events * 2 : 32;
            sm_event *ev = realloc(r->events, sizeof *ev * (size_t)cap);
            if (ev) {
                r->events = ev;
                g->cap_events = cap;
            }
        }
        if (r->n_events < g->cap_events) {
            sm_event *copy = &r->events[r->n_events++];
            *copy = *e;
            copy->description = strdup(e->description ? e->description : "");
            copy->source = strdup(e->source ? e->source : "");
            copy->piece = NULL;
            copy->introspection = NULL;
            copy->lookahead = NULL;
        }
    }
    if (g->gp->on_event && !g->gp->on_event(e, g->gp->user_data)) g->cancelled = true;
}

/*
 * The generated tokens no rewind can reach any more: those before the last
 * injection, and those farther back than all the rewinds still allowed
 * could remove together (a backtrack removes at most max_rewind kept
 * tokens, a retraction retract_tokens - 1). Every rewind spends at least
 * as much of that budget as it removes, so the count never goes down.
 */
static int32_t settled_tokens(const generation *g) {
    const sm_gen_params *gp = g->gp;
    const int64_t max_rewind = g->s->params.max_rewind;
    int64_t reach = 0;
    if (sm_policy_retraction_enabled(&gp->policy)) {
        int64_t per = sm_policy_retraction_tokens(&gp->policy) - 1;
        if (per > max_rewind) per = max_rewind;
        int64_t left = (int64_t)gp->policy.max_retractions - g->res->n_retractions;
        reach += (left > 0 ? left : 0) * per;
    }
    if (gp->backtrack.n_operators > 0 || gp->n_stages > 0) {
        int64_t left = (int64_t)gp->backtrack.max_backtracks - g->res->n_backtracks;
        reach += (left > 0 ? left : 0) * max_rewind;
    }
    int64_t generated = sm_loop_generated(g);
    int64_t settled = generated - reach;
    if (settled < g->floor) settled = g->floor;
    return (int32_t)(settled < 0 ? 0 : settled > generated ? generated : settled);
}

sm_event sm_loop_base_event(const generation *g, sm_event_type type, int32_t index) {
    return (sm_event){
        .type = type,
        .token_index = index,
        .n_settled = settled_tokens(g),
        .description = "",
        .source = "",
        .temperature_before = g->knobs.temperature,
        .temperature_after = g->knobs.temperature,
        .repeat_penalty_before = g->knobs.repeat_penalty,
        .repeat_penalty_after = g->knobs.repeat_penalty,
        .token = -1,
    };
}

sm_event sm_loop_rewind_event(const generation *g, sm_event_type type, int32_t index) {
    sm_event e = sm_loop_base_event(g, type, index);
    e.temperature_before = g->knobs_before.temperature;
    e.repeat_penalty_before = g->knobs_before.repeat_penalty;
    return e;
}

int sm_loop_add_ban(position_record *r, sm_token t) {
    for (int32_t i = 0; i < r->n_bans; i++)
        if (r->bans[i] == t) return 0;
    if (r->n_bans == r->cap_bans) {
        int32_t cap = r->cap_bans ? r->cap_bans * 2 : 4;
        sm_token *b = realloc(r->bans, sizeof *b * (size_t)cap);
        if (!b) return -1;
        r->bans = b;
        r->cap_bans = cap;
    }
    r->bans[r->n_bans++] = t;
    return 0;
}

void sm_loop_stop_with(generation *g, sm_stop_reason reason) {
    if (g->stop == SM_STOP_NONE) g->stop = reason;
}

/* ------------------------------------------------------------------ */
/* Positions: what is saved before a token is sampled, and put back     */
/* ------------------------------------------------------------------ */

static unsigned char *snapshot_at(const generation *g, int32_t i) { return g->snaps + g->snap_size * (size_t)i; }

/* Everything a rewind to generated position i must restore, saved before
 * any stage acts there. */
static void save_position(generation *g, int32_t i) {
    position_record *r = &g->rec[i];
    r->knobs = g->knobs;
    r->sample_rng = sm_sample_rng_mark(&g->rng);
    unsigned char *snap = snapshot_at(g, i);
    for (int32_t k = 0; k < g->n_stages; k++) {
        const sm_stage *st = g->stages[k];
        if (!st->vt->snapshot_size) continue;
        st->vt->save(st->state, snap);
        snap += st->vt->snapshot_size;
    }
}

static void restore_position(generation *g, int32_t j) {
    const position_record *r = &g->rec[j];
    g->knobs = r->knobs; /* [restore] */
    sm_sample_rng_restore(&g->rng, r->sample_rng); /* [restore] */
    const unsigned char *snap = snapshot_at(g, j);
    for (int32_t k = 0; k < g->n_stages; k++) {
        sm_stage *st = g->stages[k];
        if (!st->vt->snapshot_size) continue;
        st->vt->restore(st->state, snap); /* [restore] */
        snap += st->vt->snapshot_size;
    }
}

/* What a position learned by trying (bans, retry counts) belongs to the
 * prefix before it: when that prefix goes, so does this. */
static void forget_tries(position_record *r) {
    r->n_bans = 0;
    r->n_backtracks_here = 0;
    r->n_rejected_here = 0;
}

void sm_loop_drop_stage_work(generation *g) {
    for (int32_t k = 0; k < g->n_stages; k++) {
        sm_stage *st = g->stages[k];
        if (st->ext && st->ext->drop) st->ext->drop(st->state, g);
    }
}

/*
 * THE rewind. Removes the last k tokens that entered the context from the
 * generation (n_decoded of them are decoded; the candidate, when it is one
 * of the k, is not), and puts back everything that was true before the
 * first removed position j was sampled: the KV cache and token list, the
 * text, the knobs and random state, every stage's snapshot, the bans and
 * counters of later positions. Then every stage hears how many of the
 * tokens it judged are gone; `by` removed them and reports the event (or
 * the loop reports it). The candidate at j is banned there.
 * Lines marked [restore] are what scripts/mutate_restores.sh deletes one
 * at a time to show that a test notices each.
 */
static sm_status rewind_to(generation *g, int32_t j, int32_t k, int32_t n_decoded, sm_stage *by) {
    sm_session *s = g->s;
    sm_loop_drop_stage_work(g);
    g->knobs_before = g->knobs;
    sm_status st = sm_session_truncate(s, s->n_tokens - n_decoded); /* [restore] */
    if (st != SM_OK) return st;
    sm_text_pop(&g->text, n_decoded); /* [restore] */
    restore_position(g, j);
    for (int32_t p = j + 1; p < j + k; p++) forget_tries(&g->rec[p]); /* [restore] later prefixes are gone */
    position_record *r = &g->rec[j];
    if (sm_loop_add_ban(r, r->token) != 0) return sm_session_fail(s, SM_ERR_NO_MEMORY, "out of memory");
    g->res->n_tokens_removed += k;
    g->reported = false;
    for (int32_t o = 0; o < g->n_stages; o++) {
        sm_stage *stg = g->stages[o];
        g->current = stg;
        if (stg->vt->on_rewind) stg->vt->on_rewind(stg->state, g, k, stg == by);
    }
    g->current = NULL;
    return SM_OK;
}

/* A user stage's removal: counted as a backtrack, reported here. */
static void report_stage_removal(generation *g, const sm_stage *by, int32_t k, bool takeback) {
    if (g->reported || (by->ext && (takeback ? by->ext->reports_takebacks : by->ext->retracts))) return;
    if (!by->ext) g->res->n_backtracks++;
    int32_t j = sm_loop_generated(g);
    sm_event e = sm_loop_rewind_event(g, SM_EVENT_BACKTRACK, j);
    e.mod = SM_MOD_BACKTRACK;
    e.confidence = g->rec[j + k - 1].signals.p_chosen;
    e.description = g->why;
    e.source = by->vt->name ? by->vt->name : "stage";
    e.n_removed = k;
    sm_loop_emit(g, &e);
}

/* Clamps a removal so it stays within the generated tokens and the
 * distributions the ring still holds. */
int32_t sm_loop_clamp_removal(const generation *g, int32_t i, int32_t k) {
    if (k > i - g->floor + 1) k = i - g->floor + 1; /* never across an injection */
    if (k - 1 > g->s->params.max_rewind) k = g->s->params.max_rewind + 1;
    return k;
}

/* ------------------------------------------------------------------ */
/* One step                                                            */
/* ------------------------------------------------------------------ */

/* The distribution generated token i is sampled from: the model's own, or
 * the fusion of every model's at this position. */
static void prepare_distribution(generation *g, int32_t i) {
    sm_session *s = g->s;
    if (s->n_models == 1) {
        g->dist = s->logits;
        return;
    }
    for (int32_t m = 0; m < s->n_models; m++)
        sm_model_dist_summarize(sm_loop_ring_slot(s, s->n_tokens, m), s->n_vocab, &g->dists[m]);
    sm_fuse(&g->gp->fusion, g->dists, s->n_models, s->n_vocab, i, s->fused, g->participating);
    g->dist = s->fused;
}

/* Samples the candidate at generated position i with this token's knobs
 * (or takes the one a stage chose) and computes its signals. */
/* The grammar's state follows the kept tokens: it has accepted exactly
 * gen_tokens[0..i) (replayed from the start after a rewind). */
/* grammar_prefill's tokens as llama.cpp's common sampler takes them: the
 * template's text, special tokens parsed, without a space some tokenizers
 * put in front. */
static sm_status grammar_prefill_tokens(sm_session *s, const char *text, sm_tokens *out) {
    sm_error err = {0};
    sm_status st = sm_tokenize(s->model, text, strlen(text), false, true, out, &err);
    if (st != SM_OK) return sm_session_fail(s, st, "grammar_prefill: %s", err.message);
    char piece[64];
    if (out->n > 0 && !isspace((unsigned char)text[0]) &&
        sm_token_text(s->model->vocab, out->data[0], piece, (int32_t)sizeof piece) > 0 && isspace((unsigned char)piece[0])) {
        memmove(out->data, out->data + 1, sizeof *out->data * (size_t)(out->n - 1));
        out->n--;
    }
    return SM_OK;
}

/* The grammar as it stands before the first generated token: after the
 * text it takes as already written (grammar_prefill). */
static bool grammar_restart(generation *g, sm_error *err) {
    if (!smx_sampler_reset(g->grammar, err)) return false;
    bool ok = true;
    for (int32_t k = 0; ok && k < g->grammar_prefill.n; k++)
        ok = smx_sampler_accept(g->grammar, g->grammar_prefill.data[k], err); /* [restore] */
    g->grammar_n = 0;
    return ok;
}

static bool grammar_sync(generation *g, int32_t i) {
    sm_error err;
    if (g->grammar_n > i && !grammar_restart(g, &err)) return false; /* [restore] */
    for (; g->grammar_n < i; g->grammar_n++)
        if (!smx_sampler_accept(g->grammar, g->gen_tokens[g->grammar_n], &err)) return false;
    return true;
}

static sm_token sample_candidate(generation *g, int32_t i, const sm_knobs *knobs) {
    sm_session *s = g->s;
    if (g->grammar && !grammar_sync(g, i)) {
        sm_session_fail(s, SM_ERR_INVALID_ARGUMENT, "the grammar does not allow token %d at position %d (a forced token?)",
                        g->gen_tokens[g->grammar_n], g->grammar_n);
        return -2;
    }
    position_record *r = &g->rec[i];
    int32_t last_n = g->gp->sampling.repeat_last_n;
    int32_t n_recent = s->n_tokens < last_n ? s->n_tokens : last_n;
    sm_sample_input in = {
        .logits = g->dist,
        .n_vocab = s->n_vocab,
        .recent = s->tokens + s->n_tokens - n_recent,
        .n_recent = n_recent,
        .bans = r->bans,
        .n_bans = r->n_bans,
        .never = g->gp->ignore_eos ? s->eog : NULL,
        .n_never = g->gp->ignore_eos ? s->n_eog : 0,
        .temperature = knobs->temperature,
        .repeat_penalty = knobs->repeat_penalty,
        .frequency_penalty = g->gp->sampling.frequency_penalty,
        .presence_penalty = g->gp->sampling.presence_penalty,
        .logit_bias = g->gp->sampling.logit_bias,
        .n_logit_bias = g->gp->sampling.n_logit_bias,
        .top_k = g->gp->sampling.top_k,
        .top_p = g->gp->sampling.top_p,
        .min_p = g->gp->sampling.min_p,
        .history = s->tokens,
        .n_history = s->n_tokens,
        .dry_multiplier = g->gp->sampling.dry_multiplier,
        .dry_base = g->gp->sampling.dry_base,
        .dry_allowed_length = g->gp->sampling.dry_allowed_length,
        .dry_penalty_last_n = g->gp->sampling.dry_penalty_last_n,
        .top_n_sigma = g->gp->sampling.top_n_sigma,
        .typical_p = g->gp->sampling.typical_p,
        .xtc_probability = g->gp->sampling.xtc_probability,
        .xtc_threshold = g->gp->sampling.xtc_threshold,
        .dynatemp_range = g->gp->sampling.dynatemp_range,
        .dynatemp_exponent = g->gp->sampling.dynatemp_exponent,
        .mirostat = g->gp->sampling.mirostat,
        .mirostat_tau = g->gp->sampling.mirostat_tau,
        .mirostat_eta = g->gp->sampling.mirostat_eta,
        /* mirostat's mu follows the kept tokens: what the one before left */
        .mirostat_mu = i == 0 ? 2.0f * g->gp->sampling.mirostat_tau : g->rec[i - 1].mirostat_mu_next,
        .mirostat_mu_next = &r->mirostat_mu_next,
        .grammar = g->grammar,
        .infill = g->gp->sampling.infill,
        .masked_out = g->grammar ? s->work.masked : NULL,
        .kept_out = g->gp->n_probs_post_sampling ? s->post_top : NULL,
        .n_kept_out = &s->n_post_top,
        .max_kept = g->gp->n_probs < 1000 ? g->gp->n_probs : 1000,
    };
    s->n_post_top = 0; /* a token a stage chose was not drawn */
    float p_sampled = 1.0f; /* a token a stage chose was not drawn */
    sm_token t = knobs->forced;
    bool sampled = t < 0;
    if (sampled) t = sm_sample(&in, &g->rng, &s->work, &p_sampled);
    else r->mirostat_mu_next = in.mirostat_mu; /* a chosen token teaches mirostat nothing */
    if (t < 0 && sampled && g->grammar && in.n_bans > 0) {
        /* Backtracks banned every token the grammar allows here: the
         * grammar wins (a backtrack never ends the text outside it), so
         * this position samples again without its bans. */
        in.bans = NULL;
        in.n_bans = 0;
        t = sm_sample(&in, &g->rng, &s->work, &p_sampled);
    }
    if (t < 0) return t;
    /* Under a grammar the text is written from what it allows: confidence,
     * the operators' view and the reported probabilities are over that. */
    if (g->grammar && sampled) g->dist = s->work.masked;
    sm_dist_stats stats;
    sm_signals_compute(g->dist, s->n_vocab, t, &r->signals, &stats);
    r->signals.p_sampled = p_sampled;
    r->log_z = stats.log_z;
    r->token = t;
    g->confidences[i] = r->signals.p_chosen;
    if (g->gp->policy.style == SM_POLICY_ORIGINAL && sampled) /* over the sampler's penalised logits */
        g->confidences[i] = sm_topk_confidence(s->work.logits, s->n_vocab, g->gp->sampling.top_k, t, s->work.cand);
    g->gen_tokens[i] = t;
    return t;
}

/* What every stage is shown of the candidate at i. The top-n view costs a
 * pass over the vocabulary: only operators and user stages get it. */
static sm_token_view candidate_view(generation *g, int32_t i, const char *piece) {
    sm_session *s = g->s;
    const position_record *r = &g->rec[i];
    const sm_backtrack_params *bt = &g->gp->backtrack;
    int32_t n_top = 0;
    bool wanted = bt->n_operators > 0 || g->gp->n_stages > 0;
    if (wanted && bt->input == SM_OPERATOR_INPUT_FULL) {
        sm_dist_stats stats = {.log_z = r->log_z};
        n_top = sm_top_candidates(g->dist, s->n_vocab, &stats, bt->top_n_view, s->top_view);
    }
    sm_token_view view = {
        .position = i,
        .token = r->token,
        .prob = r->signals.p_chosen,
        .logit = r->signals.logit,
        .logits = g->dist,
        .n_vocab = s->n_vocab,
        .top = s->top_view,
        .n_top = n_top,
        .piece = piece,
        .signals = &r->signals,
    };
    if (wanted && bt->input == SM_OPERATOR_INPUT_ORIGINAL) /* over the raw logits, as its generator's were */
        sm_operator_view_original(&view, bt->top_n_view,
                                  bt->input_temperature > 0.0f ? bt->input_temperature : r->knobs.temperature, s->top_view);
    return view;
}

/* Every stage judges the candidate at i; the largest count wins (the first
 * stage on ties). A backtrack is bounded per position (then the token is
 * kept) and per generation (then generation stops). Returns true when the
 * candidate was removed or generation stops. */
static sm_status judge(generation *g, int32_t i, const sm_token_view *view, bool *removed) {
    const sm_gen_params *gp = g->gp;
    *removed = false;
    int32_t best = 0;
    sm_stage *winner = NULL;
    bool backtrack_over_limit = false;
    g->why[0] = '\0';
    for (int32_t k = 0; k < g->n_stages; k++) {
        sm_stage *st = g->stages[k];
        if (!st->vt->judge) continue;
        g->current = st;
        int32_t n = st->vt->judge(st->state, g, view);
        if (n <= 0) continue;
        bool retracts = st->ext && st->ext->retracts;
        if (!retracts) {
            int32_t clamped = sm_loop_clamp_removal(g, i, n);
            if (g->rec[i - clamped + 1].n_backtracks_here >= gp->backtrack.max_per_position) continue; /* retried enough: keep */
            if (g->res->n_backtracks >= gp->backtrack.max_backtracks) backtrack_over_limit = true;
        }
        if (n > best) {
            best = n;
            winner = st;
        }
    }
    g->current = NULL;
    if (backtrack_over_limit) {
        sm_loop_stop_with(g, SM_STOP_BACKTRACK_LIMIT);
        *removed = true;
        return SM_OK;
    }
    if (g->stop != SM_STOP_NONE) {
        *removed = true;
        return SM_OK;
    }
    if (!winner) return SM_OK;
    *removed = true;
    int32_t k = sm_loop_clamp_removal(g, i, best);
    int32_t j = i - k + 1;
    g->rec[j].n_backtracks_here++;
    sm_status st = rewind_to(g, j, k, k - 1, winner);
    if (st == SM_OK) report_stage_removal(g, winner, k, false);
    return st;
}

/* The candidate is kept: every stage applies what it judged. */
static void accept_candidate(generation *g, const sm_token_view *view) {
    for (int32_t k = 0; k < g->n_stages; k++) {
        sm_stage *st = g->stages[k];
        g->current = st;
        if (st->vt->accept) st->vt->accept(st->state, g, view);
    }
    g->current = NULL;
}

/* The last token n_predict allows need not be decoded: nothing reads the
 * distribution after it unless the session goes on, and then it is decoded
 * first. Only where no one looks at it decoded: no stage that checks or
 * follows tokens, no introspection, one model. */
static bool may_defer(const generation *g, int32_t i) {
    if (g->gp->n_predict < 0 || i + 1 != g->gp->n_predict || g->s->intro || g->s->n_models != 1) return false;
    for (int32_t k = 0; k < g->n_stages; k++)
        if (g->stages[k]->vt->check || g->stages[k]->vt->after_token) return false;
    return true;
}

/* Token i enters the context: from a stage that already decoded it
 * (lookahead), or decoded here. Its stats are kept per position. */
static sm_status append_token(generation *g, int32_t i, sm_token t) {
    sm_session *s = g->s;
    bool appended = false;
    for (int32_t k = 0; k < g->n_stages && !appended; k++) {
        sm_stage *st = g->stages[k];
        sm_status status = SM_OK;
        if (st->ext && st->ext->append) appended = st->ext->append(st->state, g, t, &status);
        if (status != SM_OK) return status;
    }
    if (!appended && may_defer(g, i)) {
        if (sm_loop_reserve(&s->tokens, &s->cap_tokens, s->n_tokens + 1) != 0) return sm_session_fail(s, SM_ERR_NO_MEMORY, "out of memory");
        s->tokens[s->n_tokens++] = t;
        s->deferred = true;
        s->logits = NULL;
        return SM_OK;
    }
    if (!appended) {
        sm_status st = sm_loop_decode_append(s, &t, 1);
        if (st != SM_OK) return st;
        g->res->n_decoded++;
    }
    if (s->intro) {
        size_t rs = sm_introspector_record_size(s->intro);
        memcpy(g->intro_rec + rs * (size_t)i, s->intro_last, rs);
    }
    return SM_OK;
}

/* The stages check the decoded token before it is reported; the first
 * that objects takes it back (nothing is re-decoded: the ring still holds
 * the distribution it was sampled from), and it is banned there. */
static sm_status check_decoded(generation *g, int32_t i, const sm_token_view *view, bool *taken_back) {
    *taken_back = false;
    for (int32_t k = 0; k < g->n_stages; k++) {
        sm_stage *st = g->stages[k];
        if (!st->vt->check) continue;
        g->current = st;
        g->why[0] = '\0';
        bool object = st->vt->check(st->state, g, view);
        g->current = NULL;
        if (!object) continue;
        *taken_back = true;
        bool counted = st->ext && st->ext->reports_takebacks;
        if (!counted && g->res->n_backtracks >= g->gp->backtrack.max_backtracks) sm_loop_stop_with(g, SM_STOP_BACKTRACK_LIMIT);
        g->rec[i].n_rejected_here++;
        sm_status status = rewind_to(g, i, 1, 1, st);
        if (status == SM_OK) report_stage_removal(g, st, 1, true);
        return status;
    }
    return SM_OK;
}

static void report_token(generation *g, int32_t i, const sm_token_view *view, size_t text_end) {
    sm_session *s = g->s;
    sm_event e = sm_loop_base_event(g, SM_EVENT_TOKEN, i);
    e.token = view->token;
    e.piece = view->piece;
    /* From the end of the complete text before this token to the end of
     * the complete text after it. */
    size_t text_from = sm_utf8_complete_prefix(g->text.bytes, g->text.offsets[g->text.n_tokens - 1]);
    size_t text_to = sm_utf8_complete_prefix(g->text.bytes, text_end);
    e.text = g->text.bytes + text_from;
    e.text_len = text_to > text_from ? text_to - text_from : 0;
    e.signals = g->rec[i].signals;
    e.temperature_before = g->rec[i].knobs.temperature; /* what sampled this token */
    e.repeat_penalty_before = g->rec[i].knobs.repeat_penalty;
    e.confidence = g->confidences[i]; /* the policy's confidence (its style's definition) */
    e.fusion = s->n_models > 1 ? &g->fusion[i] : NULL;
    e.introspection = sm_session_introspection(s);
    if (g->gp->n_probs > 0 && g->gp->n_probs_post_sampling) { /* what the draw chose among */
        e.n_top = s->n_post_top;
        e.top = s->post_top;
    } else if (g->gp->n_probs > 0) { /* g->dist is still the distribution the token was sampled from */
        sm_dist_stats stats = {.log_z = g->rec[i].log_z};
        e.n_top = sm_top_candidates(g->dist, s->n_vocab, &stats, g->gp->n_probs < 1000 ? g->gp->n_probs : 1000,
                                    s->top_view);
        e.top = s->top_view;
    }
    sm_loop_emit(g, &e);
}

/* n_indent's cut after a token that began at text_before: the text before
 * it had none, so only the line it ends (from its line end on) and the
 * lines it adds are looked at, not the whole text every token. */
static long indent_cut_since(const sm_text *t, size_t text_before, int32_t n_indent) {
    size_t from = text_before;
    while (from > 0 && t->bytes[from - 1] != '\n') from--;
    if (from > 0) from--; /* the line end that starts that line */
    long at = sm_indent_cut(t->bytes + from, t->len - from, n_indent);
    return at < 0 ? -1 : (long)from + at;
}

/* Decodes the kept candidate, lets the stages check it, reports it. */
static sm_status commit(generation *g, int32_t i, const sm_token_view *view, int32_t piece_len) {
    sm_session *s = g->s;
    sm_token t = view->token;
    size_t text_before = g->text.len;
    if (s->n_models > 1) {
        sm_fusion_agreement(g->dists, s->n_models, s->n_vocab, t, g->participating, g->gp->fusion.reference,
                            &g->fusion[i]);
        g->fusion[i].p_fused = view->prob;
        for (int32_t m = 0; m < s->n_models; m++) g->fusion[i].unmapped_mass[m] = ring_unmapped(s, s->n_tokens, m);
    }
    if (sm_text_push(&g->text, view->piece, (size_t)piece_len) != 0) return sm_session_fail(s, SM_ERR_NO_MEMORY, "out of memory");
    sm_status st = append_token(g, i, t);
    if (st != SM_OK) {
        sm_text_pop(&g->text, 1);
        return st;
    }
    bool taken_back = false;
    st = check_decoded(g, i, view, &taken_back);
    if (st != SM_OK || taken_back) return st;
    if (g->t_first_token_ms <= 0.0) g->t_first_token_ms = sm_now_ms();
    /* the cut comes before the report: a stream never sends the line's beginning */
    long cut = g->gp->n_indent > 0 ? indent_cut_since(&g->text, text_before, g->gp->n_indent) : -1;
    if (cut >= 0) g->stop = SM_STOP_INDENT;
    report_token(g, i, view, cut >= 0 ? (size_t)cut : g->text.len);
    if (g->stop == SM_STOP_NONE && g->gp->n_stop_strings > 0 &&
        sm_text_find_stop(&g->text, text_before, g->gp->stop_strings, g->gp->n_stop_strings) >= 0)
        g->stop = SM_STOP_STOP_STRING;
    if (g->stop == SM_STOP_NONE && g->gp->t_max_predict_ms > 0 && memchr(view->piece, '\n', (size_t)piece_len) &&
        sm_now_ms() - g->t_first_token_ms > g->gp->t_max_predict_ms)
        g->stop = SM_STOP_TIME_LIMIT;
    for (int32_t k = 0; k < g->n_stages && g->stop == SM_STOP_NONE && !g->injected; k++) {
        sm_stage *stg = g->stages[k];
        if (!stg->vt->after_token) continue;
        g->current = stg;
        g->may_inject = true;
        stg->vt->after_token(stg->state, g, view);
        g->may_inject = false;
        g->current = NULL;
    }
    return g->status;
}

/* The stages prepare this token's knobs; one that injects text or stops
 * ends the step. Returns false then. */
static bool before_sample(generation *g, sm_knobs *knobs) {
    *knobs = g->knobs;
    knobs->forced = -1;
    for (int32_t k = 0; k < g->n_stages; k++) {
        sm_stage *st = g->stages[k];
        if (!st->vt->before_sample) continue;
        g->current = st;
        g->may_inject = true;
        st->vt->before_sample(st->state, g, knobs);
        g->may_inject = false;
        g->current = NULL;
        if (g->injected || g->stop != SM_STOP_NONE || g->status != SM_OK) return false;
    }
    return true;
}

/* Moves model m's cells at [from, n_tokens) down by n after removing the
 * n before them (under the batch's lock: its decoder thread shares them). */
static bool shift_cells(const sm_session *s, const member *mb, int32_t from, int32_t n) {
    if (s->batch) sm_batch_lock_context(s->batch);
    bool ok = llama_memory_can_shift(mb->mem) && llama_memory_seq_rm(mb->mem, s->seq, from - n, from);
    if (ok) llama_memory_seq_add(mb->mem, s->seq, from, -1, -n);
    if (s->batch) sm_batch_unlock_context(s->batch);
    return ok;
}

/*
 * llama-server's context shift: the context is full, so the n_discard
 * tokens after the first n_keep (a BOS stays too) leave it and the rest
 * move down. The distribution at the end moves with its position; every
 * other one the ring held belongs to positions that are gone or moved, so
 * the ring forgets them, and the floor forbids rewinds across the shift.
 * Returns false when nothing can be discarded.
 */
static bool shift_context(generation *g, sm_status *status) {
    sm_session *s = g->s;
    const sm_gen_params *gp = g->gp;
    bool bos = s->n_tokens > 0 && llama_vocab_get_add_bos(s->model->vocab) && s->tokens[0] == llama_vocab_bos(s->model->vocab);
    int32_t n_keep = gp->n_keep < 0 ? g->n_before : gp->n_keep + (bos ? 1 : 0);
    if (n_keep > s->n_ctx - 4) n_keep = s->n_ctx - 4;
    if (n_keep < 0) n_keep = 0;
    int32_t n_left = s->n_tokens - n_keep;
    int32_t n_discard = gp->n_discard > 0 ? gp->n_discard : n_left / 2;
    if (n_discard > n_left - 1) n_discard = n_left - 1;
    if (n_discard <= 0) return false;
    sm_loop_drop_stage_work(g); /* a lookahead branch planned on the old context is void */
    for (int32_t m = 0; m < s->n_models; m++) {
        if (!shift_cells(s, &s->members[m], n_keep + n_discard, n_discard)) {
            *status = sm_session_fail(s, SM_ERR_STATE, "the context of '%s' cannot be shifted",
                                      s->members[m].model->path);
            return false;
        }
    }
    memmove(s->tokens + n_keep, s->tokens + n_keep + n_discard, sizeof *s->tokens * (size_t)(n_left - n_discard));
    int32_t old_end = s->n_tokens;
    s->n_tokens -= n_discard;
    /* (a step begins with the distribution at the end in hand: s->logits) */
    if (old_end % s->ring_cap != s->n_tokens % s->ring_cap) {
        for (int32_t m = 0; m < s->n_models; m++) {
            memcpy(sm_loop_ring_slot(s, s->n_tokens, m), sm_loop_ring_slot(s, old_end, m), sizeof(float) * (size_t)s->n_vocab);
            *ring_unmapped_slot(s, s->n_tokens, m) = ring_unmapped(s, old_end, m);
        }
    }
    for (int32_t i = 0; i < s->ring_cap; i++) s->ring_pos[i] = -1;
    s->ring_pos[s->n_tokens % s->ring_cap] = s->n_tokens;
    s->logits = sm_loop_ring_slot(s, s->n_tokens, 0);
    g->start -= n_discard;
    g->floor = sm_loop_generated(g);
    g->res->n_context_shifts++;
    char desc[160];
    snprintf(desc, sizeof desc, "context full: %d tokens after the first %d dropped, %d kept", n_discard, n_keep,
             s->n_tokens);
    sm_event e = sm_loop_base_event(g, SM_EVENT_MODIFICATION, sm_loop_generated(g));
    e.mod = SM_MOD_CONTEXT_SHIFT;
    e.description = desc;
    e.source = "context";
    e.n_removed = n_discard;
    sm_loop_emit(g, &e);
    return true;
}

static sm_status generation_step(generation *g) {
    sm_session *s = g->s;
    const int32_t i = sm_loop_generated(g);
    if (g->gp->n_predict >= 0 && i >= g->gp->n_predict) {
        g->stop = SM_STOP_N_PREDICT;
        return SM_OK;
    }
    if (s->n_tokens >= s->n_ctx) {
        sm_status shifted = SM_OK;
        if (!g->gp->context_shift || !shift_context(g, &shifted)) {
            if (shifted != SM_OK) return shifted;
            g->stop = SM_STOP_CONTEXT_FULL;
            return SM_OK;
        }
    }
    if (ensure_records(g, i + 1) != 0) return sm_session_fail(s, SM_ERR_NO_MEMORY, "out of memory");
    g->injected = false;
    save_position(g, i);
    prepare_distribution(g, i);
    sm_knobs knobs;
    if (!before_sample(g, &knobs)) return g->status;
    sm_token t = sample_candidate(g, i, &knobs);
    if (t == -2) return SM_ERR_INVALID_ARGUMENT; /* the grammar refused a forced token (the message is set) */
    if (t < 0) { /* the bans left nothing to sample: the text so far is the answer */
        /* A grammar that no token of this vocabulary can begin (a model
         * without a '{' cannot write JSON) is a request this model cannot
         * serve: say so rather than answer nothing. */
        if (g->grammar && g->res->n_sampled == 0)
            return sm_session_fail(s, SM_ERR_INVALID_ARGUMENT,
                                   "the grammar allows none of this model's tokens: its vocabulary cannot spell "
                                   "what the grammar needs first");
        g->stop = SM_STOP_NO_CANDIDATES;
        return SM_OK;
    }
    g->res->n_sampled++;

    char piece[256];
    int32_t piece_len = sm_token_piece(s->model->vocab, t, piece, (int32_t)sizeof piece - 1);
    piece[piece_len] = '\0';
    sm_token_view view = candidate_view(g, i, piece);

    bool removed;
    sm_status st = judge(g, i, &view, &removed);
    if (st != SM_OK || removed) return st;
    accept_candidate(g, &view);
    if (llama_vocab_is_eog(s->model->vocab, t)) {
        g->stop = SM_STOP_EOG;
        return SM_OK;
    }
    if (g->gp->stop_at_bos && t == llama_vocab_bos(s->model->vocab)) {
        g->stop = SM_STOP_BOS;
        return SM_OK;
    }
    return commit(g, i, &view, piece_len);
}

static void generation_free(generation *g) {
    sm_stages_close(g);
    for (int32_t i = 0; i < g->cap_rec; i++) free(g->rec[i].bans);
    free(g->rec);
    free(g->snaps);
    free(g->confidences);
    free(g->gen_tokens);
    if (g->grammar) llama_sampler_free(g->grammar);
    sm_tokens_free(&g->grammar_prefill);
    free(g->fusion);
    free(g->intro_rec);
    sm_text_free(&g->text);
}

/* Fills the result from the kept state: every statistic is computed over
 * the kept tokens only, so it equals a run that never made the removed ones. */
static sm_status finish_result(generation *g) {
    sm_result *r = g->res;
    int32_t n = sm_loop_generated(g);
    r->stop_reason = g->stop;
    r->n_tokens = n;
    r->tokens = malloc(sizeof(sm_token) * (size_t)(n > 0 ? n : 1));
    if (!r->tokens) return sm_session_fail(g->s, SM_ERR_NO_MEMORY, "out of memory");
    if (n > 0) memcpy(r->tokens, g->gen_tokens, sizeof(sm_token) * (size_t)n); /* injected tokens are not output tokens */
    r->n_models = g->s->n_models;
    if (g->s->n_models > 1) {
        r->fusion = malloc(sizeof *r->fusion * (size_t)(n > 0 ? n : 1));
        if (!r->fusion) return sm_session_fail(g->s, SM_ERR_NO_MEMORY, "out of memory");
        if (n > 0) memcpy(r->fusion, g->fusion, sizeof *r->fusion * (size_t)n);
    }
    double sum = 0.0;
    for (int32_t i = 0; i < n; i++) sum += g->confidences[i];
    r->avg_confidence = n > 0 ? (float)(sum / n) : 0.0f;
    r->final_temperature = g->knobs.temperature;
    r->final_repeat_penalty = g->knobs.repeat_penalty;
    size_t len = g->text.len;
    if (g->stop == SM_STOP_STOP_STRING) {
        long at = sm_text_find_stop(&g->text, 0, g->gp->stop_strings, g->gp->n_stop_strings);
        if (at >= 0) len = (size_t)at;
    }
    if (g->stop == SM_STOP_INDENT) {
        long at = sm_indent_cut(g->text.bytes, g->text.len, g->gp->n_indent);
        if (at >= 0) len = (size_t)at;
    }
    r->text = malloc(len + 1);
    if (!r->text) return sm_session_fail(g->s, SM_ERR_NO_MEMORY, "out of memory");
    if (len) memcpy(r->text, g->text.bytes, len);
    r->text[len] = '\0';
    r->text_len = len;
    return SM_OK;
}

static void reset_stages(generation *g) {
    for (int32_t k = 0; k < g->n_stages; k++) {
        sm_stage *st = g->stages[k];
        g->current = st;
        if (st->vt->reset) st->vt->reset(st->state, g);
    }
    g->current = NULL;
}

static sm_status generate_impl(sm_session *s, const char *prompt, const sm_gen_params *gp, sm_result *res) {
    if (!s || !gp || !res) return s ? sm_session_fail(s, SM_ERR_INVALID_ARGUMENT, "missing params or result") : SM_ERR_INVALID_ARGUMENT;
    memset(res, 0, sizeof *res);
    char msg[256];
    sm_error invalid;
    if (sm_gen_params_validate(gp, &invalid) != SM_OK) return sm_session_fail(s, invalid.status, "%s", invalid.message);
    if (s->n_models > 1 && sm_fusion_params_validate(&gp->fusion, s->n_models, msg, sizeof msg) != SM_OK)
        return sm_session_fail(s, SM_ERR_INVALID_ARGUMENT, "%s", msg);
    if (!sm_intervention_fits(s, gp, msg, sizeof msg)) return sm_session_fail(s, SM_ERR_INVALID_ARGUMENT, "%s", msg);
    for (int32_t i = 0; i < gp->sampling.n_logit_bias; i++)
        if (gp->sampling.logit_bias[i].token >= s->n_vocab)
            return sm_session_fail(s, SM_ERR_INVALID_ARGUMENT, "logit_bias[%d]: token %d is outside the vocabulary (%d)", i,
                                   gp->sampling.logit_bias[i].token, s->n_vocab);
    for (int32_t i = 0; i < gp->n_forced_tokens; i++)
        if (gp->forced_tokens[i] >= s->n_vocab)
            return sm_session_fail(s, SM_ERR_INVALID_ARGUMENT, "forced token %d is %d, outside the vocabulary (%d)", i,
                                   gp->forced_tokens[i], s->n_vocab);

    if (grow_ring(s, ring_needed(s, gp)) != 0) return sm_session_fail(s, SM_ERR_NO_MEMORY, "out of memory for the distributions a rewind needs");
    if (gp->ignore_eos && !s->eog) { /* the vocabulary's end-of-generation tokens, found once */
        s->eog = malloc(sizeof *s->eog * (size_t)s->n_vocab);
        if (!s->eog) return sm_session_fail(s, SM_ERR_NO_MEMORY, "out of memory");
        for (sm_token t = 0; t < s->n_vocab; t++)
            if (llama_vocab_is_eog(s->model->vocab, t)) s->eog[s->n_eog++] = t;
    }
    double t0 = sm_now_ms();
    if (prompt && *prompt) {
        sm_tokens toks;
        sm_status st = tokenize(s, prompt, true, &toks);
        if (st != SM_OK) return st;
        int32_t n = toks.n;
        if (s->n_tokens + n >= s->n_ctx) {
            sm_tokens_free(&toks);
            return sm_session_fail(s, SM_ERR_PROMPT_TOO_LONG,
                        "the prompt is %d tokens but the context holds %d (%d already used): nothing left to generate into",
                        n, s->n_ctx, s->n_tokens);
        }
        st = sm_loop_decode_append(s, toks.data, n);
        sm_tokens_free(&toks);
        if (st != SM_OK) return st;
        res->n_prompt_tokens = n;
    }
    sm_status flushed = sm_session_flush_deferred(s);
    if (flushed != SM_OK) return flushed;
    if (!s->logits) return sm_session_fail(s, SM_ERR_STATE, "nothing to continue from: give a prompt first");

    if (gp->context_shift)
        for (int32_t m = 0; m < s->n_models; m++)
            if (s->members[m].aligned)
                return sm_session_fail(s, SM_ERR_INVALID_ARGUMENT,
                                       "context_shift does not work with fusion_align (an aligned model keeps its own tokens)");
    generation g = {.s = s, .gp = gp, .res = res, .start = s->n_tokens, .n_before = s->n_tokens, .stop = SM_STOP_NONE};
    if (gp->grammar) {
        sm_error gerr = {0};
        g.grammar = gp->n_grammar_triggers > 0
                        ? smx_grammar_new_lazy(s->model->vocab, gp->grammar, "root", gp->grammar_triggers,
                                               (size_t)gp->n_grammar_triggers, &gerr)
                        : smx_grammar_new(s->model->vocab, gp->grammar, "root", &gerr);
        if (!g.grammar)
            return sm_session_fail(s, SM_ERR_INVALID_ARGUMENT, "the grammar does not parse as GBNF (root rule 'root')%s%s",
                                   *gerr.message ? ": " : "", gerr.message);
        sm_status pst = gp->grammar_prefill ? grammar_prefill_tokens(s, gp->grammar_prefill, &g.grammar_prefill) : SM_OK;
        if (pst == SM_OK && !grammar_restart(&g, &gerr))
            pst = sm_session_fail(s, SM_ERR_INVALID_ARGUMENT, "the grammar does not begin with its prefill '%s'",
                                  gp->grammar_prefill);
        if (pst != SM_OK) {
            llama_sampler_free(g.grammar);
            sm_tokens_free(&g.grammar_prefill);
            return pst;
        }
    }
    g.knobs = (sm_knobs){gp->sampling.temperature, gp->sampling.repeat_penalty, -1};
    sm_sample_rng_init(&g.rng, gp->sampling.seed);
    sm_text_init(&g.text);
    sm_status st = sm_stages_open(&g);
    if (st != SM_OK) {
        generation_free(&g);
        return st;
    }
    reset_stages(&g);
    double t1 = sm_now_ms();
    res->t_prompt_ms = t1 - t0;

    sm_event start = sm_loop_base_event(&g, SM_EVENT_START, 0);
    sm_loop_emit(&g, &start);
    while (st == SM_OK && g.stop == SM_STOP_NONE) {
        if (g.cancelled) {
            g.stop = SM_STOP_CANCELLED;
            break;
        }
        st = generation_step(&g);
    }
    sm_loop_drop_stage_work(&g);
    if (st != SM_OK) g.stop = SM_STOP_ERROR;
    sm_status fin = finish_result(&g);
    if (st == SM_OK) st = fin;
    res->t_generate_ms = sm_now_ms() - t1;

    sm_event done = sm_loop_base_event(&g, SM_EVENT_DONE, sm_loop_generated(&g));
    done.stop_reason = g.stop;
    done.confidence = res->avg_confidence;
    done.description = st == SM_OK ? (g.stop == SM_STOP_STAGE ? g.why : "") : s->error;
    if (g.gp->on_event) g.gp->on_event(&done, g.gp->user_data);
    generation_free(&g);
    return st;
}

void sm_result_free(sm_result *r) {
    if (!r) return;
    free(r->text);
    free(r->tokens);
    free(r->fusion);
    for (int32_t i = 0; i < r->n_events; i++) {
        free((char *)r->events[i].description);
        free((char *)r->events[i].source);
    }
    free(r->events);
    memset(r, 0, sizeof *r);
}

/* ------------------------------------------------------------------ */
/* Introspection, control vectors and the prompt cache                 */
/* ------------------------------------------------------------------ */

bool sm_session_introspecting(const sm_session *s) { return s && s->intro; }

const sm_introspection *sm_session_introspection(const sm_session *s) {
    return s && s->intro && s->intro_has_last ? &s->intro_view : NULL;
}

struct llama_context *sm_session_llama_context(const sm_session *s, int32_t m) {
    return s && m >= 0 && m < s->n_models ? s->members[m].ctx : NULL;
}

int64_t sm_session_eval_callback_calls(const sm_session *s) { return s->intro ? sm_introspector_calls(s->intro) : -1; }

sm_status sm_session_set_control_vector(sm_session *s, const float *data, int32_t len, int32_t n_embd, int32_t il_start,
                                        int32_t il_end) {
    if (!s) return SM_ERR_INVALID_ARGUMENT;
    if (s->batch) return sm_session_fail(s, SM_ERR_STATE, "a control vector would steer every session of the batch");
    if (data && (n_embd < 1 || len < n_embd || len % n_embd != 0))
        return sm_session_fail(s, SM_ERR_INVALID_ARGUMENT, "a control vector of %d floats is not a whole number of %d-float layers",
                    len, n_embd);
    for (int32_t m = 0; data && m < s->n_models; m++) {
        int32_t model_embd = llama_model_n_embd(s->members[m].model->lm);
        if (model_embd != n_embd)
            return sm_session_fail(s, SM_ERR_INVALID_ARGUMENT, "the control vector has %d values per layer but '%s' has n_embd %d",
                        n_embd, s->members[m].model->path, model_embd);
    }
    if (data && il_start < 0 && il_end < 0) {
        il_start = 1;
        il_end = len / n_embd;
    }
    if (data && (il_start < 1 || il_end < il_start))
        return sm_session_fail(s, SM_ERR_INVALID_ARGUMENT, "control vector layers %d to %d: need 1 <= start <= end", il_start, il_end);
    for (int32_t m = 0; m < s->n_models; m++) {
        if (llama_set_adapter_cvec(s->members[m].ctx, data, data ? (size_t)len : 0, n_embd, il_start, il_end) != 0)
            return sm_session_fail(s, SM_ERR_STATE, "llama.cpp refused the control vector for '%s'", s->members[m].model->path);
    }
    return SM_OK;
}

sm_status sm_session_save_prefix(sm_session *s, const char *path) {
    if (!s || !path || !*path) return s ? sm_session_fail(s, SM_ERR_INVALID_ARGUMENT, "no prompt cache file given") : SM_ERR_INVALID_ARGUMENT;
    if (s->n_models != 1) return sm_session_fail(s, SM_ERR_STATE, "the prompt cache holds one model's state: this session has %d", s->n_models);
    if (s->batch) return sm_session_fail(s, SM_ERR_STATE, "a session on a batch has no prompt cache");
    if (s->n_tokens == 0) return sm_session_fail(s, SM_ERR_STATE, "the context is empty: no prefix to save");
    sm_status flushed = sm_session_flush_deferred(s);
    if (flushed != SM_OK) return flushed;
    sm_error err = {0};
    size_t bytes = 0;
    if (!smx_state_seq_save_file(s->members[0].ctx, path, 0, s->tokens, (size_t)s->n_tokens, &bytes, &err))
        return sm_session_fail(s, err.status, "%s", err.message);
    if (bytes == 0) return sm_session_fail(s, SM_ERR_IO, "cannot write prompt cache '%s'", path);
    return SM_OK;
}

/* Loads the file's state into sequence 0 and keeps the part of it that is
 * a prefix of tokens[0..n) (at most n - 1 tokens); returns how many, or -1
 * (the session's error set) for a file that is not this model's prompt
 * cache: it is someone's data and will not be overwritten. */
static int32_t reuse_saved_prefix(sm_session *s, const char *path, const sm_token *tokens, int32_t n,
                                  sm_prefix_info *info) {
    struct stat st;
    if (stat(path, &st) != 0 && errno == ENOENT) {
        snprintf(info->reason, sizeof info->reason, "no prompt cache '%s' yet", path);
        return 0;
    }
    if (access(path, R_OK) != 0 || !S_ISREG(st.st_mode)) {
        sm_session_fail(s, SM_ERR_IO, "cannot read prompt cache '%s': %s", path,
                        S_ISDIR(st.st_mode) ? "it is a directory" : strerror(errno));
        return -1;
    }
    sm_token *saved = malloc(sizeof(sm_token) * (size_t)s->n_ctx);
    if (!saved) {
        snprintf(info->reason, sizeof info->reason, "out of memory");
        return 0;
    }
    size_t n_saved = 0, bytes = 0;
    sm_error err = {0};
    bool loaded = smx_state_seq_load_file(s->members[0].ctx, path, 0, saved, (size_t)s->n_ctx, &n_saved, &bytes, &err);
    int32_t common = 0;
    if (!loaded || bytes == 0) {
        free(saved);
        llama_memory_clear(s->members[0].mem, true);
        sm_session_fail(s, SM_ERR_IO,
                        "'%s' is not a prompt cache of this model and context (another model, a longer context, "
                        "or not a prompt cache at all): refusing to overwrite it; remove it or choose another file",
                        path);
        return -1;
    } else {
        info->n_file_tokens = (int32_t)n_saved;
        while (common < (int32_t)n_saved && common < n && saved[common] == tokens[common]) common++;
        if (common < (int32_t)n_saved)
            snprintf(info->reason, sizeof info->reason,
                     "the cache's %zu tokens are not a prefix of these %d: they differ from token %d on (its first %d reused)",
                     n_saved, n, common, common < n ? common : n - 1);
    }
    free(saved);
    int32_t keep = common < n ? common : n - 1; /* the last token is decoded for its distribution */
    if (!llama_memory_seq_rm(s->members[0].mem, 0, keep, -1)) {
        llama_memory_clear(s->members[0].mem, true);
        return 0;
    }
    return keep;
}

sm_status sm_session_load_prefix(sm_session *s, const char *path, const sm_token *tokens, int32_t n,
                                 sm_prefix_info *info) {
    sm_prefix_info scratch;
    if (!info) info = &scratch;
    memset(info, 0, sizeof *info);
    if (!s || !path || !*path || !tokens || n < 1)
        return s ? sm_session_fail(s, SM_ERR_INVALID_ARGUMENT, "load_prefix needs a file and at least one token") : SM_ERR_INVALID_ARGUMENT;
    if (s->n_models != 1) return sm_session_fail(s, SM_ERR_STATE, "the prompt cache holds one model's state: this session has %d", s->n_models);
    if (s->batch) return sm_session_fail(s, SM_ERR_STATE, "a session on a batch has no prompt cache");
    if (s->n_tokens != 0) return sm_session_fail(s, SM_ERR_STATE, "load_prefix needs an empty session (clear it first)");
    for (int32_t i = 0; i < n; i++)
        if (tokens[i] < 0 || tokens[i] >= s->n_vocab)
            return sm_session_fail(s, SM_ERR_INVALID_ARGUMENT, "token %d at index %d is outside the vocabulary (%d)", tokens[i], i, s->n_vocab);
    if (n > s->n_ctx) return sm_session_fail(s, SM_ERR_PROMPT_TOO_LONG, "%d tokens do not fit the context of %d", n, s->n_ctx);
    int32_t keep = reuse_saved_prefix(s, path, tokens, n, info);
    if (keep < 0) return SM_ERR_IO;
    if (sm_loop_reserve(&s->tokens, &s->cap_tokens, n) != 0) return sm_session_fail(s, SM_ERR_NO_MEMORY, "out of memory");
    memcpy(s->tokens, tokens, sizeof(sm_token) * (size_t)keep); /* what the loaded state holds */
    s->n_tokens = keep;
    s->members[0].n_tokens = 0;
    int32_t reused = 0;
    sm_status st = sm_session_set_tokens(s, tokens, n, &reused);
    info->n_reused = reused;
    info->n_decoded = n - reused;
    if (st != SM_OK) sm_session_clear(s);
    return st;
}

/* llama-server's packed token list (server_tokens::serialize, text only):
 * LLAMA_TOKEN_NULL, the format's version, the token count, the tokens, and
 * a count of media chunks (none here). */
enum { SLOT_PACKED_VERSION = 1, SLOT_PACKED_EXTRA = 4 };

static void slot_pack(const sm_token *tokens, int32_t n, sm_token *out) {
    out[0] = LLAMA_TOKEN_NULL;
    out[1] = SLOT_PACKED_VERSION;
    out[2] = n;
    memcpy(out + 3, tokens, sizeof *tokens * (size_t)n);
    out[3 + n] = 0;
}

/* The tokens of a file's list, packed or plain: where they start and how
 * many (0: a list this cannot take, with why). */
static int32_t slot_unpack(const sm_token *list, size_t n, const sm_token **tokens, const char **why) {
    *why = NULL;
    if (n == 0 || list[0] != LLAMA_TOKEN_NULL) { /* a plain list, as older llama-servers wrote */
        *tokens = list;
        return (int32_t)n;
    }
    if (n < SLOT_PACKED_EXTRA || list[1] != SLOT_PACKED_VERSION) {
        *why = "its packed token list is of a version this does not read";
        return 0;
    }
    size_t count = (size_t)(uint32_t)list[2];
    if (count == 0 || count > n - SLOT_PACKED_EXTRA) {
        *why = "its packed token list is cut short";
        return 0;
    }
    if (list[3 + count] != 0) {
        *why = "it holds images (a multimodal model's), which are not supported";
        return 0;
    }
    if (n != count + SLOT_PACKED_EXTRA) {
        *why = "its packed token list has trailing data";
        return 0;
    }
    *tokens = list + 3;
    return (int32_t)count;
}

sm_status sm_session_save_state(sm_session *s, const char *path, int32_t *n_saved, size_t *n_bytes) {
    if (!s || !path || !*path) return s ? sm_session_fail(s, SM_ERR_INVALID_ARGUMENT, "no slot file given") : SM_ERR_INVALID_ARGUMENT;
    if (s->n_models != 1) return sm_session_fail(s, SM_ERR_STATE, "a slot file holds one model's state: this session has %d", s->n_models);
    /* All the tokens, a deferred last one too (its cell is not there yet:
     * a restore decodes the last token again anyway), so that a restored
     * session goes on exactly as this one. */
    int32_t n = s->n_tokens;
    if (n <= 0) return sm_session_fail(s, SM_ERR_STATE, "the context is empty: nothing to save");
    sm_token *packed = malloc(sizeof *packed * ((size_t)n + SLOT_PACKED_EXTRA));
    if (!packed) return sm_session_fail(s, SM_ERR_NO_MEMORY, "out of memory");
    slot_pack(s->tokens, n, packed);
    sm_error err = {0};
    size_t bytes = 0;
    if (s->batch) sm_batch_lock_context(s->batch);
    bool ok = smx_state_seq_save_file(s->members[0].ctx, path, s->seq, packed, (size_t)n + SLOT_PACKED_EXTRA, &bytes,
                                      &err);
    if (s->batch) sm_batch_unlock_context(s->batch);
    free(packed);
    if (!ok) return sm_session_fail(s, err.status ? err.status : SM_ERR_IO, "%s", err.message);
    if (bytes == 0) return sm_session_fail(s, SM_ERR_IO, "cannot write the slot file '%s'", path);
    if (n_saved) *n_saved = n;
    if (n_bytes) *n_bytes = bytes;
    return SM_OK;
}

static sm_status load_state(sm_session *s, const char *path, int32_t *n_restored, size_t *n_bytes) {
    if (!s || !path || !*path) return s ? sm_session_fail(s, SM_ERR_INVALID_ARGUMENT, "no slot file given") : SM_ERR_INVALID_ARGUMENT;
    if (s->n_models != 1) return sm_session_fail(s, SM_ERR_STATE, "a slot file holds one model's state: this session has %d", s->n_models);
    sm_token *list = malloc(sizeof(sm_token) * ((size_t)s->n_ctx + SLOT_PACKED_EXTRA));
    if (!list) return sm_session_fail(s, SM_ERR_NO_MEMORY, "out of memory");
    sm_session_clear(s);
    size_t n_list = 0, bytes = 0;
    sm_error err = {0};
    if (s->batch) sm_batch_lock_context(s->batch);
    bool loaded = smx_state_seq_load_file(s->members[0].ctx, path, s->seq, list, (size_t)s->n_ctx + SLOT_PACKED_EXTRA,
                                          &n_list, &bytes, &err);
    if (s->batch) sm_batch_unlock_context(s->batch);
    const sm_token *saved = list;
    const char *why = NULL;
    size_t n = loaded && bytes > 0 ? (size_t)slot_unpack(list, n_list, &saved, &why) : 0;
    if (n > (size_t)s->n_ctx) why = "it holds more tokens than this context";
    for (size_t i = 0; !why && i < n; i++)
        if (saved[i] < 0 || saved[i] >= s->n_vocab) why = "it holds a token id outside this model's vocabulary";
    if (!loaded || bytes == 0 || n == 0 || why) {
        free(list);
        sm_session_clear(s);
        if (why) return sm_session_fail(s, SM_ERR_IO, "'%s' cannot be restored here: %s", path, why);
        return sm_session_fail(s, SM_ERR_IO, "'%s' is not a slot file of this model and context (another model, a "
                                             "longer context, or not a slot file)", path);
    }
    /* The cells are there; the last token is decoded again for its distribution. */
    int32_t keep = (int32_t)n - 1;
    sm_status st = seq_rm(s, &s->members[0], keep) ? SM_OK : SM_ERR_STATE;
    if (st == SM_OK && sm_loop_reserve(&s->tokens, &s->cap_tokens, (int32_t)n) != 0) st = SM_ERR_NO_MEMORY;
    if (st == SM_OK) {
        memcpy(s->tokens, saved, sizeof(sm_token) * (size_t)keep);
        s->n_tokens = keep;
        s->members[0].n_tokens = 0;
        int32_t reused = 0;
        st = sm_session_set_tokens(s, saved, (int32_t)n, &reused);
    } else {
        sm_session_fail(s, st, "cannot take the slot file's cells");
    }
    free(list);
    if (st != SM_OK) {
        sm_session_clear(s);
        return st;
    }
    if (n_restored) *n_restored = (int32_t)n;
    if (n_bytes) *n_bytes = bytes;
    return SM_OK;
}

/* ------------------------------------------------------------------ */
/* Entry points that decode: on a batch, the session is busy meanwhile */
/* ------------------------------------------------------------------ */

/* While a session is inside a call that decodes, the batch waits for its
 * decodes before it decodes the others' (nested calls count once). */
static void busy_enter(sm_session *s) {
    if (s->batch && s->busy_depth++ == 0) sm_batch_busy(s->batch, +1);
}

static void busy_leave(sm_session *s) {
    if (s->batch && --s->busy_depth == 0) sm_batch_busy(s->batch, -1);
}

sm_status sm_session_truncate(sm_session *s, int32_t n_keep) {
    busy_enter(s);
    sm_status st = truncate_impl(s, n_keep);
    busy_leave(s);
    return st;
}

sm_status sm_session_set_tokens(sm_session *s, const sm_token *tokens, int32_t n, int32_t *n_reused) {
    busy_enter(s);
    sm_status st = set_tokens_impl(s, tokens, n, n_reused);
    busy_leave(s);
    return st;
}

sm_status sm_session_feed_tokens(sm_session *s, const sm_token *tokens, int32_t n) {
    busy_enter(s);
    sm_status st = feed_tokens_impl(s, tokens, n);
    busy_leave(s);
    return st;
}

sm_status sm_session_feed_text(sm_session *s, const char *text, bool add_bos) {
    busy_enter(s);
    sm_status st = feed_text_impl(s, text, add_bos);
    busy_leave(s);
    return st;
}

sm_status sm_session_load_state(sm_session *s, const char *path, int32_t *n_restored, size_t *n_bytes) {
    if (!s) return SM_ERR_INVALID_ARGUMENT;
    busy_enter(s);
    sm_status st = load_state(s, path, n_restored, n_bytes);
    busy_leave(s);
    return st;
}

sm_status sm_session_generate(sm_session *s, const char *prompt, const sm_gen_params *gp, sm_result *res) {
    if (!s) return SM_ERR_INVALID_ARGUMENT;
    busy_enter(s);
    sm_status st = generate_impl(s, prompt, gp, res);
    busy_leave(s);
    return st;
}
