/*
 * Sessions on a batch: several generations in one context, decoded
 * together, each equal to the same generation run alone, a rewind in one
 * never touching another's cells.
 */
#include "testutil.h"

#include "internal.h" /* the cells of each sequence */

#include <dirent.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

enum { N_SEQ = 8, N_PREDICT = 48 };

static const char *const PROMPTS[N_SEQ] = {
    "Once upon a time", "The little dog", "One day, Lily went to the park", "Tom and Sue",
    "The sun was hot", "A big red ball", "Mom said", "Once there was a cat",
};

typedef struct job {
    sm_session *session;
    sm_gen_params gp;
    sm_operator *op;
    const char *prompt;
    sm_result result;
    sm_status status;
    int32_t kv_violations; /* events where the session's cells disagreed with its tokens */
    float *logits;         /* the distribution it ended on */
    int32_t n_vocab;
} job;

/* On every event the sequence's own cells end where its tokens do: another
 * sequence's rewinds and decodes never moved them. */
static bool check_cells(const sm_event *e, void *user_data) {
    job *j = user_data;
    if (e->type == SM_EVENT_TOKEN && sm_session_kv_pos(j->session) != sm_session_n_past(j->session)) j->kv_violations++;
    return true;
}

static sm_gen_params params_for(int i, sm_operator **op) {
    sm_gen_params gp = sm_gen_default_params();
    gp.n_predict = i % 3 == 2 ? N_PREDICT / 3 : N_PREDICT; /* some finish early, the rest go on */
    gp.stop_at_bos = false;
    gp.sampling.temperature = i % 2 ? 0.0f : 0.8f; /* greedy and sampled */
    gp.sampling.seed = 100 + (uint64_t)i;
    gp.sampling.repeat_penalty = 1.2f;
    gp.sampling.frequency_penalty = 0.2f;
    gp.policy.style = SM_POLICY_FIXED; /* retraction at critical confidence */
    gp.policy.aggressive = true;
    gp.policy.retract = 1;
    gp.policy.critical_threshold = 0.45f;
    gp.policy.confidence_threshold = 0.6f;
    *op = tu_backtrack_once(3 + i, 3); /* every sequence rewinds at its own moment */
    /* with an operator a session's ring holds max_rewind distributions;
     * without, only what the policy's retractions can reach (grow_ring) */
    gp.backtrack.operators = op;
    gp.backtrack.n_operators = i % 4 == 3 ? 0 : 1;
    return gp;
}

/* What the run alone sampled each kept token with, and how far apart its
 * two most probable tokens were. */
typedef struct token_trace {
    float temperature[N_PREDICT];
    float repeat_penalty[N_PREDICT];
} token_trace;

static bool trace_tokens(const sm_event *e, void *user_data) {
    token_trace *tr = user_data;
    if (e->type != SM_EVENT_TOKEN || e->token_index >= N_PREDICT) return true;
    tr->temperature[e->token_index] = e->temperature_before;
    tr->repeat_penalty[e->token_index] = e->repeat_penalty_before;
    return true;
}

/* What greedy sampling compared at generated position `at` of sequence i
 * run alone: the logit of token a minus that of token b after the repeat,
 * frequency and presence penalties (the sampler's rules). */
static float penalized_gap(sm_model *m, int i, int32_t at, float repeat_penalty, sm_token a, sm_token b) {
    sm_session *s = tu_open_session(m, NULL);
    sm_operator *op;
    sm_gen_params gp = params_for(i, &op);
    gp.n_predict = at;
    sm_result r;
    assert_int_equal(sm_session_generate(s, PROMPTS[i], &gp, &r), SM_OK);
    int32_t n_ctx;
    const sm_token *ctx = sm_session_tokens(s, &n_ctx);
    const float *logits = sm_session_logits(s);
    int32_t from = n_ctx > gp.sampling.repeat_last_n ? n_ctx - gp.sampling.repeat_last_n : 0;
    float pen[2] = {logits[a], logits[b]};
    sm_token tok[2] = {a, b};
    for (int k = 0; k < 2; k++) {
        int32_t count = 0;
        for (int32_t p = from; p < n_ctx; p++) count += ctx[p] == tok[k];
        if (count == 0) continue;
        pen[k] = pen[k] > 0 ? pen[k] / repeat_penalty : pen[k] * repeat_penalty;
        pen[k] -= (float)count * gp.sampling.frequency_penalty + gp.sampling.presence_penalty;
    }
    sm_result_free(&r);
    sm_operator_free(op);
    sm_session_free(s);
    return pen[0] - pen[1];
}

static void *run(void *arg) {
    job *j = arg;
    j->gp.on_event = check_cells;
    j->gp.user_data = j;
    j->status = sm_session_generate(j->session, j->prompt, &j->gp, &j->result);
    j->logits = malloc(sizeof(float) * (size_t)j->n_vocab);
    if (sm_session_logits(j->session)) memcpy(j->logits, sm_session_logits(j->session), sizeof(float) * (size_t)j->n_vocab);
    return NULL;
}

