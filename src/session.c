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
    sm_token *bans;             /* tokens no longer allowed here         */
    int32_t n_bans, cap_bans;
} position_record;

struct sm_session {
    sm_model *model;
    struct llama_context *ctx;
    llama_memory_t mem;
    sm_session_params params;
    int32_t n_vocab;
    int32_t n_ctx;

    sm_token *tokens;            /* everything in the KV cache, in order */
    int32_t n_tokens, cap_tokens;

    /* ring[pos % ring_cap] holds the distribution that predicts the token
     * at context position pos; ring_pos says which pos a slot holds. */
    float *ring;
    int32_t *ring_pos;
    int32_t ring_cap;
    const float *logits;         /* the distribution at n_tokens, or NULL */

    int64_t n_decoded_total;
    sm_sampler_work work;
    sm_candidate *top_view;      /* operators' top-n view                 */
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

static double now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

sm_session_params sm_session_default_params(void) {
    return (sm_session_params){.n_ctx = 2048, .n_batch = 512, .n_threads = 0, .max_rewind = 64};
}

static int32_t default_threads(void) {
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    return n > 0 ? (int32_t)n : 1;
}

sm_session *sm_session_new(sm_model *model, const sm_session_params *params, sm_error *err) {
    if (!model) {
        sm_error_set(err, SM_ERR_INVALID_ARGUMENT, "no model given");
        return NULL;
    }
    sm_session_params p = params ? *params : sm_session_default_params();
    if (p.n_threads < 0 || p.max_rewind < 1 || p.n_batch < 1) {
        sm_error_set(err, SM_ERR_INVALID_ARGUMENT,
                     "invalid session parameters: n_threads %d (>= 0), max_rewind %d (>= 1), n_batch %u (>= 1)",
                     p.n_threads, p.max_rewind, p.n_batch);
        return NULL;
    }
    sm_session *s = calloc(1, sizeof *s);
    if (!s) {
        sm_error_set(err, SM_ERR_NO_MEMORY, "out of memory");
        return NULL;
    }
    s->model = model;
    s->params = p;
    s->n_vocab = model->n_vocab;

    struct llama_context_params cp = llama_context_default_params();
    cp.n_ctx = p.n_ctx;
    cp.n_batch = p.n_batch;
    cp.n_ubatch = p.n_batch;
    cp.n_seq_max = 1;
    cp.n_threads = cp.n_threads_batch = p.n_threads ? p.n_threads : default_threads();
    cp.no_perf = true;
    sm_llama_clear_log_error();
    s->ctx = llama_init_from_model(model->lm, cp);
    if (!s->ctx) {
        const char *why = sm_llama_last_log_error();
        sm_error_set(err, SM_ERR_CONTEXT, "cannot create a context of %u tokens for '%s'%s%s", p.n_ctx,
                     model->path, *why ? ": " : "", why);
        free(s);
        return NULL;
    }
    s->mem = llama_get_memory(s->ctx);
    s->n_ctx = (int32_t)llama_n_ctx(s->ctx);
    s->params.n_batch = llama_n_batch(s->ctx); /* llama.cpp caps it at n_ctx */
    s->ring_cap = p.max_rewind + 2;
    s->ring = malloc(sizeof(float) * (size_t)s->ring_cap * (size_t)s->n_vocab);
    s->ring_pos = malloc(sizeof(int32_t) * (size_t)s->ring_cap);
    s->top_view = malloc(sizeof(sm_candidate) * 1000);
    if (!s->ring || !s->ring_pos || !s->top_view || sm_sampler_work_init(&s->work, s->n_vocab) != 0) {
        sm_session_free(s);
        sm_error_set(err, SM_ERR_NO_MEMORY, "out of memory for a session of vocabulary %d", model->n_vocab);
        return NULL;
    }
    for (int32_t i = 0; i < s->ring_cap; i++) s->ring_pos[i] = -1;
    return s;
}

void sm_session_free(sm_session *s) {
    if (!s) return;
    if (s->ctx) llama_free(s->ctx);
    free(s->tokens);
    free(s->ring);
    free(s->ring_pos);
    free(s->top_view);
    sm_sampler_work_free(&s->work);
    free(s);
}

const char *sm_session_last_error(const sm_session *s) { return s->error; }
int32_t sm_session_n_past(const sm_session *s) { return s->n_tokens; }
int32_t sm_session_n_ctx(const sm_session *s) { return s->n_ctx; }
int64_t sm_session_n_decoded_total(const sm_session *s) { return s->n_decoded_total; }
const sm_model *sm_session_model(const sm_session *s) { return s->model; }
const float *sm_session_logits(const sm_session *s) { return s->logits; }

const sm_token *sm_session_tokens(const sm_session *s, int32_t *n_tokens) {
    if (n_tokens) *n_tokens = s->n_tokens;
    return s->tokens;
}

int32_t sm_session_kv_pos(const sm_session *s) {
    return (int32_t)llama_memory_seq_pos_max(s->mem, 0) + 1;
}

/* ------------------------------------------------------------------ */
/* Decoding and the distribution ring                                  */
/* ------------------------------------------------------------------ */

static int reserve_tokens(sm_session *s, int32_t n) {
    if (n <= s->cap_tokens) return 0;
    int32_t cap = s->cap_tokens ? s->cap_tokens : 256;
    while (cap < n) cap *= 2;
    sm_token *t = realloc(s->tokens, sizeof *t * (size_t)cap);
    if (!t) return -1;
    s->tokens = t;
    s->cap_tokens = cap;
    return 0;
}

/* Stores llama.cpp's last logits as the distribution at n_tokens. */
static void capture_logits(sm_session *s) {
    int32_t slot = s->n_tokens % s->ring_cap;
    float *dst = s->ring + (size_t)slot * (size_t)s->n_vocab;
    memcpy(dst, llama_get_logits_ith(s->ctx, -1), sizeof(float) * (size_t)s->n_vocab);
    s->ring_pos[slot] = s->n_tokens;
    s->logits = dst;
}

/* Decodes tokens[n_tokens .. n_tokens+n) in batches and appends them. */
static sm_status decode_append(sm_session *s, const sm_token *toks, int32_t n) {
    if (n <= 0) return SM_OK;
    if (s->n_tokens + n > s->n_ctx)
        return fail(s, SM_ERR_PROMPT_TOO_LONG, "%d tokens do not fit: %d of %d context tokens are used", n,
                    s->n_tokens, s->n_ctx);
    if (reserve_tokens(s, s->n_tokens + n) != 0) return fail(s, SM_ERR_NO_MEMORY, "out of memory");
    for (int32_t done = 0; done < n;) {
        int32_t chunk = n - done < (int32_t)s->params.n_batch ? n - done : (int32_t)s->params.n_batch;
        memcpy(s->tokens + s->n_tokens, toks + done, sizeof(sm_token) * (size_t)chunk);
        int32_t rc = llama_decode(s->ctx, llama_batch_get_one(s->tokens + s->n_tokens, chunk));
        if (rc != 0) {
            /* Whatever part of the batch reached the cache must go again. */
            llama_memory_seq_rm(s->mem, 0, s->n_tokens, -1);
            s->logits = NULL;
            return fail(s, SM_ERR_DECODE, "llama_decode failed (code %d) at position %d", rc, s->n_tokens);
        }
        s->n_tokens += chunk;
        s->n_decoded_total += chunk;
        done += chunk;
    }
    capture_logits(s);
    return SM_OK;
}

static void forget_ring_after(sm_session *s, int32_t pos) {
    for (int32_t i = 0; i < s->ring_cap; i++)
        if (s->ring_pos[i] > pos) s->ring_pos[i] = -1;
}

sm_status sm_session_truncate(sm_session *s, int32_t n_keep) {
    if (n_keep < 0 || n_keep > s->n_tokens)
        return fail(s, SM_ERR_INVALID_ARGUMENT, "cannot keep %d tokens of %d", n_keep, s->n_tokens);
    if (n_keep == s->n_tokens) return SM_OK;
    if (!llama_memory_seq_rm(s->mem, 0, n_keep, -1))
        return fail(s, SM_ERR_STATE, "this model's memory cannot remove a partial sequence (recurrent model?)");
    s->n_tokens = n_keep;
    forget_ring_after(s, n_keep);
    int32_t slot = n_keep % s->ring_cap;
    if (n_keep > 0 && s->ring_pos[slot] == n_keep) {
        s->logits = s->ring + (size_t)slot * (size_t)s->n_vocab;
        return SM_OK;
    }
    s->logits = NULL;
    if (n_keep == 0) return SM_OK;
    /* The distribution here was never kept: decode the last token again. */
    if (!llama_memory_seq_rm(s->mem, 0, n_keep - 1, -1))
        return fail(s, SM_ERR_STATE, "cannot remove position %d from the cache", n_keep - 1);
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
    llama_memory_clear(s->mem, true);
    s->n_tokens = 0;
    s->logits = NULL;
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

typedef struct generation {
    sm_session *s;
    const sm_gen_params *gp;
    sm_result *res;
    int32_t start;                  /* context position of generated token 0 */
    position_record *rec;
    int32_t cap_rec;
    float *confidences;             /* p_chosen per generated position        */
    sm_token *gen_tokens;           /* token per generated position           */
    sm_policy_state policy;
    uint64_t rng;
    sm_text text;
    int32_t n_events, cap_events;
    sm_stop_reason stop;
    bool cancelled;
} generation;

static int32_t generated(const generation *g) { return g->s->n_tokens - g->start; }

static int ensure_records(generation *g, int32_t n) {
    if (n <= g->cap_rec) return 0;
    int32_t cap = g->cap_rec ? g->cap_rec * 2 : 256;
    while (cap < n) cap *= 2;
    position_record *r = realloc(g->rec, sizeof *r * (size_t)cap);
    float *c = realloc(g->confidences, sizeof *c * (size_t)cap);
    sm_token *t = realloc(g->gen_tokens, sizeof *t * (size_t)cap);
    if (r) g->rec = r;
    if (c) g->confidences = c;
    if (t) g->gen_tokens = t;
    if (!r || !c || !t) return -1;
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

/* Samples the candidate at generated position i from the current
 * distribution, recording what a rewind to i must restore. */
static sm_token sample_candidate(generation *g, int32_t i) {
    sm_session *s = g->s;
    position_record *r = &g->rec[i];
    r->temperature = g->policy.temperature;
    r->repeat_penalty = g->policy.repeat_penalty;
    r->sample_rng = g->rng;
    r->policy_rng = g->policy.rng;

    int32_t last_n = g->gp->sampling.repeat_last_n;
    int32_t n_recent = s->n_tokens < last_n ? s->n_tokens : last_n;
    sm_sample_input in = {
        .logits = s->logits,
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
    };
    float p_sampled = 0.0f;
    sm_token t = sm_sample(&in, &g->rng, &s->work, &p_sampled);
    if (t < 0) return t;
    sm_dist_stats stats;
    sm_signals_compute(s->logits, s->n_vocab, t, &r->signals, &stats);
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
    int32_t n_top = sm_top_candidates(s->logits, s->n_vocab, &stats, gp->top_n_view, s->top_view);
    sm_token_view view = {
        .position = i,
        .token = r->token,
        .prob = r->signals.p_chosen,
        .logit = r->signals.logit,
        .logits = s->logits,
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
    if (k > i + 1) k = i + 1;
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
    if (sm_text_push(&g->text, piece, (size_t)piece_len) != 0) return fail(s, SM_ERR_NO_MEMORY, "out of memory");
    sm_status st = decode_append(s, &t, 1);
    if (st != SM_OK) {
        sm_text_pop(&g->text, 1);
        return st;
    }
    g->res->n_decoded++;
    sm_event e = base_event(g, SM_EVENT_TOKEN, i);
    e.token = t;
    e.piece = piece;
    e.signals = g->rec[i].signals;
    e.confidence = g->rec[i].signals.p_chosen;
    emit(g, &e);
    if (g->gp->n_stop_strings > 0 &&
        sm_text_find_stop(&g->text, text_before, g->gp->stop_strings, g->gp->n_stop_strings) >= 0)
        g->stop = SM_STOP_STOP_STRING;
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
    memcpy(r->tokens, g->s->tokens + g->start, sizeof(sm_token) * (size_t)n);
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

    double t0 = now_ms();
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
    reset_operators(gp);
    double t1 = now_ms();
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
    if (st != SM_OK) g.stop = SM_STOP_ERROR;
    sm_status fin = finish_result(&g);
    if (st == SM_OK) st = fin;
    res->t_generate_ms = now_ms() - t1;

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
    for (int32_t i = 0; i < r->n_events; i++) {
        free((char *)r->events[i].description);
        free((char *)r->events[i].source);
    }
    free(r->events);
    memset(r, 0, sizeof *r);
}
