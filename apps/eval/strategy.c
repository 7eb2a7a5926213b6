/* Strategy specs: a base sampling setup, operators and fusion, joined by '+'. */
#include "eval/strategy.h"

#include <ctype.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct base_def {
    const char *name;
    void (*setup)(sm_gen_params *gen);
} base_def;

static void no_policy(sm_gen_params *g) { g->policy.enabled = false; }

static void setup_greedy(sm_gen_params *g) {
    no_policy(g);
    g->sampling.temperature = 0.0f;
    g->sampling.repeat_penalty = 1.0f;
}

/* The sampling baselines sample at the original's default T 0.7 whatever
 * the library's default (0: the policy at greedy, docs/EVAL.md). */
#define BASELINE_TEMPERATURE 0.7f
static void setup_sample(sm_gen_params *g) {
    no_policy(g);
    g->sampling.temperature = BASELINE_TEMPERATURE;
}
static void setup_selfmod(sm_gen_params *g) { (void)g; }
/* --aggressive and retraction at critical confidence belong to the fixed
 * policy (the default before the calibrated one), as on the CLI. */
static void setup_selfmod_aggressive(sm_gen_params *g) {
    g->sampling.temperature = BASELINE_TEMPERATURE;
    g->policy.style = SM_POLICY_FIXED;
    g->policy.aggressive = true;
}
static void setup_selfmod_retract(sm_gen_params *g) {
    g->sampling.temperature = BASELINE_TEMPERATURE;
    g->policy.style = SM_POLICY_FIXED;
    g->policy.retract = 1;
}
static void setup_fixed(sm_gen_params *g) {
    g->sampling.temperature = BASELINE_TEMPERATURE;
    g->policy.style = SM_POLICY_FIXED;
}
/* The Rust llama_selfmod's policy, as its code applies it (sm_policy_preset). */
static void setup_original(sm_gen_params *g) {
    g->sampling.temperature = BASELINE_TEMPERATURE;
    sm_policy_preset(&g->policy, "original", NULL);
}
static void setup_calibrated(sm_gen_params *g) {
    g->sampling.temperature = BASELINE_TEMPERATURE;
    sm_policy_preset(&g->policy, "calibrated", NULL);
}
static void setup_original_aggressive(sm_gen_params *g) {
    setup_original(g);
    g->policy.aggressive = true;
}

/* DRY replaces the repeat penalty, as llama.cpp's documentation advises. */
static void setup_dry(sm_gen_params *g) {
    setup_sample(g);
    g->sampling.repeat_penalty = 1.0f;
    g->sampling.dry_multiplier = 0.8f;
}

/* The min-p paper's setting: min-p alone at temperature 1. */
static void setup_min_p(sm_gen_params *g) {
    no_policy(g);
    g->sampling.temperature = 1.0f;
    g->sampling.top_k = 0;
    g->sampling.top_p = 1.0f;
    g->sampling.min_p = 0.1f;
    g->sampling.repeat_penalty = 1.0f;
}

/* XTC at its author's suggested setting (threshold 0.1, probability 0.5). */
static void setup_xtc(sm_gen_params *g) {
    setup_sample(g);
    g->sampling.xtc_probability = 0.5f;
    g->sampling.xtc_threshold = 0.1f;
}

/* Locally typical sampling at p 0.9. */
static void setup_typical(sm_gen_params *g) {
    setup_sample(g);
    g->sampling.typical_p = 0.9f;
}

static const base_def BASES[] = {
    {"greedy", setup_greedy},
    {"sample", setup_sample},
    {"selfmod", setup_selfmod},
    {"selfmod-aggressive", setup_selfmod_aggressive},
    {"selfmod-retract", setup_selfmod_retract},
    {"original", setup_original},
    {"original-aggressive", setup_original_aggressive},
    {"calibrated", setup_calibrated},
    {"fixed", setup_fixed},
    {"dry", setup_dry},
    {"min-p", setup_min_p},
    {"xtc", setup_xtc},
    {"typical", setup_typical},
};

enum { N_BASES = sizeof BASES / sizeof BASES[0] };

static bool parse_number(const char *text, double *out) {
    char *end;
    errno = 0;
    double v = strtod(text, &end);
    if (!*text || isspace((unsigned char)*text) || errno || *end || !isfinite(v)) return false;
    *out = v;
    return true;
}

/* Applies one base override. Values are range-checked by
 * sm_gen_params_validate afterwards; here only the type. */
