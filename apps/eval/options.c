/* The flags of `llama_selfmod eval`, checked strictly before anything loads. */
#include "eval/options.h"
#include "common/flags.h"

#include <ctype.h>
#include <errno.h>
#include <getopt.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

enum {
    OPT_MODELS = 1000,
    OPT_JUDGE,
    OPT_STRATEGIES,
    OPT_STRATEGY,
    OPT_BASELINE,
    OPT_SEEDS,
    OPT_SEED,
    OPT_LIMIT,
    OPT_CTX_SIZE,
    OPT_THREADS,
    OPT_RPC,
    OPT_NO_REPACK,
    OPT_PARALLEL,
    OPT_STOP,
    OPT_CSV,
    OPT_JSON,
    OPT_CHART,
    OPT_QUIET,
};

static const struct option long_options[] = {
    {"prompts", required_argument, NULL, 'f'},
    {"model", required_argument, NULL, 'm'},
    {"models", required_argument, NULL, OPT_MODELS},
    {"judge", required_argument, NULL, OPT_JUDGE},
    {"strategies", required_argument, NULL, OPT_STRATEGIES},
    {"strategy", required_argument, NULL, OPT_STRATEGY},
    {"baseline", required_argument, NULL, OPT_BASELINE},
    {"n-predict", required_argument, NULL, 'n'},
    {"seeds", required_argument, NULL, OPT_SEEDS},
    {"seed", required_argument, NULL, OPT_SEED},
    {"limit", required_argument, NULL, OPT_LIMIT},
    {"ctx-size", required_argument, NULL, OPT_CTX_SIZE},
    {"threads", required_argument, NULL, OPT_THREADS},
    {"rpc", required_argument, NULL, OPT_RPC},
    {"no-repack", no_argument, NULL, OPT_NO_REPACK},
    {"parallel", required_argument, NULL, OPT_PARALLEL},
    {"stop", required_argument, NULL, OPT_STOP},
    {"csv", required_argument, NULL, OPT_CSV},
    {"json", required_argument, NULL, OPT_JSON},
    {"chart", required_argument, NULL, OPT_CHART},
    {"quiet", no_argument, NULL, OPT_QUIET},
    {"help", no_argument, NULL, 'h'},
    {NULL, 0, NULL, 0},
};

static const char short_options[] = ":f:m:n:h";

