/*
 * THE generation loop, and the only place that calls llama_decode for
 * generation:
 *
 *   distribution -> sample -> signals -> decisions (policy, operators)
 *                -> commit (decode the token) | rewind (no decode at all)
 *
 * A candidate token is judged before it is decoded, so a rejected token
 * costs nothing. Every generated position keeps the distribution it was
 * sampled from (a ring of max_rewind entries), so a rewind restores the
 * distribution instead of decoding again: a retraction costs exactly the
 * tokens that are regenerated.
 */
#include "internal.h"

#include <ctype.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

/* What was true at a generated position just before its token was
 * sampled: enough to rewind to it exactly. */
typedef struct position_record {
    sm_token token;
    sm_signals signals;
    float log_z;                /* of the raw distribution, for top-n views */
    float temperature;
    float repeat_penalty;
    uint64_t sample_rng;
    uint64_t policy_rng;
    int32_t n_backtracks_here;  /* rewinds that landed on this position */
    int32_t n_safety_here;      /* tokens safety rules removed here      */
    sm_token *bans;             /* tokens no longer allowed here         */
    int32_t n_bans, cap_bans;
} position_record;

/* One model of the session and its context. */
typedef struct member {
    sm_model *model;
    struct llama_context *ctx;
    llama_memory_t mem;
    int32_t n_threads;
    /* A model with another vocabulary (fusion_align) follows the text:
     * it keeps its own tokens and its distributions are mapped onto
     * model 0's vocabulary through map_to0. */
    bool aligned;
    int32_t *map_to0;
    sm_token *tokens;
    int32_t n_tokens, cap_tokens;
    /* results of the last parallel decode */
    int32_t rc;
} member;

struct sm_session {
    sm_model *model;             /* model 0: tokenizer, vocabulary */
    member members[SM_MAX_MODELS];
    int32_t n_models;
    sm_pool *pool;
    sm_session_params params;
    int32_t n_vocab;
    int32_t n_ctx;

    sm_token *tokens;            /* everything in the KV cache, in order */
    int32_t n_tokens, cap_tokens;

    /* ring[pos % ring_cap] holds, for every model, the distribution that
     * predicts the token at context position pos; ring_pos says which pos
     * a slot holds. */
    float *ring;
    float *ring_unmapped;        /* per slot and model: mass with no token */
    int32_t *ring_pos;
    int32_t ring_cap;
    const float *logits;         /* model 0's distribution at n_tokens, or NULL */

    int64_t n_decoded_total;
    sm_sampler_work work;
    sm_candidate *top_view;      /* operators' top-n view                 */
    float *fused;                /* the fused distribution (several models) */
    char *text_buf;              /* aligned models: the context as text    */
    size_t text_cap;
    sm_token *align_buf;
    int32_t align_cap;
    /* Introspection (model 0; NULL when off: no eval callback at all) and
     * the stats of the last token that entered the context. */
    sm_introspector *intro;
    unsigned char *intro_last;
    float *intro_last_hidden;
    bool intro_has_last;
    sm_introspection intro_view;
    llama_batch branch_batch;    /* lookahead: one token per branch      */
    char error[512];
};

/* ------------------------------------------------------------------ */

