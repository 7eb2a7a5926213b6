/* Per-token signals: pure functions over one raw distribution. */
#include "internal.h"
#include "fastmath.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/*
 * Two passes over the vocabulary: the first finds the two most likely
 * tokens, the second accumulates the partition sums. With d = logit - max
 * and e = exp(d):
 *   Z = sum e,  H = ln Z - sum(e d)/Z,  varentropy = sum(e d^2)/Z - (sum(e d)/Z)^2
 * (the variance of ln p equals the variance of d, since ln p = d - ln Z).
 * The sums use fixed-order lanes (fastmath.h): they vectorise, are accurate
 * to about 1e-6 relative, and are the same on every run.
 */
void sm_signals_compute(const float *logits, int32_t n_vocab, sm_token chosen, sm_signals *out,
                        sm_dist_stats *stats) {
    int32_t i1 = 0, i2 = n_vocab > 1 ? 1 : 0;
    if (n_vocab > 1 && logits[i2] > logits[i1]) { i1 = 1; i2 = 0; }
    for (int32_t i = 2; i < n_vocab; i++) {
        float x = logits[i];
        if (x > logits[i2]) {
            if (x > logits[i1]) { i2 = i1; i1 = i; }
            else i2 = i;
        }
    }
    const float max = logits[i1];
    float zl[SM_LANES] = {0}, s1l[SM_LANES] = {0}, s2l[SM_LANES] = {0};
    const int32_t full = n_vocab - n_vocab % SM_LANES;
    for (int32_t i = 0; i < n_vocab; i += SM_LANES) {
        const int32_t width = i < full ? SM_LANES : n_vocab - full; /* the last block may be short */
        for (int32_t k = 0; k < width; k++) {
            float d = logits[i + k] - max;
            d = d < SM_EXP_FLOOR ? SM_EXP_FLOOR : d; /* banned (-inf) tokens: not NaN */
            float e = sm_exp_nonpositive(d);
            zl[k] += e;
            s1l[k] += e * d;
            s2l[k] += e * d * d;
        }
    }
    const float z = sm_lane_sum(zl), s1 = sm_lane_sum(s1l), s2 = sm_lane_sum(s2l);
    const double log_z = log(z);
    const double mean_d = s1 / z;
    out->token = chosen;
    out->logit = chosen >= 0 && chosen < n_vocab ? logits[chosen] : -INFINITY;
    out->p_chosen = chosen >= 0 && chosen < n_vocab ? (float)exp(logits[chosen] - max - log_z) : 0.0f;
    out->top1_token = i1;
    out->p_top1 = (float)exp(-log_z);
    out->top2_token = i2;
    out->p_top2 = n_vocab > 1 ? (float)exp(logits[i2] - max - log_z) : 0.0f;
    out->entropy = (float)(log_z - mean_d);
    double var = s2 / z - mean_d * mean_d;
    out->varentropy = (float)(var > 0.0 ? var : 0.0);
    if (stats) stats->log_z = (float)(max + log_z);
}

/* a ranks below b: a smaller value, or an equal one with a higher id */
static bool ranks_below(const sm_candidate *a, const sm_candidate *b) {
    return a->logit < b->logit || (a->logit == b->logit && a->token > b->token);
}

static void sift_down(sm_candidate *heap, int32_t n, int32_t i) {
    for (;;) {
        int32_t worst = i, l = 2 * i + 1, r = l + 1;
        if (l < n && ranks_below(&heap[l], &heap[worst])) worst = l;
        if (r < n && ranks_below(&heap[r], &heap[worst])) worst = r;
        if (worst == i) return;
        sm_candidate x = heap[i];
        heap[i] = heap[worst];
        heap[worst] = x;
        i = worst;
    }
}

static int by_rank(const void *a, const void *b) {
    const sm_candidate *x = a, *y = b;
    return ranks_below(x, y) ? 1 : ranks_below(y, x) ? -1 : 0;
}

