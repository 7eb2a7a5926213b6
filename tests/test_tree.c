/*
 * Tree exploration (the LLooM) on stories260K: every limit holds, batched
 * expansion equals beam-by-beam expansion, every probability equals what
 * an ordinary single-sequence session computes for that continuation
 * (so no beam ever sees another beam's tokens), mixing, and bad input.
 */
#include "testutil.h"

#include <llama.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char *PREFIX = "Once upon a time, there was a little";

typedef struct fixture {
    sm_model *model;
    sm_tree *tree;       /* stories260K alone, up to 64 beams */
} fixture;

static sm_tree *new_tree(sm_model **models, int32_t n_models, uint32_t n_ctx, int32_t max_beams) {
    sm_error err = {0};
    sm_tree *t = sm_tree_new(models, n_models, n_ctx, 1, max_beams, &err);
    if (!t) fail_msg("tree: %s", err.message);
    return t;
}

static int setup(void **state) {
    fixture *f = calloc(1, sizeof *f);
    f->model = tu_load_model("stories260K.gguf");
    f->tree = new_tree(&f->model, 1, 512, 64);
    *state = f;
    return 0;
}

static int teardown(void **state) {
    fixture *f = *state;
    if (!f) return 0; /* the setup failed (a missing model): it said why */
    sm_tree_free(f->tree);
    sm_model_free(f->model);
    free(f);
    return 0;
}

static sm_tree_params tree_params(float cutoff, int32_t split_limit, int32_t max_depth, int32_t beam_limit) {
    sm_tree_params p = sm_tree_default_params();
    p.cutoff = cutoff;
    p.split_limit = split_limit;
    p.max_depth = max_depth;
    p.beam_limit = beam_limit;
    return p;
}

static void expand(sm_tree *t, const char *prefix, const sm_tree_params *p, sm_tree_result *r) {
    sm_status st = sm_tree_expand(t, prefix, p, r);
    if (st != SM_OK) fail_msg("expand: %s", sm_tree_last_error(t));
}

static bool has_stop_char(const char *text, const char *stops) {
    for (const char *c = text; stops && *c; c++)
        if (strchr(stops, *c)) return true;
    return false;
}

/* Whether a token before the leaf has a stop character after the
 * suggestion's text began (stop characters may only open it). */
static bool stops_early(const sm_tree_result *r, int32_t leaf, const char *stops) {
    int32_t path[1024], n = 0;
    for (int32_t i = r->nodes[leaf].parent; i >= 0; i = r->nodes[i].parent) path[n++] = i;
    bool has_text = false;
    for (int32_t k = n - 1; k >= 0; k--)
        for (const char *c = r->nodes[path[k]].piece; stops && *c; c++) {
            if (!strchr(stops, *c)) has_text = true;
            else if (has_text) return true;
        }
    return false;
}

static const char *dedup(const char *text) { return text[0] == ' ' ? text + 1 : text; }

/* The text of the path root..node, rebuilt from the nodes' pieces. */
static void path_text(const sm_tree_result *r, int32_t node, char *buf, size_t size) {
    int32_t path[1024], n = 0;
    for (int32_t i = node; i >= 0; i = r->nodes[i].parent) path[n++] = i;
    buf[0] = '\0';
    for (int32_t k = n - 1; k >= 0; k--) strncat(buf, r->nodes[path[k]].piece, size - strlen(buf) - 1);
}

typedef struct tree_shape {
    int32_t max_children;      /* over every node and the prefix          */
    int32_t n_splits_deep;     /* non-first children below depth 1        */
    int32_t n_by_end[SM_TREE_END_BEAM_LIMIT + 1];
} tree_shape;

