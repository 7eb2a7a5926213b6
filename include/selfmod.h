/*
 * selfmod.h - the public C API of llama_selfmod.
 *
 * One generation loop on top of llama.cpp that watches the model's own
 * signals and acts on them:
 *
 *   decode -> signals -> decisions (policy, operators, fusion) -> sample
 *          -> commit, or rewind
 *
 * The header is an index, one section per object, in this order:
 *   errors (sm_status, sm_error)     models and tokens (sm_model)
 *   signals, sampling, policy, fusion, introspection: the parameters
 *   events (sm_event)                operators (sm_operator)
 *   stages (sm_stage, sm_loop)       generation (sm_gen_params, sm_result)
 *   sessions (sm_session)            batches of sessions (sm_batch)
 *   chat (sm_chat)                   JSON forms
 *   metrics and the judge (sm_judge) the tree (sm_tree, the LLooM)
 *   introspection: control vectors, steering, hidden-state files
 *
 * Conventions follow llama.h: opaque handles, *_default_params() structs,
 * explicit *_free(). One error convention: a call that can fail returns an
 * sm_status (a constructor: NULL) and says why in one line, in the sm_error
 * it was given (constructors and free functions; NULL is allowed) or, for
 * an object's methods, in its *_last_error(). The library keeps no global
 * state and never prints or exits.
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

/* What tokenizing does with a character the vocabulary cannot represent
 * (possible only in vocabularies without byte tokens, such as character
 * or pruned vocabularies; llama.cpp itself would throw). */
typedef enum sm_unknown_chars {
    SM_UNKNOWN_TO_UNK = 0, /* map it to the vocabulary's unknown token and count it
                              (sm_model_n_unknown_chars); an error if there is none */
    SM_UNKNOWN_ERROR,      /* fail, naming the character and its byte offset      */
} sm_unknown_chars;

typedef struct sm_model_params {
    int32_t n_gpu_layers;       /* layers to offload; 0 = CPU only; -1 = all */
    /* ggml RPC servers ("HOST:PORT[,HOST:PORT...]", each a llama.cpp
     * ggml-rpc-server) whose devices take the offloaded layers, as
     * llama.cpp's --rpc: n_gpu_layers of them, split by the servers' memory.
     * NULL = none. A server that cannot be reached fails the load; one
     * that goes away later fails the decode (SM_ERR_DECODE), never the
     * process. */
    const char *rpc_servers;
    /* llama.cpp's --no-repack: the weights stay as stored, in no extra
     * buffer type (repacked layouts, AMX tiles). Those speed up batches,
     * but can slow one-token decoding: on an AMX Xeon an f16 model decodes
     * 1.5x faster without (README, "Beyond one machine"). false = llama.cpp's
     * default, except on a machine where llama.cpp's AMX product crashes or
     * errs (tried once per process, in a child): there, always without. */
    bool no_repack;
    sm_unknown_chars unknown_chars;
    sm_progress_fn progress;    /* may be NULL                            */
    void *progress_user_data;
} sm_model_params;

sm_model_params sm_model_default_params(void);

/* Checks the file (exists, readable, GGUF magic) before llama.cpp sees it,
 * so a bad path gives a precise message. Returns NULL on failure. */
sm_model *sm_model_load(const char *path, const sm_model_params *params, sm_error *err);
/* Whether the model's weights were left as stored, as with no_repack,
 * because llama.cpp's AMX matrix product crashes or errs on this machine
 * (tried once per process, in a child; see no_repack). */
bool sm_model_amx_refused(const sm_model *model);
void sm_model_free(sm_model *model);

const char *sm_model_path(const sm_model *model);
const char *sm_model_description(const sm_model *model); /* e.g. "llama 260K F32" */
int32_t sm_model_n_vocab(const sm_model *model);
/* Whether the token ends a generation (EOS, EOT and the like). */
bool sm_model_token_is_eog(const sm_model *model, sm_token token);
int32_t sm_model_n_ctx_train(const sm_model *model);
int32_t sm_model_n_embd(const sm_model *model);
/* The vocabulary's tokens that build prompts, -1 where it has none. */
typedef struct sm_special_tokens {
    sm_token bos;           /* the one a prompt starts with; -1: the model adds none */
    /* fill-in-the-middle (llama.cpp's FIM_PRE, _SUF, _MID, _REP, _SEP):
     * a code model's prefix, suffix and middle markers, and the repository
     * and file separators of its repository-level form */
    sm_token fim_prefix, fim_suffix, fim_middle, fim_repo, fim_sep;
} sm_special_tokens;
sm_special_tokens sm_model_special_tokens(const sm_model *model);

/* Embeddings (OpenAI's /v1/embeddings): each input decoded alone and its
 * tokens pooled by the model's own pooling (mean for a generative model,
 * which names none), L2-normalised. out receives n * sm_model_n_embd
 * floats, input by input; n_tokens (may be NULL) each text's token count.
 * A text is tokenized with the model's BOS; an input longer than the
 * model's training context fails (SM_ERR_PROMPT_TOO_LONG). n_threads 0:
 * the online cores. */
sm_status sm_embed(const sm_model *model, const char *const *texts, int32_t n, int32_t n_threads, float *out,
                   int32_t *n_tokens, sm_error *err);
sm_status sm_embed_tokens(const sm_model *model, const sm_token *const *inputs, const int32_t *n_tokens, int32_t n,
                          int32_t n_threads, float *out, sm_error *err);
/* The underlying llama.cpp handle, for code that needs llama.h directly. */
struct llama_model *sm_model_llama(const sm_model *model);

/* Silences (quiet = true) or restores llama.cpp's and ggml's own logging.
 * This is the one process-wide setting: llama.cpp's logger is global. */
void sm_set_llama_logging(bool enabled);

/*
 * Tokens of a text, in an array the library allocated (sm_tokens_free).
 * Characters mapped to the unknown token (SM_UNKNOWN_TO_UNK) are counted
 * in n_unknown; the first is kept so a front-end can say which.
 */
typedef struct sm_tokens {
    sm_token *data;
    int32_t n;
    int32_t n_unknown;
    size_t first_unknown_at;   /* byte offset of the first such character */
    char first_unknown[8];     /* that character, NUL-terminated          */
} sm_tokens;

/* Tokenizes text[0..len). parse_special = true turns the text of special
 * tokens (such as "<|endoftext|>") into those tokens: only for text the
 * program itself wrote (templates), never for a user's text. */
sm_status sm_tokenize(const sm_model *model, const char *text, size_t len, bool add_special,
                      bool parse_special, sm_tokens *out, sm_error *err);
void sm_tokens_free(sm_tokens *tokens);
/* Text that continues other text (an assistant prefill): no BOS, no
 * special tokens, and where the tokenizer puts a space in front of text
 * (SentencePiece), a leading space of the text is that space and text
 * without one gets none, so that the pieces spell the text exactly (as
 * when the whole prompt is tokenized at once). */
sm_status sm_tokenize_continuation(const sm_model *model, const char *text, size_t len, sm_tokens *out,
                                   sm_error *err);
/* Characters mapped to the unknown token by every tokenization so far;
 * first (may be NULL) gets the first of them, NUL-terminated. */
int64_t sm_model_n_unknown_chars(const sm_model *model, char first[8]);
/* The text of a token sequence exactly as llama.cpp detokenizes it, as a
 * NUL-terminated string to free(); *len (may be NULL) gets its length.
 * NULL with err filled when a token is outside the vocabulary. */
char *sm_detokenize(const sm_model *model, const sm_token *tokens, int32_t n_tokens, size_t *len,
                    sm_error *err);
/* The same with special tokens written as their text ("<s>", "<|im_start|>"),
 * as llama-server shows a prompt. */
char *sm_detokenize_special(const sm_model *model, const sm_token *tokens, int32_t n_tokens, size_t *len,
                            sm_error *err);
/* The length of the longest prefix of s[0..len) that does not end inside
 * a UTF-8 character still waiting for its next bytes (a stray byte that no
 * later byte can complete counts as complete). */
size_t sm_utf8_complete_prefix(const char *s, size_t len);
/* Where sm_gen_params.n_indent cuts a generated text: at the beginning of
 * the first line after the first that comes after fewer than n_indent
 * spaces and tabs (its first other byte, a line end included); -1 when
 * none. A stream cuts what it sends there too. */
long sm_indent_cut(const char *text, size_t len, int32_t n_indent);
/* Whether s[0..len) is well-formed UTF-8 (no NUL, no overlong forms). */
bool sm_utf8_is_valid(const char *s, size_t len);
/* One token's bytes (special tokens as their text when special is true,
 * else empty); at most size bytes, not NUL-terminated. Returns the length,
 * 0 for a token outside the vocabulary or a piece longer than size. */
int32_t sm_token_to_piece(const sm_model *model, sm_token token, char *buf, int32_t size, bool special);

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
 * The sampling chain, in order: logit bias -> bans -> repeat, frequency
 * and presence penalties (last n kept tokens) -> DRY (when dry_multiplier > 0) -> top-k -> top-p -> min-p (both on the
 * penalised logits at T = 1) -> temperature -> draw. Temperature 0 is greedy
 * (argmax after penalties and bans). The penalty history is the kept token
 * list itself, so a rewind rewinds it by construction.
 */
/* A fixed change to one token's logit (OpenAI's logit_bias). */
typedef struct sm_logit_bias {
    sm_token token;
    float bias;            /* added to the raw logit; -INFINITY bans it     */
} sm_logit_bias;

