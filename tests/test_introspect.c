/*
 * Observation on real models: the eval callback's statistics per token,
 * no callback when off, control vectors, steering vectors, hidden-state
 * files, and entropy steering.
 */
#include "testutil.h"

#include "internal.h"
#include "gguf.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static const char *const PROMPT = "Once upon a time";

static sm_session_params base_params(void) {
    sm_session_params p = sm_session_default_params();
    p.n_ctx = 256;
    p.n_threads = 1;
    return p;
}

static void temp_path(char *buf, size_t size, const char *name) {
    snprintf(buf, size, "/tmp/sm_test_introspect_%d_%s", (int)getpid(), name);
}

/* ------------------------------------------------------------------ */
/* The callback sees every requested layer every token                 */
/* ------------------------------------------------------------------ */

typedef struct token_watch {
    int32_t n_tokens;
    int32_t n_without_stats;
    int32_t n_bad;                 /* tokens with a wrong or non-finite value */
    int32_t expect_layers[8];
    int32_t n_expect;
    int32_t expect_heads;
    float max_entropy;
} token_watch;

static bool stats_ok(const sm_introspection *in, const token_watch *w) {
    if (in->n_layers != w->n_expect || in->n_heads != w->expect_heads) return false;
    for (int32_t l = 0; l < in->n_layers; l++) {
        const sm_layer_stats *ls = &in->layers[l];
        if (ls->layer != w->expect_layers[l]) return false;
        if (!isfinite(ls->norm) || !isfinite(ls->mean) || !isfinite(ls->max_abs)) return false;
        if (!(ls->norm > 0.0f) || ls->max_abs < fabsf(ls->mean) || ls->max_abs > ls->norm + 1e-4f) return false;
        for (int32_t h = 0; h < in->n_heads; h++) {
            float e = in->attn_entropy[l * in->n_heads + h];
            if (!isfinite(e) || e < -1e-5f || e > w->max_entropy) return false;
        }
    }
    return true;
}

static bool watch_tokens(const sm_event *e, void *user_data) {
    token_watch *w = user_data;
    if (e->type != SM_EVENT_TOKEN) return true;
    w->n_tokens++;
    if (!e->introspection) w->n_without_stats++;
    else if (!stats_ok(e->introspection, w)) w->n_bad++;
    return true;
}

static void test_callback_sees_every_layer_every_token(void **state) {
    (void)state;
    sm_model *m = tu_load_model("stories260K.gguf");
    int32_t layers[] = {-1, 0, 2}; /* any order; -1 is layer 4 of 5 */
    sm_session_params sp = base_params();
    sp.introspect_layers = layers;
    sp.n_introspect_layers = 3;
    sp.introspect_attention = true;
    sm_session *s = tu_open_session(m, &sp);
    assert_true(sm_session_introspecting(s));
    assert_int_equal(sm_session_feed_text(s, PROMPT, true), SM_OK);
    int64_t calls_before = sm_session_eval_callback_calls(s);
    assert_true(calls_before > 0);

    token_watch w = {.expect_layers = {0, 2, 4}, .n_expect = 3, .expect_heads = 8, .max_entropy = logf(256.0f) + 1e-3f};
    sm_gen_params gp = tu_greedy_params(24);
    gp.on_event = watch_tokens;
    gp.user_data = &w;
    sm_result r;
    assert_int_equal(sm_session_generate(s, NULL, &gp, &r), SM_OK);
    assert_int_equal(w.n_tokens, r.n_tokens);
    assert_true(r.n_tokens >= 20);
    assert_int_equal(w.n_without_stats, 0);
    assert_int_equal(w.n_bad, 0);
    /* per decoded token: three layer outputs and three attention nodes */
    assert_int_equal(sm_session_eval_callback_calls(s) - calls_before, (int64_t)r.n_decoded * 6);
    const sm_introspection *last = sm_session_introspection(s);
    assert_non_null(last);
    assert_int_equal(last->n_layers, 3);
    sm_result_free(&r);
    sm_session_free(s);
    sm_model_free(m);
}

