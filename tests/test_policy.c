/* The self-modification policy on synthetic confidence sequences: every
 * rule fires at its threshold edge and not on it. */
#include "testutil.h"
#include "internal.h"

#include <math.h>
#include <string.h>

/* The fixed style's rules (most of this file): sm_policy_default_params is
 * the calibrated style now. */
static sm_policy_params fixed_params(void) {
    sm_policy_params p = sm_policy_default_params();
    p.style = SM_POLICY_FIXED;
    return p;
}

static sm_policy_state state_at(float t, float rp) {
    return (sm_policy_state){.temperature = t, .repeat_penalty = rp, .rng = 99, .base_temperature = t, .base_repeat_penalty = rp};
}

/* n tokens of the same confidence, all different token ids. */
static void step_const(const sm_policy_params *p, float conf, int32_t n, sm_policy_state *st, sm_policy_action *a) {
    float c[64];
    sm_token t[64];
    for (int32_t i = 0; i < n; i++) { c[i] = conf; t[i] = i; }
    sm_policy_step(p, c, t, n, 0, st, a);
}

static void test_critical_edge_and_flag(void **unused) {
    sm_policy_params p = fixed_params();
    p.aggressive = true;
    sm_policy_state st = state_at(0.7f, 1.1f);
    sm_policy_action a;
    step_const(&p, 0.35f, 5, &st, &a);
    assert_int_equal(a.retract, 0); /* on the threshold: no retraction */
    assert_int_equal(a.mods[0].type, SM_MOD_PARAM_ADJUST);
    st = state_at(0.7f, 1.1f);
    step_const(&p, 0.3499f, 5, &st, &a);
    assert_int_equal(a.retract, 3);
    assert_int_equal(a.n_mods, 0);
    assert_float_equal(st.temperature, 0.7f, 0); /* the loop applies the retraction's change */
    /* fewer tokens than retract_tokens: only what exists */
    step_const(&p, 0.1f, 2, &st, &a);
    assert_int_equal(a.retract, 2);
    /* without aggressive and retract=-1 the original never retracts */
    p.aggressive = false;
    step_const(&p, 0.1f, 5, &st, &a);
    assert_int_equal(a.retract, 0);
    assert_int_equal(a.mods[0].type, SM_MOD_PARAM_ADJUST);
    p.retract = 1;
    step_const(&p, 0.1f, 5, &st, &a);
    assert_int_equal(a.retract, 3);
    p.retract = 0;
    p.aggressive = true;
    step_const(&p, 0.1f, 5, &st, &a);
    assert_int_equal(a.retract, 0);
}

static void test_max_retractions(void **unused) {
    sm_policy_params p = fixed_params();
    p.retract = 1;
    p.max_retractions = 2;
    float c[5] = {0.1f, 0.1f, 0.1f, 0.1f, 0.1f};
    sm_token t[5] = {1, 2, 3, 4, 5};
    sm_policy_state st = state_at(0.7f, 1.1f);
    sm_policy_action a;
    sm_policy_step(&p, c, t, 5, 1, &st, &a);
    assert_int_equal(a.retract, 3);
    sm_policy_step(&p, c, t, 5, 2, &st, &a);
    assert_int_equal(a.retract, 0);
    assert_int_equal(a.mods[0].type, SM_MOD_PARAM_ADJUST);
}

static void test_param_adjust_edge_and_caps(void **unused) {
    sm_policy_params p = fixed_params();
    sm_policy_state st = state_at(0.7f, 1.1f);
    sm_policy_action a;
    step_const(&p, 0.5f, 5, &st, &a);
    assert_int_equal(a.n_mods, 0);
    step_const(&p, 0.4999f, 5, &st, &a);
    assert_int_equal(a.n_mods, 1);
    assert_int_equal(a.mods[0].type, SM_MOD_PARAM_ADJUST);
    assert_float_equal(a.mods[0].t_before, 0.7f, 1e-6);
    assert_float_equal(st.temperature, 0.84f, 1e-6);
    assert_float_equal(st.repeat_penalty, 1.21f, 1e-6);
    st = state_at(1.2f, 1.45f);
    step_const(&p, 0.4f, 5, &st, &a);
    assert_float_equal(st.temperature, 1.3f, 1e-6);
    assert_float_equal(st.repeat_penalty, 1.5f, 1e-6);
    /* aggressive steps are 1.5x larger: 1.2 -> 1.3, 1.1 -> 1.15 */
    p.aggressive = true;
    p.exploration_prob = 0.0f;
    st = state_at(0.5f, 1.0f);
    step_const(&p, 0.4f, 5, &st, &a);
    assert_float_equal(st.temperature, 0.65f, 1e-6);
    assert_float_equal(st.repeat_penalty, 1.15f, 1e-6);
}

