/* Parsing and checking the introspection and intervention flags. */
#include "intro_args.h"
#include "common/flags.h"

#include "args.h"

#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

static bool bad_value(FILE *err, const char *flag, const char *value, const char *expected) {
    return flag_invalid(err, "llama_selfmod", flag, value, expected);
}

static bool int_in(FILE *err, const char *flag, const char *text, long lo, long hi, const char *expected,
                   int32_t *out) {
    return flag_int_in(err, "llama_selfmod", flag, text, lo, hi, expected, out);
}

static bool nonnegative_float(FILE *err, const char *flag, const char *text, float *out) {
    float v;
    if (!flag_float(text, &v) || v < 0.0f) return bad_value(err, flag, text, "a number >= 0");
    *out = v;
    return true;
}

/* "0,4,-1" or "all". */
static bool refuse(FILE *err, const char *message);

/* "entropy", "confidence" or "norm@LAYER" at the start of text; *end
 * gets what follows. */
static bool parse_steer_signal(const char *text, sm_steer_rule *r, const char **end) {
    if (strncmp(text, "entropy", 7) == 0) {
        r->signal = SM_STEER_SIGNAL_ENTROPY;
        *end = text + 7;
    } else if (strncmp(text, "confidence", 10) == 0) {
        r->signal = SM_STEER_SIGNAL_CONFIDENCE;
        *end = text + 10;
    } else if (strncmp(text, "norm@", 5) == 0) {
        char *after;
        errno = 0;
        long layer = strtol(text + 5, &after, 10);
        if (after == text + 5 || errno || layer < -4096 || layer > 4096) return false;
        r->signal = SM_STEER_SIGNAL_LAYER_NORM;
        r->layer = (int32_t)layer;
        *end = after;
    } else {
        return false;
    }
    return true;
}

/* Up to n ':'-separated finite numbers; false on anything else. */
static int parse_numbers(const char *text, float *out, int n) {
    int got = 0;
    while (*text && got < n) {
        char *after;
        errno = 0;
        double v = strtod(text, &after);
        if (after == text || errno || !isfinite(v)) return -1;
        out[got++] = (float)v;
        if (*after == '\0') return got;
        if (*after != ':') return -1;
        text = after + 1;
    }
    return *text ? -1 : got;
}

/* --steer-when SIGNAL<T|SIGNAL>T[:ON[:OFF]] and --steer-target
 * SIGNAL=TARGET:GAIN[:MIN:MAX]; the vector comes from --control-vector. */
static bool parse_steer_rule(FILE *err, bool target, const char *text, cli_intro_options *io, sm_steer_rule *r) {
    const char *flag = target ? "--steer-target" : "--steer-when";
    const char *expected = target ? "SIGNAL=TARGET:GAIN[:MIN:MAX], SIGNAL entropy, confidence or norm@LAYER"
                                  : "SIGNAL<T or SIGNAL>T[:ON[:OFF]], SIGNAL entropy, confidence or norm@LAYER";
    if (io->steer_rule) return refuse(err, "give one steer rule: --steer-when or --steer-target, once");
    const char *rest;
    if (!parse_steer_signal(text, r, &rest)) return bad_value(err, flag, text, expected);
    float v[4];
    if (target) {
        int n = *rest == '=' ? parse_numbers(rest + 1, v, 4) : -1;
        if (n != 2 && n != 4) return bad_value(err, flag, text, expected);
        if (v[1] == 0.0f) return bad_value(err, flag, text, "a GAIN other than 0");
        r->target = v[0];
        r->gain = v[1];
        if (n == 4) {
            if (v[2] > v[3]) return bad_value(err, flag, text, "MIN <= MAX");
            r->min_strength = v[2];
            r->max_strength = v[3];
        }
    } else {
        int n = *rest == '<' || *rest == '>' ? parse_numbers(rest + 1, v, 3) : -1;
        if (n < 1) return bad_value(err, flag, text, expected);
        r->below = *rest == '<';
        r->threshold = v[0];
        if (n >= 2) r->on = v[1];
        if (n == 3) r->off = v[2];
        r->gain = 0.0f;
    }
    io->steer_rule = true;
    return true;
}

