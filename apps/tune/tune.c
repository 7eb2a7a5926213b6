/*
 * `llama_selfmod tune`: searches the calibrated policy's settings on a
 * user's model and prompts, as backtracking-llm does with optuna, by random
 * search with successive halving: every round evaluates the surviving
 * settings (one `eval` run, all of them decoded together in one process) on
 * more prompts and keeps the best third. The objective is the judges' bits
 * per byte, plus a penalty of 10 per unit of rep-4 above --max-rep4. Every
 * trial goes to the CSV; the best is written as a preset file for --preset.
 */
#include "tune/tune.h"

#include "eval/eval.h"
#include "selfmod.h"

#include <cjson/cJSON.h>
#include <fcntl.h>
#include <getopt.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

enum { MAX_TRIALS = 60, ROUNDS = 3 };

typedef struct tune_options {
    const char *prompts, *model, *judges, *csv, *output;
    int32_t trials, n_predict, seeds, threads;
    double max_rep4;
    uint64_t seed;
    bool quiet;
} tune_options;

typedef struct trial {
    char spec[160];
    float temperature, repeat_penalty;
    int32_t max_retractions, window, retract;
    double rep4, bpb, objective;
} trial;

static void usage(FILE *f) {
    fputs("usage: llama_selfmod tune -f PROMPTS -m MODEL --judge A[,B,...] [options]\n"
          "Searches the calibrated policy's settings (temperature from 0, 0.1, 0.2, 0.3, 0.5, 0.7, 1 in\n"
          "turn; repeat penalty, loop retractions, window at random) on your model and prompts: random search with successive halving (3 rounds on\n"
          "1/4, 1/2 and all of the prompts, the best third surviving each). Objective: the judges'\n"
          "bits per byte + 10 x (rep-4 above --max-rep4).\n\n"
          "  -f, --prompts FILE     prompts, as for eval\n"
          "  -m, --model PATH       the model to tune for\n"
          "      --judge A[,B,...]  the judge panel (other models; see eval --help)\n"
          "      --trials N         settings tried in the first round (default: 24, at most 60)\n"
          "      --max-rep4 X       the repetition allowed before the penalty (default: 0.05)\n"
          "  -n, --n-predict N      tokens per output (default: 64)\n"
          "      --seeds N          seeds per prompt (default: 2)\n"
          "      --seed S           the search's random seed (default: 1)\n"
          "      --threads N        CPU threads (default: all online cores)\n"
          "      --csv FILE         every trial: round, settings, rep-4, bits/byte, objective\n"
          "  -o, --output FILE      the best as a preset file (default: tuned-preset.json)\n"
          "      --quiet            no progress lines\n"
          "  -h, --help\n",
          f);
}

static int fail(const char *fmt, const char *arg) {
    fprintf(stderr, "llama_selfmod tune: error: ");
    fprintf(stderr, fmt, arg);
    fputc('\n', stderr);
    return 2;
}

static bool parse_int(const char *s, long lo, long hi, int32_t *out) {
    char *end;
    long v = strtol(s, &end, 10);
    if (*s == '\0' || *end != '\0' || v < lo || v > hi) return false;
    *out = (int32_t)v;
    return true;
}

