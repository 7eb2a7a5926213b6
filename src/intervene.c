/*
 * Interventions inside the one generation loop (docs/INTROSPECTION.md):
 * lookahead over branched sequences, activation safety rules, tools on a
 * marker in the output, gradual injection, and entropy-steered temperature.
 * session.c calls these at fixed points of the loop.
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

bool sm_lookahead_active(const generation *g) { return g->plan.chosen >= 0; }

static size_t plan_at(const branch_plan *pl, int32_t branch, int32_t step) {
    return (size_t)branch * (size_t)pl->stride + (size_t)step;
}

static const float *plan_logits(const generation *g, int32_t branch, int32_t step) {
    return g->plan.logits + plan_at(&g->plan, branch, step) * (size_t)g->s->n_vocab;
}

/* Drops the branch being committed from the cache; the cells sequence 0
 * has taken over from it stay. */
void sm_lookahead_abandon(generation *g) {
    if (!sm_lookahead_active(g)) return;
    llama_memory_seq_rm(g->s->members[0].mem, g->plan.chosen + 1, -1, -1);
    g->plan.chosen = -1;
}

sm_token sm_lookahead_planned_token(const generation *g) {
    const branch_plan *pl = &g->plan;
    return sm_lookahead_active(g) ? pl->tokens[plan_at(pl, pl->chosen, pl->next)] : -1;
}

