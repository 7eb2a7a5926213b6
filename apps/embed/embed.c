/*
 * The command line as a library (embed.h). Invariant: a runner's cli_app
 * always holds the loaded models (not its own) and either no session or
 * the session for `session_params`; everything a run prepares is freed
 * before the run returns (cli_app_free_run), except the chat and the flags
 * it was created with.
 */
#define _GNU_SOURCE /* fopencookie, open_memstream */
#include "embed.h"

#include "cli/generate.h"
#include "cli/setup.h"

#include <cjson/cJSON.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ------------------------------------------------------------------ */
/* Flags: copied, parsed by the program's own parser                   */
/* ------------------------------------------------------------------ */

typedef struct flags {
    int argc;
    char **argv;  /* argv[0] is the program's name                      */
    char **owned; /* the strings, as copied: the parser permutes argv and
                     may put llama.cpp's flag names in it (flags.c)     */
} flags;

static void flags_free(flags *f) {
    for (int i = 0; f->owned && i < f->argc; i++) free(f->owned[i]);
    free(f->owned);
    free(f->argv);
    f->argv = f->owned = NULL;
    f->argc = 0;
}

/* "llama_selfmod", then a, then b: copies, since the parsed options point
 * into them and getopt permutes the array. */
static bool flags_join(flags *out, int an, const char *const *a, int bn, const char *const *b) {
    *out = (flags){0};
    out->argv = calloc((size_t)(1 + an + bn + 1), sizeof *out->argv);
    if (!out->argv) return false;
    out->argv[out->argc++] = strdup("llama_selfmod");
    for (int i = 0; i < an; i++) out->argv[out->argc++] = strdup(a[i] ? a[i] : "");
    for (int i = 0; i < bn; i++) out->argv[out->argc++] = strdup(b[i] ? b[i] : "");
    bool ok = (out->owned = malloc(sizeof *out->owned * (size_t)out->argc)) != NULL;
    for (int i = 0; i < out->argc; i++) ok = ok && out->argv[i];
    if (!ok) {
        for (int i = 0; i < out->argc; i++) free(out->argv[i]);
        free(out->owned);
        free(out->argv);
        *out = (flags){0};
        return false;
    }
    memcpy(out->owned, out->argv, sizeof *out->owned * (size_t)out->argc);
    return true;
}

static void set_err(char *err, size_t size, const char *message) {
    if (err && size) snprintf(err, size, "%s", message);
}

/* What the program printed on its error stream: the last error is the
 * message; warnings go to the caller as lines. */
typedef struct messages {
    char *text;
    size_t len;
    FILE *stream;
} messages;

static bool messages_open(messages *m) {
    memset(m, 0, sizeof *m);
    m->stream = open_memstream(&m->text, &m->len);
    if (m->stream) cli_set_error_stream(m->stream);
    return m->stream != NULL;
}

static const char ERROR_PREFIX[] = "llama_selfmod: error: ";
static const char WARNING_PREFIX[] = "llama_selfmod: warning: ";

/* Closes the stream; the last error line to err, every warning to the
 * callback. Returns whether there was an error line. */
static bool messages_close(messages *m, smcli_line_fn on_line, void *user_data, char *err, size_t err_size) {
    cli_set_error_stream(NULL);
    fclose(m->stream);
    bool had_error = false;
    for (char *line = m->text, *next; line && *line; line = next) {
        next = strchr(line, '\n');
        if (next) *next++ = '\0';
        else next = line + strlen(line);
        if (strncmp(line, ERROR_PREFIX, sizeof ERROR_PREFIX - 1) == 0) {
            set_err(err, err_size, line + sizeof ERROR_PREFIX - 1);
            had_error = true;
        } else if (on_line && strncmp(line, WARNING_PREFIX, sizeof WARNING_PREFIX - 1) == 0) {
            cJSON *o = cJSON_CreateObject();
            cJSON_AddStringToObject(o, "type", "warning");
            cJSON_AddStringToObject(o, "message", line + sizeof WARNING_PREFIX - 1);
            char *json = cJSON_PrintUnformatted(o);
            if (json) on_line(json, strlen(json), user_data);
            free(json);
            cJSON_Delete(o);
        }
    }
    free(m->text);
    return had_error;
}

