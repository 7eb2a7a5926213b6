/* Strategies: how one output is generated (see eval --help). */
#ifndef EVAL_STRATEGY_H
#define EVAL_STRATEGY_H

#include "selfmod.h"

#include <stdbool.h>
#include <stddef.h>

#define EVAL_MAX_OPERATORS 8

typedef struct eval_strategy {
    const char *spec;            /* as given; not owned                    */
    sm_gen_params gen;           /* operators point into `operators`       */
    sm_operator *operators[EVAL_MAX_OPERATORS];
    int32_t n_operators;
    bool fused;                  /* generates with every --models model    */
    bool deterministic;          /* the same output whatever the seed      */
} eval_strategy;

/* Parses "base[:key=value,...]+op:NAME[:...]+fusion:MODE[:...]". On failure
 * writes a message naming the part that is wrong and returns -1. */
int eval_strategy_parse(const char *spec, eval_strategy *out, char *err, size_t err_size);
void eval_strategy_free(eval_strategy *s);

#endif