static void test_batched_sequences_equal_runs_alone(void **state) {
    (void)state;
    sm_model *m = tu_load_model("stories260K.gguf");
    int32_t n_vocab = sm_model_n_vocab(m);
    sm_batch_params bp = sm_batch_default_params();
    bp.n_seq = N_SEQ;
    bp.n_ctx_seq = 256;
    bp.n_threads = 1;
    sm_error err = {0};
    sm_batch *batch = sm_batch_new(&m, 1, &bp, &err);
    assert_non_null(batch);

    job jobs[N_SEQ];
    pthread_t threads[N_SEQ];
    for (int i = 0; i < N_SEQ; i++) {
        sm_session_params sp = tu_session_params(256);
        sp.batch = batch;
        jobs[i] = (job){.prompt = PROMPTS[i], .n_vocab = n_vocab};
        jobs[i].session = sm_session_new(m, &sp, &err);
        if (!jobs[i].session) fail_msg("session %d: %s", i, err.message);
        jobs[i].gp = params_for(i, &jobs[i].op);
    }
    /* a fifth session finds every sequence taken */
    sm_session_params sp = tu_session_params(256);
    sp.batch = batch;
    assert_null(sm_session_new(m, &sp, &err));
    assert_int_equal(err.status, SM_ERR_STATE);

    for (int i = 0; i < N_SEQ; i++) pthread_create(&threads[i], NULL, run, &jobs[i]);
    for (int i = 0; i < N_SEQ; i++) pthread_join(threads[i], NULL);
    sm_batch_stats stats = sm_batch_get_stats(batch);
    fprintf(stderr, "batch: %lld requests in %lld decodes\n", (long long)stats.n_requests, (long long)stats.n_decodes);
    assert_true(stats.n_decodes < stats.n_requests); /* decodes were shared */

    double worst = 0;
    for (int i = 0; i < N_SEQ; i++) {
        job *j = &jobs[i];
        assert_int_equal(j->status, SM_OK);
        assert_int_equal(j->kv_violations, 0);
        assert_true(j->result.n_backtracks + j->result.n_retractions > 0);
        /* the same generation on a session of its own */
        sm_session *alone = tu_open_session(m, NULL);
        sm_operator *op;
        sm_gen_params gp = params_for(i, &op);
        sm_result r;
        token_trace tr;
        gp.n_probs = 2;
        gp.on_event = trace_tokens;
        gp.user_data = &tr;
        assert_int_equal(sm_session_generate(alone, PROMPTS[i], &gp, &r), SM_OK);
        int32_t same = 0;
        while (same < r.n_tokens && same < j->result.n_tokens && r.tokens[same] == j->result.tokens[same]) same++;
        bool greedy = gp.sampling.temperature == 0.0f, all_same = same == r.n_tokens && r.n_tokens == j->result.n_tokens;
        fprintf(stderr, "batch: sequence %d (%s): %d of %d tokens as alone\n", i, greedy ? "greedy" : "sampled", same,
                r.n_tokens);
        /* A greedy choice may only differ where the policy had raised the
         * temperature or the two best logits are within the rounding
         * difference of batched decodes (below); a sampled token whose draw
         * lands within a rounding difference of its neighbour may differ.
         * Everything after a difference differs too. */
        if (greedy && !all_same && same < r.n_tokens) {
            float gap = penalized_gap(m, i, same, tr.repeat_penalty[same], r.tokens[same], j->result.tokens[same]);
            fprintf(stderr, "batch: sequence %d differs at %d: temperature %.3f, the two tokens %.2e apart\n", i, same,
                    tr.temperature[same], gap);
            if (tr.temperature[same] == 0.0f && fabsf(gap) > 2e-2f)
                fail_msg("greedy sequence %d differs from its run alone at token %d", i, same);
        }
        if (greedy && all_same) {
            assert_int_equal(r.n_retractions, j->result.n_retractions);
            assert_int_equal(r.n_backtracks, j->result.n_backtracks);
        }
        if (all_same) { /* the same context: compare its distribution */
            double d = tu_max_abs_diff(j->logits, sm_session_logits(alone), n_vocab);
            if (d > worst) worst = d;
        }
        sm_result_free(&r);
        sm_operator_free(op);
        sm_session_free(alone);
    }
    /* batched and one-at-a-time decodes round differently in llama.cpp
     * (measured: 6e-3 on logits of magnitude ~10), never enough here to
     * change a token, greedy or sampled */
    fprintf(stderr, "batch: largest logit difference to the runs alone %.2e\n", worst);
    assert_true(worst < 2e-2);
    for (int i = 0; i < N_SEQ; i++) {
        sm_result_free(&jobs[i].result);
        sm_operator_free(jobs[i].op);
        free(jobs[i].logits);
        sm_session_free(jobs[i].session);
    }
    /* a freed session's sequence can be taken again, empty */
    sm_session *again = sm_session_new(m, &sp, &err);
    assert_non_null(again);
    assert_int_equal(sm_session_kv_pos(again), 0);
    sm_session_free(again);
    sm_batch_free(batch);
    sm_model_free(m);
}

/* A prompt longer than a decode takes goes in chunks; only the last
 * chunk's distribution is kept, and what the session keeps for rewinds is
 * what a session of its own keeps (after truncating, too). */
static void test_chunked_prompts_and_truncation(void **state) {
    (void)state;
    sm_model *m = tu_load_model("stories260K.gguf");
    int32_t n_vocab = sm_model_n_vocab(m);
    sm_batch_params bp = sm_batch_default_params();
    bp.n_seq = 2;
    bp.n_ctx_seq = 256;
    bp.n_batch = 8;
    bp.n_threads = 1;
    sm_error err = {0};
    sm_batch *batch = sm_batch_new(&m, 1, &bp, &err);
    assert_non_null(batch);
    sm_session_params sp = tu_session_params(256);
    sp.batch = batch;
    sm_session *on = sm_session_new(m, &sp, &err);
    assert_non_null(on);
    sm_session_params alone_p = tu_session_params(256);
    alone_p.n_batch = 8;
    sm_session *alone = tu_open_session(m, &alone_p);
    sm_token toks[64];
    int32_t n = tu_tokenize(m, "Once upon a time, there was a little girl named Lily. She loved to play outside.", true,
                            false, toks, 64);
    assert_true(n > 2 * 8);
    sm_gen_params gp = tu_greedy_params(12);
    sm_result a, b;
    assert_int_equal(sm_session_set_tokens(on, toks, n, NULL), SM_OK);
    assert_int_equal(sm_session_set_tokens(alone, toks, n, NULL), SM_OK);
    assert_true(tu_max_abs_diff(sm_session_logits(on), sm_session_logits(alone), n_vocab) < 2e-2f);
    assert_int_equal(sm_session_generate(on, NULL, &gp, &a), SM_OK);
    assert_int_equal(sm_session_generate(alone, NULL, &gp, &b), SM_OK);
    assert_int_equal(a.n_tokens, b.n_tokens);
    assert_memory_equal(a.tokens, b.tokens, sizeof *a.tokens * (size_t)a.n_tokens);
    /* back into the prompt: both re-derive the distribution there alike */
    for (int32_t keep = n + 6; keep >= n - 3; keep -= 3) {
        assert_int_equal(sm_session_truncate(on, keep), SM_OK);
        assert_int_equal(sm_session_truncate(alone, keep), SM_OK);
        assert_true(tu_max_abs_diff(sm_session_logits(on), sm_session_logits(alone), n_vocab) < 2e-2f);
        assert_int_equal(sm_session_kv_pos(on), keep);
    }
    sm_result_free(&a);
    sm_result_free(&b);
    sm_session_free(alone);
    sm_session_free(on);
    sm_batch_free(batch);
    sm_model_free(m);
}

