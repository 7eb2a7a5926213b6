/* The human-readable lines on stderr: event lines, settings, summary. */
#include "format.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#define DIM "\033[2m"
#define RESET "\033[0m"

/* Appends to a line buffer, never past its end. */
typedef struct line {
    char *buf;
    size_t size, len;
} line;

static void add(line *l, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void add(line *l, const char *fmt, ...) {
    if (l->len >= l->size) return;
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(l->buf + l->len, l->size - l->len, fmt, ap);
    va_end(ap);
    if (n > 0) l->len += (size_t)n < l->size - l->len ? (size_t)n : l->size - l->len - 1;
}

static const char *mod_color(sm_mod_type type) {
    switch (type) {
    case SM_MOD_RETRACT: return "\033[31m";
    case SM_MOD_BACKTRACK: return "\033[35m";
    case SM_MOD_PARAM_ADJUST: return "\033[33m";
    case SM_MOD_SHARPEN: return "\033[36m";
    case SM_MOD_ANTI_REPETITION: return "\033[34m";
    case SM_MOD_EXPLORATION_BURST: return "\033[32m";
    case SM_MOD_SAFETY: return "\033[31m";
    case SM_MOD_LOOKAHEAD: return "\033[35m";
    case SM_MOD_ENTROPY_STEER:
    case SM_MOD_STEER: return "\033[36m";
    case SM_MOD_TOOL:
    case SM_MOD_INJECT: return "\033[32m";
    case SM_MOD_CONTEXT_SHIFT: return "\033[33m";
    case SM_MOD_NONE: break;
    }
    return "";
}

void format_event_line(char *buf, size_t size, const sm_event *e, line_style style) {
    line l = {buf, size, 0};
    buf[0] = '\0';
    if (style.color) add(&l, "%s%s", DIM, mod_color(e->mod));
    add(&l, "[selfmod] #%d %s", e->token_index, sm_mod_type_name(e->mod));
    if (e->type == SM_EVENT_BACKTRACK && e->source && *e->source) add(&l, " %s", e->source);
    if (e->mod == SM_MOD_CONTEXT_SHIFT) {
        add(&l, " (%s)", e->description ? e->description : "");
        if (style.color) add(&l, RESET);
        return;
    }
    add(&l, " conf=%.2f", e->confidence);
    if (e->type == SM_EVENT_RETRACTION || e->type == SM_EVENT_BACKTRACK)
        add(&l, " removed %d", e->n_removed);
    if (e->temperature_before != e->temperature_after)
        add(&l, " T %.2f->%.2f", e->temperature_before, e->temperature_after);
    if (e->repeat_penalty_before != e->repeat_penalty_after)
        add(&l, " rp %.2f->%.2f", e->repeat_penalty_before, e->repeat_penalty_after);
    /* An operator's description is the signal that fired: always shown. */
    bool describe = style.verbose || e->type == SM_EVENT_BACKTRACK;
    if (describe && e->description && *e->description) add(&l, " (%s)", e->description);
    if (style.color) add(&l, RESET);
}

void format_summary(char *buf, size_t size, const sm_result *r, uint64_t seed, line_style style) {
    line l = {buf, size, 0};
    buf[0] = '\0';
    double tokens_per_s = r->t_generate_ms > 0 ? r->n_tokens / (r->t_generate_ms / 1000.0) : 0.0;
    if (style.color) add(&l, DIM);
    add(&l, "[selfmod] %d token%s, %d retraction%s, %d backtrack%s, avg confidence %.2f, "
            "%.1f tokens/s, stop: %s, seed %llu",
        r->n_tokens, r->n_tokens == 1 ? "" : "s", r->n_retractions,
        r->n_retractions == 1 ? "" : "s", r->n_backtracks, r->n_backtracks == 1 ? "" : "s",
        r->avg_confidence, tokens_per_s, sm_stop_reason_name(r->stop_reason),
        (unsigned long long)seed);
    if (style.verbose)
        add(&l, ", final T %.2f rp %.2f, %d sampled, %d decoded", r->final_temperature,
            r->final_repeat_penalty, r->n_sampled, r->n_decoded);
    if (style.color) add(&l, RESET);
}

static const char *retract_mode(const sm_policy_params *p) {
    if (!p->enabled) return "off";
    if (p->retract == 1) return "on";
    if (p->retract == 0) return "off";
    if (p->style == SM_POLICY_CALIBRATED) return "on (repeated 4-grams)";
    return p->aggressive ? "on (aggressive)" : "off (only with --aggressive)";
}

void format_settings(char *buf, size_t size, const char *model_description,
                     const sm_gen_params *p, int32_t n_ctx, line_style style) {
    line l = {buf, size, 0};
    const sm_sampling_params *s = &p->sampling;
    buf[0] = '\0';
    if (style.color) add(&l, DIM);
    add(&l, "[selfmod] model %s, ctx %d, T %.2f, top-k %d, top-p %.2f, min-p %.2f, rp %.2f (last %d), "
            "seed %llu, self-modification %s%s, retraction %s (max %d)",
        model_description, n_ctx, s->temperature, s->top_k, s->top_p, s->min_p,
        s->repeat_penalty, s->repeat_last_n, (unsigned long long)s->seed,
        p->policy.enabled ? "on" : "off", p->policy.aggressive ? " (aggressive)" : "",
        retract_mode(&p->policy), p->policy.max_retractions);
    for (int32_t i = 0; i < p->backtrack.n_operators; i++)
        add(&l, "%s%s", i == 0 ? ", operators: " : ", ", p->backtrack.operators[i]->vt->name);
    if (style.color) add(&l, RESET);
}