static sm_status fail(sm_session *s, sm_status status, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static sm_status fail(sm_session *s, sm_status status, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(s->error, sizeof s->error, fmt, ap);
    va_end(ap);
    return status;
}

sm_session_params sm_session_default_params(void) {
    return (sm_session_params){.n_ctx = 2048, .n_batch = 512, .n_threads = 0, .max_rewind = 64};
}

static int32_t default_threads(void) {
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    return n > 0 ? (int32_t)n : 1;
}

static void piece_of(const struct llama_vocab *vocab, sm_token t, char *buf, int32_t size) {
    int32_t n = llama_token_to_piece(vocab, t, buf, size - 1, 0, true);
    buf[n < 0 ? 0 : n] = '\0';
}

bool sm_vocab_equal(const sm_model *a, const sm_model *b, char *why, size_t why_size) {
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
    struct llama_context_params cp = llama_context_default_params();
    /* Past its training context a model with learned positions (GPT-2)
     * reads outside its position table: never ask for more. */
    int32_t n_train = llama_model_n_ctx_train(model->lm);
    cp.n_ctx = n_train > 0 && (p->n_ctx == 0 || p->n_ctx > (uint32_t)n_train) ? (uint32_t)n_train : p->n_ctx;
    cp.n_batch = p->n_batch;
    cp.n_ubatch = p->n_batch;
    cp.n_seq_max = 1 + (uint32_t)p->max_branches;
    cp.kv_unified = p->max_branches > 0; /* branches share the cells: n_ctx is not split between them */
    if (intro) {
        cp.cb_eval = sm_introspector_cb;
        cp.cb_eval_user_data = intro;
        if (p->introspect_attention) cp.flash_attn_type = LLAMA_FLASH_ATTN_TYPE_DISABLED; /* else no kq_soft_max */
    }
    cp.n_threads = cp.n_threads_batch = n_threads;
    cp.no_perf = true;
    sm_llama_clear_log_error();
    mb->model = model;
    mb->n_threads = n_threads;
    mb->ctx = llama_init_from_model(model->lm, cp);
    if (!mb->ctx) {
        const char *why = sm_llama_last_log_error();
        sm_error_set(err, SM_ERR_CONTEXT, "cannot create a context of %u tokens for '%s'%s%s", p->n_ctx, model->path,
                     *why ? ": " : "", why);
        return false;
    }
    mb->mem = llama_get_memory(mb->ctx);
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
    bool aligned[SM_MAX_MODELS] = {false};
    for (int32_t m = 1; m < n_models; m++) {
        char why[256];
        if (sm_vocab_equal(models[0], models[m], why, sizeof why)) continue;
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
    int32_t total_threads = p.n_threads ? p.n_threads : default_threads();
    int32_t per_model = total_threads / n_models > 0 ? total_threads / n_models : 1;
    for (int32_t m = 0; m < n_models; m++) {
        if (!init_member(&s->members[m], models[m], &p, n_models == 1 ? total_threads : per_model,
                         m == 0 ? s->intro : NULL, err)) {
            sm_session_free(s);
            return NULL;
        }
        s->n_models++;
        s->members[m].aligned = aligned[m];
        if (aligned[m] && build_alignment(&s->members[m], models[0]) != 0) {
            sm_session_free(s);
            sm_error_set(err, SM_ERR_NO_MEMORY, "out of memory aligning vocabularies");
            return NULL;
        }
    }
    /* llama.cpp rounds small contexts up (to 256): never use positions a
     * model was not trained for, in any model of the session. */
    s->n_ctx = (int32_t)llama_n_ctx(s->members[0].ctx);
    for (int32_t m = 0; m < n_models; m++) {
        int32_t n_train = llama_model_n_ctx_train(models[m]->lm);
        int32_t n_ctx_m = (int32_t)llama_n_ctx(s->members[m].ctx);
        if (n_ctx_m < s->n_ctx) s->n_ctx = n_ctx_m;
        if (n_train > 0 && n_train < s->n_ctx) s->n_ctx = n_train;
    }
    s->params.n_batch = llama_n_batch(s->members[0].ctx); /* llama.cpp caps it at n_ctx */
    s->ring_cap = p.max_rewind + 2;
    size_t slots = (size_t)s->ring_cap * (size_t)n_models;
    s->ring = malloc(sizeof(float) * slots * (size_t)s->n_vocab);
    s->ring_unmapped = calloc(slots, sizeof(float));
    s->ring_pos = malloc(sizeof(int32_t) * (size_t)s->ring_cap);
    s->top_view = malloc(sizeof(sm_candidate) * 1000);
    s->fused = n_models > 1 ? malloc(sizeof(float) * (size_t)s->n_vocab) : NULL;
    s->pool = n_models > 1 ? sm_pool_new(n_models - 1) : NULL;
    if (!s->ring || !s->ring_unmapped || !s->ring_pos || !s->top_view || (n_models > 1 && (!s->fused || !s->pool)) ||
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
    for (int32_t m = 0; m < SM_MAX_MODELS; m++) {
        if (s->members[m].ctx) llama_free(s->members[m].ctx);
        free(s->members[m].map_to0);
        free(s->members[m].tokens);
    }
    free(s->tokens);
    free(s->ring);
    free(s->ring_unmapped);
    free(s->ring_pos);
    free(s->top_view);
    free(s->fused);
    free(s->text_buf);
    free(s->align_buf);
    sm_introspector_free(s->intro);
    free(s->intro_last);
    free(s->intro_last_hidden);
    if (s->params.max_branches > 0 && s->branch_batch.token) llama_batch_free(s->branch_batch);
    sm_sampler_work_free(&s->work);
    free(s);
}

const char *sm_session_last_error(const sm_session *s) { return s->error; }
int32_t sm_session_n_past(const sm_session *s) { return s->n_tokens; }
int32_t sm_session_n_ctx(const sm_session *s) { return s->n_ctx; }
int64_t sm_session_n_decoded_total(const sm_session *s) { return s->n_decoded_total; }
const sm_model *sm_session_model(const sm_session *s) { return s->model; }
const float *sm_session_logits(const sm_session *s) { return s->logits; }
int32_t sm_session_n_models(const sm_session *s) { return s->n_models; }

const sm_token *sm_session_tokens(const sm_session *s, int32_t *n_tokens) {
    if (n_tokens) *n_tokens = s->n_tokens;
    return s->tokens;
}

int32_t sm_session_model_kv_pos(const sm_session *s, int32_t m) {
    if (m < 0 || m >= s->n_models) return -1;
    return (int32_t)llama_memory_seq_pos_max(s->members[m].mem, 0) + 1;
}

int32_t sm_session_kv_pos(const sm_session *s) { return sm_session_model_kv_pos(s, 0); }

/* ------------------------------------------------------------------ */
/* Decoding and the distribution ring                                  */
/* ------------------------------------------------------------------ */

static int reserve(sm_token **buf, int32_t *cap, int32_t n) {
    if (n <= *cap) return 0;
    int32_t c = *cap ? *cap : 256;
    while (c < n) c *= 2;
    sm_token *t = realloc(*buf, sizeof *t * (size_t)c);
    if (!t) return -1;
    *buf = t;
    *cap = c;
    return 0;
}

static float *ring_slot(const sm_session *s, int32_t pos, int32_t m) {
    size_t slot = (size_t)(pos % s->ring_cap) * (size_t)s->n_models + (size_t)m;
    return s->ring + slot * (size_t)s->n_vocab;
}

/* Model m's distribution at the current end of the context. */
const float *sm_session_model_logits(const sm_session *s, int32_t m) {
    if (!s->logits || m < 0 || m >= s->n_models) return NULL;
    return ring_slot(s, s->n_tokens, m);
}

static float ring_unmapped(const sm_session *s, int32_t pos, int32_t m) {
    return s->ring_unmapped[(size_t)(pos % s->ring_cap) * (size_t)s->n_models + (size_t)m];
}

/* Stores every model's last logits as the distributions at n_tokens. */
static void capture_logits(sm_session *s) {
    for (int32_t m = 0; m < s->n_models; m++) {
        member *mb = &s->members[m];
        float *dst = ring_slot(s, s->n_tokens, m);
        const float *src = llama_get_logits_ith(mb->ctx, -1);
        float unmapped = 0.0f;
        if (mb->aligned) unmapped = sm_map_distribution(src, mb->model->n_vocab, mb->map_to0, dst, s->n_vocab);
        else memcpy(dst, src, sizeof(float) * (size_t)s->n_vocab);
        s->ring_unmapped[(size_t)(s->n_tokens % s->ring_cap) * (size_t)s->n_models + (size_t)m] = unmapped;
    }
    s->ring_pos[s->n_tokens % s->ring_cap] = s->n_tokens;
    s->logits = ring_slot(s, s->n_tokens, 0);
}

typedef struct decode_job {
    sm_session *s;
    const sm_token *tokens;
    int32_t n;
} decode_job;

static void decode_member(void *arg, int32_t m) {
    decode_job *job = arg;
    member *mb = &job->s->members[m];
    if (mb->aligned) return;
    mb->rc = llama_decode(mb->ctx, llama_batch_get_one((sm_token *)job->tokens, job->n));
}

/*
 * A model with another vocabulary catches up with the text: the context's
 * text is tokenized with its tokenizer, its cache is cut back to the
 * longest common prefix and the rest is decoded.
 */
static sm_status sync_aligned(sm_session *s, member *mb) {
    size_t need = 64;
    for (;;) {
        if (need > s->text_cap) {
            char *t = realloc(s->text_buf, need);
            if (!t) return fail(s, SM_ERR_NO_MEMORY, "out of memory");
            s->text_buf = t;
            s->text_cap = need;
        }
        int32_t n = llama_detokenize(s->model->vocab, s->tokens, s->n_tokens, s->text_buf, (int32_t)s->text_cap - 1,
                                     true, false);
        if (n >= 0) {
            s->text_buf[n] = '\0';
            break;
        }
        need = (size_t)(-n) + 1;
    }
    int32_t n = sm_tokenize(mb->model, s->text_buf, NULL, 0, true, false);
    n = n < 0 ? -n : n;
    if (reserve(&s->align_buf, &s->align_cap, n + 1) != 0) return fail(s, SM_ERR_NO_MEMORY, "out of memory");
    n = sm_tokenize(mb->model, s->text_buf, s->align_buf, n + 1, true, false);
    if (n <= 0) return fail(s, SM_ERR_DECODE, "'%s' turned the text into no tokens", mb->model->path);
    if (n > s->n_ctx) return fail(s, SM_ERR_PROMPT_TOO_LONG, "the text is %d tokens for '%s', more than the context %d", n, mb->model->path, s->n_ctx);
    int32_t common = 0;
    while (common < n && common < mb->n_tokens && mb->tokens[common] == s->align_buf[common]) common++;
    if (common == n && common == mb->n_tokens) return SM_OK; /* its logits are current */
    if (common == n) common--; /* decode the last token again for its distribution */
    if (!llama_memory_seq_rm(mb->mem, 0, common, -1))
        return fail(s, SM_ERR_STATE, "'%s' cannot remove part of its cache", mb->model->path);
    mb->n_tokens = common;
    if (reserve(&mb->tokens, &mb->cap_tokens, n) != 0) return fail(s, SM_ERR_NO_MEMORY, "out of memory");
    for (int32_t at = common; at < n;) {
        int32_t chunk = n - at < (int32_t)s->params.n_batch ? n - at : (int32_t)s->params.n_batch;
        memcpy(mb->tokens + at, s->align_buf + at, sizeof(sm_token) * (size_t)chunk);
        int32_t rc = llama_decode(mb->ctx, llama_batch_get_one(mb->tokens + at, chunk));
        if (rc != 0) {
            llama_memory_seq_rm(mb->mem, 0, at, -1);
            return fail(s, SM_ERR_DECODE, "llama_decode failed (code %d) in '%s'", rc, mb->model->path);
        }
        at += chunk;
        mb->n_tokens = at;
    }
    return SM_OK;
}

/* Keeps the stats of the token that last entered the context. */
static void remember_introspection(sm_session *s, const void *record, const float *hidden) {
    memcpy(s->intro_last, record, sm_introspector_record_size(s->intro));
    if (s->intro_last_hidden && hidden)
        memcpy(s->intro_last_hidden, hidden, sizeof(float) * sm_introspector_hidden_floats(s->intro));
    sm_introspector_view(s->intro, s->intro_last, s->intro_last_hidden, &s->intro_view);
    s->intro_has_last = true;
}

/* Decodes tokens in batches in every model and appends them. A failure in
 * any model undoes the batch in all of them: none is left behind. */
static sm_status decode_append(sm_session *s, const sm_token *toks, int32_t n) {
    if (n <= 0) return SM_OK;
    if (s->n_tokens + n > s->n_ctx)
        return fail(s, SM_ERR_PROMPT_TOO_LONG, "%d tokens do not fit: %d of %d context tokens are used", n,
                    s->n_tokens, s->n_ctx);
    if (reserve(&s->tokens, &s->cap_tokens, s->n_tokens + n) != 0) return fail(s, SM_ERR_NO_MEMORY, "out of memory");
    for (int32_t done = 0; done < n;) {
        int32_t chunk = n - done < (int32_t)s->params.n_batch ? n - done : (int32_t)s->params.n_batch;
        memcpy(s->tokens + s->n_tokens, toks + done, sizeof(sm_token) * (size_t)chunk);
        decode_job job = {s, s->tokens + s->n_tokens, chunk};
        if (s->intro) sm_introspector_expect_rows(s->intro, 1);
        sm_pool_run(s->pool, decode_member, &job, s->n_models);
        for (int32_t m = 0; m < s->n_models; m++) {
            if (s->members[m].rc == 0) continue;
            int32_t rc = s->members[m].rc;
            for (int32_t k = 0; k < s->n_models; k++) {
                if (!s->members[k].aligned) llama_memory_seq_rm(s->members[k].mem, 0, s->n_tokens, -1);
                s->members[k].rc = 0;
            }
            s->logits = NULL;
            return fail(s, SM_ERR_DECODE, "llama_decode failed (code %d) in '%s' at position %d", rc,
                        s->members[m].model->path, s->n_tokens);
        }
        s->n_tokens += chunk;
        s->n_decoded_total += chunk;
        done += chunk;
    }
    for (int32_t m = 1; m < s->n_models; m++) {
        if (!s->members[m].aligned) continue;
        sm_status st = sync_aligned(s, &s->members[m]);
        if (st != SM_OK) {
            s->n_tokens -= n;
            for (int32_t k = 0; k < s->n_models; k++)
                if (!s->members[k].aligned) llama_memory_seq_rm(s->members[k].mem, 0, s->n_tokens, -1);
            s->logits = NULL;
            return st;
        }
    }
    capture_logits(s);
    if (s->intro) remember_introspection(s, sm_introspector_record(s->intro, 0), sm_introspector_hidden(s->intro, 0));
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
        if (!s->members[m].aligned && !llama_memory_seq_rm(s->members[m].mem, 0, pos, -1)) return false;
    return true;
}

sm_status sm_session_truncate(sm_session *s, int32_t n_keep) {
    if (n_keep < 0 || n_keep > s->n_tokens)
        return fail(s, SM_ERR_INVALID_ARGUMENT, "cannot keep %d tokens of %d", n_keep, s->n_tokens);
    if (n_keep == s->n_tokens) return SM_OK;
    if (!remove_from(s, n_keep))
        return fail(s, SM_ERR_STATE, "this model's memory cannot remove a partial sequence (recurrent model?)");
    s->n_tokens = n_keep;
    forget_ring_after(s, n_keep);
    if (n_keep > 0 && s->ring_pos[n_keep % s->ring_cap] == n_keep) {
        s->logits = ring_slot(s, n_keep, 0);
        return SM_OK;
    }
    s->logits = NULL;
    if (n_keep == 0) return SM_OK;
    /* The distribution here was never kept: decode the last token again. */
    if (!remove_from(s, n_keep - 1)) return fail(s, SM_ERR_STATE, "cannot remove position %d from the cache", n_keep - 1);
    s->n_tokens = n_keep - 1;
    sm_token last = s->tokens[n_keep - 1];
    return decode_append(s, &last, 1);
}

sm_status sm_session_rewind(sm_session *s, int32_t n) {
    if (n < 0 || n > s->n_tokens)
        return fail(s, SM_ERR_INVALID_ARGUMENT, "cannot rewind %d tokens of %d", n, s->n_tokens);
    return sm_session_truncate(s, s->n_tokens - n);
}

sm_status sm_session_clear(sm_session *s) {
    for (int32_t m = 0; m < s->n_models; m++) {
        llama_memory_clear(s->members[m].mem, true);
        s->members[m].n_tokens = 0;
    }
    s->n_tokens = 0;
    s->logits = NULL;
    s->intro_has_last = false;
    forget_ring_after(s, -1);
    return SM_OK;
}

sm_status sm_session_feed_tokens(sm_session *s, const sm_token *tokens, int32_t n) {
    if (n < 0 || (n > 0 && !tokens)) return fail(s, SM_ERR_INVALID_ARGUMENT, "invalid token array");
    for (int32_t i = 0; i < n; i++)
        if (tokens[i] < 0 || tokens[i] >= s->n_vocab)
            return fail(s, SM_ERR_INVALID_ARGUMENT, "token %d at index %d is outside the vocabulary (%d)",
                        tokens[i], i, s->n_vocab);
    return decode_append(s, tokens, n);
}

/* Tokenizes text for this session, BOS only at the very start. */
static sm_status tokenize(sm_session *s, const char *text, bool add_bos, sm_token **out, int32_t *n_out) {
    bool want_bos = add_bos && s->n_tokens == 0;
    int32_t n = sm_tokenize(s->model, text, NULL, 0, want_bos, true);
    if (n == INT32_MIN) return fail(s, SM_ERR_INVALID_ARGUMENT, "text is too long to tokenize");
    n = n < 0 ? -n : n;
    sm_token *t = malloc(sizeof *t * (size_t)(n > 0 ? n : 1));
    if (!t) return fail(s, SM_ERR_NO_MEMORY, "out of memory");
    *n_out = sm_tokenize(s->model, text, t, n, want_bos, true);
    *out = t;
    return SM_OK;
}

sm_status sm_session_feed_text(sm_session *s, const char *text, bool add_bos) {
    sm_token *toks;
    int32_t n;
    sm_status st = tokenize(s, text, add_bos, &toks, &n);
    if (st != SM_OK) return st;
    st = decode_append(s, toks, n);
    free(toks);
    return st;
}

/* ------------------------------------------------------------------ */
/* One generation                                                      */
/* ------------------------------------------------------------------ */

/* The lookahead branch chosen for commitment: per branch and step its
 * token, the distribution after it and its stats; stride = steps kept per
 * branch. */
typedef struct branch_plan {
    sm_token *tokens;
    float *logits;
    unsigned char *records;
    float *hidden;
    int32_t stride, depth;
    int32_t chosen;                 /* the branch being committed; -1 = none  */
    int32_t next;                   /* its next step to commit                */
} branch_plan;

typedef struct generation {
    sm_session *s;
    const sm_gen_params *gp;
    sm_result *res;
    int32_t start;                  /* context position of generated token 0 */
    position_record *rec;
    int32_t cap_rec;
    float *confidences;             /* p_chosen per generated position        */
    sm_token *gen_tokens;           /* token per generated position           */
    sm_fusion_info *fusion;         /* agreement per generated position       */
    const float *dist;              /* the distribution sampled at this step  */
    sm_model_dist dists[SM_MAX_MODELS];
    bool participating[SM_MAX_MODELS];
    sm_policy_state policy;
    uint64_t rng;
    sm_text text;
    int32_t n_events, cap_events;
    sm_stop_reason stop;
    bool cancelled;
    /* Introspection and intervention (docs/INTROSPECTION.md). */
    unsigned char *intro_rec;       /* stats record per generated position    */
    branch_plan plan;               /* the lookahead branch being committed   */
    sm_lookahead_info la_info;
    /* Injected tokens sit between generated ones in the context, so the
     * generated index is the context position minus start and n_injected;
     * rewinds never remove generated tokens below floor. */
    int32_t n_injected;
    int32_t floor;
    size_t text_floor;              /* text length after the last injection   */
    size_t marker_from;             /* where a tool marker may begin          */
    const char *inject_next;        /* what is left of inject_text            */
    int32_t next_inject_at;
    int32_t n_chunks;
} generation;

static int32_t generated(const generation *g) { return g->s->n_tokens - g->start - g->n_injected; }

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
static void emit(generation *g, const sm_event *e) {
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

static sm_event base_event(const generation *g, sm_event_type type, int32_t index) {
    return (sm_event){
        .type = type,
        .token_index = index,
        .description = "",
        .source = "",
        .temperature_before = g->policy.temperature,
        .temperature_after = g->policy.temperature,
        .repeat_penalty_before = g->policy.repeat_penalty,
        .repeat_penalty_after = g->policy.repeat_penalty,
        .token = -1,
    };
}

static int add_ban(position_record *r, sm_token t) {
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

/* The distribution generated token i is sampled from: the model's own, or
 * the fusion of every model's at this position. */
static void prepare_distribution(generation *g, int32_t i) {
    sm_session *s = g->s;
    if (s->n_models == 1) {
        g->dist = s->logits;
        return;
    }
    for (int32_t m = 0; m < s->n_models; m++)
        sm_model_dist_summarize(ring_slot(s, s->n_tokens, m), s->n_vocab, &g->dists[m]);
    sm_fuse(&g->gp->fusion, g->dists, s->n_models, s->n_vocab, i, s->fused, g->participating);
    g->dist = s->fused;
}

/* ------------------------------------------------------------------ */
/* Introspection and intervention inside the loop                      */
/* ------------------------------------------------------------------ */

static const char DEFAULT_TOOL_MARKER[] = "[INTROSPECT:";
static const char DEFAULT_TOOL_MARKER_END[] = "]";

static bool plan_active(const generation *g) { return g->plan.chosen >= 0; }

static size_t plan_at(const branch_plan *pl, int32_t branch, int32_t step) {
    return (size_t)branch * (size_t)pl->stride + (size_t)step;
}

static const float *plan_logits(const generation *g, int32_t branch, int32_t step) {
    return g->plan.logits + plan_at(&g->plan, branch, step) * (size_t)g->s->n_vocab;
}

/* Drops the branch being committed from the cache; the cells sequence 0
 * has taken over from it stay. */
static void abandon_plan(generation *g) {
    if (!plan_active(g)) return;
    llama_memory_seq_rm(g->s->members[0].mem, g->plan.chosen + 1, -1, -1);
    g->plan.chosen = -1;
}

static sm_token planned_token(const generation *g) {
    const branch_plan *pl = &g->plan;
    return plan_active(g) ? pl->tokens[plan_at(pl, pl->chosen, pl->next)] : -1;
}

static int open_plan(generation *g) {
    const sm_lookahead_params *la = &g->gp->lookahead;
    sm_session *s = g->s;
    g->plan.chosen = -1;
    if (la->k == 0) return 0;
    size_t n = (size_t)la->k * (size_t)la->depth;
    g->plan.stride = la->depth;
    g->plan.tokens = malloc(sizeof(sm_token) * n);
    g->plan.logits = malloc(sizeof(float) * n * (size_t)s->n_vocab);
    if (!g->plan.tokens || !g->plan.logits) return -1;
    if (!s->intro) return 0;
    g->plan.records = malloc(sm_introspector_record_size(s->intro) * n);
    size_t hidden_floats = sm_introspector_hidden_floats(s->intro);
    if (hidden_floats) g->plan.hidden = malloc(sizeof(float) * hidden_floats * n);
    return g->plan.records && (!hidden_floats || g->plan.hidden) ? 0 : -1;
}

static void free_plan(branch_plan *pl) {
    free(pl->tokens);
    free(pl->logits);
    free(pl->records);
    free(pl->hidden);
}

/* The temperature token i is sampled with: the policy's, or for this token
 * alone what entropy steering makes of it. */
static float token_temperature(generation *g, int32_t i) {
    const sm_policy_params *pp = &g->gp->policy;
    float t = g->policy.temperature;
    if (pp->entropy_mode == 0) return t;
    sm_signals sig;
    sm_signals_compute(g->dist, g->s->n_vocab, -1, &sig, NULL);
    sm_policy_mod mod;
    if (!sm_policy_entropy_steer(pp, sig.entropy, sig.varentropy, &t, &mod)) return t;
    sm_event e = base_event(g, SM_EVENT_MODIFICATION, i);
    e.mod = mod.type;
    e.confidence = sig.p_top1;
    e.description = mod.description;
    e.source = "entropy";
    e.temperature_before = mod.t_before;
    e.temperature_after = mod.t_after;
    emit(g, &e);
    return t;
}

/* One batched decode: tokens[b] at position pos in sequence b + 1, every
 * row an output; keeps each row's distribution and stats as step `step`
 * of branch b. Returns llama_decode's code. */
static int decode_branches(generation *g, const sm_token *tokens, int32_t n, int32_t pos, int32_t step) {
    sm_session *s = g->s;
    branch_plan *pl = &g->plan;
    llama_batch *b = &s->branch_batch;
    b->n_tokens = n;
    for (int32_t j = 0; j < n; j++) {
        b->token[j] = tokens[j];
        b->pos[j] = pos;
        b->n_seq_id[j] = 1;
        b->seq_id[j][0] = j + 1;
        b->logits[j] = 1;
    }
    if (s->intro) sm_introspector_expect_rows(s->intro, n);
    int rc = llama_decode(s->members[0].ctx, *b);
    if (rc != 0) return rc;
    s->n_decoded_total += n;
    g->res->n_decoded += n;
    for (int32_t j = 0; j < n; j++) {
        size_t at = plan_at(pl, j, step);
        pl->tokens[at] = tokens[j];
        memcpy(pl->logits + at * (size_t)s->n_vocab, llama_get_logits_ith(s->members[0].ctx, j),
               sizeof(float) * (size_t)s->n_vocab);
        if (!s->intro) continue;
        size_t rs = sm_introspector_record_size(s->intro), hf = sm_introspector_hidden_floats(s->intro);
        memcpy(pl->records + at * rs, sm_introspector_record(s->intro, j), rs);
        if (hf) memcpy(pl->hidden + at * hf, sm_introspector_hidden(s->intro, j), sizeof(float) * hf);
    }
    return 0;
}

static void drop_branches(sm_session *s, int32_t n, int32_t keep) {
    for (int32_t b = 0; b < n; b++)
        if (b != keep) llama_memory_seq_rm(s->members[0].mem, b + 1, -1, -1);
}

/* The k most probable tokens at generated position i not banned there. */
static int32_t branch_candidates(generation *g, int32_t i, const sm_dist_stats *stats, sm_token *out, int32_t k) {
    sm_session *s = g->s;
    const position_record *r = &g->rec[i];
    int32_t want = k + r->n_bans < 1000 ? k + r->n_bans : 1000;
    int32_t n_top = sm_top_candidates(s->logits, s->n_vocab, stats, want, s->top_view);
    int32_t n = 0;
    for (int32_t c = 0; c < n_top && n < k; c++) {
        bool banned = false;
        for (int32_t b = 0; b < r->n_bans && !banned; b++) banned = r->bans[b] == s->top_view[c].token;
        if (!banned) out[n++] = s->top_view[c].token;
    }
    return n;
}

static void emit_lookahead(generation *g, int32_t i, const sm_lookahead_info *info) {
    char desc[512];
    size_t len = 0;
    int n = snprintf(desc, sizeof desc, "entropy %.3f > %.2f: %d branches of %d tokens, scores", info->entropy,
                     g->gp->lookahead.entropy, info->n_branches, info->depth);
    len = n > 0 ? (size_t)n : 0;
    for (int32_t b = 0; b < info->n_branches && len < sizeof desc; b++) {
        char piece[64];
        int32_t pl = sm_token_piece(g->s->model->vocab, info->first[b], piece, (int32_t)sizeof piece - 1);
        piece[pl < 0 ? 0 : pl] = '\0';
        n = snprintf(desc + len, sizeof desc - len, " '%s' %.3f%s", piece, info->score[b],
                     b == info->chosen ? " (chosen)" : "");
        if (n > 0) len += (size_t)n;
    }
    sm_event e = base_event(g, SM_EVENT_MODIFICATION, i);
    e.mod = SM_MOD_LOOKAHEAD;
    e.confidence = info->score[info->chosen];
    e.description = desc;
    e.source = "lookahead";
    e.lookahead = info;
    emit(g, &e);
}

/*
 * At an uncertain position: the top-k candidates become sequences 1..k of
 * the cache (sharing sequence 0's cells), each continued greedily for
 * depth tokens, one batched decode per step. The best branch is planned:
 * its tokens then go through the normal loop one by one, taking over the
 * branch's cells instead of being decoded. Nothing happens where the
 * entropy is low or the cache has no room for the branches.
 */
static sm_status run_lookahead(generation *g, int32_t i) {
    sm_session *s = g->s;
    const sm_lookahead_params *la = &g->gp->lookahead;
    sm_signals sig;
    sm_dist_stats stats;
    sm_signals_compute(s->logits, s->n_vocab, -1, &sig, &stats);
    if (!(sig.entropy > la->entropy)) return SM_OK;
    int32_t depth = la->depth;
    if (g->gp->n_predict >= 0 && g->gp->n_predict - i < depth) depth = g->gp->n_predict - i;
    if (depth < 1 || s->n_tokens + la->k * depth > s->n_ctx) return SM_OK;
    sm_token first[SM_MAX_BRANCHES], next[SM_MAX_BRANCHES];
    int32_t n = branch_candidates(g, i, &stats, first, la->k);
    if (n < 2) return SM_OK;
    double logprob[SM_MAX_BRANCHES], margin[SM_MAX_BRANCHES];
    for (int32_t b = 0; b < n; b++) {
        llama_memory_seq_cp(s->members[0].mem, 0, b + 1, -1, -1);
        logprob[b] = s->logits[first[b]] - stats.log_z;
        margin[b] = 0.0;
        next[b] = first[b];
    }
    for (int32_t step = 0; step < depth; step++) {
        int rc = decode_branches(g, next, n, s->n_tokens + step, step);
        if (rc != 0) {
            drop_branches(s, n, -1);
            if (rc == 1) return SM_OK; /* no room in the cache: sample as usual */
            return fail(s, SM_ERR_DECODE, "llama_decode failed (code %d) while branching at position %d", rc, i);
        }
        for (int32_t b = 0; b < n; b++) {
            sm_signals bs;
            sm_signals_compute(plan_logits(g, b, step), s->n_vocab, -1, &bs, NULL);
            margin[b] += bs.p_top1 - bs.p_top2;
            if (step + 1 == depth) continue;
            next[b] = bs.top1_token; /* greedy inside the branch */
            logprob[b] += log(bs.p_top1);
        }
    }
    sm_lookahead_info *info = &g->la_info;
    *info = (sm_lookahead_info){.n_branches = n, .depth = depth, .entropy = sig.entropy};
    for (int32_t b = 0; b < n; b++) {
        info->first[b] = first[b];
        info->score[b] = (float)((la->score == SM_LOOKAHEAD_MARGIN ? margin[b] : logprob[b]) / depth);
        if (info->score[b] > info->score[info->chosen]) info->chosen = b; /* ties: the more probable first token */
    }
    drop_branches(s, n, info->chosen);
    g->plan.chosen = info->chosen;
    g->plan.next = 0;
    g->plan.depth = depth;
    g->res->n_lookaheads++;
    emit_lookahead(g, i, info);
    return SM_OK;
}

/* A token a lookahead already decoded in branch sequence `from` enters
 * sequence 0 at the end of the context, with the distribution the branch
 * computed after it. */
static sm_status append_predecoded(sm_session *s, sm_token t, llama_seq_id from, const float *next) {
    if (s->n_tokens + 1 > s->n_ctx) return fail(s, SM_ERR_PROMPT_TOO_LONG, "no room left in the context");
    if (reserve(&s->tokens, &s->cap_tokens, s->n_tokens + 1) != 0) return fail(s, SM_ERR_NO_MEMORY, "out of memory");
    llama_memory_seq_cp(s->members[0].mem, from, 0, s->n_tokens, s->n_tokens + 1);
    s->tokens[s->n_tokens++] = t;
    float *dst = ring_slot(s, s->n_tokens, 0);
    memcpy(dst, next, sizeof(float) * (size_t)s->n_vocab);
    s->ring_unmapped[(size_t)(s->n_tokens % s->ring_cap) * (size_t)s->n_models] = 0.0f;
    s->ring_pos[s->n_tokens % s->ring_cap] = s->n_tokens;
    s->logits = dst;
    return SM_OK;
}

/* Generated token i enters the context: decoded, or taken over from the
 * lookahead branch that decoded it. Its stats are kept per position. */
static sm_status append_token(generation *g, int32_t i, sm_token t) {
    sm_session *s = g->s;
    branch_plan *pl = &g->plan;
    if (plan_active(g)) {
        size_t at = plan_at(pl, pl->chosen, pl->next);
        sm_status st = append_predecoded(s, t, pl->chosen + 1, pl->logits + at * (size_t)s->n_vocab);
        if (st != SM_OK) return st;
        if (s->intro) {
            size_t hf = sm_introspector_hidden_floats(s->intro);
            remember_introspection(s, pl->records + at * sm_introspector_record_size(s->intro),
                                   hf ? pl->hidden + at * hf : NULL);
        }
        if (++pl->next == pl->depth) abandon_plan(g); /* all of it is in sequence 0 now */
    } else {
        sm_status st = decode_append(s, &t, 1);
        if (st != SM_OK) return st;
        g->res->n_decoded++;
    }
    if (s->intro) {
        size_t rs = sm_introspector_record_size(s->intro);
        memcpy(g->intro_rec + rs * (size_t)i, s->intro_last, rs);
    }
    return SM_OK;
}

/* Removes generated token i again after it was decoded (the ring still
 * holds the distribution it was sampled from: nothing is re-decoded), bans
 * it there, and restores what was true before it was sampled. */
static sm_status reject_decoded(generation *g, int32_t i, const sm_safety_rule *rule, const char *why) {
    sm_session *s = g->s;
    position_record *r = &g->rec[i];
    bool stop = rule->action == SM_SAFETY_STOP || r->n_safety_here >= g->gp->safety_max_retries;
    float t_before = g->policy.temperature, rp_before = g->policy.repeat_penalty;
    abandon_plan(g);
    sm_status st = sm_session_truncate(s, s->n_tokens - 1);
    if (st != SM_OK) return st;
    sm_text_pop(&g->text, 1);
    g->policy.temperature = r->temperature;
    g->policy.repeat_penalty = r->repeat_penalty;
    g->policy.rng = r->policy_rng;
    g->rng = r->sample_rng;
    r->n_safety_here++;
    if (add_ban(r, r->token) != 0) return fail(s, SM_ERR_NO_MEMORY, "out of memory");
    for (int32_t o = 0; o < g->gp->n_operators; o++) {
        sm_operator *op = g->gp->operators[o];
        if (op->vt->on_backtrack) op->vt->on_backtrack(op->state, 1);
    }
    g->res->n_tokens_removed++;
    g->res->n_safety_triggers++;
    char desc[256];
    if (stop) snprintf(desc, sizeof desc, "%s: token %d removed, stopping", why, r->token);
    else snprintf(desc, sizeof desc, "%s: token %d removed and banned here, sampling again (%d of %d)", why, r->token,
                  r->n_safety_here, g->gp->safety_max_retries);
    sm_event e = base_event(g, SM_EVENT_BACKTRACK, i);
    e.mod = SM_MOD_SAFETY;
    e.confidence = r->signals.p_chosen;
    e.description = desc;
    e.source = "safety";
    e.temperature_before = t_before;
    e.repeat_penalty_before = rp_before;
    e.n_removed = 1;
    emit(g, &e);
    if (stop) g->stop = SM_STOP_SAFETY;
    return SM_OK;
}

/* The safety rules, on the stats of generated token i just decoded. */
static sm_status check_safety(generation *g, int32_t i, bool *rejected) {
    *rejected = false;
    const sm_gen_params *gp = g->gp;
    sm_session *s = g->s;
    if (gp->n_safety_rules == 0 || !s->intro) return SM_OK;
    size_t rs = sm_introspector_record_size(s->intro);
    float value;
    char why[160];
    int32_t rule = sm_safety_check(s->intro, gp->safety_rules, gp->n_safety_rules, g->intro_rec, i,
                                   g->intro_rec + rs * (size_t)i, &value, why, sizeof why);
    if (rule < 0) return SM_OK;
    *rejected = true;
    return reject_decoded(g, i, &gp->safety_rules[rule], why);
}

/* Appends text to the context as injected tokens: part of the context and
 * of the output text, never generated tokens, and never rewound (rewinds
 * stop at the last injection). */
static sm_status inject(generation *g, const char *text, size_t len, sm_mod_type mod, const char *what) {
    sm_session *s = g->s;
    abandon_plan(g);
    char *copy = strndup(text, len);
    if (!copy) return fail(s, SM_ERR_NO_MEMORY, "out of memory");
    int32_t n = sm_tokenize(s->model, copy, NULL, 0, false, false);
    n = n < 0 ? -n : n;
    sm_token *toks = malloc(sizeof(sm_token) * (size_t)(n > 0 ? n : 1));
    if (!toks) {
        free(copy);
        return fail(s, SM_ERR_NO_MEMORY, "out of memory");
    }
    if (n > 0) n = sm_tokenize(s->model, copy, toks, n, false, false);
    sm_status st = SM_OK;
    if (n > 0 && s->n_tokens + n >= s->n_ctx) g->stop = SM_STOP_CONTEXT_FULL;
    else if (n > 0) st = decode_append(s, toks, n);
    free(toks);
    if (st == SM_OK && n > 0 && g->stop == SM_STOP_NONE) {
        g->n_injected += n;
        g->floor = generated(g);
        g->res->n_injected_tokens += n;
        g->res->n_decoded += n;
        if (sm_text_push(&g->text, copy, len) != 0) st = fail(s, SM_ERR_NO_MEMORY, "out of memory");
        g->text_floor = g->marker_from = g->text.len;
        char desc[200];
        snprintf(desc, sizeof desc, "%s: %d tokens injected", what, n);
        sm_event e = base_event(g, SM_EVENT_MODIFICATION, generated(g));
        e.mod = mod;
        e.description = desc;
        e.source = mod == SM_MOD_TOOL ? "tool" : "inject";
        e.piece = copy;
        emit(g, &e);
    }
    free(copy);
    return st;
}

/* Where the next chunk of inject_text ends: after leading white space and
 * a sentence ('.', '!' or '?' before white space or the end), or after a
 * newline. */
static size_t chunk_length(const char *text) {
    size_t i = 0;
    while (text[i] && isspace((unsigned char)text[i])) i++;
    for (; text[i]; i++) {
        if (text[i] == '\n') return i + 1;
        bool end = text[i + 1] == '\0' || isspace((unsigned char)text[i + 1]);
        if ((text[i] == '.' || text[i] == '!' || text[i] == '?') && end) return i + 1;
    }
    return i;
}

static bool injection_due(const generation *g) {
    return g->inject_next && *g->inject_next && generated(g) >= g->next_inject_at && !plan_active(g);
}

static sm_status inject_next_chunk(generation *g) {
    const char *chunk = g->inject_next;
    size_t len = chunk_length(chunk);
    g->inject_next += len;
    g->n_chunks++;
    char what[96];
    snprintf(what, sizeof what, "chunk %d of inject_text after %d generated tokens", g->n_chunks, generated(g));
    sm_status st = inject(g, chunk, len, SM_MOD_INJECT, what);
    g->next_inject_at = generated(g) + g->gp->inject_every;
    return st;
}

/* The first occurrence of needle in [hay, hay + n), or NULL. */
static const char *find_bytes(const char *hay, size_t n, const char *needle, size_t needle_len) {
    for (size_t at = 0; at + needle_len <= n; at++)
        if (hay[at] == needle[0] && memcmp(hay + at, needle, needle_len) == 0) return hay + at;
    return NULL;
}

static char *trimmed_copy(const char *from, const char *to) {
    while (from < to && isspace((unsigned char)*from)) from++;
    while (to > from && isspace((unsigned char)to[-1])) to--;
    return strndup(from, (size_t)(to - from));
}

/* After generated token i was committed with `piece`: when the output
 * since the last injection holds a complete tool marker, the tool runs
 * and its text is injected. */
static sm_status run_tool_if_marked(generation *g, int32_t i, const char *piece) {
    const sm_gen_params *gp = g->gp;
    const char *open = gp->tool_marker ? gp->tool_marker : DEFAULT_TOOL_MARKER;
    const char *close = gp->tool_marker_end ? gp->tool_marker_end : DEFAULT_TOOL_MARKER_END;
    size_t open_len = strlen(open), close_len = strlen(close);
    if (!strchr(piece, close[close_len - 1])) return SM_OK; /* a marker can only have ended with this token */
    const char *text = g->text.bytes;
    size_t len = g->text.len, from = g->marker_from <= len ? g->marker_from : g->text_floor;
    const char *o = find_bytes(text + from, len - from, open, open_len);
    if (!o) return SM_OK;
    const char *args = o + open_len;
    const char *c = find_bytes(args, (size_t)(text + len - args), close, close_len);
    if (!c) return SM_OK;
    char *arg_text = trimmed_copy(args, c);
    if (!arg_text) return fail(g->s, SM_ERR_NO_MEMORY, "out of memory");
    g->marker_from = (size_t)(c - text) + close_len;
    sm_tool_context ctx = {
        .args = arg_text,
        .token_index = i + 1,
        .introspection = sm_session_introspection(g->s),
        .text = text,
        .text_len = len,
    };
    char *out = (gp->tool ? gp->tool : sm_tool_introspect)(&ctx, gp->tool_user_data);
    g->res->n_tool_calls++;
    char what[120];
    snprintf(what, sizeof what, "tool call \"%.80s\"", arg_text);
    sm_status st = SM_OK;
    if (out && *out) {
        st = inject(g, out, strlen(out), SM_MOD_TOOL, what);
    } else {
        char desc[160];
        snprintf(desc, sizeof desc, "%s: the tool returned nothing", what);
        sm_event e = base_event(g, SM_EVENT_MODIFICATION, i + 1);
        e.mod = SM_MOD_TOOL;
        e.description = desc;
        e.source = "tool";
        e.piece = "";
        emit(g, &e);
    }
    free(out);
    free(arg_text);
    return st;
}

/* What needs the session: lookahead room, observed layers for the rules. */
static bool intervention_fits(const sm_session *s, const sm_gen_params *gp, char *msg, size_t size) {
    if (gp->lookahead.k > s->params.max_branches) {
        snprintf(msg, size, "lookahead with %d branches needs a session made with max_branches >= %d (this one has %d)",
                 gp->lookahead.k, gp->lookahead.k, s->params.max_branches);
        return false;
    }
    return gp->n_safety_rules == 0 || sm_safety_rules_check_layers(s->intro, gp->safety_rules, gp->n_safety_rules, msg, size);
}

/* Samples the candidate at generated position i from the current
 * distribution, recording what a rewind to i must restore. */
static sm_token sample_candidate(generation *g, int32_t i) {
    sm_session *s = g->s;
    prepare_distribution(g, i);
    position_record *r = &g->rec[i];
    r->temperature = g->policy.temperature;
    r->repeat_penalty = g->policy.repeat_penalty;
    r->sample_rng = g->rng;
    r->policy_rng = g->policy.rng;

    int32_t last_n = g->gp->sampling.repeat_last_n;
    int32_t n_recent = s->n_tokens < last_n ? s->n_tokens : last_n;
    sm_sample_input in = {
        .logits = g->dist,
        .n_vocab = s->n_vocab,
        .recent = s->tokens + s->n_tokens - n_recent,
        .n_recent = n_recent,
        .bans = r->bans,
        .n_bans = r->n_bans,
        .temperature = g->policy.temperature,
        .repeat_penalty = g->policy.repeat_penalty,
        .top_k = g->gp->sampling.top_k,
        .top_p = g->gp->sampling.top_p,
        .min_p = g->gp->sampling.min_p,
        .history = s->tokens,
        .n_history = s->n_tokens,
        .dry_multiplier = g->gp->sampling.dry_multiplier,
        .dry_base = g->gp->sampling.dry_base,
        .dry_allowed_length = g->gp->sampling.dry_allowed_length,
        .dry_penalty_last_n = g->gp->sampling.dry_penalty_last_n,
    };
    float p_sampled = 1.0f; /* a token a lookahead chose was not drawn */
    sm_token t = planned_token(g);
    if (t < 0) {
        in.temperature = token_temperature(g, i);
        t = sm_sample(&in, &g->rng, &s->work, &p_sampled);
    }
    if (t < 0) return t;
    sm_dist_stats stats;
    sm_signals_compute(g->dist, s->n_vocab, t, &r->signals, &stats);
    r->signals.p_sampled = p_sampled;
    r->log_z = stats.log_z;
    r->token = t;
    g->confidences[i] = r->signals.p_chosen;
    g->gen_tokens[i] = t;
    return t;
}

/* Asks every operator about the candidate; returns tokens to remove and
 * which operator decided. */
static int32_t ask_operators(generation *g, int32_t i, const char *piece, sm_operator **who) {
    const sm_gen_params *gp = g->gp;
    *who = NULL;
    if (gp->n_operators == 0) return 0;
    sm_session *s = g->s;
    position_record *r = &g->rec[i];
    sm_dist_stats stats = {.log_z = r->log_z};
    int32_t n_top = sm_top_candidates(g->dist, s->n_vocab, &stats, gp->top_n_view, s->top_view);
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
    bool ask = (i + 1) % gp->backtrack_every_n == 0;
    int32_t best = 0;
    for (int32_t k = 0; k < gp->n_operators; k++) {
        sm_operator *op = gp->operators[k];
        int32_t n = op->vt->decide(op->state, &view); /* every operator sees every candidate */
        if (!ask || n <= 0) continue;
        if ((gp->combine == SM_COMBINE_FIRST && best == 0) || (gp->combine == SM_COMBINE_MAX && n > best)) {
            best = n;
            *who = op;
        }
    }
    return best;
}

/* Removes the candidate at generated position i and the k-1 kept tokens
 * before it, restoring everything to what it was at the new position. */
static sm_status rewind_generation(generation *g, int32_t i, int32_t k) {
    sm_session *s = g->s;
    abandon_plan(g);
    sm_status st = sm_session_truncate(s, s->n_tokens - (k - 1));
    if (st != SM_OK) return st;
    sm_text_pop(&g->text, k - 1);
    int32_t j = i - (k - 1); /* the position generation resumes at */
    position_record *r = &g->rec[j];
    g->policy.temperature = r->temperature;
    g->policy.repeat_penalty = r->repeat_penalty;
    g->policy.rng = r->policy_rng;
    g->rng = r->sample_rng;
    for (int32_t p = j + 1; p <= i; p++) {
        g->rec[p].n_bans = 0;
        g->rec[p].n_backtracks_here = 0;
        g->rec[p].n_safety_here = 0;
    }
    r->n_backtracks_here++;
    if (add_ban(r, r->token) != 0) return fail(s, SM_ERR_NO_MEMORY, "out of memory");
    for (int32_t o = 0; o < g->gp->n_operators; o++) {
        sm_operator *op = g->gp->operators[o];
        if (op->vt->on_backtrack) op->vt->on_backtrack(op->state, k);
    }
    g->res->n_tokens_removed += k;
    return SM_OK;
}

/* Clamps a removal so it stays within the generated tokens and the
 * distributions the ring still holds. */
static int32_t clamp_removal(const generation *g, int32_t i, int32_t k) {
    if (k > i - g->floor + 1) k = i - g->floor + 1; /* never across an injection */
    if (k - 1 > g->s->params.max_rewind) k = g->s->params.max_rewind + 1;
    return k;
}

static void emit_policy_mods(generation *g, int32_t i, const sm_policy_action *a) {
    for (int32_t m = 0; m < a->n_mods; m++) {
        const sm_policy_mod *pm = &a->mods[m];
        sm_event e = base_event(g, SM_EVENT_MODIFICATION, i);
        e.mod = pm->type;
        e.confidence = a->window_mean;
        e.description = pm->description;
        e.source = "policy";
        e.temperature_before = pm->t_before;
        e.temperature_after = pm->t_after;
        e.repeat_penalty_before = pm->rp_before;
        e.repeat_penalty_after = pm->rp_after;
        emit(g, &e);
    }
}

static sm_status do_retraction(generation *g, int32_t i, int32_t k, float mean) {
    const sm_policy_params *pp = &g->gp->policy;
    float t_before = g->policy.temperature, rp_before = g->policy.repeat_penalty;
    sm_status st = rewind_generation(g, i, k);
    if (st != SM_OK) return st;
    sm_policy_after_retraction(pp, &g->policy);
    g->res->n_retractions++;
    char desc[160];
    snprintf(desc, sizeof desc, "mean confidence %.3f < %.2f: retracted %d token%s, regenerating from #%d", mean,
             pp->critical_threshold, k, k == 1 ? "" : "s", i - k + 1);
    sm_event e = base_event(g, SM_EVENT_RETRACTION, i - k + 1);
    e.mod = SM_MOD_RETRACT;
    e.confidence = mean;
    e.description = desc;
    e.source = "policy";
    e.temperature_before = t_before;
    e.repeat_penalty_before = rp_before;
    e.temperature_after = g->policy.temperature;
    e.repeat_penalty_after = g->policy.repeat_penalty;
    e.n_removed = k;
    emit(g, &e);
    return SM_OK;
}

static sm_status do_backtrack(generation *g, int32_t i, int32_t k, sm_operator *op) {
    float conf = g->rec[i].signals.p_chosen;
    float t_before = g->policy.temperature, rp_before = g->policy.repeat_penalty;
    sm_status st = rewind_generation(g, i, k);
    if (st != SM_OK) return st;
    g->res->n_backtracks++;
    sm_event e = base_event(g, SM_EVENT_BACKTRACK, i - k + 1);
    e.mod = SM_MOD_BACKTRACK;
    e.confidence = conf;
    e.description = op->description;
    e.source = op->vt->name ? op->vt->name : "operator";
    e.temperature_before = t_before;
    e.repeat_penalty_before = rp_before;
    e.n_removed = k;
    emit(g, &e);
    return SM_OK;
}

/* Decides about the candidate at i. Returns true when it was removed. */
static sm_status decide(generation *g, int32_t i, const char *piece, bool *removed) {
    const sm_gen_params *gp = g->gp;
    *removed = false;
    sm_policy_state before = g->policy;
    sm_policy_action action;
    sm_policy_step(&gp->policy, g->confidences, g->gen_tokens, i + 1, g->res->n_retractions, &g->policy, &action);

    sm_operator *op = NULL;
    int32_t k_op = ask_operators(g, i, piece, &op);
    if (k_op > 0) {
        int32_t k = clamp_removal(g, i, k_op);
        if (g->rec[i - k + 1].n_backtracks_here >= gp->max_backtracks_per_position) {
            k_op = 0; /* this position has been retried enough: keep the token */
        } else if (g->res->n_backtracks >= gp->max_backtracks) {
            g->stop = SM_STOP_BACKTRACK_LIMIT;
            g->policy = before;
            *removed = true;
            return SM_OK;
        } else if (k >= action.retract) {
            g->policy = before;
            *removed = true;
            return do_backtrack(g, i, k, op);
        }
    }
    if (action.retract > 0) {
        g->policy = before;
        *removed = true;
        return do_retraction(g, i, clamp_removal(g, i, action.retract), action.window_mean);
    }
    emit_policy_mods(g, i, &action);
    return SM_OK;
}

/* Decodes the accepted candidate and reports it. */
static sm_status commit(generation *g, int32_t i, const char *piece, int32_t piece_len) {
    sm_session *s = g->s;
    sm_token t = g->rec[i].token;
    size_t text_before = g->text.len;
    const sm_fusion_info *fusion = NULL;
    if (s->n_models > 1) {
        sm_fusion_agreement(g->dists, s->n_models, s->n_vocab, t, g->participating, &g->fusion[i]);
        for (int32_t m = 0; m < s->n_models; m++) g->fusion[i].unmapped_mass[m] = ring_unmapped(s, s->n_tokens, m);
        fusion = &g->fusion[i];
    }
    if (sm_text_push(&g->text, piece, (size_t)piece_len) != 0) return fail(s, SM_ERR_NO_MEMORY, "out of memory");
    sm_status st = append_token(g, i, t);
    if (st != SM_OK) {
        sm_text_pop(&g->text, 1);
        return st;
    }
    bool rejected = false;
    st = check_safety(g, i, &rejected);
    if (st != SM_OK || rejected) return st;
    sm_event e = base_event(g, SM_EVENT_TOKEN, i);
    e.token = t;
    e.piece = piece;
    e.signals = g->rec[i].signals;
    e.temperature_before = g->rec[i].temperature; /* what sampled this token */
    e.repeat_penalty_before = g->rec[i].repeat_penalty;
    e.confidence = g->rec[i].signals.p_chosen;
    e.fusion = fusion;
    e.introspection = sm_session_introspection(s);
    if (g->gp->n_probs > 0) { /* g->dist is still the distribution t was sampled from */
        sm_dist_stats stats = {.log_z = g->rec[i].log_z};
        e.n_top = sm_top_candidates(g->dist, s->n_vocab, &stats, g->gp->n_probs < 1000 ? g->gp->n_probs : 1000,
                                    s->top_view);
        e.top = s->top_view;
    }
    emit(g, &e);
    if (g->gp->n_stop_strings > 0 &&
        sm_text_find_stop(&g->text, text_before, g->gp->stop_strings, g->gp->n_stop_strings) >= 0)
        g->stop = SM_STOP_STOP_STRING;
    if (g->gp->tools && g->stop == SM_STOP_NONE) return run_tool_if_marked(g, i, piece);
    return SM_OK;
}

static sm_status generation_step(generation *g) {
    sm_session *s = g->s;
    const int32_t i = generated(g);
    if (g->gp->n_predict >= 0 && i >= g->gp->n_predict) {
        g->stop = SM_STOP_N_PREDICT;
        return SM_OK;
    }
    if (s->n_tokens >= s->n_ctx) {
        g->stop = SM_STOP_CONTEXT_FULL;
        return SM_OK;
    }
    if (ensure_records(g, i + 1) != 0) return fail(s, SM_ERR_NO_MEMORY, "out of memory");
    if (injection_due(g)) return inject_next_chunk(g);
    if (g->gp->lookahead.k > 0 && !plan_active(g)) {
        sm_status la_status = run_lookahead(g, i);
        if (la_status != SM_OK) return la_status;
    }
    sm_token t = sample_candidate(g, i);
    if (t < 0) return fail(s, SM_ERR_STATE, "every token is banned at position %d", i);
    g->res->n_sampled++;

    char piece[256];
    int32_t piece_len = sm_token_piece(s->model->vocab, t, piece, (int32_t)sizeof piece - 1);
    piece[piece_len] = '\0';

    bool removed;
    sm_status st = decide(g, i, piece, &removed);
    if (st != SM_OK || removed) return st;
    if (llama_vocab_is_eog(s->model->vocab, t)) {
        g->stop = SM_STOP_EOG;
        return SM_OK;
    }
    return commit(g, i, piece, piece_len);
}

static void generation_free(generation *g) {
    for (int32_t i = 0; i < g->cap_rec; i++) free(g->rec[i].bans);
    free(g->rec);
    free(g->confidences);
    free(g->gen_tokens);
    free(g->fusion);
    free(g->intro_rec);
    free_plan(&g->plan);
    sm_text_free(&g->text);
}

/* Fills the result from the kept state: every statistic is computed over
 * the kept tokens only, so it equals a run that never made the removed ones. */
static sm_status finish_result(generation *g) {
    sm_result *r = g->res;
    int32_t n = generated(g);
    r->stop_reason = g->stop;
    r->n_tokens = n;
    r->tokens = malloc(sizeof(sm_token) * (size_t)(n > 0 ? n : 1));
    if (!r->tokens) return fail(g->s, SM_ERR_NO_MEMORY, "out of memory");
    if (n > 0) memcpy(r->tokens, g->gen_tokens, sizeof(sm_token) * (size_t)n); /* injected tokens are not output tokens */
    r->n_models = g->s->n_models;
    if (g->s->n_models > 1) {
        r->fusion = malloc(sizeof *r->fusion * (size_t)(n > 0 ? n : 1));
        if (!r->fusion) return fail(g->s, SM_ERR_NO_MEMORY, "out of memory");
        if (n > 0) memcpy(r->fusion, g->fusion, sizeof *r->fusion * (size_t)n);
    }
    double sum = 0.0;
    for (int32_t i = 0; i < n; i++) sum += g->confidences[i];
    r->avg_confidence = n > 0 ? (float)(sum / n) : 0.0f;
    r->final_temperature = g->policy.temperature;
    r->final_repeat_penalty = g->policy.repeat_penalty;
    size_t len = g->text.len;
    if (g->stop == SM_STOP_STOP_STRING) {
        long at = sm_text_find_stop(&g->text, 0, g->gp->stop_strings, g->gp->n_stop_strings);
        if (at >= 0) len = (size_t)at;
    }
    r->text = malloc(len + 1);
    if (!r->text) return fail(g->s, SM_ERR_NO_MEMORY, "out of memory");
    if (len) memcpy(r->text, g->text.bytes, len);
    r->text[len] = '\0';
    r->text_len = len;
    return SM_OK;
}

static void reset_operators(const sm_gen_params *gp) {
    for (int32_t i = 0; i < gp->n_operators; i++) {
        sm_operator *op = gp->operators[i];
        if (op->vt->reset) op->vt->reset(op->state);
        op->description[0] = '\0';
    }
}

sm_status sm_session_generate(sm_session *s, const char *prompt, const sm_gen_params *gp, sm_result *res) {
    if (!s || !gp || !res) return s ? fail(s, SM_ERR_INVALID_ARGUMENT, "missing params or result") : SM_ERR_INVALID_ARGUMENT;
    memset(res, 0, sizeof *res);
    char msg[256];
    if (sm_gen_params_validate(gp, msg, sizeof msg) != SM_OK) return fail(s, SM_ERR_INVALID_ARGUMENT, "%s", msg);
    if (s->n_models > 1 && sm_fusion_params_validate(&gp->fusion, s->n_models, msg, sizeof msg) != SM_OK)
        return fail(s, SM_ERR_INVALID_ARGUMENT, "%s", msg);
    if (!intervention_fits(s, gp, msg, sizeof msg)) return fail(s, SM_ERR_INVALID_ARGUMENT, "%s", msg);

    double t0 = sm_now_ms();
    if (prompt && *prompt) {
        sm_token *toks;
        int32_t n;
        sm_status st = tokenize(s, prompt, true, &toks, &n);
        if (st != SM_OK) return st;
        if (s->n_tokens + n >= s->n_ctx) {
            free(toks);
            return fail(s, SM_ERR_PROMPT_TOO_LONG,
                        "the prompt is %d tokens but the context holds %d (%d already used): nothing left to generate into",
                        n, s->n_ctx, s->n_tokens);
        }
        st = decode_append(s, toks, n);
        free(toks);
        if (st != SM_OK) return st;
        res->n_prompt_tokens = n;
    }
    if (!s->logits) return fail(s, SM_ERR_STATE, "nothing to continue from: give a prompt first");

    generation g = {.s = s, .gp = gp, .res = res, .start = s->n_tokens, .stop = SM_STOP_NONE};
    g.policy = (sm_policy_state){
        .temperature = gp->sampling.temperature,
        .repeat_penalty = gp->sampling.repeat_penalty,
        .rng = gp->sampling.seed ^ 0x5deece66dULL,
    };
    g.rng = gp->sampling.seed;
    sm_text_init(&g.text);
    g.inject_next = gp->inject_every > 0 ? gp->inject_text : NULL;
    g.next_inject_at = gp->inject_every;
    if (open_plan(&g) != 0) {
        generation_free(&g);
        return fail(s, SM_ERR_NO_MEMORY, "out of memory for lookahead branches");
    }
    reset_operators(gp);
    double t1 = sm_now_ms();
    res->t_prompt_ms = t1 - t0;

    sm_event start = base_event(&g, SM_EVENT_START, 0);
    emit(&g, &start);
    sm_status st = SM_OK;
    while (st == SM_OK && g.stop == SM_STOP_NONE) {
        if (g.cancelled) {
            g.stop = SM_STOP_CANCELLED;
            break;
        }
        st = generation_step(&g);
    }
    abandon_plan(&g);
    if (st != SM_OK) g.stop = SM_STOP_ERROR;
    sm_status fin = finish_result(&g);
    if (st == SM_OK) st = fin;
    res->t_generate_ms = sm_now_ms() - t1;

    sm_event done = base_event(&g, SM_EVENT_DONE, generated(&g));
    done.stop_reason = g.stop;
    done.confidence = res->avg_confidence;
    done.description = st == SM_OK ? "" : s->error;
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
    if (data && (n_embd < 1 || len < n_embd || len % n_embd != 0))
        return fail(s, SM_ERR_INVALID_ARGUMENT, "a control vector of %d floats is not a whole number of %d-float layers",
                    len, n_embd);
    for (int32_t m = 0; data && m < s->n_models; m++) {
        int32_t model_embd = llama_model_n_embd(s->members[m].model->lm);
        if (model_embd != n_embd)
            return fail(s, SM_ERR_INVALID_ARGUMENT, "the control vector has %d values per layer but '%s' has n_embd %d",
                        n_embd, s->members[m].model->path, model_embd);
    }
    if (data && il_start < 0 && il_end < 0) {
        il_start = 1;
        il_end = len / n_embd;
    }
    if (data && (il_start < 1 || il_end < il_start))
        return fail(s, SM_ERR_INVALID_ARGUMENT, "control vector layers %d to %d: need 1 <= start <= end", il_start, il_end);
    for (int32_t m = 0; m < s->n_models; m++) {
        if (llama_set_adapter_cvec(s->members[m].ctx, data, data ? (size_t)len : 0, n_embd, il_start, il_end) != 0)
            return fail(s, SM_ERR_STATE, "llama.cpp refused the control vector for '%s'", s->members[m].model->path);
    }
    return SM_OK;
}

sm_status sm_session_save_prefix(sm_session *s, const char *path) {
    if (!s || !path || !*path) return s ? fail(s, SM_ERR_INVALID_ARGUMENT, "no prompt cache file given") : SM_ERR_INVALID_ARGUMENT;
    if (s->n_models != 1) return fail(s, SM_ERR_STATE, "the prompt cache holds one model's state: this session has %d", s->n_models);
    if (s->n_tokens == 0) return fail(s, SM_ERR_STATE, "the context is empty: no prefix to save");
    if (llama_state_seq_save_file(s->members[0].ctx, path, 0, s->tokens, (size_t)s->n_tokens) == 0)
        return fail(s, SM_ERR_IO, "cannot write prompt cache '%s'", path);
    return SM_OK;
}

/* Loads the file's state into sequence 0 and keeps the part of it that is
 * a prefix of tokens[0..n) (at most n - 1 tokens); returns how many. */
static int32_t reuse_saved_prefix(sm_session *s, const char *path, const sm_token *tokens, int32_t n,
                                  sm_prefix_info *info) {
    if (access(path, R_OK) != 0) {
        snprintf(info->reason, sizeof info->reason, "no prompt cache '%s' yet", path);
        return 0;
    }
    sm_token *saved = malloc(sizeof(sm_token) * (size_t)s->n_ctx);
    if (!saved) {
        snprintf(info->reason, sizeof info->reason, "out of memory");
        return 0;
    }
    size_t n_saved = 0;
    size_t bytes = llama_state_seq_load_file(s->members[0].ctx, path, 0, saved, (size_t)s->n_ctx, &n_saved);
    int32_t common = 0;
    if (bytes == 0) {
        snprintf(info->reason, sizeof info->reason,
                 "'%s' could not be loaded (another model, a longer context, or other attention settings?)", path);
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
        return s ? fail(s, SM_ERR_INVALID_ARGUMENT, "load_prefix needs a file and at least one token") : SM_ERR_INVALID_ARGUMENT;
    if (s->n_models != 1) return fail(s, SM_ERR_STATE, "the prompt cache holds one model's state: this session has %d", s->n_models);
    if (s->n_tokens != 0) return fail(s, SM_ERR_STATE, "load_prefix needs an empty session (clear it first)");
    for (int32_t i = 0; i < n; i++)
        if (tokens[i] < 0 || tokens[i] >= s->n_vocab)
            return fail(s, SM_ERR_INVALID_ARGUMENT, "token %d at index %d is outside the vocabulary (%d)", tokens[i], i, s->n_vocab);
    if (n > s->n_ctx) return fail(s, SM_ERR_PROMPT_TOO_LONG, "%d tokens do not fit the context of %d", n, s->n_ctx);
    int32_t keep = reuse_saved_prefix(s, path, tokens, n, info);
    if (reserve(&s->tokens, &s->cap_tokens, n) != 0) return fail(s, SM_ERR_NO_MEMORY, "out of memory");
    memcpy(s->tokens, tokens, sizeof(sm_token) * (size_t)keep);
    s->n_tokens = keep;
    s->members[0].n_tokens = 0;
    info->n_reused = keep;
    info->n_decoded = n - keep;
    sm_status st = decode_append(s, tokens + keep, n - keep);
    if (st != SM_OK) sm_session_clear(s);
    return st;
}
