/*
 * selfmod.h - the public C API of llama_selfmod.
 *
 * One generation loop on top of llama.cpp that watches the model's own
 * signals and acts on them:
 *
 *   decode -> signals -> decisions (policy, operators, fusion) -> sample
 *          -> commit, or rewind
 *
 * Conventions follow llama.h: opaque handles, *_default_params() structs,
 * explicit *_free(), status codes plus a human-readable last error.
 * The library keeps no global state and never prints or exits.
 */
#ifndef SELFMOD_H
#define SELFMOD_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define SM_VERSION "0.1.0"

typedef int32_t sm_token;

/* ------------------------------------------------------------------ */
/* Status codes and errors                                             */
/* ------------------------------------------------------------------ */

typedef enum sm_status {
    SM_OK = 0,
    SM_ERR_INVALID_ARGUMENT, /* a parameter value is out of range      */
    SM_ERR_IO,               /* a file is missing, unreadable, unwritable */
    SM_ERR_MODEL,            /* a model file could not be loaded        */
    SM_ERR_VOCAB_MISMATCH,   /* models do not share one vocabulary      */
    SM_ERR_CONTEXT,          /* a llama context could not be created    */
    SM_ERR_PROMPT_TOO_LONG,  /* the prompt does not fit the context     */
    SM_ERR_DECODE,           /* llama_decode failed                     */
    SM_ERR_STATE,            /* the call is not valid in this state     */
    SM_ERR_NO_MEMORY,
    SM_ERR_CANCELLED,
} sm_status;

const char *sm_status_name(sm_status status);

/* Errors from constructors, which have no handle to keep them in. */
typedef struct sm_error {
    sm_status status;
    char message[512];
} sm_error;

/* ------------------------------------------------------------------ */
/* Models                                                              */
/* ------------------------------------------------------------------ */

typedef struct sm_model sm_model;

/* Called while a model loads, progress in [0, 1]. */
typedef void (*sm_progress_fn)(float progress, void *user_data);

typedef struct sm_model_params {
    int32_t n_gpu_layers;       /* layers to offload; 0 = CPU only       */
    sm_progress_fn progress;    /* may be NULL                            */
    void *progress_user_data;
} sm_model_params;

sm_model_params sm_model_default_params(void);

/* Checks the file (exists, readable, GGUF magic) before llama.cpp sees it,
 * so a bad path gives a precise message. Returns NULL on failure. */
sm_model *sm_model_load(const char *path, const sm_model_params *params, sm_error *err);
void sm_model_free(sm_model *model);

const char *sm_model_path(const sm_model *model);
const char *sm_model_description(const sm_model *model); /* e.g. "llama 260K F32" */
int32_t sm_model_n_vocab(const sm_model *model);
int32_t sm_model_n_ctx_train(const sm_model *model);
/* The underlying llama.cpp handle, for code that needs llama.h directly. */
struct llama_model *sm_model_llama(const sm_model *model);

/* Silences (quiet = true) or restores llama.cpp's and ggml's own logging.
 * This is the one process-wide setting: llama.cpp's logger is global. */
void sm_set_llama_logging(bool enabled);

/* Tokenize text with a model's tokenizer. Returns the number of tokens, or
 * -(required size) when max_tokens is too small. */
int32_t sm_tokenize(const sm_model *model, const char *text, sm_token *tokens,
                    int32_t max_tokens, bool add_special, bool parse_special);
/* Detokenize a sequence exactly as llama.cpp does. Returns bytes written
 * (excluding the terminating NUL), or -(required size) when too small. */
int32_t sm_detokenize(const sm_model *model, const sm_token *tokens, int32_t n_tokens,
                      char *text, int32_t max_bytes);

/* ------------------------------------------------------------------ */
/* Per-token signals                                                   */
/* ------------------------------------------------------------------ */

/*
 * Every signal is computed over the FULL vocabulary from the RAW
 * distribution at the position: the logits exactly as llama.cpp returned
 * them (or the fused log-probabilities with several models), at
 * temperature 1, before repeat penalties, bans or truncation.
 * p_sampled is the one exception: the probability the sampler actually gave
 * the chosen token after penalties, truncation and temperature.
 */