/* 0: run; 1: --help; 2: usage error (said) */
static int parse_args(int argc, char **argv, tune_options *o) {
    enum { OPT_JUDGE = 256, OPT_TRIALS, OPT_MAXREP, OPT_SEEDS, OPT_SEED, OPT_THREADS, OPT_CSV, OPT_QUIET };
    static const struct option longs[] = {
        {"prompts", required_argument, NULL, 'f'}, {"model", required_argument, NULL, 'm'},
        {"judge", required_argument, NULL, OPT_JUDGE}, {"trials", required_argument, NULL, OPT_TRIALS},
        {"max-rep4", required_argument, NULL, OPT_MAXREP}, {"n-predict", required_argument, NULL, 'n'},
        {"seeds", required_argument, NULL, OPT_SEEDS}, {"seed", required_argument, NULL, OPT_SEED},
        {"threads", required_argument, NULL, OPT_THREADS}, {"csv", required_argument, NULL, OPT_CSV},
        {"output", required_argument, NULL, 'o'}, {"quiet", no_argument, NULL, OPT_QUIET},
        {"help", no_argument, NULL, 'h'}, {NULL, 0, NULL, 0},
    };
    *o = (tune_options){.trials = 24, .n_predict = 64, .seeds = 2, .max_rep4 = 0.05, .seed = 1,
                        .output = "tuned-preset.json"};
    optind = 0;
    opterr = 0;
    int c;
    while ((c = getopt_long(argc, argv, ":f:m:n:o:h", longs, NULL)) != -1) {
        char *end;
        switch (c) {
        case 'f': o->prompts = optarg; break;
        case 'm': o->model = optarg; break;
        case OPT_JUDGE: o->judges = optarg; break;
        case 'o': o->output = optarg; break;
        case OPT_CSV: o->csv = optarg; break;
        case OPT_QUIET: o->quiet = true; break;
        case 'h': usage(stdout); return 1;
        case OPT_TRIALS:
            if (!parse_int(optarg, 3, MAX_TRIALS, &o->trials)) return fail("--trials '%s': an integer in [3, 60]", optarg);
            break;
        case 'n':
            if (!parse_int(optarg, 1, 1 << 20, &o->n_predict)) return fail("--n-predict '%s': an integer >= 1", optarg);
            break;
        case OPT_SEEDS:
            if (!parse_int(optarg, 1, 100, &o->seeds)) return fail("--seeds '%s': an integer in [1, 100]", optarg);
            break;
        case OPT_THREADS:
            if (!parse_int(optarg, 0, 1024, &o->threads)) return fail("--threads '%s': an integer in [0, 1024]", optarg);
            break;
        case OPT_SEED:
            o->seed = strtoull(optarg, &end, 10);
            if (*optarg == '\0' || *end != '\0' || *optarg == '-') return fail("--seed '%s': an integer >= 0", optarg);
            break;
        case OPT_MAXREP:
            o->max_rep4 = strtod(optarg, &end);
            if (*optarg == '\0' || *end != '\0' || !(o->max_rep4 >= 0 && o->max_rep4 <= 1))
                return fail("--max-rep4 '%s': a number in [0, 1]", optarg);
            break;
        case ':': return fail("%s needs a value", argv[optind - 1]);
        default: return fail("unknown option '%s' (llama_selfmod tune --help)", argv[optind - 1]);
        }
    }
    if (optind < argc) return fail("unexpected argument '%s'", argv[optind]);
    if (!o->prompts) return fail("%s", "-f PROMPTS is required");
    if (!o->model) return fail("%s", "-m MODEL is required");
    if (!o->judges) return fail("%s", "--judge is required: the objective is the judges' bits per byte");
    return 0;
}

static double uniform(uint64_t *state) {
    *state = *state * 6364136223846793005ULL + 1442695040888963407ULL;
    return (double)(*state >> 11) / 9007199254740992.0;
}

/* A random setting of the calibrated policy; the temperature comes from a
 * ladder in turn, so every run tries greedy and the low temperatures
 * (random draws almost never hit T = 0, often the best). */
static void draw(trial *t, int32_t index, uint64_t *rng) {
    static const float LADDER[] = {0.0f, 0.1f, 0.2f, 0.3f, 0.5f, 0.7f, 1.0f};
    t->temperature = LADDER[index % (int32_t)(sizeof LADDER / sizeof *LADDER)];
    t->repeat_penalty = (float)(1.0 + round(uniform(rng) * 30.0) / 100.0); /* 1 .. 1.3 */
    t->max_retractions = (int32_t)(uniform(rng) * 13.0);                   /* 0 .. 12 */
    t->window = 3 + (int32_t)(uniform(rng) * 8.0);                         /* 3 .. 10 */
    t->retract = t->max_retractions > 0 ? -1 : 0;
    snprintf(t->spec, sizeof t->spec, "calibrated:temp=%.2f,rp=%.2f,max_retractions=%d,window=%d,retract=%d",
             t->temperature, t->repeat_penalty, t->max_retractions, t->window, t->retract);
    t->rep4 = t->bpb = t->objective = NAN;
}

static int count_prompts(const char *path) {
    FILE *f = fopen(path, "r");
    if (!f) return -1;
    int n = 0;
    char line[8192];
    while (fgets(line, sizeof line, f)) {
        const char *p = line;
        while (*p == ' ' || *p == '\t') p++;
        if (*p != '\0' && *p != '\n' && *p != '#') n++;
    }
    fclose(f);
    return n;
}

