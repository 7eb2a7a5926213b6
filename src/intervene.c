/*
 * Interventions inside the one generation loop (docs/INTROSPECTION.md), each
 * a stage with its own state: lookahead over branched sequences, gradual
 * injection, activation safety rules, and tools on a marker in the output.
 * Also the loop's injection primitive they share.
 */
#include "session_internal.h"

#include <ctype.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ------------------------------------------------------------------ */
/* Introspection and intervention inside the loop                      */
/* ------------------------------------------------------------------ */

static const char DEFAULT_TOOL_MARKER[] = "[INTROSPECT:";
static const char DEFAULT_TOOL_MARKER_END[] = "]";

/* The lookahead stage: the branch chosen for commitment, per branch and
 * step its token, the distribution after it and its stats (stride = steps
 * kept per branch). */
typedef struct lookahead_stage {
    const sm_lookahead_params *la;
    sm_token *tokens;
    float *logits;
    unsigned char *records;
    float *hidden;
    int32_t stride, depth;
    int32_t chosen;                 /* the branch being committed; -1 = none  */
    int32_t next;                   /* its next step to commit                */
    sm_lookahead_info info;
} lookahead_stage;

static bool plan_active(const lookahead_stage *pl) { return pl->chosen >= 0; }

static size_t plan_at(const lookahead_stage *pl, int32_t branch, int32_t step) {
    return (size_t)branch * (size_t)pl->stride + (size_t)step;
}

static const float *plan_logits(const lookahead_stage *pl, const sm_session *s, int32_t branch, int32_t step) {
    return pl->logits + plan_at(pl, branch, step) * (size_t)s->n_vocab;
}

/* Cache operations on the branches; on a batch they wait for the decode in
 * progress (its context is shared with the decoder thread). */
static void branch_rm(sm_session *s, llama_seq_id seq) {
    if (s->batch) sm_batch_lock_context(s->batch);
    llama_memory_seq_rm(s->members[0].mem, seq, -1, -1);
    if (s->batch) sm_batch_unlock_context(s->batch);
}

static void branch_cp(sm_session *s, llama_seq_id from, llama_seq_id to, llama_pos p0, llama_pos p1) {
    if (s->batch) sm_batch_lock_context(s->batch);
    llama_memory_seq_cp(s->members[0].mem, from, to, p0, p1);
    if (s->batch) sm_batch_unlock_context(s->batch);
}

/* Drops the branch being committed from the cache; the cells the
 * session's sequence has taken over from it stay. */
static void lookahead_drop(void *state, generation *g) {
    lookahead_stage *pl = state;
    if (!plan_active(pl)) return;
    branch_rm(g->s, g->s->branch_seqs[pl->chosen]);
    pl->chosen = -1;
}

static void lookahead_free(void *state) {
    lookahead_stage *pl = state;
    free(pl->tokens);
    free(pl->logits);
    free(pl->records);
    free(pl->hidden);
    free(pl);
}

/* One batched decode: tokens[b] at position pos in branch b's sequence,
 * every row an output (on a batch: with the other sessions' tokens);
 * keeps each row's distribution and stats as step `step` of branch b.
 * Returns llama_decode's code. */
static int decode_branches(generation *g, lookahead_stage *pl, const sm_token *tokens, int32_t n, int32_t pos,
                           int32_t step) {
    sm_session *s = g->s;
    int rc;
    if (s->intro) sm_introspector_expect_rows(s->intro, n); /* every row is a branch's step */
    if (s->batch) { /* rows come back in branch_rows; an observed session's decode is its own */
        rc = sm_batch_decode_rows(s->batch, 0, s->branch_seqs, pos, tokens, n, s->branch_rows, s->intro);
    } else {
        llama_batch *b = &s->branch_batch;
        b->n_tokens = 0;
        for (int32_t j = 0; j < n; j++) sm_llama_batch_add(b, tokens[j], pos, s->branch_seqs[j], true);
        rc = sm_decode(s->members[0].ctx, b);
    }
    if (rc != 0) return rc;
    s->n_decoded_total += n;
    g->res->n_decoded += n;
    for (int32_t j = 0; j < n; j++) {
        size_t at = plan_at(pl, j, step);
        pl->tokens[at] = tokens[j];
        const float *row = s->batch ? s->branch_rows + (size_t)j * (size_t)s->n_vocab
                                    : llama_get_logits_ith(s->members[0].ctx, j);
        memcpy(pl->logits + at * (size_t)s->n_vocab, row, sizeof(float) * (size_t)s->n_vocab);
        if (!s->intro) continue;
        size_t rs = sm_introspector_record_size(s->intro), hf = sm_introspector_hidden_floats(s->intro);
        memcpy(pl->records + at * rs, sm_introspector_record(s->intro, j), rs);
        if (hf) memcpy(pl->hidden + at * hf, sm_introspector_hidden(s->intro, j), sizeof(float) * hf);
    }
    return 0;
}

