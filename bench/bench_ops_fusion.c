/*
 * bench_ops_fusion - two measurements through the one generation loop.
 *
 *   bench_ops_fusion operators MODEL [-n N] [-t T] [--reps R]
 *     tokens/s with each built-in operator active but set so it never fires,
 *     against no operator (same run, alternating); then each operator with
 *     its defaults, reporting backtracks and tokens decoded per kept token.
 *
 *   bench_ops_fusion fusion MODEL_A MODEL_B [-n N] [-t T] [--reps R]
 *     per-token latency of A alone, B alone (each with all T threads) and
 *     the two fused (T threads split between them, decoding in parallel).
 */
#include "selfmod.h"
#include "llama.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define MAX_REPS 50

static double now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

static int by_value(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static double median(double *v, int n) {
    qsort(v, (size_t)n, sizeof *v, by_value);
    return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

typedef struct options {
    int32_t n, threads, reps;
} options;

static sm_model *load(const char *path) {
    sm_error err = {0};
    sm_model *m = sm_model_load(path, NULL, &err);
    if (!m) {
        fprintf(stderr, "bench_ops_fusion: %s\n", err.message);
        exit(1);
    }
    return m;
}

static sm_session *session_of(sm_model **models, int32_t n_models, int32_t threads) {
    sm_session_params sp = sm_session_default_params();
    sp.n_threads = threads;
    sp.n_ctx = 1024;
    sm_error err = {0};
    sm_session *s = sm_session_new_fused(models, n_models, &sp, &err);
    if (!s) {
        fprintf(stderr, "bench_ops_fusion: %s\n", err.message);
        exit(1);
    }
    return s;
}

/* One timed generation: milliseconds per kept token; fills *out. */
static double timed_run(sm_session *s, const sm_gen_params *gp, sm_result *out) {
    sm_session_clear(s);
    double t0 = now_ms();
    if (sm_session_generate(s, "Once upon a time", gp, out) != SM_OK) {
        fprintf(stderr, "bench_ops_fusion: %s\n", sm_session_last_error(s));
        exit(1);
    }
    return (now_ms() - t0 - out->t_prompt_ms) / (out->n_tokens > 0 ? out->n_tokens : 1);
}

/* Rejects end-of-generation tokens so that every run keeps exactly N
 * tokens (a rejected candidate is never decoded, so this costs nothing). */
static int32_t no_eog_decide(void *state, const sm_token_view *view) {
    return llama_vocab_is_eog(state, view->token) ? 1 : 0;
}
static const sm_operator_vtable no_eog_vt = {.name = "no_eog", .decide = no_eog_decide};

static sm_gen_params greedy(int32_t n) {
    sm_gen_params gp = sm_gen_default_params();
    gp.stop_at_bos = false; /* as the plain loop: every run the same length */
    gp.n_predict = n;
    gp.sampling.temperature = 0.0f;
    gp.sampling.repeat_penalty = 1.0f;
    gp.policy.enabled = false;
    return gp;
}

/* Specs that keep each operator silent, and the operator names. */
static const char *const silent_specs[] = {
    "probability_threshold:min_probability=1e-30", "entropy_threshold:max_entropy=1000",
    "probability_margin:min_margin=0",         "probability_drop:max_drop=1",
    "probability_trend:drop_threshold=1e-30",  "repetition:max_repetitions=100000",
    "ngram_overlap:ngram_size=1000",           "logit_threshold:min_logit=-1e30",
    "never",
};

static void bench_operators(const char *path, const options *o) {
    sm_model *m = load(path);
    sm_session *s = session_of(&m, 1, o->threads);
    const int n_ops = (int)(sizeof silent_specs / sizeof *silent_specs);
    printf("| operator (not firing) | tokens/s none | tokens/s with it | ratio |\n|---|---|---|---|\n");
    for (int k = 0; k < n_ops; k++) {
        sm_error err = {0};
        sm_operator *op = sm_operator_from_spec(silent_specs[k], &err);
        if (!op) {
            fprintf(stderr, "bench_ops_fusion: %s\n", err.message);
            exit(1);
        }
        sm_gen_params none = greedy(o->n), with = greedy(o->n);
        with.backtrack.operators = &op;
        with.backtrack.n_operators = 1;
        double a[MAX_REPS], b[MAX_REPS];
        for (int r = 0; r <= o->reps; r++) { /* round 0 warms up */
            sm_result ra, rb;
            double ta = timed_run(s, &none, &ra), tb = timed_run(s, &with, &rb);
            if (rb.n_backtracks != 0) fprintf(stderr, "warning: %s fired\n", silent_specs[k]);
            if (r > 0) a[r - 1] = 1000.0 / ta, b[r - 1] = 1000.0 / tb;
            sm_result_free(&ra);
            sm_result_free(&rb);
        }
        double ma = median(a, o->reps), mb = median(b, o->reps);
        char name[64];
        snprintf(name, sizeof name, "%s", silent_specs[k]);
        char *colon = strchr(name, ':');
        if (colon) *colon = '\0';
        printf("| %s | %.1f | %.1f | %.3f |\n", name, ma, mb, mb / ma);
        sm_operator_free(op);
    }
    printf("\n| operator (defaults) | kept | backtracks | decoded per kept token | stop |\n|---|---|---|---|---|\n");
    for (int k = 0; k < n_ops; k++) {
        char name[64];
        snprintf(name, sizeof name, "%s", silent_specs[k]);
        char *colon = strchr(name, ':');
        if (colon) *colon = '\0';
        sm_error err = {0};
        sm_operator *op = sm_operator_from_spec(name, &err);
        sm_gen_params gp = greedy(o->n);
        gp.backtrack.operators = &op;
        gp.backtrack.n_operators = 1;
        sm_result r;
        timed_run(s, &gp, &r);
        printf("| %s | %d | %d | %.3f | %s |\n", name, r.n_tokens, r.n_backtracks,
               r.n_tokens ? (double)r.n_decoded / r.n_tokens : 0.0, sm_stop_reason_name(r.stop_reason));
        sm_result_free(&r);
        sm_operator_free(op);
    }
    sm_session_free(s);
    sm_model_free(m);
}

static void bench_fusion(const char *path_a, const char *path_b, const options *o) {
    sm_model *models[2] = {load(path_a), load(path_b)};
    const struct llama_vocab *vocab = llama_model_get_vocab(sm_model_llama(models[0]));
    sm_operator *no_eog = sm_operator_new(&no_eog_vt, (void *)vocab);
    int32_t half = o->threads / 2 > 0 ? o->threads / 2 : 1;
    /* A alone and B alone with every thread, then with the share each gets
     * when fused; then the two fused, decoding in parallel. */
    sm_session *runs[5] = {session_of(&models[0], 1, o->threads), session_of(&models[1], 1, o->threads),
                           session_of(&models[0], 1, half), session_of(&models[1], 1, half),
                           session_of(models, 2, o->threads)};
    sm_gen_params gp = greedy(o->n);
    gp.fusion.mode = SM_FUSION_AVERAGE;
    gp.backtrack.operators = &no_eog;
    gp.backtrack.n_operators = 1;
    gp.backtrack.max_backtracks = 1000000;
    double lat[5][MAX_REPS];
    for (int r = 0; r <= o->reps; r++) {
        for (int k = 0; k < 5; k++) {
            sm_result res;
            double ms = timed_run(runs[k], &gp, &res);
            if (res.n_tokens != o->n) fprintf(stderr, "warning: run %d kept %d tokens\n", k, res.n_tokens);
            if (r > 0) lat[k][r - 1] = ms;
            sm_result_free(&res);
        }
    }
    double m[5];
    for (int k = 0; k < 5; k++) m[k] = median(lat[k], o->reps);
    printf("| threads per model | A alone ms/token | B alone ms/token | sum | max | fused ms/token | fused / sum | fused / max |\n"
           "|---|---|---|---|---|---|---|---|\n");
    for (int k = 0; k < 4; k += 2) {
        double sum = m[k] + m[k + 1], max = m[k] > m[k + 1] ? m[k] : m[k + 1];
        printf("| alone %d, fused %d | %.3f | %.3f | %.3f | %.3f | %.3f | %.2f | %.2f |\n", k ? half : o->threads, half,
               m[k], m[k + 1], sum, max, m[4], m[4] / sum, m[4] / max);
    }
    for (int k = 0; k < 5; k++) sm_session_free(runs[k]);
    sm_operator_free(no_eog);
    sm_model_free(models[0]);
    sm_model_free(models[1]);
}

static bool parse_options(int argc, char **argv, int first, options *o) {
    *o = (options){.n = 128, .threads = 2, .reps = 5};
    for (int i = first; i < argc; i++) {
        int32_t *dst = !strcmp(argv[i], "-n") ? &o->n : !strcmp(argv[i], "-t") ? &o->threads
                                                       : !strcmp(argv[i], "--reps") ? &o->reps : NULL;
        if (!dst || i + 1 >= argc) return false;
        *dst = atoi(argv[++i]);
    }
    return o->n > 0 && o->threads > 0 && o->reps > 0 && o->reps <= MAX_REPS;
}

int main(int argc, char **argv) {
    sm_set_llama_logging(false);
    options o;
    if (argc >= 3 && !strcmp(argv[1], "operators") && parse_options(argc, argv, 3, &o)) {
        bench_operators(argv[2], &o);
        return 0;
    }
    if (argc >= 4 && !strcmp(argv[1], "fusion") && parse_options(argc, argv, 4, &o)) {
        bench_fusion(argv[2], argv[3], &o);
        return 0;
    }
    fprintf(stderr, "usage: %s operators MODEL [-n N] [-t T] [--reps R]\n"
                    "       %s fusion MODEL_A MODEL_B [-n N] [-t T] [--reps R]\n", argv[0], argv[0]);
    return 2;
}
