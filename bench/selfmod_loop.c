/*
 * selfmod_loop - the same measurement as plain_loop, through the selfmod
 * library with all monitoring on: per-token signals over the full
 * vocabulary, the policy deciding on every token, an event callback, the
 * rewind history kept. Sampling is greedy (temperature 0) and retraction is
 * off, so the timed runs never rewind (checked).
 *
 *   selfmod_loop MODEL.gguf [-n N] [-t THREADS] [-p PROMPT] [-c CTX] [--reps R] [--show]
 *   selfmod_loop MODEL.gguf --retraction-cost [--critical F] [-n N] [-t THREADS] [-p PROMPT]
 *
 * Each repetition clears the session and feeds the prompt (not timed), then
 * times sm_session_generate. The library cannot ignore end-of-generation
 * tokens, so the rate is the tokens actually kept over the time taken.
 * Prints one line:
 *
 *   selfmod tokens_per_s=1234.5 n=256 reps=5 min=... max=... median_ms=... decoded=256
 *
 * --retraction-cost generates N tokens twice from the same prompt, once
 * with retraction off and once on (at the critical threshold, 0.35 unless
 * --critical says otherwise), and reports how many more tokens the second
 * run decoded against how many it removed: a retraction should cost only the
 * re-decoding of the removed tokens that had been decoded, never the prefix.
 */
#include "bench_common.h"

#include "selfmod.h"

typedef struct event_counts {
    int32_t tokens;
    int32_t modifications;
} event_counts;

/* The monitoring a front-end does: look at every event. */
static bool count_event(const sm_event *event, void *user_data) {
    event_counts *counts = user_data;
    counts->tokens += event->type == SM_EVENT_TOKEN;
    counts->modifications += event->type == SM_EVENT_MODIFICATION;
    return true;
}

static sm_session *open_session(sm_model *model, const bench_options *opt) {
    sm_session_params sparams = sm_session_default_params();
    const int32_t n_ctx_train = sm_model_n_ctx_train(model);
    sparams.n_ctx = (uint32_t)(opt->n_ctx < n_ctx_train ? opt->n_ctx : n_ctx_train);
    sparams.n_batch = 512;
    sparams.n_threads = opt->n_threads;
    sm_error err = {0};
    sm_session *session = sm_session_new(model, &sparams, &err);
    if (!session) {
        fprintf(stderr, "selfmod_loop: %s\n", err.message);
    }
    return session;
}

static sm_gen_params greedy_monitored_params(int32_t n_predict, event_counts *counts) {
    sm_gen_params params = sm_gen_default_params();
    params.n_predict = n_predict;
    params.stop_at_bos = false; /* the plain loop does not stop there either */
    params.sampling.temperature = 0.0f;
    params.policy.enabled = true;
    params.policy.retract = 0;
    params.on_event = count_event;
    params.user_data = counts;
    return params;
}

/* Clears the session, feeds the prompt, then generates; returns the
 * milliseconds sm_session_generate took, or < 0. */
static double generate_once(sm_session *session, const char *prompt, const sm_gen_params *params,
                            sm_result *result) {
    if (sm_session_clear(session) != SM_OK || sm_session_feed_text(session, prompt, true) != SM_OK) {
        fprintf(stderr, "selfmod_loop: feeding the prompt failed: %s\n",
                sm_session_last_error(session));
        return -1.0;
    }
    const double start = bench_now_ms();
    const sm_status status = sm_session_generate(session, NULL, params, result);
    const double elapsed = bench_now_ms() - start;
    if (status != SM_OK) {
        fprintf(stderr, "selfmod_loop: generation failed (%s): %s\n", sm_status_name(status),
                sm_session_last_error(session));
        return -1.0;
    }
    return elapsed;
}

