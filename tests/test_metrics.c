/*
 * Evaluation metrics against hand-computed values, reference matching,
 * judge scoring against a token-by-token computation, and the DRY stage
 * of the sampler that the evaluation compares against.
 */
#include "testutil.h"
#include "internal.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#define assert_near(a, b, tol)                                                                            \
    do {                                                                                                  \
        double a_ = (a), b_ = (b);                                                                        \
        if (!(fabs(a_ - b_) <= (tol))) fail_msg("%s = %.9g, expected %.9g (tolerance %g)", #a, a_, b_, (double)(tol)); \
    } while (0)

/* ------------------------------------------------------------------ */
/* n-gram counts                                                       */
/* ------------------------------------------------------------------ */

static void test_ngram_count_by_hand(void **unused) {
    const sm_token t[] = {1, 2, 1, 2, 1};
    int32_t u = -1;
    assert_int_equal(sm_ngram_count(t, 5, 1, &u), 5); /* 1 2 1 2 1 */
    assert_int_equal(u, 2);
    assert_int_equal(sm_ngram_count(t, 5, 2, &u), 4); /* 12 21 12 21 */
    assert_int_equal(u, 2);
    assert_int_equal(sm_ngram_count(t, 5, 3, &u), 3); /* 121 212 121 */
    assert_int_equal(u, 2);
    assert_int_equal(sm_ngram_count(t, 5, 5, &u), 1);
    assert_int_equal(u, 1);
}

static void test_ngram_count_edges(void **unused) {
    const sm_token t[] = {7, 7, 7};
    int32_t u = -1;
    assert_int_equal(sm_ngram_count(t, 3, 4, &u), 0); /* shorter than n */
    assert_int_equal(u, 0);
    u = -1;
    assert_int_equal(sm_ngram_count(NULL, 0, 2, &u), 0); /* empty */
    assert_int_equal(u, 0);
    assert_int_equal(sm_ngram_count(t, 3, 2, NULL), 2);  /* count only */
    assert_int_equal(sm_ngram_count(t, 3, 0, &u), -1);   /* n < 1 */
    assert_int_equal(sm_ngram_count(NULL, 3, 2, &u), -1);
    assert_int_equal(sm_ngram_count(t, -1, 2, &u), -1);
}

/* Exact counting, not hashing: compared with an O(n^2) count on sequences
 * over a tiny alphabet, where equal n-grams are frequent. */
static void test_ngram_count_matches_brute_force(void **unused) {
    uint64_t rng = 12345;
    sm_token t[400];
    for (int trial = 0; trial < 20; trial++) {
        int32_t len = 1 + (int32_t)(sm_rng_next(&rng) % 400);
        int32_t alphabet = 2 + trial % 5;
        for (int32_t i = 0; i < len; i++) t[i] = (sm_token)(sm_rng_next(&rng) % (uint64_t)alphabet) * 1000003;
        for (int32_t n = 1; n <= 4; n++) {
            int32_t expected = 0;
            for (int32_t i = 0; i + n <= len; i++) {
                bool seen = false;
                for (int32_t j = 0; j < i && !seen; j++) seen = memcmp(t + i, t + j, sizeof *t * (size_t)n) == 0;
                expected += !seen;
            }
            int32_t u;
            assert_int_equal(sm_ngram_count(t, len, n, &u), len >= n ? len - n + 1 : 0);
            assert_int_equal(u, expected);
        }
    }
}

/* ------------------------------------------------------------------ */
/* Text metrics                                                        */
/* ------------------------------------------------------------------ */

static void test_text_metrics_by_hand(void **unused) {
    const sm_token a[] = {1, 2, 3, 1, 2, 3}, b[] = {4, 4, 4, 4, 4}, c[] = {5, 6};
    const sm_token *outputs[] = {a, b, c, NULL};
    const int32_t lengths[] = {6, 5, 2, 0};
    sm_text_metrics m;
    assert_int_equal(sm_text_metrics_compute(outputs, lengths, 4, &m), SM_OK);
    assert_int_equal(m.n_outputs, 4);
    assert_int_equal(m.n_tokens, 13);
    /* bigrams: a 12 23 31 12 23 (U 3 of 5), b 44 x4 (U 1 of 4), c 56 (U 1 of 1) */
    assert_near(m.rep[2], 1.0 - 5.0 / 10.0, 1e-12);
    /* trigrams: a 123 231 312 123 (3 of 4), b 444 x3 (1 of 3), c none */
    assert_near(m.rep[3], 1.0 - 4.0 / 7.0, 1e-12);
    /* 4-grams: a 1231 2312 3123 (3 of 3), b 4444 x2 (1 of 2) */
    assert_near(m.rep[4], 1.0 - 4.0 / 5.0, 1e-12);
    assert_near(m.diversity, 0.5 * (4.0 / 7.0) * 0.8, 1e-12);
    /* per output: a 0, b 1 - 1/2; c and the empty one have no 4-gram */
    assert_near(m.seq_rep_4, 0.25, 1e-12);
    /* across outputs: unigrams {1..6} of 13; bigrams {12 23 31 44 56} of 10 */
    assert_near(m.distinct[1], 6.0 / 13.0, 1e-12);
    assert_near(m.distinct[2], 0.5, 1e-12);
    assert_near(m.mean_length, 13.0 / 4.0, 1e-12);
    assert_true(isnan(m.rep[0]) && isnan(m.rep[1]) && isnan(m.distinct[0]));
}

/* rep-n counts repetition inside each output; distinct-n across outputs. */
static void test_rep_is_within_outputs_distinct_across(void **unused) {
    const sm_token a[] = {1, 2, 3};
    const sm_token *outputs[] = {a, a};
    const int32_t lengths[] = {3, 3};
    sm_text_metrics m;
    assert_int_equal(sm_text_metrics_compute(outputs, lengths, 2, &m), SM_OK);
    assert_near(m.rep[2], 0.0, 1e-12);
    assert_near(m.distinct[2], 2.0 / 4.0, 1e-12);
    assert_near(m.distinct[1], 3.0 / 6.0, 1e-12);
}

static void test_text_metrics_short_and_empty(void **unused) {
    const sm_token a[] = {1, 2};
    const sm_token *outputs[] = {a};
    const int32_t lengths[] = {2};
    sm_text_metrics m;
    assert_int_equal(sm_text_metrics_compute(outputs, lengths, 1, &m), SM_OK);
    assert_near(m.rep[2], 0.0, 1e-12);
    assert_true(isnan(m.rep[3]) && isnan(m.rep[4])); /* shorter than n: nothing to count */
    assert_true(isnan(m.diversity));
    assert_true(isnan(m.seq_rep_4));
    assert_near(m.distinct[1], 1.0, 1e-12);
    assert_near(m.mean_length, 2.0, 1e-12);

    const int32_t zero[] = {0};
    const sm_token *empty[] = {NULL};
    assert_int_equal(sm_text_metrics_compute(empty, zero, 1, &m), SM_OK);
    assert_near(m.mean_length, 0.0, 1e-12);
    assert_true(isnan(m.rep[2]) && isnan(m.distinct[1]) && isnan(m.seq_rep_4));

    assert_int_equal(sm_text_metrics_compute(NULL, NULL, 0, &m), SM_OK);
    assert_int_equal(m.n_outputs, 0);
    assert_true(isnan(m.mean_length) && isnan(m.rep[4]));

    assert_int_equal(sm_text_metrics_compute(outputs, lengths, -1, &m), SM_ERR_INVALID_ARGUMENT);
    const int32_t negative[] = {-2};
    assert_int_equal(sm_text_metrics_compute(outputs, negative, 1, &m), SM_ERR_INVALID_ARGUMENT);
    assert_int_equal(sm_text_metrics_compute(empty, lengths, 1, &m), SM_ERR_INVALID_ARGUMENT);
}

static void test_reference_matching(void **unused) {
    assert_true(sm_reference_exact_match("  The Sky is\n BLUE.  ", "the sky is blue"));
    assert_false(sm_reference_exact_match("the sky is blue today", "the sky is blue"));
    assert_true(sm_reference_contains_match(" It is blue!", "Blue"));
    assert_true(sm_reference_contains_match("I'm doing well, thank you.", "I'm doing well"));
    assert_false(sm_reference_contains_match("a bluebird sang", "blue"));
    assert_false(sm_reference_contains_match("I have 14 apples", "4"));
    assert_true(sm_reference_contains_match("I have 4 apples", "4"));
    assert_false(sm_reference_exact_match("anything", ""));
    assert_false(sm_reference_contains_match("anything", "  . "));
    assert_false(sm_reference_contains_match(NULL, "x"));
}

/* ------------------------------------------------------------------ */
/* Judge scoring                                                       */
/* ------------------------------------------------------------------ */

static const char *PROMPT = "Once upon a time, there was a little girl named Lily.";

static sm_session *one_thread_session(sm_model *m) {
    sm_session_params sp = tu_session_params(256);
    return tu_open_session(m, &sp);
}

static sm_judge *one_thread_judge(sm_model *judge, const sm_model *generator, uint32_t n_ctx) {
    sm_judge_params jp = sm_judge_default_params();
    jp.n_threads = 1;
    jp.n_ctx = n_ctx;
    sm_error err = {0};
    sm_judge *j = sm_judge_new(judge, generator, &jp, &err);
    if (!j) fail_msg("%s", err.message);
    return j;
}

/* ln softmax(logits)[t] */
static double log_softmax_at(const float *logits, int32_t n_vocab, sm_token t) {
    double max = logits[0], sum = 0;
    for (int32_t i = 1; i < n_vocab; i++)
        if (logits[i] > max) max = logits[i];
    for (int32_t i = 0; i < n_vocab; i++) sum += exp(logits[i] - max);
    return logits[t] - max - log(sum);
}

/* Generates a continuation of PROMPT with `generator` (sampled, so it is
 * not simply the judge's favourite tokens) and returns the context. */
static sm_result generate(sm_model *generator, sm_token **context, int32_t *n_context) {
    sm_session *s = one_thread_session(generator);
    sm_gen_params gp = sm_gen_default_params();
    gp.n_predict = 48;
    gp.policy.enabled = false;
    gp.sampling.seed = 3;
    sm_result r;
    if (sm_session_generate(s, PROMPT, &gp, &r) != SM_OK) fail_msg("%s", sm_session_last_error(s));
    *n_context = r.n_prompt_tokens;
    *context = malloc(sizeof **context * (size_t)r.n_prompt_tokens);
    memcpy(*context, sm_session_tokens(s, NULL), sizeof **context * (size_t)r.n_prompt_tokens);
    sm_session_free(s);
    return r;
}

/* The same log-probabilities, one token per decode through a session. */
static double sequential_sum(sm_model *judge, const sm_token *context, int32_t n_context, const sm_token *cont,
                             int32_t n_cont, double *per_token) {
    sm_session *s = one_thread_session(judge);
    assert_int_equal(sm_session_feed_tokens(s, context, n_context), SM_OK);
    double sum = 0;
    for (int32_t i = 0; i < n_cont; i++) {
        per_token[i] = log_softmax_at(sm_session_logits(s), sm_model_n_vocab(judge), cont[i]);
        sum += per_token[i];
        assert_int_equal(sm_session_feed_tokens(s, &cont[i], 1), SM_OK);
    }
    sm_session_free(s);
    return sum;
}

static void check_judge_equals_sequential(const char *generator_name, const char *judge_name) {
    sm_model *generator = tu_load_model(generator_name);
    sm_model *judge_model = tu_load_model(judge_name);
    sm_token *context;
    int32_t n_context;
    sm_result r = generate(generator, &context, &n_context);
    assert_true(r.n_tokens >= 40);

    sm_judge *judge = one_thread_judge(judge_model, generator, 0);
    float *logprobs = malloc(sizeof *logprobs * (size_t)r.n_tokens);
    double *expected = malloc(sizeof *expected * (size_t)r.n_tokens);
    sm_judge_score score;
    assert_int_equal(sm_judge_score_tokens(judge, context, n_context, r.tokens, r.n_tokens, logprobs, &score), SM_OK);
    double sum = sequential_sum(judge_model, context, n_context, r.tokens, r.n_tokens, expected);

    /* A batched decode rounds differently from one token at a time: per
     * token the two differ by up to ~2e-3 nats, and the sum by less than
     * 1e-3 relative; a wrong position or token would be off by far more. */
    assert_int_equal(score.n_scored, r.n_tokens);
    assert_true(sum < -10.0); /* a real, non-trivial likelihood */
    assert_near(score.sum_logprob, sum, 1e-2 * fabs(sum));
    assert_near(score.mean_nll, -sum / r.n_tokens, 1e-2 * fabs(sum) / r.n_tokens);
    for (int32_t i = 0; i < r.n_tokens; i++) assert_near(logprobs[i], expected[i], 1e-2);

    /* Scoring again gives the same: nothing is left over from the last call. */
    sm_judge_score again;
    assert_int_equal(sm_judge_score_tokens(judge, context, n_context, r.tokens, r.n_tokens, NULL, &again), SM_OK);
    assert_near(again.sum_logprob, score.sum_logprob, 1e-9);

    free(logprobs);
    free(expected);
    free(context);
    sm_result_free(&r);
    sm_judge_free(judge);
    sm_model_free(judge_model);
    sm_model_free(generator);
}

static void test_judge_equals_token_by_token_same_model(void **unused) {
    check_judge_equals_sequential("stories260K.gguf", "stories260K.gguf");
}

static void test_judge_equals_token_by_token_other_model(void **unused) {
    check_judge_equals_sequential("stories260K.gguf", "llama2xs-salty-280K.gguf");
}

static void test_judge_rejects_another_vocabulary(void **unused) {
    sm_model *generator = tu_load_model("stories260K.gguf");
    sm_model *other = tu_load_model("aidreams260K.gguf");
    sm_error err = {0};
    sm_judge_params jp = sm_judge_default_params();
    jp.n_threads = 1;
    assert_null(sm_judge_new(other, generator, &jp, &err));
    assert_int_equal(err.status, SM_ERR_VOCAB_MISMATCH);
    if (!strstr(err.message, "vocabular") || !strstr(err.message, "aidreams260K.gguf"))
        fail_msg("unclear message: %s", err.message);
    sm_model_free(other);
    sm_model_free(generator);
}

/* Text through the judge's own tokenizer: the score is the judge's own
 * log-likelihood of exactly the tokens that are not the context's, summed
 * token by token in a session of its own; bits per byte divide it by the
 * continuation's bytes. */
static void test_judge_scores_text(void **unused) {
    (void)unused;
    sm_model *m = tu_load_model("tinystories-656K.gguf"); /* its own 2048-token vocabulary */
    sm_judge *judge = one_thread_judge(m, NULL, 0);
    const char *context = "Once upon a time, there was a little girl.";
    const char *cont = " She liked to play with her red ball in the park.";
    sm_judge_score score;
    assert_int_equal(sm_judge_score_text(judge, context, cont, &score), SM_OK);
    char whole[256];
    snprintf(whole, sizeof whole, "%s%s", context, cont);
    sm_token all[128], head[128];
    int32_t n_all = tu_tokenize(m, whole, true, false, all, 128);
    int32_t n_head = tu_tokenize(m, context, true, false, head, 128);
    int32_t common = 0;
    while (common < n_head && all[common] == head[common]) common++;
    double per_token[128];
    double expected = sequential_sum(m, all, common, all + common, n_all - common, per_token);
    assert_int_equal(score.n_scored, n_all - common);
    assert_true(fabs(score.sum_logprob - expected) < 1e-3 * (n_all - common));
    assert_int_equal(score.n_bytes, (int64_t)strlen(cont));
    assert_true(fabs(score.bits_per_byte - (-expected / log(2.0) / (double)strlen(cont))) < 1e-3);

    /* what the judge finds plausible costs fewer bits than letters at random */
    sm_judge_score noise;
    assert_int_equal(sm_judge_score_text(judge, context, " Qzx vbk wqj pflm rrt kxq zzv jjw.", &noise), SM_OK);
    assert_true(score.bits_per_byte < noise.bits_per_byte);
    /* an empty continuation scores nothing; an empty context is BOS alone */
    assert_int_equal(sm_judge_score_text(judge, context, "", &noise), SM_OK);
    assert_int_equal(noise.n_scored, 0);
    assert_int_equal(sm_judge_score_text(judge, "", cont, &noise), SM_OK);
    assert_true(noise.n_scored > 0 && isfinite(noise.bits_per_byte));
    assert_int_equal(sm_judge_score_text(judge, NULL, cont, &noise), SM_ERR_INVALID_ARGUMENT);
    sm_judge_free(judge);
    sm_model_free(m);
}

/* Many texts at once, packed into shared decodes (a sequence each): every
 * score equals the text scored alone (to the batched rounding), the empty
 * one scores nothing, and one too long for the judge's context is refused
 * in its status while the others around it are scored. */
static void test_judge_scores_many_texts_at_once(void **unused) {
    (void)unused;
    sm_model *m = tu_load_model("tinystories-656K.gguf");
    sm_judge *judge = one_thread_judge(m, NULL, 160); /* room for a few texts per decode, not the long one */
    char longer[2048] = "";
    for (int i = 0; i < 40; i++) strcat(longer, " The cat sat on the mat and looked at the dog.");
    const char *contexts[] = {"Once upon a time,", "Tom had a dog.", "Lily liked", "The sun", "", "Once", "A bird"};
    const char *texts[] = {" there was a girl.", " The dog ran to the park and played all day.", "", " red apples.",
                           " It was a sunny day.", longer, " sang a song in the tree and flew away."};
    enum { N = 7 };
    sm_judge_score many[N];
    sm_status status[N];
    assert_int_equal(sm_judge_score_texts(judge, N, contexts, texts, many, status), SM_OK);
    for (int i = 0; i < N; i++) {
        sm_judge_score one;
        sm_status st = sm_judge_score_text(judge, contexts[i], texts[i], &one);
        assert_int_equal(status[i], st);
        if (i == 5) {
            assert_int_equal(st, SM_ERR_PROMPT_TOO_LONG);
            assert_true(isnan(many[i].bits_per_byte));
            continue;
        }
        assert_int_equal(many[i].n_scored, one.n_scored);
        assert_int_equal(many[i].n_bytes, i == 2 ? 0 : (int64_t)strlen(texts[i]));
        if (one.n_scored == 0) continue;
        if (fabs(many[i].sum_logprob - one.sum_logprob) > 1e-3 * one.n_scored)
            fail_msg("text %d: %.6f together, %.6f alone", i, many[i].sum_logprob, one.sum_logprob);
    }
    assert_int_equal(sm_judge_score_texts(judge, 1, NULL, texts, many, status), SM_ERR_INVALID_ARGUMENT);
    sm_judge_free(judge);
    sm_model_free(m);
}

/* Judges whose vocabularies differ from the generator's, babyllama's with
 * no byte tokens among them, score the same text. */
static void test_judges_of_any_vocabulary(void **unused) {
    (void)unused;
    const char *names[] = {"stories260K.gguf", "tinystories-656K.gguf", "babyllama-tok105-1M.gguf",
                           "cardputer-chat-3M.gguf"};
    for (int i = 0; i < 4; i++) {
        sm_model *m = tu_load_model(names[i]);
        sm_judge *judge = one_thread_judge(m, NULL, 0);
        sm_judge_score s;
        if (sm_judge_score_text(judge, "Tom had a dog.", " The dog ran to the park and played (all day).", &s) != SM_OK)
            fail_msg("%s: %s", names[i], sm_judge_last_error(judge));
        assert_true(s.n_scored > 0 && s.bits_per_byte > 0.0 && s.bits_per_byte < 20.0);
        sm_judge_free(judge);
        sm_model_free(m);
    }
}

static void test_judge_bad_input(void **unused) {
    sm_model *m = tu_load_model("stories260K.gguf");
    sm_judge *judge = one_thread_judge(m, m, 16);
    const int32_t n_ctx = sm_judge_n_ctx(judge);
    assert_int_equal(n_ctx, 16);
    sm_token *toks = malloc(sizeof *toks * (size_t)(n_ctx + 2)); /* the too-long case reads n_ctx + 2 */
    for (int32_t i = 0; i < n_ctx + 2; i++) toks[i] = 100 + i % 300;
    toks[0] = 1;
    sm_judge_score s;
    /* 10 + (n_ctx - 9) - 1 = n_ctx tokens read: fits; one more does not */
    assert_int_equal(sm_judge_score_tokens(judge, toks, 10, toks + 10, n_ctx - 9, NULL, &s), SM_OK);
    assert_int_equal(s.n_scored, n_ctx - 9);
    assert_true(s.mean_nll > 0 && isfinite(s.mean_nll));
    assert_int_equal(sm_judge_score_tokens(judge, toks, 10, toks + 10, n_ctx - 8, NULL, &s), SM_ERR_PROMPT_TOO_LONG);
    assert_non_null(strstr(sm_judge_last_error(judge), "context"));
    /* nothing to score */
    assert_int_equal(sm_judge_score_tokens(judge, toks, 3, NULL, 0, NULL, &s), SM_OK);
    assert_int_equal(s.n_scored, 0);
    assert_true(isnan(s.mean_nll));
    /* no context to score the first token from */
    assert_int_equal(sm_judge_score_tokens(judge, toks, 0, toks, 3, NULL, &s), SM_ERR_INVALID_ARGUMENT);
    sm_token bad[2] = {1, 9999};
    assert_int_equal(sm_judge_score_tokens(judge, toks, 1, bad, 2, NULL, &s), SM_ERR_INVALID_ARGUMENT);
    assert_non_null(strstr(sm_judge_last_error(judge), "9999"));
    free(toks);
    sm_judge_free(judge);
    sm_model_free(m);
}

/* ------------------------------------------------------------------ */
/* The DRY stage                                                       */
/* ------------------------------------------------------------------ */

static void test_dry_penalises_extending_a_repeat(void **unused) {
    float logits[8] = {0.9f, 0.9f, 0.9f, 1.0f, 0.9f, 0.9f, 0.9f, 0.9f};
    /* "1 2 3 1 2": token 3 would repeat "1 2 3" (a match of length 2) */
    const sm_token history[] = {1, 2, 3, 1, 2};
    sm_sample_input in = {.logits = logits, .n_vocab = 8, .temperature = 0.0f, .repeat_penalty = 1.0f,
                          .top_p = 1.0f, .history = history, .n_history = 5};
    sm_sampler_work w;
    assert_int_equal(sm_sampler_work_init(&w, 8), 0);
    sm_sample_rng rng;
    sm_sample_rng_init(&rng, 1);
    float p;
    assert_int_equal(sm_sample(&in, &rng, &w, &p), 3); /* DRY off */
    in.dry_multiplier = 0.8f;
    in.dry_base = 1.75f;
    in.dry_allowed_length = 2;
    in.dry_penalty_last_n = -1;
    sm_token t = sm_sample(&in, &rng, &w, &p);
    assert_true(t != 3);
    /* 3's logit fell by 0.8 * 1.75^(2 - 2) */
    assert_near(w.logits[3], 1.0 - 0.8, 1e-6);
    assert_near(w.logits[0], 0.9, 1e-6);
    /* a longer allowed length lets the same repeat through */
    in.dry_allowed_length = 3;
    assert_int_equal(sm_sample(&in, &rng, &w, &p), 3);
    sm_sampler_work_free(&w);
}

/* llama2xs-salty-280K loops under greedy decoding; DRY breaks the loops. */
static void test_dry_cuts_greedy_loops(void **unused) {
    sm_model *m = tu_load_model("llama2xs-salty-280K.gguf");
    sm_session *s = one_thread_session(m);
    sm_gen_params gp = tu_greedy_params(200);
    sm_result plain, dry;
    assert_int_equal(sm_session_generate(s, PROMPT, &gp, &plain), SM_OK);
    gp.sampling.dry_multiplier = 0.8f;
    assert_int_equal(sm_session_clear(s), SM_OK);
    assert_int_equal(sm_session_generate(s, PROMPT, &gp, &dry), SM_OK);
    const sm_token *outs[] = {plain.tokens, dry.tokens};
    sm_text_metrics a, b;
    assert_int_equal(sm_text_metrics_compute(&outs[0], &plain.n_tokens, 1, &a), SM_OK);
    assert_int_equal(sm_text_metrics_compute(&outs[1], &dry.n_tokens, 1, &b), SM_OK);
    if (!(a.rep[4] > 0.3 && b.rep[4] < a.rep[4] / 2))
        fail_msg("greedy rep-4 %.3f, with DRY %.3f: DRY should at least halve it", a.rep[4], b.rep[4]);
    /* invalid DRY settings are refused by name */
    gp.sampling.dry_base = 0.5f;
    sm_error invalid;
    assert_int_equal(sm_gen_params_validate(&gp, &invalid), SM_ERR_INVALID_ARGUMENT);
    assert_non_null(strstr(invalid.message, "dry_base"));
    sm_result_free(&plain);
    sm_result_free(&dry);
    sm_session_free(s);
    sm_model_free(m);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_ngram_count_by_hand),
        cmocka_unit_test(test_ngram_count_edges),
        cmocka_unit_test(test_ngram_count_matches_brute_force),
        cmocka_unit_test(test_text_metrics_by_hand),
        cmocka_unit_test(test_rep_is_within_outputs_distinct_across),
        cmocka_unit_test(test_text_metrics_short_and_empty),
        cmocka_unit_test(test_reference_matching),
        cmocka_unit_test(test_judge_equals_token_by_token_same_model),
        cmocka_unit_test(test_judge_equals_token_by_token_other_model),
        cmocka_unit_test(test_judge_rejects_another_vocabulary),
        cmocka_unit_test(test_judge_bad_input),
        cmocka_unit_test(test_judge_scores_text),
        cmocka_unit_test(test_judges_of_any_vocabulary), cmocka_unit_test(test_judge_scores_many_texts_at_once),
        cmocka_unit_test(test_dry_penalises_extending_a_repeat),
        cmocka_unit_test(test_dry_cuts_greedy_loops),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
