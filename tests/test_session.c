/*
 * The generation loop on a real model: generation, stops, and above all
 * retraction exactness — after a rewind the KV cache, the tokens, the text,
 * the distributions and every statistic equal a run that never produced the
 * removed tokens.
 */
#include "testutil.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static const char *PROMPT = "Once upon a time, there was a little girl named Lily.";

typedef struct fixture {
    sm_model *model;
    sm_session *session;
} fixture;

static sm_session *new_session(sm_model *m, uint32_t n_ctx) {
    sm_session_params sp = tu_session_params(n_ctx);
    return tu_open_session(m, &sp);
}

static int setup(void **state) {
    fixture *f = calloc(1, sizeof *f);
    f->model = tu_load_model("stories260K.gguf");
    f->session = new_session(f->model, 512);
    *state = f;
    return 0;
}

static int teardown(void **state) {
    fixture *f = *state;
    if (!f) return 0; /* the setup failed (a missing model): it said why */
    sm_session_free(f->session);
    sm_model_free(f->model);
    free(f);
    return 0;
}

/*
 * The generated text is exactly what the kept tokens add to the context:
 * detokenize(prompt + kept) == detokenize(prompt) + text. (Detokenizing the
 * continuation alone would drop its leading space, as SentencePiece does at
 * the start of a text.)
 */
static void assert_text_matches_tokens(const sm_model *m, const sm_session *s, const sm_result *r) {
    int32_t n_ctx_tokens;
    const sm_token *toks = sm_session_tokens(s, &n_ctx_tokens);
    assert_int_equal(n_ctx_tokens, r->n_prompt_tokens + r->n_tokens);
    size_t n_all, n_prompt;
    char *all = sm_detokenize(m, toks, n_ctx_tokens, &n_all, NULL);
    char *prompt = sm_detokenize(m, toks, r->n_prompt_tokens, &n_prompt, NULL);
    assert_non_null(all);
    assert_non_null(prompt);
    assert_int_equal(n_all - n_prompt, r->text_len);
    assert_memory_equal(all, prompt, n_prompt);
    assert_memory_equal(all + n_prompt, r->text, r->text_len);
    free(all);
    free(prompt);
}

static void test_greedy_generation(void **state) {
    fixture *f = *state;
    sm_gen_params gp = tu_greedy_params(48);
    sm_result r;
    assert_int_equal(sm_session_generate(f->session, PROMPT, &gp, &r), SM_OK);
    assert_int_equal(r.n_tokens, 48);
    assert_int_equal(r.stop_reason, SM_STOP_N_PREDICT);
    assert_true(r.text_len > 20);
    assert_int_equal(r.n_decoded, 47); /* the last token is decoded only when something needs it */
    assert_int_equal(sm_session_n_past(f->session), r.n_prompt_tokens + 48);
    assert_int_equal(sm_session_kv_pos(f->session), sm_session_n_past(f->session)); /* asking decodes it */
    assert_text_matches_tokens(f->model, f->session, &r);
    /* greedy: every kept token is the argmax of its raw distribution when no penalty applies */
    assert_true(r.avg_confidence > 0.0f && r.avg_confidence <= 1.0f);
    sm_result_free(&r);
}

/* Same seed, same output; the temperature actually changes what is sampled. */
static void test_sampling_is_seeded_and_temperature_matters(void **state) {
    fixture *f = *state;
    sm_gen_params gp = sm_gen_default_params();
    gp.n_predict = 40;
    gp.policy.enabled = false;
    gp.sampling.seed = 1234;
    sm_result a, b, c;
    assert_int_equal(sm_session_clear(f->session), SM_OK);
    assert_int_equal(sm_session_generate(f->session, PROMPT, &gp, &a), SM_OK);
    assert_int_equal(sm_session_clear(f->session), SM_OK);
    assert_int_equal(sm_session_generate(f->session, PROMPT, &gp, &b), SM_OK);
    assert_string_equal(a.text, b.text);
    gp.sampling.temperature = 0.0f;
    assert_int_equal(sm_session_clear(f->session), SM_OK);
    assert_int_equal(sm_session_generate(f->session, PROMPT, &gp, &c), SM_OK);
    int differs = 0;
    /* at T=0.7 over 40 tokens, at least one token differs from greedy for some seed */
    for (uint64_t seed = 1; seed < 6 && !differs; seed++) {
        sm_result d;
        gp.sampling.temperature = 1.5f;
        gp.sampling.seed = seed;
        assert_int_equal(sm_session_clear(f->session), SM_OK);
        assert_int_equal(sm_session_generate(f->session, PROMPT, &gp, &d), SM_OK);
        differs = strcmp(d.text, c.text) != 0;
        sm_result_free(&d);
    }
    assert_true(differs);
    sm_result_free(&a);
    sm_result_free(&b);
    sm_result_free(&c);
}

