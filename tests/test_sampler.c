/* The sampling chain and the signals on synthetic distributions. */
#include "testutil.h"
#include "internal.h"

#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

static sm_sample_input input(const float *logits, int32_t n) {
    return (sm_sample_input){.logits = logits, .n_vocab = n, .temperature = 1.0f, .repeat_penalty = 1.0f,
                             .top_k = 0, .top_p = 1.0f, .min_p = 0.0f, .typical_p = 1.0f, .xtc_threshold = 0.1f,
                             .dynatemp_exponent = 1.0f};
}

/* Frequency of each token over many draws. */
static void frequencies(const sm_sample_input *in, int draws, double *freq) {
    sm_sampler_work w;
    assert_int_equal(sm_sampler_work_init(&w, in->n_vocab), 0);
    sm_sample_rng rng;
    sm_sample_rng_init(&rng, 7);
    float p;
    for (int i = 0; i < in->n_vocab; i++) freq[i] = 0;
    for (int i = 0; i < draws; i++) freq[sm_sample(in, &rng, &w, &p)] += 1.0 / draws;
    sm_sampler_work_free(&w);
}

static void test_greedy_bans_and_penalty(void **unused) {
    float logits[4] = {1.0f, 3.0f, 2.9f, -1.0f};
    sm_sample_input in = input(logits, 4);
    in.temperature = 0.0f;
    sm_sampler_work w;
    sm_sampler_work_init(&w, 4);
    sm_sample_rng rng;
    sm_sample_rng_init(&rng, 1);
    float p;
    assert_int_equal(sm_sample(&in, &rng, &w, &p), 1);
    sm_token ban = 1;
    in.bans = &ban;
    in.n_bans = 1;
    assert_int_equal(sm_sample(&in, &rng, &w, &p), 2);
    in.n_bans = 0;
    /* penalty 1.1 on token 1 (appearing twice, penalised once): 3.0/1.1 = 2.727 < 2.9 */
    sm_token recent[3] = {1, 1, 3};
    in.recent = recent;
    in.n_recent = 3;
    in.repeat_penalty = 1.1f;
    assert_int_equal(sm_sample(&in, &rng, &w, &p), 2);
    assert_float_equal(w.logits[1], 3.0f / 1.1f, 1e-6);
    assert_float_equal(w.logits[3], -1.1f, 1e-6); /* negative logits are multiplied */
    /* the input is never modified */
    assert_float_equal(logits[1], 3.0f, 0);
    sm_token all[4] = {0, 1, 2, 3};
    in.bans = all;
    in.n_bans = 4;
    assert_int_equal(sm_sample(&in, &rng, &w, &p), -1);
    sm_sampler_work_free(&w);
}

static void test_top_k_top_p_min_p(void **unused) {
    /* probabilities 0.5, 0.3, 0.2 */
    float logits[3] = {logf(0.5f), logf(0.3f), logf(0.2f)};
    double f[3];
    sm_sample_input in = input(logits, 3);
    in.top_k = 1;
    in.temperature = 5.0f;
    frequencies(&in, 2000, f);
    assert_float_equal(f[0], 1.0, 0);
    in.top_k = 0;
    in.temperature = 1.0f;
    in.top_p = 0.5f;
    frequencies(&in, 2000, f);
    assert_float_equal(f[0], 1.0, 0);
    in.top_p = 0.79f;
    frequencies(&in, 4000, f);
    assert_float_equal(f[2], 0.0, 0);
    assert_float_equal(f[0], 0.5 / 0.8, 0.04);
    in.top_p = 1.0f;
    in.min_p = 0.5f; /* keeps p >= 0.25 */
    frequencies(&in, 4000, f);
    assert_float_equal(f[2], 0.0, 0);
    assert_true(f[1] > 0.3);
    in.min_p = 0.0f;
    frequencies(&in, 20000, f);
    assert_float_equal(f[0], 0.5, 0.02);
    assert_float_equal(f[1], 0.3, 0.02);
    assert_float_equal(f[2], 0.2, 0.02);
}

