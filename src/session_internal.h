/*
 * The generation loop's private state, shared by session.c (the loop),
 * stage.c (the stage list, the policy, the operators, entropy steering) and
 * intervene.c (lookahead, injection, safety rules and tools). Nothing else
 * includes this.
 */
#ifndef SELFMOD_SESSION_INTERNAL_H
#define SELFMOD_SESSION_INTERNAL_H

#include "internal.h"

/* What was true at a generated position just before its token was
 * sampled: enough to rewind to it exactly (with the stages' snapshots,
 * loop->snaps + index * loop->snap_size). */
typedef struct position_record {
    sm_token token;
    sm_signals signals;
    float log_z;                /* of the raw distribution, for top-n views */
    sm_knobs knobs;             /* the loop's knobs (the policy's values)   */
    sm_rng_mark sample_rng;
    int32_t n_backtracks_here;  /* rewinds that landed on this position */
    int32_t n_rejected_here;    /* tokens a check took back here         */
    sm_token *bans;             /* tokens no longer allowed here         */
    int32_t n_bans, cap_bans;
    float mirostat_mu_next;     /* mirostat's mu after this token        */
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
    /* What its catching up works in: its own, as members catch up in
     * parallel with the others' decodes. On a batch, the context's logits
     * are the batch's, so its last distribution is kept in batch_logits. */
    char *text;
    size_t text_cap;
    sm_token *retok;
    int32_t retok_cap;
    float *batch_logits;
    sm_error err;
} member;

struct sm_session {
    sm_model *model;             /* model 0: tokenizer, vocabulary */
    sm_token *eog;               /* its end-of-generation tokens (ignore_eos); NULL until asked */
    int32_t n_eog;
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
    /* The last token of a generation that stopped after it is kept but
     * not decoded until something needs it (what llama-server does too):
     * tokens[n_tokens - 1] is then in no cache and logits is NULL. */
    bool deferred;

    int64_t n_decoded_total;
    sm_sampler_work work;
    sm_candidate *top_view;      /* operators' top-n view                 */
    sm_candidate *post_top;      /* the last draw's candidates (n_probs_post_sampling) */
    int32_t n_post_top;
    float *fused;                /* the fused distribution (several models) */
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
    /* lookahead's branch sequences: 1.. in a context of its own, or taken
     * from the batch (-1: not taken) */
    llama_seq_id branch_seqs[SM_MAX_BRANCHES];
    float *branch_rows;          /* on a batch: the branches' rows        */
    int32_t busy_depth;          /* nested public calls that decode       */
    sm_prompt_progress_fn progress; /* set_tokens reports its prompt's decode */
    void *progress_data;
    int32_t progress_total, progress_cached; /* of the prompt being reported; total 0: none */
    int32_t prompt_limit_ms;        /* sm_session_set_prompt_time_limit; 0: none  */
    double prompt_deadline_ms;      /* while set_tokens decodes with a limit, else 0 */
    char error[512];
};

/* The library's own stages use more of the loop than a user stage can:
 * these hooks are theirs alone. */
typedef struct stage_ext {
    /* Its removals are retractions: counted and bounded by the stage, not
     * as backtracks, and it reports them itself. */
    bool retracts;
    /* Its takebacks (check) are counted and reported by the stage. */
    bool reports_takebacks;
    /* Puts token t, which the stage already decoded, into the context;
     * returns false when it did not have it. */
    bool (*append)(void *state, struct sm_loop *g, sm_token t, sm_status *status);
    /* The context changed under the stage (an injection) or generation ended. */
    void (*drop)(void *state, struct sm_loop *g);
} stage_ext;

struct sm_stage {
    const sm_stage_vtable *vt;
    void *state;
    const stage_ext *ext;       /* NULL for a user stage */
    bool owned;                 /* a built-in made for one generation */
};

/* One generation in progress. The loop keeps the tokens (in the session),
 * the distributions (the session's ring), the knobs and random state, the
 * text and the stages; the stages keep everything else. */