/*
 * Low level: commit the reference tokens, commit some wrong ones, rewind
 * them, then commit the rest of the reference. Every distribution after the
 * rewind equals the uninterrupted run's, and the rewind decodes nothing.
 */
static void test_rewind_logits_equal_uninterrupted_run(void **state) {
    fixture *f = *state;
    sm_model *m = f->model;
    const int32_t n_gen = 24, n_vocab = sm_model_n_vocab(m);
    sm_gen_params gp = tu_greedy_params(n_gen);
    sm_result ref;
    sm_session *a = new_session(m, 512);
    assert_int_equal(sm_session_generate(a, PROMPT, &gp, &ref), SM_OK);
    assert_int_equal(ref.n_tokens, n_gen);

    /* the uninterrupted run's distribution at every generated position */
    sm_session *u = new_session(m, 512);
    assert_int_equal(sm_session_feed_text(u, PROMPT, true), SM_OK);
    float *expect = malloc(sizeof(float) * (size_t)n_vocab * (size_t)(n_gen + 1));
    memcpy(expect, sm_session_logits(u), sizeof(float) * (size_t)n_vocab);
    for (int32_t i = 0; i < n_gen; i++) {
        assert_int_equal(sm_session_feed_tokens(u, &ref.tokens[i], 1), SM_OK);
        memcpy(expect + (size_t)(i + 1) * n_vocab, sm_session_logits(u), sizeof(float) * (size_t)n_vocab);
    }

    for (int32_t k = 1; k <= 6; k += 5) {
        sm_session *b = new_session(m, 512);
        assert_int_equal(sm_session_feed_text(b, PROMPT, true), SM_OK);
        int32_t n_prompt = sm_session_n_past(b);
        const int32_t split = 10;
        assert_int_equal(sm_session_feed_tokens(b, ref.tokens, split), SM_OK);
        for (int32_t w = 0; w < k; w++) {
            sm_token wrong = (ref.tokens[split + w] + 7) % n_vocab;
            assert_int_equal(sm_session_feed_tokens(b, &wrong, 1), SM_OK);
        }
        int64_t decoded_before = sm_session_n_decoded_total(b);
        assert_int_equal(sm_session_rewind(b, k), SM_OK);
        assert_int_equal(sm_session_n_decoded_total(b), decoded_before); /* no re-decode */
        assert_int_equal(sm_session_n_past(b), n_prompt + split);
        assert_int_equal(sm_session_kv_pos(b), n_prompt + split);
        assert_true(tu_max_abs_diff(sm_session_logits(b), expect + (size_t)split * n_vocab, n_vocab) <= 1e-5f);
        for (int32_t i = split; i < n_gen; i++) {
            assert_int_equal(sm_session_feed_tokens(b, &ref.tokens[i], 1), SM_OK);
            float d = tu_max_abs_diff(sm_session_logits(b), expect + (size_t)(i + 1) * n_vocab, n_vocab);
            if (d > 1e-5f) fail_msg("k=%d position %d: logits differ by %g", k, i + 1, d);
            assert_int_equal(sm_session_kv_pos(b), sm_session_n_past(b));
        }
        sm_session_free(b);
    }
    free(expect);
    sm_result_free(&ref);
    sm_session_free(a);
    sm_session_free(u);
}

typedef struct retraction_log {
    sm_token committed[512];
    int32_t n_committed;
    int32_t n_retractions;
    int32_t last_index;
    sm_token last_banned;
    int32_t n_token_events;
} retraction_log;