static void drop_branches(sm_session *s, int32_t n, int32_t keep) {
    for (int32_t b = 0; b < n; b++)
        if (b != keep) branch_rm(s, s->branch_seqs[b]);
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
                     g->gp->interventions.lookahead.entropy, info->n_branches, info->depth);
    len = n > 0 ? (size_t)n : 0;
    for (int32_t b = 0; b < info->n_branches && len < sizeof desc; b++) {
        char piece[64];
        int32_t pl = sm_token_piece(g->s->model->vocab, info->first[b], piece, (int32_t)sizeof piece - 1);
        piece[pl < 0 ? 0 : pl] = '\0';
        n = snprintf(desc + len, sizeof desc - len, " '%s' %.3f%s", piece, info->score[b],
                     b == info->chosen ? " (chosen)" : "");
        if (n > 0) len += (size_t)n;
    }
    sm_event e = sm_loop_base_event(g, SM_EVENT_MODIFICATION, i);
    e.mod = SM_MOD_LOOKAHEAD;
    e.confidence = info->score[info->chosen];
    e.description = desc;
    e.source = "lookahead";
    e.lookahead = info;
    sm_loop_emit(g, &e);
}

/* Values standardised over the n branches (all 0 when they are equal). */
static void standardise(double *v, int32_t n) {
    double mean = 0, var = 0;
    for (int32_t b = 0; b < n; b++) mean += v[b] / n;
    for (int32_t b = 0; b < n; b++) var += (v[b] - mean) * (v[b] - mean) / n;
    double sd = sqrt(var);
    for (int32_t b = 0; b < n; b++) v[b] = sd > 1e-12 ? (v[b] - mean) / sd : 0.0;
}

/* SM_LOOKAHEAD_COHERENCE: likelihood, stability of the observed layers'
 * norms from token to token, and attention focus, each standardised. */
static void coherence_scores(generation *g, const lookahead_stage *pl, int32_t n, int32_t depth, const double *logprob,
                             double *out) {
    sm_session *s = g->s;
    const sm_introspection *start = sm_session_introspection(s); /* the context's last token */
    double lp[SM_MAX_BRANCHES], stability[SM_MAX_BRANCHES], focus[SM_MAX_BRANCHES];
    size_t rs = sm_introspector_record_size(s->intro);
    for (int32_t b = 0; b < n; b++) {
        lp[b] = logprob[b] / depth;
        double change = 0, entropy = 0;
        int32_t n_change = 0, n_entropy = 0;
        sm_layer_stats prev[64];
        int32_t n_prev = 0;
        if (start)
            for (int32_t l = 0; l < start->n_layers && l < 64; l++) prev[n_prev++] = start->layers[l];
        for (int32_t step = 0; step < depth; step++) {
            sm_introspection now;
            sm_introspector_view(s->intro, pl->records + plan_at(pl, b, step) * rs, NULL, &now);
            for (int32_t l = 0; l < now.n_layers && l < 64; l++) {
                if (l < n_prev && prev[l].norm > 0) {
                    change += fabs(now.layers[l].norm - prev[l].norm) / prev[l].norm;
                    n_change++;
                }
                prev[l] = now.layers[l];
            }
            n_prev = now.n_layers < 64 ? now.n_layers : 64;
            for (int32_t k = 0; now.attn_entropy && k < now.n_layers * now.n_heads; k++) {
                entropy += now.attn_entropy[k];
                n_entropy++;
            }
        }
        stability[b] = n_change ? -change / n_change : 0.0;
        focus[b] = n_entropy ? -entropy / n_entropy : 0.0;
    }
    standardise(lp, n);
    standardise(stability, n);
    standardise(focus, n);
    for (int32_t b = 0; b < n; b++) out[b] = 0.5 * lp[b] + 0.3 * stability[b] + 0.2 * focus[b];
}