/* The original's rules (ANCHORS.md): T = min(1.2T, 1.3) even from above
 * the cap, aggressive only adds retraction and bursts (steps unscaled). */
static void test_original_style(void **unused) {
    sm_policy_params p = fixed_params();
    assert_int_equal(sm_policy_preset(&p, "original", NULL), SM_OK);
    assert_int_equal(p.style, SM_POLICY_ORIGINAL);
    sm_policy_state st = state_at(1.45f, 1.8f);
    sm_policy_action a;
    step_const(&p, 0.4f, 5, &st, &a);
    assert_float_equal(st.temperature, 1.3f, 1e-6); /* lowered to the cap */
    assert_float_equal(st.repeat_penalty, 1.5f, 1e-6);
    p.aggressive = true;
    p.exploration_prob = 0.0f;
    st = state_at(0.5f, 1.0f);
    step_const(&p, 0.4f, 5, &st, &a);
    assert_float_equal(st.temperature, 0.6f, 1e-6); /* 1.2x, not the fixed style's 1.3x */
    assert_float_equal(st.repeat_penalty, 1.1f, 1e-6);
    step_const(&p, 0.3f, 5, &st, &a); /* aggressive: critical retracts */
    assert_int_equal(a.retract, 3);
    st = state_at(1.45f, 1.0f);
    sm_policy_after_retraction(&p, &st);
    assert_float_equal(st.temperature, 1.5f, 1e-6); /* min(1.4T, 1.5) */
    st = state_at(1.6f, 1.0f);
    sm_policy_after_retraction(&p, &st);
    assert_float_equal(st.temperature, 1.5f, 1e-6);
    /* the fixed style never lowers a value above its cap */
    assert_int_equal(sm_policy_preset(&p, "fixed", NULL), SM_OK);
    p.aggressive = false;
    st = state_at(1.45f, 1.8f);
    step_const(&p, 0.4f, 5, &st, &a);
    assert_float_equal(st.temperature, 1.45f, 1e-6);
    /* tuned: no heating, earlier cooling; unknown names are refused by name */
    assert_int_equal(sm_policy_preset(&p, "tuned", NULL), SM_OK);
    assert_float_equal(p.confidence_threshold, 0.0f, 0);
    assert_float_equal(p.sharpen_threshold, 0.5f, 0);
    sm_error err;
    assert_int_equal(sm_policy_preset(&p, "fast", &err), SM_ERR_INVALID_ARGUMENT);
    assert_non_null(strstr(err.message, "original, fixed, tuned"));
}

/* The calibrated style: relative to the text's own confidence, relaxing
 * back, and retracting exactly a repeated 4-gram. */
