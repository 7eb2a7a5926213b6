/* Interactive mode: a chat on the terminal, or driven line by line
 * through a pipe. */
#ifndef CLI_INTERACTIVE_H
#define CLI_INTERACTIVE_H

#include "app.h"

/* Runs the chat until exit, quit or end of input. Returns the exit code. */
int cli_interactive(cli_app *app);

#endif
