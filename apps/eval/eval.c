/*
 * `llama_selfmod eval`: every strategy on every prompt (with several seeds
 * where it samples), through the library's one generation loop; each
 * output's tokens are scored by a judge model; then the statistics, the
 * tables, and the CSV, JSON and SVG files.
 */
#include "eval/eval.h"

#include "eval/options.h"
#include "eval/prompts.h"
#include "eval/report.h"
#include "eval/stats.h"
#include "eval/strategy.h"

#include <limits.h>
#include <math.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define EXIT_USAGE 2

typedef struct loaded_model {
    const char *path;
    sm_model *model;
} loaded_model;

typedef struct progress {
    bool on;
    int64_t done, total;
    double t0;
} progress;

typedef struct evaluation {
    eval_options opt;
    eval_prompt_set prompts;
    eval_strategy strategies[EVAL_MAX_STRATEGIES];
    int32_t n_strategies;
    int32_t baseline;
    loaded_model loaded[SM_MAX_MODELS + 1 + EVAL_MAX_JUDGES]; /* each file loaded once */
    int32_t n_loaded;
    sm_model *model, *judge_models[EVAL_MAX_JUDGES];
    sm_model *fusion_models[SM_MAX_MODELS];
    sm_session *single, *fused;
    sm_judge *judges[EVAL_MAX_JUDGES];
    int32_t n_judges;
    FILE *csv, *json, *chart;
    eval_output *outputs;
    int32_t n_outputs, cap_outputs;
    int32_t n_unjudged;
    progress bar;
} evaluation;

static void eval_error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

