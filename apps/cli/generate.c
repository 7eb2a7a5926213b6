/* One generation, from the library's events to every sink. */
#include "generate.h"

#include "intro_run.h"
#include "jsonout.h"
#include "lib_extras.h"

#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>

/* The signal that asked generation to stop: Ctrl-C, kill/timeout/systemd
 * (SIGTERM) or a closed terminal (SIGHUP). Each ends the generation the
 * same way, with the text so far written and recorded. */
static volatile sig_atomic_t interrupted;

static void on_stop_signal(int sig) { interrupted = sig; }

int cli_interrupting_signal(void) { return interrupted; }

static const int STOP_SIGNALS[] = {SIGINT, SIGTERM, SIGHUP};
enum { N_STOP_SIGNALS = sizeof STOP_SIGNALS / sizeof STOP_SIGNALS[0] };

typedef struct event_sink {
    cli_app *app;
    sm_chat *chat;
    const char *input;
} event_sink;

/* A line for stderr, kept clear of the text streaming on a terminal. */
static void note(cli_app *app, const char *line) {
    if (app->stream_to_terminal) {
        display_note(&app->disp, line);
    } else {
        fprintf(stderr, "%s\n", line);
        fflush(stderr);
    }
}

static void on_start(event_sink *sink) {
    cli_app *app = sink->app;
    if (app->opt->json_original)
        json_original_init(app->out, &app->json_original, app->model_label, sm_fusion_mode_name(app->gen.fusion.mode));
    else if (app->opt->json_stream)
        json_print_start(app->out, app->model_label, sm_model_description(app->model),
                         sink->input, &app->gen, sm_session_n_ctx(app->session),
                         sm_session_n_past(app->session));
    if (sink->chat && !app->opt->quiet) {
        sm_chat_turn_info info = sm_chat_last_turn_info(sink->chat);
        if (info.n_dropped_turns > 0) {
            char line[160];
            snprintf(line, sizeof line,
                     "[chat] dropped the %d oldest turn%s to fit the %d-token context",
                     info.n_dropped_turns, info.n_dropped_turns == 1 ? "" : "s",
                     sm_session_n_ctx(app->session));
            note(app, line);
        }
    }
}

static bool on_event(const sm_event *event, void *user_data) {
    event_sink *sink = user_data;
    cli_app *app = sink->app;
    cli_intro_on_event(app, event);
    switch (event->type) {
    case SM_EVENT_START:
        on_start(sink);
        break;
    case SM_EVENT_TOKEN:
        if (app->opt->json_original) json_original_event(app->out, &app->json_original, event);
        else if (app->opt->json_stream) json_print_event(app->out, event);
        else if (app->stream_to_terminal) display_token(&app->disp, event->token_index, event->piece);
        break;
    case SM_EVENT_RETRACTION:
    case SM_EVENT_BACKTRACK:
        /* token_index is where generation resumes: the tokens kept. */
        if (app->stream_to_terminal) display_keep_tokens(&app->disp, event->token_index);
        /* fall through */
    case SM_EVENT_MODIFICATION:
        if (app->opt->json_original) json_original_event(app->out, &app->json_original, event);
        else if (app->opt->json_stream) json_print_event(app->out, event);
        if (!app->opt->quiet) {
            char line[512];
            format_event_line(line, sizeof line, event, app->style);
            note(app, line);
        }
        break;
    case SM_EVENT_DONE:
        break; /* the done line is written from the result */
    }
    /* stdout gone (a closed pipe, a full disk): stop, keep what was made */
    return !interrupted && !ferror(app->out);
}

/* With several models: how much they agreed, who led, and in reference
 * mode the positions where another model's top-1 differed. */
static void print_fusion_summary(const cli_app *app, const sm_result *r) {
    if (r->n_models < 2 || !r->fusion) return;
    double top1 = 0, js = 0;
    int32_t led[SM_MAX_MODELS] = {0};
    for (int32_t i = 0; i < r->n_tokens; i++) {
        top1 += r->fusion[i].top1_agreement;
        js += r->fusion[i].js_divergence;
        if (r->fusion[i].leading_model >= 0) led[r->fusion[i].leading_model]++;
    }
    int32_t n = r->n_tokens > 0 ? r->n_tokens : 1;
    fprintf(stderr, "[fusion] %d models, %s: top-1 agreement %.2f, mean JS divergence %.3f bits, led by", r->n_models,
            sm_fusion_mode_name(app->gen.fusion.mode), top1 / n, js / n);
    for (int32_t m = 0; m < r->n_models; m++) fprintf(stderr, " #%d: %d", m, led[m]);
    fputc('\n', stderr);
    if (app->gen.fusion.mode != SM_FUSION_REFERENCE) return;
    int32_t shown = 0, total = 0;
    fputs("[fusion] reference disagreements at tokens:", stderr);
    for (int32_t i = 0; i < r->n_tokens; i++) {
        if (!r->fusion[i].reference_differs) continue;
        if (shown++ < 40) fprintf(stderr, " %d", i);
        total++;
    }
    fprintf(stderr, "%s (%d of %d)\n", shown > 40 ? " ..." : "", total, r->n_tokens);
}