/*
 * At an uncertain position: the top-k candidates become sequences 1..k of
 * the cache (sharing sequence 0's cells), each continued greedily for
 * depth tokens, one batched decode per step. The best branch is planned:
 * its tokens then go through the normal loop one by one, taking over the
 * branch's cells instead of being decoded. Nothing happens where the
 * entropy is low or the cache has no room for the branches.
 */
static sm_status lookahead_run(generation *g, lookahead_stage *pl, int32_t i) {
    sm_session *s = g->s;
    const sm_lookahead_params *la = pl->la;
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
        branch_cp(s, s->seq, s->branch_seqs[b], -1, -1);
        logprob[b] = s->logits[first[b]] - stats.log_z;
        margin[b] = 0.0;
        next[b] = first[b];
    }
    for (int32_t step = 0; step < depth; step++) {
        int rc = decode_branches(g, pl, next, n, s->n_tokens + step, step);
        if (rc != 0) {
            drop_branches(s, n, -1);
            if (rc == 1) return SM_OK; /* no room in the cache: sample as usual */
            return sm_session_fail(s, SM_ERR_DECODE, "llama_decode failed (code %d) while branching at position %d", rc, i);
        }
        for (int32_t b = 0; b < n; b++) {
            sm_signals bs;
            sm_signals_compute(plan_logits(pl, s, b, step), s->n_vocab, -1, &bs, NULL);
            margin[b] += bs.p_top1 - bs.p_top2;
            if (step + 1 == depth) continue;
            next[b] = bs.top1_token; /* greedy inside the branch */
            logprob[b] += log(bs.p_top1);
        }
    }
    sm_lookahead_info *info = &pl->info;
    *info = (sm_lookahead_info){.n_branches = n, .depth = depth, .entropy = sig.entropy};
    double coherence[SM_MAX_BRANCHES];
    if (la->score == SM_LOOKAHEAD_COHERENCE) coherence_scores(g, pl, n, depth, logprob, coherence);
    for (int32_t b = 0; b < n; b++) {
        info->first[b] = first[b];
        info->score[b] = (float)(la->score == SM_LOOKAHEAD_COHERENCE ? coherence[b]
                                 : (la->score == SM_LOOKAHEAD_MARGIN ? margin[b] : logprob[b]) / depth);
        if (info->score[b] > info->score[info->chosen]) info->chosen = b; /* ties: the more probable first token */
    }
    drop_branches(s, n, info->chosen);
    pl->chosen = info->chosen;
    pl->next = 0;
    pl->depth = depth;
    g->res->n_lookaheads++;
    emit_lookahead(g, i, info);
    return SM_OK;
}

/* A token a lookahead already decoded in branch sequence `from` enters
 * sequence 0 at the end of the context, with the distribution the branch
 * computed after it. */
static sm_status append_predecoded(sm_session *s, sm_token t, llama_seq_id from, const float *next) {
    if (s->n_tokens + 1 > s->n_ctx) return sm_session_fail(s, SM_ERR_PROMPT_TOO_LONG, "no room left in the context");
    if (sm_loop_reserve(&s->tokens, &s->cap_tokens, s->n_tokens + 1) != 0) return sm_session_fail(s, SM_ERR_NO_MEMORY, "out of memory");
    branch_cp(s, from, s->seq, s->n_tokens, s->n_tokens + 1);
    s->tokens[s->n_tokens++] = t;
    float *dst = sm_loop_ring_slot(s, s->n_tokens, 0);
    memcpy(dst, next, sizeof(float) * (size_t)s->n_vocab);
    s->ring_unmapped[(size_t)(s->n_tokens % s->ring_cap) * (size_t)s->n_models] = 0.0f;
    s->ring_pos[s->n_tokens % s->ring_cap] = s->n_tokens;
    s->logits = dst;
    return SM_OK;
}

