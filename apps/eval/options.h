/* The flags of `llama_selfmod eval`. */
#ifndef EVAL_OPTIONS_H
#define EVAL_OPTIONS_H

#include "selfmod.h"

#include <stdbool.h>
#include <stdio.h>

#define EVAL_MAX_STRATEGIES 64
#define EVAL_MAX_STOPS 16
#define EVAL_MAX_JUDGES 4

typedef struct eval_options {
    const char *prompts_path;
    const char *model_path;            /* NULL: the first of --models      */
    const char *model_paths[SM_MAX_MODELS]; /* --models, for fusion:      */
    int32_t n_models;
    char *models_buffer;               /* owns the --models paths          */
    const char *judge_paths[EVAL_MAX_JUDGES]; /* --judge A,B: the panel    */
    int32_t n_judges;
    char *judges_buffer;               /* owns the --judge paths           */
    char *strategies[EVAL_MAX_STRATEGIES]; /* one spec each, owned      */
    int32_t n_strategies;
    const char *baseline;              /* a strategy spec                  */
    int32_t n_predict;
    int32_t n_seeds;
    uint64_t first_seed;
    int32_t limit;                     /* prompts; 0 = all                 */
    uint32_t n_ctx;                    /* 0 = the models' training context */
    int32_t n_threads;
    const char *rpc_servers;     /* --rpc: every model's layers there */
    bool no_repack;              /* --no-repack                       */
    int32_t n_parallel;                /* generations decoded together (1) */
    const char *stops[EVAL_MAX_STOPS];
    int32_t n_stops;
    const char *csv_path, *json_path, *chart_path;
    bool quiet;
} eval_options;

typedef enum { EVAL_PARSE_RUN, EVAL_PARSE_EXIT_OK, EVAL_PARSE_ERROR } eval_parse_result;

/* Messages go to err. On EVAL_PARSE_RUN, free with eval_options_free. */
eval_parse_result eval_parse_args(int argc, char **argv, eval_options *opt, FILE *err);
void eval_options_free(eval_options *opt);
void eval_print_help(FILE *out);

#endif
