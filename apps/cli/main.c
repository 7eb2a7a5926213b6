/*
 * llama_selfmod: a thin front-end over the library. It checks every input
 * before anything loads (flags, operators, the memory file), loads the
 * model, and runs one prompt or a chat; all generation is the library's.
 */
#include "common/flags.h"
#include "app.h"
#include "eval/eval.h"
#include "tune/tune.h"
#include "beam.h"
#include "generate.h"
#include "interactive.h"
#include "intro_run.h"
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

void cli_error(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    fputs("llama_selfmod: error: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
}

static bool wants_operator_help(const cli_options *opt) {
    for (int32_t i = 0; i < opt->n_operator_specs; i++)
        if (strcmp(opt->operator_specs[i], "help") == 0) return true;
    return false;
}

static bool create_operators(cli_app *app) {
    const cli_options *opt = app->opt;
    for (int32_t i = 0; i < opt->n_operator_specs; i++) {
        sm_error err = {0};
        sm_operator *op = sm_operator_from_spec(opt->operator_specs[i], &err);
        if (!op) {
            cli_error("--operator '%s': %s", opt->operator_specs[i], err.message);
            return false;
        }
        app->operators[app->n_operators++] = op;
    }
    app->gen.backtrack.operators = app->operators;
    app->gen.backtrack.n_operators = app->n_operators;
    return true;
}

static bool open_memory_file(cli_app *app) {
    if (!app->opt->memory_file) return true;
    sm_error err = {0};
    app->memlog = sm_memlog_open(app->opt->memory_file, &err);
    if (!app->memlog) {
        cli_error("%s (--memory-file; --no-memory disables it)", err.message);
        return false;
    }
    sm_memlog_set_format(app->memlog, app->opt->memory_format);
    return true;
}

static void show_load_progress(float progress, void *user_data) {
    (void)user_data;
    fprintf(stderr, "\rloading model: %3d%%", (int)(progress * 100.0f + 0.5f));
    fflush(stderr);
}

/*
 * A context longer than the model was trained for is cut to that length:
 * models with learned absolute positions (GPT-2 style, like the cardputer
 * chat model, 256 positions) abort inside llama.cpp past their last
 * position, and others degrade there anyway.
 */
static uint32_t context_size(const cli_app *app, uint32_t requested) {
    int32_t n_train = sm_model_n_ctx_train(app->model);
    if (n_train <= 0 || requested == 0 || requested <= (uint32_t)n_train) return requested;
    if (!app->opt->quiet && app->opt->ctx_size_given) /* the default is no request worth a warning */
        fprintf(stderr, "[selfmod] --ctx-size %u is longer than the %d tokens %s was trained on: using %d\n",
                requested, n_train, sm_model_path(app->model), n_train);
    return (uint32_t)n_train;
}

static bool load_model(cli_app *app) {
    const cli_options *opt = app->opt;
    sm_model_params mp = sm_model_default_params();
    mp.n_gpu_layers = opt->n_gpu_layers;
    bool show_progress = !opt->quiet && isatty(STDERR_FILENO);
    if (show_progress) mp.progress = show_load_progress;
    sm_error err = {0};
    const cli_fusion_options *fo = &opt->fusion;
    const char *const *paths = fo->n_models > 0 ? fo->model_paths : &opt->model_path;
    int32_t n_models = fo->n_models > 0 ? fo->n_models : 1;
    for (int32_t m = 0; m < n_models; m++) {
        app->models[m] = sm_model_load(paths[m], &mp, &err);
        if (show_progress) fputs("\r\033[K", stderr);
        if (!app->models[m]) {
            bool is_default = fo->n_models == 0 && strcmp(opt->model_path, CLI_DEFAULT_MODEL) == 0;
            cli_error("%s%s", err.message, is_default ? " (give a model with -m PATH)" : "");
            return false;
        }
        app->n_models++;
        size_t used = strlen(app->model_label);
        snprintf(app->model_label + used, sizeof app->model_label - used, "%s%s", m ? "," : "", paths[m]);
    }
    app->model = app->models[0];
    sm_session_params sp = opt->session;
    sp.n_ctx = context_size(app, sp.n_ctx);
    sp.fusion_align = fo->align;
    app->session = sm_session_new_fused(app->models, app->n_models, &sp, &err);
    if (!app->session) {
        cli_error("%s", err.message);
        return false;
    }
    return true;
}

static void print_settings(const cli_app *app) {
    char line[1024];
    format_settings(line, sizeof line, sm_model_description(app->model), &app->gen,
                    sm_session_n_ctx(app->session), app->style);
    fprintf(stderr, "%s\n", line);
}

static int run_single_prompt(cli_app *app) {
    if (!cli_intro_prepare_prompt(app)) return EXIT_FAILURE;
    switch (cli_generate(app, NULL, app->prompt_text)) {
    case GENERATE_OK: return EXIT_SUCCESS;
    case GENERATE_INTERRUPTED: return 128 + cli_interrupting_signal(); /* as a shell reports it */
    case GENERATE_FAILED: break;
    }
    return EXIT_FAILURE;
}

static void app_free(cli_app *app) {
    if (app->stream_to_terminal) display_free(&app->disp);
    sm_session_free(app->session);
    for (int32_t m = 0; m < app->n_models; m++) sm_model_free(app->models[m]);
    sm_memlog_close(app->memlog);
    json_original_free(&app->json_original);
    sm_tokens_free(&app->prefill);
    free(app->grammar_text);
    free(app->chat_template_text);
    cli_intro_free(app);
    for (int32_t i = 0; i < app->n_operators; i++) sm_operator_free(app->operators[i]);
}

static int run_app(cli_app *app);

/* --prefill: the answer's first tokens, as the model spells the text
 * where it continues other text. */
static bool tokenize_prefill(cli_app *app) {
    const char *text = app->opt->prefill;
    if (!text) return true;
    sm_error err = {0};
    if (sm_tokenize_continuation(app->model, text, strlen(text), &app->prefill, &err) != SM_OK || app->prefill.n == 0) {
        cli_error("--prefill: cannot tokenize '%s': %s", text, app->prefill.n == 0 && !*err.message ? "no tokens" : err.message);
        return false;
    }
    app->gen.forced_tokens = app->prefill.data;
    app->gen.n_forced_tokens = app->prefill.n;
    return true;
}

/* Everything that can be refused is checked before the model loads. */
static int setup_and_run(cli_app *app) {
    const cli_options *opt = app->opt;
    if (!create_operators(app)) return CLI_EXIT_USAGE;
    char *wrapped = NULL;
    app->prompt_text = opt->prompt;
    if (opt->prompt && opt->wrap_prompt) { /* the original's one-shot form; the record keeps the prompt */
        size_t size = strlen(opt->prompt) + sizeof "User: \nAssistant:";
        wrapped = malloc(size);
        if (!wrapped) {
            cli_error("out of memory");
            return EXIT_FAILURE;
        }
        snprintf(wrapped, size, "User: %s\nAssistant:", opt->prompt);
        app->prompt_text = wrapped;
    }
    int code = run_app(app);
    free(wrapped);
    return code;
}

/* A file a flag names, whole (up to 1 MB); NULL after saying why. */
static char *read_flag_file(const char *flag, const char *path) {
    char *text = flag_read_file(path, 1u << 20);
    if (!text) cli_error("%s: cannot read '%s': %s", flag, path, errno == EFBIG ? "larger than 1 MB" : strerror(errno));
    return text;
}

/* --grammar, --grammar-file, --json-output, --json-schema(-file): the
 * grammar the text follows; --chat-template-file: the chat's template. */
static bool load_grammar(cli_app *app) {
    const cli_options *opt = app->opt;
    if (opt->chat_template_file && !(app->chat_template_text = read_flag_file("--chat-template-file", opt->chat_template_file)))
        return false;
    if (opt->json_output) app->gen.grammar = SM_GRAMMAR_JSON;
    if (opt->grammar) app->gen.grammar = opt->grammar;
    if (opt->grammar_file && !(app->gen.grammar = app->grammar_text = read_flag_file("--grammar-file", opt->grammar_file)))
        return false;
    const char *schema = opt->json_schema;
    char *schema_text = NULL;
    if (opt->json_schema_file && !(schema = schema_text = read_flag_file("--json-schema-file", opt->json_schema_file)))
        return false;
    if (!schema) return true;
    sm_error err = {0};
    app->gen.grammar = app->grammar_text = sm_grammar_from_json_schema(schema, &err);
    free(schema_text);
    if (!app->grammar_text) cli_error("%s: %s", opt->json_schema ? "--json-schema" : "--json-schema-file", err.message);
    return app->grammar_text != NULL;
}

/* The grammar is parsed before anything is generated; llama.cpp's parser
 * writes its complaint to stderr, which becomes our one line. */
static bool check_grammar(cli_app *app) {
    if (!app->gen.grammar) return true;
    fflush(stderr);
    int saved = dup(STDERR_FILENO);
    FILE *capture = tmpfile();
    if (saved >= 0 && capture) dup2(fileno(capture), STDERR_FILENO);
    sm_error err = {0};
    sm_status st = sm_grammar_check(app->model, app->gen.grammar, &err);
    fflush(stderr);
    if (saved >= 0) {
        dup2(saved, STDERR_FILENO);
        close(saved);
    }
    char why[256] = "";
    if (capture) {
        rewind(capture);
        char line[512];
        while (!*why && fgets(line, sizeof line, capture)) {
            const char *at = strstr(line, "error parsing grammar: ");
            if (at) snprintf(why, sizeof why, "%s", at + strlen("error parsing grammar: "));
        }
        fclose(capture);
    }
    why[strcspn(why, "\n")] = '\0';
    if (st == SM_OK) return true;
    if (*why) cli_error("the grammar does not parse: %s", why);
    else cli_error("%s", err.message);
    return false;
}

static int run_app(cli_app *app) {
    const cli_options *opt = app->opt;
    if (!load_grammar(app)) return EXIT_FAILURE;
    if (!open_memory_file(app)) return EXIT_FAILURE;
    if (!cli_intro_before_load(app)) return EXIT_FAILURE;
    sm_set_llama_logging(opt->verbose);
    if (!load_model(app)) return EXIT_FAILURE;
    if (!check_grammar(app)) return EXIT_FAILURE;
    if (!tokenize_prefill(app)) return EXIT_FAILURE;
    if (!cli_intro_after_load(app)) return EXIT_FAILURE;

    app->stream_to_terminal = !opt->json_stream && isatty(STDOUT_FILENO);
    if (app->stream_to_terminal) display_init(&app->disp, stdout, stderr);
    if (opt->verbose_events && !opt->quiet) print_settings(app);
    int code = opt->beam_width > 0 ? cli_beam_search(app) : opt->prompt ? run_single_prompt(app) : cli_interactive(app);
    if (!cli_intro_free(app) && code == EXIT_SUCCESS) code = EXIT_FAILURE; /* an output file is incomplete */
    return code;
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
    switch (cli_parse_args(argc, argv, &opt, stderr)) {
    case CLI_PARSE_EXIT_OK: return EXIT_SUCCESS;
    case CLI_PARSE_ERROR: return CLI_EXIT_USAGE;
    case CLI_PARSE_RUN: break;
    }
    if (wants_operator_help(&opt)) {
        fputs(sm_operator_help(), stdout);
        return EXIT_SUCCESS;
    }

    cli_app app;
    memset(&app, 0, sizeof app);
    app.opt = &opt;
    app.gen = opt.gen;
    app.style.color = !opt.no_color && !getenv("NO_COLOR") && isatty(STDERR_FILENO);
    app.style.verbose = opt.verbose_events;

    int code = setup_and_run(&app);
    app_free(&app);
    return code;
}
