/*
 * Stages: the one interface through which everything acts on a generation
 * (include/selfmod.h, "Stages"). This file holds the stage handle, what a
 * stage may read of and do to the loop, the list a generation runs, and
 * three built-in stages: the operators, the self-modification policy and
 * entropy-steered temperature. Lookahead, injection, safety and tools are
 * in intervene.c.
 *
 * Invariant: a built-in stage's state is rebuilt for every generation and
 * everything in it that a rewind must put back is either in its snapshot
 * or rolled back in its on_rewind.
 */
#include "session_internal.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

sm_stage *sm_stage_new(const sm_stage_vtable *vt, void *state) {
    if (!vt) return NULL;
    sm_stage *st = calloc(1, sizeof *st);
    if (!st) return NULL;
    st->vt = vt;
    st->state = state;
    return st;
}

void sm_stage_free(sm_stage *st) {
    if (!st) return;
    if (st->vt->free_state) st->vt->free_state(st->state);
    free(st);
}

sm_stage *sm_stage_builtin(const sm_stage_vtable *vt, const stage_ext *ext, void *state) {
    sm_stage *st = sm_stage_new(vt, state);
    if (!st) {
        if (vt->free_state) vt->free_state(state);
        return NULL;
    }
    st->ext = ext;
    st->owned = true;
    return st;
}

/* ------------------------------------------------------------------ */
/* What a stage sees of the loop                                       */
/* ------------------------------------------------------------------ */

int32_t sm_loop_n_generated(const sm_loop *loop) { return sm_loop_generated(loop); }
const sm_token *sm_loop_tokens(const sm_loop *loop) { return loop->gen_tokens; }
const float *sm_loop_confidences(const sm_loop *loop) { return loop->confidences; }

const char *sm_loop_text(const sm_loop *loop, size_t *len) {
    if (len) *len = loop->text.len;
    return loop->text.bytes ? loop->text.bytes : "";
}

const sm_introspection *sm_loop_introspection(const sm_loop *loop) { return sm_session_introspection(loop->s); }

void sm_loop_describe(sm_loop *loop, const char *why) { snprintf(loop->why, sizeof loop->why, "%s", why ? why : ""); }

void sm_loop_stop(sm_loop *loop, const char *why) {
    if (why) sm_loop_describe(loop, why);
    sm_loop_stop_with(loop, SM_STOP_STAGE);
}

sm_status sm_loop_inject(sm_loop *loop, const char *text, size_t len) {
    if (!loop->may_inject) /* a candidate is being judged or decoded: text cannot go in under it */
        return sm_session_fail(loop->s, SM_ERR_STATE, "sm_loop_inject: only from before_sample or after_token");
    if (!text) return sm_session_fail(loop->s, SM_ERR_INVALID_ARGUMENT, "sm_loop_inject: no text");
    char what[96];
    snprintf(what, sizeof what, "%s", loop->current && loop->current->vt->name ? loop->current->vt->name : "stage");
    return sm_loop_inject_as(loop, text, len, SM_MOD_INJECT, what);
}

/* ------------------------------------------------------------------ */
/* The stage list of one generation                                    */
/* ------------------------------------------------------------------ */

/* ------------------------------------------------------------------ */
/* Forced tokens: the first ones of a generation, as given             */
/* ------------------------------------------------------------------ */

static void forced_before_sample(void *state, sm_loop *g, sm_knobs *knobs) {
    const sm_gen_params *gp = state;
    int32_t i = sm_loop_generated(g);
    if (i < gp->n_forced_tokens) knobs->forced = gp->forced_tokens[i];
}

static const sm_stage_vtable forced_vt = {.name = "forced", .before_sample = forced_before_sample};
static const stage_ext forced_ext = {0};

static sm_stage *forced_stage_new(generation *g) { return sm_stage_builtin(&forced_vt, &forced_ext, (void *)g->gp); }

static sm_status add_stage(generation *g, sm_stage *st) {
    if (!st) return sm_session_fail(g->s, SM_ERR_NO_MEMORY, "out of memory for the generation's stages");
    g->stages[g->n_stages++] = st;
    g->snap_size += st->vt->snapshot_size;
    return SM_OK;
}

