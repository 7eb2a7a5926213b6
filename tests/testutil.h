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
/* Greedy, no policy, no operators: the plain baseline for comparisons. */
sm_gen_params tu_greedy_params(int32_t n_predict);
#endif