static void test_temperature_changes_the_draw(void **unused) {
    float logits[2] = {1.0f, 0.0f};
    double cold[2], hot[2];
    sm_sample_input in = input(logits, 2);
    in.temperature = 0.5f;
    frequencies(&in, 20000, cold);
    in.temperature = 2.0f;
    frequencies(&in, 20000, hot);
    double expect_cold = 1.0 / (1.0 + exp(-2.0)), expect_hot = 1.0 / (1.0 + exp(-0.5));
    assert_float_equal(cold[0], expect_cold, 0.015);
    assert_float_equal(hot[0], expect_hot, 0.015);
}

static void test_seed_determinism(void **unused) {
    float logits[8] = {0.1f, 0.2f, 0.3f, 0.4f, 0.5f, 0.6f, 0.7f, 0.8f};
    sm_sample_input in = input(logits, 8);
    sm_sampler_work w;
    sm_sampler_work_init(&w, 8);
    sm_sample_rng a, b;
    sm_sample_rng_init(&a, 5);
    sm_sample_rng_init(&b, 5);
    float p;
    for (int i = 0; i < 100; i++) assert_int_equal(sm_sample(&in, &a, &w, &p), sm_sample(&in, &b, &w, &p));
    sm_sampler_work_free(&w);
}

static void test_signals(void **unused) {
    enum { V = 1000 };
    static float logits[V];
    sm_signals s;
    sm_dist_stats st;
    sm_signals_compute(logits, V, 3, &s, &st);
    assert_float_equal(s.entropy, logf(V), 1e-4);
    assert_float_equal(s.varentropy, 0.0f, 1e-5);
    assert_float_equal(s.p_chosen, 1.0f / V, 1e-7);
    /* two-point: p = (0.75, 0.25) over tokens 7 and 9, the rest impossible */
    for (int i = 0; i < V; i++) logits[i] = -INFINITY;
    logits[7] = logf(0.75f);
    logits[9] = logf(0.25f);
    sm_signals_compute(logits, V, 9, &s, &st);
    assert_int_equal(s.top1_token, 7);
    assert_int_equal(s.top2_token, 9);
    assert_float_equal(s.p_top1, 0.75f, 1e-6);
    assert_float_equal(s.p_top2, 0.25f, 1e-6);
    assert_float_equal(s.p_chosen, 0.25f, 1e-6);
    assert_float_equal(s.logit, logf(0.25f), 1e-6);
    double h = -(0.75 * log(0.75) + 0.25 * log(0.25));
    double v = 0.75 * pow(log(0.75) + h, 2) + 0.25 * pow(log(0.25) + h, 2);
    assert_float_equal(s.entropy, h, 1e-5);
    assert_float_equal(s.varentropy, v, 1e-5);
    sm_candidate top[3];
    assert_int_equal(sm_top_candidates(logits, V, &st, 3, top), 3);
    assert_int_equal(top[0].token, 7);
    assert_int_equal(top[1].token, 9);
    assert_float_equal(top[0].prob, 0.75f, 1e-6);
    assert_float_equal(top[2].prob, 0.0f, 0);
}

/* The whole-vocabulary path with min-p (which skips sorting tokens below
 * the min-p floor) samples from exactly the textbook chain: softmax over
 * all tokens, top-p on the sorted list, min-p, then temperature. */