static void test_calibrated_style(void **unused) {
    sm_policy_params p = fixed_params();
    assert_int_equal(sm_policy_preset(&p, "calibrated", NULL), SM_OK);
    assert_true(sm_policy_retraction_enabled(&p)); /* loops are retracted by default */
    assert_int_equal(sm_policy_retraction_tokens(&p), 4);
    sm_policy_state st = state_at(0.7f, 1.1f);
    sm_policy_action a;
    float c[64];
    sm_token t[64];
    /* 20 tokens around 0.3 (this model's usual: no absolute threshold fires) */
    for (int32_t i = 0; i < 20; i++) {
        c[i] = 0.3f + 0.02f * (float)(i % 3);
        t[i] = i;
        sm_policy_step(&p, c, t, i + 1, 0, &st, &a);
        assert_int_equal(a.retract, 0);
        assert_int_equal(a.n_mods, 0);
    }
    assert_float_equal(st.temperature, 0.7f, 0);
    /* a collapse relative to it raises T, bounded by 1.5x the requested */
    for (int32_t i = 20; i < 30; i++) {
        c[i] = 0.05f;
        t[i] = i;
        sm_policy_step(&p, c, t, i + 1, 0, &st, &a);
    }
    assert_true(st.temperature > 0.7f && st.temperature <= 1.05f + 1e-6f);
    /* confidence back to usual: T relaxes to what was asked for, in steps a
     * reader can see (no "T 0.70 -> 0.70" events), and then stays there */
    int32_t n_relax = 0;
    for (int32_t i = 30; i < 60; i++) {
        c[i] = 0.3f + 0.02f * (float)(i % 3);
        t[i] = i;
        sm_policy_step(&p, c, t, i + 1, 0, &st, &a);
        for (int32_t m = 0; m < a.n_mods; m++) {
            n_relax++;
            float d = fabsf(a.mods[m].t_after - a.mods[m].t_before);
            if (!(d >= 0.005f || a.mods[m].t_after == 0.7f)) fail_msg("step %d: %s T %.4f -> %.4f", i, a.mods[m].description, a.mods[m].t_before, a.mods[m].t_after);
        }
    }
    assert_float_equal(st.temperature, 0.7f, 0);
    assert_true(n_relax > 0 && n_relax < 15);
    /* the calibrated policy has no aggressive mode: refused, not ignored */
    sm_gen_params gp = sm_gen_default_params();
    gp.policy = p;
    gp.policy.aggressive = true;
    sm_error err;
    assert_int_equal(sm_gen_params_validate(&gp, &err), SM_ERR_INVALID_ARGUMENT);
    assert_non_null(strstr(err.message, "aggressive"));
    /* a candidate that completes a 4-gram seen before: retract those 4 */
    sm_token loop[12] = {1, 2, 3, 4, 9, 8, 7, 1, 2, 3, 4};
    float lc[12] = {0};
    for (int i = 0; i < 12; i++) lc[i] = 0.5f;
    sm_policy_step(&p, lc, loop, 10, 0, &st, &a); /* 1 2 3 after 1 2 3 4: not yet */
    assert_int_equal(a.retract, 0);
    sm_policy_step(&p, lc, loop, 11, 0, &st, &a);
    assert_int_equal(a.retract, 4);
    assert_true(a.loop);
    sm_policy_step(&p, lc, loop, 11, p.max_retractions, &st, &a); /* budget spent */
    assert_int_equal(a.retract, 0);
    p.retract = 0;
    sm_policy_step(&p, lc, loop, 11, 0, &st, &a);
    assert_int_equal(a.retract, 0);
}

/* At the caps the rule changes nothing, so there is no modification. */
static void test_no_event_at_the_caps(void **unused) {
    sm_policy_params p = fixed_params();
    sm_policy_state st = state_at(1.3f, 1.5f);
    sm_policy_action a;
    step_const(&p, 0.4f, 5, &st, &a);
    assert_int_equal(a.n_mods, 0);
    st = state_at(1.3f, 1.4f); /* the penalty can still rise: one event */
    step_const(&p, 0.4f, 5, &st, &a);
    assert_int_equal(a.n_mods, 1);
    assert_float_equal(a.mods[0].rp_after, 1.5f, 1e-6);
    assert_float_equal(a.mods[0].t_after, 1.3f, 1e-6);
}

static void test_sharpen_edges(void **unused) {
    sm_policy_params p = fixed_params();
    sm_policy_state st = state_at(0.7f, 1.1f);
    sm_policy_action a;
    step_const(&p, 0.85f, 5, &st, &a);
    assert_int_equal(a.n_mods, 0);
    step_const(&p, 0.8501f, 5, &st, &a);
    assert_int_equal(a.mods[0].type, SM_MOD_SHARPEN);
    assert_float_equal(st.temperature, 0.616f, 1e-6);
    st = state_at(0.4f, 1.1f);
    step_const(&p, 0.95f, 5, &st, &a);
    assert_int_equal(a.n_mods, 0); /* T must be above 0.4 */
    st = state_at(0.33f, 1.1f);
    st.temperature = 0.41f;
    step_const(&p, 0.95f, 5, &st, &a);
    assert_float_equal(st.temperature, 0.3608f, 1e-6);
    st = state_at(0.41f, 1.1f);
    p.aggressive = true;
    p.exploration_prob = 0.0f;
    step_const(&p, 0.95f, 5, &st, &a);
    assert_float_equal(st.temperature, 0.3362f, 1e-6); /* aggressive: 0.41 * 0.82 */
}