void eval_print_help(FILE *out) {
    fputs(
        "usage: llama_selfmod eval -f PROMPTS -m MODEL [options]\n"
        "Generates from every prompt with every strategy and compares repetition, diversity,\n"
        "judge perplexity, reference matches and cost (formulas: docs/EVAL.md).\n"
        "\n"
        "input:\n"
        "  -f, --prompts FILE        one prompt per line (# starts a comment), or JSONL with\n"
        "                            \"prompt\" and an optional \"reference\" answer\n"
        "  -m, --model PATH          the generating model (default: the first of --models)\n"
        "      --models A,B,...      the models that fusion:MODE strategies fuse (A generates\n"
        "                            the tokens; the vocabularies must be the same)\n"
        "      --judge A[,B,...]     a panel of up to 4 judges: each scores every output's text\n"
        "                            through its own tokenizer (any vocabulary), in bits per\n"
        "                            byte; the panel's mean is judge_bpb. A generating model\n"
        "                            never judges its own outputs.\n"
        "      --limit N             only the first N prompts (default: all)\n"
        "\n"
        "strategies:\n"
        "      --strategies LIST     comma-separated (default: greedy,sample,selfmod)\n"
        "      --strategy SPEC       add one strategy; repeatable\n"
        "      --baseline SPEC       what the paired comparison is against\n"
        "                            (default: greedy when listed, else the first)\n"
        "  A strategy is one base and any modifiers joined by '+':\n"
        "    greedy                T = 0, no repeat penalty, no policy\n"
        "    sample                T 0.7 with the library's other defaults (top-k 40, top-p 0.95,\n"
        "                          min-p 0.05, repeat penalty 1.1), no policy\n"
        "    selfmod               what llama_selfmod does with no flags: the calibrated policy\n"
        "                          at T 0 (its repeat penalty and loop retraction)\n"
        "    selfmod-aggressive    sample + the fixed policy, aggressive (retraction, bursts)\n"
        "    selfmod-retract       the fixed policy that also retracts at critical confidence\n"
        "    original              sample + the Rust llama_selfmod's policy (--preset original)\n"
        "    original-aggressive   original with its --aggressive (retraction and bursts)\n"
        "    calibrated            sample + the calibrated policy (--preset calibrated)\n"
        "    fixed                 sample + the fixed policy (the default before; --preset fixed)\n"
        "    preset:FILE.json      a preset file that llama_selfmod tune wrote\n"
        "    dry                   sample with llama.cpp's DRY (0.8, 1.75, 2, whole context)\n"
        "                          instead of the repeat penalty\n"
        "    min-p                 T 1, min-p 0.1, no top-k/top-p, no repeat penalty\n"
        "    xtc                   sample with llama.cpp's XTC (threshold 0.1, probability 0.5)\n"
        "    typical               sample with locally typical sampling (p 0.9)\n"
        "    BASE:key=value,...    overrides: temp top_k top_p min_p rp repeat_last_n dry\n"
        "                          dry_base dry_allowed_length typical xtc xtc_threshold\n"
        "                          retract window critical\n"
        "                          confidence sharpen retract_tokens max_retractions\n"
        "                          exploration rep_window rep_min_distinct\n"
        "    op:NAME[:key=value]   a backtracking operator (llama_selfmod --operator help)\n"
        "    fusion:MODE[:key=value]  fuse --models (keys: turn alpha beta abstain_below)\n"
        "  Modifiers alone sample like `sample`: op:repetition = sample+op:repetition.\n"
        "\n"
        "generation:\n"
        "  -n, --n-predict N         tokens per output (default: 64)\n"
        "      --seeds N             seeds per prompt for strategies that sample (default: 3)\n"
        "      --seed S              the first seed; seed k is S + k (default: 1)\n"
        "      --stop STR            stop an output when STR appears; repeatable\n"
        "      --ctx-size N          context size; 0 = the models' training context (default: 0)\n"
        "      --threads N           CPU threads; 0 = all online cores (default: 0)\n"
        "      --rpc HOST:PORT[,...] every model's layers on these ggml RPC servers\n"
        "      --no-repack           weights as stored: no repacked or AMX buffers (llama.cpp's)\n"
        "      --parallel N          generate N outputs at once, their tokens decoded together\n"
        "                            in one batch (default: 1; the same outputs up to\n"
        "                            llama.cpp's batched rounding, which can break a near-tie)\n"
        "\n"
        "output:\n"
        "      --csv FILE            one row per strategy\n"
        "      --json FILE           every metric, every output\n"
        "      --chart FILE.svg      rep-4 against judge bits/byte and against cost, per strategy\n"
        "      --quiet               no progress bar\n"
        "  -h, --help                this help\n",
        out);
}

static bool report(FILE *err, const char *flag, const char *value, const char *expected) {
    return flag_invalid(err, "llama_selfmod eval", flag, value, expected);
}

static bool parse_int_in(FILE *err, const char *flag, const char *text, long lo, long hi, const char *expected,
                         int32_t *out) {
    return flag_int_in(err, "llama_selfmod eval", flag, text, lo, hi, expected, out);
}

static bool parse_seed(FILE *err, const char *text, uint64_t *out) {
    return flag_u64(text, out) || report(err, "--seed", text, "an integer >= 0");
}

static bool add_strategy(FILE *err, eval_options *opt, const char *spec, size_t len) {
    if (len == 0) {
        fprintf(err, "llama_selfmod eval: error: an empty strategy in the list\n");
        return false;
    }
    if (opt->n_strategies >= EVAL_MAX_STRATEGIES) {
        fprintf(err, "llama_selfmod eval: error: more than %d strategies\n", EVAL_MAX_STRATEGIES);
        return false;
    }
    char *copy = strndup(spec, len);
    if (!copy) return false;
    for (int32_t i = 0; i < opt->n_strategies; i++)
        if (strcmp(opt->strategies[i], copy) == 0) {
            fprintf(err, "llama_selfmod eval: error: strategy '%s' is listed twice\n", copy);
            free(copy);
            return false;
        }
    opt->strategies[opt->n_strategies++] = copy;
    return true;
}

