/*
 * A run of llama_selfmod after its flags are parsed, in steps:
 *
 *   cli_app_prepare      operators, the prompt's form, the grammar, the
 *                        memory file, the introspection files: everything
 *                        that can be refused before a model loads
 *   cli_app_load_models  the models
 *   cli_app_open_session the session on them
 *   cli_app_ready        checks that need the model: the grammar, --prefill,
 *                        the control vector
 *   cli_app_run          the beam search, the one prompt or the chat
 *   cli_app_free_run     what prepare and ready made
 *   cli_app_free_models  the session and the models
 *
 * main runs them once; a binding (apps/embed) keeps the models and runs
 * prepare..free_run once per call. Each step prints its own error.
 */
#ifndef CLI_SETUP_H
#define CLI_SETUP_H

#include "app.h"

/* EXIT_SUCCESS, CLI_EXIT_USAGE (an --operator spec) or EXIT_FAILURE. */
int cli_app_prepare(cli_app *app);
bool cli_app_load_models(cli_app *app);
/* The session the flags ask for, on the loaded models. */
sm_session_params cli_app_session_params(const cli_app *app);
bool cli_app_open_session(cli_app *app);
bool cli_app_ready(cli_app *app);
/* The process's exit code for the run (128 + the signal when interrupted). */
int cli_app_run(cli_app *app);
void cli_app_free_run(cli_app *app);
void cli_app_free_models(cli_app *app);

#endif