/* The token the loop keeps enters sequence 0 from the branch that decoded
 * it; when the plan is all in sequence 0 the branch goes. */
static bool lookahead_append(void *state, generation *g, sm_token t, sm_status *status) {
    lookahead_stage *pl = state;
    sm_session *s = g->s;
    if (!plan_active(pl)) return false;
    size_t at = plan_at(pl, pl->chosen, pl->next);
    *status = append_predecoded(s, t, s->branch_seqs[pl->chosen], pl->logits + at * (size_t)s->n_vocab);
    if (*status != SM_OK) return true;
    if (s->intro) {
        size_t hf = sm_introspector_hidden_floats(s->intro);
        sm_loop_remember_introspection(s, pl->records + at * sm_introspector_record_size(s->intro),
                                       hf ? pl->hidden + at * hf : NULL);
    }
    if (++pl->next == pl->depth) lookahead_drop(pl, g); /* all of it is in sequence 0 now */
    return true;
}

/* Chooses the next token: the plan's, or after branching at an uncertain
 * position, the best branch's first. */
static void lookahead_before_sample(void *state, sm_loop *g, sm_knobs *knobs) {
    lookahead_stage *pl = state;
    if (!plan_active(pl)) {
        sm_status st = lookahead_run(g, pl, sm_loop_generated(g));
        if (st != SM_OK) {
            g->status = st;
            return;
        }
    }
    if (plan_active(pl)) knobs->forced = pl->tokens[plan_at(pl, pl->chosen, pl->next)];
}

static void lookahead_on_rewind(void *state, sm_loop *g, int32_t n, bool by_me) {
    (void)n;
    (void)by_me;
    lookahead_drop(state, g);
}

static const sm_stage_vtable lookahead_vt = {
    .name = "lookahead",
    .before_sample = lookahead_before_sample,
    .on_rewind = lookahead_on_rewind,
    .free_state = lookahead_free,
};
static const stage_ext lookahead_ext = {.append = lookahead_append, .drop = lookahead_drop};

sm_stage *sm_lookahead_stage_new(generation *g, void **lookahead_state) {
    const sm_lookahead_params *la = &g->gp->interventions.lookahead;
    sm_session *s = g->s;
    lookahead_stage *pl = calloc(1, sizeof *pl);
    if (!pl) return NULL;
    pl->la = la;
    pl->chosen = -1;
    size_t n = (size_t)la->k * (size_t)la->depth;
    pl->stride = la->depth;
    pl->tokens = malloc(sizeof(sm_token) * n);
    pl->logits = malloc(sizeof(float) * n * (size_t)s->n_vocab);
    bool ok = pl->tokens && pl->logits;
    if (ok && s->intro) {
        pl->records = malloc(sm_introspector_record_size(s->intro) * n);
        size_t hidden_floats = sm_introspector_hidden_floats(s->intro);
        if (hidden_floats) pl->hidden = malloc(sizeof(float) * hidden_floats * n);
        ok = pl->records && (!hidden_floats || pl->hidden);
    }
    if (!ok) {
        lookahead_free(pl);
        return NULL;
    }
    *lookahead_state = pl;
    return sm_stage_builtin(&lookahead_vt, &lookahead_ext, pl);
}

/* The safety stage: the rules, on the stats of the token just decoded. A
 * rule that fires takes the token back; it is banned there and sampled
 * again, up to safety_max_retries times, or generation stops. */
typedef struct safety_stage {
    const sm_gen_params *gp;
    const sm_safety_rule *fired;
    bool stopping;
    char why[256];
} safety_stage;

