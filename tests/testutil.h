/* Helpers shared by the cmocka test programs. */
#ifndef TESTUTIL_H
#define TESTUTIL_H
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>
#include "selfmod.h"

/* $SM_MODELS/name (../shared/models by default); fails the test with a
 * clear message when the file is missing. Returns a static buffer. */
const char *tu_model_path(const char *name);
/* Loads a shared model quietly; fails the test on error. */
sm_model *tu_load_model(const char *name);
/* Session parameters for tests: one thread (ctest runs two programs on the
 * two cores), context n_ctx. */
sm_session_params tu_session_params(uint32_t n_ctx);
/* A session over m (params NULL: tu_session_params(512)); fails the test on error. */
sm_session *tu_open_session(sm_model *m, const sm_session_params *params);
/* The largest |a[i] - b[i]|. */
float tu_max_abs_diff(const float *a, const float *b, int32_t n);
/* An operator that removes `count` tokens once, when it is shown the token
 * at generated position `position`. Free with sm_operator_free. */
sm_operator *tu_backtrack_once(int32_t position, int32_t count);
/* Tokenizes text into out[0..max); fails the test on error or overflow.
 * Returns the number of tokens. */
int32_t tu_tokenize(const sm_model *m, const char *text, bool add_special, bool parse_special, sm_token *out,
                    int32_t max);
/* Greedy, no policy, no operators: the plain baseline for comparisons. */
sm_gen_params tu_greedy_params(int32_t n_predict);
/* A batch of n_seq sequences over m (one thread); fails the test on error. */
sm_batch *tu_open_batch(sm_model *m, int32_t n_seq, uint32_t n_ctx_seq, uint32_t n_batch, bool kv_unified);
/* A session on one of the batch's sequences, context n_ctx; fails the test on error. */
sm_session *tu_batch_session(sm_model *m, sm_batch *batch, uint32_t n_ctx);
#endif
