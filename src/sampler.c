/*
 * The sampling chain: logit bias -> bans -> repeat, frequency and
 * presence penalties -> DRY -> top-n-sigma -> top-k -> typical -> top-p ->
 * min-p -> XTC -> temperature (or dynamic temperature) -> draw; mirostat
 * v2 replaces everything after DRY with temperature -> mirostat. These
 * follow llama.cpp's samplers step for step, and draw as llama.cpp draws:
 * the same std::mt19937 streams seeded the same way, the same arithmetic
 * over the candidates in the same order, so one seed gives llama.cpp's
 * tokens (tests/test_sampler.c holds both to llama.cpp's on the same
 * logits). Written here rather than with llama_sampler because the policy
 * changes temperature and penalty every token and a rewind must restore
 * the penalty history and the random state exactly: both are plain values
 * owned by the session (the kept token list, and how many outputs each
 * random stream has given).
 * DRY is llama.cpp's own sampler, but it never keeps a history of its own:
 * it is reset and shown the kept tokens before every use.
 */
#include "internal.h"
#include "fastmath.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* splitmix64: tiny, fast, and its whole state is one integer. */
uint64_t sm_rng_next(uint64_t *state) {
    uint64_t z = (*state += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

double sm_rng_uniform(uint64_t *state) { return (double)(sm_rng_next(state) >> 11) * 0x1.0p-53; }

/* std::mt19937 (Matsumoto and Nishimura), as the C++ standard defines it. */
enum { MT_N = 624, MT_M = 397 };

void sm_mt_seed(sm_mt *mt, uint32_t seed) {
    mt->seed = seed;
    mt->state[0] = seed;
    for (uint32_t i = 1; i < MT_N; i++) mt->state[i] = 1812433253u * (mt->state[i - 1] ^ (mt->state[i - 1] >> 30)) + i;
    mt->index = MT_N;
    mt->n_out = 0;
}

static void mt_twist(sm_mt *mt) {
    for (int32_t i = 0; i < MT_N; i++) {
        uint32_t y = (mt->state[i] & 0x80000000u) | (mt->state[(i + 1) % MT_N] & 0x7fffffffu);
        mt->state[i] = mt->state[(i + MT_M) % MT_N] ^ (y >> 1) ^ (y & 1u ? 0x9908b0dfu : 0u);
    }
    mt->index = 0;
}

uint32_t sm_mt_next(sm_mt *mt) {
    if (mt->index >= MT_N) mt_twist(mt);
    uint32_t y = mt->state[mt->index++];
    y ^= y >> 11;
    y ^= (y << 7) & 0x9d2c5680u;
    y ^= (y << 15) & 0xefc60000u;
    y ^= y >> 18;
    mt->n_out++;
    return y;
}

/* Back to the state after n_out outputs. Output k is word k % 624 of the
 * k / 624-th block of state, and the block the state holds stays whole
 * until the next twist: a seek within it (a rewind of a few tokens, two
 * outputs each, almost always is) only moves the index; one further back
 * reseeds and replays. */
void sm_mt_seek(sm_mt *mt, uint64_t n_out) {
    if (n_out < mt->n_out && mt->n_out > 0 && n_out / MT_N == (mt->n_out - 1) / MT_N) {
        mt->index = (int32_t)(n_out % MT_N);
        mt->n_out = n_out;
        return;
    }
    if (n_out < mt->n_out) sm_mt_seed(mt, mt->seed);
    while (mt->n_out < n_out) sm_mt_next(mt);
}

/* libstdc++'s generate_canonical<double, 53>: two outputs, low one first,
 * summed in double (the sum rounds to 53 bits), scaled by 2^-64. */
double sm_mt_uniform(sm_mt *mt) {
    double sum = (double)sm_mt_next(mt);
    sum += (double)sm_mt_next(mt) * 4294967296.0;
    double u = sum / 18446744073709551616.0;
    return u >= 1.0 ? nextafter(1.0, 0.0) : u;
}

/* ... and generate_canonical<float, 24>: one output, rounded to float. */
float sm_mt_uniform_float(sm_mt *mt) {
    float u = (float)sm_mt_next(mt) / 4294967296.0f;
    return u >= 1.0f ? nextafterf(1.0f, 0.0f) : u;
}

/* llama.cpp seeds its dist, mirostat and XTC samplers with the 32-bit seed. */
void sm_sample_rng_init(sm_sample_rng *rng, uint64_t seed) {
    sm_mt_seed(&rng->draw, (uint32_t)seed);
    sm_mt_seed(&rng->xtc, (uint32_t)seed);
}

sm_rng_mark sm_sample_rng_mark(const sm_sample_rng *rng) {
    return (sm_rng_mark){.draw = rng->draw.n_out, .xtc = rng->xtc.n_out};
}

void sm_sample_rng_restore(sm_sample_rng *rng, sm_rng_mark mark) {
    sm_mt_seek(&rng->draw, mark.draw);
    sm_mt_seek(&rng->xtc, mark.xtc);
}

int sm_sampler_work_init(sm_sampler_work *w, int32_t n_vocab) {
    *w = (sm_sampler_work){.n_vocab = n_vocab};
    w->logits = malloc(sizeof(float) * (size_t)n_vocab);
    w->masked = malloc(sizeof(float) * (size_t)n_vocab);
    w->by_id = malloc(sizeof(float) * (size_t)n_vocab);
    w->cand = malloc(sizeof(sm_candidate) * (size_t)n_vocab);
    w->cand2 = malloc(sizeof(sm_candidate) * (size_t)n_vocab);
    w->dry_cur = malloc(sizeof(llama_token_data) * (size_t)n_vocab);
    return w->logits && w->masked && w->by_id && w->cand && w->cand2 && w->dry_cur ? 0 : -1;
}

void sm_sampler_work_free(sm_sampler_work *w) {
    free(w->logits);
    free(w->masked);
    w->masked = NULL;
    free(w->by_id);
    w->by_id = NULL;
    free(w->cand);
    free(w->cand2);
    free(w->dry_cur);
    free(w->counted);
    w->counted = NULL;
    if (w->dry) llama_sampler_free(w->dry);
    if (w->infill) llama_sampler_free(w->infill);
    w->infill = NULL;
    w->logits = NULL;
    w->cand = NULL;
    w->dry_cur = NULL;
    w->dry = NULL;
}

/* llama.cpp's rule: positive logits are divided, negative multiplied. */
static void apply_repeat_penalty(float *logits, const sm_sample_input *in) {
    if (in->repeat_penalty == 1.0f) return;
    for (int32_t i = 0; i < in->n_recent; i++) {
        sm_token t = in->recent[i];
        if (t < 0 || t >= in->n_vocab) continue;
        bool seen = false; /* penalise each distinct token once */
        for (int32_t j = 0; j < i && !seen; j++) seen = in->recent[j] == t;
        if (seen) continue;
        logits[t] = logits[t] > 0 ? logits[t] / in->repeat_penalty : logits[t] * in->repeat_penalty;
    }
}

static int by_token(const void *a, const void *b) {
    sm_token x = *(const sm_token *)a, y = *(const sm_token *)b;
    return (x > y) - (x < y);
}

/* OpenAI's frequency and presence penalties, by how often each token
 * occurs among the recent ones (counted on a sorted copy). */
static void apply_count_penalties(float *logits, const sm_sample_input *in, sm_sampler_work *w) {
    if ((in->frequency_penalty == 0.0f && in->presence_penalty == 0.0f) || in->n_recent == 0) return;
    if (in->n_recent > w->cap_counted) {
        sm_token *c = realloc(w->counted, sizeof *c * (size_t)in->n_recent);
        if (!c) return; /* cannot happen for sane windows; the penalty is then skipped */
        w->counted = c;
        w->cap_counted = in->n_recent;
    }
    memcpy(w->counted, in->recent, sizeof *w->counted * (size_t)in->n_recent);
    qsort(w->counted, (size_t)in->n_recent, sizeof *w->counted, by_token);
    for (int32_t i = 0; i < in->n_recent;) {
        int32_t j = i;
        while (j < in->n_recent && w->counted[j] == w->counted[i]) j++;
        sm_token t = w->counted[i];
        if (t >= 0 && t < in->n_vocab)
            logits[t] -= (float)(j - i) * in->frequency_penalty + in->presence_penalty;
        i = j;
    }
}

/* llama.cpp's default DRY sequence breakers (common.h). */
static const char *const DRY_BREAKERS[] = {"\n", ":", "\"", "*"};

/* The DRY sampler for these settings, made anew only when they change:
 * making one scans the vocabulary for the sequence breakers. */
static struct llama_sampler *dry_sampler(sm_sampler_work *w, const sm_sample_input *in, int32_t last_n) {
    if (w->dry && w->dry_made_with[0] == in->dry_multiplier && w->dry_made_with[1] == in->dry_base &&
        w->dry_made_with_len[0] == in->dry_allowed_length && w->dry_made_with_len[1] == last_n)
        return w->dry;
    if (w->dry) llama_sampler_free(w->dry);
    size_t n_breakers = w->vocab ? sizeof DRY_BREAKERS / sizeof DRY_BREAKERS[0] : 0;
    w->dry = llama_sampler_init_dry(w->vocab, in->dry_multiplier, in->dry_base, in->dry_allowed_length, last_n,
                                    (const char **)DRY_BREAKERS, n_breakers);
    w->dry_made_with[0] = in->dry_multiplier;
    w->dry_made_with[1] = in->dry_base;
    w->dry_made_with_len[0] = in->dry_allowed_length;
    w->dry_made_with_len[1] = last_n;
    return w->dry;
}

/* llama.cpp's infill sampler over the candidates, through llama.cpp
 * itself: it leaves them sorted by probability (or one end-of-text token,
 * logit 1, when nothing else is left). false when it cannot run. */
static bool apply_infill(sm_candidate *c, int32_t *n, sm_sampler_work *w) {
    sm_error err;
    if (!w->infill && !(w->vocab && (w->infill = smx_infill_new(w->vocab, &err)))) return false;
    llama_token_data *cur = w->dry_cur;
    for (int32_t i = 0; i < *n; i++) cur[i] = (llama_token_data){c[i].token, c[i].logit, 0.0f};
    llama_token_data_array arr = {cur, (size_t)*n, -1, false};
    if (!smx_sampler_apply(w->infill, &arr, &err) || arr.size == 0) return false;
    for (size_t i = 0; i < arr.size; i++) c[i] = (sm_candidate){arr.data[i].id, arr.data[i].logit, arr.data[i].p};
    *n = (int32_t)arr.size;
    return true;
}

/* Lowers the logits of tokens that would extend a repeated sequence. The
 * history is re-derived from the kept tokens every time, so a rewind needs
 * nothing undone here. */
static void apply_dry(float *logits, const sm_sample_input *in, sm_sampler_work *w) {
    int32_t last_n = in->dry_penalty_last_n >= 0 ? in->dry_penalty_last_n : w->n_ctx > 0 ? w->n_ctx : in->n_history;
    if (last_n <= 0 || in->n_history <= in->dry_allowed_length) return;
    struct llama_sampler *dry = dry_sampler(w, in, last_n);
    llama_sampler_reset(dry);
    int32_t from = in->n_history > last_n ? in->n_history - last_n : 0;
    for (int32_t i = from; i < in->n_history; i++) llama_sampler_accept(dry, in->history[i]);
    for (int32_t t = 0; t < in->n_vocab; t++) w->dry_cur[t] = (llama_token_data){t, logits[t], 0.0f};
    llama_token_data_array cur = {w->dry_cur, (size_t)in->n_vocab, -1, false};
    llama_sampler_apply(dry, &cur);
    for (size_t i = 0; i < cur.size; i++) logits[cur.data[i].id] = cur.data[i].logit;
}

static sm_token argmax(const float *x, int32_t n) {
    sm_token best = -1;
    float best_x = -INFINITY;
    for (int32_t i = 0; i < n; i++)
        if (x[i] > best_x) { best_x = x[i]; best = i; }
    return best;
}

static int by_logit_desc(const void *a, const void *b) {
    float x = ((const sm_candidate *)a)->logit, y = ((const sm_candidate *)b)->logit;
    return (x < y) - (x > y);
}

/* The k largest finite logits, sorted descending: a bounded insertion pass,
 * cheap because almost every token fails the first comparison. */
static int32_t select_top_k(const float *logits, int32_t n_vocab, int32_t k, sm_candidate *out) {
    if (k <= 0 || k >= n_vocab) {
        int32_t n = 0;
        for (int32_t t = 0; t < n_vocab; t++)
            if (logits[t] > -INFINITY) out[n++] = (sm_candidate){t, logits[t], 0.0f};
        qsort(out, (size_t)n, sizeof *out, by_logit_desc);
        return n;
    }
    int32_t n = sm_select_largest(logits, n_vocab, k, out);
    while (n > 0 && out[n - 1].logit == -INFINITY) n--; /* banned tokens are never candidates */
    return n;
}

/*
 * Without top-k, sorting the whole vocabulary every token is the slow part.
 * min-p will drop every token with logit < max + ln(min_p) anyway, and
 * top-p only ever cuts further down the sorted list, so sorting just the
 * tokens above that floor (with the probabilities still normalised over
 * the whole vocabulary) gives exactly the same distribution. The floor is
 * lowered a little so that float rounding cannot drop a token min-p keeps.
 */
static int32_t select_above_min_p(const float *logits, int32_t n_vocab, float min_p, sm_candidate *out) {
    float max = -INFINITY;
    for (int32_t t = 0; t < n_vocab; t++) max = logits[t] > max ? logits[t] : max;
    if (max == -INFINITY) return 0;
    const float floor_logit = max + logf(min_p) - 1e-3f;
    /* the partition sum in fixed lanes (it vectorises; fastmath.h), then
     * the few tokens above the floor */
    float lanes[SM_LANES] = {0};
    const int32_t full = n_vocab - n_vocab % SM_LANES;
    for (int32_t i = 0; i < n_vocab; i += SM_LANES) {
        const int32_t width = i < full ? SM_LANES : n_vocab - full;
        for (int32_t k = 0; k < width; k++) lanes[k] += sm_exp_nonpositive(logits[i + k] - max); /* -inf: ~1e-38 */
    }
    const float z = sm_lane_sum(lanes);
    int32_t n = 0;
    for (int32_t t = 0; t < n_vocab; t++)
        if (logits[t] >= floor_logit) out[n++] = (sm_candidate){t, logits[t], 0.0f};
    qsort(out, (size_t)n, sizeof *out, by_logit_desc);
    for (int32_t i = 0; i < n; i++) out[i].prob = sm_exp_nonpositive(out[i].logit - max) / z;
    return n;
}

/* The largest logit of c[0..n) (c[0] when they are sorted). */
static float max_logit(const sm_candidate *c, int32_t n) {
    float max = c[0].logit;
    for (int32_t i = 1; i < n; i++) max = c[i].logit > max ? c[i].logit : max;
    return max;
}

/* Softmax of logit/temperature over the first n candidates, in any order. */
static void softmax(sm_candidate *c, int32_t n, float temperature) {
    double sum = 0.0;
    const float max = max_logit(c, n);
    for (int32_t i = 0; i < n; i++) {
        c[i].prob = expf((c[i].logit - max) / temperature);
        sum += c[i].prob;
    }
    for (int32_t i = 0; i < n; i++) c[i].prob = (float)(c[i].prob / sum);
}

/* top-n-sigma: logits below max - n * std (over the finite ones) go. */
static void apply_top_n_sigma(float *logits, int32_t n_vocab, float n_sigma) {
    float max = -INFINITY;
    double sum = 0.0;
    int32_t valid = 0;
    for (int32_t t = 0; t < n_vocab; t++) {
        if (logits[t] != -INFINITY) {
            valid++;
            sum += logits[t];
        }
        if (logits[t] > max) max = logits[t];
    }
    if (valid == 0) return;
    double mean = sum / valid, acc = 0.0;
    for (int32_t t = 0; t < n_vocab; t++)
        if (logits[t] != -INFINITY) acc += (logits[t] - mean) * (logits[t] - mean);
    float floor_logit = max - n_sigma * (float)sqrt(acc / valid);
    for (int32_t t = 0; t < n_vocab; t++)
        if (logits[t] < floor_logit) logits[t] = -INFINITY;
}

static int by_prob_desc(const void *a, const void *b) {
    float x = ((const sm_candidate *)a)->prob, y = ((const sm_candidate *)b)->prob;
    return (x < y) - (x > y);
}

/* Ascending shifted score, equals in c's order (token holds the index). */
static int by_score_then_index(const void *a, const void *b) {
    const sm_candidate *x = a, *y = b;
    if (x->logit != y->logit) return (x->logit > y->logit) - (x->logit < y->logit);
    return (x->token > y->token) - (x->token < y->token);
}

/* Locally typical sampling: the tokens whose surprise is closest to the
 * entropy, until their probability reaches p (then sorted by p again).
 * O(n log n): with top-k 0 it sees the whole vocabulary. */
static void apply_typical(sm_candidate *c, int32_t *n, float p, sm_candidate *scratch) {
    if (*n < 2) return;
    double entropy = 0.0;
    for (int32_t i = 0; i < *n; i++)
        if (c[i].prob > 0) entropy -= c[i].prob * log(c[i].prob);
    for (int32_t i = 0; i < *n; i++) /* the shifted score, for sorting; token: where it is in c */
        scratch[i] = (sm_candidate){.token = i, .logit = (float)fabs(-log(c[i].prob) - entropy), .prob = c[i].prob};
    qsort(scratch, (size_t)*n, sizeof *scratch, by_score_then_index);
    double cum = 0.0;
    size_t last = (size_t)*n;
    for (size_t i = 0; i < last; i++) {
        cum += scratch[i].prob;
        if (cum > p) { /* min_keep 1 */
            last = i + 1;
            break;
        }
    }
    /* the kept tokens as they were in c, by probability */
    for (size_t i = 0; i < last; i++) scratch[i] = c[scratch[i].token];
    memcpy(c, scratch, sizeof *c * last);
    qsort(c, last, sizeof *c, by_prob_desc);
    *n = (int32_t)last;
}

/* XTC: with its probability, the tokens above the threshold are removed,
 * all but the least probable of them (c sorted, probabilities normalised). */
static void apply_xtc(sm_candidate *c, int32_t *n, const sm_sample_input *in, sm_sample_rng *rng) {
    if (*n < 2 || in->xtc_threshold > 0.5f) return;
    if (sm_mt_uniform_float(&rng->xtc) > in->xtc_probability) return;
    int32_t above = 0;
    while (above < *n && c[above].prob >= in->xtc_threshold) above++;
    int32_t cut = above - 1; /* keep the last token above the threshold */
    if (cut < 1 || *n - cut < 1) return;
    memmove(c, c + cut, sizeof *c * (size_t)(*n - cut));
    *n -= cut;
    softmax(c, *n, 1.0f);
}

/* llama.cpp's temp_ext: the temperature from the normalised entropy of
 * the current candidates, in its float arithmetic (a seed's draws depend
 * on the temperature's last bits). */
static float dynamic_temperature(const sm_candidate *c, int32_t n, const sm_sample_input *in) {
    if (n <= 1) return in->temperature;
    const float max_entropy = -logf(1.0f / (float)n);
    float z = 0.0f, entropy = 0.0f;
    for (int32_t i = 0; i < n; i++) z += expf(c[i].logit - c[0].logit);
    for (int32_t i = 0; i < n; i++) {
        float p = expf(c[i].logit - c[0].logit) / z;
        if (p > 0.0f) entropy -= p * logf(p);
    }
    const float lo = in->temperature - in->dynatemp_range > 0.0f ? in->temperature - in->dynatemp_range : 0.0f;
    const float hi = in->temperature + in->dynatemp_range;
    return lo + (hi - lo) * powf(entropy / max_entropy, in->dynatemp_exponent);
}

/* Mirostat v2 over c (all candidates, by logit): surprise above mu goes,
 * draw, and mu learns from the surprise of the token drawn. */
/* The draw's candidates for kept_out, most probable first (equals by
 * their place in c), in any order of c: selected, never a pass per kept
 * one (the whole vocabulary may be candidates). */
static void keep_candidates(const sm_sample_input *in, const sm_candidate *c, int32_t n, sm_sampler_work *w) {
    if (!in->kept_out || !in->n_kept_out || in->max_kept <= 0) return;
    for (int32_t i = 0; i < n; i++) w->by_id[i] = c[i].prob;
    /* .token: the place in c, .logit: its probability */
    int32_t k = sm_select_largest(w->by_id, n, in->max_kept, in->kept_out);
    while (k > 0 && !(in->kept_out[k - 1].logit > 0.0f)) k--; /* never a token it could not draw */
    for (int32_t j = 0; j < k; j++) in->kept_out[j] = c[in->kept_out[j].token];
    *in->n_kept_out = k;
}

/* llama.cpp's softmax (llama_sampler_softmax_impl): its sum is a float. */
static void softmax_as_llama(sm_candidate *c, int32_t n) {
    float sum = 0.0f;
    for (int32_t i = 0; i < n; i++) {
        c[i].prob = expf(c[i].logit - c[0].logit);
        sum += c[i].prob;
    }
    for (int32_t i = 0; i < n; i++) c[i].prob /= sum;
}

/* libstdc++'s discrete_distribution over c[0..n).prob, as mirostat draws:
 * the weights normalised in double, their running sums (the last forced
 * to 1), the first sum not below a canonical draw. One weight alone draws
 * no number at all (its table is empty and it answers 0). */
static int32_t discrete_draw(const sm_candidate *c, int32_t n, sm_mt *mt) {
    if (n < 2) return 0;
    double total = 0.0, cum = 0.0;
    for (int32_t i = 0; i < n; i++) total += (double)c[i].prob;
    const double u = sm_mt_uniform(mt);
    for (int32_t i = 0; i < n - 1; i++) {
        cum += (double)c[i].prob / total;
        if (cum >= u) return i;
    }
    return n - 1;
}

static sm_token mirostat_v2(sm_candidate *c, int32_t n, const sm_sample_input *in, sm_sample_rng *rng,
                            sm_sampler_work *w, float *p_sampled) {
    for (int32_t i = 0; i < n; i++) c[i].logit /= in->temperature; /* llama.cpp's temp, then mirostat */
    softmax_as_llama(c, n);
    int32_t keep = 0;
    while (keep < n && -log2f(c[keep].prob) <= in->mirostat_mu) keep++;
    if (keep == 0) keep = 1;
    softmax_as_llama(c, keep);
    keep_candidates(in, c, keep, w);
    int32_t pick = discrete_draw(c, keep, &rng->draw);
    float surprise = -log2f(c[pick].prob);
    if (in->mirostat_mu_next) *in->mirostat_mu_next = in->mirostat_mu - in->mirostat_eta * (surprise - in->mirostat_tau);
    *p_sampled = c[pick].prob;
    return c[pick].token;
}

static int by_token_asc(const void *a, const void *b) {
    sm_token x = ((const sm_candidate *)a)->token, y = ((const sm_candidate *)b)->token;
    return (x > y) - (x < y);
}

/* llama.cpp's dist sampler over c[0..n) at temperature t: the weights
 * expf(logit / t - max) in float, summed in double, the first running sum
 * to reach sum * u. Its candidates are in llama.cpp's order: by logit when
 * a sampler sorted them (top-k, top-p, typical, XTC), else by token id
 * (min-p alone keeps the vocabulary's order); order_by_id says which.
 * Returns the index in c of the token drawn. */
static int32_t dist_draw(sm_candidate *c, int32_t n, float t, bool order_by_id, sm_mt *mt, sm_sampler_work *w) {
    const float max = max_logit(c, n) / t; /* llama.cpp's max of logit / t: division keeps the order */
    const sm_candidate *order = c;
    if (order_by_id && n > 1) {
        /* a few candidates (min-p's usual dozens) are sorted; a long list
         * is spread over the vocabulary by id and read in one pass */
        order = w->cand2;
        if ((int64_t)n * 16 < w->n_vocab) {
            memcpy(w->cand2, c, sizeof *c * (size_t)n);
            qsort(w->cand2, (size_t)n, sizeof *w->cand2, by_token_asc);
        } else {
            float *at = w->by_id;
            for (int32_t v = 0; v < w->n_vocab; v++) at[v] = NAN;
            for (int32_t i = 0; i < n; i++) at[c[i].token] = c[i].logit;
            int32_t k = 0;
            for (int32_t v = 0; v < w->n_vocab; v++)
                if (!isnan(at[v])) w->cand2[k++] = (sm_candidate){.token = v, .logit = at[v]};
        }
    }
    float *weight = w->by_id; /* free again: computed once, summed twice */
    double sum = 0.0;
    for (int32_t i = 0; i < n; i++) sum += weight[i] = expf(order[i].logit / t - max);
    const double target = sum * sm_mt_uniform(mt);
    double run = 0.0;
    int32_t at = n - 1; /* llama.cpp's fallback: the last in its order */
    for (int32_t i = 0; i < n; i++) {
        run += weight[i];
        if (run >= target) {
            at = i;
            break;
        }
    }
    if (order == c) return at;
    for (int32_t i = 0; i < n; i++) /* back to c's index */
        if (c[i].token == order[at].token) return i;
    return n - 1;
}

sm_token sm_sample(const sm_sample_input *in, sm_sample_rng *rng, sm_sampler_work *w, float *p_sampled) {
    float *logits = w->logits;
    memcpy(logits, in->logits, sizeof(float) * (size_t)in->n_vocab);
    for (int32_t i = 0; i < in->n_logit_bias; i++) {
        sm_token t = in->logit_bias[i].token;
        if (t >= 0 && t < in->n_vocab) logits[t] += in->logit_bias[i].bias;
    }
    for (int32_t i = 0; i < in->n_bans; i++)
        if (in->bans[i] >= 0 && in->bans[i] < in->n_vocab) logits[in->bans[i]] = -INFINITY;
    for (int32_t i = 0; i < in->n_never; i++)
        if (in->never[i] >= 0 && in->never[i] < in->n_vocab) logits[in->never[i]] = -INFINITY;
    apply_repeat_penalty(logits, in);
    apply_count_penalties(logits, in, w);
    if (in->dry_multiplier > 0.0f) apply_dry(logits, in, w);
    if (in->grammar) { /* llama.cpp's grammar sampler: what it does not allow gets -inf */
        llama_token_data *cur = w->dry_cur;
        for (int32_t t = 0; t < in->n_vocab; t++) cur[t] = (llama_token_data){t, logits[t], 0.0f};
        llama_token_data_array arr = {cur, (size_t)in->n_vocab, -1, false};
        sm_error err;
        if (!smx_sampler_apply(in->grammar, &arr, &err)) return -1;
        for (size_t i = 0; i < arr.size; i++) logits[arr.data[i].id] = arr.data[i].logit;
        bool any = false;
        for (int32_t t = 0; t < in->n_vocab && !any; t++) any = logits[t] > -INFINITY;
        if (!any) return -1;
        if (in->masked_out)
            for (int32_t t = 0; t < in->n_vocab; t++) in->masked_out[t] = logits[t] == -INFINITY ? -INFINITY : in->logits[t];
    }
    if (in->mirostat_mu_next) *in->mirostat_mu_next = in->mirostat_mu;

    if (in->n_kept_out) *in->n_kept_out = 0;
    if (in->temperature <= 0.0f) {
        *p_sampled = 1.0f;
        sm_token best = argmax(logits, in->n_vocab);
        if (in->kept_out && in->max_kept > 0) {
            in->kept_out[0] = (sm_candidate){.token = best, .logit = logits[best], .prob = 1.0f};
            *in->n_kept_out = 1;
        }
        return best;
    }
    sm_candidate *c = w->cand;
    if (in->mirostat == 2) {
        int32_t n = select_top_k(logits, in->n_vocab, 0, c);
        return n > 0 ? mirostat_v2(c, n, in, rng, w, p_sampled) : -1;
    }
    if (in->top_n_sigma > 0.0f) apply_top_n_sigma(logits, in->n_vocab, in->top_n_sigma);
    bool whole_vocab = in->top_k <= 0 || in->top_k >= in->n_vocab;
    /* Nothing between the penalties and the draw truncates: llama.cpp then
     * draws from every token in token order, sorting nothing (a sort of the
     * vocabulary here cost more than a 110M model's decode of the token). */
    if (whole_vocab && in->top_p >= 1.0f && in->min_p <= 0.0f && in->typical_p >= 1.0f &&
        in->xtc_probability <= 0.0f && in->dynatemp_range <= 0.0f && !in->infill) {
        int32_t n = 0;
        for (int32_t t = 0; t < in->n_vocab; t++)
            if (logits[t] > -INFINITY) c[n++] = (sm_candidate){t, logits[t], 0.0f};
        if (n == 0) return -1;
        softmax(c, n, in->temperature);
        keep_candidates(in, c, n, w);
        int32_t pick = dist_draw(c, n, in->temperature, false, &rng->draw, w); /* c is in token order */
        *p_sampled = c[pick].prob;
        return c[pick].token;
    }
    /* The min-p shortcut holds only when nothing between top-k and min-p
     * looks at the tokens it leaves out. */
    bool shortcut = whole_vocab && in->min_p > 0.0f && in->typical_p >= 1.0f;
    int32_t n = shortcut ? select_above_min_p(logits, in->n_vocab, in->min_p, c)
                         : select_top_k(logits, in->n_vocab, in->top_k, c);
    if (n == 0) return -1;

    if (!shortcut) softmax(c, n, 1.0f);
    if (in->typical_p < 1.0f) {
        apply_typical(c, &n, in->typical_p, w->cand2);
        softmax(c, n, 1.0f); /* over what is left, as llama.cpp's next step sees it */
    }
    if (in->top_p < 1.0f) {
        double cum = 0.0;
        int32_t keep = n;
        for (int32_t i = 0; i < n; i++) {
            cum += c[i].prob;
            if (cum >= in->top_p) { keep = i + 1; break; }
        }
        n = keep;
    }
    if (in->min_p > 0.0f) {
        float floor_p = in->min_p * c[0].prob;
        int32_t keep = 1;
        while (keep < n && c[keep].prob >= floor_p) keep++;
        n = keep;
    }
    if (in->xtc_probability > 0.0f) {
        softmax(c, n, 1.0f);
        apply_xtc(c, &n, in, rng);
    }
    if (in->infill && !apply_infill(c, &n, w)) return -1;
    const float t = in->dynatemp_range > 0.0f ? dynamic_temperature(c, n, in) : in->temperature;
    softmax(c, n, t);
    keep_candidates(in, c, n, w);
    const bool sorted = !whole_vocab || in->top_p < 1.0f || in->typical_p < 1.0f || in->xtc_probability > 0.0f ||
                        in->infill || (in->dynatemp_range > 0.0f && n > 1);
    int32_t pick = dist_draw(c, n, t, !sorted, &rng->draw, w);
    *p_sampled = c[pick].prob;
    return c[pick].token;
}

/* The Rust llama_selfmod's confidence: t's probability renormalised over
 * the k largest of the (penalised) logits at T = 1; 0 when t is not among
 * them. k <= 0 or >= n_vocab: the whole vocabulary. */
float sm_topk_confidence(const float *logits, int32_t n_vocab, int32_t k, sm_token t, sm_candidate *work) {
    if (k <= 0 || k > n_vocab) k = n_vocab;
    int32_t n = sm_select_largest(logits, n_vocab, k, work);
    if (n == 0) return 0.0f;
    double z = 0.0, p = 0.0;
    for (int32_t i = 0; i < n; i++) {
        double e = exp((double)work[i].logit - work[0].logit);
        z += e;
        if (work[i].token == t) p = e;
    }
    return (float)(p / z);
}
