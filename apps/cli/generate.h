/* One generation, from the library's events to every sink: the terminal
 * (streamed, erased on removals), plain stdout, --json-stream, the event
 * lines on stderr, and the memory file. */
#ifndef CLI_GENERATE_H
#define CLI_GENERATE_H

#include "app.h"

typedef enum generate_outcome {
    GENERATE_OK,
    GENERATE_INTERRUPTED, /* SIGINT, SIGTERM or SIGHUP: the text so far was
                             kept and logged; cli_interrupting_signal() says which */
    GENERATE_FAILED,      /* an error was printed                         */
} generate_outcome;

/* Generates from `input`: a prompt on the app's session when chat is NULL,
 * else the user's message in a chat turn. */
generate_outcome cli_generate(cli_app *app, sm_chat *chat, const char *input);

/* The signal that interrupted the last generation (0: none). */
int cli_interrupting_signal(void);

#endif
