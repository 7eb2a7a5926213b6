/*
 * Multi-model fusion on the real same-vocabulary pairs, vocabulary checks,
 * alignment, and collective retraction.
 */
#include "testutil.h"
#include "internal.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

static const char *PROMPT = "Once upon a time, there was a little girl named Lily.";

static sm_session *fused(sm_model **models, int32_t n, bool align, sm_error *err) {
    sm_session_params sp = sm_session_default_params();
    sp.n_ctx = 512;
    sp.n_threads = n;
    sp.fusion_align = align;
    return sm_session_new_fused(models, n, &sp, err);
}

static sm_result run(sm_session *s, const sm_gen_params *gp) {
    sm_result r;
    assert_int_equal(sm_session_clear(s), SM_OK);
    sm_status st = sm_session_generate(s, PROMPT, gp, &r);
    if (st != SM_OK) fail_msg("generate: %s", sm_session_last_error(s));
    return r;
}

static sm_result run_single(sm_model *m, int32_t n) {
    sm_session *s = fused(&m, 1, false, NULL);
    sm_gen_params gp = tu_greedy_params(n);
    sm_result r = run(s, &gp);
    sm_session_free(s);
    return r;
}

static void test_every_mode_runs_on_both_pairs(void **unused) {
    const char *pairs[2][2] = {{"stories260K.gguf", "llama2xs-salty-280K.gguf"},
                               {"cardputer-chat-3M.sharedvocab12688.gguf", "cardputer-brainrot-3M.sharedvocab12688.gguf"}};
    for (int p = 0; p < 2; p++) {
        sm_model *models[2] = {tu_load_model(pairs[p][0]), tu_load_model(pairs[p][1])};
        sm_error err = {0};
        sm_session *s = fused(models, 2, false, &err);
        if (!s) fail_msg("%s", err.message);
        assert_int_equal(sm_session_n_models(s), 2);
        for (int mode = SM_FUSION_CONFIDENCE; mode <= SM_FUSION_CONTRASTIVE; mode++) {
            sm_gen_params gp = tu_greedy_params(24);
            gp.fusion.mode = (sm_fusion_mode)mode;
            gp.fusion.turn = 3;
            sm_result r = run(s, &gp);
            if (r.n_tokens == 0) fail_msg("%s + %s, mode %s: no tokens", pairs[p][0], pairs[p][1], sm_fusion_mode_name(mode));
            assert_true(r.text_len > 0 || r.stop_reason == SM_STOP_EOG);
            assert_int_equal(r.n_models, 2);
            assert_non_null(r.fusion);
            for (int32_t i = 0; i < r.n_tokens; i++) {
                const sm_fusion_info *f = &r.fusion[i];
                assert_true(f->top1_agreement >= 0 && f->top1_agreement <= 1);
                assert_true(f->top3_agreement >= 0 && f->top3_agreement <= 1);
                assert_true(f->js_divergence >= 0 && f->js_divergence <= 1);
                assert_true(f->leading_model >= -1 && f->leading_model < 2);
            }
            /* round robin: model (i / turn) % 2 alone decides token i */
            if (mode == SM_FUSION_ROUND_ROBIN)
                for (int32_t i = 0; i < r.n_tokens; i++)
                    assert_int_equal(r.tokens[i], r.fusion[i].top1[(i / 3) % 2]);
            sm_result_free(&r);
        }
        sm_session_free(s);
        sm_model_free(models[0]);
        sm_model_free(models[1]);
    }
}

static void test_average_with_itself_is_the_model(void **unused) {
    sm_model *m = tu_load_model("stories260K.gguf");
    sm_model *models[2] = {m, m};
    sm_result single = run_single(m, 60);
    sm_session *s = fused(models, 2, false, NULL);
    sm_gen_params gp = tu_greedy_params(60);
    gp.fusion.mode = SM_FUSION_AVERAGE;
    sm_result r = run(s, &gp);
    assert_int_equal(r.n_tokens, single.n_tokens);
    assert_memory_equal(r.tokens, single.tokens, sizeof(sm_token) * (size_t)r.n_tokens);
    assert_string_equal(r.text, single.text);
    for (int32_t i = 0; i < r.n_tokens; i++) {
        assert_float_equal(r.fusion[i].top1_agreement, 1.0f, 0);
        assert_float_equal(r.fusion[i].js_divergence, 0.0f, 1e-6);
    }
    sm_result_free(&r);
    sm_result_free(&single);
    sm_session_free(s);
    sm_model_free(m);
}