static double metric(const cJSON *strategy, const char *key) {
    const cJSON *m = cJSON_GetObjectItemCaseSensitive(cJSON_GetObjectItemCaseSensitive(strategy, "metrics"), key);
    const cJSON *mean = cJSON_GetObjectItemCaseSensitive(m, "mean");
    return cJSON_IsNumber(mean) ? mean->valuedouble : NAN;
}

/* Runs eval on the first `limit` prompts with the live trials, quietly, and
 * reads each one's rep-4 and bits per byte back from its JSON. */
static bool evaluate(const tune_options *o, trial **live, int32_t n, int32_t limit, const char *json_path) {
    char n_predict[16], seeds[16], threads[16], lim[16];
    snprintf(n_predict, sizeof n_predict, "%d", o->n_predict);
    snprintf(seeds, sizeof seeds, "%d", o->seeds);
    snprintf(threads, sizeof threads, "%d", o->threads);
    snprintf(lim, sizeof lim, "%d", limit);
    char *argv[32 + 2 * MAX_TRIALS];
    int argc = 0;
    const char *fixed[] = {"eval", "-f", o->prompts, "-m", o->model, "--judge", o->judges, "-n", n_predict, "--seeds",
                           seeds, "--threads", threads, "--limit", lim, "--quiet", "--json", json_path};
    for (size_t i = 0; i < sizeof fixed / sizeof *fixed; i++) argv[argc++] = (char *)fixed[i];
    for (int32_t i = 0; i < n; i++) {
        argv[argc++] = "--strategy";
        argv[argc++] = live[i]->spec;
    }
    argv[argc] = NULL;
    fflush(stdout);
    int saved = dup(STDOUT_FILENO), null = open("/dev/null", O_WRONLY);
    if (saved >= 0 && null >= 0) dup2(null, STDOUT_FILENO); /* eval's table is not tune's output */
    int rc = eval_main(argc, argv);
    fflush(stdout);
    if (saved >= 0) {
        dup2(saved, STDOUT_FILENO);
        close(saved);
    }
    if (null >= 0) close(null);
    if (rc != 0) return false;
    FILE *f = fopen(json_path, "rb");
    if (!f) return false;
    fseek(f, 0, SEEK_END);
    long size = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *text = malloc((size_t)size + 1);
    bool ok = text && fread(text, 1, (size_t)size, f) == (size_t)size;
    fclose(f);
    if (!ok) {
        free(text);
        return false;
    }
    text[size] = '\0';
    cJSON *root = cJSON_Parse(text);
    free(text);
    const cJSON *strategies = cJSON_GetObjectItemCaseSensitive(root, "strategies");
    for (int32_t i = 0; i < n && cJSON_IsArray(strategies); i++) {
        const cJSON *s = cJSON_GetArrayItem(strategies, i);
        live[i]->rep4 = metric(s, "rep_4");
        live[i]->bpb = metric(s, "judge_bpb");
        double over = live[i]->rep4 - o->max_rep4;
        live[i]->objective = live[i]->bpb + 10.0 * (over > 0 ? over : 0);
        if (isnan(live[i]->objective)) live[i]->objective = INFINITY; /* unjudged: never the best */
    }
    cJSON_Delete(root);
    return cJSON_IsArray(strategies);
}

static int by_objective(const void *a, const void *b) {
    double x = (*(trial *const *)a)->objective, y = (*(trial *const *)b)->objective;
    return (x > y) - (x < y);
}

