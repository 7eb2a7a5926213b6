/* Embeddings (sm_embed): one pooled, normalised vector per input; text and
 * its token ids agree; inputs are independent of each other; bad inputs
 * are refused with what was wrong. */
#include "testutil.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

static void test_embeddings(void **state) {
    (void)state;
    sm_model *m = tu_load_model("stories260K.gguf");
    const int32_t d = sm_model_n_embd(m);
    assert_int_equal(d, 64);
    const char *texts[3] = {"Once upon a time", "The dog ran home", "Once upon a time"};
    float *v = malloc(sizeof *v * 3 * (size_t)d);
    int32_t n_tokens[3];
    sm_error err = {0};
    assert_int_equal(sm_embed(m, texts, 3, 1, v, n_tokens, &err), SM_OK);
    for (int i = 0; i < 3; i++) {
        double norm = 0;
        for (int32_t j = 0; j < d; j++) norm += (double)v[i * d + j] * v[i * d + j];
        assert_true(fabs(norm - 1.0) < 1e-4);
        assert_true(n_tokens[i] > 1);
    }
    /* the same text gives the same vector wherever it stands; another text another one */
    assert_true(tu_max_abs_diff(v, v + 2 * d, d) < 1e-6f);
    assert_true(tu_max_abs_diff(v, v + d, d) > 1e-3f);
    /* its token ids give what the text gives */
    sm_token toks[32];
    int32_t n = tu_tokenize(m, texts[1], true, false, toks, 32);
    const sm_token *ptr = toks;
    float w[64];
    assert_int_equal(sm_embed_tokens(m, &ptr, &n, 1, 1, w, &err), SM_OK);
    assert_true(tu_max_abs_diff(w, v + d, d) < 1e-6f);
    /* refused: a token outside the vocabulary, an empty input, an input past the training context */
    sm_token bad = 100000;
    const sm_token *bad_ptr = &bad;
    int32_t one = 1, zero = 0;
    assert_int_equal(sm_embed_tokens(m, &bad_ptr, &one, 1, 1, w, &err), SM_ERR_INVALID_ARGUMENT);
    assert_non_null(strstr(err.message, "not in the vocabulary"));
    assert_int_equal(sm_embed_tokens(m, &ptr, &zero, 1, 1, w, &err), SM_ERR_INVALID_ARGUMENT);
    int32_t n_long = sm_model_n_ctx_train(m) + 1;
    sm_token *longer = calloc((size_t)n_long, sizeof *longer);
    for (int32_t i = 0; i < n_long; i++) longer[i] = toks[i % n];
    const sm_token *long_ptr = longer;
    assert_int_equal(sm_embed_tokens(m, &long_ptr, &n_long, 1, 1, w, &err), SM_ERR_PROMPT_TOO_LONG);
    free(longer);
    free(v);
    sm_model_free(m);
}

int main(void) {
    sm_set_llama_logging(false);
    const struct CMUnitTest tests[] = {cmocka_unit_test(test_embeddings)};
    return cmocka_run_group_tests(tests, NULL, NULL);
}