typedef struct progress_log {
    int32_t n, total[64], cached[64], processed[64];
} progress_log;

static void log_progress(int32_t total, int32_t cached, int32_t processed, void *user_data) {
    progress_log *p = user_data;
    if (p->n < 64) {
        p->total[p->n] = total;
        p->cached[p->n] = cached;
        p->processed[p->n] = processed;
    }
    p->n++;
}

/* A prompt's decode reports before its first chunk and after each, on a
 * batch and alone alike; a prompt that the cache mostly holds reports
 * what it held. */
static void test_prompt_progress(void **state) {
    (void)state;
    sm_model *m = tu_load_model("stories260K.gguf");
    sm_batch *batch = tu_open_batch(m, 1, 256, 8, false);
    sm_session_params sp = tu_session_params(256);
    sp.n_batch = 8;
    sm_session *alone = tu_open_session(m, &sp);
    sm_session *on = tu_batch_session(m, batch, 256);
    sm_token toks[64];
    int32_t n = tu_tokenize(m, "Once upon a time, there was a little girl named Lily. She loved to play outside.", true,
                            false, toks, 64);
    sm_session *both[2] = {alone, on};
    for (int k = 0; k < 2; k++) {
        progress_log p = {0};
        sm_session_set_prompt_progress(both[k], log_progress, &p);
        assert_int_equal(sm_session_set_tokens(both[k], toks, n, NULL), SM_OK);
        assert_int_equal(p.n, 1 + (n + 7) / 8);
        assert_int_equal(p.processed[0], 0);
        for (int32_t i = 0; i < p.n; i++) {
            assert_int_equal(p.total[i], n);
            assert_int_equal(p.cached[i], 0);
            if (i > 0) assert_true(p.processed[i] > p.processed[i - 1]);
        }
        assert_int_equal(p.processed[p.n - 1], n);
        /* the same prompt again: all but its last token come from the cache */
        progress_log again = {0};
        sm_session_set_prompt_progress(both[k], log_progress, &again);
        assert_int_equal(sm_session_set_tokens(both[k], toks, n, NULL), SM_OK);
        assert_int_equal(again.n, 2);
        assert_int_equal(again.cached[0], n - 1);
        assert_int_equal(again.processed[0], n - 1);
        assert_int_equal(again.processed[1], n);
        /* off: nothing more is reported */
        sm_session_set_prompt_progress(both[k], NULL, NULL);
        assert_int_equal(sm_session_clear(both[k]), SM_OK);
        assert_int_equal(sm_session_set_tokens(both[k], toks, n, NULL), SM_OK);
        assert_int_equal(again.n, 2);
    }
    sm_session_free(alone);
    sm_session_free(on);
    sm_batch_free(batch);
    sm_model_free(m);
}

/* Prompts of 4 sequences in decodes of 4 tokens: a step takes several
 * decodes, and the sequences decoded first hand in their next chunk while
 * the step's last decode is still to come (the pending list must hold
 * both: an overflow here once). A decode smaller than the sequences is
 * refused (llama.cpp asserts on it). */
static void test_steps_larger_than_a_decode(void **state) {
    (void)state;
    sm_model *m = tu_load_model("stories260K.gguf");
    sm_batch_params bp = sm_batch_default_params();
    bp.n_seq = 4;
    bp.n_batch = 3;
    sm_error err = {0};
    assert_null(sm_batch_new(&m, 1, &bp, &err));
    assert_non_null(strstr(err.message, "smaller than the 4 sequences"));
    sm_batch *batch = tu_open_batch(m, 4, 128, 4, false);
    job jobs[4];
    pthread_t threads[4];
    for (int i = 0; i < 4; i++) {
        jobs[i] = (job){.prompt = PROMPTS[i + 2], .n_vocab = sm_model_n_vocab(m)}; /* 6 to 9 tokens */
        jobs[i].session = tu_batch_session(m, batch, 128); /* prompts in chunks of the batch's 4 */
        jobs[i].gp = tu_greedy_params(24);
        jobs[i].gp.stop_at_bos = false;
    }
    for (int i = 0; i < 4; i++) pthread_create(&threads[i], NULL, run, &jobs[i]);
    for (int i = 0; i < 4; i++) pthread_join(threads[i], NULL);
    for (int i = 0; i < 4; i++) {
        assert_int_equal(jobs[i].status, SM_OK);
        assert_int_equal(jobs[i].result.n_tokens, 24);
        assert_int_equal(jobs[i].kv_violations, 0);
        sm_session *alone = tu_open_session(m, NULL);
        sm_result r;
        assert_int_equal(sm_session_generate(alone, PROMPTS[i + 2], &jobs[i].gp, &r), SM_OK);
        assert_memory_equal(r.tokens, jobs[i].result.tokens, sizeof *r.tokens * 24);
        sm_result_free(&r);
        sm_session_free(alone);
        sm_result_free(&jobs[i].result);
        free(jobs[i].logits);
        sm_session_free(jobs[i].session);
    }
    sm_batch_free(batch);
    sm_model_free(m);
}

/* kv_unified: one pool of n_ctx_seq cells; a sequence alone may fill it,
 * and a decode that finds it full fails, saying so. */