static bool parse_layers(FILE *err, const char *text, cli_intro_options *io) {
    if (strcmp(text, "all") == 0) {
        io->all_layers = true;
        return true;
    }
    io->n_layers = 0;
    const char *p = text;
    while (*p) {
        char *end;
        errno = 0;
        long v = strtol(p, &end, 10);
        if (errno != 0 || end == p || (*end != ',' && *end != '\0') || v < -100000 || v > 100000)
            return bad_value(err, "--introspect-layers", text, "layer numbers like 0,4,-1, or all");
        if (io->n_layers == CLI_INTRO_MAX_LAYERS)
            return bad_value(err, "--introspect-layers", text, "at most 256 layers (or all)");
        io->layers[io->n_layers++] = (int32_t)v;
        p = *end == ',' ? end + 1 : end;
    }
    if (io->n_layers == 0) return bad_value(err, "--introspect-layers", text, "layer numbers like 0,4,-1, or all");
    return true;
}

/* "A-B" with 1 <= A <= B. */
static bool parse_layer_range(FILE *err, const char *text, cli_intro_options *io) {
    int a, b, used = 0;
    if (sscanf(text, "%d-%d%n", &a, &b, &used) != 2 || text[used] != '\0' || a < 1 || b < a)
        return bad_value(err, "--control-vector-layers", text, "a range A-B of layers with 1 <= A <= B");
    io->cv_layer_start = a;
    io->cv_layer_end = b;
    return true;
}

static bool add_safety_rule(FILE *err, const char *text, cli_intro_options *io) {
    if (io->n_safety == CLI_INTRO_MAX_LIST) {
        fprintf(err, "llama_selfmod: error: --safety given more than %d times\n", CLI_INTRO_MAX_LIST);
        return false;
    }
    sm_error invalid;
    if (sm_safety_rule_parse(text, &io->safety[io->n_safety], &invalid) != SM_OK) {
        fprintf(err, "llama_selfmod: error: --safety '%s': %s\n", text, invalid.message);
        return false;
    }
    io->n_safety++;
    return true;
}

static bool entropy_policy(FILE *err, const char *text, sm_policy_params *p) {
    if (strcmp(text, "off") == 0) p->entropy_mode = 0;
    else if (strcmp(text, "seed") == 0) p->entropy_mode = 1;
    else if (strcmp(text, "entropix") == 0) p->entropy_mode = 2;
    else return bad_value(err, "--entropy-policy", text, "off, seed or entropix");
    return true;
}

