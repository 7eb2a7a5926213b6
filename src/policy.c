/*
 * The self-modification policy of the original llama_selfmod, made real:
 * the temperature and repeat penalty it adapts are the ones the sampler
 * uses for the next token. Pure: no llama.cpp, no I/O.
 */
#include "internal.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

/* The original's factors and caps. */
#define CRITICAL_T_FACTOR 1.4f
#define CRITICAL_T_CAP 1.5f
#define ADJUST_T_FACTOR 1.2f
#define ADJUST_T_CAP 1.3f
#define ADJUST_RP_FACTOR 1.1f
#define ADJUST_RP_CAP 1.5f
#define SHARPEN_T_FACTOR 0.88f
#define SHARPEN_T_FLOOR 0.3f
#define SHARPEN_T_MIN 0.4f
#define REPETITION_RP_FACTOR 1.15f
#define REPETITION_RP_CAP 2.0f
#define EXPLORE_RANGE 0.15f
#define EXPLORE_T_MIN 0.3f
#define EXPLORE_T_MAX 1.5f
/* The calibrated style's loops: an n-gram seen again within the lookback. */
#define LOOP_NGRAM 4
#define LOOP_LOOKBACK 64
/* Aggressive mode makes every step 1.5 times larger. */
#define AGGRESSIVE_STEP 1.5f

static float step(const sm_policy_params *p, float factor) {
    return p->aggressive && p->style == SM_POLICY_FIXED ? 1.0f + (factor - 1.0f) * AGGRESSIVE_STEP : factor;
}

static float minf(float a, float b) { return a < b ? a : b; }
static float maxf(float a, float b) { return a > b ? a : b; }

/* value * factor, at most cap: the original's min(f v, cap) even when v
 * is above the cap already; the fixed style never lowers such a value. */
static float raise_to_cap(const sm_policy_params *p, float value, float factor, float cap) {
    return minf(value * step(p, factor), p->style == SM_POLICY_ORIGINAL ? cap : maxf(cap, value));
}

bool sm_policy_retraction_enabled(const sm_policy_params *p) {
    if (p->style == SM_POLICY_CALIBRATED) return p->enabled && p->retract != 0; /* loops, by default */
    return p->enabled && (p->retract == 1 || (p->retract == -1 && p->aggressive));
}

int32_t sm_policy_retraction_tokens(const sm_policy_params *p) {
    return p->style == SM_POLICY_CALIBRATED && p->retract_tokens < LOOP_NGRAM ? LOOP_NGRAM : p->retract_tokens;
}

static sm_policy_mod *add_mod(sm_policy_action *a, sm_mod_type type, const sm_policy_state *before) {
    sm_policy_mod *m = &a->mods[a->n_mods++];
    m->type = type;
    m->t_before = before->temperature;
    m->rp_before = before->repeat_penalty;
    return m;
}

static void finish_mod(sm_policy_mod *m, const sm_policy_state *after) {
    m->t_after = after->temperature;
    m->rp_after = after->repeat_penalty;
}

/* A rule whose values are already at their caps changes nothing: that is
 * no modification, and reporting it would bury the ones that happen. */
static void drop_unchanged(sm_policy_action *a) {
    int32_t kept = 0;
    for (int32_t i = 0; i < a->n_mods; i++) {
        const sm_policy_mod *m = &a->mods[i];
        if (m->t_after != m->t_before || m->rp_after != m->rp_before) a->mods[kept++] = *m;
    }
    a->n_mods = kept;
}

/* Puts back what the caller holds fixed, in the state and in each mod. */
static void hold_values(const sm_policy_params *p, sm_policy_action *a, sm_policy_state *st) {
    for (int32_t i = 0; i < a->n_mods; i++) {
        sm_policy_mod *m = &a->mods[i];
        if (p->hold_temperature) m->t_after = m->t_before;
        if (p->hold_repeat_penalty) m->rp_after = m->rp_before;
    }
    if (a->n_mods > 0) {
        if (p->hold_temperature) st->temperature = a->mods[0].t_before;
        if (p->hold_repeat_penalty) st->repeat_penalty = a->mods[0].rp_before;
    }
}

static int32_t count_distinct(const sm_token *tokens, int32_t n) {
    int32_t distinct = 0;
    for (int32_t i = 0; i < n; i++) {
        bool seen = false;
        for (int32_t j = 0; j < i && !seen; j++) seen = tokens[j] == tokens[i];
        distinct += !seen;
    }
    return distinct;
}