/* Asserts everything the parameters promise about a tree. */
static tree_shape check_tree(const sm_tree_result *r, const sm_tree_params *p) {
    tree_shape shape = {0};
    assert_true(r->n_nodes > 0);
    int32_t *children = calloc((size_t)r->n_nodes + 1, sizeof(int32_t)); /* [0]: the prefix */
    int32_t n_leaves = 0;
    for (int32_t i = 0; i < r->n_nodes; i++) {
        const sm_tree_node *nd = &r->nodes[i];
        assert_true(nd->parent >= -1 && nd->parent < i);
        assert_int_equal(nd->depth, nd->parent < 0 ? 1 : r->nodes[nd->parent].depth + 1);
        assert_true(nd->depth <= p->max_depth);
        assert_true(nd->prob > 0.0f && nd->prob <= (p->score_sum_probs ? 2.0f : 1.0f)); /* two models add up */
        const double parent_score = nd->parent < 0 ? 0.0 : r->nodes[nd->parent].score;
        const double gain = p->score_sum_probs ? (double)nd->prob : log((double)nd->prob);
        assert_true(fabs(nd->score - (parent_score + gain)) < 1e-9);
        int32_t *n_siblings = &children[nd->parent + 1];
        if (*n_siblings > 0) {
            /* Only the first child may fall below the cutoff at its depth. */
            const double cutoff = p->cutoff * pow(p->multiplier, nd->depth - 1);
            assert_true(nd->prob >= cutoff);
            if (nd->depth > 1) shape.n_splits_deep++;
            /* Children come most probable first. */
            assert_true(nd->prob <= r->nodes[i - 1].prob || r->nodes[i - 1].parent != nd->parent);
        }
        (*n_siblings)++;
        if (nd->end != SM_TREE_END_NONE && nd->end != SM_TREE_END_BEAM_LIMIT) n_leaves++;
        shape.n_by_end[nd->end]++;
    }
    for (int32_t i = 0; i <= r->n_nodes; i++) {
        if (p->split_limit > 0) assert_true(children[i] <= p->split_limit);
        if (children[i] > shape.max_children) shape.max_children = children[i];
        /* Leaves have no children, inner nodes have some. */
        if (i > 0) assert_int_equal(children[i] == 0, r->nodes[i - 1].end != SM_TREE_END_NONE);
    }
    free(children);
    assert_true(n_leaves <= p->beam_limit);

    assert_true(r->n_suggestions >= 1 && r->n_suggestions <= p->beam_limit);
    for (int32_t i = 0; i < r->n_suggestions; i++) {
        const sm_suggestion *s = &r->suggestions[i];
        const sm_tree_node *leaf = &r->nodes[s->node];
        assert_int_equal(s->n_tokens, leaf->depth);
        assert_true(s->n_tokens >= 1 && s->n_tokens <= p->max_depth);
        assert_int_equal(s->end, leaf->end);
        assert_true(s->end != SM_TREE_END_NONE);
        assert_true(s->score == leaf->score);
        assert_true(s->end != SM_TREE_END_BEAM_LIMIT); /* a dropped beam is no suggestion */
        char text[4096];
        path_text(r, s->node, text, sizeof text);
        if (s->end == SM_TREE_END_STOP_CHAR) {
            /* cut after the stop character that ended it */
            assert_true(strncmp(text, s->text, strlen(s->text)) == 0);
            assert_non_null(strchr(p->stop_chars, s->text[strlen(s->text) - 1]));
        } else {
            assert_string_equal(s->text, text);
        }
        /* The tokens and probabilities are the path's, in order. */
        int32_t k = s->n_tokens;
        for (int32_t n = s->node; n >= 0; n = r->nodes[n].parent) {
            k--;
            assert_int_equal(s->tokens[k], r->nodes[n].token);
            assert_true(s->probs[k] == r->nodes[n].prob);
        }
        assert_int_equal(k, 0);
        const char *last_piece = leaf->piece;
        switch (s->end) {
        case SM_TREE_END_MAX_DEPTH: assert_int_equal(s->n_tokens, p->max_depth); break;
        case SM_TREE_END_STOP_CHAR: assert_true(has_stop_char(last_piece, p->stop_chars)); break;
        case SM_TREE_END_BEAM_LIMIT: fail_msg("suggestion %d was dropped", i); break;
        case SM_TREE_END_EOG: break;
        case SM_TREE_END_NONE: fail_msg("suggestion %d is not a leaf", i);
        }
        assert_false(stops_early(r, s->node, p->stop_chars));
        if (i > 0) assert_true(r->suggestions[i - 1].score >= s->score);
        /* one per text, a leading space aside */
        for (int32_t j = 0; j < i; j++) assert_string_not_equal(dedup(r->suggestions[j].text), dedup(s->text));
    }
    /* Every finished leaf is a suggestion, or one with its text scores at least as well. */
    for (int32_t i = 0; i < r->n_nodes; i++) {
        if (r->nodes[i].end == SM_TREE_END_NONE || r->nodes[i].end == SM_TREE_END_BEAM_LIMIT) continue;
        char text[4096];
        path_text(r, i, text, sizeof text);
        bool covered = false;
        for (int32_t k = 0; k < r->n_suggestions && !covered; k++)
            covered = strncmp(text, r->suggestions[k].text, strlen(r->suggestions[k].text)) == 0 &&
                      r->suggestions[k].score >= r->nodes[i].score;
        if (!covered) /* or its text was a leading space away from a better one's */
            for (int32_t k = 0; k < r->n_suggestions && !covered; k++)
                covered = strncmp(dedup(text), dedup(r->suggestions[k].text), strlen(dedup(r->suggestions[k].text))) == 0;
        assert_true(covered);
    }
    return shape;
}