/* Said once per run: text the model's vocabulary could not spell. */
static void note_unknown_chars(cli_app *app) {
    char first[8];
    int64_t n = sm_model_n_unknown_chars(app->model, first);
    if (n <= app->n_unknown_reported || app->opt->quiet) return;
    if (app->n_unknown_reported == 0) {
        char line[256];
        snprintf(line, sizeof line,
                 "[selfmod] %lld character%s of the input %s not in the vocabulary of %s and became its unknown "
                 "token (the first: '%s')",
                 (long long)n, n == 1 ? "" : "s", n == 1 ? "is" : "are", sm_model_path(app->model), first);
        note(app, line);
    }
    app->n_unknown_reported = n;
}

static void write_output(cli_app *app, const sm_result *result) {
    if (app->opt->json_original) {
        json_original_complete(app->out, &app->json_original, result);
    } else if (app->opt->json_stream) {
        json_print_done(app->out, result);
    } else if (app->stream_to_terminal) {
        display_finish(&app->disp, result->text, result->text_len);
    } else {
        fwrite(result->text, 1, result->text_len, app->out);
        fputc('\n', app->out);
        fflush(app->out);
    }
    if (!app->opt->quiet) {
        char line[512];
        format_summary(line, sizeof line, result, app->gen.sampling.seed, app->style);
        fprintf(stderr, "%s\n", line);
        print_fusion_summary(app, result);
    }
}

static const char *failure_message(const cli_app *app, const sm_chat *chat) {
    const char *message = chat ? sm_chat_last_error(chat) : sm_session_last_error(app->session);
    return message && *message ? message : "generation failed";
}

static bool append_memory(cli_app *app, const char *input, const sm_result *result) {
    if (!app->memlog) return true;
    sm_error err = {0};
    /* The record keeps the prompt as given (the original did too). */
    const char *prompt = input && input == app->prompt_text ? app->opt->prompt : input;
    if (sm_memlog_append(app->memlog, app->model_label, prompt, &app->gen, result, &err) ==
        SM_OK)
        return true;
    cli_error("%s", err.message);
    return false;
}

generate_outcome cli_generate(cli_app *app, sm_chat *chat, const char *input) {
    event_sink sink = {app, chat, input};
    app->gen.on_event = on_event;
    app->gen.user_data = &sink;
    if (app->stream_to_terminal) display_begin(&app->disp);

    struct sigaction action, previous[N_STOP_SIGNALS];
    memset(&action, 0, sizeof action);
    action.sa_handler = on_stop_signal;
    sigemptyset(&action.sa_mask);
    /* A binding's process has handlers of its own (Python's Ctrl-C reaches
     * its callbacks, which stop the generation): they stay, and the flag,
     * never set there, is not written either (its runs go on several threads). */
    if (!app->keep_signals) interrupted = 0;
    for (int i = 0; !app->keep_signals && i < N_STOP_SIGNALS; i++) sigaction(STOP_SIGNALS[i], &action, &previous[i]);

    sm_result result;
    sm_status status = chat ? sm_chat_turn(chat, input, &app->gen, &result)
                            : sm_session_generate(app->session, app->prompt_fed ? NULL : input, &app->gen, &result);
    for (int i = 0; !app->keep_signals && i < N_STOP_SIGNALS; i++) sigaction(STOP_SIGNALS[i], &previous[i], NULL);
    app->gen.on_event = NULL;
    app->gen.user_data = NULL;

    if (status != SM_OK) {
        /* Whatever was streamed is ended on its own line first. */
        if (app->stream_to_terminal) display_end(&app->disp);
        cli_error("%s%s", failure_message(app, chat),
                  status == SM_ERR_PROMPT_TOO_LONG ? " (a larger --ctx-size may help)" : "");
        sm_result_free(&result);
        return GENERATE_FAILED;
    }
    note_unknown_chars(app);
    errno = 0;
    write_output(app, &result);
    bool written = fflush(app->out) == 0 && !ferror(app->out);
    int write_errno = errno;
    bool logged = append_memory(app, input, &result); /* recorded even when stdout is gone */
    sm_result_free(&result);
    if (!written) {
        cli_error("cannot write the output: %s%s", write_errno ? strerror(write_errno) : "write error",
                  app->memlog && logged ? " (the generation was recorded in the memory file)" : "");
        return GENERATE_FAILED;
    }
    if (!logged) return GENERATE_FAILED;
    return interrupted ? GENERATE_INTERRUPTED : GENERATE_OK;
}