static void test_weights_one_zero_reproduce_model_zero(void **unused) {
    sm_model *models[2] = {tu_load_model("stories260K.gguf"), tu_load_model("llama2xs-salty-280K.gguf")};
    sm_result single = run_single(models[0], 60);
    sm_session *s = fused(models, 2, false, NULL);
    for (int mode = SM_FUSION_CONFIDENCE; mode <= SM_FUSION_AVERAGE; mode++) {
        sm_gen_params gp = tu_greedy_params(60);
        gp.fusion.mode = (sm_fusion_mode)mode;
        gp.fusion.weights[0] = 1.0f;
        gp.fusion.weights[1] = 0.0f;
        gp.fusion.n_weights = 2;
        sm_result r = run(s, &gp);
        assert_string_equal(r.text, single.text);
        sm_result_free(&r);
    }
    /* without the weights, salty changes the output */
    sm_gen_params gp = tu_greedy_params(60);
    gp.fusion.mode = SM_FUSION_AVERAGE;
    sm_result r = run(s, &gp);
    assert_string_not_equal(r.text, single.text);
    sm_result_free(&r);
    /* bad weights are refused */
    gp.fusion.n_weights = 1;
    gp.fusion.weights[0] = 1.0f;
    sm_result bad;
    assert_int_equal(sm_session_generate(s, "x", &gp, &bad), SM_ERR_INVALID_ARGUMENT);
    assert_non_null(strstr(sm_session_last_error(s), "weights"));
    sm_result_free(&single);
    sm_session_free(s);
    sm_model_free(models[0]);
    sm_model_free(models[1]);
}

/* Reference mode: stories260K decides; every position where salty's top-1
 * differs is flagged, and the count matches salty run on its own over the
 * same tokens. */
static void test_reference_reports_disagreements(void **unused) {
    sm_model *models[2] = {tu_load_model("stories260K.gguf"), tu_load_model("llama2xs-salty-280K.gguf")};
    sm_session *s = fused(models, 2, false, NULL);
    sm_gen_params gp = tu_greedy_params(80);
    gp.fusion.mode = SM_FUSION_REFERENCE;
    sm_result r = run(s, &gp);
    sm_result single = run_single(models[0], 80);
    assert_string_equal(r.text, single.text); /* model 0 decides alone */

    sm_session *salty = fused(&models[1], 1, false, NULL);
    assert_int_equal(sm_session_feed_text(salty, PROMPT, true), SM_OK);
    int32_t direct = 0, flagged = 0;
    for (int32_t i = 0; i < r.n_tokens; i++) {
        const float *lg = sm_session_logits(salty);
        sm_token best = 0;
        for (int32_t t = 1; t < sm_model_n_vocab(models[1]); t++)
            if (lg[t] > lg[best]) best = t;
        direct += best != r.tokens[i];
        flagged += r.fusion[i].reference_differs;
        assert_int_equal(r.fusion[i].reference_differs, best != r.tokens[i]);
        assert_int_equal(sm_session_feed_tokens(salty, &r.tokens[i], 1), SM_OK);
    }
    assert_int_equal(flagged, direct);
    assert_true(direct > 0); /* the two models do disagree somewhere */
    sm_result_free(&r);
    sm_result_free(&single);
    sm_session_free(salty);
    sm_session_free(s);
    sm_model_free(models[0]);
    sm_model_free(models[1]);
}

static void test_vocabulary_mismatch_and_alignment(void **unused) {
    const char *others[2] = {"aidreams260K.gguf", "cardputer-chat-3M.gguf"};
    for (int o = 0; o < 2; o++) {
        sm_model *models[2] = {tu_load_model("stories260K.gguf"), tu_load_model(others[o])};
        sm_error err = {0};
        assert_null(fused(models, 2, false, &err));
        assert_int_equal(err.status, SM_ERR_VOCAB_MISMATCH);
        assert_non_null(strstr(err.message, others[o]));
        assert_true(strstr(err.message, "token") || strstr(err.message, "size"));
        sm_session *s = fused(models, 2, true, &err);
        if (!s) fail_msg("aligned: %s", err.message);
        sm_gen_params gp = tu_greedy_params(20);
        gp.fusion.mode = SM_FUSION_AVERAGE;
        sm_result r = run(s, &gp);
        assert_true(r.n_tokens > 0 && r.text_len > 0);
        for (int32_t i = 0; i < r.n_tokens; i++)
            assert_true(r.fusion[i].unmapped_mass[1] >= 0 && r.fusion[i].unmapped_mass[1] <= 1.0001f);
        assert_float_equal(r.fusion[0].unmapped_mass[0], 0.0f, 0);
        sm_result_free(&r);
        sm_session_free(s);
        sm_model_free(models[0]);
        sm_model_free(models[1]);
    }
}

/* Collective retraction: every model is rewound to the same position, and
 * the fused state equals a fresh fused run fed the kept tokens. */
