/*
 * The generation loop's private state, shared by session.c (the loop) and
 * intervene.c (lookahead, safety rules, tools and injection, which the loop
 * calls at fixed points). Nothing else includes this.
 */
#ifndef SELFMOD_SESSION_INTERNAL_H
#define SELFMOD_SESSION_INTERNAL_H

#include "internal.h"

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
    int32_t n_threads;          /* the most it may use (a batch uses them all) */
    int32_t threads_now;        /* what one-token decodes use now             */
    sm_thread_tuner tuner;
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
    sm_batch *batch;             /* the batch it decodes in, or NULL      */
    llama_seq_id seq;            /* its sequence (0 without a batch)      */
    int32_t busy_depth;          /* nested public calls that decode       */
    char error[512];
};

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

static inline int32_t sm_loop_generated(const generation *g) { return g->s->n_tokens - g->start - g->n_injected; }

/* session.c: what the interventions use of the loop. */
sm_status sm_session_fail(sm_session *s, sm_status status, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
int sm_loop_add_ban(position_record *r, sm_token t);
/* The policy's and the sampler's state as they were before position j was
 * sampled (the one rewind of both: backtracks, retractions, safety). */
void sm_loop_restore_position(generation *g, int32_t j);
/* Tells every operator that its last k observed tokens are gone. */
void sm_loop_operators_backtracked(generation *g, int32_t k);
sm_event sm_loop_base_event(const generation *g, sm_event_type type, int32_t index);
sm_status sm_loop_decode_append(sm_session *s, const sm_token *toks, int32_t n);
void sm_loop_emit(generation *g, const sm_event *e);
void sm_loop_remember_introspection(sm_session *s, const void *record, const float *hidden);
int sm_loop_reserve(sm_token **buf, int32_t *cap, int32_t n);
float *sm_loop_ring_slot(const sm_session *s, int32_t pos, int32_t m);

/* intervene.c: what the loop calls at its fixed points. */
void sm_lookahead_abandon(generation *g);
sm_status sm_loop_append_token(generation *g, int32_t i, sm_token t);
sm_status sm_loop_check_safety(generation *g, int32_t i, bool *rejected);
void sm_lookahead_free(branch_plan *pl);
sm_status sm_inject_next_chunk(generation *g);
bool sm_injection_due(const generation *g);
bool sm_intervention_fits(const sm_session *s, const sm_gen_params *gp, char *msg, size_t size);
int sm_lookahead_open(generation *g);
bool sm_lookahead_active(const generation *g);
sm_token sm_lookahead_planned_token(const generation *g);
sm_status sm_lookahead_run(generation *g, int32_t i);
sm_status sm_tool_run_if_marked(generation *g, int32_t i, const char *piece);
float sm_loop_token_temperature(generation *g, int32_t i);

#endif