static bool record_events(const sm_event *e, void *user_data) {
    retraction_log *log = user_data;
    if (e->type == SM_EVENT_TOKEN) {
        assert_int_equal(e->token_index, log->n_committed);
        log->committed[log->n_committed++] = e->token;
        log->n_token_events++;
    } else if (e->type == SM_EVENT_RETRACTION || e->type == SM_EVENT_BACKTRACK) {
        log->n_retractions++;
        log->last_index = e->token_index;
        log->last_banned = e->token_index < log->n_committed ? log->committed[e->token_index] : -1;
        log->n_committed = e->token_index;
    }
    return true;
}

/*
 * The real loop: the policy retracts (thresholds forced high), and the
 * final state equals a fresh run fed the kept tokens: distribution, KV
 * position, text, and the average confidence recomputed token by token.
 */
static void test_retraction_state_equals_clean_run(void **state) {
    fixture *f = *state;
    sm_model *m = f->model;
    const int32_t n_vocab = sm_model_n_vocab(m);
    sm_gen_params gp = tu_greedy_params(40);
    gp.policy.enabled = true;
    gp.policy.style = SM_POLICY_FIXED; /* retraction at critical confidence */
    gp.policy.retract = 1;
    gp.policy.critical_threshold = 0.9f; /* stories260K is rarely that sure */
    gp.policy.max_retractions = 3;
    gp.sampling.repeat_penalty = 1.3f;    /* the penalty history must rewind too */
    retraction_log log = {0};
    gp.on_event = record_events;
    gp.user_data = &log;

    sm_session *s = new_session(m, 512);
    sm_result r;
    assert_int_equal(sm_session_generate(s, PROMPT, &gp, &r), SM_OK);
    assert_int_equal(r.n_retractions, 3); /* performed, capped at max */
    assert_int_equal(log.n_retractions, 3);
    assert_int_equal(r.n_tokens, 40);
    /* the event stream's surviving tokens are the result's tokens */
    assert_int_equal(log.n_committed, r.n_tokens);
    assert_memory_equal(log.committed, r.tokens, sizeof(sm_token) * (size_t)r.n_tokens);
    /* the retracted token was banned where generation resumed */
    if (log.last_banned >= 0 && log.last_index < r.n_tokens) assert_int_not_equal(r.tokens[log.last_index], log.last_banned);
    /* a retraction decodes nothing: every decode is a kept token (but the
     * last, see test_greedy_generation) or a removed one */
    assert_int_equal(r.n_decoded, r.n_tokens - 1 + r.n_tokens_removed - r.n_retractions - r.n_backtracks);
    assert_int_equal(sm_session_kv_pos(s), sm_session_n_past(s));
    assert_int_equal(sm_session_n_past(s), r.n_prompt_tokens + r.n_tokens);
    assert_text_matches_tokens(m, s, &r);

    /* A clean run over exactly the kept tokens. */
    sm_session *c = new_session(m, 512);
    assert_int_equal(sm_session_feed_text(c, PROMPT, true), SM_OK);
    double sum_conf = 0.0;
    for (int32_t i = 0; i < r.n_tokens; i++) {
        const float *lg = sm_session_logits(c);
        float mx = -INFINITY;
        for (int32_t t = 0; t < n_vocab; t++) mx = lg[t] > mx ? lg[t] : mx;
        double z = 0.0;
        for (int32_t t = 0; t < n_vocab; t++) z += exp(lg[t] - mx);
        sum_conf += exp(lg[r.tokens[i]] - mx) / z;
        assert_int_equal(sm_session_feed_tokens(c, &r.tokens[i], 1), SM_OK);
    }
    assert_float_equal(r.avg_confidence, sum_conf / r.n_tokens, 1e-5);
    assert_int_equal(sm_session_n_past(c), sm_session_n_past(s));
    int32_t n1, n2;
    const sm_token *t1 = sm_session_tokens(s, &n1), *t2 = sm_session_tokens(c, &n2);
    assert_int_equal(n1, n2);
    assert_memory_equal(t1, t2, sizeof(sm_token) * (size_t)n1);
    assert_true(tu_max_abs_diff(sm_session_logits(s), sm_session_logits(c), n_vocab) <= 1e-5f);
    sm_result_free(&r);
    sm_session_free(s);
    sm_session_free(c);
}