/* Parses f into *opt; false with the message in err. */
static bool parse(flags *f, cli_options *opt, messages *msgs, char *err, size_t err_size) {
    switch (cli_parse_args(f->argc, f->argv, opt, msgs->stream)) {
    case CLI_PARSE_RUN: return true;
    case CLI_PARSE_EXIT_OK: set_err(err, err_size, "--help and --version are for the command line"); return false;
    case CLI_PARSE_ERROR: break;
    }
    set_err(err, err_size, "invalid flags");
    return false;
}

/* ------------------------------------------------------------------ */
/* Models                                                              */
/* ------------------------------------------------------------------ */

struct smcli_models {
    flags loaded_with;   /* the flags given; opt points into them           */
    flags flags;         /* the ones that chose the models: a run's first   */
    cli_options *opt;    /* as parsed at load                               */
    cli_app app;         /* holds the models                               */
};

/* -m PATH or --models A,B,..., and --n-gpu-layers N: what every run
 * repeats so that its options name the models that are loaded (the other
 * flags given at load were only checked). */
static bool model_flags(smcli_models *m) {
    const cli_options *o = m->opt;
    char gpu[16], *joined = NULL;
    snprintf(gpu, sizeof gpu, "%d", (int)o->n_gpu_layers);
    if (o->fusion.n_models > 0) {
        size_t size = 1;
        for (int32_t i = 0; i < o->fusion.n_models; i++) size += strlen(o->fusion.model_paths[i]) + 1;
        if (!(joined = calloc(1, size))) return false;
        for (int32_t i = 0; i < o->fusion.n_models; i++) {
            if (i) strcat(joined, ",");
            strcat(joined, o->fusion.model_paths[i]);
        }
    }
    const char *items[] = {joined ? "--models" : "-m", joined ? joined : o->model_path, "--n-gpu-layers", gpu};
    bool ok = flags_join(&m->flags, 4, items, 0, NULL);
    free(joined);
    return ok;
}

smcli_models *smcli_models_load(int argc, const char *const *argv, char *err, size_t err_size) {
    smcli_models *m = calloc(1, sizeof *m);
    flags all = {0};
    messages msgs;
    if (!m || !(m->opt = calloc(1, sizeof *m->opt)) || !flags_join(&all, argc, argv, 0, NULL) || !messages_open(&msgs)) {
        set_err(err, err_size, "out of memory");
        flags_free(&all);
        if (m) free(m->opt);
        free(m);
        return NULL;
    }
    bool ok = parse(&all, m->opt, &msgs, err, err_size);
    if (ok) {
        m->app.opt = m->opt;
        m->app.out = stdout;
        sm_set_llama_logging(m->opt->verbose);
        ok = cli_app_load_models(&m->app);
    }
    if (messages_close(&msgs, NULL, NULL, err, err_size)) ok = false;
    if (!ok) {
        if (m->app.n_models == 0 && err && !*err) set_err(err, err_size, "the models did not load");
        cli_app_free_models(&m->app);
        flags_free(&all);
        cli_options_free(m->opt);
        free(m->opt);
        free(m);
        return NULL;
    }
    m->loaded_with = all;
    if (!model_flags(m)) {
        set_err(err, err_size, "out of memory");
        smcli_models_free(m);
        return NULL;
    }
    return m;
}

void smcli_models_free(smcli_models *m) {
    if (!m) return;
    cli_app_free_models(&m->app);
    flags_free(&m->flags);
    flags_free(&m->loaded_with);
    cli_options_free(m->opt);
    free(m->opt);
    free(m);
}

int32_t smcli_models_count(const smcli_models *m) { return m ? m->app.n_models : 0; }

sm_model *smcli_models_get(const smcli_models *m, int32_t i) {
    return m && i >= 0 && i < m->app.n_models ? m->app.models[i] : NULL;
}

/* The flags that chose the models cannot change after they loaded. */
static const char *changed_model_flag(const cli_options *at_load, const cli_options *now) {
    if (strcmp(at_load->model_path, now->model_path) != 0) return "-m/--model";
    if (at_load->fusion.n_models != now->fusion.n_models) return "--models";
    for (int32_t i = 0; i < now->fusion.n_models; i++)
        if (strcmp(at_load->fusion.model_paths[i], now->fusion.model_paths[i]) != 0) return "--models";
    if (at_load->n_gpu_layers != now->n_gpu_layers) return "--n-gpu-layers";
    if (now->rpc_servers) return "--rpc"; /* a run's flags never repeat it: any is a change */
    if (now->no_repack) return "--no-repack"; /* nor this one */
    return NULL;
}

/* ------------------------------------------------------------------ */
/* Runners                                                             */
/* ------------------------------------------------------------------ */