typedef struct sm_signals {
    sm_token token;     /* the chosen token                                 */
    float p_chosen;     /* softmax(raw logits)[token]                        */
    float logit;        /* raw logit of the chosen token                    */
    sm_token top1_token;
    float p_top1;       /* largest raw probability                           */
    sm_token top2_token;
    float p_top2;       /* second largest raw probability                    */
    float entropy;      /* -sum p ln p over the raw distribution (nats)      */
    float varentropy;   /* sum p (ln p + H)^2                                */
    float p_sampled;    /* probability under the sampler's final distribution */
} sm_signals;

/* ------------------------------------------------------------------ */
/* Sampling                                                            */
/* ------------------------------------------------------------------ */

/*
 * The sampling chain, in order: bans -> repeat penalty (last n kept tokens)
 * -> top-k -> top-p -> min-p (both on the penalised logits at T = 1)
 * -> temperature -> draw. Temperature 0 is greedy (argmax after penalties
 * and bans). The penalty history is the kept token list itself, so a
 * rewind rewinds it by construction.
 */
typedef struct sm_sampling_params {
    float temperature;     /* 0.7; 0 = greedy                               */
    int32_t top_k;         /* 40; <= 0 = whole vocabulary                   */
    float top_p;           /* 0.95; in (0, 1], 1 = off                      */
    float min_p;           /* 0.05; in [0, 1), 0 = off                      */
    float repeat_penalty;  /* 1.1; 1 = off                                  */
    int32_t repeat_last_n; /* 64 tokens; 0 = off                             */
    uint64_t seed;         /* same seed, same run                            */
} sm_sampling_params;

/* ------------------------------------------------------------------ */
/* Self-modification policy                                            */
/* ------------------------------------------------------------------ */

/*
 * Once per sampled token the policy looks at the mean confidence (raw
 * p_chosen) of the last `window` tokens, the candidate included, and:
 *   mean < critical_threshold and retraction on -> T = min(T*1.4, 1.5),
 *        retract `retract_tokens` tokens (the candidate included), ban the
 *        first removed token at its position, and regenerate;
 *   else mean < confidence_threshold -> T = min(T*1.2, 1.3),
 *        rp = min(rp*1.1, 1.5) (PARAM_ADJUST);
 *   else mean > sharpen_threshold and T > 0.4 -> T = max(T*0.88, 0.3) (SHARPEN);
 *   fewer than 5 distinct tokens among the last 10 -> rp = min(rp*1.15, 2.0)
 *        (ANTI_REPETITION);
 *   aggressive: with probability 0.05 T = clamp(T + U(-0.15, 0.15), 0.3, 1.5)
 *        (EXPLORATION_BURST), and every factor's step is 1.5x larger.
 * The adapted T and rp are used to sample the next token.
 */
typedef struct sm_policy_params {
    bool enabled;                /* false: no adaptation at all              */
    bool aggressive;
    /* Retraction at critical confidence: -1 = only when aggressive (the
     * original's behaviour, the default), 0 = never, 1 = always. */
    int32_t retract;
    int32_t window;              /* 5                                        */
    float critical_threshold;    /* 0.35                                     */
    float confidence_threshold;  /* 0.5                                      */
    float sharpen_threshold;     /* 0.85                                     */
    int32_t retract_tokens;      /* 3                                        */
    int32_t max_retractions;     /* 3 per generation                         */
    float exploration_prob;      /* 0.05                                     */
    int32_t repetition_window;   /* 10                                       */
    int32_t repetition_min_distinct; /* 5                                    */
} sm_policy_params;

/* ------------------------------------------------------------------ */
/* Multi-model fusion                                                  */
/* ------------------------------------------------------------------ */

/*
 * With several models, every model decodes the same tokens in its own
 * context and thread; their full next-token distributions p_m are fused
 * into one, which then goes through the normal sampler, policy and
 * operators. w_m are the user's weights (default 1).
 *   confidence  sum_m w_m max(p_m) p_m / sum_m w_m max(p_m)
 *   average     sum_m w_m p_m / sum_m w_m
 *   voting      each model votes for its top token with weight w_m max(p_m);
 *               the distribution is the vote shares (voted tokens only)
 *   harmony     models whose max(p_m) < 0.3 abstain (all take part if all
 *               would), then confidence-weighted
 *   adaptive    the same abstention, then equal weights
 *   democratic  sum_m p_m / n: one model, one vote; weights ignored
 *   round_robin model (i / turn) mod n decides token i alone
 *   reference   model 0 decides; positions where another model's top-1
 *               differs are reported
 *   contrastive score = ln p_0 - beta ln p_1 over the tokens with
 *               p_0 >= alpha max(p_0); the others are excluded
 */