static void test_min_p_fast_path_matches_reference(void **unused) {
    enum { V = 2000 };
    static float logits[V];
    static double ref[V];
    uint64_t g = 11;
    for (int i = 0; i < V; i++) logits[i] = (float)(sm_rng_uniform(&g) * 12.0 - 6.0);
    const float top_p = 0.9f, min_p = 0.02f, temp = 0.8f;
    /* reference: sort all token ids by logit */
    static int order[V];
    for (int i = 0; i < V; i++) order[i] = i;
    for (int i = 1; i < V; i++) { /* insertion sort, descending */
        int x = order[i], j = i;
        while (j > 0 && logits[order[j - 1]] < logits[x]) { order[j] = order[j - 1]; j--; }
        order[j] = x;
    }
    double z = 0;
    for (int i = 0; i < V; i++) z += exp(logits[i] - logits[order[0]]);
    int keep = V;
    double cum = 0;
    for (int i = 0; i < V; i++) {
        cum += exp(logits[order[i]] - logits[order[0]]) / z;
        if (cum >= top_p) { keep = i + 1; break; }
    }
    int keep2 = 1;
    while (keep2 < keep && exp(logits[order[keep2]] - logits[order[0]]) >= min_p) keep2++;
    double zt = 0;
    for (int i = 0; i < keep2; i++) zt += exp((logits[order[i]] - logits[order[0]]) / temp);
    for (int i = 0; i < V; i++) ref[i] = 0;
    for (int i = 0; i < keep2; i++) ref[order[i]] = exp((logits[order[i]] - logits[order[0]]) / temp) / zt;

    sm_sample_input in = input(logits, V);
    in.top_p = top_p;
    in.min_p = min_p;
    in.temperature = temp;
    sm_sampler_work w;
    sm_sampler_work_init(&w, V);
    sm_sample_rng rng;
    sm_sample_rng_init(&rng, 3);
    for (int d = 0; d < 500; d++) {
        float p;
        sm_token t = sm_sample(&in, &rng, &w, &p);
        assert_true(t >= 0 && ref[t] > 0);
        assert_float_equal(p, ref[t], 1e-5);
    }
    sm_sampler_work_free(&w);
}

/* llama.cpp's own samplers on the same logits: the distribution a draw
 * comes from. The chain is applied to a copy, then what is left is
 * normalised (the final softmax of its dist sampler). */
static int32_t llama_reference(const float *logits, int32_t n, struct llama_sampler *chain, sm_token *ids, float *p) {
    llama_token_data *data = malloc(sizeof *data * (size_t)n);
    for (int32_t t = 0; t < n; t++) data[t] = (llama_token_data){t, logits[t], 0.0f};
    llama_token_data_array arr = {data, (size_t)n, -1, false};
    llama_sampler_apply(chain, &arr);
    double max = -INFINITY, z = 0;
    for (size_t i = 0; i < arr.size; i++) max = arr.data[i].logit > max ? arr.data[i].logit : max;
    for (size_t i = 0; i < arr.size; i++) z += exp(arr.data[i].logit - max);
    int32_t kept = 0;
    for (size_t i = 0; i < arr.size; i++) {
        if (arr.data[i].logit == -INFINITY) continue;
        ids[kept] = arr.data[i].id;
        p[kept++] = (float)(exp(arr.data[i].logit - max) / z);
    }
    free(data);
    return kept;
}

/* Every draw of ours comes from llama.cpp's distribution: its token is
 * one llama.cpp keeps, with the probability llama.cpp gives it. */
static void assert_draws_match(const sm_sample_input *in, struct llama_sampler *chain, const char *what) {
    sm_token ids[512];
    float ref[512];
    int32_t kept = llama_reference(in->logits, in->n_vocab, chain, ids, ref);
    sm_sampler_work w;
    assert_int_equal(sm_sampler_work_init(&w, in->n_vocab), 0);
    int32_t n_distinct = 0;
    bool seen[512] = {false};
    for (uint64_t seed = 1; seed <= 400; seed++) {
        sm_sample_rng rng;
        sm_sample_rng_init(&rng, seed);
        float p;
        sm_token t = sm_sample(in, &rng, &w, &p);
        int32_t at = -1;
        for (int32_t k = 0; k < kept; k++)
            if (ids[k] == t) at = k;
        if (at < 0) fail_msg("%s: drew token %d, which llama.cpp leaves out (it keeps %d)", what, t, kept);
        if (fabsf(p - ref[at]) > 2e-5f) fail_msg("%s: token %d has p %g here, %g in llama.cpp", what, t, p, ref[at]);
        if (!seen[t]) n_distinct++;
        seen[t] = true;
    }
    if (kept > 1) assert_true(n_distinct > 1);
    sm_sampler_work_free(&w);
    llama_sampler_free(chain);
}

static struct llama_sampler *chain_of(int n, ...) {
    struct llama_sampler *chain = llama_sampler_chain_init(llama_sampler_chain_default_params());
    va_list ap;
    va_start(ap, n);
    for (int i = 0; i < n; i++) llama_sampler_chain_add(chain, va_arg(ap, struct llama_sampler *));
    va_end(ap);
    return chain;
}