static void test_unified_pool(void **state) {
    (void)state;
    sm_model *m = tu_load_model("stories260K.gguf");
    sm_batch *batch = tu_open_batch(m, 2, 256, 512, true); /* llama.cpp pads a cache to 256 cells */
    sm_session *a = tu_batch_session(m, batch, 256), *b = tu_batch_session(m, batch, 256);
    sm_gen_params gp = tu_greedy_params(200);
    gp.stop_at_bos = false;
    sm_result r;
    assert_int_equal(sm_session_generate(a, "Once upon a time", &gp, &r), SM_OK); /* 205 of the pool's 256 */
    assert_int_equal(r.n_tokens, 200);
    assert_int_equal(sm_session_kv_pos(a), sm_session_n_past(a));
    sm_result_free(&r);
    /* a's cells stay (its cache): b finds 51 free and fails there */
    sm_status st = sm_session_generate(b, "Once upon a time", &gp, &r);
    assert_int_equal(st, SM_ERR_DECODE);
    assert_non_null(strstr(sm_session_last_error(b), "the context size has been exceeded"));
    sm_result_free(&r); /* what it made before the pool ran out */
    /* freed cells are free for the other */
    assert_int_equal(sm_session_clear(a), SM_OK);
    assert_int_equal(sm_session_clear(b), SM_OK);
    assert_int_equal(sm_session_generate(b, "Once upon a time", &gp, &r), SM_OK);
    assert_int_equal(r.n_tokens, 200);
    sm_result_free(&r);
    sm_session_free(a);
    sm_session_free(b);
    sm_batch_free(batch);
    /* A prompt that runs out of room partway (in chunks of 16) leaves
     * nothing of itself: neither tokens nor cells of its earlier chunks. */
    sm_batch *small = tu_open_batch(m, 2, 256, 16, true);
    a = tu_batch_session(m, small, 256);
    b = tu_batch_session(m, small, 256);
    assert_int_equal(sm_session_generate(a, "Once upon a time", &gp, &r), SM_OK); /* 205 cells */
    sm_result_free(&r);
    char prompt[1024] = "";
    for (int k = 0; k < 20; k++) strcat(prompt, "Once upon a time, ");
    assert_int_equal(sm_session_feed_text(b, prompt, true), SM_ERR_DECODE);
    assert_int_equal(sm_session_n_past(b), 0);
    assert_int_equal(sm_session_kv_pos(b), 0);
    assert_int_equal(sm_session_kv_pos(a), sm_session_n_past(a));
    sm_session_free(a);
    sm_session_free(b);
    sm_batch_free(small);
    /* A pool may hold every sequence at the model's training length (as
     * llama-server's -kvu -c does), a stream no more than that length. */
    const uint32_t n_train = (uint32_t)sm_model_n_ctx_train(m);
    batch = tu_open_batch(m, 2, 3 * n_train, 512, true);
    assert_int_equal(sm_batch_n_ctx_seq(batch), 2 * n_train);
    sm_batch_free(batch);
    batch = tu_open_batch(m, 2, 3 * n_train, 512, false);
    assert_int_equal(sm_batch_n_ctx_seq(batch), n_train);
    sm_batch_free(batch);
    sm_model_free(m);
}

/* A tree sharing the batch's decoder thread: its decodes are the batch's
 * to run (counted apart), taking turns with sessions generating at the same
 * time; the tree's suggestions equal a tree on its own, and the sessions'
 * tokens equal their runs alone. */
static void test_tree_shares_the_decoder(void **state) {
    (void)state;
    sm_model *m = tu_load_model("stories260K.gguf");
    sm_batch *batch = tu_open_batch(m, 3, 256, 512, false);
    sm_error err = {0};
    sm_tree *own = sm_tree_new(&m, 1, 256, 1, 25, &err), *shared = sm_tree_new(&m, 1, 256, 1, 25, &err);
    assert_non_null(own);
    assert_non_null(shared);
    sm_tree_share_decoder(shared, batch);
    const char *prefix = "Once upon a time, there was a little";
    const sm_tree_params tp = sm_tree_default_params();
    sm_tree_result alone, beside;
    assert_int_equal(sm_tree_expand(own, prefix, &tp, &alone), SM_OK);
    job jobs[3];
    pthread_t threads[3];
    for (int i = 0; i < 3; i++) {
        jobs[i] = (job){.prompt = PROMPTS[i], .n_vocab = sm_model_n_vocab(m)};
        jobs[i].session = tu_batch_session(m, batch, 256);
        jobs[i].gp = tu_greedy_params(N_PREDICT);
        jobs[i].gp.stop_at_bos = false;
        pthread_create(&threads[i], NULL, run, &jobs[i]);
    }
    assert_int_equal(sm_tree_expand(shared, prefix, &tp, &beside), SM_OK);
    for (int i = 0; i < 3; i++) pthread_join(threads[i], NULL);
    sm_batch_stats st = sm_batch_get_stats(batch);
    assert_true(st.n_other_decodes >= 2); /* the prefix, then a decode a level */
    assert_int_equal(beside.n_suggestions, alone.n_suggestions);
    assert_int_equal(beside.n_nodes, alone.n_nodes);
    for (int32_t i = 0; i < alone.n_suggestions; i++) {
        assert_string_equal(beside.suggestions[i].text, alone.suggestions[i].text);
        assert_float_equal(beside.suggestions[i].score, alone.suggestions[i].score, 0.0);
    }
    for (int i = 0; i < 3; i++) {
        assert_int_equal(jobs[i].status, SM_OK);
        sm_session *s = tu_open_session(m, NULL);
        sm_result r;
        assert_int_equal(sm_session_generate(s, PROMPTS[i], &jobs[i].gp, &r), SM_OK);
        assert_int_equal(r.n_tokens, jobs[i].result.n_tokens);
        assert_memory_equal(r.tokens, jobs[i].result.tokens, sizeof *r.tokens * (size_t)r.n_tokens);
        sm_result_free(&r);
        sm_session_free(s);
        sm_result_free(&jobs[i].result);
        free(jobs[i].logits);
        sm_session_free(jobs[i].session);
    }
    /* back on the caller's thread: the batch decodes nothing more of it */
    sm_tree_share_decoder(shared, NULL);
    sm_tree_result again;
    assert_int_equal(sm_tree_expand(shared, "The little dog", &tp, &again), SM_OK);
    assert_int_equal(sm_batch_get_stats(batch).n_other_decodes, st.n_other_decodes);
    sm_tree_result_free(&again);
    sm_tree_result_free(&alone);
    sm_tree_result_free(&beside);
    sm_tree_free(own);
    sm_tree_free(shared);
    sm_batch_free(batch);
    sm_model_free(m);
}