enum { MAX_KEPT_LAYERS = 256 };

struct smcli_runner {
    smcli_models *models;
    cli_app app;                 /* models borrowed from `models`           */
    sm_session_params session_params; /* of app.session                     */
    int32_t layers[MAX_KEPT_LAYERS];  /* its introspect_layers, copied       */
    bool steered;                /* a control vector was applied to it      */
    sm_chat *chat;
    flags chat_flags;            /* the flags the chat was created with     */
    cli_options *chat_opt;       /* ... parsed                              */
};

smcli_runner *smcli_runner_new(smcli_models *models) {
    if (!models) return NULL;
    smcli_runner *r = calloc(1, sizeof *r);
    if (!r) return NULL;
    r->models = models;
    r->app.keep_signals = true;
    r->app.model = models->app.model;
    r->app.n_models = models->app.n_models;
    memcpy(r->app.models, models->app.models, sizeof r->app.models);
    memcpy(r->app.model_label, models->app.model_label, sizeof r->app.model_label);
    return r;
}

sm_batch *smcli_batch_new(smcli_models *models, int32_t n_runners, int32_t n_branches, uint32_t n_ctx,
                          int32_t n_threads, char *err, size_t err_size) {
    if (!models || n_runners < 1 || n_branches < 0 || n_branches > SM_MAX_BRANCHES) {
        set_err(err, err_size, models ? "a batch takes at least one runner and at most 16 branches each" : "no models");
        return NULL;
    }
    sm_batch_params bp = sm_batch_default_params();
    uint32_t per_runner = n_ctx ? n_ctx : sm_session_default_params().n_ctx;
    bp.n_seq = n_runners * (1 + n_branches);
    bp.kv_unified = n_branches > 0;
    /* a branch adds at most its depth (64) in cells of its own */
    bp.n_ctx_seq = bp.kv_unified ? (uint32_t)n_runners * (per_runner + (uint32_t)n_branches * 64) : per_runner;
    bp.n_threads = n_threads;
    sm_error e = {0};
    sm_batch *b = sm_batch_new(models->app.models, models->app.n_models, &bp, &e);
    if (!b) set_err(err, err_size, e.message);
    return b;
}

smcli_runner *smcli_runner_new_on(smcli_models *models, sm_batch *batch, char *err, size_t err_size) {
    smcli_runner *r = batch ? smcli_runner_new(models) : NULL;
    if (!r) {
        set_err(err, err_size, batch ? "out of memory" : "no batch");
        return NULL;
    }
    r->app.batch = batch;
    return r;
}

void smcli_chat_reset(smcli_runner *r) {
    if (!r) return;
    sm_chat_free(r->chat);
    r->chat = NULL;
    flags_free(&r->chat_flags);
    cli_options_free(r->chat_opt);
    free(r->chat_opt);
    r->chat_opt = NULL;
}

bool smcli_chat_active(const smcli_runner *r) { return r && r->chat; }

static void close_session(smcli_runner *r) {
    sm_session_free(r->app.session);
    r->app.session = NULL;
    r->steered = false;
}

void smcli_runner_free(smcli_runner *r) {
    if (!r) return;
    smcli_chat_reset(r);
    close_session(r);
    free(r);
}

static bool same_session(const sm_session_params *a, const sm_session_params *b) {
    if (a->n_ctx != b->n_ctx || a->n_batch != b->n_batch || a->n_threads != b->n_threads ||
        a->max_rewind != b->max_rewind || a->fusion_align != b->fusion_align ||
        a->n_introspect_layers != b->n_introspect_layers || a->introspect_all_layers != b->introspect_all_layers ||
        a->introspect_attention != b->introspect_attention || a->introspect_hidden != b->introspect_hidden ||
        a->max_branches != b->max_branches)
        return false;
    for (int32_t i = 0; i < a->n_introspect_layers; i++)
        if (a->introspect_layers[i] != b->introspect_layers[i]) return false;
    return true;
}

/* The session this run's flags ask for: kept when it is the current one
 * (and no control vector changed it), else opened anew. A chat keeps its
 * own. */