/* The k largest values, whatever k: the largest first, equal values by
 * lower id, -inf last; the same for every k whether a small sorted array or
 * a heap selects them (the whole list sorted is the reference). */
static int by_value_then_id(const void *a, const void *b) {
    const sm_candidate *x = a, *y = b;
    if (x->logit != y->logit) return x->logit < y->logit ? 1 : -1;
    return (x->token > y->token) - (x->token < y->token);
}

static void test_select_largest_any_k(void **unused) {
    (void)unused;
    enum { N = 3000 };
    static float values[N];
    static sm_candidate all[N], got[N];
    srand(5);
    for (int shape = 0; shape < 3; shape++) {
        for (int32_t t = 0; t < N; t++)
            values[t] = shape == 0   ? (float)(rand() % 50) /* many ties */
                        : shape == 1 ? (float)t            /* ascending: the insertion pass's worst case */
                                     : (t % 7 == 0 ? -INFINITY : (float)rand() / RAND_MAX);
        for (int32_t t = 0; t < N; t++) all[t] = (sm_candidate){.token = t, .logit = values[t]};
        qsort(all, N, sizeof *all, by_value_then_id);
        const int32_t ks[] = {1, 10, 64, 65, 500, N - 1, N, N + 5};
        for (size_t i = 0; i < sizeof ks / sizeof ks[0]; i++) {
            int32_t n = sm_select_largest(values, N, ks[i], got);
            assert_int_equal(n, ks[i] < N ? ks[i] : N);
            for (int32_t j = 0; j < n; j++)
                if (got[j].token != all[j].token || got[j].logit != all[j].logit)
                    fail_msg("shape %d, k %d: rank %d is token %d, %d expected", shape, ks[i], j, got[j].token, all[j].token);
        }
    }
}

/* kept_out (post_sampling_probs) holds the most probable candidates of the
 * draw, most probable first, with the probabilities it drew with: from the
 * whole vocabulary in token order (no truncation: nothing is sorted) and
 * from top-k's sorted few alike. */
static int by_prob_then_token(const void *a, const void *b) {
    const sm_candidate *x = a, *y = b;
    if (x->prob != y->prob) return x->prob < y->prob ? 1 : -1;
    return (x->token > y->token) - (x->token < y->token);
}

static void test_kept_candidates_are_the_most_probable(void **unused) {
    (void)unused;
    enum { N = 512, KEPT = 10 };
    float logits[N];
    srand(9);
    for (int32_t t = 0; t < N; t++) logits[t] = (float)rand() / RAND_MAX * 6.0f - 3.0f;
    for (int top_k = 0; top_k <= 40; top_k += 40) {
        sm_sample_input in = input(logits, N);
        in.top_k = top_k;
        in.temperature = 0.7f;
        sm_candidate kept[KEPT];
        int32_t n_kept = 0;
        in.kept_out = kept, in.n_kept_out = &n_kept, in.max_kept = KEPT;
        sm_sampler_work w;
        assert_int_equal(sm_sampler_work_init(&w, N), 0);
        sm_sample_rng rng;
        sm_sample_rng_init(&rng, 1);
        float p;
        sm_token t = sm_sample(&in, &rng, &w, &p);
        /* the reference: softmax at T over the candidates, sorted */
        sm_candidate all[N];
        int32_t n = top_k ? sm_select_largest(logits, N, top_k, all) : N;
        if (!top_k)
            for (int32_t v = 0; v < N; v++) all[v] = (sm_candidate){v, logits[v], 0.0f};
        double z = 0.0;
        for (int32_t i = 0; i < n; i++) z += exp((double)all[i].logit / 0.7);
        for (int32_t i = 0; i < n; i++) all[i].prob = (float)(exp((double)all[i].logit / 0.7) / z);
        qsort(all, (size_t)n, sizeof *all, by_prob_then_token);
        assert_int_equal(n_kept, KEPT);
        for (int32_t i = 0; i < KEPT; i++) {
            if (kept[i].token != all[i].token || fabsf(kept[i].prob - all[i].prob) > 1e-6f)
                fail_msg("top-k %d, rank %d: token %d p %g, %d p %g expected", top_k, i, kept[i].token,
                         (double)kept[i].prob, all[i].token, (double)all[i].prob);
        }
        for (int32_t i = 0; i < n; i++)
            if (all[i].token == t) assert_true(fabsf(all[i].prob - p) < 1e-6f);
        sm_sampler_work_free(&w);
    }
}