typedef enum sm_fusion_mode {
    SM_FUSION_CONFIDENCE = 0,
    SM_FUSION_AVERAGE,
    SM_FUSION_VOTING,
    SM_FUSION_HARMONY,
    SM_FUSION_ADAPTIVE,
    SM_FUSION_DEMOCRATIC,
    SM_FUSION_ROUND_ROBIN,
    SM_FUSION_REFERENCE,
    SM_FUSION_CONTRASTIVE,
} sm_fusion_mode;

const char *sm_fusion_mode_name(sm_fusion_mode mode);
/* Returns false for an unknown name. */
bool sm_fusion_mode_from_name(const char *name, sm_fusion_mode *mode);

#define SM_MAX_MODELS 8

typedef struct sm_fusion_params {
    sm_fusion_mode mode;
    float weights[SM_MAX_MODELS]; /* used when n_weights > 0              */
    int32_t n_weights;
    int32_t turn;                 /* round_robin: tokens per turn (1)     */
    float alpha;                  /* contrastive plausibility (0.1)        */
    float beta;                   /* contrastive amateur weight (0.5)      */
    float abstain_below;          /* harmony/adaptive (0.3)                */
} sm_fusion_params;

/* Per generated token, with several models. */
typedef struct sm_fusion_info {
    int32_t n_models;
    float top1_agreement;   /* fraction of models whose top-1 is the chosen token */
    float top3_agreement;   /* fraction of participating models with it in their top 3 */
    float js_divergence;    /* mean pairwise Jensen-Shannon divergence, bits, [0, 1] */
    int32_t leading_model;  /* whose top-1 won with the highest probability; -1 none */
    float p_chosen[SM_MAX_MODELS];  /* each model's probability of the chosen token */
    float p_top1[SM_MAX_MODELS];    /* each model's top probability           */
    sm_token top1[SM_MAX_MODELS];   /* each model's top-1 token               */
    float unmapped_mass[SM_MAX_MODELS]; /* --fusion-align: mass that found no token */
    bool reference_differs;         /* some model's top-1 differs from model 0's */
} sm_fusion_info;

/* ------------------------------------------------------------------ */
/* Events                                                              */
/* ------------------------------------------------------------------ */

typedef enum sm_event_type {
    SM_EVENT_START,        /* generation begins (prompt decoded)            */
    SM_EVENT_TOKEN,        /* a token was committed                         */
    SM_EVENT_MODIFICATION, /* the policy changed a parameter                */
    SM_EVENT_RETRACTION,   /* the policy removed tokens                     */
    SM_EVENT_BACKTRACK,    /* an operator removed tokens                    */
    SM_EVENT_DONE,         /* generation ended                              */
} sm_event_type;

typedef enum sm_mod_type {
    SM_MOD_NONE = 0,
    SM_MOD_PARAM_ADJUST,
    SM_MOD_SHARPEN,
    SM_MOD_ANTI_REPETITION,
    SM_MOD_EXPLORATION_BURST,
    SM_MOD_RETRACT,
    SM_MOD_BACKTRACK,
} sm_mod_type;

const char *sm_mod_type_name(sm_mod_type type);

typedef enum sm_stop_reason {
    SM_STOP_NONE = 0,
    SM_STOP_EOG,            /* the model produced an end-of-generation token */
    SM_STOP_N_PREDICT,      /* n_predict tokens were kept                    */
    SM_STOP_CONTEXT_FULL,   /* no room left in the context                   */
    SM_STOP_STOP_STRING,    /* a user stop string appeared                   */
    SM_STOP_BACKTRACK_LIMIT,/* operators exhausted max_backtracks            */
    SM_STOP_CANCELLED,      /* the event callback asked to stop              */
    SM_STOP_ERROR,
} sm_stop_reason;

const char *sm_stop_reason_name(sm_stop_reason reason);