/*
 * The order is the order of every hook: lookahead chooses a token before
 * injection (which waits for a chosen branch) and entropy steering (which
 * leaves a chosen token alone) look at it; operators judge before the
 * policy, so an operator wins a tie; safety checks a token before a tool
 * reads it; the caller's stages come last.
 */
sm_status sm_stages_open(generation *g) {
    const sm_gen_params *gp = g->gp;
    g->stages = calloc((size_t)(10 + gp->n_stages), sizeof *g->stages);
    if (!g->stages) return sm_session_fail(g->s, SM_ERR_NO_MEMORY, "out of memory for the generation's stages");
    sm_status st = SM_OK;
    void *lookahead = NULL;
    if (gp->n_forced_tokens > 0) st = add_stage(g, forced_stage_new(g)); /* first: nothing overrides it */
    if (st == SM_OK && gp->interventions.lookahead.k > 0) st = add_stage(g, sm_lookahead_stage_new(g, &lookahead));
    if (st == SM_OK && gp->interventions.inject_every > 0 && gp->interventions.inject_text && *gp->interventions.inject_text)
        st = add_stage(g, sm_injection_stage_new(g, lookahead));
    if (st == SM_OK && gp->policy.entropy_mode != 0) st = add_stage(g, sm_entropy_stage_new(g));
    if (st == SM_OK && gp->interventions.steer_rule.vector) st = add_stage(g, sm_steer_stage_new(g));
    if (st == SM_OK && gp->backtrack.n_operators > 0) st = add_stage(g, sm_operators_stage_new(g));
    if (st == SM_OK) st = add_stage(g, sm_policy_stage_new(g));
    if (st == SM_OK && gp->interventions.n_safety_rules > 0 && g->s->intro) st = add_stage(g, sm_safety_stage_new(g));
    if (st == SM_OK && gp->interventions.tools) st = add_stage(g, sm_tools_stage_new(g));
    for (int32_t i = 0; st == SM_OK && i < gp->n_stages; i++) {
        const sm_stage_vtable *vt = gp->stages[i]->vt;
        if (vt->snapshot_size && (!vt->save || !vt->restore))
            return sm_session_fail(g->s, SM_ERR_INVALID_ARGUMENT, "stages[%d] ('%s') has a snapshot_size but no save or restore",
                                   i, vt->name ? vt->name : "unnamed");
        st = add_stage(g, gp->stages[i]);
    }
    return st;
}

void sm_stages_close(generation *g) {
    for (int32_t i = 0; i < g->n_stages; i++) {
        sm_stage *st = g->stages[i];
        if (st->ext && st->ext->drop) st->ext->drop(st->state, g);
        if (st->owned) sm_stage_free(st);
    }
    free(g->stages);
    g->stages = NULL;
    g->n_stages = 0;
}

/* ------------------------------------------------------------------ */
/* The operators (backtracking-llm): one stage for all of them         */
/* ------------------------------------------------------------------ */

typedef struct operators_stage {
    const sm_gen_params *gp;
    sm_operator *decided;           /* whose count the last judge returned */
} operators_stage;

static void operators_reset(void *state, sm_loop *g) {
    (void)g;
    operators_stage *os = state;
    for (int32_t i = 0; i < os->gp->backtrack.n_operators; i++) {
        sm_operator *op = os->gp->backtrack.operators[i];
        if (op->vt->reset) op->vt->reset(op->state);
        op->description[0] = '\0';
    }
}

/* Whether the candidate at position is one the operators are heeded on:
 * every backtrack_every_n-th, counting from the first generated token. */
static bool heeded_at(const sm_backtrack_params *bt, int32_t position) { return (position + 1) % bt->every_n == 0; }

/* Every operator sees every candidate (with every_n_only: the heeded
 * ones); on the heeded ones the combine mode picks the count. */
