/*
 * bench_introspect - what observation and lookahead cost: tokens/s of the
 * library's loop with introspection off, on 3 layers, on all layers, on all
 * layers with attention (flash attention off), and with lookahead, against
 * a plain llama.cpp decode-and-greedy loop in the same process.
 *
 *   bench_introspect MODEL.gguf [-n N] [-t THREADS] [-p PROMPT] [-c CTX] [--reps R] [--show]
 *
 * Every configuration generates greedily with the policy off (nothing is
 * ever rewound) from the same prompt; each repetition feeds the prompt
 * untimed and times the generation; one untimed warm-up first. One line
 * per configuration:
 *
 *   introspect config=layers3 tokens_per_s=1234.5 vs_plain=0.93 n=256 reps=5 decoded=256 branchings=0
 */
#include "bench_common.h"

#include "selfmod.h"

#include <llama.h>

typedef struct config {
    const char *name;
    bool layers3, all_layers, attention;
    int32_t lookahead;     /* branches, 0 = off */
    int32_t room;          /* max_branches of the session (lookahead or not) */
} config;

static const config CONFIGS[] = {
    {.name = "off"},
    {.name = "layers3", .layers3 = true},
    {.name = "all_layers", .all_layers = true},
    {.name = "all_layers+attention", .all_layers = true, .attention = true},
    {.name = "room_for_3_branches", .room = 3},
    {.name = "lookahead3x4", .lookahead = 3, .room = 3},
};
#define N_CONFIGS ((int32_t)(sizeof CONFIGS / sizeof CONFIGS[0]))

/* The baseline, as plain_loop.c: argmax over the last logits, decode it. */
typedef struct plain_run {
    struct llama_context *ctx;
    llama_token prompt[512];
    int32_t n_prompt, n_vocab;
} plain_run;

static bool open_plain(plain_run *p, const bench_options *opt, sm_model *model) {
    struct llama_model *lm = sm_model_llama(model);
    const struct llama_vocab *vocab = llama_model_get_vocab(lm);
    p->n_vocab = llama_vocab_n_tokens(vocab);
    p->n_prompt = llama_tokenize(vocab, opt->prompt, (int32_t)strlen(opt->prompt), p->prompt, 512, true, true);
    struct llama_context_params cp = llama_context_default_params();
    const int32_t n_train = llama_model_n_ctx_train(lm);
    cp.n_ctx = (uint32_t)(opt->n_ctx < n_train ? opt->n_ctx : n_train);
    cp.n_batch = 512;
    cp.n_threads = cp.n_threads_batch = opt->n_threads;
    p->ctx = p->n_prompt > 0 ? llama_init_from_model(lm, cp) : NULL;
    if (!p->ctx) fprintf(stderr, "bench_introspect: cannot set up the plain loop\n");
    return p->ctx != NULL;
}

static double plain_once(plain_run *p, int32_t n_predict) {
    llama_memory_clear(llama_get_memory(p->ctx), true);
    llama_decode(p->ctx, llama_batch_get_one(p->prompt, p->n_prompt));
    const double start = bench_now_ms();
    for (int32_t i = 0; i < n_predict; i++) {
        const float *logits = llama_get_logits_ith(p->ctx, -1);
        llama_token best = 0;
        for (llama_token t = 1; t < p->n_vocab; t++)
            if (logits[t] > logits[best]) best = t;
        if (i + 1 < n_predict) llama_decode(p->ctx, llama_batch_get_one(&best, 1));
    }
    return n_predict * 1e3 / (bench_now_ms() - start);
}

static sm_session *open_session(sm_model *model, const bench_options *opt, const config *c) {
    static const int32_t three[3] = {0, 1, -1}; /* first, second, last */
    sm_session_params sp = sm_session_default_params();
    const int32_t n_train = sm_model_n_ctx_train(model);
    sp.n_ctx = (uint32_t)(opt->n_ctx < n_train ? opt->n_ctx : n_train);
    sp.n_threads = opt->n_threads;
    if (c->layers3) {
        sp.introspect_layers = three;
        sp.n_introspect_layers = 3;
    }
    sp.introspect_all_layers = c->all_layers;
    sp.introspect_attention = c->attention;
    sp.max_branches = c->room;
    sm_error err = {0};
    sm_session *s = sm_session_new(model, &sp, &err);
    if (!s) fprintf(stderr, "bench_introspect: %s: %s\n", c->name, err.message);
    return s;
}