static void test_limits_hold(void **state) {
    fixture *f = *state;
    const sm_tree_params cases[] = {
        sm_tree_default_params(),
        tree_params(0.05f, 3, 8, 25),
        tree_params(0.1f, 2, 10, 12),
        tree_params(0.02f, 0, 6, 40), /* split_limit 0: only beam_limit bounds splitting */
        tree_params(0.02f, 5, 4, 9),
        tree_params(0.05f, 3, 12, 6),
        tree_params(0.0f, 0, 5, 30),  /* no cutoff, no split limit: one wide level */
    };
    tree_shape total = {0};
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        sm_tree_result r;
        expand(f->tree, PREFIX, &cases[c], &r);
        tree_shape shape = check_tree(&r, &cases[c]);
        if (cases[c].split_limit > 0 && shape.max_children == cases[c].split_limit) total.max_children++;
        for (int e = 0; e <= SM_TREE_END_BEAM_LIMIT; e++) total.n_by_end[e] += shape.n_by_end[e];
        sm_tree_result_free(&r);
    }
    /* The limits did bind: otherwise the checks above prove little. */
    assert_true(total.max_children >= 2);
    assert_true(total.n_by_end[SM_TREE_END_MAX_DEPTH] > 0);
    assert_true(total.n_by_end[SM_TREE_END_STOP_CHAR] > 0);
    assert_true(total.n_by_end[SM_TREE_END_BEAM_LIMIT] > 0);
}

/* Whatever the limit, the tree never returns more suggestions than
 * beam_limit, and never decodes more beams at once; with limit 1 it is
 * the greedy continuation to max_depth or a stop character. */
static void test_beam_limit_is_never_exceeded(void **state) {
    fixture *f = *state;
    for (int32_t limit = 1; limit <= 30; limit++) {
        sm_tree_params p = tree_params(0.01f, 4, 10, limit);
        sm_tree_result r;
        expand(f->tree, PREFIX, &p, &r);
        check_tree(&r, &p);
        assert_true(r.max_live_beams <= limit);
        if (limit == 1) {
            assert_int_equal(r.n_suggestions, 1);
            assert_true(r.suggestions[0].end != SM_TREE_END_BEAM_LIMIT);
            assert_true(r.suggestions[0].n_tokens == p.max_depth || r.suggestions[0].end != SM_TREE_END_MAX_DEPTH);
        }
        sm_tree_result_free(&r);
    }
}

/* The seed's promise (issue 13): with Auto-Stop off every beam has
 * exactly Max Depth tokens, and Maximum Suggestions is the most completed
 * suggestions returned; even with cutoff 0 and no split limit (the whole
 * vocabulary offered) the best beams go on to max_depth. */
static void test_without_auto_stop_every_suggestion_reaches_max_depth(void **state) {
    fixture *f = *state;
    const float cutoffs[] = {0.0f, 0.05f};
    for (int c = 0; c < 2; c++) {
        sm_tree_params p = tree_params(cutoffs[c], 0, 6, 5);
        p.stop_chars = "";
        sm_tree_result r;
        expand(f->tree, "Once upon a time", &p, &r);
        check_tree(&r, &p);
        assert_true(r.n_suggestions >= 1 && r.n_suggestions <= 5);
        if (cutoffs[c] == 0.0f) assert_int_equal(r.n_suggestions, 5);
        for (int32_t i = 0; i < r.n_suggestions; i++)
            if (r.suggestions[i].end != SM_TREE_END_EOG) {
                assert_int_equal(r.suggestions[i].n_tokens, 6);
                assert_int_equal(r.suggestions[i].end, SM_TREE_END_MAX_DEPTH);
            }
        assert_int_equal(r.n_levels, 5); /* every token but the last is decoded */
        sm_tree_result_free(&r);
    }
}

/* The most probable token is always kept: following first children from
 * the prefix gives the greedy continuation. */
static void test_first_children_are_greedy(void **state) {
    fixture *f = *state;
    sm_tree_params p = tree_params(0.05f, 3, 12, 25);
    p.stop_chars = "";
    sm_tree_result r;
    expand(f->tree, PREFIX, &p, &r);
    sm_token path[64];
    int32_t n = 0;
    for (int32_t i = 0; i < r.n_nodes; i++) /* the first child of the last node on the path */
        if (r.nodes[i].parent == (n ? path[n - 1] : -1)) path[n++] = i;
    assert_true(n >= 6); /* the beam limit may end the path before max_depth */

    sm_session_params sp = sm_session_default_params();
    sp.n_ctx = 512;
    sp.n_threads = 1;
    sm_error err = {0};
    sm_session *s = sm_session_new(f->model, &sp, &err);
    assert_non_null(s);
    sm_gen_params gp = tu_greedy_params(n);
    sm_result g;
    assert_int_equal(sm_session_generate(s, PREFIX, &gp, &g), SM_OK);
    assert_int_equal(g.n_tokens, n);
    for (int32_t k = 0; k < n; k++) assert_int_equal(g.tokens[k], r.nodes[path[k]].token);
    sm_result_free(&g);
    sm_session_free(s);
    sm_tree_result_free(&r);
}

