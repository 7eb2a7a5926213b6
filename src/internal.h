/* Private declarations shared by the library's modules. */
#ifndef SELFMOD_INTERNAL_H
#define SELFMOD_INTERNAL_H

#include "selfmod.h"
#include "llama.h"

#include "guard.h"

#include <stdarg.h>
#include <stdatomic.h>

struct sm_model {
    struct llama_model *lm;
    const struct llama_vocab *vocab;
    char *path;
    char description[128];
    int32_t n_vocab;
    sm_token unk_token;              /* -1: the vocabulary has none        */
    sm_unknown_chars unknown_chars;  /* what tokenizing does without bytes */
    atomic_llong n_unknown_chars;    /* characters mapped to unk_token     */
    atomic_bool first_unknown_set;
    char first_unknown[8];           /* written once, before the flag       */
    bool amx_refused;                /* weights as stored: AMX fails here   */
};

/* context.c: every llama.cpp context the library makes. */
typedef struct sm_introspector sm_introspector; /* introspect.c, below */

typedef struct sm_context_opts {
    uint32_t n_ctx;
    uint32_t n_batch, n_ubatch;  /* 0: 512, n_batch                       */
    uint32_t n_seq_max;          /* 0: 1                                  */
    bool kv_unified;             /* sequences share one pool of cells     */
    int32_t n_threads;           /* 0: the online cores                   */
    ggml_backend_sched_eval_callback cb_eval;
    void *cb_eval_user_data;
    bool no_flash_attention;     /* attention probabilities are observed  */
    bool embeddings;             /* pooled embeddings, not logits (the
                                    model's own pooling)                   */
    bool mean_pooling;           /* ... mean pooling, whatever the model's  */
    const char *what;            /* for the error: "a judge context"      */
} sm_context_opts;
struct llama_context *sm_context_new(const sm_model *model, const sm_context_opts *opts, sm_error *err);
int32_t sm_online_cores(void);
/* Appends one token to a llama_batch (made by llama_batch_init): at pos in
 * seq, with its distribution kept when logits. Every multi-sequence decode
 * (the loop's batch, the tree's levels, lookahead branches, the judge's
 * packed texts) fills its batch with it. */
static inline void sm_llama_batch_add(struct llama_batch *b, sm_token token, int32_t pos, llama_seq_id seq,
                                      bool logits) {
    int32_t i = b->n_tokens++;
    b->token[i] = token;
    b->pos[i] = pos;
    b->n_seq_id[i] = 1;
    b->seq_id[i][0] = seq;
    b->logits[i] = logits;
}
/* THE decode: llama_decode's code (exceptions become -1000, see guard.h). */
int32_t sm_decode(struct llama_context *ctx, const llama_batch *batch);
/* What a non-zero llama_decode code means, for messages. */
const char *sm_decode_failure(int32_t rc);
/* Decodes in every model at once: decode(arg, m) returns llama_decode's
 * code for model m. When any fails, undo(arg, m) (may be NULL) removes the
 * batch from every model (a failed decode may have kept part of it); returns the first failing
 * model's code (its index in *failed, -1 when all succeeded), else 0. */
typedef struct sm_pool sm_pool;
int32_t sm_models_decode(sm_pool *pool, int32_t n_models, int32_t (*decode)(void *arg, int32_t m),
                         void (*undo)(void *arg, int32_t m), void *arg, int32_t *failed);

/* batch.c: what sessions on a batch call. */
int32_t sm_batch_take_seq(sm_batch *b);            /* -1: every one is taken */
void sm_batch_give_seq(sm_batch *b, int32_t seq);  /* its cells are cleared  */
struct llama_context *sm_batch_context(const sm_batch *b, int32_t m);
/* Held around any other use of a batch context (a session's cache
 * operations): the decoder thread holds it while it decodes. */
void sm_batch_lock_context(sm_batch *b);
void sm_batch_unlock_context(sm_batch *b);
/* A session enters (+1) or leaves (-1) a stretch of decodes. */
void sm_batch_busy(sm_batch *b, int32_t delta);
/* Decodes tokens at pos.. of seq with the other busy sessions' tokens;
 * logits (may be NULL) gets the last one's distribution. llama_decode's code.
 * n 0 only checks in: the session has nothing for model m this step, and
 * the step need not wait for it. */
int32_t sm_batch_decode(sm_batch *b, int32_t m, llama_seq_id seq, int32_t pos, const sm_token *tokens, int32_t n,
                        float *logits);