static bool use_session(smcli_runner *r, bool chat_turn) {
    sm_session_params want = cli_app_session_params(&r->app);
    /* A control vector changes what the cached tokens mean: a session it
     * touched is not reused by a later generation. */
    bool wants_vector = r->app.opt->intro.n_control_vectors > 0;
    bool same = r->app.session && same_session(&r->session_params, &want);
    if (chat_turn && r->chat) {
        if (same && wants_vector == r->steered) return true; /* ready applies the vector again */
        cli_error("this turn asks for another context (--ctx-size, --threads, introspection, lookahead or a control "
                  "vector) than the chat began with: give such flags when the chat starts");
        return false;
    }
    if (same && !r->steered && !wants_vector) return true;
    close_session(r);
    if (want.n_introspect_layers > MAX_KEPT_LAYERS) want.n_introspect_layers = MAX_KEPT_LAYERS;
    if (want.introspect_layers) {
        memcpy(r->layers, want.introspect_layers, (size_t)want.n_introspect_layers * sizeof *r->layers);
        want.introspect_layers = r->layers;
    }
    if (!cli_app_open_session(&r->app)) return false;
    r->session_params = want;
    r->steered = wants_vector;
    return true;
}

/* Each JSON line the program writes goes to the caller's callback. */
typedef struct line_sink {
    smcli_line_fn on_line;
    void *user_data;
    char *buf;
    size_t len, cap;
    bool stopped;
} line_sink;

static ssize_t sink_write(void *cookie, const char *data, size_t n) {
    line_sink *s = cookie;
    if (s->stopped) return -1;
    if (s->len + n + 1 > s->cap) {
        size_t cap = (s->len + n + 1) * 2;
        char *grown = realloc(s->buf, cap);
        if (!grown) return -1;
        s->buf = grown;
        s->cap = cap;
    }
    memcpy(s->buf + s->len, data, n);
    s->len += n;
    size_t start = 0;
    for (size_t i = 0; i < s->len && !s->stopped; i++) {
        if (s->buf[i] != '\n') continue;
        s->buf[i] = '\0';
        if (s->on_line && s->on_line(s->buf + start, i - start, s->user_data) != 0) s->stopped = true;
        start = i + 1;
    }
    memmove(s->buf, s->buf + start, s->len - start);
    s->len -= start;
    return s->stopped ? -1 : (ssize_t)n;
}

static bool same_text(const char *a, const char *b) { return (!a && !b) || (a && b && strcmp(a, b) == 0); }

/* The flags that made the chat: a later turn that gives others would be
 * ignored by it, so it is refused. */
static const char *changed_chat_flag(const cli_options *made, const cli_options *now) {
    if (!same_text(made->chat.system_prompt, now->chat.system_prompt)) return "--system";
    if (!same_text(made->chat.template_name, now->chat.template_name)) return "--chat-template";
    if (!same_text(made->chat_template_file, now->chat_template_file)) return "--chat-template-file";
    if (made->chat.jinja != now->chat.jinja) return "--jinja/--no-jinja";
    if (!same_text(made->chat.fallback_user, now->chat.fallback_user)) return "--user-label";
    if (!same_text(made->chat.fallback_assistant, now->chat.fallback_assistant)) return "--assistant-label";
    return NULL;
}

static int run_turn(smcli_runner *r, const char *message) {
    if (r->chat && r->chat_opt) {
        const char *changed = changed_chat_flag(r->chat_opt, r->app.opt);
        if (changed) {
            cli_error("%s is fixed when the chat starts: this chat began with another", changed);
            return SMCLI_USAGE;
        }
    }
    if (!r->chat) {
        sm_error e = {0};
        sm_chat_params cp = r->app.opt->chat;
        cp.template_source = r->app.chat_template_text;
        if (!(r->chat = sm_chat_new(r->app.session, &cp, &e))) {
            cli_error("%s", e.message);
            return SMCLI_FAILED;
        }
    } else if (sm_chat_set_template_kwargs(r->chat, r->app.opt->chat.template_kwargs) != SM_OK) {
        cli_error("%s", sm_chat_last_error(r->chat)); /* each turn's own, as a server request's */
        return SMCLI_USAGE;
    }
    switch (cli_generate(&r->app, r->chat, message)) {
    case GENERATE_OK: return SMCLI_OK;
    case GENERATE_INTERRUPTED: return 128 + cli_interrupting_signal();
    case GENERATE_FAILED: break;
    }
    return SMCLI_FAILED;
}