/* Every lookahead's branches and scores, in order. */
typedef struct lookaheads {
    sm_lookahead_info info[64];
    int32_t n;
} lookaheads;

static bool keep_lookaheads(const sm_event *e, void *user_data) {
    lookaheads *l = user_data;
    if (e->type == SM_EVENT_MODIFICATION && e->mod == SM_MOD_LOOKAHEAD && l->n < 64) l->info[l->n++] = *e->lookahead;
    return true;
}

/* The same lookaheads, branches and choices on a batch as alone, each
 * branch scored from its own rows. The scores round as the batched logits
 * do, and which rows share a decode with another session's depends on
 * timing: measured up to 1.1e-3 apart (a loaded CI machine), logits up to
 * 1.2e-2 (test_batched_sequences_equal_runs_alone). */
static void same_lookaheads(const lookaheads *alone, const lookaheads *beside, const sm_result *alone_result,
                            const sm_result *beside_result, const char *what) {
    assert_int_equal(alone->n, beside->n);
    double worst = 0;
    for (int32_t i = 0; i < alone->n; i++) {
        const sm_lookahead_info *x = &alone->info[i], *y = &beside->info[i];
        assert_int_equal(x->n_branches, y->n_branches);
        assert_int_equal(x->chosen, y->chosen);
        assert_memory_equal(x->first, y->first, sizeof(sm_token) * (size_t)x->n_branches);
        for (int32_t b = 0; b < x->n_branches; b++) {
            double d = fabs((double)x->score[b] - (double)y->score[b]);
            if (!(d <= worst)) worst = d;
        }
    }
    fprintf(stderr, "%s on a batch: branch scores within %.2e of alone\n", what, worst);
    assert_true(worst < 1e-2);
    assert_int_equal(alone_result->n_tokens, beside_result->n_tokens);
    assert_memory_equal(alone_result->tokens, beside_result->tokens,
                        sizeof *alone_result->tokens * (size_t)alone_result->n_tokens);
}

/* Lookahead on a batch with one pool of cells (kv_unified): the branches
 * are sequences the session takes from the batch, decoded with the other
 * sessions' tokens; the text, the lookaheads and the cells equal the same
 * session on a context of its own, and the branches leave no cell. */
static void test_lookahead_on_a_unified_batch(void **state) {
    (void)state;
    sm_model *m = tu_load_model("stories260K.gguf");
    sm_batch *batch = tu_open_batch(m, 1 + (1 + 3) + 1, 512, 512, true);
    job other = {.prompt = PROMPTS[1], .n_vocab = sm_model_n_vocab(m)};
    other.session = tu_batch_session(m, batch, 512); /* sequence 0: the branches are not 1, 2, 3 */
    other.gp = tu_greedy_params(N_PREDICT);
    other.gp.stop_at_bos = false;
    sm_session_params sp = tu_session_params(512);
    sp.max_branches = 3;
    sp.batch = batch;
    sm_error err = {0};
    sm_session *la = sm_session_new(m, &sp, &err);
    if (!la) fail_msg("%s", err.message);
    /* one sequence is left: no room for another session with branches */
    sm_session_params again = sp;
    assert_null(sm_session_new(m, &again, &err));
    assert_non_null(strstr(err.message, "lookahead branches"));
    sm_gen_params gp = tu_greedy_params(24);
    gp.stop_at_bos = false;
    gp.interventions.lookahead.k = 3;
    gp.interventions.lookahead.depth = 4;
    gp.interventions.lookahead.entropy = 0.0f; /* branch everywhere */
    lookaheads seen_beside = {0}, seen_alone = {0};
    gp.on_event = keep_lookaheads;
    gp.user_data = &seen_beside;
    pthread_t thread;
    pthread_create(&thread, NULL, run, &other);
    sm_result beside;
    assert_int_equal(sm_session_generate(la, PROMPTS[0], &gp, &beside), SM_OK);
    pthread_join(thread, NULL);
    assert_int_equal(other.status, SM_OK);
    assert_true(beside.n_lookaheads >= 5);
    assert_int_equal(sm_session_kv_pos(la), sm_session_n_past(la));
    llama_memory_t mem = llama_get_memory(sm_session_llama_context(la, 0));
    for (llama_seq_id seq = 0; seq < 6; seq++) { /* no branch left a cell behind */
        llama_pos max = llama_memory_seq_pos_max(mem, seq);
        assert_true(max == -1 || max == sm_session_kv_pos(la) - 1 || max == sm_session_kv_pos(other.session) - 1);
    }
    sm_session_params own = tu_session_params(512);
    own.max_branches = 3;
    sm_session *alone = sm_session_new(m, &own, &err);
    sm_result r;
    gp.user_data = &seen_alone;
    assert_int_equal(sm_session_generate(alone, PROMPTS[0], &gp, &r), SM_OK);
    assert_int_equal(r.n_lookaheads, beside.n_lookaheads);
    same_lookaheads(&seen_alone, &seen_beside, &r, &beside, "lookahead");
    sm_result_free(&r);
    sm_result_free(&beside);
    sm_result_free(&other.result);
    free(other.logits);
    sm_session_free(alone);
    sm_session_free(other.session);
    sm_session_free(la);
    sm_batch_free(batch);
    sm_model_free(m);
}

/* Fusion with alignment on a batch: model 1 has another vocabulary and
 * follows each session's text on a sequence of its own in the batch's
 * second context, catching up in the same steps as model 0 decodes. Each
 * session's tokens, backtracks and model-1 cells equal the same fused
 * session on contexts of its own. Chunks of 8 make prompts and catching
 * up take several decodes, so some steps have nothing for one model. */
typedef struct aligned_job {
    sm_session *session;
    const char *prompt;
    sm_gen_params gp;
    sm_operator *op;
    sm_result result;
    sm_status status;
} aligned_job;

/* Per generated position of a greedy run: ln p of its best token minus
 * that of the second (how far batched rounding is from changing it). */
typedef struct greedy_margins {
    float gap[64];
} greedy_margins;