static int32_t operators_judge(void *state, sm_loop *g, const sm_token_view *view) {
    (void)g;
    operators_stage *os = state;
    const sm_backtrack_params *bt = &os->gp->backtrack;
    os->decided = NULL;
    bool ask = heeded_at(bt, view->position);
    if (!ask && bt->every_n_only) return 0;
    int32_t best = 0;
    for (int32_t k = 0; k < bt->n_operators; k++) {
        sm_operator *op = bt->operators[k];
        int32_t n = op->vt->decide(op->state, view);
        if (!ask || n <= 0) continue;
        if ((bt->combine == SM_COMBINE_FIRST && best == 0) || (bt->combine == SM_COMBINE_MAX && n > best)) {
            best = n;
            os->decided = op;
        }
    }
    /* backtracking-llm dropped the candidate and then k tokens. */
    if (best > 0 && bt->input == SM_OPERATOR_INPUT_ORIGINAL) best++;
    return best;
}

static void operators_on_rewind(void *state, sm_loop *g, int32_t n, bool by_me) {
    operators_stage *os = state;
    const sm_backtrack_params *bt = &os->gp->backtrack;
    /* The operators are told how many of the candidates they saw are gone:
     * all n, or with every_n_only the heeded positions among [j, j + n). */
    int32_t j = sm_loop_generated(g);
    int32_t seen = bt->every_n_only ? (j + n) / bt->every_n - j / bt->every_n : n;
    for (int32_t o = 0; o < bt->n_operators && seen > 0; o++) {
        sm_operator *op = bt->operators[o];
        if (op->vt->on_backtrack) op->vt->on_backtrack(op->state, seen); /* [restore] */
    }
    if (!by_me || !os->decided) return;
    g->res->n_backtracks++;
    sm_event e = sm_loop_rewind_event(g, SM_EVENT_BACKTRACK, j);
    e.mod = SM_MOD_BACKTRACK;
    e.confidence = g->rec[j + n - 1].signals.p_chosen;
    e.description = os->decided->description;
    e.source = os->decided->vt->name ? os->decided->vt->name : "operator";
    e.n_removed = n;
    sm_loop_emit(g, &e);
    g->reported = true;
}

static const sm_stage_vtable operators_vt = {
    .name = "operators",
    .reset = operators_reset,
    .judge = operators_judge,
    .on_rewind = operators_on_rewind,
    .free_state = free,
};
static const stage_ext operators_ext = {0};

sm_stage *sm_operators_stage_new(generation *g) {
    operators_stage *os = calloc(1, sizeof *os);
    if (!os) return NULL;
    os->gp = g->gp;
    return sm_stage_builtin(&operators_vt, &operators_ext, os);
}

/* ------------------------------------------------------------------ */
/* The self-modification policy (the original llama_selfmod)           */
/* ------------------------------------------------------------------ */

/* The policy's knobs are the loop's (g->knobs, which the loop snapshots);
 * its own state (mem: the random state of exploration bursts, the
 * calibrated style's running statistics) is its snapshot. It decides on a
 * copy: the step takes effect only when the candidate is kept. */
typedef struct policy_stage {
    const sm_policy_params *p;
    sm_policy_state mem;
    sm_policy_state next;
    sm_policy_action action;
} policy_stage;

static void policy_save(const void *state, void *snap) { memcpy(snap, &((const policy_stage *)state)->mem, sizeof(sm_policy_state)); }
static void policy_restore(void *state, const void *snap) {
    memcpy(&((policy_stage *)state)->mem, snap, sizeof(sm_policy_state)); /* [restore] */
}

/* The policy's state with the loop's knobs in it. */
static sm_policy_state policy_now(const policy_stage *ps, const sm_loop *g) {
    sm_policy_state st = ps->mem;
    st.temperature = g->knobs.temperature;
    st.repeat_penalty = g->knobs.repeat_penalty;
    return st;
}

static int32_t policy_judge(void *state, sm_loop *g, const sm_token_view *view) {
    policy_stage *ps = state;
    ps->next = policy_now(ps, g);
    sm_policy_step(ps->p, g->confidences, g->gen_tokens, view->position + 1, g->res->n_retractions, &ps->next, &ps->action);
    return ps->action.retract;
}