static void test_retraction_rewinds_every_model(void **unused) {
    sm_model *models[2] = {tu_load_model("stories260K.gguf"), tu_load_model("llama2xs-salty-280K.gguf")};
    sm_session *s = fused(models, 2, false, NULL);
    sm_gen_params gp = tu_greedy_params(40);
    gp.fusion.mode = SM_FUSION_CONFIDENCE;
    gp.policy.enabled = true;
    gp.policy.style = SM_POLICY_FIXED; /* retraction at critical confidence */
    gp.policy.retract = 1;
    gp.policy.critical_threshold = 0.9f;
    sm_result r = run(s, &gp);
    assert_true(r.n_retractions > 0);
    int32_t n_past = sm_session_n_past(s);
    assert_int_equal(n_past, r.n_prompt_tokens + r.n_tokens);
    for (int32_t m = 0; m < 2; m++) assert_int_equal(sm_session_model_kv_pos(s, m), n_past);

    sm_session *c = fused(models, 2, false, NULL);
    assert_int_equal(sm_session_feed_text(c, PROMPT, true), SM_OK);
    /* one at a time, as generation decodes (a batch rounds differently) */
    for (int32_t i = 0; i < r.n_tokens; i++) assert_int_equal(sm_session_feed_tokens(c, &r.tokens[i], 1), SM_OK);
    for (int32_t m = 0; m < 2; m++) {
        const float *a = sm_session_model_logits(s, m), *b = sm_session_model_logits(c, m);
        for (int32_t t = 0; t < sm_model_n_vocab(models[0]); t++) assert_float_equal(a[t], b[t], 1e-5);
    }
    sm_result_free(&r);
    sm_session_free(s);
    sm_session_free(c);
    sm_model_free(models[0]);
    sm_model_free(models[1]);
}

/* The pure fusion rules on a three-token vocabulary. */
static void test_fusion_rules_synthetic(void **unused) {
    float a[3] = {logf(0.6f), logf(0.3f), logf(0.1f)};
    float b[3] = {logf(0.2f), logf(0.7f), logf(0.1f)};
    sm_model_dist d[2];
    sm_model_dist_summarize(a, 3, &d[0]);
    sm_model_dist_summarize(b, 3, &d[1]);
    assert_float_equal(d[0].max_p, 0.6f, 1e-6);
    assert_int_equal(d[1].top[0], 1);
    sm_fusion_params fp = sm_gen_default_params().fusion;
    float out[3];
    bool in[2];
    fp.mode = SM_FUSION_AVERAGE;
    sm_fuse(&fp, d, 2, 3, 0, out, in);
    assert_float_equal(expf(out[0]), 0.4f, 1e-6);
    assert_float_equal(expf(out[1]), 0.5f, 1e-6);
    fp.mode = SM_FUSION_CONFIDENCE; /* weights 0.6 and 0.7 */
    sm_fuse(&fp, d, 2, 3, 0, out, in);
    assert_float_equal(expf(out[0]), (0.6f * 0.6f + 0.7f * 0.2f) / 1.3f, 1e-6);
    fp.mode = SM_FUSION_VOTING;
    sm_fuse(&fp, d, 2, 3, 0, out, in);
    assert_float_equal(expf(out[0]), 0.6f / 1.3f, 1e-6);
    assert_true(out[2] == -INFINITY);
    fp.mode = SM_FUSION_HARMONY; /* both are above 0.3: same as confidence */
    fp.abstain_below = 0.65f;    /* now model 0 abstains */
    sm_fuse(&fp, d, 2, 3, 0, out, in);
    assert_false(in[0]);
    assert_true(in[1]);
    assert_float_equal(expf(out[1]), 0.7f, 1e-6);
    fp.mode = SM_FUSION_CONTRASTIVE; /* alpha 0.1: all plausible */
    sm_fuse(&fp, d, 2, 3, 0, out, in);
    assert_float_equal(out[0], logf(0.6f) - 0.5f * logf(0.2f), 1e-5);
    fp.alpha = 0.4f; /* 0.1 < 0.4 * 0.6: excluded */
    sm_fuse(&fp, d, 2, 3, 0, out, in);
    assert_true(out[2] == -INFINITY);
    sm_fusion_info info;
    bool all[2] = {true, true};
    sm_fusion_agreement(d, 2, 3, 1, all, 0, &info);
    assert_float_equal(info.top1_agreement, 0.5f, 0);
    assert_float_equal(info.top3_agreement, 1.0f, 0);
    assert_int_equal(info.leading_model, 1);
    assert_true(info.reference_differs);
    double m0 = 0.4, m1 = 0.5, m2 = 0.1;
    double js = 0.5 * (0.6 * log2(0.6 / m0) + 0.3 * log2(0.3 / m1) + 0.1 * log2(0.1 / m2)) +
                0.5 * (0.2 * log2(0.2 / m0) + 0.7 * log2(0.7 / m1) + 0.1 * log2(0.1 / m2));
    assert_float_equal(info.js_divergence, js, 1e-5);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_fusion_rules_synthetic),
        cmocka_unit_test(test_every_mode_runs_on_both_pairs),
        cmocka_unit_test(test_average_with_itself_is_the_model),
        cmocka_unit_test(test_weights_one_zero_reproduce_model_zero),
        cmocka_unit_test(test_reference_reports_disagreements),
        cmocka_unit_test(test_vocabulary_mismatch_and_alignment),
        cmocka_unit_test(test_retraction_rewinds_every_model),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