typedef struct sm_event {
    sm_event_type type;
    sm_mod_type mod;            /* MODIFICATION / RETRACTION / BACKTRACK     */
    int32_t token_index;        /* index in the generated tokens             */
    float confidence;           /* window mean for the policy, else p_chosen */
    const char *description;    /* human-readable, never NULL                */
    const char *source;         /* "policy" or the operator's name           */
    float temperature_before, temperature_after;
    float repeat_penalty_before, repeat_penalty_after;
    int32_t n_removed;          /* tokens removed (RETRACTION/BACKTRACK)     */
    /* TOKEN events */
    sm_token token;
    const char *piece;          /* the token's text                          */
    sm_signals signals;
    const sm_fusion_info *fusion; /* NULL with one model                     */
    /* DONE events */
    sm_stop_reason stop_reason;
} sm_event;

/* Receives every event as it happens. Return false to cancel generation. */
typedef bool (*sm_event_fn)(const sm_event *event, void *user_data);

/* ------------------------------------------------------------------ */
/* Backtracking operators                                              */
/* ------------------------------------------------------------------ */

typedef struct sm_candidate {
    sm_token token;
    float logit;
    float prob;   /* raw softmax probability over the full vocabulary */
} sm_candidate;

/* What an operator sees for each sampled token, before it is committed. */
typedef struct sm_token_view {
    int32_t position;            /* index in the generated tokens            */
    sm_token token;              /* the sampled (candidate) token            */
    float prob;                  /* its raw probability                      */
    float logit;                 /* its raw logit                            */
    const float *logits;         /* the full raw distribution, n_vocab long  */
    int32_t n_vocab;
    const sm_candidate *top;     /* the top_n most probable, descending      */
    int32_t n_top;
    const char *piece;           /* the candidate's text                     */
    const sm_signals *signals;
} sm_token_view;

/*
 * An operator decides how many tokens to remove after each sampled token
 * (0 = keep; 1 = the candidate itself; k = the candidate and the k-1 kept
 * tokens before it). It is shown every candidate exactly once, in order,
 * and told with on_backtrack(n) whenever the last n tokens it was shown are
 * gone, so it can roll back its own state exactly.
 */
typedef struct sm_operator_vtable {
    const char *name;
    int32_t (*decide)(void *state, const sm_token_view *view);
    void (*on_backtrack)(void *state, int32_t n_removed);
    void (*reset)(void *state);
    void (*free_state)(void *state);
} sm_operator_vtable;

typedef struct sm_operator {
    const sm_operator_vtable *vt;
    void *state;
    char description[128];       /* the signal that fired last, for events   */
} sm_operator;

/* Creates a built-in operator from "name" or "name:key=value,key=value".
 * Unknown names, keys or out-of-range values fail with a message listing
 * the valid ones. */
sm_operator *sm_operator_from_spec(const char *spec, sm_error *err);
/* Wraps a user operator; the library calls vt->free_state on free. */
sm_operator *sm_operator_new(const sm_operator_vtable *vt, void *state);
void sm_operator_free(sm_operator *op);
/* The built-in names, NULL-terminated, and their help text. */
const char *const *sm_operator_names(void);
const char *sm_operator_help(void);

typedef enum sm_combine_mode {
    SM_COMBINE_FIRST = 0,  /* the first operator (in order) that fires wins */
    SM_COMBINE_MAX,        /* the largest count wins                        */
} sm_combine_mode;

/* ------------------------------------------------------------------ */
/* Generation                                                          */
/* ------------------------------------------------------------------ */

typedef struct sm_gen_params {
    int32_t n_predict;              /* 256 kept tokens; < 0 = until stop     */
    sm_sampling_params sampling;
    sm_policy_params policy;
    /* Stop strings: generation ends when the text contains one; the text
     * returned ends before it. */
    const char *const *stop_strings;
    int32_t n_stop_strings;
    /* Backtracking operators (issue 3); may be empty. Not owned. */
    sm_operator *const *operators;
    int32_t n_operators;
    sm_combine_mode combine;
    int32_t backtrack_every_n;      /* ask operators every n tokens (1)      */
    int32_t max_backtracks;         /* per generation (64); then stop         */
    int32_t max_backtracks_per_position; /* (4); then the token is kept     */
    int32_t top_n_view;             /* candidates shown to operators (10)    */
    sm_fusion_params fusion;        /* used when the session has several models */
    sm_event_fn on_event;           /* may be NULL                           */
    void *user_data;
} sm_gen_params;