static void test_llama_cpp_samplers_match(void **unused) {
    (void)unused;
    enum { N = 512 };
    float logits[N];
    srand(11);
    for (int shape = 0; shape < 2; shape++) {
        for (int32_t t = 0; t < N; t++)
            logits[t] = shape == 0 ? (float)rand() / RAND_MAX * 6.0f - 3.0f : (t < 20 ? 4.0f - 0.2f * t : -2.0f + 0.001f * t);
        sm_sample_input in = input(logits, N);
        in.temperature = 0.8f;
        in.top_n_sigma = 1.5f;
        assert_draws_match(&in, chain_of(2, llama_sampler_init_top_n_sigma(1.5f), llama_sampler_init_temp(0.8f)), "top-n-sigma");

        in = input(logits, N);
        in.top_k = 40;
        in.typical_p = 0.6f;
        assert_draws_match(&in, chain_of(3, llama_sampler_init_top_k(40), llama_sampler_init_typical(0.6f, 1),
                                         llama_sampler_init_temp(1.0f)), "typical");
        in.top_k = 0; /* over the whole vocabulary (it sorted in O(n^2) once) */
        assert_draws_match(&in, chain_of(2, llama_sampler_init_typical(0.6f, 1), llama_sampler_init_temp(1.0f)),
                           "typical, top-k 0");

        in = input(logits, N);
        in.top_k = 40;
        in.xtc_probability = 1.0f; /* always: then it is deterministic, and comparable */
        in.xtc_threshold = 0.05f;
        assert_draws_match(&in, chain_of(3, llama_sampler_init_top_k(40), llama_sampler_init_xtc(1.0f, 0.05f, 1, 5),
                                         llama_sampler_init_temp(1.0f)), "xtc");

        in = input(logits, N);
        in.top_k = 50;
        in.temperature = 0.9f;
        in.dynatemp_range = 0.5f;
        in.dynatemp_exponent = 1.5f;
        assert_draws_match(&in, chain_of(2, llama_sampler_init_top_k(50), llama_sampler_init_temp_ext(0.9f, 0.5f, 1.5f)),
                           "dynamic temperature");

        in = input(logits, N);
        in.mirostat = 2;
        in.mirostat_tau = 3.0f;
        in.mirostat_eta = 0.1f;
        in.mirostat_mu = 6.0f; /* its first token: 2 tau */
        in.temperature = 0.7f;
        assert_draws_match(&in, chain_of(2, llama_sampler_init_temp(0.7f), llama_sampler_init_mirostat_v2(5, 3.0f, 0.1f)),
                           "mirostat v2");
    }
}

/* std::mt19937 itself: the standard's check value (the 10000th output
 * from the default seed 5489), and seeking back replays exactly. */
static void test_mt19937(void **unused) {
    (void)unused;
    sm_mt mt;
    sm_mt_seed(&mt, 5489);
    uint32_t x = 0, at[3];
    for (int i = 0; i < 10000; i++) {
        x = sm_mt_next(&mt);
        if (i >= 700 && i < 703) at[i - 700] = x;
    }
    assert_int_equal(x, 4123659995u);
    sm_mt_seek(&mt, 700); /* blocks back: reseed and replay */
    for (int i = 0; i < 3; i++) assert_int_equal(sm_mt_next(&mt), at[i]);
    sm_mt_seek(&mt, 10000);
    assert_int_equal(mt.n_out, 10000);
    /* within the block the state holds (9984..10607), and onto its first
     * word: the index moves, the outputs are a fresh replay's */
    sm_mt fresh;
    for (uint64_t back = 9984; back <= 9990; back += 6) {
        sm_mt_seek(&mt, 10000);
        sm_mt_seek(&mt, back);
        sm_mt_seed(&fresh, 5489);
        sm_mt_seek(&fresh, back);
        for (int i = 0; i < 30; i++) assert_int_equal(sm_mt_next(&mt), sm_mt_next(&fresh));
    }
}