/* The same for a session that observes model m's layers: its tokens are
 * decoded in a llama_decode of their own, with `in` as the eval callback's
 * (the rows of a shared decode are split into ubatches by sequence). */
int32_t sm_batch_decode_observed(sm_batch *b, int32_t m, llama_seq_id seq, int32_t pos, const sm_token *tokens,
                                 int32_t n, float *logits, sm_introspector *in);

/* One token per sequence, tokens[i] at pos in seqs[i], with the other busy
 * sessions' tokens (a session's lookahead branches); logits gets every
 * row, n * n_vocab floats. llama_decode's code. */
int32_t sm_batch_decode_rows(sm_batch *b, int32_t m, const llama_seq_id *seqs, int32_t pos, const sm_token *tokens,
                             int32_t n, float *logits, sm_introspector *in);
bool sm_batch_kv_unified(const sm_batch *b);
/* Decodes batch in ctx (not the batch's) on the batch's decoder thread,
 * taking turns with the batch's own decodes. llama_decode's code. */
int32_t sm_batch_decode_other(sm_batch *b, struct llama_context *ctx, const llama_batch *batch);

/* cpu_probe.c: false when llama.cpp's AMX buffer type crashes or errs on
 * this machine (tried once, in a child process); models then load without
 * extra buffer types. */
bool sm_cpu_extra_buffers_work(void);
/* The probe's products of each type AMX takes (Q4_0, Q4_1, Q8_0, Q4_K, Q5_K,
 * Q6_K, IQ4_XS, F16) with the weights stored in buft,
 * against the plain CPU buffer's: 0 when equal (2: no CPU backend, 3: a
 * compute failed, 4: they differ). Run in-process: buft must be safe. */
int sm_cpu_probe_products(ggml_backend_buffer_type_t buft);

/* threads.c: the thread count of one-token decodes, tuned by measuring. */
enum { SM_TUNER_WINDOW = 8, SM_TUNER_PROBE_UP = 32 };
typedef struct sm_thread_tuner {
    bool enabled;
    int32_t max, current;
    bool probing, last_probe_was_down;
    int32_t probe;
    double ms_current[SM_TUNER_WINDOW], ms_probe[SM_TUNER_PROBE_UP]; /* decode times */
    int32_t n_current, next_current, n_probe;
    int64_t n_decodes, next_probe, backoff;
    int32_t n_switches;
} sm_thread_tuner;
void sm_thread_tuner_init(sm_thread_tuner *t, int32_t max_threads, bool enabled);
/* The count to decode the next token with. */
int32_t sm_thread_tuner_next(sm_thread_tuner *t);
/* How long that decode took. */
void sm_thread_tuner_record(sm_thread_tuner *t, int32_t threads, double ms);

/* gguf_check.c: false (err filled) for metadata llama.cpp would assert on. */
bool sm_gguf_check(const char *path, sm_error *err);

/* A character for an error message: 'x', U+000A or byte 0xE9. */
void sm_describe_char(const char *c, size_t n, char *buf, size_t size);

/* sm_error_set (params.c) is declared in guard.h. */
/* The last error line llama.cpp logged on this thread (model.c). */
const char *sm_llama_last_log_error(void);
void sm_llama_clear_log_error(void);

/* signals.c: pure functions over one raw distribution. */
typedef struct sm_dist_stats {
    float log_z;   /* log sum exp(logits): p(t) = exp(logit[t] - log_z) */
} sm_dist_stats;
/* Fills everything in *out but p_sampled; stats may be NULL. */
void sm_signals_compute(const float *logits, int32_t n_vocab, sm_token chosen, sm_signals *out,
                        sm_dist_stats *stats);
/* out = softmax(logits) over n values (vectorised; ~1e-6 relative). */
void sm_softmax(const float *logits, int32_t n, float *out);
/* The k largest of values[0..n_values), descending (ties: lower id first),
 * as out[i].token and out[i].logit; prob is left 0. */
int32_t sm_select_largest(const float *values, int32_t n_values, int32_t k, sm_candidate *out);
/* The n most probable tokens, descending, with raw probabilities.
 * Returns how many were written (min(n, n_vocab)). */
int32_t sm_top_candidates(const float *logits, int32_t n_vocab, const sm_dist_stats *stats,
                          int32_t n, sm_candidate *out);

/* Milliseconds on the monotonic clock (params.c). */
double sm_now_ms(void);