/* Whether tokens[n-N..n) occurs earlier among the last LOOP_LOOKBACK. */
static bool repeats_ngram(const sm_token *tokens, int32_t n) {
    if (n < 2 * LOOP_NGRAM) return false;
    const sm_token *last = tokens + n - LOOP_NGRAM;
    int32_t from = n - LOOP_LOOKBACK > 0 ? n - LOOP_LOOKBACK : 0;
    for (int32_t at = from; at + LOOP_NGRAM <= n - LOOP_NGRAM; at++)
        if (memcmp(tokens + at, last, sizeof *last * LOOP_NGRAM) == 0) return true;
    return false;
}

#define CALIBRATED_Z 2.0f
#define CALIBRATED_RAISE 1.15f
#define CALIBRATED_LOWER 0.9f
#define CALIBRATED_RELAX 0.2f
#define CALIBRATED_SNAP 0.01f

/* A fifth of the way back to the value asked for, but at least a step a
 * reader can tell apart (events show 2 decimals), and never past it. */
static float relax_towards(float v, float target) {
    float gap = target - v, step = fabsf(gap) * CALIBRATED_RELAX;
    if (step < CALIBRATED_SNAP) step = CALIBRATED_SNAP;
    return fabsf(gap) <= step ? target : v + (gap > 0 ? step : -step);
}

static void calibrated_step(const sm_policy_params *p, const float *confidences, const sm_token *tokens, int32_t n,
                            int32_t n_retractions_done, sm_policy_state *st, sm_policy_action *a) {
    if (p->retract != 0 && n_retractions_done < p->max_retractions && repeats_ngram(tokens, n)) {
        a->retract = LOOP_NGRAM;
        a->loop = true;
        return;
    }
    const float mean = a->window_mean;
    const int32_t w = n < p->window ? n : p->window;
    float z = 0.0f;
    if (st->n_seen >= 2 * p->window) {
        double sd = sqrt(st->conf_m2 / (st->n_seen - 1)) / sqrt((double)w);
        z = sd > 1e-6 ? (float)((mean - st->conf_mean) / sd) : 0.0f;
    }
    const float t0 = st->base_temperature, rp0 = st->base_repeat_penalty;
    if (z < -CALIBRATED_Z && t0 > 0.0f) {
        sm_policy_mod *m = add_mod(a, SM_MOD_PARAM_ADJUST, st);
        st->temperature = minf(st->temperature * CALIBRATED_RAISE, 1.5f * t0);
        finish_mod(m, st);
        snprintf(m->description, sizeof m->description, "mean confidence %.3f, %.1f sd below this text's %.3f: raise temperature",
                 mean, -z, st->conf_mean);
    } else if (z > CALIBRATED_Z && t0 > 0.0f) {
        sm_policy_mod *m = add_mod(a, SM_MOD_SHARPEN, st);
        st->temperature = maxf(st->temperature * CALIBRATED_LOWER, 0.5f * t0);
        finish_mod(m, st);
        snprintf(m->description, sizeof m->description, "mean confidence %.3f, %.1f sd above this text's %.3f: lower temperature",
                 mean, z, st->conf_mean);
    } else if (st->temperature != t0 || st->repeat_penalty != rp0) {
        sm_policy_mod *m = add_mod(a, SM_MOD_PARAM_ADJUST, st);
        st->temperature = relax_towards(st->temperature, t0);
        st->repeat_penalty = relax_towards(st->repeat_penalty, rp0);
        finish_mod(m, st);
        snprintf(m->description, sizeof m->description, "confidence back to this text's usual: relax towards T %.2f", t0);
    }
    /* the candidate's confidence joins the running statistics (Welford) */
    double c = confidences[n - 1], d = c - st->conf_mean;
    st->n_seen++;
    st->conf_mean += d / st->n_seen;
    st->conf_m2 += d * (c - st->conf_mean);
}