/* One seed draws llama.cpp's tokens: its chain with its dist sampler
 * (or mirostat, which draws itself) over the same logits, token after
 * token, against ours seeded the same (every draw, not a distribution). */
static void assert_same_tokens(const sm_sample_input *in, struct llama_sampler *(*make)(uint32_t seed), const char *what) {
    sm_sampler_work w;
    assert_int_equal(sm_sampler_work_init(&w, in->n_vocab), 0);
    llama_token_data *data = malloc(sizeof *data * (size_t)in->n_vocab);
    int32_t n_distinct = 0;
    bool seen[512] = {false};
    for (uint32_t seed = 1; seed <= 40; seed++) {
        struct llama_sampler *chain = make(seed);
        sm_sample_rng rng;
        sm_sample_rng_init(&rng, seed);
        for (int draw = 0; draw < 25; draw++) {
            for (int32_t t = 0; t < in->n_vocab; t++) data[t] = (llama_token_data){t, in->logits[t], 0.0f};
            llama_token_data_array arr = {data, (size_t)in->n_vocab, -1, false};
            llama_sampler_apply(chain, &arr);
            sm_token theirs = arr.data[arr.selected].id;
            float p;
            sm_token ours = sm_sample(in, &rng, &w, &p);
            if (ours != theirs) fail_msg("%s: seed %u draw %d: %d here, %d in llama.cpp", what, seed, draw, ours, theirs);
            if (!seen[ours]) n_distinct++;
            seen[ours] = true;
        }
        llama_sampler_free(chain);
    }
    assert_true(n_distinct > 3); /* the draws differ, so the check means something */
    free(data);
    sm_sampler_work_free(&w);
}

static struct llama_sampler *server_chain(uint32_t seed) { /* llama-server's defaults at T 0.8 */
    return chain_of(5, llama_sampler_init_top_k(40), llama_sampler_init_top_p(0.95f, 1), llama_sampler_init_min_p(0.05f, 1),
                    llama_sampler_init_temp(0.8f), llama_sampler_init_dist(seed));
}
static struct llama_sampler *min_p_chain(uint32_t seed) { /* the vocabulary's order reaches the draw */
    return chain_of(3, llama_sampler_init_min_p(0.02f, 1), llama_sampler_init_temp(1.2f), llama_sampler_init_dist(seed));
}
static struct llama_sampler *min_p_few_chain(uint32_t seed) { /* a few candidates, by id */
    return chain_of(3, llama_sampler_init_min_p(0.7f, 1), llama_sampler_init_temp(1.2f), llama_sampler_init_dist(seed));
}
static struct llama_sampler *whole_chain(uint32_t seed) { /* every token, in the vocabulary's order */
    return chain_of(2, llama_sampler_init_temp(0.9f), llama_sampler_init_dist(seed));
}
static struct llama_sampler *dynatemp_chain(uint32_t seed) { /* it sorts the whole vocabulary */
    return chain_of(2, llama_sampler_init_temp_ext(0.9f, 0.5f, 1.5f), llama_sampler_init_dist(seed));
}
static struct llama_sampler *xtc_chain(uint32_t seed) {
    return chain_of(4, llama_sampler_init_top_k(40), llama_sampler_init_xtc(0.5f, 0.05f, 1, seed),
                    llama_sampler_init_temp(1.0f), llama_sampler_init_dist(seed));
}
static struct llama_sampler *mirostat_chain(uint32_t seed) {
    return chain_of(2, llama_sampler_init_temp(0.7f), llama_sampler_init_mirostat_v2(seed, 3.0f, 0.1f));
}