/* The consumer a front-end would be: looks at every token's statistics. */
static bool read_stats(const sm_event *e, void *user_data) {
    double *sink = user_data;
    if (e->type == SM_EVENT_TOKEN && e->introspection)
        for (int32_t l = 0; l < e->introspection->n_layers; l++) *sink += e->introspection->layers[l].norm;
    return true;
}

typedef struct config_run {
    const config *c;
    sm_session *session;
    sm_gen_params gp;
    double sink;
    int32_t n_tokens, decoded, branchings;
    double rates[BENCH_MAX_REPS];
} config_run;

static void setup_params(config_run *run, int32_t n_predict) {
    run->gp = sm_gen_default_params();
    run->gp.stop_at_bos = false; /* as the plain loop: every run the same length */
    run->gp.n_predict = n_predict;
    run->gp.sampling.temperature = 0.0f;
    run->gp.policy.enabled = false;
    run->gp.on_event = read_stats;
    run->gp.user_data = &run->sink;
    if (run->c->lookahead) {
        run->gp.interventions.lookahead.k = run->c->lookahead;
        run->gp.interventions.lookahead.depth = 4;
    }
}

/* One generation; its rate in kept tokens per second, or < 0. */
static double config_once(config_run *run, const bench_options *opt, bool show) {
    sm_session *s = run->session;
    if (sm_session_clear(s) != SM_OK || sm_session_feed_text(s, opt->prompt, true) != SM_OK) return -1.0;
    sm_result r = {0};
    const double start = bench_now_ms();
    if (sm_session_generate(s, NULL, &run->gp, &r) != SM_OK) {
        fprintf(stderr, "bench_introspect: %s: %s\n", run->c->name, sm_session_last_error(s));
        return -1.0;
    }
    const double ms = bench_now_ms() - start;
    if (show) fprintf(stderr, "%s:%s\n", run->c->name, r.text);
    run->n_tokens = r.n_tokens;
    run->decoded = r.n_decoded;
    run->branchings = r.n_lookaheads;
    sm_result_free(&r);
    return run->n_tokens * 1e3 / ms;
}

int main(int argc, char **argv) {
    bench_options opt;
    if (!bench_parse_options(argc, argv, false, &opt)) {
        bench_usage("bench_introspect", false);
        return 2;
    }
    sm_set_llama_logging(false);
    sm_model_params mp = sm_model_default_params();
    sm_error err = {0};
    sm_model *model = sm_model_load(opt.model_path, &mp, &err);
    if (!model) {
        fprintf(stderr, "bench_introspect: %s\n", err.message);
        return 1;
    }
    plain_run plain = {0};
    config_run runs[N_CONFIGS] = {{0}};
    bool ok = open_plain(&plain, &opt, model);
    for (int32_t c = 0; ok && c < N_CONFIGS; c++) {
        runs[c].c = &CONFIGS[c];
        runs[c].session = open_session(model, &opt, &CONFIGS[c]);
        ok = runs[c].session != NULL;
        if (ok) setup_params(&runs[c], opt.n_predict);
    }
    /* Round 0 warms up; every round runs each configuration once, starting
     * at another one, so drift in machine load spreads over all of them. */
    double plain_rates[BENCH_MAX_REPS];
    for (int32_t round = 0; ok && round <= opt.reps; round++) {
        for (int32_t k = 0; ok && k <= N_CONFIGS; k++) {
            int32_t c = (k + round) % (N_CONFIGS + 1);
            double rate = c == N_CONFIGS ? plain_once(&plain, opt.n_predict)
                                         : config_once(&runs[c], &opt, round == 0 && opt.show);
            ok = rate >= 0.0;
            if (round == 0) continue;
            if (c == N_CONFIGS) plain_rates[round - 1] = rate;
            else runs[c].rates[round - 1] = rate;
        }
    }
    if (ok) {
        const double base = bench_median(plain_rates, opt.reps);
        printf("introspect config=plain tokens_per_s=%.1f vs_plain=1.000 n=%d reps=%d decoded=%d branchings=0\n", base,
               opt.n_predict, opt.reps, opt.n_predict - 1);
        for (int32_t c = 0; c < N_CONFIGS; c++) {
            const double rate = bench_median(runs[c].rates, opt.reps);
            printf("introspect config=%s tokens_per_s=%.1f vs_plain=%.3f n=%d reps=%d decoded=%d branchings=%d\n",
                   CONFIGS[c].name, rate, rate / base, runs[c].n_tokens, opt.reps, runs[c].decoded, runs[c].branchings);
        }
    }
    for (int32_t c = 0; c < N_CONFIGS; c++) sm_session_free(runs[c].session);
    if (plain.ctx) llama_free(plain.ctx);
    sm_model_free(model);
    return ok ? 0 : 1;
}