typedef struct logit_run {
    sm_token tokens[64];
    int32_t n;
    float *logits;
    int32_t n_with_stats;
} logit_run;

static bool count_stats(const sm_event *e, void *user_data) {
    logit_run *run = user_data;
    if (e->type == SM_EVENT_TOKEN && e->introspection) run->n_with_stats++;
    return true;
}

static void generate_run(sm_session *s, int32_t n_vocab, logit_run *run) {
    sm_gen_params gp = tu_greedy_params(32);
    gp.on_event = count_stats;
    gp.user_data = run;
    sm_result r;
    assert_int_equal(sm_session_generate(s, PROMPT, &gp, &r), SM_OK);
    run->n = r.n_tokens;
    memcpy(run->tokens, r.tokens, sizeof(sm_token) * (size_t)r.n_tokens);
    run->logits = malloc(sizeof(float) * (size_t)n_vocab);
    memcpy(run->logits, sm_session_logits(s), sizeof(float) * (size_t)n_vocab);
    sm_result_free(&r);
}

static void test_off_means_no_callback_and_observing_changes_nothing(void **state) {
    (void)state;
    sm_model *m = tu_load_model("stories260K.gguf");
    int32_t n_vocab = sm_model_n_vocab(m);
    sm_session_params off = base_params();
    sm_session *plain = tu_open_session(m, &off);
    assert_false(sm_session_introspecting(plain));
    logit_run a = {0};
    generate_run(plain, n_vocab, &a);
    assert_int_equal(sm_session_eval_callback_calls(plain), -1); /* no callback registered */
    assert_null(sm_session_introspection(plain));
    assert_int_equal(a.n_with_stats, 0);

    sm_session_params on = base_params();
    on.introspect_all_layers = true;
    sm_session *watched = tu_open_session(m, &on);
    logit_run b = {0};
    generate_run(watched, n_vocab, &b);
    assert_int_equal(b.n_with_stats, b.n);
    assert_int_equal(a.n, b.n);
    assert_memory_equal(a.tokens, b.tokens, sizeof(sm_token) * (size_t)a.n);
    assert_memory_equal(a.logits, b.logits, sizeof(float) * (size_t)n_vocab); /* reading nodes changes no bit */
    assert_int_equal(sm_session_introspection(watched)->n_layers, 5);
    free(a.logits);
    free(b.logits);
    sm_session_free(plain);
    sm_session_free(watched);
    sm_model_free(m);
}

static void test_bad_introspection_settings(void **state) {
    (void)state;
    sm_model *m = tu_load_model("stories260K.gguf");
    sm_session_params sp = base_params();
    int32_t layers[] = {5};
    sp.introspect_layers = layers;
    sp.n_introspect_layers = 1;
    sm_error err = {0};
    assert_null(sm_session_new(m, &sp, &err));
    assert_non_null(strstr(err.message, "layer 5 does not exist"));

    sp = base_params();
    sp.introspect_attention = true; /* without layers */
    assert_null(sm_session_new(m, &sp, &err));
    assert_non_null(strstr(err.message, "need layers"));

    sp = base_params();
    sp.max_branches = SM_MAX_BRANCHES + 1;
    assert_null(sm_session_new(m, &sp, &err));
    assert_non_null(strstr(err.message, "max_branches"));
    sm_model_free(m);
}

/* ------------------------------------------------------------------ */
/* Control vectors and steering                                        */
/* ------------------------------------------------------------------ */

static float *prompt_logits(sm_session *s, int32_t n_vocab) {
    assert_int_equal(sm_session_clear(s), SM_OK);
    assert_int_equal(sm_session_feed_text(s, PROMPT, true), SM_OK);
    float *copy = malloc(sizeof(float) * (size_t)n_vocab);
    memcpy(copy, sm_session_logits(s), sizeof(float) * (size_t)n_vocab);
    return copy;
}