typedef struct sm_sampling_params {
    float temperature;     /* 0 = greedy (the default; the original's 0.7
                              never reached its argmax, docs/EVAL.md)   */
    int32_t top_k;         /* 40; <= 0 = whole vocabulary                   */
    float top_p;           /* 0.95; in (0, 1], 1 = off                      */
    float min_p;           /* 0.05; in [0, 1), 0 = off                      */
    float repeat_penalty;  /* 1.1; 1 = off                                  */
    int32_t repeat_last_n; /* 64 tokens; 0 = off                             */
    /* OpenAI's penalties over the same last repeat_last_n kept tokens, as
     * llama.cpp applies them: logit -= count * frequency + (count > 0) *
     * presence. 0 = off. */
    float frequency_penalty;
    float presence_penalty;
    const sm_logit_bias *logit_bias; /* not owned; may be NULL            */
    int32_t n_logit_bias;
    uint64_t seed;         /* same seed, same run                            */
    /* llama.cpp's DRY ("don't repeat yourself") penalty: a token that would
     * extend a repeat of length L >= allowed_length loses
     * multiplier * base^(L - allowed_length) from its logit. */
    float dry_multiplier;      /* 0 = off (the default); 0.8 is typical    */
    float dry_base;            /* 1.75; >= 1                                */
    int32_t dry_allowed_length;/* 2; >= 1                                   */
    int32_t dry_penalty_last_n;/* -1 = the whole context; 0 = off           */
    /* llama.cpp's other samplers, with its names and its semantics (the
     * chain: penalties, DRY, top-n-sigma, top-k, typical, top-p, min-p,
     * XTC, temperature or dynamic temperature, draw; mirostat v2 replaces
     * everything after the penalties with temperature and itself). */
    float top_n_sigma;         /* <= 0 = off: keep logits >= max - n * std  */
    float typical_p;           /* 1 = off: locally typical sampling          */
    float xtc_probability;     /* 0 = off: chance to exclude top choices     */
    float xtc_threshold;       /* 0.1: their least probability (> 0.5: off)  */
    float dynatemp_range;      /* 0 = off: T varies in [T - r, T + r] ...    */
    float dynatemp_exponent;   /* 1: ... with the normalised entropy ^ this */
    int32_t mirostat;          /* 0 = off, 2 = mirostat v2                   */
    float mirostat_tau;        /* 5: target surprise (bits)                  */
    float mirostat_eta;        /* 0.1: learning rate                         */
    /* llama.cpp's infill sampler, after XTC (before the temperature): for
     * fill-in-the-middle, it keeps only end-of-generation tokens when they
     * are likely enough, else merges tokens that begin one another and
     * drops the unlikely ones. false = off. */
    bool infill;
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
/* How the policy's rules are applied. */
typedef enum sm_policy_style {
    SM_POLICY_FIXED = 0,    /* this project's first policy (the default before
                               the calibrated one):
                               confidence = p(chosen) over the raw distribution;
                               caps never lower a value already above them;
                               aggressive makes every step 1.5 times larger   */
    SM_POLICY_ORIGINAL,     /* the Rust llama_selfmod's code, rule for rule:
                               confidence = the chosen token's probability
                               renormalised over the top 40 penalised logits at
                               T = 1; T = min(f T, cap) even above the cap;
                               aggressive only enables retraction and bursts  */
    SM_POLICY_CALIBRATED,   /* relative to the model's own confidence: the
                               window mean's z-score against the running mean
                               and spread of this generation's confidence
                               (after 2 windows) raises T (z < -2) or lowers it
                               (z > 2), at most 1.5x / at least 0.5x the
                               requested T; otherwise T and the penalty relax
                               back a fifth of the way each token (at least
                               0.01). A candidate that
                               completes a 4-gram already in the last 64
                               tokens is retracted with that 4-gram (the
                               token that began it is banned there), unless
                               retract is 0. aggressive, exploration and the
                               fixed thresholds and retract_tokens do not
                               apply (the CLI, server and eval choose the
                               fixed policy when they are given)              */
} sm_policy_style;

typedef struct sm_policy_params {
    bool enabled;                /* false: no adaptation at all              */
    sm_policy_style style;
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
    /* Values the policy leaves as they are (say, a client set them): it
     * still watches, retracts and reports, but never moves these. */
    bool hold_temperature;
    bool hold_repeat_penalty;
    /* Entropy steering (docs/INTROSPECTION.md), independent of `enabled`:
     * applied before each token is sampled, from the entropy H and
     * varentropy V of its raw distribution, to that token only (the
     * temperature adapted above is left as it is):
     *   0 off (the default);
     *   1 the seed rule: H > entropy_high -> T * entropy_factor;
     *   2 entropix: H < entropy_low and V < varentropy_low -> argmax;
     *     H > entropy_high -> T * entropy_raise (at most 1.5), unless a
     *     lookahead branches there instead.
     * Each application is a MODIFICATION event (SM_MOD_ENTROPY_STEER). */
    int32_t entropy_mode;
    float entropy_high;          /* 3.0 nats                                 */
    float entropy_low;           /* 0.5 nats                                 */
    float varentropy_low;        /* 1.0                                      */
    float entropy_factor;        /* 0.5                                      */
    float entropy_raise;         /* 1.3                                      */
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
    /* The model the reference mode takes its tokens from and every mode
     * compares the others with (reference_differs): 0 by default. */
    int32_t reference;
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
    bool reference_differs;         /* some model's top-1 differs from the reference's */
    float p_fused;                  /* the chosen token's fused probability   */
    /* Each model's three most probable tokens and their probabilities,
     * descending (VisuaLL's per-model table; top1/p_top1 are the first). */
    sm_token top3[SM_MAX_MODELS][3];
    float p_top3[SM_MAX_MODELS][3];
    int32_t n_participating;        /* models the mode let take part (harmony
                                     * and adaptive leave unsure ones out)    */
} sm_fusion_info;

/* ------------------------------------------------------------------ */
/* Introspection and intervention (docs/INTROSPECTION.md)              */
/* ------------------------------------------------------------------ */

/* One observed layer's residual output (llama.cpp's l_out-N) at one token. */
typedef struct sm_layer_stats {
    int32_t layer;      /* model layer, 0-based                             */
    float norm;         /* L2 norm                                          */
    float mean;         /* mean of the n_embd components                    */
    float max_abs;      /* largest |x|                                      */
} sm_layer_stats;

/* What llama.cpp's eval callback showed while one token was decoded. It
 * describes that token's own position: decoding token t gives t's stats. */
typedef struct sm_introspection {
    int32_t n_layers;
    const sm_layer_stats *layers;   /* n_layers, ascending layer order       */
    /* attn_entropy[l * n_heads + h]: entropy (nats) of head h's attention
     * weights over the context, for the token's query, in observed layer l.
     * n_heads = 0 and NULL unless the session observes attention. */
    int32_t n_heads;
    const float *attn_entropy;
    /* hidden[l * n_embd + j]: the residual output itself; NULL unless the
     * session keeps hidden states. */
    int32_t n_embd;
    const float *hidden;
} sm_introspection;

/* Lookahead: at an uncertain position the top-k candidates are branched as
 * parallel sequences, each continued greedily for `depth` tokens in one
 * batched decode per step; the best-scoring branch is committed. */
#define SM_MAX_BRANCHES 16

typedef enum sm_lookahead_score {
    SM_LOOKAHEAD_MEAN_LOGPROB = 0, /* mean ln p of the branch's tokens     */
    SM_LOOKAHEAD_MARGIN,           /* CoT-decoding: mean p_top1 - p_top2 of
                                      the distributions along the branch   */
    /* Internal coherence (manual generation loop #4), in a session that
     * observes layers: 0.5 z(mean ln p) + 0.3 z(stability) + 0.2 z(focus),
     * each z standardised over the branches; stability = minus the mean
     * relative change of the observed layers' norms from token to token
     * along the branch (from the context's last token on), focus = minus
     * the mean attention entropy (0 unless attention is observed). */
    SM_LOOKAHEAD_COHERENCE,
} sm_lookahead_score;

typedef struct sm_lookahead_params {
    int32_t k;          /* candidates branched; 0 = off (default), else 2 to
                           the session's max_branches                       */
    int32_t depth;      /* tokens per branch, its candidate included (4)    */
    float entropy;      /* branch where the entropy (nats) exceeds this (2.5) */
    sm_lookahead_score score;
} sm_lookahead_params;

/* One branching, on its MODIFICATION event (SM_MOD_LOOKAHEAD). */
typedef struct sm_lookahead_info {
    int32_t n_branches;
    int32_t depth;
    int32_t chosen;                   /* the committed branch               */
    float entropy;                    /* of the distribution branched       */
    sm_token first[SM_MAX_BRANCHES];  /* each branch's first token          */
    float score[SM_MAX_BRANCHES];
} sm_lookahead_info;

/* Activation-based safety: checked right after each token is decoded. A
 * rule that fires removes the token again (no other token is re-decoded)
 * and either bans it at that position and samples again, or stops. */
typedef enum sm_safety_metric {
    SM_SAFETY_MAX_ABS = 0,  /* the layer's max |x| > threshold                */
    SM_SAFETY_NORM,         /* its L2 norm > threshold                        */
    SM_SAFETY_NORM_ZSCORE,  /* (norm - mean) / std of the norms of the earlier
                               kept tokens of this generation > threshold (at
                               least 8 earlier tokens, std > 0)               */
} sm_safety_metric;

typedef enum sm_safety_action {
    SM_SAFETY_RESAMPLE = 0, /* ban it there and sample again (bounded), then stop */
    SM_SAFETY_STOP,         /* stop at once (SM_STOP_SAFETY)                  */
} sm_safety_action;

typedef struct sm_safety_rule {
    int32_t layer;          /* negative counts from the end; must be observed */
    sm_safety_metric metric;
    float threshold;
    sm_safety_action action;
} sm_safety_rule;

const char *sm_safety_metric_name(sm_safety_metric metric);
/* Parses "layer=L,METRIC>T[,action=resample|stop]" with METRIC one of
 * max_abs, norm, norm_z; e.g. "layer=-1,max_abs>8". */
sm_status sm_safety_rule_parse(const char *spec, sm_safety_rule *rule, sm_error *err);

/* Mid-generation tools: when the output completes a marker (by default
 * "[INTROSPECT: ...]"), generation pauses, the tool is called, and its text
 * is appended to the context (and the output) as injected tokens. */
typedef struct sm_tool_context {
    const char *args;       /* the text between the marker's ends, trimmed   */
    int32_t token_index;    /* generated tokens so far                       */
    /* the last generated token's stats; NULL when the session observes no
     * layers */
    const sm_introspection *introspection;
    const char *text;       /* the output so far, the marker included        */
    size_t text_len;
} sm_tool_context;

/* Returns the text to inject (malloc'd; the library frees it) or NULL for
 * nothing. */
typedef char *(*sm_tool_fn)(const sm_tool_context *ctx, void *user_data);
/* The built-in tool: the last token's activation statistics as text. */
char *sm_tool_introspect(const sm_tool_context *ctx, void *user_data);

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
    SM_MOD_ENTROPY_STEER,   /* the temperature of one token, from its entropy */
    SM_MOD_LOOKAHEAD,       /* a branching (event.lookahead)                  */
    SM_MOD_SAFETY,          /* a safety rule removed a decoded token          */
    SM_MOD_TOOL,            /* a tool's text was injected (event.piece)       */
    SM_MOD_INJECT,          /* a chunk of inject_text was injected (piece)    */
    SM_MOD_STEER,           /* a steer rule changed its vector's strength     */
    SM_MOD_CONTEXT_SHIFT,   /* the full context dropped n_removed tokens (context_shift) */
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
    SM_STOP_SAFETY,         /* a safety rule stopped generation              */
    SM_STOP_BOS,            /* the model began a new document (generated BOS) */
    SM_STOP_NO_CANDIDATES,  /* bans and penalties ruled out every token      */
    SM_STOP_STAGE,          /* a stage called sm_loop_stop                   */
    SM_STOP_INDENT,         /* a line began less indented than n_indent     */
    SM_STOP_TIME_LIMIT,     /* a line ended after t_max_predict_ms          */
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
    /* Generated tokens no later rewind can remove: their text is final and
     * can be shown or sent for good (never decreases in a generation). */
    int32_t n_settled;
    /* TOKEN events */
    sm_token token;
    const char *piece;          /* the token's bytes (NUL-terminated)        */
    /* The whole UTF-8 characters this token completed: a character split
     * over tokens comes with the token that ends it. Joined over the kept
     * tokens they spell the text (to its last complete character). */
    const char *text;
    size_t text_len;
    sm_signals signals;
    const sm_fusion_info *fusion; /* NULL with one model                     */
    /* TOKEN events of a session that observes layers: the token's stats,
     * valid only during the callback; else NULL. */
    const sm_introspection *introspection;
    /* SM_MOD_LOOKAHEAD events: the branches and their scores; else NULL. */
    const sm_lookahead_info *lookahead;
    /* With sm_gen_params.n_probs > 0: the n_top most probable tokens of the
     * distribution the token was sampled from, descending; valid only
     * during the callback. */
    const struct sm_candidate *top;
    int32_t n_top;
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
 * tokens before it; with SM_OPERATOR_INPUT_ORIGINAL the k tokens before
 * it). It is shown every candidate exactly once, in order (with
 * every_n_only every every_n-th), and told with on_backtrack(n) whenever
 * the last n candidates it was shown are gone, so it can roll back its own
 * state exactly.
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

