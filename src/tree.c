/*
 * Tree exploration, the LLooM's way: expand continuations of a prefix
 * breadth-first, splitting a beam wherever its next tokens are probable
 * enough, and hand back the leaves as scored suggestions.
 *
 * Every beam is a sequence of one llama context (per model). A level's
 * live beams are decoded together, one token per beam in one llama_decode;
 * a child branches from its parent with llama_memory_seq_cp, which in a
 * unified KV cache only marks the parent's cells as shared, so the prefix
 * and the common ancestry are decoded once. Sequence PREFIX_SEQ holds the
 * prefix alone and is kept between calls, so an edited story only decodes
 * what changed.
 *
 * At most beam_limit beams live at once: a beam only splits while the
 * finished beams, the live children and the parents still to expand stay
 * within beam_limit, and while a parent is expanded its first live child
 * takes over the parent's sequence. Hence max_beam_limit sequences for the
 * beams plus PREFIX_SEQ.
 */
#include "internal.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define PREFIX_SEQ 0
#define MAX_PIECE 256
#define MAX_OBSERVED 16 /* layers activation scoring reads */

/* One model and its context. */
typedef struct tree_member {
    sm_model *model;
    struct llama_context *ctx;
    llama_memory_t mem;
    float *probs;              /* rows of n_vocab: this model's distributions */
} tree_member;

struct sm_tree {
    tree_member members[SM_MAX_MODELS];
    int32_t n_models;
    sm_pool *pool;
    int32_t n_vocab;
    uint32_t n_ctx;
    int32_t n_batch;
    int32_t max_beam_limit;
    struct llama_batch batch;
    int32_t n_rows;            /* rows allocated in every probs buffer        */
    float *mixed;              /* the models' mean; members[0].probs with one */
    sm_token *prefix;          /* what PREFIX_SEQ holds in every context      */
    int32_t n_prefix, cap_prefix;
    llama_seq_id *free_seqs;
    int32_t n_free;
    bool mix_sum;              /* several models' probabilities add up (the LLooM's) */
    sm_introspector *intro;    /* model 0's observed layers; NULL: none       */
    float prefix_norms[MAX_OBSERVED]; /* at the prefix's last token          */
    sm_batch *decoder;         /* whose decoder thread decodes; NULL: the caller */
    char error[512];
};