static void test_control_vector_zero_is_identity_nonzero_steers(void **state) {
    (void)state;
    sm_model *m = tu_load_model("stories260K.gguf");
    int32_t n_vocab = sm_model_n_vocab(m);
    int32_t n_embd = llama_model_n_embd(sm_model_llama(m));
    int32_t n_layers = llama_model_n_layer(sm_model_llama(m)) - 1;
    sm_session_params sp = base_params();
    sm_session *s = tu_open_session(m, &sp);
    float *plain = prompt_logits(s, n_vocab);

    float *vec = calloc((size_t)n_embd * (size_t)n_layers, sizeof(float));
    int32_t len = n_embd * n_layers;
    assert_int_equal(sm_session_set_control_vector(s, vec, len, n_embd, 1, n_layers), SM_OK);
    float *zero = prompt_logits(s, n_vocab);
    assert_memory_equal(plain, zero, sizeof(float) * (size_t)n_vocab);

    for (int32_t j = 0; j < n_embd; j++) vec[(size_t)n_embd * 1 + (size_t)j] = 0.5f; /* layer 2 */
    assert_int_equal(sm_session_set_control_vector(s, vec, len, n_embd, -1, -1), SM_OK);
    float *steered = prompt_logits(s, n_vocab);
    assert_true(tu_max_abs_diff(plain, steered, n_vocab) > 1e-3f);

    assert_int_equal(sm_session_set_control_vector(s, NULL, 0, 0, 0, 0), SM_OK);
    float *removed = prompt_logits(s, n_vocab);
    assert_memory_equal(plain, removed, sizeof(float) * (size_t)n_vocab);

    assert_int_equal(sm_session_set_control_vector(s, vec, n_embd + 1, n_embd + 1, -1, -1), SM_ERR_INVALID_ARGUMENT);
    assert_non_null(strstr(sm_session_last_error(s), "n_embd"));
    free(plain);
    free(zero);
    free(steered);
    free(removed);
    free(vec);
    sm_session_free(s);
    sm_model_free(m);
}