/* Rewrites view (token, logits and n_vocab set) into backtracking-llm's
 * input (SM_OPERATOR_INPUT_ORIGINAL): top = the k largest logits divided
 * by temperature (none when it is 0), with their softmax as prob; the
 * view's prob and logit are the candidate's entry (p 0 and its scaled
 * logit when it is not among them). top must hold k entries. */
void sm_operator_view_original(sm_token_view *view, int32_t k, float temperature, sm_candidate *top);

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

/* ------------------------------------------------------------------ */
/* Stages: everything that acts inside the generation loop             */
/* ------------------------------------------------------------------ */

/*
 * The loop keeps the tokens, the distributions, the random state, the text
 * and a list of stages; everything that acts on a generation is a stage:
 * the injection of text, lookahead, entropy steering, the operators, the
 * self-modification policy, safety rules, tools, and the caller's own
 * (sm_gen_params.stages, after the built-in ones). For each generated
 * position the loop calls, in stage order:
 *
 *   before_sample  may set this token's knobs (temperature, a token chosen
 *                  without sampling), inject text or stop
 *   judge          how many tokens to remove: 0 keeps the candidate, 1
 *                  removes it, k also the k-1 kept tokens before it. The
 *                  largest count wins (the first stage on ties). Judging
 *                  must not change what accept would change.
 *   accept         the candidate is kept: what judge computed applies now
 *   check          it is decoded but not yet reported: true takes it back
 *                  (removed, banned at its position, sampled again)
 *   after_token    it is reported: may inject text or stop
 *
 * Every rewind (a removal by any stage) puts the loop back exactly where
 * it was before the first removed position was sampled: the cache,
 * tokens, text, knobs and random state, and each stage's snapshot
 * (snapshot_size bytes that save/restore copy at every position); then
 * on_rewind tells every stage how many of the tokens it judged are gone.
 * A stage's removals count as backtracks (max_backtracks and
 * max_backtracks_per_position bound them).
 */
typedef struct sm_loop sm_loop;     /* one generation in progress */

/* What the next token is sampled with; a stage changes it for this token
 * only (the policy's own changes persist through accept). */
typedef struct sm_knobs {
    float temperature;
    float repeat_penalty;
    sm_token forced;                /* >= 0: this token, not a sampled one */
} sm_knobs;

typedef struct sm_stage_vtable {
    const char *name;               /* the source of its events */
    size_t snapshot_size;
    void (*save)(const void *state, void *snapshot);
    void (*restore)(void *state, const void *snapshot);
    void (*reset)(void *state, sm_loop *loop);
    void (*before_sample)(void *state, sm_loop *loop, sm_knobs *knobs);
    int32_t (*judge)(void *state, sm_loop *loop, const sm_token_view *view);
    void (*accept)(void *state, sm_loop *loop, const sm_token_view *view);
    bool (*check)(void *state, sm_loop *loop, const sm_token_view *view);
    void (*after_token)(void *state, sm_loop *loop, const sm_token_view *view);
    /* n: tokens this stage was shown that are gone; by_me: its own removal */
    void (*on_rewind)(void *state, sm_loop *loop, int32_t n, bool by_me);
    void (*free_state)(void *state);
} sm_stage_vtable;

typedef struct sm_stage sm_stage;
/* Wraps a user stage; every hook may be NULL. vt->free_state(state) runs
 * on sm_stage_free. */
sm_stage *sm_stage_new(const sm_stage_vtable *vt, void *state);
void sm_stage_free(sm_stage *stage);

/* What a stage may read of the loop it is called from. */
int32_t sm_loop_n_generated(const sm_loop *loop);        /* kept tokens        */
const sm_token *sm_loop_tokens(const sm_loop *loop);     /* the kept tokens    */
const float *sm_loop_confidences(const sm_loop *loop);   /* their p_chosen     */
const char *sm_loop_text(const sm_loop *loop, size_t *len); /* the output text */
const sm_introspection *sm_loop_introspection(const sm_loop *loop);
/* What it may do: the event of its next removal says why (kept until the
 * removal or the next candidate); text enters the context and the output
 * (never rewound; only from before_sample and after_token, else
 * SM_ERR_STATE); generation stops after this hook (SM_STOP_STAGE). */
void sm_loop_describe(sm_loop *loop, const char *why);
sm_status sm_loop_inject(sm_loop *loop, const char *text, size_t len);
void sm_loop_stop(sm_loop *loop, const char *why);

typedef enum sm_combine_mode {
    SM_COMBINE_FIRST = 0,  /* the first operator (in order) that fires wins */
    SM_COMBINE_MAX,        /* the largest count wins                        */
} sm_combine_mode;

/* ------------------------------------------------------------------ */
/* Generation                                                          */
/* ------------------------------------------------------------------ */

/* Backtracking operators (backtracking-llm) and the bounds on every
 * stage's removals. */
/* What operators are shown of a candidate (sm_token_view). */
typedef enum sm_operator_input {
    /* prob and logit are the raw ones over the whole vocabulary at T 1;
     * top holds the top_n_view most probable. One setting means the same
     * whatever the sampler does, and the full distribution is there. */
    SM_OPERATOR_INPUT_FULL,
    /* backtracking-llm's: the top_n_view largest logits divided by the
     * temperature (input_temperature, or the one the token was sampled
     * at; 0 divides by nothing), their softmax, the candidate's entry of
     * both (p 0 when it is not among them); and a count k removes the
     * candidate and the k tokens before it, as its generator did.
     * sm_operator_view_original computes it. */
    SM_OPERATOR_INPUT_ORIGINAL,
} sm_operator_input;

typedef struct sm_backtrack_params {
    sm_operator *const *operators;  /* may be empty; not owned               */
    int32_t n_operators;
    sm_combine_mode combine;
    int32_t every_n;                /* heed operators every n tokens (1)     */
    /* false: operators see every candidate (their history is complete)
     * and are heeded every n-th; true: they are shown only every n-th, as
     * backtracking-llm's backtrack_every_n did. */
    bool every_n_only;
    int32_t max_backtracks;         /* per generation (64); then stop         */
    int32_t max_per_position;       /* removals landing on one position (4); then the token is kept */
    int32_t top_n_view;             /* candidates shown to operators (10; backtracking-llm's top-k: 50) */
    sm_operator_input input;        /* SM_OPERATOR_INPUT_FULL                */
    float input_temperature;        /* INPUT_ORIGINAL: 0 = the token's own   */
} sm_backtrack_params;