static double max_prob_error(const float *logits, int32_t n_vocab, sm_token token, float prob) {
    double max = logits[0], sum = 0.0;
    for (int32_t t = 1; t < n_vocab; t++)
        if (logits[t] > max) max = logits[t];
    for (int32_t t = 0; t < n_vocab; t++) sum += exp(logits[t] - max);
    return fabs(exp(logits[token] - max) / sum - prob);
}

/*
 * Every probability in a wide, batched tree equals what a plain session
 * computes for the same tokens: the branching through shared KV cells
 * never lets a beam see another beam's tokens.
 */
static void test_probabilities_match_a_plain_session(void **state) {
    fixture *f = *state;
    sm_tree_params p = tree_params(0.05f, 3, 8, 25);
    sm_tree_result r;
    expand(f->tree, PREFIX, &p, &r);
    assert_true(r.max_live_beams >= 8);

    sm_session_params sp = sm_session_default_params();
    sp.n_ctx = 512;
    sp.n_threads = 1;
    sm_error err = {0};
    sm_session *s = sm_session_new(f->model, &sp, &err);
    assert_non_null(s);
    sm_token prefix[64];
    int32_t n_prefix = tu_tokenize(f->model, PREFIX, true, false, prefix, 64);
    assert_int_equal(n_prefix, r.n_prefix_tokens);
    const int32_t n_vocab = sm_model_n_vocab(f->model);
    double worst = 0.0;
    for (int32_t i = 0; i < r.n_suggestions; i++) {
        const sm_suggestion *sg = &r.suggestions[i];
        assert_int_equal(sm_session_clear(s), SM_OK);
        assert_int_equal(sm_session_feed_tokens(s, prefix, n_prefix), SM_OK);
        for (int32_t k = 0; k < sg->n_tokens; k++) {
            double e = max_prob_error(sm_session_logits(s), n_vocab, sg->tokens[k], sg->probs[k]);
            if (e > worst) worst = e;
            assert_int_equal(sm_session_feed_tokens(s, &sg->tokens[k], 1), SM_OK);
        }
    }
    assert_true(worst < 2e-3);
    sm_session_free(s);
    sm_tree_result_free(&r);
}

static const sm_suggestion *find_text(const sm_tree_result *r, const char *text) {
    for (int32_t i = 0; i < r->n_suggestions; i++)
        if (strcmp(r->suggestions[i].text, text) == 0) return &r->suggestions[i];
    return NULL;
}

/* Same suggestions (as a set: batched decoding rounds differently, so
 * near-equal scores may swap places), same tokens, scores within rel. */
static void assert_same_suggestions(const sm_tree_result *a, const sm_tree_result *b, double rel) {
    assert_int_equal(a->n_suggestions, b->n_suggestions);
    assert_int_equal(a->n_nodes, b->n_nodes);
    for (int32_t i = 0; i < a->n_suggestions; i++) {
        const sm_suggestion *x = &a->suggestions[i], *y = find_text(b, x->text);
        if (!y) fail_msg("suggestion '%s' is missing", x->text);
        assert_int_equal(x->n_tokens, y->n_tokens);
        assert_memory_equal(x->tokens, y->tokens, sizeof(sm_token) * (size_t)x->n_tokens);
        assert_int_equal(x->end, y->end);
        if (fabs(x->score - y->score) > rel * fmax(1.0, fabs(x->score)))
            fail_msg("'%s' scores %.9f and %.9f", x->text, x->score, y->score);
    }
}

static void test_batched_equals_beam_by_beam(void **state) {
    fixture *f = *state;
    const sm_tree_params cases[] = {
        sm_tree_default_params(),
        tree_params(0.05f, 3, 8, 25),
        tree_params(0.1f, 2, 10, 12),
        tree_params(0.03f, 4, 6, 40),
    };
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        sm_tree_params p = cases[c];
        sm_tree_result batched, sequential;
        p.batched = true;
        expand(f->tree, PREFIX, &p, &batched);
        p.batched = false;
        expand(f->tree, PREFIX, &p, &sequential);
        check_tree(&sequential, &p);
        assert_same_suggestions(&batched, &sequential, 1e-3);
        /* One call per level in each model, against one per beam. */
        assert_int_equal(batched.n_decode_calls, batched.n_levels);
        assert_int_equal(sequential.n_decode_calls, (int32_t)sequential.n_tokens_decoded);
        assert_true(batched.n_tokens_decoded == sequential.n_tokens_decoded);
        if (c == 1) assert_true(batched.max_live_beams >= 8 && batched.n_decode_calls < sequential.n_decode_calls);
        sm_tree_result_free(&batched);
        sm_tree_result_free(&sequential);
    }
}

/* A lower multiplier lowers the cutoff with depth: more splits deeper
 * down, and the same first level. */