static void test_steer_writes_a_file_that_loads_back(void **state) {
    (void)state;
    sm_model *m = tu_load_model("stories260K.gguf");
    const char *positive[] = {"The happy dog played in the sun and smiled.", "Lily laughed and hugged her mom."};
    const char *negative[] = {"The sad dog cried in the cold rain.", "Lily was angry and shouted at her mom."};
    sm_steer_params sp = sm_steer_default_params();
    sp.positive = positive;
    sp.n_positive = 2;
    sp.negative = negative;
    sp.n_negative = 2;
    sp.n_threads = 1;
    sm_control_vector cv;
    sm_error err = {0};
    assert_int_equal(sm_steer_compute(m, &sp, &cv, &err), SM_OK);
    assert_int_equal(cv.n_embd, 64);
    assert_int_equal(cv.n_layers, 4);
    for (int32_t il = 1; il <= 4; il++) {
        float norm = 0.0f;
        for (int32_t j = 0; j < cv.n_embd; j++) norm += cv.data[(il - 1) * cv.n_embd + j] * cv.data[(il - 1) * cv.n_embd + j];
        assert_true(norm > 0.0f && isfinite(norm));
    }

    char path[256];
    temp_path(path, sizeof path, "steer.gguf");
    assert_int_equal(sm_control_vector_save(&cv, path, "stories260K", &err), SM_OK);
    struct gguf_init_params gp = {.no_alloc = true, .ctx = NULL};
    struct gguf_context *g = gguf_init_from_file(path, gp);
    assert_non_null(g);
    assert_string_equal(gguf_get_val_str(g, gguf_find_key(g, "general.architecture")), "controlvector");
    assert_int_equal(gguf_get_val_i32(g, gguf_find_key(g, "controlvector.layer_count")), 4);
    assert_true(gguf_find_tensor(g, "direction.1") >= 0 && gguf_find_tensor(g, "direction.4") >= 0);
    assert_true(gguf_find_tensor(g, "direction.0") < 0);
    gguf_free(g);

    const char *specs[1] = {path};
    sm_control_vector back;
    assert_int_equal(sm_control_vector_load(specs, 1, &back, &err), SM_OK);
    assert_int_equal(back.n_embd, cv.n_embd);
    assert_int_equal(back.n_layers, cv.n_layers);
    assert_memory_equal(back.data, cv.data, sizeof(float) * (size_t)cv.n_embd * (size_t)cv.n_layers);
    sm_control_vector_free(&back);

    /* FILE:SCALE, and several files summed */
    char scaled[300], negated[300];
    snprintf(scaled, sizeof scaled, "%s:2.5", path);
    snprintf(negated, sizeof negated, "%s:-1", path);
    const char *two[2] = {scaled, negated};
    assert_int_equal(sm_control_vector_load(two, 2, &back, &err), SM_OK);
    for (int32_t j = 0; j < cv.n_embd * cv.n_layers; j++) assert_float_equal(back.data[j], 1.5f * cv.data[j], 1e-5f);
    sm_control_vector_free(&back);

    /* only the chosen layers; layer 0 cannot be steered */
    int32_t only[] = {-1};
    sp.layers = only;
    sp.n_layers = 1;
    sm_control_vector last;
    assert_int_equal(sm_steer_compute(m, &sp, &last, &err), SM_OK);
    for (int32_t j = 0; j < 3 * cv.n_embd; j++) assert_true(last.data[j] == 0.0f);
    assert_memory_equal(last.data + 3 * cv.n_embd, cv.data + 3 * cv.n_embd, sizeof(float) * (size_t)cv.n_embd);
    sm_control_vector_free(&last);
    int32_t zero[] = {0};
    sp.layers = zero;
    assert_int_equal(sm_steer_compute(m, &sp, &last, &err), SM_ERR_INVALID_ARGUMENT);
    assert_non_null(strstr(err.message, "layer 0"));

    const char *missing[1] = {"/nonexistent/vec.gguf"};
    assert_int_equal(sm_control_vector_load(missing, 1, &back, &err), SM_ERR_IO);
    unlink(path);
    sm_control_vector_free(&cv);
    sm_model_free(m);
}

/* ------------------------------------------------------------------ */
/* Hidden states to .npy                                               */
/* ------------------------------------------------------------------ */

typedef struct hidden_watch {
    sm_hidden_writer *writer;
    float rows[64][2 * 64];        /* the last row seen per token index */
    int32_t fired;
} hidden_watch;

static bool feed_writer(const sm_event *e, void *user_data) {
    hidden_watch *w = user_data;
    sm_hidden_writer_on_event(w->writer, e);
    if (e->type == SM_EVENT_TOKEN && e->introspection && e->introspection->hidden && e->token_index < 64)
        memcpy(w->rows[e->token_index], e->introspection->hidden, sizeof(float) * 2 * 64);
    return true;
}