/* Retraction follows its flag: off by default without --aggressive. */
static void test_retraction_flag(void **state) {
    fixture *f = *state;
    sm_gen_params gp = tu_greedy_params(30);
    gp.policy.enabled = true;
    gp.policy.style = SM_POLICY_FIXED;
    gp.policy.critical_threshold = 0.9f;
    sm_result r;
    gp.policy.retract = -1;
    gp.policy.aggressive = false;
    assert_int_equal(sm_session_clear(f->session), SM_OK);
    assert_int_equal(sm_session_generate(f->session, PROMPT, &gp, &r), SM_OK);
    assert_int_equal(r.n_retractions, 0);
    sm_result_free(&r);
    gp.policy.aggressive = true;
    assert_int_equal(sm_session_clear(f->session), SM_OK);
    assert_int_equal(sm_session_generate(f->session, PROMPT, &gp, &r), SM_OK);
    assert_true(r.n_retractions > 0);
    sm_result_free(&r);
    gp.policy.retract = 0;
    assert_int_equal(sm_session_clear(f->session), SM_OK);
    assert_int_equal(sm_session_generate(f->session, PROMPT, &gp, &r), SM_OK);
    assert_int_equal(r.n_retractions, 0);
    sm_result_free(&r);
}

static void test_stop_string_and_context_full(void **state) {
    fixture *f = *state;
    sm_gen_params gp = tu_greedy_params(200);
    sm_result ref;
    assert_int_equal(sm_session_clear(f->session), SM_OK);
    assert_int_equal(sm_session_generate(f->session, PROMPT, &gp, &ref), SM_OK);
    /* pick a word from the middle of the greedy text as the stop string */
    const char *mid = ref.text + ref.text_len / 2;
    const char *sp = strchr(mid, ' ');
    assert_non_null(sp);
    char stop[8] = {0};
    memcpy(stop, sp, 4);
    const char *stops[] = {stop};
    gp.stop_strings = stops;
    gp.n_stop_strings = 1;
    sm_result r;
    assert_int_equal(sm_session_clear(f->session), SM_OK);
    assert_int_equal(sm_session_generate(f->session, PROMPT, &gp, &r), SM_OK);
    assert_int_equal(r.stop_reason, SM_STOP_STOP_STRING);
    assert_null(strstr(r.text, stop));
    size_t cut = (size_t)(strstr(ref.text, stop) - ref.text);
    assert_int_equal(r.text_len, cut);
    assert_memory_equal(r.text, ref.text, cut);
    sm_result_free(&r);
    sm_result_free(&ref);

    /* a small context fills up (llama.cpp rounds it up to its minimum) */
    sm_session *small = new_session(f->model, 64);
    gp = tu_greedy_params(-1);
    assert_int_equal(sm_session_generate(small, PROMPT, &gp, &r), SM_OK);
    assert_int_equal(r.stop_reason, SM_STOP_CONTEXT_FULL);
    assert_int_equal(sm_session_n_past(small), sm_session_n_ctx(small));
    sm_result_free(&r);
    sm_session_free(small);
}

static void test_prompt_too_long_and_bad_params(void **state) {
    fixture *f = *state;
    sm_session *small = new_session(f->model, 32);
    char prompt[4096] = {0};
    for (int i = 0; i < 60; i++) strcat(prompt, "Lily went to the park. ");
    sm_gen_params gp = tu_greedy_params(10);
    sm_result r;
    assert_int_equal(sm_session_generate(small, prompt, &gp, &r), SM_ERR_PROMPT_TOO_LONG);
    assert_non_null(strstr(sm_session_last_error(small), "context"));
    assert_int_equal(sm_session_n_past(small), 0); /* nothing was decoded */
    gp.sampling.top_p = 1.5f;
    assert_int_equal(sm_session_generate(small, "Hi", &gp, &r), SM_ERR_INVALID_ARGUMENT);
    assert_non_null(strstr(sm_session_last_error(small), "top_p"));
    sm_session_free(small);
}