static void test_multiplier_scales_the_cutoff(void **state) {
    fixture *f = *state;
    sm_tree_params flat = tree_params(0.3f, 3, 8, 64), falling = flat;
    falling.multiplier = 0.5f;
    sm_tree_result a, b;
    expand(f->tree, PREFIX, &flat, &a);
    expand(f->tree, PREFIX, &falling, &b);
    tree_shape sa = check_tree(&a, &flat), sb = check_tree(&b, &falling);
    assert_true(sb.n_splits_deep > sa.n_splits_deep);
    int32_t first_a = 0, first_b = 0;
    for (int32_t i = 0; i < a.n_nodes; i++) first_a += a.nodes[i].depth == 1;
    for (int32_t i = 0; i < b.n_nodes; i++) first_b += b.nodes[i].depth == 1;
    assert_int_equal(first_a, first_b);
    sm_tree_result_free(&a);
    sm_tree_result_free(&b);
}

/* The LLooM's score: the same tree, scored by sums of probabilities. */
static void test_sum_of_probabilities(void **state) {
    fixture *f = *state;
    sm_tree_params logp = tree_params(0.05f, 3, 8, 25), sum = logp;
    sum.score_sum_probs = true;
    sm_tree_result a, b;
    expand(f->tree, PREFIX, &logp, &a);
    expand(f->tree, PREFIX, &sum, &b);
    check_tree(&b, &sum);
    assert_int_equal(a.n_suggestions, b.n_suggestions);
    bool order_differs = false;
    for (int32_t i = 0; i < b.n_suggestions; i++) {
        const sm_suggestion *s = &b.suggestions[i];
        double expected = 0.0;
        for (int32_t k = 0; k < s->n_tokens; k++) expected += s->probs[k];
        assert_true(fabs(s->score - expected) < 1e-9);
        if (i > 0) assert_true(b.suggestions[i - 1].score >= s->score);
        assert_non_null(find_text(&a, s->text));
        order_differs |= strcmp(s->text, a.suggestions[i].text) != 0;
    }
    /* Sums favour long beams, log-probabilities do not: the orders differ. */
    assert_true(order_differs);
    sm_tree_result_free(&a);
    sm_tree_result_free(&b);
}

static double prob_of(const float *logits, int32_t n_vocab, sm_token token) {
    return 1.0 - max_prob_error(logits, n_vocab, token, 1.0f);
}

/* Democratic mixing: two copies of one model give exactly its tree; two
 * different models give each token the mean of their probabilities. */
static void test_mixing_models(void **state) {
    fixture *f = *state;
    sm_model *twins[2] = {tu_load_model("stories260K.gguf"), tu_load_model("stories260K.gguf")};
    sm_tree *pair = new_tree(twins, 2, 512, 25);
    sm_tree_params p = tree_params(0.05f, 3, 8, 25);
    sm_tree_result one, two;
    expand(f->tree, PREFIX, &p, &one);
    expand(pair, PREFIX, &p, &two);
    /* Each twin decodes with half the threads: ggml's per-thread chunking
     * can move the last bits of a logit (seen: 1e-6 relative on some CPUs). */
    assert_same_suggestions(&one, &two, 1e-5);
    sm_tree_result_free(&one);
    sm_tree_result_free(&two);
    sm_tree_free(pair);

    sm_model *mixed[2] = {twins[0], tu_load_model("llama2xs-salty-280K.gguf")};
    sm_tree *mix = new_tree(mixed, 2, 512, 25);
    sm_tree_result r;
    expand(mix, PREFIX, &p, &r);
    check_tree(&r, &p);
    sm_session_params sp = sm_session_default_params();
    sp.n_threads = 1;
    sp.n_ctx = 512;
    sm_error err = {0};
    sm_session *s[2] = {sm_session_new(mixed[0], &sp, &err), sm_session_new(mixed[1], &sp, &err)};
    assert_non_null(s[0]);
    assert_non_null(s[1]);
    double p_model[2][64];
    int32_t n_first = 0;
    for (int m = 0; m < 2; m++) {
        assert_int_equal(sm_session_feed_text(s[m], PREFIX, true), SM_OK);
        n_first = 0;
        for (int32_t i = 0; i < r.n_nodes; i++)
            if (r.nodes[i].depth == 1)
                p_model[m][n_first++] = prob_of(sm_session_logits(s[m]), sm_model_n_vocab(mixed[m]), r.nodes[i].token);
    }
    assert_true(n_first >= 2);
    bool models_disagree = false;
    for (int32_t i = 0, k = 0; i < r.n_nodes; i++) {
        if (r.nodes[i].depth != 1) continue;
        assert_true(fabs(r.nodes[i].prob - (p_model[0][k] + p_model[1][k]) / 2) < 1e-4);
        models_disagree |= fabs(p_model[0][k] - p_model[1][k]) > 0.01;
        k++;
    }
    assert_true(models_disagree);
    sm_session_free(s[0]);
    sm_session_free(s[1]);
    sm_tree_result_free(&r);
    sm_tree_free(mix);
    sm_model_free(twins[0]);
    sm_model_free(twins[1]);
    sm_model_free(mixed[1]);
}

