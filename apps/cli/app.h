/* Everything a run of llama_selfmod holds, set up once by main. */
#ifndef CLI_APP_H
#define CLI_APP_H

#include "args.h"
#include "display.h"
#include "format.h"
#include "jsonout.h"

#include "selfmod.h"

typedef struct cli_app {
    const cli_options *opt;
    sm_gen_params gen;            /* opt->gen with operators and the event sink */
    sm_operator *operators[2 * CLI_MAX_LIST]; /* --operator's, then the extra ones */
    int32_t n_operators;
    int32_t n_owned_operators;    /* the first ones, made from --operator     */
    sm_operator *const *extra_operators; /* a binding's own, not owned        */
    int32_t n_extra_operators;
    FILE *out;                    /* the text or the JSON lines: stdout, or a binding's sink */
    bool keep_signals;            /* a binding's: generation leaves the process's signal handlers alone */
    char *wrapped_prompt;         /* --wrap-prompt's form of -p               */
    sm_model *model;              /* models[0]: tokenizer, descriptions      */
    sm_model *models[SM_MAX_MODELS];
    int32_t n_models;
    char model_label[8192];       /* the model path, or the paths joined by ',' */
    sm_session *session;
    sm_batch *batch;              /* a binding's runner on a batch: its sessions' sequences */
    sm_memlog *memlog;            /* NULL: no memory file                    */
    bool stream_to_terminal;      /* stdout is a terminal, no --json-stream  */
    display disp;                 /* used when stream_to_terminal            */
    line_style style;             /* of the lines on stderr                  */
    struct cli_intro *intro;      /* introspection flags at run time (intro_run.c) */
    bool prompt_fed;              /* --prompt-cache fed the prompt already    */
    const char *prompt_text;      /* -p as fed (--wrap-prompt wraps it)       */
    json_original json_original;  /* --json-stream=original's running state   */
    sm_tokens prefill;            /* --prefill's tokens (gen.forced_tokens)   */
    char *grammar_text;           /* --grammar-file's contents, or --json-schema's grammar */
    char *chat_template_text;     /* --chat-template-file's contents          */
    int64_t n_unknown_reported;   /* characters outside the vocabulary, said  */
} cli_app;

/* Prints `llama_selfmod: error: ...` on stderr, or on the stream this
 * thread set with cli_set_error_stream (NULL: stderr again). */
void cli_error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
void cli_set_error_stream(FILE *out);

#endif