static void eval_error(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    fputs("llama_selfmod eval: error: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
}

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

/* ------------------------------------------------------------------ */
/* Progress bar (stderr, only on a terminal)                           */
/* ------------------------------------------------------------------ */

static void progress_show(progress *p, const char *what) {
    if (!p->on) return;
    enum { WIDTH = 28 };
    int filled = p->total > 0 ? (int)(WIDTH * p->done / p->total) : WIDTH;
    double elapsed = now_s() - p->t0;
    double left = p->done > 0 ? elapsed / (double)p->done * (double)(p->total - p->done) : 0;
    char bar[WIDTH + 1];
    for (int i = 0; i < WIDTH; i++) bar[i] = i < filled ? '#' : '.';
    bar[WIDTH] = '\0';
    fprintf(stderr, "\r\033[K[%s] %lld/%lld  %.30s  %d:%02d left", bar, (long long)p->done, (long long)p->total, what,
            (int)left / 60, (int)left % 60);
    fflush(stderr);
}

static void progress_end(progress *p) {
    if (p->on) fputs("\r\033[K", stderr);
}

/* ------------------------------------------------------------------ */
/* Set-up                                                              */
/* ------------------------------------------------------------------ */

static sm_model *load_model(evaluation *e, const char *path, const char *what) {
    for (int32_t i = 0; i < e->n_loaded; i++)
        if (strcmp(e->loaded[i].path, path) == 0) return e->loaded[i].model;
    sm_model_params mp = sm_model_default_params();
    mp.rpc_servers = e->opt.rpc_servers;
    mp.no_repack = e->opt.no_repack;
    if (mp.rpc_servers) mp.n_gpu_layers = -1;
    sm_error err = {0};
    sm_model *m = sm_model_load(path, &mp, &err);
    if (!m) {
        eval_error("%s: %s", what, err.message);
        return NULL;
    }
    e->loaded[e->n_loaded++] = (loaded_model){path, m};
    return m;
}

static bool parse_strategies(evaluation *e) {
    for (int32_t i = 0; i < e->opt.n_strategies; i++) {
        char msg[512];
        if (eval_strategy_parse(e->opt.strategies[i], &e->strategies[i], msg, sizeof msg) != 0) {
            eval_error("%s", msg);
            return false;
        }
        e->n_strategies++;
        e->strategies[i].gen.n_predict = e->opt.n_predict;
        e->strategies[i].gen.stop_strings = e->opt.stops;
        e->strategies[i].gen.n_stop_strings = e->opt.n_stops;
        if (strcmp(e->opt.strategies[i], e->opt.baseline) == 0) e->baseline = i;
        if (e->strategies[i].fused && e->opt.n_models < 2) {
            eval_error("strategy '%s' fuses models: give them with --models A,B", e->opt.strategies[i]);
            return false;
        }
    }
    return true;
}

static bool open_output(const char *path, const char *flag, FILE **f) {
    if (!path) return true;
    *f = fopen(path, "w");
    if (!*f) eval_error("%s: cannot write '%s'", flag, path);
    return *f != NULL;
}

/* The models' shortest training context: GPT-2 style models cannot go past it. */
static uint32_t context_size(sm_model *const *models, int32_t n, uint32_t requested) {
    uint32_t n_ctx = requested;
    for (int32_t i = 0; i < n; i++) {
        int32_t train = sm_model_n_ctx_train(models[i]);
        if (train > 0 && (n_ctx == 0 || (uint32_t)train < n_ctx)) n_ctx = (uint32_t)train;
    }
    return n_ctx;
}

static sm_session *new_session(evaluation *e, sm_model *const *models, int32_t n) {
    sm_session_params sp = sm_session_default_params();
    sp.n_ctx = context_size(models, n, e->opt.n_ctx);
    sp.n_threads = e->opt.n_threads;
    sm_error err = {0};
    sm_session *s = sm_session_new_fused(models, n, &sp, &err);
    if (!s) eval_error("%s", err.message);
    return s;
}

static bool needs(const evaluation *e, bool fused) {
    for (int32_t i = 0; i < e->n_strategies; i++)
        if (e->strategies[i].fused == fused) return true;
    return false;
}

/* Whether the judge at path is one of the models that generate. */
static bool generates(const evaluation *e, const char *path) {
    char judge[PATH_MAX], other[PATH_MAX];
    if (!realpath(path, judge)) return false;
    const char *paths[SM_MAX_MODELS + 1] = {e->opt.model_path};
    int32_t n = 1;
    for (int32_t m = 0; m < e->opt.n_models; m++) paths[n++] = e->opt.model_paths[m];
    for (int32_t i = 0; i < n; i++)
        if (paths[i] && realpath(paths[i], other) && strcmp(judge, other) == 0) return true;
    return false;
}

/* The panel: every judge reads the outputs' text through its own
 * tokenizer, so its vocabulary is its own business. */
static bool set_up_judges(evaluation *e) {
    for (int32_t k = 0; k < e->opt.n_judges; k++) {
        const char *path = e->opt.judge_paths[k];
        if (generates(e, path)) {
            eval_error("--judge: '%s' is a model that generates: a model never judges its own outputs", path);
            return false;
        }
        if (!(e->judge_models[k] = load_model(e, path, "--judge"))) return false;
        sm_judge_params jp = sm_judge_default_params();
        jp.n_threads = e->opt.n_threads;
        sm_error err = {0};
        if (!(e->judges[k] = sm_judge_new(e->judge_models[k], NULL, &jp, &err))) {
            eval_error("--judge: %s", err.message);
            return false;
        }
        e->n_judges++;
    }
    return true;
}

static bool set_up_models(evaluation *e) {
    sm_set_llama_logging(false);
    e->model = load_model(e, e->opt.model_path, "-m");
    if (!e->model) return false;
    if (needs(e, true)) {
        for (int32_t m = 0; m < e->opt.n_models; m++)
            if (!(e->fusion_models[m] = load_model(e, e->opt.model_paths[m], "--models"))) return false;
        if (!(e->fused = new_session(e, e->fusion_models, e->opt.n_models))) return false;
    }
    if (needs(e, false) && !(e->single = new_session(e, &e->model, 1))) return false;
    return set_up_judges(e);
}

/* ------------------------------------------------------------------ */
/* Generation                                                          */
/* ------------------------------------------------------------------ */

static int32_t seeds_of(const evaluation *e, const eval_strategy *s) { return s->deterministic ? 1 : e->opt.n_seeds; }

static bool append_output(evaluation *e, const eval_output *o) {
    if (e->n_outputs == e->cap_outputs) {
        int32_t cap = e->cap_outputs ? e->cap_outputs * 2 : 256;
        eval_output *grown = realloc(e->outputs, sizeof *grown * (size_t)cap);
        if (!grown) return false;
        e->outputs = grown;
        e->cap_outputs = cap;
    }
    e->outputs[e->n_outputs++] = *o;
    return true;
}

/* Every judge scores every output's text after its prompt's, many texts
 * to a decode (sm_judge_score_texts); the panel's score is their mean (an
 * output some judge cannot hold is unjudged). After the generations, so
 * that no judge decodes beside them. */
static bool judge_outputs(evaluation *e) {
    int32_t n = e->n_outputs;
    const char **prompts = calloc((size_t)n + 1, sizeof *prompts), **texts = calloc((size_t)n + 1, sizeof *texts);
    sm_judge_score *scores = calloc((size_t)n + 1, sizeof *scores);
    sm_status *status = calloc((size_t)n + 1, sizeof *status);
    bool *unjudged = calloc((size_t)n + 1, sizeof *unjudged);
    bool ok = prompts && texts && scores && status && unjudged;
    if (!ok) eval_error("out of memory");
    for (int32_t i = 0; ok && i < n; i++) {
        eval_output *o = &e->outputs[i];
        o->judge_bpb = NAN;
        for (int k = 0; k < 4; k++) o->judge_each_bpb[k] = NAN;
        prompts[i] = e->prompts.items[o->prompt].text;
        texts[i] = o->n_tokens > 0 && o->text ? o->text : ""; /* nothing to judge: no score */
    }
    for (int32_t k = 0; ok && k < e->n_judges; k++) {
        if (sm_judge_score_texts(e->judges[k], n, prompts, texts, scores, status) != SM_OK) {
            eval_error("judging the outputs with '%s': %s", e->opt.judge_paths[k], sm_judge_last_error(e->judges[k]));
            ok = false;
        }
        for (int32_t i = 0; ok && i < n; i++) {
            unjudged[i] |= status[i] == SM_ERR_PROMPT_TOO_LONG;
            e->outputs[i].judge_each_bpb[k] = scores[i].bits_per_byte;
        }
    }
    for (int32_t i = 0; ok && i < n && e->n_judges > 0; i++) {
        eval_output *o = &e->outputs[i];
        if (!*texts[i]) continue;
        if (unjudged[i]) {
            e->n_unjudged++;
            for (int k = 0; k < 4; k++) o->judge_each_bpb[k] = NAN;
            continue;
        }
        double sum = 0;
        for (int32_t k = 0; k < e->n_judges; k++) sum += o->judge_each_bpb[k];
        o->judge_bpb = sum / e->n_judges;
        o->n_judged_bytes = (int64_t)strlen(o->text);
    }
    free(prompts);
    free(texts);
    free(scores);
    free(status);
    free(unjudged);
    return ok;
}

/* What one worker generates with: its sessions and its own strategies
 * (operators keep state, so workers never share them). */
typedef struct worker {
    evaluation *e;
    sm_session *single, *fused;
    const eval_strategy *strategies;
    eval_strategy owned[EVAL_MAX_STRATEGIES]; /* parallel workers' copies */
    int32_t n_owned;
    bool failed;
} worker;

static pthread_mutex_t eval_mutex = PTHREAD_MUTEX_INITIALIZER;

static bool run_one(worker *w, int32_t si, int32_t p, int32_t k) {
    evaluation *e = w->e;
    const eval_strategy *st = &w->strategies[si];
    const eval_prompt *prompt = &e->prompts.items[p];
    sm_session *s = st->fused ? w->fused : w->single;
    sm_gen_params gen = st->gen;
    gen.sampling.seed = e->opt.first_seed + (uint64_t)k;

    sm_session_clear(s);
    int64_t decoded_before = sm_session_n_decoded_total(s);
    sm_result res;
    if (sm_session_generate(s, prompt->text, &gen, &res) != SM_OK) {
        eval_error("strategy '%s', prompt on line %d of %s: %s", st->spec, prompt->line, e->opt.prompts_path,
                   sm_session_last_error(s));
        sm_result_free(&res);
        return false;
    }
    eval_output o = {
        .strategy = si,
        .prompt = p,
        .seed_index = k,
        .seed = gen.sampling.seed,
        .tokens = res.tokens,
        .n_tokens = res.n_tokens,
        .text = res.text,
        .stop = res.stop_reason,
        .n_prompt_tokens = res.n_prompt_tokens,
        /* every decode, re-decodes after deep rewinds included; not the prompt */
        .n_decoded = sm_session_n_decoded_total(s) - decoded_before - res.n_prompt_tokens,
        .n_sampled = res.n_sampled,
        .n_retractions = res.n_retractions,
        .n_backtracks = res.n_backtracks,
        .t_generate_ms = res.t_generate_ms,
        .exact = -1,
        .contains = -1,
    };
    res.tokens = NULL; /* now the output's */
    res.text = NULL;
    sm_result_free(&res);
    if (prompt->reference) {
        o.exact = sm_reference_exact_match(o.text, prompt->reference);
        o.contains = sm_reference_contains_match(o.text, prompt->reference);
    }
    pthread_mutex_lock(&eval_mutex); /* the outputs are shared */
    bool ok = append_output(e, &o);
    pthread_mutex_unlock(&eval_mutex);
    if (!ok) eval_output_free(&o);
    return ok;
}

/* The outputs to make, in report order; workers take the next one. */
typedef struct work_item {
    int32_t strategy, prompt, seed_index;
} work_item;

typedef struct work_queue {
    work_item *items;
    int32_t n, next;
} work_queue;

static work_queue queue;

static void *work(void *arg) {
    worker *w = arg;
    evaluation *e = w->e;
    for (;;) {
        pthread_mutex_lock(&eval_mutex);
        bool stop = w->failed || queue.next >= queue.n;
        work_item it = stop ? (work_item){0} : queue.items[queue.next++];
        if (!stop) progress_show(&e->bar, e->strategies[it.strategy].spec);
        pthread_mutex_unlock(&eval_mutex);
        if (stop) return NULL;
        if (!run_one(w, it.strategy, it.prompt, it.seed_index)) {
            w->failed = true;
            pthread_mutex_lock(&eval_mutex);
            queue.next = queue.n; /* the others stop too */
            pthread_mutex_unlock(&eval_mutex);
            return NULL;
        }
        pthread_mutex_lock(&eval_mutex);
        e->bar.done++;
        pthread_mutex_unlock(&eval_mutex);
    }
}

static int by_item(const void *a, const void *b) {
    const eval_output *x = a, *y = b;
    if (x->strategy != y->strategy) return x->strategy - y->strategy;
    if (x->prompt != y->prompt) return x->prompt - y->prompt;
    return x->seed_index - y->seed_index;
}

/*
 * --parallel N: N workers, each with sessions of its own on one batch per
 * model set, so their generations decode together in one llama_decode
 * per step; the outputs are put back in report order afterwards.
 */
/* What one output can occupy: its prompt (never more tokens than bytes,
 * with BOS and a leading-space token) and n_predict tokens. A batch's
 * cache is n_seq times this and is written at creation, so sizing it to
 * the model's training context would cost more than the outputs. */
static uint32_t output_context(const evaluation *e, int32_t session_n_ctx) {
    if (e->opt.n_ctx > 0) return (uint32_t)session_n_ctx; /* the user's --ctx-size */
    size_t longest = 0;
    for (int32_t p = 0; p < e->prompts.n; p++) {
        size_t len = strlen(e->prompts.items[p].text);
        if (len > longest) longest = len;
    }
    uint64_t need = (uint64_t)longest + 4 + (uint64_t)e->opt.n_predict;
    return need < (uint64_t)session_n_ctx ? (uint32_t)need : (uint32_t)session_n_ctx;
}

static bool make_workers(evaluation *e, worker *workers, int32_t n, sm_batch **single, sm_batch **fused) {
    sm_batch_params bp = sm_batch_default_params();
    bp.n_seq = n;
    bp.n_threads = e->opt.n_threads;
    sm_error err = {0};
    if (e->single) {
        bp.n_ctx_seq = output_context(e, sm_session_n_ctx(e->single));
        if (!(*single = sm_batch_new(&e->model, 1, &bp, &err))) return eval_error("%s", err.message), false;
    }
    if (e->fused) {
        bp.n_ctx_seq = output_context(e, sm_session_n_ctx(e->fused));
        bp.share_decoder = *single; /* one decoding thread: two OpenMP teams slow both */
        if (!(*fused = sm_batch_new(e->fusion_models, e->opt.n_models, &bp, &err)))
            return eval_error("%s", err.message), false;
    }
    for (int32_t w = 0; w < n; w++) {
        worker *wk = &workers[w];
        *wk = (worker){.e = e, .strategies = wk->owned};
        sm_session_params sp = sm_session_default_params();
        sp.n_ctx = bp.n_ctx_seq;
        if (*single) {
            sp.batch = *single;
            sp.n_ctx = sm_batch_n_ctx_seq(*single);
            if (!(wk->single = sm_session_new(e->model, &sp, &err))) return eval_error("%s", err.message), false;
        }
        if (*fused) {
            sp.batch = *fused;
            sp.n_ctx = sm_batch_n_ctx_seq(*fused);
            if (!(wk->fused = sm_session_new_fused(e->fusion_models, e->opt.n_models, &sp, &err)))
                return eval_error("%s", err.message), false;
        }
        for (int32_t i = 0; i < e->n_strategies; i++) {
            char msg[512];
            if (eval_strategy_parse(e->opt.strategies[i], &wk->owned[i], msg, sizeof msg) != 0)
                return eval_error("%s", msg), false;
            wk->n_owned++;
            wk->owned[i].gen = e->strategies[i].gen; /* n_predict, stops */
            wk->owned[i].gen.backtrack.operators = wk->owned[i].operators;
        }
    }
    return true;
}

static void free_workers(worker *workers, int32_t n) {
    for (int32_t w = 0; w < n; w++) {
        for (int32_t i = 0; i < workers[w].n_owned; i++) eval_strategy_free(&workers[w].owned[i]);
        sm_session_free(workers[w].single);
        sm_session_free(workers[w].fused);
    }
}

static bool run_all(evaluation *e) {
    e->bar = (progress){.on = !e->opt.quiet && isatty(STDERR_FILENO), .t0 = now_s()};
    for (int32_t i = 0; i < e->n_strategies; i++) e->bar.total += (int64_t)e->prompts.n * seeds_of(e, &e->strategies[i]);
    queue = (work_queue){.items = malloc(sizeof(work_item) * (size_t)(e->bar.total > 0 ? e->bar.total : 1))};
    if (!queue.items) return eval_error("out of memory"), false;
    for (int32_t i = 0; i < e->n_strategies; i++)
        for (int32_t p = 0; p < e->prompts.n; p++)
            for (int32_t k = 0; k < seeds_of(e, &e->strategies[i]); k++) queue.items[queue.n++] = (work_item){i, p, k};
    int32_t n = e->opt.n_parallel;
    bool ok = true;
    if (n <= 1) {
        worker w = {.e = e, .single = e->single, .fused = e->fused, .strategies = e->strategies};
        work(&w);
        ok = !w.failed;
    } else {
        worker *workers = calloc((size_t)n, sizeof *workers);
        pthread_t *threads = calloc((size_t)n, sizeof *threads);
        sm_batch *single = NULL, *fused = NULL;
        ok = workers && threads && make_workers(e, workers, n, &single, &fused);
        for (int32_t w = 0; ok && w < n; w++) pthread_create(&threads[w], NULL, work, &workers[w]);
        for (int32_t w = 0; ok && w < n; w++) {
            pthread_join(threads[w], NULL);
            ok = ok && !workers[w].failed;
        }
        if (workers) free_workers(workers, n);
        sm_batch_free(single);
        sm_batch_free(fused);
        free(workers);
        free(threads);
        qsort(e->outputs, (size_t)e->n_outputs, sizeof *e->outputs, by_item);
    }
    /* the judges after the generations: a judge decoding beside the batch
     * would share the cores between two spinning thread teams (3x slower) */
    if (ok) ok = judge_outputs(e);
    free(queue.items);
    progress_end(&e->bar);
    if (!ok) return false;
    return true;
}

/* ------------------------------------------------------------------ */
/* Report                                                              */
/* ------------------------------------------------------------------ */

/* The command line as a shell would take it back. */
static char *command_line(int argc, char **argv) {
    size_t size = 32;
    for (int i = 0; i < argc; i++) size += 4 * strlen(argv[i]) + 3;
    char *out = malloc(size), *w = out;
    if (!out) return NULL;
    w += sprintf(w, "llama_selfmod");
    for (int i = 0; i < argc; i++) {
        const char *a = argv[i];
        bool plain = *a && strspn(a, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.,/:=+@") == strlen(a);
        *w++ = ' ';
        if (plain) {
            w += sprintf(w, "%s", a);
            continue;
        }
        *w++ = '\'';
        for (; *a; a++) {
            if (*a == '\'') w += sprintf(w, "'\\''");
            else *w++ = *a;
        }
        *w++ = '\'';
    }
    *w = '\0';
    return out;
}

static bool write_file(FILE *f, const char *path, int (*writer)(FILE *, const eval_report *), const eval_report *r) {
    if (!f) return true;
    bool ok = writer(f, r) == 0;
    ok = fclose(f) == 0 && ok;
    if (!ok) eval_error("writing '%s' failed", path);
    return ok;
}

static bool report_results(evaluation *e, int argc, char **argv, double wall_seconds) {
    eval_summary *summaries = calloc((size_t)e->n_strategies, sizeof *summaries);
    char *command = command_line(argc, argv);
    bool ok = summaries && command;
    for (int32_t i = 0; ok && i < e->n_strategies; i++)
        ok = eval_summarize(e->outputs, e->n_outputs, i, seeds_of(e, &e->strategies[i]), e->baseline, e->prompts.n,
                            &summaries[i]) == 0;
    if (!ok) {
        eval_error("out of memory summarising the results");
    } else {
        char judge_description[1024] = "";
        for (int32_t k = 0, len = 0; k < e->n_judges && len < (int32_t)sizeof judge_description; k++) {
            int n = snprintf(judge_description + len, sizeof judge_description - (size_t)len, "%s%d: %s (%s)",
                             k ? ", " : "", k + 1, e->opt.judge_paths[k], sm_model_description(e->judge_models[k]));
            if (n > 0) len += n;
        }
        char model_description[256];
        snprintf(model_description, sizeof model_description, "%s (%s)", e->opt.model_path,
                 sm_model_description(e->model));
        eval_report r = {
            .opt = &e->opt,
            .command = command,
            .model_description = model_description,
            .judge_description = e->n_judges ? judge_description : NULL,
            .prompts = &e->prompts,
            .strategies = e->strategies,
            .summaries = summaries,
            .n_strategies = e->n_strategies,
            .baseline = e->baseline,
            .outputs = e->outputs,
            .n_outputs = e->n_outputs,
            .n_unjudged = e->n_unjudged,
            .wall_seconds = wall_seconds,
        };
        eval_print_tables(stdout, &r);
        ok = write_file(e->csv, e->opt.csv_path, eval_write_csv, &r);
        ok = write_file(e->json, e->opt.json_path, eval_write_json, &r) && ok;
        ok = write_file(e->chart, e->opt.chart_path, eval_write_chart, &r) && ok;
        e->csv = e->json = e->chart = NULL;
    }
    free(summaries);
    free(command);
    return ok;
}

static void evaluation_free(evaluation *e) {
    for (int32_t i = 0; i < e->n_outputs; i++) eval_output_free(&e->outputs[i]);
    free(e->outputs);
    for (int32_t i = 0; i < e->n_strategies; i++) eval_strategy_free(&e->strategies[i]);
    for (int32_t k = 0; k < e->n_judges; k++) sm_judge_free(e->judges[k]);
    sm_session_free(e->single);
    sm_session_free(e->fused);
    for (int32_t i = 0; i < e->n_loaded; i++) sm_model_free(e->loaded[i].model);
    if (e->csv) fclose(e->csv);
    if (e->json) fclose(e->json);
    if (e->chart) fclose(e->chart);
    eval_prompts_free(&e->prompts);
    eval_options_free(&e->opt);
}

int eval_main(int argc, char **argv) {
    evaluation *e = calloc(1, sizeof *e);
    if (!e) return EXIT_FAILURE;
    switch (eval_parse_args(argc, argv, &e->opt, stderr)) {
    case EVAL_PARSE_EXIT_OK: free(e); return EXIT_SUCCESS;
    case EVAL_PARSE_ERROR: free(e); return EXIT_USAGE;
    case EVAL_PARSE_RUN: break;
    }
    int code = EXIT_FAILURE;
    char msg[512];
    double t0 = now_s();
    if (!parse_strategies(e)) {
        code = EXIT_USAGE;
    } else if (eval_prompts_load(e->opt.prompts_path, e->opt.limit, &e->prompts, msg, sizeof msg) != 0) {
        eval_error("%s", msg);
    } else if (open_output(e->opt.csv_path, "--csv", &e->csv) && open_output(e->opt.json_path, "--json", &e->json) &&
               open_output(e->opt.chart_path, "--chart", &e->chart) && set_up_models(e) && run_all(e) &&
               report_results(e, argc, argv, now_s() - t0)) {
        code = EXIT_SUCCESS;
    }
    evaluation_free(e);
    free(e);
    return code;
}