/* fusion.c: combining several models' distributions. Pure. */
typedef struct sm_model_dist {
    const float *logits;   /* raw, on model 0's vocabulary                  */
    float log_z;
    float max_p;
    sm_token top[3];       /* the three most probable, descending            */
} sm_model_dist;

void sm_model_dist_summarize(const float *logits, int32_t n_vocab, sm_model_dist *out);
/* Writes the fused log-probabilities (or contrastive scores) for generated
 * token `index` into out; marks which models took part. */
void sm_fuse(const sm_fusion_params *fp, const sm_model_dist *d, int32_t n_models, int32_t n_vocab,
             int32_t index, float *out, bool *participating);
void sm_fusion_agreement(const sm_model_dist *d, int32_t n_models, int32_t n_vocab, sm_token chosen,
                         const bool *participating, int32_t reference, sm_fusion_info *info);
/* Model m's distribution mapped onto model 0's vocabulary through
 * map[t_m] = t_0 or -1; returns the probability mass that found no token. */
float sm_map_distribution(const float *logits_m, int32_t n_vocab_m, const int32_t *map, float *out,
                          int32_t n_vocab_0);
sm_status sm_fusion_params_validate(const sm_fusion_params *fp, int32_t n_models, char *msg, size_t size);

/* pool.c: run fn(arg, i) for i in [0, n) in parallel, 0 on the caller. */
sm_pool *sm_pool_new(int32_t n_workers);
void sm_pool_run(sm_pool *pool, void (*fn)(void *arg, int32_t index), void *arg, int32_t n);
void sm_pool_free(sm_pool *pool);

/* sampler.c: the sampling chain (see sm_sampling_params). */
typedef struct sm_sampler_work {
    float *logits;        /* penalised copy, n_vocab                       */
    float *masked;        /* for sm_sample_input.masked_out, n_vocab       */
    float *by_id;         /* the draw in token order: logit by token (not
                             masked: that is the caller's result)          */
    sm_token *counted;    /* the recent tokens, sorted, to count them      */
    int32_t cap_counted;
    sm_candidate *cand;   /* candidates after top-k                        */
    sm_candidate *cand2;  /* scratch (typical)                             */
    int32_t n_vocab;
    /* The DRY stage: llama.cpp's own sampler, made when first needed and
     * again when its settings change. vocab (for the sequence breakers;
     * NULL: none) and n_ctx (what dry_penalty_last_n = -1 means) are set
     * by the owner after sm_sampler_work_init. */
    const struct llama_vocab *vocab;
    int32_t n_ctx;
    struct llama_sampler *dry;
    struct llama_sampler *infill; /* made on first use (needs vocab)       */
    llama_token_data *dry_cur;   /* n_vocab                                */
    float dry_made_with[2];      /* multiplier, base                       */
    int32_t dry_made_with_len[2];/* allowed length, tokens it looks at     */
} sm_sampler_work;

typedef struct sm_sample_input {
    const float *logits;
    int32_t n_vocab;
    const sm_token *recent;     /* tokens the repeat penalty looks at      */
    int32_t n_recent;
    const sm_token *bans;       /* tokens that may not be chosen here      */
    int32_t n_bans;
    const sm_token *never;      /* nor these, anywhere (ignore_eos)        */
    int32_t n_never;
    float temperature;
    float repeat_penalty;
    float frequency_penalty;
    float presence_penalty;
    const sm_logit_bias *logit_bias;
    int32_t n_logit_bias;
    int32_t top_k;
    float top_p;
    float min_p;
    /* DRY (after the repeat penalty): the whole context, of which it looks
     * at the last dry_penalty_last_n tokens (-1: all of it). */
    const sm_token *history;
    int32_t n_history;
    float dry_multiplier;       /* 0 = off                                 */
    float dry_base;
    int32_t dry_allowed_length;
    int32_t dry_penalty_last_n;
    float top_n_sigma, typical_p, xtc_probability, xtc_threshold, dynatemp_range, dynatemp_exponent;
    int32_t mirostat;
    float mirostat_tau, mirostat_eta;
    struct llama_sampler *grammar; /* applied after the penalties, or NULL */
    bool infill;                   /* llama.cpp's infill sampler after XTC */
    /* With a grammar, when not NULL: gets `logits` with what the grammar
     * (and the bans) rule out at -inf, the distribution the text is
     * written from (n_vocab). */
    float *masked_out;
    /* When not NULL: the candidates the draw chose from, with the
     * probabilities it drew with (after every truncation and the
     * temperature), the most probable first, at most max_kept. */
    sm_candidate *kept_out;
    int32_t *n_kept_out;
    int32_t max_kept;
    float mirostat_mu;          /* in: mu before this token              */
    float *mirostat_mu_next;    /* out: mu after it (when mirostat)      */
} sm_sample_input;