/* Introspection and intervention (docs/INTROSPECTION.md). */
/*
 * A control vector whose strength follows a rule, token by token (the
 * manual generation loop's #3, a vector that changes mid-generation, and
 * #7, decoding conditioned on a target activation, closed loop). Before
 * each token is sampled the rule reads a signal and sets the strength s;
 * layers il_start..il_end then get s * vector added for the next decode.
 *   switch (gain == 0): s = on while signal > threshold (below: < it),
 *                       else off;
 *   closed loop (gain != 0): s += gain * (target - signal), clamped to
 *                       [min_strength, max_strength], starting at off.
 * A change is a MODIFICATION event (SM_MOD_STEER). The strength is part of
 * the rewind state: a rewind puts it (and the context's vector) back. The
 * session's control vector is replaced while the rule runs and removed at
 * the end of the generation. One session, not a batch.
 */
typedef enum sm_steer_signal {
    SM_STEER_SIGNAL_ENTROPY = 0,    /* nats, of the distribution to sample   */
    SM_STEER_SIGNAL_CONFIDENCE,     /* p of the last kept token               */
    SM_STEER_SIGNAL_LAYER_NORM,     /* L2 norm of an observed layer's output
                                       at the last decoded token             */
} sm_steer_signal;

typedef struct sm_steer_rule {
    const float *vector;            /* llama.cpp's layout; NULL = off. Not owned */
    int32_t len, n_embd;            /* floats; per layer                     */
    int32_t il_start, il_end;       /* -1 -1: every layer it holds           */
    sm_steer_signal signal;
    int32_t layer;                  /* LAYER_NORM: the (observed) model layer */
    float threshold;
    bool below;
    float on, off;                  /* switch strengths (1, 0)               */
    float target, gain;             /* closed loop when gain != 0            */
    float min_strength, max_strength;
} sm_steer_rule;

typedef struct sm_intervention_params {
    const sm_safety_rule *safety_rules; /* not owned; layers must be observed */
    int32_t n_safety_rules;
    int32_t safety_max_retries;     /* resamples per position (3), then stop */
    sm_lookahead_params lookahead;  /* needs a one-model session with max_branches */
    bool tools;                     /* act on tool markers in the output     */
    const char *tool_marker;        /* opening string; NULL = "[INTROSPECT:" */
    const char *tool_marker_end;    /* closing string; NULL = "]"            */
    sm_tool_fn tool;                /* NULL = sm_tool_introspect             */
    void *tool_user_data;
    /* Gradual injection: inject_text is cut into sentences (each ends after
     * '.', '!' or '?' followed by white space, or at a newline) and the next
     * one is appended to the context after every inject_every generated
     * tokens. NULL or 0 = off. */
    const char *inject_text;
    int32_t inject_every;
    sm_steer_rule steer_rule;       /* vector NULL: off                      */
} sm_intervention_params;

typedef struct sm_gen_params {
    int32_t n_predict;              /* 256 kept tokens; < 0 = until stop     */
    /* Stop when the model generates BOS (true): models trained on
     * documents separated by BOS (llama2.c's TinyStories) start a new one
     * there, as llama2.c's run.c knows. */
    bool stop_at_bos;
    /* Stop strings: generation ends when the text contains one; the text
     * returned ends before it. */
    const char *const *stop_strings;
    int32_t n_stop_strings;
    /* Code completion's limits, llama-server's: a line after the first
     * that begins (its first character other than a space or tab, a line
     * end included) with fewer than n_indent spaces and tabs ends the
     * generation, the text cut there (0 = off); a token that ends a line
     * once t_max_predict_ms have passed since the first token ends it too
     * (0 = off). */
    int32_t n_indent;
    int32_t t_max_predict_ms;
    int32_t n_probs;                /* TOKEN events carry the top n (0; <= 1000) */
    /* ... of the distribution the token was drawn from, after every
     * truncation and the temperature (llama-server's post_sampling_probs),
     * instead of the model's own. */
    bool n_probs_post_sampling;
    /* The first generated tokens, as given (an assistant prefill, forced
     * words): nothing samples them, they are reported and counted as
     * generated tokens, and the stages see them like any other. Not owned. */
    const sm_token *forced_tokens;
    int32_t n_forced_tokens;
    /* End-of-generation tokens are never sampled (llama-server's
     * ignore_eos): generation goes on to n_predict or a stop. */
    bool ignore_eos;
    /* Context shift (llama-server's --context-shift): when the context is
     * full, the n_discard tokens after the first n_keep leave the KV cache,
     * the rest move down, and generation goes on (SM_STOP_CONTEXT_FULL
     * without it). n_keep counts from after a BOS (which always stays);
     * -1 keeps everything before this generation. n_discard 0 = half of
     * what follows n_keep. Nothing before a shift can be rewound after it
     * (as after an injection). Not with fusion_align. */
    bool context_shift;
    int32_t n_keep;
    int32_t n_discard;
    /* A GBNF grammar (llama.cpp's, root rule "root") the generated text
     * must follow: tokens it does not allow are never sampled, and once it
     * is complete only an end of generation is. Its state follows the kept
     * tokens, so every rewind leaves it exact. NULL = none. With
     * SM_GRAMMAR_JSON: any JSON object (OpenAI's response_format json_object). */
    const char *grammar;
    /* Text the grammar takes as already written before the first token
     * (a tool-call grammar that begins with the template's generation
     * prompt, as llama.cpp's common sampler prefills it). NULL = none. */
    const char *grammar_prefill;
    /* Regular expressions that make the grammar lazy: it applies only
     * once the text matches one, from the match on (llama.cpp's lazy
     * grammar, as a tool-call grammar triggers on "<tool_call>"). */
    const char *const *grammar_triggers;
    int32_t n_grammar_triggers;
    sm_sampling_params sampling;
    sm_policy_params policy;
    sm_backtrack_params backtrack;
    sm_fusion_params fusion;        /* used when the session has several models */
    sm_intervention_params interventions;
    /* The caller's stages, after the built-in ones. Not owned. */
    sm_stage *const *stages;
    int32_t n_stages;
    sm_event_fn on_event;           /* may be NULL                           */
    void *user_data;
} sm_gen_params;

/* Whether grammar parses as GBNF for this model's vocabulary (llama.cpp
 * prints the parser's complaint on stderr). */
sm_status sm_grammar_check(const sm_model *model, const char *grammar, sm_error *err);
/* A GBNF grammar of one JSON object (for sm_gen_params.grammar). */
extern const char *const SM_GRAMMAR_JSON;
/* A JSON schema (its text) as a GBNF grammar of the JSON it allows, by
 * llama.cpp's own converter (as llama-server's json_schema); NULL with
 * err set when the schema is not JSON or not supported. Free with free(). */
char *sm_grammar_from_json_schema(const char *schema_json, sm_error *err);

sm_sampling_params sm_sampling_default_params(void);
sm_policy_params sm_policy_default_params(void);
sm_gen_params sm_gen_default_params(void);
/* Validates every field; on failure writes a message naming the field. */
sm_status sm_gen_params_validate(const sm_gen_params *params, sm_error *err);
/* llama.cpp's sampler list (llama-server's "samplers", llama-cli's
 * --samplers): only the named samplers run, the others are set to off (a
 * left-out "temperature" samples at T 1, as llama.cpp's chain without its
 * temperature sampler). Names as llama.cpp's: penalties, dry, top_n_sigma,
 * top_k, typ_p, top_p, min_p, xtc, infill, temperature, and its aliases
 * (top-k, topk, nucleus, typ, temp, ...; any case). The chain's order is
 * fixed, that one: a list in another order, a name twice, an unknown name
 * or a list with mirostat on (it replaces the chain) is
 * SM_ERR_INVALID_ARGUMENT naming it, p unchanged. */
sm_status sm_sampling_params_set_samplers(sm_sampling_params *p, const char *const *names, int32_t n_names,
                                          sm_error *err);
/* The same by llama.cpp's letters, one a sampler ("kpi": top_k, top_p,
 * infill; llama-server's "samplers" as a string, llama-cli's --sampling-seq):
 * e d s k y p m x i t in the order above. */
sm_status sm_sampling_params_set_sampler_letters(sm_sampling_params *p, const char *letters, sm_error *err);
/* Sets the policy's style and thresholds to a named preset: "original"
 * (the Rust llama_selfmod's policy, SM_POLICY_ORIGINAL, at its
 * thresholds), "calibrated" (sm_policy_default_params: SM_POLICY_CALIBRATED),
 * "fixed" (the first policy, SM_POLICY_FIXED) or "tuned" (fixed with
 * confidence_threshold 0 and sharpen_threshold 0.5: docs/EVAL.md). Whether
 * it is aggressive, retracts, and what it holds are left as they are. The
 * sampling defaults are the original's flags' defaults already (T 0.7,
 * top-k 40, top-p 0.95, min-p 0.05, repeat penalty 1.1 over 64 tokens).
 * SM_ERR_INVALID_ARGUMENT names the presets. */
sm_status sm_policy_preset(sm_policy_params *policy, const char *name, sm_error *err);
/* Every preset a front-end offers by name: the policy presets above, and
 * "backtracking-llm": its generation defaults (top-k 50, T 1, no top-p,
 * min-p or repeat penalty, no self-modification) with its operators'
 * input (SM_OPERATOR_INPUT_ORIGINAL, a top-50 view, shown only every
 * every_n-th token). */