static void test_hidden_states_npy_follow_rewinds(void **state) {
    (void)state;
    sm_model *m = tu_load_model("stories260K.gguf");
    int32_t layers[] = {0, -1};
    sm_session_params sp = base_params();
    sp.introspect_layers = layers;
    sp.n_introspect_layers = 2;
    sp.introspect_hidden = true;
    sm_session *s = tu_open_session(m, &sp);
    char path[256];
    temp_path(path, sizeof path, "hidden.npy");
    sm_error err = {0};
    hidden_watch w = {0};
    w.writer = sm_hidden_writer_open(path, &err);
    assert_non_null(w.writer);

    sm_operator *op = tu_backtrack_once(8, 3);
    sm_gen_params gp = tu_greedy_params(16);
    gp.backtrack.operators = &op;
    gp.backtrack.n_operators = 1;
    gp.on_event = feed_writer;
    gp.user_data = &w;
    sm_result r;
    assert_int_equal(sm_session_generate(s, PROMPT, &gp, &r), SM_OK);
    assert_int_equal(r.n_backtracks, 1);
    assert_int_equal(sm_hidden_writer_rows(w.writer), r.n_tokens);
    assert_int_equal(sm_hidden_writer_close(w.writer, &err), SM_OK);

    FILE *f = fopen(path, "rb");
    assert_non_null(f);
    char header[129] = {0};
    assert_int_equal(fread(header, 1, 128, f), 128);
    assert_memory_equal(header, "\x93NUMPY\x01\x00", 8);
    assert_int_equal((uint8_t)header[8] | (uint8_t)header[9] << 8, 118);
    assert_int_equal(header[127], '\n');
    char shape[64];
    snprintf(shape, sizeof shape, "'shape': (%d, 2, 64)", r.n_tokens);
    assert_non_null(strstr(header + 10, shape)); /* the magic holds a NUL */
    assert_non_null(strstr(header + 10, "'descr': '<f4'"));
    float row[128];
    for (int32_t i = 0; i < r.n_tokens; i++) {
        assert_int_equal(fread(row, sizeof(float), 128, f), 128);
        assert_memory_equal(row, w.rows[i], sizeof row);
    }
    assert_int_equal(fread(row, 1, 1, f), 0); /* nothing after the kept rows */
    fclose(f);
    unlink(path);
    sm_result_free(&r);
    sm_operator_free(op);
    sm_session_free(s);
    sm_model_free(m);
}

/* ------------------------------------------------------------------ */
/* Entropy steering                                                    */
/* ------------------------------------------------------------------ */

static void test_entropy_steer_rules(void **state) {
    (void)state;
    sm_policy_params p = sm_policy_default_params();
    sm_policy_mod mod;
    float t = 0.8f;
    assert_false(sm_policy_entropy_steer(&p, 9.0f, 9.0f, &t, &mod)); /* off */
    p.entropy_mode = 1;
    assert_false(sm_policy_entropy_steer(&p, 3.0f, 0.0f, &t, &mod)); /* not above 3.0 */
    assert_true(sm_policy_entropy_steer(&p, 3.1f, 0.0f, &t, &mod));
    assert_float_equal(t, 0.4f, 1e-6f);
    assert_int_equal(mod.type, SM_MOD_ENTROPY_STEER);
    assert_float_equal(mod.t_before, 0.8f, 1e-6f);
    p.entropy_mode = 2;
    t = 0.8f;
    assert_true(sm_policy_entropy_steer(&p, 0.2f, 0.5f, &t, &mod));
    assert_float_equal(t, 0.0f, 0.0f);
    t = 0.8f;
    assert_false(sm_policy_entropy_steer(&p, 0.2f, 1.5f, &t, &mod)); /* varentropy too high for argmax */
    assert_true(sm_policy_entropy_steer(&p, 3.5f, 0.0f, &t, &mod));
    assert_float_equal(t, 0.8f * 1.3f, 1e-6f);
    t = 1.4f;
    assert_true(sm_policy_entropy_steer(&p, 3.5f, 0.0f, &t, &mod));
    assert_float_equal(t, 1.5f, 1e-6f); /* capped */
    t = 0.0f;
    assert_false(sm_policy_entropy_steer(&p, 3.5f, 0.0f, &t, &mod)); /* greedy stays greedy */

    sm_gen_params gp = sm_gen_default_params();
    sm_error invalid;
    gp.policy.entropy_mode = 3;
    assert_int_equal(sm_gen_params_validate(&gp, &invalid), SM_ERR_INVALID_ARGUMENT);
    assert_non_null(strstr(invalid.message, "entropy mode"));
}

typedef struct steer_count {
    int32_t steers;
    int32_t tokens;
} steer_count;