int sm_sampler_work_init(sm_sampler_work *w, int32_t n_vocab);
void sm_sampler_work_free(sm_sampler_work *w);
/* llama.cpp's random draws, bit for bit: std::mt19937 as libstdc++ has
 * it, and its uniform_real_distribution<double> (two outputs a draw) and
 * <float> (one). n_out counts the outputs taken since seeding: a rewind
 * restores that count (sm_mt_seek replays), not the 2.5 KB state. */
typedef struct sm_mt {
    uint32_t state[624];
    int32_t index;
    uint32_t seed;
    uint64_t n_out;
} sm_mt;
void sm_mt_seed(sm_mt *mt, uint32_t seed);
uint32_t sm_mt_next(sm_mt *mt);
void sm_mt_seek(sm_mt *mt, uint64_t n_out);
double sm_mt_uniform(sm_mt *mt);     /* [0, 1) */
float sm_mt_uniform_float(sm_mt *mt); /* [0, 1) */

/* The sampler's random state: the stream of llama.cpp's dist (or
 * mirostat) sampler and that of its XTC sampler, each seeded with the
 * seed as llama.cpp seeds them, so a seed draws what llama.cpp draws. */
typedef struct sm_sample_rng {
    sm_mt draw, xtc;
} sm_sample_rng;
typedef struct sm_rng_mark {
    uint64_t draw, xtc;
} sm_rng_mark;
void sm_sample_rng_init(sm_sample_rng *rng, uint64_t seed);
sm_rng_mark sm_sample_rng_mark(const sm_sample_rng *rng);
void sm_sample_rng_restore(sm_sample_rng *rng, sm_rng_mark mark);

/* Returns the chosen token (or -1 when every token is banned) and its
 * probability under the final distribution in *p_sampled. */
sm_token sm_sample(const sm_sample_input *in, sm_sample_rng *rng, sm_sampler_work *w, float *p_sampled);
float sm_topk_confidence(const float *logits, int32_t n_vocab, int32_t k, sm_token t, sm_candidate *work);
/* splitmix64, for the library's own draws (exploration bursts). */
uint64_t sm_rng_next(uint64_t *state);
double sm_rng_uniform(uint64_t *state); /* [0, 1) */

/* policy.c: the self-modification policy. Pure. */
typedef struct sm_policy_state {
    float temperature;
    float repeat_penalty;
    uint64_t rng;          /* exploration bursts */
    /* SM_POLICY_CALIBRATED: the running mean and variance of the kept
     * tokens' confidence (Welford), and the values it relaxes back to. */
    int32_t n_seen;
    double conf_mean, conf_m2;
    float base_temperature, base_repeat_penalty;
} sm_policy_state;

typedef struct sm_policy_mod {
    sm_mod_type type;
    float t_before, t_after, rp_before, rp_after;
    char description[128];
} sm_policy_mod;

typedef struct sm_policy_action {
    float window_mean;
    int32_t retract;       /* tokens to remove, candidate included; 0 = none */
    bool loop;             /* the retraction removes a repeated n-gram      */
    int32_t n_mods;
    sm_policy_mod mods[4];
} sm_policy_action;

bool sm_policy_retraction_enabled(const sm_policy_params *p);
/* The most tokens one retraction removes. */
int32_t sm_policy_retraction_tokens(const sm_policy_params *p);
/* confidences/tokens: the generated ones, the candidate last (n >= 1). */
void sm_policy_step(const sm_policy_params *p, const float *confidences, const sm_token *tokens,
                    int32_t n, int32_t n_retractions_done, sm_policy_state *state,
                    sm_policy_action *action);
/* The temperature change that goes with a retraction. */
void sm_policy_after_retraction(const sm_policy_params *p, sm_policy_state *state);

/* text.c: generated text with per-token byte offsets, rewindable. */
typedef struct sm_text {
    char *bytes;
    size_t len, cap;
    size_t *offsets;      /* offsets[i] = length before token i */
    int32_t n_tokens, cap_tokens;
} sm_text;