/* A list item with '=' but no ':' before it ("backtrack_count=2") continues
 * the previous item's key=value list: operator specs use commas too. */
static bool continues_previous(const char *item, size_t len) {
    const char *eq = memchr(item, '=', len);
    return eq && !memchr(item, ':', (size_t)(eq - item)) && !memchr(item, '+', (size_t)(eq - item));
}

static bool add_strategy_list(FILE *err, eval_options *opt, const char *list) {
    const char *start = list; /* of the strategy being collected */
    const char *item = list;
    for (;;) {
        const char *comma = strchr(item, ',');
        const char *end = comma ? comma : item + strlen(item);
        const char *next = comma ? comma + 1 : NULL;
        /* Does the following item continue this strategy? */
        if (next && continues_previous(next, strcspn(next, ","))) {
            item = next;
            continue;
        }
        if (!add_strategy(err, opt, start, (size_t)(end - start))) return false;
        if (!next) return true;
        start = item = next;
    }
}

/* Splits a comma-separated list of paths into paths[0..max): *buffer owns
 * the copy they point into. Returns how many, or -1 for more than max. */
static int32_t split_paths(const char *list, char **buffer, const char **paths, int32_t max) {
    free(*buffer);
    if (!(*buffer = strdup(list))) return -1;
    int32_t n = 0;
    for (char *save = NULL, *p = strtok_r(*buffer, ",", &save); p; p = strtok_r(NULL, ",", &save)) {
        if (n == max) return -1;
        paths[n++] = p;
    }
    return n;
}

static bool add_models(FILE *err, eval_options *opt, const char *list) {
    opt->n_models = split_paths(list, &opt->models_buffer, opt->model_paths, SM_MAX_MODELS);
    if (opt->n_models < 0) return report(err, "--models", list, "at most 8 models");
    if (opt->n_models < 2) return report(err, "--models", list, "at least two comma-separated model paths");
    return true;
}

static bool add_judges(FILE *err, eval_options *opt, const char *list) {
    opt->n_judges = split_paths(list, &opt->judges_buffer, opt->judge_paths, EVAL_MAX_JUDGES);
    if (opt->n_judges < 0) return report(err, "--judge", list, "at most 4 judges");
    if (opt->n_judges == 0) return report(err, "--judge", list, "one or more comma-separated model paths");
    return true;
}

static bool apply_option(FILE *err, eval_options *opt, int c, const char *arg) {
    switch (c) {
    case 'f': opt->prompts_path = arg; return true;
    case 'm': opt->model_path = arg; return true;
    case OPT_MODELS: return add_models(err, opt, arg);
    case OPT_JUDGE: return add_judges(err, opt, arg);
    case OPT_STRATEGIES: return add_strategy_list(err, opt, arg);
    case OPT_STRATEGY: return add_strategy(err, opt, arg, strlen(arg));
    case OPT_BASELINE: opt->baseline = arg; return true;
    case 'n': return parse_int_in(err, "--n-predict", arg, 1, 1 << 20, "an integer >= 1", &opt->n_predict);
    case OPT_SEEDS: return parse_int_in(err, "--seeds", arg, 1, 10000, "an integer in [1, 10000]", &opt->n_seeds);
    case OPT_SEED: return parse_seed(err, arg, &opt->first_seed);
    case OPT_LIMIT: return parse_int_in(err, "--limit", arg, 1, INT32_MAX, "an integer >= 1", &opt->limit);
    case OPT_CTX_SIZE: {
        int32_t n;
        if (!parse_int_in(err, "--ctx-size", arg, 0, INT32_MAX, "an integer >= 0 (0 = the model's)", &n)) return false;
        opt->n_ctx = (uint32_t)n;
        return true;
    }
    case OPT_THREADS:
        return parse_int_in(err, "--threads", arg, 0, 1024, "an integer in [0, 1024] (0 = all cores)", &opt->n_threads);
    case OPT_RPC:
        opt->rpc_servers = arg;
        return flag_endpoints(err, "llama_selfmod eval", "--rpc", arg);
    case OPT_NO_REPACK: opt->no_repack = true; return true;
    case OPT_PARALLEL:
        return parse_int_in(err, "--parallel", arg, 1, 256, "an integer in [1, 256]", &opt->n_parallel);
    case OPT_STOP:
        if (!*arg) return report(err, "--stop", arg, "a non-empty string");
        if (opt->n_stops >= EVAL_MAX_STOPS) return report(err, "--stop", arg, "at most 16 stop strings");
        opt->stops[opt->n_stops++] = arg;
        return true;
    case OPT_CSV: opt->csv_path = arg; return true;
    case OPT_JSON: opt->json_path = arg; return true;
    case OPT_CHART: opt->chart_path = arg; return true;
    case OPT_QUIET: opt->quiet = true; return true;
    }
    return false;
}

