/* Per-token signals: pure functions over one raw distribution. */
#include "internal.h"

#include <math.h>

/*
 * Two passes over the vocabulary: the first finds the maximum and the two
 * most likely tokens, the second accumulates the partition sums. With
 * d = logit - max and e = exp(d):
 *   Z = sum e,  H = ln Z - sum(e d)/Z,  varentropy = sum(e d^2)/Z - (sum(e d)/Z)^2
 * (the variance of ln p equals the variance of d, since ln p = d - ln Z).
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
    double z = 0.0, s1 = 0.0, s2 = 0.0;
    for (int32_t i = 0; i < n_vocab; i++) {
        float d = logits[i] - max;
        float e = expf(d);
        if (e == 0.0f) continue; /* banned or impossible: 0 * inf would be NaN */
        z += e;
        s1 += e * d;
        s2 += e * d * d;
    }
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

int32_t sm_top_candidates(const float *logits, int32_t n_vocab, const sm_dist_stats *stats,
                          int32_t n, sm_candidate *out) {
    if (n > n_vocab) n = n_vocab;
    int32_t filled = 0;
    /* Insertion into a small sorted array: n is tiny (the operators' view). */
    for (int32_t t = 0; t < n_vocab; t++) {
        float x = logits[t];
        if (filled == n && x <= out[n - 1].logit) continue;
        int32_t j = filled < n ? filled++ : n - 1;
        while (j > 0 && out[j - 1].logit < x) {
            out[j] = out[j - 1];
            j--;
        }
        out[j].token = t;
        out[j].logit = x;
    }
    for (int32_t i = 0; i < filled; i++) out[i].prob = expf(out[i].logit - stats->log_z);
    return filled;
}