static bool keep_margins(const sm_event *e, void *user_data) {
    greedy_margins *g = user_data;
    if (e->type == SM_EVENT_TOKEN && e->n_top >= 2 && e->token_index < 64)
        g->gap[e->token_index] = logf(e->top[0].prob) - logf(e->top[1].prob);
    return true;
}

static void *run_aligned(void *arg) {
    aligned_job *j = arg;
    j->status = sm_session_generate(j->session, j->prompt, &j->gp, &j->result);
    return NULL;
}

/* Greedy, each session rewinding 3 tokens at a position of its own (so
 * the aligned model is cut back and catches up), by position: nothing but
 * the tokens depends on rounding. */
static sm_gen_params aligned_params(int i, sm_operator **op) {
    sm_gen_params gp = tu_greedy_params(24 + 8 * i);
    gp.fusion.mode = i == 1 ? SM_FUSION_CONFIDENCE : SM_FUSION_AVERAGE;
    *op = tu_backtrack_once(6 + 4 * i, 3);
    gp.backtrack.operators = op;
    gp.backtrack.n_operators = 1;
    return gp;
}

static void test_aligned_fusion_on_a_batch(void **state) {
    (void)state;
    enum { N = 3 };
    sm_model *models[2] = {tu_load_model("stories260K.gguf"), tu_load_model("aidreams260K.gguf")};
    sm_batch_params bp = sm_batch_default_params();
    bp.n_seq = N;
    bp.n_ctx_seq = 256;
    bp.n_batch = 8;
    bp.n_threads = 1;
    sm_error err = {0};
    sm_batch *batch = sm_batch_new(models, 2, &bp, &err);
    if (!batch) fail_msg("%s", err.message);
    aligned_job jobs[N];
    pthread_t threads[N];
    for (int i = 0; i < N; i++) {
        sm_session_params sp = tu_session_params(256);
        sp.batch = batch;
        sp.fusion_align = true;
        jobs[i] = (aligned_job){.prompt = PROMPTS[i]};
        jobs[i].gp = aligned_params(i, &jobs[i].op);
        jobs[i].session = sm_session_new_fused(models, 2, &sp, &err);
        if (!jobs[i].session) fail_msg("session %d: %s", i, err.message);
    }
    for (int i = 0; i < N; i++) pthread_create(&threads[i], NULL, run_aligned, &jobs[i]);
    for (int i = 0; i < N; i++) pthread_join(threads[i], NULL);
    sm_batch_stats st = sm_batch_get_stats(batch);
    fprintf(stderr, "aligned batch: %lld requests in %lld decodes\n", (long long)st.n_requests, (long long)st.n_decodes);
    assert_true(st.n_decodes < st.n_requests);
    int32_t backtracks = 0;
    for (int i = 0; i < N; i++) {
        aligned_job *j = &jobs[i];
        if (j->status != SM_OK) fail_msg("session %d: %s", i, sm_session_last_error(j->session));
        sm_session_params sp = tu_session_params(256);
        sp.n_batch = 8;
        sp.fusion_align = true;
        sm_session *alone = sm_session_new_fused(models, 2, &sp, &err);
        if (!alone) fail_msg("%s", err.message);
        sm_result r;
        sm_operator *op;
        sm_gen_params gp = aligned_params(i, &op);
        greedy_margins margins = {{0}};
        gp.n_probs = 2;
        gp.on_event = keep_margins;
        gp.user_data = &margins;
        assert_int_equal(sm_session_generate(alone, PROMPTS[i], &gp, &r), SM_OK);
        assert_int_equal(j->result.n_backtracks, 1);
        assert_int_equal(r.n_backtracks, 1);
        backtracks += r.n_backtracks;
        int32_t same = 0;
        while (same < r.n_tokens && same < j->result.n_tokens && r.tokens[same] == j->result.tokens[same]) same++;
        if (same < r.n_tokens || j->result.n_tokens != r.n_tokens) {
            /* batched decodes round differently (logits up to ~1e-2 apart,
             * above): only a near tie may part them, and then the rest */
            fprintf(stderr, "aligned batch: session %d parts from its run alone at %d (a margin of %.2e)\n", i, same,
                    margins.gap[same]);
            if (margins.gap[same] > 2e-2f) fail_msg("aligned session %d differs from its run alone at token %d", i, same);
        } else {
            for (int32_t k = 0; k < r.n_tokens; k++)
                assert_float_equal(j->result.fusion[k].unmapped_mass[1], r.fusion[k].unmapped_mass[1], 1e-3);
            /* model 1's cells: the text's tokens in its vocabulary, as alone */
            assert_int_equal(sm_session_model_kv_pos(j->session, 1), sm_session_model_kv_pos(alone, 1));
            assert_true(sm_session_model_kv_pos(alone, 1) > 0);
        }
        sm_result_free(&r);
        sm_operator_free(op);
        sm_result_free(&j->result);
        sm_operator_free(j->op);
        sm_session_free(alone);
        sm_session_free(j->session);
    }
    assert_int_equal(backtracks, N);
    sm_batch_free(batch);
    sm_model_free(models[0]);
    sm_model_free(models[1]);
}

/* Introspection on a batch: a session observing layers decodes alone
 * (the eval callback sees its rows only) on the batch's context while
 * another session generates beside it; per token, its layer statistics and
 * hidden states equal those of the same session on a context of its own,
 * and the other session's tokens equal its run alone. */
enum { OBSERVED = 20 };
typedef struct observed_run {
    sm_session *session;
    sm_result result;
    sm_status status;
    int32_t n_stats;
    float norm[OBSERVED][2];
    float hidden[OBSERVED][2 * 64];
} observed_run;

static bool keep_stats(const sm_event *e, void *user_data) {
    observed_run *o = user_data;
    if (e->type != SM_EVENT_TOKEN || !e->introspection || e->token_index >= OBSERVED) return true;
    const sm_introspection *in = e->introspection;
    if (in->n_layers != 2 || !in->hidden || in->n_embd != 64) return true;
    for (int l = 0; l < 2; l++) o->norm[e->token_index][l] = in->layers[l].norm;
    memcpy(o->hidden[e->token_index], in->hidden, sizeof o->hidden[0]);
    o->n_stats++;
    return true;
}