void sm_text_init(sm_text *t);
void sm_text_free(sm_text *t);
void sm_text_clear(sm_text *t);
int sm_text_push(sm_text *t, const char *piece, size_t n);
void sm_text_pop(sm_text *t, int32_t n_tokens);
/* The token's text as llama.cpp renders it (special tokens: empty). */
int32_t sm_token_piece(const struct llama_vocab *vocab, sm_token token, char *buf, int32_t size);
/* The same, but special tokens as their text ("<|endoftext|>"). */
int32_t sm_token_text(const struct llama_vocab *vocab, sm_token token, char *buf, int32_t size);
/* Offset of the first stop string found in t->bytes at or after `from`,
 * or -1. */
long sm_text_find_stop(const sm_text *t, size_t from, const char *const *stops, int32_t n_stops);

/* params.c: the introspection and intervention fields of sm_gen_params. */
sm_status sm_intervention_params_validate(const sm_gen_params *p, char *msg, size_t msg_size);

/* policy.c: entropy steering (sm_policy_params.entropy_mode) for one token.
 * Returns true and fills mod (type, temperatures, description) when it
 * changes *temperature. A token a lookahead chose is never sampled, so the
 * lookahead takes the high-entropy regime wherever it branches. Pure. */
bool sm_policy_entropy_steer(const sm_policy_params *p, float entropy, float varentropy, float *temperature,
                             sm_policy_mod *mod);

/* introspect.c: llama.cpp's eval callback reduced to per-row statistics.
 * A record is one row's stats (sm_layer_stats per observed layer, then
 * n_layers x n_heads attention entropies); the rows of interest are the
 * last n_rows of each batch. */
typedef struct sm_introspector sm_introspector;
struct ggml_tensor;
sm_introspector *sm_introspector_new(const struct llama_model *lm, const int32_t *layers, int32_t n_layers,
                                     bool all_layers, bool attention, bool hidden, int32_t max_rows, char *msg,
                                     size_t msg_size);
void sm_introspector_free(sm_introspector *in);
bool sm_introspector_cb(struct ggml_tensor *t, bool ask, void *user_data);
/* Before each decode: the batch's last n_rows rows are observed. */
void sm_introspector_expect_rows(sm_introspector *in, int32_t n_rows);
int32_t sm_introspector_n_layers(const sm_introspector *in);
const int32_t *sm_introspector_layers(const sm_introspector *in);
int32_t sm_introspector_n_embd(const sm_introspector *in);
size_t sm_introspector_record_size(const sm_introspector *in);
size_t sm_introspector_hidden_floats(const sm_introspector *in); /* per row; 0 = not kept */
int64_t sm_introspector_calls(const sm_introspector *in);
bool sm_introspector_has_data(const sm_introspector *in);
/* The observed slot of a model layer (negative from the end), or -1. */
int32_t sm_introspector_slot(const sm_introspector *in, int32_t layer);
const void *sm_introspector_record(const sm_introspector *in, int32_t row);
const float *sm_introspector_hidden(const sm_introspector *in, int32_t row);
void sm_introspector_view(const sm_introspector *in, const void *record, const float *hidden,
                          sm_introspection *out);
/* Steering: sum every row after the first skip_rows instead. */
int sm_introspector_accumulate(sm_introspector *in, bool on, int32_t skip_rows);
bool sm_introspector_mean(const sm_introspector *in, int32_t slot, float *out);

bool sm_safety_rules_check_layers(const sm_introspector *in, const sm_safety_rule *rules, int32_t n, char *msg,
                                  size_t msg_size);
/* The first rule that fires for record `cur` given the n_prev earlier
 * records of the generation (contiguous), or -1; writes its value and a
 * description. */
int32_t sm_safety_check(const sm_introspector *in, const sm_safety_rule *rules, int32_t n_rules, const void *records,
                        int32_t n_prev, const void *cur, float *value, char *desc, size_t desc_size);

/* JSON forms (introspect.c, events.c). */
typedef struct cJSON cJSON;
void sm_json_add_float(cJSON *object, const char *key, float value);
cJSON *sm_introspection_to_cjson(const sm_introspection *in);
cJSON *sm_lookahead_to_cjson(const sm_lookahead_info *info);

/* session.c, for tests and benchmarks: model m's llama context, and how
 * often the eval callback observed a node (-1: no callback registered). */
struct llama_context *sm_session_llama_context(const sm_session *s, int32_t m);
int64_t sm_session_eval_callback_calls(const sm_session *s);

#endif
