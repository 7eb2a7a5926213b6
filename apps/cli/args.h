/* Command-line flags of llama_selfmod: parsing, checking, help. */
#ifndef CLI_ARGS_H
#define CLI_ARGS_H

#include "fusion_args.h"
#include "intro_args.h"
#include "selfmod.h"

#include <stdbool.h>
#include <stdio.h>

#define CLI_DEFAULT_MODEL "models/model.gguf"
#define CLI_DEFAULT_MEMORY_FILE "selfmod_memory.jsonl"
#define CLI_MAX_LIST 64 /* --stop and --operator may each be given this often */

typedef struct cli_options {
    const char *model_path;
    const char *prompt;          /* NULL: interactive mode                 */
    const char *prompt_file;     /* -f: where the prompt came from          */
    char *file_texts[2];         /* -f's and --system-prompt-file's texts,
                                    owned (cli_options_free)               */
    const char *memory_file;     /* NULL: no memory file                   */
    bool seed_given;
    bool model_given;            /* -m was on the command line             */
    bool ctx_size_given;         /* --ctx-size was on the command line     */
    bool confidence_given, critical_given, sharpen_given, max_retractions_given;
    bool preset_given;                 /* --preset chose the policy's style  */
    bool operator_top_k_given;
    const char *samplers;        /* --samplers "top_k;top_p;...", or NULL */
    const char *sampling_seq;    /* --sampling-seq "kpi", or NULL          */

    sm_session_params session;   /* --ctx-size, --threads, --max-rewind    */
    int32_t n_gpu_layers;
    bool n_gpu_layers_given;
    const char *rpc_servers;     /* --rpc                                  */
    bool no_repack;              /* --no-repack                            */
    sm_gen_params gen;           /* sampling, policy, stops, operators     */

    const char *stops[CLI_MAX_LIST];
    int32_t n_stops;
    const char *operator_specs[CLI_MAX_LIST];
    int32_t n_operator_specs;

    sm_chat_params chat;         /* --chat-template, --system, labels      */

    bool quiet;
    bool verbose;                /* llama.cpp's own log lines too          */
    bool verbose_events;
    bool no_color;
    bool json_stream;
    bool json_original;          /* --json-stream=original                 */
    sm_memlog_format memory_format;
    bool wrap_prompt;            /* -p goes in as "User: ...\nAssistant:" */
    const char *prefill;         /* --prefill: the answer's first words    */
    const char *grammar;         /* --grammar                              */
    const char *grammar_file;    /* --grammar-file                         */
    bool json_output;            /* --json-output                          */
    const char *json_schema;     /* --json-schema                          */
    const char *json_schema_file;/* --json-schema-file                     */
    const char *chat_template_file; /* --chat-template-file                */
    int32_t beam_width;          /* --beam-search; 0 = sample             */
    float beam_stability, beam_focus;

    cli_intro_options intro;     /* introspection and intervention flags   */
    cli_fusion_options fusion;   /* --models and the --fusion-* flags      */
} cli_options;

typedef enum cli_parse_outcome {
    CLI_PARSE_RUN,      /* go on with the options                          */
    CLI_PARSE_EXIT_OK,  /* --help or --version was printed                 */
    CLI_PARSE_ERROR,    /* a message was printed; exit with CLI_EXIT_USAGE */
} cli_parse_outcome;

#define CLI_EXIT_USAGE 2

/* Parses argv into *opt. Errors are printed to `err` as one line. The
 * options point into argv, which must outlive them, and into the texts of
 * the files read (-f, --system-prompt-file): cli_options_free frees those,
 * whatever the outcome. */
cli_parse_outcome cli_parse_args(int argc, char **argv, cli_options *opt, FILE *err);
void cli_options_free(cli_options *opt);

void cli_print_help(FILE *out);
/* Whether --name is a flag: -1 no, 0 it takes no value, 1 it takes one,
 * 2 it may take one (--json-stream[=FORMAT]). */
int cli_flag_arity(const char *name);
void cli_print_version(FILE *out);

#endif