bool cli_intro_apply(int c, const char *arg, struct cli_options *opt, FILE *err) {
    cli_intro_options *io = &opt->intro;
    sm_gen_params *gen = &opt->gen;
    switch (c) {
    case OPT_INTROSPECT_LAYERS: return parse_layers(err, arg, io);
    case OPT_INTROSPECT_ATTENTION: opt->session.introspect_attention = true; return true;
    case OPT_TRACE_FILE: io->trace_file = arg; return true;
    case OPT_HIDDEN_STATES: io->hidden_file = arg; return true;
    case OPT_ENTROPY_POLICY: return entropy_policy(err, arg, &gen->policy);
    case OPT_ENTROPY_HIGH: return nonnegative_float(err, "--entropy-high", arg, &gen->policy.entropy_high);
    case OPT_ENTROPY_LOW: return nonnegative_float(err, "--entropy-low", arg, &gen->policy.entropy_low);
    case OPT_VARENTROPY_LOW: return nonnegative_float(err, "--varentropy-low", arg, &gen->policy.varentropy_low);
    case OPT_CONTROL_VECTOR:
        if (!*arg) return bad_value(err, "--control-vector", arg, "FILE or FILE:SCALE");
        if (io->n_control_vectors == CLI_INTRO_MAX_LIST) {
            fprintf(err, "llama_selfmod: error: --control-vector given more than %d times\n", CLI_INTRO_MAX_LIST);
            return false;
        }
        io->control_vectors[io->n_control_vectors++] = arg;
        return true;
    case OPT_CONTROL_VECTOR_LAYERS: return parse_layer_range(err, arg, io);
    case OPT_STEER_WHEN:
    case OPT_STEER_TARGET: return parse_steer_rule(err, c == OPT_STEER_TARGET, arg, io, &gen->interventions.steer_rule);
    case OPT_SAFETY: return add_safety_rule(err, arg, io);
    case OPT_SAFETY_RETRIES:
        return int_in(err, "--safety-retries", arg, 0, INT32_MAX, "an integer >= 0", &gen->interventions.safety_max_retries);
    case OPT_LOOKAHEAD:
        if (!int_in(err, "--lookahead", arg, 2, SM_MAX_BRANCHES, "an integer in [2, 16]", &gen->interventions.lookahead.k)) return false;
        opt->session.max_branches = gen->interventions.lookahead.k;
        return true;
    case OPT_LOOKAHEAD_DEPTH:
        return int_in(err, "--lookahead-depth", arg, 1, 64, "an integer in [1, 64]", &gen->interventions.lookahead.depth);
    case OPT_LOOKAHEAD_ENTROPY: return nonnegative_float(err, "--lookahead-entropy", arg, &gen->interventions.lookahead.entropy);
    case OPT_LOOKAHEAD_SCORE:
        if (strcmp(arg, "mean_logprob") == 0) gen->interventions.lookahead.score = SM_LOOKAHEAD_MEAN_LOGPROB;
        else if (strcmp(arg, "margin") == 0) gen->interventions.lookahead.score = SM_LOOKAHEAD_MARGIN;
        else if (strcmp(arg, "coherence") == 0) gen->interventions.lookahead.score = SM_LOOKAHEAD_COHERENCE;
        else return bad_value(err, "--lookahead-score", arg, "mean_logprob, margin or coherence");
        return true;
    case OPT_TOOLS: gen->interventions.tools = true; return true;
    case OPT_TOOL_MARKER:
        if (!*arg) return bad_value(err, "--tool-marker", arg, "a non-empty opening string");
        gen->interventions.tools = true;
        gen->interventions.tool_marker = arg;
        return true;
    case OPT_TOOL_MARKER_END:
        if (!*arg) return bad_value(err, "--tool-marker-end", arg, "a non-empty closing string");
        gen->interventions.tool_marker_end = arg;
        return true;
    case OPT_INJECT: io->inject_file = arg; return true;
    case OPT_INJECT_EVERY:
        return int_in(err, "--inject-every", arg, 1, INT32_MAX, "an integer >= 1", &gen->interventions.inject_every);
    case OPT_PROMPT_CACHE:
        if (!*arg) return bad_value(err, "--prompt-cache", arg, "a file name");
        io->prompt_cache = arg;
        return true;
    }
    return false;
}

static bool refuse(FILE *err, const char *message) {
    fprintf(err, "llama_selfmod: error: %s\n", message);
    return false;
}

bool cli_intro_check(struct cli_options *opt, FILE *err) {
    cli_intro_options *io = &opt->intro;
    sm_session_params *sp = &opt->session;
    bool observes = io->n_layers > 0 || io->all_layers;
    sp->introspect_layers = io->n_layers > 0 ? io->layers : NULL;
    sp->n_introspect_layers = io->all_layers ? 0 : io->n_layers;
    sp->introspect_all_layers = io->all_layers;
    sp->introspect_hidden = io->hidden_file != NULL;
    if (!observes && (sp->introspect_attention || io->hidden_file))
        return refuse(err, "--introspect-attention and --hidden-states need --introspect-layers");
    if (!observes && io->n_safety > 0)
        return refuse(err, "--safety needs --introspect-layers with the rules' layers");
    opt->gen.interventions.safety_rules = io->safety;
    opt->gen.interventions.n_safety_rules = io->n_safety;
    if ((io->inject_file == NULL) != (opt->gen.interventions.inject_every == 0))
        return refuse(err, "--inject FILE and --inject-every N go together");
    if (io->prompt_cache && !opt->prompt)
        return refuse(err, "--prompt-cache works with --prompt (one generation), not in interactive mode");
    if (io->n_control_vectors == 0 && io->cv_layer_start > 0)
        return refuse(err, "--control-vector-layers needs --control-vector");
    if (opt->gen.interventions.lookahead.score == SM_LOOKAHEAD_COHERENCE && !observes)
        return refuse(err, "--lookahead-score coherence reads the branches' activations: it needs --introspect-layers");
    if (io->steer_rule && io->n_control_vectors == 0)
        return refuse(err, "--steer-when and --steer-target steer with the --control-vector they are given");
    if (io->steer_rule && opt->gen.interventions.steer_rule.signal == SM_STEER_SIGNAL_LAYER_NORM && !observes)
        return refuse(err, "a steer rule on norm@LAYER needs --introspect-layers with that layer");
    return true;
}