static void test_bad_model_files(void **state) {
    (void)state;
    sm_error err = {0};
    assert_null(sm_model_load("/nonexistent/model.gguf", NULL, &err));
    assert_int_equal(err.status, SM_ERR_IO);
    assert_non_null(strstr(err.message, "/nonexistent/model.gguf"));
    char path[] = "/tmp/sm_test_XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    assert_int_equal(write(fd, "not a model at all", 18), 18);
    close(fd);
    assert_null(sm_model_load(path, NULL, &err));
    assert_int_equal(err.status, SM_ERR_MODEL);
    assert_non_null(strstr(err.message, "not a GGUF"));
    /* a truncated copy of a real model */
    FILE *src = fopen(tu_model_path("stories260K.gguf"), "rb");
    FILE *dst = fopen(path, "wb");
    char buf[65536];
    size_t n = fread(buf, 1, sizeof buf, src);
    fwrite(buf, 1, n, dst);
    fclose(src);
    fclose(dst);
    assert_null(sm_model_load(path, NULL, &err));
    assert_int_equal(err.status, SM_ERR_MODEL);
    assert_non_null(strstr(err.message, path));
    unlink(path);
}

/* The prefix primitive: keeps what the context holds, decodes the rest,
 * always decodes the last token, and leaves the state of a fresh decode. */
static void test_set_tokens_reuses_the_common_prefix(void **state) {
    fixture *f = *state;
    sm_session *s = new_session(f->model, 512); /* the others share the fixture's */
    sm_token a[32], b[32];
    int32_t na = tu_tokenize(f->model, "Once upon a time, there was a cat.", true, false, a, 32);
    int32_t nb = tu_tokenize(f->model, "Once upon a time, there was a dog who ran.", true, false, b, 32);
    int32_t common = 0;
    while (a[common] == b[common]) common++;
    int32_t reused = -1;
    assert_int_equal(sm_session_clear(s), SM_OK);
    assert_int_equal(sm_session_set_tokens(s, a, na, &reused), SM_OK);
    assert_int_equal(reused, 0);
    int64_t before = sm_session_n_decoded_total(s);
    assert_int_equal(sm_session_set_tokens(s, b, nb, &reused), SM_OK);
    assert_int_equal(reused, common);
    assert_int_equal(sm_session_n_decoded_total(s) - before, nb - common);
    assert_int_equal(sm_session_n_past(s), nb);
    assert_int_equal(sm_session_kv_pos(s), nb);
    int32_t n_vocab = sm_model_n_vocab(f->model);
    float *kept = malloc(sizeof(float) * (size_t)n_vocab);
    memcpy(kept, sm_session_logits(s), sizeof(float) * (size_t)n_vocab);
    /* the same tokens again: all but the last kept, the last decoded (one
     * token alone rounds a little differently from a batch: ~1e-3) */
    assert_int_equal(sm_session_set_tokens(s, b, nb, &reused), SM_OK);
    assert_int_equal(reused, nb - 1);
    assert_true(tu_max_abs_diff(kept, sm_session_logits(s), n_vocab) < 5e-3f);
    /* against a fresh context given the same tokens */
    sm_session *fresh = new_session(f->model, 512);
    assert_int_equal(sm_session_feed_tokens(fresh, b, nb), SM_OK);
    assert_true(tu_max_abs_diff(kept, sm_session_logits(fresh), n_vocab) < 5e-3f);
    sm_session_free(fresh);
    free(kept);
    assert_int_equal(sm_session_set_tokens(s, b, 0, &reused), SM_ERR_INVALID_ARGUMENT);
    sm_session_free(s);
}

/* A slot file: a session's context saved and restored into another
 * holds the same tokens and goes on exactly as the first (greedy); a file
 * that is not one is refused and leaves the session empty and usable. */