sm_sampling_params sm_sampling_default_params(void);
sm_policy_params sm_policy_default_params(void);
sm_gen_params sm_gen_default_params(void);
/* Validates every field; on failure writes a message naming the field. */
sm_status sm_gen_params_validate(const sm_gen_params *params, char *msg, size_t msg_size);

typedef struct sm_result {
    char *text;                 /* generated text, UTF-8, NUL-terminated     */
    size_t text_len;
    sm_token *tokens;           /* kept generated tokens                      */
    int32_t n_tokens;
    int32_t n_prompt_tokens;    /* tokens fed before generation               */
    sm_stop_reason stop_reason;
    int32_t n_retractions;      /* retractions performed                      */
    int32_t n_backtracks;       /* operator backtracks performed              */
    int32_t n_tokens_removed;   /* by retractions and backtracks              */
    int32_t n_sampled;          /* tokens sampled, rejected ones included     */
    int32_t n_decoded;          /* tokens decoded while generating            */
    float avg_confidence;       /* mean p_chosen over the kept tokens         */
    float final_temperature;
    float final_repeat_penalty;
    double t_prompt_ms;
    double t_generate_ms;
    sm_event *events;           /* every MODIFICATION/RETRACTION/BACKTRACK    */
    int32_t n_events;
    /* With several models: one entry per kept token, else NULL. */
    sm_fusion_info *fusion;
    int32_t n_models;
} sm_result;

void sm_result_free(sm_result *result);

/* ------------------------------------------------------------------ */
/* Sessions                                                            */
/* ------------------------------------------------------------------ */

typedef struct sm_session sm_session;

typedef struct sm_session_params {
    uint32_t n_ctx;        /* 2048; 0 = the model's training context       */
    uint32_t n_batch;      /* prompt batch size (512)                       */
    int32_t n_threads;     /* 0 = number of online cores                    */
    /* How many generated positions keep their distribution so that a
     * rewind never re-decodes anything; deeper rewinds are refused. */
    int32_t max_rewind;    /* 64                                            */
    /* Several models whose vocabularies differ: map each model's tokens
     * onto model 0's by token text (each such model follows the text). */
    bool fusion_align;
} sm_session_params;

sm_session_params sm_session_default_params(void);

/* A session owns one llama context per model. */
sm_session *sm_session_new(sm_model *model, const sm_session_params *params, sm_error *err);
/* Several models decoding in parallel for fusion. The vocabularies must be
 * identical (type, size, every token's text, BOS/EOS) unless
 * params->fusion_align; a mismatch fails with SM_ERR_VOCAB_MISMATCH naming
 * the first differing token. */
sm_session *sm_session_new_fused(sm_model *const *models, int32_t n_models,
                                 const sm_session_params *params, sm_error *err);
/* Compares two vocabularies; on mismatch writes what differs first. */
bool sm_vocab_equal(const sm_model *a, const sm_model *b, char *why, size_t why_size);
int32_t sm_session_n_models(const sm_session *session);
/* Model m's own context: its KV position and its raw distribution. */
int32_t sm_session_model_kv_pos(const sm_session *session, int32_t m);
const float *sm_session_model_logits(const sm_session *session, int32_t m);
void sm_session_free(sm_session *session);
const char *sm_session_last_error(const sm_session *session);

/* Appends text to the context (tokenized with parse_special) and
 * decodes it. add_bos adds the model's BOS when it wants one. */
sm_status sm_session_feed_text(sm_session *session, const char *text, bool add_bos);
sm_status sm_session_feed_tokens(sm_session *session, const sm_token *tokens, int32_t n_tokens);

/* Feeds `prompt` (may be NULL or "" to continue from the current context)
 * and generates. The result must be freed with sm_result_free. */
sm_status sm_session_generate(sm_session *session, const char *prompt,
                              const sm_gen_params *params, sm_result *result);

/* Low-level control, used by the chat layer, the tree search and tests. */
sm_status sm_session_clear(sm_session *session);
/* Removes the last n tokens of the context. Needs no decode when the
 * distribution at the new end is still held (rewinds of up to max_rewind
 * generated tokens); otherwise the last kept token is decoded again. */