static bool safety_check(void *state, sm_loop *g, const sm_token_view *view) {
    safety_stage *ss = state;
    const sm_gen_params *gp = ss->gp;
    sm_session *s = g->s;
    int32_t i = view->position;
    size_t rs = sm_introspector_record_size(s->intro);
    float value;
    char why[160];
    int32_t rule = sm_safety_check(s->intro, gp->interventions.safety_rules, gp->interventions.n_safety_rules, g->intro_rec, i,
                                   g->intro_rec + rs * (size_t)i, &value, why, sizeof why);
    if (rule < 0) return false;
    const position_record *r = &g->rec[i];
    ss->fired = &gp->interventions.safety_rules[rule];
    ss->stopping = ss->fired->action == SM_SAFETY_STOP || r->n_rejected_here >= gp->interventions.safety_max_retries;
    if (ss->stopping) snprintf(ss->why, sizeof ss->why, "%s: token %d removed, stopping", why, r->token);
    else snprintf(ss->why, sizeof ss->why, "%s: token %d removed and banned here, sampling again (%d of %d)", why,
                  r->token, r->n_rejected_here + 1, gp->interventions.safety_max_retries);
    if (ss->stopping) sm_loop_stop_with(g, SM_STOP_SAFETY);
    return true;
}

static void safety_on_rewind(void *state, sm_loop *g, int32_t n, bool by_me) {
    if (!by_me) return;
    safety_stage *ss = state;
    g->res->n_safety_triggers++;
    int32_t i = sm_loop_generated(g);
    sm_event e = sm_loop_rewind_event(g, SM_EVENT_BACKTRACK, i);
    e.mod = SM_MOD_SAFETY;
    e.confidence = g->rec[i].signals.p_chosen;
    e.description = ss->why;
    e.source = "safety";
    e.n_removed = n;
    sm_loop_emit(g, &e);
    g->reported = true;
}

static const sm_stage_vtable safety_vt = {
    .name = "safety",
    .check = safety_check,
    .on_rewind = safety_on_rewind,
    .free_state = free,
};
static const stage_ext safety_ext = {.reports_takebacks = true};

sm_stage *sm_safety_stage_new(generation *g) {
    safety_stage *ss = calloc(1, sizeof *ss);
    if (!ss) return NULL;
    ss->gp = g->gp;
    return sm_stage_builtin(&safety_vt, &safety_ext, ss);
}

/* Appends text to the context as injected tokens: part of the context and
 * of the output text, never generated tokens, and never rewound (rewinds
 * stop at the last injection). */