static void test_slot_file_round_trip(void **state) {
    fixture *f = *state;
    char path[] = "/tmp/sm_slot_XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    close(fd);
    sm_session *a = new_session(f->model, 512), *b = new_session(f->model, 512);
    sm_gen_params gp = tu_greedy_params(12);
    sm_result r;
    assert_int_equal(sm_session_generate(a, "Once upon a time", &gp, &r), SM_OK);
    sm_result_free(&r);
    int32_t n_saved = 0, n_restored = 0;
    size_t bytes = 0;
    assert_int_equal(sm_session_save_state(a, path, &n_saved, &bytes), SM_OK);
    assert_true(n_saved > 12 && bytes > 0);
    assert_int_equal(sm_session_load_state(b, path, &n_restored, &bytes), SM_OK);
    assert_int_equal(n_restored, n_saved);
    int32_t na = 0, nb = 0;
    const sm_token *ta = sm_session_tokens(a, &na), *tb = sm_session_tokens(b, &nb);
    assert_int_equal(nb, n_saved);
    assert_memory_equal(ta, tb, sizeof(sm_token) * (size_t)nb);
    sm_result ra, rb;
    assert_int_equal(sm_session_generate(a, NULL, &gp, &ra), SM_OK);
    assert_int_equal(sm_session_generate(b, NULL, &gp, &rb), SM_OK);
    assert_string_equal(ra.text, rb.text);
    sm_result_free(&ra);
    sm_result_free(&rb);
    /* llama-server's layout: magic, version, the list's length in words,
     * then the packed list: LLAMA_TOKEN_NULL, version 1, n, the tokens, no
     * media. A plain list (older llama-servers) restores the same; another
     * version, images, or an id outside the vocabulary are refused by name. */
    FILE *file = fopen(path, "rb");
    static uint32_t words[1 << 16];
    size_t n_words = fread(words, 4, sizeof words / 4, file);
    fclose(file);
    assert_true(n_words > 3 + (size_t)n_saved + 4);
    assert_int_equal(words[2], (uint32_t)n_saved + 4);
    assert_int_equal((int32_t)words[3], -1);
    assert_int_equal(words[4], 1);
    assert_int_equal(words[5], (uint32_t)n_saved);
    assert_int_equal(words[6 + n_saved], 0);
    struct { size_t at; uint32_t value; const char *why; } bad[] = {
        {4, 2, "version"}, {6 + (size_t)n_saved, 1, "images"}, {6, 99999999, "vocabulary"}};
    for (size_t k = 0; k < sizeof bad / sizeof *bad; k++) {
        uint32_t was = words[bad[k].at];
        words[bad[k].at] = bad[k].value;
        file = fopen(path, "wb");
        fwrite(words, 4, n_words, file);
        fclose(file);
        words[bad[k].at] = was;
        assert_int_equal(sm_session_load_state(b, path, &n_restored, &bytes), SM_ERR_IO);
        assert_non_null(strstr(sm_session_last_error(b), bad[k].why));
    }
    /* the plain list: the header's length, the tokens alone, the cells as they were */
    file = fopen(path, "wb");
    uint32_t plain_len = (uint32_t)n_saved;
    fwrite(words, 4, 2, file);
    fwrite(&plain_len, 4, 1, file);
    fwrite(words + 6, 4, (size_t)n_saved, file);
    fwrite(words + 6 + n_saved + 1, 4, n_words - (6 + (size_t)n_saved + 1), file);
    fclose(file);
    assert_int_equal(sm_session_load_state(b, path, &n_restored, &bytes), SM_OK);
    assert_int_equal(n_restored, n_saved);
    assert_int_equal(sm_session_generate(b, NULL, &gp, &rb), SM_OK);
    sm_result_free(&rb);
    FILE *garbage = fopen(path, "wb");
    fputs("not a slot file", garbage);
    fclose(garbage);
    assert_int_equal(sm_session_load_state(b, path, &n_restored, &bytes), SM_ERR_IO);
    assert_int_equal(sm_session_n_past(b), 0);
    assert_int_equal(sm_session_generate(b, "Once", &gp, &rb), SM_OK);
    sm_result_free(&rb);
    unlink(path);
    sm_session_free(a);
    sm_session_free(b);
}

/* A generation that ends at n_predict leaves its last token undecoded until
 * something needs it. Going on from there (generate without a prompt, new
 * tokens through set_tokens, truncation) is what it would have been had the
 * token been decoded at once, and the token is decoded once at most. */