static bool write_preset(const char *path, const trial *t, const tune_options *o, int32_t n_prompts) {
    cJSON *j = cJSON_CreateObject();
    cJSON_AddStringToObject(j, "preset", "calibrated");
    cJSON_AddNumberToObject(j, "temperature", round(t->temperature * 100.0) / 100.0);
    cJSON_AddNumberToObject(j, "repeat_penalty", round(t->repeat_penalty * 100.0) / 100.0);
    cJSON_AddNumberToObject(j, "max_retractions", t->max_retractions);
    cJSON_AddNumberToObject(j, "window", t->window);
    cJSON_AddNumberToObject(j, "retract", t->retract);
    cJSON *m = cJSON_AddObjectToObject(j, "measured");
    cJSON_AddStringToObject(m, "model", o->model);
    cJSON_AddStringToObject(m, "prompts", o->prompts);
    cJSON_AddNumberToObject(m, "n_prompts", n_prompts);
    cJSON_AddStringToObject(m, "judges", o->judges);
    cJSON_AddNumberToObject(m, "rep_4", t->rep4);
    cJSON_AddNumberToObject(m, "judge_bpb", t->bpb);
    cJSON_AddNumberToObject(m, "objective", t->objective);
    char *text = cJSON_Print(j);
    cJSON_Delete(j);
    FILE *f = text ? fopen(path, "w") : NULL;
    bool ok = f && fputs(text, f) >= 0 && fputc('\n', f) != EOF;
    if (f && fclose(f) != 0) ok = false;
    free(text);
    return ok;
}

int tune_main(int argc, char **argv) {
    tune_options o;
    int parsed = parse_args(argc, argv, &o);
    if (parsed == 1) return 0;
    if (parsed != 0) return parsed;
    int n_prompts = count_prompts(o.prompts);
    if (n_prompts < 1) return fail("-f '%s': no prompts (or the file cannot be read)", o.prompts);
    FILE *csv = NULL;
    if (o.csv && !(csv = fopen(o.csv, "w"))) return fail("--csv '%s': cannot write the file", o.csv) - 1;
    if (csv) fputs("round,prompts,spec,temperature,repeat_penalty,max_retractions,window,retract,rep_4,judge_bpb,objective\n", csv);

    trial trials[MAX_TRIALS];
    trial *live[MAX_TRIALS];
    uint64_t rng = o.seed * 0x9e3779b97f4a7c15ULL + 1;
    for (int32_t i = 0; i < o.trials; i++) {
        draw(&trials[i], i, &rng);
        live[i] = &trials[i];
    }
    char json_path[] = "/tmp/llama_selfmod_tune_XXXXXX";
    int fd = mkstemp(json_path);
    if (fd < 0) return fail("%s", "cannot make a temporary file") - 1;
    close(fd);
    int32_t n_live = o.trials;
    int code = 0;
    for (int round = 0; round < ROUNDS && code == 0; round++) {
        int32_t limit = round == ROUNDS - 1 ? n_prompts : (n_prompts >> (ROUNDS - 1 - round));
        if (limit < 1) limit = 1;
        if (!o.quiet)
            fprintf(stderr, "tune: round %d of %d: %d settings on %d prompt%s\n", round + 1, ROUNDS, n_live, limit,
                    limit == 1 ? "" : "s");
        if (!evaluate(&o, live, n_live, limit, json_path)) {
            fprintf(stderr, "llama_selfmod tune: error: the evaluation of round %d failed (see above)\n", round + 1);
            code = 1;
            break;
        }
        qsort(live, (size_t)n_live, sizeof *live, by_objective);
        for (int32_t i = 0; csv && i < n_live; i++)
            fprintf(csv, "%d,%d,\"%s\",%.2f,%.2f,%d,%d,%d,%.6f,%.6f,%.6f\n", round + 1, limit, live[i]->spec,
                    live[i]->temperature, live[i]->repeat_penalty, live[i]->max_retractions, live[i]->window,
                    live[i]->retract, live[i]->rep4, live[i]->bpb, live[i]->objective);
        if (!o.quiet)
            fprintf(stderr, "tune:   best so far %s: rep-4 %.4f, %.4f bits/byte\n", live[0]->spec, live[0]->rep4,
                    live[0]->bpb);
        if (round < ROUNDS - 1) n_live = n_live / 3 > 0 ? (n_live + 2) / 3 : 1;
    }
    remove(json_path);
    if (csv && fclose(csv) != 0 && code == 0) code = fail("--csv '%s': cannot write the file", o.csv) - 1;
    if (code != 0) return code;
    if (!write_preset(o.output, live[0], &o, n_prompts)) return fail("-o '%s': cannot write the preset", o.output) - 1;
    printf("best: %s\n  rep-4 %.4f, judge %.4f bits/byte, objective %.4f\n  preset written to %s (use --preset %s)\n",
           live[0]->spec, live[0]->rep4, live[0]->bpb, live[0]->objective, o.output, o.output);
    return 0;
}