int sm_lookahead_open(generation *g) {
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

void sm_lookahead_free(branch_plan *pl) {
    free(pl->tokens);
    free(pl->logits);
    free(pl->records);
    free(pl->hidden);
}

/* The temperature token i is sampled with: the policy's, or for this token
 * alone what entropy steering makes of it. */
float sm_loop_token_temperature(generation *g, int32_t i) {
    const sm_policy_params *pp = &g->gp->policy;
    float t = g->policy.temperature;
    if (pp->entropy_mode == 0) return t;
    sm_signals sig;
    sm_signals_compute(g->dist, g->s->n_vocab, -1, &sig, NULL);
    sm_policy_mod mod;
    if (!sm_policy_entropy_steer(pp, sig.entropy, sig.varentropy, &t, &mod)) return t;
    sm_event e = sm_loop_base_event(g, SM_EVENT_MODIFICATION, i);
    e.mod = mod.type;
    e.confidence = sig.p_top1;
    e.description = mod.description;
    e.source = "entropy";
    e.temperature_before = mod.t_before;
    e.temperature_after = mod.t_after;
    sm_loop_emit(g, &e);
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
    int rc = smx_decode(s->members[0].ctx, *b);
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
    sm_event e = sm_loop_base_event(g, SM_EVENT_MODIFICATION, i);
    e.mod = SM_MOD_LOOKAHEAD;
    e.confidence = info->score[info->chosen];
    e.description = desc;
    e.source = "lookahead";
    e.lookahead = info;
    sm_loop_emit(g, &e);
}

/*
 * At an uncertain position: the top-k candidates become sequences 1..k of
 * the cache (sharing sequence 0's cells), each continued greedily for
 * depth tokens, one batched decode per step. The best branch is planned:
 * its tokens then go through the normal loop one by one, taking over the
 * branch's cells instead of being decoded. Nothing happens where the
 * entropy is low or the cache has no room for the branches.
 */
sm_status sm_lookahead_run(generation *g, int32_t i) {
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
            return sm_session_fail(s, SM_ERR_DECODE, "llama_decode failed (code %d) while branching at position %d", rc, i);
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
    if (s->n_tokens + 1 > s->n_ctx) return sm_session_fail(s, SM_ERR_PROMPT_TOO_LONG, "no room left in the context");
    if (sm_loop_reserve(&s->tokens, &s->cap_tokens, s->n_tokens + 1) != 0) return sm_session_fail(s, SM_ERR_NO_MEMORY, "out of memory");
    llama_memory_seq_cp(s->members[0].mem, from, 0, s->n_tokens, s->n_tokens + 1);
    s->tokens[s->n_tokens++] = t;
    float *dst = sm_loop_ring_slot(s, s->n_tokens, 0);
    memcpy(dst, next, sizeof(float) * (size_t)s->n_vocab);
    s->ring_unmapped[(size_t)(s->n_tokens % s->ring_cap) * (size_t)s->n_models] = 0.0f;
    s->ring_pos[s->n_tokens % s->ring_cap] = s->n_tokens;
    s->logits = dst;
    return SM_OK;
}

/* Generated token i enters the context: decoded, or taken over from the
 * lookahead branch that decoded it. Its stats are kept per position. */
sm_status sm_loop_append_token(generation *g, int32_t i, sm_token t) {
    sm_session *s = g->s;
    branch_plan *pl = &g->plan;
    if (sm_lookahead_active(g)) {
        size_t at = plan_at(pl, pl->chosen, pl->next);
        sm_status st = append_predecoded(s, t, pl->chosen + 1, pl->logits + at * (size_t)s->n_vocab);
        if (st != SM_OK) return st;
        if (s->intro) {
            size_t hf = sm_introspector_hidden_floats(s->intro);
            sm_loop_remember_introspection(s, pl->records + at * sm_introspector_record_size(s->intro),
                                   hf ? pl->hidden + at * hf : NULL);
        }
        if (++pl->next == pl->depth) sm_lookahead_abandon(g); /* all of it is in sequence 0 now */
    } else {
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

/* Removes generated token i again after it was decoded (the ring still
 * holds the distribution it was sampled from: nothing is re-decoded), bans
 * it there, and restores what was true before it was sampled. */
static sm_status reject_decoded(generation *g, int32_t i, const sm_safety_rule *rule, const char *why) {
    sm_session *s = g->s;
    position_record *r = &g->rec[i];
    bool stop = rule->action == SM_SAFETY_STOP || r->n_safety_here >= g->gp->safety_max_retries;
    float t_before = g->policy.temperature, rp_before = g->policy.repeat_penalty;
    sm_lookahead_abandon(g);
    sm_status st = sm_session_truncate(s, s->n_tokens - 1); /* [restore] */
    if (st != SM_OK) return st;
    sm_text_pop(&g->text, 1); /* [restore] */
    sm_loop_restore_position(g, i);
    r->n_safety_here++;
    if (sm_loop_add_ban(r, r->token) != 0) return sm_session_fail(s, SM_ERR_NO_MEMORY, "out of memory");
    sm_loop_operators_backtracked(g, 1);
    g->res->n_tokens_removed++;
    g->res->n_safety_triggers++;
    char desc[256];
    if (stop) snprintf(desc, sizeof desc, "%s: token %d removed, stopping", why, r->token);
    else snprintf(desc, sizeof desc, "%s: token %d removed and banned here, sampling again (%d of %d)", why, r->token,
                  r->n_safety_here, g->gp->safety_max_retries);
    sm_event e = sm_loop_base_event(g, SM_EVENT_BACKTRACK, i);
    e.mod = SM_MOD_SAFETY;
    e.confidence = r->signals.p_chosen;
    e.description = desc;
    e.source = "safety";
    e.temperature_before = t_before;
    e.repeat_penalty_before = rp_before;
    e.n_removed = 1;
    sm_loop_emit(g, &e);
    if (stop) g->stop = SM_STOP_SAFETY;
    return SM_OK;
}

/* The safety rules, on the stats of generated token i just decoded. */
sm_status sm_loop_check_safety(generation *g, int32_t i, bool *rejected) {
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
    sm_lookahead_abandon(g);
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
        g->n_injected += n;
        g->floor = sm_loop_generated(g);
        g->res->n_injected_tokens += n;
        g->res->n_decoded += n;
        if (sm_text_push(&g->text, copy, len) != 0) st = sm_session_fail(s, SM_ERR_NO_MEMORY, "out of memory");
        g->text_floor = g->marker_from = g->text.len;
        char desc[200];
        snprintf(desc, sizeof desc, "%s: %d tokens injected", what, n);
        sm_event e = sm_loop_base_event(g, SM_EVENT_MODIFICATION, sm_loop_generated(g));
        e.mod = mod;
        e.description = desc;
        e.source = mod == SM_MOD_TOOL ? "tool" : "inject";
        e.piece = copy;
        sm_loop_emit(g, &e);
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

bool sm_injection_due(const generation *g) {
    return g->inject_next && *g->inject_next && sm_loop_generated(g) >= g->next_inject_at && !sm_lookahead_active(g);
}

sm_status sm_inject_next_chunk(generation *g) {
    const char *chunk = g->inject_next;
    size_t len = chunk_length(chunk);
    g->inject_next += len;
    g->n_chunks++;
    char what[96];
    snprintf(what, sizeof what, "chunk %d of inject_text after %d generated tokens", g->n_chunks, sm_loop_generated(g));
    sm_status st = inject(g, chunk, len, SM_MOD_INJECT, what);
    g->next_inject_at = sm_loop_generated(g) + g->gp->inject_every;
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
sm_status sm_tool_run_if_marked(generation *g, int32_t i, const char *piece) {
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
    if (!arg_text) return sm_session_fail(g->s, SM_ERR_NO_MEMORY, "out of memory");
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
        sm_event e = sm_loop_base_event(g, SM_EVENT_MODIFICATION, i + 1);
        e.mod = SM_MOD_TOOL;
        e.description = desc;
        e.source = "tool";
        e.piece = "";
        sm_loop_emit(g, &e);
    }
    free(out);
    free(arg_text);
    return st;
}

/* What needs the session: lookahead room, observed layers for the rules. */
bool sm_intervention_fits(const sm_session *s, const sm_gen_params *gp, char *msg, size_t size) {
    if (gp->lookahead.k > s->params.max_branches) {
        snprintf(msg, size, "lookahead with %d branches needs a session made with max_branches >= %d (this one has %d)",
                 gp->lookahead.k, gp->lookahead.k, s->params.max_branches);
        return false;
    }
    return gp->n_safety_rules == 0 || sm_safety_rules_check_layers(s->intro, gp->safety_rules, gp->n_safety_rules, msg, size);
}

