/*
 * A complete user-written backtracking operator: it removes any token that
 * would make the generated text contain a banned word. It keeps the text it
 * was shown as state and rolls it back exactly on every backtrack.
 *
 *   custom_operator MODEL WORD [PROMPT]
 */
#include "selfmod.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct word_filter {
    const char *word;
    char text[8192];       /* everything shown so far, candidate included */
    size_t ends[2048];     /* text length after each token shown          */
    int32_t n;
} word_filter;

static int32_t word_filter_decide(void *state, const sm_token_view *view) {
    word_filter *f = state;
    size_t len = f->n ? f->ends[f->n - 1] : 0;
    size_t piece = strlen(view->piece);
    if (len + piece >= sizeof f->text || f->n == 2048) return 0; /* full: stop judging */
    memcpy(f->text + len, view->piece, piece + 1);
    f->ends[f->n++] = len + piece;
    /* look only where the new piece could complete the word */
    size_t from = len >= strlen(f->word) ? len - strlen(f->word) + 1 : 0;
    return strstr(f->text + from, f->word) ? 1 : 0;
}

static void word_filter_on_backtrack(void *state, int32_t n_removed) {
    word_filter *f = state;
    f->n = n_removed < f->n ? f->n - n_removed : 0;
    f->text[f->n ? f->ends[f->n - 1] : 0] = '\0';
}

static void word_filter_reset(void *state) {
    word_filter *f = state;
    f->n = 0;
    f->text[0] = '\0';
}

static const sm_operator_vtable word_filter_vt = {
    .name = "word_filter",
    .decide = word_filter_decide,
    .on_backtrack = word_filter_on_backtrack,
    .reset = word_filter_reset,
    .free_state = free,
};

int main(int argc, char **argv) {
    if (argc < 3) {
        fprintf(stderr, "usage: %s MODEL WORD [PROMPT]\n", argv[0]);
        return 2;
    }
    sm_set_llama_logging(false);
    sm_error err = {0};
    sm_model *model = sm_model_load(argv[1], NULL, &err);
    if (!model) {
        fprintf(stderr, "error: %s\n", err.message);
        return 1;
    }
    sm_session *session = sm_session_new(model, NULL, &err);
    if (!session) {
        fprintf(stderr, "error: %s\n", err.message);
        sm_model_free(model);
        return 1;
    }
    word_filter *state = calloc(1, sizeof *state);
    state->word = argv[2];
    sm_operator *op = sm_operator_new(&word_filter_vt, state);

    sm_gen_params params = sm_gen_default_params();
    params.n_predict = 80;
    params.sampling.temperature = 0.0f; /* greedy: the filter alone changes the text */
    params.backtrack.operators = &op;
    params.backtrack.n_operators = 1;
    sm_result result;
    const char *prompt = argc > 3 ? argv[3] : "Once upon a time";
    int rc = 0;
    if (sm_session_generate(session, prompt, &params, &result) == SM_OK) {
        printf("%s\n", result.text);
        fprintf(stderr, "backtracks: %d\n", result.n_backtracks);
        sm_result_free(&result);
    } else {
        fprintf(stderr, "error: %s\n", sm_session_last_error(session));
        rc = 1;
    }
    sm_operator_free(op);
    sm_session_free(session);
    sm_model_free(model);
    return rc;
}
