/*
 * plain_loop - the baseline: llama.cpp itself, a plain decode-and-greedy
 * loop straight on llama.h (as llama.cpp's examples/simple does it).
 *
 *   plain_loop MODEL.gguf [-n N] [-t THREADS] [-p PROMPT] [-c CTX] [--reps R] [--show]
 *
 * Each repetition clears the context, decodes the prompt (not timed), then
 * times N greedy tokens: argmax over the last logits, decode that token,
 * repeat. End-of-generation tokens are ignored so every repetition makes
 * exactly N tokens; as in examples/simple, the N-th token is sampled but
 * not decoded. Prints one line:
 *
 *   plain tokens_per_s=1234.5 n=256 reps=5 min=... max=... median_ms=... decoded=255
 */
#include "bench_common.h"

#include <llama.h>

#include <math.h>

typedef struct plain_bench {
    struct llama_model *model;
    struct llama_context *ctx;
    const struct llama_vocab *vocab;
    int32_t n_vocab;
    llama_token *prompt;
    int32_t n_prompt;
    llama_token *generated;
} plain_bench;

static void quiet_log(enum ggml_log_level level, const char *text, void *user_data) {
    (void)level, (void)text, (void)user_data;
}

static bool tokenize_prompt(plain_bench *b, const char *text) {
    const int32_t len = (int32_t)strlen(text);
    const int32_t needed = -llama_tokenize(b->vocab, text, len, NULL, 0, true, true);
    b->prompt = malloc(sizeof(llama_token) * (size_t)(needed > 0 ? needed : 1));
    b->n_prompt = llama_tokenize(b->vocab, text, len, b->prompt, needed, true, true);
    if (b->n_prompt <= 0) {
        fprintf(stderr, "plain_loop: the prompt gives no tokens\n");
        return false;
    }
    return true;
}

static bool open_bench(plain_bench *b, const bench_options *opt) {
    struct llama_model_params mparams = llama_model_default_params();
    mparams.n_gpu_layers = opt->n_gpu_layers;
    mparams.use_extra_bufts = !opt->no_repack;
    b->model = llama_model_load_from_file(opt->model_path, mparams);
    if (!b->model) {
        fprintf(stderr, "plain_loop: cannot load model '%s'\n", opt->model_path);
        return false;
    }
    b->vocab = llama_model_get_vocab(b->model);
    b->n_vocab = llama_vocab_n_tokens(b->vocab);
    if (!tokenize_prompt(b, opt->prompt)) {
        return false;
    }
    const int32_t n_ctx_train = llama_model_n_ctx_train(b->model);
    const int32_t n_ctx = opt->n_ctx < n_ctx_train ? opt->n_ctx : n_ctx_train;
    if (b->n_prompt + opt->n_predict > n_ctx) {
        fprintf(stderr, "plain_loop: %d prompt + %d generated tokens do not fit the context of %d\n",
                b->n_prompt, opt->n_predict, n_ctx);
        return false;
    }
    struct llama_context_params cparams = llama_context_default_params();
    cparams.n_ctx = (uint32_t)n_ctx;
    cparams.n_batch = 512;
    cparams.n_threads = opt->n_threads;
    cparams.n_threads_batch = opt->n_threads;
    b->ctx = llama_init_from_model(b->model, cparams);
    if (!b->ctx) {
        fprintf(stderr, "plain_loop: cannot create a llama context\n");
        return false;
    }
    b->generated = malloc(sizeof(llama_token) * (size_t)opt->n_predict);
    return b->generated != NULL;
}

static void close_bench(plain_bench *b) {
    free(b->generated);
    free(b->prompt);
    if (b->ctx) {
        llama_free(b->ctx);
    }
    if (b->model) {
        llama_model_free(b->model);
    }
}

/* Returns -1 when the logits are not finite (a broken model). */
static llama_token argmax_last_logits(const plain_bench *b) {
    const float *logits = llama_get_logits_ith(b->ctx, -1);
    llama_token best = 0;
    for (llama_token t = 1; t < b->n_vocab; t++) {
        if (logits[t] > logits[best]) {
            best = t;
        }
    }
    return isfinite(logits[best]) ? best : -1;
}

/* One repetition; returns the milliseconds the N tokens took, or < 0. */
static double run_once(plain_bench *b, int32_t n_predict) {
    llama_memory_clear(llama_get_memory(b->ctx), true);
    if (llama_decode(b->ctx, llama_batch_get_one(b->prompt, b->n_prompt)) != 0) {
        fprintf(stderr, "plain_loop: decoding the prompt failed\n");
        return -1.0;
    }
    const double start = bench_now_ms();
    for (int32_t i = 0; i < n_predict; i++) {
        llama_token token = argmax_last_logits(b);
        if (token < 0) {
            fprintf(stderr, "plain_loop: non-finite logits at token %d\n", i);
            return -1.0;
        }
        b->generated[i] = token;
        if (i + 1 < n_predict && llama_decode(b->ctx, llama_batch_get_one(&token, 1)) != 0) {
            fprintf(stderr, "plain_loop: decoding token %d failed\n", i);
            return -1.0;
        }
    }
    return bench_now_ms() - start;
}

static void show_text(const plain_bench *b, int32_t n_tokens) {
    fprintf(stderr, "plain_loop generated:");
    for (int32_t i = 0; i < n_tokens; i++) {
        char piece[256];
        const int32_t len = llama_token_to_piece(b->vocab, b->generated[i], piece, sizeof piece, 0, true);
        fprintf(stderr, "%.*s", len > 0 ? len : 0, piece);
    }
    fprintf(stderr, "\n");
}

int main(int argc, char **argv) {
    bench_options opt;
    if (!bench_parse_options(argc, argv, false, &opt)) {
        bench_usage("plain_loop", false);
        return 2;
    }
    llama_log_set(quiet_log, NULL);
    llama_backend_init();

    plain_bench b = {0};
    bool ok = open_bench(&b, &opt);
    double ms[BENCH_MAX_REPS];
    /* Repetition 0 warms caches and buffers and is not counted. */
    for (int32_t rep = 0; ok && rep <= opt.reps; rep++) {
        const double elapsed = run_once(&b, opt.n_predict);
        ok = elapsed >= 0.0;
        if (ok && rep == 0 && opt.show) {
            show_text(&b, opt.n_predict);
        }
        if (ok && rep > 0) {
            ms[rep - 1] = elapsed;
        }
    }
    if (ok) {
        const double median_ms = bench_median(ms, opt.reps);
        printf("plain tokens_per_s=%.1f n=%d reps=%d min=%.1f max=%.1f median_ms=%.3f decoded=%d\n",
               opt.n_predict * 1e3 / median_ms, opt.n_predict, opt.reps,
               opt.n_predict * 1e3 / ms[opt.reps - 1], opt.n_predict * 1e3 / ms[0], median_ms,
               opt.n_predict - 1);
    }
    close_bench(&b);
    llama_backend_free();
    return ok ? 0 : 1;
}
