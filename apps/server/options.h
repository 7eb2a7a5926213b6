/* Command-line flags of `llama_selfmod serve`. */
#ifndef SERVER_OPTIONS_H
#define SERVER_OPTIONS_H

#include "selfmod.h"
#include "server/request.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

typedef struct server_options {
    const char *host;                      /* 127.0.0.1                        */
    int port;                              /* 8080; 0 = any free port          */
    char *model_paths[SM_MAX_MODELS];      /* owned                            */
    int n_models;
    const char *alias;                     /* --alias A,B: the model's names   */
    const char *tags;                      /* --tags T,U: /v1/models' labels   */
    const char *api_key;                   /* NULL: no authentication          */
    char *api_key_owned;                   /* read from --api-key-file         */
    const char *cors_origins;              /* NULL: same origin only; "*": any */
    int max_connections;                   /* open connections at most (64)    */
    int header_timeout;                    /* seconds for a request's headers  */
    bool selfmod_default;                  /* --selfmod: adapt without asking  */
    /* What a request starts from: the library's defaults without a repeat
     * penalty (OpenAI's), refined by --preset NAME|FILE. */
    sm_gen_params base;
    named_preset *presets;                 /* --preset-dir's files (owned)     */
    int n_presets;
    bool no_batch;                         /* --no-batch: a context per slot   */
    bool metrics;                          /* --metrics: GET /metrics          */
    bool slots;                            /* --slots: GET /slots              */
    bool no_ui;                            /* --no-ui: no web page             */
    const char *user_label, *assistant_label; /* the plain chat form's         */
    int parallel;                          /* slots generating at once (2)     */
    int n_threads;                         /* per slot; 0 = cores / parallel   */
    uint32_t n_ctx;                        /* per slot (2048)                  */
    uint32_t n_ctx_total;                  /* -c: all the slots' (llama-server) */
    bool ctx_size_given, ctx_total_given;
    uint32_t n_batch;                      /* --batch-size; 0 = the library's  */
    bool kv_unified;                       /* --kv-unified: one pool of n_ctx  */
    int drain_timeout;                     /* seconds a shutdown waits (30)    */
    const char *rpc_servers;               /* --rpc                            */
    bool no_repack;                        /* --no-repack                      */
    bool n_gpu_layers_given;
    size_t max_body;                       /* request bytes (1 MiB)            */
    const char *web_dir;                   /* NULL: found at start-up          */
    const char *chat_template;             /* NULL: the model's own            */
    char *chat_template_text;              /* --chat-template-file's Jinja     */
    const char *chat_template_kwargs;      /* --chat-template-kwargs (JSON)    */
    bool no_jinja;                         /* --no-jinja                       */
    bool verbose;                          /* --verbose: "__verbose" in replies */
    bool drop_old_turns;                   /* --drop-old-turns                 */
    bool spm_infill;                       /* --spm-infill: /infill's suffix first */
    const char *slot_save_path;            /* --slot-save-path, or NULL        */
    bool fusion_align;
    int loom_max_beams;                    /* most beams a tree expands (64)   */
    int n_gpu_layers;
    bool quiet;                            /* no request log, no llama logs    */
} server_options;

typedef enum options_result {
    OPTIONS_RUN,
    OPTIONS_EXIT_OK,   /* --help was printed */
    OPTIONS_ERROR,     /* a message was printed */
} options_result;

options_result server_parse_options(int argc, char **argv, server_options *opt, FILE *out, FILE *err);
void server_options_free(server_options *opt);

#endif