static bool count_steers(const sm_event *e, void *user_data) {
    steer_count *c = user_data;
    if (e->type == SM_EVENT_MODIFICATION && e->mod == SM_MOD_ENTROPY_STEER) c->steers++;
    if (e->type == SM_EVENT_TOKEN) c->tokens++;
    return true;
}

/* entropix with thresholds no distribution stays under: every token is
 * argmax, so a hot sampler generates exactly the greedy text. */
static void test_entropix_argmax_equals_greedy(void **state) {
    (void)state;
    sm_model *m = tu_load_model("stories260K.gguf");
    sm_session_params sp = base_params();
    sm_session *s = tu_open_session(m, &sp);
    sm_result greedy, steered;
    sm_gen_params gp = tu_greedy_params(30);
    assert_int_equal(sm_session_generate(s, PROMPT, &gp, &greedy), SM_OK);
    assert_int_equal(sm_session_clear(s), SM_OK);
    gp.sampling.temperature = 1.2f;
    gp.sampling.seed = 99;
    gp.policy.entropy_mode = 2;
    gp.policy.entropy_low = 100.0f;
    gp.policy.varentropy_low = 100.0f;
    steer_count c = {0};
    gp.on_event = count_steers;
    gp.user_data = &c;
    assert_int_equal(sm_session_generate(s, PROMPT, &gp, &steered), SM_OK);
    assert_int_equal(steered.n_tokens, greedy.n_tokens);
    assert_memory_equal(steered.tokens, greedy.tokens, sizeof(sm_token) * (size_t)greedy.n_tokens);
    assert_int_equal(c.steers, c.tokens); /* one event per token */
    int32_t in_result = 0;
    for (int32_t i = 0; i < steered.n_events; i++) in_result += steered.events[i].mod == SM_MOD_ENTROPY_STEER;
    assert_int_equal(in_result, c.steers);
    assert_float_equal(steered.final_temperature, 1.2f, 1e-6f); /* the policy's temperature is untouched */
    sm_result_free(&greedy);
    sm_result_free(&steered);
    sm_session_free(s);
    sm_model_free(m);
}

/* The built-in tool reports the last token's statistics. */
static void test_builtin_tool_text(void **state) {
    (void)state;
    sm_layer_stats layers[2] = {{.layer = 0, .norm = 3.5f, .mean = 0.25f, .max_abs = 1.5f},
                                {.layer = 4, .norm = 9.0f, .mean = -0.5f, .max_abs = 4.0f}};
    float attn[4] = {1.0f, 2.0f, 3.0f, 5.0f};
    sm_introspection in = {.n_layers = 2, .layers = layers, .n_heads = 2, .attn_entropy = attn};
    sm_tool_context ctx = {.args = "layers", .introspection = &in};
    char *text = sm_tool_introspect(&ctx, NULL);
    assert_string_equal(text, " (layer 0: norm 3.50, mean 0.250, max 1.50, attention entropy 1.50; "
                              "layer 4: norm 9.00, mean -0.500, max 4.00, attention entropy 4.00)");
    free(text);
    ctx.introspection = NULL;
    text = sm_tool_introspect(&ctx, NULL);
    assert_string_equal(text, " (no activations observed)");
    free(text);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_callback_sees_every_layer_every_token),
        cmocka_unit_test(test_off_means_no_callback_and_observing_changes_nothing),
        cmocka_unit_test(test_bad_introspection_settings),
        cmocka_unit_test(test_control_vector_zero_is_identity_nonzero_steers),
        cmocka_unit_test(test_steer_writes_a_file_that_loads_back),
        cmocka_unit_test(test_hidden_states_npy_follow_rewinds),
        cmocka_unit_test(test_entropy_steer_rules),
        cmocka_unit_test(test_entropix_argmax_equals_greedy),
        cmocka_unit_test(test_builtin_tool_text),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