static bool set_base_key(sm_gen_params *g, const char *key, double v) {
    sm_sampling_params *s = &g->sampling;
    sm_policy_params *p = &g->policy;
    bool integral = v == floor(v) && fabs(v) < 1e9;
    struct { const char *name; float *f; int32_t *i; } keys[] = {
        {"temp", &s->temperature, NULL},        {"top_k", NULL, &s->top_k},
        {"top_p", &s->top_p, NULL},             {"min_p", &s->min_p, NULL},
        {"rp", &s->repeat_penalty, NULL},       {"repeat_last_n", NULL, &s->repeat_last_n},
        {"dry", &s->dry_multiplier, NULL},      {"dry_base", &s->dry_base, NULL},
        {"dry_allowed_length", NULL, &s->dry_allowed_length},
        {"typical", &s->typical_p, NULL},       {"xtc", &s->xtc_probability, NULL},
        {"xtc_threshold", &s->xtc_threshold, NULL},
        {"retract", NULL, &p->retract},         {"window", NULL, &p->window},
        {"critical", &p->critical_threshold, NULL}, {"confidence", &p->confidence_threshold, NULL},
        {"sharpen", &p->sharpen_threshold, NULL},   {"retract_tokens", NULL, &p->retract_tokens},
        {"max_retractions", NULL, &p->max_retractions}, {"exploration", &p->exploration_prob, NULL},
        {"rep_window", NULL, &p->repetition_window},    {"rep_min_distinct", NULL, &p->repetition_min_distinct},
    };
    static const char *const FIXED_ONLY[] = {"critical", "confidence", "sharpen", "exploration", "rep_window",
                                             "rep_min_distinct", "retract_tokens"};
    for (size_t k = 0; k < sizeof keys / sizeof keys[0]; k++) {
        if (strcmp(keys[k].name, key) != 0) continue;
        if (keys[k].f) *keys[k].f = (float)v;
        else if (integral) *keys[k].i = (int32_t)v;
        else return false;
        /* a fixed policy's key chooses that policy (the calibrated one has no such key) */
        for (size_t f = 0; f < sizeof FIXED_ONLY / sizeof *FIXED_ONLY; f++)
            if (strcmp(key, FIXED_ONLY[f]) == 0 && p->style == SM_POLICY_CALIBRATED) p->style = SM_POLICY_FIXED;
        return true;
    }
    return false;
}

/* "key=value,key=value" applied with set(). */
static int parse_pairs(const char *part, char *pairs, bool (*set)(void *target, const char *key, double v),
                       void *target, char *err, size_t err_size) {
    for (char *save = NULL, *kv = strtok_r(pairs, ",", &save); kv; kv = strtok_r(NULL, ",", &save)) {
        char *eq = strchr(kv, '=');
        double v;
        if (!eq) {
            snprintf(err, err_size, "'%s': '%s' is not key=value", part, kv);
            return -1;
        }
        *eq = '\0';
        if (!parse_number(eq + 1, &v) || !set(target, kv, v)) {
            snprintf(err, err_size, "'%s': unknown key or invalid value '%s=%s' (see llama_selfmod eval --help)", part,
                     kv, eq + 1);
            return -1;
        }
    }
    return 0;
}

static bool set_base_key_cb(void *target, const char *key, double v) { return set_base_key(target, key, v); }

static bool set_fusion_key_cb(void *target, const char *key, double v) {
    sm_fusion_params *f = target;
    if (strcmp(key, "turn") == 0 && v == floor(v) && v >= 1 && v < 1e9) f->turn = (int32_t)v;
    else if (strcmp(key, "alpha") == 0) f->alpha = (float)v;
    else if (strcmp(key, "beta") == 0) f->beta = (float)v;
    else if (strcmp(key, "abstain_below") == 0) f->abstain_below = (float)v;
    else return false;
    return true;
}

static int parse_base(const char *part, eval_strategy *out, char *err, size_t err_size) {
    char *copy = strdup(part);
    if (!copy) return -1;
    char *colon = strchr(copy, ':');
    if (colon) *colon = '\0';
    const base_def *base = NULL;
    for (int i = 0; i < N_BASES; i++)
        if (strcmp(BASES[i].name, copy) == 0) base = &BASES[i];
    int rc = 0;
    if (!base) {
        snprintf(err, err_size,
                 "unknown strategy '%s' (bases: greedy, sample, selfmod, selfmod-aggressive, selfmod-retract, original, original-aggressive, calibrated, fixed, dry, "
                 "min-p; modifiers: op:NAME, fusion:MODE)",
                 copy);
        rc = -1;
    } else {
        /* from the library's defaults, whatever came before */
        out->gen.sampling = sm_sampling_default_params();
        out->gen.policy = sm_policy_default_params();
        base->setup(&out->gen);
        if (colon) rc = parse_pairs(part, colon + 1, set_base_key_cb, &out->gen, err, err_size);
        if (rc == 0 && strcmp(base->name, "calibrated") == 0 && out->gen.policy.style != SM_POLICY_CALIBRATED) {
            snprintf(err, err_size, "'%s': the calibrated policy has no absolute thresholds, bursts or repetition window",
                     part);
            rc = -1;
        }
    }
    free(copy);
    return rc;
}