static int run_speed(sm_session *session, const bench_options *opt) {
    event_counts counts = {0};
    const sm_gen_params params = greedy_monitored_params(opt->n_predict, &counts);
    double tokens_per_s[BENCH_MAX_REPS], ms[BENCH_MAX_REPS];
    int32_t n_tokens = 0, n_decoded = 0;
    /* Repetition 0 warms caches and buffers and is not counted. */
    for (int32_t rep = 0; rep <= opt->reps; rep++) {
        sm_result result = {0};
        counts = (event_counts){0};
        const double elapsed = generate_once(session, opt->prompt, &params, &result);
        if (elapsed < 0.0) {
            return 1;
        }
        if (result.n_retractions != 0 || result.n_tokens_removed != 0) {
            fprintf(stderr, "selfmod_loop: the timed run retracted %d tokens; retraction must be off\n",
                    result.n_tokens_removed);
            sm_result_free(&result);
            return 1;
        }
        if (counts.tokens != result.n_tokens) {
            fprintf(stderr, "selfmod_loop: %d token events for %d kept tokens\n", counts.tokens,
                    result.n_tokens);
            sm_result_free(&result);
            return 1;
        }
        if (rep == 0 && opt->show) {
            fprintf(stderr, "selfmod_loop generated (%s, %d modifications):%s\n",
                    sm_stop_reason_name(result.stop_reason), counts.modifications, result.text);
        }
        if (rep > 0) {
            tokens_per_s[rep - 1] = result.n_tokens * 1e3 / elapsed;
            ms[rep - 1] = elapsed;
        }
        n_tokens = result.n_tokens;
        n_decoded = result.n_decoded;
        sm_result_free(&result);
    }
    const double median_ms = bench_median(ms, opt->reps);
    const double median_rate = bench_median(tokens_per_s, opt->reps);
    printf("selfmod tokens_per_s=%.1f n=%d reps=%d min=%.1f max=%.1f median_ms=%.3f decoded=%d\n",
           median_rate, n_tokens, opt->reps, tokens_per_s[0], tokens_per_s[opt->reps - 1],
           median_ms, n_decoded);
    return 0;
}

/* Prints one line per retraction, from the events. */
static bool print_retraction(const sm_event *event, void *user_data) {
    (void)user_data;
    if (event->type == SM_EVENT_RETRACTION) {
        printf("retraction at token %d: removed %d (window confidence %.3f)\n", event->token_index,
               event->n_removed, event->confidence);
    }
    return true;
}

/* The same prompt twice, retraction off and on; both keep n_predict tokens,
 * so every extra decode is what the retractions cost. Each retraction's
 * candidate is rejected before it is decoded, so the expected cost is the
 * removed tokens minus one per retraction, and anything above that would be
 * a re-decoded prefix. */
static int run_retraction_cost(sm_session *session, const bench_options *opt) {
    event_counts counts = {0};
    const sm_gen_params without = greedy_monitored_params(opt->n_predict, &counts);
    sm_gen_params with = without;
    with.policy.retract = 1;
    with.policy.critical_threshold = opt->critical;
    if (with.policy.confidence_threshold < opt->critical) {
        with.policy.confidence_threshold = opt->critical;
    }
    with.on_event = print_retraction;

    sm_result base = {0}, retracted = {0};
    const bool ok = generate_once(session, opt->prompt, &without, &base) >= 0.0 &&
                    generate_once(session, opt->prompt, &with, &retracted) >= 0.0;
    int rc = 1;
    if (ok && retracted.n_retractions == 0) {
        fprintf(stderr, "selfmod_loop: no retraction happened at critical threshold %.2f; "
                        "try a higher --critical\n", opt->critical);
    } else if (ok && base.n_tokens != retracted.n_tokens) {
        fprintf(stderr, "selfmod_loop: the runs kept %d and %d tokens (end of generation?); "
                        "their decodes cannot be compared\n", base.n_tokens, retracted.n_tokens);
    } else if (ok) {
        const int32_t extra = retracted.n_decoded - base.n_decoded;
        const int32_t expected = retracted.n_tokens_removed - retracted.n_retractions;
        printf("retraction_cost kept=%d retractions=%d removed=%d decoded=%d "
               "decoded_without_retraction=%d extra_decoded=%d "
               "decoded_then_removed=%d prefix_redecoded=%d extra_per_retraction=%.2f\n",
               retracted.n_tokens, retracted.n_retractions, retracted.n_tokens_removed,
               retracted.n_decoded, base.n_decoded, extra, expected, extra - expected,
               (double)extra / retracted.n_retractions);
        rc = 0;
    }
    sm_result_free(&base);
    sm_result_free(&retracted);
    return rc;
}

int main(int argc, char **argv) {
    bench_options opt;
    if (!bench_parse_options(argc, argv, true, &opt)) {
        bench_usage("selfmod_loop", true);
        return 2;
    }
    sm_set_llama_logging(false);
    sm_model_params mparams = sm_model_default_params();
    mparams.no_repack = opt.no_repack;
    mparams.n_gpu_layers = opt.n_gpu_layers;
    sm_error err = {0};
    sm_model *model = sm_model_load(opt.model_path, &mparams, &err);
    if (!model) {
        fprintf(stderr, "selfmod_loop: %s\n", err.message);
        return 1;
    }
    sm_session *session = open_session(model, &opt);
    int rc = 1;
    if (session) {
        rc = opt.retraction_cost ? run_retraction_cost(session, &opt) : run_speed(session, &opt);
        sm_session_free(session);
    }
    sm_model_free(model);
    return rc;
}
