/*
 * What the introspection and intervention flags do at run time: the trace
 * file, the hidden-state file, control vectors, the inject file, the prompt
 * cache, and the per-turn statistics of interactive mode (/trace).
 */
#ifndef CLI_INTRO_RUN_H
#define CLI_INTRO_RUN_H

#include "app.h"

#include <stdio.h>

/* Before the model loads: reads the inject file and the control vectors,
 * opens the output files. Prints the error and returns false on failure. */
bool cli_intro_before_load(cli_app *app);
/* After the session exists: applies the control vector. */
bool cli_intro_after_load(cli_app *app);
/* --prompt-cache: feeds the prompt through the cache (and saves it when the
 * cache did not hold it); sets app->prompt_fed. */
bool cli_intro_prepare_prompt(cli_app *app);
/* Every event of every generation. */
void cli_intro_on_event(cli_app *app, const sm_event *event);
/* Interactive mode: one line on the turn just finished. */
void cli_intro_turn_summary(cli_app *app, FILE *out);
/* The /trace command: how the tracked statistics moved across turns. */
void cli_intro_print_trace(cli_app *app, FILE *out);
/* Closes the files; false (after printing) when one could not be finished. */
bool cli_intro_free(cli_app *app);

#endif