sm_status sm_gen_params_preset(sm_gen_params *params, const char *name, sm_error *err);
/* Loads a preset file (what `llama_selfmod tune` writes): a JSON object
 * with "preset" (a name above) and values that refine it ("temperature",
 * "repeat_penalty", "max_retractions", "window", "retract"); unknown keys
 * and values out of range fail naming them, and params is then unchanged. */
sm_status sm_gen_params_load_preset(const char *path, sm_gen_params *params, sm_error *err);

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
    /* Introspection and intervention */
    int32_t n_safety_triggers;  /* tokens a safety rule removed               */
    int32_t n_lookaheads;       /* branchings                                 */
    int32_t n_tool_calls;
    int32_t n_injected_tokens;  /* in the context and the text, not in tokens */
    int32_t n_context_shifts;   /* context shifts (context_shift)             */
} sm_result;

void sm_result_free(sm_result *result);

/* ------------------------------------------------------------------ */
/* Sessions                                                            */
/* ------------------------------------------------------------------ */

typedef struct sm_session sm_session;

typedef struct sm_session_params {
    uint32_t n_ctx;        /* 2048, at most the model's training context (0 = that) */
    uint32_t n_batch;      /* prompt batch size (512)                       */
    int32_t n_threads;     /* 0 = up to the online cores, tuned (sm_session_n_threads) */
    /* How many generated positions keep their distribution so that a
     * rewind never re-decodes anything; deeper rewinds are refused. */
    int32_t max_rewind;    /* 64                                            */
    /* Several models whose vocabularies differ: map each model's tokens
     * onto model 0's by token text (each such model follows the text). */
    bool fusion_align;
    /* Introspection (model 0 only): the layers whose residual output is
     * observed at every decoded token through llama.cpp's eval callback
     * (negative = from the end, -1 the last; copied). None and not all
     * layers: no callback at all. */
    const int32_t *introspect_layers;
    int32_t n_introspect_layers;
    bool introspect_all_layers;
    bool introspect_attention;  /* per-head attention entropy; turns flash
                                   attention off                            */
    bool introspect_hidden;     /* also the layers' whole outputs            */
    /* Lookahead: parallel sequences the contexts make room for (0 = none;
     * at most SM_MAX_BRANCHES; one-model sessions only). */
    int32_t max_branches;
    /* A batch (below) to decode in, on a sequence of its own, instead of
     * contexts of the session's own; NULL = its own contexts. The models
     * must be the batch's, in order; no introspection, fusion alignment or
     * prompt cache; lookahead (max_branches) only in a kv_unified batch,
     * each branch a sequence the session takes from it; n_ctx at most the
     * batch's per sequence; n_threads and n_batch are the batch's. */
    struct sm_batch *batch;
} sm_session_params;

sm_session_params sm_session_default_params(void);

/* ------------------------------------------------------------------ */
/* Batches: many sessions, one context per model                       */
/* ------------------------------------------------------------------ */

/*
 * A batch holds one llama.cpp context per model with n_seq sequences.
 * Sessions made with sm_session_params.batch each generate on a sequence
 * of their own (in their own threads: a session is used by one thread at
 * a time), with their own policy, operators and rewinds; their decodes are
 * gathered into one llama_decode whenever every busy session is waiting
 * for one (continuous batching: sessions join and leave between steps).
 * A rewind touches only its own sequence's cells.
 */
typedef struct sm_batch sm_batch;
typedef struct sm_batch_params {
    int32_t n_seq;          /* sequences, i.e. sessions at once (4)         */
    uint32_t n_ctx_seq;     /* context of each (2048; at most the model's)  */
    uint32_t n_batch;       /* tokens one decode takes at most (512)        */
    int32_t n_threads;      /* 0 = the online cores                         */
    /* One pool of n_ctx_seq cells for all sequences (llama.cpp's unified
     * KV cache, llama-server's --kv-unified): each may use all of it, and
     * a decode that finds no room fails for every sequence in it. false:
     * each sequence has n_ctx_seq cells of its own. */
    bool kv_unified;
    /* Decode on this batch's thread instead of starting one (NULL: a
     * thread of its own). A server's batches (one per model set) share
     * one: llama.cpp's OpenMP workers belong to the thread that decodes,
     * and two such teams in a process make every decode several times
     * slower. The batches take turns on it; free them in any order. */
    const sm_batch *share_decoder;
} sm_batch_params;
sm_batch_params sm_batch_default_params(void);
sm_batch *sm_batch_new(sm_model *const *models, int32_t n_models, const sm_batch_params *params, sm_error *err);
void sm_batch_free(sm_batch *batch); /* after every session made from it */
int32_t sm_batch_n_seq(const sm_batch *batch);
uint32_t sm_batch_n_ctx_seq(const sm_batch *batch);
typedef struct sm_batch_stats {
    int64_t n_decodes;        /* llama_decode calls                         */
    int64_t n_tokens;         /* tokens they decoded                        */
    int64_t n_requests;       /* sessions' decodes gathered into them       */
    double ms_decoding;       /* time inside llama_decode                   */
    int64_t n_other_decodes;  /* decodes of trees sharing the decoder
                                 (sm_tree_share_decoder), not counted above */
} sm_batch_stats;
sm_batch_stats sm_batch_get_stats(sm_batch *batch);

/* A session owns one llama context per model. */
sm_session *sm_session_new(sm_model *model, const sm_session_params *params, sm_error *err);
/* Several models decoding in parallel for fusion. The vocabularies must be
 * identical (type, size, every token's text, BOS/EOS) unless
 * params->fusion_align; a mismatch fails with SM_ERR_VOCAB_MISMATCH naming
 * the first differing token. */
sm_session *sm_session_new_fused(sm_model *const *models, int32_t n_models,
                                 const sm_session_params *params, sm_error *err);
/* Compares two vocabularies; on mismatch writes what differs first. */
bool sm_vocab_equal(const sm_model *a, const sm_model *b, sm_error *why);
int32_t sm_session_n_models(const sm_session *session);
/* Model m's own context: its KV position and its raw distribution. */
int32_t sm_session_model_kv_pos(const sm_session *session, int32_t m);
const float *sm_session_model_logits(const sm_session *session, int32_t m);
void sm_session_free(sm_session *session);
const char *sm_session_last_error(const sm_session *session);

/* Appends text to the context and decodes it. The text is text: its
 * "<|...|>" never becomes a special token. add_bos adds the model's BOS
 * when it wants one. */
sm_status sm_session_feed_text(sm_session *session, const char *text, bool add_bos);
sm_status sm_session_feed_tokens(sm_session *session, const sm_token *tokens, int32_t n_tokens);

/* Feeds `prompt` (may be NULL or "" to continue from the current context)
 * and generates. The result must be freed with sm_result_free. */
sm_status sm_session_generate(sm_session *session, const char *prompt,
                              const sm_gen_params *params, sm_result *result);

/* ------------------------------------------------------------------ */
/* Steps: the caller drives, one token at a time                       */
/* ------------------------------------------------------------------ */

/*
 * backtracking-llm's GenerationSession in C: step() samples one token
 * with the generation's sampler and penalties, decodes it and returns it
 * with the view operators see under
 * params->backtrack (sm_gen_params_preset "backtracking-llm" makes that
 * its own: the top-50 logits / T and their softmax); backtrack(n) removes
 * the last n stepped tokens exactly. The
 * random state moves on with every step, so a step after a backtrack may
 * choose differently; the same calls with the same seed give the same
 * tokens. The stepper uses the session; free it before using the session
 * otherwise.
 */
typedef struct sm_stepper sm_stepper;
typedef struct sm_step {
    sm_token token;
    const char *piece;           /* its text; valid until the next call       */
    float prob, logit;           /* in the view (SM_OPERATOR_INPUT_ORIGINAL)   */
    const sm_candidate *top;     /* the view's candidates, descending          */
    int32_t n_top;
    bool done;                   /* an end-of-generation token or a full context:
                                  * token is then not kept and nothing more comes */
} sm_step;
/* Feeds prompt (NULL or "" continues the context) when the first step
 * comes. params are copied (n_predict is ignored); what adapts over a
 * generation is refused (the policy on, operators, stages, every_n > 1):
 * the caller decides. */
sm_stepper *sm_stepper_new(sm_session *session, const char *prompt, const sm_gen_params *params, sm_error *err);
sm_status sm_stepper_step(sm_stepper *stepper, sm_step *step);
/* Removes the last n stepped tokens (n <= the tokens stepped and kept). */
sm_status sm_stepper_backtrack(sm_stepper *stepper, int32_t n);
/* The tokens stepped and kept, in order. */
const sm_token *sm_stepper_tokens(const sm_stepper *stepper, int32_t *n_tokens);
bool sm_stepper_done(const sm_stepper *stepper);
const char *sm_stepper_last_error(const sm_stepper *stepper);
void sm_stepper_free(sm_stepper *stepper);

/* Low-level control, used by the chat layer, the tree search and tests. */
sm_status sm_session_clear(sm_session *session);
/* Removes the last n tokens of the context. Needs no decode when the
 * distribution at the new end is still held (rewinds of up to max_rewind
 * generated tokens); otherwise the last kept token is decoded again. */
sm_status sm_session_rewind(sm_session *session, int32_t n_tokens);
/* Keeps only the first n tokens (a common prefix), like rewind. */
sm_status sm_session_truncate(sm_session *session, int32_t n_keep);
/* The one way to point a context at a token sequence (a prompt, a chat's
 * rendering, a saved prefix): the context ends up holding exactly
 * tokens[0..n) (n >= 1). The longest prefix it already holds is kept (at
 * most n - 1 tokens, so that the last is decoded and the distribution
 * after it is fresh) and the rest decoded; a model that cannot drop part
 * of its cache starts from empty. *n_reused (may be NULL) gets the tokens
 * kept; n - *n_reused were decoded. */