/* sm_select_largest for a large k: a heap of the k best whose root is the
 * one that ranks lowest, then sorted; O(n log k) where the insertion pass
 * is O(n k) (top-k 31000 of 32000 tokens cost a quarter second a token). */
static int32_t select_largest_by_heap(const float *values, int32_t n_values, int32_t k, sm_candidate *out) {
    for (int32_t t = 0; t < k; t++) out[t] = (sm_candidate){.token = t, .logit = values[t]};
    for (int32_t i = k / 2 - 1; i >= 0; i--) sift_down(out, k, i);
    for (int32_t t = k; t < n_values; t++) {
        if (values[t] <= out[0].logit) continue; /* an equal value with a higher id ranks below */
        out[0] = (sm_candidate){.token = t, .logit = values[t]};
        sift_down(out, k, 0);
    }
    qsort(out, (size_t)k, sizeof *out, by_rank);
    return k;
}

int32_t sm_select_largest(const float *values, int32_t n_values, int32_t k, sm_candidate *out) {
    if (k > n_values) k = n_values;
    if (k > 64) return select_largest_by_heap(values, n_values, k, out);
    int32_t filled = 0;
    /* Insertion into a small sorted array: k is small, and almost every
     * value fails the first comparison. Ties keep the lower id first. */
    for (int32_t t = 0; t < n_values; t++) {
        float x = values[t];
        if (filled == k && x <= out[k - 1].logit) continue;
        int32_t j = filled < k ? filled++ : k - 1;
        while (j > 0 && out[j - 1].logit < x) {
            out[j] = out[j - 1];
            j--;
        }
        out[j] = (sm_candidate){.token = t, .logit = x};
    }
    return filled;
}

int32_t sm_top_candidates(const float *logits, int32_t n_vocab, const sm_dist_stats *stats,
                          int32_t n, sm_candidate *out) {
    int32_t filled = sm_select_largest(logits, n_vocab, n, out);
    for (int32_t i = 0; i < filled; i++) out[i].prob = expf(out[i].logit - stats->log_z);
    return filled;
}

void sm_softmax(const float *logits, int32_t n, float *out) {
    float max = logits[0];
    for (int32_t i = 1; i < n; i++) max = logits[i] > max ? logits[i] : max;
    for (int32_t i = 0; i < n; i++) out[i] = sm_exp_nonpositive(logits[i] - max);
    float lanes[SM_LANES] = {0};
    const int32_t full = n - n % SM_LANES;
    for (int32_t i = 0; i < n; i += SM_LANES) {
        const int32_t width = i < full ? SM_LANES : n - full;
        for (int32_t k = 0; k < width; k++) lanes[k] += out[i + k];
    }
    const float inv = 1.0f / sm_lane_sum(lanes);
    for (int32_t i = 0; i < n; i++) out[i] *= inv;
}

/* backtracking_llm's Generator: logits / T, torch.topk, F.softmax over the
 * k; its operators get the scaled top-k logits, their probabilities and
 * the chosen token's index in them. */
void sm_operator_view_original(sm_token_view *view, int32_t k, float temperature, sm_candidate *top) {
    if (!view || !view->logits || view->n_vocab <= 0 || !top || k <= 0) return;
    const bool scale = temperature > 0.0f;
    int32_t n = sm_select_largest(view->logits, view->n_vocab, k, top);
    double z = 0.0;
    for (int32_t i = 0; i < n; i++) {
        top[i].logit = scale ? top[i].logit / temperature : top[i].logit;
        z += exp((double)top[i].logit - (double)top[0].logit);
    }
    view->prob = 0.0f;
    view->logit = view->token >= 0 && view->token < view->n_vocab
                      ? (scale ? view->logits[view->token] / temperature : view->logits[view->token])
                      : -INFINITY;
    for (int32_t i = 0; i < n; i++) {
        top[i].prob = (float)(exp((double)top[i].logit - (double)top[0].logit) / z);
        if (top[i].token == view->token) view->prob = top[i].prob;
    }
    view->top = top;
    view->n_top = n;
}