static void test_window_mean_uses_last_five(void **unused) {
    sm_policy_params p = fixed_params();
    float c[7] = {0.0f, 0.0f, 0.6f, 0.6f, 0.6f, 0.6f, 0.6f};
    sm_token t[7] = {1, 2, 3, 4, 5, 6, 7};
    sm_policy_state st = state_at(0.7f, 1.1f);
    sm_policy_action a;
    sm_policy_step(&p, c, t, 7, 0, &st, &a);
    assert_float_equal(a.window_mean, 0.6f, 1e-6);
    assert_int_equal(a.n_mods, 0);
}

static void test_repetition_edges(void **unused) {
    sm_policy_params p = fixed_params();
    float c[10];
    for (int i = 0; i < 10; i++) c[i] = 0.7f;
    sm_token four[10] = {1, 2, 3, 4, 1, 2, 3, 4, 1, 2};
    sm_token five[10] = {1, 2, 3, 4, 5, 1, 2, 3, 4, 5};
    sm_policy_state st = state_at(0.7f, 1.1f);
    sm_policy_action a;
    sm_policy_step(&p, c, five, 10, 0, &st, &a);
    assert_int_equal(a.n_mods, 0);
    sm_policy_step(&p, c, four, 9, 0, &st, &a);
    assert_int_equal(a.n_mods, 0); /* fewer than 10 tokens */
    sm_policy_step(&p, c, four, 10, 0, &st, &a);
    assert_int_equal(a.n_mods, 1);
    assert_int_equal(a.mods[0].type, SM_MOD_ANTI_REPETITION);
    assert_float_equal(st.repeat_penalty, 1.265f, 1e-6);
    st = state_at(0.7f, 1.9f);
    sm_policy_step(&p, c, four, 10, 0, &st, &a);
    assert_float_equal(st.repeat_penalty, 2.0f, 1e-6);
}

static void test_exploration_bursts(void **unused) {
    sm_policy_params p = fixed_params();
    p.aggressive = true;
    int bursts = 0;
    sm_policy_state st = state_at(0.7f, 1.1f);
    sm_policy_action a;
    for (int i = 0; i < 20000; i++) {
        st.temperature = 0.7f;
        step_const(&p, 0.7f, 5, &st, &a);
        for (int m = 0; m < a.n_mods; m++)
            if (a.mods[m].type == SM_MOD_EXPLORATION_BURST) {
                bursts++;
                assert_true(st.temperature >= 0.55f - 1e-6 && st.temperature <= 0.85f + 1e-6);
            }
    }
    assert_in_range(bursts, 850, 1150); /* 5% of 20000, with room for chance */
    p.aggressive = false;
    step_const(&p, 0.7f, 5, &st, &a);
    assert_int_equal(a.n_mods, 0);
}

static void test_disabled_and_after_retraction(void **unused) {
    sm_policy_params p = fixed_params();
    p.enabled = false;
    sm_policy_state st = state_at(0.7f, 1.1f);
    sm_policy_action a;
    step_const(&p, 0.01f, 5, &st, &a);
    assert_int_equal(a.n_mods + a.retract, 0);
    p = fixed_params();
    sm_policy_after_retraction(&p, &st);
    assert_float_equal(st.temperature, 0.98f, 1e-6);
    st.temperature = 1.2f;
    sm_policy_after_retraction(&p, &st);
    assert_float_equal(st.temperature, 1.5f, 1e-6);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_critical_edge_and_flag), cmocka_unit_test(test_max_retractions),
        cmocka_unit_test(test_param_adjust_edge_and_caps), cmocka_unit_test(test_no_event_at_the_caps), cmocka_unit_test(test_sharpen_edges),
        cmocka_unit_test(test_window_mean_uses_last_five), cmocka_unit_test(test_repetition_edges),
        cmocka_unit_test(test_exploration_bursts), cmocka_unit_test(test_disabled_and_after_retraction),
        cmocka_unit_test(test_original_style),
        cmocka_unit_test(test_calibrated_style),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