sm_status sm_session_set_tokens(sm_session *session, const sm_token *tokens, int32_t n, int32_t *n_reused);
/* Progress of the prompts sm_session_set_tokens decodes (a chat turn's
 * too; llama-server's return_progress): fn is called once before the first
 * chunk and once after each chunk (n_batch tokens at most) with the
 * prompt's tokens, how many the cache already held, and how many are in
 * the context now (cached <= processed <= total). NULL turns it off. */
typedef void (*sm_prompt_progress_fn)(int32_t total, int32_t cached, int32_t processed, void *user_data);
void sm_session_set_prompt_progress(sm_session *session, sm_prompt_progress_fn fn, void *user_data);
/* A time limit for the prompts sm_session_set_tokens decodes (llama.vim's
 * t_max_prompt_ms): once a chunk that is not the prompt's last ends past
 * limit_ms from the call's start, it stops there with SM_ERR_CANCELLED,
 * the tokens decoded so far kept in the context: the same call again goes
 * on from them. 0 = none (the default). */
void sm_session_set_prompt_time_limit(sm_session *session, int32_t limit_ms);
int32_t sm_session_n_past(const sm_session *session);       /* tokens in context  */
int32_t sm_session_kv_pos(const sm_session *session);       /* llama's seq_pos_max + 1 */
/* Tokens in context whose cells the cache holds now: n_past but for a
 * generation's last token, which is decoded only when something needs it
 * (sm_session_kv_pos and sm_session_logits are such things; this is not). */
int32_t sm_session_n_decoded(const sm_session *session);
const sm_token *sm_session_tokens(const sm_session *session, int32_t *n_tokens);
/* The raw distribution for the next position (n_vocab floats); with
 * several models, model 0's. */
const float *sm_session_logits(const sm_session *session);
int32_t sm_session_n_ctx(const sm_session *session);
/* The threads one-token decodes of model 0 use now. With n_threads = 0
 * (the default) the session measures and moves between counts up to the
 * online cores: fewer when other processes hold cores (llama.cpp's
 * threads wait for each other), more when they are free again. */
int32_t sm_session_n_threads(const sm_session *session);
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
    /* The plain form's labels. NULL: the labels the model's own template
     * writes when llama.cpp cannot render that template but its text shows
     * them ('User: ' ... '\nBot:'), else "User:" and "Assistant:". */
    const char *fallback_user;
    const char *fallback_assistant;
    /* A Jinja chat template's text (llama-server's --chat-template-file);
     * NULL: none. Not with template_name. */
    const char *template_source;
    /* Render the model's own template with llama.cpp's Jinja engine, as
     * llama-server does (default true); false: llama.cpp's built-in
     * templates recognised by heuristics, as llama-server --no-jinja. */
    bool jinja;
    /* Never drop the oldest turns to fit the context: a conversation that
     * does not fit fails with SM_ERR_PROMPT_TOO_LONG (as OpenAI's and
     * llama-server's APIs refuse it). Default false: they are dropped. */
    bool keep_all_turns;
    /* llama-server's chat_template_kwargs: a JSON object whose members are
     * variables of the Jinja template ({"enable_thinking": false} for a
     * model that thinks); NULL: none. Needs the Jinja engine. */
    const char *template_kwargs;
} sm_chat_params;

sm_chat_params sm_chat_default_params(void);
/* Whether llama.cpp renders a template of this name (template_name). */
bool sm_chat_template_known(const char *name);

/* The chat drives `session` (not owned): the KV cache is kept between
 * turns and only new tokens are decoded. */
sm_chat *sm_chat_new(sm_session *session, const sm_chat_params *params, sm_error *err);
/* Replaces the template's kwargs (sm_chat_params.template_kwargs) for the
 * turns that follow; the conversation renders anew, the cached prefix is
 * kept as far as the text agrees. */
sm_status sm_chat_set_template_kwargs(sm_chat *chat, const char *kwargs_json);
/* How many tokens the prompt of a conversation takes (rendered as a chat
 * with these params would render it, the assistant's turn opened; the
 * last message must be the user's), without a session: a server can
 * refuse a conversation too long for its context before it answers. */
sm_status sm_chat_prompt_tokens(const sm_model *model, const sm_chat_params *params, const sm_chat_message *messages,
                                int32_t n_messages, int32_t *n_tokens, sm_error *err);
/* The prompt text a conversation renders to (the system prompt of params,
 * then messages, the assistant's turn opened), as llama-server's
 * /apply-template returns it; *text is malloc'd. */
sm_status sm_chat_render(const sm_model *model, const sm_chat_params *params, const sm_chat_message *messages,
                         int32_t n_messages, char **text, sm_error *err);
void sm_chat_free(sm_chat *chat);

/* (history, user message) -> answer. The answer is result->text; the
 * history gains both messages. When the context would overflow, the oldest
 * turns are dropped (see sm_chat_last_turn_info), unless keep_all_turns. */
sm_status sm_chat_turn(sm_chat *chat, const char *user_message, const sm_gen_params *params,
                       sm_result *result);
/* The same with the answer's beginning given (an assistant prefill, as
 * llama-server takes a final assistant message): prefill goes into the
 * context after the answer's opening, the result holds what the model
 * wrote after it, and the history holds prefill + that. */
sm_status sm_chat_turn_prefilled(sm_chat *chat, const char *user_message, const char *prefill,
                                 const sm_gen_params *params, sm_result *result);
/* Replaces the history (e.g. the user edited an earlier message). The next
 * turn re-uses the KV cache up to the first token that differs. */
sm_status sm_chat_set_history(sm_chat *chat, const sm_chat_message *messages, int32_t n_messages);
sm_status sm_chat_reset(sm_chat *chat);
int32_t sm_chat_n_messages(const sm_chat *chat);
const sm_chat_message *sm_chat_messages(const sm_chat *chat);
/* The template's name, "jinja (the model's own)", "jinja (given)",
 * "model" for the model's own read by llama.cpp's heuristics, or the plain form
 * with its labels ("plain \"User: ...\nBot:\" ..."). */
const char *sm_chat_template_used(const sm_chat *chat);
/* The template's text: the Jinja source rendered, the model's template or
 * the built-in name llama.cpp renders, "" for the plain form. */
const char *sm_chat_template_text(const sm_chat *chat);

/* Tool calls. A conversation with tools in OpenAI's JSON forms: messages
 * (which may hold assistant tool_calls and role "tool" results), tools,
 * tool_choice ("auto", "required", "none"; NULL: auto). It is rendered by
 * the Jinja template (params' template file, else the model's own, else
 * chatml, as llama-server) with llama.cpp's own tool-call formats; the
 * model's answer is parsed back into tool calls. The prompt is template
 * markup and user text together: tokenize it with special-token parsing
 * only after checking the user's parts (sm_text_has_special_tokens). */
typedef struct sm_tool_prompt sm_tool_prompt;
sm_tool_prompt *sm_tool_prompt_new(const sm_model *model, const sm_chat_params *params, const char *messages_json,
                                   const char *tools_json, const char *tool_choice, bool parallel_tool_calls,
                                   sm_error *err);
void sm_tool_prompt_free(sm_tool_prompt *p);
const char *sm_tool_prompt_text(const sm_tool_prompt *p);
/* The grammar of a tool call (NULL: none): from the first token with
 * tool_choice "required"; with "auto" it is lazy, applying once the text
 * matches one of the trigger patterns (sm_gen_params.grammar_triggers). */
const char *sm_tool_prompt_grammar(const sm_tool_prompt *p);
int32_t sm_tool_prompt_n_triggers(const sm_tool_prompt *p);
const char *const *sm_tool_prompt_triggers(const sm_tool_prompt *p);
/* What that grammar takes as already written (sm_gen_params.grammar_prefill):
 * the template's generation prompt. */
const char *sm_tool_prompt_grammar_prefill(const sm_tool_prompt *p);
int32_t sm_tool_prompt_n_stops(const sm_tool_prompt *p);
const char *sm_tool_prompt_stop(const sm_tool_prompt *p, int32_t i);
/* llama.cpp's name of the tool-call format the template uses. */
const char *sm_tool_prompt_format(const sm_tool_prompt *p);
/* The answer as OpenAI's assistant message, JSON ({"role", "content",
 * "tool_calls": [{"type": "function", "id", "function": {"name",
 * "arguments"}}]}); free() it. */
char *sm_tool_prompt_parse(const sm_tool_prompt *p, const char *text, sm_error *err);
/* A stream of the answer: what the text so far adds since the last call,
 * as a JSON array of OpenAI stream deltas ({"content": ...} and
 * {"tool_calls": [{"index", "id", "type", "function": {"name",
 * "arguments"}}]}, a call's arguments in pieces); partial: more text
 * follows (a half-written call is held back). Each prompt streams once;
 * free() it. */
char *sm_tool_prompt_deltas(sm_tool_prompt *p, const char *text, bool partial, sm_error *err);
/* Whether text holds the text of one of the model's special tokens (so
 * that tokenizing it with special-token parsing would make it one). */
bool sm_text_has_special_tokens(const sm_model *model, const char *text);

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
typedef enum sm_memlog_format {
    SM_MEMLOG_NATIVE,   /* the record above                                */
    /* The Rust original's record and nothing else: modifications carry
     * token_idx, mod_type (a retraction is CRITICAL_RETRACT), confidence
     * and description; with several models num_models, fusion_mode and
     * FUSION_SAMPLE modifications with fusion_data at every kept token whose
     * agreement is below 0.5 and every 50th. model_path may then list the
     * models separated by commas (their file names name them). */
    SM_MEMLOG_ORIGINAL,
} sm_memlog_format;
/* "native" or "original"; false for any other name. */
bool sm_memlog_format_from_name(const char *name, sm_memlog_format *format);
void sm_memlog_set_format(sm_memlog *log, sm_memlog_format format);
sm_status sm_memlog_append(sm_memlog *log, const char *model_path, const char *prompt,
                           const sm_gen_params *params, const sm_result *result,
                           sm_error *err);
