/* What an evaluation shows: terminal tables, CSV, JSON and the SVG chart. */
#ifndef EVAL_REPORT_H
#define EVAL_REPORT_H

#include "eval/options.h"
#include "eval/prompts.h"
#include "eval/stats.h"
#include "eval/strategy.h"

#include <stdio.h>

typedef struct eval_report {
    const eval_options *opt;
    const char *command;              /* the command line, for the record */
    const char *model_description;
    const char *judge_description;    /* NULL: no judge                   */
    const eval_prompt_set *prompts;
    const eval_strategy *strategies;
    const eval_summary *summaries;    /* one per strategy                 */
    int32_t n_strategies;
    int32_t baseline;
    const eval_output *outputs;
    int32_t n_outputs;
    int32_t n_unjudged;               /* outputs too long for the judge    */
    double wall_seconds;
} eval_report;

void eval_print_tables(FILE *out, const eval_report *r);
/* Each writes the whole file to `f` and returns -1 on a write error. */
int eval_write_csv(FILE *f, const eval_report *r);
int eval_write_json(FILE *f, const eval_report *r);
int eval_write_chart(FILE *f, const eval_report *r);

#endif