static void policy_accept(void *state, sm_loop *g, const sm_token_view *view) {
    policy_stage *ps = state;
    g->knobs.temperature = ps->next.temperature;   /* [restore] the step applies to a kept token */
    g->knobs.repeat_penalty = ps->next.repeat_penalty; /* [restore] */
    ps->mem = ps->next;                                /* [restore] */
    const sm_policy_action *a = &ps->action;
    for (int32_t m = 0; m < a->n_mods; m++) {
        const sm_policy_mod *pm = &a->mods[m];
        sm_event e = sm_loop_base_event(g, SM_EVENT_MODIFICATION, view->position);
        e.mod = pm->type;
        e.confidence = a->window_mean;
        e.description = pm->description;
        e.source = "policy";
        e.temperature_before = pm->t_before;
        e.temperature_after = pm->t_after;
        e.repeat_penalty_before = pm->rp_before;
        e.repeat_penalty_after = pm->rp_after;
        sm_loop_emit(g, &e);
    }
}

static void policy_on_rewind(void *state, sm_loop *g, int32_t n, bool by_me) {
    if (!by_me) return;
    policy_stage *ps = state;
    sm_policy_state st = policy_now(ps, g);
    sm_policy_after_retraction(ps->p, &st);
    g->knobs.temperature = st.temperature;
    g->knobs.repeat_penalty = st.repeat_penalty;
    g->res->n_retractions++;
    int32_t j = sm_loop_generated(g);
    char desc[160];
    if (ps->action.loop)
        snprintf(desc, sizeof desc, "the last %d tokens repeated earlier text: retracted them, the first banned at #%d", n, j);
    else
        snprintf(desc, sizeof desc, "mean confidence %.3f < %.2f: retracted %d token%s, regenerating from #%d",
                 ps->action.window_mean, ps->p->critical_threshold, n, n == 1 ? "" : "s", j);
    sm_event e = sm_loop_rewind_event(g, SM_EVENT_RETRACTION, j);
    e.mod = SM_MOD_RETRACT;
    e.confidence = ps->action.window_mean;
    e.description = desc;
    e.source = "policy";
    e.n_removed = n;
    sm_loop_emit(g, &e);
    g->reported = true;
}

static const sm_stage_vtable policy_vt = {
    .name = "policy",
    .snapshot_size = sizeof(sm_policy_state),
    .save = policy_save,
    .restore = policy_restore,
    .judge = policy_judge,
    .accept = policy_accept,
    .on_rewind = policy_on_rewind,
    .free_state = free,
};
static const stage_ext policy_ext = {.retracts = true};

sm_stage *sm_policy_stage_new(generation *g) {
    policy_stage *ps = calloc(1, sizeof *ps);
    if (!ps) return NULL;
    ps->p = &g->gp->policy;
    ps->mem = (sm_policy_state){
        .rng = g->gp->sampling.seed ^ 0x5deece66dULL,
        .base_temperature = g->gp->sampling.temperature,
        .base_repeat_penalty = g->gp->sampling.repeat_penalty,
    };
    return sm_stage_builtin(&policy_vt, &policy_ext, ps);
}

/* ------------------------------------------------------------------ */
/* Entropy-steered temperature                                         */
/* ------------------------------------------------------------------ */

/* For the sampled token alone: what entropy and varentropy make of the
 * policy's temperature. A token a stage chose is not sampled. */
static void entropy_before_sample(void *state, sm_loop *g, sm_knobs *knobs) {
    const sm_policy_params *pp = state;
    if (knobs->forced >= 0) return;
    sm_signals sig;
    sm_signals_compute(g->dist, g->s->n_vocab, -1, &sig, NULL);
    sm_policy_mod mod;
    if (!sm_policy_entropy_steer(pp, sig.entropy, sig.varentropy, &knobs->temperature, &mod)) return;
    sm_event e = sm_loop_base_event(g, SM_EVENT_MODIFICATION, sm_loop_generated(g));
    e.mod = mod.type;
    e.confidence = sig.p_top1;
    e.description = mod.description;
    e.source = "entropy";
    e.temperature_before = mod.t_before;
    e.temperature_after = mod.t_after;
    sm_loop_emit(g, &e);
}

static const sm_stage_vtable entropy_vt = {
    .name = "entropy",
    .before_sample = entropy_before_sample,
};
static const stage_ext entropy_ext = {0};

sm_stage *sm_entropy_stage_new(generation *g) {
    return sm_stage_builtin(&entropy_vt, &entropy_ext, (void *)&g->gp->policy);
}