static void test_same_tokens_as_llama_cpp(void **unused) {
    (void)unused;
    enum { N = 512 };
    float logits[N];
    srand(5);
    for (int32_t t = 0; t < N; t++) logits[t] = (float)rand() / RAND_MAX * 8.0f - 4.0f;
    sm_sample_input in = input(logits, N);
    in.top_k = 40, in.top_p = 0.95f, in.min_p = 0.05f, in.temperature = 0.8f;
    assert_same_tokens(&in, server_chain, "top-k, top-p, min-p, T 0.8");
    in = input(logits, N);
    in.min_p = 0.02f, in.temperature = 1.2f;
    assert_same_tokens(&in, min_p_chain, "min-p alone");
    in.min_p = 0.7f; /* a few candidates of the vocabulary: sorted by id, not spread over it */
    assert_same_tokens(&in, min_p_few_chain, "min-p alone, few candidates");
    in = input(logits, N);
    in.temperature = 0.9f;
    assert_same_tokens(&in, whole_chain, "the whole vocabulary");
    in.dynatemp_range = 0.5f, in.dynatemp_exponent = 1.5f;
    assert_same_tokens(&in, dynatemp_chain, "dynamic temperature over the whole vocabulary");
    in = input(logits, N);
    in.top_k = 40, in.xtc_probability = 0.5f, in.xtc_threshold = 0.05f;
    assert_same_tokens(&in, xtc_chain, "XTC at probability 0.5");
    /* mirostat's mu moves with each token: the same first token, from every seed */
    in = input(logits, N);
    in.mirostat = 2, in.mirostat_tau = 3.0f, in.mirostat_eta = 0.1f, in.mirostat_mu = 6.0f, in.temperature = 0.7f;
    sm_sampler_work w;
    assert_int_equal(sm_sampler_work_init(&w, N), 0);
    llama_token_data data[N];
    for (uint32_t seed = 1; seed <= 100; seed++) {
        struct llama_sampler *chain = mirostat_chain(seed);
        for (int32_t t = 0; t < N; t++) data[t] = (llama_token_data){t, logits[t], 0.0f};
        llama_token_data_array arr = {data, (size_t)N, -1, false};
        llama_sampler_apply(chain, &arr);
        sm_sample_rng rng;
        sm_sample_rng_init(&rng, seed);
        float p;
        assert_int_equal(sm_sample(&in, &rng, &w, &p), arr.data[arr.selected].id);
        llama_sampler_free(chain);
    }
    /* mu moving token by token on a peaked distribution, so that now
     * several candidates are left and now one (llama.cpp then draws no
     * number at all): the same tokens, draw after draw */
    for (int32_t t = 0; t < N; t++) logits[t] = t < 20 ? 4.0f - 0.2f * t : -2.0f + 0.001f * t;
    int32_t n_single = 0;
    for (uint32_t seed = 1; seed <= 20; seed++) {
        struct llama_sampler *chain = chain_of(2, llama_sampler_init_temp(0.7f), llama_sampler_init_mirostat_v2(seed, 1.0f, 0.5f));
        sm_sample_rng rng;
        sm_sample_rng_init(&rng, seed);
        in.mirostat_tau = 1.0f;
        in.mirostat_eta = 0.5f;
        in.mirostat_mu = 2.0f; /* 2 tau, as llama.cpp starts */
        float mu_next;
        in.mirostat_mu_next = &mu_next;
        for (int draw = 0; draw < 30; draw++) {
            for (int32_t t = 0; t < N; t++) data[t] = (llama_token_data){t, logits[t], 0.0f};
            llama_token_data_array arr = {data, (size_t)N, -1, false};
            llama_sampler_apply(chain, &arr);
            float p;
            sm_token ours = sm_sample(&in, &rng, &w, &p);
            if (ours != arr.data[arr.selected].id)
                fail_msg("mirostat, seed %u draw %d: %d here, %d in llama.cpp", seed, draw, ours, arr.data[arr.selected].id);
            n_single += arr.size == 1;
            in.mirostat_mu = mu_next;
        }
        llama_sampler_free(chain);
    }
    assert_true(n_single > 10 && n_single < 20 * 30 - 10); /* both kinds of step happened */
    sm_sampler_work_free(&w);
}

/* llama.cpp's sampler list: the named ones run, the others are off; its
 * aliases and any case; another order, a name twice or an unknown one is
 * refused with the parameters unchanged. */