static void *run_observed(void *arg) {
    observed_run *o = arg;
    sm_gen_params gp = tu_greedy_params(OBSERVED);
    gp.on_event = keep_stats;
    gp.user_data = o;
    o->status = sm_session_generate(o->session, PROMPTS[0], &gp, &o->result);
    return NULL;
}

static void *run_plain(void *arg) {
    observed_run *o = arg;
    sm_gen_params gp = tu_greedy_params(2 * OBSERVED);
    o->status = sm_session_generate(o->session, PROMPTS[1], &gp, &o->result);
    return NULL;
}

static void test_introspection_on_a_batch(void **state) {
    (void)state;
    sm_model *m = tu_load_model("stories260K.gguf");
    sm_batch *batch = tu_open_batch(m, 2, 256, 512, false);
    int32_t layers[] = {0, -1};
    sm_session_params sp = tu_session_params(256);
    sp.introspect_layers = layers;
    sp.n_introspect_layers = 2;
    sp.introspect_hidden = true;
    sm_session *alone = tu_open_session(m, &sp);
    sp.batch = batch;
    sp.introspect_attention = true; /* flash attention forms no probabilities */
    sm_error err = {0};
    assert_null(sm_session_new(m, &sp, &err));
    assert_non_null(strstr(err.message, "attention introspection"));
    sp.introspect_attention = false;
    /* the observed session takes sequence 0: in a shared decode its row
     * would come before the other's, and the last row be the other's */
    static observed_run observed, beside, want;
    observed = (observed_run){.session = sm_session_new(m, &sp, &err)};
    if (!observed.session) fail_msg("%s", err.message);
    beside = (observed_run){.session = tu_batch_session(m, batch, 256)};
    pthread_t a, b;
    pthread_create(&a, NULL, run_observed, &observed);
    pthread_create(&b, NULL, run_plain, &beside);
    pthread_join(a, NULL);
    pthread_join(b, NULL);
    assert_int_equal(observed.status, SM_OK);
    assert_int_equal(beside.status, SM_OK);
    assert_true(sm_session_eval_callback_calls(observed.session) > 0);

    want = (observed_run){.session = alone};
    run_observed(&want);
    assert_int_equal(want.status, SM_OK);
    assert_int_equal(observed.n_stats, want.n_stats);
    assert_int_equal(observed.n_stats, OBSERVED);
    assert_int_equal(observed.result.n_tokens, want.result.n_tokens);
    assert_memory_equal(observed.result.tokens, want.result.tokens, sizeof(sm_token) * (size_t)want.result.n_tokens);
    double worst = 0;
    for (int i = 0; i < OBSERVED; i++) {
        for (int l = 0; l < 2; l++) {
            double d = fabs(observed.norm[i][l] - want.norm[i][l]) / (fabs(want.norm[i][l]) + 1e-6);
            if (!(d <= 1e-3)) fail_msg("token %d layer %d: norm %g on the batch, %g alone", i, l, observed.norm[i][l],
                                       want.norm[i][l]);
        }
        double d = tu_max_abs_diff(observed.hidden[i], want.hidden[i], 2 * 64);
        if (d > worst) worst = d;
    }
    fprintf(stderr, "introspection on a batch: hidden states within %.2e of alone\n", worst);
    assert_true(worst < 1e-2);

    sm_session *plain = tu_open_session(m, NULL);
    sm_gen_params gp = tu_greedy_params(2 * OBSERVED);
    sm_result r;
    assert_int_equal(sm_session_generate(plain, PROMPTS[1], &gp, &r), SM_OK);
    assert_int_equal(beside.result.n_tokens, r.n_tokens);
    assert_memory_equal(beside.result.tokens, r.tokens, sizeof(sm_token) * (size_t)r.n_tokens);
    sm_result_free(&r);
    sm_result_free(&observed.result);
    sm_result_free(&beside.result);
    sm_result_free(&want.result);
    sm_session_free(plain);
    sm_session_free(observed.session);
    sm_session_free(beside.session);
    sm_session_free(alone);
    sm_batch_free(batch);
    sm_model_free(m);
}

static int32_t process_threads(void) {
    int32_t n = 0;
    DIR *d = opendir("/proc/self/task");
    if (!d) return -1;
    for (struct dirent *e; (e = readdir(d));) n += e->d_name[0] != '.';
    closedir(d);
    return n;
}

/* Batches sharing one decoder thread (a server's batch per model set): a
 * second batch made with share_decoder starts no thread; sessions on both
 * generating at once, taking turns on the thread, each equal their runs
 * alone (one per batch: rows that share no decode round as alone); each
 * batch counts its own decodes; freeing the first batch leaves the thread
 * to the other. */