static void test_vocabulary_mismatch_is_rejected(void **state) {
    fixture *f = *state;
    sm_model *other = tu_load_model("aidreams260K.gguf");
    sm_model *models[2] = {f->model, other};
    sm_error err = {0};
    assert_null(sm_tree_new(models, 2, 512, 1, 25, &err));
    assert_int_equal(err.status, SM_ERR_VOCAB_MISMATCH);
    assert_non_null(strstr(err.message, "aidreams260K.gguf"));
    assert_non_null(strstr(err.message, "vocabulary"));
    sm_model_free(other);
}

/* A prefix that leaves no room for max_depth tokens is refused before
 * anything is decoded; the tree stays usable. */
static void test_prefix_longer_than_the_context(void **state) {
    fixture *f = *state;
    sm_tree *small = new_tree(&f->model, 1, 256, 8);
    const uint32_t n_ctx = sm_tree_n_ctx(small);
    char *story = malloc(20000);
    story[0] = '\0';
    for (int i = 0; i < 200; i++) strcat(story, "Once upon a time, there was a cat. ");
    sm_tree_params p = tree_params(0.2f, 3, 8, 8);
    sm_tree_result r;
    assert_int_equal(sm_tree_expand(small, story, &p, &r), SM_ERR_PROMPT_TOO_LONG);
    assert_non_null(strstr(sm_tree_last_error(small), "context"));
    assert_int_equal(r.n_suggestions, 0);
    assert_null(r.suggestions);

    /* The boundary: the prefix plus max_depth tokens must fit exactly. */
    sm_token tokens[64];
    const int32_t n = tu_tokenize(f->model, PREFIX, true, false, tokens, 64);
    sm_tree_params fits = tree_params(1.0f, 1, (int32_t)n_ctx - n, 8);
    fits.stop_chars = "";
    sm_tree_params too_deep = fits;
    too_deep.max_depth++;
    assert_int_equal(sm_tree_expand(small, PREFIX, &too_deep, &r), SM_ERR_PROMPT_TOO_LONG);
    expand(small, PREFIX, &fits, &r);
    assert_int_equal(r.n_suggestions, 1);
    assert_int_equal(r.suggestions[0].n_tokens, fits.max_depth);
    sm_tree_result_free(&r);
    free(story);
    sm_tree_free(small);
}

/* A tree too big for the context's cells fails clearly, and the next
 * expansion works as if nothing had happened. */
static void test_context_too_small_for_the_tree(void **state) {
    fixture *f = *state;
    sm_tree *small = new_tree(&f->model, 1, 256, 64);
    sm_tree_params deep = tree_params(0.3f, 2, 240, 64);
    deep.stop_chars = "";
    sm_tree_result r;
    assert_int_equal(sm_tree_expand(small, PREFIX, &deep, &r), SM_ERR_CONTEXT);
    assert_non_null(strstr(sm_tree_last_error(small), "no room left in the context"));
    assert_int_equal(r.n_nodes, 0);

    sm_tree_params p = tree_params(0.05f, 3, 8, 25);
    sm_tree_result after, expected;
    expand(small, PREFIX, &p, &after);
    expand(f->tree, PREFIX, &p, &expected);
    assert_same_suggestions(&after, &expected, 1e-4);
    sm_tree_result_free(&after);
    sm_tree_result_free(&expected);
    sm_tree_free(small);
}

/* Later calls decode only what changed in the prefix, and give what a new
 * tree gives, however many calls with other settings came before. */
static void test_prefix_is_reused(void **state) {
    fixture *f = *state;
    sm_tree_params p = tree_params(0.05f, 3, 8, 25);
    sm_tree_result r;
    for (int i = 0; i < 12; i++) { /* leave plenty of history behind */
        sm_tree_params q = tree_params(0.01f + 0.02f * (float)i, 1 + i % 4, 3 + i, 5 + 3 * i);
        q.batched = i % 2;
        expand(f->tree, i % 3 ? PREFIX : "The dog ran", &q, &r);
        sm_tree_result_free(&r);
    }
    expand(f->tree, PREFIX, &p, &r);
    const int32_t n = r.n_prefix_tokens;
    sm_tree_result_free(&r);

    const char *longer = "Once upon a time, there was a little girl";
    expand(f->tree, longer, &p, &r);
    assert_int_equal(r.n_prefix_reused, n);
    sm_tree *fresh = new_tree(&f->model, 1, 512, 25);
    sm_tree_result expected;
    expand(fresh, longer, &p, &expected);
    assert_int_equal(expected.n_prefix_reused, 0);
    assert_same_suggestions(&r, &expected, 1e-4);
    sm_tree_result_free(&r);

    expand(f->tree, longer, &p, &r);
    assert_int_equal(r.n_prefix_reused, r.n_prefix_tokens - 1);
    assert_same_suggestions(&r, &expected, 1e-4);
    sm_tree_result_free(&r);
    sm_tree_result_free(&expected);
    sm_tree_free(fresh);
}