static void test_deferred_last_token(void **state) {
    fixture *f = *state;
    sm_session *s = new_session(f->model, 512);
    sm_gen_params gp = tu_greedy_params(40);
    sm_result whole, first, second;
    assert_int_equal(sm_session_generate(s, PROMPT, &gp, &whole), SM_OK);
    assert_int_equal(sm_session_clear(s), SM_OK);
    gp.n_predict = 20;
    assert_int_equal(sm_session_generate(s, PROMPT, &gp, &first), SM_OK);
    int64_t decoded = sm_session_n_decoded_total(s);
    assert_int_equal(sm_session_generate(s, NULL, &gp, &second), SM_OK); /* goes on */
    assert_int_equal(sm_session_n_decoded_total(s) - decoded, 20); /* the deferred one, and 19 of its own */
    assert_memory_equal(whole.tokens, first.tokens, 20 * sizeof(sm_token));
    assert_memory_equal(whole.tokens + 20, second.tokens, 20 * sizeof(sm_token));

    /* set_tokens with the deferred token among the new ones: decoded with them */
    int32_t n_ctx;
    const sm_token *ctx = sm_session_tokens(s, &n_ctx);
    sm_token *again = malloc(sizeof(sm_token) * (size_t)(n_ctx + 1));
    memcpy(again, ctx, sizeof(sm_token) * (size_t)n_ctx);
    again[n_ctx] = again[n_ctx - 1];
    int32_t reused = -1;
    decoded = sm_session_n_decoded_total(s);
    assert_int_equal(sm_session_set_tokens(s, again, n_ctx + 1, &reused), SM_OK);
    assert_int_equal(reused, n_ctx - 1);
    assert_int_equal(sm_session_n_decoded_total(s) - decoded, 2);
    assert_int_equal(sm_session_kv_pos(s), n_ctx + 1);

    /* truncation below a deferred token never decodes it */
    sm_result r;
    assert_int_equal(sm_session_generate(s, NULL, &gp, &r), SM_OK);
    sm_result_free(&r);
    decoded = sm_session_n_decoded_total(s);
    assert_int_equal(sm_session_truncate(s, sm_session_n_past(s) - 3), SM_OK);
    assert_int_equal(sm_session_n_decoded_total(s), decoded); /* the ring had the distribution */
    assert_int_equal(sm_session_kv_pos(s), sm_session_n_past(s));
    free(again);
    sm_result_free(&whole);
    sm_result_free(&first);
    sm_result_free(&second);
    sm_session_free(s);
}

/* The original style's confidence is the chosen token's probability
 * renormalised over the 40 most probable (penalised, T = 1) tokens: with
 * no penalty, p_chosen over the sum of the top 40 raw probabilities. */
typedef struct conf_check {
    int32_t n, n_above;
    double worst;
} conf_check;

static bool check_original_confidence(const sm_event *e, void *user_data) {
    conf_check *c = user_data;
    if (e->type != SM_EVENT_TOKEN) return true;
    double top = 0;
    for (int32_t k = 0; k < e->n_top; k++) top += e->top[k].prob;
    double expected = e->signals.p_chosen / top;
    double d = fabs(expected - e->confidence);
    if (d > c->worst) c->worst = d;
    c->n++;
    c->n_above += e->confidence > e->signals.p_chosen + 1e-6f;
    return true;
}

static void test_original_style_confidence(void **state) {
    fixture *f = *state;
    sm_gen_params gp = tu_greedy_params(30);
    assert_int_equal(sm_policy_preset(&gp.policy, "original", NULL), SM_OK);
    gp.policy.enabled = true;
    gp.policy.hold_temperature = true; /* stay greedy: no penalty, so the sampler's logits are the raw ones */
    gp.policy.hold_repeat_penalty = true;
    gp.sampling.top_k = 40;
    gp.n_probs = 40;
    conf_check c = {0};
    gp.on_event = check_original_confidence;
    gp.user_data = &c;
    sm_result r;
    assert_int_equal(sm_session_clear(f->session), SM_OK);
    assert_int_equal(sm_session_generate(f->session, PROMPT, &gp, &r), SM_OK);
    assert_int_equal(c.n, r.n_tokens);
    assert_true(c.worst < 1e-5);
    assert_true(c.n_above > 0); /* renormalised over 40 of 512 tokens: higher than over all */
    sm_result_free(&r);
}

static void slow_progress(int32_t total, int32_t cached, int32_t processed, void *user_data) {
    (void)total, (void)cached, (void)processed, (void)user_data;
    struct timespec pause = {0, 3 * 1000 * 1000}; /* each chunk takes 3 ms at least */
    nanosleep(&pause, NULL);
}

/* A prompt's time limit stops sm_session_set_tokens after the chunk that
 * passes it, the decoded tokens kept: the same call then goes on from them
 * and the generation is the one a session that never stopped makes. */
