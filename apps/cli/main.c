/*
 * llama_selfmod: a thin front-end over the library. It parses the flags,
 * then runs the steps of setup.h: everything is checked before anything
 * loads; all generation is the library's.
 */
#include "common/flags.h"
#include "app.h"
#include "eval/eval.h"
#include "tune/tune.h"
#include "setup.h"
#include "server/server.h"
#include "steer/steer.h"

#include <errno.h>
#include <locale.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static bool wants_operator_help(const cli_options *opt) {
    for (int32_t i = 0; i < opt->n_operator_specs; i++)
        if (strcmp(opt->operator_specs[i], "help") == 0) return true;
    return false;
}

/* Everything that can be refused is checked before the model loads. */
static int run_app(cli_app *app) {
    int code = cli_app_prepare(app);
    if (code != EXIT_SUCCESS) return code;
    if (!cli_app_load_models(app) || !cli_app_open_session(app) || !cli_app_ready(app)) return EXIT_FAILURE;
    return cli_app_run(app);
}

/* `llama_selfmod eval|serve|steer|tune ...` are subcommands living in
 * apps/eval, apps/server, apps/steer and apps/tune. */
static int run_subcommand(int argc, char **argv, bool *handled) {
    static const struct {
        const char *name;
        int (*main)(int, char **);
    } subcommands[] = {{"eval", eval_main}, {"serve", serve_main}, {"steer", steer_main}, {"tune", tune_main}};
    *handled = false;
    if (argc < 2) return 0;
    for (size_t i = 0; i < sizeof subcommands / sizeof *subcommands; i++) {
        if (strcmp(argv[1], subcommands[i].name) == 0) {
            *handled = true;
            return subcommands[i].main(argc - 1, argv + 1);
        }
    }
    return 0;
}

/* Whatever was printed must have reached stdout: a full disk or a closed
 * pipe is an error, not a success (--help > /dev/full). */
static int finish_stdout(int code) {
    errno = 0;
    if (fflush(stdout) != 0 || ferror(stdout)) {
        if (code == EXIT_SUCCESS || code == CLI_EXIT_USAGE)
            cli_error("cannot write to standard output: %s", errno ? strerror(errno) : "write error");
        return code == EXIT_SUCCESS ? EXIT_FAILURE : code;
    }
    return code;
}

static int run(int argc, char **argv);

int main(int argc, char **argv) {
    setlocale(LC_CTYPE, ""); /* character widths on the terminal */
    /* A closed pipe is a write error to report, not a silent death before
     * the generation is recorded. */
    signal(SIGPIPE, SIG_IGN);
    return finish_stdout(run(argc, argv));
}

static int run(int argc, char **argv) {
    bool handled;
    int sub = run_subcommand(argc, argv, &handled);
    if (handled) return sub;
    cli_options opt;
    cli_parse_outcome parsed = cli_parse_args(argc, argv, &opt, stderr);
    if (parsed != CLI_PARSE_RUN || wants_operator_help(&opt)) {
        if (parsed == CLI_PARSE_RUN) fputs(sm_operator_help(), stdout);
        cli_options_free(&opt);
        return parsed == CLI_PARSE_ERROR ? CLI_EXIT_USAGE : EXIT_SUCCESS;
    }

    cli_app app;
    memset(&app, 0, sizeof app);
    app.opt = &opt;
    app.gen = opt.gen;
    app.style.color = !opt.no_color && !getenv("NO_COLOR") && isatty(STDERR_FILENO);
    app.style.verbose = opt.verbose_events;

    app.out = stdout;
    int code = run_app(&app);
    cli_app_free_run(&app);
    cli_app_free_models(&app);
    cli_options_free(&opt);
    return code;
}