/* Stop characters that open a suggestion do not end it. */
static void test_leading_stop_characters_continue(void **state) {
    fixture *f = *state;
    sm_tree_params p = sm_tree_default_params();
    sm_tree_result r;
    expand(f->tree, "Once upon a time", &p, &r); /* the model goes on with "," */
    check_tree(&r, &p);
    assert_int_equal(r.suggestions[0].text[0], ',');
    assert_true(r.suggestions[0].n_tokens > 1);
    assert_int_equal(r.suggestions[0].end, SM_TREE_END_STOP_CHAR);
    sm_tree_result_free(&r);
}

/* A chat model ends its answer with an end-of-generation token. */
static void test_end_of_generation_ends_a_beam(void **state) {
    (void)state;
    sm_model *chat = tu_load_model("cardputer-chat-3M.gguf");
    sm_tree *t = new_tree(&chat, 1, 256, 8);
    sm_tree_params p = tree_params(0.3f, 2, 24, 8);
    p.stop_chars = NULL;
    sm_tree_result r;
    expand(t, "User: Hi\nBot:", &p, &r);
    check_tree(&r, &p);
    bool found = false;
    for (int32_t i = 0; i < r.n_suggestions; i++) {
        const sm_suggestion *s = &r.suggestions[i];
        if (s->end != SM_TREE_END_EOG) continue;
        found = true;
        assert_true(llama_vocab_is_eog(llama_model_get_vocab(sm_model_llama(chat)), s->tokens[s->n_tokens - 1]));
    }
    assert_true(found);
    sm_tree_result_free(&r);
    sm_tree_free(t);
    sm_model_free(chat);
}

static void test_bad_parameters_are_named(void **state) {
    fixture *f = *state;
    struct {
        const char *field;
        sm_tree_params p;
    } cases[] = {
        {"max_depth", sm_tree_default_params()},   {"beam_limit", sm_tree_default_params()},
        {"cutoff", sm_tree_default_params()},      {"multiplier", sm_tree_default_params()},
        {"split_limit", sm_tree_default_params()}, {"stop_chars", sm_tree_default_params()},
        {"beam_limit", sm_tree_default_params()},
    };
    cases[0].p.max_depth = 0;
    cases[1].p.beam_limit = 0;
    cases[2].p.cutoff = 1.5f;
    cases[3].p.multiplier = NAN;
    cases[4].p.split_limit = -1;
    cases[5].p.stop_chars = "\xc3\xa9";
    cases[6].p.beam_limit = 65; /* the fixture's tree holds 64 */
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        sm_tree_result r;
        assert_int_equal(sm_tree_expand(f->tree, PREFIX, &cases[i].p, &r), SM_ERR_INVALID_ARGUMENT);
        if (!strstr(sm_tree_last_error(f->tree), cases[i].field))
            fail_msg("'%s' does not name %s", sm_tree_last_error(f->tree), cases[i].field);
        assert_int_equal(r.n_nodes, 0);
    }
    sm_tree_params p = sm_tree_default_params();
    sm_tree_result r;
    assert_int_equal(sm_tree_expand(f->tree, NULL, &p, &r), SM_ERR_INVALID_ARGUMENT);

    sm_error err = {0};
    assert_null(sm_tree_new(&f->model, 1, 512, 1, 0, &err));
    assert_int_equal(err.status, SM_ERR_INVALID_ARGUMENT);
    assert_null(sm_tree_new(&f->model, 1, 512, 1, 256, &err));
    assert_non_null(strstr(err.message, "max_beam_limit"));
    assert_null(sm_tree_new(NULL, 0, 512, 1, 8, &err));
    assert_int_equal(err.status, SM_ERR_INVALID_ARGUMENT);
}

/* A plain beam search: width 1 is greedy decoding; width 4 returns 4
 * complete beams of n tokens, best first, by the sum of ln p. */