static void test_sampler_list(void **state) {
    (void)state;
    sm_sampling_params p = sm_sampling_default_params();
    p.temperature = 0.3f;
    p.dry_multiplier = 0.8f;
    const char *vim[] = {"TOP-K", "nucleus", "Infill"};
    sm_error err;
    sm_sampling_params by_letters = p;
    assert_int_equal(sm_sampling_params_set_sampler_letters(&by_letters, "kpi", &err), SM_OK);
    assert_int_equal(sm_sampling_params_set_samplers(&p, vim, 3, &err), SM_OK);
    assert_true(by_letters.top_k == p.top_k && by_letters.top_p == p.top_p && by_letters.infill &&
                by_letters.temperature == p.temperature && by_letters.min_p == p.min_p);
    assert_int_equal(p.top_k, 40);
    assert_true(p.top_p == 0.95f && p.infill);
    assert_true(p.min_p == 0.0f && p.repeat_penalty == 1.0f && p.dry_multiplier == 0.0f && p.typical_p == 1.0f);
    assert_true(p.temperature == 1.0f); /* no temperature sampler: T 1, as llama.cpp's chain */
    const char *with_temp[] = {"minp", "temp"};
    p = sm_sampling_default_params();
    p.temperature = 0.3f;
    assert_int_equal(sm_sampling_params_set_samplers(&p, with_temp, 2, &err), SM_OK);
    assert_true(p.temperature == 0.3f && p.min_p == 0.05f && p.top_k == 0 && !p.infill);
    const sm_sampling_params before = p;
    const char *wrong_order[] = {"temperature", "top_k"}, *twice[] = {"top_k", "topk"}, *unknown[] = {"typical"};
    assert_int_equal(sm_sampling_params_set_samplers(&p, wrong_order, 2, &err), SM_ERR_INVALID_ARGUMENT);
    assert_non_null(strstr(err.message, "'top_k' after 'temperature'"));
    assert_int_equal(sm_sampling_params_set_samplers(&p, twice, 2, &err), SM_ERR_INVALID_ARGUMENT);
    assert_non_null(strstr(err.message, "twice"));
    assert_int_equal(sm_sampling_params_set_samplers(&p, unknown, 1, &err), SM_ERR_INVALID_ARGUMENT);
    assert_int_equal(sm_sampling_params_set_sampler_letters(&p, "kz", &err), SM_ERR_INVALID_ARGUMENT);
    assert_non_null(strstr(err.message, "byte 1 (0x7a)"));
    p.mirostat = 2; /* it replaces the chain: a list with it is a contradiction */
    assert_int_equal(sm_sampling_params_set_samplers(&p, with_temp, 2, &err), SM_ERR_INVALID_ARGUMENT);
    p.mirostat = before.mirostat;
    assert_true(p.temperature == before.temperature && p.top_k == before.top_k && p.min_p == before.min_p &&
                p.top_p == before.top_p && p.infill == before.infill && p.repeat_penalty == before.repeat_penalty);
}

/* n_indent's cut: the first line is free; a later line that begins with
 * fewer spaces and tabs (a blank one too) is cut at its first other byte. */
static void test_indent_cut(void **state) {
    (void)state;
    const char *ok = "  x\n  y\n\t z";
    assert_int_equal(sm_indent_cut(ok, strlen(ok), 2), -1);
    assert_int_equal(sm_indent_cut("x\n y", 4, 2), 3);
    assert_int_equal(sm_indent_cut("x\n  y\n\n", 7, 1), 6);
    assert_int_equal(sm_indent_cut("x\n ", 3, 2), -1); /* the line has not begun yet */
    assert_int_equal(sm_indent_cut("x\ny", 3, 0), -1);  /* 0: off */
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_sampler_list), cmocka_unit_test(test_indent_cut),
        cmocka_unit_test(test_greedy_bans_and_penalty), cmocka_unit_test(test_top_k_top_p_min_p),
        cmocka_unit_test(test_temperature_changes_the_draw), cmocka_unit_test(test_seed_determinism),
        cmocka_unit_test(test_signals), cmocka_unit_test(test_min_p_fast_path_matches_reference),
        cmocka_unit_test(test_llama_cpp_samplers_match), cmocka_unit_test(test_select_largest_any_k),
        cmocka_unit_test(test_kept_candidates_are_the_most_probable),
        cmocka_unit_test(test_mt19937), cmocka_unit_test(test_same_tokens_as_llama_cpp),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