static sm_status fail(sm_tree *t, sm_status status, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

static sm_status fail(sm_tree *t, sm_status status, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(t->error, sizeof t->error, fmt, ap);
    va_end(ap);
    return status;
}

/* ------------------------------------------------------------------ */
/* Parameters                                                          */
/* ------------------------------------------------------------------ */

sm_tree_params sm_tree_default_params(void) {
    return (sm_tree_params){
        .max_depth = 12,
        .beam_limit = 25,
        .cutoff = 0.2f,
        .multiplier = 1.0f,
        .split_limit = 3,
        .stop_chars = ".,",
        .score_sum_probs = false,
        .batched = true,
    };
}

sm_tree_params sm_beam_search_params(int32_t width, int32_t n_tokens) {
    sm_tree_params p = sm_tree_default_params();
    p.max_depth = n_tokens;
    p.beam_limit = width;
    p.split_limit = width;
    p.cutoff = 0.0f;
    p.stop_chars = "";
    return p;
}

const char *sm_tree_end_name(sm_tree_end end) {
    switch (end) {
    case SM_TREE_END_NONE: return "none";
    case SM_TREE_END_MAX_DEPTH: return "max_depth";
    case SM_TREE_END_STOP_CHAR: return "stop_char";
    case SM_TREE_END_EOG: return "eog";
    case SM_TREE_END_BEAM_LIMIT: return "beam_limit";
    }
    return "unknown";
}

static sm_status validate_tree_params(const sm_tree_params *p, char *msg, size_t msg_size);

sm_status sm_tree_params_validate(const sm_tree_params *p, sm_error *err) {
    sm_error scratch;
    if (!err) err = &scratch;
    err->status = validate_tree_params(p, err->message, sizeof err->message);
    return err->status;
}

static sm_status validate_tree_params(const sm_tree_params *p, char *msg, size_t msg_size) {
    const char *field = NULL, *range = NULL;
    char value[64] = "";
    if (p->max_depth < 1) {
        field = "max_depth", range = ">= 1";
        snprintf(value, sizeof value, "%d", p->max_depth);
    } else if (p->beam_limit < 1) {
        field = "beam_limit", range = ">= 1";
        snprintf(value, sizeof value, "%d", p->beam_limit);
    } else if (!(p->cutoff >= 0.0f && p->cutoff <= 1.0f)) {
        field = "cutoff", range = "in [0, 1]";
        snprintf(value, sizeof value, "%g", p->cutoff);
    } else if (!(p->multiplier >= 0.0f && isfinite(p->multiplier))) {
        field = "multiplier", range = ">= 0 and finite";
        snprintf(value, sizeof value, "%g", p->multiplier);
    } else if (p->split_limit < 0) {
        field = "split_limit", range = ">= 0 (0 = no limit but beam_limit)";
        snprintf(value, sizeof value, "%d", p->split_limit);
    } else if (!(p->stability_weight >= 0.0f && isfinite(p->stability_weight))) {
        field = "stability_weight", range = ">= 0 and finite";
        snprintf(value, sizeof value, "%g", p->stability_weight);
    } else if (!(p->focus_weight >= 0.0f && isfinite(p->focus_weight))) {
        field = "focus_weight", range = ">= 0 and finite";
        snprintf(value, sizeof value, "%g", p->focus_weight);
    } else if (p->stop_chars) {
        for (const char *c = p->stop_chars; *c; c++)
            if ((unsigned char)*c >= 0x80) {
                field = "stop_chars", range = "ASCII characters";
                snprintf(value, sizeof value, "'%.32s'", p->stop_chars);
                break;
            }
    }
    if (!field) return SM_OK;
    snprintf(msg, msg_size, "tree parameter %s must be %s (got %s)", field, range, value);
    return SM_ERR_INVALID_ARGUMENT;
}

/* ------------------------------------------------------------------ */
/* Creation                                                            */
/* ------------------------------------------------------------------ */


static bool init_member(sm_tree *t, tree_member *mb, sm_model *model, uint32_t n_ctx, int32_t n_threads,
                        sm_introspector *intro, bool attention, sm_error *err) {
    sm_context_opts o = {
        .cb_eval = intro ? sm_introspector_cb : NULL,
        .cb_eval_user_data = intro,
        .no_flash_attention = attention,
        .n_ctx = n_ctx,
        .n_seq_max = (uint32_t)t->max_beam_limit + 1,
        /* One cell pool for all sequences: a branch shares its parent's
         * cells. Separate streams (the default) would copy whole buffers
         * on seq_cp, which llama.cpp only supports for full streams. */
        .kv_unified = true,
        .n_threads = n_threads,
        .what = "a tree context",
    };
    mb->model = model;
    mb->ctx = sm_context_new(model, &o, err);
    if (!mb->ctx) return false;
    mb->mem = llama_get_memory(mb->ctx);
    return true;
}

static bool check_models(sm_model *const *models, int32_t n_models, sm_error *err) {
    if (!models || n_models < 1 || n_models > SM_MAX_MODELS) {
        sm_error_set(err, SM_ERR_INVALID_ARGUMENT, "a tree takes 1 to %d models (got %d)", SM_MAX_MODELS, n_models);
        return false;
    }
    for (int32_t m = 0; m < n_models; m++)
        if (!models[m]) {
            sm_error_set(err, SM_ERR_INVALID_ARGUMENT, "model %d is missing", m);
            return false;
        }
    for (int32_t m = 1; m < n_models; m++) {
        sm_error mismatch;
        if (!sm_vocab_equal(models[0], models[m], &mismatch)) {
            sm_error_set(err, SM_ERR_VOCAB_MISMATCH,
                         "'%s' and '%s' do not share a vocabulary, which mixing in a tree needs: %s",
                         models[0]->path, models[m]->path, mismatch.message);
            return false;
        }
    }
    return true;
}

sm_tree *sm_tree_new(sm_model *const *models, int32_t n_models, uint32_t n_ctx, int32_t n_threads,
                     int32_t max_beam_limit, sm_error *err) {
    return sm_tree_new_observed(models, n_models, n_ctx, n_threads, max_beam_limit, NULL, 0, false, err);
}

sm_tree *sm_tree_new_observed(sm_model *const *models, int32_t n_models, uint32_t n_ctx, int32_t n_threads,
                              int32_t max_beam_limit, const int32_t *layers, int32_t n_layers, bool attention,
                              sm_error *err) {
    if (!check_models(models, n_models, err)) return NULL;
    if (n_layers < 0 || n_layers > MAX_OBSERVED || (n_layers > 0 && !layers)) {
        sm_error_set(err, SM_ERR_INVALID_ARGUMENT, "a tree observes 0 to %d layers (got %d)", MAX_OBSERVED, n_layers);
        return NULL;
    }
    /* llama.cpp allows LLAMA_MAX_SEQ (256) sequences; one holds the prefix. */
    if (max_beam_limit < 1 || max_beam_limit > 255 || n_threads < 0) {
        sm_error_set(err, SM_ERR_INVALID_ARGUMENT,
                     "invalid tree settings: max_beam_limit %d (1 to 255), n_threads %d (>= 0)", max_beam_limit,
                     n_threads);
        return NULL;
    }
    sm_tree *t = calloc(1, sizeof *t);
    if (!t) {
        sm_error_set(err, SM_ERR_NO_MEMORY, "out of memory");
        return NULL;
    }
    t->max_beam_limit = max_beam_limit;
    t->n_vocab = models[0]->n_vocab;
    if (n_layers > 0) {
        char msg[256];
        t->intro = sm_introspector_new(models[0]->lm, layers, n_layers, false, attention, false,
                                       max_beam_limit > 512 ? max_beam_limit : 512, msg, sizeof msg);
        if (!t->intro) {
            sm_error_set(err, SM_ERR_INVALID_ARGUMENT, "%s", msg);
            free(t);
            return NULL;
        }
    }
    if (n_ctx == 0) n_ctx = (uint32_t)sm_model_n_ctx_train(models[0]);
    int32_t total_threads = n_threads ? n_threads : sm_online_cores();
    int32_t per_model = total_threads / n_models > 0 ? total_threads / n_models : 1;
    for (int32_t m = 0; m < n_models; m++) {
        if (!init_member(t, &t->members[m], models[m], n_ctx, per_model, m == 0 ? t->intro : NULL, attention, err)) {
            sm_tree_free(t);
            return NULL;
        }
        t->n_models++;
    }
    t->n_ctx = llama_n_ctx(t->members[0].ctx);
    t->n_batch = (int32_t)llama_n_batch(t->members[0].ctx);
    int32_t batch_cap = t->n_batch > max_beam_limit ? t->n_batch : max_beam_limit;
    t->batch = llama_batch_init(batch_cap, 0, 1);
    t->free_seqs = malloc(sizeof *t->free_seqs * (size_t)max_beam_limit);
    t->pool = n_models > 1 ? sm_pool_new(n_models - 1) : NULL;
    if (!t->batch.token || !t->free_seqs || (n_models > 1 && !t->pool)) {
        sm_tree_free(t);
        sm_error_set(err, SM_ERR_NO_MEMORY, "out of memory for a tree of %d beams", max_beam_limit);
        return NULL;
    }
    return t;
}

void sm_tree_free(sm_tree *t) {
    if (!t) return;
    sm_pool_free(t->pool);
    for (int32_t m = 0; m < SM_MAX_MODELS; m++) {
        if (t->members[m].ctx) llama_free(t->members[m].ctx);
        free(t->members[m].probs);
    }
    if (t->batch.token) llama_batch_free(t->batch);
    if (t->n_models > 1) free(t->mixed);
    free(t->prefix);
    free(t->free_seqs);
    sm_introspector_free(t->intro);
    free(t);
}

const char *sm_tree_last_error(const sm_tree *t) { return t->error; }
uint32_t sm_tree_n_ctx(const sm_tree *t) { return t->n_ctx; }

/* Every probs buffer holds at least n rows. */
static bool reserve_rows(sm_tree *t, int32_t n) {
    if (n <= t->n_rows) return true;
    size_t bytes = sizeof(float) * (size_t)n * (size_t)t->n_vocab;
    for (int32_t m = 0; m < t->n_models; m++) {
        float *p = realloc(t->members[m].probs, bytes);
        if (!p) return false;
        t->members[m].probs = p;
    }
    if (t->n_models > 1) {
        float *p = realloc(t->mixed, bytes);
        if (!p) return false;
        t->mixed = p;
    } else {
        t->mixed = t->members[0].probs;
    }
    t->n_rows = n;
    return true;
}

/* ------------------------------------------------------------------ */
/* Decoding                                                            */
/* ------------------------------------------------------------------ */

/* What one model decodes in a call: the prepared batch at once, or each of
 * its tokens alone (beam by beam). The distributions of the tokens that
 * ask for logits land in rows 0, 1, ... in batch order. */
typedef struct decode_job {
    sm_tree *tree;
    bool one_by_one;
} decode_job;

static int32_t tree_decode(const sm_tree *t, struct llama_context *ctx, const struct llama_batch *b) {
    return t->decoder ? sm_batch_decode_other(t->decoder, ctx, b) : sm_decode(ctx, b);
}

static int32_t decode_model(void *arg, int32_t m) {
    decode_job *job = arg;
    sm_tree *t = job->tree;
    tree_member *mb = &t->members[m];
    const struct llama_batch *b = &t->batch;
    const size_t row = (size_t)t->n_vocab;
    int32_t r = 0;
    if (!job->one_by_one) {
        if (m == 0 && t->intro) {
            int32_t rows = 0;
            for (int32_t i = 0; i < b->n_tokens; i++) rows += b->logits[i] != 0;
            sm_introspector_expect_rows(t->intro, rows);
        }
        int32_t rc = tree_decode(t, mb->ctx, b);
        for (int32_t i = 0; rc == 0 && i < b->n_tokens; i++)
            if (b->logits[i]) sm_softmax(llama_get_logits_ith(mb->ctx, i), t->n_vocab, mb->probs + row * (size_t)r++);
        return rc;
    }
    for (int32_t i = 0; i < b->n_tokens; i++) {
        struct llama_batch one = {
            .n_tokens = 1,
            .token = b->token + i,
            .pos = b->pos + i,
            .n_seq_id = b->n_seq_id + i,
            .seq_id = b->seq_id + i,
            .logits = b->logits + i,
        };
        if (m == 0 && t->intro) sm_introspector_expect_rows(t->intro, 1);
        int32_t rc = tree_decode(t, mb->ctx, &one);
        if (rc != 0) return rc;
        if (b->logits[i]) sm_softmax(llama_get_logits_ith(mb->ctx, 0), t->n_vocab, mb->probs + row * (size_t)r++);
    }
    return 0;
}

/* A level some model could not decode leaves no cell of it in any model. */
static void undo_model(void *arg, int32_t m) {
    const decode_job *job = arg;
    const struct llama_batch *b = &job->tree->batch;
    llama_memory_t mem = job->tree->members[m].mem;
    for (int32_t i = 0; i < b->n_tokens; i++) llama_memory_seq_rm(mem, b->seq_id[i][0], b->pos[i], b->pos[i] + 1);
}

/* Decodes t->batch in every model, then mixes the models' rows. */
static sm_status decode_batch(sm_tree *t, bool one_by_one, const char *what) {
    decode_job job = {t, one_by_one};
    int32_t failed;
    int32_t rc = sm_models_decode(t->pool, t->n_models, decode_model, undo_model, &job, &failed);
    if (rc == 1)
        return fail(t, SM_ERR_CONTEXT,
                    "no room left in the context of %u tokens for %s in '%s': use a larger context, "
                    "or a smaller beam limit or depth",
                    t->n_ctx, what, t->members[failed].model->path);
    if (rc != 0)
        return fail(t, SM_ERR_DECODE, "llama_decode failed (code %d) for %s in '%s'", rc, what,
                    t->members[failed].model->path);
    if (t->n_models > 1) {
        int32_t n_rows = 0;
        for (int32_t i = 0; i < t->batch.n_tokens; i++) n_rows += t->batch.logits[i] != 0;
        const size_t end = (size_t)n_rows * (size_t)t->n_vocab;
        const float inv = t->mix_sum ? 1.0f : 1.0f / (float)t->n_models;
        for (size_t i = 0; i < end; i++) {
            float sum = 0.0f;
            for (int32_t m = 0; m < t->n_models; m++) sum += t->members[m].probs[i];
            t->mixed[i] = sum * inv;
        }
    }
    return SM_OK;
}

static int32_t common_prefix(const sm_token *a, int32_t na, const sm_token *b, int32_t nb) {
    int32_t n = 0;
    while (n < na && n < nb && a[n] == b[n]) n++;
    return n;
}

/*
 * Brings PREFIX_SEQ to `tokens` in every context, decoding only what
 * differs from the previous call's prefix (at least the last token, whose
 * distribution is needed), and leaves its distribution in row 0.
 */
static sm_status decode_prefix(sm_tree *t, const sm_token *tokens, int32_t n, int32_t *n_reused) {
    if (n > t->cap_prefix) {
        sm_token *p = realloc(t->prefix, sizeof *p * (size_t)n);
        if (!p) return fail(t, SM_ERR_NO_MEMORY, "out of memory for a prefix of %d tokens", n);
        t->prefix = p;
        t->cap_prefix = n;
    }
    for (int32_t m = 0; m < t->n_models; m++) llama_memory_seq_keep(t->members[m].mem, PREFIX_SEQ);
    int32_t keep = common_prefix(t->prefix, t->n_prefix, tokens, n);
    if (keep == n) keep = n - 1;
    for (int32_t m = 0; m < t->n_models; m++)
        if (!llama_memory_seq_rm(t->members[m].mem, PREFIX_SEQ, keep, -1)) keep = 0;
    if (keep == 0)
        for (int32_t m = 0; m < t->n_models; m++) llama_memory_clear(t->members[m].mem, true);
    /* Until it is all decoded, the kept part is all that is known. */
    t->n_prefix = keep;
    *n_reused = keep;
    for (int32_t at = keep; at < n; at += t->n_batch) {
        int32_t chunk = n - at < t->n_batch ? n - at : t->n_batch;
        t->batch.n_tokens = 0;
        for (int32_t i = 0; i < chunk; i++)
            sm_llama_batch_add(&t->batch, tokens[at + i], at + i, PREFIX_SEQ, at + i == n - 1);
        sm_status st = decode_batch(t, false, "the prefix");
        if (st != SM_OK) {
            for (int32_t m = 0; m < t->n_models; m++) llama_memory_clear(t->members[m].mem, true);
            t->n_prefix = 0;
            return st;
        }
    }
    memcpy(t->prefix, tokens, sizeof *tokens * (size_t)n);
    t->n_prefix = n;
    if (t->intro) { /* the prefix's last token: what the first level's stability compares with */
        sm_introspection now;
        sm_introspector_view(t->intro, sm_introspector_record(t->intro, 0), NULL, &now);
        for (int32_t l = 0; l < now.n_layers && l < MAX_OBSERVED; l++) t->prefix_norms[l] = now.layers[l].norm;
    }
    return SM_OK;
}

/* ------------------------------------------------------------------ */
/* Expansion                                                           */
/* ------------------------------------------------------------------ */

/* A beam still growing: its last node and the sequence holding it. */
typedef struct beam {
    int32_t node;          /* -1: the prefix itself                          */
    llama_seq_id seq;
    int32_t depth;
    double score;
    bool has_text;         /* its text has more than leading stop characters */
    float norms[MAX_OBSERVED]; /* activation scoring: at its last decoded token */
} beam;

typedef struct expansion {
    sm_tree *tree;
    const sm_tree_params *p;
    const struct llama_vocab *vocab;
    int32_t n_prefix;
    sm_tree_node *nodes;
    int32_t n_nodes, cap_nodes;
    beam *live, *next;     /* this level's beams, the next level's          */
    int32_t n_live, n_next;
    int32_t n_finished;    /* leaves                                         */
    sm_candidate *cand;
    int32_t max_cand;
    struct offer *offers;  /* this level's possible children                 */
    int32_t n_offers;
    sm_tree_result *out;
} expansion;

static llama_seq_id take_seq(sm_tree *t) { return t->n_free > 0 ? t->free_seqs[--t->n_free] : -1; }

static void release_seq(sm_tree *t, llama_seq_id seq) {
    if (seq == PREFIX_SEQ) return;
    for (int32_t m = 0; m < t->n_models; m++) llama_memory_seq_rm(t->members[m].mem, seq, -1, -1);
    t->free_seqs[t->n_free++] = seq;
}

/* The n most probable tokens of a row, descending; ties keep token order. */
static int32_t top_tokens(const float *probs, int32_t n_vocab, int32_t n, sm_candidate *out) {
    int32_t filled = sm_select_largest(probs, n_vocab, n, out);
    for (int32_t i = 0; i < filled; i++) {
        out[i].prob = out[i].logit;
        out[i].logit = 0.0f;
    }
    return filled;
}

/* Whether the piece ends a beam: a stop character after the beam's text
 * has begun (the LLooM lets a beam that opens with one go on). */
static bool hits_stop_char(const char *piece, const char *stops, bool *has_text) {
    if (!stops || !*stops) return false;
    for (const char *c = piece; *c; c++) {
        if (!strchr(stops, *c)) *has_text = true;
        else if (*has_text) return true;
    }
    return false;
}

static int32_t add_node(expansion *e, const beam *parent, const sm_candidate *c, beam *child) {
    if (e->n_nodes == e->cap_nodes) {
        int32_t cap = e->cap_nodes ? e->cap_nodes * 2 : 64;
        sm_tree_node *n = realloc(e->nodes, sizeof *n * (size_t)cap);
        if (!n) return -1;
        e->nodes = n;
        e->cap_nodes = cap;
    }
    char piece[MAX_PIECE];
    int32_t len = sm_token_piece(e->vocab, c->token, piece, MAX_PIECE - 1);
    piece[len] = '\0';
    char *copy = strdup(piece);
    if (!copy) return -1;
    *child = (beam){
        .node = e->n_nodes,
        .seq = -1,
        .depth = parent->depth + 1,
        .score = parent->score + (e->p->score_sum_probs ? (double)c->prob : log((double)c->prob)),
        .has_text = parent->has_text,
    };
    memcpy(child->norms, parent->norms, sizeof child->norms);
    sm_tree_end end = SM_TREE_END_NONE;
    if (llama_vocab_is_eog(e->vocab, c->token)) end = SM_TREE_END_EOG;
    else if (hits_stop_char(piece, e->p->stop_chars, &child->has_text)) end = SM_TREE_END_STOP_CHAR;
    else if (child->depth >= e->p->max_depth) end = SM_TREE_END_MAX_DEPTH;
    e->nodes[e->n_nodes] = (sm_tree_node){
        .parent = parent->node,
        .token = c->token,
        .piece = copy,
        .prob = c->prob,
        .score = child->score,
        .depth = child->depth,
        .end = end,
    };
    return e->n_nodes++;
}

/*
 * Gives the live children next[first..n_next) their sequences: the first
 * continues in the parent's (but never in PREFIX_SEQ, which stays the bare
 * prefix), the others are branched from it. A parent with no live child
 * frees its sequence.
 */
static sm_status assign_sequences(expansion *e, const beam *parent, int32_t first) {
    sm_tree *t = e->tree;
    if (first == e->n_next) {
        release_seq(t, parent->seq);
        return SM_OK;
    }
    for (int32_t i = first; i < e->n_next; i++) {
        if (i == first && parent->seq != PREFIX_SEQ) {
            e->next[i].seq = parent->seq;
            continue;
        }
        llama_seq_id seq = take_seq(t);
        if (seq < 0) return fail(t, SM_ERR_STATE, "internal error: no free sequence for a beam");
        for (int32_t m = 0; m < t->n_models; m++) llama_memory_seq_cp(t->members[m].mem, parent->seq, seq, -1, -1);
        e->next[i].seq = seq;
    }
    /* The parent's sequence went to its first child, unless it is PREFIX_SEQ. */
    return SM_OK;
}

/* A possible child: which live beam, which token, what it would score. */
typedef struct offer {
    int32_t parent;        /* index in live                                  */
    sm_candidate cand;
    double score;
    int32_t order;         /* creation order: parents in turn, tokens by p   */
} offer;

/* The children live beam j offers: its most probable token always, each
 * further one while it meets the cutoff at the beam's depth and the beam
 * has fewer than split_limit children. */
static void offer_children(expansion *e, int32_t j) {
    const sm_tree_params *p = e->p;
    const beam *parent = &e->live[j];
    const float *row = e->tree->mixed + (size_t)j * (size_t)e->tree->n_vocab;
    int32_t n_cand = top_tokens(row, e->tree->n_vocab, e->max_cand, e->cand);
    const double cutoff = (double)p->cutoff * pow((double)p->multiplier, parent->depth);
    for (int32_t c = 0; c < n_cand; c++) {
        if (c > 0 && ((double)e->cand[c].prob < cutoff || e->cand[c].prob <= 0.0f)) break;
        double gain = p->score_sum_probs ? (double)e->cand[c].prob : log((double)e->cand[c].prob);
        e->offers[e->n_offers] = (offer){.parent = j, .cand = e->cand[c], .score = parent->score + gain,
                                         .order = e->n_offers};
        e->n_offers++;
    }
}

static int by_score_then_order(const void *a, const void *b) {
    const offer *x = a, *y = b;
    if (x->score != y->score) return x->score < y->score ? 1 : -1;
    return (x->order > y->order) - (x->order < y->order);
}

static int by_order(const void *a, const void *b) {
    const offer *x = a, *y = b;
    return (x->order > y->order) - (x->order < y->order);
}

/*
 * One level: every live beam offers its children, and the best of them by
 * score take the places left (beam_limit less the suggestions finished),
 * so the tree keeps its best beams and each goes on to max_depth, a stop
 * character or an end of generation. Kept children become nodes in
 * creation order (a parent's children together, most probable first).
 */
static sm_status grow_level(expansion *e) {
    e->n_offers = 0;
    for (int32_t j = 0; j < e->n_live; j++) offer_children(e, j);
    int32_t places = e->p->beam_limit - e->n_finished;
    if (e->n_offers > places) {
        qsort(e->offers, (size_t)e->n_offers, sizeof *e->offers, by_score_then_order);
        e->n_offers = places > 0 ? places : 0;
        qsort(e->offers, (size_t)e->n_offers, sizeof *e->offers, by_order);
    }
    e->n_next = 0;
    /* A parent none of whose children was kept frees its sequence first,
     * so that the sequences in use never exceed the children kept. */
    for (int32_t j = 0, k = 0; j < e->n_live; j++) {
        while (k < e->n_offers && e->offers[k].parent < j) k++;
        if (k < e->n_offers && e->offers[k].parent == j) continue;
        release_seq(e->tree, e->live[j].seq);
        if (e->live[j].node >= 0) e->nodes[e->live[j].node].end = SM_TREE_END_BEAM_LIMIT; /* dropped */
    }
    for (int32_t k = 0; k < e->n_offers;) {
        const int32_t j = e->offers[k].parent, first_child = e->n_next;
        for (; k < e->n_offers && e->offers[k].parent == j; k++) {
            beam child;
            int32_t node = add_node(e, &e->live[j], &e->offers[k].cand, &child);
            if (node < 0) return fail(e->tree, SM_ERR_NO_MEMORY, "out of memory for the tree's nodes");
            if (e->nodes[node].end != SM_TREE_END_NONE) e->n_finished++;
            else e->next[e->n_next++] = child;
        }
        sm_status st = assign_sequences(e, &e->live[j], first_child);
        if (st != SM_OK) return st;
    }
    return SM_OK;
}

/* Decodes the last token of every live beam; row i gets beam i's
 * distribution. */
static sm_status decode_level(expansion *e) {
    sm_tree *t = e->tree;
    t->batch.n_tokens = 0;
    for (int32_t i = 0; i < e->n_live; i++) {
        const beam *b = &e->live[i];
        sm_llama_batch_add(&t->batch, e->nodes[b->node].token, e->n_prefix + b->depth - 1, b->seq, true);
    }
    sm_status st = decode_batch(t, !e->p->batched, "the tree's beams");
    e->out->n_levels++;
    e->out->n_decode_calls += t->n_models * (e->p->batched ? 1 : e->n_live);
    e->out->n_tokens_decoded += (int64_t)t->n_models * e->n_live;
    if (e->n_live > e->out->max_live_beams) e->out->max_live_beams = e->n_live;
    return st;
}

/* Activation scoring: each live beam's last token, just decoded (row j),
 * adds its stability and focus to the beam's score. */
static void score_activations(expansion *e) {
    const sm_tree_params *p = e->p;
    sm_introspector *in = e->tree->intro;
    for (int32_t j = 0; j < e->n_live; j++) {
        beam *b = &e->live[j];
        sm_introspection now;
        sm_introspector_view(in, sm_introspector_record(in, j), NULL, &now);
        double change = 0, entropy = 0;
        int32_t n_change = 0, n_entropy = 0;
        for (int32_t l = 0; l < now.n_layers && l < MAX_OBSERVED; l++) {
            if (b->norms[l] > 0) {
                change += fabs(now.layers[l].norm - b->norms[l]) / b->norms[l];
                n_change++;
            }
            b->norms[l] = now.layers[l].norm;
        }
        for (int32_t k = 0; now.attn_entropy && k < now.n_layers * now.n_heads; k++, n_entropy++) entropy += now.attn_entropy[k];
        double stability = n_change ? -change / n_change : 0.0, focus = n_entropy ? -entropy / n_entropy : 0.0;
        b->score += p->stability_weight * stability + p->focus_weight * focus;
        e->nodes[b->node].score = b->score;
    }
}

static sm_status grow(expansion *e) {
    for (;;) {
        sm_status st = grow_level(e);
        if (st != SM_OK) return st;
        if (e->n_next == 0) return SM_OK;
        beam *swap = e->live;
        e->live = e->next;
        e->next = swap;
        e->n_live = e->n_next;
        st = decode_level(e);
        if (st != SM_OK) return st;
        if (e->p->stability_weight > 0 || e->p->focus_weight > 0) score_activations(e);
    }
}

/* ------------------------------------------------------------------ */
/* Suggestions                                                         */
/* ------------------------------------------------------------------ */

/* Leaves by score, best first; equal scores keep creation order. An
 * insertion sort: there are at most beam_limit leaves. */
static void sort_leaves(const sm_tree_node *nodes, int32_t *leaves, int32_t n) {
    for (int32_t i = 1; i < n; i++) {
        int32_t x = leaves[i], j = i;
        while (j > 0 && nodes[leaves[j - 1]].score < nodes[x].score) {
            leaves[j] = leaves[j - 1];
            j--;
        }
        leaves[j] = x;
    }
}

/* Cuts a stop-char suggestion's text after its first stop character past
 * the opening ones (", and" ends as ","), as the LLooM did. */
static void trim_after_stop(char *text, const char *stops) {
    bool has_text = false;
    for (char *c = text; *c; c++) {
        if (!strchr(stops, *c)) has_text = true;
        else if (has_text) {
            c[1] = '\0';
            return;
        }
    }
}

/* The text two suggestions are compared by: without one leading space. */
static const char *dedup_key(const char *text) { return text[0] == ' ' ? text + 1 : text; }

/* The suggestion that ends at `leaf`: tokens, probabilities, text. */
static bool make_suggestion(const sm_tree_node *nodes, int32_t leaf, sm_suggestion *s) {
    const int32_t n = nodes[leaf].depth;
    size_t len = 0;
    for (int32_t i = leaf; i >= 0; i = nodes[i].parent) len += strlen(nodes[i].piece);
    *s = (sm_suggestion){
        .text = malloc(len + 1),
        .tokens = malloc(sizeof(sm_token) * (size_t)n),
        .probs = malloc(sizeof(float) * (size_t)n),
        .n_tokens = n,
        .score = nodes[leaf].score,
        .node = leaf,
        .end = nodes[leaf].end,
    };
    if (!s->text || !s->tokens || !s->probs) return false;
    s->text[len] = '\0';
    int32_t k = n;
    for (int32_t i = leaf; i >= 0; i = nodes[i].parent) {
        size_t pl = strlen(nodes[i].piece);
        len -= pl;
        memcpy(s->text + len, nodes[i].piece, pl);
        k--;
        s->tokens[k] = nodes[i].token;
        s->probs[k] = nodes[i].prob;
    }
    return true;
}

static void suggestion_free(sm_suggestion *s) {
    free(s->text);
    free(s->tokens);
    free(s->probs);
}

/* The leaves by score, best first, one per text (the best scoring; texts
 * that differ only by a leading space are one, as in the LLooM). */
static sm_status collect_suggestions(sm_tree *t, const sm_tree_params *p, sm_tree_result *out) {
    int32_t *leaves = malloc(sizeof(int32_t) * (size_t)(out->n_nodes ? out->n_nodes : 1));
    out->suggestions = calloc((size_t)(out->n_nodes ? out->n_nodes : 1), sizeof(sm_suggestion));
    if (!leaves || !out->suggestions) {
        free(leaves);
        return fail(t, SM_ERR_NO_MEMORY, "out of memory for the suggestions");
    }
    int32_t n_leaves = 0;
    for (int32_t i = 0; i < out->n_nodes; i++) /* the dropped beams are no suggestions */
        if (out->nodes[i].end != SM_TREE_END_NONE && out->nodes[i].end != SM_TREE_END_BEAM_LIMIT) leaves[n_leaves++] = i;
    sort_leaves(out->nodes, leaves, n_leaves);
    for (int32_t i = 0; i < n_leaves; i++) {
        sm_suggestion *s = &out->suggestions[out->n_suggestions];
        if (!make_suggestion(out->nodes, leaves[i], s)) {
            suggestion_free(s);
            free(leaves);
            return fail(t, SM_ERR_NO_MEMORY, "out of memory for the suggestions");
        }
        if (s->end == SM_TREE_END_STOP_CHAR && p->stop_chars) trim_after_stop(s->text, p->stop_chars);
        bool seen = false;
        for (int32_t k = 0; k < out->n_suggestions && !seen; k++)
            seen = strcmp(dedup_key(out->suggestions[k].text), dedup_key(s->text)) == 0;
        if (seen) suggestion_free(s);
        else out->n_suggestions++;
    }
    free(leaves);
    return SM_OK;
}

/* ------------------------------------------------------------------ */
/* The call                                                            */
/* ------------------------------------------------------------------ */

static sm_status tokenize_prefix(sm_tree *t, const char *prefix, sm_token **tokens, int32_t *n) {
    const sm_model *m0 = t->members[0].model;
    sm_tokens toks;
    sm_error err = {0};
    sm_status st = sm_tokenize(m0, prefix, strlen(prefix), true, false, &toks, &err);
    if (st != SM_OK) return fail(t, st, "%s", err.message);
    if (toks.n == 0) {
        sm_tokens_free(&toks);
        return fail(t, SM_ERR_INVALID_ARGUMENT, "the prefix gives no tokens (empty, and the model adds no BOS)");
    }
    *tokens = toks.data; /* the caller frees it */
    *n = toks.n;
    return SM_OK;
}

static sm_status check_call(sm_tree *t, const char *prefix, const sm_tree_params *p, sm_tree_result *out) {
    if (!prefix || !p || !out)
        return fail(t, SM_ERR_INVALID_ARGUMENT, "sm_tree_expand needs a prefix, parameters and a result");
    sm_status st = validate_tree_params(p, t->error, sizeof t->error);
    if (st != SM_OK) return st;
    if ((p->stability_weight > 0 || p->focus_weight > 0) && (!t->intro || !p->batched))
        return fail(t, SM_ERR_INVALID_ARGUMENT, "activation scoring needs a tree that observes layers "
                    "(sm_tree_new_observed) and batched decoding");
    if (p->beam_limit > t->max_beam_limit)
        return fail(t, SM_ERR_INVALID_ARGUMENT,
                    "tree parameter beam_limit %d exceeds the %d beams this tree was created for", p->beam_limit,
                    t->max_beam_limit);
    return SM_OK;
}

static sm_status expand(sm_tree *t, const char *prefix, const sm_tree_params *p, expansion *e) {
    sm_token *tokens = NULL;
    int32_t n = 0;
    sm_status st = tokenize_prefix(t, prefix, &tokens, &n);
    if (st != SM_OK) {
        free(tokens);
        return st;
    }
    if ((int64_t)n + p->max_depth > (int64_t)t->n_ctx) {
        free(tokens);
        return fail(t, SM_ERR_PROMPT_TOO_LONG,
                    "the prefix is %d tokens and the tree adds up to max_depth %d more, but the context holds %u",
                    n, p->max_depth, t->n_ctx);
    }
    e->out->n_prefix_tokens = e->n_prefix = n;
    t->n_free = 0;
    for (llama_seq_id s = (llama_seq_id)t->max_beam_limit; s > PREFIX_SEQ; s--) t->free_seqs[t->n_free++] = s;
    if (!reserve_rows(t, p->beam_limit))
        st = fail(t, SM_ERR_NO_MEMORY, "out of memory for %d distributions", p->beam_limit);
    if (st == SM_OK) st = decode_prefix(t, tokens, n, &e->out->n_prefix_reused);
    free(tokens);
    if (st != SM_OK) return st;
    e->live[0] = (beam){.node = -1, .seq = PREFIX_SEQ, .depth = 0, .score = 0.0};
    memcpy(e->live[0].norms, t->prefix_norms, sizeof t->prefix_norms);
    e->n_live = 1;
    return grow(e);
}

sm_status sm_tree_expand(sm_tree *t, const char *prefix, const sm_tree_params *p, sm_tree_result *out) {
    const double t0 = sm_now_ms();
    t->error[0] = '\0';
    if (out) memset(out, 0, sizeof *out);
    sm_status st = check_call(t, prefix, p, out);
    if (st != SM_OK) return st;
    expansion e = {
        .tree = t,
        .p = p,
        .vocab = t->members[0].model->vocab,
        .max_cand = p->split_limit > 0 && p->split_limit < p->beam_limit ? p->split_limit : p->beam_limit,
        .out = out,
    };
    e.live = malloc(sizeof(beam) * (size_t)p->beam_limit);
    e.next = malloc(sizeof(beam) * (size_t)p->beam_limit);
    e.cand = malloc(sizeof(sm_candidate) * (size_t)e.max_cand);
    e.offers = malloc(sizeof(offer) * (size_t)p->beam_limit * (size_t)e.max_cand);
    t->mix_sum = p->score_sum_probs;
    if (!e.live || !e.next || !e.cand || !e.offers)
        st = fail(t, SM_ERR_NO_MEMORY, "out of memory for %d beams", p->beam_limit);
    if (st == SM_OK) st = expand(t, prefix, p, &e);
    out->nodes = e.nodes;
    out->n_nodes = e.n_nodes;
    if (st == SM_OK) st = collect_suggestions(t, p, out);
    free(e.live);
    free(e.next);
    free(e.cand);
    free(e.offers);
    if (st != SM_OK) {
        sm_tree_result_free(out);
        return st;
    }
    out->elapsed_ms = sm_now_ms() - t0;
    return SM_OK;
}

void sm_tree_result_free(sm_tree_result *r) {
    if (!r) return;
    for (int32_t i = 0; i < r->n_suggestions; i++) suggestion_free(&r->suggestions[i]);
    free(r->suggestions);
    for (int32_t i = 0; i < r->n_nodes; i++) free(r->nodes[i].piece);
    free(r->nodes);
    memset(r, 0, sizeof *r);
}

void sm_tree_share_decoder(sm_tree *t, sm_batch *batch) { t->decoder = batch; }