static void test_plain_beam_search(void **state) {
    fixture *f = *state;
    sm_tree_params p = sm_beam_search_params(1, 10);
    sm_tree_result r;
    expand(f->tree, PREFIX, &p, &r);
    assert_int_equal(r.n_suggestions, 1);
    sm_session_params sp = sm_session_default_params();
    sp.n_ctx = 512;
    sp.n_threads = 1;
    sm_error err = {0};
    sm_session *s = sm_session_new(f->model, &sp, &err);
    assert_non_null(s);
    sm_gen_params gp = tu_greedy_params(10);
    gp.sampling.repeat_penalty = 1.0f;
    gp.stop_at_bos = false;
    sm_result g;
    assert_int_equal(sm_session_generate(s, PREFIX, &gp, &g), SM_OK);
    assert_int_equal(r.suggestions[0].n_tokens, g.n_tokens);
    assert_memory_equal(r.suggestions[0].tokens, g.tokens, sizeof(sm_token) * (size_t)g.n_tokens);
    sm_result_free(&g);
    sm_session_free(s);
    sm_tree_result_free(&r);

    p = sm_beam_search_params(4, 10);
    expand(f->tree, PREFIX, &p, &r);
    check_tree(&r, &p);
    assert_true(r.n_suggestions >= 1 && r.n_suggestions <= 4);
    assert_true(r.max_live_beams <= 4);
    for (int32_t i = 0; i < r.n_suggestions; i++) {
        double lp = 0;
        for (int32_t k = 0; k < r.suggestions[i].n_tokens; k++) lp += log(r.suggestions[i].probs[k]);
        assert_true(fabs(lp - r.suggestions[i].score) < 1e-6);
        if (r.suggestions[i].end != SM_TREE_END_EOG) assert_int_equal(r.suggestions[i].n_tokens, 10);
    }
    sm_tree_result_free(&r);
}

/* Beam search with activation scoring, in a tree that observes layers:
 * with weights 0 it is the plain search (observing changes nothing); with
 * weights each beam's score is its sum of ln p plus the (never positive)
 * stability and focus terms, and some of them are not 0; an unobserved
 * tree refuses the weights. */
static void test_beam_search_with_activation_scoring(void **state) {
    fixture *f = *state;
    int32_t layers[] = {1, -1};
    sm_error err = {0};
    sm_tree *observed = sm_tree_new_observed(&f->model, 1, 512, 1, 8, layers, 2, true, &err);
    if (!observed) fail_msg("%s", err.message);
    sm_tree_params p = sm_beam_search_params(4, 8);
    sm_tree_result plain, seen;
    expand(f->tree, PREFIX, &p, &plain);
    expand(observed, PREFIX, &p, &seen);
    assert_int_equal(plain.n_suggestions, seen.n_suggestions);
    for (int32_t i = 0; i < plain.n_suggestions; i++) assert_string_equal(plain.suggestions[i].text, seen.suggestions[i].text);
    sm_tree_result_free(&seen);

    p.stability_weight = 0.3f;
    p.focus_weight = 0.2f;
    expand(observed, PREFIX, &p, &seen);
    int32_t n_adjusted = 0;
    for (int32_t i = 0; i < seen.n_suggestions; i++) {
        double lp = 0;
        for (int32_t k = 0; k < seen.suggestions[i].n_tokens; k++) lp += log(seen.suggestions[i].probs[k]);
        double extra = seen.suggestions[i].score - lp;
        assert_true(extra <= 1e-9);
        n_adjusted += extra < -1e-6;
        if (i > 0) assert_true(seen.suggestions[i - 1].score >= seen.suggestions[i].score);
    }
    assert_true(n_adjusted > 0);
    sm_tree_result_free(&seen);
    sm_tree_result_free(&plain);

    assert_int_equal(sm_tree_expand(f->tree, PREFIX, &p, &seen), SM_ERR_INVALID_ARGUMENT);
    assert_non_null(strstr(sm_tree_last_error(f->tree), "observes layers"));
    p.stability_weight = -1.0f;
    assert_int_equal(sm_tree_expand(observed, PREFIX, &p, &seen), SM_ERR_INVALID_ARGUMENT);
    sm_tree_free(observed);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_limits_hold),
        cmocka_unit_test(test_beam_limit_is_never_exceeded),
        cmocka_unit_test(test_without_auto_stop_every_suggestion_reaches_max_depth),
        cmocka_unit_test(test_first_children_are_greedy),
        cmocka_unit_test(test_probabilities_match_a_plain_session),
        cmocka_unit_test(test_batched_equals_beam_by_beam),
        cmocka_unit_test(test_multiplier_scales_the_cutoff),
        cmocka_unit_test(test_sum_of_probabilities),
        cmocka_unit_test(test_mixing_models),
        cmocka_unit_test(test_vocabulary_mismatch_is_rejected),
        cmocka_unit_test(test_prefix_longer_than_the_context),
        cmocka_unit_test(test_context_too_small_for_the_tree),
        cmocka_unit_test(test_prefix_is_reused),
        cmocka_unit_test(test_leading_stop_characters_continue),
        cmocka_unit_test(test_end_of_generation_ends_a_beam),
        cmocka_unit_test(test_bad_parameters_are_named),
        cmocka_unit_test(test_plain_beam_search),
        cmocka_unit_test(test_beam_search_with_activation_scoring),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