sm_status sm_session_rewind(sm_session *session, int32_t n_tokens);
/* Keeps only the first n tokens (a common prefix), like rewind. */
sm_status sm_session_truncate(sm_session *session, int32_t n_keep);
int32_t sm_session_n_past(const sm_session *session);       /* tokens in context  */
int32_t sm_session_kv_pos(const sm_session *session);       /* llama's seq_pos_max + 1 */
const sm_token *sm_session_tokens(const sm_session *session, int32_t *n_tokens);
/* The raw distribution for the next position (n_vocab floats); with
 * several models, model 0's. */
const float *sm_session_logits(const sm_session *session);
int32_t sm_session_n_ctx(const sm_session *session);
/* Counts every token passed to llama_decode since the session began. */
int64_t sm_session_n_decoded_total(const sm_session *session);
const sm_model *sm_session_model(const sm_session *session);

/* ------------------------------------------------------------------ */
/* Multi-turn chat                                                     */
/* ------------------------------------------------------------------ */

typedef struct sm_chat sm_chat;

typedef struct sm_chat_message {
    const char *role;     /* "system", "user" or "assistant" */
    const char *content;
} sm_chat_message;

typedef struct sm_chat_params {
    const char *system_prompt;     /* may be NULL                              */
    /* A template name known to llama_chat_apply_template ("chatml",
     * "llama2", ...), NULL to use the model's own, and when the model has
     * none the plain fallback below. */
    const char *template_name;
    const char *fallback_user;      /* "User:"                                 */
    const char *fallback_assistant; /* "Assistant:"                            */
} sm_chat_params;

sm_chat_params sm_chat_default_params(void);

/* The chat drives `session` (not owned): the KV cache is kept between
 * turns and only new tokens are decoded. */
sm_chat *sm_chat_new(sm_session *session, const sm_chat_params *params, sm_error *err);
void sm_chat_free(sm_chat *chat);

/* (history, user message) -> answer. The answer is result->text; the
 * history gains both messages. When the context would overflow, the oldest
 * turns are dropped (see sm_chat_last_turn_info). */
sm_status sm_chat_turn(sm_chat *chat, const char *user_message, const sm_gen_params *params,
                       sm_result *result);
/* Replaces the history (e.g. the user edited an earlier message). The next
 * turn re-uses the KV cache up to the first token that differs. */
sm_status sm_chat_set_history(sm_chat *chat, const sm_chat_message *messages, int32_t n_messages);
sm_status sm_chat_reset(sm_chat *chat);
int32_t sm_chat_n_messages(const sm_chat *chat);
const sm_chat_message *sm_chat_messages(const sm_chat *chat);
const char *sm_chat_template_used(const sm_chat *chat); /* a name, or "fallback" */

typedef struct sm_chat_turn_info {
    int32_t n_reused;        /* context tokens kept from before the turn   */
    int32_t n_prompt_decoded;/* tokens decoded to prepare the turn          */
    int32_t n_dropped_turns; /* oldest turns dropped to fit the context     */
} sm_chat_turn_info;
sm_chat_turn_info sm_chat_last_turn_info(const sm_chat *chat);
/* What went wrong in the last failed call on this chat, "" if nothing. */
const char *sm_chat_last_error(const sm_chat *chat);

/* ------------------------------------------------------------------ */
/* JSON forms                                                          */
/* ------------------------------------------------------------------ */

/* The event as one JSON object (no newline). Caller frees with free(). */
char *sm_event_to_json(const sm_event *event);

/* Appends one generation to a JSONL memory file as a single line.
 * The record has the original's fields (timestamp, prompt, response,
 * modifications, avg_confidence, final_temperature, retractions) plus
 * model, parameters, token counts, stop reason and timings. */
typedef struct sm_memlog sm_memlog;
sm_memlog *sm_memlog_open(const char *path, sm_error *err);
sm_status sm_memlog_append(sm_memlog *log, const char *model_path, const char *prompt,
                           const sm_gen_params *params, const sm_result *result,
                           sm_error *err);
void sm_memlog_close(sm_memlog *log);

#ifdef __cplusplus
}
#endif

#endif /* SELFMOD_H */
