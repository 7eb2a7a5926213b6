/*
 * Generation requests: the JSON bodies of /v1/completions,
 * /v1/chat/completions and /completion turned into generation parameters,
 * with every invalid field named in an OpenAI-style error.
 */
#ifndef SERVER_REQUEST_H
#define SERVER_REQUEST_H

#include "server/models.h"

#include <cjson/cJSON.h>

#include <stdbool.h>

typedef enum api_kind {
    API_COMPLETIONS,    /* POST /v1/completions       */
    API_CHAT,           /* POST /v1/chat/completions  */
    API_LLAMA,          /* POST /completion           */
    API_INFILL,         /* POST /infill: parsed as such, then answered as
                           /completion (the request's api is API_LLAMA) */
} api_kind;

typedef struct api_error {
    unsigned status;
    const char *type;   /* "invalid_request_error", "server_error", ... */
    const char *code;   /* NULL or e.g. "model_not_found"              */
    char param[96];
    char message[512];
    int32_t n_prompt_tokens, n_ctx; /* a prompt too long: both set (llama-server's fields) */
} api_error;

/* Fills err; returns false so callers can `return api_fail(...)`. */
bool api_fail(api_error *err, unsigned status, const char *param, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

enum { MAX_CHOICES = 16, MAX_STOPS = 16, MAX_OPERATORS = 16, MAX_TOP_LOGPROBS = 20, MAX_N_PROBS = 100, MAX_LOGIT_BIAS = 1024 };

typedef struct gen_request {
    api_kind api;
    int target;                     /* see models.h                       */
    sm_gen_params params;           /* points into stops and operators    */
    char *stops[MAX_STOPS];
    int n_stops;
    sm_operator *operators[MAX_OPERATORS];
    int n_operators;
    sm_logit_bias *logit_bias;      /* owned; params.sampling points here */
    int n_logit_bias;
    int n_choices;                  /* OpenAI's n: answers generated one by one */
    int id_slot;                    /* llama-server's: this slot, or -1    */
    bool stream;
    bool include_usage;             /* stream_options.include_usage       */
    bool logprobs;                  /* per-token log-probabilities        */
    int n_probs;                    /* top alternatives per token         */
    bool live_events;               /* stream the library's events too    */
    bool seed_given;
    char *prompt;                   /* completions and /completion        */
    cJSON *prompt_mixed;            /* ... or token ids and strings, in order */
    cJSON *response_fields;         /* /completion: the fields to answer with, or NULL */
    sm_chat_message *messages;      /* chat; strings owned                */
    int n_messages;
    bool has_system;
    char *prefill;                  /* chat: the answer's given beginning, or NULL */
    /* Tool calls: the conversation goes to the template as OpenAI's JSON
     * (messages with tool_calls and role "tool"), rendered to `prompt`. */
    bool tool_mode;
    char *messages_json, *tools_json, *tool_choice;
    bool parallel_tool_calls;
    /* chat_template_kwargs over serve's --chat-template-kwargs, and
     * reasoning_effort: the template's variables (JSON object), or NULL */
    char *template_kwargs;
    /* llama-server's fields */
    bool return_tokens;             /* /completion lists the token ids     */
    bool cache_prompt;              /* reuse the slot's cached prefix (true) */
    bool timings_per_token;         /* every stream chunk carries timings  */
    bool return_progress;           /* a stream reports the prompt's decode */
    signed char verbose;            /* "verbose": 1, 0, or -1 (serve --verbose) */
    char *grammar;                  /* owned; params.grammar points here    */
    /* /infill: the code before and after the gap (strings, or token ids
     * mixed with strings) and the other files' chunks; prompt is the
     * middle's given beginning ("" when none) */
    bool infill;
    cJSON *input_prefix, *input_suffix, *input_extra;
    int32_t t_max_prompt_ms;        /* llama.vim's: the prompt's time limit, 0 = none */
} gen_request;

/* serve's --n-predict when given, else the API's own default (16 tokens
 * for /v1/completions, until a stop otherwise). */
#define N_PREDICT_UNSET INT32_MIN
/* No serve --seed: each request that sends none gets a fresh one. */
#define SEED_UNSET UINT64_MAX

/* A preset file serve --preset-dir offers: a request names it in
 * selfmod.preset. The sampling values apply unless the request sets its own. */
typedef struct named_preset {
    char name[64];
    sm_policy_params policy;
    bool sets_temperature, sets_repeat_penalty;
    float temperature, repeat_penalty;
} named_preset;

/* What a request starts from. */
typedef struct request_defaults {
    const sm_gen_params *base;    /* serve's defaults and --preset           */
    bool selfmod;                 /* --selfmod: the policy adapts sampling even
                                     for a request with no "selfmod" object */
    const named_preset *presets;  /* --preset-dir's files                     */
    int n_presets;
    const char *template_kwargs;  /* --chat-template-kwargs (a JSON object) or NULL */
} request_defaults;

/* Whether a "prompt" holds several prompts (each answered in turn). */
bool prompt_is_several(const cJSON *prompt);
bool gen_request_parse(const cJSON *body, api_kind api, const model_set *models, const request_defaults *defaults,
                       gen_request *req, api_error *err);
void gen_request_free(gen_request *req);
/* Points req->params at req's own stop strings and operators again (after
 * the struct was copied). */
void gen_request_bind(gen_request *req);

/* Helpers shared with the other endpoints. A missing or null field leaves
 * *out unchanged and returns true. */
const cJSON *json_field(const cJSON *object, const char *key);
bool get_int_field(const cJSON *object, const char *key, const char *param, long long lo, long long hi,
                   long long *out, api_error *err);
bool get_number_field(const cJSON *object, const char *key, const char *param, double lo, double hi,
                      double *out, api_error *err);
bool get_bool_field(const cJSON *object, const char *key, const char *param, bool *out, api_error *err);
/* 400 naming the first field of body that is not among known_fields:
 * a field a server accepts must act. */
bool check_known_fields(const cJSON *body, const char *const *known_fields, size_t n_known, api_error *err);
/* A random seed for requests that give none. */
uint64_t fresh_seed(void);

#endif
