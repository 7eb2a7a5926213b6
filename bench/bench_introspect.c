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
} config;

/* The baseline, as plain_loop.c: argmax over the last logits, decode it. */
static double plain_rate(const bench_options *opt, sm_model *model) {
    struct llama_model *lm = sm_model_llama(model);
    const struct llama_vocab *vocab = llama_model_get_vocab(lm);
    const int32_t n_vocab = llama_vocab_n_tokens(vocab);
    llama_token prompt[512];
    const int32_t n_prompt = llama_tokenize(vocab, opt->prompt, (int32_t)strlen(opt->prompt), prompt, 512, true, true);
    struct llama_context_params cp = llama_context_default_params();
    const int32_t n_train = llama_model_n_ctx_train(lm);
    cp.n_ctx = (uint32_t)(opt->n_ctx < n_train ? opt->n_ctx : n_train);
    cp.n_batch = 512;
    cp.n_threads = cp.n_threads_batch = opt->n_threads;
    struct llama_context *ctx = n_prompt > 0 ? llama_init_from_model(lm, cp) : NULL;
    if (!ctx) return -1.0;
    double rates[BENCH_MAX_REPS];
    for (int32_t rep = 0; rep <= opt->reps; rep++) {
        llama_memory_clear(llama_get_memory(ctx), true);
        llama_decode(ctx, llama_batch_get_one(prompt, n_prompt));
        const double start = bench_now_ms();
        for (int32_t i = 0; i < opt->n_predict; i++) {
            const float *logits = llama_get_logits_ith(ctx, -1);
            llama_token best = 0;
            for (llama_token t = 1; t < n_vocab; t++)
                if (logits[t] > logits[best]) best = t;
            if (i + 1 < opt->n_predict) llama_decode(ctx, llama_batch_get_one(&best, 1));
        }
        if (rep > 0) rates[rep - 1] = opt->n_predict * 1e3 / (bench_now_ms() - start);
    }
    llama_free(ctx);
    return bench_median(rates, opt->reps);
}

static sm_session *open_session(sm_model *model, const bench_options *opt, const config *c) {
    static const int32_t three[3] = {0, 1, -1}; /* first, second, last: layers of any model */
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
    sp.max_branches = c->lookahead;
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

static int run_config(sm_model *model, const bench_options *opt, const config *c, double plain) {
    sm_session *s = open_session(model, opt, c);
    if (!s) return 1;
    double sink = 0.0;
    sm_gen_params gp = sm_gen_default_params();
    gp.n_predict = opt->n_predict;
    gp.sampling.temperature = 0.0f;
    gp.policy.enabled = false;
    gp.on_event = read_stats;
    gp.user_data = &sink;
    if (c->lookahead) {
        gp.lookahead.k = c->lookahead;
        gp.lookahead.depth = 4;
    }
    double rates[BENCH_MAX_REPS];
    sm_result r = {0};
    int32_t n_tokens = 0, decoded = 0, branchings = 0;
    for (int32_t rep = 0; rep <= opt->reps; rep++) {
        if (sm_session_clear(s) != SM_OK || sm_session_feed_text(s, opt->prompt, true) != SM_OK) break;
        const double start = bench_now_ms();
        if (sm_session_generate(s, NULL, &gp, &r) != SM_OK) {
            fprintf(stderr, "bench_introspect: %s: %s\n", c->name, sm_session_last_error(s));
            sm_session_free(s);
            return 1;
        }
        const double ms = bench_now_ms() - start;
        if (rep == 0 && opt->show) fprintf(stderr, "%s:%s\n", c->name, r.text);
        if (rep > 0) rates[rep - 1] = r.n_tokens * 1e3 / ms;
        n_tokens = r.n_tokens;
        decoded = r.n_decoded;
        branchings = r.n_lookaheads;
        sm_result_free(&r);
    }
    const double rate = bench_median(rates, opt->reps);
    printf("introspect config=%s tokens_per_s=%.1f vs_plain=%.3f n=%d reps=%d decoded=%d branchings=%d\n", c->name, rate,
           plain > 0 ? rate / plain : 0.0, n_tokens, opt->reps, decoded, branchings);
    fflush(stdout);
    sm_session_free(s);
    return 0;
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
    const double plain = plain_rate(&opt, model);
    printf("introspect config=plain tokens_per_s=%.1f vs_plain=1.000 n=%d reps=%d decoded=%d branchings=0\n", plain,
           opt.n_predict, opt.reps, opt.n_predict - 1);
    static const config configs[] = {
        {.name = "off"},
        {.name = "layers3", .layers3 = true},
        {.name = "all_layers", .all_layers = true},
        {.name = "all_layers+attention", .all_layers = true, .attention = true},
        {.name = "lookahead3x4", .lookahead = 3},
    };
    int rc = plain > 0 ? 0 : 1;
    for (size_t i = 0; rc == 0 && i < sizeof configs / sizeof configs[0]; i++) rc = run_config(model, &opt, &configs[i], plain);
    sm_model_free(model);
    return rc;
}