sm_status sm_loop_inject_as(generation *g, const char *text, size_t len, sm_mod_type mod, const char *what) {
    sm_session *s = g->s;
    sm_loop_drop_stage_work(g); /* a branch planned on the old context is void */
    sm_tokens tokens;
    sm_error err = {0};
    sm_status st = sm_tokenize(s->model, text, len, false, false, &tokens, &err);
    if (st != SM_OK) return sm_session_fail(s, st, "%s", err.message);
    char *copy = strndup(text, len);
    if (!copy) {
        sm_tokens_free(&tokens);
        return sm_session_fail(s, SM_ERR_NO_MEMORY, "out of memory");
    }
    sm_token *toks = tokens.data;
    int32_t n = tokens.n;
    if (n > 0 && s->n_tokens + n >= s->n_ctx) g->stop = SM_STOP_CONTEXT_FULL;
    else if (n > 0) st = sm_loop_decode_append(s, toks, n);
    free(toks);
    if (st == SM_OK && n > 0 && g->stop == SM_STOP_NONE) {
        g->injected = true;
        g->n_injected += n;
        g->floor = sm_loop_generated(g);
        g->res->n_injected_tokens += n;
        g->res->n_decoded += n;
        if (sm_text_push(&g->text, copy, len) != 0) st = sm_session_fail(s, SM_ERR_NO_MEMORY, "out of memory");
        g->text_floor = g->text.len;
        char desc[200];
        snprintf(desc, sizeof desc, "%s: %d tokens injected", what, n);
        sm_event e = sm_loop_base_event(g, SM_EVENT_MODIFICATION, sm_loop_generated(g));
        e.mod = mod;
        e.description = desc;
        e.source = mod == SM_MOD_TOOL ? "tool" : mod == SM_MOD_INJECT && g->current ? g->current->vt->name : "inject";
        e.piece = copy;
        sm_loop_emit(g, &e);
    }
    free(copy);
    if (st != SM_OK && g->status == SM_OK) g->status = st;
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

/* The injection stage: what is left of inject_text, and when the next
 * sentence is due. It waits while a lookahead branch is being committed. */
typedef struct injection_stage {
    const sm_gen_params *gp;
    const lookahead_stage *lookahead;
    const char *next;
    int32_t next_at;
    int32_t n_chunks;
} injection_stage;

static void injection_before_sample(void *state, sm_loop *g, sm_knobs *knobs) {
    (void)knobs;
    injection_stage *is = state;
    if (!*is->next || sm_loop_generated(g) < is->next_at || (is->lookahead && plan_active(is->lookahead))) return;
    const char *chunk = is->next;
    size_t len = chunk_length(chunk);
    is->next += len;
    is->n_chunks++;
    char what[96];
    snprintf(what, sizeof what, "chunk %d of inject_text after %d generated tokens", is->n_chunks, sm_loop_generated(g));
    sm_loop_inject_as(g, chunk, len, SM_MOD_INJECT, what);
    is->next_at = sm_loop_generated(g) + is->gp->interventions.inject_every;
}

static const sm_stage_vtable injection_vt = {
    .name = "inject",
    .before_sample = injection_before_sample,
    .free_state = free,
};
static const stage_ext injection_ext = {0};

sm_stage *sm_injection_stage_new(generation *g, const void *lookahead_state) {
    injection_stage *is = calloc(1, sizeof *is);
    if (!is) return NULL;
    is->gp = g->gp;
    is->lookahead = lookahead_state;
    is->next = g->gp->interventions.inject_text;
    is->next_at = g->gp->interventions.inject_every;
    return sm_stage_builtin(&injection_vt, &injection_ext, is);
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

/* The tools stage: after a token was reported, when the output since the
 * last injection holds a complete tool marker, the tool runs and its text
 * is injected. marker_from: where the next marker may begin. */
typedef struct tools_stage {
    const sm_gen_params *gp;
    size_t marker_from;
    size_t floor_seen;
} tools_stage;

static void tools_after_token(void *state, sm_loop *g, const sm_token_view *view) {
    tools_stage *ts = state;
    const sm_gen_params *gp = ts->gp;
    int32_t i = view->position;
    const char *piece = view->piece;
    if (g->text_floor != ts->floor_seen) ts->marker_from = ts->floor_seen = g->text_floor; /* text was injected */
    const char *open = gp->interventions.tool_marker ? gp->interventions.tool_marker : DEFAULT_TOOL_MARKER;
    const char *close = gp->interventions.tool_marker_end ? gp->interventions.tool_marker_end : DEFAULT_TOOL_MARKER_END;
    size_t open_len = strlen(open), close_len = strlen(close);
    if (!strchr(piece, close[close_len - 1])) return; /* a marker can only have ended with this token */
    const char *text = g->text.bytes;
    size_t len = g->text.len, from = ts->marker_from <= len ? ts->marker_from : g->text_floor;
    const char *o = find_bytes(text + from, len - from, open, open_len);
    if (!o) return;
    const char *args = o + open_len;
    const char *c = find_bytes(args, (size_t)(text + len - args), close, close_len);
    if (!c) return;
    char *arg_text = trimmed_copy(args, c);
    if (!arg_text) {
        g->status = sm_session_fail(g->s, SM_ERR_NO_MEMORY, "out of memory");
        return;
    }
    ts->marker_from = (size_t)(c - text) + close_len;
    sm_tool_context ctx = {
        .args = arg_text,
        .token_index = i + 1,
        .introspection = sm_session_introspection(g->s),
        .text = text,
        .text_len = len,
    };
    char *out = (gp->interventions.tool ? gp->interventions.tool : sm_tool_introspect)(&ctx, gp->interventions.tool_user_data);
    g->res->n_tool_calls++;
    char what[120];
    snprintf(what, sizeof what, "tool call \"%.80s\"", arg_text);
    if (out && *out) {
        sm_loop_inject_as(g, out, strlen(out), SM_MOD_TOOL, what);
    } else {
        char desc[160];
        snprintf(desc, sizeof desc, "%s: the tool returned nothing", what);
        sm_event e = sm_loop_base_event(g, SM_EVENT_MODIFICATION, i + 1);
        e.mod = SM_MOD_TOOL;
        e.description = desc;
        e.source = "tool";
        e.piece = "";
        sm_loop_emit(g, &e);
    }
    free(out);
    free(arg_text);
}

/* A rewind can remove a marker's closing token: the marker may end again. */
static void tools_on_rewind(void *state, sm_loop *g, int32_t n, bool by_me) {
    (void)n;
    (void)by_me;
    tools_stage *ts = state;
    if (ts->marker_from > g->text.len) ts->marker_from = g->text_floor;
}

static const sm_stage_vtable tools_vt = {
    .name = "tool",
    .after_token = tools_after_token,
    .on_rewind = tools_on_rewind,
    .free_state = free,
};
static const stage_ext tools_ext = {0};

sm_stage *sm_tools_stage_new(generation *g) {
    tools_stage *ts = calloc(1, sizeof *ts);
    if (!ts) return NULL;
    ts->gp = g->gp;
    return sm_stage_builtin(&tools_vt, &tools_ext, ts);
}

/* What needs the session: lookahead room, observed layers for the rules. */
bool sm_intervention_fits(const sm_session *s, const sm_gen_params *gp, char *msg, size_t size) {
    if (gp->interventions.lookahead.k > 0 && gp->interventions.lookahead.score == SM_LOOKAHEAD_COHERENCE && !s->intro) {
        snprintf(msg, size, "lookahead scored by coherence reads the branches' activations: the session must observe layers");
        return false;
    }
    const sm_steer_rule *sr = &gp->interventions.steer_rule;
    if (sr->vector && s->batch) {
        snprintf(msg, size, "a steer rule changes the context's control vector: a session of a batch shares it");
        return false;
    }
    if (sr->vector && sr->signal == SM_STEER_SIGNAL_LAYER_NORM && (!s->intro || sm_introspector_slot(s->intro, sr->layer) < 0)) {
        snprintf(msg, size, "the steer rule watches layer %d, which the session does not observe (add it to the "
                 "introspection layers)", sr->layer);
        return false;
    }
    if (gp->interventions.lookahead.k > s->params.max_branches) {
        snprintf(msg, size, "lookahead with %d branches needs a session made with max_branches >= %d (this one has %d)",
                 gp->interventions.lookahead.k, gp->interventions.lookahead.k, s->params.max_branches);
        return false;
    }
    return gp->interventions.n_safety_rules == 0 || sm_safety_rules_check_layers(s->intro, gp->interventions.safety_rules, gp->interventions.n_safety_rules, msg, size);
}


/* ------------------------------------------------------------------ */
/* A control vector whose strength follows a rule                      */
/* ------------------------------------------------------------------ */

typedef struct steer_stage {
    const sm_steer_rule *r;
    sm_session *s;
    float strength;         /* what the rule set last (the snapshot)       */
    float applied;          /* what the context holds; NAN: nothing yet    */
    float *scaled;          /* strength * vector                           */
    char desc[160];
} steer_stage;

/* Puts strength * vector into every model's context (0: none at all). */
static sm_status steer_apply(steer_stage *st, float strength) {
    if (st->applied == strength) return SM_OK;
    const sm_steer_rule *r = st->r;
    sm_status status;
    if (strength == 0.0f) {
        status = sm_session_set_control_vector(st->s, NULL, 0, r->n_embd, -1, -1);
    } else {
        for (int32_t i = 0; i < r->len; i++) st->scaled[i] = strength * r->vector[i];
        status = sm_session_set_control_vector(st->s, st->scaled, r->len, r->n_embd, r->il_start, r->il_end);
    }
    if (status == SM_OK) st->applied = strength;
    return status;
}

/* The signal the rule reads now; false when there is none yet. */
static bool steer_signal(steer_stage *st, sm_loop *g, float *value) {
    const sm_steer_rule *r = st->r;
    switch (r->signal) {
    case SM_STEER_SIGNAL_ENTROPY: {
        sm_signals sig;
        sm_signals_compute(g->dist, st->s->n_vocab, -1, &sig, NULL);
        *value = sig.entropy;
        return true;
    }
    case SM_STEER_SIGNAL_CONFIDENCE: {
        int32_t n = sm_loop_n_generated(g);
        if (n == 0) return false;
        *value = sm_loop_confidences(g)[n - 1];
        return true;
    }
    case SM_STEER_SIGNAL_LAYER_NORM: {
        const sm_introspection *in = sm_loop_introspection(g);
        for (int32_t l = 0; in && l < in->n_layers; l++)
            if (in->layers[l].layer == r->layer || (r->layer < 0 && l == in->n_layers + r->layer)) {
                *value = in->layers[l].norm;
                return true;
            }
        return false;
    }
    }
    return false;
}

static const char *steer_signal_name(sm_steer_signal s) {
    return s == SM_STEER_SIGNAL_ENTROPY ? "entropy" : s == SM_STEER_SIGNAL_CONFIDENCE ? "confidence" : "layer norm";
}

static void steer_before_sample(void *state, sm_loop *g, sm_knobs *knobs) {
    (void)knobs;
    steer_stage *st = state;
    const sm_steer_rule *r = st->r;
    float v;
    if (!steer_signal(st, g, &v) || !isfinite(v)) { /* no signal yet: the context holds the strength as it is */
        if (steer_apply(st, st->strength) != SM_OK) sm_loop_stop(g, "the steer rule could not set the control vector");
        return;
    }
    float next;
    if (r->gain != 0.0f) {
        next = st->strength + r->gain * (r->target - v);
        next = next < r->min_strength ? r->min_strength : next > r->max_strength ? r->max_strength : next;
    } else {
        next = (r->below ? v < r->threshold : v > r->threshold) ? r->on : r->off;
    }
    if (next == st->strength && next == st->applied) return;
    float before = st->strength;
    st->strength = next;
    sm_status status = steer_apply(st, next);
    if (status != SM_OK) {
        sm_loop_stop(g, "the steer rule could not set the control vector");
        return;
    }
    if (r->gain != 0.0f)
        snprintf(st->desc, sizeof st->desc, "steer: %s %.4g (target %.4g): strength %.3f -> %.3f", steer_signal_name(r->signal),
                 v, r->target, before, next);
    else
        snprintf(st->desc, sizeof st->desc, "steer: %s %.4g %s %.4g: strength %.3f -> %.3f", steer_signal_name(r->signal), v,
                 (r->below ? v < r->threshold : v > r->threshold) ? (r->below ? "<" : ">") : (r->below ? ">=" : "<="),
                 r->threshold, before, next);
    sm_event e = sm_loop_base_event(g, SM_EVENT_MODIFICATION, sm_loop_generated(g));
    e.mod = SM_MOD_STEER;
    e.confidence = v;
    e.description = st->desc;
    e.source = "steer";
    sm_loop_emit(g, &e);
}

static void steer_save(const void *state, void *snapshot) { memcpy(snapshot, &((const steer_stage *)state)->strength, sizeof(float)); }

/* A rewind puts the strength back; the next before_sample, which comes
 * before any decode, puts the context's vector in line with it. */
static void steer_restore(void *state, const void *snapshot) {
    steer_stage *st = state;
    memcpy(&st->strength, snapshot, sizeof(float)); /* [restore] */
}

static void steer_reset(void *state, sm_loop *g) {
    (void)g;
    steer_stage *st = state;
    st->strength = st->r->off;
    st->applied = NAN;
    steer_apply(st, st->strength);
}

/* The generation is over: the context is left without the rule's vector. */
static void steer_drop(void *state, sm_loop *g) {
    (void)g;
    steer_apply(state, 0.0f);
}

static void steer_free(void *state) {
    steer_stage *st = state;
    if (!st) return;
    free(st->scaled);
    free(st);
}

static const sm_stage_vtable steer_vt = {
    .name = "steer",
    .snapshot_size = sizeof(float),
    .save = steer_save,
    .restore = steer_restore,
    .reset = steer_reset,
    .before_sample = steer_before_sample,
    .free_state = steer_free,
};
static const stage_ext steer_ext = {.drop = steer_drop};

sm_stage *sm_steer_stage_new(generation *g) {
    steer_stage *st = calloc(1, sizeof *st);
    if (!st) return NULL;
    st->r = &g->gp->interventions.steer_rule;
    st->s = g->s;
    st->applied = NAN;
    st->scaled = malloc(sizeof(float) * (size_t)st->r->len);
    if (!st->scaled) {
        free(st);
        return NULL;
    }
    return sm_stage_builtin(&steer_vt, &steer_ext, st);
}