void sm_policy_step(const sm_policy_params *p, const float *confidences, const sm_token *tokens,
                    int32_t n, int32_t n_retractions_done, sm_policy_state *st,
                    sm_policy_action *a) {
    a->n_mods = 0;
    a->retract = 0;
    a->loop = false;
    a->window_mean = 0.0f;
    if (!p->enabled || n <= 0) return;

    int32_t w = n < p->window ? n : p->window;
    double sum = 0.0;
    for (int32_t i = n - w; i < n; i++) sum += confidences[i];
    const float mean = (float)(sum / w);
    a->window_mean = mean;
    if (p->style == SM_POLICY_CALIBRATED) {
        calibrated_step(p, confidences, tokens, n, n_retractions_done, st, a);
        hold_values(p, a, st);
        drop_unchanged(a);
        return;
    }

    if (mean < p->critical_threshold && sm_policy_retraction_enabled(p) &&
        n_retractions_done < p->max_retractions) {
        a->retract = n < p->retract_tokens ? n : p->retract_tokens;
        return; /* the rest is decided again after the rewind */
    }
    if (mean < p->confidence_threshold) {
        sm_policy_mod *m = add_mod(a, SM_MOD_PARAM_ADJUST, st);
        st->temperature = raise_to_cap(p, st->temperature, ADJUST_T_FACTOR, ADJUST_T_CAP);
        st->repeat_penalty = raise_to_cap(p, st->repeat_penalty, ADJUST_RP_FACTOR, ADJUST_RP_CAP);
        finish_mod(m, st);
        snprintf(m->description, sizeof m->description,
                 "mean confidence %.3f < %.2f: raise temperature and repeat penalty", mean,
                 p->confidence_threshold);
    } else if (mean > p->sharpen_threshold && st->temperature > SHARPEN_T_MIN) {
        sm_policy_mod *m = add_mod(a, SM_MOD_SHARPEN, st);
        st->temperature = maxf(st->temperature * step(p, SHARPEN_T_FACTOR), SHARPEN_T_FLOOR);
        finish_mod(m, st);
        snprintf(m->description, sizeof m->description,
                 "mean confidence %.3f > %.2f: lower temperature", mean, p->sharpen_threshold);
    }
    if (n >= p->repetition_window) {
        int32_t distinct = count_distinct(tokens + n - p->repetition_window, p->repetition_window);
        if (distinct < p->repetition_min_distinct) {
            sm_policy_mod *m = add_mod(a, SM_MOD_ANTI_REPETITION, st);
            st->repeat_penalty = raise_to_cap(p, st->repeat_penalty, REPETITION_RP_FACTOR, REPETITION_RP_CAP);
            finish_mod(m, st);
            snprintf(m->description, sizeof m->description,
                     "%d distinct tokens in the last %d: raise repeat penalty", distinct,
                     p->repetition_window);
        }
    }
    if (p->aggressive && sm_rng_uniform(&st->rng) < p->exploration_prob) {
        sm_policy_mod *m = add_mod(a, SM_MOD_EXPLORATION_BURST, st);
        float delta = (float)(sm_rng_uniform(&st->rng) * 2.0 - 1.0) * EXPLORE_RANGE;
        st->temperature = minf(maxf(st->temperature + delta, EXPLORE_T_MIN), EXPLORE_T_MAX);
        finish_mod(m, st);
        snprintf(m->description, sizeof m->description, "exploration burst: temperature %+.3f", delta);
    }
    hold_values(p, a, st);
    drop_unchanged(a);
}

void sm_policy_after_retraction(const sm_policy_params *p, sm_policy_state *st) {
    if (p->hold_temperature || p->style == SM_POLICY_CALIBRATED) return; /* a loop is fixed by the ban, not by heat */
    st->temperature = raise_to_cap(p, st->temperature, CRITICAL_T_FACTOR, CRITICAL_T_CAP);
}

/* Entropix's regimes, reduced to the two that act on one token: the
 * temperature to sample it with. */
#define ENTROPY_RAISE_CAP 1.5f

bool sm_policy_entropy_steer(const sm_policy_params *p, float entropy, float varentropy, float *temperature,
                             sm_policy_mod *mod) {
    const float t = *temperature;
    float after = t;
    if (p->entropy_mode == 1 && entropy > p->entropy_high) {
        after = t * p->entropy_factor;
        snprintf(mod->description, sizeof mod->description, "entropy %.3f > %.2f: temperature x %.2f for this token",
                 entropy, p->entropy_high, p->entropy_factor);
    } else if (p->entropy_mode == 2 && entropy < p->entropy_low && varentropy < p->varentropy_low) {
        after = 0.0f;
        snprintf(mod->description, sizeof mod->description,
                 "entropy %.3f < %.2f and varentropy %.3f < %.2f: argmax for this token", entropy, p->entropy_low,
                 varentropy, p->varentropy_low);
    } else if (p->entropy_mode == 2 && entropy > p->entropy_high) {
        after = minf(t * p->entropy_raise, maxf(ENTROPY_RAISE_CAP, t));
        snprintf(mod->description, sizeof mod->description, "entropy %.3f > %.2f: temperature x %.2f for this token",
                 entropy, p->entropy_high, p->entropy_raise);
    }
    if (after == t) return false;
    mod->type = SM_MOD_ENTROPY_STEER;
    mod->t_before = t;
    mod->t_after = after;
    *temperature = after;
    return true;
}
