/*
 * Interactive mode: a chat through the library's chat API. On a terminal
 * lines are read with GNU readline (editing, history); from a pipe they
 * are read plainly and no prompt is printed, so a script can drive it.
 */
#include "interactive.h"

#include "generate.h"
#include "intro_run.h"
#include "lib_extras.h"

#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <readline/history.h>
#include <readline/readline.h>

typedef struct line_reader {
    bool use_readline;
    char *buf;      /* getline's buffer */
    size_t cap;
} line_reader;

/* The next line without its line ending, or NULL at end of input. The
 * line stays valid until the next call. */
static char *read_line(line_reader *r) {
    if (r->use_readline) {
        free(r->buf);
        r->buf = readline("> ");
        if (!r->buf) fputc('\n', rl_outstream ? rl_outstream : stdout); /* Ctrl-D */
        else if (*r->buf) add_history(r->buf);
        return r->buf;
    }
    ssize_t n = getline(&r->buf, &r->cap, stdin);
    if (n < 0) return NULL;
    while (n > 0 && (r->buf[n - 1] == '\n' || r->buf[n - 1] == '\r')) r->buf[--n] = '\0';
    return r->buf;
}

static void line_reader_free(line_reader *r) { free(r->buf); }

/* The text between leading and trailing white space, in place. */
static char *trim(char *s) {
    while (isspace((unsigned char)*s)) s++;
    size_t n = strlen(s);
    while (n > 0 && isspace((unsigned char)s[n - 1])) s[--n] = '\0';
    return s;
}

static void print_help(FILE *out) {
    fputs("commands:\n"
          "  /reset   forget the conversation\n"
          "  /stats   what the last turn re-used, decoded and dropped\n"
          "  /trace   how the tracked statistics moved across the turns\n"
          "  /help    this list\n"
          "  exit, quit (or end of input) to leave\n",
          out);
}

static void print_stats(const cli_app *app, const sm_chat *chat) {
    sm_chat_turn_info info = sm_chat_last_turn_info(chat);
    if (app->opt->json_stream) {
        printf("{\"type\":\"stats\",\"n_reused\":%d,\"n_prompt_decoded\":%d,"
               "\"n_dropped_turns\":%d,\"n_messages\":%d,\"n_past\":%d}\n",
               info.n_reused, info.n_prompt_decoded, info.n_dropped_turns,
               sm_chat_n_messages(chat), sm_session_n_past(app->session));
    } else {
        printf("[stats] n_reused=%d n_prompt_decoded=%d n_dropped_turns=%d n_messages=%d "
               "n_past=%d n_ctx=%d template=%s\n",
               info.n_reused, info.n_prompt_decoded, info.n_dropped_turns,
               sm_chat_n_messages(chat), sm_session_n_past(app->session),
               sm_session_n_ctx(app->session), sm_chat_template_used(chat));
    }
    fflush(stdout);
}

typedef enum { COMMAND_NONE, COMMAND_HANDLED, COMMAND_QUIT } command_result;

static command_result run_command(cli_app *app, sm_chat *chat, const char *line) {
    if (strcmp(line, "exit") == 0 || strcmp(line, "quit") == 0) return COMMAND_QUIT;
    if (strcmp(line, "/reset") == 0) {
        sm_chat_reset(chat);
        if (!app->opt->quiet) fputs("[chat] conversation reset\n", stderr);
        return COMMAND_HANDLED;
    }
    if (strcmp(line, "/stats") == 0) {
        print_stats(app, chat);
        return COMMAND_HANDLED;
    }
    if (strcmp(line, "/trace") == 0) {
        cli_intro_print_trace(app, app->opt->json_stream ? stderr : stdout);
        return COMMAND_HANDLED;
    }
    if (strcmp(line, "/help") == 0) {
        print_help(app->opt->json_stream ? stderr : stdout);
        return COMMAND_HANDLED;
    }
    if (line[0] == '/' && isalpha((unsigned char)line[1])) {
        fprintf(stderr, "[chat] unknown command '%s' (/help lists them)\n", line);
        return COMMAND_HANDLED;
    }
    return COMMAND_NONE;
}

int cli_interactive(cli_app *app) {
    sm_error err = {0};
    sm_chat *chat = sm_chat_new(app->session, &app->opt->chat, &err);
    if (!chat) {
        cli_error("%s", err.message);
        return 1;
    }
    line_reader reader = {.use_readline = isatty(STDIN_FILENO)};
    /* The prompt and the echo stay off stdout unless it is the terminal
     * and carries plain text. */
    if (reader.use_readline && (app->opt->json_stream || !isatty(STDOUT_FILENO)))
        rl_outstream = stderr;
    if (reader.use_readline && !app->opt->quiet)
        fprintf(stderr, "[chat] template: %s. Type /help for commands, exit or quit to leave.\n",
                sm_chat_template_used(chat));

    int exit_code = 0;
    char *raw;
    while ((raw = read_line(&reader)) != NULL) {
        char *line = trim(raw);
        if (!*line) continue;
        command_result command = run_command(app, chat, line);
        if (command == COMMAND_QUIT) break;
        if (command == COMMAND_HANDLED) continue;
        /* A failed turn (say, a message too long for the context) leaves
         * the chat usable; the exit code still reports it. */
        if (cli_generate(app, chat, line) == GENERATE_FAILED) exit_code = 1;
        else if (!app->opt->quiet) cli_intro_turn_summary(app, stderr);
    }
    line_reader_free(&reader);
    sm_chat_free(chat);
    return exit_code;
}