typedef struct sm_loop {
    sm_session *s;
    const sm_gen_params *gp;
    sm_result *res;
    int32_t start;                  /* context position of generated token 0 (a
                                       context shift moves it down)          */
    int32_t n_before;               /* context tokens before the generation   */
    position_record *rec;
    int32_t cap_rec;
    unsigned char *snaps;           /* every stage's snapshot per position    */
    size_t snap_size;
    float *confidences;             /* p_chosen per generated position        */
    sm_token *gen_tokens;           /* token per generated position           */
    struct llama_sampler *grammar;  /* gp->grammar's state, or NULL           */
    int32_t grammar_n;              /* kept tokens it has accepted            */
    sm_tokens grammar_prefill;      /* gp->grammar_prefill's tokens, accepted first */
    sm_fusion_info *fusion;         /* agreement per generated position       */
    unsigned char *intro_rec;       /* stats record per generated position    */
    const float *dist;              /* the distribution sampled at this step  */
    sm_model_dist dists[SM_MAX_MODELS];
    bool participating[SM_MAX_MODELS];
    sm_knobs knobs;                 /* what the policy set; persists          */
    sm_sample_rng rng;
    sm_text text;
    sm_stage **stages;
    int32_t n_stages;
    const sm_stage *current;        /* the stage whose hook is running        */
    char why[256];                  /* sm_loop_describe of the current stage  */
    bool reported;                  /* the removing stage emitted its event   */
    sm_knobs knobs_before;          /* before the rewind being reported       */
    bool injected;                  /* this step put text into the context    */
    bool may_inject;                /* inside before_sample or after_token    */
    sm_status status;               /* the first failure inside a stage hook  */
    int32_t n_events, cap_events;
    sm_stop_reason stop;
    double t_first_token_ms;  /* when the first token was kept (t_max_predict_ms) */
    bool cancelled;
    /* Injected tokens sit between generated ones in the context, so the
     * generated index is the context position minus start and n_injected;
     * rewinds never remove generated tokens below floor. */
    int32_t n_injected;
    int32_t floor;
    size_t text_floor;              /* text length after the last injection   */
} generation;

static inline int32_t sm_loop_generated(const generation *g) { return g->s->n_tokens - g->start - g->n_injected; }

/* session.c: what the stages use of the loop. */
sm_status sm_session_fail(sm_session *s, sm_status status, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
int sm_loop_add_ban(position_record *r, sm_token t);
sm_event sm_loop_base_event(const generation *g, sm_event_type type, int32_t index);
/* The event of a rewind just done: knobs before and after it. */
sm_event sm_loop_rewind_event(const generation *g, sm_event_type type, int32_t index);
sm_status sm_loop_decode_append(sm_session *s, const sm_token *toks, int32_t n);
/* Decodes a deferred last token (a no-op without one). */
sm_status sm_session_flush_deferred(sm_session *s);
void sm_loop_emit(generation *g, const sm_event *e);
void sm_loop_remember_introspection(sm_session *s, const void *record, const float *hidden);
int sm_loop_reserve(sm_token **buf, int32_t *cap, int32_t n);
float *sm_loop_ring_slot(const sm_session *s, int32_t pos, int32_t m);
void sm_loop_stop_with(generation *g, sm_stop_reason reason);
/* Every stage drops what it built on the context (a lookahead branch). */
void sm_loop_drop_stage_work(generation *g);
/* Appends text to the context as injected tokens (an event of type mod). */
sm_status sm_loop_inject_as(generation *g, const char *text, size_t len, sm_mod_type mod, const char *what);
int32_t sm_loop_clamp_removal(const generation *g, int32_t i, int32_t k);

/* stage.c: the stage list of one generation. */
sm_status sm_stages_open(generation *g);
void sm_stages_close(generation *g);
sm_stage *sm_stage_builtin(const sm_stage_vtable *vt, const stage_ext *ext, void *state);
sm_stage *sm_policy_stage_new(generation *g);
sm_stage *sm_operators_stage_new(generation *g);
sm_stage *sm_entropy_stage_new(generation *g);
sm_stage *sm_steer_stage_new(generation *g);

/* intervene.c: the interventions as stages. */
sm_stage *sm_lookahead_stage_new(generation *g, void **lookahead_state);
sm_stage *sm_injection_stage_new(generation *g, const void *lookahead_state);
sm_stage *sm_safety_stage_new(generation *g);
sm_stage *sm_tools_stage_new(generation *g);
bool sm_intervention_fits(const sm_session *s, const sm_gen_params *gp, char *msg, size_t size);

#endif