void sm_memlog_close(sm_memlog *log);

/* ------------------------------------------------------------------ */
/* Evaluation metrics and judge scoring                                */
/* ------------------------------------------------------------------ */

/*
 * Repetition and diversity of generated token sequences (docs/EVAL.md has
 * the formulas and their sources). With o ranging over the outputs,
 * U_n(o) the number of distinct n-grams within o and T_n(o) the number of
 * its n-grams, max(0, len(o) - n + 1):
 *   rep-n       1 - sum_o U_n(o) / sum_o T_n(o): repetition inside each
 *               output, pooled over the outputs (n = 2, 3, 4);
 *   diversity   (1 - rep-2)(1 - rep-3)(1 - rep-4);
 *   seq-rep-4   mean over the outputs with T_4(o) > 0 of 1 - U_4(o)/T_4(o);
 *   distinct-n  distinct n-grams of all outputs together / sum_o T_n(o).
 * A metric with nothing to count (every output shorter than n) is NaN.
 */

/* The n-grams (n >= 1) of one sequence: returns how many there are and
 * writes how many of them are distinct to *n_unique (may be NULL).
 * Returns -1 for invalid arguments or when out of memory. */
int32_t sm_ngram_count(const sm_token *tokens, int32_t n_tokens, int32_t n, int32_t *n_unique);

typedef struct sm_text_metrics {
    int32_t n_outputs;
    int64_t n_tokens;         /* over all outputs                          */
    double rep[5];            /* rep[2], rep[3], rep[4]; [0], [1] are NaN  */
    double diversity;
    double seq_rep_4;
    double distinct[3];       /* distinct[1], distinct[2]; [0] is NaN      */
    double mean_length;       /* tokens per output; NaN with no outputs    */
} sm_text_metrics;

/* The metrics above over n_outputs token sequences. */
sm_status sm_text_metrics_compute(const sm_token *const *outputs, const int32_t *n_tokens, int32_t n_outputs,
                                  sm_text_metrics *out);

/* Reference answers. Both texts are first normalised: ASCII letters to
 * lower case, runs of white space to one space, trimmed, and trailing
 * sentence punctuation (. ! ?) removed. exact: the normalised texts are
 * equal; contains: the normalised reference occurs in the normalised
 * output as whole words ("blue" in "the blue sky", not in "bluebird").
 * An empty reference never matches. */
bool sm_reference_exact_match(const char *output, const char *reference);
bool sm_reference_contains_match(const char *output, const char *reference);

/*
 * A judge scores text that other models generated: the log-likelihood of
 * each continuation token given everything before it, from ONE batched
 * llama_decode with logits at every continuation position, in its own
 * llama context. sm_judge_score_text reads text through the judge's own
 * tokenizer, so any model can judge any other, and reports bits per byte
 * (comparable across vocabularies); sm_judge_score_tokens reads the
 * generator's token ids, which needs a shared vocabulary.
 */
typedef struct sm_judge sm_judge;

typedef struct sm_judge_params {
    uint32_t n_ctx;        /* 0 = the judge's training context (the default) */
    int32_t n_threads;     /* 0 = number of online cores                   */
} sm_judge_params;

sm_judge_params sm_judge_default_params(void);

/* generator: the model whose tokens will be scored, or NULL to skip the
 * check; a vocabulary that differs fails with SM_ERR_VOCAB_MISMATCH naming
 * the first difference. */
sm_judge *sm_judge_new(sm_model *judge, const sm_model *generator, const sm_judge_params *params, sm_error *err);
void sm_judge_free(sm_judge *judge);
int32_t sm_judge_n_ctx(const sm_judge *judge);
const char *sm_judge_last_error(const sm_judge *judge);

typedef struct sm_judge_score {
    double sum_logprob;    /* sum_j ln p(c_j | context, c_0 .. c_j-1)      */
    int32_t n_scored;      /* continuation tokens scored                   */
    double mean_nll;       /* -sum_logprob / n_scored; NaN when none       */
    int64_t n_bytes;       /* text: the continuation's bytes; tokens: 0    */
    double bits_per_byte;  /* -sum_logprob / ln 2 / n_bytes; NaN for tokens */
} sm_judge_score;

/* Scores `continuation` given `context` (at least one token, usually the
 * prompt with its BOS). Both together must fit the judge's context:
 * n_context + n_continuation - 1 <= sm_judge_n_ctx, else
 * SM_ERR_PROMPT_TOO_LONG. logprobs, when not NULL, receives one natural-log
 * probability per continuation token. */
sm_status sm_judge_score_tokens(sm_judge *judge, const sm_token *context, int32_t n_context,
                                const sm_token *continuation, int32_t n_continuation, float *logprobs,
                                sm_judge_score *out);
/* Scores the text `continuation` after the text `context` (may be "":
 * then after BOS alone; a vocabulary without BOS keeps its first token as
 * context) through the judge's tokenizer: the tokens of
 * context + continuation that are not tokens of the context alone are
 * scored (a token that spans the boundary is scored whole), and
 * bits_per_byte divides by the continuation's bytes. SM_ERR_PROMPT_TOO_LONG
 * when the text does not fit the judge's context. */
sm_status sm_judge_score_text(sm_judge *judge, const char *context, const char *continuation, sm_judge_score *out);
/* Scores n texts as sm_judge_score_text does, packing as many as fit the
 * judge's context into each llama_decode, a sequence each (many short
 * texts: a few decodes instead of n). status[i] is what
 * sm_judge_score_text would say of text i (SM_ERR_PROMPT_TOO_LONG for one
 * that does not fit; the others are scored all the same); returns the
 * first other failure, else SM_OK. Scores equal one-by-one scoring up to
 * llama.cpp's batched rounding. */
sm_status sm_judge_score_texts(sm_judge *judge, int32_t n, const char *const *contexts,
                               const char *const *continuations, sm_judge_score *scores, sm_status *status);

/* ------------------------------------------------------------------ */
/* Tree exploration (the LLooM)                                        */
/* ------------------------------------------------------------------ */

/*
 * Expands a tree of continuations of a prefix, breadth-first, as the LLooM
 * does. Every live beam (a partial continuation) offers its most probable
 * next tokens in order: the first always; each further one only while its
 * probability is >= the cutoff (and > 0) and the beam has fewer than
 * split_limit children. The token chosen after d tokens meets the cutoff
 * cutoff * multiplier^d. Of a level's offers the best by score take the
 * places left (beam_limit less the suggestions already finished); a beam
 * none of whose children kept a place ends as SM_TREE_END_BEAM_LIMIT and
 * is no suggestion. So at most beam_limit suggestions come back, each
 * complete: a beam ends (becomes a suggestion) at max_depth tokens, at a
 * token whose text holds an auto-stop character (stop characters that open
 * a suggestion do not count: it goes on until it has some other text; the
 * suggestion's text is cut after that character, ", and" ending as ","),
 * or at an end-of-generation token. With no stop characters every
 * suggestion has max_depth tokens (or ends at an end of generation).
 * Suggestions whose texts differ only by a leading space are one.
 *
 * Score = sum of log-probabilities of a beam's tokens (score_sum_probs:
 * the LLooM's arithmetic: the sum of probabilities, and several models'
 * probabilities add up, so the cutoff applies to their sum). Otherwise
 * several models mix democratically: each token's probability is the mean
 * of the models' probabilities.
 *
 * All live beams of a level are decoded in ONE llama_decode call per model:
 * each beam is a sequence of the same context, branched from its parent
 * with llama_memory_seq_cp (the shared prefix is never decoded again) and
 * removed with llama_memory_seq_rm when it ends. batched = false decodes
 * beam by beam instead (one call per beam per level), for comparison.
 */
typedef struct sm_tree sm_tree;

typedef struct sm_tree_params {
    int32_t max_depth;     /* 12: tokens in the longest suggestion             */
    int32_t beam_limit;    /* 25: the most suggestions, and of live beams     */
    float cutoff;          /* 0.2: least probability to split, in [0, 1]       */
    float multiplier;      /* 1.0: the cutoff after d tokens is cutoff * m^d   */
    int32_t split_limit;   /* 3: most children of a beam; 0 = only beam_limit  */
    const char *stop_chars;/* ".,": ASCII auto-stop characters; NULL/"" = off  */
    bool score_sum_probs;  /* false: sum of ln p; true: the LLooM's sum of p   */
    bool batched;          /* true: one llama_decode per level and model       */
    /* Activation scoring (the manual generation loop's #6), in a tree made
     * by sm_tree_new_observed, batched: each decoded token of a beam also
     * adds stability_weight * stability + focus_weight * focus to its
     * score, where stability = minus the mean relative change of the
     * observed layers' norms from the token before, and focus = minus the
     * mean attention entropy of the observed layers (0 without attention).
     * 0 and 0 (the default): likelihood only. */
    float stability_weight;
    float focus_weight;
} sm_tree_params;

/* A plain beam search as a tree: `width` beams, each offering its `width`
 * most probable tokens, the best `width` kept per level by the sum of ln
 * p, to n_tokens tokens (or an end of generation): the best suggestion is
 * the beam search's answer. */
sm_tree_params sm_beam_search_params(int32_t width, int32_t n_tokens);

sm_tree_params sm_tree_default_params(void);
/* Checks every field; on failure writes a message naming the field. */
sm_status sm_tree_params_validate(const sm_tree_params *params, sm_error *err);

