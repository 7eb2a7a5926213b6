/* Outputs of an evaluation and the statistics over them. */
#ifndef EVAL_STATS_H
#define EVAL_STATS_H

#include "selfmod.h"

#include <stdbool.h>

typedef enum eval_metric {
    EVAL_REP_2,
    EVAL_REP_3,
    EVAL_REP_4,
    EVAL_DIVERSITY,
    EVAL_SEQ_REP_4,
    EVAL_DISTINCT_1,
    EVAL_DISTINCT_2,
    EVAL_LENGTH,
    EVAL_JUDGE_BPB,             /* the panel's mean                        */
    EVAL_JUDGE_1_BPB,           /* each judge of the panel                 */
    EVAL_JUDGE_2_BPB,
    EVAL_JUDGE_3_BPB,
    EVAL_JUDGE_4_BPB,
    EVAL_EXACT_MATCH,
    EVAL_CONTAINS_MATCH,
    EVAL_DECODED_PER_KEPT,
    EVAL_SAMPLED_PER_KEPT,
    EVAL_REMOVALS_PER_100,
    EVAL_TOKENS_PER_S,
    EVAL_N_METRICS,
} eval_metric;

const char *eval_metric_key(eval_metric m);   /* "rep_4": CSV and JSON   */
const char *eval_metric_label(eval_metric m); /* "rep-4": the table      */

/* One generation: a strategy on a prompt with a seed. */
typedef struct eval_output {
    int32_t strategy, prompt, seed_index;
    uint64_t seed;
    sm_token *tokens;           /* the kept generated tokens (owned)       */
    int32_t n_tokens;
    char *text;                 /* owned                                   */
    sm_stop_reason stop;
    int32_t n_prompt_tokens;
    int64_t n_decoded;          /* tokens decoded while generating         */
    int32_t n_sampled, n_retractions, n_backtracks;
    double t_generate_ms;
    double judge_bpb;           /* the panel's mean bits/byte; NaN: not judged */
    int64_t n_judged_bytes;     /* the text's bytes the judges scored       */
    double judge_each_bpb[4];   /* per judge of the panel; NaN: none       */
    int8_t exact, contains;     /* -1: the prompt has no reference         */
} eval_output;

void eval_output_free(eval_output *o);

typedef struct eval_estimate {
    double mean;     /* over seeds; NaN when undefined                       */
    double se;       /* standard error over seeds; NaN with fewer than 2     */
    int32_t n;       /* seeds with a defined value                           */
} eval_estimate;

/* The strategy minus the baseline, prompt by prompt. */
typedef struct eval_paired {
    double diff;     /* mean of the per-prompt differences                   */
    double se;       /* their standard error                                 */
    int32_t n;       /* prompts where both are defined                       */
    bool significant;/* |diff| > 2 se, with at least 2 prompts               */
} eval_paired;

typedef struct eval_summary {
    int32_t n_outputs, n_seeds, n_judged;
    eval_estimate metric[EVAL_N_METRICS];
    eval_paired paired[EVAL_N_METRICS];
    int32_t stops[SM_STOP_ERROR + 1];  /* outputs per stop reason           */
} eval_summary;

/* Summarises strategy `strategy` (seeds 0 .. n_seeds-1) and compares it
 * with `baseline` on each of n_prompts prompts. Returns -1 when out of
 * memory. */
int eval_summarize(const eval_output *outputs, int32_t n_outputs, int32_t strategy, int32_t n_seeds,
                   int32_t baseline, int32_t n_prompts, eval_summary *out);

#endif