static int parse_operator(const char *part, eval_strategy *out, char *err, size_t err_size) {
    if (out->n_operators >= EVAL_MAX_OPERATORS) {
        snprintf(err, err_size, "more than %d operators in one strategy", EVAL_MAX_OPERATORS);
        return -1;
    }
    sm_error e = {0};
    sm_operator *op = sm_operator_from_spec(part + strlen("op:"), &e);
    if (!op) {
        snprintf(err, err_size, "'%s': %s", part, e.message);
        return -1;
    }
    out->operators[out->n_operators++] = op;
    return 0;
}

static int parse_fusion(const char *part, eval_strategy *out, char *err, size_t err_size) {
    char *copy = strdup(part + strlen("fusion:"));
    if (!copy) return -1;
    char *colon = strchr(copy, ':');
    if (colon) *colon = '\0';
    int rc = 0;
    if (!sm_fusion_mode_from_name(copy, &out->gen.fusion.mode)) {
        snprintf(err, err_size,
                 "'%s': unknown fusion mode '%s' (confidence, average, voting, harmony, adaptive, democratic, "
                 "round_robin, reference, contrastive)",
                 part, copy);
        rc = -1;
    } else if (colon) {
        rc = parse_pairs(part, colon + 1, set_fusion_key_cb, &out->gen.fusion, err, err_size);
    }
    out->fused = true;
    free(copy);
    return rc;
}

static bool starts_with(const char *s, const char *prefix) { return strncmp(s, prefix, strlen(prefix)) == 0; }

int eval_strategy_parse(const char *spec, eval_strategy *out, char *err, size_t err_size) {
    *out = (eval_strategy){.spec = spec, .gen = sm_gen_default_params()};
    setup_sample(&out->gen); /* modifiers alone sample like `sample` */
    char *copy = strdup(spec);
    if (!copy) return -1;
    int rc = 0, n_bases = 0, n_fusions = 0;
    for (char *save = NULL, *part = strtok_r(copy, "+", &save); part && rc == 0; part = strtok_r(NULL, "+", &save)) {
        if (starts_with(part, "op:")) {
            rc = parse_operator(part, out, err, err_size);
        } else if (starts_with(part, "preset:")) { /* a file llama_selfmod tune wrote: a base of its own */
            sm_error e;
            out->gen.sampling = sm_sampling_default_params();
            out->gen.policy = sm_policy_default_params();
            rc = n_bases++ ? (snprintf(err, err_size, "'%s': one base strategy at most ('%s' is a second)", spec, part), -1)
                 : sm_gen_params_load_preset(part + strlen("preset:"), &out->gen, &e) != SM_OK
                     ? (snprintf(err, err_size, "'%s': %s", part, e.message), -1)
                     : 0;
        } else if (starts_with(part, "fusion:")) {
            rc = n_fusions++ ? (snprintf(err, err_size, "'%s': one fusion mode per strategy", spec), -1)
                             : parse_fusion(part, out, err, err_size);
        } else {
            rc = n_bases++ ? (snprintf(err, err_size, "'%s': one base strategy at most ('%s' is a second)", spec,
                                       part), -1)
                           : parse_base(part, out, err, err_size);
        }
    }
    free(copy);
    sm_error invalid;
    if (rc == 0 && sm_gen_params_validate(&out->gen, &invalid) != SM_OK) {
        snprintf(err, err_size, "strategy '%s': %s", spec, invalid.message);
        rc = -1;
    }
    if (rc != 0) {
        eval_strategy_free(out);
        return -1;
    }
    out->gen.backtrack.operators = out->operators;
    out->gen.backtrack.n_operators = out->n_operators;
    const sm_policy_params *p = &out->gen.policy;
    bool explores = p->enabled && p->aggressive && p->exploration_prob > 0.0f;
    out->deterministic = out->gen.sampling.temperature == 0.0f && !explores;
    return 0;
}

void eval_strategy_free(eval_strategy *s) {
    for (int32_t i = 0; i < s->n_operators; i++) sm_operator_free(s->operators[i]);
    s->n_operators = 0;
}