static void test_prompt_time_limit(void **state) {
    (void)state;
    sm_model *m = tu_load_model("stories260K.gguf");
    sm_session_params sp = tu_session_params(256);
    sp.n_batch = 8;
    sm_session *s = tu_open_session(m, &sp), *clean = tu_open_session(m, &sp);
    sm_token prompt[40];
    int32_t n = tu_tokenize(m, "Once upon a time, there was a little dog named Max. Max liked to run in the park "
                               "with his friend Lily every day.", true, false, prompt, 40);
    assert_true(n > 16);
    sm_session_set_prompt_progress(s, slow_progress, NULL);
    sm_session_set_prompt_time_limit(s, 1);
    int32_t reused = -1;
    assert_int_equal(sm_session_set_tokens(s, prompt, n, &reused), SM_ERR_CANCELLED);
    assert_non_null(strstr(sm_session_last_error(s), "time limit"));
    assert_int_equal(sm_session_n_past(s), 8); /* the first chunk, kept */
    sm_session_set_prompt_time_limit(s, 0);
    sm_session_set_prompt_progress(s, NULL, NULL);
    assert_int_equal(sm_session_set_tokens(s, prompt, n, &reused), SM_OK);
    assert_int_equal(reused, 8);
    assert_int_equal(sm_session_set_tokens(clean, prompt, n, NULL), SM_OK);
    sm_gen_params gp = tu_greedy_params(12);
    sm_result a, b;
    assert_int_equal(sm_session_generate(s, NULL, &gp, &a), SM_OK);
    assert_int_equal(sm_session_generate(clean, NULL, &gp, &b), SM_OK);
    assert_int_equal(a.n_tokens, b.n_tokens);
    assert_memory_equal(a.tokens, b.tokens, sizeof *a.tokens * (size_t)a.n_tokens);
    sm_result_free(&a);
    sm_result_free(&b);
    sm_session_free(s);
    sm_session_free(clean);
    sm_model_free(m);
}

/* The tokens prompts are built from: stories260K's BOS and no FIM tokens;
 * its copy with FIM tokens named (bench/add_fim_tokens, beside SM_BIN). */
static void test_special_tokens(void **state) {
    (void)state;
    sm_model *m = tu_load_model("stories260K.gguf");
    sm_special_tokens sp = sm_model_special_tokens(m);
    assert_int_equal(sp.bos, 1);
    assert_true(sp.fim_prefix == -1 && sp.fim_suffix == -1 && sp.fim_middle == -1 && sp.fim_repo == -1 &&
                sp.fim_sep == -1);
    sm_model_free(m);
    const char *bin = getenv("SM_BIN");
    if (!bin) skip();
    char command[8192], copy[] = "/tmp/test_session_fim_XXXXXX";
    int fd = mkstemp(copy);
    assert_true(fd >= 0);
    close(fd);
    snprintf(command, sizeof command, "\"$(dirname '%s')/add_fim_tokens\" '%s' '%s' 7 8 9", bin,
             tu_model_path("stories260K.gguf"), copy);
    assert_int_equal(system(command), 0);
    sm_error err = {0};
    sm_model_params mp = sm_model_default_params();
    m = sm_model_load(copy, &mp, &err);
    unlink(copy);
    assert_non_null(m);
    sp = sm_model_special_tokens(m);
    assert_true(sp.bos == 1 && sp.fim_prefix == 7 && sp.fim_suffix == 8 && sp.fim_middle == 9 && sp.fim_repo == -1);
    sm_model_free(m);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_special_tokens),
        cmocka_unit_test(test_prompt_time_limit),
        cmocka_unit_test(test_deferred_last_token),
        cmocka_unit_test(test_set_tokens_reuses_the_common_prefix),
        cmocka_unit_test(test_slot_file_round_trip),
        cmocka_unit_test(test_greedy_generation),
        cmocka_unit_test(test_sampling_is_seeded_and_temperature_matters),
        cmocka_unit_test(test_rewind_logits_equal_uninterrupted_run),
        cmocka_unit_test(test_retraction_state_equals_clean_run),
        cmocka_unit_test(test_retraction_flag),
        cmocka_unit_test(test_stop_string_and_context_full),
        cmocka_unit_test(test_prompt_too_long_and_bad_params),
        cmocka_unit_test(test_bad_model_files),
        cmocka_unit_test(test_original_style_confidence),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
