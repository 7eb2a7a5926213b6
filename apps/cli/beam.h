/* --beam-search W: a beam search (with activation scoring when asked)
 * instead of a sampled generation. */
#ifndef CLI_BEAM_H
#define CLI_BEAM_H

#include "app.h"

/* Runs it on app->prompt_text: the best beam's text on stdout (with
 * --json-stream every beam as a JSON line), a record in the memory file. */
int cli_beam_search(cli_app *app);

#endif