/* The run proper, with the options parsed and messages captured. */
static int run_parsed(smcli_runner *r, cli_options *opt, const char *message, sm_stage *const *stages,
                      int32_t n_stages) {
    const char *changed = changed_model_flag(r->models->opt, opt);
    if (changed) {
        cli_error("%s chooses the models, which load once: give it when they load", changed);
        return SMCLI_USAGE;
    }
    if (message && opt->prompt) {
        cli_error("a chat turn takes a message, not -p/--prompt");
        return SMCLI_USAGE;
    }
    if (!message && r->chat) {
        cli_error("this runner holds a chat: generate on another one");
        return SMCLI_USAGE;
    }
    if (!message && !opt->prompt) {
        cli_error("give the prompt (-p/--prompt)");
        return SMCLI_USAGE;
    }
    cli_app *app = &r->app;
    app->opt = opt;
    app->gen = opt->gen;
    app->gen.stages = stages;
    app->gen.n_stages = n_stages;
    int code = cli_app_prepare(app);
    if (code == SMCLI_OK) {
        sm_set_llama_logging(opt->verbose);
        if (!use_session(r, message != NULL) || !cli_app_ready(app)) code = SMCLI_FAILED;
        else if (message) code = run_turn(r, message);
        else if (sm_session_clear(app->session) != SM_OK) { /* a one-shot run starts from nothing, as the program's */
            cli_error("%s", sm_session_last_error(app->session));
            code = SMCLI_FAILED;
        } else code = cli_app_run(app);
    }
    cli_app_free_run(app);
    return code;
}

int smcli_run(smcli_runner *r, int argc, const char *const *argv, const char *message, sm_operator *const *operators,
            int32_t n_operators, sm_stage *const *stages, int32_t n_stages, smcli_line_fn on_line, void *user_data,
            char *err, size_t err_size) {
    set_err(err, err_size, "");
    if (!r || argc < 0 || (argc > 0 && !argv) || n_operators < 0 || n_operators > CLI_MAX_LIST || n_stages < 0) {
        set_err(err, err_size, "invalid arguments");
        return SMCLI_USAGE;
    }
    flags f = {0};
    cli_options *opt = calloc(1, sizeof *opt);
    line_sink sink = {.on_line = on_line, .user_data = user_data};
    static const cookie_io_functions_t io = {.write = sink_write};
    FILE *out = fopencookie(&sink, "w", io);
    messages msgs;
    if (!opt || !out || !flags_join(&f, r->models->flags.argc - 1, (const char *const *)r->models->flags.argv + 1, argc, argv) ||
        !messages_open(&msgs)) {
        set_err(err, err_size, "out of memory");
        if (out) fclose(out);
        flags_free(&f);
        cli_options_free(opt);
        free(opt);
        return SMCLI_FAILED;
    }
    setvbuf(out, NULL, _IOLBF, 0);
    int code = SMCLI_USAGE;
    if (parse(&f, opt, &msgs, err, err_size)) {
        /* the program's JSON lines, quietly: everything reaches the caller as lines */
        opt->json_stream = true;
        r->app.out = out;
        r->app.extra_operators = operators;
        r->app.n_extra_operators = n_operators;
        code = run_parsed(r, opt, message, stages, n_stages);
        r->app.extra_operators = NULL;
        r->app.n_extra_operators = 0;
    }
    fclose(out); /* flushes the last line */
    r->app.out = stdout;
    r->app.opt = NULL;
    if (messages_close(&msgs, on_line, user_data, err, err_size) && code == SMCLI_OK) code = SMCLI_FAILED;
    if (code != SMCLI_OK && err && !*err) set_err(err, err_size, code >= 128 ? "interrupted" : "the run failed");
    if (message && r->chat && !r->chat_opt) { /* the chat's flags live as long as it does */
        r->chat_flags = f;
        r->chat_opt = opt;
    } else {
        flags_free(&f);
        cli_options_free(opt);
        free(opt);
    }
    free(sink.buf);
    return code;
}

int smcli_flag_arity(const char *name) { return cli_flag_arity(name); }

size_t smcli_struct_size(const char *name) {
#define SIZE_OF(type) if (name && strcmp(name, #type) == 0) return sizeof(type)
    SIZE_OF(sm_signals);
    SIZE_OF(sm_candidate);
    SIZE_OF(sm_token_view);
    SIZE_OF(sm_operator_vtable);
    SIZE_OF(sm_stage_vtable);
    SIZE_OF(sm_knobs);
    SIZE_OF(sm_tree_params);
    SIZE_OF(sm_tree_node);
    SIZE_OF(sm_suggestion);
    SIZE_OF(sm_tree_result);
    SIZE_OF(sm_text_metrics);
    SIZE_OF(sm_error);
    SIZE_OF(sm_tokens);
#undef SIZE_OF
    return 0;
}