/* Why a node is a leaf. */
typedef enum sm_tree_end {
    SM_TREE_END_NONE = 0,     /* an inner node: it has children            */
    SM_TREE_END_MAX_DEPTH,    /* max_depth tokens                           */
    SM_TREE_END_STOP_CHAR,    /* its token holds an auto-stop character     */
    SM_TREE_END_EOG,          /* an end-of-generation token                 */
    SM_TREE_END_BEAM_LIMIT,   /* dropped: better beams took the places (no suggestion) */
} sm_tree_end;

const char *sm_tree_end_name(sm_tree_end end);

/* One token of the tree. Nodes come in creation order (breadth-first, so
 * a parent always precedes its children); the prefix itself is no node. */
typedef struct sm_tree_node {
    int32_t parent;        /* index in nodes, -1 for the first token        */
    sm_token token;
    char *piece;           /* the token's text                              */
    float prob;            /* its (mixed) probability after its parent      */
    double score;          /* of the beam that ends here                    */
    int32_t depth;         /* 1 for the first token                         */
    sm_tree_end end;       /* SM_TREE_END_NONE unless it is a leaf          */
} sm_tree_node;

typedef struct sm_suggestion {
    char *text;            /* its tokens' pieces joined (a SentencePiece
                            * model's usually begins with a space), cut
                            * after the stop character that ended it       */
    sm_token *tokens;
    float *probs;          /* per token                                     */
    int32_t n_tokens;
    double score;
    int32_t node;          /* the leaf it ends at, an index in nodes         */
    sm_tree_end end;
} sm_suggestion;

typedef struct sm_tree_result {
    sm_suggestion *suggestions;  /* by score, best first; unique texts       */
    int32_t n_suggestions;       /* <= beam_limit                            */
    sm_tree_node *nodes;
    int32_t n_nodes;
    int32_t n_prefix_tokens;
    int32_t n_prefix_reused;     /* prefix tokens kept from the last call    */
    int32_t n_levels;            /* levels decoded after the prefix          */
    int32_t max_live_beams;      /* the most beams decoded in one level      */
    int32_t n_decode_calls;      /* llama_decode calls after the prefix, all models */
    int64_t n_tokens_decoded;    /* tokens they decoded, all models          */
    double elapsed_ms;           /* the whole expansion, prefix included     */
} sm_tree_result;

/*
 * One llama context per model, each with max_beam_limit + 1 sequences
 * (one keeps the prefix, which later calls reuse as far as it is
 * unchanged) in one unified KV cache, so that a branch shares its
 * parent's cells instead of copying them. At most max_beam_limit beams
 * are ever alive, so expand accepts any beam_limit up to it (<= 255).
 * The cells hold the prefix plus every decoded node that a live beam still
 * needs; a tree that outgrows them fails with SM_ERR_CONTEXT.
 * n_ctx = 0: the first model's training context; n_threads = 0: the
 * online cores (shared among the models). Several models must share one
 * vocabulary (SM_ERR_VOCAB_MISMATCH otherwise). The models must outlive
 * the tree; a tree serves one call at a time.
 */
sm_tree *sm_tree_new(sm_model *const *models, int32_t n_models, uint32_t n_ctx, int32_t n_threads,
                     int32_t max_beam_limit, sm_error *err);
/* The same, with model 0's context observing `layers` (negative from the
 * end; at most 16) and, with attention, their heads' attention entropy:
 * what activation scoring reads. */
sm_tree *sm_tree_new_observed(sm_model *const *models, int32_t n_models, uint32_t n_ctx, int32_t n_threads,
                              int32_t max_beam_limit, const int32_t *layers, int32_t n_layers, bool attention,
                              sm_error *err);
void sm_tree_free(sm_tree *tree);
/* The tree's decodes run on the batch's decoder thread, taking turns with
 * the batch's steps, instead of in the caller's thread beside them (two
 * thread teams spinning on the same cores slow both many times over); its
 * cache stays its own. NULL: the caller's thread again. The batch must
 * outlive the tree or the next call. */
void sm_tree_share_decoder(sm_tree *tree, sm_batch *batch);

/* Tokenizes the prefix as plain text (with the model's BOS when it wants
 * one) and expands. The prefix plus max_depth tokens must fit the context
 * (SM_ERR_PROMPT_TOO_LONG). Free the result with sm_tree_result_free. */
sm_status sm_tree_expand(sm_tree *tree, const char *prefix, const sm_tree_params *params,
                         sm_tree_result *out);
void sm_tree_result_free(sm_tree_result *result);
/* What went wrong in the last failed call on this tree, "" if nothing. */
const char *sm_tree_last_error(const sm_tree *tree);
uint32_t sm_tree_n_ctx(const sm_tree *tree);

/* ------------------------------------------------------------------ */
/* Introspection: sessions, control vectors, steering, files           */
/* ------------------------------------------------------------------ */

/* True when the session observes layers (its eval callback is set). */
bool sm_session_introspecting(const sm_session *session);
/* The stats of the last token decoded into the context; NULL when the
 * session observes nothing or nothing was decoded. */
const sm_introspection *sm_session_introspection(const sm_session *session);

/*
 * A control vector in llama.cpp's layout: data[(il - 1) * n_embd + j] is
 * added to layer il's output (il >= 1: llama.cpp never steers layer 0);
 * n_layers directions, so n_embd * n_layers floats.
 */
typedef struct sm_control_vector {
    float *data;
    int32_t n_embd;
    int32_t n_layers;
} sm_control_vector;

/* Loads and sums llama.cpp control-vector GGUF files ("FILE" or
 * "FILE:SCALE", tensors direction.<layer>, F32), as llama.cpp does. */
sm_status sm_control_vector_load(const char *const *specs, int32_t n_specs, sm_control_vector *out,
                                 sm_error *err);
/* Writes the non-zero layers as direction.<layer> tensors with
 * general.architecture "controlvector", controlvector.model_hint and
 * controlvector.layer_count. */
sm_status sm_control_vector_save(const sm_control_vector *cv, const char *path, const char *model_hint,
                                 sm_error *err);
void sm_control_vector_free(sm_control_vector *cv);

/* Applies a control vector to every model of the session for the tokens
 * decoded from now on, layers il_start..il_end (inclusive; -1 -1 = all it
 * holds). data NULL removes it. len counts floats. */
sm_status sm_session_set_control_vector(sm_session *session, const float *data, int32_t len, int32_t n_embd,
                                        int32_t il_start, int32_t il_end);

/* Steering vectors from contrasting prompts: each prompt is decoded alone,
 * the chosen layers' outputs are averaged over its tokens (a leading BOS
 * left out), and the direction of layer il is mean(positive) -
 * mean(negative). */
typedef struct sm_steer_params {
    const char *const *positive;
    int32_t n_positive;
    const char *const *negative;
    int32_t n_negative;
    const int32_t *layers;      /* NULL: 1 .. n_layer-1; negative from the end */
    int32_t n_layers;
    int32_t n_threads;          /* 0 = online cores                          */
    uint32_t n_ctx;             /* 0 = the model's training context (max 4096) */
} sm_steer_params;

sm_steer_params sm_steer_default_params(void);
sm_status sm_steer_compute(sm_model *model, const sm_steer_params *params, sm_control_vector *out,
                           sm_error *err);

/*
 * Hidden states to a NumPy .npy file (format 1.0, little-endian float32,
 * shape (n_tokens, n_layers, n_embd)), fed from a session's events: each
 * TOKEN event appends its introspection->hidden row, each RETRACTION or
 * BACKTRACK cuts the rows back to the kept tokens; several generations
 * append. The header is rewritten with the final shape on close.
 */
typedef struct sm_hidden_writer sm_hidden_writer;
sm_hidden_writer *sm_hidden_writer_open(const char *path, sm_error *err);
/* Returns false after a write error (see sm_hidden_writer_close). */
bool sm_hidden_writer_on_event(sm_hidden_writer *writer, const sm_event *event);
int64_t sm_hidden_writer_rows(const sm_hidden_writer *writer);
sm_status sm_hidden_writer_close(sm_hidden_writer *writer, sm_error *err);

/*
 * Prompt cache. save_prefix writes model 0's KV cache of the whole context
 * with its tokens (llama_state_seq_save_file). load_prefix feeds `tokens`
 * into an EMPTY one-model session, taking from the file the longest part
 * that is a prefix of them (the last token is always decoded, for its
 * distribution); a file that does not fit is ignored and info->reason says
 * why. Either way the session ends up holding `tokens`.
 */
sm_status sm_session_save_prefix(sm_session *session, const char *path);
typedef struct sm_prefix_info {
    int32_t n_file_tokens;   /* tokens in the file (0: none read)           */
    int32_t n_reused;        /* tokens taken from it                        */
    int32_t n_decoded;       /* tokens decoded afresh                       */
    char reason[256];        /* why the file was not used, "" when it was   */
} sm_prefix_info;
sm_status sm_session_load_prefix(sm_session *session, const char *path, const sm_token *tokens,
                                 int32_t n_tokens, sm_prefix_info *info);

/* Slot files (llama-server's /slots save and restore): what the context
 * holds, its tokens and model 0's cells of the session's sequence, in
 * llama.cpp's sequence-state file (llama_state_seq_save_file) with the
 * token list packed as llama-server packs it, and back: a slot file either
 * program wrote restores in the other (a plain token list, as older
 * llama-servers wrote, restores too). A restore replaces what the session
 * holds (the last token is decoded again, for its distribution). One-model
 * sessions, on a batch or not. */
sm_status sm_session_save_state(sm_session *session, const char *path, int32_t *n_saved, size_t *n_bytes);
sm_status sm_session_load_state(sm_session *session, const char *path, int32_t *n_restored, size_t *n_bytes);

#ifdef __cplusplus
}
#endif

#endif /* SELFMOD_H */