static void test_batches_share_a_decoder(void **state) {
    (void)state;
    sm_model *m = tu_load_model("stories260K.gguf");
    sm_model *salty = tu_load_model("llama2xs-salty-280K.gguf");
    int32_t before = process_threads();
    sm_batch *first = tu_open_batch(m, 2, 256, 512, false);
    int32_t with_one = process_threads();
    assert_int_equal(with_one, before + 1); /* its decoder */
    sm_batch_params bp = sm_batch_default_params();
    bp.n_seq = 2;
    bp.n_ctx_seq = 256;
    bp.n_threads = 1;
    bp.share_decoder = first;
    sm_error err = {0};
    sm_batch *second = sm_batch_new(&salty, 1, &bp, &err);
    if (!second) fail_msg("%s", err.message);
    assert_int_equal(process_threads(), with_one);

    static observed_run runs[2];
    sm_model *of[2] = {m, salty};
    sm_batch *on[2] = {first, second};
    pthread_t t[2];
    for (int i = 0; i < 2; i++) {
        runs[i] = (observed_run){.session = tu_batch_session(of[i], on[i], 256)};
        pthread_create(&t[i], NULL, i % 2 ? run_plain : run_observed, &runs[i]);
    }
    for (int i = 0; i < 2; i++) pthread_join(t[i], NULL);
    for (int i = 0; i < 2; i++) {
        assert_int_equal(runs[i].status, SM_OK);
        sm_session *alone = tu_open_session(of[i], NULL);
        sm_gen_params gp = tu_greedy_params(i % 2 ? 2 * OBSERVED : OBSERVED);
        sm_result r;
        assert_int_equal(sm_session_generate(alone, PROMPTS[i % 2], &gp, &r), SM_OK);
        assert_int_equal(runs[i].result.n_tokens, r.n_tokens);
        assert_memory_equal(runs[i].result.tokens, r.tokens, sizeof(sm_token) * (size_t)r.n_tokens);
        sm_result_free(&r);
        sm_result_free(&runs[i].result);
        sm_session_free(alone);
    }
    sm_batch_stats a = sm_batch_get_stats(first), b = sm_batch_get_stats(second);
    assert_true(a.n_decodes > 0 && b.n_decodes > 0);
    for (int i = 0; i < 2; i++)
        if (on[i] == first) sm_session_free(runs[i].session);
    /* (counted from here: the runs alone may have started OpenMP workers) */
    int32_t now = process_threads();
    sm_batch_free(first); /* the thread stays with the second */
    assert_int_equal(process_threads(), now);
    for (int i = 0; i < 2; i++)
        if (on[i] == second) {
            assert_int_equal(sm_session_clear(runs[i].session), SM_OK);
            sm_gen_params gp = tu_greedy_params(4);
            sm_result r;
            assert_int_equal(sm_session_generate(runs[i].session, PROMPTS[0], &gp, &r), SM_OK);
            assert_int_equal(r.n_tokens, 4);
            sm_result_free(&r);
            sm_session_free(runs[i].session);
        }
    sm_batch_free(second); /* the last: its thread ends */
    /* a joined thread may still be listed for a moment while the kernel reaps it */
    for (int k = 0; k < 200 && process_threads() > now - 1; k++) nanosleep(&(struct timespec){0, 5000000}, NULL);
    assert_int_equal(process_threads(), now - 1);
    sm_model_free(salty);
    sm_model_free(m);
}

/* Lookahead scored by coherence (the branches' layer norms) on a unified
 * batch beside another generating session: every branch row is observed
 * (its decode is the session's own), so the chosen branches and scores
 * equal the session's on a context of its own. */
static void test_coherence_lookahead_on_a_unified_batch(void **state) {
    (void)state;
    sm_model *m = tu_load_model("stories260K.gguf");
    sm_batch *batch = tu_open_batch(m, 1 + (1 + 3), 512, 512, true);
    job other = {.prompt = PROMPTS[1], .n_vocab = sm_model_n_vocab(m)};
    other.session = tu_batch_session(m, batch, 512);
    other.gp = tu_greedy_params(N_PREDICT);
    int32_t layers[] = {1, -1};
    sm_session_params sp = tu_session_params(512);
    sp.max_branches = 3;
    sp.introspect_layers = layers;
    sp.n_introspect_layers = 2;
    sm_session *alone = tu_open_session(m, &sp);
    sp.batch = batch;
    sm_error err = {0};
    sm_session *la = sm_session_new(m, &sp, &err);
    if (!la) fail_msg("%s", err.message);
    sm_gen_params gp = tu_greedy_params(24);
    gp.interventions.lookahead.k = 3;
    gp.interventions.lookahead.depth = 4;
    gp.interventions.lookahead.entropy = 0.0f;
    gp.interventions.lookahead.score = SM_LOOKAHEAD_COHERENCE;
    lookaheads beside = {0}, own = {0};
    gp.on_event = keep_lookaheads;
    gp.user_data = &beside;
    pthread_t thread;
    pthread_create(&thread, NULL, run, &other);
    sm_result a, b;
    assert_int_equal(sm_session_generate(la, PROMPTS[0], &gp, &a), SM_OK);
    pthread_join(thread, NULL);
    assert_int_equal(other.status, SM_OK);
    gp.user_data = &own;
    assert_int_equal(sm_session_generate(alone, PROMPTS[0], &gp, &b), SM_OK);
    assert_true(own.n >= 5);
    same_lookaheads(&own, &beside, &b, &a, "coherence lookahead");
    sm_result_free(&a);
    sm_result_free(&b);
    sm_result_free(&other.result);
    free(other.logits);
    sm_session_free(other.session);
    sm_session_free(la);
    sm_session_free(alone);
    sm_batch_free(batch);
    sm_model_free(m);
}

static void test_batch_refuses_what_it_cannot_share(void **state) {
    (void)state;
    sm_model *m = tu_load_model("stories260K.gguf");
    sm_model *other = tu_load_model("llama2xs-salty-280K.gguf");
    sm_error err = {0};
    sm_batch *batch = sm_batch_new(&m, 1, NULL, &err);
    assert_non_null(batch);
    sm_session_params sp = tu_session_params(256);
    sp.batch = batch;
    sp.max_branches = 2;
    assert_null(sm_session_new(m, &sp, &err));
    assert_non_null(strstr(err.message, "lookahead"));
    sp.max_branches = 0;
    assert_null(sm_session_new(other, &sp, &err));
    assert_non_null(strstr(err.message, "not model 0 of its batch"));
    sm_session *s = sm_session_new(m, &sp, &err);
    assert_non_null(s);
    float v[64] = {0};
    assert_int_equal(sm_session_set_control_vector(s, v, 64, 64, 1, 1), SM_ERR_STATE);
    sm_session_free(s);
    sm_batch_free(batch);
    sm_model_free(other);
    sm_model_free(m);
}

int main(void) {
    sm_set_llama_logging(false);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_batched_sequences_equal_runs_alone),
        cmocka_unit_test(test_chunked_prompts_and_truncation),
        cmocka_unit_test(test_prompt_progress),
        cmocka_unit_test(test_unified_pool),
        cmocka_unit_test(test_steps_larger_than_a_decode),
        cmocka_unit_test(test_tree_shares_the_decoder),
        cmocka_unit_test(test_lookahead_on_a_unified_batch),
        cmocka_unit_test(test_coherence_lookahead_on_a_unified_batch),
        cmocka_unit_test(test_aligned_fusion_on_a_batch),
        cmocka_unit_test(test_introspection_on_a_batch),
        cmocka_unit_test(test_batches_share_a_decoder),
        cmocka_unit_test(test_batch_refuses_what_it_cannot_share),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
