/*
 * A run of llama_selfmod, step by step: what main does between parsing the
 * flags and exiting, split where a binding (apps/embed) keeps the models
 * loaded between runs. Every step prints its own one-line error.
 */
#include "setup.h"

#include "common/flags.h"
#include "beam.h"
#include "generate.h"
#include "interactive.h"
#include "intro_run.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* Per thread, so that bindings running generations in several threads
 * each read their own messages. */
static _Thread_local FILE *error_stream;

void cli_set_error_stream(FILE *out) { error_stream = out; }

void cli_error(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    FILE *out = error_stream ? error_stream : stderr;
    fputs("llama_selfmod: error: ", out);
    vfprintf(out, fmt, ap);
    fputc('\n', out);
    va_end(ap);
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
    app->n_owned_operators = app->n_operators;
    for (int32_t i = 0; i < app->n_extra_operators && app->n_operators < 2 * CLI_MAX_LIST; i++)
        app->operators[app->n_operators++] = app->extra_operators[i];
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

bool cli_app_load_models(cli_app *app) {
    const cli_options *opt = app->opt;
    sm_model_params mp = sm_model_default_params();
    mp.n_gpu_layers = opt->n_gpu_layers;
    mp.no_repack = opt->no_repack;
    bool show_progress = !opt->quiet && isatty(STDERR_FILENO);
    if (show_progress) mp.progress = show_load_progress;
    sm_error err = {0};
    const cli_fusion_options *fo = &opt->fusion;
    const char *const *paths = fo->n_models > 0 ? fo->model_paths : &opt->model_path;
    int32_t n_models = fo->n_models > 0 ? fo->n_models : 1;
    for (int32_t m = 0; m < n_models; m++) {
        /* --rpc, or this model's own servers (--models A@HOST:PORT): all
         * layers go there unless --n-gpu-layers says how many */
        mp.rpc_servers = fo->n_models > 0 && fo->model_rpc[m] ? fo->model_rpc[m] : opt->rpc_servers;
        mp.n_gpu_layers = mp.rpc_servers && !opt->n_gpu_layers_given ? -1 : opt->n_gpu_layers;
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
    if (opt->verbose && sm_model_amx_refused(app->model))
        fprintf(stderr, "[selfmod] note: llama.cpp's AMX matrix product fails on this CPU: the weights stay as "
                        "stored (as --no-repack)\n");
    return true;
}

sm_session_params cli_app_session_params(const cli_app *app) {
    sm_session_params sp = app->opt->session;
    sp.n_ctx = context_size(app, sp.n_ctx);
    sp.fusion_align = app->opt->fusion.align;
    sp.batch = app->batch;
    return sp;
}

bool cli_app_open_session(cli_app *app) {
    sm_session_params sp = cli_app_session_params(app);
    sm_error err = {0};
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


/* The original's one-shot form: "User: PROMPT\nAssistant:" (the record
 * keeps the prompt as given). */
static bool wrap_prompt(cli_app *app) {
    const cli_options *opt = app->opt;
    app->prompt_text = opt->prompt;
    if (!opt->prompt || !opt->wrap_prompt) return true;
    size_t size = strlen(opt->prompt) + sizeof "User: \nAssistant:";
    if (!(app->wrapped_prompt = malloc(size))) {
        cli_error("out of memory");
        return false;
    }
    snprintf(app->wrapped_prompt, size, "User: %s\nAssistant:", opt->prompt);
    app->prompt_text = app->wrapped_prompt;
    return true;
}

int cli_app_prepare(cli_app *app) {
    if (!create_operators(app)) return CLI_EXIT_USAGE;
    if (!wrap_prompt(app) || !load_grammar(app) || !open_memory_file(app) || !cli_intro_before_load(app))
        return EXIT_FAILURE;
    sm_set_llama_logging(app->opt->verbose);
    return EXIT_SUCCESS;
}

bool cli_app_ready(cli_app *app) {
    return check_grammar(app) && tokenize_prefill(app) && cli_intro_after_load(app);
}

int cli_app_run(cli_app *app) {
    const cli_options *opt = app->opt;
    app->stream_to_terminal = !opt->json_stream && app->out == stdout && isatty(STDOUT_FILENO);
    if (app->stream_to_terminal) display_init(&app->disp, stdout, stderr);
    if (opt->verbose_events && !opt->quiet) print_settings(app);
    int code = opt->beam_width > 0 ? cli_beam_search(app) : opt->prompt ? run_single_prompt(app) : cli_interactive(app);
    if (!cli_intro_free(app) && code == EXIT_SUCCESS) code = EXIT_FAILURE; /* an output file is incomplete */
    return code;
}

void cli_app_free_run(cli_app *app) {
    if (app->stream_to_terminal) display_free(&app->disp);
    app->stream_to_terminal = false;
    sm_memlog_close(app->memlog);
    json_original_free(&app->json_original);
    sm_tokens_free(&app->prefill);
    free(app->grammar_text);
    free(app->chat_template_text);
    free(app->wrapped_prompt);
    cli_intro_free(app);
    for (int32_t i = 0; i < app->n_owned_operators; i++) sm_operator_free(app->operators[i]);
    app->memlog = NULL;
    app->grammar_text = app->chat_template_text = app->wrapped_prompt = NULL;
    app->n_operators = app->n_owned_operators = 0;
    app->prompt_fed = false;
}

void cli_app_free_models(cli_app *app) {
    sm_session_free(app->session);
    for (int32_t m = 0; m < app->n_models; m++) sm_model_free(app->models[m]);
    app->session = NULL;
    app->model = NULL;
    app->n_models = 0;
    app->model_label[0] = '\0';
}
