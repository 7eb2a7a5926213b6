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
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/select.h>
#include <unistd.h>

#include <readline/history.h>
#include <readline/readline.h>

typedef struct line_reader {
    bool use_readline;
    bool interrupted; /* Ctrl-C on an empty line: leave, as a shell does */
    char *buf;      /* getline's buffer */
    size_t cap;
} line_reader;

/*
 * The prompt reads with readline's callback interface so that Ctrl-C is
 * ours: it clears a line being typed, and on an empty line it leaves
 * (exit 130), as a shell or Python's REPL does. readline's own signal
 * handling is off; SIGINT only sets a flag that interrupts select().
 */
static volatile sig_atomic_t prompt_sigint;
static char *completed_line;
static bool line_done;

static void on_prompt_sigint(int sig) {
    (void)sig;
    prompt_sigint = 1;
}

static void on_line(char *line) {
    completed_line = line;
    line_done = true;
    rl_callback_handler_remove();
}

static char *readline_interruptible(line_reader *r) {
    struct sigaction action, previous;
    memset(&action, 0, sizeof action);
    action.sa_handler = on_prompt_sigint; /* no SA_RESTART: select() returns EINTR */
    sigemptyset(&action.sa_mask);
    sigaction(SIGINT, &action, &previous);
    rl_catch_signals = 0;
    prompt_sigint = 0;
    line_done = false;
    completed_line = NULL;
    rl_callback_handler_install("> ", on_line);
    FILE *out = rl_outstream ? rl_outstream : stdout;
    while (!line_done) {
        if (prompt_sigint) {
            prompt_sigint = 0;
            if (rl_end == 0) { /* nothing typed: leave */
                rl_callback_handler_remove();
                fputc('\n', out);
                r->interrupted = true;
                break;
            }
            rl_replace_line("", 0); /* clear what was typed, prompt again */
            fputs("^C\n", out);
            rl_on_new_line();
            rl_redisplay();
            continue;
        }
        fd_set fds;
        FD_ZERO(&fds);
        FD_SET(fileno(rl_instream ? rl_instream : stdin), &fds);
        int ready = select(fileno(rl_instream ? rl_instream : stdin) + 1, &fds, NULL, NULL, NULL);
        if (ready < 0 && errno == EINTR) continue;
        if (ready < 0) {
            rl_callback_handler_remove();
            break;
        }
        rl_callback_read_char();
    }
    sigaction(SIGINT, &previous, NULL);
    return completed_line;
}

/* The next line without its line ending, or NULL at end of input (or on
 * Ctrl-C at an empty prompt: r->interrupted). The line stays valid until
 * the next call. */
static char *read_line(line_reader *r) {
    if (r->use_readline) {
        free(r->buf);
        r->buf = readline_interruptible(r);
        if (!r->buf && !r->interrupted) fputc('\n', rl_outstream ? rl_outstream : stdout); /* Ctrl-D */
        else if (r->buf && *r->buf) add_history(r->buf);
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
    if (strcasecmp(line, "exit") == 0 || strcasecmp(line, "quit") == 0) return COMMAND_QUIT;
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
    sm_chat_params cp = app->opt->chat;
    cp.template_source = app->chat_template_text;
    sm_chat *chat = sm_chat_new(app->session, &cp, &err);
    if (!chat) {
        cli_error("%s", err.message);
        return 1;
    }
    line_reader reader = {.use_readline = isatty(STDIN_FILENO)};
    /* The prompt and the echo stay off stdout unless it is the terminal
     * and carries plain text. */
    if (reader.use_readline && (app->opt->json_stream || !isatty(STDOUT_FILENO)))
        rl_outstream = stderr;
    if (!app->opt->quiet)
        fprintf(stderr, "[chat] format: %s.%s\n", sm_chat_template_used(chat),
                reader.use_readline ? " Type /help for commands, exit or quit to leave." : "");

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
    if (reader.interrupted && exit_code == 0) exit_code = 128 + SIGINT;
    line_reader_free(&reader);
    sm_chat_free(chat);
    return exit_code;
}