static bool check_options(FILE *err, eval_options *opt) {
    if (!opt->prompts_path) {
        fprintf(err, "llama_selfmod eval: error: no prompt file (give one with -f FILE)\n");
        return false;
    }
    if (!opt->model_path && opt->n_models > 0) opt->model_path = opt->model_paths[0];
    if (!opt->model_path) {
        fprintf(err, "llama_selfmod eval: error: no model (give one with -m PATH)\n");
        return false;
    }
    if (opt->n_strategies == 0 && !add_strategy_list(err, opt, "greedy,sample,selfmod")) return false;
    if (opt->baseline) {
        for (int32_t i = 0; i < opt->n_strategies; i++)
            if (strcmp(opt->strategies[i], opt->baseline) == 0) return true;
        fprintf(err, "llama_selfmod eval: error: --baseline '%s' is not one of the strategies evaluated\n",
                opt->baseline);
        return false;
    }
    opt->baseline = opt->strategies[0];
    for (int32_t i = 0; i < opt->n_strategies; i++)
        if (strcmp(opt->strategies[i], "greedy") == 0) opt->baseline = opt->strategies[i];
    return true;
}

/* llama.cpp's names for flags eval has */
static const flag_alias LLAMA_ALIASES[] = {
    {"-nr", "--no-repack"}, {"-c", "--ctx-size"}, {"-t", "--threads"}, {"-np", "--parallel"}, {"-s", "--seed"},
    {NULL, NULL}};

eval_parse_result eval_parse_args(int argc, char **argv, eval_options *opt, FILE *err) {
    *opt = (eval_options){.n_predict = 64, .n_seeds = 3, .first_seed = 1, .n_parallel = 1};
    if (!flag_llama_aliases(argc, argv, short_options, long_options, LLAMA_ALIASES, err, "llama_selfmod eval"))
        return EVAL_PARSE_ERROR;
    optind = 0; /* getopt_long starts afresh: main may have used it */
    opterr = 0;
    int c;
    while ((c = getopt_long(argc, argv, short_options, long_options, NULL)) != -1) {
        if (c == 'h') {
            eval_print_help(stdout);
            eval_options_free(opt);
            return EVAL_PARSE_EXIT_OK;
        }
        bool ok;
        if (c == ':') {
            fprintf(err, "llama_selfmod eval: error: %s needs a value\n", argv[optind - 1]);
            ok = false;
        } else if (c == '?') {
            fprintf(err, "llama_selfmod eval: error: unknown flag '%s' (see llama_selfmod eval --help)\n",
                    argv[optind - 1]);
            ok = false;
        } else {
            ok = apply_option(err, opt, c, optarg);
        }
        if (!ok) {
            eval_options_free(opt);
            return EVAL_PARSE_ERROR;
        }
    }
    if (optind < argc) {
        fprintf(err, "llama_selfmod eval: error: unexpected argument '%s'\n", argv[optind]);
        eval_options_free(opt);
        return EVAL_PARSE_ERROR;
    }
    if (!check_options(err, opt)) {
        eval_options_free(opt);
        return EVAL_PARSE_ERROR;
    }
    return EVAL_PARSE_RUN;
}

void eval_options_free(eval_options *opt) {
    for (int32_t i = 0; i < opt->n_strategies; i++) free(opt->strategies[i]);
    opt->n_strategies = 0;
    free(opt->models_buffer);
    opt->models_buffer = NULL;
    free(opt->judges_buffer);
    opt->judges_buffer = NULL;
}
